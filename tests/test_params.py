"""What a run logs as params: the choices a person compares, every swept key, no nulls or paths."""

from __future__ import annotations

import pytest

from fmnist_exp.tracking.params import run_params, run_tags_of_config
from helpers import SUBSET_DIR, typed_config

pytestmark = pytest.mark.unit  # no training, no subprocess: the inner loop (pytest -m unit)

COUNTS = {"data.train_images": 899, "data.validation_images": 101, "data.test_images": 300, "model.parameters": 1}


def test_a_fast_cnn_job_logs_a_short_readable_set():
    overrides = [
        "experiment=fast",
        "model.dropout=0.2",
        "optimizer.learning_rate=0.003",
        f"data.dir={SUBSET_DIR}",
        "data.max_train_samples=6000",
        "epochs=2",
    ]
    params = run_params(typed_config(overrides), overrides, COUNTS)
    assert len(params) <= 35, sorted(params)
    assert None not in params.values() and "null" not in map(str, params.values())
    assert not any(key.startswith("model.layers") for key in params)
    for machine_or_control in ("data.dir", "mlflow.tracking_uri", "dry_run", "force", "resume", "register"):
        assert machine_or_control not in params
    assert params["experiment"] == "fast" and params["model.name"] == "fast_cnn"
    assert params["model.dropout"] == 0.2 and params["model.width"] == 32  # the knobs, by name
    assert params["optimizer.learning_rate"] == 0.003 and params["data.max_train_samples"] == 6000
    assert params["model.parameters"] == 1  # the counts known once the model exists


def test_only_the_chosen_optimizer_and_schedule_fields_are_params():
    sgd = run_params(typed_config(["optimizer=sgd"]))  # conf/optimizer/sgd.yaml sets momentum and nesterov
    assert {key for key in sgd if key.startswith("optimizer.")} == {
        "optimizer.name",
        "optimizer.learning_rate",
        "optimizer.momentum",
        "optimizer.nesterov",
        "optimizer.schedule.name",
    }
    cosine = run_params(typed_config(["optimizer.schedule.name=cosine", "optimizer.schedule.warmup_epochs=1"]))
    assert cosine["optimizer.schedule.warmup_epochs"] == 1.0 and "optimizer.schedule.alpha" in cosine
    assert "optimizer.schedule.decay_rate" not in cosine


def test_every_key_a_sweep_varies_is_a_param_and_settings_that_are_on_are_listed():
    overrides = ["trainer.threads=1", "trainer.early_stopping.patience=3", "pruning.enabled=true", "deterministic=true"]
    params = run_params(typed_config(overrides), overrides)
    assert params["trainer.threads"] == 1  # chosen on the command line (a launcher's own choice is a tag)
    assert params["trainer.early_stopping.monitor"] == "val_accuracy" and params["pruning.warmup_epochs"] == 1
    assert params["deterministic"] is True
    plain = run_params(typed_config())
    assert not any(key.startswith(("trainer.early_stopping", "pruning")) for key in plain)


def test_machine_paths_are_tags():
    config = typed_config([f"data.dir={SUBSET_DIR}", "trainer.threads=2"])
    tags = run_tags_of_config(config)
    assert tags["data.dir"] == str(SUBSET_DIR) and tags["mlflow.tracking_uri"] == config.mlflow.tracking_uri
    assert tags["trainer.threads"] == "2"


def test_a_swept_layer_stack_key_is_a_param_of_each_job():
    """`-m model.layers.0.filters=16,32`: each job logs the key it was given, so the parent's comparison
    has its column (a number part of a key indexes the layer list, as in Hydra)."""
    overrides = ["model.layers.0.filters=16", "model.layers.4.kernel_size=5"]
    params = run_params(typed_config(overrides), overrides)
    assert params["model.layers.0.filters"] == 16 and params["model.layers.4.kernel_size"] == 5
