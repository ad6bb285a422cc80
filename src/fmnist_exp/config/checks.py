"""The checks a config value can fail on its own, before anything starts: positive sizes, allowed
names, ranges, the keys a sweep cannot vary. Every message names the config key and what is allowed."""

from __future__ import annotations

import math
from typing import Any

from fmnist_exp.config.identity import trains_something
from fmnist_exp.config.schema import (
    JIT_CHOICES,
    MONITORS,
    OPTIMIZER_PARAMS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    VALIDATION_SCHEMES,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    OptimizerConfig,
    TrainerConfig,
)
from fmnist_exp.errors import ConfigError


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"{key}: {message}")


def _check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(key, f"{value!r} is not one of {', '.join(allowed)}")


def check_positive(key: str, value: float | int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or not (value > 0) or not math.isfinite(value):
        _fail(key, f"{value!r} must be a positive number")


def check_orphan_bound(minutes: float) -> None:
    """Live runs write a heartbeat every minute: a bound of a few minutes could close a live run."""
    if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes >= 5):
        _fail(
            "mlflow.orphan_after_minutes",
            f"{minutes!r} must be 5 or more: live runs write a heartbeat every minute, and a run of "
            "another machine is closed once its heartbeat is older than this",
        )


# Each replicate trains the config once more; more than this is a typo, not a plan.
MAX_REPLICATES = 100

# What a whole sweep shares: its parent run is made in this store and experiment, and its orphan bound
# and replicates are applied, before any job starts. check_sweep_wide checks them then; a sweep
# cannot vary them (the parent would sit where its jobs are not, or say what they did not do).
SWEEP_WIDE_KEYS = {
    "mlflow.tracking_uri": "a sweep's parent run and its jobs share one store; run one sweep per store",
    "mlflow.experiment_name": "a sweep's parent run and its jobs share one experiment; run one sweep per experiment",
    "mlflow.orphan_after_minutes": "it applies to the whole sweep from its start",
    "replicates": "it sets the seeds per config of the whole sweep; sweep seed= instead",
    "plan": "it says whether the whole sweep runs or is only planned",
    "plan_difference": "the plan is one for the whole sweep",
    "race.min_seeds": "the race's rules are one for the whole sweep",
    "race.max_seeds": "the race's rules are one for the whole sweep",
    "race.seeds_per_round": "the race's rules are one for the whole sweep",
    "race.seed_offset": "the grid sweeper sets it for a race's later rounds",
}


def check_replicates(replicates: Any) -> None:
    if replicates == "auto":
        return
    if isinstance(replicates, bool) or not isinstance(replicates, int) or not 1 <= replicates <= MAX_REPLICATES:
        _fail(
            "replicates",
            f"{replicates!r} must be a whole number from 1 to {MAX_REPLICATES} "
            "(each replicate trains the config once more), or auto (race the configs: race.*)",
        )


def check_race(min_seeds: Any, max_seeds: Any, seeds_per_round: Any) -> None:
    """The race's bounds (replicates=auto): a test needs two seeds, and max_seeds caps as replicates does."""
    for key, value in (("min_seeds", min_seeds), ("max_seeds", max_seeds), ("seeds_per_round", seeds_per_round)):
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(f"race.{key}", f"{value!r} must be a whole number")
    if not 2 <= min_seeds <= MAX_REPLICATES:
        _fail("race.min_seeds", f"{min_seeds} must lie from 2 (a test needs two seeds) to {MAX_REPLICATES}")
    if not min_seeds <= max_seeds <= MAX_REPLICATES:
        _fail("race.max_seeds", f"{max_seeds} must lie from race.min_seeds ({min_seeds}) to {MAX_REPLICATES}")
    if seeds_per_round < 1:
        _fail("race.seeds_per_round", f"{seeds_per_round} must be 1 or more")


