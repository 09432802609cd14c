"""The runtime's executor (convolab.runtime._executor) gives direct's bits.

Every convolution the executor runs (the microkernel for dense and grouped layers of any
stride and dilation, the depthwise kernel) must equal ``convolab.conv2d(..., algorithm="direct")``
followed by the same output stage, bit for bit, and not depend on the thread count.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import convolab  # noqa: E402
from convolab.runtime import compile  # noqa: E402
from convolab.runtime import model as M  # noqa: E402
from convolab.runtime import program as P  # noqa: E402

LAYERS = [
    # C, K, kernel, stride, padding, dilation, groups, H, W
    (3, 32, 3, 2, 1, 1, 1, 17, 19),  # a stem
    (16, 24, 1, 1, 0, 1, 1, 9, 7),  # pointwise, fewer channels than a lane block
    (8, 40, 3, 1, 1, 1, 1, 12, 12),
    (12, 36, 5, 1, 2, 2, 1, 13, 11),  # dilated
    (16, 32, 3, 2, 0, 1, 2, 15, 15),  # grouped, strided, no padding
    (20, 20, 3, 1, 1, 1, 20, 10, 13),  # depthwise 3x3
    (24, 48, 5, 2, 2, 1, 24, 14, 9),  # depthwise, channel multiplier 2, strided 5x5
    (16, 16, 7, 1, 3, 1, 16, 7, 7),  # depthwise 7x7 on a 7x7 plane
    (40, 40, 3, 2, 1, 1, 40, 15, 14),  # depthwise, strided, a full and a partial lane block
    (33, 33, 3, 1, 2, 2, 33, 9, 11),  # depthwise, dilated
    (16, 16, 3, 1, 1, 1, 16, 113, 113),  # depthwise on a plane too large for lane blocks
    (64, 32, 1, 2, 0, 1, 1, 14, 14),  # strided 1x1 (a downsampling shortcut)
    (8, 16, 5, 3, 2, 1, 1, 19, 17),  # stride 3 on stride-phase planes
    (16, 24, 3, 2, 2, 2, 1, 17, 16),  # strided and dilated
    # pointwise with pixels in the lanes (>= PV_MIN_PIXELS outputs): a partial tile of
    # channels, pixels not a multiple of a tile's
    (16, 20, 1, 1, 0, 1, 1, 30, 30),
    (24, 40, 1, 2, 0, 1, 1, 57, 58),  # the same on subsampled planes
]


def _conv(C, K, k, s, p, d, g):
    torch.manual_seed(C * 100 + K)
    c = nn.Conv2d(C, K, k, s, p, d, g, bias=True)
    with torch.no_grad():
        c.bias.normal_()
    return c


@pytest.mark.parametrize("layer", LAYERS, ids=lambda v: "x".join(map(str, v)))
@pytest.mark.parametrize("batch", [1, 3])
def test_executor_gives_direct_bits(layer, batch):
    C, K, k, s, p, d, g, H, W = layer
    conv = _conv(C, K, k, s, p, d, g).eval()
    net = nn.Sequential(conv, nn.ReLU6()).eval()
    x = torch.randn(batch, C, H, W)
    cm = compile(net, x, algorithm="direct", threads=2)
    y = cm(x).numpy()
    y = cm(x).numpy()  # the second call runs the executor
    st = cm._states[tuple(x.shape)]
    assert any(isinstance(seg, M._Segment) for seg in st.segments), "the layer did not run in the executor"
    ref = convolab.conv2d(x.numpy(), conv.weight.detach().numpy(), stride=s, padding=p, dilation=d,
                          groups=g, algorithm="direct")
    ref = np.minimum(np.maximum(ref + conv.bias.detach().numpy()[None, :, None, None], 0), 6)
    assert np.array_equal(y, ref)
    one = compile(net, x, algorithm="direct", threads=1)
    one(x)
    assert np.array_equal(one(x).numpy(), y)


def test_residual_and_activation_in_the_executor():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(8, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1, groups=8)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return torch.nn.functional.silu(self.b(y) + y)

    net = Block().eval()
    x = torch.randn(2, 8, 11, 11)
    cm = compile(net, x, algorithm="direct")
    cm(x)
    with torch.no_grad():
        ref = net.double()(x.double()).numpy()
    y = cm(x).numpy()
    assert cm.graph.folded.get("residual") == 1
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
    st = cm._states[tuple(x.shape)]
    segs = [seg for seg in st.segments if isinstance(seg, M._Segment)]
    assert len(segs) == 1 and len(segs[0].nodes) == 2


def test_output_prefetch_keeps_the_bits(monkeypatch):
    """Tiles that prefetch their output lines (`program.OUTPUT_PREFETCH_BYTES`, the row's
    F_BLK bit 4): plain and strided (tap-table) layers, with a residual and bias + ReLU, the
    same bits as without."""
    from convolab.runtime import _executor as X

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(8, 40, 3, padding=1)
            self.b = nn.Conv2d(40, 40, 1)
            self.c = nn.Conv2d(40, 24, 3, stride=2, padding=1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            y = torch.relu(self.b(y) + y)
            return self.c(y)

    net = Net().eval()
    x = torch.randn(2, 8, 13, 15)
    outs, bits = [], []
    monkeypatch.setattr(P, "IMAGE_MAJOR_BYTES", 1 << 60)  # one row per layer
    monkeypatch.setattr(P, "OUTPUT_PREFETCH_MIN_STEPS", 0)  # the 1x1 layer's 40 steps too
    for limit in (1 << 40, 0):
        monkeypatch.setattr(P, "OUTPUT_PREFETCH_BYTES", limit)
        cm = compile(net, x, algorithm="deterministic", threads=1)
        outs.append(cm(x).numpy())
        (seg,) = [s for s in cm._states[tuple(x.shape)].segments if isinstance(s, M._Segment)]
        bits.append([int(b) & 4 for b, k in zip(seg.prog[:, X.F_BLK], seg.prog[:, X.F_KIND],
                                                strict=True) if k == X.OP_TILES])
    assert bits[0] == [0, 0, 0] and bits[1] == [4, 4, 4]
    assert np.array_equal(outs[0], outs[1])
    monkeypatch.setattr(P, "OUTPUT_PREFETCH_MIN_STEPS", 64)  # reductions of 72, 40, 360 steps
    cm = compile(net, x, algorithm="deterministic", threads=1)
    (seg,) = [s for s in cm._states[tuple(x.shape)].segments if isinstance(s, M._Segment)]
    assert [int(b) & 4 for b, k in zip(seg.prog[:, X.F_BLK], seg.prog[:, X.F_KIND], strict=True)
            if k == X.OP_TILES] == [4, 0, 4]


def test_team_threads_are_reused_and_exact():
    net = nn.Sequential(nn.Conv2d(4, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=32))
    net.eval()
    x = torch.randn(1, 4, 16, 16)
    cm = compile(net, x, threads=2, algorithm="direct")
    outs = [cm(x).numpy() for _ in range(5)]
    assert all(np.array_equal(o, outs[0]) for o in outs)
    team = cm._team()
    assert len(team._threads) == 1 and team._threads[0].is_alive()


def test_a_forked_child_runs_the_compiled_model():
    """A child forked after the team started (multiprocessing, data-loader workers) inherits the
    team but not its threads; it must start its own instead of waiting for them forever."""
    import os
    import time

    net = nn.Sequential(nn.Conv2d(4, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 1)).eval()
    x = torch.randn(1, 4, 12, 12)
    cm = compile(net, x, threads=2, algorithm="direct")
    want = cm(x).numpy()
    assert cm._team()._threads  # the parent's team is running
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            ok = np.array_equal(cm(x).numpy(), want)
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.read(r, 1) == b"1"
    os.close(r)


def test_small_depthwise_planes_run_channel_blocked():
    # one output per channel and at most DW_BLOCK_MAX_PIXELS outputs per plane: OP_DWB
    net = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.ReLU(),
                        nn.Conv2d(24, 24, 3, padding=1, groups=24)).eval()
    kinds = {}
    for side in (14, 113):
        x = torch.randn(1, 24, side, side)
        cm = compile(net, x, algorithm="direct", threads=2)
        cm(x)
        st = cm._states[tuple(x.shape)]
        kinds[side] = {int(k) for seg in st.segments if isinstance(seg, M._Segment)
                       for k in seg.prog[:, 0]}
    assert kinds == {14: {M._X.OP_DWB}, 113: {M._X.OP_DW}}


def test_calls_hold_only_the_thread_pools_they_can_reach(monkeypatch):
    # a call whose convolutions all run in the executor never reaches the BLAS: it is not held
    # to one thread (threadpoolctl's limit cost 0.1 ms a call); one run by im2col is
    import convolab._parallel as par

    net = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1)).eval()
    x = torch.randn(1, 8, 12, 12)
    held, entered = [], []
    real = par.blas_one_thread
    monkeypatch.setattr(par, "blas_one_thread", lambda: held.append(1) or real())
    enter = M._Threads.__enter__
    monkeypatch.setattr(M._Threads, "__enter__", lambda self: entered.append(1) or enter(self))
    for algorithm, blas in (("direct", False), ("im2col", True)):
        cm = compile(net, x, algorithm=algorithm, threads=2)
        cm(x)  # plans, records, builds
        held.clear()
        entered.clear()
        cm(x)
        st = cm._states[tuple(x.shape)]
        assert (st.uses_blas, st.uses_torch) == (blas, False)
        assert bool(held) == blas
        # all in the executor: Numba's, the BLAS's and PyTorch's pools are not touched at all
        assert st.outside == blas and bool(entered) == blas


def test_pointwise_layers_run_with_pixels_in_the_lanes():
    """1x1 layers from PV_MIN_PIXELS outputs run on the pixel-vector kernel, with a fused
    residual and ReLU, and with a stage that is not fused (SiLU): the same results on one
    and two threads, within float32 rounding of float64."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(12, 36, 1)
            self.b = nn.Conv2d(36, 12, 1)
            self.c = nn.Conv2d(12, 20, 1, stride=2)

        def forward(self, x):
            y = torch.relu(self.b(torch.relu(self.a(x))) + x)
            return torch.nn.functional.silu(self.c(y))

    net = Block().eval()
    x = torch.randn(2, 12, 61, 59)
    outs = []
    for threads in (1, 2):
        cm = compile(net, x, algorithm="direct", threads=threads)
        cm(x)
        outs.append(cm(x).numpy())
        st = cm._states[tuple(x.shape)]
        (seg,) = [s for s in st.segments if isinstance(s, M._Segment)]
        assert len(seg.nodes) == 3 and all(seg.prog[:, M._X.F_PV] > 0)
    assert np.array_equal(outs[0], outs[1])
    with torch.no_grad():
        ref = net.double()(x.double()).numpy()
    assert np.abs(outs[0] - ref).max() <= 1e-5 * np.abs(ref).max()


