"""convolab's one thread runtime: a team of threads that run compiled, GIL-free kernels beside
the calling thread, and wait for the next job spinning instead of sleeping.

Why not Numba's parallel regions: on Numba's workqueue layer every region wakes sleeping
threads, which took 50-60 us on the 2-vCPU KVM development guest (Zen 4) -- as long as a whole
batch-1 1x1 layer of ResNet-50 runs on one thread (64 -> 64 at 56x56: 0.25 ms) -- and ONNX
Runtime's threads, which spin between calls, do not pay it. (The OpenMP layer spins too, but
its threads spin for long and fought OpenBLAS's; see `convolab.kernels`.)

A job is a ``@njit(nogil=True)`` function that every thread calls with the same arguments (and
optionally one argument of its own, e.g. a work buffer); the function splits its work by
atomic counters (`convolab.kernels._atomics`), so it gives the same result whatever number of
threads runs it, one included. After a job a team thread spins (``pause``, without the GIL)
for `spin_microseconds` waiting for the next one, then sleeps on a condition variable; the
caller wakes only sleeping threads. Jobs from several Python threads take turns: a caller
that finds the team busy runs its job on its own thread instead of waiting.

``CONVOLAB_SPIN_US`` sets the spin (microseconds, default 300; 0: sleep at once, e.g. when
another thread pool needs the cores between convolab's calls). Jobs submitted inside `quiet`
let the team sleep right after them: `convolab.interop.torch` runs a model's convolutions so,
because PyTorch's own OpenMP threads spin between its operators (EfficientNet-Lite0 with every
convolution through convolab: 50 ms per image with a spinning team, 23 ms without).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import time
import weakref

import numpy as np

#: spin of a team thread after a job, microseconds (``CONVOLAB_SPIN_US``)
DEFAULT_SPIN_US = 300

# control words: the job generation, the job's resident key (`Team.run`'s ``resident``; 0:
# none); from _DONE, a cache line per team thread: the last generation it finished
_GEN = 0
_KEY = 1
_DONE = 8


def spin_microseconds() -> int:
    """The spin after a job (``CONVOLAB_SPIN_US``, default `DEFAULT_SPIN_US`)."""
    v = os.environ.get("CONVOLAB_SPIN_US")
    if v is None:
        return DEFAULT_SPIN_US
    try:
        return max(0, int(v))
    except ValueError:
        raise ValueError(f"CONVOLAB_SPIN_US must be a whole number of microseconds, got {v!r}") \
            from None


_quiet: contextvars.ContextVar[bool] = contextvars.ContextVar("convolab_team_quiet", default=False)


@contextlib.contextmanager
def quiet():
    """Jobs submitted in this block (by this thread or task) let the team's threads sleep as
    soon as they end instead of spinning (see the module docstring)."""
    token = _quiet.set(True)
    try:
        yield
    finally:
        _quiet.reset(token)


class Team:
    """Up to ``size - 1`` threads (started as jobs need them) that run jobs beside the caller."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"a team needs at least one thread, got {size}")
        self.size = size
        self._reset()
        _TEAMS.add(self)

    def _reset(self) -> None:
        """No threads yet (also in a forked child, which inherits the team but not its
        threads)."""
        self._ctl = np.zeros(_DONE + 8 * self.size, dtype=np.int64)
        self._cond = threading.Condition()
        self._sleepers = 0
        self._job = None
        self._errors: list = []
        self._threads: list = []
        self._tids: dict[int, int] = {}
        self._affinity: dict[int, frozenset] = {}
        self._caller_cpu = None
        self._budget = 0
        self.lock = threading.Lock()

    # ----------------------------------------------------------------- team threads
    def _loop(self, i: int) -> None:
        from ._atomics import spin_changed

        self._tids[i] = threading.get_native_id()
        ctl = self._ctl
        seen = int(ctl[_GEN])
        budget = self._budget
        pending = None  # a generation a resident loop returned on: its job, without a wait
        while True:
            if pending is not None:
                g, pending = pending, None
            else:
                g = spin_changed(ctl, _GEN, seen, budget) if budget else seen
            if g == seen:
                with self._cond:
                    self._sleepers += 1
                    while ctl[_GEN] == seen:
                        self._cond.wait()
                    self._sleepers -= 1
                g = int(ctl[_GEN])
            seen = g
            job = self._job
            if job is None:
                return
            fn, args, own, n, budget, resident = job
            job = None
            if i + 1 >= n:
                fn = args = own = resident = None
                continue  # not needed for this job
            try:
                if resident is None:
                    fn(*args, *_extra(own, i + 1, n))
                else:
                    # this job and the next ones of the same key, in compiled code: the thread
                    # returns here (and needs the GIL) only for another job or to sleep
                    loop, key = resident
                    g = seen = int(loop(ctl, i, g, budget, key, *args, *_extra(own, i + 1, n)))
                    # another job came (run it now), or the loop spun its budget (sleep)
                    pending = int(ctl[_GEN])
            except BaseException as e:  # noqa: BLE001 - raised by run()
                self._errors.append(e)
            finally:
                # hold nothing of the job while waiting for the next (its arrays would stay
                # alive: the FFT's spectra, measured as workspace)
                fn = args = own = resident = None
                ctl[_DONE + 8 * i] = g  # this thread's own slot: one writer, no atomics

    def _start(self, n: int) -> None:
        if not self._budget:
            self._budget = spin_microseconds() * 1000  # nanoseconds
        while len(self._threads) < n - 1:
            i = len(self._threads)
            t = threading.Thread(target=self._loop, args=(i,), daemon=True,
                                 name=f"convolab-team-{i}")
            t.start()
            self._threads.append(t)
        while len(self._tids) < len(self._threads):  # just started: wait for their ids
            time.sleep(0)

    def _keep_off_caller(self) -> None:
        """Keep the team's threads off the calling thread's CPU: Linux wakes a thread on its
        waker's CPU and leaves it there, and the two then took turns on one CPU (measured: no
        speed-up from the second thread); the caller stays free to move. Checked at every job
        (a spinning team thread, pinned off the caller's previous CPU, would otherwise share
        the CPU the caller moved to), with work only when the caller's CPU changed."""
        from .._parallel import _current_cpu

        cpu = _current_cpu()
        if cpu is not None and cpu == self._caller_cpu and len(self._affinity) == len(self._tids):
            return
        self._caller_cpu = cpu
        try:
            allowed = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            return
        others = frozenset(allowed - {cpu}) if cpu is not None else frozenset(allowed)
        if not others:
            return
        for tid in self._tids.values():
            if self._affinity.get(tid) != others:
                try:
                    os.sched_setaffinity(tid, others)
                except OSError:
                    pass
                self._affinity[tid] = others

    # ----------------------------------------------------------------- the caller
    def run(self, fn, args: tuple, threads: int, own=None, complete: bool = False,
            resident=None) -> int:
        """``fn(*args)`` on ``threads`` threads, this one included (at most the team's size);
        returns how many ran it. The caller holds `lock`. ``own`` gives each thread more
        arguments: a list (thread t: ``fn(*args, own[t])``) or a function (``fn(*args,
        *own(t, n))`` on thread t of the n that run the job).

        ``complete``: the job itself returns only once all its work is done, on every thread
        that runs it (it counts finished tasks and waits for the count, compiled), and a thread
        that starts it late finds nothing left and touches nothing. The caller then returns as
        soon as its own call does, without waiting for the team threads to report back: their
        report takes the GIL, and handing it over and back cost 10-20 us per job on the 2-vCPU
        development VM (a team thread that has not finished its report, or not even started the
        job, when the next job comes goes straight on to that one).

        ``resident = (loop, key)`` (``key`` > 0): a team thread runs the job as ``loop(ctl, i,
        gen, budget_ns, key, *args, *own)``, a compiled function that runs ``fn`` for this
        generation and then, without returning, for every later generation whose
        ``ctl[_KEY]`` is ``key`` (with the same arguments; `convolab.runtime._executor.serve`)
        until another job comes or its spin budget runs out, marking each done; it returns the
        last generation it ran. A team thread that returns to Python between jobs waits for
        the GIL, which the caller holds until it enters its own call of ``fn``: on the 2-vCPU
        VM the team thread then started 0.1-0.16 ms late, every call."""
        from ._atomics import wait_slots

        n = max(1, min(threads, self.size))
        if n == 1:
            fn(*args, *_extra(own, 0, 1))
            return 1
        self._start(n)
        budget = 0 if _quiet.get() else self._budget
        self._job = (fn, args, own, n, budget, resident if budget else None)
        gen = int(self._ctl[_GEN]) + 1
        self._keep_off_caller()
        self._ctl[_KEY] = resident[1] if resident is not None and budget else 0
        self._ctl[_GEN] = gen
        if self._sleepers:
            with self._cond:
                self._cond.notify_all()
        try:
            fn(*args, *_extra(own, 0, n))
        finally:
            if not complete:
                wait_slots(self._ctl, _DONE, 8, n - 1, gen)
            self._job = (None, (), None, 0, self._budget, None)
        if self._errors:
            err = self._errors[:]
            self._errors.clear()
            raise err[0]
        return n

    def close(self) -> None:
        """Let the threads end (a later job starts new ones)."""
        with self._cond:
            self._job = None
            self._ctl[_KEY] = 0
            self._ctl[_GEN] += 1
            self._cond.notify_all()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _extra(own, t: int, n: int) -> tuple:
    """Thread t's own arguments of a job run by n threads (see `Team.run`)."""
    if own is None:
        return ()
    if callable(own):
        return tuple(own(t, n))
    return (own[t],)


_TEAMS: weakref.WeakSet = weakref.WeakSet()
_shared: Team | None = None
_shared_lock = threading.Lock()


def shared() -> Team:
    """The process's team, sized to the CPUs it may run on."""
    global _shared
    if _shared is None:
        with _shared_lock:
            if _shared is None:
                try:
                    cpus = len(os.sched_getaffinity(0))
                except AttributeError:  # pragma: no cover - not Linux
                    cpus = os.cpu_count() or 1
                _shared = Team(max(1, cpus))
    return _shared


def run(fn, args: tuple, threads: int | None = None, own=None, complete: bool = False) -> int:
    """Run a job on the shared team with ``threads`` threads (default: convolab's thread
    count, `convolab._machine.worker_count`); if another Python thread's job holds the team,
    on this thread alone. Returns how many threads ran it. ``complete``: see `Team.run`."""
    if threads is None:
        from .._machine import worker_count

        threads = worker_count()
    team = shared()
    if threads > 1 and team.lock.acquire(blocking=False):
        try:
            return team.run(fn, args, threads, own, complete)
        finally:
            team.lock.release()
    fn(*args, *_extra(own, 0, 1))
    return 1


def _after_fork_in_child() -> None:
    for team in list(_TEAMS):
        team._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
