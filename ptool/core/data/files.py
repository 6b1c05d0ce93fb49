"""In-memory sources read from the user's files: CSV tables and saved tensors."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ptool.core.data.common import (
    LabelsBeyondClasses,
    check_task,
    in_memory_bundle,
    missing_path_hint,
)
from ptool.core.data.info import DataBundle
from ptool.core.errors import PtoolError, UsageError, count

# A numeric target with at most this many distinct integer values is read as class labels.
MAX_AUTO_CLASSES = 50


def _existing_file(kind: str, path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{kind}: {p} is a directory, not a file")
    if not p.is_file():
        raise UsageError(f"{kind}: no such file: {p}", hint=missing_path_hint(p))
    return p


def read_csv(path: Path) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a CSV file read as UTF-8 (Excel's byte-order mark dropped), each
    with the line of the file it starts on (for messages); a ValueError says why a file is not
    that."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader, rows, line = csv.reader(f), [], 1
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append((line, row))
                line = reader.line_num + 1  # a quoted field may span lines
            return rows
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start : exc.start + 1].hex()
        raise ValueError(f"not UTF-8 text (byte 0x{byte}); save it as UTF-8") from None
    except csv.Error as exc:  # e.g. a field over csv.field_size_limit()
        raise ValueError(f"not readable as CSV ({exc})") from None


def as_number(text: str) -> float | None:
    """A CSV cell as a float, None when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return None


def _labels(values: list[str], numbers: list[float | None]) -> tuple[torch.Tensor, list[str]]:
    """Class indices and names; numeric labels sort numerically, others alphabetically."""
    if all(n is not None for n in numbers):
        keys = sorted(set(numbers))
        names = [str(int(k)) if float(k).is_integer() else str(k) for k in keys]
        index = {k: i for i, k in enumerate(keys)}
        return torch.tensor([index[n] for n in numbers]), names
    names = sorted(set(values))
    index = {k: i for i, k in enumerate(names)}
    return torch.tensor([index[v] for v in values]), names


def is_data_row(first: list[str], rest: list[list[str]]) -> bool:
    """Whether a would-be header is a data row: each cell a number, or a label that its column
    holds again in the next 1,000 rows (a header of numbers and a name, as pandas writes, is a
    header)."""
    return all(
        as_number(cell) is not None
        or any(col < len(row) and row[col].strip() == cell for row in rest[:1000])
        for col, cell in enumerate(first)
    )


def unnamed_or_repeated_column(header: list[str]) -> str | None:
    """What makes a header unusable for matching columns by name (train, eval and predict
    match them so), or None."""
    for col, name in enumerate(header):
        if not name:
            return f"column {col + 1} has no name (an index column written by pandas?)"
        if name in header[:col]:
            return (
                f"column {name!r} is named twice (columns {header.index(name) + 1} and {col + 1})"
            )
    return None


def csv_source(config: Any, path: str, columns: list[str] | None = None) -> DataBundle:
    """A CSV with a header row: numeric feature columns and one target column (--target).
    With `columns` (a model's, for eval), only those are read: others, text too, are left."""
    p = _existing_file("csv", path)
    try:
        numbered = read_csv(p)
    except ValueError as exc:
        raise UsageError(f"csv: {p}: {exc}") from None
    lines, rows = [n for n, _ in numbered], [row for _, row in numbered]
    header = _csv_header(p, rows, 1 if config.val_split == 0 else 2)  # a split needs two
    target = config.target if config.target is not None else header[-1]
    if target not in header:
        raise UsageError(
            f"csv: {p} has no column {target!r}; columns: {', '.join(header)}",
            hint="choose the target with --target COLUMN",
        )
    if len(header) < 2:
        raise UsageError(f"csv: {p} has only the target column; no features")
    t = header.index(target)
    read = [c for c, name in enumerate(header) if c != t and (columns is None or name in columns)]
    features, values = _csv_values(p, header, read, t, zip(lines[1:], rows[1:], strict=True))
    task, y, names = _csv_targets(config, p, target, values, lines[1:])
    bundle = in_memory_bundle(
        config,
        source=f"csv:{path}",
        data=(torch.tensor(features, dtype=torch.float32), y),
        task=task,
        num_classes=None if names is None else _num_classes(config, len(names), f"csv: {p}"),
        class_names=names,
        row_name=lambda i: f"line {lines[i + 1]}",  # as the errors number them
    )
    bundle.info.feature_names = [header[col] for col in read]
    bundle.info.target_name = target
    return bundle


