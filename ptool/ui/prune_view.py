"""The per-layer table and the before/after summary `ptool prune` prints."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ptool.core.errors import count
from ptool.ui.tables import (
    SHOWN_METRICS,
    Fitted,
    format_change,
    format_metric,
    format_ratio,
    format_shrink,
    format_speedup,
    human_bytes,
    latency_note,
)


def _shape(shape: list[int]) -> str:
    return "x".join(map(str, shape)) or "scalar"


# What a narrow terminal leaves out first (--json keeps them).
OPTIONAL_LAYER_COLUMNS = ("pruned", "shape before -> after", "nonzero")


def layer_table(report: dict[str, Any]) -> Fitted:
    """One row per conv/linear weight; in a narrow terminal layer names fold, then the columns
    in OPTIONAL_LAYER_COLUMNS go, and the counts stay whole."""
    table = Table(title="layers (conv/linear weights)", title_justify="left")
    table.add_column("layer", overflow="fold")
    table.add_column("pruned", overflow="fold")
    for column in ("shape before -> after", "params before -> after"):
        table.add_column(column, justify="right")
    table.add_column("nonzero", justify="right")
    table.add_column("sparsity", justify="right")
    for row in report["layers"]:
        before, after = _shape(row["shape_before"]), _shape(row["shape_after"])
        pruned = "yes" if row["selected"] else "-"
        if row["channels_follow"]:
            pruned = f"with {row['channels_follow']}"
        table.add_row(
            row["name"],
            pruned,
            before if before == after else f"{before} -> {after}",
            f"{row['params_before']:,} -> {row['params_after']:,}",
            f"{row['nonzero_after']:,}",
            f"{row['sparsity']:.2%}",
        )
    return Fitted(table, optional=OPTIONAL_LAYER_COLUMNS)


def summary_table(report: dict[str, Any]) -> Fitted:
    finetuned = report["metrics"]["after_finetune"] is not None
    table = Table(title=_title(report), title_justify="left")
    table.add_column("", overflow="fold")
    for column in ("before", "after pruning", *(["after fine-tune"] if finetuned else [])):
        table.add_column(column, justify="right")
    table.add_column("change", justify="right")
    # the structure is fixed once pruned: fine-tuning changes weights, not sizes or speed
    copies = 2 if finetuned else 1
    params, files, gz = report["parameters"], report["file_bytes"], report["gzip_bytes"]
    glob, latency = report["global"], report["latency"]

    def row(label: str, before: str, after: str, change: str) -> None:
        table.add_row(label, before, *[after] * copies, change)

    sparsity = (f"{glob['sparsity_before']:.2%}", f"{glob['sparsity']:.2%}")
    row("sparsity (selected layers)", *sparsity, "")
    for key, label in (("parameters", "parameters"), ("nonzero", "nonzero parameters")):
        old, new = params["before"][key], params["after"][key]
        row(label, f"{old:,}", f"{new:,}", format_ratio(old / max(new, 1), "fewer", "more"))
    for sizes, label in ((files, "file size"), (gz, "file size, gzip")):
        old, new = sizes["before"], sizes["after"]
        row(label, human_bytes(old), human_bytes(new), format_shrink(old / new))
    row(
        f"latency, batch {latency['batch_size']}",
        f"{latency['before_ms']:.3f} ms",
        f"{latency['after_ms']:.3f} ms",
        format_speedup(latency["speedup"]),
    )
    metrics = report["metrics"]
    if metrics["before"]:
        table.add_section()
        final = metrics["after_finetune"] or metrics["after_pruning"]
        for name, value in metrics["before"].items():
            if name.rsplit("/", 1)[-1] not in SHOWN_METRICS:
                continue
            cells = [format_metric(name, metrics["after_pruning"][name])]
            if finetuned:
                cells.append(format_metric(name, metrics["after_finetune"][name]))
            table.add_row(
                name, format_metric(name, value), *cells, format_change(name, final[name] - value)
            )
    # a narrow terminal keeps the labels, the numbers before and the final ones
    return Fitted(table, optional=(["after pruning"] if finetuned else []) + ["change"])


def _title(report: dict[str, Any]) -> str:
    what = f"{report['method']} --amount {report['amount']}"
    if report["compacted"]:
        what += ", compacted"
    if report["steps"] > 1:
        what += f", {report['steps']} steps"
    if report["recalibrate_bn"]:
        batches = count(report["recalibrate_bn"], "batch", "batches")
        what += f", batch-norm statistics re-estimated on {batches}"
    if report["finetune_epochs"]:
        what += f", {count(report['finetune_epochs'], 'fine-tune epoch')} per step"
    return what


def _what_runs(report: dict[str, Any]) -> str:
    """What the "after" latency measured, and why it moved or did not."""
    if report["compacted"]:
        return "pruned channels removed (smaller dense layers)"
    if report["dim"] is not None:  # a structured method
        return (
            "masks baked in (zeroed channels do not speed up dense kernels; --compact removes them)"
        )
    return "masks baked in (unstructured zeros do not speed up dense kernels)"


def report_view(report: dict[str, Any]) -> Group:
    latency = report["latency"]
    notes = [
        f"{latency_note(latency['runs'], latency['threads'], latency['spread'])}; "
        f"{_what_runs(report)}",
        f"written: {report['output']}"
        + (" (with weight_orig/weight_mask, for further pruning)" if report["masks"] else ""),
    ]
    return Group(layer_table(report), summary_table(report), Text("\n".join(notes)))
