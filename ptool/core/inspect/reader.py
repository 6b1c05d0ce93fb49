"""Open any checkpoint file and return its object tree with tensors as metadata.

Reads only indexes: the zip archive's central directory and `data.pkl` (torch.save), the pickle
stream up to the tensor bytes (legacy torch.save), or the JSON header (safetensors). Never
imports torch, never reads tensor bytes, never runs code from the file.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ptool.core.errors import PtoolError
from ptool.core.inspect import safetensors_header
from ptool.core.inspect.tree import unwalkable
from ptool.core.inspect.unpickler import (
    BadTensor,
    RefusedGlobal,
    Storage,
    legacy_storage,
    looks_like_module,
    unpickle,
    zip_storage,
)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the library's own limit
JSON_SPACE = b" \t\n\r"  # what JSON (and the library's serde_json) skips around a value
MAX_NESTING = 200  # containers in containers: checkpoints nest a few levels, configs a dozen
MAX_ITEMS = 10_000_000  # items the views walk: a state dict's tensors, an optimizer's state
# what zipfile raises for an entry it cannot read back: bad CRC or local header, cut deflate
# stream, an unsupported compression or an encrypted entry
ZIP_ERRORS = (zipfile.BadZipFile, EOFError, OSError, RuntimeError, zlib.error)
UNSAFE_HINT = "only if you trust the file, rerun with --unsafe-load: unpickling runs its code"


@dataclass
class RawCheckpoint:
    """A file's object tree (tensors as TensorMeta) and how it was stored."""

    path: Path
    container: str  # "torch-zip", "torch-legacy", "safetensors", "pickled-module"
    obj: Any
    file_bytes: int
    archive_version: int | None = None
    archive_prefix: str | None = None  # zip entries live under "<prefix>/data/<key>"
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors __metadata__
    module_class: str | None = None  # set when the file is a pickled nn.Module


class Refused(PtoolError):
    """The file's pickle asks for a global outside the allowlist; nothing of it was run."""

    def __init__(self, path: Path, global_name: str, message: str | None = None):
        super().__init__(
            message
            or f"refusing {path}: its pickle asks for {global_name}, which is not a tensor or "
            "a plain value (nothing was run)",
            hint=UNSAFE_HINT,
        )
        self.global_name = global_name


class ModuleRefused(Refused):
    """A whole pickled nn.Module: loading it means running the file's code."""

    def __init__(self, path: Path, class_name: str):
        super().__init__(
            path,
            class_name,
            f"{path} is a pickled nn.Module (class {class_name}), not a state dict; "
            "loading it runs code from the file",
        )


def _refused(path: Path, refused: RefusedGlobal, pickle_data: BinaryIO) -> Refused:
    if refused.name.startswith(("torch.nn.", "torch.ao.nn.")) or looks_like_module(pickle_data):
        return ModuleRefused(path, refused.name)
    return Refused(path, refused.name)


