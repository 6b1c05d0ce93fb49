"""inspect-checkpoint core: the restricted reader against torch.load as the oracle, the
summary of every layout, pruning/quantization figures, stats, diff and refusals."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
import warnings
import zipfile

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from ptool.core.errors import PtoolError
from ptool.core.inspect import tree, values
from ptool.core.inspect.reader import ModuleRefused, Refused, read
from ptool.core.inspect.report import InspectOptions, inspect
from tests.core.test_inspect_fixtures import (
    in_torch_zip,
    malicious_pickles,
    pruned_with_mask_view,
    ptool_checkpoint,
    safetensors_file,
    small_model,
    torch_saved_with_payload,
    trained_parts,
)


def _oracle_rows(state: dict) -> list[tuple]:
    return [
        (
            name,
            list(t.shape),
            str(t.dtype).removeprefix("torch."),
            t.numel(),
            t.numel() * t.element_size(),
        )
        for name, t in state.items()
    ]


def _rows(report: dict) -> list[tuple]:
    return [(r["name"], r["shape"], r["dtype"], r["numel"], r["bytes"]) for r in report["tensors"]]


@pytest.fixture(scope="module")
def ptool_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    ptool_checkpoint(path)
    return path


def test_ptool_checkpoint_matches_torch_load(ptool_ckpt):
    oracle = torch.load(ptool_ckpt, weights_only=True)
    report = inspect(ptool_ckpt, InspectOptions())
    assert _rows(report) == _oracle_rows(oracle["model_state_dict"])
    assert report["format"] == "ptool.checkpoint" and report["format_version"] == 1
    assert report["state_dict_key"] == "model_state_dict"
    s = report["summary"]
    assert (s["epoch"], s["global_step"], s["loss"]) == (3, 84, 0.4213)
    assert s["best"] == oracle["best"] and s["metrics"] == oracle["metrics"]
    assert s["torch_version"] == torch.__version__ and s["ptool_version"]
    assert s["config"]["optimizer"] == "adamw" and s["config"]["lr"] == 0.01
    assert s["config"]["model"] == "mlp" and s["config"]["data"] == "digits"
    # as the run trained: AdamW's default weight decay (shown as none), and no momentum
    assert s["config"]["weight_decay"] == 0.01 and "momentum" not in s["config"]
    buffers = sum(
        t.numel()
        for n, t in oracle["model_state_dict"].items()
        if "running" in n or "num_batches" in n
    )
    assert report["totals"]["buffers"] == buffers
    assert report["totals"]["parameters"] == sum(p.numel() for p in small_model().parameters())
    (opt,) = report["optimizers"]
    real = oracle["optimizer_state_dict"]
    assert opt["type"] == "adamw" and opt["key"] == "optimizer_state_dict"
    assert [g["lr"] for g in opt["param_groups"]] == [g["lr"] for g in real["param_groups"]]
    assert [g["weight_decay"] for g in opt["param_groups"]] == [0.05, 0.0]
    state_bytes = sum(
        t.numel() * t.element_size() for s in real["state"].values() for t in s.values()
    )
    assert opt["state_bytes"] == state_bytes
    (sched,) = report["schedulers"]
    assert sched["key"] == "scheduler_state_dict"
    assert sched["state"]["scheduler.last_epoch"] == 1
    assert report["pruning"] is None and report["quantization"] is None
    entries = {e["key"]: e for e in report["entries"]}
    assert entries["epoch"]["value"] == 3 and entries["model_state_dict"]["tensors"] == len(
        oracle["model_state_dict"]
    )


def test_metadata_never_imports_torch(ptool_ckpt, tmp_path):
    pruned = nn.Linear(4, 4)
    prune.l1_unstructured(pruned, "weight", 0.5)
    torch.save(pruned.state_dict(), tmp_path / "pruned.pt")
    code = (
        "import sys; from ptool.core.inspect.report import inspect, InspectOptions\n"
        f"for p in {[str(ptool_ckpt), str(tmp_path / 'pruned.pt')]!r}:\n"
        "    inspect(p, InspectOptions(depth=1, tree=True))\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _lightning(model, opt, sched):
    return {
        "epoch": 4,
        "global_step": 40,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "loops": {},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_acc'}": {
                "monitor": "val_acc",
                "best_model_score": torch.tensor(0.9375),
            }
        },
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [sched.state_dict()],
        "hyper_parameters": {"lr": 0.01, "model": "resnet"},
    }


@pytest.mark.parametrize(
    ("layout", "fmt", "key"),
    [
        ("lightning", "lightning", "state_dict"),
        ("timm", "timm", "state_dict"),
        ("model-optimizer", "nested state dict", "model"),
        ("hf-bin", "state_dict", None),
    ],
)
def test_other_tools_layouts(tmp_path, layout, fmt, key):
    model = small_model()
    opt, sched = trained_parts(model)
    obj = {
        "lightning": lambda: _lightning(model, opt, sched),
        "timm": lambda: {
            "epoch": 7,
            "arch": "resnet18",
            "state_dict": model.state_dict(),
            "optimizer": opt.state_dict(),
            "metric": 71.5,
            "version": 2,
        },
        "model-optimizer": lambda: {"model": model.state_dict(), "optimizer": opt.state_dict()},
        "hf-bin": lambda: model.state_dict(),
    }[layout]()
    path = tmp_path / "pytorch_model.bin"
    torch.save(obj, path)
    report = inspect(path, InspectOptions())
    assert report["format"] == fmt and report["state_dict_key"] == key
    oracle = torch.load(path, weights_only=True)
    assert _rows(report) == _oracle_rows(oracle[key] if key else oracle)
    if layout == "lightning":
        s = report["summary"]
        assert (s["epoch"], s["global_step"]) == (4, 40)
        assert s["best"]["value"] == 0.9375 and s["best"]["monitor"] == "val_acc"
        assert report["optimizers"][0]["key"] == "optimizer_states[0]"
        assert report["optimizers"][0]["type"] == "AdamW (inferred)"
        assert report["schedulers"][0]["state"]["[0].last_epoch"] == 1
    if layout == "timm":
        assert report["summary"]["config"]["model"] == "resnet18"
        assert report["summary"]["metrics"] == {"metric": 71.5}


def test_safetensors_header(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = {
        "a.weight": torch.randn(3, 4),
        "a.bias": torch.zeros(3, dtype=torch.bfloat16),
        "b": torch.arange(5, dtype=torch.int64),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    report = inspect(path, InspectOptions(depth=1))
    with safe_open(path, "pt") as f:
        oracle = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    assert sorted(_rows(report)) == sorted(_oracle_rows(oracle))
    assert report["format"] == "safetensors" and report["safetensors_metadata"] == {"format": "pt"}
    assert {g["name"]: g["tensors"] for g in report["groups"]} == {"a": 2, "b": 1}
    stats = {s["name"]: s for s in inspect(path, InspectOptions(stats=True))["stats"]}
    assert stats["b"]["max"] == 4.0 and stats["a.bias"]["zeros"] == 3
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(PtoolError, match="truncated"):
        read(path)


@pytest.mark.parametrize("first_bytes", [b"\x80", b"PK"])
def test_safetensors_whose_header_length_looks_like_a_pickle_or_zip(tmp_path, first_bytes):
    from safetensors import safe_open
    from safetensors.torch import save_file

    # the 8-byte header length comes first: 128 starts b"\x80", 19,280 (0x4B50) b"PK"
    length = int.from_bytes(first_bytes, "little")
    path = tmp_path / "model.safetensors"
    # the JSON holds 81 characters besides the padding metadata; the library pads it to 8
    save_file({"w": torch.arange(3.0)}, path, metadata={"pad": "x" * (length - 88)})
    assert int.from_bytes(path.read_bytes()[:8], "little") == length
    with safe_open(path, "pt") as f:
        assert f.get_tensor("w").tolist() == [0.0, 1.0, 2.0]  # a valid file
    report = inspect(path, InspectOptions(stats=True))
    assert report["format"] == "safetensors"
    assert [(s["name"], s["max"]) for s in report["stats"]] == [("w", 2.0)]


def test_pruning_sparsity_against_masks(tmp_path):
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 4))
    prune.l1_unstructured(model[0], "weight", 0.3)
    prune.random_unstructured(model[1], "weight", 0.5)
    path = tmp_path / "pruned.pt"
    torch.save(model.state_dict(), path)
    pruning = inspect(path, InspectOptions())["pruning"]
    masks = [model[0].weight_mask, model[1].weight_mask]
    assert [layer["name"] for layer in pruning["layers"]] == ["0.weight", "1.weight"]
    assert [layer["zeros"] for layer in pruning["layers"]] == [int((m == 0).sum()) for m in masks]
    zeros = sum(int((m == 0).sum()) for m in masks)
    assert pruning["sparsity"] == pytest.approx(zeros / sum(m.numel() for m in masks))


def test_pruned_recipe_without_masks_counts_zero_weights(tmp_path):
    linear = nn.Linear(8, 8)
    with torch.no_grad():
        linear.weight[:, :2] = 0
    path = tmp_path / "pruned.pt"
    torch.save(
        {
            "format": "ptool.checkpoint",
            "format_version": 1,
            "model_state_dict": linear.state_dict(),
            "pruning": {"method": "l1", "amount": 0.25, "compacted": False},
        },
        path,
    )
    pruning = inspect(path, InspectOptions())["pruning"]
    assert pruning["source"] == "weights" and pruning["sparsity"] == 0.25
    assert pruning["recipe"]["method"] == "l1"

    # the same weights int8: a quantized Linear keeps its weight in `_packed_params` (it was
    # left out: an empty table, sparsity -)
    quantized = torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear})
    int8 = quantized[0].weight()
    torch.save(
        {
            "format": "ptool.checkpoint",
            "format_version": 1,
            "model_state_dict": quantized.state_dict(),
            "pruning": {"method": "l1", "amount": 0.25, "compacted": False, "layers": ["0"]},
        },
        path,
    )
    (layer,) = inspect(path, InspectOptions())["pruning"]["layers"]
    assert layer["name"] == "0.weight"
    assert layer["zeros"] == int((int8.int_repr() == int8.q_zero_point()).sum()) == 16


def test_quantized_dynamic_and_static(tmp_path):
    dynamic = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(4, 3)), {nn.Linear})
    torch.save(dynamic.state_dict(), tmp_path / "dyn.pt")
    (layer,) = inspect(tmp_path / "dyn.pt", InspectOptions())["quantization"]["layers"]
    weight = dynamic[0].weight()
    assert layer["weight_dtype"] == "qint8" and layer["qscheme"] == "per_tensor_affine"
    assert layer["scale"] == weight.q_scale() and layer["zero_point"] == weight.q_zero_point()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = torch.ao.quantization.QuantStub()
            self.conv = nn.Conv2d(1, 4, 3)
            self.dequant = torch.ao.quantization.DeQuantStub()

        def forward(self, x):
            return self.dequant(self.conv(self.quant(x)))

    net = Net().eval()
    net.qconfig = torch.ao.quantization.get_default_qconfig("x86")
    torch.ao.quantization.prepare(net, inplace=True)
    net(torch.randn(8, 1, 6, 6))
    torch.ao.quantization.convert(net, inplace=True)
    torch.save(net.state_dict(), tmp_path / "static.pt")
    quant = inspect(tmp_path / "static.pt", InspectOptions())["quantization"]
    layers = {layer["name"]: layer for layer in quant["layers"]}
    w = net.conv.weight()
    scales, zps = w.q_per_channel_scales(), w.q_per_channel_zero_points()
    conv = layers["conv"]
    assert conv["qscheme"] == "per_channel_affine" and conv["axis"] == 0 and conv["channels"] == 4
    assert conv["scale_range"] == [scales.min().item(), scales.max().item()]
    assert conv["zero_point_range"] == [zps.min().item(), zps.max().item()]
    assert conv["output_scale"] == pytest.approx(net.conv.scale)
    assert layers["quant"]["output_zero_point"] == int(net.quant.zero_point)


def test_stats_against_torch(tmp_path, monkeypatch):
    monkeypatch.setattr(values, "CHUNK", 7)  # many chunks: the merge must be exact
    t = torch.randn(9, 5)
    t[0, 0], t[1, 1], t[2, 2], t[3] = float("nan"), float("inf"), float("-inf"), 0.0
    ints = torch.arange(-3, 20, dtype=torch.int32)
    path = tmp_path / "sd.pt"
    torch.save(
        {
            "w": t,
            "i": ints,
            "q": torch.quantize_per_tensor(t.nan_to_num(0, 0, 0), 0.1, 3, torch.quint8),
        },
        path,
    )
    report = inspect(path, InspectOptions(stats=True, filter="^[wi]$"))
    stats = {s["name"]: s for s in report["stats"]}
    assert set(stats) == {"w", "i"}
    finite = t[torch.isfinite(t)].double()
    w = stats["w"]
    assert (w["nan"], w["inf"], w["zeros"]) == (1, 2, int((t == 0).sum()))
    assert w["min"] == finite.min().item() and w["max"] == finite.max().item()
    assert w["mean"] == pytest.approx(finite.mean().item(), rel=1e-6)
    assert w["std"] == pytest.approx(finite.std().item(), rel=1e-6)
    assert stats["i"]["std"] == pytest.approx(ints.double().std().item())
    q = values.tensor_stats(torch.load(path, weights_only=True)["q"])
    assert q["max"] == pytest.approx(torch.load(path, weights_only=True)["q"].dequantize().max())


def test_stats_of_an_expanded_tensor_read_each_stored_value_once(monkeypatch):
    """torch.zeros(1).expand(10**5, 10**5) took minutes, walking 10**10 equal elements."""
    monkeypatch.setattr(values, "CHUNK", 7)
    stored = torch.tensor([[1.0], [float("nan")], [0.0], [4.0]])
    expanded = stored.expand(4, 6).unsqueeze(0).expand(5, 4, 6)  # strides (0, 1, 0)
    oracle = expanded.contiguous()
    finite = oracle[torch.isfinite(oracle)].double()
    got = values.tensor_stats(expanded)
    assert (got["nan"], got["zeros"], got["zero_fraction"]) == (30, 30, 0.25)
    assert (got["min"], got["max"]) == (0.0, 4.0)
    assert got["mean"] == pytest.approx(finite.mean().item())
    assert got["std"] == pytest.approx(finite.std().item())
    huge = values.tensor_stats(torch.ones(1).expand(10**5, 10**5))  # at once
    assert (huge["mean"], huge["std"], huge["zeros"]) == (1.0, 0.0, 0)


def test_diff_added_removed_reshaped_changed(tmp_path):
    a = {
        "same": torch.ones(3),
        "changed": torch.zeros(4),
        "reshaped": torch.zeros(2, 2),
        "retyped": torch.zeros(2),
        "removed": torch.ones(1),
        "nan": torch.tensor([math.nan, 1.0]),
    }
    b = {
        **a,
        "changed": torch.tensor([0.0, -0.5, 2.0, 0.0]),
        "reshaped": torch.zeros(4),
        "retyped": torch.zeros(2, dtype=torch.float16),
        "added": torch.ones(1),
    }
    del b["removed"]
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    diff = inspect(tmp_path / "a.pt", InspectOptions(diff=str(tmp_path / "b.pt")))["diff"]
    assert diff["added"] == ["added"] and diff["removed"] == ["removed"]
    assert [r["name"] for r in diff["reshaped"]] == ["reshaped", "retyped"]
    assert diff["changed"] == [{"name": "changed", "max_abs_diff": 2.0, "non_finite": None}]
    assert diff["unchanged"] == 2  # `same`, and `nan` (NaN in both at the same place)


def test_diff_nan_in_one_file_only_is_a_change(tmp_path):
    nan, inf = math.nan, math.inf
    a = {
        "nan_vs_number": torch.tensor([nan, 1.0]),
        "nan_moved": torch.tensor([nan, 1.0]),
        "same_specials": torch.tensor([nan, inf, -inf]),
        "inf_flipped": torch.tensor([inf, 1.0]),
        "complex": torch.tensor([1 + 0j, 2j], dtype=torch.complex64),
    }
    b = {
        "nan_vs_number": torch.tensor([5.0, 1.0]),
        "nan_moved": torch.tensor([1.0, nan]),
        "same_specials": torch.tensor([nan, inf, -inf]),
        "inf_flipped": torch.tensor([-inf, 1.0]),
        "complex": torch.tensor([1j, 2j], dtype=torch.complex64),  # same magnitudes
    }
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    diff = inspect(tmp_path / "a.pt", InspectOptions(diff=str(tmp_path / "b.pt")))["diff"]
    changed = {c["name"]: c["max_abs_diff"] for c in diff["changed"]}
    assert set(changed) == {"nan_vs_number", "nan_moved", "inf_flipped", "complex"}
    assert math.isnan(changed["nan_vs_number"]) and math.isnan(changed["nan_moved"])
    assert changed["inf_flipped"] == inf and changed["complex"] == 1.0
    assert diff["unchanged"] == 1  # same_specials


def test_diff_of_integers_past_float64s_precision_is_exact(tmp_path):
    """float64 holds integers exactly up to 2**53 only: a step counter of 2**60 + 1 against
    2**60 is a change (by at least 1), and the same large values are not."""
    big = 2**60
    torch.save({"step": torch.tensor([big + 1, 5]), "seed": torch.tensor([big])}, tmp_path / "a")
    torch.save({"step": torch.tensor([big, 5]), "seed": torch.tensor([big])}, tmp_path / "b")
    diff = inspect(tmp_path / "a", InspectOptions(diff=str(tmp_path / "b")))["diff"]
    assert diff["changed"] == [{"name": "step", "max_abs_diff": 1.0, "non_finite": None}]
    assert diff["unchanged"] == 1


def test_diff_of_fp4_compares_decoded_values_and_meta_tensors_have_none(tmp_path):
    """fp4 bytes decode to two values each (0x21 is 0.5 and 1.0; 0x41 is 0.5 and 2.0); meta
    tensors have a shape and a dtype but no values: equal to each other, changed against data."""
    fp4 = torch.float4_e2m1fn_x2
    a = {
        "fp4": torch.tensor([0x21, 0x00], dtype=torch.uint8).view(fp4),
        "fp4_same": torch.tensor([0x21], dtype=torch.uint8).view(fp4),
        "meta": torch.empty(3, device="meta"),
        "meta_vs_data": torch.empty(3, device="meta"),
    }
    b = {
        **a,
        "fp4": torch.tensor([0x41, 0x00], dtype=torch.uint8).view(fp4),
        "meta_vs_data": torch.zeros(3),
    }
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    options = InspectOptions(diff=str(tmp_path / "b.pt"), stats=True)
    report = inspect(tmp_path / "a.pt", options)
    changed = {c["name"]: c["max_abs_diff"] for c in report["diff"]["changed"]}
    assert changed == {"fp4": 1.0, "meta_vs_data": None}
    assert report["diff"]["unchanged"] == 2  # fp4_same, meta
    stats = {s["name"]: s for s in report["stats"]}
    assert set(stats["meta"].values()) == {"meta", None}


LOW_PRECISION = [
    torch.bool,
    torch.complex64,
    torch.uint8,
    torch.uint16,
    torch.int8,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.bfloat16,
]


def test_stats_of_low_precision_and_unusual_dtypes(tmp_path, monkeypatch):
    monkeypatch.setattr(values, "CHUNK", 3)
    base = torch.tensor([0.0, 1.0, 2.0, -3.0, 4.0, 0.5, 0.0])
    state = {str(dtype): base.to(dtype) for dtype in LOW_PRECISION}
    state["quint8"] = torch.quantize_per_tensor(base, 0.5, 8, torch.quint8)
    state["fp4"] = torch.tensor([0x21, 0xF0], dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    state["bits8"] = torch.tensor([1, 2], dtype=torch.uint8).view(torch.bits8)
    torch.save(state, tmp_path / "lowp.pt")
    stats = {
        s["name"]: s for s in inspect(tmp_path / "lowp.pt", InspectOptions(stats=True))["stats"]
    }
    for name, t in state.items():
        if name in ("fp4", "bits8"):
            continue
        exact = t.dequantize() if t.is_quantized else t
        exact = (exact.abs() if exact.is_complex() else exact).double()
        s = stats[name]
        assert (s["min"], s["max"]) == (exact.min().item(), exact.max().item()), name
        assert s["mean"] == pytest.approx(exact.mean().item()), name
        assert s["std"] == pytest.approx(exact.std().item()), name
        assert (s["zeros"], s["nan"], s["inf"]) == (int((exact == 0).sum()), 0, 0), name
    fp4 = stats["fp4"]  # the 4 values 0.5, 1, 0, -6 in 2 pairs
    assert (fp4["min"], fp4["max"], fp4["zeros"], fp4["zero_fraction"]) == (-6.0, 1.0, 1, 0.25)
    assert fp4["mean"] == pytest.approx(-4.5 / 4)
    assert set(stats["bits8"].values()) == {"bits8", None}  # opaque bytes: nothing to compute


def _safetensors_cases() -> dict[str, tuple[dict, int, str]]:
    """name -> (header, data bytes, the message): each header is one the library refuses."""

    def one(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
        return {"w": {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}}

    return {
        "unknown dtype": (one(dtype="XX"), 8, "tensor 'w' has unknown dtype \"XX\""),
        "C128 (not in the spec)": (one(dtype="C128", offsets=(0, 32)), 32, "unknown dtype"),
        "no torch dtype": (one(dtype="F6_E2M3", shape=(4,), offsets=(0, 3)), 3, "F6_E2M3"),
        "negative shape": (one(shape=(-2, 2), offsets=(0, 16)), 16, r"shape \[-2, 2\]"),
        "float shape": (one(shape=(2.5,)), 8, "non-negative integers"),
        "reversed offsets": (one(offsets=(8, 0)), 8, "data_offsets"),
        "short span": (one(shape=(3,)), 8, r"\(8 bytes\) but shape \[3\] of F32 needs 12"),
        "half byte": (one(dtype="F4", shape=(3,), offsets=(0, 1)), 1, "whole bytes"),
        "odd F4": (one(dtype="F4", shape=(2, 3), offsets=(0, 3)), 3, "even last dimension"),
        "past the end": (one(offsets=(8, 16)), 8, "tensor 'w' .*gap"),
        "truncated": (one(), 4, "truncated"),
        "stray bytes": (one(), 12, "4 bytes after the last tensor"),
        "overlap": (
            {**one(), "v": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
            8,
            "tensor 'v' .*overlapping",
        ),
        "not an object": ({"w": [1, 2]}, 0, "tensor 'w' is not a JSON object"),
        "metadata": ({"__metadata__": {"a": 1}, **one()}, 8, "__metadata__"),
    }


@pytest.mark.parametrize("case", list(_safetensors_cases()))
def test_bad_safetensors_header_refused(tmp_path, case):
    header, size, message = _safetensors_cases()[case]
    path = safetensors_file(tmp_path / "bad.safetensors", header, bytes(size))
    with pytest.raises(PtoolError, match=message) as error:
        read(path)
    assert "\n" not in str(error.value)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    for path_, options in [(path, InspectOptions(stats=True)), (good, InspectOptions(diff=path))]:
        with pytest.raises(PtoolError, match=message):  # not safetensors' own error
            inspect(path_, options)


def test_hand_written_safetensors_of_every_torch_dtype(tmp_path):
    from safetensors import safe_open

    header, data = {}, b""
    for i, (dtype, shape, size) in enumerate(
        [("F8_E8M0", [2], 2), ("F8_E4M3FNUZ", [2], 2), ("F4", [2, 4], 4), ("U16", [1], 2)]
    ):
        header[f"t{i}"] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [len(data), len(data) + size],
        }
        data += bytes(range(1, size + 1))
    header["empty"] = {"dtype": "F32", "shape": [0, 3], "data_offsets": [len(data), len(data)]}
    path = safetensors_file(tmp_path / "all.safetensors", header, data)
    report = inspect(path, InspectOptions(stats=True))
    with safe_open(path, "pt") as f:
        oracle = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    assert sorted(_rows(report)) == sorted(_oracle_rows(oracle))
    assert sorted(s["name"] for s in report["stats"]) == sorted(oracle)


@pytest.mark.parametrize("wrap", ["bare", "zip"])
def test_malicious_pickles_never_run(tmp_path, wrap):
    sentinel = tmp_path / "SENTINEL"
    for name, (data, global_name) in malicious_pickles(sentinel).items():
        path = tmp_path / f"{name}.pt"
        if wrap == "zip":
            in_torch_zip(data, path)
        else:
            path.write_bytes(data)
        with pytest.raises(Refused) as refused:
            read(path)
        assert refused.value.global_name == global_name, name
        assert global_name in str(refused.value) and "\n" not in str(refused.value)
        assert not sentinel.exists(), name


@pytest.mark.parametrize("protocol", [2, 4])
def test_payload_inside_real_torch_save_never_runs(tmp_path, protocol):
    sentinel = tmp_path / "SENTINEL"
    torch_saved_with_payload(sentinel, tmp_path / "evil.pt", protocol)
    with pytest.raises(Refused, match="system"):
        inspect(tmp_path / "evil.pt", InspectOptions(stats=True, diff=str(tmp_path / "evil.pt")))
    assert not sentinel.exists()


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)


@pytest.mark.parametrize(
    ("model", "class_name"),
    [
        (nn.Sequential(nn.Linear(2, 2)), "torch.nn.modules.container.Sequential"),
        (UserNet(), f"{__name__}.UserNet"),
    ],
)
def test_pickled_module_is_described_and_refused(tmp_path, model, class_name):
    path = tmp_path / "model.pt"
    torch.save(model, path)
    with pytest.raises(ModuleRefused, match="pickled nn.Module") as refused:
        read(path)
    assert refused.value.global_name == class_name
    warnings = []
    report = inspect(path, InspectOptions(unsafe_load=True, warn=warnings.append))
    assert report["container"] == "pickled-module"
    assert report["module_class"] == f"{type(model).__module__}.{type(model).__qualname__}"
    assert _rows(report) == _oracle_rows(model.state_dict())
    assert len(warnings) == 1 and "runs code" in warnings[0]


def test_legacy_format(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.randn(3, 2), "n": 5}, path, _use_new_zipfile_serialization=False)
    report = inspect(path, InspectOptions(stats=True))
    assert report["container"] == "torch-legacy"
    assert _rows(report) == [("w", [3, 2], "float32", 6, 24)]
    assert report["stats"][0]["max"] == torch.load(path, weights_only=True)["w"].max().item()


def test_a_frozenset_reads_in_the_listing_and_in_stats(tmp_path):
    """The listing read it while --stats, through torch.load, refused it as code to run."""
    path = tmp_path / "tags.pt"
    torch.save({"w": torch.arange(3.0), "tags": frozenset({1, 2})}, path)
    with torch.serialization.safe_globals([frozenset]):  # the oracle, told frozenset is data
        assert torch.load(path, weights_only=True)["tags"] == frozenset({1, 2})
    report = inspect(path, InspectOptions(stats=True))
    assert [(s["name"], s["max"]) for s in report["stats"]] == [("w", 2.0)]


def test_a_legacy_file_torch_cannot_rebuild_is_listed_and_stats_refused(tmp_path):
    path = tmp_path / "legacy.pt"
    u16 = torch.tensor([5, 7]).to(torch.uint16)
    torch.save({"u16": u16}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(AttributeError):  # the oracle cannot read it either
        torch.load(path, weights_only=True)
    assert _rows(inspect(path, InspectOptions())) == [("u16", [2], "uint16", 2, 4)]
    with pytest.raises(PtoolError, match="torch's reader failed") as error:
        inspect(path, InspectOptions(stats=True))
    assert "legacy (non-zip) reader cannot rebuild" in error.value.hint


def test_a_legacy_file_cut_anywhere_is_refused_without_stats(tmp_path):
    """Its pickles come first and its tensor bytes last: a cut among the bytes left every
    pickle whole, and the listing (no --stats) called the file fine."""
    path = tmp_path / "legacy.pt"
    tensors = {"w": torch.randn(3, 2), "b": torch.zeros(4, dtype=torch.bfloat16)}
    torch.save({**tensors, "v": tensors["w"][1:]}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    assert [row[0] for row in _rows(inspect(path, InspectOptions()))] == ["w", "b", "v"]
    for cut in range(len(data) // 2, len(data), 7):
        path.write_bytes(data[:cut])
        with pytest.raises(PtoolError, match="truncated") as error:
            read(path)
        with pytest.raises(Exception):  # noqa: B017, PT011 - the oracle refuses it too
            torch.load(path, weights_only=True)
        assert "\n" not in str(error.value)


def test_a_legacy_file_whose_pickle_is_large_is_read_whole(tmp_path):
    """Its object pickle (a 70 MB string here) may exceed any fixed read-ahead: it was called
    truncated when it ran past the first 64 MiB."""
    path = tmp_path / "legacy.pt"
    blob = "x" * (70 * 2**20)
    torch.save({"w": torch.ones(2), "notes": blob}, path, _use_new_zipfile_serialization=False)
    assert torch.load(path, weights_only=True)["notes"] == blob  # the oracle reads it
    report = inspect(path, InspectOptions(stats=True))
    assert [(s["name"], s["mean"]) for s in report["stats"]] == [("w", 1.0)]


def _bad_files(tmp_path, good):
    data = good.read_bytes()
    with zipfile.ZipFile(tmp_path / "nopkl.zip", "w") as z:
        z.writestr("x/readme.txt", "hello")
    corrupt = bytearray(data)
    start = data.index(b"data.pkl") + 30  # inside data.pkl's bytes: CRC mismatch
    corrupt[start : start + 8] = b"\xff" * 8
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(tmp_path / "nostorage.pt", "w") as z:
        for info in source.infolist():
            if not info.filename.endswith("/data/0"):
                z.writestr(info, source.read(info))
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(tmp_path / "badversion.pt", "w") as z:
        for info in source.infolist():  # torch: "Couldn't parse the version three as Long Long"
            z.writestr(
                info, b"three\n" if info.filename.endswith("/version") else source.read(info)
            )
    return {
        "empty": (b"", "empty"),
        "truncated": (data[: len(data) // 2], "truncated or corrupt"),
        "text": (b"epoch,loss\n1,0.5\n", "not a checkpoint"),
        "corrupt": (bytes(corrupt), "corrupt"),
        "plain pickle": (pickle.dumps({"a": 1}, protocol=2), "plain pickle"),
        "no data.pkl": ((tmp_path / "nopkl.zip").read_bytes(), "without data.pkl"),
        "short pickle": (pickle.dumps({"a": [1, 2, 3]}, protocol=2)[:-5], "truncated"),
        # said once, not wrapped in "bad pickle: ... is corrupt (...)"
        "bad version": ((tmp_path / "badversion.pt").read_bytes(), "archive version b'three"),
        "no storage": (
            (tmp_path / "nostorage.pt").read_bytes(),
            r"^\S+ is corrupt \(storage 0 is missing or short\)$",
        ),
    }


def test_truncated_corrupt_empty_foreign_files(tmp_path, ptool_ckpt):
    for name, (data, message) in _bad_files(tmp_path, ptool_ckpt).items():
        path = tmp_path / "bad.pt"
        path.write_bytes(data)
        with pytest.raises(PtoolError, match=message) as error:
            read(path)
        assert "\n" not in str(error.value), name


def test_a_pipe_and_a_folder_of_many_checkpoints_are_named_so(tmp_path):
    """A FIFO given as the checkpoint read as "is empty (0 bytes)" (or waited for a writer);
    a folder's hint listed every checkpoint in it, one line as long as the folder."""
    import os

    os.mkfifo(tmp_path / "pipe.pt")
    with pytest.raises(PtoolError, match="pipe.pt is a pipe or a device, not a checkpoint file"):
        read(tmp_path / "pipe.pt")
    for name in [f"epoch-{epoch:02d}.pt" for epoch in range(1, 40)] + ["best.pt", "last.pt"]:
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(PtoolError, match="is a directory") as error:
        read(tmp_path)
    assert error.value.hint == (
        "give one of its checkpoints: last.pt, best.pt, epoch-01.pt, epoch-02.pt, epoch-03.pt, ..."
    )


