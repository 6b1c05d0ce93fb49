"""`ptool resume` and `ptool train --resume`: continue a run exactly where its checkpoint left it.

Torch-free at import: `ptool --help` reads RESUMABLE to list the resume flags.

Only what does not change what is trained may differ at resume (how long, where, how it is
reported); anything else is a new run, which `ptool train --init-from CKPT` starts from the
checkpoint's weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from shlex import quote
from typing import Any

from ptool.core import rundir
from ptool.core.config import FIELDS, TrainConfig, as_flag, default_weight_decay
from ptool.core.errors import PtoolError, UsageError, count
from ptool.core.trust import trust_flag

# The flags a resume accepts: duration, early stopping, output, logging, device, and the
# DataLoader's workers (each sample's augmentation draws do not depend on which one serves it).
RESUMABLE = (
    "epochs",
    "early_stop_patience",
    "out",
    "device",
    "num_workers",
    "pin_memory",
    "persistent_workers",
    "progress",
    "tensorboard",
    "log_every_steps",
    "log_histograms",
    "log_graph",
    "save_every_steps",
    "keep_last",
    "download",  # the user's to give: a checkpoint's own is dropped (restore.config_and_info)
)
# Schedules with no horizon for --reschedule to re-plan.
NO_HORIZON = ("none", "constant", "plateau")


@dataclass
class ResumePlan:
    """What `resume_run` will do; `notes` are the lines to tell the user first."""

    checkpoint: Path
    ckpt: dict[str, Any]
    config: TrainConfig
    reschedule: bool
    notes: list[str] = field(default_factory=list)


def find_checkpoint(path: str | Path | None) -> Path:
    """A checkpoint file as given, or the newest valid one in a run directory (default: the
    newest run under ./runs)."""
    from ptool.core.checkpoint import find_default_checkpoint, newest_valid_checkpoint

    if path is None:  # the run whose last.pt is newest: files that prune or quantize add to a
        # run directory do not make it the newest run, as they do not for eval's best.pt
        path = find_default_checkpoint(name="last.pt").parent
    path = Path(path)
    if not path.is_dir():
        return path
    try:
        return newest_valid_checkpoint(path)
    except PtoolError as exc:
        if any(path.glob("*.pt")):
            hint = "each is torn or not a training state; ptool inspect-checkpoint FILE says why"
        elif (path / rundir.CONFIG_NAME).is_file():  # a run killed before its first checkpoint
            hint = (
                "it stopped before its first checkpoint; start it again: ptool train --config "
                f"{quote(str(path / rundir.CONFIG_NAME))} --out {quote(str(path))}"
            )
        else:
            hint = f"it holds no checkpoint and no {rundir.CONFIG_NAME}: not a run directory"
        raise PtoolError(str(exc), hint=hint) from None


def _refuse_changes(saved: TrainConfig, overrides: dict[str, Any], checkpoint: Path) -> None:
    from ptool.core.schedules import monitor_mode, resolve_interval

    # what a default stands for in the run: `--mode min` passes for a run whose auto means
    # min, `--weight-decay 0.01` for an AdamW run's PyTorch default
    resolved = {
        "mode": monitor_mode,
        "weight_decay": default_weight_decay,
        "scheduler_interval": resolve_interval,
    }
    for name, value in overrides.items():
        if name in RESUMABLE or getattr(saved, name) == value:
            continue
        if name == "data" and _same_kind_of_file(saved.data, value):
            continue  # moved, or named from elsewhere: the engine checks it is the same data
        if name in resolved and resolved[name](saved) == resolved[name](
            saved.replace(**{name: value})
        ):
            continue
        _refuse_unread_option(saved, name, value)
        section = FIELDS[name].metadata["section"]
        what = {"model": "the model", "data": "the data", "optimizer": "the optimizer"}.get(
            section, f"the {section} settings"
        )
        flag = as_flag(name, value)
        raise UsageError(
            f"{flag} changes {what} of the run being resumed (it has "
            f"{as_flag(name, getattr(saved, name))}); "
            "a new run can start from its weights with --init-from",
            hint=f"ptool train --init-from {quote(str(checkpoint))} {flag} ...",
        )


def _same_kind_of_file(saved: str, given: str) -> bool:
    """--data naming a file source of the run's kind elsewhere (a relative path given from
    another folder, a moved file); its samples, classes, columns and statistics must then be
    the run's, or the resume is refused before anything trains."""
    from ptool.core.data.sources import PREFIXED

    kind, sep, _ = saved.partition(":")
    return bool(sep) and kind in PREFIXED and given.startswith(f"{kind}:")


