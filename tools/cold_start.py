"""Cold start: the first call of each public entry point in a fresh process whose caches are
warm (Numba's cache of compiled kernels, the convolab cache directory: autotune times, stored
Winograd/SFC engines).

Each case runs once to warm the caches, then in ``--repeat`` fresh processes (cold imports;
the cases take turns); the table gives the minimum and median over those processes of the import, the first call
and the second call, and the time to the first result (import + first call).

    python tools/cold_start.py                      # the table
    python tools/cold_start.py --breakdown          # + imports and cProfile of each first call
    python tools/cold_start.py --cases conv2d,bilateral --breakdown --top 25

Cases:
  import          ``import convolab`` (NumPy imported before)
  conv2d          ``convolab.conv2d(x, w, padding=1)``, x (1, 64, 56, 56), w (64, 64, 3, 3)
                  float32, with CONVOLAB_AUTO_TRIAL=0
  conv2d-trial    the same with the first-plan trial on (its times already cached)
  plan            ``p = convolab.plan(x.shape, w, padding=1); p(x)`` (trial on, cached)
  numba           Numba's one-time set-up alone: import numba and SciPy's BLAS, fill the
                  type system's registries (no kernel)
  direct, im2win  ``convolab.conv2d`` as conv2d, with that algorithm named
  int8            ``convolab.quant.conv2d_int8(x, w, padding=1)``, int8 (1, 64, 56, 56) and 64x64x3x3
  bilateral       ``convolab.highdim.bilateral_filter(img, 4, 0.1)``, a 256x256 RGB float32 image
                  (a smooth synthetic picture)
  gaussian        ``convolab.highdim.gaussian_filter(values, positions)``, 20,000 points, 5-D
                  positions, 3 channels (permutohedral)

``--cache-dir`` defaults to a new temporary directory (the warm-up run fills it), so the
user's cache is neither read nor written; Numba's cache is the installation's. The children
write and read Python's bytecode cache (``__pycache__``) as an installed package does, even
where ``PYTHONDONTWRITEBYTECODE`` is set (``--no-bytecode`` keeps it: every convolab module is
then compiled from source in every process, about 25 ms of ``import convolab``).
``--numba-warm`` does Numba's one-time set-up before the timed first call, so what remains is
convolab's own share; the ``numba`` case times that set-up alone (the first call of anything
that runs a Numba kernel pays it once per process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

#: per case: the module to import, the set-up, the first call, the trial setting (None: the
#: environment's own)
CASES = {
    "import": ("convolab", "", "", "0"),
    "conv2d": (
        "convolab",
        "x = np.random.default_rng(0).standard_normal((1, 64, 56, 56), dtype=np.float32)\n"
        "w = np.random.default_rng(1).standard_normal((64, 64, 3, 3), dtype=np.float32)\n",
        "convolab.conv2d(x, w, padding=1)",
        "0",
    ),
    "conv2d-trial": (
        "convolab",
        "x = np.random.default_rng(0).standard_normal((1, 64, 56, 56), dtype=np.float32)\n"
        "w = np.random.default_rng(1).standard_normal((64, 64, 3, 3), dtype=np.float32)\n",
        "convolab.conv2d(x, w, padding=1)",
        "1",
    ),
    "plan": (
        "convolab",
        "x = np.random.default_rng(0).standard_normal((1, 64, 56, 56), dtype=np.float32)\n"
        "w = np.random.default_rng(1).standard_normal((64, 64, 3, 3), dtype=np.float32)\n",
        "convolab.plan(x.shape, w, padding=1)(x)",
        "1",
    ),
    "direct": (
        "convolab",
        "x = np.random.default_rng(0).standard_normal((1, 64, 56, 56), dtype=np.float32)\n"
        "w = np.random.default_rng(1).standard_normal((64, 64, 3, 3), dtype=np.float32)\n",
        "convolab.conv2d(x, w, padding=1, algorithm='direct')",
        "0",
    ),
    "im2win": (
        "convolab",
        "x = np.random.default_rng(0).standard_normal((1, 64, 56, 56), dtype=np.float32)\n"
        "w = np.random.default_rng(1).standard_normal((64, 64, 3, 3), dtype=np.float32)\n",
        "convolab.conv2d(x, w, padding=1, algorithm='im2win')",
        "0",
    ),
    "int8": (
        "convolab.quant",
        "x = np.random.default_rng(0).integers(-128, 128, (1, 64, 56, 56), dtype=np.int8)\n"
        "w = np.random.default_rng(1).integers(-127, 128, (64, 64, 3, 3), dtype=np.int8)\n",
        "convolab.quant.conv2d_int8(x, w, padding=1)",
        "0",
    ),
    "numba": (
        "convolab",
        "",
        "import numba, scipy.linalg.cython_blas; from numba.core.registry import cpu_target; "
        "cpu_target.target_context.refresh(); cpu_target.typing_context.refresh()",
        "0",
    ),
    "bilateral": (
        "convolab.highdim",
        "yy, xx = np.mgrid[0:256, 0:256] / 256.0\n"
        "img = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * xx + 3 * yy)], -1).astype(np.float32)\n",
        "convolab.highdim.bilateral_filter(img, 4.0, 0.1)",
        "0",
    ),
    "gaussian": (
        "convolab.highdim",
        "pos = np.random.default_rng(0).standard_normal((20000, 5)).astype(np.float32) * 4\n"
        "val = np.random.default_rng(1).standard_normal((20000, 3)).astype(np.float32)\n",
        "convolab.highdim.gaussian_filter(val, pos)",
        "0",
    ),
}

IMPORT, START, END = "@@cold_start import@@", "@@cold_start first call@@", "@@cold_start done@@"

CHILD = """
import sys, time, json
t0 = time.perf_counter()
import numpy as np
sys.stderr.write({imp!r} + "\\n"); sys.stderr.flush()
t1 = time.perf_counter()
import {module}
import convolab
t2 = time.perf_counter()
{setup}
mode = sys.argv[1]
if sys.argv[3] == "1":  # Numba's own one-time set-up done before the first call
    import scipy.linalg.cython_blas
    from numba.core.registry import cpu_target
    cpu_target.target_context.refresh()
    cpu_target.typing_context.refresh()
