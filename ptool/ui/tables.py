"""Shared by tables: number formats (byte sizes, element counts, metrics, ratios) and a table
that fits the terminal without cutting a number."""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Sequence

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

# The narrowest a foldable text cell (a path, a tensor name) is folded to before columns go;
# past every optional column, down to one character before any number folds.
FOLDED_TEXT = 10


def fitted_table(
    title: str,
    rows: list[dict[str, str]],
    *,
    footer: dict[str, str] | None = None,
    left: Collection[str] = (),
    optional: Sequence[str] = (),
) -> Fitted:
    """A table from its rows (header -> cell) whose numbers are never cut (see `Fitted`).
    Columns named in `left` are left-justified, the rest (numbers) right."""
    table = Table(title=escape(title), title_justify="left", show_footer=footer is not None)
    for name in rows[0]:
        justify = "left" if name in left else "right"
        table.add_column(name, footer=(footer or {}).get(name, ""), justify=justify)
    for row in rows:
        table.add_row(*row.values())
    return Fitted(table, optional=optional)


class Fitted:
    """A rich Table laid out so that its numbers are never cut.

    Rich fits a table that is too wide for the terminal by shrinking every column and cutting
    cells with '…': a parameter count 1,306,176 reads 1,306,… . Here every column keeps room
    for its longest word (text wraps at spaces) and its header; long text in a column or cell
    whose overflow is "fold" (a path, a tensor name) folds; then the `optional` columns (by
    header, first named first) go, and the caption says so; then headers fold. Where no layout
    keeps the numbers whole, `instead` is shown (a line saying where the numbers are), else the
    table with its numbers folded over two lines, never cut. The table is not changed: each
    rendering lays out a copy, so in a pipe (wide enough) the table prints as built."""

    def __init__(
        self,
        table: Table,
        *,
        optional: Sequence[str] = (),
        instead: RenderableType | None = None,
    ):
        self.source, self.optional, self.instead = table, tuple(optional), instead

    def table(self, dropped: Collection[str] = ()) -> Table:
        table = copy.copy(self.source)
        kept = [column for column in self.source.columns if str(column.header) not in dropped]
        # a Table built of the kept columns numbers them (rich pads the first and last apart)
        table.columns = Table(*map(copy.copy, kept)).columns
        if dropped:
            table.caption = f"not shown at this width: {', '.join(dropped)} (--json has them)"
            table.caption_justify = "left"
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        title, table = self.source.title, self.table()
        table.title = None
        drawn = _drawn(table, console, options)
        if drawn is not None:  # a long table in a pipe, as rich draws it, in a fraction
            if title is not None:
                yield _title_line(title)
            yield Segment("\n".join(drawn) + "\n")
            return
        table, whole = _laid_out(self.table, self.optional, console, options)
        if not whole and self.instead is not None:
            yield self.instead
            return
        if table.title is not None:  # a line of its own: rich wraps a title at the table's
            # width, so a narrow table's came out over two lines even in a pipe (`grep` missed)
            title, table.title = table.title, None
            yield _title_line(title)
        yield table

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.source)


def _title_line(title: RenderableType) -> RenderableType:
    return Text.from_markup(title, style="table.title") if isinstance(title, str) else title


def _laid_out(
    build: Callable[[Collection[str]], Table],
    optional: Sequence[str],
    console: Console,
    options: ConsoleOptions,
) -> tuple[Table, bool]:
    """The table with the fewest columns dropped whose numbers fit whole (folding long text
    before dropping a column); past every optional column, headers fold, then text folds
    narrower still; past that, cells fold: a number split over two lines still reads, one cut
    to '…' does not. With it, whether the numbers are whole."""
    for count in range(len(optional) + 1):
        table = build(optional[:count])
        for text_floor in (None, FOLDED_TEXT):
            if _fit(table, console, options, whole_headers=True, text_floor=text_floor):
                return table, True
    for text_floor in (FOLDED_TEXT, 1):
        if _fit(table, console, options, whole_headers=False, text_floor=text_floor):
            return table, True
    for column in table.columns:
        column.overflow = "fold"
    return table, False


def _folds(cell: object, overflow: str | None) -> bool:
    """Whether a cell is text that may fold anywhere: its own overflow, else its column's."""
    return (getattr(cell, "overflow", None) or overflow) == "fold"


