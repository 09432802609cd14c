"""`conv2d` on a chunked ``dask.array``: every output block one task, bit-identical to one process.

Layout: NCHW, chunked along the batch (N) and the image (H, W), channels whole in each chunk.
The output block of input chunk ``(n, h, w)`` holds the outputs at its rows and columns divided
by the stride (`convolab.dask.halo.window_blocks`); its task gathers the rows and columns its
windows read -- its share of the chunk plus a halo of ``dilation (R - 1)`` rows and columns
from the chunks around it, however many that takes (each such slice a task of its own, run
where its chunk lives: `halo.piece`), with the whole convolution's zero padding on the sides
that touch the array's border, into one array it reuses, and convolves that without padding.

Each output element is then computed once, from the same input values, the same weights and
the same zero padding as in `convolab.conv2d` on the whole array, so an algorithm whose
summation order is fixed per output (``deterministic`` in `convolab.registry`: ``direct``,
``im2win``) gives the same bits for every chunking. The fast algorithms (Winograd, SFC, FFT,
im2col) differ from the whole-array call only by their usual rounding (their tiles and BLAS
blocking see a different image size).

The weights (and bias) are one key of the graph, so a distributed scheduler sends them to each
worker once; each worker process plans each distinct block shape once (`plan_cache_info`), not
once per block: a chunking has at most a handful of block shapes (interior, first and last
along H and W, the uneven last chunk).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from .. import registry
from ..api import plan as make_plan
from ..errors import ConvError, UnsupportedError
from ..spec import ConvSpec
from .cluster import check_task_bytes, task_budget
from .halo import Block, out_chunks, piece, window_blocks

#: plans a worker process keeps (least recently used dropped first)
PLAN_CACHE_SIZE = 64


@dataclass(frozen=True)
class _Weights:
    """The graph's one weights entry: filter and bias in their given dtypes."""

    w: np.ndarray
    bias: np.ndarray | None


@dataclass(frozen=True)
class _Config:
    """What a block task needs to plan besides its shape: hashable, a plan-cache key part."""

    weights: str  # the weights' key: identifies them in the plan cache
    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    algorithm: str
    dtype: str  # the whole convolution's input dtype (x and w promoted)


_plans: OrderedDict = OrderedDict()
_plans_lock = threading.Lock()
_stats = {"built": 0, "hits": 0}


def plan_cache_info() -> dict:
    """This process's block plans: ``built`` (planned), ``hits`` (reused), ``size`` (kept)."""
    with _plans_lock:
        return {"built": _stats["built"], "hits": _stats["hits"], "size": len(_plans)}


def clear_plan_cache() -> None:
    """Forget this process's block plans and zero the counters."""
    with _plans_lock:
        _plans.clear()
        _stats.update(built=0, hits=0)


def _block_plan(weights: _Weights, cfg: _Config, shape: tuple, pads: tuple):
    key = (cfg, shape, pads)
    with _plans_lock:
        p = _plans.get(key)
        if p is not None:
            _plans.move_to_end(key)
            _stats["hits"] += 1
            return p
        p = make_plan(shape, weights.w, weights.bias, cfg.stride, pads, cfg.dilation, cfg.groups,
                      algorithm=cfg.algorithm, dtype=np.dtype(cfg.dtype))
        _plans[key] = p
        _stats["built"] += 1
        while len(_plans) > PLAN_CACHE_SIZE:
            _plans.popitem(last=False)
        return p


_local = threading.local()


def _gather(grid, pads: tuple, dtype) -> np.ndarray:
    """Rows of pieces (each a list of NCHW arrays side by side along W) -> one array of
    ``dtype`` with the zero padding ``pads`` (left, right, top, bottom) around them, in a
    buffer this thread reuses from block to block: the block's convolution then needs no
    padded copy of its own, and no fresh block-sized array is faulted in for every task (a 64
    MiB block: 13 ms for `np.block` into a fresh array, 6 ms into a reused one, then direct's
    padded copy at the array's borders)."""
    pl, pr, pt, pb = pads
    h = sum(row[0].shape[2] for row in grid) + pt + pb
    w = sum(p.shape[3] for p in grid[0]) + pl + pr
    shape = (grid[0][0].shape[0], grid[0][0].shape[1], h, w)
    size = int(np.prod(shape))
    buf = getattr(_local, "buf", None)
    if buf is None or buf.dtype != dtype or buf.size < size:
        buf = _local.buf = np.empty(size, dtype=dtype)
    x = buf[:size].reshape(shape)
    x[:, :, :pt] = 0
    x[:, :, h - pb:] = 0
    x[:, :, :, :pl] = 0
    x[:, :, :, w - pr:] = 0
    r0 = pt
    for row in grid:
        c0 = pl
        for p in row:
            x[:, :, r0:r0 + p.shape[2], c0:c0 + p.shape[3]] = p
            c0 += p.shape[3]
        r0 += row[0].shape[2]
    return x


