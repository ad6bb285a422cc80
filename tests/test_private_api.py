"""The library internals the package touches (docs/design.md, "Private APIs we touch") are still there
and still behave as used. A failure here names the internal that moved: fix its one place, not the
callers. No training, no network."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from fmnist_exp.runtime import private_api

pytestmark = pytest.mark.unit  # no training, no subprocess: the inner loop (pytest -m unit)

SRC = Path(private_api.__file__).parents[1]  # the package, every sub-package

# Each internal, and the one module allowed to touch it.
ALLOWED = {
    r"\._to_mlflow_entity\b": "private_api.py",
    r"\bmlflow\.system_metrics\.system_metrics_monitor\b": "private_api.py",
    r"\bmlflow\.utils\b": "private_api.py",
    r"\bmlflow\.data\.dataset_source_registry\b": "private_api.py",
    r"\bkeras\.src\b": "private_api.py",
    r"\._available\b": "private_api.py",
    r"\._storage\b": None,  # nowhere: Optuna's public storage API instead
    r"\.record_heartbeat\b": "private_api.py",  # Optuna's heartbeat outside Study.optimize
    r"\._trial_id\b": None,
    r"\bhydra_optuna_sweeper\._impl\b": "study.py",
    r"\bhydra_ray_launcher\._launcher_util\b": "ray_cluster.py",
    r"\bhydra\._internal\b": "private_api.py",
}


def changed(what: str, detail: str) -> str:
    return f"{what} changed upstream ({detail}); update its one place (see docs/design.md, 'Private APIs we touch')"


@pytest.mark.parametrize("pattern, allowed", ALLOWED.items())
def test_each_internal_is_touched_in_its_one_place_only(pattern, allowed):
    where = sorted(
        path.name for path in SRC.rglob("*.py") if re.search(pattern, path.read_text()) and path.name != allowed
    )
    assert not where, f"{pattern} is used in {where}; keep it in {allowed or 'no module (use the public API)'}"


def test_mlflow_reserved_tag_names_are_mlflows():
    from mlflow.utils import mlflow_tags

    for ours, theirs in [
        (private_api.LOGGED_ARTIFACTS_TAG, "MLFLOW_LOGGED_ARTIFACTS"),
        (private_api.MODEL_VERSIONS_TAG, "MLFLOW_MODEL_VERSIONS"),
        (private_api.DATASET_CONTEXT_TAG, "MLFLOW_DATASET_CONTEXT"),
    ]:
        assert getattr(mlflow_tags, theirs, None) == ours, changed(f"mlflow.utils.mlflow_tags.{theirs}", ours)


def test_a_dataset_becomes_the_entity_log_inputs_takes(tmp_path):
    from mlflow.data.numpy_dataset import NumpyDataset
    from mlflow.entities import Dataset, DatasetInput

    source = private_api.local_dataset_source(str(tmp_path))
    assert source.to_dict() == {"uri": str(tmp_path)}, changed("mlflow's local dataset source", source.to_dict())
    dataset = NumpyDataset(np.zeros((2, 3)), source=source, targets=np.zeros(2), name="probe")
    assert hasattr(dataset, "_to_mlflow_entity"), changed("mlflow.data.Dataset._to_mlflow_entity", "gone")
    entry = private_api.dataset_input(dataset, "training")
    assert isinstance(entry, DatasetInput) and isinstance(entry.dataset, Dataset)
    assert entry.dataset.name == "probe"
    assert [(tag.key, tag.value) for tag in entry.tags] == [(private_api.DATASET_CONTEXT_TAG, "training")]


def test_the_system_metrics_monitor_takes_a_run_and_a_store(tmp_path):
    monitor = private_api.system_metrics_monitor("0" * 32, False, f"sqlite:///{tmp_path}/mlflow.db")
    for name in ("start", "finish", "collect_metrics", "aggregate_metrics", "publish_metrics"):
        assert callable(getattr(monitor, name, None)), changed("SystemMetricsMonitor", f"no method {name}")
    assert callable(getattr(getattr(monitor, "mlflow_logger", None), "flush", None)), changed(
        "SystemMetricsMonitor", "no mlflow_logger.flush"
    )


def test_keras_still_has_its_lazy_tensorflow_handle():
    from keras.src.utils import module_utils

    handle = getattr(module_utils, "tensorflow", None)
    assert handle is not None, changed("keras.src.utils.module_utils.tensorflow", "gone")
    assert hasattr(handle, "_available") and hasattr(handle, "module"), changed(
        "keras.src.utils.module_utils.LazyModule", "no _available or module"
    )


def test_the_optuna_sweeper_plugin_still_has_what_the_study_sweeper_overrides_and_calls():
    from hydra_plugins.hydra_optuna_sweeper import _impl

    impl = _impl.OptunaSweeperImpl
    expected = {
        "sweep": ["self", "arguments"],
        "_get_directions": ["self"],
        "_process_searchspace_config": ["self"],
        "_parse_sweeper_params_config": ["self"],
        "_configure_trials": ["self", "trials", "search_space_distributions", "fixed_params", "fixed_overrides"],
        "__init__": [
            "self",
            "sampler",
            "direction",
            "storage",
            "study_name",
            "n_trials",
            "n_jobs",
            "max_failure_rate",
            "custom_search_space",
            "params",
        ],
    }
    for name, parameters in expected.items():
        method = getattr(impl, name, None)
        assert method is not None, changed(f"OptunaSweeperImpl.{name}", "gone")
        found = list(inspect.signature(method).parameters)
        assert found == parameters, changed(f"OptunaSweeperImpl.{name}", f"takes {found}")
    assert list(inspect.signature(_impl.create_params_from_overrides).parameters) == ["arguments"], changed(
        "create_params_from_overrides", "signature"
    )
    distributions, fixed, overrides = _impl.create_params_from_overrides(["a=1", "b=interval(0,1)"])
    assert fixed == {"a": "1"} and set(distributions) == {"b"}, changed("create_params_from_overrides", "results")


def test_hydras_basic_sweeper_still_has_what_the_grid_sweeper_calls():
    """The grid sweeper hands a sweep to a basic sweeper (hydra._internal), then launches a race's
    later rounds through the launcher the basic sweeper's setup made."""
    from hydra.plugins.sweeper import Sweeper

    sweeper = private_api.basic_sweeper(max_batch_size=None, params={"a": "1,2"})
    assert isinstance(sweeper, Sweeper), changed("BasicSweeper", "no longer a Sweeper")
    expected = {
        "setup": ["hydra_context", "task_function", "config"],
        "sweep": ["arguments"],
        "validate_batch_is_legal": ["batch"],
    }
    for name, parameters in expected.items():
        found = list(inspect.signature(getattr(sweeper, name)).parameters)
        assert found == parameters, changed(f"BasicSweeper.{name}", f"takes {found}")
    assert sweeper.params == {"a": "1,2"} and sweeper.launcher is None, changed("BasicSweeper", "its attributes")
    source = inspect.getsource(type(sweeper).setup)  # the launcher the rounds are launched through
    assert "self.launcher = Plugins.instance().instantiate_launcher(" in source, changed("BasicSweeper.setup", source)