def _fit(
    table: Table,
    console: Console,
    options: ConsoleOptions,
    *,
    whole_headers: bool,
    text_floor: int | None = None,
) -> bool:
    """Give the columns widths that keep every cell's words whole within the terminal (the
    headers' too, with `whole_headers`; with `text_floor`, foldable text may fold down to that
    many columns); False where no widths do. Rich's own layout shrinks columns below their
    numbers, so where it would shrink any, the widths are set here."""
    unbounded = options.update_width(10**6)
    sizes = [
        [
            (Measurement.get(console, unbounded, cell), _folds(cell, column.overflow))
            for cell in (column.footer, *column.cells)
        ]
        for column in table.columns
    ]
    headers = [Measurement.get(console, unbounded, column.header) for column in table.columns]
    natural = [
        max([h.maximum, *(m.maximum for m, _ in ms)]) for h, ms in zip(headers, sizes, strict=True)
    ]
    room = options.max_width - (Measurement.get(console, unbounded, table).maximum - sum(natural))
    if sum(natural) <= room:
        return True

    def least(floor: int | None) -> list[int]:
        return [
            max(
                h.minimum if whole_headers else 0,
                *(min(m.minimum, floor) if folds and floor else m.minimum for m, folds in ms),
            )
            or 1
            for h, ms in zip(headers, sizes, strict=True)
        ]

    widths = least(text_floor)
    if sum(widths) > room:
        return False
    # the room left: first to folded text, to keep its words whole where it can; then to the
    # columns nearest their full width first, so that most headers stay whole
    for target in (least(None), natural):
        for i in sorted(range(len(widths)), key=lambda i: target[i] - widths[i]):
            widths[i] += max(0, min(target[i] - widths[i], room - sum(widths)))
    for column, width in zip(table.columns, widths, strict=True):
        column.width, column.overflow = width, "fold"
    return True


# Rich measures every cell several times over: a table of 10,000 rows took 20 s to print.
# From this many rows, a plain table in a pipe is drawn here instead, line for line as rich
# draws it (tested against rich).
DRAWN_ROWS = 200


def _plain_text(cell: object) -> tuple[str, str | None] | None:
    """A cell's one line of text and its own justification, or None for anything else."""
    if isinstance(cell, str):
        text, justify = (Text.from_markup(cell).plain if "[" in cell else cell), None
    elif isinstance(cell, Text):
        text, justify = cell.plain, cell.justify
    else:
        return None
    return None if "\n" in text or "\t" in text else (text, justify)


def _drawn(table: Table, console: Console, options: ConsoleOptions) -> list[str] | None:
    """The lines rich prints for a long, plain table (its default heavy-headed box, one space
    of padding, headers, no styles to show: a pipe), or None where the table is of another
    kind, or wider than the console."""
    plain_layout = (
        table.box is not None
        and table.show_header
        and table.show_edge
        and table.pad_edge
        and not (table.show_lines or table.leading or table.expand or table.width)
        and table.padding == (0, 1, 0, 1)
        and table.title is None
        and table.caption is None
        and console.color_system is None
        and all(
            c.justify in ("left", "right")
            and c.width is None
            and c.min_width is None
            and c.max_width is None
            and c.ratio is None
            for c in table.columns
        )
    )
    if not plain_layout or table.row_count < DRAWN_ROWS:
        return None
    columns = []
    for column in table.columns:
        cells = [column.header, *column.cells] + ([column.footer] if table.show_footer else [])
        texts = [_plain_text(cell) for cell in cells]
        if None in texts:
            return None
        columns.append(texts)
    widths = [max(cell_len(text) for text, _ in texts) for texts in columns]
    padded = [width + 2 for width in widths]
    if sum(padded) + len(padded) + 1 > options.max_width:
        return None
    safe = console.safe_box if table.safe_box is None else table.safe_box
    box = table.box.substitute(options, safe=safe)

    def row(index: int, left: str, vertical: str, right: str) -> str:
        cells = []
        for texts, width, column in zip(columns, widths, table.columns, strict=True):
            text, justify = texts[index]
            gap = " " * (width - cell_len(text))
            right_aligned = (justify or column.justify) == "right"
            cells.append(f" {gap}{text} " if right_aligned else f" {text}{gap} ")
        return left + vertical.join(cells) + right

    lines = [box.get_top(padded), row(0, box.head_left, box.head_vertical, box.head_right)]
    lines.append(box.get_row(padded, "head"))
    count = table.row_count
    for index in range(count):
        lines.append(row(index + 1, box.mid_left, box.mid_vertical, box.mid_right))
        if table.rows[index].end_section and index < count - 1:  # none after the last row
            lines.append(box.get_row(padded, "row"))
    if table.show_footer:
        lines.append(box.get_row(padded, "foot"))
        lines.append(row(count + 1, box.foot_left, box.foot_vertical, box.foot_right))
    lines.append(box.get_bottom(padded))
    return lines


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


def latency_note(runs: int, threads: int, spread: float) -> str:
    """The latency footnote of the prune and quantize reports: how the figures were taken,
    and a word on noise (the timings' interquartile range over the median) where it is large
    enough to show, a warning where it could move a ratio."""
    from ptool.core.errors import count

    text = (
        f"latency: median of {runs} runs after warm-up, {count(threads, 'thread')}, random inputs"
    )
    if spread >= 0.05:
        text += f", timings spread {spread:.0%} (interquartile range)"
    if spread >= 0.25:
        text += ": a busy machine, the ratio may be off; rerun with more --bench-runs"
    return text


def format_shrink(ratio: float) -> str:
    """old/new size: '3.91x smaller' or, when the new file grew, '1.01x larger'."""
    return format_ratio(ratio, "smaller", "larger")
