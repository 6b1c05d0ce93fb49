"""The tables `ptool convcalc` prints: one layer, a chain, a padding search."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from rich.text import Text

from ptool.ui.tables import Fitted, fitted_table

UNSOLVED_HINT = "change the kernel or stride, or take the nearest output shown above"
# What a narrow terminal leaves out first: the receptive field's details, then its size.
OPTIONAL = ("start", "jump", "RF")


def json_data(result) -> dict:
    """The result as --json writes it. JSON has no 1/3: an exact fraction (a receptive field
    after a stride-3 convT) becomes the nearest float; whole values are ints already."""
    import dataclasses
    import json

    return json.loads(json.dumps(dataclasses.asdict(result), default=float))


def dims(values: dict | None) -> str:
    """{'h': 32, 'w': 28} -> '32x28'; equal values stay one number per dim (as --size reads)."""
    if values is None:
        return "-"
    return "x".join(_number(v) for v in values.values())


def _number(value) -> str:
    if isinstance(value, tuple | list):
        return str(value[0]) if value[0] == value[1] else f"{value[0]}+{value[1]}"
    if isinstance(value, Fraction):
        return _fraction(value)
    return str(value)


def _fraction(value: Fraction) -> str:
    """Exact: a decimal where it ends within three places (2.5, 0.125), else 1/3, -4/9."""
    if 1000 % value.denominator:
        return str(value)
    return str(Decimal(value.numerator) / value.denominator)


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


def layer_table(result) -> Fitted:
    """One row per dimension: the layer's numbers and the output they give."""
    title = f"{result.layer}: {dims(result.input)} -> {dims(result.output)}"
    if result.out_channels is not None:
        title += f", channels {_channels(result)}"
    if result.params is not None and result.layer in ("conv", "convT"):
        title += f", {result.params:,} parameters"
    rows = []
    for name in result.input:
        row = {"dim": name, "in": str(result.input[name])}
        if result.layer == "adaptive":
            windows = result.windows[name]
            row |= {"windows": _windows(windows), "as pool": _equivalent(windows["equivalent"])}
        else:
            row["k"] = str(result.kernel_size[name])
            row["s"] = str(result.stride[name])
            row["p"] = _number(result.padding[name])
            row["dilation"] = str(result.dilation[name])
            if result.layer == "convT":
                row["op"] = str(result.output_padding[name])
        row["out"] = str(result.output[name])
        fields = {"RF": result.receptive_field, "jump": result.jump, "start": result.start}
        row |= {key: "-" if v is None else _number(v[name]) for key, v in fields.items()}
        rows.append(row)
    return fitted_table(title, rows, left=("dim",), optional=OPTIONAL)


def _windows(windows: dict, shown: int = 3) -> str:
    pairs = [f"{s}-{e}" for s, e in zip(windows["start"], windows["end"], strict=True)]
    if len(pairs) > shown:
        pairs = [*pairs[: shown - 1], "...", pairs[-1]]
    return " ".join(pairs)


def _equivalent(equivalent: dict | None) -> str:
    if equivalent is None:
        return "-"
    return f"k{equivalent['kernel_size']} s{equivalent['stride']}"


def chain_table(chain) -> Fitted:
    """One row per layer, totals at the bottom."""
    title = f"chain on {dims(chain.input)}"
    if chain.in_channels is not None:
        title += f", {chain.in_channels} channels"
    rows = [{"layer": describe(row), **_chain_cells(row)} for row in chain.layers]
    footer = {"layer": "total", **_chain_cells(chain)}
    return fitted_table(title, rows, footer=footer, left=("layer",), optional=OPTIONAL)


def _chain_cells(row) -> dict[str, str]:
    """A layer's row of the chain table, or the chain's totals."""
    return {
        "input": dims(row.input),
        "output": dims(row.output),
        "channels": "-" if row.out_channels is None else str(row.out_channels),
        "params": _params(row.params),
        "RF": dims(row.receptive_field),
        "jump": dims(row.jump),
        "start": dims(row.start),
    }


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


def solve_table(result) -> Fitted:
    """Per dimension: the paddings that give the target, or the nearest outputs."""
    rows = []
    for name, solutions in result.solutions.items():
        mark = "" if solutions else " (nearest)"
        found = [
            (str(s.padding), str(s.output_padding), f"{s.output}{mark}")
            for s in solutions or result.nearest.get(name, [])
        ]
        for padding, output_padding, output in found or [("none", "", "")]:
            row = {
                "dim": name,
                "input": str(result.input[name]),
                "target": str(result.target[name]),
                "padding": padding,
            }
            if result.layer == "convT":
                row["output_padding"] = output_padding
            rows.append(row | {"output": output})
    title = f"{result.layer}: padding for {dims(result.input)} -> {dims(result.target)}"
    return fitted_table(title, rows, left=("dim",))


def unsolved_message(result) -> str:
    parts = []
    for name, solutions in result.solutions.items():
        if solutions:
            continue
        nearest = sorted({s.output for s in result.nearest.get(name, [])})
        near = " or ".join(map(str, nearest)) or "no legal output"
        parts.append(f"{name}: no padding gives {result.target[name]}; nearest: {near}")
    return "; ".join(parts)
