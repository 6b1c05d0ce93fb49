"""`ptool inspect-checkpoint` end to end: the real console script, stdout, stderr, exit codes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tests.conftest import run_ptool
from tests.core.test_inspect_fixtures import (
    in_torch_zip,
    malicious_pickles,
    pruned_with_mask_view,
    ptool_checkpoint,
    safetensors_file,
    torch_saved_with_payload,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/a/last.pt, runs/b/last.pt (ptool checkpoints) and a bad one."""
    root = tmp_path_factory.mktemp("runs")
    for name in ("a", "b"):
        (root / name).mkdir()
        ptool_checkpoint(root / name / "last.pt")
    return root


def test_a_pipe_gets_whole_lines_for_grep(tmp_path):
    """Without a terminal (and without COLUMNS), tables keep their natural width: rich would
    fold long tensor names at 80 columns, and `| grep NAME` would miss them. A long value
    (safetensors metadata) does not pad the other lines to its width."""
    from safetensors.torch import save_file

    name = "encoder.layers.11.self_attention.in_projection.weight"
    path = tmp_path / "lora.safetensors"
    save_file({name: torch.zeros(3, 4)}, path, metadata={"ss_tags": "tag, " * 300})
    result = run_ptool("inspect-checkpoint", str(path), env={"COLUMNS": ""})
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if name in line]
    assert "(3, 4)" in row and "float32" in row
    (metadata,) = [line for line in result.stdout.splitlines() if "ss_tags" in line]
    assert metadata.endswith("tag,")  # one line, not folded
    assert [line for line in result.stdout.splitlines() if line != line.rstrip()] == []


