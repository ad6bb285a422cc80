"""A sweep's plan before launch (`-m ... plan=true`): its jobs and runs, the time they would take by
what the store has seen, and the difference its seeds can resolve (analysis/power.py).

SweepCallback.on_multirun_start prints it and exits 0 before the sweeper starts, so nothing is made:
no parent run, no sweep folder (Hydra's sweeper makes it later), and no store (a SQLite file that is
not there is not opened). The count of jobs is also what the progress line counts down from.

- Jobs: the basic sweeper's grid (the product of each swept override's values, `hydra.sweeper.params`
  included), or a search's `hydra.sweeper.n_trials`; runs are jobs x replicates.
- Time: for each shape of job (model name, batch size, epochs, data.max_train_samples, data.validation),
  the store's latest FINISHED runs of the same model name, batch size, data and host: the mean of
  their `epoch_seconds` history times the epochs, plus their mean time outside the epochs (the run's
  length less its epochs: evaluating, logging the model), plus the mean time their process spent
  between the end of its previous run and theirs (a job's data and model, read from the pid tags),
  plus once the process's start-up before its first run (imports). A shape without such runs gets no
  estimate, and the plan says so. A search's trials are weighed as if each listed option were drawn
  equally.
- Seed spread: the sd of the objective across the seeds of one config (runs sharing a config_group
  tag), pooled over the store's configs of the sweep's models on the same data; else
  power.DEFAULT_SEED_SD, named as such.
"""

from __future__ import annotations

import itertools
import math
import socket
import statistics
from collections import Counter
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from fmnist_exp.analysis import power
from fmnist_exp.config.checks import MAX_REPLICATES, check_plan_difference
from fmnist_exp.errors import ConfigError
from fmnist_exp.tracking.liveness import HOST_TAG, PID_START_TAG, PID_TAG
from fmnist_exp.tracking.location import sqlite_path
from fmnist_exp.tracking.store import RunRecord, Store

# The keys that decide a job's shape (what its time and seed noise depend on), with every data.* key:
# one composed config per combination of their swept values.
SHAPE_KEYS = ("experiment", "model", "batch_size", "epochs", "data", "hparams_search")


HISTORY_RUNS = 10  # the latest matching runs an estimate reads, per shape
LISTED = 5  # runs named per shape in the plan; the rest are counted


def shapes_it(key: str) -> bool:
    key = key.lstrip("+~")
    return key in SHAPE_KEYS or key.startswith("data.")


@dataclass(frozen=True)
class Shape:
    """What a job's time depends on, as far as the store's runs can tell."""

    model: str
    batch_size: int
    epochs: int
    max_train_samples: int | None
    validation: str

    def __str__(self) -> str:
        images = f"{self.max_train_samples:,}" if self.max_train_samples is not None else "all"
        return (
            f"{self.model}, batch size {self.batch_size}, {self.epochs} epochs, {images} training images "
            f"(validation {self.validation})"
        )

    def same_data(self, run: RunRecord) -> bool:
        """The run trained on as many images, with the same validation scheme (params drop a null)."""
        wanted = None if self.max_train_samples is None else str(self.max_train_samples)
        return (
            run.params.get("data.max_train_samples") == wanted and run.params.get("data.validation") == self.validation
        )


@dataclass
class Sweep:
    """The jobs of a sweep as the plan counts them."""

    jobs: int | None  # None: a sweeper whose count the plan cannot tell
    replicates: int  # seeds per config (a race's: the fewest, race.min_seeds)
    how: str  # how the jobs were counted, in words
    shapes: list[list[str]] = field(default_factory=list)  # one override list per shape to compose
    most: int | None = None  # a race's (replicates=auto) most seeds per config, race.max_seeds

    @property
    def runs(self) -> int | None:
        return None if self.jobs is None else self.jobs * self.replicates

    def counted(self, per_run: int | None, unit: str = "") -> str:
        """`6` runs, or a race's range `6 to 15` (the most: every config on race.max_seeds seeds)."""
        if per_run is None or self.most is None:
            return _count(per_run) + unit
        return f"{per_run}{unit} to {per_run * self.most // self.replicates}{unit}"


def _parsed(arguments: list[str]) -> list:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    return OverridesParser.create(config_loader=loader).parse_overrides(arguments)


def arguments_of(config: DictConfig) -> list[str]:
    """What the sweeper reads: its own `params` (a search space, or the basic sweeper's), then the
    command's overrides (a key given twice keeps the last, as Hydra's sweepers do)."""
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    return [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)


