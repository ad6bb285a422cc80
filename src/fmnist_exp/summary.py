"""What a run is ranked by, and the tables that rank them (a sweep's summary, `report`).

One rule for the objective: the validation accuracy, or the training accuracy where there is no
validation set, at the best epoch when early stopping restored it, else at the last epoch.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

COLUMNS = (
    "run_name",
    "status",
    "pruned_at",
    "objective",
    "val_accuracy",
    "test_accuracy",
    "epochs",
    "train_seconds",
    "run_id",
)


def objective_curve(history: dict[str, list[float]]) -> list[float]:
    """The objective's figure per epoch: validation accuracy, or training accuracy without validation."""
    return list(history.get("val_accuracy") or history.get("accuracy") or [])


def objective_metric(has_validation: bool) -> str:
    return "val_accuracy" if has_validation else "accuracy"


def objective(history: dict[str, list[float]], best_epoch: int | None = None) -> float:
    """The objective of a run from its per-epoch history (see the module's docstring)."""
    values = objective_curve(history)
    if not values:
        return math.nan
    return float(values[best_epoch - 1] if best_epoch else values[-1])


def row_of(run) -> dict[str, Any]:
    """One MLflow run as a table row; the objective is the one the run logged (NaN if it logged none)."""
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "pruned_at": int(tags["pruned_at_epoch"]) if "pruned_at_epoch" in tags else "",
        "overrides": tags.get("overrides", ""),
        "objective": float(metrics.get("objective", math.nan)),
        "val_accuracy": float(metrics.get("val_accuracy", math.nan)),
        "test_accuracy": float(metrics.get("test_accuracy", math.nan)),
        "epochs": tags.get("last_completed_epoch", params.get("epochs", "")),
        "train_seconds": float(metrics.get("train_seconds", math.nan)),
    }


def best_first(rows: list[dict]) -> list[dict]:
    """Highest objective first; runs without one (failed, NaN) last."""
    return sorted(rows, key=lambda row: -row["objective"] if not math.isnan(row["objective"]) else math.inf)


def markdown_table(rows: list[dict]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[column]) for column in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, "overrides"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
