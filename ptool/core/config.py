"""The run configuration: one flat dataclass, the single truth for every `train` option.

Each field's default, help text and section live here; the `train` flags, the config-file
keys (`--config run.toml|yaml`), the JSON keys and the checkpoint's `config` entry are all
derived from it, so one thing has one name everywhere (PyTorch's name where it has one).
Precedence: dataclass default < config file < command-line flag.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import shlex
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptool.core.errors import UsageError, first_line

SECTIONS = ("data", "model", "loss", "optimizer", "scheduler", "loop", "checkpoint", "logging")


def _opt(default: Any, help: str, section: str, *, choices: tuple[str, ...] | None = None) -> Any:
    meta = {"help": help, "section": section, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a run needs; saved whole in every checkpoint and in the run directory."""

    # data -------------------------------------------------------------------------------
    data: str = _opt(
        "digits",
        "Data source: digits, synthetic, mnist, fashion-mnist, kmnist, cifar10, cifar100, svhn, "
        "imagefolder:PATH, csv:PATH or tensors:PATH.pt.",
        "data",
    )
    data_dir: str = _opt("data", "Root folder of torchvision datasets.", "data")
    download: bool = _opt(False, "Allow torchvision to download a dataset into --data-dir.", "data")
    shape: str = _opt(
        "3x32x32", "Synthetic sample shape: CxHxW for images, N for N tabular features.", "data"
    )
    samples: int = _opt(2048, "Number of synthetic samples.", "data")
    num_classes: int | None = _opt(
        None, "Number of classes (synthetic: default 10; otherwise read from the data).", "data"
    )
    target: str | None = _opt(None, "CSV target column (default: the last column).", "data")
    task: str = _opt("auto", "Task type.", "data", choices=("auto", "classification", "regression"))
    val_split: float | None = _opt(
        None,
        "Fraction held out for validation (seeded); default: the dataset's own test split, "
        "or 0.2 where it has none.",
        "data",
    )
    data_seed: int | None = _opt(
        None,
        "Seed of the validation split and of synthetic data (default: the run's --seed); "
        "fixes the split across seeds.",
        "data",
    )
    image_size: int | None = _opt(
        None, "Resize images to this size (imagefolder: default 64).", "data"
    )
    normalize: bool = _opt(
        True, "Normalize inputs with the dataset's known or computed statistics.", "data"
    )
    augment: list[str] = _opt(
        [],
        "Training augmentations: crop, flip, resized-crop, color-jitter (comma-separated).",
        "data",
    )
    crop_padding: int = _opt(4, "Padding of the 'crop' augmentation (RandomCrop).", "data")
    flip_p: float = _opt(0.5, "Probability of the 'flip' augmentation.", "data")
    resized_crop_scale: tuple[float, float] = _opt(
        (0.08, 1.0), "Scale range of 'resized-crop' (RandomResizedCrop).", "data"
    )
    color_jitter: float = _opt(
        0.4, "Brightness/contrast/saturation strength of 'color-jitter'.", "data"
    )
    batch_size: int = _opt(64, "Samples per batch (per process under DDP).", "data")
    shuffle: bool = _opt(True, "Reshuffle the training data every epoch.", "data")
    num_workers: int | None = _opt(
        None, "DataLoader worker processes (default: 0 for in-memory data, else up to 4).", "data"
    )
    pin_memory: bool | None = _opt(None, "Pin host memory (default: on with CUDA).", "data")
    drop_last: bool = _opt(False, "Drop the last incomplete training batch.", "data")
    persistent_workers: bool = _opt(False, "Keep DataLoader workers alive between epochs.", "data")

    # model ------------------------------------------------------------------------------
    model: str = _opt(
        "cnn", "Model: mlp, cnn, torchvision:NAME, or your factory module.path:function.", "model"
    )
    hidden: list[int] = _opt([256, 128], "Hidden layer widths of the mlp.", "model")
    channels: list[int] = _opt([32, 64], "Conv block widths of the cnn.", "model")
    activation: str = _opt(
        "relu",
        "Activation.",
        "model",
        choices=("relu", "tanh", "sigmoid", "gelu", "swish", "prelu"),
    )
    norm: str = _opt(
        "batch",
        "Normalization layers (mlp: batch|layer|none, cnn: batch|group|layer|none).",
        "model",
        choices=("batch", "layer", "group", "none"),
    )
    dropout: float = _opt(0.0, "Dropout probability.", "model")
    init: str = _opt(
        "default",
        "Weight initialization.",
        "model",
        choices=(
            "default",
            "xavier-uniform",
            "xavier-normal",
            "kaiming-uniform",
            "kaiming-normal",
            "orthogonal",
        ),
    )
    grad_checkpoint: int = _opt(
        0, "Gradient checkpointing segments (torch.utils.checkpoint); 0 turns it off.", "model"
    )

    # loss -------------------------------------------------------------------------------
    loss: str = _opt(
        "auto",
        "Loss (auto: cross-entropy for classification, mse for regression).",
        "loss",
        choices=("auto", "cross-entropy", "mse", "bce-with-logits"),
    )
    class_weights: list[float] | None = _opt(None, "Cross-entropy class weights.", "loss")
    label_smoothing: float = _opt(0.0, "Cross-entropy label smoothing.", "loss")
    pos_weight: list[float] | None = _opt(None, "BCE-with-logits positive weights.", "loss")

    # optimizer --------------------------------------------------------------------------
    optimizer: str = _opt(
        "adamw", "Optimizer.", "optimizer", choices=("sgd", "adam", "adamw", "rmsprop")
    )
    lr: float = _opt(1e-3, "Learning rate.", "optimizer")
    momentum: float = _opt(0.0, "Momentum (sgd, rmsprop).", "optimizer")
    dampening: float = _opt(0.0, "Dampening for momentum (sgd).", "optimizer")
    nesterov: bool = _opt(False, "Nesterov momentum (sgd).", "optimizer")
    weight_decay: float | None = _opt(
        None, "Weight decay (default: the optimizer's own, 0.01 for adamw, else 0).", "optimizer"
    )
    betas: tuple[float, float] = _opt((0.9, 0.999), "Adam betas.", "optimizer")
    eps: float = _opt(
        1e-8, "Term added for numerical stability (adam, adamw, rmsprop).", "optimizer"
    )
    alpha: float = _opt(0.99, "Smoothing constant (rmsprop).", "optimizer")
    no_decay_norm_bias: bool = _opt(
        False,
        "Put norm weights and biases in a parameter group without weight decay.",
        "optimizer",
    )

    # scheduler --------------------------------------------------------------------------
    scheduler: str = _opt(
        "none",
        "Learning-rate schedule.",
        "scheduler",
        choices=(
            "none",
            "constant",
            "step",
            "multistep",
            "exponential",
            "cosine",
            "cosine-warm-restarts",
            "onecycle",
            "plateau",
            "linear",
            "polynomial",
            "cyclic",
        ),
    )
    scheduler_interval: str = _opt(
        "auto",
        "Step the schedule per epoch or per step (auto: as the schedule needs).",
        "scheduler",
        choices=("auto", "epoch", "step"),
    )
    step_size: int = _opt(30, "Period of the step schedule.", "scheduler")
    gamma: float = _opt(
        0.1, "Multiplicative decay (step, multistep; exponential's per epoch).", "scheduler"
    )
    milestones: list[int] = _opt([], "Milestones of the multistep schedule.", "scheduler")
    t_max: int | None = _opt(None, "Cosine half-period (default: the whole run).", "scheduler")
    schedule_epochs: int | None = _opt(
        None,
        "Epochs the cosine or onecycle schedule is planned over (default: --epochs; a run "
        "extended by `ptool resume --epochs` without --reschedule keeps its plan's).",
        "scheduler",
    )
    eta_min: float = _opt(0.0, "Minimum learning rate (cosine schedules).", "scheduler")
    t_0: int = _opt(10, "First restart period (cosine-warm-restarts).", "scheduler")
    t_mult: int = _opt(1, "Restart period multiplier (cosine-warm-restarts).", "scheduler")
    max_lr: float | None = _opt(
        None,
        "Peak learning rate (onecycle, cyclic; default: --lr x 10 for cyclic, --lr for onecycle).",
        "scheduler",
    )
    pct_start: float = _opt(0.3, "Fraction of the cycle spent increasing (onecycle).", "scheduler")
    anneal_strategy: str = _opt(
        "cos", "Annealing (onecycle).", "scheduler", choices=("cos", "linear")
    )
    div_factor: float = _opt(25.0, "Initial lr = max_lr / div_factor (onecycle).", "scheduler")
    final_div_factor: float = _opt(
        1e4, "Final lr = initial lr / final_div_factor (onecycle).", "scheduler"
    )
    three_phase: bool = _opt(False, "Three-phase onecycle.", "scheduler")
    factor: float = _opt(0.1, "Reduction factor (plateau).", "scheduler")
    patience: int = _opt(10, "Epochs without improvement before reducing (plateau).", "scheduler")
    threshold: float = _opt(1e-4, "Improvement threshold (plateau).", "scheduler")
    cooldown: int = _opt(0, "Epochs to wait after a reduction (plateau).", "scheduler")
    min_lr: float = _opt(0.0, "Lower bound on the learning rate (plateau).", "scheduler")
    start_factor: float = _opt(1.0 / 3, "Start factor (linear).", "scheduler")
    end_factor: float = _opt(1.0, "End factor (linear).", "scheduler")
    total_iters: int = _opt(5, "Iterations of decay (linear, polynomial).", "scheduler")
    power: float = _opt(1.0, "Power (polynomial).", "scheduler")
    step_size_up: int = _opt(2000, "Steps in the increasing half of a cycle (cyclic).", "scheduler")
    cyclic_mode: str = _opt(
        "triangular",
        "Cyclic policy.",
        "scheduler",
        choices=("triangular", "triangular2", "exp_range"),
    )
    cyclic_gamma: float = _opt(
        1.0,
        "exp_range's decay: the cycle's amplitude is scaled by gamma**step (CyclicLR's gamma).",
        "scheduler",
    )
    cycle_momentum: bool = _opt(
        True,
        "Cycle the momentum (Adam's beta1) inversely to the lr, replacing --momentum / --betas' "
        "first (onecycle; cyclic: SGD and RMSprop with momentum).",
        "scheduler",
    )
    base_momentum: float | None = _opt(
        None,
        "Lowest momentum of the cycle (default: torch's, 0.85 onecycle, 0.8 cyclic).",
        "scheduler",
    )
    max_momentum: float | None = _opt(
        None,
        "Highest momentum of the cycle (default: torch's, 0.95 onecycle, 0.9 cyclic).",
        "scheduler",
    )
    warmup_epochs: int = _opt(0, "Linear warmup epochs, composed with any schedule.", "scheduler")
    warmup_steps: int = _opt(0, "Linear warmup steps, composed with any schedule.", "scheduler")
    warmup_start_factor: float = _opt(
        0.01,
        "Warmup starts at this factor x the schedule's first lr (--lr; for onecycle "
        "--max-lr / --div-factor).",
        "scheduler",
    )

    # loop -------------------------------------------------------------------------------
    epochs: int = _opt(10, "Number of epochs.", "loop")
    accumulate: int = _opt(1, "Gradient accumulation steps (loss divided by N).", "loop")
    clip_norm: float | None = _opt(None, "Clip the gradients' total norm.", "loop")
    clip_value: float | None = _opt(None, "Clip each gradient value.", "loop")
    precision: str = _opt(
        "fp32",
        "Autocast precision (fp16 also scales the loss with a GradScaler).",
        "loop",
        choices=("fp32", "bf16", "fp16"),
    )
    channels_last: bool = _opt(False, "Use the channels_last memory format.", "loop")
    compile: bool = _opt(False, "torch.compile the model (opt-in).", "loop")
    ema: float | None = _opt(
        None, "Keep an exponential moving average of the weights with this decay.", "loop"
    )
    early_stop_patience: int | None = _opt(
        None, "Stop after this many epochs in a row without improvement of --monitor.", "loop"
    )
    monitor: str = _opt("val/loss", "Metric for early stopping and best.pt.", "loop")
    mode: str = _opt(
        "auto",
        "Whether --monitor should go down or up (auto: min for losses).",
        "loop",
        choices=("auto", "min", "max"),
    )
    min_delta: float = _opt(0.0, "Smallest change of --monitor that counts.", "loop")
    on_nonfinite: str = _opt(
        "stop", "What to do with a NaN/Inf loss.", "loop", choices=("stop", "skip", "rollback")
    )
    seed: int | None = _opt(
        None, "Seed Python, NumPy, torch and data order (default: random, recorded).", "loop"
    )
    deterministic: bool = _opt(
        False, "Use deterministic algorithms (bit-identical reruns).", "loop"
    )
    device: str = _opt("auto", "auto, cpu, cuda, cuda:N or mps.", "loop")
    init_from: str | None = _opt(
        None, "Start from a checkpoint's weights only (fine-tuning).", "loop"
    )
    strict: bool = _opt(True, "With --init-from: require every key to match.", "loop")

    # checkpoint -------------------------------------------------------------------------
    out: str | None = _opt(None, "Run directory.", "checkpoint")
    save_every_steps: int | None = _opt(
        None, "Also write last.pt every N optimizer steps (resumes mid-epoch).", "checkpoint"
    )
    save_top_k: int = _opt(1, "Keep the K best checkpoints by --monitor.", "checkpoint")
    keep_last: int | None = _opt(
        None, "Also keep the K most recent epoch checkpoints (epoch-N.pt).", "checkpoint"
    )

    # logging ----------------------------------------------------------------------------
    tensorboard: bool = _opt(True, "Write TensorBoard logs to the run directory.", "logging")
    log_every_steps: int = _opt(
        10, "Log the training loss every N steps (lr: every step).", "logging"
    )
    log_histograms: bool = _opt(False, "Log weight and gradient histograms every epoch.", "logging")
    log_graph: bool = _opt(False, "Log the model graph to TensorBoard.", "logging")
    progress: str = _opt(
        "auto",
        "tqdm progress bars (auto: only when stderr is a terminal).",
        "logging",
        choices=("auto", "on", "off"),
    )

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (tuples become lists) so `torch.load(weights_only=True)` reads it."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build a config from (possibly partial) values, converting and checking each one.
        An empty text stays (a checkpoint of an older ptool, which took `--init-from ''` as
        none); a flag's or a config file's is refused earlier, where `convert` reads it."""
        return cls(
            **{
                name: convert(name, value, source=source, empty=True)
                for name, value in values.items()
            }
        )

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def batches_per_epoch(self, samples: int) -> int:
        """Training batches in an epoch of `samples` (per process under DDP)."""
        return batch_count(samples, self.batch_size, drop_last=self.drop_last)

    def stops_early(self, epochs_without_improvement: int) -> bool:
        """Whether --early-stop-patience P ends the run now: after P epochs in a row without
        an improvement; P = 0 stops at the first one (as Keras and Lightning count)."""
        patience = self.early_stop_patience
        return patience is not None and epochs_without_improvement >= max(1, patience)

    def check_full_batch(self, samples: int) -> None:
        """--drop-last with fewer samples than a batch leaves epochs with no step at all."""
        if self.drop_last and 0 < samples < self.batch_size:
            raise UsageError(
                f"{samples} training samples make no full batch of {self.batch_size}, and "
                "--drop-last drops the short one: an epoch would have no step",
                hint=f"give --batch-size {samples} or less, or drop --drop-last",
            )

    def steps_per_epoch(self, samples: int) -> int:
        """Optimizer steps in an epoch of `samples`: batches in groups of --accumulate, the
        last group stepping even when short."""
        return -(-self.batches_per_epoch(samples) // self.accumulate)


MOMENTUM_OPTIMIZERS = ("sgd", "rmsprop")  # the optimizers that take --momentum


def default_weight_decay(config: Any) -> float:
    """PyTorch's own default per optimizer: 0.01 for AdamW, 0 otherwise."""
    if config.weight_decay is not None:
        return config.weight_decay
    return 0.01 if config.optimizer == "adamw" else 0.0


