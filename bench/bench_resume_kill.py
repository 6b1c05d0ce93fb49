"""kill -9 at random moments, then `ptool resume`, again and again: does it always resume?

One run is killed TRIALS times (default 24) at a random moment after its first checkpoint,
some of them while a checkpoint is being written (seen as a leftover temporary file), and
resumed each time with `ptool resume RUN_DIR`. The last resume runs to the end and its
weights are compared with an uninterrupted run of the same config (goal: bit-identical, and
every trial resumed).

    python bench/bench_resume_kill.py [TRIALS]
"""

from __future__ import annotations

import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PTOOL = str(Path(sys.executable).with_name("ptool"))
# ~13 MB checkpoints (a 1M-parameter MLP with AdamW state) written every 4 steps, so saves
# take a good share of the time and many kills land inside one.
EPOCHS = 20
RUN = shlex.split(
    "--data synthetic --shape 64 --samples 6000 --model mlp --hidden 1024,1024 --batch-size 64 "
    f"--epochs {EPOCHS} --seed 0 --deterministic --scheduler onecycle --no-tensorboard "
    "--save-every-steps 4 --progress off"
)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model_state_dict"]


def kill_at_random(args: list[str], run_dir: Path, rng: random.Random) -> str:
    """Start, wait for a checkpoint, kill -9 after a random delay; what the kill hit."""
    with tempfile.TemporaryFile() as errors:  # not a pipe: a child filling one would block
        proc = subprocess.Popen([PTOOL, *args], stdout=subprocess.DEVNULL, stderr=errors)
        started = (run_dir / "last.pt").stat().st_mtime if (run_dir / "last.pt").exists() else 0
        while proc.poll() is None:
            last = run_dir / "last.pt"
            if last.exists() and last.stat().st_mtime > started:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:
            errors.seek(0)
            return "finished" if proc.returncode == 0 else f"failed: {errors.read().decode()}"
        proc.kill()
        proc.wait()
    return "save" if list(run_dir.glob(".last.pt.tmp-*")) else "step"


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 24
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reference = root / "reference"
        subprocess.run([PTOOL, "train", *RUN, "--out", str(reference)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        run_dir = root / "killed"
        args = ["train", *RUN, "--out", str(run_dir)]
        kills, resumed, inside_save, steps = 0, 0, 0, []
        while kills < trials:
            hit = kill_at_random(args, run_dir, rng)
            resumed += kills > 0 and not hit.startswith("failed")  # it got past the last kill
            if hit != "save" and hit != "step":
                print(f"after kill {kills}: the run {hit.strip()}")
                break
            kills += 1
            inside_save += hit == "save"
            ckpt = torch.load(run_dir / "last.pt", weights_only=True)  # the newest one loads
            steps.append(ckpt["global_step"])
            if ckpt["epoch"] == EPOCHS:  # killed after its final checkpoint: nothing to resume
                resumed += 1
                break
            args = ["resume", str(run_dir)]
        else:  # the last kill: resume to the end
            final = subprocess.run([PTOOL, "resume", str(run_dir)], capture_output=True, text=True)
            if final.returncode == 0:
                resumed += 1
            else:
                print(f"final resume failed: {final.stderr.strip()}")
        done = torch.load(run_dir / "last.pt", weights_only=True)
        reference_weights = weights(reference / "last.pt").values()
        same = done["epoch"] == EPOCHS and all(
            torch.equal(a, b)
            for a, b in zip(reference_weights, done["model_state_dict"].values(), strict=True)
        )
    print(f"{resumed}/{kills} kills resumed from a valid checkpoint "
          f"({inside_save} of them killed inside a checkpoint write)")  # fmt: skip
    print(f"global steps at the kills: {steps}")
    print(f"final weights bit-identical to the uninterrupted run: {same}")


if __name__ == "__main__":
    main()