def _image_and_layer_runs(monkeypatch, net, x, image_bytes, outs):
    """``net`` compiled with image-major runs from ``image_bytes`` ("image"; on two threads
    in lanes, each thread whole images, and "shared", every image's layers shared by the
    threads) and without them ("layer"), on one and two threads: yields (name, model, state)
    after a second call, whose output goes to ``outs[name, threads]``."""
    from convolab.runtime import _executor as X

    for name, limit in (("image", image_bytes), ("shared", image_bytes), ("layer", 1 << 60)):
        monkeypatch.setattr(P, "IMAGE_MAJOR_BYTES", limit)
        monkeypatch.setattr(P, "LANES", name != "shared")
        for threads in (1, 2):
            cm = compile(net, x, algorithm="direct", threads=threads)
            cm(x)
            outs[name, threads] = cm(x).numpy()
            st = cm._states[tuple(x.shape)]
            lanes = [int(r) for s_ in st.segments if isinstance(s_, M._Segment)
                     for r in s_.prog[:, X.F_LANE]]
            if name == "image" and threads == 2:
                # the first two of three images in lanes, the third shared
                assert st.lanes == 2 and st.lane_span > 0
                n = len(st.image_major)
                assert sum(v > 0 for v in lanes) == 2 * n
                assert {v for v in lanes if v} == {(n << 32) + (2 << 16) + 2}
            else:
                assert st.lanes == 1 and not any(lanes)
            yield ("image" if name == "shared" else name), cm, st


