"""`ptool inspect-checkpoint` against `torch.load` on the same big checkpoint, in one run.

Writes ~200 MB and ~2 GB state dicts of float32 tensors to a temporary directory, then times
(wall) and measures the peak RSS of separate processes: `ptool inspect-checkpoint FILE --json`
(metadata; also the reader alone, in process, and `ptool --help` for the CLI's own start-up),
`torch.load(FILE, weights_only=True)` without and with mmap (and `import torch` alone, the
start-up it pays), and
`ptool inspect-checkpoint FILE --stats --json`. Prints absolute figures and ratios; the
metadata view's peak memory must not grow with the file size. Deletes the files after.

    python bench/bench_inspect.py [--gb 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PTOOL = str(Path(sys.executable).with_name("ptool"))
TENSOR_MB = 50

# Written in a child process: a parent holding gigabytes would hand its resident pages to
# every forked child and spoil their peak-RSS figures. This process never imports torch.
WRITE = """
import sys, torch
path, megabytes, tensor_mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = tensor_mb * 1024 * 1024 // 4 // 1024
state = {f"layers.{i}.weight": torch.full((rows, 1024), float(i))
         for i in range(max(1, megabytes // tensor_mb))}
torch.save(state, path)
"""
CORE = """
import sys, time
start = time.perf_counter()
from ptool.core.inspect.report import InspectOptions, inspect
inspect(sys.argv[1], InspectOptions())
print(time.perf_counter() - start)
"""


def write_state_dict(path: Path, megabytes: int) -> None:
    """A state dict of `megabytes` MB in 50 MB float32 tensors named like a layered model."""
    command = [sys.executable, "-c", WRITE, str(path), str(megabytes), str(TENSOR_MB)]
    subprocess.run(command, check=True)


def core_seconds(path: Path) -> float:
    """The reader itself, in process: no interpreter or CLI start-up."""
    command = [sys.executable, "-c", CORE, str(path)]
    return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def measure(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one child process."""
    with tempfile.TemporaryFile() as errors:  # not a pipe: a child filling one blocks wait4
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            raise SystemExit(f"failed: {' '.join(command)}: {errors.read().decode()}")
    return wall, usage.ru_maxrss / 1024  # Linux: KiB


def best_of(command: list[str], runs: int) -> tuple[float, float]:
    results = [measure(command) for _ in range(runs)]
    return min(r[0] for r in results), max(r[1] for r in results)


def torch_load(path: Path, mmap: bool) -> list[str]:
    code = f"import torch; torch.load({str(path)!r}, weights_only=True, mmap={mmap})"
    return [sys.executable, "-c", code]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0, help="size of the big checkpoint")
    parser.add_argument("--runs", type=int, default=3, help="repetitions (best wall, max RSS)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        rows = []
        help_s, help_mb = best_of([PTOOL, "--help"], args.runs)
        torch_s, torch_mb = best_of([sys.executable, "-c", "import torch"], args.runs)
        for megabytes in (200, int(args.gb * 1024)):
            path = Path(tmp) / f"state_{megabytes}mb.pt"
            write_state_dict(path, megabytes)
            size_mb = path.stat().st_size / 2**20
            # warm the page cache the same way for everyone: torch.load reads it all first
            load_s, load_mb = best_of(torch_load(path, False), args.runs)
            mmap_s, mmap_mb = best_of(torch_load(path, True), args.runs)
            meta_s, meta_mb = best_of([PTOOL, "inspect-checkpoint", str(path), "--json"], args.runs)
            core_s = min(core_seconds(path) for _ in range(args.runs))
            stats_s, stats_mb = best_of(
                [PTOOL, "inspect-checkpoint", str(path), "--stats", "--json"], args.runs
            )
            rows.append(
                (
                    size_mb,
                    meta_s,
                    meta_mb,
                    core_s,
                    load_s,
                    load_mb,
                    mmap_s,
                    mmap_mb,
                    stats_s,
                    stats_mb,
                )
            )
            path.unlink()
    print(f"`ptool --help` (CLI start-up alone): {help_s:.3f} s, {help_mb:.0f} MB peak RSS")
    print(f"`import torch` (torch.load's start-up): {torch_s:.3f} s, {torch_mb:.0f} MB peak RSS")
    print(
        f"{'file':>9} | {'inspect (metadata)':>18} | {'reader only':>11} | {'torch.load':>16} | "
        f"{'torch.load mmap':>16} | {'inspect --stats':>16} | metadata vs torch.load"
    )
    for size, meta_s, meta_mb, core_s, load_s, load_mb, mmap_s, mmap_mb, stats_s, stats_mb in rows:
        print(
            f"{size:7.0f}MB | {meta_s:6.3f} s {meta_mb:5.0f} MB | {core_s:9.3f} s"
            f" | {load_s:5.2f} s {load_mb:5.0f} MB | {mmap_s:5.2f} s {mmap_mb:5.0f} MB"
            f" | {stats_s:5.2f} s {stats_mb:5.0f} MB"
            f" | {load_s / meta_s:5.1f}x faster, {load_mb / meta_mb:5.1f}x less memory"
        )
    growth = rows[-1][2] / rows[0][2]
    print(
        f"metadata peak RSS, big file / small file: {growth:.2f}x "
        f"(file {rows[-1][0] / rows[0][0]:.1f}x larger)"
    )


if __name__ == "__main__":
    main()
