"""convolab.dask: chunked convolution bit-identical to one process, on the local schedulers and
on a two-process `distributed.LocalCluster`; out-of-core stores; the sweeps through the cluster;
bad inputs. (The highdim filters: tests/test_dask_filters.py.)"""

from __future__ import annotations

import itertools
import json

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client

import convolab
import convolab.dask as cd
from convolab.dask import estimate, halo, sweeps
from convolab.errors import ConvError, UnsupportedError
from convolab.spec import ConvSpec


@pytest.fixture(scope="module")
def client():
    with cd.local_cluster(n_workers=2, threads_per_worker=1, memory_limit="1GiB") as cluster:
        with Client(cluster) as c:
            yield c


def bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def same_bits(a, b) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(bits(a), bits(b))


def data(x_shape, w_shape, dtype=np.float32, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
    return x, w, b


#: (x shape, w shape, conv kwargs): strides, dilations, paddings (symmetric, asymmetric, same,
#: larger than the kernel), groups, the microkernel path (32+ output channels) and the loops
CASES = [
    ((2, 3, 19, 17), (5, 3, 3, 3), dict(padding=1)),
    ((1, 4, 21, 20), (6, 4, 5, 3), dict(stride=2, padding=(1, 2, 0, 3))),
    ((2, 3, 19, 19), (4, 3, 3, 3), dict(stride=(3, 1), dilation=2, padding=2)),
    ((1, 8, 18, 18), (64, 8, 3, 3), dict(padding="same")),
    ((1, 8, 18, 18), (64, 8, 3, 3), dict(stride=2, dilation=(2, 1), padding=1)),
    ((2, 6, 16, 15), (6, 1, 3, 3), dict(padding=1, groups=6)),
    ((1, 8, 13, 17), (12, 2, 3, 3), dict(padding=(1, 2, 0, 1), groups=4)),
    ((1, 3, 23, 23), (8, 3, 7, 7), dict(stride=2, padding=3)),
    ((1, 2, 11, 11), (3, 2, 3, 3), dict(padding=4)),
    ((1, 2, 15, 12), (3, 2, 1, 1), dict(stride=3)),
]

#: chunkings along (H, W): even, uneven last chunks, chunks of one row (smaller than the reach),
#: explicit irregular chunks
CHUNKINGS = [(8, 6), (5, -1), (1, 2), ((3, 9, 2, 100), (4, 1, 200))]


def _chunks(x_shape, hw):
    def axis(spec, n):
        if isinstance(spec, tuple):
            out, left = [], n
            for c in spec:
                if left <= 0:
                    break
                out.append(min(c, left))
                left -= out[-1]
            if left > 0:
                out.append(left)
            return tuple(out)
        return spec
    return (1, -1, axis(hw[0], x_shape[2]), axis(hw[1], x_shape[3]))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}{c[2]}")
@pytest.mark.parametrize("algorithm", ["direct", "im2win"])
def test_bit_identical_to_one_process(case, algorithm):
    x_shape, w_shape, kw = case
    x, w, b = data(x_shape, w_shape)
    ref = convolab.conv2d(x, w, b, algorithm=algorithm, **kw)
    for hw in CHUNKINGS:
        xd = da.from_array(x, chunks=_chunks(x_shape, hw))
        y = cd.conv2d(xd, w, b, algorithm=algorithm, **kw)
        assert y.shape == ref.shape and not any(np.isnan(c) for cs in y.chunks for c in cs)
        assert same_bits(y.compute(), ref), (hw, kw)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_dtypes(dtype):
    x, w, b = data((2, 3, 14, 13), (4, 3, 3, 3), dtype=dtype)
    ref = convolab.conv2d(x, w, b, padding=1, stride=2, algorithm="direct")
    y = cd.conv2d(da.from_array(x, chunks=(1, 3, 4, 5)), w, b, padding=1, stride=2, algorithm="direct")
    assert y.dtype == ref.dtype == dtype
    assert same_bits(y.compute(), ref)


