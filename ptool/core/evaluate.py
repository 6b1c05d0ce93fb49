"""Loss and metrics of a model over a dataset: the one evaluation every report uses.

Same metrics as the training engine's validation (`EpochMetrics`), so a figure printed by
`quantize`/`prune`/`eval` compares with the run's own `val/...` values. `ptool eval` adds
per-class precision/recall/F1 and support (from the confusion matrix) and the loop's speed;
`evaluate_checkpoints` rebuilds a checkpoint's model and data split.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from ptool.core.metrics import EpochMetrics, per_class_scores
from ptool.core.notices import quiet_upstream_notices
from ptool.core.optim import TaskLoss, build_loss, loss_sum

SPLITS = ("val", "train", "test", "all")


class Evaluation(NamedTuple):
    """`evaluate`'s result."""

    metrics: dict[str, float]  # "val/loss", "val/accuracy", ... as a run's validation
    confusion: list[list[int]] | None  # rows: true class, columns: predicted class
    per_class: list[dict[str, float]] | None  # precision, recall, f1, support per class
    samples: int
    batches: int
    seconds: float  # wall time of the whole loop (data, forward, metrics)
    batch_latency_ms: float  # median time of one batch's forward pass

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    info: Any,
    loss_fn: TaskLoss,
    device: torch.device | str = "cpu",
    *,
    precision: str = "fp32",
) -> Evaluation:
    """Every batch of `loader` once, in eval mode, without gradients (under autocast for
    --precision bf16/fp16, as the run's own validation computed)."""
    from ptool.core.runtime import autocast

    device = torch.device(device)
    metrics = EpochMetrics(info, device, "val")
    latencies: list[float] = []
    samples = 0
    was_training = model.training
    model.eval()
    began = time.perf_counter()
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            _sync(device)
            start = time.perf_counter()
            with autocast(device, precision):
                outputs = model(x)
            _sync(device)
            latencies.append(time.perf_counter() - start)
            with autocast(device, precision):
                loss = loss_fn(outputs, y)
            metrics.update(loss_fn.predictions(outputs), y, *loss_sum(loss_fn, outputs, y, loss))
            samples += len(y)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - began
    values, confusion = metrics.compute()
    rows = None
    if confusion is not None:
        per_class = per_class_scores(torch.tensor(confusion))
        scores = {name: value.tolist() for name, value in per_class.items()}
        rows = [
            {**{name: scores[name][i] for name in scores}, "support": sum(confusion[i])}
            for i in range(info.num_classes)
        ]
    latency = statistics.median(latencies) * 1000.0 if latencies else float("nan")
    return Evaluation(values, confusion, rows, samples, len(latencies), seconds, latency)


# --- which data a checkpoint is evaluated on ------------------------------------------------


class Evaluator:
    """A model's validation loss and metrics on the run's data (CPU, the run's batch size,
    under `precision`'s autocast): the before/after figures `prune` and `quantize` report."""

    def __init__(self, config: Any, data: Any, precision: str = "fp32"):
        self.config = config
        self.data = data
        self.loss_fn = build_loss(config, data.info)
        self.precision = precision

    def __call__(self, model: nn.Module) -> dict[str, float]:
        from ptool.core.data import make_loader

        cpu = torch.device("cpu")
        order = torch.arange(len(self.data.val))
        loader = make_loader(self.data.val, self.config, order, train=False, device=cpu)
        return evaluate(
            model, loader, self.data.info, self.loss_fn, cpu, precision=self.precision
        ).metrics


class _EachSample(Dataset):
    """A dataset read sample by sample through `apply` (image sources); module-level
    subclasses, so spawned DataLoader workers can unpickle them."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        return self.apply(*self.dataset[i])

    def apply(self, x: Any, y: Any) -> tuple[Any, Any]:
        raise NotImplementedError


class _Normalized(_EachSample):
    """Each input normalized with the checkpoint's mean/std."""

    def __init__(self, dataset: Dataset, mean: list[float], std: list[float]):
        super().__init__(dataset)
        self.mean, self.std = mean, std

    def apply(self, x, y):
        from ptool.core.data.transforms import normalize_tensor

        return normalize_tensor(x, self.mean, self.std), y


