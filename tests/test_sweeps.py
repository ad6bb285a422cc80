"""Sweeps for real: grid multirun, resumable re-runs, Optuna, joblib in parallel, the report."""

from __future__ import annotations

import dataclasses
import math
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
    assert "job failed: optimizer.learning_rate: -1.0 must be a positive number" in result.stdout
    logs = "".join(path.read_text() for path in (tmp_path / "sweep").glob("*/run.log"))
    assert "job failed: the training loss became NaN or infinite" in logs  # the job's own log file says so
    assert parents[0].info.status == "FINISHED"


def test_sweep_without_validation_ranks_by_training_accuracy_and_says_so(tmp_path, tracking_uri):
    multirun([*TINY, "data.validation=none", "seed=1,2"], tracking_uri, tmp_path)
    (parent,), children = split(runs(tracking_uri))
    best = max(children, key=lambda child: child.data.metrics["accuracy"])
    assert parent.data.metrics["best_objective"] == best.data.metrics["accuracy"]
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert "best_val_accuracy" not in parent.data.metrics  # no validation set, no validation figure
    table = (tmp_path / "sweep" / "summary" / "sweep_summary.csv").read_text().splitlines()
    assert table[0].startswith("run_name,status,pruned_at,objective,val_accuracy,")
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


def test_a_trailing_job_is_pruned_from_the_shared_store(tmp_path, tracking_uri):
    # Jobs run in order; the last one (a learning rate far too small) trails the three before it.
    sweep = [*TINY, "epochs=3", "pruning.enabled=true", "pruning.min_jobs=3",
             "optimizer.learning_rate=0.003,0.002,0.001,0.0000001"]  # fmt: skip
    result = multirun(sweep, tracking_uri, tmp_path)
    parents, children = split(runs(tracking_uri))
    by_rate = {child.data.params["optimizer.learning_rate"]: child for child in children}
    slow = by_rate["1e-07"]
    assert slow.info.status == "FINISHED"
    assert slow.data.tags["pruned"] == "true" and slow.data.tags["pruned_at_epoch"] == "1"
    assert slow.data.tags["last_completed_epoch"] == "1"
    assert "test_accuracy" in slow.data.metrics  # a pruned job is still evaluated
    for rate in ("0.003", "0.002", "0.001"):
        assert "pruned" not in by_rate[rate].data.tags and by_rate[rate].data.tags["last_completed_epoch"] == "3"
    assert "pruned after epoch 1" in result.stdout
    assert parents[0].data.tags["sweep_pruned"] == "1"
    table = (tmp_path / "sweep" / "summary" / "sweep_summary.md").read_text()
    assert "| 1 |" in table.split(slow.info.run_id)[0].splitlines()[-1]  # pruned_at column of its row
    # The log file of the pruned job holds the same line as the terminal.
    logs = "".join(path.read_text() for path in (tmp_path / "sweep").glob("*/run.log"))
    assert "pruned after epoch 1" in logs


def test_pruning_is_off_unless_asked(tmp_path, tracking_uri):
    multirun(
        [*TINY, "epochs=2", "pruning.min_jobs=1", "optimizer.learning_rate=0.003,0.0000001"], tracking_uri, tmp_path
    )
    _, children = split(runs(tracking_uri))
    assert all("pruned" not in child.data.tags for child in children)
    assert {child.data.tags["last_completed_epoch"] for child in children} == {"2"}


def study_of(tracking_uri: str):
    import optuna

    storage = "sqlite:///" + str(Path(tracking_uri.removeprefix("sqlite:///")).parent / "optuna.db")
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def test_optuna_study_is_stored_and_a_rerun_continues_it(tmp_path, tracking_uri):
    search = [*TINY, "hparams_search=optuna", "model=fast_cnn", "hydra.sweeper.n_trials=2"]
    multirun(search, tracking_uri, tmp_path)
    study = study_of(tracking_uri)
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "COMPLETE"]
    _, children = split(runs(tracking_uri))
    assert sorted(child.data.tags["optuna.trial"] for child in children) == ["0", "1"]
    assert {trial.user_attrs["mlflow_run_id"] for trial in study.trials} == {child.info.run_id for child in children}
    assert all(trial.intermediate_values == {1: trial.value} for trial in study.trials)  # per-epoch curve reported

    again = multirun(search, tracking_uri, tmp_path)  # the same command: nothing left to do
    assert "2 of 2 trials done" in again.stdout
    assert len(study_of(tracking_uri).trials) == 2 and len(split(runs(tracking_uri))[1]) == 2

    more = multirun([*search[:-1], "hydra.sweeper.n_trials=3"], tracking_uri, tmp_path)  # 3 in total, so one more
    assert "2 of 3 trials done" in more.stdout
    assert [trial.number for trial in study_of(tracking_uri).trials] == [0, 1, 2]


def test_a_killed_search_continues_without_repeating_finished_trials(tmp_path, tracking_uri):
    import signal
    import time

    search = [*TINY, "epochs=2", "hparams_search=optuna", "model=fast_cnn", "hydra.sweeper.n_trials=3",
              f"hydra.sweep.dir={tmp_path}/sweep"]  # fmt: skip
    from fmnist_exp.store import Store

    Store(tracking_uri).check()  # the store's schema exists before this test polls it
    process = subprocess.Popen(
        [sys.executable, "-m", "fmnist_exp.run", "-m", *search],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 400
    try:  # kill -9 the search in the middle of its second trial
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "the second trial never started"
            children = split(runs(tracking_uri))[1]
            if len(children) == 2 and any(child.data.tags.get("last_completed_epoch") is None for child in children):
                break
            time.sleep(0.5)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert [trial.state.name for trial in study_of(tracking_uri).trials] == ["COMPLETE", "RUNNING"]

    again = multirun(search[:-1], tracking_uri, tmp_path)
    assert "1 of 3 trials done; 1 interrupted trial(s) marked failed and not counted" in again.stdout
    states = [trial.state.name for trial in study_of(tracking_uri).trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    _, children = split(runs(tracking_uri))
    finished = [child for child in children if child.info.status == "FINISHED"]
    assert len(finished) == 3 and len({child.data.tags["config_hash"] for child in finished}) == 3
    killed = [child for child in children if child.info.status != "FINISHED"]
    assert [child.info.status for child in killed] == ["KILLED"]  # reaped: its process is gone
    assert "killed_reason" in killed[0].data.tags


def test_the_study_counts_a_pruned_job_as_pruned():
    import optuna
    from hydra.core.utils import JobReturn, JobStatus

    from fmnist_exp import study
    from fmnist_exp.sweep import JobResult

    trials = optuna.create_study(direction="maximize")
    outcomes = [
        JobResult(objective=0.8, curve=[0.7, 0.8]),
        JobResult(objective=0.4, pruned=True, curve=[0.4]),
        JobResult(objective=math.nan),
    ]
    for outcome in outcomes:
        job = JobReturn(status=JobStatus.COMPLETED, _return_value=dataclasses.asdict(outcome))
        study.tell(trials, trials.ask(), job, store=None, study_name="test")
    assert [trial.state.name for trial in trials.trials] == ["COMPLETE", "PRUNED", "FAIL"]
    assert trials.trials[1].intermediate_values == {1: 0.4}
