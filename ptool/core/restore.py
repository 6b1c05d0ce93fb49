"""Rebuild the model a checkpoint describes: the one path every command uses.

A ptool checkpoint carries its run config and `data_info`, so the model comes back without
user code; pruned and quantized checkpoints add a recipe (`pruning`, `quantization`) that
turns the freshly built float model into the saved structure before the weights load.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ptool.core.config import TrainConfig
from ptool.core.data import DataInfo
from ptool.core.errors import CodeRefused, PtoolError, UsageError


def config_and_info(
    ckpt: dict[str, Any], source: Path | str | None = None
) -> tuple[TrainConfig, DataInfo]:
    """The run config and data facts saved in a checkpoint, with one-line errors (naming the
    `source` file, where given, when its model code is refused)."""
    if not isinstance(ckpt.get("config"), dict) or not isinstance(ckpt.get("data_info"), dict):
        raise PtoolError(
            "the checkpoint has no saved config/data_info, so its model cannot be rebuilt",
            hint="it was not written by ptool; `ptool train --init-from` takes its weights",
        )
    try:
        config = TrainConfig.from_dict(ckpt["config"], source="checkpoint config")
    except UsageError as exc:
        raise PtoolError(f"the checkpoint's config is not valid here: {exc}") from exc
    _refuse_untrusted_code(config.model, source)
    # a file does not reach the network by itself: --download is the user's, not the file's
    return config.replace(download=False), DataInfo.from_dict(ckpt["data_info"])


def _refuse_untrusted_code(model: str, source: Path | str | None) -> None:
    """A `module:function` model is code the rebuild imports and runs: named by a file, it
    needs the user's word (--trust-code), as unpickling needs --unsafe-load."""
    from ptool.core.trust import TRUST_CODE_ENV, code_trusted, is_factory

    if is_factory(model) and not code_trusted():
        module = model.partition(":")[0]
        whose = f"{source}: its" if source is not None else "the checkpoint's"
        raise CodeRefused(
            f"{whose} model is {model}: rebuilding it imports and runs the Python "
            f"module {module!r}",
            hint=f"only if you trust the checkpoint, rerun with --trust-code (or "
            f"{TRUST_CODE_ENV}=1)",
        )


def inference_precision(ckpt: dict[str, Any], config: TrainConfig) -> str:
    """What eval and predict run a checkpoint's model under: the run's --precision (its
    validation autocast to it), fp32 for an int8 model (its kernels take float inputs)."""
    return "fp32" if ckpt.get("quantization") else config.precision


def finetune_config(
    config: TrainConfig, source: Path, folder: str, overrides: dict[str, Any], **defaults: Any
) -> TrainConfig:
    """The run's own config (optimizer, lr, schedule, batch size) to fine-tune the model saved
    at `source` (prune, QAT) in a run dir beside it (<ckpt dir>/<folder>/<time>): `defaults`,
    then the flags given. A fine-tune starts from trained weights in a changed model, so the
    run's warmup (a short run would not outlast a long run's) and its start factor, a
    schedule's horizon kept by an extended run (--schedule-epochs), --init-from and its
    --no-strict, --ema and --compile go, and it trains on this machine's device (`auto`), not
    the run's. Without EMA, a run that monitored `val_ema/X` monitors `val/X`."""
    from ptool.core import rundir

    default = TrainConfig()
    values = {
        "warmup_epochs": 0,
        "warmup_steps": 0,
        "warmup_start_factor": default.warmup_start_factor,
        "schedule_epochs": None,
        "out": str(rundir.default_run_dir(source.parent / folder)),
        "init_from": None,
        "strict": True,
        "ema": None,
        "compile": False,
        "device": "auto",
        "monitor": config.monitor.replace("val_ema/", "val/", 1),
        **defaults,
        **overrides,
    }
    return config.replace(**values)


def note_ema_left_out(ckpt: dict[str, Any], command: str, log: Callable[[str], None]) -> None:
    """prune and quantize take the model's weights; a --ema run's average, often the better
    one, is not carried over, and the user is told so."""
    if "ema_state_dict" in ckpt:
        log(
            f"note: the checkpoint also holds EMA weights (train --ema); {command} takes the "
            "model's own (model_state_dict), and its output keeps no EMA"
        )


def load_model_state(model: nn.Module, state: dict[str, Any]) -> None:
    """`model.load_state_dict(state)`, a mismatch (a corrupt or hand-edited file) said in one
    line: torch's first line only names the module, the next the key."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise PtoolError(f"the saved weights do not fit the rebuilt model: {detail}") from exc


def model_from_checkpoint(
    ckpt: dict[str, Any] | str | os.PathLike, *, load_weights: bool = True, ema: bool = False
) -> nn.Module:
    """Build the checkpoint's model (float, pruned, compacted or quantized) and load its weights
    (with `ema`: the exponential moving average a --ema run kept beside them). `ckpt` is a
    loaded checkpoint or its path (read with `load_checkpoint`: safe, ptool's format only)."""
    from ptool.core.models import build_model

    if isinstance(ckpt, (str, os.PathLike)):
        from ptool.core.checkpoint import load_checkpoint

        ckpt = load_checkpoint(ckpt)

    if ema and "ema_state_dict" not in ckpt:
        derived = next((k for k in ("pruning", "quantization") if ckpt.get(k)), None)
        why = (
            f"{'pruned' if derived == 'pruning' else 'quantized'} files hold the model's "
            "weights only: prune and quantize take model_state_dict, not the EMA"
            if derived
            else "its run had no --ema"
        )
        raise UsageError(f"--ema: the checkpoint holds no EMA weights ({why})", hint="drop --ema")
    config, info = config_and_info(ckpt)
    try:
        model = build_model(config, info)
    except UsageError as exc:
        raise PtoolError(f"cannot rebuild the checkpoint's model: {exc}", hint=exc.hint) from exc
    state = ckpt.get("ema_state_dict" if ema else "model_state_dict")
    pruning = ckpt.get("pruning")
    if pruning:
        from ptool.core import prune

        if pruning.get("architecture"):
            model = prune.apply_architecture(model, pruning["architecture"])
        if state is not None and any(k.endswith("_mask") for k in state):
            model = prune.apply_masks(model, state)
    if ckpt.get("quantization"):
        from ptool.core import quantize

        model = quantize.prepare_for_load(model, ckpt["quantization"])
    if load_weights:
        if state is None:
            raise PtoolError("the checkpoint holds no model_state_dict")
        load_model_state(model, state)
        if ckpt.get("quantization"):  # a QAT run's fake-quantized model keeps its saved ranges
            quantize.freeze_observers(model)
    return model
