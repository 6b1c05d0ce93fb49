"""Resume against its oracles: the uninterrupted run, torch's schedulers, lr_series, the disk."""

from __future__ import annotations

import builtins
import errno
import io
import os
import shlex
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import torch

from ptool.core import checkpoint as ckpt_io
from ptool.core import rundir
from ptool.core.config import TrainConfig, read_config_file
from ptool.core.engine import fit
from ptool.core.errors import PtoolError, UsageError
from ptool.core.resume import find_checkpoint, plan_resume, resume_run
from ptool.core.trust import TRUST_CODE_ENV, trusting_code
from tests.core.test_engine import csv_run, small
from tests.core.test_schedules import lr_series

# A data order that shuffles and an LR that changes at every step.
EXACT = dict(epochs=3, deterministic=True, scheduler="onecycle", optimizer="sgd", lr=0.05)


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model_state_dict"]


def assert_same_weights(a, b) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stopped_after_an_epoch_and_resumed_is_bit_identical(tmp_path):
    fit(small(tmp_path, "full", **EXACT), quiet=True)
    fit(small(tmp_path, "cut", keep_last=3, **EXACT), quiet=True)
    plan = plan_resume(tmp_path / "cut" / "epoch-1.pt", {"out": str(tmp_path / "resumed")})
    summary = resume_run(plan, quiet=True)
    assert summary.epochs == 3
    assert_same_weights(weights(tmp_path / "full/last.pt"), weights(tmp_path / "resumed/last.pt"))


def test_fp16_on_the_cpu_scales_the_loss_and_resumes_bit_identical(tmp_path):
    """fp16 autocast ran without a GradScaler off CUDA: small gradients underflowed to 0."""
    fp16 = dict(EXACT, precision="fp16", device="cpu")
    fit(small(tmp_path, "full", **fp16), quiet=True)
    fit(small(tmp_path, "cut", keep_last=3, **fp16), quiet=True)
    saved = torch.load(tmp_path / "cut" / "epoch-1.pt", weights_only=True)
    assert saved["scaler_state_dict"]["scale"] == 2.0**16  # torch's initial scale
    plan = plan_resume(tmp_path / "cut" / "epoch-1.pt", {"out": str(tmp_path / "resumed")})
    resume_run(plan, quiet=True)
    assert_same_weights(weights(tmp_path / "full/last.pt"), weights(tmp_path / "resumed/last.pt"))


# Random crops and flips served by a DataLoader worker, and dropout: each sample's draws come
# from (seed, epoch, index), not from whichever worker serves it after the restart.
AUGMENTED = dict(data="synthetic", shape="1x8x8", augment="crop,flip", crop_padding=1,
                 num_workers=1, dropout=0.2)  # fmt: skip


@pytest.mark.parametrize(
    ("data", "workers"),
    [({}, {}), (AUGMENTED, {}), (AUGMENTED, {"num_workers": 0})],
    ids=["in-memory", "augmented-in-a-worker", "augmented-resumed-without-workers"],
)
def test_stopped_mid_epoch_and_resumed_is_bit_identical(tmp_path, data, workers):
    fit(small(tmp_path, "full", **data, **EXACT), quiet=True)

    class KeepStep7:
        def on_checkpoint(self, trainer, path):
            if trainer.state.global_step == 7:
                shutil.copyfile(path, tmp_path / "mid.pt")

    cut = small(tmp_path, "cut", save_every_steps=1, **data, **EXACT)
    fit(cut, callbacks=[KeepStep7()], quiet=True)
    mid = torch.load(tmp_path / "mid.pt", weights_only=True)
    assert (mid["epoch"], mid["batch_in_epoch"]) == (1, 2)  # 5 batches per epoch
    plan = plan_resume(tmp_path / "mid.pt", {"out": str(tmp_path / "resumed"), **workers})
    assert "epoch 2/3, batch 3 (step 7)" in plan.notes[0]
    resume_run(plan, quiet=True)
    assert_same_weights(weights(tmp_path / "full/last.pt"), weights(tmp_path / "resumed/last.pt"))


def test_tensorboard_curves_continue_without_duplicated_or_missing_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = small(tmp_path, "run", tensorboard=True, save_every_steps=3, **EXACT)

    class DieAtStep9:  # last.pt holds step 6; steps 6, 7 and 8 are logged, then the run dies
        def on_step_end(self, trainer):
            if trainer.state.global_step == 9:
                raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        fit(config, callbacks=[DieAtStep9()], quiet=True)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["global_step"] == 6
    # TensorBoard reads event files in name order: a timestamp in seconds, then a per-process
    # writer counter compared as text; a real resume is a new process seconds later
    time.sleep(1.1)
    resume_run(plan_resume(tmp_path / "run", {}), quiet=True)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("lr")] == list(range(15))
    assert [e.step for e in events.Scalars("val/loss")] == [4, 9, 14]
    expected = [r["lr"] for r in lr_series(config, steps_per_epoch=5)]
    assert [e.value for e in events.Scalars("lr")] == pytest.approx(expected, rel=1e-6)


