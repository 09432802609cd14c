"""Atomic operations on int64 arrays for kernels whose threads share work or wait for each
other: hand out task numbers (`fetch_add`), and spin at a barrier (`load_acquire`, `pause`)."""

import platform

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I64 = ir.IntType(64)
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@intrinsic
def fetch_add(typingctx, arr, i):
    """``old = arr[i]; arr[i] += 1`` atomically (int64 array); returns ``old``."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
        return None
    sig = types.int64(arr, i)

    def codegen(context, builder, sig, args):
        ptr = context.make_array(sig.args[0])(context, builder, args[0]).data
        idx = context.cast(builder, args[1], sig.args[1], types.int64)
        return builder.atomic_rmw("add", builder.gep(ptr, [idx]), ir.Constant(_I64, 1), "seq_cst")

    return sig, codegen


@intrinsic
def load_acquire(typingctx, arr, i):
    """``arr[i]`` read atomically with acquire ordering (int64 array): a spin loop re-reads
    it every time, and sees what the writers wrote before their `fetch_add`."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
        return None
    sig = types.int64(arr, i)

    def codegen(context, builder, sig, args):
        ptr = context.make_array(sig.args[0])(context, builder, args[0]).data
        idx = context.cast(builder, args[1], sig.args[1], types.int64)
        return builder.load_atomic(builder.gep(ptr, [idx]), "acquire", 8)

    return sig, codegen


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
