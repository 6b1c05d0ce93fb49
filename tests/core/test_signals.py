"""StopRequest: a signal in training is recorded, not raised; an ignored signal stays ignored."""

import os
import signal

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
