"""Private Numba kernels. Wrappers in ``convolab.algorithms`` validate, allocate and launch.

Every kernel is compiled with ``cache=True, nogil=True`` and without fast-math, so that no
floating-point reassociation or fused multiply-add contraction happens behind our back:
each output's products are summed in the order the source code states, whatever the SIMD
width the host CPU offers or the thread count.
"""

import threading

#: Numba's OpenMP/workqueue pools are not re-entrant across Python threads on every
#: platform; parallel kernels launched from several Python threads take turns.
PARALLEL_LOCK = threading.Lock()
