"""EpochMetrics against torchmetrics, whose definitions it keeps, batch by batch and across
DDP ranks; and the edge cases where a class or a target's spread is missing."""

from __future__ import annotations

import math

import pytest
import torch
import torchmetrics
from torchmetrics import classification as tmc
from torchmetrics import regression as tmr

from ptool.core.data import DataInfo
from ptool.core.metrics import EpochMetrics, metric_names


def _info(task: str, outputs: int) -> DataInfo:
    classes = outputs if task == "classification" else None
    return DataInfo(task, [3], outputs, classes, None, None, None, None, 0, 0)


def _oracle(task: str, outputs: int) -> torchmetrics.MetricCollection:
    if task == "classification":
        n = outputs
        return torchmetrics.MetricCollection(
            {
                "accuracy": tmc.MulticlassAccuracy(n, average="micro"),
                "precision": tmc.MulticlassPrecision(n, average="macro"),
                "recall": tmc.MulticlassRecall(n, average="macro"),
                "f1": tmc.MulticlassF1Score(n, average="macro"),
            }
        )
    return torchmetrics.MetricCollection(
        {
            "mae": tmr.MeanAbsoluteError(),
            "rmse": tmr.MeanSquaredError(squared=False),
            "r2": tmr.R2Score(),
        }
    )


def _ours(task: str, outputs: int, batches) -> tuple[dict[str, float], list | None]:
    metrics = EpochMetrics(_info(task, outputs), "cpu", "val")
    for x, y in batches:
        metrics.update(x, y, torch.tensor(0.0), len(y))
    return metrics.compute()


def _theirs(task: str, outputs: int, batches) -> dict[str, float]:
    oracle = _oracle(task, outputs).set_dtype(torch.float64)  # ours sums in float64
    for x, y in batches:
        if task == "regression":
            x, y = x.double(), y.double()
            if outputs == 1:
                x, y = x.flatten(), y.flatten()
        oracle.update(x, y)
    return {f"val/{name}": float(value) for name, value in oracle.compute().items()}


def _split(x: torch.Tensor, y: torch.Tensor, sizes: list[int]):
    return list(zip(x.split(sizes), y.split(sizes), strict=True))


CASES = {
    "random classes": lambda g: (
        torch.randn(60, 5, generator=g),
        torch.randint(5, (60,), generator=g),
    ),
    # class 4 is neither present nor predicted (the macro average skips it), class 3 is
    # predicted but never present (precision 0 counts), class 0 present but never predicted
    "a missing class": lambda g: (
        torch.nn.functional.one_hot(torch.tensor([1, 2, 3, 1, 2, 3] * 5), 5).float(),
        torch.tensor([0, 2, 1, 1, 2, 0] * 5),
    ),
    "one output": lambda g: (torch.randn(60, 1, generator=g), torch.randn(60, 1, generator=g)),
    "three outputs": lambda g: (
        torch.randn(60, 3, generator=g),
        torch.randn(60, 3, generator=g) * torch.tensor([1.0, 10.0, 0.1]) + 5,
    ),
    # a constant target: R2 is 0 where the fit is off, 1 where it is exact
    "a constant target": lambda g: (
        torch.stack([torch.randn(30, generator=g), torch.full((30,), 2.0)], 1),
        torch.full((30, 2), 2.0),
    ),
}


SIZES = {"one batch": lambda n: [n], "uneven": lambda n: [7, n - 17, 10], "ones": lambda n: [1] * n}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("sizes", SIZES)
def test_every_metric_is_torchmetrics_whatever_the_batches(case, sizes):
    x, y = CASES[case](torch.Generator().manual_seed(0))
    batches = _split(x, y, SIZES[sizes](len(y)))
    task = "regression" if y.is_floating_point() else "classification"
    ours, confusion = _ours(task, x.shape[1], batches)
    theirs = _theirs(task, x.shape[1], batches)
    assert list(ours) == metric_names(_info(task, x.shape[1]), "val")
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    if task == "classification":
        expected = tmc.MulticlassConfusionMatrix(x.shape[1])(x, y)
        assert confusion == expected.tolist()


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_auto_mode_follows_torchmetrics_higher_is_better(task):
    """best.pt and early stopping must minimize val/rmse and val/mae, maximize val/r2."""
    from ptool.core.callbacks import Monitor
    from ptool.core.config import TrainConfig

    for name, metric in _oracle(task, 3).items():
        expected = "max" if metric.higher_is_better else "min"
        assert Monitor.from_config(TrainConfig(monitor=f"val/{name}")).mode == expected, name
    assert Monitor.from_config(TrainConfig(monitor="val/loss")).mode == "min"


