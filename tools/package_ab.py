"""A compiled network on the working tree against the same network on an earlier commit: the
commit's package is exported next to this one (``git archive``, renamed ``convolab_old``, its
absolute imports rewritten), both compile the same model with the same weights in one process,
their outputs are compared bit for bit and their calls timed in blocks taking turns (a slow
spell of the host falls on both).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_WAIT_POLICY=PASSIVE \\
        python tools/package_ab.py --rev HEAD~1 --model efficientnet-lite0 --batch 1 --threads 2

Prints the minimum and median of the blocks' minima (ms) and new / old: the minima's ratio and
the median of the rounds' ratios. The first run after a kernel change compiles both packages'
executors (about two minutes each). The same code on both sides (``--rev HEAD``, no change;
2-core Xeon, batch 1, 2 threads, 8 rounds) gave 1.001-1.009 (minima) and 1.005-1.014 (median
of rounds): smaller differences are noise.
"""

import argparse
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def export(rev: str, dest: str) -> None:
    """``src/convolab`` at ``rev`` as the package ``convolab_old`` in ``dest``."""
    data = subprocess.run(["git", "-C", ROOT, "archive", rev, "src/convolab"], check=True,
                          capture_output=True).stdout
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(dest, filter="data")
    os.rename(os.path.join(dest, "src", "convolab"), os.path.join(dest, "convolab_old"))
    for base, _, files in os.walk(os.path.join(dest, "convolab_old")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(base, name)
            with open(path) as f:
                text = f.read()
            new = re.sub(r"\bfrom convolab\.", "from convolab_old.", text)
            new = re.sub(r"^(\s*)import convolab$", r"\1import convolab_old as convolab", new,
                         flags=re.M)
            if new != text:
                with open(path, "w") as f:
                    f.write(new)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD", help="the earlier commit (default: HEAD, against "
                    "uncommitted changes)")
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--algorithm", default="auto")
    a = ap.parse_args()

    sha = subprocess.run(["git", "-C", ROOT, "rev-parse", a.rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    dest = os.path.join(tempfile.gettempdir(), "convolab_ab_" + sha)  # kept: compiled once
    if not os.path.isdir(os.path.join(dest, "convolab_old")):
        os.makedirs(dest, exist_ok=True)
        export(a.rev, dest)
    sys.path.insert(0, dest)
    warnings.filterwarnings("ignore")
    import convolab_old
    import torch

    import convolab
    from convolab.interop.models import load_model

    torch.set_num_threads(1)
    net = load_model(a.model).eval()
    x = torch.randn(a.batch, 3, 224, 224).numpy()
    new = convolab.compile(net, x, algorithm=a.algorithm, threads=a.threads)
    old = convolab_old.compile(net, x, algorithm=a.algorithm, threads=a.threads)
    yn, yo = new(x), old(x)
    print(f"{a.model}, batch {a.batch}, {a.threads} threads, {a.algorithm!r}, against {a.rev}: "
          f"same bits {np.array_equal(yn, yo)}, max |difference| {float(np.abs(yn - yo).max()):.3g}")
    per = 20 if a.batch == 1 else 4
    times = {"new": [], "old": []}
    for r in range(a.rounds):
        for name in (("new", "old") if r % 2 == 0 else ("old", "new")):
            f = new if name == "new" else old
            best = float("inf")
            for _ in range(per):
                t = time.perf_counter()
                f(x)
                best = min(best, time.perf_counter() - t)
            times[name].append(best * 1e3)
    tn, to = np.array(times["new"]), np.array(times["old"])
    print(f"new min {tn.min():.3f} median {np.median(tn):.3f} ms; old min {to.min():.3f} median "
          f"{np.median(to):.3f} ms; new / old: min {tn.min() / to.min():.3f}, median of rounds "
          f"{np.median(tn / to):.3f}")


if __name__ == "__main__":
    main()
