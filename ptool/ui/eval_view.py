"""What `ptool eval` prints: metrics, per-class scores, the confusion matrix, comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ptool.core.errors import count
from ptool.ui.tables import Fitted, format_change, format_metric

# Bigger confusion matrices are left to --json and -o cm.png (a table would not fit).
MAX_MATRIX_CLASSES = 20


def _speed_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("samples/s", f"{report['samples_per_s']:,.0f}"),
        ("batch latency (median)", f"{report['batch_latency_ms']:.3f} ms"),
    ]


def _names(report: dict[str, Any]) -> list[str]:
    n = len(report["per_class"] or report["confusion_matrix"] or [])
    return report["class_names"] or [str(i) for i in range(n)]


def _labels(report: dict[str, Any]) -> list[Text]:
    """Class names as table cells: plain text, so a name like `[red]` is shown, not styled."""
    return [Text(name) for name in _names(report)]


def metrics_table(report: dict[str, Any]) -> Fitted:
    table = Table()
    table.add_column("metric", overflow="fold")
    table.add_column("value", justify="right")
    for name, value in report["metrics"].items():
        table.add_row(name, format_metric(name, value))
    table.add_section()
    for row in _speed_rows(report):
        table.add_row(*row)
    return Fitted(table)


def per_class_table(report: dict[str, Any]) -> Fitted:
    table = Table(title="per class", title_justify="left")
    table.add_column("class", overflow="fold")
    for column in ("precision", "recall", "f1", "support"):
        table.add_column(column, justify="right")
    for name, row in zip(_labels(report), report["per_class"], strict=True):
        scores = (f"{row[k]:.4f}" for k in ("precision", "recall", "f1"))
        table.add_row(name, *scores, str(row["support"]))
    return Fitted(table, optional=("support",))


def _cell(count: int, *, diagonal: bool) -> str:
    if diagonal:
        return f"[bold]{count}[/bold]"
    return str(count) if count else "[dim]0[/dim]"


def confusion_table(report: dict[str, Any]) -> Fitted:
    """Rows are true classes, columns predicted ones; the diagonal is bold. A terminal too
    narrow for a column per class gets a line saying where the matrix is instead."""
    names = _labels(report)
    table = Table(title="confusion matrix (rows: true, columns: predicted)", title_justify="left")
    table.add_column("true \\ pred", overflow="fold")
    for name in names:
        table.add_column(name, justify="right")
    for i, (name, row) in enumerate(zip(names, report["confusion_matrix"], strict=True)):
        table.add_row(name, *(_cell(n, diagonal=i == j) for j, n in enumerate(row)))
    instead = "[dim]confusion matrix: too wide for this terminal; in --json and -o cm.png[/dim]"
    return Fitted(table, instead=instead)


def header(report: dict[str, Any]) -> str:
    return (
        f"[bold]{escape(report['checkpoint'])}[/bold] ({report['kind']}) on "
        f"{escape(report['data'])} {report['split']}: {count(report['samples'], 'sample')}, "
        f"batch {report['batch_size']}, {report['device']}"
    )


def report_view(report: dict[str, Any]) -> RenderableType:
    parts: list[RenderableType] = [header(report), metrics_table(report)]
    if report["per_class"]:
        parts.append(per_class_table(report))
    matrix = report["confusion_matrix"]
    if matrix and len(matrix) <= MAX_MATRIX_CLASSES:
        parts.append(confusion_table(report))
    elif matrix:
        parts.append(f"[dim]{len(matrix)} classes: confusion matrix in --json and -o cm.png[/dim]")
    return Group(*parts)


def distinct_names(paths: list[str]) -> list[str]:
    """The shortest path endings that tell the files apart: `best.pt` and `last.pt`, but
    `a/best.pt` and `b/best.pt` for two runs' best checkpoints."""
    parts = [Path(path).parts for path in paths]
    for depth in range(1, max(map(len, parts)) + 1):
        names = [str(Path(*p[-depth:])) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(path) for path in paths]


def compare_table(reports: list[dict[str, Any]]) -> Fitted:
    """A column per checkpoint; the second and later ones show their difference vs the first."""
    first = reports[0]
    samples = count(first["samples"], "sample")
    title = f"{first['data']} {first['split']}: {samples}, {first['device']}"
    table = Table(title=escape(title), title_justify="left")
    table.add_column("metric", overflow="fold")
    names = distinct_names([report["checkpoint"] for report in reports])
    for name, report in zip(names, reports, strict=True):
        table.add_column(f"{escape(name)}\n({report['kind']})", justify="right")
    for name in first["metrics"]:
        cells = [format_metric(name, first["metrics"][name])]
        for report in reports[1:]:
            value = report["metrics"].get(name)
            delta = report["vs_first"].get(name)
            cells.append(
                format_metric(name, value)
                + (f" ({format_change(name, delta)})" if delta is not None else "")
            )
        table.add_row(name, *cells)
    table.add_section()
    base = first["samples_per_s"]
    cells = [f"{base:,.0f}"] + [
        f"{r['samples_per_s']:,.0f} ({r['samples_per_s'] / base:.2f}x)" for r in reports[1:]
    ]
    table.add_row("samples/s", *cells)
    table.add_row("batch latency (median)", *(f"{r['batch_latency_ms']:.3f} ms" for r in reports))
    return Fitted(table)


def write_confusion_image(report: dict[str, Any], file: IO[bytes], image_format: str) -> None:
    """The confusion matrix as an image (matplotlib, Agg: no display needed)."""
    import matplotlib

    matrix, names = report["confusion_matrix"], _names(report)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(matrix)
    size = max(4.0, min(16.0, 0.5 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), names, rotation=90 if n > 10 else 0)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{Path(report['checkpoint']).name}: {report['data']} {report['split']}")
    if n <= MAX_MATRIX_CLASSES:
        peak = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                color = "white" if count > peak / 2 else "black"
                ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(file, format=image_format, dpi=100)
    finally:  # a write that fails leaves no figure open
        plt.close(fig)