def test_image_major_run_gives_the_batch_bits(monkeypatch):
    """A batch's first layers with large activations run image by image (all of them for
    image 0, then image 1...): the same bits as layer by layer and as one image at a time,
    on one and two threads; the values the run reads keep their buffers to its end, those
    only its own layers read have one image's space."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(16, 16, 3, padding=1)
            self.b = nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.c = nn.Conv2d(16, 24, 1)
            self.d = nn.Conv2d(24, 24, 3, stride=2, padding=1)
            self.e = nn.Conv2d(24, 8, 1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            y = torch.nn.functional.relu6(self.b(y) + y)
            return self.e(torch.relu(self.d(torch.nn.functional.silu(self.c(y)))))

    net = Net().eval()
    x = torch.randn(3, 16, 130, 126)
    outs = {}
    for name, _, st in _image_and_layer_runs(monkeypatch, net, x, P.IMAGE_MAJOR_BYTES, outs):
        (seg,) = [s for s in st.segments if isinstance(s, M._Segment)]
        if name == "image":
            assert len(st.image_major) >= 3 and len(seg.prog) > len(seg.nodes)
            assert len(seg.row_nodes) == len(seg.prog)
            # values only the run reads take one image's space, reused image after image
            assert st.run_internal and st.run_internal < st.image_major
            assert all(st.buffers[i].shape[0] == 1 for i in st.run_internal)
        else:
            assert not st.image_major and len(seg.prog) == len(seg.nodes)
    first = outs["layer", 1]
    assert all(np.array_equal(first, o) for o in outs.values())
    one = compile(net, x[:1], algorithm="direct", threads=2)
    for i in range(3):
        assert np.array_equal(one(x[i:i + 1]).numpy(), first[i:i + 1])


def test_lanes_planned_for_more_threads_than_the_team_runs(monkeypatch):
    """A model compiled for more threads than the team may have (3; a 2-core machine's team
    has 2) plans three lanes; the threads that run take whole lanes (each lane's buffers on
    one thread), and the bits are one thread's."""
    from convolab.runtime import _executor as X

    monkeypatch.setattr(P, "IMAGE_MAJOR_BYTES", 0)
    torch.manual_seed(3)
    net = _inverted_residual(stride=1)
    x = torch.randn(6, 16, 20, 20)  # two rounds of three lanes
    want = compile(net, x, algorithm="direct", threads=1)(x).numpy()
    cm = compile(net, x, algorithm="direct", threads=3)
    cm(x)
    st = cm._states[tuple(x.shape)]
    (seg,) = [s for s in st.segments if isinstance(s, M._Segment)]
    assert st.lanes == 3
    assert {int(v) & 0xFFFFFFFF for v in seg.prog[:, X.F_LANE] if v} == {(3 << 16) + 6}
    for _ in range(3):
        assert np.array_equal(cm(x).numpy(), want)


def test_image_major_run_takes_a_stem_and_its_pooling(monkeypatch):
    """A stem, its max pooling and the residual block after it run image by image together
    (the stem's output, read only by the pooling, has one image's space): the same bits as
    layer by layer, on one and two threads."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 7, stride=2, padding=3)
            self.pool = nn.MaxPool2d(3, stride=2, padding=1)
            self.a = nn.Conv2d(16, 16, 3, padding=1)
            self.b = nn.Conv2d(16, 32, 1)
            self.c = nn.Conv2d(32, 8, 1)

        def forward(self, x):
            y = self.pool(torch.relu(self.stem(x)))
            return self.c(torch.relu(self.b(torch.relu(self.a(y) + y))))

    net = Net().eval()
    x = torch.randn(3, 3, 132, 124)
    outs = {}
    for name, cm, st in _image_and_layer_runs(monkeypatch, net, x, 1 << 14, outs):
        kinds = {cm.graph.nodes[i].kind for i in st.image_major}
        if name == "image":
            assert kinds == {"conv", "maxpool"} and len(st.image_major) >= 4
            stem = min(st.image_major)
            assert stem in st.run_internal and st.buffers[stem].shape[0] == 1
        else:
            assert not st.image_major
    first = outs["layer", 1]
    assert all(np.array_equal(first, o) for o in outs.values())
    with torch.no_grad():
        ref = net.double()(x.double()).numpy()
    assert np.abs(first - ref).max() <= 1e-5 * np.abs(ref).max()


def test_worker_clock_stamps_each_operator():
    """With a ``stamps`` array the executor's worker records the monotonic clock before the
    first operator and after each operator's barrier (tools/executor_profile.py's in-run
    times); the outputs are the same as an untimed run's."""
    from convolab.kernels import _atomics
    from convolab.runtime import _executor as X

    net = nn.Sequential(nn.Conv2d(4, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 1),
                        nn.Conv2d(32, 32, 3, padding=1, groups=32)).eval()
    x = torch.randn(1, 4, 20, 20)
    cm = compile(net, x, threads=2, algorithm="direct")
    want = cm(x).numpy()
    st = cm._states[tuple(x.shape)]
    (seg,) = [s for s in st.segments if isinstance(s, M._Segment)]
    stamps = np.zeros(len(seg.prog) + 1, np.int64)
    seg.ctr[:] = 0
    cm._team().run((seg.P, seg.prog, seg.fprm, st.arena, seg.wb, seg.ib, seg.ctr,
                    X.CS_BASE + seg.nmax, 32, stamps), seg.scratch)
    if _atomics._MONOTONIC is not None:
        assert stamps[0] > 0 and np.all(np.diff(stamps) >= 0)
    assert np.array_equal(st.buffers[seg.nodes[-1]].reshape(want.shape), want)


def _inverted_residual(c=16, e=32, k=3, stride=2, padding=1, dilation=1):
    return nn.Sequential(
        nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.ReLU6(),
        nn.Conv2d(e, e, k, stride=stride, padding=padding, dilation=dilation, groups=e,
                  bias=False), nn.BatchNorm2d(e), nn.ReLU6(),
        nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c)).eval()


