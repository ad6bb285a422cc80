"""A config's identity: the keys that change what is trained, its hash, its run name, the sweep's key.

One home for the rules that say when two runs trained the same thing (a re-run sweep skips finished
work by them, the UI groups seed replicates by them) and what a run or a sweep is called.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from fmnist_exp.config import overrides as grammar
from fmnist_exp.config.schema import ExperimentConfig, as_dict

# A config group chosen on the command line, and the param a run logs for it (None: none, its keys
# are logged one by one).
GROUP_PARAMS = {"model": "model.name", "optimizer": "optimizer.name", "data": None, "hparams_search": None}
# Keys that hold a machine's paths: tags, never params (a person compares choices, not folders).
PATH_KEYS = ("data.dir", "data.mirror")

# Keys that do not change what is trained: they stay out of the config hash and the run's name.
UNTRAINED_KEYS = (
    "mlflow", "trainer.verbose", "resume", "register", "force", "dry_run", "replicates", "plan", "plan_difference",
    "race", "hydra",
)  # fmt: skip


def config_hash(config: ExperimentConfig, without: tuple[str, ...] = ()) -> str:
    """What a re-run sweep recognises finished work by: the trained config, without tracking keys
    (and without the keys in `without`)."""
    tree = as_dict(config)
    for dotted in (*UNTRAINED_KEYS, *without):
        *parents, leaf = dotted.split(".")
        node = tree
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def config_group(config: ExperimentConfig, run_name: str) -> str:
    """What the seed replicates of one config share: the run's name without its seed, for a person
    (the MLflow UI's "Group by" shows it), and the digest of the config without its seed, which
    makes it unique."""
    name = ",".join(part for part in run_name.split(",") if not part.startswith("seed=")) or "default"
    return f"{name} [{config_hash(config, without=('seed',))[:8]}]"


def trains_something(override: str) -> bool:
    """Whether a command-line override changes what is trained (not tracking, output or bookkeeping)."""
    key = grammar.key(override)
    return not any(key == untrained or key.startswith(untrained + ".") for untrained in UNTRAINED_KEYS)


def run_name(overrides: list[str] | tuple[str, ...]) -> str:
    """A run's name: the overrides that change what is trained, the preset first; "default" if none."""
    trained = [override for override in overrides if trains_something(override)]
    trained.sort(key=lambda override: not override.startswith("experiment="))
    return ",".join(trained)[:250] or "default"


def sweep_key(config: DictConfig) -> str:
    """Identifies a sweep: its command's overrides and the config they apply to.

    Re-running the same command finds the same parent; the same command after a preset or a default
    changed does not.
    """
    base = cast(dict[str, Any], OmegaConf.to_container(config, resolve=False))
    base.pop("hydra", None)
    for planning in ("plan", "plan_difference"):  # a planned sweep never runs; left out, an earlier
        base.pop(planning, None)  # sweep's command still finds its parent run
    if base.get("replicates") != "auto":  # the race's keys change nothing then: sweeps from before
        base.pop("race", None)  # they existed keep their key
    overrides = sorted(config.hydra.overrides.task)
    text = json.dumps([config.mlflow.experiment_name, overrides, base], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
