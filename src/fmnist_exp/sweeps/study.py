"""`hydra/sweeper=study`: Hydra's Optuna sweeper with a stored, resumable study and pruned trials.

On top of hydra-optuna-sweeper it
- stores the study in SQLite beside the MLflow store (`optuna.db`), named after the sweep (its
  `sweep_key`), so the same search command continues the study: n_trials in total, not n_trials more;
- lets several searches (processes, machines) share the study: each records its trials' heartbeats,
  a trial whose search was lost (no heartbeat for `grace_period` seconds) is failed as interrupted and
  not counted, and together they run n_trials in total (shared_study.py);
- reports each job's per-epoch objective to the trial and marks a job the runner pruned as PRUNED;
- tags each MLflow child run with its trial number, and each trial with its MLflow run id.
"""

from __future__ import annotations

import logging
import math
import time
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
from fmnist_exp.sweeps import shared_study
from fmnist_exp.sweeps.shared_study import INTERRUPTED_ATTR
from fmnist_exp.tracking.location import sqlite_path
from fmnist_exp.tracking.store import Store

log = logging.getLogger(__name__)


def default_storage(tracking_uri: str) -> str:
    """SQLite beside the MLflow store's database; the project's mlruns/ for a tracking server."""
    database = sqlite_path(tracking_uri)
    folder = database.parent if database else PROJECT_ROOT / "mlruns"
    return f"sqlite:///{folder / 'optuna.db'}"


@dataclass
class StudySweeperConf(OptunaSweeperConf):
    _target_: str = "fmnist_exp.sweeps.study.StudySweeper"
    # null: sqlite beside the MLflow store. study_name null: named after the sweep.
    # Seconds between the heartbeats a search writes into the study for each trial it trains.
    heartbeat_interval: int = 60
    # A RUNNING trial whose heartbeat is older than this many seconds lost its search, and any search
    # on the study fails it (as interrupted: not counted). At least twice heartbeat_interval.
    grace_period: int = 300


def register() -> None:
    ConfigStore.instance().store(group="hydra/sweeper", name="study", node=StudySweeperConf, replace=True)


class StudySweeper(OptunaSweeper):
    def __init__(self, heartbeat_interval: int = 60, grace_period: int = 300, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kwargs.get("custom_search_space"):
            raise ConfigError("hydra.sweeper.custom_search_space is not supported by the study sweeper")
        shared_study.check_heartbeat(heartbeat_interval, grace_period)
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
        self.sweeper.heartbeat_interval = heartbeat_interval
        self.sweeper.grace_period = grace_period


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
    """The plugin's `sweep`, with the study stored, continued, shared, pruned trials marked and runs tagged."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

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
    study, backend, stale = open_study(self, store, directions[0])
    waiting_for: set[int] = set()
    while True:
        # Other searches on the study may have ended trials, or died, since the last batch.
        shared_study.end_stale_trials(study, backend, self.grace_period, stale)
        running = shared_study.open_trials(study)
        to_go = self.n_trials - counted_trials(study) - len(running)
        if to_go <= 0:
            if not running:
                break
            # The rest are other searches' trials: wait for them, and take over those whose search dies.
            if {trial.number for trial in running} != waiting_for:
                waiting_for = {trial.number for trial in running}
                log.info(f"waiting for trial(s) {sorted(waiting_for)} of other searches on the study")
            time.sleep(self.heartbeat_interval)
            continue
        asked = shared_study.ask_trials(study, backend, min(to_go, self.n_jobs))
        with shared_study.heartbeat(backend, [trial_id for _, trial_id in asked], self.heartbeat_interval):
            trials = []
            for trial, trial_id in asked:
                if shared_study.beyond_n_trials(study, trial, self.n_trials, counts):
                    log.info(f"trial {trial.number} given back: another search took the last trial at the same moment")
                    shared_study.give_back(backend, trial_id)
                else:
                    trials.append(trial)
            if trials:
                overrides = self._configure_trials(trials, distributions, fixed_params, fixed_overrides)
                launch_batch(self, study, trials, overrides, store)
    finish(study, Path(self.config.hydra.sweep.dir))


def open_study(self, store: Store, direction):
    """The stored study (created, or continued), its storage with Optuna's heartbeat on, and the
    record of stale trials; the trials of searches that died are failed first. Returns all three."""
    import optuna

    from fmnist_exp.config.identity import sweep_key

    storage = self.storage or default_storage(store.uri)
    # The storage object made here (what optuna.create_study makes of a URL), with Optuna's heartbeat
    # on, so that trials are written through Optuna's public storage API, not the study's _storage.
    stale = shared_study.StaleTrials(self.grace_period)
    backend = (
        shared_study.heartbeat_storage(storage, self.heartbeat_interval, self.grace_period, stale)
        if isinstance(storage, str)
        else storage
    )
    study_name = self.study_name or f"{self.config.mlflow.experiment_name}-{sweep_key(self.config)}"
    study = optuna.create_study(
        study_name=study_name, storage=backend, sampler=self.sampler, direction=direction, load_if_exists=True
    )
    abandoned = shared_study.end_stale_trials(study, backend, self.grace_period, stale)
    if study.trials:
        # A seeded sampler would start its random stream again and propose the finished trials'
        # values once more; a continued study draws fresh ones (so it is not bit-for-bit reproducible).
        study.sampler.reseed_rng()
    elsewhere = len(shared_study.open_trials(study))
    log.info(
        f"Study {study_name} in {storage}: {counted_trials(study)} of {self.n_trials} trials done"
        + (f"; {len(abandoned)} interrupted trial(s) marked failed and not counted" if abandoned else "")
        + (f"; {elsewhere} trial(s) running in other searches" if elsewhere else "")
    )
    return study, backend, stale


def launch_batch(self, study, trials: list, overrides: list, store: Store) -> None:
    """Run one batch of trials through the launcher and tell the study their results."""
    returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
    self.job_idx += len(returns)
    failures = sum(
        not tell(study, trial, job, store, study.study_name) for trial, job in zip(trials, returns, strict=True)
    )
    if failures / len(returns) > self.max_failure_rate:
        for job in returns:
            job.return_value  # noqa: B018 (raises the job's own exception with its traceback)
        raise RuntimeError(f"{failures} of {len(returns)} trials failed (max_failure_rate={self.max_failure_rate})")


def counts(trial) -> bool:
    """Whether an ended trial counts towards n_trials: completed, pruned, or failed other than by
    interruption (a lost search, Ctrl-C, a trial given back)."""
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and not trial.user_attrs.get(INTERRUPTED_ATTR)
    )


def counted_trials(study) -> int:
    """Trials that count towards n_trials."""
    return sum(1 for trial in study.get_trials(deepcopy=False) if counts(trial))


def tell(study, trial, job, store: Store, study_name: str) -> bool:
    """Hand a job's result to the study; returns False for a failed trial."""
    import optuna
    from optuna.trial import TrialState

    try:
        trial.set_user_attr(INTERRUPTED_ATTR, False)  # it ran to its end: told, whatever its result
    except optuna.exceptions.UpdateFinishedTrialError:
        log.warning(
            f"trial {trial.number} was failed by another search while it ran (its heartbeat was older than "
            "hydra.sweeper.grace_period: raise it if the study's database is often slow or unreachable); "
            "its job's run stays in MLflow, the study does not count it"
        )
        return True
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
