"""Winograd F(m x m, r x r) and SFC-N(m x m, r x r) on one engine for 2D bilinear algorithms.

A bilinear algorithm on a tile is ``vec(Y) = AT [(G vec(W)) * (BT vec(X))]`` (see
`convolab.transforms.forms`). For a layer with C input and K output channels (per group):

1. tile the zero-padded input (tiles overlap by r - 1; partial edge tiles read zeros beyond it);
2. input transform of every (tile, channel): ``V[p, t, c] = (BT vec(X_t,c))[p]`` -- a separable
   stage ``B1 X B1^T`` then, for non-separable algorithms such as SFC's native form, a sparse
   stage ``S_in``. Numba, channels-last: the block's input is copied to NHWC and every step is
   a vector operation along C (with fewer than `SMALL_C` channels per group the NCHW input is
   read directly and the vectors run along the tiles instead, ``V[p, c, t]``);
3. filter transform ``Wt[p, c, k] = (G vec(W_k,c))[p]``, once, in `prepare` (kept in the plan);
4. channel reduction: one GEMM per transform-domain point ``M[p] = V[p] @ Wt[p]``
   (T x C) @ (C x K): with at least `MK_MIN_CG` channels per group on the register-blocked
   microkernel of direct and im2win, from weights packed once in the plan (no packing per
   call: with few tiles the BLAS spent most of its time packing the weights; 512@7 batch 1
   F(2x2,3x3) ran 215 -> 508 GFLOP/s), else through the BLAS called from Numba, held to one
   thread;
5. output transform ``Y = A1 (S_out M) A1^T`` per tile, vectorised along K, each output pixel's
   K values stored straight into the NCHW output.

Images are processed in blocks of about `CHUNK_TILES` tiles (so the NHWC copy, V and M stay in
cache); all images of a block share the GEMMs (batch folds into T). Threads: Python worker
threads run the serial, GIL-free kernels -- whole blocks per thread when there are at least two
per thread, else a block's chunks dealt out to the threads (each running all three phases of
its chunks), else (a single tile row, or transformed weights too large for every thread to
read) every step split over the threads (by tile, point or channel) or, with the microkernel
GEMMs, the output channels split (`_channel_split`) -- so no OpenMP pool spins
beside the BLAS or PyTorch. A hand-off between threads costs 50-170 us on the development
machine, as much as a small layer's transforms: dealing chunks took batch-1 64@56 F(2x2,3x3)
from 1.2-1.35 ms to 0.6 ms. Stride and dilation must be 1; groups and batch are
supported.

Cost: ``multiplies = groups * N * TH * TW * P * (K/groups) * (C/groups)`` transform-domain
products (TH = ceil(OH/m), TW = ceil(OW/m)), i.e. P per tile for N = C = K = 1: 16, 36, 64 for
F(2x2), F(4x4), F(6x6) with 3x3; SFC-6(6x6,3x3) 88 native / 100 nested, SFC-4(4x4,3x3) 46,
SFC-6(7x7,3x3) 132, SFC-6(6x6,5x5) 184. Workspace (`workspace_for`): the NHWC copy of a block
and V and M of a chunk, per block in flight; these buffers are kept per thread and reused by
later calls (allocating them afresh page-faulted on every call). The transformed weights held
by the plan are P / (r r) times the weights.

Error: the bound is derived (`error_bound`); not deterministic across CPUs because the
BLAS picks its kernel (and summation order) by SIMD width.

Sources: A. Lavin, S. Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016;
Q. He et al., "Symbolic Fourier Convolution", ICML 2024.

Size: one engine for every Winograd and SFC variant (engine construction, filter transform, the
threading modes, the error bound, the registrations); each part is short and the parts share
the engine's types.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import NamedTuple

import numpy as np

from .._parallel import blas_one_thread, run_threads, worker_count
from ..cache import cache_dir
from ..kernels import load_from_cache
from ..kernels.microkernel import kb as _kb
from ..registry import UNIT_ROUNDOFF, Algorithm, gamma, register
from ..spec import ConvSpec
from ..transforms import sfc_2d, winograd_2d
from ..transforms.forms import Bilinear2D

#: target number of tiles per chunk (V and M of a chunk should stay in the caches)
CHUNK_TILES = 256

#: below this many input channels per group the input transform vectorises along the tiles
SMALL_C = 16

#: cost of handing work to another thread and waiting for it, and the rate at which threads
#: stream transformed weights from the last-level cache: `_plan_blocks` weighs the two
#: (measured on the 2-core development machine: 50-170 us per hand-off; batch 1, 512@7,
#: F(2x2,3x3) ran 0.92 ms with the phases split and 1.32 ms with chunks dealt out)
HANDOFF_SECONDS = 200e-6
WEIGHT_BYTES_PER_SECOND = 40e9

#: the point GEMMs run on the microkernel (`_microkernel_gemms`) from this many input
#: channels per group (one thread, 16 points, C = K, tiles T = 16 ... 256: 0.8-0.97x the BLAS
#: for C = 64, 0.96-1.19x for 128, 1.0-1.9x for 256 and 1.03-2.3x for 512, the most for few tiles)
MK_MIN_CG = 128
#: ... and the least fraction of its output-channel lanes (blocks of 32 in float32) in use
MK_MIN_USE = 0.75
#: compiles the microkernel GEMM path for one dtype in a child process (`load_from_cache`)
_WARM = ("import numpy as np, convolab; convolab.conv2d(np.ones((1, 128, 4, 4), '{dtype}'), "
         "np.ones((32, 128, 3, 3), '{dtype}'), padding=1, algorithm='winograd_f2x3')")

#: registered variants: name -> (factory of the exact algorithm, summary, kernel size): the
#: kernel size answers ``supports`` without building the exact transforms (SFC-6(6x6,5x5)'s
#: took 0.5 s of a first ``auto`` plan of 3x3 layers, which it cannot run)
VARIANTS = {
    "winograd_f2x3": (lambda: winograd_2d(2, 3), "Winograd F(2x2,3x3): 16 products per 2x2 tile", 3),
    "winograd_f4x3": (lambda: winograd_2d(4, 3), "Winograd F(4x4,3x3): 36 products per 4x4 tile", 3),
    "winograd_f6x3": (lambda: winograd_2d(6, 3), "Winograd F(6x6,3x3): 64 products per 6x6 tile", 3),
    "winograd_f2x5": (lambda: winograd_2d(2, 5), "Winograd F(2x2,5x5): 36 products per 2x2 tile", 5),
    "sfc4_4x3": (lambda: sfc_2d(4, 4, 3), "SFC-4(4x4,3x3) native: 46 products per 4x4 tile", 3),
    "sfc6_6x3": (lambda: sfc_2d(6, 6, 3), "SFC-6(6x6,3x3) native: 88 products per 6x6 tile", 3),
    "sfc6_6x3_nested": (
        lambda: sfc_2d(6, 6, 3, native=False),
        "SFC-6(6x6,3x3) nested: 100 products per 6x6 tile", 3,
    ),
    "sfc6_7x3": (lambda: sfc_2d(6, 7, 3), "SFC-6(7x7,3x3) native: 132 products per 7x7 tile", 3),
    "sfc6_6x5": (lambda: sfc_2d(6, 6, 5), "SFC-6(6x6,5x5) native: 184 products per 6x6 tile", 5),
}


@dataclass(frozen=True)
class Engine:
    """Floating-point form of a `Bilinear2D` for the kernels and the cost model (built once
    per algorithm).

    The exact algorithm (`alg`: `fractions.Fraction` matrices) is kept pickled until it is
    asked for: neither the ranking nor the kernels need it, and unpickling the Fractions of
    every variant took a fresh process's first ``auto`` plan about 50 ms.
    """

    m: int  # output tile side
    r: int  # kernel side
    products: int  # P, products per tile
    G: np.ndarray  # (P, r*r) float64
    B1: np.ndarray  # (n1, n) float64
    A1: np.ndarray  # (m, n2) float64
    s_in: tuple  # CSR (indptr, indices, values float64), empty arrays for the identity
    s_out: tuple
    alpha: float  # error amplification, see error_bound
    stage_terms: tuple  # max terms per sum in each transform stage
    exact: object = field(repr=False)  # the Bilinear2D, or its pickle (bytes)

    @property
    def P(self) -> int:
        return self.products

    @cached_property
    def alg(self) -> Bilinear2D:
        """The exact `Bilinear2D` (unpickled on first use)."""
        e = self.exact
        return pickle.loads(e) if isinstance(e, bytes) else e

    def __reduce__(self):
        exact = self.exact if isinstance(self.exact, bytes) else pickle.dumps(self.exact)
        return (Engine, (self.m, self.r, self.products, self.G, self.B1, self.A1, self.s_in,
                         self.s_out, self.alpha, self.stage_terms, exact))


def _csr(s) -> tuple:
    if s is None:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    a = s.astype(float)
    indptr, indices, values = [0], [], []
    for row in a:
        nz = np.flatnonzero(row)
        indices.extend(nz.tolist())
        values.extend(row[nz].tolist())
        indptr.append(len(indices))
    return (np.array(indptr, np.int64), np.array(indices, np.int64), np.array(values))


def _max_terms(a) -> int:
    return int(max(1, np.count_nonzero(np.asarray(a, dtype=float), axis=1).max()))


def _alpha(alg: Bilinear2D) -> float:
    """max_i sum_d max_j T_i(d + j, j), T_i(l, j) = sum_p |A_out|[i,p] |G|[p,j] |B_in|[p,l].

    ``|B_in| = |S_in| |B1 (x) B1|`` and ``|A_out| = |A1 (x) A1| |S_out|`` are the absolute values
    of the stages as the kernels compute them; ``d`` runs over the 2D shifts between input and
    filter positions.
    """
    m, r, n = alg.m, alg.r, alg.n
    b_in = np.abs(np.kron(alg.B1.astype(float), alg.B1.astype(float)))
    a_out = np.abs(np.kron(alg.A1.astype(float), alg.A1.astype(float)))
    if alg.S_in is not None:
        b_in = np.abs(alg.S_in.astype(float)) @ b_in
    if alg.S_out is not None:
        a_out = a_out @ np.abs(alg.S_out.astype(float))
    g = np.abs(alg.G.astype(float))
    T = np.einsum("ip,pj,pl->ijl", a_out, g, b_in).reshape(m * m, r, r, n, n)
    # group by the shift (l - j) in each dimension: d in [-(r-1), n-1]
    D = n + r - 1
    best = np.zeros((m * m, D, D))
    for j1 in range(r):
        for j2 in range(r):
            blk = T[:, j1, j2]  # (m*m, n, n) over l
            sub = best[:, r - 1 - j1 : r - 1 - j1 + n, r - 1 - j2 : r - 1 - j2 + n]
            np.maximum(sub, blk, out=sub)
    return float(best.sum(axis=(1, 2)).max())


@cache
def engine(name: str) -> Engine:
    """The `Engine` of a registered variant (transforms built exactly, then converted).

    Building the SFC transforms in exact rational arithmetic takes 0.1-1 s per variant (about
    2 s of a fresh process's first ``auto`` plan, which states every variant's cost and error
    bound), so engines are kept on disk in the cache directory (`_engine_file`), keyed by the
    source of the transforms; a missing, stale or unreadable file is rebuilt.
    """
    stored = _stored_engines()
    if name in stored:
        return stored[name]
    eng = engine_for(VARIANTS[name][0]())
    stored[name] = eng
    _store_engines(_engine_file(), stored)
    return eng


def _stored_engines() -> dict:
    """The engines on disk, read once per process and cache directory."""
    return _stored_at(_engine_file())


@cache
def _stored_at(path) -> dict:
    return _load_engines(path)


def _engine_file():
    """``engines-<hash>.pickle`` in convolab's cache directory; the hash covers the source files
    that define the transforms and the engine (a changed transform never reads a stale file)."""
    return cache_dir() / f"engines-{_source_hash()}.pickle"


@cache
def _source_hash() -> str:
    import hashlib
    from pathlib import Path

    from .. import transforms

    h = hashlib.sha256()
    for f in sorted(Path(transforms.__file__).parent.glob("*.py")) + [Path(__file__)]:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _load_engines(path) -> dict:
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
        return data if isinstance(data, dict) else {}
    except Exception:  # noqa: BLE001 - missing or unreadable: rebuild
        return {}


def _store_engines(path, engines: dict) -> None:
    import os
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".engines-")
        with os.fdopen(fd, "wb") as f:
            pickle.dump({**_load_engines(path), **engines}, f)
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs time
        pass


def engine_for(alg: Bilinear2D) -> Engine:
    """An `Engine` for any `Bilinear2D` (separable or not)."""
    terms = (
        _max_terms(alg.B1),
        1 if alg.S_in is None else _max_terms(alg.S_in),
        1 if alg.S_out is None else _max_terms(alg.S_out),
        _max_terms(alg.A1),
    )
    return Engine(
        alg.m, alg.r, alg.products, alg.G.astype(float), alg.B1.astype(float),
        alg.A1.astype(float), _csr(alg.S_in), _csr(alg.S_out), _alpha(alg), terms, alg,
    )


def tiles(spec: ConvSpec, m: int) -> tuple[int, int]:
    """(TH, TW): tiles per image vertically and horizontally (the last ones partial)."""
    return -(-spec.OH // m), -(-spec.OW // m)


class _KernelSize(NamedTuple):
    """What `supports_for` reads of an algorithm: its kernel size."""

    r: int


def supports_for(alg: Bilinear2D | Engine | _KernelSize, spec: ConvSpec):
    """None when ``alg`` (an exact algorithm or its `Engine`) can run ``spec``, else the
    reason."""
    if spec.stride != (1, 1):
        return f"stride must be 1 (got {spec.stride})"
    if spec.dilation != (1, 1):
        return f"dilation must be 1 (got {spec.dilation})"
    if (spec.R, spec.S) != (alg.r, alg.r):
        return f"kernel must be {alg.r}x{alg.r} (got {spec.R}x{spec.S})"
    return None


def workspace_for(alg: Bilinear2D | Engine, spec: ConvSpec) -> int:
    """Bytes of the NHWC input copy of a block of images and of V and M for a chunk, per
    block in flight or per thread sharing a block (per-thread tile buffers, a few vectors of C
    or K, are not counted)."""
    TH, TW = tiles(spec, alg.m)
    nimg, cr, nbuf, split = _plan_blocks(spec, alg.m, alg.products)
    ks = _channel_split(spec, alg.m, alg.products)
    if ks:  # per thread: the block's NHWC copy, V of a chunk, M of its share of the channels
        tc = cr * TW
        xh = nimg * spec.C * spec.H * spec.W
        return ks * (alg.products * spec.Cg * tc + xh) * spec.compute_dtype.itemsize + (
            alg.products * spec.Kg * tc * spec.compute_dtype.itemsize)
    vm = alg.products * (spec.Cg + spec.Kg) * cr * TW
    xh = nimg * (spec.C * spec.H * spec.W if spec.Cg >= SMALL_C else 0)
    return (nbuf * (vm + xh) + (split - 1) * (vm + xh)) * spec.compute_dtype.itemsize


def multiplies_for(alg: Bilinear2D | Engine, spec: ConvSpec) -> int:
    """Transform-domain products: groups * N * tiles * P * Kg * Cg."""
    TH, TW = tiles(spec, alg.m)
    return spec.groups * spec.N * TH * TW * alg.products * spec.Kg * spec.Cg


def error_bound(eng: Engine, spec: ConvSpec, dtype) -> float:
    """Worst-case normwise error, derived from the rounding of every stage.

    Each computed stage ``s = S v`` with at most k terms per row is within
    ``gamma_(k+1) |S| |v|`` of the exact product (the +1 covers rounding the entries of S).
    With the stages input (B1 twice, S_in), filter (rounded once to the compute dtype),
    pointwise product and sum over ``C/groups`` channels (``gamma_(Cg+1)``) and output (S_out,
    A1 twice), the error of output i is at most
    ``eps * sum_c sum_p |A_out|[i,p] (|G| |w_c|)[p] (|B_in| |x_c|)[p]``,
    ``eps = prod(1 + gamma_stage) - 1``. Grouping the products ``|x_l| |w_j|`` by the shift
    ``l - j`` bounds that by ``eps * alpha * max(|x| (*) |w|)`` with ``alpha`` from `_alpha`
    (1 for direct convolution). The maximum is over the zero-extended correlation, which equals
    the normwise measure's denominator unless the largest magnitudes sit outside the output.
    float16 adds the final rounding of the result.
    """
    dtype = np.dtype(dtype)
    compute = np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
    u = UNIT_ROUNDOFF[compute]
    kb, ksin, ksout, ka = eng.stage_terms
    factors = [
        gamma(kb + 1, u), gamma(kb + 1, u), gamma(ksin + 1, u),  # input transform
        u,  # filter transform rounded to the compute dtype
        gamma(spec.Cg + 1, u),  # products and channel sum (any order, BLAS)
        gamma(ksout + 1, u), gamma(ka + 1, u), gamma(ka + 1, u),  # output transform
    ]
    eps = float(np.prod([1 + f for f in factors]) - 1)
    bound = eps * eng.alpha
    if dtype == np.float16:
        bound = (1 + bound) * (1 + UNIT_ROUNDOFF[dtype]) - 1
    return bound


def prepare_for(eng: Engine, spec: ConvSpec, w: np.ndarray):
    """Filter transform ``Wt[g, p, c, k] = (G vec(w[g*Kg + k, c]))[p]`` in float64, then cast;
    for the microkernel GEMMs packed as ``wpk[g, p, kb, c, l] = Wt[g, p, c, kb*KB + l]`` (zero
    past K/groups)."""
    cd = spec.compute_dtype
    w64 = w.astype(np.float64).reshape(spec.groups, spec.Kg, spec.Cg, spec.R * spec.S)
    # the BLAS held to one thread: with K = 9 the one-thread product is faster (512 -> 512
    # channels, 2-core Zen 4: 10 against 62 ms) and no BLAS pool thread is left spinning
    # (about 20 ms) beside the plan's first calls. Same values.
    with blas_one_thread():
        wt = np.einsum("pj,gkcj->gpck", eng.G, w64, optimize=True)
    mk = _microkernel_gemms(spec)
    if mk:
        kb = _kb(spec)
        nkb = -(-spec.Kg // kb)
        wpk = np.zeros((spec.groups, eng.P, spec.Cg, nkb * kb))
        wpk[..., : spec.Kg] = wt
        wt = wpk.reshape(spec.groups, eng.P, spec.Cg, nkb, kb).transpose(0, 1, 3, 2, 4)
    consts = Transforms(eng.B1.astype(cd), eng.A1.astype(cd),
                        (eng.s_in[0], eng.s_in[1], eng.s_in[2].astype(cd)),
                        (eng.s_out[0], eng.s_out[1], eng.s_out[2].astype(cd)))
    return Prepared(eng, spec, np.ascontiguousarray(wt, dtype=cd), mk, consts)


class Transforms(NamedTuple):
    """The compute-dtype transform matrices the compiled kernels take: the 1D input and output
    transforms ``B1``, ``A1`` and the sparse 2D stages ``s_in``, ``s_out`` (index arrays and
    coefficients, `Engine`)."""

    B1: np.ndarray
    A1: np.ndarray
    s_in: tuple
    s_out: tuple


class Layout(NamedTuple):
    """How a layer runs on a given number of threads (`_plan_blocks`, `_channel_split`)."""

    nimg: int  # images per block
    cr: int  # tile rows per chunk
    nbuf: int  # blocks in flight (> 1: whole blocks per thread)
    split: int  # threads per block (> 1: a block's chunks dealt out)
    ks: int  # threads splitting the k-blocks of the microkernel GEMMs (0: not used)

    @property
    def mode(self) -> str:
        """The threading mode (`MODES`)."""
        if self.ks:
            return "channels"
        if self.nbuf > 1:
            return "blocks"
        if self.split > 1:
            return "dealt"
        return "phases"


@dataclass(frozen=True)
class Prepared:
    """A prepared bilinear convolution: its engine and layer, the transformed (and for the
    microkernel GEMMs packed) filter, whether the GEMMs run on the microkernel, the transforms;
    `layout` caches the `Layout` per thread count."""

    eng: Engine
    spec: ConvSpec
    wt: np.ndarray
    mk: bool
    consts: Transforms
    layouts: dict = field(default_factory=dict, compare=False)

    def layout(self, threads: int) -> Layout:
        lay = self.layouts.get(threads)
        if lay is None:
            m, P = self.eng.m, self.eng.products
            lay = self.layouts[threads] = Layout(
                *_plan_blocks(self.spec, m, P), _channel_split(self.spec, m, P) if self.mk else 0)
        return lay

    def kernel(self, threads: int) -> str:
        """Which kernels run, on ``threads`` threads: the GEMMs' and the threading mode."""
        lay = self.layout(threads)
        mode = "serial" if threads == 1 and lay.mode == "phases" else lay.mode
        gemm = "microkernel GEMMs" if self.mk else "BLAS GEMMs"
        return f"{gemm}, {mode}: {MODES[mode]}"