def check_seed_offset(seed_offset: Any) -> None:
    """race.seed_offset is the grid sweeper's, set on a race's later rounds' jobs; never the command line's
    (a run's or a sweep's: both are checked before anything starts, the jobs' own values are not)."""
    if seed_offset != 0:
        _fail("race.seed_offset", f"{seed_offset!r}: the grid sweeper sets it for a race's later rounds; leave it out")


def check_auto_replicates(swept: list[str], sweeper: str) -> None:
    """replicates=auto races the configs of the grid sweeper, which chooses each config's seeds itself."""
    if sweeper == "study":
        _fail(
            "replicates",
            "auto races the configs of a grid sweep (-m key=a,b,c); an Optuna search (hparams_search=optuna) "
            "scores each trial on a fixed number of seeds: give replicates=N",
        )
    if sweeper != "grid":
        _fail(
            "replicates", f"auto needs the grid sweeper (hparams_search=grid, the default), not hydra/sweeper={sweeper}"
        )
    if "seed" in swept:
        _fail("seed", "cannot be swept with replicates=auto: the race gives each config the seeds seed, seed+1, ...")
    for key in swept:
        if not trains_something(key):  # its values train alike, so the race would take them for one config
            _fail(
                key,
                "cannot be swept with replicates=auto: it does not change what is trained, so its values race as one config",
            )


def check_plan_difference(difference: Any) -> None:
    """A difference to plan for is a part of the objective's range, an accuracy in [0, 1]."""
    if difference is None:
        return
    if isinstance(difference, bool) or not isinstance(difference, (int, float)) or not 0 < difference < 1:
        _fail(
            "plan_difference",
            f"{difference!r} must lie between 0 and 1, in the objective's units (0.003 is 0.3 points of accuracy)",
        )


def check_sweep_wide(values: dict[str, Any], swept: list[str], sweeper: str = "grid") -> None:
    """Before a sweep's parent run is made or any orphan closed: the keys the sweep's `swept` list
    varies may not be sweep-wide ones, and the sweep-wide `values` ({dotted key: value}) must be sound
    (replicates=auto for the `sweeper` chosen, hydra/sweeper's name)."""
    for key in swept:
        if key in SWEEP_WIDE_KEYS:
            _fail(key, f"cannot be swept: {SWEEP_WIDE_KEYS[key]}")
    check_replicates(values["replicates"])
    check_race(values["race.min_seeds"], values["race.max_seeds"], values["race.seeds_per_round"])
    check_seed_offset(values["race.seed_offset"])
    if values["replicates"] == "auto":
        check_auto_replicates(swept, sweeper)
    check_plan_difference(values["plan_difference"])
    check_orphan_bound(values["mlflow.orphan_after_minutes"])
    if not str(values["mlflow.experiment_name"]).strip():
        _fail("mlflow.experiment_name", "must not be empty")


def check_values(config: ExperimentConfig) -> None:
    """Raise ConfigError naming the first bad key among the values this schema can judge alone.

    What needs the layer registry or the backends (validation.validate) is checked above this module."""
    check_positive("batch_size", config.batch_size)
    if config.batch_size > 65536:
        _fail("batch_size", f"{config.batch_size} is larger than 65536, more than the data set holds")
    check_positive("epochs", config.epochs)
    check_replicates(config.replicates)
    check_race(config.race.min_seeds, config.race.max_seeds, config.race.seeds_per_round)
    check_plan_difference(config.plan_difference)
    if not 0 <= config.seed <= 2**32 - 1:
        _fail("seed", f"{config.seed} must lie in [0, 2**32 - 1] (what NumPy and TensorFlow seed with)")
    if not config.mlflow.experiment_name.strip():
        _fail("mlflow.experiment_name", "must not be empty")
    check_orphan_bound(config.mlflow.orphan_after_minutes)
    _validate_data(config.data)
    _validate_optimizer(config.optimizer, config.epochs)
    _validate_trainer(config.trainer, config.data)
    if config.pruning.warmup_epochs < 1:
        _fail("pruning.warmup_epochs", f"{config.pruning.warmup_epochs} must be 1 or more")
    if config.pruning.min_jobs < 1:
        _fail("pruning.min_jobs", f"{config.pruning.min_jobs} must be 1 or more")
    _check_knobs(config.model)