def test_load_names_a_zip_that_is_not_a_torch_save_file(tmp_path, ptool_ckpt):
    """eval, prune and quantize said torch's "[enforce fail at inline_container.cc:180] ...";
    inspect-checkpoint named the file's kind. Both read it the same way now."""
    from ptool.core.checkpoint import load

    bad = _bad_files(tmp_path, ptool_ckpt)
    for name in ("no data.pkl", "truncated", "empty"):
        data, message = bad[name]
        (tmp_path / "bad.pt").write_bytes(data)
        with pytest.raises(PtoolError, match=message):
            load(tmp_path / "bad.pt")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pt")
    with pytest.raises(PtoolError, match="is a TorchScript archive") as error:
        load(tmp_path / "scripted.pt")
    assert error.value.hint == "load it with torch.jit.load"


def test_groups_and_tree_subtotals(ptool_ckpt):
    report = inspect(ptool_ckpt, InspectOptions(depth=1, tree=True, filter=r"\.weight$"))
    assert [r["name"] for r in report["tensors"]] == ["0.weight", "1.weight", "3.weight"]
    assert [(g["name"], g["numel"]) for g in report["groups"]] == [("0", 48), ("1", 8), ("3", 24)]
    tree = report["tree"]
    assert tree["numel"] == 80 and [c["name"] for c in tree["children"]] == ["0", "1", "3"]
    assert report["totals"]["numel"] == 80


