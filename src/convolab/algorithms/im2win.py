"""``im2win``: the image-to-window layout with a register-blocked Numba microkernel.

Layout (Lu, Chu, Liu, "Im2win: Memory Efficient Convolution On SIMD Architectures",
HPEC 2022): for each image, channel and output row, the FH input rows that the row's windows
touch are stored column by column, so that the FH vertical elements of one input column are
adjacent: ``win[c, oh, w*FH + fh] = x[c, oh*sh + fh*dh - pt, w - pl]``, zero in the padding
(written straight into the window tensor; the input is never padded as a whole). The filter
is transposed to [K][C][FW][FH]. The window of output (oh, ow) for channel c is then the
slice starting at ``win[c, oh, ow*sw*FH]`` -- contiguous, of length FW*FH, when the
horizontal dilation is 1 -- in the same order as the transposed filter.

Kernel (`convolab.kernels._im2win`): tiles of 12 consecutive output pixels x 32 output
channels (16 in float64) in 24 AVX-512 accumulators; each window element loaded is used for
32 output channels and each filter vector for 12 pixels. Parallel over (group, block of
output channels, range of pixels) of one image at a time: threads share no output, and every
output sums its (C/groups) FW FH products in (c, fw, fh) order with separate multiply and
add, so the result is bit-identical for any thread count and SIMD width. An NHWC-style window
(``win[g, oh, w, fh, c]``, channels innermost: one contiguous run of FW FH C/g per output)
was tried with the microkernel of the time and ran 11% slower (geomean of the papers' 12
layers, one thread), so the papers' NCHW window stays.

Workspace: the window tensor of one image, C OH Vw FH elements, where Vw = (OW-1) sw +
(FW-1) dw + 1 <= W + pl + pr is the number of padded input columns that some output reads
(about W/(FW OW) of im2col's C R S OH OW), plus two int64 task counters. Multiplications
include the lanes of a last, partial block of output channels and the repeated pixels of a
last, partial tile (a short last tile runs as tiles of 4 pixels).
"""

import numpy as np

from ..kernels import PARALLEL_LOCK, load_from_cache
from ..registry import Algorithm, register
from ..spec import ConvSpec

#: tile shape of the microkernel (see `convolab.kernels._im2win`; kept here so that the
#: workspace formula needs no Numba import)
_MR = 12
_MR_TAIL = 4
_NV = 2
#: bytes of window a task's tiles should span when it loops over all k-blocks (half an L2)
_CHUNK_BYTES = 256 * 1024


#: compiles the kernel for one dtype in a child process (see `convolab.kernels.load_from_cache`)
_WARM = ("import numpy as np, convolab; convolab.conv2d(np.ones((1, 1, 4, 4), '{dtype}'), "
         "np.ones((4, 1, 3, 3), '{dtype}'), padding=1, algorithm='im2win')")