@pytest.mark.parametrize("batch", [1, 3])
def test_expansion_feeds_depthwise_channel_blocked_with_the_same_bits(batch, monkeypatch):
    """A 1x1 expansion whose only consumer is a channel-blocked depthwise layer stores its
    output NCHW16c, the depthwise layer reads it so and hands its own output to the 1x1
    projection so (`_blocked_pairs`): the same bits as the NCHW path."""
    from convolab.runtime import _executor as X

    torch.manual_seed(0)
    net = _inverted_residual()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(batch, 16, 30, 30)
    cm = compile(net, x, threads=2, algorithm="direct")
    got = cm(x).numpy()
    st = cm._states[tuple(x.shape)]
    (seg,) = [s for s in st.segments if isinstance(s, M._Segment)]
    # expansion: output blocked (1); depthwise: input and output (2 | 1); projection (15x15
    # outputs: on the microkernel): input (2) -- per image in an image-major run
    bits = [int(b) & 3 for b in seg.prog[:, X.F_BLK]]
    assert bits in ([1, 3, 2], [1, 3, 2] * batch, [1] * batch + [3] * batch + [2] * batch)
    monkeypatch.setattr(P, "_blocked_pairs", lambda *a: {})
    plain = compile(net, x, threads=2, algorithm="direct")
    want = plain(x).numpy()
    st2 = plain._states[tuple(x.shape)]
    assert all(int((s.prog[:, X.F_BLK] & 3).max()) == 0 for s in st2.segments if isinstance(s, M._Segment))
    assert np.array_equal(got, want)
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_each_thread_starts_on_its_own_share_of_the_batch(monkeypatch):
    """Threads take a batch's tasks image by image, each starting on its own share
    (`_executor._image`): every image is visited once by every thread, and the result has the
    bits of one thread's whatever the batch's split (5 images on 2 threads; no image-major
    run)."""
    from convolab.runtime import _executor as X

    for P_ in (1, 2, 3):
        for me in range(P_):
            order = [X._image.py_func(k, 5, P_, me) for k in range(5)]
            assert sorted(order) == list(range(5))
            assert order[0] == me * 5 // P_
    monkeypatch.setattr(P, "IMAGE_MAJOR_BYTES", 1 << 40)
    torch.manual_seed(1)
    net = _inverted_residual(stride=1)
    x = torch.randn(5, 16, 14, 14)
    got = [compile(net, x, threads=t, algorithm="direct")(x).numpy() for t in (1, 2)]
    assert np.array_equal(got[0], got[1])
    np.testing.assert_allclose(got[1], net(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_one_image_is_shared_out_in_ranges_each_thread_its_own_first():
    """One image on P threads: a row's tasks in P consecutive ranges, each from a counter of
    its own, thread m taking the m-th first, then the others' (`_executor._share`): every
    task handed out once, whatever the thread count at run time; the bits of one thread's run
    through every kind of row (tiles, pixel vectors, blocked and plane-wise depthwise)."""
    from convolab.runtime import _executor as X

    for P_ in (1, 2, 3, 4):
        for ntask in (1, 2, 7, 64):
            for me in range(P_):
                shares = [X._share.py_func(k, 1, P_, me, ntask)
                          for k in range(X._shares.py_func(1, P_))]
                assert shares[0][1] == me and shares[0][2] == me * ntask // P_
                assert sorted(s for _, s, _, _ in shares) == list(range(P_))
                covered = sorted(t for _, _, t0, t1 in shares for t in range(t0, t1))
                assert covered == list(range(ntask))
    assert X.counters_per_row(1, 3) == X.CS_BASE + 3
    torch.manual_seed(3)
    for H in (14, 113):  # blocked depthwise; pixel-vector 1x1 and plane-wise depthwise
        net = _inverted_residual(stride=1)
        x = torch.randn(1, 16, H, H)
        got = [compile(net, x, threads=t, algorithm="direct")(x).numpy() for t in (1, 2, 3)]
        assert np.array_equal(got[0], got[1]) and np.array_equal(got[0], got[2])
        np.testing.assert_allclose(got[1], net(x).detach().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k, stride, padding, dilation, H, W", [
    (3, 1, 1, 1, 40, 37),  # rows of several blocks of 8: unchecked middle blocks
    (5, 1, 2, 1, 19, 26),
    (3, 2, 1, 1, 41, 40),
    (5, 2, 2, 1, 30, 33),
    (3, 2, 0, 1, 30, 30),  # the last input row and column read by no window
    (7, 1, 3, 1, 12, 20),  # no shape of its own: the general loop
    (3, 1, 2, 2, 16, 21),  # dilated
    (5, 1, 2, 1, 7, 7),  # every block a border block
])
def test_blocked_depthwise_reads_its_input_where_it_lies(k, stride, padding, dilation, H, W,
                                                         monkeypatch):
    """A channel-blocked depthwise layer reads its channel-blocked input in the arena itself,
    the padding as zeros of its own (`convolab.kernels._direct._dw_row`): the bits of the NCHW
    path, which copies padded rows first, for every geometry."""
    from convolab.runtime import _executor as X

    torch.manual_seed(k + H)
    net = _inverted_residual(k=k, stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(2, 16, H, W) * 3  # ReLU6 clamps some of the expansion's outputs
    cm = compile(net, x, threads=2, algorithm="direct")
    got = cm(x).numpy()
    st = cm._states[tuple(x.shape)]
    dw = [int(b) for s in st.segments if isinstance(s, M._Segment)
          for b, kind in zip(s.prog[:, X.F_BLK], s.prog[:, X.F_KIND], strict=True)
          if kind == X.OP_DWB]
    assert dw and all(b & 2 for b in dw)  # its input channel-blocked
    monkeypatch.setattr(P, "_blocked_pairs", lambda *a: {})
    want = compile(net, x, threads=2, algorithm="direct")(x).numpy()
    assert np.array_equal(got, want)
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-4, atol=1e-4)


class _Stem(nn.Module):
    """A strided 3x3 stem (TF-'same' padding by ``F.pad`` when ``same``) into a depthwise
    layer and a 1x1 projection."""

    def __init__(self, same: bool, k: int = 3):
        super().__init__()
        self.same = same
        self.stem = nn.Sequential(nn.Conv2d(3, 32, k, stride=2, padding=0 if same else k // 2),
                                  nn.BatchNorm2d(32), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU())
        self.pw = nn.Conv2d(32, 16, 1)

    def forward(self, x):
        if self.same:
            x = nn.functional.pad(x, (0, 1, 0, 1))
        return self.pw(self.dw(self.stem(x)))


@pytest.mark.parametrize("same, H, W, k", [(False, 32, 30, 3), (True, 17, 9, 3), (False, 11, 40, 5)])
def test_strided_stem_hands_its_output_to_depthwise_channel_blocked(same, H, W, k, monkeypatch):
    """A strided layer on stride-phase planes feeding a depthwise layer stores its tiles'
    pixel vectors channel-blocked (virtual rows: the phase width's extra columns dropped, tiles
    across row ends on narrow planes) and the depthwise layer reads them in place: the bits of
    the NCHW path."""
    from convolab.runtime import _executor as X

    torch.manual_seed(H + W)
    net = _Stem(same, k).eval()
    net.stem[1].running_mean.uniform_(-1, 1)
    x = torch.randn(2, 3, H, W)
    cm = compile(net, x, threads=2, algorithm="direct")
    got = cm(x).numpy()
    st = cm._states[tuple(x.shape)]
    (seg,) = [s for s in st.segments if isinstance(s, M._Segment)]
    rows = [(int(k_), int(c2), int(b) & 3) for k_, c2, b in
            zip(seg.prog[:, X.F_KIND], seg.prog[:, X.F_C2], seg.prog[:, X.F_BLK], strict=True)]
    assert (X.OP_TILES, 3, 1) in rows  # the stem on phase planes, its output blocked
    assert any(k_ == X.OP_DWB and b & 2 for k_, _, b in rows)
    monkeypatch.setattr(P, "_blocked_pairs", lambda *a: {})
    want = compile(net, x, threads=2, algorithm="direct")(x).numpy()
    assert np.array_equal(got, want)
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("K, batch, blocked", [(16, 1, True), (48, 1, True), (48, 2, True),
                                               (64, 2, False)])
def test_narrow_projection_reads_the_depthwise_output_channel_blocked(K, batch, blocked,
                                                                     monkeypatch):
    """A projection to few channels at a large plane (a pixel-vector layer) reads the
    depthwise layer's output channel-blocked on the microkernel up to
    `BLOCKED_PROJECTION_MAX_K` channels: the same bits either way."""
    from convolab.runtime import _executor as X

    torch.manual_seed(K)
    net = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU6(),
                        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU6(),
                        nn.Conv2d(32, K, 1)).eval()
    x = torch.randn(batch, 16, 30, 29)  # 870 pixels: at least PV_MIN_PIXELS
    assert 30 * 29 >= P.PV_MIN_PIXELS
    cm = compile(net, x, threads=2, algorithm="direct")
    got = cm(x).numpy()
    st = cm._states[tuple(x.shape)]
    (seg,) = [s for s in st.segments if isinstance(s, M._Segment)]
    last = [r for r, i in enumerate(seg.row_nodes) if i == seg.nodes[-1]]
    assert all(bool(seg.prog[r, X.F_BLK] & 2) == blocked for r in last)
    assert all((seg.prog[r, X.F_PV] > 0) != blocked for r in last)
    monkeypatch.setattr(P, "_blocked_pairs", lambda *a: {})
    want = compile(net, x, threads=2, algorithm="direct")(x).numpy()
    assert np.array_equal(got, want)


class _Bottlenecks(nn.Module):
    """ResNet-style bottlenecks at odd sizes: a 1x1 stem, an identity block, a downsampling
    block (3x3 stride 2, a 1x1 stride-2 shortcut) and a 1x1 head; K = 48 and 96 give
    k-blocks of 32 + 16 channels."""

    def __init__(self, act, pool=False, dilation=1):
        super().__init__()
        self.act, self.pool = act, pool
        self.stem = nn.Conv2d(8, 48, 1)
        self.r1, self.m1, self.e1 = (nn.Conv2d(48, 32, 1),
                                     nn.Conv2d(32, 32, 3, padding=dilation, dilation=dilation),
                                     nn.Conv2d(32, 48, 1))
        self.r2, self.m2, self.e2 = (nn.Conv2d(48, 32, 1), nn.Conv2d(32, 32, 3, 2, 1),
                                     nn.Conv2d(32, 96, 1))
        self.ds = nn.Conv2d(48, 96, 1, stride=2)
        self.head = nn.Conv2d(96, 32, 1)

    def forward(self, x):
        a = self.act
        x = a(self.stem(x))
        x = a(self.e1(a(self.m1(a(self.r1(x))))) + x)
        x = a(self.e2(a(self.m2(a(self.r2(x))))) + self.ds(x))
        x = self.head(x)
        return nn.functional.adaptive_avg_pool2d(x, 1).flatten(1) if self.pool else x


@pytest.mark.parametrize("act, batch, H, W, pool, dilation", [
    (torch.relu, 1, 15, 13, True, 1),
    (nn.ReLU6(), 3, 14, 9, False, 1),
    (lambda t: t, 2, 11, 16, True, 1),
    (torch.relu, 2, 7, 7, False, 1),  # rows of 7: tiles of two rows, an odd last one
    (torch.relu, 1, 13, 14, True, 1),
    (nn.ReLU6(), 1, 12, 17, False, 2),  # a dilated 3x3 on the tapped tiles
])
def test_bottleneck_values_stay_channel_blocked_with_the_same_bits(act, batch, H, W, pool,
                                                                   dilation, monkeypatch):
    """Between the layers the activations stay NCHW16c (`_blocked_pairs`): the stem and the
    expansions store their tiles' pixel vectors (the residual read and added in that layout),
    the 1x1 layers read them, the strided shortcut copies every other pixel vector into its
    compact copy, global average pooling sums the pixel vectors, the 3x3 layers (stride 1 and
    2) read a zero-bordered blocked copy on the tapped tiles. The same bits as the NCHW path,
    with image-major runs (batch > 1) and odd planes."""
    from convolab.runtime import _executor as X

    torch.manual_seed(H * W)
    net = _Bottlenecks(act, pool, dilation).eval()
    x = torch.randn(batch, 8, H, W)
    cm = compile(net, x, threads=2, algorithm="direct")
    got = cm(x).numpy()
    st = cm._states[tuple(x.shape)]
    (seg,) = [s for s in st.segments if isinstance(s, M._Segment)]
    first = {}  # each layer's first row (an image-major run has one per image)
    for r, i in zip(seg.prog, seg.row_nodes, strict=True):
        first.setdefault(i, r)
    rows = [(int(r[X.F_KIND]), int(r[X.F_C2]), int(r[X.F_BLK]) & 3, int(r[X.F_RES]) >= 0,
             int(r[X.F_R])) for r in first.values() if r[X.F_KIND] == X.OP_TILES]
    assert any(c2 == 2 and b & 2 for _, c2, b, _, _ in rows)  # the shortcut's blocked copy
    assert sum(1 for _, _, b, res, _ in rows if b & 1 and res) >= 2  # both blocks' sums
    # the 3x3 layers (stride 1 and 2) on the tapped tiles: blocked bordered copy, blocked out
    assert [(c2, b) for _, c2, b, _, r in rows if r == 3] == [(4, 3), (4, 3)]
    pools = [int(r[X.F_BLK]) & 2 for r in seg.prog if r[X.F_KIND] == X.OP_ADAPTIVE]
    assert pools == ([2] if pool else [])
    monkeypatch.setattr(P, "_blocked_pairs", lambda *a: {})
    want = compile(net, x, threads=2, algorithm="direct")(x).numpy()
    assert np.array_equal(got, want)
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pool, batch, H, W", [
    (dict(kernel_size=3, stride=2, padding=1), 1, 33, 30),  # ResNet's
    (dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), 2, 29, 34),  # overhang
    (dict(kernel_size=2, stride=1, dilation=2), 1, 20, 23),
])
def test_max_pooling_between_a_stem_and_1x1_layers_stays_channel_blocked(pool, batch, H, W,
                                                                         monkeypatch):
    """A stem on stride-phase planes stores pixel vectors for max pooling, which pools them
    into pixel vectors for the 1x1 layers after it (`_kernels.maxpool_blocked_tasks`: the
    window's taps in the NCHW kernel's order, -inf outside): the bits of the NCHW path."""
    from convolab.runtime import _executor as X

    torch.manual_seed(H)
    net = nn.Sequential(nn.Conv2d(3, 32, 5, 2, 2), nn.ReLU(), nn.MaxPool2d(**pool),
                        nn.Conv2d(32, 48, 1), nn.ReLU(), nn.Conv2d(48, 16, 1)).eval()
    x = torch.randn(batch, 3, H, W)
    x[0, :, :4, :4] = -50.0  # windows of negative values only, beside the padding
    cm = compile(net, x, threads=2, algorithm="direct")
    got = cm(x).numpy()
    st = cm._states[tuple(x.shape)]
    (seg,) = [s for s in st.segments if isinstance(s, M._Segment)]
    pools = {int(r[X.F_BLK]) & 3 for r in seg.prog if r[X.F_KIND] == X.OP_MAXPOOL}
    assert pools == {3}
    monkeypatch.setattr(P, "_blocked_pairs", lambda *a: {})
    want = compile(net, x, threads=2, algorithm="direct")(x).numpy()
    assert np.array_equal(got, want)
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_a_residual_from_an_nchw_layer_keeps_its_sum_nchw():
    """A fused residual is read in its output's layout: a 3x3 layer's output (NCHW) added to
    a 1x1 layer's keeps that 1x1 layer's output NCHW, though a 1x1 layer reads it."""
    from convolab.runtime import _executor as X

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(16, 32, 3, padding=1)
            self.b = nn.Conv2d(32, 32, 1)
            self.c = nn.Conv2d(32, 16, 1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return self.c(torch.relu(self.b(y) + y))

    net = Net().eval()
    x = torch.randn(1, 16, 12, 12)
    cm = compile(net, x, threads=2, algorithm="direct")
    got = cm(x).numpy()
    st = cm._states[tuple(x.shape)]
    assert all(int((s.prog[:, X.F_BLK] & 3).max()) == 0 for s in st.segments
               if isinstance(s, M._Segment))
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_an_expansion_read_twice_stays_nchw():
    """The expansion's output also read by another operator (here a residual add): not
    channel-blocked."""
    from convolab.runtime import _executor as X

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.pw = nn.Conv2d(16, 32, 1)
            self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)

        def forward(self, x):
            y = torch.relu(self.pw(x))
            return self.dw(y) + y

    net = Twice().eval()
    x = torch.randn(1, 16, 20, 20)
    cm = compile(net, x, threads=2, algorithm="direct")
    got = cm(x).numpy()
    st = cm._states[tuple(x.shape)]
    assert all(int((s.prog[:, X.F_BLK] & 3).max()) == 0 for s in st.segments if isinstance(s, M._Segment))
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-4, atol=1e-4)


