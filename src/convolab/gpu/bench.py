"""``convolab bench --device cuda``: the Triton kernels against cuDNN, layer by layer.

For every layer of the chosen suites and every dtype mode (float32 IEEE, TF32, float16,
bfloat16) this times, on the same random input:

- each convolab GPU algorithm, planned with ``measure=True`` (its candidate configurations timed,
  the fastest pinned; ``cuconv_gpu`` on batches >= 32 keeps its rule's configuration), on the
  layout it reads best (channels-last for ``implicit_gemm_gpu``,
  NCHW for ``im2win_gpu``, whose window transform is inside the timed call, and ``cuconv_gpu``);
- cuDNN through ``torch.nn.functional.conv2d`` with ``torch.backends.cudnn.benchmark = True``
  (so cuDNN times its algorithms and keeps the fastest), TF32 allowed only in the TF32 mode, on
  NCHW and on channels-last input; "best cuDNN" is the faster of the two.

Times: GPU time per call, from CUDA-graph replays of back-to-back calls timed with CUDA events
(median of 10 replays; `convolab.gpu.api._time_ms`), so that the host's launch overhead --
Python and Triton's launcher, tens of microseconds, which would otherwise decide every small
layer -- is left out for both sides, as in a deployment that replays graphs. The eager time
(``triton.testing.do_bench``: L2 flushed, launch overhead included) is recorded beside it.
Each entry also records the workspace (convolab: the plan's formula; both: the peak allocation
beyond input and output, measured), the max error against a float64 reference (cuDNN in float64
on the same rounded inputs; normwise as in `convolab.reference.errors`) and, for convolab, how
many distinct outputs 10 calls of one plan gave (1: bitwise reproducible). A deviation row
counts cuDNN's distinct float32 outputs over the configurations PyTorch exposes (benchmark /
deterministic modes x memory formats), the GPU half of the deviation lab.

Results: one JSON file and one markdown table (``--json``, ``--markdown``), with the summary
the GPU issue asks for (geomean speed vs the best cuDNN per layer class and dtype, the im2win
workspace ratio, the batch-1 wins).

Size: one command's measurement (the Triton kernels against cuDNN, deviation rows, the markdown
report), GPU-only and imported only by it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..bench.suites import SUITES, suite
from ..errors import ConvError
from ..spec import ConvSpec
from . import api, im2win
from ._common import DTYPES, INTERPRET, device_info, triton_version

#: dtype mode -> (storage dtype, float32 precision)
MODES = {"float32": ("float32", "ieee"), "tf32": ("float32", "tf32"), "float16": ("float16", "ieee"),
         "bfloat16": ("bfloat16", "ieee")}
#: the layout each algorithm reads best
LAYOUT = {"implicit_gemm_gpu": "nhwc", "im2win_gpu": "nchw", "cuconv_gpu": "nchw"}
#: where the benchmark's tensors live: the GPU, or the CPU under Triton's interpreter (a dry run
#: of the code paths for tests; its times and "cuDNN" -- PyTorch's CPU convolution -- mean nothing)
DEVICE = "cpu" if INTERPRET else "cuda"
#: the suites of the GPU issue: im2win's 12 layers at batch 128 and 1, ResNet-50 at 32 and 1, cuConv's
DEFAULT_SUITES = "im2win12@128,im2win12@1,resnet50@32,resnet50@1,cuconv@1"


@dataclass
class Entry:
    suite: str
    batch: int
    layer: str
    spec: str
    mode: str
    impl: str
    layout: str = ""
    ms: float | None = None
    eager_ms: float | None = None
    tflops: float | None = None
    workspace_bytes: int | None = None
    peak_bytes: int | None = None
    max_rel_err: float | None = None
    normwise_err: float | None = None
    error_bound: float | None = None
    config: str = ""
    distinct_outputs: int | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def parse_suites(text: str, batch: int | None = None) -> list[tuple[str, int, str, ConvSpec]]:
    """``"im2win12@128,cuconv"`` -> [(suite, batch, layer name, spec)] (``@batch`` optional)."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, b = item.partition("@")
        if name not in SUITES:
            raise ConvError(f"unknown suite {name!r}; available: {', '.join(SUITES)}")
        try:
            nb = int(b) if b else batch
        except ValueError:
            raise ConvError(f"bad batch in suite item {item!r}: use name@batch, e.g. im2win12@128") from None
        for lname, spec in suite(name, nb):
            out.append((name, spec.N, lname, spec))
    if not out:
        raise ConvError(f"no layers in --suite {text!r}")
    return out