def _init_from_is_a_new_run(where: str) -> UsageError:
    return UsageError(
        f"{where}--init-from starts a new run from a checkpoint's weights; resuming continues "
        "a run with all of its state",
        hint="give one of them: ptool resume CKPT, or ptool train --init-from CKPT",
    )


def _refuse_unread_option(saved: TrainConfig, name: str, value: Any) -> None:
    """`--hidden` on a cnn run changes nothing the run reads: say that, as train does, rather
    than call it a model change (and hint at an --init-from that train would refuse too)."""
    from ptool.core.checks import check_model_and_data_options

    if name in ("model", "data", "augment"):  # a change of what reads the options
        return
    try:
        check_model_and_data_options(saved)
    except UsageError:  # an older ptool's config: another option would be named
        return
    try:
        check_model_and_data_options(saved.replace(**{name: value}))
    except UsageError as exc:
        raise UsageError(str(exc), hint="drop it") from None


def _run_identity(config: Any) -> dict[str, Any] | None:
    """What two checkpoints of one run share: their config, but for what a resume may change
    (the schedule's kept horizon with it), with the defaults of fields a checkpoint from an
    older ptool lacks."""
    try:
        values = TrainConfig.from_dict(config).to_dict()
    except (PtoolError, TypeError, AttributeError):  # not a config this ptool reads
        return None
    changing = {*RESUMABLE, "schedule_epochs"}
    return {name: value for name, value in values.items() if name not in changing}


def _refuse_foreign_files(checkpoint: Path, ckpt: dict[str, Any]) -> None:
    """Continuing in the checkpoint's own directory rewrites its last.pt, best.pt, ...: refuse
    when those are another run's (a checkpoint copied into someone else's run directory)."""
    from ptool.core.inspect.reader import Refused, read

    mine = _run_identity(ckpt.get("config"))

    def same_run(path: Path) -> bool:
        if path.resolve() == checkpoint.resolve():
            return True
        try:
            theirs = read(path).obj  # the config only: no tensor is read
        except Refused:  # another tool's file
            return False
        except PtoolError:  # a torn or corrupt file holds no run to lose
            return True
        same = isinstance(theirs, dict) and _run_identity(theirs.get("config")) == mine
        return same and mine is not None

    found = rundir.run_checkpoints(checkpoint.parent, same_run=same_run)
    if found:
        raise UsageError(
            f"{checkpoint.parent} holds another run's checkpoints ({found}); continuing "
            f"{checkpoint.name} there would replace them",
            hint=f"continue it in a directory of its own: ptool resume {quote(str(checkpoint))}"
            f"{_trust(ckpt)} --out DIR",
        )


def _refuse_other_world_size(ckpt: dict[str, Any], checkpoint: Path) -> str:
    """The data order, the batches and the steps per epoch depend on the number of processes
    (each takes every world_size-th sample): a resume must run as many as the run did.
    Returns the command that resumes it (under torchrun for more than one), for the hints."""
    saved = ckpt["rng_state"].get("data_order", {}).get("world_size", 1)
    now = rundir.job_size()
    command = f"{rundir.resume_command(saved)} {quote(str(checkpoint))}{_trust(ckpt)}"
    if saved != now:
        raise UsageError(
            f"{checkpoint} was trained by {saved} process{'es' if saved > 1 else ''}, this "
            f"resume runs {now}: the data order and steps per epoch depend on it",
            hint=f"resume it as it ran: {command}" + (" (without torchrun)" if saved == 1 else ""),
        )
    return command


def _trust(ckpt: dict[str, Any]) -> str:
    """--trust-code in a hint's command, where the run's model is the user's own code."""
    return trust_flag((ckpt.get("config") or {}).get("model"))


# What the engine's load_state reads: a checkpoint without them is a weights-only file.
NEEDED = ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "rng_state",
          "callbacks", "epoch", "global_step")  # fmt: skip


