"""The Winograd / SFC engine: product counts, constraints, accuracy at the stated bounds."""

import importlib

import numpy as np
import pytest
from conftest import check_against_reference, make_data

import convolab
from convolab.registry import UNIT_ROUNDOFF
from convolab.spec import ConvSpec
from convolab.transforms import sfc_2d
from convolab.transforms.forms import Bilinear2D

bilinear = importlib.import_module("convolab.algorithms.bilinear")

PER_TILE = {"winograd_f2x3": 16, "winograd_f4x3": 36, "winograd_f6x3": 64, "winograd_f2x5": 36,
            "sfc4_4x3": 46, "sfc6_6x3": 88, "sfc6_6x3_nested": 100, "sfc6_7x3": 132,
            "sfc6_6x5": 184}
NAMES = list(PER_TILE)


def test_registered_names():
    names = {a.name for a in convolab.list_algorithms()}
    assert set(NAMES) <= names
    assert set(bilinear.VARIANTS) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_multiplies_per_tile(name):
    alg = bilinear.engine(name).alg
    n = alg.m + alg.r - 1
    spec = ConvSpec.from_shapes((1, 1, n, n), (1, 1, alg.r, alg.r))
    assert (spec.OH, spec.OW) == (alg.m, alg.m)
    algo = convolab.registry.get(name)
    assert algo.multiplies(spec) == PER_TILE[name]
    # batch, groups, channels and a partial tile: g * N * tiles * P * Kg * Cg
    spec = ConvSpec.from_shapes((3, 4, n + 1, n), (6, 2, alg.r, alg.r), groups=2)
    assert algo.multiplies(spec) == 2 * 3 * (2 * 1) * PER_TILE[name] * 3 * 2
    assert algo.workspace_bytes(spec) > 0
    assert not algo.deterministic


@pytest.mark.parametrize("name", ["winograd_f4x3", "sfc6_6x3"])
def test_unsupported_specs(name):
    algo = convolab.registry.get(name)
    x, w, _ = make_data((1, 2, 9, 9), (2, 2, 3, 3), bias=False)
    for kw, word in ((dict(stride=2), "stride"), (dict(dilation=2), "dilation")):
        spec = ConvSpec.from_arrays(x, w, **kw)
        assert word in algo.supports(spec)
        with pytest.raises(convolab.UnsupportedError, match=word):
            convolab.conv2d(x, w, algorithm=name, **kw)
    spec = ConvSpec.from_arrays(x, w[:, :, :2, :])
    assert "kernel must be 3x3" in algo.supports(spec)


CASES = [
    dict(x=(2, 6, 13, 11), w=(4, 3, 3, 3), padding=(1, 2, 0, 1), groups=2),
    dict(x=(3, 5, 8, 8), w=(7, 5, 3, 3), padding=1),
    dict(x=(1, 4, 17, 19), w=(5, 4, 5, 5), padding=2),
    dict(x=(1, 3, 5, 6), w=(2, 3, 5, 5), padding=(0, 3, 1, 0)),
]


@pytest.mark.parametrize("name", NAMES)
def test_against_reference_at_the_bound(name):
    algo = convolab.registry.get(name)
    ran = 0
    for i, case in enumerate(CASES):
        x, w, b = make_data(case["x"], case["w"], seed=i)
        kw = {k: v for k, v in case.items() if k not in ("x", "w")}
        spec = ConvSpec.from_arrays(x, w, b, **kw)
        if algo.supports(spec) is not None:
            continue
        out = np.full(spec.out_shape, np.nan, np.float32)
        y = convolab.conv2d(x, w, b, algorithm=name, out=out, **kw)
        check_against_reference(y, x, w, b, kw, algo.error_bound(spec, np.float32))
        ran += 1
    assert ran >= 2


