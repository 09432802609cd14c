"""convolab.he ResNet-20 runs: the baseline counted as its authors' code runs (against the
table in tests/data), the CA/RA network with replicated and gap-packed layouts, levels and
bootstraps, the formula model against execution, the latency model, the planner, he-plan."""

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from convolab import ConvError, he
from convolab.cli import main
from convolab.he.costs import Model
from convolab.he.latency import CostTable, published_bootstrap
from convolab.he.network import LevelBudget, expand_distinct, hyphen_forward
from convolab.he.planner import candidates

DATA = Path(__file__).parent / "data" / "he_baseline_resnet20.csv"


def baseline_table():
    """The baseline's per-layer counts as its authors' code runs (provenance in the file)."""
    with open(DATA) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))

#: minimal-ciphertext CA layouts (stem, 9 blocks) with and without 2D gap packing
GAP = [16, 16, 16, 16, 32, 32, 32, 64, 64, 64]
NO_GAP = [16, 16, 16, 16, 32, 32, 32, 32, 32, 32]


@pytest.fixture(scope="module")
def plan():
    """The executed plan of `convolab he-plan` (baseline, m = 16, planner's choice)."""
    return he.plan_resnet20()


@pytest.fixture(scope="module")
def baseline(plan):
    return plan.baseline


@pytest.fixture(scope="module")
def m16(plan):
    return plan.fixed


def test_baseline_as_its_authors_code_runs(baseline):
    rows = {r["layer"]: r for r in baseline_table()}
    for rec in baseline.records:
        row = rows[rec.layer.name]
        assert (rec.rotations, rec.pmults, rec.hoisted) == (int(row["rotations"]), int(row["pmults"]), 0)
        assert rec.max_rel_error < 1e-9 and rec.levels == 2
        assert (rec.level_in, rec.level_out) == ((18, 16) if rec.layer.name == "conv1" else (2, 0))
    for blk in ("layer2.0", "layer3.0"):
        row = rows[blk + ".shortcut"]
        got = [sum(v for (c, la, op, _), v in baseline.by_level.items()
                   if c == "shortcut" and la == blk and op == o) for o in ("rotation", "pmult")]
        assert got == [int(row["rotations"]), int(row["pmults"])]
    t = baseline.totals()
    assert t["rotations"] + baseline.count("rotation", "shortcut") == 1710
    assert t["pmults"] + baseline.count("pmult", "shortcut") == 2178
    assert baseline.ct_bootstraps == 18  # one before every ReLU but the stem's
    assert [s for _, _, s in baseline.bootstraps] == [2**14] * 6 + [2**13] * 6 + [2**12] * 6
    assert baseline.max_rel_error < 1e-9  # vs the plaintext network with the same composite ReLU


