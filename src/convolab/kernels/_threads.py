"""Which OS threads run Numba's parallel regions (for `convolab.kernels.pin_numba_workers`)."""

import numba
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def _gettid(typingctx):
    """glibc's ``gettid()``: the calling thread's OS thread id."""

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                            "gettid")
        return builder.sext(builder.call(fn, []), ir.IntType(64))

    return types.int64(), codegen


@njit(parallel=True, cache=True, nogil=True)
def worker_tids(out, n):  # pragma: no cover - compiled
    """``out[numba thread id] = OS thread id`` for every thread that runs one of ``n``
    parallel iterations."""
    for _ in prange(n):
        out[numba.get_thread_id()] = _gettid()
