"""Where the time of the built-in cnn goes, dense vs `ln-structured 0.5 --compact` (issue 8).

Why the compaction's 3.8x fewer multiply-adds give under 2x lower latency at batch 32 on 1x8x8
inputs: per layer medians of both models with each layer's work ratio (multiply-adds of a
convolution or linear layer, elements read by the others), the speedup the compaction could
give at most if every layer's time fell in proportion to its work, then the whole forward in
four forms (as trained in NCHW, channels_last, torch.jit.optimize_for_inference: frozen,
conv-bn folded, oneDNN prepacked weights, and torch.compile: inductor's generated C++, about
15 s to compile both). All ratios come from this one process with the same threads; the load
average is printed, run it when the machine is quiet. The cnn trains on digits (1x8x8); a SHAPE
such as 3x32x32 trains it on synthetic images of that shape instead, to see how the floor moves
with the input size.

    .venv/bin/python bench/bench_prune_layers.py [THREADS] [SHAPE]
"""

from __future__ import annotations

import copy
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ptool.core import checkpoint as ckpt_io
from ptool.core.benchmark import time_calls
from ptool.core.config import TrainConfig
from ptool.core.engine import fit
from ptool.core.prune import PruneOptions, prune_checkpoint
from ptool.core.restore import model_from_checkpoint

RUNS = 300
BATCH = 32


def paired_us(a: Callable[[], object], b: Callable[[], object]) -> tuple[float, float]:
    """Median microseconds of two calls timed as ptool's reports time models, in turns."""
    with torch.inference_mode():
        timed = time_calls({"a": a, "b": b}, runs=RUNS, warmup=20)
    return timed["a"].median * 1e3, timed["b"].median * 1e3


def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaf modules in forward order (the built-in cnn is sequential), then the head."""
    named = []
    for i, block in enumerate(model.body):
        children = list(block.named_children()) or [("", block)]
        named += [(f"body.{i}.{name}".rstrip("."), module) for name, module in children]
    return [*named, ("head", model.head)]


def work(layer: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Multiply-adds of a convolution or linear layer; elements read by any other layer."""
    if isinstance(layer, nn.Conv2d):
        return y.numel() * layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    if isinstance(layer, nn.Linear):
        return y.numel() * layer.in_features
    return x.numel()


Row = tuple[str, str, float, float, int, int]  # name, kind, dense us, pruned us, both works


def per_layer(dense: nn.Module, pruned: nn.Module, x: torch.Tensor) -> list[Row]:
    """Each layer of both models on its own input, timed in turns."""
    rows, dense_x, pruned_x = [], x, x
    with torch.inference_mode():
        for (name, a), (_, b) in zip(layers(dense), layers(pruned), strict=True):
            a_us, b_us = paired_us(lambda: a(dense_x), lambda: b(pruned_x))  # noqa: B023
            dense_y, pruned_y = a(dense_x), b(pruned_x)
            works = work(a, dense_x, dense_y), work(b, pruned_x, pruned_y)
            rows.append((name, type(a).__name__, a_us, b_us, *works))
            dense_x, pruned_x = dense_y, pruned_y
    return rows


def bound(label: str, rows: list[Row]) -> str:
    """The layers' total time, and the most a compaction could give (Amdahl): each dense
    layer's time divided by its own work ratio."""
    dense_us = sum(row[2] for row in rows)
    pruned_us = sum(row[3] for row in rows)
    ideal_us = sum(a * work_b / work_a for _, _, a, _, work_a, work_b in rows)
    return (
        f"{label}: {dense_us:.1f} -> {pruned_us:.1f} us = {dense_us / pruned_us:.2f}x; if each "
        f"layer's time fell with its work: {dense_us / ideal_us:.2f}x at most"
    )


def frozen(model: nn.Module, x: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch.jit's deprecation notes
        warnings.simplefilter("ignore")
        return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x)))


def main() -> None:
    if len(sys.argv) > 1:
        torch.set_num_threads(int(sys.argv[1]))
    shape = sys.argv[2] if len(sys.argv) > 2 else "1x8x8"
    data = {} if shape == "1x8x8" else {"data": "synthetic", "shape": shape, "samples": 256}
    load = os.getloadavg()[0]
    threads = torch.get_num_threads()
    print(
        f"torch {torch.__version__}, {threads} threads, load average {load:.2f}, batch {BATCH}, "
        f"{data.get('data', 'digits')} {shape}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = TrainConfig(seed=0, epochs=1, batch_size=BATCH, out=str(root / "cnn"),
                             tensorboard=False, progress="off", **data)  # fmt: skip
        fit(config, quiet=True)
        options = PruneOptions(method="ln-structured", amount=0.5, compact=True, evaluate=False,
                               bench_runs=1, output=str(root / "pruned.pt"))  # fmt: skip
        prune_checkpoint(root / "cnn" / "last.pt", options, quiet=True)
        dense, pruned = (
            model_from_checkpoint(ckpt_io.load_checkpoint(path)).eval()
            for path in (root / "cnn" / "last.pt", root / "pruned.pt")
        )
    sizes = [int(size) for size in shape.split("x")]
    x = torch.randn(BATCH, *sizes, generator=torch.Generator().manual_seed(0))

    print(f"\n{'layer':<14}{'kind':<20}{'dense us':>10}{'pruned us':>11}{'ratio':>8}{'work':>8}")
    rows = per_layer(dense, pruned, x)
    for name, kind, a, b, work_a, work_b in rows:
        print(f"{name:<14}{kind:<20}{a:>10.1f}{b:>11.1f}{a / b:>7.2f}x{work_a / work_b:>7.2f}x")
    print(bound("sum of layers", rows))
    last = torch.channels_last  # on copies: Module.to(memory_format=) converts in place
    dense_cl, pruned_cl = (copy.deepcopy(m).to(memory_format=last) for m in (dense, pruned))
    x_cl = x.contiguous(memory_format=last)
    print(bound("the same in channels_last", per_layer(dense_cl, pruned_cl, x_cl)))

    print(f"\n{'whole forward':<44}{'dense us':>10}{'pruned us':>11}{'ratio':>8}")
    forms = {
        "as trained (NCHW)": (dense, pruned, x),
        "channels_last": (dense_cl, pruned_cl, x_cl),
        "jit.optimize_for_inference (frozen, folded)": (frozen(dense, x), frozen(pruned, x), x),
        # inductor's generated C++, compiled at the first (warm-up) call
        "torch.compile (inductor)": (torch.compile(dense), torch.compile(pruned), x),
    }
    for name, (a_model, b_model, inputs) in forms.items():
        a, b = paired_us(lambda: a_model(inputs), lambda: b_model(inputs))  # noqa: B023
        print(f"{name:<44}{a:>10.1f}{b:>11.1f}{a / b:>7.2f}x")


if __name__ == "__main__":
    main()