def _sparse_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    dense = torch.randn(6, 5) * (torch.rand(6, 5) > 0.6)
    dense[0, 0] = float("nan")
    return {
        "coo": dense.to_sparse(),
        "hybrid": torch.randn(4, 3).relu().to_sparse(1),  # a sparse dim, then a dense one
        "csr": dense.nan_to_num(0).to_sparse_csr(),
        "bsc": torch.randn(4, 6).relu().to_sparse_bsc((2, 3)),
        "dense": torch.randn(3),
    }


def test_sparse_tensors_are_described_without_their_bytes(tmp_path):
    """torch.load(weights_only=True) loads sparse tensors, so inspect reads them too: layout,
    shape, dtype, nnz and the bytes of their indices and values."""
    path = tmp_path / "misc.pt"
    torch.save(_sparse_state(), path)
    oracle = torch.load(path, weights_only=True)
    rows = {r["name"]: r for r in inspect(path, InspectOptions())["tensors"]}
    for name, t in oracle.items():
        row = rows[name]
        assert (row["shape"], row["dtype"]) == (list(t.shape), str(t.dtype).removeprefix("torch."))
        if t.layout == torch.strided:
            assert "layout" not in row
            continue
        assert (row["layout"], row["nnz"]) == (str(t.layout).removeprefix("torch."), t._nnz())
        parts = values._sparse_parts(t)
        assert row["bytes"] == sum(p.numel() * p.element_size() for p in parts)


