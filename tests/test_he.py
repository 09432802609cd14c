"""convolab.he on the simulated backend: exactness, operation counts, planner, CLI, bad input."""

import json

import numpy as np
import pytest

from convolab import ConvError, he, reference
from convolab.cli import main
from convolab.he.layout import make_layout, pack, unpack

#: the multiplexed baseline's counts for ResNet-20 at 2^15 slots (shared/notes/he.md):
#: (Cin, Cout, size, stride, k) -> (rotations, PMults)
BASELINE_TABLE = {
    (3, 16, 32, 1, 1): (29, 34),
    (16, 16, 32, 1, 1): (57, 88),
    (16, 32, 32, 2, 1): (106, 176),
    (32, 32, 16, 1, 2): (82, 104),
    (32, 64, 16, 2, 2): (155, 208),
    (64, 64, 8, 1, 4): (123, 136),
}

#: (N, Cin, Cout, H, W, R, stride, gap, slots): 3x3 and 1x1, stride 1 and 2, odd sizes,
#: channel counts that are not multiples of the blocks, several ciphertexts, batch 2
CASES = [
    (1, 3, 16, 32, 32, 3, 1, 1, 2**14),
    (1, 5, 7, 9, 9, 3, 1, 1, 2**10),
    (2, 6, 5, 8, 6, 3, 2, 1, 2**9),
    (1, 9, 11, 7, 7, 3, 2, 1, 2**8),
    (1, 7, 6, 9, 5, 1, 1, 1, 2**9),
    (1, 4, 8, 8, 8, 1, 2, 2, 2**10),
    (1, 8, 4, 4, 4, 3, 1, 2, 2**9),
    (1, 3, 4, 1, 1, 3, 1, 1, 2**4),
]


def _data(N, C, K, H, W, R, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (N, C, H, W)), rng.uniform(-1, 1, (K, C, R, R))


# multiplexed stride 2 needs an even map (an odd one is tested as an error below)
SCHEME_CASES = [
    pytest.param(s, c, id=s + "-N{}C{}K{}_{}x{}_r{}s{}g{}_S{}".format(*c))
    for s in ("ca", "ra", "multiplexed")
    for c in CASES
    if not (s == "multiplexed" and c[6] == 2 and (c[3] % 2 or c[4] % 2))
]


@pytest.mark.parametrize("scheme,case", SCHEME_CASES)
def test_matches_reference(scheme, case):
    N, C, K, H, W, R, stride, gap, slots = case
    x, w = _data(N, C, K, H, W, R)
    r = he.conv2d(x, w, scheme=scheme, slots=slots, stride=stride, gap=gap)
    ref = reference.conv2d(x, w, stride=stride, padding=(R - 1) // 2)
    assert r.output.shape == ref.shape
    assert np.abs(r.output - ref).max() <= 1e-9 * max(1.0, np.abs(ref).max())
    assert r.cmults == 0 and r.depth == (2 if scheme == "multiplexed" else 1)
    assert r.seconds >= 0 and r.scheme == scheme


@pytest.mark.parametrize("Cin,Cout,H,slots", [(16, 16, 32, 2**15), (5, 40, 8, 2**9),
                                              (40, 5, 8, 2**9), (64, 64, 8, 2**14)])
def test_ca_ra_counts_follow_the_formulas(Cin, Cout, H, slots):
    x, w = _data(1, Cin, Cout, H, H, 3)
    n = slots // (H * H)
    ca = he.conv2d(x, w, scheme="ca", slots=slots)
    ra = he.conv2d(x, w, scheme="ra", slots=slots)
    ceil_in, ceil_out = -(-Cin // n), -(-Cout // n)
    assert (ca.rotations, ca.pmults) == (8 * ceil_in + Cout * (n.bit_length() - 1),
                                         9 * ceil_in * Cout)
    assert (ra.rotations, ra.pmults) == (8 * ceil_out, 9 * Cin * ceil_out)
    if (Cin, Cout, H, slots) == (16, 16, 32, 2**15):  # the figures quoted in notes/he.md
        assert (ca.rotations, ca.pmults, ra.rotations, ra.pmults) == (88, 144, 8, 144)


@pytest.mark.parametrize("layer", sorted(BASELINE_TABLE), ids=str)
def test_baseline_counts_match_the_resnet20_table(layer):
    Cin, Cout, H, stride, k = layer
    x, w = _data(1, Cin, Cout, H, H, 3, seed=1)
    r = he.conv2d(x, w, scheme="multiplexed", slots=2**15, stride=stride, gap=k)
    assert (r.rotations, r.pmults) == BASELINE_TABLE[layer]
    assert r.depth == 2 and r.cmults == 0
    ref = reference.conv2d(x, w, stride=stride, padding=1)
    assert np.abs(r.output - ref).max() <= 1e-9 * np.abs(ref).max()


@pytest.mark.parametrize("kind", ["CA", "RA", "MP"])
def test_pack_unpack_round_trip(kind):
    x = np.random.default_rng(2).uniform(-1, 1, (6, 5, 7))
    lay = make_layout(kind, 6, 5, 7, 2**10, gap=2 if kind == "MP" else 1)
    vecs = pack(lay, x)
    assert len(vecs) == lay.num_ciphertexts and all(v.shape == (2**10,) for v in vecs)
    assert np.array_equal(unpack(lay, vecs), x)
    if kind == "RA":  # every block holds the channel
        blocks = vecs[3].reshape(lay.n_blocks, lay.block)
        assert (blocks == blocks[0]).all()


def test_backend_rules_and_counting():
    be = he.SimulatedBackend(8)
    v = np.arange(8.0)
    ct = be.encrypt(v)
    assert np.array_equal(be.decrypt(be.rotate(ct, 3)), np.roll(v, -3))  # left rotation
    assert be.rotate(ct, 8) is ct and be.counts.rotations == 1  # step 0 mod slots is free
    prod = be.multiply_plain(ct, be.encode(v, ct))
    with pytest.raises(ConvError, match="rescale"):
        be.multiply_plain(prod, be.encode(v, prod))
    with pytest.raises(ConvError, match="add"):
        be.add(ct, prod)
    out = be.rescale(prod)
    assert out.level == 1 and np.array_equal(be.decrypt(out), v * v)
    sq = be.rescale(be.multiply(out, ct))
    assert sq.level == 2 and np.array_equal(be.decrypt(sq), v**3)
    assert (be.counts.pmults, be.counts.cmults, be.counts.rescales) == (1, 1, 2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(w=(4, 3, 5, 5)), "5x5"),
        (dict(w=(4, 3, 3, 1)), "3x1"),
        (dict(stride=3), "stride=3"),
        (dict(w=(4, 2, 3, 3)), "channels=3"),
        (dict(slots=512), "slots=512"),
        (dict(slots=1000), "slots=1000"),
        (dict(scheme="winograd"), "winograd"),
        (dict(backend="openfhe"), "openfhe"),
        (dict(gap=3), "gap=3"),
        (dict(x=(1, 3, 32, 31), scheme="multiplexed", stride=2), "32x31"),
        (dict(x=(1, 40, 16, 16), w=(4, 40, 3, 3), scheme="multiplexed", slots=8192),
         "channels=40"),
        (dict(x=(3, 32, 32)), "4-D"),
    ],
)
def test_bad_input_raises_conv_error(kwargs, match):
    kw = dict(x=(1, 3, 32, 32), w=(4, 3, 3, 3), scheme="ca", slots=2**12)
    kw.update(kwargs)
    x = np.zeros(kw.pop("x"))
    w = np.zeros(kw.pop("w"))
    with pytest.raises(ConvError, match=match):
        he.conv2d(x, w, **kw)


