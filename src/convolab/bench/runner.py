"""The benchmark runner: every algorithm and peer on every layer, warm, minimum of repeats
taken over interleaved rounds.

Per layer and implementation it records time (ms, minimum over repeats, JIT warm-up and plan
creation excluded), GFLOP/s counted as direct-convolution FLOPs, multiplications, the
algorithm's stated workspace, the peak allocation measured with ``tracemalloc`` during one call
(NumPy reports its allocations to tracemalloc), and the max relative error against the float64
reference (max |y - ref| / max |ref|).
"""

from __future__ import annotations

import math
import os
import platform
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from .. import reference
from .._machine import blas_info, cpu_model, gemm_gflops
from .._timing import SETTLE_SECONDS, time_min
from ..api import plan as make_plan
from ..registry import Algorithm, get
from ..spec import ConvSpec
from .peers import Peer


@dataclass
class Record:
    layer: str
    spec: str
    impl: str
    kind: str  # "algorithm" or "peer"
    ms: float | None = None
    gflops: float | None = None
    multiplies: int | None = None
    workspace_bytes: int | None = None
    peak_bytes: int | None = None
    max_rel_err: float | None = None
    skipped: str | None = None
    chosen: str | None = None  # for impl "auto": the algorithm the chooser picked
    candidates: list | None = None  # for impl "auto": the algorithms admissible under its budgets


@dataclass
class MachineInfo:
    cpu: str
    threads: int
    blas: str
    gemm_gflops: float
    numpy: str
    python: str
    env: dict = field(default_factory=dict)


def machine_info(threads: int) -> MachineInfo:
    return MachineInfo(
        cpu=cpu_model(),
        threads=threads,
        blas=blas_info(),
        gemm_gflops=gemm_gflops(),
        numpy=np.__version__,
        python=platform.python_version(),
        env={k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ},
    )


def peak_allocation(f: Callable[[], object]) -> int:
    """Peak bytes allocated (tracemalloc) during one call of ``f``."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        f()
        return max(0, tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()


def layer_data(spec: ConvSpec, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.x_shape, dtype=np.float32)
    w = (rng.standard_normal(spec.w_shape, dtype=np.float32) / math.sqrt(spec.reduction_length)).astype(
        np.float32
    )
    return x, w


def _conv_args(spec: ConvSpec) -> dict:
    return dict(stride=spec.stride, padding=spec.padding, dilation=spec.dilation, groups=spec.groups)


#: timed rounds per layer: every implementation is timed once per round, in a rotated order,
#: and keeps its fastest round, so a slow spell of the host (its speed drifts 10-50% within
#: minutes) hits all implementations of a layer alike instead of whichever ran during it
ROUNDS = 3
#: pause before each timed burst, for the previous implementation's threads to stop spinning
BURST_SETTLE_SECONDS = 0.1


def time_interleaved(
    fs: dict[str, Callable[[], object]], repeat: int, rounds: int = ROUNDS, min_total: float = 0.05
) -> dict[str, float]:
    """Minimum time of each callable, timed in ``rounds`` rounds of short bursts.

    Each round times every callable for ``ceil(repeat / rounds)`` calls (more while under
    ``min_total / rounds`` s), the order rotating by one each round; each keeps its fastest call
    over all rounds.
    """
    names = list(fs)
    best = dict.fromkeys(names, math.inf)
    per = max(1, -(-repeat // rounds))
    for k in range(rounds):
        shift = k % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            time.sleep(BURST_SETTLE_SECONDS)
            best[name] = min(best[name], time_min(fs[name], per, min_total=min_total / rounds))
    return best


def bench_layer(
    name: str,
    spec: ConvSpec,
    algos: list[Algorithm],
    peers: list[Peer],
    repeat: int,
    threads: int,
    step: Callable[[str], None] = lambda s: None,
    auto: bool = False,
) -> list[Record]:
    """Run every algorithm (and ``auto``) and peer on one layer; ``step`` is called after each
    implementation is set up and checked.

    All implementations are set up first (plan, warm-up call, error, peak allocation), then
    timed together by :func:`time_interleaved`.
    """
    x, w = layer_data(spec)
    ref = reference.conv2d(x, w, **_conv_args(spec))
    records = []
    calls: dict[str, Callable[[], object]] = {}
    for a in [*algos, None] if auto else algos:
        rec = Record(name, str(spec), "auto" if a is None else a.name, "algorithm")
        why = None if a is None else a.supports(spec)
        if why is not None:
            rec.skipped = why
        else:
            p = make_plan(x.shape, w, algorithm=rec.impl, **_conv_args(spec))
            a = a or get(p.algorithm)
            if rec.impl == "auto":
                rec.chosen = p.algorithm
                rec.candidates = [c.name for c in p._ranking if c.admissible]
            out = np.empty(spec.out_shape, np.float32)
            p(x, out=out)  # JIT warm-up, first touch
            rec.max_rel_err = reference.errors(out, ref)["max_rel"]
            rec.multiplies = a.multiplies(spec)
            rec.workspace_bytes = a.workspace_bytes(spec)
            call = lambda p=p, out=out: p(x, out=out)  # noqa: E731
            rec.peak_bytes = peak_allocation(call)
            calls[rec.impl] = call
        records.append(rec)
        step(rec.impl)
    for peer in peers:
        rec = Record(name, str(spec), peer.name, "peer")
        f = peer.make(spec, x, w, threads)
        y = f()
        rec.max_rel_err = reference.errors(y, ref)["max_rel"]
        rec.multiplies = spec.direct_multiplies
        calls[peer.name] = f
        records.append(rec)
        step(peer.name)
    return time_records(records, calls, repeat, "gflops", spec.flops)


def time_records(records: list, calls: dict, repeat: int, rate: str, work: float) -> list:
    """Time ``calls`` (name -> callable) together (`time_interleaved`, after the settle pause)
    and fill each record's ``ms`` and its ``rate`` attribute (``work / seconds / 1e9``)."""
    time.sleep(SETTLE_SECONDS)
    times = time_interleaved(calls, repeat)
    for rec in records:
        if rec.impl in times:
            rec.ms = times[rec.impl] * 1e3
            setattr(rec, rate, work / times[rec.impl] / 1e9)
    return records


