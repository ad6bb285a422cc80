"""The experiment's typed config: dataclass schemas registered with Hydra, their defaults, the
knobs a model file names, and the config read back from a run's folder.

Hydra checks key names and types at compose time against these schemas; config/checks.py then checks
what types cannot say (positive sizes, allowed names, ranges), before TensorFlow is imported or an
MLflow run is started. This is the bottom layer: it imports no other module of the package but
`errors`; the checks that need the layer registry or the backends live in model/validation.py.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from fmnist_exp.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parents[1]  # src/fmnist_exp, above this config/ folder


def _source_checkout() -> Path | None:
    """The repository this code runs from (src/fmnist_exp inside it), or None when installed."""
    repository = _PACKAGE.parents[1]
    if _PACKAGE.parent.name == "src" and (repository / "conf" / "config.yaml").is_file():
        return repository
    return None


# The repository when the code runs from a checkout (an editable install, or PYTHONPATH=src); None
# when it runs from an installed wheel (site-packages, or an unpacked wheel).
CHECKOUT = _source_checkout()
# The Hydra configs: the checkout's conf/ (the source of truth), else the copy the wheel carries in
# the package (pyproject.toml maps conf/ to fmnist_exp/conf at build time).
CONF_DIR = CHECKOUT / "conf" if CHECKOUT else _PACKAGE / "conf"
# The checkout, or for an installed package the working folder the command was started in.
PROJECT_ROOT = CHECKOUT or Path.cwd()


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else an absolute SQLite store in mlruns/ of the project.

    The project is the checkout; for an installed package (nothing belongs in site-packages) it is
    the working folder. Absolute, so that every Hydra job of a sweep writes to the same store
    whatever its cwd.
    """
    folder = (CHECKOUT or Path.cwd()) / "mlruns"
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{folder / 'mlflow.db'}"


# The one table of optimizers: the Keras class each name builds, and the optional parameters it
# accepts (setting another one is an error, not a no-op).
# Where data.download fetches the IDX files from (Keras's own mirror); data.py reads it here.
DEFAULT_MIRROR = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"

OPTIMIZER_TABLE = {
    "adam": ("Adam", ("beta_1", "beta_2", "epsilon", "amsgrad")),
    "adamw": ("AdamW", ("beta_1", "beta_2", "epsilon", "amsgrad", "weight_decay")),
    "sgd": ("SGD", ("momentum", "nesterov")),
    "rmsprop": ("RMSprop", ("rho", "momentum", "epsilon", "centered")),
}
OPTIMIZERS = tuple(OPTIMIZER_TABLE)
OPTIMIZER_PARAMS = {name: parameters for name, (_, parameters) in OPTIMIZER_TABLE.items()}
SCHEDULES = ("constant", "cosine", "exponential")
VALIDATION_SCHEMES = ("holdout", "test", "none")
JIT_CHOICES = ("auto", "true", "false")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@dataclass
class DataConfig:
    # Folder holding the four IDX .gz files; unset means: Keras cache, then Debian's package.
    dir: str | None = None
    # Fetch the files into the Keras cache when no local copy is found (false: strictly offline).
    download: bool = True
    mirror: str = DEFAULT_MIRROR
    # Check the decompressed sha256 of every file before use (about 0.3 s for the full set).
    verify: bool = True
    # Use only the first N images (None: all); for quick runs and tests.
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    # holdout: a stratified slice of the training set; test: the article's test-as-validation; none.
    validation: str = "holdout"
    validation_fraction: float = 0.1


MODEL_FIELDS = ("name", "augmentation", "layers")


@dataclass
class ModelConfig:
    """A model file of conf/model/: its name, the layer stack and the knobs the stack refers to.

    In YAML the knobs sit beside `layers` (`dropout: 0.3`, referred to as `${model.dropout}`), so a
    sweep names them as `model.dropout=0.2,0.4`; here they are gathered in `knobs`.
    """

    name: str = MISSING
    # The layer stack, each item {type: <registry name>, ...its arguments}; see model/registry.py.
    layers: list[dict[str, Any]] = MISSING
    # Training-only augmentation layers in front of the stack (random_flip, random_translation, ...).
    augmentation: list[dict[str, Any]] = field(default_factory=list)
    # The model's named hyperparameters: {knob name: value}.
    knobs: dict[str, Any] = field(default_factory=dict)


