"""Every config option composes and validates. Bad values are the table in test_cli.py."""

from __future__ import annotations

import pytest

from fmnist_exp.config.schema import ExperimentConfig
from helpers import CONF_DIR, typed_config

pytestmark = pytest.mark.unit  # no training, no subprocess: the inner loop (pytest -m unit)


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override",
    [
        f"{group}={option}"
        for group in ("model", "optimizer", "data", "experiment", "hparams_search")
        for option in group_options(group)
    ],
)
def test_every_group_option_composes_and_validates(override):
    config = typed_config([override])
    assert isinstance(config, ExperimentConfig)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "exponential"])
def test_every_schedule_validates(schedule):
    typed_config([f"optimizer.schedule.name={schedule}"])


def test_default_is_the_article_recipe():
    config = typed_config()
    assert (config.batch_size, config.epochs, config.model.name) == (32, 100, "seed_cnn")
    assert config.optimizer.name == "adam"
    assert (config.optimizer.learning_rate, config.optimizer.beta_1, config.optimizer.beta_2) == (0.001, 0.9, 0.999)
    convolutions = [layer for layer in config.model.layers if layer["type"] == "conv2d"]
    assert [layer["activation"] for layer in convolutions] == [None] * 4
    assert all(layer["kernel_regularizer"] == {"l2": 0.01} for layer in convolutions)


def test_tracking_uri_is_an_absolute_sqlite_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = typed_config().mlflow.tracking_uri
    assert uri.startswith("sqlite:////") and uri.endswith("/mlruns/mlflow.db")


def test_data_dir_defaults_to_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FMNIST_DATA_DIR", str(tmp_path))
    assert typed_config().data.dir == str(tmp_path)


def test_a_value_derived_from_a_knob_names_the_knob_and_the_expression():
    from fmnist_exp.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        typed_config(["model.width=3", "model.layers.3.filters='${mul:${model.width},0}'"])
    assert str(refused.value) == (
        "model.width: 3 makes model.layers[3].filters = ${mul:${model.width},0}, which fails: "
        "0 must be an integer of at least 1"
    )
