"""``convolab hsi``: train and evaluate the MGRNet-like model and its ablations on a scene.

``convolab hsi`` builds the semi-synthetic scene (`convolab.graph.scene.make_scene`), its
superpixel scales, and for each split (stratified random, spatially disjoint) and seed trains
every method (pixel-wise SVM, CNN only, single-scale GCN + CNN, multi-scale without fusion,
full) and prints OA / AA / kappa as mean +- std over the seeds, a table per split and the
drop from the random to the disjoint split. ``--json FILE`` writes the figures as JSON,
``--map FILE.png`` the last method's classification map (seed 0, first split) beside the
ground truth (matplotlib). The work is `convolab.graph`'s; this module parses (`_parse`), drives
it (`compute`, `compute_bench`: plain data, nothing printed) and renders.

``convolab hsi --bench`` times preprocessing (PCA, SLIC scales, graphs), training (one epoch
and ``--epochs`` epochs of the full model) and full-scene inference (the compiled model
through `convolab.conv2d`, and torch for comparison), with ``--threads`` threads.

Size: one command's parse, compute and render, and its ``bench`` mode, which share the scene
set-up (`prepare_scene`) and the configuration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import ConvError
from ._common import add_json, add_threads, write_json
from ._common import console as make_console

METHODS = ("svm", "cnn", "single", "multi", "full")
LABELS = {"svm": "SVM (pixel-wise)", "cnn": "CNN only", "single": "single-scale GCN + CNN",
          "multi": "multi-scale, no fusion", "full": "MGRNet-like (full)"}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "hsi",
        help="multi-scale graph convolution on a hyperspectral scene (train + evaluate, or --bench)",
        description="Train and evaluate the MGRNet-like model and its ablations on the semi-synthetic "
        "Indian Pines scene over several seeds, on a random and a spatially disjoint split "
        "(convolab.graph; needs the graph extra).",
    )
    p.add_argument("--layout", choices=("indian_pines", "fields"), default="indian_pines")
    p.add_argument("--scene-seed", type=int, default=0, help="seed of the scene (default 0)")
    p.add_argument("--library", choices=("auto", "earthlib", "synthetic"), default="auto",
                   help="spectra: earthlib's, or the analytic fallback (auto: earthlib if installed)")
    p.add_argument("--seeds", type=int, default=5, help="training seeds per method and split (default 5)")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--per-class", type=int, default=15, help="training labels per class (default 15)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--splits", default="random,disjoint", help="comma-separated, of random, disjoint")
    p.add_argument("--radius", type=int, default=5, help="disjoint split: exclusion radius in pixels")
    p.add_argument("--segments", default="400,200,100", help="SLIC segment counts, finest first")
    p.add_argument("--hops", help="k-hop scales on the finest SLIC graph instead of SLIC scales, e.g. 1,2,3")
    p.add_argument("--single-scale", default="all",
                   help="the scales of the single-scale method: 'all' (one row each) or indices, finest 0")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.5, help="dropout before the head (default 0.5)")
    add_threads(p, "torch and Numba threads")
    p.add_argument("--map", metavar="FILE", help="write the classification map beside the ground truth (PNG)")
    add_json(p, "the figures (per split, method and seed; or the --bench timings)")
    p.add_argument("--bench", action="store_true", help="time preprocessing, training and inference instead")
    p.set_defaults(func=run)


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        v = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConvError(f"--{what} must be comma-separated integers, got {text!r}") from None
    if not v or min(v) < 1:
        raise ConvError(f"--{what} must be positive integers, got {text!r}")
    return v


def _scales(text: str, n: int) -> list[int]:
    if text == "all":
        return list(range(n))
    try:
        v = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        v = []
    if not v or min(v) < 0 or max(v) >= n:
        raise ConvError(f"--single-scale: 'all' or scales in 0..{n - 1}, got {text!r}")
    return v


def _names(text: str, allowed, what: str) -> list[str]:
    v = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in v if s not in allowed]
    if bad or not v:
        raise ConvError(f"--{what}: unknown {bad or text!r}; choose from {', '.join(allowed)}")
    return v


@dataclass(frozen=True)
class HsiConfig:
    """The checked options of ``convolab hsi``."""

    layout: str = "indian_pines"
    scene_seed: int = 0
    library: str = "auto"
    seeds: int = 5
    epochs: int = 300
    per_class: int = 15
    methods: tuple[str, ...] = METHODS
    splits: tuple[str, ...] = ("random", "disjoint")
    radius: int = 5
    segments: tuple[int, ...] = (400, 200, 100)
    hops: tuple[int, ...] | None = None
    single_scale: str = "all"
    width: int = 64
    dropout: float = 0.5
    threads: int | None = None
    bench: bool = False


def _parse(args) -> HsiConfig:
    """Checked options: method and split names, segment counts and hops (positive integers),
    seeds / epochs / labels per class (>= 1), --single-scale (within the scales), --threads."""
    methods = _names(args.methods, METHODS, "methods")
    split_names = _names(args.splits, ("random", "disjoint"), "splits")
    segs = _ints(args.segments, "segments")
    for v, what in ((args.seeds, "seeds"), (args.epochs, "epochs"), (args.per_class, "per-class")):
        if v < 1:
            raise ConvError(f"--{what} must be >= 1, got {v}")
    if args.threads is not None and args.threads < 1:
        raise ConvError(f"--threads must be >= 1, got {args.threads}")
    hops = _ints(args.hops, "hops") if args.hops else None
    _scales(args.single_scale, len(hops) if hops else len(segs))
    return HsiConfig(args.layout, args.scene_seed, args.library, args.seeds, args.epochs, args.per_class,
                     tuple(methods), tuple(split_names), args.radius, segs, hops, args.single_scale,
                     args.width, args.dropout, args.threads, bool(args.bench))


def _threads(n):
    import numba
    import torch

    if n is not None:
        if n < 1:
            raise ConvError(f"--threads must be >= 1, got {n}")
        torch.set_num_threads(n)
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return torch.get_num_threads()


def _printer():
    """Plain lines on the command's console (no markup, no wrapping: the tables stay whole)."""
    con = make_console()

    def say(text: str = "") -> None:
        con.print(text, markup=False, highlight=False, soft_wrap=True)

    return say


