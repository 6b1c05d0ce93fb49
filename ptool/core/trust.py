"""Whether ptool may import and run code that a checkpoint names (its `module:function`
model): only on the user's word, `--trust-code` for one command or PTOOL_TRUST_CODE=1 for a
shell. Torch-free: the command-line option sets it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

TRUST_CODE_ENV = "PTOOL_TRUST_CODE"
_trusted: ContextVar[bool] = ContextVar("ptool_trust_code", default=False)


def code_trusted() -> bool:
    """Within `trusting_code()`, or with PTOOL_TRUST_CODE=1 (exactly: a gate reads no other
    spelling as yes)."""
    return _trusted.get() or os.environ.get(TRUST_CODE_ENV) == "1"


def is_factory(spec: str) -> bool:
    """`module.path:function`: the user's own code, which ptool imports to build the model."""
    return ":" in spec and not spec.startswith("torchvision:")


def trust_flag(model: Any) -> str:
    """What a hint's command that continues a run adds for the user's own model code (the
    run's `model`): its rebuild imports that code again."""
    return " --trust-code" if isinstance(model, str) and is_factory(model) else ""


@contextlib.contextmanager
def trusting_code() -> Iterator[None]:
    """A checkpoint's model code may run inside (what --trust-code sets for its command; the
    Python API's way to say it for a block)."""
    token = _trusted.set(True)
    try:
        yield
    finally:
        _trusted.reset(token)
