"""How `ptool lr-plot` shows lines: a terminal chart (plotext), a key-number table, CSV, and a
matplotlib figure (imported only when a figure is written)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


def _x(line: Any, x_axis: str) -> list[float]:
    if x_axis == "step":
        return [float(s) for s in line.steps]
    return [s / line.steps_per_epoch for s in line.steps]


def envelope(xs: Sequence[float], ys: Sequence[float], buckets: int) -> tuple[list, list]:
    """At most ~2 points per bucket (each bucket's low and high, in order), so a drawing of
    100,000 steps keeps every jump and every extreme a pixel column can show."""
    n = len(xs)
    if n <= 2 * buckets:
        return list(xs), list(ys)
    out_x: list[float] = []
    out_y: list[float] = []
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        chunk = ys[lo:hi]
        i_min = lo + min(range(len(chunk)), key=chunk.__getitem__)
        i_max = lo + max(range(len(chunk)), key=chunk.__getitem__)
        for i in sorted({lo, i_min, i_max, hi - 1}):
            out_x.append(xs[i])
            out_y.append(ys[i])
    return out_x, out_y


def terminal_chart(
    lines: Sequence[Any],
    *,
    x_axis: str,
    log_y: bool,
    title: str,
    width: int,
    height: int,
) -> str:
    """A braille chart, one colour per line, with axis labels and a legend."""
    import plotext

    figure = plotext.figure
    figure.clear()
    figure.theme("simple")  # no painted background: the terminal's own shows through
    figure.plot_size(width, height)
    for line in lines:
        xs, ys = envelope(_x(line, x_axis), line.lrs, buckets=2 * width)
        signal = figure.signal(xs, ys, marker="braille").lines().label(line.label)
        figure.draw(signal)
    if log_y:
        figure.ruler("y").scale("log")
    figure.label(x_axis, "x")
    figure.label("lr", "y")
    figure.title(title)
    chart = figure.build().string()
    figure.clear()
    return chart


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _steps(steps: list[int], limit: int = 6) -> str:
    if not steps:
        return "-"
    shown = ", ".join(map(str, steps[:limit]))
    return shown + (f", ... ({len(steps)})" if len(steps) > limit else "")


def key_table(lines: Sequence[Any]) -> Table:
    """The numbers under the chart: start, peak, end, warmup end, restarts (steps)."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("series", "start", "peak", "at step", "end", "warmup end", "restarts"):
        if name == "series":  # long --compare labels fold; the numbers never do
            table.add_column(name, overflow="fold", max_width=32)
        elif name == "restarts":
            table.add_column(name)
        else:
            table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    for line in lines:
        key = line.key_numbers()
        table.add_row(
            line.label,
            _fmt(key["start"]),
            _fmt(key["peak"]),
            str(key["peak_step"]),
            _fmt(key["end"]),
            "-" if key["warmup_end_step"] is None else str(key["warmup_end_step"]),
            _steps(key["restart_steps"]),
        )
    return table


def csv_text(lines: Sequence[Any]) -> str:
    """`step,epoch,lr,group,series`, one row per line and step."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["step", "epoch", "lr", "group", "series"])
    for line in lines:
        spe = line.steps_per_epoch
        writer.writerows(
            (s, s / spe, repr(lr), line.group, line.label)
            for s, lr in zip(line.steps, line.lrs, strict=True)
        )
    return buffer.getvalue()


def write_figure(lines: Sequence[Any], path: Path, *, x_axis: str, log_y: bool, title: str) -> Path:
    """A publication-quality figure: each lr held over its step (steps-post), logged lines
    dashed over the computed ones, warmup end marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    try:
        for line in lines:
            logged = line.kind == "logged"
            ax.plot(
                _x(line, x_axis),
                line.lrs,
                drawstyle="steps-post",
                linestyle="--" if logged else "-",
                linewidth=1.2 if logged else 1.6,
                label=line.label,
            )
        warmups = {
            line.warmup_end_step / (1 if x_axis == "step" else line.steps_per_epoch)
            for line in lines
            if line.warmup_end_step
        }
        for at in sorted(warmups):
            ax.axvline(at, color="0.6", linestyle=":", linewidth=1)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("optimizer step" if x_axis == "step" else "epoch")
        ax.set_ylabel("learning rate")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0)
        ax.legend(framealpha=0.9, fontsize="small")
        fig.savefig(path, dpi=200)
    finally:
        plt.close(fig)
    return path
