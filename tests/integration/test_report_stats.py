"""pipelines.reports.stats: aggregates over seeds and the ordering statistics, against values
worked out by hand (closed-form t distributions, exhaustive bootstrap supports)."""
import math

import numpy as np
import pytest

from pipelines.reports.markdown import significance_columns
from pipelines.reports.stats import (
    Stats,
    aggregate,
    bootstrap_difference_ci,
    difference_two_se,
    seed_stats,
    welch_p_value,
)


def result(setting, method, seed, acc, diverged=False):
    return {"table": "t", "setting": setting, "method": method, "seed": seed, "metrics": {"test_acc": acc},
            **({"diverged": {"epoch": 2, "reason": "nan"}} if diverged else {})}


def test_aggregate_groups_cells_like_seed_stats():
    results = [result("s", "m", 2, 3.0, diverged=True), result("s", "m", 0, 1.0), result("s", "m", 1, math.nan),
               result("s", "base", 0, 5.0), result("r", "m", 0, None)]
    cells = aggregate(results)
    assert cells[("t", "s", "m")] == Stats(n=2, mean=2.0, std=1.0, n_failed=1, n_diverged=1)
    assert cells[("t", "s", "m")].values == (1.0, 3.0)            # seed order, failed run left out
    assert cells[("t", "s", "base")] == Stats(n=1, mean=5.0, std=0.0)
    empty = cells[("t", "r", "m")]
    assert empty.n == 0 and empty.n_failed == 1 and math.isnan(empty.mean)
    assert seed_stats([1.0, math.nan, 3.0]) == Stats(n=2, mean=2.0, std=1.0, n_failed=1)
    assert aggregate([]) == {}


def test_difference_and_two_standard_errors():
    diff, two_se = difference_two_se(Stats(4, 10.0, 2.0), Stats(4, 7.0, 2.0))
    assert diff == 3.0 and two_se == pytest.approx(2 * math.sqrt(2.0))   # 2·√(4/4 + 4/4)


def test_welch_p_value_matches_closed_form_t_distributions():
    # equal n = 2 and equal sample variances (2): Welch df = 2, two-sided p = 1 − |t| / √(t² + 2)
    t = (2.0 - 5.0) / math.sqrt(2 / 2 + 2 / 2)
    assert welch_p_value((1.0, 3.0), (4.0, 6.0)) == pytest.approx(1 - abs(t) / math.sqrt(t * t + 2), rel=1e-12)
    # one constant group: Welch df = 1 (Cauchy), two-sided p = 1 − (2/π)·atan|t|; t = (1 − 5) / √(2/2)
    assert welch_p_value((0.0, 2.0), (5.0, 5.0)) == pytest.approx(1 - 2 / math.pi * math.atan(4.0), rel=1e-12)
    assert welch_p_value((0.0, 2.0), (5.0, 5.0)) == welch_p_value((5.0, 5.0), (0.0, 2.0))   # two-sided


def test_welch_p_value_needs_two_runs_and_some_spread():
    assert welch_p_value((1.0,), (2.0, 3.0)) is None
    assert welch_p_value((1.0, 2.0), ()) is None
    assert welch_p_value((1.0, 1.0), (2.0, 2.0)) is None           # both constant: undefined


def test_bootstrap_ci_is_deterministic_and_covers_the_true_difference():
    rng = np.random.default_rng(123)
    a, b = tuple(rng.normal(10.0, 2.0, 200)), tuple(rng.normal(7.0, 2.0, 200))
    low, high = bootstrap_difference_ci(a, b)
    assert low < 3.0 < high and low < np.mean(a) - np.mean(b) < high
    assert high - low < 1.5                                      # ≈ 2·1.96·2·√(2/200) = 0.78
    assert bootstrap_difference_ci(a, b) == (low, high)          # same seed, same interval
    assert bootstrap_difference_ci(a, b, seed=1) != (low, high)
    wider = bootstrap_difference_ci(a, b, confidence=0.99)
    assert wider[0] < low and wider[1] > high


def test_bootstrap_ci_on_supports_known_exactly():
    # constant groups: every resample gives the observed difference
    assert bootstrap_difference_ci((3.0, 3.0), (1.0, 1.0)) == (2.0, 2.0)
    # resampled means of (0, 1) are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and 97.5%
    # percentiles of 10,000 resamples are the extremes
    assert bootstrap_difference_ci((0.0, 1.0), (0.0, 0.0)) == (0.0, 1.0)
    assert bootstrap_difference_ci((0.0,), (0.0, 1.0)) is None


def test_significance_columns_print_a_dash_below_two_runs():
    two = Stats(2, 2.0, 1.0, values=(1.0, 3.0))
    assert significance_columns(Stats(1, 5.0, 0.0, values=(5.0,)), two) == ("—", "—")
    assert significance_columns(None, two) == ("—", "—")
    p, ci = significance_columns(two, Stats(2, 5.0, 1.0, values=(4.0, 6.0)))
    assert p == "0.168" and ci == "[-5.00, -1.00]"
