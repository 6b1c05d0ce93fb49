"""Pruning of trained checkpoints (`ptool prune`) and the rebuild of pruned models.

`options` holds what the command takes (torch-free, so bad flags fail fast); `masks` picks
layers and applies torch.nn.utils.prune; `compact` removes emptied channels with
Torch-Pruning and rebuilds compacted or masked models from a checkpoint
(`apply_architecture`, `apply_masks`, used by `restore.model_from_checkpoint`); `run` is the
job: rebuild, prune, fine-tune, report, save. Names load lazily: importing `options` stays cheap.
"""

from __future__ import annotations

from ptool.core import lazy_exports

_EXPORTS = {
    "METHODS": "ptool.core.prune.options",
    "PruneOptions": "ptool.core.prune.options",
    "apply_architecture": "ptool.core.prune.compact",
    "apply_masks": "ptool.core.prune.compact",
    "prune_checkpoint": "ptool.core.prune.run",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
