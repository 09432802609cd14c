"""Algorithm choice: ranking and reasons, budgets, the autotune cache and its safety."""

import dataclasses
import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import convolab
from convolab import ConvError, costmodel, select
from convolab import cache as cachemod
from convolab.spec import ConvSpec


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVOLAB_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_choose_lists_every_algorithm_admissible_first_fastest_first(cache):
    ch = select.choose((1, 16, 20, 20), (16, 16, 3, 3), padding=1)
    assert {c.name for c in ch} == {a.name for a in convolab.list_algorithms()}
    adm = [c for c in ch if c.admissible]
    assert adm and all(c.admissible for c in ch[: len(adm)])
    assert [c.seconds for c in adm] == sorted(c.seconds for c in adm)
    assert adm[0].reason == "fastest admissible"
    for c in ch[len(adm):]:
        assert not c.admissible and c.reason


def test_unsupported_reason_is_given(cache):
    ch = select.choose((1, 4, 20, 20), (4, 4, 3, 3), padding=1, stride=2)
    by = {c.name: c for c in ch}
    for a in convolab.list_algorithms():
        why = a.supports(ConvSpec.from_shapes((1, 4, 20, 20), (4, 4, 3, 3), 2, 1))
        if why is not None:
            assert not by[a.name].admissible and by[a.name].reason == f"unsupported: {why}"
            assert by[a.name].seconds is None


def test_memory_budget_is_respected(cache):
    x_shape, w_shape = (1, 16, 24, 24), (16, 16, 3, 3)
    ch = select.choose(x_shape, w_shape, padding=0, memory_limit=0)
    assert any(c.admissible for c in ch)  # direct needs no workspace without padding
    for c in ch:
        if c.admissible:
            assert c.workspace_bytes == 0
        elif c.workspace_bytes:
            assert "memory_limit" in c.reason
    x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
    w = np.random.default_rng(1).standard_normal(w_shape).astype(np.float32)
    limit = 1000
    p = convolab.plan(x.shape, w, memory_limit=limit)
    assert p.workspace_bytes <= limit
    np.testing.assert_allclose(p(x), convolab.reference.conv2d(x, w), rtol=1e-4, atol=1e-3)


def test_error_budget_is_respected_and_default_stated(cache):
    spec = ConvSpec.from_shapes((1, 16, 24, 24), (16, 16, 3, 3), 1, 1)
    budget = select.default_max_error(spec)
    assert budget == pytest.approx(64 * convolab.registry.summation_bound(spec, np.float32))
    for max_error in (None, 1e-3, 1e-9):
        ch = select.choose(spec.x_shape, spec.w_shape, padding=1, max_error=max_error)
        lim = budget if max_error is None else max_error
        for c in ch:
            if c.admissible:
                assert c.error_bound <= lim
            elif c.error_bound is not None and c.error_bound > lim:
                assert "max_error" in c.reason
    # a budget nothing meets
    with pytest.raises(ConvError, match="no algorithm is admissible"):
        convolab.plan(spec.x_shape, np.ones(spec.w_shape, np.float32), padding=1, max_error=1e-30)
    with pytest.raises(ConvError, match="max_error"):
        select.choose(spec.x_shape, spec.w_shape, max_error=-1)
    with pytest.raises(ConvError, match="memory_limit"):
        select.choose(spec.x_shape, spec.w_shape, memory_limit=-5)


