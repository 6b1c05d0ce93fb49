"""Errors that the engine raises on purpose; the CLI turns them into one-line messages."""

from __future__ import annotations


class PtoolError(Exception):
    """A failure of the job itself (bad checkpoint, diverged run): exit code 1."""

    exit_code = 1
    # The same on every rank of a torchrun job (decided on values all ranks share): rank 0
    # alone says it. Other failures may be one rank's own and name their rank.
    job_wide = False

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class CodeRefused(PtoolError):
    """A file refused for the code it would run (a pickled callable, a model factory): the
    same verdict on every rank of a torchrun job, said once."""

    job_wide = True


class UsageError(PtoolError):
    """Bad input from the user (flag value, impossible geometry, unknown name): exit code 2."""

    exit_code = 2
    job_wide = True


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> UsageError:
    """The error for a name that is not in a registry, listing the valid names."""
    import difflib

    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"did you mean {close[0]!r}?" if close else None
    return UsageError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}", hint=hint)


def first_line(exc: BaseException) -> str:
    """An exception's first non-blank message line (torch's errors often run to a dozen),
    else its type's name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`1 epoch`, `3 epochs`, `2 classes`: a number and its noun, for messages."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
