"""The one object every command writes through.

Results go to stdout (a rich rendering, or one JSON document with `--json`); hints,
warnings and progress go to stderr, and `--quiet` silences everything but results.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console, RenderableType
from rich.markup import escape

from ptool.core.plain_json import dumps


def _pipe_width() -> int | None:
    """Unbounded tables and lines when stdout is a pipe or a file (rich would wrap them at 80
    columns and split tensor names over lines that grep then misses); COLUMNS still wins, and a
    terminal keeps its own width."""
    import os

    if sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit():
        return None
    return 10_000


def stdout_closed() -> bool:
    """Whether stdout's reader went away (`ptool ... | head -1`): the write end of a pipe
    whose read end is closed polls as an error. Without poll (Windows), assume it did."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, ValueError, OSError):
        return True


def silence_stdout() -> None:
    """Point stdout at the null device, so the flush at exit finds no closed pipe to fail on
    (the recipe of Python's signal docs, 'Note on SIGPIPE')."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, ValueError, OSError):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until exit, like stdout
    finally:
        os.close(devnull)


class Output:
    """Human, JSON or quiet output, chosen once per command."""

    def __init__(self, *, json: bool = False, quiet: bool = False):
        self.json = json
        self.quiet = quiet
        width = _pipe_width()
        self.piped = width is not None
        self.out = Console(soft_wrap=False, highlight=False, width=width)
        self.err = Console(stderr=True, highlight=False)

    def result(self, data: Any, render: Callable[[], RenderableType | None] | None = None) -> None:
        """The command's result: `data` as JSON in JSON mode, else what `render` builds.

        A `str` is written verbatim: plain-text results (YAML, CSV) are data for other tools,
        which rich would wrap at the console width and read `[...]` in as style tags.
        """
        if self.json:
            sys.stdout.write(dumps(data) + "\n")
            sys.stdout.flush()
        elif render is not None:
            renderable = render()
            if isinstance(renderable, str):
                sys.stdout.write(renderable.rstrip("\n") + "\n")
                sys.stdout.flush()
            elif renderable is not None:
                self._print(renderable)

    def stopped_run(self, exc: BaseException) -> None:
        """--json: a diverged or interrupted training run's summary.json (its `status` says
        why), before its error: train's, and the fine-tunes of prune and quantize qat."""
        from ptool.core.rundir import speaks_for_the_job

        stopped = getattr(exc, "summary", None)
        if stopped is not None and self.json and speaks_for_the_job():
            self.result(stopped.to_dict())

    def written_report(
        self, job: Callable[[], dict[str, Any]], view: Callable[[dict[str, Any]], RenderableType]
    ) -> None:
        """The report of a job that writes a checkpoint (quantize, prune): with --json the
        written file is named on stderr (the view names it otherwise), and a fine-tune's stop
        prints its summary first, as train's does."""
        try:
            report = job()
        except BaseException as exc:
            self.stopped_run(exc)
            raise
        if self.json:
            self.info(f"written: {escape(report['output'])}")
        self.result(report, lambda: view(report))

    def json_line(self, data: Any) -> None:
        """One JSON line on stdout (for commands that stream results)."""
        sys.stdout.write(dumps(data, indent=None) + "\n")
        sys.stdout.flush()

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """Human-readable result text on stdout (never in JSON mode)."""
        if not self.json:
            self._print(*objects, **kwargs)

    def _print(self, *objects: Any, **kwargs: Any) -> None:
        """Rich output; in a pipe or a file (whatever COLUMNS says) without the padding rich
        adds to fill a table's columns (a long value in one row would pad every other row to
        its width)."""
        if sys.stdout.isatty():
            self.out.print(*objects, **kwargs)
            return
        with self.out.capture() as captured:
            self.out.print(*objects, **kwargs)
        sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
        sys.stdout.flush()

    def info(self, message: RenderableType) -> None:
        if not self.quiet:
            self.err.print(message)

    def log(self, line: str) -> None:
        """A progress line from the core (an epoch, a step) on stderr: plain text, never
        wrapped, silent with --quiet."""
        if not self.quiet:
            self.err.print(escape(line), soft_wrap=True)

    def warn(self, message: str) -> None:
        """A plain-text warning (paths in it are not rich markup) on stderr."""
        if not self.quiet:
            self.err.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)
