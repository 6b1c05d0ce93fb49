"""The training loop against oracles: hand-written loops, torch.load(weights_only=True)."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from ptool.core.config import TrainConfig, resolve_config
from ptool.core.data import build_data
from ptool.core.engine import NonFiniteLoss, fit
from ptool.core.errors import UsageError
from ptool.core.models import build_model
from ptool.core.runtime import seed_everything
from ptool.core.signals import Interrupted


def csv_run(tmp_path) -> tuple[Path, list[str]]:
    """A 1-epoch mlp run (32 train / 8 val rows) on d.csv in tmp_path: the file, its rows."""
    rows = [f"{i % 7},{(i * 3) % 5},{'ab'[i % 2]}" for i in range(40)]
    data = tmp_path / "d.csv"
    data.write_text("\n".join(["u,v,label", *rows]) + "\n")
    config = TrainConfig(data=f"csv:{data}", model="mlp", hidden=[8], epochs=1, seed=0,
                         tensorboard=False, out=str(tmp_path / "run"))  # fmt: skip
    fit(config, quiet=True)
    return data, rows


def small(tmp_path, name="run", **changes) -> TrainConfig:
    """80 train / 20 val tabular samples, a tiny MLP, no TensorBoard: a run takes ~0.1 s."""
    values = dict(
        data="synthetic",
        shape="12",
        samples=100,
        val_split=0.2,
        num_classes=3,
        model="mlp",
        hidden=[16],
        norm="none",
        batch_size=16,
        epochs=2,
        seed=0,
        tensorboard=False,
        out=str(tmp_path / name),
    )
    values.update(changes)
    if values["model"] != "mlp" and "hidden" not in changes:  # the mlp's option only
        del values["hidden"]
    return TrainConfig.from_dict(values)


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model_state_dict"]


def test_checkpoint_holds_everything_a_resume_needs(tmp_path):
    config = small(tmp_path, seed=None, ema=0.9, optimizer="adam")
    summary = fit(config, quiet=True)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    for key in (
        "format",
        "format_version",
        "model_state_dict",
        "optimizer_state_dict",
        "scheduler_state_dict",
        "scaler_state_dict",
        "epoch",
        "global_step",
        "batch_in_epoch",
        "loss",
        "metrics",
        "best",
        "config",
        "data_info",
        "rng_state",
        "callbacks",
        "meta",
        "ema_state_dict",
    ):
        assert key in ckpt, key
    assert ckpt["format"] == "ptool.checkpoint"
    assert (ckpt["epoch"], ckpt["global_step"], ckpt["batch_in_epoch"]) == (2, 10, 0)
    assert ckpt["optimizer_state_dict"]["state"], "last.pt keeps the optimizer state at the end"
    seed = ckpt["config"]["seed"]
    assert isinstance(seed, int) and seed == summary.seed  # a random seed, recorded
    rng = ckpt["rng_state"]
    assert isinstance(rng["numpy"]["keys"], torch.Tensor) and rng["numpy"]["keys"].numel() == 624
    assert len(rng["python"]["state"]) == 625
    assert rng["data_order"] == {
        "seed": seed,
        "epoch": 2,
        "batch_in_epoch": 0,
        "batch_size": 16,
        "shuffle": True,
        "world_size": 1,
    }
    assert ckpt["callbacks"]["train_state"]["epoch"] == 2
    assert ckpt["best"]["monitor"] == "val/loss" and ckpt["best"]["mode"] == "min"
    assert set(ckpt["ema_state_dict"]) == set(ckpt["model_state_dict"])
    assert set(ckpt["metrics"]) >= {"train/loss", "val/loss", "val/accuracy", "val_ema/accuracy"}
    # the saved config file reads back as the same config
    again = resolve_config(tmp_path / "run" / "config.yaml")
    assert again == TrainConfig.from_dict(ckpt["config"])


def test_persistent_workers_are_reused_within_a_run_and_released_after_it(tmp_path):
    """The kept loaders held their datasets, so their worker processes outlived the run (one
    set per fine-tune of an iterative prune)."""
    import gc
    import multiprocessing

    from ptool.core.data import loader

    made = []
    real = loader.DataLoader

    def counting(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    config = TrainConfig(
        data="synthetic", shape="1x8x8", samples=64, epochs=2, augment=["flip"], num_workers=1,
        persistent_workers=True, seed=0, tensorboard=False, out=str(tmp_path / "run"),
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loader, "DataLoader", counting)
        fit(config, quiet=True)
    assert len(made) == 1  # the training loader, kept for the second epoch
    assert len(loader._PERSISTENT) == 0
    made.clear()
    gc.collect()  # the loader's workers exit with it
    assert multiprocessing.active_children() == []


def test_same_seed_and_deterministic_give_bit_identical_weights(tmp_path):
    changes = dict(seed=None, dropout=0.3, deterministic=True, epochs=2)
    first = fit(small(tmp_path, "a", **changes), quiet=True)
    fit(small(tmp_path, "b", **{**changes, "seed": first.seed}), quiet=True)
    a, b = weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    fit(small(tmp_path, "c", **{**changes, "seed": first.seed + 1}), quiet=True)
    c = weights(tmp_path / "c" / "last.pt")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_accumulation_matches_a_hand_written_loop_with_an_incomplete_last_window(tmp_path):
    # 80 samples / batch 16 = 5 batches; --accumulate 2 -> windows of 2, 2 and 1 batches.
    config = small(tmp_path, optimizer="sgd", lr=0.5, accumulate=2, shuffle=False, epochs=1)
    fit(config, quiet=True)
    _assert_accumulated_by_hand(config, [[0, 1], [2, 3], [4]])


def test_a_skipped_batch_leaves_its_window_the_mean_of_the_batches_it_saw(tmp_path):
    """--on-nonfinite skip with --accumulate: the window of batches 2-3 loses batch 3 (NaN) and
    steps on batch 2's gradient alone, not on half of it."""
    config = small(
        tmp_path, optimizer="sgd", lr=0.5, accumulate=2, shuffle=False, epochs=1,
        on_nonfinite="skip",
    )  # fmt: skip
    summary = fit(config, quiet=True, prepare_model=lambda m: NaNAt(m, {3}))
    assert summary.nonfinite_skipped == 1
    _assert_accumulated_by_hand(config, [[0, 1], [2], [4]], prefix="model.")  # NaNAt's names


