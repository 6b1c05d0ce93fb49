"""What `ptool lr-plot` computes: schedule lines, their key points, and a run's logged lr.

Every source (flags, a config file, a checkpoint, a run directory) resolves to a `TrainConfig`;
the lines come from `schedules.lr_runs`, which steps the same `LRSchedule` that training
steps, so a plot is what a run with that config does.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptool.core.config import TrainConfig, read_config_file
from ptool.core.errors import PtoolError, UsageError
from ptool.core.rundir import CONFIG_NAME

if TYPE_CHECKING:
    from ptool.core.schedules import LRRuns


@dataclass
class Line:
    """One series: a parameter group's lr over the optimizer steps of a run."""

    label: str
    group: int
    kind: str  # "schedule" (computed) or "logged" (read from TensorBoard)
    steps_per_epoch: int
    runs: LRRuns  # the lr of every step, run-length coded
    interval: str | None = None
    warmup_end_step: int | None = None
    restart_steps: list[int] = field(default_factory=list)

    def key_numbers(self) -> dict[str, Any]:
        """start, peak (first step reaching it), end, lowest, warmup end and restart steps."""
        lrs = self.runs.lrs
        peak = max(range(len(lrs)), key=lrs.__getitem__)
        return {
            "start": lrs[0],
            "peak": lrs[peak],
            "peak_step": self.runs.steps[peak],
            "end": lrs[-1],
            "min": min(lrs),
            "warmup_end_step": self.warmup_end_step,
            "restart_steps": self.restart_steps,
        }

    def to_dict(self) -> dict[str, Any]:
        rows = [
            {"step": s, "epoch": s / self.steps_per_epoch, "lr": lr} for s, lr in self.runs.rows()
        ]
        return {
            "label": self.label,
            "group": self.group,
            "kind": self.kind,
            "interval": self.interval,
            "steps_per_epoch": self.steps_per_epoch,
            **self.key_numbers(),
            "rows": rows,
        }


@dataclass
class Source:
    """A resolved schedule source: the config plus what a checkpoint or run adds to it."""

    config: TrainConfig
    train_size: int | None = None  # training samples per process, from a checkpoint
    groups: int = 1  # parameter groups of the checkpoint's optimizer
    run_dir: Path | None = None


def _checkpoint_facts(ckpt: dict) -> tuple[int | None, int]:
    """(training samples per process, parameter groups): a torchrun job of W processes gives
    each ceil(N / W) samples (DistributedSampler pads), so its steps per epoch are fewer."""
    info = ckpt.get("data_info") or {}
    groups = len((ckpt.get("optimizer_state_dict") or {}).get("param_groups") or [None])
    world = ((ckpt.get("rng_state") or {}).get("data_order") or {}).get("world_size", 1)
    size = info.get("train_size")
    return (math.ceil(size / world) if size is not None else None), groups


def _newest_checkpoint(run_dir: Path) -> dict | None:
    from ptool.core.checkpoint import load_checkpoint, newest_valid_checkpoint

    try:
        return load_checkpoint(newest_valid_checkpoint(run_dir))
    except PtoolError:
        return None


def load_source(
    *,
    overrides: dict[str, Any],
    config_file: str | None = None,
    checkpoint: str | None = None,
    run: str | None = None,
) -> Source:
    """Defaults < run's config.yaml or checkpoint's config < --config file < flags."""
    if checkpoint and run:
        raise UsageError("give --from-checkpoint or --from-run, not both")
    values: dict[str, Any] = {}
    ckpt = None
    run_dir = None
    if run:
        run_dir = Path(run)
        if not (run_dir / CONFIG_NAME).is_file():
            raise UsageError(
                f"{run_dir} is not a ptool run directory (no {CONFIG_NAME})",
                hint="give the directory `ptool train --out` wrote, e.g. runs/NAME",
            )
        values.update(read_config_file(run_dir / CONFIG_NAME))
        ckpt = _newest_checkpoint(run_dir)
    if checkpoint:
        from ptool.core.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint)
        values.update(ckpt.get("config") or {})
    if config_file:
        values.update(read_config_file(config_file))
    values.update(overrides)
    source = str(config_file or checkpoint or run or "option")
    config = TrainConfig.from_dict(values, source=source)
    train_size, groups = _checkpoint_facts(ckpt) if ckpt is not None else (None, 1)
    return Source(config, train_size=train_size, groups=groups, run_dir=run_dir)


def steps_per_epoch(
    config: TrainConfig,
    *,
    given: int | None = None,
    samples: int | None = None,
    train_size: int | None = None,
) -> int:
    """Optimizer steps per epoch, as the engine counts them.

    `given` wins; else batches of `samples` (or the checkpoint's training-set size), floored
    with drop_last, divided by `accumulate` rounding up. Unknown: 1 for a per-epoch schedule
    (one point per epoch says everything), 0 for a per-step one (refused by check_schedule).
    """
    from ptool.core.schedules import resolve_interval

    if given is not None:
        if given < 1:
            raise UsageError(f"--steps-per-epoch must be at least 1, got {given}")
        return given
    size = samples if samples is not None else train_size
    if size is None:
        return 0 if resolve_interval(config) == "step" else 1
    if size < 1 or config.batch_size < 1 or config.accumulate < 1:
        raise UsageError("--samples, --batch-size and --accumulate must be at least 1")
    config.check_full_batch(size)
    return config.steps_per_epoch(size)


