"""Sweeps in MLflow: one parent run per sweep, its jobs as children, a summary when it ends.

Hydra calls `SweepCallback` around a multirun (conf/config.yaml registers it under
hydra.callbacks). Jobs find their parent by the sweep folder, a tag on the parent, which works the
same for the in-process, joblib and Ray launchers. Re-running a sweep command reuses its parent and
skips every config that already has a FINISHED run (matched by `config_hash`), unless force=true;
a reused run is recorded on the parent, so the summary and `report` list the same jobs.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fmnist_exp.analysis import ranking
from fmnist_exp.config import overrides as grammar
from fmnist_exp.config.checks import SWEEP_WIDE_KEYS, check_sweep_wide
from fmnist_exp.config.identity import GROUP_PARAMS, sweep_key, trains_something
from fmnist_exp.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, ConfigError, UserError, fail
from fmnist_exp.runtime.interrupts import signals_as_interrupt
from fmnist_exp.sweeps import gpu_pack, ray_cluster
from fmnist_exp.tracking.links import ui_link
from fmnist_exp.tracking.liveness import owner_tags
from fmnist_exp.tracking.store import Store

if TYPE_CHECKING:
    from fmnist_exp.sweeps.progress import Progress

log = logging.getLogger(__name__)


def varied_keys(config: DictConfig) -> list[str]:
    """The keys a sweep varies: command-line overrides Hydra sweeps, and a sweeper's search space."""
    keys = [grammar.key(item) for item in config.hydra.overrides.task if grammar.is_sweep(item)]
    return keys + [str(key) for key in (OmegaConf.select(config, "hydra.sweeper.params") or {})]


def sweeper_name(config: DictConfig) -> str:
    """The sweeper chosen (hydra/sweeper): grid (the default), study (hparams_search=optuna), basic..."""
    return str((OmegaConf.select(config, "hydra.runtime.choices") or {}).get("hydra/sweeper", "basic"))


