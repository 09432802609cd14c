"""Choosing the algorithm: budgets, a calibrated cost model, measured autotuning, a safe cache.

`choose` ranks every registered algorithm for one convolution: the admissible ones first,
fastest first (the first entry is what ``algorithm="auto"`` runs), then the rejected ones
with the reason (unsupported, over the memory limit, over the error budget).

Trial on an uncalibrated machine. Until ``convolab calibrate`` has run on this machine, the
model's constants are another machine's, and its ranking of close candidates can be wrong
(on an Intel Xeon the shipped calibration put F(2x2,3x3) where SFC-4 was 1.14x faster). So
the first time ``auto`` plans a convolution there, it times the model's best candidates --
at most `TRIAL_CANDIDATES`, those predicted within `TRIAL_FACTOR` of the best, and direct
convolution (`TRIAL_ALWAYS`) if within that factor -- on random
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

Layers: this module is the policy (`rank`, `choose`, `explain`, the trial and ``measure``); the
predictions come from `convolab.costmodel` (and ``convolab calibrate``), the cache files from
`convolab.cache`; both below it, `convolab.api` above. Their public names are also reachable here.

Default error budget. ``max_error=None`` means ``default_max_error(spec, dtype)`` = 64 x the
worst-case summation bound of direct convolution for that layer (the bound is about
``(C/groups) R S x 2**-24`` in fp32): algorithms whose stated error stays within a small
multiple of direct convolution's own are admitted, those whose transforms amplify rounding by
orders of magnitude (large Winograd tiles) are not. Pass ``max_error=float("inf")`` to admit
every algorithm.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np

from . import registry
from ._machine import mib as _mib
from ._timing import time_min, time_min_interleaved
from .cache import (  # noqa: F401 - public here too
    AUTOTUNE,
    CALIBRATION,
    cache_dir,
    cache_key,
    machine_key,
)
from .costmodel import (  # noqa: F401 - public here too
    CALIBRATION_LAYERS,
    CALIBRATION_PASSES,
    Machine,
    calibrate,
    calibrated,
    calibration_report,
    cost_terms,
    features,
    fit_terms,
    machine,
    predict_seconds,
    prewarm,
    reference_machine,
    runner,
)
from .errors import ConvError
from .registry import summation_bound
from .spec import ConvSpec

DEFAULT_ERROR_FACTOR = 64.0


def default_max_error(spec: ConvSpec, dtype=None) -> float:
    """The error budget ``auto`` applies when none is given (see the module docstring)."""
    return DEFAULT_ERROR_FACTOR * summation_bound(spec, spec.dtype if dtype is None else dtype)


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
    for a in registry.list_algorithms():
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
        elif isinstance(cached, dict) and _valid_seconds(cached.get("seconds", {}).get(a.name)):
            c.seconds, c.source = float(cached["seconds"][a.name]), "cache"
        elif isinstance(cached, dict) and _valid_seconds(cached.get("untimed_after")):
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


def _valid_seconds(t) -> bool:
    """A cached time that can be used: a finite number > 0 (an entry written with a stubbed
    clock held 0 s and made the ranking divide by zero; a hand-edited file may hold anything)."""
    try:
        return math.isfinite(float(t)) and float(t) > 0
    except (TypeError, ValueError):
        return False


#: the first-plan trial on an uncalibrated machine (see the module docstring): candidates timed
TRIAL_CANDIDATES = 3
#: ... and these, wherever the model ranks them (within TRIAL_FACTOR): the shipped calibration
#: predates most of direct's speed-ups, and on an Intel Xeon it put direct fifth on ResNet-50's
#: 3x3 64@56 layer (1.75 ms predicted, 0.90 measured), behind three fast algorithms that took
#: 1.03-1.18 ms: the trial never timed it and `auto` ran 1.19x direct's time
TRIAL_ALWAYS = ("direct",)
#: ... among those predicted within this factor of the best
TRIAL_FACTOR = 2.5
#: ... unless the best prediction is longer than this (a trial would cost too much)
TRIAL_MAX_SECONDS = 0.5
#: ... each the best of this many calls, taking turns (more while its calls total under
#: TRIAL_MIN_SECONDS)
TRIAL_REPEAT = 3
TRIAL_MIN_SECONDS = 0.01


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
    cands = [c for c in adm[:TRIAL_CANDIDATES] if c.seconds <= TRIAL_FACTOR * best]
    return cands + [c for c in adm[TRIAL_CANDIDATES:]
                    if c.name in TRIAL_ALWAYS and c.seconds <= TRIAL_FACTOR * best]


def _measure(cands: list[Choice], spec: ConvSpec, repeat: int, w, others=()) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.x_shape).astype(spec.dtype)
    if w is None:
        w = rng.standard_normal(spec.w_shape).astype(spec.dtype)
    def warmed(c: Choice):
        """A call of the candidate's plan, made and run once (JIT, first touch)."""
        p = runner(registry.get(c.name), spec, w)
        out = np.empty(spec.out_shape, spec.compute_dtype)
        p(x, out)
        return lambda: p(x, out)

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
    x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, dtype=np.float32, *,
    measure: bool = False, memory_limit: int | None = None, max_error: float | None = None, repeat: int = 5,
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
