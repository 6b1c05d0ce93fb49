"""Ctrl-C and SIGTERM during training: finish the step, save last.pt, stop; twice aborts.

The engine checks `StopRequest.signum` after every optimizer step, so the checkpoint it then
writes is a clean mid-epoch one that resumes exactly. A second signal exits at once: every
checkpoint is written to a temporary file and renamed, so the last one on disk stays whole.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from ptool.core.errors import PtoolError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(PtoolError):
    """The run stopped on a signal after saving; exit 128 + the signal number (130, 143)."""

    summary: Any = None  # the stopped run's summary.json (a RunSummary), for `--json`

    def __init__(self, signum: int, message: str, hint: str | None = None):
        super().__init__(message, hint)
        self.exit_code = 128 + signum


class StopRequest:
    """Installs the handlers for the duration of a `with` block (main thread only)."""

    def __init__(self, log: Callable[[str], None], *, install: bool = True):
        self.log = log
        self.install = install and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if self.install:
            for signum in SIGNALS:
                # An ignored signal stays ignored (a shell's background job ignores Ctrl-C),
                # as Python itself does for SIGINT.
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, _frame: object) -> None:
        if self.signum is not None:
            os.write(2, b"\naborted; the checkpoints on disk are intact\n")
            os._exit(128 + signum)
        self.signum = signum
        again = "press Ctrl-C again" if signum == signal.SIGINT else "send it again"
        self.log(
            f"{signal.Signals(signum).name}: finishing the current step and saving last.pt "
            f"({again} to abort at once)"
        )
