"""Hydra entry point: `python -m fmnist_exp.run [overrides]`, `-m` for sweeps."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from hydra.utils import execution_whitelist
from omegaconf import DictConfig

from fmnist_exp.commands import preflight
from fmnist_exp.config import overrides as grammar
from fmnist_exp.config.checks import check_seed_offset
from fmnist_exp.config.schema import CONF_DIR, register_schemas
from fmnist_exp.errors import EXIT_INTERRUPTED, EXIT_RUN_STOPPED, RunStopped, UserError, fail
from fmnist_exp.model.validation import to_experiment_config
from fmnist_exp.runtime import noise
from fmnist_exp.sweeps import gpu_pack, grid, ray_cluster
from fmnist_exp.training import run_folder

log = logging.getLogger("fmnist_exp.run")
CALLBACKS = ["fmnist_exp.sweeps.sweep.SweepCallback"]
# The folders that existed before this command started, where a refused job's cleanup stops: taken
# by main() before Hydra makes any, read by job() (Hydra calls it with the composed config alone).
_EXISTING_BEFORE: set[Path] = set()


@hydra.main(config_path=str(CONF_DIR), config_name="config")
def job(composed: DictConfig) -> float | int | dict:
    """One job of the command: a sweep's (the sweeps package runs it) or the command's single run."""
    runtime = HydraConfig.get()
    output_dir = Path(runtime.runtime.output_dir)
    if runtime.mode == RunMode.MULTIRUN:
        noise.quiet()  # again: under the joblib launcher this job runs in a worker process of its own
        from fmnist_exp.sweeps import jobs

        return jobs.job(composed, output_dir, runtime)
    return single_run(composed, output_dir, list(runtime.overrides.task))


def single_run(composed: DictConfig, output_dir: Path, overrides: list[str]) -> float | int:
    """Validate once, then train (or resume, or describe) one run; a user error is one line and exit 2."""
    config = None
    try:
        config = to_experiment_config(composed)
        refuse_plan_without_a_sweep(config.plan)
        check_seed_offset(config.race.seed_offset)
        if config.dry_run:
            run_folder.discard_unused(output_dir, _EXISTING_BEFORE)
            from fmnist_exp.training import dry_run

            return dry_run.describe(config)
        refuse_replicates_without_a_sweep(config.replicates)
        noise.quiet()
        from fmnist_exp.tracking.links import ui_command
        from fmnist_exp.tracking.store import Store
        from fmnist_exp.training import experiment

        store = Store(config.mlflow.tracking_uri, config.mlflow.orphan_after_minutes)
        if config.resume:
            refuse_overrides_with_resume(overrides)
            outcome = experiment.resume(config.resume, store)
        else:
            store.check()
            outcome = experiment.run(config, output_dir, overrides, store=store)
    except UserError as error:
        run_folder.discard_unused(output_dir, _EXISTING_BEFORE)
        fail(str(error))
    except RunStopped as error:
        fail(str(error), EXIT_RUN_STOPPED)
    except KeyboardInterrupt as error:
        hint = preflight.resume_hint(config, output_dir) if config else "nothing had started"
        fail(f"interrupted ({error or 'Ctrl-C'}); {hint}", EXIT_INTERRUPTED)
    log.info(experiment.result_line(outcome))
    log.info(f"Compare runs: {ui_command(store.uri, store.experiment_id(config.mlflow.experiment_name, create=False))}")
    return outcome.objective


def refuse_replicates_without_a_sweep(replicates: int | str) -> None:
    if replicates == "auto":
        raise UserError(
            "replicates: auto races the configs of a sweep, adding seeds only where a config is still "
            "undecided; add -m (python -m fmnist_exp.run -m key=a,b replicates=auto)"
        )
    if isinstance(replicates, int) and replicates > 1:
        raise UserError(
            f"replicates: {replicates} trains the config {replicates} times as a sweep; "
            "add -m (python -m fmnist_exp.run -m ... replicates=N) to get one parent run that compares them"
        )


def refuse_plan_without_a_sweep(plan: bool) -> None:
    if plan:
        raise UserError(
            "plan: true plans a sweep (its jobs, time and the difference its seeds resolve); add -m "
            "(python -m fmnist_exp.run -m ... plan=true)"
        )


# What resume= takes beside itself: the store to find the run in. Everything else is the run's own.
RESUME_KEYS = ("resume", "mlflow.tracking_uri")


def refuse_overrides_with_resume(overrides: list[str]) -> None:
    """A resumed run keeps its config.yaml; an override would be silently ignored, so it is refused."""
    ignored = [item for item in overrides if grammar.key(item) not in RESUME_KEYS]
    if ignored:
        raise UserError(
            f"resume: {' '.join(ignored)} would be ignored: a resumed run keeps its own config "
            "(only mlflow.tracking_uri may be given with resume=)"
        )


def main() -> None:
    noise.quiet()  # before anything imports TensorFlow
    register_schemas()
    try:
        preflight.check_arguments(sys.argv[1:])
    except UserError as error:
        fail(str(error))
    _EXISTING_BEFORE.update(preflight.existing_output_ancestors(sys.argv[1:]))
    ray_cluster.register()  # hydra/launcher=ray_cluster names it
    gpu_pack.register()  # hydra/launcher=gpu_pack names it
    grid.register()  # hydra/sweeper=grid (hparams_search=grid, the default) names it
    sys.argv += preflight.resume_in_place(sys.argv[1:])
    # Hydra raises what it would otherwise print (a traceback for a refused target, several lines
    # for a bad override), so that a config error is one line and exit 2 like every other one.
    user_full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        # The only code a config may name is this project's own Hydra callback: any other _target_
        # under hydra.callbacks (from a file or the command line) is refused by Hydra.
        with execution_whitelist(CALLBACKS):
            job()
    except (HydraException, yaml.YAMLError) as error:
        if user_full_error:
            raise
        fail(preflight.hydra_error_line(error))


if __name__ == "__main__":
    main()