class _Head(nn.Module):
    """A stem, max pooling (padding, dilation, ceil mode), adaptive average pooling to a grid,
    flatten and two linear layers (one without bias)."""

    def __init__(self, pool, grid):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.pool = pool
        self.avg = nn.AdaptiveAvgPool2d(grid)
        self.fc = nn.Linear(16 * grid[0] * grid[1], 70)
        self.fc2 = nn.Linear(70, 10, bias=False)

    def forward(self, x):
        y = self.avg(self.pool(torch.relu(self.conv(x))))
        return self.fc2(self.fc(torch.flatten(y, 1)))


@pytest.mark.parametrize("pool, grid", [
    (nn.MaxPool2d(3, 2, 1), (1, 1)),
    (nn.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True), (2, 3)),
    (nn.MaxPool2d((2, 3), (1, 2)), (3, 1)),
])
@pytest.mark.parametrize("batch", [1, 3])
def test_pooling_and_linear_run_in_the_executor(pool, grid, batch):
    """Max pooling, adaptive average pooling, flatten and linear layers join the executor's
    job (one segment, the flatten a view) and give the bits of the same kernels run one by one
    (the first call), on one and on two threads."""
    net = _Head(pool, grid).eval()
    x = torch.randn(batch, 3, 23, 21)
    outs = []
    for threads in (1, 2):
        cm = compile(net, x, algorithm="direct", threads=threads)
        first = cm(x.numpy())  # operator by operator, fresh arrays
        st = cm._states[tuple(x.shape)]
        assert len(st.segments) == 1 and isinstance(st.segments[0], M._Segment)
        seg = st.segments[0]
        assert [cm.graph.nodes[i].kind for i in seg.views] == ["reshape"]
        kinds = {int(r[M._X.F_KIND]) for r in seg.prog}
        assert {M._X.OP_MAXPOOL, M._X.OP_ADAPTIVE, M._X.OP_LINEAR} <= kinds
        y = cm(x.numpy())
        np.testing.assert_array_equal(y, first)
        with torch.no_grad():
            np.testing.assert_allclose(y, net(x).numpy(), rtol=1e-4, atol=1e-5)
        outs.append(y)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_max_pooling_in_the_executor_propagates_nan():
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.MaxPool2d(3, 2, 1)).eval()
    x = torch.randn(1, 3, 9, 9)
    cm = compile(net, x, algorithm="direct", threads=2, check_finite=False)
    cm(x.numpy())
    x[0, 1, 4, 4] = float("nan")
    y = cm(x.numpy())
    with torch.no_grad():
        r = net(x).numpy()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(r))
    assert np.isnan(y).any()



