"""A sweep's progress: after each job, one line through `logging` (so the job's log holds it too):

    job 5/12 done, 7 to go, ~14 min left, best so far model.dropout=0.2 0.8935

SweepCallback.on_job_end calls `Progress.job_ended`, in the process that ran the job: the main
process under the basic launcher, a worker under joblib, gpu_pack or Ray. So that the count is right
in any of them, each job's end is appended to `progress.jsonl` in the sweep's folder under a file lock
and the line is read from that file: the jobs of this launch that have ended, the time since the sweep
started per job ended for the time left, and the best objective so far with the job's swept values (a
job's objective is the mean over its seeds). A job that failed counts as done, with no objective. The
total is the plan's count (sweeps/plan.job_count): the grid, or a search's n_trials (a stored study
that already holds trials runs fewer, and its last line then shows jobs still to go); without one the
line says `job 5 done`. A race (replicates=auto) adds rounds as it goes: its line counts the jobs
launched so far and names the round (`job 4/5 done, 1 to go in round 2 of the race`), since the
rounds still to come are not known. On a Ray cluster whose nodes do not share the sweep's folder,
each node counts the jobs it ran.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn

from fmnist_exp.runtime import locks
from fmnist_exp.sweeps.plan import duration

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.jsonl"  # in the sweep's folder: one line per job ended, of every launch


@dataclass
class Progress:
    """What a sweep's jobs need to say how far it is; made at the sweep's start, carried to workers."""

    total: int | None
    given: list[str] = field(default_factory=list)  # the sweep's overrides: a job's label is what varies
    started: float = field(default_factory=time.time)
    launch: str = field(default_factory=lambda: uuid.uuid4().hex)  # this launch's lines in the file
    race_round: int = 0  # a race's round now running (replicates=auto); 0: no race

    def add_round(self, jobs: int, number: int) -> None:
        """A race's next round: its jobs join the total (a worker gets a copy as each round launches)."""
        self.total = (self.total or 0) + jobs
        self.race_round = number

    def job_ended(self, sweep_dir: Path, label: str, job_return: JobReturn) -> str | None:
        """Record the job's end and log the progress line (returned); None for an interrupted job."""
        try:
            result: Any = job_return.return_value
        except KeyboardInterrupt:
            return None  # the sweep stops: its ending says so
        except BaseException:  # noqa: BLE001 (a job that crashed counts as done, without an objective)
            result = None
        objective = result.get("objective") if isinstance(result, dict) else None
        if not isinstance(objective, (int, float)) or not math.isfinite(objective):
            objective = None
        now = time.time()
        entry = {"launch": self.launch, "label": label, "objective": objective, "time": now}
        try:
            ended = record(sweep_dir, entry)
        except OSError as error:  # the line is a courtesy: a folder that cannot be written stops nothing
            log.warning(f"progress not recorded in {sweep_dir / PROGRESS_FILE}: {error}")
            return None
        text = line(ended, self.total, self.started, now, self.race_round)
        log.info(text)
        return text


def record(sweep_dir: Path, entry: dict) -> list[dict]:
    """Append the entry to the sweep's progress file, under its lock; the entries of its launch."""
    with locks.exclusive(sweep_dir / PROGRESS_FILE, mode="a+") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()
        handle.seek(0)
        text = handle.read()
    entries = []
    for row in text.splitlines():
        try:
            entries.append(json.loads(row))
        except ValueError:  # a line cut short by a killed worker: not a job's end
            continue
    return [item for item in entries if isinstance(item, dict) and item.get("launch") == entry["launch"]]


def line(ended: list[dict], total: int | None, started: float, now: float, race_round: int = 0) -> str:
    """`job 5/12 done, 7 to go, ~14 min left, best so far <label> <objective>`; in a race the jobs to
    go are the round's (`7 to go in round 2 of the race`)."""
    done = len(ended)
    parts = [f"job {done}/{total} done, {max(0, total - done)} to go" if total else f"job {done} done"]
    if total and race_round:
        parts[0] += f" in round {race_round} of the race"
    if total and total > done:
        parts.append(f"~{duration((now - started) / done * (total - done))} left")
    scored = [item for item in ended if item["objective"] is not None]
    if scored:
        best = max(scored, key=lambda item: item["objective"])
        parts.append(f"best so far {best['label']} {best['objective']:.4f}")
    else:
        parts.append("no objective yet")
    return ", ".join(parts)


# Each sweep's Progress in the process that runs its sweeper, by the sweep's folder: the grid sweeper
# adds a race's rounds to it (the callback makes it in on_multirun_start, before the sweeper starts).
RUNNING: dict[str, Progress] = {}


def of_sweep(sweep_dir: str) -> Progress | None:
    return RUNNING.get(sweep_dir)
