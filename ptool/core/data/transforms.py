"""Preprocessing: normalization statistics, augmentation pipelines, and predict's transform.

torchvision is imported inside the functions that build pipelines, so the default `digits`
run (in-memory tensors, no augmentation) never pays for importing it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ptool.core.errors import UsageError, unknown_name

AUGMENTATIONS = ("crop", "flip", "resized-crop", "color-jitter")

# Known statistics of well-known datasets and of ImageNet (the usual choice for photos).
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def tensor_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel (N,C,H,W) or per-feature (N,F) mean and std; a constant input gets std 1."""
    dims = (0, 2, 3) if x.dim() == 4 else (0,)
    x = x.double()
    mean = x.mean(dim=dims)
    std = x.std(dim=dims)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.tolist(), std.tolist()


def normalize_tensor(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std broadcast over channels (dim -3 for images) or features (last dim)."""
    shape = (-1, 1, 1) if x.dim() >= 3 and len(mean) == x.shape[-3] else (-1,)
    m = torch.tensor(mean, dtype=x.dtype).view(shape)
    s = torch.tensor(std, dtype=x.dtype).view(shape)
    return (x - m) / s


def check_augment(names: Sequence[str], *, is_image: bool) -> None:
    for name in names:
        if name not in AUGMENTATIONS:
            raise unknown_name("augmentation", name, AUGMENTATIONS)
    if names and not is_image:
        raise UsageError(
            f"--augment {','.join(names)} needs image data; this source is tabular",
            hint="drop --augment",
        )


def augmentations(config: Any, size: Sequence[int]) -> list:
    """The torchvision.transforms.v2 objects for `config.augment`, for images of `size` (H, W)."""
    from torchvision.transforms import v2

    size = tuple(size)
    build: dict[str, Callable[[], Any]] = {
        "crop": lambda: v2.RandomCrop(size, padding=config.crop_padding),
        "flip": lambda: v2.RandomHorizontalFlip(p=config.flip_p),
        "resized-crop": lambda: v2.RandomResizedCrop(
            size, scale=tuple(config.resized_crop_scale), antialias=True
        ),
        "color-jitter": lambda: v2.ColorJitter(
            brightness=config.color_jitter,
            contrast=config.color_jitter,
            saturation=config.color_jitter,
        ),
    }
    return [build[name]() for name in config.augment]


def image_pipeline(
    *,
    from_pil: bool,
    size: Sequence[int] | None,
    augment: list,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
):
    """PIL/uint8 -> float [0,1] -> resize -> augment -> normalize, as one v2.Compose."""
    import torch
    from torchvision.transforms import v2

    steps: list = []
    if from_pil:
        steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if size is not None:
        steps.append(v2.Resize(tuple(size), antialias=True))
    steps += augment
    if mean is not None:
        steps.append(v2.Normalize(mean, std))
    return v2.Compose(steps)


def as_viewed(image: Any) -> Any:
    """A Pillow image as a viewer shows it: turned upright by its EXIF orientation (a phone's
    portrait photo came in on its side), and 16-bit grayscale scaled to 8 bits (Pillow's
    convert clips it at 255: a nearly black 16-bit PNG read as white)."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16"):
        image = image.convert("I")
    if image.mode == "I" and image.getextrema()[1] > 255:
        image = image.point(lambda value: value * (1 / 256))
    return image


# Pillow's "L": ITU-R 601-2 luma of R, G, B
_LUMA = (0.299, 0.587, 0.114)


def _converted(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(C, H, W) with another channel count as Pillow's convert makes it: alpha (LA, RGBA)
    dropped, RGB to luma for a grayscale model, gray repeated for an RGB one."""
    if x.shape[0] in (2, 4):
        x = x[:-1]
    if channels == 1 and x.shape[0] == 3:
        return (x * torch.tensor(_LUMA).view(3, 1, 1)).sum(0, keepdim=True)
    if channels == 3 and x.shape[0] == 1:
        return x.expand(3, -1, -1)
    if x.shape[0] != channels:
        raise ValueError(f"{x.shape[0]} channels cannot be read as {channels}")
    return x


def val_transform(info) -> Callable[[Any], torch.Tensor]:
    """The deterministic preprocessing of one raw input, as the run's validation saw it.

    Images: a PIL image, or an (H,W)/(C,H,W) uint8 (0-255) or float ([0,1]) array/tensor;
    converted to the run's channel count, resized to its input size, normalized.
    Tabular: a feature vector, normalized with the run's feature statistics.
    """
    mean, std = info.mean, info.std
    if not info.is_image:

        def tabular(raw: Any) -> torch.Tensor:
            x = torch.as_tensor(raw, dtype=torch.float32).reshape(info.input_shape)
            return normalize_tensor(x, mean, std) if mean is not None else x

        return tabular

    channels, height, width = info.input_shape

    def image(raw: Any) -> torch.Tensor:
        if hasattr(raw, "convert"):  # a PIL image
            import numpy as np

            raw = np.asarray(raw.convert("L" if channels == 1 else "RGB"))
            raw = torch.from_numpy(raw.copy())
            raw = raw.unsqueeze(0) if raw.dim() == 2 else raw.permute(2, 0, 1)
        x = torch.as_tensor(raw)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if x.shape[0] != channels:  # as Pillow converts an image file
            x = _converted(x, channels)
        if tuple(x.shape[1:]) != (height, width):  # torchvision (~1 s) only when it resizes
            from torchvision.transforms.v2 import functional as F

            x = F.resize(x, [height, width], antialias=True)
        return normalize_tensor(x, mean, std) if mean is not None else x

    return image
