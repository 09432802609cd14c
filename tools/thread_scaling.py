"""A compiled network and ONNX Runtime (default session: threads spinning between runs) at one
and at two threads, taking turns in one process: min / median ms per call and each side's
speed-up from one thread to two.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_WAIT_POLICY=PASSIVE \\
        python tools/thread_scaling.py --model efficientnet-lite0 --batch 1

Separates the two halves of a two-thread gap: each side's one-thread speed (its kernels) and
its scaling (barriers, load balance, the second core's caches). Each round times every
configuration for ``--per-block`` calls in turn; the minimum over rounds of each block's
minimum is reported.
"""

import argparse
import io
import time
import warnings

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--algorithm", default="deterministic")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--per-block", type=int, default=None, help="default: max(5, 40 / batch)")
    a = ap.parse_args()

    import onnxruntime as ort
    import torch

    import convolab
    from convolab.interop.models import load_model

    warnings.filterwarnings("ignore")
    m = load_model(a.model)
    model = (m[0] if isinstance(m, tuple) else m).eval()
    x = torch.randn(a.batch, 3, 224, 224)
    xn = x.numpy()
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}})
    runs = {}
    for t in (1, 2):
        cm = convolab.compile(model, x, threads=t, algorithm=a.algorithm)
        cm(xn)
        runs[f"convolab {t}t"] = lambda cm=cm: cm(xn)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = t, 1
        sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
        sess.run(None, {"x": xn})
        runs[f"onnxruntime {t}t"] = lambda s=sess: s.run(None, {"x": xn})
    per = a.per_block or max(5, 40 // a.batch)
    best = {k: [] for k in runs}
    for _ in range(a.rounds):
        for k, f in runs.items():
            ts = []
            for _ in range(per):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
            best[k].append(min(ts))
    ms = {k: np.array(v) * 1e3 for k, v in best.items()}
    print(f"{a.model}, batch {a.batch}, '{a.algorithm}': ms per call (min / median of the rounds' "
          "minima)")
    for k, v in ms.items():
        print(f"  {k:16s} {v.min():8.3f} {np.median(v):8.3f}")
    for side in ("convolab", "onnxruntime"):
        print(f"  {side} scaling 1 -> 2 threads: {ms[side + ' 1t'].min() / ms[side + ' 2t'].min():.2f}x")
    for t in (1, 2):
        print(f"  convolab / onnxruntime at {t} thread(s): "
              f"{ms[f'convolab {t}t'].min() / ms[f'onnxruntime {t}t'].min():.3f}x")


if __name__ == "__main__":
    main()
