"""Sweeps for real: grid multirun, resumable re-runs, Optuna, joblib in parallel, the report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from conftest import SUBSET_DIR, typed_config
from fmnist_exp import experiment, report

TINY = [
    f"data.dir={SUBSET_DIR}",
    "data.max_train_samples=600",
    "data.max_test_samples=200",
    "epochs=1",
    "trainer.verbose=0",
    "deterministic=true",
]


def multirun(arguments: list[str], tracking_uri: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "fmnist_exp.run", "-m", *arguments, f"hydra.sweep.dir={cwd}/sweep"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def runs(tracking_uri: str) -> list:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def split(all_runs: list) -> tuple[list, list]:
    parents = [run for run in all_runs if "sweep_key" in run.data.tags]
    children = [run for run in all_runs if "mlflow.parentRunId" in run.data.tags]
    return parents, children


def test_grid_sweep_parent_children_summary_and_resume(tmp_path, tracking_uri):
    grid = [*TINY, "batch_size=32,64", "optimizer=adam,sgd"]
    multirun(grid, tracking_uri, tmp_path)
    parents, children = split(runs(tracking_uri))
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert len(children) == 4
    assert {child.data.tags["mlflow.parentRunId"] for child in children} == {parent.info.run_id}
    assert all(child.info.status == "FINISHED" for child in children)
    assert {child.info.run_name for child in children} == {
        f"batch_size={size},optimizer={name}" for size in (32, 64) for name in ("adam", "sgd")
    }
    best = max(children, key=lambda child: child.data.metrics["val_accuracy"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.metrics["best_val_accuracy"] == best.data.metrics["val_accuracy"]
    assert parent.data.metrics["best_objective"] == best.data.metrics["val_accuracy"]
    summary = {item.path for item in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "summary")}
    assert summary == {"summary/sweep_summary.csv", "summary/sweep_summary.md", "summary/sweep_comparison.png"}
    table = (tmp_path / "sweep" / "summary" / "sweep_summary.md").read_text()
    assert all(child.info.run_id in table for child in children)

    # The same configs run one by one, in this process, give the same test accuracies.
    for child in children:
        size, name = child.info.run_name.replace("batch_size=", "").split(",optimizer=")
        single = experiment.run(
            typed_config(
                [
                    *TINY,
                    f"batch_size={size}",
                    f"optimizer={name}",
                    "mlflow.tracking_uri=sqlite:///" + str(tmp_path / "single.db"),
                ]
            ),
            tmp_path / f"single-{size}-{name}",
        )
        assert single.test_accuracy == child.data.metrics["test_accuracy"], child.info.run_name

    # Re-running the sweep command skips every finished config and reuses the parent.
    again = multirun(grid, tracking_uri, tmp_path)
    assert again.stdout.count("skipped: this config already FINISHED") == 4
    parents, children_after = split(runs(tracking_uri))
    assert len(parents) == 1 and len(children_after) == 4
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["sweep_resumed"] == "true"

    rows = report.main([f"mlflow.tracking_uri={tracking_uri}", "champion=sweep_best"])
    assert [row["run_id"] for row in rows][0] == best.info.run_id and len(rows) == 4
    champion = mlflow.MlflowClient(tracking_uri).get_model_version_by_alias("sweep_best", "champion")
    assert champion.run_id == best.info.run_id


def test_optuna_search_names_the_best_trial(tmp_path, tracking_uri):
    result = multirun([*TINY, "hparams_search=optuna", "hydra.sweeper.n_trials=3"], tracking_uri, tmp_path)
    assert "Best parameters:" in result.stderr + result.stdout
    parents, children = split(runs(tracking_uri))
    (parent,) = parents
    assert len(children) == 3
    best = max(children, key=lambda child: child.data.metrics["val_accuracy"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    for key in ("optimizer.learning_rate=", "batch_size=", "model.dropout=", "model.width="):
        assert key in parent.data.tags["best_overrides"]
    # The searched values reached the trained models.
    assert best.data.params["batch_size"] in {"32", "64", "128"}
    assert best.data.params["model.width"] in {"16", "24", "32", "48"}


def test_failed_trial_is_recorded_and_the_sweep_goes_on(tmp_path, tracking_uri):
    result = multirun([*TINY, "epochs=2", "optimizer.learning_rate=1e6,-1,0.001"], tracking_uri, tmp_path)
    parents, children = split(runs(tracking_uri))
    statuses = {child.data.params["optimizer.learning_rate"]: child.info.status for child in children}
    # The diverging job ran and FAILED; the invalid one was refused before any run; the last ran.
    assert statuses == {"1000000.0": "FAILED", "0.001": "FINISHED"}
    assert "optimizer.learning_rate: -1.0 must be a positive number" in result.stderr
    assert parents[0].info.status == "FINISHED"


def test_sweep_without_validation_ranks_by_training_accuracy_and_says_so(tmp_path, tracking_uri):
    multirun([*TINY, "data.validation=none", "seed=1,2"], tracking_uri, tmp_path)
    (parent,), children = split(runs(tracking_uri))
    best = max(children, key=lambda child: child.data.metrics["accuracy"])
    assert parent.data.metrics["best_objective"] == best.data.metrics["accuracy"]
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert "best_val_accuracy" not in parent.data.metrics  # no validation set, no validation figure
    table = (tmp_path / "sweep" / "summary" / "sweep_summary.csv").read_text().splitlines()
    assert table[0].startswith("run_name,status,objective,val_accuracy,")
    assert all(",nan," in line for line in table[1:])  # val_accuracy column: none measured


def test_joblib_parallel_jobs_all_recorded(tmp_path, tracking_uri):
    result = multirun(
        [*TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2,3,4"], tracking_uri, tmp_path
    )
    assert "database is locked" not in result.stderr
    parents, children = split(runs(tracking_uri))
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(child.data.params["seed"] for child in children) == ["1", "2", "3", "4"]
    assert all(child.info.status == "FINISHED" for child in children)
    # Two jobs on two cores: one TensorFlow thread each.
    assert {child.data.params["trainer.threads"] for child in children} == {str(max(1, (os.cpu_count() or 1) // 2))}


@pytest.mark.parametrize("arguments", [["sweep=0123"], ["mlflow.experiment_name=nothing"]])
def test_report_refuses_unknown_names(tracking_uri, arguments, capsys):
    with pytest.raises(SystemExit) as stopped:
        report.main([*arguments, f"mlflow.tracking_uri={tracking_uri}"])
    assert stopped.value.code == 2
