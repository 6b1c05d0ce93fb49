"""Engine parts against torch and scikit-learn: loss, optimizer groups, metrics, RNG, order."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, r2_score
from torch import nn

from ptool.core.config import TrainConfig
from ptool.core.data import DataInfo
from ptool.core.errors import UsageError
from ptool.core.metrics import EpochMetrics
from ptool.core.optim import build_loss, build_optimizer, loss_sum
from ptool.core.runtime import Distributed, capture_rng_state, epoch_order, restore_rng_state


def info(task="classification", classes=4, outputs=None) -> DataInfo:
    return DataInfo(
        task=task,
        input_shape=[3],
        num_outputs=outputs or classes,
        num_classes=classes if task == "classification" else None,
        class_names=None,
        mean=None,
        std=None,
        image_size=None,
        train_size=10,
        val_size=10,
    )


def test_losses_match_torch():
    logits, targets = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 1, 0])
    config = TrainConfig(class_weights=[1, 2, 3, 4], label_smoothing=0.1)
    expected = nn.functional.cross_entropy(
        logits, targets, weight=torch.tensor([1.0, 2, 3, 4]), label_smoothing=0.1
    )
    torch.testing.assert_close(build_loss(config, info())(logits, targets), expected)
    bce = build_loss(TrainConfig(loss="bce-with-logits", pos_weight=[2.0]), info())
    one_hot = nn.functional.one_hot(targets, 4).float()
    expected = nn.functional.binary_cross_entropy_with_logits(
        logits, one_hot, pos_weight=torch.tensor([2.0])
    )
    torch.testing.assert_close(bce(logits, targets), expected)
    mse = build_loss(TrainConfig(), info("regression", outputs=2))
    out, target = torch.randn(5, 2), torch.randn(5, 2)
    torch.testing.assert_close(mse(out, target), nn.functional.mse_loss(out, target))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_a_batch_of_weight_0_classes_counts_nothing_instead_of_nan(label_smoothing):
    """torch's weighted mean is 0/0 there: the run stopped as "diverged" (lower --lr ...)."""
    config = TrainConfig(class_weights=[0, 1, 1, 1], label_smoothing=label_smoothing)
    loss_fn = build_loss(config, info())
    logits = torch.randn(4, 4, requires_grad=True)
    zero_only = loss_fn(logits, torch.tensor([0, 0, 0, 0]))
    zero_only.backward()
    assert zero_only.item() == 0.0 and torch.equal(logits.grad, torch.zeros(4, 4))
    assert loss_sum(loss_fn, logits[:2], torch.tensor([0, 0]), zero_only)[1].item() == 0
    mixed = torch.tensor([0, 1, 2, 0])
    expected = nn.functional.cross_entropy(
        logits, mixed, weight=torch.tensor([0.0, 1, 1, 1]), label_smoothing=label_smoothing
    )
    torch.testing.assert_close(loss_fn(logits, mixed), expected)  # torch's mean elsewhere


def test_bce_with_logits_predictions_are_sigmoids():
    """A regression run on [0, 1] targets reported MAE/RMSE/R2 of the raw logits."""
    outputs = torch.randn(6, 1)
    bce = build_loss(TrainConfig(loss="bce-with-logits"), info("regression", outputs=1))
    torch.testing.assert_close(bce.predictions(outputs), outputs.sigmoid())
    mse = build_loss(TrainConfig(), info("regression", outputs=1))
    assert mse.predictions(outputs) is outputs


@pytest.mark.parametrize("loss", ["mse", "bce-with-logits"])
def test_bf16_outputs_meet_float32_targets_in_float32(loss):
    """The targets were rounded to bf16 first: val/loss 45.168 where rmse² was 45.129."""
    gen = torch.Generator().manual_seed(0)
    outputs = (torch.randn(64, 1, generator=gen) * 3).bfloat16()
    targets = torch.randn(64, 1, generator=gen) * 3 + 10.123
    oracle = nn.functional.mse_loss
    if loss == "bce-with-logits":
        targets, oracle = targets.sigmoid(), nn.functional.binary_cross_entropy_with_logits
    loss_fn = build_loss(TrainConfig(loss=loss), info("regression", outputs=1))
    with torch.autocast("cpu", torch.bfloat16):
        value = loss_fn(outputs, targets)
    assert value.dtype == torch.float32
    assert float(value) == pytest.approx(float(oracle(outputs.float(), targets)), rel=1e-6)


