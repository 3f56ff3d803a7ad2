"""Expected coverage spread (issue 15 item 2, METHOD §6) and the report's spread / out-of-domain keys."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from core import metrics as M
from core.calibration.conformal import conformal_quantile
from core.metrics import expected_coverage_interval


# ------------------------------------------------------------------------------ the interval
@pytest.mark.parametrize("n, confidence, k", [(9, 0.9, 9), (19, 0.95, 19), (99, 0.9, 90), (4, 0.2, 1)])
def test_beta_interval_hand_computed(n, confidence, k):
    """k = ceil((n + 1) c); coverage ~ Beta(k, n + 1 - k). Closed forms where the Beta is a power law:
    Beta(n, 1) has CDF x^n (quantile q^(1/n)); Beta(1, n) has quantile 1 - (1 - q)^(1/n)."""
    lo, hi = expected_coverage_interval(n, confidence)
    if k == n:
        assert lo == pytest.approx(0.025 ** (1 / n), rel=1e-12) and hi == pytest.approx(0.975 ** (1 / n), rel=1e-12)
    elif k == 1:
        assert lo == pytest.approx(1 - 0.975 ** (1 / n), rel=1e-12) and hi == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-12)
    assert lo == pytest.approx(stats.beta.ppf(0.025, k, n + 1 - k), rel=1e-12)
    assert hi == pytest.approx(stats.beta.ppf(0.975, k, n + 1 - k), rel=1e-12)
    lo80, hi80 = expected_coverage_interval(n, confidence, level=0.8)
    assert lo < lo80 < hi80 < hi


def test_known_values_and_shrinking_with_n():
    lo, hi = expected_coverage_interval(100, 0.9)  # Beta(91, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.836, 0.951)
    widths = [np.subtract(*expected_coverage_interval(n, 0.9)[::-1]) for n in (20, 100, 1000, 10000)]
    assert all(a > b for a, b in zip(widths, widths[1:]))
    assert widths[-1] == pytest.approx(2 * 1.96 * math.sqrt(0.09 / 10000), rel=0.05)  # normal limit


def test_beta_binomial_widening_for_a_finite_test_set():
    n, m, c = 100, 40, 0.9
    lo, hi = expected_coverage_interval(n, c, n_test=m)
    assert lo == stats.betabinom.ppf(0.025, m, 91, 10) / m and hi == stats.betabinom.ppf(0.975, m, 91, 10) / m
    blo, bhi = expected_coverage_interval(n, c)
    assert lo < blo and hi > bhi  # wider than the infinite-test interval
    mass = stats.betabinom.cdf(hi * m, m, 91, 10) - stats.betabinom.cdf(lo * m - 1, m, 91, 10)
    assert mass >= 0.95  # discrete quantiles: at least the requested mass
    # a huge test set tends to the Beta interval
    lo_big, hi_big = expected_coverage_interval(n, c, n_test=10**6)
    assert lo_big == pytest.approx(blo, abs=2e-3) and hi_big == pytest.approx(bhi, abs=2e-3)


def test_too_few_units_use_the_smallest_size_whose_rank_fits():
    """5 structures at 0.9: rank ceil(5.4) = 6 > 5; the law is taken at n = 9 (Beta(9, 1)), not (1, 1)."""
    from scipy import stats

    lo, hi = expected_coverage_interval(5, 0.9)
    assert (lo, hi) == expected_coverage_interval(9, 0.9)
    assert lo == pytest.approx(stats.beta.ppf(0.025, 9, 1)) and hi == pytest.approx(stats.beta.ppf(0.975, 9, 1))
    assert lo < 0.7  # a wide, honest interval instead of a spurious (1.0, 1.0)
    assert expected_coverage_interval(5, 0.9, n_test=10) == expected_coverage_interval(9, 0.9, n_test=10)


def test_simulated_split_cp_coverage_falls_inside_about_95_percent_of_the_time():
    """2000 draws of split CP on exchangeable data: n = 100 calibration scores, m = 300 test points.

    Scores ~ Exp(1) (any continuous law gives the same coverage distribution). Measured: the
    observed coverage falls inside the n_test interval in 95.75 % of the draws (the discrete
    beta-binomial quantiles make it slightly conservative), inside the Beta interval alone in only
    92 % (too narrow: it ignores the finite test set); the true conditional coverage 1 - exp(-q)
    falls inside the Beta interval in ~95 %. Binomial se of a fraction over 2000 draws: 0.005;
    asserted within [0.935, 0.975].
    """
    n, m, c, draws = 100, 300, 0.9, 2000
    rng = np.random.default_rng(7)
    lo_t, hi_t = expected_coverage_interval(n, c, n_test=m)
    lo_b, hi_b = expected_coverage_interval(n, c)
    observed, true = np.empty(draws), np.empty(draws)
    for r in range(draws):
        q = conformal_quantile(rng.exponential(size=n), c)
        observed[r] = np.mean(rng.exponential(size=m) <= q)
        true[r] = 1.0 - math.exp(-q)
    inside_obs = np.mean((observed >= lo_t) & (observed <= hi_t))
    inside_true = np.mean((true >= lo_b) & (true <= hi_b))
    assert 0.935 <= inside_obs <= 0.975, inside_obs
    assert 0.935 <= inside_true <= 0.965, inside_true
    assert np.mean((observed >= lo_b) & (observed <= hi_b)) < inside_obs - 0.02
    assert np.mean(true) == pytest.approx(91 / 101, abs=0.005)  # E[Beta(91, 10)]


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(n_calibration=0, confidence=0.9), r"n_calibration: expected an integer >= 1, got 0"),
    (dict(n_calibration=10.5, confidence=0.9), r"n_calibration: expected an integer >= 1, got 10\.5"),
    (dict(n_calibration=10, confidence=1.5), r"confidence: expected a number in \(0, 1\), e\.g\. 0\.9, got 1\.5"),
    (dict(n_calibration=10, confidence=0.9, n_test=0), r"n_test: expected an integer >= 1, got 0"),
    (dict(n_calibration=10, confidence=0.9, level=1.0), r"level: expected a number in \(0, 1\), got 1\.0"),
])
def test_bad_inputs(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        expected_coverage_interval(**kwargs)


# ------------------------------------------------------------------------------ in the report
def _inputs(n=200, structures=40, seed=0):
    rng = np.random.default_rng(seed)
    e = rng.exponential(size=n)
    return e, np.full(n, np.quantile(e, 0.9)), np.repeat(np.arange(structures), n // structures)


def test_report_flags_a_coverage_outside_the_expected_spread():
    e, w, ids = _inputs()
    ok = M.calibration_report(e, w, 0.9, structure_ids=ids, n_calibration=60)
    lo, hi = expected_coverage_interval(60, 0.9, n_test=40)
    assert (ok["coverage_expected_lo"], ok["coverage_expected_hi"]) == (lo, hi)
    assert ok["coverage_outside_expected"] is False and lo <= ok["coverage"] <= hi
    low = M.calibration_report(e, w * 0.3, 0.9, structure_ids=ids, n_calibration=60)
    assert low["coverage"] < lo and low["coverage_outside_expected"] is True
    no_ids = M.calibration_report(e, w, 0.9, n_calibration=60)  # no test size: the Beta interval
    assert (no_ids["coverage_expected_lo"], no_ids["coverage_expected_hi"]) == expected_coverage_interval(60, 0.9)
    json.dumps(low, allow_nan=False)


def test_report_ood_fraction_and_coverage_by_domain():
    e, w, ids = _inputs()
    ood = np.zeros(200, bool)
    ood[:50] = True
    w2 = w.copy()
    w2[:50] = 0.0  # out-of-domain sites all missed
    rep = M.calibration_report(e, w2, 0.9, ood=ood)
    assert rep["ood_fraction"] == 0.25
    assert rep["coverage_out_of_domain"] == 0.0
    assert rep["coverage_in_domain"] == pytest.approx(np.mean(e[50:] <= w[50:]))
    none_out = M.calibration_report(e, w, 0.9, ood=np.zeros(200, bool))
    assert none_out["ood_fraction"] == 0.0 and none_out["coverage_out_of_domain"] is None
    assert none_out["coverage_in_domain"] == none_out["coverage"]
    all_out = M.calibration_report(e, w, 0.9, ood=np.ones(200, bool))
    assert all_out["coverage_in_domain"] is None and all_out["coverage_out_of_domain"] == all_out["coverage"]
    with pytest.raises(ValueError, match=r"ood: expected a boolean array of shape \(200,\) .* got shape \(3,\)"):
        M.calibration_report(e, w, ood=np.zeros(3, bool))
    with pytest.raises(ValueError, match=r"ood: expected booleans .* got dtype float64"):
        M.calibration_report(e, w, ood=np.zeros(200))
    with pytest.raises(ValueError, match=r"n_calibration: expected an integer >= 1, got 0"):
        M.calibration_report(e, w, n_calibration=0)


def test_new_columns_in_report_table_in_documented_order():
    new = ["coverage_expected_lo", "coverage_expected_hi", "coverage_outside_expected", "ood_fraction",
           "coverage_in_domain", "coverage_out_of_domain"]
    assert M.REPORT_COLUMNS[-6:] == new and M.REPORT_KEYS[-6:] == new
    assert M.REPORT_COLUMNS[:16][-1] == "structure_auroc"  # the earlier columns keep their places
    e, w, ids = _inputs()
    table = M.report_table({
        "a": M.calibration_report(e, w * 0.3, 0.9, structure_ids=ids, n_calibration=60, ood=np.arange(200) < 20),
        "b": M.calibration_report(e, w, 0.9),
        "old": {"coverage": 0.9},  # a report from before these keys existed
    })
    assert list(table.columns) == M.REPORT_COLUMNS
    assert table.loc["a", "coverage_outside_expected"] == 1.0 and table.loc["a", "ood_fraction"] == 0.1
    assert np.isnan(table.loc["b", "coverage_expected_lo"]) and np.isnan(table.loc["old", "ood_fraction"])
    assert all(str(table[c].dtype) == "float64" for c in new)
