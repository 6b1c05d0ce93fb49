"""Checkpoint files: atomic writes, safe reads, and finding the right file.

Format version 1 (see DESIGN.md): a `torch.save`d dict of plain types and tensors only, so
`torch.load(weights_only=True)` reads it. Reading never runs code from the file.
"""

from __future__ import annotations

import contextlib
import errno
import pickle
import platform
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from ptool import __version__
from ptool.core.errors import CodeRefused, PtoolError, UsageError, first_line
from ptool.core.inspect.reader import UNSAFE_HINT, check_checkpoint_file
from ptool.core.notices import quiet_upstream_notices
from ptool.core.rundir import atomic_write, check_output_folder

FORMAT = "ptool.checkpoint"
FORMAT_VERSION = 1
# Where the command has no --unsafe-load: ptool writes plain types only (format version 1).
NOT_PTOOL_HINT = (
    "ptool's own checkpoints never need unpickling; `ptool inspect-checkpoint` shows what it holds"
)


def meta() -> dict[str, Any]:
    """The `meta` entry: who wrote the file, when, and on what."""
    return {
        "ptool_version": __version__,
        "torch_version": str(torch.__version__),  # TorchVersion would need unpickling
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


@contextlib.contextmanager
def _checkpoint_write(path: Path) -> Iterator[IO[bytes]]:
    """`rundir.atomic_write` (a crash leaves the old file or the new one, never a torn one);
    a failed write (full disk, no permission) is one line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(path) as f:
            yield f
    except (OSError, RuntimeError) as exc:
        # torch's zip writer reports a short write (a disk that fills up meanwhile) as its own
        # RuntimeError ("[enforce fail at inline_container.cc] . unexpected pos ...")
        short = isinstance(exc, RuntimeError) and "inline_container" in str(exc)
        if not (isinstance(exc, OSError) or short):
            raise
        free = 0
        with contextlib.suppress(OSError):  # the folder itself gone: the error says the rest
            free = shutil.disk_usage(path.parent).free
        limit = _file_size_limit()
        too_large = getattr(exc, "errno", None) == errno.EFBIG or short and free > (limit or 0)
        if limit is not None and too_large:
            reason = f"the file reached the file size limit (ulimit -f), {limit:,} bytes"
            hint = "raise the limit (ulimit -f unlimited), or save elsewhere"
        elif short:
            reason = f"the write stopped short, {free:,} bytes free on the device"
            hint = "free some disk space"
        elif exc.errno == errno.ENOSPC:
            reason, hint = "no space left on device", "free some disk space"
        else:
            reason, hint = exc.strerror or str(exc), "choose a path you can write to"
        previous = (
            "the previous checkpoint is untouched" if path.exists() else "nothing was written"
        )
        message = f"could not write checkpoint {path}: {reason}; {previous}"
        raise PtoolError(message, hint=hint) from exc


def _file_size_limit() -> int | None:
    """The process's file size limit in bytes (`ulimit -f`), None when there is none. Python
    ignores SIGXFSZ, so a write past it fails (torch's zip writer: a short write)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def save_derived(
    source: dict[str, Any],
    state: dict[str, Any],
    metrics: dict[str, float],
    path: str | Path,
    **recipes: Any,
) -> Path:
    """A checkpoint made from `source` (pruned, quantized): its config and data facts, the new
    weights and metrics, and the recipes that rebuild the model (`pruning=`, `quantization=`;
    None ones are left out)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_state_dict": state,
        "config": source["config"],
        "data_info": source["data_info"],
        "metrics": metrics,
        **{name: recipe for name, recipe in recipes.items() if recipe is not None},
        "meta": meta(),
    }
    return atomic_save(payload, path)


def atomic_save(
    obj: Any, path: str | Path, save: Callable[[Any, IO[bytes]], None] = torch.save
) -> Path:
    """`torch.save` (or `save`: torch.jit.save), atomically."""
    path = Path(path)
    with _checkpoint_write(path) as f:
        save(obj, f)
    return path


def atomic_copy(source: Path, target: Path) -> Path:
    """Copy a finished checkpoint under another name, atomically."""
    with _checkpoint_write(target) as f, open(source, "rb") as src:
        shutil.copyfileobj(src, f)
    return target


def check_output(path: Path, source: Path, flag: str) -> None:
    """Refuse, before any work, a derived file (`-o`, `--torchscript`) that would replace the
    input checkpoint or that names a directory: the job would run, then fail or destroy. An
    existing file is replaced only if it is one that prune or quantize write (a rerun), never
    a training checkpoint or a file ptool did not write."""
    if path.resolve() == source.resolve():
        raise UsageError(
            f"{flag} would overwrite the input checkpoint {source}", hint="choose another -o"
        )
    if path.is_dir():
        raise UsageError(
            f"{flag} names a directory: {path}", hint="give a file path, e.g. -o DIR/out.pt"
        )
    if path.exists() and not _is_derived(path):
        raise UsageError(
            f"{flag} would replace {path}, which is not a pruned or quantized checkpoint "
            "or a TorchScript archive ptool wrote",
            hint="choose another -o, or move that file away first",
        )
    check_output_folder(path, flag)


# The extra file `quantize --torchscript` puts in its archives (torch.jit.save's _extra_files):
# the recipe, and the mark that a rerun may replace the archive.
TORCHSCRIPT_TAG = "ptool.json"


def is_ptool_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(f"/extra/{TORCHSCRIPT_TAG}") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _is_derived(path: Path) -> bool:
    """What prune and quantize write: a pruned or quantized ptool checkpoint, no training
    state, or a TorchScript archive carrying ptool's tag."""
    from ptool.core.inspect.reader import read

    if is_ptool_torchscript(path):
        return True
    try:
        obj = read(path).obj  # the object tree only: no tensor is read
    except PtoolError:
        return False
    return (
        is_ptool_checkpoint(obj)
        and bool(obj.get("pruning") or obj.get("quantization"))
        and "optimizer_state_dict" not in obj
    )


def _refusal(path: Path, exc: Exception, hint: str) -> PtoolError:
    """Turn torch's long weights_only error into one line naming what the file asked for."""
    text = str(exc)
    asked = None
    for marker in (
        "Unsupported global: GLOBAL ",
        "unsupported GLOBAL ",
        "Unsupported operand",
        "Unsupported class ",
    ):
        if marker in text:
            asked = text.split(marker, 1)[1].split()[0].rstrip(".,")
            if marker == "Unsupported operand":
                asked = "an unsupported pickle opcode"
            break
    what = f"it asks for {asked}" if asked else "it needs arbitrary unpickling"
    return CodeRefused(f"refusing to load {path}: {what}", hint=hint)


def _utf8_encodable(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # `é` read as surrogates under an ASCII locale (LC_ALL=POSIX)
        return False
    return True


def load(
    path: str | Path,
    *,
    map_location: Any = "cpu",
    unsafe: bool = False,
    refusal_hint: str = UNSAFE_HINT,
) -> Any:
    """Load any torch checkpoint safely (`weights_only=True`), with one-line errors.

    A zip-format file is memory-mapped, so a big file is mapped, not copied into memory.
    `refusal_hint` follows a file that needs full unpickling (default: name --unsafe-load).
    """
    path = Path(path)
    check_checkpoint_file(path)
    from ptool.core.inspect.reader import data_pickle_name, sniff

    is_zip, kind = zipfile.is_zipfile(path), sniff(path)
    if kind == "zip" and not is_zip:  # a zip checkpoint cut short
        raise PtoolError(f"{path} is truncated or corrupt (its zip directory is missing)")
    if kind not in ("zip", "pickle"):  # torch.save writes a zip, or a binary pickle
        raise PtoolError(f"{path} is not a PyTorch checkpoint (not a torch.save file)")
    if is_zip:  # torch's own error for another zip: "[enforce fail at inline_container.cc ..."
        with zipfile.ZipFile(path) as archive:
            data_pickle_name(path, archive.namelist())
    # torch maps a file by a UTF-8 name: not one undecodable in the locale
    mmap = is_zip and _utf8_encodable(str(path))
    try:
        with quiet_upstream_notices():  # torch's rebuild of quantized tensors trips them
            if unsafe:
                return torch.load(path, map_location=map_location, weights_only=False)
            # frozenset builds a value like set, which torch allows: the listing reads it too
            with torch.serialization.safe_globals([frozenset]):
                return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        # a bad byte stream, not a request for code (a legacy file: any opcode it can't read)
        broken = ("invalid load key", "could not find MARK")
        broken += () if is_zip else ("Unsupported operand",)
        refused = "Weights only load failed" in text or "Unsupported" in text
        if refused and not any(marker in text for marker in broken):
            raise _refusal(path, exc, refusal_hint) from exc
        raise PtoolError(f"{path} is not a PyTorch checkpoint ({_reason(exc)})") from exc
    except EOFError as exc:
        raise PtoolError(f"{path} is truncated (unexpected end of file)") from exc
    except (KeyError, IndexError) as exc:  # torch's legacy reader on a pickle it did not write
        raise PtoolError(f"{path} is not a PyTorch checkpoint (a corrupt pickle)") from exc
    except AttributeError as exc:  # its legacy reader on the storage of a newer dtype (uint16)
        legacy = "torch's legacy (non-zip) reader cannot rebuild every dtype (uint16 to uint64, "
        legacy += "float8); torch.save's default zip format holds them"
        raise PtoolError(
            f"cannot read {path}: torch's reader failed ({first_line(exc)})",
            hint=None if is_zip else legacy,
        ) from exc
    except (RuntimeError, ValueError, zipfile.BadZipFile, OSError) as exc:
        message = first_line(exc)
        if "central directory" in message or "zip archive" in message:
            raise PtoolError(f"{path} is truncated or corrupt ({message})") from exc
        raise PtoolError(f"cannot read {path}: {message}") from exc


def _reason(exc: BaseException) -> str:
    """torch's own reason, without its advice to retry with weights_only=False."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        return text.split(marker, 1)[1].strip().splitlines()[0]
    return first_line(exc)


def is_ptool_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def load_checkpoint(
    path: str | Path,
    *,
    map_location: Any = "cpu",
    unsafe: bool = False,
    refusal_hint: str = NOT_PTOOL_HINT,
) -> dict:
    """Load a ptool checkpoint, refusing foreign files and files from a newer format.

    A command with --unsafe-load passes `refusal_hint=UNSAFE_HINT`."""
    ckpt = load(path, map_location=map_location, unsafe=unsafe, refusal_hint=refusal_hint)
    if not is_ptool_checkpoint(ckpt):
        raise PtoolError(
            f"{path} is not a ptool checkpoint (no format key)",
            hint="`ptool inspect-checkpoint` shows what it holds; "
            "`ptool train --init-from` takes the weights of any state dict",
        )
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PtoolError(
            f"{path} has checkpoint format version {version!r}; this ptool reads up to "
            f"{FORMAT_VERSION}",
            hint="upgrade ptool",
        )
    return ckpt


_NESTED_KEYS = ("model_state_dict", "state_dict", "model", "module", "net", "network", "ema")


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The model weights inside a plain state dict or another tool's checkpoint.

    Handles ptool, Lightning (`state_dict`, `model.` prefix), timm (`state_dict`),
    `{"model": ...}` layouts, DDP's `module.` prefix, and torch.nn.utils.prune's
    `weight_orig` / `weight_mask` pairs (the `weight` they stand for).
    """
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return _strip_prefix(_fold_pruning_masks(dict(obj)))
        for key in _NESTED_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return extract_state_dict(obj[key])
    raise PtoolError("found no model state dict in the checkpoint")


def _fold_pruning_masks(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`x_orig * x_mask` as `x`, what prune's forward hook computes (and prune.remove saves)."""
    for key in [k for k in state if k.endswith("_orig")]:
        name = key.removesuffix("_orig")
        if f"{name}_mask" in state:
            state[name] = state.pop(key) * state.pop(f"{name}_mask")
    return state


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "_orig_mod.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def newest(paths: list[Path]) -> Path | None:
    existing = [p for p in paths if p.is_file()]
    return max(existing, key=lambda p: p.stat().st_mtime) if existing else None


def find_default_checkpoint(name: str = "best.pt") -> Path:
    """The newest run's `best.pt` under `./runs`, for commands called without CKPT."""
    found = newest(list(Path("runs").glob(f"*/{name}")))
    if found is None:
        raise PtoolError(
            f"no checkpoint given and no runs/*/{name} found",
            hint="pass a checkpoint path, or run `ptool train` first",
        )
    return found


def newest_valid_checkpoint(run_dir: str | Path) -> Path:
    """The newest checkpoint in a run directory that loads (a torn or corrupt one is skipped).

    last.pt when it loads (best.pt and the epoch files are copies of an earlier one), else the
    valid file with the most optimizer steps: file times lie in a copied run directory, and a
    derived file (`best.int8.pt`, no steps) is not a training state.
    """
    run_dir = Path(run_dir)
    last = run_dir / "last.pt"
    with contextlib.suppress(PtoolError):
        load_checkpoint(last)
        return last
    valid: list[tuple[int, Path]] = []
    for candidate in sorted(run_dir.glob("*.pt")):
        if candidate == last or candidate.name.startswith("."):
            continue
        try:
            step = load_checkpoint(candidate).get("global_step")
        except PtoolError:
            continue
        valid.append((step if isinstance(step, int) else -1, candidate))
    if valid:
        return max(valid, key=lambda found: found[0])[1]
    raise PtoolError(f"no valid checkpoint in {run_dir}")