def _assert_accumulated_by_hand(config, windows: list[list[int]], prefix: str = "") -> None:
    """The run's weights are those of SGD stepping on each window's mean gradient over the
    batches (of 16, in order) it lists."""
    seed_everything(0)
    bundle = build_data(config)
    model = build_model(config, bundle.info)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    x, y = bundle.train.tensors
    for window in windows:
        for b in window:
            xb, yb = x[16 * b : 16 * (b + 1)], y[16 * b : 16 * (b + 1)]
            (nn.functional.cross_entropy(model(xb), yb) / len(window)).backward()
        optimizer.step()
        optimizer.zero_grad()
    saved = weights(Path(config.out) / "last.pt")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(saved[prefix + name], value, rtol=0, atol=1e-7)


def test_train_loss_weighs_batches_as_val_loss_does_with_class_weights(tmp_path):
    """An lr too small to move the weights: the epoch's train/loss is the class-weighted
    cross-entropy of the whole training set, as val/loss is of the validation set (it was
    averaged by sample count: 0.3% off here)."""
    weight = [1.0, 5.0, 0.2]
    config = small(tmp_path, epochs=1, lr=1e-12, class_weights=weight, batch_size=7)
    summary = fit(config, quiet=True)

    seed_everything(0)
    bundle = build_data(config)
    model = build_model(config, bundle.info)
    loss = nn.CrossEntropyLoss(weight=torch.tensor(weight))
    with torch.no_grad():
        for split, dataset in (("train", bundle.train), ("val", bundle.val)):
            x, y = dataset.tensors
            oracle = loss(model(x), y).item()
            assert summary.final_metrics[f"{split}/loss"] == pytest.approx(oracle, rel=1e-6)


def test_nonfinite_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = small(tmp_path, epochs=3)
    with pytest.raises(NonFiniteLoss, match=r"loss is nan at step 7 \(epoch 2, batch 3\)") as err:
        fit(config, quiet=True, prepare_model=lambda m: NaNAt(m, {7}))
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1
    # its flags are a new run's: a resume refuses them, and would repeat the same steps
    assert err.value.hint == (
        "start a new run with a lower --lr or --clip-norm, or --on-nonfinite skip|rollback "
        f"(--init-from {tmp_path / 'run' / 'last.pt'} keeps its weights)"
    )


