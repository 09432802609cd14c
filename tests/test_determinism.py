"""Algorithms registered deterministic=True: one bitwise class over threads x SIMD target.

Each configuration (NUMBA_NUM_THREADS in {1, 2} x NUMBA_CPU_NAME in {generic, host}) runs in
its own subprocess with its own Numba cache directory per CPU name.
"""

import numpy as np
import pytest

import convolab
from convolab import reference
from convolab.numerics import determinism
from convolab.spec import ConvSpec

DETERMINISTIC = [a.name for a in convolab.list_algorithms() if a.deterministic]


@pytest.fixture(scope="module")
def measurement():
    return determinism.measure_convolab(determinism.SMALL_LAYERS, DETERMINISTIC, timeout=600)


def test_children_ran_the_configurations(measurement):
    got = {(i["cpu_name"], i["threads"]) for i in measurement.info.values()}
    assert got == {("generic", 1), ("generic", 2), ("host", 1), ("host", 2)}
    caches = {i["cpu_name"]: i["cache_dir"] for i in measurement.info.values()}
    assert caches["generic"] != caches["host"]


def test_every_deterministic_algorithm_gives_one_class(measurement):
    assert "direct" in DETERMINISTIC
    expected = set()
    for lname, case in determinism.SMALL_LAYERS.items():
        x, w, kw = determinism.layer_data(case)
        spec = ConvSpec.from_arrays(x, w, None, **kw)
        expected |= {(n, lname) for n in DETERMINISTIC if convolab.registry.get(n).supports(spec) is None}
    assert {(c.source, c.layer) for c in measurement.cases} == expected
    for c in measurement.cases:
        assert len(c.outputs) == 4
        if convolab.registry.get(c.source).cpu_invariant:  # one class over targets and threads
            assert c.n_classes == 1, f"{c.source} on {c.layer}: classes {c.classes}"
            assert c.min_bits == 23
        else:  # one class per target
            for cpu in ("generic", "host"):
                outs = [v for k, v in c.outputs.items() if cpu in k]
                assert len(outs) == 2 and all(np.array_equal(o, outs[0]) for o in outs), cpu


def test_stated_invariances():
    # what each CPU algorithm states (tested above and in test_algorithms); the microkernel
    # algorithms are the ones that hold across CPUs
    stated = {a.name: (a.deterministic, a.cpu_invariant, a.batch_invariant) for a in convolab.list_algorithms()}
    assert stated["direct"] == stated["im2win"] == (True, True, True)
    assert stated["fft"] == (False, False, False)
    assert stated["im2col"] == (False, False, True)
    assert all(not cpu or det for det, cpu, _ in stated.values())


def test_outputs_are_the_convolution(measurement):
    # the bytes compared are a correct result, not e.g. an untouched buffer
    for c in measurement.cases:
        x, w, kw = determinism.layer_data(determinism.SMALL_LAYERS[c.layer])
        ref = reference.conv2d(x, w, **kw)
        y = next(iter(c.outputs.values()))
        scale = reference.magnitude(x, w, **kw)
        assert reference.errors(y, ref, scale)["normwise"] < 1e-5


def test_case_result_counts_classes_and_bits():
    a = np.array([1.0, 2.0], dtype=np.float32)
    b = a.copy()
    b[1] = np.float32(2.5)  # 2.0 = 1.0b x 2, 2.5 = 1.01b x 2: one leading mantissa bit shared
    case = determinism.CaseResult("src", "layer", {"p": a, "q": a.copy(), "r": b})
    assert case.classes == [["p", "q"], ["r"]] and case.n_classes == 2
    assert case.min_bits == 1
    m = determinism.Measurement([case], {})
    assert m.case("src", "layer") is case
    with pytest.raises(KeyError):
        m.case("src", "other")


def test_short_labels():
    labels = ["torch AVX2 T=1", "torch AVX2 T=2", "torch AVX512_CORE T=1"]
    assert determinism.short_labels(labels) == "AVX2 T=1,2 + AVX512_CORE T=1"
    assert determinism.short_labels(["numba generic T=2"]) == "generic T=2"
