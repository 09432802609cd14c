"""``convolab model --compile``: whole-network runtimes side by side -- PyTorch eager, ONNX
Runtime (the model exported by the command in memory) and `convolab.runtime.compile` (one per
``--algorithms`` choice) -- accuracy against PyTorch fp32 and float64, then latency,
interleaved round-robin in one process. Parse (`run`), compute (`_runtimes`,
`_compiled_accuracy`, `_compiled_latency`: figures only, nothing printed; ``say(text)`` is told
their progress), render (`_render_*`), JSON."""

from __future__ import annotations

import statistics
import time

from ._common import write_json
from ._models import _batch, _console_and_threads, _inputs, _machine


def _onnx_session(model, example, threads: int, spinning: bool = False):
    """ONNX Runtime on the model exported in memory (TorchScript exporter, batch axis dynamic).

    ``spinning`` False (the interleaved rounds): the intra-op threads block between runs
    instead of spinning. Spinning, they kept a core busy long after each run (30 ms pauses did
    not stop it) and took it from whichever configuration ran next: convolab's EfficientNet-
    Lite0 at batch 1 measured 10.6 instead of 6.5 ms, Zen 4, 2 threads. The spinning session
    (ONNX Runtime's default, its best latency) is timed in a block of its own after them."""
    data = _onnx_export(model, example)
    return _ort_run(data, threads, spinning), len(data)


def _onnx_export(model, example) -> bytes:
    """The model as ONNX bytes (TorchScript exporter, opset 17, batch axis dynamic)."""
    import io
    import warnings

    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices
        torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17)
    return buf.getvalue()


def _onnx_int8(model, example, calibration, threads: int, spinning: bool = False):
    """ONNX Runtime on the model statically quantised by `onnxruntime.quantization`
    (``quantize_static``: QDQ format, per-channel symmetric int8 weights, uint8 activations
    calibrated by min/max on ``calibration``, a list of (N, C, H, W) tensors; after its
    `quant_pre_process`). Returns (run, ONNX bytes)."""
    import os
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{"x": c.numpy()} for c in calibration])

        def get_next(self):
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as d:
        f32, pre, q8 = (os.path.join(d, n) for n in ("f32.onnx", "pre.onnx", "int8.onnx"))
        with open(f32, "wb") as f:
            f.write(_onnx_export(model, example))
        quant_pre_process(f32, pre)
        quantize_static(pre, q8, _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        with open(q8, "rb") as f:
            data = f.read()
    return _ort_run(data, threads, spinning), len(data)


def _ort_run(data: bytes, threads: int, spinning: bool):
    """A function running an ONNX Runtime CPU session of model ``data`` on a torch tensor."""
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])

    def run(x):
        return torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])

    return run