def test_fast_algorithms_close():
    """Winograd / FFT / im2col see other image sizes per block: the same result to rounding."""
    x, w, b = data((1, 8, 30, 30), (16, 8, 3, 3))
    ref = convolab.reference.conv2d(x, w, b, padding=1)
    for algorithm in ("winograd_f4x3", "fft", "im2col", "auto"):
        y = cd.conv2d(da.from_array(x, chunks=(1, 8, 7, 11)), w, b, padding=1, algorithm=algorithm)
        assert np.abs(y.compute() - ref).max() < 1e-3 * np.abs(ref).max()


def test_output_chunks():
    x, w, _ = data((1, 4, 64, 48), (8, 4, 3, 3), bias=False)
    xd = da.from_array(x, chunks=(1, 4, 16, 12))
    assert cd.conv2d(xd, w, padding="same").chunks == ((1,), (8,), (16,) * 4, (12,) * 4)
    assert cd.conv2d(xd, w, padding=1, stride=2).chunks == ((1,), (8,), (8,) * 4, (6,) * 4)
    # valid: the last block loses the kernel's overhang
    assert cd.conv2d(xd, w).chunks == ((1,), (8,), (16, 16, 16, 14), (12, 12, 12, 10))


def test_blocks_cover_every_output_once():
    """For many geometries: the blocks partition the outputs, read inside the input, and each
    block's own convolution has exactly the block's outputs."""
    rng = np.random.default_rng(5)
    for _ in range(3000):
        H = int(rng.integers(1, 40))
        k = int(rng.integers(1, 8))
        s = int(rng.integers(1, 5))
        pad = (int(rng.integers(0, 6)), int(rng.integers(0, 6)))
        if H + sum(pad) < k:
            continue
        cuts = sorted(set(rng.integers(1, H, size=int(rng.integers(0, 6))).tolist())) if H > 1 else []
        chunks = np.diff([0, *cuts, H]).tolist()
        try:
            blocks = halo.window_blocks(chunks, pad, s, k)
        except ConvError as e:
            assert "padding" in str(e)
            continue
        O = (H + sum(pad) - k) // s + 1
        assert blocks[0].out[0] == 0 and blocks[-1].out[1] == O
        for a, b in zip(blocks, blocks[1:], strict=False):
            assert a.out[1] == b.out[0]
        for b in blocks:
            assert b.size >= 1 and 0 <= b.rows[0] < b.rows[1] <= H
            assert ((b.rows[1] - b.rows[0]) + sum(b.pad) - k) // s + 1 == b.size
            assert (b.out[0] * s - pad[0]) + b.pad[0] == b.rows[0]  # the windows are the whole's
            got = sum(p[2] - p[1] for p in b.pieces)
            assert got == b.rows[1] - b.rows[0]


def test_plan_once_per_block_shape_and_one_weights_key():
    x, w, b = data((2, 3, 20, 20), (4, 3, 3, 3))
    xd = da.from_array(x, chunks=(1, 3, 5, 5))
    y = cd.conv2d(xd, w, b, padding=1, algorithm="direct")
    graph = dict(y.__dask_graph__())
    assert sum(1 for k in graph if isinstance(k, str) and k.startswith("convolab-weights-")) == 1
    cd.clear_plan_cache()
    with dask.config.set(scheduler="sync"):
        out = y.compute()
    info = cd.plan_cache_info()
    # 16 blocks per image, 2 images: each gathers its 5x5 share with a halo or the array's
    # zero padding around it, so all are 7x7 blocks convolved without padding: one plan
    assert info["built"] == 1 and info["hits"] == 32 - 1
    assert same_bits(out, convolab.conv2d(x, w, b, padding=1, algorithm="direct"))


def block_shapes(xd, w_shape, kw) -> set:
    """The distinct shapes of the blocks conv2d convolves for ``xd``: its images, rows and
    columns with their halo and the array's padding (gathered into one array, no padding of
    its own)."""
    spec = ConvSpec.from_shapes(xd.shape, w_shape, **kw)
    pl, pr, pt, pb = spec.padding
    hb = halo.window_blocks(xd.chunks[2], (pt, pb), spec.stride[0], spec.dilated_R)
    wb = halo.window_blocks(xd.chunks[3], (pl, pr), spec.stride[1], spec.dilated_S)
    return {(n, bh.rows[1] - bh.rows[0] + sum(bh.pad), bw.rows[1] - bw.rows[0] + sum(bw.pad))
            for n in set(xd.chunks[0]) for bh, bw in itertools.product(hb, wb)}


