"""The bench runner's interleaved timing."""

import time

from convolab.bench import runner


def test_time_interleaved_rotates_and_keeps_each_minimum(monkeypatch):
    monkeypatch.setattr(runner, "BURST_SETTLE_SECONDS", 0)
    order = []
    durations = {"a": 0.012, "b": 0.002, "c": 0.006}

    def make(name):
        def f():
            order.append(name)
            time.sleep(durations[name])
        return f

    best = runner.time_interleaved({n: make(n) for n in durations}, repeat=3, rounds=3, min_total=0)
    # one call per implementation per round, each round starting one later
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    for n, d in durations.items():
        assert d <= best[n] < d + 0.004
    assert best["b"] < best["c"] < best["a"]


def test_time_interleaved_takes_the_fastest_round(monkeypatch):
    monkeypatch.setattr(runner, "BURST_SETTLE_SECONDS", 0)
    calls = {"n": 0}

    def slow_first_round():
        calls["n"] += 1
        time.sleep(0.02 if calls["n"] <= 2 else 0.001)

    best = runner.time_interleaved({"x": slow_first_round}, repeat=6, rounds=3, min_total=0)
    assert calls["n"] == 6
    assert best["x"] < 0.015
