"""convolab.graph: kernels vs references, autograd, graphs, splits, metrics, scene, model, CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from convolab.errors import ConvError
from convolab.graph import metrics, splits
from convolab.graph import propagate as gp
from convolab.graph import scene as gs
from convolab.graph import superpixels as gsp
from convolab.graph.svm import fit_svm

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")


def _labels(rng, h=12, w=10, n=7):
    """A label map 0..n-1, every label used, in patches (so segments touch several others)."""
    lab = (np.arange(h)[:, None] // 3 * 4 + np.arange(w)[None, :] // 3) % n
    lab[rng.random((h, w)) < 0.15] = rng.integers(0, n)
    return gsp.relabel(lab)


def _dense_q(labels):
    """(S, P) float64 matrix of segment means."""
    lab = np.asarray(labels).ravel()
    q = np.zeros((lab.max() + 1, lab.size))
    q[lab, np.arange(lab.size)] = 1
    return q / q.sum(axis=1, keepdims=True)


# -- segment mean / broadcast / CSR x dense ------------------------------------------------------

def test_segment_mean_and_broadcast_match_dense_float64_reference():
    rng = np.random.default_rng(0)
    lab = _labels(rng)
    seg = gp.Segments.from_labels(lab)
    x = rng.normal(size=(lab.size, 5)).astype(np.float32)
    q = _dense_q(lab)
    np.testing.assert_allclose(gp.segment_mean(seg, x), q @ x.astype(np.float64), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gp.segment_sum(seg, x), (q > 0) @ x.astype(np.float64), rtol=1e-6, atol=1e-5)
    h = rng.normal(size=(seg.n_segments, 3))
    np.testing.assert_array_equal(gp.broadcast(seg, h), (q > 0).T.astype(float) @ h)
    # float64 in, float64 out, exact against the reference to rounding
    np.testing.assert_allclose(gp.segment_mean(seg, x.astype(np.float64)), q @ x, rtol=1e-13)


def test_autograd_functions_pass_gradcheck():
    from convolab.graph import autograd as ag

    rng = np.random.default_rng(1)
    lab = gsp.relabel(np.arange(30).reshape(6, 5) // 7 + rng.integers(0, 2, (6, 5)))
    assert lab.max() >= 3
    seg = gp.Segments.from_labels(lab)
    a = gp.normalized_adjacency(gsp.region_adjacency(lab, rng.random((6, 5, 2))), dtype=np.float64)
    x = torch.tensor(rng.normal(size=(lab.size, 3)), requires_grad=True)
    h = torch.tensor(rng.normal(size=(seg.n_segments, 3)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ag.segment_mean(seg, t), (x,))
    assert torch.autograd.gradcheck(lambda t: ag.broadcast(seg, t), (h,))
    m = gp.CSR.from_scipy(sp.random(4, 4, density=0.6, random_state=2), dtype=np.float64)
    h4 = torch.tensor(rng.normal(size=(4, 3)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ag.propagate(m, m.transpose(), t), (h4,))
    assert torch.autograd.gradcheck(lambda t: ag.propagate(a, a, ag.segment_mean(seg, t)), (x,))


def test_csr_kernel_matches_scipy():
    rng = np.random.default_rng(2)
    a = sp.random(300, 200, density=0.05, random_state=3, dtype=np.float64)
    x = rng.normal(size=(200, 17))
    for dt, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        got = gp.csr_matmul(gp.CSR.from_scipy(a, dtype=dt), x.astype(dt))
        assert got.dtype == dt
        np.testing.assert_allclose(got, a @ x, rtol=tol, atol=tol)


_THREADS_SCRIPT = r"""
import hashlib, numba, numpy as np, scipy.sparse as sp
from convolab.graph import propagate as gp
rng = np.random.default_rng(0)
a = gp.CSR.from_scipy(sp.random(3000, 3000, density=0.01, random_state=1))
x = rng.normal(size=(3000, 64)).astype(np.float32)
seg = gp.Segments.from_labels(rng.integers(0, 500, 3000))
out = []
for t in (1, 2):
    numba.set_num_threads(t)
    r = [gp.csr_matmul(a, x), gp.segment_mean(seg, x), gp.broadcast(seg, x[:500])]
    out.append(hashlib.sha256(b"".join(v.tobytes() for v in r)).hexdigest())
