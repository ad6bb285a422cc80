"""The small commands (evaluate, predict, report, bench) as Hydra apps over conf/, as the runner is.

Each command has a primary config, `conf/<command>.yaml`, typed by a dataclass schema registered in
Hydra's ConfigStore. So every command speaks the runner's grammar: dotted `key=value` overrides
checked against the schema, `--help` in the runner's shape, `--cfg job`, and config files
(`--config-dir`, `--config-name`). Unlike the runner, a command writes nothing of Hydra's (no
outputs/<date>/ folder, no .hydra/, no log file: `conf/hydra/command.yaml`), runs once (no `-m`), and
answers bad input with one line and exit 2.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from fmnist_exp.config import overrides
from fmnist_exp.config.schema import CONF_DIR, DataConfig, MlflowConfig, default_tracking_uri
from fmnist_exp.errors import ConfigError, UserError, fail

Result = TypeVar("Result")


@dataclasses.dataclass
class EvaluationDataConfig:
    """The runner's `data.*` keys that choose the test set (config.DataConfig's, with its defaults)."""

    # None: the model's run's own data.dir, else $FMNIST_DATA_DIR, else the Keras cache, then Debian's.
    dir: str | None = None
    download: bool = DataConfig.download
    mirror: str = DataConfig.mirror
    verify: bool = DataConfig.verify
    # None: the model's run's own test subset (all 10,000 images for a model that came from no run).
    max_test_samples: int | None = None


@dataclasses.dataclass
class StoreConfig:
    """The runner's `mlflow.tracking_uri`: $MLFLOW_TRACKING_URI, else the project's store."""

    tracking_uri: str = dataclasses.field(default_factory=default_tracking_uri)
    # The runner's mlflow.orphan_after_minutes: when a RUNNING run of another machine counts as lost.
    orphan_after_minutes: float = MlflowConfig.orphan_after_minutes


@dataclasses.dataclass
class ExperimentStoreConfig(StoreConfig):
    """`mlflow.tracking_uri` and the runner's `mlflow.experiment_name`."""

    experiment_name: str = MlflowConfig.experiment_name


def run(name: str, schema: type, task: Callable[[Any], Result], argv: list[str] | None = None) -> Result | None:
    """Compose conf/<name>.yaml with `argv` (sys.argv[1:] when None), type it, and call `task` with it.

    Hydra only reads the command line here; the task runs after Hydra has returned, as a plain
    function. Returns what `task` returns, or None when Hydra answered by itself (--cfg). A UserError
    from the task, or bad input Hydra finds, ends the process with one line and exit 2; anything
    else is a bug and keeps its traceback.
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    if overrides.is_multirun(arguments):
        fail(f"-m: {name} runs once; sweeps are for python -m fmnist_exp.run -m")
    configs = compose(name, schema, arguments)
    if not configs:
        return None
    try:
        return task(configs[0])
    except UserError as error:
        fail(str(error))


def compose(name: str, schema: type, arguments: list[str]) -> list:
    """[the typed config] through Hydra's own command line (--help, --cfg, overrides, config files)."""
    import hydra
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    ConfigStore.instance().store(name=f"{name}_schema", node=schema, replace=True)
    configs = []

    # An empty whitelist: no config of these commands may name code to run (Hydra 1.4's check).
    @hydra.main(config_path=str(CONF_DIR), config_name=name, execution_whitelist=[])
    def app(composed) -> None:
        try:
            configs.append(typed(composed, schema))
        except UserError as error:  # answered here: raised further, Hydra would add a line of its own
            fail(str(error))

    saved_argv, saved_full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [sys.argv[0] if sys.argv else name, *arguments]
    # Hydra prints a bad override as several lines and exits 1; with this set it raises the error
    # instead, and it is answered below in one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except (HydraException, OmegaConfBaseException) as error:
        fail(one_line(error, schema))
    finally:
        sys.argv = saved_argv
        if saved_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_full_error
    return configs


def typed(composed, schema: type):
    """The schema's object from the composed config: every key known, every required key given."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    known = keys_of(schema)
    for key in _leaf_keys(OmegaConf.to_container(composed, resolve=False)):
        if key not in known and not any(key.startswith(f"{name}.") for name in known):  # images=[...]
            raise ConfigError(f"{key}: not a known key; the keys: {', '.join(known)}")
    for key in OmegaConf.missing_keys(composed):
        example = next((f.metadata.get("example") for f in dataclasses.fields(schema) if f.name == key), None)
        raise ConfigError(f"{key}: required" + (f", e.g. {example}" if example else "") + " (see --help)")
    try:
        return OmegaConf.to_object(composed)
    except OmegaConfBaseException as error:  # an interpolation that cannot be resolved
        raise ConfigError(one_line(error, schema)) from error


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix.rstrip(".")]
    return [key for name, value in node.items() for key in _leaf_keys(value, f"{prefix}{name}.")]


def keys_of(schema: type, prefix: str = "") -> list[str]:
    """The dotted keys a schema accepts: ['model_uri', ..., 'data.dir', ...]."""
    keys = []
    for item in dataclasses.fields(schema):
        if dataclasses.is_dataclass(item.default_factory):
            keys += keys_of(item.default_factory, f"{prefix}{item.name}.")
        else:
            keys.append(prefix + item.name)
    return keys


def one_line(error: Exception, schema: type) -> str:
    """Hydra's or OmegaConf's message for bad input, as one line that names the key."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    key = getattr(cause, "full_key", None)
    message = str(getattr(cause, "msg", None) or cause).split("\nConfig search path")[0]
    # A key the schema lacks; Hydra words it as a missing config group where conf/ has a folder of
    # that name (experiment=, model=), so both are recognised.
    unknown = re.match(r"Could not override '([^']+)'", message)
    if unknown or (isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key):
        # unknown is None only where key is set.
        return f"{key or unknown.group(1)}: not a known key; the keys: {', '.join(keys_of(schema))}"  # type: ignore[union-attr]
    return (f"{key}: " if key else "") + joined(line for line in message.splitlines() if not line.startswith("    "))


def joined(lines) -> str:
    """Lines of a message as one: "a:" + "b" + "c" -> "a: b; c"."""
    text = ""
    for line in filter(None, (line.strip() for line in lines)):
        text += (" " if text.endswith(":") else "; " if text else "") + line
    return text
