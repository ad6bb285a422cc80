"""Comparing configs: each config's seed replicates as mean +- sd with a 95% interval, and whether
the best config's lead over another is more than seed noise.

Plain Python and SciPy on table rows (ranking.row_of); the sweep's parent run and `report` print
and log what this computes. The figure compared is the objective (validation accuracy, or training
accuracy without a validation set), the one a sweep ranks by; test accuracy is shown beside it.

Two configs that ran on the same set of two or more seeds (each seed once) are compared seed by seed:
a paired t-test on the per-seed differences, since a seed fixes the validation split, the initial
weights and the batch order for both, and so its own luck cancels in the difference. Otherwise (the
seed sets differ, say because a run was pruned or failed, or a seed ran twice in one config) the
test is Welch's t-test (two-sided, unequal variances) on all of each config's runs: pairing on the
shared seeds only would quietly drop runs from the comparison. Either test is two-sided at the 5%
level, and the verdict gives the mean difference with its 95% t-interval and says which test it
used and why. "Within seed noise" means the difference could well come from the seeds alone. A
test needs at least two seeds of each config (`replicates=2` or more); with one the verdict says so.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

ALPHA = 0.05  # the test's level: a difference with p < 0.05 is called more than seed noise
TIE = 1e-12  # a spread (or difference) this small is rounding, not noise: accuracies lie in [0, 1]


@dataclass
class ConfigStats:
    """The finished runs of one config (one config_group), over their seeds."""

    group: str
    label: str  # what sets the config apart: its swept values, or its run name
    objectives: list[float] = field(default_factory=list)
    test_accuracies: list[float] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    overrides: str = ""  # the overrides of one of its runs (the re-run command's)
    seeds: list[str] = field(default_factory=list)  # each objective's seed, in the same order ("" unknown)

    @property
    def n(self) -> int:
        return len(self.objectives)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.objectives) if self.objectives else math.nan

    @property
    def sd(self) -> float:
        return statistics.stdev(self.objectives) if self.n >= 2 else math.nan

    @property
    def test_mean(self) -> float:
        return statistics.fmean(self.test_accuracies) if self.test_accuracies else math.nan

    @property
    def test_sd(self) -> float:
        return statistics.stdev(self.test_accuracies) if len(self.test_accuracies) >= 2 else math.nan

    def interval(self) -> tuple[float, float]:
        """The 95% t-interval of the mean (NaN with fewer than two seeds)."""
        if self.n < 2:
            return math.nan, math.nan
        from scipy import stats

        half = stats.t.ppf(1 - ALPHA / 2, self.n - 1) * self.sd / math.sqrt(self.n)
        return self.mean - half, self.mean + half


def by_config(rows: list[dict]) -> list[ConfigStats]:
    """Group the rows that trained all their epochs (FINISHED, not pruned, with an objective) by
    config_group (a run without one is a config of its own, as runs logged before replicates were);
    best mean first. A pruned run's figure is from an earlier epoch, so it is left out."""
    groups: dict[str, ConfigStats] = {}
    for row in rows:
        if row["status"] != "FINISHED" or math.isnan(row["objective"]) or row["pruned_at"] != "":
            continue
        key = row.get("config_group") or row["run_id"]
        label = key.rsplit(" [", 1)[0] if row.get("config_group") else config_label(row)
        entry = groups.setdefault(key, ConfigStats(key, label, overrides=row.get("overrides", "")))
        entry.objectives.append(row["objective"])
        entry.seeds.append(str(row.get("seed", "")))
        if not math.isnan(row["test_accuracy"]):
            entry.test_accuracies.append(row["test_accuracy"])
        entry.run_ids.append(row["run_id"])
    return sorted(groups.values(), key=lambda entry: -entry.mean)


def config_label(row: dict) -> str:
    """The name of a run logged without a config_group (before replicates): its run name."""
    return row.get("run_name") or row["run_id"]


@dataclass
class Verdict:
    difference: float  # best mean minus other mean, in objective units
    p_value: float  # two-sided; NaN when it cannot be computed
    text: str
    test: str = ""  # "paired", "Welch", or "" (one seed: no test)
    interval: tuple[float, float] = (math.nan, math.nan)  # the difference's 95% t-interval


def paired_test(best: list[float], other: list[float]) -> tuple[float, float, tuple[float, float]]:
    """Paired t-test on the per-seed differences best[i] - other[i] (the same seed at each i): the
    mean difference, the two-sided p-value (SciPy's ttest_rel) and the difference's 95% t-interval."""
    differences = [high - low for high, low in zip(best, other, strict=True)]
    mean = statistics.fmean(differences)
    if statistics.stdev(differences) <= TIE:  # the same difference on every seed: nothing to test against
        return mean, (1.0 if abs(mean) <= TIE else 0.0), (mean, mean)
    from scipy import stats

    result = stats.ttest_rel(best, other)
    interval = result.confidence_interval(1 - ALPHA)
    return mean, float(result.pvalue), (float(interval.low), float(interval.high))


