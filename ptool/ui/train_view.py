"""The table `ptool train` prints at the end of a run."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ptool.ui.tables import Fitted


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_table(summary: Any) -> Fitted:
    """Best epoch, final and best metrics, wall time, samples/s and checkpoint paths (which
    fold in a narrow terminal; the numbers stay whole)."""
    title = f"run {escape(str(summary.run_dir))} ({summary.status})"
    table = Table(title=title, title_justify="left")
    table.add_column("metric", overflow="fold")
    table.add_column("final", justify="right")
    table.add_column(f"best (epoch {_fmt(summary.best_epoch)})", justify="right")
    for name, value in summary.final_metrics.items():
        table.add_row(name, _fmt(value), _fmt(summary.best_metrics.get(name)))
    table.add_section()
    table.add_row("monitor", f"{summary.monitor} ({summary.mode})", _fmt(summary.best_value))
    table.add_row("epochs / steps", f"{summary.epochs} / {summary.global_step}", "")
    table.add_row("wall time", f"{summary.wall_time_s:.1f} s", "")
    table.add_row("train samples/s", f"{summary.samples_per_s:,.0f}", "")
    if summary.nonfinite_skipped or summary.rollbacks:
        counts = f"{summary.nonfinite_skipped} / {summary.rollbacks}"
        table.add_row("non-finite skipped / rollbacks", counts, "")
    for name, path in summary.checkpoints.items():
        if path:
            shown = ", ".join(path) if isinstance(path, list) else path
            table.add_row(f"checkpoint: {name}", Text(shown, overflow="fold"), "")
    return Fitted(table)
