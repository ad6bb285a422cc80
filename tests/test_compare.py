"""The seed-noise arithmetic: configs grouped over their seeds, intervals, and the verdict: a paired
t-test when two configs share their seeds, Welch's otherwise, each checked against SciPy's own."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats

from fmnist_exp.analysis import seed_noise as compare

pytestmark = pytest.mark.unit  # no training, no subprocess: the inner loop (pytest -m unit)


def row(group: str, objective: float, seed: int, status: str = "FINISHED", pruned_at="", test=None) -> dict:
    return {
        "run_id": f"{group}-{seed}",
        "seed": str(seed),
        "run_name": f"lr={group},seed={seed}",
        "status": status,
        "pruned_at": pruned_at,
        "objective": objective,
        "test_accuracy": objective - 0.01 if test is None else test,
        "config_group": f"lr={group} [{group}0000000]",
        "replicate": str(seed),
        "overrides": f"lr={group}",
    }


def test_configs_are_grouped_over_their_seeds_best_mean_first():
    rows = [row("a", 0.90, 1), row("a", 0.92, 2), row("b", 0.95, 1), row("b", 0.80, 2), row("c", math.nan, 1)]
    rows.append(row("a", 0.10, 3, pruned_at=1))  # a pruned run's figure is from an earlier epoch
    rows.append(row("b", 0.99, 3, status="FAILED"))
    configs = compare.by_config(rows)
    assert [entry.label for entry in configs] == ["lr=a", "lr=b"]
    assert configs[0].n == 2 and configs[0].mean == pytest.approx(0.91)
    assert configs[0].sd == pytest.approx(math.sqrt(0.0002))
    assert configs[0].label == "lr=a"  # the seed a replicate adds is not part of the config's name
    assert configs[0].seeds == ["1", "2"] and configs[1].seeds == ["1", "2"]
    low, high = configs[0].interval()
    half = stats.t.ppf(0.975, 1) * configs[0].sd / math.sqrt(2)
    assert (low, high) == pytest.approx((0.91 - half, 0.91 + half))


def test_a_lead_inside_the_seed_spread_is_within_noise_and_a_clear_one_is_not():
    # The `fast` preset's own spread: 91.70 / 92.01 / 91.75% on seeds 1-3.
    fast = compare.ConfigStats("fast", "fast", [0.9170, 0.9201, 0.9175])
    nudged = compare.ConfigStats("nudged", "nudged", [0.9150, 0.9190, 0.9160])
    verdict = compare.compare(fast, nudged)
    assert "within seed noise" in verdict.text and verdict.p_value > 0.05
    assert verdict.p_value == pytest.approx(stats.ttest_ind(fast.objectives, nudged.objectives, equal_var=False).pvalue)
    worse = compare.ConfigStats("worse", "worse", [0.8800, 0.8820, 0.8790])
    clear = compare.compare(fast, worse)
    assert "more than seed noise" in clear.text and clear.p_value < 0.05
    assert clear.text.startswith("+3.79 points")


def test_one_seed_each_says_the_noise_is_unknown():
    verdict = compare.compare(compare.ConfigStats("a", "a", [0.9]), compare.ConfigStats("b", "b", [0.8]))
    assert math.isnan(verdict.p_value) and "noise unknown" in verdict.text and "replicates=" in verdict.text


def test_the_noise_table_and_the_winner_in_words():
    rows = [row("a", 0.90, 1), row("a", 0.92, 2), row("b", 0.895, 1), row("b", 0.905, 2)]
    configs = compare.by_config(rows)
    table = compare.noise_table(configs)
    assert "| lr=a | 2 | 0.9100 +- 0.0141 |" in table and "within seed noise" in table
    assert "paired t-test over seeds 1,2, p=0.295: the configs share their seeds" in table
    lines = compare.winner_lines(configs)
    assert lines[0].startswith("Best: lr=a: objective 0.9100 +- 0.0141 over 2 seeds")
    assert "Runner-up: lr=b (0.9000)" in lines[1] and "+1.00 points" in lines[1]


# Two configs on seeds 1-3 whose seeds move them together: config b trails a by 0.18 to 0.25 points
# on every seed, while each config's own spread over the seeds is about as large as the gap.
BEST = [0.9170, 0.9201, 0.9175]
TRAILING = [0.9150, 0.9176, 0.9157]


def test_shared_seeds_are_compared_seed_by_seed_which_decides_what_welch_cannot():
    best = compare.ConfigStats("a", "a", list(BEST), seeds=["1", "2", "3"])
    # The same runs listed in another order: the test pairs them by seed, not by position.
    other = compare.ConfigStats("b", "b", [TRAILING[2], TRAILING[0], TRAILING[1]], seeds=["3", "1", "2"])
    verdict = compare.compare(best, other)
    expected = stats.ttest_rel(BEST, TRAILING)
    assert verdict.test == "paired" and verdict.p_value == pytest.approx(expected.pvalue)
    assert verdict.p_value < 0.05 and stats.ttest_ind(BEST, TRAILING, equal_var=False).pvalue > 0.05
    differences = [high - low for high, low in zip(BEST, TRAILING, strict=True)]
    mean, sd = statistics.fmean(differences), statistics.stdev(differences)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert verdict.difference == pytest.approx(mean) and verdict.interval == pytest.approx((mean - half, mean + half))
    assert verdict.text == (
        f"+0.21 points (95% interval {100 * (mean - half):+.2f} to {100 * (mean + half):+.2f}), more than seed noise "
        f"(paired t-test over seeds 1,2,3, p={expected.pvalue:.3f}: "
        "the configs share their seeds, so each seed's own noise cancels)"
    )


def welch_interval(first: list[float], second: list[float]) -> tuple[float, float]:
    """The 95% interval of a difference of means with Welch-Satterthwaite's degrees of freedom."""
    first_var, second_var = statistics.variance(first) / len(first), statistics.variance(second) / len(second)
    freedom = (first_var + second_var) ** 2 / (first_var**2 / (len(first) - 1) + second_var**2 / (len(second) - 1))
    half = stats.t.ppf(0.975, freedom) * math.sqrt(first_var + second_var)
    difference = statistics.fmean(first) - statistics.fmean(second)
    return difference - half, difference + half


