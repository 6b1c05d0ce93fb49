"""Shared by tables: number formats (byte sizes, element counts, metrics, ratios) and a table
that fits the terminal without cutting a number."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table


class FittedTable:
    """A table whose cells are never cut, from its rows (header -> cell).

    Rich fits a table that is too wide for the terminal by shrinking every column and cutting
    cells with '…': a parameter count 1,306,176 reads 1,306,… . Here every column keeps room
    for its longest word (text wraps at spaces) and its header; where that is still too wide,
    the `optional` columns go, first named first, and the caption says so; only past them do
    headers fold. Columns named in `left` are left-justified, the rest (numbers) right.
    """

    def __init__(
        self,
        title: str,
        rows: list[dict[str, str]],
        *,
        footer: dict[str, str] | None = None,
        left: Collection[str] = (),
        optional: Sequence[str] = (),
    ):
        self.title, self.rows, self.footer = title, rows, footer
        self.left, self.optional = left, tuple(optional)

    def table(self, dropped: Collection[str] = ()) -> Table:
        table = Table(title=escape(self.title), title_justify="left", caption_justify="left")
        table.show_footer = self.footer is not None
        shown = [name for name in self.rows[0] if name not in dropped]
        for name in shown:
            justify = "left" if name in self.left else "right"
            table.add_column(name, footer=(self.footer or {}).get(name, ""), justify=justify)
        for row in self.rows:
            table.add_row(*(row[name] for name in shown))
        if dropped:
            table.caption = f"not shown at this width: {', '.join(dropped)} (--json has them)"
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for count in range(len(self.optional) + 1):
            table = self.table(self.optional[:count])
            if _fit(table, console, options, whole_headers=True):
                break
        else:
            _fit(table, console, options, whole_headers=False)
        yield table


def _fit(table: Table, console: Console, options: ConsoleOptions, *, whole_headers: bool) -> bool:
    """Give the columns widths that keep every cell's words whole within the terminal (the
    headers' too, with `whole_headers`); False where no widths do. Rich's own layout shrinks
    columns below their numbers, so where it would shrink any, the widths are set here."""
    unbounded = options.update_width(10**6)
    sizes = [
        [Measurement.get(console, unbounded, cell) for cell in (column.footer, *column.cells)]
        for column in table.columns
    ]
    headers = [Measurement.get(console, unbounded, column.header) for column in table.columns]
    natural = [max(m.maximum for m in (h, *ms)) for h, ms in zip(headers, sizes, strict=True)]
    room = options.max_width - (Measurement.get(console, unbounded, table).maximum - sum(natural))
    if sum(natural) <= room:
        return True
    widths = [
        max(m.minimum for m in (*ms, *([h] if whole_headers else []))) or 1
        for h, ms in zip(headers, sizes, strict=True)
    ]
    if sum(widths) > room:
        return False
    for i in sorted(range(len(widths)), key=lambda i: natural[i] - widths[i]):
        # the room left, to the columns nearest their full width first: most headers stay whole
        widths[i] += min(natural[i] - widths[i], room - sum(widths))
    for column, width in zip(table.columns, widths, strict=True):
        column.width, column.overflow = width, "fold"
    return True


def human_bytes(n: int | float | None) -> str:
    """1536 -> '1.5 KiB' (powers of 1024, as file managers and torch.cuda.memory_summary)."""
    if n is None:
        return "-"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    for unit in units:
        if abs(n) < 1024 or unit == units[-1]:
            break
        n /= 1024
    return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"


def human_count(n: int | None) -> str:
    """11689512 -> '11.7M' (parameter counts as model cards write them)."""
    if n is None:
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


# Metrics the human tables show; --json always carries all of them.
SHOWN_METRICS = ("loss", "accuracy", "mae", "rmse", "r2")


def _is_fraction(name: str) -> bool:
    return name.rsplit("/", 1)[-1] == "accuracy"


def format_metric(name: str, value: float | None) -> str:
    """Accuracy as a percentage, everything else with four significant digits."""
    if value is None:
        return "-"
    return f"{value:.2%}" if _is_fraction(name) else f"{value:.4g}"


def format_change(name: str, delta: float) -> str:
    """A metric's change: accuracy in percentage points, the rest in its own unit."""
    return f"{delta * 100:+.2f} pts" if _is_fraction(name) else f"{delta:+.4g}"


def format_ratio(ratio: float, better: str, worse: str) -> str:
    """old/new as the reader says it, never below 1x: '2.09x faster', '1.75x slower'."""
    return f"{ratio:.2f}x {better}" if ratio >= 1 else f"{1 / ratio:.2f}x {worse}"


def format_speedup(ratio: float) -> str:
    """old/new latency: '2.09x faster' or '1.75x slower'."""
    return format_ratio(ratio, "faster", "slower")


def timing_spread(spread: float) -> str:
    """The latency footnote's word on noise: the timings' interquartile range over the median,
    and a warning where it is large enough to move a ratio."""
    if spread < 0.05:
        return ""
    text = f", timings spread {spread:.0%} (interquartile range)"
    if spread >= 0.25:
        text += ": a busy machine, the ratio may be off; rerun with more --bench-runs"
    return text


def format_shrink(ratio: float) -> str:
    """old/new size: '3.91x smaller' or, when the new file grew, '1.01x larger'."""
    return format_ratio(ratio, "smaller", "larger")
