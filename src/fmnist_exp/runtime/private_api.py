"""The one place the package touches MLflow, Keras, Optuna and Hydra internals that have no public API.

Each use is named here, with why and the upstream issue where there is one, and is checked by
tests/test_private_api.py, which fails with a plain message when an upgrade moves or changes it.
docs/design.md ("Private APIs we touch") lists them, with the Hydra plugins' (kept in study.py and
ray_cluster.py, the subclasses that need them).
"""

from __future__ import annotations

import re
from typing import Any

# MLflow's reserved tag names (mlflow.utils.mlflow_tags, an internal module). MLflow's UI reads them:
# the run's table artifacts (log_table), a LoggedModel's registered versions, a dataset input's context.
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"
MODEL_VERSIONS_TAG = "mlflow.modelVersions"
DATASET_CONTEXT_TAG = "mlflow.data.context"


def dataset_input(dataset: Any, context: str):
    """An mlflow.data Dataset as the DatasetInput entity MlflowClient.log_inputs takes.

    Public MLflow turns a Dataset into its entity only inside the fluent `mlflow.log_input`, which
    needs the process's active run; the package logs through a client bound to its own store, so
    it calls the same private `Dataset._to_mlflow_entity()` that mlflow.log_input calls.
    """
    from mlflow.entities import DatasetInput, InputTag

    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(DATASET_CONTEXT_TAG, context)])


def system_metrics_monitor(run_id: str, resume: bool, tracking_uri: str):
    """MLflow's system-metrics sampler for a run of a given store.

    The public switch (mlflow.start_run(log_system_metrics=True)) works on the fluent active run and
    the global tracking URI only; the monitor class behind it (mlflow.system_metrics.
    system_metrics_monitor.SystemMetricsMonitor) takes a run id and a store. Store.Run.system_metrics
    also calls its collect_metrics / aggregate_metrics / publish_metrics / mlflow_logger.flush to
    report the last sample at the end.
    """
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    return SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=tracking_uri)


def local_dataset_source(folder: str):
    """mlflow.data's LocalArtifactDatasetSource for a folder, built through the source registry."""
    import json

    from mlflow.data.dataset_source_registry import get_dataset_source_from_json

    return get_dataset_source_from_json(json.dumps({"uri": folder}), source_type="local")


def keep_keras_off_tensorflow() -> None:
    """Tell Keras's lazy TensorFlow handle (keras.src.utils.module_utils.tensorflow) it is unavailable.

    keras.utils.set_random_seed imports TensorFlow whenever it can; off TensorFlow that costs seconds
    and hundreds of MB. Keras has no public switch for it. On a Keras without the handle this does
    nothing (and tests/test_private_api.py says so).
    """
    from keras.src.utils import module_utils

    handle = getattr(module_utils, "tensorflow", None)
    if handle is not None and getattr(handle, "module", None) is None and hasattr(handle, "_available"):
        handle._available = False


# Optuna's heartbeat with ask-and-tell (upstream: optuna/optuna#3293, "Supporting heartbeat in
# Ask-and-tell", closed without a public API). An RDBStorage made with heartbeat_interval records a
# trial's heartbeat only inside Study.optimize (a thread around the objective); Study.ask warns with
# this message and records none. The study sweeper asks and tells, so it records the heartbeat of the
# trials it trains itself, with RDBStorage.record_heartbeat (a public method of a public class, whose
# use outside Study.optimize Optuna documents as unsupported), and fails stale trials with the public
# optuna.storages.fail_stale_trials.
OPTUNA_ASK_HEARTBEAT_WARNING = "Heartbeat of storage is supposed to be used with Study.optimize."


def record_trial_heartbeat(storage: Any, trial_id: int) -> None:
    """Write a trial's heartbeat (the database's clock) into an optuna.storages.RDBStorage."""
    storage.record_heartbeat(trial_id)


def ask_without_heartbeat_warning(study: Any):
    """study.ask(), without Optuna's warning that ask-and-tell records no heartbeat (we record it)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(OPTUNA_ASK_HEARTBEAT_WARNING))
        return study.ask()


def basic_sweeper(max_batch_size: int | None, params: dict[str, str] | None):
    """Hydra's basic sweeper (hydra._internal.core_plugins.basic_sweeper.BasicSweeper), for the grid
    sweeper to delegate to: it makes the grid of the swept values and launches it, and its `launcher`
    (set by its `setup`) launches a race's later rounds. Hydra offers no public way to make one: the
    class lives in `_internal` and Hydra instantiates it only as the configured sweeper.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return BasicSweeper(max_batch_size=max_batch_size, params=params)