def test_the_hparams_dashboard_says_how_the_run_ended(tmp_path):
    """torch's add_hparams writes STATUS_SUCCESS: a diverged run was a success there."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    def status(run: str) -> int:
        events = EventAccumulator(str(tmp_path / run / "tensorboard")).Reload()
        content = events.PluginTagToContent("hparams")["_hparams_/session_end_info"]
        return HParamsPluginData.FromString(content).session_end_info.status

    with pytest.raises(NonFiniteLoss):
        fit(small(tmp_path, "nan", tensorboard=True), quiet=True,
            prepare_model=lambda m: NaNAt(m, {7}))  # fmt: skip
    fit(small(tmp_path, "ok", epochs=1, tensorboard=True), quiet=True)
    assert (status("nan"), status("ok")) == (Status.STATUS_FAILURE, Status.STATUS_SUCCESS)

    class CtrlC:  # in epoch 2: epoch 1's metrics are logged
        def on_step_end(self, trainer):
            if trainer.state.global_step == 7:
                trainer.stop.signum = signal.SIGINT

    with pytest.raises(Interrupted):
        fit(small(tmp_path, "stopped", tensorboard=True), quiet=True, callbacks=[CtrlC()])
    assert status("stopped") == Status.STATUS_UNKNOWN  # not finished: it may be resumed


def test_nonfinite_skip_counts_the_batch_and_goes_on(tmp_path):
    config = small(tmp_path, on_nonfinite="skip")
    summary = fit(config, quiet=True, prepare_model=lambda m: NaNAt(m, {2, 6}))
    assert summary.status == "completed" and summary.nonfinite_skipped == 2
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "run" / "last.pt").values())


def test_nonfinite_rollback_halves_the_lr_and_gives_up_after_three(tmp_path):
    config = small(tmp_path, on_nonfinite="rollback", optimizer="sgd", lr=0.1)
    summary = fit(config, quiet=True, prepare_model=lambda m: NaNAt(m, {7}))
    assert summary.status == "completed" and summary.rollbacks == 1
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["optimizer_state_dict"]["param_groups"][0]["lr"] == pytest.approx(0.05)
    # NaN at step 7, then after each rollback to step 5 at its second step (forwards 9, 11, 13)
    with pytest.raises(NonFiniteLoss, match="after 3 rollbacks"):
        fit(config.replace(out=str(tmp_path / "thrice")), quiet=True,
            prepare_model=lambda m: NaNAt(m, {7, 9, 11, 13}))  # fmt: skip
    # NaN in the first step from the last good state (step 0 here, before the first save; the
    # first step of epoch 2 after it): a replay fails alike, whatever the lr, and it rolled
    # back three times
    for name, model in (("always", AlwaysNaN), ("epoch2", lambda m: NaNAt(m, {5, 6, 7}))):
        with pytest.raises(NonFiniteLoss, match="in the first step from the last good state"):
            fit(config.replace(out=str(tmp_path / name)), quiet=True, prepare_model=model)


def test_a_rollback_replaces_the_replayed_steps_in_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = small(
        tmp_path, on_nonfinite="rollback", optimizer="sgd", lr=0.1, tensorboard=True,
        log_every_steps=1,
    )  # fmt: skip
    fit(config, quiet=True, prepare_model=lambda m: NaNAt(m, {7}))  # back to step 5, lr halved
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    lr = events.Scalars("lr")
    assert [e.step for e in lr] == list(range(10))
    assert [e.value for e in lr] == pytest.approx([0.1] * 5 + [0.05] * 5)
    assert [e.step for e in events.Scalars("train/loss")] == list(range(10))
    assert [e.step for e in events.Scalars("val/loss")] == [4, 9]


def test_a_rollback_to_step_0_keeps_the_input_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = small(
        tmp_path, shape="1x8x8", model="cnn", channels=[4], on_nonfinite="rollback",
        optimizer="sgd", lr=0.1, tensorboard=True,
    )  # fmt: skip
    fit(config, quiet=True, prepare_model=lambda m: NaNAt(m, {2}))  # before the first save
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert [e.step for e in events.Images("inputs")] == [0]
    assert [e.step for e in events.Scalars("lr")] == list(range(10))


@pytest.mark.parametrize(
    ("calls", "epochs"),
    [({7, 9}, 2), ({7, 20}, 4)],  # back to back (step 7, then 6); with a checkpoint between
)
def test_each_rollback_halves_the_lr_once_more(tmp_path, calls, epochs):
    config = small(tmp_path, on_nonfinite="rollback", optimizer="sgd", lr=0.1, epochs=epochs)
    summary = fit(config, quiet=True, prepare_model=lambda m: NaNAt(m, calls))
    assert summary.status == "completed" and summary.rollbacks == 2
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["optimizer_state_dict"]["param_groups"][0]["lr"] == pytest.approx(0.025)


class NaNAt(nn.Module):
    """Wraps a model; training forwards number `calls` (0-based) return NaN."""

    def __init__(self, model: nn.Module, calls: set[int]):
        super().__init__()
        self.model, self.calls, self.count = model, calls, 0

    def forward(self, x):
        out = self.model(x)
        if self.training:
            self.count += 1
            if self.count - 1 in self.calls:
                return out * math.nan
        return out


class AlwaysNaN(NaNAt):
    def __init__(self, model):
        super().__init__(model, set(range(1000)))


class NaNInputAt(nn.Module):
    """Wraps a model; training forwards number `calls` (0-based) see NaN inputs, which reach
    the batch-norm statistics before the loss is known to be NaN."""

    def __init__(self, model: nn.Module, calls: set[int]):
        super().__init__()
        self.model, self.calls, self.count = model, calls, 0

    def forward(self, x):
        if self.training:
            self.count += 1
            if self.count - 1 in self.calls:
                x = x * math.nan
        return self.model(x)


def test_nonfinite_skip_leaves_no_trace_in_batch_norm_statistics(tmp_path):
    config = small(tmp_path, on_nonfinite="skip", norm="batch")
    summary = fit(config, quiet=True, prepare_model=lambda m: NaNInputAt(m, {2}))
    assert summary.nonfinite_skipped == 1
    saved = weights(tmp_path / "run" / "last.pt")
    assert all(torch.isfinite(v.float()).all() for k, v in saved.items() if "running" in k)
    assert summary.final_metrics["val/loss"] == summary.final_metrics["val/loss"]  # not NaN


def test_an_epoch_with_every_batch_skipped_fails(tmp_path):
    config = small(tmp_path, on_nonfinite="skip")
    with pytest.raises(NonFiniteLoss, match="every batch of epoch 1 had a non-finite loss"):
        fit(config, quiet=True, prepare_model=AlwaysNaN)


class InfGradAt(NaNAt):
    """Training forwards number `calls` add sqrt(0) of a zero parameter: the loss stays
    finite, its gradient (1 / (2 sqrt(0))) is inf."""

    def __init__(self, model: nn.Module, calls: set[int]):
        super().__init__(model, calls)
        self.zero = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        out = self.model(x)
        if self.training:
            self.count += 1
            if self.count - 1 in self.calls:
                return out + torch.sqrt(self.zero)
        return out


def test_a_finite_loss_with_inf_gradients_is_not_stepped_on(tmp_path):
    config = small(tmp_path, epochs=1, on_nonfinite="skip", optimizer="sgd", lr=0.1)
    summary = fit(config, quiet=True, prepare_model=lambda m: InfGradAt(m, {1, 3}))
    assert summary.status == "completed" and summary.nonfinite_skipped == 2
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "run" / "last.pt").values())
    with pytest.raises(NonFiniteLoss, match=r"gradient norm is inf at step 1 \(epoch 1\)"):
        fit(config.replace(on_nonfinite="stop", out=str(tmp_path / "stop")), quiet=True,
            prepare_model=lambda m: InfGradAt(m, {1}))  # fmt: skip
    # every step of epoch 2 (batches 5-9) left out: frozen weights, not a completed run
    frozen = config.replace(epochs=3, out=str(tmp_path / "frozen"))
    with pytest.raises(NonFiniteLoss, match="every optimizer step of epoch 2 was left out"):
        fit(frozen, quiet=True, prepare_model=lambda m: InfGradAt(m, set(range(5, 10))))
    assert torch.load(tmp_path / "frozen" / "last.pt", weights_only=True)["epoch"] == 1


def test_weights_that_diverge_with_finite_losses_stop_every_policy(tmp_path):
    """A huge lr: finite losses and gradients, but the weights (and batch-norm statistics)
    overflow; the NaN validation loss stops the run, skip or not, before it saves them."""
    for policy in ("skip", "stop", "rollback"):
        config = small(tmp_path, policy, optimizer="sgd", lr=1e6, norm="batch", on_nonfinite=policy)
        with pytest.raises(NonFiniteLoss, match="validation loss is nan after epoch 1"):
            fit(config, quiet=True)
        assert not (tmp_path / policy / "last.pt").exists() or all(
            torch.isfinite(v.float()).all() for v in weights(tmp_path / policy / "last.pt").values()
        )


def test_early_stopping_and_checkpoint_files(tmp_path):
    config = small(
        tmp_path,
        epochs=8,
        min_delta=10.0,  # no change of the loss counts as an improvement after the first
        early_stop_patience=2,
        keep_last=2,
        save_top_k=2,
    )
    summary = fit(config, quiet=True)
    run = tmp_path / "run"
    assert summary.status == "early_stopped" and summary.epochs == 3
    assert sorted(p.name for p in run.glob("epoch-*.pt")) == ["epoch-2.pt", "epoch-3.pt"]
    losses = {}
    for path in run.glob("epoch-*.pt"):
        saved = torch.load(path, weights_only=True)
        losses[saved["epoch"]] = saved["metrics"]["val/loss"]
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] == summary.best_epoch and best["best"]["value"] == summary.best_value
    assert summary.best_value == min([*losses.values(), summary.best_value])
    top = sorted(run.glob("best-epoch*.pt"))
    assert len(top) == 2 and run / f"best-epoch{summary.best_epoch}.pt" in top
    assert sorted(summary.checkpoints["top_k"]) == [str(path) for path in top]
    # the same keys without those options: top_k and epochs came only with them
    plain = fit(small(tmp_path, "plain", epochs=1, save_top_k=0), quiet=True)
    assert plain.checkpoints == {
        "last": str(tmp_path / "plain" / "last.pt"),
        "best": None,
        "top_k": [],
        "epochs": [],
    }


@pytest.mark.parametrize("patience", [0, 1])
def test_patience_0_or_1_stops_at_the_first_epoch_without_improvement(tmp_path, patience):
    """As Keras and Lightning count: 0 did stop after epoch 1, which had improved."""
    improving = fit(
        small(tmp_path, "a", epochs=3, lr=0.01, early_stop_patience=patience), quiet=True
    )
    assert improving.status == "completed" and improving.epochs == 3
    logged = []
    config = small(tmp_path, "b", epochs=5, min_delta=10.0, early_stop_patience=patience)
    stalled = fit(config, log=logged.append)
    assert stalled.status == "early_stopped" and stalled.epochs == 2
    assert logged[-1] == "early stop: val/loss did not improve by more than 10.0 for 1 epoch"


def test_an_epochs_lr_is_the_one_its_last_step_used_with_a_per_step_schedule(tmp_path):
    """Read after the epoch, the lr was already the next step's: 0.005 for an epoch that
    trained at 0.01 throughout. (--step-size counts epochs: 5 steps of 16 of 80 samples.)"""
    config = small(
        tmp_path, epochs=3, lr=0.01, scheduler="step", step_size=1, gamma=0.5, keep_last=3
    ).replace(scheduler_interval="step")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    oracle = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    used = []  # the lr of each optimizer step
    for _ in range(15):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        oracle.step()
    summary = fit(config, quiet=True)
    steps = summary.global_step // 3
    for epoch in (1, 2, 3):
        saved = torch.load(tmp_path / "run" / f"epoch-{epoch}.pt", weights_only=True)
        assert saved["metrics"]["lr"] == used[epoch * steps - 1]
    assert summary.final_metrics["lr"] == used[-1] == 0.0025


def test_best_pt_follows_a_max_monitor(tmp_path):
    summary = fit(small(tmp_path, epochs=3, monitor="val/accuracy", lr=0.01), quiet=True)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert summary.mode == "max"
    assert best["epoch"] == summary.best_epoch
    assert best["metrics"]["val/accuracy"] == summary.best_value
    assert summary.best_value >= summary.final_metrics["val/accuracy"]


def test_bad_monitor_and_unwritable_out_fail_before_training(tmp_path):
    with pytest.raises(UsageError, match="valid: train/loss, train/accuracy, val/loss") as info:
        fit(small(tmp_path, monitor="val/nope"), quiet=True)
    assert info.value.hint is None
    with pytest.raises(UsageError, match="'val_ema/loss' is not a metric") as info:
        fit(small(tmp_path, monitor="val_ema/loss"), quiet=True)
    assert info.value.hint == "val_ema/ metrics need --ema DECAY (e.g. --ema 0.999)"
    with pytest.raises(UsageError, match="--accumulate must be at least 1"):
        fit(small(tmp_path, accumulate=0), quiet=True)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="cannot write to --out"):
        fit(small(tmp_path, out=str(blocker / "run")), quiet=True)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model": "mlp", "hidden": [16, -3]}, "--hidden must be at least 1, got -3"),
        ({"dropout": 2.0}, "--dropout must be in [0, 1], got 2.0"),
        ({"label_smoothing": 5.0}, "--label-smoothing must be in [0, 1], got 5.0"),
        ({"flip_p": 2.0}, "--flip-p must be in [0, 1], got 2.0"),
        ({"crop_padding": -1}, "--crop-padding must be at least 0, got -1"),
        (
            {"resized_crop_scale": (0.9, 0.5)},
            "--resized-crop-scale 0.9,0.5: the lower bound comes first",
        ),
        ({"early_stop_patience": -1}, "--early-stop-patience must be at least 0, got -1"),
        ({"save_top_k": -1}, "--save-top-k must be at least 0, got -1"),
        ({"num_workers": -1}, "--num-workers must be at least 0, got -1"),
        ({"weight_decay": -1.0}, "--weight-decay must be finite and at least 0, got -1.0"),
        ({"weight_decay": math.nan}, "--weight-decay must be finite and at least 0, got nan"),
        ({"betas": (0.9, 1.0)}, "--betas must be in [0, 1), got 1.0"),
        ({"ema": 1.0}, "--ema must be in (0, 1), got 1.0"),
        ({"clip_norm": 0.0}, "--clip-norm must be finite and positive, got 0.0"),
        ({"lr": math.nan}, "--lr must be finite and positive, got nan"),  # before the optimizer
        ({"warmup_start_factor": 2.0}, "--warmup-start-factor must be in (0, 1], got 2.0"),
        ({"seed": 2**32}, "--seed must be in [0, 4294967296), got 4294967296"),  # trained as 0
        ({"data_seed": -1}, "--data-seed must be in [0, 4294967296), got -1"),
        (
            {"grad_checkpoint": 1},
            "--grad-checkpoint 1 checkpoints nothing: the last of the K segments keeps its "
            "activations (as in torch.utils.checkpoint.checkpoint_sequential)",
        ),
    ],
)
def test_out_of_range_values_are_refused_before_training(tmp_path, values, message):
    """Values torch would reject deep inside (or accept and misbehave on) fail in one line."""
    with pytest.raises(UsageError) as caught:
        fit(small(tmp_path, **values), quiet=True)
    assert str(caught.value) == message
    assert not (tmp_path / "run").exists()


def test_regression_metrics(tmp_path):
    lines = []
    config = small(tmp_path, task="regression", num_classes=None, epochs=1, monitor="val/rmse")
    summary = fit(config, log=lines.append)
    assert {"val/mae", "val/rmse", "val/r2", "val/loss"} <= set(summary.final_metrics)
    assert summary.confusion_matrix is None
    assert summary.monitor == "val/rmse" and summary.mode == "min"
    assert f"val/rmse {summary.final_metrics['val/rmse']:.4f}" in lines[0]  # the monitored one


def test_tensorboard_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = small(tmp_path, tensorboard=True, log_every_steps=2, no_decay_norm_bias=True)
    fit(config, quiet=True)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"lr", "lr/group1", "train/loss", "val/loss", "val/accuracy"} <= tags
    assert [e.step for e in events.Scalars("lr")] == list(range(10))
    assert [e.step for e in events.Scalars("train/loss")] == [0, 2, 4, 6, 8]
    # per-epoch tags at the index of the epoch's last step (5 steps per epoch)
    assert [e.step for e in events.Scalars("val/loss")] == [4, 9]
    assert [e.step for e in events.Scalars("train_epoch/accuracy")] == [4, 9]
    assert [(e.step, e.value) for e in events.Scalars("epoch")] == [(4, 1), (9, 2)]


def test_log_graph_passes_on_no_torch_jit_deprecation_notes(tmp_path):
    """add_graph traces with torch.jit, which warns; nothing a ptool user can act on."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(small(tmp_path, tensorboard=True, log_graph=True, epochs=1), quiet=True)
    assert (tmp_path / "run" / "tensorboard").is_dir()
    assert not [w for w in caught if "torch.jit" in str(w.message)]


