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
