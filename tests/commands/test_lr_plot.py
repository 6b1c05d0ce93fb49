"""`ptool lr-plot` end to end: series against the torch schedulers and against what a real
`ptool train` run logged to TensorBoard; sources, outputs, refusals."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from torch.optim import lr_scheduler
from typer.testing import CliRunner

from ptool.cli import app
from ptool.core.errors import UsageError
from tests.conftest import run_ptool

pytestmark = pytest.mark.filterwarnings("ignore:Detected call of")


def lr_plot(*args, cwd=None):
    """In-process run (torch imported once for the whole file)."""
    result = CliRunner().invoke(app, ["lr-plot", *args], catch_exceptions=True)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.stdout


def series(*args):
    return json.loads(lr_plot(*args, "--json"))["series"]


def _stepped(make, steps, *, per_step_every=1):
    """lr of each optimizer step with a torch scheduler stepped every `per_step_every` steps."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = make(opt)
    lrs = []
    for step in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        if (step + 1) % per_step_every == 0:
            sched.step()
    return lrs


def test_readme_example_equals_sequential_lr_stepped_by_hand():
    (line,) = series(
        "cosine", "--lr", "0.1", "--epochs", "100", "--eta-min", "1e-4", "--warmup-epochs", "5"
    )
    expected = _stepped(
        lambda o: lr_scheduler.SequentialLR(
            o,
            [lr_scheduler.LinearLR(o, 0.01, 1.0, 5), lr_scheduler.CosineAnnealingLR(o, 95, 1e-4)],
            milestones=[5],
        ),
        100,
    )
    assert [row["lr"] for row in line["rows"]] == pytest.approx(expected, rel=1e-12)
    assert (line["steps_per_epoch"], line["interval"], line["warmup_end_step"]) == (1, "epoch", 5)
    assert line["peak"] == pytest.approx(0.1) and line["peak_step"] == 5


def test_per_step_schedule_from_samples_and_batch_size():
    (line,) = series(
        "onecycle", "--lr", "0.1", "--epochs", "3", "--samples", "1000", "--batch-size", "100",
        "--accumulate", "2",
    )  # fmt: skip
    assert line["steps_per_epoch"] == 5 and len(line["rows"]) == 15
    expected = _stepped(lambda o: lr_scheduler.OneCycleLR(o, 0.1, total_steps=15), 15)
    assert [row["lr"] for row in line["rows"]] == pytest.approx(expected, rel=1e-12)
    assert line["rows"][7]["epoch"] == pytest.approx(1.4)


def test_csv_on_stdout_and_in_a_file(tmp_path):
    args = ["step", "--step-size", "1", "--epochs", "2", "--steps-per-epoch", "2"]
    rows = list(csv.DictReader(io.StringIO(lr_plot(*args, "--csv", "--group-lrs", "0.1,0.01"))))
    assert list(rows[0]) == ["step", "epoch", "lr", "group", "series"]
    assert [(r["group"], r["step"]) for r in rows] == [(g, s) for g in "01" for s in "0123"]
    lrs = [0.1, 0.1, 0.01, 0.01, 0.01, 0.01, 0.001, 0.001]
    assert [float(r["lr"]) for r in rows] == pytest.approx(lrs)
    out = tmp_path / "new" / "folder" / "lr.csv"  # created, as eval -o creates its folder
    lr_plot(*args, "-o", str(out), "--quiet")
    assert out.read_text().splitlines()[1] == "0,0.0,0.001,0,step"
    line, _ = series(*args, "--group-lrs", "0.1,0.01")  # JSON: the same rows, every step
    csv_rows = [(int(r["step"]), float(r["epoch"]), float(r["lr"])) for r in rows[:4]]
    assert [(r["step"], r["epoch"], r["lr"]) for r in line["rows"]] == csv_rows


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_figures(tmp_path, suffix):
    out = tmp_path / f"lr{suffix}"
    lr_plot("exponential", "--gamma", "0.9", "--epochs", "20", "--log-y", "-o", str(out))
    magic = {".png": b"\x89PNG", ".svg": b"<?xml", ".pdf": b"%PDF"}[suffix]
    assert out.read_bytes().startswith(magic)


