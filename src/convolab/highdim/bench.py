"""Figures of ``convolab.highdim``: accuracy, speed against peers, scaling, learned SBS.

Run ``convolab bilateral-bench`` (its CLI: `convolab.commands.highdim`); ``--quick`` uses small
crops, ``--sections`` picks a subset, ``--json PATH`` writes every number. Needs scikit-image
(its bundled photographs and ``denoise_bilateral``); OpenCV (``opencv-python-headless``) is
timed when installed.

* accuracy: PSNR (data range 1) of the permutohedral lattice, and of the grid for grey images
  (d = 3), against the exact filter on scikit-image's photographs. The exact filter is evaluated
  at every ``--exact-step``-th row and column (each output summing over the whole window, so
  the sampled pixels are exact); PSNR is over those pixels.
* speed: a 512 x 512 colour photograph (d = 5): ``bilateral_filter`` (permutohedral, all Numba
  threads and one thread), ``skimage.restoration.denoise_bilateral`` and ``cv2.bilateralFilter``
  at the same sigmas (window ``2 ceil(3 sigma_spatial) + 1`` for both peers, scikit-image's
  default), interleaved, warm, minimum over repeats.
* scaling: permutohedral time against n (crops of a photograph, d = 5) and against d
  (non-local-means-style features: pixel position and the first d - 2 principal components of
  7 x 7 patches, 256 x 256 pixels), with the time per point and per point and (d + 1)^2.
* learned: ``fit_sbs`` on an exponential and a Cauchy kernel, trained on a crop of one photograph
  and tested on a crop of another; RMSE before (the Gaussian operator), with scales only fitted,
  and with taps and scales fitted; then the Gaussian itself at d = 8 and 16 (points near a
  plane), where the standard taps lose accuracy.
"""

from __future__ import annotations

import time

import numpy as np

SIGMAS = [(2.0, 0.05), (4.0, 0.1), (8.0, 0.1), (16.0, 0.2)]
COLOUR_IMAGES = ["astronaut", "coffee", "chelsea"]
GREY_IMAGES = ["camera", "coins"]
SECTIONS = ("accuracy", "speed", "scaling", "learned")


