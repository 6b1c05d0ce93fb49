"""The table `ptool predict` prints when stdout is a terminal."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def predictions_table(predictions: list[dict[str, Any]], task: str) -> Table:
    table = Table()
    table.add_column("input", overflow="fold")
    table.add_column("prediction", justify="right")
    if task == "classification":
        table.add_column("top probabilities")
    for record in predictions:
        if task != "classification":
            value = record["prediction"]
            values = value if isinstance(value, list) else [value]
            table.add_row(record["input"], ", ".join(f"{v:.4g}" for v in values))
            continue
        top = "  ".join(f"{label}: {p:.1%}" for label, p in record["probabilities"].items())
        table.add_row(record["input"], str(record.get("label", record["prediction"])), top)
    return table
