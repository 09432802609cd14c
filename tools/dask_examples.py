"""The examples of docs/dask.md: what they print there comes from these.

    python tools/dask_examples.py conv       # chunked conv2d against one process
    python tools/dask_examples.py filters    # the highdim filters; the lattice at chunk borders
    python tools/dask_examples.py errors     # the messages of bad chunkings
"""

from __future__ import annotations

import functools
import sys

import dask
import dask.array as da
import numpy as np

import convolab
import convolab.dask as cd
from convolab import ConvError


def conv() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 16, 300, 257)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    xd = da.from_array(x, chunks=(1, 16, 128, 100))  # batch and H/W chunks, uneven last ones
    for kw in (dict(padding="same"), dict(stride=2, padding=1), dict(dilation=3, padding=(0, 2, 1, 1))):
        y = cd.conv2d(xd, w, b, algorithm="direct", **kw)
        one = convolab.conv2d(x, w, b, algorithm="direct", **kw)
        print(kw, "->", y.shape, "chunks", y.chunks[2:], "tasks", y.npartitions,
              "bit-identical:", np.array_equal(y.compute().view(np.uint32), one.view(np.uint32)))


def filters() -> None:
    from skimage import data

    import convolab.highdim as hd
    from convolab.dask import filters as F

    def psnr(a, b):
        return 10 * np.log10(1 / np.mean((a - b) ** 2))

    print("lattice reach (standard deviations): "
          + ", ".join(f"d={d}: {cd.lattice_reach(d):.2f}" for d in (2, 3, 5)))
    images = (("astronaut 256x256 RGB", data.astronaut()[:256, :256] / 255.0),
              ("camera 256x256 grey", data.camera()[128:384, 128:384] / 255.0))
    for name, im in images:
        ss, sc = 4.0, 0.1
        d = 2 + (im.shape[2] if im.ndim == 3 else 1)
        x = da.from_array(im, chunks=(64, 64) + im.shape[2:])
        one = hd.bilateral_filter(im, ss, sc)
        exact = hd.bilateral_filter(im, ss, sc, method="exact")
        y = cd.bilateral_filter(x, ss, sc).compute()
        ye = cd.bilateral_filter(x, ss, sc, method="exact").compute()
        # the same graph with each block's lattice at its own corner (no sentinels)
        pinned = F.filter_block
        F.filter_block = functools.partial(pinned, anchored=False)
        try:
            with dask.config.set(scheduler="sync"):
                alone = cd.bilateral_filter(x, ss, sc).compute()
        finally:
            F.filter_block = pinned
        print(f"{name}, sigma_s {ss}, sigma_r {sc}, chunks 64, halo {cd.halo_radius('permutohedral', d, ss)} px "
              f"(exact: {cd.halo_radius('exact', d, ss)} px)")
        print(f"  permutohedral, pinned lattice: bit-identical {np.array_equal(y, one)}; "
              f"exact: bit-identical {np.array_equal(ye, exact)}")
        print(f"  one process vs exact: PSNR {psnr(one, exact):.1f} dB, max |diff| {np.abs(one - exact).max():.3f}")
        print(f"  blocks filtered alone vs one process: PSNR {psnr(alone, one):.1f} dB, "
              f"max |diff| {np.abs(alone - one).max():.3f}; vs exact: PSNR {psnr(alone, exact):.1f} dB")


def errors() -> None:
    x = np.zeros((1, 64, 1024, 1024), np.float32)
    w = np.zeros((64, 64, 3, 3), np.float32)
    cases = [
        ("numpy input", lambda: cd.conv2d(x, w, padding=1)),
        ("chunks along channels", lambda: cd.conv2d(da.from_array(x, chunks=(1, 32, 256, 256)), w, padding=1)),
        ("tasks too big for the workers",
         lambda: cd.conv2d(da.from_array(x, chunks=(1, 64, 1024, 1024)), w, padding=1, memory_limit=256 * 2**20)),
        ("named algorithm that cannot run a block",
         lambda: cd.conv2d(da.from_array(x, chunks=(1, 64, 256, 256)), w, stride=2, algorithm="winograd_f4x3")),
    ]
    for what, f in cases:
        try:
            f()
        except ConvError as e:
            print(f"{what}: {type(e).__name__}: {e}")


if __name__ == "__main__":
    which = sys.argv[1:] or ["conv", "filters", "errors"]
    for name in which:
        {"conv": conv, "filters": filters, "errors": errors}[name]()
