"""Figures of ``convolab.highdim``: accuracy, speed against peers, scaling, learned SBS.

Run ``convolab bilateral-bench`` (its CLI: `convolab.commands.highdim`); ``--quick`` uses small
crops, ``--sections`` picks a subset, ``--json PATH`` writes every number. Each section is a
``compute_<section>`` (plain rows or a dictionary, what ``--json`` holds; nothing printed) and a
``render_<section>`` (its tables and notes on a rich console). Needs scikit-image
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

Size: the four sections of one command, a compute and a render function each, sharing the
photographs, the timing helper and the sigma grid.
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


def sigmas(quick: bool) -> list[tuple[float, float]]:
    """The (sigma_spatial, sigma_color) pairs of the accuracy and speed sections."""
    return SIGMAS[1:3] if quick else SIGMAS


def compute_accuracy(*, quick: bool = False, exact_step: int = 4, images=None,
                     sigma_pairs=None) -> list[dict]:
    """PSNR of the permutohedral lattice (and of the grid, grey images) against the exact filter
    evaluated every ``exact_step``-th pixel; one row per image and sigma pair. ``images``:
    scikit-image photograph names (default: by ``quick``), loaded with `load`; ``sigma_pairs``:
    default `sigmas` (``quick``). Nothing printed."""
    from .exact import exact_bilateral
    from .filters import bilateral_filter

    if images is None:
        images = (COLOUR_IMAGES[:1] + GREY_IMAGES[:1]) if quick else COLOUR_IMAGES + GREY_IMAGES
    pairs = sigmas(quick) if sigma_pairs is None else sigma_pairs
    step = exact_step
    rows = []
    for name in images:
        img = load(name, quick)
        g = img.reshape(*img.shape[:2], -1)
        for ss, sr in pairs:
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
    return rows


def render_accuracy(rows: list[dict], console, *, exact_step: int) -> None:
    """The accuracy table of `compute_accuracy`'s rows."""
    from rich.table import Table

    table = Table(title=f"accuracy: PSNR (dB) against the exact filter (every {exact_step}th pixel)")
    for col in ("image", "d", "sigma_s", "sigma_r", "permutohedral", "grid", "exact s",
                "perm s"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(row["image"], str(row["d"]), f"{row['sigma_spatial']:g}",
                      f"{row['sigma_color']:g}", f"{row['psnr_permutohedral']:.1f}",
                      f"{row['psnr_grid']:.1f}" if "psnr_grid" in row else "-",
                      f"{row['exact_s']:.2f}", f"{row['permutohedral_s']:.3f}")
    console.print(table)


#: the photograph of the speed section (`speed_image`)
SPEED_IMAGE = "astronaut"


def speed_image(quick: bool) -> np.ndarray:
    """The colour photograph `compute_speed` times (a 128 x 128 crop with ``quick``)."""
    return load(SPEED_IMAGE, quick)


def compute_speed(image=None, *, quick: bool = False, repeats: int = 3, exact_step: int = 4,
                  sigma_pairs=None) -> list[dict]:
    """Time ``bilateral_filter`` (all Numba threads and one), scikit-image's and OpenCV's
    bilateral filters (when installed) on ``image`` (default `speed_image`), interleaved, warm,
    minimum of up to ``repeats``; PSNR against the exact filter (every ``exact_step``-th pixel),
    whole and interior. One row per sigma pair (default `sigmas`). Nothing printed."""
    import numba
    from skimage.restoration import denoise_bilateral

    from .exact import exact_bilateral
    from .filters import bilateral_filter

    try:
        import cv2
    except ImportError:  # pragma: no cover - optional peer
        cv2 = None
    img = speed_image(quick) if image is None else image
    f32 = img.astype(np.float32)
    nthreads = numba.get_num_threads()
    rows = []
    for ss, sr in sigmas(quick) if sigma_pairs is None else sigma_pairs:
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
        for rep in range(repeats):
            for k, fn in runs.items():
                if rep > 0 and best[k] > 10.0:
                    continue  # one run of a > 10 s peer is enough
                t, outs[k] = _timed(fn)
                best[k] = min(best[k], t)
        step = exact_step
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
    return rows


def render_speed(rows: list[dict], console, *, shape, repeats: int) -> None:
    """The speed table of `compute_speed`'s rows (``shape``: the image's, ``repeats`` as timed),
    then a note on how the peers define the filter."""
    from rich.table import Table

    nthreads = rows[0]["threads"] if rows else None
    table = Table(title=f"speed: {shape[0]}x{shape[1]} colour (d = 5), seconds "
                  f"(min of up to {repeats}; Numba threads {nthreads})")
    for col in ("sigma_s", "sigma_r", "permutohedral", "perm 1 thread", "skimage", "cv2",
                "skimage / perm", "cv2 / perm", "PSNR perm", "PSNR skimage", "PSNR cv2",
                "interior PSNR perm / skimage / cv2"):
        table.add_column(col, justify="right")
    for row in rows:
        cv2 = "cv2_s" in row
        # the runs in the order timed: permutohedral, its 1-thread run, skimage, cv2
        runs = [k[len("psnr_interior_"):] for k in row if k.startswith("psnr_interior_")]
        table.add_row(
            f"{row['sigma_spatial']:g}", f"{row['sigma_color']:g}",
            f"{row['permutohedral_s']:.3f}",
            f"{row['permutohedral_1thread_s']:.3f}", f"{row['skimage_s']:.3f}",
            f"{row['cv2_s']:.3f}" if cv2 else "-", f"{row['skimage_over_permutohedral']:.1f}x",
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


#: sigma_spatial, sigma_color of the scaling section's time-against-n cases
SCALING_SIGMAS = (8.0, 0.1)


def scaling_side(quick: bool) -> int:
    """The side of the (square) grey crop of the scaling section's time-against-d cases."""
    return 128 if quick else 256


def compute_scaling(*, quick: bool = False, repeats: int = 3, sides=None, side=None,
                    dims=None) -> dict:
    """Permutohedral time (minimum of ``repeats``, interleaved) against n (square crops of
    ``sides`` pixels of a photograph, d = 5) and against d (``dims``, on a ``side`` x ``side``
    grey crop: position and patch PCA features), with the log-log slopes. Defaults by
    ``quick``. Returns ``{"vs_n": [{n, lattice, seconds}], "slope_n", "vs_d": [{d, lattice,
    seconds}], "slope_d", "slope_d_per_point"}``; nothing printed."""
    from .permutohedral import PermutohedralLattice

    def time_cases(cases):
        """Min time and lattice size of each (pos, vals) case; repeats interleaved across the
        cases, so a burst of load on the (shared) machine touches all of them alike."""
        PermutohedralLattice(cases[0][0][:64]).filter(cases[0][1][:64])
        best, size = [float("inf")] * len(cases), [0] * len(cases)
        for _ in range(repeats):
            for i, (pos, vals) in enumerate(cases):
                t0 = time.perf_counter()
                lat = PermutohedralLattice(pos)
                lat.filter(vals)
                best[i] = min(best[i], time.perf_counter() - t0)
                size[i] = lat.size
        return list(zip(best, size, strict=True))

    out = {"vs_n": [], "vs_d": []}
    img = load("astronaut", False)
    ss, sr = SCALING_SIGMAS
    if sides is None:
        sides = [64, 128, 256] if quick else [64, 128, 256, 512]
    cases = []
    for s in sides:
        crop = img[:s, :s]
        yy, xx = np.mgrid[:s, :s]
        pos = np.concatenate([yy[..., None] / ss, xx[..., None] / ss, crop / sr], -1)
        cases.append((pos.reshape(-1, 5), np.ascontiguousarray(crop.reshape(-1, 3))))
    for s, (t, m) in zip(sides, time_cases(cases), strict=True):
        out["vs_n"].append({"n": s * s, "lattice": m, "seconds": t})
    ns = [r["n"] for r in out["vs_n"]]
    out["slope_n"] = _fit_slope(ns, [r["seconds"] for r in out["vs_n"]])

    side = scaling_side(quick) if side is None else side
    grey = load("camera", False)[:side, :side]
    if dims is None:
        dims = [2, 3, 4, 6, 8, 12, 16] if quick else [2, 3, 4, 5, 6, 8, 10, 12, 14, 16]
    feats = patch_features(grey, 7, max(dims) - 2)
    yy, xx = np.mgrid[:side, :side]
    vals = np.ascontiguousarray(grey.reshape(-1, 1))
    n = side * side
    cases = [(np.concatenate([yy[..., None] / 8.0, xx[..., None] / 8.0,
                              feats[..., : d - 2] / 0.2], -1).reshape(n, d), vals)
             for d in dims]
    for d, (t, m) in zip(dims, time_cases(cases), strict=True):
        out["vs_d"].append({"d": d, "lattice": m, "seconds": t})
    d1 = [r["d"] + 1 for r in out["vs_d"]]
    out["slope_d"] = _fit_slope(d1, [r["seconds"] for r in out["vs_d"]])
    out["slope_d_per_point"] = _fit_slope(
        d1, [r["seconds"] / (n + r["lattice"]) for r in out["vs_d"]])
    return out


def render_scaling(out: dict, console, *, side: int) -> None:
    """The time-against-n and time-against-d tables of `compute_scaling`'s result (``side``:
    that of its time-against-d crop), each with its slopes."""
    from rich.table import Table

    ss, sr = SCALING_SIGMAS
    t_n = Table(title=f"time vs n: d = 5, sigma_s = {ss:g}, sigma_r = {sr:g}")
    for col in ("n", "lattice points", "seconds", "ns / point"):
        t_n.add_column(col, justify="right")
    for r in out["vs_n"]:
        t, m, npix = r["seconds"], r["lattice"], r["n"]
        t_n.add_row(str(npix), str(m), f"{t:.4f}", f"{1e9 * t / npix:.0f}")
    console.print(t_n)
    console.print(f"log-log slope of time against n: {out['slope_n']:.2f} (1 = linear)")

    t_d = Table(title=f"time vs d: {side}x{side} pixels, (y, x) / 8 and d - 2 patch PCA "
                "components / 0.2")
    for col in ("d", "lattice points m", "m / n", "seconds", "ns / point",
                "ns / (point (d+1)^2)", "ns / ((n+m) (d+1)^2)"):
        t_d.add_column(col, justify="right")
    n = side * side
    for r in out["vs_d"]:
        d, t, m = r["d"], r["seconds"], r["lattice"]
        t_d.add_row(str(d), str(m), f"{m / n:.2f}", f"{t:.4f}", f"{1e9 * t / n:.0f}",
                    f"{1e9 * t / n / (d + 1) ** 2:.1f}",
                    f"{1e9 * t / (n + m) / (d + 1) ** 2:.1f}")
    console.print(t_d)
    console.print(
        f"log-log slope against d + 1 of the time: {out['slope_d']:.2f}; of the time per input "
        f"or lattice point: {out['slope_d_per_point']:.2f} (2 = O(d^2 (n + m)))")


def learned_size(quick: bool) -> int:
    """The side of the learned section's train and test crops."""
    return 32 if quick else 64


def compute_learned(*, quick: bool = False, size=None, plane_n=None) -> list[dict]:
    """``fit_sbs`` on an exponential and a Cauchy kernel (radius 2 and 3; trained on a
    ``size`` x ``size`` crop of one photograph, tested on another), then on the Gaussian at
    d = 8 and 16 (``plane_n`` points near a plane). One row per kernel, radius (or d) and set
    (train, test): RMSE of the Gaussian SBS, scales fitted (photographs only), taps and scales
    fitted; the taps, scales and fit time. Defaults by ``quick``; nothing printed."""
    from .exact import exact_filter
    from .learned import fit_sbs, gaussian_sbs, rmse

    def feats(img, ss, sr):
        H, W, _ = img.shape
        yy, xx = np.mgrid[:H, :W]
        pos = np.concatenate([yy[..., None] / ss, xx[..., None] / ss, img / sr], -1)
        return pos.reshape(-1, 5), np.ascontiguousarray(img.reshape(-1, 3))

    size = learned_size(quick) if size is None else size
    # every 4th pixel of the photographs: textured 64 x 64 samples of modest n
    train = load("astronaut", False)[::4, ::4][40 : 40 + size, 40 : 40 + size]
    test = load("coffee", False)[::4, ::4][20 : 20 + size, 40 : 40 + size]
    ss, sr = 4.0, 0.2
    ptr, vtr = feats(train, ss, sr)
    pte, vte = feats(test, ss, sr)
    rows = []
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

    # the Gaussian itself at high d: points near a 2-D plane in R^d (image-like data)
    n = (400 if quick else 800) if plane_n is None else plane_n

    def plane(d, seed):
        rng = np.random.default_rng(seed)
        q = rng.uniform(0, 6, size=(n, 2))
        basis, _ = np.linalg.qr(rng.normal(size=(d, 2)))
        p = q @ basis.T + 0.1 * rng.normal(size=(n, d))
        return p, np.stack([np.sin(q.sum(1)), np.cos(q[:, 0])], axis=1)

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
    return rows


def render_learned(rows: list[dict], console, *, size: int) -> None:
    """The two tables of `compute_learned`'s rows: the photographs' kernels (``size``: the
    crops' side), then the Gaussian at high d (the rows with a ``d``)."""
    from rich.table import Table

    def taps(r):
        return ", ".join(f"{t:.3f}" for t in r["taps"])

    table = Table(title=f"learned SBS: RMSE against the exact filter with the target kernel "
                  f"(train astronaut, test coffee; {size}x{size}, d = 5)")
    for col in ("kernel", "radius", "set", "Gaussian SBS", "scales fitted", "taps + scales",
                "taps", "scales (space, colour)", "fit s"):
        table.add_column(col, justify="right")
    for r in rows:
        if "d" not in r:
            table.add_row(r["kernel"], str(r["radius"]), r["set"], f"{r['rmse_gaussian']:.4f}",
                          f"{r['rmse_scales']:.4f}", f"{r['rmse_learned']:.4f}", taps(r),
                          f"{r['scales'][0]:.3f}, {r['scales'][2]:.3f}", f"{r['fit_s']:.1f}")
    console.print(table)

    table = Table(title="learned SBS for the Gaussian itself: points near a plane in R^d "
                  "(train seed 1, test seed 2), one shared scale, radius 2")
    for col in ("d", "set", "Gaussian SBS", "learned", "taps", "scale", "fit s"):
        table.add_column(col, justify="right")
    for r in rows:
        if "d" in r:
            table.add_row(str(r["d"]), r["set"], f"{r['rmse_gaussian']:.4f}",
                          f"{r['rmse_learned']:.4f}", taps(r), f"{r['scales'][0]:.3f}",
                          f"{r['fit_s']:.1f}")
    console.print(table)
