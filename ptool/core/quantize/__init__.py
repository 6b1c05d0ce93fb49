"""int8 quantization of trained checkpoints (`ptool quantize`).

`ao` is the one module that touches torch.ao.quantization, so the backend can move (to
torchao) without touching the command; `run` is the job: rebuild, quantize, report, save.
"""

from __future__ import annotations

from ptool.core.quantize.ao import freeze_observers, prepare_for_load
from ptool.core.quantize.run import MODES, QuantizeOptions, quantize_checkpoint

__all__ = [
    "MODES",
    "QuantizeOptions",
    "freeze_observers",
    "prepare_for_load",
    "quantize_checkpoint",
]
