"""Sweeps in MLflow: one parent run per sweep, its jobs as children, a summary when it ends.

Hydra calls `SweepCallback` around a multirun (conf/config.yaml registers it under
hydra.callbacks). Jobs find their parent by the sweep folder, a tag on the parent, which works the
same for the in-process, joblib and Ray launchers. Re-running a sweep command reuses its parent and
skips every config that already has a FINISHED run (matched by `config_hash`), unless force=true;
a reused run is recorded on the parent, so the summary and `report` list the same jobs.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import logging
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fmnist_exp.analysis import ranking
from fmnist_exp.config import overrides as grammar
from fmnist_exp.config.schema import (
    SWEEP_WIDE_KEYS,
    ExperimentConfig,
    check_sweep_wide,
    config_hash,
    trains_something,
)
from fmnist_exp.errors import RunStopped, UserError, fail
from fmnist_exp.tracking.store import Store, owner_tags, ui_link

log = logging.getLogger(__name__)

REUSED_TAG_PREFIX = "reused."  # on the parent: one tag per earlier run a re-run sweep reused
SWEPT_FUNCTIONS = ("range(", "choice(", "interval(", "glob(", "tag(")


@dataclass
class JobResult:
    """What a job hands back to the sweeper: the objective, whether it was pruned, its run."""

    objective: float  # with replicates: the mean over the config's seeds
    run_id: str | None = None  # the first replicate's run
    pruned: bool = False
    curve: list[float] = field(default_factory=list)  # the objective's figure per epoch (mean over seeds)
    run_ids: list[str] = field(default_factory=list)  # every replicate's run

    def __float__(self) -> float:
        return self.objective


def sweep_key(config: DictConfig) -> str:
    """Identifies a sweep: its command's overrides and the config they apply to.

    Re-running the same command finds the same parent; the same command after a preset or a default
    changed does not.
    """
    base = OmegaConf.to_container(config, resolve=False)
    base.pop("hydra", None)
    overrides = sorted(config.hydra.overrides.task)
    text = json.dumps([config.mlflow.experiment_name, overrides, base], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_swept(override: str) -> bool:
    _, _, value = override.partition("=")
    return "," in value or value.startswith(SWEPT_FUNCTIONS)


# Command-line group choices and the param a job logs for them (params.run_params).
GROUP_PARAMS = {"model": "model.name", "optimizer": "optimizer.name"}


def sweep_params(config: DictConfig) -> dict[str, str]:
    """The parent run's params: each key of the command (swept ones with their value set or range,
    fixed ones with their value), the search space of a sweeper, the sweeper, launcher and replicates."""
    params: dict[str, str] = {}
    for override in config.hydra.overrides.task:
        key = grammar.key(override)
        if trains_something(override) and key not in ("data.dir", "data.mirror"):
            params[key] = override.partition("=")[2]
    for key, value in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items():
        params[str(key)] = str(value)
    choices = OmegaConf.select(config, "hydra.runtime.choices") or {}
    params["sweeper"] = str(choices.get("hydra/sweeper", "basic"))
    params["launcher"] = str(choices.get("hydra/launcher", "basic"))
    if "n_trials" in (OmegaConf.select(config, "hydra.sweeper") or {}):
        params["n_trials"] = str(config.hydra.sweeper.n_trials)
    params["replicates"] = str(config.get("replicates", 1))
    return params


def swept(parent_params: dict[str, str]) -> dict[str, str]:
    """The keys the sweep varies, with their value set or search space, from the parent's params."""
    return {
        key: value
        for key, value in parent_params.items()
        if key not in ("sweeper", "launcher", "n_trials", "replicates") and is_swept(f"{key}={value}")
    }


def swept_keys(parent_params: dict[str, str]) -> list[str]:
    """The param each job logs for a key the sweep varies (`model=a,b` is logged as model.name)."""
    return [GROUP_PARAMS.get(key, key) for key in swept(parent_params)]


def varied_keys(config: DictConfig) -> list[str]:
    """The keys a sweep varies: command-line overrides Hydra sweeps, and a sweeper's search space."""
    keys = [grammar.key(item) for item in config.hydra.overrides.task if grammar.is_sweep(item)]
    return keys + [str(key) for key in (OmegaConf.select(config, "hydra.sweeper.params") or {})]


