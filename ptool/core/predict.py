"""Predictions for raw inputs with the run's own validation preprocessing.

Readers turn each input (image file or folder, CSV row, row of a `.pt` tensor, JSON line)
into `Sample(name, tensor)` or `Sample(name, error=...)`: a bad input fails alone, the
others still get predictions. Tensors are raw values as the run's data held them before
normalization (images as floats in [0, 1], or uint8 0-255 pixels like an image file's);
`data.val_transform(info)` then applies the run's normalization (and, for image files, its
channel conversion and resize).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import torch
from torch import nn

TENSOR_EXTENSIONS = (".pt", ".pth", ".bin")


def is_tensor_file(path: Path) -> bool:
    """A torch.save file, by suffix or by content (a zip archive, or a pickle as legacy
    torch.save writes), so `x.pth` or `batch.tensor` are not opened as images."""
    from ptool.core.inspect.reader import sniff

    if path.suffix.lower() in TENSOR_EXTENSIONS:
        return True
    try:
        return sniff(path) in ("zip", "pickle")
    except OSError:
        return False  # the image reader reports it


@dataclass
class Sample:
    name: str
    tensor: torch.Tensor | None = None
    error: str | None = None


def _expects(info: Any) -> str:
    shape = info.input_shape
    if info.is_image:
        c, h, w = shape
        kind = "grayscale" if c == 1 else f"{c} channels"
        if info.image_size is not None:
            return f"{c}xHxW images ({kind}, any size: the run resizes to {h}x{w})"
        return f"{c}x{h}x{w} images ({kind})"
    return f"{shape[0]} features"


def _expects_rows(info: Any) -> str:
    shape = list(info.input_shape)
    grayscale = info.is_image and shape[0] == 1
    shapes = [shape, shape[1:]] if grayscale else [shape]
    rows = " or ".join(str(["N", *s]).replace("'", "") for s in shapes)
    if info.is_image and info.image_size is not None:  # the run resizes: any H, W
        rows = f"[N, {shape[0]}, H, W]" + (" or [N, H, W]" if grayscale else "")
    return f"expected {rows} for the model's {_expects(info)}"


class Reader:
    """Turns inputs into preprocessed samples for one checkpoint's model."""

    def __init__(
        self, info: Any, stdin: TextIO | None = None, note: Callable[[str], None] = lambda _: None
    ):
        from ptool.core.data import val_transform

        self.info = info
        self.transform = val_transform(info)
        self.stdin = stdin
        self.note = note  # what a user should know that is no error (a CSV's unused columns)

    def read(self, inputs: Iterable[str]) -> Iterator[Sample]:
        """Every input's sample; one with NaN or infinite values fails alone (the model would
        answer it with NaN scores, which argmax reads as class 0)."""
        for sample in self._read(inputs):
            if sample.tensor is not None and not bool(torch.isfinite(sample.tensor).all()):
                sample = Sample(sample.name, error="the input holds NaN or infinite values")
            yield sample

    def _read(self, inputs: Iterable[str]) -> Iterator[Sample]:
        for spec in inputs:
            if spec == "-":
                yield from self.json_lines()
                continue
            path = Path(spec)
            if path.is_dir():  # every image below it, as imagefolder: training reads them
                from ptool.core.data.image_folder import image_files

                files = [Path(file) for file in image_files(path)]
                if not files:
                    yield Sample(spec, error=f"no image files in folder {spec}")
                for file in files:
                    yield self.image(file)
            elif not path.is_file():
                yield Sample(spec, error="no such file")
            elif path.suffix.lower() == ".csv":
                yield from self.csv_rows(path)
            elif is_tensor_file(path):
                yield from self.tensor_file(path)
            else:
                yield self.image(path)

    # -- tensors from any reader: exact shape, then the run's normalization ---------------

    def is_sample(self, shape: Iterable[int], *, row: bool = False) -> bool:
        """Whether a tensor of `shape` is one input (an (H, W) one for a grayscale model); a
        run that resized its images (`--image-size`) takes (C, h, w) of any size, as eval and
        image files do, and a grayscale one the (h, w) rows of an [N, H, W] file, as its
        training data could be (a whole 2-D tensor, [5, 64] flattened digits say, is not an
        image of any size)."""
        expected, shape = list(self.info.input_shape), list(shape)
        grayscale = self.info.is_image and expected[0] == 1
        if not self.resizes:
            return shape == expected or (grayscale and shape == expected[1:])
        channels_first = len(shape) == 3 and shape[0] == expected[0]
        plain_row = grayscale and row and len(shape) == 2
        return (channels_first or plain_row) and min(shape) > 0

    @property
    def resizes(self) -> bool:
        return self.info.is_image and self.info.image_size is not None

    def from_values(self, name: str, values: Any, *, row: bool = False) -> Sample:
        """uint8 image data stays uint8: val_transform scales it by 1/255, as for image files;
        `row`: a row of a tensor file (`is_sample`)."""
        try:
            x = torch.as_tensor(values)
            if x.is_complex():  # .to(float32) would drop the imaginary parts, with a warning
                return Sample(name, error=f"{x.dtype} values; the model takes real numbers")
            if not (self.info.is_image and x.dtype == torch.uint8):
                x = x.to(torch.float32)
        except (TypeError, ValueError, RuntimeError) as exc:
            why = "it holds text" if "invalid data type 'str'" in str(exc) else str(exc)
            return Sample(name, error=f"not a numeric array ({why})")
        if not self.is_sample(x.shape, row=row):
            return Sample(
                name, error=f"shape {list(x.shape)}; the model expects {_expects(self.info)}"
            )
        shaped = x if self.resizes else x.reshape(self.info.input_shape)  # resized as it is
        return Sample(name, self.transform(shaped))

    def json_lines(self) -> Iterator[Sample]:
        import sys

        stream = self.stdin if self.stdin is not None else sys.stdin
        for number, line in enumerate(stream, start=1):
            line = line.removeprefix("\ufeff")  # a byte-order mark opening the stream
            if not line.strip():
                continue
            name = f"stdin:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Sample(name, error=f"not JSON ({exc.msg})")
                continue
            if isinstance(record, dict):
                name = str(record.get("id", name))
                if "input" not in record:
                    yield Sample(name, error='a JSON object needs an "input" key')
                    continue
                record = record["input"]
            yield self.from_values(name, record)

    def tensor_file(self, path: Path) -> Iterator[Sample]:
        from ptool.core.checkpoint import load
        from ptool.core.data.files import X_KEYS, dense
        from ptool.core.errors import PtoolError

        try:
            obj = load(path)
        except PtoolError as exc:  # "PATH is not a PyTorch checkpoint (...)": named once
            yield Sample(str(path), error=str(exc).removeprefix(f"{path} is "))
            return
        if isinstance(obj, dict):
            obj = next((obj[k] for k in X_KEYS if k in obj), None)
        obj = dense(obj)
        if not isinstance(obj, torch.Tensor) or obj.dim() < 1:
            keys = "/".join(X_KEYS)
            yield Sample(str(path), error=f"expected a tensor [N, ...] or a dict with {keys}")
            return
        if not self.is_sample(obj.shape[1:], row=True):
            if self.is_sample(obj.shape):  # one sample, saved without its batch dim
                yield self.from_values(str(path), obj)
            else:  # one line for the file, not one per row
                yield Sample(
                    str(path), error=f"shape {list(obj.shape)}; {_expects_rows(self.info)}"
                )
            return
        if len(obj) == 0:  # among other inputs it would pass without a word
            yield Sample(str(path), error=f"no inputs in it (shape {list(obj.shape)})")
        for i, values in enumerate(obj):
            yield self.from_values(f"{path}[{i}]", values, row=True)

    def csv_rows(self, path: Path) -> Iterator[Sample]:
        if self.info.is_image:
            yield Sample(
                str(path), error=f"a CSV holds features; the model expects {_expects(self.info)}"
            )
            return
        from ptool.core.data.files import (
            as_number,
            is_data_row,
            read_csv,
            unnamed_or_repeated_column,
        )

        try:
            numbered = read_csv(path)
        except ValueError as exc:
            yield Sample(str(path), error=str(exc))
            return
        if not numbered:
            yield Sample(str(path), error="empty CSV")
            return
        rows = [row for _, row in numbered]
        header = [cell.strip() for cell in rows[0]]
        expected = self.info.feature_names
        if expected is not None:
            missing = [name for name in expected if name not in header]
            if missing and is_data_row(header, rows[1:]):
                yield Sample(str(path), error="no header row (line 1 holds data, not column names)")
                return
            if missing:
                one = header[0] if len(header) == 1 else ""
                found = (  # `a;b;c`: another separator
                    f" (its header is one column, {one!r}: commas separate them)"
                    if any(mark in one for mark in ";\t|")
                    else ""
                )
                yield Sample(
                    str(path),
                    error=f"missing columns {', '.join(missing)}{found}; "
                    f"the model expects columns {', '.join(expected)}",
                )
                return
            if problem := unnamed_or_repeated_column(header):
                yield Sample(str(path), error=f"{problem}; columns are matched by name")
                return
            columns = [header.index(name) for name in expected]
            if unused := [name for name in header if name not in expected]:
                self.note(f"{path}: ignoring columns the model does not use: {', '.join(unused)}")
            body = numbered[1:]
        else:  # no saved names: every column is a feature, the header row optional
            columns = list(range(len(header)))
            # a header names every column; a first row with a gap (NA) among numbers is data
            if any(as_number(cell) is not None for cell in header):
                header = [str(c + 1) for c in columns]  # named by position in messages
                body = numbered
            else:
                body = numbered[1:]
            if len(header) != self.info.input_shape[0]:  # one line for the file, not per row
                yield Sample(
                    str(path),
                    error=f"{len(header)} columns; the model expects {_expects(self.info)} "
                    "(its run saved no column names: every column is a feature)",
                )
                return
        if not body:
            yield Sample(str(path), error="no data rows after the header")
            return
        for line, row in body:
            name = f"{path}:{line}"
            if len(row) != len(header):
                yield Sample(name, error=f"{len(row)} fields, header {len(header)}")
                continue
            cells = [row[c] for c in columns]
            values = [as_number(cell) for cell in cells]
            bad = next((c for c, v in zip(columns, values, strict=True) if v is None), None)
            if bad is not None:
                yield Sample(name, error=f"column {header[bad]!r} is not a number ({row[bad]!r})")
                continue
            yield self.from_values(name, values)

    def image(self, path: Path) -> Sample:
        from ptool.core.data.image_folder import UnreadableImage, load_image

        name = str(path)
        if not self.info.is_image:
            return Sample(  # by suffix: a CSV named .txt is not sniffed
                name,
                error=f"not a .csv or torch.save file; the model expects {_expects(self.info)} "
                "(a .csv, a .pt or JSON lines on stdin)",
            )
        channels, height, width = self.info.input_shape
        try:  # as training's loader reads it
            image = load_image(name, "L" if channels == 1 else "RGB")
        except UnreadableImage as exc:
            return Sample(name, error=str(exc).removeprefix(f"{name}: "))
        if self.info.image_size is None and image.size != (width, height):
            w, h = image.size
            return Sample(
                name,
                error=f"{w}x{h} pixels; the model expects {_expects(self.info)} "
                "(the run did not resize its images)",
            )
        return Sample(name, self.transform(image))