def test_resuming_from_an_earlier_epoch_replaces_the_later_curves(tmp_path):
    """From epoch-1.pt of a finished run: epochs 2 and 3 are trained again, and TensorBoard
    shows each step and each epoch once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = small(tmp_path, "run", tensorboard=True, keep_last=3, log_every_steps=1, **EXACT)
    fit(config, quiet=True)
    time.sleep(1.1)  # see the test above
    plan = plan_resume(tmp_path / "run" / "epoch-1.pt", {})
    assert "epoch 2/3" in plan.notes[0]
    resume_run(plan, quiet=True)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(15))
    assert [e.step for e in events.Scalars("val/loss")] == [4, 9, 14]
    assert [(e.step, e.value) for e in events.Scalars("epoch")] == [(4, 1), (9, 2), (14, 3)]
    resumed = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["metrics"]
    assert events.Scalars("val/loss")[-1].value == pytest.approx(resumed["val/loss"])
    # the final metrics for the HParams dashboard: once, at the run's global step (15 steps)
    final = events.Scalars("hparam/val/loss")
    assert [e.step for e in final] == [15]
    assert final[0].value == pytest.approx(resumed["val/loss"])
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")
    # in each session's own event file: a second writer's file could sort before the
    # resumed session's (".10" < ".9"), whose purge then dropped the final metrics
    assert len(list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_lr_plot_reads_a_resumed_runs_log_without_tensorboards_restart_warning(tmp_path, caplog):
    """The steps a resume trained again made TensorBoard warn of "a TensorFlow restart",
    on stderr, even with --quiet."""
    from ptool.core.lr_plot import read_scalars

    config = small(tmp_path, "run", tensorboard=True, keep_last=3, **EXACT)
    fit(config, quiet=True)
    time.sleep(1.1)  # see the test above
    resume_run(plan_resume(tmp_path / "run" / "epoch-1.pt", {}), quiet=True)
    caplog.clear()
    assert [step for step, _ in read_scalars(tmp_path / "run" / "tensorboard")["lr"]] == list(
        range(15)
    )
    assert [record.getMessage() for record in caplog.records] == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "--epochs must be at least 1, got 0"),
        ({"save_every_steps": 0}, "--save-every-steps must be at least 1, got 0"),
        ({"keep_last": -1}, "--keep-last must be at least 1, got -1"),
        ({"early_stop_patience": -1}, "--early-stop-patience must be at least 0, got -1"),
        ({"device": "tpu"}, "invalid --device 'tpu'; valid: auto, cpu, cuda, cuda:N, mps"),
    ],
)
def test_a_resumes_flags_are_checked_before_the_checkpoint_is_read(tmp_path, overrides, message):
    """Checked after loading, the refusal came after the "resuming ..." lines."""
    with pytest.raises(UsageError) as caught:
        plan_resume(tmp_path / "not-there.pt", overrides)
    assert str(caught.value) == message


def test_extending_a_finished_run_continues_or_replans_the_schedule(tmp_path):
    config = small(tmp_path, "run", epochs=2, scheduler="cosine", scheduler_interval="step")
    fit(config, quiet=True)
    with pytest.raises(UsageError, match="has finished its 2 epochs"):
        plan_resume(tmp_path / "run", {})

    with pytest.raises(UsageError, match="has trained 2 epochs already; --epochs is the total"):
        plan_resume(tmp_path / "run", {"epochs": 1})

    continued = plan_resume(tmp_path / "run", {"epochs": 4, "out": str(tmp_path / "a")})
    assert "continues from its saved state" in continued.notes[1]
    replanned = plan_resume(
        tmp_path / "run", {"epochs": 4, "out": str(tmp_path / "b")}, reschedule=True
    )
    assert "re-planned for 4 epochs" in replanned.notes[1]
    resume_run(continued, quiet=True)
    resume_run(replanned, quiet=True)
    lr = lambda run: torch.load(tmp_path / run / "last.pt", weights_only=True)[  # noqa: E731
        "optimizer_state_dict"
    ]["param_groups"][0]["lr"]
    # oracle for "continues": torch's cosine stepped past its horizon (T_max = 10 steps)
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=config.lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    for _ in range(20):
        opt.step()
        cosine.step()
    assert lr("a") == pytest.approx(opt.param_groups[0]["lr"])
    # oracle for "re-planned": the 4-epoch schedule's lr after its 20 steps
    planned = config.replace(epochs=4)
    last_used = lr_series(planned, steps_per_epoch=5)[-1]["lr"]
    assert lr("b") < last_used and lr("b") == pytest.approx(0.0, abs=1e-12)
    # the continued run's config.yaml is the schedule it followed: it said epochs 4 alone, so
    # a run from it (and lr-plot of it) planned its cosine over 4 epochs, not the 2 it kept
    saved = TrainConfig.from_dict(read_config_file(tmp_path / "a" / "config.yaml"))
    assert (saved.epochs, saved.schedule_epochs) == (4, 2)
    again = fit(saved.replace(out=str(tmp_path / "again")), quiet=True)
    assert_same_weights(weights(tmp_path / "a" / "last.pt"), weights(again.checkpoints["last"]))
    replanned = TrainConfig.from_dict(read_config_file(tmp_path / "b" / "config.yaml"))
    assert (replanned.epochs, replanned.schedule_epochs) == (4, None)


def test_a_resumed_runs_wall_time_counts_every_session(tmp_path):
    first = fit(small(tmp_path, "run", epochs=1), quiet=True)
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    before = saved["callbacks"]["train_state"]["wall_time_s"]
    assert 0 < before <= first.wall_time_s
    resumed = resume_run(plan_resume(tmp_path / "run", {"epochs": 2}), quiet=True)
    assert resumed.wall_time_s > before and resumed.wall_time_s >= resumed.train_time_s


def test_changing_the_model_data_or_optimizer_is_refused_naming_init_from(tmp_path):
    fit(small(tmp_path, "run", epochs=1), quiet=True)
    for change in ({"model": "cnn"}, {"data": "digits"}, {"optimizer": "sgd"}, {"lr": 0.5}):
        with pytest.raises(UsageError, match="init-from") as info:
            plan_resume(tmp_path / "run", {"epochs": 2, **change})
        assert f"--{next(iter(change))}" in str(info.value)
    with pytest.raises(UsageError, match="--init-from starts a new run"):
        plan_resume(tmp_path / "run", {"epochs": 2, "init_from": str(tmp_path / "run/best.pt")})
    plan = plan_resume(tmp_path / "run", {"epochs": 2, "model": "mlp", "early_stop_patience": 1})
    assert plan.config.early_stop_patience == 1  # unchanged values and allowed flags pass
    assert plan_resume(tmp_path / "run", {"epochs": 2, "mode": "min"}).config.mode == "auto"
    # what the run's defaults stand for: AdamW's 0.01, a "none" schedule stepped per epoch
    same = {"weight_decay": 0.01, "scheduler_interval": "epoch"}
    assert plan_resume(tmp_path / "run", {"epochs": 2, **same}).config.weight_decay is None
    with pytest.raises(UsageError, match="--weight-decay 0.0 changes the optimizer"):
        plan_resume(tmp_path / "run", {"epochs": 2, "weight_decay": 0.0})
    with pytest.raises(UsageError, match="--scheduler-interval step changes the scheduler"):
        plan_resume(tmp_path / "run", {"epochs": 2, "scheduler_interval": "step"})
    with pytest.raises(UsageError, match="--mode max changes the loop settings"):
        plan_resume(tmp_path / "run", {"epochs": 2, "mode": "max"})  # auto: min for val/loss
    with pytest.raises(UsageError) as info:  # the saved value as a flag, not Python's None
        plan_resume(tmp_path / "run", {"epochs": 2, "clip_norm": 1.0})
    assert str(info.value).startswith(
        "--clip-norm 1.0 changes the loop settings of the run being resumed "
        "(it has --clip-norm none)"
    )
    with pytest.raises(UsageError) as info:  # read by no part of this run: as train says
        plan_resume(tmp_path / "run", {"epochs": 2, "channels": [8]})
    assert str(info.value) == "--channels is an option of the cnn model; this run's is mlp"
    assert info.value.hint == "drop it"


def test_a_resume_on_data_that_changed_since_is_refused(tmp_path):
    """Another row count re-splits the data and re-orders the epochs: not the run continued."""
    data, _ = csv_run(tmp_path)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with data.open("a") as file:
        file.write("1,2,a\n")
    plan = plan_resume(tmp_path / "run", {"epochs": 2})
    with pytest.raises(PtoolError) as err:
        resume_run(plan, quiet=True)
    assert str(err.value).endswith(
        "is not the data this run trained on: 33 training and 8 validation samples now, "
        "32 and 8 when it trained"
    )
    assert "--init-from" in err.value.hint
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_a_csv_moved_or_named_from_another_folder_resumes_if_it_is_the_same_data(tmp_path):
    """A run records --data as typed: from another folder its relative CSV was not found, and
    naming it from there was refused as "changes the data" (only --init-from was left)."""
    data, rows = csv_run(tmp_path)
    (tmp_path / "moved").mkdir()
    shutil.move(data, tmp_path / "moved" / "d.csv")
    plan = plan_resume(tmp_path / "run", {"epochs": 2, "data": f"csv:{tmp_path}/moved/d.csv"})
    assert plan.config.data == f"csv:{tmp_path}/moved/d.csv"
    resume_run(plan, quiet=True)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 2
    other = [f"{i % 5},{(i * 3) % 7},{'ab'[i % 2]}" for i in range(40)]  # same size, classes
    (tmp_path / "other.csv").write_text("\n".join(["u,v,label", *other]) + "\n")
    plan = plan_resume(tmp_path / "run", {"epochs": 3, "data": f"csv:{tmp_path}/other.csv"})
    with pytest.raises(PtoolError, match="not the data this run trained on: its values differ"):
        resume_run(plan, quiet=True)
    with pytest.raises(UsageError, match="--data digits changes the data"):  # another kind
        plan_resume(tmp_path / "run", {"epochs": 3, "data": "digits"})


def test_a_copied_or_moved_run_continues_where_it_is_now(tmp_path):
    """The saved `out` names the original directory: resuming the copy must not write there."""
    fit(small(tmp_path, "run", epochs=1), quiet=True)
    original = (tmp_path / "run" / "last.pt").read_bytes()
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    plan = plan_resume(tmp_path / "copy", {"epochs": 2})
    assert plan.config.out == str(tmp_path / "copy")
    assert f"(the run was saved from {tmp_path / 'run'})" in plan.notes[1]
    resume_run(plan, quiet=True)
    assert (tmp_path / "run" / "last.pt").read_bytes() == original
    assert torch.load(tmp_path / "copy" / "last.pt", weights_only=True)["epoch"] == 2
    # with its own config.yaml (train --resume --config), whose `out` names the original: it
    # resumed into the original (moved) or was refused as another run's files (copied)
    shutil.move(tmp_path / "copy", tmp_path / "moved")
    own = tmp_path / "moved" / "config.yaml"
    plan = plan_resume(tmp_path / "moved", {"epochs": 3}, config_file=own)
    assert plan.config.out == str(tmp_path / "moved")
    started = read_config_file(own)["out"]
    plan = plan_resume(tmp_path / "moved", {"epochs": 3, "out": started}, config_file=own)
    assert plan.config.out == started  # a flag naming it is the user's choice
    # a value of the file that changes the run is refused naming the file
    (tmp_path / "lr.yaml").write_text("lr: 0.5\n")
    with pytest.raises(UsageError, match=r"lr\.yaml: --lr 0\.5 changes the optimizer"):
        plan_resume(tmp_path / "moved", {"epochs": 3}, config_file=tmp_path / "lr.yaml")
    with pytest.raises(UsageError, match=r"^--lr 0\.1 changes"):  # a flag over the file's
        plan_resume(tmp_path / "moved", {"lr": 0.1}, config_file=tmp_path / "lr.yaml")
    (tmp_path / "init.yaml").write_text(f"init_from: {tmp_path / 'run' / 'last.pt'}\n")
    with pytest.raises(UsageError, match=r"init\.yaml: --init-from starts a new run"):
        plan_resume(tmp_path / "moved", {"epochs": 3}, config_file=tmp_path / "init.yaml")


def test_a_run_resumed_from_another_folder_is_where_it_was_and_hints_paste_whole(
    tmp_path, monkeypatch
):
    """A relative --out seen from elsewhere read as a moved run ("writing to ../my run (the
    run was saved from my run)"); hints named paths with spaces unquoted, which a shell
    splits."""
    monkeypatch.chdir(tmp_path)
    fit(small(tmp_path, "run", epochs=1).replace(out="my run"), quiet=True)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    plan = plan_resume(Path("../my run"), {"epochs": 2})
    assert plan.config.out == "../my run" and not any("writing to" in n for n in plan.notes)
    with pytest.raises(UsageError) as refused:
        plan_resume(Path("../my run"), {"epochs": 2, "lr": 0.5})
    assert refused.value.hint == "ptool train --init-from '../my run/last.pt' --lr 0.5 ..."


def test_a_new_run_or_a_resume_never_replaces_another_runs_checkpoints(tmp_path):
    fit(small(tmp_path, "run", epochs=1), quiet=True)
    fit(small(tmp_path, "other", epochs=1, seed=1), quiet=True)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").glob("*.pt")}
    with pytest.raises(UsageError, match="holds another run's checkpoints") as info:
        fit(small(tmp_path, "run", epochs=1, model="cnn"), quiet=True)
    # the run has finished its 1 epoch: the hint's command extends it
    command = f"ptool resume {tmp_path / 'run'} --epochs 2"
    assert info.value.hint == f"continue that run with: {command}; or choose another --out"
    with pytest.raises(UsageError, match="holds another run's checkpoints"):
        plan_resume(tmp_path / "other", {"epochs": 2, "out": str(tmp_path / "run")})
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").glob("*.pt")} == before


def test_a_checkpoint_copied_into_another_runs_directory_does_not_replace_its_files(tmp_path):
    """Continuing where the checkpoint is rewrites last.pt and best.pt there: only when they are
    the same run's (an earlier epoch file resumes in its own run directory as before)."""
    fit(small(tmp_path, "a", epochs=1, keep_last=2), quiet=True)
    fit(small(tmp_path, "b", epochs=1, seed=1), quiet=True)
    shutil.copyfile(tmp_path / "a" / "last.pt", tmp_path / "b" / "from-a.pt")
    before = {p.name: p.read_bytes() for p in (tmp_path / "b").glob("*.pt")}
    with pytest.raises(UsageError, match=r"holds another run's checkpoints \(best.pt, last.pt\)"):
        plan_resume(tmp_path / "b" / "from-a.pt", {"epochs": 2})
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").glob("*.pt")} == before
    own = plan_resume(tmp_path / "a" / "epoch-1.pt", {"epochs": 2, "early_stop_patience": 3})
    assert own.config.out == str(tmp_path / "a")
    older = torch.load(tmp_path / "a" / "best.pt", weights_only=True)
    del older["config"]["data_seed"]  # written by a ptool without that option
    torch.save(older, tmp_path / "a" / "best.pt")
    assert plan_resume(tmp_path / "a" / "last.pt", {"epochs": 2}).config.out == str(tmp_path / "a")
    elsewhere = plan_resume(tmp_path / "b" / "from-a.pt", {"epochs": 2, "out": str(tmp_path / "c")})
    assert elsewhere.config.out == str(tmp_path / "c")