def _csv_header(p: Path, rows: list[list[str]], min_rows: int) -> list[str]:
    """The column names of the first row, refused where it is not a header of named columns or
    fewer than `min_rows` data rows follow it."""
    if len(rows) < 1 + min_rows:
        needed = count(min_rows, "data row")
        split = "a train/validation split needs two; eval --split all reads a held-out file whole"
        raise UsageError(
            f"csv: {p} needs a header row and at least {needed}",
            hint=split if min_rows > 1 and len(rows) == 2 else None,
        )
    header = [name.strip() for name in rows[0]]
    if len(header) == 1 and any(sep in header[0] for sep in ";\t"):
        raise UsageError(
            f"csv: {p} has a single column, {header[0]!r}",
            hint="ptool reads comma-separated files: save it with ',' between the fields",
        )
    if is_data_row(header, rows[1:]):
        raise UsageError(
            f"csv: {p} has no header row (line 1 holds data, not column names)",
            hint="add a first line naming the columns, the target's too",
        )
    if problem := unnamed_or_repeated_column(header):
        raise UsageError(
            f"csv: {p}: {problem}",
            hint="give every column its own name: columns are matched by name",
        )
    return header


def _csv_values(
    p: Path, header: list[str], read: list[int], t: int, numbered: Iterable[tuple[int, list[str]]]
) -> tuple[list[list[float]], list[str]]:
    """Each row's numbers of the `read` columns and its target cell (text), by line."""
    features, values = [], []
    for line, row in numbered:
        if len(row) != len(header):
            raise UsageError(f"csv: {p} line {line} has {len(row)} fields, header {len(header)}")
        if not row[t].strip():
            raise UsageError(
                f"csv: {p} line {line}: the target {header[t]!r} is empty",
                hint="fill it in, or drop the row",
            )
        values.append(row[t].strip())
        numbers = []
        for col in read:
            cell = row[col]
            number = as_number(cell)
            if number is None:
                raise UsageError(
                    f"csv: {p} line {line}: column {header[col]!r} is not a number ({cell!r})",
                    hint="feature columns must be numeric; encode categories first",
                )
            if _beyond_float32(number):
                raise _beyond_float32_error(p, line, header[col], cell)
            numbers.append(number)
        features.append(numbers)
    return features, values


def _csv_targets(
    config: Any, p: Path, target: str, values: list[str], lines: list[int]
) -> tuple[str, torch.Tensor, list[str] | None]:
    """(task, targets, class names or None): text or at most MAX_AUTO_CLASSES whole numbers
    are classes, other numbers regression, unless --task says."""
    numbers = [as_number(v) for v in values]
    _refuse_missing_numbers(p, target, values, numbers, lines)
    numeric = all(n is not None for n in numbers)
    if config.task == "auto":
        few_integers = (
            numeric
            and all(float(n).is_integer() for n in numbers)
            and len(set(numbers)) <= MAX_AUTO_CLASSES
        )
        task = "classification" if not numeric or few_integers else "regression"
    else:
        task = check_task(config, "csv", ("classification", "regression"))
    if task == "regression":
        if not numeric:
            gaps = zip(lines, values, numbers, strict=True)
            line, bad = next((ln, v) for ln, v, n in gaps if n is None)
            raise UsageError(
                f"csv: {p} line {line}: --task regression needs a numeric target; "
                f"{target!r} is {bad!r}"
            )
        for line, n, value in zip(lines, numbers, values, strict=True):
            if _beyond_float32(n):
                raise _beyond_float32_error(p, line, target, value)
        return task, torch.tensor(numbers, dtype=torch.float32).unsqueeze(1), None
    for line, n, value in zip(lines, numbers, values, strict=True):
        if n is not None and not math.isfinite(n):  # each NaN would be a class of its own
            raise UsageError(
                f"csv: {p} line {line}: the target {target!r} is {value!r}, not a class label",
                hint="fill it in, or drop the row",
            )
    y, names = _labels(values, numbers)
    return task, y, names


