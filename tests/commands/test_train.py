"""`ptool train` end to end: the real console script, its files, its errors, DDP under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import PTOOL, run_ptool

TINY = (
    "--data", "synthetic", "--shape", "12", "--samples", "96", "--num-classes", "3",
    "--model", "mlp", "--hidden", "16", "--batch-size", "16", "--epochs", "2", "--seed", "0",
)  # fmt: skip


def test_train_writes_the_run_directory_and_prints_the_summary(tmp_path):
    out = tmp_path / "run"
    result = run_ptool("train", *TINY, "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert summary["best_epoch"] in (1, 2) and summary["samples_per_s"] > 0
    assert summary["checkpoints"] == {
        "last": str(out / "last.pt"),
        "best": str(out / "best.pt"),
        "top_k": [],
        "epochs": [],
    }
    assert json.loads((out / "summary.json").read_text()) == summary
    assert "epoch 1/2  train/loss" in result.stderr and "epoch 2/2" in result.stderr
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["config"]["model"] == "mlp" and ckpt["epoch"] == 2
    # the saved config file is a valid --config: the same run, resolved again
    again = run_ptool("train", "--config", str(out / "config.yaml"), "--print-config", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == ckpt["config"]


def test_a_diverged_run_still_prints_its_summary_with_json(tmp_path):
    out = tmp_path / "run"
    result = run_ptool("train", *TINY, "--lr", "1e30", "--optimizer", "sgd", "--out", str(out),
                       "--json")  # fmt: skip
    assert result.returncode == 1 and result.stderr.startswith("error: ")
    summary = json.loads(result.stdout)
    assert summary["status"] == "diverged" and summary["message"] in result.stderr
    assert json.loads((out / "summary.json").read_text()) == summary


def test_human_output_is_a_table_and_quiet_silences_stderr(tmp_path):
    result = run_ptool("train", *TINY, "--epochs", "1", "--out", str(tmp_path / "r"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for text in ("val/accuracy", "best (epoch 1)", "wall time", "samples/s", "last.pt"):
        assert text in result.stdout


def test_config_file_then_flags(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('lr = 0.05\n[optimizer]\noptimizer = "sgd"\nmomentum = 0.9\n')
    result = run_ptool("train", "--config", str(toml), "--lr", "0.2", "--print-config")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "optimizer: sgd" in lines and "lr: 0.2" in lines and "momentum: 0.9" in lines
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("optimizer: rmsprop\nbatch_size: 8\n")
    printed = run_ptool("train", "--config", str(yaml_file), "--print-config", "--json")
    config = json.loads(printed.stdout)
    assert config["optimizer"] == "rmsprop" and config["batch_size"] == 8
    (tmp_path / "bad.yaml").write_text("lr: -1\n")  # a range, not a type: checked too
    refused = run_ptool("train", "--config", str(tmp_path / "bad.yaml"), "--print-config")
    assert refused.returncode == 2 and not refused.stdout
    assert refused.stderr.startswith(f"error: {tmp_path / 'bad.yaml'}: --lr must be")
    refused = run_ptool("train", "--model", "resnet18", "--print-config")  # not a model
    assert refused.returncode == 2 and not refused.stdout
    assert refused.stderr.startswith("error: unknown model 'resnet18'; valid: mlp, cnn")
    # another optimizer's option: the printed config would not train either; the file set it,
    # so the file is named and the way out is the file's ("drop it" named a flag never typed)
    refused = run_ptool("train", "--config", str(toml), "--optimizer", "adamw", "--print-config")
    assert refused.returncode == 2 and not refused.stdout
    assert refused.stderr.splitlines() == [
        f"error: {toml}: --momentum is an option of the sgd and rmsprop optimizers; this run's "
        "is adamw",
        f"hint: take momentum out of {toml}, or give --optimizer sgd",
    ]
    refused = run_ptool("train", "--momentum", "0.9", "--print-config")  # a flag: as it was
    assert refused.stderr.splitlines()[1] == "hint: drop it, or give --optimizer sgd"
    (tmp_path / "flag.yaml").write_text("optimizer: sgd\nno_decay_norm_bias: true\n")  # its
    refused = run_ptool("train", "--config", str(tmp_path / "flag.yaml"), "--print-config")
    assert refused.stderr.splitlines() == [  # name is no_decay_norm_bias, not decay_norm_bias
        f"error: {tmp_path / 'flag.yaml'}: --no-decay-norm-bias shapes weight decay, at 0 here",
        f"hint: take no_decay_norm_bias out of {tmp_path / 'flag.yaml'}, or give --weight-decay",
    ]
    # an extended run's config.yaml keeps its plan: a new --epochs does not move it, said
    extended = tmp_path / "extended.yaml"
    extended.write_text("scheduler: cosine\nepochs: 4\nschedule_epochs: 2\n")
    longer = run_ptool("train", "--config", str(extended), "--epochs", "10", "--print-config")
    assert longer.returncode == 0 and "schedule_epochs: 2" in longer.stdout.splitlines()
    assert longer.stderr == (
        f"note: the cosine schedule is planned over 2 epochs (schedule_epochs in {extended}), "
        "not the run's 10\n"
    )


def test_printed_config_is_the_same_config_again(tmp_path):
    """`ptool train --print-config > run.yaml` round-trips lists (`[flip, crop]`, which rich
    would read as style tags) and values longer than a console line."""
    long_path = tmp_path / ("d" * 120) / "data.csv"
    args = ("--augment", "flip,crop", "--data", f"csv:{long_path}")
    args += ("--model", "mlp", "--hidden", "8,4")
    printed = run_ptool("train", *args, "--print-config")
    assert printed.returncode == 0, printed.stderr
    saved = tmp_path / "run.yaml"
    saved.write_text(printed.stdout)
    again = run_ptool("train", "--config", str(saved), "--print-config", "--json")
    assert again.returncode == 0, again.stderr
    config = json.loads(again.stdout)
    assert config["augment"] == ["flip", "crop"] and config["hidden"] == [8, 4]
    assert config["data"] == f"csv:{long_path}"


def test_an_unreadable_image_fails_in_one_line(tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "imgs" / label / f"{i}.png")
    (tmp_path / "imgs" / "cat" / "bad.png").write_text("not a png")
    result = run_ptool(
        "train", "--data", f"imagefolder:{tmp_path / 'imgs'}", "--image-size", "8",
        "--epochs", "1", "--num-workers", "1", "--out", str(tmp_path / "r"), "--progress", "off",
    )  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith(("error", "hint"))]
    assert errors[0].endswith("bad.png: not an image Pillow reads")  # raised in a worker
    assert "Traceback" not in result.stderr and len(errors) == 2
    assert errors[1] == "hint: remove or replace that file"  # the data's fault, not ptool's


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--optimizer", "lamb"), 2, "valid: sgd, adam, adamw, rmsprop"),
        (("--model", "resnet"), 2, "unknown model 'resnet'; valid: mlp, cnn"),
        (("--data", "csv:missing.csv"), 2, "missing.csv"),
        (("--data", "digits", "--samples", "100"), 2, "--samples shapes synthetic data"),
    ],
)
def test_bad_input_is_one_line_before_training(tmp_path, args, code, message):
    result = run_ptool("train", *TINY, "--out", str(tmp_path / "r" / "run"), *args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()  # no empty run directory (nor parent) left behind


def test_a_refused_run_without_out_leaves_no_run_directory(tmp_path):
    (tmp_path / "runs" / "earlier").mkdir(parents=True)
    result = run_ptool("train", *TINY, "--monitor", "val/nope", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["earlier"]


def test_a_run_past_the_file_size_limit_stops_in_one_line_and_lets_go_of_its_folder(tmp_path):
    """`ulimit -f 2`: TensorBoard's writer thread printed its traceback, the error said
    "unexpected OSError: [Errno 27] File too large", and the run folder stayed locked (the
    run's close() raised the error again before it unlocked)."""
    out = tmp_path / "run"  # digits' TensorBoard log outgrows 2 KB before its checkpoint
    train = " ".join([PTOOL, "train", "--epochs", "1", "--channels", "4", "--out", str(out)])
    result = subprocess.run(
        ["bash", "-c", f"ulimit -f 2; exec {train}"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and "file size limit (ulimit -f)" in result.stderr
    assert not (out / ".ptool.lock").exists()


def test_unwritable_out_is_a_usage_error(tmp_path):
    (tmp_path / "file").write_text("")
    result = run_ptool("train", *TINY, "--out", str(tmp_path / "file" / "run"))
    assert result.returncode == 2
    assert "cannot write to --out" in result.stderr


def _torchrun_train(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    return _torchrun("-m", "ptool", "train", *args, ok=ok)


def _torchrun(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    # PYTHONFAULTHANDLER: a rank that dies of a signal in C++ (SIGABRT) prints where Python was
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PTOOL_DEBUG": "", "PYTHONFAULTHANDLER": "1"}
    ddp = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", *args],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert (ddp.returncode == 0) == ok, ddp.stderr
    return ddp


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_with_the_global_batch(tmp_path):
    common = (
        *TINY, "--samples", "160", "--val-split", "0.2", "--norm", "none", "--optimizer", "sgd",
        "--lr", "0.1", "--no-shuffle", "--no-tensorboard", "--device", "cpu", "--quiet",
    )  # fmt: skip
    single = run_ptool("train", *common, "--batch-size", "16", "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    ddp = _torchrun_train(*common, "--batch-size", "8", "--out", str(tmp_path / "two"), "--json")
    summary = json.loads(ddp.stdout)  # one document: only rank 0 prints
    assert summary["world_size"] == 2
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    for name, value in one["model_state_dict"].items():
        torch.testing.assert_close(two["model_state_dict"][name], value, rtol=1e-5, atol=1e-6)
    for name in ("train/loss", "val/loss", "val/accuracy"):
        assert two["metrics"][name] == pytest.approx(one["metrics"][name], rel=1e-5)


@pytest.mark.slow
def test_torchrun_metrics_are_those_of_the_saved_batch_norm_statistics(tmp_path):
    """Each rank's last training forward moves its own running statistics; the logged val/*
    (which pick best.pt) used to mix the ranks' while the checkpoint holds rank 0's."""
    out = tmp_path / "bn"
    _torchrun_train(*TINY, "--samples", "240", "--norm", "batch", "--device", "cpu",
                    "--no-tensorboard", "--quiet", "--out", str(out))  # fmt: skip
    logged = torch.load(out / "best.pt", weights_only=True)["metrics"]
    result = run_ptool("eval", str(out / "best.pt"), "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)["metrics"]
    for name in ("loss", "accuracy", "f1"):
        assert metrics[name] == pytest.approx(logged[f"val/{name}"], rel=1e-5), name


@pytest.mark.slow
def test_torchrun_a_refusal_about_the_run_folder_reaches_every_rank(tmp_path):
    """Rank 0 checks the folder; rank 1 used to die of a closed gloo connection ("report it").
    Every rank stops with exit 2 and the job's message is said once."""
    taken = str(tmp_path / "taken")
    assert run_ptool("train", *TINY, "--epochs", "1", "--out", taken).returncode == 0
    ddp = _torchrun_train(*TINY, "--device", "cpu", "--out", taken, ok=False)
    assert ddp.stderr.count(f"error: --out {taken} holds another run's checkpoints") == 1
    assert "exitcode  : 2" in ddp.stderr
    assert "unexpected" not in ddp.stderr and "Connection closed" not in ddp.stderr


@pytest.mark.slow
def test_torchrun_a_trainer_refused_at_its_folder_leaves_the_process_group(tmp_path):
    """The process group was joined outside the setup that close() undoes: a refused folder
    left it joined (torch's "not destroyed" warning; the Python API's next fit failed)."""
    (tmp_path / "file").write_text("")
    script = tmp_path / "refused.py"
    script.write_text(
        "import sys\n"
        "import torch.distributed as dist\n"
        "from ptool.core.config import TrainConfig\n"
        "from ptool.core.engine import Trainer\n"
        "from ptool.core.errors import PtoolError\n"
        "try:\n"
        "    Trainer(TrainConfig(device='cpu', out=sys.argv[1]), quiet=True)\n"
        "except PtoolError:\n"
        "    sys.stdout.write(f'refused, still joined: {dist.is_initialized()}\\n')\n"
    )
    ddp = _torchrun(str(script), str(tmp_path / "file"))
    assert ddp.stdout.splitlines() == ["refused, still joined: False"] * 2, ddp.stderr
