"""`ptool train --init-from CKPT`: a new run starts from another checkpoint's weights only
(fine-tuning, transfer), whatever tool wrote them."""

from __future__ import annotations

from collections.abc import Callable
from shlex import quote
from typing import Any

from torch import nn

from ptool.core import checkpoint as ckpt_io
from ptool.core.errors import UsageError, count


def load_initial_weights(
    model: nn.Module, path: str, *, strict: bool, unsafe: bool, log: Callable[[str], None]
) -> None:
    """Weights only (fine-tuning, transfer): a ptool checkpoint, a plain state_dict or the
    one inside another tool's checkpoint. Keys that do not match, and with --no-strict
    tensors of another shape (a new head), are listed; --strict refuses them."""
    loaded = ckpt_io.load(path, unsafe=unsafe)
    _refuse_derived_weights(loaded, path)
    state = ckpt_io.extract_state_dict(loaded)
    own = model.state_dict()
    unmatched = {
        "missing": [k for k in own if k not in state],
        "unexpected": [k for k in state if k not in own],
        "shape-mismatched": [
            f"{k} {list(v.shape)} vs {list(own[k].shape)}"
            for k, v in state.items()
            if k in own and getattr(v, "shape", None) != own[k].shape
        ],
    }
    lines = [
        f"{kind} keys ({len(keys)}): {', '.join(keys)}" for kind, keys in unmatched.items() if keys
    ]
    if strict and lines:
        raise UsageError(
            f"--init-from {path} does not fit the model: {'; '.join(lines)}",
            hint="use --no-strict to load only the matching tensors",
        )
    fits = {
        k: v for k, v in state.items() if k in own and getattr(v, "shape", None) == own[k].shape
    }
    model.load_state_dict(fits, strict=False)
    log(f"--init-from {path}: {len(fits)} of the model's {count(len(own), 'tensor')} loaded")
    for line in lines:
        log(f"  {line}")


def _refuse_derived_weights(loaded: Any, path: str) -> None:
    """ptool's int8 and compacted files: no float weights of the config's shapes to start from
    (`--no-strict` would leave those layers at random)."""
    if not isinstance(loaded, dict):
        return
    recipe, pruning = loaded.get("quantization"), loaded.get("pruning") or {}
    if recipe:
        source = f": {recipe['source']}" if recipe.get("source") else ""
        raise UsageError(
            f"--init-from {path} is a quantized model: its weights are int8, not float",
            hint=f"start from the float checkpoint it was made from{source}",
        )
    if pruning.get("compacted"):
        raise UsageError(
            f"--init-from {path} is a compacted pruned model: its layers have their own "
            "shapes, not the config's",
            hint=f"fine-tune it with: ptool prune {quote(str(path))} --amount 0 "
            "--finetune-epochs 3",
        )
