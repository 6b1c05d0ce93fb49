"""Options shared by several commands, defined once so they read and behave the same everywhere."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated

import typer


def refuse_empty(value: str | list[str] | None) -> str | list[str] | None:
    """A path or value given as '' (an unset shell variable) would read as the current
    directory or as the default: `predict CKPT "$FILES"` predicting every image below it,
    `-o ""` the default file, `--observer ""` the default observer, `--only ""` every layer."""
    values = value if isinstance(value, list) else [value]
    if "" in values:
        raise typer.BadParameter("an empty value ('') names nothing")
    return value


def one_config_file(values: list[str] | None) -> list[str] | None:
    """--config FILE, once (the command reads `values[0]`): Click keeps the last of a
    repeated option, which dropped a whole file of options without a word."""
    refuse_empty(values or [])
    if values and len(values) > 1:
        raise typer.BadParameter(
            f"one file, given {len(values)} ({', '.join(values)}): merge them into one"
        )
    return values


JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON document on stdout (stable keys), nothing else."),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Silence everything on stderr but errors.")
]
CkptArg = Annotated[
    str | None,
    typer.Argument(
        metavar="CKPT",
        help="Checkpoint from `ptool train` (default: the newest runs/*/best.pt).",
        callback=refuse_empty,
        show_default=False,
    ),
]
BenchRunsOpt = Annotated[
    int, typer.Option("--bench-runs", help="Timed repetitions per latency (median, after warm-up).")
]
UnsafeLoadOpt = Annotated[
    bool,
    typer.Option(
        "--unsafe-load",
        help="Allow a checkpoint that needs full unpickling (runs code from the file: "
        "only for files you trust).",
    ),
]
EmaOpt = Annotated[
    bool,
    typer.Option(
        "--ema", help="Use the EMA weights a `ptool train --ema` run saved beside the model's."
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]


def _trust_code(ctx: typer.Context, value: bool) -> bool:
    if value:  # for this command only: the context closes it when the command ends
        from ptool.core.trust import trusting_code

        ctx.with_resource(trusting_code())
    return value


TrustCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-code",
        callback=_trust_code,
        help="Let a checkpoint whose model is a module:function factory import and run that "
        "code (only for files you trust; also PTOOL_TRUST_CODE=1).",
    ),
]
DownloadOpt = Annotated[
    bool,
    typer.Option(
        "--download",
        help="Allow torchvision to download the run's dataset into its --data-dir (a "
        "checkpoint's own --download is not used).",
    ),
]
NoEvalOpt = Annotated[
    bool, typer.Option("--no-eval", help="Skip the validation-split evaluations in the report.")
]

# the figures `-o` writes (lr-plot's schedule, eval's confusion matrix): matplotlib's formats
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


def check_output_file(path: Path, suffixes: tuple[str, ...]) -> None:
    """Refuse, before the work, an `-o` that could not be written; missing folders are fine
    (`written_file` creates them, as `quantize -o` does)."""
    from ptool.core.errors import UsageError
    from ptool.core.rundir import check_output_folder

    kinds = f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"
    if path.is_dir():  # `-o figures.png/` made earlier, say: its name has the suffix
        raise UsageError(
            f"-o {path} is a folder; expected a {kinds} file", hint=f"give {path}/NAME"
        )
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"-o {path}: expected a {kinds} file")
    check_output_folder(path, f"-o {path}")


@contextmanager
def written_file(path: Path, done: str, mode: str = "wb") -> Iterator[IO]:
    """`path` to write in the block, its folders created, replaced only once written whole
    (`rundir.atomic_write`: a full disk leaves the old file); a failure is one line saying
    what is `done` all the same (the metrics printed above)."""
    from ptool.core.errors import PtoolError
    from ptool.core.rundir import atomic_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, mode) as file:
            yield file
    except OSError as exc:
        raise PtoolError(
            f"could not write {path}: {exc.strerror or exc}{done}",
            hint="choose a path you can write to",
        ) from exc


def comma_list(text: str) -> list[str]:
    """`--modules conv, Linear` -> ["conv", "linear"]: names, case and spaces aside."""
    return [name.strip().lower() for name in text.split(",") if name.strip()]


def examples(*commands: str) -> str:
    """An epilog listing example invocations; the README shows the same commands."""
    lines = "\n\n".join(f"  $ {command}" for command in commands)
    return f"[bold]Examples[/bold]\n\n{lines}"
