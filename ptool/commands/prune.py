"""`ptool prune`: unstructured / structured / global pruning of a checkpoint, optional
fine-tuning through train's engine, a before/after report, a new checkpoint."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ptool.commands._config_options import (
    FINETUNE_DEFAULTS,
    FINETUNE_FIELDS,
    with_config_options,
)
from ptool.commands._options import (
    BenchRunsOpt,
    CkptArg,
    DownloadOpt,
    JsonOpt,
    NoEvalOpt,
    QuietOpt,
    TrustCodeOpt,
    comma_list,
    examples,
    refuse_empty,
)
from ptool.core.prune.options import METHODS

EXAMPLES = examples(
    "ptool prune --amount 0.3",
    "ptool prune runs/cnn/best.pt --method global-l1 --amount 0.5 --keep-masks",
    "ptool prune --method ln-structured --amount 0.5 --compact --finetune-epochs 3",
    "ptool prune --method bn-scale --amount 0.5 --compact --finetune-epochs 3",
    "ptool prune --amount 0.8 --steps 4 --finetune-epochs 1 --lr 3e-4 --json",
)

# Fine-tuning takes train's own flags as `quantize qat` does (--finetune-epochs is --epochs),
# plus the device and precision that QAT, a CPU run, leaves out.
PRUNE_FINETUNE_FIELDS = [n for n in FINETUNE_FIELDS if n != "epochs"] + ["device", "precision"]


def prune(
    ckpt: CkptArg = None,
    method: Annotated[
        str, typer.Option("--method", help=f"Pruning method: {', '.join(METHODS)}.")
    ] = ("l1-unstructured"),
    amount: Annotated[
        str,
        typer.Option(
            "--amount",
            help="A fraction in [0, 1) (0.3) or a count (12) of weights, or channels for "
            "structured methods, per layer (global-l1: over all selected layers).",
        ),
    ] = "0.3",
    n: Annotated[
        float | None,
        typer.Option("--n", help="Norm order of ln-structured: 1, 2, inf, ... (default: 2)."),
    ] = None,
    dim: Annotated[
        int | None,
        typer.Option(
            "--dim",
            help="Structured methods: 0 = output channels/neurons, 1 = inputs (default: 0).",
        ),
    ] = None,
    modules: Annotated[
        str, typer.Option("--modules", help="Layer kinds to prune: conv, linear.")
    ] = "conv,linear",
    only: Annotated[
        str | None,
        typer.Option(
            "--only",
            callback=refuse_empty,
            help="Prune only layers whose name matches this regex.",
            show_default=False,
        ),
    ] = None,
    exclude: Annotated[
        str | None,
        typer.Option(
            "--exclude",
            callback=refuse_empty,
            help="Skip layers whose name matches this regex.",
            show_default=False,
        ),
    ] = None,
    include_head: Annotated[
        bool, typer.Option("--include-head", help="Also prune the final classifier.")
    ] = False,
    make_permanent: Annotated[
        bool,
        typer.Option(
            "--make-permanent/--keep-masks",
            help="Save plain weights (prune.remove), or weight_orig/weight_mask for more pruning.",
        ),
    ] = True,
    compact: Annotated[
        bool,
        typer.Option(
            "--compact",
            help="Structured methods: remove the pruned channels (Torch-Pruning): a smaller, "
            "faster dense model.",
        ),
    ] = False,
    steps: Annotated[
        int, typer.Option("--steps", help="Reach --amount in this many pruning steps.")
    ] = 1,
    finetune_epochs: Annotated[
        int,
        typer.Option(
            "--finetune-epochs",
            help="Fine-tune this many epochs after every step (train's engine and flags below).",
        ),
    ] = 0,
    recalibrate_bn: Annotated[
        int,
        typer.Option(
            "--recalibrate-bn",
            metavar="N",
            help="After every pruning step, re-estimate batch-norm statistics on N training "
            "batches (no gradients; 0: off).",
        ),
    ] = 0,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            callback=refuse_empty,
            help="Pruned checkpoint to write (default: <ckpt stem>.pruned.pt next to the input).",
            show_default=False,
        ),
    ] = None,
    no_eval: NoEvalOpt = False,
    bench_runs: BenchRunsOpt = 20,
    download: DownloadOpt = False,
    trust_code: TrustCodeOpt = False,  # its callback trusts, for this command
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """Prune a checkpoint, optionally fine-tune, and report per layer and before/after.

    Methods from torch.nn.utils.prune; --compact removes channels with Torch-Pruning. Writes
    <ckpt stem>.pruned.pt. Fine-tuning defaults to the run's own optimizer, lr and batch size,
    in <ckpt dir>/prune/<time>."""
    from ptool.core.prune.options import (
        PruneOptions,
        check_options,
        parse_amount,
        refuse_unused_flags,
    )
    from ptool.ui.output import Output

    out = Output(json=json, quiet=quiet)
    refuse_unused_flags(method, n=n, dim=dim)
    options = PruneOptions(
        method=method,
        amount=parse_amount(amount),
        n=2.0 if n is None else n,
        dim=0 if dim is None else dim,
        modules=comma_list(modules),
        only=only,
        exclude=exclude,
        include_head=include_head,
        make_permanent=make_permanent,
        compact=compact,
        steps=steps,
        finetune_epochs=finetune_epochs,
        recalibrate_bn=recalibrate_bn,
        train_overrides=overrides,
        output=output,
        evaluate=not no_eval,
        download=download,
        bench_runs=bench_runs,
    )
    check_options(options)  # torch-free: a bad flag fails before seconds of imports

    from ptool.core.prune.run import prune_checkpoint
    from ptool.ui.prune_view import report_view

    out.written_report(
        lambda: prune_checkpoint(ckpt, options, log=out.log, quiet=quiet), report_view
    )


def register(app: typer.Typer) -> None:
    app.command("prune", epilog=EXAMPLES, help=prune.__doc__)(
        with_config_options(
            PRUNE_FINETUNE_FIELDS,
            defaults={**FINETUNE_DEFAULTS, "device": "auto", "out": "<ckpt dir>/prune/<time>"},
        )(prune)
    )
