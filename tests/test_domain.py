"""Tests of the out-of-domain score (core.domain)."""

from __future__ import annotations

import numpy as np
import pytest

from core.domain import THRESHOLD, UNSEEN_SCORE, DomainScore, structure_reduce
from core.sites import SiteTable


def temperature_sites(n_structures, temperature=(0.9, 1.1), *, atoms=8, d=4, seed=0, first_id=0, species=None):
    """Synthetic "MD frames at temperature T" with a known truth.

    Per structure T ~ U(temperature) (or a fixed T); per atom z ~ N(0, I_d) and descriptors
    x = T·z, so hotter structures lie further from cooler data at every atom. Errors
    e = 0.1 · T^1.5 · (0.5 + |z_0|) · |N(0, 1)| eV/Å grow with T (a structure-level factor
    no per-site model can see in-domain) and with |z_0| (a site-level factor q_θ can learn).
    """
    rng = np.random.default_rng(seed)
    if isinstance(temperature, tuple):
        t = rng.uniform(*temperature, size=n_structures)
    else:
        t = np.full(n_structures, float(temperature))
    ts = np.repeat(t, atoms)
    n = n_structures * atoms
    z = rng.normal(size=(n, d))
    errors = 0.1 * ts ** 1.5 * (0.5 + np.abs(z[:, 0])) * np.abs(rng.normal(size=n))
    return SiteTable.from_arrays(
        descriptors=ts[:, None] * z, errors=errors,
        species=np.ones(n, dtype=int) if species is None else rng.choice(species, size=n),
        structure_ids=first_id + np.repeat(np.arange(n_structures), atoms),
    )


def auroc(negatives, positives):
    """Probability that a positive scores above a negative (ties count half)."""
    a, b = np.asarray(negatives)[:, None], np.asarray(positives)[None, :]
    return float(np.mean((b > a) + 0.5 * (b == a)))


@pytest.fixture(scope="module")
def fitted():
    cal = temperature_sites(150, seed=1, species=(1, 8))
    return cal, DomainScore(k=5).fit(cal)


# ------------------------------------------------------------------------- behaviour
def test_auroc_on_synthetic_shift_and_threshold_meaning(fitted):
    """Held-out in-domain structures (T in [0.9, 1.1]) vs structures at T = 1.5 and 2.0.

    Measured: structure-score AUROC 0.978 (T = 1.5) and 1.000 (T = 2); in-domain flag rates
    0.7 % of sites and 0.5 % of structures (the 0.99-quantile threshold promises ~1 % of sites
    and <= 2 % of structures); flagged hot structures 71 % (T = 1.5) and 100 % (T = 2).
    """
    cal, ds = fitted
    ind = temperature_sites(200, seed=2, first_id=10_000, species=(1, 8))
    warm = temperature_sites(200, 1.5, seed=3, first_id=20_000, species=(1, 8))
    hot = temperature_sites(200, 2.0, seed=3, first_id=30_000, species=(1, 8))
    ids_in, s_in = ds.structure_scores(ind)
    ids_hot, s_hot = ds.structure_scores(hot)
    np.testing.assert_array_equal(ids_in, ind.unique_structures)
    assert auroc(s_in, ds.structure_scores(warm)[1]) >= 0.95
    assert auroc(s_in, s_hot) >= 0.99
    assert ds.flags(ind).mean() <= 0.03  # threshold 1.0 = the null's 0.99 quantile per species
    assert ds.structure_flags(ind)[1].mean() <= 0.04
    assert 0.5 <= ds.structure_flags(warm)[1].mean() < ds.structure_flags(hot)[1].mean()
    assert ds.structure_flags(hot)[1].mean() >= 0.95
    assert np.all(ds.site_structure_flags(hot)[hot.structure_ids == ids_hot[np.argmax(s_hot)]])
    assert THRESHOLD == 1.0


def test_scores_are_distance_over_null_quantile(fitted):
    cal, ds = fitted
    test = temperature_sites(20, seed=4, first_id=5000, species=(1, 8))
    d = ds.distances(test)
    t = np.array([ds.site_threshold_[int(z)] for z in test.species])
    m = np.array([ds.site_median_[int(z)] for z in test.species])
    np.testing.assert_allclose(ds.score(test), d / t)
    np.testing.assert_allclose(ds.ratios(test), d / m)
    assert ds.domain_ == "calibration" and ds.null_distances_.shape == (len(cal),)
    # the null median of the ratios is 1 by construction, per species
    rho = ds._ratios(ds.null_distances_, cal.species)
    for z in (1, 8):
        assert np.median(rho[cal.species == z]) == pytest.approx(1.0)


