"""Arrays larger than memory: dask arrays read from and written to zarr stores and ``.npy``
memory maps, chunk by chunk, by whichever worker runs the chunk's task.

A zarr store (a directory) is the format for clusters and for compressed data:
``from_zarr`` / ``to_zarr`` are dask's, with the output rechunked to regular chunks when a
convolution's blocks are not (zarr stores regular chunks). A ``.npy`` file is opened as a
memory map *in the task* that reads or writes it (`NpyReader`, `NpyWriter` hold only the path,
so the graph carries no data and any worker process on a machine that sees the file can run
them); writes go to disjoint regions, so they take no lock.

Peak memory of a streaming pass: the tasks running plus the input chunks waiting for their
neighbours' halos plus the outputs not yet stored; with chunks of a few tens of MiB that is far
below an input many times a worker's memory (``tools/dask_out_of_core.py`` measures it).
"""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
from dask.base import tokenize

from ..errors import ConvError


class NpyReader:
    """Read-only array view of a ``.npy`` file for `dask.array.from_array`: each indexing
    opens the file as a memory map and copies out the slice (the object pickles as its path)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            mm = np.load(self.path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise ConvError(f"cannot open {self.path} as a .npy array: {e}") from None
        self.shape, self.dtype, self.ndim = mm.shape, mm.dtype, mm.ndim

    def __getitem__(self, index) -> np.ndarray:
        return np.array(np.load(self.path, mmap_mode="r")[index])

    def __reduce__(self):
        return (NpyReader, (self.path,))


class NpyWriter:
    """Write target for `dask.array.store`: creates the ``.npy`` file (shape, dtype) once, then
    each ``writer[region] = block`` opens it as a memory map and writes the block."""

    def __init__(self, path, shape, dtype, create: bool = True):
        self.path = os.fspath(path)
        self.shape, self.dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        if create:
            np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=self.shape).flush()

    def __setitem__(self, index, value) -> None:
        mm = np.load(self.path, mmap_mode="r+")
        mm[index] = value
        mm.flush()

    def __reduce__(self):
        return (NpyWriter, (self.path, self.shape, self.dtype, False))


def from_npy(path, chunks) -> da.Array:
    """A lazy dask array over a ``.npy`` file (memory-mapped chunk by chunk in the tasks)."""
    r = NpyReader(path)
    st = os.stat(r.path)
    name = f"npy-{tokenize(r.path, st.st_mtime_ns, st.st_size)}"
    return da.from_array(r, chunks=chunks, name=name, lock=False, asarray=False, fancy=False,
                         meta=np.empty((0,) * r.ndim, dtype=r.dtype))


def to_npy(x: da.Array, path, compute: bool = True):
    """Write ``x`` to a new ``.npy`` file block by block; with ``compute=False`` return the
    delayed store (compute it to write)."""
    w = NpyWriter(path, x.shape, x.dtype)
    return da.store(x, w, lock=False, compute=compute)


def regular_chunks(x: da.Array) -> da.Array:
    """``x`` rechunked, where needed, to chunks all of one size along each axis but the last
    chunk (what zarr stores hold): the most common chunk size of each axis."""
    target = []
    for cs in x.chunks:
        if len(cs) <= 1 or all(c == cs[0] for c in cs[:-1]) and cs[-1] <= cs[0]:
            target.append(cs)
        else:
            size = max(set(cs), key=cs.count)
            n = sum(cs)
            target.append(tuple([size] * (n // size) + ([n % size] if n % size else [])))
    target = tuple(target)
    return x if target == x.chunks else x.rechunk(target)


def open_array(path, chunks=None) -> da.Array:
    """A zarr store (a directory, or ``*.zarr``) or a ``.npy`` file as a lazy dask array; zarr
    keeps its own chunks unless ``chunks`` is given, ``.npy`` needs ``chunks``."""
    path = os.fspath(path)
    if path.endswith(".npy"):
        if chunks is None:
            raise ConvError(f"{path}: a .npy file has no chunks of its own; give chunks=")
        return from_npy(path, chunks)
    if not os.path.exists(path):
        raise ConvError(f"{path}: no such zarr store or .npy file")
    x = da.from_zarr(path)
    return x if chunks is None else x.rechunk(chunks)


def save_array(x: da.Array, path, compute: bool = True):
    """Write ``x`` to a zarr store or (``*.npy``) a memory-mapped file, block by block; zarr
    stores get regular chunks (`regular_chunks`). With ``compute=False`` the delayed write."""
    path = os.fspath(path)
    if path.endswith(".npy"):
        return to_npy(x, path, compute=compute)
    return da.to_zarr(regular_chunks(x), path, overwrite=True, compute=compute)
