"""convolab.highdim on scikit-image's bundled photographs: accuracy, learned SBS, CLI, bench.

Needs scikit-image (bundled photographs; imageio comes with it) in the test environment.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage import data, img_as_float

from convolab import ConvError
from convolab.cli import main
from convolab.cli import main as cli_main
from convolab.highdim import bilateral_filter, fit_sbs
from convolab.highdim.bench import psnr
from convolab.highdim.exact import exact_bilateral, exact_filter
from convolab.highdim.learned import LearnedSBS, gaussian_sbs, rmse


@pytest.fixture(scope="module")
def astronaut():
    return img_as_float(data.astronaut())


@pytest.fixture(scope="module")
def camera():
    return img_as_float(data.camera())


# measured on these crops: permutohedral 45-52 dB, grid 63-69 dB
@pytest.mark.parametrize("ss,sr", [(2.0, 0.05), (4.0, 0.1), (8.0, 0.2)])
def test_permutohedral_psnr_on_photo(astronaut, ss, sr):
    crop = astronaut[180:244, 200:264]
    ex = exact_bilateral(crop, crop / sr, ss)
    assert psnr(bilateral_filter(crop, ss, sr), ex) >= 40.0


@pytest.mark.parametrize("ss,sr", [(2.0, 0.05), (4.0, 0.1), (8.0, 0.2)])
def test_grid_psnr_on_grey_photo(camera, ss, sr):
    crop = camera[200:264, 200:264]
    ex = exact_bilateral(crop[..., None], crop[..., None] / sr, ss)[..., 0]
    assert psnr(bilateral_filter(crop, ss, sr, method="grid"), ex) >= 50.0
    assert psnr(bilateral_filter(crop, ss, sr), ex) >= 40.0


def _grey_features(img, ss, sr):
    H, W = img.shape
    yy, xx = np.mgrid[:H, :W]
    return np.stack([yy / ss, xx / ss, img / sr], -1).reshape(-1, 3), img.reshape(-1, 1)


@pytest.mark.parametrize("kernel", ["exponential", "cauchy"])
def test_learned_sbs_lowers_error_of_non_gaussian_kernel(camera, kernel):
    # train on one part of the photograph, test on another (measured: exponential
    # 0.050 -> 0.017, Cauchy 0.096 -> 0.047 on the test crop)
    ptr, vtr = _grey_features(camera[::4, ::4][20:44, 40:64], 3.0, 0.2)
    pte, vte = _grey_features(camera[::4, ::4][70:94, 60:84], 3.0, 0.2)
    model = fit_sbs(ptr, vtr, kernel, radius=2, groups=[0, 0, 1])
    assert model.history["rmse_after"] < 0.7 * model.history["rmse_before"]
    yte = exact_filter(vte, pte, kernel)
    before = rmse(gaussian_sbs(3, 2).filter(vte, pte), yte)
    after = rmse(model.filter(vte, pte), yte)
    assert after < 0.7 * before
    assert model.scale[0] == model.scale[1]  # grouped scales
    assert np.all(model.taps >= 0) and model.taps[0] == 1.0


def test_gaussian_operator_is_the_permutohedral_filter(camera):
    p, v = _grey_features(camera[100:130, 100:130], 3.0, 0.1)
    from convolab.highdim import gaussian_filter

    np.testing.assert_array_equal(gaussian_sbs(3, 1).filter(v, p), gaussian_filter(v, p))
    # radius 2 with a zero second tap gives the same numbers up to rounding
    np.testing.assert_allclose(gaussian_sbs(3, 2).filter(v, p), gaussian_filter(v, p),
                               rtol=1e-13)
    with pytest.raises(ConvError, match="fitted for d = 3"):
        LearnedSBS(taps=np.array([1.0, 0.5]), scale=np.ones(3)).filter(v, p[:, :2])


def test_fit_sbs_errors():
    p = np.zeros((4, 2))
    with pytest.raises(ConvError, match="must match"):
        fit_sbs(p, np.zeros((5, 1)))
    with pytest.raises(ConvError, match="unknown kernel"):
        fit_sbs(p, np.zeros((4, 1)), kernel="box")
    with pytest.raises(ConvError, match="one label per dimension"):
        fit_sbs(p, np.zeros((4, 1)), groups=[0, 0, 1])
    with pytest.raises(ConvError, match="nothing to fit"):
        fit_sbs(p, np.zeros((4, 1)), fit_scale=False, fit_taps=False)


# ----------------------------------------------------------------------------- CLI


def test_cli_png_roundtrip(tmp_path, astronaut, capsys):
    import imageio.v3 as iio

    rgb8 = data.astronaut()[200:240, 220:260]
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    iio.imwrite(src, rgb8)
    rc = main(["bilateral", str(src), str(dst), "--sigma-spatial", "3", "--sigma-color", "0.1"])
    assert rc == 0 and "permutohedral" in capsys.readouterr().out
    got = iio.imread(dst)
    want = np.clip(np.rint(bilateral_filter(rgb8, 3.0, 0.1) * 255), 0, 255).astype(np.uint8)
    assert got.dtype == np.uint8 and got.shape == rgb8.shape
    np.testing.assert_array_equal(got, want)


def test_cli_npy_grid_alpha_and_guide(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.random((20, 24))
    np.save(tmp_path / "g.npy", grey)
    rc = main(["bilateral", str(tmp_path / "g.npy"), str(tmp_path / "o.npy"),
               "--sigma-spatial", "2", "--sigma-color", "0.2", "--method", "grid"])
    assert rc == 0
    out = np.load(tmp_path / "o.npy")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, bilateral_filter(grey, 2.0, 0.2, method="grid"), rtol=1e-6)
    # RGBA: alpha passes through, colour filtered; joint with a grey guide
    rgba = rng.random((20, 24, 4))
    np.save(tmp_path / "a.npy", rgba)
    rc = main(["bilateral", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"),
               "--sigma-spatial", "2", "--sigma-color", "0.2", "--guide", str(tmp_path / "g.npy")])
    assert rc == 0
    out = np.load(tmp_path / "b.npy")
    np.testing.assert_allclose(out[..., 3], rgba[..., 3], rtol=1e-6)
    from convolab.highdim import joint_bilateral_filter

    want = joint_bilateral_filter(rgba[..., :3], grey, 2.0, 0.2)
    np.testing.assert_allclose(out[..., :3], want, rtol=1e-6)


def test_cli_errors(tmp_path, capsys):
    np.save(tmp_path / "g.npy", np.ones((5, 5)))
    rc = main(["bilateral", str(tmp_path / "missing.png"), str(tmp_path / "o.png"),
               "--sigma-spatial", "2", "--sigma-color", "0.1"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(["bilateral", str(tmp_path / "g.npy"), str(tmp_path / "o.npy"),
               "--sigma-spatial", "-2", "--sigma-color", "0.1"])
    assert rc == 2 and "sigma_spatial" in capsys.readouterr().err


def test_bilateral_compute_returns_the_image_and_writes_nothing(tmp_path, capsys):
    from convolab.commands import highdim

    rgb8 = (np.random.default_rng(1).random((10, 12, 3)) * 255).astype(np.uint8)
    np.save(tmp_path / "in.npy", rgb8)
    cfg = highdim.BilateralConfig(str(tmp_path / "in.npy"), str(tmp_path / "out.png"), 2.0, 0.1)
    res = highdim.compute(cfg)
    assert capsys.readouterr().out == "" and not (tmp_path / "out.png").exists()
    np.testing.assert_array_equal(res.image, rgb8)
    want = np.clip(np.rint(bilateral_filter(rgb8, 2.0, 0.1) * 255), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(res.filtered, want)
    assert res.seconds > 0
    doc = highdim.bilateral_json(cfg, res)
    assert doc["shape"] == [10, 12, 3] and doc["dtype"] == "uint8" and doc["method"] == "permutohedral"


def test_bench_quick_accuracy(tmp_path):
    out = tmp_path / "b.json"
    assert cli_main(["bilateral-bench", "--quick", "--sections", "accuracy", "--exact-step", "8",
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["accuracy"]
    assert len(rows) == 4
    assert all(r["psnr_permutohedral"] >= 40 for r in rows)
    assert all(r["psnr_grid"] >= 50 for r in rows if r["d"] == 3)


@pytest.mark.parametrize("opt, value", [("--repeats", "0"), ("--exact-step", "-2")])
def test_bench_refuses_bad_counts_before_computing(opt, value, capsys):
    rc = cli_main(["bilateral-bench", "--quick", "--sections", "accuracy", opt, value])
    captured = capsys.readouterr()
    assert rc == 2 and opt in captured.err and value in captured.err
    assert "accuracy:" not in captured.out  # no section ran


def test_bench_compute_accuracy_returns_rows_and_prints_nothing(capsys):
    from convolab.highdim import bench

    rows = bench.compute_accuracy(quick=True, exact_step=16, images=["camera"],
                                  sigma_pairs=[(4.0, 0.1)])
    assert capsys.readouterr().out == ""
    assert len(rows) == 1
    (r,) = rows
    assert r["image"] == "camera" and r["shape"] == [128, 128] and r["d"] == 3
    assert (r["sigma_spatial"], r["sigma_color"]) == (4.0, 0.1)
    # measured 46.9 dB (permutohedral) and 67 dB (grid) on this crop
    assert 40 <= r["psnr_permutohedral"] < 80 and r["psnr_grid"] >= 55
    assert r["exact_s"] > 0 and r["permutohedral_s"] > 0


def test_bench_compute_speed_returns_rows_and_prints_nothing(capsys):
    from convolab.highdim import bench

    img = bench.speed_image(True)[:40, :40]
    rows = bench.compute_speed(img, repeats=1, exact_step=4, sigma_pairs=[(2.0, 0.1)])
    assert capsys.readouterr().out == ""
    assert len(rows) == 1
    (r,) = rows
    assert r["window"] == 2 * 6 + 1 and r["threads"] >= 1
    assert r["skimage_over_permutohedral"] == r["skimage_s"] / r["permutohedral_s"]
    # the lattice approximates the exact filter far better than scikit-image's zero-padded one
    assert r["psnr_permutohedral"] >= 35 and r["psnr_permutohedral"] > r["psnr_skimage"]
    assert r["psnr_interior_permutohedral"] >= 35


def test_bench_compute_scaling_returns_tables_and_prints_nothing(capsys):
    from convolab.highdim import bench

    out = bench.compute_scaling(repeats=1, sides=[16, 32], side=24, dims=[2, 3, 5])
    assert capsys.readouterr().out == ""
    assert [r["n"] for r in out["vs_n"]] == [256, 1024]
    assert [r["d"] for r in out["vs_d"]] == [2, 3, 5]
    # each point splats onto d + 1 lattice vertices: 1 <= m <= n (d + 1)
    assert all(1 <= r["lattice"] <= r["n"] * 6 for r in out["vs_n"])
    assert all(1 <= r["lattice"] <= 24 * 24 * (r["d"] + 1) for r in out["vs_d"])
    assert all(r["seconds"] > 0 for r in out["vs_n"] + out["vs_d"])
    assert all(np.isfinite(out[k]) for k in ("slope_n", "slope_d", "slope_d_per_point"))


def test_bench_compute_learned_returns_rows_and_prints_nothing(capsys):
    from convolab.highdim import bench

    rows = bench.compute_learned(size=16, plane_n=150)
    assert capsys.readouterr().out == ""
    # exponential and Cauchy at radius 2 and 3, then the Gaussian at d = 8 and 16; train, test
    assert len(rows) == 12
    assert [(r["kernel"], r["set"]) for r in rows[:2]] == [("exponential", "train"),
                                                             ("exponential", "test")]
    assert [(r["d"], r["set"]) for r in rows[8:]] == [(8, "train"), (8, "test"), (16, "train"),
                                                     (16, "test")]
    for r in rows:
        assert len(r["taps"]) == r["radius"] + 1 and r["taps"][0] == pytest.approx(1.0)
        if r["set"] == "train":  # fitted on these points: no worse than the Gaussian taps
            assert r["rmse_learned"] <= r["rmse_gaussian"] + 1e-9
