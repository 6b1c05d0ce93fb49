"""Every ptool command's class: start-up without pydantic, and flags without `<bool>`.

Typer 0.29 builds a pydantic TypeAdapter for each option the first time it processes a value,
even for the --help flag, and importing pydantic takes longer than importing Typer itself.
String and bool options get Typer's own pass-through coercion instead (the value already has
the right type), so `ptool --help` and `ptool convcalc` start in about Typer's import time.
"""

from __future__ import annotations

import typer
from typer.core import TyperCommand, TyperGroup

try:  # Typer internals: without them Typer's own coercion runs, only slower
    from typer._coercion import PassThroughRuntimeParam
except ImportError:  # pragma: no cover - another Typer minor version
    PassThroughRuntimeParam = None

PLAIN = (str, bool)


# Help in a pipe or a file: rich's 80 columns cut long flag names to `--no-persistent-wo…`,
# which `ptool train --help | grep` then cannot find; wider, every one fits.
PIPED_HELP_WIDTH = 160


class PlainParams:
    """Mixin for a Typer command or group class: str/bool options skip pydantic, flags show
    no `<bool>` in help (Typer 0.29 writes `--quiet -q <bool>`, which reads as if
    `--quiet true` were how to write it), and help in a pipe is PIPED_HELP_WIDTH wide."""

    def format_help(self, ctx, formatter):
        import os
        import sys

        import typer.rich_utils

        width = typer.rich_utils.MAX_WIDTH
        if not (sys.stdout.isatty() or os.environ.get("COLUMNS") or width):
            typer.rich_utils.MAX_WIDTH = PIPED_HELP_WIDTH
        try:
            return super().format_help(ctx, formatter)
        finally:  # errors and tracebacks after it keep their own width
            typer.rich_utils.MAX_WIDTH = width

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        if PassThroughRuntimeParam is not None:
            for param in params:
                descriptor = getattr(param, "type_descriptor", None)
                plain = descriptor is not None and descriptor.annotation in PLAIN
                if plain and getattr(param, "_runtime_param", None) is None:
                    param._runtime_param = PassThroughRuntimeParam(
                        parameter_info=descriptor.parameter_info, annotation=descriptor.annotation
                    )
        return params


class PlainCommand(PlainParams, TyperCommand):
    """A ptool command (PlainTyper makes every command one)."""


class PlainGroup(PlainParams, TyperGroup):
    """A ptool command group (`quantize`)."""


class PlainTyper(typer.Typer):
    """A Typer app whose commands are PlainCommands unless told otherwise."""

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or PlainCommand, **kwargs)