def test_terminal_chart_and_key_numbers():
    text = lr_plot(
        "cosine-warm-restarts", "--t-0", "10", "--epochs", "40", "--warmup-epochs", "2", "--chart"
    )
    assert any("\u2800" < ch <= "\u28ff" for ch in text)  # braille cells
    assert "epoch" in text and "learning rate: cosine-warm-restarts" in text
    row = text.splitlines()[-1].split()
    assert row[0] == "cosine-warm-restarts" and row[-4:] == ["2", "12,", "22,", "32"]
    plain = lr_plot("cosine", "--epochs", "5")  # not a terminal: the numbers only
    assert not any("\u2800" <= ch <= "\u28ff" for ch in plain) and "start" in plain


def test_compare_labels_each_spec_and_shares_outside_flags():
    lines = series("--epochs", "90", "--compare", "cosine --lr 0.1", "step --lr 0.2 --step-size 30")
    assert [line["label"] for line in lines] == ["cosine --lr 0.1", "step --lr 0.2 --step-size 30"]
    assert [len(line["rows"]) for line in lines] == [90, 90]
    assert lines[1]["rows"][30]["lr"] == pytest.approx(0.02)
    with pytest.raises(UsageError, match="outside the quotes"):
        lr_plot("--compare", "cosine -o x.png")
    with pytest.raises(UsageError, match="No such option"):
        lr_plot("--compare", "cosine --bogus 1")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("cosine", "--gamma", "0.5"), "--gamma is an option of the step, multistep and exp"),
        (("step", "--t-max", "4"), "--t-max is an option of the cosine scheduler"),
        (("cyclic", "--steps-per-epoch", "4", "--cyclic-gamma", "0.9"), "decays exp_range's"),
        (("cosine", "--metric-file", "m.csv"), "--metric-file feeds plateau's metric"),
        (("--compare", "step", "cosine --max-lr 5"), "--max-lr is an option of the onecycle"),
    ],
)
def test_another_schedules_flag_is_refused_not_ignored(tmp_path, monkeypatch, args, message):
    """Each plotted the plain schedule, as if the flag had been used; train refuses them."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.csv").write_text("val/loss\n1\n0.5\n0.4\n")
    with pytest.raises(UsageError, match=message) as refused:
        lr_plot(*args, "--epochs", "3")
    assert refused.value.hint.startswith("drop it")


def test_compare_specs_inherit_outside_flags_the_schedule_does_not_read():
    """--gamma outside the quotes is step's; the cosine spec inherits it without a refusal."""
    cosine, step = series(
        "--epochs", "3", "--gamma", "0.5", "--compare", "cosine", "step --step-size 1"
    )
    assert step["rows"][1]["lr"] == pytest.approx(0.0005)  # --step-size 1: x0.5 per epoch
    assert [row["lr"] for row in cosine["rows"]] == [
        row["lr"] for row in series("cosine", "--epochs", "3")[0]["rows"]
    ]


def test_every_schedule_flag_of_train_is_taken_so_a_pasted_command_line_runs():
    """The momentum-cycle flags do not move the lr, but lr-plot refused them ("No such
    option"), also inside --compare."""
    from ptool.commands.lr_plot import SCHEDULE_FIELDS
    from ptool.core.config import FIELDS

    train_flags = {n for n, f in FIELDS.items() if f.metadata["section"] == "scheduler"}
    assert train_flags - {"scheduler"} <= set(SCHEDULE_FIELDS)
    plain, bounded, uncycled = series(
        "--epochs", "3", "--steps-per-epoch", "4", "--compare", "onecycle --lr 0.1",
        "onecycle --lr 0.1 --base-momentum 0.8 --max-momentum 0.9",
        "onecycle --lr 0.1 --no-cycle-momentum",
    )  # fmt: skip
    assert bounded["rows"] == plain["rows"] == uncycled["rows"]


