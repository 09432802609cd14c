"""The per-layer planner of the HyPHEN-style ResNet-20 and the plan that ``convolab he-plan``
reports.

`choose_distinct` picks the CA layout of every CA tensor of the network -- the stem output and
each residual block's output: ``m`` distinct channels per ciphertext, a power of two, above
the 32 blocks of a 2^15-slot ciphertext only with 2D gap packing -- by modelled latency
(`convolab.he.latency`): a dynamic programme over the blocks whose step prices one block
(CAConv on the input layout, activation, RAConv into the output layout, the shortcut moved
into the output layout, the add, the activation and any bootstraps) with the formulas of
`convolab.he.costs`. The levels at which each block runs do not depend on the layouts (a
layout change costs its level on the residual branch, which has 3 to spare), so the bootstrap
placement is fixed and the programme is exact for the model.

`plan_resnet20` executes the baseline (authors' counting), the HyPHEN-style network at a
fixed ``m`` (default 16) and the planner's choice on the simulated backend, models the
planner's choice without gap packing, and prices all of them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import ConvError
from .costs import Model, Sym
from .latency import CostTable, latency
from .layout import next_pow2
from .network import (
    LayerRecord,
    LevelBudget,
    NetworkRun,
    ca_layout,
    expand_distinct,
    hyphen_block,
    hyphen_forward,
    hyphen_stem,
    layer_counts,
    run_baseline,
    run_hyphen,
    stage_channels,
)

#: the baseline configuration as its authors' code runs it: weights encoded inside each
#: convolution, rotations not hoisted (SEAL has no hoisting)
BASELINE_AS_RUN = "baseline (authors' code: weights encoded on the fly)"

#: bootstrap-cost factors of the sensitivity table
BOOT_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def _tensor_gap_index(j: int) -> int:
    """log2 of the gap of CA tensor j (0: stem output, b + 1: output of block b)."""
    return 0 if j <= 3 else 1 if j <= 6 else 2


def candidates(j: int, slots: int, gap_packing: bool) -> list[int]:
    """Powers of two ``m`` tensor j may use."""
    C = stage_channels()[j]
    n = slots // 1024
    if n < 1:
        raise ConvError(f"slots={slots} cannot hold a 32x32 channel grid (1024 slots)")
    g = 1 << _tensor_gap_index(j)
    cap = min(next_pow2(C), n * (g * g if gap_packing else 1))
    return [1 << e for e in range(cap.bit_length())]


def model_run(distinct, slots: int = 2**15, budget: LevelBudget | None = None, points: str = "ca",
              hoist: bool = True, name: str = "modelled") -> NetworkRun:
    """A `NetworkRun` of the HyPHEN-style network from the formulas (nothing executed)."""
    budget = budget or LevelBudget()
    distinct = expand_distinct(distinct)
    m = Model(slots, budget, hoist)
    hyphen_forward(m, distinct, points)
    recs = []
    for name_, lin, lout in m.levels_log:
        la = next(la for la in m.layers if la.name == name_)
        rec = LayerRecord(la, "RA" if la.name == "conv1" or la.name.endswith("conv2") else "CA",
                          None, lin, lout)
        rec.rotations, rec.hoisted, rec.pmults = layer_counts(m.counts, name_).values()
        recs.append(rec)
    return NetworkRun(name, slots, budget, recs, m.counts, m.bootstraps, float("nan"), tuple(distinct))


def choose_distinct(table: CostTable, slots: int = 2**15, budget: LevelBudget | None = None,
                    points: str = "ca", hoist: bool = True, gap_packing: bool = True,
                    boot_scale: float = 1.0) -> tuple[list[int], float]:
    """The CA layouts (10 values of ``m``) with the least modelled latency, and that latency.

    Parameters
    ----------
    table : CostTable
        Per-operation and bootstrap costs.
    slots, budget, points, hoist
        As in `convolab.he.network.run_hyphen`.
    gap_packing : bool
        Allow more distinct channels than blocks (2D gap packing after stride-2 layers).
    boot_scale : float
        Factor on the bootstrap cost.
    """
    budget = budget or LevelBudget()

    def price(model):
        return latency(model.counts, table, boot_scale=boot_scale)["total"]

    best: dict = {}
    level = None
    for m0 in candidates(0, slots, gap_packing):
        ex = Model(slots, budget, hoist)
        y = hyphen_stem(ex, m0, points)
        best[m0] = (price(ex), [m0])
        level = ex.remaining(y)
    for b in range(9):
        nxt: dict = {}
        cin = stage_channels()[b]
        for m_in, (cost_in, path) in best.items():
            y = Sym(ca_layout(slots, _tensor_gap_index(b), cin, m_in),
                    (level,) * -(-cin // m_in))
            for m_out in candidates(b + 1, slots, gap_packing):
                ex = Model(slots, budget, hoist)
                out = hyphen_block(ex, y, b, m_out, points)
                c = cost_in + price(ex)
                if m_out not in nxt or c < nxt[m_out][0]:
                    nxt[m_out] = (c, path + [m_out])
                out_level = ex.remaining(out)
        best, level = nxt, out_level
    cost, path = min(best.values(), key=lambda v: v[0])
    return path, cost


@dataclass
class ResNetPlan:
    """Everything ``convolab he-plan`` reports; see `plan_resnet20`.

    Attributes
    ----------
    baseline, fixed, chosen : NetworkRun
        Executed: the multiplexed baseline (authors' counting), the HyPHEN-style network at
        a fixed ``m``, and the planner's choice (with gap packing).
    chosen_no_gap : NetworkRun
        The planner's choice without gap packing, modelled.
    other_points : dict
        Ciphertext-bootstraps with the other bootstrap placement (the planner's configurations
        chosen again for it), modelled: ``{config name: count}``.
    table : CostTable
    latencies : dict
        ``{config name: latency split}``.
    sensitivity : list of dict
        Bootstrap-cost factor, baseline and HyPHEN-style totals and speed-up.
    """

    slots: int
    budget: LevelBudget
    points: str
    baseline: NetworkRun
    fixed: NetworkRun
    chosen: NetworkRun
    chosen_no_gap: NetworkRun
    other_points: dict
    table: CostTable
    latencies: dict = field(default_factory=dict)
    sensitivity: list = field(default_factory=list)
    common_level: dict = field(default_factory=dict)


def _at_level(by_level, level: int):
    """The counts with every operation moved to one level (bootstraps kept)."""
    out = Counter()
    for (cat, layer, op, lv), n in by_level.items():
        out[(cat, layer, op, lv if op == "bootstrap" else level)] += n
    return out


def plan_resnet20(slots: int = 2**15, budget: LevelBudget | None = None, points: str = "ca",
                  m: int = 16, costs: CostTable | None = None, seed: int = 0) -> ResNetPlan:
    """Execute, model and price the ResNet-20 configurations; see the module docstring.

    Parameters
    ----------
    slots : int
        Slots per ciphertext; the latency model needs the cost table's (2^15).
    budget : LevelBudget, optional
        Fresh / usable levels (default 18 / 16).
    points : {"ca", "block"}
        Bootstrap placement of the HyPHEN-style network.
    m : int
        The fixed layout of the ``fixed`` configuration.
    costs : CostTable, optional
        Default: the table shipped with convolab (`CostTable.load`).
    seed : int
        Seed of the random image and weights (the counts do not depend on it).
    """
    budget = budget or LevelBudget()
    table = costs or CostTable.load()
    if table.slots != slots:
        raise ConvError(f"the cost table was measured at {table.slots} slots but slots={slots}")
    base = run_baseline(slots, budget, seed)
    fixed = run_hyphen(m, slots, budget, points, seed=seed, name=f"CA/RA m={m}")
    pick, _ = choose_distinct(table, slots, budget, points, gap_packing=True)
    chosen = run_hyphen(pick, slots, budget, points, seed=seed, name="planner (gap packing)")
    pick_ng, _ = choose_distinct(table, slots, budget, points, gap_packing=False)
    no_gap = model_run(pick_ng, slots, budget, points, name="planner (no gap packing)")
    other = "block" if points == "ca" else "ca"
    other_points = {fixed.name: model_run(m, slots, budget, other).ct_bootstraps}
    for name, gap in ((chosen.name, True), (no_gap.name, False)):
        pick_o, _ = choose_distinct(table, slots, budget, other, gap_packing=gap)
        other_points[name] = model_run(pick_o, slots, budget, other).ct_bootstraps
    plan = ResNetPlan(slots, budget, points, base, fixed, chosen, no_gap, other_points, table)
    plan.latencies = {BASELINE_AS_RUN: latency(base.by_level, table, encode=True)}
    for r in (fixed, chosen, no_gap):
        plan.latencies[r.name] = latency(r.by_level, table)
    plan.latencies["baseline, weights encoded beforehand"] = latency(base.by_level, table)
    plan.latencies["planner (gap packing), no hoisting"] = latency(
        model_run(pick, slots, budget, points, hoist=False).by_level, table)
    for s in BOOT_SCALES:
        b = latency(base.by_level, table, encode=True, boot_scale=s)["total"]
        h = latency(chosen.by_level, table, boot_scale=s)["total"]
        plan.sensitivity.append(dict(boot_scale=s, bootstrap_seconds=table.boot(2**14) * s,
                                     baseline=b, hyphen=h, speedup=b / h))
    top = budget.usable
    plan.common_level = {
        r.name: latency(_at_level(r.by_level, top), table, encode=False)["conv"]
        for r in (base, fixed, chosen)
    }
    return plan