def test_a_resume_runs_as_many_processes_as_the_run(tmp_path, monkeypatch):
    fit(small(tmp_path, "run", epochs=1), quiet=True)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    ckpt["rng_state"]["data_order"]["world_size"] = 2  # as a torchrun job of 2 saves it
    torch.save(ckpt, tmp_path / "ddp.pt")
    with pytest.raises(UsageError, match="trained by 2 processes, this resume runs 1") as info:
        plan_resume(tmp_path / "ddp.pt", {"epochs": 2, "out": str(tmp_path / "a")})
    assert "torchrun --nproc_per_node 2 -m ptool resume" in info.value.hint
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="trained by 1 process, this resume runs 2"):
        plan_resume(tmp_path / "run", {"epochs": 2})
    with pytest.raises(UsageError, match="has finished its 1 epoch$") as info:
        plan_resume(tmp_path / "ddp.pt", {})
    assert info.value.hint == (  # the other hints too: as the run ran, under torchrun
        f"extend the run: torchrun --nproc_per_node 2 -m ptool resume {tmp_path / 'ddp.pt'} "
        "--epochs 2"
    )


def test_onecycle_cannot_be_extended_without_replanning(tmp_path):
    fit(small(tmp_path, "run", epochs=1, scheduler="onecycle"), quiet=True)
    with pytest.raises(UsageError, match="onecycle was planned for 1 epoch and") as info:
        plan_resume(tmp_path / "run", {"epochs": 2})
    assert info.value.hint.endswith("--epochs 2 --reschedule")
    resume_run(plan_resume(tmp_path / "run", {"epochs": 2}, reschedule=True), quiet=True)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 2


