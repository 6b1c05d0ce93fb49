"""`ptool predict` end to end: JSON lines, tables, failures listed, agreement with eval."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from PIL import Image

from tests.commands._inprocess import run_main
from tests.conftest import PTOOL, run_ptool


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A 1-epoch CNN run, its int8 version, and raw inputs (validation split, unnormalized)."""
    from ptool.core.config import TrainConfig
    from ptool.core.data import build_data
    from ptool.core.engine import fit
    from ptool.core.quantize import QuantizeOptions, quantize_checkpoint

    root = tmp_path_factory.mktemp("predict")
    values = dict(data="synthetic", shape="1x8x8", samples=150, model="cnn", epochs=1, seed=0)
    config = TrainConfig.from_dict({**values, "tensorboard": False, "out": str(root / "run")})
    fit(config, quiet=True)
    options = QuantizeOptions(
        "static", evaluate=False, bench_runs=1, calib_batches=2, output=str(root / "int8.pt")
    )
    quantize_checkpoint(root / "run/last.pt", options)
    x, y = build_data(config.replace(normalize=False)).val.tensors
    torch.save(x, root / "val.pt")
    torch.save(y, root / "labels.pt")
    Image.fromarray((x[0, 0] * 255).round().byte().numpy()).save(root / "digit.png")
    (root / "broken.png").write_text("not an image")
    return root


@pytest.fixture
def ptool_in(workdir, monkeypatch, capsys):
    def run(*args, stdin=""):
        return run_main(*args, cwd=workdir, monkeypatch=monkeypatch, capsys=capsys, stdin=stdin)

    return run


def test_json_lines_with_a_failed_input_in_the_batch(workdir):
    x = torch.load(workdir / "val.pt")
    stdin = json.dumps({"input": x[1].tolist(), "id": "second"}) + "\n"
    args = ("predict", "run/last.pt", "digit.png", "broken.png", "-", "--top-k", "2")
    result = run_ptool(*args, cwd=workdir, input=stdin)
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["input"] for line in lines] == ["digit.png", "second"]
    assert all(len(line["probabilities"]) == 2 for line in lines)
    assert lines[0]["label"] == str(lines[0]["prediction"]) == next(iter(lines[0]["probabilities"]))
    assert result.stderr.splitlines() == [
        "failed: broken.png: not an image Pillow reads",
        "error: 1 of 3 inputs failed (listed above); the others were predicted",
    ]


def test_when_every_input_fails_no_others_are_claimed(ptool_in):
    result = ptool_in("predict", "run/last.pt", "broken.png")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "error: 1 of 1 inputs failed (listed above)"


def test_same_input_same_output_and_json_errors(ptool_in):
    first = ptool_in(
        "predict", "run/last.pt", "val.pt", "broken.png", "--json", "--batch-size", "7"
    )
    second = ptool_in(
        "predict", "run/last.pt", "val.pt", "broken.png", "--json", "--batch-size", "7"
    )
    assert first.returncode == second.returncode == 1
    assert first.stdout == second.stdout
    document = json.loads(first.stdout)
    assert document["errors"] == [{"input": "broken.png", "error": "not an image Pillow reads"}]
    assert len(document["predictions"]) == 30


def test_int8_predictions_agree_with_eval_accuracy(workdir, ptool_in):
    result = ptool_in("predict", "int8.pt", "val.pt", "--json")
    assert result.returncode == 0, result.stderr
    predicted = torch.tensor([p["prediction"] for p in json.loads(result.stdout)["predictions"]])
    accuracy = (predicted == torch.load(workdir / "labels.pt")).float().mean().item()
    report = json.loads(ptool_in("eval", "int8.pt", "--json").stdout)
    assert report["kind"] == "quantized"
    assert accuracy == pytest.approx(report["metrics"]["accuracy"])


def test_table_on_a_terminal_and_refusals(workdir, ptool_in, monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    table = ptool_in("predict", "run/last.pt", "digit.png")
    assert table.returncode == 0, table.stderr
    assert "top probabilities" in table.stdout and "digit.png" in table.stdout
    monkeypatch.delenv("TTY_COMPATIBLE")
    ckpt = torch.load(workdir / "run/last.pt", weights_only=True)
    del ckpt["config"]
    torch.save(ckpt, workdir / "noconfig.pt")
    bad = ptool_in("predict", "noconfig.pt", "digit.png")
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: the checkpoint has no saved config/data_info")
    usage = ptool_in("predict", "run/last.pt", "digit.png", "--top-k", "0")
    assert (usage.returncode, usage.stderr.splitlines()[0]) == (
        2,
        "error: --top-k must be at least 1, got 0",
    )
    twice = ptool_in("predict", "run/last.pt", "-", "-", stdin="[[0.5]]\n")  # one was ignored
    assert (twice.returncode, twice.stderr.splitlines()[0]) == (
        2,
        "error: - (stdin) is given more than once",
    )


def test_a_reader_that_stops_early_ends_it_quietly(workdir):
    """`ptool predict CKPT many.pt | head -1`: exit 0, nothing on stderr, no traceback. The
    output is far bigger than a pipe's buffer, so ptool is still writing when head leaves."""
    torch.save(torch.rand(3000, 1, 8, 8), workdir / "many.pt")
    env = {**os.environ, "PTOOL_DEBUG": ""}
    with subprocess.Popen(
        [PTOOL, "predict", "run/last.pt", "many.pt"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        first = json.loads(proc.stdout.readline())
        proc.stdout.close()
        stderr = proc.stderr.read().decode()
        assert (proc.wait(timeout=300), stderr) == (0, "")
    assert first["input"] == "many.pt[0]"


def test_uint8_and_pth_tensor_files_end_to_end(workdir, ptool_in):
    """Pixels saved as 0-255 bytes in a .pth file predict as the same pixels in a PNG."""
    x = torch.load(workdir / "val.pt")
    torch.save((x[:1] * 255).round().to(torch.uint8), workdir / "u8.pth")
    result = ptool_in("predict", "run/last.pt", "digit.png", "u8.pth", "--json")
    assert result.returncode == 0, result.stderr
    png, tensor = json.loads(result.stdout)["predictions"]
    assert tensor["input"] == "u8.pth[0]"
    assert tensor["probabilities"] == png["probabilities"]


def test_nothing_to_predict_fails_as_an_empty_folder_does(ptool_in):
    """A pipeline whose upstream produced nothing used to pass as a success (exit 0)."""
    for extra in ((), ("--json",)):
        empty = ptool_in("predict", "run/last.pt", "-", *extra, stdin="\n")
        assert (empty.returncode, empty.stdout) == (1, "")
        assert empty.stderr.splitlines() == ["error: nothing to predict: stdin held no input"]


def test_top_k_is_refused_for_a_regression_model(tmp_path, monkeypatch, capsys):
    from ptool.core.config import TrainConfig
    from ptool.core.engine import fit

    values = dict(data="synthetic", shape="4", samples=40, model="mlp", task="regression")
    fit(TrainConfig.from_dict({**values, "epochs": 1, "out": str(tmp_path / "reg")}), quiet=True)
    row = "[0.1, 0.2, 0.3, 0.4]\n"

    def run(*args):
        return run_main("predict", "reg/last.pt", "-", *args, cwd=tmp_path,
                        monkeypatch=monkeypatch, capsys=capsys, stdin=row)  # fmt: skip

    refused = run("--top-k", "3")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        "error: --top-k ranks class probabilities; this is a regression model",
        "hint: drop --top-k",
    ]
    plain = run()
    assert plain.returncode == 0 and "probabilities" not in json.loads(plain.stdout)