def test_resume_from_a_mid_epoch_checkpoint_matches_the_uninterrupted_run(tmp_path):
    changes = dict(epochs=2, dropout=0.2, save_every_steps=3, ema=0.9, optimizer="adam")
    fit(small(tmp_path, "full", **changes), quiet=True)

    class KeepMidEpoch:
        def on_checkpoint(self, trainer, path):
            if trainer.state.batch_in_epoch and not (tmp_path / "mid.pt").exists():
                (tmp_path / "mid.pt").write_bytes(path.read_bytes())

    fit(small(tmp_path, "cut", **changes), quiet=True, callbacks=[KeepMidEpoch()])
    mid = torch.load(tmp_path / "mid.pt", weights_only=True)
    assert (mid["epoch"], mid["batch_in_epoch"], mid["global_step"]) == (0, 3, 3)
    config = TrainConfig.from_dict({**mid["config"], "out": str(tmp_path / "resumed")})
    summary = fit(config, resume=mid, quiet=True)
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for key in ("model_state_dict", "ema_state_dict"):
        assert all(torch.equal(full[key][k], resumed[key][k]) for k in full[key])
    assert resumed["metrics"] == full["metrics"]
    assert summary.global_step == 10


def test_bf16_channels_last_clipping_and_tensorboard_extras_run(tmp_path):
    config = small(
        tmp_path,
        shape="1x8x8",
        model="cnn",
        channels=[4],
        norm="batch",
        precision="bf16",
        channels_last=True,
        clip_norm=1.0,
        clip_value=0.5,
        tensorboard=True,
        log_histograms=True,
        log_graph=True,
        epochs=1,
    )
    summary = fit(config, quiet=True)
    assert summary.status == "completed" and math.isfinite(summary.final_metrics["val/loss"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert "inputs" in events.Tags()["images"]
    assert any(tag.startswith("grads/") for tag in events.Tags()["histograms"])
    assert events.Tags()["graph"]


def test_gradient_histograms_under_fp16_are_the_unscaled_gradients(tmp_path):
    """They were logged before GradScaler's unscale_: 65536 times the fp32 run's."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def largest_gradient(precision: str) -> float:
        config = small(tmp_path, precision, precision=precision, tensorboard=True,
                       log_histograms=True, epochs=1, seed=0)  # fmt: skip
        fit(config, quiet=True)
        events = EventAccumulator(str(tmp_path / precision / "tensorboard"))
        (event,) = events.Reload().Histograms("grads/head.weight")
        return max(abs(event.histogram_value.min), abs(event.histogram_value.max))

    fp32, fp16 = largest_gradient("fp32"), largest_gradient("fp16")
    assert fp16 == pytest.approx(fp32, rel=0.05)


def test_rollback_also_halves_a_schedule_that_recomputes_from_base_lrs(tmp_path):
    config = small(
        tmp_path, on_nonfinite="rollback", optimizer="sgd", lr=0.1, scheduler="cosine", epochs=2
    )
    fit(config.replace(out=str(tmp_path / "plain")), quiet=True)
    fit(config, quiet=True, prepare_model=lambda m: NaNAt(m, {6}))
    plain = torch.load(tmp_path / "plain" / "last.pt", weights_only=True)
    rolled = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    lr = lambda ckpt: ckpt["optimizer_state_dict"]["param_groups"][0]["lr"]  # noqa: E731
    assert rolled["scheduler_state_dict"]["scheduler"]["base_lrs"] == [0.05]
    assert lr(rolled) == pytest.approx(lr(plain) * 0.5)


def test_a_rescheduled_resume_keeps_its_halvings_over_later_rollbacks(tmp_path):
    """--reschedule re-plans the schedule once, at the resume: a second rollback returns to a
    state that holds the first one's halving (it used to re-plan from the config's lr)."""
    config = small(
        tmp_path, "first", on_nonfinite="rollback", optimizer="sgd", lr=0.1,
        scheduler="onecycle", epochs=6, keep_last=10,
    )  # fmt: skip
    fit(config, quiet=True, prepare_model=lambda m: NaNAt(m, set()))  # the same state keys
    lrs = {}
    for reschedule in (False, True):
        seen = lrs.setdefault(reschedule, [])

        class Record:
            def on_step_end(self, trainer):
                seen.append(trainer.optimizer.param_groups[0]["lr"])  # noqa: B023

        summary = fit(
            config.replace(out=str(tmp_path / f"resumed-{reschedule}")),
            resume=torch.load(tmp_path / "first" / "epoch-1.pt", weights_only=True),
            quiet=True,
            reschedule=reschedule,
            prepare_model=lambda m: NaNAt(m, {7, 20}),
            callbacks=[Record()],
        )
        assert summary.rollbacks == 2
    assert lrs[True] == pytest.approx(lrs[False])  # the same config: the same plan


@pytest.mark.parametrize("last", [True, False])
def test_a_signal_during_the_last_validation_finishes_the_run(tmp_path, last):
    """Ctrl-C once the last epoch has trained ends it "completed" (it used to call it
    interrupted and hint a resume, which refused the finished run); before that, it stops."""
    import signal

    from ptool.core.signals import Interrupted

    class SignalInValidation:
        def on_validation_end(self, trainer, model):
            if trainer.state.epoch + 1 == (trainer.config.epochs if last else 1):
                trainer.stop.signum = signal.SIGINT

    config = small(tmp_path)
    if not last:
        with pytest.raises(Interrupted, match="SIGINT at epoch 2"):
            fit(config, quiet=True, callbacks=[SignalInValidation()])
        return
    summary = fit(config, quiet=True, callbacks=[SignalInValidation()])
    assert summary.status == "completed" and summary.epochs == 2


def test_init_from_starts_from_another_runs_weights(tmp_path):
    fit(small(tmp_path, "first", epochs=1), quiet=True)
    seen = {}

    class Grab:
        def on_fit_start(self, trainer):
            seen.update({k: v.clone() for k, v in trainer.model.state_dict().items()})

    init = str(tmp_path / "first" / "last.pt")
    fit(small(tmp_path, "second", epochs=1, seed=1, init_from=init), quiet=True, callbacks=[Grab()])
    first = weights(tmp_path / "first" / "last.pt")
    assert all(torch.equal(seen[k], first[k]) for k in first)
    with pytest.raises(UsageError, match="does not fit the model"):
        fit(small(tmp_path, "third", hidden=[7], init_from=init), quiet=True)


def test_init_from_a_masked_pruned_file_takes_its_pruned_weights(tmp_path):
    """`--keep-masks` files hold weight_orig/weight_mask: strict init refused them, and the
    --no-strict its hint offered left those layers at random. int8 and compacted files are
    refused with the way that works."""
    from torch.nn.utils import prune

    from ptool.core.restore import model_from_checkpoint

    fit(small(tmp_path, "first", epochs=1), quiet=True)
    ckpt = torch.load(tmp_path / "first" / "last.pt", weights_only=True)
    model = model_from_checkpoint(ckpt)
    prune.l1_unstructured(model.head, "weight", amount=0.5)
    masked = dict(ckpt, model_state_dict=model.state_dict())  # what --keep-masks saves
    torch.save(masked, tmp_path / "masked.pt")
    prune.remove(model.head, "weight")
    seen = {}

    class Grab:
        def on_fit_start(self, trainer):
            seen.update({k: v.clone() for k, v in trainer.model.state_dict().items()})

    init = str(tmp_path / "masked.pt")
    fit(small(tmp_path, "second", epochs=1, init_from=init), quiet=True, callbacks=[Grab()])
    assert seen.keys() == model.state_dict().keys()
    assert all(torch.equal(seen[k], v) for k, v in model.state_dict().items())
    for extra, message in (
        ({"quantization": {"source": "runs/a/best.pt"}}, "is a quantized model: its weights"),
        ({"pruning": {"compacted": True}}, "is a compacted pruned model: its layers have"),
    ):
        torch.save({**ckpt, **extra}, tmp_path / "derived.pt")
        with pytest.raises(UsageError, match=message):
            fit(small(tmp_path, "third", init_from=str(tmp_path / "derived.pt")), quiet=True)


def test_a_last_batch_of_one_sample_through_batch_norm_names_drop_last(tmp_path):
    config = small(tmp_path, "run", norm="batch", batch_size=79, epochs=1)  # 80 train samples
    with pytest.raises(UsageError, match=r"holds 1 sample \(80 samples, --batch-size 79\)") as info:
        fit(config, quiet=True)
    assert info.value.hint.startswith("add --drop-last")
    fit(config.replace(drop_last=True, out=str(tmp_path / "dropped")), quiet=True)
    too_big = config.replace(drop_last=True, batch_size=81, out=str(tmp_path / "none"))
    with pytest.raises(UsageError, match="80 training samples make no full batch of 81"):
        fit(too_big, quiet=True)
    assert not any((tmp_path / "none").iterdir())  # refused before anything is written


def test_data_seed_pins_the_split_across_seeds(tmp_path):
    """The split follows the run's seed (so a rerun with the printed seed is the same run),
    unless --data-seed pins it."""
    from ptool.core.data.common import data_seed

    def val_inputs(**changes):
        return build_data(small(tmp_path, **changes)).val.tensors[0]

    assert not torch.equal(val_inputs(seed=1), val_inputs(seed=2))
    assert torch.equal(val_inputs(seed=1, data_seed=5), val_inputs(seed=2, data_seed=5))
    assert torch.equal(val_inputs(seed=None, data_seed=5), val_inputs(seed=5))
    assert data_seed(small(tmp_path, seed=None)) == 0  # what build_data sees outside a run


def test_a_killed_runs_forked_workers_do_not_keep_its_folder_locked(tmp_path):
    """DataLoader workers are forked with the lock's open file: after a kill -9 of the run, a
    resume at once was refused ("in use by another ptool process (pid <the dead one>)") until
    they noticed, about 5 s later."""
    import signal
    import subprocess
    import sys

    from ptool.core.rundir import RunDirLock

    (tmp_path / "run").mkdir()
    code = (
        "import multiprocessing as mp, os, sys, time\n"
        "from pathlib import Path\n"
        "from ptool.core.rundir import RunDirLock\n"
        "def work():\n"  # says its pid once past the fork hooks (the parent's print raced them)
        "    print(os.getpid(), flush=True)\n"
        "    time.sleep(60)\n"
        "lock = RunDirLock(Path(sys.argv[1]))\n"
        "mp.get_context('fork').Process(target=work).start()\n"
        "time.sleep(60)\n"
    )
    run = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True
    )
    worker = int(run.stdout.readline())
    try:
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        RunDirLock(tmp_path / "run").release()  # the worker still lives, without the lock
        os.kill(worker, 0)
    finally:
        run.stdout.close()
        os.kill(worker, signal.SIGKILL)


def test_a_folder_another_process_trains_in_is_refused_until_it_ends(tmp_path, monkeypatch):
    """Before its first checkpoint, a running run's folder looked free: a second run on the
    same --out trained into it, and the two overwrote each other's files."""
    import os

    from ptool.core.rundir import LOCK_NAME, RunDirLock

    config = small(tmp_path)
    (tmp_path / "run").mkdir()
    held = RunDirLock(tmp_path / "run")  # another process's, as flock sees a second open
    with pytest.raises(UsageError, match=rf"--out .*run is in use by .* \(pid {os.getpid()}\)"):
        fit(config, quiet=True)
    assert list((tmp_path / "run").iterdir()) == [tmp_path / "run" / LOCK_NAME]  # untouched
    held.release()
    assert fit(config, quiet=True).status == "completed"
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # released with the run

    from ptool.core.resume import plan_resume

    held = RunDirLock(tmp_path / "run")  # a resume is refused at its plan, before "resuming"
    with pytest.raises(UsageError, match="is in use by another ptool process"):
        plan_resume(tmp_path / "run", {"epochs": 3})
    with monkeypatch.context() as patch:  # by rank 0 only: the other ranks' probes found
        patch.setenv("RANK", "1")  # rank 0's own lock now and then, and the DDP resume failed
        patch.setenv("WORLD_SIZE", "2")  # past the probe: to the next check, the world size
        with pytest.raises(UsageError, match="was trained by 1 process, this resume runs 2"):
            plan_resume(tmp_path / "run", {"epochs": 3})
    held.release()
    assert plan_resume(tmp_path / "run", {"epochs": 3}).config.epochs == 3


def test_the_progress_bar_warns_nothing(tmp_path):
    """Its postfix read the loss that still required grad: torch warned on every terminal run."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(small(tmp_path), progress=True, log=lambda _: None)


def test_runs_started_together_without_out_take_folders_of_their_own(tmp_path):
    """A shell loop's `ptool train &` x 8 in one second: each claims its own runs/<time>(-N)."""
    from concurrent.futures import ThreadPoolExecutor

    from ptool.core.rundir import claim_default_run_dir

    with ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(lambda _: claim_default_run_dir(tmp_path / "runs"), range(8)))
    assert len(set(claimed)) == 8 and all(path.is_dir() for path in claimed)