def test_bce_with_logits_classes_are_the_argmax_of_the_logits_not_of_their_sigmoids():
    """Sigmoids of logits above ~17 are all 1.0: their argmax was the first class."""
    from ptool.core.evaluate import evaluate

    logits = torch.tensor([[18.0, 25.0], [20.0, 30.0], [-3.0, 2.0], [30.0, 19.0]])
    targets = torch.tensor([1, 1, 1, 0])
    bce = build_loss(TrainConfig(loss="bce-with-logits"), info(classes=2))
    result = evaluate(nn.Identity(), [(logits, targets)], info(classes=2), bce)
    assert result.metrics["val/accuracy"] == 1.0 and result.confusion == [[1, 0], [0, 3]]
    assert [row["f1"] for row in result.per_class] == [1.0, 1.0]


@pytest.mark.parametrize(
    ("changes", "task", "message"),
    [
        ({"class_weights": [1.0, 2.0]}, "classification", "the data has 4 classes"),
        ({"loss": "mse"}, "classification", "needs regression targets"),
        ({"loss": "cross-entropy"}, "regression", "needs class targets"),
        ({"optimizer": "sgd", "nesterov": True}, "classification", "--optimizer sgd"),
    ],
)
def test_bad_loss_and_optimizer_settings_are_usage_errors(changes, task, message):
    config = TrainConfig(**changes)
    with pytest.raises(UsageError, match=message):
        build_loss(config, info(task, outputs=1))
        build_optimizer(nn.Linear(3, 4), config)


