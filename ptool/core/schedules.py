"""Learning-rate schedules: the real `torch.optim.lr_scheduler` classes, built from the config.

One implementation serves `ptool train` (which steps it) and `ptool lr-plot` (which steps the
same object on a dummy optimizer), so the plot is exactly what training does.

Units: a schedule steps per epoch or per optimizer step (`scheduler_interval`, auto: per step
for onecycle, cyclic and any `--warmup-steps`, per epoch otherwise). Epoch-counted parameters
(`step_size`, `milestones`, `t_max`, `t_0`, `total_iters`, `warmup_epochs`) are converted to
steps when the schedule steps per step; cyclic's `step_size_up` is in steps, as in PyTorch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import torch
from torch.optim import lr_scheduler

from ptool.core.checks import RANGES
from ptool.core.config import FIELDS, TrainConfig, check_interval
from ptool.core.errors import UsageError, count

SCHEDULES: tuple[str, ...] = FIELDS["scheduler"].metadata["choices"]
PER_STEP = ("onecycle", "cyclic")


def resolve_interval(config: TrainConfig) -> str:
    if config.scheduler_interval != "auto":
        return config.scheduler_interval
    return "step" if config.scheduler in PER_STEP or config.warmup_steps else "epoch"


# metrics.REGRESSION's error metrics, as torchmetrics' `higher_is_better` says (tested)
LOWER_IS_BETTER = ("mae", "rmse")


def monitor_mode(config: TrainConfig) -> str:
    """--mode, or auto: min for a loss or an error metric (val/rmse), max for the rest."""
    if config.mode != "auto":
        return config.mode
    metric = config.monitor.rsplit("/", 1)[-1]
    return "min" if "loss" in metric or metric in LOWER_IS_BETTER else "max"


# The other options of one schedule or two, with the schedules that read them.
READERS: dict[str, tuple[str, ...]] = {
    "milestones": ("multistep",),
    "anneal_strategy": ("onecycle",),
    "three_phase": ("onecycle",),
    "cyclic_mode": ("cyclic",),
    "cycle_momentum": ("onecycle", "cyclic"),
}


def option_readers() -> dict[str, tuple[str, ...]]:
    """Every option that only some schedules read, with those schedules."""
    return {**{name: used for name, (_, used) in RANGES.items() if used}, **READERS}


def check_range(config: TrainConfig, name: str) -> None:
    """One field against its RANGES row, when its schedule reads it."""
    interval, used_by = RANGES[name]
    if used_by is None or config.scheduler in used_by:
        check_interval(name, getattr(config, name), interval)


def check_schedule(config: TrainConfig, steps_per_epoch: int) -> None:
    """Refuse impossible parameters before anything is built, one line each."""
    check_schedule_flags(config)
    if steps_per_epoch < 1:
        raise UsageError(
            f"{config.scheduler} steps per optimizer step and needs a total step count "
            f"(epochs x steps per epoch); steps per epoch is {steps_per_epoch}",
            hint="give --steps-per-epoch, or --samples and --batch-size",
        )
    check_warmup_length(config, config.warmup_steps, horizon(config) * steps_per_epoch, "step")
    if config.scheduler == "onecycle":
        check_onecycle_phases(config, _lengths(config, steps_per_epoch)[2])


def _lengths(config: TrainConfig, steps_per_epoch: int) -> tuple[int, int, int]:
    """(schedule steps per epoch, warmup length, main schedule length), counted in the
    schedule's own steps: optimizer steps when it steps per step, else epochs."""
    unit = steps_per_epoch if resolve_interval(config) == "step" else 1
    warmup = config.warmup_steps or config.warmup_epochs * unit
    return unit, warmup, max(1, horizon(config) * unit - warmup)


def horizon(config: TrainConfig) -> int:
    """The epochs the schedule is planned over: the run's, unless a resume that changed
    --epochs kept the plan it had (--schedule-epochs)."""
    return config.schedule_epochs or config.epochs


