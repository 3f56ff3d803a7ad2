"""Tests of core.heuristics: orderings known by construction, per-species behaviour, state round trips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from core.heuristics import (
    HEURISTICS,
    SCORE_FLOOR,
    CommitteeHeuristic,
    ConstantHeuristic,
    ForceHeuristic,
    GMMHeuristic,
    KNNHeuristic,
    heuristic_from_state,
    make_heuristic,
)
from core.sites import SiteTable


def table(x, species=None, **extra) -> SiteTable:
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    n = x.shape[0]
    return SiteTable.from_arrays(
        descriptors=x, errors=np.zeros(n), species=np.ones(n, int) if species is None else species,
        structure_ids=np.arange(n), **extra,
    )


def blob(n, center, d=3, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return center + scale * rng.normal(size=(n, d))


# ------------------------------------------------------------------------- simple ones
def test_constant_is_one():
    np.testing.assert_array_equal(ConstantHeuristic().score(table([1.0, 2.0, 3.0])), [1.0, 1.0, 1.0])


def test_force_is_predicted_force_norm_and_floored():
    fp = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    u = ForceHeuristic().score(table([0.0, 1.0, 2.0], forces_pred=fp))
    np.testing.assert_allclose(u, [5.0, SCORE_FLOOR, 3.0])
    with pytest.raises(ValueError, match=r"sites: the 'force' heuristic needs predicted forces, but sites\.forces_pred is None"):
        ForceHeuristic().score(table([0.0, 1.0]))


def test_committee_is_committee_std_and_floored():
    u = CommitteeHeuristic().score(table([0.0, 1.0, 2.0], committee_std=[0.2, 0.0, 0.5]))
    np.testing.assert_allclose(u, [0.2, SCORE_FLOOR, 0.5])
    with pytest.raises(ValueError, match=r"sites\.committee_std is None"):
        CommitteeHeuristic().score(table([0.0, 1.0]))


# --------------------------------------------------------------------------------- knn
def test_knn_hand_computed_distance():
    ref = table([0.0, 1.0, 2.0, 3.0])  # mean 1.5, std sqrt(1.25)
    h = KNNHeuristic(k=2).fit(ref)
    std = math.sqrt(1.25)
    # query 10: nearest are 3 and 2 at 7 and 8 (raw units)
    np.testing.assert_allclose(h.score(table([10.0])), [7.5 / std])
    # query 1.5: nearest 1 and 2 at 0.5 each
    np.testing.assert_allclose(h.score(table([1.5])), [0.5 / std])


def test_knn_far_points_score_higher():
    ref = table(blob(300, 0.0, seed=1))
    h = KNNHeuristic().fit(ref)
    direction = np.array([1.0, 1.0, 1.0]) / math.sqrt(3)
    queries = np.stack([r * direction for r in (0.0, 1.0, 3.0, 6.0, 12.0)])
    u = h.score(table(queries))
    assert np.all(np.diff(u) > 0), u


def test_knn_searches_same_species_only():
    # species 1 lives around 0, species 8 around 10 (in every coordinate)
    x = np.vstack([blob(100, 0.0, seed=1), blob(100, 10.0, seed=2)])
    ref = table(x, species=np.r_[np.full(100, 1), np.full(100, 8)])
    h = KNNHeuristic().fit(ref)
    near_zero = np.zeros((2, 3))
    u = h.score(table(near_zero, species=[1, 8]))
    assert u[1] > 5 * u[0], u  # an oxygen-like site in hydrogen territory is far from its own species


def test_knn_excludes_self_only_for_the_identical_object():
    ref = table([0.0, 1.0, 2.0, 3.0])
    h = KNNHeuristic(k=1).fit(ref)
    std = math.sqrt(1.25)
    np.testing.assert_allclose(h.score(ref), np.full(4, 1.0 / std))  # nearest *other* site
    copy = table([0.0, 1.0, 2.0, 3.0])  # equal data, different object: self-matches count
    np.testing.assert_allclose(h.score(copy), np.full(4, SCORE_FLOOR))


def test_knn_unseen_species_gets_the_large_finite_score():
    h = KNNHeuristic(unseen_score=123.0).fit(table([0.0, 1.0, 2.0]))
    u = h.score(table([0.5, 0.5], species=[1, 6]))
    assert u[1] == 123.0
    assert u[0] == pytest.approx((0.5 + 0.5 + 1.5) / 3 / np.std([0.0, 1.0, 2.0]))  # k capped at 3
    np.testing.assert_array_equal(h.unseen_species(table([0.5], species=[6])), [6])
    assert KNNHeuristic().fit(table([0.0, 1.0])).score(table([0.0], species=[6]))[0] == 1e6


def test_knn_k_is_capped_by_the_species_size():
    h = KNNHeuristic(k=10).fit(table([0.0, 2.0]))  # 2 reference sites only; std 1, mean 1
    np.testing.assert_allclose(h.score(table([1.0])), [1.0])  # mean of distances 1 and 1


# --------------------------------------------------------------------------------- gmm
def test_gmm_outliers_score_higher_and_bic_picks_two_clusters():
    x = np.vstack([blob(200, -4.0, d=2, seed=1, scale=0.5), blob(200, 4.0, d=2, seed=2, scale=0.5)])
    h = GMMHeuristic(seed=0).fit(table(x))
    assert h.n_components_[1] == 2
    inliers = np.array([[-4.0, -4.0], [4.0, 4.0]])
    outliers = np.array([[0.0, 0.0], [10.0, -10.0]])
    u_in, u_out = h.score(table(inliers)), h.score(table(outliers))
    assert u_out.min() > u_in.max() + 5.0, (u_in, u_out)
    assert h.score(table(x)).min() == pytest.approx(1.0)  # most typical reference site scores `offset`
    assert np.all(h.score(table(x)) >= 1.0)


def test_gmm_is_per_species():
    x = np.vstack([blob(150, 0.0, d=2, seed=1), blob(150, 8.0, d=2, seed=2)])
    h = GMMHeuristic().fit(table(x, species=np.r_[np.full(150, 1), np.full(150, 8)]))
    assert sorted(h.components_) == [1, 8]
    u = h.score(table(np.zeros((2, 2)), species=[1, 8]))
    assert u[1] > u[0] + 10.0, u
    assert h.score(table(np.zeros((1, 2)), species=[6]))[0] == 1e6  # unseen species


def test_gmm_loglikelihood_matches_sklearn():
    from sklearn.mixture import GaussianMixture

    x = blob(300, 0.0, d=3, seed=4)
    h = GMMHeuristic(max_components=1).fit(table(x))
    xs = (x - h.mean_) / h.std_
    gm = GaussianMixture(1, random_state=0).fit(xs)
    comp = h.components_[1]
    np.testing.assert_allclose(h._nll(comp, xs), -gm.score_samples(xs), rtol=1e-6)


# ------------------------------------------------------------------------ state / make
@pytest.mark.parametrize("name", ["constant", "knn", "gmm", "force", "committee"])
def test_state_round_trip_gives_identical_scores(name):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    species = rng.choice([1, 8], 120)
    extra = {"forces_pred": rng.normal(size=(120, 3)), "committee_std": rng.uniform(0.1, 1, 120)}
    ref = table(x, species=species, **extra)
    h = make_heuristic(name).fit(ref)
    meta, arrays = h.get_state()
    json.dumps(meta)
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in arrays.values())
    h2 = heuristic_from_state(json.loads(json.dumps(meta)), {k: np.array(v) for k, v in arrays.items()})
    assert type(h2) is type(h)
    query = table(rng.normal(size=(30, 3)), species=rng.choice([1, 8, 6], 30),
                  forces_pred=rng.normal(size=(30, 3)), committee_std=rng.uniform(0.1, 1, 30))
    np.testing.assert_array_equal(h2.score(query), h.score(query))


def test_make_heuristic():
    for name, cls in HEURISTICS.items():
        assert isinstance(make_heuristic(name), cls)
    h = KNNHeuristic(k=3)
    assert make_heuristic(h) is h
    assert make_heuristic("knn", k=4).k == 4
    with pytest.raises(ValueError, match=r"heuristic: unknown name 'distance'; valid names are constant, knn, gmm, force, committee"):
        make_heuristic("distance")
    with pytest.raises(TypeError, match=r"heuristic: expected a name .* got int"):
        make_heuristic(3)
    with pytest.raises(ValueError, match=r"k: expected an integer >= 1, got 0"):
        make_heuristic("knn", k=0)
    with pytest.raises(ValueError, match=r"covariance_type: expected 'full' or 'diag', got 'tied'"):
        GMMHeuristic(covariance_type="tied")
    with pytest.raises(TypeError, match=r"heuristic 'force': bad parameters \['k'\]"):
        make_heuristic("force", k=3)


def test_fitted_checks_and_dimension_mismatch():
    with pytest.raises(RuntimeError, match=r"KNNHeuristic is not fitted; call fit\(\) first"):
        KNNHeuristic().score(table([0.0]))
    with pytest.raises(RuntimeError, match=r"GMMHeuristic is not fitted"):
        GMMHeuristic().get_state()
    h = KNNHeuristic().fit(table([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"sites: descriptors have 2 columns, but knn was fitted on 1"):
        h.score(table(np.zeros((1, 2))))
    with pytest.raises(TypeError, match=r"reference: expected a SiteTable, got list"):
        KNNHeuristic().fit([0.0, 1.0])


def test_gmm_species_with_one_reference_site_scores_as_unseen():
    """A species with a single reference site has no density to fit: it is scored as unseen, no crash."""
    from core.heuristics import make_heuristic

    rng = np.random.default_rng(0)
    species = np.r_[np.full(30, 1), [8]]
    ref = SiteTable.from_arrays(descriptors=rng.normal(size=(31, 2)), errors=rng.random(31), species=species,
                                structure_ids=np.arange(31))
    h = make_heuristic("gmm", unseen_score=123.0).fit(ref)
    u = h.score(ref)
    assert u.shape == (31,) and np.all(np.isfinite(u))
    assert u[-1] == 123.0
