"""MLflow: the store, the run's lifecycle (never left RUNNING), params, per-epoch metrics, artifacts."""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus

from fmnist_exp.config import PROJECT_ROOT
from fmnist_exp.errors import ModelUriError, TrackingError, UserError


def sqlite_path(tracking_uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix) :]) if tracking_uri.startswith(prefix) else None


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, naming the URI, rather than after training when the first write retries."""
    if tracking_uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout):  # noqa: S310
                pass
        except (urllib.error.URLError, OSError) as error:
            raise TrackingError(
                f"mlflow.tracking_uri: cannot reach the tracking server {tracking_uri} ({error}). "
                "Start it, or point mlflow.tracking_uri at a reachable server or a sqlite:/// file."
            ) from error
        return
    database = sqlite_path(tracking_uri)
    if database is not None:
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrackingError(f"mlflow.tracking_uri: cannot create {database.parent} ({error})") from error
        if not os.access(database.parent, os.W_OK):
            raise TrackingError(f"mlflow.tracking_uri: the folder {database.parent} is not writable")


def ensure_experiment(name: str, tracking_uri: str) -> str:
    """The experiment's id, creating it with artifacts beside a SQLite store (mlruns/artifacts/...)."""
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    database = sqlite_path(tracking_uri)
    artifact_location = (database.parent / "artifacts" / name).as_uri() if database else None
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:
        # Another job of a parallel sweep created it first.
        return mlflow.get_experiment_by_name(name).experiment_id


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


@contextlib.contextmanager
def run(
    tracking_uri: str,
    experiment_name: str,
    run_name: str,
    tags: dict[str, str],
    parent_run_id: str | None = None,
    run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run that ends FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED, never RUNNING.

    With `run_id`, the existing run is continued (a resume) instead of a new one started.
    """
    experiment_id = ensure_experiment(experiment_name, tracking_uri)
    # A run id left in the environment (by a caller or an earlier job) would make start_run resume it.
    os.environ.pop("MLFLOW_RUN_ID", None)
    all_tags = {**git_tags(), **tags}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    if run_id:
        active = mlflow.start_run(run_id=run_id)
        mlflow.set_tags(all_tags)
    else:
        active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=all_tags)
    try:
        yield active
    except KeyboardInterrupt:
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as error:
        mlflow.set_tag("failure_reason", f"{type(error).__name__}: {error}"[:5000])
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def metric_histories(run_id: str) -> dict[str, list[float]]:
    """Every per-epoch metric of a run, ordered by epoch: {'loss': [...], 'val_accuracy': [...]}."""
    client = mlflow.MlflowClient()
    keys = [key for key in client.get_run(run_id).data.metrics if not key.startswith("test_")]
    histories = {}
    for key in keys:
        points = sorted(client.get_metric_history(run_id, key), key=lambda point: point.step)
        if points and points[0].step >= 1:
            histories[key] = [point.value for point in points]
    return histories


def output_dir_of_run(run_id: str, tracking_uri: str) -> Path:
    """The output folder a run recorded in its `output_dir` tag."""
    mlflow.set_tracking_uri(tracking_uri)
    try:
        tags = mlflow.MlflowClient().get_run(run_id).data.tags
    except mlflow.exceptions.MlflowException as error:
        raise UserError(
            f"resume: {run_id!r} is neither a run's output folder nor a run id in {tracking_uri}"
        ) from error
    if "output_dir" not in tags:
        raise UserError(f"resume: run {run_id} recorded no output_dir tag")
    return Path(tags["output_dir"])


def log_params(params: dict[str, Any]) -> None:
    """Log flattened config params; MLflow keeps 6,000 characters of a value."""
    mlflow.log_params({key: ("null" if value is None else str(value))[:6000] for key, value in params.items()})


def epoch_logger():
    """A keras callback that logs every numeric value of an epoch's logs as a metric at step=epoch."""
    import keras

    class MlflowEpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            metrics = {key: float(value) for key, value in (logs or {}).items() if _is_number(value)}
            mlflow.log_metrics(metrics, step=epoch + 1)
            mlflow.set_tag("last_completed_epoch", str(epoch + 1))

    return MlflowEpochLogger()


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def log_keras_model(model, example_images, output_dir: Path) -> None:
    """The model in Keras 3's .keras format, MLflow's Keras flavour, with a signature and an input example.

    The input is raw pixels: float32, shape (-1, 28, 28, 1), values 0-255; the output is the ten class
    probabilities. It is saved into the run's output folder first and then uploaded as the `model`
    artifact: MLflow 3.17's `mlflow.keras.log_model` writes the input example before it creates its
    folder and fails. Requirements are pinned from the running versions instead of inferred, which
    would load the model once more in a subprocess.
    """
    import shutil

    import numpy as np
    from mlflow.models import infer_signature

    from fmnist_exp import backend

    example = np.asarray(example_images, dtype=np.float32)
    signature = infer_signature(example, model.predict(example, verbose=0))
    local = output_dir / "model"
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    mlflow.keras.save_model(
        model,
        str(local),
        signature=signature,
        input_example=example,
        pip_requirements=[*backend.pip_requirements(), f"mlflow=={mlflow.__version__}"],
    )
    mlflow.log_artifacts(str(local), artifact_path="model")


def register_model(run_id: str, name: str, alias: str | None = None) -> str:
    """Register the run's `model` artifact as a new version of `name`; optionally point `alias` at it.

    Returns the version. `models:/<name>@<alias>` then loads it.
    """
    version = mlflow.register_model(f"runs:/{run_id}/model", name).version
    if alias:
        mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return str(version)


def source_run(model_uri: str, tracking_uri: str):
    """The MLflow run a runs:/ or models:/ URI comes from, or None for a plain path."""
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    try:
        if model_uri.startswith("runs:/"):
            return client.get_run(model_uri[len("runs:/") :].split("/", 1)[0])
        if model_uri.startswith("models:/"):
            name, _, selector = model_uri[len("models:/") :].partition("@")
            if selector:
                version = client.get_model_version_by_alias(name, selector)
            else:
                name, _, number = name.partition("/")
                version = client.get_model_version(name, number)
            return client.get_run(version.run_id) if version.run_id else None
    except mlflow.exceptions.MlflowException as error:
        raise ModelUriError(f"model_uri: {model_uri} cannot be resolved in {tracking_uri} ({error.message})") from error
    return None


def load_keras_model(model_uri: str, tracking_uri: str):
    """Load a logged Keras model. Keras's safe_mode stays on: no code from the file is run."""
    mlflow.set_tracking_uri(tracking_uri)
    try:
        return mlflow.keras.load_model(model_uri, load_model_kwargs={"safe_mode": True})
    except (mlflow.exceptions.MlflowException, OSError) as error:
        raise ModelUriError(f"model_uri: cannot load {model_uri} ({error})") from error
