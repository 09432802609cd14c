"""``convolab bench --plot FILE.png``: one chart of a benchmark run (the ``plot`` extra).

One row per layer, GFLOP/s on a shared axis: ``auto`` (labelled with the algorithm it chose),
the fastest convolab algorithm (labelled), each peer, and every other algorithm as a small
grey dot, so the spread is visible without a bar per algorithm; the run's measured NumPy GEMM
rate is the dashed line. The title names the CPU, threads, batch and the geomean speed-ups.
Works from the records of a run or from its ``--json`` file (`from_json`).
"""

from __future__ import annotations

import json

from ..errors import ConvError

#: bar colours: convolab's auto and best algorithm, then the peers in order
_AUTO, _BEST = "#1f5fa8", "#6fa8dc"
_PEERS = ("#e69138", "#cc0000", "#6aa84f", "#8e7cc3")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConvError("--plot needs matplotlib: pip install 'convolab[plot]'") from None
    return plt


def plot(data: dict, path: str) -> str:
    """Write the chart of ``data`` (the dictionary `convolab.bench.runner.to_json` makes) to
    ``path`` (PNG, or any format matplotlib infers from the suffix); returns ``path``."""
    rows: dict[str, list[dict]] = {}
    for r in data["records"]:
        if not r.get("skipped") and r.get("gflops"):
            rows.setdefault(r["layer"], []).append(r)
    if not rows:
        raise ConvError("nothing to plot: the run has no timed records")
    peers = sorted({r["impl"] for rs in rows.values() for r in rs if r["kind"] == "peer"})
    plt = _pyplot()
    per = 2 + len(peers)  # bars per layer: auto, best algorithm, peers
    height = 0.8 / per
    fig, ax = plt.subplots(figsize=(9, 0.3 * per * len(rows) + 1.8))
    labels = []
    for i, (layer, rs) in enumerate(rows.items()):
        y0 = len(rows) - 1 - i
        labels.append((y0, layer))
        algos = [r for r in rs if r["kind"] == "algorithm" and r["impl"] != "auto"]
        auto = next((r for r in rs if r["impl"] == "auto"), None)
        best = max(algos, key=lambda r: r["gflops"], default=None)
        bars = [(auto, _AUTO, "auto"), (best, _BEST, "fastest convolab algorithm (any error)")]
        bars += [(next((r for r in rs if r["impl"] == p), None), _PEERS[k % len(_PEERS)], p)
                 for k, p in enumerate(peers)]
        for k, (r, colour, what) in enumerate(bars):
            if r is None:
                continue
            y = y0 + 0.4 - (k + 0.5) * height
            ax.barh(y, r["gflops"], height=height * 0.9, color=colour,
                    label=what if i == 0 else None)
            name = r.get("chosen") if r["impl"] == "auto" else (r["impl"] if r is best else "")
            if name:
                ax.text(r["gflops"], y, f" {name}", va="center", fontsize=7)
        others = [r["gflops"] for r in algos if r is not best]
        ax.plot(others, [y0 + 0.4 - 1.5 * height] * len(others), "o", color="0.25", markersize=3,
                zorder=3, label="other convolab algorithms" if i == 0 else None)
    gemm = data.get("machine", {}).get("gemm_gflops")
    if gemm:
        ax.axvline(gemm, color="0.3", linestyle="--", linewidth=1,
                   label=f"NumPy float32 GEMM ({gemm:.0f})")
    ax.set_yticks([y for y, _ in labels], [lay for _, lay in labels], fontsize=8)
    ax.set_xlabel("GFLOP/s (direct-convolution FLOPs / time; higher is faster)")
    m = data.get("machine", {})
    ratios = [g for g in data.get("geomean_speedup", []) if g["algorithm"] == "auto"]
    sub = ", ".join(f"auto {g['ratio']:.2f}x {g['versus']}" for g in ratios)
    ax.set_title(f"convolab bench, suite {data.get('suite')}, batch {data.get('batch')}: "
                 f"{m.get('cpu', '?')}, {m.get('threads', '?')} threads"
                 + (f"\ngeomean {sub}" if sub else ""), fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def from_json(json_path: str, path: str) -> str:
    """The chart of a ``convolab bench --json`` file."""
    try:
        with open(json_path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ConvError(f"cannot read the benchmark file {json_path!r}: {e}") from None
    if not isinstance(data, dict) or "records" not in data:
        raise ConvError(f"{json_path!r} is not a convolab bench --json file (no 'records')")
    return plot(data, path)
