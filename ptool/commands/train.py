"""`ptool train`: every TrainConfig field as a flag, a config file, then the shared engine."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from ptool.commands._config_options import with_config_options
from ptool.commands._options import JsonOpt, QuietOpt, examples

EXAMPLES = examples(
    "ptool train",
    "ptool train --data synthetic --shape 3x32x32 --model cnn --epochs 3 --out runs/synth",
    "ptool train --config run.yaml --lr 3e-4 --scheduler cosine --warmup-epochs 1",
    "ptool train --print-config > run.yaml",
    "torchrun --standalone --nproc_per_node 2 -m ptool train --device cpu",
)

ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", help="TOML or YAML file with any of the options below; flags win."),
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
    resolved = resolve_config(config, overrides)
    if print_config:
        from ptool.core.rundir import config_yaml

        values = resolved.to_dict()
        out.result(values, lambda: config_yaml(values).rstrip("\n"))
        return

    if resolved.out:  # an unwritable --out fails now, before seconds of imports
        from ptool.core.rundir import prepare_run_dir

        prepare_run_dir(resolved.out)

    from rich.markup import escape

    from ptool.core.engine import fit
    from ptool.ui.train_view import summary_table

    def log(line: str) -> None:  # one line per epoch, never wrapped
        out.err.print(escape(line), soft_wrap=True)

    summary = fit(resolved, quiet=quiet, log=log)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the job
        out.result(summary.to_dict(), lambda: summary_table(summary))


def register(app: typer.Typer) -> None:
    app.command(
        "train",
        epilog=EXAMPLES,
        help=train.__doc__,
        no_args_is_help=False,
    )(with_config_options()(train))