def test_refusal_hints_are_commands_that_run(tmp_path):
    from typer.testing import CliRunner

    from ptool.cli import app

    fit(small(tmp_path, "run", epochs=1), quiet=True)
    changes = (
        ({"norm": "layer"}, "--norm layer"),
        ({"shuffle": False}, "--no-shuffle"),
        ({"data": "csv:my data.csv"}, "--data 'csv:my data.csv'"),
    )
    for change, flag in changes:
        with pytest.raises(UsageError) as info:
            plan_resume(tmp_path / "run", {"epochs": 2, **change})
        checkpoint = tmp_path / "run" / "last.pt"
        assert info.value.hint == f"ptool train --init-from {checkpoint} {flag} ..."
        args = shlex.split(info.value.hint)[1:-1] + ["--print-config"]
        assert CliRunner().invoke(app, args).exit_code == 0


def test_a_model_that_cannot_be_rebuilt_fails_like_in_eval(tmp_path, monkeypatch):
    """A checkpoint naming a module:function model is refused unless the user trusts its
    code (--trust-code), as in eval; trusted, a module that is not there is a bad file."""
    fit(small(tmp_path, "run", epochs=1), quiet=True)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    ckpt["config"]["model"] = "nosuchmod:build"
    torch.save(ckpt, tmp_path / "run" / "last.pt")
    monkeypatch.delenv(TRUST_CODE_ENV, raising=False)  # a developer's shell may trust
    with pytest.raises(PtoolError, match="imports and runs the Python module 'nosuchmod'") as info:
        plan_resume(tmp_path / "run", {"epochs": 2})
    assert "--trust-code" in info.value.hint
    monkeypatch.setenv(TRUST_CODE_ENV, "1")
    with pytest.raises(PtoolError, match="cannot rebuild the checkpoint's model") as info:
        resume_run(plan_resume(tmp_path / "run", {"epochs": 2, "out": str(tmp_path / "o")}))
    assert info.value.exit_code == 1  # a bad file, as eval and predict say it