def batch_count(samples: int, batch_size: int, *, drop_last: bool) -> int:
    """Batches of `batch_size` over `samples`, as a DataLoader counts them."""
    return samples // batch_size if drop_last else -(-samples // batch_size)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def field_type(name: str) -> Any:
    """The field's type with `None` removed from optionals: int, float, str, bool, list[int]..."""
    hint = _HINTS[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0]
    return hint


def is_optional(name: str) -> bool:
    hint = _HINTS[name]
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(
        None
    ) in typing.get_args(hint)


# Other tools' names for ptool's options (Keras, Lightning, Hugging Face): no close spelling.
OTHER_NAMES = {
    "learning_rate": "lr",
    "num_epochs": "epochs",
    "max_epochs": "epochs",
    "n_epochs": "epochs",
    "wd": "weight_decay",
    "bs": "batch_size",
    "optim": "optimizer",
    "lr_scheduler": "scheduler",
    "workers": "num_workers",
    "gradient_accumulation_steps": "accumulate",
    "accumulate_grad_batches": "accumulate",
    "max_grad_norm": "clip_norm",
    "gradient_clip_val": "clip_norm",
    "output_dir": "out",
}


def _unknown_key(name: str, source: str) -> UsageError:
    where = "" if source == "option" else f"{source}: "  # the Python API's own dict
    if name in SECTIONS:  # `loop: 3`: a group's name for one value
        return UsageError(
            f"{where}{name} is a group of options, not one",
            hint=f"write its options under it, e.g. {name}: {{...}}, or at the top level",
        )
    close = OTHER_NAMES.get(name) or next(iter(difflib.get_close_matches(name, FIELDS, n=1)), None)
    hint = f"did you mean {close!r}?" if close else "see `ptool train --help` for the options"
    return UsageError(f"{where}unknown option {name!r}", hint=hint)


