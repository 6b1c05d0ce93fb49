"""ptool's training loop vs the hand-written five-step loop, same model, data, batch and seed.

The baseline is what a PyTorch user writes: a DataLoader over the dataset, then
zero_grad / forward / loss / backward / step. ptool's figure is `fit()`'s own training time
(validation, checkpoints and TensorBoard excluded, as the baseline has none). Two cases:
- in-memory data (digits, the default run, and synthetic 3x32x32 images): ptool serves
  batches by indexing, the baseline collates samples one by one (goal: ratio >= 1.0);
- per-sample data (an augmenting dataset) through a real DataLoader on both sides, with the
  same worker count (goal: ratio >= 0.97).
With --device cuda it also compares bf16 autocast + channels_last against fp32 on
torchvision:resnet18 over synthetic 3x224x224 data (goal: >= 2x samples/s).

    python bench/bench_train.py [--device cpu|cuda] [--epochs N] [--repeats R]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from ptool.core.config import TrainConfig
from ptool.core.data import build_data, make_loader
from ptool.core.data.loader import default_num_workers
from ptool.core.engine import fit
from ptool.core.models import build_model
from ptool.core.optim import build_optimizer
from ptool.core.runtime import Distributed, epoch_order, seed_everything


def hand_written(
    config: TrainConfig, bundle, device: torch.device, *, same_batches: bool = False
) -> float:
    """Samples/s of the five-step loop over a shuffling DataLoader (training time only).

    `same_batches`: over ptool's own batch source instead, so the ratio isolates the loop.
    """
    seed_everything(config.seed)
    model = build_model(config, bundle.info).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    workers = default_num_workers(bundle.train)
    loader = DataLoader(
        bundle.train,
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),
    )
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
    model.train()
    seen, start = 0, time.perf_counter()
    for epoch in range(config.epochs):
        if same_batches:
            order = epoch_order(
                len(bundle.train), seed=config.seed, epoch=epoch, shuffle=True, info=Distributed()
            )
            loader = make_loader(bundle.train, config, order, train=True, device=device)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def ptool_loop(config: TrainConfig, bundle) -> float:
    with tempfile.TemporaryDirectory() as out:
        summary = fit(config.replace(out=out), data=bundle, quiet=True, progress=False)
    return summary.samples_per_s


def compare(
    name: str, config: TrainConfig, repeats: int, device: torch.device, same_batches=False
) -> float:
    """Interleaved pairs (a load burst hits both sides alike); the median pair's ratio."""
    bundle = build_data(config)
    pairs = []
    for _ in range(repeats):
        hand = hand_written(config, bundle, device, same_batches=same_batches)
        pairs.append((hand, ptool_loop(config, bundle)))
    hand, ours = statistics.median(h for h, _ in pairs), statistics.median(o for _, o in pairs)
    ratio = statistics.median(o / h for h, o in pairs)
    print(
        f"{name}: hand-written {hand:,.0f} samples/s, ptool {ours:,.0f} samples/s "
        f"-> ratio {ratio:.2f} (median of {repeats} interleaved pairs)"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=2, help="of the synthetic cases")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    base = TrainConfig(
        data="synthetic",
        shape="3x32x32",
        samples=4096,
        model="cnn",
        batch_size=64,
        epochs=args.epochs,
        seed=0,
        device=args.device,
        tensorboard=False,
        save_top_k=0,
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    digits = TrainConfig(
        model="cnn", epochs=3, seed=0, device=args.device, tensorboard=False, save_top_k=0
    )
    compare("in-memory data, the default run (cnn, digits)", digits, args.repeats, device)
    compare("in-memory data (cnn, 3x32x32)", base, args.repeats, device)
    tiny = base.replace(shape="32", samples=20000, model="mlp", hidden=[64], epochs=3)
    compare(
        "loop overhead only: same batch source, tiny mlp (32 features)",
        tiny,
        args.repeats,
        device,
        same_batches=True,
    )
    compare(
        "per-sample DataLoader (cnn, 3x32x32, flip augmentation)",
        base.replace(augment=["flip"]),
        args.repeats,
        device,
    )
    if device.type != "cuda":
        print("bf16 + channels_last vs fp32 on resnet18: needs --device cuda (skipped)")
        return
    big = base.replace(
        shape="3x224x224", samples=2048, model="torchvision:resnet18", batch_size=128, epochs=1
    )
    bundle = build_data(big)
    fast_config = big.replace(precision="bf16", channels_last=True)
    ptool_loop(big, bundle)  # discarded: stages the data on the GPU, sets up cuDNN and cuBLAS
    pairs = [
        (ptool_loop(big, bundle), ptool_loop(fast_config, bundle)) for _ in range(args.repeats)
    ]
    fp32, fast = (statistics.median(p[i] for p in pairs) for i in (0, 1))
    ratio = statistics.median(b / a for a, b in pairs)
    print(
        f"resnet18 3x224x224: fp32 {fp32:,.0f} samples/s, bf16 + channels_last "
        f"{fast:,.0f} samples/s -> {ratio:.2f}x (median of {args.repeats} pairs after a warm-up)"
    )


if __name__ == "__main__":
    main()