def test_plateau_needs_and_uses_a_metric(tmp_path):
    with pytest.raises(UsageError, match="metric"):
        lr_plot("plateau", "--epochs", "5")
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("\n".join(["1.0"] * 8))
    (line,) = series("plateau", "--epochs", "8", "--patience", "2", "--metric-file", str(metrics))
    expected = []
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = lr_scheduler.ReduceLROnPlateau(opt, patience=2)
    for _ in range(8):
        expected.append(opt.param_groups[0]["lr"])
        sched.step(1.0)
    assert [row["lr"] for row in line["rows"]] == pytest.approx(expected)
    assert line["end"] < line["start"]


def test_config_file_and_checkpoint_sources(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('scheduler = "multistep"\nmilestones = [2, 4]\nepochs = 5\nlr = 0.1\n')
    (line,) = series("--config", str(toml), "--gamma", "0.5")
    assert [row["lr"] for row in line["rows"]] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    from ptool.core.config import TrainConfig

    ckpt = tmp_path / "c.pt"
    config = TrainConfig(scheduler="onecycle", lr=0.1, epochs=2, batch_size=10)
    torch.save(
        {
            "format": "ptool.checkpoint",
            "format_version": 1,
            "config": config.to_dict(),
            "data_info": {"train_size": 95},
            "optimizer_state_dict": {"param_groups": [{}, {}]},
        },
        ckpt,
    )
    lines = series("--from-checkpoint", str(ckpt))
    assert [(line["group"], line["steps_per_epoch"], len(line["rows"])) for line in lines] == [
        (0, 10, 20),
        (1, 10, 20),
    ]


@pytest.mark.parametrize(
    "args",
    [
        ("step", "--lr", "-0.1"),
        ("cosine", "--t-max", "0"),
        ("multistep", "--milestones", "30,10"),
        ("onecycle", "--epochs", "10"),  # no steps per epoch: no total step count
        ("cosine", "cosine"),
    ],
)
def test_impossible_parameters_are_usage_errors(args):
    with pytest.raises(UsageError):
        lr_plot(*args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("linear", "--start-factor", "0"), r"--start-factor must be in \(0, 1\], got 0.0"),
        (("cosine", "--lr", "nan"), "--lr must be finite and positive, got nan"),
        (("cosine", "--lr", "1e400"), "--lr must be finite and positive, got inf"),
        (("cosine", "--group-lrs", "nan,0.1"), "--group-lrs must be finite and positive, got nan"),
        (("plateau", "--patience", "-2"), "--patience must be at least 0, got -2"),
        (("--compare", 'cosine "x'), "--compare 'cosine \"x': no closing quotation"),
        (("cosine", "--warmup-epochs", "20"), "a 20-epoch warmup is not shorter than the 3-epoch"),
        (("constant", "--warmup-epochs", "3"), "the lr would never reach 0.001"),
        (("step", "--warmup-steps", "6", "--steps-per-epoch", "2"), "6-step warmup .* 6-step run"),
        (("cosine", "--t-max", "2", "--schedule-epochs", "2"), "give it or --schedule-epochs"),
        (("cosine", "--schedule-epochs", "0"), "--schedule-epochs must be at least 1, got 0"),
        (
            ("onecycle", "--schedule-epochs", "2", "--steps-per-epoch", "9"),
            "onecycle cannot step past its end: --schedule-epochs 2 is below --epochs 3",
        ),
    ],
)
def test_bad_values_are_one_line_usage_errors(args, message):
    with pytest.raises(UsageError, match=message) as refused:
        lr_plot(*args, "--epochs", "3")
    assert "\n" not in str(refused.value)


def test_console_script_refuses_a_binary_metric_file_and_a_broken_run_config(tmp_path):
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00bad\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("garbage: [\n")
    for args in (["plateau", "--epochs", "3", "--metric-file", "bin.csv"], ["--from-run", "run"]):
        result = run_ptool("lr-plot", *args, cwd=tmp_path)
        assert result.returncode == 2 and result.stdout == "", result.stderr
        lines = result.stderr.splitlines()
        assert lines[0].startswith("error: ") and len(lines) <= 2, result.stderr
        assert all(line.startswith(("error: ", "hint: ")) for line in lines)


