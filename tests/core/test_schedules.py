"""Every schedule against the torch scheduler stepped directly (the oracle)."""

from __future__ import annotations

import pytest
import torch
from torch.optim import lr_scheduler

from ptool.core.config import TrainConfig
from ptool.core.errors import UsageError
from ptool.core.schedules import (
    build_schedule,
    check_schedule_flags,
    lr_runs,
    schedule_events,
)

pytestmark = pytest.mark.filterwarnings("ignore:Detected call of")

STEPS = 4  # optimizer steps per epoch
EPOCHS = 12


def lr_series(config: TrainConfig, *, steps_per_epoch: int, **options) -> list[dict]:
    """`lr_runs` step by step: rows `{step, lr, group}`, the groups of each step together."""
    runs = lr_runs(config, steps_per_epoch=steps_per_epoch, **options)
    return [
        {"step": step, "lr": lr, "group": group}
        for points in zip(*(run.rows() for run in runs), strict=True)
        for group, (step, lr) in enumerate(points)
    ]


def _oracle(make, *, per_step: bool, metrics=None, optimizer="sgd"):
    """The lr each optimizer step uses, with a torch scheduler stepped by hand."""
    param = torch.zeros(1, requires_grad=True)
    opt = (
        torch.optim.SGD([param], lr=0.1)
        if optimizer == "sgd"
        else torch.optim.AdamW([param], lr=0.1)
    )
    sched = make(opt)
    lrs = []
    for epoch in range(EPOCHS):
        for _ in range(STEPS):
            lrs.append(opt.param_groups[0]["lr"])
            if per_step and sched is not None:
                sched.step()
        if not per_step and sched is not None:
            sched.step(metrics[epoch]) if metrics else sched.step()
    return lrs