def test_the_loss_is_the_epochs_sum_over_its_weight_and_a_nan_stays():
    metrics = EpochMetrics(_info("classification", 2), "cpu", "train")
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    metrics.update(x, y, torch.tensor(3.0), 4)
    metrics.update(x, y, torch.tensor(1.0), torch.tensor(1.0))
    assert metrics.compute()[0]["train/loss"] == pytest.approx(4 / 5)
    metrics.update(x, y, torch.tensor(math.nan), 4)
    metrics.update(x, y, torch.tensor(1.0), 4)
    assert math.isnan(metrics.compute()[0]["train/loss"])


def test_compute_starts_the_next_epoch_afresh():
    metrics = EpochMetrics(_info("classification", 3), "cpu", "val")
    metrics.update(torch.eye(3), torch.tensor([0, 1, 2]), torch.tensor(0.0), 3)
    assert metrics.compute()[0]["val/accuracy"] == 1.0
    metrics.update(torch.eye(3), torch.tensor([1, 2, 0]), torch.tensor(0.0), 3)
    values, confusion = metrics.compute()
    assert values["val/accuracy"] == 0.0 and sum(map(sum, confusion)) == 3


def test_narrow_integer_targets_do_not_wrap_around():
    metrics = EpochMetrics(_info("classification", 20), "cpu", "val")
    scores = torch.nn.functional.one_hot(torch.tensor([19, 3]), 20).float()
    metrics.update(scores, torch.tensor([19, 3], dtype=torch.uint8), torch.tensor(0.0), 2)
    values, confusion = metrics.compute()
    assert values["val/accuracy"] == 1.0 and confusion[19][19] == confusion[3][3] == 1


def test_r2_of_one_sample_is_nan_where_torchmetrics_raises():
    metrics = EpochMetrics(_info("regression", 1), "cpu", "val")
    metrics.update(torch.tensor([[1.0]]), torch.tensor([[2.0]]), torch.tensor(1.0), 1)
    values, _ = metrics.compute()
    assert math.isnan(values["val/r2"]) and values["val/mae"] == 1.0
    with pytest.raises(ValueError, match="at least two samples"):
        tmr.R2Score()(torch.tensor([1.0]), torch.tensor([2.0]))


SEVENS = [7] * 8 + [4]
DDP_CASES = {"classification": "random classes", "regression": "three outputs"}


def _rank_metrics(rank: int, root: str, task: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{root}/init", rank=rank, world_size=2)
    try:
        x, y = CASES[DDP_CASES[task]](torch.Generator().manual_seed(0))
        metrics = EpochMetrics(_info(task, x.shape[1]), "cpu", "val")
        for xb, yb in _split(x, y, SEVENS)[rank::2]:  # rank r: batches r, r + 2, ...
            metrics.update(xb, yb, torch.tensor(1.0), len(yb))
        torch.save(metrics.compute(), f"{root}/rank-{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_ddp_ranks_report_the_metrics_of_every_rank_together(tmp_path, task):
    import torch.multiprocessing as mp

    mp.start_processes(_rank_metrics, args=(str(tmp_path), task), nprocs=2, start_method="fork")
    zero, one = (torch.load(tmp_path / f"rank-{r}.pt") for r in (0, 1))
    x, y = CASES[DDP_CASES[task]](torch.Generator().manual_seed(0))
    together = _theirs(task, x.shape[1], _split(x, y, SEVENS))
    assert zero == one
    for name, value in together.items():
        assert zero[0][name] == pytest.approx(value, rel=1e-5), name