def test_a_failure_after_the_folder_is_claimed_lets_it_go(tmp_path, monkeypatch):
    from ptool.core import rundir

    def broken(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rundir, "write_config", broken)  # its first file, once the folder is its
    with pytest.raises(UsageError, match="cannot write to --out .*: No space left on device"):
        fit(small(tmp_path), quiet=True)
    assert not (tmp_path / "run" / rundir.LOCK_NAME).exists()
    monkeypatch.undo()
    assert fit(small(tmp_path), quiet=True).status == "completed"  # not "in use" by itself


def test_a_run_finished_in_the_folder_before_this_one_took_it_is_not_replaced(
    tmp_path, monkeypatch
):
    """Two `ptool train --out X` a few seconds apart: the second looked for checkpoints at its
    start (none yet), took the folder only after building its data and model, by which time
    the first had finished there, and replaced its files (both exit 0)."""
    from ptool.core import rundir

    fit(small(tmp_path, "first"), quiet=True)
    finished = (tmp_path / "first" / "last.pt").read_bytes()

    class FinishedJustBefore(rundir.RunDirLock):
        def __init__(self, run_dir: Path):
            (run_dir / "last.pt").write_bytes(finished)  # the other run's, as this one starts
            super().__init__(run_dir)

    monkeypatch.setattr(rundir, "RunDirLock", FinishedJustBefore)
    with pytest.raises(UsageError, match="holds another run's checkpoints"):
        fit(small(tmp_path, seed=1), quiet=True)
    assert (tmp_path / "run" / "last.pt").read_bytes() == finished
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last.pt"]