CASES = {
    "none": ({}, lambda o: None, False),
    "constant": ({}, lambda o: None, False),
    "step": ({"step_size": 3, "gamma": 0.5}, lambda o: lr_scheduler.StepLR(o, 3, 0.5), False),
    "multistep": (
        {"milestones": [2, 5, 9]},
        lambda o: lr_scheduler.MultiStepLR(o, [2, 5, 9], 0.1),
        False,
    ),
    "exponential": (
        {"gamma": 0.8},
        lambda o: lr_scheduler.ExponentialLR(o, 0.8),
        False,
    ),
    "cosine": (
        {"eta_min": 1e-4},
        lambda o: lr_scheduler.CosineAnnealingLR(o, EPOCHS, 1e-4),
        False,
    ),
    "cosine-warm-restarts": (
        {"t_0": 3, "t_mult": 2},
        lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, 3, 2),
        False,
    ),
    "onecycle": (
        {"max_lr": 0.5},
        lambda o: lr_scheduler.OneCycleLR(o, 0.5, total_steps=EPOCHS * STEPS, cycle_momentum=False),
        True,
    ),
    "linear": (
        {"start_factor": 0.25, "total_iters": 6},
        lambda o: lr_scheduler.LinearLR(o, 0.25, 1.0, 6),
        False,
    ),
    "polynomial": (
        {"total_iters": 8, "power": 2.0},
        lambda o: lr_scheduler.PolynomialLR(o, 8, 2.0),
        False,
    ),
    "cyclic": (
        {"max_lr": 0.4, "step_size_up": 5},
        lambda o: lr_scheduler.CyclicLR(o, 0.1, 0.4, step_size_up=5, cycle_momentum=False),
        True,
    ),
    "cyclic exp_range": (  # ptool's --gamma is StepLR's (0.1); exp_range's has its own flag
        {"max_lr": 0.4, "step_size_up": 5, "cyclic_mode": "exp_range", "cyclic_gamma": 0.9},
        lambda o: lr_scheduler.CyclicLR(
            o, 0.1, 0.4, step_size_up=5, mode="exp_range", gamma=0.9, cycle_momentum=False
        ),
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_series_equals_torch_scheduler(name):
    params, make, per_step = CASES[name]
    scheduler = name.split()[0]
    config = TrainConfig(scheduler=scheduler, lr=0.1, epochs=EPOCHS, optimizer="sgd", **params)
    got = [row["lr"] for row in lr_series(config, steps_per_epoch=STEPS)]
    assert got == pytest.approx(_oracle(make, per_step=per_step), rel=1e-12, abs=1e-15)


def test_plateau_steps_with_the_metric():
    metrics = [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
    config = TrainConfig(scheduler="plateau", lr=0.1, epochs=EPOCHS, optimizer="sgd", patience=2)
    got = [row["lr"] for row in lr_series(config, steps_per_epoch=STEPS, metrics=metrics)]
    expected = _oracle(
        lambda o: lr_scheduler.ReduceLROnPlateau(o, "min", 0.1, patience=2),
        per_step=False,
        metrics=metrics,
    )
    assert got == pytest.approx(expected)
    assert min(got) < 0.1  # the oracle really reduced it


def test_warmup_composes_with_sequential_lr():
    config = TrainConfig(
        scheduler="cosine", lr=0.1, epochs=EPOCHS, warmup_epochs=3, warmup_start_factor=0.1
    )
    got = [row["lr"] for row in lr_series(config, steps_per_epoch=STEPS)]
    expected = _oracle(
        lambda o: lr_scheduler.SequentialLR(
            o,
            [lr_scheduler.LinearLR(o, 0.1, 1.0, 3), lr_scheduler.CosineAnnealingLR(o, EPOCHS - 3)],
            milestones=[3],
        ),
        per_step=False,
        optimizer="adamw",
    )
    assert got == pytest.approx(expected)


def test_warmup_steps_make_the_schedule_per_step_in_steps():
    config = TrainConfig(scheduler="step", lr=0.1, epochs=EPOCHS, warmup_steps=5, step_size=3)
    got = [row["lr"] for row in lr_series(config, steps_per_epoch=STEPS)]
    expected = _oracle(
        lambda o: lr_scheduler.SequentialLR(
            o,
            [lr_scheduler.LinearLR(o, 0.01, 1.0, 5), lr_scheduler.StepLR(o, 3 * STEPS, 0.1)],
            milestones=[5],
        ),
        per_step=True,
        optimizer="adamw",
    )
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    "params",
    [
        {"scheduler": "onecycle"},
        {"scheduler": "constant", "warmup_steps": 7},  # saved mid-warmup, resumed ramping
        {"scheduler": "none", "warmup_steps": 7},
    ],
)
def test_state_dict_round_trip_continues_identically(params):
    config = TrainConfig(lr=0.1, epochs=3, **params)

    def make():
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        return opt, build_schedule(opt, config, steps_per_epoch=STEPS)

    opt_a, sched_a = make()
    for _ in range(5):
        sched_a.step_batch()
    opt_b, sched_b = make()
    sched_b.load_state_dict(sched_a.state_dict())
    opt_b.load_state_dict(opt_a.state_dict())
    lrs = []
    for _ in range(4):
        sched_a.step_batch()
        sched_b.step_batch()
        assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"]
        lrs.append(opt_b.param_groups[0]["lr"])
    if "warmup_steps" in params:  # still ramping when saved, then at --lr
        assert lrs[0] < lrs[1] == pytest.approx(0.1) == lrs[-1]


@pytest.mark.parametrize(
    "params",
    [
        {"scheduler": "cosine"},
        {"scheduler": "onecycle"},
        {"scheduler": "step", "step_size": 1},
        {"scheduler": "cosine", "warmup_epochs": 1},
        {"scheduler": "constant", "warmup_epochs": 2},  # halved mid-warmup
        {"scheduler": "none", "warmup_steps": 9},
    ],
)
def test_scale_lr_continues_as_the_schedule_of_the_scaled_lr(params):
    """Halving mid-run (rollback) = the schedule that had half the lr all along, from then on."""

    def make(lr):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        return opt, build_schedule(
            opt, TrainConfig(lr=lr, epochs=3, **params), steps_per_epoch=STEPS
        )

    opt, sched = make(0.1)
    opt_half, sched_half = make(0.05)
    for step in range(3 * STEPS):
        if step == 5:
            sched.scale_lr(0.5)
        if step >= 5:
            assert opt.param_groups[0]["lr"] == pytest.approx(opt_half.param_groups[0]["lr"])
        for schedule in (sched, sched_half):
            schedule.step_batch()
            if (step + 1) % STEPS == 0:
                schedule.step_epoch()


@pytest.mark.parametrize(
    "params",
    [
        {"lr": -0.1},
        {"scheduler": "cosine", "t_max": 0},
        {"scheduler": "multistep", "milestones": [5, 3]},
        {"scheduler": "multistep"},
        {"scheduler": "onecycle", "pct_start": 1.5},
    ],
)
def test_impossible_parameters_are_usage_errors(params):
    with pytest.raises(UsageError):
        lr_series(TrainConfig(**{"epochs": 3, **params}), steps_per_epoch=STEPS)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lr": NAN}, "--lr must be finite and positive, got nan"),
        ({"lr": INF}, "--lr must be finite and positive, got inf"),
        ({"scheduler": "linear", "start_factor": 0.0}, r"--start-factor must be in \(0, 1\]"),
        ({"scheduler": "linear", "start_factor": 2.0}, r"--start-factor must be in \(0, 1\]"),
        ({"scheduler": "linear", "end_factor": -1.0}, r"--end-factor must be in \[0, 1\]"),
        ({"scheduler": "polynomial", "power": -1.0}, "--power must be finite and at least 0"),
        ({"scheduler": "onecycle", "div_factor": 0.0}, "--div-factor must be finite and positive"),
        ({"scheduler": "onecycle", "div_factor": -2.0}, "--div-factor must be"),
        ({"scheduler": "onecycle", "final_div_factor": 0.0}, "--final-div-factor must be"),
        ({"scheduler": "onecycle", "max_lr": NAN}, "--max-lr must be finite and positive"),
        ({"scheduler": "onecycle", "div_factor": 1e-320}, "onecycle would run from inf to inf"),
        ({"scheduler": "onecycle", "div_factor": 1e-300, "final_div_factor": 1e-300}, "to inf"),
        ({"scheduler": "cosine", "eta_min": -1.0}, "--eta-min must be finite and at least 0"),
        ({"scheduler": "cosine-warm-restarts", "eta_min": NAN}, "--eta-min must be"),
        ({"scheduler": "exponential", "gamma": NAN}, "--gamma must be finite and positive"),
        ({"scheduler": "plateau", "patience": -2}, "--patience must be at least 0, got -2"),
        ({"scheduler": "plateau", "cooldown": -1}, "--cooldown must be at least 0, got -1"),
        ({"scheduler": "plateau", "min_lr": -1.0}, "--min-lr must be finite and at least 0"),
        ({"scheduler": "plateau", "threshold": NAN}, "--threshold must be"),
    ],
)
def test_out_of_range_parameters_name_the_flag_and_the_range(params, message):
    """Before the torch scheduler is built: it would crash (ZeroDivisionError, ValueError) or
    step nonsense (an inf or negative lr)."""
    config = TrainConfig(**{"epochs": 3, **params})
    with pytest.raises(UsageError, match=message):
        lr_series(config, steps_per_epoch=STEPS, metrics=[1.0] * 3)


