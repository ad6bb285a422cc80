"""`hydra/sweeper=study`: Hydra's Optuna sweeper with a stored, resumable study and pruned trials.

On top of hydra-optuna-sweeper it
- stores the study in SQLite beside the MLflow store (`optuna.db`), named after the sweep (its
  `sweep_key`), so the same search command continues the study: n_trials in total, not n_trials more;
- ends trials left RUNNING by a search that died as FAIL, so they are not counted;
- reports each job's per-epoch objective to the trial and marks a job the runner pruned as PRUNED;
- tags each MLflow child run with its trial number, and each trial with its MLflow run id.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

# The plugin's config and front class import nothing heavy; its implementation (Optuna) is imported
# only when a search starts.
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import OmegaConf

from fmnist_exp.config.schema import PROJECT_ROOT
from fmnist_exp.errors import ConfigError
from fmnist_exp.tracking.location import sqlite_path
from fmnist_exp.tracking.store import Store

log = logging.getLogger(__name__)

INTERRUPTED_ATTR = "interrupted"


def default_storage(tracking_uri: str) -> str:
    """SQLite beside the MLflow store's database; the project's mlruns/ for a tracking server."""
    database = sqlite_path(tracking_uri)
    folder = database.parent if database else PROJECT_ROOT / "mlruns"
    return f"sqlite:///{folder / 'optuna.db'}"


@dataclass
class StudySweeperConf(OptunaSweeperConf):
    _target_: str = "fmnist_exp.sweeps.study.StudySweeper"
    # null: sqlite beside the MLflow store. study_name null: named after the sweep.


def register() -> None:
    ConfigStore.instance().store(group="hydra/sweeper", name="study", node=StudySweeperConf, replace=True)


class StudySweeper(OptunaSweeper):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kwargs.get("custom_search_space"):
            raise ConfigError("hydra.sweeper.custom_search_space is not supported by the study sweeper")
        plain = self.sweeper
        self.sweeper = stored_study_class()(
            plain.sampler,
            plain.direction,
            plain.storage,
            plain.study_name,
            plain.n_trials,
            plain.n_jobs,
            plain.max_failure_rate,
            None,
            plain.params,
        )


def stored_study_class():
    """The plugin's implementation with `sweep` replaced (defined here so Optuna loads only now)."""
    # The plugin's private _impl, here only (docs/design.md, "Private APIs we touch"; checked by
    # tests/test_private_api.py): its public sweeper cannot continue a stored study by count, mark
    # interrupted trials or prune (upstream: facebookresearch/hydra#2793, #1954).
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

    class StoredStudyImpl(OptunaSweeperImpl):
        sweep = sweep_stored_study

    return StoredStudyImpl


def sweep_stored_study(self, arguments: list[str]) -> None:
    """The plugin's `sweep`, with the study stored, continued, pruned trials marked and runs tagged."""
    import optuna
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    from fmnist_exp.config.identity import sweep_key

    directions = self._get_directions()
    if len(directions) != 1:
        raise ConfigError("hydra.sweeper.direction: the study sweeper optimises one objective")
    self._process_searchspace_config()
    distributions, fixed_params, fixed_overrides = create_params_from_overrides(
        [*self._parse_sweeper_params_config(), *arguments]
    )
    for name in fixed_params:
        distributions.pop(name, None)
    store = Store(self.config.mlflow.tracking_uri)
    storage = self.storage or default_storage(store.uri)
    # The storage object made here (what optuna.create_study makes of a URL), so that the study's
    # abandoned trials are ended through Optuna's public storage API, not the study's private _storage.
    backend = optuna.storages.RDBStorage(storage) if isinstance(storage, str) else storage
    study_name = self.study_name or f"{self.config.mlflow.experiment_name}-{sweep_key(self.config)}"
    study = optuna.create_study(
        study_name=study_name,
        storage=backend,
        sampler=self.sampler,
        direction=directions[0],
        load_if_exists=True,
    )
    abandoned = end_abandoned_trials(study, backend)
    if study.trials:
        # A seeded sampler would start its random stream again and propose the finished trials'
        # values once more; a continued study draws fresh ones (so it is not bit-for-bit reproducible).
        study.sampler.reseed_rng()
    done = counted_trials(study)
    log.info(
        f"Study {study_name} in {storage}: {done} of {self.n_trials} trials done"
        + (f"; {abandoned} interrupted trial(s) marked failed and not counted" if abandoned else "")
    )
    to_go = self.n_trials - done
    while to_go > 0:
        batch = min(to_go, self.n_jobs)
        trials = [study.ask() for _ in range(batch)]
        overrides = self._configure_trials(trials, distributions, fixed_params, fixed_overrides)
        returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        self.job_idx += len(returns)
        failures = sum(
            not tell(study, trial, job, store, study_name) for trial, job in zip(trials, returns, strict=True)
        )
        if failures / len(returns) > self.max_failure_rate:
            for job in returns:
                job.return_value  # noqa: B018 (raises the job's own exception with its traceback)
            raise RuntimeError(f"{failures} of {len(returns)} trials failed (max_failure_rate={self.max_failure_rate})")
        to_go -= batch
    finish(study, Path(self.config.hydra.sweep.dir))


