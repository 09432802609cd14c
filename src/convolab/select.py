"""Choosing the algorithm: budgets, a calibrated cost model, measured autotuning, a safe cache.

`choose` ranks every registered algorithm for one convolution: the admissible ones first,
fastest first (the first entry is what ``algorithm="auto"`` runs), then the rejected ones
with the reason (unsupported, over the memory limit, over the error budget).

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

Trial on an uncalibrated machine. Until ``convolab calibrate`` has run on this machine, the
model's constants are another machine's, and its ranking of close candidates can be wrong
(on an Intel Xeon the shipped calibration put F(2x2,3x3) where SFC-4 was 1.14x faster). So
the first time ``auto`` plans a convolution there, it times the model's best candidates --
at most `TRIAL_CANDIDATES`, those predicted within `TRIAL_FACTOR` of the best -- on random
data (one warm-up call, then the minimum of 3 calls or 10 ms) and stores the times in the
autotune cache, keyed by the CPU model and thread count like ``measure=True``: later plans of
that convolution, in any process, rank by these times without timing again. The trial costs
each candidate's weight preparation plus about five of its calls, on the first plan only:
40-120 ms per ResNet-50 layer at batch 1 on a 2-core Zen 4 VM, 0.45-0.67 s for the first layer
of a process, which also loads the candidates' kernels (``tools/auto_trial_cost.py``). It
is skipped where the best prediction is over `TRIAL_MAX_SECONDS` and with
``CONVOLAB_AUTO_TRIAL=0``.

Measured autotuning. ``measure=True`` times the admissible candidates on random data (warm,
minimum of repeats) and stores the winner in the autotune cache, keyed by the convolution,
the dtype, the thread count, the CPU model and the convolab version; ``auto`` then uses it.

The cache. JSON files in ``$CONVOLAB_CACHE_DIR`` or the XDG user cache directory
(``~/.cache/convolab``). Writers take an advisory lock and replace the file atomically
(temporary file + rename), so concurrent processes never leave it corrupt; a corrupt or
foreign file is ignored with a warning and rewritten.

Default error budget. ``max_error=None`` means ``default_max_error(spec, dtype)`` = 64 x the
worst-case summation bound of direct convolution for that layer (the bound is about
``(C/groups) R S x 2**-24`` in fp32): algorithms whose stated error stays within a small
multiple of direct convolution's own are admitted, those whose transforms amplify rounding by
orders of magnitude (large Winograd tiles) are not. Pass ``max_error=float("inf")`` to admit
every algorithm.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__, registry
from ._machine import cpu_model, gemm_gflops
from ._machine import threads as _threads
from ._timing import SETTLE_SECONDS, time_min, time_min_interleaved
from .api import _mib
from .errors import ConvError
from .registry import summation_bound
from .spec import ConvSpec

DEFAULT_ERROR_FACTOR = 64.0
AUTOTUNE_FORMAT = "convolab-autotune"
CALIBRATION_FORMAT = "convolab-calibration"
FORMAT_VERSION = 1


def default_max_error(spec: ConvSpec, dtype=None) -> float:
    """The error budget ``auto`` applies when none is given (see the module docstring)."""
    return DEFAULT_ERROR_FACTOR * summation_bound(spec, spec.dtype if dtype is None else dtype)


# --------------------------------------------------------------------------- cache files
def cache_dir() -> Path:
    """``$CONVOLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/convolab``, else ``~/.cache/convolab``."""
    env = os.environ.get("CONVOLAB_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "convolab"


@contextlib.contextmanager
def _locked(path: Path):
    """Advisory inter-process lock on ``path.lock`` (no-op where fcntl is unavailable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(str(path) + ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_json(path: Path, fmt: str) -> dict:
    """The file's ``entries`` dict; {} (with a warning) when missing-but-corrupt or foreign."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        warnings.warn(f"convolab: cannot read cache file {path}: {e}; ignoring it", stacklevel=3)
        return {}
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != fmt or data.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a {fmt} v{FORMAT_VERSION} file")
        entries = data["entries"]
        if not isinstance(entries, dict):
            raise ValueError("entries is not an object")
        return entries
    except (ValueError, KeyError, TypeError) as e:
        warnings.warn(f"convolab: ignoring corrupt or foreign cache file {path} ({e}); it will be rewritten",
                      stacklevel=3)
        return {}


def _write_json(path: Path, fmt: str, entries: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"format": fmt, "version": FORMAT_VERSION, "entries": entries}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _update_json(path: Path, fmt: str, key: str, value) -> None:
    with _locked(path):
        entries = _read_json(path, fmt)
        entries[key] = value
        _write_json(path, fmt, entries)


class _FileCache:
    """In-process view of a cache file, re-read when its mtime changes."""

    def __init__(self, name: str, fmt: str):
        self.name, self.fmt = name, fmt
        self._lock = threading.Lock()
        self._stamp = None
        self._entries: dict = {}

    @property
    def path(self) -> Path:
        return cache_dir() / self.name

    def stamp(self):
        """Identifies the file's current state (path, mtime, size)."""
        path = self.path
        try:
            st = path.stat()
            return (str(path), st.st_mtime_ns, st.st_size)
        except OSError:
            return (str(path), None, None)

    def entries(self) -> dict:
        stamp = self.stamp()
        with self._lock:
            if stamp != self._stamp:
                self._entries = _read_json(Path(stamp[0]), self.fmt) if stamp[1] is not None else {}
                self._stamp = stamp
            return self._entries

    def put(self, key: str, value) -> None:
        _update_json(self.path, self.fmt, key, value)


AUTOTUNE = _FileCache("autotune.json", AUTOTUNE_FORMAT)
CALIBRATION = _FileCache("calibration.json", CALIBRATION_FORMAT)


def cache_key(spec: ConvSpec, threads: int | None = None) -> str:
    """Autotune key: the convolution, dtype, thread count, CPU model and convolab version."""
    s = spec
    return json.dumps(
        {
            "conv": [s.N, s.C, s.H, s.W, s.K, s.R, s.S, list(s.stride), list(s.padding), list(s.dilation), s.groups],
            "dtype": str(s.dtype),
            "threads": _threads() if threads is None else threads,
            "cpu": cpu_model(),
            "version": __version__,
        },
        sort_keys=True,
    )


def machine_key(threads: int | None = None) -> str:
    return json.dumps(
        {"threads": _threads() if threads is None else threads, "cpu": cpu_model(), "version": __version__},
        sort_keys=True,
    )


# --------------------------------------------------------------------------- cost model
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


# --------------------------------------------------------------------------- choosing
@dataclass
class Choice:
    """One algorithm's standing for a convolution (an entry of `choose`'s list)."""

    name: str
    admissible: bool
    reason: str
    seconds: float | None
    workspace_bytes: int | None = None
    error_bound: float | None = None
    source: str = "model"  # "model", "measured" or "cache"

    def __repr__(self) -> str:
        t = "-" if self.seconds is None else f"{self.seconds * 1e3:.3f} ms ({self.source})"
        return f"Choice({self.name!r}, admissible={self.admissible}, {t}, {self.reason!r})"


def rank(
    spec: ConvSpec,
    *,
    measure: bool = False,
    memory_limit: int | None = None,
    max_error: float | None = None,
    repeat: int = 5,
    w=None,
    trial: bool = False,
) -> list[Choice]:
    """`choose` for a validated spec; ``trial``: time the model's best candidates only (the
    first-plan trial of an uncalibrated machine, `trial_wanted`)."""
    if memory_limit is not None and memory_limit < 0:
        raise ConvError(f"memory_limit must be >= 0 bytes, got {memory_limit}")
    if max_error is not None and not max_error > 0:
        raise ConvError(f"max_error must be > 0, got {max_error}")
    budget = default_max_error(spec) if max_error is None else float(max_error)
    m = machine()
    cached = AUTOTUNE.entries().get(cache_key(spec))
    out = []
    for a in registry.algorithms():
        why = a.supports(spec)
        if why is not None:
            out.append(Choice(a.name, False, f"unsupported: {why}", None))
            continue
        ws = a.workspace_bytes(spec)
        eb = a.error_bound(spec, spec.dtype)
        c = Choice(a.name, True, "", predict_seconds(a, spec, m), ws, eb)
        if memory_limit is not None and ws > memory_limit:
            c.admissible, c.reason = False, f"workspace {_mib(ws)} > memory_limit {_mib(memory_limit)}"
        elif eb > budget:
            c.admissible = False
            c.reason = f"error bound {eb:.1e} > max_error {budget:.1e}" + (
                " (default)" if max_error is None else ""
            )
        elif isinstance(cached, dict) and a.name in cached.get("seconds", {}):
            c.seconds, c.source = float(cached["seconds"][a.name]), "cache"
        elif isinstance(cached, dict) and "untimed_after" in cached:
            c.seconds = max(c.seconds, float(cached["untimed_after"]) * 1.001)
        out.append(c)
    if measure:
        _measure([c for c in out if c.admissible], spec, repeat, w)
    elif trial:
        adm = sorted((c for c in out if c.admissible), key=lambda c: c.seconds)
        cands = _trial_candidates(adm)
        _measure(cands, spec, TRIAL_REPEAT, w, others=[c for c in adm if c not in cands])
        for c in adm:
            if c not in cands:
                c.seconds = max(c.seconds, max(d.seconds for d in cands) * 1.001)
    adm = sorted((c for c in out if c.admissible), key=lambda c: c.seconds)
    for i, c in enumerate(adm):
        if not c.reason:
            c.reason = "fastest admissible" if i == 0 else f"{c.seconds / adm[0].seconds:.2f}x the fastest"
    return adm + [c for c in out if not c.admissible]


#: the first-plan trial on an uncalibrated machine (see the module docstring): candidates timed
TRIAL_CANDIDATES = 3
#: ... among those predicted within this factor of the best
TRIAL_FACTOR = 2.5
#: ... unless the best prediction is longer than this (a trial would cost too much)
TRIAL_MAX_SECONDS = 0.5
#: ... each the best of this many calls, taking turns (more while its calls total under
#: TRIAL_MIN_SECONDS)
TRIAL_REPEAT = 3
TRIAL_MIN_SECONDS = 0.01


def calibrated() -> bool:
    """Whether ``convolab calibrate`` has stored constants for this machine and thread count."""
    return isinstance(CALIBRATION.entries().get(machine_key()), dict)


def trial_wanted(ranking: list[Choice]) -> bool:
    """Whether ``auto`` should time its best candidates before planning (see the module
    docstring): on an uncalibrated machine, for a convolution without autotune entry, when
    several candidates are admissible."""
    if os.environ.get("CONVOLAB_AUTO_TRIAL", "1") == "0" or calibrated():
        return False
    adm = [c for c in ranking if c.admissible]
    if len(adm) < 2 or any(c.source != "model" for c in adm):
        return False
    return adm[0].seconds <= TRIAL_MAX_SECONDS and adm[1].seconds <= TRIAL_FACTOR * adm[0].seconds


def _trial_candidates(adm: list[Choice]) -> list[Choice]:
    best = adm[0].seconds
    return [c for c in adm[:TRIAL_CANDIDATES] if c.seconds <= TRIAL_FACTOR * best]


def _measure(cands: list[Choice], spec: ConvSpec, repeat: int, w, others=()) -> None:
    from .api import ConvPlan

    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.x_shape).astype(spec.dtype)
    if w is None:
        w = rng.standard_normal(spec.w_shape).astype(spec.dtype)
    def warmed(c: Choice):
        """A call of the candidate's plan, made and run once (JIT, first touch)."""
        p = ConvPlan(spec, registry.get(c.name), w, None)
        out = np.empty(spec.out_shape, spec.out_dtype)
        p(x, out=out)
        return lambda: p(x, out=out)

    if others:
        # a trial (2-3 candidates): plans made and warmed up first, then timed taking turns, so
        # that a slow spell of the host does not fall on one candidate only (on the development
        # VM a one-by-one trial picked F(2x2,3x3) where SFC-4(4x4,3x3) was 1.3x faster)
        seconds = time_min_interleaved([warmed(c) for c in cands], repeat, TRIAL_MIN_SECONDS)
    else:
        # measure=True: every admissible candidate, one plan alive at a time
        seconds = [time_min(warmed(c), repeat, 0.02) for c in cands]
    times = {}
    for c, t in zip(cands, seconds, strict=True):
        c.seconds, c.source = t, "measured"
        times[c.name] = t
    if times:
        best = min(times, key=times.get)
        entry = {"best": best, "seconds": times, "when": time.time()}
        if others:  # a trial: the candidates not timed rank after the slowest timed one
            entry["untimed_after"] = max(times.values())
        AUTOTUNE.put(cache_key(spec), entry)


def choose(
    x_shape,
    w_shape,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    dtype=np.float32,
    *,
    measure: bool = False,
    memory_limit: int | None = None,
    max_error: float | None = None,
    repeat: int = 5,
) -> list[Choice]:
    """Rank every registered algorithm for a convolution.

    Parameters
    ----------
    x_shape, w_shape : tuple of 4 ints
        (N, C, H, W) and (K, C/groups, R, S).
    stride, padding, dilation, groups
        As `convolab.conv2d`.
    dtype : dtype
        Input dtype (float16, float32, float64).
    measure : bool
        Time the admissible candidates (warm, minimum of ``repeat``) instead of predicting,
        and store the result in the autotune cache.
    memory_limit : int, optional
        Largest workspace in bytes an admissible algorithm may use.
    max_error : float, optional
        Largest ``error_bound`` an admissible algorithm may state; default
        `default_max_error` (64 x direct convolution's worst-case summation bound).

    Returns
    -------
    list of Choice
        Every registered algorithm: admissible ones first, fastest first, then rejected ones.
        Each has ``.name``, ``.admissible``, ``.reason``, ``.seconds``, ``.workspace_bytes``,
        ``.error_bound`` and ``.source`` ("model", "measured" or "cache").
    """
    spec = ConvSpec.from_shapes(x_shape, w_shape, stride, padding, dilation, groups, dtype)
    return rank(spec, measure=measure, memory_limit=memory_limit, max_error=max_error, repeat=repeat)


def explain(choices: list[Choice]) -> str:
    """The ranking as text (used by ``ConvPlan.explain``)."""
    lines = []
    for i, c in enumerate(choices):
        t = f"{c.seconds * 1e3:9.3f} ms {c.source:<8}" if c.seconds is not None else " " * 21
        ws = _mib(c.workspace_bytes) if c.workspace_bytes is not None else "-"
        eb = f"{c.error_bound:.1e}" if c.error_bound is not None else "-"
        mark = f"{i + 1:>2}." if c.admissible else "  x"
        lines.append(f"{mark} {c.name:<16} {t} ws {ws:>10}  err {eb:>8}  {c.reason}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- calibration
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
    from .api import ConvPlan

    todo = CALIBRATION_LAYERS if layers is None else layers
    specs = [ConvSpec.from_shapes(xs, ws, st, pad, 1, grp, np.float32) for xs, ws, st, pad, grp in todo]
    # compile every kernel in a subprocess first: kernels compiled in the timing process can run
    # far slower than the cached machine code (see `prewarm`), which made
    # im2win measure at half its speed on layers whose code path was new
    prewarm(list(registry.algorithms()), specs)
    g = gemm_gflops(n=1024, repeat=5)
    bw = _bandwidth_gbs()
    x1 = np.ones((1, 1, 4, 4), np.float32)
    w1 = np.ones((1, 1, 1, 1), np.float32)
    p1 = ConvPlan(ConvSpec.from_arrays(x1, w1), registry.get("direct"), w1, None)
    p1(x1)
    call = time_min(lambda: p1(x1), 20)
    samples: dict[str, list] = {}
    linear: dict[str, list] = {}
    algos = list(registry.algorithms())
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
                p = ConvPlan(spec, a, w, None)
                p(x, out=out)  # warm-up
                time.sleep(SETTLE_SECONDS / 10)  # the previous algorithm's BLAS threads stop spinning
                first = time_min(lambda p=p, x=x, out=out: p(x, out=out), 1, min_total=0)
                t = first if first > 0.1 else time_min(lambda p=p, x=x, out=out: p(x, out=out), 3, min_total=0.02)
                best[a.name, i] = min(t, best.get((a.name, i), math.inf))
            if progress:
                progress(f"pass {k + 1}/{CALIBRATION_PASSES}, layer {i + 1}/{len(specs)}")
    for a in algos:
        idx = [i for i in range(len(specs)) if (a.name, i) in best]
        for key in sorted({a.cost_key(specs[i]) for i in idx}):
            mine = [i for i in idx if a.cost_key(specs[i]) == key]
            seconds = np.array([best[a.name, i] for i in mine])
            terms = np.array([cost_terms(a, specs[i]) for i in mine])
            coef = fit_terms(terms, seconds)
            fitted = terms @ coef
            rows = []
            for i, t, ft in zip(mine, seconds, fitted, strict=True):
                spm = max(t - call, 1e-9) / a.multiplies(specs[i])
                rows.append([*features(specs[i]), math.log2(spm), math.log2(t / ft) if ft > 0 else 0.0])
            samples[key] = rows
            linear[key] = [float(c) for c in coef]
    m = Machine(g, bw, call, samples, linear)
    CALIBRATION.put(machine_key(), m.to_json())
    return m


def calibration_report(m: Machine) -> list[tuple[str, float, float, int]]:
    """(algorithm, median / best GFLOP/s-equivalent of its multiplies, layers measured)."""
    rows = []
    for name, pts in m.samples.items():
        gf = sorted(2 / 2.0 ** p[m.n_features] / 1e9 for p in pts)
        rows.append((name, gf[len(gf) // 2], gf[-1], len(gf)))
    return sorted(rows, key=lambda r: -r[1])
