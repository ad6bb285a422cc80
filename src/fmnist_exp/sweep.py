"""Sweeps in MLflow: one parent run per sweep, its jobs as children, a summary when it ends.

Hydra calls `SweepCallback` around a multirun (conf/config.yaml registers it under
hydra.callbacks). Jobs find their parent by the sweep folder, a tag on the parent, which works the
same for the in-process, joblib and Ray launchers. Re-running a sweep command reuses its parent and
skips every config that already has a FINISHED run (matched by `config_hash`), unless force=true;
a reused run is recorded on the parent, so the summary and `report` list the same jobs.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fmnist_exp import summary
from fmnist_exp.config import ExperimentConfig, config_hash, trains_something
from fmnist_exp.errors import RunStopped, UserError
from fmnist_exp.store import Store, owner_tags

log = logging.getLogger(__name__)

REUSED_TAG_PREFIX = "reused."  # on the parent: one tag per earlier run a re-run sweep reused
SWEPT_FUNCTIONS = ("range(", "choice(", "interval(", "glob(", "tag(")


@dataclass
class JobResult:
    """What a job hands back to the sweeper: the objective, whether it was pruned, its run."""

    objective: float
    run_id: str | None = None
    pruned: bool = False
    curve: list[float] = field(default_factory=list)  # the objective's figure per epoch

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


class SweepCallback(Callback):
    """Creates (or reuses) the sweep's parent run and writes its summary at the end."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.store: Store | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
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
            self.parent_run_id = previous[0].info.run_id
            self.store.client.update_run(self.parent_run_id, status="RUNNING")
            tags["sweep_resumed"] = "true"
        else:
            swept = [item for item in overrides if is_swept(item) or item.startswith("hparams_search")]
            name = "sweep: " + " ".join(swept or overrides)
            self.parent_run_id = self.store.client.create_run(experiment_id, run_name=name[:250]).info.run_id
        from fmnist_exp.store import git_tags

        self.store.set_tags(self.parent_run_id, {**git_tags(), **tags})
        # A sweep that dies (an exception in Hydra, Ctrl-C) must not leave its parent RUNNING.
        atexit.register(self._end, "FAILED")
        log.info(f"Sweep parent run: {self.parent_run_id}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is None:
            return
        rows = summarize(self.store, self.parent_run_id, Path(config.hydra.sweep.dir))
        finished = [row for row in rows if row["status"] == "FINISHED"]
        if finished:
            best = finished[0]
            log.info(
                f"Best of {len(rows)}: {best['run_name']} objective={best['objective']:.4f} run_id={best['run_id']}"
            )
        self._end("FINISHED")

    def _end(self, status: str) -> None:
        if self.parent_run_id is None or self.store is None:
            return
        if self.store.client.get_run(self.parent_run_id).info.status == "RUNNING":
            self.store.set_terminated(self.parent_run_id, status)


def sweep_rows(store: Store, parent_run_id: str) -> list[dict]:
    """Every child of the parent and every earlier run it reused, best first."""
    parent = store.get_run(parent_run_id)
    runs = {run.info.run_id: run for run in store.children(parent_run_id)}
    for tag in parent.data.tags:
        if tag.startswith(REUSED_TAG_PREFIX):
            run_id = tag[len(REUSED_TAG_PREFIX) :]
            runs.setdefault(run_id, store.client.get_run(run_id))
    return summary.best_first([summary.row_of(run) for run in runs.values()])


def summarize(store: Store, parent_run_id: str, sweep_dir: Path) -> list[dict]:
    """Log the sweep's table (CSV, Markdown), a comparison plot and the best job to the parent run."""
    from fmnist_exp import plots

    rows = sweep_rows(store, parent_run_id)
    folder = sweep_dir / "summary"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep_summary.md").write_text(summary.markdown_table(rows))
    (folder / "sweep_summary.csv").write_text(summary.csv_table(rows))
    plots.sweep_comparison(rows, folder / "sweep_comparison.png")
    for name in ("sweep_summary.md", "sweep_summary.csv", "sweep_comparison.png"):
        store.client.log_artifact(parent_run_id, str(folder / name), "summary")
    finished = [row for row in rows if row["status"] == "FINISHED" and not math.isnan(row["objective"])]
    tags: dict[str, Any] = {"sweep_jobs": len(rows), "sweep_pruned": sum(1 for row in rows if row["pruned_at"] != "")}
    if finished:
        best = finished[0]
        tags.update(best_run_id=best["run_id"], best_overrides=best["overrides"])
        store.client.log_metric(parent_run_id, "best_objective", best["objective"])
        if not math.isnan(best["val_accuracy"]):  # none without a validation set: no pretend figure
            store.client.log_metric(parent_run_id, "best_val_accuracy", best["val_accuracy"])
        store.client.log_metric(parent_run_id, "best_test_accuracy", best["test_accuracy"])
    store.set_tags(parent_run_id, tags)
    return rows


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


def run_job(config: ExperimentConfig, output_dir: Path, overrides: list[str], sweep_dir: str) -> dict:
    """One job of a sweep: reuse a config that already FINISHED, else train it as a child run.

    Returns a JobResult as a dict (what every launcher can carry back); objective NaN for a job that
    failed, so that the sweep (and a sweeper) go on.
    """
    from fmnist_exp import experiment

    store = Store(config.mlflow.tracking_uri, config.mlflow.orphan_after_minutes)
    name = config.mlflow.experiment_name
    parent = store.first(name, f"tags.sweep_dir = '{sweep_dir}'")
    digest = config_hash(config)
    if not config.force:
        done = store.first(name, f"tags.config_hash = '{digest}' and attributes.status = 'FINISHED'")
        if done is not None:
            if parent is not None and done.data.tags.get("mlflow.parentRunId") != parent.info.run_id:
                store.set_tags(parent.info.run_id, {REUSED_TAG_PREFIX + done.info.run_id: digest})
            log.info(f"skipped: this config already FINISHED as run {done.info.run_id} (force=true reruns it)")
            history = store.histories(done.info.run_id)
            return asdict(
                JobResult(
                    objective=float(done.data.metrics.get("objective", math.nan)),
                    run_id=done.info.run_id,
                    pruned=done.data.tags.get("pruned") == "true",
                    curve=summary.objective_curve(history),
                )
            )
    parent_run_id = parent.info.run_id if parent else None
    config.mlflow.run_name = config.mlflow.run_name or child_name(overrides, parent.data.tags if parent else {})
    try:
        outcome = experiment.run(config, output_dir, overrides, parent_run_id=parent_run_id, store=store)
    except (UserError, RunStopped) as error:
        log.error(f"job failed: {error}")
        return asdict(JobResult(objective=math.nan))
    log.info(experiment.result_line(outcome))
    return asdict(
        JobResult(
            objective=outcome.objective,
            run_id=outcome.run_id,
            pruned=outcome.pruned_at is not None,
            curve=summary.objective_curve(outcome.history),
        )
    )
