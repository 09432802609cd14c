"""Chunked, out-of-core and distributed convolab on Dask (extra ``dask``).

``conv2d(x, w, ...)`` convolves a ``dask.array`` NCHW input chunked along batch and image,
block by block with halos, bit-identical to `convolab.conv2d` on the whole array for the
deterministic algorithms (`convolab.dask.conv`, geometry in `convolab.dask.halo`);
``bilateral_filter`` / ``joint_bilateral_filter`` / ``gaussian_filter`` do the same for
`convolab.highdim`'s image filters (`convolab.dask.filters`); ``open_array`` / ``save_array``
stream from and to zarr stores and ``.npy`` memory maps (`convolab.dask.store`);
`convolab.dask.sweeps` runs the deviation sweep, the calibration and the accuracy study as Dask
tasks; ``local_cluster`` starts worker processes with convolab's thread count set
(`convolab.dask.cluster`); `convolab.dask.estimate` counts a graph's tasks and bytes.
"""

from .cluster import local_cluster, worker_peak_memory
from .conv import clear_plan_cache, conv2d, plan_cache_info
from .filters import bilateral_filter, gaussian_filter, halo_radius, joint_bilateral_filter, lattice_reach
from .store import from_npy, open_array, save_array, to_npy

__all__ = [
    "bilateral_filter",
    "clear_plan_cache",
    "conv2d",
    "from_npy",
    "gaussian_filter",
    "halo_radius",
    "joint_bilateral_filter",
    "lattice_reach",
    "local_cluster",
    "open_array",
    "plan_cache_info",
    "save_array",
    "to_npy",
    "worker_peak_memory",
]
