"""lr-plot's sources: steps per epoch, metric files, checkpoints, config files, TensorBoard logs."""

from __future__ import annotations

import pytest
import torch

from ptool.core import lr_plot as core
from ptool.core.config import TrainConfig
from ptool.core.errors import UsageError


@pytest.mark.parametrize(
    ("samples", "batch", "accumulate", "drop_last", "expected"),
    [(1000, 64, 1, False, 16), (1000, 64, 1, True, 15), (1000, 64, 3, False, 6), (64, 64, 2, 0, 1)],
)
def test_steps_per_epoch_counts_optimizer_steps(samples, batch, accumulate, drop_last, expected):
    config = TrainConfig(batch_size=batch, accumulate=accumulate, drop_last=bool(drop_last))
    assert core.steps_per_epoch(config, samples=samples) == expected
    assert core.steps_per_epoch(config, train_size=samples) == expected
    assert core.steps_per_epoch(config, given=7, samples=samples) == 7


def test_unknown_steps_per_epoch():
    assert core.steps_per_epoch(TrainConfig(scheduler="cosine")) == 1  # one point per epoch
    assert core.steps_per_epoch(TrainConfig(scheduler="onecycle")) == 0  # refused later
    with pytest.raises(UsageError):
        core.steps_per_epoch(TrainConfig(), given=0)


def test_drop_last_leaving_no_batch_names_the_batch_size():
    config = TrainConfig(scheduler="cosine", batch_size=64, drop_last=True)
    with pytest.raises(UsageError, match="10 training samples make no full batch of 64") as info:
        core.steps_per_epoch(config, samples=10)
    assert info.value.hint == "give --batch-size 10 or less, or drop --drop-last"
    assert core.steps_per_epoch(config.replace(drop_last=False), samples=10) == 1


def test_metric_file_forms(tmp_path):
    bare = tmp_path / "bare.csv"
    bare.write_text("1.5\n1.2\n\n0.9\n")
    assert core.read_metric_file(bare) == [1.5, 1.2, 0.9]
    table = tmp_path / "table.csv"
    table.write_text("epoch,val/loss,val/accuracy\n1,0.8,0.5\n2,0.7,0.6\n")
    assert core.read_metric_file(table, "val/loss") == [0.8, 0.7]
    with pytest.raises(
        UsageError, match=r"has no column 'other' \(--monitor\); its columns: epoch"
    ):
        core.read_metric_file(table, "other")  # it took the last column, as mode min or max
    tensorboard = tmp_path / "tensorboard.csv"  # its "Download CSV"
    tensorboard.write_text("Wall time,Step,Value\n1796000000.5,9,0.8\n1796000001.5,19,0.7\n")
    assert core.read_metric_file(tensorboard, "val/loss") == [0.8, 0.7]
    single = tmp_path / "single.csv"
    single.write_text("loss\n0.8\n0.7\n")
    assert core.read_metric_file(single, "val/loss") == [0.8, 0.7]
    empty = tmp_path / "empty.csv"
    empty.write_text("val/loss\n")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00bad\n")
    spreadsheet = tmp_path / "excel.csv"  # UTF-8 with a byte-order mark
    spreadsheet.write_text("\ufeffval/loss,val/accuracy\n0.8,0.5\n0.7,0.6\n", encoding="utf-8")
    assert core.read_metric_file(spreadsheet, "val/loss") == [0.8, 0.7]
    for bad in (empty, tmp_path / "missing.csv", binary):
        with pytest.raises(UsageError):
            core.read_metric_file(bad)


def _checkpoint(path, config, *, train_size=1000, groups=2, world_size=1):
    torch.save(
        {
            "format": "ptool.checkpoint",
            "format_version": 1,
            "config": config.to_dict(),
            "data_info": {"train_size": train_size},
            "optimizer_state_dict": {"param_groups": [{"lr": config.lr}] * groups},
            "rng_state": {"data_order": {"world_size": world_size}},
        },
        path,
    )
    return path


def test_sources_stack_checkpoint_then_config_file_then_flags(tmp_path):
    ckpt = _checkpoint(tmp_path / "c.pt", TrainConfig(scheduler="step", lr=0.5, epochs=7))
    toml = tmp_path / "run.toml"
    toml.write_text('[scheduler]\nscheduler = "cosine"\n')
    source = core.load_source(overrides={"epochs": 9}, config_file=str(toml), checkpoint=str(ckpt))
    assert (source.config.scheduler, source.config.lr, source.config.epochs) == ("cosine", 0.5, 9)
    assert (source.train_size, source.groups) == (1000, 2)
    with pytest.raises(UsageError, match="not both"):
        core.load_source(overrides={}, checkpoint=str(ckpt), run=str(tmp_path))
    with pytest.raises(UsageError, match="not a ptool run"):
        core.load_source(overrides={}, run=str(tmp_path))


