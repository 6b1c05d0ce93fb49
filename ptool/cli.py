"""The `ptool` root: registers the subcommands. Imports nothing heavy (no torch)."""

from __future__ import annotations

import os
import sys
from importlib import metadata
from typing import Annotated

import typer

from ptool import __version__
from ptool.ui.errors import DEBUG_ENV, debug_enabled, report

app = typer.Typer(
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
    "eval",
    "predict",
    "quantize",
    "prune",
    "inspect-checkpoint",
    "lr-plot",
)


def _register() -> None:
    import importlib

    for name in COMMANDS:
        importlib.import_module(f"ptool.commands.{name.replace('-', '_')}").register(app)


_register()


def main() -> None:
    """Console-script entry point: known failures become one line and an exit code."""
    try:
        app()
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into messages
        if debug_enabled():
            raise
        sys.exit(report(exc))
