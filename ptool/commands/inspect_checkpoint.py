"""`ptool inspect-checkpoint`: what is inside a checkpoint, safely, fast, for humans and jq."""

from __future__ import annotations

from typing import Annotated

import typer

from ptool.commands._options import JsonOpt, QuietOpt, examples, refuse_empty

EXAMPLES = examples(
    "ptool inspect-checkpoint runs/mlp/last.pt",
    "ptool inspect-checkpoint model.safetensors --depth 2",
    "ptool inspect-checkpoint runs/cnn/best.pt --tree --filter 'conv'",
    "ptool inspect-checkpoint runs/mlp/best.pt --stats --json | jq '.stats[0]'",
    "ptool inspect-checkpoint runs/mlp/best.pt --diff runs/mlp/last.pt",
    "ptool inspect-checkpoint timm.pth.tar --key state_dict_ema",
    "ptool inspect-checkpoint runs/*/last.pt",
)


def inspect_checkpoint(
    files: Annotated[
        list[str],
        typer.Argument(
            metavar="FILE",
            callback=refuse_empty,
            help="Checkpoint files: ptool .pt, any torch.save state dict or nesting of one "
            "(Lightning, timm, pytorch_model.bin), .safetensors. Several: one line each.",
            show_default=False,
        ),
    ],
    depth: Annotated[
        int | None,
        typer.Option(
            "--depth",
            min=1,
            help="Group tensors by the first N dotted name components.",
            show_default=False,
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            help="List the tensors of this entry instead of the model's state dict: another "
            "state dict kept beside it (state_dict_ema), the optimizer's, a dotted path.",
            show_default=False,
        ),
    ] = None,
    tree: Annotated[
        bool, typer.Option("--tree", help="Show tensors as a tree of modules with subtotals.")
    ] = False,
    filter: Annotated[
        str | None,
        typer.Option(
            "--filter",
            callback=refuse_empty,
            help="Only tensors whose name matches this regex (searched).",
            show_default=False,
        ),
    ] = None,
    stats: Annotated[
        bool,
        typer.Option(
            "--stats",
            help="Per tensor: min/max/mean/std, zeros, NaN and Inf counts "
            "(reads the values, tensor by tensor; imports torch).",
        ),
    ] = False,
    diff: Annotated[
        str | None,
        typer.Option(
            "--diff",
            callback=refuse_empty,
            help="Compare with OTHER: added, removed, reshaped and changed "
            "tensors with the max absolute difference.",
            metavar="OTHER",
            show_default=False,
        ),
    ] = None,
    unsafe_load: Annotated[
        bool,
        typer.Option(
            "--unsafe-load",
            help="Load a file that needs arbitrary unpickling (e.g. a "
            "whole pickled nn.Module) with weights_only=False. Runs code from the file: "
            "only for files you trust.",
        ),
    ] = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """What is inside a checkpoint: summary, tensors, optimizer, pruning, quantization.

    Never runs code from the file: a restricted reader builds tensor metadata from the zip
    index and data.pkl (or the safetensors header) without importing torch or reading tensor
    bytes. With several files, prints one line per file (JSON lines with --json).
    """
    from ptool.core.errors import PtoolError, UsageError
    from ptool.core.inspect.report import InspectOptions, brief, brief_error, inspect
    from ptool.core.inspect.tensors import name_filter
    from ptool.ui import inspect_view
    from ptool.ui.errors import describe
    from ptool.ui.output import Output

    out = Output(json=json, quiet=quiet)
    try:
        name_filter(filter)
    except Exception as exc:  # noqa: BLE001 - re.error, one line
        raise UsageError(f"--filter {filter!r} is not a valid regular expression: {exc}") from None
    if len(files) > 1:
        if stats or diff or tree or depth or filter or key or unsafe_load:
            raise UsageError(
                "--stats, --diff, --tree, --depth, --filter, --key and --unsafe-load take one file",
                hint="inspect the files one at a time for those views",
            )
        failed = 0
        for path in files:
            try:
                row = brief(path)
            except PtoolError as exc:
                failed += 1
                row = brief_error(path, describe(exc)[0])
            if json:
                out.json_line(row)
            else:
                out.print(inspect_view.brief_line(row), soft_wrap=True)
        if failed:  # on stderr too, as predict and convcalc --stdin say theirs
            raise PtoolError(f"{failed} of {len(files)} files failed (see their error lines)")
        return
    options = InspectOptions(
        depth=depth,
        tree=tree,
        filter=filter,
        stats=stats,
        diff=diff,
        key=key,
        unsafe_load=unsafe_load,
        warn=out.warn,
    )
    report = inspect(files[0], options)
    out.result(report, lambda: inspect_view.report_view(report))


def register(app: typer.Typer) -> None:
    app.command(
        "inspect-checkpoint",
        epilog=EXAMPLES,
        help=inspect_checkpoint.__doc__,
    )(inspect_checkpoint)
