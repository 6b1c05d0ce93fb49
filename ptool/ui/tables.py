"""Number formats shared by tables: byte sizes, element counts, metrics and ratios."""

from __future__ import annotations


def human_bytes(n: int | float | None) -> str:
    """1536 -> '1.5 KiB' (powers of 1024, as file managers and torch.cuda.memory_summary)."""
    if n is None:
        return "-"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    for unit in units:
        if abs(n) < 1024 or unit == units[-1]:
            break
        n /= 1024
    return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"


def human_count(n: int | None) -> str:
    """11689512 -> '11.7M' (parameter counts as model cards write them)."""
    if n is None:
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


# Metrics the human tables show; --json always carries all of them.
SHOWN_METRICS = ("loss", "accuracy", "mae", "rmse", "r2")


def _is_fraction(name: str) -> bool:
    return name.rsplit("/", 1)[-1] == "accuracy"


def format_metric(name: str, value: float | None) -> str:
    """Accuracy as a percentage, everything else with four significant digits."""
    if value is None:
        return "-"
    return f"{value:.2%}" if _is_fraction(name) else f"{value:.4g}"


def format_change(name: str, delta: float) -> str:
    """A metric's change: accuracy in percentage points, the rest in its own unit."""
    return f"{delta * 100:+.2f} pts" if _is_fraction(name) else f"{delta:+.4g}"


def format_ratio(ratio: float, better: str, worse: str) -> str:
    """old/new as the reader says it, never below 1x: '2.09x faster', '1.75x slower'."""
    return f"{ratio:.2f}x {better}" if ratio >= 1 else f"{1 / ratio:.2f}x {worse}"


def format_speedup(ratio: float) -> str:
    """old/new latency: '2.09x faster' or '1.75x slower'."""
    return format_ratio(ratio, "faster", "slower")


def timing_spread(spread: float) -> str:
    """The latency footnote's word on noise: the timings' interquartile range over the median,
    and a warning where it is large enough to move a ratio."""
    if spread < 0.05:
        return ""
    text = f", timings spread {spread:.0%} (interquartile range)"
    if spread >= 0.25:
        text += ": a busy machine, the ratio may be off; rerun with more --bench-runs"
    return text


def format_shrink(ratio: float) -> str:
    """old/new size: '3.91x smaller' or, when the new file grew, '1.01x larger'."""
    return format_ratio(ratio, "smaller", "larger")