def check_warmup_length(config: TrainConfig, warmup: int, total: int, unit: str) -> None:
    """A warmup of N steps reaches --lr at step N, so a run of N steps or fewer never does.
    Prune's and QAT's fine-tuning inherit the warmup of the longer run they start from."""
    if warmup and warmup >= total:
        raise UsageError(
            f"a {warmup}-{unit} warmup is not shorter than the {total}-{unit} run: "
            f"the lr would never reach {config.lr:g}",
            hint=f"give fewer --warmup-{unit}s (0 for none), or more epochs",
        )


def check_schedule_flags(config: TrainConfig) -> None:
    """What check_schedule refuses without knowing the steps per epoch (train, prune's
    fine-tuning and QAT check it before loading data)."""
    name = config.scheduler
    if name not in SCHEDULES:
        from ptool.core.errors import unknown_name

        raise unknown_name("scheduler", name, SCHEDULES)
    for field_name in RANGES:
        check_range(config, field_name)
    if config.warmup_epochs and config.warmup_steps:
        raise UsageError("give --warmup-epochs or --warmup-steps, not both")
    if config.warmup_steps and config.scheduler_interval == "epoch":
        raise UsageError("--warmup-steps needs --scheduler-interval step (or auto)")
    check_warmup_length(config, config.warmup_epochs, horizon(config), "epoch")
    if config.t_max is not None and config.schedule_epochs is not None:
        raise UsageError(
            "--t-max sets the cosine's period itself: give it or --schedule-epochs, not both"
        )
    if name == "onecycle":
        check_onecycle_ends(config)
        if horizon(config) < config.epochs:
            raise UsageError(
                f"onecycle cannot step past its end: --schedule-epochs {config.schedule_epochs} "
                f"is below --epochs {config.epochs}",
                hint="drop --schedule-epochs, or give one of at least --epochs",
            )
    if name == "multistep":
        ms = config.milestones
        if not ms:
            raise UsageError("multistep needs --milestones, e.g. --milestones 30,60")
        if any(b <= a for a, b in zip(ms, ms[1:], strict=False)) or ms[0] < 1:
            raise UsageError(f"--milestones must be positive and strictly increasing, got {ms}")


def check_onecycle_ends(config: TrainConfig) -> None:
    """OneCycleLR starts at max_lr / div_factor and ends that / final_div_factor: each in range
    on its own, two factors can still overflow to an infinite lr (or underflow to 0 at start)."""
    start = (config.max_lr or config.lr) / config.div_factor
    end = start / config.final_div_factor
    if not (0 < start < math.inf and end < math.inf):
        raise UsageError(
            f"onecycle would run from {start:g} to {end:g}: --div-factor {config.div_factor:g} "
            f"and --final-div-factor {config.final_div_factor:g} leave no finite, positive lr",
            hint="the defaults are --div-factor 25 --final-div-factor 1e4",
        )


def check_onecycle_phases(config: TrainConfig, total: int) -> None:
    """OneCycleLR interpolates each phase from the end step of the one before (torch's own
    expressions below): a phase ending where it starts divides by zero (at construction, or at
    the run's last step), one ending before it starts is skipped."""
    pct = config.pct_start
    ends = [float(pct * total) - 1, float(2 * pct * total) - 2, total - 1]
    if not config.three_phase:
        del ends[1]
    if all(start < end for start, end in pairwise([0.0, *ends])):
        return
    high = (total + 1) / (2 * total) if config.three_phase else 1
    fix = f"--pct-start between {1 / total:g} and {high:g} (exclusive), or " if total > 1 else ""
    raise UsageError(
        f"--pct-start {pct:g} leaves one of the phases of onecycle's {count(total, 'step')} "
        f"empty; give {fix}more steps"
    )


