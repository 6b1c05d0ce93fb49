"""convcalc against real torch.nn layers: same shapes, same parameter counts, and a refusal
exactly where torch raises; receptive fields against autograd; parsing, chains, solving."""

from __future__ import annotations

import functools
import itertools
import warnings
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from ptool.core import convcalc as cc
from ptool.core.errors import UsageError

SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
}
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONVT = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
POOL = {
    "maxpool": {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d},
    "avgpool": {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d},
}
ADAPTIVE = {
    "avg": {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d},
    "max": {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d},
}
TORCH_ERRORS = (RuntimeError, ValueError, TypeError)


@pytest.fixture(autouse=True)
def one_thread():
    """Layers on a few pixels: a second torch thread only waits for the first, and on a busy
    machine that wait makes each call milliseconds instead of microseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def per_dim(draw, ndim: int, values: st.SearchStrategy) -> tuple[int, ...]:
    """A scalar (broadcast) or one value per dimension."""
    if draw(st.booleans()):
        return (draw(values),)
    return tuple(draw(values) for _ in range(ndim))


def full(values: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return values * ndim if len(values) == 1 else values


@st.composite
def inputs(draw, max_side: dict[int, int] | None = None):
    ndim = draw(st.integers(1, 3))
    side = (max_side or {1: 14, 2: 10, 3: 6})[ndim]
    return tuple(draw(st.integers(1, side)) for _ in range(ndim))


def size_of(shape: tuple[int, ...]) -> dict[str, int]:
    return dict(zip(cc.DIM_NAMES[len(shape)], shape, strict=True))


def torch_shape(layer: nn.Module, channels: int, shape: tuple[int, ...]):
    """(output spatial shape, None) or (None, the exception torch raised).

    An empty output counts as a refusal: torch's grouped ConvTranspose kernels return a 0-size
    tensor where the ungrouped ones raise "Output size is too small" for the same geometry.
    """
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = tuple(layer(torch.zeros(1, channels, *shape)).shape[2:])
    except TORCH_ERRORS as exc:
        return None, exc
    if 0 in out:
        return None, RuntimeError(f"empty output {out}")
    return out, None


def ours(spec_values: dict, shape: tuple[int, ...], in_channels: int | None = None):
    try:
        spec = cc.make_spec(**spec_values)
        result = cc.compute(spec, size_of(shape), in_channels)
        return tuple(result.output.values()), result, None
    except UsageError as exc:
        return None, None, exc


def assert_agree(expected, torch_error, got, our_error):
    event("both refuse" if torch_error is not None else "same shape")
    assert (torch_error is None) == (our_error is None), (torch_error, our_error)
    if torch_error is None:
        assert got == expected


def check_conv(cls, shape, in_ch: int, out_ch: int, options: dict, kind: str):
    """A torch conv layer (construction or forward may raise) against convcalc's answer; the
    options are both torch's keyword arguments and LayerSpec's fields."""
    ndim = len(shape)
    full_options = {
        key: full(value, ndim) if isinstance(value, tuple) else value
        for key, value in options.items()
    }
    try:
        layer = cls(in_ch, out_ch, **full_options)
        expected, torch_error = torch_shape(layer, in_ch, shape)
    except TORCH_ERRORS as exc:
        layer, expected, torch_error = None, None, exc
    got, result, our_error = ours({**options, "layer": kind, "out_channels": out_ch}, shape, in_ch)
    assert_agree(expected, torch_error, got, our_error)
    if layer is not None and result is not None:
        assert result.params == sum(t.numel() for t in layer.parameters())
        assert result.out_channels == out_ch


@settings(max_examples=700, **SETTINGS)
@given(data=st.data(), shape=inputs())
def test_conv_matches_torch(data, shape):
    ndim = len(shape)
    padding = data.draw(st.sampled_from(["int", "int", "same", "valid"]))
    options = {
        "kernel_size": per_dim(data.draw, ndim, st.integers(1, 5)),
        "stride": per_dim(data.draw, ndim, st.integers(1, 3)),
        "padding": per_dim(data.draw, ndim, st.integers(0, 3)) if padding == "int" else padding,
        "dilation": per_dim(data.draw, ndim, st.sampled_from([1, 1, 2, 3])),
        "groups": data.draw(st.sampled_from([1, 1, 1, 2, 3])),
        "bias": data.draw(st.booleans()),
    }
    channels = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    check_conv(CONV[ndim], shape, *channels, options, "conv")


@settings(max_examples=600, **SETTINGS)
@given(data=st.data(), shape=inputs({1: 9, 2: 6, 3: 4}))
def test_conv_transpose_matches_torch(data, shape):
    ndim = len(shape)
    options = {
        "kernel_size": per_dim(data.draw, ndim, st.integers(1, 5)),
        "stride": per_dim(data.draw, ndim, st.integers(1, 3)),
        "padding": per_dim(data.draw, ndim, st.integers(0, 3)),
        "output_padding": per_dim(data.draw, ndim, st.integers(0, 2)),
        "dilation": per_dim(data.draw, ndim, st.integers(1, 3)),
        "groups": data.draw(st.sampled_from([1, 1, 1, 2])),
    }
    channels = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    check_conv(CONVT[ndim], shape, *channels, options, "convT")


@settings(max_examples=700, **SETTINGS)
@given(data=st.data(), shape=inputs(), kind=st.sampled_from(["maxpool", "avgpool"]))
def test_pooling_matches_torch(data, shape, kind):
    ndim = len(shape)
    k = per_dim(data.draw, ndim, st.integers(1, 4))
    s = data.draw(st.none() | st.just(per_dim(data.draw, ndim, st.integers(1, 3))))
    p = per_dim(data.draw, ndim, st.integers(0, 2))
    d = per_dim(data.draw, ndim, st.sampled_from([1, 1, 2, 3])) if kind == "maxpool" else (1,)
    ceil = data.draw(st.booleans())
    options = dict(kernel_size=full(k, ndim), padding=full(p, ndim), ceil_mode=ceil)
    if s is not None:
        options["stride"] = full(s, ndim)
    if kind == "maxpool":
        options["dilation"] = full(d, ndim)
    expected, torch_error = torch_shape(POOL[kind][ndim](**options), 1, shape)
    spec = dict(layer=kind, kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    got, result, our_error = ours(spec, shape)
    assert_agree(expected, torch_error, got, our_error)
    if result is not None:
        assert result.params == 0


@settings(max_examples=250, **SETTINGS)
@given(shape=inputs({1: 12, 2: 9, 3: 5}), data=st.data())
def test_adaptive_matches_torch_shapes_and_windows(shape, data):
    ndim = len(shape)
    output = per_dim(data.draw, ndim, st.integers(1, 12))
    expected = {
        kind: torch_shape(layers[ndim](full(output, ndim)), 1, shape)[0]
        for kind, layers in ADAPTIVE.items()
    }
    result = cc.compute(cc.make_spec("adaptive", output_size=output), size_of(shape))
    assert tuple(result.output.values()) == expected["avg"] == expected["max"]
    # Windows: AdaptiveAvgPool1d over one-hot rows averages exactly the inputs in each window.
    for name, n in size_of(shape).items():
        out = result.output[name]
        with torch.no_grad():
            hits = nn.AdaptiveAvgPool1d(out)(torch.eye(n).unsqueeze(1)).squeeze(1) != 0
        windows = result.windows[name]
        for i in range(out):
            inside = [j for j in range(n) if hits[j, i]]
            assert inside == list(range(windows["start"][i], windows["end"][i]))
        eq = windows["equivalent"]
        if eq is not None:  # the fixed pool it claims to equal gives the same output
            fixed = nn.AvgPool1d(eq["kernel_size"], eq["stride"])
            with torch.no_grad():
                x = torch.arange(float(n)).view(1, 1, n)
                assert torch.equal(fixed(x), nn.AdaptiveAvgPool1d(out)(x))


def test_issue_edge_cases():
    six_by_seven = cc.make_spec("maxpool", (1,), stride=(2,), ceil_mode=True)
    assert cc.compute(six_by_seven, cc.parse_size("6x7")).output == {"h": 3, "w": 4}
    five = cc.make_spec("maxpool", (2,), stride=(2,), padding=(1,), ceil_mode=True)
    result = cc.compute(five, {"w": 5})
    assert result.output == {"w": 3}
    assert "last window would start at 6 >= 5 + 1" in result.formula["w"]
    assert cc.compute(cc.make_spec(kernel_size=(3,), stride=(2,)), {"h": 32}).output == {"h": 15}
    torch_pools = (
        (nn.MaxPool2d(1, 2, ceil_mode=True), (6, 7)),
        (nn.MaxPool1d(2, 2, 1, ceil_mode=True), (5,)),
    )
    for pool, shape in torch_pools:
        assert (
            tuple(pool(torch.zeros(1, 1, *shape)).shape[2:]) == {(6, 7): (3, 4), (5,): (3,)}[shape]
        )


def test_last_window_rule_is_explained():
    spec = cc.make_spec("maxpool", (2,), stride=(2,), ceil_mode=True)
    result = cc.compute(spec, {"w": 5})  # ceil((5-2)/2)+1 = 3; the 3rd window starts at 4 < 5
    assert result.output == {"w": 3}
    spec = cc.make_spec("maxpool", (1,), stride=(2,), ceil_mode=True)
    result = cc.compute(spec, {"w": 6})  # ceil(5/2)+1 = 4, but window 3 would start at 6
    assert result.output == {"w": 3}
    assert "last window would start at 6 >= 6 + 0" in result.formula["w"]


def test_same_padding_splits_like_pytorch():
    spec = cc.make_spec(kernel_size=(4,), padding="same", dilation=(1,))
    result = cc.compute(spec, {"w": 7})
    assert result.padding == {"w": (1, 2)} and result.output == {"w": 7}
    assert cc.compute(cc.make_spec(kernel_size=(3,), padding="valid"), {"w": 7}).output["w"] == 5
    # torch pads the odd pixel on the right: the first output's centre sits 1 left of k/2
    assert result.start == {"w": 0.5}


@pytest.mark.parametrize(
    ("values", "size", "in_channels", "message"),
    [
        ({"kernel_size": (5,)}, {"w": 4}, None, "kernel size can't be greater than actual input"),
        ({"kernel_size": (3,), "stride": (2,), "padding": "same"}, {"w": 8}, None, "strided"),
        ({"layer": "maxpool", "kernel_size": (3,), "padding": (2,)}, {"w": 8}, None, "half of"),
        ({"layer": "maxpool", "kernel_size": (3,)}, {"w": 2}, None, "output size is too small"),
        (
            {"layer": "convT", "kernel_size": (3,), "stride": (2,), "output_padding": (2,)},
            {"w": 4},
            None,
            "output padding must be smaller than either stride or dilation",
        ),
        ({"kernel_size": (3,), "groups": 2, "out_channels": 3}, {"w": 8}, 4, "out_channels"),
        ({"kernel_size": (3,), "groups": 2, "out_channels": 4}, {"w": 8}, 3, "in_channels"),
        ({"layer": "avgpool", "kernel_size": (2,), "dilation": (2,)}, {"w": 8}, None, "dilation"),
        ({"layer": "convT", "kernel_size": (3,), "padding": "same"}, {"w": 8}, None, "conv only"),
        ({"kernel_size": (3, 3)}, {"d": 4, "h": 4, "w": 4}, None, "2 values but the input has 3"),
        ({"layer": "adaptive"}, {"w": 4}, None, "output size"),
        ({"layer": "conv"}, {"w": 4}, None, "needs a kernel size"),
    ],
)
def test_refusals_name_the_rule(values, size, in_channels, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        cc.compute(cc.make_spec(**values), size, in_channels)


# ---------------------------------------------------------------------------------------------
# Receptive field against autograd


@st.composite
def rf_chains(draw, with_transpose: bool):
    kinds = draw(st.lists(st.sampled_from(["conv", "maxpool", "avgpool"]), min_size=1, max_size=3))
    if with_transpose:  # at least one transposed conv, anywhere in the chain
        kinds[draw(st.integers(0, len(kinds) - 1))] = "convT"
    layers = []
    for kind in kinds:
        k = draw(st.integers(1, 4))
        s = draw(st.integers(1, 3))
        if kind in cc.POOLS:
            p, d = draw(st.integers(0, k // 2)), draw(st.integers(1, 2)) if kind == "maxpool" else 1
        else:
            p, d = draw(st.integers(0, 2)), draw(st.integers(1, 2))
        layers.append(cc.make_spec(kind, (k,), stride=(s,), padding=(p,), dilation=(d,)))
    return layers


def gradient_extents(specs, n: int) -> list[tuple[int, int] | None]:
    """For each output pixel: min and max input index with a nonzero gradient.

    Every layer is a conv with all-ones weights (pools as convs of the same geometry), so every
    path from an input in the field to the output carries a positive gradient.
    """
    modules = []
    for spec in specs:
        cls = nn.ConvTranspose1d if spec.layer == "convT" else nn.Conv1d
        extra = {"output_padding": spec.output_padding[0]} if spec.layer == "convT" else {}
        module = cls(
            1,
            1,
            spec.kernel_size[0],
            stride=(spec.stride or spec.kernel_size)[0],
            padding=spec.padding[0],
            dilation=spec.dilation[0],
            bias=False,
            **extra,
        ).double()
        nn.init.ones_(module.weight)
        modules.append(module)
    x = torch.ones(1, 1, n, dtype=torch.float64, requires_grad=True)
    y = nn.Sequential(*modules)(x)[0, 0]
    extents = []
    for i in range(y.numel()):
        (grad,) = torch.autograd.grad(y[i], x, retain_graph=True)
        nonzero = grad[0, 0].nonzero().flatten().tolist()
        extents.append((min(nonzero), max(nonzero)) if nonzero else None)
    return extents


def field_of(specs, n: int) -> tuple[float, float, float]:
    """(receptive field, jump, start) of a 1-D chain on n pixels; chains torch refuses are
    covered by the shape oracles above."""
    try:
        chain = cc.compute_chain(specs, {"w": n})
    except UsageError:
        assume(False)
    return chain.receptive_field["w"], chain.jump["w"], chain.start["w"]


@settings(max_examples=250, **SETTINGS)
@given(specs=rf_chains(with_transpose=False), n=st.integers(8, 40))
def test_receptive_field_equals_autograd_extent(specs, n):
    r, j, start = field_of(specs, n)
    checked = 0
    for i, extent in enumerate(gradient_extents(specs, n)):
        low, high = start + i * j - (r - 1) / 2, start + i * j + (r - 1) / 2
        if low >= 0 and high <= n - 1:  # fields cut by padding are clipped by the input edge
            assert extent == (low, high)
            checked += 1
    assume(checked)


@settings(max_examples=150, **SETTINGS)
@given(specs=rf_chains(with_transpose=True), n=st.integers(4, 16))
def test_transposed_receptive_field_bounds_autograd_extent(specs, n):
    r, j, start = field_of(specs, n)
    for i, extent in enumerate(gradient_extents(specs, n)):
        if extent is not None:
            centre = start + i * j  # exact: no float tolerance
            assert centre - (r - 1) / 2 <= extent[0]
            assert extent[1] <= centre + (r - 1) / 2


def test_receptive_field_after_a_stride_3_transposed_conv_is_exact():
    """Before: the jump 1/3 went on as 0.333333333 and, seven layers on, the field read
    7.666666661 and the jump 0.999999999."""
    chain = cc.compute_chain(
        cc.parse_chain("convT k3 s3; conv k3; conv k3; conv k3; conv k3; conv k5 s3; conv k3"),
        {"w": 64},
    )
    third = Fraction(1, 3)
    assert [row.jump["w"] for row in chain.layers] == [third] * 5 + [1, 1]
    assert [row.receptive_field["w"] for row in chain.layers] == [
        Fraction(n, 3) for n in (5, 7, 9, 11, 13, 17, 23)
    ]
    assert chain.start == {"w": Fraction(8, 3)}
    assert type(chain.jump["w"]) is int and type(chain.layers[2].receptive_field["w"]) is int


# ---------------------------------------------------------------------------------------------
# Parsing, chains, solving


def test_parse_size_and_per_dim_values():
    assert cc.parse_size("16x32x32") == {"d": 16, "h": 32, "w": 32}
    assert cc.parse_size("32") == {"w": 32}
    assert cc.parse_size("8x9") == {"h": 8, "w": 9}
    result = cc.compute(cc.make_spec(kernel_size=(3, 5)), cc.parse_size("8x9"))
    assert result.output == {"h": 6, "w": 5}
    for bad in ("0x4", "4x", "axb", "1x2x3x4"):
        with pytest.raises(UsageError):
            cc.parse_size(bad)


def test_parse_chain_tokens():
    specs = cc.parse_chain("conv k3x5 s2 p1 d2 c32 g2 nobias; convT k4 s2 p1 op1 # x\n")
    assert specs[0].kernel_size == (3, 5) and specs[0].dilation == (2,)
    assert (specs[0].out_channels, specs[0].groups, specs[0].bias) == (32, 2, False)
    with pytest.raises(UsageError, match="conv only"):
        cc.parse_chain("maxpool k2 pvalid")
    adaptive, pool = cc.parse_chain("adaptive o7x7\nmaxpool k2 s1 ceil p1")
    assert adaptive.output_size == (7, 7)
    assert (pool.layer, pool.stride, pool.padding, pool.ceil_mode) == ("maxpool", (1,), (1,), True)
    assert specs[1].output_padding == (1,) and specs[1].layer == "convT"
    with pytest.raises(UsageError, match=r"unknown token 'x3'") as refused:
        cc.parse_chain("conv k3 x3")
    assert refused.value.hint.startswith("valid: k3")
    with pytest.raises(UsageError, match="unknown layer 'cnv'"):
        cc.parse_chain("cnv k3")
    for chain, message in [
        ("conv k3; maxpool k2 c8", "layer 2 (maxpool): maxpool keeps its input channels"),
        ("conv k3 ceil", "layer 1 (conv): ceil_mode is for maxpool and avgpool only"),
    ]:  # every refused layer is named, as one whose sizes do not fit is
        with pytest.raises(UsageError) as refused:
            cc.parse_chain(chain)
        assert str(refused.value).startswith(message)
    with pytest.raises(UsageError, match="no layers"):
        cc.parse_chain(" ; # nothing")


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        ("conv k3 s2 s3", r"'s3' sets stride again \(after 's2'\) in 'conv k3 s2 s3'"),
        ("conv k3 k5", "'k5' sets kernel_size again"),
        ("conv k3 psame p1", r"'p1' sets padding again \(after 'psame'\)"),
        ("maxpool k2 ceil ceil", "'ceil' sets ceil_mode again"),
        ("conv k3 nobias nobias", "'nobias' sets bias again"),
        ("convT k4 s2 op1 op0", "'op0' sets output_padding again"),
    ],
)
def test_a_parameter_given_twice_in_a_layer_is_refused(chain, message):
    """Before: the last one silently won (`s2 s3` strode 3)."""
    with pytest.raises(UsageError, match=message) as refused:
        cc.parse_chain(chain)
    assert refused.value.hint == "give each parameter of a layer once"


@pytest.mark.parametrize(
    ("chain", "flags", "message"),
    [
        ("conv k3 ceil", {"ceil_mode": True}, "ceil_mode is for maxpool and avgpool only"),
        ("conv k3 op1", {"output_padding": "1"}, "output_padding is for convT only"),
        ("maxpool k2 c8", {"out_channels": "8"}, "maxpool keeps its input channels"),
        ("maxpool k2 nobias", {"bias": False}, "maxpool has no weights: no bias to drop"),
        ("adaptive o4 nobias", {"bias": False}, "adaptive has no weights"),
        # at their default value too
        ("conv k3 op0", {"output_padding": "0"}, "output_padding is for convT only"),
        ("maxpool k2 g1", {"groups": "1"}, "maxpool keeps its input channels"),
        ("avgpool k2 d1", {"dilation": "1"}, "avgpool has no dilation"),
    ],
)
def test_a_parameter_the_layer_does_not_take_is_refused(chain, flags, message):
    """Accepted and ignored, `nobias` on a pool read as if it changed something; refused as
    flags and --stdin keys too, at their default value as well, as torch's own modules refuse
    them (nn.MaxPool2d(2, groups=1) is a TypeError)."""
    with pytest.raises(UsageError, match=message):
        cc.parse_chain(chain)
    layer, size = chain.split()[:2]
    sized = {"output_size": size[1:]} if layer == "adaptive" else {"k": size[1:]}
    with pytest.raises(UsageError, match=message):
        cc.run_request({"h": 8, "layer": layer, **sized, **flags})


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        ("conv k3; ; conv k3", "layer 2 is empty in 'conv k3; ; conv k3'"),
        ("conv k3;; maxpool k2", "layer 2 is empty"),
        ("; conv k3", "layer 1 is empty"),
        ("conv k3\nmaxpool k2; ; conv k3 # x", "layer 3 is empty in 'maxpool k2; ; conv k3'"),
        ("conv k3\n;;\nconv k3", "layer 2 is empty in ';;'"),
    ],
)
def test_an_empty_layer_between_semicolons_is_refused(chain, message):
    with pytest.raises(UsageError, match=message):
        cc.parse_chain(chain)


def test_blank_lines_comments_and_a_closing_semicolon_are_not_layers():
    chain = "# stem\nconv k3 c8;\n\n  # pool\nmaxpool k2;\nconv k3; maxpool k2\n"
    assert [s.layer for s in cc.parse_chain(chain)] == ["conv", "maxpool", "conv", "maxpool"]


def test_chain_rows_and_totals():
    chain = cc.compute_chain(
        cc.parse_chain("conv k3 p1 c32; maxpool k2; conv k3 s2 c64; convT k4 s2 p1 c32"),
        cc.parse_size("32x32"),
        in_channels=3,
    )
    sizes = [(row.output["h"], row.out_channels, row.params) for row in chain.layers]
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, stride=2),
        nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
    )
    x = torch.zeros(1, 3, 32, 32)
    for (height, channels, params), layer in zip(sizes, model, strict=True):
        x = layer(x)
        assert (height, channels) == (x.shape[2], x.shape[1])
        assert params == sum(t.numel() for t in layer.parameters())
    assert chain.params == sum(t.numel() for t in model.parameters())
    assert chain.output == {"h": 14, "w": 14} and chain.out_channels == 32
    assert [row.receptive_field["h"] for row in chain.layers] == [3, 4, 8, 14]
    assert chain.jump == {"h": 2, "w": 2}


def test_chain_errors_name_the_layer():
    with pytest.raises(UsageError, match=r"layer 2 \(maxpool\): w: output size is too small"):
        cc.compute_chain(cc.parse_chain("conv k3; maxpool k4"), {"w": 5})


def test_channels_unknown_without_in_channels():
    chain = cc.compute_chain(cc.parse_chain("conv k3 c8; conv k3 c16"), {"w": 16})
    assert [row.params for row in chain.layers] == [None, 8 * 16 * 3 + 16]
    assert chain.params is None and chain.out_channels == 16


@functools.cache
def torch_output(layer: str, n: int, k: int, s: int, d: int, ceil: bool, p: int, op: int):
    """The output size of a 1-D layer as torch computes it; None where torch refuses."""
    x = torch.zeros(1, 1, n)
    calls = {
        "conv": lambda: F.conv1d(x, torch.zeros(1, 1, k), None, s, p, d),
        "convT": lambda: F.conv_transpose1d(x, torch.zeros(1, 1, k), None, s, p, op, 1, d),
        "maxpool": lambda: F.max_pool1d(x, k, s, p, d, ceil),
        "avgpool": lambda: F.avg_pool1d(x, k, s, p, ceil),
    }
    try:
        out = calls[layer]().shape[-1]
    except TORCH_ERRORS:
        return None
    return out or None


def brute_force(layer: str, n: int, k: int, s: int, d: int, ceil: bool, target: int):
    """(solutions, nearest) as (padding, output_padding, output), trying every padding of the
    search's range (torch's own limits; for conv up to where the output passes the target for
    good) with torch computing each output."""
    ke = d * (k - 1) + 1
    pads = {
        "conv": range(max(0, (target * s + ke - n) // 2 + s) + 1),
        "convT": range(((n - 1) * s + ke + max(s, d)) // 2 + 1),
    }.get(layer, range(k // 2 + 1))
    ops = range(max(s, d)) if layer == "convT" else [0]
    candidates = [
        (p, op, out)
        for p in pads
        for op in ops
        if (out := torch_output(layer, n, k, s, d, ceil, p, op)) is not None
    ]
    solutions = [c for c in candidates if c[2] == target]
    if solutions or not candidates:
        return solutions, []
    best = min(abs(c[2] - target) for c in candidates)
    return [], [c for c in candidates if abs(c[2] - target) == best]


@pytest.mark.parametrize("layer", ["conv", "convT", "maxpool", "avgpool"])
def test_solve_equals_a_brute_force_over_torch(layer):
    """The bisection finds what trying every padding finds: the same solutions and the same
    nearest outputs, in the same order, on a grid of small layers and every target up to past
    the largest output (conv: past what no padding or a little gives)."""
    grid = itertools.product(range(1, 10), range(1, 5), (1, 2, 3), (1, 2), (False, True))
    for n, k, s, d, ceil in grid:
        if ceil and layer not in cc.POOLS or d > 1 and layer == "avgpool":
            continue
        spec = cc.make_spec(layer, (k,), stride=(s,), dilation=(d,), ceil_mode=ceil)
        largest = (n - 1) * s + d * (k - 1) + max(s, d) if layer == "convT" else n + 2
        for target in range(1, largest + 3):
            solved = cc.solve_padding(spec, {"w": n}, {"w": target})
            got = [
                [(x.padding, x.output_padding, x.output) for x in found]
                for found in (solved.solutions["w"], solved.nearest.get("w", []))
            ]
            expected = list(brute_force(layer, n, k, s, d, ceil, target))
            assert got == expected, (n, k, s, d, ceil, target)


def test_solve_huge_sizes_without_trying_every_padding():
    """Before: one candidate padding per pixel of the target (10**12 of them: a hang)."""
    big = 10**12
    solved = cc.solve_padding(cc.make_spec(kernel_size=(3,), stride=(2,)), {"h": 32}, {"h": big})
    for solution in solved.solutions["h"]:
        one = cc.make_spec(kernel_size=(3,), stride=(2,), padding=(solution.padding,))
        assert cc.compute(one, {"h": 32}).output == {"h": big}
    assert [s.padding for s in solved.solutions["h"]] == [big - 15]
    up = cc.solve_padding(cc.make_spec("convT", (4,), stride=(2,)), {"w": big}, {"w": 2 * big})
    assert [(s.padding, s.output_padding) for s in up.solutions["w"]] == [(1, 0)]
    short = cc.solve_padding(cc.make_spec("convT", (4,), stride=(2,)), {"w": 4}, {"w": big})
    assert [(s.padding, s.output_padding, s.output) for s in short.nearest["w"]] == [(0, 1, 11)]
    pool = cc.make_spec("maxpool", (big,), stride=(3,))
    solved = cc.solve_padding(pool, {"w": big}, {"w": 1})
    assert [s.padding for s in solved.solutions["w"]] == [0, 1]


def test_solve_per_dimension_kernels_and_groups():
    """Before: a per-dimension kernel was refused ('kernel_size has 2 values but the input has
    1 dimensions') and groups made every padding illegal; neither changes a size."""
    spec = cc.make_spec(kernel_size=(3, 5), stride=(2,), groups=2)
    solved = cc.solve_padding(spec, {"h": 32, "w": 32}, {"h": 16, "w": 16})
    assert [s.padding for s in solved.solutions["h"]] == [1]
    assert [s.padding for s in solved.solutions["w"]] == [2]
    model = nn.Conv2d(4, 4, (3, 5), stride=2, padding=(1, 2), groups=2)
    assert model(torch.zeros(1, 4, 32, 32)).shape[2:] == (16, 16)


def test_solve_examples():
    solved = cc.solve_padding(cc.make_spec(kernel_size=(3,), stride=(2,)), {"h": 32}, {"h": 16})
    assert [(s.padding, s.output) for s in solved.solutions["h"]] == [(1, 16)]
    up = cc.solve_padding(cc.make_spec("convT", (3,), stride=(2,)), {"h": 16}, {"h": 32})
    assert [(s.padding, s.output_padding) for s in up.solutions["h"]] == [(1, 1)]
    none = cc.solve_padding(cc.make_spec("maxpool", (2,)), {"w": 9}, {"w": 7})
    assert not none.solved and {s.output for s in none.nearest["w"]} == {5}


def test_run_requests():
    assert cc.run_request({"h": 32, "k": "3", "s": "2"}).output == {"h": 15}
    chain = cc.run_request({"size": "8x8", "chain": "conv k3; maxpool k2"})
    assert chain.output == {"h": 3, "w": 3}
    with pytest.raises(UsageError, match="drop --k$"):
        cc.run_request({"size": "8", "chain": "conv k3", "k": "3"})
    with pytest.raises(UsageError, match="drop --no-bias$"):  # was "--bias", no such flag
        cc.run_request({"size": "8", "chain": "conv k3", "bias": False})
    with pytest.raises(UsageError, match="once"):
        cc.run_request({"size": "8", "h": 8, "k": "3"})
    with pytest.raises(UsageError, match="no input size"):
        cc.run_request({"k": "3"})
    assert cc.parse_request_line('{"k": 5, "h": 28}') == {"k": 5, "h": 28}
    with pytest.raises(UsageError, match="unknown keys"):
        cc.parse_request_line('{"kernel": 5}')


def test_a_stdin_line_overlays_the_command_line_key_by_key():
    """Before: a line with "layer" dropped the command line's --k --s --p."""
    cli = {"h": 32, "k": "3", "s": "2", "p": "1"}
    pooled = cc.run_request(cc.overlay(cli, {"layer": "maxpool"}))
    assert pooled.output["h"] == nn.MaxPool1d(3, 2, 1)(torch.zeros(1, 1, 32)).shape[-1]
    assert cc.overlay(cli, {"layer": "convT", "s": 3}) == {**cli, "layer": "convT", "s": 3}
    # a line's chain replaces the layer options; a line's layer replaces the chain
    assert cc.overlay(cli, {"chain": "conv k5"}) == {"h": 32, "chain": "conv k5"}
    assert cc.overlay({"h": 8, "chain": "conv k5"}, {"layer": "conv", "k": 3}) == {
        "h": 8, "layer": "conv", "k": 3,
    }  # fmt: skip
    assert cc.overlay(cli, {"w": 9}) == {"k": "3", "s": "2", "p": "1", "w": 9}


def test_a_target_with_a_chain_is_refused_never_dropped():
    """Before: a --stdin chain line dropped the command line's --target and answered the
    chain as if no target had been asked for."""
    request = cc.overlay({"h": 32, "target": "16"}, {"chain": "conv k3"})
    with pytest.raises(UsageError, match="a chain sets each layer itself; drop --target"):
        cc.run_request(request)


def test_never_imports_torch():
    import subprocess
    import sys

    code = "import sys, ptool.core.convcalc; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "False"


def test_integers_of_numpy_and_lists_of_one_integer_each():
    """A numpy integer raised TypeError (the refusal's text was made up front, as JSON), and
    [[3, 5]] or ["3x5", 2] were cut to 3 and (3, 2)."""
    import numpy as np

    assert cc.parse_ints(np.int64(3), "k") == (3,)
    assert cc.parse_ints([np.int64(3), "5"], "k") == (3, 5)
    for bad in ([[3, 5]], ["3x5", 2], [3.0], "\uff13"):
        with pytest.raises(UsageError, match="k expects integers like 3 or 3x5"):
            cc.parse_ints(bad, "k")
