"""Checks on the command line before Hydra starts, and what a refused or stopped job leaves behind.

Hydra answers some mistakes with a traceback or a multi-line message (an output folder it cannot
create, a knob the chosen model does not have); these are caught here first, with one line.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from fmnist_exp.config import CONF_DIR, MODEL_FIELDS, default_tracking_uri
from fmnist_exp.errors import UserError

KNOB_OVERRIDE = re.compile(r"^model\.([A-Za-z_][A-Za-z0-9_]*)=")
# What Hydra and the prepare stage write into a job's folder before anything is trained.
UNUSED_OUTPUT = {".hydra", "run.log", "config.yaml", "overrides.yaml", ".lock", ".write-test"}


def check_arguments(arguments: list[str]) -> None:
    from fmnist_exp import backend

    backend.refuse_backend_sweep(arguments)  # a process keeps one Keras backend
    check_callbacks(arguments)
    check_output_folders(arguments)
    check_model_knobs(arguments)


def check_callbacks(arguments: list[str]) -> None:
    """A config cannot run code: hydra.callbacks holds the project's own callback only.

    This refuses it on the command line in one line; from a YAML file, Hydra's execution whitelist
    (set in run.main) refuses any other target.
    """
    for argument in arguments:
        key = argument.split("=", 1)[0].lstrip("+~")
        if key == "hydra.callbacks" or key.startswith("hydra.callbacks."):
            raise UserError(f"{key}: hydra.callbacks cannot be changed; it holds the runner's own sweep callback")


def check_output_folders(arguments: list[str]) -> None:
    """Refuse an output folder that cannot be created, before Hydra tries and fails with a traceback."""
    for argument in arguments:
        key, _, value = argument.partition("=")
        if key.lstrip("+") not in ("hydra.run.dir", "hydra.sweep.dir") or not value:
            continue
        folder = Path(value.split("${", 1)[0]).expanduser().absolute()  # the part before any interpolation
        existing = next(path for path in (folder, *folder.parents) if path.exists())
        if not existing.is_dir():
            raise UserError(f"{key}: cannot create {value}: {existing} is a file, not a folder")
        if not existing.is_dir() or not _writable(existing):
            raise UserError(f"{key}: cannot create {value}: {existing} is not writable")


def _writable(folder: Path) -> bool:
    import os

    return os.access(folder, os.W_OK | os.X_OK)


def _choices(arguments: list[str], key: str) -> list[str | None]:
    """The options a `group=a,b` override names (a sweep's several), or [None] for the default."""
    for argument in arguments:
        name, _, value = argument.partition("=")
        if name == key and value and not value.startswith(("choice(", "glob(", "range(")):
            return [option.strip() for option in value.split(",")]
    return [None]


def check_model_knobs(arguments: list[str]) -> None:
    """`model.<knob>=...` for a knob the chosen model does not declare: one line listing its knobs."""
    knobs = [match.group(1) for argument in arguments if (match := KNOB_OVERRIDE.match(argument))]
    knobs = [knob for knob in knobs if knob not in MODEL_FIELDS]
    if not knobs:
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    for model in _choices(arguments, "model"):
        for preset in _choices(arguments, "experiment"):
            overrides = [f"model={model}"] if model else []
            overrides += [f"experiment={preset}"] if preset else []
            try:
                with initialize_config_dir(config_dir=str(CONF_DIR)):
                    composed = compose(config_name="config", overrides=overrides)
            except HydraException:
                return  # a bad group option: Hydra's own check names it
            declared = sorted(set(composed.model) - set(MODEL_FIELDS))
            for knob in knobs:
                if knob not in declared:
                    raise UserError(
                        f"model.{knob}: the model {composed.model.name} has no knob {knob!r}; "
                        f"its knobs: {', '.join(declared) or 'none'}"
                    )


def discard_unused(output_dir: Path) -> None:
    """Remove a job's output folder that holds only what was written before training began."""
    if not output_dir.is_dir() or any(entry.name not in UNUSED_OUTPUT for entry in output_dir.iterdir()):
        return
    shutil.rmtree(output_dir, ignore_errors=True)
    parent = output_dir.parent
    if parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()  # the empty date folder Hydra made for it


def resume_hint(config, output_dir: Path) -> str:
    """The command that continues an interrupted run, with its real run id and store."""
    import json

    run_file = (Path(config.resume) if config.resume and Path(config.resume).is_dir() else output_dir) / "run.json"
    target = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else config.resume
    if not target:
        return "it had not started a run, so there is nothing to resume"
    store = (
        ""
        if config.mlflow.tracking_uri == default_tracking_uri()
        else f" mlflow.tracking_uri={config.mlflow.tracking_uri}"
    )
    return f"continue with: python -m fmnist_exp.run resume={target}{store}"