def test_parameters_a_schedule_does_not_read_are_not_checked():
    config = TrainConfig(scheduler="cosine", epochs=3, power=-1.0, patience=-1)
    assert len(lr_series(config, steps_per_epoch=STEPS)) == 3 * STEPS


def test_onecycle_without_steps_is_refused():
    with pytest.raises(UsageError, match="steps per epoch"):
        lr_series(TrainConfig(scheduler="onecycle", epochs=3), steps_per_epoch=0)


def test_parameter_groups_each_get_a_series():
    config = TrainConfig(scheduler="step", step_size=1, gamma=0.5, epochs=2)
    rows = lr_series(config, steps_per_epoch=1, group_lrs=[0.1, 0.01])
    assert [(r["group"], r["lr"]) for r in rows] == [(0, 0.1), (1, 0.01), (0, 0.05), (1, 0.005)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_warmup_epochs_compose_with_every_schedule(name):
    """Warmup + X = SequentialLR([LinearLR, X]) with the milestone in the schedule's units;
    warmup + a constant lr = LinearLR alone, which holds --lr once it is there."""
    params, make, per_step = CASES[name]
    warmup = 2
    config = TrainConfig(
        scheduler=name.split()[0],
        lr=0.1,
        epochs=EPOCHS,
        optimizer="sgd",
        warmup_epochs=warmup,
        **params,
    )
    got = [row["lr"] for row in lr_series(config, steps_per_epoch=STEPS)]
    milestone = warmup * STEPS if per_step else warmup

    def sequential(o):
        main = make(o)
        if name == "cosine":  # the default T_max is what is left after the warmup
            main = lr_scheduler.CosineAnnealingLR(o, EPOCHS - warmup, 1e-4)
        if name == "onecycle":  # likewise its total steps
            total = (EPOCHS - warmup) * STEPS
            main = lr_scheduler.OneCycleLR(o, 0.5, total_steps=total, cycle_momentum=False)
        warm = lr_scheduler.LinearLR(o, 0.01, 1.0, milestone)
        if main is None:
            return warm
        return lr_scheduler.SequentialLR(o, [warm, main], milestones=[milestone])

    assert got == pytest.approx(_oracle(sequential, per_step=per_step), rel=1e-12, abs=1e-15)
    if name in ("none", "constant"):  # from warmup_start_factor x lr up to --lr, then held
        assert got[0] == pytest.approx(0.001)
        assert got[milestone * (1 if per_step else STEPS) :] == pytest.approx([0.1] * 40)


def test_constant_warmup_ramps_like_linear_lr_then_holds():
    """The reported run: 0.001 at every epoch before the fix."""
    config = TrainConfig(scheduler="constant", lr=0.1, epochs=6, warmup_epochs=2)
    got = [row["lr"] for row in lr_series(config, steps_per_epoch=1)]
    assert got == pytest.approx([0.001, 0.0505, 0.1, 0.1, 0.1, 0.1], rel=1e-12)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"warmup_epochs": 3}, "a 3-epoch warmup is not shorter than the 3-epoch run"),
        ({"warmup_epochs": 20, "scheduler": "cosine"}, "20-epoch warmup .* 3-epoch run"),
        ({"warmup_epochs": 3, "scheduler": "constant"}, "the lr would never reach 0.1"),
        ({"warmup_steps": 12}, "a 12-step warmup is not shorter than the 12-step run"),
        ({"warmup_steps": 50, "scheduler": "onecycle"}, "50-step warmup .* 12-step run"),
    ],
)
def test_a_warmup_as_long_as_the_run_is_refused(params, message):
    """The lr would never reach --lr. train, prune's and QAT's fine-tuning check it too."""
    config = TrainConfig(**{"lr": 0.1, "epochs": 3, **params})
    with pytest.raises(UsageError, match=message) as refused:
        lr_series(config, steps_per_epoch=STEPS)
    assert "\n" not in str(refused.value) and "--warmup-" in refused.value.hint
    if "warmup_epochs" in params:  # refused before any data is loaded
        with pytest.raises(UsageError, match=message):
            check_schedule_flags(config)


