"""`ptool train`: every TrainConfig field as a flag, a config file, then the shared engine."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ptool.commands._config_options import with_config_options
from ptool.commands._options import (
    JsonOpt,
    QuietOpt,
    TrustCodeOpt,
    UnsafeLoadOpt,
    examples,
    one_config_file,
    refuse_empty,
)
from ptool.core.errors import UsageError
from ptool.core.rundir import speaks_for_the_job

if TYPE_CHECKING:
    from ptool.ui.output import Output

EXAMPLES = examples(
    "ptool train",
    "ptool train --data synthetic --shape 3x32x32 --model cnn --epochs 3 --out runs/synth",
    "ptool train --config run.yaml --lr 3e-4 --scheduler cosine --warmup-epochs 1",
    "ptool train --print-config > run.yaml",
    "torchrun --standalone --nproc_per_node 2 -m ptool train --device cpu",
)

ConfigOpt = Annotated[
    list[str] | None,  # at most one: one_config_file
    typer.Option(
        "--config",
        callback=one_config_file,
        help="TOML, YAML or JSON file with any of the options below; flags win.",
        metavar="<str>",
    ),
]
ResumeOpt = Annotated[
    str | None,
    typer.Option(
        "--resume",
        callback=refuse_empty,
        help="Continue the run of this checkpoint or run directory (same as `ptool resume`).",
        show_default=False,
    ),
]
RescheduleOpt = Annotated[
    bool,
    typer.Option(
        "--reschedule",
        help="With a resume that changes --epochs: re-plan the LR schedule for the new total "
        "(default: it continues from its saved state).",
    ),
]
PrintConfigOpt = Annotated[
    bool,
    typer.Option(
        "--print-config", help="Print the resolved config (YAML, or JSON with --json) and exit."
    ),
]


def train(
    *,
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
    resume: ResumeOpt = None,
    reschedule: RescheduleOpt = False,
    unsafe_load: UnsafeLoadOpt = False,
    trust_code: TrustCodeOpt = False,  # its callback trusts, for this command
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    overrides: dict[str, Any],
) -> None:
    """Train a model: the built-in CNN on scikit-learn's digits unless told otherwise.

    Writes checkpoints, TensorBoard logs, config.yaml and summary.json to the run directory
    (--out, default runs/<timestamp>). See the README's `ptool train` section.
    """
    from ptool.core.config import resolve_config
    from ptool.ui.output import Output

    out = Output(json=json, quiet=quiet)
    config_file = config[0] if config else None
    if resume is not None:
        from ptool.core.resume import plan_resume

        plan = plan_resume(
            resume, overrides, config_file=config_file, reschedule=reschedule, unsafe=unsafe_load
        )
        if print_config:
            _print_config(out, plan.config.to_dict())
            return
        run_and_report(out, plan.config.out, lambda log: resume_and_log(plan, out, log))
        return
    if reschedule:
        raise UsageError("--reschedule re-plans a resumed run's schedule; it needs --resume")
    resolved = resolve_config(config_file, overrides)
    synthetic_only = sorted({"shape", "samples"} & overrides.keys())
    if synthetic_only and resolved.data != "synthetic":
        raise UsageError(
            f"--{synthetic_only[0]} shapes synthetic data; --data {resolved.data} has its own",
            hint="add --data synthetic, or drop it",
        )
    from ptool.core.checks import check_config, check_new_run_options

    # the printed config is one that trains; a usage error comes before the engine's imports
    try:
        check_config(resolved)
        check_new_run_options(resolved)
    except UsageError as exc:
        raise _in_file_terms(exc, config_file, overrides) from None
    horizon = resolved.schedule_epochs
    if horizon not in (None, resolved.epochs) and "schedule_epochs" not in overrides:
        out.log(  # an extended run's config.yaml, given a new --epochs: the plan stays its
            f"note: the {resolved.scheduler} schedule is planned over {horizon} epochs "
            f"(schedule_epochs in {config_file}), not the run's {resolved.epochs}"
        )
    if print_config:
        _print_config(out, resolved.to_dict())
        return
    created = None
    if resolved.out is None and speaks_for_the_job():  # so a refusal removes it, as --out's
        from ptool.core.rundir import claim_default_run_dir

        created = _first_missing("runs")  # runs/ itself, or only the folder claimed in it
        run_dir = str(claim_default_run_dir())
        created = created or run_dir
        resolved = resolved.replace(out=run_dir)

    def run(log: Callable[[str], None]) -> Any:
        from ptool.core.engine import fit

        return fit(resolved, quiet=quiet, log=log, unsafe_load=unsafe_load)

    run_and_report(out, resolved.out, run, created=created)


def _in_file_terms(exc: UsageError, config_file: str | None, flags: dict[str, Any]) -> UsageError:
    """A refusal whose option the config file set, not a flag: it names the file, and the way
    out is the file's ("drop it" named a flag never typed)."""
    from ptool.core.config import FIELDS, read_config_file

    named = re.match(r"--(no-)?([a-z0-9-]+)", str(exc))  # --no-strict names strict
    spellings = (named[0][2:], named[2]) if named else ()  # and --no-decay-norm-bias its own
    name = next((n for n in (s.replace("-", "_") for s in spellings) if n in FIELDS), None)
    if config_file is None or name not in FIELDS or name in flags:
        return exc
    if name not in read_config_file(config_file):
        return exc
    out_of_file = f"take {name} out of {config_file}"
    hint = exc.hint and exc.hint.replace("drop it", out_of_file).replace(
        f"drop {named[0]}", out_of_file
    )
    return UsageError(f"{config_file}: {exc}", hint=hint)