def test_no_decay_norm_bias_groups():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    config = TrainConfig(optimizer="sgd", weight_decay=0.1, no_decay_norm_bias=True)
    decayed, exempt = build_optimizer(model, config).param_groups
    assert decayed["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(decayed["params"]) == {id(model[0].weight), id(model[3].weight)}
    assert ids(exempt["params"]) == {
        id(model[0].bias),
        id(model[1].weight),
        id(model[1].bias),
        id(model[3].bias),
    }
    adamw = build_optimizer(model, TrainConfig())
    assert adamw.param_groups[0]["weight_decay"] == 0.01  # PyTorch's AdamW default


def test_epoch_metrics_match_sklearn_over_the_whole_epoch():
    metrics = EpochMetrics(info(), torch.device("cpu"), "val")
    logits, targets = torch.randn(50, 4), torch.randint(4, (50,))
    losses = []
    for chunk in (slice(0, 7), slice(7, 50)):  # unequal batches: a mean of means would differ
        loss = nn.functional.cross_entropy(logits[chunk], targets[chunk])
        losses.append(loss * len(targets[chunk]))
        metrics.update(
            logits[chunk], targets[chunk], loss * len(targets[chunk]), len(targets[chunk])
        )
    values, confusion = metrics.compute()
    predicted = logits.argmax(1).numpy()
    assert values["val/accuracy"] == pytest.approx(accuracy_score(targets, predicted))
    assert values["val/f1"] == pytest.approx(f1_score(targets, predicted, average="macro"))
    assert values["val/loss"] == pytest.approx(float(sum(losses) / 50))
    assert np.array(confusion).sum() == 50
    regression = EpochMetrics(info("regression", outputs=1), torch.device("cpu"), "val")
    out, target = torch.randn(20, 1), torch.randn(20, 1)
    regression.update(out, target, nn.functional.mse_loss(out, target) * 20, 20)
    values, _ = regression.compute()
    assert values["val/r2"] == pytest.approx(r2_score(target.numpy(), out.numpy()), abs=1e-5)


@pytest.mark.parametrize(
    ("changes", "task", "message"),
    [
        ({"label_smoothing": 0.1}, "regression", "--label-smoothing is an option of the cross"),
        ({"pos_weight": [2.0]}, "classification", "this run's is cross-entropy"),
        ({"loss": "bce-with-logits", "class_weights": [1.0] * 4}, "classification", "--class-w"),
    ],
)
def test_another_losss_option_is_refused_for_a_new_run_only(changes, task, message):
    """A new run is told; a checkpoint an older ptool saved with it still builds its loss."""
    from ptool.core.checks import check_loss_options

    config = TrainConfig(**changes)
    with pytest.raises(UsageError, match=message):
        check_loss_options(config, info(task, outputs=1))
    build_loss(config, info(task, outputs=1))  # eval, resume, prune of such a checkpoint


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden": [4096]}, "--hidden is an option of the mlp model; this run's is cnn"),
        ({"model": "mlp", "channels": [8]}, "--channels is an option of the cnn model"),
        ({"model": "torchvision:resnet18", "dropout": 0.2}, "--dropout is an option of the mlp"),
        ({"target": "y"}, "--target names a CSV column; --data digits has none"),
        ({"data": "mnist", "target": "y"}, "--target names a CSV column; --data mnist has"),
        ({"model": "resnet18"}, "unknown model 'resnet18'; valid: mlp, cnn"),
        ({"data": "csv"}, "unknown data source 'csv'; valid: digits"),
        ({"download": True}, "--download is for the torchvision datasets"),
        ({"data": "csv:t.csv", "data_dir": "x"}, "--data-dir is for the torchvision datasets"),
        ({"flip_p": 0.9}, "--flip-p sets the flip augmentation, which this run does not apply"),
        ({"augment": ["crop"], "color_jitter": 0.2}, "--color-jitter sets the color-jitter"),
        ({"augment": ["flip", "crop", "flip"]}, "--augment names flip more than once"),
        ({"model": "mlp", "channels_last": True}, "--channels-last lays out the inputs of conv"),
        ({"model": "my.module:build", "activation": "gelu"}, "--activation is an option of the"),
        # what the run would refuse once it reads the data: refused before --print-config
        ({"augment": ["flop"]}, "unknown augmentation 'flop'; valid: crop, flip"),
        ({"data": "csv:"}, "--data csv: needs a path, e.g. csv:PATH.csv"),
        ({"model": "torchvision:nope"}, "unknown torchvision classification model 'nope'"),
        ({"data": "synthetic", "shape": "0x3x3"}, "invalid --shape '0x3x3'"),
    ],
)
def test_an_option_the_model_or_data_does_not_read_is_refused(changes, message):
    """Each trained as if it were not given (`--hidden` on the default cnn, say)."""
    from ptool.core.checks import check_model_and_data_options

    with pytest.raises(UsageError, match=message):
        check_model_and_data_options(TrainConfig(**changes))
    for own in (
        {"model": "mlp", "hidden": [64], "dropout": 0.1, "norm": "layer"},
        {"channels": [8], "dropout": 0.1, "channels_last": True},
        {"data": "csv:t.csv", "target": "y"},
        {"data": "mnist", "data_dir": "x", "download": True},
        {"model": "torchvision:resnet18", "data": "imagefolder:x"},
        {"model": "my.module:build", "data": "tensors:t.pt"},
        {"model": "torchvision:resnet18", "activation": "tanh", "init": "xavier-normal"},  # gain
        {"augment": ["flip", "crop"], "flip_p": 0.9, "crop_padding": 2},
    ):
        check_model_and_data_options(TrainConfig(**own))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"momentum": 0.9}, "--momentum is an option of the sgd and rmsprop optimizers; this "),
        ({"optimizer": "adam", "nesterov": True}, "--nesterov is an option of the sgd optim"),
        ({"optimizer": "sgd", "betas": [0.5, 0.99]}, "--betas is an option of the adam and"),
        ({"optimizer": "sgd", "eps": 1e-6}, "--eps is an option of the adam, adamw and rms"),
        ({"optimizer": "adamw", "alpha": 0.9}, "this run's is adamw"),
    ],
)
def test_another_optimizers_option_is_refused_for_a_new_run_only(changes, message):
    """torch would take no such argument; ptool used to drop it without a word."""
    from ptool.core.checks import check_optimizer_options

    config = TrainConfig(**changes)
    with pytest.raises(UsageError, match=message):
        check_optimizer_options(config)
    build_optimizer(nn.Linear(2, 2), config)  # resume, prune of such an older checkpoint
    for own in (
        {"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "dampening": 0.0},
        {"optimizer": "adam", "betas": [0.5, 0.99], "eps": 1e-6},
        {"optimizer": "rmsprop", "momentum": 0.9, "alpha": 0.9, "eps": 1e-6},
    ):
        check_optimizer_options(TrainConfig(**own))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"warmup_start_factor": 0.5}, "--warmup-start-factor shapes a warmup"),
        ({"strict": False}, "--no-strict shapes --init-from's loading"),
        ({"tensorboard": False, "log_histograms": True}, "--log-histograms shapes TensorBoard"),
        ({"tensorboard": False, "log_graph": True}, "--log-graph shapes TensorBoard"),
        ({"tensorboard": False, "log_every_steps": 5}, "--log-every-steps shapes TensorBoard"),
        ({"optimizer": "sgd", "dampening": 0.5}, "--dampening shapes SGD's momentum, at --mom"),
        ({"optimizer": "sgd", "nesterov": True}, "--nesterov shapes SGD's momentum"),
        ({"optimizer": "sgd", "no_decay_norm_bias": True}, "--no-decay-norm-bias shapes weight"),
        ({"optimizer": "adamw", "weight_decay": 0.0, "no_decay_norm_bias": True},
         "--no-decay-norm-bias shapes weight decay, at 0 here"),
        ({"num_workers": 0, "persistent_workers": True},
         "--persistent-workers shapes DataLoader workers, at --num-workers 0"),
        # torch's own words as the run started: "Nesterov momentum requires a momentum and ..."
        ({"optimizer": "sgd", "nesterov": True, "momentum": 0.9, "dampening": 0.1},
         r"--nesterov needs --dampening 0 \(torch's SGD\)"),
        # a loss named, not auto: its options are known before the data is read
        ({"loss": "mse", "label_smoothing": 0.1}, "--label-smoothing is an option of the cross"),
    ],
)  # fmt: skip
def test_an_option_that_shapes_one_the_run_does_not_use_is_refused(changes, message):
    """Each was accepted and did nothing (a warmup's start factor without a warmup, ...)."""
    from ptool.core.checks import check_new_run_options

    with pytest.raises(UsageError, match=message):
        check_new_run_options(TrainConfig(**changes))
    check_new_run_options(  # each with what it shapes
        TrainConfig(warmup_epochs=1, warmup_start_factor=0.5, init_from="a.pt", strict=False,
                    log_histograms=True, log_every_steps=5, optimizer="sgd", momentum=0.9,
                    nesterov=True)
    )  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scheduler": "cosine", "gamma": 0.5}, "--gamma is an option of the step, multist"),
        ({"max_lr": 0.1}, "--max-lr is an option of the onecycle and cyclic schedulers; this"),
        ({"scheduler": "step", "milestones": [2, 3]}, "--milestones is an option of the multi"),
        ({"cycle_momentum": False}, "--no-cycle-momentum is an option of the onecycle and"),
        ({"scheduler": "plateau", "three_phase": True}, "this run's is plateau"),
    ],
)
def test_another_schedules_option_is_refused_for_a_new_run_only(changes, message):
    from ptool.core.checks import check_schedule_options
    from ptool.core.schedules import build_schedule

    config = TrainConfig(**changes)
    with pytest.raises(UsageError, match=message):
        check_schedule_options(config)
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    build_schedule(optimizer, config, steps_per_epoch=3)  # an older checkpoint's still builds
    for own in (
        {"scheduler": "onecycle", "max_lr": 0.1, "three_phase": True, "cycle_momentum": False},
        {"scheduler": "multistep", "milestones": [2, 3], "gamma": 0.5},
        {"scheduler": "cyclic", "max_lr": 0.1, "cyclic_mode": "triangular2"},
        {"scheduler": "cosine", "warmup_epochs": 1, "scheduler_interval": "step", "eta_min": 0.1},
    ):
        check_schedule_options(TrainConfig(**own))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"optimizer": "sgd", "max_momentum": 0.9}, "sgd at --momentum 0 has no momentum to"),
        ({"scheduler": "cyclic", "base_momentum": 0.8}, "cyclic leaves Adam's betas alone"),
        ({"cycle_momentum": False, "max_momentum": 0.9}, "--no-cycle-momentum turns it off"),
        ({"base_momentum": 0.9, "max_momentum": 0.8}, "--base-momentum 0.9 is above --max-mo"),
    ],
)
def test_momentum_bounds_without_a_cycle_to_bound_are_refused(changes, message):
    """torch would drop them without a word (nothing cycles), or invert the cycle."""
    from ptool.core.checks import check_schedule_options

    config = TrainConfig(**{"scheduler": "onecycle", **changes})
    with pytest.raises(UsageError, match=message):
        check_schedule_options(config)
    check_schedule_options(config.replace(optimizer="sgd", momentum=0.5, cycle_momentum=True,
                                          base_momentum=0.5, max_momentum=0.9))  # fmt: skip


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weights", [[1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 0.0, 4.0]])
def test_a_class_weighted_loss_is_the_whole_sets_at_any_batch_size(smoothing, weights):
    """Weighted cross-entropy divides by the targets' summed weights, not their count. With
    smoothing, samples of a weight-0 class still count (in a batch of only such samples too:
    at batch size 1 the epoch's loss was 0.126 where torch's is 0.179)."""
    config = TrainConfig(class_weights=weights, label_smoothing=smoothing)
    loss_fn = build_loss(config, info())
    logits, targets = torch.randn(50, 4), torch.randint(4, (50,))
    oracle = nn.functional.cross_entropy(
        logits, targets, weight=torch.tensor(config.class_weights), label_smoothing=smoothing
    )
    for size in (1, 8, 50):
        metrics = EpochMetrics(info(), torch.device("cpu"), "val")
        for i in range(0, 50, size):
            x, y = logits[i : i + size], targets[i : i + size]
            metrics.update(x, y, *loss_sum(loss_fn, x, y, loss_fn(x, y)))
        assert metrics.compute()[0]["val/loss"] == pytest.approx(float(oracle), rel=1e-5)