@pytest.mark.parametrize("name", ["lr.csv", "lr.png"])
def test_a_full_disk_leaves_the_previous_output_whole(tmp_path, monkeypatch, name):
    """The CSV was written in place: a full disk left it cut mid-row, the old one gone."""
    from ptool.core import rundir
    from ptool.core.errors import PtoolError
    from tests.core.test_resume import _FillsUp

    out = tmp_path / name
    out.write_text("the previous output\n")

    def full_disk(path, mode="r", *args, **kwargs):  # 600 bytes of the new file fit
        if ".tmp-" not in str(path):
            return open(path, mode, *args, **kwargs)
        return _FillsUp(path) if "b" in mode else io.TextIOWrapper(_FillsUp(path))

    monkeypatch.setattr(rundir, "open", full_disk, raising=False)  # atomic_write's
    with pytest.raises(PtoolError, match=f"could not write {out}: No space left on device$"):
        lr_plot("cosine", "--epochs", "50", "--steps-per-epoch", "100", "-o", str(out))
    assert out.read_text() == "the previous output\n"
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch):
    """A file where -o's folder should be failed after the schedule was computed, as
    "error: no such file or directory"; matplotlib's other formats said the suffixes."""
    (tmp_path / "blocker").write_text("a file")
    monkeypatch.setattr("ptool.commands.lr_plot._schedule_lines", None)  # never reached
    for target, message in [
        (
            "blocker/lr.csv",
            f"-o {tmp_path}/blocker/lr.csv: {tmp_path}/blocker is a file, not a folder",
        ),
        ("lr.jpg", f"-o {tmp_path}/lr.jpg: expected a .png, .svg, .pdf or .csv file"),
    ]:
        with pytest.raises(UsageError) as err:
            lr_plot("cosine", "--epochs", "3", "-o", str(tmp_path / target))
        assert str(err.value) == message


def test_console_script_refuses_with_one_line_and_exit_2():
    result = run_ptool("lr-plot", "onecycle", "--lr", "0.1", "--epochs", "10")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: onecycle") and "Traceback" not in result.stderr
    assert "hint: give --steps-per-epoch" in result.stderr


