"""A sweep's comparison on its parent run: the jobs' rows, the table and figures, the note that names
the winner, its margin against seed noise and the command that re-runs it."""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fmnist_exp.analysis import racing, ranking
from fmnist_exp.config import overrides as grammar
from fmnist_exp.config.identity import GROUP_PARAMS, PATH_KEYS, trains_something
from fmnist_exp.tracking.store import Store

log = logging.getLogger(__name__)

REUSED_TAG_PREFIX = "reused."  # on the parent: one tag per earlier run a re-run sweep reused


def sweep_params(config: DictConfig) -> dict[str, str]:
    """The parent run's params: each key of the command (swept ones with their value set or range,
    fixed ones with their value), the search space of a sweeper, the sweeper, launcher and replicates."""
    params: dict[str, str] = {}
    for override in config.hydra.overrides.task:
        key = grammar.key(override)
        if trains_something(override) and key not in PATH_KEYS:
            params[key] = override.partition("=")[2]
    for key, value in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items():
        params[str(key)] = str(value)
    choices = OmegaConf.select(config, "hydra.runtime.choices") or {}
    params["sweeper"] = str(choices.get("hydra/sweeper", "basic"))
    params["launcher"] = str(choices.get("hydra/launcher", "basic"))
    if "n_trials" in (OmegaConf.select(config, "hydra.sweeper") or {}):
        params["n_trials"] = str(config.hydra.sweeper.n_trials)
    params["replicates"] = str(config.get("replicates", 1))
    if params["replicates"] == "auto":  # the race's rules (its internal seed_offset left out)
        params.update({f"race.{key}": str(config.race[key]) for key in ("min_seeds", "max_seeds", "seeds_per_round")})
    return params


def swept(parent_params: dict[str, str]) -> dict[str, str]:
    """The keys the sweep varies, with their value set or search space, from the parent's params."""
    return {
        key: value
        for key, value in parent_params.items()
        if key not in ("sweeper", "launcher", "n_trials", "replicates")
        and not key.startswith("race.")
        and grammar.is_sweep(f"{key}={value}")
    }


def swept_keys(parent_params: dict[str, str]) -> list[str]:
    """The param each job logs for a key the sweep varies (`model=a,b` is logged as model.name)."""
    return [GROUP_PARAMS.get(key) or key for key in swept(parent_params)]


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
    the configs' mean +- sd over seeds with the within-noise verdicts, the figures (each config's mean
    objective by epoch in its seed band, each swept param against the objective, the jobs as bars, Optuna's
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
    raced = parent.params.get("replicates") == "auto"
    if not raced:  # a sweep folder given again (hydra.sweep.dir) may hold an earlier race's standing
        (folder / racing.RACE_FILE).unlink(missing_ok=True)
    store.log_artifacts(parent_run_id, folder, "summary")
    # The UI's table view reads a dotted column name as a path into nested objects (empty cells).
    columns = {name.replace(".", "/"): values for name, values in ranking.table_columns(rows, keys).items()}
    store.log_table(parent_run_id, columns, "summary/jobs.json")
    counts = ranking.job_counts(rows)
    metrics: dict[str, float] = {f"jobs_{kind}": count for kind, count in counts.items()}
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
    race = racing.load(folder / racing.RACE_FILE) if raced else None  # the grid sweeper's standing
    note = sweep_note(parent.params, rows, configs, counts, race.lines() if race else [])
    store.log_metrics(parent_run_id, metrics)
    store.set_tags(parent_run_id, {**tags, "mlflow.note.content": note})
    return note


def sweep_note(
    parent_params: dict[str, str], rows: list[dict], configs: list, counts: dict[str, int], race: Sequence[str] = ()
) -> str:
    """What the sweep's parent says in words: what was swept, the winner and its margin, how a race
    (`race`: its lines) decided each config, and the command that re-runs the winner."""
    from fmnist_exp.analysis import seed_noise as compare

    varied = [f"{key} in {value}" for key, value in swept(parent_params).items()]
    given = parent_params.get("replicates", "1") or "1"
    if given == "auto":
        seeds = f", raced on {parent_params.get('race.min_seeds')} to {parent_params.get('race.max_seeds')} seeds per config"
    else:
        seeds = f", {given} seeds per config" if int(given) > 1 else ""
    lines = [
        f"Swept: {'; '.join(varied) or 'nothing (one config)'}{seeds}"
        + f". {len(rows)} runs: {counts['finished']} finished, {counts['pruned']} pruned, {counts['failed']} failed.",
        *compare.winner_lines(configs),
        *race,
    ]
    if configs:  # a raced winner is re-run on as many seeds as it ran
        replicates = configs[0].n if given == "auto" else int(given)
        lines.append(f"Re-run the winner: {rerun_command(configs[0].overrides, replicates)}")
    return "\n".join(lines)


def rerun_command(overrides: str, replicates: int) -> str:
    """The command that trains the winning config again (a search preset left out: it only searches)."""
    kept = [
        item
        for item in overrides.split()
        if grammar.key(item) not in ("hparams_search", "replicates") and not grammar.key(item).startswith("race.")
    ]
    if replicates > 1:
        return "python -m fmnist_exp.run -m " + " ".join([*kept, f"replicates={replicates}"])
    return "python -m fmnist_exp.run " + " ".join(kept)