def test_a_run_stopped_while_it_starts_leaves_the_config_that_starts_it_again(
    tmp_path, monkeypatch
):
    """config.yaml came after the data and the model (8 s here): a run killed meanwhile left
    a folder that `ptool resume` called no run directory, its drawn seed gone. A run refused
    while it starts takes its config.yaml back."""
    from ptool.core.errors import PtoolError
    from ptool.core.resume import find_checkpoint

    def interrupted(_config):
        raise KeyboardInterrupt

    monkeypatch.setattr("ptool.core.data.build_data", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(small(tmp_path, seed=None), quiet=True)
    assert resolve_config(tmp_path / "run" / "config.yaml").seed is not None  # the drawn one
    with pytest.raises(PtoolError) as stopped:
        find_checkpoint(tmp_path / "run")
    assert stopped.value.hint.startswith("it stopped before its first checkpoint; start it")

    monkeypatch.undo()
    gone = small(tmp_path, "other").replace(data=f"csv:{tmp_path / 'gone.csv'}", model="mlp")
    with pytest.raises(UsageError, match="gone.csv"):
        fit(gone, quiet=True)
    assert list((tmp_path / "other").iterdir()) == []
    # the restart the hint gives, refused in turn (its data gone): the folder's file is put
    # back, the only record of the killed run (it was deleted with the refusal)
    saved = (tmp_path / "run" / "config.yaml").read_bytes()
    with pytest.raises(UsageError, match="gone.csv"):
        fit(gone.replace(out=str(tmp_path / "run")), quiet=True)
    assert (tmp_path / "run" / "config.yaml").read_bytes() == saved


def test_a_resume_that_fails_before_its_first_checkpoint_leaves_config_yaml_as_it_was(tmp_path):
    """config.yaml said `epochs: 4` of a resume that never saved: `--config` of it no longer
    described the run's checkpoints. It now comes with the resume's first checkpoint."""
    fit(small(tmp_path), quiet=True)
    before = (tmp_path / "run" / "config.yaml").read_text()
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)

    class Boom:
        def on_fit_start(self, trainer):
            raise RuntimeError("killed")

    longer = small(tmp_path, epochs=4)
    with pytest.raises(RuntimeError, match="killed"):
        fit(longer, resume=ckpt, quiet=True, callbacks=[Boom()])
    assert (tmp_path / "run" / "config.yaml").read_text() == before
    fit(longer, resume=ckpt, quiet=True)
    assert "epochs: 4" in (tmp_path / "run" / "config.yaml").read_text()


