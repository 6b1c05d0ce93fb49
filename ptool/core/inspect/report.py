"""The inspect-checkpoint report: one dict with stable keys for every view.

The metadata views never import torch; --stats and --diff (ptool.core.inspect.values) do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptool.core.inspect import compression, tensors, training
from ptool.core.inspect.rawdata import RawReader
from ptool.core.inspect.reader import RawCheckpoint, Refused, read
from ptool.core.inspect.tree import model_tensors, side_by_side
from ptool.core.inspect.unpickler import TensorMeta


@dataclass
class InspectOptions:
    depth: int | None = None  # group tensors by this many dotted name components
    tree: bool = False
    filter: str | None = None  # regex searched in tensor names
    stats: bool = False
    diff: str | None = None  # the other checkpoint
    key: str | None = None  # the entry to list (`state_dict_ema`); default: the model's
    unsafe_load: bool = False
    warn: Callable[[str], None] | None = None  # told before a pickle is run (--unsafe-load)


def _is_meta(value: Any) -> bool:
    return isinstance(value, TensorMeta)


def open_checkpoint(
    path: str | Path, *, unsafe_load: bool = False, warn: Callable[[str], None] | None = None
) -> RawCheckpoint:
    """Read a file's metadata; a refused pickle (a whole nn.Module, or any other global) is
    loaded with torch.load(weights_only=False) only with `unsafe_load`, after `warn`."""
    try:
        return read(path)
    except Refused as refused:
        if not unsafe_load:
            raise
        if warn is not None:
            warn(
                f"--unsafe-load: unpickling {path} with weights_only=False runs code from the "
                f"file (it asks for {refused.global_name})"
            )
        from ptool.core.inspect.values import unsafe_metadata

        return unsafe_metadata(Path(path))


def inspect(path: str | Path, options: InspectOptions) -> dict[str, Any]:
    """Everything about one checkpoint; --stats and --diff entries are None unless asked."""
    raw = open_checkpoint(path, unsafe_load=options.unsafe_load, warn=options.warn)
    state_path, state, named = model_tensors(raw.obj, _is_meta, options.key, raw.path)
    pattern = tensors.name_filter(options.filter)
    shown = [(n, t) for n, t in named if pattern is None or pattern.search(n)]
    table = tensors.rows(shown)
    top = raw.obj if isinstance(raw.obj, dict) else {}
    model_path = state_path if options.key is None else model_tensors(raw.obj, _is_meta)[0]
    format_name, format_version = training.detect_format(raw.obj, raw.container, model_path)
    config = top.get("config")  # a run's config dict; other tools store a file name here
    configured = config.get("optimizer") if isinstance(config, dict) else None
    with RawReader(raw) as reader:
        report = {
            "file": str(raw.path),
            "file_bytes": raw.file_bytes,
            "container": raw.container,
            "archive_version": raw.archive_version,
            "format": format_name,
            "format_version": format_version,
            "module_class": raw.module_class,
            "safetensors_metadata": raw.metadata or None,
            "state_dict_key": ".".join(state_path) if state_path else None,
            "state_dicts": side_by_side(raw.obj, _is_meta),
            "summary": training.summary(raw.obj, reader.scalar),
            "entries": training.entries(raw.obj),
            "filter": options.filter,
            "tensors": table,
            "totals": tensors.totals(table),
            "groups": tensors.groups(table, options.depth) if options.depth else None,
            "tree": tensors.tree(table, options.depth) if options.tree else None,
            "optimizers": training.optimizers(raw.obj, configured),
            "schedulers": training.schedulers(raw.obj),
            "pruning": compression.pruning(shown, top.get("pruning"), reader),
            "quantization": compression.quantization(state, shown, top.get("quantization"), reader),
            "stats": None,
            "diff": None,
        }
    if options.stats or options.diff:
        from ptool.core.inspect import values

        names = [n for n, _ in shown]
        if options.stats:
            report["stats"] = values.stats(raw, names, options.key, unsafe=options.unsafe_load)
        if options.diff:
            report["diff"] = values.diff(
                raw, options.diff, pattern, options.key, unsafe=options.unsafe_load
            )
    return report


BRIEF_KEYS = (
    "file",
    "format",
    "epoch",
    "global_step",
    "loss",
    "metric",
    "metric_value",
    "best_value",
    "parameters",
    "tensors",
    "file_bytes",
    "error",
)


def brief_error(path: str | Path, message: str) -> dict[str, Any]:
    """The one-line row of a file that could not be read (same keys as `brief`)."""
    return {**dict.fromkeys(BRIEF_KEYS), "file": str(path), "error": message}


def brief(path: str | Path) -> dict[str, Any]:
    """One line about a file (for several files at once): progress, loss/metric, size."""
    report = inspect(path, InspectOptions())
    summary, best = report["summary"], report["summary"]["best"] or {}
    monitor = best.get("monitor")
    return {
        "file": report["file"],
        "format": report["format"],
        "epoch": summary["epoch"],
        "global_step": summary["global_step"],
        "loss": summary["loss"],
        "metric": monitor,
        "metric_value": summary["metrics"].get(monitor) if monitor else None,
        "best_value": best.get("value"),
        "parameters": report["totals"]["parameters"],
        "tensors": report["totals"]["tensors"],
        "file_bytes": report["file_bytes"],
        "error": None,
    }
