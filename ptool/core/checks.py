"""The run config's checks that no type conversion makes: train, prune's fine-tune and QAT
refuse bad flags with them before any data is loaded (`check_config`), and a --monitor the
data's task does not log once its facts are known (`check_monitor`)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from ptool.core.config import (
    MOMENTUM_OPTIMIZERS,
    TrainConfig,
    as_flag,
    check_interval,
    default_weight_decay,
)
from ptool.core.errors import UsageError, count

# Options a type check cannot refuse, with their valid intervals (lists: item by item);
# schedule options are checked with the schedule (RANGES).
LIMITS: dict[str, str] = {
    **dict.fromkeys(
        ("batch_size", "accumulate", "epochs", "log_every_steps", "save_every_steps",
         "keep_last", "samples", "num_classes", "image_size", "hidden", "channels"),
        "[1, inf)",
    ),
    **dict.fromkeys(
        ("num_workers", "grad_checkpoint", "crop_padding", "color_jitter", "momentum",
         "dampening", "weight_decay", "eps", "alpha", "early_stop_patience", "min_delta",
         "save_top_k", "class_weights", "pos_weight"),
        "[0, inf)",
    ),
    **dict.fromkeys(("flip_p", "dropout", "label_smoothing"), "[0, 1]"),
    "resized_crop_scale": "(0, 1]",
    "val_split": "(0, 1)",
    "betas": "[0, 1)",  # Adam's own bounds
    "ema": "(0, 1)",
    "clip_norm": "(0, inf)",
    "clip_value": "(0, inf)",
    # what numpy takes as a seed (torch wraps larger ones: 2**32 trained as seed 0)
    **dict.fromkeys(("seed", "data_seed"), "[0, 4294967296)"),
}  # fmt: skip


# Every numeric schedule parameter: its valid interval (PyTorch's own where its scheduler checks
# one, e.g. LinearLR's factors) and the schedules that read it (None: all). One table, so
# `train` and `lr-plot` refuse the same values with the same one-line message.
RANGES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "lr": ("(0, inf)", None),
    "epochs": ("[1, inf)", None),
    "warmup_epochs": ("[0, inf)", None),
    "warmup_steps": ("[0, inf)", None),
    "warmup_start_factor": ("(0, 1]", None),  # LinearLR's start_factor
    "max_lr": ("(0, inf)", ("onecycle", "cyclic")),
    "step_size": ("[1, inf)", ("step",)),
    "gamma": ("(0, inf)", ("step", "multistep", "exponential")),
    "t_max": ("[1, inf)", ("cosine",)),
    "schedule_epochs": ("[1, inf)", ("cosine", "onecycle")),
    "eta_min": ("[0, inf)", ("cosine", "cosine-warm-restarts")),
    "t_0": ("[1, inf)", ("cosine-warm-restarts",)),
    "t_mult": ("[1, inf)", ("cosine-warm-restarts",)),
    "pct_start": ("(0, 1)", ("onecycle",)),
    "div_factor": ("(0, inf)", ("onecycle",)),  # OneCycleLR divides by both
    "final_div_factor": ("(0, inf)", ("onecycle",)),
    "start_factor": ("(0, 1]", ("linear",)),  # LinearLR's own bounds
    "end_factor": ("[0, 1]", ("linear",)),
    "total_iters": ("[1, inf)", ("linear", "polynomial")),
    "power": ("[0, inf)", ("polynomial",)),  # a negative power divides by zero at the end
    "step_size_up": ("[1, inf)", ("cyclic",)),
    "cyclic_gamma": ("(0, inf)", ("cyclic",)),  # exp_range only: check_schedule_options
    "base_momentum": ("[0, 1)", ("onecycle", "cyclic")),  # Adam's beta1 bounds
    "max_momentum": ("[0, 1)", ("onecycle", "cyclic")),
    "factor": ("(0, 1)", ("plateau",)),
    "patience": ("[0, inf)", ("plateau",)),
    "threshold": ("[0, inf)", ("plateau",)),
    "cooldown": ("[0, inf)", ("plateau",)),
    "min_lr": ("[0, inf)", ("plateau",)),
}


def check_config(config: TrainConfig) -> None:
    """Values no type check catches, refused before any data is loaded."""
    from ptool.core.schedules import check_schedule_flags

    check_overrides({name: getattr(config, name) for name in LIMITS})
    check_schedule_flags(config)  # the schedule's own, before any data or model is built
    if config.grad_checkpoint == 1:
        raise UsageError(
            "--grad-checkpoint 1 checkpoints nothing: the last of the K segments keeps its "
            "activations (as in torch.utils.checkpoint.checkpoint_sequential)",
            hint="give 2 or more segments, or 0 to turn it off",
        )
    low, high = config.resized_crop_scale
    if low > high:
        raise UsageError(f"--resized-crop-scale {low:g},{high:g}: the lower bound comes first")


def check_file_values(values: dict[str, Any], path: str) -> None:
    """A config file's values against LIMITS and RANGES, refused naming the file (the flags'
    own checks come later, once the whole config is known, and could not say where)."""
    for name, value in values.items():
        interval = LIMITS.get(name) or RANGES.get(name, (None,))[0]
        if interval:
            try:
                check_interval(name, value, interval)
            except UsageError as exc:
                raise UsageError(f"{path}: {exc}") from None


def check_overrides(overrides: dict[str, Any]) -> None:
    """The LIMITS of the values given; alone, for a command that loads a checkpoint before it
    has a whole config (a resume): a bad flag is refused before anything is read."""
    for name, value in overrides.items():
        if name in LIMITS:
            check_interval(name, value, LIMITS[name])


def check_monitor(config: TrainConfig, info: Any) -> None:
    """--monitor names a metric the run logs (for the data's task, with --ema or not)."""
    from ptool.core.metrics import metric_names

    valid = metric_names(info, "train")[:1] + metric_names(info, "val")
    if info.task == "classification":
        valid.insert(1, "train/accuracy")
    if config.ema is not None:
        valid += metric_names(info, "val_ema")
    if config.monitor not in valid:
        ema_metric = config.ema is None and config.monitor in metric_names(info, "val_ema")
        raise UsageError(
            f"--monitor {config.monitor!r} is not a metric of this run; valid: {', '.join(valid)}",
            hint="val_ema/ metrics need --ema DECAY (e.g. --ema 0.999)" if ema_metric else None,
        )


def check_num_classes(config: TrainConfig, info: Any) -> None:
    """A new run's --num-classes is a classification's (a regression would ignore it), and
    every class has a name (a CSV names its classes by its labels), so eval and predict can
    name it. A held-out CSV of fewer labels is fine: eval matches them by name."""
    if info.task == "regression" and config.num_classes is not None:
        raise UsageError(
            f"--num-classes {config.num_classes} is for classification; {info.source} gives "
            f"this run regression targets ({count(info.num_outputs, 'output')})",
            hint="drop --num-classes, or give --task classification",
        )
    names = info.class_names
    if names is not None and info.num_classes is not None and len(names) < info.num_classes:
        raise UsageError(
            f"--num-classes {info.num_classes} is more than the {len(names)} classes that "
            f"{info.source} names ({', '.join(names)})",
            hint="drop --num-classes: the classes are the labels the data holds",
        )


def check_loss_options(config: TrainConfig, info: Any) -> None:
    """A loss's own options given with another loss (label smoothing on a regression run) are
    refused rather than ignored. For new runs only: a checkpoint an older ptool wrote with such
    an option still loads, resumes and fine-tunes (the loss ignores it)."""
    from ptool.core.optim import resolve_loss_name

    _refuse_loss_options(
        config,
        resolve_loss_name(config, info),
        switch="give --{kind} {owner}" if info.task == "classification" else None,
    )
    weights = config.class_weights
    if weights and not any(weights):  # an empty list: the loss says how many it needs
        raise UsageError(
            "--class-weights are all 0: no sample would count",
            hint="give the classes to learn a positive weight (0 leaves a class out)",
        )


def _refuse_loss_options(config: TrainConfig, loss: str, switch: str | None) -> None:
    _refuse_options_of_others(
        "loss",
        loss,
        {
            "--label-smoothing": (("cross-entropy",), config.label_smoothing != 0),
            "--class-weights": (("cross-entropy",), config.class_weights is not None),
            "--pos-weight": (("bce-with-logits",), config.pos_weight is not None),
        },
        switch=switch,
    )


def check_loss_targets(config: TrainConfig, data: Any) -> None:
    """bce-with-logits reads regression targets as probabilities: outside [0, 1] its loss
    has no minimum there and the run trains toward nothing (torch does not check). In-memory
    sources only: regression data always is."""
    from ptool.core.data.loader import is_in_memory
    from ptool.core.optim import resolve_loss_name

    if data.info.task != "regression" or resolve_loss_name(config, data.info) != "bce-with-logits":
        return
    for split in (data.train, data.val):
        if not is_in_memory(split) or not len(split):
            continue
        targets = split.tensors[1]
        low, high = float(targets.min()), float(targets.max())
        if low < 0 or high > 1:
            raise UsageError(
                f"--loss bce-with-logits needs targets in [0, 1] (probabilities); this data's "
                f"run from {low:g} to {high:g}",
                hint="use --loss mse, or scale the targets to [0, 1]",
            )


def check_new_run_options(config: TrainConfig) -> None:
    """The model's, data source's, named loss's, optimizer's and schedule's options, and those
    that shape another the run does not use, for a new run (train, `--print-config`): a
    checkpoint an older ptool wrote with such an option still resumes."""
    check_model_and_data_options(config)
    if config.loss != "auto":  # what the data decides for auto: checked once it is read
        _refuse_loss_options(config, config.loss, switch=None)
    check_optimizer_options(config)
    check_schedule_options(config)
    check_options_that_shape_another(config)


def check_options_that_shape_another(config: TrainConfig) -> None:
    """An option that only shapes another the run does not use (`--warmup-start-factor`
    without a warmup, `--no-strict` without `--init-from`, TensorBoard's extras with
    `--no-tensorboard`, `--dampening` or `--nesterov` without momentum, `--no-decay-norm-bias`
    without weight decay, `--persistent-workers` at `--num-workers 0`): refused rather than
    ignored, for new runs."""
    default = TrainConfig()
    tensorboard = ("TensorBoard, which --no-tensorboard turns off", "drop --no-tensorboard")
    momentum = ("SGD's momentum, at --momentum 0 here", "give --momentum")
    for name, (shapes, other_way), absent in (
        ("warmup_start_factor", ("a warmup", "give --warmup-epochs or --warmup-steps"),
         not (config.warmup_epochs or config.warmup_steps)),
        ("strict", ("--init-from's loading", "give --init-from"), config.init_from is None),
        ("log_every_steps", tensorboard, not config.tensorboard),
        ("log_histograms", tensorboard, not config.tensorboard),
        ("log_graph", tensorboard, not config.tensorboard),
        ("dampening", momentum, config.momentum == 0),
        ("nesterov", momentum, config.momentum == 0),
        ("no_decay_norm_bias", ("weight decay, at 0 here", "give --weight-decay"),
         default_weight_decay(config) == 0),
        ("persistent_workers", ("DataLoader workers, at --num-workers 0 here",
         "give --num-workers"), config.num_workers == 0),
    ):  # fmt: skip
        if getattr(config, name) != getattr(default, name) and absent:
            flag = as_flag(name, getattr(config, name)).split()[0]
            raise UsageError(f"{flag} shapes {shapes}", hint=f"drop {flag}, or {other_way}")
    if config.nesterov and config.dampening:  # torch's SGD refuses it as the run starts
        raise UsageError("--nesterov needs --dampening 0 (torch's SGD)", hint="drop one of them")


def check_model_and_data_options(config: TrainConfig) -> None:
    """An unknown model or data source (before `--print-config` prints it), and `--hidden`
    with the cnn, `--target` with digits, `--flip-p` without the flip: refused rather than
    ignored, as the loss's options are."""
    from ptool.core.data.sources import parse_spec
    from ptool.core.data.transforms import check_augment
    from ptool.core.data.vision import TORCHVISION
    from ptool.core.errors import unknown_name
    from ptool.core.models import MODELS, VALID_MODELS, check_torchvision_name

    if config.model not in MODELS and ":" not in config.model:
        raise unknown_name("model", config.model, VALID_MODELS)
    if config.model.startswith("torchvision:"):
        check_torchvision_name(config.model.partition(":")[2])
    prefix, _ = parse_spec(config.data)
    if config.data == "synthetic":
        from ptool.core.data.builtin import parse_shape

        parse_shape(config.shape)
    check_augment(config.augment, is_image=True)  # the names; the data's kind when it is read
    default = TrainConfig()

    def changed(name: str) -> bool:
        return getattr(config, name) != getattr(default, name)

    _refuse_options_of_others(
        "model",
        config.model,
        {
            "--hidden": (("mlp",), changed("hidden")),
            "--channels": (("cnn",), changed("channels")),
            "--norm": (("mlp", "cnn"), changed("norm")),
            "--dropout": (("mlp", "cnn"), changed("dropout")),
            # another model's activations are its own; --init still reads it for its gain
            "--activation": (("mlp", "cnn"), changed("activation") and config.init == "default"),
        },
    )
    if config.channels_last and config.model == "mlp":
        raise UsageError(
            "--channels-last lays out the inputs of convolutions; the mlp has none",
            hint="drop it",
        )
    if changed("target") and prefix != "csv":
        raise UsageError(f"--target names a CSV column; --data {config.data} has none")
    for name in ("data_dir", "download"):
        if changed(name) and config.data not in TORCHVISION:
            raise UsageError(
                f"{as_flag(name, getattr(config, name)).split()[0]} is for the torchvision "
                f"datasets ({', '.join(TORCHVISION)}); --data {config.data} is not one",
                hint="drop it",
            )
    if repeated := sorted({name for name in config.augment if config.augment.count(name) > 1}):
        raise UsageError(
            f"--augment names {', '.join(repeated)} more than once; each augmentation is "
            "applied once per name (two flips undo each other)",
            hint="name each augmentation once",
        )
    for name, augmentation in (
        ("crop_padding", "crop"),
        ("flip_p", "flip"),
        ("resized_crop_scale", "resized-crop"),
        ("color_jitter", "color-jitter"),
    ):
        if changed(name) and augmentation not in config.augment:
            flag = "--" + name.replace("_", "-")
            raise UsageError(
                f"{flag} sets the {augmentation} augmentation, which this run does not apply",
                hint=f"add {augmentation} to --augment, or drop {flag}",
            )


def check_optimizer_options(config: TrainConfig) -> None:
    """An optimizer's own options given with another (`--momentum` with adamw, `--betas` with
    sgd) are refused rather than ignored; for new runs only, as the loss's."""
    default = TrainConfig()
    _refuse_options_of_others(
        "optimizer",
        config.optimizer,
        {
            "--momentum": (MOMENTUM_OPTIMIZERS, config.momentum != default.momentum),
            "--dampening": (("sgd",), config.dampening != default.dampening),
            "--nesterov": (("sgd",), config.nesterov != default.nesterov),
            "--betas": (("adam", "adamw"), tuple(config.betas) != tuple(default.betas)),
            "--eps": (("adam", "adamw", "rmsprop"), config.eps != default.eps),
            "--alpha": (("rmsprop",), config.alpha != default.alpha),
        },
    )


def check_schedule_options(config: TrainConfig) -> None:
    """A schedule's own options given with another (`--gamma` with cosine) are refused rather
    than ignored; for new runs only, as the loss's."""
    default = TrainConfig()
    _refuse_schedule_options(config, lambda name: getattr(config, name) != getattr(default, name))
    _check_schedule_combinations(config)


def check_given_schedule_options(config: TrainConfig, given: Collection[str]) -> None:
    """check_schedule_options for the options a command line named: `ptool lr-plot` (a run's
    or checkpoint's config may hold another schedule's values, and `--compare` specs inherit
    the flags outside the quotes, so only a spec's own are checked there). The schedule's own
    options that contradict each other are refused wherever they come from, as train does."""
    _refuse_schedule_options(config, given.__contains__, switch="plot {owner}")
    _check_schedule_combinations(config)


def _check_schedule_combinations(config: TrainConfig) -> None:
    """The options of the run's schedule that make no sense together."""
    _check_momentum_bounds(config)
    warmup = config.warmup_epochs or config.warmup_steps
    if config.scheduler == "plateau" and config.scheduler_interval == "step" and not warmup:
        raise UsageError(
            f"--scheduler-interval step: plateau steps once per epoch on {config.monitor}, and "
            "with no warmup to ramp per step nothing would step per optimizer step; give "
            "--scheduler-interval auto"
        )


def _refuse_schedule_options(
    config: TrainConfig, is_set: Callable[[str], bool], *, switch: str = "give --{kind} {owner}"
) -> None:
    from ptool.core.schedules import option_readers

    _refuse_options_of_others(
        "scheduler",
        config.scheduler,
        {
            as_flag(name, getattr(config, name)).split()[0]: (readers, is_set(name))
            for name, readers in option_readers().items()
        },
        switch=switch,
    )
    cyclic = config.scheduler == "cyclic"
    if is_set("cyclic_gamma") and cyclic and config.cyclic_mode != "exp_range":
        raise UsageError(
            f"--cyclic-gamma decays exp_range's cycles; this run's --cyclic-mode is "
            f"{config.cyclic_mode}",
            hint="drop it, or give --cyclic-mode exp_range",
        )


def _check_momentum_bounds(config: TrainConfig) -> None:
    """--base-momentum / --max-momentum need a cycle to bound (schedules._momentum_cycle's rule
    in config terms), lowest first."""
    given = [n for n in ("base_momentum", "max_momentum") if getattr(config, n) is not None]
    if not given or config.scheduler not in ("onecycle", "cyclic"):
        return  # another schedule's: check_schedule_options says so
    flag = "--" + given[0].replace("_", "-")
    betas = config.optimizer in ("adam", "adamw") and config.scheduler == "onecycle"
    if not config.cycle_momentum:
        raise UsageError(f"{flag} bounds a momentum cycle; --no-cycle-momentum turns it off")
    if config.optimizer in ("adam", "adamw") and not betas:
        raise UsageError(f"{flag}: cyclic leaves Adam's betas alone; there is no cycle to bound")
    if not (betas or config.momentum > 0):
        raise UsageError(
            f"{flag}: {config.optimizer} at --momentum 0 has no momentum to cycle",
            hint="give --momentum, or drop it",
        )
    low, high = config.base_momentum, config.max_momentum
    if low is not None and high is not None and low > high:
        raise UsageError(f"--base-momentum {low:g} is above --max-momentum {high:g}")


def _refuse_options_of_others(
    kind: str,
    chosen: str,
    given: dict[str, tuple[tuple[str, ...], bool]],
    *,
    switch: str | None = "give --{kind} {owner}",
) -> None:
    """`given`: flag -> (the `kind`s that take it, whether it was set); `switch`: the other
    way out the hint offers, None when the choice is not the user's."""
    for flag, (owners, set_) in given.items():
        if set_ and chosen not in owners:
            *others, last = owners
            owner = f"{', '.join(others)} and {last} {kind}s" if others else f"{last} {kind}"
            raise UsageError(
                f"{flag} is an option of the {owner}; this run's is {chosen}",
                hint="drop it"
                + (f", or {switch.format(kind=kind, owner=owners[0])}" if switch else ""),
            )
