"""`ptool quantize dynamic|static|qat`: int8 model from a checkpoint, with a before/after report."""

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
from ptool.commands._plain_params import PlainGroup, PlainTyper
from ptool.core.quantize.options import DYNAMIC_MODULE_NAMES, QAT_DEFAULTS, QuantizeOptions

EXAMPLES = examples(
    "ptool quantize dynamic runs/mlp/best.pt",
    "ptool quantize static runs/cnn/best.pt --observer minmax --calib-batches 16",
    "ptool quantize static --backend qnnpack --torchscript --json",
    "ptool quantize qat runs/cnn/best.pt --epochs 2 --freeze-bn-epoch 1",
)

# QAT's help defaults: the run's config, with QAT's own epochs and lr
QAT_HELP_DEFAULTS = {
    **FINETUNE_DEFAULTS,
    "epochs": str(QAT_DEFAULTS["epochs"]),
    "lr": f"the run's x {QAT_DEFAULTS['lr_factor']}",
    "out": "<ckpt dir>/qat/<time>",
}

OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        callback=refuse_empty,
        help=(
            "Quantized checkpoint to write (default: <ckpt stem>.int8.pt next to the input; "
            ".fp16.pt for --dtype float16)."
        ),
        show_default=False,
    ),
]
BackendOpt = Annotated[
    str,
    typer.Option(
        "--backend", help="int8 kernels: auto (by CPU architecture), x86, fbgemm or qnnpack."
    ),
]
TorchScriptOpt = Annotated[
    bool,
    typer.Option(
        "--torchscript", help="Also write <output stem>.torchscript.pt (runs without ptool)."
    ),
]
CpuDeviceOpt = Annotated[
    str, typer.Option("--device", help="cpu only: the int8 kernels are CPU kernels.")
]
ObserverOpt = Annotated[
    str | None,
    typer.Option(
        "--observer",
        callback=refuse_empty,
        help="Activation observer: minmax, histogram or moving-average "
        "(default: histogram for static, moving-average for qat).",
        show_default=False,
    ),
]
PerChannelOpt = Annotated[
    bool,
    typer.Option("--per-channel/--per-tensor", help="Per-channel or per-tensor int8 weights."),
]


def _run(ckpt: str | None, options: QuantizeOptions, *, json: bool, quiet: bool) -> None:
    from ptool.core.quantize.options import check_options
    from ptool.ui.output import Output

    out = Output(json=json, quiet=quiet)
    check_options(options)  # torch-free: a bad flag fails before seconds of imports

    from ptool.core.quantize.run import quantize_checkpoint
    from ptool.ui.quantize_view import report_table

    out.written_report(
        lambda: quantize_checkpoint(ckpt, options, log=out.log, quiet=quiet), report_table
    )


