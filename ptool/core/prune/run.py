"""`ptool prune`: checkpoint in, pruned (optionally fine-tuned) checkpoint and a report out.

The model comes back from the checkpoint (`restore.model_from_checkpoint`: an input pruned
before keeps its masks or compacted shapes), the masks come from torch.nn.utils.prune
(`masks`), `--compact` shrinks the model with Torch-Pruning (`compact`), and fine-tuning
drives the training engine's `fit()` with the pruned model, so the pruned weights stay zero
(the masks are part of the model) and the engine's checkpoints carry the pruning recipe.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptool.core import benchmark
from ptool.core import checkpoint as ckpt_io
from ptool.core.config import TrainConfig
from ptool.core.errors import UsageError, count
from ptool.core.prune import compact as compaction
from ptool.core.prune import masks
from ptool.core.prune.options import (
    STRUCTURED,
    PruneOptions,
    check_options,
    default_output,
    draws_at_random,
)


def refuse_quantized(ckpt: dict[str, Any], path: Path) -> None:
    recipe = ckpt.get("quantization")
    if recipe:
        raise UsageError(
            f"{path} is quantized ({recipe.get('mode')}); ptool prunes float checkpoints",
            hint="prune the float checkpoint first, then quantize the pruned one",
        )


def step_run_dir(out: str, step: int, steps: int) -> str:
    """Where step `step` of `steps` fine-tunes: --out itself, or --out/step-K when iterative."""
    return str(Path(out) / f"step-{step}") if steps > 1 else out


def _permanent(model: nn.Module) -> nn.Module:
    """A copy with the masks baked into plain weights: what runs after `prune.remove`."""
    dense = copy.deepcopy(masks.refresh_weights(model)).eval()
    masks.make_permanent(dense)
    return dense


def layer_snapshot(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Shape, size and nonzero count of every conv/linear weight (masks applied)."""
    snapshot = {}
    for name, module in masks.prunable_layers(model).items():
        weight = masks.effective_weight(module)
        snapshot[name] = {
            "kind": type(module).__name__,
            "shape": list(weight.shape),
            "params": weight.numel(),
            "nonzero": int(weight.count_nonzero()),
        }
    return snapshot


def parameter_counts(model: nn.Module) -> dict[str, int]:
    dense = _permanent(model)
    params = list(dense.parameters())
    return {
        "parameters": sum(p.numel() for p in params),
        "nonzero": sum(int(p.count_nonzero()) for p in params),
    }


def layer_rows(
    before: dict[str, dict[str, Any]],
    after: dict[str, dict[str, Any]],
    selected: list[str],
    tied: dict[str, str],
) -> list[dict[str, Any]]:
    """One row per conv/linear layer: sparsity is the share of its original weights that are
    zero or removed."""
    rows = []
    for name, old in before.items():
        new = after[name]
        rows.append(
            {
                "name": name,
                "kind": old["kind"],
                "selected": name in selected,
                "shape_before": old["shape"],
                "shape_after": new["shape"],
                "params_before": old["params"],
                "params_after": new["params"],
                "nonzero_before": old["nonzero"],
                "nonzero_after": new["nonzero"],
                "sparsity": 1 - new["nonzero"] / old["params"] if old["params"] else 0.0,
                "channels_follow": tied.get(name),
            }
        )
    return rows


def global_sparsity(rows: list[dict[str, Any]]) -> dict[str, Any]:
    chosen = [r for r in rows if r["selected"]]
    weights = sum(r["params_before"] for r in chosen)
    nonzero = {when: sum(r[f"nonzero_{when}"] for r in chosen) for when in ("before", "after")}
    return {
        "selected_layers": len(chosen),
        "weights_before": weights,
        "nonzero_before": nonzero["before"],
        "nonzero_after": nonzero["after"],
        "sparsity_before": 1 - nonzero["before"] / weights if weights else 0.0,
        "sparsity": 1 - nonzero["after"] / weights if weights else 0.0,
    }


