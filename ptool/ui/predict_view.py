"""The table `ptool predict` prints when stdout is a terminal."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from ptool.ui.tables import Fitted


def predictions_table(predictions: list[dict[str, Any]], task: str) -> Fitted:
    """Inputs and labels are plain text cells: a file or class named `[red]` shows as such.
    Fitted: a narrow terminal folds headers and long text, never cuts them."""
    table = Table()
    table.add_column("input", overflow="fold")
    table.add_column("prediction", justify="right")
    if task == "classification":
        table.add_column("top probabilities")
    for record in predictions:
        if task != "classification":
            value = record["prediction"]
            values = value if isinstance(value, list) else [value]
            table.add_row(Text(record["input"]), ", ".join(f"{v:.4g}" for v in values))
            continue
        top = "  ".join(f"{label}: {p:.1%}" for label, p in record["probabilities"].items())
        label = str(record.get("label", record["prediction"]))
        table.add_row(Text(record["input"]), Text(label), Text(top))
    return Fitted(table)
