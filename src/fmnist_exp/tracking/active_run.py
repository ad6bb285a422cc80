"""One run's life: started or continued, heartbeat while it trains, ended FINISHED, KILLED or FAILED (never
RUNNING), and everything it logs on the way."""

from __future__ import annotations

import contextlib
import gc
import logging
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmnist_exp.runtime import interrupts, private_api
from fmnist_exp.tracking import liveness
from fmnist_exp.tracking.liveness import HEARTBEAT_TAG
from fmnist_exp.tracking.params import git_tags
from fmnist_exp.tracking.store import Store


@contextlib.contextmanager
def start(
    store: Store,
    experiment_name: str,
    run_name: str,
    tags: dict[str, str],
    parent_run_id: str | None = None,
    run_id: str | None = None,
) -> Iterator[Run]:
    """One run that ends FINISHED, KILLED (Ctrl-C, SIGTERM, SIGHUP) or FAILED, never RUNNING.

    With `run_id`, the existing run is continued (a resume) instead of a new one started. The run
    carries owner tags (host, pid, heartbeat), so that `reap_orphans` can end it as KILLED if
    this process dies without cleaning up.
    """
    experiment_id = store.experiment_id(experiment_name)
    store.reap_orphans()
    all_tags = {**git_tags(), **tags, **liveness.owner_tags()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    if run_id:
        store.client.update_run(run_id, status="RUNNING")
        store.set_tags(run_id, all_tags)
    else:
        run_id = store.client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id
    try:
        with liveness.heartbeats(store.client, run_id):
            yield Run(store, run_id)
    except BaseException as error:
        interrupt = interrupts.as_interrupt(error)
        if interrupt is not None:
            interrupts.delivered()
            release_interrupted_writes(error)
            store.client.set_terminated(run_id, "KILLED")
            if interrupt is error:
                raise
            raise interrupt from error
        release_interrupted_writes(error)
        store.client.set_tag(run_id, "failure_reason", f"{type(error).__name__}: {error}"[:5000])
        store.client.set_terminated(run_id, "FAILED")
        raise
    else:
        store.client.set_terminated(run_id, "FINISHED")


def release_interrupted_writes(error: BaseException) -> None:
    """Let the store be written again after `error` cut through one of MLflow's writes.

    A Ctrl-C or SIGTERM (raised as KeyboardInterrupt) can land inside a SQLite transaction. The frames
    of its traceback then keep that session, its connection and the database's write lock alive, and
    every later write of this process waits on the lock and fails with "database is locked": the run
    could not be marked KILLED. Clearing those frames' locals (the printed traceback keeps its lines)
    and collecting returns the connection to its pool, which rolls the write back and frees the lock.
    The frames of every exception chained to it are cleared too: a signal that lands while MLflow or
    SQLAlchemy handles another exception leaves the session in that exception's frames.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        pending += [current.__cause__, current.__context__]
    gc.collect()


@dataclass
class Run:
    """The run a job writes to; everything it logs goes through here."""

    store: Store
    run_id: str

    def log_params(self, params: dict[str, Any]) -> None:
        self.store.log_params(self.run_id, params)

    def log_metrics(self, metrics: dict[str, float], step: int = 0, model_id: str | None = None, dataset=None) -> None:
        """With `model_id` the metrics are also the LoggedModel's; with `dataset` (an mlflow.data
        Dataset) they say which data they were measured on."""
        from mlflow.entities import Metric

        interrupts.check()  # a signal a finalizer swallowed stops the run here (every epoch logs)
        now = int(time.time() * 1000)
        on = {"dataset_name": dataset.name, "dataset_digest": dataset.digest} if dataset is not None else {}
        items = [Metric(key, float(value), now, step, model_id=model_id, **on) for key, value in metrics.items()]
        for start in range(0, len(items), 500):
            self.store.client.log_batch(self.run_id, metrics=items[start : start + 500])

    def set_tags(self, tags: dict[str, Any]) -> None:
        interrupts.check()
        self.store.set_tags(self.run_id, tags)

    def heartbeat(self, **tags: Any) -> None:
        self.set_tags({HEARTBEAT_TAG: int(time.time()), **tags})

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.store.client.log_artifact(self.run_id, str(path), folder)

    def log_artifacts(self, path: Path, folder: str | None = None) -> None:
        self.store.client.log_artifacts(self.run_id, str(path), folder)

    def histories(self) -> dict[str, list[float]]:
        return self.store.histories(self.run_id)

    def log_datasets(self, datasets: dict[str, Any]) -> None:
        """Dataset inputs of the run, {context: mlflow.data Dataset}; the context is training,
        validation or test. Only the datasets' descriptions are stored, never their contents."""
        from mlflow.exceptions import MlflowException

        inputs = [private_api.dataset_input(dataset, context) for context, dataset in datasets.items()]
        try:
            self.store.client.log_inputs(self.run_id, datasets=inputs)
        except MlflowException as error:
            # MLflow's SQL store looks a data set up, then inserts it: two jobs of a parallel sweep that
            # log the same data set at the same moment (the same seed and data) can both miss it, and
            # the second insert breaks the table's unique key. Its transaction was rolled back; once
            # more finds the first job's row.
            if "unique constraint" not in str(error).lower():
                raise
            self.store.client.log_inputs(self.run_id, datasets=inputs)

    @contextlib.contextmanager
    def logged_model(self, name: str, folder: Path) -> Iterator[Any]:
        """A new LoggedModel whose source is this run, listed among the run's outputs, for the block
        to save an MLflow model into `folder`; uploaded and READY after it, FAILED if it raises.

        A model of the same name left by an earlier attempt of this run (a resume) is deleted first,
        so that `runs:/<run_id>/<name>` means this one.
        """
        from mlflow.entities import LoggedModelOutput

        client = self.store.client
        for stale in self.store.logged_models_of(self.run_id, name):
            client.delete_logged_model(stale.model_id)
        run = client.get_run(self.run_id)
        logged = client.create_logged_model(
            run.info.experiment_id, name=name, source_run_id=self.run_id, params=dict(run.data.params)
        )
        client.log_outputs(self.run_id, [LoggedModelOutput(logged.model_id, step=0)])
        try:
            yield logged
            client.log_model_artifacts(logged.model_id, str(folder))
        except BaseException:
            client.finalize_logged_model(logged.model_id, "FAILED")
            raise
        client.finalize_logged_model(logged.model_id, "READY")

    @contextlib.contextmanager
    def system_metrics(self, enabled: bool = True, resume: bool = False) -> Iterator[None]:
        """MLflow's system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) for the block,
        as `system/...` metrics of this run.

        MLflow samples every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds (10 by default) and drops
        the samples since its last report when it stops; here they are reported at the end, with one
        last sample, so that a run shorter than the interval gets its figures too.
        """
        if not enabled:
            yield
            return
        monitor = private_api.system_metrics_monitor(self.run_id, resume, self.store.uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()
            try:
                monitor.collect_metrics()
                if last := monitor.aggregate_metrics():
                    monitor.publish_metrics(last)
                    monitor.mlflow_logger.flush()
            except Exception as error:  # noqa: BLE001 (a missing last sample must not change how the run ends)
                logging.getLogger(__name__).warning(f"the last system metrics sample was not logged: {error}")

    @property
    def experiment_id(self) -> str:
        return self.store.get_run(self.run_id).experiment_id
