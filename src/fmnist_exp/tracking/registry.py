"""The model registry and the one way a runs:/ or models:/ URI is resolved to a model folder in a store."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fmnist_exp.errors import ModelUriError
from fmnist_exp.runtime.private_api import MODEL_VERSIONS_TAG
from fmnist_exp.tracking.store import RunRecord, Store


def in_store(model_uri: str) -> bool:
    """Whether a model URI is looked up in the store (runs:/, models:/), not a local folder."""
    return model_uri.startswith(("runs:/", "models:/"))


def logged_model_id(model_uri: str) -> str | None:
    """The LoggedModel id of a `models:/<model_id>` URI (MLflow 3 ids are `m-` and 32 hex digits)."""

    found = re.fullmatch(r"models:/(m-[0-9a-f]{32})/?", model_uri)
    return found.group(1) if found else None


def register_model(store: Store, run_id: str, name: str, alias: str | None = None) -> str:
    """Register the run's model as a new version of `name`; optionally point `alias` at it.

    The model is the run's LoggedModel, filed as the UI files one (its artifact location and
    model id; MLflow 3.17's SQLite registry would look a `models:/<model_id>` source up in the
    process's global tracking store, not this one), and the version is noted on the model
    (tag mlflow.modelVersions, which the Models tab shows). A run logged before models were
    LoggedModels has its `model` run artifact registered instead.
    """
    from mlflow.exceptions import MlflowException

    run = store.client.get_run(run_id)
    try:
        store.client.create_registered_model(name)
    except MlflowException:
        pass  # it exists already
    logged = store.logged_model_of(run_id)
    if logged is not None:
        source, model_id = logged.artifact_location, logged.model_id
    else:
        source, model_id = f"{run.info.artifact_uri}/model", None
    version = store.client.create_model_version(name, source=source, run_id=run_id, model_id=model_id).version
    if model_id:  # a tracking server notes it itself; a SQLite store does not
        noted = json.loads(store.client.get_logged_model(model_id).tags.get(MODEL_VERSIONS_TAG, "[]"))
        if not any(entry.get("name") == name and str(entry.get("version")) == str(version) for entry in noted):
            noted.append({"name": name, "version": version})
            store.client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: json.dumps(noted)})
    if alias:
        store.client.set_registered_model_alias(name, alias, version)
    return str(version)


def source_run(store: Store, model_uri: str) -> RunRecord | None:
    """The run a runs:/ or models:/ URI comes from, or None for a plain path."""
    from mlflow.exceptions import MlflowException

    try:
        run_id = None
        if model_uri.startswith("runs:/"):
            run_id = model_uri[len("runs:/") :].split("/", 1)[0]
        elif model_id := logged_model_id(model_uri):
            run_id = store.client.get_logged_model(model_id).source_run_id
        elif model_uri.startswith("models:/"):
            run_id = _model_version(store, model_uri).run_id
        if run_id:
            return RunRecord.of(store.client.get_run(run_id))
    except MlflowException as error:
        raise ModelUriError(f"model_uri: {model_uri} cannot be resolved in {store.uri} ({error.message})") from error
    return None


def _model_version(store: Store, model_uri: str):
    name, _, selector = model_uri[len("models:/") :].partition("@")
    if selector:
        return store.client.get_model_version_by_alias(name, selector)
    name, _, number = name.partition("/")
    return store.client.get_model_version(name, number)


def model_location(store: Store, model_uri: str) -> str:
    """Where a runs:/ or models:/ URI's model folder is, as an artifact URI of this store.

    Resolved here rather than by MLflow: MLflow 3.17 finds a LoggedModel behind runs:/ and
    models:/<model_id> through the process's global tracking URI, not this store (mlflow#18313).
    A run logged before models were LoggedModels has its model as the run artifact `model`.
    """
    if model_uri.startswith("runs:/"):
        run_id, _, path = model_uri[len("runs:/") :].partition("/")
        run = store.client.get_run(run_id)
        name, _, inside = (path or "model").partition("/")
        logged = store.logged_model_of(run_id, name)
        if logged is None:
            return f"{run.info.artifact_uri}/{path or 'model'}"
        return f"{logged.artifact_location}/{inside}" if inside else logged.artifact_location
    source = model_uri if logged_model_id(model_uri) else _model_version(store, model_uri).source
    if model_id := logged_model_id(source):  # models:/<model_id>, or a version registered as one
        return store.client.get_logged_model(model_id).artifact_location
    return source


def download_model(store: Store, model_uri: str, into: Path) -> Path:
    """The model folder of a runs:/, models:/ URI or a local path, as a local folder."""
    from mlflow.exceptions import MlflowException

    if not model_uri.startswith(("runs:/", "models:/")):
        folder = Path(model_uri).expanduser()
        if not folder.is_dir():
            raise ModelUriError(f"model_uri: {model_uri} is neither a runs:/ or models:/ URI nor a folder")
        return folder
    try:
        source = model_location(store, model_uri)
        import mlflow.artifacts

        return Path(
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(into), tracking_uri=store.uri)
        )
    except (MlflowException, OSError) as error:
        message = getattr(error, "message", str(error))
        raise ModelUriError(f"model_uri: {model_uri} cannot be resolved in {store.uri} ({message})") from error
