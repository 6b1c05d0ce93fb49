"""`ptool predict`: predictions for images, CSV rows, tensors or JSON lines, batched."""

from __future__ import annotations

from typing import Annotated

import typer

from ptool.commands._options import (
    DeviceOpt,
    EmaOpt,
    JsonOpt,
    QuietOpt,
    TrustCodeOpt,
    examples,
    refuse_empty,
)

EXAMPLES = examples(
    "ptool predict runs/digits/best.pt digit.png more_digits/",
    "ptool predict runs/tabular/best.pt rows.csv > predictions.jsonl",
    "ptool predict runs/digits/best.pt batch.pt --top-k 3 --batch-size 256",
    "echo '{\"input\": [0.1, 0.5, 0.2, 0.9]}' | ptool predict runs/tabular/best.pt -",
)


def predict(
    checkpoint: Annotated[
        str,
        typer.Argument(
            metavar="CKPT", callback=refuse_empty, help="Checkpoint (float, pruned or quantized)."
        ),
    ],
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="INPUT",
            callback=refuse_empty,
            help="Image files or folders, a CSV, a torch.save tensor file (.pt, .pth, ...), "
            "or - for JSON lines on stdin.",
        ),
    ],
    top_k: Annotated[
        int | None,
        typer.Option(
            "--top-k", help="Class probabilities to report per input (classifiers; default 5)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Inputs per forward pass.")] = 64,
    device: DeviceOpt = "auto",
    ema: EmaOpt = False,
    trust_code: TrustCodeOpt = False,  # its callback trusts, for this command
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Predict with a checkpoint, preprocessing inputs exactly as the run's validation did.

    Writes one JSON line per input (input, prediction, label, top-k probabilities), or a
    table when stdout is a terminal. Failed inputs are listed on stderr (and under "errors"
    with --json); the others still get predictions; the exit code is then 1.
    """

    from rich.markup import escape

    from ptool.core.errors import PtoolError, UsageError
    from ptool.ui.output import Output

    if top_k is not None and top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    if inputs.count("-") > 1:  # the second would read a stdin the first emptied
        raise UsageError("- (stdin) is given more than once", hint="give it once")
    out = Output(json=json, quiet=quiet)

    from ptool.core.predict import Reader, load_predictor
    from ptool.core.predict import predict as run_predict

    model, info, run_device, loss, precision = load_predictor(checkpoint, device, ema=ema)
    if top_k is not None and info.task != "classification":
        raise UsageError(
            f"--top-k ranks class probabilities; this is a {info.task} model", hint="drop --top-k"
        )
    records = run_predict(
        model,
        Reader(info, note=lambda line: out.info(escape(line))).read(inputs),
        info,
        batch_size=batch_size,
        device=run_device,
        top_k=top_k or 5,
        loss=loss,
        precision=precision,
    )
    predictions, errors, done = [], [], 0
    stream = not json and not out.out.is_terminal
    for record in records:
        if "error" in record:
            errors.append(record)
            out.err.print(
                f"[red]failed:[/red] {escape(record['input'])}: {escape(record['error'])}",
                soft_wrap=True,
            )
            continue
        done += 1
        if stream:
            out.json_line(record)
        else:
            predictions.append(record)
    if not done and not errors:
        raise PtoolError(
            f"nothing to predict: {', '.join('stdin' if i == '-' else i for i in inputs)} "
            "held no input"
        )
    if json:
        out.result({"checkpoint": checkpoint, "predictions": predictions, "errors": errors})
    elif not stream:
        from ptool.ui.predict_view import predictions_table

        out.print(predictions_table(predictions, info.task))
    if errors:
        others = "; the others were predicted" if done else ""
        raise PtoolError(
            f"{len(errors)} of {len(errors) + done} inputs failed (listed above){others}"
        )


def register(app: typer.Typer) -> None:
    app.command("predict", epilog=EXAMPLES, help=predict.__doc__)(predict)