def test_sparse_stats_are_those_of_the_dense_tensor(tmp_path):
    path = tmp_path / "misc.pt"
    torch.save(_sparse_state(), path)
    stats = {s["name"]: s for s in inspect(path, InspectOptions(stats=True))["stats"]}
    for name, t in torch.load(path, weights_only=True).items():
        got = {k: v for k, v in stats[name].items() if k != "name"}
        assert got == pytest.approx(values.tensor_stats(t.to_dense())), name
    assert stats["coo"]["nan"] == 1 and stats["coo"]["zero_fraction"] > 0.3
    diff = inspect(path, InspectOptions(diff=str(path)))["diff"]
    assert diff["unchanged"] == 5 and not diff["changed"]


def test_fx_activation_qparams_are_buffers_and_dynamic_layers_have_no_output_qparams(tmp_path):
    from torch.ao.quantization import get_default_qconfig_mapping, quantize_fx

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)).eval()
    example = (torch.randn(2, 1, 4, 4),)
    prepared = quantize_fx.prepare_fx(model, get_default_qconfig_mapping("x86"), example)
    prepared(torch.randn(8, 1, 4, 4))
    static = quantize_fx.convert_fx(prepared)
    torch.save(static.state_dict(), tmp_path / "fx.pt")
    report = inspect(tmp_path / "fx.pt", InspectOptions())
    kinds = {r["name"]: r["kind"] for r in report["tensors"]}
    assert kinds["0_input_scale_0"] == kinds["0_input_zero_point_0"] == "buffer"
    assert kinds["2_scale_0"] == kinds["2_zero_point_0"] == "buffer"
    assert kinds["0.bias"] == "parameter"
    static_rows = {row["name"]: row for row in report["quantization"]["layers"]}
    assert static_rows["0"]["output_scale"] == pytest.approx(float(static.get_submodule("0").scale))

    dynamic = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(4, 3)), {nn.Linear})
    torch.save(dynamic.state_dict(), tmp_path / "dyn.pt")
    (layer,) = inspect(tmp_path / "dyn.pt", InspectOptions())["quantization"]["layers"]
    assert "output_scale" not in layer and "output_zero_point" not in layer
    assert layer["activations"] == "dynamic"