def test_team_thread_resident_between_runs_of_one_program(monkeypatch):
    """With `RESIDENT`, the team thread runs a compiled model's next call from its resident
    loop (`_executor.serve`, no return to Python between calls): the same bits as without,
    call after call, also when other jobs of the team (another model, a plain conv2d) come in
    between and the loop has to hand back to Python."""
    from convolab.kernels import team as KT
    from convolab.runtime import _executor as X

    net = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1),
                        nn.Conv2d(16, 16, 3, padding=1, groups=16)).eval()
    other = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1)).eval()
    x = torch.randn(1, 8, 24, 24)
    monkeypatch.setattr(X, "RESIDENT", False)
    a = compile(net, x, threads=2, algorithm="direct")
    want = a(x).numpy()
    want_other = compile(other, x, threads=2, algorithm="direct")(x).numpy()
    monkeypatch.setattr(X, "RESIDENT", True)
    b = compile(net, x, threads=2, algorithm="direct")
    c = compile(other, x, threads=2, algorithm="direct")
    w = np.random.rand(4, 8, 3, 3).astype(np.float32)
    ref = convolab.conv2d(x.numpy(), w, padding=1, algorithm="direct")
    for k in range(6):
        assert np.array_equal(b(x).numpy(), want)
        assert np.array_equal(b(x).numpy(), want)  # back to back: the resident loop's run
        if k % 2:
            assert np.array_equal(c(x).numpy(), want_other)
        else:
            out = convolab.conv2d(x.numpy(), w, padding=1, algorithm="direct")
            assert np.array_equal(out, ref)
    assert int(KT.shared()._ctl[KT._KEY]) in (0, id(b._states[tuple(x.shape)].segments[0].prog),
                                              id(c._states[tuple(x.shape)].segments[0].prog))


