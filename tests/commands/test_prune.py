"""`ptool prune` end to end: the real console script on a tiny checkpoint, then `ptool quantize
static` on its output."""

from __future__ import annotations

import json

import pytest
import torch

from ptool.core.restore import model_from_checkpoint
from tests.conftest import run_ptool
from tests.core.test_prune import write_residual_checkpoint
from tests.core.test_quantize import write_checkpoint


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory with runs/tiny/best.pt, the newest run as `ptool train` would leave it."""
    root = tmp_path_factory.mktemp("prune-cli")
    write_checkpoint(root / "runs" / "tiny" / "best.pt", epochs=1, model="cnn", channels=[8, 16])
    return root


# torch.load of qint8 tensors warns about torch's own deprecations
@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_compact_json_on_the_newest_run_then_quantize_static(workdir):
    result = run_ptool(
        "prune", "--method", "ln-structured", "--amount", "0.5", "--compact", "--json",
        "--recalibrate-bn", "2", "--bench-runs", "2", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout is one JSON document and nothing else
    assert "using the newest run's checkpoint: runs/tiny/best.pt" in result.stderr
    assert report["output"] == "runs/tiny/best.pruned.pt"
    assert result.stderr.splitlines()[-1] == "written: runs/tiny/best.pruned.pt"
    assert "re-estimated the statistics of 2 batch-norm layers on 2 training batches" in (
        result.stderr
    )
    assert {"layers", "global", "parameters", "file_bytes", "gzip_bytes", "latency"} <= set(report)
    assert set(report["metrics"]) == {"before", "after_pruning", "after_finetune"}
    assert report["layers"][0]["shape_after"] == [4, 1, 3, 3]

    quantized = run_ptool(
        "quantize", "static", report["output"], "--json", "--bench-runs", "2", "--no-eval",
        cwd=workdir,
    )  # fmt: skip
    assert quantized.returncode == 0, quantized.stderr
    output = json.loads(quantized.stdout)["output"]
    saved = torch.load(workdir / output, weights_only=True)
    assert saved["pruning"]["compacted"] and saved["quantization"]["mode"] == "static"
    model = model_from_checkpoint(saved)  # compacted, then quantized: rebuilt without user code
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_human_report(workdir, monkeypatch):
    """In-process (typer's CliRunner): the rendering, without another interpreter start-up."""
    from typer.testing import CliRunner

    from ptool.cli import app

    monkeypatch.chdir(workdir)
    result = CliRunner().invoke(
        app,
        ["prune", "runs/tiny/best.pt", "--amount", "7", "--keep-masks", "-o", "masked.pt",
         "--bench-runs", "2"],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for text in ("body.0.conv", "8x1x3x3", "sparsity", "file size, gzip", "latency, batch 64",
                 "val/accuracy", "written: masked.pt (with weight_orig/weight_mask",
                 "do not speed up dense kernels)"):  # fmt: skip
        assert text in result.stdout
    assert result.output.count("masked.pt") == 1  # named once, by the report
    state = torch.load(workdir / "masked.pt", weights_only=True)["model_state_dict"]
    assert int((state["body.0.conv.weight_mask"] == 0).sum()) == 7


def test_bn_scale_compact_keeps_the_largest_batch_norm_scales(workdir):
    result = run_ptool(
        "prune", "runs/tiny/best.pt", "--method", "bn-scale", "--amount", "0.5", "--compact",
        "--no-eval", "--bench-runs", "1", "--json", "-o", "bn-scale.pt", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["recipe"]["method"] == "bn-scale"
    before = torch.load(workdir / "runs/tiny/best.pt", weights_only=True)["model_state_dict"]
    after = torch.load(workdir / "bn-scale.pt", weights_only=True)["model_state_dict"]
    for norm in ("body.0.norm", "body.1.norm"):
        scale = before[f"{norm}.weight"]
        kept = scale[scale.abs().argsort(descending=True)[: scale.numel() // 2]]
        assert torch.equal(after[f"{norm}.weight"].sort().values, kept.sort().values)


def test_a_quantized_input_is_refused_in_one_line(workdir):
    """Loading int8 tensors trips torch's deprecation notice (once per process): not shown."""
    from ptool.core.quantize import QuantizeOptions, quantize_checkpoint

    output = workdir / "static.int8.pt"
    options = QuantizeOptions(mode="static", evaluate=False, bench_runs=1, output=str(output))
    quantize_checkpoint(workdir / "runs/tiny/best.pt", options)
    result = run_ptool("prune", output.name, cwd=workdir)
    assert result.returncode == 2
    assert result.stderr.startswith("error: static.int8.pt is quantized (static)"), result.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--amount", "1.5"], 2, "error: --amount 1.5: a fraction must be in [0, 1)"),
        (["--exclude", "conv"], 2, "error: the layer filter selects no layer"),
        (["--compact"], 2, "error: --compact removes whole channels"),
        (["--method", "ln-structured", "--compact", "--dim", "1"], 2, "error: --compact removes"),
        (["--method", "bn-scale", "--dim", "1"], 2, "error: --method bn-scale ranks output"),
        (["--dim", "0"], 2, "error: --dim picks the channels of structured methods; l1-unstr"),
        (["--method", "random-structured", "--n", "1"], 2, "error: --n is the norm order of ln"),
        (["--finetune-epochs", "1", "--lr", "-1"], 2, "error: --lr must be finite and positive"),
        (["--finetune-epochs", "1", "--scheduler", "multistep"], 2, "error: multistep needs"),
        (["--finetune-epochs", "1", "--monitor", "val/bogus"], 2, "error: --monitor 'val/bogus'"),
    ],
)
def test_bad_input_exits_with_one_line(workdir, args, code, message):
    result = run_ptool("prune", "runs/tiny/best.pt", *args, cwd=workdir)
    assert result.returncode == code
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_compact_refuses_to_shrink_an_excluded_layer(tmp_path, monkeypatch):
    """c2's output channels are tied to stem's by a residual add: compacting c2 would shrink
    the excluded stem (it used to, shown as not pruned)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    write_residual_checkpoint(tmp_path)
    args = ("--method", "ln-structured", "--compact", "--exclude", "^stem$", "-o", "out.pt")
    untrusted = run_ptool("prune", "runs/res/best.pt", *args, cwd=tmp_path)
    assert untrusted.returncode == 1  # the checkpoint names the module: the user must trust it
    assert untrusted.stderr.splitlines()[-1] == (
        "hint: only if you trust the checkpoint, rerun with --trust-code (or PTOOL_TRUST_CODE=1)"
    )
    result = run_ptool("prune", "runs/res/best.pt", *args, "--trust-code", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: --compact: c2's output channels are tied to stem's (e.g. by a residual add), "
        "which --exclude leaves out",
        "hint: select stem too, or leave out c2",
    ]
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal needs a machine without CUDA")
def test_finetune_device_reaches_the_engine(workdir):
    args = ("runs/tiny/best.pt", "--finetune-epochs", "1", "--device", "cuda", "--no-eval")
    result = run_ptool("prune", *args, "-o", "gpu.pt", cwd=workdir)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --device cuda: no CUDA GPU is available"), result.stderr
    assert not (workdir / "gpu.pt").exists()
