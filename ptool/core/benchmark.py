"""Size and speed of a model, measured the same way for every before/after report.

Latency is the median of repeated forward passes after warm-up, in one process with the
same thread count for both models, so two figures taken here can be divided.
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import io
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import nn


def _saved(state_dict: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    return buffer.getvalue()


def serialized_bytes(state_dict: Mapping[str, Any]) -> int:
    """Bytes of `torch.save(state_dict)`: the file size of the weights saved alone."""
    return len(_saved(state_dict))


def compressed_bytes(state_dict: Mapping[str, Any]) -> int:
    """Bytes of the same file gzip-compressed: what zeros (unstructured pruning) save on disk."""
    return len(gzip.compress(_saved(state_dict)))


def _tensors(value: Any) -> Iterable[torch.Tensor]:
    """Every tensor in a state-dict value (packed quantized weights are tuples of tensors)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def param_bytes(state_dict: Mapping[str, Any]) -> int:
    """Bytes held by the state dict's tensors (weights, biases, buffers; int8 = 1 byte each)."""
    return sum(t.numel() * t.element_size() for v in state_dict.values() for t in _tensors(v))


class Latency(NamedTuple):
    """One model's timings in ms: the median call, and the interquartile range of the calls
    (how much a busy machine moved them)."""

    median: float
    spread: float


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def _glibc() -> Any:
    """The C library when it is glibc (mallopt and malloc_trim both there), else None: macOS,
    musl, Windows (where ctypes.CDLL(None) raises TypeError)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018  (musl has no malloc_trim)
    except (OSError, AttributeError, TypeError):
        return None
    return libc


@contextlib.contextmanager
def steady_allocator() -> Iterator[None]:
    """Memory freed by one timed call kept for the next. glibc's malloc, by its adaptive
    thresholds, may hand a model's freed activations back to the OS after each call and fault
    them in again on the next: a dense cnn on 3x32x32 images at batch 32 took 8.5-14 ms a call
    so, 3.5 ms with fixed thresholds, and a pruned model's smaller blocks escaped it, which made
    its speedup look 2.4x larger (PyTorch's CPU performance guide suggests jemalloc or tcmalloc
    for such reasons). Afterwards the free memory goes back to the OS (`malloc_trim`); the
    thresholds stay fixed for the process (glibc has no way back to its adaptive ones), so
    memory freed later is kept for reuse up to the process's peak. Only with glibc."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's largest: below, the heap
        libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # which is not trimmed after each call
    try:
        yield
    finally:
        if libc is not None:
            libc.malloc_trim(0)


@torch.no_grad()
def latency_ms(
    models: Mapping[str, nn.Module], example: torch.Tensor, *, runs: int = 20, warmup: int = 3
) -> dict[str, Latency]:
    """Wall time of `model(example)` per model, over `runs` calls after `warmup`."""
    for model in models.values():
        model.eval()
    calls = {name: partial(model, example) for name, model in models.items()}
    return time_calls(calls, runs=runs, warmup=warmup)


def time_calls(
    calls: Mapping[str, Callable[[], Any]], *, runs: int = 20, warmup: int = 3
) -> dict[str, Latency]:
    """Wall time of each call, over `runs` calls after `warmup`, with a `steady_allocator`.
    The calls take turns call by call, so a busy neighbour process slows all of them alike
    and their ratio stays meaningful."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    with steady_allocator():
        for call in calls.values():
            for _ in range(warmup):
                call()
        for _ in range(max(1, runs)):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: _latency(values) for name, values in times.items()}


def _latency(values: list[float]) -> Latency:
    if len(values) < 2:
        return Latency(values[0], 0.0)
    low, _, high = statistics.quantiles(values, n=4)
    return Latency(statistics.median(values), high - low)


def relative_spread(latencies: Iterable[Latency]) -> float:
    """The largest interquartile range as a fraction of its median: how far to trust a ratio
    of these medians (a few percent on a quiet machine; tens of percent on a busy one)."""
    return max((t.spread / t.median for t in latencies if t.median > 0), default=0.0)