@pytest.fixture(scope="module")
def resnet_plan():
    return he.plan_resnet20(slots=2**15)


def test_resnet20_plan(resnet_plan):
    plan = resnet_plan
    assert len(plan.rows) == 19
    assert [r.scheme for r in plan.rows] == ["RA"] + ["CA", "RA"] * 9
    for r in plan.rows:
        la = r.layer
        key = (la.cin, la.cout, la.size, la.stride, la.mp_gap)
        assert (r.base_rotations, r.base_pmults, r.base_depth) == BASELINE_TABLE[key] + (2,)
        n = 32  # 2^15 slots / 1024-slot blocks: the grid stays 32x32 through the strides
        if r.scheme == "CA":
            t = -(-la.cin // n)
            assert (r.rotations, r.pmults) == (8 * t + la.cout * 5, 9 * t * la.cout)
        else:
            t = -(-la.cout // n)
            assert (r.rotations, r.pmults) == (8 * t, 9 * la.cin * t)
        assert r.depth == 1 and r.saved == r.base_rotations - r.rotations
    tot = plan.totals()
    assert tot["base_rotations"] == 29 + 6 * 57 + 106 + 5 * 82 + 155 + 5 * 123
    assert tot["saved"] == tot["base_rotations"] - tot["rotations"]
    # the encrypted network equals the plaintext one; 19 activations of depth 2 + 19 convs
    assert plan.max_rel_error < 1e-9
    assert plan.depth == 19 + 2 * 19
    assert plan.activation_cmults == plan.activation_pmults > 0 and plan.shortcut_pmults == 2


def test_cli_he_plan(tmp_path, capsys):
    path = tmp_path / "plan.json"
    assert main(["he-plan", "--model", "resnet20", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "layer3.2.conv2" in out and "rotations saved" in out
    data = json.loads(path.read_text())
    assert len(data["rows"]) == 19 and data["rows"][0]["base_rotations"] == 29
    assert data["totals"]["saved"] == data["totals"]["base_rotations"] - data["totals"]["rotations"]


def test_cli_he_bench_simulated(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = main(["he-bench", "--backend", "simulated", "--slots", "16384", "--layers", "1,6",
               "--json", str(path)])
    assert rc == 0
    data = json.loads(path.read_text())
    assert {(r["layer"], r["scheme"]) for r in data["results"]} == {
        (v, s) for v in (1, 6) for s in ("ca", "ra", "multiplexed")
    }
    assert all(r["max_rel_error"] < 1e-9 for r in data["results"])
    assert main(["he-bench", "--backend", "simulated", "--layers", "7"]) == 2
    assert "out of range" in capsys.readouterr().err