def test_a_qat_models_fake_quantize_state_is_buffers(tmp_path):
    """A QAT run's checkpoint: its observers' ranges and per-channel weight scales were counted
    as parameters. The oracle: the prepared model's own named_parameters."""
    from torch.ao.quantization import get_default_qat_qconfig_mapping, quantize_fx

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(144, 3)).train()  # fmt: skip
    example = (torch.randn(2, 1, 8, 8),)
    prepared = quantize_fx.prepare_qat_fx(model, get_default_qat_qconfig_mapping("x86"), example)
    prepared(*example)
    torch.save(prepared.state_dict(), tmp_path / "qat.pt")
    rows = inspect(tmp_path / "qat.pt", InspectOptions())["tensors"]
    parameters = {r["name"] for r in rows if r["kind"] == "parameter"}
    assert parameters == {name for name, _ in prepared.named_parameters()}


class TiedLM(nn.Module):
    """An embedding shared with the output layer, as language models tie them."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10)
        self.head.weight = self.embed.weight


@pytest.mark.parametrize("how", ["state-dict", "pickled-module"])
def test_tied_weights_are_marked_and_counted_once(tmp_path, how):
    model = TiedLM()
    path = tmp_path / "tied.pt"
    torch.save(model.state_dict() if how == "state-dict" else model, path)
    report = inspect(path, InspectOptions(unsafe_load=how == "pickled-module", tree=True))
    shares = {r["name"]: r["shares"] for r in report["tensors"]}
    assert shares == {"embed.weight": None, "head.weight": "embed.weight", "head.bias": None}
    totals = report["totals"]
    assert totals["parameters"] == sum(p.numel() for p in model.parameters())  # 50, not 90
    assert (totals["tensors"], totals["shared"], totals["bytes"]) == (3, 1, 50 * 4)
    assert report["tree"]["numel"] == totals["numel"]  # the file holds the tensor once
    head = next(c for c in report["tree"]["children"] if c["name"] == "head")
    assert head["numel"] == sum(p.numel() for p in model.head.parameters())  # its own, 50
    wrapped = nn.Module()
    wrapped.module = model  # DDP's prefix: a parent holding both names counts them once
    torch.save(wrapped.state_dict(), path)
    (module,) = inspect(path, InspectOptions(tree=True))["tree"]["children"]
    assert module["numel"] == sum(p.numel() for p in model.parameters())  # 50, not 90
    assert module["tensors"] == 3
    (group,) = inspect(path, InspectOptions(depth=1))["groups"]  # `module`, as --depth 1
    assert (group["tensors"], group["numel"]) == (3, 50)
    views = {"a": torch.arange(6.0), "b": torch.arange(6.0)}
    views["first_half"], views["same"] = views["a"][:3], views["a"]
    torch.save(views, path)  # a view of part of a tensor is not the same tensor
    shares = {r["name"]: r["shares"] for r in inspect(path, InspectOptions())["tensors"]}
    assert shares == {"a": None, "b": None, "first_half": None, "same": "a"}


def test_key_lists_another_state_dict_and_stats_and_diff_follow_it(tmp_path):
    """timm keeps `state_dict_ema` beside `state_dict`: --key lists it, --stats and --diff
    read the same entry (here of both files)."""
    model, ema = small_model(), small_model()
    path, other = tmp_path / "timm.pth.tar", tmp_path / "other.pth.tar"
    torch.save({"state_dict": model.state_dict(), "state_dict_ema": ema.state_dict()}, path)
    changed = {k: v + 1 if k == "0.bias" else v for k, v in ema.state_dict().items()}
    torch.save({"state_dict": model.state_dict(), "state_dict_ema": changed}, other)
    default = inspect(path, InspectOptions())
    assert default["state_dict_key"] == "state_dict"
    assert default["state_dicts"] == ["state_dict", "state_dict_ema"]
    report = inspect(path, InspectOptions(key="state_dict_ema", stats=True, diff=str(other)))
    assert report["state_dict_key"] == "state_dict_ema"
    assert report["format"] == "nested state dict"
    assert _rows(report) == _oracle_rows(ema.state_dict())
    for row in report["stats"]:
        assert row["max"] == pytest.approx(ema.state_dict()[row["name"]].max().item())
    assert [c["name"] for c in report["diff"]["changed"]] == ["0.bias"]
    nested = inspect(path, InspectOptions(key="state_dict_ema.0.weight"))
    assert _rows(nested) == [("state_dict_ema.0.weight", *_oracle_rows(ema.state_dict())[0][1:])]
    with pytest.raises(PtoolError, match="no such entry; its keys: state_dict, state_dict_ema"):
        inspect(path, InspectOptions(key="ema"))
    opt = {"state": {0: ema[0].state_dict()}}
    from ptool.ui.inspect_view import _state_dict_row

    torch.save({"model": {"net": model.state_dict(), "ema": ema.state_dict()}}, path)
    one_down = inspect(path, InspectOptions())  # the two side by side under one key
    assert one_down["state_dicts"] == ["model.net", "model.ema"]
    assert _state_dict_row(one_down) == "model.net (also: model.ema; --key NAME lists one)"
    assert _rows(inspect(path, InspectOptions(key="model.ema"))) == _oracle_rows(ema.state_dict())
    torch.save({"model": {"state_dict": model.state_dict()}, "opt": opt}, path)
    alone = inspect(path, InspectOptions())  # one state dict, nested: no "also"
    assert (alone["state_dicts"], _state_dict_row(alone)) == (["model"], "model.state_dict")
    optimizer_state = inspect(path, InspectOptions(key="opt.state.0"))  # integer keys, as text
    assert [r["name"] for r in optimizer_state["tensors"]] == ["weight", "bias"]


BAD_VIEWS = {  # size, stride, offset over 4 elements: each one torch.load refuses
    "past the end (40x40)": ((40, 40), (40, 1), 0),
    "past the end (3000x3000)": ((3000, 3000), (3000, 1), 0),
    "one past the end": ((3,), (1,), 2),
    "negative stride": ((2,), (-1,), 0),
    "negative offset": ((2,), (1,), -1),
    "negative size": ((-2,), (1,), 0),
    "empty, negative offset": ((0,), (1,), -5),
    "stride longer than size": ((2,), (1, 1), 0),
    "float size": ((2.0,), (1,), 0),
}


@pytest.mark.parametrize("case", BAD_VIEWS)
def test_a_view_torch_refuses_is_corrupt_before_any_value_is_read(tmp_path, case):
    """A mask of 3000x3000 over 4 floats: NumPy's as_strided read past the zip entry's bytes
    (a segfault, or zeros counted in foreign memory with exit 0). The reader checks each view
    as torch does, so every view (listing, masks, scales, scalars) is refused alike."""
    size, stride, offset = BAD_VIEWS[case]
    path = pruned_with_mask_view(tmp_path / "oob.pt", size, stride, offset)
    with pytest.raises(Exception):  # noqa: B017, PT011 - the oracle refuses it too
        torch.load(path, weights_only=True)
    with pytest.raises(PtoolError, match=r"^\S+ is corrupt \(a .*tensor") as error:
        inspect(path, InspectOptions())
    assert "\n" not in str(error.value)


GOOD_VIEWS = {  # size, stride, offset over (0, 1, 0, 1): each one torch.load reads
    "exact fit": ((3,), (1,), 1),
    "transposed": ((2, 2), (1, 2), 0),
    "expanded (stride 0)": ((1000,), (0,), 3),
    "a dimension of 1, any stride": ((1, 2), (10**6, 1), 0),
    "empty, far offset": ((0,), (1,), 100),
    "empty, negative stride": ((0, 3), (-1, 1), 0),
}


@pytest.mark.parametrize("case", GOOD_VIEWS)
def test_views_torch_reads_count_the_same_zeros(tmp_path, case):
    size, stride, offset = GOOD_VIEWS[case]
    path = pruned_with_mask_view(tmp_path / "view.pt", size, stride, offset)
    mask = torch.load(path, weights_only=True)["fc.weight_mask"]
    (layer,) = inspect(path, InspectOptions())["pruning"]["layers"]
    assert (layer["numel"], layer["zeros"]) == (mask.numel(), int((mask == 0).sum()))


def test_the_value_reader_checks_the_view_itself(tmp_path):
    """The last guard before NumPy: a TensorMeta that did not come through the reader's checks
    (or whose file changed since) is refused, never read past its bytes."""
    from ptool.core.inspect.rawdata import RawReader

    path = pruned_with_mask_view(tmp_path / "view.pt", (2, 2), (2, 1))
    raw = read(path)
    mask = raw.obj["fc.weight_mask"]
    with RawReader(raw) as reader:
        assert reader.zeros(mask) == 2
        mask.shape, mask.stride = (3000, 3000), (3000, 1)
        with pytest.raises(PtoolError, match="is corrupt .* needs 36,000,000 bytes of storage 1"):
            reader.values(mask)
        mask.shape, mask.stride = (2,), (-1,)
        with pytest.raises(PtoolError, match="negative stride"):
            reader.values(mask)
    with zipfile.ZipFile(path) as source:  # the entry is shorter than the pickle says
        entries = {info.filename: source.read(info) for info in source.infolist()}
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data[:8] if name == "archive/data/1" else data)
    raw.obj["fc.weight_mask"].shape = (2, 2)
    raw.obj["fc.weight_mask"].stride = (2, 1)
    with RawReader(raw) as reader, pytest.raises(PtoolError, match="storage 1 is missing or short"):
        reader.values(raw.obj["fc.weight_mask"])


@pytest.mark.parametrize("entry", ["archive/data.pkl", "archive/data/1"])
def test_a_deflated_entry_that_does_not_inflate_is_corrupt(tmp_path, entry):
    """zipfile's zlib.error (data.pkl) and its errors for a mask's entry were 'unexpected'."""
    path = pruned_with_mask_view(tmp_path / "z.pt", (2, 2), (2, 1))
    with zipfile.ZipFile(path) as source:
        entries = {info.filename: source.read(info) for info in source.infolist()}
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data, zipfile.ZIP_DEFLATED if name == entry else zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    start = data.index(entry.encode()) + len(entry)  # the deflate stream after the local header
    data[start : start + 6] = b"\xff" * 6
    path.write_bytes(bytes(data))
    with pytest.raises(PtoolError, match=r"^\S+ is corrupt \(.*decompressing") as error:
        inspect(path, InspectOptions())
    assert "\n" not in str(error.value)


def test_per_channel_scales_of_no_channels(tmp_path):
    """An empty per-channel quantized tensor (torch saves and loads it) has no scale range;
    NumPy's min of nothing raised."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation of quantized tensors
        empty = torch.quantize_per_channel(
            torch.zeros(0, 3), torch.ones(0, dtype=torch.float64), torch.zeros(0).long(), 0,
            torch.qint8,
        )  # fmt: skip
    torch.save({"fc.weight": empty}, tmp_path / "q.pt")
    (layer,) = inspect(tmp_path / "q.pt", InspectOptions())["quantization"]["layers"]
    assert (layer["channels"], layer["scale_range"], layer["zero_point_range"]) == (0, None, None)


