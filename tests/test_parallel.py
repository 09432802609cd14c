"""Thread placement helpers: Numba's workers pinned one per CPU, pool threads kept off the
caller's CPU; both leave results unchanged and can be switched off."""

import os
import threading

import numpy as np
import pytest

from convolab import _parallel
from convolab.kernels import pin_numba_workers

multi_cpu = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs"
)


@multi_cpu
def test_numba_workers_pinned_one_per_cpu():
    import numba

    if numba.get_num_threads() < 2:
        pytest.skip("one Numba thread")
    pinned = pin_numba_workers()
    cpus = sorted(os.sched_getaffinity(0))
    assert len(pinned) >= 2 and threading.get_native_id() not in pinned
    for tid, cpu in pinned.items():
        assert os.sched_getaffinity(tid) == {cpu}
    assert len(set(pinned.values())) == min(len(pinned), len(cpus))


def test_pinning_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("CONVOLAB_PIN_THREADS", "0")
    assert pin_numba_workers() == {}


@multi_cpu
def test_pool_threads_kept_off_the_callers_cpu():
    cpus = []

    def job(i):
        cpus.append(_parallel._current_cpu())
        return i * i

    assert _parallel.run_threads(job, range(4)) == [0, 1, 4, 9]
    here = _parallel._current_cpu()
    _parallel._keep_off(here)
    allowed = os.sched_getaffinity(0)
    for tid, mask in _parallel._workers:
        assert mask == allowed - {here}
        assert os.sched_getaffinity(tid) == allowed - {here}
    assert all(c is None or c in allowed for c in cpus)


def test_run_threads_results_and_errors():
    assert _parallel.run_threads(lambda i: np.full(3, i).sum(), range(5)) == [0, 3, 6, 9, 12]
    with pytest.raises(ZeroDivisionError):
        _parallel.run_threads(lambda i: 1 // (i - 2), range(4))

