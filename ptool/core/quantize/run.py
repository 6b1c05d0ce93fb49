"""`ptool quantize`: checkpoint in, int8 checkpoint and a before/after report out.

The float model and its data come back from the checkpoint's saved config
(`restore.model_from_checkpoint`, `build_data`); every torch.ao call goes through `ao`.
QAT fine-tunes through the training engine's `fit()` with a hook that prepares the model
for QAT and a callback that freezes observers and batch-norm statistics.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptool.core import benchmark
from ptool.core import checkpoint as ckpt_io
from ptool.core.config import TrainConfig
from ptool.core.errors import PtoolError, UsageError
from ptool.core.quantize import ao
from ptool.core.quantize.options import (
    DEFAULT_OBSERVER,
    QAT_DEFAULTS,
    QuantizeOptions,
    check_options,
)


def refuse_quantized(ckpt: dict[str, Any], path: Path) -> None:
    recipe = ckpt.get("quantization")
    if recipe:
        raise UsageError(
            f"{path} is already quantized ({recipe.get('mode')}, {recipe.get('backend')})",
            hint="quantize the float checkpoint it was made from"
            + (f": {recipe['source']}" if recipe.get("source") else ""),
        )


def default_output(ckpt_path: Path, dtype: str) -> Path:
    """`<stem>.int8.pt` next to the input (`<stem>.fp16.pt` for --dtype float16)."""
    tag = "fp16" if dtype == "float16" else "int8"
    return ckpt_path.with_name(f"{ckpt_path.stem}.{tag}.pt")


def torchscript_path(output: Path) -> Path:
    return output.with_suffix(".torchscript.pt")


def _float_model(ckpt: dict[str, Any]) -> nn.Module:
    """The checkpoint's float model, with any pruning masks made permanent (plain weights)."""
    from ptool.core.prune.masks import make_permanent
    from ptool.core.restore import model_from_checkpoint

    # without gradient checkpointing: torch.fx cannot trace its segments (QAT trains through
    # them), and an int8 model has no backward pass to save memory in
    model = model_from_checkpoint({**ckpt, "config": {**ckpt["config"], "grad_checkpoint": 0}})
    make_permanent(model)
    return model.eval()


def _recipe(options: QuantizeOptions, backend: str, info: Any, source: Path) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "mode": options.mode,
        "engine": "eager" if options.mode == "dynamic" else "fx",
        "library": ao.LIBRARY,
        "backend": backend,
        "dtype": options.dtype if options.mode == "dynamic" else "qint8",
        "input_shape": list(info.input_shape),
        "source": str(source),
        "torch_version": str(torch.__version__),
    }
    if options.mode == "dynamic":
        recipe["modules"] = list(options.modules)
    else:
        recipe["observer"] = options.observer or DEFAULT_OBSERVER[options.mode]
        recipe["per_channel"] = options.per_channel
    return recipe


def calibration_batches(config: TrainConfig, dataset: Any, count: int) -> Iterator[torch.Tensor]:
    """The first `count` batches of `dataset`, in its order (no shuffling)."""
    from ptool.core.data import make_loader

    order = torch.arange(len(dataset))
    loader = make_loader(dataset, config, order, train=False, device=torch.device("cpu"))
    return (x for x, _ in itertools.islice(loader, count))


def _calibration_set(config: TrainConfig, info: Any, spec: str | None, data: Any) -> Any:
    """The run's training split, or every sample of --calib-data SPEC read as `eval --data`
    reads it: columns matched by name, the run's target and normalization (its own statistics
    made a 10x larger input look like the run's, and columns were taken by position)."""
    if spec is None:
        return data.train
    from ptool.core.evaluate import split_dataset

    return split_dataset(config, info, data=spec, split="all")


class FreezeSchedule:
    """Engine callback: stop observers / batch-norm statistics after the given epochs, and
    the observers during every validation.

    Applied at the start too, so a resumed run freezes what the uninterrupted one had.
    """

    def __init__(self, observers_epoch: int | None, bn_epoch: int | None, log: Callable):
        self.observers_epoch = observers_epoch
        self.bn_epoch = bn_epoch
        self.log = log
        self.done: set[str] = set()
        self.paused: list = []

    def _apply(self, trainer: Any) -> None:
        epoch = trainer.state.epoch
        if self.observers_epoch is not None and epoch >= self.observers_epoch:
            ao.freeze_observers(trainer.model)
            self._note("observers", self.observers_epoch)
        if self.bn_epoch is not None and epoch >= self.bn_epoch:
            ao.freeze_bn_stats(trainer.model)
            self._note("batch-norm statistics", self.bn_epoch)

    def _note(self, what: str, epoch: int) -> None:
        if what not in self.done:
            self.done.add(what)
            self.log(f"qat: {what} frozen after epoch {epoch}")

    def on_fit_start(self, trainer: Any) -> None:
        self._apply(trainer)

    def on_epoch_end(self, trainer: Any, metrics: dict) -> None:
        self._apply(trainer)

    def on_validation_start(self, trainer: Any, model: Any) -> None:
        self.paused = ao.pause_observers(model)  # validation data must not set int8 ranges

    def on_validation_end(self, trainer: Any, model: Any) -> None:
        ao.restore_observers(self.paused)


