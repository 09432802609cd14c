"""The int8 microkernel's geometry and paths, without Numba (the compiled half is
`convolab.kernels._int8`).

A tile is `MR` consecutive output pixels (row after row) x ``KB = NV * L`` output channels
(``L`` int32 lanes per vector: 16 on 512-bit paths, 8 on 256-bit ones), in ``MR * NV`` int32
accumulators. The activations are unsigned bytes, channels last (NHWC, each group's channels
padded to a multiple of 4), so the four channels ``c .. c+3`` of one tap of one pixel are one
32-bit word: a step broadcasts that word for each of the tile's pixels and multiplies it with
``NV`` vectors of packed weights, each lane holding the four signed weights of one output
channel for those four channels (`pack_weights`): ``vpdpbusd`` (AVX512-VNNI, or AVX-VNNI on
256 bits) adds the four u8 x s8 products to the lane's int32 accumulator.

int8 codes ``x`` (signed) become ``x + 128`` (unsigned; the zero padding becomes 128 too), so
every output gets ``128 * sum(w[k])`` too much: `pack_weights` returns that correction per
output channel and the tiles subtract it before they store. Products are at most 255 * 128 and
``vpdpbusd`` adds four of them to the accumulator without saturating, so nothing rounds or
clips while ``255 * max_k sum|w[k]| < 2**31`` (`accumulation_bound_u8`; the callers check).
Every path -- ``vnni512``, ``vnni256`` and ``generic`` (widening multiplies in portable LLVM
IR, for CPUs without VNNI) -- adds the same integers, so all give the same int32 results,
equal to `convolab.reference.conv2d` on the codes.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from ..errors import ConvError
from ..spec import ConvSpec
from ._int8_shape import MR, MR_TAIL, NV, PW_MK, PW_NV  # noqa: F401 - public here too

#: output pixels per image from which a 1x1 layer (stride 1, one group) runs on pointwise tiles
PW_MIN_PIXELS = 784
#: tasks per thread a layer is cut into (where it has that many tiles x k-blocks): a team
#: thread starts a job 7-30 us after its caller, who takes more of the tasks meanwhile; coarse
#: tasks left one thread finishing alone
TASKS_PER_THREAD = 4
#: the paths: instruction set of the dot products
PATHS = ("vnni512", "vnni256", "generic")
#: int32 lanes per vector on each path
LANES = {"vnni512": 16, "vnni256": 8, "generic": 16}
#: dtype of the zero-length token array that selects a path in the compiled kernels
_TOKENS = {"vnni512": np.uint8, "vnni256": np.uint16, "generic": np.int16}


def _target_features() -> tuple[str, set[str]]:
    """(CPU name, features) Numba compiles for: ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES``
    when set (e.g. ``generic``), else the host's."""
    import numba
    from llvmlite import binding

    name = numba.config.CPU_NAME
    if name and name != "host":
        feats = numba.config.CPU_FEATURES or ""
        return name, {f[1:] for f in feats.split(",") if f.startswith("+")}
    feats = binding.get_host_cpu_features()
    return binding.get_host_cpu_name(), {k for k, v in feats.items() if v}


def available_paths() -> tuple[str, ...]:
    """The paths this machine (as Numba targets it) can run, fastest first."""
    _, f = _target_features()
    out = []
    if {"avx512vnni", "avx512bw", "avx512f"} <= f:
        out.append("vnni512")
    if ("avx512vnni" in f and "avx512vl" in f) or "avxvnni" in f:
        out.append("vnni256")
    out.append("generic")
    return tuple(out)


def best_path() -> str:
    """The path int8 convolutions take: ``CONVOLAB_INT8_PATH`` if set (it must be available
    here), else the fastest available."""
    want = os.environ.get("CONVOLAB_INT8_PATH")
    have = available_paths()
    if want:
        if want not in PATHS:
            raise ConvError(f"CONVOLAB_INT8_PATH must be one of {', '.join(PATHS)}, got {want!r}")
        if want not in have:
            raise ConvError(f"CONVOLAB_INT8_PATH={want} needs CPU features this machine lacks "
                            f"(available: {', '.join(have)})")
        return want
    return have[0]


def token(path: str) -> np.ndarray:
    """The zero-length array whose dtype makes the compiled kernels use ``path``."""
    return np.zeros(0, dtype=_TOKENS[path])