def test_measure_stores_winner_and_auto_uses_the_cache(cache):
    x_shape, w_shape = (1, 8, 12, 12), (8, 8, 3, 3)
    ch = select.choose(x_shape, w_shape, padding=1, measure=True, repeat=2)
    adm = [c for c in ch if c.admissible]
    assert all(c.source == "measured" and c.seconds > 0 for c in adm)
    data = json.loads((cache / "autotune.json").read_text())
    assert data["format"] == "convolab-autotune"
    (key, entry), = data["entries"].items()
    assert entry["best"] == adm[0].name
    # the cached times now decide `auto`: make a slow algorithm look fastest in the cache
    slowest = adm[-1].name
    entry["seconds"][slowest] = 1e-9
    entry["best"] = slowest
    cachemod._update_json(cache / "autotune.json", cachemod.AUTOTUNE_FORMAT, key, entry)
    w = np.ones(w_shape, np.float32)
    p = convolab.plan(x_shape, w, padding=1)
    assert p.algorithm == slowest
    assert "cache" in p.explain()


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "fast", None])
def test_cached_times_that_cannot_be_times_are_ignored(cache, bad):
    """A cache entry holding 0 s (written under a stubbed clock), a negative, NaN, infinite or
    non-numeric time is not used: the model's prediction stands, and the ranking does not
    divide by zero."""
    x_shape, w_shape = (1, 8, 12, 12), (8, 8, 3, 3)
    spec = ConvSpec.from_shapes(x_shape, w_shape, padding=1)
    before = {c.name: c.seconds for c in select.rank(spec) if c.admissible}
    key = select.cache_key(spec)
    entry = {"best": "direct", "seconds": {"direct": bad, "im2col": bad}, "untimed_after": bad}
    cachemod._update_json(cache / "autotune.json", cachemod.AUTOTUNE_FORMAT, key, entry)
    ranked = select.rank(spec)
    adm = [c for c in ranked if c.admissible]
    assert all(c.source == "model" for c in adm)
    assert {c.name: c.seconds for c in adm} == before
    assert adm[0].reason == "fastest admissible"


def test_first_plan_trial_on_an_uncalibrated_machine(cache, monkeypatch):
    monkeypatch.setenv("CONVOLAB_AUTO_TRIAL", "1")
    x_shape, w_shape = (1, 16, 10, 10), (16, 16, 3, 3)
    spec = ConvSpec.from_shapes(x_shape, w_shape, 1, 1, 1, 1, np.float32)
    model = select.rank(spec)
    assert select.trial_wanted(model)
    cands = select._trial_candidates([c for c in model if c.admissible])
    assert 2 <= len(cands) <= select.TRIAL_CANDIDATES + len(select.TRIAL_ALWAYS)
    timed = []
    real = select._measure
    monkeypatch.setattr(select, "_measure", lambda c, *a, **k: (timed.append([x.name for x in c]),
                                                                 real(c, *a, **k)))
    w = np.random.default_rng(0).standard_normal(w_shape).astype(np.float32)
    p = convolab.plan(x_shape, w, padding=1)
    assert timed == [[c.name for c in cands]]
    entry, = json.loads((cache / "autotune.json").read_text())["entries"].values()
    assert set(entry["seconds"]) == {c.name for c in cands}
    assert p.algorithm == entry["best"] == min(entry["seconds"], key=entry["seconds"].get)
    # the untimed candidates rank after every timed one; a second plan reads the cache
    ranking = select.rank(spec)
    adm = [c for c in ranking if c.admissible]
    assert [c.name for c in adm[: len(cands)]] == sorted(entry["seconds"], key=entry["seconds"].get)
    assert all(c.source == "cache" for c in adm[: len(cands)])
    assert not select.trial_wanted(ranking)
    convolab.conv2d(np.ones(x_shape, np.float32), w, padding=1)
    assert len(timed) == 1


def test_trial_times_direct_wherever_the_model_ranks_it():
    """Direct convolution joins the trial's candidates when the model ranks it below the first
    `TRIAL_CANDIDATES` but within `TRIAL_FACTOR` of the best; not beyond that factor."""
    def ch(name, s):
        return select.Choice(name, True, "", s, 0, 0.0, "model")

    adm = [ch("winograd_f2x3", 1.0), ch("sfc6_7x3", 1.1), ch("sfc6_6x3", 1.2),
           ch("sfc4_4x3", 1.5), ch("direct", 1.7), ch("im2col", 2.0)]
    assert [c.name for c in select._trial_candidates(adm)] == [
        "winograd_f2x3", "sfc6_7x3", "sfc6_6x3", "direct"]
    adm[4] = ch("direct", select.TRIAL_FACTOR * 1.0 + 0.1)
    assert "direct" not in [c.name for c in select._trial_candidates(adm)]
    # already among the first: listed once
    adm = [ch("direct", 1.0), ch("im2col", 1.1), ch("im2win", 1.2), ch("fft", 1.3)]
    assert [c.name for c in select._trial_candidates(adm)] == ["direct", "im2col", "im2win"]


