"""Sweeps in MLflow: one parent run per sweep, its jobs as children, a summary when it ends.

Hydra calls `SweepCallback` around a multirun (conf/config.yaml registers it under
hydra.callbacks). Jobs find their parent by the sweep folder, a tag on the parent, which works the
same for the in-process, joblib and Ray launchers. Re-running a sweep command reuses its parent and
skips every config that already has a FINISHED run (matched by `config_hash`), unless force=true.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fmnist_exp.config import ExperimentConfig
from fmnist_exp.errors import RunStopped, UserError

SKIPPED_FILE = "skipped.json"
# Keys that do not change what is trained, so they stay out of the config hash.
UNHASHED = ("mlflow", "trainer.verbose", "resume", "register", "force")


def config_hash(config: ExperimentConfig) -> str:
    container = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    for dotted in UNHASHED:
        *parents, leaf = dotted.split(".")
        node = container
        for key in parents:
            node = node[key]
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(container, sort_keys=True).encode()).hexdigest()[:16]


def sweep_key(experiment_name: str, sweep_overrides: list[str], base_config: DictConfig) -> str:
    """Identifies a sweep: its command's overrides and the config they apply to.

    Re-running the same command finds the same parent; the same command after a preset or a default
    changed does not.
    """
    base = OmegaConf.to_container(base_config, resolve=False)
    base.pop("hydra", None)
    text = json.dumps([experiment_name, sorted(sweep_overrides), base], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _first_run(tracking_uri: str, experiment_name: str, filter_string: str):
    """The first run of the experiment matching the filter, or None (also when there is no experiment)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = mlflow.search_runs(
        [experiment.experiment_id], filter_string=filter_string, output_format="list", max_results=1
    )
    return runs[0] if runs else None


def find_parent(tracking_uri: str, experiment_name: str, sweep_dir: str) -> str | None:
    parent = _first_run(tracking_uri, experiment_name, f"tags.sweep_dir = '{sweep_dir}'")
    return parent.info.run_id if parent else None


def finished_run(tracking_uri: str, experiment_name: str, digest: str):
    """A FINISHED run of the experiment with this config hash, or None."""
    return _first_run(
        tracking_uri, experiment_name, f"tags.config_hash = '{digest}' and attributes.status = 'FINISHED'"
    )


def objective_of(run) -> float:
    """What a sweep ranks by: validation accuracy, or training accuracy where data.validation=none."""
    metrics = run.data.metrics
    return float(metrics.get("val_accuracy", metrics.get("accuracy", math.nan)))


class SweepCallback(Callback):
    """Creates (or reuses) the sweep's parent run and writes its summary at the end."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.tracking_uri = ""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        from fmnist_exp import tracking

        self.tracking_uri = config.mlflow.tracking_uri
        tracking.check_reachable(self.tracking_uri)
        experiment_id = tracking.ensure_experiment(config.mlflow.experiment_name, self.tracking_uri)
        sweep_overrides = list(config.hydra.overrides.task)
        key = sweep_key(config.mlflow.experiment_name, sweep_overrides, config)
        client = mlflow.MlflowClient()
        previous = (
            []
            if config.get("force")
            else client.search_runs([experiment_id], filter_string=f"tags.sweep_key = '{key}'", max_results=1)
        )
        tags = {
            "sweep_dir": str(config.hydra.sweep.dir),
            "sweep_key": key,
            "sweep_overrides": " ".join(sweep_overrides),
            "sweep_overrides_json": json.dumps(sweep_overrides),
        }
        if previous:
            self.parent_run_id = previous[0].info.run_id
            client.update_run(self.parent_run_id, status="RUNNING")
            tags["sweep_resumed"] = "true"
        else:
            swept = [
                item for item in sweep_overrides if "," in item or "(" in item or item.startswith("hparams_search")
            ]
            name = "sweep: " + " ".join(swept or sweep_overrides)
            self.parent_run_id = client.create_run(experiment_id, run_name=name[:250], tags=tags).info.run_id
        for name, value in {**tracking.git_tags(), **tags}.items():
            client.set_tag(self.parent_run_id, name, value)
        # A sweep that dies (an exception in Hydra, Ctrl-C) must not leave its parent RUNNING.
        atexit.register(self._end, "FAILED")
        print(f"Sweep parent run: {self.parent_run_id}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is None:
            return
        summary = summarize(self.parent_run_id, self.tracking_uri, Path(config.hydra.sweep.dir))
        if summary:
            best = summary[0]
            print(
                f"Best of {len(summary)}: {best['run_name']} objective={best['objective']:.4f} run_id={best['run_id']}"
            )
        self._end("FINISHED")

    def _end(self, status: str) -> None:
        import mlflow

        if self.parent_run_id is None:
            return
        client = mlflow.MlflowClient(self.tracking_uri)
        if client.get_run(self.parent_run_id).info.status == "RUNNING":
            client.set_terminated(self.parent_run_id, status)


def sweep_rows(parent_run_id: str, tracking_uri: str, sweep_dir: Path | None = None) -> list[dict]:
    """Every child of the parent (and runs this sweep skipped as already finished), best first."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10000
    )
    runs = {run.info.run_id: run for run in children}
    for marker in sorted(sweep_dir.glob(f"*/{SKIPPED_FILE}")) if sweep_dir else []:
        run_id = json.loads(marker.read_text())["run_id"]
        runs.setdefault(run_id, client.get_run(run_id))
    rows = [row_of(run) for run in runs.values()]
    return best_first(rows)


