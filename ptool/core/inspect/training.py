"""What a checkpoint says about its run: format, versions, progress, metrics, config,
optimizer and scheduler state. Reads ptool's own keys and the common ones of other tools."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ptool.core.inspect.tree import branches, dotted, walk
from ptool.core.inspect.unpickler import TensorMeta

PTOOL_FORMAT = "ptool.checkpoint"
KEY_CONFIG = (
    "model",
    "data",
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "scheduler",
    "warmup_epochs",
    "warmup_steps",
    "epochs",
    "batch_size",
    "precision",
    "seed",
)
Scalar = Callable[[Any], Any]


def _is_tensor(value: Any) -> bool:
    return isinstance(value, TensorMeta)


def detect_format(obj: Any, container: str, state_path: tuple[str, ...] | None) -> tuple[str, Any]:
    """(format name, format version) from the keys that tools write."""
    if container == "safetensors":
        return "safetensors", None
    if isinstance(obj, Mapping):
        if obj.get("format") == PTOOL_FORMAT:
            return PTOOL_FORMAT, obj.get("format_version")
        if "pytorch-lightning_version" in obj:
            return "lightning", obj["pytorch-lightning_version"]
        if "arch" in obj and "state_dict" in obj:
            return "timm", obj.get("version")
    if state_path is None:
        return "torch.save object", None
    return ("state_dict" if state_path == () else "nested state dict"), None


def _first(obj: Mapping, *keys: str) -> Any:
    return next((obj[k] for k in keys if k in obj), None)


def _lightning_best(obj: Mapping, scalar: Scalar) -> dict[str, Any] | None:
    for key, value in (obj.get("callbacks") or {}).items():
        if "ModelCheckpoint" in str(key) and isinstance(value, Mapping):
            return {
                "monitor": value.get("monitor"),
                "mode": None,
                "value": scalar(value.get("best_model_score")),
                "epoch": None,
            }
    return None


def _as_run(key_config: dict[str, Any]) -> dict[str, Any]:
    """A ptool run's values as it trained: its optimizer's default weight decay for none
    given (0.01 for AdamW), no momentum for an optimizer without one."""
    from types import SimpleNamespace

    from ptool.core.config import MOMENTUM_OPTIMIZERS, default_weight_decay

    run = dict(key_config)
    optimizer = run.get("optimizer")
    if "weight_decay" in run and run["weight_decay"] is None:
        run["weight_decay"] = default_weight_decay(
            SimpleNamespace(weight_decay=None, optimizer=optimizer)
        )
    if optimizer not in MOMENTUM_OPTIMIZERS:
        run.pop("momentum", None)
    return run


def summary(obj: Any, scalar: Scalar) -> dict[str, Any]:
    """Versions, progress, last and best metrics and the key config; null where absent."""
    top = obj if isinstance(obj, Mapping) else {}
    meta = top.get("meta") if isinstance(top.get("meta"), Mapping) else {}
    config = _first(top, "config", "hyper_parameters", "hparams", "args")
    config = dict(config) if isinstance(config, Mapping) else {}
    key_config = {k: config[k] for k in KEY_CONFIG if k in config}
    if top.get("format") == PTOOL_FORMAT:
        key_config = _as_run(key_config)
    if "arch" in top and "model" not in key_config:
        key_config["model"] = top["arch"]
    metrics = top.get("metrics")
    if not isinstance(metrics, Mapping):
        metric = top.get("metric")
        metrics = {"metric": scalar(metric)} if metric is not None else {}
    best = top.get("best") if isinstance(top.get("best"), Mapping) else _lightning_best(top, scalar)
    data_info = top.get("data_info") if isinstance(top.get("data_info"), Mapping) else None
    return {
        "ptool_version": meta.get("ptool_version"),
        "torch_version": meta.get("torch_version"),
        "created": meta.get("created"),
        "epoch": scalar(top.get("epoch")),
        "global_step": scalar(_first(top, "global_step", "step")),
        "batch_in_epoch": top.get("batch_in_epoch"),
        "loss": scalar(top.get("loss")),
        "metrics": {k: scalar(v) for k, v in metrics.items()},
        "best": {k: scalar(v) for k, v in best.items()} if best else None,
        "config": key_config,
        "data_info": {
            k: data_info.get(k) for k in ("task", "input_shape", "num_outputs", "class_names")
        }
        if data_info
        else None,
    }


def entries(obj: Any) -> list[dict[str, Any]]:
    """Top-level keys with their type and how many tensors/bytes each holds."""
    if not isinstance(obj, Mapping):
        return []
    out = []
    for key, value in obj.items():
        tensors = [t for _, t in walk(value, _is_tensor) if _is_tensor(t)]
        out.append(
            {
                "key": str(key),
                "type": "tensor" if _is_tensor(value) else type(value).__name__,
                "tensors": len(tensors),
                "bytes": sum(t.nbytes for t in tensors),
                "value": value if isinstance(value, (int, float, str, bool)) else None,
            }
        )
    return out


def _optimizer_type(group: Mapping, state_keys: set[str]) -> str:
    """torch does not save the optimizer's class: infer it from its hyperparameter names."""
    if "nesterov" in group or "momentum_buffer" in state_keys:
        return "SGD (inferred)"
    if "betas" in group and "amsgrad" in group:
        decoupled = group.get("decoupled_weight_decay")
        return "AdamW (inferred)" if decoupled else "Adam or AdamW (inferred)"
    for key, name in (
        ("centered", "RMSprop"),
        ("lr_decay", "Adagrad"),
        ("rho", "Adadelta"),
        ("momentum_decay", "NAdam"),
        ("lambd", "ASGD"),
    ):
        if key in group:
            return f"{name} (inferred)"
    return "unknown"


