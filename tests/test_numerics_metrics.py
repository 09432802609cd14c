"""Deviation metrics on hand-made cases with known answers."""

import numpy as np
import pytest

from convolab import ConvError
from convolab.numerics import metrics

f32 = np.float32
ONE_UP = np.nextafter(f32(1), f32(2))  # 1 + 2**-23
ONE_DOWN = np.nextafter(f32(1), f32(0))  # 1 - 2**-24 = 0x3f7fffff


def a32(*v):
    return np.array(v, dtype=f32)


def test_equivalence_classes_by_bytes():
    x = a32(1, 0, 3)
    outs = {"a": x, "b": x.copy(), "c": a32(1, -0.0, 3), "d": a32(1, 0, 3.0000002), "e": x + 0}
    assert metrics.equivalence_classes(outs) == [["a", "b", "e"], ["c"], ["d"]]
    assert metrics.class_count(outs) == 3
    # a sequence gives indices; dtype and shape are part of the identity
    seq = [x, x.astype(np.float64), x.reshape(1, 3), x[::-1].copy()[::-1]]
    assert metrics.equivalence_classes(seq) == [[0, 3], [1], [2]]
    assert metrics.equivalence_classes([]) == []


def test_remaining_bits_known_values():
    a = a32(1, 1, 1, 1, 1, 1, 0.0, np.nan, np.nan, 1, 3.0)
    b = np.array(
        [1, ONE_UP, 1.5, 1.25, 2, -1, -0.0, np.nan, 1, ONE_DOWN, 3.0 + 2**-21], dtype=f32
    )
    want = [23, 22, 0, 1, 0, 0, 23, 23, 0, 0, 21]
    assert metrics.remaining_bits(a, b).tolist() == want
    assert metrics.remaining_bits(b, a).tolist() == want  # symmetric
    # leading bits: 1.75 = 1.11b, 1.875 = 1.111b share two leading mantissa bits
    assert metrics.remaining_bits(a32(1.75), a32(1.875)).tolist() == [2]


def test_remaining_bits_other_widths():
    h = np.float16
    assert metrics.remaining_bits(np.array([1], h), np.array([1 + 2**-10], h)).tolist() == [9]
    d = np.array([1.0]), np.array([1.0 + 2**-52])
    assert metrics.remaining_bits(*d).tolist() == [51]
    assert metrics.mantissa_bits(np.float64) == 52


def test_bits_histogram():
    hist = metrics.bits_histogram([0, 23, 23, 5], np.float32)
    assert hist.shape == (24,)
    assert hist[0] == 1 and hist[5] == 1 and hist[23] == 2 and hist.sum() == 4


def test_ulp_distance_known_values():
    tiny = np.float32(np.finfo(f32).smallest_subnormal)
    big = np.finfo(f32).max
    a = a32(1, 0.0, tiny, 1, 1, np.nan, np.nan, np.inf, -1)
    b = np.array([ONE_UP, -0.0, -tiny, 2, ONE_DOWN, np.nan, 1, big, ONE_UP], dtype=f32)
    d = metrics.ulp_distance(a, b)
    assert d.dtype == np.int64
    assert d.tolist()[:8] == [1, 0, 2, 2**23, 1, 0, np.iinfo(np.int64).max, 1]
    # across zero: -1 to 1 + 2**-23 spans both half-lines
    assert d[8] == 2 * 0x3F800000 + 1


def test_l0_l2():
    assert metrics.l0(a32(1, 2, 0.0), a32(1, 3, -0.0)) == 2  # -0 has other bits
    assert metrics.l2(a32(3, 4), a32(0, 0)) == 5.0
    assert metrics.l2(a32(1, 2), a32(1, 2)) == 0.0


def test_reference_errors():
    e = metrics.reference_errors(a32(1, 2.5, -4), np.array([1.0, 2.0, -4.0]))
    assert e == {"max_abs": 0.5, "max_rel": 0.25, "normwise": 0.125}
    e = metrics.reference_errors(a32(1, 1e-3), np.array([1.0, 0.0]))
    assert e["max_rel"] == np.inf and e["max_abs"] == pytest.approx(1e-3)
    assert metrics.reference_errors(a32(), np.array([]))["max_abs"] == 0.0


def test_compare():
    a = a32(1, 2, 3, 4)
    b = a.copy()
    b[1] = np.nextafter(b[1], f32(3))
    c = metrics.compare(a, b)
    assert not c["identical"] and c["l0"] == 1 and c["max_ulp"] == 1
    assert c["min_bits"] == 22 and c["bits_histogram"][23] == 3
    assert c["mean_bits"] == pytest.approx((22 + 3 * 23) / 4)
    same = metrics.compare(a, a.copy())
    assert same["identical"] and same["l0"] == 0 and same["min_bits"] == 23


def test_mismatched_inputs_raise():
    with pytest.raises(ConvError, match="shapes"):
        metrics.remaining_bits(a32(1, 2), a32(1))
    with pytest.raises(ConvError, match="dtypes"):
        metrics.ulp_distance(a32(1), np.array([1.0]))
    with pytest.raises(ConvError, match="unsupported dtype"):
        metrics.l0(np.array([1]), np.array([1]))