def test_different_seeds_fall_back_to_welch_and_say_why():
    best = compare.ConfigStats("a", "a", list(BEST), seeds=["1", "2", "3"])
    # The same figures on seeds 1, 2 and 4 (seed 3's run was pruned, say, and a fourth ran instead).
    other = compare.ConfigStats("b", "b", list(TRAILING), seeds=["1", "2", "4"])
    verdict = compare.compare(best, other)
    expected = stats.ttest_ind(BEST, TRAILING, equal_var=False)
    assert verdict.test == "Welch" and verdict.p_value == pytest.approx(expected.pvalue) and verdict.p_value > 0.05
    assert verdict.interval == pytest.approx(welch_interval(BEST, TRAILING))
    assert verdict.text.endswith(
        f"within seed noise (Welch's t-test p={expected.pvalue:.3f}: the configs ran on different seeds: 1,2,3 and 1,2,4)"
    )
    # Fewer seeds on one side, a seed twice in one config, or no seeds recorded: Welch's too.
    shorter = compare.ConfigStats("c", "c", TRAILING[:2], seeds=["1", "2"])
    assert "different seeds: 1,2,3 and 1,2)" in compare.compare(best, shorter).text
    twice = compare.ConfigStats("d", "d", list(TRAILING), seeds=["1", "2", "2"])
    assert "a seed ran more than once in one config" in compare.compare(best, twice).text
    unknown = compare.ConfigStats("e", "e", list(TRAILING))
    assert compare.compare(best, unknown).test == "Welch"
    assert "seeds are not recorded" in compare.compare(best, unknown).text


def test_the_same_difference_on_every_seed_is_decided_without_scipy():
    best = compare.ConfigStats("a", "a", [0.90, 0.92], seeds=["1", "2"])
    other = compare.ConfigStats("b", "b", [0.89, 0.91], seeds=["1", "2"])
    verdict = compare.compare(best, other)
    assert verdict.test == "paired" and verdict.p_value == 0.0 and verdict.interval == pytest.approx((0.01, 0.01))
    same = compare.compare(best, compare.ConfigStats("c", "c", [0.90, 0.92], seeds=["1", "2"]))
    assert same.p_value == 1.0 and "within seed noise" in same.text
