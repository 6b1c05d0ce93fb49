"""One table from exception to message: a line saying what went wrong, a line saying what to do.

Tracebacks only with `--debug` or `PTOOL_DEBUG=1`.
"""

from __future__ import annotations

import errno
import os
import re
import sys

from ptool.core.errors import PtoolError

DEBUG_ENV = "PTOOL_DEBUG"
# A name too long, a file where a folder should be, a read-only disk, a link loop.
PATH_ERRORS = (errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.ELOOP)
_CPU_ALLOCATION = re.compile(r"DefaultCPUAllocator: .*you tried to allocate (\d+) bytes")


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0", "false", "False")


def describe(exc: BaseException, command_path: str = "ptool") -> tuple[str, str | None, int]:
    """(message, hint, exit code) for an exception that escaped a command. `command_path`
    names the command for a usage error that carries none (a missing option value)."""
    if isinstance(exc, PtoolError):
        return _raised_in_worker(exc), exc.hint, exc.exit_code
    if callable(getattr(exc, "format_message", None)) and isinstance(
        getattr(exc, "exit_code", None), int
    ):  # Typer's usage errors (its vendored Click's), recognised without importing internals
        _keep_close_suggestions(exc)
        ctx = getattr(exc, "ctx", None)
        path = ctx.command_path if ctx is not None else command_path
        return exc.format_message(), f"{path} --help shows the usage", exc.exit_code
    if isinstance(exc, FileNotFoundError):
        return f"no such file or directory: {exc.filename or exc}", None, 1
    if isinstance(exc, IsADirectoryError):
        return f"expected a file, got a directory: {exc.filename}", None, 1
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc}", "check the path's permissions", 1
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on device", "free some disk space, or write elsewhere", 1
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:  # Python ignores SIGXFSZ
        return (
            f"{exc.filename or 'a file'} reached the file size limit (ulimit -f)",
            "raise the limit (ulimit -f unlimited), or write elsewhere",
            1,
        )
    if isinstance(exc, OSError) and exc.errno in PATH_ERRORS and exc.filename is not None:
        # the file system's answer about a path: the user's to change, not a bug to report
        return f"{exc.strerror.lower()}: {exc.filename}", "check the path", 1
    if isinstance(exc, MemoryError):
        return "out of memory", "try a smaller --batch-size", 1
    asked = _CPU_ALLOCATION.search(str(exc)) if isinstance(exc, RuntimeError) else None
    if asked:  # torch's CPU allocator refused a tensor: a size, not a ptool bug
        return (
            f"out of memory: a tensor of {int(asked[1]):,} bytes could not be allocated",
            "try a smaller model or --batch-size",
            1,
        )
    if (
        type(exc).__name__ == "OutOfMemoryError"
    ):  # torch.cuda.OutOfMemoryError, without importing torch
        return "CUDA out of memory", "try a smaller --batch-size or --precision bf16", 1
    name = type(exc).__name__
    return (
        f"unexpected {name}: {_one_line(str(exc))}",
        "rerun with PTOOL_DEBUG=1 (or ptool --debug ...) for the traceback and report it",
        1,
    )


def _raised_in_worker(exc: PtoolError) -> str:
    """A ptool error as raised: a DataLoader worker's (an unreadable image) comes back with
    the worker's traceback in its message, whose last line is `module.Class: message`."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    return _one_line(text).removeprefix(f"{type(exc).__module__}.{type(exc).__qualname__}: ")


def _one_line(text: str) -> str:
    """The line that says what happened. A DataLoader worker's error carries the worker's
    traceback in its message: its last line is the original exception."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1] if "Original Traceback" in text else lines[0]


def _keep_close_suggestions(exc: BaseException) -> None:
    """Click suggests any option that shares a few letters (`--bogus`: "Possible options:
    --groups, --s"); keep only names close to the one typed, without their dashes."""
    from difflib import SequenceMatcher

    possibilities, typed = getattr(exc, "possibilities", None), getattr(exc, "option_name", "")
    if possibilities and isinstance(typed, str):
        exc.possibilities = [
            p
            for p in possibilities
            if SequenceMatcher(None, typed.lstrip("-"), p.lstrip("-")).ratio() >= 0.7
        ]


def report(exc: BaseException, command_path: str = "ptool") -> int:
    """Print the one-line message for `exc` on stderr and return the exit code."""
    from rich.console import Console
    from rich.markup import escape

    message, hint, code = describe(exc, command_path)
    if not message:  # a command run without arguments has printed its help
        return code
    from ptool.core.rundir import job_size, speaks_for_the_job

    if job_size() > 1:  # one process of a torchrun job
        job_wide = code == 2 or getattr(exc, "job_wide", False)  # Click's usage errors too
        if job_wide and not speaks_for_the_job():
            return code  # the same on every rank: rank 0 says it for the job
        if not job_wide:  # a failure may be one rank's own (its GPU's memory, its node's files)
            message = f"(rank {os.environ.get('RANK', '?')}) {message}"
    # soft_wrap: the message stays one line in a pipe or a CI log, whatever the width
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(f"[bold red]error:[/bold red] {escape(message)}")
    if hint:
        console.print(f"[dim]hint:[/dim] {escape(hint)}")
    sys.stderr.flush()
    return code
