"""A real Ray cluster on 127.0.0.1 runs a sweep that logs to a real MLflow server over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest

from fmnist_exp.tracking.store import Store
from helpers import SUBSET_DIR

pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="the sweeps extra is not installed")
pytestmark = pytest.mark.slow  # a real Ray cluster and tracking server: minutes (CI's second step)


def test_ray_sweep_logs_through_the_tracking_server(tmp_path, ray_head, mlflow_server):
    result = subprocess.run(
        [
            sys.executable, "-m", "fmnist_exp.run", "-m",
            "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={ray_head}",
            f"mlflow.tracking_uri={mlflow_server}", "mlflow.experiment_name=distributed",
            f"data.dir={SUBSET_DIR}", "data.max_train_samples=600", "data.max_test_samples=200",
            "epochs=1", "trainer.verbose=0", "seed=1,2", f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("distributed")
    all_runs = client.search_runs([experiment.experiment_id])
    children = [run for run in all_runs if "mlflow.parentRunId" in run.data.tags]
    parents = [run for run in all_runs if "sweep_key" in run.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(run.data.params["seed"] for run in children) == ["1", "2"]
    assert all(run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics for run in children)
    # The model (a LoggedModel of the run) went through the server's artifact proxy.
    model = Store(mlflow_server).logged_model_of(children[0].info.run_id)
    assert model.artifact_location.startswith("mlflow-artifacts:")
    assert client.list_logged_model_artifacts(model.model_id)
    assert {run.data.tags["trainer.threads"] for run in children} == {"1"}  # a setting of the machine: a tag
