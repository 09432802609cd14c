"""Operation counts of the HyPHEN-style ResNet-20 from formulas, without executing it.

`Model` is an executor for `convolab.he.network.hyphen_forward` whose tensors are symbolic
(a layout and the remaining level of each ciphertext): each schedule adds the operations it
would execute to a ``(category, layer, operation, level)`` Counter, so the planner
(`convolab.he.planner`) can price thousands of layout choices in milliseconds. The formulas
are those of `convolab.he.schedules` for 3x3 "same" convolutions of maps of at least 2x2 with
non-zero weights (every tap and every product is then executed); the activation counts come
from running `activation.poly2` once per level on a tiny simulated backend, and the shortcut
counts from the same grouping `schedules.ca_relayout` uses. The tests check that the model's
Counter equals the executed one, operation by operation and level by level.

Per convolution, with T present input ciphertexts, input level r, m distinct channels:

- CAConv: ``T`` rotations and ``7T`` hoisted ones (``8T`` rotations unhoisted) at r;
  ``9 T Cout`` PMults and encodings at r; ``Cout (9T - 1)`` additions at r; ``Cout``
  rescales at r; ``Cout log2 m`` rotations and additions at r - 1.
- RAConv into P = min(m, n) blocks per copy and ``cells`` gap cells, G = ceil(Cout/P) groups:
  ``9 Cin G`` PMults and encodings, ``8 G`` rotations plus one per extra group sharing a
  ciphertext, ``G (9 (Cin - 1) + 8)`` additions plus the same extra ones, one rescale per
  output ciphertext, all at r.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .activation import RELU_FIT, poly2
from .backend import Ciphertext, SimulatedBackend
from .layout import Layout, log2, with_distinct
from .network import LevelBudget, resnet20_convs
from .schedules import output_layout, relayout_plan


@dataclass(frozen=True)
class Sym:
    """A symbolic encrypted tensor: its layout and each ciphertext's remaining level (None:
    an all-zero ciphertext)."""

    layout: Layout
    levels: tuple


_ACT_CACHE: dict = {}


def _act_pattern(level: int, budget: LevelBudget, coeffs) -> Counter:
    """(operation, level) counts of one `poly2` on a ciphertext at remaining ``level``."""
    key = (level, budget, tuple(coeffs))
    if key not in _ACT_CACHE:
        be = SimulatedBackend(8, levels=budget.fresh, usable=budget.usable)
        poly2(be, Ciphertext(be._check_vector([0.5] * 8), budget.fresh - level), coeffs)
        _ACT_CACHE[key] = Counter({(op, lv): v for (_, _, op, lv), v in be.counts.by_level.items()})
    return _ACT_CACHE[key]


class Model:
    """Executor of `network.hyphen_forward` that counts from formulas; see the module docstring."""

    def __init__(self, slots: int, budget: LevelBudget, hoist: bool = True, coeffs=RELU_FIT):
        self.slots, self.budget, self.hoist, self.coeffs = slots, budget, hoist, coeffs
        self.layers = resnet20_convs()
        self.counts: Counter = Counter()
        self.bootstraps: list = []
        self.levels_log: list = []

    def _add(self, cat, layer, op, level, n=1):
        if n:
            self.counts[(cat, layer, op, level)] += n

    def remaining(self, t: Sym) -> int:
        return min(v for v in t.levels if v is not None)

    def layout(self, t: Sym) -> Layout:
        return t.layout

    def image(self, kind):
        lay = Layout("RA", 3, 32, 32, 1, 32, 32, self.slots)
        return Sym(lay, (self.budget.fresh,) * 3)

    def ra_conv(self, t: Sym, i: int, distinct):
        la = self.layers[i]
        r = self.remaining(t)
        out = with_distinct(output_layout(t.layout, "CA", la.cout, la.stride), distinct)
        cin = sum(v is not None for v in t.levels)
        P, cells = out.blocks_per_copy, out.cells
        G = -(-la.cout // P)
        extra = sum(min(cells, G - k * cells) - 1 for k in range(out.num_ciphertexts))
        a = lambda op, n: self._add("conv", la.name, op, r, n)  # noqa: E731
        a("pmult", 9 * cin * G)
        a("encode", 9 * cin * G)
        a("rotation", 8 * G + extra)
        a("add", G * (9 * (cin - 1) + 8) + extra)
        a("rescale", out.num_ciphertexts)
        self.levels_log.append((la.name, r, r - 1))
        return Sym(out, (r - 1,) * out.num_ciphertexts)

    def ca_conv(self, t: Sym, i: int):
        la = self.layers[i]
        r = self.remaining(t)
        lay = t.layout
        T = sum(v is not None for v in t.levels)
        cout = la.cout
        a = lambda op, n, lv=r: self._add("conv", la.name, op, lv, n)  # noqa: E731
        if self.hoist:
            a("rotation", T)
            a("hoisted", 7 * T)
        else:
            a("rotation", 8 * T)
        a("pmult", 9 * T * cout)
        a("encode", 9 * T * cout)
        a("add", cout * (9 * T - 1))
        a("rescale", cout)
        L = log2(lay.distinct)
        a("rotation", cout * L, r - 1)
        a("add", cout * L, r - 1)
        self.levels_log.append((la.name, r, r - 1))
        return Sym(output_layout(lay, "RA", cout, la.stride), (r - 1,) * cout)

    def act(self, t: Sym, name):
        out = []
        for v in t.levels:
            if v is None:
                out.append(None)
                continue
            for (op, lv), n in _act_pattern(v, self.budget, self.coeffs).items():
                self._add("activation", name, op, lv, n)
            out.append(v - 2)
        return Sym(t.layout, tuple(out))

    def shortcut(self, y: Sym, out_lay: Layout, subsample: bool, name):
        if y.layout == out_lay:
            return y
        groups, fill = relayout_plan(y.layout, out_lay, subsample)
        r = self.remaining(y)
        per_target: Counter = Counter()
        for (ts, td, shift) in groups:
            if y.levels[ts] is None:
                continue
            per_target[td] += 1
            self._add("shortcut", name, "pmult", r)
            self._add("shortcut", name, "encode", r)
            if shift:
                self._add("shortcut", name, "rotation", r)
        for _td, k in per_target.items():
            self._add("shortcut", name, "add", r, k - 1 + len(fill))
            self._add("shortcut", name, "rotation", r, len(fill))
            self._add("shortcut", name, "rescale", r)
        return Sym(out_lay, tuple(r - 1 if td in per_target else None
                                  for td in range(out_lay.num_ciphertexts)))

    def add(self, h: Sym, sc: Sym, name):
        out = []
        for a, b in zip(h.levels, sc.levels, strict=True):
            if a is not None and b is not None:
                self._add("shortcut", name, "add", min(a, b))
                out.append(min(a, b))
            else:
                out.append(a if b is None else b)
        return Sym(h.layout, tuple(out))

    def bootstrap(self, t: Sym, where):
        n = sum(v is not None for v in t.levels)
        self.bootstraps.append((where, n, t.layout.data_slots))
        self._add("bootstrap", where, "bootstrap", t.layout.data_slots, n)
        return Sym(t.layout, tuple(None if v is None else self.budget.usable for v in t.levels))
