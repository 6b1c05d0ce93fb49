"""What `ptool quantize` takes, and the checks that need no model (torch-free: bad flags fail
before torch and torch.ao are imported)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ptool.core.config import check_interval
from ptool.core.errors import UsageError

OBSERVERS = ("minmax", "histogram", "moving-average")
QAT_OBSERVERS = ("minmax", "moving-average")
DTYPES = ("qint8", "float16")
DYNAMIC_MODULE_NAMES = ("linear", "lstm", "gru")  # the layer types `ao` quantizes dynamically
MODES = ("dynamic", "static", "qat")
DEFAULT_OBSERVER = {"static": "histogram", "qat": "moving-average"}
QAT_DEFAULTS = {"epochs": 3, "lr_factor": 0.1}


@dataclass
class QuantizeOptions:
    """Everything `ptool quantize MODE` takes besides the checkpoint (see the README)."""

    mode: str
    backend: str = "auto"
    observer: str | None = None  # default per mode: histogram (static), moving-average (qat)
    per_channel: bool = True
    modules: list[str] = field(default_factory=lambda: list(DYNAMIC_MODULE_NAMES))
    dtype: str = "qint8"
    calib_batches: int = 32
    calib_data: str | None = None
    output: str | None = None
    torchscript: bool = False
    evaluate: bool = True
    download: bool = False  # torchvision may fetch the run's dataset
    bench_runs: int = 20
    device: str = "cpu"
    freeze_observers_epoch: int | None = None
    freeze_bn_epoch: int | None = None
    train_overrides: dict[str, Any] = field(default_factory=dict)
    resume: str | None = None


def check_options(options: QuantizeOptions) -> None:
    """Refuse bad combinations before anything is loaded."""
    if options.device not in ("cpu", "auto"):
        raise UsageError(
            f"--device {options.device}: int8 quantized kernels (fbgemm/x86/qnnpack) run on the "
            "CPU only",
            hint="drop --device (quantize runs on the CPU)",
        )
    mode = options.mode
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if mode == "dynamic":
        unknown = [m for m in options.modules if m not in DYNAMIC_MODULE_NAMES]
        if unknown or not options.modules:
            raise UsageError(
                f"--modules {','.join(options.modules)}: valid: {', '.join(DYNAMIC_MODULE_NAMES)}"
            )
        if options.dtype not in DTYPES:
            raise UsageError(f"--dtype {options.dtype}: valid: {', '.join(DTYPES)}")
    observer = options.observer or DEFAULT_OBSERVER.get(mode)
    valid = QAT_OBSERVERS if mode == "qat" else OBSERVERS
    if mode != "dynamic" and observer not in valid:
        raise UsageError(
            f"--observer {observer} does not work with {mode}; valid: {', '.join(valid)}"
        )
    # observers frozen before any batch keep empty ranges (inf/-inf); frozen batch-norm
    # statistics from epoch 0 keep the float model's, which is a valid choice
    limits = {"calib_batches": "[1, inf)", "bench_runs": "[1, inf)"}
    limits.update(freeze_observers_epoch="[1, inf)", freeze_bn_epoch="[0, inf)")
    for name, interval in limits.items():
        check_interval(name, getattr(options, name), interval)
    if options.resume and mode != "qat":
        raise UsageError(f"--resume continues a `ptool quantize qat` run, not {mode}")
