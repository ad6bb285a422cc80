"""A run's output folder: its layout and file names, atomic writes, the one-writer lock, what a
refused run leaves behind, and the command that resumes an interrupted run. Everything else asks here.

    <output folder>/            Hydra's outputs/<date>/<time>/, or hydra.run.dir
      config.yaml               the composed, validated config; resume reads it back
      overrides.yaml            the command line's overrides (a JSON list)
      run.json                  {"run_id": ...}, written as soon as the MLflow run exists
      .lock                     held by the one process writing this run
      model_layers.txt          the layer table (logged as an artifact)
      checkpoints/state.json    {"epoch", "model", "run_id", "random_state"}: the last completed epoch
      checkpoints/epoch-NNNN.keras   that epoch's model with its optimizer state (older ones removed)
      checkpoints/best.keras    the best epoch's model (callbacks.BestEpoch's rule)
      plots/, reports/          what evaluate_and_log writes and logs

Nothing here imports Keras at import time: the model-file functions take a model or import it late.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from fmnist_exp.errors import UserError
from fmnist_exp.runtime import locks

if TYPE_CHECKING:
    from fmnist_exp.tracking.store import Store

CONFIG_FILE = "config.yaml"
OVERRIDES_FILE = "overrides.yaml"
RUN_FILE = "run.json"
LOCK_FILE = ".lock"
LAYERS_FILE = "model_layers.txt"
CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
BEST_MODEL = "best.keras"
_WRITE_PROBE = ".write-test"
# What Hydra and the prepare stage write into a job's folder before anything is trained.
UNUSED_OUTPUT = {".hydra", "run.log", CONFIG_FILE, OVERRIDES_FILE, LOCK_FILE, _WRITE_PROBE}


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: a reader sees the old file or the new one, never half."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def atomic_save_model(model, path: Path) -> None:
    """`model.save` to a temporary name, then rename (Keras wants the .keras suffix on the temporary too)."""
    partial = path.with_name(f".{path.stem}.partial.keras")
    model.save(partial)
    os.replace(partial, path)


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` is a run's output folder, one that `resume=` can continue."""
    return (folder / CONFIG_FILE).is_file() and (folder / RUN_FILE).is_file()


def make(output_dir: Path) -> Path:
    """The output folder, created and proven writable, or one line naming it."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / _WRITE_PROBE
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UserError(f"hydra.run.dir: cannot write to the output folder {output_dir} ({error})") from error
    return output_dir


def write_inputs(output_dir: Path, config_yaml: str, overrides: list[str]) -> None:
    """The config and overrides that `resume=` reads back."""
    (output_dir / CONFIG_FILE).write_text(config_yaml)
    (output_dir / OVERRIDES_FILE).write_text(json.dumps(list(overrides)) + "\n")


def read_overrides(folder: Path) -> list[str]:
    path = folder / OVERRIDES_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def write_run_id(output_dir: Path, run_id: str) -> None:
    (output_dir / RUN_FILE).write_text(json.dumps({"run_id": run_id}) + "\n")


def run_id_of(folder: Path) -> str:
    """The MLflow run id in a run's output folder."""
    try:
        return str(json.loads((folder / RUN_FILE).read_text())["run_id"])
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"resume: {folder / RUN_FILE} is damaged ({type(error).__name__}: {error})") from error


@contextlib.contextmanager
def one_writer(output_dir: Path) -> Iterator[None]:
    """One process writes a run at a time: a second run or resume of the same folder is refused."""
    try:
        with locks.exclusive(output_dir / LOCK_FILE, wait=False, mode="a+") as handle:
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()}")
            handle.flush()
            yield
    except locks.Held:
        holder = (output_dir / LOCK_FILE).read_text().strip() or "another process"
        raise UserError(f"resume: {output_dir} is in use by {holder}; wait for it to end or stop it") from None


# -- checkpoints ------------------------------------------------------------------------------------


def checkpoints(output_dir: Path) -> Path:
    return output_dir / CHECKPOINTS


def best_model(output_dir: Path) -> Path:
    return checkpoints(output_dir) / BEST_MODEL


