"""The bench runner's interleaved timing, on a fake clock: each fake implementation advances
it by its duration, so the assertions are exact and no test sleeps."""

import pytest

from convolab import _timing
from convolab.bench import runner


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(_timing, "clock", lambda: now[0])
    monkeypatch.setattr(runner, "BURST_SETTLE_SECONDS", 0)
    return now


def test_time_interleaved_rotates_and_keeps_each_minimum(clock):
    order = []
    durations = {"a": 0.012, "b": 0.002, "c": 0.006}

    def make(name):
        def f():
            order.append(name)
            clock[0] += durations[name] * (2 if len(order) <= 3 else 1)  # the first round slower
        return f

    best = runner.time_interleaved({n: make(n) for n in durations}, repeat=3, rounds=3, min_total=0)
    # one call per implementation per round, each round starting one later
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert best == pytest.approx(durations)


def test_time_interleaved_takes_the_fastest_round(clock):
    calls = {"n": 0}

    def slow_first_round():
        calls["n"] += 1
        clock[0] += 0.02 if calls["n"] <= 2 else 0.001

    best = runner.time_interleaved({"x": slow_first_round}, repeat=6, rounds=3, min_total=0)
    assert calls["n"] == 6
    assert best["x"] == pytest.approx(0.001)


def test_min_total_adds_calls_until_the_time_is_spent(clock):
    calls = {"n": 0}

    def f():
        calls["n"] += 1
        clock[0] += 0.01

    assert _timing.time_min(f, repeat=2, min_total=0.05) == pytest.approx(0.01)
    assert calls["n"] == 5  # two asked for, three more until 0.05 s were spent