def _quiet(text: str = "") -> None:
    pass


def _pm(v) -> str:
    v = np.asarray(v, dtype=float) * 100
    return f"{v.mean():5.1f} ± {v.std():3.1f}"


def _needs_graph_extra() -> None:
    try:
        import skimage  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        raise ConvError(f"convolab hsi needs the graph extra (pip install 'convolab[graph]'): {e}") from None


def prepare_scene(cfg: HsiConfig):
    """The scene (`make_scene`) and its superpixel scales (`train.prepare`): a `train.Prepared`."""
    from ..graph import train
    from ..graph.scene import make_scene

    _needs_graph_extra()
    scene = make_scene(cfg.layout, seed=cfg.scene_seed, library=cfg.library)
    return train.prepare(scene, n_segments=cfg.segments, hops=cfg.hops)


@dataclass
class HsiResult:
    """What ``convolab hsi`` measured: ``runs`` (key, method, scale) in table order, ``labels``
    (key -> row label), ``results[split][key]``: one dictionary per seed (oa, aa, kappa,
    per_class, train_seconds, n_train, n_test), ``maps[(split, key)]``: seed 0's class map."""

    prep: object
    threads: int
    runs: list
    labels: dict
    results: dict
    maps: dict
    total_seconds: float = 0.0


def compute(cfg: HsiConfig, prep=None, say=_quiet) -> HsiResult:
    """Train and score every method on every split and seed (``prep``: the prepared scene, else
    `prepare_scene`). Nothing printed but ``say``: the scene's line, then one line per run."""
    from ..graph import splits as sp
    from ..graph import train

    _needs_graph_extra()
    threads = _threads(cfg.threads)
    t0 = time.perf_counter()
    if prep is None:
        prep = prepare_scene(cfg)
    scene, hops = prep.scene, cfg.hops
    sizes = prep.graph.sizes
    singles = _scales(cfg.single_scale, len(sizes))
    runs = []  # (key, method, scale)
    labels = dict(LABELS)
    for m in cfg.methods:
        if m == "single":
            for s_ in singles:
                runs.append((f"single{s_}", m, s_))
                labels[f"single{s_}"] = f"single-scale ({hops[s_]}-hop)" if hops else \
                    f"single-scale ({sizes[s_]} sp)"
        else:
            runs.append((m, m, 0))
    say(f"scene {scene.layout} (seed {scene.seed}, "
          f"{scene.library} spectra): {scene.cube.shape[0]}x{scene.cube.shape[1]}x{scene.cube.shape[2]}, "
          f"{int((scene.labels > 0).sum())} labelled pixels, {scene.n_classes} classes; superpixels "
          f"{prep.graph.sizes}{f', hops {list(hops)}' if hops else ''}; {cfg.per_class} labels per class; "
          f"{cfg.seeds} seeds; {cfg.epochs} epochs; {threads} threads")
    results: dict = {}
    maps = {}
    for split in cfg.splits:
        for seed in range(cfg.seeds):
            if split == "random":
                tr, te = sp.random_split(scene.labels, cfg.per_class, seed)
            else:
                tr, te = sp.disjoint_split(scene.labels, cfg.per_class, seed, cfg.radius, prep.graph.labels[0])
            for key, m, scale in runs:
                if m == "svm":
                    res = _svm(prep, tr, te, seed)
                else:
                    res = train.run(prep, m, tr, te, seed, cfg.epochs, cfg.width, scale, dropout=cfg.dropout)
                sc = res.scores
                results.setdefault(split, {}).setdefault(key, []).append(
                    {"seed": seed, "oa": sc["oa"], "aa": sc["aa"], "kappa": sc["kappa"],
                     "per_class": [None if np.isnan(v) else float(v) for v in sc["per_class"]],
                     "train_seconds": res.train_seconds, "n_train": int(tr.sum()), "n_test": int(te.sum())})
                if seed == 0:
                    maps[(split, key)] = res.prediction
                say(f"  {split:8s} seed {seed} {key:7s} OA {sc['oa'] * 100:5.1f}  AA {sc['aa'] * 100:5.1f}  "
                      f"kappa {sc['kappa'] * 100:5.1f}  ({res.train_seconds:.1f} s)")
    return HsiResult(prep, threads, runs, labels, results, maps, time.perf_counter() - t0)


