"""convolab.he schedules on the simulated backend: exactness, operation counts, layouts,
activations, backend rules, bad input. (Whole networks, planner, latency, CLI: test_he_network.py.)"""

import csv
from pathlib import Path

import numpy as np
import pytest

from convolab import ConvError, he, reference
from convolab.he.activation import (
    composite_depth,
    composite_relu_plain,
    eval_odd_plain,
    odd_depth,
    poly2_plain,
    sign_poly,
)
from convolab.he.layout import make_layout, pack, unpack
from convolab.he.schedules import EncTensor, _authors_rotate

DATA = Path(__file__).parent / "data" / "he_baseline_resnet20.csv"


def baseline_table():
    """The baseline's per-layer counts as its authors' code runs (provenance in the file)."""
    with open(DATA) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


#: the multiplexed baseline's counts per ResNet-20 layer type at 2^15 slots with convolab's
#: earlier counting (variant "doubling"): (Cin, Cout, size, stride, k) -> (rotations, PMults)
DOUBLING_TABLE = {
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


#: (scheme, N, Cin, Cout, H, R, stride, gap, slots, distinct): replicated CA layouts (m < blocks,
#: several ciphertexts), 2D gap packing (m > blocks: 2 and 4 gap cells), stride 2, 1x1, batch 2
REPLICATED_CASES = [
    ("ca", 1, 9, 5, 8, 3, 1, 1, 2**10, 4),
    ("ca", 2, 7, 6, 5, 1, 1, 1, 2**9, 2),
    ("ca", 1, 40, 6, 4, 3, 1, 2, 2**10, 32),
    ("ca", 1, 40, 6, 4, 3, 2, 2, 2**10, 64),
    ("ca", 1, 16, 16, 32, 3, 1, 1, 2**15, 16),
    ("ra", 1, 5, 9, 7, 3, 1, 1, 2**10, 4),
    ("ra", 1, 6, 40, 4, 3, 1, 2, 2**10, 64),
    ("ra", 1, 6, 20, 4, 3, 2, 1, 2**8, 32),
    ("ra", 2, 4, 6, 6, 1, 2, 1, 2**9, 2),
]


@pytest.mark.parametrize("case", REPLICATED_CASES, ids=lambda c: "{}-N{}C{}K{}_{}_r{}s{}g{}_S{}_m{}".format(*c))
def test_replicated_and_gap_packed_layouts_match_reference(case):
    scheme, N, C, K, H, R, stride, gap, slots, m = case
    x, w = _data(N, C, K, H, H, R, seed=7)
    r = he.conv2d(x, w, scheme=scheme, slots=slots, stride=stride, gap=gap, distinct=m,
                  hoist=scheme == "ca")
    ref = reference.conv2d(x, w, stride=stride, padding=(R - 1) // 2)
    assert np.abs(r.output - ref).max() <= 1e-9 * max(1.0, np.abs(ref).max())
    assert r.depth == 1 and r.cmults == 0
    lay = r.in_layout if scheme == "ca" else r.out_layout
    assert lay.distinct == m and lay.num_ciphertexts == -(-(C if scheme == "ca" else K) // m)
    n = lay.n_blocks
    T = N * lay.num_ciphertexts if scheme == "ca" else None
    if scheme == "ca" and R == 3 and H > 1:  # every tap used: 1 rotation + 7 hoisted per input ct
        assert (r.rotations + r.hoisted, r.hoisted) == (N * (8 * -(-C // m) + K * (m.bit_length() - 1)), 7 * T)
        assert r.pmults == N * 9 * -(-C // m) * K
    if scheme == "ra" and R == 3:
        P = min(m, n)
        groups = -(-K // P)
        extra = groups - lay.num_ciphertexts
        assert (r.rotations, r.pmults) == (N * (8 * groups + extra), N * 9 * C * groups)


def test_replicated_ca_reduces_over_log2_m_blocks():
    """A stage-1 CAConv (16 -> 16 on 32x32 at 2^15 slots): 88 rotations dense, 72 with m = 16."""
    x, w = _data(1, 16, 16, 32, 32, 3)
    dense = he.conv2d(x, w, scheme="ca", slots=2**15)
    rep = he.conv2d(x, w, scheme="ca", slots=2**15, distinct=16)
    assert (dense.rotations, rep.rotations) == (88, 72) and dense.pmults == rep.pmults == 144
    assert np.abs(dense.output - rep.output).max() < 1e-12


def test_replicated_layout_holds_every_copy():
    lay = make_layout("CA", 6, 5, 7, 2**10, gap=2, distinct=2)
    x = np.random.default_rng(2).uniform(-1, 1, (6, 5, 7))
    vecs = pack(lay, x)
    assert len(vecs) == 3 and lay.blocks_per_copy == 2 and lay.n_blocks == 4
    blocks = vecs[1].reshape(4, lay.block)
    assert np.array_equal(blocks[0], blocks[2]) and np.array_equal(blocks[1], blocks[3])
    assert np.array_equal(unpack(lay, vecs), x)
    gp = make_layout("CA", 40, 4, 4, 2**10, gap=2, distinct=32)
    assert (gp.blocks_per_copy, gp.cells, gp.num_ciphertexts) == (16, 2, 2)
    assert gp.position(17) == (0, 1, 1)  # channel 17: block 1, gap cell (0, 1)
    y = np.random.default_rng(3).uniform(-1, 1, (40, 4, 4))
    assert np.array_equal(unpack(gp, pack(gp, y)), y)


@pytest.mark.parametrize("C,C2,H,gap,m_in,m_out,sub", [
    (16, 32, 32, 1, 16, 16, True), (16, 32, 32, 1, 16, 32, True), (32, 64, 16, 2, 16, 64, True),
    (32, 32, 16, 2, 32, 8, False), (32, 64, 16, 2, 4, 128, True), (8, 8, 8, 1, 8, 4, False)])
def test_ca_relayout_moves_every_copy(C, C2, H, gap, m_in, m_out, sub):
    be = he.SimulatedBackend(2**15)
    lay = make_layout("CA", C, H, H, be.slots, gap, distinct=m_in)
    s = 2 if sub else 1
    out_lay = he.with_distinct(he.Layout("CA", C2, H // s, H // s, gap * s, lay.grid_h, lay.grid_w,
                                         be.slots), m_out)
    x = np.random.default_rng(4).uniform(-1, 1, (C, H, H))
    out = he.ca_relayout(be, EncTensor(lay, [be.encrypt(v) for v in pack(lay, x)]), out_lay, sub)
    ref = np.zeros((C2, H // s, H // s))
    ref[:C] = x[:, ::s, ::s]
    for ct, want in zip(out.cts, pack(out_lay, ref), strict=True):
        got = np.zeros(be.slots) if ct is None else be.decrypt(ct)
        nz = np.nonzero(want)[0]
        assert np.array_equal(got[nz], want[nz])
    assert np.array_equal(unpack(out_lay, [None if c is None else be.decrypt(c) for c in out.cts]), ref)
    assert max(c.level for c in out.cts if c is not None) == 1
    if m_in == m_out and sub:  # same positions: masks only
        assert be.counts.rotations == 0 and be.counts.pmults == lay.num_ciphertexts


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


_CONV_TYPES = {}
for _row in baseline_table():
    if "shortcut" not in _row["layer"]:
        _CONV_TYPES.setdefault(tuple(int(_row[c]) for c in ("cin", "cout", "size", "stride", "k")), _row)


@pytest.mark.parametrize("layer", sorted(_CONV_TYPES), ids=str)
def test_baseline_counts_match_the_authors_table(layer):
    """Each ResNet-20 layer type, counted as the authors' code runs (tests/data table)."""
    Cin, Cout, H, stride, k = layer
    row = _CONV_TYPES[layer]
    x, w = _data(1, Cin, Cout, H, H, 3, seed=1)
    r = he.conv2d(x, w, scheme="multiplexed", slots=2**15, stride=stride, gap=k)
    assert (r.rotations, r.pmults) == (int(row["rotations"]), int(row["pmults"]))
    assert int(row["rotations"]) == sum(int(row[c]) for c in ("rot_taps", "rot_sum", "rot_place", "rot_copies"))
    assert r.depth == 2 and r.cmults == 0
    assert r.out_layout.copies == int(row["p_out"]) and r.out_layout.sub_blocks == int(row["t_out"])
    ref = reference.conv2d(x, w, stride=stride, padding=1)
    assert np.abs(r.output - ref).max() <= 1e-9 * np.abs(ref).max()


@pytest.mark.parametrize("layer", sorted(DOUBLING_TABLE), ids=str)
def test_baseline_doubling_variant_keeps_the_earlier_counts(layer):
    Cin, Cout, H, stride, k = layer
    x, w = _data(1, Cin, Cout, H, H, 3, seed=1)
    r = he.conv2d(x, w, scheme="multiplexed", slots=2**15, stride=stride, gap=k, variant="doubling")
    assert (r.rotations, r.pmults) == DOUBLING_TABLE[layer]
    ref = reference.conv2d(x, w, stride=stride, padding=1)
    assert np.abs(r.output - ref).max() <= 1e-9 * np.abs(ref).max()


def test_baseline_table_totals():
    rows = baseline_table()
    assert len(rows) == 21  # 19 convolutions + 2 downsampling shortcuts
    layers = he.resnet20_convs()
    assert [r["layer"] for r in rows if "shortcut" not in r["layer"]] == [la.name for la in layers]
    assert sum(int(r["rotations"]) for r in rows) == 1710
    assert sum(int(r["pmults"]) for r in rows) == 2178
    assert sum(int(r["rotations"]) for r in rows if "shortcut" not in r["layer"]) == 1668


@pytest.mark.parametrize("C,H,k", [(16, 32, 1), (32, 16, 2), (6, 8, 1)])
def test_mp_downsample_exact_and_counted_as_the_authors(C, H, k):
    slots = 2**15 if H > 8 else 2**10
    be = he.SimulatedBackend(slots)
    lay = make_layout("MP", C, H, H, slots, k, sub_blocks=-(-C // k**2))
    x = np.random.default_rng(5).uniform(-1, 1, (C, H, H))
    out = he.mp_downsample(be, EncTensor(lay, [be.encrypt(pack(lay, x)[0])]))
    ref = np.zeros((2 * C, H // 2, H // 2))
    ref[C // 2 : C // 2 + C] = x[:, ::2, ::2]
    v = be.decrypt(out.cts[0])
    assert np.array_equal(unpack(out.layout, [v]), ref)
    po, t = out.layout.copies, lay.sub_blocks
    span = slots // po
    assert all(np.array_equal(v[:span], v[u * span : (u + 1) * span]) for u in range(po))
    assert be.counts.pmults == k * t
    if t % 8 == 0:  # the authors' shapes (their code requires t % 8 == 0): no zero shift
        assert be.counts.rotations == k * t + po - 1
    else:  # here channel 0 -> 3 and its group keeps its slot offset: one shift is zero
        assert be.counts.rotations == k * t - 1 + po - 1
    assert out.cts[0].level == 1 and out.layout.gap == 2 * k


def test_authors_rotation_splits_like_memory_save_rotate():
    be = he.SimulatedBackend(128)
    v = np.arange(128.0)
    ct = be.encrypt(v)
    for step, n in [(33, 1), (34, 2), (55, 2), (56, 1), (57, 2), (61, 2), (62, 1), (-94, 2), (0, 0)]:
        before = be.counts.rotations
        out = _authors_rotate(be, ct, step)
        assert be.counts.rotations - before == n, step
        assert np.array_equal(be.decrypt(out), np.roll(v, -step))


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
    with pytest.raises(ConvError, match="level limit"):
        be.bootstrap(sq)


def test_backend_levels_bootstrap_and_counts_by_level():
    be = he.SimulatedBackend(8, levels=3, usable=2)
    v = np.linspace(-1, 1, 8)
    ct = be.encrypt(v)
    with be.section("conv", "L1"):
        rots = be.rotate_many(ct, [0, 1, 2, 3, 1], hoist=True)
        assert set(rots) == {0, 1, 2, 3} and rots[0] is ct
        assert np.array_equal(be.decrypt(rots[3]), np.roll(v, -3))
        y = be.rescale(be.multiply_plain(ct, be.encode(v, ct)))
    assert (be.counts.rotations, be.counts.hoisted) == (1, 2)
    bl = be.counts.by_level
    assert bl[("conv", "L1", "rotation", 3)] == 1 and bl[("conv", "L1", "hoisted", 3)] == 2
    assert bl[("conv", "L1", "pmult", 3)] == 1 and bl[("conv", "L1", "rescale", 3)] == 1
    assert bl[("conv", "L1", "encode", 3)] == 1 and be.remaining(y) == 2
    y = be.rescale(be.multiply(y, y))
    y = be.rescale(be.multiply(y, y))
    assert be.remaining(y) == 0
    with pytest.raises(ConvError, match="out of levels"):
        be.rescale(be.multiply(y, y))
    with be.section("bootstrap", "here"):
        z = be.bootstrap(y, data_slots=4)
    assert be.remaining(z) == 2 and np.array_equal(be.decrypt(z), be.decrypt(y))
    assert be.counts.bootstraps == 1 and bl[("bootstrap", "here", "bootstrap", 4)] == 1
    assert be.rotate_many(ct, [1, 2], hoist=False) and be.counts.hoisted == 2  # unhoisted: rotations
    diff = be.counts - he.Counts()
    assert diff.by_level == be.counts.by_level and diff.rotations == be.counts.rotations


def test_plaintext_cache_encodes_once():
    be = he.SimulatedBackend(8)
    ct = be.encrypt(np.ones(8))
    be.cache_plaintexts = True
    a = be.encode(np.arange(8.0), ct)
    b = be.encode(np.arange(8.0), ct)
    c = be.encode(np.arange(8.0), ct, for_add=True)
    assert a is b and c is not a and be.counts.encodes == 2


@pytest.mark.parametrize("degree", [1, 3, 5, 7, 9, 15, 27])
def test_eval_odd_depth_and_values(degree):
    rng = np.random.default_rng(degree)
    c = np.zeros(degree + 1)
    c[1::2] = rng.uniform(-1, 1, (degree + 1) // 2)
    be = he.SimulatedBackend(16)
    x = np.linspace(-1, 1, 16)
    y = he.eval_odd(be, be.encrypt(x), c)
    assert y.level == odd_depth(degree) == int(np.ceil(np.log2(degree + 1)))
    assert np.abs(be.decrypt(y) - eval_odd_plain(x, c)).max() < 1e-12


def test_composite_relu_depth_and_counts():
    polys = he.sign_polys(bound=4.0)
    assert [len(p) - 1 for p in polys] == [15, 15, 27]
    be = he.SimulatedBackend(16)
    x = np.linspace(-4, 4, 16)
    y = he.composite_relu(be, be.encrypt(x), polys)
    assert y.level == composite_depth(polys) == 4 + 4 + 5 + 1
    assert (be.counts.cmults, be.counts.pmults) == (10 + 10 + 17 + 1, 8 + 8 + 14)
    assert np.abs(be.decrypt(y) - composite_relu_plain(x, polys)).max() < 1e-12
    assert np.abs(composite_relu_plain(np.array([-4.0, 4.0]), polys) - [0, 4]).max() < 1e-6
    f1 = sign_poly(1)  # (3x - x^3) / 2
    assert np.allclose(f1, [0, 1.5, 0, -0.5])


def test_poly2_on_backend():
    be = he.SimulatedBackend(8)
    x = np.linspace(-1, 1, 8)
    y = he.poly2(be, be.encrypt(x))
    assert y.level == 2 and np.abs(be.decrypt(y) - poly2_plain(x)).max() < 1e-15


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
        (dict(distinct=3), "distinct=3"),
        (dict(distinct=0), "distinct=0"),
        (dict(distinct=8, scheme="multiplexed"), "distinct=8"),
        (dict(x=(1, 3, 16, 16), distinct=16, slots=2**10, gap=2), "distinct=16 needs 16 gap cells"),
        (dict(scheme="multiplexed", variant="fast"), "fast"),
    ],
)
def test_bad_input_raises_conv_error(kwargs, match):
    kw = dict(x=(1, 3, 32, 32), w=(4, 3, 3, 3), scheme="ca", slots=2**12)
    kw.update(kwargs)
    x = np.zeros(kw.pop("x"))
    w = np.zeros(kw.pop("w"))
    with pytest.raises(ConvError, match=match):
        he.conv2d(x, w, **kw)


def test_bad_layouts_backends_and_polynomials():
    with pytest.raises(ConvError, match="levels=0"):
        he.SimulatedBackend(8, levels=0)
    with pytest.raises(ConvError, match="usable=5"):
        he.SimulatedBackend(8, levels=3, usable=5)
    with pytest.raises(ConvError, match="sub_blocks=1"):
        make_layout("MP", 8, 4, 4, 2**10, 1, sub_blocks=1)
    with pytest.raises(ConvError, match="distinct=4 applies to the CA layout only"):
        make_layout("RA", 8, 4, 4, 2**10, distinct=4)
    be = he.SimulatedBackend(2**10)
    lay = make_layout("CA", 8, 4, 4, 2**10, 1)
    x = EncTensor(lay, [be.encrypt(v) for v in pack(lay, np.ones((8, 4, 4)))])
    with pytest.raises(ConvError, match="cannot drop channels"):
        he.ca_relayout(be, x, he.with_distinct(make_layout("CA", 4, 4, 4, 2**10), 4))
    with pytest.raises(ConvError, match="cannot relayout"):
        he.ca_relayout(be, x, make_layout("CA", 8, 4, 4, 2**10, 2))
    with pytest.raises(ConvError, match="MP"):
        he.mp_downsample(be, x)
    mp = make_layout("MP", 3, 4, 4, 2**10, 1)
    with pytest.raises(ConvError, match="even map and channel count"):
        he.mp_downsample(be, EncTensor(mp, [be.encrypt(pack(mp, np.ones((3, 4, 4)))[0])]))
    with pytest.raises(ConvError, match="not odd"):
        he.eval_odd(be, x.cts[0], [1.0, 1.0])
    with pytest.raises(ConvError, match="degrees must be odd"):
        he.sign_polys((15, 4))
    with pytest.raises(ConvError, match="bound"):
        he.sign_polys(bound=0)