def sweep_wide_value(config: DictConfig, key: str) -> Any:
    """A sweep-wide key's value; one that cannot be resolved (`${oc.env:UNSET}`) is a ConfigError."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.select(config, key)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{key}: {' '.join(str(error).split())}") from error


class SweepCallback(Callback):
    """Creates (or reuses) the sweep's parent run and writes its summary at the end."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.store: Store | None = None
        self.progress: Progress | None = None  # the count of jobs ended, for the line after each
        self.signals = contextlib.ExitStack()

    def __getstate__(self) -> dict:
        """A parallel launcher sends the callback to its workers; the signal handlers stay here."""
        return {**self.__dict__, "signals": contextlib.ExitStack()}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Imported here, not with the module: Hydra makes this callback for every run, a single one too.
        from fmnist_exp.sweeps import plan, progress, shared_study
        from fmnist_exp.sweeps.progress import Progress

        # Hydra turns an exception raised here into a warning and runs every job anyway: bad input is
        # answered here, in one line, before the parent run is made or any orphan is closed.
        try:
            wide = {key: sweep_wide_value(config, key) for key in SWEEP_WIDE_KEYS}
            check_sweep_wide(wide, varied_keys(config), sweeper_name(config))
            for launcher in (gpu_pack, ray_cluster):  # each launcher module checks its own keys
                launcher.check_launcher(config.hydra.launcher)
            if "heartbeat_interval" in config.hydra.sweeper:  # the study sweeper's (hparams_search=optuna)
                shared_study.check_heartbeat(config.hydra.sweeper.heartbeat_interval, config.hydra.sweeper.grace_period)
            if config.get("plan"):  # before the sweeper makes its folder and the parent run its store
                print(plan.describe(config, kwargs.get("config_name") or "config"))
                sys.exit(0)
            self.start(config)
        except UserError as error:
            fail(str(error))
        in_race = config.get("replicates") == "auto" and not config.get("dry_run")
        self.progress = Progress(plan.job_count(config), list(config.hydra.overrides.task), race_round=int(in_race))
        progress.RUNNING[str(config.hydra.sweep.dir)] = self.progress  # a race's rounds add to its total
        # SIGTERM and SIGHUP between jobs (or while a parallel launcher waits) stop the sweep as Ctrl-C
        # does, so that on_multirun_end ends the parent KILLED; a job's own run handles them within.
        self.signals.enter_context(signals_as_interrupt())

    def start(self, config: DictConfig) -> None:
        self.store = Store(config.mlflow.tracking_uri, config.mlflow.get("orphan_after_minutes", 15))
        self.store.check()
        experiment_id = self.store.experiment_id(config.mlflow.experiment_name)
        self.store.reap_orphans()
        overrides = list(config.hydra.overrides.task)
        key = sweep_key(config)
        # A parent still RUNNING once the orphans are reaped belongs to a live sweep of the same command
        # (another machine searching the same study): this one gets a parent of its own, since the jobs
        # find their parent by its sweep_dir tag, which reusing the parent would overwrite.
        previous = (
            []
            if config.get("force")
            else self.store.search(
                config.mlflow.experiment_name, f"tags.sweep_key = '{key}' and attributes.status != 'RUNNING'", 1
            )
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
            swept = [item for item in overrides if grammar.is_sweep(item) or item.startswith("hparams_search")]
            name = "sweep: " + " ".join(swept or overrides)
            self.parent_run_id = self.store.create_run(experiment_id, name)  # type: ignore[arg-type]  # created, never None
        from fmnist_exp.tracking.params import git_tags

        self.store.set_tags(self.parent_run_id, {**git_tags(), **tags})
        from fmnist_exp.sweeps.comparison import sweep_params

        self.store.log_params(self.parent_run_id, sweep_params(config))
        # A sweep that dies (an exception in Hydra, Ctrl-C) must not leave its parent RUNNING.
        atexit.register(self._end, "FAILED")
        log.info(f"Sweep parent run: {self.parent_run_id}")

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """A job that failed without a run of its own (refused, or a bug before its run started) is
        recorded as a FAILED child run with its one-line reason, so that the parent counts every job.

        Called in the process that ran the job (a worker, under a parallel launcher); Hydra calls it
        for a single run too, where there is no sweep to record anything on (nor a store to make).
        Only a job that completed or raised is recorded; one that exited (a refusal's SystemExit) or
        was interrupted has said what it had to say."""
        if self.parent_run_id is None or job_return.status == JobStatus.UNKNOWN:
            return
        if self.progress is not None and not config.get("dry_run"):
            given = {"sweep_overrides_json": json.dumps(self.progress.given)}  # what a job's name leaves out
            label = child_name(list(config.hydra.overrides.task), given)
            self.progress.job_ended(Path(config.hydra.sweep.dir), label, job_return)
        if job_return.status == JobStatus.COMPLETED:
            result = job_return.return_value
            if not isinstance(result, dict) or not result.get("failure") or result.get("run_ids"):
                return
            reason, refused = str(result["failure"]), bool(result.get("refused"))
        else:
            try:
                job_return.return_value  # noqa: B018 (raises the job's exception)
                return
            except KeyboardInterrupt:
                return  # the sweep stops; a run the job had started ended KILLED
            except BaseException as error:  # noqa: BLE001 (a bug in the job: its traceback is in the job's log)
                reason, refused = f"{type(error).__name__}: {error}".splitlines()[0][:1000], False
        try:
            record_failed_job(config, reason, refused)
        except UserError as error:  # the job's store is what failed: nothing can be written to it
            log.warning(f"the failed job could not be recorded on the sweep's parent run: {error}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        in_flight = sys.exc_info()[1]  # Hydra calls this in a finally: what stopped the sweep, if anything
        if self.parent_run_id is None or self.store is None:  # both are set in on_multirun_start
            self.signals.close()
            return
        status = ending_status(in_flight)
        try:
            from fmnist_exp.sweeps.comparison import summarize, sweep_rows

            note = summarize(self.store, self.parent_run_id, Path(config.hydra.sweep.dir))
            rows = sweep_rows(self.store, self.parent_run_id)
            status, ending, code = sweep_ending(status, in_flight, rows, self.parent_run_id)
            failures = failure_lines(rows)
            if ending or failures:
                note = "\n".join([*([ending] if ending else []), note, *failures])
                self.store.set_tags(self.parent_run_id, {"mlflow.note.content": note})
            parent = self.store.get_run(self.parent_run_id)
            link = ui_link(self.store.uri, parent.experiment_id, self.parent_run_id)
            log.info(f"{note}\nThe comparison (table, figures): {link}")
        except BaseException:
            status = "FAILED" if status == "FINISHED" else status
            raise
        finally:
            self._end(status)
            atexit.unregister(self._end)  # ended: a process that runs more sweeps keeps no stale hook
            self.signals.close()
        if code is not None:
            fail(ending.splitlines()[0], code)

    def _end(self, status: str) -> None:
        if self.parent_run_id is None or self.store is None:
            return
        if self.store.get_run(self.parent_run_id).status == "RUNNING":
            self.store.set_terminated(self.parent_run_id, status)


def ending_status(in_flight: BaseException | None) -> str:
    """The parent's status from what stopped the sweep: an interrupt, a crash, or nothing."""
    if isinstance(in_flight, KeyboardInterrupt):
        return "KILLED"
    return "FINISHED" if in_flight is None else "FAILED"


def sweep_ending(
    status: str, in_flight: BaseException | None, rows: list[dict], parent_run_id: str
) -> tuple[str, str, int | None]:
    """How the sweep ended: the parent's status, the line its note starts with ("" for a sweep
    that ended well), and the exit code to end the process with (None: as it is ending already).

    A crash keeps its traceback (None); an interrupt exits 130 with one line, as one run does; a
    sweep whose jobs all failed ends FAILED and exits 2 when every one was refused as bad input, else 1.
    """
    if status == "KILLED":
        signal_name = str(in_flight) or "Ctrl-C"
        line = (
            f"interrupted ({signal_name}) before the sweep ended, with {len(rows)} runs recorded; its parent run "
            f"{parent_run_id} ended KILLED; run the same command again to continue it (configs that "
            "FINISHED are skipped)"
        )
        return status, line, EXIT_INTERRUPTED
    if isinstance(in_flight, SystemExit):  # a refusal or an exit code already on its way out
        return status, f"The sweep stopped before it ended (exit {in_flight.code}).", None
    if status == "FAILED":
        return status, f"The sweep crashed before it ended ({type(in_flight).__name__}: {in_flight}).", None
    counts = ranking.job_counts(rows)
    if counts["finished"] + counts["pruned"]:
        return status, "", None
    if not rows:
        return "FAILED", "no job of the sweep left a run; each job's log in the sweep's folder says why", 1
    refused = sum(1 for row in rows if row["refused"])
    if refused == len(rows):
        line = f"every job of the sweep was refused as bad input ({refused} of {refused}), e.g. "
        return "FAILED", line + rows[0]["failure_reason"], EXIT_USER_ERROR
    example = next((row["failure_reason"] for row in rows if row["failure_reason"]), rows[0]["status"])
    return "FAILED", f"every job of the sweep failed ({len(rows)} runs), e.g. {example}", 1


def failure_lines(rows: list[dict]) -> list[str]:
    """One line per run of the sweep that did not finish (FAILED, KILLED), with its reason if it has one."""
    return [
        f"{row['status'].capitalize()}: {row['run_name']}"
        + (f": {row['failure_reason']}" if row["failure_reason"] else "")
        for row in rows
        if row["status"] != "FINISHED"
    ]


def record_failed_job(config: DictConfig, reason: str, refused: bool) -> None:
    """A FAILED child run of the job's sweep for a job that left no run of its own, tagged with why."""
    store = Store(config.mlflow.tracking_uri)
    parent = store.first(config.mlflow.experiment_name, f"tags.sweep_dir = '{config.hydra.sweep.dir}'")
    if parent is None:
        return
    folder = Path(str(config.hydra.runtime.output_dir)).resolve()
    for child in store.children(parent.run_id):
        made_here = child.tags.get("output_dir")
        if made_here and Path(made_here).is_relative_to(folder):
            return  # the job's own run records its failure
    overrides = list(config.hydra.overrides.task)
    run_id = store.create_run(parent.experiment_id, config.mlflow.get("run_name") or child_name(overrides, parent.tags))
    tags = {
        "mlflow.parentRunId": parent.run_id,
        "failure_reason": reason,
        "mlflow.note.content": reason,
        "overrides": " ".join(overrides),
        "output_dir": str(folder),
        **({"refused": "true"} if refused else {}),
    }
    store.set_tags(run_id, tags)
    chosen = [
        item for item in overrides if trains_something(item) and grammar.key(item) not in ("data.dir", "data.mirror")
    ]
    store.log_params(
        run_id, {GROUP_PARAMS.get(grammar.key(item)) or grammar.key(item): grammar.value(item) for item in chosen}
    )
    store.set_terminated(run_id, "FAILED")


def child_name(overrides: list[str], parent_tags: dict[str, str]) -> str:
    """Name a job by what varies: overrides whose key the sweep gave several values (or a sweeper chose)."""
    given = {
        item.split("=", 1)[0].lstrip("+~"): item
        for item in json.loads(parent_tags.get("sweep_overrides_json", "[]"))
        if "=" in item
    }

    def varies(override: str) -> bool:
        fixed = given.get(override.split("=", 1)[0].lstrip("+~"))
        return fixed is None or grammar.is_sweep(fixed)

    varying = [override for override in overrides if varies(override) and trains_something(override)]
    return ",".join(varying)[:250] or "default"


SEED_PART = re.compile(r"(^|,)seed=[^,]*(?=,|$)")


def replicate_name(name: str, seed: int) -> str:
    """A replicate's run name: the job's, its own seed in place of any seed the job's name gives
    (a seed sweep's job `seed=1` trains seeds 1 and 2, named `seed=1` and `seed=2`)."""
    rest = SEED_PART.sub("", name).strip(",")
    return f"{rest},seed={seed}" if rest and rest != "default" else f"seed={seed}"
