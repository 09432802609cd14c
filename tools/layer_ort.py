"""One convolution (+ ReLU) alone: ONNX Runtime's one-node model against the compiled runtime's
executor, one thread, calls taking turns in one process, minimum of the rounds.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/layer_ort.py \\
        --layer 64,56,64,3,1 --layer 256,14,256,3,1 --layer 64,56,256,1,1

``--layer C,H,K,R,stride``: C -> K channels, an H x H input, an R x R kernel with padding R // 2,
batch ``--batch``. ONNX Runtime takes NCHW at the node's edges (it reorders to its blocked
layout inside the node); inside a network it keeps the blocked layout between layers, so a
layer alone is a bound on its kernel, not its time in a network (`tools/ort_gap.py`).
"""

import argparse
import io
import time
import warnings

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", action="append", required=True, help="C,H,K,R,stride")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    a = ap.parse_args()

    import onnxruntime as ort
    import torch

    import convolab
    from convolab.runtime import model as M
    from convolab.runtime._executor import NO_STAMPS, worker

    warnings.filterwarnings("ignore")
    for spec in a.layer:
        C, H, K, R, s = (int(v) for v in spec.split(","))
        net = torch.nn.Sequential(torch.nn.Conv2d(C, K, R, s, R // 2), torch.nn.ReLU()).eval()
        x = torch.randn(a.batch, C, H, H)
        buf = io.BytesIO()
        torch.onnx.export(net, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
        xn = x.numpy()
        cm = convolab.compile(net, x, algorithm="deterministic", threads=1)
        cm(xn)
        st = cm._states[xn.shape]
        (seg,) = [q for q in st.segments if isinstance(q, M._Segment)]
        scratch = np.zeros(max(int(seg.scratch), 16), np.float32)

        def mine(seg=seg, st=st, scratch=scratch):
            seg.ctr[:] = 0
            worker(1, seg.prog, seg.fprm, st.arena, seg.wb, seg.ib, seg.ctr, seg.cs,
                   32, NO_STAMPS, scratch)

        OH = (H + 2 * (R // 2) - R) // s + 1
        flop = 2 * a.batch * K * C * R * R * OH * OH
        best_o = best_m = float("inf")
        for _ in range(a.rounds):
            t = time.perf_counter()
            sess.run(None, {"x": xn})
            best_o = min(best_o, time.perf_counter() - t)
            t = time.perf_counter()
            mine()
            best_m = min(best_m, time.perf_counter() - t)
        print(f"C{C} H{H} -> K{K} {R}x{R}/{s} N{a.batch}: ONNX Runtime {best_o * 1e3:.3f} ms "
              f"({flop / best_o / 1e9:.1f} GFLOP/s), executor {best_m * 1e3:.3f} ms "
              f"({flop / best_m / 1e9:.1f} GFLOP/s): {best_m / best_o:.3f}x")


if __name__ == "__main__":
    main()