@pytest.mark.parametrize("params", [{"warmup_epochs": 2}, {"warmup_steps": 11}])
def test_the_longest_warmup_allowed_reaches_the_lr_at_the_last_step(params):
    config = TrainConfig(scheduler="constant", lr=0.1, epochs=3, **params)
    got = [row["lr"] for row in lr_series(config, steps_per_epoch=STEPS)]
    last = STEPS if "warmup_epochs" in params else 1  # the last epoch's steps, or the last step
    assert got[-last:] == pytest.approx([0.1] * last) and got[-last - 1] < 0.1


def test_warmup_then_plateau_on_the_metric():
    """SequentialLR cannot hold a plateau: warmup runs its epochs, then the plateau takes the
    metric of every later epoch."""
    warmup, metrics = 3, [5.0, 4.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    config = TrainConfig(
        scheduler="plateau",
        lr=0.1,
        epochs=EPOCHS,
        optimizer="sgd",
        patience=1,
        warmup_epochs=warmup,
        warmup_start_factor=0.1,
    )
    got = [row["lr"] for row in lr_series(config, steps_per_epoch=STEPS, metrics=metrics)]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    warm = lr_scheduler.LinearLR(opt, 0.1, 1.0, warmup)
    plateau = None
    expected = []
    for epoch in range(EPOCHS):
        expected += [opt.param_groups[0]["lr"]] * STEPS
        if epoch < warmup:
            warm.step()
        else:
            plateau = plateau or lr_scheduler.ReduceLROnPlateau(opt, "min", 0.1, patience=1)
            plateau.step(metrics[epoch])
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[0] == pytest.approx(0.01) and min(got) < 0.1 / 5  # warmed up, then reduced


def test_explicit_step_interval_counts_epoch_parameters_in_steps():
    config = TrainConfig(scheduler="cosine", lr=0.1, epochs=EPOCHS, scheduler_interval="step")
    got = [row["lr"] for row in lr_series(config, steps_per_epoch=STEPS)]
    expected = _oracle(lambda o: lr_scheduler.CosineAnnealingLR(o, EPOCHS * STEPS), per_step=True)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_exponential_gamma_decays_per_epoch_when_the_schedule_steps_per_step():
    """A --warmup-steps made exponential step per step, and --gamma 0.5 halved the lr at every
    optimizer step (0.5 ** 4 per epoch here) instead of every epoch."""
    config = TrainConfig(scheduler="exponential", gamma=0.5, lr=0.1, epochs=EPOCHS)
    per_epoch = [row["lr"] for row in lr_series(config, steps_per_epoch=STEPS)]
    per_step = config.replace(scheduler_interval="step")
    got = [row["lr"] for row in lr_series(per_step, steps_per_epoch=STEPS)]
    expected = _oracle(lambda o: lr_scheduler.ExponentialLR(o, 0.5 ** (1 / STEPS)), per_step=True)
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[::STEPS] == pytest.approx(per_epoch[::STEPS], rel=1e-12)  # the same each epoch


def _increases(lrs):
    return [i for i in range(1, len(lrs)) if lrs[i] > lrs[i - 1] * (1 + 1e-9)]


def test_restart_steps_are_where_warm_restarts_jump():
    config = TrainConfig(
        scheduler="cosine-warm-restarts", lr=0.1, epochs=30, t_0=3, t_mult=2, warmup_epochs=2
    )
    lrs = [row["lr"] for row in lr_series(config, steps_per_epoch=STEPS)]
    events = schedule_events(config, steps_per_epoch=STEPS)
    assert events["warmup_end_step"] == 2 * STEPS
    jumps = [i for i in _increases(lrs) if i > events["warmup_end_step"]]
    assert (
        events["restart_steps"]
        == jumps
        == [(2 + 3) * STEPS, (2 + 3 + 6) * STEPS, (2 + 3 + 6 + 12) * STEPS]
    )


def test_restart_steps_of_cyclic_start_each_cycle_at_the_base_lr():
    config = TrainConfig(scheduler="cyclic", lr=0.1, epochs=6, step_size_up=3, warmup_steps=2)
    lrs = [row["lr"] for row in lr_series(config, steps_per_epoch=STEPS)]
    events = schedule_events(config, steps_per_epoch=STEPS)
    assert events["interval"] == "step" and events["warmup_end_step"] == 2
    assert events["restart_steps"] == list(range(2 + 6, EPOCHS * 2, 6))
    for step in events["restart_steps"]:
        assert lrs[step] == pytest.approx(0.1) and lrs[step + 1] > lrs[step]


def _momenta(optimizer, step_schedule, steps: int, key: str) -> list[float]:
    """Momentum (or Adam's beta1) of each of `steps` optimizer steps, stepping per step."""
    seen = []
    for _ in range(steps):
        value = optimizer.param_groups[0][key]
        seen.append(value[0] if key == "betas" else value)
        optimizer.step()
        step_schedule()
    return seen


def _optimizer(name: str) -> torch.optim.Optimizer:
    param = torch.zeros(1, requires_grad=True)
    param.grad = torch.zeros(1)
    if name == "sgd":
        return torch.optim.SGD([param], lr=0.1, momentum=0.5)
    return torch.optim.Adam([param], lr=0.1, betas=(0.5, 0.99))


@pytest.mark.parametrize(
    ("name", "optimizer", "flags"),
    [
        ("onecycle", "adam", {}),
        ("onecycle", "sgd", {"base_momentum": 0.6, "max_momentum": 0.7}),
        ("onecycle", "sgd", {"cycle_momentum": False}),
        ("cyclic", "sgd", {"max_momentum": 0.95}),
        ("cyclic", "sgd", {"cycle_momentum": False}),
    ],
)
def test_momentum_cycling_is_torchs_and_can_be_turned_off(name, optimizer, flags):
    """onecycle replaced --momentum 0.5 (and --betas' first) with torch's 0.85..0.95 cycle,
    with no way to keep it or to set the bounds."""
    config = TrainConfig(
        scheduler=name, lr=0.1, max_lr=0.4, epochs=EPOCHS, step_size_up=5, optimizer=optimizer,
        momentum=0.5 if optimizer == "sgd" else 0.0, betas=(0.5, 0.99), **flags,
    )  # fmt: skip
    key = "momentum" if optimizer == "sgd" else "betas"
    ours = _optimizer(optimizer)
    schedule = build_schedule(ours, config, steps_per_epoch=STEPS)
    got = _momenta(ours, schedule.step_batch, EPOCHS * STEPS, key)
    theirs = _optimizer(optimizer)
    if name == "onecycle":
        oracle = lr_scheduler.OneCycleLR(theirs, 0.4, total_steps=EPOCHS * STEPS, **flags)
    else:
        oracle = lr_scheduler.CyclicLR(theirs, 0.1, 0.4, step_size_up=5, **flags)
    assert got == pytest.approx(_momenta(theirs, oracle.step, EPOCHS * STEPS, key), rel=1e-12)
    if flags.get("cycle_momentum") is False:
        assert set(got) == {0.5}  # the user's own momentum, kept
    else:
        assert max(got) > 0.5


def _torch_onecycle(total: int, pct: float, three_phase: bool) -> list[float] | None:
    """OneCycleLR's lr over `total` steps and the step after the last, None where it divides
    by zero (at construction, or at a later step)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    try:
        sched = lr_scheduler.OneCycleLR(
            opt, 0.1, total_steps=total, pct_start=pct, three_phase=three_phase,
            cycle_momentum=False,
        )  # fmt: skip
        lrs = []
        for _ in range(total):
            lrs.append(opt.param_groups[0]["lr"])
            sched.step()
    except ZeroDivisionError:
        return None
    return lrs


def test_onecycle_phases_without_steps_are_refused_where_torch_fails_or_skips_them():
    """A too short phase: OneCycleLR divided by zero (`ptool train` at its last step, for a
    three-phase run), or skipped a phase, so the cycle does not run from max_lr / div_factor to
    that / final_div_factor. Refused naming --pct-start and the steps; the rest is torch's."""
    ends = (pytest.approx(0.1 / 25), pytest.approx(0.1 / 25 / 1e4))
    for total in range(1, 13):
        for pct in (0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 0.55, 0.6, 0.75, 0.9):
            for three_phase in (False, True):
                config = TrainConfig(
                    scheduler="onecycle", lr=0.1, epochs=1, pct_start=pct,
                    three_phase=three_phase, optimizer="sgd", cycle_momentum=False,
                )  # fmt: skip
                expected = _torch_onecycle(total, pct, three_phase)
                try:
                    got = [row["lr"] for row in lr_series(config, steps_per_epoch=total)]
                except UsageError as refused:
                    message = str(refused)
                    assert f"--pct-start {pct:g} " in message and f" {total} step" in message
                    assert "\n" not in message and "more steps" in message
                    assert expected is None or (expected[0], expected[-1]) != ends
                else:
                    assert expected is not None and got == pytest.approx(expected, rel=1e-12)
                    assert (got[0], got[-1]) == ends


def test_a_too_short_onecycle_phase_says_which_pct_start_fits():
    config = TrainConfig(scheduler="onecycle", epochs=1, pct_start=0.1)
    with pytest.raises(UsageError) as refused:
        lr_series(config, steps_per_epoch=10)
    assert str(refused.value) == (
        "--pct-start 0.1 leaves one of the phases of onecycle's 10 steps empty; "
        "give --pct-start between 0.1 and 1 (exclusive), or more steps"
    )
    with pytest.raises(UsageError, match="between 0.2 and 0.6 "):
        lr_series(config.replace(pct_start=0.6, three_phase=True), steps_per_epoch=5)
    with pytest.raises(UsageError, match="onecycle's 1 step empty; give more steps$"):
        lr_series(config, steps_per_epoch=1)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("onecycle", lambda o: lr_scheduler.OneCycleLR(o, 0.1, total_steps=12)),
        ("cyclic", lambda o: lr_scheduler.CyclicLR(o, 0.1, 1.0, step_size_up=2000)),
    ],
)
def test_onecycle_and_cyclic_give_every_group_the_same_lrs_as_train_builds_them(name, make):
    """One max_lr (and base_lr) for all groups, as _main_scheduler builds them: a checkpoint's
    groups equal torch's scheduler on an optimizer with those groups; per-group lrs, which
    the scheduler would overwrite, are refused rather than ignored."""
    config = TrainConfig(scheduler=name, lr=0.1, epochs=3, optimizer="sgd")
    rows = lr_series(config, steps_per_epoch=4, group_lrs=[0.1, 0.1])
    opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]} for _ in "ab"], lr=0.1)
    sched = make(opt)
    expected = []
    for _ in range(12):
        expected += [(group, g["lr"]) for group, g in enumerate(opt.param_groups)]
        sched.step()
    assert [r["group"] for r in rows] == [group for group, _ in expected]
    assert [r["lr"] for r in rows] == pytest.approx([lr for _, lr in expected], rel=1e-12)
    with pytest.raises(UsageError, match=f"^--group-lrs: {name} sets every parameter group's"):
        lr_series(config, steps_per_epoch=4, group_lrs=[0.1, 0.01])