def _nested_pickle(kind: str, depth: int) -> bytes:
    """A protocol-2 pickle of `depth` lists (or dicts) each inside the next, built opcode by
    opcode (pickle.dumps itself would recurse), or of a list that holds itself."""
    if kind == "lists":
        body = b"]" * depth + b"a" * (depth - 1)  # EMPTY_LIST each, then APPEND each
    elif kind == "dicts":
        body = b"}" + b"X\x01\x00\x00\x00k}" * (depth - 1) + b"s" * (depth - 1)  # {"k": {...}}
    else:
        body = b"]q\x00h\x00a"  # EMPTY_LIST, BINPUT 0, BINGET 0, APPEND: x = []; x.append(x)
    return b"\x80\x02" + body + b"."


@pytest.mark.parametrize(("kind", "depth"), [("lists", 200_000), ("dicts", 200_000), ("self", 1)])
def test_containers_nested_past_the_limit_are_refused_in_one_line(tmp_path, kind, depth):
    """They unpickle (pickle nests without recursion), then walking them raised RecursionError:
    'unexpected RecursionError ... report it'."""
    path = tmp_path / "deep.pt"
    in_torch_zip(_nested_pickle(kind, depth), path)
    with pytest.raises(PtoolError, match="nest more than 200 levels deep") as error:
        inspect(path, InspectOptions())
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kind", ["lists", "dicts"])
def test_containers_nested_to_the_limit_are_read(tmp_path, kind):
    path = tmp_path / "deep.pt"
    in_torch_zip(_nested_pickle(kind, 200), path)
    report = inspect(path, InspectOptions(tree=True))
    assert report["totals"]["tensors"] == 0
    json.dumps(report)


