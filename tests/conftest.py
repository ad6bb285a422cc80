"""Shared fixtures: a private MLflow store, a finished run, a real MLflow server.

Helpers and constants live in helpers.py, their one home; test modules import them from there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import (
    FULL_DATA_DIR,
    SMALL_RUN,
    close_zygotes,
    free_port,
    ray_cluster_is_up,
    stop_process_group,
    typed_config,
    wait_for_http,
)

# A test marked slow (a cluster, the browser, the full data set) may take minutes on a loaded machine.
SLOW_TIMEOUT = 1800


def pytest_sessionfinish(session):
    close_zygotes()


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    """A fresh SQLite MLflow store for one test."""
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


@pytest.fixture
def full_data_dir() -> Path:
    if not FULL_DATA_DIR or not Path(FULL_DATA_DIR).is_dir():
        pytest.skip("FMNIST_DATA_DIR does not point at the full data set")
    return Path(FULL_DATA_DIR)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """Two epochs of the default model on 1,000 real images, registered; shared read-only by tests.

    Returns (outcome, mlflow Run, tracking URI, output folder).
    """
    import mlflow

    from fmnist_exp.training import experiment

    root = tmp_path_factory.mktemp("run")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    overrides = [*SMALL_RUN, "epochs=2", f"mlflow.tracking_uri={uri}", "register=true"]
    outcome = experiment.run(typed_config(overrides), root / "output", overrides=["epochs=2", "batch_size=64"])
    mlflow.set_tracking_uri(uri)
    return outcome, mlflow.get_run(outcome.run_id), uri, root / "output"


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 with a SQLite store; yields its http URI."""
    import subprocess
    import sys

    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    log = open(store / "server.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination", str(store / "artifacts"),
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", process)
        yield uri
    finally:
        stop_process_group(process)
        log.close()


# Two heads may start at once (test_distributed and test_postgres, one per worker) on a loaded 2-core
# machine: each took 120 s and more there.
RAY_START_SECONDS = 300


@pytest.fixture
def ray_head(tmp_path_factory):
    """`ray start --head --block` on 127.0.0.1 with two CPUs (two workers at a time), in its own process
    group, stopped by the test."""
    import subprocess
    import time

    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="the sweeps extra is not installed")
    port = free_port()
    folder = tmp_path_factory.mktemp("ray")
    log = folder / "head.log"  # a file, not a pipe: a full pipe would stop the head mid-write
    with open(log, "w") as output:
        process = subprocess.Popen(
            [
                "ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={folder}",
            ],
            stdout=output, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            # Ray 2.60 turns token authentication on for a head when ~/.ray/auth_token exists (a
            # local ray.init can leave one), and `ray status` and the sweep's clients would then be
            # refused: a test cluster on loopback runs without it.
            env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + RAY_START_SECONDS
        while not ray_cluster_is_up(address):
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, f"the Ray head did not come up in {RAY_START_SECONDS} s"
            time.sleep(1)
        yield address
    finally:
        stop_process_group(process)
