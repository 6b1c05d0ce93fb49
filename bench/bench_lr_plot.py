"""`ptool lr-plot` on a 100,000-step schedule against the 2 s goal, in one run.

Times (wall, median of --repeat runs):
- end to end, separate processes: the terminal chart (`--chart`), `--csv` and `--json` of
  `ptool lr-plot onecycle --lr 0.1 --epochs 100 --steps-per-epoch 1000`;
- the start-up no command can avoid, in a separate process: `import torch` and building the
  first optimizer (which imports torch._dynamo);
- in process, after that start-up: the series (the real OneCycleLR stepped 100,000 times
  through ptool's LRSchedule) and the chart, against the bare torch scheduler loop;
- memory, in process: tracemalloc's peak for the series of a per-epoch cosine over 1000 epochs
  of 10,000 steps, against the same schedule at 1 step per epoch (a run of equal lrs is kept
  once, so the steps per epoch should cost nothing).
Prints seconds and ratios against the goal and the baseline.

    python bench/bench_lr_plot.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

PTOOL = str(Path(sys.executable).with_name("ptool"))
GOAL_S = 2.0
ARGS = ["onecycle", "--lr", "0.1", "--epochs", "100", "--steps-per-epoch", "1000"]
LONG_STEPS = 10_000  # the memory check's steps per epoch: 10,000,000 steps in all
STARTUP = "import torch; torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)"


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def median(func, repeat: int) -> float:
    return statistics.median(func() for _ in range(repeat))


def in_process(repeat: int) -> tuple[float, float, float]:
    import torch
    from torch.optim import lr_scheduler

    from ptool.core.config import TrainConfig
    from ptool.core.lr_plot import schedule_lines
    from ptool.ui.lr_plot_view import terminal_chart

    warnings.filterwarnings("ignore", message="Detected call of")
    config = TrainConfig(scheduler="onecycle", lr=0.1, epochs=100)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # the one-off import

    def series() -> float:
        start = time.perf_counter()
        schedule_lines(config, label="onecycle", steps_per_epoch=1000)
        return time.perf_counter() - start

    lines = schedule_lines(config, label="onecycle", steps_per_epoch=1000)

    def chart() -> float:
        start = time.perf_counter()
        terminal_chart(lines, x_axis="epoch", log_y=False, title="t", width=100, height=22)
        return time.perf_counter() - start

    def bare() -> float:
        opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=0.1)
        sched = lr_scheduler.OneCycleLR(opt, 0.1, total_steps=100_000)
        start = time.perf_counter()
        for _ in range(100_000):
            opt.param_groups[0]["lr"]
            sched.step()
        return time.perf_counter() - start

    return median(series, repeat), median(chart, repeat), median(bare, repeat)


def peak_memory(steps_per_epoch: int) -> tuple[float, float]:
    """tracemalloc's peak (MiB) and the seconds of a 1000-epoch cosine's series."""
    from ptool.core.config import TrainConfig
    from ptool.core.lr_plot import schedule_lines

    config = TrainConfig(scheduler="cosine", lr=0.1, epochs=1000)
    tracemalloc.start()
    start = time.perf_counter()
    schedule_lines(config, label="cosine", steps_per_epoch=steps_per_epoch)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return peak, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    repeat = parser.parse_args().repeat

    print(f"100,000-step onecycle, median of {repeat}; goal {GOAL_S:.1f} s")
    startup = median(lambda: wall([sys.executable, "-c", STARTUP]), repeat)
    print(f"  start-up (import torch + first optimizer)  {startup:6.2f} s")
    for name, extra in (("chart", ["--chart"]), ("csv", ["--csv"]), ("json", ["--json"])):
        seconds = median(lambda extra=extra: wall([PTOOL, "lr-plot", *ARGS, *extra]), repeat)
        print(
            f"  ptool lr-plot --{name:<6} end to end {seconds:6.2f} s  "
            f"({seconds / GOAL_S:.2f}x the goal; {seconds - startup:5.2f} s above start-up, "
            f"{(seconds - startup) / GOAL_S:.2f}x the goal)"
        )
    series, chart, bare = in_process(repeat)
    print(
        f"  in process: series {series:.2f} s + chart {chart:.2f} s = {series + chart:.2f} s "
        f"({(series + chart) / GOAL_S:.2f}x the goal); "
        f"bare OneCycleLR loop {bare:.2f} s (series = {series / bare:.1f}x it)"
    )
    base, _ = peak_memory(1)  # after in_process: the imports are not counted
    long, seconds = peak_memory(LONG_STEPS)
    print(
        f"  memory: 1000-epoch cosine, {LONG_STEPS:,} steps per epoch: peak {long:.2f} MiB "
        f"in {seconds:.2f} s = {long / base:.2f}x the same at 1 step per epoch ({base:.2f} MiB)"
    )


if __name__ == "__main__":
    main()