def _print_config(out: Output, values: dict[str, Any]) -> None:
    from ptool.core.rundir import config_yaml

    out.result(values, lambda: config_yaml(values))


def resume_and_log(plan: Any, out: Output, log: Callable[[str], None]) -> Any:
    """Say where the run continues and what happens to its schedule, then continue it."""
    from ptool.core.resume import resume_run

    if speaks_for_the_job():
        for note in plan.notes:
            log(note)
    return resume_run(plan, quiet=out.quiet, log=log)


def run_and_report(
    out: Output,
    run_dir: str | None,
    run: Callable[[Callable[[str], None]], Any],
    *,
    created: str | None = None,
) -> None:
    """Train (or resume) with epoch lines on stderr, then the summary table or JSON. A refused
    run removes the folders it created (`created`: the outermost, when already made)."""
    created = created or (_first_missing(run_dir) if run_dir else None)
    if run_dir:  # an unwritable --out fails now, before seconds of imports
        from ptool.core.rundir import prepare_run_dir

        prepare_run_dir(run_dir)

    from ptool.ui.train_view import summary_table

    try:
        summary = run(out.log)
    except BaseException as exc:
        if created:  # a run refused before writing anything leaves no empty --out behind
            _remove_empty(Path(run_dir), Path(created))
        out.stopped_run(exc)
        raise
    if speaks_for_the_job():
        out.result(summary.to_dict(), lambda: summary_table(summary))


def _first_missing(path: str) -> str | None:
    """The outermost folder of `path` that does not exist yet (what --out will create)."""
    missing = None
    for folder in (Path(path), *Path(path).parents):
        if folder.exists():
            break
        missing = str(folder)
    return missing


def _remove_empty(path: Path, created: Path) -> None:
    """Remove `path` and its parents up to `created` while they are empty."""
    with contextlib.suppress(OSError):  # a folder with files in it stays
        while True:
            path.rmdir()
            if path == created:
                return
            path = path.parent


def register(app: typer.Typer) -> None:
    app.command(
        "train",
        epilog=EXAMPLES,
        help=train.__doc__,
        no_args_is_help=False,
    )(with_config_options(defaults={"out": "runs/<timestamp>"})(train))