@pytest.mark.parametrize(
    "flags",
    [
        ["--scheduler", "onecycle", "--warmup-steps", "5", "--accumulate", "2"],
        ["--scheduler", "cosine", "--warmup-epochs", "1", "--no-decay-norm-bias"],
        # one max_lr / base_lr for every group, as train builds CyclicLR
        ["--scheduler", "cyclic", "--step-size-up", "5", "--no-decay-norm-bias"],
        # plateau replays the monitored metric's logged epoch values (max mode: a cut per epoch)
        [
            "--scheduler",
            "plateau",
            "--monitor",
            "train/loss",
            "--mode",
            "max",
            "--patience",
            "0",
            "--log-every-steps",
            "1",
        ],  # fmt: skip
    ],
)
def test_series_equals_the_lr_a_real_train_run_logged(tmp_path, flags):
    """The oracle: `ptool train` logs the lr of every optimizer step to TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    trained = CliRunner().invoke(
        app,
        ["train", "--data", "synthetic", "--samples", "200", "--shape", "8", "--model", "mlp",
         "--epochs", "3", "--batch-size", "16", "--lr", "0.05", "--seed", "0", "--quiet",
         "--out", str(run), *flags],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    lines = series("--from-run", str(run))
    computed = [line for line in lines if line["kind"] == "schedule"]
    tags = ["lr"] + [f"lr/group{i}" for i in range(1, len(computed))]
    assert len(computed) == (2 if "--no-decay-norm-bias" in flags else 1)
    for line, tag in zip(computed, tags, strict=True):
        logged = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert len(logged) == len(line["rows"]) > 3 * 3
        assert [step for step, _ in logged] == [row["step"] for row in line["rows"]]
        # TensorBoard stores float32: equal step for step up to that rounding
        assert [v for _, v in logged] == pytest.approx(
            [row["lr"] for row in line["rows"]], rel=1e-6
        )


def test_constant_with_warmup_ramps_then_holds_like_linear_lr():
    """`constant`/`none` + warmup used to stay at warmup_start_factor x lr for the whole run."""
    for name in ("constant", "none"):
        (line,) = series(name, "--lr", "0.1", "--epochs", "6", "--warmup-epochs", "2")
        expected = _stepped(lambda o: lr_scheduler.LinearLR(o, 0.01, 1.0, 2), 6)
        assert [row["lr"] for row in line["rows"]] == pytest.approx(expected, rel=1e-12)
        assert expected[2:] == pytest.approx([0.1] * 4)  # the oracle reaches --lr and holds it
        assert (
            line["peak"] == pytest.approx(0.1) and line["peak_step"] == line["warmup_end_step"] == 2
        )


def test_a_metric_file_short_of_the_epochs_is_refused(tmp_path):
    metrics = tmp_path / "m.csv"
    metrics.write_text("1.0\n0.8\n0.8\n")
    with pytest.raises(UsageError, match="holds 3 metric values for 8 epochs") as refused:
        lr_plot("plateau", "--epochs", "8", "--metric-file", str(metrics))
    assert refused.value.hint == "give --epochs 3, or a value for every epoch"
    assert len(series("plateau", "--epochs", "2", "--metric-file", str(metrics))[0]["rows"]) == 2


def test_a_run_that_logged_fewer_epochs_warns_on_stderr(tmp_path):
    """A run stopped early: plotted to its configured end, the padding said on stderr."""
    from torch.utils.tensorboard import SummaryWriter

    (tmp_path / "config.yaml").write_text("scheduler: plateau\nepochs: 5\nlr: 0.1\n")
    writer = SummaryWriter(str(tmp_path / "tensorboard"))
    for step in range(2):
        writer.add_scalar("lr", 0.1, step)
        writer.add_scalar("val/loss", 1.0, step + 1)
    writer.close()
    result = CliRunner().invoke(app, ["lr-plot", "--from-run", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        f"warning: {tmp_path} logged val/loss for 2 of 5 epochs; the plot repeats its last "
        "value for the other 3\n"
    )
    assert len(json.loads(result.stdout)["series"][0]["rows"]) == 5


def test_compare_labels_stay_whole_in_a_pipe():
    specs = ("multistep --lr 0.1 --milestones 1,2", "cosine-warm-restarts --lr 0.1 --t-0 1")
    result = run_ptool("lr-plot", "--epochs", "3", "--compare", *specs, env={"COLUMNS": ""})
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert len(rows) == 3 and [row.split("  ")[0] for row in rows[1:]] == list(specs)


def _y_labels(chart):
    return [line.split("\u2524")[0].strip() for line in chart.splitlines() if "\u2524" in line]


def test_chart_tick_labels_read_small_values():
    """Fixed decimals read 4e-7 as 0.000000; ticks sit on round values, whole decades on a
    log axis."""
    log = _y_labels(lr_plot("exponential", "--gamma", "0.5", "--lr", "0.1", "--epochs", "20",
                            "--log-y", "--chart"))  # fmt: skip
    assert log == ["0.1", "0.01", "0.001", "0.0001", "1e-5", "1e-6"]
    small = _y_labels(lr_plot("linear", "--lr", "1e-6", "--start-factor", "0.4", "--epochs", "3",
                              "--total-iters", "2", "--chart"))  # fmt: skip
    assert small == ["1e-6", "8e-7", "6e-7", "4e-7"]
    constant = _y_labels(lr_plot("constant", "--lr", "1e-3", "--epochs", "3", "--chart"))
    assert "0.001" in constant and not any(label.startswith("-") for label in constant)
    # an lr of 0 has no place on a log axis: left out, not a crash
    zero = lr_plot("polynomial", "--total-iters", "2", "--epochs", "4", "--log-y", "--chart")
    assert _y_labels(zero)[0] == "0.001"


def test_chart_on_an_output_without_braille_gives_the_key_numbers():
    proc = run_ptool(
        "lr-plot", "cosine", "--epochs", "5", "--chart", env={"PYTHONIOENCODING": "ascii"}
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "--chart: the output's encoding (ascii) has no braille\n"
    assert proc.stdout.startswith("series")


def test_chart_of_a_run_coded_line_equals_the_chart_of_every_step():
    """Lines hold an lr per run of equal values; drawn as if they held one per step."""
    from ptool.core.config import TrainConfig
    from ptool.core.lr_plot import Line, schedule_lines
    from ptool.core.schedules import LRRuns
    from ptool.ui.lr_plot_view import terminal_chart

    config = TrainConfig(scheduler="cosine-warm-restarts", t_0=3, epochs=8, warmup_epochs=1)
    (line,) = schedule_lines(config, label="wr", steps_per_epoch=40)
    rows = list(line.runs.rows())
    every_step = LRRuns([s for s, _ in rows], [1] * len(rows), [lr for _, lr in rows])
    assert len(line.runs.lrs) == 8 and len(rows) == 320
    for x_axis in ("step", "epoch"):
        for log_y in (False, True):
            charts = [
                terminal_chart([drawn], x_axis=x_axis, log_y=log_y, title="t", width=100, height=22)
                for drawn in (line, Line("wr", 0, "schedule", 40, every_step))
            ]
            assert charts[0] == charts[1]


def test_a_nan_metric_is_a_bad_epoch_as_for_torchs_plateau(tmp_path):
    metrics = tmp_path / "m.csv"
    values = [1.0, float("nan"), float("nan"), 0.5, float("nan"), float("nan")]
    metrics.write_text("val/loss\n" + "\n".join(map(str, values)) + "\n")
    (line,) = series("plateau", "--epochs", "6", "--patience", "1", "--metric-file", str(metrics))
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = lr_scheduler.ReduceLROnPlateau(opt, patience=1)
    expected = []
    for value in values:
        expected.append(opt.param_groups[0]["lr"])
        sched.step(value)
    assert [row["lr"] for row in line["rows"]] == pytest.approx(expected, rel=1e-12)
    assert line["end"] == pytest.approx(1e-4)  # cut after two nan epochs (skipped: kept)


TRAIN = ["train", "--data", "synthetic", "--samples", "64", "--shape", "8", "--model", "mlp",
         "--batch-size", "64", "--quiet"]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        # 10 optimizer steps: onecycle's warm-up ends at step 0 (OneCycleLR divided by zero)
        (
            ["onecycle", "--epochs", "10", "--pct-start", "0.1"],
            "error: --pct-start 0.1 leaves one of the phases of onecycle's 10 steps empty; "
            "give --pct-start between 0.1 and 1 (exclusive), or more steps",
        ),
        # three phases of 5 steps: the last one empty (train divided by zero at its end)
        (
            ["onecycle", "--epochs", "5", "--pct-start", "0.6", "--three-phase"],
            "error: --pct-start 0.6 leaves one of the phases of onecycle's 5 steps empty",
        ),
        (
            ["onecycle", "--epochs", "2", "--base-momentum", "0.9", "--max-momentum", "0.8"],
            "error: --base-momentum 0.9 is above --max-momentum 0.8",
        ),
        (
            ["plateau", "--epochs", "2", "--scheduler-interval", "step"],
            "error: --scheduler-interval step: plateau steps once per epoch on val/loss",
        ),
    ],
)
def test_train_and_lr_plot_refuse_the_same_schedule_in_one_line(tmp_path, flags, message):
    """Each was plotted by lr-plot (or crashed it) while train trained it, or crashed."""
    name, *options = flags
    trained = run_ptool(*TRAIN, "--scheduler", name, *options, "--out", str(tmp_path / "run"))
    plotted = run_ptool("lr-plot", name, *options, "--steps-per-epoch", "1")
    for result in (trained, plotted):
        assert result.returncode == 2 and result.stdout == "", result.stderr
        assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert trained.stderr == plotted.stderr
    assert not (tmp_path / "run").exists()  # refused before training started


@pytest.mark.parametrize("name", ["onecycle", "cyclic"])
def test_group_lrs_that_the_schedule_would_overwrite_are_refused(name):
    """OneCycleLR and CyclicLR set every group's lr from one max_lr (base_lr): the plot showed
    the groups' lrs ignored, as identical lines."""
    result = run_ptool(
        "lr-plot", name, "--lr", "0.1", "--epochs", "2", "--steps-per-epoch", "4",
        "--group-lrs", "0.1,0.01",
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith(f"error: --group-lrs: {name} sets every parameter group's lr")
    assert result.stderr.count("\n") == 1 and "drop --group-lrs" in result.stderr
