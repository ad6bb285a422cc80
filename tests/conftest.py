"""Shared fixtures: the shipped real subset, a private MLflow store, Hydra's compose API."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from fmnist_exp.config import PROJECT_ROOT, ExperimentConfig, register_schemas, to_experiment_config

SUBSET_DIR = Path(__file__).parent / "data" / "fashion-mnist-subset"
CONF_DIR = PROJECT_ROOT / "conf"
FULL_DATA_DIR = os.environ.get("FMNIST_DATA_DIR")
# The decoded-data cache of the whole session (and its subprocesses) stays out of the user's home.
os.environ.setdefault("FMNIST_CACHE_DIR", tempfile.mkdtemp(prefix="fmnist-exp-cache-"))

# The shrunken real config that fast tests train: 1 epoch on 1,000 real images.
SMALL_RUN = [
    f"data.dir={SUBSET_DIR}",
    "data.max_train_samples=1000",
    "data.max_test_samples=300",
    "epochs=1",
    "batch_size=64",
    "trainer.verbose=0",
]


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose(config_name="config", overrides=overrides or [])


def typed_config(overrides: list[str] | None = None) -> ExperimentConfig:
    return to_experiment_config(compose_config(overrides))


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

    from fmnist_exp import experiment

    root = tmp_path_factory.mktemp("run")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    overrides = [*SMALL_RUN, "epochs=2", f"mlflow.tracking_uri={uri}", "register=true"]
    outcome = experiment.run(typed_config(overrides), root / "output", overrides=["epochs=2", "batch_size=64"])
    mlflow.set_tracking_uri(uri)
    return outcome, mlflow.get_run(outcome.run_id), uri, root / "output"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process, seconds: float = 90) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


def stop_process_group(process) -> None:
    """End a server we started (and only its own process group), politely first."""
    import signal
    import subprocess

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


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