def torch_conv(x, w, spec: ConvSpec):
    """``F.conv2d`` with the spec's (possibly asymmetric) padding."""
    pl, pr, pt, pb = spec.padding
    if pl == pr and pt == pb:
        return F.conv2d(x, w, None, spec.stride, (pt, pl), spec.dilation, spec.groups)
    return F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, None, spec.stride, 0, spec.dilation, spec.groups)


def _eager_ms(fn) -> float:
    """Median time of eager calls, host launch overhead included (L2 flushed before each)."""
    if INTERPRET:
        return api._time_ms(fn, 1)
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=2, rep=10, return_mode="median"))


def _peak_extra(fn, out_bytes: int) -> tuple[object, int]:
    """Run ``fn`` once; (its result, the peak bytes it allocated beyond its output)."""
    if INTERPRET:
        return fn(), None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y = fn()
    torch.cuda.synchronize()
    return y, max(0, torch.cuda.max_memory_allocated() - base - out_bytes)


class _Reference:
    """Float64 output and magnitude (|x| (*) |w|) of one layer's rounded inputs."""

    def __init__(self, x, w, spec: ConvSpec):
        x64, w64 = x.double(), w.double()
        self.y = torch_conv(x64, w64, spec)
        self.scale = float(torch_conv(x64.abs(), w64.abs(), spec).max())
        self.ymax = float(self.y.abs().max())
        del x64, w64

    def errors(self, y) -> tuple[float, float]:
        d = float((y.double() - self.y).abs().max())
        if math.isnan(d):
            d = math.inf
        return d / self.ymax if self.ymax else d, d / self.scale if self.scale else d


def _distinct(outputs) -> int:
    reps = []
    for o in outputs:
        if not any(torch.equal(o, r) for r in reps):
            reps.append(o)
    return len(reps)


def _cudnn_flags(mode: str, benchmark=True, deterministic=False):
    tf32 = mode == "tf32"
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


def bench_layer(suite_name, lname, spec: ConvSpec, modes, algorithms, gen, log) -> list[Entry]:
    entries = []
    x32 = torch.randn(spec.x_shape, device=DEVICE, dtype=torch.float32, generator=gen)
    w32 = torch.randn(spec.w_shape, device=DEVICE, dtype=torch.float32, generator=gen) / math.sqrt(
        spec.reduction_length)
    for mode in modes:
        dname, precision = MODES[mode]
        dt = DTYPES[dname]
        x, w = x32.to(dt), w32.to(dt)
        ref = _Reference(x, w, spec)
        xs = {"nchw": x.contiguous(), "nhwc": x.contiguous(memory_format=torch.channels_last)}
        out_bytes = math.prod(spec.out_shape) * x.element_size()
        base = dict(suite=suite_name, batch=spec.N, layer=lname, spec=str(spec), mode=mode)
        geometry = {"C": spec.C, "K": spec.K, "R": spec.R, "out_pixels": spec.OH * spec.OW}
        # cuDNN on both layouts
        _cudnn_flags(mode)
        for layout, xin in xs.items():
            e = Entry(**base, impl=f"cudnn-{layout}", layout=layout, extra=dict(geometry))
            try:
                wl = w.contiguous(memory_format=torch.channels_last) if layout == "nhwc" else w
                def fn(xin=xin, wl=wl):
                    return torch_conv(xin, wl, spec)

                fn()  # cudnn.benchmark: cuDNN times its algorithms here
                y, e.peak_bytes = _peak_extra(fn, out_bytes)
                e.max_rel_err, e.normwise_err = ref.errors(y)
                e.ms = api._time_ms(fn, reps=10)
                e.eager_ms = _eager_ms(fn)
            except Exception as ex:  # noqa: BLE001 - a failing peer is reported, not fatal
                e.note = f"{type(ex).__name__}: {ex}"[:200]
            entries.append(e)
        # convolab
        for name in algorithms:
            layout = LAYOUT[name]
            xin = xs[layout]
            e = Entry(**base, impl=name, layout=layout, extra=dict(geometry))
            try:
                # cuConv is a small-batch scheme: on batch >= 32 its rule's configuration is timed, not searched
                measure = not (name == "cuconv_gpu" and spec.N >= 32)
                p = api.plan(spec.x_shape, w, None, spec.stride, spec.padding, spec.dilation, spec.groups,
                             algorithm=name, precision=precision, measure=measure, reps=5)
                e.config = str(p.config)
                e.workspace_bytes = p.workspace_bytes
                e.error_bound = p.error_bound
                y, e.peak_bytes = _peak_extra(lambda p=p, xin=xin: p(xin), out_bytes)
                e.max_rel_err, e.normwise_err = ref.errors(y)
                e.distinct_outputs = _distinct([y] + [p(xin) for _ in range(9)])
                e.ms = api._time_ms(lambda p=p, xin=xin: p(xin), reps=10)
                e.eager_ms = _eager_ms(lambda p=p, xin=xin: p(xin))
                if name == im2win.NAME:
                    e.extra["im2col_bytes"] = im2win.im2col_elements(spec) * x.element_size()
            except Exception as ex:  # noqa: BLE001
                e.note = f"{type(ex).__name__}: {ex}"[:300]
            entries.append(e)
        del ref, xs, x, w
    for e in entries:
        if e.ms:
            e.tflops = spec.flops / (e.ms * 1e-3) / 1e12
    log(_layer_line(entries))
    return entries


