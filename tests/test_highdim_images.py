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
