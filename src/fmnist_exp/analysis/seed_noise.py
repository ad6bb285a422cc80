"""Comparing configs: each config's seed replicates as mean +- sd with a 95% interval, and whether
the best config's lead over another is more than seed noise.

Plain Python and SciPy on table rows (ranking.row_of); the sweep's parent run and `report` print
and log what this computes. The figure compared is the objective (validation accuracy, or training
accuracy without a validation set), the one a sweep ranks by; test accuracy is shown beside it.

The test is Welch's t-test (two-sided, unequal variances) on the two configs' objectives over their
seeds, at the 5% level: "within seed noise" means the difference could well come from the seeds
alone. It needs at least two seeds of each config (`replicates=2` or more); with one it says so.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

ALPHA = 0.05  # the test's level: a difference with p < 0.05 is called more than seed noise


@dataclass
class ConfigStats:
    """The finished runs of one config (one config_group), over their seeds."""

    group: str
    label: str  # what sets the config apart: its swept values, or its run name
    objectives: list[float] = field(default_factory=list)
    test_accuracies: list[float] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    overrides: str = ""  # the overrides of one of its runs (the re-run command's)

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
    p_value: float  # Welch's t-test, two-sided; NaN when it cannot be computed
    text: str


def compare(best: ConfigStats, other: ConfigStats) -> Verdict:
    """Whether `best` beats `other` by more than seed noise (Welch's t-test, see the module)."""
    difference = best.mean - other.mean
    points = f"{100 * difference:+.2f} points"
    if best.n < 2 or other.n < 2:
        return Verdict(difference, math.nan, f"{points}; one seed each: noise unknown (use replicates=2 or more)")
    if best.sd == 0 and other.sd == 0:  # deterministic replicates: no noise to compare against
        p_value = 1.0 if difference == 0 else 0.0
    else:
        from scipy import stats

        p_value = float(stats.ttest_ind(best.objectives, other.objectives, equal_var=False).pvalue)
    within = p_value >= ALPHA
    word = "within seed noise" if within else "more than seed noise"
    return Verdict(difference, p_value, f"{points}, {word} (Welch's t-test p={p_value:.3f})")


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
