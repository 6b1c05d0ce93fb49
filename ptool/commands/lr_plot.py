"""`ptool lr-plot`: what a learning-rate schedule does over a run, as a chart, a figure or data.

The schedule flags are `train`'s own (generated from TrainConfig), and the values come from the
same `LRSchedule` that `ptool train` steps, stepped on a dummy optimizer.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ptool.commands._config_options import with_config_options
from ptool.commands._options import (
    FIGURE_SUFFIXES,
    JsonOpt,
    QuietOpt,
    check_output_file,
    examples,
    one_config_file,
    refuse_empty,
    written_file,
)
from ptool.core.config import FIELDS, check_interval

SCHEDULE_FIELDS = [  # every schedule flag of `ptool train` (a pasted command line runs)
    name
    for name, f in FIELDS.items()
    if f.metadata["section"] == "scheduler" and name != "scheduler"
] + ["lr", "epochs", "batch_size", "accumulate", "drop_last", "monitor", "mode"]

# Options that say where a schedule comes from; a --compare spec may set these and the fields.
SOURCE_OPTIONS = (
    "schedule",
    "config",
    "from_checkpoint",
    "from_run",
    "steps_per_epoch",
    "samples",
    "group_lrs",
    "metric_file",
)

EXAMPLES = examples(
    "ptool lr-plot cosine --lr 0.1 --epochs 100 --eta-min 1e-4 --warmup-epochs 5",
    "ptool lr-plot onecycle --lr 0.1 --epochs 30 --samples 50000 --batch-size 128 -o lr.png",
    'ptool lr-plot --epochs 90 --compare "cosine --lr 0.1" "step --lr 0.1 --step-size 30"',
    "ptool lr-plot --from-run runs/NAME",
    "ptool lr-plot plateau --lr 0.1 --epochs 40 --patience 3 --metric-file metrics.csv --csv",
    "ptool lr-plot --config run.toml --group-lrs 0.1,0.01 --json",
)

ScheduleArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="SCHEDULE",
        help="Schedule name (as `train --scheduler`); with --compare, one quoted spec per "
        'schedule, e.g. "cosine --lr 0.1".',
        show_default=False,
    ),
]
CompareOpt = Annotated[
    bool,
    typer.Option(
        "--compare",
        help="Overlay several schedules: each SCHEDULE argument is a quoted name plus flags; "
        "flags outside the quotes apply to all.",
    ),
]
ConfigOpt = Annotated[
    list[str] | None,  # at most one: one_config_file
    typer.Option(
        "--config",
        callback=one_config_file,
        help="A train config file (TOML/YAML/JSON); flags win.",
        metavar="<str>",
    ),
]
FromCheckpointOpt = Annotated[
    str | None,
    typer.Option(
        "--from-checkpoint",
        callback=refuse_empty,
        help="Use a checkpoint's saved config (and its data size).",
    ),
]
FromRunOpt = Annotated[
    str | None,
    typer.Option(
        "--from-run",
        callback=refuse_empty,
        help="A finished run directory: its config, overlaid with the lr it logged to "
        "TensorBoard (and its logged --monitor metric for plateau).",
    ),
]
StepsOpt = Annotated[
    int | None,
    typer.Option("--steps-per-epoch", help="Optimizer steps per epoch (per-step schedules)."),
]
SamplesOpt = Annotated[
    int | None,
    typer.Option(
        "--samples",
        help="Training samples per epoch: steps per epoch = batches of --batch-size "
        "(floored with --drop-last) / --accumulate, rounded up.",
    ),
]
GroupLrsOpt = Annotated[
    str | None,
    typer.Option(
        "--group-lrs", help="Initial lr of each parameter group, e.g. 0.1,0.01: one line each."
    ),
]
MetricFileOpt = Annotated[
    str | None,
    typer.Option(
        "--metric-file",
        callback=refuse_empty,
        help="plateau's metric: one value per epoch (a column, or CSV with a header: the "
        "--monitor column).",
    ),
]
XAxisOpt = Annotated[
    str, typer.Option("--x-axis", help="Plot against optimizer steps or epochs. \\[step|epoch]")
]
LogYOpt = Annotated[bool, typer.Option("--log-y", help="Logarithmic lr axis.")]
TitleOpt = Annotated[str | None, typer.Option("--title", help="Chart and figure title.")]
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        callback=refuse_empty,
        help="Write a figure (.png, .svg, .pdf) or the series (.csv).",
    ),
]
CsvOpt = Annotated[bool, typer.Option("--csv", help="Print the series as CSV on stdout.")]
ChartOpt = Annotated[
    bool | None,
    typer.Option(
        "--chart/--no-chart",
        help="Draw the terminal chart (default: only when stdout is a terminal).",
        show_default=False,
    ),
]


def _group_lrs(text: str | None) -> list[float] | None:
    from ptool.core.errors import UsageError

    if text is None:
        return None
    try:
        lrs = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--group-lrs expects comma-separated numbers, got {text!r}") from None
    if not lrs:
        raise UsageError(f"--group-lrs expects comma-separated numbers, got {text!r}")
    check_interval("group_lrs", lrs, "(0, inf)")
    return lrs


def _schedule_lines(options: dict[str, Any], label: str | None, out: Any) -> tuple[list, list]:
    """(computed lines, logged lines) for one source."""
    from ptool.core import lr_plot as core
    from ptool.core.checks import check_given_schedule_options
    from ptool.core.config import convert
    from ptool.core.errors import UsageError

    overrides = dict(options["overrides"])
    if options["schedule"]:
        if len(options["schedule"]) > 1:
            raise UsageError(
                f"one SCHEDULE at a time, got {' '.join(options['schedule'])!r}",
                hint='overlay several with --compare "cosine --lr 0.1" "step --lr 0.1"',
            )
        overrides["scheduler"] = convert("scheduler", options["schedule"][0], source="SCHEDULE")
    source = core.load_source(
        overrides=overrides,
        config_file=options["config"][0] if options["config"] else None,
        checkpoint=options["from_checkpoint"],
        run=options["from_run"],
    )
    config = source.config
    check_given_schedule_options(config, options["own"])
    if "metric_file" in options["own"] and config.scheduler != "plateau":
        raise UsageError(
            f"--metric-file feeds plateau's metric; {config.scheduler} reads none",
            hint="drop it, or plot plateau",
        )
    log = core.read_run_log(source.run_dir, config.monitor) if source.run_dir else None
    given = options["steps_per_epoch"]
    if given is None and options["samples"] is None and source.train_size is None and log:
        given = _logged_steps_per_epoch(log)
    spe = core.steps_per_epoch(
        config, given=given, samples=options["samples"], train_size=source.train_size
    )
    metrics = _metrics(options["metric_file"], config, source.run_dir, log, out)
    group_lrs = _group_lrs(options["group_lrs"])
    if group_lrs is None and source.groups > 1:  # ptool gives every group the run's lr
        group_lrs = [config.lr] * source.groups
    lines = core.schedule_lines(
        config,
        label=label or config.scheduler,
        steps_per_epoch=spe,
        metrics=metrics,
        group_lrs=group_lrs,
    )
    logged = core.logged_lines(log, steps_per_epoch=spe) if log is not None else []
    return lines, logged


def _metrics(path: str | None, config: Any, run_dir: Any, log: Any, out: Any) -> list | None:
    """plateau's metric per epoch. A file short of --epochs is refused (the plot would invent
    the rest); a run that stopped early is plotted on, its last value repeated, with a warning."""
    from ptool.core import lr_plot as core

    if path:
        metrics = core.read_metric_file(path, config.monitor)
        if config.scheduler == "plateau":
            core.check_metric_count(metrics, config.epochs, path)
        return metrics
    if log is None or not log.metric:
        return None
    missing = config.epochs - len(log.metric)
    if config.scheduler == "plateau" and missing > 0:
        out.warn(
            f"{run_dir} logged {config.monitor} for {len(log.metric)} of {config.epochs} "
            f"epochs; the plot repeats its last value for the other {missing}"
        )
    return log.metric


def _logged_steps_per_epoch(log: Any) -> int | None:
    """A run without a checkpoint: logged optimizer steps over logged epochs."""
    steps, epochs = len(log.lrs[0]), len(log.metric)
    return steps // epochs if epochs and steps % epochs == 0 else None


def _compare_options(ctx: typer.Context, spec: str, base: dict[str, Any]) -> dict[str, Any]:
    """Parse a --compare spec with this command's own parser; the spec's flags override."""
    from ptool.core.config import convert
    from ptool.core.errors import UsageError

    try:
        words = shlex.split(spec)
    except ValueError as exc:  # an unbalanced quote inside the spec
        raise UsageError(f"--compare {spec!r}: {str(exc).lower()}") from None
    if not words:
        raise UsageError("--compare: an empty spec; give a schedule name and flags")
    try:
        sub = ctx.command.make_context(ctx.info_name, words, parent=ctx.parent)
    except (typer.TyperException, ValueError) as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise UsageError(f"--compare {spec!r}: {message}") from None
    given = {
        name
        for name in sub.params
        if getattr(sub.get_parameter_source(name), "name", None) == "COMMANDLINE"
    }
    misplaced = given - set(SOURCE_OPTIONS) - set(SCHEDULE_FIELDS)
    if misplaced:
        flags = ", ".join("--" + n.replace("_", "-") for n in sorted(misplaced))
        raise UsageError(f"--compare {spec!r}: {flags} belongs outside the quotes")
    options = {**base, "overrides": dict(base["overrides"]), "own": given}
    for name in given:
        if name in SCHEDULE_FIELDS:
            options["overrides"][name] = convert(name, sub.params[name], source="option")
        else:
            options[name] = sub.params[name]
    return options


def lr_plot(
    ctx: typer.Context,
    schedule: ScheduleArg = None,
    *,
    compare: CompareOpt = False,
    config: ConfigOpt = None,
    from_checkpoint: FromCheckpointOpt = None,
    from_run: FromRunOpt = None,
    steps_per_epoch: StepsOpt = None,
    samples: SamplesOpt = None,
    group_lrs: GroupLrsOpt = None,
    metric_file: MetricFileOpt = None,
    x_axis: XAxisOpt = "epoch",
    log_y: LogYOpt = False,
    title: TitleOpt = None,
    output: OutputOpt = None,
    csv: CsvOpt = False,
    chart: ChartOpt = None,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    overrides: dict[str, Any],
) -> None:
    """Plot a learning-rate schedule exactly as `ptool train` would step it.

    Terminal chart (when stdout is a terminal) with the key numbers under it; a figure with
    -o lr.png|svg|pdf; the series with --csv, -o lr.csv or --json. See the README's
    `ptool lr-plot` section.
    """
    from ptool.core.errors import UsageError
    from ptool.ui.output import Output

    out = Output(json=json, quiet=quiet)
    if x_axis not in ("step", "epoch"):
        raise UsageError(f"--x-axis must be step or epoch, got {x_axis!r}")
    if json and csv:
        raise UsageError("give --json or --csv, not both")
    if output:
        check_output_file(Path(output), (*FIGURE_SUFFIXES, ".csv"))
    base = {
        "schedule": schedule,
        "config": config,
        "from_checkpoint": from_checkpoint,
        "from_run": from_run,
        "steps_per_epoch": steps_per_epoch,
        "samples": samples,
        "group_lrs": group_lrs,
        "metric_file": metric_file,
        "overrides": overrides,
        # the flags checked against the schedule: a --compare spec's own, not those it inherits
        "own": set() if compare else {*overrides, *(["metric_file"] if metric_file else [])},
    }
    if compare:
        if not schedule:
            raise UsageError('--compare needs quoted specs, e.g. --compare "cosine" "step"')
        sources = [
            (_compare_options(ctx, spec, {**base, "schedule": None}), spec) for spec in schedule
        ]
    else:
        sources = [(base, None)]
    lines, logged = [], []
    for options, label in sources:
        computed, run_lines = _schedule_lines(options, label, out)
        lines += computed
        if not logged:  # a run's log is drawn once, however many specs share it
            logged = run_lines
    lines += logged
    _render(
        out, lines, x_axis=x_axis, log_y=log_y, title=title, output=output, csv=csv, chart=chart
    )


def _render(out, lines, *, x_axis, log_y, title, output, csv, chart) -> None:
    from rich.text import Text

    from ptool.ui import lr_plot_view as view

    names = list(dict.fromkeys(line.label for line in lines if line.kind == "schedule"))
    title = title or (f"learning rate: {names[0]}" if len(names) == 1 else "learning rates")
    if output:
        path = Path(output)
        suffix = path.suffix[1:].lower()
        with written_file(path, "", "w" if suffix == "csv" else "wb") as file:
            if suffix == "csv":
                view.write_csv(lines, file)
            else:
                view.write_figure(lines, file, suffix, x_axis=x_axis, log_y=log_y, title=title)
        out.info(f"wrote {escape(str(path))}")
    if csv:  # plain text, straight to the console's file: rich markup would cost seconds
        view.write_csv(lines, out.out.file)
        out.out.file.flush()
        return
    if out.json:
        out.result({"x_axis": x_axis, "series": [line.to_dict() for line in lines]})
        return

    draw = chart if chart is not None else out.out.is_terminal
    if draw and not _encodes(out.out.encoding, "\u28ff"):  # plotext draws in braille
        draw = False
        if chart:
            out.info(f"--chart: the output's encoding ({out.out.encoding}) has no braille")

    def render():
        import shutil

        parts = []
        if draw:
            width = min(shutil.get_terminal_size((100, 24)).columns, 120)
            text = view.terminal_chart(
                lines, x_axis=x_axis, log_y=log_y, title=title, width=width, height=22
            )
            parts.append(Text.from_ansi(text))
        parts.append(view.key_table(lines, fold=not out.piped))
        from rich.console import Group

        return Group(*parts)

    out.result(None, render)


def _encodes(encoding: str, text: str) -> bool:
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def register(app: typer.Typer) -> None:
    app.command(
        "lr-plot",
        epilog=EXAMPLES,
        help=lr_plot.__doc__,
        no_args_is_help=True,
    )(with_config_options(SCHEDULE_FIELDS)(lr_plot))
