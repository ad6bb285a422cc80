"""Several searches on one stored study: each trial's heartbeat, stale trials, and who takes the next trial.

Optuna's way to search on many machines is many processes on one study in one database. A search
here asks and tells (Hydra's sweeper runs the jobs), so Optuna's own heartbeat, recorded only inside
Study.optimize, is recorded by the search itself: a thread writes the heartbeat of every trial the
search is training into the study's RDBStorage every `heartbeat_interval` seconds. A RUNNING trial
whose heartbeat is older than `grace_period` lost its search (killed, or its machine lost): any search
on the study fails it (Optuna's public `fail_stale_trials`), marked interrupted so it is not counted.
A live search's trials are never touched.

A trial is marked interrupted from the moment it is asked until its result is told, so a trial failed
as stale (by any process) or ended by Ctrl-C stays interrupted, and counts for nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from typing import Any

from fmnist_exp.errors import ConfigError
from fmnist_exp.runtime import private_api

log = logging.getLogger(__name__)

INTERRUPTED_ATTR = "interrupted"  # True until the trial's result is told (user attribute)
SEARCH_ATTR = "search"  # the search training the trial: "process <pid> on <host>" (user attribute)


def check_heartbeat(heartbeat_interval: Any, grace_period: Any) -> None:
    """hydra.sweeper.heartbeat_interval and grace_period: whole seconds, the grace at least two beats."""
    for key, value in (("heartbeat_interval", heartbeat_interval), ("grace_period", grace_period)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"hydra.sweeper.{key}: {value!r} must be a whole number of seconds, 1 or more")
    if grace_period < 2 * heartbeat_interval:
        raise ConfigError(
            f"hydra.sweeper.grace_period: {grace_period} must be at least twice hydra.sweeper.heartbeat_interval "
            f"({heartbeat_interval}): a live search whose heartbeat is one beat late would lose its trial"
        )


class StaleTrials:
    """Optuna's heartbeat_stale_trial_callback: says which trial failed, and whose it was."""

    def __init__(self, grace_period: int) -> None:
        self.grace_period = grace_period
        self.numbers: list[int] = []

    def __call__(self, study, trial) -> None:
        self.numbers.append(trial.number)
        whose = trial.user_attrs.get(SEARCH_ATTR, "a search")
        log.warning(
            f"trial {trial.number} of {whose} failed: no heartbeat for more than "
            f"hydra.sweeper.grace_period={self.grace_period} s, so its process or machine was lost"
        )


def heartbeat_storage(url: str, heartbeat_interval: int, grace_period: int, stale: StaleTrials):
    """The study's optuna.storages.RDBStorage, with Optuna's heartbeat on."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=stale,
        )


def this_search() -> str:
    return f"process {os.getpid()} on {socket.gethostname()}"


def end_stale_trials(study, storage, grace_period: int, stale: StaleTrials) -> list[int]:
    """Fail the RUNNING trials whose search was lost; returns their numbers.

    A trial with a heartbeat is stale once its heartbeat is older than the grace period (Optuna's
    rule, on the database's clock). A RUNNING trial without a heartbeat was made by a release before
    the heartbeat (or by a search that died between asking it and its first beat): it is stale once it
    started more than the grace period ago, by this machine's clock, and is failed here the same way.
    WAITING trials are queued for the next ask (study.enqueue_trial) and are left alone.
    """
    import optuna
    from optuna.trial import TrialState

    stale.numbers.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    ended = list(stale.numbers)
    too_old = datetime.datetime.now() - datetime.timedelta(seconds=grace_period)
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if SEARCH_ATTR in trial.user_attrs or (trial.datetime_start and trial.datetime_start > too_old):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # another search was first
            storage.set_trial_user_attr(trial_id, INTERRUPTED_ATTR, True)
            if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                ended.append(trial.number)
                log.warning(f"trial {trial.number} (no heartbeat: an earlier release's) failed as interrupted")
    return ended


def open_trials(study) -> list:
    """Trials that will count once they end: RUNNING (trained by some search) and WAITING (queued)."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))


def ask_trials(study, storage, count: int) -> list[tuple[Any, int]]:
    """Ask `count` trials, each with its first heartbeat and marked interrupted and ours; (trial, id) pairs."""
    study_id = storage.get_study_id_from_name(study.study_name)
    asked = []
    for _ in range(count):
        trial = private_api.ask_without_heartbeat_warning(study)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        private_api.record_trial_heartbeat(storage, trial_id)
        storage.set_trial_user_attr(trial_id, INTERRUPTED_ATTR, True)
        storage.set_trial_user_attr(trial_id, SEARCH_ATTR, this_search())
        asked.append((trial, trial_id))
    return asked


def beyond_n_trials(study, trial, n_trials: int, counts) -> bool:
    """Whether n_trials trials that count (or will) come before `trial`: searches that asked at the
    same moment each took a trial, and the later ones give theirs back. `counts(trial)`: a trial that
    ended and counts."""
    from optuna.trial import TrialState

    ahead = sum(
        1
        for other in study.get_trials(deepcopy=False)
        if other.number < trial.number and (other.state in (TrialState.RUNNING, TrialState.WAITING) or counts(other))
    )
    return ahead >= n_trials


def give_back(storage, trial_id: int) -> None:
    """End a trial this search will not train (it stays marked interrupted: it counts for nothing)."""
    from optuna.trial import TrialState

    storage.set_trial_state_values(trial_id, TrialState.FAIL)


@contextlib.contextmanager
def heartbeat(storage, trial_ids: list[int], interval: int) -> Iterator[None]:
    """The trials' heartbeats, written every `interval` seconds by a thread while their jobs run.

    A write that fails is a warning (a database briefly unreachable must not stop a training); the
    grace period is what tolerates missed beats. Trials of the block that are not told when it ends
    (Ctrl-C, SIGTERM, a launcher's error) are failed as interrupted at once."""
    import optuna

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            for trial_id in trial_ids:
                try:
                    private_api.record_trial_heartbeat(storage, trial_id)
                except Exception as error:  # noqa: BLE001 (the training goes on; the next beat may pass)
                    log.warning(f"heartbeat of trial id {trial_id} not written: {error}")

    thread = threading.Thread(target=beat, name="study heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 30)
        for trial_id in trial_ids:
            try:
                give_back(storage, trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # told: nothing to do
            except Exception as error:  # noqa: BLE001 (what ended the block is the error to raise)
                log.warning(f"trial id {trial_id} not ended: {error}; the next search fails it once it is stale")