def _unpickle(path: Path, data: bytes | BinaryIO, persistent_load) -> Any:
    """One pickle from `data` (a stream: read on from where it stands), one-line errors."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    start = stream.tell()
    try:
        return unpickle(stream, persistent_load)
    except RefusedGlobal as refused:
        stream.seek(start)
        raise _refused(path, refused, stream) from None
    except BadTensor as exc:
        raise PtoolError(f"{path} is corrupt ({exc})") from None
    except EOFError:
        raise PtoolError(f"{path} is truncated (its pickle ends early)") from None
    except pickle.UnpicklingError as exc:
        if "truncated" not in str(exc):  # "pickle data was truncated": a cut, not corruption
            raise PtoolError(f"{path} is corrupt (bad pickle: {exc})") from None
        raise PtoolError(f"{path} is truncated (its pickle ends early)") from None
    except PtoolError:  # a storage the pickle names is missing: said already
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed pickle is one line
        raise PtoolError(f"{path} is corrupt (bad pickle: {exc})") from None


def sniff(path: Path) -> str | None:
    """The container a file's first bytes name: "zip" (torch.save), "pickle" (legacy
    torch.save, or any pickle), "safetensors" (a header size, then JSON), or None."""
    with open(path, "rb") as f:
        head = f.read(8)
        size = os.fstat(f.fileno()).st_size
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        fits = length <= min(MAX_SAFETENSORS_HEADER, size - 8)
        json_header = _json_object_follows(f, length if fits else 4096)
    # safetensors first: its header length may start with b"\x80" or b"PK" (a 128- or
    # 19,280-byte header), while a zip's or a pickle's first 8 bytes read as a huge length
    if json_header and fits:
        return "safetensors"
    if head.startswith(b"PK"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    return "safetensors" if json_header else None  # its reader names the bad header length


def _json_object_follows(f: io.BufferedIOBase, limit: int) -> bool:
    """Whether the next of `limit` bytes open a JSON object: `{` after any whitespace, which
    the safetensors library skips (its writer pads the header's end with spaces)."""
    while limit > 0:
        chunk = f.read(min(limit, 1 << 16))
        if not chunk:
            return False
        rest = chunk.lstrip(JSON_SPACE)
        if rest:
            return rest.startswith(b"{")
        limit -= len(chunk)
    return False


HINTED_FILES = 5  # a folder's checkpoints named in the hint: a run's last, best, epochs
FIRST_HINTED = {"last.pt": 0, "best.pt": 1}  # what resume and eval take by default


def check_checkpoint_file(path: Path) -> int:
    """The file's size, or a one-line PtoolError: missing, a folder (a run directory: its
    checkpoints named in the hint), not a regular file (a FIFO would be read as empty), or
    empty."""
    if not path.exists():
        raise PtoolError(f"no such checkpoint: {path}")
    if path.is_dir():
        # not quantize --torchscript's archives: code, which no ptool command loads
        inside = sorted(
            (p.name for p in path.glob("*.pt") if not p.name.endswith(".torchscript.pt")),
            key=lambda name: (FIRST_HINTED.get(name, len(FIRST_HINTED)), name),
        )
        shown = ", ".join(inside[:HINTED_FILES]) + (", ..." if len(inside) > HINTED_FILES else "")
        raise PtoolError(
            f"{path} is a directory, not a checkpoint file",
            hint=f"give one of its checkpoints: {shown}" if inside else None,
        )
    if not path.is_file():
        raise PtoolError(f"{path} is a pipe or a device, not a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise PtoolError(f"{path} is empty (0 bytes)")
    return size


def read(path: str | Path) -> RawCheckpoint:
    """Detect the format and read the object tree; one-line PtoolError for anything wrong."""
    path = Path(path)
    size = check_checkpoint_file(path)
    readers = {"zip": _read_zip, "pickle": _read_pickle_stream, "safetensors": _read_safetensors}
    kind = sniff(path)
    if kind is not None:
        raw = readers[kind](path, size)
        problem = unwalkable(raw.obj, MAX_NESTING, MAX_ITEMS)  # the views walk it recursively
        if problem:
            raise PtoolError(f"{path} is not supported ({problem})")
        return raw
    raise PtoolError(
        f"{path} is not a checkpoint (not a torch.save file, a pickle or a safetensors file)"
    )


def data_pickle_name(path: Path, names: list[str]) -> str:
    """The `<archive>/data.pkl` a torch.save zip holds, or a one-line PtoolError saying what
    the zip is instead: a TorchScript archive (`--torchscript` output: data.pkl beside its
    constants.pkl and code), or another zip."""
    if any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in names):
        raise PtoolError(
            f"{path} is a TorchScript archive, not a torch.save checkpoint",
            hint="load it with torch.jit.load",
        )
    pkl = next((n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")), None)
    if pkl is None:
        raise PtoolError(f"{path} is a zip archive without data.pkl, not a torch.save file")
    return pkl


def _read_zip(path: Path, size: int) -> RawCheckpoint:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PtoolError(f"{path} is truncated or corrupt ({exc})") from None
    with archive:
        entries = {info.filename: info for info in archive.infolist()}
        pkl = data_pickle_name(path, list(entries))
        prefix = pkl.split("/", 1)[0]
        try:
            data = archive.read(pkl)
            version = entries.get(f"{prefix}/version")
            text = archive.read(version) if version else None
        except ZIP_ERRORS as exc:
            raise PtoolError(f"{path} is corrupt ({exc})") from None
    try:
        archive_version = None if text is None else int(text)  # a number, as torch reads it
    except ValueError:
        raise PtoolError(f"{path} is corrupt (archive version {text[:20]!r})") from None

    def persistent_load(pid: tuple) -> Storage:
        storage = zip_storage(pid)
        entry = entries.get(f"{prefix}/data/{storage.key}")
        if entry is None or entry.file_size < storage.nbytes:
            raise PtoolError(f"{path} is corrupt (storage {storage.key} is missing or short)")
        return storage

    obj = _unpickle(path, data, persistent_load)
    return RawCheckpoint(path, "torch-zip", obj, size, archive_version, prefix)


def _read_pickle_stream(path: Path, size: int) -> RawCheckpoint:
    """Legacy torch.save (magic, protocol, sys_info, then the object) or a bare pickle, read
    from the file as the pickles go: they come before the storages' bytes, whatever their size."""
    with open(path, "rb") as stream:
        head = io.BytesIO(stream.read(64 * 1024 * 1024))  # a bare pickle is not read whole
        first = _unpickle(path, head, None)
        if first != LEGACY_MAGIC:
            raise PtoolError(f"{path} is a plain pickle, not a torch.save checkpoint")
        stream.seek(head.tell())  # the magic number's end
        try:
            unpickle(stream)  # protocol version
            unpickle(stream)  # sys_info: endianness and type sizes
        except Exception as exc:  # noqa: BLE001
            raise PtoolError(f"{path} is a corrupt legacy torch.save file ({exc})") from None
        storages: dict[str, Storage] = {}

        def collect(pid: tuple) -> Storage:
            storage = legacy_storage(pid)
            storages[storage.key] = storage
            return storage

        obj = _unpickle(path, stream, collect)
        # then the storage keys, and each storage's bytes in that order: an 8-byte element
        # count and the elements; a file cut inside them has every pickle whole: count bytes
        keys = _unpickle(path, stream, None)
        needed = stream.tell() + sum(
            8 + storage.nbytes
            for storage in map(storages.get, keys if isinstance(keys, list) else [])
            if storage is not None
        )
    if size < needed:
        raise PtoolError(f"{path} is truncated ({size:,} of {needed:,} bytes)")
    return RawCheckpoint(path, "torch-legacy", obj, size)


def _read_safetensors(path: Path, size: int) -> RawCheckpoint:
    """An 8-byte little-endian header length, then a JSON header naming every tensor."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > MAX_SAFETENSORS_HEADER:
            raise PtoolError(f"{path} is not a safetensors file (header length {length})")
        if 8 + length > size:
            raise PtoolError(f"{path} is truncated (safetensors header runs past the end)")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode())  # UTF-8, as the library reads it (bytes: also UTF-16)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise PtoolError(f"{path} is corrupt (bad safetensors header: {exc})") from None
    tensors, metadata = safetensors_header.parse(path, header, 8 + length, size - 8 - length)
    return RawCheckpoint(path, "safetensors", tensors, size, metadata=dict(metadata))