class Pruner:
    """One `ptool prune` job: the steps (prune, maybe compact, maybe fine-tune) on one model."""

    def __init__(
        self,
        model: nn.Module,
        options: PruneOptions,
        selected: list[str],
        example: torch.Tensor,
        log: Callable[[str], None],
    ):
        self.model = model
        self.options = options
        self.selected = selected
        self.example = example
        self.log = log
        self.tied: dict[str, str] = {}

    def layers(self) -> dict[str, nn.Module]:
        return {name: self.model.get_submodule(name) for name in self.selected}

    def _trace(self) -> compaction.Compactor:
        """A fresh trace of the model as it is now (a compaction changes its shapes)."""
        flag = "--method bn-scale" if self.options.method == "bn-scale" else "--compact"
        return compaction.Compactor(self.model, self.example, flag)

    def tie(self) -> None:
        """--compact: selected layers whose output channels are tied to an earlier selected
        layer's (`tied`: follower -> leader) lose the leader's channels and are not ranked
        themselves. A tie to a layer the filter leaves out is refused: compacting would shrink
        the layer the user asked to keep."""
        options = self.options
        layers = self.layers()
        reasons = masks.left_out(
            self.model,
            options.modules,
            only=options.only,
            exclude=options.exclude,
            include_head=options.include_head,
        )
        for group in self._trace().tied_outputs(layers):
            chosen = [name for name in group if name in layers]
            outside = [name for name in group if name not in layers]
            if outside:
                raise self._tied_to_left_out(chosen, outside, reasons[outside[0]])
            self.tied.update({follower: chosen[0] for follower in chosen[1:]})
        for follower, leader in self.tied.items():  # once no refusal can follow
            self.log(f"{follower}: output channels tied to {leader}'s, removed with them")

    def _tied_to_left_out(self, chosen: list[str], outside: list[str], reason: str) -> UsageError:
        """The refusal names the first layer left out; the hint, every layer of the group."""
        head = masks.head_name(self.model)  # its classes stay: it cannot be selected
        selecting = "" if head in outside else f"select {', '.join(outside)} too, or "
        return UsageError(
            f"--compact: {chosen[0]}'s output channels are tied to {outside[0]}'s (e.g. by a "
            f"residual add), which {reason}",
            hint=f"{selecting}leave out {', '.join(chosen)}",
        )

    def step(self, counts: dict[str, int]) -> None:
        options = self.options
        groups = masks.tied_groups(self.layers(), self.tied)
        for group in groups.values():
            masks.mask_tied_channels(group)
        layers = {name: group[0] for name, group in groups.items()}
        graph = self._trace() if options.compact or options.method == "bn-scale" else None
        scores = graph.bn_scales(layers) if options.method == "bn-scale" else None
        masks.prune_layers(
            layers, options.method, counts, n=options.n, dim=options.dim, scores=scores
        )
        if not options.compact:
            return
        chosen = {name: masks.pruned_slices(masks.mask_of(m), 0) for name, m in layers.items()}
        masks.make_permanent(self.model)
        for name, module in layers.items():
            graph.remove(module, name, chosen[name])

    def recalibrate_bn(self, config: TrainConfig, data: Any, seed: int) -> None:
        batches = self.options.recalibrate_bn
        norms = recalibrate_batchnorm(self.model, config, data, batches, seed)
        self.log(
            f"re-estimated the statistics of {norms} batch-norm layers on {batches} training "
            "batches"
            if norms
            else "--recalibrate-bn: the model has no batch-norm layers"
        )


def recalibrate_batchnorm(
    model: nn.Module, config: TrainConfig, data: Any, batches: int, seed: int
) -> int:
    """Re-estimate batch-norm running statistics on `batches` shuffled training batches, with
    torch's `swa_utils.update_bn` (a cumulative average, no gradients); returns how many
    layers. Removing channels shifts what every later layer sees, and the statistics measured
    before can cost more accuracy than the removed channels themselves."""
    from itertools import islice

    from torch.optim.swa_utils import update_bn

    from ptool.core.data import make_loader

    norms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if norms:
        order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))
        update_bn(islice(make_loader(data.train, config, order, train=True), batches), model)
    return norms


