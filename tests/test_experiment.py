"""A real short training run on the shipped subset, logged to a private MLflow store and read back."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from fmnist_exp.data import fashion_mnist as data
from fmnist_exp.training import experiment
from helpers import SMALL_RUN, typed_config


def test_run_finishes_with_params_tags_and_test_metrics(finished_run):
    outcome, run, _, _ = finished_run
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "epochs=2,batch_size=64"
    params = run.data.params
    assert params["batch_size"] == "64" and params["epochs"] == "2"
    assert params["model.name"] == "seed_cnn" and params["model.dropout"] == "0.5"
    assert not any(key.startswith("model.layers") for key in params)  # the stack is the model_layers.txt artifact
    assert params["optimizer.name"] == "adam"
    assert params["model.parameters"] == "676842"
    assert run.data.tags["overrides"] == "epochs=2 batch_size=64"
    assert len(run.data.tags["git_commit"]) == 40
    assert run.data.metrics["test_accuracy"] == pytest.approx(outcome.test_accuracy)
    assert 0.3 < outcome.test_accuracy <= 1.0  # ten classes: chance is 0.1
    assert outcome.objective == pytest.approx(outcome.history["val_accuracy"][-1])


def test_every_epoch_is_logged(finished_run):
    outcome, run, _, _ = finished_run
    client = mlflow.MlflowClient()
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds", "images_per_second"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [point.step for point in history] == [1, 2], key
    losses = [point.value for point in client.get_metric_history(run.info.run_id, "loss")]
    assert losses == pytest.approx(outcome.history["loss"])


def test_artifacts_and_the_model_reload(finished_run):
    outcome, run, _, _ = finished_run
    client = mlflow.MlflowClient()
    top = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "overrides.yaml", "plots"} <= top  # the model is a LoggedModel, listed under "model"
    assert {item.path for item in client.list_artifacts(run.info.run_id, "model")} >= {
        "model/MLmodel",
        "model/input_example.json",
    }
    assert "/mlruns/artifacts/" in run.info.artifact_uri
    model = mlflow.keras.load_model(f"runs:/{run.info.run_id}/model")
    images, labels = data.load(typed_config(SMALL_RUN).data, seed=42).test
    accuracy = float((model.predict(images, verbose=0).argmax(axis=1) == labels).mean())
    assert accuracy == pytest.approx(outcome.test_accuracy)
    signature = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model").signature
    assert signature.inputs.inputs[0].shape == (-1, 28, 28, 1)


def test_same_seed_same_split_and_shuffle(tmp_path, tracking_uri):
    overrides = [*SMALL_RUN, f"mlflow.tracking_uri={tracking_uri}", "mlflow.log_model=false"]
    first = experiment.run(typed_config(overrides), tmp_path / "a")
    second = experiment.run(typed_config(overrides), tmp_path / "b")
    np.testing.assert_allclose(first.history["loss"], second.history["loss"], rtol=1e-5)


def test_mirrored_strategy_runs_on_one_cpu_device(tmp_path, tracking_uri):
    overrides = [
        *SMALL_RUN,
        "trainer.distribute=mirrored",
        "mlflow.log_model=false",
        f"mlflow.tracking_uri={tracking_uri}",
    ]
    outcome = experiment.run(typed_config(overrides), tmp_path)
    assert mlflow.MlflowClient(tracking_uri).get_run(outcome.run_id).info.status == "FINISHED"
    assert 0.1 < outcome.test_accuracy <= 1.0


def test_a_run_records_where_its_time_went(finished_run):
    """From the run's start: the start-up, the first epoch's end, the result; and the training alone."""
    _, run, _, _ = finished_run
    metrics = run.data.metrics
    startup, first, result = (metrics[f"time/{key}_seconds"] for key in ("startup", "to_first_epoch", "to_result"))
    assert 0 < startup < first < result
    assert metrics["train_seconds"] < result - startup