class _Relabeled(_EachSample):
    """Class label i becomes `index[i]`, the model's index for that class name."""

    def __init__(self, dataset: Dataset, index: list[int]):
        super().__init__(dataset)
        self.index = index

    def apply(self, x, y):
        return x, self.index[y]


def _with_run_normalization(dataset: Dataset, info: Any) -> Dataset:
    from ptool.core.data.transforms import normalize_tensor

    if info.mean is None:
        return dataset
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors
        return TensorDataset(normalize_tensor(x, info.mean, info.std), y)
    return _Normalized(dataset, info.mean, info.std)


def _in_the_models_terms(dataset: Dataset, found: Any, info: Any, data: str) -> Dataset:
    """A held-out source's samples as the model reads them: CSV columns matched by name (in
    any order, others dropped, as `ptool predict` matches them) and class labels by name (a
    source without some of the model's classes keeps the model's indices); a tensors file's
    labels are the model's indices."""
    from ptool.core.errors import UsageError

    expected, columns = info.feature_names, found.feature_names
    if expected and columns is not None and columns != expected:  # [] when none is there
        if missing := [name for name in expected if name not in columns]:
            raise UsageError(
                f"--data {data} has no column {', '.join(map(repr, missing))}; the model reads "
                f"{', '.join(expected)}"
            )
        x, y = dataset.tensors
        dataset = TensorDataset(x[:, [columns.index(name) for name in expected]], y)
    names, model_names = found.class_names, info.class_names
    if data.startswith("tensors:"):  # labels are class indices, whatever the model calls them
        names = None
    if names and model_names and names != model_names:
        if strangers := [name for name in names if name not in model_names]:
            raise UsageError(
                f"--data {data} has classes the model does not know: {', '.join(strangers)}; "
                f"the model's are {', '.join(model_names)}"
            )
        index = [model_names.index(name) for name in names]
        if isinstance(dataset, TensorDataset):
            x, y = dataset.tensors
            return TensorDataset(x, torch.tensor(index)[y])
        return _Relabeled(dataset, index)
    return dataset


def _test_split(config: Any, bundle: Any) -> Dataset:
    """The source's own test split: torchvision's test set, or an image folder's PATH/test."""
    from ptool.core.data.sources import parse_spec
    from ptool.core.data.vision import TORCHVISION
    from ptool.core.errors import UsageError

    spec = config.data
    if spec in TORCHVISION and config.val_split is None:
        return bundle.val  # without --val-split, validation IS the official test set
    if spec in TORCHVISION:
        from ptool.core.data import build_data

        return build_data(config.replace(val_split=None)).val
    prefix, path = parse_spec(spec)
    test_dir = Path(path or "") / "test"
    if prefix == "imagefolder" and test_dir.is_dir():
        from ptool.core.data.common import TransformedSubset
        from ptool.core.data.image_folder import VisibleImageFolder

        test = VisibleImageFolder(test_dir, mode="L" if bundle.info.input_shape[0] == 1 else "RGB")
        if list(test.classes) != list(bundle.info.class_names):
            raise UsageError(f"{test_dir} has classes {test.classes}, the run has other ones")
        return TransformedSubset(test, None, bundle.val.transform)
    raise UsageError(
        f"--data {spec} has no test split of its own",
        hint="use --split val, train or all, or --data SPEC naming a held-out source (with "
        "--split all, every sample of it)",
    )


def _joined(first: Dataset, second: Dataset) -> Dataset:
    """Both splits as one dataset; in-memory ones stay tensors (the fast loader)."""
    from torch.utils.data import ConcatDataset

    from ptool.core.data import is_in_memory

    if is_in_memory(first) and is_in_memory(second):
        return TensorDataset(
            *(torch.cat(pair) for pair in zip(first.tensors, second.tensors, strict=True))
        )
    return ConcatDataset([first, second])


