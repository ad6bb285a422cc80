"""MLflow behind one boundary: a `Store` made from a tracking URI and passed to whoever needs it.

It owns the client, the experiments, searches, and a run's params, metrics, tags and artifacts.
Nothing outside tracking/ holds an MLflow client or reads an MLflow run object: searches answer with
`RunRecord`s, plain values. Nothing calls `mlflow.set_tracking_uri` or the fluent `mlflow.*` run API,
so a sweep, a report and a test can each hold a store of their own in one process. The rest of the
tracking layer, by job: active_run.py (one run's life: start, heartbeat, end status, and what it logs),
liveness.py (owner tags, heartbeats, reaping runs whose process is gone), registry.py (the registry and
model URIs), location.py (what a URI names, whether it answers), links.py (the UI link),
logged_model.py and dataset_inputs.py (the model and data set objects a run logs), params.py.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmnist_exp.errors import TrackingError, UserError
from fmnist_exp.runtime import locks
from fmnist_exp.runtime.private_api import LOGGED_ARTIFACTS_TAG
from fmnist_exp.tracking import liveness
from fmnist_exp.tracking.location import check_database_reachable, sqlite_path

log = logging.getLogger(__name__)
# The experiment's kind, as MLflow's UI writes it when a person picks "Machine learning" (the tag
# mlflow.experimentKind, value custom_model_development). MLflow 3.17's UI takes the page it opens
# on from its GenAI / Model training toggle instead (`?workflowType=machine_learning`, remembered
# in the browser); earlier UIs and searches read this tag. Set on an experiment of ours without one.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


@dataclass(frozen=True)
class RunRecord:
    """What the package reads of a run: plain values, no MLflow object."""

    run_id: str
    run_name: str
    experiment_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED
    start_time: int | None  # milliseconds since the epoch, as MLflow keeps it
    params: dict[str, str]
    metrics: dict[str, float]  # each metric's latest value
    tags: dict[str, str]
    end_time: int | None = None  # milliseconds since the epoch; None while the run is RUNNING

    @classmethod
    def of(cls, run) -> RunRecord:
        info, data = run.info, run.data
        return cls(
            run_id=info.run_id,
            run_name=info.run_name or "",
            experiment_id=info.experiment_id,
            status=info.status,
            start_time=info.start_time,
            params=dict(data.params),
            metrics=dict(data.metrics),
            tags=dict(data.tags),
            end_time=info.end_time,
        )


def artifact_folder_name(experiment_name: str) -> str:
    """A folder name for an experiment's artifacts: its name made safe, plus a digest of the whole name."""
    import hashlib
    import re

    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment_name).strip("._")[:40] or "experiment"
    return f"{slug}-{hashlib.sha256(experiment_name.encode()).hexdigest()[:8]}"


