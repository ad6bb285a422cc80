"""A sweep's plan before launch (`plan=true`): the power arithmetic against SciPy and textbook values."""

from __future__ import annotations

import math

import pytest

from fmnist_exp.analysis import power

# -- the power of the paired t-test -----------------------------------------------------------------


def test_with_no_difference_the_test_rejects_at_its_level():
    # By hand: with a true difference of 0 the statistic is a central t, so it crosses the two-sided
    # critical value with probability alpha, whatever the seeds or the spread.
    for seeds in (2, 3, 10):
        assert power.paired_power(0.0, 0.004, seeds) == pytest.approx(0.05, abs=1e-12)


def test_seeds_needed_match_the_textbook_table():
    # Cohen's table for a one-sample (paired) t-test, two-sided 5%, 80% power: d = 0.8 needs 15
    # pairs, d = 0.5 needs 34 (R's pwr.t.test(d=0.5, power=0.8, type="paired") gives n = 33.37).
    assert power.seeds_needed(0.8, 1.0) == 15
    assert power.seeds_needed(0.5, 1.0) == 34
    assert power.paired_power(0.5, 1.0, 34) == pytest.approx(0.8078, abs=1e-4)  # G*Power's "actual power"
    assert power.seeds_needed(0.005, 0.01) == 34  # only the ratio counts
    assert power.seeds_needed(0.2, 1.0) is None  # 199 pairs: more than replicates takes


def test_the_smallest_difference_is_where_the_power_reaches_80_percent():
    for sd, seeds in ((0.0042, 3), (0.01, 5), (1.0, 34)):
        smallest = power.smallest_difference(sd, seeds)
        assert power.paired_power(smallest, sd, seeds) == pytest.approx(0.8, abs=1e-9)
    assert power.smallest_difference(0.01, 34) < 0.005 < power.smallest_difference(0.01, 33)
    assert power.smallest_difference(0.01, 1) == math.inf  # one seed: nothing to test


def test_the_power_agrees_with_the_normal_approximation_and_scipys_simulation():
    import numpy
    from scipy import stats

    # Many seeds: the t test is nearly a z test, difference = (z_0.975 + z_0.8) * sd / sqrt(n).
    normal = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / math.sqrt(1000)
    assert power.smallest_difference(1.0, 1000) == pytest.approx(normal, rel=0.005)
    # Few seeds: SciPy's Monte Carlo power of its own one-sample t-test on the per-seed differences.
    rng = numpy.random.default_rng(0)
    simulated = stats.power(
        stats.ttest_1samp,
        lambda size: rng.normal(0.006, 0.0042, size=size),
        (5,),
        significance=0.05,
        n_resamples=20000,
        kwargs={"popmean": 0.0},
    ).power
    assert power.paired_power(0.006, 0.0042, 5) == pytest.approx(float(numpy.ravel(simulated)[0]), abs=0.015)
