"""The cost model: predicted seconds of each algorithm on a convolution, and ``convolab
calibrate``, which measures this machine's constants for it.

Time prediction. Each algorithm's time is modelled as

    t = (c_call + c_mul m + c_io io + c_ws ws + c_c m / (C/groups) + c_k m / (K/groups)) * r

where ``m`` is the algorithm's own multiply count (transform-domain products for fast
algorithms), ``io`` the input + output bytes, ``ws`` its workspace bytes (the unfolded matrix,
the transformed tiles), ``m / (C/groups)`` counts work per output element (stores, output
transforms) and ``m / (K/groups)`` work per input element (loads, unfolding, input transforms).
``convolab calibrate`` measures the machine constants -- NumPy's float32 GEMM rate, the memory
bandwidth (a large copy), the per-call overhead -- and times every algorithm on a fixed
calibration set of layers (not the benchmark suites); the coefficients ``c`` are fitted per
algorithm -- per kernel for algorithms with several (`Algorithm.cost_key`: ``direct`` and
``direct/loops``) -- by non-negative least squares on relative error (an algorithm with fewer than 12
calibration layers fits ``c_call`` and ``c_mul`` only), and ``r`` corrects what the terms
miss: the inverse-distance weighted geometric mean of measured / fitted time on the 3
calibration layers nearest in `features`. Everything is stored in the user cache directory.
Until this machine is calibrated the model uses the calibration shipped with convolab (the
development machine's; `reference_machine`); without that, rates relative to the GEMM rate
measured once in the process, which rank algorithms by arithmetic and traffic alone.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np

from . import registry
from ._machine import gemm_gflops
from ._timing import SETTLE_SECONDS, time_min
from .cache import CALIBRATION, machine_key
from .spec import ConvSpec

#: number of `features` (calibration files written before the sixth have five)
N_FEATURES = 6


@dataclass
class Machine:
    """Machine constants for the cost model (see `calibrate`)."""

    gemm_gflops: float
    bandwidth_gbs: float
    call_seconds: float
    #: per algorithm: list of [features..., log2 seconds per multiply, log2 measured / fitted]
    #: for each calibration layer it supports (older files lack the last entry)
    samples: dict
    #: per algorithm: the coefficients of `cost_terms` fitted by `calibrate`
    linear: dict = dataclasses.field(default_factory=dict)
    #: how many of `features` the samples hold (the first ones: older files have fewer)
    n_features: int = N_FEATURES

    def to_json(self) -> dict:
        return {
            "gemm_gflops": self.gemm_gflops,
            "bandwidth_gbs": self.bandwidth_gbs,
            "call_seconds": self.call_seconds,
            "samples": self.samples,
            "linear": self.linear,
            "n_features": self.n_features,
        }


_DEFAULT_MACHINE: Machine | None = None
_DEFAULT_LOCK = threading.Lock()


def _uncalibrated() -> Machine:
    """Constants for a machine never calibrated: the GEMM rate measured once, nominal others."""
    global _DEFAULT_MACHINE
    with _DEFAULT_LOCK:
        if _DEFAULT_MACHINE is None:
            g = gemm_gflops(n=512, repeat=3)
            _DEFAULT_MACHINE = Machine(g, 10.0, 20e-6, {})
        return _DEFAULT_MACHINE


def _from_entry(entry) -> Machine:
    return Machine(float(entry["gemm_gflops"]), float(entry["bandwidth_gbs"]),
                   float(entry["call_seconds"]), dict(entry["samples"]),
                   {k: [float(c) for c in v] for k, v in dict(entry.get("linear", {})).items()},
                   int(entry.get("n_features", 5)))


@functools.lru_cache(maxsize=1)
def reference_machine() -> Machine | None:
    """The calibration shipped with convolab (``data/reference_calibration.json``: the
    development machine, 2 threads, measured by ``convolab calibrate``), or None.

    Used until this machine is calibrated: its absolute times are another machine's, but which
    algorithm suits which layer carries over far better than the nominal rates (uncalibrated,
    ``auto`` ranked by arithmetic alone and put Winograd on depthwise layers, 15x slower).
    """
    from importlib.resources import files

    try:
        data = json.loads(files("convolab").joinpath("data/reference_calibration.json").read_text())
        return _from_entry(data["entry"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def machine() -> Machine:
    """The calibrated constants for this machine and thread count, else the shipped reference
    calibration (`reference_machine`), else nominal ones."""
    entry = CALIBRATION.entries().get(machine_key())
    if isinstance(entry, dict):
        try:
            return _from_entry(entry)
        except (KeyError, TypeError, ValueError):
            warnings.warn("convolab: ignoring a malformed calibration entry", stacklevel=2)
    return reference_machine() or _uncalibrated()


#: rate of each algorithm's multiplies relative to the GEMM rate when uncalibrated
_NOMINAL_EFFICIENCY = {"im2col": 0.5, "direct": 0.35, "im2win": 0.5, "fft": 0.25}
_NOMINAL_FAST = 0.4  # Winograd / SFC: transform-domain products through batched GEMMs


#: distance in `features` between a layer whose output planes alias in the L1 cache and one
#: whose planes do not (as far as a factor 8 in pixels)
ALIAS_DISTANCE = 3.0


def plane_aliasing(spec: ConvSpec) -> bool:
    """Whether the output planes are a multiple of 2 KiB apart: the 32 planes a microkernel
    tile (and a Winograd output tile) writes then fall into at most two sets of a 4 KiB-
    indexed L1 cache, more lines than its 12 ways; partly written lines are evicted and read
    again. Measured: direct ran 120 GFLOP/s on a 3 -> 64 3x3 layer with 224 x 224 outputs
    (plane 196 KiB), 210 with 222 x 222."""
    return (spec.OH * spec.OW * spec.compute_dtype.itemsize) % 2048 == 0


def features(spec: ConvSpec) -> list[float]:
    """Where a convolution sits for the cost model: log2 of channels per group in and out,
    of output pixels (batch included), of kernel taps and of the stride, and whether its
    output planes alias (`plane_aliasing`, scaled by `ALIAS_DISTANCE`)."""
    return [
        math.log2(spec.Cg),
        math.log2(spec.Kg),
        math.log2(spec.N * spec.OH * spec.OW),
        math.log2(spec.R * spec.S),
        math.log2(spec.stride[0] * spec.stride[1]),
        ALIAS_DISTANCE * plane_aliasing(spec),
    ]


def traffic_bytes(algo: registry.Algorithm, spec: ConvSpec) -> int:
    """Bytes an algorithm moves besides its multiplies: input, output, twice its workspace."""
    item = spec.compute_dtype.itemsize
    io = (spec.N * spec.C * spec.H * spec.W + spec.N * spec.K * spec.OH * spec.OW) * item
    return io + 2 * algo.workspace_bytes(spec)


#: times `calibrate` measures each algorithm on each layer (in turns), keeping the fastest
CALIBRATION_PASSES = 3
#: neighbours averaged by the calibrated model
K_NEAREST = 3
#: an algorithm needs this many calibration layers to fit every term of `cost_terms`
FULL_FIT_LAYERS = 12
#: ... and this many to fit the call, multiply and per-channel terms (leaving out the bytes):
#: with 8 layers and only the multiplies, a Winograd kernel whose transforms dominate at few
#: channels was predicted 2x too slow on a 64-channel batch-8 layer
CHANNEL_FIT_LAYERS = 6


def cost_terms(algo: registry.Algorithm, spec: ConvSpec) -> np.ndarray:
    """The terms of the cost model (see the module docstring): a call, the multiplies, input +
    output bytes, workspace bytes, multiplies per input channel and per output channel."""
    item = spec.compute_dtype.itemsize
    io = (spec.N * spec.C * spec.H * spec.W + spec.N * spec.K * spec.OH * spec.OW) * item
    mults = float(algo.multiplies(spec))
    return np.array([1.0, mults, io, float(algo.workspace_bytes(spec)), mults / spec.Cg, mults / spec.Kg])


def fit_terms(terms: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Non-negative coefficients of ``terms`` (one row per layer) fitting ``seconds`` in
    relative error: all with at least `FULL_FIT_LAYERS` rows, the call, multiply and
    per-channel terms with at least `CHANNEL_FIT_LAYERS`, else the call and multiplies."""
    from scipy.optimize import nnls

    if len(seconds) >= FULL_FIT_LAYERS:
        cols = list(range(terms.shape[1]))
    elif len(seconds) >= CHANNEL_FIT_LAYERS:
        cols = [0, 1, 4, 5]
    else:
        cols = [0, 1]
    c, _ = nnls(terms[:, cols] / seconds[:, None], np.ones(len(seconds)))
    coef = np.zeros(terms.shape[1])
    coef[cols] = c
    return coef