class Store:
    """One MLflow tracking store (a sqlite:/// file or an http:// server)."""

    def __init__(self, tracking_uri: str, orphan_after_minutes: float = liveness.ORPHAN_AFTER_MINUTES):
        self.uri = tracking_uri
        self.orphan_after_minutes = orphan_after_minutes
        self._client = None

    # -- the store itself -------------------------------------------------------------------------

    @property
    def client(self):
        """The MLflow client; a new SQLite store's schema is created under a file lock.

        Two processes opening a new SQLite store at once otherwise race MLflow's schema migration
        (alembic: "Online migration expected to match one row").
        """
        if self._client is None:
            from mlflow import MlflowClient

            database = sqlite_path(self.uri)
            if database is None:
                self._client = MlflowClient(self.uri)
            else:
                with locks.exclusive(database.with_name(database.name + ".lock")):
                    client = MlflowClient(self.uri)
                    client.search_experiments(max_results=1)  # creates or migrates the schema now
                    self._client = client
        return self._client

    def check(self, key: str = "mlflow.tracking_uri", timeout: float = 5.0, existing: bool = False) -> None:
        """Fail in seconds with one line naming the URI, before any training, if the store is unusable.

        `existing`: for a command that only reads, a SQLite file that is not there is refused (its path
        is likely mistyped; reading would create an empty store there)."""
        check_database_reachable(self.uri, key, timeout)
        if self.uri.startswith(("http://", "https://")):
            try:
                with urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=timeout):  # noqa: S310
                    return
            except (urllib.error.URLError, OSError) as error:
                raise TrackingError(
                    f"{key}: cannot reach the tracking server {self.uri} ({error}). "
                    "Start it, or point the key at a reachable server or a sqlite:/// file."
                ) from error
        database = sqlite_path(self.uri)
        if database is not None:
            if database.exists() and not database.is_file():
                raise TrackingError(f"{key}: {database} is not a file")
            if not database.exists() and existing:
                raise TrackingError(
                    f"{key}: no MLflow store at {database}; this command only reads a store and makes "
                    "none (check the path; a run makes a new store)"
                )
            if not database.exists():
                # A new store is made by the first run, once nothing can refuse it any more: a refused
                # command leaves no database (nor its folder) behind. Here: could it be made?
                nearest = next(folder for folder in database.parents if folder.exists())
                if not nearest.is_dir():
                    raise TrackingError(f"{key}: cannot create {database.parent}: {nearest} is not a folder")
                if not os.access(nearest, os.W_OK | os.X_OK):
                    raise TrackingError(f"{key}: the folder {nearest} is not writable, so {database} cannot be made")
                return
            if not os.access(database.parent, os.W_OK):
                raise TrackingError(f"{key}: the folder {database.parent} is not writable")
        try:
            self.client.search_experiments(max_results=1)
        except Exception as error:  # noqa: BLE001 (any failure here means the store is unusable)
            self._client = None
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            raise TrackingError(
                f"{key}: {self.uri} cannot be used as an MLflow store ({reason}). "
                "Use a sqlite:///<absolute path>.db file or an http://host:port tracking server."
            ) from error

    def experiment_id(self, name: str, create: bool = True) -> str | None:
        """The experiment's id; created (when `create`) with its artifacts under the store's artifact root.

        A name is only ever a name: the artifact folder is a slug of it plus a digest, so an absolute
        or dotted name (`/etc`, `../x`) cannot send artifacts outside the store's folder.
        """
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if create:  # the runner is about to use it: one created before it had a kind gets ours
                for key, value in EXPERIMENT_KIND.items():
                    if key not in experiment.tags:
                        self.client.set_experiment_tag(experiment.experiment_id, key, value)
            return experiment.experiment_id
        if not create:
            return None
        database = sqlite_path(self.uri)
        # MLflow's default for a SQLite store is ./mlruns relative to the working folder; keep the
        # artifacts beside the database instead, whatever the cwd. A server decides for itself.
        location = (database.parent / "artifacts" / artifact_folder_name(name)).as_uri() if database else None
        try:
            return self.client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
        except MlflowException:  # another job of a parallel sweep created it first
            return self.client.get_experiment_by_name(name).experiment_id

    def reap_orphans(self) -> list[str]:
        """End this store's runs whose process is gone as KILLED (liveness.reap_orphans); their ids."""
        from fmnist_exp.config.checks import check_orphan_bound

        check_orphan_bound(self.orphan_after_minutes)  # a bound under the heartbeat period closes live runs
        return liveness.reap_orphans(self.client, self.uri, self.orphan_after_minutes)

    # -- runs and their records -------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRecord:
        from mlflow.exceptions import MlflowException

        try:
            return RunRecord.of(self.client.get_run(run_id))
        except MlflowException as error:
            raise UserError(f"run {run_id!r} is not a run in {self.uri}") from error

    def search(
        self, experiment_name: str, filter_string: str = "", max_results: int = 10000, order_by=None
    ) -> list[RunRecord]:
        """Runs of an experiment (none if it does not exist)."""
        experiment_id = self.experiment_id(experiment_name, create=False)
        if experiment_id is None:
            return []
        found = self.client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=max_results, order_by=order_by
        )
        return [RunRecord.of(run) for run in found]

    def first(self, experiment_name: str, filter_string: str) -> RunRecord | None:
        found = self.search(experiment_name, filter_string, max_results=1)
        return found[0] if found else None

    def children(self, parent_run_id: str) -> list[RunRecord]:
        parent = self.client.get_run(parent_run_id)
        found = self.client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
            max_results=10000,
        )
        return [RunRecord.of(run) for run in found]

    def create_run(self, experiment_id: str, name: str) -> str:
        """A new RUNNING run that the caller ends (set_terminated); its id. Runs of a job use `run()`."""
        return self.client.create_run(experiment_id, run_name=name[:250]).info.run_id

    def reopen(self, run_id: str) -> None:
        """A finished run RUNNING again (a sweep re-run continues its parent)."""
        self.client.update_run(run_id, status="RUNNING")

    def histories(self, run_id: str, skip_prefix: str = "test_") -> dict[str, list[float]]:
        """Every per-epoch metric of a run, ordered by epoch: {'loss': [...], 'val_accuracy': [...]}."""
        keys = [
            key
            for key in self.client.get_run(run_id).data.metrics
            if not key.startswith((skip_prefix, "system/"))  # system metrics are sampled by time, not epoch
        ]
        histories = {}
        for key in keys:
            points = sorted(self.client.get_metric_history(run_id, key), key=lambda point: point.step)
            if points and points[0].step >= 1:
                histories[key] = [point.value for point in points]
        return histories

    def metric_at(self, run_id: str, key: str, step: int) -> float | None:
        for point in self.client.get_metric_history(run_id, key):
            if point.step == step:
                return point.value
        return None

    def metric_history(self, run_id: str, key: str) -> list[float]:
        """One per-epoch metric of a run, ordered by epoch (empty if the run never logged it)."""
        points = sorted(self.client.get_metric_history(run_id, key), key=lambda point: point.step)
        return [point.value for point in points if point.step >= 1]

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Params as strings; MLflow keeps 6,000 characters of a value and takes 100 per call."""
        from mlflow.entities import Param

        items = [Param(key, ("null" if value is None else str(value))[:6000]) for key, value in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()])

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def log_table(self, run_id: str, columns: dict[str, list], artifact_file: str) -> None:
        """A table artifact that the MLflow UI shows as a table (and `mlflow.load_table` reads).

        Written as `MlflowClient.log_table` writes one (pandas' "split" JSON, listed in the run's
        mlflow.loggedArtifacts tag), but replacing an earlier file of the same name: log_table appends
        to it, which would list a re-run sweep's jobs twice.
        """
        import tempfile

        import pandas

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / Path(artifact_file).name
            pandas.DataFrame(columns).to_json(path, orient="split", index=False, date_format="iso")
            self.client.log_artifact(run_id, str(path), posixpath.dirname(artifact_file) or None)
        listed = json.loads(self.client.get_run(run_id).data.tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
        entry = {"path": artifact_file, "type": "table"}
        if entry not in listed:
            self.client.set_tag(run_id, LOGGED_ARTIFACTS_TAG, json.dumps([*listed, entry]))

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def set_terminated(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)

    # -- logged models (MLflow 3) -----------------------------------------------------------------

    def logged_models_of(self, run_id: str, name: str = "model") -> list:
        """The run's LoggedModels called `name`, newest first (deleted ones are not listed)."""
        run = self.client.get_run(run_id)
        return list(
            self.client.search_logged_models(
                [run.info.experiment_id],
                filter_string=f"name = '{name}' AND source_run_id = '{run_id}'",
                order_by=[{"field_name": "creation_timestamp", "ascending": False}],
            )
        )

    def logged_model_of(self, run_id: str, name: str = "model"):
        """The run's LoggedModel called `name`, or None."""
        found = self.logged_models_of(run_id, name)
        return found[0] if found else None