def _recipe(
    options: PruneOptions,
    model: nn.Module,
    selected: list[str],
    previous: dict[str, Any] | None,
    source: Path,
    seed: int,
) -> dict[str, Any]:
    structured = options.method in STRUCTURED
    compacted = options.compact or bool(previous and previous.get("compacted"))
    recipe: dict[str, Any] = {
        "method": options.method,
        "amount": options.amount,
        "n": options.n if options.method == "ln-structured" else None,
        "dim": options.dim if structured else None,
        "steps": options.steps,
        "finetune_epochs": options.finetune_epochs,
        "recalibrate_bn": options.recalibrate_bn,
        "layers": list(selected),
        "compacted": compacted,
        "architecture": compaction.architecture(model) if compacted else None,
        "masks": masks.has_masks(model),
        "library": "torch.nn.utils.prune" + (" + torch_pruning" if options.compact else ""),
        "seed": seed if draws_at_random(options) else None,
        "source": str(source),
        "torch_version": str(torch.__version__),
    }
    if options.compact:
        import torch_pruning

        recipe["torch_pruning_version"] = torch_pruning.__version__
    if previous:
        recipe["previous"] = previous
    return recipe


def _finetune(
    pruner: Pruner,
    config: TrainConfig,
    data: Any,
    extras: Callable[[], dict[str, Any]],
    *,
    quiet: bool,
) -> dict[str, Any]:
    """E epochs through the training engine on the pruned model; keeps the best epoch."""
    from ptool.core.engine import fit
    from ptool.core.signals import Interrupted

    try:
        summary = fit(
            config,
            quiet=quiet,
            log=pruner.log,
            model=pruner.model,
            data=data,
            checkpoint_extras=lambda: {"pruning": extras()},
        )
    except Interrupted as exc:  # what its resume gives, and what it does not
        exc.hint = (
            f"{exc.hint}; its best.pt is then the pruned, fine-tuned model (this prune's report "
            "and output file are not written)"
        )
        raise
    best = summary.checkpoints.get("best")
    if best:
        pruner.model.load_state_dict(ckpt_io.load_checkpoint(best)["model_state_dict"])
    # fit() moved it to its device; pruning and the report run here. The masked `weight`
    # attributes are neither parameters nor buffers: recompute them from the weights now held
    # (else the next step ranks the last training forward's copy, on the fit() device)
    masks.refresh_weights(pruner.model.cpu()).eval()
    return summary.to_dict()


def latency_report(models: dict[str, nn.Module], x: torch.Tensor, runs: int) -> dict[str, Any]:
    """Median forward time of the dense ("before") and pruned ("after") models on `x`, taking
    turns call by call in this process, and their ratio."""
    latency = benchmark.latency_ms(models, x, runs=runs)
    before, after = latency["before"].median, latency["after"].median
    return {
        "batch_size": len(x),
        "threads": torch.get_num_threads(),
        "runs": runs,
        "before_ms": round(before, 4),
        "after_ms": round(after, 4),
        "speedup": round(before / after, 3),
        "spread": round(benchmark.relative_spread(latency.values()), 3),
    }


def _finetune_base(
    config: TrainConfig, info: Any, path: Path, options: PruneOptions
) -> TrainConfig:
    """The fine-tune config every step starts from (the run's, with the flags given), checked
    as `ptool train` checks a new run; no step's run directory may hold another run."""
    from ptool.core.checks import check_config, check_monitor
    from ptool.core.restore import finetune_config
    from ptool.core.rundir import refuse_other_run
    from ptool.core.runtime import resolve_device

    base = finetune_config(
        config, path, "prune", options.train_overrides, epochs=options.finetune_epochs
    )
    check_config(base)
    check_monitor(base, info)
    resolve_device(base.device)
    for k in range(1, options.steps + 1):
        refuse_other_run(step_run_dir(base.out, k, options.steps))
    return base


