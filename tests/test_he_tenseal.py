"""convolab.he on real CKKS (TenSEAL / SEAL, ring dimension 2^13): every scheme vs the reference.

Skipped only where TenSEAL (the ``he`` extra, also in the ``test`` extra) is not installed.
"""

import numpy as np
import pytest

pytest.importorskip("tenseal")

from convolab import ConvError, he, reference  # noqa: E402
from convolab.he.planner import _activation  # noqa: E402


@pytest.fixture(scope="module")
def backend():
    return he.get_backend("tenseal", 2**12)  # N = 2^13, modulus 60+40+40+60 bits


#: (Cin, Cout, H, R, stride, gap): 3x3 and 1x1, stride 1 and 2; 70 channels of 4x4 make
#: several CA ciphertexts (and do not fit one multiplexed ciphertext)
CASES = [(3, 4, 8, 3, 1, 1), (4, 6, 8, 3, 2, 1), (6, 5, 8, 1, 1, 2)]
SCHEME_CASES = [(s, c) for s in ("ca", "ra", "multiplexed") for c in CASES] + [
    ("ca", (70, 3, 4, 3, 1, 1)), ("ra", (3, 70, 4, 3, 1, 1)), ("multiplexed", (8, 3, 4, 3, 1, 1)),
]


@pytest.mark.parametrize(
    "scheme,case", SCHEME_CASES, ids=[s + "-C{}K{}_{}_r{}s{}g{}".format(*c) for s, c in SCHEME_CASES]
)
def test_tenseal_matches_reference(backend, scheme, case):
    Cin, Cout, H, R, stride, gap = case
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (1, Cin, H, H))
    w = rng.uniform(-1, 1, (Cout, Cin, R, R))
    r = he.conv2d(x, w, scheme=scheme, backend=backend, stride=stride, gap=gap)
    ref = reference.conv2d(x, w, stride=stride, padding=(R - 1) // 2)
    assert np.abs(r.output - ref).max() <= 1e-3 * np.abs(ref).max()
    sim = he.conv2d(x, w, scheme=scheme, backend="simulated", slots=2**12, stride=stride, gap=gap)
    assert (r.rotations, r.pmults, r.depth) == (sim.rotations, sim.pmults, sim.depth)
    assert "tenseal" in r.backend and r.seconds > 0


def test_tenseal_backend_interface(backend):
    S = backend.slots
    v = np.linspace(-1, 1, S)
    ct = backend.encrypt(v)
    assert np.abs(backend.decrypt(backend.rotate(ct, 5)) - np.roll(v, -5)).max() < 1e-5
    # the polynomial activation: PMult, CMult with relinearisation, add_plain, two rescales
    y = _activation(backend, he.EncTensor(None, [ct]), (0.25, 0.5, 0.125)).cts[0]
    assert y.level == 2
    assert np.abs(backend.decrypt(y) - (0.25 + 0.5 * v + 0.125 * v * v)).max() < 1e-4
    with pytest.raises(ConvError, match="depth=2"):  # the modulus chain is used up
        backend.rescale(backend.multiply_plain(y, backend.encode(v, y)))


def test_tenseal_rejects_insecure_parameters():
    with pytest.raises(ConvError, match="slots=1024"):
        he.get_backend("tenseal", 2**10)


def test_tenseal_ra_then_ca_chain(backend):
    """RAConv -> CAConv on real CKKS: the layouts chain without repacking (depth 2)."""
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (3, 8, 8))
    w1 = rng.uniform(-1, 1, (4, 3, 3, 3))
    w2 = rng.uniform(-1, 1, (5, 4, 3, 3))
    lay = he.make_layout("RA", 3, 8, 8, backend.slots)
    enc = he.EncTensor(lay, [backend.encrypt(v) for v in he.pack(lay, x)])
    mid = he.ra_conv(backend, enc, w1)
    out = he.ca_conv(backend, mid, w2, stride=2)
    assert (mid.layout.kind, out.layout.kind, out.layout.gap) == ("CA", "RA", 2)
    got = he.unpack(out.layout, [backend.decrypt(ct) for ct in out.cts])
    ref = reference.conv2d(reference.conv2d(x[None], w1, padding=1), w2, stride=2, padding=1)[0]
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()
    assert max(ct.level for ct in out.cts) == 2