def test_human_view(runs):
    result = run_ptool("inspect-checkpoint", str(runs / "a" / "last.pt"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in (
        "ptool.checkpoint v1",
        "epoch / step",
        "3 / 84",
        "val/accuracy",
        "adamw",
        "0.weight",
        "running_mean",
        "Optimizer optimizer_state_dict: adamw",
        "Scheduler scheduler_state_dict",
        "parameters 99",
    ):
        assert text in out, text
    assert result.stderr == ""


def test_json_keys_and_views(runs):
    path = str(runs / "a" / "last.pt")
    result = run_ptool(
        "inspect-checkpoint",
        path,
        "--json",
        "--depth",
        "1",
        "--tree",
        "--stats",
        "--diff",
        str(runs / "b" / "last.pt"),
        "--filter",
        "weight",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["archive_version"] == 3  # a number, as torch reads it (it was the text "3")
    assert list(report) == [
        "file",
        "file_bytes",
        "container",
        "archive_version",
        "format",
        "format_version",
        "module_class",
        "safetensors_metadata",
        "state_dict_key",
        "state_dicts",
        "summary",
        "entries",
        "filter",
        "tensors",
        "totals",
        "groups",
        "tree",
        "optimizers",
        "schedulers",
        "pruning",
        "quantization",
        "stats",
        "diff",
    ]
    oracle = torch.load(path, weights_only=True)["model_state_dict"]
    names = [n for n in oracle if "weight" in n]
    assert [r["name"] for r in report["tensors"]] == names
    assert [s["name"] for s in report["stats"]] == names
    assert report["stats"][0]["max"] == pytest.approx(oracle["0.weight"].max().item())
    assert report["diff"]["unchanged"] == len(names)  # same seed: same weights
    assert [g["name"] for g in report["groups"]] == ["0", "1", "3"]


def test_several_files_one_line_each(runs, tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"PK\x03\x04 not really")
    files = [str(runs / "a" / "last.pt"), str(runs / "b" / "last.pt")]
    result = run_ptool("inspect-checkpoint", *files)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all("epoch 3  step 84  loss 0.4213" in line for line in lines)
    assert all("99 params" in line for line in lines)
    result = run_ptool("inspect-checkpoint", *files, str(bad), "--json")
    assert result.returncode == 1
    # said on stderr too (it was empty: a script keeping stderr got a bare exit 1)
    assert result.stderr == "error: 1 of 3 files failed (see their error lines)\n"
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["epoch"] for r in rows] == [3, 3, None]
    assert rows[0]["metric"] == "val/loss" and rows[0]["best_value"] == 0.48
    assert rows[2]["error"].startswith(f"{bad} is truncated or corrupt")
    assert set(rows[2]) == set(rows[0])


@pytest.mark.parametrize("variant", ["bare-p2", "zip-STACK_GLOBAL", "torch.save-p4"])
def test_malicious_files_refused_without_running(tmp_path, variant):
    sentinel = tmp_path / "SENTINEL"
    path = tmp_path / "evil.pt"
    pickles = malicious_pickles(sentinel)
    if variant == "bare-p2":
        data, global_name = pickles["reduce-os.system-p2"]
        path.write_bytes(data)
    elif variant == "zip-STACK_GLOBAL":
        data, global_name = pickles["STACK_GLOBAL-exec"]
        in_torch_zip(data, path)
    else:
        torch_saved_with_payload(sentinel, path, protocol=4)
        global_name = pickles["reduce-os.system-p4"][1]
    result = run_ptool("inspect-checkpoint", str(path), "--stats")
    assert result.returncode == 1
    assert global_name in result.stderr and result.stderr.startswith("error: refusing")
    assert len(result.stderr.strip().splitlines()) == 2  # the reason and the hint
    assert result.stdout == "" and not sentinel.exists()


def test_pickled_module_needs_unsafe_load(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(nn.Sequential(nn.Linear(3, 2)), path)
    result = run_ptool("inspect-checkpoint", str(path))
    assert result.returncode == 1
    assert "pickled nn.Module (class torch.nn.modules.container.Sequential)" in result.stderr
    assert "--unsafe-load" in result.stderr
    result = run_ptool("inspect-checkpoint", str(path), "--unsafe-load", "--json")
    assert result.returncode == 0
    assert "warning: --unsafe-load" in result.stderr
    report = json.loads(result.stdout)
    assert report["module_class"] == "torch.nn.modules.container.Sequential"
    assert [r["name"] for r in report["tensors"]] == ["0.weight", "0.bias"]


def test_bad_header_low_precision_and_nan_diff(tmp_path):
    """The audit's three: a corrupt safetensors header is one line and exit 1 (never the
    'unexpected' catch-all), float8 --stats works, a NaN facing a number is a change."""
    bad = safetensors_file(
        tmp_path / "bad.safetensors",
        {"w": {"dtype": "XX", "shape": [2], "data_offsets": [0, 8]}},
        bytes(8),
    )
    result = run_ptool("inspect-checkpoint", str(bad), "--stats")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {bad} is corrupt (bad safetensors header: tensor 'w' has unknown dtype \"XX\")"
    ]
    lowp = tmp_path / "lowp.pt"
    inf = float("inf")
    torch.save(
        {"f8": torch.tensor([1.0, -2.0]).to(torch.float8_e4m3fn), "x": torch.tensor([inf])}, lowp
    )
    torch.save(
        {
            "f8": torch.tensor([float("nan"), -2.0]).to(torch.float8_e4m3fn),
            "x": -torch.tensor([inf]),
        },
        tmp_path / "nan.pt",
    )
    result = run_ptool(
        "inspect-checkpoint", str(lowp), "--stats", "--diff", str(tmp_path / "nan.pt"), "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["stats"][0]["min"], report["stats"][0]["max"]) == (-2.0, 1.0)
    assert report["diff"]["changed"] == [  # JSON has no NaN or Infinity: null, and which
        {"name": "f8", "max_abs_diff": None, "non_finite": "nan"},
        {"name": "x", "max_abs_diff": None, "non_finite": "inf"},
    ]


def test_usage_errors(runs, tmp_path):
    path = str(runs / "a" / "last.pt")
    result = run_ptool("inspect-checkpoint", path, "--filter", "(")
    assert result.returncode == 2 and "not a valid regular expression" in result.stderr
    result = run_ptool("inspect-checkpoint", path, path, "--stats")
    assert result.returncode == 2 and "take one file" in result.stderr
    result = run_ptool("inspect-checkpoint", str(tmp_path / "missing.pt"))
    assert result.returncode == 1 and "no such checkpoint" in result.stderr
    result = run_ptool("inspect-checkpoint", str(runs / "a"))  # a run directory
    assert result.returncode == 1
    assert result.stderr.splitlines()[1] == "hint: give one of its checkpoints: last.pt"
    for name in ("best.pt", "best.int8.torchscript.pt"):  # code: no ptool command loads it
        (tmp_path / name).write_bytes(b"x")
    result = run_ptool("inspect-checkpoint", str(tmp_path))
    assert result.stderr.splitlines()[1] == "hint: give one of its checkpoints: best.pt"


def test_real_train_output(tmp_path):
    """A checkpoint written by `ptool train`, read back against torch.load."""
    trained = run_ptool("train", "--epochs", "1", "--quiet", "--out", "runs/t", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    path = tmp_path / "runs" / "t" / "last.pt"
    result = run_ptool("inspect-checkpoint", str(path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    oracle = torch.load(path, weights_only=True)
    assert report["format"] == "ptool.checkpoint" and report["summary"]["epoch"] == 1
    assert report["summary"]["global_step"] == oracle["global_step"]
    assert report["summary"]["metrics"] == pytest.approx(oracle["metrics"])
    state = oracle["model_state_dict"]
    assert [(r["name"], r["shape"]) for r in report["tensors"]] == [
        (n, list(t.shape)) for n, t in state.items()
    ]
    (opt,) = report["optimizers"]
    assert opt["type"] == oracle["config"]["optimizer"]
    assert [g["lr"] for g in opt["param_groups"]] == [
        g["lr"] for g in oracle["optimizer_state_dict"]["param_groups"]
    ]


def test_sparse_tensors_and_the_safetensors_format_line(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "misc.pt"
    torch.save({"sp": torch.eye(3).to_sparse(), "w": torch.ones(2)}, path)
    result = run_ptool("inspect-checkpoint", str(path), "--stats")
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if "│ sp" in line and "(3, 3)" in line]
    assert "float32 sparse_coo, nnz 3" in row and "60 B" in row  # 2x3 int64 indices, 3 floats
    save_file({"w": torch.zeros(2)}, tmp_path / "m.safetensors")
    result = run_ptool("inspect-checkpoint", str(tmp_path / "m.safetensors"))
    assert result.returncode == 0, result.stderr
    (fmt,) = [line.rstrip() for line in result.stdout.splitlines() if line.startswith("format")]
    assert fmt == "format  safetensors"  # once, not "safetensors, safetensors"


def test_an_ema_beside_the_model_and_tied_weights(tmp_path):
    """The view names the state dicts kept side by side; --key lists one; a tied weight
    is marked and counted once."""
    embed = nn.Embedding(5, 3)
    head = nn.Linear(3, 5)
    head.weight = embed.weight
    model = nn.Sequential(embed, head)
    path = tmp_path / "timm.pth.tar"
    torch.save({"state_dict": model.state_dict(), "state_dict_ema": model.state_dict()}, path)
    result = run_ptool("inspect-checkpoint", str(path))
    assert result.returncode == 0, result.stderr
    assert "state_dict (also: state_dict_ema; --key NAME lists one)" in result.stdout
    assert "1.weight (= 0.weight)" in result.stdout
    assert "3 tensors (1 the same as another, counted once), 20 elements" in result.stdout
    result = run_ptool("inspect-checkpoint", str(path), "--key", "state_dict_ema", "--json")
    report = json.loads(result.stdout)
    assert (report["state_dict_key"], report["totals"]["parameters"]) == ("state_dict_ema", 20)
    result = run_ptool("inspect-checkpoint", str(path), "--key", "ema")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        f"error: --key ema: {path} has no such entry; its keys: state_dict, state_dict_ema"
    )
    result = run_ptool("inspect-checkpoint", str(path), str(path), "--key", "state_dict")
    assert result.returncode == 2 and "take one file" in result.stderr


def test_crafted_files_exit_1_in_one_line_and_keep_the_good_files_line(runs, tmp_path):
    """A mask of 3000x3000 over 4 floats segfaulted (exit 139); 200,000 nested lists gave
    'unexpected RecursionError ... report it'. Among several files, each gets its error row
    and the good file its line."""
    oob = pruned_with_mask_view(tmp_path / "oob.pt", (3000, 3000), (3000, 1))
    deep = tmp_path / "deep.pt"
    in_torch_zip(b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b".", deep)
    for path, reason in ((oob, "needs 36,000,000 bytes of storage 1"), (deep, "nest more")):
        result = run_ptool("inspect-checkpoint", str(path))
        assert result.returncode == 1 and result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"error: {path} is ") and reason in line
    good = str(runs / "a" / "last.pt")
    result = run_ptool("inspect-checkpoint", good, str(oob), str(deep), "--json")
    assert result.returncode == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["file"], r["epoch"]) for r in rows] == [
        (good, 3),
        (str(oob), None),
        (str(deep), None),
    ]
    assert rows[1]["error"].startswith(f"{oob} is corrupt (a float32 tensor of size (3000, 3000)")
    assert rows[2]["error"].startswith(f"{deep} is not supported")


def test_other_tools_config_and_optimizer_names_are_shown_as_written(tmp_path):
    """A `config` that is a file name crashed the report ('str' object has no attribute
    'get'); an optimizer named `adamw[fused]` lost its brackets to rich markup, and `[/]`
    crashed the view."""
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    named = tmp_path / "named.pt"
    torch.save({"config": "resnet18.yaml", "state_dict": model.state_dict()}, named)
    for name in ("adamw[fused]", "[/]"):
        path = tmp_path / "markup.pt"
        config = {"optimizer": name}
        ckpt = {"config": config, "model_state_dict": model.state_dict()}
        torch.save({**ckpt, "optimizer_state_dict": optimizer.state_dict()}, path)
        result = run_ptool("inspect-checkpoint", str(path), env={"COLUMNS": "200"})
        assert result.returncode == 0, result.stderr
        assert f"Optimizer optimizer_state_dict: {name}," in result.stdout
    for args in ([named], [named, path]):  # alone, and one line per file
        result = run_ptool("inspect-checkpoint", *map(str, args))
        assert result.returncode == 0, result.stderr
        assert str(named) in result.stdout
