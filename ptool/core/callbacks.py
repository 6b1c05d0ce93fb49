"""What happens around the loop: the monitored metric, checkpoint files, TensorBoard.

Counters that must survive a resume (best value, early-stopping wait, the top-k list) live
in the engine's `TrainState`; these helpers only decide and write.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptool.core.checkpoint import atomic_copy, atomic_save
from ptool.core.errors import first_line


@dataclass
class Monitor:
    """The metric that picks best.pt and stops early (`schedules.monitor_mode`)."""

    name: str
    mode: str
    min_delta: float = 0.0

    @classmethod
    def from_config(cls, config: Any) -> Monitor:
        from ptool.core.schedules import monitor_mode

        return cls(config.monitor, monitor_mode(config), abs(config.min_delta))

    def better(self, value: float, reference: float | None, delta: float = 0.0) -> bool:
        """`value` beats `reference` by more than `delta`; any finite value beats None."""
        if not math.isfinite(value):
            return False
        if reference is None:
            return True
        return value < reference - delta if self.mode == "min" else value > reference + delta


class CheckpointFiles:
    """last.pt, best.pt, best-epochN.pt (top-k) and epoch-N.pt (keep-last) in a run directory.

    A checkpoint is serialized once per save; the other names are atomic copies of it. last.pt
    is written last: a resume starts from it, so a kill before it is replaced redoes the epoch
    (and writes its copies again), and a kill after it finds every copy written.
    """

    def __init__(self, run_dir: Path, *, save_top_k: int, keep_last: int | None):
        self.run_dir = run_dir
        self.save_top_k = save_top_k
        self.keep_last = keep_last
        self.last = run_dir / "last.pt"
        self.best = run_dir / "best.pt"
        self._remove_torn_writes()

    def _remove_torn_writes(self) -> None:
        """Temporary files of a process killed in mid-save (kill -9, power loss)."""
        for tmp in self.run_dir.glob(".*.tmp-*"):
            pid = tmp.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                tmp.unlink(missing_ok=True)

    def write(self, payload: dict, copies: Sequence[Path] = ()) -> Path:
        """`copies` of the checkpoint (`epoch_copies`), then last.pt."""
        first, *rest = [*copies, self.last]
        atomic_save(payload, first)
        for target in rest:
            atomic_copy(first, target)
        return self.last

    def rank(self, epoch: int, value: float | None, monitor: Monitor, state: Any) -> list[str]:
        """Enter `epoch` in the top-k (`state.top_k`) before last.pt is written, so the
        checkpoint lists it and a resume keeps ranking it; returns the names pushed out."""
        if self.save_top_k <= 1 or value is None or not math.isfinite(value):
            return []
        entries = [*state.top_k, [value, epoch, f"best-epoch{epoch}.pt"]]
        entries.sort(key=lambda e: e[0], reverse=monitor.mode == "max")
        state.top_k = entries[: self.save_top_k]
        return [name for _, _, name in entries[self.save_top_k :]]

    def forget_missing(self, state: Any) -> None:
        """On resume: the top-k files the checkpoint lists that this directory no longer holds
        leave the ranking. A resume from an earlier checkpoint (`epoch-4.pt`) finds the ones the
        abandoned later epochs pushed out; one in another --out finds none."""
        state.top_k = [entry for entry in state.top_k if (self.run_dir / entry[2]).exists()]

    def later_files(self, epoch: int) -> list[str]:
        """epoch-N.pt and best-epochN.pt of epochs after `epoch` + 1: a timeline that a resume
        from an earlier checkpoint abandons (a killed run's next epoch is the one it redoes)."""
        later = []
        for path in self.run_dir.glob("*epoch*.pt"):
            match = re.fullmatch(r"(?:epoch-|best-epoch)(\d+)\.pt", path.name)
            if match and int(match[1]) > epoch + 1:
                later.append((int(match[1]), path.name))
        return [name for _, name in sorted(later)]

    def epoch_copies(self, epoch: int, state: Any) -> list[Path]:
        """The names an epoch's checkpoint is saved under besides last.pt, as `state` says:
        epoch-N.pt, best.pt, best-epochN.pt."""
        names = [f"epoch-{epoch}.pt"] if self.keep_last else []
        if self.save_top_k > 0 and state.best_epoch == epoch:
            names.append(self.best.name)
        if any(entry[1] == epoch for entry in state.top_k):
            names.append(f"best-epoch{epoch}.pt")
        return [self.run_dir / name for name in names]

    def remove_old(self, epoch: int, dropped: list[str]) -> None:
        """Once last.pt holds `epoch`: the epoch-N.pt files beyond --keep-last and the top-k
        files `rank` pushed out."""
        if self.keep_last:
            for old in self._epoch_files(epoch)[: -self.keep_last]:
                old.unlink(missing_ok=True)
        for name in dropped:
            (self.run_dir / name).unlink(missing_ok=True)

    def _epoch_files(self, epoch: int) -> list[Path]:
        """epoch-N.pt up to `epoch`, oldest first. Later ones belong to a timeline that a resume
        from an earlier checkpoint abandoned: this run replaces them when it gets there."""
        numbered = {}
        for path in self.run_dir.glob("epoch-*.pt"):  # not epoch-3.pruned.pt: prune's output
            match = re.fullmatch(r"epoch-(\d+)\.pt", path.name)
            if match and int(match[1]) <= epoch:
                numbered[int(match[1])] = path
        return [numbered[n] for n in sorted(numbered)]

    def paths(self, state: Any) -> dict[str, Any]:
        """The run's files, the same keys whatever the options (empty lists without them)."""
        top_k = state.top_k if self.save_top_k > 1 else []
        return {
            "last": str(self.last) if self.last.exists() else None,
            "best": str(self.best) if self.best.exists() else None,
            "top_k": [str(self.run_dir / name) for _, _, name in top_k],
            "epochs": [str(p) for p in self._epoch_files(state.epoch)] if self.keep_last else [],
        }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def epoch_tag(metric: str) -> str:
    """The TensorBoard tag of a per-epoch metric: `train/loss` is the per-step tag, so the
    epoch means of train/* are logged as train_epoch/*."""
    return "train_epoch/" + metric.removeprefix("train/") if metric.startswith("train/") else metric


def _quiet_writer_thread() -> None:
    """TensorBoard's writer thread prints the traceback of a failed write (a full disk) and
    keeps the error for the run's next write, flush or close to raise: that is the error
    ptool reports, in one line; the thread's traceback is left out."""
    previous = threading.excepthook
    if getattr(previous, "ptool_quiets_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ != "_AsyncWriterThread":  # tensorboard's writer
            previous(args)

    hook.ptool_quiets_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


# summary.json's status as the HParams dashboard's session status
SESSION_STATUS = {
    "completed": "STATUS_SUCCESS",
    "early_stopped": "STATUS_SUCCESS",
    "diverged": "STATUS_FAILURE",
    "interrupted": "STATUS_UNKNOWN",  # stopped before its end (no "aborted" status)
}


class TensorBoardLog:
    """A SummaryWriter with the tags ptool promises (see the README's TensorBoard section)."""

    def __init__(self, log_dir: Path, *, purge_step: int | None = None):
        """`purge_step`: a resumed run's first step; TensorBoard hides what the earlier run
        logged from that step on (every tag: per-epoch tags are logged at a step too), so the
        curves have no duplicated steps."""
        from torch.utils.tensorboard import SummaryWriter

        _quiet_writer_thread()
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def purge_from(self, step: int) -> None:
        """Hide what this log holds from `step` on, as `purge_step` does at start-up: the
        SessionLog.START event tells TensorBoard's reader to drop it (a rollback replays it)."""
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        start = SessionLog(status=SessionLog.START)
        self.writer.file_writer.add_event(Event(step=step, session_log=start))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            if math.isfinite(value):
                self.writer.add_scalar(tag, value, step)

    def images(self, x: torch.Tensor) -> None:
        """A few input images, each rescaled to [0, 1] (inputs are normalized). TensorBoard
        draws 1 or 3 channels: other counts show their first, as grayscale."""
        x = x[:16].detach().float().cpu()
        if x.shape[1] not in (1, 3):
            x = x[:, :1]
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        high = x.amax(dim=(1, 2, 3), keepdim=True)
        self.writer.add_images("inputs", (x - low) / (high - low).clamp_min(1e-8), 0)

    def histograms(self, model: nn.Module, step: int, *, grads: bool = False) -> None:
        """weights/NAME, or grads/NAME (called before the epoch's last step clears them)."""
        for name, param in model.named_parameters():
            tensor = param.grad if grads else param
            if tensor is not None:
                kind = "grads" if grads else "weights"
                self.writer.add_histogram(f"{kind}/{name}", tensor.detach().float().cpu(), step)

    def graph(self, model: nn.Module, example: torch.Tensor) -> str | None:
        """Trace the model into the graph tab; returns a reason when tracing fails."""
        import warnings

        try:
            with warnings.catch_warnings():  # add_graph's own torch.jit.trace deprecation notes
                warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
                self.writer.add_graph(model, example)
        except Exception as exc:  # noqa: BLE001 - tracing fails in model-specific ways
            return first_line(exc)
        return None

    def hparams(
        self, config: dict[str, Any], metrics: dict[str, float], step: int, status: str
    ) -> None:
        """The config, final metrics and the run's `status` (a diverged run is a failure, an
        interrupted one unknown: torch writes success) for the HParams dashboard, at the run's
        global step, the step its checkpoint resumes from: a resume purges them (TensorBoard's
        `purge_step`), so a run stopped and resumed shows them once, the last session's."""
        plain = {
            k: (v if isinstance(v, (int, float, str, bool)) else str(v))
            for k, v in config.items()
            if v is not None
        }
        finite = {f"hparam/{k}": v for k, v in metrics.items() if math.isfinite(v)}
        # what SummaryWriter.add_hparams writes, but into this writer's own event file: its
        # extra writer's file could sort before a resumed session's (names end in a per-process
        # counter, ".10" < ".9"), whose purge then dropped the final metrics
        from tensorboard.plugins.hparams.api_pb2 import Status
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
        from torch.utils.tensorboard.summary import hparams

        experiment, start, end = hparams(plain, finite)
        data = end.value[0].metadata.plugin_data
        content = HParamsPluginData.FromString(data.content)
        content.session_end_info.status = Status.Value(SESSION_STATUS[status])
        data.content = content.SerializeToString()
        for summary in (experiment, start, end):
            self.writer.file_writer.add_summary(summary, step)
        for name, value in finite.items():
            self.writer.add_scalar(name, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.flush()
        self.writer.close()
