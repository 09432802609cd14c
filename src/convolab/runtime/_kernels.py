"""Compiled kernels of the runtime's non-convolution operators and of the fused epilogue.

Layout NCHW, C-contiguous float32, like the convolution kernels. Every kernel is one thread's
share of a job of convolab's thread team (`convolab.kernels.team`, via `launch`): tasks over
independent (image, channel) planes (or feature tiles) from the counter ``ctr[0]``, and each
output is computed by one fixed sequence of operations: results do not depend on the thread
count. No fast-math.

The output stage (scale, bias, residual, activation codes) is `convolab.kernels._epilogue`'s,
the one the convolution kernels apply per tile.
"""

import numpy as np
from numba import njit, uint64

from ..kernels._atomics import fetch_add, wait_until
from ..kernels._direct import copy_run, fill_phases, max16, maxwin16
from ..kernels._epilogue import F0, F1, act, clamp, maximum, relu, run
from ..kernels._pointwise import LINEAR_NB, linear_tile


@njit(cache=True, nogil=True)
def epilogue(src, dst, scale, shift, res, mode, act, lo, hi, ctr):  # pragma: no cover - compiled
    """``dst = act(src * scale[k] + shift[k] + res)`` over (N, K, P) planes, in that order.

    ``mode`` bits: 1 multiply by ``scale``, 2 add ``shift``, 4 add ``res`` (same shape as
    ``dst``). ``src`` may be ``dst`` (in place). With only bit 2 (bias) the sum is ``src +
    shift[k]``, exactly what adding the bias after the convolution gives. Threads take blocks
    of whole planes (at least 16 KiB each)."""
    N, K, P = dst.shape
    lo32 = np.float32(lo)
    hi32 = np.float32(hi)
    s = src.reshape(src.size)
    d = dst.reshape(dst.size)
    r = res.reshape(res.size)
    same = src.ctypes.data == dst.ctypes.data
    per = max(1, 4096 // max(P, 1))
    nt = (N * K + per - 1) // per
    while True:
        task = fetch_add(ctr, 0)
        if task >= nt:
            break
        for t in range(task * per, min(N * K, (task + 1) * per)):
            k = t % K
            a = scale[k] if mode & 1 else F1
            b = shift[k] if mode & 2 else F0
            if not same:
                o = uint64(t * P)
                for i in range(uint64(P)):
                    d[o + i] = s[o + i]
            run(d, t * P, r, t * P, P, a, b, mode, act, lo32, hi32)


#: elements per task of `stage_codes` (a 16 KiB float32 block stays in the L1 cache from the
#: residual add to the codes)
QUANT_BLOCK = 4096


@njit(cache=True, nogil=True)
def stage_codes(y, r, code, lo, hi, q, scale, qmax, ctr):  # pragma: no cover - compiled
    """The float tail of an int8 model's layer over flat float32 ``y``, in place: ``y =
    act(y + r)`` (``r`` empty: no residual; ``code`` an activation of `_epilogue.act`, 0
    none), then, where ``q`` is not empty, its int8 codes ``q = clip(rint(y / scale), -qmax,
    qmax)`` -- `convolab.quant.quantize`'s arithmetic (float64 division, half to even), so the
    codes are its codes. Tasks of `QUANT_BLOCK` elements from ``ctr[0]``; a complete job
    (`convolab.kernels.team.Team.run`): each thread returns once ``ctr[1]`` counts every task
    done (reported back through the GIL instead, the team thread's report had cost 20-100 us
    per call inside a model, at times milliseconds)."""
    n = y.size
    lo32 = np.float32(lo)
    hi32 = np.float32(hi)
    s = np.float64(scale)
    top = np.float64(qmax)
    bot = -top
    res = r.size > 0
    nt = (n + QUANT_BLOCK - 1) // QUANT_BLOCK
    while True:
        task = fetch_add(ctr, 0)
        if task >= nt:
            break
        i0 = uint64(task * QUANT_BLOCK)
        i1 = uint64(min(n, (task + 1) * QUANT_BLOCK))
        if res and code == 0:
            for i in range(i0, i1):
                y[i] = y[i] + r[i]
        elif res and code == 1:
            for i in range(i0, i1):
                y[i] = relu(y[i] + r[i])
        elif res and code == 2:
            for i in range(i0, i1):
                y[i] = clamp(y[i] + r[i], lo32, hi32)
        elif res:
            for i in range(i0, i1):
                y[i] = act(y[i] + r[i], code, lo32, hi32)
        elif code != 0:
            for i in range(i0, i1):
                y[i] = act(y[i], code, lo32, hi32)
        if q.size:
            for i in range(i0, i1):
                v = np.rint(np.float64(y[i]) / s)
                v = bot if v < bot else v
                v = top if v > top else v
                q[i] = np.int8(v)
        fetch_add(ctr, 1)
    wait_until(ctr, 1, nt)


@njit(cache=True, nogil=True)
def copy_finite(src, dst):  # pragma: no cover - compiled
    """``dst[:] = src`` (flat float32) in one pass that also looks for NaN and Inf (all eight
    exponent bits set; the largest exponent field of a block, an integer maximum, vectorises):
    returns the first non-finite element's index, or -1. A 224x224 RGB image: 14 us, against
    30 us for ``np.isfinite(x).all()`` and a copy."""
    n = src.size
    bits = src.view(np.uint32)
    top = np.uint32(0x7F800000)
    for b0 in range(0, n, 4096):
        b1 = min(n, b0 + 4096)
        m = np.uint32(0)
        for i in range(uint64(b0), uint64(b1)):  # unsigned: no negative-index wrap, vectorised
            dst[i] = src[i]
            m = max(m, bits[i] & top)
        if m == top:
            for i in range(b0, b1):
                if bits[i] & top == top:
                    return i
    return -1


@njit(cache=True, nogil=True)
def maxpool(x, out, kh, kw, sh, sw, ph, pw, dh, dw, ctr):  # pragma: no cover - compiled
    """PyTorch's max_pool2d over (N, C, H, W), NaN propagating. Each task pads its plane with
    -inf (padding and the ceil-mode overhang never win) split into stride phases, as direct's
    depthwise kernel does, then takes the maximum tap by tap over one flat run of outputs
    ``p = oh wq + ow`` (vectorised; the wrapped columns are dropped)."""
    maxpool_tasks(x, out, kh, kw, sh, sw, ph, pw, dh, dw, ctr, 0)


@njit(inline="always")
def maxpool_phases(H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw):  # pragma: no cover - compiled
    """The stride-phase planes of a max-pooling task: ``(hq, wq)``, each ``hq x wq``."""
    Hp = max(H + 2 * ph, (OH - 1) * sh + (kh - 1) * dh + 1)
    Wp = max(W + 2 * pw, (OW - 1) * sw + (kw - 1) * dw + 1)
    return (Hp + sh - 1) // sh, (Wp + sw - 1) // sw


def maxpool_scratch(H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw) -> int:
    """Elements of one thread's work buffer for `maxpool_tasks` (phase planes, then the output
    run, 64-byte aligned)."""
    hq, wq = maxpool_phases(H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw)
    nb = sh * sw * hq * wq
    return int(nb + (-nb) % 16 + (OH - 1) * wq + OW)


@njit(inline="always")
def maxpool_tasks(x, out, kh, kw, sh, sw, ph, pw, dh, dw, ctr, ci, scratch=None):  # pragma: no cover
    """`maxpool`'s planes, taken from ``ctr[ci]``; ``scratch``: a work buffer of at least
    `maxpool_scratch` elements (allocated here if None)."""
    N, C, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    hq, wq = maxpool_phases(H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw)
    T = kh * kw
    qoff = np.empty(T, dtype=np.int64)
    for r in range(kh):
        for s in range(kw):
            plane = ((r * dh) % sh) * sw + (s * dw) % sw
            qoff[r * kw + s] = plane * hq * wq + ((r * dh) // sh) * wq + (s * dw) // sw
    L = uint64((OH - 1) * wq + OW)
    xflat = x.reshape(x.size)
    of = out.reshape(out.size)
    ninf = np.float32(-np.inf)
    nb = sh * sw * hq * wq
    if scratch is None:
        work = np.empty(nb + (-nb) % 16 + (OH - 1) * wq + OW, dtype=np.float32)
    else:
        work = scratch
    buf = work[:nb]
    acc = work[nb + (-nb) % 16: nb + (-nb) % 16 + (OH - 1) * wq + OW]
    while True:
        task = fetch_add(ctr, ci)
        if task >= N * C:
            break
        fill_phases(buf, xflat, task * H * W, H, W, sh, sw, ph, pw, hq, wq, ninf)
        q = uint64(qoff[0])
        for b in range(L):
            acc[b] = buf[b + q]
        for t in range(1, T):
            q = uint64(qoff[t])
            for b in range(L):
                acc[b] = maximum(acc[b], buf[b + q])
        for oh in range(OH):
            src = uint64(oh * wq)
            dst = uint64((task * OH + oh) * OW)
            for j in range(uint64(OW)):
                of[dst + j] = acc[src + j]


@njit(nogil=True, cache=True)
def maxpool_blocked_tasks(A, xo, yo, N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, ctr,
                          ci, run):  # pragma: no cover - compiled
    """Max pooling of a channel-blocked (NCHW16c) input at ``A[xo]`` into a blocked output at
    ``A[yo]``, tasks (image, 16-channel block, output row) taken ``run`` at a time from
    ``ctr[ci]``: each output pixel vector the `maximum` of its window's taps in `maxpool_tasks`'
    order (row-major, -inf outside the input, padding and ceil-mode overhang alike; a later
    tap outside is skipped: ``maximum(v, -inf)`` is ``v`` bit for bit), so the same bits."""
    ninf = np.float32(-np.inf)
    nblk = C // 16
    ntask = N * nblk * OH
    while True:
        t0 = fetch_add(ctr, ci) * run
        if t0 >= ntask:
            break
        for t in range(t0, min(ntask, t0 + run)):
            blk = t // OH
            oh = t - blk * OH
            xb = xo + blk * 16 * H * W
            yb = yo + (blk * OH + oh) * OW * 16
            ih0 = oh * sh - ph
            rows_in = ih0 >= 0 and ih0 + (kh - 1) * dh < H
            for ow in range(OW):
                o = yb + ow * 16
                iw0 = ow * sw - pw
                if rows_in and iw0 >= 0 and iw0 + (kw - 1) * dw < W:  # the whole window inside
                    maxwin16(A, o, A, xb + (ih0 * W + iw0) * 16, kh, kw, dh * W * 16, dw * 16)
                    continue
                for r in range(kh):
                    ih = oh * sh - ph + r * dh
                    for s in range(kw):
                        iw = ow * sw - pw + s * dw
                        if 0 <= ih < H and 0 <= iw < W:
                            if r == 0 and s == 0:
                                copy_run(A, o, A, xb + (ih * W + iw) * 16, 16)
                            else:
                                max16(A, o, A, xb + (ih * W + iw) * 16)
                        elif r == 0 and s == 0:
                            for lane in range(16):
                                A[o + lane] = ninf


@njit(cache=True, nogil=True)
def avgpool(x, out, kh, kw, sh, sw, ph, pw, include_pad, divisor, ctr):  # pragma: no cover
    """PyTorch's avg_pool2d (``divisor`` > 0 overrides the count; ``include_pad`` counts the
    zero padding but never the ceil-mode overhang)."""
    N, C, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    while True:
        t = fetch_add(ctr, 0)
        if t >= N * C:
            break
        n = t // C
        c = t - n * C
        xp = x[n, c]
        op = out[n, c]
        for oh in range(OH):
            h0 = oh * sh - ph
            h1 = min(h0 + kh, H + ph)
            for ow in range(OW):
                w0 = ow * sw - pw
                w1 = min(w0 + kw, W + pw)
                cnt = (h1 - h0) * (w1 - w0)
                a0, a1 = max(h0, 0), min(h1, H)
                b0, b1 = max(w0, 0), min(w1, W)
                acc = F0
                for ih in range(a0, a1):
                    for iw in range(b0, b1):
                        acc += xp[ih, iw]
                if divisor > 0:
                    d = divisor
                elif include_pad:
                    d = cnt
                else:
                    d = (a1 - a0) * (b1 - b0)
                op[oh, ow] = acc / np.float32(d)


@njit(inline="always")
def _adaptive_plane(x, out, t, C, H, W, OH, OW):  # pragma: no cover - compiled
    n = t // C
    c = t - n * C
    xp = x[n, c]
    op = out[n, c]
    for i in range(OH):
        h0 = (i * H) // OH
        h1 = -((-(i + 1) * H) // OH)
        for j in range(OW):
            w0 = (j * W) // OW
            w1 = -((-(j + 1) * W) // OW)
            acc = F0
            for ih in range(h0, h1):
                for iw in range(w0, w1):
                    acc += xp[ih, iw]
            op[i, j] = acc / np.float32((h1 - h0) * (w1 - w0))


@njit(cache=True, nogil=True)
def adaptive_avg(x, out, ctr):  # pragma: no cover - compiled
    """PyTorch's adaptive_avg_pool2d: output (i, j) averages rows floor(i H / OH) ..
    ceil((i+1) H / OH) - 1 and the same for columns; sums in row-major order in float32."""
    adaptive_avg_tasks(x, out, ctr, 0)


@njit(nogil=True, cache=True)
def global_avg_blocked_tasks(xf, xo, out, N, C, HW, ctr, ci):  # pragma: no cover - compiled
    """Global average pooling of a channel-blocked (NCHW16c) input at ``xf[xo]`` into ``out``
    (N, C, 1, 1), tasks (image, 16-channel block) taken from ``ctr[ci]``: one running sum per
    channel in pixel order, the order of `adaptive_avg_tasks`'s planes, so the same bits."""
    of = out.reshape(out.size)
    div = np.float32(HW)
    acc = np.empty(16, dtype=np.float32)
    nb = N * (C // 16)
    while True:
        t = fetch_add(ctr, ci)
        if t >= nb:
            break
        b = xo + t * 16 * HW
        acc[:] = F0
        for i in range(HW):
            for lane in range(16):
                acc[lane] += xf[b + i * 16 + lane]
        for lane in range(16):
            of[t * 16 + lane] = acc[lane] / div


@njit(inline="always")
def adaptive_avg_tasks(x, out, ctr, ci):  # pragma: no cover - compiled
    """`adaptive_avg`'s tasks, taken from ``ctr[ci]``."""
    N, C, H, W = x.shape
    if out.shape[2] == 1 and out.shape[3] == 1:
        # global pooling: 8 planes at a time, one running sum per plane in the same row-major
        # order, in registers (eight independent chains of adds instead of one: 1280 planes of
        # 7x7 took 0.062 ms, ONNX Runtime 0.008)
        HW = H * W
        xf = x.reshape(x.size)
        of = out.reshape(out.size)
        div = np.float32(HW)
        P = N * C
        nb = (P + 7) // 8
        while True:
            t = fetch_add(ctr, ci)
            if t >= nb:
                break
            p0 = t * 8
            if p0 + 8 <= P:
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = F0
                b = p0 * HW
                for i in range(HW):
                    a0 += xf[b + i]
                    a1 += xf[b + HW + i]
                    a2 += xf[b + 2 * HW + i]
                    a3 += xf[b + 3 * HW + i]
                    a4 += xf[b + 4 * HW + i]
                    a5 += xf[b + 5 * HW + i]
                    a6 += xf[b + 6 * HW + i]
                    a7 += xf[b + 7 * HW + i]
                of[p0] = a0 / div
                of[p0 + 1] = a1 / div
                of[p0 + 2] = a2 / div
                of[p0 + 3] = a3 / div
                of[p0 + 4] = a4 / div
                of[p0 + 5] = a5 / div
                of[p0 + 6] = a6 / div
                of[p0 + 7] = a7 / div
            else:
                for p in range(p0, P):
                    a0 = F0
                    for i in range(HW):
                        a0 += xf[p * HW + i]
                    of[p] = a0 / div
        return
    while True:
        t = fetch_add(ctr, ci)
        if t >= N * C:
            break
        _adaptive_plane(x, out, t, C, H, W, out.shape[2], out.shape[3])


#: inputs of at most this many elements are pooled on the calling thread alone (a batch-1
#: global pool over 1280 7x7 planes took 0.14 ms with a parallel region's start)
SERIAL_POOL_ELEMENTS = 1 << 18


#: output features per block of the packed linear weight
LINEAR_KB = 16


def pack_linear(w: np.ndarray) -> np.ndarray:
    """(K, C) weight -> [tiles][C][64]: tiles of `LINEAR_NB` blocks of 16 features (zero past
    K), each one contiguous stream, so the kernel reads the weight sequentially (reading
    16-feature runs of the (C, K) transpose crossed a page per channel and ran 10x slower from
    DRAM)."""
    Kf, C = w.shape
    tw = LINEAR_NB * LINEAR_KB
    nt = -(-Kf // tw)
    wp = np.zeros((nt * tw, C), dtype=np.float32)
    wp[:Kf] = w
    return np.ascontiguousarray(wp.reshape(nt, tw, C).transpose(0, 2, 1))


@njit(inline="always")
def _linear_task(x, wp, b, has_bias, out, i):  # pragma: no cover - compiled
    """Features ``64 i .. 64 i + 63`` of every row: the tile's weights (64 C) are read from
    memory once and from the cache for the other rows."""
    C = x.shape[1]
    Kf = out.shape[1]
    k0 = i * LINEAR_NB * LINEAR_KB
    for n in range(x.shape[0]):
        linear_tile(wp.reshape(wp.size), k0 * C, C, x.reshape(x.size), n * C,
                    out.reshape(out.size), n * Kf + k0, min(LINEAR_NB * LINEAR_KB, Kf - k0), b,
                    k0, has_bias)


@njit(cache=True, nogil=True)
def linear(x, wp, b, has_bias, out, ctr):  # pragma: no cover - compiled
    """``out[n, k] = sum_c x[n, c] w[k, c] (+ b[k])`` from the packed weight (`pack_linear`):
    each output sums its products in channel order from zero, one fused multiply-add each,
    then adds the bias (`convolab.kernels._pointwise.linear_tile`); threads take tiles of 64
    features (all rows) from ``ctr[0]``, so the result does not depend on the thread count."""
    linear_tasks(x, wp, b, has_bias, out, ctr, 0)


@njit(inline="always")
def linear_tasks(x, wp, b, has_bias, out, ctr, ci):  # pragma: no cover - compiled
    """`linear`'s tiles, taken from ``ctr[ci]``."""
    while True:
        i = fetch_add(ctr, ci)
        if i >= wp.shape[0]:
            break
        _linear_task(x, wp, b, has_bias, out, i)


#: linear layers of at most this many multiply-adds run on the calling thread
SERIAL_LINEAR_MACS = 1 << 22


def launch(kernel, args: tuple, threads: int) -> None:
    """``kernel(*args, ctr)`` on ``threads`` threads of the team, ``ctr`` a fresh counter."""
    from ..kernels import team

    team.run(kernel, (*args, np.zeros(1, dtype=np.int64)), threads)