def test_hints_that_continue_a_run_of_the_users_model_code_trust_it(tmp_path, monkeypatch):
    """Such a run's resume imports its module again: without --trust-code in the hints'
    commands, copying them stopped at the refusal."""
    (tmp_path / "own_mlp.py").write_text(
        "import torch\n"
        "def build(input_shape, num_outputs):\n"
        "    return torch.nn.Linear(input_shape[0], num_outputs)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = small(tmp_path, "run", epochs=1, model="own_mlp:build")
    fit(config.replace(norm=TrainConfig().norm), quiet=True)  # the mlp's --norm left out
    command = rundir.continue_command(tmp_path / "run")
    assert command == f"ptool resume {tmp_path / 'run'} --trust-code --epochs 2"
    with trusting_code():  # what the flag does for its command
        resume_run(plan_resume(tmp_path / "run", {"epochs": 2}), quiet=True)
        with pytest.raises(UsageError, match="has finished its 2 epochs") as info:
            plan_resume(tmp_path / "run", {})
    last = tmp_path / "run" / "last.pt"
    assert info.value.hint == f"extend the run: ptool resume {last} --trust-code --epochs 3"


def test_weights_that_do_not_fit_the_model_are_one_line_as_in_eval(tmp_path):
    """A resume whose saved weights did not fit said "unexpected RuntimeError: Error(s) in
    loading state_dict for SequentialNet:" (cut at the colon) and asked for a bug report."""
    fit(small(tmp_path, "run", epochs=1), quiet=True)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    name = next(iter(ckpt["model_state_dict"]))
    ckpt["model_state_dict"][name] = torch.zeros(3)
    torch.save(ckpt, tmp_path / "run" / "last.pt")
    with pytest.raises(PtoolError, match=f"do not fit the rebuilt model: size mismatch for {name}"):
        resume_run(plan_resume(tmp_path / "run", {"epochs": 2}), quiet=True)


def test_without_an_argument_the_newest_run_is_the_one_eval_picks(tmp_path, monkeypatch):
    """A file that prune or quantize writes into an older run does not make it the newest."""
    monkeypatch.chdir(tmp_path)
    fit(small(tmp_path, "runs/a", epochs=1), quiet=True)
    fit(small(tmp_path, "runs/b", epochs=1), quiet=True)
    os.utime(tmp_path / "runs/a/last.pt", (1, 1))  # b's checkpoints are the newest
    os.utime(tmp_path / "runs/a/best.pt", (1, 1))
    (tmp_path / "runs/a/best.pruned.pt").write_bytes(b"")  # a's directory is touched last
    assert find_checkpoint(None).resolve() == (tmp_path / "runs/b/last.pt").resolve()
    assert ckpt_io.find_default_checkpoint().resolve() == (tmp_path / "runs/b/best.pt").resolve()


def test_top_k_files_stay_the_k_best_epochs_across_a_resume(tmp_path):
    """Each checkpoint's top-k list includes its own epoch, so the resumed run ranks it."""
    fit(small(tmp_path, "run", epochs=3, save_top_k=2, keep_last=6, lr=0.05), quiet=True)
    resume_run(plan_resume(tmp_path / "run", {"epochs": 6}), quiet=True)
    run = tmp_path / "run"
    losses = {
        saved["epoch"]: saved["metrics"]["val/loss"]
        for saved in (torch.load(p, weights_only=True) for p in run.glob("epoch-*.pt"))
    }
    best_two = sorted(losses, key=losses.get)[:2]
    assert sorted(p.name for p in run.glob("best-epoch*.pt")) == sorted(
        f"best-epoch{e}.pt" for e in best_two
    )
    listed = torch.load(run / "last.pt", weights_only=True)["callbacks"]["train_state"]["top_k"]
    assert sorted(entry[1] for entry in listed) == sorted(best_two)


def test_the_top_k_lists_only_files_the_directory_holds(tmp_path):
    """A resume elsewhere (--out) or from an earlier checkpoint finds the checkpoint's top-k
    files gone; they used to stay listed (summary, --json) and ranked."""
    fit(small(tmp_path, "run", epochs=3, save_top_k=2, lr=0.05), quiet=True)
    other = tmp_path / "other"
    summary = resume_run(
        plan_resume(tmp_path / "run" / "last.pt", {"epochs": 4, "out": str(other)}), quiet=True
    )
    assert summary.checkpoints["top_k"] == [str(other / "best-epoch4.pt")]
    assert (other / "best-epoch4.pt").exists()
    listed = torch.load(other / "last.pt", weights_only=True)["callbacks"]["train_state"]["top_k"]
    assert [entry[2] for entry in listed] == ["best-epoch4.pt"]


def test_an_early_stopped_run_needs_more_patience_to_go_on(tmp_path):
    config = small(tmp_path, "run", epochs=8, min_delta=10.0, early_stop_patience=2)
    assert fit(config, quiet=True).status == "early_stopped"
    with pytest.raises(UsageError, match="stopped early: val/loss did not improve for 2") as info:
        plan_resume(tmp_path / "run", {})
    assert info.value.hint.endswith("--early-stop-patience 4")
    summary = resume_run(plan_resume(tmp_path / "run", {"early_stop_patience": 4}), quiet=True)
    assert summary.epochs == 5 and summary.status == "early_stopped"
    # patience 0 stops at an epoch's end; a mid-epoch checkpoint has not stopped yet
    config = small(tmp_path, "mid", epochs=2, early_stop_patience=0, save_every_steps=2)
    fit(config, quiet=True)
    mid = torch.load(tmp_path / "mid" / "last.pt", weights_only=True)
    mid.update(epoch=0, batch_in_epoch=2)
    mid["callbacks"]["train_state"].update(epoch=0, batch_in_epoch=2, early_stop_wait=0)
    torch.save(mid, tmp_path / "mid.pt")
    assert plan_resume(tmp_path / "mid.pt", {"out": str(tmp_path / "mid2")}).config.epochs == 2


def test_run_dir_resumes_from_its_newest_valid_checkpoint(tmp_path):
    fit(small(tmp_path, "run", epochs=2, keep_last=2), quiet=True)
    run = tmp_path / "run"
    assert find_checkpoint(run) == run / "last.pt"
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:1000])  # torn
    steps = {p.name: torch.load(p, weights_only=True)["global_step"] for p in run.glob("e*.pt")}
    assert steps["epoch-1.pt"] < steps["epoch-2.pt"]
    os.utime(run / "epoch-1.pt")  # a copied run directory: file times say nothing
    (run / "best.int8.pt").write_bytes((run / "epoch-1.pt").read_bytes())
    ckpt = torch.load(run / "best.int8.pt", weights_only=True)
    del ckpt["global_step"]  # a derived file, not a training state
    torch.save(ckpt, run / "best.int8.pt")
    found = find_checkpoint(run)
    assert torch.load(found, weights_only=True)["global_step"] == steps["epoch-2.pt"]
    notes = plan_resume(run, {"epochs": 3}).notes
    assert f"{run / 'last.pt'} does not load (torn or corrupt): skipped for" in notes[1]
    for path in run.glob("*.pt"):
        path.unlink()
    with pytest.raises(PtoolError, match="no valid checkpoint") as info:
        plan_resume(run, {})
    assert info.value.hint.endswith(f"ptool train --config {run / 'config.yaml'} --out {run}")
    (run / "config.yaml").unlink()  # a folder that never held a run: it said no more
    with pytest.raises(PtoolError, match="no valid checkpoint") as info:
        plan_resume(run, {})
    assert info.value.hint == "it holds no checkpoint and no config.yaml: not a run directory"