def qat_config(config: TrainConfig, overrides: dict[str, Any], source: Path) -> TrainConfig:
    """The fine-tune config with QAT's defaults (3 epochs, lr x 0.1), then the flags given;
    always fp32 on the CPU, where the int8 kernels run, without gradient checkpointing."""
    from ptool.core.restore import finetune_config

    tuned = finetune_config(
        config,
        source,
        "qat",
        overrides,
        epochs=QAT_DEFAULTS["epochs"],
        lr=config.lr * QAT_DEFAULTS["lr_factor"],
    )
    return tuned.replace(device="cpu", precision="fp32", channels_last=False, grad_checkpoint=0)


def run_qat(
    float_model: nn.Module,
    config: TrainConfig,
    data: Any,
    recipe: dict[str, Any],
    *,
    resume: dict[str, Any] | None,
    pruning: dict[str, Any] | None,
    log: Callable[[str], None],
    quiet: bool,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fake-quantized fine-tuning through `fit()`, then convert the best epoch's weights.
    Its checkpoints carry the source's `pruning` recipe, so a compacted model rebuilds."""
    from ptool.core.engine import fit

    prepared: list[nn.Module] = []

    def prepare_for_qat(model: nn.Module) -> nn.Module:
        prepared.append(ao.prepare(model, recipe))
        return prepared[0]

    qat = recipe["qat"]
    summary = fit(
        config,
        resume=resume,
        callbacks=[FreezeSchedule(qat["freeze_observers_epoch"], qat["freeze_bn_epoch"], log)],
        quiet=quiet,
        log=log,
        model=copy.deepcopy(float_model),
        data=data,
        prepare_model=prepare_for_qat,
        resume_command="ptool quantize qat --resume",
        checkpoint_extras=lambda: {
            "quantization": {**recipe, "converted": False},
            **({"pruning": pruning} if pruning else {}),  # a compacted model's shapes
        },
    )
    model = prepared[0]
    best = summary.checkpoints.get("best")
    if best:
        model.load_state_dict(ckpt_io.load_checkpoint(best)["model_state_dict"])
    return ao.convert(model, recipe), summary.to_dict()


def _resume_recipe(path: str) -> tuple[dict[str, Any], dict[str, Any], Path | None]:
    """The QAT run checkpoint (a file, or a run directory's newest), its recipe, and the float
    checkpoint it started from where that still is."""
    resume = Path(path)
    if resume.is_dir():
        resume = ckpt_io.newest_valid_checkpoint(resume)
    ckpt = ckpt_io.load_checkpoint(resume)
    recipe = ckpt.get("quantization") or {}
    if recipe.get("mode") != "qat" or recipe.get("converted") is not False:
        raise UsageError(
            f"--resume {path} is not a checkpoint of a `ptool quantize qat` run",
            hint="pass the run's last.pt (in the qat/ folder next to the float checkpoint)",
        )
    # as recorded (relative to the directory it was run from), or from the run directory,
    # which finds it wherever the two were moved together
    candidates = [Path(recipe["source"])]
    if recipe["qat"].get("source_from_run"):
        candidates.append(resume.parent / recipe["qat"]["source_from_run"])
    return ckpt, recipe, next((c for c in candidates if c.is_file()), None)


def _run_dir(resume: str) -> Path:
    path = Path(resume)
    return path if path.is_dir() else path.parent


def _output(options: QuantizeOptions, recipe: dict[str, Any], path: Path) -> Path:
    """-o; else, resuming, where the QAT run was told to write (relative to the run directory,
    which finds it wherever the two were moved together); else next to the float checkpoint."""
    if options.output:
        return Path(options.output)
    recorded = recipe.get("qat", {}).get("output_from_run")
    if options.resume and recorded:
        return Path(os.path.normpath(_run_dir(options.resume) / recorded))
    return default_output(path, recipe["dtype"])


def _resume_source(
    resume: str, path: str | Path | None
) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """The QAT run checkpoint --resume names, its recipe, and the float checkpoint it started
    from: CKPT where given (it must be that one), else the one the run recorded."""
    ckpt, recipe, source = _resume_recipe(resume)
    if path is None and source is None:
        raise UsageError(
            f"the float checkpoint this QAT run started from ({recipe['source']}) is not there",
            hint="pass it: ptool quantize qat CKPT --resume RUN",
        )
    if path is not None and source is not None and Path(path).resolve() != source.resolve():
        raise UsageError(
            f"--resume {resume} continues the QAT of {source}, not of {path}",
            hint="drop CKPT: the run knows its float checkpoint",
        )
    return ckpt, recipe, Path(path or source)


def _qat_train_config(
    config: TrainConfig,
    info: Any,
    options: QuantizeOptions,
    resume_ckpt: dict[str, Any] | None,
    path: Path,
) -> TrainConfig:
    """QAT's training config, checked as `ptool train` checks one: a resumed run's own (where
    the run directory is now, as `ptool resume` takes it), or a new one from the float run's."""
    from ptool.core.checks import check_config, check_monitor

    if resume_ckpt is not None:
        train_config = TrainConfig.from_dict(resume_ckpt["config"], source="checkpoint")
        train_config = train_config.replace(download=options.download)  # the user's, as above
        overrides = {"out": str(_run_dir(options.resume)), **options.train_overrides}
        train_config = train_config.replace(**overrides, device="cpu")
    else:
        train_config = qat_config(config, options.train_overrides, path)
    check_config(train_config)
    check_monitor(train_config, info)
    return train_config


def _qat_recipe(
    train_config: TrainConfig, options: QuantizeOptions, path: Path, output: Path
) -> dict[str, Any]:
    """What a new QAT run records to be resumed: its freeze epochs, and its source and output
    relative to its run directory (the folder may move)."""
    run_dir = Path(train_config.out).resolve()
    return {
        "freeze_observers_epoch": options.freeze_observers_epoch,
        "freeze_bn_epoch": options.freeze_bn_epoch,
        "run_dir": train_config.out,
        "source_from_run": os.path.relpath(path.resolve(), run_dir),
        "output_from_run": os.path.relpath(output.resolve(), run_dir),
        "torchscript": options.torchscript,
    }


def quantize_checkpoint(
    path: str | Path | None,
    options: QuantizeOptions,
    *,
    log: Callable[[str], None] = lambda _: None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Quantize the float checkpoint at `path`, write the result, return the report."""
    check_options(options)
    resume_ckpt = resume_recipe = None
    if options.resume:
        resume_ckpt, resume_recipe, path = _resume_source(options.resume, path)
    if path is None:
        path = ckpt_io.find_default_checkpoint()
        log(f"using the newest run's checkpoint: {path}")
    path = Path(path)
    ckpt = ckpt_io.load_checkpoint(path)
    refuse_quantized(ckpt, path)

    from ptool.core.restore import config_and_info, note_ema_left_out

    config, info = config_and_info(ckpt, path)
    config = config.replace(download=options.download)
    note_ema_left_out(ckpt, "quantize", log)
    backend = ao.resolve_backend(resume_recipe["backend"] if resume_recipe else options.backend)
    recipe = resume_recipe or _recipe(options, backend, info, path)
    recipe = {k: v for k, v in recipe.items() if k != "converted"}
    output = _output(options, recipe, path)
    ckpt_io.check_output(output, path, f"-o {output}")
    torchscript = options.torchscript or bool(recipe.get("qat", {}).get("torchscript"))
    if torchscript:
        script = torchscript_path(output)
        ckpt_io.check_output(script, path, f"--torchscript ({script})")

    float_model = _float_model(ckpt)
    pruning = ckpt.get("pruning")
    if pruning and recipe["mode"] == "qat" and not pruning.get("compacted"):
        log(
            f"warning: QAT trains every weight, so the zeros of {pruning.get('method')} "
            "pruning grow back; the output does not keep the pruning recipe "
            "(`quantize static` keeps the zeros)"
        )
        pruning = None
    ao.check_quantizable(float_model, recipe)
    if recipe["mode"] != "dynamic":
        ao.check_traceable(float_model)

    train_config = None
    if recipe["mode"] == "qat":  # its train flags are checked before any data is loaded
        train_config = _qat_train_config(config, info, options, resume_ckpt, path)
        if resume_ckpt is None:
            recipe["qat"] = _qat_recipe(train_config, options, path, output)

    data = None  # the run's data: to evaluate, train (QAT) or calibrate on its training split
    if (
        options.evaluate
        or recipe["mode"] == "qat"
        or (recipe["mode"] == "static" and options.calib_data is None)
    ):
        from ptool.core.data import build_data

        data = build_data(config)

    qat_summary = None
    if recipe["mode"] == "dynamic":
        quantized = ao.quantize_dynamic(copy.deepcopy(float_model), recipe)
    elif recipe["mode"] == "static":
        prepared = ao.prepare(copy.deepcopy(float_model), recipe)
        calib = _calibration_set(config, info, options.calib_data, data)
        seen = ao.calibrate(prepared, calibration_batches(config, calib, options.calib_batches))
        recipe["calibration"] = {"batches": seen, "data": options.calib_data or config.data}
        quantized = ao.convert(prepared, recipe)
    else:
        quantized, qat_summary = run_qat(
            float_model,
            train_config,
            data,
            recipe,
            resume=resume_ckpt,
            pruning=pruning,
            log=log,
            quiet=quiet,
        )

    layers = ao.quantized_layer_names(quantized)
    if not layers and recipe["dtype"] == "qint8":
        raise PtoolError(f"{recipe['mode']} quantization left every layer in float")
    recipe["fused_modules"] = ao.fused_modules(float_model, quantized)
    recipe["qconfig"] = ao.qconfig_repr(recipe)
    recipe["converted"] = True

    report = compare(float_model, quantized, config, info, data, options)
    ckpt_io.save_derived(
        ckpt,
        quantized.state_dict(),
        report["quantized"].get("metrics") or {},
        output,
        quantization=recipe,
        pruning=pruning or None,
    )
    script = None
    if torchscript:
        script = write_torchscript(quantized, recipe, torchscript_path(output))
    elif ckpt_io.is_ptool_torchscript(torchscript_path(output)):  # easy to take for this one's
        log(
            f"note: {torchscript_path(output)} is an earlier model's, not this one's "
            "(--torchscript writes it anew)"
        )
    return {
        "checkpoint": str(path),
        "output": str(output),
        "torchscript": str(script) if script else None,
        "mode": recipe["mode"],
        "backend": recipe["backend"],
        "library": ao.LIBRARY,
        "quantized_layers": layers,
        "fused_modules": recipe["fused_modules"],
        "kept_float": ao.kept_float_layer_names(quantized),
        "recipe": recipe,
        **report,
        "qat": qat_summary,
    }


def write_torchscript(model: nn.Module, recipe: dict[str, Any], path: Path) -> Path:
    """torch.jit.trace of the quantized model: runs with plain torch, no ptool needed."""
    example = torch.zeros(1, *recipe["input_shape"])
    with ao.quiet(), torch.no_grad():
        traced = torch.jit.trace(model.eval(), example)
        extra = {ckpt_io.TORCHSCRIPT_TAG: json.dumps(recipe, default=str)}
        return ckpt_io.atomic_save(traced, path, partial(torch.jit.save, _extra_files=extra))


def _sizes_and_metrics(model: nn.Module, evaluator: Any) -> dict[str, Any]:
    state = model.state_dict()
    entry: dict[str, Any] = {
        "file_bytes": benchmark.serialized_bytes(state),
        "param_bytes": benchmark.param_bytes(state),
    }
    with ao.quiet():
        entry["metrics"] = evaluator(model) if evaluator else None
    return entry


def compare(
    float_model: nn.Module,
    quantized: nn.Module,
    config: TrainConfig,
    info: Any,
    data: Any,
    options: QuantizeOptions,
) -> dict[str, Any]:
    """fp32 vs quantized: file size, parameter bytes, latency (batch 1 and the training batch
    size, same threads), validation metrics; and the ratios."""
    generator = torch.Generator().manual_seed(0)
    batch = config.batch_size
    inputs = {
        name: torch.randn(n, *info.input_shape, generator=generator)
        for name, n in (("batch_1", 1), ("batch_n", batch))
    }
    from ptool.core.evaluate import Evaluator

    evaluator = Evaluator(config, data) if options.evaluate else None
    models = {"fp32": float_model, "quantized": quantized}
    entries = {name: _sizes_and_metrics(m, evaluator) for name, m in models.items()}
    timings = []
    with ao.quiet():
        for key, x in inputs.items():
            timed = benchmark.latency_ms(models, x, runs=options.bench_runs)
            for name, value in timed.items():
                entries[name][f"latency_ms_{key}"] = round(value.median, 4)
            timings += timed.values()
    fp32, quant = entries["fp32"], entries["quantized"]
    ratios = {
        "size": fp32["file_bytes"] / quant["file_bytes"],
        "param_bytes": fp32["param_bytes"] / quant["param_bytes"],
        "speedup_batch_1": fp32["latency_ms_batch_1"] / quant["latency_ms_batch_1"],
        "speedup_batch_n": fp32["latency_ms_batch_n"] / quant["latency_ms_batch_n"],
    }
    changes = None
    if fp32["metrics"] is not None:
        changes = {k: quant["metrics"][k] - v for k, v in fp32["metrics"].items()}
    return {
        "batch_size": batch,
        "threads": torch.get_num_threads(),
        "bench_runs": options.bench_runs,
        "latency_spread": round(benchmark.relative_spread(timings), 3),
        "fp32": fp32,
        "quantized": quant,
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "metrics_change": changes,
    }