@pytest.mark.parametrize("mode", ["min", "max"])
def test_plateau_counts_a_nan_metric_as_a_bad_epoch_as_torch_does(mode):
    """ReduceLROnPlateau compares nan as not better: a bad epoch. Skipping it kept the lr."""
    nan = float("nan")
    metrics = [1.0, nan, nan, 2.0, nan, nan, nan, 0.5, nan, nan, nan, nan]
    config = TrainConfig(
        scheduler="plateau", lr=0.1, epochs=EPOCHS, optimizer="sgd", patience=1, mode=mode
    )
    got = [row["lr"] for row in lr_series(config, steps_per_epoch=STEPS, metrics=metrics)]
    expected = _oracle(
        lambda o: lr_scheduler.ReduceLROnPlateau(o, mode, 0.1, patience=1),
        per_step=False,
        metrics=metrics,
    )
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[-1] < 0.1 / 100  # the nan epochs cut it


def test_an_epoch_without_a_metric_leaves_the_plateau_as_it_was():
    config = TrainConfig(scheduler="plateau", lr=0.1, epochs=3, patience=0)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    schedule = build_schedule(opt, config, steps_per_epoch=STEPS)
    schedule.step_epoch(1.0)
    for _ in range(3):
        schedule.step_epoch(None)
    assert schedule.plateau.num_bad_epochs == 0 and opt.param_groups[0]["lr"] == 0.1


