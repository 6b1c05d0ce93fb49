"""The `ptool` root: registers the subcommands. Imports nothing heavy (no torch)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Annotated

import typer

from ptool import __version__
from ptool.commands._plain_params import PlainGroup, PlainTyper
from ptool.ui.errors import DEBUG_ENV, debug_enabled, report


class _LazyGroup(PlainGroup):
    """Imports and builds a subcommand only when it runs or help lists it, so `ptool convcalc`
    never pays for the other commands' modules and their hundreds of options."""

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, cmd_name: str):
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            import importlib

            holder = PlainTyper(rich_markup_mode=self.rich_markup_mode)
            module = importlib.import_module(f"ptool.commands.{cmd_name.replace('-', '_')}")
            module.register(holder)
            command = typer.main.get_group(holder).commands[cmd_name]
            self.commands[cmd_name] = _reflowed(command)
        return self.commands.get(cmd_name)

    def invoke(self, ctx):
        """A reader that closed stdout early (`ptool predict ... | head -1`) wants no more:
        stop quietly with exit 0 (Typer would exit 1 without a word)."""
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            from ptool.ui.output import silence_stdout, stdout_closed

            if not stdout_closed():
                raise
            silence_stdout()
            raise typer.Exit(0) from None

    def resolve_command(self, ctx, args):
        if args and args[0] not in COMMANDS:  # a typo: load its look-alikes for "Did you mean"
            import difflib

            for name in difflib.get_close_matches(args[0], COMMANDS):
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)


def _reflowed(command):
    """Join the single line breaks of a command's help (and its subcommands'): Typer's "rich"
    mode keeps them, so docstring paragraphs wrapped at 100 columns came out ragged at 80."""
    import inspect

    if command.help:
        paragraphs = inspect.cleandoc(command.help).split("\n\n")
        command.help = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    for subcommand in getattr(command, "commands", {}).values():
        _reflowed(subcommand)
    return command


app = typer.Typer(
    cls=_LazyGroup,
    name="ptool",
    help="A command-line toolbox for people who train PyTorch models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_line() -> str:
    """ptool's version, and torch's read from package metadata (importing torch takes seconds)."""
    from importlib import metadata

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    return f"ptool {__version__} (torch {torch_version}, Python {sys.version.split()[0]})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(_version_line())
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Show versions and exit."
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks (same as PTOOL_DEBUG=1).")
    ] = False,
) -> None:
    """A command-line toolbox for people who train PyTorch models."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


# Each module in ptool/commands/ has a `register(app)`; the order here is the order in --help.
COMMANDS: tuple[str, ...] = (
    "convcalc",
    "train",
    "resume",
    "eval",
    "predict",
    "quantize",
    "prune",
    "inspect-checkpoint",
    "lr-plot",
)


def main() -> None:
    """Console-script entry point: known failures, usage errors included, become one line and
    an exit code (Typer's standalone mode would draw usage errors in a box); with --debug, after
    the traceback."""
    interrupted = _watch_ctrl_c()
    _ignore_zero_columns()
    _usable_standard_streams()
    try:
        code = app(standalone_mode=False)
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into messages
        if debug_enabled():  # the traceback too, and the same exit code
            import traceback

            traceback.print_exc()
        if interrupted.is_set():
            sys.exit(130)  # as Typer exits on Ctrl-C, whatever error the interrupt then caused
        sys.exit(report(exc, command_path(sys.argv[1:])))
    sys.exit(code if isinstance(code, int) else 0)  # typer.Exit(code) comes back as its code


def _ignore_zero_columns() -> None:
    """COLUMNS=0 (set by some CI runners) made rich print every table, line and error 0
    characters wide, that is nothing: it means no width, as an unset COLUMNS does."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) == 0:
        del os.environ["COLUMNS"]


def _usable_standard_streams() -> None:
    """A job started with stdin, stdout or stderr closed (`2>&-`, some cron and daemon set-ups)
    gets the null device in their place: Python left the stream None (every command failed
    on it), and the next file opened would take its descriptor (a C++ warning written into a
    checkpoint). And results name paths as they are, on an ASCII stdout too (`\\xe9`, as
    stderr writes them), rather than failing once the work is done."""
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        try:
            os.fstat(fd)
        except OSError:  # closed: the lowest free descriptor is this one
            os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")  # not UTF-8's surrogateescape


def _watch_ctrl_c() -> threading.Event:
    """Remember a Ctrl-C, then raise KeyboardInterrupt as Python does. A Ctrl-C in the middle
    of torch's imports can be swallowed there and surface later as an odd error (a
    RecursionError, a module without an attribute): that is the interrupt, not a bug to report.
    A SIGINT that is ignored (a shell's background job) stays ignored."""
    pressed = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        pressed.set()
        signal.default_int_handler(signum, frame)

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_sigint)
    return pressed


def command_path(args: list[str]) -> str:
    """The command that `args` name ("ptool quantize static"), for errors whose parser context
    is gone: the words at the start of `args` that name a command or group."""
    command = typer.main.get_command(app)
    path = ["ptool"]
    for word in args:
        lookup = getattr(command, "get_command", None)  # groups only
        command = lookup(None, word) if lookup else None
        if command is None:
            break
        path.append(word)
    return " ".join(path)