def test_no_trial_when_calibrated_switched_off_or_single_candidate(cache, monkeypatch):
    spec = ConvSpec.from_shapes((1, 16, 10, 10), (16, 16, 3, 3), 1, 1, 1, 1, np.float32)
    model = select.rank(spec)
    monkeypatch.setenv("CONVOLAB_AUTO_TRIAL", "0")
    assert not select.trial_wanted(model)
    monkeypatch.setenv("CONVOLAB_AUTO_TRIAL", "1")
    assert select.trial_wanted(model)
    monkeypatch.setattr(select, "calibrated", lambda: True)
    assert not select.trial_wanted(model)
    monkeypatch.setattr(select, "calibrated", lambda: False)
    assert select.trial_wanted(model)
    # one admissible algorithm: nothing to compare
    one = [dataclasses.replace(c, admissible=i == 0) for i, c in enumerate(model)]
    assert not select.trial_wanted(one)


def test_cache_key_changes_with_threads_and_spec():
    s1 = ConvSpec.from_shapes((1, 8, 12, 12), (8, 8, 3, 3), 1, 1)
    s2 = ConvSpec.from_shapes((2, 8, 12, 12), (8, 8, 3, 3), 1, 1)
    assert select.cache_key(s1, threads=1) != select.cache_key(s1, threads=2)
    assert select.cache_key(s1, threads=1) != select.cache_key(s2, threads=1)
    assert select.cache_key(s1, 1) != select.cache_key(s1.with_dtype(np.float64), 1)
    k = json.loads(select.cache_key(s1, threads=2))
    assert k["threads"] == 2 and k["version"] == convolab.__version__ and k["cpu"]


@pytest.mark.parametrize("content", ["{not json", '{"format": "something-else", "version": 1, "entries": {}}',
                                     '[1, 2, 3]', '{"format": "convolab-autotune", "version": 1, "entries": 5}'])
def test_corrupt_or_foreign_cache_is_ignored_with_warning_and_rewritten(cache, content):
    path = cache / "autotune.json"
    path.write_text(content)
    with pytest.warns(UserWarning, match="ignoring corrupt or foreign cache file"):
        ch = select.choose((1, 4, 10, 10), (4, 4, 3, 3), padding=1)
    assert ch[0].admissible
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        select.choose((1, 4, 10, 10), (4, 4, 3, 3), padding=1, measure=True, repeat=1)
    data = json.loads(path.read_text())
    assert data["format"] == "convolab-autotune" and len(data["entries"]) == 1


def _writer(args):
    path, i, n = args
    from convolab import cache as c

    for j in range(n):
        c._update_json(path, c.AUTOTUNE_FORMAT, f"w{i}-{j}", {"best": "direct", "seconds": {"direct": j}})
    return i


def test_concurrent_writer_processes_never_corrupt_or_lose_entries(cache):
    path = cache / "autotune.json"
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        pool.map(_writer, [(path, i, 15) for i in range(4)])
    data = json.loads(path.read_text())
    assert len(data["entries"]) == 60
    assert not list(cache.glob("*.tmp"))


def test_plan_explain_shows_ranking(cache):
    w = np.ones((8, 8, 3, 3), np.float32)
    text = convolab.plan((1, 8, 12, 12), w, padding=1).explain()
    assert "ranking" in text and "fastest admissible" in text
    for a in convolab.list_algorithms():
        assert a.name in text


