"""Chunked, out-of-core and distributed convolab on Dask (extra ``dask``).

``conv2d(x, w, ...)`` convolves a ``dask.array`` NCHW input chunked along batch and image,
block by block with halos, bit-identical to `convolab.conv2d` on the whole array for the
deterministic algorithms; ``bilateral_filter`` / ``joint_bilateral_filter`` /
``gaussian_filter`` do the same for `convolab.highdim`'s image filters; `convolab.dask.store`
streams from and to zarr stores and ``.npy`` memory maps; `convolab.dask.sweeps` runs the
deviation sweep, the calibration and the accuracy study as Dask tasks;
`convolab.dask.cluster` starts local workers with convolab's thread count set.
"""

from .cluster import local_cluster, worker_peak_memory
from .conv import clear_plan_cache, conv2d, plan_cache_info

__all__ = [
    "clear_plan_cache",
    "conv2d",
    "local_cluster",
    "plan_cache_info",
    "worker_peak_memory",
]