def sweep_of(config: DictConfig) -> Sweep:
    """The jobs Hydra's sweeper would launch, and the override lists of their shapes."""
    from hydra.errors import HydraException

    given, most = config.get("replicates", 1), None
    if given == "auto":  # a race: from race.min_seeds to race.max_seeds seeds per config
        given, most = config.race.min_seeds, int(config.race.max_seeds)
    replicates = int(given)
    sweeper = str((OmegaConf.select(config, "hydra.runtime.choices") or {}).get("hydra/sweeper", "basic"))
    try:
        parsed = {override.get_key_element(): override for override in _parsed(arguments_of(config))}
    except HydraException as error:
        raise ConfigError(" ".join(str(error).split())) from error
    fixed = [override.input_line for override in parsed.values() if not override.is_sweep_override()]
    swept = [override for override in parsed.values() if override.is_sweep_override()]
    options: dict[str, list[str]] = {}
    for override in swept:
        if override.is_discrete_sweep():
            options[override.get_key_element()] = [
                f"{override.get_key_element()}={value}" for value in override.sweep_string_iterator()
            ]
    shaping = [values for key, values in options.items() if shapes_it(key)]
    shapes = [fixed + list(combination) for combination in itertools.product(*shaping)]
    n_trials = OmegaConf.select(config, "hydra.sweeper.n_trials")
    if n_trials is not None:
        return Sweep(int(n_trials), replicates, f"n_trials={n_trials} trials of the {sweeper} sweeper", shapes)
    if sweeper not in ("basic", "grid"):
        return Sweep(None, replicates, f"the {sweeper} sweeper decides its jobs as it goes", shapes)
    continuous = [override.get_key_element() for override in swept if not override.is_discrete_sweep()]
    if continuous:
        raise ConfigError(
            f"{continuous[0]}: the basic sweeper takes value lists, choice() and range() only; "
            "search a range with hparams_search=optuna"
        )
    jobs = math.prod(len(values) for values in options.values())
    grid = " x ".join(f"{len(values)} {key}" for key, values in options.items()) or "no swept key"
    raced = "; replicates=auto: more seeds only for configs undecided against the leader" if most else ""
    return Sweep(jobs, replicates, f"the basic sweeper's grid: {grid}{raced}", shapes, most)


def job_count(config: DictConfig) -> int | None:
    """The sweep's number of jobs, or None when it cannot be told (the progress line's total)."""
    try:
        return sweep_of(config).jobs
    except Exception:  # noqa: BLE001 (a sweep the plan cannot read is Hydra's to refuse; no total then)
        return None


def shape_of(overrides: list[str], config_name: str) -> Shape:
    """One shape's config, composed by Hydra from the command's fixed overrides and its swept values."""
    from hydra import compose
    from hydra.errors import HydraException

    try:
        composed = compose(config_name=config_name, overrides=overrides)
    except HydraException as error:
        raise ConfigError(" ".join(str(error).split())) from error
    data = composed.data
    return Shape(
        str(composed.model.name),
        int(composed.batch_size),
        int(composed.epochs),
        data.max_train_samples,
        data.validation,
    )


def history(store: Store | None, experiment: str, shape: Shape, host: str) -> list[RunRecord]:
    """The latest FINISHED runs of the shape's model, batch size and data on this host."""
    if store is None:
        return []
    query = (
        f"params.`model.name` = '{shape.model}' and params.batch_size = '{shape.batch_size}' "
        f"and tags.`{HOST_TAG}` = '{host}' and attributes.status = 'FINISHED'"
    )
    found = store.search(experiment, query, max_results=200, order_by=["attributes.start_time DESC"])
    return [run for run in found if shape.same_data(run) and run.end_time and run.start_time][:HISTORY_RUNS]


@dataclass
class Timing:
    """What a shape's runs took, from the store: means over its latest finished runs."""

    epoch: float  # seconds an epoch (their epoch_seconds histories)
    outside: float  # seconds of a run outside its epochs (evaluating, logging the model)
    between: float | None  # seconds from the end of the process's previous run to the run's start
    start_up: float | None  # seconds from the process's start to its first run's start (imports, data)

    def per_run(self, epochs: int) -> float:
        return self.epoch * epochs + self.outside + (self.between or 0.0)


