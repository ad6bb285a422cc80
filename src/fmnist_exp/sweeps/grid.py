"""`hydra/sweeper=grid`, the runner's default sweeper (chosen by hparams_search=grid): Hydra's basic
sweeper, the grid of the values given with -m, which with `replicates=auto` races the configs' seeds.

With replicates=N (or dry_run=true) it hands the sweep to a basic sweeper, unchanged. With
replicates=auto the basic sweeper launches the grid as the race's first round, each job training
race.min_seeds seeds (sweeps/jobs.py); then, while analysis/racing.py finds configs undecided against
the leader, each further round is a launch of the same launcher with one job per such config (the
leader included): its first-round overrides plus `race.seed_offset=<seeds so far>`, so that it
trains the next seeds as child runs of the same parent, under the same config_group. A round is a
plain `launcher.launch`, so every launcher works (the basic one, joblib, gpu_pack, Ray). After each
round the race's standing is written to the sweep folder's summary/race.json, which the parent's
note reads (comparison.summarize), and the progress line's total grows by the round's jobs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from fmnist_exp.analysis import racing
from fmnist_exp.config import overrides as grammar
from fmnist_exp.runtime import private_api
from fmnist_exp.sweeps import progress
from fmnist_exp.sweeps.sweep import child_name

log = logging.getLogger(__name__)

OFFSET_KEY = "race.seed_offset"


class GridSweeper(Sweeper):
    """The basic sweeper's grid; with replicates=auto, a race of its configs' seeds."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        super().__init__()
        self.basic = private_api.basic_sweeper(max_batch_size, params)
        self.max_batch_size = max_batch_size
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.basic.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None  # set by setup, which Hydra calls first
        if self.config.get("replicates") != "auto" or self.config.get("dry_run"):
            return self.basic.sweep(arguments)
        return self.race(arguments)

    def race(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        """The grid as the first round, then rounds of the configs still undecided, until none is."""
        config = self.config
        assert config is not None
        rules = config.race
        race = racing.Race(int(rules.min_seeds), int(rules.max_seeds), int(rules.seeds_per_round))
        given = {"sweep_overrides_json": json.dumps(list(config.hydra.overrides.task))}
        standing = Path(str(config.hydra.sweep.dir)) / "summary" / racing.RACE_FILE
        standing.unlink(missing_ok=True)  # an earlier race's, where a sweep folder is given again
        rounds = list(self.basic.sweep(arguments))  # every config on race.min_seeds seeds
        launched = sum(len(batch) for batch in rounds)
        record(race, [job for batch in rounds for job in batch], given)
        while more := race.next_round():
            race.save(standing)  # the note reads it even if a later round is interrupted
            batch = [[*entrant.overrides, f"{OFFSET_KEY}={entrant.seeds}"] for entrant in more]
            offset = more[0].seeds  # the configs still racing share their seeds
            indices = racing.round_indices(offset, race.min_seeds, race.seeds_per_round, race.max_seeds)
            seeds = [str(config.seed + index) for index in indices]
            named = f"seed{'s' if len(seeds) > 1 else ''} {','.join(seeds)}"
            log.info(f"Race round {race.rounds}: {named} for {', '.join(entrant.label for entrant in more)}")
            results = self.launch_round(batch, launched, race.rounds)
            launched += len(batch)
            rounds.append(results)
            record(race, results, given)
        race.save(standing)  # the parent's note says how each config was decided
        return rounds

    def launch_round(self, batch: list[list[str]], first_index: int, number: int) -> list[JobReturn]:
        """One round's jobs through the sweep's launcher, in launches of max_batch_size as the grid's."""
        assert self.config is not None and self.basic.launcher is not None
        tracker = progress.of_sweep(str(self.config.hydra.sweep.dir))
        if tracker is not None:  # the line's total grows by the round (workers get a copy at launch)
            tracker.add_round(len(batch), number)
        self.basic.validate_batch_is_legal(batch)
        size = self.max_batch_size or len(batch)
        results: list[JobReturn] = []
        for start in range(0, len(batch), size):
            launched = self.basic.launcher.launch(batch[start : start + size], initial_job_idx=first_index + start)
            for job_return in launched:
                job_return.return_value  # noqa: B018 (raises a job's exception, as the basic sweeper does)
            results.extend(launched)
        return results


def record(race: racing.Race, results: Sequence[JobReturn], given: dict[str, str]) -> None:
    """Each job's seeds and objectives (sweeps/jobs.JobResult) into the race, by the config's name."""
    for job_return in results:
        value = job_return.return_value
        if not isinstance(value, dict):
            continue
        overrides = [item for item in job_return.overrides or [] if grammar.key(item) != OFFSET_KEY]
        race.record(
            child_name(overrides, given),
            overrides,
            list(value.get("seeds") or []),
            list(value.get("objectives") or []),
            bool(value.get("pruned")),
            str(value.get("failure") or ""),
        )


def register() -> None:
    """Make the sweeper known to Hydra (a plugin must be registered before a config names it)."""
    from hydra.core.plugins import Plugins

    Plugins.instance().register(GridSweeper)
