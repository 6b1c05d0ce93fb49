"""StopRequest: a signal in training is recorded, not raised; an ignored signal stays ignored."""

import os
import signal
import subprocess
import sys

import pytest

from ptool.core.signals import StopRequest


def test_signal_is_recorded_and_handlers_restored():
    before = signal.getsignal(signal.SIGTERM)
    logged = []
    with StopRequest(logged.append) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
    assert stop.signum == signal.SIGTERM and stop.name == "SIGTERM"
    assert "finishing the current step" in logged[0]
    assert signal.getsignal(signal.SIGTERM) is before


def test_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequest(lambda _: None) as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum is None
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


WORKER_SIGNALS_SCRIPT = """
import os, signal, sys, time, torch
from torch.utils.data import Dataset
from ptool.core.config import TrainConfig
from ptool.core.data.loader import make_loader
from ptool.core.signals import StopRequest

class SignalsTheGroup(Dataset):  # sample 1 sends SIGNAL to the job's process group
    def __len__(self):
        return 4
    def __getitem__(self, index):
        if index == 1:  # once every worker has started (each leaves the group as it starts)
            time.sleep(1)
            os.killpg(os.getpgid(os.getppid()), int(sys.argv[1]))
        return torch.tensor(index)

with StopRequest(lambda line: print(line, file=sys.stderr)) as stop:
    loader = make_loader(SignalsTheGroup(), TrainConfig(batch_size=1, num_workers=2),
                         torch.arange(4), train=False)
    print([int(b) for b in loader], stop.name)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_jobs_process_group_reaches_the_main_process_alone(tmp_path, signum):
    """A terminal's Ctrl-C (SIGINT) and `kill -- -PGID` (SIGTERM) reach every process of the
    group: DataLoader workers printed the notice again (SIGINT), or died (SIGTERM: torch's
    worker handler), and the step being finished failed with "DataLoader worker is killed"."""
    script = tmp_path / "job.py"
    script.write_text(WORKER_SIGNALS_SCRIPT)
    job = subprocess.run(
        [sys.executable, str(script), str(int(signum))],
        capture_output=True, text=True, timeout=120, start_new_session=True,
    )  # fmt: skip
    assert job.returncode == 0, job.stderr
    assert job.stdout.split("] ")[1].strip() == signum.name  # the main process stops
    assert job.stdout.startswith("[0, 1, 2, 3]")  # the workers served on
    assert job.stderr.count("finishing the current step") == 1
