"""Where a compiled network loses to ONNX Runtime: each operator's time inside the executor's run
beside ONNX Runtime's own profile of the same node, rounds of the two taking turns in one
process (a slow spell of the host then falls on both), the median per operator over all rounds
(ONNX Runtime's: the median of its profile's times),
and the whole calls of both without profiling.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_WAIT_POLICY=PASSIVE \\
        python tools/ort_gap.py --model resnet50 --batch 1 --threads 1

Columns: convolab ms, ONNX Runtime ms, difference, ratio, layer. Sorting the lines by the
difference (``sort -k3 -g -r``) lists the layers to work on. The executor must run the whole
network as one segment (the case for ResNet-50, EfficientNet-Lite0 and MobileNetV2 with
``--algorithm deterministic``); ONNX Runtime's Conv / FusedConv nodes are matched to the
executor's convolutions in graph order.
"""

import argparse
import io
import os
import tempfile
import warnings

import numpy as np
from executor_profile import best_ms, profile_minima  # this directory's tool


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--algorithm", default="deterministic")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--spin", action="store_true",
                    help="ONNX Runtime's threads spin between runs and nodes (its default)")
    a = ap.parse_args()

    import onnxruntime as ort
    import torch

    import convolab
    from convolab.interop.models import load_model
    from convolab.runtime import model as M
    from convolab.runtime._executor import worker

    warnings.filterwarnings("ignore")
    net = load_model(a.model).eval()
    x = torch.randn(a.batch, 3, 224, 224).numpy()
    T = a.threads
    cm = convolab.compile(net, torch.from_numpy(x), algorithm=a.algorithm, threads=T)
    cm(x)
    st = cm._states[x.shape]
    segs = [s for s in st.segments if isinstance(s, M._Segment)]
    if len(st.segments) != 1 or len(segs) != 1:
        raise SystemExit(f"{a.model} runs as {len(st.segments)} segments; this tool needs one")
    seg = segs[0]
    team = cm._team()
    cs = seg.cs
    scratch = np.zeros(seg.scratch, np.float32) if isinstance(seg.scratch, int) else seg.scratch

    def run(stamps):
        seg.ctr[:] = 0
        if T == 1:
            worker(1, seg.prog, seg.fprm, st.arena, seg.wb, seg.ib, seg.ctr, cs, 32, stamps,
                   scratch)
        else:
            team.run((T, seg.prog, seg.fprm, st.arena, seg.wb, seg.ib, seg.ctr, cs, 32, stamps),
                     seg.scratch)

    buf = io.BytesIO()
    torch.onnx.export(net, (torch.from_numpy(x),), buf, dynamo=False, input_names=["x"],
                      output_names=["y"])

    def session(profile):
        so = ort.SessionOptions()
        so.intra_op_num_threads = T
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if a.spin else "0")
        if profile:
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tempfile.gettempdir(), "convolab_ort_gap")
        return ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])

    prof, plain = session(True), session(False)
    stamps = np.zeros(len(seg.prog) + 1, np.int64)
    diffs = []
    whole_c, whole_o = [], []
    for _ in range(a.rounds):
        for _ in range(8):
            run(stamps)
            diffs.append(np.diff(stamps) / 1e6)
        for _ in range(8):
            prof.run(None, {"x": x})
        whole_c.append(best_ms(lambda: cm(x), 5))
        whole_o.append(best_ms(lambda: plain.run(None, {"x": x}), 5))
    # every thread stamps each barrier it passes, so one operator's stamp can come from a
    # thread that left the barrier late and the next one's from one that left it early: a
    # single run's difference can be near zero; the median over the runs is not
    best = np.median(np.array(diffs), axis=0)
    minima = profile_minima(prof, np.median)
    ort_ms = {k: ms for k, (ms, _) in minima.items()}
    kind = {k: op for k, (_, op) in minima.items()}
    convs = [k for k in ort_ms if kind[k] in ("Conv", "FusedConv")]
    other = sum(v for k, v in ort_ms.items() if k not in convs)
    mine: dict[int, float] = {}  # per node (summed over its images in an image-major run)
    for r, i in enumerate(seg.row_nodes):
        mine[i] = mine.get(i, 0.0) + best[r]
    nconv = sum(1 for i in mine if i in st.plans)
    if nconv != len(convs):
        raise SystemExit(f"{nconv} convolutions here, {len(convs)} Conv nodes in ONNX Runtime's graph")
    wc, wo = min(whole_c), min(whole_o)
    print(f"{a.model}, batch {a.batch}, {T} thread(s), {a.algorithm!r}: whole call {wc:.3f} ms, "
          f"ONNX Runtime {wo:.3f} ms (no profiling): {wc / wo:.3f}x")
    ours = sum(mine.values())
    theirs = sum(ort_ms[k] for k in convs)
    print(f"operators inside the run: {ours:.3f} ms; ONNX Runtime's Conv nodes {theirs:.3f} ms + "
          f"other nodes {other:.3f} ms")
    ci = 0
    for i, t in mine.items():
        p = st.plans.get(i)
        if p is None:
            print(f"  {t:7.3f}                          {cm.graph.nodes[i].kind}")
            continue
        o = ort_ms[convs[ci]]
        ci += 1
        print(f"  {t:7.3f} {o:7.3f} {t - o:+7.3f} {t / o:5.2f}  {p.spec} {p.algorithm}")


if __name__ == "__main__":
    main()