print(out[0] == out[1], out[0])
"""


def test_kernels_bit_identical_for_one_and_two_threads():
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "True", r.stdout


# -- graphs ---------------------------------------------------------------------------------

def test_region_adjacency_matches_brute_force_loop():
    rng = np.random.default_rng(4)
    lab = _labels(rng, 11, 9, 8)
    feat = rng.random((11, 9, 3))
    a = gsp.region_adjacency(lab, feat).toarray()
    n = lab.max() + 1
    means = np.array([feat[lab == s].mean(axis=0) for s in range(n)])
    pairs = set()
    for i in range(11):
        for j in range(9):
            for di, dj in ((0, 1), (1, 0)):
                if i + di < 11 and j + dj < 9 and lab[i, j] != lab[i + di, j + dj]:
                    pairs.add((lab[i, j], lab[i + di, j + dj]))
                    pairs.add((lab[i + di, j + dj], lab[i, j]))
    d2 = {p: ((means[p[0]] - means[p[1]]) ** 2).sum() for p in pairs}
    s2 = np.median(list(d2.values())) / 2
    ref = np.zeros((n, n))
    for (u, v), d in d2.items():
        ref[u, v] = np.exp(-d / (2 * s2))
    np.testing.assert_allclose(a, ref, rtol=1e-12)
    assert (a > 0).sum() == len(pairs) and np.all(np.diag(a) == 0)


def test_normalized_adjacency_formula():
    rng = np.random.default_rng(5)
    w = rng.random((6, 6)) * (rng.random((6, 6)) < 0.5)
    w = np.triu(w, 1) + np.triu(w, 1).T
    a = gp.normalized_adjacency(w, dtype=np.float64).to_scipy().toarray()
    b = w + np.eye(6)
    d = b.sum(1)
    np.testing.assert_allclose(a, b / np.sqrt(np.outer(d, d)), rtol=1e-14)


def test_khop_matches_breadth_first_search():
    a = sp.random(30, 30, density=0.06, random_state=7)
    a = ((a + a.T) > 0).astype(float)
    for k in (1, 2, 3):
        got = (gsp.khop(a, k).toarray() > 0)
        dense = a.toarray() > 0
        ref = np.zeros_like(dense)
        for s in range(30):
            seen, front = {s}, {s}
            for _ in range(k):
                front = {v for u in front for v in np.flatnonzero(dense[u])} - seen
                seen |= front
            ref[s, sorted(seen - {s})] = True
        np.testing.assert_array_equal(got, ref)


def test_nesting_gives_each_fine_segment_one_parent():
    rng = np.random.default_rng(8)
    fine = gsp.relabel(rng.integers(0, 40, (20, 20)))
    coarse = gsp.relabel(np.arange(20)[:, None] // 7 * 3 + np.arange(20)[None, :] // 7)
    parent, nested = gsp.nest(fine, coarse)
    np.testing.assert_array_equal(nested, parent[fine])
    for f in range(fine.max() + 1):
        assert np.unique(nested[fine == f]).size == 1
    # the shipped real segmentations are nested already
    maps = gs.indian_pines_segments()
    for i in range(3):
        pairs = np.unique(maps[i].astype(np.int64) * 4096 + maps[i + 1])
        assert pairs.size == np.unique(maps[i]).size


def test_build_scales_on_scene_crop():
    scn = gs.make_scene(seed=0)
    g = gsp.build_scales(scn.cube[:60, :60], n_segments=(60, 30, 15), n_components=10)
    assert g.pcs.shape == (60, 60, 10)
    assert len(g.segments) == 3 and g.sizes[0] > g.sizes[1] > g.sizes[2]
    for p, (f, c) in zip(g.parents, zip(g.labels[:-1], g.labels[1:], strict=True), strict=True):
        np.testing.assert_array_equal(c, p[f])
    m, mt = g.cross[(0, 2)]
    np.testing.assert_allclose(np.asarray(m.to_scipy().sum(axis=1)).ravel(), 1, rtol=1e-6)
    gh = gsp.build_scales(scn.cube[:60, :60], n_segments=(60,), n_components=10, hops=(1, 2, 3))
    assert [a.nnz for a in gh.adjacency] == sorted(a.nnz for a in gh.adjacency)


# -- splits and metrics ------------------------------------------------------------------------

def test_random_split_is_stratified():
    gt = gs.indian_pines_gt()
    tr, te = splits.random_split(gt, 15, seed=3)
    counts = np.bincount(gt[tr], minlength=17)[1:]
    assert list(counts) == [15 if n >= 30 else n // 2 for n in np.bincount(gt.ravel())[1:]]
    assert not (tr & te).any() and ((tr | te) == (gt > 0)).all()


@pytest.mark.parametrize("radius", [0, 3, 6])
def test_disjoint_split_guarantee(radius):
    gt = gs.indian_pines_gt()
    seg = gs.indian_pines_segments()[0]
    tr, te = splits.disjoint_split(gt, 15, seed=1, radius=radius, segments=seg)
    assert te.any() and not (tr & te).any() and (gt[te] > 0).all()
    ty, tx = np.nonzero(tr)
    ey, ex = np.nonzero(te)
    cheb = np.maximum(np.abs(ey[:, None] - ty[None]), np.abs(ex[:, None] - tx[None])).min(axis=1)
    assert cheb.min() > radius
    assert not np.isin(seg[te], seg[tr]).any()
    assert set(np.unique(gt[tr])) == set(range(1, 17))


def test_metrics_on_hand_worked_confusion():
    # true: 0 0 0 0 1 1 2 2 2 2 ; pred: 0 0 1 0 1 2 2 2 0 2
    t = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    p = np.array([0, 0, 1, 0, 1, 2, 2, 2, 0, 2])
    m = metrics.confusion(t, p, 3)
    np.testing.assert_array_equal(m, [[3, 1, 0], [0, 1, 1], [1, 0, 3]])
    assert metrics.overall_accuracy(m) == pytest.approx(0.7)
    assert metrics.average_accuracy(m) == pytest.approx((0.75 + 0.5 + 0.75) / 3)
    # p_o = 0.7, p_e = (4*4 + 2*2 + 4*4) / 100 = 0.36
    assert metrics.kappa(m) == pytest.approx((0.7 - 0.36) / 0.64)
    # a class absent from y_true is left out of AA; perfect prediction -> kappa 1
    m2 = metrics.confusion(np.array([0, 0, 2]), np.array([0, 0, 2]), 3)
    assert metrics.average_accuracy(m2) == 1.0 and metrics.kappa(m2) == 1.0


# -- bad input -------------------------------------------------------------------------------

def test_bad_input_raises_convError_naming_it():
    rng = np.random.default_rng(9)
    lab = _labels(rng)
    seg = gp.Segments.from_labels(lab)
    with pytest.raises(ConvError, match="shape mismatch: pixel features has 119 rows, expected 120"):
        gp.segment_mean(seg, np.zeros((119, 3)))
    with pytest.raises(ConvError, match="NaN"):
        gp.segment_mean(seg, np.full((120, 3), np.nan))
    with pytest.raises(ConvError, match="shape mismatch"):
        gp.csr_matmul(gp.CSR.from_scipy(sp.identity(5)), np.zeros((4, 2)))
    with pytest.raises(ConvError, match="label 2 is empty"):
        gp.Segments.from_labels(np.array([0, 1, 3]))
    with pytest.raises(ConvError, match="class 3 is empty"):
        splits.random_split(np.array([[1, 2], [4, 0]]))
    with pytest.raises(ConvError, match="NaN"):
        gsp.pca(np.full((4, 4, 3), np.nan))
    with pytest.raises(ConvError, match="shape mismatch"):
        gsp.region_adjacency(lab, np.zeros((5, 5, 2)))
    with pytest.raises(ConvError, match="symmetric"):
        gp.normalized_adjacency(np.array([[0, 1.0], [0, 0]]))
    with pytest.raises(ConvError, match="shape mismatch"):
        metrics.confusion([0, 1], [0], 2)
    with pytest.raises(ConvError, match="layout"):
        gs.make_scene("salinas")
    with pytest.raises(ConvError, match="shape mismatch"):
        fit_svm(np.zeros((4, 2)), np.zeros(3))


# -- scene and SVM -----------------------------------------------------------------------------

def test_make_scene_deterministic_and_on_the_real_layout():
    a = gs.make_scene(seed=2)
    b = gs.make_scene(seed=2)
    np.testing.assert_array_equal(a.cube, b.cube)
    assert a.cube.shape == (145, 145, 180) and a.cube.dtype == np.float32
    np.testing.assert_array_equal(a.labels, gs.indian_pines_gt())
    assert np.bincount(a.labels.ravel())[1:].tolist() == [54, 1434, 834, 234, 497, 747, 26, 489, 20, 968,
                                                           2468, 614, 212, 1294, 380, 95]
    assert not np.array_equal(a.cube, gs.make_scene(seed=3).cube)
    # each field is of one class
    lab, f = a.labels.ravel(), a.fields.ravel()
    sel = lab > 0
    assert np.unique(f[sel] * 17 + lab[sel]).size == np.unique(f[sel]).size


def test_fields_layout_and_synthetic_fallback():
    s = gs.make_scene("fields", seed=1, library="synthetic")
    assert s.library == "synthetic" and s.cube.shape == (145, 145, 180)
    assert set(np.unique(s.labels)) == set(range(17)) and np.isfinite(s.cube).all()
    # vegetation red edge in the synthetic library: NIR above red for the canopies
    lib = gs.synthetic_library(0)
    red, nir = np.argmin(np.abs(lib.wavelengths - 0.67)), np.argmin(np.abs(lib.wavelengths - 0.85))
    assert (lib.spectra["canopy"][:, nir] > 2 * lib.spectra["canopy"][:, red]).all()


def test_svm_separates_blobs_and_beats_chance_on_scene():
    rng = np.random.default_rng(10)
    centres = rng.normal(size=(3, 5)) * 6
    x = np.concatenate([c + rng.normal(size=(30, 5)) for c in centres])
    y = np.repeat([1, 2, 3], 30)
    m = fit_svm(x[::2], y[::2])
    assert (m.predict(x[1::2]) == y[1::2]).all()


# -- model, training, inference through convolab.conv2d ----------------------------------------

@pytest.fixture(scope="module")
def small():
    from convolab.graph import train

    torch.set_num_threads(1)
    scn = gs.make_scene(seed=0)
    crop = gs.Scene(scn.cube[:48, :48], scn.labels[:48, :48], scn.fields[:48, :48], scn.wavelengths,
                    scn.class_names, scn.layout, scn.library, scn.seed)
    return train.prepare(crop, n_segments=(40, 20, 10), n_components=12)


@pytest.mark.parametrize("variant", ["cnn", "single", "multi", "full"])
def test_compiled_inference_matches_torch(small, variant):
    from convolab.graph import infer, train
    from convolab.graph.model import MGRNet

    torch.manual_seed(0)
    model = MGRNet(12, 16, len(small.graph.segments), variant, width=8, single_scale=1)
    tr = (small.scene.labels > 0) & (np.arange(48 * 48).reshape(48, 48) % 7 == 0)
    secs, losses = train.fit(model, small, tr, epochs=3)
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        ref = model(small.x, small.graph).numpy().T.reshape(1, 16, 48, 48)
    comp = infer.compile_model(model, small.graph, small.x.shape)
    np.testing.assert_allclose(comp.logits(small.x.numpy()), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConvError, match="shape mismatch"):
        comp.logits(np.zeros((1, 12, 47, 48), np.float32))


def test_full_model_learns_crop(small):
    from convolab.graph import train

    lab = small.scene.labels
    rng = np.random.default_rng(0)
    tr = np.zeros(lab.size, bool)
    for c in np.unique(lab[lab > 0]):
        idx = np.flatnonzero(lab.ravel() == c)
        tr[rng.choice(idx, min(5, idx.size), replace=False)] = True
    tr = tr.reshape(lab.shape)
    te = (lab > 0) & ~tr
    r = train.run(small, "full", tr, te, seed=0, epochs=40, width=16, dropout=0.0)
    assert r.losses[-1] < 0.1 * r.losses[0]
    assert r.scores["oa"] > 0.6


def test_cli_hsi_runs_and_writes_map(tmp_path):
    from convolab.cli import main

    code = main(["hsi", "--seeds", "1", "--epochs", "2", "--methods", "cnn,single", "--splits", "random,disjoint",
                 "--segments", "100,50", "--width", "8", "--threads", "1", "--json", str(tmp_path / "r.json"),
                 "--map", str(tmp_path / "map.png")])
    assert code == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert set(res["results"]) == {"random", "disjoint"} and len(res["results"]["random"]["cnn"]) == 1
    assert set(res["results"]["random"]) == {"cnn", "single0", "single1"}
    assert (tmp_path / "map.png").stat().st_size > 1000
    assert main(["hsi", "--methods", "cnn,gat"]) == 2
    assert main(["hsi", "--single-scale", "5", "--segments", "100,50"]) == 2


def test_hsi_compute_returns_the_figures_and_prints_nothing(capsys):
    from convolab.commands import hsi

    cfg = hsi.HsiConfig(seeds=1, epochs=2, per_class=3, methods=("svm", "single", "full"), splits=("random",),
                        segments=(100, 50), single_scale="1", width=8, dropout=0.0)
    prep = hsi.prepare_scene(cfg)
    res = hsi.compute(cfg, prep=prep)
    assert capsys.readouterr().out == ""
    assert [k for k, _, _ in res.runs] == ["svm", "single1", "full"]
    assert res.labels["single1"] == f"single-scale ({prep.graph.sizes[1]} sp)"
    assert set(res.results) == {"random"} and set(res.results["random"]) == {"svm", "single1", "full"}
    for rows in res.results["random"].values():
        (r,) = rows
        assert r["seed"] == 0 and 0 <= r["oa"] <= 1 and r["n_train"] > 0 and r["n_test"] > 0
    assert res.maps[("random", "full")].shape == prep.scene.labels.shape
    doc = hsi.hsi_json(cfg, res)
    assert doc["meta"]["segments"] == list(prep.graph.sizes) and doc["results"] is res.results