def best_first(rows: list[dict]) -> list[dict]:
    """Highest objective first; runs without one (failed, NaN) last."""
    return sorted(rows, key=lambda row: -row["objective"] if not math.isnan(row["objective"]) else math.inf)


def row_of(run) -> dict:
    metrics, params = run.data.metrics, run.data.params
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "overrides": run.data.tags.get("overrides", ""),
        "objective": objective_of(run),
        "val_accuracy": float(metrics.get("val_accuracy", math.nan)),
        "test_accuracy": float(metrics.get("test_accuracy", math.nan)),
        "epochs": params.get("epochs", ""),
        "train_seconds": float(metrics.get("train_seconds", math.nan)),
    }


COLUMNS = ("run_name", "status", "objective", "val_accuracy", "test_accuracy", "epochs", "train_seconds", "run_id")


def markdown_table(rows: list[dict]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[column]) for column in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, "overrides"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def summarize(parent_run_id: str, tracking_uri: str, sweep_dir: Path) -> list[dict]:
    """Log the sweep's table (CSV, Markdown), a comparison plot and the best child to the parent run."""
    import mlflow

    from fmnist_exp import plots

    rows = sweep_rows(parent_run_id, tracking_uri, sweep_dir)
    folder = sweep_dir / "summary"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep_summary.md").write_text(markdown_table(rows))
    (folder / "sweep_summary.csv").write_text(csv_table(rows))
    plots.sweep_comparison(rows, folder / "sweep_comparison.png")
    client = mlflow.MlflowClient(tracking_uri)
    for name in ("sweep_summary.md", "sweep_summary.csv", "sweep_comparison.png"):
        client.log_artifact(parent_run_id, str(folder / name), "summary")
    finished = [row for row in rows if row["status"] == "FINISHED"]
    client.set_tag(parent_run_id, "sweep_jobs", str(len(rows)))
    if finished:
        best = finished[0]
        client.set_tag(parent_run_id, "best_run_id", best["run_id"])
        client.set_tag(parent_run_id, "best_overrides", best["overrides"])
        client.log_metric(parent_run_id, "best_objective", best["objective"])
        if not math.isnan(best["val_accuracy"]):  # none without a validation set: no pretend figure
            client.log_metric(parent_run_id, "best_val_accuracy", best["val_accuracy"])
        client.log_metric(parent_run_id, "best_test_accuracy", best["test_accuracy"])
    return rows


def child_name(overrides: list[str], parent_run_id: str | None, tracking_uri: str) -> str:
    """Name a job by what varies: overrides whose key the sweep gave several values (or a sweeper chose)."""
    import mlflow

    swept: dict[str, str] = {}
    if parent_run_id:
        tags = mlflow.MlflowClient(tracking_uri).get_run(parent_run_id).data.tags
        swept = dict(item.split("=", 1) for item in json.loads(tags.get("sweep_overrides_json", "[]")) if "=" in item)

    def varies(override: str) -> bool:
        value = swept.get(override.split("=", 1)[0].lstrip("+~"))
        return value is None or "," in value or value.startswith(("range(", "choice(", "interval(", "glob("))

    varying = [override for override in overrides if varies(override)]
    return ",".join(varying)[:250] or "default"


def threads_per_job(launcher: DictConfig) -> int | None:
    """TensorFlow threads for one job of a parallel launcher, so that jobs do not oversubscribe the cores.

    joblib: the cores shared among n_jobs; Ray: the CPUs each task reserves (1 unless
    hydra.launcher.ray.remote.num_cpus says otherwise). None (TensorFlow's default) otherwise.
    """
    import os

    target = str(launcher.get("_target_", ""))
    cores = os.cpu_count() or 1
    if "JoblibLauncher" in target:
        jobs = int(launcher.get("n_jobs") or 1)
        return max(1, cores // (cores if jobs < 0 else jobs))
    if "RayLauncher" in target:
        return int(OmegaConf.select(launcher, "ray.remote.num_cpus", default=None) or 1)
    return None


def run_job(config: ExperimentConfig, output_dir: Path, overrides: list[str], sweep_dir: str) -> float:
    """One job of a sweep: skip a config that already FINISHED, else train it as a child run.

    Returns the objective; NaN for a job that failed, so that the sweep (and a sweeper) go on.
    """
    from fmnist_exp import experiment

    digest = config_hash(config)
    uri, name = config.mlflow.tracking_uri, config.mlflow.experiment_name
    if not config.force:
        done = finished_run(uri, name, digest)
        if done is not None:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / SKIPPED_FILE).write_text(json.dumps({"run_id": done.info.run_id, "config_hash": digest}))
            print(f"skipped: this config already FINISHED as run {done.info.run_id} (force=true reruns it)")
            return objective_of(done)
    parent = find_parent(uri, name, sweep_dir)
    config.mlflow.run_name = config.mlflow.run_name or child_name(overrides, parent, uri)
    try:
        outcome = experiment.run(config, output_dir, overrides, parent_run_id=parent)
    except (UserError, RunStopped) as error:
        print(f"fmnist_exp: job failed: {error}")
        return math.nan
    print(f"test_accuracy={outcome.test_accuracy:.4f} run_id={outcome.run_id}")
    return outcome.objective