def _refuse_derived(ckpt: dict[str, Any], checkpoint: Path) -> None:
    recipe, shown = ckpt.get("quantization"), quote(str(checkpoint))
    if recipe and recipe.get("converted") is False:
        raise UsageError(
            f"{checkpoint} belongs to a `ptool quantize qat` run",
            hint=f"continue it with: ptool quantize qat --resume {shown}{_trust(ckpt)}",
        )
    if recipe:
        raise UsageError(
            f"{checkpoint} is a quantized model, not a training checkpoint",
            hint="resume the run it came from (its last.pt)",
        )
    missing = [key for key in NEEDED if key not in ckpt]
    if missing:
        # a pruned model's shapes or masks are not the config's: prune rebuilds them
        again = f"ptool prune {shown}{_trust(ckpt)} --amount 0 --finetune-epochs 3"
        raise PtoolError(
            f"{checkpoint} cannot be resumed: it has no {', '.join(missing)}",
            hint=f"fine-tune it with: {again}"
            if ckpt.get("pruning")
            else f"start a new run from its weights: ptool train --init-from {shown}",
        )


def plan_resume(
    path: str | Path | None,
    overrides: dict[str, Any],
    *,
    config_file: str | Path | None = None,
    reschedule: bool = False,
    unsafe: bool = False,
) -> ResumePlan:
    """Load the checkpoint, check the overrides (flags over a --config file's values), and say
    what will happen to the schedule."""
    from ptool.core.checkpoint import load_checkpoint
    from ptool.core.checks import check_overrides
    from ptool.core.config import read_config_file
    from ptool.core.inspect.reader import UNSAFE_HINT

    if overrides.get("init_from"):
        raise _init_from_is_a_new_run("")
    from_file = read_config_file(config_file) if config_file else {}
    given = {**from_file, **overrides}
    check_overrides(given)
    if "device" in given:  # before the checkpoint is read, as the other flags
        from ptool.core.runtime import resolve_device

        resolve_device(given["device"])
    checkpoint = find_checkpoint(path)
    ckpt = load_checkpoint(checkpoint, unsafe=unsafe, refusal_hint=UNSAFE_HINT)
    _refuse_derived(ckpt, checkpoint)
    from ptool.core.restore import config_and_info

    saved, _ = config_and_info(ckpt, checkpoint)
    if "out" not in overrides and given.get("out") == saved.out:
        del given["out"]  # the run's own config.yaml, which names where it was started
    if given.get("init_from") not in (None, saved.init_from):  # a file's, not the run's own
        raise _init_from_is_a_new_run(f"{config_file}: ")
    _refuse_changes(saved, overrides, checkpoint)
    try:
        _refuse_changes(saved, {k: v for k, v in given.items() if k not in overrides}, checkpoint)
    except UsageError as exc:  # a value of the file: named as check_file_values names it
        raise UsageError(f"{config_file}: {exc}", hint=exc.hint) from None
    config = saved.replace(**{k: v for k, v in given.items() if k in (*RESUMABLE, "data")})
    moved = not given.get("out")
    if moved:  # the run continues where its checkpoint is now
        config = config.replace(out=str(checkpoint.parent))
    # a process training there now: before any "resuming"; rank 0 only, which takes the lock
    # (another rank's probe could find rank 0's own)
    if Path(config.out).is_dir() and rundir.speaks_for_the_job():
        rundir.RunDirLock(Path(config.out)).release()
    if Path(config.out).resolve() == checkpoint.parent.resolve():
        _refuse_foreign_files(checkpoint, ckpt)
    else:
        rundir.refuse_other_run(config.out)
    command = _refuse_other_world_size(ckpt, checkpoint)
    _refuse_finished(ckpt, checkpoint, config, saved, command)
    done, step = ckpt["epoch"], ckpt["global_step"]
    plan = ResumePlan(checkpoint, ckpt, config, reschedule)
    batch = ckpt.get("batch_in_epoch") or 0
    where = f"epoch {done + 1}/{config.epochs}" + (f", batch {batch + 1}" if batch else "")
    plan.notes.append(f"resuming {checkpoint} at {where} (step {step})")
    last = checkpoint.parent / "last.pt"
    if checkpoint != last and (path is None or Path(path).is_dir()) and last.exists():
        plan.notes.append(f"{last} does not load (torn or corrupt): skipped for {checkpoint.name}")
    if moved and saved.out and not _saved_in(saved.out, Path(config.out)):
        plan.notes.append(f"writing to {config.out} (the run was saved from {saved.out})")
    _plan_schedule(plan, saved, command)
    return plan


def _saved_in(out: str, folder: Path) -> bool:
    """Whether a run whose --out was `out` was saved in `folder`: a relative --out names it
    from the folder the run was started in, which can be any, so its last parts must match."""
    if Path(out).resolve() == folder.resolve():
        return True
    if Path(out).is_absolute():
        return False
    parts = Path(os.path.normpath(out)).parts
    parts = parts[len(parts) - parts[::-1].index("..") :] if ".." in parts else parts  # below
    return not parts or folder.resolve().parts[-len(parts) :] == parts


