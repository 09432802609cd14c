"""The isolated-layer deviation sweep: bitwise classes per source of deviation.

For every layer of a grid (filters x kernel size x input channels x input size, as in the
single-layer experiments of Schlögl, Hofer and Böhme, NeurIPS 2023: filters 1-4, kernels 2-7,
channels 1-3) the same seeded float32 input and weight (no bias, stride 1, no padding) are
convolved

- by the emulated accumulation orders of `convolab.numerics.orders` (what SIMD width, FMA, loop
  order and thread splits alone do),
- by every registered convolab algorithm that supports the layer (what the algorithm choice
  does, as cuDNN's run-time choice does on GPUs),
- by PyTorch under {1, 2 threads} x ONEDNN_MAX_CPU_ISA {SSE4.1, AVX, AVX2, AVX-512} (what one
  framework does across CPU generations), each configuration in its own subprocess
  (`convolab.numerics.determinism.measure_torch`).

Per layer and source it records the number of bitwise classes, the least remaining mantissa
bits between any two classes, and the worst normwise error against the float64 reference;
PyTorch's classes are named by the emulated orders that reproduce them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import combinations

import numpy as np

from .. import reference
from ..errors import ConvError
from ..spec import ConvSpec
from .determinism import (
    ALL_ISAS,
    ONEDNN_CANDIDATES,
    layer_data,
    measure_torch,
    short_labels,
    torch_configs,
)
from .metrics import equivalence_classes, remaining_bits
from .orders import STANDARD_ORDERS, parse_order
from .orders import conv2d as order_conv

SOURCES = ("orders", "algorithms", "torch")


def sweep_layers(
    filters=(1, 2, 3, 4), kernels=(2, 3, 4, 5, 6, 7), channels=(1, 2, 3), sizes=(8, 16, 32)
) -> dict[str, dict]:
    """The layer grid: name ``"f{K} k{R} c{C} {H}x{H}"`` -> conv2d arguments (x, w shapes)."""
    layers = {}
    for size in sizes:
        for c in channels:
            for k in kernels:
                if k > size:
                    continue
                for f in filters:
                    layers[f"f{f} k{k} c{c} {size}x{size}"] = dict(
                        x=(1, c, size, size), w=(f, c, k, k)
                    )
    if not layers:
        raise ConvError("the sweep grid is empty (every kernel is larger than every input)")
    return layers


def worst_bits(outputs: dict, mean: bool = False) -> int | float:
    """Least remaining float32 mantissa bits between any two of ``outputs`` (23 if all equal).

    With ``mean=True``: the least, over pairs of outputs, of the mean over elements.
    """
    reps = [outputs[c[0]] for c in equivalence_classes(outputs)]
    worst = 23
    for a, b in combinations(reps, 2):
        bits = remaining_bits(a, b)
        if bits.size:
            worst = min(worst, float(bits.mean()) if mean else int(bits.min()))
    return worst


@dataclass
class LayerResult:
    """One layer of the sweep."""

    layer: str
    terms: int  # products per output, C R S
    classes: dict = field(default_factory=dict)  # source -> list of lists of member names
    bits: dict = field(default_factory=dict)  # source -> worst remaining bits
    mean_bits: dict = field(default_factory=dict)  # source -> worst pair's mean remaining bits
    error: dict = field(default_factory=dict)  # source -> worst normwise error vs float64
    torch_names: list = field(default_factory=list)  # per torch class: matching orders
    all_classes: int = 0  # classes over every output of every source together


def _source_stats(outputs: dict, ref, scale) -> tuple[list, int, float, float]:
    classes = equivalence_classes(outputs)
    err = max(reference.errors(y, ref, scale)["normwise"] for y in outputs.values())
    return classes, worst_bits(outputs), worst_bits(outputs, mean=True), err


def sweep(
    layers: dict | None = None, *, orders=STANDARD_ORDERS, algorithms: list[str] | None = None,
    torch: bool = True, isas=ALL_ISAS, progress=None,
) -> list[LayerResult]:
    """Run the sweep.

    Parameters
    ----------
    layers : dict, optional
        name -> conv2d arguments; default `sweep_layers()` (216 layers).
    orders : sequence of str
        Emulated orders (default `convolab.numerics.orders.STANDARD_ORDERS`).
    algorithms : list of str, optional
        convolab algorithms to run (default every registered one that supports the layer).
    torch : bool
        Also measure PyTorch (one subprocess per configuration); needs the torch extra.
    isas : sequence of str
        oneDNN ISA limits for PyTorch, each with 1 and 2 threads (default `ALL_ISAS`).
    progress : callable(done, total), optional
        Called after each layer.

    Returns
    -------
    list of LayerResult
    """
    import convolab

    layers = sweep_layers() if layers is None else layers
    names = [a.name for a in convolab.list_algorithms()] if algorithms is None else list(algorithms)
    torch_m = measure_torch(layers, configs=torch_configs(isas)) if torch else None
    extra = [o for o in ONEDNN_CANDIDATES if parse_order(o).name not in
             {parse_order(p).name for p in orders}]
    results = []
    for i, (lname, case) in enumerate(layers.items()):
        x, w, kw = layer_data(case)
        spec = ConvSpec.from_arrays(x, w, None, **kw)
        ref = reference.conv2d(x, w, **kw)
        scale = reference.magnitude(x, w, **kw)
        res = LayerResult(lname, spec.reduction_length)
        per_source = {
            "orders": {parse_order(o).name: order_conv(x, w, **kw, order=o) for o in orders},
            "algorithms": {
                n: convolab.conv2d(x, w, algorithm=n, **kw)
                for n in names if convolab.registry.get(n).supports(spec) is None
            },
        }
        if torch_m is not None:
            per_source["torch"] = torch_m.case("torch", lname).outputs
        everything = {}
        for src, outs in per_source.items():
            if not outs:
                continue
            stats = _source_stats(outs, ref, scale)
            res.classes[src], res.bits[src], res.mean_bits[src], res.error[src] = stats
            everything.update({f"{src}:{k}": v for k, v in outs.items()})
        res.all_classes = len(equivalence_classes(everything))
        if torch_m is not None:
            named = dict(per_source["orders"])
            named.update({parse_order(o).name: order_conv(x, w, **kw, order=o) for o in extra})
            by_bytes: dict[bytes, list[str]] = {}
            for oname, y in named.items():
                by_bytes.setdefault(y.tobytes(), []).append(oname)
            res.torch_names = [
                by_bytes.get(per_source["torch"][c[0]].tobytes(), []) for c in res.classes["torch"]
            ]
        results.append(res)
        if progress is not None:
            progress(i + 1, len(layers))
    return results


def summarize(results: list[LayerResult]) -> dict:
    """Headline numbers per source: layers, class-count histogram, max/mean classes, worst bits.

    Returns
    -------
    dict
        source -> {"layers", "histogram" (classes -> layers), "max", "mean", "one_class"
        (fraction of layers with a single class), "worst_bits", "worst_mean_bits" (least mean
        over elements for the worst pair of classes), "worst_error"}, plus
        ``"all"`` for every source together, ``"torch_orders"`` (how often each emulated
        order reproduced a PyTorch class) and ``"torch_classes"``: rows (configurations in the
        class, the first emulated order that reproduces it or "?", layers), most frequent first.
    """
    out: dict = {}
    for src in SOURCES + ("all",):
        counts = (
            [r.all_classes for r in results]
            if src == "all"
            else [len(r.classes[src]) for r in results if src in r.classes]
        )
        if not counts:
            continue
        entry = {
            "layers": len(counts),
            "histogram": dict(sorted(Counter(counts).items())),
            "max": max(counts),
            "mean": float(np.mean(counts)),
            "one_class": float(np.mean([c == 1 for c in counts])),
        }
        if src != "all":
            entry["worst_bits"] = min(r.bits[src] for r in results if src in r.bits)
            entry["worst_mean_bits"] = min(r.mean_bits[src] for r in results if src in r.bits)
            entry["worst_error"] = max(r.error[src] for r in results if src in r.error)
        out[src] = entry
    named = Counter()
    unnamed = 0
    for r in results:
        for names in r.torch_names:
            if names:
                named[names[0]] += 1
            else:
                unnamed += 1
    if named or unnamed:
        out["torch_orders"] = {"named": dict(named.most_common()), "unnamed": unnamed}
        pairs = Counter(
            (short_labels(cls), names[0] if names else "?")
            for r in results
            for cls, names in zip(r.classes.get("torch", []), r.torch_names, strict=True)
        )
        out["torch_classes"] = [[k[0], k[1], v] for k, v in pairs.most_common()]
    return out


def by_terms(results: list[LayerResult], source: str) -> list[tuple[str, int, float, int]]:
    """Classes against products per output: rows (range, layers, mean classes, max classes)."""
    edges = [(1, 12), (13, 27), (28, 48), (49, 75), (76, 147), (148, 10**9)]
    rows = []
    for lo, hi in edges:
        cs = [len(r.classes[source]) for r in results if lo <= r.terms <= hi and source in r.classes]
        if cs:
            label = f"{lo}-{hi}" if hi < 10**9 else f">={lo}"
            rows.append((label, len(cs), float(np.mean(cs)), max(cs)))
    return rows


def to_json(results: list[LayerResult]) -> list[dict]:
    """Plain-data form of the results (for ``--json``)."""
    return [asdict(r) for r in results]