def before_run(store: Store, experiment: str, run: RunRecord) -> tuple[str, float] | None:
    """What the run's process spent before the run began, by the runs of the same process (the pid
    and process start tags): ("between", seconds since its previous run ended) or, for its first run,
    ("start-up", seconds since the process started); None when the run does not say."""
    pid, process_start = run.tags.get(PID_TAG), run.tags.get(PID_START_TAG)
    if not pid or not process_start or not run.start_time:
        return None
    query = f"tags.`{PID_TAG}` = '{pid}' and tags.`{PID_START_TAG}` = '{process_start}'"
    ends = [
        other.end_time
        for other in store.search(experiment, query)
        if other.run_id != run.run_id and other.end_time and other.end_time <= run.start_time
    ]
    if ends:
        return "between", (run.start_time - max(ends)) / 1000
    return "start-up", max(0.0, run.start_time / 1000 - float(process_start))


def timing_of(store: Store, experiment: str, runs: list[RunRecord]) -> Timing | None:
    """The shape's Timing from its runs' epoch_seconds histories, lengths and processes; None if
    none logged an epoch."""
    epoch_times: list[float] = []
    outside: list[float] = []
    gaps: dict[str, list[float]] = {"between": [], "start-up": []}
    for run in runs:
        epochs_of_run = store.metric_history(run.run_id, "epoch_seconds")
        if not epochs_of_run:
            continue
        epoch_times += epochs_of_run
        length = ((run.end_time or 0) - (run.start_time or 0)) / 1000
        outside.append(max(0.0, length - sum(epochs_of_run)))
        before = before_run(store, experiment, run)
        if before is not None:
            gaps[before[0]].append(before[1])
    if not epoch_times:
        return None
    return Timing(
        statistics.fmean(epoch_times),
        statistics.fmean(outside),
        statistics.fmean(gaps["between"]) if gaps["between"] else None,
        statistics.fmean(gaps["start-up"]) if gaps["start-up"] else None,
    )


def seed_spread(store: Store | None, experiment: str, shapes: Counter | list[Shape]) -> tuple[float, dict[str, int]]:
    """The pooled sd of the objective across seeds, and the configs (config_group: runs) it pools: the
    store's configs with two or more FINISHED, unpruned seeds of the shapes' models on the same data;
    NaN and none when it has none."""
    if store is None:
        return math.nan, {}
    groups: dict[str, list[float]] = {}
    for model in sorted({shape.model for shape in shapes}):
        query = f"params.`model.name` = '{model}' and attributes.status = 'FINISHED'"
        for run in store.search(experiment, query):
            group, objective = run.tags.get("config_group"), run.metrics.get("objective")
            if not group or objective is None or math.isnan(objective) or run.tags.get("pruned") == "true":
                continue
            if any(shape.model == model and shape.same_data(run) for shape in shapes):
                groups.setdefault(group, []).append(objective)
    replicated = {group: values for group, values in groups.items() if len(values) >= 2}
    freedom = sum(len(values) - 1 for values in replicated.values())
    if not freedom:
        return math.nan, {}
    pooled = sum((len(values) - 1) * statistics.variance(values) for values in replicated.values()) / freedom
    return math.sqrt(pooled), {group: len(values) for group, values in sorted(replicated.items())}


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def store_of(uri: str) -> tuple[Store | None, str]:
    """The store to read history from, or None (and why) when its SQLite file does not exist: the
    plan never makes one."""
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        return None, f"the store {database} does not exist yet"
    return Store(uri), ""