def test_ca_ra_at_m16(m16):
    assert m16.totals()["rotations"] == 1664 and m16.totals()["pmults"] == 16731
    assert 1664 / 1710 <= 0.975
    for rec in m16.records:
        la, m = rec.layer, 16
        assert rec.max_rel_error < 1e-9 and rec.levels == 1 and rec.distinct == 16
        if rec.scheme == "CA":
            t = -(-la.cin // m)
            assert (rec.rotations + rec.hoisted, rec.hoisted) == (8 * t + 4 * la.cout, 7 * t)
            assert rec.pmults == 9 * t * la.cout
        else:
            t = -(-la.cout // m)
            assert (rec.rotations, rec.pmults) == (8 * t, 9 * la.cin * t)
    assert m16.count("rotation", "shortcut") == 0  # same layout everywhere: masks only
    assert m16.max_rel_error < 1e-9
    assert m16.ct_bootstraps == 1 + 2 + 4  # one stage-1, stage-2 and stage-3 tensor each


def test_formula_model_equals_execution(m16):
    runs = [(m16, 16, "ca"), (he.run_hyphen([8, 16, 16, 16, 32, 32, 16, 64, 32, 64], points="block"),
                              [8, 16, 16, 16, 32, 32, 16, 64, 32, 64], "block")]
    for run, dist, points in runs:
        model = Model(2**15, LevelBudget())
        hyphen_forward(model, expand_distinct(dist), points)
        assert model.counts == Counter(run.by_level)
        assert model.bootstraps == run.bootstraps
    assert runs[1][0].max_rel_error < 1e-9 and runs[1][0].count("rotation", "shortcut") > 0


@pytest.mark.parametrize("points,gap,no_gap", [("block", 4, 5), ("ca", 3, 4)])
def test_ciphertext_bootstraps_with_degree2_activations(points, gap, no_gap):
    """16 usable levels; with bootstraps only at block inputs the figures of issue 20 (4 with
    gap packing, 5 without); with bootstraps also after the residual add, one fewer each."""
    assert he.model_run(GAP, points=points).ct_bootstraps == gap
    assert he.model_run(NO_GAP, points=points).ct_bootstraps == no_gap
    # the same with fresh ciphertexts at 16 levels
    b16 = LevelBudget(16, 16)
    assert he.model_run(GAP, budget=b16, points=points).ct_bootstraps == gap


def test_levels_and_budget_errors():
    with pytest.raises(ConvError, match="fresh=2"):
        LevelBudget(2, 16)
    with pytest.raises(ConvError, match="needs 6 levels"):
        he.model_run(16, budget=LevelBudget(18, 5), points="block")
    with pytest.raises(ConvError, match="10 entries"):
        expand_distinct([16, 16])
    with pytest.raises(ConvError, match="bootstrap points"):
        he.model_run(16, points="everywhere")
    with pytest.raises(ConvError, match="slots=512"):
        candidates(0, 512, True)


def _table(rot=1.0, pm=0.1, cm=2.0, resc=0.5, add=0.01, enc=0.2, ntt=0.001):
    levels = range(0, 19)
    sec = {"rotation": {r: rot * (r + 1) for r in levels}, "pmult": {r: pm for r in levels},
           "cmult": {r: cm for r in levels}, "rescale": {r: resc for r in levels},
           "add": {r: add for r in levels}, "encode": {r: enc for r in levels},
           "transform": {r: ntt for r in levels}}
    return CostTable(sec, 2**15, "synthetic")


def test_latency_arithmetic():
    t = _table()
    by = Counter({("conv", "a", "rotation", 3): 2, ("conv", "a", "hoisted", 3): 5,
                  ("conv", "a", "encode", 3): 4, ("activation", "b", "cmult", 1): 3,
                  ("bootstrap", "x", "bootstrap", 2**14): 2})
    lat = he.latency(by, t)
    hoisted = 4.0 - 4 * 5 * 0.001
    assert lat["conv"] == pytest.approx(2 * 4.0 + 5 * hoisted)
    assert lat["activation"] == pytest.approx(6.0)
    assert lat["bootstrap"] == pytest.approx(2 * published_bootstrap()[2**14])
    assert he.latency(by, t, encode=True)["conv"] == pytest.approx(lat["conv"] + 0.8)
    assert he.latency(by, t, boot_scale=0.5)["bootstrap"] == pytest.approx(lat["bootstrap"] / 2)
    assert lat["total"] == pytest.approx(sum(lat[c] for c in ("conv", "activation", "shortcut", "bootstrap")))
    pb = published_bootstrap()
    assert pb[2**14] == pytest.approx(102.369) and pb[2**12] == pytest.approx(78.818, abs=1e-3)
    assert pb[2**13] < t.boot(2**13 + 1) < pb[2**14] < t.boot(2**15)  # the log-linear fit
    with pytest.raises(ConvError, match="at level 40"):
        t.cost("rotation", 40)
    with pytest.raises(ConvError, match="no cost for operation 'bootstrapx'"):
        t.cost("bootstrapx", 1)
    with pytest.raises(ConvError, match="cannot read cost table"):
        CostTable.load("/nonexistent/costs.json")


def test_planner_is_optimal_for_the_model():
    """The dynamic programme finds the cheapest layouts: no per-stage choice beats it."""
    t = _table()
    pick, cost = he.choose_distinct(t)
    assert he.latency(he.model_run(pick).by_level, t)["total"] == pytest.approx(cost)
    for m1 in (8, 16):
        for m2 in (16, 32):
            for m3 in (16, 32, 64):
                d = [m1] * 4 + [m2] * 3 + [m3] * 3
                assert he.latency(he.model_run(d).by_level, t)["total"] >= cost - 1e-9
    pick_ng, cost_ng = he.choose_distinct(t, gap_packing=False)
    assert max(pick_ng) <= 32 and cost_ng >= cost


def test_shipped_cost_table_and_end_to_end_model(baseline):
    """With the shipped measurements and the published bootstrap cost the planner's network
    models >= 2x faster than the baseline (this depends on data/tenseal_n65536.json)."""
    t = CostTable.load()
    assert t.slots == 2**15 and "he-bench" in t.source
    assert all(t.cost("hoisted", r) < t.cost("rotation", r) for r in range(19))
    pick, _ = he.choose_distinct(t)
    chosen = he.model_run(pick)
    speedup = he.latency(baseline.by_level, t, encode=True)["total"] / he.latency(chosen.by_level, t)["total"]
    assert speedup >= 2.0


def test_planners_choice_executes_exactly(plan):
    chosen = plan.chosen
    assert chosen.max_rel_error < 1e-9 and all(r.max_rel_error < 1e-9 for r in chosen.records)
    assert max(chosen.distinct) > 32  # gap packing where it pays: a 64-channel 8x8 tensor in one ciphertext
    model = Model(2**15, LevelBudget())
    hyphen_forward(model, list(chosen.distinct), "ca")
    assert model.counts == Counter(chosen.by_level)
    lat = plan.latencies
    assert lat["planner (gap packing)"]["total"] <= lat["CA/RA m=16"]["total"]


def test_cli_he_plan(plan, tmp_path, capsys, monkeypatch):
    """The he-plan report of the fixture's plan (computed once, by the same call he-plan makes)."""
    calls = []

    def fake(**kw):
        calls.append(kw)
        return plan

    monkeypatch.setattr(he.planner, "plan_resnet20", fake)
    path = tmp_path / "plan.json"
    assert main(["he-plan", "--model", "resnet20", "--json", str(path)]) == 0
    assert calls[0]["slots"] == 2**15 and calls[0]["m"] == 16 and calls[0]["points"] == "ca"
    assert calls[0]["budget"] == LevelBudget(18, 16)
    out = capsys.readouterr().out
    for text in ("layer3.2.conv2", "1710 rotations, 2178 PMults in all", "1664 rotations (0.973x",
                 "ciphertext-bootstraps", "baseline 18", "sensitivity", "speed-up"):
        assert text in out
    data = json.loads(path.read_text())
    base, fixed, chosen, no_gap = data["runs"]
    assert base["totals"]["rotations"] + base["shortcut"]["rotations"] == 1710
    assert fixed["totals"]["rotations"] == 1664 and base["ct_bootstraps"] == 18
    assert chosen["ct_bootstraps"] == 3 and no_gap["ct_bootstraps"] == 4
    assert data["other_points"]["planner (gap packing)"] == 4
    assert data["other_points"]["planner (no gap packing)"] == 5
    assert all(x["max_rel_error"] < 1e-9 for r in (base, fixed, chosen) for x in r["layers"])
    assert len(data["sensitivity"]) == 5 and data["sensitivity"][2]["boot_scale"] == 1.0
    monkeypatch.undo()
    assert main(["he-plan", "--slots", "16384"]) == 2
    assert "measured at 32768 slots" in capsys.readouterr().err


def test_he_plan_compute_and_json(plan, monkeypatch, capsys):
    """he-plan's compute step alone (the planner stood in by the fixture's plan): the parsed
    options reach the planner, nothing is printed; the JSON's runs from the plan."""
    from convolab.commands import he as cmd

    calls = []
    monkeypatch.setattr(he.planner, "plan_resnet20", lambda **kw: calls.append(kw) or plan)
    res = cmd.compute_plan(cmd.PlanConfig(m=8, points="block", fresh=17, usable=15, seed=2))
    assert capsys.readouterr().out == ""
    assert res["plan"] is plan and res["seconds"] >= 0
    (kw,) = calls
    assert kw["m"] == 8 and kw["points"] == "block" and kw["budget"] == LevelBudget(17, 15)
    assert kw["seed"] == 2 and kw["slots"] == 2**15 and isinstance(kw["costs"], CostTable)
    data = cmd.plan_json(plan)
    assert [r["name"] for r in data["runs"]] == [r.name for r in (plan.baseline, plan.fixed, plan.chosen,
                                                                    plan.chosen_no_gap)]
    assert data["runs"][1]["totals"]["rotations"] == 1664


def test_he_bench_layers_compute_simulated(capsys):
    """he-bench --mode layers' compute step alone: one dictionary per layer and scheme."""
    from convolab.commands import he as cmd

    cfg = cmd.BenchConfig(mode="layers", slots=2**14, schemes=("ca", "ra"), layers=(1,),
                          backend="simulated", repeat=1)
    said = []
    res = cmd.compute_bench_layers(cfg, say=said.append)
    assert capsys.readouterr().out == "" and len(said) == 4
    assert "simulated" in res["backend"]
    assert [(r["layer"], r["scheme"]) for r in res["results"]] == [(1, "ca"), (1, "ra")]
    for r in res["results"]:
        assert len(r["runs"]) == 1 and r["seconds"] == r["runs"][0] and r["max_rel_error"] < 1e-9
        assert r["rotations"] > 0 and r["pmults"] > 0 and r["depth"] >= 1


def test_cli_he_bench_layers_simulated(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = main(["he-bench", "--mode", "layers", "--backend", "simulated", "--slots", "16384",
               "--layers", "1", "--repeat", "1", "--json", str(path)])
    assert rc == 0
    data = json.loads(path.read_text())
    assert {(r["layer"], r["scheme"]) for r in data["results"]} == {
        (1, s) for s in ("ca", "ra", "multiplexed")
    }
    assert all(r["max_rel_error"] < 1e-9 for r in data["results"])
    assert main(["he-bench", "--mode", "layers", "--backend", "simulated", "--layers", "7"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["he-bench", "--backend", "simulated"]) == 2
    assert "needs --backend tenseal" in capsys.readouterr().err
    assert main(["he-bench", "--repeat", "0"]) == 2


def test_bad_distinct_in_runs():
    with pytest.raises(ConvError, match="distinct=3"):
        he.model_run([3] + [16] * 9)
    assert np.isnan(he.model_run(16).max_rel_error)