def _select_layers(model: nn.Module, options: PruneOptions) -> dict[str, nn.Module]:
    """The layers --modules/--only/--exclude/--include-head pick; a structured method may not
    remove the head's output classes."""
    layers = masks.select_layers(
        model,
        options.modules,
        only=options.only,
        exclude=options.exclude,
        include_head=options.include_head,
    )
    head = masks.head_name(model)
    # an out-of-range --dim is refused with the layer's shape by check_sizes
    if (
        options.method in STRUCTURED
        and head in layers
        and options.dim in (0, -layers[head].weight.dim())
    ):
        raise UsageError(
            f"--include-head with {options.method} along --dim {options.dim} would remove "
            f"output classes of {head}",
            hint="drop --include-head"
            if options.method == "bn-scale"
            else "drop --include-head, or use --dim 1 (its inputs) without --compact",
        )
    return layers


def _schedules(
    model: nn.Module,
    layers: dict[str, nn.Module],
    tied: dict[str, str],
    options: PruneOptions,
    log: Callable[[str], None],
) -> dict[str, list[int]]:
    """Per layer, how many weights (or channels) are pruned after each step, counted from
    those the input has not pruned already; refuses an amount a layer cannot give. A layer
    `tied` to a leader (--compact) has no schedule: the leader's counts the channels left in
    all of them."""
    structured = options.method in STRUCTURED
    if options.compact:
        baked = masks.make_permanent(model)
        if baked:
            tensors = count(len(baked), "tensor")
            log(f"--compact: made the input's masks permanent first ({tensors})")
    for module in layers.values():  # the input's zeros are pruned already: count from the rest
        masks.mask_zeros(module, options.dim if structured else None)
    groups = masks.tied_groups(layers, tied)
    sizes = masks.check_sizes(options.amount, groups, options.method, options.dim)
    schedules = {
        name: masks.schedule(options.amount, size, options.steps) for name, size in sizes.items()
    }
    if options.compact:
        for name, size in sizes.items():
            if not size:  # the input's masks emptied every channel (tied layers: between them)
                raise UsageError(
                    f"--compact would remove every channel of {name}: the input has pruned "
                    "them all already",
                    hint=f"leave out {name} with --exclude, or compact an earlier checkpoint",
                )
            if schedules[name][-1] >= size:
                raise UsageError(
                    f"--amount {options.amount} would remove all {size} channels of {name}",
                    hint="--compact keeps at least one channel per layer: give a smaller amount",
                )
    return schedules