def describe(config: DictConfig, config_name: str = "config") -> str:
    """The plan in words: jobs and runs, the time estimate and the runs it came from, the seed
    spread, the difference the seeds resolve and the seeds a given difference needs."""
    check_plan_difference(config.get("plan_difference"))
    sweep = sweep_of(config)
    lines = [
        f"Plan: {_count(sweep.jobs)} jobs x {sweep.counted(sweep.replicates)} seeds = {sweep.counted(sweep.runs)} runs "
        f"({sweep.how}); nothing was trained or recorded (plan=true)."
    ]
    shapes = Counter(shape_of(overrides, config_name) for overrides in sweep.shapes)
    store, missing = store_of(str(config.mlflow.tracking_uri))
    lines += time_lines(store, missing, config.mlflow.experiment_name, shapes, sweep)
    lines += noise_lines(store, config.mlflow.experiment_name, shapes, sweep, config.get("plan_difference"))
    return "\n".join(lines)


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def time_lines(store: Store | None, missing: str, experiment: str, shapes: Counter, sweep: Sweep) -> list[str]:
    """The estimate: per shape, its runs' share of the sweep, the seconds a run takes and the runs read."""
    host = socket.gethostname()
    lines: list[str] = []
    unknown: list[str] = []
    total = 0.0
    start_ups: list[float] = []  # the process's start before its first run: once per sweep
    combinations = sum(shapes.values())  # the grid (or a search drawing evenly) gives each as many runs
    for shape, count in shapes.items():
        share = (sweep.runs or 0) * count / combinations
        runs = history(store, experiment, shape, host)
        timing = timing_of(store, experiment, runs) if store is not None and runs else None
        if timing is None:
            unknown.append(str(shape))
            continue
        total += share * timing.per_run(shape.epochs)
        if timing.start_up is not None:
            start_ups.append(timing.start_up)
        named = ", ".join(run.run_id[:8] for run in runs[:LISTED]) + (
            f" and {len(runs) - LISTED} more" if len(runs) > LISTED else ""
        )
        between = f" + {timing.between:.1f} s between runs" if timing.between is not None else ""
        lines.append(
            f"  {shape}: ~{duration(timing.per_run(shape.epochs))} a run ({timing.epoch:.1f} s an epoch x "
            f"{shape.epochs} + {timing.outside:.1f} s outside the epochs{between}), from {len(runs)} finished "
            f"run{'s' if len(runs) != 1 else ''} on {host}: {named}"
        )
    where = missing or f"the store has no finished run of the same model, batch size and data on {host}"
    if sweep.runs is None:
        return ["Time: no estimate: the number of jobs is not known before the sweeper runs.", *lines]
    if unknown and not lines:
        return [f"Time: no estimate ({where}): {'; '.join(unknown)}."]
    once = max(start_ups, default=0.0)
    most = f" to ~{duration(total * sweep.most / sweep.replicates + once)}" if sweep.most else ""  # a race's
    head = f"Time: ~{duration(total + once)}{most} for the {sweep.counted(sweep.runs)} runs one after another"
    if start_ups:
        head += f", {duration(once)} of it the process's start-up"
    if unknown:
        head += f", not counting the {len(unknown)} shape(s) with no history ({'; '.join(unknown)})"
    return [head + "; per shape of job:", *lines]


def noise_lines(
    store: Store | None, experiment: str, shapes: Counter, sweep: Sweep, difference: float | None
) -> list[str]:
    """The seed spread the plan assumes, what the chosen seeds can resolve (a race's most too), and the
    seeds a difference needs."""
    replicates = sweep.replicates
    spread, configs = seed_spread(store, experiment, shapes)
    models = ", ".join(sorted({shape.model for shape in shapes}))
    if math.isnan(spread):
        spread = power.DEFAULT_SEED_SD
        source = f"the default {spread} (the store has no config of {models} with two or more seeds on this data)"
    else:
        named = "; ".join(f"{group} ({runs})" for group, runs in list(configs.items())[:LISTED])
        more = f" and {len(configs) - LISTED} more" if len(configs) > LISTED else ""
        source = (
            f"pooled over {len(configs)} configs ({sum(configs.values())} runs) of {models} in the store with "
            f"two or more seeds: {named}{more}"
        )
    sd = power.difference_sd(spread)
    lines = [
        f"Seed noise: sd {spread:.4f} of the objective across seeds, {source}; a seed's difference between "
        f"two configs: sd x sqrt(2) = {sd:.4f} (as if unrelated on a seed: the most seeds it can take)."
    ]
    test = "a paired t-test (two-sided, 5% level) with 80% power"
    if replicates < 2:
        lines.append(f"With 1 seed per config no difference can be tested; {test} needs replicates=2 or more.")
    else:
        smallest = power.smallest_difference(sd, replicates)
        lines.append(
            f"With {replicates} seeds per config, {test} resolves a difference of {smallest:.4f} "
            f"({100 * smallest:.2f} points) or more."
        )
    if sweep.most:
        smallest = power.smallest_difference(sd, sweep.most)
        lines.append(
            f"A config still undecided races on up to {sweep.most} seeds, which resolve {smallest:.4f} ({100 * smallest:.2f} points) or more."
        )
    if difference is not None:
        needed = power.seeds_needed(difference, sd)
        chance = power.paired_power(difference, sd, replicates)
        lines.append(
            f"A difference of {difference:g} ({100 * difference:.2f} points) needs "
            + (f"{needed} seeds per config (replicates={needed})" if needed else f"more than {MAX_REPLICATES} seeds")
            + (f"; {replicates} seeds find it {100 * chance:.0f}% of the time." if replicates >= 2 else ".")
        )
    return lines