def save_epoch(model, output_dir: Path, epoch: int, run_id: str) -> None:
    """After epoch `epoch` (1-based): its model, then state.json naming it, then the older epochs go.

    state.json only ever names a complete file, so a crash mid-write leaves the previous checkpoint."""
    folder = checkpoints(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{epoch:04d}.keras"
    atomic_save_model(model, folder / name)
    state = {"epoch": epoch, "model": name, "run_id": run_id, "random_state": random_state(model)}
    atomic_write_text(folder / STATE_FILE, json.dumps(state))
    for old in folder.glob("epoch-*.keras"):
        if old.name != name:
            old.unlink()


def _seed_states(model) -> list:
    """The model's random-number states (dropout's, augmentation's), in the model's variable order.

    A .keras file does not keep them (Keras saves them as they were when the layer was built), so a
    resumed run would draw other dropout masks than the run it continues: state.json keeps them.
    """
    return [variable for variable in model.variables if variable.path.endswith("seed_generator_state")]


def random_state(model) -> list[list[int]]:
    import numpy as np

    return [np.asarray(variable).tolist() for variable in _seed_states(model)]


def restore_random_state(model, saved: list[list[int]] | None) -> None:
    """Give a loaded model the random-number states the checkpoint was written with."""
    if saved is None:  # a checkpoint of an earlier release: the streams start afresh, as they did then
        return
    import numpy as np

    variables = _seed_states(model)
    if len(variables) != len(saved):
        raise UserError(f"resume: the checkpoint keeps {len(saved)} random states, the model has {len(variables)}")
    for variable, value in zip(variables, saved, strict=True):
        variable.assign(np.asarray(value, dtype=variable.dtype))


def save_best(model, output_dir: Path) -> None:
    checkpoints(output_dir).mkdir(parents=True, exist_ok=True)
    atomic_save_model(model, best_model(output_dir))


def checkpoint_state(output_dir: Path) -> dict | None:
    """The last completed epoch's {epoch, model, run_id}, or None before the first epoch ended."""
    folder = checkpoints(output_dir)
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        if not (folder / state["model"]).is_file():
            raise FileNotFoundError(folder / state["model"])
    except (ValueError, KeyError, TypeError, FileNotFoundError) as error:
        raise UserError(f"resume: the checkpoint in {folder} is damaged ({type(error).__name__}: {error})") from error
    return state


def checkpoint_file(output_dir: Path, state: dict) -> Path:
    return checkpoints(output_dir) / state["model"]


def load_checkpoint(output_dir: Path, state: dict):
    """The checkpointed model, compiled, with its optimizer state and its random-number states (so
    that dropout and augmentation go on drawing as the uninterrupted run); safe_mode runs no code
    from the file."""
    import keras

    model = keras.saving.load_model(checkpoint_file(output_dir, state), safe_mode=True)
    restore_random_state(model, state.get("random_state"))
    return model


# -- what a refused or interrupted run leaves -------------------------------------------------------


def existing_ancestors(output_roots: list[Path]) -> set[Path]:
    """Before Hydra makes the output folder: the nearest existing folder of each root it may write
    under, where the folders it will make begin (what discard_unused stops at)."""
    return {next(folder for folder in (root, *root.parents) if folder.exists()) for root in output_roots}


def discard_unused(output_dir: Path, existing_before: set[Path] | frozenset[Path] = frozenset()) -> None:
    """Remove a job's output folder that holds only what was written before training began, and the
    empty folders above it that this command made (Hydra's outputs/<date>/), none of `existing_before`
    (existing_ancestors, taken before the command made any)."""
    if not output_dir.is_dir() or any(entry.name not in UNUSED_OUTPUT for entry in output_dir.iterdir()):
        return
    shutil.rmtree(output_dir, ignore_errors=True)
    folder = output_dir.absolute().parent
    if not existing_before:  # not known: the date folder Hydra made, at most
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        return
    while folder not in existing_before and any(folder.is_relative_to(root) for root in existing_before):
        if not folder.is_dir() or any(folder.iterdir()):
            return
        folder.rmdir()
        folder = folder.parent


def locate(target: str, store: Store | None) -> Path:
    """The output folder `resume=` names: a run's output folder, or a run id looked up in `store`
    (None: no store to ask, as when its SQLite file does not exist)."""
    folder = Path(target).expanduser()
    if not (folder / CONFIG_FILE).is_file():
        tags = store.get_run(target).tags if store is not None and not folder.exists() else {}
        if "output_dir" not in tags:
            where = f" in {store.uri}" if store is not None else ""
            raise UserError(f"resume: {target!r} is neither a run's output folder nor a run id{where}")
        folder = Path(tags["output_dir"])
    if not is_run_folder(folder):
        raise UserError(f"resume: {folder} holds no {CONFIG_FILE} and {RUN_FILE}; is it a run's output folder?")
    return folder


def resume_hint(resume: str | None, tracking_uri: str, default_uri: str, output_dir: Path) -> str:
    """The command that continues an interrupted run, with its real run id and store."""
    run_file = (Path(resume) if resume and Path(resume).is_dir() else output_dir) / RUN_FILE
    target = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else resume
    if not target:
        return "it had not started a run, so there is nothing to resume"
    store = "" if tracking_uri == default_uri else f" mlflow.tracking_uri={tracking_uri}"
    return f"continue with: python -m fmnist_exp.run resume={target}{store}"
