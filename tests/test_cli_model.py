"""``convolab model``: the --compile comparison (PyTorch eager, ONNX Runtime, convolab.runtime)
and the per-algorithm path, on MobileNetV2 (random weights) at a small input size."""

import json
import re

import pytest

pytest.importorskip("torch")

from convolab.cli import main  # noqa: E402

SMALL = ["--model", "mobilenet_v2", "--size", "64", "--images", "2", "--batches", "1", "--repeat", "1"]


def test_model_compile_writes_every_runtime(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    assert ort
    path = tmp_path / "m.json"
    assert main(["model", "--compile", *SMALL, "--algorithms", "deterministic", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "convolab deterministic" in out and "vs torch" in out
    doc = json.loads(path.read_text())
    assert doc["mode"] == "compile" and doc["random_weights"] and doc["inputs"] == ["random0", "random1"]
    acc = {r["configuration"]: r for r in doc["accuracy"]}
    assert set(acc) == {"torch eager", "onnxruntime", "convolab deterministic"}
    for c in ("onnxruntime", "convolab deterministic"):
        assert acc[c]["top1_agree"] == 2 and acc[c]["max_abs_dev_vs_torch"] < 1e-3
    conv = acc["convolab deterministic"]
    assert len(conv["layers"]) == 52 and {L["algorithm"] for L in conv["layers"]} <= {"direct", "im2win"}
    assert doc["setup"]["convolab deterministic"]["folded"]["batchnorm"] == 52
    assert doc["setup"]["convolab deterministic"]["fallback_ops"] == {}
    lat = {r["configuration"]: r["batch1"] for r in doc["latency"]}
    # ONNX Runtime's default (spinning threads) timed after the interleaved rounds
    assert set(lat) == set(acc) | {"onnxruntime (spinning)"}
    assert all(v["min_ms"] > 0 and len(v["all_ms"]) == 1 for v in lat.values())


def test_model_compile_int8_beside_onnx_runtime_static_quantisation(tmp_path, capsys):
    pytest.importorskip("onnxruntime.quantization")
    path = tmp_path / "q.json"
    assert main(["model", "--compile", *SMALL, "--algorithms", "deterministic", "--quantize",
                 "direct", "--json", str(path)]) == 0
    doc = json.loads(path.read_text())
    acc = {r["configuration"]: r for r in doc["accuracy"]}
    assert {"onnxruntime int8", "convolab int8 direct"} <= set(acc)
    q = acc["convolab int8 direct"]
    assert len(q["layers"]) == 52 and {L["algorithm"] for L in q["layers"]} == {"direct int8"}
    assert q["max_abs_dev_vs_torch"] > 0 and "error" not in acc["onnxruntime int8"]
    assert doc["setup"]["convolab int8 direct"]["quantize"] == "direct int8"
    lat = {r["configuration"] for r in doc["latency"]}
    assert {"onnxruntime int8", "convolab int8 direct"} <= lat
    assert main(["model", "--quantize", "direct"]) == 2
    assert "--quantize needs --compile" in capsys.readouterr().err
    assert main(["model", "--compile", "--quantize", "nope"]) == 2
    assert "unknown quantised algorithm 'nope'" in capsys.readouterr().err


def test_model_compile_accuracy_only_and_bad_arguments(capsys):
    assert main(["model", "--compile", *SMALL, "--algorithms", "im2col", "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "convolab im2col" in out and "latency" not in out
    assert main(["model", "--compile", "--algorithms", "nope"]) == 2
    assert "unknown algorithm 'nope'" in capsys.readouterr().err
    assert main(["model", "--model", "alexnet"]) == 2
    assert "unknown model 'alexnet'" in capsys.readouterr().err
    assert main(["model", *SMALL[:2], "--images", "0"]) == 2


def test_model_per_algorithm_path_on_random_weights(capsys):
    assert main(["model", *SMALL, "--algorithms", "direct", "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "2 random 64x64 images" in out and "direct" in out and "52/52" in out
    assert "direct: first pass (plans, compilation)" in out  # compute_accuracy's say, logged


def test_model_per_algorithm_latency_and_json(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["model", *SMALL, "--algorithms", "direct", "--report", "direct", "--repeat", "1",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"End-to-end\s+latency", text) and re.search(r"Per-layer\s+report:\s+direct", text)
    assert "batch 1: timed" in text  # compute_latency's say, logged
    doc = json.loads(out.read_text())
    (acc,) = doc["accuracy"]
    assert acc["algorithm"] == "direct" and acc["top1_agree"] == acc["images"]
    configs = [r["configuration"] for r in doc["latency"]]
    assert configs == ["torch", "direct", "torch (per layer)"]
    assert all(r["batch1"]["min_ms"] > 0 for r in doc["latency"])
    assert doc["layers"]["direct"] and all(L["calls"] == 1 for L in doc["layers"]["direct"])
