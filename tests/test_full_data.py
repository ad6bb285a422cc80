"""The full data set from FMNIST_DATA_DIR: one real epoch of the article's model (about a minute)."""

from __future__ import annotations

import mlflow
import pytest

from fmnist_exp.training import experiment
from helpers import typed_config


@pytest.mark.slow
def test_one_full_epoch_of_the_default_model(full_data_dir, tmp_path, tracking_uri):
    overrides = [
        f"data.dir={full_data_dir}",
        "epochs=1",
        "batch_size=128",
        "trainer.verbose=0",
        f"mlflow.tracking_uri={tracking_uri}",
    ]
    outcome = experiment.run(typed_config(overrides), tmp_path / "output")
    run = mlflow.MlflowClient(tracking_uri).get_run(outcome.run_id)
    assert run.data.params["data.train_images"] == "54000"
    assert run.data.params["data.test_images"] == "10000"
    # One epoch of the article's model reaches about 85% on the official test set.
    assert outcome.test_accuracy > 0.80
