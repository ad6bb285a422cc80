"""Checks on the command line before Hydra starts, each refusing a mistake with one line.

Hydra answers some mistakes with a traceback or a multi-line message (an output folder it cannot
create, a knob the chosen model does not have); these are caught here first, with one line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fmnist_exp.config import overrides as grammar
from fmnist_exp.config.schema import CONF_DIR, MODEL_FIELDS, default_tracking_uri
from fmnist_exp.errors import UserError
from fmnist_exp.training import run_folder


def check_arguments(arguments: list[str]) -> None:
    from fmnist_exp.model import backend

    check_modes(arguments)
    backend.refuse_backend_sweep(arguments)  # a process keeps one Keras backend
    check_callbacks(arguments)
    check_duplicate_keys(arguments)
    check_output_folders(arguments)
    check_model_knobs(arguments)
    check_sweep_store(arguments)


# Hydra's mutually exclusive modes; given together, Hydra raises a bare ValueError (a traceback).
MODES = {"-m": "--multirun", "--multirun": "--multirun", "-c": "--cfg", "--cfg": "--cfg", "-i": "--info",
         "--info": "--info", "-sc": "--shell-completion", "--shell-completion": "--shell-completion"}  # fmt: skip


def check_modes(arguments: list[str]) -> None:
    """One of --multirun, --cfg, --info, --shell-completion at a time; and no resume= in a sweep."""
    given = [argument.split("=", 1)[0] if argument.startswith("--") else argument for argument in arguments]
    modes = sorted({MODES[argument] for argument in given if argument in MODES})
    if len(modes) > 1:
        raise UserError(f"{' and '.join(modes)} cannot be given together: use one at a time")
    if modes == ["--multirun"] and grammar.values_of(arguments, "resume"):
        raise UserError(
            "resume: continues one run and cannot be swept; drop -m (a search continues by running its "
            "own command again)"
        )


def check_sweep_store(arguments: list[str]) -> None:
    """A sweep's store, checked before Hydra starts (`-m`): Hydra turns an exception in the sweep's
    callback into a warning and goes on, and every job would then fail the same way.

    The store is the command line's mlflow.tracking_uri, else MLFLOW_TRACKING_URI or the default; a
    single run checks its store itself, before Keras starts.
    """
    if not grammar.is_multirun(arguments):
        return
    uris = [default_tracking_uri()]
    for value in grammar.values_of(arguments, "mlflow.tracking_uri"):
        if value:
            uris = [uri.strip().strip("'\"") for uri in value.split(",")]
    from fmnist_exp.tracking.store import Store

    for uri in uris:
        Store(uri).check()


def duplicate_keys(value: str) -> list[str]:
    """Keys given twice in one {...} mapping of an override's value; Hydra's parser keeps the last."""
    stack: list[set[str] | None] = []  # a set of keys per open mapping; None for a list or ${...}
    duplicates, token, quote, expect_key, previous = [], "", "", False, ""
    for char in value:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "{":
            stack.append(None if previous == "$" else set())
            expect_key, token = stack[-1] is not None, ""
        elif char == "[":
            stack.append(None)
            expect_key = False
        elif char in "]}" and stack:
            stack.pop()
            expect_key = False
        elif char == "," and stack and stack[-1] is not None:
            expect_key, token = True, ""
        elif char == ":" and expect_key and stack and stack[-1] is not None:
            key = token.strip()
            if key in stack[-1]:
                duplicates.append(key)
            stack[-1].add(key)
            expect_key = False
        elif expect_key:
            token += char
        previous = char
    return duplicates


def check_duplicate_keys(arguments: list[str]) -> None:
    """`model.layers=[{type: conv2d, filters: 8, filters: 16}]` names filters twice: refused, not the last kept.

    (A YAML file with a duplicated key is refused by OmegaConf's loader itself.)
    """
    for argument in arguments:
        key, separator, value = argument.partition("=")
        if separator and "{" in value:
            for duplicate in duplicate_keys(value):
                raise UserError(
                    f"{key.lstrip('+~')}: the key {duplicate!r} is given twice in one mapping; give it once"
                )


def hydra_error_line(error: BaseException) -> str:
    """One line for what Hydra (or its YAML loader) refuses: a bad override, a missing config, a
    target outside the execution whitelist, a config file that is not valid YAML."""
    import yaml

    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        return f"{error.problem_mark.name}, line {error.problem_mark.line + 1}: {error.problem}"
    text = str(error)
    whitelisted = re.search(r"Target '([^']+)' is not in the Hydra execution whitelist", text)
    if whitelisted:
        key = re.search(r"full_key: (\S+)", text)
        return (
            f"{key.group(1) if key else 'config'}: {whitelisted.group(1)} may not be called from a config; "
            "a config cannot run code (the runner's own sweep callback is the only target allowed)"
        )
    cause: Any = error.__cause__  # OmegaConf's error, read through the attributes it has
    if getattr(cause, "full_key", None) and getattr(cause, "msg", None):
        return f"{cause.full_key}: {' '.join(str(cause.msg).split())} ({' '.join(text.split())})"
    return " ".join(text.split())


def check_callbacks(arguments: list[str]) -> None:
    """A config cannot run code: hydra.callbacks holds the project's own callback only.

    This refuses it on the command line in one line; from a YAML file, Hydra's execution whitelist
    (set in run.main) refuses any other target.
    """
    for key in map(grammar.key, grammar.overrides_of(arguments)):
        if key == "hydra.callbacks" or key.startswith("hydra.callbacks."):
            raise UserError(f"{key}: hydra.callbacks cannot be changed; it holds the runner's own sweep callback")


def check_output_folders(arguments: list[str]) -> None:
    """Refuse an output folder that cannot be created, before Hydra tries and fails with a traceback."""
    for argument in grammar.overrides_of(arguments):
        key, value = grammar.key(argument), grammar.value(argument)
        if key not in OUTPUT_KEYS or not value:
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
    """The options a `group=a,b` override names (a sweep's several), or [None] for the default.

    A group swept by a function (choice(...), glob(...)) is left to Hydra: [None]."""
    for argument in grammar.overrides_of(arguments):
        value = grammar.value(argument)
        if grammar.key(argument) != key or not value:
            continue
        if grammar.swept_by_function(value):
            return [None]
        return [option.strip() for option in value.split(",")]
    return [None]


def check_model_knobs(arguments: list[str]) -> None:
    """`model.<knob>=...` for a knob the chosen model does not declare: one line listing its knobs."""
    # A plain `model.<name>=` sets a knob; `+model.<name>=` adds a key on purpose and is Hydra's to judge.
    keys = [grammar.key(argument) for argument in grammar.overrides_of(arguments) if argument.startswith("model.")]
    knobs = [key.split(".", 1)[1] for key in keys if key.count(".") == 1]
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


OUTPUT_KEYS = ("hydra.run.dir", "hydra.sweep.dir")


def existing_output_ancestors(arguments: list[str]) -> set[Path]:
    """Before Hydra makes the output folder: where the folders it will make begin (run_folder.discard_unused)."""
    cwd = Path.cwd()
    roots = [cwd / "outputs", cwd / "multirun"]
    for argument in grammar.overrides_of(arguments):
        if grammar.key(argument) in OUTPUT_KEYS and grammar.value(argument):
            roots.append(Path(grammar.value(argument).split("${", 1)[0]).expanduser().absolute())
    return run_folder.existing_ancestors(roots)


def resume_in_place(arguments: list[str]) -> list[str]:
    """The overrides that make `resume=<run>` write into the run's own folder: its log appended to
    the run's run.log, no .hydra/ (the run's own record of how it was composed stays as it was).

    None when the command gives hydra.run.dir itself, sweeps, or names a run that cannot be found
    here without creating a store (the job then refuses it with its own message).
    """
    keys = grammar.by_key(arguments)
    target = keys.get("resume")
    if not target or "hydra.run.dir" in keys or grammar.is_multirun(arguments):
        return []
    from fmnist_exp.tracking.location import sqlite_path
    from fmnist_exp.tracking.store import Store

    uri = keys.get("mlflow.tracking_uri") or default_tracking_uri()
    database = sqlite_path(uri)
    store = None if database is not None and not database.is_file() else Store(uri)  # never create a store here
    try:
        folder = run_folder.locate(target, store)
    except Exception:  # noqa: BLE001 (not a run here, or no store: the job refuses it with its own message)
        return []
    return [f"hydra.run.dir={folder.absolute()}", "hydra.output_subdir=null"]


def resume_hint(config, output_dir: Path) -> str:
    """The command that continues an interrupted run, with its real run id and store."""
    uri = config.mlflow.tracking_uri
    return run_folder.resume_hint(config.resume, uri, default_tracking_uri(), output_dir)
