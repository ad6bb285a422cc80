"""MLflow behind one boundary: a `Store` made from a tracking URI and passed to whoever needs it.

It owns the client, the experiments, the run lifecycle (a run ends FINISHED, KILLED or FAILED, never
RUNNING), params, metrics, tags, artifacts, searches, models and the registry. Nothing else in the
project holds an MLflow client or reads an MLflow run object: searches answer with `RunRecord`s,
plain values. Nothing calls `mlflow.set_tracking_uri` or the fluent `mlflow.*` run API, so a sweep,
a report and a test can each hold a store of their own in one process. (logged_model.py and
dataset_inputs.py build the model and dataset objects this module logs; private_api.py holds the
MLflow internals.)
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import logging
import os
import posixpath
import socket
import subprocess
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmnist_exp.config.schema import PROJECT_ROOT
from fmnist_exp.errors import ModelUriError, TrackingError, UserError
from fmnist_exp.runtime import interrupts, private_api
from fmnist_exp.runtime.private_api import LOGGED_ARTIFACTS_TAG, MODEL_VERSIONS_TAG

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
        )


UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` and `python -m fmnist_exp.ui` serve by default


def ui_link(
    tracking_uri: str, experiment_id: str | None = None, run_id: str | None = None, address: str | None = None
) -> str:
    """The one link to the MLflow UI: the experiment's runs table, one run's page, or (with no
    experiment) the list of experiments, in the machine-learning view.

    MLflow 3.17's UI opens on its GenAI view (traces, prompts) unless the address asks for
    `workflowType=machine_learning`. A tracking server serves its own UI at its URI; a SQLite store
    is served by `mlflow ui` (or `python -m fmnist_exp.ui`) at `address`.
    """
    if tracking_uri.startswith(("http://", "https://")):
        address = tracking_uri
    root = (address or UI_ADDRESS).rstrip("/") + "/"
    page = "#/experiments" + (f"/{experiment_id}/runs" if experiment_id else "") + (f"/{run_id}" if run_id else "")
    return f"{root}{page}?workflowType=machine_learning"


def ui_command(tracking_uri: str, experiment_id: str | None = None, run_id: str | None = None) -> str:
    """How to look at the store: the link, with the command that serves it where a server is needed."""
    from fmnist_exp.config.schema import default_tracking_uri

    link = ui_link(tracking_uri, experiment_id, run_id)
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {link}"
    store = "" if tracking_uri == default_tracking_uri() else f" mlflow.tracking_uri={tracking_uri}"
    return f"python -m fmnist_exp.ui{store}, then open {link}"


def sqlite_path(tracking_uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix) :]) if tracking_uri.startswith(prefix) else None


def process_start(pid: int) -> str | None:
    """The kernel's start time of a process (clock ticks since boot), or None if it is gone.

    With the pid it identifies one process: a pid reused by a later process has another start time.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19]  # field 22 of stat; fields[0] here is field 3


def artifact_folder_name(experiment_name: str) -> str:
    """A folder name for an experiment's artifacts: its name made safe, plus a digest of the whole name."""
    import hashlib
    import re

    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment_name).strip("._")[:40] or "experiment"
    return f"{slug}-{hashlib.sha256(experiment_name.encode()).hexdigest()[:8]}"


def in_store(model_uri: str) -> bool:
    """Whether a model URI is looked up in the store (runs:/, models:/), not a local folder."""
    return model_uri.startswith(("runs:/", "models:/"))


def logged_model_id(model_uri: str) -> str | None:
    """The LoggedModel id of a `models:/<model_id>` URI (MLflow 3 ids are `m-` and 32 hex digits)."""
    import re

    found = re.fullmatch(r"models:/(m-[0-9a-f]{32})/?", model_uri)
    return found.group(1) if found else None


