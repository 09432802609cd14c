"""Whole network with and without channel-blocked activations between the layers that handle
them (`convolab.runtime.program._blocked_pairs`), two compiled copies timed taking turns in one process
(ms per forward pass, min / median), and their outputs compared bit for bit.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/blocked_ab.py \\
        --model mobilenet_v2 --batch 1 --threads 2
"""

import argparse
import time
import warnings

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None, help="default: 30 at batch 1, else 8")
    a = ap.parse_args()

    import torch

    import convolab
    from convolab.interop.models import load_model
    from convolab.runtime import program as P

    warnings.filterwarnings("ignore")
    net = load_model(a.model).eval()
    x = torch.randn(a.batch, 3, 224, 224)
    xn = x.numpy()
    cms, outs = {}, {}
    pairs = P._blocked_pairs
    for blocked in (True, False):
        P._blocked_pairs = pairs if blocked else (lambda *args: {})
        try:
            cm = convolab.compile(net, x, algorithm="deterministic", threads=a.threads)
            cm(xn)
            outs[blocked] = np.asarray(cm(xn))
        finally:
            P._blocked_pairs = pairs
        cms[blocked] = cm
    times = {True: [], False: []}
    for _ in range(a.rounds or (30 if a.batch == 1 else 8)):
        for blocked in (True, False):
            t = time.perf_counter()
            cms[blocked](xn)
            times[blocked].append((time.perf_counter() - t) * 1e3)
    print(f"{a.model}, batch {a.batch}, {cms[True].threads} threads; outputs bit-identical: "
          f"{np.array_equal(outs[True], outs[False])}")
    for blocked in (True, False):
        t = np.array(times[blocked])
        print(f"  channel-blocked pairs {'on ' if blocked else 'off'}: min {t.min():.2f} ms, "
              f"median {np.median(t):.2f} ms")


if __name__ == "__main__":
    main()
