"""The compiled model's arena and executor program: where every activation lives, which
operators run inside the executor's job (`convolab.runtime._executor`) and the rows that tell
it what to do.

`_build` assigns arena offsets by liveness (values whose lifetimes do not overlap share
space; reshapes are views of their input's slot; padded copies get dedicated, zero-bordered
space), cuts the graph into segments (runs of operators the executor runs as one job: direct
convolutions on the microkernel or the depthwise kernels, Winograd / SFC convolutions whose
point GEMMs run on the microkernel, max / adaptive average pooling, linear layers) and the
operators run one by one, then `_program` writes each segment's rows: packed filters and
biases in one blob, the tap tables in another, the layout choices (pixel-vector 1x1 kernels,
channel-blocked pairs, image-major runs at batch > 1).

Size: every layout decision of the executor (padded copies, phases, pixel vectors, channel-
blocked pairs, image-major runs) writes the same program rows; they are kept beside `_program`,
which fills them.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from .. import registry, select
from ..algorithms import bilinear, direct
from ..spec import ConvSpec
from . import _executor as _X
from . import _kernels as K
from .graph import ACTS, Graph, Node
from .ops import pool_out

if TYPE_CHECKING:
    from .model import CompiledModel, _State


def _in_executor(spec: ConvSpec) -> bool:
    """Convolutions the executor runs when their algorithm is ``direct``: all of them in
    float32 -- depthwise ones on direct's depthwise kernel, the others on the microkernel,
    whatever their channel count, stride or dilation (direct's own thresholds for it weigh a
    parallel region's start, which the executor does not pay). Both sum in direct's order,
    one fused multiply-add per product: the same bits as ``algorithm="direct"``."""
    return spec.dtype == np.float32


#: the runtime's ``auto`` keeps a convolution in the executor unless another algorithm is
#: predicted this much faster than the executor's kernel. Outside the executor a layer pays its
#: own parallel region, an extra pass for its output stage, a second wake-up of the team, and
#: the BLAS-based algorithms run with the BLAS held to one thread; whole networks on the 2-core
#: Zen 4 VM ran faster all-executor than with the per-layer choice (ResNet-50 batch 1: 70.7
#: against 104.9 ms; EfficientNet-Lite0: 26.4 against 29.0 ms before the team was pinned)
EXECUTOR_FACTOR = 1.5
#: ... plus this many of the machine's per-call overheads (`costmodel.Machine.call_seconds`):
#: a layer that leaves the executor ends its job and starts the next (two wake-ups of the
#: team), runs its own parallel region and an extra pass for its output stage, and reads its
#: transformed filter from memory (cold after the rest of the network). ResNet-50 batch 1, 2
#: threads, Zen 4: its 256@14 3x3 layers predicted 1.57x faster on F(2x2,3x3) / SFC-4 (alone,
#: hot: 0.70 against 1.13 ms) took 1.33 ms each outside the executor against 1.06 inside, the
#: network 41.9 against 40.2 ms; at batch 8 the fast algorithms still win (1.67-2.10x)
EXECUTOR_LEAVE_CALLS = 5


def _bilinear_inside(name: str, spec: ConvSpec) -> bool:
    """Whether the executor runs ``spec`` planned for algorithm ``name`` as a bilinear operator
    (`_X.OP_BIL`): a Winograd / SFC algorithm that supports it, float32, one group, its point
    GEMMs on the microkernel (`convolab.algorithms.bilinear._microkernel_gemms`)."""
    return (name in bilinear.VARIANTS and spec.dtype == np.float32 and spec.groups == 1
            and registry.get(name).supports(spec) is None and bilinear._microkernel_gemms(spec))


def _bilinear_op(st: _State, i: int) -> bool:
    p = st.plans.get(i)
    return p is not None and _bilinear_inside(p.algorithm, p.spec)


#: the runtime's ``auto`` runs a layer on a bilinear algorithm inside the executor
#: (`_bilinear_inside`) where the cost model predicts it this much faster than the executor's
#: direct kernel (both without the per-call overhead the executor does not pay)
BILINEAR_FACTOR = 1.15


def _prefer_executor(spec: ConvSpec, budgets: dict, threads: int = 1) -> str:
    """``"direct"`` where the executor runs it and the cost model predicts the executor's
    kernel (the microkernel, or the depthwise kernel), less the per-call overhead the executor
    does not pay, at most `EXECUTOR_FACTOR` times the best admissible algorithm's time; the
    best admissible algorithm's name where the executor runs that too (`_bilinear_inside`) and
    it is predicted `BILINEAR_FACTOR` times faster; else ``"auto"``."""
    if not _in_executor(spec):
        return "auto"
    ranking = select.rank(spec, **budgets)
    adm = [c for c in ranking if c.admissible]
    if not adm or "direct" not in {c.name for c in adm}:
        return "auto"
    if adm[0].name == "direct":
        return "direct"
    d = registry.get("direct")
    if not direct.depthwise(spec):  # predict the microkernel, whatever direct itself would run
        d = dataclasses.replace(d, kernel=lambda s: "")
    m = select.machine()
    mine = select.predict_seconds(d, spec, m) - m.call_seconds
    if _bilinear_inside(adm[0].name, spec):  # no cost of leaving the executor
        if select.trial_wanted(ranking):
            # an uncalibrated machine, whose model constants are another CPU's: time the best
            # candidates as `auto` alone would
            ranking = select.rank(spec, trial=True, **budgets)
            adm = [c for c in ranking if c.admissible]
            if adm[0].name == "direct" or not _bilinear_inside(adm[0].name, spec):
                return "direct"
        best = adm[0].seconds
        return adm[0].name if BILINEAR_FACTOR * (best - m.call_seconds) < mine else "direct"
    best = adm[0].seconds
    if adm[0].name == "im2col" and spec.R == spec.S == 1 and spec.stride == (1, 1) and not any(spec.padding):
        # one GEMM, whose threads are the BLAS's: in the runtime it runs on one
        best *= threads
    return "direct" if mine <= EXECUTOR_FACTOR * best + EXECUTOR_LEAVE_CALLS * m.call_seconds \
        else "auto"


class _Segment:
    """Consecutive convolutions run by the executor as one parallel job."""

    def __init__(self, P: int):
        self.P = P
        self.nodes: list[int] = []
        #: the node of each executor row (one per node, or per image and node in an
        #: image-major run)
        self.row_nodes: list[int] = []
        #: reshape nodes inside the segment: views of their input's arena slot, no row
        self.views: list[int] = []
        self.nmax = 1


def _executable(st: _State, i: int, n: Node) -> bool:
    if n.kind != "conv":
        return False
    p = st.plans.get(i)
    return p is not None and (p.algorithm == "direct" and _in_executor(p.spec)
                              or _bilinear_inside(p.algorithm, p.spec))


def _executor_op(g: Graph, st: _State, i: int, n: Node) -> bool:
    """Operators other than convolutions that the executor runs (`_X.OP_MAXPOOL`,
    `_X.OP_ADAPTIVE`, `_X.OP_LINEAR`), on the arena, at the shapes of the first call: max
    pooling and adaptive average pooling of NCHW values (keeping their dimensions), a linear
    layer on (N, features) rows."""
    if i not in st.shapes or not n.inputs:
        return False
    x = st.shapes.get(n.inputs[0])
    if n.kind == "maxpool":
        return x is not None and len(x) == 4
    if n.kind == "adaptive_avg":
        return x is not None and len(x) == 4 and n.attrs.get("keepdim", True)
    if n.kind == "linear":
        return (x is not None and len(x) == 2 and len(st.shapes[i]) == 2
                and x[1] == n.attrs["w"].shape[1])
    return False


def _aligned(a: np.ndarray) -> np.ndarray:
    """A copy of the 1-D array ``a`` whose data starts on a 64-byte boundary."""
    raw = np.empty(a.size * a.itemsize + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start: start + a.size * a.itemsize].view(a.dtype)
    out[:] = a
    return out


def _roots(g: Graph) -> list[int]:
    root = list(range(len(g.nodes)))
    for i, n in enumerate(g.nodes):
        if n.kind == "reshape":
            root[i] = root[n.inputs[0]]
    return root


#: bytes per image of a convolution's input and output from which a batch runs it image by image.
#: 256 KiB kept the mobile networks' 14x14 and 7x7 layers out; with lanes (each thread whole
#: images) all of them gain from joining: Xeon, batch 8, two copies taking turns, 0 against
#: 256 KiB, 2 threads: EfficientNet-Lite0 0.966-0.986x, MobileNetV2 0.94-0.98x (arena 36 -> 26
#: MiB, 34 -> 26: every value one image's); one thread 0.98-0.99x, 0.97-0.98x; ResNet-50 runs
#: the same program (its 7x7 stage stays out by `IMAGE_MAJOR_FILTER_SHARE`)
IMAGE_MAJOR_BYTES = 0
#: ... provided they are at least this fraction of its filter's bytes, which the run reads once
#: per image instead of once
IMAGE_MAJOR_FILTER_SHARE = 1 / 8


#: with several threads, each runs whole images of the run (`_State.lanes`)
LANES = True


#: ... and a bilinear operator (`_X.OP_BIL`) joins it if its transformed filter, read once per
#: image there, takes at most this many bytes. ResNet-50 batch 8, 2 threads, Zen 4, each layer
#: inside the run against the batch at once: F(2x2,3x3) 256@14 (4 MiB) 4.9-5.0 against 4.95
#: ms, SFC-4 128@28 (2.9 MiB) 5.5 against 5.9; SFC-4 256@14 (11.5 MiB) 5.6-5.9 against 5.1,
#: SFC-6(7x3) 256@14 (33 MiB) 9.7-10.7 against 4.1-4.2
IMAGE_MAJOR_BILINEAR_BYTES = 8 << 20


def _image_major_run(g: Graph, st: _State) -> set[int]:
    """The first run (of two layers or more) of consecutive convolutions for the executor (and
    max pooling between them) whose input and output together take at least
    `IMAGE_MAJOR_BYTES` per image (a convolution's also at least
    `IMAGE_MAJOR_FILTER_SHARE` of the filter's bytes), when the batch has several images: the
    executor runs it image by image (all its layers for image 0, then image 1...), so each
    image's activations stay in the cache from one layer to the next; layer by layer, a batch
    of eight 112x112 activations (13 MB each) went to memory between layers (EfficientNet-Lite0
    at batch 8, one thread: its 112x112 and 56x56 layers ran 1.5-2x slower per image than at
    batch 1). Its filters are then read once per image: ResNet-50 at batch 8 (two threads, Zen
    4, each layer's time inside the run, interleaved) gained from 256 KiB instead of 1 MiB in
    its 28x28 and 14x14 stages (the 1x1 layers 4-20% faster, the 3x3 ones the same), and lost
    6-10% in its 7x7 stage, whose 4-8 MB filters are 8-16 times an image's activations. With
    the stem and its pooling in the run, the stem's output (3.2 MB an image) no longer goes to
    memory and back: the pooling 2.0 -> 1.7 ms, the 1x1 layer after it 1.40 -> 1.06 ms."""
    run: set[int] = set()
    for i, n in enumerate(g.nodes):
        big = False
        if n.kind == "conv" and _executable(st, i, n):
            sp = st.plans[i].spec
            act = (sp.C * sp.H * sp.W + sp.K * sp.OH * sp.OW) * 4
            big = (sp.N > 1 and act >= IMAGE_MAJOR_BYTES
                   and act >= IMAGE_MAJOR_FILTER_SHARE * sp.K * sp.Cg * sp.R * sp.S * 4)
            if big and _bilinear_op(st, i):
                big = st.plans[i]._prepared.wt.nbytes <= IMAGE_MAJOR_BILINEAR_BYTES
        elif n.kind == "maxpool" and _executor_op(g, st, i, n):
            # a stem's pooling: the stem and the layers after it run image by image together
            xs, ys = st.shapes[n.inputs[0]], st.shapes[i]
            big = xs[0] > 1 and (np.prod(xs[1:]) + np.prod(ys[1:])) * 4 >= IMAGE_MAJOR_BYTES
        if big:
            run.add(i)
        elif len(run) > 1:
            break
        else:
            run = set()  # a single layer gains nothing: look further
    return run if len(run) > 1 else set()


def _run_internal(g: Graph, run: set[int]) -> set[int]:
    """The values of an image-major run (`_image_major_run`) that only its own layers read (no
    view of them, no graph output): the run finishes each image before the next one starts, so
    such a value needs the space of one image, reused image after image. Given a batch's
    space, each image's activations went to fresh memory: every layer wrote lines that were in
    no cache (ResNet-50 at batch 8, two threads, Zen 4: its 56x56 layers ran 8-11% slower per
    image than with every image on image 0's space)."""
    users: dict[int, set[int]] = {}
    for k, n in enumerate(g.nodes):
        for j in n.inputs:
            users.setdefault(j, set()).add(k)
    return {i for i in run if i not in g.outputs and users.get(i) and users[i] <= run}


def _build(m: CompiledModel, st: _State, image_major: bool = True) -> None:
    """Arena offsets for every recorded output (shared between values whose lifetimes do not
    overlap: a value lives from its node to the last node that reads it or a view of it;
    graph outputs are copied out), dedicated zero-bordered padded copies, and the segments:
    runs of executable convolutions whose inputs live in the arena, the rest one by one."""
    g = m.graph
    root = _roots(g)
    last: dict[int, int] = {}
    for i, n in enumerate(g.nodes):
        for j in n.inputs:
            last[root[j]] = i
    for j in g.outputs:
        last[root[j]] = len(g.nodes)
    st.image_major = run = _image_major_run(g, st) if image_major else set()
    st.run_internal = internal = _run_internal(g, run)
    # lanes: the run's images shared out among the threads, each thread running whole images
    # on a copy of the one-image spaces of its own (`_image_major_rows`, `_X.worker`)
    nimg = st.shapes[g.inputs[0]][0] if g.inputs and g.inputs[0] in st.shapes else 1
    st.lanes = m.threads if run and LANES and 1 < m.threads <= nimg else 1
    if run:
        # its nodes run image by image: every batch-sized value it writes or reads stays live
        # to its end (its one-image values only as long as in a layer-by-layer run)
        b = max(run)
        for i in run:
            if i not in internal:
                last[i] = max(last.get(i, i), b)
            for j in g.nodes[i].inputs:
                if root[j] not in internal:
                    last[root[j]] = max(last.get(root[j], root[j]), b)
    # (offset, size) of released slots and (last use, offset, size) of taken ones, in the
    # arena (0) and in the pool of the run's one-image values and copies (1), which follows
    # the arena once per lane
    free: list[list[tuple[int, int]]] = [[], []]
    busy: list[list[tuple[int, int, int]]] = [[], []]
    off: dict[int, int] = {}
    sizes = [0, 0]
    # the run's batch-sized values take their space at its start: a one-image value's space,
    # freed within the run, is written again for the next image
    r0 = min(run, default=len(g.nodes))
    order = [(i, i) for i in range(r0)] + [(i, r0) for i in sorted(run - internal)] + [
        (i, i) for i in range(r0, len(g.nodes)) if i not in run or i in internal]
    for i, t in order:
        for q in (0, 1):
            free[q] += [(o, sz) for end, o, sz in busy[q] if end < t]
            busy[q] = [b for b in busy[q] if b[0] >= t]
        if i not in st.shapes or root[i] != i:
            continue  # no value of its own, or a view (reshape) of its input's slot
        need = -(-int(np.prod(st.shapes[i])) // (st.shapes[i][0] if i in internal else 1)
                 // 16) * 16
        q = int(i in internal)
        r = _in_place_residual(g, st, root, last, off, i)
        if r is not None:  # the output overwrites its residual, element by element
            end = last.get(i, i)
            busy[q] = [(max(e, end), o, sz) if o == off[r] else (e, o, sz)
                       for e, o, sz in busy[q]]
            off[i] = off[r]
            continue
        fit = [k for k, (_, sz) in enumerate(free[q]) if sz >= need]
        if fit:
            o, sz = free[q].pop(min(fit, key=lambda k: free[q][k][1]))
        else:
            o, sz = sizes[q], need
            sizes[q] += need
        busy[q].append((last.get(i, i), o, sz))
        off[i] = o
    total = sizes[0]
    # executor operators: padded copies get dedicated space (their borders stay zero; the
    # run's one-image copies in the pool)
    segments: list = []
    seg = None
    pads: dict[int, int] = {}
    for i, n in enumerate(g.nodes):
        inside = all(root[j] in off for j in n.inputs)
        if n.kind == "reshape" and seg is not None and inside and root[i] in off:
            seg.views.append(i)  # a view of its input's slot: nothing to run
            continue
        if inside and _executor_op(g, st, i, n):
            if seg is None:
                seg = _Segment(m.threads)
                segments.append(seg)
            seg.nodes.append(i)
            continue
        ok = _executable(st, i, n) and inside
        if ok:
            spec = st.plans[i].spec
            nc = (1 if i in run else spec.N) * spec.C  # image-major: one image's copy
            if _bilinear_op(st, i):  # its input's NHWC copy
                need = nc * spec.H * spec.W
            elif _phased(spec):
                hq, wq = direct.phases(spec)
                sh, sw = spec.stride
                need = nc * sh * sw * hq * wq
            elif not direct.depthwise(spec) and any(spec.padding):
                need = nc * spec.padded_H * spec.padded_W
            elif _subsampled(spec):
                need = nc * spec.OH * spec.OW
            else:
                need = 0
            if need:
                q = int(i in run)
                pads[i] = sizes[q] if q else total
                if q:
                    sizes[1] += -(-need // 16) * 16
                else:
                    total += -(-need // 16) * 16
            if seg is None:
                seg = _Segment(m.threads)
                segments.append(seg)
            seg.nodes.append(i)
        elif n.kind != "input":
            seg = None
            segments.append(i)
    if run and not any(isinstance(s_, _Segment) and run <= set(s_.nodes) for s_ in segments):
        # not one run of rows (its one-image spaces assume one): layer by layer
        return _build(m, st, image_major=False)
    # the pool after the arena, once per lane: its values' and copies' offsets are lane 0's
    for i in internal & off.keys():
        off[i] += total
    for i in run & pads.keys():
        pads[i] += total
    st.lane_span = sizes[1]
    arena = _aligned(np.zeros(max(total + st.lanes * sizes[1], 16), dtype=np.float32))
    st.buffers = {}
    for i, o in off.items():
        shape = st.shapes[i]
        if i in internal:  # its last image's values (one image's space)
            shape = (1, *shape[1:])
        st.buffers[i] = arena[o: o + int(np.prod(shape))].reshape(shape)
    for i in range(len(g.nodes)):  # reshape nodes: views of their input's slot
        if root[i] != i and root[i] in off and i in st.shapes:
            st.buffers[i] = st.buffers[root[i]].reshape(st.shapes[i])
    for s_ in segments:
        if isinstance(s_, _Segment):
            _program(m, st, s_, root, off, pads)
    st.arena = arena
    st.segments = segments
    outside = [g.nodes[s_].kind for s_ in segments if not isinstance(s_, _Segment)]
    st.uses_blas = "conv" in outside
    st.uses_torch = "torch" in outside
    st.outside = bool(outside)


def _in_place_residual(g: Graph, st: _State, root, last, off, i: int) -> int | None:
    """The residual whose arena slot convolution ``i`` may write its output into, or None.

    A residual add fused into a convolution reads each residual element once, in the tile
    that then stores the output element at the same place (the microkernel's and the
    pixel-vector kernel's fused output stage: bias, residual, ReLU / clamp). Where nothing
    reads the residual afterwards, the output can take its slot: the add then reads and
    writes the same cache lines, one stream instead of a read stream and a write stream
    whose lines must first be fetched (as ONNX Runtime's Conv with a fused Sum does). Not for
    output stages the tiles leave to a later pass over the output (it would read the
    residual after the output overwrote it), depthwise layers (likewise), nor where the
    residual is also the convolution's input (other tiles still read it)."""
    n = g.nodes[i]
    a = n.attrs
    if n.kind != "conv" or not a["residual"] or ACTS[a["act"]] > 2 or len(n.inputs) != 2:
        return None
    p = st.plans.get(i)
    if p is None or not _executable(st, i, n) or direct.depthwise(p.spec) or _bilinear_op(st, i):
        return None
    x, r = root[n.inputs[0]], root[n.inputs[1]]
    if r == x or r not in off or x not in off or last.get(r) != i or r in g.outputs:
        return None
    if (r in st.run_internal) != (i in st.run_internal):  # one image's space and a batch's
        return None
    if st.shapes.get(r) != st.shapes.get(i):
        return None
    return r


def _bytes_per_pixel(spec, copied: bool) -> float:
    """Input bytes the tiles read per output pixel (all channels of a group), for
    `microkernel.split`: the padded planes' share, or one pixel's channels where a strided 1x1
    layer reads its compact copy (`_subsampled`; counted at its strided input, the split had cut
    ResNet-50's 1024 -> 2048 / 2 at 14x14 into 4 ranges of tiles that each read the 8 MB
    filter, in tasks of unequal size)."""
    if copied and _subsampled(spec):
        return spec.Cg * 4.0
    return spec.Cg * spec.padded_H * spec.padded_W / (spec.OH * spec.OW) * 4


def _subsampled(spec) -> bool:
    """A strided 1x1 convolution without padding (a downsampling shortcut): the executor
    copies the pixels it reads (every sh-th row, sw-th column) into compact planes and runs
    it as a stride-1 1x1 on them, whose tiles are all straight (strided ones crossed row ends
    on the general kernel, at half speed). The sum over channels is the same."""
    return (spec.R == spec.S == 1 and spec.stride != (1, 1) and not any(spec.padding)
            and spec.groups == 1 and not direct.depthwise(spec))


def _phased(spec) -> bool:
    """A strided k x k convolution (not depthwise): the executor splits its padded input into
    stride-phase planes (`convolab.kernels._direct.fill_phases`), where every tap reads
    consecutive outputs' inputs contiguously, and runs it on the table microkernel (each tap's
    offset from a table, tiles over virtual rows of the phase width). Strided tiles crossed row
    ends on the general kernel, at half speed. The reduction's order, (c, r, s), is unchanged."""
    return (spec.stride != (1, 1) and spec.R * spec.S > 1 and not direct.depthwise(spec))


#: output pixels per image from which a 1x1 layer runs on the pixel-vector kernel
PV_MIN_PIXELS = 28 * 28
#: input channels up to which it does (a tile's input, C x 48 pixels, then stays in the L1
#: cache across the k-block's four row tiles; 512 -> 128 at 28x28 ran 3% slower on it)
PV_MAX_CHANNELS = 256


def _pixel_vectors(spec, copied: bool) -> bool:
    """A 1x1 layer read as plain planes (stride 1 without padding, or a subsampled stride,
    `_subsampled`), one group, at least `PV_MIN_PIXELS` outputs per image: the executor runs
    it with pixels in the vector lanes (`convolab.kernels._pointwise`). Executor, one thread,
    Zen 4, ms (pixel-vector / microkernel): 32 -> 16 at 112x112 0.155 / 0.303, 16 -> 96 at
    112x112 0.58 / 0.82, 24 -> 144 at 56x56 0.28 / 0.35, 240 -> 40 at 28x28 0.145 / 0.237;
    80 -> 480 at 14x14 0.188 / 0.184 (from 14x14 the microkernel's transposes no longer cost
    more than the multiply-adds); ResNet-50's 64 -> 256 at 56x56 0.97 / 1.09, 256 -> 64 0.92 /
    0.95. Same bits either way."""
    if (spec.R != 1 or spec.S != 1 or spec.groups != 1 or spec.OH * spec.OW < PV_MIN_PIXELS
            or spec.C > PV_MAX_CHANNELS):
        return False
    if spec.stride == (1, 1):
        return not any(spec.padding)
    return copied and _subsampled(spec)


def _pv_chunks(spec, nkb: int, threads: int) -> int:
    """Chunks of pixels per k-block: at least four tasks per thread, and each chunk's input
    (all channels) within `convolab.kernels.microkernel.CHUNK_BYTES`."""
    from ..kernels import microkernel as mk
    from ..kernels._pointwise import PX

    P = spec.OH * spec.OW
    ntile = -(-P // PX)
    want = max(-(-mk.TASKS_PER_THREAD * threads // nkb), -(-spec.C * P * 4 // mk.CHUNK_BYTES))
    return int(min(ntile, max(1, want)))


def _one_thread_fields(st: _State, i: int, row: np.ndarray, pads) -> dict[int, int]:
    """The fields of convolution ``i``'s row that split its work among threads, for one thread
    running one image (a lane, `_image_major_rows`)."""
    from ..kernels import microkernel as mk

    if i not in st.plans:  # pooling: its tasks are the threads' at run time
        return {}
    spec = st.plans[i].spec
    if row[_X.F_KIND] == _X.OP_TILES:
        nkb = -(-(spec.K // spec.groups) // mk.kb(spec))
        sp = mk.split(spec, spec.OH * spec.OW, _bytes_per_pixel(spec, i in pads), nkb, 1)
        out = {_X.F_A: sp.nkbr, _X.F_B: sp.nchunk}
        if row[_X.F_PV] > 0:
            out[_X.F_PV] = _pv_chunks(spec, nkb, 1)
        return out
    if row[_X.F_KIND] == _X.OP_BIL:
        K, KB = int(row[_X.F_K]), int(row[_X.F_DW])
        g2, sh = _bilinear_split(1, int(row[_X.F_B]), int(row[_X.F_C2]), -(-K // KB), 1, K)
        return {_X.F_G2: g2, _X.F_SH: sh}
    return {}


def _image_major_rows(prog, fprm, nodes, per_image, lanes=1, span=0, one=None):
    """The segment's rows with its image-major run (`_image_major_run`) replaced by one row per
    image and layer, image after image: each a one-image copy of the layer's row, its input,
    output and residual moved to that image where they have a batch's space (``per_image[node]``:
    three flags), left in place where they have one image's (`_run_internal`), like the padded
    copy. With ``lanes`` threads, the first ``lanes * (N // lanes)`` images are lanes' (`F_LANE`:
    rows per image, lanes and images): image n's one-image spaces are lane ``n % lanes``'s copy
    (``span`` elements apart), its work split for one thread (``one[node]``: the row fields);
    the worker runs them lane by lane, each thread its own, with no barrier between the rows.
    The other images' rows follow, each shared by all the threads. Returns the rows, their
    parameters and the node of each row."""
    rs = [r for r, i in enumerate(nodes) if i in per_image]
    if not rs:
        return prog, fprm, list(nodes)
    r0, r1 = rs[0], rs[-1] + 1
    assert r1 - r0 == len(rs), "an image-major run is one run of rows (`_build`)"
    N = int(prog[r0, _X.F_N])
    n0 = N // lanes * lanes if lanes > 1 else 0
    rows, prms, owners = [], [], []
    for n in range(N):
        for r in range(r0, r1):
            row = prog[r].copy()
            x, y, res = per_image[nodes[r]]
            row[_X.F_N] = 1
            row[_X.F_X] += n * row[_X.F_XIMG] * x
            row[_X.F_Y] += n * row[_X.F_YIMG] * y
            if row[_X.F_RES] >= 0:
                row[_X.F_RES] += n * row[_X.F_YIMG] * res
            if n < n0:
                shift = (n % lanes) * span
                row[_X.F_X] += shift * (not x)
                row[_X.F_Y] += shift * (not y)
                if row[_X.F_RES] >= 0:
                    row[_X.F_RES] += shift * (not res)
                if row[_X.F_KIND] == _X.OP_BIL or (row[_X.F_KIND] == _X.OP_TILES
                                                   and row[_X.F_C2]):
                    row[_X.F_F] += shift  # its padded / NHWC copy
                for f, v in one[nodes[r]].items():
                    row[f] = v
                row[_X.F_LANE] = ((r1 - r0) << 32) + (lanes << 16) + n0
            rows.append(row)
            prms.append(fprm[r])
            owners.append(nodes[r])
    prog = np.concatenate([prog[:r0], np.array(rows), prog[r1:]])
    fprm = np.concatenate([fprm[:r0], np.array(prms), fprm[r1:]])
    return prog, fprm, list(nodes[:r0]) + owners + list(nodes[r1:])


#: output channels up to which a 1x1 projection that would run with pixels in the vector
#: lanes (`_pixel_vectors`) reads a depthwise layer's output channel-blocked on the microkernel
#: instead (the depthwise layer then skips the transposition to planes). Its tiles of one
#: vector of 16 channels fill their lanes; 24 channels fill 24 of 32. Executor, 2 threads, Zen
#: 4, the pair's time (depthwise + projection) with against without (interleaved, ms): b8
#: 32@112 -> 16: 1.73 -> 1.33 (MobileNetV2), 1.77 -> 1.34 (EfficientNet-Lite0); 144@56 -> 24:
#: 2.07 -> 1.98, 2.12 -> 1.97; b1 32@112 -> 16: 0.201 -> 0.190; 144@56 -> 24: 0.241 -> 0.251
#: (MobileNetV2). On a Xeon (one 512-bit shuffle port, where Zen 4 has two) the transposes
#: cost more: the depthwise 144@56 of EfficientNet-Lite0 b1, one thread, 0.321 -> 0.187 ms, its
#: projection 0.188 -> 0.185; whole networks, two copies taking turns (2026-12-07, Xeon), from
#: 16 at batch 1 / 24 at batch 8 to 48: EfficientNet-Lite0 b1 0.980x (two steps of 0.990), b8
#: 0.985x, one thread 0.979x; MobileNetV2 b1 0.975x, b8 0.985x, one thread 0.986x
BLOCKED_PROJECTION_MAX_K = 48


def _blocked_projection(spec) -> bool:
    """A 1x1 layer fed by a channel-blocked depthwise layer reads its output channel-blocked
    (on the microkernel), unless it runs with pixels in the vector lanes: then only up to
    `BLOCKED_PROJECTION_MAX_K` output channels."""
    if not _pixel_vectors(spec, False):
        return True
    return spec.K <= BLOCKED_PROJECTION_MAX_K


#: output pixels per image from which a stride-1 k x k layer reads a blocked input on the tapped
#: tiles (strided ones at any size). ResNet-50 batch 1, one thread, Xeon, each 3x3 layer's time
#: against ONNX Runtime's inside the network (`tools/ort_gap.py`), NCHW -> tapped: 56x56
#: 1.17-1.21x -> 1.15-1.16x, 28x28 1.09-1.11x -> 1.08-1.09x, 14x14 0.99-1.03x -> 1.03-1.07x,
#: 7x7 0.98-1.01x -> 1.05-1.08x (the NCHW kernels' rows of 14 and 7 pixels with constant
#: offsets and next-row prefetch do better there); strided: 128@56/2 1.51x -> 1.30x, 256@28/2
#: 1.31x -> 1.10x (no phase planes). The 1x1 layers around the 14x14 and 7x7 ones gain more
#: than they lose: whole ResNet-50, 0 against 28 x 28, two copies taking turns, 0.990x (batch
#: 8, 2 threads), 0.994x (batch 1), 0.995x (batch 1, one thread)
TAPPED_MIN_PIXELS = 0


def _blocked_pairs(g: Graph, st: _State, seg: _Segment, root, pads) -> dict[int, int]:
    """The segment's activations that stay channel-blocked (NCHW16c): ``{node: F_BLK bits}``
    (bit 1 output blocked, bit 2 input blocked; see `_X.F_BLK`). A value is blocked when its
    producer can store it so and every reader can read it so:

    - producers: 1x1 layers on the microkernel (stride 1, or a strided one on its compact
      copy) and dense k x k layers on a blocked input (the tapped tiles, below), with any
      fused output stage the tiles apply (bias, residual, ReLU, clamp); without a residual
      also strided k x k layers on NCHW stride-phase planes (`_phased`: stems) and
      channel-blocked depthwise layers;
    - readers: the same 1x1 layers (runs of 16 channels per pixel; a strided one copies
      pixel vectors into its compact copy), dense k x k layers with a padded or phase copy
      (rows of pixel vectors copied into a zero-bordered blocked copy, read by the tapped
      tiles: each channel's taps from a table, any stride, no phase planes; their output is
      then blocked too), channel-blocked depthwise layers (the vectors read where they lie),
      max pooling (its output blocked too), global average pooling, and a residual, which a
      producer reads in its own output's layout: a fused residual is blocked exactly when the
      output it is added to is;
    - K a multiple of 16; the value no graph output, nobody's view, every reader in the
      segment. A 1x1 layer that would run with pixels in the vector lanes reads a depthwise
      layer's output blocked only up to `BLOCKED_PROJECTION_MAX_K` output channels.

    In NCHW a 1x1 layer's tile reads each channel from another plane, C streams no hardware
    prefetcher follows; blocked, a pixel's 16 channels are one line (the layout ONNX Runtime
    keeps between its layers). Each value is computed by the same code as before, in the same
    order, so the bits do not change."""
    in_seg = set(seg.nodes)
    users: dict[int, list[tuple[int, int]]] = {}
    for k, n in enumerate(g.nodes):
        for pos, j in enumerate(n.inputs):
            users.setdefault(j, []).append((k, pos))
    viewed = {root[v] for v in range(len(g.nodes)) if root[v] != v}

    def conv(i):
        return i in in_seg and g.nodes[i].kind == "conv" and not _bilinear_op(st, i)

    def pointwise(i):  # a 1x1 layer on the microkernel's dense rows
        spec = st.plans[i].spec
        if direct.depthwise(spec) or (spec.R, spec.S) != (1, 1) or spec.groups != 1:
            return False
        return (spec.stride == (1, 1) and i not in pads) or (i in pads and _subsampled(spec))

    def phased(i):  # stores its tiles' pixel vectors too (`_store_virtual_blocked`)
        return i in pads and _phased(st.plans[i].spec)

    def blocked_dw(i):
        return g.nodes[i].kind == "conv" and direct.blocked_depthwise(st.plans[i].spec)

    def kxk(i):  # a dense k x k layer with a copy of its input: tapped tiles when it is blocked
        if not conv(i):
            return False
        spec = st.plans[i].spec
        return (not direct.depthwise(spec) and spec.groups == 1 and (spec.R, spec.S) != (1, 1)
                and i in pads and (spec.stride != (1, 1)
                                   or spec.OH * spec.OW >= TAPPED_MIN_PIXELS))

    def maxpool(i):  # pixel vectors in, pixel vectors out (`_kernels.maxpool_blocked_tasks`)
        return i in in_seg and g.nodes[i].kind == "maxpool"

    def producer(i):
        a = g.nodes[i].attrs
        if maxpool(i):
            return (st.shapes[i][1] % 16 == 0 and i not in g.outputs and i not in viewed
                    and root[i] == i)
        if (not conv(i) or st.plans[i].spec.K % 16 or ACTS[a["act"]] > 2 or i in g.outputs
                or i in viewed or root[i] != i):
            return False
        return pointwise(i) or kxk(i) or (not a["residual"] and blocked_dw(i))

    def virtual_store(i):  # a stem on NCHW stride-phase planes storing pixel vectors
        return phased(i) and not g.nodes[i].attrs["residual"]

    def reader(u, pos, i):
        if (g.nodes[u].kind == "adaptive_avg" and u in in_seg and pos == 0
                and tuple(st.shapes[u][2:]) == (1, 1)):
            return True  # global average pooling (`_kernels.global_avg_blocked_tasks`)
        if maxpool(u):
            return pos == 0  # its output blocked too (below)
        if not conv(u) or pos > 1:
            return False
        if pos == 1:  # a residual: see the coupling below
            return pointwise(u)
        if blocked_dw(u):
            return not blocked_dw(i)
        if kxk(u):
            return True  # its output blocked too (below)
        return pointwise(u) and (not blocked_dw(i) or _blocked_projection(st.plans[u].spec))

    blocked = {i for i in seg.nodes
               if producer(i) and all(reader(u, pos, i) for u, pos in users.get(i, []))}
    # a fused residual and the output it is added to: both blocked or neither; a k x k layer
    # reads a blocked input on the tapped tiles, which store blocked (a stem on NCHW phase
    # planes may store blocked without a residual)
    changed = True
    while changed:
        changed = False
        for i in sorted(blocked):
            n = g.nodes[i]
            res = n.inputs[1] if n.kind == "conv" and n.attrs["residual"] else None
            if ((res is not None and res not in blocked)
                    or (kxk(i) and n.inputs[0] not in blocked and not virtual_store(i))
                    or (maxpool(i) and n.inputs[0] not in blocked)
                    or any((pos == 1 or kxk(u) or maxpool(u)) and u not in blocked
                           for u, pos in users.get(i, []))):
                blocked.discard(i)
                changed = True
    flags: dict[int, int] = {}
    for i in blocked:
        flags[i] = flags.get(i, 0) | 1
        for u, pos in users.get(i, []):
            if pos == 0:
                flags[u] = flags.get(u, 0) | 2
    return flags


def _program(m: CompiledModel, st: _State, seg: _Segment, root, off, pads) -> None:
    """The executor's rows for a segment's convolutions, their weights packed once."""
    from ..kernels import microkernel as mk

    g = m.graph
    prog, fprm = _X.new_program(len(seg.nodes))
    wb: list[np.ndarray] = []
    ib: list[np.ndarray] = []
    wlen = [0]
    ilen = [0]

    def put(a, blob, length):
        # each array starts on a 64-byte boundary (misaligned filter vectors split cache lines)
        a = np.ascontiguousarray(a).reshape(-1)
        o = length[0]
        blob.append(a)
        pad = -a.size % 16
        if pad:
            blob.append(np.zeros(pad, dtype=a.dtype))
        length[0] += a.size + pad
        return o

    blocked = _blocked_pairs(g, st, seg, root, pads)
    for r, i in enumerate(seg.nodes):
        n = g.nodes[i]
        a = n.attrs
        if n.kind != "conv":
            _op_row(n, st, prog[r], off[root[n.inputs[0]]], off[i], put, wb, wlen)
            continue
        spec = st.plans[i].spec
        row = prog[r]
        row[_X.F_N], row[_X.F_C], row[_X.F_K] = spec.N, spec.C, spec.K
        row[_X.F_OH], row[_X.F_OW], row[_X.F_G] = spec.OH, spec.OW, spec.groups
        row[_X.F_R], row[_X.F_S] = spec.R, spec.S
        row[_X.F_X] = off[root[n.inputs[0]]]
        row[_X.F_XIMG] = spec.C * spec.H * spec.W
        row[_X.F_Y] = off[i]
        row[_X.F_YIMG] = spec.K * spec.OH * spec.OW
        row[_X.F_BIAS] = put(a["b"], wb, wlen) if a["b"] is not None else -1
        row[_X.F_RES] = off[root[n.inputs[1]]] if a["residual"] else -1
        row[_X.F_ACT] = ACTS[a["act"]]
        fprm[r] = (a["lo"], a["hi"])
        w = a["w"]
        seg.nmax = max(seg.nmax, spec.N)
        if _bilinear_op(st, i):
            _bilinear_row(st.plans[i], row, pads[i], seg.P, put, wb, wlen, ib, ilen,
                          1 if i in st.image_major else spec.N)
        elif not direct.depthwise(spec):
            row[_X.F_KIND] = _X.OP_TILES
            row[_X.F_H], row[_X.F_W] = spec.padded_H, spec.padded_W
            wpk = mk.pack_filter(spec, w, "rs")
            row[_X.F_WOFF] = put(wpk, wb, wlen)
            sp = mk.split(spec, spec.OH * spec.OW, _bytes_per_pixel(spec, i in pads),
                          wpk.shape[1], seg.P)
            row[_X.F_A], row[_X.F_B] = sp.nkbr, sp.nchunk
            row[_X.F_SH], row[_X.F_SW] = spec.stride
            row[_X.F_DH], row[_X.F_DW] = spec.dilation
            if _pixel_vectors(spec, i in pads):
                row[_X.F_PV] = _pv_chunks(spec, wpk.shape[1], seg.P)
            if blocked.get(i, 0) & 2 and (spec.R, spec.S) != (1, 1):
                # tapped tiles on the blocked input's zero-bordered copy (its rows of pixel
                # vectors copied in phase 1): each tap's offset in the copy from a table
                pl, _, pt, _ = spec.padding
                hp, wp = spec.padded_H, spec.padded_W
                row[_X.F_H], row[_X.F_W] = hp, wp
                row[_X.F_C2], row[_X.F_D], row[_X.F_E], row[_X.F_F] = 4, pt, pl, pads[i]
                row[_X.F_G2] = spec.H * 65536 + spec.W
                dh, dw = spec.dilation
                taps = [16 * (r_ * dh * wp + s_ * dw) for r_ in range(spec.R)
                        for s_ in range(spec.S)]
                row[_X.F_TAB] = put(np.array(taps, dtype=np.int64), ib, ilen)
            elif i in pads and _phased(spec):
                hq, wq = direct.phases(spec)
                sh, sw = spec.stride
                pl, _, pt, _ = spec.padding
                row[_X.F_H], row[_X.F_W] = sh * sw * hq, wq
                row[_X.F_C2], row[_X.F_D], row[_X.F_E], row[_X.F_F] = 3, pt, pl, pads[i]
                row[_X.F_G2] = spec.H * 65536 + spec.W
                # each tap's offset in the phase planes: the first channel's of `tap_offsets`
                row[_X.F_TAB] = put(direct.tap_offsets(spec)[: spec.R * spec.S], ib, ilen)
            elif i in pads and _subsampled(spec):
                # phase 1 copies every sh-th row, sw-th column into OH x OW planes at pads[i]
                row[_X.F_H], row[_X.F_W] = spec.OH, spec.OW
                row[_X.F_SH], row[_X.F_SW] = 1, 1
                row[_X.F_C2], row[_X.F_D], row[_X.F_E], row[_X.F_F] = 2, spec.stride[0], \
                    spec.stride[1], pads[i]
                row[_X.F_G2] = spec.H * 65536 + spec.W
            elif i in pads:
                pl, _, pt, _ = spec.padding
                row[_X.F_C2], row[_X.F_D], row[_X.F_E], row[_X.F_F] = 1, pt, pl, pads[i]
                row[_X.F_G2] = spec.H * 65536 + spec.W
        elif direct.blocked_depthwise(spec):
            row[_X.F_KIND] = _X.OP_DWB
            row[_X.F_H], row[_X.F_W] = spec.H, spec.W
            row[_X.F_WOFF] = put(direct.pack_depthwise(spec, w), wb, wlen)
            pl, _, pt, _ = spec.padding
            row[_X.F_C2], row[_X.F_D] = pt, pl
            row[_X.F_SH], row[_X.F_SW] = spec.stride
            row[_X.F_DH], row[_X.F_DW] = spec.dilation
        else:
            row[_X.F_KIND] = _X.OP_DW
            row[_X.F_H], row[_X.F_W] = spec.H, spec.W
            row[_X.F_WOFF] = put(w, wb, wlen)
            hq, wq = direct.phases(spec)
            pl, _, pt, _ = spec.padding
            row[_X.F_A], row[_X.F_B] = spec.stride
            row[_X.F_C2], row[_X.F_D], row[_X.F_E], row[_X.F_F] = pt, pl, hq, wq
            row[_X.F_G2] = put(direct.tap_offsets(spec), ib, ilen)
    rows = {i: r for r, i in enumerate(seg.nodes)}
    for i, bits in blocked.items():
        prog[rows[i], _X.F_BLK] = bits
        prog[rows[i], _X.F_PV] = 0  # 1x1 layers on the microkernel: 16-channel pixel vectors
    for i in seg.nodes:  # microkernel tiles that prefetch their output lines
        r = prog[rows[i]]
        if (r[_X.F_KIND] == _X.OP_TILES and r[_X.F_PV] == 0
                and not (r[_X.F_BLK] & 1 and r[_X.F_C2] == 3)  # virtual blocked: none
                and r[_X.F_K] * r[_X.F_OH] * r[_X.F_OW] * 4 >= OUTPUT_PREFETCH_BYTES
                and r[_X.F_C] // r[_X.F_G] * r[_X.F_R] * r[_X.F_S] >= OUTPUT_PREFETCH_MIN_STEPS):
            r[_X.F_BLK] |= 4
    per_image = {}  # the image strides of an image-major row's input, output and residual
    one = {}  # a lane's row fields: its work split for one thread
    for i in seg.nodes:
        if i in st.image_major:
            n = g.nodes[i]
            res = n.attrs.get("residual") and root[n.inputs[1]] not in st.run_internal
            per_image[i] = (root[n.inputs[0]] not in st.run_internal, i not in st.run_internal,
                            res)
            if st.lanes > 1:
                one[i] = _one_thread_fields(st, i, prog[rows[i]], pads)
    prog, fprm, seg.row_nodes = _image_major_rows(prog, fprm, seg.nodes, per_image, st.lanes,
                                                  st.lane_span, one)
    seg.prog, seg.fprm = prog, fprm
    seg.wb = _aligned(np.concatenate(wb).astype(np.float32)) if wb else np.zeros(16, np.float32)
    seg.ib = np.concatenate(ib).astype(np.int64) if ib else np.zeros(1, np.int64)
    # the counters per operator, and two more: the threads' places in the run and the threads
    # that have left it (`_X.worker`)
    seg.cs = _X.counters_per_row(seg.nmax, seg.P)
    seg.ctr = np.zeros(len(seg.prog) * seg.cs + 2, dtype=np.int64)
    seg.scratch = _X.scratch_elements(prog)


#: microkernel layers whose output planes take at least this many bytes per image prefetch
#: each tile's output lines before its reduction (`_X.F_BLK` bit 4): every one. Xeon, two
#: compiled copies taking turns in one process, 2 threads, with / without: ResNet-50 0.974x
#: (batch 1), 0.987x (batch 8); EfficientNet-Lite0 0.996x / 0.995x, MobileNetV2 0.991x (batch
#: 1); a ResNet-like 256 -> 1024 1x1 at 14x14 writing a batch's output to memory 7.4 -> 5.7 ms
OUTPUT_PREFETCH_BYTES = 0
#: ... and whose reduction has at least this many steps (C / groups x R x S): a 16-step
#: reduction (EfficientNet-Lite0's 16 -> 96 at 112x112) is too short for the prefetch to arrive
#: before the stores and only adds instructions. Xeon, two copies taking turns, 2 threads, 64
#: against 0: EfficientNet-Lite0 1.000x (batch 1), 0.992x (batch 8); MobileNetV2 0.987x (batch
#: 1); 128 against 64: 1.007x, 0.992x, 0.995x (batch 8): within the noise
OUTPUT_PREFETCH_MIN_STEPS = 64


#: tile rows per thread from which a bilinear operator hands out whole chunks of tiles (a
#: multiple of the threads); with fewer, every thread runs every chunk for its share of the
#: k-blocks (its input transform done by each) ...
BILINEAR_DEAL_ROWS = 4
#: ... unless there are at least this many tiles per output channel: dealt out, each thread
#: reads the whole transformed filter (P C K floats), split by k-blocks each repeats the input
#: transform (P C floats per tile). ResNet-50 batch 1, 2 threads, each layer inside the run:
#: SFC-4 128@28 (49 tiles, K 128) 0.61-0.74 ms dealt from single tile rows against 0.70-0.85
#: split by k-blocks; F(2x2,3x3) 512@7 (16 tiles, K 512) 1.10-1.16 dealt against 0.77-0.83;
#: 256@14 (49 tiles, K 256) within 3%
BILINEAR_DEAL_TILES_PER_K = 0.25


def _bilinear_split(N: int, TH: int, TW: int, nkb: int, P: int, K: int) -> tuple[int, int]:
    """(tile rows per chunk, shares of the k-blocks) of a bilinear operator on ``N`` images
    and ``P`` threads, ``K`` output channels."""
    rows = N * TH
    cr = max(1, min(rows, bilinear.CHUNK_TILES // TW))
    if rows >= BILINEAR_DEAL_ROWS * P or (rows >= P and rows * TW >= BILINEAR_DEAL_TILES_PER_K * K):
        nch0 = -(-rows // cr)
        nch = -(-nch0 // P) * P
        return -(-rows // nch), 1
    return cr, min(P, nkb)


def _bilinear_row(p, row: np.ndarray, nhwc: int, P: int, put, wb, wlen, ib, ilen, N: int) -> None:
    """The executor's row of a layer planned for a bilinear algorithm (`_X.OP_BIL`), its work
    split for ``N`` images at a time (one in an image-major run)."""
    spec, prep = p.spec, p._prepared
    wt = prep.wt[0]  # (points, k-blocks, C, KB)
    m = prep.eng.m
    TH, TW = bilinear.tiles(spec, m)
    pl, _, pt, _ = spec.padding
    row[_X.F_KIND] = _X.OP_BIL
    row[_X.F_H], row[_X.F_W] = spec.H, spec.W
    row[_X.F_WOFF] = put(wt, wb, wlen)
    row[_X.F_A], row[_X.F_B], row[_X.F_C2], row[_X.F_D], row[_X.F_E] = m, TH, TW, pt, pl
    row[_X.F_F] = nhwc
    row[_X.F_G2], row[_X.F_SH] = _bilinear_split(N, TH, TW, wt.shape[1], P, spec.K)
    row[_X.F_DH], row[_X.F_DW] = wt.shape[0], wt.shape[3]
    c = prep.consts
    (ip, ii, iv), (op, oi, ov) = c.s_in, c.s_out
    head = np.array([c.B1.shape[0], c.B1.shape[1], c.A1.shape[1], ip.size, ii.size, op.size,
                     oi.size, 0], np.int64)
    row[_X.F_TAB] = put(np.concatenate([head, ip, ii, op, oi]).astype(np.int64), ib, ilen)
    row[_X.F_SW] = put(np.concatenate([c.B1.ravel(), c.A1.ravel(), iv, ov]).astype(np.float32),
                       wb, wlen)


def _op_row(n: Node, st: _State, row: np.ndarray, x_off: int, y_off: int, put, wb, wlen) -> None:
    """The executor's row of a pooling or linear operator (`_executor_op`)."""
    a = n.attrs
    xs = st.shapes[n.inputs[0]]
    row[_X.F_X], row[_X.F_Y] = x_off, y_off
    if n.kind == "linear":
        row[_X.F_KIND] = _X.OP_LINEAR
        if "wp" not in a:
            a["wp"] = K.pack_linear(a["w"])
        row[_X.F_N], row[_X.F_C], row[_X.F_K] = xs[0], xs[1], a["w"].shape[0]
        row[_X.F_WOFF] = put(a["wp"], wb, wlen)
        row[_X.F_A] = a["wp"].shape[0]
        row[_X.F_BIAS] = put(a["b"].astype(np.float32), wb, wlen) if a["b"] is not None else -1
        return
    N, C, H, W = xs
    row[_X.F_N], row[_X.F_C], row[_X.F_H], row[_X.F_W] = N, C, H, W
    row[_X.F_K] = C
    row[_X.F_XIMG] = C * H * W
    row[_X.F_BIAS] = row[_X.F_RES] = -1
    if n.kind == "maxpool":
        row[_X.F_KIND] = _X.OP_MAXPOOL
        row[_X.F_R], row[_X.F_S] = a["k"]
        row[_X.F_SH], row[_X.F_SW] = a["stride"]
        row[_X.F_A], row[_X.F_B] = a["padding"]
        row[_X.F_DH], row[_X.F_DW] = a["dilation"]
        row[_X.F_OH] = pool_out(H, a["k"][0], a["stride"][0], a["padding"][0], a["dilation"][0], a["ceil"])
        row[_X.F_OW] = pool_out(W, a["k"][1], a["stride"][1], a["padding"][1], a["dilation"][1], a["ceil"])
    else:
        row[_X.F_KIND] = _X.OP_ADAPTIVE
        row[_X.F_OH], row[_X.F_OW] = a["size"]
    row[_X.F_YIMG] = C * row[_X.F_OH] * row[_X.F_OW]
