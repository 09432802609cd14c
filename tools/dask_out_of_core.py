"""Out of core: a convolution of an input several times larger than the workers' memory, from
a zarr store to a zarr store, with the workers' peak memory and a spot check against one process.

    python tools/dask_out_of_core.py                     # the full check: 4 GiB in, 2 x 512 MiB workers
    python tools/dask_out_of_core.py --shape 1,16,1024,1024 --chunks 128,128 --memory-limit 256MiB --tiles 3

Steps:
  1. the input, float32 N(0, 1) from a seeded `dask.array.random` generator, written chunk by
     chunk to ``DIR/x.zarr`` by the workers (skipped when it is there with the same shape);
  2. the workers restarted (their peak memory starts again) and warmed up on a small
     convolution (Numba's kernels loaded: a worker holds about 200 MiB before any data); their
     resident memory then is the baseline, refused when above 60% of ``--memory-limit`` (a
     worker pauses at 80% and would never resume); then
     ``convolab.dask.conv2d(x, w, padding=1, algorithm="direct")`` (3x3, ``--out-channels``)
     read from ``DIR/x.zarr`` and written to ``DIR/y.zarr``, timed (``--timeout``);
  3. each worker's peak resident memory (``ru_maxrss`` of its process) against its
     ``memory_limit``, what it spilled to disk, and whether a worker was restarted;
  4. ``--tiles`` output tiles (two corners, the rest at random, 64 x 64, across chunk borders)
     computed in this process by ``convolab.conv2d`` on the input crop they read (zero-padded
     at the image border) and compared bit for bit with the store, and against float64.

Exit status 0 when every peak is under its limit, no worker restarted and every tile matches.
The workers are ``--workers`` processes of one thread (``convolab.dask.local_cluster``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np


def ints(text):
    return tuple(int(v) for v in text.split(","))


def parse_bytes(text: str) -> int:
    from dask.utils import parse_bytes as pb

    return int(pb(text))


def spilled(dask_worker) -> int:
    """Bytes this worker has on disk (spilled), 0 when it cannot say."""
    data = getattr(dask_worker, "data", None)
    total = getattr(data, "spilled_total", None)
    return int(getattr(total, "disk", 0) or 0)


def rss() -> int:
    """This process's resident memory in bytes."""
    import psutil

    return psutil.Process().memory_info().rss


