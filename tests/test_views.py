"""Rendering: user-given names are text, never rich markup; reports say what they measured."""

from __future__ import annotations

import re

import pytest
from rich.console import Console

from ptool.ui.eval_view import confusion_table, per_class_table
from ptool.ui.inspect_view import brief_line, pruning_table
from ptool.ui.predict_view import predictions_table

NAMES = ["[red]", "[b]x[/b]"]


def _rendered(renderable, width: int = 200) -> str:
    console = Console(width=width, record=True, file=None, color_system=None)
    with console.capture() as captured:
        console.print(renderable)
    return captured.get()


def test_class_names_in_eval_tables_are_shown_as_written():
    report = {
        "class_names": NAMES,
        "per_class": [{"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 3}] * 2,
        "confusion_matrix": [[3, 0], [0, 3]],
    }
    for table in (per_class_table(report), confusion_table(report)):
        text = _rendered(table)
        assert all(name in text for name in NAMES), text


def test_inputs_and_labels_in_predict_table_are_shown_as_written():
    record = {"input": "[red].png", "prediction": 0, "label": "[b]x[/b]",
              "probabilities": {"[b]x[/b]": 0.9}}  # fmt: skip
    text = _rendered(predictions_table([record], "classification"))
    assert "[red].png" in text and "[b]x[/b]: 90.0%" in text


def test_a_files_brief_line_shows_its_monitored_metric_as_written():
    """The metric name comes from the file: `[/x]` raised rich's MarkupError."""
    from ptool.core.inspect.report import BRIEF_KEYS

    row = {**dict.fromkeys(BRIEF_KEYS), "file": "a.pt", "format": "ptool", "parameters": 10,
           "file_bytes": 2048, "metric": "val/[/x]", "metric_value": 0.5}  # fmt: skip
    assert "val/[/x] 0.5" in _rendered(brief_line(row))


def test_a_compacted_checkpoint_reports_what_was_removed_not_zero_sparsity():
    shapes = {"body.0.conv.weight": [16, 1, 3, 3], "head.weight": [10, 64]}
    compacted = {"method": "ln-structured", "compacted": True, "architecture": shapes,
                 "sparsity": 0.75, "torch_pruning_version": "1.6.0"}  # fmt: skip
    pruning = {
        "source": "weights",
        "sparsity": 0.0,  # no zeros: the channels are gone
        "layers": [{"name": "body.0.conv.weight", "numel": 144, "zeros": 0, "sparsity": 0.0}],
        "recipe": compacted,
    }
    text = _rendered(pruning_table(pruning))
    assert (
        "Pruning (compacted): 75.00% of the selected weights removed; zeros among those "
        "left 0.00%" in text
    )
    assert "architecture=2 tensor shapes" in text and "[16, 1, 3, 3]" not in text
    # pruned again without --compact: the zeros are this round's, the shapes the earlier one's
    pruning["sparsity"] = 0.3
    pruning["recipe"] = {"method": "l1-unstructured", "compacted": True, "architecture": shapes,
                         "sparsity": 0.3, "previous": compacted}  # fmt: skip
    text = _rendered(pruning_table(pruning))
    assert "Pruning (from weights): overall sparsity 30.00%" in text
    assert text.count("architecture=2 tensor shapes") == 2 and "[16, 1, 3, 3]" not in text


def test_inspect_counts_read_as_numbers_and_nouns():
    """Zeros are grouped like the numel beside them; one tensor is "1 tensor"."""
    from ptool.ui.inspect_view import totals_line

    layer = {"name": "fc.weight", "numel": 16384, "zeros": 8192, "sparsity": 0.5}
    pruning = {"source": "mask", "sparsity": 0.5, "layers": [layer], "recipe": None}
    row = r"│ fc\.weight │ 16,384 │ +8,192 │ +50\.00% │"
    assert re.search(row, _rendered(pruning_table(pruning)))
    totals = {"tensors": 1, "shared": 0, "numel": 2, "bytes": 8, "parameters": 2, "buffers": 0,
              "by_dtype": {"float32": {"numel": 2, "bytes": 8}}}  # fmt: skip
    assert totals_line(totals).startswith("1 tensor, 2 elements, 8 B")
    assert totals_line({**totals, "tensors": 2}).startswith("2 tensors, ")


def test_a_long_scheduler_state_shows_its_first_fields():
    """10**6 milestones drew a row each (minutes); --json keeps them all."""
    from ptool.ui.inspect_view import SCHEDULER_ROWS, optimizer_tables

    fields = SCHEDULER_ROWS + 7
    state = {f"milestones.{i}": 1 for i in range(fields)}
    report = {"optimizers": [], "schedulers": [{"key": "sched", "state": state}]}
    (section,) = optimizer_tables(report)
    text = _rendered(section)
    last, first_left_out = (f"milestones.{i} " for i in (SCHEDULER_ROWS - 1, SCHEDULER_ROWS))
    assert last in text and first_left_out not in text
    assert f"... {fields - SCHEDULER_ROWS:,} more (--json has them all)" in text


def test_warnings_print_paths_as_written(capsys):
    """`[/old]` in a path raised rich's MarkupError; `[red]` vanished."""
    from ptool.ui.output import Output

    Output().warn("ckpts/[/old]/m.pt and figs/[red]x.png")
    assert "warning: ckpts/[/old]/m.pt and figs/[red]x.png" in capsys.readouterr().err


def test_a_file_that_grew_is_larger_not_0_99x_smaller():
    from ptool.ui import prune_view, quantize_view

    sizes = {"file_bytes": 1000, "param_bytes": 800, "latency_ms_batch_1": 1.0,
             "latency_ms_batch_n": 2.0, "metrics": None}  # fmt: skip
    grown = {**sizes, "file_bytes": 1010, "param_bytes": 400}
    report = {
        "recipe": {"dtype": "qint8", "engine": "x86"}, "mode": "dynamic", "backend": "fbgemm",
        "fused_modules": [], "quantized_layers": ["fc"], "kept_float": ["act"], "bench_runs": 3,
        "threads": 1,
        "latency_spread": 0.4,
        "output": "q.pt", "batch_size": 8, "fp32": sizes, "quantized": grown,
        "ratios": {"size": 1000 / 1010, "param_bytes": 2.0, "speedup_batch_1": 1.0,
                   "speedup_batch_n": 1.0},
    }  # fmt: skip
    text = _rendered(quantize_view.report_table(report))
    assert "1.01x larger" in text and "2.00x smaller" in text and "0.99x" not in text
    assert "1 thread, random inputs, timings spread 40% (interquartile range): a busy" in text
    assert "kept in float (no int8 state to save): act" in text
    pruned = {
        "metrics": {"before": {}, "after_pruning": {}, "after_finetune": None},
        "parameters": {"before": {"parameters": 100, "nonzero": 100},
                       "after": {"parameters": 100, "nonzero": 50}},
        "file_bytes": {"before": 1000, "after": 1200}, "gzip_bytes": {"before": 900, "after": 450},
        "global": {"sparsity_before": 0.0, "sparsity": 0.5},
        "latency": {"batch_size": 8, "before_ms": 1.0, "after_ms": 1.0, "speedup": 1.0},
        "method": "l1-unstructured", "amount": 0.5, "compacted": False, "steps": 1,
        "recalibrate_bn": 0, "finetune_epochs": 0,
    }  # fmt: skip
    text = _rendered(prune_view.summary_table(pruned))
    assert "1.20x larger" in text and "2.00x smaller" in text and "2.00x fewer" in text


def test_compared_checkpoints_are_told_apart_by_the_shortest_path_ending():
    from ptool.ui.eval_view import distinct_names

    assert distinct_names(["runs/b/best.pt", "runs/cnn/best.pt"]) == ["b/best.pt", "cnn/best.pt"]
    assert distinct_names(["runs/b/best.pt", "runs/b/last.pt"]) == ["best.pt", "last.pt"]
    assert distinct_names(["/x/a/c.pt", "a/c.pt"]) == ["x/a/c.pt", "a/c.pt"]


def test_the_prune_report_says_why_the_latency_moved_or_did_not():
    from ptool.ui.prune_view import _what_runs

    assert _what_runs({"compacted": True, "dim": 0}).startswith("pruned channels removed")
    assert "--compact removes them" in _what_runs({"compacted": False, "dim": 0})
    assert "unstructured zeros" in _what_runs({"compacted": False, "dim": None})


def test_an_epoch_without_a_step_shows_a_dash_not_python_none():
    """timm and Lightning-style files record an epoch and no global step."""
    from ptool.ui.inspect_view import _progress

    assert _progress({"epoch": 7, "global_step": None}) == "7 / -"
    assert _progress({"epoch": 4, "global_step": 40}) == "4 / 40"
    assert _progress({"epoch": None, "global_step": None}) is None


@pytest.mark.parametrize("width", [80, 60])
def test_convcalc_tables_never_cut_a_number(width):
    """Rich shrinks the columns of a table too wide for the terminal and cuts cells with '…'."""
    from ptool.core import convcalc as cc
    from ptool.ui import convcalc_view as view

    chain = cc.compute_chain(
        cc.parse_chain(
            "conv k3 p1 c32; maxpool k2; conv k3 s2 c64; convT k4 s2 p1 c32; conv k3 c256"
        ),
        cc.parse_size("224x224"),
        in_channels=3,
    )
    text = _rendered(view.chain_table(chain), width)
    assert "…" not in text and all(len(line) <= width for line in text.splitlines())
    for row in chain.layers:
        for cell in (view.dims(row.input), view.dims(row.output), f"{row.params:,}"):
            assert f" {cell} " in text, (cell, text)
    assert f" {chain.params:,} " in text
    layer = cc.compute(cc.make_spec("convT", (7,), stride=(3,)), {"h": 123456789, "w": 5})
    text = _rendered(view.layer_table(layer), width)
    assert "…" not in text and " 123456789 " in text and f" {layer.output['h']} " in text


def test_fitted_table_drops_optional_columns_then_folds_headers_never_numbers():
    from ptool.ui.tables import fitted_table

    rows = [{"layer": "conv k3 s2", "output": "1234567x1234567", "RF": "99", "start": "1/3"}]
    text = _rendered(fitted_table("t", rows, left=("layer",), optional=("start", "RF")), 34)
    assert "1234567x1234567" in text and "start" not in text.splitlines()[2]
    assert "not shown at this width: start" in text
    # past the optional columns, headers fold rather than numbers
    rows = [{"dim": "h", "input": "123456789", "output_padding": "1", "output": "370370368"}]
    text = _rendered(fitted_table("t", rows, left=("dim",)), 40)
    assert "123456789" in text and "370370368" in text and "…" not in text
    assert "output_padding" not in text


def test_convcalc_fractions_are_exact_in_tables_and_numbers_in_json():
    from fractions import Fraction

    from ptool.core import convcalc as cc
    from ptool.ui import convcalc_view as view

    values = {"d": Fraction(1, 3), "h": Fraction(5, 2), "w": Fraction(-1, 8)}
    assert view.dims(values) == "1/3x2.5x-0.125"
    layer = cc.compute(cc.make_spec("convT", (3,), stride=(3,)), {"w": 4})
    assert layer.jump == {"w": Fraction(1, 3)}
    assert view.json_data(layer)["jump"] == {"w": 1 / 3}
    assert view.json_data(layer)["receptive_field"] == {"w": 5 / 3}


# Narrow terminals: every table keeps its numbers whole (rich would cut them to '…'), long
# names and paths fold, and a pipe (wide) gets the table exactly as built.

NARROW = [80, 60, 40]


def _whole(text: str, *cells: str) -> None:
    """Each cell appears as a whole token: not cut, not folded over two lines."""
    assert "…" not in text, text
    for cell in cells:
        assert re.search(rf"(?<![\w.,+-]){re.escape(cell)}(?![\w.,%])", text), (cell, text)


def _fits(text: str, width: int) -> None:
    assert all(len(line) <= width for line in text.splitlines()), text


def _column(text: str, index: int) -> str:
    """A boxed table's column read top to bottom, its folded lines joined again."""
    cells = [line.split("│")[index] for line in text.splitlines() if line.count("│") > index]
    return "".join(cell.strip() for cell in cells)


@pytest.mark.parametrize("width", NARROW)
def test_lr_plot_key_numbers_stay_whole_in_a_narrow_terminal(width):
    from ptool.core.config import TrainConfig
    from ptool.core.lr_plot import schedule_lines
    from ptool.ui.lr_plot_view import _fmt, key_table

    cosine = TrainConfig(scheduler="cosine", lr=0.0001234567, epochs=10)
    onecycle = TrainConfig(scheduler="onecycle", max_lr=0.01, epochs=10)
    lines = [
        *schedule_lines(cosine, label="cosine", steps_per_epoch=1000),
        *schedule_lines(onecycle, label="onecycle --max-lr 0.01", steps_per_epoch=1000),
    ]
    text = _rendered(key_table(lines), width)
    _fits(text, width)
    for line in lines:
        key = line.key_numbers()
        _whole(text, *(_fmt(key[name]) for name in ("start", "peak", "end")))
    assert "0.0001235" in text and "3.021e-06" in text
    if width < 80:  # the restarts (and more) go, and the caption says so
        assert "not shown at this width: restarts" in text
    # in a pipe (fold=False, a wide console) every row is one line, as before
    piped = _rendered(key_table(lines, fold=False), 10_000).splitlines()
    assert piped[2].split() == ["onecycle", "--max-lr", "0.01", "0.0004", "0.01", "2999",
                                "4e-08", "-", "-"]  # fmt: skip


def _train_summary(run_dir: str):
    from types import SimpleNamespace

    metrics = {"train/loss": 0.000123456789, "val/accuracy": 0.987654321, "lr": 0.0001234567}
    return SimpleNamespace(
        run_dir=run_dir, status="completed", best_epoch=100, final_metrics=metrics,
        best_metrics=metrics, monitor="val/loss", mode="min", best_value=0.000123456789,
        epochs=100, global_step=123456789, wall_time_s=12345.6, samples_per_s=123456.7,
        nonfinite_skipped=12, rollbacks=3,
        checkpoints={"last": f"{run_dir}/last.pt", "best": f"{run_dir}/best.pt"},
    )  # fmt: skip


@pytest.mark.parametrize("width", NARROW)
def test_train_summary_keeps_numbers_whole_and_folds_long_paths(width):
    from ptool.ui.train_view import summary_table

    run_dir = "/home/someone/experiments/a_very_long_directory_name/runs/resnet50_lr_sweep_7"
    text = _rendered(summary_table(_train_summary(run_dir)), width)
    _fits(text, width)
    _whole(text, "0.0001235", "0.9877", "123456789", "12345.6", "123,457", "12 / 3")
    assert f"{run_dir}/last.pt" in _column(text, 2) and f"{run_dir}/best.pt" in _column(text, 2)


def test_the_train_summary_shows_its_run_directory_as_written():
    """`--out runs/[exp1]` read as markup: the title said `run runs/`; `[/x]` raised."""
    from ptool.ui.train_view import summary_table

    for run_dir in ("runs/[exp1]", "runs/[/x]"):
        assert f"run {run_dir} (completed)" in _rendered(summary_table(_train_summary(run_dir)))


def _pruned_report(finetuned: bool) -> dict:
    metrics = {"val/loss": 0.8057656, "val/accuracy": 0.9192200}
    after = {"val/loss": 0.8756466, "val/accuracy": 0.9108635}
    layer = {"name": "encoder.layers.11.self_attention.query_key_value", "selected": True,
             "channels_follow": None, "shape_before": [4096, 30141], "shape_after": [2867, 30141],
             "params_before": 123456789, "params_after": 86419752, "nonzero_after": 86419752,
             "sparsity": 0.3}  # fmt: skip
    return {
        "layers": [layer, {**layer, "name": "head", "selected": False, "sparsity": 0.0,
                           "channels_follow": "encoder.layers.11.self_attention"}],
        "metrics": {"before": metrics, "after_pruning": after,
                    "after_finetune": after if finetuned else None},
        "parameters": {"before": {"parameters": 123456789, "nonzero": 123456789},
                       "after": {"parameters": 86419752, "nonzero": 86419752}},
        "file_bytes": {"before": 493827156, "after": 345679008},
        "gzip_bytes": {"before": 456789012, "after": 234567890},
        "global": {"sparsity_before": 0.0, "sparsity": 0.3},
        "latency": {"batch_size": 64, "before_ms": 12345.678, "after_ms": 9876.543,
                    "speedup": 1.25, "runs": 3, "threads": 2, "spread": 0.0},
        "method": "ln-structured", "amount": 0.3, "compacted": True, "dim": 0, "steps": 1,
        "recalibrate_bn": 0, "finetune_epochs": 2 if finetuned else 0,
        "output": "/home/someone/experiments/a_very_long_directory_name/pruned.pt", "masks": False,
    }  # fmt: skip


@pytest.mark.parametrize("width", NARROW)
@pytest.mark.parametrize("finetuned", [False, True])
def test_prune_report_keeps_numbers_whole_in_a_narrow_terminal(width, finetuned):
    from ptool.ui.prune_view import layer_table, report_view, summary_table

    report = _pruned_report(finetuned)
    text = _rendered(report_view(report), width)
    _fits(text, width)
    _whole(text, "123,456,789", "86,419,752", "471.0", "329.7", "12345.678", "30.00%", "91.92%")
    assert "encoder.layers.11.self_attention.query_key_value" in _column(text, 1)
    if width == 40:  # columns left out, and said so
        assert "not shown at this width:" in _rendered(layer_table(report), width)
        assert "not shown at this width:" in _rendered(summary_table(report), width)


@pytest.mark.parametrize("width", NARROW)
def test_quantize_report_keeps_numbers_whole_in_a_narrow_terminal(width):
    from ptool.ui.quantize_view import report_table

    sizes = {"file_bytes": 493827156, "param_bytes": 493827156, "latency_ms_batch_1": 12345.678,
             "latency_ms_batch_n": 123456.789, "metrics": {"val/accuracy": 0.9192200}}  # fmt: skip
    quantized = {**sizes, "file_bytes": 123456789, "param_bytes": 123456789,
                 "metrics": {"val/accuracy": 0.9164345}}  # fmt: skip
    report = {
        "recipe": {"dtype": "qint8", "engine": "fx"}, "mode": "static", "backend": "x86",
        "fused_modules": [], "quantized_layers": ["fc"], "kept_float": [], "bench_runs": 3,
        "threads": 2, "latency_spread": 0.0, "output": "q.pt", "batch_size": 1024,
        "fp32": sizes, "quantized": quantized,
        "ratios": {"size": 4.0, "param_bytes": 4.0, "speedup_batch_1": 3.21,
                   "speedup_batch_n": 3.21},
        "metrics_change": {"val/accuracy": -0.0027855},
    }  # fmt: skip
    text = _rendered(report_table(report), width)
    _fits(text, width)
    _whole(text, "471.0", "117.7", "12345.678", "123456.789", "91.92%", "91.64%")


def _eval_report() -> dict:
    names = ["airplane", "automobile_with_a_long_name", *(f"class{i}" for i in range(8))]
    matrix = [[1234 if i == j else 5 for j in range(10)] for i in range(10)]
    per_class = [{"precision": 0.987654, "recall": 0.912345, "f1": 0.948765, "support": 12345}]
    return {
        "checkpoint": "/home/someone/experiments/a_very_long_directory_name/best.pt",
        "kind": "float", "data": "cifar10", "split": "test", "samples": 123450,
        "batch_size": 256, "device": "cpu", "class_names": names,
        "metrics": {"loss": 0.000123456789, "accuracy": 0.98765},
        "samples_per_s": 123456.7, "batch_latency_ms": 12345.678,
        "per_class": per_class * 10, "confusion_matrix": matrix,
    }  # fmt: skip


@pytest.mark.parametrize("width", NARROW)
def test_eval_tables_keep_numbers_whole_in_a_narrow_terminal(width):
    from ptool.ui.eval_view import compare_table, report_view

    report = _eval_report()
    text = _rendered(report_view(report), width)
    _fits(text, width)
    _whole(text, "0.0001235", "98.77%", "123,457", "12345.678", "0.9877", "0.9123", "0.9488")
    assert "automobile_with_a_long_name" in _column(text, 1)
    if width >= 80:  # a column per class fits, every count whole
        _whole(text, "1234", "5")
    else:  # it does not: a line says where the matrix is, no table of cut counts
        line = "confusion matrix: too wide for this terminal; in --json and -o cm.png"
        assert line in " ".join(text.split())
    other = {**report, "checkpoint": "/home/someone/b/best.pt",
             "vs_first": {"loss": 0.0000123, "accuracy": -0.0123}}  # fmt: skip
    text = _rendered(compare_table([report, other]), width)
    _fits(text, width)
    _whole(text, "0.0001235", "98.77%", "(+1.23e-05)", "-1.23", "123,457", "(1.00x)", "12345.678")


@pytest.mark.parametrize("width", NARROW)
def test_inspect_tables_keep_numbers_whole_in_a_narrow_terminal(tmp_path, width):
    """A real file: a 123,456,789-element tensor (an expanded view: saved as one element) and
    an AdamW's state dict."""
    import torch

    from ptool.core.inspect.report import InspectOptions, inspect
    from ptool.ui.inspect_view import report_view

    name = "encoder.layers.11.self_attention.query_key_value.weight"
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([weight], lr=0.0001234567, weight_decay=0.0123456)
    path = tmp_path / "big.pt"
    model = {name: torch.zeros(1).expand(123456789, 1), "head.bias": torch.zeros(3)}
    torch.save({"model": model, "optimizer": optimizer.state_dict()}, path)
    for options in (InspectOptions(), InspectOptions(depth=2)):
        text = _rendered(report_view(inspect(path, options)), width)
        _fits(text, width)
        _whole(text, "123,456,789", "471.0", "0.000123457")
        if options.depth is None:
            assert name in _column(text, 1)
    if width == 40:
        assert "not shown at this width: kind, dtype, shape (--json has them)" in " ".join(
            _rendered(report_view(inspect(path, InspectOptions())), width).split()
        )


def test_a_fitted_table_that_fits_is_the_table_as_built():
    """A pipe is 10,000 columns wide: its output must not change. A narrow rendering lays out
    a copy, so the table itself stays as the view built it."""
    from rich.table import Table

    from ptool.ui.tables import Fitted

    def unpadded(renderable) -> list[str]:  # as ptool prints in a pipe
        return [line.rstrip() for line in _rendered(renderable, 10_000).splitlines()]

    table = Table(title="t", title_justify="left")
    table.add_column("name", overflow="fold")
    table.add_column("count", justify="right")
    table.add_row("encoder.layers.11.self_attention.query_key_value", "123,456,789")
    table.add_section()
    table.add_row("[b]bold[/b]", "1")
    fitted = Fitted(table, optional=("count",))
    assert unpadded(fitted) == unpadded(table)
    narrow = _rendered(fitted, 30)
    _fits(narrow, 30)
    _whole(narrow, "123,456,789")
    assert [c.width for c in table.columns] == [None, None]
    assert unpadded(fitted) == unpadded(table)
    # too narrow for the number even alone: it folds over lines, never ends in '…'
    table = Table()
    table.add_column("name", overflow="fold")
    table.add_column("count", justify="right")
    table.add_row("encoder.layers.11.self_attention.query_key_value", "123,456,789")
    tiny = _rendered(Fitted(table), 12)
    assert "…" not in tiny and _column(tiny, 2) == "123,456,789"


def test_a_title_longer_than_its_table_stays_on_one_line_where_there_is_room():
    """Rich wraps a title at its table's width: a 3-class confusion matrix's heading came out
    over two lines in a pipe, and `grep 'confusion matrix'` missed its end."""
    report = {
        "class_names": ["a", "b", "c"],
        "per_class": [{"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}] * 3,
        "confusion_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
    }
    heading = "confusion matrix (rows: true, columns: predicted)"
    assert heading in _rendered(confusion_table(report), 10_000).splitlines()[0]
    narrow = _rendered(confusion_table(report), 30)  # a terminal narrower than it: wrapped there
    _fits(narrow, 30)
    assert " ".join(narrow.split()).startswith(heading)


def test_drawn_lr_points_hold_the_last_lr_to_the_end_of_its_step():
    """steps-post draws each point's lr up to the next point: the last step needs its end."""
    from ptool.core.config import TrainConfig
    from ptool.core.lr_plot import schedule_lines
    from ptool.ui.lr_plot_view import _points

    config = TrainConfig(
        scheduler="step", lr=0.1, step_size=1, gamma=0.5, epochs=3, warmup_epochs=1
    )
    (line,) = schedule_lines(config, label="step", steps_per_epoch=4)
    xs, ys = _points(line, "epoch")
    assert xs == [0, 0.75, 1, 1.75, 2, 2.75, 3]  # ends at epoch 3, not at the last step's start
    assert ys == pytest.approx([0.001, 0.001, 0.1, 0.1, 0.05, 0.05, 0.05])


@pytest.mark.parametrize("width", [*NARROW, 24])
def test_predict_table_folds_headers_and_never_cuts_a_probability(width):
    """Its headers were cut to "probabili…" and "pre…" in a narrow terminal."""
    record = {"input": "/data/held_out/some_image.png", "prediction": 9, "label": "9",
              "probabilities": {"9": 0.39955, "3": 0.39955}}  # fmt: skip
    text = _rendered(predictions_table([record], "classification"), width)
    _fits(text, width)
    _whole(text, "40.0%")


def _long_tables() -> list:
    """Tables of every kind the fast path draws: a footer, sections, markup and styled text,
    wide characters, text justified against its column."""
    from rich.table import Table
    from rich.text import Text

    from ptool.ui.tables import Fitted, fitted_table

    rows = [
        {"layer": f"[dim]conv{i}[/dim] \\[{i}]", "out": f"{i * 1001:,}", "名前": "重み" * (i % 3)}
        for i in range(260)
    ]
    footer = {"layer": "total", "out": "9", "名前": ""}
    sectioned = Table(title="per class", title_justify="left")
    sectioned.add_column("class")
    sectioned.add_column("f1", justify="right")
    for i in range(230):
        sectioned.add_row(Text(f"c{i}", style="bold", justify="right"), f"{i / 7:.4f}")
        if i in (3, 229):  # the last row's section ends with the table
            sectioned.add_section()
    return [
        fitted_table("chain", rows, footer=footer, left=("layer", "名前")),
        fitted_table("no footer", rows, left=("layer",)),
        Fitted(sectioned),
    ]


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
def test_a_long_table_in_a_pipe_is_drawn_as_rich_draws_it(encoding, monkeypatch):
    """Rich measures each cell several times: `inspect-checkpoint` of 10,000 tensors took 20 s
    in a pipe. Long plain tables are drawn directly there, to the byte what rich prints."""
    import io

    from ptool.ui import tables

    def printed(table) -> str:
        stream = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="replace")
        Console(file=stream, width=10_000, color_system=None).print(table)
        stream.flush()
        return stream.buffer.getvalue().decode(encoding)

    def laid_out_by_rich(*_args):
        raise AssertionError("laid out by rich, not drawn")

    for table in _long_tables():
        with monkeypatch.context() as patch:
            patch.setattr(tables, "_laid_out", laid_out_by_rich)
            fast = printed(table)
        with monkeypatch.context() as patch:
            patch.setattr(tables, "DRAWN_ROWS", 10**9)  # rich's own drawing
            assert fast == printed(table)
    narrow = io.StringIO()
    Console(file=narrow, width=30, color_system=None).print(_long_tables()[0])
    assert "…" not in narrow.getvalue()  # too wide for the console: laid out by rich