def _validate_data(data: DataConfig) -> None:
    check_positive("data.max_train_samples", data.max_train_samples, allow_none=True)
    check_positive("data.max_test_samples", data.max_test_samples, allow_none=True)
    _check_choice("data.validation", data.validation, VALIDATION_SCHEMES)
    if not 0.0 < data.validation_fraction < 1.0:
        _fail("data.validation_fraction", f"{data.validation_fraction} must lie strictly between 0 and 1")


def _validate_optimizer(optimizer: OptimizerConfig, epochs: int) -> None:
    _check_choice("optimizer.name", optimizer.name, OPTIMIZERS)
    check_positive("optimizer.learning_rate", optimizer.learning_rate)
    check_positive("optimizer.clipnorm", optimizer.clipnorm, allow_none=True)
    allowed = OPTIMIZER_PARAMS[optimizer.name]
    for key in ("beta_1", "beta_2", "epsilon", "amsgrad", "weight_decay", "momentum", "nesterov", "rho", "centered"):
        value = getattr(optimizer, key)
        if value is None:
            continue
        if key not in allowed:
            _fail(f"optimizer.{key}", f"{optimizer.name} takes no {key}; it takes: {', '.join(allowed)}")
        if key in ("beta_1", "beta_2", "rho", "momentum") and not 0.0 <= value < 1.0:
            _fail(f"optimizer.{key}", f"{value} must lie in [0, 1)")
        if key in ("epsilon", "weight_decay") and not value >= 0.0:
            _fail(f"optimizer.{key}", f"{value} must be 0 or more")
    schedule = optimizer.schedule
    _check_choice("optimizer.schedule.name", schedule.name, SCHEDULES)
    if not 0.0 <= schedule.warmup_epochs < epochs:
        _fail("optimizer.schedule.warmup_epochs", f"{schedule.warmup_epochs} must lie in [0, epochs={epochs})")
    if schedule.warmup_epochs and schedule.name != "cosine":
        _fail(
            "optimizer.schedule.warmup_epochs", f"a warm-up needs optimizer.schedule.name=cosine, not {schedule.name}"
        )
    if not 0.0 <= schedule.alpha <= 1.0:
        _fail("optimizer.schedule.alpha", f"{schedule.alpha} must lie in [0, 1]")
    if not 0.0 < schedule.decay_rate <= 1.0:
        _fail("optimizer.schedule.decay_rate", f"{schedule.decay_rate} must lie in (0, 1]")
    check_positive("optimizer.schedule.decay_epochs", schedule.decay_epochs)


def _validate_trainer(trainer: TrainerConfig, data: DataConfig) -> None:
    _check_choice("trainer.jit_compile", str(trainer.jit_compile).lower(), JIT_CHOICES)
    _check_choice("trainer.precision", trainer.precision, PRECISIONS)
    _check_choice("trainer.verbose", str(trainer.verbose), ("auto", "0", "1", "2"))
    check_positive("trainer.threads", trainer.threads, allow_none=True)
    _check_choice("trainer.distribute", trainer.distribute, ("none", "mirrored"))
    stopping = trainer.early_stopping
    check_positive("trainer.early_stopping.patience", stopping.patience, allow_none=True)
    _check_choice("trainer.early_stopping.monitor", stopping.monitor, MONITORS)
    if stopping.patience and stopping.monitor.startswith("val_") and data.validation == "none":
        _fail("trainer.early_stopping.monitor", f"{stopping.monitor} needs a validation set, but data.validation=none")


def _check_knobs(model: ModelConfig) -> None:
    if not isinstance(model, ModelConfig):
        raise TypeError("check_values() takes a config whose model went through model_config()")
    for knob, value in model.knobs.items():
        if not isinstance(value, (int, float, str, bool)) and value is not None:
            _fail(f"model.{knob}", f"a knob must be a single value, got {value!r}")
