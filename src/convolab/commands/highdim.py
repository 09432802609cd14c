"""``convolab bilateral`` (filter an image file) and ``convolab bilateral-bench`` (the figures).

Image files are read and written with imageio (installed with scikit-image; PNG, JPEG, TIFF, ...)
or, for ``.npy`` paths, with NumPy. Integer images are filtered in [0, 1] units
(``sigma_color`` too) and written back in their own integer type; float images are written
as float32 TIFF/NPY, or as 8-bit for formats that have no float type. An alpha channel
(2 or 4 channels) is passed through unfiltered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConvError
from ._common import add_json, write_json
from ._common import console as make_console

FLOAT_SUFFIXES = {".tif", ".tiff", ".npy"}


def add_parser(sub) -> None:
    from ..highdim.filters import METHODS

    p = sub.add_parser(
        "bilateral",
        help="bilateral (or joint bilateral) filter of an image file",
        description="Edge-preserving bilateral filter of a grey or colour image file "
        "(permutohedral lattice by default).",
    )
    p.add_argument("input", help="input image (PNG, JPEG, TIFF, ... or .npy)")
    p.add_argument("output", help="output image path (format from the suffix)")
    p.add_argument("--sigma-spatial", type=float, required=True, help="spatial sigma in pixels")
    p.add_argument(
        "--sigma-color", type=float, required=True, help="range sigma in [0, 1] intensity units"
    )
    p.add_argument("--method", choices=METHODS, default="permutohedral")
    p.add_argument("--guide", help="guide image for a joint bilateral filter (same H x W)")
    add_json(p, "what ran (files, shape, method, sigmas, seconds)")
    p.set_defaults(func=run)

    b = sub.add_parser(
        "bilateral-bench",
        help="accuracy / speed / scaling / learned-SBS figures of convolab.highdim",
        description="Measures the figures of convolab.highdim (convolab.highdim.bench).",
    )
    _bench_arguments(b)
    b.set_defaults(func=run_bench)


def read_image(path: str) -> np.ndarray:
    """Read an image file (``.npy`` with NumPy, anything else with imageio)."""
    p = Path(path)
    if not p.is_file():
        raise ConvError(f"input file {path!r} does not exist")
    if p.suffix.lower() == ".npy":
        return np.load(p, allow_pickle=False)
    try:
        import imageio.v3 as iio
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConvError(
            "reading image files needs imageio (pip install 'convolab[highdim]'); "
            ".npy files work without it"
        ) from None
    try:
        return np.asarray(iio.imread(p))
    except Exception as e:  # imageio raises many types for unreadable files
        raise ConvError(f"cannot read image {path!r}: {e}") from None


def to_output_dtype(out: np.ndarray, like: np.ndarray, suffix: str) -> np.ndarray:
    """Convert a float result to the type written for an input of dtype ``like.dtype``."""
    if np.issubdtype(like.dtype, np.integer) and like.dtype != np.bool_:
        info = np.iinfo(like.dtype)
        lo = info.min if info.min < 0 else 0
        return np.clip(np.rint(out * info.max), lo, info.max).astype(like.dtype)
    if suffix in FLOAT_SUFFIXES:
        return out.astype(np.float32)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def write_image(path: str, image: np.ndarray) -> None:
    """Write an image (``.npy`` with NumPy, anything else with imageio)."""
    p = Path(path)
    if p.suffix.lower() == ".npy":
        np.save(p, image)
        return
    import imageio.v3 as iio

    try:
        iio.imwrite(p, image)
    except Exception as e:
        raise ConvError(f"cannot write image {path!r}: {e}") from None


def filter_image(image, sigma_spatial, sigma_color, method="permutohedral", guide=None):
    """Filter an image as read from a file: alpha passed through, result in [0, 1] floats."""
    from ..highdim.filters import as_float_image, joint_bilateral_filter

    img = as_float_image(image)
    alpha = None
    if img.ndim == 3 and img.shape[2] in (2, 4):
        img, alpha = img[..., :-1], img[..., -1:]
    g = img if guide is None else as_float_image(guide, "guide")
    if guide is not None and g.ndim == 3 and g.shape[2] in (2, 4):
        g = g[..., :-1]
    out = joint_bilateral_filter(img, g, sigma_spatial, sigma_color, method=method)
    if alpha is not None:
        out = np.concatenate([out, alpha.astype(out.dtype)], axis=2)
    return out


@dataclass(frozen=True)
class BilateralConfig:
    """The checked options of ``convolab bilateral``."""

    input: str
    output: str
    sigma_spatial: float
    sigma_color: float
    method: str = "permutohedral"
    guide: str | None = None


def _parse(args) -> BilateralConfig:
    """Checked options: the input (and guide) files exist, the sigmas are positive and finite
    (the filter's own checks and messages)."""
    from ..highdim.filters import check_sigma

    for path in (args.input, args.guide):
        if path is not None and not Path(path).is_file():
            raise ConvError(f"input file {path!r} does not exist")
    check_sigma(args.sigma_spatial, "sigma_spatial")
    check_sigma(args.sigma_color, "sigma_color")
    return BilateralConfig(args.input, args.output, args.sigma_spatial, args.sigma_color, args.method,
                           args.guide)


@dataclass
class BilateralResult:
    """``image``: the input as read; ``filtered``: the result in the type written for
    ``cfg.output`` (`to_output_dtype`); ``seconds``: the filter's wall time."""

    image: np.ndarray
    filtered: np.ndarray
    seconds: float


def compute(cfg: BilateralConfig) -> BilateralResult:
    """Read the input (and guide), filter it (`filter_image`, timed); nothing written or printed."""
    img = read_image(cfg.input)
    guide = read_image(cfg.guide) if cfg.guide else None
    t0 = time.perf_counter()
    out = filter_image(img, cfg.sigma_spatial, cfg.sigma_color, cfg.method, guide)
    dt = time.perf_counter() - t0
    return BilateralResult(img, to_output_dtype(out, img, Path(cfg.output).suffix.lower()), dt)


def bilateral_json(cfg: BilateralConfig, result: BilateralResult) -> dict:
    """The ``--json`` document: files, shape, dtype, method, sigmas, guide, seconds."""
    img = result.image
    return {"input": cfg.input, "output": cfg.output, "shape": list(img.shape),
            "dtype": str(img.dtype), "method": cfg.method,
            "sigma_spatial": cfg.sigma_spatial, "sigma_color": cfg.sigma_color,
            "guide": cfg.guide, "seconds": result.seconds}


def _render(console, cfg: BilateralConfig, result: BilateralResult) -> None:
    """One line: files, shape and dtype, method, sigmas, seconds."""
    img = result.image
    shape = "x".join(str(s) for s in img.shape)
    console.print(
        f"{cfg.input} ({shape}, {img.dtype}) -> {cfg.output}: {cfg.method}, "
        f"sigma_spatial={cfg.sigma_spatial:g}, sigma_color={cfg.sigma_color:g}, {result.seconds:.3f} s "
        "(wall time, including loading the compiled kernels)", highlight=False
    )


def run(args) -> int:
    """Parse (`_parse`), compute (`compute`), write the image, render (`_render`), write the JSON."""
    cfg = _parse(args)
    result = compute(cfg)
    write_image(cfg.output, result.filtered)
    console = make_console()
    _render(console, cfg, result)
    write_json(args.json, bilateral_json(cfg, result), console)
    return 0


def _bench_arguments(p) -> None:
    from ..highdim.bench import SECTIONS

    p.add_argument("--quick", action="store_true", help="small crops and fewer cases")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list from {','.join(SECTIONS)}")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats (minimum is kept)")
    p.add_argument("--exact-step", type=int, default=4, help="evaluate the exact filter every k pixels")
    add_json(p, "all measured numbers")