@dataclass
class EarlyStoppingConfig:
    # Epochs without improvement before training stops (null: off). The best epoch's weights are
    # restored, so the test metrics and the logged model are the best epoch's. `monitor` (with
    # min_delta) also chooses that epoch; the objective reported is the objective's figure at it
    # (callbacks.BestEpoch).
    patience: int | None = None
    monitor: str = "val_accuracy"
    min_delta: float = 0.0


@dataclass
class PruningConfig:
    # Stop a sweep's job whose validation accuracy trails the median of the sweep's other jobs at the
    # same epoch. Read from the shared MLflow store, so it works with every sweeper and launcher.
    enabled: bool = False
    # No job is pruned before this epoch has ended.
    warmup_epochs: int = 1
    # How many other jobs must have reached an epoch before the median there is trusted.
    min_jobs: int = 3


@dataclass
class RaceConfig:
    # With replicates=auto (-m): every config starts on min_seeds seeds; a round adds seeds_per_round
    # more to each config still undecided against the leader (and to the leader), up to max_seeds.
    min_seeds: int = 2
    max_seeds: int = 5
    seeds_per_round: int = 1
    # Set by the grid sweeper on a later round's jobs: the first seed such a job trains is
    # seed + seed_offset. Not for the command line.
    seed_offset: int = 0


@dataclass
class ScheduleConfig:
    # constant | cosine (to alpha * lr at the last step, optional linear warm-up) |
    # exponential (times decay_rate every decay_epochs).
    name: str = "constant"
    warmup_epochs: float = 0.0
    alpha: float = 0.0
    decay_rate: float = 0.9
    decay_epochs: float = 1.0


@dataclass
class OptimizerConfig:
    name: str = MISSING
    learning_rate: float = MISSING
    # Optimizer-specific parameters: None leaves Keras's default.
    beta_1: float | None = None
    beta_2: float | None = None
    epsilon: float | None = None
    amsgrad: bool | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    rho: float | None = None
    centered: bool | None = None
    # Clip each gradient's norm (None: no clipping).
    clipnorm: float | None = None
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class TrainerConfig:
    # Keras 3 backend: tensorflow | jax | torch; set before Keras is first imported (KERAS_BACKEND wins
    # when set in the environment and this key is left at its default).
    backend: str = "tensorflow"
    # XLA: auto = off on CPU (measured slower there), Keras's own choice on GPU.
    jit_compile: str = "auto"
    precision: str = "float32"
    # Keras progress output: auto = a bar in a terminal, one line per epoch otherwise.
    verbose: str = "auto"
    # none | mirrored: tf.distribute.MirroredStrategy over every local GPU (one CPU device without).
    distribute: str = "none"
    # TensorFlow's CPU threads per job; None: all cores, or cores / n_jobs under the joblib launcher.
    threads: int | None = None
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class MlflowConfig:
    tracking_uri: str = field(default_factory=default_tracking_uri)
    experiment_name: str = "fmnist_exp"
    # None: named from the Hydra overrides (or "default").
    run_name: str | None = None
    log_model: bool = True
    # The registry name that `register=true` files the run's model under.
    registered_model_name: str = "fmnist_cnn"
    # Log CPU, memory (and GPU) utilisation as the run's system/* metrics, through MLflow.
    system_metrics: bool = True
    # A RUNNING run of another machine whose heartbeat (written every minute) is older than this is
    # closed KILLED by whichever command opens the store next; runs of this machine are checked by pid.
    orphan_after_minutes: float = 15


