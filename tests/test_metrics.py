"""core.metrics on hand-computed fixtures (values, not "it ran")."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from core import metrics as M

# Fixture A: 5 sites. Covered (e <= w): T F T F T.
E = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
W = np.array([0.15, 0.1, 0.35, 0.3, 0.6])


# ----------------------------------------------------------------------------- basic
def test_coverage_gap_mean_width_ratio_by_hand():
    assert M.coverage(E, W) == pytest.approx(3 / 5)
    assert M.coverage_gap(E, W, 0.9) == pytest.approx(0.6 - 0.9)
    assert M.mean_width(W) == pytest.approx(1.5 / 5)
    assert M.width_ratio(W, np.full(5, 0.2)) == pytest.approx(0.3 / 0.2)
    # reference of another length is fine: it is a ratio of means
    assert M.width_ratio(W, [0.1, 0.5]) == pytest.approx(1.0)


def test_coverage_counts_equality_as_covered_and_inf_widths():
    assert M.coverage([1.0, 2.0], [1.0, 1.999]) == 0.5
    assert M.coverage([1.0, 2.0], [np.inf, np.inf]) == 1.0


def test_spearman_and_pearson_by_hand():
    # ranks of W per site: [2, 1, 4, 3, 5]; d = [1, -1, 1, -1, 0]; rho = 1 - 6*4/(5*24) = 0.8
    assert M.spearman(E, W) == pytest.approx(0.8)
    # deviations: e [-.2,-.1,0,.1,.2], w [-.15,-.2,.05,0,.3]: cov .11, ss_e .1, ss_w .155
    assert M.pearson(E, W) == pytest.approx(0.11 / math.sqrt(0.1 * 0.155))
    assert M.spearman(E, W) == pytest.approx(stats.spearmanr(W, E)[0])


def test_spearman_with_ties_matches_scipy():
    e = np.array([0.1, 0.1, 0.2, 0.5, 0.4, 0.4])
    w = np.array([1.0, 2.0, 2.0, 3.0, 3.0, 1.0])
    assert M.spearman(e, w) == pytest.approx(stats.spearmanr(w, e)[0])


@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_correlation_undefined_for_constant_widths_or_errors(method):
    value, reason = M.correlation_or_reason(E, np.full(5, 0.3), method)
    assert value is None and "widths are constant" in reason
    value, reason = M.correlation_or_reason(np.full(5, 0.3), W, method)
    assert value is None and "errors are constant" in reason
    value, reason = M.correlation_or_reason([0.1], [0.2], method)
    assert value is None and "fewer than 2" in reason
    assert getattr(M, method)(E, np.full(5, 0.3)) is None
    value, reason = M.correlation_or_reason(E, W, method)
    assert reason is None and value is not None


def test_pearson_undefined_with_inf_widths_but_spearman_defined():
    w = np.array([0.15, 0.1, 0.35, 0.3, np.inf])
    assert M.pearson(E, w) is None
    assert M.correlation_or_reason(E, w, "pearson")[1] == "undefined: widths contain inf"
    assert M.spearman(E, w) == pytest.approx(0.8)


# ----------------------------------------------------------------------------- auroc
def test_auroc_by_hand():
    # top 10 % of 5 sites -> 1 positive (e=.5, w=.6, the largest width) -> 1.0
    assert M.auroc(E, W) == pytest.approx(1.0)
    # top 40 % -> positives e=.4 (w=.3), e=.5 (w=.6); negatives w = .15, .1, .35
    # w=.3 beats 2 of 3, w=.6 beats 3 of 3 -> 5/6
    assert M.auroc(E, W, top_fraction=0.4) == pytest.approx(5 / 6)


def test_auroc_tied_widths_count_half():
    # positive e=4 (w=2) vs negatives w = 1, 2, 2 -> (1 + .5 + .5) / 3
    assert M.auroc([1, 2, 3, 4], [1, 2, 2, 2], top_fraction=0.25) == pytest.approx(2 / 3)
    assert M.auroc([1, 2, 3, 4], [5, 5, 5, 5], top_fraction=0.25) == pytest.approx(0.5)


def test_auroc_tied_errors_at_the_cut_are_all_positive():
    # k = 1 but two sites share the top error 3 -> positives w = 2, 1; negatives w = .5, 1
    # pairs: 2>.5, 2>1, 1>.5, 1=1 (half) -> 3.5 / 4
    assert M.auroc([1, 3, 3, 2], [0.5, 2, 1, 1], top_fraction=0.25) == pytest.approx(0.875)


def test_auroc_positive_count_robust_to_float_rounding():
    # 0.1 * 30 = 3.0000000000000004 must flag 3 sites, not 4
    e = np.arange(30, dtype=float)
    w = np.r_[np.zeros(26), 1.0, 2.0, 2.0, 2.0]  # site 26 (4th largest error) has a high width
    # positives: e = 27, 28, 29 (w = 2); negatives include w = 1 -> AUROC 1.0; with 4 positives it would be < 1
    assert M.auroc(e, w) == pytest.approx(1.0)


def test_auroc_undefined_when_all_errors_equal():
    assert M.auroc([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None


# ----------------------------------------------------------------------------- curves
def test_observed_coverage_curve_and_area_by_hand():
    e = np.array([0.1, 0.2, 0.3, 0.4])
    Wl = np.array([[0.05, 0.2], [0.1, 0.3], [0.35, 0.5], [0.2, 0.35]])
    obs = M.observed_coverage_curve(e, Wl, [0.5, 0.9])
    np.testing.assert_allclose(obs, [0.25, 0.75])
    assert obs.shape == (2,)
    # (|.25 - .5| + |.75 - .9|) / 2
    assert M.miscalibration_area(e, Wl, [0.5, 0.9]) == pytest.approx(0.2)
    assert M.miscalibration_area(e, Wl, [0.25, 0.75]) == pytest.approx(0.0)


def test_calibration_levels_constant():
    assert M.CALIBRATION_LEVELS.shape == (19,)
    assert M.CALIBRATION_LEVELS[0] == 0.05 and M.CALIBRATION_LEVELS[-1] == 0.95
    np.testing.assert_allclose(np.diff(M.CALIBRATION_LEVELS), 0.05)


def test_miscalibration_area_default_levels():
    e = np.arange(1, 21, dtype=float)  # 20 errors 1..20
    p = M.CALIBRATION_LEVELS
    perfect = np.tile(20 * p + 1e-9, (20, 1))  # covers exactly the 20p smallest -> observed = p
    assert M.miscalibration_area(e, perfect) == pytest.approx(0.0, abs=1e-12)
    low = np.tile(20 * p - 1 + 1e-9, (20, 1))  # one site fewer everywhere -> |obs - p| = 0.05
    assert M.miscalibration_area(e, low) == pytest.approx(0.05)
    with pytest.raises(ValueError, match=r"levels: not given, so the 19 CALIBRATION_LEVELS.*widths_at_levels has 2 columns"):
        M.miscalibration_area(e, np.ones((20, 2)))


# ----------------------------------------------------------------------------- species, pinball
def test_species_coverage_and_worst_by_hand():
    sc = M.species_coverage(E, W, [8, 1, 8, 8, 1])
    # H: sites 1, 4 -> F, T -> 1/2 ; O: sites 0, 2, 3 -> T, T, F -> 2/3
    assert sc == pytest.approx({1: 0.5, 8: 2 / 3})
    assert list(sc) == [1, 8] and all(type(k) is int for k in sc)
    assert M.worst_species_coverage(E, W, [8, 1, 8, 8, 1]) == pytest.approx(0.5)


def test_pinball_by_hand():
    # r = e - w = [-.05, .1, -.05, .1, -.1]; level .9: .1*|r| below, .9*r above
    # = .005 + .09 + .005 + .09 + .01 = .2 -> mean .04
    assert M.pinball_loss(E, W, 0.9) == pytest.approx(0.04)
    # level .5 is half the mean absolute deviation
    assert M.pinball_loss(E, W, 0.5) == pytest.approx(0.5 * np.mean(np.abs(E - W)))


# ----------------------------------------------------------------------------- structures
SE = np.array([0.1, 0.9, 0.4, 0.2, 0.3, 0.5])
SW = np.array([0.5, 0.2, 0.1, 0.3, 0.8, 0.4])
SID = np.array([3, 3, 1, 1, 2, 5])


def test_structure_maxima_by_hand():
    me, mw = M.structure_maxima(SE, SW, SID)
    # structures in order 1, 2, 3, 5
    np.testing.assert_allclose(me, [0.4, 0.3, 0.9, 0.5])
    np.testing.assert_allclose(mw, [0.3, 0.8, 0.5, 0.4])


def test_structure_spearman_and_auroc_by_hand():
    # ranks e [2,1,4,3], w [1,4,3,2]; d = [1,-3,1,1]; rho = 1 - 6*12/(4*15) = -0.2
    assert M.structure_spearman(SE, SW, SID) == pytest.approx(-0.2)
    # top 10 % of 4 -> structure 3 (w .5) vs negatives .3, .8, .4 -> 2/3
    assert M.structure_auroc(SE, SW, SID) == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- spearman_ideal
def test_spearman_ideal_limits():
    assert M.spearman_ideal(np.full(50, 0.3), 0.9) is None
    rng = np.random.default_rng(1)
    flat = M.spearman_ideal(1.0 + 1e-9 * rng.random(400), 0.9, seed=0)
    assert abs(flat) < 0.1  # widths carry no information -> ~0
    spread = M.spearman_ideal(np.logspace(-3, 3, 200), 0.9, seed=0)
    assert spread > 0.95  # widths over 6 decades -> errors follow their ranks


def test_spearman_ideal_matches_independent_simulation_and_is_seeded():
    w = np.random.default_rng(2).lognormal(sigma=0.7, size=300)
    ours = M.spearman_ideal(w, 0.9, seed=3, n_draws=64)
    # independent: scipy's chi distribution, scaled so the 0.9-quantile is w
    sigma = w / stats.chi.ppf(0.9, 3)
    rhos = [
        stats.spearmanr(w, stats.chi.rvs(3, size=w.size, random_state=s) * sigma)[0] for s in range(64)
    ]
    assert ours == pytest.approx(np.mean(rhos), abs=0.03)
    assert M.spearman_ideal(w, 0.9, seed=3, n_draws=64) == ours
    assert M.spearman_ideal(w, 0.9, seed=4, n_draws=64) != ours
    # ranks are scale-free, so the confidence level cannot change it for the same seed
    assert M.spearman_ideal(w, 0.5, seed=3, n_draws=64) == pytest.approx(ours)


# ----------------------------------------------------------------------------- bootstrap
def _blocky():
    """10 structures x 50 sites; structures 0-4 fully covered, 5-9 fully uncovered."""
    ids = np.repeat(np.arange(10), 50)
    e = np.ones(500)
    w = np.where(ids < 5, 2.0, 0.5)
    return e, w, ids


def test_bootstrap_resamples_whole_structures():
    e, w, ids = _blocky()
    seen = []

    def stat(ee, ww):
        seen.append((ee.size, M.coverage(ee, ww)))
        return M.coverage(ee, ww)

    lo, hi = M.bootstrap_ci(e, w, ids, stat, n_boot=200, seed=0)
    assert len(seen) == 200
    for size, cov in seen:
        assert size == 500  # 10 structures of 50 sites drawn each time
        assert cov * 10 == pytest.approx(round(cov * 10))  # coverage moves in steps of one structure
    assert lo <= 0.5 <= hi
    # by structure the interval is wide (binomial over 10 structures); by atom it would be ~[0.46, 0.54]
    assert hi - lo >= 0.3


def test_bootstrap_seeded_and_contains_estimate():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(40), 5)
    w = rng.lognormal(size=200)
    e = w * np.sqrt(rng.chisquare(3, 200)) / 2
    a = M.bootstrap_ci(e, w, ids, M.spearman, n_boot=100, seed=7)
    assert a == M.bootstrap_ci(e, w, ids, M.spearman, n_boot=100, seed=7)
    assert a != M.bootstrap_ci(e, w, ids, M.spearman, n_boot=100, seed=8)
    assert a[0] <= M.spearman(e, w) <= a[1]
    assert all(type(x) is float for x in a)


def test_bootstrap_all_undefined_gives_none():
    assert M.bootstrap_ci(E, np.full(5, 1.0), [0, 0, 1, 1, 2], M.spearman, n_boot=20) == (None, None)


# ----------------------------------------------------------------------------- report
def _report_inputs():
    rng = np.random.default_rng(0)
    n = 120
    ids = np.repeat(np.arange(24), 5)
    w = rng.lognormal(size=n)
    e = w * np.sqrt(rng.chisquare(3, n)) / 2.5
    species = rng.choice([1, 6, 8], n)
    levels = M.CALIBRATION_LEVELS
    Wl = np.outer(w, stats.chi.ppf(levels, 3) / stats.chi.ppf(0.9, 3))
    return e, w, ids, species, Wl


def test_calibration_report_keys_values_and_json():
    e, w, ids, species, Wl = _report_inputs()
    ood = np.arange(120) % 4 == 0
    rep = M.calibration_report(
        e, w, 0.9, species=species, structure_ids=ids, widths_at_levels=Wl, reference_widths=np.full(120, 2.0),
        n_calibration=40, ood=ood,
    )
    assert list(rep) == M.REPORT_KEYS
    assert rep["n_sites"] == 120 and rep["n_structures"] == 24
    assert rep["coverage"] == pytest.approx(M.coverage(e, w))
    assert rep["coverage_gap"] == pytest.approx(M.coverage(e, w) - 0.9)
    assert rep["mean_width"] == pytest.approx(np.mean(w))
    assert rep["width_ratio"] == pytest.approx(np.mean(w) / 2.0)
    assert rep["spearman"] == pytest.approx(M.spearman(e, w)) and rep["spearman_note"] is None
    assert rep["pearson"] == pytest.approx(M.pearson(e, w))
    assert rep["spearman_ideal"] == pytest.approx(M.spearman_ideal(w, 0.9, seed=0))
    assert rep["auroc"] == pytest.approx(M.auroc(e, w))
    assert rep["miscalibration_area"] == pytest.approx(M.miscalibration_area(e, Wl))
    assert rep["species_coverage"] == pytest.approx({str(k): v for k, v in M.species_coverage(e, w, species).items()})
    assert rep["worst_species_coverage"] == pytest.approx(M.worst_species_coverage(e, w, species))
    assert rep["pinball"] == pytest.approx(M.pinball_loss(e, w, 0.9))
    assert rep["structure_spearman"] == pytest.approx(M.structure_spearman(e, w, ids))
    assert rep["structure_auroc"] == pytest.approx(M.structure_auroc(e, w, ids))
    assert (rep["coverage_expected_lo"], rep["coverage_expected_hi"]) == M.expected_coverage_interval(40, 0.9, n_test=24)
    assert rep["coverage_outside_expected"] is (not rep["coverage_expected_lo"] <= rep["coverage"] <= rep["coverage_expected_hi"])
    assert rep["ood_fraction"] == 0.25
    assert rep["coverage_in_domain"] == pytest.approx(M.coverage(e[~ood], w[~ood]))
    assert rep["coverage_out_of_domain"] == pytest.approx(M.coverage(e[ood], w[ood]))
    for k in M.REPORT_COLUMNS:
        assert type(rep[k]) in ((bool,) if k == "coverage_outside_expected" else (int, float)), k
    json.loads(json.dumps(rep, allow_nan=False))


def test_calibration_report_optional_parts_are_none():
    rep = M.calibration_report(E, np.full(5, 0.3), 0.9)
    assert list(rep) == M.REPORT_KEYS
    for k in ("n_structures", "width_ratio", "miscalibration_area", "species_coverage",
              "worst_species_coverage", "structure_spearman", "structure_auroc", "spearman", "pearson",
              "spearman_ideal", "coverage_expected_lo", "coverage_expected_hi", "coverage_outside_expected",
              "ood_fraction", "coverage_in_domain", "coverage_out_of_domain"):
        assert rep[k] is None, k
    assert "widths are constant" in rep["spearman_note"]
    assert rep["coverage"] == pytest.approx(0.6)  # e <= .3 for .1 .2 .3
    assert M.calibration_report(E, np.full(5, 0.3), levels=[0.5])["miscalibration_area"] is None  # levels alone: ignored
    json.dumps(rep, allow_nan=False)


def test_calibration_report_bootstrap_keys():
    e, w, ids, _, _ = _report_inputs()
    rep = M.calibration_report(e, w, structure_ids=ids, bootstrap=50, seed=1)
    assert list(rep) == M.REPORT_KEYS + ["coverage_ci", "spearman_ci"]
    lo, hi = rep["coverage_ci"]
    assert lo <= rep["coverage"] <= hi
    assert rep["spearman_ci"][0] <= rep["spearman"] <= rep["spearman_ci"][1]
    assert rep == M.calibration_report(e, w, structure_ids=ids, bootstrap=50, seed=1)
    json.dumps(rep, allow_nan=False)


def test_report_table():
    e, w, ids, species, _ = _report_inputs()
    reports = {
        "flexible": M.calibration_report(e, w, species=species, structure_ids=ids),
        "split": M.calibration_report(e, np.full(120, 1.5)),
    }
    df = M.report_table(reports)
    assert list(df.columns) == M.REPORT_COLUMNS
    assert list(df.index) == ["flexible", "split"] and df.index.name == "method"
    assert df.loc["flexible", "coverage"] == pytest.approx(reports["flexible"]["coverage"])
    assert np.isnan(df.loc["split", "spearman"]) and np.isnan(df.loc["split", "n_structures"])
    with pytest.raises(ValueError, match="reports"):
        M.report_table({})


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: M.coverage(np.ones((5, 2)), W), r"errors: expected a 1-D array, got array of shape \(5, 2\)"),
        (lambda: M.coverage(E, W[:4]), r"widths: expected 5 rows.*got shape \(4,\)"),
        (lambda: M.coverage([0.1, -0.2], [1, 1]), r"errors: must be >= 0.*-0.2"),
        (lambda: M.coverage([0.1, np.nan], [1, 1]), r"errors: must be finite, got nan"),
        (lambda: M.coverage([0.1, 0.2], [1, np.nan]), r"widths: contains NaN"),
        (lambda: M.coverage([0.1, 0.2], [1, -1]), r"widths: must be >= 0.*-1"),
        (lambda: M.coverage([], []), r"errors: expected at least one value"),
        (lambda: M.coverage(None, W), r"errors: these sites carry no reference labels \(errors=None\)"),
        (lambda: M.coverage(E, None), r"widths: expected an array, got None"),
        (lambda: M.coverage(["a"], W), r"errors: expected a numeric array"),
        (lambda: M.coverage_gap(E, W, 1.5), r"confidence: expected a number in \(0, 1\), got 1.5"),
        (lambda: M.coverage_gap(E, W, True), r"confidence: .*got True"),
        (lambda: M.width_ratio(W, [0.0, 0.0]), r"reference_widths: mean is 0"),
        (lambda: M.correlation_or_reason(E, W, "kendall"), r"method: .*got 'kendall'"),
        (lambda: M.auroc(E, W, top_fraction=0), r"top_fraction: .*got 0"),
        (lambda: M.observed_coverage_curve(E, np.ones(5), [0.5]), r"widths_at_levels: expected a 2-D array, got array of shape \(5,\)"),
        (lambda: M.observed_coverage_curve(E, np.ones((4, 1)), [0.5]), r"widths_at_levels: expected 5 rows"),
        (lambda: M.observed_coverage_curve(E, np.ones((5, 2)), [0.5, 1.0]), r"levels: every level must be in \(0, 1\), got \[0.5, 1.0\]"),
        (lambda: M.species_coverage(E, W, [1, 2]), r"species: expected shape \(5,\).*got array of shape \(2,\)"),
        (lambda: M.species_coverage(E, W, [1.5] * 5), r"species: expected integers, got dtype float64"),
        (lambda: M.pinball_loss(E, W, 0), r"level: .*got 0"),
        (lambda: M.structure_maxima(E, W, [0, 1]), r"structure_ids: expected shape \(5,\)"),
        (lambda: M.spearman_ideal(W, 0.9, n_draws=0), r"n_draws: expected an integer >= 1, got 0"),
        (lambda: M.bootstrap_ci(E, W, [0] * 5, "coverage"), r"statistic: expected a callable.*'coverage'"),
        (lambda: M.bootstrap_ci(E, W, [0] * 5, M.coverage, n_boot=0), r"n_boot: .*got 0"),
        (lambda: M.bootstrap_ci(E, W, [0] * 5, M.coverage, level=95), r"level: .*got 95"),
        (lambda: M.calibration_report(E, W, bootstrap=10), r"bootstrap: needs structure_ids"),
        (lambda: M.calibration_report(E, W, bootstrap=-1), r"bootstrap: expected an integer >= 0, got -1"),
        (lambda: M.calibration_report(E, W, widths_at_levels=np.ones((5, 3))), r"levels: not given.*has 3 columns"),
        (lambda: M.calibration_report(E, W, confidence=90), r"confidence: .*got 90"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