def prune_checkpoint(
    path: str | Path | None,
    options: PruneOptions,
    *,
    log: Callable[[str], None] = lambda _: None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Prune the checkpoint at `path` (default: the newest runs/*/best.pt), fine-tune if
    asked, write the result and return the report."""
    check_options(options)
    if path is None:
        path = ckpt_io.find_default_checkpoint()
        log(f"using the newest run's checkpoint: {path}")
    path = Path(path)
    output = Path(options.output) if options.output else default_output(path)
    ckpt_io.check_output(output, path, f"-o {output}")
    ckpt = ckpt_io.load_checkpoint(path)
    refuse_quantized(ckpt, path)

    from ptool.core.checks import check_config
    from ptool.core.restore import config_and_info, model_from_checkpoint, note_ema_left_out

    config, info = config_and_info(ckpt, path)
    config = config.replace(download=options.download)
    note_ema_left_out(ckpt, "prune", log)
    if "batch_size" in options.train_overrides:  # the latency's batch, fine-tuning or not
        config = config.replace(batch_size=options.train_overrides["batch_size"])
        check_config(config)
    # its flags are checked before any pruning work
    base_config = _finetune_base(config, info, path, options) if options.finetune_epochs else None
    model = model_from_checkpoint(ckpt).eval()
    layers = _select_layers(model, options)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, *info.input_shape, generator=generator)
    selected = list(layers)
    pruner = Pruner(model, options, selected, example, log)
    if options.compact:  # its refusals come before any pruning work
        pruner.tie()
    schedules = _schedules(model, layers, pruner.tied, options, log)

    data = None
    if options.evaluate or options.finetune_epochs or options.recalibrate_bn:
        from ptool.core.data import build_data

        data = build_data(config)
    from ptool.core.evaluate import Evaluator

    # under the run's --precision, as its validation and `ptool eval` compute them
    evaluator = Evaluator(config, data, config.precision) if options.evaluate else None

    before_model = _permanent(model)
    before_layers = layer_snapshot(model)
    before_counts = parameter_counts(model)
    before_metrics = evaluator(model) if evaluator else None

    seed = options.train_overrides.get("seed", config.seed)
    seed = 0 if seed is None else seed
    torch.manual_seed(seed)
    previous = ckpt.get("pruning")

    sparsity = 0.0  # of the selected weights, after the latest step

    def recipe() -> dict[str, Any]:
        """What the model is now: also in the fine-tune run's checkpoints."""
        return {
            **_recipe(options, pruner.model, selected, previous, path, seed),
            "sparsity": sparsity,
        }

    history: list[dict[str, Any]] = []
    for k in range(1, options.steps + 1):
        counts = {
            name: schedule[k - 1] - (schedule[k - 2] if k > 1 else 0)
            for name, schedule in schedules.items()
        }
        pruner.step(counts)
        rows = layer_rows(before_layers, layer_snapshot(pruner.model), selected, pruner.tied)
        totals = global_sparsity(rows)
        sparsity, already = totals["sparsity"], totals["sparsity_before"]
        log(
            f"step {k}/{options.steps}: {options.method} pruned {sparsity:.2%} "
            "of the selected weights" + (f" ({already:.2%} were already)" if already else "")
        )
        if options.recalibrate_bn:
            pruner.recalibrate_bn(config, data, seed + k)
        entry: dict[str, Any] = {
            "step": k,
            "sparsity": sparsity,
            "metrics_after_pruning": evaluator(pruner.model) if evaluator else None,
            "metrics_after_finetune": None,
            "finetune": None,
        }
        if base_config is not None:
            run_config = base_config.replace(out=step_run_dir(base_config.out, k, options.steps))
            log(f"fine-tuning {count(options.finetune_epochs, 'epoch')} in {run_config.out}")
            entry["finetune"] = _finetune(pruner, run_config, data, recipe, quiet=quiet)
            entry["metrics_after_finetune"] = evaluator(pruner.model) if evaluator else None
        history.append(entry)

    if options.make_permanent:
        masks.make_permanent(pruner.model)
    model = pruner.model.eval()
    after_layers = layer_snapshot(model)
    rows = layer_rows(before_layers, after_layers, selected, pruner.tied)
    final_recipe = recipe()
    state = model.state_dict()

    last = history[-1]
    metrics = {
        "before": before_metrics,
        "after_pruning": last["metrics_after_pruning"],
        "after_finetune": last["metrics_after_finetune"],
    }
    final_metrics = metrics["after_finetune"] or metrics["after_pruning"] or {}
    ckpt_io.save_derived(ckpt, state, final_metrics, output, pruning=final_recipe)

    x = torch.randn(config.batch_size, *info.input_shape, generator=generator)
    models = {"before": before_model, "after": _permanent(model)}
    states = {"before": ckpt["model_state_dict"], "after": state}
    return {
        "checkpoint": str(path),
        "output": str(output),
        "method": options.method,
        "amount": options.amount,
        "n": final_recipe["n"],
        "dim": final_recipe["dim"],
        "steps": options.steps,
        "finetune_epochs": options.finetune_epochs,
        "recalibrate_bn": options.recalibrate_bn,
        "compacted": options.compact,
        "masks": final_recipe["masks"],
        "layers": rows,
        "global": global_sparsity(rows),
        "parameters": {"before": before_counts, "after": parameter_counts(model)},
        "file_bytes": {k: benchmark.serialized_bytes(v) for k, v in states.items()},
        "gzip_bytes": {k: benchmark.compressed_bytes(v) for k, v in states.items()},
        "latency": latency_report(models, x, options.bench_runs),
        "metrics": metrics,
        "history": history,
        "recipe": {k: v for k, v in final_recipe.items() if k not in ("architecture", "previous")},
    }