def kb(path: str) -> int:
    """Output channels per tile on ``path``."""
    return NV * LANES[path]


def accumulation_bound_u8(wq: np.ndarray) -> int:
    """``255 * max_k sum|wq[k]|``: bounds every partial sum of the shifted (unsigned) inputs."""
    w = np.abs(np.asarray(wq).astype(np.int64)).reshape(wq.shape[0], -1)
    return 255 * int(w.sum(axis=1).max()) if w.size else 0


def padded_group(Cg: int) -> int:
    """A group's channels, rounded up to a multiple of 4 (one 32-bit word per tap)."""
    return -(-Cg // 4) * 4


def pack_weights(wq: np.ndarray, groups: int, path: str) -> tuple[np.ndarray, np.ndarray]:
    """The int8 filter (K, Cg, R, S) as the tiles read it, and the correction per channel.

    Packed: ``[groups][k-blocks][R][S][Cg4 / 4][KB][4]`` int8 (``Cg4``: `padded_group`),
    zeros past the group's channels and output channels; correction: ``128 * sum(wq[k])``
    (int32, (K,)), which the tiles subtract (the inputs are shifted by 128)."""
    K, Cg, R, S = wq.shape
    G = groups
    Kg = K // G
    b = kb(path)
    nkb = -(-Kg // b)
    Cg4 = padded_group(Cg)
    wg = np.zeros((G, nkb * b, Cg4, R, S), dtype=np.int8)
    wg[:, :Kg, :Cg] = wq.reshape(G, Kg, Cg, R, S)
    # [G][kb][lane][c4][4][R][S] -> [G][kb][R][S][c4][lane][4]
    wg = wg.reshape(G, nkb, b, Cg4 // 4, 4, R, S).transpose(0, 1, 5, 6, 3, 2, 4)
    corr = (128 * wq.astype(np.int64).reshape(K, -1).sum(axis=1)).astype(np.int32)
    return np.ascontiguousarray(wg).reshape(-1), corr


def tap_offsets(R: int, S: int, dh: int, dw: int, row_bytes: int, pixel_bytes: int) -> np.ndarray:
    """Byte offset of tap (r, s) from a window's first tap in the padded NHWC input, in the
    packed filter's (r, s) order."""
    return np.array([r * dh * row_bytes + s * dw * pixel_bytes for r in range(R) for s in range(S)],
                    dtype=np.int64)


def split(N: int, G: int, nkb: int, ntile: int, image_bytes: int, threads: int) -> tuple[int, int]:
    """(``nkbr`` ranges of k-blocks, ``nchunk`` ranges of tiles) per image and group: at least
    four tasks per thread where the layer has them; tiles cut first while a range of tiles'
    input (of ``image_bytes`` per image and group) exceeds 256 KiB (half an L2: it stays cached
    while the task loops over its k-blocks), then k-blocks, then tiles again."""
    want = TASKS_PER_THREAD * threads
    nchunk = min(ntile, max(1, -(-image_bytes // (256 * 1024))))
    nkbr = 1
    while N * G * nkbr * nchunk < want and nkbr < nkb:
        nkbr += 1
    while N * G * nkbr * nchunk < want and nchunk < ntile:
        nchunk += 1
    return nkbr, nchunk


def pointwise(spec) -> bool:
    """Whether a layer runs on the pointwise tiles (pixels in the lanes): 1x1, no padding, one
    group, at least `PW_MIN_PIXELS` output pixels per image (on small planes the channel tiles
    waste fewer lanes: 7x7 is 49 pixels, four vectors of 16). A strided 1x1 packs only the
    pixels it reads (a 2-strided downsampling layer: a quarter of its input)."""
    return ((spec.R, spec.S) == (1, 1) and not any(spec.padding)
            and spec.groups == 1 and spec.OH * spec.OW >= PW_MIN_PIXELS)


def pack_weights_pw(wq: np.ndarray) -> np.ndarray:
    """A 1x1 filter (K, C, 1, 1) for the pointwise tiles: ``[K-blocks of PW_MK][C4 / 4][PW_MK]
    [4]`` int8, zeros past K and C."""
    K, C = wq.shape[:2]
    nkb = -(-K // PW_MK)
    C4 = padded_group(C)
    wg = np.zeros((nkb * PW_MK, C4), dtype=np.int8)
    wg[:K, :C] = wq.reshape(K, C)
    return np.ascontiguousarray(wg.reshape(nkb, PW_MK, C4 // 4, 4).transpose(0, 2, 1, 3)).reshape(-1)


class Packed:
    """A layer's int8 filter packed for one path (`pack_weights`, or `pack_weights_pw` for the
    pointwise tiles), made once per plan."""

    def __init__(self, wq: np.ndarray, groups: int, path: str | None = None,
                 pointwise: bool = False):
        self.path = best_path() if path is None else path
        if self.path not in available_paths():
            raise ConvError(f"int8 path {self.path!r} needs CPU features this machine lacks "
                            f"(available: {', '.join(available_paths())})")
        self.shape = wq.shape
        self.groups = groups
        self.pointwise = pointwise
        if pointwise:
            self.w = pack_weights_pw(wq)
            corr = (128 * wq.astype(np.int64).reshape(wq.shape[0], -1).sum(axis=1)).astype(np.int32)
        else:
            self.w, corr = pack_weights(wq, groups, self.path)
        self.corr = np.concatenate([corr, np.zeros(kb(self.path), np.int32)])
        self.token = token(self.path)
        #: per (input ConvSpec, threads): `_Geometry`
        self.geometry: dict = {}


def _warm(path: str, x_shape, w_shape, padding: int, groups: int = 1) -> str:
    """Python source that compiles, in a child process (`convolab.kernels.load_from_cache`), one
    kind of int8 job on ``path`` with each of its outputs: int32, float32 and int8."""
    return (f"import os; os.environ['CONVOLAB_INT8_PATH'] = '{path}'; import numpy as np; "
            f"from convolab.quant import plan_int8; x = np.ones({x_shape}, np.int8); "
            f"w = np.ones({w_shape}, np.int8); "
            f"[plan_int8(x.shape, w, padding={padding}, groups={groups}, **k)(x) for k in "
            "({}, dict(output='float32', scale=1.0), "
            "dict(output='int8', scale=1.0, out_scale=1.0))]")


_F32 = np.zeros(0, dtype=np.float32)
_I32 = np.zeros(0, dtype=np.int32)
_STAGE0 = (_F32, _F32, 0, np.float32(0), np.float32(0))


def stage(K: int, scale, bias=None, act: int = 0, lo: float = 0.0, hi: float = 0.0,
          spare: int = 32) -> tuple:
    """The float output stage ``act(float32(y) * scale[k] + bias[k])`` as the kernels take it:
    float32 arrays with ``spare`` zeros appended (a tile reads a whole k-block), ``act`` 0
    none, 1 ReLU, 2 clamp(lo, hi)."""
    s = np.zeros(K + spare, np.float32)
    s[:K] = np.broadcast_to(np.asarray(scale, np.float32), (K,))
    b = np.zeros(K + spare, np.float32)
    if bias is not None:
        b[:K] = np.asarray(bias, np.float32)
    return (s, b, int(act), np.float32(lo), np.float32(hi))


def requant(acc: np.ndarray, out: np.ndarray, st: tuple, threads: int | None = None) -> None:
    """``out`` (float32, or int8 codes) = the output stage ``st`` (`stage`) of int32 results
    ``acc`` computed by another method, with the tiles' arithmetic (one fma per element; for
    int8, ``clip(rint(y), -127, 127)``)."""
    rt = _RUNTIME or _runtime()
    N, K = acc.shape[:2]
    HW = int(np.prod(acc.shape[2:]))
    rt["team"].run(rt["requant"], (acc.reshape(-1), out.reshape(-1), K, HW, *st,
                                   np.zeros(2, dtype=np.int64)), threads,
                   complete=True)


_RUNTIME: dict = {}


def _runtime() -> dict:
    """The compiled kernels and the team, imported at the first call and kept (an import
    statement in the call path cost about 5 us per call, against 100-400 us layers)."""
    if not _RUNTIME:
        from .._machine import worker_count
        from . import load_from_cache, team
        from ._int8 import (
            conv_int8_pw,
            conv_int8_tiles,
            depthwise_int8,
            depthwise_int8_blocked,
            depthwise_int8_blocked_buffer,
            depthwise_int8_buffer,
        )
        from ._int8 import requant as requant_planes

        _RUNTIME.update(load_from_cache=load_from_cache, team=team, tiles=conv_int8_tiles,
                        pw=conv_int8_pw, dw=depthwise_int8, dw_buffer=depthwise_int8_buffer,
                        dwb=depthwise_int8_blocked, dwb_buffer=depthwise_int8_blocked_buffer,
                        requant=requant_planes, worker_count=worker_count)
    return _RUNTIME


class _Geometry:
    """What a packed layer's call needs for one input shape and thread count, made once: the
    buffer of the shifted channels-last copy (reused by one call at a time: a fresh mmap-ed
    buffer per call cost page faults on every call), the runs of the taps, the task split."""

    def __init__(self, spec, packed: Packed, threads: int):
        self.spec = spec
        self.sub = (1, 1, spec.H, spec.W)
        if (spec.R, spec.S) == (1, 1) and not any(spec.padding) and spec.stride != (1, 1):
            # a strided 1x1 layer: a stride-1 one on the pixels it reads, packed alone
            self.sub = (*spec.stride, spec.H, spec.W)
            spec = ConvSpec.from_shapes((spec.N, spec.C, spec.OH, spec.OW), spec.w_shape, 1, 0,
                                        1, spec.groups, np.int8)
        G, Cg = spec.groups, spec.Cg
        Cg4 = padded_group(Cg)
        Hp, Wp = spec.padded_H, spec.padded_W
        Ct = G * Cg4
        dh, dw = spec.dilation
        self.size = spec.N * Hp * Wp * Ct
        self.xp = np.empty(self.size, dtype=np.uint8)
        self.lock = threading.Lock()
        if G == 1 and (dw == 1 or spec.S == 1):
            # a filter row's S taps are S Cg4 adjacent bytes: one run per row, the packed
            # filter's [R][S][Cg4] order read as [R][S Cg4] (the stem, 3 -> 64 7x7: 49 runs of
            # one word became 7 of 7)
            self.taps = tap_offsets(spec.R, 1, dh, dw, Wp * Ct, Ct)
            self.nq = spec.S * Cg4 // 4
        else:
            self.taps = tap_offsets(spec.R, spec.S, dh, dw, Wp * Ct, Ct)
            self.nq = Cg4 // 4
        nkb = -(-spec.Kg // kb(packed.path))
        self.nkbr, self.nchunk = split(spec.N, G, nkb, -(-spec.OH * spec.OW // MR),
                                       Hp * Wp * Cg4, threads)
        pl, _, pt, _ = spec.padding
        self.rest = (spec.N, spec.C, spec.H, spec.W, spec.K, spec.OH, spec.OW, G, Cg, Hp, Wp, pt,
                     pl, *spec.stride, self.nkbr, self.nchunk, packed.token)
        self.sub = tuple(int(v) for v in self.sub)


def conv(spec, xq: np.ndarray, packed: Packed, out: np.ndarray, threads: int | None = None,
         stage: tuple | None = None) -> None:
    """int8 convolution of ``xq`` (int8 NCHW codes, C-contiguous) into ``out`` on the team
    (`convolab.kernels.team`): int32 results, exact, or with ``stage`` (`stage`) float32
    ``act(y * scale + bias)``, or int8 codes ``clip(rint(that), -127, 127)`` when ``out`` is
    int8 (``out`` C-contiguous, ``spec.out_shape``)."""
    rt = _RUNTIME or _runtime()
    if threads is None:
        threads = rt["worker_count"]()
    lock, buf = _conv_buffer(spec, packed, threads)
    own = lock.acquire(blocking=False)
    try:
        xp = buf if own else np.empty(buf.size, dtype=np.uint8)
        fn, args, _, _ = _conv_job(spec, xq, packed, out, threads, stage, xp)
        rt["team"].run(fn, args, threads, complete=True)
    finally:
        if own:
            lock.release()


def bind(spec, xq: np.ndarray, packed: Packed | None, out: np.ndarray, threads: int,
         stage: tuple | None = None, wq: np.ndarray | None = None, taps=None):
    """`conv` (``packed``) or `depthwise` (``packed`` None, ``wq`` and ``taps``) of these very
    arrays as a function of no arguments: the job's arguments and work buffers made once, a
    call only zeroes its counter and runs it -- for a caller that runs the layer again and
    again on the same buffers, one call at a time (a compiled int8 model: `conv` took about 7
    us more per call, mostly building its arguments)."""
    rt = _RUNTIME or _runtime()
    if packed is None:
        fn, args, own, ctr = _depthwise_job(spec, xq, wq, out, threads, stage, taps)
    else:
        fn, args, own, ctr = _conv_job(spec, xq, packed, out, threads, stage,
                                       _conv_buffer(spec, packed, threads)[1])
    run = rt["team"].run

    def call():
        ctr[:] = 0
        run(fn, args, threads, own, True)

    return call


def _conv_buffer(spec, packed: Packed, threads: int) -> tuple:
    """(lock, buffer) of a packed layer's shifted channels-last copy at ``spec``, made once."""
    if packed.pointwise:
        _, buf, lock, _, _ = _pw_geometry(spec, packed, threads)
        return lock, buf
    geo = _tiles_geometry(spec, packed, threads)
    return geo.lock, geo.xp


def _tiles_geometry(spec, packed: Packed, threads: int) -> _Geometry:
    # keyed by the spec object (a plan keeps its own; hashing a ConvSpec took 0.5 us)
    key = (id(spec), threads)
    geo = packed.geometry.get(key)
    if geo is None or geo.spec is not spec:
        geo = packed.geometry[key] = _Geometry(spec, packed, threads)
    return geo


def _conv_job(spec, xq, packed: Packed, out, threads: int, stage, xp) -> tuple:
    """(kernel, arguments, None, counter) of `conv` with the shifted copy in ``xp``; the kernel
    compiled (`convolab.kernels.load_from_cache`)."""
    rt = _RUNTIME or _runtime()
    if stage is not None and out.dtype not in (np.float32, np.int8):
        raise ConvError(f"the output stage writes float32 or int8, got out of dtype {out.dtype}")
    if packed.pointwise:
        return _pw_job(spec, xq, packed, out, threads, stage, xp)
    geo = _tiles_geometry(spec, packed, threads)
    if stage is None:
        tail = (out.reshape(-1), geo.rest, _F32, _STAGE0)
    else:
        tail = (_I32, geo.rest, out.reshape(-1), stage)
    args = (xq.reshape(-1), xp, packed.w, packed.corr, geo.taps, geo.nq, tail[0],
            np.zeros(4, dtype=np.int64), *tail[1], tail[2], tail[3], geo.sub)
    rt["load_from_cache"](rt["tiles"], args, _warm(packed.path, (1, 8, 4, 4), (16, 8, 3, 3), 1),
                          (packed.path, out.dtype.name))
    return rt["tiles"], args, None, args[7]


def _pw_geometry(spec, packed: Packed, threads: int) -> tuple:
    """(spec, quad-plane buffer, lock, k-block ranges, tile chunks) of a pointwise layer."""
    HW = spec.OH * spec.OW
    TP = PW_NV * LANES[packed.path]
    key = (id(spec), threads)
    geo = packed.geometry.get(key)
    if geo is None or geo[0] is not spec:
        ntile = -(-HW // TP)
        nkb = -(-spec.K // PW_MK)
        # chunks of tiles whose input (quad planes: C4 bytes a pixel) fits half the L1 cache,
        # each task running all its k-blocks over them; k-blocks split only for parallelism
        per_tile = TP * padded_group(spec.C)
        nchunk = min(ntile, max(1, -(-ntile * per_tile // (16 * 1024))))
        nkbr = 1
        while spec.N * nkbr * nchunk < TASKS_PER_THREAD * threads and nkbr < nkb:
            nkbr += 1
        # the quad planes, and a tile's worth of slack: the last tile's vectors read past HW
        geo = packed.geometry[key] = (spec, np.empty(spec.N * padded_group(spec.C) * HW + 4 * TP,
                                                     dtype=np.uint8), threading.Lock(), nkbr,
                                      nchunk)
    return geo


def _pw_job(spec, xq, packed: Packed, out, threads: int, stage, xp) -> tuple:
    """`_conv_job` of a pointwise layer (`pointwise`) on the pointwise tiles."""
    rt = _RUNTIME or _runtime()
    TP = PW_NV * LANES[packed.path]
    _, _, _, nkbr, nchunk = _pw_geometry(spec, packed, threads)
    if stage is None:
        o, f, st = out.reshape(-1), _F32, _STAGE0
    else:
        o, f, st = _I32, out.reshape(-1), stage
    args = (xq.reshape(-1), xp, packed.w, packed.corr, o, np.zeros(4, dtype=np.int64),
            spec.N, spec.C, spec.H, spec.W, spec.OH, spec.OW, *spec.stride, spec.K, nkbr,
            nchunk, TP, packed.token, f, st)
    rt["load_from_cache"](rt["pw"], args, _warm(packed.path, (1, 8, 28, 28), (16, 8, 1, 1), 0),
                          (packed.path, "pw", out.dtype.name))
    return rt["pw"], args, None, args[5]


_F32_4 = np.zeros((0, 0, 0, 0), dtype=np.float32)
_I8_4 = np.zeros((0, 0, 0, 0), dtype=np.int8)
_I32_4 = np.zeros((0, 0, 0, 0), dtype=np.int32)


#: one-output-per-channel depthwise layers run on the channel-blocked kernel
#: (`_int8.depthwise_int8_blocked`); False: all on the per-plane one
DW_BLOCKED = True


def depthwise_taps(wq: np.ndarray) -> np.ndarray | None:
    """The taps of a one-output-per-channel depthwise filter as the channel-blocked kernel
    reads them (`convolab.kernels._int8.pack_depthwise_taps`), or None for other filters."""
    if wq.shape[1] != 1 or not DW_BLOCKED:
        return None
    from ._int8 import pack_depthwise_taps

    return pack_depthwise_taps(wq)


def depthwise(spec, xq: np.ndarray, wq: np.ndarray, out: np.ndarray,
              threads: int | None = None, stage: tuple | None = None,
              taps: np.ndarray | None = None) -> None:
    """Depthwise convolution (groups = C, K = m C) of int8 codes into ``out`` on the team
    (`convolab.kernels._int8.depthwise_int8`: integer sums in float32, exact): the int32 sums,
    or with ``stage`` the float32 / int8 output stage (by ``out``'s dtype, as `conv`).
    ``taps``: `depthwise_taps` of ``wq`` when the caller keeps them (made here if None)."""
    rt = _RUNTIME or _runtime()
    if threads is None:
        threads = rt["worker_count"]()
    fn, args, bufs, _ = _depthwise_job(spec, xq, wq, out, threads, stage, taps)
    rt["team"].run(fn, args, threads, own=bufs, complete=True)


def _depthwise_job(spec, xq, wq, out, threads: int, stage, taps) -> tuple:
    """(kernel, arguments, per-thread work buffers, counter) of `depthwise`; the kernel
    compiled."""
    rt = _RUNTIME or _runtime()
    blocked = spec.K == spec.C and DW_BLOCKED
    n = rt["dwb_buffer" if blocked else "dw_buffer"](spec)
    pl, _, pt, _ = spec.padding
    bufs = [np.empty(n, dtype=np.float32) for _ in range(max(1, threads))]
    if stage is None:
        outs = (out, _F32_4, _I8_4, _STAGE0)
    elif out.dtype == np.float32:
        outs = (_I32_4, out, _I8_4, stage)
    elif out.dtype == np.int8:
        outs = (_I32_4, _F32_4, out, stage)
    else:
        raise ConvError(f"the output stage writes float32 or int8, got out of dtype {out.dtype}")
    if blocked:  # one output per channel: the channel-blocked kernel
        args = (xq, depthwise_taps(wq) if taps is None else taps, outs[0],
                np.zeros(2, dtype=np.int64), spec.OH, spec.OW, spec.R, spec.S,
                *spec.stride, *spec.dilation, pt, pl, *outs[1:])
        rt["load_from_cache"](rt["dwb"], args + (bufs[0],),
                              _warm("generic", (1, 8, 6, 6), (8, 1, 3, 3), 1, groups=8),
                              ("dwb", out.dtype.name))
        return rt["dwb"], args, bufs, args[3]
    args = (xq, wq, outs[0], np.zeros(2, dtype=np.int64), spec.K, spec.OH, spec.OW, spec.R,
            spec.S, *spec.stride, *spec.dilation, pt, pl, *outs[1:])
    rt["load_from_cache"](rt["dw"], args + (bufs[0],),
                          _warm("generic", (1, 8, 6, 6), (8, 1, 3, 3), 1, groups=8),
                          ("dw", out.dtype.name))
    return rt["dw"], args, bufs, args[3]