if mode == "profile":
    import cProfile, pstats
    prof = cProfile.Profile()
sys.stderr.write({start!r} + "\\n"); sys.stderr.flush()
t3 = time.perf_counter()
if mode == "profile":
    prof.enable()
{call}
if mode == "profile":
    prof.disable()
t4 = time.perf_counter()
sys.stderr.write({end!r} + "\\n"); sys.stderr.flush()
{call}
t5 = time.perf_counter()
print(json.dumps({{"numpy": t1 - t0, "import": t2 - t1, "first": t4 - t3, "second": t5 - t4}}))
if mode == "profile":
    pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(int(sys.argv[2]) + 15)
"""


def child_source(case: str) -> str:
    module, setup, call, _ = CASES[case]
    return CHILD.format(module=module, setup=setup, call=call or "pass", imp=IMPORT, start=START,
                        end=END)


def run_child(case: str, env: dict, mode: str = "time", top: int = 20, numba_warm: bool = False
              ) -> tuple[dict, str, str]:
    """One fresh process: (times, stdout after the first line, stderr)."""
    trial = CASES[case][3]
    env = dict(env, CONVOLAB_AUTO_TRIAL=trial)
    cmd = [sys.executable]
    if mode == "importtime":
        cmd += ["-X", "importtime"]
    cmd += ["-c", child_source(case), mode, str(top), "1" if numba_warm else "0"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"case {case} failed (exit {r.returncode}):\n{r.stderr[-4000:]}")
    first, _, rest = r.stdout.partition("\n")
    return json.loads(first), rest, r.stderr


def import_summary(stderr: str, top: int, during: str) -> str:
    """The modules imported during the import or the first call (``-X importtime`` lines
    between the markers): their count, total self time, the outermost ones by cumulative time."""
    a, b = (IMPORT, START) if during == "import" else (START, END)
    lines = stderr.split(a, 1)[-1].split(b, 1)[0].splitlines()
    rows = []
    for line in lines:
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, name = line[len("import time:"):].split("|", 2)
        name = name[1:]  # the one space after the bar; the rest is the nesting
        depth = (len(name) - len(name.lstrip(" "))) // 2
        rows.append((int(self_us), int(cum_us), depth, name.strip()))
    if not rows:
        return f"  no imports during the {during}"
    outer = min(r[2] for r in rows)
    top_rows = sorted((r for r in rows if r[2] == outer), key=lambda r: -r[1])[:top]
    total = sum(r[0] for r in rows) / 1e3
    out = [f"  {len(rows)} modules imported during the {during}, {total:.0f} ms (self times summed); "
           "outermost by cumulative time:"]
    out += [f"    {r[1] / 1e3:7.1f} ms  {r[3]}" for r in top_rows]
    return "\n".join(out)


def profile_summary(text: str, top: int) -> str:
    """pstats' listing without the import machinery's frames, ``top`` rows."""
    out, rows = [], 0
    for line in text.strip().splitlines():
        if "<frozen importlib" in line or "{built-in method builtins.__import__}" in line \
                or "{built-in method builtins.exec}" in line:
            continue
        if line.strip() and line.strip()[0].isdigit() and "(" in line:
            rows += 1
            if rows > top:
                break
        out.append("  " + line)
    return "\n".join(out)


def fmt(values: list[float]) -> str:
    return f"{min(values):6.3f} / {statistics.median(values):6.3f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes measured per case")
    ap.add_argument("--cache-dir", help="CONVOLAB_CACHE_DIR for all runs (default: a new temporary one)")
    ap.add_argument("--breakdown", action="store_true",
                    help="per case, one more process with -X importtime and one with cProfile")
    ap.add_argument("--top", type=int, default=20, help="rows of each breakdown list")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="keep PYTHONDONTWRITEBYTECODE from the environment (default: children use __pycache__)")
    ap.add_argument("--numba-warm", action="store_true",
                    help="import Numba and do its one-time type-system set-up (which imports SciPy's "
                         "BLAS) before the timed first call: what is left is convolab's own share")
    args = ap.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in cases:
        if c not in CASES:
            ap.error(f"unknown case {c!r}; choose from {', '.join(CASES)}")
    tmp = None
    if args.cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="convolab-cold-")
        cache = tmp.name
    else:
        cache = args.cache_dir
    env = dict(os.environ, CONVOLAB_CACHE_DIR=cache)
    if not args.no_bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    nw = args.numba_warm
    runs: dict[str, list] = {c: [] for c in cases}
    try:
        for case in cases:
            run_child(case, env, numba_warm=nw)  # warm Numba's cache and the cache directory
        # the cases take turns, so that a slow spell of the host hits them alike
        for _ in range(args.repeat):
            for case in cases:
                runs[case].append(run_child(case, env, numba_warm=nw)[0])
        for case in cases:
            if args.breakdown:
                _, _, err = run_child(case, env, "importtime", numba_warm=nw)
                during = "import" if case == "import" else "first call"
                print(f"== {case}: imports during the {during} (-X importtime)")
                print(import_summary(err, args.top, during))
                if case != "import":
                    _, prof, _ = run_child(case, env, "profile", args.top, numba_warm=nw)
                    print(f"== {case}: cProfile of the first call, by cumulative time (import machinery left out)")
                    print(profile_summary(prof, args.top))
                print()
    finally:
        if tmp is not None:
            tmp.cleanup()
    rows = list(runs.items())
    print(f"seconds, min / median of {args.repeat} fresh processes with warm caches "
          f"(NumPy imported first: {fmt([r['numpy'] for _, runs in rows for r in runs])} s)"
          + ("; Numba set up before each first call" if args.numba_warm else ""))
    head = f"{'entry point':<14} {'import':>15}   {'first call':>15}   {'second call':>15}   {'import + first':>15}"
    print(head)
    print("-" * len(head))
    for case, runs in rows:
        imp = fmt([r["import"] for r in runs])
        if case == "import":
            print(f"{case:<14} {imp:>15}   {'-':>15}   {'-':>15}   {imp:>15}")
            continue
        print(f"{case:<14} {imp:>15}   {fmt([r['first'] for r in runs]):>15}   "
              f"{fmt([r['second'] for r in runs]):>15}   {fmt([r['import'] + r['first'] for r in runs]):>15}")


if __name__ == "__main__":
    main()
