"""`ptool resume` end to end: signals, kill -9, refusals, --init-from, unsafe files."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import signal
import subprocess
import time

import pytest
import torch

from tests.conftest import PTOOL, run_ptool

# ~2 s of training in 3 epochs x 313 steps, deterministic; last.pt every 20 steps.
RUN = shlex.split(
    "train --data synthetic --shape 32 --samples 12500 --val-split 0.2 --model mlp --hidden 128 "
    "--batch-size 32 --epochs 3 --seed 0 --deterministic --scheduler onecycle --no-tensorboard "
    "--save-every-steps 20"
)
SHORT = shlex.split(
    "train --data synthetic --shape 8 --samples 64 --model mlp --hidden 8 --epochs 1 "
    "--no-tensorboard"
)

pytestmark = pytest.mark.xdist_group("resume-cli")  # one 2-core worker: timing-sensitive


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model_state_dict"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = run_ptool(*RUN, "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    return weights(out / "last.pt")


def _default_signals() -> None:
    """In the child: Ctrl-C and SIGTERM act, even when the suite runs as a background job
    (whose shell starts it with SIGINT ignored, which ptool then keeps ignoring)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start(out, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PTOOL_DEBUG": "", "COLUMNS": "200"}
    return subprocess.Popen(
        [PTOOL, *RUN, "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_default_signals,
    )


def wait_for_checkpoint(out, proc, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while not (out / "last.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def assert_same(a, b) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_last_pt_and_the_resumed_run_is_bit_identical(tmp_path, reference, signum):
    out = tmp_path / "run"
    proc = start(out, "--json")
    wait_for_checkpoint(out, proc)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    assert f"resume with: ptool resume {out}" in stderr
    # --json still prints the run's summary.json, whose status says why it stopped
    assert json.loads(stdout) == json.loads((out / "summary.json").read_text())
    assert json.loads(stdout)["status"] == "interrupted"
    assert "Traceback" not in stderr
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["epoch"] < 3 and saved["global_step"] > 0

    resumed = run_ptool("resume", str(out), "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert_same(reference, weights(out / "last.pt"))


def test_kill_9_at_random_moments_always_resumes_exactly(tmp_path, reference):
    out = tmp_path / "run"
    for delay in (0.0, 0.3):  # bench/bench_resume_kill.py runs 20+ such trials
        proc = start(out)
        wait_for_checkpoint(out, proc)
        time.sleep(delay)
        proc.kill()
        proc.communicate()
    resumed = run_ptool("resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert_same(reference, weights(out / "last.pt"))


def test_a_second_ctrl_c_aborts_at_once_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = start(out)
    wait_for_checkpoint(out, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    torch.load(out / "last.pt", weights_only=True)  # whole


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("short") / "run"
    proc = run_ptool(*SHORT, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_refusals_are_one_line_and_name_the_way_out(short_run, tmp_path):
    finished = run_ptool("resume", str(short_run))
    assert finished.returncode == 2
    assert "has finished its 1 epoch\n" in finished.stderr and "--epochs" in finished.stderr
    changed = run_ptool("train", "--resume", str(short_run), "--epochs", "2", "--model", "cnn")
    assert changed.returncode == 2 and "--init-from" in changed.stderr
    changed = run_ptool("resume", str(short_run), "--optimizer", "sgd")
    assert changed.returncode == 2 and "--init-from" in changed.stderr
    assert run_ptool("train", "--reschedule").returncode == 2
    saved = (short_run / "last.pt").read_bytes()  # every kind of bad file: tests/core
    for name, content, reason in (
        ("notes.pt", b"hello\n", "is not a PyTorch checkpoint"),
        ("half.pt", saved[: len(saved) // 2], "truncated"),
    ):
        (tmp_path / name).write_bytes(content)
        proc = run_ptool("resume", str(tmp_path / name))
        assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert reason in proc.stderr, proc.stderr


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "ptool", "model_state_dict": Payload(marker)}, evil)
    with open(tmp_path / "bare.pt", "wb") as f:
        pickle.dump(Payload(marker), f, protocol=2)
    for path in (evil, tmp_path / "bare.pt"):
        proc = run_ptool("resume", str(path))
        assert proc.returncode == 1
        assert "refusing to load" in proc.stderr and "--unsafe-load" in proc.stderr
        assert not marker.exists()


def test_init_from_takes_another_tools_state_dict_and_lists_unmatched_keys(short_run, tmp_path):
    state = weights(short_run / "last.pt")
    lightning = {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}
    head = next(k for k in state if k.startswith("head"))
    lightning["state_dict"]["model.extra.weight"] = torch.zeros(1)
    del lightning["state_dict"][f"model.{head}"]
    torch.save(lightning, tmp_path / "lightning.ckpt")
    source = str(tmp_path / "lightning.ckpt")
    proc = run_ptool(*SHORT, "--no-strict", "--init-from", source, "--out", str(tmp_path / "ft"))
    assert proc.returncode == 0, proc.stderr
    assert f"missing keys (1): {head}" in proc.stderr
    assert "unexpected keys (1): extra.weight" in proc.stderr
    strict = run_ptool(*SHORT, "--init-from", source, "--out", str(tmp_path / "ft2"))
    assert strict.returncode == 2 and "--no-strict" in strict.stderr