def hsi_json(cfg: HsiConfig, result: HsiResult) -> dict:
    """The ``--json`` document: ``meta`` (the settings, row labels, total seconds) and ``results``."""
    prep, hops = result.prep, cfg.hops
    meta = {"layout": cfg.layout, "scene_seed": cfg.scene_seed, "library": prep.scene.library,
            "seeds": cfg.seeds, "epochs": cfg.epochs, "per_class": cfg.per_class,
            "segments": list(prep.graph.sizes), "hops": list(hops) if hops else None, "labels": result.labels,
            "radius": cfg.radius, "threads": result.threads, "total_seconds": result.total_seconds}
    return {"meta": meta, "results": result.results}


def _render(say, cfg: HsiConfig, result: HsiResult) -> None:
    """A table per split (mean ± std over the seeds), the drop from the random to the disjoint
    split, the full model against the others, the total time."""
    runs, labels, results, split_names = result.runs, result.labels, result.results, cfg.splits
    say("")
    for split in split_names:
        r0 = results[split][runs[0][0]][0]
        say(f"{split} split ({r0['n_train']} training, {r0['n_test']} test pixels), mean ± std over "
              f"{cfg.seeds} seeds, %:")
        say(f"  {'method':26s} {'OA':>11s} {'AA':>11s} {'kappa':>11s} {'train s':>8s}")
        for key, _, _ in runs:
            rs = results[split][key]
            say(f"  {labels[key]:26s} {_pm([r['oa'] for r in rs])} {_pm([r['aa'] for r in rs])} "
                  f"{_pm([r['kappa'] for r in rs])} {np.mean([r['train_seconds'] for r in rs]):8.1f}")
        say("")
    if set(split_names) == {"random", "disjoint"}:
        say("drop from the random to the disjoint split (OA points, mean over seeds):")
        for key, _, _ in runs:
            a = np.mean([r["oa"] for r in results["random"][key]]) * 100
            b = np.mean([r["oa"] for r in results["disjoint"][key]]) * 100
            say(f"  {labels[key]:26s} {a:5.1f} -> {b:5.1f}  ({b - a:+5.1f})")
    if "full" in cfg.methods:
        for split in split_names:
            oa = {k: np.mean([r["oa"] for r in v]) * 100 for k, v in results[split].items()}
            others = {k: v for k, v in oa.items() if k != "full"}
            diffs = ", ".join(f"{labels[k]} {oa['full'] - v:+.1f}" for k, v in others.items())
            say(f"{split}: full model OA {oa['full']:.1f}; full minus {diffs} (points)")
    say(f"\ntotal {result.total_seconds:.0f} s")