def test_a_file_system_without_locks_trains_without_one(tmp_path, monkeypatch):
    """flock's ENOLCK (an NFS mount without a lock manager) was "unexpected OSError ... report
    it": the run goes on without a lock, as on Windows."""
    import errno
    import fcntl

    from ptool.core.rundir import LOCK_NAME

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert fit(small(tmp_path), quiet=True).status == "completed"
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_an_unwritable_run_folder_is_one_line_at_a_resumes_plan(tmp_path):
    """A read-only copy of a run: the lock file could not be opened, "unexpected OSError ...
    report it". (A directory in the lock file's place fails the same open, even as root.)"""
    from ptool.core.resume import plan_resume
    from ptool.core.rundir import LOCK_NAME

    fit(small(tmp_path), quiet=True)
    (tmp_path / "run" / LOCK_NAME).mkdir()
    with pytest.raises(UsageError, match=r"cannot write to --out .*run: Is a directory") as info:
        plan_resume(tmp_path / "run", {"epochs": 3})
    assert info.value.hint == "choose a writable directory with --out"


def test_images_of_other_channel_counts_are_logged_by_their_first(tmp_path):
    """TensorBoard's add_images takes 1 or 3 channels; 2 used to crash the run at its start."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = small(tmp_path, shape="2x8x8", model="cnn", channels=[4], tensorboard=True)
    assert fit(config, quiet=True).status == "completed"
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert "inputs" in events.Tags()["images"]


def test_a_checkpoint_from_before_the_loss_weight_resumes_its_sample_weighted_sums():
    from ptool.core.engine import TrainState

    old = {"train_loss_sum": 6.0, "train_samples": 4, "train_correct": 3.0}
    assert TrainState.from_dict(old).train_loss_weight == 4
    assert TrainState.from_dict({**old, "train_loss_weight": 2.5}).train_loss_weight == 2.5


def test_bce_regression_logs_and_predicts_sigmoids_and_needs_targets_in_0_1(tmp_path):
    """On [0, 1] targets the run logged the MAE of its raw logits and `predict` printed
    negative values; targets outside [0, 1] trained to nothing, exit 0."""
    from ptool.core.predict import Reader, load_predictor, predict
    from ptool.core.restore import model_from_checkpoint

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 12, generator=gen)
    torch.save({"x": x, "y": torch.sigmoid(x[:, :1] * 2)}, tmp_path / "soft.pt")
    defaults = TrainConfig()
    config = small(tmp_path, data=f"tensors:{tmp_path / 'soft.pt'}", loss="bce-with-logits")
    config = config.replace(
        shape=defaults.shape, samples=defaults.samples, num_classes=defaults.num_classes
    )
    fit(config, quiet=True)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    model = model_from_checkpoint(ckpt).eval()
    val_x, val_y = build_data(config).val.tensors
    with torch.no_grad():
        values = torch.sigmoid(model(val_x))
    mae = (values - val_y).abs().mean().item()
    assert ckpt["metrics"]["val/mae"] == pytest.approx(mae, rel=1e-5)
    predictor = load_predictor(tmp_path / "run" / "last.pt", "cpu")
    torch.save(x[:2], tmp_path / "two.pt")
    samples = Reader(predictor.info).read([str(tmp_path / "two.pt")])
    records = list(predict(predictor.model, samples, predictor.info, loss=predictor.loss))
    mean, std = torch.tensor(predictor.info.mean), torch.tensor(predictor.info.std)
    with torch.no_grad():
        expected = torch.sigmoid(model((x[:2] - mean) / std))
    assert [r["prediction"] for r in records] == pytest.approx(expected.flatten().tolist())
    torch.save({"x": x, "y": x[:, :1] * 10}, tmp_path / "wide.pt")
    wide = config.replace(data=f"tensors:{tmp_path / 'wide.pt'}", out=str(tmp_path / "wide"))
    with pytest.raises(UsageError, match=r"needs targets in \[0, 1\] \(probabilities\)"):
        fit(wide, quiet=True)


def test_class_weights_all_zero_are_refused(tmp_path):
    with pytest.raises(UsageError, match="--class-weights are all 0"):
        fit(small(tmp_path, class_weights=[0, 0, 0]), quiet=True)
    # `--class-weights ''` was "all 0" too
    with pytest.raises(UsageError, match="^--class-weights has 0 values; the data has 3 classes"):
        fit(small(tmp_path, class_weights=[]), quiet=True)


def test_quiet_silences_torch_compiles_own_log_lines(tmp_path, monkeypatch):
    """`--quiet --compile` printed inductor's "No CUDA runtime is found" warning on stderr."""
    import logging

    calls = []
    monkeypatch.setattr(torch, "compile", lambda model: model)  # the logs, not the compiler
    monkeypatch.setattr(torch._logging, "set_logs", lambda **kw: calls.append(kw))
    fit(small(tmp_path, "loud", epochs=1, compile=True), quiet=False)
    assert calls == []
    fit(small(tmp_path, "quiet", epochs=1, compile=True), quiet=True)
    assert calls == [{"all": logging.ERROR}]


