"""The CLI contract shared by every command: help, version, lazy imports, errors."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
from importlib import metadata

import pytest
import torch
import typer

from tests.conftest import PTOOL, run_ptool

HEAVY = ("torch", "torchvision", "tensorboard", "matplotlib")


def _imported_modules(*args: str) -> set[str]:
    code = (
        "import sys, json\n"
        f"sys.argv = ['ptool', *{list(args)!r}]\n"
        "from ptool.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("args", [["--help"], ["convcalc", "--h", "32", "--k", "3", "--s", "2"]])
def test_fast_paths_never_import_heavy_modules(args):
    modules = _imported_modules(*args)
    assert "typer" in modules  # the probe really ran the CLI
    assert not [m for m in HEAVY if m in modules]


@pytest.mark.parametrize(
    ("args", "checker"),
    [
        (["quantize", "dynamic", "--dtype", "int4"], "ptool.core.quantize.options"),
        (["quantize", "static", "--device", "cuda"], "ptool.core.quantize.options"),
        (["prune", "--method", "l3"], "ptool.core.prune.options"),
    ],
)
def test_bad_quantize_and_prune_flags_are_refused_before_torch_is_imported(args, checker):
    """quantize checked its flags after importing torch and torch.ao (seconds) as prune did
    not: ptool.core.quantize imported its job module for the options' class."""
    modules = _imported_modules(*args, "missing.pt")
    assert checker in modules and "torch" not in modules


def test_training_and_evaluating_import_no_vision_or_compiler_stack(tmp_path):
    """torchmetrics brought in torchvision, torch._dynamo and scipy.signal (about 5 s) for
    every run; a run that needs none of them must not pay for them. (torch.optim's
    optimizers import torch._dynamo themselves, so training does.)"""
    run = str(tmp_path / "run")
    args = "train --data synthetic --shape 6 --samples 64 --epochs 1 --no-tensorboard --quiet"
    image_run = args.replace("--shape 6", "--shape 1x8x8")
    trained = _imported_modules(*image_run.split(), "--model", "cnn", "--out", run)
    assert (tmp_path / "run" / "last.pt").is_file()
    assert not {"torchvision", "torchmetrics", "scipy.signal"} & trained
    torch.save(torch.zeros(2, 1, 8, 8), tmp_path / "inputs.pt")
    for command, module in (
        (["eval", f"{run}/last.pt"], "ptool.core.evaluate"),
        (["predict", f"{run}/last.pt", str(tmp_path / "inputs.pt")], "ptool.core.predict"),
        (
            ["quantize", "dynamic", f"{run}/last.pt", "-o", str(tmp_path / "q.pt")],
            "ptool.core.quantize.ao",
        ),
        (["prune", f"{run}/last.pt", "-o", str(tmp_path / "p.pt")], "ptool.core.prune.masks"),
    ):  # the README's promise for a built-in model
        modules = _imported_modules(*command, "--json")
        assert module in modules
        assert not {"torchvision", "torchmetrics", "scipy.signal", "torch._dynamo"} & modules
    # refusals that need the data (a cnn for tabular data, a schedule too short for its
    # steps) come before any optimizer
    for refusal, module in (
        ("--model cnn", "ptool.core.models"),
        ("--model mlp --scheduler onecycle --pct-start 0.01", "ptool.core.schedules"),
    ):
        refused = _imported_modules(*args.split(), *refusal.split(), "--out", run + "2")
        assert module in refused and "torch._dynamo" not in refused
    assert not (tmp_path / "run2").exists()


