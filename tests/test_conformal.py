"""Tests of core.calibration.conformal: the finite-sample quantiles and SplitConformal."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.calibration import SplitConformal, conformal_quantile, weighted_conformal_quantile
from core.calibration.conformal import conformal_rank
from core.sites import SiteTable


def heteroscedastic_sites(n_structures: int, atoms: int = 5, d: int = 4, seed: int = 0) -> SiteTable:
    """Structures of ``atoms`` sites; e = sigma(x) * chi_3 with sigma = 0.05 (1 + x_0^2), x ~ N(0, I_d)."""
    rng = np.random.default_rng(seed)
    n = n_structures * atoms
    x = rng.normal(size=(n, d))
    species = rng.choice([1, 8], size=n)
    sigma = 0.05 * (1.0 + x[:, 0] ** 2) * np.where(species == 8, 1.5, 1.0)
    errors = sigma * np.sqrt(rng.chisquare(3, size=n))  # norm of a 3-D Gaussian force error
    return SiteTable.from_arrays(
        descriptors=x, errors=errors, species=species,
        structure_ids=np.repeat(np.arange(n_structures), atoms), committee_std=sigma,
    )


def tiny_sites(errors, species=None, committee_std=None) -> SiteTable:
    errors = np.asarray(errors, dtype=float)
    n = errors.size
    return SiteTable.from_arrays(
        descriptors=np.arange(n, dtype=float)[:, None], errors=errors,
        species=np.full(n, 1) if species is None else species, structure_ids=np.arange(n),
        committee_std=committee_std,
    )


# ------------------------------------------------------------------ conformal_quantile
@pytest.mark.parametrize(
    "scores, confidence, expected",
    [
        ([3.0, 1.0, 2.0, 5.0, 4.0], 0.5, 3.0),  # rank ceil(6 * 0.5) = 3
        ([3.0, 1.0, 2.0, 5.0, 4.0], 0.8, 5.0),  # rank ceil(4.8) = 5 = n
        ([3.0, 1.0, 2.0, 5.0, 4.0], 0.9, math.inf),  # rank ceil(5.4) = 6 > n
        ([3.0, 1.0, 2.0, 5.0, 4.0], 0.1, 1.0),  # rank ceil(0.6) = 1
        ([10.0, 30.0, 20.0], 0.5, 20.0),  # (n + 1) * conf = 2 exactly -> rank 2
        ([10.0, 30.0, 20.0], 0.5000001, 30.0),  # just above an integer -> next rank
        ([1.0, 2.0, 2.0, 2.0, 5.0], 0.5, 2.0),  # ties: rank 3 is inside the run of 2s
        ([1.0, 2.0, 2.0, 2.0, 5.0], 0.7, 5.0),  # rank ceil(4.2) = 5
        ([7.0], 0.4, 7.0),  # rank ceil(0.8) = 1
        ([7.0], 0.5, 7.0),  # rank 1
        ([7.0], 0.51, math.inf),  # rank ceil(1.02) = 2 > 1
        ([], 0.1, math.inf),  # no scores at all
        ([4.0, 1.0, 3.0, 2.0], 1e-12, 1.0),  # tiny confidence -> the minimum
        ([4.0, 1.0, 3.0, 2.0], 0.999999, math.inf),
    ],
)
def test_conformal_quantile_hand_computed(scores, confidence, expected):
    assert conformal_quantile(scores, confidence) == expected


def test_conformal_rank_is_not_moved_by_float_round_off():
    # 100 * 0.07 = 7.000000000000001 in float64; the rank must stay 7
    assert 100 * 0.07 > 7
    assert conformal_rank(99, 0.07) == 7
    assert conformal_quantile(np.arange(1.0, 100.0), 0.07) == 7.0
    assert conformal_rank(9, 0.9) == 9


def test_conformal_quantile_matches_full_sort_for_many_n():
    rng = np.random.default_rng(3)
    for n in (1, 2, 9, 10, 11, 99, 1000, 10001):
        s = rng.exponential(size=n)
        for conf in (0.05, 0.5, 0.9, 0.95, 0.99):
            k = math.ceil((n + 1) * conf)
            expected = np.sort(s)[k - 1] if k <= n else math.inf
            assert conformal_quantile(s, conf) == expected


def test_conformal_quantile_leaves_input_alone_unless_allowed():
    s = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    before = s.copy()
    assert conformal_quantile(s, 0.5) == 3.0
    np.testing.assert_array_equal(s, before)
    assert conformal_quantile(s, 0.5, overwrite_input=True) == 3.0
    assert s[2] == 3.0 and not np.array_equal(s, before)  # partitioned in place


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1, math.nan, True, "0.9", None])
def test_conformal_quantile_rejects_bad_confidence(bad):
    with pytest.raises(ValueError, match=r"confidence: .*got " + repr(bad).replace("(", r"\(").replace(".", r"\.")):
        conformal_quantile([1.0, 2.0], bad)


def test_conformal_quantile_rejects_bad_scores():
    with pytest.raises(ValueError, match=r"scores: contains NaN \(first at index 1\)"):
        conformal_quantile([1.0, math.nan, 2.0], 0.5)
    with pytest.raises(ValueError, match=r"scores: expected a 1-D array, got shape \(2, 2\)"):
        conformal_quantile(np.ones((2, 2)), 0.5)


# --------------------------------------------------------- weighted_conformal_quantile
def test_weighted_quantile_hand_computed():
    scores, weights = [3.0, 1.0, 2.0], [2.0, 1.0, 1.0]  # sorted: 1 (w1), 2 (w1), 3 (w2); cumulative 1, 2, 4
    # test weight 1: threshold 0.5 * (4 + 1) = 2.5 -> first cumulative >= 2.5 is 4 -> score 3
    assert weighted_conformal_quantile(scores, weights, 1.0, 0.5) == 3.0
    # test weight 0: threshold 2 -> score 2
    assert weighted_conformal_quantile(scores, weights, 0.0, 0.5) == 2.0
    # threshold 0.9 * 5 = 4.5 > 4: the test point's own mass at +inf decides
    assert weighted_conformal_quantile(scores, weights, 1.0, 0.9) == math.inf
    out = weighted_conformal_quantile(scores, weights, [0.0, 1.0, 10.0], 0.5)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, [2.0, 3.0, math.inf])
    assert isinstance(weighted_conformal_quantile(scores, weights, 1.0, 0.5), float)


def test_weighted_quantile_equals_unweighted_for_equal_weights():
    rng = np.random.default_rng(0)
    for n in list(range(1, 25)) + [99, 500]:
        s = rng.normal(size=n)
        for conf in (0.07, 0.1, 0.5, 0.8, 0.9, 0.95, 0.99):
            expected = conformal_quantile(s, conf)
            for w in (1.0, 0.37, 1e-3):
                got = weighted_conformal_quantile(s, np.full(n, w), w, conf)
                assert got == expected, (n, conf, w)


def test_weighted_quantile_rejects_bad_weights():
    with pytest.raises(ValueError, match=r"weights: expected shape \(3,\) \(one per score\), got \(2,\)"):
        weighted_conformal_quantile([1.0, 2.0, 3.0], [1.0, 1.0], 1.0, 0.5)
    with pytest.raises(ValueError, match=r"weights: must be >= 0, got -1\.0 at index 1"):
        weighted_conformal_quantile([1.0, 2.0], [1.0, -1.0], 1.0, 0.5)
    with pytest.raises(ValueError, match=r"weights: must be finite, got nan"):
        weighted_conformal_quantile([1.0, 2.0], [1.0, math.nan], 1.0, 0.5)
    with pytest.raises(ValueError, match=r"weights: all weights are zero"):
        weighted_conformal_quantile([1.0, 2.0], [0.0, 0.0], 1.0, 0.5)
    with pytest.raises(ValueError, match=r"test_weights: must be >= 0, got -2\.0"):
        weighted_conformal_quantile([1.0, 2.0], [1.0, 1.0], [1.0, -2.0], 0.5)
    with pytest.raises(ValueError, match=r"confidence: .*got 1\.5"):
        weighted_conformal_quantile([1.0, 2.0], [1.0, 1.0], 1.0, 1.5)


# ---------------------------------------------------------------------- SplitConformal
def test_split_conformal_hand_computed():
    sites = tiny_sites([4.0, 1.0, 3.0, 2.0])
    cal = SplitConformal(confidence=0.6).fit(sites)  # rank ceil(5 * 0.6) = 3 -> 3.0
    assert cal.quantile_ == 3.0
    np.testing.assert_array_equal(cal.predict(sites), [3.0, 3.0, 3.0, 3.0])
    np.testing.assert_array_equal(cal.scores_, [4.0, 1.0, 3.0, 2.0])
    # levels 0.2 -> rank 1, 0.6 -> rank 3, 0.8 -> rank 4, 0.9 -> rank 5 > 4
    lv = cal.predict_levels(sites, [0.2, 0.6, 0.8, 0.9])
    assert lv.shape == (4, 4)
    np.testing.assert_array_equal(lv[0], [1.0, 3.0, 4.0, math.inf])
    assert cal.name == "split" and cal.label == "split CP"


def test_split_conformal_normalised_by_committee():
    sites = tiny_sites([1.0, 4.0, 9.0, 2.0], committee_std=[1.0, 2.0, 3.0, 4.0])
    cal = SplitConformal(confidence=0.6, heuristic="committee").fit(sites)
    np.testing.assert_allclose(cal.scores_, [1.0, 2.0, 3.0, 0.5])  # e / u
    assert cal.quantile_ == 2.0  # rank 3 of (0.5, 1, 2, 3)
    np.testing.assert_allclose(cal.predict(sites), [2.0, 4.0, 6.0, 8.0])  # q * u
    assert cal.name == "committee" and cal.label == "committee-normalised CP"


def test_mondrian_one_quantile_per_species_and_fallback():
    sites = tiny_sites([1.0, 2.0, 3.0, 10.0, 20.0, 30.0], species=[1, 1, 1, 8, 8, 8])
    cal = SplitConformal(confidence=0.5, mondrian=True).fit(sites)
    # per species: n = 3, rank ceil(4 * 0.5) = 2; global: n = 6, rank ceil(3.5) = 4
    assert cal.quantile_ == {1: 2.0, 8: 20.0}
    assert cal.global_quantile_ == 10.0
    assert cal.name == "mondrian" and cal.label == "Mondrian CP"
    new = tiny_sites([0.0, 0.0, 0.0], species=[8, 1, 6])
    np.testing.assert_array_equal(cal.predict(new), [20.0, 2.0, 10.0])  # carbon: global fallback
    assert cal.fallback_species(new) == [6] and cal.fallback_species(sites) == []
    # levels: per species rank ceil(4 p): p = 0.25 -> 1, 0.75 -> 3; global ceil(7 p): 0.25 -> 2, 0.75 -> 6
    np.testing.assert_array_equal(cal.predict_levels(new, [0.25, 0.75]), [[10.0, 30.0], [1.0, 3.0], [2.0, 30.0]])


def test_mondrian_species_with_too_few_sites_is_infinite():
    sites = tiny_sites([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 0.5], species=[1] * 10 + [8])
    cal = SplitConformal(confidence=0.9, mondrian=True).fit(sites)
    assert cal.infinite_species_ == [8]
    assert cal.quantile_[1] == 10.0  # rank ceil(11 * 0.9) = 10
    assert math.isinf(cal.quantile_[8])


def test_split_predict_levels_match_conformal_quantile_at_each_level():
    sites = heteroscedastic_sites(60, seed=1)
    test = heteroscedastic_sites(10, seed=2)
    cal = SplitConformal(confidence=0.9, heuristic="committee").fit(sites)
    levels = [0.05, 0.5, 0.9, 0.99]
    got = cal.predict_levels(test, levels)
    u = test.committee_std
    for j, p in enumerate(levels):
        np.testing.assert_allclose(got[:, j], conformal_quantile(cal.scores_, p) * u)
    np.testing.assert_allclose(got[:, 2], cal.predict(test))


def test_split_bad_inputs():
    sites = tiny_sites([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"confidence: .*got 1\.5"):
        SplitConformal(confidence=1.5)
    with pytest.raises(ValueError, match=r"heuristic: unknown name 'nearest'; valid names are constant, knn, gmm"):
        SplitConformal(heuristic="nearest")
    with pytest.raises(RuntimeError, match=r"not fitted; call fit\(\) first"):
        SplitConformal().predict(sites)
    cal = SplitConformal().fit(sites)
    with pytest.raises(ValueError, match=r"levels: every level must lie in \(0, 1\), got 1\.2"):
        cal.predict_levels(sites, [0.5, 1.2])
    with pytest.raises(TypeError, match=r"sites: expected a SiteTable, got ndarray"):
        cal.predict(np.ones((3, 1)))
    with pytest.raises(ValueError, match=r"sites: the 'force' heuristic needs predicted forces"):
        SplitConformal(heuristic="force").fit(sites)


def test_split_uses_reference_for_the_heuristic():
    ref = heteroscedastic_sites(40, seed=5)
    cal_sites = heteroscedastic_sites(40, seed=6)
    cal = SplitConformal(heuristic="knn").fit(cal_sites, reference=ref)
    np.testing.assert_allclose(cal.heuristic_.mean_, ref.descriptors.mean(axis=0))


# ------------------------------------------------------- statistical coverage (MAPIE style)
def test_split_cp_statistical_coverage_over_random_structure_splits():
    """Mean test coverage of split CP over R = 100 seeded by-structure splits.

    Data: 200 structures x 5 atoms, e = sigma(x) chi_3 (heteroscedastic); each split puts
    100 structures (n = 500 sites) in calibration and 100 (500 sites) in test. For
    exchangeable continuous scores E[coverage] lies in [1 - a, 1 - a + 1/(n + 1)] =
    [0.9, 0.902]. One split's coverage has variance ~ a(1-a)/(n+2) (the Beta spread of the
    calibration quantile) + a(1-a)/n_test (binomial test noise) = 0.09/502 + 0.09/500, i.e. a
    standard deviation 0.019; the mean of 100 splits has standard error 0.0019. Tolerance:
    4 standard errors (0.0076) on either side of the interval. Normalised (committee) CP must
    satisfy the same bound.
    """
    alpha, R = 0.1, 100
    data = heteroscedastic_sites(200, seed=11)
    covs = {"split": [], "committee": []}
    n_cal = None
    for r in range(R):
        cal_sites, test = data.split(0.5, seed=r)
        n_cal = len(cal_sites)
        for h in covs:
            cal = SplitConformal(confidence=1 - alpha, heuristic="constant" if h == "split" else h).fit(cal_sites)
            covs[h].append(np.mean(test.errors <= cal.predict(test)))
    assert n_cal == 500
    se = math.sqrt(alpha * (1 - alpha) / (n_cal + 2) + alpha * (1 - alpha) / 500) / math.sqrt(R)
    lo, hi = 1 - alpha - 4 * se, 1 - alpha + 1 / (n_cal + 1) + 4 * se
    for h, c in covs.items():
        assert lo <= np.mean(c) <= hi, (h, np.mean(c), lo, hi)