def _conv_block(weights: _Weights, cfg: _Config, grid, pads) -> np.ndarray:
    x = _gather(grid, pads, np.dtype(cfg.dtype))
    return _block_plan(weights, cfg, x.shape, (0, 0, 0, 0))(x)


def _piece(dsk: dict, name: str, x_name, idx: tuple, chunk_shape: tuple, rows: tuple, cols: tuple):
    """The key of rows ``rows`` and columns ``cols`` of chunk ``idx`` (`halo.piece`)."""
    (_, r0, r1), (_, c0, c1) = rows, cols
    return piece(dsk, name, (x_name, *idx), 2, ((r0, r1), (c0, c1)), chunk_shape)


def _block_spec(spec: ConvSpec, n: int, bh: Block, bw: Block) -> ConvSpec:
    return ConvSpec.from_shapes(
        (n, spec.C, bh.rows[1] - bh.rows[0], bw.rows[1] - bw.rows[0]), spec.w_shape, spec.stride,
        (bw.pad[0], bw.pad[1], bh.pad[0], bh.pad[1]), spec.dilation, spec.groups, spec.dtype)


def check_input(x, what: str = "x"):
    """Refuse what is not a dask array with known chunk sizes."""
    if not isinstance(x, da.Array):
        raise ConvError(
            f"{what} must be a dask.array.Array, got {type(x).__module__}.{type(x).__name__}: wrap "
            f"it with dask.array.from_array({what}, chunks=...) (or use convolab.conv2d for an "
            "array in memory)"
        )
    if any(np.isnan(c) for cs in x.chunks for c in cs):
        raise ConvError(f"{what} has unknown chunk sizes: call {what}.compute_chunk_sizes() first")


def conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algorithm="auto",
           memory_limit=None):
    """2D convolution of a chunked dask array, PyTorch semantics, lazily.

    Parameters
    ----------
    x : dask.array.Array, shape (N, C, H, W)
        Chunked along N, H and W as you like (uneven chunks and chunks smaller than the kernel
        too); the channels must be one chunk.
    w : array_like, shape (K, C/groups, R, S)
        Computed into memory if it is a dask array; one key of the graph.
    bias : array_like, shape (K,), optional
    stride, padding, dilation, groups
        As `convolab.conv2d`.
    algorithm : str
        A registered CPU algorithm, or ``"auto"``: chosen once, on this process, for the most
        common block and used for every block.
    memory_limit : int, optional
        Bytes one task may use; default half of a worker's memory limit per thread when a
        distributed client is active (`convolab.dask.cluster.task_budget`), else unchecked.

    Returns
    -------
    dask.array.Array, shape (N, K, OH, OW)
        Lazy, with known chunks: the batch chunks of ``x``, all K channels, and along H and W
        the input's chunks divided by the stride (output ``i`` goes with input row ``i s``): a
        "same" convolution keeps the input's chunks.

    Raises
    ------
    ConvError
        ``x`` is not a dask array or is chunked along the channels, invalid shapes or
        hyper-parameters, or tasks that would need more memory than allowed (the message says
        what to rechunk).
    UnsupportedError
        The named algorithm cannot run a block of this chunking.

    Notes
    -----
    With a deterministic algorithm (``direct``, ``im2win``) the result is bit-identical to
    ``convolab.conv2d(x.compute(), w, ...)`` for every chunking; see the module notes. Cost:
    the convolution's multiplications plus the halo's reads (``dilation (R - 1)`` extra rows
    and columns per block).
    """
    check_input(x)
    if x.ndim != 4:
        raise ConvError(f"input must be 4-D (N, C, H, W), got {x.ndim}-D shape {x.shape}")
    w = np.asarray(w)
    b = None if bias is None else np.asarray(bias)
    spec = ConvSpec.from_arrays(x, w, b, stride, padding, dilation, groups)
    if spec.dtype.kind != "f" or w.dtype.kind != "f" or (b is not None and b.dtype.kind != "f"):
        raise ConvError(
            f"unsupported dtypes (input {x.dtype}, weight {w.dtype}): use float16, float32 or float64"
        )
    if len(x.chunks[1]) != 1:
        raise ConvError(
            f"x is chunked along the channels (chunks {x.chunks[1]}); convolab.dask.conv2d keeps "
            "the channels of a pixel together: x = x.rechunk({1: -1})"
        )
    pl, pr, pt, pb = spec.padding
    bhs = window_blocks(x.chunks[2], (pt, pb), spec.stride[0], spec.dilated_R, "H")
    bws = window_blocks(x.chunks[3], (pl, pr), spec.stride[1], spec.dilated_S, "W")
    shapes = {}
    for n in set(x.chunks[0]):
        for bh in bhs:
            for bw in bws:
                s = _block_spec(spec, n, bh, bw)
                shapes[s] = shapes.get(s, 0) + x.chunks[0].count(n)
    algo_name = _algorithm(algorithm, spec, w, b, shapes)
    _check_memory(algo_name, shapes, task_budget(memory_limit), x)

    token = tokenize(x.name, w, b, spec, algo_name)
    name = f"convolab-conv2d-{token}"
    wkey = f"convolab-weights-{tokenize(w, b)}"
    cfg = _Config(wkey, spec.stride, spec.dilation, spec.groups, algo_name, spec.dtype.str)
    dsk: dict = {wkey: _Weights(w, b)}
    hb = [list(x.chunks[2]), list(x.chunks[3])]
    for i, _ in enumerate(x.chunks[0]):
        for p, bh in enumerate(bhs):
            for q, bw in enumerate(bws):
                grid = [
                    [_piece(dsk, name, x.name, (i, 0, rh[0], cw[0]), (hb[0][rh[0]], hb[1][cw[0]]),
                            rh, cw)
                     for cw in bw.pieces]
                    for rh in bh.pieces
                ]
                pads = (bw.pad[0], bw.pad[1], bh.pad[0], bh.pad[1])
                dsk[(name, i, 0, p, q)] = (_conv_block, wkey, cfg, grid, pads)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[x])
    chunks = (x.chunks[0], (spec.K,), out_chunks(bhs), out_chunks(bws))
    return da.Array(graph, name, chunks, meta=np.empty((0, 0, 0, 0), dtype=spec.out_dtype))


def _algorithm(algorithm, spec: ConvSpec, w, b, shapes: dict) -> str:
    """The algorithm every block runs: the named one (checked against every block shape) or
    ``auto``'s choice for the most common block."""
    if not isinstance(algorithm, str):
        raise ConvError(f"algorithm must be a name or 'auto', got {algorithm!r}")
    if algorithm == "auto":
        common = max(shapes, key=lambda s: (shapes[s], s.H * s.W))
        return make_plan(common.x_shape, w, b, common.stride, common.padding, common.dilation,
                         common.groups, dtype=spec.dtype).algorithm
    algo = registry.get(algorithm)
    if algo.device != "cpu":
        raise UnsupportedError(algo.name, f"it runs on {algo.device} tensors, not on dask's NumPy "
                               "chunks", registry.capable(spec))
    for s in shapes:
        reason = algo.supports(s)
        if reason is not None:
            raise UnsupportedError(algo.name, f"{reason} (block {s.x_shape}, padding {s.padding})",
                                   registry.capable(s))
    return algo.name


def _check_memory(algo_name: str, shapes: dict, budget: int | None, x) -> None:
    if budget is None:
        return
    algo = registry.get(algo_name)

    def need(s: ConvSpec) -> int:
        item = s.compute_dtype.itemsize
        # the gathered pieces and their joined copy, the output, the workspace
        return (2 * s.N * s.C * s.H * s.W + s.N * s.K * s.OH * s.OW) * item + algo.workspace_bytes(s)

    worst = max(shapes, key=need)
    n = need(worst)
    if n > budget:
        f = (budget / n) ** 0.5
        h = max(1, int(max(x.chunks[2]) * f))
        ww = max(1, int(max(x.chunks[3]) * f))
        check_task_bytes(
            n, budget, f"a block {worst.x_shape} (chunk and halo) -> {worst.out_shape}",
            f"rechunk x to smaller chunks along H and W, e.g. x.rechunk({{0: 1, 2: {h}, 3: {ww}}})",
        )