def schedule_lines(
    config: TrainConfig,
    *,
    label: str,
    steps_per_epoch: int,
    metrics: list[float] | None = None,
    group_lrs: list[float] | None = None,
) -> list[Line]:
    """One computed line per parameter group."""
    from ptool.core.schedules import lr_runs, schedule_events

    runs = lr_runs(config, steps_per_epoch=steps_per_epoch, metrics=metrics, group_lrs=group_lrs)
    events = schedule_events(config, steps_per_epoch=steps_per_epoch)
    return [
        Line(
            label=label if len(runs) == 1 else f"{label} group {g}",
            group=g,
            kind="schedule",
            steps_per_epoch=steps_per_epoch,
            runs=group_runs,
            **events,
        )
        for g, group_runs in enumerate(runs)
    ]


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard directory, (step, value) sorted by step (last write wins).
    A resumed run's events go back in steps: TensorBoard purges the replaced ones, with a
    warning meant for TensorFlow restarts, left out here (its other warnings stay)."""
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def not_the_restart_notice(record: logging.LogRecord) -> bool:
        return "likely caused by a TensorFlow restart" not in record.getMessage()

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    tb_logger = logging.getLogger("tensorboard")
    tb_logger.addFilter(not_the_restart_notice)
    try:
        accumulator.Reload()
    finally:
        tb_logger.removeFilter(not_the_restart_notice)
    scalars = {}
    for tag in accumulator.Tags().get("scalars", []):
        by_step = {event.step: event.value for event in accumulator.Scalars(tag)}
        scalars[tag] = sorted(by_step.items())
    return scalars


@dataclass
class RunLog:
    """What a finished run logged: the lr of every optimizer step, the monitored metric."""

    lrs: list[list[tuple[int, float]]]  # per parameter group
    metric: list[float]  # per epoch, in epoch order


def read_run_log(run_dir: Path, monitor: str) -> RunLog:
    log_dir = run_dir / "tensorboard"
    if not log_dir.is_dir():
        raise PtoolError(
            f"{run_dir} has no TensorBoard log ({log_dir})",
            hint="the run was trained with --no-tensorboard; plot its config with --config",
        )
    scalars = read_scalars(log_dir)
    lrs = [scalars.get("lr", [])]
    index = 1
    while f"lr/group{index}" in scalars:
        lrs.append(scalars[f"lr/group{index}"])
        index += 1
    from ptool.core.callbacks import epoch_tag

    return RunLog(lrs=lrs, metric=[value for _, value in scalars.get(epoch_tag(monitor), [])])


def logged_lines(log: RunLog, *, steps_per_epoch: int) -> list[Line]:
    from ptool.core.schedules import LRRuns

    groups = len(log.lrs)
    return [
        Line(
            label="logged lr" if groups == 1 else f"logged lr group {g}",
            group=g,
            kind="logged",
            steps_per_epoch=steps_per_epoch,
            runs=LRRuns.of(points),
        )
        for g, points in enumerate(log.lrs)
        if points
    ]


TENSORBOARD_CSV = ["Wall time", "Step", "Value"]  # the scalars dashboard's download


def read_metric_file(path: str | Path, monitor: str | None = None) -> list[float]:
    """One value per epoch: a bare column of numbers, or a CSV with a header (the column named
    like --monitor; a header of one column names the metric whatever it says, and TensorBoard's
    "Download CSV" file, `Wall time,Step,Value`, holds it in Value)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"metric file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets write a byte-order mark
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{path} is not a text file ({exc.reason} at byte {exc.start})",
            hint="one value per epoch, one a line",
        ) from None
    rows = [row for row in csv.reader(text.splitlines()) if row]
    if not rows:
        raise UsageError(f"{path} holds no metric values", hint="one value per epoch, one a line")
    column = -1
    try:
        float(rows[0][-1])
    except ValueError:
        header = [name.strip() for name in rows.pop(0)]
        if monitor in header:
            column = header.index(monitor)
        elif header != TENSORBOARD_CSV and len(header) > 1:  # the last one could be another
            raise UsageError(  # metric, better the other way (accuracy, not a loss)
                f"{path} has no column {monitor!r} (--monitor); its columns: {', '.join(header)}",
                hint="name the metric's column with --monitor COLUMN, and with --mode min or "
                "max which way is better (auto reads it in the name: losses and errors min)",
            ) from None
    try:
        values = [float(row[column]) for row in rows]
    except (ValueError, IndexError) as exc:
        raise UsageError(f"{path}: not a number per epoch ({exc})") from None
    if not values:
        raise UsageError(f"{path} holds no metric values", hint="one value per epoch, one a line")
    return values


def check_metric_count(metrics: list[float], epochs: int, path: str | Path) -> None:
    """plateau steps on one value per epoch: fewer than --epochs would leave the plot to invent
    the rest. More is fine (a plot of the first epochs of a longer run)."""
    if len(metrics) < epochs:
        raise UsageError(
            f"{path} holds {len(metrics)} metric values for {epochs} epochs; "
            "plateau needs one per epoch",
            hint=f"give --epochs {len(metrics)}, or a value for every epoch",
        )
