"""Where a compiled network's time goes: each executor segment on one and on all threads, each
of its convolutions inside the segment's run (the worker's clock stamps, caches as the run
leaves them) and alone on one thread, and the operators run on their own.

Per-operator timing on one thread in one process is steadier on a noisy host than whole-network
minima on two threads (those swing +-20% between processes here).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/executor_profile.py \
        --model efficientnet-lite0 --batch 1 --algorithm deterministic
"""

import argparse
import time
import warnings

import numpy as np


def best_ms(f, n=5):
    f()
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--algorithm", default="deterministic")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ort", action="store_true",
                    help="also ONNX Runtime's own per-node profile of the same model (its Conv "
                         "nodes' minimum times over 30 runs, one thread and --threads)")
    a = ap.parse_args()

    import torch

    import convolab
    from convolab.interop.models import load_model
    from convolab.runtime import model as M
    from convolab.runtime._executor import NO_STAMPS, worker

    warnings.filterwarnings("ignore")
    net = load_model(a.model)
    size = 224
    x = torch.randn(a.batch, 3, size, size).numpy()
    cm = convolab.compile(net, torch.from_numpy(x), algorithm=a.algorithm, threads=a.threads)
    cm(x)
    st = cm._states[x.shape]
    team = cm._team()
    print(f"{a.model}, batch {a.batch}, algorithm {a.algorithm!r}, {cm.threads} threads")
    for seg in st.segments:
        if isinstance(seg, M._Segment):
            cs = seg.cs
            scratch = np.zeros(seg.scratch, np.float32)

            def run(prog, fprm, P, stamps=NO_STAMPS, seg=seg, cs=cs, scratch=scratch):
                seg.ctr[:] = 0
                if P == 1:
                    worker(1, prog, fprm, st.arena, seg.wb, seg.ib, seg.ctr, cs, 32, stamps,
                           scratch)
                else:
                    team.run((P, prog, fprm, st.arena, seg.wb, seg.ib, seg.ctr, cs, 32, stamps),
                             seg.scratch)

            def in_run(P, seg=seg, run=run, reps=15):
                """Each operator's minimum time inside whole runs of the segment (ms)."""
                stamps = np.zeros(len(seg.prog) + 1, np.int64)
                best = np.full(len(seg.prog), np.inf)
                for _ in range(reps):
                    run(seg.prog, seg.fprm, P, stamps)
                    best = np.minimum(best, np.diff(stamps) / 1e6)
                return best

            one = best_ms(lambda seg=seg, run=run: run(seg.prog, seg.fprm, 1))
            all_ = best_ms(lambda seg=seg, run=run: run(seg.prog, seg.fprm, seg.P))
            print(f"executor segment, {len(seg.nodes)} operators: {one:.3f} ms on 1 thread, "
                  f"{all_:.3f} ms on {seg.P}")
            seq1 = in_run(1)
            seqp = in_run(seg.P)
            print(f"  per operator, ms: inside the run on 1 thread (sum {seq1.sum():.3f}) / alone "
                  f"on 1 thread / inside the run on {seg.P}; GFLOP/s inside the run on 1 thread")
            for r, i in enumerate(seg.row_nodes):  # one row per node (per image in an image-major run)
                ms = best_ms(lambda r=r, run=run, seg=seg: run(seg.prog[r:r + 1], seg.fprm[r:r + 1], 1))
                p = st.plans.get(i)
                if p is None:  # pooling or linear (`model._executor_op`)
                    print(f"  {seq1[r]:7.3f} {ms:7.3f} {seqp[r]:7.3f}          "
                          f"{cm.graph.nodes[i].kind} {cm.graph.nodes[i].name}")
                    continue
                spec = p.spec
                print(f"  {seq1[r]:7.3f} {ms:7.3f} {seqp[r]:7.3f}  "
                      f"{2 * spec.direct_multiplies / seq1[r] / 1e6:6.1f}  {spec}")
        else:
            n = cm.graph.nodes[seg]
            vals = [None] * len(cm.graph.nodes)
            for j in n.inputs:
                vals[j] = st.buffers.get(j)
            if any(vals[j] is None for j in n.inputs):
                continue  # its input is a view: timed within the whole call only
            ms = best_ms(lambda n=n, seg=seg, vals=vals: M._EXEC[n.kind](cm, seg, n, vals, st))
            p = st.plans.get(seg)
            print(f"alone {ms:7.3f} ms  {n.name} {p.algorithm + ' ' + str(p.spec) if p else ''}")
    print(f"whole call: {best_ms(lambda: cm(x), 10):.3f} ms")
    if a.ort:
        for t in sorted({1, cm.threads}):
            times = ort_conv_profile(net, x, t)
            print(f"ONNX Runtime, {t} thread(s): {len(times)} Conv nodes, {sum(times):.3f} ms in "
                  f"all (per node, in its run's order: {' '.join(f'{v:.3f}' for v in times)})")


def ort_conv_profile(net, x, threads, runs=30):
    """ONNX Runtime's per-node profile of ``net`` (exported with torch.onnx, graph optimisations
    on): each Conv / FusedConv node's minimum time (ms) over ``runs`` runs, in graph order."""
    import io
    import os
    import tempfile

    import onnxruntime as ort
    import torch

    buf = io.BytesIO()
    torch.onnx.export(net, (torch.from_numpy(x),), buf, dynamo=False, input_names=["x"],
                      output_names=["y"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.gettempdir(), "convolab_ort_profile")
    s = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        s.run(None, {"x": x})
    best = profile_minima(s)
    return [ms for ms, op in best.values() if op in ("Conv", "FusedConv")]


def profile_minima(session, stat=min) -> dict[str, tuple[float, str]]:
    """End ``session``'s ONNX Runtime profile: each node's minimum kernel time (ms) (or
    ``stat`` of its times) and its operator type, in the order the nodes first ran; the
    profile file is removed."""
    import json
    import os

    path = session.end_profiling()
    try:
        with open(path) as f:
            events = json.load(f)
    finally:
        os.remove(path)
    times: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            k = e["name"][: -len("_kernel_time")]
            times.setdefault(k, []).append(e["dur"] / 1e3)
            ops[k] = e.get("args", {}).get("op_name", "")
    return {k: (float(stat(v)), ops[k]) for k, v in times.items()}

if __name__ == "__main__":
    main()