def test_calibrate_stores_constants_used_by_the_model(cache, monkeypatch):
    # direct runs the first layer on its microkernel (32 output channels), the others on its
    # loops: the model fits the two kernels separately
    layers = [costmodel._layer(1, 16, 12, 32, 3), costmodel._layer(1, 16, 12, 16, 3), costmodel._layer(1, 8, 10, 8, 1)]
    m = select.calibrate(layers=layers)
    assert m.gemm_gflops > 0 and m.bandwidth_gbs > 0 and m.call_seconds > 0
    assert len(m.samples["direct"]) == 1 and len(m.samples["direct/loops"]) == 2
    assert len(m.samples["im2col"]) == 3 and set(m.linear) == set(m.samples)
    stored = select.machine()
    assert stored.samples == m.samples and stored.linear == m.linear
    # on a calibration layer itself the model returns about what was measured there
    direct = convolab.registry.get("direct")
    for xs, ws, *_ in layers[:2]:
        spec = ConvSpec.from_shapes(xs, ws, 1, 1)
        row = m.samples[direct.cost_key(spec)][0]
        measured = stored.call_seconds + direct.multiplies(spec) * 2.0 ** row[costmodel.N_FEATURES]
        assert select.predict_seconds(direct, spec, stored) == pytest.approx(measured, rel=0.5)
    rows = select.calibration_report(stored)
    assert {r[0] for r in rows} >= {"direct", "direct/loops", "im2col"} and all(r[1] > 0 for r in rows)


def test_fit_terms_recovers_known_costs():
    rng = np.random.default_rng(0)
    terms = np.column_stack([np.ones(20), *(rng.uniform(1e3, 1e6, size=(5, 20)))])
    coef = np.array([2e-5, 3e-10, 0.0, 1e-10, 0.0, 5e-9])
    np.testing.assert_allclose(select.fit_terms(terms, terms @ coef), coef, rtol=1e-6, atol=1e-14)
    # with fewer layers than CHANNEL_FIT_LAYERS only the call and multiply terms are fitted,
    # with fewer than FULL_FIT_LAYERS the call, multiply and per-channel terms
    simple = np.array([2e-5, 3e-10, 0, 0, 0, 0])
    few = select.fit_terms(terms[:5], terms[:5] @ coef)
    assert np.all(few[2:] == 0) and np.all(few >= 0)
    np.testing.assert_allclose(select.fit_terms(terms[:5], terms[:5] @ simple), simple, rtol=1e-6)
    channels = np.array([2e-5, 3e-10, 0, 0, 1e-10, 5e-9])
    some = select.fit_terms(terms[:8], terms[:8] @ coef)
    assert some[2] == 0 and some[3] == 0 and np.all(some >= 0)
    np.testing.assert_allclose(select.fit_terms(terms[:8], terms[:8] @ channels), channels, rtol=1e-6)


def test_model_reads_calibration_files_without_fitted_terms(cache):
    """A calibration entry written before the fitted terms existed still predicts (seconds per
    multiply of the nearest layers)."""
    spec = ConvSpec.from_shapes((1, 16, 12, 12), (16, 16, 3, 3), 1, 1)
    direct = convolab.registry.get("direct")
    row = [*select.features(spec), math.log2(1e-9)]
    old = select.Machine(100.0, 10.0, 1e-5, {"direct": [row]})
    assert select.predict_seconds(direct, spec, old) == pytest.approx(1e-5 + direct.multiplies(spec) * 1e-9)
    new = select.Machine(100.0, 10.0, 1e-5, {"direct": [[*row, 1.0]]}, {"direct": [0, 1e-9, 0, 0, 0, 0]})
    assert select.predict_seconds(direct, spec, new) == pytest.approx(2 * direct.multiplies(spec) * 1e-9)