def test_a_per_epoch_schedule_is_a_run_per_epoch_not_a_value_per_step():
    """1000 epochs of 10,000 steps: 1000 runs, the lrs of torch's scheduler stepped per epoch."""
    config = TrainConfig(scheduler="cosine", lr=0.1, epochs=1000)
    (runs,) = lr_runs(config, steps_per_epoch=10_000)
    assert runs.steps == list(range(0, 10_000_000, 10_000)) and set(runs.counts) == {10_000}
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = lr_scheduler.CosineAnnealingLR(opt, 1000)
    expected = []
    for _ in range(1000):
        expected.append(opt.param_groups[0]["lr"])
        sched.step()
    assert runs.lrs == pytest.approx(expected, rel=1e-12)


def test_equal_lrs_of_a_per_step_schedule_join_one_run():
    config = TrainConfig(scheduler="step", lr=0.1, epochs=4, step_size=2, warmup_steps=3)
    (runs,) = lr_runs(config, steps_per_epoch=STEPS)
    assert runs.counts == [1, 1, 1, 8, 5] and runs.steps == [0, 1, 2, 3, 11]  # StepLR: 8 steps
    assert [lr for _, lr in runs.rows()] == [r["lr"] for r in lr_series(config, steps_per_epoch=4)]


@pytest.mark.parametrize(
    ("params", "refused"),
    [
        ({"scheduler": "plateau", "scheduler_interval": "step"}, True),
        ({"scheduler": "plateau", "scheduler_interval": "step", "warmup_epochs": 1}, False),
        ({"scheduler": "plateau", "scheduler_interval": "step", "warmup_steps": 4}, False),
        ({"scheduler": "plateau", "scheduler_interval": "epoch"}, False),
        ({"scheduler": "cosine", "scheduler_interval": "step"}, False),
        ({"scheduler": "onecycle", "base_momentum": 0.9, "max_momentum": 0.8}, True),
        ({"scheduler": "onecycle", "base_momentum": 0.8, "max_momentum": 0.9}, False),
    ],
)
def test_train_and_lr_plot_refuse_the_same_schedule_combinations(params, refused):
    """plateau steps once per epoch on the metric: per step it steps nothing (a warmup, it
    ramps per step). Momentum bounds lowest first. One check for train and lr-plot."""
    from ptool.core.checks import check_given_schedule_options, check_schedule_options

    config = TrainConfig(epochs=3, **params)
    messages = []
    for check in (check_schedule_options, lambda c: check_given_schedule_options(c, params)):
        try:
            check(config)
        except UsageError as exc:
            messages.append(str(exc))
    assert len(messages) == (2 if refused else 0)
    if refused:
        assert messages[0] == messages[1] and "\n" not in messages[0]