def _layer_line(entries: list[Entry]) -> str:
    e0 = entries[0]
    parts = []
    for mode in dict.fromkeys(e.mode for e in entries):
        es = [e for e in entries if e.mode == mode]
        cud = _best_cudnn(es)
        ours = [e for e in es if not e.impl.startswith("cudnn") and e.ms]
        best = min(ours, key=lambda e: e.ms) if ours else None
        if cud and best:
            parts.append(f"{mode} {best.impl.replace('_gpu', '')} {cud.ms / best.ms:.2f}x")
        else:
            parts.append(f"{mode} n/a")
    return f"{e0.suite}@{e0.batch} {e0.layer}: " + "; ".join(parts)


def _best_cudnn(es: list[Entry]) -> Entry | None:
    c = [e for e in es if e.impl.startswith("cudnn") and e.ms]
    return min(c, key=lambda e: e.ms) if c else None


def deviation_row(spec: ConvSpec, lname: str, gen) -> dict:
    """Distinct float32 outputs: convolab plans over 10 calls each, cuDNN over its configurations."""
    x = torch.randn(spec.x_shape, device=DEVICE, generator=gen)
    w = torch.randn(spec.w_shape, device=DEVICE, generator=gen) / math.sqrt(spec.reduction_length)
    row = {"layer": lname, "spec": str(spec), "convolab": {}, "cudnn": {}}
    for name in api.MODULES:
        p = api.plan(spec.x_shape, w, None, spec.stride, spec.padding, spec.dilation, spec.groups,
                     algorithm=name)
        xin = x.contiguous(memory_format=torch.channels_last) if LAYOUT[name] == "nhwc" else x
        outs = [p(xin).contiguous() for _ in range(10)]
        row["convolab"][name] = _distinct(outs)
        row.setdefault("_ours", []).append(outs[0])
    configs = {}
    for bm in (False, True):
        for det in (False, True):
            for layout in ("nchw", "nhwc"):
                _cudnn_flags("float32", benchmark=bm, deterministic=det)
                xin = x.contiguous(memory_format=torch.channels_last) if layout == "nhwc" else x.contiguous()
                wl = w.contiguous(memory_format=torch.channels_last) if layout == "nhwc" else w
                outs = [torch_conv(xin, wl, spec).contiguous() for _ in range(3)]
                configs[f"benchmark={bm} deterministic={det} {layout}"] = outs
    allouts = [o for outs in configs.values() for o in outs]
    row["cudnn"] = {
        "configurations": len(configs),
        "classes": _distinct(allouts),
        "run_to_run_varying_configurations": sum(_distinct(o) > 1 for o in configs.values()),
    }
    ours = row.pop("_ours")
    row["classes_across_algorithms"] = {"convolab": _distinct(ours), "all": _distinct(ours + allouts)}
    _cudnn_flags("float32")
    return row