class _WinogradBlock(nn.Module):
    """1x1 (direct, in the executor) -> 3x3 + ReLU -> 3x3 + residual (the 1x1's output, read
    last by it) -> ReLU: the two 3x3 layers planned for a bilinear algorithm."""

    def __init__(self, C):
        super().__init__()
        torch.manual_seed(C)
        self.a = nn.Conv2d(C, C, 1)
        self.b = nn.Conv2d(C, C, 3, padding=1)
        self.c = nn.Conv2d(C, C, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return torch.relu(self.c(torch.relu(self.b(y))) + y)


@pytest.mark.parametrize("algorithm", ["winograd_f2x3", "sfc4_4x3", "sfc6_6x3"])
@pytest.mark.parametrize("batch,H,image", [(1, 14, False), (3, 13, False), (9, 7, False),
                                           (3, 13, True)])
def test_bilinear_layers_run_in_the_executor_with_the_algorithms_bits(algorithm, batch, H, image,
                                                                      monkeypatch):
    """A layer planned for a Winograd / SFC algorithm whose point GEMMs run on the microkernel
    runs as an executor operator (`_executor.OP_BIL`: NHWC copy, chunks of tiles and shares of
    the k-blocks as tasks, the output stage on each task's outputs): the same bits as the
    algorithm called alone followed by the output stage, on 1 and 2 threads; uneven tiles
    (13x13), chunks dealt out (batch 3 and 9) and k-blocks shared (batch 1), image by image in
    an image-major run; the residual's slot is not overwritten in place (the output transform
    would write it before the add)."""
    if image:  # every layer's activations large enough for an image-major run
        monkeypatch.setattr(P, "IMAGE_MAJOR_BYTES", 0)
        monkeypatch.setattr(P, "IMAGE_MAJOR_FILTER_SHARE", 0)
    else:
        monkeypatch.setattr(P, "IMAGE_MAJOR_BYTES", 1 << 60)
    C = 128
    net = _WinogradBlock(C).eval()
    x = torch.randn(batch, C, H, H)
    xn = x.numpy()
    outs = []
    for T in (1, 2):
        cm = compile(net, x, algorithm=algorithm, threads=T)
        cm(x)
        outs.append(cm(x).numpy())
        st = cm._states[tuple(x.shape)]
        segs = [s for s in st.segments if isinstance(s, M._Segment)]
        # (the 1x1 layer, which the named algorithm cannot run, is planned by `auto`)
        assert len(segs) == 1, "the 3x3 layers in one executor job"
        bil = [r for r in segs[0].prog if r[P._X.F_KIND] == P._X.OP_BIL]
        if T == 2 and batch == 1:
            # few tiles per output channel: k-blocks shared (SFC-4, SFC-6: 16 and 9 tiles);
            # F(2x2,3x3)'s 49 tiles are dealt out in single tile rows
            tiles = int(bil[0][P._X.F_B] * bil[0][P._X.F_C2])
            shared = tiles < P.BILINEAR_DEAL_TILES_PER_K * C
            assert {int(r[P._X.F_SH]) for r in bil} == {2 if shared else 1}
        if image:
            assert len(st.image_major) >= 2 and len(bil) == 2 * batch
            assert all(r[P._X.F_N] == 1 for r in bil)
        else:
            assert len(bil) == 2 and not st.image_major
            if batch > 1:
                assert min(int(r[P._X.F_SH]) for r in bil) == 1, "chunks dealt out"
        pa = next(p for p in st.plans.values() if p.spec.R == 1)
    w = {k: getattr(net, k).weight.detach().numpy() for k in "abc"}
    b = {k: getattr(net, k).bias.detach().numpy()[None, :, None, None] for k in "abc"}
    y = np.maximum(convolab.conv2d(xn, w["a"], algorithm=pa.algorithm) + b["a"], 0)
    z = np.maximum(convolab.conv2d(y, w["b"], padding=1, algorithm=algorithm) + b["b"], 0)
    ref = np.maximum(convolab.conv2d(z, w["c"], padding=1, algorithm=algorithm) + b["c"] + y, 0)
    assert np.array_equal(outs[0], ref)
    assert np.array_equal(outs[1], ref)


def test_a_bilinear_layer_with_a_large_transformed_filter_stays_out_of_image_major_runs(monkeypatch):
    """Inside an image-major run a bilinear operator reads its transformed filter once per image:
    only filters up to `IMAGE_MAJOR_BILINEAR_BYTES` join (the run then ends before it)."""
    monkeypatch.setattr(P, "IMAGE_MAJOR_BYTES", 0)
    monkeypatch.setattr(P, "IMAGE_MAJOR_FILTER_SHARE", 0)
    net = _WinogradBlock(128).eval()
    x = torch.randn(2, 128, 9, 9)
    runs = {}
    for limit in (1 << 30, 0):
        monkeypatch.setattr(P, "IMAGE_MAJOR_BILINEAR_BYTES", limit)
        cm = compile(net, x, algorithm="winograd_f2x3", threads=2)
        cm(x)
        st = cm._states[tuple(x.shape)]
        runs[limit] = {i for i in st.image_major if P._bilinear_op(st, i)}
        y = cm(x).numpy()
        runs[limit, "y"] = y
    assert len(runs[1 << 30]) == 2 and not runs[0]
    assert np.array_equal(runs[1 << 30, "y"], runs[0, "y"])


def test_an_uncalibrated_machine_times_the_bilinear_candidates(monkeypatch):
    """Without calibration (`select.trial_wanted`), `auto` times the best candidates before it
    runs a layer bilinear in the executor, and follows the timing."""
    import dataclasses

    from convolab import select
    from convolab.spec import ConvSpec

    machine = dataclasses.replace(select.machine(), call_seconds=0.1e-3)
    monkeypatch.setattr(select, "machine", lambda: machine)
    monkeypatch.setattr(select, "predict_seconds", lambda algo, spec, m: 1.5e-3 + m.call_seconds)
    monkeypatch.setattr(select, "trial_wanted", lambda ranking: True)
    spec = ConvSpec.from_shapes((8, 256, 14, 14), (256, 256, 3, 3), padding=1, dtype=np.float32)
    model = [select.Choice("sfc6_7x3", True, "", 0.6e-3), select.Choice("winograd_f2x3", True, "", 0.8e-3),
             select.Choice("direct", True, "", 1.5e-3)]
    for timed, want in ((["winograd_f2x3", "sfc6_7x3", "direct"], "winograd_f2x3"),
                        (["direct", "winograd_f2x3", "sfc6_7x3"], "direct")):
        def rank(spec, trial=False, timed=timed, **kw):
            if not trial:
                return model
            return [select.Choice(n, True, "", (0.5 + k) * 1e-3) for k, n in enumerate(timed)]
        monkeypatch.setattr(select, "rank", rank)
        assert P._prefer_executor(spec, {}, 2) == want


#: per-channel values an output stage sees: NaN, infinities, the bounds of ReLU6 and of the
#: hardtanh below, values on either side of them, denormals
EDGES = np.array([np.nan, np.inf, -np.inf, 0.0, 6.0, -1.0, 7.0, 3.0, 1e-45, -1e-45,
                  np.nextafter(np.float32(6), np.float32(0)), np.nextafter(np.float32(6), 7),
                  -2.0, 0.5, -0.5, 2.0], dtype=np.float32)


class _Clamp(nn.Module):
    def __init__(self, lo, hi):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x):
        return torch.clamp(x, self.lo, self.hi)