GROUP_KEYS = ("lr", "initial_lr", "weight_decay", "momentum", "betas", "eps", "nesterov")


def optimizers(obj: Any, configured: str | None) -> list[dict[str, Any]]:
    """Every optimizer state dict in the file (a mapping with `state` and `param_groups`)."""
    found = []
    for parts, sub in _mappings(obj):
        if not {"state", "param_groups"} <= set(sub):
            continue
        path = dotted(parts)
        state = sub["state"] if isinstance(sub["state"], Mapping) else {}
        tensors = [t for _, t in walk(state, _is_tensor) if _is_tensor(t)]
        keys = {k for s in state.values() if isinstance(s, Mapping) for k in s}
        groups = list(sub["param_groups"])
        kind = configured if configured and path == "optimizer_state_dict" else None
        found.append(
            {
                "key": path,
                "type": kind or _optimizer_type(groups[0] if groups else {}, keys),
                "param_groups": [
                    {
                        "params": len(g.get("params", [])),
                        **{k: g[k] for k in GROUP_KEYS if k in g},
                    }
                    for g in groups
                ],
                "state_keys": sorted(keys),
                "state_tensors": len(tensors),
                "state_bytes": sum(t.nbytes for t in tensors),
            }
        )
    return found


def _mappings(obj: Any, parts: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Mapping]]:
    """Every mapping in the tree with its path (optimizer states nest anywhere)."""
    if isinstance(obj, Mapping):
        yield parts, obj
    for branch, value in branches(obj, parts):
        if not _is_tensor(value):
            yield from _mappings(value, branch)


def schedulers(obj: Any) -> list[dict[str, Any]]:
    """Top-level scheduler states (keys naming a scheduler), as flat plain values."""
    if not isinstance(obj, Mapping):
        return []
    found = []
    for key, value in obj.items():
        if "sched" in str(key).lower() and value:
            plain = {
                dotted(path): leaf
                for path, leaf in walk(value, _is_tensor)
                if isinstance(leaf, (int, float, str, bool)) or leaf is None
            }
            found.append({"key": str(key), "state": plain})
    return found