def test_a_torchrun_jobs_checkpoint_plots_the_steps_each_process_took(tmp_path):
    """Each of W processes takes its DistributedSampler share: the engine's oracle is the
    length of runtime.epoch_order on one rank."""
    from ptool.core.runtime import Distributed, epoch_order

    config = TrainConfig(scheduler="onecycle", batch_size=16, epochs=2)
    ckpt = _checkpoint(tmp_path / "c.pt", config, train_size=1001, world_size=2)
    source = core.load_source(overrides={}, checkpoint=str(ckpt))
    rank_share = epoch_order(1001, seed=0, epoch=0, shuffle=True, info=Distributed(world_size=2))
    assert source.train_size == len(rank_share) == 501
    assert core.steps_per_epoch(config, train_size=source.train_size) == 32  # ceil(501 / 16)


def test_a_broken_run_config_is_one_line_naming_the_file_and_place(tmp_path):
    (tmp_path / "config.yaml").write_text("garbage: [\n")
    with pytest.raises(UsageError) as refused:
        core.load_source(overrides={}, run=str(tmp_path))
    message = str(refused.value)
    assert "\n" not in message and str(tmp_path / "config.yaml") in message
    assert message.endswith("(line 2, column 1)")


def test_run_log_reads_lr_per_group_and_the_monitored_metric(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tensorboard"))
    for step in range(6):
        writer.add_scalar("lr", 0.1 / (step + 1), step)
        writer.add_scalar("lr/group1", 0.01 / (step + 1), step)
    for epoch in (1, 2, 3):
        writer.add_scalar("val/loss", 1.0 / epoch, epoch)
    writer.close()
    log = core.read_run_log(tmp_path, "val/loss")
    assert [step for step, _ in log.lrs[0]] == list(range(6))
    assert [v for _, v in log.lrs[1]] == pytest.approx([0.01 / (s + 1) for s in range(6)])
    assert log.metric == pytest.approx([1.0, 0.5, 1 / 3])
    lines = core.logged_lines(log, steps_per_epoch=2)
    assert [(line.label, line.kind) for line in lines] == [
        ("logged lr group 0", "logged"),
        ("logged lr group 1", "logged"),
    ]


def test_schedule_lines_one_per_group_with_key_numbers():
    config = TrainConfig(scheduler="cosine-warm-restarts", t_0=2, epochs=6, warmup_epochs=1)
    lines = core.schedule_lines(config, label="wr", steps_per_epoch=3, group_lrs=[0.1, 0.01])
    assert [line.label for line in lines] == ["wr group 0", "wr group 1"]
    key = lines[1].key_numbers()
    assert key["start"] == pytest.approx(0.01 * 0.01)  # warmup_start_factor
    assert key["peak"] == pytest.approx(0.01) and key["peak_step"] == 3
    assert key["warmup_end_step"] == 3 and key["restart_steps"] == [9, 15]
    runs = lines[0].runs  # a per-epoch schedule: a run of 3 steps per epoch, not 3 values
    assert (runs.steps, runs.counts) == ([0, 3, 6, 9, 12, 15], [3] * 6)
    rows = lines[0].to_dict()["rows"]
    assert len(rows) == 18 and rows[4] == {"step": 4, "epoch": 4 / 3, "lr": runs.lrs[1]}


def test_a_run_log_gives_train_metrics_per_epoch_not_per_step(tmp_path):
    """train/loss is the per-step tag; the epoch means a plateau replay needs are train_epoch/*."""
    from ptool.core.callbacks import TensorBoardLog
    from ptool.core.lr_plot import read_run_log

    tb = TensorBoardLog(tmp_path / "tensorboard")
    for step in range(6):
        tb.scalar("lr", 0.1, step)
        tb.scalar("train/loss", 10.0 + step, step)
    tb.scalars({"train_epoch/loss": 2.0, "val/loss": 3.0}, 2)
    tb.scalars({"train_epoch/loss": 1.0, "val/loss": 4.0}, 5)
    tb.close()
    assert read_run_log(tmp_path, "train/loss").metric == [2.0, 1.0]
    assert read_run_log(tmp_path, "val/loss").metric == [3.0, 4.0]


def test_a_metric_file_short_of_the_epochs_is_refused():
    """plateau steps on one value per epoch: the plot must not invent the missing ones."""
    core.check_metric_count([1.0, 0.9, 0.8], 3, "m.csv")
    core.check_metric_count([1.0, 0.9, 0.8], 2, "m.csv")  # a longer run's first epochs
    with pytest.raises(UsageError, match="m.csv holds 3 metric values for 8 epochs") as refused:
        core.check_metric_count([1.0, 0.9, 0.8], 8, "m.csv")
    assert refused.value.hint == "give --epochs 3, or a value for every epoch"
