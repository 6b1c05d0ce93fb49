"""`ptool resume`: continue a run exactly where its checkpoint left it (= `train --resume`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ptool.commands._config_options import with_config_options
from ptool.commands._options import (
    JsonOpt,
    QuietOpt,
    TrustCodeOpt,
    UnsafeLoadOpt,
    examples,
    refuse_empty,
)
from ptool.commands.train import RescheduleOpt, resume_and_log, run_and_report

EXAMPLES = examples(
    "ptool resume runs/digits",
    "ptool resume runs/digits/last.pt --epochs 20",
    "ptool resume runs/digits --epochs 20 --reschedule",
    "ptool train --resume runs/digits/last.pt",
)


def resume(
    ckpt: Annotated[
        str | None,
        typer.Argument(
            metavar="CKPT",
            callback=refuse_empty,
            help="A checkpoint, or a run directory (its newest valid checkpoint). "
            "Default: the newest run under ./runs.",
            show_default=False,
        ),
    ] = None,
    *,
    reschedule: RescheduleOpt = False,
    unsafe_load: UnsafeLoadOpt = False,
    trust_code: TrustCodeOpt = False,  # its callback trusts, for this command
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    overrides: dict[str, Any],
) -> None:
    """Continue a run where it stopped: weights, optimizer, schedule, RNG and data position.

    Only --epochs, early stopping, --out, logging, checkpointing, --device, --download, the
    DataLoader workers and where the run's data file is (--data) may change; anything else is
    a new run (`ptool train --init-from CKPT`).
    """
    from ptool.core.resume import plan_resume
    from ptool.ui.output import Output

    out = Output(json=json, quiet=quiet)
    plan = plan_resume(ckpt, overrides, reschedule=reschedule, unsafe=unsafe_load)
    run_and_report(out, plan.config.out, lambda log: resume_and_log(plan, out, log))


def register(app: typer.Typer) -> None:
    from ptool.core.resume import RESUMABLE

    app.command("resume", epilog=EXAMPLES, help=resume.__doc__)(
        with_config_options(
            shown=(*RESUMABLE, "data"),
            defaults={
                "*": "the run's",
                "out": "the checkpoint's folder",
                "download": "off: a checkpoint's own is not used",
                "data": "the run's; its own csv:, tensors: or imagefolder: data from another path",
            },
        )(resume)
    )