def convert(name: str, value: Any, *, source: str = "config", empty: bool = False) -> Any:
    """Check and convert one value (from a file, a flag or a checkpoint) to the field's type.
    An empty text is refused unless `empty`: `--out ""` read as the current directory."""
    if name not in FIELDS:
        raise _unknown_key(name, source)
    flag = "--" + name.replace("_", "-")
    where = "" if source == "option" else f"{source}: "  # a flag names itself
    if value is None or (
        isinstance(value, str) and value.lower() in ("none", "null") and is_optional(name)
    ):
        if is_optional(name):
            return None
        raise UsageError(f"{where}{flag} needs a value")
    kind = field_type(name)
    origin = typing.get_origin(kind)
    try:
        if origin in (list, tuple):
            (item_type, *_) = typing.get_args(kind)
            if isinstance(value, str):  # "" is the empty list
                items = value.split(",") if value.strip() else []
                if any(not item.strip() for item in items):
                    raise ValueError("an empty item between commas")
            else:  # a single value in a config file (`hidden: 64`) is a one-item list
                items = list(value) if isinstance(value, (list, tuple)) else [value]
            items = [_scalar(item_type, x) for x in items]
            if origin is tuple:
                arity = len(typing.get_args(kind))
                if len(items) != arity:
                    raise ValueError(f"expected {arity} comma-separated values")
                return tuple(items)
            return items
        if kind is str and not empty and isinstance(value, str) and not value.strip():
            raise ValueError("an empty value names nothing")
        converted = _scalar(kind, value)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where}invalid value {_as_written(value)} for {flag}: {exc}") from None
    choices = FIELDS[name].metadata.get("choices")
    if choices and converted not in choices:
        raise UsageError(
            f"{where}invalid value {converted!r} for {flag}; valid: {', '.join(choices)}"
        )
    return converted


