"""Thread placement and convolab's thread team: Numba's workers pinned one per CPU, team threads
kept off the caller's CPU, jobs on any number of threads, spinning between jobs then sleeping."""

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
def test_team_threads_kept_off_the_callers_cpu(monkeypatch):
    """At each job the team's threads are kept off the caller's CPU (Linux would wake a
    sleeping one there, and a spinning one stays where the caller may have moved to: the two
    would take turns on one CPU)."""
    from convolab.kernels import team as T

    monkeypatch.setenv("CONVOLAB_SPIN_US", "0")  # team threads sleep right after each job
    t = T.Team(2)
    try:
        cpus = []
        with t.lock:
            t.run(lambda i: cpus.append((i, _parallel._current_cpu())), (), 2, own=[0, 1])
        allowed = os.sched_getaffinity(0)
        (tid,) = t._tids.values()
        assert os.sched_getaffinity(tid) <= allowed
        assert sorted(i for i, _ in cpus) == [0, 1]
        assert all(c is None or c in allowed for _, c in cpus)
        caller = t._caller_cpu  # the caller's CPU when it submitted the job
        if caller is not None:
            assert t._affinity[tid] == frozenset(allowed - {caller})
            assert os.sched_getaffinity(tid) == allowed - {caller}
    finally:
        t.close()


