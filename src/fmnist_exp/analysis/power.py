"""How many seeds a comparison needs: the power of the paired t-test that the verdict uses
(seed_noise.paired_test), before a sweep is run (`plan=true`, sweeps/plan.py).

With n seeds shared by two configs, the test works on the n per-seed differences: a two-sided
one-sample t-test of their mean against zero, with n - 1 degrees of freedom. If the true mean
difference is `difference` and the per-seed differences spread with sd `sd`, the statistic follows a
noncentral t distribution with n - 1 degrees of freedom and noncentrality difference / sd * sqrt(n),
so the power (the chance of a verdict "more than seed noise") is

    P(T > t) + P(T < -t),  T ~ nct(n - 1, difference * sqrt(n) / sd),  t = the t quantile 1 - alpha / 2

(SciPy's `stats.nct` and `stats.t`). The smallest difference the test finds with 80% power is the root
of power(difference) = 0.8 (SciPy's brentq); the seeds a difference needs are the smallest n whose
power reaches 0.8, counted up from 2.

The sd of a per-seed difference is what pairing leaves: sd * sqrt(2 * (1 - rho)) for two configs of
seed sd `sd` whose results on one seed correlate by rho. The plan takes rho = 0 (sd * sqrt(2)), the
case where a seed's luck does not carry from one config to the other: the most seeds a comparison
can need. Configs that move together on a seed (docs/comparing.md) need fewer.
"""

from __future__ import annotations

import math

from fmnist_exp.analysis.seed_noise import ALPHA
from fmnist_exp.config.checks import MAX_REPLICATES

POWER = 0.8  # the chance of finding a real difference that the plan asks for
DEFAULT_SEED_SD = 0.003  # the objective's sd across seeds when the store has seen none for the model


def difference_sd(seed_sd: float) -> float:
    """The sd of one seed's difference between two configs of seed sd `seed_sd`, taken as unrelated."""
    return seed_sd * math.sqrt(2)


def paired_power(difference: float, sd: float, seeds: int, alpha: float = ALPHA) -> float:
    """The power of the two-sided paired t-test over `seeds` seeds for a true mean difference
    `difference`, the per-seed differences spreading with sd `sd`; NaN with fewer than two seeds."""
    if seeds < 2:
        return math.nan
    from scipy import stats

    freedom = seeds - 1
    noncentrality = abs(difference) / sd * math.sqrt(seeds)  # the power is the same for either sign
    critical = stats.t.ppf(1 - alpha / 2, freedom)
    far_tail = float(stats.nct.cdf(-critical, freedom, noncentrality))
    # SciPy answers NaN for that far tail once the noncentrality is large (about 25 and up): it is 0 there.
    return float(stats.nct.sf(critical, freedom, noncentrality)) + (far_tail if math.isfinite(far_tail) else 0.0)


def smallest_difference(sd: float, seeds: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest true difference that `seeds` seeds find with probability `power` (in the units
    of `sd`, the per-seed differences' sd); infinite with fewer than two seeds (no test)."""
    if seeds < 2:
        return math.inf
    from scipy import optimize

    upper = sd
    while paired_power(upper, sd, seeds, alpha) < power:
        upper *= 2
    return float(optimize.brentq(lambda value: paired_power(value, sd, seeds, alpha) - power, 0.0, upper, xtol=1e-12))


def seeds_needed(
    difference: float, sd: float, power: float = POWER, alpha: float = ALPHA, most: int = MAX_REPLICATES
) -> int | None:
    """The fewest seeds (2 or more) whose test finds `difference` with probability `power`; None
    when even `most` seeds (the most `replicates` takes) do not."""
    for seeds in range(2, most + 1):
        if paired_power(difference, sd, seeds, alpha) >= power:
            return seeds
    return None
