"""`ptool quantize` end to end: the real console script on a tiny checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_ptool
from tests.core.test_quantize import write_checkpoint


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory with runs/tiny/best.pt, the newest run as `ptool train` would leave it."""
    root = tmp_path_factory.mktemp("quantize-cli")
    write_checkpoint(root / "runs" / "tiny" / "best.pt", epochs=0, model="cnn", channels=[8])
    return root


def test_static_json_on_the_newest_run(workdir):
    result = run_ptool("quantize", "static", "--json", "--bench-runs", "2", cwd=workdir)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout is one JSON document and nothing else
    assert report["checkpoint"] == "runs/tiny/best.pt"
    assert "using the newest run's checkpoint: runs/tiny/best.pt" in result.stderr
    assert f"written: {report['output']}" in result.stderr
    assert "Deprecat" not in result.stderr and "UserWarning" not in result.stderr
    assert set(report["fp32"]) == set(report["quantized"])
    assert {"size", "param_bytes", "speedup_batch_1", "speedup_batch_n"} <= set(report["ratios"])
    saved = torch.load(workdir / report["output"], weights_only=True)
    assert saved["quantization"]["mode"] == "static"


def test_human_table(workdir):
    result = run_ptool(
        "quantize", "dynamic", "runs/tiny/best.pt", "--no-eval", "--bench-runs", "2",
        "-o", "tiny.int8.pt", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for row in ("file size", "parameter bytes", "latency, batch 1", "latency, batch 64"):
        assert row in result.stdout
    assert (workdir / "tiny.int8.pt").is_file()


def test_quiet_silences_stderr(workdir):
    result = run_ptool(
        "quantize", "dynamic", "--quiet", "--json", "--no-eval", "--bench-runs", "2",
        "-o", "quiet.int8.pt", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not even "using the newest run's checkpoint"
    assert json.loads(result.stdout)["checkpoint"] == "runs/tiny/best.pt"


def test_cuda_is_refused_in_one_line(workdir):
    """The other refusals (backend, quantized input, no layers) are tested in-process."""
    result = run_ptool("quantize", "dynamic", "runs/tiny/best.pt", "--device", "cuda", cwd=workdir)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --device cuda: int8 quantized kernels")
    assert "run on the CPU only" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 2  # the message and its hint


def test_an_interrupted_qat_run_prints_its_summary_with_json(workdir, monkeypatch, capsys):
    """As `train --json` does: status "interrupted" on stdout, then the error (it printed
    nothing)."""
    import signal

    from ptool.core.quantize.run import FreezeSchedule
    from tests.commands._inprocess import run_main

    def ctrl_c_after_epoch_1(self, trainer, metrics):
        trainer.stop.signum = signal.SIGINT

    monkeypatch.setattr(FreezeSchedule, "on_epoch_end", ctrl_c_after_epoch_1)
    args = ("quantize", "qat", "runs/tiny/best.pt", "--epochs", "2", "--no-eval", "--json")
    result = run_main(*args, "--bench-runs", "2", "--out", "qat-stopped", "--quiet",
                      cwd=workdir, monkeypatch=monkeypatch, capsys=capsys)  # fmt: skip
    assert result.returncode == 130, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["status"], summary["epochs"]) == ("interrupted", 1)
    assert "resume with: ptool quantize qat --resume" in result.stderr
