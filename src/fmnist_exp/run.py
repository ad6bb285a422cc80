"""Hydra entry point: `python -m fmnist_exp.run [overrides]`, `-m` for sweeps."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fmnist_exp import backend
from fmnist_exp.config import register_schemas, to_experiment_config
from fmnist_exp.errors import EXIT_INTERRUPTED, EXIT_RUN_STOPPED, EXIT_USER_ERROR, RunStopped, UserError, fail


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def job(composed: DictConfig) -> float:
    """One job: validate, train, log; returns the objective (validation accuracy) for sweepers."""
    runtime = HydraConfig.get()
    sweeping = runtime.mode == RunMode.MULTIRUN
    try:
        config = to_experiment_config(composed)
    except UserError as error:
        if sweeping:  # one bad combination must not stop the sweep
            print(f"fmnist_exp: job failed: {error}", file=sys.stderr)
            return math.nan
        stop(error)
    from fmnist_exp import experiment  # after validation: bad input answers without importing MLflow

    output_dir = Path(runtime.runtime.output_dir)
    if sweeping:
        from fmnist_exp import sweep

        config.trainer.threads = config.trainer.threads or sweep.threads_per_job(runtime.launcher)
        return sweep.run_job(config, output_dir, list(runtime.overrides.task), runtime.sweep.dir)
    try:
        if config.resume:
            outcome = experiment.resume(config.resume, config.mlflow.tracking_uri)
        else:
            outcome = experiment.run(config, output_dir, runtime.overrides.task)
    except (UserError, RunStopped, KeyboardInterrupt) as error:
        stop(error)
    print(f"test_accuracy={outcome.test_accuracy:.4f} run_id={outcome.run_id}")
    print(f"Compare runs: mlflow ui --host 127.0.0.1 --backend-store-uri {config.mlflow.tracking_uri}")
    return outcome.objective


def stop(error: BaseException) -> None:
    """A user error or a stopped run: one clear line and a non-zero exit, no traceback.

    Anything else is a bug and is not caught here: Hydra prints its traceback and exits 1.
    """
    if isinstance(error, KeyboardInterrupt):
        fail(f"interrupted ({error}); continue with resume=<run id or output folder>", EXIT_INTERRUPTED)
    fail(str(error), EXIT_USER_ERROR if isinstance(error, UserError) else EXIT_RUN_STOPPED)


def check_output_folders(arguments: list[str]) -> None:
    """Refuse an output folder that cannot be created, before Hydra tries and fails with a traceback."""
    for argument in arguments:
        key, _, value = argument.partition("=")
        if key.lstrip("+") not in ("hydra.run.dir", "hydra.sweep.dir") or not value:
            continue
        folder = Path(value.split("${", 1)[0]).expanduser().absolute()  # the part before any interpolation
        existing = next(path for path in (folder, *folder.parents) if path.exists())
        if not existing.is_dir():
            stop(UserError(f"{key}: cannot create {value}: {existing} is a file, not a folder"))
        if not os.access(existing, os.W_OK | os.X_OK):
            stop(UserError(f"{key}: cannot create {value}: {existing} is not writable"))


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter.
    check_output_folders(sys.argv[1:])
    try:
        backend.refuse_backend_sweep(sys.argv[1:])  # a process keeps one Keras backend
    except UserError as error:
        stop(error)
    register_schemas()
    job()


if __name__ == "__main__":
    main()
