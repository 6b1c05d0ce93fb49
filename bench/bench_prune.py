"""Dense vs pruned, each pair measured in this one process with the same threads.

Goals (issue 8):
- `--method ln-structured --amount 0.5 --compact` on the built-in cnn: >= 2.5x lower CPU latency
  at batch 32 (ratio in one run, models taking turns call by call), and after
  `--finetune-epochs 3` on digits an accuracy drop <= 1 point.
- Contrast: l1-unstructured at the same amount leaves the dense kernels as slow as before.
- bn-scale (channels ranked by their batch-norm scale, Network Slimming) at the same amount:
  the same compacted shapes, so the same latency; the accuracy after pruning and fine-tuning.

The cnn trains on digits (1x8x8) at --batch-size 32, so the report's latency is at batch 32.
Inputs that small make a forward pass cheap, so fixed per-layer overhead weighs more; a wider
cnn (--channels 64,128) is measured as well. Other processes on the machine skew latency: the
load average is printed; run it when the machine is quiet.

    .venv/bin/python bench/bench_prune.py [THREADS]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

from ptool.core.config import TrainConfig
from ptool.core.engine import fit
from ptool.core.prune import PruneOptions, prune_checkpoint

RUNS = 200


def train(root: Path, name: str, **values) -> Path:
    config = TrainConfig(
        seed=0, out=str(root / name), tensorboard=False, progress="off", batch_size=32, **values
    )
    fit(config, quiet=True)
    return root / name / "best.pt"


def show(name: str, report: dict) -> None:
    latency, metrics = report["latency"], report["metrics"]
    before = metrics["before"]["val/accuracy"]
    pruned = metrics["after_pruning"]["val/accuracy"]
    tuned = metrics["after_finetune"]
    final = tuned["val/accuracy"] if tuned else pruned
    params = report["parameters"]
    fewer = params["before"]["parameters"] / params["after"]["parameters"]
    print(
        f"{name:<58} batch {latency['batch_size']}: {latency['before_ms']:.3f} -> "
        f"{latency['after_ms']:.3f} ms = {latency['speedup']:.2f}x  params {fewer:.2f}x fewer"
        f"  accuracy {before:.2%} -> {pruned:.2%} pruned"
        + (f" -> {final:.2%} fine-tuned" if tuned else "")
        + f" ({(final - before) * 100:+.2f} points)",
        flush=True,
    )


def main() -> None:
    if len(sys.argv) > 1:  # thread count, e.g. 1 when other processes keep the cores busy
        torch.set_num_threads(int(sys.argv[1]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}, median of {RUNS} runs")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for label, values in (("cnn", {}), ("cnn --channels 64,128", {"channels": [64, 128]})):
            ckpt = train(root, label.replace(" ", "_"), **values)
            cases = (
                ("ln-structured 0.5 --compact", {"method": "ln-structured", "compact": True}),
                ("ln-structured 0.5 --compact --recalibrate-bn 20",
                 {"method": "ln-structured", "compact": True, "recalibrate_bn": 20}),
                ("ln-structured 0.5 --compact, 3 fine-tune epochs",
                 {"method": "ln-structured", "compact": True, "finetune_epochs": 3}),
                ("bn-scale 0.5 --compact", {"method": "bn-scale", "compact": True}),
                ("bn-scale 0.5 --compact, 3 fine-tune epochs",
                 {"method": "bn-scale", "compact": True, "finetune_epochs": 3}),
                ("l1-unstructured 0.5", {"method": "l1-unstructured"}),
            )  # fmt: skip
            for name, options in cases:
                overrides = {"tensorboard": False, "progress": "off"}
                if options.get("finetune_epochs"):
                    overrides["out"] = str(root / label / name.replace(" ", "_"))
                report = prune_checkpoint(
                    ckpt,
                    PruneOptions(
                        amount=0.5,
                        bench_runs=RUNS,
                        output=str(root / "pruned.pt"),
                        train_overrides=overrides if options.get("finetune_epochs") else {},
                        **options,
                    ),
                    quiet=True,
                )
                show(f"{label}: {name}", report)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