def _refuse_changed_data(config: Any, info: Any, found: Any, split: str) -> None:
    """The run's own data must be what it trained on for its splits to be the run's; `all`
    only needs the same classes and inputs."""
    from ptool.core.data.info import data_changes
    from ptool.core.errors import PtoolError

    changes = data_changes(info, found)
    if split == "all":
        changes.pop("size", None)
    if not changes:
        return
    raise PtoolError(
        f"--data {config.data} is not the data this run trained on: " + "; ".join(changes.values()),
        hint="its seeded split would mix training samples into validation; --split all "
        "evaluates every sample as the data is now"
        if list(changes) == ["size"]
        else "evaluate it with a checkpoint trained on this data",
    )


def _tabular_for_images(data: str, info: Any) -> Exception:
    from ptool.core.errors import UsageError

    return UsageError(
        f"--data {data} is tabular; the model expects images of shape {info.input_shape}"
    )


def split_dataset(config: Any, info: Any, *, data: str | None = None, split: str = "val"):
    """The samples to evaluate, preprocessed exactly as the run's validation was.

    The run's own data (`data` None or the same spec) is rebuilt with its config: same seed,
    same split, same statistics. Another source is read without its own normalization and
    gets the checkpoint's mean/std; its columns and classes are matched to the model's by name.
    """
    from ptool.core.data import build_data
    from ptool.core.data.common import LabelsBeyondClasses, TabularImageSize
    from ptool.core.data.sources import PREFIXED, parse_spec
    from ptool.core.errors import UsageError, count, unknown_name

    if split not in SPLITS:
        raise unknown_name("--split", split, SPLITS)
    own = data is None or parse_spec(data) == parse_spec(config.data)  # `~/x` is /home/u/x
    if not own and info.is_image and data.startswith("csv:"):  # before its labels are read
        raise _tabular_for_images(data, info)
    data_config = config.replace(augment=[])  # every split with validation transforms
    if not own:
        changes: dict[str, Any] = {"data": data, "normalize": False, "num_classes": None}
        if info.target_name is not None:  # the run's default target was its file's last column
            changes["target"] = info.target_name
        if split == "all" and data.startswith(tuple(f"{prefix}:" for prefix in PREFIXED)):
            changes["val_split"] = 0.0  # read whole: no split, however few its samples
        if data.startswith(("csv:", "tensors:")):  # not guessed again: whole-number prices
            changes["task"] = info.task
            changes["num_classes"] = info.num_classes  # labels of fewer classes (even one);
            # other sources count their own (an image folder's subset is matched by name)
        if info.is_image and info.input_shape[1] == info.input_shape[2]:
            changes["image_size"] = info.input_shape[1]
        data_config = data_config.replace(**changes)
    grayscale = not own and info.is_image and info.input_shape[0] == 1  # an image folder in L
    try:
        columns = info.feature_names if not own else None  # other columns left, as predict does
        bundle = build_data(data_config, image_channels=1 if grayscale else 3, csv_columns=columns)
    except TabularImageSize:  # the model's image size, asked of a tabular source
        raise _tabular_for_images(data, info) from None
    except LabelsBeyondClasses as exc:  # the model's classes, not a flag eval does not have
        raise UsageError(
            f"{exc.source}: labels need {exc.needed} classes; the model has {exc.wanted}"
        ) from None
    if split == "test":
        dataset = _test_split(data_config, bundle)
    elif split == "all":  # a held-out file (`--data csv:other.csv`) as a whole
        dataset = _joined(bundle.train, bundle.val)
    else:
        dataset = bundle.val if split == "val" else bundle.train
    if own:
        _refuse_changed_data(config, info, bundle.info, split)
        return dataset
    found = bundle.info
    dataset = _in_the_models_terms(dataset, found, info, data)
    by_name = found.feature_names and info.feature_names  # the columns are the model's now
    if not by_name and list(found.input_shape) != list(info.input_shape):
        raise UsageError(
            f"--data {data} gives inputs of shape {list(found.input_shape)}; "
            f"the model expects {list(info.input_shape)}"
        )
    # held-out classes may be fewer than the model's; regression targets are the model's outputs
    fewer_ok = info.task == "classification"
    outputs_fit = (
        found.num_outputs <= info.num_outputs if fewer_ok else found.num_outputs == info.num_outputs
    )
    if found.task != info.task or not outputs_fit:
        raise UsageError(
            f"--data {data} is {found.task} with {count(found.num_outputs, 'output')}; "
            f"the model is {info.task} with {info.num_outputs}"
        )
    return _with_run_normalization(dataset, info)