def predict_seconds(algo: registry.Algorithm, spec: ConvSpec, m: Machine | None = None) -> float:
    """Predicted time of ``algo`` on ``spec`` (see the module docstring).

    Calibrated: the fitted `cost_terms` times the correction ``r`` of the ``K_NEAREST``
    calibration layers nearest in `features` (with a calibration file from before the fitted
    terms: ``t_call + multiplies * s``, ``s`` the same average of seconds per multiply).
    Uncalibrated: nominal fractions of the GEMM rate plus traffic.
    """
    m = m or machine()
    mults = algo.multiplies(spec)
    key = algo.cost_key(spec)
    samples = m.samples.get(key)
    if samples is None and key != algo.name:  # a calibration file from before the split
        key = algo.name
        samples = m.samples.get(key)
    if samples:
        f = np.asarray(features(spec)[: m.n_features])
        pts = np.asarray(samples, dtype=np.float64)
        d = np.sqrt(((pts[:, : f.size] - f) ** 2).sum(axis=1))
        near = np.argsort(d)[:K_NEAREST]
        wts = 1.0 / (d[near] + 0.25)
        coef = m.linear.get(key)
        if coef is not None and pts.shape[1] == f.size + 2:
            fitted = float(cost_terms(algo, spec) @ np.asarray(coef))
            if fitted > 0:
                return fitted * 2.0 ** float((wts * pts[near, f.size + 1]).sum() / wts.sum())
        log_spm = float((wts * pts[near, f.size]).sum() / wts.sum())
        return m.call_seconds + mults * 2.0**log_spm
    eff = _NOMINAL_EFFICIENCY.get(algo.name, _NOMINAL_FAST)
    rate = eff * m.gemm_gflops * 1e9 / 2
    return m.call_seconds + mults / rate + traffic_bytes(algo, spec) / (m.bandwidth_gbs * 1e9)


