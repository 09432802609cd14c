"""Private Numba kernels. Wrappers in ``convolab.algorithms`` validate, allocate and launch.

Every kernel is compiled with ``cache=True, nogil=True`` and without fast-math, so that no
floating-point reassociation or fused multiply-add contraction happens behind our back:
each output's products are summed in the order the source code states, whatever the SIMD
width the host CPU offers or the thread count.

Threading: unless the user chose one (``NUMBA_THREADING_LAYER``), convolab runs Numba's
parallel kernels on the ``workqueue`` layer. The OpenMP layer's threads spin after a
parallel region and fight OpenBLAS's (and PyTorch's) threads for the cores: on two cores a
parallel unfold followed by a BLAS GEMM ran 2-60x slower with it (notes/performance.md).
The workqueue layer cannot run two parallel regions at once, so every parallel kernel is
launched under `PARALLEL_LOCK`; parallel kernels launched from several Python threads take
turns, each using all the cores.
"""

import os
import sys
import threading

if "NUMBA_THREADING_LAYER" not in os.environ:
    os.environ["NUMBA_THREADING_LAYER"] = "workqueue"
    if "numba" in sys.modules:  # numba already imported: its config was read from the environment
        sys.modules["numba"].config.THREADING_LAYER = "workqueue"

#: held while a Numba parallel kernel runs
PARALLEL_LOCK = threading.Lock()
