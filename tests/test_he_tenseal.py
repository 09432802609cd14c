"""convolab.he on real CKKS (TenSEAL / SEAL, ring dimension 2^13): every scheme and layout vs
the reference, the per-operation timer behind the latency model, and ``he-bench --mode ops``.

Skipped only where TenSEAL (the ``he`` extra, also in the ``test`` extra) is not installed.
"""

import json

import numpy as np
import pytest

pytest.importorskip("tenseal")

from convolab import ConvError, he, reference  # noqa: E402
from convolab.cli import main  # noqa: E402
from convolab.he.layout import make_layout, pack, unpack  # noqa: E402
from convolab.he.tenseal_backend import TIMED_OPERATIONS, measure_operations  # noqa: E402


@pytest.fixture(scope="module")
def backend():
    return he.get_backend("tenseal", 2**12)  # N = 2^13, modulus 60+40+40+60 bits


#: (Cin, Cout, H, R, stride, gap): 3x3 and 1x1, stride 1 and 2; 70 channels of 4x4 make
#: several CA ciphertexts (and do not fit one multiplexed ciphertext)
CASES = [(3, 4, 8, 3, 1, 1), (4, 6, 8, 3, 2, 1), (6, 5, 8, 1, 1, 2)]
SCHEME_CASES = [(s, c, None) for s in ("ca", "ra", "multiplexed") for c in CASES] + [
    ("ca", (70, 3, 4, 3, 1, 1), None), ("ra", (3, 70, 4, 3, 1, 1), None),
    ("multiplexed", (8, 3, 4, 3, 1, 1), None),
    # replicated CA (m < 64 blocks of 64 slots) and 2D gap packing (16x16 grid: 16 blocks, m > 16)
    ("ca", (9, 4, 8, 3, 1, 1), 4), ("ra", (4, 9, 8, 3, 1, 1), 4),
    ("ca", (40, 3, 8, 3, 1, 2), 32), ("ra", (3, 40, 8, 3, 1, 2), 64), ("ra", (3, 12, 8, 3, 2, 1), 32),
]


@pytest.mark.parametrize(
    "scheme,case,m", SCHEME_CASES,
    ids=[s + "-C{}K{}_{}_r{}s{}g{}".format(*c) + (f"_m{m}" if m else "") for s, c, m in SCHEME_CASES])
def test_tenseal_matches_reference(backend, scheme, case, m):
    Cin, Cout, H, R, stride, gap = case
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (1, Cin, H, H))
    w = rng.uniform(-1, 1, (Cout, Cin, R, R))
    kw = dict(stride=stride, gap=gap, distinct=m, hoist=scheme == "ca")
    r = he.conv2d(x, w, scheme=scheme, backend=backend, **kw)
    ref = reference.conv2d(x, w, stride=stride, padding=(R - 1) // 2)
    assert np.abs(r.output - ref).max() <= 1e-3 * np.abs(ref).max()
    sim = he.conv2d(x, w, scheme=scheme, backend="simulated", slots=2**12, **kw)
    assert (r.rotations, r.hoisted, r.pmults, r.depth) == (sim.rotations, sim.hoisted, sim.pmults, sim.depth)
    assert "tenseal" in r.backend and r.seconds > 0


def test_tenseal_backend_interface(backend):
    S = backend.slots
    v = np.linspace(-1, 1, S)
    ct = backend.encrypt(v)
    assert np.abs(backend.decrypt(backend.rotate(ct, 5)) - np.roll(v, -5)).max() < 1e-5
    # the degree-2 activation: PMult, CMult with relinearisation, add_plain, two rescales
    y = he.poly2(backend, ct, (0.25, 0.5, 0.125))
    assert y.level == 2 and backend.remaining(y) == 0
    assert np.abs(backend.decrypt(y) - (0.25 + 0.5 * v + 0.125 * v * v)).max() < 1e-4
    with pytest.raises(ConvError, match="depth=2|levels=2"):  # the modulus chain is used up
        backend.rescale(backend.multiply_plain(y, backend.encode(v, y)))
    with pytest.raises(ConvError, match="no CKKS bootstrapping"):
        backend.bootstrap(ct)


def test_tenseal_rejects_insecure_parameters():
    with pytest.raises(ConvError, match="slots=1024"):
        he.get_backend("tenseal", 2**10)
    with pytest.raises(ConvError, match="modulus_bits"):
        he.get_backend("tenseal", 2**12, modulus_bits=[60, 60])


def test_tenseal_ra_then_ca_chain(backend):
    """RAConv (replicated output) -> CAConv on real CKKS: the layouts chain (depth 2)."""
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (3, 8, 8))
    w1 = rng.uniform(-1, 1, (4, 3, 3, 3))
    w2 = rng.uniform(-1, 1, (5, 4, 3, 3))
    lay = he.make_layout("RA", 3, 8, 8, backend.slots)
    enc = he.EncTensor(lay, [backend.encrypt(v) for v in he.pack(lay, x)])
    mid = he.ra_conv(backend, enc, w1, distinct=4)
    out = he.ca_conv(backend, mid, w2, stride=2)
    assert (mid.layout.kind, mid.layout.distinct, out.layout.kind, out.layout.gap) == ("CA", 4, "RA", 2)
    got = he.unpack(out.layout, [backend.decrypt(ct) for ct in out.cts])
    ref = reference.conv2d(reference.conv2d(x[None], w1, padding=1), w2, stride=2, padding=1)[0]
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()
    assert max(ct.level for ct in out.cts) == 2


