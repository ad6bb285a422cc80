"""The seed-noise arithmetic: configs grouped over their seeds, intervals, Welch's verdict."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from fmnist_exp.analysis import seed_noise as compare


def row(group: str, objective: float, seed: int, status: str = "FINISHED", pruned_at="", test=None) -> dict:
    return {
        "run_id": f"{group}-{seed}",
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
    rows = [row("a", 0.90, 1), row("a", 0.92, 2), row("b", 0.89, 1), row("b", 0.91, 2)]
    configs = compare.by_config(rows)
    table = compare.noise_table(configs)
    assert "| lr=a | 2 | 0.9100 +- 0.0141 |" in table and "within seed noise" in table
    lines = compare.winner_lines(configs)
    assert lines[0].startswith("Best: lr=a: objective 0.9100 +- 0.0141 over 2 seeds")
    assert "Runner-up: lr=b (0.9000)" in lines[1] and "+1.00 points" in lines[1]