def crop_conv(xz, w, ty, tx, T):
    """One-process convolution of output tile (ty, tx, T x T) from the input crop it reads
    (stride 1, padding 1, 3x3): the crop with a one-pixel border, zeros outside the image."""
    import convolab

    _, C, H, W = xz.shape
    crop = np.zeros((1, C, T + 2, T + 2), np.float32)
    r0, r1, c0, c1 = max(ty - 1, 0), min(ty + T + 1, H), max(tx - 1, 0), min(tx + T + 1, W)
    crop[:, :, r0 - (ty - 1):r1 - (ty - 1), c0 - (tx - 1):c1 - (tx - 1)] = xz[:, :, r0:r1, c0:c1]
    return convolab.conv2d(crop, w, algorithm="direct"), crop


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=ints, default=(1, 64, 4096, 4096), help="input N,C,H,W (default 1,64,4096,4096)")
    ap.add_argument("--chunks", type=ints, default=(128, 128), help="input chunk H,W (default 128,128)")
    ap.add_argument("--out-channels", type=int, default=64, help="K (default 64)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of one thread (default 2)")
    ap.add_argument("--memory-limit", default="512MiB", help="per worker (default 512MiB)")
    ap.add_argument("--dir", default=None, help="where the stores go (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the stores")
    ap.add_argument("--tiles", type=int, default=6, help="output tiles spot-checked (default 6)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=None, help="seconds the convolution may take (default none)")
    args = ap.parse_args(argv)

    import dask.array as da
    import zarr
    from distributed import Client, wait

    import convolab
    import convolab.dask as cd
    from convolab.dask.cluster import worker_memory_limits

    N, C, H, W = args.shape
    K = args.out_channels
    limit = parse_bytes(args.memory_limit)
    workdir = args.dir or tempfile.mkdtemp(prefix="convolab-ooc-")
    os.makedirs(workdir, exist_ok=True)
    xpath, ypath = os.path.join(workdir, "x.zarr"), os.path.join(workdir, "y.zarr")
    in_bytes = N * C * H * W * 4
    rng = np.random.default_rng(args.seed + 1)
    w = (rng.standard_normal((K, C, 3, 3)) * np.sqrt(2.0 / (9 * C))).astype(np.float32)
    print(f"input  {args.shape} float32 = {in_bytes / 2**30:.2f} GiB in chunks {args.chunks}; "
          f"output {K} channels; workers {args.workers} x {args.memory_limit} "
          f"(input / total limit = {in_bytes / (args.workers * limit):.1f}x); stores in {workdir}", flush=True)
    ok = True
    with cd.local_cluster(n_workers=args.workers, threads_per_worker=1, memory_limit=limit) as cluster, \
            Client(cluster) as client:
        have = None
        if os.path.exists(xpath):
            try:
                have = zarr.open_array(xpath, mode="r").shape
            except Exception:  # noqa: BLE001 - anything unreadable is rewritten
                have = None
        if have != tuple(args.shape):
            t = time.perf_counter()
            x = da.random.default_rng(args.seed).standard_normal(
                args.shape, chunks=(1, C, *args.chunks), dtype=np.float32)
            da.to_zarr(x, xpath, overwrite=True)
            print(f"wrote the input in {time.perf_counter() - t:.1f} s", flush=True)
        client.restart()
        before = set(client.scheduler_info()["workers"])
        small = da.ones((1, C, 2 * args.chunks[0], 2 * args.chunks[1]), chunks=(1, C, *args.chunks),
                        dtype=np.float32)
        client.compute(cd.conv2d(small, w, padding=1, algorithm="direct").sum(), sync=True)
        base = client.run(rss)
        print("worker baseline (imports, kernels loaded): "
              + ", ".join(f"{v / 2**20:.0f} MiB" for v in base.values()), flush=True)
        if max(base.values()) > 0.6 * limit:
            print(f"out-of-core check: the workers hold {max(base.values()) / 2**20:.0f} MiB before any data, "
                  f"over 60% of --memory-limit {args.memory_limit}: raise it")
            return 1
        x = cd.open_array(xpath)
        y = cd.conv2d(x, w, padding=1, algorithm="direct")
        print(f"graph: {y.npartitions} block tasks, output chunks {y.chunksize}", flush=True)
        t = time.perf_counter()
        done = wait(client.compute(cd.save_array(y, ypath, compute=False)), timeout=args.timeout,
                    return_when="ALL_COMPLETED")
        sec = time.perf_counter() - t
        if done.not_done:
            print(f"out-of-core check: FAILED, not done after {args.timeout} s (paused workers?)")
            return 1
        flops = 2 * N * K * H * W * C * 9
        print(f"convolution zarr -> zarr: {sec:.1f} s ({flops / sec / 1e9:.1f} GFLOP/s)")
        peaks = cd.worker_peak_memory(client)
        limits = worker_memory_limits(client)
        disk = client.run(spilled)
        after = set(client.scheduler_info()["workers"])
        for addr in sorted(peaks):
            frac = peaks[addr] / limits[addr] if limits.get(addr) else float("nan")
            under = peaks[addr] < limits.get(addr, 0)
            ok &= under
            print(f"  worker {addr}: peak {peaks[addr] / 2**20:.0f} MiB of {limits[addr] / 2**20:.0f} MiB "
                  f"({100 * frac:.0f}%), spilled {disk.get(addr, 0) / 2**20:.0f} MiB: "
                  f"{'under the limit' if under else 'OVER THE LIMIT'}")
        if before != after:
            ok = False
            print(f"  workers were restarted during the run ({len(before - after)} lost): OVER THE LIMIT")
    xz = zarr.open_array(xpath, mode="r")
    yz = zarr.open_array(ypath, mode="r")
    T = min(64, H, W)
    pick = np.random.default_rng(args.seed + 2)
    tiles = [(0, 0), (H - T, W - T)]
    tiles += [(int(pick.integers(0, H - T + 1)), int(pick.integers(0, W - T + 1))) for _ in range(args.tiles - 2)]
    for ty, tx in tiles[: args.tiles]:
        for n in range(N):
            one, crop = crop_conv(xz[n:n + 1], w, ty, tx, T)
            got = np.asarray(yz[n:n + 1, :, ty:ty + T, tx:tx + T])
            same = got.shape == one.shape and np.array_equal(got.view(np.uint32), one.view(np.uint32))
            ref = convolab.reference.conv2d(crop.astype(np.float64), w.astype(np.float64))
            err = float(np.abs(got - ref).max() / np.abs(ref).max())
            ok &= same
            print(f"  tile n={n} rows {ty}:{ty + T} cols {tx}:{tx + T}: "
                  f"{'bit-identical to one process' if same else 'DIFFERS from one process'}, "
                  f"max error vs float64 {err:.1e} (relative to the tile's max)")
    if not args.keep and args.dir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    print("out-of-core check: " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
