"""What a data source produced: the datasets, and the plain facts saved in checkpoints."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset


@dataclass
class DataInfo:
    """Saved in every checkpoint as `ckpt["data_info"]` (plain types only).

    Classification targets are int64 class indices of shape [B]; regression targets are
    float32 of shape [B, num_outputs]. `mean`/`std` are the normalization actually applied
    (per channel for images, per feature for tabular data), `None` when off.
    `feature_names` lets `ptool predict` check a CSV's columns against the training ones, and
    `target_name` lets `ptool eval --data csv:OTHER` find the target among them.
    """

    task: str
    input_shape: list[int]
    num_outputs: int
    num_classes: int | None
    class_names: list[str] | None
    mean: list[float] | None
    std: list[float] | None
    image_size: int | None
    train_size: int
    val_size: int
    source: str = ""
    feature_names: list[str] | None = None  # tabular column names (CSV), in input order
    target_name: str | None = None  # the CSV's target column (a held-out file's is read too)

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataInfo:
        """Tolerates keys written by a newer ptool (ignored) so old readers keep working."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def data_changes(saved: DataInfo, found: DataInfo) -> dict[str, str]:
    """What changed -> how, between the data a run trained on and its data rebuilt from the
    run's config (a file that gained rows or a class since); empty when it is the same.
    Another size moves the seeded split: validation would hold training samples, a resume
    another order."""
    changes = {}
    if (saved.train_size, saved.val_size) != (found.train_size, found.val_size):
        changes["size"] = (
            f"{found.train_size} training and {found.val_size} validation samples now, "
            f"{saved.train_size} and {saved.val_size} when it trained"
        )
    for name in ("input_shape", "class_names", "feature_names"):
        then, now = getattr(saved, name), getattr(found, name)
        if then is not None and now is not None and list(then) != list(now):
            changes[name] = (
                f"{name.replace('_', ' ')} {_listed(now)} now, {_listed(then)} when it trained"
            )
    if not changes and _other_statistics(saved, found):  # same size: other values
        changes["statistics"] = "its values differ (another mean or std of the training split)"
    return changes


def _other_statistics(saved: DataInfo, found: DataInfo) -> bool:
    """Normalization statistics computed anew that differ beyond float rounding (another
    machine sums in another order)."""
    pairs = [(saved.mean, found.mean), (saved.std, found.std)]
    return any(
        then is not None
        and now is not None
        and (
            len(then) != len(now)
            or any(
                not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
                for a, b in zip(then, now, strict=True)
            )
        )
        for then, now in pairs
    )


def _listed(values: list) -> str:
    return "[" + ", ".join(map(str, values)) + "]"


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    info: DataInfo
