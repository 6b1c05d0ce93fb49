"""torchvision's ImageFolder as ptool reads it: hidden entries skipped, and an image Pillow
cannot decode named in a one-line error (a module of its own: it imports torchvision)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from ptool.core.data.transforms import as_viewed
from ptool.core.errors import PtoolError


class UnreadableImage(PtoolError):
    """An image file that is cut short or not an image; the hint survives a DataLoader worker,
    which re-raises the error from its message alone."""

    def __init__(self, message: str, hint: str | None = "remove or replace that file"):
        super().__init__(message, hint)


def image_files(folder: str | Path) -> Iterator[str]:
    """Every image file below `folder` in ImageFolder's order (folders by path, files by
    name), links followed as torchvision follows them, without dot-names (.git,
    .ipynb_checkpoints, macOS's ._photo.jpg: nothing the user meant as a sample) and without
    going round a link to a folder above it (`ln -s .. up`): torchvision's walk never ended."""
    folder = os.path.normpath(folder)  # "imgs/": its walk's first root is its own identity
    above = {_identity(str(parent)) for parent in Path(folder).resolve().parents}
    chains: dict[str, set[tuple[int, int] | None]] = {}  # each folder's and those above it
    found = []
    for root, folders, files in os.walk(folder, followlinks=True):
        chain = chains[root] = chains.get(os.path.dirname(root), above) | {_identity(root)}
        folders[:] = [
            name
            for name in folders
            if not name.startswith(".") and _identity(os.path.join(root, name)) not in chain
        ]
        images = (name for name in files if has_file_allowed_extension(name, IMG_EXTENSIONS))
        found.append((root, sorted(name for name in images if not name.startswith("."))))
    for root, files in sorted(found):
        yield from (os.path.join(root, name) for name in files)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:  # gone since the walk listed it
        return None
    return stat.st_dev, stat.st_ino


def load_image(path: str, mode: str = "RGB") -> Any:
    """ImageFolder's default loader (in Pillow `mode`: RGB, or L for grayscale) reading the
    image as viewers show it (`as_viewed`), with the file named when Pillow fails on it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as file:
            return as_viewed(Image.open(file)).convert(mode)
    except UnidentifiedImageError:
        raise UnreadableImage(f"{path}: not an image Pillow reads") from None
    except Image.DecompressionBombError as exc:  # Pillow's limit: not an OSError
        raise UnreadableImage(f"{path}: too large to decode safely ({exc})") from None
    except (OSError, ValueError) as exc:  # a truncated JPEG or PNG: "image file is truncated"
        raise UnreadableImage(f"{path}: cannot read the image ({exc})") from None


class VisibleImageFolder(ImageFolder):
    """PATH/CLASS/IMAGE without hidden folders or files, read in Pillow `mode`."""

    def __init__(self, root: str | Path, mode: str = "RGB"):
        super().__init__(
            str(root),
            loader=partial(load_image, mode=mode),
            allow_empty=True,  # refused below, naming the folders (torchvision names classes)
        )
        self.mode = mode
        empty = sorted(set(self.classes) - {self.classes[target] for target in set(self.targets)})
        if empty:
            folders = ", ".join(str(Path(root, name)) for name in empty)
            raise FileNotFoundError(f"no image in {folders} (read: {', '.join(IMG_EXTENSIONS)})")

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        with os.scandir(directory) as entries:
            classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {name: index for index, name in enumerate(classes)}

    @staticmethod
    def make_dataset(directory: str | Path, class_to_idx: dict[str, int], **_: Any) -> list:
        """torchvision's (path, class) samples, read by `image_files`; an empty class is
        refused by __init__, naming its folder."""
        return [
            (path, index)
            for name, index in sorted(class_to_idx.items())
            for path in image_files(Path(directory, name))
        ]
