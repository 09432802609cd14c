"""The latency model of an encrypted network: operation count x measured cost at its level.

``latency = sum over (operation, remaining level) of count x seconds(operation, level)
+ sum over bootstraps of seconds(bootstrap of that many data slots)``, split by category
(convolution, activation, shortcut, bootstrap). The counts are the executed (or modelled,
`convolab.he.costs`) ``by_level`` counters of `convolab.he.network`.

Where each figure comes from:

- rotation, PMult, CMult (with relinearisation), rescale, addition, encoding and one NTT
  (``transform``): *measured* on TenSEAL's SEAL at N = 2^16 by ``convolab he-bench`` (one
  thread, fastest of the repeats, each operation at each remaining level, plaintexts encoded
  beforehand); the table shipped in ``data/tenseal_n65536.json`` records the command, the
  machine and the date.
- hoisted rotation: SEAL has no hoisting, so it is *derived*: a rotation minus the
  key-switching decomposition a hoisted group shares. SEAL's key switching
  (``Evaluator::switch_key_inplace``) starts with ``r + 1`` inverse NTTs of the rotated
  polynomial and ``(r + 1)^2`` NTTs of its digits (at remaining level r: r + 1 primes and the
  special prime), so ``hoisted(r) = rotation(r) - (r + 1)(r + 2) transform(r)``
  (Halevi and Shoup, CRYPTO 2018).
- encoding: priced only for a configuration that encodes its weights inside the convolution
  (``encode=True``: the baseline as its authors' code runs, whose
  ``multiply_vector_reduced_error`` encodes each plaintext it multiplies by).
- bootstrap: a *parameter*; by default *read* from the baseline authors' published ResNet-20
  run (snu-ccl/FHE-MP-CNN, ``result/resnet20_cifar10_image0.txt``: the mean of the six
  bootstraps of each stage, single-thread SEAL with their bootstrapping at N = 2^16, 16 levels
  left after it): 102.4 s for 2^14 data slots, 90.4 s for 2^13, 78.8 s for 2^12; other
  sizes on the least-squares line in log2(slots) through those three (*derived*: 2^15 ->
  114.1 s). `sensitivity` scales it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import ConvError

#: per-stage bootstrap times (ms) of the authors' published ResNet-20 log, keyed by the data
#: slots of their sparse bootstrapping (2^14, 2^13, 2^12 for stages 1, 2, 3)
PUBLISHED_BOOTSTRAP_MS = {
    16384: (102588, 102624, 102350, 102228, 102204, 102220),
    8192: (90405, 90332, 90515, 90481, 90476, 90400),
    4096: (78829, 78835, 78804, 78815, 78804, 78822),
}
BOOTSTRAP_SOURCE = ("snu-ccl/FHE-MP-CNN result/resnet20_cifar10_image0.txt (Lee et al., ICML 2022 "
                    "code): mean of six bootstraps per stage, single-thread SEAL, N=2^16")

#: categories of a latency split, in report order
CATEGORIES = ("conv", "activation", "shortcut", "bootstrap")

DEFAULT_TABLE = "tenseal_n65536.json"


def published_bootstrap() -> dict[int, float]:
    """Seconds per bootstrap by data slots (means of the published log)."""
    return {k: float(np.mean(v)) / 1000 for k, v in PUBLISHED_BOOTSTRAP_MS.items()}


@dataclass
class CostTable:
    """Seconds per operation and remaining level, and per bootstrap.

    Attributes
    ----------
    seconds : dict
        ``{operation: {level: seconds}}`` for rotation, pmult, cmult, rescale, add, encode,
        transform (measured).
    slots : int
        Slots of the measurement (the ring dimension is twice that).
    source : str
        Where the per-operation figures come from.
    bootstrap : dict
        ``{data slots: seconds}``.
    bootstrap_source : str
    """

    seconds: dict
    slots: int
    source: str
    bootstrap: dict = field(default_factory=published_bootstrap)
    bootstrap_source: str = BOOTSTRAP_SOURCE

    def cost(self, op: str, level: int) -> float:
        """Seconds of one ``op`` at remaining ``level`` (``hoisted`` derived, see the module
        docstring)."""
        if op == "hoisted":
            rot = self.cost("rotation", level)
            return max(rot - (level + 1) * (level + 2) * self.transform(), 0.0)
        table = self.seconds.get(op)
        if table is None:
            raise ConvError(f"no cost for operation {op!r} in the cost table ({self.source})")
        if level not in table:
            raise ConvError(f"no cost for {op} at level {level}: the table has levels "
                            f"{min(table)}..{max(table)} ({self.source})")
        return table[level]

    def transform(self) -> float:
        """Seconds of one NTT of one polynomial modulo one prime: the median of the levels
        measured (it does not depend on the level)."""
        t = self.seconds.get("transform")
        if not t:
            raise ConvError(f"the cost table has no 'transform' times ({self.source})")
        return float(np.median(list(t.values())))

    def boot(self, data_slots: int) -> float:
        """Seconds of one bootstrap of a ciphertext whose data repeat every ``data_slots``."""
        if data_slots in self.bootstrap:
            return self.bootstrap[data_slots]
        x = np.log2(np.array(sorted(self.bootstrap)))
        y = np.array([self.bootstrap[k] for k in sorted(self.bootstrap)])
        a, b = np.polyfit(x, y, 1)
        return float(a * np.log2(data_slots) + b)

    @classmethod
    def from_dict(cls, d: dict) -> CostTable:
        try:
            secs = {op: {int(k): float(v) for k, v in lv.items()} for op, lv in d["seconds"].items()}
            return cls(secs, int(d["slots"]), str(d["source"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConvError(f"not a cost table (needs 'seconds', 'slots', 'source'): {e}") from None

    @classmethod
    def load(cls, path=None) -> CostTable:
        """The table at ``path`` (JSON written by ``convolab he-bench --json``), or the shipped one."""
        if path is None:
            text = resources.files("convolab.he").joinpath("data", DEFAULT_TABLE).read_text()
        else:
            try:
                text = Path(path).read_text()
            except OSError as e:
                raise ConvError(f"cannot read cost table {path!r}: {e}") from None
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConvError(f"cost table {path!r} is not JSON: {e}") from None


def latency(by_level, table: CostTable, encode: bool = False, boot_scale: float = 1.0) -> dict:
    """Modelled seconds by category (`CATEGORIES`) and ``"total"``.

    Parameters
    ----------
    by_level : Counter
        ``(category, layer, operation, level) -> count`` (see `convolab.he.backend.Counts`).
    table : CostTable
    encode : bool
        Price the encodings (weights encoded inside the computation).
    boot_scale : float
        Factor on every bootstrap's cost.
    """
    out = dict.fromkeys(CATEGORIES, 0.0)
    for (cat, _, op, level), n in by_level.items():
        if op == "bootstrap":
            sec = table.boot(level) * boot_scale
        elif op == "encode":
            sec = table.cost(op, level) if encode else 0.0
        else:
            sec = table.cost(op, level)
        out[cat] = out.get(cat, 0.0) + n * sec
    out["total"] = sum(out[c] for c in CATEGORIES)
    return out
