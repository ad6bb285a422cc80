"""A sweep's job: its combination validated once, trained `replicates` times as child runs of the
sweep's parent (a config that already FINISHED is reused), and handed back to the sweeper as a
JobResult. The parent run and its comparison are sweep.py's (the Hydra callback)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fmnist_exp.analysis import racing, ranking
from fmnist_exp.config.identity import config_hash
from fmnist_exp.config.schema import ExperimentConfig
from fmnist_exp.errors import RunStopped, UserError
from fmnist_exp.sweeps.comparison import REUSED_TAG_PREFIX
from fmnist_exp.sweeps.sweep import child_name, replicate_name
from fmnist_exp.tracking.store import Store

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    """What a job hands back to the sweeper: the objective, whether it was pruned, its run."""

    objective: float  # with replicates: the mean over the config's seeds
    run_id: str | None = None  # the first replicate's run
    pruned: bool = False
    curve: list[float] = field(default_factory=list)  # the objective's figure per epoch (mean over seeds)
    run_ids: list[str] = field(default_factory=list)  # every replicate's run
    failure: str = ""  # why a job that left no run failed, in one line (SweepCallback.on_job_end records it)
    refused: bool = False  # that failure was bad input: its config, data or store was refused
    seeds: list[int] = field(default_factory=list)  # the seed of each replicate it trained (or reused)
    objectives: list[float] = field(default_factory=list)  # each replicate's objective (NaN: failed), for a race

    def __float__(self) -> float:
        return self.objective


def refused_job(error: UserError) -> dict:
    """What a job refused as bad input hands back to the sweeper (on_job_end records it on the parent)."""
    log.error(f"job failed: {error}")
    return asdict(JobResult(objective=math.nan, failure=str(error), refused=True))


def threads_per_job(launcher: DictConfig) -> int | None:
    """Threads for one job of a parallel launcher, so that jobs do not oversubscribe the cores.

    joblib: the cores shared among n_jobs; Ray: the CPUs each task reserves (1 unless
    hydra.launcher.ray.remote.num_cpus says otherwise). None (the backend's default) otherwise.
    """
    target = str(launcher.get("_target_", ""))
    cores = os.cpu_count() or 1
    if "JoblibLauncher" in target:
        jobs = int(launcher.get("n_jobs") or 1)
        return max(1, cores // (cores if jobs < 0 else jobs))
    if "RayLauncher" in target:
        return int(OmegaConf.select(launcher, "ray.remote.num_cpus", default=None) or 1)
    return None


def pruner_for(config: ExperimentConfig, store: Store, parent_run_id: str | None):
    """The fit stage's extra callback that prunes this job against its sweep's others, or None."""
    if not (config.pruning.enabled and parent_run_id):
        return None

    def make(run, objective_metric: str) -> dict:
        from fmnist_exp.sweeps.pruning import SweepPruner

        return {"pruner": SweepPruner(store, run, parent_run_id, objective_metric, config.pruning)}

    return make


def job(composed: DictConfig, output_dir: Path, runtime: Any) -> dict | int:
    """One job of a sweep, from Hydra's composed config and its runtime (HydraConfig): validated once
    here; a bad combination, or a store its config names that cannot be used, fails this job only
    (the parent lists it as refused, with its reason) and the sweep goes on."""
    from fmnist_exp.model.validation import to_experiment_config
    from fmnist_exp.training import dry_run, run_folder

    try:
        config = to_experiment_config(composed)
        if config.dry_run:
            run_folder.discard_unused(output_dir)
            return dry_run.describe(config)
        Store(config.mlflow.tracking_uri).check()  # a store set in a config file, not on the command line
    except UserError as error:
        return refused_job(error)  # on_job_end records it on the parent, with its reason
    config.trainer.threads = config.trainer.threads or threads_per_job(runtime.launcher)
    return run_job(config, output_dir, list(runtime.overrides.task), runtime.sweep.dir)


def replicate_indices(config: ExperimentConfig) -> range:
    """The replicates a job trains (replicate i has the seed seed+i): 0 to replicates-1; in a race
    (replicates=auto) race.min_seeds from 0 in the first round, and in a later round (the grid sweeper
    sets race.seed_offset) the next race.seeds_per_round from the offset, up to race.max_seeds."""
    if isinstance(config.replicates, int):
        return range(config.replicates)
    race = config.race
    return racing.round_indices(race.seed_offset, race.min_seeds, race.seeds_per_round, race.max_seeds)


def run_job(config: ExperimentConfig, output_dir: Path, overrides: list[str], sweep_dir: str) -> dict:
    """One job of a sweep: its config trained on its replicates' seeds (seed, seed+1, ...;
    replicate_indices), each a child run (a config that already FINISHED is reused, not retrained).

    Returns a JobResult as a dict (what every launcher can carry back): the objective is the mean
    over the replicates that produced one, NaN if none did, so that the sweep (and a sweeper) go on.
    A replicate that is pruned stops the config's other replicates: they would be pruned too.
    """
    store = Store(config.mlflow.tracking_uri, config.mlflow.orphan_after_minutes)
    parent = store.first(config.mlflow.experiment_name, f"tags.sweep_dir = '{sweep_dir}'")
    name = config.mlflow.run_name or child_name(overrides, parent.tags if parent else {})
    replicated = config.replicates != 1  # several seeds (auto: a race's), each named by its seed
    results, seeds = [], []
    for index in replicate_indices(config):
        replica = dataclasses.replace(config, seed=config.seed + index, mlflow=dataclasses.replace(config.mlflow))
        folder = output_dir
        if replicated:
            replica.mlflow.run_name = replicate_name(name, replica.seed)
            folder = output_dir / f"seed-{replica.seed}"
        else:
            replica.mlflow.run_name = name
        result = run_replicate(replica, folder, overrides, store, parent, index if replicated else None)
        results.append(result)
        seeds.append(replica.seed)
        if result.pruned:
            break
    combined = mean_result(results)
    combined.seeds, combined.objectives = seeds, [result.objective for result in results]
    return asdict(combined)


def mean_result(results: list[JobResult]) -> JobResult:
    """The replicates of one config as one result: mean objective and mean curve over those with one."""
    scored = [result for result in results if not math.isnan(result.objective)]
    if not scored:
        return JobResult(
            objective=math.nan,
            run_id=results[0].run_id,
            run_ids=[r.run_id for r in results if r.run_id],
            failure=next((r.failure for r in results if r.failure), ""),
            refused=any(r.refused for r in results),
        )
    length = min(len(result.curve) for result in scored)
    return JobResult(
        objective=statistics.fmean(result.objective for result in scored),
        run_id=scored[0].run_id,
        pruned=any(result.pruned for result in results),
        curve=[statistics.fmean(result.curve[epoch] for result in scored) for epoch in range(length)],
        run_ids=[result.run_id for result in results if result.run_id],
    )


def run_replicate(
    config: ExperimentConfig, output_dir: Path, overrides: list[str], store: Store, parent, replicate: int | None
) -> JobResult:
    """Train one seed of a job as a child run, or reuse its FINISHED run; NaN for a failed one."""
    from fmnist_exp.training import experiment

    name = config.mlflow.experiment_name
    digest = config_hash(config)
    if not config.force:
        done = store.first(name, f"tags.config_hash = '{digest}' and attributes.status = 'FINISHED'")
        if done is not None:
            if parent is not None and done.tags.get("mlflow.parentRunId") != parent.run_id:
                store.set_tags(parent.run_id, {REUSED_TAG_PREFIX + done.run_id: digest})
            log.info(f"skipped: this config already FINISHED as run {done.run_id} (force=true reruns it)")
            return JobResult(
                objective=float(done.metrics.get("objective", math.nan)),
                run_id=done.run_id,
                pruned=done.tags.get("pruned") == "true",
                curve=ranking.objective_curve(store.histories(done.run_id)),
            )
    parent_run_id = parent.run_id if parent else None
    extra_tags = {"replicate": str(replicate)} if replicate is not None else {}
    try:
        outcome = experiment.run(
            config,
            output_dir,
            overrides,
            parent_run_id=parent_run_id,
            store=store,
            extra_callbacks=pruner_for(config, store, parent_run_id),
            extra_tags=extra_tags,
        )
    except (UserError, RunStopped) as error:
        log.error(f"job failed: {error}")
        return JobResult(objective=math.nan, failure=str(error), refused=isinstance(error, UserError))
    log.info(experiment.result_line(outcome))
    return JobResult(
        objective=outcome.objective,
        run_id=outcome.run_id,
        pruned=outcome.pruned_at is not None,
        curve=ranking.objective_curve(outcome.history),
    )
