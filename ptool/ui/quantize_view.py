"""The before/after table `ptool quantize` prints."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

SHOWN_METRICS = ("loss", "accuracy", "mae", "rmse", "r2")  # all of them are in --json


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _metric(name: str, value: float) -> str:
    return f"{value:.2%}" if name.endswith("accuracy") else f"{value:.4g}"


def _change(name: str, delta: float) -> str:
    if name.endswith("accuracy"):
        return f"{delta * 100:+.2f} points"
    return f"{delta:+.4g}"


def _speedup(ratio: float) -> str:
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def report_table(report: dict[str, Any]) -> Group:
    """fp32 vs quantized: sizes, latency at batch 1 and the training batch size, metrics."""
    recipe = report["recipe"]
    quant_name = "fp16" if recipe["dtype"] == "float16" else "int8"
    title = f"{report['mode']} quantization ({recipe['engine']}, {report['backend']} kernels)"
    fused = ", ".join("+".join(group) for group in report["fused_modules"]) or "none"
    notes = [
        f"quantized layers: {', '.join(report['quantized_layers'])}",
        f"fused: {fused}",
        f"latency: median of {report['bench_runs']} runs after warm-up, "
        f"{report['threads']} threads, random inputs",
        f"written: {report['output']}",
    ]
    if report.get("torchscript"):
        notes.append(f"torchscript: {report['torchscript']}")
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("fp32", justify="right")
    table.add_column(quant_name, justify="right")
    table.add_column("change", justify="right")
    fp32, quant, ratios = report["fp32"], report["quantized"], report["ratios"]
    table.add_row(
        "file size",
        _size(fp32["file_bytes"]),
        _size(quant["file_bytes"]),
        f"{ratios['size']:.2f}x smaller",
    )
    table.add_row(
        "parameter bytes",
        _size(fp32["param_bytes"]),
        _size(quant["param_bytes"]),
        f"{ratios['param_bytes']:.2f}x smaller",
    )
    for key, label in (("batch_1", "batch 1"), ("batch_n", f"batch {report['batch_size']}")):
        table.add_row(
            f"latency, {label}",
            f"{fp32[f'latency_ms_{key}']:.3f} ms",
            f"{quant[f'latency_ms_{key}']:.3f} ms",
            _speedup(ratios[f"speedup_{key}"]),
        )
    if fp32.get("metrics"):
        table.add_section()
        for name, value in fp32["metrics"].items():
            if name.rsplit("/", 1)[-1] not in SHOWN_METRICS:
                continue
            table.add_row(
                name,
                _metric(name, value),
                _metric(name, quant["metrics"][name]),
                _change(name, report["metrics_change"][name]),
            )
    return Group(table, Text("\n".join(notes)))