def test_walk_names_leaves_by_path_and_shares_a_long_key_among_them():
    """A 1 MB key over 10**5 items took 17 s: each item's path copied the key (twice: the
    tensors' walk and the optimizers' one). Paths are parts, joined only where kept."""
    long_key = "k" * 10**6
    obj = {long_key: [1, {"w": torch.ones(1)}], "opt": ({"state": {0: 2}},)}
    found = list(tree.walk(obj, values._is_tensor))
    names = [tree.dotted(parts) for parts, _ in found]
    assert names == [f"{long_key}[0]", f"{long_key}[1].w", "opt[0].state.0"]
    assert found[0][0][0] is found[1][0][0]  # one key string for every leaf under it


def test_nesting_counts_a_shared_container_at_its_deepest_and_each_time_it_is_walked():
    from ptool.core.inspect.tree import unwalkable

    def walked(obj) -> int:  # the oracle, recursive: every item, a shared one each time
        if isinstance(obj, dict):
            return 1 + sum(walked(k) + walked(v) for k, v in obj.items())
        return 1 + sum(map(walked, obj)) if isinstance(obj, list) else 1

    inner = [[[1]]]  # 3 deep
    shared = {"a": inner, "b": [[[inner]]]}  # met at depths 2, then 5: 7 deep in all
    assert unwalkable(shared, 7, 10**6) is None
    assert "more than 6 levels" in unwalkable(shared, 6, 10**6)
    assert unwalkable(5, 0, 1) is None and unwalkable([], 1, 1) is None
    assert unwalkable([[]], 1, 10) is not None
    diamond: list = []
    for _ in range(12):  # each list holds the one before twice
        diamond = [diamond, diamond]
    for obj, depth in ((shared, 7), (diamond, 13)):
        assert unwalkable(obj, depth, walked(obj)) is None
        assert f"more than {walked(obj) - 1:,} items" in unwalkable(obj, depth, walked(obj) - 1)
    assert walked(diamond) == 2**13 - 1
    assert "more than 12 levels" in unwalkable(diamond, 12, 10**9)


