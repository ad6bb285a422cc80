"""A sweep's plan before launch (`plan=true`) and its progress line while it runs.

The power arithmetic against SciPy and textbook values; the plan's words on a store of known runs
made with the MLflow client (no training); that a plan leaves no folder and no store; and the progress
line on one tiny real sweep.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from fmnist_exp.analysis import power
from fmnist_exp.sweeps import progress
from helpers import SUBSET_DIR, multirun, small_run

# -- the power of the paired t-test -----------------------------------------------------------------


def test_with_no_difference_the_test_rejects_at_its_level():
    # By hand: with a true difference of 0 the statistic is a central t, so it crosses the two-sided
    # critical value with probability alpha, whatever the seeds or the spread.
    for seeds in (2, 3, 10):
        assert power.paired_power(0.0, 0.004, seeds) == pytest.approx(0.05, abs=1e-12)


def test_seeds_needed_match_the_textbook_table():
    # Cohen's table for a one-sample (paired) t-test, two-sided 5%, 80% power: d = 0.8 needs 15
    # pairs, d = 0.5 needs 34 (R's pwr.t.test(d=0.5, power=0.8, type="paired") gives n = 33.37).
    assert power.seeds_needed(0.8, 1.0) == 15
    assert power.seeds_needed(0.5, 1.0) == 34
    assert power.paired_power(0.5, 1.0, 34) == pytest.approx(0.8078, abs=1e-4)  # G*Power's "actual power"
    assert power.seeds_needed(0.005, 0.01) == 34  # only the ratio counts
    assert power.seeds_needed(0.2, 1.0) is None  # 199 pairs: more than replicates takes


def test_the_smallest_difference_is_where_the_power_reaches_80_percent():
    for sd, seeds in ((0.0042, 3), (0.01, 5), (1.0, 34)):
        smallest = power.smallest_difference(sd, seeds)
        assert power.paired_power(smallest, sd, seeds) == pytest.approx(0.8, abs=1e-9)
    assert power.smallest_difference(0.01, 34) < 0.005 < power.smallest_difference(0.01, 33)
    assert power.smallest_difference(0.01, 1) == math.inf  # one seed: nothing to test


def test_the_power_agrees_with_the_normal_approximation_and_scipys_simulation():
    import numpy
    from scipy import stats

    # Many seeds: the t test is nearly a z test, difference = (z_0.975 + z_0.8) * sd / sqrt(n).
    normal = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / math.sqrt(1000)
    assert power.smallest_difference(1.0, 1000) == pytest.approx(normal, rel=0.005)
    # Few seeds: SciPy's Monte Carlo power of its own one-sample t-test on the per-seed differences.
    rng = numpy.random.default_rng(0)
    simulated = stats.power(
        stats.ttest_1samp,
        lambda size: rng.normal(0.006, 0.0042, size=size),
        (5,),
        significance=0.05,
        n_resamples=20000,
        kwargs={"popmean": 0.0},
    ).power
    assert power.paired_power(0.006, 0.0042, 5) == pytest.approx(float(numpy.ravel(simulated)[0]), abs=0.015)


# -- the plan --------------------------------------------------------------------------------------

PLANNED = ["model=fast_cnn", "batch_size=64", "epochs=3", "data.max_train_samples=600", "model.dropout=0.2,0.4"]


def plan(arguments: list[str], cwd: Path, tracking_uri: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmnist_exp.run", "-m", "plan=true", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
    )


def known_run(client, experiment_id: str, group: str, objective: float, start: float = 1000.0, **changes) -> str:
    """A FINISHED run as the runner logs one: 2 epochs of 2.0 and 1.0 s in a run 5.5 s long from `start`."""
    params = {
        "model.name": "fast_cnn",
        "batch_size": "64",
        "data.max_train_samples": "600",
        "data.validation": "holdout",
    }
    params.update(changes.pop("params", {}))
    tags = {"config_group": group, "fmnist_exp.host": changes.pop("host", socket.gethostname())}
    tags.update(changes.pop("tags", {}))
    run = client.create_run(experiment_id, start_time=int(start * 1000), tags=tags)
    run_id = run.info.run_id
    for key, value in params.items():
        client.log_param(run_id, key, value)
    for step, seconds in ((1, 2.0), (2, 1.0)):
        client.log_metric(run_id, "epoch_seconds", seconds, step=step)
    client.log_metric(run_id, "objective", objective)
    client.set_terminated(run_id, "FINISHED", end_time=int((start + 5.5) * 1000))
    return run_id


def test_the_plan_counts_times_and_sizes_a_sweep_from_the_store(tmp_path, tracking_uri):
    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("fmnist_exp")
    # One process, started at 1000 s: its first run 12 s later, each next one 3 s after the last ended.
    process = {"tags": {"fmnist_exp.pid": "4242", "fmnist_exp.pid_start": "1000.00"}}
    used = [
        known_run(client, experiment_id, "a", 0.80, start=1012.0, **process),
        known_run(client, experiment_id, "a", 0.82, start=1020.5, **process),
        known_run(client, experiment_id, "b", 0.70, start=1029.0, **process),
        known_run(client, experiment_id, "b", 0.72, start=1037.5, **process),
    ]
    # Not for the estimate: another host, another batch size, another data size (nor for the spread).
    known_run(client, experiment_id, "c", 0.5, host="elsewhere")
    known_run(client, experiment_id, "d", 0.6, params={"batch_size": "32"})
    other_data = known_run(client, experiment_id, "e", 0.1, params={"data.max_train_samples": "6000"})
    known_run(client, experiment_id, "e", 0.9, params={"data.max_train_samples": "6000"})
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    before = database.stat().st_mtime_ns

    result = plan([*PLANNED, "replicates=3", "plan_difference=0.01"], tmp_path, tracking_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    host = socket.gethostname()
    assert "Plan: 2 jobs x 3 seeds = 6 runs (the basic sweeper's grid: 2 model.dropout)" in text
    # 1.5 s an epoch (the mean of 2.0 and 1.0) x 3 epochs + 2.5 s outside them + 3 s between runs =
    # 10 s a run; 6 runs, and 12 s of the process's start-up once.
    assert "Time: ~72 s for the 6 runs one after another, 12 s of it the process's start-up" in text
    assert (
        "  fast_cnn, batch size 64, 3 epochs, 600 training images (validation holdout): ~10 s a run "
        f"(1.5 s an epoch x 3 + 2.5 s outside the epochs + 3.0 s between runs), from 4 finished runs on {host}: "
    ) in text
    assert all(run_id[:8] in text for run_id in used) and other_data[:8] not in text
    # Groups a and b spread by sd 0.0141 each (the groups of the other data, 0.1 and 0.9, are left out).
    assert (
        "Seed noise: sd 0.0141 of the objective across seeds, pooled over 2 configs (4 runs) of fast_cnn in the "
        "store with two or more seeds: a (2); b (2);"
    ) in text
    assert "sd x sqrt(2) = 0.0200" in text
    smallest = power.smallest_difference(0.02, 3)
    assert (
        "With 3 seeds per config, a paired t-test (two-sided, 5% level) with 80% power resolves a difference "
        f"of {smallest:.4f} ({100 * smallest:.2f} points) or more."
    ) in text
    # 0.01 against a per-seed sd of 0.02 is d = 0.5: 34 seeds, as the table says.
    chance = power.paired_power(0.01, 0.02, 3)
    assert (
        f"A difference of 0.01 (1.00 points) needs 34 seeds per config (replicates=34); 3 seeds find it {100 * chance:.0f}%"
        in text
    )
    assert not (tmp_path / "multirun").exists() and database.stat().st_mtime_ns == before
    assert len(client.search_runs([experiment_id])) == 8  # no parent run was made

    # A race (replicates=auto) runs from race.min_seeds to race.max_seeds seeds per config: a range.
    race = plan([*PLANNED, "replicates=auto", "race.max_seeds=5"], tmp_path, tracking_uri)
    assert race.returncode == 0, race.stderr[-3000:]
    assert (
        "Plan: 2 jobs x 2 to 5 seeds = 4 to 10 runs (the basic sweeper's grid: 2 model.dropout; replicates=auto: "
        "more seeds only for configs undecided against the leader)"
    ) in race.stdout
    assert "Time: ~52 s to ~2 min for the 4 to 10 runs one after another, 12 s of it" in race.stdout
    most = power.smallest_difference(0.02, 5)
    assert (
        f"A config still undecided races on up to 5 seeds, which resolve {most:.4f} ({100 * most:.2f} points) or more."
        in race.stdout
    )


def test_a_plan_leaves_no_folder_and_no_store(tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    result = plan([*PLANNED, "replicates=2"], tmp_path, tracking_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Time: no estimate (the store {tmp_path / 'mlruns' / 'mlflow.db'} does not exist yet)" in result.stdout
    assert "sd 0.0030 of the objective across seeds, the default 0.003" in result.stdout
    assert list(tmp_path.iterdir()) == []  # no multirun/ folder, no mlruns/, no database

    search = plan(["hparams_search=optuna", "hydra.sweeper.n_trials=4", "replicates=2"], tmp_path, tracking_uri)
    assert search.returncode == 0, search.stderr[-3000:]
    assert "Plan: 4 jobs x 2 seeds = 8 runs (n_trials=4 trials of the study sweeper)" in search.stdout
    assert list(tmp_path.iterdir()) == []

    single = subprocess.run(
        [sys.executable, "-m", "fmnist_exp.run", f"data.dir={SUBSET_DIR}", "plan=true"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
    )
    assert single.returncode == 2 and "plan: true plans a sweep" in single.stderr
    assert list(tmp_path.iterdir()) == []


# -- the progress line -----------------------------------------------------------------------------


def test_the_progress_line_counts_down_and_names_the_best():
    ended = [{"label": "model.dropout=0.2", "objective": 0.8935}, {"label": "model.dropout=0.4", "objective": None}]
    assert (
        progress.line(ended[:1], 12, started=0.0, now=120.0)
        == "job 1/12 done, 11 to go, ~22 min left, best so far model.dropout=0.2 0.8935"
    )
    assert progress.line(ended[1:], None, 0.0, 5.0) == "job 1 done, no objective yet"
    assert progress.line(ended, 2, 0.0, 5.0) == "job 2/2 done, 0 to go, best so far model.dropout=0.2 0.8935"
    # A race's total is the jobs launched so far: the line names the round they belong to.
    assert progress.line(ended, 5, 0.0, 4.0, race_round=2) == (
        "job 2/5 done, 3 to go in round 2 of the race, ~6 s left, best so far model.dropout=0.2 0.8935"
    )


def test_a_sweep_logs_its_progress_after_each_job(tmp_path, tracking_uri):
    tiny = small_run(400, 200, "epochs=1", "trainer.verbose=0", "mlflow.log_model=false")
    result = multirun([*tiny, "model=fast_cnn", "model.dropout=0.2,0.4"], tracking_uri, tmp_path)
    lines = [line for line in result.stdout.splitlines() if line.startswith("job ")]
    assert len(lines) == 2, result.stdout[-3000:]
    assert lines[0].startswith("job 1/2 done, 1 to go, ~") and " left, best so far model.dropout=0.2 " in lines[0]
    assert lines[1].startswith("job 2/2 done, 0 to go, best so far model.dropout=")
    children = [
        run
        for run in mlflow.MlflowClient(tracking_uri).search_runs(
            [mlflow.MlflowClient(tracking_uri).get_experiment_by_name("fmnist_exp").experiment_id]
        )
        if "mlflow.parentRunId" in run.data.tags
    ]
    best = max(children, key=lambda run: run.data.metrics["objective"])
    assert lines[1].endswith(f"best so far {best.info.run_name} {best.data.metrics['objective']:.4f}")
    # Hydra's log of each job holds its line; the sweep's folder the jobs' ends.
    assert "job 1/2 done" in (tmp_path / "sweep" / "0" / "run.log").read_text()
    assert "job 2/2 done" in (tmp_path / "sweep" / "1" / "run.log").read_text()
    entries = [json.loads(line) for line in (tmp_path / "sweep" / progress.PROGRESS_FILE).read_text().splitlines()]
    assert [entry["label"] for entry in entries] == ["model.dropout=0.2", "model.dropout=0.4"]