def test_the_ray_launcher_plugin_still_has_what_the_per_job_launcher_calls():
    util = pytest.importorskip("hydra_plugins.hydra_ray_launcher._launcher_util")
    expected = {
        "launch_job_on_ray": ["hydra_context", "ray_remote", "sweep_config", "task_function", "singleton_state"],
        "start_ray": ["init_cfg"],
    }
    for name, parameters in expected.items():
        found = list(inspect.signature(getattr(util, name)).parameters)
        assert found == parameters, changed(f"hydra_ray_launcher._launcher_util.{name}", f"takes {found}")


def test_optunas_heartbeat_kept_by_the_study_sweeper_fails_only_the_stale_trials(tmp_path):
    """Optuna records a heartbeat only inside Study.optimize (optuna/optuna#3293); the study sweeper
    asks and tells, and records it itself with RDBStorage.record_heartbeat. Still there, still read by
    the public fail_stale_trials, and Study.ask still warns with the message we silence."""
    import time
    import warnings

    import optuna
    from optuna.trial import TrialState

    from fmnist_exp.sweeps import shared_study
    from fmnist_exp.sweeps.study import INTERRUPTED_ATTR, counted_trials

    assert callable(getattr(optuna.storages.RDBStorage, "record_heartbeat", None)), changed(
        "optuna.storages.RDBStorage.record_heartbeat", "gone"
    )
    assert callable(getattr(optuna.storages, "fail_stale_trials", None)), changed(
        "optuna.storages.fail_stale_trials", "gone"
    )
    stale = shared_study.StaleTrials(grace_period=2)
    storage = shared_study.heartbeat_storage(f"sqlite:///{tmp_path}/optuna.db", 1, 2, stale)
    study = optuna.create_study(study_name="probe", storage=storage)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.tell(study.ask(), 0.5)  # trial 0: plain ask-and-tell warns that no heartbeat is recorded
        legacy = study.ask()  # trial 1: as an earlier release left it (RUNNING, no heartbeat, no owner)
    assert any(str(warning.message) == private_api.OPTUNA_ASK_HEARTBEAT_WARNING for warning in caught), changed(
        "Study.ask's warning for ask-and-tell with a heartbeat", [str(warning.message) for warning in caught]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (live, live_id), (lost, lost_id) = shared_study.ask_trials(study, storage, 2)  # trials 2 and 3
    assert not caught, [str(warning.message) for warning in caught]
    assert study.trials[2].user_attrs == {INTERRUPTED_ATTR: True, shared_study.SEARCH_ATTR: shared_study.this_search()}

    with shared_study.heartbeat(storage, [live_id], interval=1):  # trial 2 beats; trial 3's search was lost
        time.sleep(3.2)
        ended = shared_study.end_stale_trials(study, storage, grace_period=2, stale=stale)
        assert sorted(ended) == [legacy.number, lost.number], changed("fail_stale_trials", f"failed {ended}")
        assert study.trials[live.number].state == TrialState.RUNNING
    # Trial 2 was not told when its block ended (as on Ctrl-C): it ends as interrupted at once.
    states = [(trial.state, trial.user_attrs.get(INTERRUPTED_ATTR)) for trial in study.get_trials()]
    assert states == [(TrialState.COMPLETE, None), *[(TrialState.FAIL, True)] * 3]
    assert counted_trials(study) == 1
