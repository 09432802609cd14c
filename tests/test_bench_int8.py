"""``convolab bench --dtype int8``: int8 data, records for every method and peer, bad values."""

import json
import math

import numpy as np
import pytest

from convolab import reference
from convolab.bench import int8, runner
from convolab.bench.suites import layer
from convolab.cli import build_parser, main
from convolab.errors import ConvError
from convolab.kernels._int8_fast import ALGORITHMS as FAST
from convolab.quant import intconv


def test_int8_data_codes_scales_and_reference():
    _, spec = layer("t", 6, 9, 4, 3, 1, 1)
    d = int8.int8_data(spec)
    assert d.xq.dtype == np.int8 and d.wq.dtype == np.int8
    assert np.abs(d.xq).max() == 127  # per-tensor scale from the max-abs
    assert (np.abs(d.wq).reshape(4, -1).max(axis=1) == 127).all()  # per output channel
    assert d.w_scales.shape == (4,) and (d.w_scales.astype(np.float32) == d.w_scales).all()
    np.testing.assert_array_equal(d.ref, reference.conv2d(d.xq, d.wq, padding=1))
    assert d.xu.dtype == np.uint8
    np.testing.assert_array_equal(d.xu.astype(np.int16) - 128, d.xq)
    assert math.isclose(np.abs(d.real).max() / d.y_scale, 127, rel_tol=1e-6)


def test_bench_int8_cli_writes_records(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(runner, "BURST_SETTLE_SECONDS", 0)
    monkeypatch.setattr(runner, "gemm_gflops", lambda: 1.0)
    path = tmp_path / "int8.json"
    rc = main(["bench", "--dtype", "int8", "--suite", "default", "--layers", "dw 3x3", "--repeat", "1",
               "--json", str(path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "dtype=int8" in out and "GMAC/s" in out and "err / y_scale" in out
    assert "geomean speed-up vs onnxruntime-qlinearconv" in out
    data = json.loads(path.read_text())
    assert data["dtype"] == "int8"
    recs = {r["impl"]: r for r in data["records"]}
    assert set(intconv.METHODS) <= set(recs)
    assert "onnxruntime-qlinearconv" in recs
    for r in recs.values():
        assert r["dtype"] == "int8" and r["layer"] == "dw 3x3 128@56"
        if r["skipped"]:
            # the only peer that may refuse a layer; the fast algorithms skip depthwise
            assert r["impl"] == "torch-quantized" or r["impl"] in FAST
            continue
        assert r["ms"] > 0 and r["gmacs"] > 0 and r["macs"] == 128 * 56 * 56 * 9
    for m in intconv.METHODS:
        assert recs[m]["kind"] == "algorithm" and recs[m]["output"] == "int32"
        assert recs[m]["max_abs_err"] == 0
    ort = recs["onnxruntime-qlinearconv"]
    assert ort["kind"] == "peer" and ort["output"] == "uint8" and ort["skipped"] is None
    assert math.isfinite(ort["max_err_y_scale"]) and ort["y_scale"] > 0
    pairs = {(g["algorithm"], g["versus"]) for g in data["geomean_speedup"]}
    assert ("direct", "onnxruntime-qlinearconv") in pairs


def test_bench_int8_torch_peer_skips_asymmetric_padding():
    pytest.importorskip("torch")
    if int8.INT8_PEERS["torch-quantized"].available():
        pytest.skip("PyTorch's quantized engine is unavailable")
    _, spec = layer("t", 4, 6, 4, 2, 1, 0)
    from dataclasses import replace

    spec = replace(spec, padding=(0, 1, 0, 1))
    recs = int8.bench_layer_int8("t", spec, [], [int8.INT8_PEERS["torch-quantized"]], 1, 1)
    assert recs[0].skipped and "asymmetric padding" in recs[0].skipped


def _run(argv):
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_bench_dtype_bad_values():
    assert build_parser().parse_args(["bench"]).dtype == "float32"
    with pytest.raises(ConvError, match="'float16'"):
        _run(["bench", "--dtype", "float16"])
    with pytest.raises(ConvError, match="CPU only"):
        _run(["bench", "--dtype", "int8", "--device", "cuda"])
    with pytest.raises(ConvError, match="unknown int8 method 'winograd_f4x3'"):
        int8.resolve_methods("direct,winograd_f4x3")
    with pytest.raises(ConvError, match="unknown int8 peer 'tvm'"):
        int8.resolve_peers("tvm")
    assert int8.resolve_methods(None) == [*intconv.METHODS, *FAST]
    assert int8.resolve_methods("sfc6_6x3,direct") == ["sfc6_6x3", "direct"]


def test_bench_int8_fast_algorithms_rows():
    # a 3x3 stride-1 layer: each compiled fast algorithm timed, float32 out, its error in
    # output steps (the transform domain's requantisation: more than the 0.5 of a correctly
    # rounded int8 output, a few steps); a strided layer: skipped with the reason
    _, spec = layer("t", 24, 20, 12, 3, 1, 1, N=2)
    recs = {r.impl: r for r in int8.bench_layer_int8("t", spec, list(FAST), [], 1, 2)}
    for m in FAST:
        r = recs[m]
        assert r.skipped is None and r.output == "float32" and r.ms > 0
        assert 0.1 < r.max_err_y_scale < 8
    _, strided = layer("s", 8, 12, 8, 3, 2, 1)
    recs = int8.bench_layer_int8("s", strided, ["sfc4_4x3"], [], 1, 1)
    assert recs[0].skipped == "stride must be 1 (got (2, 2))"


def test_bench_dtype_bad_value_exit_code(capsys):
    assert main(["bench", "--dtype", "bf16", "--repeat", "1"]) == 2
    assert "--dtype must be one of float32, int8, got 'bf16'" in capsys.readouterr().err
