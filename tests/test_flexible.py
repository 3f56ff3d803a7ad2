"""Tests of the learned quantile q_θ (core.calibration.flexible) and the weight schemes."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from core.calibration import FlexibleQuantile, make_calibrator  # noqa: E402
from core.calibration.weights import (  # noqa: E402
    ShiftWeights,
    SpeciesWeights,
    StructureWeights,
    make_weight_scheme,
    make_weights,
)
from core.sites import SiteTable  # noqa: E402

Q90_HALF_NORMAL = 1.6448536269514722  # 0.9 quantile of |N(0, 1)| = the 0.95 quantile of N(0, 1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def half_normal_sites(n_structures, atoms=5, d=2, seed=0, shift=0.0, species=(1,)):
    """e = sigma(x) |N(0, 1)| with sigma = 0.1 (1 + x_0^2), x ~ N(0, I_d) (+ shift on x_0).

    Returns (sites, sigma); the true conditional 0.9 quantile is 1.6449 sigma.
    """
    rng = np.random.default_rng(seed)
    n = n_structures * atoms
    x = rng.normal(size=(n, d))
    x[:, 0] += shift
    sigma = 0.1 * (1.0 + x[:, 0] ** 2)
    errors = sigma * np.abs(rng.normal(size=n))
    sites = SiteTable.from_arrays(
        descriptors=x, errors=errors, species=rng.choice(species, size=n),
        structure_ids=np.repeat(np.arange(n_structures), atoms),
    )
    return sites, sigma


SMALL = dict(hidden=(16, 16), max_epochs=5, levels=(0.5, 0.9))


# --------------------------------------------------------------------------- quality
def test_recovers_known_conditional_quantile():
    """Uncorrected q_θ at 0.9 vs the analytic 1.6449 sigma(x) on 2,000 unseen sites.

    Measured mean relative error: 0.022 (seed 0), 0.02-0.05 over seeds 0-2 (60 epochs, 10,000
    calibration sites); bound 0.08.
    A global constant width would be off by ~0.6 on average.
    """
    cal, _ = half_normal_sites(2000, seed=0)
    test, sigma = half_normal_sites(400, seed=1)
    q = FlexibleQuantile(max_epochs=60, seed=0).fit(cal)
    truth = Q90_HALF_NORMAL * sigma
    rel = np.abs(q.predict_uncorrected(test) / truth - 1.0)
    assert rel.mean() < 0.08, rel.mean()
    constant = np.quantile(cal.errors, 0.9)
    assert np.abs(constant / truth - 1.0).mean() > 0.4  # the task is not trivial
    assert 0.85 < q.correction_ < 1.15  # a good q_θ barely needs correcting
    assert abs(np.mean(test.errors <= q.predict(test)) - 0.9) < 0.03


def test_levels_never_cross_and_predict_is_the_confidence_column():
    cal, _ = half_normal_sites(300, seed=3, species=(1, 8))
    test, _ = half_normal_sites(100, seed=4, species=(1, 8, 6))  # 6: unseen species
    q = FlexibleQuantile(max_epochs=15, seed=1).fit(cal)
    levels = np.sort(np.r_[np.linspace(0.01, 0.995, 41), q.levels_])
    w = q.predict_levels(test, levels)
    assert w.shape == (len(test), levels.size)
    assert np.all(np.isfinite(w)) and np.all(w > 0)
    assert np.all(np.diff(w, axis=1) >= 0), "quantile levels cross"
    raw = q._raw(test)
    assert np.all(np.diff(raw, axis=1) > 0)  # the head itself is strictly monotone
    np.testing.assert_array_equal(q.predict_levels(test, [q.confidence])[:, 0], q.predict(test))
    np.testing.assert_array_equal(q.predict_levels(test, [0.9, 0.5])[:, ::-1], q.predict_levels(test, [0.5, 0.9]))


def test_folded_inference_matches_explicit_standardisation():
    """predict folds the standardisation into the first layer; it must equal the explicit path."""
    cal, _ = half_normal_sites(100, seed=12)
    x = np.c_[cal.descriptors, 1000.0 + 1e-9 * np.arange(len(cal)), 50.0 + 3.0 * cal.descriptors[:, :1]]
    wide = SiteTable.from_arrays(descriptors=x, errors=cal.errors, species=cal.species,
                                 structure_ids=cal.structure_ids)
    q = FlexibleQuantile(**SMALL).fit(wide)
    assert q.x_std_[2] == pytest.approx(0.1)  # near-constant channel: std floored at 1e-4 |mean|
    with torch.no_grad():
        explicit = q.model_(*q._inputs(wide, slice(None))).numpy() * q.scale_
    np.testing.assert_allclose(q._raw(wide), explicit, rtol=2e-5)


def test_default_levels_cover_the_calibration_grid():
    q = FlexibleQuantile(confidence=0.85, levels=(0.5, 0.9))
    np.testing.assert_allclose(q._trained_levels(), [0.5, 0.85, 0.9])  # confidence always trained
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    assert set(grid.tolist()) <= set(FlexibleQuantile()._trained_levels().tolist())


def test_shift_weights_restore_coverage_under_covariate_shift():
    """Calibration x_0 ~ N(0, 1), target x_0 ~ N(1, 1); sigma grows like 1 + x_0^2.

    Weighted conformal prediction matters when q_θ cannot follow sigma into the target
    region. The clearest such q_θ is one that stays at its initialisation (one epoch at
    lr 1e-5: the unconditional quantiles), so the uniform-weight correction is plain split
    CP, valid on the calibration distribution only: on the target it under-covers
    (measured 0.79-0.81 over 8 seeds of the calibration draw). With ``weights="shift"``
    the density ratio (linear-logistic, exact in form for this mean shift) enters the
    weighted conformal quantile per test site: measured 0.88-0.92. Asserted on 10,000
    target sites (binomial se 0.003): uniform < 0.85, shift in [0.87, 0.95].
    """
    cal, _ = half_normal_sites(3000, seed=10)
    target, _ = half_normal_sites(1000, seed=2, shift=1.0)  # unlabelled at fit
    test, _ = half_normal_sites(2000, seed=3, shift=1.0)
    kw = dict(hidden=(4,), max_epochs=1, lr=1e-5, seed=0)
    cov_u = np.mean(test.errors <= FlexibleQuantile(weights="uniform", **kw).fit(cal, target=target).predict(test))
    shifted = FlexibleQuantile(weights="shift", **kw).fit(cal, target=target)
    cov_s = np.mean(test.errors <= shifted.predict(test))
    assert cov_u < 0.85, cov_u
    assert 0.87 <= cov_s <= 0.95, cov_s
    # the per-site factor grows with the density ratio (more target-like -> wider)
    ratio = shifted.weight_scheme_.weights(test)
    c = shifted.predict(test) / shifted.predict_uncorrected(test)
    assert c[np.argmax(ratio)] > c[np.argmin(ratio)]
    assert shifted.correction_ > 1.0  # at the mean target ratio the factor exceeds the unweighted one


def test_statistical_coverage_of_conformalised_q_theta():
    """Mean test coverage of conformalised q_θ over R = 100 seeded by-structure splits.

    Each split: 100 calibration structures (500 sites), of which the holdout is 25
    structures = n = 125 sites, and 500 test sites. E[coverage] is in [0.9, 0.9 + 1/126]
    = [0.9, 0.908]. One split's coverage has variance ~ a(1-a)/(n+2) + a(1-a)/500 =
    0.09/127 + 0.09/500 (sd 0.030); the mean of 100 splits has standard error 0.0030.
    Tolerance: 4 standard errors (0.012) on either side. q_θ is tiny and trained for 5
    epochs: the guarantee must hold whatever its quality.
    """
    alpha, R = 0.1, 100
    data, _ = half_normal_sites(200, seed=21)
    covs = []
    for r in range(R):
        cal, test = data.split(0.5, seed=100 + r)
        q = FlexibleQuantile(confidence=1 - alpha, seed=r, **SMALL).fit(cal)
        assert q.holdout_scores_.shape == (125, 2)
        covs.append(np.mean(test.errors <= q.predict(test)))
    n = 125
    se = math.sqrt(alpha * (1 - alpha) / (n + 2) + alpha * (1 - alpha) / 500) / math.sqrt(R)
    lo, hi = 1 - alpha - 4 * se, 1 - alpha + 1 / (n + 1) + 4 * se
    assert lo <= np.mean(covs) <= hi, (np.mean(covs), lo, hi)


# ---------------------------------------------------------------------- training loop
def test_same_seed_identical_widths_other_seed_differs():
    cal, _ = half_normal_sites(200, seed=5)
    test, _ = half_normal_sites(40, seed=6)
    a = FlexibleQuantile(seed=3, **SMALL).fit(cal).predict(test)
    b = FlexibleQuantile(seed=3, **SMALL).fit(cal).predict(test)
    c = FlexibleQuantile(seed=4, **SMALL).fit(cal).predict(test)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_history_callback_and_early_stopping():
    cal, _ = half_normal_sites(200, seed=7)
    seen = []

    def stop_at_3(epoch, train_loss, val_loss):
        seen.append((epoch, train_loss, val_loss))
        return epoch == 3

    q = FlexibleQuantile(hidden=(8,), max_epochs=50, seed=0).fit(cal, callback=stop_at_3)
    assert [s[0] for s in seen] == [1, 2, 3]
    assert q.stop_reason_ == "callback" and len(q.history_) == 3
    assert set(q.history_[0]) == {"epoch", "train_loss", "val_loss"}
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in q.history_)

    q = FlexibleQuantile(hidden=(8,), max_epochs=400, patience=3, lr=0.05, seed=0).fit(cal)
    assert q.stop_reason_ == "patience" and len(q.history_) < 400
    val = [h["val_loss"] for h in q.history_]
    assert val[q.best_epoch_ - 1] == pytest.approx(min(val), rel=1e-3)  # best weights were restored
    assert len(q.history_) == q.best_epoch_ + 3  # stopped `patience` epochs after the last improvement

    q = FlexibleQuantile(hidden=(8,), max_epochs=4, validation_fraction=0.0, seed=0).fit(cal)
    assert len(q.history_) == 4 and math.isnan(q.history_[0]["val_loss"]) and q.stop_reason_ == "max_epochs"


def test_without_conformal_correction():
    cal, _ = half_normal_sites(100, seed=8)
    q = FlexibleQuantile(conformal=False, **SMALL).fit(cal)
    assert q.correction_ == 1.0 and q.label == "q_θ (uncorrected)"
    np.testing.assert_array_equal(q.predict(cal), q.predict_uncorrected(cal))
    assert q.holdout_scores_.shape == (0, 2)


@pytest.mark.parametrize("weights", ["structure", "species"])
def test_weighted_schemes_fit_and_use_weighted_correction(weights):
    cal, _ = half_normal_sites(150, seed=9, species=(1, 8, 8, 8))
    q = FlexibleQuantile(weights=weights, **SMALL).fit(cal)
    w = q.holdout_weights_
    assert w.shape == (q.holdout_scores_.shape[0],) and np.all(w > 0)
    from core.calibration.conformal import weighted_conformal_quantile

    k = q.level_index_
    expected = weighted_conformal_quantile(q.holdout_scores_[:, k], w, w.max(), q.confidence)
    assert q.correction_ == pytest.approx(expected)
    if weights == "species":  # unequal weights: the weighted quantile differs from the plain one here
        assert len(np.unique(w)) == 2


# ------------------------------------------------------------------------ weight schemes
def test_weight_schemes_values():
    sites = SiteTable.from_arrays(
        descriptors=np.zeros((5, 1)), errors=np.ones(5), species=[1, 1, 1, 8, 8], structure_ids=[0, 0, 1, 1, 1]
    )
    np.testing.assert_allclose(make_weights("uniform", sites), np.ones(5))
    np.testing.assert_allclose(make_weights("structure", sites), [0.5, 0.5, 1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(make_weights("species", sites), [1 / 3, 1 / 3, 1 / 3, 0.5, 0.5])
    np.testing.assert_allclose(make_weights([1, 2, 0, 0, 1], sites), [1, 2, 0, 0, 1])
    assert isinstance(make_weight_scheme("structure"), StructureWeights)
    assert isinstance(make_weight_scheme(SpeciesWeights()), SpeciesWeights)


def test_shift_density_ratio_is_close_to_the_truth():
    # N(0, 1) -> N(1, 1) in x_0: true ratio exp(x_0 - 1/2)
    cal, _ = half_normal_sites(1000, seed=1)
    target, _ = half_normal_sites(1000, seed=2, shift=1.0)
    probe = SiteTable.from_arrays(descriptors=np.array([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]),
                                  errors=np.zeros(4), species=[1, 1, 1, 1], structure_ids=[0, 1, 2, 3])
    r = ShiftWeights().fit(cal, target).weights(probe)
    np.testing.assert_allclose(np.log(r), np.array([-1.0, 0.0, 1.0, 2.0]) - 0.5, atol=0.12)
    r = ShiftWeights(clip=2.0).fit(cal, target).weights(probe)
    assert r.min() == pytest.approx(0.5) and r.max() == pytest.approx(2.0)


def test_weight_bad_inputs():
    sites, _ = half_normal_sites(4, atoms=2)
    with pytest.raises(ValueError, match=r"target: weights='shift' needs unlabelled target-domain sites .* got None"):
        make_weights("shift", sites)
    with pytest.raises(ValueError, match=r"target: weights='shift' needs"):
        FlexibleQuantile(weights="shift", **SMALL).fit(sites)
    with pytest.raises(ValueError, match=r"weights: expected shape \(8,\) \(one weight per site\), got \(3,\)"):
        make_weights([1.0, 1.0, 1.0], sites)
    with pytest.raises(ValueError, match=r"weights: expected shape \(8,\) \(one weight per site\), got \(3,\)"):
        FlexibleQuantile(weights=np.ones(3), **SMALL).fit(sites)
    with pytest.raises(ValueError, match=r"weights: must be >= 0, got -1\.0 at index 2"):
        make_weights([1.0, 1.0, -1.0, 1, 1, 1, 1, 1], sites)
    with pytest.raises(ValueError, match=r"weights: must be finite, got inf at index 0"):
        FlexibleQuantile(weights=[np.inf] + [1.0] * 7)
    with pytest.raises(ValueError, match=r"weights: all 8 weights are zero"):
        make_weights(np.zeros(8), sites)
    with pytest.raises(ValueError, match=r"weights: expected a 1-D array of shape \(n_sites,\), got shape \(2, 4\)"):
        make_weights(np.ones((2, 4)), sites)
    with pytest.raises(ValueError, match=r"weights: unknown scheme 'balanced'; valid schemes are uniform, structure, species, shift"):
        FlexibleQuantile(weights="balanced")
    with pytest.raises(TypeError, match=r"weights: expected one of .* got dict"):
        make_weight_scheme({"a": 1})
    with pytest.raises(ValueError, match=r"clip: expected a number in \(1, inf\), got 0\.5"):
        ShiftWeights(clip=0.5)


# ---------------------------------------------------------------------- bad parameters
@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(confidence=1.5), r"confidence: expected a number in \(0, 1\), e\.g\. 0\.9, got 1\.5"),
        (dict(confidence=0), r"confidence: .*got 0"),
        (dict(levels=(0.5, 1.0)), r"levels: every level must lie in \(0, 1\), got 1\.0"),
        (dict(levels=()), r"levels: expected a non-empty 1-D sequence .* got shape \(0,\)"),
        (dict(hidden=(64, 0)), r"hidden: expected a sequence of positive layer sizes, e\.g\. \(64, 64\), got \(64, 0\)"),
        (dict(holdout_fraction=1.0), r"holdout_fraction: expected a number in \(0, 1\), got 1\.0"),
        (dict(validation_fraction=-0.1), r"validation_fraction: expected a number in \[0, 1\), got -0\.1"),
        (dict(max_epochs=0), r"max_epochs: expected an integer >= 1, got 0"),
        (dict(batch_size=2.5), r"batch_size: expected an integer >= 1, got 2\.5"),
        (dict(lr=-1.0), r"lr: expected a number in \(0, inf\), got -1\.0"),
        (dict(patience=0), r"patience: expected an integer >= 1, got 0"),
        (dict(seed=-1), r"seed: expected an integer >= 0, got -1"),
    ],
)
def test_bad_parameters(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        FlexibleQuantile(**kwargs)


def test_bad_fit_and_predict_inputs():
    sites, _ = half_normal_sites(30)
    with pytest.raises(RuntimeError, match=r"FlexibleQuantile \(flexible\) is not fitted; call fit\(\) first"):
        FlexibleQuantile().predict(sites)
    with pytest.raises(RuntimeError, match=r"not fitted"):
        FlexibleQuantile().predict_levels(sites, [0.5])
    two, _ = half_normal_sites(2)
    with pytest.raises(ValueError, match=r"sites: FlexibleQuantile splits by structure into 3 parts .* needs at least 3 structures, got 2"):
        FlexibleQuantile(**SMALL).fit(two)
    q = FlexibleQuantile(**SMALL).fit(sites)
    with pytest.raises(ValueError, match=r"levels: every level must lie in \(0, 1\), got 0\.0"):
        q.predict_levels(sites, [0.0, 0.5])
    other, _ = half_normal_sites(3, d=3)
    with pytest.raises(ValueError, match=r"sites: descriptors have 3 columns, but q_θ was fitted on 2"):
        q.predict(other)
    with pytest.raises(TypeError, match=r"callback: expected a callable"):
        FlexibleQuantile(**SMALL).fit(sites, callback=3)
    with pytest.raises(TypeError, match=r"sites: expected a SiteTable, got dict"):
        q.predict({})


def test_make_calibrator_flexible_options():
    q = make_calibrator("flexible", confidence=0.8, seed=5, hidden=(8,), weights="structure")
    assert isinstance(q, FlexibleQuantile)
    assert (q.confidence, q.seed, q.hidden, q.weights.name) == (0.8, 5, (8,), "structure")
    with pytest.raises(TypeError, match=r"method 'flexible': bad option\(s\) \['depth'\]"):
        make_calibrator("flexible", depth=3)