def test_tenseal_shortcuts(backend):
    """The baseline's downsampling and a CA re-layout with rotations, on real CKKS."""
    rng = np.random.default_rng(6)
    x = rng.uniform(-1, 1, (8, 8, 8))
    mp = make_layout("MP", 8, 8, 8, backend.slots, 1, sub_blocks=8)
    out = he.mp_downsample(backend, he.EncTensor(mp, [backend.encrypt(pack(mp, x)[0])]))
    ref = np.zeros((16, 4, 4))
    ref[4:12] = x[:, ::2, ::2]
    assert np.abs(unpack(out.layout, [backend.decrypt(out.cts[0])]) - ref).max() < 1e-4
    ca = make_layout("CA", 8, 8, 8, backend.slots, 1, distinct=8)
    to = he.with_distinct(he.Layout("CA", 16, 4, 4, 2, 8, 8, backend.slots), 4)
    moved = he.ca_relayout(backend, he.EncTensor(ca, [backend.encrypt(v) for v in pack(ca, x)]), to, True)
    got = unpack(to, [None if c is None else backend.decrypt(c) for c in moved.cts])
    ref = np.zeros((16, 4, 4))
    ref[:8] = x[:, ::2, ::2]
    assert np.abs(got - ref).max() < 1e-4


def test_measure_operations_and_he_bench_ops(tmp_path, capsys):
    be = he.get_backend("tenseal", 2**12, modulus_bits=[51, 46, 46, 51], scale_bits=46)
    t = measure_operations(be, repeat=1)
    assert set(t) == set(TIMED_OPERATIONS)
    assert set(t["rotation"]) == {0, 1, 2} and set(t["pmult"]) == {1, 2} and 0 not in t["rescale"]
    assert all(v > 0 for op in t.values() for v in op.values())
    path = tmp_path / "costs.json"
    assert main(["he-bench", "--slots", "4096", "--levels", "2", "--repeat", "1",
                 "--json", str(path)]) == 0
    assert "hoisted" in capsys.readouterr().out
    table = he.CostTable.load(path)
    assert table.slots == 4096 and "he-bench --levels 2 --repeat 1" in table.source
    assert table.cost("rotation", 2) > 0 and table.cost("hoisted", 2) <= table.cost("rotation", 2)
    data = json.loads(path.read_text())
    assert data["modulus_bits"] == [51, 46, 46, 51]
