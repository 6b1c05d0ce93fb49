"""The training loop that `train`, `resume`, `quantize qat` and `prune`'s fine-tuning share.

`fit(config)` turns a resolved `TrainConfig` into a run: data -> model -> loss -> optimizer ->
schedule -> epochs of (train, validate, checkpoint), and returns a `RunSummary`.
Hooks for the other commands: `model=` / `data=` (bring your own), `prepare_model=` (e.g.
prepare_qat, after the model is built and before the optimizer sees it), `resume=` (a loaded
checkpoint: weights, optimizer, schedule, scaler, EMA, counters, RNG and the data position),
`checkpoint_extras=` (recipe keys added to every checkpoint) and `callbacks=`.

Exact-resume contract: the data order of epoch e is a function of (seed, e) alone
(`runtime.epoch_order`), and a checkpoint records `epoch` (completed epochs), `global_step`
and `batch_in_epoch`, so a resume slices `order[batch_in_epoch * batch_size:]` and goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from shlex import quote
from typing import Any

import torch
from torch import nn

from ptool.core import checkpoint as ckpt_io
from ptool.core import rundir
from ptool.core.callbacks import CheckpointFiles, Monitor, TensorBoardLog, epoch_tag
from ptool.core.checks import (
    check_config,
    check_loss_options,
    check_loss_targets,
    check_monitor,
    check_new_run_options,
    check_num_classes,
)
from ptool.core.config import TrainConfig
from ptool.core.errors import PtoolError, UsageError, count
from ptool.core.init_from import load_initial_weights
from ptool.core.metrics import EpochMetrics
from ptool.core.optim import build_loss, build_optimizer, loss_sum
from ptool.core.runtime import (
    autocast,
    capture_rng_state,
    epoch_order,
    from_main_rank,
    init_distributed,
    pick_seed,
    resolve_device,
    restore_rng_state,
    seed_everything,
    set_deterministic,
    shutdown_distributed,
    sum_dtype,
)
from ptool.core.signals import Interrupted, StopRequest
from ptool.core.trust import trust_flag

MAX_ROLLBACKS = 3


@dataclass
class TrainState:
    """Every counter an exact resume needs, as plain Python values (ckpt["callbacks"])."""

    epoch: int = 0  # completed epochs
    global_step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # batches of epoch `epoch` (0-based) already trained on
    best_value: float | None = None
    best_epoch: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    early_stop_best: float | None = None  # improves only by more than --min-delta
    early_stop_wait: int = 0
    nonfinite_skipped: int = 0
    rollbacks: int = 0
    top_k: list[list[Any]] = field(default_factory=list)  # [value, epoch, file name]
    # the running epoch's training sums (a mid-epoch checkpoint carries them): the loss as
    # val/loss weighs it (by class weights where the loss has them: optim.loss_sum)
    train_loss_sum: float = 0.0
    train_loss_weight: float = 0.0
    train_correct: float = 0.0
    train_samples: int = 0
    samples_seen: int = 0  # training samples over the whole run (this rank)
    train_time_s: float = 0.0
    wall_time_s: float = 0.0  # of the sessions before this one, up to their last checkpoint

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        known = {f.name for f in dataclasses.fields(cls)}
        # a checkpoint from before train_loss_weight summed the loss over samples
        values = {"train_loss_weight": values.get("train_samples", 0), **values}
        return cls(**{k: v for k, v in values.items() if k in known})

    def clear_epoch_sums(self) -> None:
        self.train_loss_sum = self.train_loss_weight = self.train_correct = 0.0
        self.train_samples = 0


@dataclass
class RunSummary:
    """What a run did; `to_dict()` is summary.json and `ptool train --json`."""

    run_dir: str
    status: str  # completed | early_stopped | diverged | interrupted
    epochs: int
    global_step: int
    monitor: str
    mode: str
    best_value: float | None
    best_epoch: int | None
    final_metrics: dict[str, float]
    best_metrics: dict[str, float]
    confusion_matrix: list[list[int]] | None
    wall_time_s: float
    train_time_s: float
    samples_per_s: float
    checkpoints: dict[str, Any]
    seed: int
    device: str
    world_size: int
    nonfinite_skipped: int
    rollbacks: int
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class NonFiniteLoss(PtoolError):
    """The loss became NaN/Inf and --on-nonfinite says stop (or rollbacks ran out)."""

    job_wide = True  # every rank's decision, on the all-reduced loss, metrics or gradients
    summary: RunSummary | None = None  # the stopped run's summary.json, for `--json`


class _Rollback(Exception):
    """Raised inside an epoch to go back to the last good checkpoint."""


def _norm_statistics(model: nn.Module) -> list[torch.Tensor]:
    """Batch-norm running statistics: a training forward updates them even when its batch is
    then skipped, so `--on-nonfinite skip` puts them back."""
    return [
        buffer
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
        if buffer is not None
    ]


def _noop(_: str) -> None:
    pass


def _not_cuda_home_notice(record: logging.LogRecord) -> bool:
    """Inductor's toolchain lookup warns "No CUDA runtime is found, using CUDA_HOME=..." on any
    machine with a CUDA toolkit and no GPU: nothing a CPU run can act on."""
    return not record.getMessage().startswith("No CUDA runtime is found")


def _stderr_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _check_types(config: Any, resume: Any, model: Any, data: Any) -> None:
    """The Python API's arguments, refused by what they should be rather than by an
    AttributeError deep in the run (`fit("run.yaml")`, `resume="last.pt"`)."""
    from ptool.core.data import DataBundle

    for name, value, kind, way, optional in (
        ("config", config, TrainConfig, "resolve_config(file, overrides) builds one", False),
        ("resume", resume, dict, "load_checkpoint(path) loads one", True),
        ("model", model, nn.Module, "build_model(config, info) builds one", True),
        ("data", data, DataBundle, "build_data(config) builds one", True),
    ):
        if not (isinstance(value, kind) or (optional and value is None)):
            raise TypeError(f"{name} must be a {kind.__name__}, not {type(value).__name__}: {way}")


class Trainer:
    """One run's objects and loop; `fit()` is the usual way in, with the same keyword
    arguments; `__init__`'s docstring says what the less obvious ones and callbacks do."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: dict | None = None,
        callbacks: Iterable[Any] = (),
        quiet: bool = False,
        progress: bool | None = None,
        log: Callable[[str], None] | None = None,
        model: nn.Module | None = None,
        data: Any = None,
        prepare_model: Callable[[nn.Module], nn.Module] | None = None,
        checkpoint_extras: Callable[[], dict] | None = None,
        reschedule: bool = False,
        unsafe_load: bool = False,
        resume_command: str = "ptool resume",
    ):
        """`log` receives the human lines (epoch lines, warnings; default: stderr); `progress`
        forces the tqdm bar on/off (default: config.progress, auto = stderr is a terminal);
        `unsafe_load` lets --init-from unpickle a trusted file; `resume_command` is what the
        hints name to continue the run (QAT's own).
        Callbacks are objects with any of on_fit_start(trainer), on_step_end(trainer),
        on_validation_start(trainer, model), on_validation_end(trainer, model),
        on_epoch_end(trainer, metrics), on_checkpoint(trainer, path), on_fit_end(trainer, summary).
        """
        _check_types(config, resume, model, data)
        self.started = time.perf_counter()
        self.resume_command = resume_command  # what continues this run, for the hints
        self.wall_before = 0.0  # wall time of the sessions before a resume
        self.resumed_at: int | None = None  # the global step a resume started from
        self.finished = False  # the run reached its end (_finish), not an error
        check_config(config)
        self.tb = self.lock = None  # what close() lets go of, once taken
        wrote_config, replaced_config = False, None  # what a refusal takes back / puts back
        self.dist = init_distributed(config.device)
        try:  # from here on close() leaves the process group, also on a refusal
            self.device = resolve_device(config.device, self.dist)
            self.sum_dtype = sum_dtype(self.device)
            if resume is not None and config.seed is None:  # the API's fresh config: the run's
                config = config.replace(seed=resume.get("config", {}).get("seed"))  # split, order
            seed = pick_seed(config.seed, self.dist)
            run_dir = config.out or (
                str(rundir.claim_default_run_dir()) if self.dist.is_main else ""
            )
            run_dir = Path(from_main_rank(run_dir, self.dist))  # the folder rank 0 took
            self.config = config.replace(seed=seed, out=str(run_dir))
            self.callbacks = list(callbacks)
            self.checkpoint_extras = checkpoint_extras
            main = self.dist.is_main
            self.log = (log or _stderr_line) if main and not quiet else _noop
            if progress is None:
                progress = {"on": True, "off": False}.get(config.progress, sys.stderr.isatty())
            self.progress = bool(progress and main and not quiet)
            if quiet and config.compile:  # torch.compile's own log lines ("No CUDA runtime ...")
                torch._logging.set_logs(all=logging.ERROR)
            self.monitor = Monitor.from_config(self.config)
            self._on_rank_0(lambda: rundir.prepare_run_dir(run_dir))  # its refusal: every rank's
            self.run_dir = run_dir
            # The folder is taken before anything reads or writes there, and is looked into only
            # then: a second run into it is refused at once, not let in once the first finished
            # (it saw no checkpoint yet, and replaced them). close() lets go and unlinks the file.
            self.lock = self._on_rank_0(lambda: rundir.RunDirLock(self.run_dir))
            # a resume's config.yaml (a longer --epochs) comes with its first checkpoint: a
            # resume that fails before one left a config.yaml that its checkpoints did not match
            self.config_written = resume is None
            if resume is None:
                self._on_rank_0(lambda: rundir.refuse_other_run(self.run_dir))
                replaced_config = self._on_rank_0(self._write_first_config)
                wrote_config = self.dist.is_main
            self._build(
                seed,
                resume=resume,
                model=model,
                data=data,
                prepare_model=prepare_model,
                reschedule=reschedule,
                unsafe_load=unsafe_load,
            )
        except Exception:  # refused: the config.yaml it wrote names no run
            if wrote_config:
                written = self.run_dir / rundir.CONFIG_NAME
                if replaced_config is None:
                    written.unlink(missing_ok=True)
                else:  # the folder's own (a run killed as it started; the --config file)
                    with rundir.atomic_write(written) as file:
                        file.write(replaced_config)
            self.close()  # fit() closes a Trainer it got; this one it never gets
            raise
        except BaseException:  # a Ctrl-C while it starts: the folder can start it again
            self.close()
            raise

    def _write_first_config(self) -> bytes | None:
        """config.yaml before the data and the model (seconds): a run killed meanwhile can be
        started again from it, its drawn seed included. Returns the one it replaced, if any,
        for a refusal to put back."""
        path = self.run_dir / rundir.CONFIG_NAME
        try:
            replaced = path.read_bytes() if path.is_file() else None
            rundir.write_config(self.run_dir, self.config.to_dict())
        except OSError as exc:  # every rank's refusal, as the folder's own
            raise rundir.unwritable(self.run_dir, exc) from None
        return replaced

    def _build(
        self,
        seed: int,
        *,
        resume: dict | None,
        model: nn.Module | None,
        data: Any,
        prepare_model: Callable[[nn.Module], nn.Module] | None,
        reschedule: bool,
        unsafe_load: bool,
    ) -> None:
        """Everything a run needs after its folder is taken: data, model, optimizer, schedule,
        the state a resume brings, TensorBoard."""
        config = self.config
        seed_everything(seed)
        set_deterministic(self.config.deterministic)

        from ptool.core.data import build_data

        self.data = data if data is not None else build_data(self.config)
        self.info = self.data.info
        if resume is not None:
            self._refuse_changed_data(resume)
        check_monitor(config, self.info)
        if resume is None and model is None:  # a new run from flags, not a checkpoint's fine-tune
            check_num_classes(config, self.info)
            check_loss_options(config, self.info)
            check_loss_targets(config, self.data)
            check_new_run_options(config)
        from ptool.core.schedules import build_schedule, check_schedule

        samples = len(self.train_order(0))
        self.config.check_full_batch(samples)
        self.batches_per_epoch = self.config.batches_per_epoch(samples)
        self.steps_per_epoch = self.config.steps_per_epoch(samples)
        # before the model and its optimizer (torch.optim imports torch._dynamo, about 2 s)
        check_schedule(self.config, self.steps_per_epoch)
        self.model = self._place(
            self._model(
                model, new_run=resume is None, unsafe_load=unsafe_load, prepare=prepare_model
            )
        )
        self.loss_fn = build_loss(self.config, self.info).to(self.device)
        self.optimizer = build_optimizer(self.model, self.config)
        self.schedule = build_schedule(
            self.optimizer, self.config, steps_per_epoch=self.steps_per_epoch
        )
        # fp16 gradients underflow without loss scaling, on any device (CPU and MPS too)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.config.precision == "fp16"
        )
        self.ema = self._build_ema()
        self.state = TrainState()
        self.step_lr: float | None = None  # the lr of the last optimizer step: an epoch's `lr`
        self.files = CheckpointFiles(
            self.run_dir, save_top_k=self.config.save_top_k, keep_last=self.config.keep_last
        )
        self.val_metrics = EpochMetrics(self.info, self.device, "val")
        self.ema_metrics = EpochMetrics(self.info, self.device, "val_ema") if self.ema else None
        self.confusion: list[list[int]] | None = None
        if resume is not None:
            self.load_state(resume, replan=reschedule)
            self.files.forget_missing(self.state)
            later = self.files.later_files(self.state.epoch)
            if later:
                self.log(
                    f"warning: {self.run_dir} holds {', '.join(later)} from before this resume "
                    f"from epoch {self.state.epoch}; an epoch saved again replaces its files, "
                    "the others stay"
                )
            self.resumed_at = self.state.global_step
        self.train_model = self._wrap(self.model)
        self.tb = self._tensorboard()
        self._good = self._snapshot()  # what a rollback returns to before the first save
        # Ctrl-C / SIGTERM: one process only (DDP ranks would have to agree on the step)
        self.stop = StopRequest(self.log, install=not self.dist.enabled)

    # --- setup ---------------------------------------------------------------------------

    def _model(
        self,
        model: nn.Module | None,
        *,
        new_run: bool,
        unsafe_load: bool,
        prepare: Callable[[nn.Module], nn.Module] | None,
    ) -> nn.Module:
        """The model given (a fine-tune's) or built from the config; a new run's --init-from
        weights; then `prepare` (QAT's fake quantization)."""
        if model is None:
            from ptool.core.models import build_model, check_grad_checkpoint

            model = build_model(self.config, self.info)
            if new_run:
                check_grad_checkpoint(model, self.config)
        if self.config.init_from and new_run:
            load_initial_weights(
                model,
                self.config.init_from,
                strict=self.config.strict,
                unsafe=unsafe_load,
                log=self.log,
            )
        return prepare(model) if prepare is not None else model

    def _refuse_changed_data(self, ckpt: dict[str, Any]) -> None:
        """A resume continues the run's sample order over the run's samples, or not at all."""
        from ptool.core.data.info import DataInfo, data_changes

        saved = ckpt.get("data_info")
        changes = data_changes(DataInfo.from_dict(saved), self.info) if saved else {}
        if changes:
            raise PtoolError(
                f"--data {self.config.data} is not the data this run trained on: "
                + "; ".join(changes.values()),
                hint="restore that data to resume; a new run can start from the weights with "
                "--init-from",
            )

    def _on_rank_0(self, check: Callable[[], Any]) -> Any:
        """`check` on rank 0 only (the run folder is its), its refusal raised on every rank:
        the others would wait for rank 0 and die of a closed connection instead."""
        result = refusal = None
        if self.dist.is_main:
            try:
                result = check()
            except UsageError as exc:
                refusal = (str(exc), exc.hint)
        refusal = from_main_rank(refusal, self.dist)
        if refusal is not None:
            raise UsageError(*refusal)
        return result

    def _place(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _build_ema(self):
        if self.config.ema is None:
            return None
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        return AveragedModel(
            self.model, multi_avg_fn=get_ema_multi_avg_fn(self.config.ema), use_buffers=True
        )

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        if self.config.compile:
            logging.getLogger("torch.utils.cpp_extension").addFilter(_not_cuda_home_notice)
            model = torch.compile(model)
        return model

    def _tensorboard(self) -> TensorBoardLog | None:
        if not (self.config.tensorboard and self.dist.is_main):
            return None
        # a resumed run's log restarts where it resumed: TensorBoard hides every tag from that
        # step on, which is exact because per-epoch tags sit at their epoch's last step
        tb = TensorBoardLog(self.run_dir / "tensorboard", purge_step=self.resumed_at)
        val = self.data.val
        if self.resumed_at is None:
            self._log_inputs(tb)
        if self.config.log_graph:
            example = torch.stack([val[i][0] for i in range(min(2, len(val)))]).to(self.device)
            reason = tb.graph(self.model, example)
            if reason:
                self.log(f"--log-graph: the model could not be traced ({reason})")
        return tb

    def _log_inputs(self, tb: TensorBoardLog) -> None:
        """A few validation images at step 0, for image data."""
        val = self.data.val
        if self.info.is_image and len(val):
            tb.images(torch.stack([val[i][0] for i in range(min(16, len(val)))]))

    # --- data order ----------------------------------------------------------------------

    def train_order(self, epoch: int) -> torch.Tensor:
        return epoch_order(
            len(self.data.train),
            seed=self.config.seed,
            epoch=epoch,
            shuffle=self.config.shuffle,
            info=self.dist,
        )

    def _loader(self, dataset, order: torch.Tensor, *, train: bool, seed: int | None = None):
        from ptool.core.data import make_loader

        return make_loader(dataset, self.config, order, train=train, device=self.device, seed=seed)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.config.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _autocast(self):
        return autocast(self.device, self.config.precision)

    # --- the loop ------------------------------------------------------------------------

    def fit(self) -> RunSummary:
        status, message = "completed", None
        self._fire("on_fit_start")
        try:
            with self.stop:
                while self.state.epoch < self.config.epochs:
                    try:
                        self.train_epoch()
                        stop_early = self.end_epoch()
                    except _Rollback:
                        self._rollback()
                        continue
                    finished = stop_early or self.state.epoch >= self.config.epochs
                    if self.stop.signum is not None and not finished:
                        self._interrupt()  # (a signal after the last epoch's work finishes it)
                    if stop_early:
                        status = "early_stopped"
                        message = (
                            f"early stop: {self.monitor.name} did not improve by more than "
                            f"{self.monitor.min_delta} for "
                            f"{count(self.state.early_stop_wait, 'epoch')}"
                        )
                        self.log(message)
                        break
        except NonFiniteLoss as exc:
            exc.summary = self._finish("diverged", str(exc))
            raise
        summary = self._finish(status, message)
        self._fire("on_fit_end", summary)
        return summary

    def train_epoch(self) -> None:
        """Train on this epoch's remaining batches (all of them, unless resuming mid-epoch)."""
        config, state = self.config, self.state
        epoch = state.epoch
        start = state.batch_in_epoch
        order = self.train_order(epoch)[start * config.batch_size :]
        total = self.batches_per_epoch
        accumulate = config.accumulate
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(3, device=self.device, dtype=self.sum_dtype)  # loss, weight, correct
        samples = 0
        contributed = 0  # the window's batches with a finite loss
        began = time.perf_counter()
        classification = self.info.task == "classification"
        norms = _norm_statistics(self.model) if config.on_nonfinite == "skip" else []
        kept = [t.clone() for t in norms]  # what a skipped batch's forward must not change
        trained = False  # the same on every process: _finite agrees on each skip
        stepped = False  # and _finite_grads on each step (the gradients are all-reduced)
        loader = self._loader(self.data.train, order, train=True, seed=self.config.seed + epoch)
        with self._bar(epoch, start, total) as bar:  # closed on any way out
            for index, (x, y) in enumerate(loader, start):
                x, y = self._to_device(x, y)
                window_start = index - index % accumulate
                window = min(accumulate, total - window_start)
                closes_window = index + 1 == window_start + window
                sync = closes_window or not self.dist.enabled
                with contextlib.nullcontext() if sync else self.train_model.no_sync():
                    for value, buffer in zip(kept, norms, strict=True):
                        value.copy_(buffer)
                    with self._autocast():
                        outputs = self._train_forward(x)
                        loss = self.loss_fn(outputs, y)
                    if self._finite(loss, index):
                        self.scaler.scale(loss / window if window > 1 else loss).backward()
                        contributed += 1
                        trained = True
                        batch_sum, weight = loss_sum(self.loss_fn, outputs, y, loss)
                        sums[0] += batch_sum.to(self.sum_dtype)
                        sums[1] += weight
                        if classification:
                            sums[2] += (outputs.detach().argmax(dim=1) == y).sum()
                        samples += y.shape[0]
                    else:
                        for buffer, value in zip(norms, kept, strict=True):
                            buffer.copy_(value)
                        if closes_window and self.dist.enabled and contributed:
                            self._all_reduce_grads()
                state.batch_in_epoch = index + 1
                if closes_window:
                    stepped |= self._optimizer_step(contributed, window, loss)
                    contributed = 0
                bar.update(1)
                if self.progress and (index % max(1, total // 20) == 0 or index + 1 == total):
                    bar.set_postfix(self._postfix(loss, outputs, y), refresh=False)
                stopping = closes_window and self.stop.signum is not None
                if stopping or (closes_window and self._should_save_step()):
                    self._flush_sums(sums, samples, began)
                    sums.zero_()
                    samples, began = 0, time.perf_counter()
                    if state.batch_in_epoch < total:  # else the epoch's end saves it
                        self.save()
                        if stopping:
                            bar.close()  # before the run's last lines
                            self._interrupt()
        self._flush_sums(sums, samples, began)
        if not trained and start < total:
            raise NonFiniteLoss(
                f"every batch of epoch {epoch + 1} had a non-finite loss (all skipped); stopped",
                hint="check the data for NaN values, or lower --lr",
            )
        if not stepped and start < total:  # finite losses, but weights that did not move
            raise NonFiniteLoss(
                f"every optimizer step of epoch {epoch + 1} was left out (non-finite "
                "gradients, or losses); stopped",
                hint="lower --lr (the weights grew until their gradients overflow)",
            )

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.train_model(x)
        except ValueError as exc:  # BatchNorm's "Expected more than 1 value per channel"
            if "more than 1 value per channel" not in str(exc) or len(x) != 1:
                raise
            samples = len(self.train_order(self.state.epoch))
            raise UsageError(
                f"the last training batch holds 1 sample ({samples} samples, --batch-size "
                f"{self.config.batch_size}), which batch norm cannot normalize in training",
                hint="add --drop-last, or choose another --batch-size",
            ) from None

    def _interrupt(self) -> None:
        """After a signal: last.pt holds this step; finish the run's files and stop."""
        state, stop = self.state, self.stop
        where = f"epoch {state.epoch + 1}, step {state.global_step}"
        message = f"{stop.name} at {where}: saved {self.files.last}"
        summary = self._finish("interrupted", message)
        command = rundir.resume_command(self.dist.world_size, self.resume_command)
        hint = f"resume with: {command} {quote(str(self.run_dir))}{trust_flag(self.config.model)}"
        error = Interrupted(stop.signum, message, hint=hint)
        error.summary = summary
        raise error

    def _flush_sums(self, sums: torch.Tensor, samples: int, began: float) -> None:
        state = self.state
        loss_sum, loss_weight, correct = sums.tolist()
        state.train_loss_sum += loss_sum
        state.train_loss_weight += loss_weight
        state.train_correct += correct
        state.train_samples += samples
        state.samples_seen += samples
        state.train_time_s += time.perf_counter() - began

    def _finite(self, loss: torch.Tensor, index: int) -> bool:
        """False when the loss is NaN/Inf (on any rank) and the batch is skipped."""
        bad = ~torch.isfinite(loss.detach())
        if self.dist.enabled:
            import torch.distributed as dist

            flag = bad.to(torch.int32).reshape(1)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bad = flag[0].bool()
        if not bool(bad):
            return True
        state = self.state
        where = (
            f"loss is {float(loss.detach()):g} at step {state.global_step} "
            f"(epoch {state.epoch + 1}, batch {index + 1})"
        )
        return self._nonfinite(where)

    def _nonfinite(self, where: str, *, can_skip: bool = True) -> bool:
        """--on-nonfinite: skip (False: leave this batch or step out), roll back, or stop."""
        state, policy = self.state, self.config.on_nonfinite
        if policy == "skip" and can_skip:
            state.nonfinite_skipped += 1
            return False
        kept = f"last good checkpoint: {self.files.last}" if self.files.last.exists() else ""
        if policy == "rollback":  # the last save holds finite weights: each one is checked
            good_step = self._good["callbacks"]["train_state"]["global_step"]
            if state.global_step == good_step:  # a replay would fail alike: the lr took no part
                raise NonFiniteLoss(
                    f"{where}, in the first step from the last good state (rolling back cannot "
                    f"help: the lr takes no part before a step); stopped. {kept}".strip(),
                    hint="start a new run with a lower --lr, or check the data for NaN values",
                )
            if state.rollbacks < MAX_ROLLBACKS:
                self.log(f"{where}: rolling back to the last good state and halving the lr")
                raise _Rollback
            raise NonFiniteLoss(
                f"{where}, after {MAX_ROLLBACKS} rollbacks; stopped. {kept}".strip(),
                hint="start a new run with a lower --lr or --clip-norm, or check the data for "
                "NaN values",
            )
        other = ", or --on-nonfinite skip|rollback" if policy == "stop" else ""
        raise NonFiniteLoss(  # a resume would repeat these steps: those flags are a new run's
            f"{where}; stopped. {kept}".strip(),
            hint=f"start a new run with a lower --lr or --clip-norm{other}"
            + (f" (--init-from {quote(str(self.files.last))} keeps its weights)" if kept else ""),
        )

    def _all_reduce_grads(self) -> None:
        """DDP averages gradients in the backward of a window's last batch; when that batch is
        skipped, average what the window's other batches left, by hand."""
        import torch.distributed as dist

        for param in self.model.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad /= self.dist.world_size

    def _optimizer_step(self, contributed: int, window: int, loss: torch.Tensor) -> bool:
        """Step on the window's gradients: their mean over the `contributed` batches with a
        finite loss (each was divided by `window` before a skip could be known). False when
        --on-nonfinite skip left the step out (no finite loss, or gradients that are not)."""
        config, state = self.config, self.state
        stepped = False
        if contributed:
            params = [p for p in self.model.parameters() if p.grad is not None]
            if contributed < window:
                for p in params:
                    p.grad.mul_(window / contributed)
            last_step = state.batch_in_epoch == self.batches_per_epoch
            log_grads = self.tb is not None and config.log_histograms and last_step
            clip = config.clip_norm is not None or config.clip_value is not None
            if log_grads or clip:  # the true gradients, not fp16's loss-scaled ones
                self.scaler.unscale_(self.optimizer)
            if log_grads:
                self.tb.histograms(self.model, state.global_step, grads=True)  # before clipping
            norm = None
            if config.clip_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, config.clip_norm)
            if config.clip_value is not None:
                torch.nn.utils.clip_grad_value_(params, config.clip_value)
            if self.scaler.is_enabled():  # it skips a step with inf/NaN gradients itself,
                self.scaler.step(self.optimizer)  # and lowers its scale (counted as a step)
                self.scaler.update()
                stepped = True
            elif self._finite_grads(params, norm):
                self.optimizer.step()
                stepped = True
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update_parameters(self.model)
        groups = self.optimizer.param_groups
        self.step_lr = float(groups[0]["lr"])
        if self.tb is not None:
            self.tb.scalar("lr", groups[0]["lr"], state.global_step)
            for i, group in enumerate(groups[1:], 1):
                self.tb.scalar(f"lr/group{i}", group["lr"], state.global_step)
            if state.global_step % config.log_every_steps == 0 and torch.isfinite(loss):
                self.tb.scalar("train/loss", float(loss.detach()), state.global_step)
        self.schedule.step_batch()
        state.global_step += 1
        self._fire("on_step_end")
        return stepped

    def _finite_grads(self, params: list[torch.Tensor], norm: torch.Tensor | None) -> bool:
        """A finite loss can still overflow the gradients (a huge lr): stepping on them would
        turn the weights to NaN, whatever --on-nonfinite says. The norm clipping computed, or
        one fused norm; every process holds the same (all-reduced) gradients."""
        if norm is None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if bool(torch.isfinite(norm)):
            return True
        state = self.state
        return self._nonfinite(
            f"gradient norm is {float(norm):g} at step {state.global_step} "
            f"(epoch {state.epoch + 1})"
        )

    def _should_save_step(self) -> bool:
        every = self.config.save_every_steps
        return (
            every is not None
            and self.state.global_step % every == 0
            and self.state.batch_in_epoch < self.batches_per_epoch
        )

    @torch.no_grad()
    def validate(self, model: nn.Module, metrics: EpochMetrics) -> dict[str, float]:
        """Every validation sample once over all ranks (rank r takes samples r, r + W, ...)."""
        model.eval()
        if self.dist.enabled:  # each rank's last forward moved its own batch-norm statistics:
            import torch.distributed as dist  # validate (and save) rank 0's on every rank

            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)
        self._fire("on_validation_start", model)
        try:
            order = torch.arange(self.dist.rank, len(self.data.val), self.dist.world_size)
            for x, y in self._loader(self.data.val, order, train=False):
                x, y = self._to_device(x, y)
                with self._autocast():
                    outputs = model(x)
                    loss = self.loss_fn(outputs, y)
                predictions = self.loss_fn.predictions(outputs)
                metrics.update(predictions, y, *loss_sum(self.loss_fn, outputs, y, loss))
        finally:
            self._fire("on_validation_end", model)
        values, confusion = metrics.compute()
        if metrics is self.val_metrics:
            self.confusion = confusion
        return values

    def _job_sums(self) -> tuple[float, float, float, float]:
        """The running epoch's loss sum, its weight, correct count and samples over every
        process."""
        state = self.state
        sums = torch.tensor(
            [
                state.train_loss_sum,
                state.train_loss_weight,
                state.train_correct,
                float(state.train_samples),
            ],
            dtype=self.sum_dtype,
            device=self.device,
        )
        if self.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(sums)
        return tuple(sums.tolist())

    def _train_metrics(self) -> dict[str, float]:
        loss_sum, loss_weight, correct, samples = self._job_sums()
        values = {"train/loss": loss_sum / loss_weight if loss_weight else math.nan}
        if self.info.task == "classification":
            values["train/accuracy"] = correct / samples if samples else math.nan
        return values

    def end_epoch(self) -> bool:
        """Validate, step the epoch schedule, update counters, save; True to stop early."""
        config, state, monitor = self.config, self.state, self.monitor
        metrics = self._train_metrics()
        metrics.update(self.validate(self.model, self.val_metrics))
        if self.ema is not None:
            metrics.update(self.validate(self.ema.module, self.ema_metrics))
        if not math.isfinite(metrics["val/loss"]):  # the weights themselves are broken
            self._nonfinite(f"validation loss is {metrics['val/loss']:g} after epoch "
                            f"{state.epoch + 1}", can_skip=False)  # fmt: skip
        # what the epoch trained with: a per-step schedule has already moved on to the next
        lr = self.step_lr if self.step_lr is not None else self.optimizer.param_groups[0]["lr"]
        metrics["lr"] = float(lr)
        value = metrics.get(monitor.name)
        self.schedule.step_epoch(value)
        state.epoch += 1
        state.batch_in_epoch = 0
        state.clear_epoch_sums()
        state.last_metrics = metrics
        if value is not None and monitor.better(value, state.best_value):
            state.best_value, state.best_epoch, state.best_metrics = value, state.epoch, metrics
        if value is not None and monitor.better(value, state.early_stop_best, monitor.min_delta):
            state.early_stop_best, state.early_stop_wait = value, 0
        else:
            state.early_stop_wait += 1
        dropped = self.files.rank(state.epoch, value, monitor, state)
        if self.tb is not None:  # before the checkpoint: a resume from an earlier one purges
            epoch_tags = {epoch_tag(k): v for k, v in metrics.items()}  # them, none is lost
            epoch_tags["epoch"] = state.epoch
            step = self._epoch_step()
            self.tb.scalars({k: v for k, v in epoch_tags.items() if k != "lr"}, step)
            if config.log_histograms:
                self.tb.histograms(self.model, step)
        self.save(self.files.epoch_copies(state.epoch, state))
        if self.dist.is_main:
            self.files.remove_old(state.epoch, dropped)
        self.log(self._epoch_line(metrics))
        self._fire("on_epoch_end", metrics)
        return config.stops_early(state.early_stop_wait)

    # --- checkpoints and state -----------------------------------------------------------

    def payload(self) -> dict[str, Any]:
        """The checkpoint (DESIGN.md format v1): tensors and plain values only."""
        state = self.state
        data_order = {
            "seed": self.config.seed,
            "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch,
            "batch_size": self.config.batch_size,
            "shuffle": self.config.shuffle,
            "world_size": self.dist.world_size,
        }
        payload: dict[str, Any] = {
            "format": ckpt_io.FORMAT,
            "format_version": ckpt_io.FORMAT_VERSION,
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.schedule.state_dict(),
            "scaler_state_dict": self.scaler.state_dict(),
            "epoch": state.epoch,
            "global_step": state.global_step,
            "batch_in_epoch": state.batch_in_epoch,
            "loss": state.last_metrics.get("train/loss"),
            "metrics": dict(state.last_metrics),
            "best": {
                "monitor": self.monitor.name,
                "mode": self.monitor.mode,
                "value": state.best_value,
                "epoch": state.best_epoch,
            },
            "config": self.config.to_dict(),
            "data_info": self.info.to_dict(),
            "rng_state": {**capture_rng_state(self.device), "data_order": data_order},
            "callbacks": {"train_state": self._train_state()},
            "meta": ckpt_io.meta(),
        }
        if self.ema is not None:
            payload["ema_state_dict"] = self.ema.module.state_dict()
            payload["callbacks"]["ema"] = {"n_averaged": int(self.ema.n_averaged)}
        if self.checkpoint_extras is not None:
            payload.update(self.checkpoint_extras())
        return payload

    def _train_state(self) -> dict[str, Any]:
        """The counters to save; under DDP the running sums are the whole job's (every process
        saves at the same steps: torchrun's processes take no signals of their own), and rank 0
        takes them back at resume while the others start from zero."""
        saved = self.state.to_dict()
        saved["wall_time_s"] = self._wall_time()
        if self.dist.enabled:
            loss_sum, loss_weight, correct, samples = self._job_sums()
            saved.update(
                train_loss_sum=loss_sum,
                train_loss_weight=loss_weight,
                train_correct=correct,
                train_samples=int(samples),
            )
        return saved

    def save(self, copies: Sequence[Path] = ()) -> None:
        """last.pt (after its `copies`) on rank 0, and the in-memory copy a rollback returns to
        (every rank)."""
        payload = self.payload()
        if self.tb is not None:  # what it logged up to this checkpoint is on disk first
            self.tb.flush()
        if self.dist.is_main:
            path = self.files.write(payload, copies)
            if not self.config_written:
                rundir.write_config(self.run_dir, self.config.to_dict())
                self.config_written = True
            self._fire("on_checkpoint", path)
        if self.config.on_nonfinite == "rollback":
            self._good = _cloned(payload)

    def _snapshot(self) -> dict[str, Any] | None:
        return _cloned(self.payload()) if self.config.on_nonfinite == "rollback" else None

    def load_state(self, ckpt: dict[str, Any], *, replan: bool = False) -> None:
        """Put a checkpoint's weights, optimizer, schedule, scaler, EMA, counters, RNG back;
        `replan` (a resume with --reschedule, once) builds this config's schedule instead."""
        from ptool.core.restore import load_model_state

        load_model_state(self.model, ckpt["model_state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
        saved_schedule = ckpt["scheduler_state_dict"]
        if replan:  # this config's horizon, at the saved position
            from ptool.core.schedules import build_schedule

            for group in self.optimizer.param_groups:
                group["lr"] = group.get("initial_lr", group["lr"])
            self.schedule = build_schedule(
                self.optimizer, self.config, steps_per_epoch=self.steps_per_epoch
            )
            self.schedule.fast_forward(saved_schedule["steps"])
        else:
            self.schedule.load_state_dict(saved_schedule)
        if ckpt.get("scaler_state_dict"):
            self.scaler.load_state_dict(ckpt["scaler_state_dict"])
        if self.ema is not None and "ema_state_dict" in ckpt:
            load_model_state(self.ema.module, ckpt["ema_state_dict"])
            self.ema.n_averaged.fill_(ckpt["callbacks"]["ema"]["n_averaged"])
        self.state = TrainState.from_dict(ckpt["callbacks"]["train_state"])
        self.wall_before = self.state.wall_time_s
        if not self.dist.is_main:  # rank 0 carries the job's running sums
            self.state.clear_epoch_sums()
        restore_rng_state(ckpt["rng_state"], self.device)

    def _rollback(self) -> None:
        """Back to the last good state with the lr halved once per rollback so far: that
        state's optimizer holds the halvings made before it was saved, not the later ones.
        TensorBoard drops what was logged since, as the steps are replayed."""
        rollbacks = self.state.rollbacks + 1
        self.load_state(self._good)
        halved = self.state.rollbacks
        self.state.rollbacks = rollbacks
        self.schedule.scale_lr(0.5 ** (rollbacks - halved))
        if self.tb is not None:
            self.tb.purge_from(self.state.global_step)
            if self.state.global_step == 0:
                self._log_inputs(self.tb)  # purged with everything else at step 0

    def _epoch_step(self) -> int:
        """The TensorBoard step of per-epoch tags: the index of the epoch's last optimizer
        step, so they share the x-axis with `train/loss` and `lr` and a resume purges them
        exactly."""
        return max(self.state.global_step - 1, 0)

    # --- reporting -----------------------------------------------------------------------

    def _bar(self, epoch: int, start: int, total: int):
        from tqdm.auto import tqdm

        return tqdm(
            disable=not self.progress,  # a no-op bar
            total=total,
            initial=start,
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            unit="batch",
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
        )

    def _postfix(self, loss: torch.Tensor, outputs: torch.Tensor, y: torch.Tensor) -> dict:
        postfix = {"loss": f"{float(loss.detach()):.4f}"}
        if self.info.task == "classification":
            accuracy = (outputs.detach().argmax(dim=1) == y).float().mean()
            postfix["acc"] = f"{float(accuracy):.3f}"
        postfix["lr"] = f"{self.optimizer.param_groups[0]['lr']:.2e}"
        return postfix

    def _epoch_line(self, metrics: dict[str, float]) -> str:
        """The usual figures, and the monitored one (it picks best.pt) whatever it is."""
        shown = [
            f"{name} {value:.4f}"
            for name, value in metrics.items()
            if name == self.monitor.name
            or (name != "lr" and name.rsplit("/", 1)[-1] in ("loss", "accuracy", "mae", "r2"))
        ]
        return (
            f"epoch {self.state.epoch}/{self.config.epochs}  "
            + "  ".join(shown)
            + f"  lr {metrics['lr']:.3g}"
        )

    def _wall_time(self) -> float:
        """The run's wall time: earlier sessions (a resume's checkpoint says) and this one."""
        return self.wall_before + time.perf_counter() - self.started

    def _finish(self, status: str, message: str | None) -> RunSummary:
        state = self.state
        wall = self._wall_time()
        samples = state.samples_seen * self.dist.world_size
        summary = RunSummary(
            run_dir=str(self.run_dir),
            status=status,
            epochs=state.epoch,
            global_step=state.global_step,
            monitor=self.monitor.name,
            mode=self.monitor.mode,
            best_value=state.best_value,
            best_epoch=state.best_epoch,
            final_metrics=dict(state.last_metrics),
            best_metrics=dict(state.best_metrics),
            confusion_matrix=self.confusion,
            wall_time_s=round(wall, 3),
            train_time_s=round(state.train_time_s, 3),
            samples_per_s=round(samples / state.train_time_s, 1) if state.train_time_s else 0.0,
            checkpoints=self.files.paths(state),
            seed=self.config.seed,
            device=str(self.device),
            world_size=self.dist.world_size,
            nonfinite_skipped=state.nonfinite_skipped,
            rollbacks=state.rollbacks,
            message=message,
        )
        if self.tb is not None:
            if state.last_metrics:
                final = {k: v for k, v in state.last_metrics.items() if k != "lr"}
                self.tb.hparams(self.config.to_dict(), final, state.global_step, status)
            self.tb.close()  # on disk before summary.json says the run is over
            self.tb = None
        if self.dist.is_main:
            rundir.write_summary(self.run_dir, summary.to_dict())
        self.finished = True  # on every rank: each one's end is decided by all-reduced values
        return summary

    def _fire(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(self, *args)

    def close(self) -> None:
        """Let go of what the run holds, the folder and the process group even when closing
        TensorBoard's log fails (its last write past a full disk left the folder locked)."""
        from ptool.core.data.loader import release_loaders

        tb, self.tb = self.tb, None
        lock, self.lock = self.lock, None
        try:
            release_loaders()
            if tb is not None:
                tb.close()
        finally:
            if lock is not None:
                lock.release()
            shutdown_distributed(self.dist, together=self.finished)


def _cloned(value: Any) -> Any:
    """A deep copy whose tensors are detached clones (the in-memory rollback point)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _cloned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cloned(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_cloned(v) for v in value)
    return value


def fit(config: TrainConfig, **options: Any) -> RunSummary:
    """Train per `config` (or continue `options["resume"]`, a loaded checkpoint) and close the
    trainer; `options` are `Trainer`'s. See the module doc."""
    trainer = Trainer(config, **options)
    try:
        return trainer.fit()
    finally:
        trainer.close()