ACT_BOUNDS = [(nn.ReLU(), None), (nn.ReLU6(), (0.0, 6.0)), (nn.Hardtanh(-2.0, 0.5), (-2.0, 0.5)),
              (_Clamp(-0.0, 0.0), (-0.0, 0.0)), (_Clamp(0.0, -0.0), (0.0, -0.0))]
ACT_IDS = ["relu", "relu6", "hardtanh", "zeros", "zeros-crossed"]


def _bits_equal(got, want):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.array_equal(got[ok].view(np.uint32), want[ok].view(np.uint32))


@pytest.mark.parametrize("act, bounds", ACT_BOUNDS, ids=ACT_IDS)
def test_relu_and_clamp_stages_are_pytorchs_bit_for_bit(act, bounds):
    """The vector stages (`_microkernel.relu_vec`, `clamp_vec`) and the scalar one
    (`_epilogue.run`) give PyTorch's ReLU / hardtanh bits: NaN kept, a zero's sign kept (-0.0
    against bounds of +0.0 too), values equal to a bound kept."""
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic

    from convolab.kernels import _epilogue as E
    from convolab.kernels._microkernel import clamp_vec, relu_vec, splat

    vals = np.concatenate([EDGES, -EDGES, np.array([-0.0] * 16, np.float32)])
    want = act(torch.from_numpy(vals)).numpy()
    lo, hi = bounds if bounds else (0.0, 0.0)
    code = 1 if bounds is None else 2

    @intrinsic
    def stage16(typingctx, d, o, lo_, hi_):
        def codegen(context, builder, sig, args):
            vty = ir.VectorType(ir.FloatType(), 16)
            p = builder.bitcast(builder.gep(context.make_array(sig.args[0])(
                context, builder, args[0]).data, [args[1]]), vty.as_pointer())
            v = builder.load(p, align=4)
            v = relu_vec(builder, v) if code == 1 else clamp_vec(
                builder, v, splat(builder, args[2], vty), splat(builder, args[3], vty))
            builder.store(v, p, align=4)
            return context.get_dummy_value()
        return types.void(d, o, lo_, hi_), codegen

    @njit
    def vector_stage(d, lo_, hi_):
        for o in range(0, d.size, 16):
            stage16(d, o, lo_, hi_)

    got = vals.copy()
    vector_stage(got, np.float32(lo), np.float32(hi))
    _bits_equal(got, want)
    for mode, bias in ((0, 0.0), (2, -0.0)):  # the plain loop, and the loop adding a bias
        got = vals.copy()
        E.run(got, 0, got, 0, got.size, np.float32(1), np.float32(bias), mode, code,
              np.float32(lo), np.float32(hi))
        _bits_equal(got, want)


@pytest.mark.parametrize("act, bounds", ACT_BOUNDS, ids=ACT_IDS)
@pytest.mark.parametrize("H", [7, 14, 113])  # tiles, blocked tiles and depthwise; pixel vectors, planes
def test_fused_relu_and_clamp_in_every_kernel_are_pytorchs(act, bounds, H):
    """Every kernel's fused stage, fed the edge values through its bias (zero weights, so a
    layer's output is its bias, or NaN where its input was not finite): a 1x1 layer storing
    NCHW (the network's output) and channel-blocked (for the depthwise layer after it), the
    channel-blocked and the plane-wise depthwise kernels. PyTorch's bits."""
    torch.manual_seed(H)
    pw = nn.Conv2d(16, 32, 1)
    dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
    with torch.no_grad():
        for c in (pw, dw):
            c.weight.zero_()
        # (no -0.0: PyTorch's sum of zero products may be -0.0, and -0.0 + -0.0 keeps it)
        b = np.concatenate([EDGES, -EDGES])
        b[b == 0] = 0.25
        pw.bias.copy_(torch.from_numpy(b))
        dw.bias.copy_(torch.from_numpy(b[::-1].copy()))
    x = torch.randn(2, 16, H, H)
    for net in (nn.Sequential(pw, act).eval(), nn.Sequential(pw, act, dw, act).eval()):
        want = net(x).detach().numpy()
        cm = compile(net, x, algorithm="direct", threads=2, check_finite=False)
        for _ in range(2):  # planned, then the executor
            _bits_equal(cm(x).numpy(), want)
