"""The before/after table `ptool quantize` prints."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ptool.ui.tables import (
    SHOWN_METRICS,
    Fitted,
    format_change,
    format_metric,
    format_shrink,
    format_speedup,
    human_bytes,
    latency_note,
)


def _listing(names: list[str], shown: int = 6) -> str:
    """A few names and the count when there are many (a torchvision model has hundreds)."""
    if len(names) <= shown:
        return ", ".join(names) or "none"
    return f"{len(names)}: {', '.join(names[: shown - 1])}, ..., {names[-1]} (--json lists all)"


def report_table(report: dict[str, Any]) -> Group:
    """fp32 vs quantized: sizes, latency at batch 1 and the training batch size, metrics."""
    recipe = report["recipe"]
    quant_name = "fp16" if recipe["dtype"] == "float16" else "int8"
    title = f"{report['mode']} quantization ({recipe['engine']}, {report['backend']} kernels)"
    fused = ["+".join(group) for group in report["fused_modules"]]
    notes = [
        f"quantized layers: {_listing(report['quantized_layers'])}",
        f"fused: {_listing(fused)}",
        *(
            [f"kept in float (no int8 state to save): {_listing(report['kept_float'])}"]
            if report["kept_float"]
            else []
        ),
        latency_note(report["bench_runs"], report["threads"], report["latency_spread"]),
        f"written: {report['output']}",
    ]
    if report.get("torchscript"):
        notes.append(f"torchscript: {report['torchscript']}")
    table = Table(title=title, title_justify="left")
    table.add_column("", overflow="fold")
    table.add_column("fp32", justify="right")
    table.add_column(quant_name, justify="right")
    table.add_column("change", justify="right")
    fp32, quant, ratios = report["fp32"], report["quantized"], report["ratios"]
    table.add_row(
        "file size",
        human_bytes(fp32["file_bytes"]),
        human_bytes(quant["file_bytes"]),
        format_shrink(ratios["size"]),
    )
    table.add_row(
        "parameter bytes",
        human_bytes(fp32["param_bytes"]),
        human_bytes(quant["param_bytes"]),
        format_shrink(ratios["param_bytes"]),
    )
    for key, label in (("batch_1", "batch 1"), ("batch_n", f"batch {report['batch_size']}")):
        table.add_row(
            f"latency, {label}",
            f"{fp32[f'latency_ms_{key}']:.3f} ms",
            f"{quant[f'latency_ms_{key}']:.3f} ms",
            format_speedup(ratios[f"speedup_{key}"]),
        )
    if fp32.get("metrics"):
        table.add_section()
        for name, value in fp32["metrics"].items():
            if name.rsplit("/", 1)[-1] not in SHOWN_METRICS:
                continue
            table.add_row(
                name,
                format_metric(name, value),
                format_metric(name, quant["metrics"][name]),
                format_change(name, report["metrics_change"][name]),
            )
    return Group(Fitted(table, optional=("change",)), Text("\n".join(notes)))
