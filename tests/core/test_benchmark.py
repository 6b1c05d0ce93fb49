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
    while timing (its adaptive thresholds faulted a large model's activations in on every
    call) and to give the free memory back after."""
    told = []

    class Libc:
        def mallopt(self, option, value):
            told.append((option, value))

        def malloc_trim(self, pad):
            told.append(("trim", pad))

    monkeypatch.setattr(benchmark.sys, "platform", "linux")
    monkeypatch.setattr(benchmark.ctypes, "CDLL", lambda _name: Libc())
    order = []
    calls = {name: (lambda name=name: order.append((name, len(told)))) for name in "ab"}
    timed = benchmark.time_calls(calls, runs=3, warmup=1)
    assert [name for name, _ in order] == ["a", "b"] * 4 and set(timed) == {"a", "b"}
    assert told == [(-3, 32 * 1024 * 1024), (-1, 2**31 - 1), ("trim", 0)]  # M_MMAP_, M_TRIM_
    assert {seen for _, seen in order} == {2}  # every call between the options and the trim


def test_without_glibc_the_allocator_is_left_alone(monkeypatch):
    """Windows' ctypes.CDLL(None) raises TypeError, musl has no malloc_trim: timing goes on."""

    def windows(_name):
        raise TypeError("argument of type 'NoneType' is not iterable")

    monkeypatch.setattr(benchmark.sys, "platform", "linux")
    for cdll in (windows, lambda _name: object()):  # the second: no mallopt, no malloc_trim
        monkeypatch.setattr(benchmark.ctypes, "CDLL", cdll)
        assert set(benchmark.time_calls({"a": lambda: None}, runs=2, warmup=0)) == {"a"}