def _momentum_cycle(optimizer: torch.optim.Optimizer, config: TrainConfig, *, betas: bool):
    """OneCycleLR's / CyclicLR's momentum arguments: cycling where the optimizer has a
    momentum to cycle (Adam's beta1 only if `betas`) and --cycle-momentum asks; the bounds
    given, else torch's defaults."""
    defaults = optimizer.defaults
    has_momentum = (betas and "betas" in defaults) or defaults.get("momentum", 0) > 0
    bounds = {"base_momentum": config.base_momentum, "max_momentum": config.max_momentum}
    return {
        "cycle_momentum": config.cycle_momentum and has_momentum,
        **{name: value for name, value in bounds.items() if value is not None},
    }


def _main_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, unit: int, length: int
) -> Any:
    """The main schedule over `length` steps of the interval; None for a constant lr."""
    name = config.scheduler
    if name in ("none", "constant"):
        return None
    if name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=config.step_size * unit, gamma=config.gamma)
    if name == "multistep":
        return lr_scheduler.MultiStepLR(
            optimizer, milestones=[m * unit for m in config.milestones], gamma=config.gamma
        )
    if name == "exponential":  # --gamma is the decay per epoch, as step's is per --step-size
        return lr_scheduler.ExponentialLR(optimizer, gamma=config.gamma ** (1 / unit))
    if name == "cosine":
        t_max = config.t_max * unit if config.t_max is not None else length
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=config.eta_min)
    if name == "cosine-warm-restarts":
        return lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=config.t_0 * unit, T_mult=config.t_mult, eta_min=config.eta_min
        )
    if name == "onecycle":
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.max_lr if config.max_lr is not None else config.lr,
            total_steps=length,
            pct_start=config.pct_start,
            anneal_strategy=config.anneal_strategy,
            div_factor=config.div_factor,
            final_div_factor=config.final_div_factor,
            three_phase=config.three_phase,
            **_momentum_cycle(optimizer, config, betas=True),
        )
    if name == "linear":
        return lr_scheduler.LinearLR(
            optimizer,
            start_factor=config.start_factor,
            end_factor=config.end_factor,
            total_iters=config.total_iters * unit,
        )
    if name == "polynomial":
        return lr_scheduler.PolynomialLR(
            optimizer, total_iters=config.total_iters * unit, power=config.power
        )
    if name == "cyclic":
        return lr_scheduler.CyclicLR(
            optimizer,
            base_lr=config.lr,
            max_lr=config.max_lr if config.max_lr is not None else config.lr * 10,
            step_size_up=config.step_size_up,
            mode=config.cyclic_mode,
            gamma=config.cyclic_gamma,
            **_momentum_cycle(optimizer, config, betas=False),
        )
    if name == "plateau":
        return lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=monitor_mode(config),
            factor=config.factor,
            patience=config.patience,
            threshold=config.threshold,
            cooldown=config.cooldown,
            min_lr=config.min_lr,
        )
    raise AssertionError(name)  # check_schedule refused it already


def schedule_events(config: TrainConfig, *, steps_per_epoch: int) -> dict[str, Any]:
    """The interval, the optimizer step where warmup ends and the steps where a new cycle
    starts (cosine-warm-restarts, cyclic): what the series shows, derived from the config."""
    interval = resolve_interval(config)
    unit, warmup, _ = _lengths(config, steps_per_epoch)  # epochs -> schedule steps
    per_schedule_step = 1 if interval == "step" else steps_per_epoch  # -> optimizer steps
    total = config.epochs * unit
    period = {"cosine-warm-restarts": config.t_0 * unit, "cyclic": 2 * config.step_size_up}
    restarts = []
    length = period.get(config.scheduler, 0)
    start = warmup + length
    while length and start < total:
        restarts.append(start * per_schedule_step)
        if config.scheduler == "cosine-warm-restarts":
            length *= config.t_mult
        start += length
    return {
        "interval": interval,
        "warmup_end_step": warmup * per_schedule_step if warmup else None,
        "restart_steps": restarts,
    }


