"""The tables `ptool convcalc` prints: one layer, a chain, a padding search."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table
from rich.text import Text

UNSOLVED_HINT = "change the kernel or stride, or take the nearest output shown above"


def dims(values: dict | None) -> str:
    """{'h': 32, 'w': 28} -> '32x28'; equal values stay one number per dim (as --size reads)."""
    if values is None:
        return "-"
    return "x".join(_number(v) for v in values.values())


def _number(value) -> str:
    if isinstance(value, tuple | list):
        return str(value[0]) if value[0] == value[1] else f"{value[0]}+{value[1]}"
    return str(value)


def _channels(result) -> str:
    if result.out_channels is None:
        return "-"
    if result.in_channels is None or result.in_channels == result.out_channels:
        return str(result.out_channels)
    return f"{result.in_channels} -> {result.out_channels}"


def _params(params: int | None) -> str:
    return "-" if params is None else f"{params:,}"


def _token(prefix: str, values: dict) -> str:
    """A chain token: one number when every dimension agrees (chain syntax broadcasts it)."""
    distinct = {_number(v) for v in values.values()}
    return prefix + (distinct.pop() if len(distinct) == 1 else dims(values))


def explanation(result) -> Text:
    """--explain: each formula with the numbers put in, one line per dimension (and layer).

    Print with soft_wrap=True: a formula broken mid-way reads wrong."""
    if hasattr(result, "layers"):
        lines = []
        for index, row in enumerate(result.layers, 1):
            lines.append(f"{index} {describe(row)}")
            lines += [f"  {name}: {text}" for name, text in row.formula.items()]
    else:
        lines = [f"{name}: {text}" for name, text in result.formula.items()]
    return Text("\n".join(lines))


def layer_table(result) -> Table:
    """One row per dimension: the layer's numbers and the output they give."""
    title = f"{result.layer}: {dims(result.input)} -> {dims(result.output)}"
    if result.out_channels is not None:
        title += f", channels {_channels(result)}"
    if result.params is not None and result.layer in ("conv", "convT"):
        title += f", {result.params:,} parameters"
    table = Table(title=escape(title), title_justify="left")
    columns = ["dim", "in"]
    if result.layer == "adaptive":
        columns += ["windows", "as pool"]
    else:
        columns += ["k", "s", "p", "dilation"]
        if result.layer == "convT":
            columns.append("op")
    columns += ["out", "RF", "jump", "start"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("dim",) else "right")
    for name in result.input:
        row = [name, str(result.input[name])]
        if result.layer == "adaptive":
            windows = result.windows[name]
            row += [_windows(windows), _equivalent(windows["equivalent"])]
        else:
            row += [
                str(result.kernel_size[name]),
                str(result.stride[name]),
                _number(result.padding[name]),
                str(result.dilation[name]),
            ]
            if result.layer == "convT":
                row.append(str(result.output_padding[name]))
        row += [str(result.output[name]), *_field_cells(result, name)]
        table.add_row(*row)
    return table


def _field_cells(result, name: str) -> list[str]:
    if result.receptive_field is None:
        return ["-", "-", "-"]
    return [str(result.receptive_field[name]), str(result.jump[name]), str(result.start[name])]


def _windows(windows: dict, shown: int = 3) -> str:
    pairs = [f"{s}-{e}" for s, e in zip(windows["start"], windows["end"], strict=True)]
    if len(pairs) > shown:
        pairs = [*pairs[: shown - 1], "...", pairs[-1]]
    return " ".join(pairs)


def _equivalent(equivalent: dict | None) -> str:
    if equivalent is None:
        return "-"
    return f"k{equivalent['kernel_size']} s{equivalent['stride']}"


def chain_table(chain) -> Table:
    """One row per layer, totals at the bottom."""
    title = f"chain on {dims(chain.input)}"
    if chain.in_channels is not None:
        title += f", {chain.in_channels} channels"
    table = Table(title=title, title_justify="left", show_footer=True)
    footers = [
        "total",
        dims(chain.input),
        dims(chain.output),
        "-" if chain.out_channels is None else str(chain.out_channels),
        _params(chain.params),
        dims(chain.receptive_field),
        dims(chain.jump),
        dims(chain.start),
    ]
    headers = ["layer", "input", "output", "channels", "params", "RF", "jump", "start"]
    for header, footer in zip(headers, footers, strict=True):
        justify = "left" if header == "layer" else "right"
        table.add_column(header, footer=footer, justify=justify, no_wrap=header == "layer")
    for row in chain.layers:
        table.add_row(
            describe(row),
            dims(row.input),
            dims(row.output),
            "-" if row.out_channels is None else str(row.out_channels),
            _params(row.params),
            dims(row.receptive_field),
            dims(row.jump),
            dims(row.start),
        )
    return table


def describe(row) -> str:
    """A layer in chain syntax: 'conv k3 s2 p1', the parameters that differ from defaults."""
    if row.layer == "adaptive":
        return f"adaptive {_token('o', row.output)}"
    tokens = [row.layer, _token("k", row.kernel_size)]
    default_stride = row.kernel_size if row.layer in ("maxpool", "avgpool") else None
    if row.stride != default_stride and set(row.stride.values()) != {1}:
        tokens.append(_token("s", row.stride))
    if any(p != (0, 0) for p in row.padding.values()):
        tokens.append(_token("p", row.padding))
    if set(row.dilation.values()) != {1}:
        tokens.append(_token("d", row.dilation))
    if row.output_padding and set(row.output_padding.values()) != {0}:
        tokens.append(_token("op", row.output_padding))
    if row.groups != 1:
        tokens.append(f"g{row.groups}")
    if row.ceil_mode:
        tokens.append("ceil")
    return " ".join(tokens)


def solve_table(result) -> Table:
    """Per dimension: the paddings that give the target, or the nearest outputs."""
    convT = result.layer == "convT"
    table = Table(
        title=f"{result.layer}: padding for {dims(result.input)} -> {dims(result.target)}",
        title_justify="left",
    )
    for header in ["dim", "input", "target", "padding", *(["output_padding"] * convT), "output"]:
        table.add_column(header, justify="left" if header == "dim" else "right")
    for name, solutions in result.solutions.items():
        rows = solutions or result.nearest.get(name, [])
        for solution in rows:
            output = str(solution.output) + ("" if solutions else " (nearest)")
            cells = [str(solution.padding), *([str(solution.output_padding)] * convT), output]
            table.add_row(name, str(result.input[name]), str(result.target[name]), *cells)
        if not rows:
            table.add_row(name, str(result.input[name]), str(result.target[name]), "none")
    return table


def unsolved_message(result) -> str:
    parts = []
    for name, solutions in result.solutions.items():
        if solutions:
            continue
        nearest = sorted({s.output for s in result.nearest.get(name, [])})
        near = " or ".join(map(str, nearest)) or "no legal output"
        parts.append(f"{name}: no padding gives {result.target[name]}; nearest: {near}")
    return "; ".join(parts)