# pandas' default missing-value markers that float() does not read (it reads nan, NaN, -nan)
MISSING_MARKERS = frozenset(
    ("#n/a", "#n/a n/a", "#na", "-1.#ind", "-1.#qnan", "1.#ind", "1.#qnan")
    + ("<na>", "n/a", "na", "null", "none")
)


def _refuse_missing_numbers(
    p: Path, target: str, values: list[str], numbers: list[float | None], lines: list[int]
) -> None:
    """A column of numbers with gaps marked NA (null, N/A, ...) would be read as text labels,
    every distinct number a class of its own: the first gap is refused by its line."""
    gaps = [(line, v) for line, v, n in zip(lines, values, numbers, strict=True) if n is None]
    if gaps and len(gaps) < len(values) and all(v.lower() in MISSING_MARKERS for _, v in gaps):
        line, value = gaps[0]
        raise UsageError(
            f"csv: {p} line {line}: the target {target!r} is missing ({value!r})",
            hint="fill it in, or drop the row",
        )


FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max


def _beyond_float32(number: float | None) -> bool:
    """A finite value that float32 would turn into infinity (1e39)."""
    return number is not None and math.isfinite(number) and abs(number) > FLOAT32_MAX


def _beyond_float32_error(p: Path, line: int, column: str, cell: str) -> UsageError:
    return UsageError(
        f"csv: {p} line {line}: column {column!r} is {cell.strip()}, beyond float32's range "
        f"(+-{FLOAT32_MAX:.4g})",
        hint="rescale the column",
    )


def _num_classes(config: Any, found: int, source: str) -> int:
    """Classes seen in the data, or more with --num-classes (labels may be missing)."""
    if found < 2 and config.num_classes is None:
        raise UsageError(f"{source}: the target has a single class; nothing to classify")
    if config.num_classes is None:
        return found
    if config.num_classes < found:
        raise LabelsBeyondClasses(source, found, config.num_classes)
    return config.num_classes


X_KEYS = ("x", "inputs", "data", "features")
Y_KEYS = ("y", "targets", "labels")
LAYOUTS = (
    "a dict {'x': X, 'y': Y} (also inputs/data/features and targets/labels, optional "
    "x_val/y_val) or an (x, y) tuple"
)


def _read_tensors(p: Path) -> tuple[tuple, tuple | None]:
    from ptool.core.checkpoint import load

    try:
        obj = load(p)
    except PtoolError as exc:
        raise UsageError(f"tensors: {exc}", hint=f"save plain tensors instead: {LAYOUTS}") from exc
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return tuple(map(dense, obj)), None
    if isinstance(obj, dict):
        obj = {key: dense(value) for key, value in obj.items()}
        x_key = next((k for k in X_KEYS if k in obj), None)
        y_key = next((k for k in Y_KEYS if k in obj), None)
        if x_key and y_key:
            if ("x_val" in obj) != ("y_val" in obj):
                given, missing = ("x_val", "y_val") if "x_val" in obj else ("y_val", "x_val")
                raise UsageError(
                    f"tensors: {p} holds {given} without {missing}",
                    hint="save both (the validation set), or neither (a seeded split)",
                )
            val = (obj["x_val"], obj["y_val"]) if "x_val" in obj else None
            return (obj[x_key], obj[y_key]), val
        found = ", ".join(map(str, obj)) or "nothing"
        raise UsageError(f"tensors: {p} holds keys {found}; expected {LAYOUTS}")
    raise UsageError(f"tensors: {p} holds a {type(obj).__name__}; expected {LAYOUTS}")