def calibrated() -> bool:
    """Whether ``convolab calibrate`` has stored constants for this machine and thread count."""
    return isinstance(CALIBRATION.entries().get(machine_key()), dict)


def runner(algo: registry.Algorithm, spec: ConvSpec, w: np.ndarray):
    """``run(x, out)``: ``algo`` prepared once for ``spec`` and ``w``, then run as a plan runs
    it (no bias, no checks): what calibration and the chooser's timings call."""
    cd = spec.compute_dtype
    prepared = algo.prepare(spec, np.ascontiguousarray(w, dtype=cd))

    def run(x, out):
        algo.run(prepared, np.ascontiguousarray(x, dtype=cd), out)

    return run


def _layer(N, C, H, K, R, stride=1, groups=1):
    return ((N, C, H, H), (K, C // groups, R, R), stride, R // 2, groups)


#: the layers `calibrate` measures (deliberately not the benchmark suites' layers)
CALIBRATION_LAYERS = [
    # 3x3, stride 1: channels against image size, then rectangular channel counts, batch 4
    _layer(1, 16, 80, 16, 3), _layer(1, 32, 64, 32, 3), _layer(1, 64, 40, 64, 3),
    _layer(1, 128, 20, 128, 3), _layer(1, 256, 12, 256, 3), _layer(1, 384, 10, 384, 3),
    _layer(1, 512, 6, 512, 3), _layer(1, 32, 30, 96, 3), _layer(1, 192, 16, 64, 3),
    _layer(4, 64, 24, 64, 3), _layer(4, 256, 8, 256, 3), _layer(4, 8, 96, 32, 3),
    # 1x1
    _layer(1, 64, 40, 192, 1), _layer(1, 192, 40, 64, 1), _layer(1, 256, 16, 512, 1),
    _layer(1, 512, 16, 256, 1), _layer(1, 1024, 8, 512, 1), _layer(4, 96, 20, 384, 1),
    _layer(1, 192, 32, 384, 1, stride=2),
    # strided 3x3, larger kernels, stems
    _layer(1, 64, 60, 64, 3, stride=2), _layer(1, 256, 20, 256, 3, stride=2),
    _layer(1, 48, 26, 96, 5), _layer(1, 16, 64, 48, 5), _layer(4, 128, 18, 192, 5),
    _layer(1, 32, 40, 32, 7),
    _layer(1, 16, 80, 32, 9), _layer(1, 3, 160, 48, 7, stride=2), _layer(4, 3, 96, 32, 7, stride=2),
    _layer(1, 3, 160, 48, 11, stride=4), _layer(1, 3, 200, 64, 7, stride=2),
    # batch 8: 3x3 stride 1 from few channels on large images to many on small ones, 5x5, 1x1,
    # strided stems
    _layer(8, 3, 128, 32, 3), _layer(4, 3, 150, 64, 3), _layer(8, 32, 80, 32, 3), _layer(8, 96, 40, 96, 3),
    _layer(8, 192, 20, 192, 3), _layer(8, 384, 10, 384, 3), _layer(4, 160, 18, 160, 3),
    _layer(8, 48, 48, 48, 3), _layer(8, 48, 30, 128, 5), _layer(4, 80, 22, 160, 5),
    _layer(8, 128, 20, 256, 1), _layer(8, 3, 128, 48, 7, stride=2), _layer(8, 3, 180, 64, 7, stride=2),
    # depthwise and grouped
    _layer(1, 96, 40, 96, 3, groups=96), _layer(1, 384, 10, 384, 3, groups=384),
    _layer(1, 128, 20, 128, 5, groups=128), _layer(1, 128, 20, 128, 3, groups=4),
]


def _bandwidth_gbs() -> float:
    a = np.ones(32 * 2**20 // 4, np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)
    t = time_min(lambda: np.copyto(b, a), 5)
    return 2 * a.nbytes / t / 1e9


_PREWARM = """
import json, sys
import numpy as np
import convolab
from convolab.spec import ConvSpec
for name, shapes in json.loads(sys.argv[1]):
    for xs, ws, kw in shapes:
        spec = ConvSpec.from_shapes(xs, ws, **kw)
        if convolab.registry.get(name).supports(spec) is None:
            convolab.conv2d(np.ones(xs, np.float32), np.ones(ws, np.float32), algorithm=name, **kw)
"""


def prewarm(algos: list[registry.Algorithm], specs: list[ConvSpec]) -> None:
    """Compile every algorithm's kernels for these layers' code paths in a subprocess.

    The subprocess fills Numba's on-disk cache, so this process loads the cached machine code
    instead of compiling: the register-blocked LLVM-IR kernel of ``im2win`` runs about 2x slower
    when it is JIT-compiled in the process that times it (it spills registers) than when it is
    loaded from the cache. The layers are shrunk to at most 16x16 pixels and batch 1, which
    takes the same code paths.
    """
    import subprocess
    import sys

    shapes = []
    for s in specs:
        H, W = min(s.H, max(16, s.dilated_R)), min(s.W, max(16, s.dilated_S))
        kw = {"stride": list(s.stride), "padding": list(s.padding), "dilation": list(s.dilation),
              "groups": s.groups}
        spec = ConvSpec.from_shapes((1, s.C, H, W), s.w_shape, **kw)
        shapes.append(((1, s.C, spec.H, spec.W), list(s.w_shape), kw))
    job = json.dumps([(a.name, shapes) for a in algos])
    subprocess.run([sys.executable, "-c", _PREWARM, job], check=True, capture_output=True)


def calibrate(progress=None, layers=None) -> Machine:
    """Measure this machine's constants and every algorithm on the calibration layers; store
    them (keyed by CPU, thread count and version) and return them."""
    todo = CALIBRATION_LAYERS if layers is None else layers
    specs = [ConvSpec.from_shapes(xs, ws, st, pad, 1, grp, np.float32) for xs, ws, st, pad, grp in todo]
    # compile every kernel in a subprocess first: kernels compiled in the timing process can run
    # far slower than the cached machine code (see `prewarm`), which made
    # im2win measure at half its speed on layers whose code path was new
    prewarm(list(registry.list_algorithms()), specs)
    g = gemm_gflops(n=1024, repeat=5)
    bw = _bandwidth_gbs()
    x1 = np.ones((1, 1, 4, 4), np.float32)
    w1 = np.ones((1, 1, 1, 1), np.float32)
    o1 = np.empty((1, 1, 4, 4), np.float32)
    p1 = runner(registry.get("direct"), ConvSpec.from_arrays(x1, w1), w1)
    p1(x1, o1)
    call = time_min(lambda: p1(x1, o1), 20)
    samples: dict[str, list] = {}
    linear: dict[str, list] = {}
    algos = list(registry.list_algorithms())
    best: dict[tuple[str, int], float] = {}
    # the passes go over all layers in turn, each layer's algorithms taking turns within a
    # pass, and every (algorithm, layer) keeps its fastest time: a single pass measured some
    # layers 2x off (threads of the previous algorithm still spinning, other activity on the
    # machine), and passes run back to back fell into the same slow spell of the host
    for k in range(CALIBRATION_PASSES):
        rng = np.random.default_rng(0)
        for i, spec in enumerate(specs):
            x = rng.standard_normal(spec.x_shape).astype(np.float32)
            w = rng.standard_normal(spec.w_shape).astype(np.float32)
            out = np.empty(spec.out_shape, np.float32)
            for a in algos:
                if a.supports(spec) is not None:
                    continue
                p = runner(a, spec, w)
                p(x, out)  # warm-up
                time.sleep(SETTLE_SECONDS / 10)  # the previous algorithm's BLAS threads stop spinning
                first = time_min(lambda p=p, x=x, out=out: p(x, out), 1, min_total=0)
                t = first if first > 0.1 else time_min(lambda p=p, x=x, out=out: p(x, out), 3, min_total=0.02)
                best[a.name, i] = min(t, best.get((a.name, i), math.inf))
            if progress:
                progress(f"pass {k + 1}/{CALIBRATION_PASSES}, layer {i + 1}/{len(specs)}")
    seconds = {}
    for a in algos:
        for i in range(len(specs)):
            if (a.name, i) in best:
                seconds[a.cost_key(specs[i]), i] = best[a.name, i]
    samples, linear = fit_kernels(specs, seconds, call)
    m = Machine(g, bw, call, samples, linear)
    CALIBRATION.put(machine_key(), m.to_json())
    return m


def fit_kernels(specs: list[ConvSpec], seconds: dict, call: float) -> tuple[dict, dict]:
    """The cost model's fit from measured times: ``seconds[(cost key, i)]`` the time of that
    kernel (`Algorithm.cost_key`) on ``specs[i]``; returns ``(samples, linear)`` of a `Machine`:
    per kernel, each layer's `features` with its log2 seconds per multiply (beyond the call
    overhead ``call``) and log2 measured / fitted, and the `fit_terms` coefficients."""
    samples, linear = {}, {}
    for key in sorted({k for k, _ in seconds}):
        a = registry.get(key.split("/")[0])
        mine = sorted(i for k, i in seconds if k == key)
        t = np.array([seconds[key, i] for i in mine])
        terms = np.array([cost_terms(a, specs[i]) for i in mine])
        coef = fit_terms(terms, t)
        fitted = terms @ coef
        samples[key] = [
            [*features(specs[i]), math.log2(max(ti - call, 1e-9) / a.multiplies(specs[i])),
             math.log2(ti / ft) if ft > 0 else 0.0]
            for i, ti, ft in zip(mine, t, fitted, strict=True)]
        linear[key] = [float(c) for c in coef]
    return samples, linear


def calibration_report(m: Machine) -> list[tuple[str, float, float, int]]:
    """(algorithm, median / best GFLOP/s-equivalent of its multiplies, layers measured)."""
    rows = []
    for name, pts in m.samples.items():
        gf = sorted(2 / 2.0 ** p[m.n_features] / 1e9 for p in pts)
        rows.append((name, gf[len(gf) // 2], gf[-1], len(gf)))
    return sorted(rows, key=lambda r: -r[1])
