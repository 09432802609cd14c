"""Atomic operations on int64 arrays for kernels whose threads share work or wait for each
other: hand out task numbers (`fetch_add`), count finished work (`fetch_add_n`), and wait for
a count (`wait_until`: `load_acquire`, `pause`, `yield_cpu`)."""

import platform
import sys

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_I64 = ir.IntType(64)
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _slot(context, builder, sig, args):
    """Pointer to ``arr[i]`` of an (int64 array, integer index) argument pair."""
    ptr = context.make_array(sig.args[0])(context, builder, args[0]).data
    return builder.gep(ptr, [context.cast(builder, args[1], sig.args[1], types.int64)])


def _int64_slot_op(doc, emit):
    """An intrinsic ``op(arr, i) -> int64`` on an int64 array whose code is ``emit(builder,
    pointer to arr[i])``."""

    def impl(typingctx, arr, i):
        if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
            return None
        sig = types.int64(arr, i)

        def codegen(context, builder, sig, args):
            return emit(builder, _slot(context, builder, sig, args))

        return sig, codegen

    impl.__doc__ = doc
    return intrinsic(impl)


fetch_add = _int64_slot_op(
    """``old = arr[i]; arr[i] += 1`` atomically (int64 array); returns ``old``.""",
    lambda builder, p: builder.atomic_rmw("add", p, ir.Constant(_I64, 1), "seq_cst"))

@intrinsic
def fetch_add_n(typingctx, arr, i, n):
    """``old = arr[i]; arr[i] += n`` atomically (int64 array); returns ``old``."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64
            and isinstance(n, types.Integer)):
        return None
    sig = types.int64(arr, i, n)

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", _slot(context, builder, sig, args), v, "seq_cst")

    return sig, codegen


load_acquire = _int64_slot_op(
    """``arr[i]`` read atomically with acquire ordering (int64 array): a spin loop re-reads
    it every time, and sees what the writers wrote before their `fetch_add`.""",
    lambda builder, p: builder.load_atomic(p, "acquire", 8))


@intrinsic
def pause(typingctx):
    """The x86 ``pause`` hint inside a spin loop (nothing elsewhere)."""
    sig = types.void()

    def codegen(context, builder, sig, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def yield_cpu(typingctx):
    """``sched_yield()``: let another runnable thread have this CPU (a spin loop that has
    waited long, e.g. because a thread it waits for was descheduled on a busy machine)."""
    sig = types.void()

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                            "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


#: spins at a wait before a waiting thread starts yielding its CPU
SPINS = 4000


@njit(inline="always")
def wait_until(ctr, i, target):  # pragma: no cover - compiled
    """Wait until ``ctr[i] >= target``: spin (``pause``) for a while, then yield the CPU
    between checks, so a thread the OS descheduled on a busy machine gets to run instead of
    being waited for a whole time slice."""
    spins = 0
    while load_acquire(ctr, i) < target:
        if spins < SPINS:
            pause()
            spins += 1
        else:
            yield_cpu()


#: clock_gettime's monotonic clock id where this platform has one (Linux 1, macOS 6)
_MONOTONIC = {"linux": 1, "darwin": 6}.get(sys.platform)


@intrinsic
def now_ns(typingctx):
    """``clock_gettime(CLOCK_MONOTONIC)`` in nanoseconds (0 where the platform has none)."""
    sig = types.int64()

    def codegen(context, builder, sig, args):
        if _MONOTONIC is None:
            return ir.Constant(_I64, 0)
        ts_ty = ir.LiteralStructType([_I64, _I64])
        ts = cgutils.alloca_once(builder, ts_ty)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), [ir.IntType(32), ts_ty.as_pointer()]),
            "clock_gettime")
        builder.call(fn, [ir.Constant(ir.IntType(32), _MONOTONIC), ts])
        sec = builder.load(builder.gep(ts, [ir.Constant(ir.IntType(32), 0),
                                            ir.Constant(ir.IntType(32), 0)]))
        nsec = builder.load(builder.gep(ts, [ir.Constant(ir.IntType(32), 0),
                                             ir.Constant(ir.IntType(32), 1)]))
        return builder.add(builder.mul(sec, ir.Constant(_I64, 1_000_000_000)), nsec)

    return sig, codegen


#: most ``pause`` steps of one `spin_changed` (its bound where there is no monotonic clock)
SPIN_STEPS_MAX = 1 << 22


@njit(nogil=True, cache=True)
def spin_changed(ctr, i, seen, budget_ns):  # pragma: no cover - compiled
    """Spin (``pause``) until ``ctr[i] != seen`` or ``budget_ns`` nanoseconds have passed (at
    most `SPIN_STEPS_MAX` steps); returns ``ctr[i]``. Without the GIL: a team thread waits
    here for its next job without a wake-up (an idle thread woken by the OS took 50-60 us to
    start on the 2-vCPU KVM guest, as long as a small layer runs)."""
    t0 = now_ns()
    steps = 0
    while steps < SPIN_STEPS_MAX:
        v = load_acquire(ctr, i)
        if v != seen:
            return v
        pause()
        steps += 1
        if steps & 63 == 0 and now_ns() - t0 > budget_ns:
            break
    return load_acquire(ctr, i)


@njit(nogil=True, cache=True)
def wait_slots(ctr, i0, step, n, value):  # pragma: no cover - compiled
    """Wait (`wait_until`'s spin, then yield) until ``ctr[i0 + j step]`` equals ``value`` for
    every ``j < n``, without the GIL."""
    for j in range(n):
        i = i0 + j * step
        spins = 0
        while load_acquire(ctr, i) != value:
            if spins < SPINS:
                pause()
                spins += 1
            else:
                yield_cpu()
