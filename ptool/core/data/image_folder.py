"""torchvision's ImageFolder as ptool reads it: hidden entries skipped, and an image Pillow
cannot decode named in a one-line error (a module of its own: it imports torchvision)."""

from __future__ import annotations

import os
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


def is_hidden(path: Path, root: Path) -> bool:
    """A dot-name below `root` (.git, .ipynb_checkpoints, macOS's ._photo.jpg): nothing the
    user meant as a class or a sample."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def load_image(path: str, mode: str = "RGB") -> Any:
    """ImageFolder's default loader (in Pillow `mode`: RGB, or L for grayscale) reading the
    image as viewers show it (`as_viewed`), with the file named when Pillow fails on it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as file:
            return as_viewed(Image.open(file)).convert(mode)
    except UnidentifiedImageError:
        raise UnreadableImage(f"{path}: not an image Pillow reads") from None
    except (OSError, ValueError) as exc:  # a truncated JPEG or PNG: "image file is truncated"
        raise UnreadableImage(f"{path}: cannot read the image ({exc})") from None


class VisibleImageFolder(ImageFolder):
    """PATH/CLASS/IMAGE without hidden folders or files, read in Pillow `mode`."""

    def __init__(self, root: str | Path, mode: str = "RGB"):
        super().__init__(
            str(root),
            loader=partial(load_image, mode=mode),
            is_valid_file=self._is_visible_image,
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

    def _is_visible_image(self, path: str) -> bool:
        return has_file_allowed_extension(path, IMG_EXTENSIONS) and not is_hidden(
            Path(path), Path(self.root)
        )