def _geomean(vals):
    vals = [v for v in vals if v and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def summarize(entries: list[Entry]) -> dict:
    """The GPU issue's criteria, computed from the entries."""
    by_key: dict[tuple, list[Entry]] = {}
    for e in entries:
        by_key.setdefault((e.suite, e.batch, e.layer, e.mode), []).append(e)
    large: dict[str, list] = {}
    small: dict[str, list] = {}
    im2win128: dict[str, list] = {}
    ws_ratio = []
    for (suite_name, batch, layer, mode), es in by_key.items():
        cud = _best_cudnn(es)
        ours = [e for e in es if not e.impl.startswith("cudnn") and e.ms]
        if not cud or not ours:
            continue
        best = min(ours, key=lambda e: e.ms)
        g = es[0].extra
        C, K, R, OHOW = g.get("C"), g.get("K"), g.get("R"), g.get("out_pixels")
        if batch >= 32 and (C or 0) >= 64 and (K or 0) >= 64 and R in (1, 3):
            large.setdefault(mode, []).append(cud.ms / best.ms)
        if batch == 1 and OHOW is not None and OHOW <= 196:
            small.setdefault(mode, []).append((layer, suite_name, cud.ms / best.ms, best.impl))
        if suite_name == "im2win12" and batch == 128:
            win = [e for e in es if e.impl == im2win.NAME and e.ms]
            if win:
                im2win128.setdefault(mode, []).append(cud.ms / win[0].ms)
                if mode == "float32":
                    ws_ratio.append((layer, win[0].workspace_bytes, win[0].extra.get("im2col_bytes")))
    det = [e.distinct_outputs for e in entries if e.distinct_outputs is not None]
    return {
        "large_3x3_1x1_geomean_vs_best_cudnn": {m: _geomean(v) for m, v in large.items()},
        "large_layers_counted": {m: len(v) for m, v in large.items()},
        "im2win12_b128_im2win_gpu_geomean_vs_best_cudnn": {m: _geomean(v) for m, v in im2win128.items()},
        "im2win12_workspace_vs_im2col": {
            "per_layer": {layer: (ws / ic if ic else None) for layer, ws, ic in ws_ratio},
            "total": (sum(ws for _, ws, _ in ws_ratio) / sum(ic for *_, ic in ws_ratio)) if ws_ratio else None,
        },
        "batch1_small_layers_wins": {
            m: {"wins": sum(r >= 1.0 for _, _, r, _ in v), "layers": len(v),
                "geomean": _geomean([r for _, _, r, _ in v])} for m, v in small.items()},
        "bitwise_reproducible_plans": {"plans": len(det), "all_identical_over_10_calls": sum(d == 1 for d in det)},
    }


def _mib(b):
    return None if b is None else b / 2**20


def _fmt(v, f="{:.3f}"):
    return "" if v is None else f.format(v)


def markdown(info: dict, entries: list[Entry], summary: dict, deviations: list) -> str:
    lines = [
        "# convolab GPU benchmark",
        "",
        f"GPU: {info['gpu']}; torch {info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}, "
        f"Triton {info['triton']}; convolab {info['convolab']}",
        "ms: GPU time per call (CUDA-graph replay, median); eager ms: triton.testing.do_bench (launch overhead "
        "included, L2 flushed). cuDNN: cudnn.benchmark=True; TF32 allowed only in mode tf32. Ratio: best cuDNN "
        "(NCHW or NHWC) ms / this ms (> 1: faster than cuDNN).",
        "",
        "| suite | layer | mode | impl | layout | ms | eager ms | TFLOP/s | vs best cuDNN | workspace MiB | "
        "peak extra MiB | max rel err | normwise err (bound) | distinct / 10 | config |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key: dict[tuple, list[Entry]] = {}
    for e in entries:
        by_key.setdefault((e.suite, e.batch, e.layer, e.mode), []).append(e)
    for (s, b, layer, mode), es in by_key.items():
        cud = _best_cudnn(es)
        for e in es:
            ratio = cud.ms / e.ms if (cud and e.ms) else None
            bound = f" ({e.error_bound:.1e})" if e.error_bound is not None else ""
            lines.append(
                f"| {s}@{b} | {layer} | {mode} | {e.impl} | {e.layout} | {_fmt(e.ms)} | {_fmt(e.eager_ms)} | "
                f"{_fmt(e.tflops, '{:.1f}')} | {_fmt(ratio, '{:.2f}')} | {_fmt(_mib(e.workspace_bytes), '{:.1f}')} | "
                f"{_fmt(_mib(e.peak_bytes), '{:.1f}')} | "
                f"{_fmt(e.max_rel_err, '{:.1e}')} | {_fmt(e.normwise_err, '{:.1e}')}{bound} | "
                f"{'' if e.distinct_outputs is None else e.distinct_outputs} | {e.config or e.note} |")
    lines += ["", "## Summary", "", "```", json.dumps(summary, indent=1), "```", ""]
    if deviations:
        lines += ["## Deviation lab, GPU row (float32, TF32 off)", "",
                  "| layer | convolab distinct outputs over 10 calls (per algorithm) | cuDNN classes over "
                  "configurations | cuDNN configurations varying run to run | classes across convolab algorithms "
                  "| classes, all |",
                  "|---|---|---|---|---|---|"]
        for d in deviations:
            if "error" in d:
                lines.append(f"| {d['layer']} | {d['error']} | | | | |")
                continue
            ours = ", ".join(f"{k} {v}" for k, v in d["convolab"].items())
            c = d["cudnn"]
            lines.append(f"| {d['layer']} ({d['spec']}) | {ours} | {c['classes']} of {c['configurations']} | "
                         f"{c['run_to_run_varying_configurations']} | {d['classes_across_algorithms']['convolab']} | "
                         f"{d['classes_across_algorithms']['all']} |")
    return "\n".join(lines) + "\n"


def machine_info() -> dict:
    from .._version import __version__

    return {
        "gpu": device_info().name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "triton": triton_version(),
        "convolab": __version__,
    }


def _write(path: str | None, text: str) -> None:
    if not path:
        return
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def run(args) -> int:
    """The CLI entry (`convolab bench --device cuda`)."""
    if not INTERPRET and not torch.cuda.is_available():
        raise ConvError("convolab bench --device cuda needs a CUDA GPU (torch.cuda.is_available() is False)")
    if INTERPRET:
        print("TRITON_INTERPRET=1: a dry run on the CPU interpreter; times and peers are meaningless", flush=True)
    modes = [m.strip() for m in (args.dtypes or "float32,tf32,float16,bfloat16").split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise ConvError(f"unknown dtype mode {m!r}; use {', '.join(MODES)}")
    algorithms = [a.strip() for a in args.algorithms.split(",")] if args.algorithms else list(api.MODULES)
    for a in algorithms:
        if a not in api.MODULES:
            raise ConvError(f"unknown GPU algorithm {a!r}; use {', '.join(api.MODULES)}")
    text = args.suite if args.suite != "default" else DEFAULT_SUITES
    layers = parse_suites(text, args.batch)
    if args.layers:
        keys = [k.strip() for k in args.layers.split(",") if k.strip()]
        layers = [t for t in layers if any(k in t[2] for k in keys)]
    if args.max_pixels:
        layers = [t for t in layers if t[3].OH * t[3].OW <= args.max_pixels]
    if not layers:
        raise ConvError("no layer left after --layers / --max-pixels")
    info = machine_info()
    print(f"convolab bench --device cuda: {len(layers)} layers x {len(modes)} modes; {info}", flush=True)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    entries: list[Entry] = []
    t0 = time.perf_counter()
    skipped = 0
    deviations: list = []
    budget = args.time_budget

    def dump():
        summary = summarize(entries)
        data = {"machine": info, "modes": modes, "entries": [dataclasses.asdict(e) for e in entries],
                "summary": summary, "deviations": deviations, "skipped_layers": skipped,
                "seconds": time.perf_counter() - t0}
        _write(args.json, json.dumps(data, indent=1))
        _write(args.markdown, markdown(info, entries, summary, deviations))
        return summary

    for i, (sname, _, lname, spec) in enumerate(layers):
        if budget and time.perf_counter() - t0 > budget:
            skipped = len(layers) - i
            print(f"time budget of {budget:.0f} s spent: {skipped} layers skipped", flush=True)
            break
        entries += bench_layer(sname, lname, spec, modes, algorithms, gen,
                               lambda s: print(f"[{time.perf_counter() - t0:6.1f} s] {s}", flush=True))
        dump()
    if args.deviation_layers:
        picks = [t for t in layers if any(k.strip() and k.strip() in f"{t[0]}@{t[1]} {t[2]}"
                                          for k in args.deviation_layers.split(";"))]
        for sname, b, lname, spec in picks:
            try:
                deviations.append(deviation_row(spec, f"{sname}@{b} {lname}", gen))
            except Exception as ex:  # noqa: BLE001
                deviations.append({"layer": f"{sname}@{b} {lname}", "error": f"{type(ex).__name__}: {ex}"[:200]})
            print(f"deviations: {deviations[-1]}", flush=True)
    summary = dump()
    print(json.dumps(summary, indent=1), flush=True)
    return 0
