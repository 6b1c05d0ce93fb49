"""Gradient checkpointing (--grad-checkpoint): same losses, less activation memory.

A deep MLP trains a few SGD steps with and without checkpointing from the same weights. Two
measures of the memory the autograd graph holds after the forward pass (before backward):
- bytes of activations autograd saved for backward (torch.autograd.graph.saved_tensors_hooks;
  parameters excluded; the input each checkpointed segment keeps for recomputation is not
  seen by the hooks);
- the C allocator's bytes in use growth over the forward pass (glibc mallinfo2, which sees
  torch's CPU allocations, segment inputs included): the headline figure.
Prints the ratios plain / checkpointed and the largest loss difference.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time
from collections.abc import Callable

import torch

from ptool.core.config import TrainConfig
from ptool.core.data import DataInfo
from ptool.core.models import build_model

WIDTH, DEPTH, BATCH, FEATURES, STEPS, SEGMENTS = 1024, 16, 512, 256, 5, 4


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


@functools.cache  # find_library starts a process (2 ms), inside the timed steps
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2


def _malloc_in_use() -> int | None:
    """Bytes malloc has handed out (heap + mmapped blocks); None where glibc is absent."""
    mallinfo2 = _mallinfo2()
    if mallinfo2 is None:
        return None
    info = mallinfo2()
    return info.uordblks + info.hblkhd


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


def _run(segments: int, x, y, state) -> dict:
    config = TrainConfig(model="mlp", hidden=[WIDTH] * DEPTH, grad_checkpoint=segments)
    info = DataInfo("regression", [FEATURES], 1, None, None, None, None, None, BATCH, 0)
    model = build_model(config, info)
    model.load_state_dict(state)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    saved = _saved_bytes(model, x)
    losses, held = [], []
    start = time.perf_counter()
    for _ in range(STEPS):
        before = _malloc_in_use()
        loss = torch.nn.functional.mse_loss(model(x), y)
        after = _malloc_in_use()
        if before is not None:
            held.append(after - before)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    seconds = (time.perf_counter() - start) / STEPS
    return {"losses": losses, "saved": saved, "held": max(held) if held else None, "s": seconds}


def main() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(BATCH, FEATURES), torch.randn(BATCH, 1)
    config = TrainConfig(model="mlp", hidden=[WIDTH] * DEPTH)
    info = DataInfo("regression", [FEATURES], 1, None, None, None, None, None, BATCH, 0)
    state = {k: v.clone() for k, v in build_model(config, info).state_dict().items()}
    _mallinfo2()  # found before the first timed step
    plain = _run(0, x, y, state)
    ckpt = _run(SEGMENTS, x, y, state)
    diff = max(abs(a - b) for a, b in zip(plain["losses"], ckpt["losses"], strict=True))
    mib = 2**20
    print(f"deep MLP: {DEPTH} x Linear({WIDTH}) + BatchNorm1d + ReLU, batch {BATCH}, "
          f"{STEPS} SGD steps, --grad-checkpoint {SEGMENTS}")  # fmt: skip
    print(f"losses plain        {[round(v, 6) for v in plain['losses']]}")
    print(f"losses checkpointed {[round(v, 6) for v in ckpt['losses']]}")
    print(f"largest loss difference: {diff:.2e}")
    print(
        f"activations saved for backward: plain {plain['saved'] / mib:.1f} MiB, checkpointed "
        f"{ckpt['saved'] / mib:.1f} MiB -> {plain['saved'] / ckpt['saved']:.2f}x less"
    )
    if plain["held"] is not None:
        print(
            f"allocator growth over forward: plain {plain['held'] / mib:.1f} MiB, "
            f"checkpointed {ckpt['held'] / mib:.1f} MiB -> {plain['held'] / ckpt['held']:.2f}x less"
        )
    print(f"time per step: checkpointed / plain = {ckpt['s'] / plain['s']:.2f}x (recomputation)")


if __name__ == "__main__":
    main()