def test_a_pickle_of_shared_lists_that_walks_2_to_the_60_items_is_refused(tmp_path):
    """60 lists, each holding the one before twice: inspect hung walking 2**60 items."""
    body = b"]q\x00" + b"h\x00h\x00\x86q\x00" * 60  # x = []; then 60 times x = (x, x)
    path = tmp_path / "wide.pt"
    in_torch_zip(b"\x80\x02" + body + b".", path)
    with pytest.raises(PtoolError, match="hold more than 10,000,000 items") as error:
        inspect(path, InspectOptions())
    assert "\n" not in str(error.value)


def test_safetensors_header_with_whitespace_around_it(tmp_path):
    """serde_json (the library's parser) skips whitespace around the JSON object, and the
    library's writer pads the header with spaces: the sniffer looked for `{` at byte 8."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.arange(3.0)}, path)
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header, tensors = data[8 : 8 + length], data[8 + length :]
    assert header.endswith(b" ")  # padded to 8 bytes by the library
    for lead in (b" ", b"\n\t\r " * 3, b" " * 70_000):
        spaced = lead + header.strip() + b" \n\r\t"
        path.write_bytes(len(spaced).to_bytes(8, "little") + spaced + tensors)
        with safe_open(path, "pt") as f:
            assert f.get_tensor("w").tolist() == [0.0, 1.0, 2.0]  # the library reads it
        report = inspect(path, InspectOptions(stats=True))
        assert report["format"] == "safetensors"
        assert [(s["name"], s["max"]) for s in report["stats"]] == [("w", 2.0)]
    utf16 = header.strip().decode().encode("utf-16-le")  # not UTF-8: the library refuses it
    path.write_bytes(len(utf16).to_bytes(8, "little") + utf16 + tensors)
    with pytest.raises(SafetensorError), safe_open(path, "pt"):
        pass
    with pytest.raises(PtoolError, match="is corrupt \\(bad safetensors header"):
        read(path)


@pytest.fixture(scope="module")
def cnn_ckpt(tmp_path_factory):
    from tests.core.test_quantize import write_checkpoint

    path = tmp_path_factory.mktemp("cnn") / "best.pt"
    return write_checkpoint(path, epochs=1, model="cnn", channels=[8, 16])


@pytest.mark.parametrize("keep_masks", [False, True])
def test_layers_an_earlier_prune_made_permanent_are_counted(cnn_ckpt, tmp_path, keep_masks):
    """`ptool prune --only 'body\\.0'`, then `--only 'body\\.1'` on its output: the second
    recipe names body.1 and keeps the first under `previous`; only body.1 was listed."""
    from ptool.core.prune import PruneOptions, prune_checkpoint

    first, second = tmp_path / "o1.pt", tmp_path / "o2.pt"
    common = {"amount": 0.5, "evaluate": False, "bench_runs": 1}
    prune_checkpoint(cnn_ckpt, PruneOptions(only=r"body\.0", output=str(first), **common))
    prune_checkpoint(
        first,
        PruneOptions(only=r"body\.1", output=str(second), make_permanent=not keep_masks, **common),
    )
    state = torch.load(second, weights_only=True)["model_state_dict"]
    pruning = inspect(second, InspectOptions())["pruning"]
    assert pruning["source"] == ("mask and weights" if keep_masks else "weights")
    assert pruning["recipe"]["previous"]["layers"] == ["body.0.conv"]
    oracle = {
        "body.0.conv.weight": state["body.0.conv.weight"],
        "body.1.conv.weight": state[
            "body.1.conv.weight_mask" if keep_masks else "body.1.conv.weight"
        ],
    }
    assert [(layer["name"], layer["zeros"]) for layer in pruning["layers"]] == [
        (name, int((t == 0).sum())) for name, t in oracle.items()
    ]
    assert pruning["sparsity"] == 0.5


@pytest.mark.parametrize("dtype", [torch.quint4x2, torch.quint2x4])
def test_sub_byte_quantized_tensors_count_packed_bytes(tmp_path, dtype):
    """A 4-bit EmbeddingBag's weight packs two values a byte: the view check read one a byte
    and called the file corrupt (32 bytes needed of 16)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        packed = {
            f"w{n}": torch.quantize_per_tensor(torch.rand(4, n), 0.1, 0, dtype) for n in (7, 8)
        }
    torch.save(packed, tmp_path / "packed.pt")
    torch.load(tmp_path / "packed.pt", weights_only=True)  # the oracle reads it
    rows = {r["name"]: r for r in inspect(tmp_path / "packed.pt", InspectOptions())["tensors"]}
    for name, tensor in packed.items():
        assert rows[name]["bytes"] == tensor.untyped_storage().nbytes()
