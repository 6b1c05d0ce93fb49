"""`ptool eval` end to end: the figures `ptool train` logged, reports, comparisons, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.commands._inprocess import run_main
from tests.conftest import run_ptool


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """`ptool train` for 2 epochs into ./runs/tiny of a fresh folder."""
    root = tmp_path_factory.mktemp("eval")
    args = "--data synthetic --shape 1x8x8 --samples 200 --model cnn --epochs 2 --seed 0"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setattr("sys.argv", ["ptool", "train", *args.split(), "--out", "runs/tiny", "-q"])
        with pytest.raises(SystemExit) as exited:
            from ptool.cli import main

            main()
    assert exited.value.code in (0, None)
    return root


@pytest.fixture
def ptool_in(workdir, monkeypatch, capsys):
    return lambda *args: run_main(*args, cwd=workdir, monkeypatch=monkeypatch, capsys=capsys)


def test_eval_reports_the_metrics_training_logged_for_that_epoch(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_ptool("eval", "runs/tiny/last.pt", "--json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    ckpt = torch.load(workdir / "runs/tiny/last.pt", weights_only=True)
    assert (report["epoch"], report["split"], report["kind"]) == (2, "val", "float")
    for name in ("loss", "accuracy", "precision", "recall", "f1"):
        assert report["metrics"][name] == pytest.approx(ckpt["metrics"][f"val/{name}"], rel=1e-5)
    events = EventAccumulator(str(workdir / "runs/tiny/tensorboard")).Reload()
    (step,) = [e.step for e in events.Scalars("epoch") if e.value == 2]
    for name in ("loss", "accuracy"):
        (logged,) = [e.value for e in events.Scalars(f"val/{name}") if e.step == step]
        assert report["metrics"][name] == pytest.approx(logged, rel=1e-5)
    assert len(report["per_class"]) == 10 and len(report["confusion_matrix"]) == 10
    assert report["samples_per_s"] > 0 and report["batch_latency_ms"] > 0


def test_default_checkpoint_report_and_confusion_png(workdir, ptool_in):
    result = ptool_in("eval", "-o", "cm.png")
    assert result.returncode == 0, result.stderr
    assert "evaluating the newest run's checkpoint: runs/tiny/best.pt" in result.stderr
    assert "confusion matrix written: cm.png" in result.stderr
    for heading in ("accuracy", "per class", "support", "confusion matrix", "samples/s"):
        assert heading in result.stdout
    assert (workdir / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_gives_one_table_and_a_json_list(ptool_in):
    args = ("eval", "runs/tiny/last.pt", "--compare", "runs/tiny/best.pt")
    result = ptool_in(*args, "--json", "--split", "train")
    assert result.returncode == 0, result.stderr
    first, second = json.loads(result.stdout)
    assert [first["checkpoint"], second["checkpoint"]] == ["runs/tiny/last.pt", "runs/tiny/best.pt"]
    assert first["samples"] == second["samples"] == 160  # the training split
    assert second["vs_first"]["accuracy"] == pytest.approx(
        second["metrics"]["accuracy"] - first["metrics"]["accuracy"]
    )
    table = ptool_in(*args)
    assert table.returncode == 0, table.stderr
    assert "last.pt" in table.stdout and "best.pt" in table.stdout and "pts)" in table.stdout


def test_refusals_are_one_line(workdir, ptool_in):
    torch.save({"w": torch.zeros(2)}, workdir / "plain.pt")
    bad = run_ptool("eval", "plain.pt", cwd=workdir)
    assert bad.returncode == 1
    assert bad.stderr.splitlines()[0] == "error: plain.pt is not a ptool checkpoint (no format key)"
    assert "Traceback" not in bad.stderr
    usage = ptool_in("eval", "runs/tiny/last.pt", "--split", "test")
    assert usage.returncode == 2
    assert usage.stderr.startswith("error: --data synthetic has no test split of its own")
    several = ptool_in("eval", "runs/tiny/last.pt", "runs/tiny/best.pt")
    assert (several.returncode, several.stderr.splitlines()[0]) == (
        2,
        "error: several checkpoints given",
    )
    refusals = [
        ("cm.txt", "-o cm.txt: expected a .png, .svg or .pdf file"),  # matplotlib cannot write it
        ("runs", "-o runs is a folder; expected a .png, .svg or .pdf file"),
    ]
    if Path("/proc/self").is_dir():  # Linux: no file can be made there, even by root, whom
        refusals += [  # os.access let through
            ("/proc/cm.png", "-o /proc/cm.png: cannot write in /proc"),
            ("/proc/x/cm.png", "-o /proc/x/cm.png: cannot write in /proc"),
        ]
    for target, message in refusals:
        figure = ptool_in("eval", "runs/tiny/last.pt", "-o", target)
        assert (figure.returncode, figure.stderr.splitlines()[0]) == (2, f"error: {message}")


def _no_data(*_args, **_kwargs):
    raise AssertionError("the data was loaded: the check came after the evaluation")


def test_confusion_png_into_new_folders_keeps_the_json_metrics(workdir, ptool_in):
    result = ptool_in("eval", "runs/tiny/last.pt", "-o", "sub/dir/cm.png", "--json")
    assert result.returncode == 0, result.stderr
    assert "accuracy" in json.loads(result.stdout)["metrics"]
    assert (workdir / "sub/dir/cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_refusals_come_before_the_evaluation(workdir, ptool_in, monkeypatch):
    from ptool.core.config import TrainConfig
    from ptool.core.engine import fit

    values = dict(data="synthetic", task="regression", model="mlp", samples=64, epochs=1)
    fit(
        TrainConfig.from_dict({**values, "tensorboard": False, "out": str(workdir / "reg")}),
        quiet=True,
    )
    (workdir / "blocker").write_text("a file where a folder should be")
    monkeypatch.setattr("ptool.core.evaluate.split_dataset", _no_data)
    regression = ptool_in("eval", "reg/last.pt", "-o", "reg.png")
    assert (regression.returncode, regression.stderr.splitlines()[0]) == (
        2,
        "error: -o draws a confusion matrix; this is a regression model",
    )
    blocked = ptool_in("eval", "runs/tiny/last.pt", "-o", "blocker/cm.png")
    assert (blocked.returncode, blocked.stderr.splitlines()[0]) == (
        2,
        "error: -o blocker/cm.png: blocker is a file, not a folder",
    )


def test_a_failed_figure_write_still_prints_the_metrics(ptool_in, monkeypatch):
    def full_disk(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ptool.ui.eval_view.write_confusion_image", full_disk)
    result = ptool_in("eval", "runs/tiny/last.pt", "-o", "cm.png", "--json")
    assert result.returncode == 1
    assert "accuracy" in json.loads(result.stdout)["metrics"]
    assert result.stderr.splitlines()[0] == (
        "error: could not write cm.png: No space left on device; the metrics above are complete"
    )


def test_trust_code_lasts_for_its_own_command_only(tmp_path, monkeypatch, capsys):
    """--trust-code set PTOOL_TRUST_CODE for the rest of the process: after one trusted
    command, any checkpoint was trusted (the Python API, the next in-process command)."""
    from ptool.core.trust import code_trusted
    from tests.core.test_quantize import write_checkpoint

    (tmp_path / "own_net.py").write_text(
        "import torch\n"
        "def build(input_shape, num_outputs):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, num_outputs))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    write_checkpoint(tmp_path / "own.pt", epochs=0, model="own_net:build")
    args = ("eval", "own.pt", "--json")
    trusted = run_main(*args, "--trust-code", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout)["samples"] > 0
    assert not code_trusted()
    again = run_main(*args, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert again.returncode == 1 and "rerun with --trust-code" in again.stderr
    # beside another checkpoint, the refusal says which file holds the code
    write_checkpoint(tmp_path / "plain.pt", epochs=0, model="mlp")
    compared = run_main(
        "eval",
        "plain.pt",
        "--compare",
        "own.pt",
        cwd=tmp_path,
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert (compared.returncode, compared.stderr.splitlines()[0]) == (
        1,
        "error: own.pt: its model is own_net:build: rebuilding it imports and runs the "
        "Python module 'own_net'",
    )
