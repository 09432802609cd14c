"""Bitwise determinism across thread counts and SIMD targets, measured in subprocesses.

A configuration is a set of environment variables that must be in place before the library
starts (thread pools and JIT targets are fixed at import): each configuration therefore runs in
its own Python subprocess, which computes every (layer, algorithm) case on the same
seeded data and writes the raw outputs to an ``.npz`` file. The parent groups the outputs of
each case by their bytes (`convolab.numerics.metrics.equivalence_classes`).

- convolab: ``NUMBA_NUM_THREADS`` in {1, 2} x ``NUMBA_CPU_NAME`` in {generic, host}; each CPU
  name gets its own fresh ``NUMBA_CACHE_DIR`` so that no kernel compiled for one target is
  loaded for the other (Numba's cache key covers the CPU name, the fresh directory makes sure);
  BLAS/OpenMP pools get the same thread count.
- PyTorch: ``torch.set_num_threads`` in {1, 2} x ``ONEDNN_MAX_CPU_ISA`` in {AVX2, AVX512_CORE}
  (oneDNN dispatches its kernels, and so its blocking and summation order, by the ISA).

An algorithm registered ``deterministic=True`` must give one class over the convolab
configurations; the tests check that. PyTorch makes no such promise, and on a CPU with
AVX-512 it gives 2 classes for most common layers: `convolab.numerics.orders.identify` names
them (oneDNN's AVX2 kernels sum in ``cb8+fma`` order, its AVX-512 ones in ``cb16+fma+cc16``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConvError
from .metrics import equivalence_classes, remaining_bits

#: layers for the measurement: name -> conv2d arguments (x and w give shapes). Common CNN
#: layers, batch 1, with spatial sizes where PyTorch takes its oneDNN path.
COMMON_LAYERS = {
    "stem 7x7/2 3->64": dict(x=(1, 3, 112, 112), w=(64, 3, 7, 7), stride=2, padding=3),
    "3x3 64->64": dict(x=(1, 64, 28, 28), w=(64, 64, 3, 3), padding=1),
    "3x3/2 128->256": dict(x=(1, 128, 28, 28), w=(256, 128, 3, 3), stride=2, padding=1),
    "1x1 256->64": dict(x=(1, 256, 28, 28), w=(64, 256, 1, 1)),
    "1x1 64->256": dict(x=(1, 64, 28, 28), w=(256, 64, 1, 1)),
    "depthwise 3x3 32": dict(x=(1, 32, 56, 56), w=(32, 1, 3, 3), padding=1, groups=32),
}

#: small layers for the tests: enough output rows and channel blocks that two threads share work
SMALL_LAYERS = {
    "3x3 p1": dict(x=(1, 16, 10, 10), w=(16, 16, 3, 3), padding=1),
    "5x5/2 grouped": dict(x=(2, 6, 13, 11), w=(12, 3, 5, 5), stride=2, padding=2, groups=2),
    "1x1": dict(x=(1, 32, 6, 6), w=(24, 32, 1, 1)),
    # 32 output channels, stride 1: direct's register-blocked microkernel (with a short last tile)
    "3x3 K32": dict(x=(1, 8, 9, 7), w=(32, 8, 3, 3), padding=1),
}

#: candidate orders for naming PyTorch / oneDNN classes (see `convolab.numerics.orders`)
ONEDNN_CANDIDATES = (
    "seq", "seq+fma", "seq+fma+t2", "rsc+fma", "cb8+fma", "cb16+fma", "cb8+fma+cc8", "cb16+fma+cc16",
    "cb16+fma+cc32", "cb16+fma+t2", "lanes8+fma", "lanes16+fma",
)


@dataclass(frozen=True)
class Config:
    """One measured configuration: a label, the environment (None removes a variable), threads."""

    label: str
    env: dict = field(default_factory=dict)
    threads: int = 1


def convolab_configs() -> list[Config]:
    """{NUMBA_NUM_THREADS 1, 2} x {NUMBA_CPU_NAME generic, host} (no cache dir yet)."""
    out = []
    for cpu in ("generic", "host"):
        for t in (1, 2):
            # host: NUMBA_CPU_NAME unset (Numba then targets the CPU it runs on)
            env = {"NUMBA_NUM_THREADS": str(t), "NUMBA_CPU_NAME": cpu if cpu != "host" else None}
            out.append(Config(f"numba {cpu} T={t}", env, t))
    return out


#: oneDNN ISA limits by CPU generation: SSE4.1 and AVX have no FMA, AVX2 has FMA and 8 float32
#: lanes, AVX-512 16 lanes
ALL_ISAS = ("SSE41", "AVX", "AVX2", "AVX512_CORE")


def torch_configs(isas=("AVX2", "AVX512_CORE"), threads=(1, 2)) -> list[Config]:
    """{1, 2 threads} x ONEDNN_MAX_CPU_ISA (default AVX2, AVX512_CORE; see `ALL_ISAS`)."""
    out = []
    for isa in isas:
        for t in threads:
            out.append(Config(f"torch {isa} T={t}", {"ONEDNN_MAX_CPU_ISA": isa}, t))
    return out


def layer_data(case: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Seeded float32 standard-normal input and weight for a layer dict, plus its conv kwargs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case["x"], dtype=np.float32)
    w = rng.standard_normal(case["w"], dtype=np.float32)
    kw = {k: v for k, v in case.items() if k not in ("x", "w")}
    return x, w, kw


# ---------------------------------------------------------------------------- child side


def _child_convolab(layers: dict, algos: list[str] | None) -> tuple[dict, dict]:
    import numba

    import convolab
    from convolab.spec import ConvSpec

    outs = {}
    for lname, case in layers.items():
        x, w, kw = layer_data(case)
        spec = ConvSpec.from_arrays(x, w, None, **kw)
        for a in convolab.list_algorithms():
            if (algos is not None and a.name not in algos) or a.supports(spec) is not None:
                continue
            outs[f"{a.name}\t{lname}"] = convolab.conv2d(x, w, algorithm=a.name, **kw)
    info = {
        "threads": numba.config.NUMBA_NUM_THREADS,
        "cpu_name": numba.config.CPU_NAME or "host",
        "cache_dir": numba.config.CACHE_DIR,
    }
    return outs, info


def _child_torch(layers: dict, threads: int) -> tuple[dict, dict]:
    import torch

    torch.set_num_threads(threads)
    outs = {}
    with torch.no_grad():
        for lname, case in layers.items():
            x, w, kw = layer_data(case)
            y = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), **kw)
            outs[f"torch\t{lname}"] = y.numpy().copy()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    return outs, {"threads": torch.get_num_threads(), "isa": isa, "torch": torch.__version__}


def _child_main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    if spec["kind"] == "convolab":
        outs, info = _child_convolab(spec["layers"], spec.get("algorithms"))
    else:
        outs, info = _child_torch(spec["layers"], spec["threads"])
    np.savez(spec["out"], **outs)
    Path(spec["out"] + ".json").write_text(json.dumps(info))
    return 0


# --------------------------------------------------------------------------- parent side


@dataclass
class CaseResult:
    """The outputs of one (source, layer) case under every configuration."""

    source: str
    layer: str
    outputs: dict  # config label -> ndarray

    @property
    def classes(self) -> list[list[str]]:
        """Config labels grouped by bitwise-equal output."""
        return equivalence_classes(self.outputs)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def min_bits(self) -> int:
        """Least remaining mantissa bits between any class and the first one (23 if one class)."""
        cls = self.classes
        first = self.outputs[cls[0][0]]
        worst = 23
        for c in cls[1:]:
            bits = remaining_bits(first, self.outputs[c[0]])
            worst = min(worst, int(bits.min()) if bits.size else 23)
        return worst


@dataclass
class Measurement:
    """All cases of one measurement, plus what each child reported about its configuration."""

    cases: list[CaseResult]
    info: dict  # config label -> dict reported by the child

    def case(self, source: str, layer: str) -> CaseResult:
        for c in self.cases:
            if c.source == source and c.layer == layer:
                return c
        raise KeyError((source, layer))


def _run_child(payload: dict, env_extra: dict, timeout: float) -> tuple[dict, dict]:
    env = dict(os.environ)
    for k, v in env_extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    proc = subprocess.run(
        [sys.executable, "-m", "convolab.numerics.determinism", json.dumps(payload)],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise ConvError(
            f"determinism child ({env_extra}) failed with exit code {proc.returncode}:\n"
            f"{proc.stderr[-3000:]}"
        )
    with np.load(payload["out"]) as z:
        outs = {k: z[k] for k in z.files}
    info = json.loads(Path(payload["out"] + ".json").read_text())
    return outs, info


def _run_all(jobs: list, timeout: float) -> tuple[dict, dict]:
    """Run child jobs ``(group, label, payload, env)``: jobs of one group in sequence (they share
    a JIT cache, filled by the first), two groups at a time. Returns outputs and infos by label.
    """
    from concurrent.futures import ThreadPoolExecutor

    groups: dict[str, list] = {}
    for job in jobs:
        groups.setdefault(job[0], []).append(job)

    def run_group(group: list) -> list:
        return [(label, *_run_child(payload, env, timeout)) for _, label, payload, env in group]

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = [r for rs in pool.map(run_group, groups.values()) for r in rs]
    order = {job[1]: i for i, job in enumerate(jobs)}
    results.sort(key=lambda r: order[r[0]])
    return {r[0]: r[1] for r in results}, {r[0]: r[2] for r in results}


def _collect(per_config: dict[str, dict]) -> list[CaseResult]:
    cases: dict[tuple[str, str], CaseResult] = {}
    for label, outs in per_config.items():
        for key, arr in outs.items():
            source, layer = key.split("\t")
            cases.setdefault((source, layer), CaseResult(source, layer, {})).outputs[label] = arr
    return list(cases.values())


def measure_convolab(
    layers: dict | None = None, algorithms: list[str] | None = None, *,
    configs: list[Config] | None = None, timeout: float = 900.0,
) -> Measurement:
    """Run every registered algorithm on ``layers`` under each convolab configuration.

    Parameters
    ----------
    layers : dict, optional
        name -> conv2d arguments with ``x`` and ``w`` shapes; default `COMMON_LAYERS`.
    algorithms : list of str, optional
        Names to run (default: every registered algorithm that supports the layer).
    configs : list of Config, optional
        Default `convolab_configs`.
    timeout : float
        Seconds allowed per subprocess.

    Returns
    -------
    Measurement
        One `CaseResult` per (algorithm, layer), and the thread count / CPU name each child
        actually ran with.
    """
    layers = COMMON_LAYERS if layers is None else layers
    configs = convolab_configs() if configs is None else configs
    with tempfile.TemporaryDirectory(prefix="convolab-determinism-") as tmp:
        jobs = []
        for i, cfg in enumerate(configs):
            cpu = cfg.env.get("NUMBA_CPU_NAME") or "host"
            env = {
                "NUMBA_CACHE_DIR": str(Path(tmp) / f"numba-cache-{cpu}"),
                "OMP_NUM_THREADS": str(cfg.threads),
                "OPENBLAS_NUM_THREADS": str(cfg.threads),
                "MKL_NUM_THREADS": str(cfg.threads),
                "CONVOLAB_NO_PREWARM": "1",  # bits, not speed: compile in the child itself
                **cfg.env,
            }
            payload = {
                "kind": "convolab", "layers": layers, "algorithms": algorithms,
                "out": str(Path(tmp) / f"out{i}.npz"),
            }
            jobs.append((env["NUMBA_CACHE_DIR"], cfg.label, payload, env))
        per_config, info = _run_all(jobs, timeout)
    return Measurement(_collect(per_config), info)


def measure_torch(
    layers: dict | None = None, *, configs: list[Config] | None = None, timeout: float = 900.0
) -> Measurement:
    """Run ``torch.nn.functional.conv2d`` on ``layers`` under each PyTorch configuration.

    Parameters
    ----------
    layers : dict, optional
        Default `COMMON_LAYERS`.
    configs : list of Config, optional
        Default `torch_configs`.
    timeout : float
        Seconds allowed per subprocess.

    Returns
    -------
    Measurement
        One `CaseResult` (source ``"torch"``) per layer.

    Raises
    ------
    ConvError
        PyTorch is not installed (``pip install convolab[torch]``).
    """
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise ConvError("PyTorch is not installed: pip install 'convolab[torch]'")
    layers = COMMON_LAYERS if layers is None else layers
    configs = torch_configs() if configs is None else configs
    with tempfile.TemporaryDirectory(prefix="convolab-determinism-") as tmp:
        jobs = []
        for i, cfg in enumerate(configs):
            env = {"OMP_NUM_THREADS": str(cfg.threads), **cfg.env}
            payload = {
                "kind": "torch", "layers": layers, "threads": cfg.threads,
                "out": str(Path(tmp) / f"out{i}.npz"),
            }
            jobs.append((f"torch{i}", cfg.label, payload, env))
        per_config, info = _run_all(jobs, timeout)
    return Measurement(_collect(per_config), info)


def short_labels(labels: list[str]) -> str:
    """``["torch AVX2 T=1", "torch AVX2 T=2", "torch AVX512_CORE T=1"]`` ->
    ``"AVX2 T=1,2 + AVX512_CORE T=1"`` (labels of the form ``"<kind> <setting> T=<n>"``)."""
    groups: dict[str, list[str]] = {}
    for lab in labels:
        head, _, t = lab.rpartition(" T=")
        groups.setdefault(head.split(" ", 1)[-1], []).append(t)
    return " + ".join(f"{k} T={','.join(v)}" for k, v in groups.items())


def name_classes(case: CaseResult, layers: dict, candidates=ONEDNN_CANDIDATES) -> list[str]:
    """For each class of ``case``, the emulated orders that reproduce it ('' if none)."""
    from .orders import conv2d as order_conv
    from .orders import parse_order

    x, w, kw = layer_data(layers[case.layer])
    found = {}
    for o in candidates:
        y = order_conv(x, w, None, **kw, order=parse_order(o))
        found.setdefault(y.tobytes(), []).append(parse_order(o).name)
    names = []
    for cls in case.classes:
        names.append(", ".join(found.get(case.outputs[cls[0]].tobytes(), [])))
    return names


if __name__ == "__main__":  # pragma: no cover - the subprocess entry point
    sys.exit(_child_main(sys.argv[1:]))