def release_interrupted_writes(error: BaseException) -> None:
    """Let the store be written again after `error` cut through one of MLflow's writes.

    A Ctrl-C or SIGTERM (raised as KeyboardInterrupt) can land inside a SQLite transaction. The frames
    of its traceback then keep that session, its connection and the database's write lock alive, and
    every later write of this process waits on the lock and fails with "database is locked": the run
    could not be marked KILLED. Clearing those frames' locals (the printed traceback keeps its lines)
    and collecting returns the connection to its pool, which rolls the write back and frees the lock.
    """
    traceback.clear_frames(error.__traceback__)
    gc.collect()


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


def git_tags() -> dict[str, str]:
    """The commit the code ran from, and whether the tree had uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit, "git_commit": commit, "git_dirty": str(dirty).lower()}


STORE_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_database_reachable(uri: str, key: str, timeout: float) -> None:
    """An unknown scheme, or a database server that does not accept connections, in one line.

    MLflow's own connection to a database retries for minutes and needs the driver installed to say
    even that; a plain TCP connection answers in seconds.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[0] or uri  # postgresql+psycopg2 -> postgresql; "databricks"
    if scheme not in STORE_SCHEMES:
        raise TrackingError(
            f"{key}: {uri} is not an MLflow store URI (scheme {parts.scheme or 'none'!r}); "
            "use a sqlite:///<absolute path>.db file or an http://host:port tracking server"
        )
    if scheme not in DATABASE_PORTS:
        return
    try:
        port = parts.port or DATABASE_PORTS[scheme]
    except ValueError as error:
        raise TrackingError(f"{key}: {uri} has an invalid port ({error})") from error
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout):
            return
    except OSError as error:
        raise TrackingError(
            f"{key}: cannot reach the {scheme} database at {parts.hostname or 'localhost'}:{port} ({error}). "
            "Start it, or point the key at a reachable store or a sqlite:/// file."
        ) from error


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes on this machine, held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Store:
    """One MLflow tracking store (a sqlite:/// file or an http:// server)."""

    def __init__(self, tracking_uri: str, orphan_after_minutes: float = ORPHAN_AFTER_MINUTES):
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
                with file_lock(database.with_name(database.name + ".lock")):
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
                existing = next(folder for folder in database.parents if folder.exists())
                if not existing.is_dir():
                    raise TrackingError(f"{key}: cannot create {database.parent}: {existing} is not a folder")
                if not os.access(existing, os.W_OK | os.X_OK):
                    raise TrackingError(f"{key}: the folder {existing} is not writable, so {database} cannot be made")
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

    # -- runs -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def run(
        self,
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
        experiment_id = self.experiment_id(experiment_name)
        self.reap_orphans()
        all_tags = {**git_tags(), **tags, **owner_tags()}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            self.set_tags(run_id, all_tags)
        else:
            run_id = self.client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id
        try:
            with self.heartbeats(run_id):
                yield Run(self, run_id)
        except KeyboardInterrupt as interrupt:
            interrupts.delivered()
            release_interrupted_writes(interrupt)
            self.client.set_terminated(run_id, "KILLED")
            raise
        except BaseException as error:
            release_interrupted_writes(error)
            self.client.set_tag(run_id, "failure_reason", f"{type(error).__name__}: {error}"[:5000])
            self.client.set_terminated(run_id, "FAILED")
            raise
        else:
            self.client.set_terminated(run_id, "FINISHED")

    @contextlib.contextmanager
    def heartbeats(self, run_id: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
        """The run's heartbeat tag, rewritten every `every` seconds by a thread while the block runs.

        Epochs also write it, but one epoch (or a long test pass, or uploading a model) may outlast
        the bound after which another machine counts the run as lost. A failed write is a warning:
        a store that is briefly unreachable must not end a training.
        """
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every):
                try:
                    self.client.set_tag(run_id, HEARTBEAT_TAG, str(int(time.time())))
                except Exception as error:  # noqa: BLE001 (the training goes on; the next beat may pass)
                    log.warning(f"heartbeat of run {run_id} not written: {error}")

        thread = threading.Thread(target=beat, name=f"heartbeat {run_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()

    def reap_orphans(self) -> list[str]:
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

        from fmnist_exp.config.schema import check_orphan_bound

        check_orphan_bound(self.orphan_after_minutes)  # a bound under the heartbeat period closes live runs
        database = sqlite_path(self.uri)
        if database is not None and not database.is_file():
            return []  # no store yet, so no run; looking would create it
        running = self._search_all_experiments("attributes.status = 'RUNNING'", ViewType.ALL)
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
                silent = (now - max(freshest[stale.info.run_id], self._newest_job(stale))) / 60
                if silent <= self.orphan_after_minutes:
                    continue  # it may be alive: its machine, or one of its jobs, wrote recently
                reason = (
                    f"no heartbeat from process {pid} on {owner} for {silent:.0f} minutes "
                    f"(more than mlflow.orphan_after_minutes={self.orphan_after_minutes:g}); "
                    "its process or machine was lost"
                )
            self.client.set_tag(stale.info.run_id, "killed_reason", reason)
            self.client.set_terminated(stale.info.run_id, "KILLED")
            log.info(f"run {stale.info.run_id} was left RUNNING and is now KILLED: {reason}")
            reaped.append(stale.info.run_id)
        return reaped

    def _newest_job(self, run) -> float:
        """When a run's newest jobs (a sweep's children) last showed life: a heartbeat or their end.

        Between two batches of a sweep no job is RUNNING, yet its parent lives. Asked only of a run
        about to be closed, so the common case costs no search."""
        jobs = self.client.search_runs(
            [run.info.experiment_id],
            f"tags.`mlflow.parentRunId` = '{run.info.run_id}'",
            max_results=5,
            order_by=["attributes.start_time DESC"],
        )
        return max([0.0, *(max(_heartbeat_of(job), (job.info.end_time or 0) / 1000) for job in jobs)])

    def _search_all_experiments(self, filter_string: str, view_type) -> list:
        """Runs matching `filter_string` in every experiment of the store, page by page."""
        experiments, token = [], None
        while True:
            page = self.client.search_experiments(view_type=view_type, max_results=1000, page_token=token)
            experiments += [experiment.experiment_id for experiment in page]
            token = page.token
            if not token:
                break
        runs = []
        for start in range(0, len(experiments), 100):  # a tracking server takes at most 100 per search
            token = None
            while True:
                page = self.client.search_runs(
                    experiments[start : start + 100], filter_string, max_results=1000, page_token=token
                )
                runs += list(page)
                token = page.token
                if not token:
                    break
        return runs

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
        Run(self, run_id).log_params(params)

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

    # -- models -----------------------------------------------------------------------------------

    def register_model(self, run_id: str, name: str, alias: str | None = None) -> str:
        """Register the run's model as a new version of `name`; optionally point `alias` at it.

        The model is the run's LoggedModel, filed as the UI files one (its artifact location and
        model id; MLflow 3.17's SQLite registry would look a `models:/<model_id>` source up in the
        process's global tracking store, not this one), and the version is noted on the model
        (tag mlflow.modelVersions, which the Models tab shows). A run logged before models were
        LoggedModels has its `model` run artifact registered instead.
        """
        from mlflow.exceptions import MlflowException

        run = self.client.get_run(run_id)
        try:
            self.client.create_registered_model(name)
        except MlflowException:
            pass  # it exists already
        logged = self.logged_model_of(run_id)
        if logged is not None:
            source, model_id = logged.artifact_location, logged.model_id
        else:
            source, model_id = f"{run.info.artifact_uri}/model", None
        version = self.client.create_model_version(name, source=source, run_id=run_id, model_id=model_id).version
        if model_id:  # a tracking server notes it itself; a SQLite store does not
            noted = json.loads(self.client.get_logged_model(model_id).tags.get(MODEL_VERSIONS_TAG, "[]"))
            if not any(entry.get("name") == name and str(entry.get("version")) == str(version) for entry in noted):
                noted.append({"name": name, "version": version})
                self.client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: json.dumps(noted)})
        if alias:
            self.client.set_registered_model_alias(name, alias, version)
        return str(version)

    def source_run(self, model_uri: str) -> RunRecord | None:
        """The run a runs:/ or models:/ URI comes from, or None for a plain path."""
        from mlflow.exceptions import MlflowException

        try:
            run_id = None
            if model_uri.startswith("runs:/"):
                run_id = model_uri[len("runs:/") :].split("/", 1)[0]
            elif model_id := logged_model_id(model_uri):
                run_id = self.client.get_logged_model(model_id).source_run_id
            elif model_uri.startswith("models:/"):
                run_id = self._model_version(model_uri).run_id
            if run_id:
                return RunRecord.of(self.client.get_run(run_id))
        except MlflowException as error:
            raise ModelUriError(f"model_uri: {model_uri} cannot be resolved in {self.uri} ({error.message})") from error
        return None

    def _model_version(self, model_uri: str):
        name, _, selector = model_uri[len("models:/") :].partition("@")
        if selector:
            return self.client.get_model_version_by_alias(name, selector)
        name, _, number = name.partition("/")
        return self.client.get_model_version(name, number)

    def model_location(self, model_uri: str) -> str:
        """Where a runs:/ or models:/ URI's model folder is, as an artifact URI of this store.

        Resolved here rather than by MLflow: MLflow 3.17 finds a LoggedModel behind runs:/ and
        models:/<model_id> through the process's global tracking URI, not this store (mlflow#18313).
        A run logged before models were LoggedModels has its model as the run artifact `model`.
        """
        if model_uri.startswith("runs:/"):
            run_id, _, path = model_uri[len("runs:/") :].partition("/")
            run = self.client.get_run(run_id)
            name, _, inside = (path or "model").partition("/")
            logged = self.logged_model_of(run_id, name)
            if logged is None:
                return f"{run.info.artifact_uri}/{path or 'model'}"
            return f"{logged.artifact_location}/{inside}" if inside else logged.artifact_location
        source = model_uri if logged_model_id(model_uri) else self._model_version(model_uri).source
        if model_id := logged_model_id(source):  # models:/<model_id>, or a version registered as one
            return self.client.get_logged_model(model_id).artifact_location
        return source

    def download_model(self, model_uri: str, into: Path) -> Path:
        """The model folder of a runs:/, models:/ URI or a local path, as a local folder."""
        from mlflow.exceptions import MlflowException

        if not model_uri.startswith(("runs:/", "models:/")):
            folder = Path(model_uri).expanduser()
            if not folder.is_dir():
                raise ModelUriError(f"model_uri: {model_uri} is neither a runs:/ or models:/ URI nor a folder")
            return folder
        try:
            source = self.model_location(model_uri)
            import mlflow.artifacts

            return Path(
                mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(into), tracking_uri=self.uri)
            )
        except (MlflowException, OSError) as error:
            message = getattr(error, "message", str(error))
            raise ModelUriError(f"model_uri: {model_uri} cannot be resolved in {self.uri} ({message})") from error

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


@dataclass
class Run:
    """The run a job writes to; everything it logs goes through here."""

    store: Store
    run_id: str

    def log_params(self, params: dict[str, Any]) -> None:
        """Params as strings; MLflow keeps 6,000 characters of a value and takes 100 per call."""
        from mlflow.entities import Param

        items = [Param(key, ("null" if value is None else str(value))[:6000]) for key, value in params.items()]
        for start in range(0, len(items), 100):
            self.store.client.log_batch(self.run_id, params=items[start : start + 100])

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
        inputs = [private_api.dataset_input(dataset, context) for context, dataset in datasets.items()]
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
