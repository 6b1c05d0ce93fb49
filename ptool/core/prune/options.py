"""What `ptool prune` takes, and the checks that need no model (torch-free: bad flags fail fast).

Amounts follow PyTorch (`torch.nn.utils.prune`): a float is a fraction of the units still
unpruned, an int a count of them; ptool refuses a fraction of 1 or more (nothing would be left).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptool.core.errors import UsageError

METHODS = (
    "l1-unstructured",
    "random-unstructured",
    "ln-structured",
    "random-structured",
    "bn-scale",
    "global-l1",
)
STRUCTURED = ("ln-structured", "random-structured", "bn-scale")
KIND_NAMES = ("conv", "linear")
# fine-tuning flags that also matter without --finetune-epochs: the seed of the random methods
# and --recalibrate-bn, and the batch size of the latency measurement
WITHOUT_FINETUNE = {"seed", "batch_size"}


@dataclass
class PruneOptions:
    """Everything `ptool prune` takes besides the checkpoint (see the README)."""

    method: str = "l1-unstructured"
    amount: int | float = 0.3
    n: float = 2.0
    dim: int = 0
    modules: list[str] = field(default_factory=lambda: list(KIND_NAMES))
    only: str | None = None
    exclude: str | None = None
    include_head: bool = False
    make_permanent: bool = True
    compact: bool = False
    steps: int = 1
    finetune_epochs: int = 0
    recalibrate_bn: int = 0
    train_overrides: dict[str, Any] = field(default_factory=dict)
    output: str | None = None
    evaluate: bool = True
    download: bool = False  # torchvision may fetch the run's dataset
    bench_runs: int = 20


def parse_amount(text: str) -> int | float:
    """'0.3' -> 0.3 (a fraction), '12' -> 12 (a count), as PyTorch's `amount` reads them."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise UsageError(
            f"--amount {text}: give a fraction such as 0.3 or a count such as 12"
        ) from None


def check_amount(amount: int | float) -> None:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise UsageError(f"--amount {amount!r}: give a fraction such as 0.3 or a count such as 12")
    if isinstance(amount, float) and not 0.0 <= amount < 1.0:
        raise UsageError(
            f"--amount {amount}: a fraction must be in [0, 1)",
            hint="e.g. --amount 0.3 prunes 30%; a whole number (--amount 12) is a count",
        )
    if isinstance(amount, int) and amount < 0:
        raise UsageError(f"--amount {amount}: a count cannot be negative")


def refuse_unused_flags(method: str, *, n: float | None, dim: int | None) -> None:
    """--n and --dim given (None: not given) to a method that ignores them."""
    if dim is not None and method not in STRUCTURED:
        raise UsageError(
            f"--dim picks the channels of structured methods; {method} prunes single weights",
            hint=f"drop --dim, or use a structured method ({', '.join(STRUCTURED)})",
        )
    if n is not None and method != "ln-structured":
        raise UsageError(
            f"--n is the norm order of ln-structured; {method} has none",
            hint="drop --n, or use --method ln-structured",
        )


def draws_at_random(options: PruneOptions) -> bool:
    """Whether the run uses its seed: a random method, --recalibrate-bn's batches, fine-tuning."""
    return bool(
        options.method.startswith("random") or options.finetune_epochs or options.recalibrate_bn
    )


def check_options(options: PruneOptions) -> None:
    """Refuse bad values and combinations before anything is loaded."""
    if options.method not in METHODS:
        raise UsageError(f"--method {options.method}: valid: {', '.join(METHODS)}")
    check_amount(options.amount)
    unknown = [k for k in options.modules if k not in KIND_NAMES]
    if unknown or not options.modules:
        raise UsageError(
            f"--modules {','.join(options.modules)}: valid kinds: {', '.join(KIND_NAMES)}"
        )
    if math.isnan(options.n):  # every channel's norm would be NaN, all ranked equal
        raise UsageError("--n nan is no norm order", hint="e.g. --n 1, --n 2 (default) or --n inf")
    structured = options.method in STRUCTURED
    if options.compact and not structured:
        raise UsageError(
            f"--compact removes whole channels; {options.method} leaves scattered zeros",
            hint=f"use a structured method ({', '.join(STRUCTURED)}) with --compact",
        )
    if options.method == "bn-scale" and options.dim != 0:
        raise UsageError(
            f"--method bn-scale ranks output channels (--dim 0), not --dim {options.dim}",
            hint="drop --dim, or use --method ln-structured along that dimension",
        )
    if options.compact and options.dim != 0:
        raise UsageError(
            f"--compact removes output channels/neurons (--dim 0), not --dim {options.dim}",
            hint="drop --dim, or drop --compact to keep masks along that dimension",
        )
    if options.compact and not options.make_permanent:
        raise UsageError(
            "--keep-masks has nothing to keep with --compact (the pruned channels are removed)",
            hint="drop --keep-masks",
        )
    for name, low in (
        ("steps", 1),
        ("finetune_epochs", 0),
        ("recalibrate_bn", 0),
        ("bench_runs", 1),
    ):
        if getattr(options, name) < low:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} must be at least {low}, got {getattr(options, name)}")
    if "seed" in options.train_overrides and not draws_at_random(options):
        raise UsageError(
            f"--seed seeds the random methods, --recalibrate-bn's batches and fine-tuning; "
            f"{options.method} without those draws nothing",
            hint="drop --seed, or add --finetune-epochs N or --recalibrate-bn N",
        )
    unused = sorted(set(options.train_overrides) - WITHOUT_FINETUNE)
    if unused and not options.finetune_epochs:
        flag = "--" + unused[0].replace("_", "-")
        raise UsageError(
            f"{flag} sets fine-tuning, which runs only with --finetune-epochs N",
            hint="add --finetune-epochs 3 (for example), or drop the fine-tuning flags",
        )


def default_output(ckpt_path: Path) -> Path:
    """`<stem>.pruned.pt` next to the input."""
    return ckpt_path.with_name(f"{ckpt_path.stem}.pruned.pt")
