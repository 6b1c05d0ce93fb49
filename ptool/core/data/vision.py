"""Image sources read per sample: torchvision datasets from --data-dir, image folders."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ptool.core.data.common import (
    DEFAULT_VAL_FRACTION,
    TransformedSubset,
    check_num_classes,
    check_task,
    data_seed,
    missing_path_hint,
    split_indices,
)
from ptool.core.data.info import DataBundle, DataInfo
from ptool.core.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    augmentations,
    check_augment,
    image_pipeline,
)
from ptool.core.errors import PtoolError, UsageError, first_line

# --- torchvision datasets ------------------------------------------------------------------

# name -> (torchvision class, channels, native size, known mean, known std)
TORCHVISION: dict[str, tuple[str, int, int, list[float], list[float]]] = {
    "mnist": ("MNIST", 1, 28, [0.1307], [0.3081]),
    "fashion-mnist": ("FashionMNIST", 1, 28, [0.2860], [0.3530]),
    "kmnist": ("KMNIST", 1, 28, [0.1918], [0.3483]),
    "cifar10": ("CIFAR10", 3, 32, [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ("CIFAR100", 3, 32, [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
    "svhn": ("SVHN", 3, 32, [0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970]),
}


def _open_torchvision(name: str, config: Any, *, train: bool):
    import torchvision.datasets

    cls = getattr(torchvision.datasets, TORCHVISION[name][0])
    root = str(Path(config.data_dir).expanduser())
    kwargs = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
    try:
        return cls(root, download=config.download, **kwargs)
    except RuntimeError as exc:
        text = str(exc)
        if text.startswith("Error downloading"):  # the MNIST family: each mirror's error, a line
            raise _download_failed(name, root, text.strip().splitlines()[-1]) from exc
        if "not found" not in text.lower():
            raise _unreadable(name, root, exc) from exc
        raise UsageError(
            f"{name} not found under --data-dir {root}",
            hint=f"put torchvision's {name} files there, or add --download to fetch them "
            "(needs network)",
        ) from exc
    except OSError as exc:  # URLError, connection and disk errors while downloading
        raise _download_failed(name, root, exc) from exc
    except (AssertionError, ValueError, EOFError, IndexError, pickle.UnpicklingError) as exc:
        raise _unreadable(name, root, exc) from exc


def _unreadable(name: str, root: str, exc: Exception) -> PtoolError:
    """Files torchvision found but cannot parse: a download cut short, say (MNIST's reader
    fails an assert, CIFAR's pickle ends early)."""
    detail = first_line(exc) or "no detail"
    return PtoolError(
        f"{name} files under --data-dir {root} cannot be read ({type(exc).__name__}: {detail})",
        hint="delete them and fetch them again with --download, or copy good files there",
    )


def _download_failed(name: str, root: str, reason: object) -> PtoolError:
    return PtoolError(
        f"could not download {name} into --data-dir {root}: {reason}",
        hint="offline? copy the dataset files there and drop --download",
    )


def torchvision_dataset(config: Any, name: str) -> DataBundle:
    check_task(config, name, ("classification",))
    root = Path(config.data_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise UsageError(f"--data-dir {root} is a file, not a folder (looking for {name})")
    if not root.is_dir() and not config.download:
        raise UsageError(
            f"--data-dir {root} does not exist (looking for {name})",
            hint="point --data-dir at the folder holding the dataset, or add --download",
        )
    _, channels, native, mean, std = TORCHVISION[name]
    size = config.image_size or native
    base = _open_torchvision(name, config, train=True)
    classes = list(getattr(base, "classes", None) or [str(i) for i in range(10)])
    check_num_classes(config, name, len(classes))
    if config.val_split is not None:
        train_idx, val_idx = split_indices(len(base), config.val_split, data_seed(config))
        val_base = base
    else:
        train_idx = val_idx = None
        val_base = _open_torchvision(name, config, train=False)
    return _pil_bundle(
        config,
        source=name,
        sets=(base, train_idx, val_base, val_idx),
        channels=channels,
        size=size,
        known_stats=(mean, std),
        classes=classes,
        image_size=config.image_size,
    )


def _pil_bundle(config, *, source, sets, channels, size, known_stats, classes, image_size):
    """Per-sample pipelines over PIL datasets: train with augmentation, val without."""
    check_augment(config.augment, is_image=True)
    base, train_idx, val_base, val_idx = sets
    mean, std = known_stats if config.normalize else (None, None)
    resize = (size, size) if image_size is not None else None

    def pipeline(augment: list):
        return image_pipeline(from_pil=True, size=resize, augment=augment, mean=mean, std=std)

    train = TransformedSubset(base, train_idx, pipeline(augmentations(config, (size, size))))
    val = TransformedSubset(val_base, val_idx, pipeline([]))
    info = DataInfo(
        task="classification",
        input_shape=[channels, size, size],
        num_outputs=len(classes),
        num_classes=len(classes),
        class_names=classes,
        mean=mean,
        std=std,
        image_size=image_size,
        train_size=len(train),
        val_size=len(val),
        source=source,
    )
    return DataBundle(train=train, val=val, info=info)


DEFAULT_IMAGE_SIZE = 64


def imagefolder(config: Any, path: str, *, channels: int = 3) -> DataBundle:
    """torchvision ImageFolder (RGB): PATH/train + PATH/val (or test), else a seeded split;
    hidden folders and files (.git, ._photo.jpg) are skipped.

    Images are resized to --image-size (default 64) squares and normalized with ImageNet's
    statistics (what photos and torchvision's models expect). `channels=1` reads them as
    grayscale (Pillow's L), for eval of a one-channel model, which brings its own statistics.
    """
    from ptool.core.data.image_folder import VisibleImageFolder

    check_task(config, "imagefolder", ("classification",))
    root = Path(path)
    if not root.is_dir():
        raise UsageError(f"imagefolder: {root} is not a directory", hint=missing_path_hint(root))
    val_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    train_dir = root / "train" if (root / "train").is_dir() else root
    if val_dir is not None and train_dir == root:
        raise UsageError(
            f"imagefolder: {root} has {val_dir.name}/ but no train/, so {val_dir.name!r} would "
            "be read as a class",
            hint=f"move the training class folders into {root / 'train'}, or rename "
            f"{val_dir.name}/ if it is a class",
        )

    def open_folder(folder: Path) -> Any:
        try:
            return VisibleImageFolder(folder, mode="L" if channels == 1 else "RGB")
        except (FileNotFoundError, OSError) as exc:
            raise UsageError(
                f"imagefolder: {exc}", hint="expected PATH/CLASS/IMAGE (or PATH/train/CLASS/...)"
            ) from exc

    base = open_folder(train_dir)
    if val_dir is not None and train_dir != root and not config.val_split:  # 0: eval's whole
        val_base, train_idx, val_idx = open_folder(val_dir), None, None
        if val_base.classes != base.classes:
            raise UsageError(
                f"imagefolder: {val_dir} has classes {val_base.classes}, "
                f"{train_dir} has {base.classes}",
                hint=f"give both the same class folders, or --val-split 0.2 to validate on a "
                f"seeded split of {train_dir.name}/ instead ({val_dir.name}/ is then not read)",
            )
    else:
        fraction = config.val_split if config.val_split is not None else DEFAULT_VAL_FRACTION
        train_idx, val_idx = split_indices(len(base), fraction, data_seed(config))
        val_base = base
    if len(base.classes) < 2 and config.val_split != 0:  # held-out images of one class: eval
        raise UsageError(
            f"imagefolder: {train_dir} holds one class folder ({base.classes[0]}); nothing to "
            "classify",
            hint="expected a folder per class: PATH/CLASS/IMAGE; eval --split all reads a "
            "held-out folder of one class",
        )
    check_num_classes(config, "imagefolder", len(base.classes))
    size = config.image_size or DEFAULT_IMAGE_SIZE
    return _pil_bundle(
        config,
        source=f"imagefolder:{path}",
        sets=(base, train_idx, val_base, val_idx),
        channels=channels,
        size=size,
        known_stats=(IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (None, None),
        classes=list(base.classes),
        image_size=size,
    )