def test_a_kill_before_an_epochs_copies_are_written_redoes_the_epoch(tmp_path, monkeypatch):
    """An epoch's copies (epoch-N.pt, best.pt) are written before last.pt: killed between them,
    the run's last.pt is the epoch before, so the resume redoes the epoch and writes its copies
    again. (Written after last.pt, best.pt stayed an older epoch's for good.)"""
    from ptool.core import callbacks

    fit(small(tmp_path, "full", keep_last=3, **EXACT), quiet=True)
    full, cut = tmp_path / "full", tmp_path / "cut"
    best = torch.load(full / "last.pt", weights_only=True)["callbacks"]["train_state"]
    assert best["best_epoch"] >= 2  # an epoch with a last.pt before it
    copy = callbacks.atomic_copy

    def killed_at_the_best_copy(source, target):
        if target.name == "best.pt" and source.name == f"epoch-{best['best_epoch']}.pt":
            raise RuntimeError("killed")
        return copy(source, target)

    monkeypatch.setattr(callbacks, "atomic_copy", killed_at_the_best_copy)
    with pytest.raises(RuntimeError, match="killed"):
        fit(small(tmp_path, "cut", keep_last=3, **EXACT), quiet=True)
    monkeypatch.undo()
    assert torch.load(cut / "last.pt", weights_only=True)["epoch"] == best["best_epoch"] - 1
    summary = resume_run(plan_resume(cut, {}), quiet=True)
    for name in ("last.pt", "best.pt", "epoch-1.pt", "epoch-2.pt", "epoch-3.pt"):
        assert_same_weights(weights(full / name), weights(cut / name))
    assert summary.checkpoints["epochs"] == [str(cut / f"epoch-{n}.pt") for n in (1, 2, 3)]


