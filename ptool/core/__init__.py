"""The ptool engine: plain Python and PyTorch, no Typer, no rich.

The public entry points are re-exported lazily so that `import ptool.core` stays cheap.
"""

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A package's `__getattr__` importing each exported name's module (and torch) only when
    the name is asked for, so that importing the package stays cheap."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__


_EXPORTS = {
    "TrainConfig": "ptool.core.config",
    "resolve_config": "ptool.core.config",
    "build_data": "ptool.core.data",
    "build_model": "ptool.core.models",
    "fit": "ptool.core.engine",
    "RunSummary": "ptool.core.engine",
    "load_checkpoint": "ptool.core.checkpoint",
    "model_from_checkpoint": "ptool.core.restore",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
