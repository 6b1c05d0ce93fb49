"""Checkpoint files for the inspect-checkpoint tests (helpers, no tests): ptool's own, other
tools', malicious ones."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from ptool.core.checkpoint import meta
from ptool.core.config import TrainConfig
from ptool.core.runtime import capture_rng_state


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def trained_parts(
    model: nn.Module,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """An AdamW with two parameter groups and state, and its StepLR, after one step."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=0.01, weight_decay=0.05
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    model(torch.randn(4, 6)).sum().backward()
    opt.step()
    sched.step()
    return opt, sched


def ptool_checkpoint(path: Path) -> dict:
    """A checkpoint with every key of DESIGN.md's format v1, as the engine writes it."""
    model = small_model()
    opt, sched = trained_parts(model)
    config = TrainConfig(model="mlp", data="digits", optimizer="adamw", lr=0.01, epochs=5)
    ckpt = {
        "format": "ptool.checkpoint",
        "format_version": 1,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "scheduler_state_dict": {
            "interval": "epoch",
            "steps": 1,
            "scheduler": sched.state_dict(),
            "plateau": None,
        },
        "scaler_state_dict": {},
        "epoch": 3,
        "global_step": 84,
        "batch_in_epoch": 0,
        "loss": 0.4213,
        "metrics": {"train/loss": 0.4213, "val/loss": 0.5, "val/accuracy": 0.875},
        "best": {"monitor": "val/loss", "mode": "min", "value": 0.48, "epoch": 2},
        "config": config.to_dict(),
        "data_info": {
            "task": "classification",
            "input_shape": [6],
            "num_outputs": 3,
            "num_classes": 3,
            "class_names": None,
            "mean": None,
            "std": None,
            "image_size": None,
            "train_size": 100,
            "val_size": 20,
        },
        "rng_state": capture_rng_state(),
        "callbacks": {"train_state": {"epoch": 3}},
        "meta": meta(),
    }
    torch.save(ckpt, path)
    return ckpt


class Payload:
    """Unpickling this runs `func(arg)`: the attack the reader must never let happen."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def crafted_pickle(module: str, name: str, arg: str, *, opcode: str) -> bytes:
    """A protocol-4 pickle calling module.name(arg), built with GLOBAL or STACK_GLOBAL."""

    def unicode(text: str) -> bytes:
        data = text.encode()
        return b"X" + struct.pack("<I", len(data)) + data

    if opcode == "GLOBAL":
        head = b"c" + f"{module}\n{name}\n".encode()
    else:
        head = unicode(module) + unicode(name) + b"\x93"  # STACK_GLOBAL
    return b"\x80\x04" + head + unicode(arg) + b"\x85R."  # TUPLE1, REDUCE, STOP


def in_torch_zip(pickle_bytes: bytes, path: Path) -> None:
    """Lay a pickle out as torch.save does: <archive>/data.pkl, version, byteorder."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")


def malicious_pickles(sentinel: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (pickle bytes, the global it asks for); each touches `sentinel` if run."""
    command = f"touch {sentinel}"
    code = f"open({str(sentinel)!r}, 'w').close()"
    system = f"{os.system.__module__}.system"  # posix.system on Linux
    return {
        "reduce-os.system-p2": (pickle.dumps(Payload(os.system, command), protocol=2), system),
        "reduce-os.system-p4": (pickle.dumps(Payload(os.system, command), protocol=4), system),
        "reduce-exec-p2": (pickle.dumps(Payload(exec, code), protocol=2), "builtins.exec"),
        "GLOBAL-exec": (crafted_pickle("builtins", "exec", code, opcode="GLOBAL"), "builtins.exec"),
        "STACK_GLOBAL-exec": (
            crafted_pickle("builtins", "exec", code, opcode="STACK_GLOBAL"),
            "builtins.exec",
        ),
        "STACK_GLOBAL-os.system": (
            crafted_pickle("os", "system", command, opcode="STACK_GLOBAL"),
            "os.system",
        ),
    }


def torch_saved_with_payload(sentinel: Path, path: Path, protocol: int) -> None:
    """A real torch.save zip whose dict holds a tensor and a payload."""
    evil = Payload(os.system, f"touch {sentinel}")
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2), "evil": evil}, buffer, pickle_protocol=protocol)
    path.write_bytes(buffer.getvalue())


def safetensors_file(path: Path, header: dict, data: bytes) -> Path:
    """A safetensors file written by hand (8-byte little-endian header length, JSON header,
    tensor bytes), so the header can be anything, valid or not."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


class StorageRef:
    """A storage as torch.save names it in data.pkl: ('storage', type, key, 'cpu', numel)."""

    def __init__(self, key: str, numel: int, storage_type: type = torch.FloatStorage):
        self.key, self.numel, self.storage_type = key, numel, storage_type


class View:
    """Pickles as torch's own `_rebuild_tensor_v2` over a storage, with any size, stride and
    offset: what a crafted file can claim."""

    def __init__(self, storage: StorageRef, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, tuple(size), tuple(stride), False, OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class _StoragePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


def crafted_torch_zip(path: Path, obj, storages: dict[str, bytes]) -> Path:
    """A torch.save zip of `obj` (View and StorageRef as torch writes tensors and storages)
    with the given bytes as archive/data/<key>."""
    buffer = io.BytesIO()
    _StoragePickler(buffer, protocol=2).dump(obj)
    in_torch_zip(buffer.getvalue(), path)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_STORED) as z:
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
    return path


def pruned_with_mask_view(path: Path, size: tuple, stride: tuple, offset: int = 0) -> Path:
    """The audit's file: a pruned layer whose mask claims `size`, `stride` and `offset` over a
    storage of 4 float32 (0, 1, 0, 1)."""
    weight, mask = StorageRef("0", 4), StorageRef("1", 4)
    state = OrderedDict(
        [
            ("fc.weight_orig", View(weight, 0, (2, 2), (2, 1))),
            ("fc.weight_mask", View(mask, offset, size, stride)),
        ]
    )
    values = struct.pack("<4f", 0, 1, 0, 1)
    return crafted_torch_zip(path, state, {"0": values, "1": values})