@dataclass(frozen=True)
class BenchConfig:
    """The checked options of ``convolab bilateral-bench``."""

    sections: tuple[str, ...]
    quick: bool = False
    repeats: int = 3
    exact_step: int = 4


def _parse_bench(args) -> BenchConfig:
    """Checked options: scikit-image is installed, the section names are known, the repeats
    and the exact filter's step are positive."""
    from ..highdim import bench

    try:
        import skimage  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConvError("the benchmark needs scikit-image (pip install scikit-image)") from None
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in bench.SECTIONS]
    if bad:
        raise ConvError(f"unknown section(s) {bad}; choose from {', '.join(bench.SECTIONS)}")
    if args.repeats < 1:
        raise ConvError(f"--repeats must be at least 1, got {args.repeats}")
    if args.exact_step < 1:
        raise ConvError(f"--exact-step must be at least 1, got {args.exact_step}")
    return BenchConfig(tuple(sections), bool(args.quick), args.repeats, args.exact_step)


def _bench_section(name: str, cfg: BenchConfig, console):
    """Compute one section (`convolab.highdim.bench`'s ``compute_<name>``), render it
    (``render_<name>``) and return its data."""
    from ..highdim import bench

    if name == "accuracy":
        rows = bench.compute_accuracy(quick=cfg.quick, exact_step=cfg.exact_step)
        bench.render_accuracy(rows, console, exact_step=cfg.exact_step)
        return rows
    if name == "speed":
        img = bench.speed_image(cfg.quick)
        rows = bench.compute_speed(img, quick=cfg.quick, repeats=cfg.repeats,
                                   exact_step=cfg.exact_step)
        bench.render_speed(rows, console, shape=img.shape, repeats=cfg.repeats)
        return rows
    if name == "scaling":
        side = bench.scaling_side(cfg.quick)
        out = bench.compute_scaling(quick=cfg.quick, repeats=cfg.repeats, side=side)
        bench.render_scaling(out, console, side=side)
        return out
    if name == "learned":
        size = bench.learned_size(cfg.quick)
        rows = bench.compute_learned(quick=cfg.quick, size=size)
        bench.render_learned(rows, console, size=size)
        return rows
    raise ConvError(f"unknown section {name!r}")  # pragma: no cover - _parse_bench checks


def run_bench(args) -> int:
    """Parse (`_parse_bench`), then compute and render each section in turn (`_bench_section`)
    with its time, and write the numbers."""
    cfg = _parse_bench(args)
    console = make_console()
    results = {"quick": cfg.quick, "exact_step": cfg.exact_step, "repeats": cfg.repeats}
    for s in cfg.sections:
        t0 = time.perf_counter()
        results[s] = _bench_section(s, cfg, console)
        console.print(f"[dim]{s}: {time.perf_counter() - t0:.1f} s[/dim]")
    write_json(args.json, results, console)
    return 0