def _algorithm_counts(layers) -> str:
    counts: dict[str, int] = {}
    for L in layers:  # Layer records or their JSON dictionaries
        a = L["algorithm"] if isinstance(L, dict) else L.algorithm
        counts[a] = counts.get(a, 0) + 1
    return ", ".join(f"{a} {n}" for a, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def run(args, batches) -> int:
    """``--compile``: parse, build the runtimes, compute accuracy and latency, render each."""
    from ..interop.models import MODELS, load_model
    from ..registry import get

    names = [n.strip() for n in (args.algorithms or "auto").split(",") if n.strip()] or ["auto"]
    for n in names:
        if n not in ("auto", "deterministic"):
            get(n)  # unknown names raise ConvError listing the registered ones
    console, blas_limits = _console_and_threads(args.threads)
    try:
        info = MODELS[args.model]
        model = load_model(args.model)
        labels, x, what = _inputs(info, args.images, args.size)
        machine = _machine(args.threads)
        _render_compiled_header(console, args, info, what, machine)
        example = _batch(x, batches[0])
        runs, setup, compiled = _runtimes(model, example, names, args.threads, say=console.log)
        if args.quantize is not None:
            from .model import _int8_names

            _int8_runtimes(model, info, example, _int8_names(args.quantize), args.threads, runs,
                           setup, compiled, say=console.log)
        acc = _compiled_accuracy(model, x, labels, runs, setup, compiled)
        _render_compiled_accuracy(console, acc, labels, what, setup, compiled)
        lat = None
        if not args.no_latency:
            lat = _compiled_latency(model, x, example, runs, batches, args.repeat, args.threads,
                                    say=console.log)
            _render_compiled_latency(console, lat, batches, args.repeat, args.threads)
    finally:
        blas_limits.restore_original_limits()
    write_json(args.json, {
        "model": args.model, "mode": "compile", "random_weights": info.random_weights,
        "inputs": labels, "machine": machine, "repeat": args.repeat, "batches": batches,
        "algorithms": names, "torch_top1": acc["torch_top1"], "setup": setup,
        "accuracy": acc["records"], "latency": lat["records"] if lat else [],
    }, console)
    return 0


def _render_compiled_header(console, args, info, what, machine) -> None:
    console.print(f"[bold]convolab model --compile[/bold]: {args.model} ({info.notes}) on {what}")
    console.print(
        f"CPU {machine['cpu']}; {args.threads} threads (PyTorch intra-op, ONNX Runtime intra-op, "
        f"convolab compile); PyTorch {machine['torch']} oneDNN={'on' if machine['onednn'] else 'off'}"
        + (f"; [yellow]set: {machine['env']}[/yellow] (slows NumPy's BLAS)" if machine["env"] else "")
    )
    load = machine["load_average"]
    if load and load[0] > 0.5 * (machine["cpus"] or 1):
        console.print(f"[yellow]load average {load[0]:.1f} on {machine['cpus']} CPUs before the run: other "
                      "processes share the CPUs; PyTorch's OpenMP threads suffer most (each parallel "
                      "region waits for its slowest thread): --threads 1 or OMP_WAIT_POLICY=PASSIVE "
                      "give steadier figures[/yellow]")


def _runtimes(model, example, names, threads, say=None) -> tuple[dict, dict, dict]:
    """The configurations to compare: ``runs`` (name -> callable on a torch tensor), what
    building each took (``setup``), and the compiled models (planned at ``example``'s batch).
    Nothing printed: ``say(text)`` is told each configuration as it is built (or skipped)."""
    import torch

    from ..runtime import compile as compile_model

    say = say or (lambda text: None)
    runs: dict = {}
    setup: dict = {}

    def torch_eager(xb):
        with torch.no_grad():
            return model(xb)

    runs["torch eager"] = torch_eager
    setup["torch eager"] = {"kind": "torch"}
    try:
        t0 = time.perf_counter()
        ort_run, nbytes = _onnx_session(model, example, threads)
        runs["onnxruntime"] = ort_run
        setup["onnxruntime"] = {"kind": "onnxruntime", "export_and_session_s": time.perf_counter() - t0,
                                "onnx_bytes": nbytes}
        say(f"onnxruntime: exported ({nbytes / 1e6:.1f} MB) and session made in "
                    f"{setup['onnxruntime']['export_and_session_s']:.1f} s")
    except Exception as e:  # not installed, or the export failed: reported, not fatal
        setup["onnxruntime"] = {"kind": "onnxruntime", "error": f"{type(e).__name__}: {e}"}
        say(f"onnxruntime: [yellow]skipped[/yellow]: {setup['onnxruntime']['error'][:200]}")
    compiled = {}
    for n in names:
        _add_compiled(f"convolab {n}", lambda n=n: compile_model(model, example, algorithm=n,
                                                                  threads=threads),
                      {"algorithm": n}, runs, setup, compiled, say,
                      f"compiled (capture, passes, plans at batch {example.shape[0]})")
    return runs, setup, compiled


def _add_compiled(c: str, build, record: dict, runs, setup, compiled, say, done: str):
    """Configuration ``c``: ``build()`` (a compiled model) timed and added to ``runs``,
    ``setup`` (``record`` and what it took) and ``compiled``; one that fails is recorded with
    its error and reported, not fatal. Returns the model or None."""
    try:
        t0 = time.perf_counter()
        cm = build()
        wall = time.perf_counter() - t0
    except Exception as e:  # a configuration that breaks is reported, not fatal
        setup[c] = {"kind": "convolab", **record, "error": f"{type(e).__name__}: {e}"}
        say(f"{c}: [red]failed[/red]: {setup[c]['error']}")
        return None
    compiled[c] = runs[c] = cm
    setup[c] = {"kind": "convolab", **record, "compile_s": wall, "fallback_ops": cm.fallback_ops,
                "folded": {k: v for k, v in cm.graph.folded.items() if k != "example_batch"}}
    say(f"{c}: {done} in {wall:.1f} s")
    return cm


def calibration_batches(info, size: int, batch: int = 4) -> list:
    """The int8 configurations' calibration inputs: two ``size`` x ``size`` crops of each
    photograph, other than the evaluation's (`convolab.commands.quantize_eval.image_sets`), in
    batches of ``batch``."""
    from .quantize_eval import image_sets

    cal = image_sets(info, 8, 1, 2, size)[3]
    return [cal[i: i + batch] for i in range(0, len(cal), batch)]


def _int8_runtimes(model, info, example, algorithms, threads, runs, setup, compiled,
                   say=None) -> None:
    """Add the int8 configurations to ``runs`` / ``setup`` / ``compiled``: ONNX Runtime's
    static quantisation and ``convolab.compile(..., quantize=QuantConfig(a))`` per algorithm,
    all calibrated on `calibration_batches`."""
    from ..quant import QuantConfig
    from ..runtime import compile as compile_model

    say = say or (lambda text: None)
    cal = calibration_batches(info, example.shape[-1])
    try:
        t0 = time.perf_counter()
        q_run, nbytes = _onnx_int8(model, example, cal, threads)
        runs["onnxruntime int8"] = q_run
        setup["onnxruntime int8"] = {"kind": "onnxruntime", "quantized": "QDQ static, per-channel "
                                     "int8 weights, uint8 activations, min/max",
                                     "quantize_and_session_s": time.perf_counter() - t0,
                                     "onnx_bytes": nbytes}
        say(f"onnxruntime int8: quantised ({nbytes / 1e6:.1f} MB) and session made in "
            f"{setup['onnxruntime int8']['quantize_and_session_s']:.1f} s")
    except Exception as e:  # not installed (onnx), or quantisation failed: reported
        setup["onnxruntime int8"] = {"kind": "onnxruntime", "error": f"{type(e).__name__}: {e}"}
        say(f"onnxruntime int8: [yellow]skipped[/yellow]: {setup['onnxruntime int8']['error'][:200]}")
    for a in algorithms:
        c = f"convolab int8 {a}"
        qm = _add_compiled(c, lambda a=a: compile_model(model, example, quantize=QuantConfig(a),
                                                        calibration=cal, threads=threads),
                           {"quantize": a}, runs, setup, compiled, say,
                           f"compiled and calibrated ({len(cal)} batches)")
        if qm is not None:
            setup[c]["quantize"] = qm.config.label()


def _compiled_accuracy(model, x, labels, runs, setup, compiled) -> dict:
    """Each configuration's pass over the inputs against PyTorch fp32 and float64 (a failing
    configuration is dropped from ``runs`` and reported)."""
    import copy

    import torch

    with torch.no_grad():
        ref = model(x)
        ref64 = copy.deepcopy(model).double()(x.double())
    ref_top = ref.argmax(1)
    records = []
    for c, fn in list(runs.items()):
        t0 = time.perf_counter()
        try:
            y = fn(x)
        except Exception as e:
            setup[c]["error"] = f"{type(e).__name__}: {e}"
            records.append({"configuration": c, "error": setup[c]["error"]})
            del runs[c]
            continue
        agree = y.argmax(1) == ref_top
        rec = {"configuration": c, "top1_agree": int(agree.sum()), "inputs": len(labels),
               "disagree": [labels[i] for i in range(len(labels)) if not agree[i]],
               "max_abs_dev_vs_torch": float((y - ref).abs().max()),
               "max_abs_dev_vs_float64": float((y.double() - ref64).abs().max()),
               "first_pass_s": time.perf_counter() - t0}
        if c in compiled:
            rec["layers"] = [{"name": L.name, "where": L.where, "algorithm": L.algorithm,
                              "epilogue": L.epilogue, "runs": getattr(L, "runs", None),
                              "spec": str(L.spec)} for L in compiled[c].layers(tuple(x.shape))]
        records.append(rec)
    return {"records": records, "torch_top1": [int(c) for c in ref_top]}


def _render_compiled_accuracy(console, acc, labels, what, setup, compiled) -> None:
    from rich.table import Table

    t = Table(title=f"Accuracy on {what.split(':')[0]} (one batch), against PyTorch eager")
    for col, j in (("configuration", "left"), ("top-1 = torch", "right"),
                   ("max |Δlogit| vs torch fp32", "right"), ("vs float64", "right"),
                   ("convolutions (algorithm)", "left"), ("folded / fused", "left"),
                   ("run by PyTorch", "left")):
        t.add_column(col, justify=j)
    for rec in acc["records"]:
        c = rec["configuration"]
        if "error" in rec:
            t.add_row(c, "[red]failed", "", "", rec["error"][:80], "", "")
            continue
        algos = folded = fb = ""
        if c in compiled:
            cm = compiled[c]
            algos = f"{len(rec['layers'])}: {_algorithm_counts(rec['layers'])}"
            folded = ", ".join(f"{k} {v}" for k, v in sorted(setup[c]["folded"].items()))
            fb = ", ".join(f"{k} x{v}" for k, v in cm.fallback_ops.items())
        t.add_row(c, f"{rec['top1_agree']}/{len(labels)}", f"{rec['max_abs_dev_vs_torch']:.2e}",
                  f"{rec['max_abs_dev_vs_float64']:.2e}", algos, folded, fb)
    console.print(t)


def _ms(seconds: list[float]) -> dict:
    """One configuration's times at one batch size, in ms: minimum, median, every call."""
    return {"min_ms": min(seconds) * 1e3, "median_ms": statistics.median(seconds) * 1e3,
            "all_ms": [t * 1e3 for t in seconds]}


def _compiled_latency(model, x, example, runs, batches, repeat, threads, say=None) -> dict:
    """Every configuration timed in rotating order, one call each per round; ONNX Runtime with
    spinning threads (its default) last, in a block of its own. Nothing printed: ``say(text)``
    is told each batch size timed, then the spinning block."""
    import torch

    say = say or (lambda text: None)
    configs = list(runs)
    results = {c: {} for c in configs}
    with torch.no_grad():
        for b in batches:
            xb = _batch(x, b)
            for c in configs:  # warm: plans for this batch size, kernels compiled
                runs[c](xb)
            times = {c: [] for c in configs}
            for r in range(repeat):
                k = r % len(configs)
                for c in configs[k:] + configs[:k]:
                    t0 = time.perf_counter()
                    runs[c](xb)
                    times[c].append(time.perf_counter() - t0)
            for c in configs:
                results[c][b] = _ms(times[c])
            say(f"batch {b}: timed")
        if "onnxruntime" in runs:  # last: its spinning threads then slow nothing else
            spin_name = "onnxruntime (spinning)"
            spin_run, _ = _onnx_session(model, example, threads, spinning=True)
            configs.append(spin_name)
            results[spin_name] = {}
            for b in batches:
                xb = _batch(x, b)
                spin_run(xb)
                ts = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    spin_run(xb)
                    ts.append(time.perf_counter() - t0)
                results[spin_name][b] = _ms(ts)
            del spin_run
            say("onnxruntime with spinning threads: timed in a block of its own")
    records = [{"configuration": c, **{f"batch{b}": results[c][b] for b in batches}}
               for c in configs]
    return {"configs": configs, "results": results, "records": records}


def _render_compiled_latency(console, lat, batches, repeat, threads) -> None:
    from rich.table import Table

    results = lat["results"]
    t = Table(title=f"End-to-end latency, ms per forward pass (min / median of {repeat} "
              f"interleaved rounds, {threads} threads)")
    ort = "onnxruntime" in results
    t.add_column("configuration")
    for b in batches:
        for col in (f"b{b} min", f"b{b} median", f"b{b} vs torch") + ((f"b{b} vs ORT",) if ort else ()):
            t.add_column(col, justify="right")
    for c in lat["configs"]:
        row = [c]
        for b in batches:
            m = results[c][b]
            row += [f"{m['min_ms']:.1f}", f"{m['median_ms']:.1f}",
                    f"{m['min_ms'] / results['torch eager'][b]['min_ms']:.2f}x"]
            if ort:
                row.append(f"{m['min_ms'] / results['onnxruntime'][b]['min_ms']:.2f}x")
        t.add_row(*row)
    console.print(t)
    console.print("vs torch / vs ORT = min time / PyTorch eager's / ONNX Runtime's (blocking "
                  "threads) min time (lower is faster); every "
                  "configuration runs the same weights in this one process, in rotating order; "
                  "ONNX Runtime's threads block between its runs there, and its default "
                  "(spinning threads) is timed after the rounds, in a block of its own.")
