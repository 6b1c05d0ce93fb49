"""The run directory: where a run's files go, and the config/summary files in it (no torch).

Layout: config.yaml (the resolved config; `ptool train --config runs/NAME/config.yaml` reruns
it), last.pt, best.pt, best-epochN.pt, epoch-N.pt, summary.json, tensorboard/, and
.ptool.lock while a process trains there.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from shlex import quote
from typing import IO, Any

from ptool.core import plain_json
from ptool.core.errors import UsageError
from ptool.core.trust import trust_flag

CONFIG_NAME = "config.yaml"
SUMMARY_NAME = "summary.json"
LOCK_NAME = ".ptool.lock"


def speaks_for_the_job() -> bool:
    """A lone process, or rank 0 of a torchrun job (RANK is set before any process group
    exists): the one that prints for the job and claims its run directory. A RANK left in the
    environment of a lone process (WORLD_SIZE unset or 1) does not silence it."""
    return os.environ.get("RANK", "0") == "0" or job_size() <= 1


def job_size() -> int:
    """torchrun's WORLD_SIZE; 1 without one (or an unreadable one, which training refuses)."""
    value = os.environ.get("WORLD_SIZE", "1")
    return int(value) if value.isdigit() else 1


def default_run_dir(root: str | Path = "runs") -> Path:
    """runs/<YYYYmmdd-HHMMSS>, with -2, -3... when that name is taken."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = Path(root) / stamp
    n = 2
    while candidate.exists():
        candidate = Path(root) / f"{stamp}-{n}"
        n += 1
    return candidate


def claim_default_run_dir(root: str | Path = "runs") -> Path:
    """`default_run_dir`, created here without `exist_ok`: two runs started in the same second
    (a shell loop's `&`) take <time> and <time>-2 instead of the same folder."""
    Path(root).mkdir(parents=True, exist_ok=True)
    while True:
        candidate = default_run_dir(root)
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:  # another process took it since the look
            continue


def prepare_run_dir(path: str | Path) -> Path:
    """Create the directory and prove it is writable, before any training starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        _probe(path)
    except OSError as exc:
        raise unwritable(path, exc) from None
    return path


def _probe(folder: Path) -> None:
    """Create and remove a file in `folder`, or raise its OSError: os.access lets root through
    on a read-only mount, /sys or /proc. One exclusive create (tempfile's retries on a denied
    name can run for hours on Windows); a remove that fails leaves the probe, not an error."""
    probe = folder / f".ptool-probe-{secrets.token_hex(6)}"
    os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    with contextlib.suppress(OSError):
        probe.unlink()


def check_output_folder(path: Path, flag: str) -> None:
    """Refuse, before any work, an output file whose folder cannot hold it: a file where a
    folder should be, or one this user cannot write in. Missing folders are fine: they are
    created when the file is written."""
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{flag}: {folder} is a file, not a folder")
    try:
        _probe(folder)
    except OSError:
        raise UsageError(
            f"{flag}: cannot write in {folder}", hint="choose a path you can write to"
        ) from None


def unwritable(path: Path, exc: OSError) -> UsageError:
    return UsageError(
        f"cannot write to --out {path}: {exc.strerror or type(exc).__name__}",
        hint="choose a writable directory with --out",
    )


CHECKPOINT_PATTERNS = ("last.pt", "best.pt", "epoch-*.pt", "best-epoch*.pt")


def run_checkpoints(path: str | Path, *, same_run: Callable[[Path], bool] | None = None) -> str:
    """The run checkpoints in `path` (but those `same_run` claims), listed for a message;
    empty when there are none."""
    found = sorted(
        p.name
        for p in {p for pattern in CHECKPOINT_PATTERNS for p in Path(path).glob(pattern)}
        if same_run is None or not same_run(p)
    )
    return ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")


def resume_command(world_size: int, command: str = "ptool resume") -> str:
    """The command that continues a run of `world_size` processes: under torchrun when > 1."""
    if world_size > 1:
        return f"torchrun --nproc_per_node {world_size} -m {command}"
    return command


def longer(epochs: int) -> int:
    """The --epochs a hint suggests to extend a finished run: half as long again."""
    return epochs + max(1, epochs // 2)


def continue_command(run_dir: str | Path) -> str:
    """The command that continues the run in `run_dir`, read from its last.pt's metadata (no
    tensor is read): a QAT run's own, under torchrun for a multi-process run, with a longer
    --epochs for a run that has finished its epochs."""
    from ptool.core.errors import PtoolError
    from ptool.core.inspect.reader import read

    try:
        ckpt = read(Path(run_dir) / "last.pt").obj
    except (PtoolError, OSError):  # not a checkpoint, or unreadable
        return f"ptool resume {quote(str(run_dir))}"
    ckpt = ckpt if isinstance(ckpt, dict) else {}
    qat = (ckpt.get("quantization") or {}).get("converted") is False
    world = ((ckpt.get("rng_state") or {}).get("data_order") or {}).get("world_size", 1)
    command = resume_command(world, "ptool quantize qat --resume" if qat else "ptool resume")
    config = ckpt.get("config") or {}
    done, planned = ckpt.get("epoch"), config.get("epochs")
    command = f"{command} {quote(str(run_dir))}{trust_flag(config.get('model'))}"
    if isinstance(done, int) and isinstance(planned, int) and done >= planned:
        return f"{command} --epochs {longer(done)}"
    return command


def refuse_other_run(path: str | Path) -> None:
    """A new run (or a resume into --out DIR) must not replace another run's checkpoints:
    refuse a directory that holds some, before anything is written."""
    found = run_checkpoints(path)
    if found:
        raise UsageError(
            f"--out {path} holds another run's checkpoints ({found})",
            hint=f"continue that run with: {continue_command(path)}; or choose another --out",
        )


# The descriptors of this process's RunDirLocks, which a forked child lets go of.
_LOCK_FDS: set[int] = set()


def _let_go_of_locks_in_child() -> None:
    """A forked child (a DataLoader worker) shares the lock's open file, so it held the lock
    after a kill -9 of its parent until it noticed, about 5 s later, and a resume at once was
    refused. Its copies now point at the null device (the numbers stay valid, so nothing
    else's file is closed by mistake)."""
    if not _LOCK_FDS:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in _LOCK_FDS:
        os.dup2(devnull, fd, inheritable=False)
    os.close(devnull)
    _LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no lock either
    os.register_at_fork(after_in_child=_let_go_of_locks_in_child)


class RunDirLock:
    """An exclusive `flock` on <run dir>/.ptool.lock while one process trains there: a second
    run or resume into the folder is refused even before the first one's first checkpoint.
    The kernel drops the lock when its process ends, kill -9 included, so a stale file never
    blocks; forked children do not keep it. (No `fcntl` on Windows: no lock there.)"""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_NAME
        self.handle = None
        try:
            import fcntl
        except ImportError:
            return
        while self.handle is None:
            try:
                handle = self.path.open("a+")
            except OSError as exc:  # a read-only copy of a run: resume it elsewhere with --out
                raise unwritable(run_dir, exc) from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip()
                handle.close()
                raise UsageError(
                    f"--out {run_dir} is in use by another ptool process"
                    + (f" (pid {owner})" if owner else ""),
                    hint="wait for it to finish, or choose another --out",
                ) from None
            except OSError:  # a file system without locks (some NFS mounts): none, as on Windows
                handle.close()
                self.path.unlink(missing_ok=True)
                return
            try:  # the file a releasing process unlinked is no lock: take the new one
                same = os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                handle.truncate(0)
                handle.write(f"{os.getpid()}\n")
                handle.flush()
                self.handle = handle
                _LOCK_FDS.add(handle.fileno())
            else:
                handle.close()

    def release(self) -> None:
        """Unlink the file while still holding it, then let go: the folder is left as it was."""
        if self.handle is not None:
            self.path.unlink(missing_ok=True)
            _LOCK_FDS.discard(self.handle.fileno())
            self.handle.close()
            self.handle = None


def config_yaml(values: dict[str, Any]) -> str:
    """The config as YAML, flat keys in field order: exactly what `--config` reads back."""
    import yaml

    return yaml.safe_dump(values, sort_keys=False, default_flow_style=None)


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (its entry, not only the file's bytes)."""
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Write `path` through a temporary file beside it, fsynced, then `os.replace`d over it:
    a crash at any moment leaves the old file or the new one, never a torn one, and a failed
    write removes the temporary file and leaves the old one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # gone already after the replace
            tmp.unlink()
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> Path:
    with atomic_write(path, "w") as f:
        f.write(text)
    return path


def write_config(run_dir: Path, values: dict[str, Any]) -> Path:
    return write_text_atomic(run_dir / CONFIG_NAME, config_yaml(values))


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    text = plain_json.dumps(summary) + "\n"
    return write_text_atomic(run_dir / SUMMARY_NAME, text)
