"""How `ptool lr-plot` shows lines: a terminal chart (plotext), a key-number table, CSV, and a
matplotlib figure (imported only when a figure is written)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from typing import IO, Any, TextIO

from rich.table import Table

from ptool.ui.tables import Fitted


def _points(line: Any, x_axis: str) -> tuple[list[float], list[float]]:
    """The first and last step of each run of one lr: drawn as if every step were, a held lr
    flat and a change one step wide, at the cost of two points per run. The last lr is held
    to the end of its step, so the axis ends where the schedule does (3 epochs at 3.0)."""
    scale = 1 if x_axis == "step" else line.steps_per_epoch
    xs: list[float] = []
    ys: list[float] = []
    runs = line.runs
    for first, n, lr in zip(runs.steps, runs.counts, runs.lrs, strict=True):
        for step in dict.fromkeys((first, first + n - 1)):
            xs.append(step / scale)
            ys.append(lr)
    if xs:
        xs.append((runs.steps[-1] + runs.counts[-1]) / scale)
        ys.append(runs.lrs[-1])
    return xs, ys


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
        xs, ys = envelope(*_plotted(*_points(line, x_axis), log_y), buckets=2 * width)
        signal = figure.signal(xs, ys, marker="braille").lines().label(line.label)
        figure.draw(signal)
    low, high = _y_range([lr for line in lines for lr in line.runs.lrs], log_y)
    figure.ruler("y").lim(low, high)
    figure.ruler("y").ticks(*_y_ticks(low, high, log_y))
    figure.label(x_axis, "x")
    figure.label("lr", "y")
    figure.title(title)
    chart = figure.build().string()
    figure.clear()
    return chart


def _plotted(xs: list[float], lrs: Sequence[float], log_y: bool) -> tuple[list, list]:
    """The points drawn: on a log axis log10(lr), drawn by hand (plotext's own log axis labels
    its ticks with fixed decimals, and fails on an lr of 0, which a log axis cannot show)."""
    if not log_y:
        return xs, list(lrs)
    kept = [(x, math.log10(lr)) for x, lr in zip(xs, lrs, strict=True) if lr > 0]
    return [x for x, _ in kept], [y for _, y in kept]


def _y_range(lrs: Sequence[float], log_y: bool) -> tuple[float, float]:
    """The data's range (in log10 on a log axis); a constant lr gets a band around it, not the
    [-1, 1] plotext would give it."""
    values = [math.log10(lr) for lr in lrs if lr > 0] if log_y else list(lrs)
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if low == high:
        pad = 1.0 if log_y else abs(low) / 2 or 1.0
        low, high = low - pad, high + pad
    return low, high


def _y_ticks(low: float, high: float, log_y: bool) -> tuple[list, list]:
    """Tick positions and compact labels: whole decades on a log axis spanning two or more,
    else round values (0.025, 0.05, ...) placed on the axis's own scale."""
    if not log_y:
        values = _round_ticks(low, high)
        return values, _compact(values)
    first, last = math.ceil(low), math.floor(high)
    decades = list(range(first, last + 1, max(1, math.ceil((last - first + 1) / 6))))
    values = [10.0**d for d in decades] if len(decades) >= 2 else _round_ticks(10**low, 10**high)
    return [math.log10(v) for v in values], _compact(values)


def _round_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """The multiples of 1, 2, 2.5 or 5 x 10^k in [low, high], the finest step giving at most
    `most` of them (two at least)."""
    base = 10 ** math.floor(math.log10((high - low) / most))
    for mult in (1, 2, 2.5, 5, 10):
        step = base * mult
        first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
        if last - first < most:
            break
    return [min(max(k * step, low), high) for k in range(first, last + 1)]


def _compact(values: list[float]) -> list[str]:
    """`.3g` (4e-7, 0.075, 0.1), more digits only where neighbours would read the same."""
    for digits in range(3, 10):
        labels = [_tidy(f"{v:.{digits}g}") for v in values]
        if len(set(labels)) == len(set(values)):
            return labels
    return labels


def _tidy(label: str) -> str:
    """1e-07 -> 1e-7, 1e+20 -> 1e20: the exponent's sign and zero say nothing."""
    return label.replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _steps(steps: list[int], limit: int = 6) -> str:
    if not steps:
        return "-"
    shown = ", ".join(map(str, steps[:limit]))
    return shown + (f", ... ({len(steps)})" if len(steps) > limit else "")


def key_table(lines: Sequence[Any], *, fold: bool = True) -> Table | Fitted:
    """The numbers under the chart: start, peak, end, warmup end, restarts (steps). On a
    terminal (`fold`) long --compare labels fold and the numbers stay whole: a narrow one
    leaves out the restarts, the warmup end, then the peak's step (--json has them); in a
    pipe every row stays one line."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("series", overflow="fold" if fold else "ellipsis", no_wrap=not fold)
    for name in ("start", "peak", "at step", "end", "warmup end"):
        table.add_column(name, justify="right")
    table.add_column("restarts")
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
    return Fitted(table, optional=("restarts", "warmup end", "at step")) if fold else table


def write_csv(lines: Sequence[Any], file: TextIO) -> None:
    """`step,epoch,lr,group,series`, one row per line and step, written as they are made."""
    writer = csv.writer(file, lineterminator="\n")
    writer.writerow(["step", "epoch", "lr", "group", "series"])
    for line in lines:
        spe = line.steps_per_epoch
        writer.writerows(
            (s, s / spe, repr(lr), line.group, line.label) for s, lr in line.runs.rows()
        )


def write_figure(
    lines: Sequence[Any],
    file: IO[bytes],
    image_format: str,
    *,
    x_axis: str,
    log_y: bool,
    title: str,
) -> None:
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
                *_points(line, x_axis),
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
        fig.savefig(file, format=image_format, dpi=200)
    finally:
        plt.close(fig)