class SweepCallback(Callback):
    """Creates (or reuses) the sweep's parent run and writes its summary at the end."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.store: Store | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns an exception raised here into a warning and runs every job anyway: bad input is
        # answered here, in one line, before the parent run is made or any orphan is closed.
        try:
            check_sweep_wide({key: OmegaConf.select(config, key) for key in SWEEP_WIDE_KEYS}, varied_keys(config))
            self.start(config)
        except UserError as error:
            fail(str(error))

    def start(self, config: DictConfig) -> None:
        self.store = Store(config.mlflow.tracking_uri, config.mlflow.get("orphan_after_minutes", 15))
        self.store.check()
        experiment_id = self.store.experiment_id(config.mlflow.experiment_name)
        self.store.reap_orphans()
        overrides = list(config.hydra.overrides.task)
        key = sweep_key(config)
        previous = (
            []
            if config.get("force")
            else self.store.search(config.mlflow.experiment_name, f"tags.sweep_key = '{key}'", 1)
        )
        tags = {
            "sweep_dir": str(config.hydra.sweep.dir),
            "sweep_key": key,
            "sweep_overrides": " ".join(overrides),
            "sweep_overrides_json": json.dumps(overrides),
            **owner_tags(),
        }
        if previous:
            self.parent_run_id = previous[0].run_id
            self.store.reopen(self.parent_run_id)
            tags["sweep_resumed"] = "true"
        else:
            swept = [item for item in overrides if is_swept(item) or item.startswith("hparams_search")]
            name = "sweep: " + " ".join(swept or overrides)
            self.parent_run_id = self.store.create_run(experiment_id, name)
        from fmnist_exp.tracking.store import git_tags

        self.store.set_tags(self.parent_run_id, {**git_tags(), **tags})
        self.store.log_params(self.parent_run_id, sweep_params(config))
        # A sweep that dies (an exception in Hydra, Ctrl-C) must not leave its parent RUNNING.
        atexit.register(self._end, "FAILED")
        log.info(f"Sweep parent run: {self.parent_run_id}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is None:
            return
        note = summarize(self.store, self.parent_run_id, Path(config.hydra.sweep.dir))
        parent = self.store.get_run(self.parent_run_id)
        link = ui_link(self.store.uri, parent.experiment_id, self.parent_run_id)
        log.info(f"{note}\nThe comparison (table, figures): {link}")
        self._end("FINISHED")

    def _end(self, status: str) -> None:
        if self.parent_run_id is None or self.store is None:
            return
        if self.store.get_run(self.parent_run_id).status == "RUNNING":
            self.store.set_terminated(self.parent_run_id, status)


def sweep_rows(store: Store, parent_run_id: str) -> list[dict]:
    """Every child of the parent and every earlier run it reused, best first."""
    parent = store.get_run(parent_run_id)
    runs = {run.run_id: run for run in store.children(parent_run_id)}
    for tag in parent.tags:
        if tag.startswith(REUSED_TAG_PREFIX):
            run_id = tag[len(REUSED_TAG_PREFIX) :]
            runs.setdefault(run_id, store.get_run(run_id))
    keys = swept_keys(dict(parent.params))
    return ranking.best_first([ranking.row_of(run, keys) for run in runs.values()])


def summarize(store: Store, parent_run_id: str, sweep_dir: Path) -> str:
    """Make the parent run the sweep's comparison; returns its note.

    Logged on the parent: the jobs' table (CSV, Markdown, and a table the MLflow UI shows as one),
    the configs' mean +- sd over seeds with the within-noise verdicts, the figures (each job's
    objective by epoch, each swept param against the objective, the jobs as bars, and Optuna's own
    plots that the study sweeper left in the folder), the best figures and the job counts as
    metrics, and a note (MLflow's run description) naming the winner, its margin and its command.
    """
    from fmnist_exp.analysis import plots
    from fmnist_exp.analysis import seed_noise as compare

    parent = store.get_run(parent_run_id)
    keys = swept_keys(dict(parent.params))
    rows = sweep_rows(store, parent_run_id)
    curves = {row["run_id"]: store.metric_history(row["run_id"], row["objective_metric"]) for row in rows}
    configs = compare.by_config(rows)
    folder = sweep_dir / "summary"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep_summary.md").write_text(ranking.markdown_table(rows, keys))
    (folder / "sweep_summary.csv").write_text(ranking.csv_table(rows, keys))
    (folder / "configs.md").write_text(compare.noise_table(configs))
    plots.sweep_comparison(rows, folder / "sweep_comparison.png")
    plots.sweep_curves(rows, curves, folder / "objective_by_epoch.png")
    if keys:
        plots.params_against_objective(rows, keys, folder / "params_vs_objective.png")
    store.log_artifacts(parent_run_id, folder, "summary")
    # The UI's table view reads a dotted column name as a path into nested objects (empty cells).
    columns = {name.replace(".", "/"): values for name, values in ranking.table_columns(rows, keys).items()}
    store.log_table(parent_run_id, columns, "summary/jobs.json")
    counts = ranking.job_counts(rows)
    metrics = {f"jobs_{kind}": count for kind, count in counts.items()}
    tags: dict[str, Any] = {"sweep_jobs": len(rows), "sweep_pruned": counts["pruned"]}
    if configs:
        best = configs[0]
        best_row = next(row for row in rows if row["run_id"] == best.run_ids[0])
        tags.update(best_run_id=best_row["run_id"], best_overrides=best_row["overrides"], best_config=best.label)
        metrics.update(best_objective=best.mean, best_test_accuracy=best.test_mean)
        if not math.isnan(best_row["val_accuracy"]):  # none without a validation set: no pretend figure
            metrics["best_val_accuracy"] = statistics.fmean(
                row["val_accuracy"] for row in rows if row["run_id"] in best.run_ids
            )
    note = sweep_note(parent.params, rows, configs, counts)
    store.log_metrics(parent_run_id, metrics)
    store.set_tags(parent_run_id, {**tags, "mlflow.note.content": note})
    return note


def sweep_note(parent_params: dict[str, str], rows: list[dict], configs: list, counts: dict[str, int]) -> str:
    """What the sweep's parent says in words: what was swept, the winner and its margin, the command."""
    from fmnist_exp.analysis import seed_noise as compare

    varied = [f"{key} in {value}" for key, value in swept(parent_params).items()]
    replicates = int(parent_params.get("replicates", "1") or 1)
    lines = [
        f"Swept: {'; '.join(varied) or 'nothing (one config)'}"
        + (f", {replicates} seeds per config" if replicates > 1 else "")
        + f". {len(rows)} runs: {counts['finished']} finished, {counts['pruned']} pruned, {counts['failed']} failed.",
        *compare.winner_lines(configs),
    ]
    if configs:
        lines.append(f"Re-run the winner: {rerun_command(configs[0].overrides, replicates)}")
    return "\n".join(lines)


def rerun_command(overrides: str, replicates: int) -> str:
    """The command that trains the winning config again (a search preset left out: it only searches)."""
    kept = [item for item in overrides.split() if grammar.key(item) not in ("hparams_search", "replicates")]
    if replicates > 1:
        return "python -m fmnist_exp.run -m " + " ".join([*kept, f"replicates={replicates}"])
    return "python -m fmnist_exp.run " + " ".join(kept)


def child_name(overrides: list[str], parent_tags: dict[str, str]) -> str:
    """Name a job by what varies: overrides whose key the sweep gave several values (or a sweeper chose)."""
    given = {
        item.split("=", 1)[0].lstrip("+~"): item
        for item in json.loads(parent_tags.get("sweep_overrides_json", "[]"))
        if "=" in item
    }

    def varies(override: str) -> bool:
        fixed = given.get(override.split("=", 1)[0].lstrip("+~"))
        return fixed is None or is_swept(fixed)

    varying = [override for override in overrides if varies(override) and trains_something(override)]
    return ",".join(varying)[:250] or "default"


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


def run_job(config: ExperimentConfig, output_dir: Path, overrides: list[str], sweep_dir: str) -> dict:
    """One job of a sweep: its config trained `replicates` times (seeds seed, seed+1, ...), each a
    child run (a config that already FINISHED is reused, not retrained).

    Returns a JobResult as a dict (what every launcher can carry back): the objective is the mean
    over the replicates that produced one, NaN if none did, so that the sweep (and a sweeper) go on.
    A replicate that is pruned stops the config's other replicates: they would be pruned too.
    """
    store = Store(config.mlflow.tracking_uri, config.mlflow.orphan_after_minutes)
    parent = store.first(config.mlflow.experiment_name, f"tags.sweep_dir = '{sweep_dir}'")
    name = config.mlflow.run_name or child_name(overrides, parent.tags if parent else {})
    results = []
    for index in range(config.replicates):
        replica = dataclasses.replace(config, seed=config.seed + index, mlflow=dataclasses.replace(config.mlflow))
        folder = output_dir
        if config.replicates > 1:
            replica.mlflow.run_name = f"{name},seed={replica.seed}"
            folder = output_dir / f"seed-{replica.seed}"
        else:
            replica.mlflow.run_name = name
        result = run_replicate(replica, folder, overrides, store, parent, index if config.replicates > 1 else None)
        results.append(result)
        if result.pruned:
            break
    return asdict(mean_result(results))


def mean_result(results: list[JobResult]) -> JobResult:
    """The replicates of one config as one result: mean objective and mean curve over those with one."""
    scored = [result for result in results if not math.isnan(result.objective)]
    if not scored:
        return JobResult(objective=math.nan, run_id=results[0].run_id, run_ids=[r.run_id for r in results if r.run_id])
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
        return JobResult(objective=math.nan)
    log.info(experiment.result_line(outcome))
    return JobResult(
        objective=outcome.objective,
        run_id=outcome.run_id,
        pruned=outcome.pruned_at is not None,
        curve=ranking.objective_curve(outcome.history),
    )
