"""The store people run behind a shared tracking server: a real PostgreSQL server (Debian's binaries),
a real `mlflow server` in front of it, and a run killed with SIGKILL that the next command closes."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from fmnist_exp.tracking.liveness import PID_TAG
from helpers import (
    SUBSET_DIR,
    TINY_RUN,
    checkpoint_epoch,
    finish,
    free_port,
    run_command,
    start_command,
    stop_process_group,
    wait_for,
    wait_for_http,
)

psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2-binary is not installed (the postgres extra)")
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
pytestmark = [
    pytest.mark.slow,  # a real PostgreSQL and mlflow server, and a Ray cluster: minutes (CI's second step)
    pytest.mark.skipif(not (POSTGRES_BIN / "initdb").is_file(), reason="Debian's postgresql 15 is not installed"),
]


@pytest.fixture
def postgres():
    """A PostgreSQL server on 127.0.0.1 in a folder of its own, with databases mlflow and optuna;
    yields its URI without a database name. As root, the server runs as the postgres user (initdb
    refuses root)."""
    folder = Path(tempfile.mkdtemp(prefix="fmnist-postgres-"))
    as_owner = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    subprocess.run(
        [*as_owner, str(POSTGRES_BIN / "initdb"), "-D", str(data), "-U", "fmnist", "--auth=trust", "-E", "UTF8"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    port = free_port()
    log = open(folder / "server.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [*as_owner, str(POSTGRES_BIN / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(folder)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                connection = psycopg2.connect(host="127.0.0.1", port=port, user="fmnist", dbname="postgres")
                break
            except psycopg2.OperationalError:
                assert process.poll() is None, (folder / "server.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "PostgreSQL did not accept connections in 60 s"
                time.sleep(0.3)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE mlflow")
            cursor.execute("CREATE DATABASE optuna")
        connection.close()
        yield f"postgresql+psycopg2://fmnist@127.0.0.1:{port}"  # SQLAlchemy 2.1 would pick psycopg 3
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop_process_group(process)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_server(postgres, tmp_path):
    """A real `mlflow server` on 127.0.0.1 whose store is the PostgreSQL database mlflow."""
    port = free_port()
    log = open(tmp_path / "mlflow-server.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"{postgres}/mlflow", "--artifacts-destination", str(tmp_path / "artifacts"),
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", process, seconds=180)
        yield uri
    finally:
        stop_process_group(process)
        log.close()


def test_a_run_killed_in_epoch_2_on_a_postgresql_store_is_closed_by_the_next_command(tmp_path, postgres_server):
    """A training logs through the server into PostgreSQL and is killed with SIGKILL in its second
    epoch; a report of another experiment closes it KILLED with its reason."""
    output = tmp_path / "run"
    arguments = [*TINY_RUN, "epochs=3", "mlflow.log_model=false", f"mlflow.tracking_uri={postgres_server}"]
    process = start_command("fmnist_exp.run", [*arguments, f"hydra.run.dir={output}"], tmp_path)
    started = time.monotonic()
    deadline = started + 600
    while checkpoint_epoch(output) < 1:
        assert process.poll() is None, finish(process).stderr[-3000:]
        assert time.monotonic() < deadline, "no checkpoint in 600 s"
        time.sleep(0.05)
    process.kill()  # in epoch 2
    finish(process)
    client = MlflowClient(postgres_server)
    (run,) = client.search_runs([client.get_experiment_by_name("fmnist_exp").experiment_id])
    assert run.info.status == "RUNNING"

    client.create_experiment("other")
    report = run_command(
        "fmnist_exp.report",
        ["sweep=all", "mlflow.experiment_name=other", f"mlflow.tracking_uri={postgres_server}"],
        tmp_path,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    closed = client.get_run(run.info.run_id)
    assert closed.info.status == "KILLED"
    assert f"process {process.pid} on " in closed.data.tags["killed_reason"]


def test_a_sweep_on_ray_over_postgresql_loses_one_trial_to_a_killed_worker(
    tmp_path, postgres, postgres_server, ray_head
):
    """Six Optuna trials, two Ray workers at a time, pruning on, MLflow and the study both in one
    PostgreSQL. One worker process is killed with SIGKILL in its trial's second epoch: the sweep goes
    on and finishes, the lost trial's run is closed KILLED with its reason and the study records it
    FAILED; every other trial has exactly one run, and `report` lists all six."""
    import optuna

    started = time.monotonic()
    storage = f"{postgres}/optuna"
    arguments = [
        "-m", "hparams_search=optuna", "model=fast_cnn", "hydra/launcher=ray_cluster",
        f"hydra.launcher.ray.init.address={ray_head}", f"mlflow.tracking_uri={postgres_server}",
        "mlflow.experiment_name=production", f"hydra.sweeper.storage='{storage}'",
        "hydra.sweeper.study_name=production", "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2",
        "pruning.warmup_epochs=1", "optimizer.learning_rate=tag(log, interval(0.0003, 0.003))", f"data.dir={SUBSET_DIR}", "data.max_train_samples=600",
        "data.max_test_samples=200", "epochs=3", "trainer.verbose=2", "mlflow.log_model=false",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]  # fmt: skip
    environment = {"MLFLOW_TRACKING_URI": postgres_server}
    sweep = start_command("fmnist_exp.run", arguments, tmp_path, environment)
    client = MlflowClient(postgres_server)

    def a_trial_in_its_second_epoch():
        experiment = client.get_experiment_by_name("production")
        if experiment is None:
            return None
        running = client.search_runs(
            [experiment.experiment_id],
            "attributes.status = 'RUNNING' and tags.last_completed_epoch = '1' and tags.`mlflow.parentRunId` != ''",
        )
        return running[0] if running else None

    victim = wait_for(a_trial_in_its_second_epoch, sweep, what="a trial in its second epoch")
    os.kill(int(victim.data.tags[PID_TAG]), signal.SIGKILL)  # the Ray worker running that trial
    result = finish(sweep)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "lost its Ray worker" in result.stdout + result.stderr

    experiment = client.get_experiment_by_name("production")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if "sweep_key" in run.data.tags]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 6, [(run.info.status, run.data.tags.get("optuna.trial")) for run in children]
    lost = client.get_run(victim.info.run_id)
    assert lost.info.status == "KILLED"
    assert f"process {victim.data.tags[PID_TAG]} on " in lost.data.tags["killed_reason"]
    others = [run for run in children if run.info.run_id != victim.info.run_id]
    assert {run.info.status for run in others} == {"FINISHED"}, [run.data.tags.get("failure_reason") for run in others]

    study = optuna.load_study(study_name="production", storage=storage)
    assert len(study.trials) == 6
    states = [trial.state.name for trial in study.trials]
    assert states.count("FAIL") == 1 and set(states) <= {"FAIL", "COMPLETE", "PRUNED"}, states
    logged = [trial.user_attrs.get("mlflow_run_id") for trial in study.trials if trial.state.name != "FAIL"]
    assert sorted(logged) == sorted(run.info.run_id for run in others)  # each trial once, none twice
    assert sorted(int(run.data.tags["optuna.trial"]) for run in others) == sorted(
        trial.number for trial in study.trials if trial.state.name != "FAIL"
    )

    report = run_command(
        "fmnist_exp.report", [f"mlflow.tracking_uri={postgres_server}", "mlflow.experiment_name=production"], tmp_path
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert f"sweep {parent.info.run_id} (6 jobs)" in report.stdout
    assert report.stdout.count("KILLED") == 1 and report.stdout.count("FINISHED") == 5
    print(f"the sweep with its servers took {time.monotonic() - started:.0f} s")


def shared_search(postgres: str, study: str, sweep_dir: Path) -> list[str]:
    """The search command each machine runs on one study in PostgreSQL, shrunk: 4 trials of 1 epoch
    on 300 images, heartbeats every second and a grace period of 3 s."""
    return [
        "-m", "hparams_search=optuna", "model=fast_cnn", f"hydra.sweeper.storage='{postgres}/optuna'",
        f"hydra.sweeper.study_name={study}", "hydra.sweeper.n_trials=4", "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=3", f"data.dir={SUBSET_DIR}", "data.max_train_samples=300",
        "data.max_test_samples=100", "epochs=1", "trainer.verbose=0", "trainer.threads=1", "mlflow.log_model=false",
        f"mlflow.experiment_name={study}", f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip


def test_two_searches_share_a_study_and_only_a_killed_ones_trial_is_failed(tmp_path, postgres, tracking_uri):
    """Two searches started at once on one study in PostgreSQL (the same command on two machines) run
    4 trials in total, none failed by the other. Then two more on a second study, one killed with
    SIGKILL in a trial: the other fails that trial only, once its heartbeat is older than the grace
    period, and trains its replacement, so the study again ends with 4 trials that count."""
    import optuna

    from fmnist_exp.sweeps.shared_study import INTERRUPTED_ATTR, SEARCH_ATTR
    from fmnist_exp.sweeps.study import counted_trials
    from fmnist_exp.tracking.store import Store

    started = time.monotonic()
    Store(tracking_uri).client  # noqa: B018 (the MLflow store's schema, made once before two searches share it)
    environment = {"MLFLOW_TRACKING_URI": tracking_uri}
    # The study's tables, made once: two searches that start at once on an empty database would race to.
    storage = optuna.storages.RDBStorage(f"{postgres}/optuna")

    def searches(study: str) -> list[subprocess.Popen]:
        return [
            start_command(
                "fmnist_exp.run", shared_search(postgres, study, tmp_path / f"{study}-{n}"), tmp_path, environment
            )
            for n in (1, 2)
        ]

    first, second = searches("shared")
    results = [finish(first), finish(second)]
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    output = "".join(result.stdout + result.stderr for result in results)
    study = optuna.load_study(study_name="shared", storage=storage)
    states = [trial.state.name for trial in study.trials]
    assert "no heartbeat" not in output, output[-3000:]
    assert states.count("COMPLETE") == 4 and counted_trials(study) == 4, states
    assert states.count("FAIL") == output.count("given back"), states  # only a trial its own search gave back
    owners = {trial.user_attrs[SEARCH_ATTR] for trial in study.trials if trial.state.name == "COMPLETE"}
    assert owners == {f"process {process.pid} on {socket.gethostname()}" for process in (first, second)}, owners
    print(f"two searches sharing a study: {time.monotonic() - started:.0f} s")

    victim, survivor = searches("killed")
    victim_search = f"process {victim.pid} on {socket.gethostname()}"

    def a_trial_of_the_victim():
        try:
            trials = optuna.load_study(study_name="killed", storage=storage).trials
        except KeyError:  # the study is not made yet
            return None
        return [trial for trial in trials if trial.user_attrs.get(SEARCH_ATTR) == victim_search]

    wait_for(a_trial_of_the_victim, victim, what="a trial of the first search")
    time.sleep(2)  # into its training
    os.killpg(victim.pid, signal.SIGKILL)
    killed_at = datetime.datetime.now()
    given_back = finish(victim).stdout.count("given back")
    result = finish(survivor)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="killed", storage=storage)
    lost = [trial for trial in study.trials if trial.user_attrs.get(SEARCH_ATTR) == victim_search]
    unfinished = [trial for trial in lost if trial.state.name != "COMPLETE"]
    assert len(unfinished) == 1, [(trial.number, trial.state.name) for trial in lost]
    (killed,) = unfinished
    assert killed.state.name == "FAIL" and killed.user_attrs[INTERRUPTED_ATTR] is True
    # Failed once its last heartbeat (at most 1 s before the kill) was more than 3 s old.
    assert (killed.datetime_complete - killed_at).total_seconds() >= 3 - 1, (killed.datetime_complete, killed_at)
    assert (
        f"trial {killed.number} of {victim_search} failed: no heartbeat for more than" in result.stdout + result.stderr
    )
    others = [trial.state.name for trial in study.trials if trial.number != killed.number]
    given_back += (result.stdout + result.stderr).count("given back")
    assert others.count("COMPLETE") == 4 and others.count("FAIL") == given_back, others
    assert counted_trials(study) == 4
    print(f"both studies: {time.monotonic() - started:.0f} s")