def _kb(spec: ConvSpec) -> int:
    return _NV * (64 // spec.compute_dtype.itemsize)


def _geometry(spec: ConvSpec) -> dict:
    """Window row width ``Vw`` (padded input columns read), tensor size, tiles per image."""
    sw, dw = spec.stride[1], spec.dilation[1]
    Vw = (spec.OW - 1) * sw + (spec.S - 1) * dw + 1
    return dict(Vw=Vw, size=spec.C * spec.OH * Vw * spec.R, nq=-(-spec.OH * spec.OW // _MR))


def _workspace(spec: ConvSpec) -> int:
    # the window tensor and two int64 task counters
    return _geometry(spec)["size"] * spec.compute_dtype.itemsize + 16


def _pixels_computed(spec: ConvSpec) -> int:
    """Pixels per image the tiles compute: whole tiles of 12, a short last tile in tiles of 4."""
    P = spec.OH * spec.OW
    rest = P % _MR
    if rest == 0 or rest > _MR - _MR_TAIL:
        return -(-P // _MR) * _MR
    return P - rest + -(-rest // _MR_TAIL) * _MR_TAIL


def _multiplies(spec: ConvSpec) -> int:
    kb = _kb(spec)
    nkb = -(-spec.Kg // kb)
    return spec.N * spec.groups * nkb * kb * _pixels_computed(spec) * spec.reduction_length


def pack_filter(spec: ConvSpec, w, taps_order: str) -> np.ndarray:
    """The filter in the microkernel's layout: [groups][K/groups / KB][C/groups][taps][KB] with
    zero-filled lanes past the group's channels; ``taps_order`` "sr" (im2win: [FW][FH]) or
    "rs" (direct: [R][S])."""
    kb = _kb(spec)
    G, Kg, Cg, R, S = spec.groups, spec.Kg, spec.Cg, spec.R, spec.S
    nkb = -(-Kg // kb)
    wg = np.zeros((G, nkb * kb, Cg, R, S), dtype=w.dtype)
    wg[:, :Kg] = w.reshape(G, Kg, Cg, R, S)
    axes = (0, 1, 3, 5, 4, 2) if taps_order == "sr" else (0, 1, 3, 4, 5, 2)
    return np.ascontiguousarray(wg.reshape(G, nkb, kb, Cg, R, S).transpose(axes))


def _prepare(spec: ConvSpec, w):
    """Pack the filter as [groups][K/groups / KB][C/groups][FW][FH][KB] (zero-filled lanes)."""
    return spec, pack_filter(spec, w, "sr"), _geometry(spec)


def _split(spec: ConvSpec, geo: dict, nkb: int, itemsize: int, threads: int) -> tuple[int, int]:
    """Tasks per image: (k-block ranges, tile ranges), at least four per thread.

    A k-block's packed filter (KB (C/g) R S elements) and a range of tiles' window rows
    should stay in the L2 cache while the other streams: when the filter block is small, a
    task runs all k-blocks over one range of tiles whose window fits in ``_CHUNK_BYTES``
    (each window row read once); otherwise one k-block over many tiles (each filter block
    read once per task).
    """
    panel = spec.reduction_length * _kb(spec) * itemsize
    per_tile = spec.Cg * geo["Vw"] * spec.R * itemsize * _MR / spec.OW
    nq = geo["nq"]
    want = 4 * threads
    if panel * 2 <= _CHUNK_BYTES:
        nchunk = min(nq, max(-(-nq * per_tile // _CHUNK_BYTES), -(-want // spec.groups)))
        nkbr = min(nkb, max(1, -(-want // (spec.groups * nchunk))))
        return int(nkbr), int(nchunk)
    return nkb, min(nq, max(1, -(-want // (spec.groups * nkb))))


def _run(prepared, x, out):
    from numba import get_num_threads

    from ..kernels._im2win import MR, MR_TAIL, im2win_conv, lanes

    spec, wpk, geo = prepared
    assert (MR, MR_TAIL) == (_MR, _MR_TAIL) and lanes(x.itemsize) == wpk.shape[-1]
    win = np.empty(geo["size"], dtype=x.dtype)
    counter = np.zeros(2, dtype=np.int64)
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    pl, _, pt, _ = spec.padding
    threads = get_num_threads()
    nkbr, nchunk = _split(spec, geo, wpk.shape[1], x.itemsize, threads)
    args = (x, win, wpk, out, counter, threads, spec.groups, spec.S, spec.R, sh, sw, dh, dw, pt, pl,
            geo["Vw"], nkbr, nchunk)
    dt = np.dtype(x.dtype).name
    load_from_cache(im2win_conv, args, _WARM.format(dtype=dt), dt)
    with PARALLEL_LOCK:
        im2win_conv(*args)


register(
    Algorithm(
        name="im2win",
        supports=lambda spec: None,
        prepare=_prepare,
        run=_run,
        workspace_bytes=_workspace,
        multiplies=_multiplies,
        deterministic=True,
        summary="window tensor [C][OH][W·R] of one image + 12x32 register-blocked Numba kernel",
        features={
            "workspace": "C·OH·W'·R per image, W' = (OW-1)·sw + (S-1)·dw + 1 padded columns "
            "read (≈ W/(S·OW) of im2col)",
            "multiplies": "N·K'·P'·(C/g)·R·S, K' = K rounded up to 32 lanes per group, "
            "P' = OH·OW rounded up to 12-pixel tiles (a short last tile to 4-pixel tiles)",
        },
    )
)
