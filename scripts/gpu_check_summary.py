"""The figures of scripts/gpu_check.sh: bench results and the two runs, as summary.md and results.json.

    python scripts/gpu_check_summary.py SCRATCH OUT SECONDS

SCRATCH holds bench_*.json and the MLflow store the runs logged to (MLFLOW_TRACKING_URI); OUT receives
the two files. A missing piece (a step that timed out) is reported as missing, not skipped silently.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path


def bench_rows(scratch: Path) -> list[dict]:
    rows = []
    for path in sorted(scratch.glob("bench_*.json")):
        result = json.loads(path.read_text())
        rows.append(
            {
                "model": result["model"],
                "precision": result["precision"],
                "batch_size": result["batch_size"],
                "images_per_repeat": result["images_per_repeat"],
                "runner_images_per_second": result["runner_images_per_second"],
                "bare_images_per_second": result["bare_images_per_second"],
                "ratio_median": result["ratio_median"],
                "jit_compile": result["jit_compile"],
                "achieved_gflops": result["achieved_gflops"],
                "matmul_peak_gflops": result["matmul_peak_gflops"],
                "compute_dtype_matmul_peak_gflops": result["compute_dtype_matmul_peak_gflops"],
                "fraction_of_compute_dtype_peak": result["fraction_of_compute_dtype_peak"],
                "backend": result["backend"],
            }
        )
    return sorted(rows, key=lambda row: (row["model"], row["precision"], row["batch_size"]))


def pace(epoch_seconds: list[float]) -> dict:
    """The first epoch includes compiling the step; the median of the rest is the steady pace."""
    steady = statistics.median(epoch_seconds[1:]) if len(epoch_seconds) > 1 else None
    return {"steady_epoch_seconds": steady, "seconds_for_100_epochs_at_steady_pace": 100 * steady if steady else None}


def run_rows(experiment_name: str = "gpu_check") -> list[dict]:
    """Every run of the MLflow experiment, with its per-epoch curves (the store: MLFLOW_TRACKING_URI)."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    rows = []
    for run in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]):

        def history(key: str, run_id: str = run.info.run_id) -> list[float]:
            return [point.value for point in sorted(client.get_metric_history(run_id, key), key=lambda p: p.step)]

        epoch_seconds = history("epoch_seconds")
        rows.append(
            {
                "run": run.info.run_name,
                "status": run.info.status,
                "epochs": len(epoch_seconds),
                "test_accuracy": run.data.metrics.get("test_accuracy"),
                "train_seconds": run.data.metrics.get("train_seconds"),
                "epoch_seconds": epoch_seconds,
                "images_per_second": history("images_per_second"),
                "val_accuracy": history("val_accuracy"),
                "loss": history("loss"),
                **pace(epoch_seconds),
                "backend": run.data.params.get("trainer.backend"),
                "seed": run.data.params.get("seed"),
                "child": "mlflow.parentRunId" in run.data.tags,
            }
        )
    return rows


def plain_rows(scratch: Path) -> list[dict]:
    """The curves scripts/article_plain.py wrote (plain_*.csv): its val_* are test figures."""
    import csv

    rows = []
    for path in sorted(scratch.glob("plain_*.csv")):
        epochs = list(csv.DictReader(path.open()))
        seconds = [float(epoch["seconds"]) for epoch in epochs]
        val_accuracy = [float(epoch["val_accuracy"]) for epoch in epochs]
        rows.append(
            {
                "run": path.stem,
                "status": "plain Keras",
                "epochs": len(epochs),
                "test_accuracy": val_accuracy[-1] if val_accuracy else None,
                "train_seconds": sum(seconds),
                "epoch_seconds": seconds,
                "loss": [float(epoch["loss"]) for epoch in epochs],
                "val_accuracy": val_accuracy,
                **pace(seconds),
            }
        )
    return rows


def figure(value, digits: int = 1) -> str:
    if value is None:
        return "missing"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown(benches: list[dict], runs: list[dict], seconds: str) -> str:
    lines = [f"# GPU check ({seconds} s in all)", ""]
    lines += ["## bench: the runner against bare Keras, same process, alternating", ""]
    if benches:
        lines.append(f"Backend: {benches[0]['backend']}")
        lines.append("")
        lines.append(
            "| model | precision | batch | runner images/s, per repeat | bare images/s, per repeat | runner/bare (median) "
            "| XLA | achieved GFLOP/s | matmul peak GFLOP/s (compute dtype) | fraction |"
        )
        lines.append("|---|---|---:|---|---|---:|---|---:|---:|---:|")
        for row in benches:
            runner = " / ".join(f"{value:,.0f}" for value in row["runner_images_per_second"])
            bare = " / ".join(f"{value:,.0f}" for value in row["bare_images_per_second"])
            lines.append(
                f"| {row['model']} | {row['precision']} | {row['batch_size']} | {runner} | {bare} | {row['ratio_median']:.3f} "
                f"| {row['jit_compile']} | {row['achieved_gflops']:,.0f} | {row['compute_dtype_matmul_peak_gflops']:,.0f} "
                f"| {row['fraction_of_compute_dtype_peak']:.3f} |"
            )
    else:
        lines.append("missing: no bench result (see log.txt)")
    lines += ["", "## runs", ""]
    if runs:
        lines.append(
            "| run | status | epochs | test accuracy | train seconds | seconds per epoch after the first "
            "| 100 epochs at that pace | images/s per epoch |"
        )
        lines.append("|---|---|---:|---:|---:|---:|---:|---|")
        for row in runs:
            accuracy = f"{100 * row['test_accuracy']:.2f}%" if row["test_accuracy"] is not None else "missing"
            rates = " / ".join(f"{value:,.0f}" for value in row["images_per_second"])
            lines.append(
                f"| {row['run']} | {row['status']} | {row['epochs']} | {accuracy} | {figure(row['train_seconds'])} "
                f"| {figure(row['steady_epoch_seconds'], 2)} | {figure(row['seconds_for_100_epochs_at_steady_pace'], 0)} "
                f"| {rates} |"
            )
    else:
        lines.append("missing: no run reached the store (see log.txt)")
    return "\n".join(lines) + "\n"


def main() -> None:
    scratch, out, seconds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    benches = bench_rows(scratch)
    try:
        runs = run_rows()
    except Exception as error:  # the store is missing or broken: say so in the summary, keep the rest
        print(f"gpu_check_summary: runs unreadable: {error}")
        runs = []
    runs += plain_rows(scratch)  # the plain script's CSV files do not depend on the store
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "seconds": float(seconds),
        "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI"),
        "bench": benches,
        "runs": runs,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(benches, runs, seconds)
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
