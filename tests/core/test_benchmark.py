"""The latency figures every before/after report shares."""

from __future__ import annotations

import statistics

import pytest
from torch import nn

from ptool.core import benchmark


def test_latency_is_the_median_with_its_interquartile_range(monkeypatch):
    clock = iter([0, 1, 0, 3, 0, 2, 0, 9, 0, 4])  # start/stop pairs: calls of 1, 3, 2, 9, 4 s
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: next(clock))
    timed = benchmark.latency_ms({"m": nn.Identity()}, None, runs=5, warmup=0)["m"]
    low, _, high = statistics.quantiles([1000.0, 3000.0, 2000.0, 9000.0, 4000.0], n=4)
    assert timed == (3000.0, high - low)
    assert benchmark.relative_spread([timed, benchmark.Latency(1.0, 0.1)]) == pytest.approx(
        (high - low) / 3000.0
    )
    assert benchmark.relative_spread([benchmark.Latency(2.0, 0.0)]) == 0.0


def test_calls_take_turns_with_a_steady_allocator(monkeypatch):
    """Call by call, so a busy neighbour slows both alike; glibc told to keep freed blocks
    (its adaptive thresholds faulted a large model's activations in on every call)."""
    set_options = []

    class Libc:
        def mallopt(self, option, value):
            set_options.append((option, value))

    monkeypatch.setattr(benchmark.ctypes, "CDLL", lambda _name: Libc())
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in "ab"}
    timed = benchmark.time_calls(calls, runs=3, warmup=1)
    assert order == ["a", "b", "a", "b", "a", "b", "a", "b"] and set(timed) == {"a", "b"}
    assert set_options == [(-3, 32 * 1024 * 1024), (-1, 2**31 - 1)]  # M_MMAP_, M_TRIM_THRESHOLD