def test_compile_hides_the_cuda_home_notice_of_a_machine_without_a_gpu(tmp_path, monkeypatch):
    """Without --quiet too: a CPU run cannot act on inductor's toolchain notice."""
    import logging

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord(
            "torch.utils.cpp_extension", logging.WARNING, "", 0, message, (), None
        )

    monkeypatch.setattr(torch, "compile", lambda model: model)
    logger = logging.getLogger("torch.utils.cpp_extension")
    monkeypatch.setattr(logger, "filters", [])
    notice = record("No CUDA runtime is found, using CUDA_HOME='/usr/local'")
    assert logger.filter(notice)
    fit(small(tmp_path, epochs=1, compile=True), quiet=False)
    assert not logger.filter(notice)
    assert logger.filter(record("Error building extension 'x'"))


def test_the_python_api_as_the_readme_shows_it(tmp_path):
    """The README's example through `ptool.core`'s exports, and its arguments refused by
    what they should be: a path was an AttributeError deep in the run."""
    import ptool.core as api

    config = api.resolve_config(None, {**small(tmp_path).to_dict(), "epochs": 1})
    summary = api.fit(config, quiet=True)
    best = summary.checkpoints["best"]
    data = api.build_data(config)
    model = api.build_model(config, data.info)
    saved = torch.load(best, weights_only=True)["model_state_dict"]
    for loaded in (api.model_from_checkpoint(best), api.model_from_checkpoint(Path(best))):
        assert loaded.state_dict().keys() == model.state_dict().keys() == saved.keys()
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in saved.items())
    again = config.replace(out=str(tmp_path / "again"))
    with pytest.raises(TypeError, match="config must be a TrainConfig, not str: resolve_con"):
        api.fit("run.yaml")
    with pytest.raises(TypeError, match="config must be a TrainConfig, not NoneType"):
        api.fit(None)
    with pytest.raises(TypeError, match="resume must be a dict, not str: load_checkpoint"):
        api.fit(again, resume=best)
    with pytest.raises(TypeError, match="model must be a Module, not str: build_model"):
        api.fit(again, model="mlp")
    with pytest.raises(TypeError, match="data must be a DataBundle, not str: build_data"):
        api.fit(again, data="digits")


def test_an_api_resume_with_a_fresh_config_takes_the_runs_seed(tmp_path):
    """`fit(resolve_config(...), resume=ckpt)` drew a new seed, so another split: "not the
    data this run trained on". The oracle: the same run uninterrupted, at the seed it drew."""
    import ptool.core as api

    values = {**small(tmp_path, "cut").to_dict(), "seed": None, "epochs": 1}
    first = api.fit(api.resolve_config(None, values), quiet=True)
    last = api.load_checkpoint(first.checkpoints["last"])
    resumed = api.fit(api.resolve_config(None, {**values, "epochs": 2}), resume=last, quiet=True)
    seed = last["config"]["seed"]
    whole = api.fit(small(tmp_path, "whole", seed=seed, epochs=2), quiet=True)
    assert resumed.global_step == whole.global_step > last["global_step"]
    for name, tensor in weights(whole.checkpoints["last"]).items():
        assert torch.equal(weights(resumed.checkpoints["last"])[name], tensor), name