def test_the_schedules_own_horizon_survives_a_resume_that_changed_epochs(tmp_path):
    """onecycle planned for 3 epochs, resumed from epoch-1.pt for 2, then for 3 again: that is
    its own plan, so it continues (no refusal, no note) and ends as the uninterrupted run."""
    fit(small(tmp_path, "full", **EXACT), quiet=True)
    fit(small(tmp_path, "run", keep_last=3, **EXACT), quiet=True)
    run = tmp_path / "run"
    shortened = plan_resume(run / "epoch-1.pt", {"epochs": 2})
    assert "planned for 3 epochs" in shortened.notes[1]
    lines: list[str] = []
    summary = resume_run(shortened, log=lines.append, progress=False)
    # epoch-3.pt of the abandoned timeline stays on disk, outside this run's --keep-last,
    # and the resume says so (epoch 2, which it redoes, replaces its own)
    assert summary.checkpoints["epochs"] == [str(run / "epoch-1.pt"), str(run / "epoch-2.pt")]
    assert (run / "epoch-3.pt").exists()
    assert lines[0].startswith(f"warning: {run} holds epoch-3.pt from before this resume from")
    plan = plan_resume(run, {"epochs": 3})
    assert len(plan.notes) == 1  # "resuming ...", and no word on the schedule
    resume_run(plan, quiet=True)
    assert_same_weights(weights(tmp_path / "full/last.pt"), weights(run / "last.pt"))
    with pytest.raises(UsageError, match="onecycle was planned for 3 epochs"):
        plan_resume(run, {"epochs": 4})


def test_an_interrupted_sessions_hparams_give_way_to_the_resumed_runs(tmp_path):
    """A Ctrl-C'd session logs its metrics for the HParams dashboard at its checkpoint's step,
    which the resume purges: the resumed run shows one point, its own."""
    import signal

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ptool.core.signals import Interrupted

    class CtrlCAtStep7:
        def on_step_end(self, trainer):
            if trainer.state.global_step == 7:
                trainer.stop.signum = signal.SIGINT

    config = small(tmp_path, "run", tensorboard=True, **EXACT)
    with pytest.raises(Interrupted):
        fit(config, callbacks=[CtrlCAtStep7()], quiet=True)
    time.sleep(1.1)  # see test_tensorboard_curves_continue_without_duplicated_or_missing_steps
    resume_run(plan_resume(tmp_path / "run", {}), quiet=True)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("hparam/val/loss")] == [15]


class _FillsUp(io.RawIOBase):
    """A file on a disk that fills up mid-write: 600 bytes fit, then the kernel's ENOSPC."""

    def __init__(self, path):
        self.file, self.room = builtins.open(path, "wb"), 600  # noqa: SIM115 - see close()

    def writable(self):
        return True

    def write(self, data):
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(data), self.room)
        self.room -= n
        return self.file.write(bytes(data[:n]))

    def close(self):
        self.file.close()
        super().close()


def _dev_full(_):
    return builtins.open("/dev/full", "wb")  # noqa: SIM115 - closed by atomic_write


@pytest.mark.parametrize(
    ("written", "writer", "message"),
    [
        # full before the write: the kernel's own ENOSPC, from /dev/full
        (".pt.tmp-", _dev_full, "no space left on device; the previous"),
        # full during it: torch's zip writer raises its own RuntimeError ("unexpected pos")
        (
            ".pt.tmp-",
            _FillsUp,
            "the write stopped short, .* bytes free on the device; the previous",
        ),
        # full after best.pt, at the copy to last.pt
        (".last.pt.tmp-", _dev_full, r"checkpoint \S+last.pt: no space left on device; the prev"),
    ],
)
def test_a_full_disk_stops_the_run_and_leaves_the_previous_checkpoint(
    tmp_path, monkeypatch, written, writer, message
):
    config = small(tmp_path, "run", epochs=3)
    fit(config.replace(epochs=1), quiet=True)
    before = (tmp_path / "run" / "last.pt").read_bytes()

    def opener(path, mode="r", *args, **kwargs):
        if "w" in mode and written in str(path):
            return writer(path)
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(rundir, "open", opener, raising=False)  # atomic_write's
    with pytest.raises(PtoolError, match=message):
        resume_run(plan_resume(tmp_path / "run", {"epochs": 3}), quiet=True)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    assert not list((tmp_path / "run").glob(".*.tmp-*"))


def test_a_checkpoint_past_the_file_size_limit_names_the_limit_not_the_disk(tmp_path):
    """Under `ulimit -f` the write stops short as on a full disk; the message said "N bytes
    free on the device" with "free some disk space", wrong with gigabytes free."""
    resource = pytest.importorskip("resource")
    from ptool.core.checkpoint import atomic_save

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        with pytest.raises(PtoolError, match=r"\(ulimit -f\), 100,000 bytes; nothing") as info:
            atomic_save({"w": torch.zeros(50_000)}, tmp_path / "big.pt")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert info.value.hint == "raise the limit (ulimit -f unlimited), or save elsewhere"
    assert list(tmp_path.iterdir()) == []