def dense(value: Any) -> Any:
    """A sparse tensor (COO, CSR, ...) as the dense one it stands for; anything else as is."""
    if isinstance(value, torch.Tensor) and value.layout != torch.strided:
        return value.to_dense()
    return value


def _inputs(x: Any, p: Path) -> torch.Tensor:
    """Float inputs; uint8 images are 0-255 pixels, scaled to [0, 1] as torchvision's ToTensor
    and `ptool predict` scale them, so a run and its predictions see the same values."""
    if not isinstance(x, torch.Tensor) or x.dim() not in (1, 2, 3, 4):
        raise UsageError(f"tensors: inputs in {p} must be a tensor [N,F], [N,H,W] or [N,C,H,W]")
    if x.is_complex():  # .float() would drop the imaginary parts, with a warning
        raise UsageError(f"tensors: inputs in {p} are {x.dtype}; ptool trains on real numbers")
    if 0 in x.shape[1:]:
        raise UsageError(f"tensors: inputs in {p} have shape {list(x.shape)}: no features")
    x = x.float() / 255 if x.dtype == torch.uint8 and x.dim() >= 3 else x.float()
    return x.unsqueeze(1) if x.dim() in (1, 3) else x


def _check_class_targets(y: torch.Tensor, p: Path) -> None:
    """Class targets are one index per row: a one-hot [N, K] or a fractional value would be
    mangled by the cast to int64, so refuse them."""
    if y.numel() != len(y):
        raise UsageError(
            f"tensors: {p}: class targets must be a 1-D tensor [N] of class indices, "
            f"not shape {list(y.shape)}",
            hint="one-hot targets? save y.argmax(1); for K outputs to regress: --task regression",
        )
    if y.is_floating_point():
        bad = ~(torch.isfinite(y) & (y == y.round()))
        if bool(bad.any()):
            raise UsageError(
                f"tensors: {p}: --task classification needs whole-number targets (class "
                f"indices), not {y[bad][0].item():g}",
                hint="save the class indices, or drop --task classification for regression",
            )


def tensors_source(config: Any, path: str) -> DataBundle:
    """Tensors saved with torch.save; integer targets are classes, float targets regression."""
    p = _existing_file("tensors", path)
    (x, y), val = _read_tensors(p)
    pairs = [(x, y)] + ([val] if val is not None else [])
    pairs = [(_inputs(a, p), b) for a, b in pairs]
    for a, b in pairs:
        if not isinstance(b, torch.Tensor) or b.dim() == 0 or len(a) != len(b):
            raise UsageError(f"tensors: {p}: targets must be a tensor with one row per input")
        if not len(a):
            raise UsageError(f"tensors: {p}: no samples (0 rows)")
    if val is not None and pairs[1][0].shape[1:] != pairs[0][0].shape[1:]:
        raise UsageError(
            f"tensors: {p}: x_val rows have shape {list(pairs[1][0].shape[1:])}, the training "
            f"rows {list(pairs[0][0].shape[1:])}"
        )
    integer = not pairs[0][1].is_floating_point()
    task = check_task(
        config,
        "tensors",
        ("classification", "regression") if integer else ("regression", "classification"),
    )
    if task == "classification":
        for _, b in pairs:
            _check_class_targets(b, p)
        pairs = [(a, b.long().reshape(len(b))) for a, b in pairs]
        labels = torch.cat([b for _, b in pairs])
        if labels.min() < 0:
            raise UsageError(f"tensors: {p}: class labels must be >= 0, not {labels.min().item()}")
        num_classes = _num_classes(config, int(labels.max()) + 1, f"tensors: {p}")
        names = [str(i) for i in range(num_classes)]
    else:
        pairs = [(a, b.float().reshape(len(b), -1)) for a, b in pairs]
        num_classes, names = None, None
    return in_memory_bundle(
        config,
        source=f"tensors:{path}",
        data=pairs[0],
        val=pairs[1] if len(pairs) > 1 else None,
        task=task,
        num_classes=num_classes,
        class_names=names,
    )