def test_a_nan_batch_loss_makes_the_epochs_loss_nan_without_a_warning():
    """torchmetrics' default would warn, drop the NaN and report the other batches' mean."""
    import warnings

    metrics = EpochMetrics(info(), torch.device("cpu"), "val")
    logits, targets = torch.randn(8, 4), torch.randint(4, (8,))
    metrics.update(logits, targets, torch.tensor(0.5 * 8), 8)
    metrics.update(logits, targets, torch.tensor(float("nan")), 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values, _ = metrics.compute()
    assert math.isnan(values["val/loss"])


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in NumPy's legacy state
    torch.save(capture_rng_state(), tmp_path / "rng.pt")
    first = (random.random(), np.random.standard_normal(), torch.rand(3))
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    second = (random.random(), np.random.standard_normal(), torch.rand(3))
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_gpu_runs_rng_state_is_its_devices_and_restores_on_any_machine(tmp_path):
    """Every visible GPU's state was saved and put back by index: a file from a machine with
    more GPUs raised IndexError, and under DDP rank 1 took rank 0's untouched cuda:1 state."""
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    torch.manual_seed(3)
    torch.rand(5, device=device)
    torch.save(capture_rng_state(device), tmp_path / "rng.pt")
    state = torch.load(tmp_path / "rng.pt", weights_only=True)
    first = torch.rand(5, device=device)
    restore_rng_state(state, device)
    assert torch.equal(torch.rand(5, device=device), first)
    later = torch.cuda.get_rng_state(device)  # another state than the saved one
    older = {**state, "cuda": [later, state["cuda"]]}  # an older file's: one per GPU
    restore_rng_state(older, torch.device("cuda", 1 % torch.cuda.device_count()))
    if torch.cuda.device_count() > 1:  # cuda:1 takes the list's second
        assert torch.equal(torch.rand(5, device="cuda:1"), first.to("cuda:1"))
    restore_rng_state({**state, "cuda": [later]}, torch.device("cuda", 0))
    restore_rng_state({**state, "cuda": []}, torch.device("cuda", 0))  # none for it: no error


def test_ddp_ranks_partition_each_single_process_batch():
    size, batch, world = 64, 4, 2
    single = epoch_order(size, seed=5, epoch=3, shuffle=True, info=Distributed())
    ranks = [
        epoch_order(size, seed=5, epoch=3, shuffle=True, info=Distributed(r, r, world))
        for r in range(world)
    ]
    for k in range(size // (batch * world)):
        together = torch.cat([order[k * batch : (k + 1) * batch] for order in ranks])
        expected = single[k * batch * world : (k + 1) * batch * world]
        assert sorted(together.tolist()) == sorted(expected.tolist())
    other_epoch = epoch_order(size, seed=5, epoch=4, shuffle=True, info=Distributed())
    assert not torch.equal(single, other_epoch)
    assert torch.equal(
        epoch_order(size, seed=5, epoch=3, shuffle=False, info=Distributed()), torch.arange(size)
    )


def _rank_values(rank: int, root: str) -> None:
    import json

    import torch.distributed as dist

    from ptool.core.runtime import from_main_rank, pick_seed

    dist.init_process_group("gloo", init_method=f"file://{root}/init", rank=rank, world_size=2)
    try:
        group = Distributed(rank=rank, world_size=2)
        values = [from_main_rank(f"runs/stamp-of-rank-{rank}", group), pick_seed(None, group)]
        Path(root, f"rank-{rank}.json").write_text(json.dumps(values))
    finally:
        dist.destroy_process_group()


def test_ranks_take_rank_0s_run_dir_and_seed(tmp_path):
    """Processes started apart can stamp another default run dir and draw another seed."""
    import torch.multiprocessing as mp

    mp.start_processes(_rank_values, args=(str(tmp_path),), nprocs=2, start_method="fork")
    zero, one = ((tmp_path / f"rank-{r}.json").read_text() for r in (0, 1))
    assert zero == one and "runs/stamp-of-rank-0" in zero


def test_set_deterministic_turns_torchs_flag_on_and_back_off():
    """A second run in the same process (the Python API) must not inherit the first's."""
    from ptool.core.runtime import set_deterministic

    set_deterministic(True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()
