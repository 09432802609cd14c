"""What the first-plan trial of `auto` costs (convolab.select): plan each of ResNet-50's first six
layers (batch 1) without and with the trial, in a fresh cache directory.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/auto_trial_cost.py
"""

import os
import tempfile
import time

import numpy as np

os.environ["CONVOLAB_CACHE_DIR"] = tempfile.mkdtemp()

import convolab  # noqa: E402 - after the cache directory is set
from convolab.bench.suites import suite  # noqa: E402


def main():
    rng = np.random.default_rng(0)
    for name, spec in suite("resnet50")[:6]:
        w = rng.standard_normal(spec.w_shape).astype(np.float32)
        kw = dict(stride=spec.stride, padding=spec.padding, groups=spec.groups)
        os.environ["CONVOLAB_AUTO_TRIAL"] = "0"
        convolab.plan(spec.x_shape, w, **kw)  # the model's ranking and kernels, once
        t = time.perf_counter()
        convolab.plan(spec.x_shape, w, **kw)
        off = time.perf_counter() - t
        os.environ["CONVOLAB_AUTO_TRIAL"] = "1"
        t = time.perf_counter()
        p = convolab.plan(spec.x_shape, w, **kw)
        on = time.perf_counter() - t
        print(f"{name:16s} plan without trial {off * 1e3:6.1f} ms, with trial {on * 1e3:6.1f} ms"
              f" -> {p.algorithm}")


if __name__ == "__main__":
    main()