def _refuse_finished(
    ckpt: dict[str, Any], checkpoint: Path, config: TrainConfig, saved: TrainConfig, command: str
) -> None:
    """A run that stopped early (by the engine's rule) or has trained --epochs already has
    nothing to resume; the hint gives the flag that lets it go on."""
    done = ckpt["epoch"]
    wait = ckpt.get("callbacks", {}).get("train_state", {}).get("early_stop_wait", 0)
    patience = config.early_stop_patience
    at_epoch_end = done > 0 and not ckpt.get("batch_in_epoch")
    if at_epoch_end and config.stops_early(wait):
        raise UsageError(
            f"{checkpoint} stopped early: {config.monitor} did not improve for "
            f"{count(wait, 'epoch')} (--early-stop-patience {patience})",
            hint=f"continue it with more patience: {command} "
            f"--early-stop-patience {wait + max(1, patience)}",
        )
    if done >= config.epochs:
        shorter = config.epochs != saved.epochs  # --epochs given, and not past the progress
        raise UsageError(
            f"{checkpoint} has trained {count(done, 'epoch')} already; --epochs is the "
            f"total, so {config.epochs} adds none"
            if shorter
            else f"{checkpoint} has finished its {count(done, 'epoch')}",
            hint=f"extend the run: {command} --epochs {rundir.longer(done)}",
        )


def _plan_schedule(plan: ResumePlan, saved: TrainConfig, command: str) -> None:
    """What the LR schedule does over the resumed run: its saved horizon (a resume that
    changed --epochs without --reschedule kept it, and the run's config says so with
    --schedule-epochs: config.yaml and lr-plot give the schedule the run follows), or
    re-planned for the new total."""
    ckpt, config = plan.ckpt, plan.config
    reschedule, step = plan.reschedule, ckpt["global_step"]
    planned = ckpt["scheduler_state_dict"].get("planned_epochs", saved.epochs)
    if reschedule and saved.scheduler in NO_HORIZON:
        plan.notes.append(f"--reschedule: the {saved.scheduler} schedule has no horizon to re-plan")
        plan.reschedule = False
    elif reschedule:
        plan.config = config.replace(schedule_epochs=None)
        plan.notes.append(
            f"schedule re-planned for {count(config.epochs, 'epoch')}, now at step {step}"
        )
    elif config.epochs > planned and saved.scheduler == "onecycle":
        raise UsageError(
            f"onecycle was planned for {count(planned, 'epoch')} and cannot step past its end",
            hint=f"re-plan it for the new total: {command} --epochs {config.epochs} --reschedule",
        )
    elif config.epochs != planned and saved.scheduler not in NO_HORIZON:
        if saved.scheduler == "onecycle" or (saved.scheduler == "cosine" and saved.t_max is None):
            plan.config = config.replace(schedule_epochs=planned)  # the schedules it shapes
        plan.notes.append(
            f"schedule continues from its saved state (planned for {count(planned, 'epoch')}"
            + (
                ": past them the cosine rises again from its floor"
                if _periodic_past(saved, planned, config)
                else ""
            )
            + "); --reschedule re-plans it for the new total"
        )


def _periodic_past(saved: TrainConfig, planned: int, config: TrainConfig) -> bool:
    """Whether the run goes past the end of a cosine that spans its planned epochs: PyTorch's
    CosineAnnealingLR is periodic, so the lr rises from eta_min again there."""
    return saved.scheduler == "cosine" and saved.t_max is None and config.epochs > planned


def resume_run(plan: ResumePlan, **fit_options: Any):
    """Continue the run; pruned runs keep their compacted model and their recipe."""
    from ptool.core.engine import fit
    from ptool.core.restore import model_from_checkpoint

    ckpt = plan.ckpt
    # rebuilt as eval and predict rebuild it (a model that cannot be is exit 1, a bad file)
    model = model_from_checkpoint(ckpt, load_weights=False)
    extras: Callable[[], dict[str, Any]] | None = None
    if ckpt.get("pruning"):
        extras = lambda: {"pruning": ckpt["pruning"]}  # noqa: E731
    if plan.config.out != str(plan.checkpoint.parent):
        rundir.prepare_run_dir(plan.config.out)
    return fit(
        plan.config,
        resume=ckpt,
        model=model,
        checkpoint_extras=extras,
        reschedule=plan.reschedule,
        **fit_options,
    )