_local = threading.local()


def _scratch(slot: int, size: int, dtype) -> np.ndarray:
    """A 1D work array of ``size`` elements, reused by the calling thread across calls.

    Fresh multi-megabyte arrays cost a page fault per 4 KiB page on every call (more than
    the transforms of a small layer); each thread keeps its largest buffer per slot instead.
    """
    cache = getattr(_local, "bufs", None)
    if cache is None:
        cache = _local.bufs = {}
    key = (slot, np.dtype(dtype))
    buf = cache.get(key)
    if buf is None or buf.size < size:
        buf = cache[key] = np.empty(size, dtype=dtype)
    return buf[:size]


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, n))
    return [(i * n // parts, (i + 1) * n // parts) for i in range(parts)]


def _plan_blocks(spec: ConvSpec, m: int, P: int) -> tuple[int, int, int, int]:
    """(images per block, chunk rows, blocks in flight, threads per block) for this layer and
    thread count.

    A block is a run of whole images converted to NHWC together (so the copies stay in
    cache); its tiles are processed in chunks of about `CHUNK_TILES`. With at least two
    blocks per thread, each thread runs whole blocks. Otherwise one block at a time, its chunks
    dealt out to the threads (chunk rows lowered so that every thread gets the same number of
    chunks): each thread runs all three phases of its chunks, so a block costs two hand-offs
    between threads, not three per chunk. A block with a single row of tiles, or whose
    transformed weights are large enough that every thread reading all of them costs more than
    the hand-offs saved, has every phase split over the threads instead (threads per block 1).
    """
    TH, TW = tiles(spec, m)
    per_image = TH * TW
    nimg = max(1, min(spec.N, CHUNK_TILES // per_image))
    cr = max(1, min(nimg * TH, CHUNK_TILES // TW))
    nblocks = -(-spec.N // nimg)
    T = worker_count()
    if nblocks >= 2 * T or T == 1:
        return nimg, cr, (T if nblocks >= 2 * T else 1), 1
    rows = nimg * TH
    if rows < 2:
        return nimg, cr, 1, 1
    split = min(T, rows)
    # dealing chunks saves about three thread hand-offs per chunk but has every thread read all
    # transformed weights (with the phases split, each reads its share of the points)
    handoffs = 3 * _ceil_div(rows, cr) - 1
    weights = spec.groups * P * spec.Cg * spec.Kg * spec.compute_dtype.itemsize
    if handoffs * HANDOFF_SECONDS < (split - 1) * weights / WEIGHT_BYTES_PER_SECOND:
        return nimg, cr, 1, 1
    nch = _ceil_div(_ceil_div(rows, cr), split) * split  # chunks, a multiple of the threads
    return nimg, _ceil_div(rows, nch), 1, split


def _microkernel_gemms(spec: ConvSpec) -> bool:
    """Whether the point GEMMs run on the microkernel (`MK_MIN_CG`, `MK_MIN_USE`) instead of
    the BLAS."""
    kb = _kb(spec)
    return spec.Cg >= max(MK_MIN_CG, SMALL_C) and spec.Kg / (-(-spec.Kg // kb) * kb) >= MK_MIN_USE


def _channel_split(spec: ConvSpec, m: int, P: int) -> int:
    """Threads that split a block's output channels (k-blocks), or 0.

    With the microkernel GEMMs, where `_plan_blocks` would split every phase over the threads
    (a single tile row, or transformed weights too large for every thread to read), each
    thread runs every chunk of the block for its share of the output channels instead: it
    transforms the chunks' input itself (the other threads do too) and reads only its share
    of the weights -- one hand-off per block instead of three per chunk. (Forcing this split
    where `_plan_blocks` deals out chunks was slower on 8 of 10 layers measured: the input
    transform, done by every thread, costs more than the weights each thread reads.)
    """
    T = worker_count()
    if T < 2 or not _microkernel_gemms(spec):
        return 0
    nimg, cr, nbuf, split = _plan_blocks(spec, m, P)
    if nbuf > 1 or split > 1:
        return 0
    return min(T, -(-spec.Kg // _kb(spec)))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _chunk_rows(rows: int, cr: int, split: int) -> list[tuple[int, int]]:
    """Tile-row ranges of a block's chunks, each at most ``cr`` rows; with ``split`` threads
    sharing the block, a multiple of ``split`` chunks of nearly equal size."""
    if split <= 1:
        return [(r0, min(rows, r0 + cr)) for r0 in range(0, rows, cr)]
    return _split(rows, split * _ceil_div(rows, split * cr))


def _to_nhwc(dst, src, threads: int) -> None:
    """``dst[n] = src[n].transpose(1, 2, 0)`` for every image, split over the worker threads
    by rows (NumPy releases the GIL while copying)."""
    N, R = dst.shape[0], dst.shape[1]

    def part(job):
        n, lo, hi = job
        np.copyto(dst[n, lo:hi], src[n, :, lo:hi].transpose(1, 2, 0))

    if threads == 1:
        for n in range(N):
            part((n, 0, R))
        return
    per = max(1, threads // N)
    run_threads(part, [(n, lo, hi) for n in range(N) for lo, hi in _split(R, per)])


def _to_nhwc_rows(dst, src, r0: int, r1: int, TH: int, m: int, r: int, pt: int) -> None:
    """Copy to NHWC the input rows that tile rows ``r0 .. r1 - 1`` of a block read (tile row
    ``q`` is row ``q % TH`` of image ``q // TH``; its tiles read input rows ``(q % TH) m - pt``
    to ``(q % TH + 1) m + r - 2 - pt``)."""
    H = src.shape[2]
    for n in range(r0 // TH, (r1 - 1) // TH + 1):
        t0 = max(r0, n * TH) - n * TH
        t1 = min(r1, (n + 1) * TH) - n * TH
        h0, h1 = max(0, t0 * m - pt), min(H, t1 * m + r - 1 - pt)
        if h1 > h0:
            np.copyto(dst[n, h0:h1], src[n, :, h0:h1].transpose(1, 2, 0))


#: the threading modes of `run_prepared`, by `Layout.mode` (and "serial" on one thread)
MODES = {
    "channels": "each thread every chunk of a block, its share of the k-blocks",
    "blocks": "whole blocks of images per thread",
    "dealt": "one block at a time, its chunks dealt out to the threads",
    "phases": "one block at a time, every phase of every chunk split over the threads",
    "serial": "one thread, block after block",
}


class _Run:
    """One call of a prepared convolution: the layer's geometry and the steps every mode is
    built from (buffers, a chunk's three phases, the chunks of a block)."""

    def __init__(self, prepared: Prepared, x: np.ndarray, out: np.ndarray, threads: int):
        self.p = prepared
        self.x, self.out, self.T = x, out, threads
        eng, spec = prepared.eng, prepared.spec
        self.m, self.P, self.Cg, self.Kg = eng.m, eng.products, spec.Cg, spec.Kg
        self.cd = spec.compute_dtype
        self.TH, self.TW = tiles(spec, eng.m)
        self.lay = prepared.layout(threads)
        self.pl, _, self.pt, _ = spec.padding
        nimg = self.lay.nimg
        self.blocks = [(n0, min(spec.N, n0 + nimg)) for n0 in range(0, spec.N, nimg)]
        # too few channels for channel vectors: vectorise along the tiles
        self.small = spec.Cg < SMALL_C

    def tile_buffers(self):
        P, Cg, Kg, n = self.P, self.Cg, self.Kg, self.lay.cr * self.TW
        return _scratch(0, P * Cg * n, self.cd), _scratch(1, P * Kg * n, self.cd)

    def nhwc_buffer(self):
        spec = self.p.spec
        n = 0 if self.small else self.lay.nimg
        return _scratch(2, n * spec.H * spec.W * spec.C, self.cd).reshape(-1, spec.H, spec.W, spec.C)

    def chunk_jobs(self, n0, n1):
        rows = (n1 - n0) * self.TH
        return [(g, r0, r1) for g in range(self.p.spec.groups)
                for r0, r1 in _chunk_rows(rows, self.lay.cr, self.lay.split)]

    def mk_chunk(self, xh, outh, wpk, V, M, g, kb0, kb1, r0):
        from ..kernels._bilinear import chunk_mk

        c = self.p.consts
        args = (xh, outh, wpk, V, M, g, self.Kg, kb0, kb1, r0, self.TH, self.TW, self.m, self.pt,
                self.pl, c.B1, *c.s_in, c.A1, *c.s_out)
        dtname = np.dtype(self.cd).name
        load_from_cache(chunk_mk, args, _WARM.format(dtype=dtname), dtname)
        chunk_mk(*args)

    def one_chunk(self, xh, xs, outh, vb, mb, g, r0, r1):
        """All three phases of the tiles in rows r0..r1 of a block, on this thread."""
        from ..kernels._bilinear import chunk, chunk_tiles

        P, Cg, Kg, wt, c = self.P, self.Cg, self.Kg, self.p.wt, self.p.consts
        tc = (r1 - r0) * self.TW
        M = mb[: P * Kg * tc].reshape(P, tc, Kg)
        if self.p.mk:
            self.mk_chunk(xh, outh, wt[g], vb[: P * Cg * tc].reshape(P, tc, Cg), M, g, 0,
                          wt.shape[2], r0)
        elif self.small:
            V = vb[: P * Cg * tc].reshape(P, Cg, tc)
            chunk_tiles(xs, outh, wt[g], V, M, g, r0, r1, self.TH, self.TW, self.m, self.pt,
                        self.pl, c.B1, *c.s_in, c.A1, *c.s_out)
        else:
            V = vb[: P * Cg * tc].reshape(P, tc, Cg)
            chunk(xh, outh, wt[g], V, M, g, r0, self.TH, self.TW, self.m, self.pt, self.pl, c.B1,
                  *c.s_in, c.A1, *c.s_out)

    def whole_block(self, n0, n1, vb, mb, xh_all):
        """Every chunk of a block on this thread (its NHWC copy first)."""
        xh, xs, outh = xh_all[: n1 - n0], self.x[n0:n1], self.out[n0:n1]
        if not self.small:
            _to_nhwc(xh, xs, 1)
        for job in self.chunk_jobs(n0, n1):
            self.one_chunk(xh, xs, outh, vb, mb, *job)


def _mode_channels(r: _Run) -> None:
    """Each thread: every chunk of a block, its share of the k-blocks (microkernel GEMMs)."""
    wt, KB, P, Cg, Kg = r.p.wt, r.p.wt.shape[-1], r.P, r.Cg, r.Kg
    kparts = _split(wt.shape[2], r.lay.ks)

    def channels(i, n0, n1):
        kb0, kb1 = kparts[i]
        nk = min(Kg, kb1 * KB) - kb0 * KB
        xh = r.nhwc_buffer()[: n1 - n0]
        xs, outh = r.x[n0:n1], r.out[n0:n1]
        _to_nhwc(xh, xs, 1)
        for g, r0, r1 in r.chunk_jobs(n0, n1):
            tc = (r1 - r0) * r.TW
            V = _scratch(0, P * Cg * tc, r.cd).reshape(P, tc, Cg)
            M = _scratch(1, P * nk * tc, r.cd).reshape(P, tc, nk)
            r.mk_chunk(xh, outh, wt[g], V, M, g, kb0, kb1, r0)

    for n0, n1 in r.blocks:
        run_threads(lambda i, n0=n0, n1=n1: channels(i, n0, n1), range(len(kparts)))


def _mode_blocks(r: _Run) -> None:
    """Whole blocks per thread (at least two blocks per thread)."""
    nbuf = r.lay.nbuf

    def worker(i):
        vb, mb = r.tile_buffers()
        xh_all = r.nhwc_buffer()
        for n0, n1 in r.blocks[i::nbuf]:
            r.whole_block(n0, n1, vb, mb, xh_all)

    run_threads(worker, range(nbuf))


def _mode_dealt(r: _Run) -> None:
    """One block at a time, its chunks dealt out to the threads; each thread copies the input
    rows its chunks read to its own NHWC buffer: one hand-off per block."""
    split = r.lay.split
    for n0, n1 in r.blocks:
        xs, outh = r.x[n0:n1], r.out[n0:n1]
        jobs = r.chunk_jobs(n0, n1)

        def dealt(i, xs=xs, outh=outh, jobs=jobs):
            vb, mb = r.tile_buffers()
            mine = jobs[i::split]
            xh = r.nhwc_buffer()[: len(xs)]
            if not r.small:
                for r0, r1 in sorted({(r0, r1) for _, r0, r1 in mine}):
                    _to_nhwc_rows(xh, xs, r0, r1, r.TH, r.m, r.p.eng.r, r.pt)
            for job in mine:
                r.one_chunk(xh, xs, outh, vb, mb, *job)

        run_threads(dealt, range(split))


def _mode_serial(r: _Run) -> None:
    """One thread, block after block."""
    vb, mb = r.tile_buffers()
    xh_all = r.nhwc_buffer()
    for n0, n1 in r.blocks:
        r.whole_block(n0, n1, vb, mb, xh_all)


def _mode_phases(r: _Run) -> None:
    """One block at a time, every phase of every chunk split over all threads (a single tile
    row, or transformed weights too large for every thread to read all of them)."""
    from ..kernels._bilinear import (
        input_transform,
        input_transform_tiles,
        output_transform,
        point_gemms,
        point_gemms_tiles,
    )

    # (the microkernel GEMMs split the k-blocks instead: `_channel_split`)
    assert not r.p.mk, "the phases mode runs BLAS GEMMs"
    P, Cg, Kg, T, TH, TW, m, pt, pl = r.P, r.Cg, r.Kg, r.T, r.TH, r.TW, r.m, r.pt, r.pl
    wt, c = r.p.wt, r.p.consts
    vb, mb = r.tile_buffers()
    xh_all = r.nhwc_buffer()
    for n0, n1 in r.blocks:
        xh, xs, outh = xh_all[: n1 - n0], r.x[n0:n1], r.out[n0:n1]
        if not r.small:
            _to_nhwc(xh, xs, T)
        for g, r0, r1 in r.chunk_jobs(n0, n1):
            tc = (r1 - r0) * TW
            M = mb[: P * Kg * tc].reshape(P, tc, Kg)
            if r.small:
                V = vb[: P * Cg * tc].reshape(P, Cg, tc)
                run_threads(lambda ch, V=V, g=g, r0=r0, r1=r1, xs=xs: input_transform_tiles(
                    xs, V, g, r0, r1, TH, TW, m, pt, pl, c.B1, *c.s_in, *ch), _split(Cg, T))
                run_threads(lambda pr, V=V, M=M, g=g: point_gemms_tiles(wt[g], V, M, *pr),
                            _split(P, T))
            else:
                V = vb[: P * Cg * tc].reshape(P, tc, Cg)
                run_threads(lambda rr, V=V, g=g, r0=r0, xh=xh: input_transform(
                    xh, V, g, r0, TH, TW, m, pt, pl, c.B1, *c.s_in, *rr), _split(tc, T))
                run_threads(lambda pr, V=V, M=M, g=g: point_gemms(wt[g], V, M, *pr),
                            _split(P, T))
            run_threads(lambda rr, M=M, g=g, r0=r0, outh=outh: output_transform(
                M, outh, g * Kg, r0, TH, TW, m, c.A1, *c.s_out, *rr), _split(tc, T))


_MODE_RUN = {"channels": _mode_channels, "blocks": _mode_blocks, "dealt": _mode_dealt,
             "phases": _mode_phases, "serial": _mode_serial}


def run_prepared(prepared: Prepared, x: np.ndarray, out: np.ndarray) -> None:
    """Run a prepared bilinear convolution of ``x`` into ``out`` (see the module docstring).

    Images are processed in blocks (`_plan_blocks`): a block's input is copied to NHWC
    (unless C/groups is small), and its tiles go through the three phases chunk by chunk, the
    output transform writing ``out`` directly. Threads (Python, GIL released, BLAS held to
    one thread unless the GEMMs run on the microkernel) by the layout's mode (`MODES`): the
    k-blocks split per thread, whole blocks per thread when there are at least two per thread,
    a block's chunks dealt out, or every step split over the threads (copies by rows,
    transforms by tile, GEMMs by point)."""
    T = worker_count()
    r = _Run(prepared, x, out, T)
    mode = r.lay.mode
    if mode == "phases" and T == 1:
        mode = "serial"
    # the microkernel GEMMs call no BLAS: no need to hold it to one thread
    with contextlib.nullcontext() if prepared.mk or mode == "channels" else blas_one_thread():
        _MODE_RUN[mode](r)


def _make(name: str) -> Algorithm:
    summary = VARIANTS[name][1]
    return Algorithm(
        name=name,
        supports=lambda spec: supports_for(_KernelSize(VARIANTS[name][2]), spec),
        prepare=lambda spec, w: prepare_for(engine(name), spec, w),
        run=run_prepared,
        workspace_bytes=lambda spec: workspace_for(engine(name), spec),
        multiplies=lambda spec: multiplies_for(engine(name), spec),
        deterministic=False,
        # the cost model fits the paths apart: microkernel GEMMs, tile-vector transforms (few
        # channels), channel-vector transforms with BLAS GEMMs
        kernel=lambda spec: "microkernel" if _microkernel_gemms(spec) else (
            "tiles" if spec.Cg < SMALL_C else ""),
        error_bound=lambda spec, dtype: error_bound(engine(name), spec, dtype),
        summary=summary + "; stride 1",
        features={
            "workspace": "(P·(C/g + K/g)·(tiles per chunk) + N_block·C·H·W)·(blocks in flight "
            "or threads sharing a block); threads splitting the channels (>= 128 per group, "
            "batch 1-like): (P·(C/g)·(tiles per chunk) + N_block·C·H·W) each + P·(K/g)·(tiles "
            "per chunk)",
            "multiplies": "g·N·ceil(OH/m)·ceil(OW/m)·P·(K/g)·(C/g)",
        },
    )


for _name in VARIANTS:
    register(_make(_name))