def run(args) -> int:
    """Parse (`_parse`), compute (`compute`, or `compute_bench` with --bench), render (`_render`,
    `_render_bench`), write the JSON and the --map PNG."""
    cfg = _parse(args)
    _needs_graph_extra()
    say = _printer()
    if cfg.bench:
        _threads(cfg.threads)  # before the scene's superpixels, as for the study
        prep = prepare_scene(cfg)
        bench = compute_bench(cfg, prep)
        _render_bench(say, cfg, prep.scene, bench)
        write_json(args.json, bench)
        return 0
    result = compute(cfg, say=say)
    _render(say, cfg, result)
    write_json(args.json, hsi_json(cfg, result))
    if args.map:
        key = (cfg.splits[0], result.runs[-1][0])
        save_map(result.prep.scene, result.maps[key], args.map, f"{result.labels[key[1]]}, {key[0]} split, seed 0")
        say(f"wrote {args.map}")
    return 0


def _svm(prep, tr, te, seed):
    from ..graph.svm import fit_svm
    from ..graph.train import Result, evaluate

    scene = prep.scene
    x = scene.cube.reshape(-1, scene.cube.shape[2])
    y = scene.labels.ravel()
    t = time.perf_counter()
    model = fit_svm(x[tr.ravel()], y[tr.ravel()], seed=seed)
    secs = time.perf_counter() - t
    pred = model.predict(x).reshape(scene.labels.shape).astype(np.int32)
    return Result("svm", seed, evaluate(pred, scene.labels, te, scene.n_classes), pred, secs)