class LRSchedule:
    """Warmup composed with the main schedule, stepped per epoch or per optimizer step.

    The engine calls `step_batch()` after every optimizer step and `step_epoch(metric)` after
    every epoch's validation; the object decides which of the two moves the lr.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
        check_schedule(config, steps_per_epoch)
        self.optimizer = optimizer
        self.interval = resolve_interval(config)
        unit, self.warmup_length, length = _lengths(config, steps_per_epoch)
        self.planned_epochs = horizon(config)
        main = _main_scheduler(optimizer, config, unit, length)
        self.plateau = main if isinstance(main, lr_scheduler.ReduceLROnPlateau) else None
        warmup = None
        if self.warmup_length:
            warmup = lr_scheduler.LinearLR(
                optimizer,
                start_factor=config.warmup_start_factor,
                end_factor=1.0,
                total_iters=self.warmup_length,
            )
        if warmup is not None and main is not None and self.plateau is None:
            # SequentialLR undoes the main scheduler's initial step and starts with the warmup.
            self.scheduler: Any = lr_scheduler.SequentialLR(
                optimizer, [warmup, main], milestones=[self.warmup_length]
            )
        elif self.plateau is not None or main is None:
            # The plateau steps on its own; a constant lr needs only the warmup's ramp.
            self.scheduler = warmup
        else:
            self.scheduler = main
        self.steps = 0  # steps taken by `self.scheduler`

    @property
    def _warming_up(self) -> bool:
        return self.steps < self.warmup_length

    def _advance(self) -> None:
        if self.scheduler is not None:
            self.scheduler.step()
        self.steps += 1

    def step_batch(self) -> None:
        if self.interval == "step" and (self.plateau is None or self._warming_up):
            self._advance()

    def step_epoch(self, metric: float | None = None) -> None:
        if self.interval == "epoch" and (self.plateau is None or self._warming_up):
            self._advance()
        elif self.plateau is not None and not self._warming_up and metric is not None:
            # with no value the plateau's patience is unchanged; torch counts a nan as a bad epoch
            self.plateau.step(metric)

    def fast_forward(self, steps: int) -> None:
        """Take `steps` scheduler steps at once: a freshly built schedule at a saved position
        (`ptool resume --reschedule` re-plans the horizon this way)."""
        with warnings.catch_warnings():  # no optimizer step happens while fast-forwarding
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            for _ in range(steps):
                self._advance()

    def scale_lr(self, factor: float) -> None:
        """Multiply the current lr and every value the schedulers recompute it from
        (`--on-nonfinite rollback` halves the lr this way)."""
        for group in self.optimizer.param_groups:
            for key in ("lr", "initial_lr", "max_lr", "min_lr"):
                if isinstance(group.get(key), float):
                    group[key] *= factor
        found, todo = [], [self.scheduler, self.plateau]
        while todo:  # SequentialLR's children too
            scheduler = todo.pop()
            if scheduler is not None and scheduler not in found:
                found.append(scheduler)
                todo.extend(getattr(scheduler, "_schedulers", []))
        for scheduler in found:
            for attr in ("base_lrs", "max_lrs"):
                values = getattr(scheduler, attr, None)
                if isinstance(values, list):
                    setattr(scheduler, attr, [v * factor for v in values])

    def state_dict(self) -> dict[str, Any]:
        return {
            "interval": self.interval,
            "steps": self.steps,
            "planned_epochs": self.planned_epochs,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        self.planned_epochs = state.get("planned_epochs", self.planned_epochs)
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.plateau is not None and state.get("plateau") is not None:
            self.plateau.load_state_dict(state["plateau"])


def build_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig, *, steps_per_epoch: int
) -> LRSchedule:
    """`steps_per_epoch` counts optimizer steps (batches / accumulate, rounded up)."""
    return LRSchedule(optimizer, config, steps_per_epoch)


@dataclass
class LRRuns:
    """One parameter group's lr over a run, run-length coded: `lrs[i]` is the lr of `counts[i]`
    optimizer steps from step `steps[i]` on. A per-epoch schedule costs a run per change, not
    a value per step (1000 epochs of 10,000 steps are 1000 runs at most)."""

    steps: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, points: Iterable[tuple[int, float]]) -> LRRuns:
        """The runs of (step, lr) points, a step each (a run's logged lr)."""
        runs = cls()
        for step, lr in points:
            runs.hold(step, 1, lr)
        return runs

    def hold(self, step: int, n: int, lr: float) -> None:
        """`lr` for `n` steps from `step` on: the last run, longer, when it goes on."""
        if self.lrs and self.lrs[-1] == lr and self.steps[-1] + self.counts[-1] == step:
            self.counts[-1] += n
        else:
            self.steps.append(step)
            self.counts.append(n)
            self.lrs.append(lr)

    def rows(self) -> Iterator[tuple[int, float]]:
        """(step, lr) of every step."""
        for first, n, lr in zip(self.steps, self.counts, self.lrs, strict=True):
            for step in range(first, first + n):
                yield step, lr


# Schedules that set every group's lr from these flags: OneCycleLR and CyclicLR take one
# max_lr / base_lr for all groups as _main_scheduler builds them, whatever a group's own lr.
GROUP_LRS_FROM = {"onecycle": "--max-lr (default --lr)", "cyclic": "--lr and --max-lr"}


def lr_runs(
    config: TrainConfig,
    *,
    steps_per_epoch: int,
    metrics: list[float] | None = None,
    group_lrs: list[float] | None = None,
) -> list[LRRuns]:
    """The lr of every optimizer step of a run, one `LRRuns` per parameter group.

    The schedule is the same `LRSchedule` training builds, stepped on a dummy optimizer of
    the configured type; `group_lrs` gives each parameter group its own initial lr.
    """
    from ptool.core.optim import OPTIMIZERS

    check_schedule(config, steps_per_epoch)  # a bad flag first: it is wrong whatever the metric
    if config.scheduler == "plateau" and metrics is None:
        raise UsageError(
            "plateau needs a metric per epoch",
            hint="give --metric-file metrics.csv or --from-run runs/NAME",
        )
    if config.scheduler in GROUP_LRS_FROM and any(lr != config.lr for lr in group_lrs or []):
        raise UsageError(
            f"--group-lrs: {config.scheduler} sets every parameter group's lr from "
            f"{GROUP_LRS_FROM[config.scheduler]}, one value for all groups as ptool train builds "
            "it, so each group's own lr would be ignored; drop --group-lrs"
        )
    lrs = group_lrs or [config.lr]
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs]
    optimizer = OPTIMIZERS[config.optimizer](groups, config)
    # The dummy optimizer never steps; torch's "scheduler before optimizer" warning is noise here.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="Detected call of `lr_scheduler.step",
        )
        schedule = build_schedule(optimizer, config, steps_per_epoch=steps_per_epoch)
        return _step_through(optimizer, schedule, config, steps_per_epoch, metrics)


def _step_through(optimizer, schedule, config, steps_per_epoch, metrics) -> list[LRRuns]:
    runs = [LRRuns() for _ in optimizer.param_groups]
    # step_batch moves only a per-step schedule: a per-epoch one holds its lr the whole epoch
    held = 1 if schedule.interval == "step" else steps_per_epoch
    for epoch in range(config.epochs):
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch, held):
            for run, group in zip(runs, optimizer.param_groups, strict=True):
                run.hold(step, held, group["lr"])
            schedule.step_batch()
        metric = None
        if metrics is not None:  # short: a run that stopped early (lr-plot warns), held on
            metric = metrics[epoch] if epoch < len(metrics) else metrics[-1]
        schedule.step_epoch(metric)
    return runs