def test_on_the_cluster(client):
    """Two worker processes: the same bits; each worker plans each block shape at most once."""
    for (x_shape, w_shape, kw), hw in [(CASES[1], CHUNKINGS[3]), (CASES[4], CHUNKINGS[0]),
                                       (CASES[5], CHUNKINGS[2])]:
        x, w, b = data(x_shape, w_shape)
        client.run(cd.clear_plan_cache)
        xd = da.from_array(x, chunks=_chunks(x_shape, hw))
        y = cd.conv2d(xd, w, b, algorithm="direct", **kw)
        assert same_bits(client.compute(y).result(), convolab.conv2d(x, w, b, algorithm="direct", **kw))
        shapes = block_shapes(xd, w_shape, kw)
        info = list(client.run(cd.plan_cache_info).values())
        assert max(i["built"] for i in info) <= len(shapes) <= sum(i["built"] for i in info)
        blocks = y.numblocks[0] * y.numblocks[2] * y.numblocks[3]
        assert sum(i["built"] + i["hits"] for i in info) == blocks


def test_bad_inputs():
    x, w, _ = data((1, 4, 16, 16), (8, 4, 3, 3), bias=False)
    with pytest.raises(ConvError, match="dask.array.from_array"):
        cd.conv2d(x, w)
    with pytest.raises(ConvError, match=r"rechunk\(\{1: -1\}\)"):
        cd.conv2d(da.from_array(x, chunks=(1, 2, 8, 8)), w)
    with pytest.raises(ConvError, match="4-D"):
        cd.conv2d(da.from_array(x[0], chunks=(4, 8, 8)), w)
    with pytest.raises(ConvError, match="channels"):
        cd.conv2d(da.from_array(x, chunks=(1, 4, 8, 8)), w[:, :3])
    with pytest.raises(ConvError, match="dtype"):
        cd.conv2d(da.from_array(x.astype(np.int32), chunks=(1, 4, 8, 8)), w.astype(np.int32))
    with pytest.raises(ConvError, match=r"rechunk x to smaller chunks.*x.rechunk\(\{0: 1, 2: \d+, 3: \d+\}\)"):
        cd.conv2d(da.from_array(x, chunks=(1, 4, 16, 16)), w, padding=1, memory_limit=20_000)
    cd.conv2d(da.from_array(x, chunks=(1, 4, 4, 4)), w, padding=1, memory_limit=20_000)  # fits
    with pytest.raises(UnsupportedError, match="block"):
        cd.conv2d(da.from_array(x, chunks=(1, 4, 8, 8)), w, stride=2, algorithm="winograd_f2x3")
    with pytest.raises(ConvError, match="unknown algorithm"):
        cd.conv2d(da.from_array(x, chunks=(1, 4, 8, 8)), w, algorithm="nope")
    with pytest.raises(ConvError, match="compute_chunk_sizes"):
        xd = da.from_array(x, chunks=(1, 4, 8, 8))
        cd.conv2d(xd[xd[:, 0, 0, 0] > -100], w)


def test_memory_check_uses_the_cluster(client):
    """With a distributed client the tasks must fit half a worker's memory per thread."""
    xd = da.zeros((1, 64, 4096, 4096), chunks=(1, 64, 4096, 4096), dtype=np.float32)
    w = np.zeros((64, 64, 3, 3), np.float32)
    with pytest.raises(ConvError, match="rechunk x"):
        cd.conv2d(xd, w, padding=1)
    cd.conv2d(xd.rechunk((1, 64, 256, 256)), w, padding=1)


