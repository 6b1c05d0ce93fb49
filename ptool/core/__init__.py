"""The ptool engine: plain Python and PyTorch, no Typer, no rich.

The public entry points are re-exported lazily so that `import ptool.core` stays cheap.
"""

from typing import Any

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


def __getattr__(name: str) -> Any:
    """`from ptool.core import fit` imports the engine (and torch) only when asked for."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ptool.core' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