def test_error_bounds_order_and_dtypes():
    spec = ConvSpec.from_shapes((1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    b = {n: convolab.registry.get(n).error_bound(spec, np.float32) for n in NAMES}
    assert b["winograd_f2x3"] < b["winograd_f4x3"] < b["winograd_f6x3"]
    assert b["sfc6_6x3_nested"] < b["winograd_f4x3"]
    algo = convolab.registry.get("sfc6_6x3")
    assert algo.error_bound(spec, np.float16) > UNIT_ROUNDOFF[np.dtype(np.float16)]
    assert algo.error_bound(spec, np.float64) < 1e-8 * algo.error_bound(spec, np.float32)


def test_float64_and_float16():
    x, w, b = make_data((2, 3, 10, 9), (4, 3, 3, 3), dtype=np.float64)
    spec = ConvSpec.from_arrays(x, w, b, padding=1)
    algo = convolab.registry.get("sfc6_6x3")
    y = convolab.conv2d(x, w, b, padding=1, algorithm="sfc6_6x3")
    assert y.dtype == np.float64
    err = check_against_reference(y, x, w, b, {"padding": 1}, algo.error_bound(spec, np.float64))
    assert err < 1e-13
    x16, w16 = x.astype(np.float16), w.astype(np.float16)
    y16 = convolab.conv2d(x16, w16, padding=1, algorithm="winograd_f4x3")
    assert y16.dtype == np.float16
    check_against_reference(y16, x16, w16, None, {"padding": 1},
                            algo.error_bound(spec.with_dtype(np.float16), np.float16) * 10)


def _run(eng, x, w, **kw):
    spec = ConvSpec.from_arrays(x, w, **kw)
    out = np.full(spec.out_shape, np.nan, spec.compute_dtype)
    bilinear.run_prepared(bilinear.prepare_for(eng, spec, w), x, out)
    return out, spec


def test_generic_non_separable_matrices():
    # an algorithm given only by its full matrices runs on the same engine
    nat = sfc_2d(4, 4, 3)
    eng = bilinear.engine_for(Bilinear2D.from_matrices("generic", 4, 3, nat.BT, nat.G, nat.AT))
    x, w, _ = make_data((2, 3, 9, 10), (2, 3, 3, 3), bias=False)
    y, spec = _run(eng, x, w, padding=1)
    check_against_reference(y, x, w, None, {"padding": 1},
                            bilinear.error_bound(eng, spec, np.float32))


@pytest.mark.parametrize("small_c,gemm", [(1, "blas"), (1000, "blas"), (1, "microkernel"),
                                          (1, "microkernel, channels split")])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("chunk_tiles", [1, 6, 50, 10_000])
@pytest.mark.parametrize("x_shape", [(3, 4, 11, 9), (3, 4, 5, 9), (1, 4, 23, 9)])
def test_chunking_threads_and_layouts(monkeypatch, threads, chunk_tiles, small_c, gemm, x_shape):
    # blocks per thread, a block's chunks dealt out to the threads, a single tile row with
    # every step split across threads, one thread; channel- and tile-vector input transforms;
    # the point GEMMs on the BLAS or on the microkernel (3 of 32 lanes used), the threads
    # splitting the tiles or the output channels: all against the reference
    monkeypatch.setattr(bilinear, "CHUNK_TILES", chunk_tiles)
    monkeypatch.setattr(bilinear, "worker_count", lambda: threads)
    monkeypatch.setattr(bilinear, "SMALL_C", small_c)
    if gemm != "blas":
        monkeypatch.setattr(bilinear, "MK_MIN_CG", 1)
        monkeypatch.setattr(bilinear, "MK_MIN_USE", 0)
        if "split" in gemm:  # the phases would be split: the threads split the channels
            monkeypatch.setattr(bilinear, "HANDOFF_SECONDS", 0)
    x, w, _ = make_data(x_shape, (6, 2, 3, 3), bias=False)
    eng = bilinear.engine("sfc6_6x3")
    y, spec = _run(eng, x, w, padding=1, groups=2)
    check_against_reference(y, x, w, None, {"padding": 1, "groups": 2},
                            bilinear.error_bound(eng, spec, np.float32))


@pytest.mark.parametrize("name", ["winograd_f2x3", "winograd_f6x3", "sfc4_4x3"])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("chunk_tiles", [1, 7, 10_000])
def test_output_planes_aliasing_in_l1(monkeypatch, name, threads, chunk_tiles):
    # 32 x 32 outputs (planes 4 KiB apart) and 24 channels take the buffered output stores:
    # runs of tiles that start and end inside a tile row, partial edge tiles, against the
    # reference
    monkeypatch.setattr(bilinear, "CHUNK_TILES", chunk_tiles)
    monkeypatch.setattr(bilinear, "worker_count", lambda: threads)
    x, w, _ = make_data((2, 8, 34, 34), (24, 8, 3, 3), bias=False)
    eng = bilinear.engine(name)
    y, spec = _run(eng, x, w)
    assert spec.OH * spec.OW * 4 % 4096 == 0
    check_against_reference(y, x, w, None, {}, bilinear.error_bound(eng, spec, np.float32))


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("n,h", [(1, 56), (2, 30), (1, 7), (3, 4)])
def test_plan_blocks_modes(monkeypatch, threads, n, h):
    """Every mode covers each tile row once: whole blocks per thread, a block's chunks dealt out
    in equal numbers to the threads, or a single tile row split by phase."""
    monkeypatch.setattr(bilinear, "worker_count", lambda: threads)
    spec = ConvSpec.from_shapes((n, 64, h, h), (64, 64, 3, 3), 1, 1)
    nimg, cr, nbuf, split = bilinear._plan_blocks(spec, 2, 16)
    TH, TW = bilinear.tiles(spec, 2)
    rows = nimg * TH
    assert 1 <= cr and 1 <= nimg <= n
    if nbuf > 1:
        assert split == 1 and nbuf == threads
    elif split > 1:
        chunks = bilinear._chunk_rows(rows, cr, split)
        assert split == min(threads, rows) and len(chunks) % split == 0
        assert all(1 <= r1 - r0 <= cr for r0, r1 in chunks)
        assert [r for c in chunks for r in range(*c)] == list(range(rows))
    else:
        assert rows < 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads,split_channels", [(1, False), (2, False), (2, True), (3, True)])
def test_microkernel_gemms_match_blas(monkeypatch, dtype, threads, split_channels):
    # a layer with 128 channels takes the microkernel GEMMs (K = 80: a partial lane block),
    # the threads dealing out tiles or splitting the k-blocks; the BLAS path on the same layer
    # agrees within the error bound
    monkeypatch.setattr(bilinear, "worker_count", lambda: threads)
    if split_channels:
        monkeypatch.setattr(bilinear, "HANDOFF_SECONDS", 0)
    x, w, _ = make_data((1, 128, 9, 9), (80, 128, 3, 3), bias=False)
    x, w = x.astype(dtype), w.astype(dtype)
    spec = ConvSpec.from_arrays(x, w, padding=1)
    assert bilinear._microkernel_gemms(spec)
    eng = bilinear.engine("winograd_f4x3")
    assert bool(bilinear._channel_split(spec, eng.alg.m, eng.P)) == split_channels
    bound = bilinear.error_bound(eng, spec, dtype)
    y, _ = _run(eng, x, w, padding=1)
    check_against_reference(y, x, w, None, {"padding": 1}, bound)
    monkeypatch.setattr(bilinear, "MK_MIN_CG", 1 << 30)
    y_blas, _ = _run(eng, x, w, padding=1)
    assert np.abs(y - y_blas).max() <= 2 * bound * np.abs(y_blas).max()


def test_plan_reuse_bit_identical():
    x, w, _ = make_data((2, 8, 12, 12), (8, 8, 3, 3), bias=False)
    p = convolab.plan(x.shape, w, padding=1, algorithm="winograd_f6x3")
    np.testing.assert_array_equal(p(x), p(x))


def test_engines_are_kept_on_disk_for_the_next_process():
    from convolab.algorithms import bilinear as bl

    bl.engine.cache_clear()  # built in this process under another test's cache directory
    eng = bl.engine("sfc4_4x3")
    path = bl._engine_file()
    assert path.parent == convolab.select.cache_dir() and path.name.startswith("engines-")
    stored = bl._load_engines(path)["sfc4_4x3"]
    assert np.array_equal(stored.G, eng.G) and stored.alpha == eng.alpha
    # the exact transforms stay pickled until asked for (ranking and kernels need only floats)
    assert isinstance(stored.exact, bytes) and "alg" not in vars(stored)
    assert (stored.m, stored.r, stored.P) == (eng.alg.m, eng.alg.r, eng.alg.products) == (4, 3, 46)
    assert stored.alg.products == eng.alg.products == 46
    assert np.array_equal(stored.alg.G, eng.alg.G)
    # an unreadable file is ignored (rebuilt), never an error
    bad = path.with_name("engines-corrupt.pickle")
    bad.write_bytes(b"not a pickle")
    assert bl._load_engines(bad) == {}


@pytest.mark.parametrize("mode", sorted(bilinear.MODES))
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("mk", [False, True], ids=["blas", "microkernel"])
def test_each_threading_mode_alone(monkeypatch, mode, threads, mk):
    """Each named mode (`bilinear.MODES`), forced on the same layer, gives the reference's
    result within the bound; `Prepared.kernel` names the GEMMs and the mode that runs."""
    if mode == "channels" and not mk:
        pytest.skip("the k-block split is the microkernel GEMMs' mode")
    if mode == "phases" and mk:
        pytest.skip("with microkernel GEMMs the threads split the k-blocks instead (channels)")
    monkeypatch.setattr(bilinear, "CHUNK_TILES", 6)  # several blocks and chunks
    if mk:
        monkeypatch.setattr(bilinear, "SMALL_C", 1)
        monkeypatch.setattr(bilinear, "MK_MIN_CG", 1)
        monkeypatch.setattr(bilinear, "MK_MIN_USE", 0)
    x, w, _ = make_data((3, 4, 11, 9), (6, 2, 3, 3), bias=False)
    eng = bilinear.engine("sfc6_6x3")
    spec = ConvSpec.from_arrays(x, w, padding=1, groups=2)
    prep = bilinear.prepare_for(eng, spec, w)
    assert prep.mk == mk
    lay = prep.layout(threads)
    forced = lay._replace(nbuf=max(2, lay.nbuf) if mode == "blocks" else 1,
                          split=max(2, threads) if mode == "dealt" else 1,
                          ks=threads if mode == "channels" else 0)
    prep.layouts[threads] = forced
    run = bilinear._Run(prep, x, out := np.full(spec.out_shape, np.nan, np.float32), threads)
    monkeypatch.setattr(bilinear, "worker_count", lambda: threads)
    bilinear._MODE_RUN[mode](run)
    check_against_reference(out, x, w, None, {"padding": 1, "groups": 2},
                            bilinear.error_bound(eng, spec, np.float32))
    said = "serial" if threads == 1 and forced.mode == "phases" else forced.mode
    assert f", {said}: " in prep.kernel(threads) and (mode == said or mode in ("serial", "phases"))
    assert prep.kernel(threads).startswith("microkernel GEMMs" if prep.mk else "BLAS GEMMs")


def test_variants_state_their_engines_kernel_size():
    """`VARIANTS` names each variant's kernel size, which answers ``supports`` without building
    the exact transforms: it must be the engine's."""
    for name, (_, _, r) in bilinear.VARIANTS.items():
        assert bilinear.engine(name).r == r, name
        spec = ConvSpec.from_shapes((1, 4, 9, 9), (4, 4, r + 2, r + 2), padding=1)
        assert "kernel must be" in convolab.registry.get(name).supports(spec)