def test_uncalibrated_machine_uses_the_shipped_reference(cache):
    """With no calibration file the model is the shipped reference calibration (every
    registered kernel fitted), and auto puts a depthwise layer on direct, not on a GEMM-based
    algorithm."""
    assert not (cache / "calibration.json").exists()
    ref = select.reference_machine()
    assert ref is not None and select.machine() is ref
    names = {a.name for a in convolab.list_algorithms()}
    assert {k.split("/")[0] for k in ref.samples} == names and set(ref.linear) == set(ref.samples)
    dw = select.choose((1, 128, 56, 56), (128, 1, 3, 3), padding=1, groups=128)
    assert dw[0].name == "direct"
    big = select.choose((1, 256, 14, 14), (256, 256, 3, 3), padding=1)
    assert big[0].name in {"direct", "im2win", "winograd_f2x3", "sfc4_4x3", "sfc6_6x3"}


def test_plane_aliasing_feature_and_five_feature_files(cache):
    """Output planes a multiple of 2 KiB apart are told apart from the others by the sixth
    feature; a calibration entry written with five features still predicts from them."""
    aliased = ConvSpec.from_shapes((8, 3, 226, 226), (64, 3, 3, 3), 1, 0)  # 224 x 224 planes
    plain = ConvSpec.from_shapes((8, 3, 224, 224), (64, 3, 3, 3), 1, 0)  # 222 x 222
    assert costmodel.plane_aliasing(aliased) and not costmodel.plane_aliasing(plain)
    assert costmodel.features(aliased)[-1] == costmodel.ALIAS_DISTANCE and costmodel.features(plain)[-1] == 0
    direct = convolab.registry.get("direct")
    key = direct.cost_key(plain)
    row = [*select.features(plain)[:5], math.log2(1e-9), 0.0]
    entry = {"gemm_gflops": 100.0, "bandwidth_gbs": 10.0, "call_seconds": 1e-5,
             "samples": {key: [row]}, "linear": {key: [0, 1e-9, 0, 0, 0, 0]}}
    old = costmodel._from_entry(entry)
    assert old.n_features == 5
    assert select.predict_seconds(direct, plain, old) == pytest.approx(direct.multiplies(plain) * 1e-9)
    assert costmodel._from_entry({**entry, "n_features": 6}).n_features == 6


_FRESH_PLAN = """
import sys
import numpy as np
import convolab
from convolab.algorithms import bilinear
w = np.ones((64, 64, 3, 3), np.float32)
p = convolab.plan((1, 64, 56, 56), w, padding=1)
loaded = sorted(m for m in sys.modules if m.startswith(("scipy.fft", "convolab.bench", "convolab.kernels._",
                                                         "convolab.numerics", "convolab.highdim")))
exact = [n for n in bilinear.VARIANTS if "alg" in vars(bilinear.engine(n))]
print(p.algorithm, loaded, exact)
"""


def test_a_fresh_process_plans_without_kernels_scipy_fft_or_exact_transforms(cache):
    # cold start (tools/cold_start.py): ranking every algorithm and preparing the weights
    # loads no Numba kernel module, neither scipy.fft nor the benchmark runner, and leaves
    # the stored Winograd/SFC engines' exact transforms pickled
    env = dict(os.environ, CONVOLAB_AUTO_TRIAL="0")
    for _ in range(2):  # the first process may build and store the engines
        out = subprocess.run([sys.executable, "-c", _FRESH_PLAN], env=env, capture_output=True,
                             text=True, check=True).stdout.split(" ", 1)
    assert out[1].strip() == "[] []", out


def test_trial_times_candidates_taking_turns(monkeypatch):
    # time_min_interleaved: every function called at least `repeat` times, one call each per
    # round (so a slow spell of the host falls on all of them), each result its own minimum
    from convolab import _timing

    order = []
    clock = iter(range(1000))
    monkeypatch.setattr(_timing, "_once", lambda f: (f(), next(clock) % 7 + 1)[1] * 1e-3)
    fs = [lambda i=i: order.append(i) for i in range(3)]
    best = _timing.time_min_interleaved(fs, 4, min_total=0)
    assert order[:6] == [0, 1, 2, 0, 1, 2] and len(order) == 12
    assert best == [1e-3, 1e-3, 2e-3]  # calls 0,3,6,9 / 1,4,7,10 / 2,5,8,11 of the clock
