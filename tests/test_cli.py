"""The convolab command: algorithms table and a small bench run with JSON output."""

import json

import pytest

from convolab.cli import main


def test_algorithms_table(capsys):
    assert main(["algorithms"]) == 0
    out = capsys.readouterr().out
    assert "direct" in out and "im2col" in out and "deterministic" in out


def test_bench_runs_and_writes_json(tmp_path, capsys):
    path = tmp_path / "b.json"
    rc = main(["bench", "--suite", "default", "--layers", "dw 3x3", "--algorithms", "direct,im2col",
               "--repeat", "1", "--json", str(path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "GFLOP/s" in out and "GEMM" in out and "BLAS" in out
    assert "geomean speed-up vs im2col" in out
    data = json.loads(path.read_text())
    recs = {r["impl"]: r for r in data["records"]}
    assert set(recs) == {"direct", "im2col"}
    for r in recs.values():
        assert r["ms"] > 0 and r["max_rel_err"] < 1e-5 and r["spec"].startswith("N1 C128 56x56")
    assert data["machine"]["gemm_gflops"] > 0


def test_bench_bad_arguments(capsys):
    assert main(["bench", "--algorithms", "nope", "--repeat", "1"]) == 2
    assert "unknown algorithm 'nope'" in capsys.readouterr().err
    assert main(["bench", "--layers", "no-such-layer"]) == 2
    assert main(["bench", "--suite", "nope"]) == 2
    assert "unknown suite 'nope'; available:" in capsys.readouterr().err


def test_bench_onnxruntime_peer(capsys):
    pytest.importorskip("onnxruntime")
    rc = main(["bench", "--layers", "dw 3x3", "--algorithms", "direct", "--peers", "onnxruntime", "--repeat", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "onnxruntime (peer)" in out and "geomean speed-up vs onnxruntime" in out


def test_algorithms_markdown_probes_capabilities(capsys):
    import convolab

    assert main(["algorithms", "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| algorithm | kernels | stride 2 |")
    rows = {ln.split("|")[1].strip(" `"): ln for ln in lines[2:]}
    assert set(rows) == {a.name for a in convolab.list_algorithms()}
    assert "| 3x3 | no |" in rows["winograd_f4x3"]  # Winograd: 3x3 only, no stride 2
    assert rows["direct"].count("| yes |") >= 1 and "11x11" in rows["direct"]


def test_calibrate_command(tmp_path, monkeypatch, capsys):
    from convolab import costmodel

    monkeypatch.setenv("CONVOLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(costmodel, "CALIBRATION_LAYERS", [costmodel._layer(1, 8, 10, 8, 3)])
    assert main(["calibrate"]) == 0
    out = capsys.readouterr().out
    assert "GEMM" in out and "direct" in out and (tmp_path / "calibration.json").exists()


def test_calibrate_compute_returns_the_constants(tmp_path, monkeypatch, capsys):
    # the command's compute step alone: the figures and where they went, nothing printed
    from convolab import costmodel
    from convolab.commands import calibrate as cmd

    monkeypatch.setenv("CONVOLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(costmodel, "CALIBRATION_LAYERS", [costmodel._layer(1, 8, 10, 8, 3)])
    res = cmd.compute(cmd.CalibrateConfig())
    assert capsys.readouterr().out == ""
    assert res["machine"].gemm_gflops > 0 and res["threads"] >= 1 and res["workers"] is False
    assert res["stored"] == str(tmp_path / "calibration.json") and (tmp_path / "calibration.json").exists()
    names = [r[0] for r in res["rates"]]
    assert any(n.startswith("direct") for n in names) and all(r[3] == 1 for r in res["rates"])
    assert main(["calibrate", "--threads", "0"]) == 2
    assert "--threads must be in 1.." in capsys.readouterr().err


def test_bench_plot_from_the_run_and_from_its_json(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    js, png, png2 = tmp_path / "b.json", tmp_path / "b.png", tmp_path / "again.png"
    rc = main(["bench", "--layers", "dw 3x3", "--algorithms", "direct,im2col", "--repeat", "1",
               "--json", str(js), "--plot", str(png)])
    assert rc == 0 and f"wrote {png}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["bench", "--from-json", str(js), "--plot", str(png2)]) == 0
    assert png2.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the chart's content: one row per layer, auto labelled with its pick, the peers' bars
    from convolab.bench import plot as P

    data = {"suite": "t", "batch": 1, "machine": {"cpu": "X", "threads": 2, "gemm_gflops": 100.0},
            "records": [
                {"layer": "L1", "impl": "direct", "kind": "algorithm", "gflops": 50.0},
                {"layer": "L1", "impl": "im2col", "kind": "algorithm", "gflops": 80.0},
                {"layer": "L1", "impl": "auto", "kind": "algorithm", "gflops": 79.0, "chosen": "im2col"},
                {"layer": "L1", "impl": "onnxruntime", "kind": "peer", "gflops": 70.0},
                {"layer": "L2", "impl": "direct", "kind": "algorithm", "gflops": 40.0},
                {"layer": "L2", "impl": "fft", "kind": "algorithm", "skipped": "no"},
            ]}
    drawn = {}
    import matplotlib.axes

    real = matplotlib.axes.Axes.barh

    def barh(self, y, width, **kw):
        drawn.setdefault(kw.get("color"), []).append(width)
        return real(self, y, width, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(matplotlib.axes.Axes, "barh", barh)
    try:
        P.plot(data, str(tmp_path / "c.png"))
    finally:
        mp.undo()
    assert drawn[P._AUTO] == [79.0] and sorted(drawn[P._BEST]) == [40.0, 80.0]
    assert drawn[P._PEERS[0]] == [70.0]


def test_bench_plot_errors(tmp_path, capsys):
    assert main(["bench", "--from-json", str(tmp_path / "x.json")]) == 2
    assert "give --plot" in capsys.readouterr().err
    assert main(["bench", "--from-json", str(tmp_path / "missing.json"), "--plot", str(tmp_path / "p.png")]) == 2
    assert "cannot read the benchmark file" in capsys.readouterr().err
    (tmp_path / "e.json").write_text('{"records": []}')
    assert main(["bench", "--from-json", str(tmp_path / "e.json"), "--plot", str(tmp_path / "p.png")]) == 2
    assert "nothing to plot" in capsys.readouterr().err