def save_map(scene, prediction, path, title: str) -> None:
    """The ground truth and a classification map side by side (PNG, matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
    except ImportError:
        raise ConvError("the classification map needs matplotlib (pip install 'convolab[plot]')") from None
    colors = np.vstack([[0, 0, 0, 1], plt.get_cmap("tab20")(np.arange(scene.n_classes))])
    cmap = ListedColormap(colors)
    fig, ax = plt.subplots(1, 2, figsize=(10, 5.4))
    ax[0].imshow(scene.labels, cmap=cmap, vmin=0, vmax=scene.n_classes, interpolation="nearest")
    ax[0].set_title("ground truth (black: unlabelled)")
    ax[1].imshow(np.where(scene.labels > 0, prediction, 0), cmap=cmap, vmin=0, vmax=scene.n_classes,
                 interpolation="nearest")
    ax[1].set_title(title, fontsize=10)
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[i + 1]) for i in range(scene.n_classes)]
    fig.legend(handles, [f"{i + 1} {n}" for i, n in enumerate(scene.class_names)], loc="lower center", ncol=4,
               fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _best(fn, repeat):
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts), float(np.median(ts))


def compute_bench(cfg: HsiConfig, prep=None) -> dict:
    """The ``--bench`` timings (best and median seconds) on the prepared scene ``prep`` (else
    `prepare_scene`): threads, preprocessing, one training step, ``cfg.epochs`` epochs,
    full-scene inference compiled and in torch, and the fraction of pixels on which the two class
    maps agree (the ``--json`` document). Nothing printed."""
    import torch

    from ..graph import splits as sp
    from ..graph import train
    from ..graph.infer import compile_model
    from ..graph.model import MGRNet

    _needs_graph_extra()
    threads = _threads(cfg.threads)
    if prep is None:
        prep = prepare_scene(cfg)
    scene = prep.scene
    segs = cfg.segments
    train.prepare(scene, n_segments=segs)  # warm: Numba compiled, SLIC loaded
    pre = _best(lambda: train.prepare(scene, n_segments=segs), 5)
    tr, _ = sp.random_split(scene.labels, cfg.per_class, 0)
    torch.manual_seed(0)
    model = MGRNet(prep.x.shape[1], scene.n_classes, len(prep.graph.segments), "full", cfg.width,
                   dropout=cfg.dropout)
    train.fit(model, prep, tr, epochs=2)
    step = _best(lambda: train.fit(model, prep, tr, epochs=1), 5)
    torch.manual_seed(0)
    model = MGRNet(prep.x.shape[1], scene.n_classes, len(prep.graph.segments), "full", cfg.width,
                   dropout=cfg.dropout)
    secs, _ = train.fit(model, prep, tr, epochs=cfg.epochs)
    comp = compile_model(model, prep.graph, prep.x.shape)
    xn = prep.x.numpy()
    comp(xn)
    inf = _best(lambda: comp(xn), 10)
    model.eval()
    with torch.no_grad():
        model(prep.x, prep.graph)
        tinf = _best(lambda: model(prep.x, prep.graph), 10)
    agree = float((comp(xn) == train.predict(model, prep)).mean())
    return {"threads": threads, "superpixels": prep.graph.sizes, "preprocess_s": pre, "train_step_s": step,
            "epochs": cfg.epochs, "train_s": secs, "inference_s": inf, "torch_inference_s": tinf,
            "agreement": agree}


def _render_bench(say, cfg: HsiConfig, scene, b: dict) -> None:
    """The ``--bench`` lines: each timing, and the agreement of the class maps."""
    pre, step, inf, tinf = b["preprocess_s"], b["train_step_s"], b["inference_s"], b["torch_inference_s"]
    say(f"convolab hsi --bench: {scene.layout} scene {scene.cube.shape}, superpixels {b['superpixels']}, "
          f"{b['threads']} threads")
    say(f"  preprocessing (PCA 30, SLIC x{len(cfg.segments)}, nesting, graphs)  best {pre[0]:.3f} s  "
        f"median {pre[1]:.3f} s")
    say(f"  training step (full model, forward + backward + Adam)  best {step[0]:.3f} s  median {step[1]:.3f} s")
    say(f"  {cfg.epochs} training epochs (full model)                   {b['train_s']:.1f} s")
    say(f"  full-scene inference, convolab.conv2d + graph kernels  best {inf[0]:.4f} s  median {inf[1]:.4f} s")
    say(f"  full-scene inference, torch (for comparison)           best {tinf[0]:.4f} s  median {tinf[1]:.4f} s")
    say(f"  compiled vs torch class maps: {b['agreement'] * 100:.2f} % of pixels agree")
