"""StopRequest: a signal in training is recorded, not raised; an ignored signal stays ignored."""

import os
import signal

import torch
from torch.utils.data import Dataset

from ptool.core.config import TrainConfig
from ptool.core.data.loader import make_loader
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


class _SignalDispositions(Dataset):
    """Each sample: whether SIGINT and SIGTERM are ignored where it is loaded."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        ignored = [signal.getsignal(s) is signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM)]
        return torch.tensor(ignored)


def test_dataloader_workers_leave_ctrl_c_to_the_training_process():
    """A terminal's Ctrl-C reaches the workers too: with the training's handler inherited, each
    printed the "finishing the current step" notice again (a second Ctrl-C: each aborted)."""
    config = TrainConfig(batch_size=2, num_workers=2)
    with StopRequest(lambda _: None):
        loader = make_loader(_SignalDispositions(), config, torch.arange(4), train=False)
        batches = list(loader)
        assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # the main one handles it
    assert torch.cat(batches).all()