def end_abandoned_trials(study, storage) -> int:
    """Trials a search that died left RUNNING end as FAIL (marked interrupted); returns how many.

    `storage` is the study's optuna.storages.BaseStorage: its public methods find a trial's id by its
    number and write it (study.tell cannot mark a WAITING trial, nor set a user attribute by number)."""
    from optuna.trial import TrialState

    abandoned = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in abandoned:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, INTERRUPTED_ATTR, True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    return len(abandoned)


def counted_trials(study) -> int:
    """Trials that count towards n_trials: completed, pruned, and failed other than by interruption."""
    from optuna.trial import TrialState

    return sum(
        1
        for trial in study.get_trials(deepcopy=False)
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (trial.state == TrialState.FAIL and not trial.user_attrs.get(INTERRUPTED_ATTR))
    )


def tell(study, trial, job, store: Store, study_name: str) -> bool:
    """Hand a job's result to the study; returns False for a failed trial."""
    from optuna.trial import TrialState

    try:
        result = job.return_value
    except Exception as error:  # noqa: BLE001 (a job's own exception fails its trial only)
        log.warning(f"trial {trial.number} failed: {type(error).__name__}: {error}")
        study.tell(trial, state=TrialState.FAIL)
        return False
    if not isinstance(result, dict):
        result = {"objective": float(result)}
    objective = float(result.get("objective", math.nan))
    for epoch, value in enumerate(result.get("curve") or [], start=1):
        if not math.isnan(value):
            trial.report(value, epoch)
    if result.get("run_id"):
        trial.set_user_attr("mlflow_run_id", result["run_id"])
    for run_id in result.get("run_ids") or ([result["run_id"]] if result.get("run_id") else []):
        store.set_tags(run_id, {"optuna.trial": trial.number, "optuna.study": study_name})
    if math.isnan(objective):
        study.tell(trial, state=TrialState.FAIL)
        return False
    if result.get("pruned"):
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, objective)
    return True


def finish(study, sweep_dir: Path) -> None:
    from optuna.trial import TrialState

    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    if not completed:
        log.warning("no trial completed")
        return
    best = study.best_trial
    log.info(f"Best parameters: {best.params}")
    log.info(f"Best value: {best.value} (trial {best.number}; {len(completed)} completed, {len(pruned)} pruned)")
    results = {"name": "optuna", "study": study.study_name, "best_params": best.params, "best_value": best.value}
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
    plot_study(study, sweep_dir / "summary")


def plot_study(study, folder: Path) -> list[Path]:
    """Optuna's own figures of the study, its optimization history and parameter importances, as
    PNG files in `folder` (the sweep's parent run logs the folder). Importances need two completed
    trials and a parameter that varied; without them only the history is drawn."""
    import warnings

    import optuna
    from matplotlib import pyplot

    from fmnist_exp.analysis import plots  # noqa: F401 (chooses matplotlib's Agg backend)

    folder.mkdir(parents=True, exist_ok=True)
    figures = {"optuna_history.png": optuna.visualization.matplotlib.plot_optimization_history}
    figures["optuna_importances.png"] = optuna.visualization.matplotlib.plot_param_importances
    written = []
    for name, plot in figures.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as error:  # too few trials for importances
                log.info(f"{name} not drawn: {error}")
                continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        figure.savefig(folder / name, dpi=100)
        pyplot.close(figure)
        written.append(folder / name)
    return written


# Hydra loads this module through the project's `hydra.plugins` entry point (pyproject.toml); storing
# the config here makes `hydra/sweeper=study` known in every kind of install.
register()