@dataclass
class ExperimentConfig:
    seed: int = 42
    batch_size: int = 32
    epochs: int = 100
    # Deterministic TensorFlow kernels: bit-identical reruns on CPU (see README for GPUs).
    deterministic: bool = False
    # Continue an interrupted run: its output folder or MLflow run id (the rest of the config is the run's).
    resume: str | None = None
    # In a sweep, train configs that already have a FINISHED run again instead of skipping them.
    force: bool = False
    # Register the trained model in the MLflow model registry (as mlflow.registered_model_name).
    register: bool = False
    # Check and describe the config (layer table, data) and exit without training.
    dry_run: bool = False
    # In a sweep: train each config this many times, with seeds seed, seed+1, ... (the seed noise);
    # auto: race them, seeds added in rounds only where a config is undecided (see `race`).
    # Any, checked by checks.check_replicates: OmegaConf's own refusal of 2.5 for `int | str` names
    # a Union type and not what is allowed.
    replicates: Any = 1
    # With -m: print the sweep's plan (jobs, runs, time from the store's history, the difference its
    # seeds can resolve) and exit without training or making a run, a folder or a store.
    plan: bool = False
    # With plan=true: also say how many seeds a true difference of this size (in objective units,
    # e.g. 0.003 for 0.3 points of accuracy) needs.
    plan_difference: float | None = None
    data: DataConfig = field(default_factory=DataConfig)
    # A model file of conf/model/ (a ModelConfig once validated); a mapping here so that each model
    # file can declare its own knobs beside its layers.
    model: Any = field(default_factory=dict)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    race: RaceConfig = field(default_factory=RaceConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


def register_schemas() -> None:
    """Register the schema that conf/config.yaml extends, and the resolvers model files use."""
    ConfigStore.instance().store(name="experiment_schema", node=ExperimentConfig, replace=True)
    # Integer arithmetic for knobs: `filters: ${mul:${model.width},2}`.
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_resolver("mul", lambda left, right: left * right)


MONITORS = ("val_accuracy", "val_loss", "accuracy", "loss")


def model_config(node: Any) -> ModelConfig:
    """The typed model from a model file's mapping: name, layers, augmentation and its knobs."""
    if isinstance(node, ModelConfig):
        return node
    if not isinstance(node, dict):
        raise ConfigError(f"model: must be a model file's mapping (name, layers, knobs), got {node!r}")
    if not isinstance(node.get("name"), str) or not node["name"]:
        raise ConfigError("model.name: every model needs a name")
    layers = node.get("layers")
    if not isinstance(layers, list):
        raise ConfigError(f"model.layers: must be a list of layers, got {layers!r}")
    augmentation = node.get("augmentation") or []
    if not isinstance(augmentation, list):
        raise ConfigError(f"model.augmentation: must be a list of augmentation layers, got {augmentation!r}")
    knobs = {key: value for key, value in node.items() if key not in MODEL_FIELDS}
    return ModelConfig(name=node["name"], layers=layers, augmentation=augmentation, knobs=knobs)


KNOB_REFERENCE = re.compile(r"\$\{model\.([A-Za-z_][A-Za-z0-9_]*)\}")


def knob_references(node: Any, path: str = "model") -> dict[str, str]:
    """Where a model file's layers refer to its knobs, by the path validation names:
    {'model.layers[7].units': '${model.dense_units}', 'model.layers[3].filters': '${mul:${model.width},2}'}."""
    found: dict[str, str] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            found.update(knob_references(value, f"{path}.{key}"))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.update(knob_references(value, f"{path}[{index}]"))
    elif isinstance(node, str) and KNOB_REFERENCE.search(node):
        found[path] = node
    return found


def in_knob_terms(error: ConfigError, references: dict[str, str], knobs: dict[str, Any]) -> ConfigError:
    """A layer argument's error in the words the user typed: the knob first, the layer second.

    `model.layers[7].units: 0 must be ...` from `units: ${model.dense_units}` becomes
    `model.dense_units: 0 must be ... (in model.layers[7].units)`; a derived value names its expression.
    """
    message = str(error)
    where = max((path for path in references if message.startswith(f"{path}: ")), key=len, default=None)
    if where is None:
        return error
    rest = message[len(where) + 2 :]
    expression = references[where]
    names = [name for name in KNOB_REFERENCE.findall(expression) if name in knobs]
    if not names:
        return error
    if expression == f"${{model.{names[0]}}}":
        return ConfigError(f"model.{names[0]}: {rest} (in {where})")
    first, *others = dict.fromkeys(names)
    also = "".join(f" and model.{name}={knobs[name]!r}" for name in others)
    return ConfigError(f"model.{first}: {knobs[first]!r}{also} makes {where} = {expression}, which fails: {rest}")


def as_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The config as a user writes it: plain types, each model knob beside the model's layers."""
    tree = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.structured(config), resolve=True))
    model = tree["model"]
    tree["model"] = {
        "name": model["name"],
        **model.get("knobs", {}),
        "augmentation": model["augmentation"],
        "layers": model["layers"],
    }
    return tree


def to_yaml(config: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(as_dict(config)))


def from_yaml(path: Path) -> ExperimentConfig:
    """A config written by `to_yaml` (a run's config.yaml), typed; raises ConfigError if it is not one."""
    register_schemas()
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), OmegaConf.load(path))
        typed = cast(ExperimentConfig, OmegaConf.to_object(merged))
    except Exception as error:  # noqa: BLE001 (any unreadable file is the same user error)
        raise ConfigError(f"{path}: not a readable run config ({str(error).splitlines()[0]})") from error
    typed.model = model_config(typed.model)
    return typed
