"""A compiled network against ONNX Runtime's default session (threads spinning between runs) in
blocks of calls taking turns in one process: min / p25 / median ms per call and the ratios.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_WAIT_POLICY=PASSIVE \\
        python tools/ort_blocks.py --model mobilenet_v2 --batch 1 --blocks 8 --per-block 40

`convolab model --compile` interleaves its configurations call by call, so each finds the
others' weights in the cache, and times ONNX Runtime's spinning session in one block after the
rounds (its threads spin on after each run and would slow the next configuration). Here each
side runs ``--per-block`` calls at a time (the first of each block not counted), so both find
their own weights warm, and the blocks alternate so that slow spells of the host fall on both.
The calls right after an ONNX Runtime block share the CPUs with its still-spinning threads:
read the minimum and the first quartile, not the median.
"""

import argparse
import io
import time
import warnings

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--algorithm", default="auto")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--per-block", type=int, default=40)
    ap.add_argument("--blocking", action="store_true",
                    help="ONNX Runtime's threads block between runs instead of spinning")
    a = ap.parse_args()

    import onnxruntime as ort
    import torch

    import convolab
    from convolab.interop.models import load_model

    warnings.filterwarnings("ignore")
    net = load_model(a.model).eval()
    x = torch.randn(a.batch, 3, 224, 224)
    xn = x.numpy()
    cm = convolab.compile(net, x, algorithm=a.algorithm, threads=a.threads)
    buf = io.BytesIO()
    torch.onnx.export(net, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0" if a.blocking else "1")
    sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = net(x).numpy()
    y = cm(xn)
    print(f"{a.model}, batch {a.batch}, {a.threads} threads, convolab {a.algorithm!r}: "
          f"max |dlogit| vs torch {np.abs(y - ref).max():.2e}")
    calls = {f"convolab {a.algorithm}": lambda: cm(xn),
             "onnxruntime " + ("blocking" if a.blocking else "spinning"):
                 lambda: sess.run(None, {"x": xn})}
    times = {k: [] for k in calls}
    for _ in range(a.blocks):
        for k, f in calls.items():
            f()
            for _ in range(a.per_block):
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    peer = np.array(times[list(calls)[1]]) * 1e3
    for k, v in times.items():
        v = np.array(v) * 1e3
        print(f"{k:22s} min {v.min():8.3f}  p25 {np.percentile(v, 25):8.3f}  median "
              f"{np.median(v):8.3f}  min / peer's {v.min() / peer.min():.3f}  p25 / peer's "
              f"{np.percentile(v, 25) / np.percentile(peer, 25):.3f}")


if __name__ == "__main__":
    main()
