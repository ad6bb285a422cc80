"""What a run is ranked by, and the tables that rank them (a sweep's summary, `report`).

One rule for the objective: the validation accuracy, or the training accuracy where there is no
validation set, at the best epoch when early stopping restored it, else at the last epoch.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
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


def row_of(run, swept_keys: Sequence[str] = ()) -> dict[str, Any]:
    """One MLflow run as a table row; the objective is the one the run logged (NaN if it logged none).

    `swept_keys` are the params a sweep varied: each is a column of its own.
    """
    metrics, params, tags = run.metrics, run.params, run.tags
    return {
        "run_id": run.run_id,
        "run_name": run.run_name,
        "status": run.status,
        "pruned_at": int(tags["pruned_at_epoch"]) if "pruned_at_epoch" in tags else "",
        "overrides": tags.get("overrides", ""),
        "objective": float(metrics.get("objective", math.nan)),
        "val_accuracy": float(metrics.get("val_accuracy", math.nan)),
        "test_accuracy": float(metrics.get("test_accuracy", math.nan)),
        "epochs": tags.get("last_completed_epoch", params.get("epochs", "")),
        "train_seconds": float(metrics.get("train_seconds", math.nan)),
        "seed": params.get("seed", ""),
        "config_group": tags.get("config_group", ""),
        "replicate": tags.get("replicate", ""),
        # Runs without a validation set rank by training accuracy (objective_metric).
        "objective_metric": "val_accuracy" if "val_accuracy" in metrics else "accuracy",
        "swept": {key: params.get(key, "") for key in swept_keys},
        # Why a run failed (store.run's tag, or a sweep's record of a job that left no run of its own).
        "failure_reason": tags.get("failure_reason", ""),
        "refused": tags.get("refused") == "true",  # a job refused as bad input (sweep.record_failed_job)
    }


def best_first(rows: list[dict]) -> list[dict]:
    """Highest objective first; runs without one (failed, NaN) last."""
    return sorted(rows, key=lambda row: -row["objective"] if not math.isnan(row["objective"]) else math.inf)


def job_counts(rows: list[dict]) -> dict[str, int]:
    """Runs that finished all their epochs, that were pruned, and that failed (or have no objective)."""
    pruned = sum(1 for row in rows if row["pruned_at"] != "")
    failed = sum(1 for row in rows if row["status"] != "FINISHED" or math.isnan(row["objective"]))
    return {"finished": len(rows) - pruned - failed, "pruned": pruned, "failed": failed}


def table_columns(rows: list[dict], swept_keys: Sequence[str] = ()) -> dict[str, list]:
    """The table as columns: the identifying ones, each swept key, then the figures."""
    names = [COLUMNS[0], "seed", *[key for key in swept_keys if key != "seed"], *COLUMNS[1:]]
    return {name: [cell_value(row, name) for row in rows] for name in names}


def cell_value(row: dict, name: str) -> Any:
    return row["swept"][name] if name in row.get("swept", {}) else row.get(name, "")


def markdown_table(rows: list[dict], swept_keys: Sequence[str] = ()) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    columns = table_columns(rows, swept_keys)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(cell(values[index]) for values in columns.values()) + " |" for index in range(len(rows))
    ]
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict], swept_keys: Sequence[str] = ()) -> str:
    columns = {**table_columns(rows, swept_keys), "overrides": [row["overrides"] for row in rows]}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(zip(*columns.values(), strict=True))
    return buffer.getvalue()