def test_run_threads_results_and_errors():
    assert _parallel.run_threads(lambda i: np.full(3, i).sum(), range(5)) == [0, 3, 6, 9, 12]
    with pytest.raises(ZeroDivisionError):
        _parallel.run_threads(lambda i: 1 // (i - 2), range(4))



@multi_cpu
def test_a_team_thread_can_compile_after_numbas_workers_started():
    """A function first compiled on a team thread (pinned off the caller's CPU) once Numba's
    workers have started: Numba re-reads its configuration at each compilation, and its default
    thread count is the calling thread's CPU count; the pinned thread saw 1 and raised "Cannot
    set NUMBA_NUM_THREADS to a different value" (and a compiled model's call waited for it
    forever). A fresh process: the workers' start and the first compilations are per process."""
    import subprocess
    import sys

    code = """if True:
        import os
        os.environ.pop("NUMBA_NUM_THREADS", None)
        import numba, numpy as np
        from numba import njit, prange
        from convolab.kernels import team as T

        @njit(parallel=True)
        def psum(a):
            s = 0.0
            for i in prange(a.size):
                s += a[i]
            return s

        psum(np.ones(64))  # Numba's workers start
        # Numba's environment changes (any NUMBA_ variable; here one set to its default): the
        # next compilation re-reads the whole configuration, on whichever thread it runs
        os.environ["NUMBA_DEVELOPER_MODE"] = "0"
        seen = []

        @njit
        def f(x):
            return x + 1

        def job(i):
            seen.append(f(i) if i else -1)  # thread 1, a team thread, compiles f

        t = T.Team(2)
        with t.lock:
            assert t.run(job, (), 2, own=[0, 1]) == 2
        t.close()
        assert seen.count(2) == 1, seen
        print("ok")
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


def test_team_jobs_results_errors_and_thread_counts():
    from convolab.kernels import team as T

    t = T.Team(3)
    try:
        for threads in (1, 2, 3, 5):
            seen = []
            with t.lock:
                n = t.run(lambda i, k, seen=seen: seen.append((i, k)), (), threads,
                          own=lambda i, k: (i, k))
            assert n == min(threads, 3)
            assert sorted(seen) == [(i, n) for i in range(n)]
        with t.lock, pytest.raises(ValueError, match="thread 1"):
            def job(i):
                if i == 1:
                    raise ValueError(f"thread {i}")
            t.run(job, (), 2, own=[0, 1])
        with t.lock:  # the team still runs jobs after an error
            assert t.run(lambda i: None, (), 2, own=[0, 1]) == 2
    finally:
        t.close()


def test_complete_jobs_return_without_the_team_threads_report():
    """``complete=True`` jobs (they count their finished tasks and wait for the count) return
    as soon as the caller's own call does; back to back with ordinary jobs, on every thread
    count, every task runs exactly once and late team threads touch nothing."""
    from numba import njit

    from convolab.kernels import team as T
    from convolab.kernels._atomics import fetch_add, wait_until

    @njit(nogil=True)
    def job(counter, out, ntask):
        while True:
            t = fetch_add(counter, 0)
            if t >= ntask:
                break
            out[t] += t + 1
            fetch_add(counter, 1)
        wait_until(counter, 1, ntask)

    t = T.Team(2)
    try:
        for k in range(300):
            for threads in (1, 2):
                out = np.zeros(64, np.int64)
                with t.lock:
                    t.run(job, (np.zeros(2, np.int64), out, 64), threads, complete=k % 3 != 0)
                np.testing.assert_array_equal(out, np.arange(1, 65))
    finally:
        t.close()


def test_a_busy_team_runs_the_job_on_the_caller():
    from convolab.kernels import team as T

    shared = T.shared()
    ran = []
    with shared.lock:  # another Python thread's job holds the team
        assert T.run(lambda i, k: ran.append((i, k)), (), 2, own=lambda i, k: (i, k)) == 1
    assert ran == [(0, 1)]


@multi_cpu
def test_team_threads_sleep_after_their_spin_and_wake_for_the_next_job(monkeypatch):
    import time

    from convolab.kernels import _atomics
    from convolab.kernels import team as T

    if _atomics._MONOTONIC is None:
        pytest.skip("no monotonic clock for the spin's time bound")
    monkeypatch.setenv("CONVOLAB_SPIN_US", "300000")
    t = T.Team(2)
    try:
        with t.lock:
            t.run(lambda i: None, (), 2, own=[0, 1])
        # (spinning now, ready for the next job without a wake-up; not asserted: a loaded
        # machine may pause this thread longer than the spin)
        deadline = time.monotonic() + 30
        while t._sleepers == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert t._sleepers == 1  # then asleep, off the CPU
        with t.lock:  # and woken for the next job
            assert t.run(lambda i: None, (), 2, own=[0, 1]) == 2
    finally:
        t.close()


def test_spin_setting_is_checked(monkeypatch):
    from convolab.kernels import team as T

    monkeypatch.setenv("CONVOLAB_SPIN_US", "fast")
    with pytest.raises(ValueError, match="'fast'"):
        T.spin_microseconds()
    monkeypatch.setenv("CONVOLAB_SPIN_US", "0")
    assert T.spin_microseconds() == 0


def test_team_keeps_nothing_of_a_finished_job():
    """A job's arguments are released when it ends, not when the next job comes: a team thread
    that held them kept the FFT's spectra alive (more memory than its stated workspace)."""
    import gc
    import weakref

    from convolab.kernels import team as T

    class Big:
        pass

    t = T.Team(2)
    try:
        big = Big()
        ref = weakref.ref(big)
        with t.lock:
            t.run(lambda b, i: None, (big,), 2, own=[0, 1])
        del big
        gc.collect()
        assert ref() is None
    finally:
        t.close()


def test_jobs_submitted_quietly_let_the_team_sleep_at_once(monkeypatch):
    """Inside `team.quiet()` (PyTorch's interception runs every convolution so) a job tells the
    team threads to sleep when it ends instead of spinning beside PyTorch's OpenMP threads."""
    from convolab.kernels import team as T

    monkeypatch.setenv("CONVOLAB_SPIN_US", "300")
    t = T.Team(2)
    budgets = []
    try:
        def job(i):
            if i == 0:
                budgets.append(t._job[4])
        with t.lock:
            t.run(job, (), 2, own=[0, 1])
            with T.quiet():
                t.run(job, (), 2, own=[0, 1])
            t.run(job, (), 2, own=[0, 1])
        assert budgets == [300_000, 0, 300_000] and t._budget == 300_000  # nanoseconds
    finally:
        t.close()