def _batches(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    ready = 0
    for sample in samples:
        batch.append(sample)
        ready += sample.tensor is not None
        if ready == size:
            yield batch
            batch, ready = [], 0
    if batch:
        yield batch


@torch.no_grad()
def predict(
    model: nn.Module,
    samples: Iterable[Sample],
    info: Any,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    top_k: int = 5,
    loss: str = "auto",
    precision: str = "fp32",
) -> Iterator[dict[str, Any]]:
    """One record per sample, in input order: a prediction, or {"input", "error"}, the model
    run under autocast to `precision` as eval runs it. `loss` bce-with-logits: the outputs are
    logits, so values and per-class probabilities are their sigmoid (softmax otherwise)."""
    from ptool.core.runtime import autocast

    sigmoid = loss == "bce-with-logits"
    device = torch.device(device)
    model.eval()
    names = info.class_names
    for batch in _batches(samples, batch_size):
        ready = [s for s in batch if s.tensor is not None]
        outputs = iter([])
        if ready:
            x = torch.stack([s.tensor for s in ready]).to(device)
            with autocast(device, precision):
                outputs = iter(model(x).float().cpu())
        for sample in batch:
            if sample.tensor is None:
                yield {"input": sample.name, "error": sample.error}
                continue
            out = next(outputs)
            if not bool(torch.isfinite(out).all()):
                yield {"input": sample.name, "error": "the model's output is NaN or infinite"}
                continue
            if info.task != "classification":
                values = (out.sigmoid() if sigmoid else out).tolist()
                yield {
                    "input": sample.name,
                    "prediction": values[0] if len(values) == 1 else values,
                }
                continue
            # ranked by the raw scores, as eval's metrics are (sigmoids of large logits tie at
            # 1.0), and equal scores by class index, as their argmax is (int8 outputs tie often)
            ranked = out.sort(descending=True, stable=True).indices[:top_k]
            index = int(ranked[0])
            record: dict[str, Any] = {"input": sample.name, "prediction": index}
            if names:
                record["label"] = names[index]
            probs = out.sigmoid() if sigmoid else out.softmax(dim=0)
            record["probabilities"] = {
                (names[i] if names else str(i)): probs[i].item() for i in ranked.tolist()
            }
            yield record


class Predictor(NamedTuple):
    model: nn.Module  # in eval mode, on `device`
    info: Any  # the run's DataInfo
    device: torch.device
    loss: str  # the run's resolved loss: bce-with-logits outputs are logits of sigmoids
    precision: str  # autocast's, as eval's (`restore.inference_precision`)


def load_predictor(path: str | Path, device: str = "auto", *, ema: bool = False) -> Predictor:
    """A checkpoint's model (its EMA weights with `ema`) and what reading its outputs needs."""
    from ptool.core.checkpoint import load_checkpoint
    from ptool.core.evaluate import device_for
    from ptool.core.notices import quiet_upstream_notices
    from ptool.core.optim import resolve_loss_name
    from ptool.core.restore import config_and_info, inference_precision, model_from_checkpoint

    with quiet_upstream_notices():
        ckpt = load_checkpoint(path)
        config, info = config_and_info(ckpt, path)
        run_device = device_for(device, bool(ckpt.get("quantization")))
        model = model_from_checkpoint(ckpt, ema=ema).to(run_device).eval()
    loss = resolve_loss_name(config, info)
    return Predictor(model, info, run_device, loss, inference_precision(ckpt, config))
