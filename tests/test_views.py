"""Rendering: user-given names are text, never rich markup; reports say what they measured."""

from __future__ import annotations

import pytest
from rich.console import Console

from ptool.ui.eval_view import confusion_table, per_class_table
from ptool.ui.inspect_view import pruning_table
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
    assert "timings spread 40% (interquartile range): a busy machine" in text
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
    from ptool.ui.tables import FittedTable

    rows = [{"layer": "conv k3 s2", "output": "1234567x1234567", "RF": "99", "start": "1/3"}]
    text = _rendered(FittedTable("t", rows, left=("layer",), optional=("start", "RF")), 34)
    assert "1234567x1234567" in text and "start" not in text.splitlines()[2]
    assert "not shown at this width: start" in text
    # past the optional columns, headers fold rather than numbers
    rows = [{"dim": "h", "input": "123456789", "output_padding": "1", "output": "370370368"}]
    text = _rendered(FittedTable("t", rows, left=("dim",)), 40)
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
