"""Where and how a run executes: device, seeds, determinism, RNG snapshots and DDP.

Everything here is plain torch; `fit()` calls it once at the start of a run (and the RNG
helpers at every checkpoint), so a later resume can put every generator back exactly.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ptool.core.errors import UsageError


@dataclass
class Distributed:
    """This process's place in a torchrun job (world_size 1 when not under torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str) -> Distributed:
    """Join the process group torchrun set up (RANK/WORLD_SIZE/LOCAL_RANK in the environment).

    gloo on CPU, nccl on CUDA. A plain `ptool train` (no torchrun) returns world_size 1.
    """
    world_size = _environ_int("WORLD_SIZE", "1")
    if world_size <= 1:
        return Distributed()
    info = Distributed(
        rank=_environ_int("RANK", None),
        local_rank=_environ_int("LOCAL_RANK", "0"),
        world_size=world_size,
    )
    if not dist.is_initialized():
        on_cuda = device_spec != "cpu" and torch.cuda.is_available()
        if on_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if on_cuda else "gloo")
    return info


def _environ_int(name: str, default: str | None) -> int:
    """One of torchrun's variables; a stray or broken one (WORLD_SIZE=2 left in a shell) is
    a usage error rather than a crash."""
    value = os.environ.get(name, default)
    if value is None or not value.isdigit():
        raise UsageError(
            f"{name}={value or '(unset)'} in the environment: torchrun sets WORLD_SIZE, RANK "
            "and LOCAL_RANK together, as non-negative integers",
            hint="run under torchrun, or unset WORLD_SIZE for a single process",
        )
    return int(value)


def shutdown_distributed(info: Distributed, *, together: bool = False) -> None:
    """Leave the process group; `together` (every rank finished the run) waits for the others
    first, as PyTorch's own distributed tests do before destroy_process_group: ranks left at
    different moments (rank 0 still writing the run's last files) when a two-process CI job
    once aborted in its teardown ("terminate called without an active exception")."""
    if info.enabled and dist.is_initialized():
        if together:
            _wait_for_every_rank(info)
        dist.destroy_process_group()


def _wait_for_every_rank(info: Distributed) -> None:
    """A rank that failed at the very end (rank 0's disk full at the last checkpoint) leaves
    without waiting: the others' wait then fails or times out, which changes nothing of how
    they end. nccl is told its device (else torch warns that it guessed one)."""
    device_ids = [info.local_rank] if dist.get_backend() == "nccl" else None
    with contextlib.suppress(RuntimeError):  # DistBackendError: a peer that is gone
        dist.barrier(device_ids=device_ids, timeout=datetime.timedelta(seconds=60))


def resolve_device(spec: str, info: Distributed | None = None) -> torch.device:
    """auto -> cuda (this rank's GPU under DDP), else mps, else cpu; checks what was asked."""
    local_rank = info.local_rank if info is not None else 0
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank if info and info.enabled else 0)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(
            f"invalid --device {spec!r}; valid: auto, cpu, cuda, cuda:N, mps"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: no CUDA GPU is available", hint="use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank if info and info.enabled else 0)
        if device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise UsageError(f"--device {spec}: only {count} CUDA device(s) here")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: MPS is not available here", hint="use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"invalid --device {spec!r}; valid: auto, cpu, cuda, cuda:N, mps")
    return device


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> Any:
    """torch.autocast to --precision's dtype on `device` (a no-op context for fp32): the
    training step, validation and `ptool eval` run under the same one."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def from_main_rank(value: Any, info: Distributed) -> Any:
    """Rank 0's `value` (any picklable object) on every rank. `broadcast_object_list` picks the
    backend's device itself: nccl cannot broadcast a CPU tensor."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def pick_seed(seed: int | None, info: Distributed) -> int:
    """The run's seed: the given one, or a random one (the same on every rank) to record."""
    return seed if seed is not None else from_main_rank(secrets.randbelow(2**31), info)


def sum_dtype(device: torch.device) -> torch.dtype:
    """The dtype of running sums (losses, metric statistics): float64, except on MPS, which
    has none."""
    return torch.float32 if device.type == "mps" else torch.float64


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def set_deterministic(enabled: bool) -> None:
    """Deterministic algorithms (bit-identical reruns) or the fast defaults.

    `warn_only=True`: an op with no deterministic kernel warns instead of failing the run.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # it imports torch._inductor and torch._dynamo (about 2 s, before the data and model
    # checks can refuse a run): called only where it changes something
    if enabled or torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False


def epoch_order(
    size: int, *, seed: int, epoch: int, shuffle: bool, info: Distributed
) -> torch.Tensor:
    """This rank's sample order for `epoch` (0-based), recomputable from (seed, epoch) alone.

    One process: `randperm(size)` from a generator seeded with seed + epoch (arange without
    shuffle). Under DDP: the same global permutation through DistributedSampler, so rank r
    takes every world_size-th sample and the ranks' batches k together are the single-process
    batch k of world_size x batch_size samples.
    """
    if info.enabled:
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(
            range(size),  # type: ignore[arg-type]
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=shuffle,
            seed=seed,
        )
        sampler.set_epoch(epoch)
        return torch.tensor(list(sampler), dtype=torch.long)
    if not shuffle:
        return torch.arange(size)
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(size, generator=generator)


def capture_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every generator the run draws from, as tensors and plain Python values
    (weights_only-loadable): CUDA's of the run's `device` only. Every rank seeds and draws
    alike, so rank 0's GPU state is each rank's (its other GPUs' were never drawn from), and a
    machine with fewer GPUs can restore it."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": {
            "bit_generator": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Put back what `capture_rng_state` recorded; its CUDA state goes to `device`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["bit_generator"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if device is None or device.type != "cuda" or cuda is None:
        return
    if isinstance(cuda, list):  # older files: one state per GPU of the saving machine
        index = device.index if device.index is not None else torch.cuda.current_device()
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
