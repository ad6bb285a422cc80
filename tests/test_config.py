"""Every config option composes and validates; bad values fail with the key named."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from conftest import CONF_DIR, compose_config, typed_config
from fmnist_exp.config import ExperimentConfig, flatten, validate
from fmnist_exp.errors import ConfigError


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


@pytest.mark.parametrize(
    "override, key",
    [
        ("batch_size=-1", "batch_size"),
        ("batch_size=0", "batch_size"),
        ("batch_size=1000000000", "batch_size"),
        ("epochs=-1", "epochs"),
        ("optimizer.learning_rate=-0.1", "optimizer.learning_rate"),
        ("optimizer.momentum=0.9", "optimizer.momentum"),  # adam takes no momentum
        ("optimizer.schedule.name=linear", "optimizer.schedule.name"),
        ("optimizer.schedule.warmup_epochs=1", "optimizer.schedule.warmup_epochs"),
        ("data.max_train_samples=0", "data.max_train_samples"),
        ("data.validation=valid", "data.validation"),
        ("data.validation_fraction=1.5", "data.validation_fraction"),
        ("trainer.precision=float16", "trainer.precision"),
        ("model.layers.0.type=conv3d", "model.layers[0].type"),
        ("model.layers.0.filters=0", "model.layers[0].filters"),
        ("model.layers.8.rate=1.5", "model.layers[8].rate"),
        ("model.layers.4.kernel_size=13", "model.layers[4].kernel_size"),
        ("model.layers.9.units=9", "model.layers[9]"),
    ],
)
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError) as caught:
        typed_config([override])
    assert str(caught.value).startswith(f"{key}:")


@pytest.mark.parametrize("override", ["batch_size=abc", "epochs=1.5", "learning_rate=0.1", "data.directory=/x"])
def test_wrong_types_and_unknown_keys_fail_at_compose_time(override):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        typed_config([override])


def test_unknown_group_option_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException, match="optimizer"):
        compose_config(["optimizer=adagrad"])


def test_kernel_message_names_the_feature_map():
    config = typed_config()
    config.model.layers[4]["kernel_size"] = 13
    with pytest.raises(ConfigError, match=r"model.layers\[4\].kernel_size: 13 does not fit the 12x12x64 feature map"):
        validate(config)


def test_flatten_gives_dotted_keys():
    params = flatten(typed_config())
    assert params["batch_size"] == 32
    assert params["model.layers.0.type"] == "conv2d"
    assert params["model.layers.0.kernel_regularizer.l2"] == 0.01
    assert params["optimizer.schedule.name"] == "constant"
