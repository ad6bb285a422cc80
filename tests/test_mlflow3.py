"""What a run records in MLflow 3's own terms, read back through MLflow's client: its datasets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest

from conftest import SMALL_RUN, SUBSET_DIR, typed_config
from fmnist_exp import data, datasets
from fmnist_exp import experiment as experiment_module


@pytest.fixture(scope="module")
def subset_run(tmp_path_factory):
    """One epoch on 1,000 subset images, registered, system metrics sampled every second.

    Returns (outcome, MLflow client, tracking URI).
    """
    root = tmp_path_factory.mktemp("mlflow3")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    overrides = [*SMALL_RUN, f"mlflow.tracking_uri={uri}", "register=true", "mlflow.experiment_name=mlflow3"]
    interval, cwd = os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"), Path.cwd()
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"
    empty = root / "cwd"  # where MLflow's default store (./mlflow.db) would appear if anything fell back to it
    empty.mkdir()
    os.chdir(empty)
    try:
        outcome = experiment_module.run(typed_config(overrides), root / "output", overrides=["epochs=1"])
    finally:
        os.chdir(cwd)
        if interval is None:
            os.environ.pop("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
        else:
            os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = interval
    assert not list(empty.iterdir()), "something used MLflow's default store instead of the run's"
    return outcome, mlflow.MlflowClient(uri), uri


def the_logged_model(client, run):
    (model,) = client.search_logged_models([run.info.experiment_id])
    return model


# -- datasets -----------------------------------------------------------------------------------------


def test_the_run_logs_its_three_datasets(subset_run):
    outcome, client, _ = subset_run
    run = client.get_run(outcome.run_id)
    by_context = {
        next(tag.value for tag in item.tags if tag.key == "mlflow.data.context"): item.dataset
        for item in run.inputs.dataset_inputs
    }
    assert set(by_context) == {"training", "validation", "test"}
    names = {context: dataset.name for context, dataset in by_context.items()}
    assert names == {
        "training": "fashion-mnist-train",
        "validation": "fashion-mnist-validation",
        "test": "fashion-mnist-test",
    }
    params = run.data.params
    for context, count_param in (("training", "train"), ("validation", "validation"), ("test", "test")):
        dataset = by_context[context]
        profile = json.loads(dataset.profile)
        assert profile["images"] == int(params[f"data.{count_param}_images"])
        assert profile["origin"] == "data.dir" and profile["checksums_verified"] is True
        assert dataset.digest == profile["sha256"][: datasets.DIGEST_LENGTH]
        assert (dataset.source_type, json.loads(dataset.source)["uri"]) == ("local", str(SUBSET_DIR.resolve()))
        assert sum(profile["class_counts"]) == profile["images"]


def test_dataset_digests_follow_the_images():
    def digests(*overrides):
        config = typed_config([*SMALL_RUN, *overrides])
        described = datasets.describe(config, data.load(config.data, config.seed))
        return {context: dataset.digest for context, dataset in described.items()}

    base = digests()
    assert digests() == base
    assert len(set(base.values())) == 3
    fewer = digests("data.max_train_samples=800")
    assert fewer["training"] != base["training"] and fewer["validation"] != base["validation"]
    assert fewer["test"] == base["test"]
    assert digests("seed=7")["validation"] != base["validation"]
    article = digests("data.validation=test")
    assert article["validation"] == article["test"] == base["test"]
    assert "validation" not in digests("data.validation=none")