def as_flag(name: str, value: Any) -> str:
    """The command-line form of one value, ready to paste: `--no-shuffle`, `--channels 16,32`."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    if isinstance(value, (list, tuple)):
        return f"{flag} {shlex.quote(','.join(map(str, value)))}"
    return f"{flag} {'none' if value is None else shlex.quote(str(value))}"


def _as_written(value: Any) -> str:
    """A value in a message as a config file writes it: `true`, `[1]`, `'x'`."""
    if isinstance(value, (bool, list, dict)):
        return json.dumps(value, default=str)  # a YAML date: 2024-01-01
    return repr(value)


def _scalar(kind: type, value: Any) -> Any:
    """One value of a field, or one item of a list field, without Python's lax casts: a
    fraction is not an int (`int(1.5)` is 1) and a YAML `true` is not a number."""
    expected = {int: "an integer", float: "a number", str: "text"}.get(kind, "a value")
    if isinstance(value, (list, tuple, dict)):  # float([1]): "float() argument must be ..."
        raise ValueError(
            f"expected {expected}, not a {'table' if isinstance(value, dict) else 'list'}"
        )
    if isinstance(value, str):
        value = value.strip()
    if kind is bool:
        if isinstance(value, str):
            lowered = value.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError("expected true or false")
            return lowered in ("true", "1", "yes", "on")
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise ValueError("expected true or false")
        return bool(value)
    if isinstance(value, bool) and kind in (int, float):
        raise ValueError(f"expected {expected}")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError("expected an integer")
    try:
        return kind(value)
    except ValueError:  # int("x"): "invalid literal for int() with base 10"
        raise ValueError("expected an integer" if kind is int else "expected a number") from None


def _in_interval(value: float, interval: str) -> bool:
    """Comparisons that hold inside: nan fails them all, and inf the open end of `[0, inf)`."""
    low, high = (float(x) for x in interval[1:-1].split(","))
    above = low < value if interval[0] == "(" else low <= value
    below = value < high if interval[-1] == ")" else value <= high
    return above and below


def _describe(interval: str, value: float) -> str:
    """'positive', 'at least 1' or 'in (0, 1]'; unbounded floats say they must be finite."""
    low, high = interval[1:-1].split(", ")
    if high != "inf":
        return f"in {interval}"
    finite = "finite and " if isinstance(value, float) else ""
    return finite + ("positive" if interval == "(0, inf)" else f"at least {low}")


def check_interval(name: str, value: Any, interval: str) -> None:
    """Refuse a value (or any item of a list) outside `interval`, written like `(0, 1]`: the
    flag, the valid range and the value, in one line. None (unset) passes."""
    values = value if isinstance(value, (list, tuple)) else [value]
    for item in values:
        if item is not None and not _in_interval(item, interval):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} must be {_describe(interval, item)}, got {item}")


def _twice(path: Path, key: Any, where: str = "") -> UsageError:
    """A key a parser would silently overwrite with its second value."""
    return UsageError(f"{path}: {key} is given twice{where}", hint="keep one of them")


def _unique_keys(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise _twice(path, key)
    return dict(pairs)


def _unique_keys_yaml_loader(path: Path) -> type:
    """PyYAML's SafeLoader, refusing a key repeated in one mapping (it keeps the last); a key
    that overrides one merged in with `<<: *anchor` is what merging is for, so it passes."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):  # noqa: ANN001 - PyYAML's API
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, typing.Hashable):
                    continue  # PyYAML refuses it itself
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise _twice(path, key, f" (lines {lines[key]} and {line})")
                lines[key] = line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML, YAML or JSON config, each value converted and checked; keys may sit at the top
    level or under section tables."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(
            f"config file {path} is a directory",
            hint=f"give a file, e.g. {path / 'config.yaml'} (a run directory's resolved config)",
        )
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    suffix = path.suffix.lower()  # run.JSON, X.TOML
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is fine
        if suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.load(text, Loader=_unique_keys_yaml_loader(path)) or {}
        elif suffix == ".json":  # what `--print-config --json` prints
            import json

            raw = json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(pairs, path))
        elif suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            raw = tomllib.loads(text)
        else:
            raise UsageError(f"config file must be .toml, .yaml, .yml or .json: {path}")
    except UsageError:
        raise
    except Exception as exc:  # the parsers' own error types differ; YAML's span five lines
        problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        detail = f"{problem}{where}" if problem else first_line(exc)
        raise UsageError(f"cannot parse {path}: {detail}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected a table of options at the top level")
    flat: dict[str, Any] = {}
    places: dict[str, str] = {}  # where each option was found, to refuse a second one

    def take(name: str, value: Any, place: str) -> None:
        if name in places:  # one of the two would silently win
            raise UsageError(
                f"{path}: {name} is given twice: as {places[name]} and as {place}",
                hint="keep one of them",
            )
        flat[name], places[name] = value, place

    for written, value in raw.items():
        key = str(written).replace("-", "_")  # YAML reads `1:` and `on:` as an int and a bool
        if key in SECTIONS and isinstance(value, dict):
            for spelled, item in value.items():
                name = str(spelled).replace("-", "_")
                home = FIELDS[name].metadata["section"] if name in FIELDS else key
                if home != key:  # a misplaced option would be read as if it were right
                    raise UsageError(
                        f"{path}: {name} belongs under [{home}], not [{key}]",
                        hint=f"move it to [{home}] or to the top level",
                    )
                take(name, item, f"{spelled} under [{key}]")
        else:
            take(key, value, f"{written} at the top level")
    from ptool.core.checks import check_file_values

    values = {name: convert(name, value, source=str(path)) for name, value in flat.items()}
    check_file_values(values, str(path))
    return values


def resolve_config(
    config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults < config file < flags: each value converted to its option's type, a file's
    also range-checked (naming the file); `check_config` and `fit` check the whole."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(read_config_file(config_file))
    values.update(overrides or {})  # the file's are converted: a refusal now is an override's
    return TrainConfig.from_dict(values, source="option")
