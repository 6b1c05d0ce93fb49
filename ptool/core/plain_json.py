"""JSON as ptool writes it (`--json`, summary.json): strict, with non-finite floats as null
(a diverged run's loss), so every JSON reader takes it."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any


def plain(value: Any) -> Any:
    """Plain JSON for dataclasses, paths, tuples and non-finite floats (as null)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return plain(value.item())
    return value


def dumps(data: Any, *, indent: int | None = 2) -> str:
    return json.dumps(plain(data), indent=indent, allow_nan=False)