def test_stores_npy_and_zarr(tmp_path, client):
    """.npy memory maps and zarr stores in and out, through the cluster's workers."""
    x, w, b = data((1, 6, 40, 33), (8, 6, 3, 3))
    np.save(tmp_path / "x.npy", x)
    ref = convolab.conv2d(x, w, b, stride=2, padding=1, algorithm="direct")
    xd = cd.open_array(tmp_path / "x.npy", chunks=(1, 6, 12, 9))
    y = cd.conv2d(xd, w, b, stride=2, padding=1, algorithm="direct")
    assert y.chunks[2:] == ((6, 6, 6, 2), (5, 4, 5, 3))  # output i goes with input row 2 i
    with dask.config.set(scheduler=client.get):
        cd.save_array(y, tmp_path / "y.npy")
        cd.save_array(y, tmp_path / "y.zarr")
        assert same_bits(np.load(tmp_path / "y.npy"), ref)
        assert same_bits(cd.open_array(tmp_path / "y.zarr").compute(), ref)
        # zarr to zarr, irregular blocks (valid padding) rechunked to the store's regular chunks
        w2 = data((4, 8, 3, 3), (4, 8, 3, 3), seed=1)[1]
        y2 = cd.conv2d(cd.open_array(tmp_path / "y.zarr", chunks=(1, 8, 5, 4)), w2, algorithm="direct")
        cd.save_array(y2, tmp_path / "y2.zarr")
        assert same_bits(cd.open_array(tmp_path / "y2.zarr").compute(), convolab.conv2d(ref, w2, algorithm="direct"))
    with pytest.raises(ConvError, match="chunks="):
        cd.open_array(tmp_path / "x.npy")
    with pytest.raises(ConvError, match="no such"):
        cd.open_array(tmp_path / "missing.zarr")


def test_filter_on_the_cluster(client):
    from skimage import data as images

    import convolab.highdim as hd

    img = images.astronaut()[:48, :60] / 255.0
    ref = hd.bilateral_filter(img, 2.0, 0.1)
    y = cd.bilateral_filter(da.from_array(img, chunks=(16, 25, 3)), 2.0, 0.1)
    assert same_bits(client.compute(y).result(), ref)


SWEEP = ["deviations", "sweep", "--filters", "1,2", "--kernels", "2,3", "--channels", "1,2", "--sizes", "8",
         "--no-torch"]


def test_deviation_sweep_through_the_cluster(client, tmp_path, capsys):
    """The CLI's tables and JSON through --scheduler are byte for byte the serial run's."""
    from convolab import cli

    out = {}
    for mode, extra in (("serial", []), ("dask", ["--scheduler", client.scheduler.address])):
        path = tmp_path / mode / "sweep.json"
        path.parent.mkdir()
        assert cli.main([*SWEEP, "--layers", "--json", str(path), *extra]) == 0
        captured = capsys.readouterr()
        out[mode] = (captured.out.replace(str(path), "PATH"), path.read_bytes(), captured.err)
    assert out["dask"][:2] == out["serial"][:2]
    assert "2 workers, 2 threads" in out["dask"][2]
    assert json.loads(out["dask"][1])["summary"]["algorithms"]["layers"] == 8


def test_compute_steps_print_nothing_on_the_cluster(client, capsys):
    """With Dask the compute steps hand the cluster's line to ``say``; run prints it (stderr)."""
    from convolab import cli
    from convolab.commands import accuracy, deviations

    said = []
    cfg = accuracy.AccuracyConfig(batch=1, channels=4, out_channels=4, size=12, bits=(8,),
                                  scheduler=client.scheduler.address)
    rows = accuracy.compute(cfg, say=said.append)["rows"]
    sweep = deviations.SweepConfig(filters=(1,), kernels=(2,), channels=(1,), sizes=(6,),
                                   algorithms=["direct"], torch=False,
                                   scheduler=client.scheduler.address)
    assert len(deviations.compute_sweep(sweep, say=said.append)["results"]) == 1
    assert capsys.readouterr() == ("", "")
    assert said == [sweeps.describe(client)] * 2 and "2 workers, 2 threads" in said[0]
    assert rows and accuracy.compute(cfg)["rows"] == rows  # say is optional
    assert cli.main(["accuracy", "--batch", "1", "--channels", "4", "--out-channels", "4",
                     "--size", "12", "--bits", "8", "--scheduler", client.scheduler.address]) == 0
    out, err = capsys.readouterr()
    assert "relative RMSE vs float64" in out and "2 workers, 2 threads" in err


