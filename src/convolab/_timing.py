"""Timers (bottom layer): the minimum of repeated calls, used by the chooser's trial and
``measure=True``, by ``convolab calibrate`` and by the benchmark runner."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

#: pause after each implementation's warm-up call: the previous implementation's threads
#: (OpenBLAS spins for a while after a call) go to sleep before the timed calls start
SETTLE_SECONDS = 0.1


#: the clock every timer reads (seconds); tests put a fake one here
clock: Callable[[], float] = time.perf_counter


def _once(f: Callable[[], object]) -> float:
    t0 = clock()
    f()
    return clock() - t0


def time_min_interleaved(fs: list, repeat: int, min_total: float = 0.05) -> list[float]:
    """`time_min` of several functions taking turns, one call each per round, so that a slow
    spell of a noisy host slows all of them instead of whichever was being timed: the minimum
    of each over at least ``repeat`` calls (more while its calls total under ``min_total`` s,
    up to ``50 repeat``)."""
    best = [math.inf] * len(fs)
    total = [0.0] * len(fs)
    n = 0
    while n < repeat or (min(total) < min_total and n < 50 * repeat):
        for i, f in enumerate(fs):
            if n >= repeat and (total[i] >= min_total or n >= 50 * repeat):
                continue
            t = _once(f)
            best[i] = min(best[i], t)
            total[i] += t
        n += 1
    return best


def time_min(f: Callable[[], object], repeat: int, min_total: float = 0.05) -> float:
    """Minimum time of ``f`` over at least ``repeat`` calls (more while under ``min_total`` s)."""
    best = math.inf
    total = 0.0
    n = 0
    while n < repeat or (total < min_total and n < 50 * repeat):
        t = _once(f)
        best = min(best, t)
        total += t
        n += 1
    return best
