"""int8 quantization of trained checkpoints (`ptool quantize`).

`options` holds what the command takes (torch-free, so bad flags fail fast); `ao` is the one
module that touches torch.ao.quantization, so the backend can move (to torchao) without
touching the command; `run` is the job: rebuild, quantize, report, save. Names load lazily.
"""

from __future__ import annotations

from ptool.core import lazy_exports

_EXPORTS = {
    "MODES": "ptool.core.quantize.options",
    "QuantizeOptions": "ptool.core.quantize.options",
    "check_options": "ptool.core.quantize.options",
    "freeze_observers": "ptool.core.quantize.ao",
    "prepare_for_load": "ptool.core.quantize.ao",
    "quantize_checkpoint": "ptool.core.quantize.run",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