def psnr(a, b) -> float:
    """PSNR in dB for data range 1."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def load(name: str, quick: bool) -> np.ndarray:
    from skimage import data, img_as_float

    img = img_as_float(getattr(data, name)())
    if quick:
        h, w = img.shape[:2]
        img = img[h // 2 - 64 : h // 2 + 64, w // 2 - 64 : w // 2 + 64]
    return np.ascontiguousarray(img)


def _timed(fn, *a, **k):
    t0 = time.perf_counter()
    r = fn(*a, **k)
    return time.perf_counter() - t0, r


def accuracy(args, console) -> list[dict]:
    from rich.table import Table

    from .exact import exact_bilateral
    from .filters import bilateral_filter

    rows = []
    sigmas = SIGMAS[1:3] if args.quick else SIGMAS
    images = (COLOUR_IMAGES[:1] + GREY_IMAGES[:1]) if args.quick else COLOUR_IMAGES + GREY_IMAGES
    step = args.exact_step
    table = Table(title=f"accuracy: PSNR (dB) against the exact filter (every {step}th pixel)")
    for col in ("image", "d", "sigma_s", "sigma_r", "permutohedral", "grid", "exact s",
                "perm s"):
        table.add_column(col, justify="right")
    for name in images:
        img = load(name, args.quick)
        g = img.reshape(*img.shape[:2], -1)
        for ss, sr in sigmas:
            t_ex, ex = _timed(exact_bilateral, g, g / sr, ss, step)
            t_p, perm = _timed(bilateral_filter, img, ss, sr)
            perm = perm.reshape(g.shape)[::step, ::step]
            row = {"image": name, "shape": list(img.shape), "d": 2 + g.shape[2],
                   "sigma_spatial": ss, "sigma_color": sr, "psnr_permutohedral": psnr(perm, ex),
                   "exact_s": t_ex, "permutohedral_s": t_p}
            if g.shape[2] == 1:
                grid = bilateral_filter(img, ss, sr, method="grid").reshape(g.shape)
                row["psnr_grid"] = psnr(grid[::step, ::step], ex)
            rows.append(row)
            table.add_row(name, str(row["d"]), f"{ss:g}", f"{sr:g}",
                          f"{row['psnr_permutohedral']:.1f}",
                          f"{row['psnr_grid']:.1f}" if "psnr_grid" in row else "-",
                          f"{t_ex:.2f}", f"{t_p:.3f}")
    console.print(table)
    return rows


def speed(args, console) -> list[dict]:
    import numba
    from rich.table import Table
    from skimage.restoration import denoise_bilateral

    from .exact import exact_bilateral
    from .filters import bilateral_filter

    try:
        import cv2
    except ImportError:  # pragma: no cover - optional peer
        cv2 = None
    img = load("astronaut", args.quick)
    f32 = img.astype(np.float32)
    nthreads = numba.get_num_threads()
    rows = []
    sigmas = SIGMAS[1:3] if args.quick else SIGMAS
    table = Table(title=f"speed: {img.shape[0]}x{img.shape[1]} colour (d = 5), seconds "
                  f"(min of up to {args.repeats}; Numba threads {nthreads})")
    for col in ("sigma_s", "sigma_r", "permutohedral", "perm 1 thread", "skimage", "cv2",
                "skimage / perm", "cv2 / perm", "PSNR perm", "PSNR skimage", "PSNR cv2",
                "interior PSNR perm / skimage / cv2"):
        table.add_column(col, justify="right")
    for ss, sr in sigmas:
        win = 2 * int(np.ceil(3 * ss)) + 1

        def perm_all(ss=ss, sr=sr):
            numba.set_num_threads(nthreads)
            return bilateral_filter(img, ss, sr)

        def perm_one(ss=ss, sr=sr):
            numba.set_num_threads(1)
            try:
                return bilateral_filter(img, ss, sr)
            finally:
                numba.set_num_threads(nthreads)

        def skimage(ss=ss, sr=sr):
            return denoise_bilateral(img, sigma_color=sr, sigma_spatial=ss, channel_axis=-1)

        runs = {"permutohedral": perm_all, "permutohedral_1thread": perm_one, "skimage": skimage}
        if cv2 is not None:
            runs["cv2"] = lambda ss=ss, sr=sr, win=win: cv2.bilateralFilter(f32, win, sr, ss)
        perm_all()  # warm (JIT)
        best = {k: float("inf") for k in runs}
        outs = {}
        for rep in range(args.repeats):
            for k, fn in runs.items():
                if rep > 0 and best[k] > 10.0:
                    continue  # one run of a > 10 s peer is enough
                t, outs[k] = _timed(fn)
                best[k] = min(best[k], t)
        step = args.exact_step
        ex = exact_bilateral(img, img / sr, ss, step)
        row = {"sigma_spatial": ss, "sigma_color": sr, "window": win, "threads": nthreads}
        row.update({f"{k}_s": v for k, v in best.items()})
        row.update({f"psnr_{k}": psnr(np.asarray(o)[::step, ::step], ex) for k, o in outs.items()})
        # away from the border (3 sigma_s), where the peers' padding plays no part
        b = -(-int(np.ceil(3 * ss)) // step)
        inner = (slice(b, ex.shape[0] - b), slice(b, ex.shape[1] - b))
        row.update({f"psnr_interior_{k}": psnr(np.asarray(o)[::step, ::step][inner], ex[inner])
                    for k, o in outs.items()})
        row["skimage_over_permutohedral"] = best["skimage"] / best["permutohedral"]
        if cv2 is not None:
            row["cv2_over_permutohedral"] = best["cv2"] / best["permutohedral"]
        rows.append(row)
        table.add_row(
            f"{ss:g}", f"{sr:g}", f"{best['permutohedral']:.3f}",
            f"{best['permutohedral_1thread']:.3f}", f"{best['skimage']:.3f}",
            f"{best['cv2']:.3f}" if cv2 else "-", f"{row['skimage_over_permutohedral']:.1f}x",
            f"{row['cv2_over_permutohedral']:.1f}x" if cv2 else "-",
            f"{row['psnr_permutohedral']:.1f}", f"{row['psnr_skimage']:.1f}",
            f"{row['psnr_cv2']:.1f}" if cv2 else "-",
            " / ".join(f"{row[f'psnr_interior_{k}']:.1f}" for k in runs
                       if k != "permutohedral_1thread"),
        )
    console.print(table)
    console.print(
        "PSNR against the exact filter (whole-image sum, no padding); interior: pixels at "
        "least 3 sigma_s from the border. The peers define the filter differently: window "
        "2 ceil(3 sigma_s) + 1, scikit-image pads with zeros (mode='constant') and tabulates "
        "range weights; OpenCV reflects the border and uses the L1 colour distance."
    )
    return rows


def patch_features(img: np.ndarray, k: int, ncomp: int) -> np.ndarray:
    """First ``ncomp`` principal components of the ``k x k`` patches of a grey image, (H, W, ncomp)."""
    from numpy.lib.stride_tricks import sliding_window_view

    r = k // 2
    pad = np.pad(img, r, mode="reflect")
    patches = sliding_window_view(pad, (k, k)).reshape(img.shape[0] * img.shape[1], k * k)
    centred = patches - patches.mean(axis=0)
    _, _, vt = np.linalg.svd(centred[:: max(1, len(centred) // 20000)], full_matrices=False)
    return (centred @ vt[:ncomp].T).reshape(*img.shape, ncomp)


def _fit_slope(x, y) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def scaling(args, console) -> dict:
    from rich.table import Table

    from .permutohedral import PermutohedralLattice

    def time_cases(cases):
        """Min time and lattice size of each (pos, vals) case; repeats interleaved across the
        cases, so a burst of load on the (shared) machine touches all of them alike."""
        PermutohedralLattice(cases[0][0][:64]).filter(cases[0][1][:64])
        best, size = [float("inf")] * len(cases), [0] * len(cases)
        for _ in range(args.repeats):
            for i, (pos, vals) in enumerate(cases):
                t0 = time.perf_counter()
                lat = PermutohedralLattice(pos)
                lat.filter(vals)
                best[i] = min(best[i], time.perf_counter() - t0)
                size[i] = lat.size
        return list(zip(best, size, strict=True))

    out = {"vs_n": [], "vs_d": []}
    img = load("astronaut", False)
    ss, sr = 8.0, 0.1
    sides = [64, 128, 256] if args.quick else [64, 128, 256, 512]
    t_n = Table(title=f"time vs n: d = 5, sigma_s = {ss:g}, sigma_r = {sr:g}")
    for col in ("n", "lattice points", "seconds", "ns / point"):
        t_n.add_column(col, justify="right")
    cases = []
    for s in sides:
        crop = img[:s, :s]
        yy, xx = np.mgrid[:s, :s]
        pos = np.concatenate([yy[..., None] / ss, xx[..., None] / ss, crop / sr], -1)
        cases.append((pos.reshape(-1, 5), np.ascontiguousarray(crop.reshape(-1, 3))))
    for s, (t, m) in zip(sides, time_cases(cases), strict=True):
        out["vs_n"].append({"n": s * s, "lattice": m, "seconds": t})
        t_n.add_row(str(s * s), str(m), f"{t:.4f}", f"{1e9 * t / (s * s):.0f}")
    ns = [r["n"] for r in out["vs_n"]]
    out["slope_n"] = _fit_slope(ns, [r["seconds"] for r in out["vs_n"]])
    console.print(t_n)
    console.print(f"log-log slope of time against n: {out['slope_n']:.2f} (1 = linear)")

    side = 128 if args.quick else 256
    grey = load("camera", False)[:side, :side]
    dims = [2, 3, 4, 6, 8, 12, 16] if args.quick else [2, 3, 4, 5, 6, 8, 10, 12, 14, 16]
    feats = patch_features(grey, 7, max(dims) - 2)
    yy, xx = np.mgrid[:side, :side]
    vals = np.ascontiguousarray(grey.reshape(-1, 1))
    t_d = Table(title=f"time vs d: {side}x{side} pixels, (y, x) / 8 and d - 2 patch PCA "
                "components / 0.2")
    for col in ("d", "lattice points m", "m / n", "seconds", "ns / point",
                "ns / (point (d+1)^2)", "ns / ((n+m) (d+1)^2)"):
        t_d.add_column(col, justify="right")
    n = side * side
    cases = [(np.concatenate([yy[..., None] / 8.0, xx[..., None] / 8.0,
                              feats[..., : d - 2] / 0.2], -1).reshape(n, d), vals)
             for d in dims]
    for d, (t, m) in zip(dims, time_cases(cases), strict=True):
        out["vs_d"].append({"d": d, "lattice": m, "seconds": t})
        t_d.add_row(str(d), str(m), f"{m / n:.2f}", f"{t:.4f}", f"{1e9 * t / n:.0f}",
                    f"{1e9 * t / n / (d + 1) ** 2:.1f}",
                    f"{1e9 * t / (n + m) / (d + 1) ** 2:.1f}")
    d1 = [r["d"] + 1 for r in out["vs_d"]]
    out["slope_d"] = _fit_slope(d1, [r["seconds"] for r in out["vs_d"]])
    out["slope_d_per_point"] = _fit_slope(
        d1, [r["seconds"] / (n + r["lattice"]) for r in out["vs_d"]])
    console.print(t_d)
    console.print(
        f"log-log slope against d + 1 of the time: {out['slope_d']:.2f}; of the time per input "
        f"or lattice point: {out['slope_d_per_point']:.2f} (2 = O(d^2 (n + m)))")
    return out


def learned(args, console) -> list[dict]:
    from rich.table import Table

    from .exact import exact_filter
    from .learned import fit_sbs, gaussian_sbs, rmse

    def feats(img, ss, sr):
        H, W, _ = img.shape
        yy, xx = np.mgrid[:H, :W]
        pos = np.concatenate([yy[..., None] / ss, xx[..., None] / ss, img / sr], -1)
        return pos.reshape(-1, 5), np.ascontiguousarray(img.reshape(-1, 3))

    size = 32 if args.quick else 64
    # every 4th pixel of the photographs: textured 64 x 64 samples of modest n
    train = load("astronaut", False)[::4, ::4][40 : 40 + size, 40 : 40 + size]
    test = load("coffee", False)[::4, ::4][20 : 20 + size, 40 : 40 + size]
    ss, sr = 4.0, 0.2
    ptr, vtr = feats(train, ss, sr)
    pte, vte = feats(test, ss, sr)
    rows = []
    table = Table(title=f"learned SBS: RMSE against the exact filter with the target kernel "
                  f"(train astronaut, test coffee; {size}x{size}, d = 5)")
    for col in ("kernel", "radius", "set", "Gaussian SBS", "scales fitted", "taps + scales",
                "taps", "scales (space, colour)", "fit s"):
        table.add_column(col, justify="right")
    for kernel in ("exponential", "cauchy"):
        ytr = exact_filter(vtr, ptr, kernel)
        yte = exact_filter(vte, pte, kernel)
        for radius in (2, 3):
            t0 = time.perf_counter()
            full = fit_sbs(ptr, vtr, kernel, radius=radius, groups=[0, 0, 1, 1, 1], target=ytr)
            t_fit = time.perf_counter() - t0
            sc = fit_sbs(ptr, vtr, kernel, radius=radius, groups=[0, 0, 1, 1, 1], target=ytr,
                         fit_taps=False)
            g = gaussian_sbs(5, radius)
            for name, p, v, y in (("train", ptr, vtr, ytr), ("test", pte, vte, yte)):
                r = {"kernel": kernel, "radius": radius, "set": name,
                     "rmse_gaussian": rmse(g.filter(v, p), y),
                     "rmse_scales": rmse(sc.filter(v, p), y),
                     "rmse_learned": rmse(full.filter(v, p), y),
                     "taps": full.taps.tolist(), "scales": full.scale.tolist(),
                     "fit_s": t_fit}
                rows.append(r)
                table.add_row(kernel, str(radius), name, f"{r['rmse_gaussian']:.4f}",
                              f"{r['rmse_scales']:.4f}", f"{r['rmse_learned']:.4f}",
                              ", ".join(f"{t:.3f}" for t in full.taps),
                              f"{full.scale[0]:.3f}, {full.scale[2]:.3f}", f"{t_fit:.1f}")
    console.print(table)

    # the Gaussian itself at high d: points near a 2-D plane in R^d (image-like data)
    def plane(d, seed, n=400 if args.quick else 800):
        rng = np.random.default_rng(seed)
        q = rng.uniform(0, 6, size=(n, 2))
        basis, _ = np.linalg.qr(rng.normal(size=(d, 2)))
        p = q @ basis.T + 0.1 * rng.normal(size=(n, d))
        return p, np.stack([np.sin(q.sum(1)), np.cos(q[:, 0])], axis=1)

    table = Table(title="learned SBS for the Gaussian itself: points near a plane in R^d "
                  "(train seed 1, test seed 2), one shared scale, radius 2")
    for col in ("d", "set", "Gaussian SBS", "learned", "taps", "scale", "fit s"):
        table.add_column(col, justify="right")
    for d in (8, 16):
        ptr, vtr = plane(d, 1)
        pte, vte = plane(d, 2)
        t0 = time.perf_counter()
        model = fit_sbs(ptr, vtr, "gaussian", radius=2, groups=[0] * d)
        t_fit = time.perf_counter() - t0
        g = gaussian_sbs(d, 2)
        for name, p, v in (("train", ptr, vtr), ("test", pte, vte)):
            y = exact_filter(v, p)
            r = {"kernel": "gaussian", "d": d, "set": name, "radius": 2,
                 "rmse_gaussian": rmse(g.filter(v, p), y),
                 "rmse_learned": rmse(model.filter(v, p), y),
                 "taps": model.taps.tolist(), "scales": model.scale.tolist(), "fit_s": t_fit}
            rows.append(r)
            table.add_row(str(d), name, f"{r['rmse_gaussian']:.4f}", f"{r['rmse_learned']:.4f}",
                          ", ".join(f"{t:.3f}" for t in model.taps), f"{model.scale[0]:.3f}",
                          f"{t_fit:.1f}")
    console.print(table)
    return rows