# --- a checkpoint, end to end ---------------------------------------------------------------


def checkpoint_kind(ckpt: dict[str, Any]) -> str:
    if ckpt.get("quantization"):
        return "quantized"
    return "pruned" if ckpt.get("pruning") else "float"


def device_for(spec: str, quantized: bool) -> torch.device:
    """The --device to run on; quantized models have CPU kernels only."""
    from ptool.core.errors import UsageError
    from ptool.core.runtime import resolve_device

    if quantized:
        if spec not in ("auto", "cpu"):
            raise UsageError(
                f"--device {spec}: quantized checkpoints run on CPU only", hint="use --device cpu"
            )
        return torch.device("cpu")
    return resolve_device(spec)


def _preprocessing(info: Any) -> tuple:
    """What two checkpoints' models must share to be evaluated on the first one's samples."""
    return (
        info.task, list(info.input_shape), info.num_outputs, info.class_names, info.mean,
        info.std, info.feature_names,
    )  # fmt: skip


def evaluate_checkpoints(
    paths: list[str | Path],
    *,
    data: str | None = None,
    split: str = "val",
    device: str = "auto",
    batch_size: int | None = None,
    check_info: Callable[[Any], None] | None = None,
    ema: bool = False,
    download: bool = False,
) -> list[dict[str, Any]]:
    """One report per checkpoint, all on the first checkpoint's data split (same samples);
    `download` lets torchvision fetch the run's dataset.

    `check_info(data_info)` of the first checkpoint runs before any data is loaded, so a
    caller refuses what the task cannot give (a confusion matrix of a regression model) first.
    """
    from ptool.core.checkpoint import load_checkpoint
    from ptool.core.data import make_loader
    from ptool.core.errors import UsageError
    from ptool.core.optim import build_loss
    from ptool.core.restore import config_and_info, inference_precision, model_from_checkpoint

    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    with quiet_upstream_notices():
        ckpts = [load_checkpoint(path) for path in paths]
    infos = [config_and_info(ckpt, path) for ckpt, path in zip(ckpts, paths, strict=True)]
    config, info = infos[0]
    if check_info is not None:
        check_info(info)
    for path, (_, other) in zip(paths[1:], infos[1:], strict=True):
        if _preprocessing(other) != _preprocessing(info):
            raise UsageError(
                f"{path} was trained on other data or preprocessing than {paths[0]}",
                hint="--compare takes one run and its derived checkpoints (pruned, quantized)",
            )
    quantized = any(ckpt.get("quantization") for ckpt in ckpts)
    run_device = device_for(device, quantized)
    config = config.replace(download=download)
    if batch_size is not None:
        config = config.replace(batch_size=batch_size)
    dataset = split_dataset(config, info, data=data, split=split)
    loss_fn = build_loss(config, info).to(run_device)
    order = torch.arange(len(dataset))
    reports = []
    for path, ckpt, (own_config, _) in zip(paths, ckpts, infos, strict=True):
        loader = make_loader(dataset, config, order, train=False, device=run_device)
        precision = inference_precision(ckpt, own_config)
        with quiet_upstream_notices():
            model = model_from_checkpoint(ckpt, ema=ema).to(run_device)
            result = evaluate(model, loader, info, loss_fn, run_device, precision=precision)
        reports.append(
            {
                "checkpoint": str(path),
                "kind": checkpoint_kind(ckpt),
                "epoch": ckpt.get("epoch"),
                "data": data or config.data,
                "split": split,
                "task": info.task,
                "device": str(run_device),
                "batch_size": config.batch_size,
                "precision": precision,
                "weights": "ema" if ema else "model",
                "samples": result.samples,
                "metrics": {k.split("/", 1)[1]: v for k, v in result.metrics.items()},
                "per_class": result.per_class,
                "class_names": info.class_names,
                "confusion_matrix": result.confusion,
                "samples_per_s": result.samples_per_s,
                "batch_latency_ms": result.batch_latency_ms,
            }
        )
    first = reports[0]["metrics"]
    for report in reports[1:]:
        report["vs_first"] = {k: v - first[k] for k, v in report["metrics"].items() if k in first}
    return reports