def geomean_ratios(records: list[Record]) -> dict[tuple[str, str], tuple[float, int]]:
    """(algorithm, peer) -> (geomean of t_peer / t_algorithm over layers both ran, layers)."""
    times: dict[str, dict[str, float]] = {}
    kinds: dict[str, str] = {}
    for r in records:
        kinds[r.impl] = r.kind
        if r.ms is not None:
            times.setdefault(r.impl, {})[r.layer] = r.ms
    algos = [i for i, k in kinds.items() if k == "algorithm"]
    refs = [i for i, k in kinds.items() if k == "peer"] + [a for a in algos if a == "im2col"]
    out = {}
    for a in algos:
        for p in refs:
            if p == a:
                continue
            common = [lay for lay in times.get(a, {}) if lay in times.get(p, {})]
            if common:
                logs = [math.log(times[p][lay] / times[a][lay]) for lay in common]
                out[(a, p)] = (math.exp(sum(logs) / len(logs)), len(common))
    return out


def auto_quality(records: list[Record]) -> list[tuple[str, str, str, float]]:
    """Per layer: (layer, chosen, fastest, t_chosen / t_fastest), from the named algorithms'
    times of the same run, among the algorithms admissible under auto's default budgets (the
    chooser is judged on the algorithms it may choose between)."""
    out = []
    layers = dict.fromkeys(r.layer for r in records)
    for layer in layers:
        rs = [r for r in records if r.layer == layer]
        auto = next((r for r in rs if r.impl == "auto" and r.chosen), None)
        timed = {r.impl: r.ms for r in rs if r.kind == "algorithm" and r.impl != "auto" and r.ms is not None
                 and (auto is None or not auto.candidates or r.impl in auto.candidates)}
        if auto is None or auto.chosen not in timed:
            continue
        fastest = min(timed, key=timed.get)
        out.append((layer, auto.chosen, fastest, timed[auto.chosen] / timed[fastest]))
    return out


def to_json(info: MachineInfo, suite: str, batch: int, records: list[Record]) -> dict:
    return {
        "machine": asdict(info),
        "suite": suite,
        "batch": batch,
        "records": [asdict(r) for r in records],
        "auto": [
            {"layer": lay, "chosen": c, "fastest": f, "ratio": q} for lay, c, f, q in auto_quality(records)
        ],
        "geomean_speedup": [
            {"algorithm": a, "versus": p, "ratio": v, "layers": n}
            for (a, p), (v, n) in geomean_ratios(records).items()
        ],
    }
