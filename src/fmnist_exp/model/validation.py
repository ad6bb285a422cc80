"""A whole experiment config checked before anything starts: the schema's own checks (config.py), what
each Keras backend cannot do (backend.py) and the layer stack's shapes (models.py), all plain Python.

Kept above config.py so that the schema imports neither the registry nor the backends.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from fmnist_exp.config.checks import check_values
from fmnist_exp.config.schema import ExperimentConfig, in_knob_terms, knob_references, model_config
from fmnist_exp.errors import ConfigError
from fmnist_exp.model import backend
from fmnist_exp.model import layers as models


def validate(config: ExperimentConfig) -> None:
    """Raise ConfigError naming the first bad key; returns quietly for a sound config."""
    check_values(config)
    backend.check(config.trainer)  # the backend's name, and what it cannot do (mirrored outside TensorFlow)
    models.check_stack(config.model.layers, key="model.layers", augmentation=config.model.augmentation)


def to_experiment_config(config: DictConfig) -> ExperimentConfig:
    """Turn Hydra's composed DictConfig into the typed object and validate it."""
    try:
        typed = OmegaConf.to_object(config)
    except InterpolationResolutionError as error:
        raise ConfigError(f"{error.full_key or 'config'}: {str(error).splitlines()[0]}") from error
    if not isinstance(typed, ExperimentConfig):
        raise TypeError("the composed config does not extend experiment_schema")
    typed.model = model_config(typed.model)
    model_node = config.get("model")
    written = OmegaConf.to_container(model_node, resolve=False) if isinstance(model_node, DictConfig) else {}
    try:
        validate(typed)
    except ConfigError as error:
        raise in_knob_terms(error, knob_references(written), typed.model.knobs) from error
    return typed