def test_accuracy_study_through_the_cluster(client):
    from convolab.accuracy import study

    kw = dict(batch=1, channels=4, out_channels=4, size=12, bits=(8,), seed=3)
    assert sweeps.accuracy_study(client, **kw) == study(**kw)


def test_calibration_through_the_cluster(client, tmp_path, monkeypatch):
    """Groups of layers timed on the workers, fitted over all of them, stored everywhere."""
    import os

    from convolab import cache, registry

    layers = [((1, 4, 12, 12), (4, 4, 3, 3), 1, 1, 1), ((1, 8, 10, 10), (8, 8, 1, 1), 1, 0, 1)]
    monkeypatch.setenv("CONVOLAB_CACHE_DIR", str(tmp_path / "client"))
    before = client.run(os.environ.get, "CONVOLAB_CACHE_DIR")
    client.run(os.environ.__setitem__, "CONVOLAB_CACHE_DIR", str(tmp_path / "workers"))
    try:
        m, threads = sweeps.calibrate(client, layers=layers)
        stored = client.run(lambda: cache.CALIBRATION.entries())
    finally:
        for addr, value in before.items():
            client.run(os.environ.__setitem__, "CONVOLAB_CACHE_DIR", value, workers=[addr])
    assert threads == 1
    specs = [ConvSpec.from_shapes(xs, ws, st, p, 1, g) for xs, ws, st, p, g in layers]
    want = {}
    for a in registry.list_algorithms():
        for s in specs:
            if a.supports(s) is None:
                want[a.cost_key(s)] = want.get(a.cost_key(s), 0) + 1
    assert {k: len(v) for k, v in m.samples.items()} == want
    (key,) = cache.CALIBRATION.entries()
    assert json.loads(key)["threads"] == 1
    assert cache.CALIBRATION.entries()[key] == json.loads(json.dumps(m.to_json()))
    assert all(list(e) == [key] and e[key] == cache.CALIBRATION.entries()[key] for e in stored.values())
    # the times recovered from a calibration's samples give its fit back
    again = sweeps.merge_calibrations(layers, [[0, 1]], [m])
    for k in m.linear:
        assert np.allclose(again.linear[k], m.linear[k], rtol=1e-9, atol=0)
        assert np.allclose(again.samples[k], m.samples[k], rtol=1e-9, atol=1e-12)


def test_missing_extra_is_named(monkeypatch, capsys):
    import sys

    from convolab import cli

    monkeypatch.setitem(sys.modules, "distributed", None)
    assert cli.main(["accuracy", "--dask"]) == 2
    assert "pip install 'convolab[dask]'" in capsys.readouterr().err


def test_graph_estimate():
    s = estimate.conv_graph((1, 16, 64, 64), (1, 16, 16, 16), (16, 16, 3, 3), padding=1)
    assert s.tasks == 16 and s.output_bytes == s.input_bytes == 16 * 64 * 64 * 4
    assert s.flops == 2 * 16 * 64 * 64 * 16 * 9
    # interior blocks read 18 x 18 for their 16 x 16: the halo
    assert s.read_bytes - s.halo_bytes == s.input_bytes
    rows = estimate.scaling(s, [1, 2, 4, 16, 32], rate_gflops=10, bandwidth_gbs=100, overhead_s=0)
    assert [r["waves"] for r in rows] == [16, 8, 4, 1, 1]
    assert rows[-1]["speedup"] == rows[-2]["speedup"] == pytest.approx(16)


def test_local_cluster_work_stealing_off_unless_asked():
    """`local_cluster` starts its scheduler without work stealing (a stolen block takes its
    input chunk along) unless ``work_stealing=True``."""
    for ws in (False, True):
        with cd.local_cluster(n_workers=1, memory_limit="1GiB", work_stealing=ws) as cluster:
            assert ("stealing" in cluster.scheduler.extensions) is ws