def dynamic(
    ckpt: CkptArg = None,
    modules: Annotated[
        str, typer.Option("--modules", help="Layer types to quantize: linear, lstm, gru.")
    ] = ",".join(DYNAMIC_MODULE_NAMES),
    dtype: Annotated[str, typer.Option("--dtype", help="Weight type: qint8 or float16.")] = "qint8",
    backend: BackendOpt = "auto",
    output: OutputOpt = None,
    torchscript: TorchScriptOpt = False,
    no_eval: NoEvalOpt = False,
    bench_runs: BenchRunsOpt = 20,
    device: CpuDeviceOpt = "cpu",
    download: DownloadOpt = False,
    trust_code: TrustCodeOpt = False,  # its callback trusts, for this command
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Dynamic quantization: int8 weights, activations quantized on the fly (Linear, LSTM, GRU)."""
    options = QuantizeOptions(
        mode="dynamic",
        modules=comma_list(modules),
        dtype=dtype,
        backend=backend,
        output=output,
        torchscript=torchscript,
        evaluate=not no_eval,
        download=download,
        bench_runs=bench_runs,
        device=device,
    )
    _run(ckpt, options, json=json, quiet=quiet)


def static(
    ckpt: CkptArg = None,
    backend: BackendOpt = "auto",
    observer: ObserverOpt = None,
    per_channel: PerChannelOpt = True,
    calib_batches: Annotated[
        int, typer.Option("--calib-batches", help="Training batches run through the observers.")
    ] = 32,
    calib_data: Annotated[
        str | None,
        typer.Option(
            "--calib-data",
            callback=refuse_empty,
            help="Calibrate on another data source (a --data spec) instead of the run's own.",
            show_default=False,
        ),
    ] = None,
    output: OutputOpt = None,
    torchscript: TorchScriptOpt = False,
    no_eval: NoEvalOpt = False,
    bench_runs: BenchRunsOpt = 20,
    device: CpuDeviceOpt = "cpu",
    download: DownloadOpt = False,
    trust_code: TrustCodeOpt = False,  # its callback trusts, for this command
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Post-training static quantization: fuse conv+bn(+relu), linear(+relu); calibrate; convert."""
    options = QuantizeOptions(
        mode="static",
        backend=backend,
        observer=observer,
        per_channel=per_channel,
        calib_batches=calib_batches,
        calib_data=calib_data,
        output=output,
        torchscript=torchscript,
        evaluate=not no_eval,
        download=download,
        bench_runs=bench_runs,
        device=device,
    )
    _run(ckpt, options, json=json, quiet=quiet)


def qat(
    ckpt: CkptArg = None,
    backend: BackendOpt = "auto",
    observer: ObserverOpt = None,
    per_channel: PerChannelOpt = True,
    freeze_observers_epoch: Annotated[
        int | None,
        typer.Option(
            "--freeze-observers-epoch",
            help="Freeze the quantization ranges after this many epochs (default: never).",
            show_default=False,
        ),
    ] = None,
    freeze_bn_epoch: Annotated[
        int | None,
        typer.Option(
            "--freeze-bn-epoch",
            help="Freeze batch-norm running statistics after this many epochs (default: never).",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            callback=refuse_empty,
            help="Continue an interrupted QAT run from its last.pt, then convert.",
            show_default=False,
        ),
    ] = None,
    output: OutputOpt = None,
    torchscript: TorchScriptOpt = False,
    no_eval: NoEvalOpt = False,
    bench_runs: BenchRunsOpt = 20,
    device: CpuDeviceOpt = "cpu",
    download: DownloadOpt = False,
    trust_code: TrustCodeOpt = False,  # its callback trusts, for this command
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """Quantization-aware training: fake-quantized fine-tuning (train's engine and flags), then
    convert. Defaults: 3 epochs at the checkpoint's lr x 0.1, run dir <ckpt dir>/qat/<time>."""
    options = QuantizeOptions(
        mode="qat",
        backend=backend,
        observer=observer,
        per_channel=per_channel,
        freeze_observers_epoch=freeze_observers_epoch,
        freeze_bn_epoch=freeze_bn_epoch,
        train_overrides=overrides,
        resume=resume,
        output=output,
        torchscript=torchscript,
        evaluate=not no_eval,
        download=download,
        bench_runs=bench_runs,
        device=device,
    )
    _run(ckpt, options, json=json, quiet=quiet)


def register(app: typer.Typer) -> None:
    sub = PlainTyper(
        cls=PlainGroup,
        name="quantize",
        help="int8 quantization of a trained checkpoint (dynamic, static, qat), with a "
        "before/after report.",
        no_args_is_help=True,
        epilog=EXAMPLES,
    )
    sub.command("dynamic", epilog=EXAMPLES, help=dynamic.__doc__)(dynamic)
    sub.command("static", epilog=EXAMPLES, help=static.__doc__)(static)
    sub.command("qat", epilog=EXAMPLES, help=qat.__doc__)(
        with_config_options(FINETUNE_FIELDS, defaults=QAT_HELP_DEFAULTS)(qat)
    )
    app.add_typer(sub)
