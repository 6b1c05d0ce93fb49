"""Conv / transposed conv / pooling arithmetic exactly as PyTorch computes it, without torch.

Pure standard library: `ptool convcalc` must answer in the time `import typer` takes. Every rule
here is the one `torch.nn` applies (output-size formulas, padding='same', ceil_mode's last-window
rule, the checks that raise); the tests drive real `torch.nn` layers as the oracle.

Receptive field per dimension (Dumoulin & Visin; Araujo et al.'s receptive-field arithmetic), in
input-pixel units and index coordinates (0 is the centre of the first input pixel):
    conv/pool (effective kernel ke = d*(k-1)+1):  j' = j*s,  r' = r + (ke-1)*j,
        start' = start + ((ke-1)/2 - p_left)*j
    convT: each output is fed by the inputs within (ke-1)/s of each other, so
        j' = j/s,  r' = r + (ke-1)/s*j,  start' = start + (p_left - (ke-1)/2)/s*j
    (a continuous bound: an output pixel's true field is this interval's whole pixels).
The arithmetic is exact (fractions.Fraction): a stride-3 convT makes the jump 1/3, which floats
would carry on as 0.333... and the chain's later fields as 2.999999999.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import partial
from typing import Any

from ptool.core.errors import UsageError, count

LAYERS = ("conv", "convT", "maxpool", "avgpool", "adaptive")
POOLS = ("maxpool", "avgpool")
DIM_NAMES = {1: ("w",), 2: ("h", "w"), 3: ("d", "h", "w")}
PADDING_MODES = ("same", "valid")

Ints = tuple[int, ...]
Exact = int | Fraction  # a receptive-field value: an int when whole


@dataclass(frozen=True)
class LayerSpec:
    """One layer's parameters; tuples of length 1 broadcast to every dimension.

    `stride=None` means PyTorch's default (1, or the kernel for pooling); `out_channels=None`
    keeps the input's channels.
    """

    layer: str = "conv"
    kernel_size: Ints | None = (1,)
    stride: Ints | None = None
    padding: Ints | str = (0,)
    dilation: Ints = (1,)
    output_padding: Ints = (0,)
    ceil_mode: bool = False
    out_channels: int | None = None
    groups: int = 1
    bias: bool = True
    output_size: Ints | None = None


@dataclass(frozen=True)
class Field:
    """Receptive field of one dimension: size, jump (effective stride) and centre of output 0."""

    receptive_field: Exact
    jump: Exact
    start: Exact


IDENTITY = Field(1, 1, 0)


@dataclass(frozen=True)
class LayerResult:
    """One layer applied to one input size; dicts are keyed by dimension name (d, h, w)."""

    layer: str
    input: dict[str, int]
    output: dict[str, int]
    kernel_size: dict[str, int] | None
    stride: dict[str, int] | None
    padding: dict[str, tuple[int, int]]
    dilation: dict[str, int]
    output_padding: dict[str, int] | None
    ceil_mode: bool
    in_channels: int | None
    out_channels: int | None
    groups: int
    bias: bool
    params: int | None
    receptive_field: dict[str, Exact] | None
    jump: dict[str, Exact] | None
    start: dict[str, Exact] | None
    formula: dict[str, str]
    windows: dict[str, dict] | None = None


@dataclass(frozen=True)
class ChainResult:
    """A chain of layers: one row per layer and the totals of the whole chain."""

    input: dict[str, int]
    in_channels: int | None
    layers: list[LayerResult]
    output: dict[str, int] = field(default_factory=dict)
    out_channels: int | None = None
    params: int | None = None
    receptive_field: dict[str, Exact] | None = None
    jump: dict[str, Exact] | None = None
    start: dict[str, Exact] | None = None


@dataclass(frozen=True, order=True)
class Solution:
    padding: int
    output_padding: int
    output: int


@dataclass(frozen=True)
class SolveResult:
    """Per dimension: every legal (padding, output_padding) giving the target, smallest first;
    when there is none, the nearest outputs PyTorch allows."""

    layer: str
    input: dict[str, int]
    target: dict[str, int]
    solutions: dict[str, list[Solution]]
    nearest: dict[str, list[Solution]]

    @property
    def solved(self) -> bool:
        return all(self.solutions.values())


# ---------------------------------------------------------------------------------------------
# Parsing


def _given(value) -> str:
    """A rejected value as the user wrote it: quoted text, or JSON (a --stdin line's true, 1.5)."""
    import json

    return repr(value) if isinstance(value, str) else json.dumps(value)


def parse_ints(text: str | int | list | tuple, what: str, *, minimum: int = 0) -> Ints:
    """'3' -> (3,), '3x5' -> (3, 5), [3, 5] -> (3, 5); each value at least `minimum`."""

    def wrong() -> UsageError:  # made when raised: _given's JSON takes no numpy integer
        return UsageError(f"{what} expects integers like 3 or 3x5, got {_given(text)}")

    if isinstance(text, bool):
        raise wrong()
    if isinstance(text, int):
        values: Ints = (text,)
    elif isinstance(text, (list, tuple)):  # one integer per item: not [[3, 5]] nor ["3x5", 2]
        parsed = [
            () if isinstance(v, (list, tuple)) else parse_ints(v, what, minimum=minimum)
            for v in text
        ]
        if any(len(item) != 1 for item in parsed):
            raise wrong()
        values = tuple(item[0] for item in parsed)
    else:
        parts = str(text).strip().lower().split("x")
        if not all(re.fullmatch(r"-?[0-9]+", p.strip()) for p in parts):  # not \d: "３"
            raise wrong()
        values = tuple(int(p) for p in parts)
    if not values:
        raise wrong()
    for v in values:
        if v < minimum:
            raise UsageError(f"{what} must be >= {minimum}, got {v}")
    return values


def parse_size(text: str | int | list | tuple) -> dict[str, int]:
    """'16x32x32' -> {'d': 16, 'h': 32, 'w': 32}; one value is 'w', two are 'h', 'w'."""
    values = parse_ints(text, "size", minimum=1)
    if len(values) > 3:
        raise UsageError(f"size has at most 3 dimensions (d, h, w), got {len(values)}")
    return dict(zip(DIM_NAMES[len(values)], values, strict=True))


def parse_padding(text: str | int | list | tuple) -> Ints | str:
    if isinstance(text, str) and text.strip().lower() in PADDING_MODES:
        return text.strip().lower()
    return parse_ints(text, "padding")


def _text(value, what: str, example: str) -> str:
    """A --stdin line's JSON value where text belongs (a layer name, a chain)."""
    if not isinstance(value, str):
        raise UsageError(f"{what} expects text like {example}, got {_given(value)}")
    return value


def parse_layer(name: str) -> str:
    name = _text(name, "layer", "'conv'")
    for layer in LAYERS:
        if name.lower() == layer.lower():
            return layer
    from ptool.core.errors import unknown_name

    raise unknown_name("layer", name, LAYERS)


# Chain tokens: prefix -> (LayerSpec field, parser). Longer prefixes first ('op' before 'o').
_TOKENS = (
    ("op", "output_padding", lambda v: parse_ints(v, "op (output_padding)")),
    ("k", "kernel_size", lambda v: parse_ints(v, "k (kernel_size)", minimum=1)),
    ("s", "stride", lambda v: parse_ints(v, "s (stride)", minimum=1)),
    ("p", "padding", parse_padding),
    ("d", "dilation", lambda v: parse_ints(v, "d (dilation)", minimum=1)),
    ("c", "out_channels", lambda v: _single(parse_ints(v, "c (out_channels)", minimum=1), "c")),
    ("g", "groups", lambda v: _single(parse_ints(v, "g (groups)", minimum=1), "g")),
    ("o", "output_size", lambda v: parse_ints(v, "o (output_size)", minimum=1)),
)
TOKEN_HELP = "k3 or k3x5, s2, p1 / psame / pvalid, d2, op1, c32, g2, o7, ceil, nobias"


def _flag(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{what} expects true or false, got {_given(value)}")
    return value


def _single(values: Ints, token: str) -> int:
    if len(values) != 1:
        raise UsageError(f"{token} takes one number, got {'x'.join(map(str, values))}")
    return values[0]


def parse_layer_tokens(text: str) -> LayerSpec:
    """'conv k3 s2 p1 c32' -> LayerSpec; unknown tokens name themselves and the valid ones."""
    tokens = text.split()
    if not tokens:
        raise UsageError("empty layer in chain")
    values: dict = {"layer": parse_layer(tokens[0])}
    given: dict[str, str] = {}  # field -> the token that set it
    for token in tokens[1:]:
        name, value = _parse_token(token, text)
        if name in given:
            raise UsageError(
                f"{token!r} sets {name} again (after {given[name]!r}) in {text.strip()!r}",
                hint="give each parameter of a layer once",
            )
        given[name] = token
        values[name] = value
    return make_spec(**values, explicit=True)


def _parse_token(token: str, text: str) -> tuple[str, Any]:
    """'s2' -> ('stride', (2,)): the LayerSpec field a chain token sets, and its value."""
    lowered = token.lower()
    if lowered == "ceil":
        return "ceil_mode", True
    if lowered == "nobias":
        return "bias", False
    for prefix, name, parse in _TOKENS:
        rest = lowered[len(prefix) :]
        if lowered.startswith(prefix) and rest and (rest[0].isdigit() or name == "padding"):
            return name, parse(rest)
    raise UsageError(f"unknown token {token!r} in {text.strip()!r}", hint=f"valid: {TOKEN_HELP}")


def parse_chain(text: str) -> list[LayerSpec]:
    """Layers separated by ';' or new lines; '#' starts a comment. Blank lines and one ';'
    ending a line are fine; an empty layer between two ';' is a typo, refused."""
    specs: list[LayerSpec] = []
    for line in _text(text, "chain", "'conv k3 p1; maxpool k2'").splitlines():
        line = line.split("#", 1)[0].strip()
        if line in ("", ";"):
            continue
        parts = [p.strip() for p in line.split(";")]
        if parts[-1] == "":
            parts.pop()
        for part in parts:
            if not part:
                raise UsageError(
                    f"layer {len(specs) + 1} is empty in {line!r}", hint="remove the extra ';'"
                )
            try:
                specs.append(parse_layer_tokens(part))
            except UsageError as exc:  # named as a layer that does not fit is
                name = part.split()[0]
                raise UsageError(f"layer {len(specs) + 1} ({name}): {exc}", hint=exc.hint) from None
    if not specs:
        raise UsageError(
            "the chain has no layers", hint='e.g. --chain "conv k3 p1 c32; maxpool k2"'
        )
    return specs


def make_spec(
    layer: str = "conv", kernel_size: Ints | None = None, *, explicit: bool = False, **values
) -> LayerSpec:
    """A LayerSpec with the layer's own defaults and the checks that need no input size.
    `explicit`: the values are what a user gave (flags, chain tokens, --stdin keys), and an
    option the layer's nn module does not take is refused at its default value too
    (nn.MaxPool2d(groups=1) is a TypeError); code that fills every field (the tests' torch
    oracles) leaves it off, and only values away from the defaults are refused."""
    layer = parse_layer(layer)
    if layer == "adaptive":
        if values.get("output_size") is None:
            raise UsageError(
                "adaptive pooling needs an output size", hint="--output-size 7 (or o7 in a chain)"
            )
        fixed = [name for name in ("stride", "padding", "dilation") if name in values]
        if kernel_size is not None or fixed:
            raise UsageError(
                "adaptive pooling takes only an output size; drop "
                + ", ".join(["kernel_size"] * (kernel_size is not None) + fixed)
            )
    elif kernel_size is None:
        raise UsageError(f"{layer} needs a kernel size", hint="--k 3 (or k3 in a chain)")
    spec = replace(LayerSpec(layer=layer, kernel_size=kernel_size), **values)
    if layer != "adaptive" and spec.output_size is not None:
        raise UsageError("output_size is for --layer adaptive only")
    if spec.groups < 1:
        raise UsageError(f"groups must be a positive integer, got {spec.groups}")
    if isinstance(spec.padding, str) and layer != "conv":
        raise UsageError(
            f"padding={spec.padding!r} is for conv only; {layer} takes integer padding "
            "(PyTorch: 'padding must be tuple of ints')"
        )
    _refuse_options_not_taken(layer, set(values) if explicit else _set_options(spec))
    if spec.padding == "same" and spec.stride and any(s != 1 for s in spec.stride):
        raise UsageError(
            "padding='same' is not supported for strided convolutions",
            hint="use stride 1, or an integer padding (--target N finds one)",
        )
    return spec


def _set_options(spec: LayerSpec) -> set[str]:
    """The options that some layers do not take which `spec` sets away from their no-op value."""
    unset = {
        "dilation": all(d == 1 for d in spec.dilation),
        "output_padding": all(op == 0 for op in spec.output_padding),
        "ceil_mode": not spec.ceil_mode,
        "groups": spec.groups == 1,
        "out_channels": spec.out_channels is None,
        "bias": spec.bias,
    }
    return {name for name, is_unset in unset.items() if not is_unset}


def _refuse_options_not_taken(layer: str, options: set[str]) -> None:
    """Refuse an option of `options` that the layer's nn module has no argument for."""
    if layer == "avgpool" and "dilation" in options:
        raise UsageError("avgpool has no dilation (nn.AvgPoolNd takes no dilation argument)")
    if layer != "convT" and "output_padding" in options:
        raise UsageError("output_padding is for convT only")
    if layer not in POOLS and "ceil_mode" in options:
        raise UsageError("ceil_mode is for maxpool and avgpool only")
    if layer in POOLS + ("adaptive",) and {"groups", "out_channels"} & options:
        raise UsageError(f"{layer} keeps its input channels: out_channels and groups do not apply")
    if layer in POOLS + ("adaptive",) and "bias" in options:
        raise UsageError(f"{layer} has no weights: no bias to drop (nobias is for conv and convT)")


# Option names (the CLI's and a --stdin JSON object's) -> (LayerSpec field, parser).
_OPTIONS = {
    "layer": ("layer", parse_layer),
    "k": ("kernel_size", lambda v: parse_ints(v, "kernel_size", minimum=1)),
    "s": ("stride", lambda v: parse_ints(v, "stride", minimum=1)),
    "p": ("padding", parse_padding),
    "dilation": ("dilation", lambda v: parse_ints(v, "dilation", minimum=1)),
    "output_padding": ("output_padding", lambda v: parse_ints(v, "output_padding")),
    "ceil_mode": ("ceil_mode", lambda v: _flag(v, "ceil_mode")),
    "out_channels": (
        "out_channels",
        lambda v: _single(parse_ints(v, "out_channels", minimum=1), "c"),
    ),
    "groups": ("groups", lambda v: _single(parse_ints(v, "groups", minimum=1), "groups")),
    "bias": ("bias", lambda v: _flag(v, "bias")),
    "output_size": ("output_size", lambda v: parse_ints(v, "output_size", minimum=1)),
}
_ALIASES = {"kernel_size": "k", "stride": "s", "padding": "p"}
LAYER_KEYS = (*_OPTIONS, *_ALIASES)
SIZE_KEYS = ("size", "d", "h", "w")
REQUEST_KEYS = (*LAYER_KEYS, *SIZE_KEYS, "in_channels", "chain", "target")


def spec_from_options(options: dict) -> LayerSpec:
    """A LayerSpec from option values (None = not given), as the CLI and --stdin pass them."""
    values = {}
    for key, value in options.items():
        key = _ALIASES.get(key, key)
        if value is None or key not in _OPTIONS:
            continue
        name, parse = _OPTIONS[key]
        values[name] = parse(value)
    return make_spec(**values, explicit=True)


def size_from_options(options: dict) -> dict[str, int]:
    """The input size from --size or from any of --d --h --w (in that order)."""
    dims = {n: options[n] for n in ("d", "h", "w") if options.get(n) is not None}
    if options.get("size") is not None:
        if dims:
            raise UsageError("give the input size once: --size, or --d/--h/--w")
        return parse_size(options["size"])
    if not dims:
        raise UsageError("no input size", hint="--h 32 (1-D), --h 32 --w 32, or --size 16x32x32")
    return {n: parse_ints(v, f"--{n}", minimum=1)[0] for n, v in dims.items()}


def overlay(defaults: dict, request: dict) -> dict:
    """A --stdin line's request over the command line's, key by key. A line's size replaces the
    whole size; a line's layer replaces the command line's chain, and a line's chain its chain
    and layer options (a chain sets each layer itself). A --target stays: a chain line with it
    is refused, as --chain with --target is."""
    dropped: set[str] = set()
    if any(key in request for key in SIZE_KEYS):
        dropped.update(SIZE_KEYS)
    if "chain" in request or "layer" in request:
        dropped.add("chain")
    if "chain" in request:
        dropped.update(LAYER_KEYS)
    return {**{k: v for k, v in defaults.items() if k not in dropped}, **request}


def parse_request_line(line: str) -> dict:
    """One --stdin line: a JSON object of option names, or chain syntax (as {'chain': line})."""
    import json

    text = line.strip()
    if not text.startswith("{"):
        return {"chain": text}
    try:
        request = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"not a JSON object: {exc.msg} at column {exc.colno}") from None
    if not isinstance(request, dict):
        raise UsageError("expected a JSON object")
    unknown = sorted(set(request) - set(REQUEST_KEYS))
    if unknown:
        raise UsageError(f"unknown keys {', '.join(unknown)}; valid: {', '.join(REQUEST_KEYS)}")
    return request


# ---------------------------------------------------------------------------------------------
# Geometry


def _per_dim(values: Ints | None, names: tuple[str, ...], what: str) -> dict[str, int]:
    if values is None:
        return {}
    if len(values) == 1:
        values = values * len(names)
    if len(values) != len(names):
        raise UsageError(
            f"{what} has {len(values)} values but the input has {count(len(names), 'dimension')} "
            f"({', '.join(names)})"
        )
    return dict(zip(names, values, strict=True))


def _shape(sizes: dict[str, int]) -> str:
    return " x ".join(str(v) for v in sizes.values())


def _conv_params(spec: LayerSpec, in_ch: int | None, out_ch: int | None, k: dict) -> int | None:
    if spec.layer not in ("conv", "convT"):
        return 0
    if in_ch is None or out_ch is None:
        return None
    for name, channels in (("in_channels", in_ch), ("out_channels", out_ch)):
        if channels % spec.groups:
            raise UsageError(
                f"{name} must be divisible by groups ({name}={channels}, groups={spec.groups})"
            )
    fan = in_ch // spec.groups * out_ch if spec.layer == "conv" else out_ch // spec.groups * in_ch
    return fan * math.prod(k.values()) + (out_ch if spec.bias else 0)


def _pool_out(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> tuple[int, bool]:
    """PyTorch's pooling_output_shape: (size, whether the last-window rule removed one)."""
    out = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= n + p:
        return out - 1, True
    return out, False


def _adaptive_windows(n: int, out: int) -> dict:
    starts = [i * n // out for i in range(out)]
    ends = [-(-(i + 1) * n // out) for i in range(out)]
    sizes = {e - s for s, e in zip(starts, ends, strict=True)}
    steps = {b - a for a, b in zip(starts, starts[1:], strict=False)} or {n}
    uniform = len(sizes) == 1 and len(steps) == 1 and 0 not in steps
    equivalent = {"kernel_size": sizes.pop(), "stride": steps.pop()} if uniform else None
    return {"start": starts, "end": ends, "equivalent": equivalent}


def compute(
    spec: LayerSpec,
    size: dict[str, int],
    in_channels: int | None = None,
    fields: dict[str, Field] | None = None,
) -> LayerResult:
    """One layer on an input of `size` (dim name -> pixels); raises UsageError where torch does.

    `fields` is the receptive field so far (a chain's running state); None starts fresh.
    """
    names = tuple(size)
    if not names or any(n < 1 for n in size.values()):
        raise UsageError(f"input sizes must be >= 1, got {_shape(size) or 'none'}")
    if spec.groups > 1 and in_channels is None and spec.layer in ("conv", "convT"):
        raise UsageError("groups needs --in-channels to check divisibility")
    fields = fields if fields is not None else dict.fromkeys(names, IDENTITY)
    out_ch = in_channels if spec.out_channels is None else spec.out_channels
    if spec.layer == "adaptive":
        return _compute_adaptive(spec, size, in_channels, fields)

    k = _per_dim(spec.kernel_size, names, "kernel_size")
    d = _per_dim(spec.dilation, names, "dilation")
    default_stride = spec.kernel_size if spec.layer in POOLS else (1,)
    s = _per_dim(spec.stride or default_stride, names, "stride")
    op = _per_dim(spec.output_padding, names, "output_padding")
    pads = _padding(spec, names, k, d)
    params = _conv_params(spec, in_channels, out_ch, k)
    if spec.layer == "avgpool" and len(names) == 3 and any(size[n] < k[n] for n in names):
        raise UsageError(
            f"input image ({_shape(size)}) smaller than kernel size ({_shape(k)})",
            hint="3-D avgpool needs every side >= the kernel, before padding (avg_pool3d)",
        )

    output: dict[str, int] = {}
    formula: dict[str, str] = {}
    new_fields: dict[str, Field] = {}
    for n in names:
        left, right = pads[n]
        ke = d[n] * (k[n] - 1) + 1
        dk = f"{d[n]}*({k[n]}-1)"
        if spec.layer == "conv":
            if ke > size[n] + left + right:
                raise UsageError(
                    f"{n}: kernel size can't be greater than actual input size "
                    f"(padded {size[n] + left + right} < kernel {ke})",
                    hint="a smaller kernel or dilation, more padding, or a larger input",
                )
            out = (size[n] + left + right - ke) // s[n] + 1
            pad_text = f"2*{left}" if left == right else f"{left} + {right}"
            text = f"floor(({size[n]} + {pad_text} - {dk} - 1) / {s[n]}) + 1 = {out}"
        elif spec.layer == "convT":
            if op[n] >= max(s[n], d[n]):
                raise UsageError(
                    f"{n}: output padding must be smaller than either stride or dilation "
                    f"(op {op[n]}, s {s[n]}, d {d[n]})"
                )
            out = (size[n] - 1) * s[n] - 2 * left + ke - 1 + op[n] + 1
            text = f"({size[n]}-1)*{s[n]} - 2*{left} + {dk} + {op[n]} + 1 = {out}"
        else:
            if left > k[n] // 2:
                raise UsageError(
                    f"{n}: pad should be at most half of kernel size ({left} > {k[n]} // 2)"
                )
            out, dropped = _pool_out(size[n], k[n], s[n], left, d[n], spec.ceil_mode)
            rounding = "ceil" if spec.ceil_mode else "floor"
            text = f"{rounding}(({size[n]} + 2*{left} - {dk} - 1) / {s[n]}) + 1"
            if dropped:
                text += f" - 1 = {out} (the last window would start at {out * s[n]} >= "
                text += f"{size[n]} + {left}, past the input and left padding)"
            else:
                text += f" = {out}"
        if out < 1:
            raise UsageError(
                f"{n}: output size is too small (input {size[n]} gives {out})",
                hint="a smaller kernel or stride, other padding, or a larger input",
            )
        output[n] = out
        formula[n] = text
        new_fields[n] = _next_field(spec.layer, fields[n], ke, s[n], left)

    return LayerResult(
        layer=spec.layer,
        input=dict(size),
        output=output,
        kernel_size=k,
        stride=s,
        padding=pads,
        dilation=d,
        output_padding=op if spec.layer == "convT" else None,
        ceil_mode=spec.ceil_mode,
        in_channels=in_channels,
        out_channels=out_ch,
        groups=spec.groups,
        bias=spec.bias if spec.layer in ("conv", "convT") else False,
        params=params,
        **_field_dicts(new_fields),
        formula=formula,
    )


def _padding(spec: LayerSpec, names: tuple[str, ...], k: dict, d: dict) -> dict:
    """(left, right) per dim: 'same' pads d*(k-1) in total, the odd pixel on the right."""
    if spec.padding == "valid":
        return dict.fromkeys(names, (0, 0))
    if spec.padding == "same":
        totals = {n: d[n] * (k[n] - 1) for n in names}
        return {n: (t // 2, t - t // 2) for n, t in totals.items()}
    return {n: (p, p) for n, p in _per_dim(spec.padding, names, "padding").items()}


def _next_field(layer: str, f: Field | None, ke: int, s: int, left: int) -> Field | None:
    if f is None:
        return None
    if layer == "convT":
        r = f.receptive_field + Fraction(ke - 1, s) * f.jump
        jump = Fraction(f.jump, s)
        start = f.start + Fraction(2 * left - (ke - 1), 2 * s) * f.jump
    else:
        r = f.receptive_field + (ke - 1) * f.jump
        jump = f.jump * s
        start = f.start + Fraction(ke - 1 - 2 * left, 2) * f.jump
    return Field(_exact(r), _exact(jump), _exact(start))


def _exact(x: Exact) -> Exact:
    """Whole values as ints: JSON numbers as they are, and 7 in a table, not a fraction."""
    return int(x) if x.denominator == 1 else x


def _field_dicts(fields: dict[str, Field | None]) -> dict:
    if any(f is None for f in fields.values()):
        return {"receptive_field": None, "jump": None, "start": None}
    return {
        "receptive_field": {n: f.receptive_field for n, f in fields.items()},
        "jump": {n: f.jump for n, f in fields.items()},
        "start": {n: f.start for n, f in fields.items()},
    }


def fields_of(result: LayerResult) -> dict[str, Field] | None:
    if result.receptive_field is None:
        return None
    return {
        n: Field(result.receptive_field[n], result.jump[n], result.start[n]) for n in result.output
    }


def _compute_adaptive(
    spec: LayerSpec, size: dict[str, int], in_channels: int | None, fields: dict[str, Field]
) -> LayerResult:
    names = tuple(size)
    output = _per_dim(spec.output_size, names, "output_size")
    windows = {n: _adaptive_windows(size[n], output[n]) for n in names}
    new_fields: dict[str, Field | None] = {}
    formula = {}
    for n in names:
        eq = windows[n]["equivalent"]
        text = (
            f"output {output[n]}; window i = [floor(i*{size[n]}/{output[n]}), "
            f"ceil((i+1)*{size[n]}/{output[n]}))"
        )
        if eq:
            text += f", all of size {eq['kernel_size']} every {eq['stride']}"
            new_fields[n] = _next_field("adaptive", fields[n], eq["kernel_size"], eq["stride"], 0)
        else:
            sizes = [e - s for s, e in zip(windows[n]["start"], windows[n]["end"], strict=True)]
            text += f", sizes {min(sizes)}..{max(sizes)} (not uniform)"
            new_fields[n] = None
        formula[n] = text
    return LayerResult(
        layer="adaptive",
        input=dict(size),
        output=output,
        kernel_size=None,
        stride=None,
        padding=dict.fromkeys(names, (0, 0)),
        dilation=dict.fromkeys(names, 1),
        output_padding=None,
        ceil_mode=False,
        in_channels=in_channels,
        out_channels=in_channels,
        groups=1,
        bias=False,
        params=0,
        **_field_dicts(new_fields),
        formula=formula,
        windows=windows,
    )


def compute_chain(
    specs: list[LayerSpec], size: dict[str, int], in_channels: int | None = None
) -> ChainResult:
    """Layers one after another: sizes, channels and the receptive field flow through."""
    rows: list[LayerResult] = []
    current, channels = dict(size), in_channels
    fields: dict[str, Field] | None = dict.fromkeys(size, IDENTITY)
    for index, spec in enumerate(specs, 1):
        try:
            row = compute(spec, current, channels, fields)
        except UsageError as exc:
            raise UsageError(f"layer {index} ({spec.layer}): {exc}", hint=exc.hint) from None
        rows.append(row)
        current, channels, fields = row.output, row.out_channels, fields_of(row)
        if fields is None:  # keep propagating "unknown"
            fields = dict.fromkeys(size, None)
    params = [r.params for r in rows]
    last = rows[-1]
    return ChainResult(
        input=dict(size),
        in_channels=in_channels,
        layers=rows,
        output=dict(last.output),
        out_channels=last.out_channels,
        params=None if None in params else sum(params),
        receptive_field=last.receptive_field,
        jump=last.jump,
        start=last.start,
    )


# ---------------------------------------------------------------------------------------------
# Solving for padding


def solve_padding(spec: LayerSpec, size: dict[str, int], target: dict[str, int]) -> SolveResult:
    """Every legal padding (and output_padding for convT) giving `target`, per dimension.

    Searches PyTorch's legal ranges: pooling pads at most kernel//2, convT's output_padding is
    below max(stride, dilation); conv and convT padding up to the point where the output passes
    the target. Where nothing hits, `nearest` holds the closest outputs. The output is monotone
    in the padding, so each search is a bisection: a target of 10**12 costs what 16 does.
    """
    if spec.layer == "adaptive":
        raise UsageError("adaptive pooling has no padding: its output size is --output-size")
    names = tuple(size)
    target = _per_dim(tuple(target.values()), names, "target")
    solutions: dict[str, list[Solution]] = {}
    nearest: dict[str, list[Solution]] = {}
    for n in names:
        lines = _padding_lines(_along(spec, names, n), n, size[n], target[n])
        solutions[n] = _giving(lines, target[n])
        if solutions[n]:
            continue
        near = []  # each line's outputs just below and just above the target
        for _, pads, out in lines:
            i = bisect_left(pads, target[n], key=out)
            near += [out(pad) for pad in pads[max(i - 1, 0) : i + 1]]
        best = min((abs(v - target[n]) for v in near), default=None)
        nearest[n] = [] if best is None else _giving(lines, target[n] - best, target[n] + best)
    return SolveResult(spec.layer, dict(size), target, solutions, nearest)


def _along(spec: LayerSpec, names: tuple[str, ...], name: str) -> LayerSpec:
    """The 1-D layer one dimension sees: its own kernel, stride and dilation (channels and
    groups do not change a size)."""

    def own(values: Ints, what: str) -> Ints:
        return (_per_dim(values, names, what)[name],)

    return replace(
        spec,
        kernel_size=own(spec.kernel_size, "kernel_size"),
        stride=None if spec.stride is None else own(spec.stride, "stride"),
        dilation=own(spec.dilation, "dilation"),
        out_channels=None,
        groups=1,
    )


Line = tuple[int, range, Callable[[int], int]]


def _padding_lines(spec: LayerSpec, dim: str, size: int, target: int) -> list[Line]:
    """For a 1-D layer: (output_padding, the paddings PyTorch allows with it, padding ->
    output), one per output_padding; each range of paddings runs the way the output grows."""

    def output(pad: int, op: int = 0) -> int:
        one = replace(spec, padding=(pad,), output_padding=(op,))
        try:
            return compute(one, {dim: size}).output[dim]
        except UsageError:  # too small an input or output for this padding
            return 0

    (k,), (d,) = spec.kernel_size, spec.dilation
    (s,) = spec.stride or (k if spec.layer in POOLS else 1,)
    ke = d * (k - 1) + 1
    if spec.layer == "convT":  # the output shrinks as the padding grows
        pads = range(((size - 1) * s + ke + max(s, d)) // 2, -1, -1)
        lines = [(op, pads, partial(output, op=op)) for op in range(max(s, d))]
    elif spec.layer in POOLS:
        lines = [(0, range(k // 2 + 1), output)]
    else:  # past this padding the output is above the target for good
        lines = [(0, range(max(0, (target * s + ke - size) // 2 + s) + 1), output)]
    return [(op, pads[bisect_left(pads, 1, key=out) :], out) for op, pads, out in lines]


def _giving(lines: list[Line], *outputs: int) -> list[Solution]:
    """Every (padding, output_padding) whose output is one of `outputs`, smallest first."""
    return sorted(
        Solution(pad, op, v)
        for op, pads, out in lines
        for v in set(outputs)
        for pad in pads[bisect_left(pads, v, key=out) : bisect_right(pads, v, key=out)]
    )


# ---------------------------------------------------------------------------------------------
# One request (the command line, or one --stdin line)


def _flag_of(name: str, value: Any) -> str:
    """The command-line flag that gave an option: `--output-padding`, `--no-bias`."""
    flag = name.replace("_", "-")
    return f"--no-{flag}" if value is False else f"--{flag}"


def run_request(request: dict) -> LayerResult | ChainResult | SolveResult:
    """A request of option values (None = not given): a layer, a chain, or a padding search."""
    size = size_from_options(request)
    in_channels = request.get("in_channels")
    if in_channels is not None:
        in_channels = _single(parse_ints(in_channels, "in_channels", minimum=1), "in_channels")
    layer_options = {k: v for k, v in request.items() if k in _OPTIONS or k in _ALIASES}
    if request.get("chain") is not None:
        given = sorted(_flag_of(k, v) for k, v in layer_options.items() if v is not None)
        if given or request.get("target") is not None:
            raise UsageError(
                f"a chain sets each layer itself; drop {', '.join(given) or '--target'}",
                hint='e.g. --chain "conv k3 s2 c32; maxpool k2"',
            )
        return compute_chain(parse_chain(request["chain"]), size, in_channels)
    spec = spec_from_options(layer_options)
    if request.get("target") is not None:
        if spec.padding != (0,):
            raise UsageError("--target searches the padding itself; drop --p")
        if spec.output_padding != (0,):
            raise UsageError("--target searches the output_padding itself; drop --output-padding")
        target = _per_dim(parse_ints(request["target"], "target", minimum=1), tuple(size), "target")
        return solve_padding(spec, size, target)
    return compute(spec, size, in_channels)
