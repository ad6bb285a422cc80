"""The model a run logs, and the only way this project loads one back.

Logged: an MLflow 3 LoggedModel whose source is the run (listed by `search_logged_models`, in the
experiment's Models tab and the runs table's Models column), holding MLflow's Keras flavour in Keras
3's `.keras` format with a signature (float32 pixels (-1, 28, 28, 1), values 0-255 -> ten
probabilities) and an input example. `runs:/<run_id>/model` and `models:/<model_id>` both name it.

Loaded: only that, through `keras.saving.load_model(safe_mode=True)`. MLflow would pick its loader
from the model folder's own MLmodel file, and an exported SavedModel (`save_exported_model: true`)
goes to `tf.saved_model.load`, which has no safe mode and runs the graph's own ops (file writes
included). So the MLmodel is read here and anything but a plain `.keras` file is refused.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fmnist_exp.errors import ModelUriError
from fmnist_exp.tracking import registry
from fmnist_exp.tracking.active_run import Run
from fmnist_exp.tracking.store import Store

ARTIFACT = "model"


def requirements() -> list[str]:
    """The model's pip requirements, pinned from the running versions (inferring them would load
    the model once more in a subprocess): Keras, its backend, MLflow."""
    import mlflow

    from fmnist_exp.model import backend

    return [*backend.pip_requirements(), f"mlflow=={mlflow.__version__}"]


def log(run: Run, model, example_images: np.ndarray, output_dir: Path) -> str:
    """Log the model as the run's LoggedModel `model`; returns its model id.

    What `mlflow.keras.log_model` does, step by step: create the LoggedModel for the run, save the
    model with `mlflow.keras.save_model` (pointing its MLmodel at the LoggedModel), upload the
    folder, mark the model READY. Step by step because MLflow 3.17's `log_model(...,
    input_example=...)` writes the example into a folder it has not created yet (mlflow#16183;
    tests/test_mlflow3.py notices when it is fixed): here the folder is made first. The saved folder
    stays in the run's output folder.
    """
    import mlflow.keras
    from mlflow.models import Model, infer_signature

    example = np.asarray(example_images, dtype=np.float32)
    signature = infer_signature(example, np.asarray(model.predict(example, verbose=0)))
    local = output_dir / ARTIFACT
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)  # MLflow writes the input example into it before creating it itself
    with run.logged_model(ARTIFACT, local) as logged:
        mlflow.keras.save_model(
            model,
            str(local),
            mlflow_model=Model(
                artifact_path=logged.artifact_location,
                run_id=run.run_id,
                model_uuid=logged.model_id,
                model_id=logged.model_id,
            ),
            signature=signature,
            input_example=example,
            pip_requirements=requirements(),
        )
    return logged.model_id


def keras_file(folder: Path) -> Path:
    """The `.keras` file of a logged model folder; refuses anything that is not this runner's format."""
    import yaml

    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        raise ModelUriError(f"model_uri: {folder} holds no MLmodel file; is it a logged model?")
    try:
        flavors = yaml.safe_load(mlmodel.read_text()).get("flavors", {})
    except (yaml.YAMLError, AttributeError) as error:
        raise ModelUriError(f"model_uri: {mlmodel} is not a readable MLmodel file") from error
    keras_flavor = flavors.get("keras")
    if not isinstance(keras_flavor, dict):
        raise ModelUriError(f"model_uri: {folder} is not a Keras model (flavors: {', '.join(flavors) or 'none'})")
    if keras_flavor.get("save_exported_model"):
        raise ModelUriError(
            f"model_uri: {folder} is an exported SavedModel, which loads without Keras's safe mode; "
            "only models saved in the .keras format are loaded"
        )
    path = (folder / str(keras_flavor.get("data", "data")) / "model.keras").resolve()
    if not path.is_relative_to(folder.resolve()) or not path.is_file():
        raise ModelUriError(f"model_uri: {folder} has no data/model.keras file inside it")
    return path


@contextlib.contextmanager
def fetched(model_uri: str, store: Store) -> Iterator[Path]:
    """The checked `.keras` file of a logged model (runs:/, models:/ or a local folder), in a scratch
    folder for as long as the block runs. Nothing of the folder is executed: it is refused before any
    backend starts when it is not this runner's format."""
    with tempfile.TemporaryDirectory() as scratch:
        yield keras_file(registry.download_model(store, model_uri, Path(scratch)))


def load_file(path: Path, model_uri: str):
    """A checked `.keras` file (from `fetched`) as a Keras model, with safe_mode on."""
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=True)
    except (ValueError, OSError, TypeError) as error:
        raise ModelUriError(f"model_uri: {model_uri} cannot be loaded safely ({error})") from error


def load(model_uri: str, store: Store):
    """A logged model as a Keras model, with safe_mode on."""
    with fetched(model_uri, store) as path:
        return load_file(path, model_uri)
