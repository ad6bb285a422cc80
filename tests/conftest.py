"""Shared fixtures: the shipped real subset, a private MLflow store, Hydra's compose API."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from fmnist_exp.config import PROJECT_ROOT, ExperimentConfig, register_schemas, to_experiment_config

SUBSET_DIR = Path(__file__).parent / "data" / "fashion-mnist-subset"
CONF_DIR = PROJECT_ROOT / "conf"
FULL_DATA_DIR = os.environ.get("FMNIST_DATA_DIR")

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
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
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