def welch_test(best: list[float], other: list[float]) -> tuple[float, float, tuple[float, float]]:
    """Welch's t-test (unequal variances) of two independent samples: the difference of the means,
    the two-sided p-value (SciPy's ttest_ind) and the difference's 95% t-interval (Welch's df)."""
    difference = statistics.fmean(best) - statistics.fmean(other)
    if statistics.stdev(best) <= TIE and statistics.stdev(other) <= TIE:  # deterministic replicates: no noise
        return difference, (1.0 if abs(difference) <= TIE else 0.0), (difference, difference)
    import warnings

    from scipy import stats

    with warnings.catch_warnings():
        # One config on the same figure every seed (a config that learned nothing scores alike) makes
        # SciPy warn of precision loss in its variance; that variance is exactly 0, and the test is sound.
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        result = stats.ttest_ind(best, other, equal_var=False)
    interval = result.confidence_interval(1 - ALPHA)
    return difference, float(result.pvalue), (float(interval.low), float(interval.high))


def pairing(best: ConfigStats, other: ConfigStats) -> tuple[list[str] | None, str]:
    """The seeds to compare the two configs on, seed by seed, or None and why they cannot be paired:
    paired only when both ran on the same set of two or more known seeds, each seed once."""
    best_seeds, other_seeds = best.seeds, other.seeds
    if len(best_seeds) != best.n or len(other_seeds) != other.n or "" in best_seeds + other_seeds:
        return None, "the runs' seeds are not recorded"
    if len(set(best_seeds)) != best.n or len(set(other_seeds)) != other.n:
        return None, "a seed ran more than once in one config"
    if set(best_seeds) != set(other_seeds):
        return None, f"the configs ran on different seeds: {seed_list(best_seeds)} and {seed_list(other_seeds)}"
    return sorted(best_seeds, key=seed_order), ""


def seed_order(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.lstrip("-").isdigit() else (0, seed)


def seed_list(seeds: list[str]) -> str:
    return ",".join(sorted(seeds, key=seed_order))


def compare(best: ConfigStats, other: ConfigStats) -> Verdict:
    """Whether `best` beats `other` by more than seed noise: a paired t-test when they share their
    seeds, else Welch's t-test (see the module)."""
    difference = best.mean - other.mean
    points = f"{100 * difference:+.2f} points"
    if best.n < 2 or other.n < 2:
        return Verdict(difference, math.nan, f"{points}; one seed each: noise unknown (use replicates=2 or more)")
    seeds, reason = pairing(best, other)
    if seeds is not None:
        by_seed = [dict(zip(entry.seeds, entry.objectives, strict=True)) for entry in (best, other)]
        difference, p_value, interval = paired_test(
            [by_seed[0][seed] for seed in seeds], [by_seed[1][seed] for seed in seeds]
        )
        test = "paired"
        named = (
            f"paired t-test over seeds {','.join(seeds)}, p={p_value:.3f}: "
            "the configs share their seeds, so each seed's own noise cancels"
        )
    else:
        difference, p_value, interval = welch_test(best.objectives, other.objectives)
        test = "Welch"
        named = f"Welch's t-test p={p_value:.3f}: {reason}"
    word = "within seed noise" if p_value >= ALPHA else "more than seed noise"
    low, high = (100 * bound for bound in interval)
    text = f"{points} (95% interval {low:+.2f} to {high:+.2f}), {word} ({named})"
    return Verdict(difference, p_value, text, test, interval)


def noise_table(configs: list[ConfigStats]) -> str:
    """Markdown: per config, n, mean +- sd and 95% interval of the objective, test accuracy, and the
    verdict of the best against it."""
    lines = [
        "| config | seeds | objective mean +- sd | 95% interval | test accuracy mean +- sd | best vs this |",
        "|---|---|---|---|---|---|",
    ]
    for index, entry in enumerate(configs):
        low, high = entry.interval()
        interval = f"{low:.4f} - {high:.4f}" if not math.isnan(low) else "n/a"
        verdict = "best" if index == 0 else compare(configs[0], entry).text
        lines.append(
            f"| {entry.label} | {entry.n} | {entry.mean:.4f} +- {fmt(entry.sd)} | {interval} "
            f"| {entry.test_mean:.4f} +- {fmt(entry.test_sd)} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def winner_lines(configs: list[ConfigStats]) -> list[str]:
    """The best config and its margin over the runner-up, in words."""
    if not configs:
        return ["No job finished with an objective."]
    best = configs[0]
    spread = f" +- {best.sd:.4f}" if best.n >= 2 else ""
    lines = [
        f"Best: {best.label}: objective {best.mean:.4f}{spread} over {best.n} seed{'s' if best.n != 1 else ''}, "
        f"test accuracy {best.test_mean:.4f}."
    ]
    if len(configs) > 1:
        lines.append(
            f"Runner-up: {configs[1].label} ({configs[1].mean:.4f}); the best leads by {compare(best, configs[1]).text}."
        )
    return lines
