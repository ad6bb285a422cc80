"""What a run logs as params and tags: what a person chose or swept, not everything the config holds.

Params are the choices people compare in the MLflow UI: the preset, seed, batch size and epochs, the
model's name, named knobs and size, the fields of the chosen optimizer and schedule that apply, the
data's sizes and validation scheme, the backend and precision, and early stopping or pruning when on.
Nulls, layer-list positions and run-control switches (resume, force, register, dry_run) are not
params; machine paths and the store are tags. Every key given on the command line that changes what
is trained is a param too, so whatever a sweep varies is among them. The full config is the run's
`config.yaml` artifact and its layer stack the `model_layers.txt` artifact.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from typing import Any

from fmnist_exp.config import overrides as grammar
from fmnist_exp.config.identity import GROUP_PARAMS, PATH_KEYS, trains_something
from fmnist_exp.config.schema import OPTIMIZER_PARAMS, PROJECT_ROOT, ExperimentConfig, as_dict

# The schedule fields each schedule reads (the others are ignored by it, so they are not logged).
SCHEDULE_FIELDS = {"constant": (), "cosine": ("warmup_epochs", "alpha"), "exponential": ("decay_rate", "decay_epochs")}


def run_params(config: ExperimentConfig, overrides: Iterable[str] = (), counts: dict[str, int] | None = None) -> dict:
    """The params of one run: the choices above, plus every trained key given in `overrides`.

    `counts` are the sizes known once the data and the model exist (data.train_images, ...,
    model.parameters).
    """
    overrides = list(overrides)
    params: dict[str, Any] = {
        "experiment": preset_of(overrides) or "none",
        "seed": config.seed,
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "model.name": config.model.name,
        **{f"model.{knob}": value for knob, value in config.model.knobs.items()},
    }
    if config.model.augmentation:
        params["model.augmentation"] = ",".join(layer.get("type", "?") for layer in config.model.augmentation)
    params.update(optimizer_params(config))
    params.update(data_params(config))
    params["trainer.backend"] = config.trainer.backend
    params["trainer.precision"] = config.trainer.precision
    if config.deterministic:
        params["deterministic"] = True
    stopping = config.trainer.early_stopping
    if stopping.patience:
        params.update(
            {
                "trainer.early_stopping.patience": stopping.patience,
                "trainer.early_stopping.monitor": stopping.monitor,
                "trainer.early_stopping.min_delta": stopping.min_delta,
            }
        )
    if config.pruning.enabled:
        params.update(
            {"pruning.warmup_epochs": config.pruning.warmup_epochs, "pruning.min_jobs": config.pruning.min_jobs}
        )
    params.update(counts or {})
    params.update(given_params(config, overrides, params))
    return {key: value for key, value in params.items() if value is not None}


def optimizer_params(config: ExperimentConfig) -> dict[str, Any]:
    optimizer = config.optimizer
    params: dict[str, Any] = {"optimizer.name": optimizer.name, "optimizer.learning_rate": optimizer.learning_rate}
    for key in (*OPTIMIZER_PARAMS[optimizer.name], "clipnorm"):
        params[f"optimizer.{key}"] = getattr(optimizer, key)  # None (Keras's default) is dropped
    schedule = optimizer.schedule
    params["optimizer.schedule.name"] = schedule.name
    for key in SCHEDULE_FIELDS[schedule.name]:
        params[f"optimizer.schedule.{key}"] = getattr(schedule, key)
    return params


def data_params(config: ExperimentConfig) -> dict[str, Any]:
    data = config.data
    params: dict[str, Any] = {
        "data.max_train_samples": data.max_train_samples,
        "data.max_test_samples": data.max_test_samples,
        "data.validation": data.validation,
    }
    if data.validation == "holdout":
        params["data.validation_fraction"] = data.validation_fraction
    return params


def given_params(config: ExperimentConfig, overrides: list[str], chosen: dict[str, Any]) -> dict[str, Any]:
    """Keys from the command line that change what is trained and are not among `chosen` yet."""
    tree = as_dict(config)
    given = {}
    for override in overrides:
        key = grammar.key(override)
        if not trains_something(override) or key in chosen or key in GROUP_PARAMS or key in (*PATH_KEYS, "experiment"):
            continue
        value = lookup(tree, key)
        if value is not None and not isinstance(value, (dict, list)):
            given[key] = value
    return given


def lookup(tree: dict, dotted: str) -> Any:
    """The value at a dotted key; a number part indexes a list (`model.layers.0.filters`), as Hydra's keys do."""
    node: Any = tree
    for part in dotted.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def preset_of(overrides: Iterable[str]) -> str | None:
    """The preset (`experiment=fast`) given on the command line, if any."""
    for override in overrides:
        if grammar.key(override) == "experiment":
            return grammar.value(override)
    return None


def run_tags_of_config(config: ExperimentConfig) -> dict[str, str]:
    """Where the run's inputs and outputs are on this machine: tags, not params."""
    tags = {"mlflow.tracking_uri": config.mlflow.tracking_uri}
    if config.data.dir:
        tags["data.dir"] = str(config.data.dir)
    if config.trainer.threads:
        tags["trainer.threads"] = str(config.trainer.threads)
    return tags


def git_tags() -> dict[str, str]:
    """The commit the code ran from, and whether the tree had uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit, "git_commit": commit, "git_dirty": str(dirty).lower()}
