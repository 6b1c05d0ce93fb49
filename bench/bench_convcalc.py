"""`ptool convcalc --h 32 --k 3 --s 2` against `python -c "import typer"`, in one run.

All are separate processes (wall time, median of --repeat runs, interleaved so a busy
machine slows all alike). Goal: convcalc within 2.0x of importing Typer, the floor of any
Typer CLI, and so is a padding search for a huge target (a bisection, not one try per pixel).
ptool's modules are byte-compiled first, as an install or any first run leaves them (Typer's
are, in site-packages), even where PYTHONDONTWRITEBYTECODE is set.

    python bench/bench_convcalc.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import subprocess
import sys
import time
from pathlib import Path

PTOOL = str(Path(sys.executable).with_name("ptool"))
GOAL = 2.0
CONVCALC = [PTOOL, "convcalc", "--h", "32", "--k", "3", "--s", "2"]
TYPER = 'python -c "import typer"'
COMMANDS = {
    "ptool convcalc --h 32 --k 3 --s 2": CONVCALC,
    "ptool convcalc --h 32 --k 3 --s 2 --target 10**12": [*CONVCALC, "--target", str(10**12)],
    TYPER: [sys.executable, "-c", "import typer"],
}


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "ptool", quiet=1)
    for command in COMMANDS.values():  # warm the page cache and .pyc files
        wall(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(max(args.repeat, 1)):
        for name, command in COMMANDS.items():
            times[name].append(wall(command))
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:52s} median {value * 1000:7.1f} ms  ({len(times[name])} runs)")
    for name, value in medians.items():
        if name != TYPER:
            ratio = value / medians[TYPER]
            verdict = "meets" if ratio <= GOAL else "misses"
            print(f"{name}: ratio {ratio:.2f}x (goal <= {GOAL}x: {verdict})")


if __name__ == "__main__":
    main()
