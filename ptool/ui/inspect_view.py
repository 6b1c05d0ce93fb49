"""Rich rendering of an inspect-checkpoint report (the JSON view is the report itself)."""

from __future__ import annotations

import itertools
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from ptool.core.errors import count
from ptool.ui.tables import Fitted, human_bytes, human_count

SCHEDULER_ROWS = 50  # fields of a scheduler's state shown; --json has every one


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_value(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return "-" if v is None else str(v)


def _table(*columns: str, text: tuple[str, ...] = ()) -> Table:
    """The first column (names) and those in `text` fold in a narrow terminal; the others
    hold numbers, which Fitted keeps whole."""
    table = Table()
    for i, name in enumerate(columns):
        fold = "fold" if i == 0 or name in text else "ellipsis"
        table.add_column(name, justify="left" if i == 0 else "right", overflow=fold)
    return table


def _section(
    title: str, table: Table, note: str | None = None, *, optional: tuple[str, ...] = ()
) -> Group:
    """A bold title line, the table (fitted to the terminal: numbers whole, the `optional`
    columns left out where they do not fit), and an optional note line (full terminal width)."""
    parts: list[RenderableType] = [f"[bold]{title}[/bold]", Fitted(table, optional=optional)]
    if note:
        parts.append(note)
    return Group(*parts)


def _progress(summary: dict[str, Any]) -> str | None:
    """'3 / 120'; another tool's checkpoint may record an epoch and no step ('3 / -')."""
    if summary["epoch"] is None:
        return None
    step = summary["global_step"]
    return f"{summary['epoch']} / {'-' if step is None else step}"


def summary_table(report: dict[str, Any]) -> Table:
    """Key facts as a two-column grid; rows without a value are left out."""
    s = report["summary"]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    version = f" v{report['format_version']}" if report["format_version"] is not None else ""
    container = report["container"] + (
        f" (archive v{report['archive_version']})" if report["archive_version"] is not None else ""
    )
    fmt = f"{report['format']}{version}"
    rows = [
        ("file", f"{report['file']} ({human_bytes(report['file_bytes'])})"),
        ("format", fmt if container == fmt else f"{fmt}, {container}"),  # safetensors once
        ("nn.Module class", report["module_class"]),
        ("versions", _value({k: s[k] for k in ("ptool_version", "torch_version") if s[k]})),
        ("created", s["created"]),
        ("epoch / step", _progress(s)),
        ("loss", s["loss"]),
        ("metrics", s["metrics"] or None),
        ("best", s["best"]),
        ("config", s["config"] or None),
        ("data", s["data_info"]),
        ("safetensors metadata", report["safetensors_metadata"]),
        ("state dict", _state_dict_row(report)),
    ]
    for key, value in rows:
        if value not in (None, ""):
            grid.add_row(key, escape(_value(value)))
    return grid


def _state_dict_row(report: dict[str, Any]) -> str | None:
    """The listed state dict's key, and the others that the file keeps beside it."""
    shown = report["state_dict_key"]
    within = f"{shown or ''}."  # `model` holds model.state_dict, `model.net` itself
    others = [key for key in report["state_dicts"] if not within.startswith(f"{key}.")]
    if not others:
        return shown
    return f"{shown or '-'} (also: {', '.join(others)}; --key NAME lists one)"


def tensors_table(report: dict[str, Any]) -> Group:
    title = f"Tensors{' matching ' + escape(repr(report['filter'])) if report['filter'] else ''}"
    if report["groups"] is not None:
        title += " by module"
        table = _table("module", "tensors", "numel", "bytes", "dtypes")
        optional = ("dtypes", "tensors")
        for g in report["groups"]:
            table.add_row(
                escape(g["name"] or "(root)"),
                str(g["tensors"]),
                f"{g['numel']:,}",
                human_bytes(g["bytes"]),
                ", ".join(g["dtypes"]),
            )
    else:
        table = _table("name", "shape", "dtype", "numel", "bytes", "kind")
        optional = ("kind", "dtype", "shape")
        for r in report["tensors"]:
            shares = f" [dim](= {escape(r['shares'])})[/dim]" if r["shares"] else ""
            table.add_row(
                escape(r["name"]) + shares,
                str(tuple(r["shape"])),
                _dtype(r),
                f"{r['numel']:,}",
                human_bytes(r["bytes"]),
                r["kind"],
            )
    return _section(title, table, totals_line(report["totals"]), optional=optional)


def _dtype(row: dict[str, Any]) -> str:
    """The dtype, and for a sparse tensor its layout and stored elements."""
    if "layout" not in row:
        return row["dtype"]
    return f"{row['dtype']} {row['layout']}, nnz {row['nnz']:,}"


def totals_line(totals: dict[str, Any]) -> str:
    by_dtype = ", ".join(
        f"{dtype} {human_count(d['numel'])} ({human_bytes(d['bytes'])})"
        for dtype, d in totals["by_dtype"].items()
    )
    shared = totals["shared"]
    once = f" ({shared} the same as another, counted once)" if shared else ""
    return (
        f"{count(totals['tensors'], 'tensor')}{once}, {totals['numel']:,} elements, "
        f"{human_bytes(totals['bytes'])}: parameters {totals['parameters']:,}, "
        f"buffers {totals['buffers']:,}. By dtype: {by_dtype or '-'}"
    )


def tensor_tree(report: dict[str, Any]) -> Group:
    def label(node: dict[str, Any]) -> str:
        leaf = f" {tuple(node['shape'])} {node['dtype']}" if "shape" in node else ""
        tensors = "" if leaf else f" [dim]{count(node['tensors'], 'tensor')}[/dim]"
        return (
            f"[bold]{escape(node['name'] or report['file'])}[/bold]{leaf}{tensors} "
            f"{human_count(node['numel'])} ({human_bytes(node['bytes'])})"
        )

    def add(branch: Tree, node: dict[str, Any]) -> None:
        for child in node["children"]:
            add(branch.add(label(child)), child)

    root = report["tree"]
    tree = Tree(label(root))
    add(tree, root)
    return Group(tree, totals_line(report["totals"]))


# What a narrow terminal leaves out of an optimizer's table first (--json has them).
OPTIONAL_OPTIMIZER_COLUMNS = ("eps", "betas", "momentum", "weight_decay", "params")


def optimizer_tables(report: dict[str, Any]) -> list[RenderableType]:
    out: list[RenderableType] = []
    for opt in report["optimizers"]:
        keys = [
            k
            for k in ("lr", "weight_decay", "momentum", "betas", "eps")
            if any(k in g for g in opt["param_groups"])
        ]
        table = _table("group", "params", *keys)
        for i, g in enumerate(opt["param_groups"]):
            table.add_row(str(i), str(g["params"]), *(_value(g.get(k)) for k in keys))
        title = (
            f"Optimizer {escape(opt['key'] or '(root)')}: {escape(str(opt['type']))}, state "
            f"{human_bytes(opt['state_bytes'])} in {count(opt['state_tensors'], 'tensor')} "
            f"({', '.join(opt['state_keys']) or 'empty'})"
        )
        out.append(_section(title, table, optional=OPTIONAL_OPTIMIZER_COLUMNS))
    for sched in report["schedulers"]:
        table = _table("field", "value")
        fields = sched["state"].items()
        for key, value in itertools.islice(fields, SCHEDULER_ROWS):
            table.add_row(escape(key), escape(_value(value)))
        if len(fields) > SCHEDULER_ROWS:  # 10**6 milestones took minutes to draw
            table.add_row(f"... {len(fields) - SCHEDULER_ROWS:,} more (--json has them all)", "")
        out.append(_section(f"Scheduler {escape(sched['key'])}", table))
    return out


def _shapes_counted(recipe: dict[str, Any]) -> dict[str, Any]:
    """A pruning recipe (and the earlier rounds it keeps) with `architecture` as a count: the
    Tensors table shows the shapes, the JSON keeps them."""
    shapes, previous = recipe.get("architecture"), recipe.get("previous")
    if isinstance(shapes, dict):
        recipe = {**recipe, "architecture": f"{len(shapes)} tensor shapes"}
    if isinstance(previous, dict):
        recipe = {**recipe, "previous": _shapes_counted(previous)}
    return recipe


def _recipe(recipe: dict[str, Any] | None) -> str | None:
    return f"recipe: {escape(_value(_shapes_counted(recipe)))}" if recipe else None


def pruning_table(pruning: dict[str, Any]) -> Group:
    overall = pruning["sparsity"]
    table = _table("layer", "numel", "zeros", "sparsity")
    for layer in pruning["layers"]:
        sparsity = layer["sparsity"]
        table.add_row(
            escape(layer["name"]),
            f"{layer['numel']:,}",
            "-" if layer["zeros"] is None else f"{layer['zeros']:,}",
            "-" if sparsity is None else f"{sparsity:.2%}",
        )
    zeros = "-" if overall is None else f"{overall:.2%}"
    title = f"Pruning (from {pruning['source']}): overall sparsity {zeros}"
    recipe = pruning["recipe"] or {}
    removed = recipe.get("sparsity")
    compacted_now = "torch_pruning_version" in recipe  # this round ran --compact
    if compacted_now and isinstance(removed, float):
        title = (
            f"Pruning (compacted): {removed:.2%} of the selected weights removed; "
            f"zeros among those left {zeros}"
        )
    return _section(title, table, _recipe(pruning["recipe"]), optional=("zeros",))


def quantization_table(quant: dict[str, Any]) -> Group:
    table = _table(
        "layer",
        "weight dtype",
        "qscheme",
        "scale",
        "zero point",
        "output scale",
        "output zero point",
        text=("weight dtype", "qscheme"),
    )
    for layer in quant["layers"]:
        if "scale_range" in layer:
            scale = f"{_value(layer['scale_range'])} ({layer['channels']} ch, axis {layer['axis']})"
            zero = _value(layer["zero_point_range"])
        else:
            scale, zero = _value(layer.get("scale")), _value(layer.get("zero_point"))
        table.add_row(
            escape(layer["name"] or "(root)"),
            _value(layer.get("weight_dtype")),
            _value(layer.get("qscheme")),
            scale,
            zero,
            _value(layer.get("output_scale")),
            _value(layer.get("output_zero_point")),
        )
    optional = ("weight dtype", "qscheme", "output zero point", "output scale", "zero point")
    return _section("Quantization", table, _recipe(quant["recipe"]), optional=optional)


def stats_table(stats: list[dict[str, Any]]) -> Group:
    table = _table("name", "min", "max", "mean", "std", "zeros", "NaN", "Inf")
    for s in stats:
        zeros = "-" if s["zero_fraction"] is None else f"{s['zero_fraction']:.2%}"
        table.add_row(
            escape(s["name"]),
            *(_value(s[k]) for k in ("min", "max", "mean", "std")),
            zeros,
            _value(s["nan"]),
            _value(s["inf"]),
        )
    title = "Statistics (min/max/mean/std over finite values)"
    return _section(title, table, optional=("zeros", "std", "mean", "Inf", "NaN"))


def diff_table(diff: dict[str, Any]) -> Group:
    table = _table("name", "change", "detail", text=("change",))
    for name in diff["added"]:
        table.add_row(escape(name), "added", "")
    for name in diff["removed"]:
        table.add_row(escape(name), "removed", "")
    for r in diff["reshaped"]:
        table.add_row(
            escape(r["name"]),
            "reshaped",
            f"{tuple(r['shape'])} {r['dtype']} -> {tuple(r['other_shape'])} {r['other_dtype']}",
        )
    for r in diff["changed"]:
        table.add_row(escape(r["name"]), "changed", f"max |diff| {_value(r['max_abs_diff'])}")
    title = (
        f"Diff against {escape(diff['other'])}: {len(diff['added'])} added, "
        f"{len(diff['removed'])} removed, {len(diff['reshaped'])} reshaped, "
        f"{len(diff['changed'])} changed, {diff['unchanged']} unchanged"
    )
    return _section(title, table)


def report_view(report: dict[str, Any]) -> Group:
    parts: list[RenderableType] = [summary_table(report), ""]
    parts.append(tensor_tree(report) if report["tree"] is not None else tensors_table(report))
    parts += optimizer_tables(report)
    if report["pruning"]:
        parts.append(pruning_table(report["pruning"]))
    if report["quantization"]:
        parts.append(quantization_table(report["quantization"]))
    if report["stats"] is not None:
        parts.append(stats_table(report["stats"]))
    if report["diff"] is not None:
        parts.append(diff_table(report["diff"]))
    return Group(*parts)


def brief_line(row: dict[str, Any]) -> str:
    """One line per file: epoch, step, loss/metric, parameters, size."""
    if row["error"]:
        return f"{escape(row['file'])}  [red]error:[/red] {escape(row['error'])}"
    parts = [f"[bold]{escape(row['file'])}[/bold]", row["format"]]
    if row["epoch"] is not None:
        parts.append(f"epoch {row['epoch']}")
    if row["global_step"] is not None:
        parts.append(f"step {row['global_step']}")
    if row["loss"] is not None:
        parts.append(f"loss {_value(row['loss'])}")
    if row["metric"] and row["metric_value"] is not None:
        parts.append(f"{escape(row['metric'])} {_value(row['metric_value'])}")
    if row["best_value"] is not None:
        parts.append(f"best {_value(row['best_value'])}")
    parts.append(f"{human_count(row['parameters'])} params")
    parts.append(human_bytes(row["file_bytes"]))
    return "  ".join(parts)