def test_checkpoints_that_cannot_be_resumed_fail_with_one_line(tmp_path):
    fit(small(tmp_path, "run", epochs=1), quiet=True)
    saved = (tmp_path / "run" / "last.pt").read_bytes()
    for name, content, reason in (
        ("empty.pt", b"", "is empty"),
        ("junk.pt", b"not a checkpoint at all", "is not a PyTorch checkpoint"),
        ("notes.pt", b"hello\n", "is not a PyTorch checkpoint"),
        ("table.csv", b"a,b\n1,2\n", "is not a PyTorch checkpoint"),  # torch: IndexError
        ("bad-opcode.pt", b"\x80\x02garbage", "is not a PyTorch checkpoint"),
        ("one-byte.pt", b"\x80", "is not a PyTorch checkpoint"),  # torch: IndexError
        ("head.pt", saved[:2000], "is truncated or corrupt"),
        ("half.pt", saved[: len(saved) // 2], "is truncated or corrupt"),
    ):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(PtoolError, match=reason) as info:
            plan_resume(tmp_path / name, {})
        assert "\n" not in str(info.value) and "weights_only" not in str(info.value)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    del ckpt["optimizer_state_dict"]
    torch.save(ckpt, tmp_path / "weights-only.pt")
    with pytest.raises(PtoolError, match="cannot be resumed: it has no optimizer_state_dict"):
        plan_resume(tmp_path / "weights-only.pt", {"epochs": 2})
    ckpt["format_version"] = 99
    torch.save(ckpt, tmp_path / "newer.pt")
    with pytest.raises(PtoolError, match="format version 99"):
        plan_resume(tmp_path / "newer.pt", {})
    full = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    full["config"]["model"] = "no.such.module:factory"
    torch.save(full, tmp_path / "unbuildable.pt")
    with pytest.raises(PtoolError):
        resume_run(plan_resume(tmp_path / "unbuildable.pt", {"epochs": 2}), quiet=True)


def test_an_unwritable_directory_stops_the_run_with_one_line(tmp_path, monkeypatch):
    config = small(tmp_path, "run", epochs=3)
    fit(config.replace(epochs=1), quiet=True)
    before = (tmp_path / "run" / "last.pt").read_bytes()

    def denied(path, mode="r", *args, **kwargs):  # what open() raises in a read-only directory
        if "w" in mode and ".pt.tmp-" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(rundir, "open", denied, raising=False)  # atomic_write's
    with pytest.raises(
        PtoolError, match=r"Permission denied; the previous checkpoint is untouched"
    ):
        resume_run(plan_resume(tmp_path / "run", {"epochs": 3}), quiet=True)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes through chmod 0o500 (see the test above)"
)
def test_a_read_only_run_directory_stops_the_run_with_one_line(tmp_path):
    fit(small(tmp_path, "run", epochs=1), quiet=True)
    (tmp_path / "run").chmod(0o500)
    try:
        with pytest.raises(PtoolError, match="the previous checkpoint is untouched"):
            resume_run(plan_resume(tmp_path / "run", {"epochs": 2}), quiet=True)
    finally:
        (tmp_path / "run").chmod(0o700)


def test_a_temporary_file_left_by_a_killed_save_is_removed_at_resume(tmp_path):
    fit(small(tmp_path, "run", epochs=1), quiet=True)
    dead = subprocess.Popen(["true"])  # a process id that no longer runs  # noqa: S607
    dead.wait()
    torn = tmp_path / "run" / f".last.pt.tmp-{dead.pid}"
    torn.write_bytes(b"PK\x03\x04 half a checkpoint")
    resume_run(plan_resume(tmp_path / "run", {"epochs": 2}), quiet=True)
    assert not torn.exists()
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 2


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_a_file_name_the_locale_cannot_decode_loads(tmp_path):
    """Under an ASCII locale, `é` in a name comes as surrogates, which torch's mmap load could
    not encode: 'cannot read ...: surrogates not allowed' where torch.load itself reads it."""
    path = tmp_path / os.fsdecode(b"caf\xff.pt")  # not UTF-8: a surrogate, as `é` is there
    torch.save({"w": torch.arange(3)}, path)
    assert torch.equal(ckpt_io.load(path)["w"], torch.arange(3))


def test_loading_a_quantized_tensor_prints_no_typed_storage_warning(tmp_path, monkeypatch):
    q = torch.quantize_per_tensor(torch.randn(4, 4), 0.1, 0, torch.qint8)
    torch.save({"q": q}, tmp_path / "q.pt")
    # torch warns once per process; make it warn every time so an earlier load can't hide it
    monkeypatch.setattr(torch.storage, "_always_warn_typed_storage_removal", True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.equal(ckpt_io.load(tmp_path / "q.pt")["q"].int_repr(), q.int_repr())
    assert not [w for w in caught if "TypedStorage" in str(w.message)]


def test_init_from_a_plain_state_dict_with_a_new_head(tmp_path):
    """Transfer to 5 classes: the body loads, the head of another shape is listed and kept
    fresh (--no-strict), and --strict refuses it naming both shapes."""
    fit(small(tmp_path, "first", epochs=1), quiet=True)
    body = weights(tmp_path / "first/last.pt")
    torch.save(body, tmp_path / "plain.pt")
    seen = {}

    class Grab:
        def on_fit_start(self, trainer):
            seen.update({k: v.clone() for k, v in trainer.model.state_dict().items()})

    new_task = dict(num_classes=5, epochs=1, init_from=str(tmp_path / "plain.pt"))
    with pytest.raises(UsageError, match=r"shape-mismatched keys \(2\): head.weight \[3, 16\]"):
        fit(small(tmp_path, "strict", **new_task), quiet=True)
    fit(small(tmp_path, "loose", strict=False, **new_task), quiet=True, callbacks=[Grab()])
    heads = [k for k in body if k.startswith("head")]
    assert heads and all(torch.equal(seen[k], body[k]) for k in body if k not in heads)
    assert all(seen[k].shape[0] == 5 for k in heads)


def test_a_checkpoint_that_needs_unpickling_loads_only_with_unsafe_load(tmp_path):
    """A Lightning checkpoint keeps its hyper-parameters as an argparse.Namespace: train
    --init-from takes it with --unsafe-load; the commands without that flag don't name it."""
    import argparse

    fit(small(tmp_path, "first", epochs=1), quiet=True)
    state = {f"model.{k}": v for k, v in weights(tmp_path / "first/last.pt").items()}
    lightning = {"state_dict": state, "hyper_parameters": argparse.Namespace(lr=0.1)}
    torch.save(lightning, tmp_path / "lightning.ckpt")
    config = small(tmp_path, "second", epochs=1, init_from=str(tmp_path / "lightning.ckpt"))
    with pytest.raises(PtoolError, match="argparse.Namespace") as info:
        fit(config, quiet=True)
    assert "--unsafe-load" in info.value.hint
    fit(config, quiet=True, unsafe_load=True)
    with pytest.raises(PtoolError, match="argparse.Namespace") as info:
        ckpt_io.load_checkpoint(tmp_path / "lightning.ckpt")  # eval, predict, prune, quantize
    assert "--unsafe-load" not in info.value.hint
