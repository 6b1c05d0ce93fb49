"""`ptool eval`: a checkpoint's loss and metrics on its run's validation split (or another)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ptool.commands._options import (
    FIGURE_SUFFIXES,
    DeviceOpt,
    DownloadOpt,
    EmaOpt,
    JsonOpt,
    QuietOpt,
    TrustCodeOpt,
    check_output_file,
    examples,
    refuse_empty,
    written_file,
)

EXAMPLES = examples(
    "ptool eval",
    "ptool eval runs/digits/best.pt --split train",
    "ptool eval runs/digits/best.pt -o cm.png",
    "ptool eval runs/digits/best.pt --compare runs/digits/best.pruned.pt runs/digits/best.int8.pt",
    "ptool eval runs/digits/best.pt --json | jq .metrics.accuracy",
)


def eval_(
    checkpoints: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="CKPT",
            callback=refuse_empty,
            help="Checkpoint (float, pruned or quantized); default: the newest runs/*/best.pt.",
            show_default=False,
        ),
    ] = None,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            "--compare",
            metavar="CKPT2",
            callback=refuse_empty,
            help="More checkpoints on the same data, in one table with differences vs CKPT.",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Another data source (a `train --data` spec); default: the run's own.",
            show_default=False,
        ),
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            "--split",
            help="val, train (with validation transforms), test, or all (train + val: a held-out "
            "--data source as a whole).",
        ),
    ] = "val",
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help="Default: the run's.", show_default=False),
    ] = None,
    device: DeviceOpt = "auto",
    ema: EmaOpt = False,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            callback=refuse_empty,
            help="Write the confusion matrix as an image (.png, .svg or .pdf).",
            show_default=False,
        ),
    ] = None,
    download: DownloadOpt = False,
    trust_code: TrustCodeOpt = False,  # its callback trusts, for this command
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Loss and the task's metrics of a checkpoint, with the run's own validation preprocessing.

    Classification: accuracy, macro precision/recall/F1, per-class scores and support, the
    confusion matrix; regression: MAE, RMSE, R2. Plus samples/s and the median batch latency.
    """
    from rich.markup import escape

    from ptool.core.errors import UsageError
    from ptool.ui.output import Output

    out = Output(json=json, quiet=quiet)
    positional = list(checkpoints or [])
    if len(positional) > 1 and not compare:
        raise UsageError(
            "several checkpoints given", hint="compare them with: ptool eval CKPT --compare CKPT2"
        )
    if output is not None and (compare or len(positional) > 1):
        raise UsageError("-o draws one checkpoint's confusion matrix; drop --compare or -o")
    if output is not None:
        check_output_file(Path(output), FIGURE_SUFFIXES)
    if not positional:
        from ptool.core.checkpoint import find_default_checkpoint

        positional = [str(find_default_checkpoint())]
        out.info(f"evaluating the newest run's checkpoint: {escape(positional[0])}")
    paths = [positional[0], *(compare or []), *positional[1:]]

    from ptool.core.evaluate import evaluate_checkpoints
    from ptool.ui.eval_view import compare_table, report_view

    reports = evaluate_checkpoints(
        paths,
        data=data,
        split=split,
        device=device,
        batch_size=batch_size,
        check_info=None if output is None else _check_classification,
        ema=ema,
        download=download,
    )
    if len(reports) > 1:
        out.result(reports, lambda: compare_table(reports))
        return
    report = reports[0]
    out.result(report, lambda: report_view(report))  # first: a failed write keeps the metrics
    if output is not None:
        written = _write_confusion(report, Path(output))
        out.info(f"confusion matrix written: {escape(str(written))}")


def _check_classification(info) -> None:
    from ptool.core.errors import UsageError

    if info.task != "classification":
        raise UsageError(
            f"-o draws a confusion matrix; this is a {info.task} model", hint="drop -o"
        )


def _write_confusion(report: dict, path: Path) -> Path:
    """The confusion matrix image; a failure is one line after the metrics."""
    from ptool.ui.eval_view import write_confusion_image

    with written_file(path, "; the metrics above are complete") as file:
        write_confusion_image(report, file, path.suffix[1:].lower())
    return path


def register(app: typer.Typer) -> None:
    app.command("eval", epilog=EXAMPLES, help=eval_.__doc__)(eval_)
