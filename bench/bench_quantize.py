"""fp32 vs int8, each pair measured in this one process with the same threads.

Goals (issue 7):
- dynamic, mlp --hidden 1024,1024 (1024 features): >= 4x lower latency at batch 64, >= 3.5x smaller
- static, cnn trained on digits and torchvision:resnet18 (synthetic): >= 3x lower latency at
  batch 32; accuracy drop <= 1 point on digits
- qat, cnn on digits: accuracy drop no worse than static's

resnet18 runs on 3x64x64 synthetic inputs (not 224x224): batch 32 at 224 px takes seconds per
forward on a 2-core machine. Other processes on the machine skew latency: the load average is
printed; run it when the machine is quiet.

    .venv/bin/python bench/bench_quantize.py [THREADS]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

from ptool.core.config import TrainConfig
from ptool.core.engine import fit
from ptool.core.quantize import QuantizeOptions, quantize_checkpoint

RUNS = 30


def train(root: Path, name: str, epochs: int, **values) -> Path:
    config = TrainConfig(
        seed=0, epochs=epochs, out=str(root / name), tensorboard=False, progress="off", **values
    )
    fit(config, quiet=True)
    return root / name / "last.pt"


def show(name: str, report: dict) -> None:
    ratios, change = report["ratios"], report["metrics_change"]
    accuracy = ""
    if change:
        fp32 = report["fp32"]["metrics"]["val/accuracy"]
        accuracy = f"  accuracy {fp32:.2%} -> change {change['val/accuracy'] * 100:+.2f} points"
    print(
        f"{name:<34} speedup batch 1 {ratios['speedup_batch_1']:5.2f}x  "
        f"batch {report['batch_size']} {ratios['speedup_batch_n']:5.2f}x  "
        f"size {ratios['size']:4.2f}x{accuracy}",
        flush=True,
    )


def main() -> None:
    if len(sys.argv) > 1:  # thread count, e.g. 1 when other processes keep the cores busy
        torch.set_num_threads(int(sys.argv[1]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}, median of {RUNS} runs")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mlp = train(
            root, "mlp", 1, data="synthetic", shape="1024", samples=256, model="mlp",
            hidden=[1024, 1024], batch_size=64,
        )  # fmt: skip
        options = QuantizeOptions("dynamic", evaluate=False, bench_runs=RUNS)
        report = quantize_checkpoint(mlp, options)
        show("dynamic  mlp 1024,1024", report)

        cnn = train(root, "cnn", 5, data="digits", model="cnn", batch_size=32)
        static = quantize_checkpoint(cnn, QuantizeOptions("static", bench_runs=RUNS))
        show("static   cnn, digits", static)
        qat = quantize_checkpoint(
            cnn,
            QuantizeOptions(
                "qat",
                bench_runs=RUNS,
                freeze_bn_epoch=2,
                train_overrides={"epochs": 3, "tensorboard": False, "progress": "off"},
                output=str(root / "cnn-qat.int8.pt"),
            ),
            quiet=True,
        )
        show("qat      cnn, digits", qat)

        resnet = train(
            root, "resnet18", 1, data="synthetic", shape="3x64x64", samples=256,
            model="torchvision:resnet18", batch_size=32,
        )  # fmt: skip
        options = QuantizeOptions("static", evaluate=False, calib_batches=4, bench_runs=RUNS)
        show("static   torchvision:resnet18 64px", quantize_checkpoint(resnet, options))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