def test_leave_one_structure_out_skips_the_own_structure():
    """Each structure's atoms sit at one point (±1e-3); structures are 1 apart on a line (1-D).

    Distances that did not skip the own structure would be ~1e-3; leave-one-structure-out
    distances are to the neighbouring structures (~1 and more).
    """
    rng = np.random.default_rng(0)
    centres = np.repeat(np.arange(30.0), 4)
    x = (centres + 1e-3 * rng.normal(size=120))[:, None]
    sites = SiteTable.from_arrays(descriptors=x, errors=np.ones(120), species=np.ones(120, dtype=int),
                                  structure_ids=np.repeat(np.arange(30), 4))
    ds = DomainScore(k=2).fit(sites)
    assert ds.null_distances_.min() > 0.1  # in standardised units: 1 / std of the centres (8.7)
    assert np.all(ds.distances(sites) < 1e-3)  # scored as new sites, the own atoms are found


def test_reference_domain_and_unseen_species():
    cal = temperature_sites(60, seed=5)
    ref = temperature_sites(60, seed=6, first_id=1000)
    ds = DomainScore(k=3).fit(cal, reference=ref)
    assert ds.domain_ == "reference"
    np.testing.assert_allclose(ds.null_distances_, ds.distances(cal))  # calibration vs reference, no exclusion
    other = SiteTable.from_arrays(descriptors=np.zeros((2, 4)), errors=np.ones(2), species=[1, 29],
                                  structure_ids=[0, 0])
    s = ds.score(other)
    assert s[1] == UNSEEN_SCORE and ds.flags(other)[1]
    assert ds.structure_flags(other)[1].tolist() == [True]


def test_max_domain_sites_subsamples_per_species():
    cal = temperature_sites(50, seed=7)
    ds = DomainScore(k=2, max_domain_sites=100, seed=1).fit(cal)
    assert ds._x[1].shape == (100, 4)
    assert np.isfinite(ds.score(cal)).all()


def test_structure_reduce():
    ids, m = structure_reduce(np.array([3, 1, 3]), np.array([1.0, 5.0, 3.0]), "mean")
    np.testing.assert_array_equal(ids, [1, 3])
    np.testing.assert_allclose(m, [5.0, 2.0])
    np.testing.assert_allclose(structure_reduce(np.array([3, 1, 3]), np.array([1.0, 5.0, 3.0]), "max")[1], [5.0, 3.0])


# ---------------------------------------------------------------------------- state
def test_save_load_round_trip(tmp_path, fitted):
    cal, ds = fitted
    test = temperature_sites(30, 1.3, seed=8, first_id=7000, species=(1, 8))
    path = ds.save(tmp_path / "domain")
    assert path.suffix == ".npz"
    with np.load(path, allow_pickle=False) as z:
        assert "__meta__" in z.files
    back = DomainScore.load(path)
    np.testing.assert_array_equal(back.score(test), ds.score(test))
    np.testing.assert_array_equal(back.structure_scores(test)[1], ds.structure_scores(test)[1])
    assert back.get_params() == ds.get_params()


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such domain-score file"):
        DomainScore.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, __meta__=np.array('{"format": "other"}'))
    with pytest.raises(ValueError, match=r"bad\.npz: not a readable FlexCal domain-score file"):
        DomainScore.load(bad)


# ---------------------------------------------------------------------- bad input
def test_bad_input_messages():
    cal = temperature_sites(10, seed=9)
    with pytest.raises(ValueError, match=r"k: expected an integer >= 1, got 0"):
        DomainScore(k=0)
    with pytest.raises(ValueError, match=r"quantile: expected a number in \(0, 1\), got 1.5"):
        DomainScore(quantile=1.5)
    with pytest.raises(RuntimeError, match="not fitted"):
        DomainScore().score(cal)
    with pytest.raises(TypeError, match="sites: expected a SiteTable, got list"):
        DomainScore().fit([1, 2])
    one = cal.select_structures([0])
    with pytest.raises(ValueError, match="needs at least 2 structures, got 1"):
        DomainScore().fit(one)
    ds = DomainScore(k=2).fit(cal)
    wide = SiteTable.from_arrays(descriptors=np.zeros((1, 5)), errors=[0.1], species=[1], structure_ids=[0])
    with pytest.raises(ValueError, match="descriptors have 5 columns, but the domain score was fitted on 4"):
        ds.score(wide)
    with pytest.raises(ValueError, match="reference: descriptors have 5 columns"):
        DomainScore().fit(cal, reference=wide)
