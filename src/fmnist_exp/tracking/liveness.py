"""Whether a run's process lives: its owner tags and heartbeat, and the reaping of runs whose process is gone."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator

from fmnist_exp.tracking.location import sqlite_path

# Tags that say which process owns a RUNNING run, so that a run whose process died can be found.
HOST_TAG, PID_TAG, PID_START_TAG, HEARTBEAT_TAG = (
    "fmnist_exp.host",
    "fmnist_exp.pid",
    "fmnist_exp.pid_start",
    "fmnist_exp.heartbeat",
)
# A live run writes its heartbeat tag this often, from a thread of its own, whatever its epochs
# take (an epoch of a large model on a CPU can last longer than any fixed bound); its epochs write it
# too. A run of another machine counts as lost once its heartbeat is older than
# mlflow.orphan_after_minutes (config.MlflowConfig), so that bound must be a good many heartbeats.
HEARTBEAT_SECONDS = 60
ORPHAN_AFTER_MINUTES = 15  # the default of mlflow.orphan_after_minutes
log = logging.getLogger(__name__)


def process_start(pid: int) -> str | None:
    """When a process started (seconds since the epoch, as psutil reads the kernel's), or None if it is gone.

    With the pid it identifies one process: a pid reused by a later process has another start time.
    """
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _heartbeat_of(run) -> float:
    try:
        return float(run.data.tags.get(HEARTBEAT_TAG) or run.info.start_time / 1000)
    except (TypeError, ValueError):
        return run.info.start_time / 1000


def owner_tags() -> dict[str, str]:
    pid = os.getpid()
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(pid),
        PID_START_TAG: process_start(pid) or "",
        HEARTBEAT_TAG: str(int(time.time())),
    }


@contextlib.contextmanager
def heartbeats(client, run_id: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """The run's heartbeat tag, rewritten every `every` seconds by a thread while the block runs.

    Epochs also write it, but one epoch (or a long test pass, or uploading a model) may outlast
    the bound after which another machine counts the run as lost. A failed write is a warning:
    a store that is briefly unreachable must not end a training.
    """
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                client.set_tag(run_id, HEARTBEAT_TAG, str(int(time.time())))
            except Exception as error:  # noqa: BLE001 (the training goes on; the next beat may pass)
                log.warning(f"heartbeat of run {run_id} not written: {error}")

    thread = threading.Thread(target=beat, name=f"heartbeat {run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def reap_orphans(client, uri: str, orphan_after_minutes: float) -> list[str]:
    """Mark RUNNING runs whose process is gone as KILLED, in every experiment; returns their ids.

    A process killed with SIGKILL, by the OOM killer or with its machine cannot end its own run.
    A run of this machine is lost when its process is gone (its pid is free, or taken by a later
    process: the start time differs). Whether a process of another machine lives cannot be seen
    from here: its run is lost once its heartbeat is older than `orphan_after_minutes`. A sweep's
    parent run is as fresh as its freshest job: a RUNNING job's heartbeat, or a job's end (between
    two batches none runs). Runs without owner tags
    (made by other tools) are left alone.
    """
    from mlflow.entities import ViewType

    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        return []  # no store yet, so no run; looking would create it
    running = search_all_experiments(client, "attributes.status = 'RUNNING'", ViewType.ALL)
    if not running:
        return []
    host, now = socket.gethostname(), time.time()
    freshest: dict[str, float] = {}  # run id -> its newest heartbeat, or its newest job's
    for run in running:
        beat = _heartbeat_of(run)
        parent = run.data.tags.get("mlflow.parentRunId")
        for run_id in (run.info.run_id, parent):
            if run_id:
                freshest[run_id] = max(freshest.get(run_id, 0.0), beat)
    reaped = []
    for stale in running:
        tags = stale.data.tags
        owner = tags.get(HOST_TAG)
        pid = int(tags.get(PID_TAG, "0") or 0)
        if not owner:
            continue
        if owner == host:
            if pid and tags.get(PID_START_TAG) and process_start(pid) == tags.get(PID_START_TAG):
                continue  # its process is alive
            reason = f"process {pid} on {host} ended without closing the run"
        else:
            silent = (now - max(freshest[stale.info.run_id], _newest_job(client, stale))) / 60
            if silent <= orphan_after_minutes:
                continue  # it may be alive: its machine, or one of its jobs, wrote recently
            reason = (
                f"no heartbeat from process {pid} on {owner} for {silent:.0f} minutes "
                f"(more than mlflow.orphan_after_minutes={orphan_after_minutes:g}); "
                "its process or machine was lost"
            )
        client.set_tag(stale.info.run_id, "killed_reason", reason)
        client.set_terminated(stale.info.run_id, "KILLED")
        log.info(f"run {stale.info.run_id} was left RUNNING and is now KILLED: {reason}")
        reaped.append(stale.info.run_id)
    return reaped


def _newest_job(client, run) -> float:
    """When a run's newest jobs (a sweep's children) last showed life: a heartbeat or their end.

    Between two batches of a sweep no job is RUNNING, yet its parent lives. Asked only of a run
    about to be closed, so the common case costs no search."""
    jobs = client.search_runs(
        [run.info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{run.info.run_id}'",
        max_results=5,
        order_by=["attributes.start_time DESC"],
    )
    return max([0.0, *(max(_heartbeat_of(job), (job.info.end_time or 0) / 1000) for job in jobs)])


def search_all_experiments(client, filter_string: str, view_type) -> list:
    """Runs matching `filter_string` in every experiment of the store, page by page."""
    experiments, token = [], None
    while True:
        page = client.search_experiments(view_type=view_type, max_results=1000, page_token=token)
        experiments += [experiment.experiment_id for experiment in page]
        token = page.token
        if not token:
            break
    runs = []
    for start in range(0, len(experiments), 100):  # a tracking server takes at most 100 per search
        token = None
        while True:
            page = client.search_runs(
                experiments[start : start + 100], filter_string, max_results=1000, page_token=token
            )
            runs += list(page)
            token = page.token
            if not token:
                break
    return runs
