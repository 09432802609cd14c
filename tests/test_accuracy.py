"""The accuracy study: emulations checked against known answers, orderings, the CLI."""

import json

import numpy as np
import pytest

from convolab import accuracy, reference
from convolab.cli import main
from convolab.transforms import sfc_2d, winograd_2d


def test_rel_rmse():
    assert accuracy.rel_rmse([1.0, 1.0], [1.0, 1.0]) == 0.0
    assert accuracy.rel_rmse([1.1, 0.9], [1.0, 1.0]) == pytest.approx(0.1)


def test_tiling_round_trip_is_exact_in_float64():
    # the float64 pipeline behind the emulations: tiles -> transforms -> untile == reference
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 9, 9))
    w = rng.standard_normal((2, 3, 3, 3))
    ref = reference.conv2d(x, w, padding=1)
    for alg in (winograd_2d(4, 3), sfc_2d(6, 6, 3)):
        y = accuracy._int_bilinear(alg, x, w, 1, bits=53)  # 53-bit "quantisation": near-exact
        assert np.abs(y - ref).max() < 1e-9 * np.abs(ref).max()


def test_quantise_levels_and_scales():
    a = np.array([[0.0, 1.0, -2.0], [4.0, 0.5, 0.25]])
    q, s = accuracy._quantise(a, (1,), 4)  # one scale per row, qmax = 7
    assert s.ravel().tolist() == [2 / 7, 4 / 7]
    assert np.abs(q).max() == 7 and np.all(q == np.rint(q))
    assert np.allclose(q * s, a, atol=s.max() / 2)


def test_small_study_orderings():
    rows = accuracy.study(batch=1, channels=8, out_channels=4, size=12, bits=(8, 4), seed=3)
    by = {(r.name, r.kernel): r for r in rows}
    assert len(rows) == 2 + sum(len(v) for v in accuracy.VARIANTS.values())
    for r in rows:
        assert r.errors["fp32"] < 1e-5
        assert r.errors["fp32"] < r.errors["fp16"] < r.errors["int8"] < r.errors["int4"]
    f2, f4 = by[("winograd_f2x3", 3)], by[("winograd_f4x3", 3)]
    f6, sfc = by[("winograd_f6x3", 3)], by[("sfc6_6x3", 3)]
    # larger Winograd tiles lose accuracy; SFC-6 stays near F(2x2) (the paper's claim)
    assert f2.errors["fp16"] < f4.errors["fp16"] < f6.errors["fp16"]
    assert sfc.errors["fp16"] < 0.5 * f4.errors["fp16"]
    assert sfc.errors["int8"] < 0.5 * f4.errors["int8"]
    assert by[("sfc6_6x3", 3)].products_per_output == pytest.approx(88 / 36)
    t = accuracy.targets(rows)
    assert set(t) == {"fp16", "int8"} and t["fp16"]["vs_f4x3"] < 0.5


def test_study_is_reproducible():
    kw = dict(batch=1, channels=4, out_channels=2, size=8, bits=(8,), seed=1,
              variants={3: ["winograd_f2x3"]})
    a = accuracy.study(**kw)
    b = accuracy.study(**kw)
    assert [r.errors for r in a] == [r.errors for r in b]


def test_cli_accuracy(tmp_path, capsys):
    path = tmp_path / "acc.json"
    rc = main(["accuracy", "--batch", "1", "--channels", "4", "--out-channels", "2",
               "--size", "8", "--bits", "8", "--json", str(path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "sfc6_6x3" in out and "int8" in out and "F(4x4,3x3)" in out
    data = json.loads(path.read_text())
    assert {r["name"] for r in data["rows"]} >= {"direct", "winograd_f4x3", "sfc6_6x5"}
    assert main(["accuracy", "--size", "0"]) == 2


def test_accuracy_command_compute_returns_rows_and_targets():
    # the command's compute step alone: figures, nothing printed
    from convolab.commands import accuracy as cmd

    cfg = cmd.AccuracyConfig(batch=1, channels=4, out_channels=2, size=8, bits=(8,), seed=1)
    assert cfg.settings == ["fp32", "fp16", "int8"]
    res = cmd.compute(cfg)
    assert set(res) == {"rows", "targets"}
    assert len(res["rows"]) == 2 + sum(len(v) for v in accuracy.VARIANTS.values())
    assert all(set(r.errors) == set(cfg.settings) for r in res["rows"])
    assert set(res["targets"]) == {"fp16", "int8"} and res["targets"]["int8"]["vs_f4x3"] < 1
