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

from fmnist_exp.commands import report
from fmnist_exp.training import experiment
from helpers import SWEEP_RUN, multirun, typed_config


def runs(tracking_uri: str) -> list:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def split(all_runs: list) -> tuple[list, list]:
    parents = [run for run in all_runs if "sweep_key" in run.data.tags]
    children = [run for run in all_runs if "mlflow.parentRunId" in run.data.tags]
    return parents, children


def test_grid_sweep_parent_children_summary_and_resume(tmp_path, tracking_uri):
    grid = [*SWEEP_RUN, "batch_size=32,64", "optimizer=adam,sgd"]
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
    assert summary == {
        f"summary/{name}"
        for name in (
            "sweep_summary.csv", "sweep_summary.md", "sweep_comparison.png", "jobs.json", "configs.md",
            "objective_by_epoch.png", "params_vs_objective.png",
        )
    }  # fmt: skip
    table = (tmp_path / "sweep" / "summary" / "sweep_summary.md").read_text()
    assert all(child.info.run_id in table for child in children)
    # The parent says what was swept; each job logs a short set of params with every swept key in it.
    assert parent.data.params["batch_size"] == "32,64" and parent.data.params["optimizer"] == "adam,sgd"
    assert table.startswith("| run_name | seed | batch_size | optimizer.name | status |")
    for child in children:
        assert len(child.data.params) <= 35 and {"batch_size", "optimizer.name"} <= set(child.data.params)
    assert parent.data.metrics["jobs_finished"] == 4 and parent.data.metrics["jobs_failed"] == 0
    assert "Swept: batch_size in 32,64; optimizer in adam,sgd." in parent.data.tags["mlflow.note.content"]

    # A config of the sweep run alone, in this process, gives the same test accuracy (one config of
    # the four: each costs a training, and the four were trained alike).
    for child in sorted(children, key=lambda child: child.info.run_name)[:1]:
        size, name = child.info.run_name.replace("batch_size=", "").split(",optimizer=")
        single = experiment.run(
            typed_config(
                [
                    *SWEEP_RUN,
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
    result = multirun([*SWEEP_RUN, "hparams_search=optuna", "hydra.sweeper.n_trials=3"], tracking_uri, tmp_path)
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
    # The parent holds the search space, Optuna's own figures and the jobs' table.
    assert parent.data.params["optimizer.learning_rate"] == "tag(log, interval(0.0003, 0.01))"
    assert parent.data.params["sweeper"] == "study" and parent.data.params["n_trials"] == "3"
    summary = {item.path for item in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/optuna_history.png", "summary/optuna_importances.png", "summary/jobs.json"} <= summary
    assert "summary/params_vs_objective.png" in summary


def test_failed_trial_is_recorded_and_the_sweep_goes_on(tmp_path, tracking_uri):
    result = multirun([*SWEEP_RUN, "epochs=2", "optimizer.learning_rate=1e6,-1,0.001"], tracking_uri, tmp_path)
    parents, children = split(runs(tracking_uri))
    statuses = {child.data.params["optimizer.learning_rate"]: child.info.status for child in children}
    # The diverging job ran and FAILED; the invalid one was refused before training, and is counted as
    # a FAILED run that says why (tests/test_sweep_faults.py); the last ran.
    assert statuses == {"1000000.0": "FAILED", "-1": "FAILED", "0.001": "FINISHED"}
    assert "job failed: optimizer.learning_rate: -1.0 must be a positive number" in result.stdout
    logs = "".join(path.read_text() for path in (tmp_path / "sweep").glob("*/run.log"))
    assert "job failed: the training loss became NaN or infinite" in logs  # the job's own log file says so
    assert parents[0].info.status == "FINISHED"


def test_sweep_without_validation_ranks_by_training_accuracy_and_says_so(tmp_path, tracking_uri):
    multirun([*SWEEP_RUN, "data.validation=none", "seed=1,2"], tracking_uri, tmp_path)
    (parent,), children = split(runs(tracking_uri))
    best = max(children, key=lambda child: child.data.metrics["accuracy"])
    # A seed sweep is one config's replicates: the best objective is their mean.
    mean = sum(child.data.metrics["accuracy"] for child in children) / 2
    assert parent.data.metrics["best_objective"] == pytest.approx(mean)
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert "best_val_accuracy" not in parent.data.metrics  # no validation set, no validation figure
    table = (tmp_path / "sweep" / "summary" / "sweep_summary.csv").read_text().splitlines()
    assert table[0].startswith("run_name,seed,status,pruned_at,objective,val_accuracy,")
    assert all(",nan," in line for line in table[1:])  # val_accuracy column: none measured


def test_replicates_train_each_config_on_several_seeds_and_report_says_if_it_is_noise(tmp_path, tracking_uri, capsys):
    # An earlier race's standing in the same sweep folder: a sweep that is no race must not report it.
    stale = tmp_path / "sweep" / "summary" / "race.json"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"min_seeds": 2, "max_seeds": 3, "seeds_per_round": 1, "entrants": [], "runs": 9, "rounds": 2}')
    result = multirun([*SWEEP_RUN, "optimizer.learning_rate=0.001,0.003", "replicates=2"], tracking_uri, tmp_path)
    assert not stale.exists()
    parents, children = split(runs(tracking_uri))
    (parent,) = parents
    assert len(children) == 4 and all(child.info.status == "FINISHED" for child in children)
    groups: dict[str, list] = {}
    for child in children:
        groups.setdefault(child.data.tags["config_group"], []).append(child)
    # One tag per config (what the UI's "Group by" groups on), its seeds 42 and 43.
    assert len(groups) == 2
    for members in groups.values():
        assert sorted(member.data.params["seed"] for member in members) == ["42", "43"]
        assert sorted(member.data.tags["replicate"] for member in members) == ["0", "1"]
        assert len({member.data.params["optimizer.learning_rate"] for member in members}) == 1
    means = {key: sum(member.data.metrics["objective"] for member in members) / 2 for key, members in groups.items()}
    best_group = max(means, key=means.get)
    assert parent.data.metrics["best_objective"] == pytest.approx(means[best_group])
    assert parent.data.params["replicates"] == "2"
    assert parent.data.params["optimizer.learning_rate"] == "0.001,0.003"
    note = parent.data.tags["mlflow.note.content"]
    assert "Swept: optimizer.learning_rate in 0.001,0.003, 2 seeds per config. 4 runs: 4 finished" in note
    # Both configs ran on seeds 42 and 43: the verdict compares them seed by seed, and says so.
    assert "paired t-test over seeds 42,43" in note and "Re-run the winner: python -m fmnist_exp.run -m " in note
    assert note.rstrip().endswith("replicates=2") and note.count("replicates=2") == 1
    assert "Race (replicates=auto)" not in note
    assert '"type": "table"' in parent.data.tags["mlflow.loggedArtifacts"]
    table = mlflow.MlflowClient(tracking_uri).load_table(
        experiment_id=parent.info.experiment_id, artifact_file="summary/jobs.json", run_ids=[parent.info.run_id]
    )
    assert sorted(table["run_id"]) == sorted(child.info.run_id for child in children)
    assert "The comparison (table, figures): http://127.0.0.1:5000/#/experiments/" in result.stdout + result.stderr

    capsys.readouterr()
    report.main([f"mlflow.tracking_uri={tracking_uri}"])
    printed = capsys.readouterr().out
    assert "| config | seeds | objective mean +- sd | 95% interval |" in printed
    assert printed.count("| 2 |") >= 2 and "(paired t-test over seeds 42,43, p=" in printed
    assert (
        f"#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning" in printed
    )


def test_replicates_without_a_sweep_are_refused_in_one_line(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"  # the refusal must not make it
    result = subprocess.run(
        [sys.executable, "-m", "fmnist_exp.run", *SWEEP_RUN, "replicates=3"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": store},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fmnist_exp: error: replicates: 3 trains the config 3 times as a sweep; add -m "
        "(python -m fmnist_exp.run -m ... replicates=N) to get one parent run that compares them"
    ]
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlruns").exists()  # a refusal leaves nothing


@pytest.mark.slow
def test_joblib_parallel_jobs_all_recorded(tmp_path, tracking_uri):
    result = multirun(
        [*SWEEP_RUN, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2,3,4"], tracking_uri, tmp_path
    )
    assert "database is locked" not in result.stderr
    parents, children = split(runs(tracking_uri))
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(child.data.params["seed"] for child in children) == ["1", "2", "3", "4"]
    assert all(child.info.status == "FINISHED" for child in children)
    # Two jobs on two cores: one TensorFlow thread each.
    assert {child.data.tags["trainer.threads"] for child in children} == {str(max(1, (os.cpu_count() or 1) // 2))}


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["sweep=0123"], "sweep: run '0123' is not a run in"),
        (["mlflow.experiment_name=nothing"], "mlflow.experiment_name: no experiment named 'nothing'"),
    ],
)
def test_report_refuses_unknown_names(tracking_uri, arguments, message, capsys):
    from fmnist_exp.tracking.store import Store

    Store(tracking_uri).experiment_id("fmnist_exp")  # a store that exists: report makes none
    with pytest.raises(SystemExit) as stopped:
        report.main([*arguments, f"mlflow.tracking_uri={tracking_uri}"])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_a_trailing_job_is_pruned_from_the_shared_store(tmp_path, tracking_uri):
    # Jobs run in order; the last one (a learning rate far too small) trails the three before it.
    sweep = [*SWEEP_RUN, "epochs=3", "pruning.enabled=true", "pruning.min_jobs=3",
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


@pytest.mark.slow
def test_pruning_is_off_unless_asked(tmp_path, tracking_uri):
    multirun(
        [*SWEEP_RUN, "epochs=2", "pruning.min_jobs=1", "optimizer.learning_rate=0.003,0.0000001"],
        tracking_uri,
        tmp_path,
    )
    _, children = split(runs(tracking_uri))
    assert all("pruned" not in child.data.tags for child in children)
    assert {child.data.tags["last_completed_epoch"] for child in children} == {"2"}


def study_of(tracking_uri: str):
    import optuna

    storage = "sqlite:///" + str(Path(tracking_uri.removeprefix("sqlite:///")).parent / "optuna.db")
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


@pytest.mark.slow
def test_optuna_study_is_stored_and_a_rerun_continues_it(tmp_path, tracking_uri):
    search = [*SWEEP_RUN, "hparams_search=optuna", "model=fast_cnn", "hydra.sweeper.n_trials=2"]
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


@pytest.mark.slow
def test_a_killed_search_continues_without_repeating_finished_trials(tmp_path, tracking_uri):
    import signal
    import time

    # Heartbeats every second: the killed search's trial is stale 2 s after its last one.
    search = [*SWEEP_RUN, "epochs=2", "hparams_search=optuna", "model=fast_cnn", "hydra.sweeper.n_trials=3",
              "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2",
              f"hydra.sweep.dir={tmp_path}/sweep"]  # fmt: skip
    from fmnist_exp.tracking.store import Store

    Store(tracking_uri).client  # noqa: B018 (makes the store's schema before this test polls it)
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

    time.sleep(3)  # past the grace period, so the next search fails the killed one's trial as it starts
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

    from fmnist_exp.sweeps import study
    from fmnist_exp.sweeps.jobs import JobResult

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


def test_report_reads_a_sweep_logged_before_params_and_replicates_changed(tracking_uri, capsys):
    """A parent with no params, children with the old per-class names and no config_group tag."""
    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("older")
    parent = client.create_run(experiment_id, run_name="sweep: batch_size=32,64", tags={"sweep_key": "k"})
    for size, accuracy in (("32", 0.81), ("64", 0.84)):
        child = client.create_run(
            experiment_id, run_name=f"batch_size={size}", tags={"mlflow.parentRunId": parent.info.run_id}
        )
        client.log_param(child.info.run_id, "batch_size", size)
        client.log_param(child.info.run_id, "model.layers.0.filters", "32")  # the old positional params
        for key, value in (("objective", accuracy), ("val_accuracy", accuracy), ("test_accuracy", accuracy - 0.01)):
            client.log_metric(child.info.run_id, key, value)
        client.log_metric(child.info.run_id, "test_recall_ankle_boot", 0.9)
        client.set_terminated(child.info.run_id, "FINISHED")
    client.set_terminated(parent.info.run_id, "FINISHED")

    rows = report.main([f"mlflow.tracking_uri={tracking_uri}", "mlflow.experiment_name=older"])
    printed = capsys.readouterr().out
    assert [row["run_name"] for row in rows] == ["batch_size=64", "batch_size=32"]
    assert "| batch_size=64 | 1 | 0.8400 +- n/a | n/a |" in printed  # each run a config of its own
    assert "one seed each: noise unknown (use replicates=2 or more)" in printed