def test_version_reads_torch_version_from_metadata():
    proc = run_ptool("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("ptool ")
    assert f"torch {metadata.version('torch')}" in proc.stdout


def test_python_dash_m_works():
    proc = subprocess.run(
        [sys.executable, "-m", "ptool", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("ptool ")


def test_help_lists_subcommands():
    proc = run_ptool("--help")
    assert proc.returncode == 0
    assert "convcalc" in proc.stdout


def _commands():
    from ptool.cli import app

    root = typer.main.get_command(app)
    ctx = typer.Context(root)
    for name in root.list_commands(ctx):
        command = root.get_command(ctx, name)
        yield name, command
        for sub, subcommand in getattr(command, "commands", {}).items():
            yield f"{name} {sub}", subcommand


def test_help_paragraphs_wrap_to_the_terminal_and_arguments_read_as_metavars():
    """Typer's rich mode keeps a docstring's line breaks; each paragraph must be one line so
    it wraps at any width. Arguments show as CKPT/FILE/... like the README, not [ckpt]."""
    seen = []
    for name, command in _commands():
        seen.append(name)
        assert "\n" not in command.help.replace("\n\n", ""), name
        for param in command.params:
            if param.param_type_name == "argument":
                assert param.metavar and param.metavar.isupper(), (name, param.name)
    assert {"train", "prune", "quantize static", "inspect-checkpoint"} <= set(seen)


def test_help_gives_the_defaults_each_command_uses():
    """resume, prune and QAT start from a run's config: train's defaults would mislead."""
    from ptool.core.quantize.options import QAT_DEFAULTS

    helps = {
        name: {
            p.name: p.help.replace("[dim]", "").replace("[/dim]", "")
            for p in command.params
            if p.help
        }
        for name, command in _commands()
    }
    assert helps["train"]["epochs"].endswith("(default: 10)")
    assert helps["train"]["out"].endswith("(default: runs/<timestamp>)")
    assert helps["resume"]["epochs"].endswith("(default: the run's)")
    assert helps["resume"]["out"].endswith("(default: the checkpoint's folder)")
    assert helps["resume"]["data"].endswith("from another path)")  # it was not listed
    assert helps["quantize qat"]["epochs"].endswith(f"(default: {QAT_DEFAULTS['epochs']})")
    assert helps["quantize qat"]["lr"].endswith(f"x {QAT_DEFAULTS['lr_factor']})")
    assert helps["prune"]["lr"].endswith("(default: the run's)")
    assert helps["prune"]["warmup_epochs"].endswith("(default: 0)")


@pytest.mark.parametrize(
    ("args", "message", "command"),
    [
        (["trian"], "No such command 'trian'. Did you mean 'train'?", "ptool"),
        (["train", "--bogus"], "No such option: --bogus", "ptool train"),
        (["train", "--epochs", "x"], "Invalid value for '--epochs'", "ptool train"),
        (["resume", "a", "b"], "Got unexpected extra argument(s) (b)", "ptool resume"),
        (
            ["quantize", "static", "--observer"],
            "Option '--observer' requires an argument",
            "ptool quantize static",
        ),
        (["convcalc", "--h"], "Option '--h' requires an argument", "ptool convcalc"),
        # an unset shell variable: read as ".", predict took every image below it, -o ""
        # wrote the default file and --init-from "" trained from scratch
        (["predict", "ckpt.pt", ""], "'INPUT': an empty value ('')", "ptool predict"),
        (["eval", "ckpt.pt", "-o", ""], "'--output' / '-o': an empty value", "ptool eval"),
        (["quantize", "dynamic", ""], "'CKPT': an empty value", "ptool quantize dynamic"),
        (["inspect-checkpoint", "a.pt", "--diff", ""], "'--diff'", "ptool inspect-checkpoint"),
        (["prune", "a.pt", "--only", ""], "'--only': an empty value", "ptool prune"),  # all
        (["quantize", "static", "--observer", ""], "'--observer'", "ptool quantize static"),
        (["train", "--config", ""], "'--config': an empty value", "ptool train"),
        # Click kept the last: a.yaml's options were dropped without a word
        (
            ["train", "--config", "a.yaml", "--config", "b.yaml"],
            "'--config': one file, given 2 (a.yaml, b.yaml): merge them into one",
            "ptool train",
        ),
        (["lr-plot", "--config", "a.yaml", "--config", "b.yaml"], "one file", "ptool lr-plot"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, message, command):
    """Typer's parsing errors take ptool's form (no box, no usage block): error, then hint."""
    proc = run_ptool(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("error: ") and message in lines[0]
    assert lines[1:] == [f"hint: {command} --help shows the usage"]


def test_unknown_options_get_only_close_suggestions():
    assert run_ptool("convcalc", "--h", "3", "--bogus").stderr.splitlines()[0] == (
        "error: No such option: --bogus"  # Click suggested "--groups, --s"
    )
    assert "--batch-size" in run_ptool("train", "--batchsize", "3").stderr.splitlines()[0]


@pytest.mark.parametrize("debug", [("--debug",), ()], ids=["flag", "env"])
def test_debug_adds_the_traceback_and_keeps_the_exit_code(debug):
    proc = run_ptool(
        *debug, "convcalc", "--h", "3", "--k", "5", env={"PTOOL_DEBUG": "" if debug else "1"}
    )
    assert proc.returncode == 2 and proc.stderr.startswith("Traceback (most recent call last):")
    assert proc.stderr.splitlines()[-2].startswith("error: h: kernel size can't be greater")


def test_a_group_without_its_command_prints_its_help():
    proc = run_ptool("quantize")
    assert proc.returncode == 2  # Click's convention: help instead of a command is a usage error
    assert "dynamic" in proc.stdout + proc.stderr and "error:" not in proc.stderr


def test_long_error_stays_one_line_in_a_pipe():
    missing = "/no/such/" + "long-directory-name/" * 6 + "ckpt.pt"
    proc = run_ptool("inspect-checkpoint", missing)
    assert proc.returncode == 1
    first = proc.stderr.splitlines()[0]
    assert first.startswith("error:") and missing in first


def test_a_data_loader_workers_error_is_its_original_last_line():
    """What torch's ExceptionWrapper.reraise builds: the class, given the worker's traceback."""
    from ptool.core.data.image_folder import UnreadableImage
    from ptool.ui.errors import describe

    text = (
        "Caught UnreadableImage in DataLoader worker process 0.\n"
        "Original Traceback (most recent call last):\n"
        '  File "worker.py", line 349, in _worker_loop\n'
        "ptool.core.data.image_folder.UnreadableImage: cat/bad.png: not an image Pillow reads\n"
    )
    message, hint, code = describe(UnreadableImage(text))
    assert message == "cat/bad.png: not an image Pillow reads"
    assert (hint, code) == ("remove or replace that file", 1)  # a data error, not a ptool bug
    worker = text.replace("UnreadableImage", "KeyError")
    assert describe(ValueError(worker))[0] == (
        "unexpected ValueError: ptool.core.data.image_folder.KeyError: cat/bad.png: not an "
        "image Pillow reads"
    )
    assert describe(RuntimeError("first\nsecond"))[0] == "unexpected RuntimeError: first"


def test_a_tensor_too_large_for_memory_is_out_of_memory_not_a_bug_to_report():
    """`--hidden 100000000` said "unexpected RuntimeError: [enforce fail at alloc_cpu.cpp:127]
    ... DefaultCPUAllocator: can't allocate memory ..." and asked for a bug report."""
    import torch

    from ptool.ui.errors import describe

    with pytest.raises(RuntimeError) as raised:
        torch.empty(10**17)  # beyond any address space: torch's own refusal, its wording
    assert describe(raised.value) == (
        "out of memory: a tensor of 400,000,000,000,000,000 bytes could not be allocated",
        "try a smaller model or --batch-size",
        1,
    )


def test_the_file_systems_answers_about_a_path_are_one_line_not_a_bug_to_report(tmp_path):
    """A name too long, a file where a folder should be: "unexpected OSError ... report it";
    a write past `ulimit -f` too."""
    from ptool.ui.errors import describe

    for path in (tmp_path / ("a" * 300), tmp_path / "file" / "x"):
        (tmp_path / "file").write_text("")
        with pytest.raises(OSError) as raised:
            path.write_text("")
        message, hint, code = describe(raised.value)
        assert message.endswith(f": {path}") and (hint, code) == ("check the path", 1)
    assert describe(OSError(errno.ENAMETOOLONG, "File name too long", "x"))[0] == (
        "file name too long: x"
    )  # not every error about a path: one ptool should have foreseen is still a bug to report
    assert describe(FileExistsError(errno.EEXIST, "File exists", "x"))[0].startswith("unexpected")
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (10, hard))
    try:
        with pytest.raises(OSError) as raised, open(tmp_path / "big", "wb", buffering=0) as f:
            f.write(b"x" * 100)
            f.write(b"x" * 100)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert describe(raised.value) == (
        "a file reached the file size limit (ulimit -f)",
        "raise the limit (ulimit -f unlimited), or write elsewhere",
        1,
    )


def test_closed_standard_streams_and_an_ascii_stdout_are_no_failure(tmp_path):
    """`2>&-` or `>&-` (cron, daemons): every command failed on Python's None stream (a usage
    error then exited 1); an ASCII stdout failed on a result naming `é.pt` after the work."""
    script = (
        f"{PTOOL} convcalc --h 8 --k 30 2>&-; echo usage=$?; "
        f"{PTOOL} convcalc --h 8 --k 3 >&-; echo result=$?; "
        f"{PTOOL} convcalc --stdin <&-; echo stdin=$?"
    )
    closed = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert closed.stdout.split() == ["usage=2", "result=0", "stdin=0"], closed.stderr
    torch.save({"w": torch.zeros(2)}, tmp_path / "é.pt")
    ascii_out = run_ptool("inspect-checkpoint", "é.pt", cwd=tmp_path,
                          env={"PYTHONIOENCODING": "ascii"})  # fmt: skip
    assert ascii_out.returncode == 0 and "\\xe9.pt" in ascii_out.stdout, ascii_out.stderr


def test_columns_0_means_no_width_not_an_empty_screen():
    """Some CI runners set COLUMNS=0; rich then printed nothing, results and errors alike."""
    result = run_ptool("convcalc", "--h", "32", "--k", "3", env={"COLUMNS": "0"})
    assert result.returncode == 0 and "32 -> 30" in result.stdout
    result = run_ptool("convcalc", "--h", "32", "--k", "99", env={"COLUMNS": "0"})
    assert result.returncode == 2 and result.stderr.startswith("error: ")


def test_results_in_a_pipe_carry_no_trailing_padding_whatever_columns_says():
    result = run_ptool("convcalc", "--h", "32", "--k", "3", env={"COLUMNS": "200"})
    assert result.returncode == 0 and "32 -> 30" in result.stdout
    assert [line for line in result.stdout.splitlines() if line != line.rstrip()] == []


@pytest.mark.parametrize(
    ("environ", "named"),
    [({"WORLD_SIZE": "2"}, "RANK=(unset)"), ({"WORLD_SIZE": "abc", "RANK": "0"}, "WORLD_SIZE=abc")],
)
def test_a_stray_torchrun_variable_is_a_usage_error(environ, named, tmp_path):
    """A WORLD_SIZE left in a shell crashed ("unexpected KeyError", or a traceback from the
    error reporter itself); nothing is trained or created."""
    out = tmp_path / "run"
    args = ("--data", "synthetic", "--shape", "4", "--samples", "40", "--model", "mlp")
    result = run_ptool("train", *args, "--epochs", "1", "--out", str(out), env=environ)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {named} in the environment")
    assert "unexpected" not in result.stderr and not out.exists()


def test_a_stray_rank_does_not_silence_a_lone_process(tmp_path):
    result = run_ptool("train", "--data", "synthetic", "--shape", "4", "--samples", "40",
                       "--model", "mlp", "--epochs", "1", "--no-tensorboard", "--json",
                       "--out", str(tmp_path / "run"), env={"RANK": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "completed"


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_torchrun_job_says_a_usage_error_once_and_names_a_failures_rank(
    rank, monkeypatch, capsys
):
    from ptool.core.engine import NonFiniteLoss
    from ptool.core.errors import PtoolError, UsageError
    from ptool.ui.errors import report

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    assert report(UsageError("--lr must be > 0")) == 2
    said = capsys.readouterr().err
    assert said == ("error: --lr must be > 0\n" if rank == "0" else "")
    assert report(PtoolError("cannot read x.csv")) == 1
    assert capsys.readouterr().err == f"error: (rank {rank}) cannot read x.csv\n"
    # a divergence is decided on the all-reduced loss: every rank's, said once (was per rank)
    assert report(NonFiniteLoss("loss is nan at step 2", hint="lower --lr")) == 1
    said = capsys.readouterr().err
    assert said == ("error: loss is nan at step 2\nhint: lower --lr\n" if rank == "0" else "")
    monkeypatch.setenv("WORLD_SIZE", "1")  # a lone process: no rank to name
    assert report(PtoolError("cannot read x.csv")) == 1
    assert capsys.readouterr().err == "error: cannot read x.csv\n"


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler for the test, and whatever was there afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("ctrl_c", [True, False], ids=["after-ctrl-c", "plain"])
def test_an_odd_error_after_a_ctrl_c_is_the_interrupt(ctrl_c, python_sigint_handler, monkeypatch):
    """A Ctrl-C that an import swallowed half-way through surfaces later as an error that makes
    no sense (seen: RecursionError, "module 'numpy._core' has no attribute"): exit 130 quietly,
    as for any Ctrl-C, not "unexpected ... report it"."""
    from ptool import cli

    def broken_import(**_):
        if ctrl_c:
            with contextlib.suppress(KeyboardInterrupt):  # swallowed, as torch's imports can
                os.kill(os.getpid(), signal.SIGINT)
        raise AttributeError("module 'numpy._core' has no attribute '_multiarray_umath'")

    monkeypatch.setattr(cli, "app", broken_import)
    monkeypatch.setattr(cli, "command_path", lambda _args: "ptool")
    reported = []
    monkeypatch.setattr(cli, "report", lambda exc, path: reported.append(exc) or 1)
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == (130 if ctrl_c else 1)
    assert len(reported) == (0 if ctrl_c else 1)


def test_help_shows_flags_without_a_value():
    """Typer 0.29 writes `--quiet -q <bool>`, as if `--quiet true` were how to write it."""
    for command in ("train", "resume", "eval", "predict", "quantize static", "convcalc", "prune"):
        proc = run_ptool(*command.split(), "--help", env={"COLUMNS": "200"})
        assert proc.returncode == 0, proc.stderr
        (quiet,) = [line for line in proc.stdout.splitlines() if "--quiet" in line]
        assert "<bool>" not in proc.stdout, command
        assert quiet.split()[:4] == ["│", "--quiet", "-q", "Silence"], quiet


def test_help_in_a_pipe_cuts_no_flag_name_or_choice():
    """`ptool train --help | grep` met `--no-persistent-wo…` and `[sgd|adam|adamw|rms…`."""
    for command in ("prune", "quantize qat", "train"):
        proc = run_ptool(*command.split(), "--help", env={"COLUMNS": ""})
        assert proc.returncode == 0 and "…" not in proc.stdout, command
    assert "--no-persistent-workers" in proc.stdout  # train's
    assert "[sgd | adam | adamw | rmsprop]" in proc.stdout


def test_torchrun_takes_no_ptool_option_for_its_own_but_monitor():
    """torchrun's argparse matches abbreviations of its options anywhere on the line:
    `--monitor` stops it (ambiguous with --monitor-interval); a unique prefix would be taken
    silently. The README's way round: `-m ptool -- train ...`."""
    import typer.main
    from torch.distributed.run import get_args_parser

    from ptool.cli import app

    parser = get_args_parser()
    theirs = [o for action in parser._actions for o in action.option_strings]
    root = typer.main.get_command(app)
    ours = {
        option
        for name in ("train", "resume")
        for param in root.get_command(None, name).params
        for option in param.opts
        if option.startswith("--")
    }
    clashes = sorted(o for o in ours if o != "--help" and any(t.startswith(o) for t in theirs))
    assert clashes == ["--monitor"]
    args = ["--standalone", "--nproc_per_node", "2", "-m", "ptool", "--", "train"]
    parsed = parser.parse_args([*args, "--monitor", "val/accuracy"])
    assert parsed.training_script_args == ["train", "--monitor", "val/accuracy"]
