"""Rendering of user-given names: class labels and input names are text, never rich markup."""

from __future__ import annotations

from rich.console import Console

from ptool.ui.eval_view import confusion_table, per_class_table
from ptool.ui.predict_view import predictions_table

NAMES = ["[red]", "[b]x[/b]"]


def _rendered(renderable) -> str:
    console = Console(width=200, record=True, file=None, color_system=None)
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
