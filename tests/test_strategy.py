"""Strategy discipline (issue 9 item 5): strategies cloned at fit, pure predict, one state pattern,
keyword-only constructors, and unlabelled sites (errors=None) refused where errors are needed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core import validation
from core.calibration import FlexibleQuantile, SplitConformal, make_calibrator
from core.calibration.base import check_confidence, check_levels, load_calibrator
from core.calibration.weights import ArrayWeights, ShiftWeights, StructureWeights, weight_scheme_from_state
from core.heuristics import GMMHeuristic, KNNHeuristic, heuristic_from_state
from core.metrics import calibration_report, coverage
from core.sites import SiteTable

FAST = dict(hidden=(8,), max_epochs=4, levels=(0.5, 0.9))
UNLABELLED = r"sites: these sites carry no reference labels \(errors=None\)"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def make_sites(n_structures, atoms=4, seed=0, shift=0.0, species=(1, 8), labelled=True) -> SiteTable:
    rng = np.random.default_rng(seed)
    n = n_structures * atoms
    x = rng.normal(size=(n, 3))
    x[:, 0] += shift
    sigma = 0.1 * (1 + x[:, 0] ** 2)
    return SiteTable.from_arrays(
        descriptors=x, errors=sigma * np.sqrt(rng.chisquare(3, n)) if labelled else None,
        species=rng.choice(species, n), structure_ids=np.repeat(np.arange(n_structures), atoms),
        forces_pred=rng.normal(size=(n, 3)),
    )


def _plain_vars(obj) -> dict:
    """Attributes that are plain values (numbers, strings, lists, dicts, arrays), deep-copied."""
    out = {}
    for k, v in vars(obj).items():
        if isinstance(v, np.ndarray):
            out[k] = v.copy()
        elif isinstance(v, (int, float, str, bool, type(None))):
            out[k] = v
        elif isinstance(v, (list, tuple, dict)):
            out[k] = json.dumps(v, default=str, sort_keys=True)
    return out


def _assert_same_vars(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a[k] == b[k], k


# ------------------------------------------------------------------------- cloning at fit
def test_one_knn_instance_configures_two_independent_calibrators():
    """Regression: both calibrators used to share (and refit) the one KNNHeuristic instance."""
    h = KNNHeuristic(k=3)
    a = SplitConformal(0.9, heuristic=h)
    b = SplitConformal(0.9, heuristic=h)
    ref_a, ref_b = make_sites(40, seed=1), make_sites(40, seed=2, shift=3.0)
    cal, test = make_sites(30, seed=3), make_sites(10, seed=4)
    a.fit(cal, reference=ref_a)
    before = a.predict(test)
    b.fit(cal, reference=ref_b)
    np.testing.assert_array_equal(a.predict(test), before)  # b's fit did not touch a
    assert not np.allclose(b.predict(test), before)
    assert a.heuristic_ is not b.heuristic_ and a.heuristic_ is not h
    assert not h.is_fitted  # the instance given is a template, never fitted in place
    assert a.heuristic is h and a.heuristic_.k == 3


def test_one_weight_scheme_instance_configures_two_independent_flexible_quantiles():
    """Regression: FlexibleQuantile used to fit the given ShiftWeights in place (shared by both)."""
    scheme = ShiftWeights(clip=5.0, seed=1)
    cal, test = make_sites(40, seed=0), make_sites(10, seed=5, shift=0.5)
    a = FlexibleQuantile(weights=scheme, seed=0, **FAST).fit(cal, target=make_sites(20, seed=6, shift=1.0))
    before = a.predict(test)
    b = FlexibleQuantile(weights=scheme, seed=0, **FAST).fit(cal, target=make_sites(20, seed=7, shift=-2.0))
    np.testing.assert_array_equal(a.predict(test), before)
    assert not np.array_equal(b.predict(test), before)
    assert a.weight_scheme_ is not b.weight_scheme_ and scheme.mean_ is None
    assert a.weight_scheme_.clip == 5.0 and a.weights is scheme


def test_clone_and_copy(tmp_path):
    cal_sites, test = make_sites(40, seed=0), make_sites(10, seed=1)
    for method in ("knn", "mondrian", "flexible"):
        cal = make_calibrator(method, confidence=0.8, seed=2, **(FAST if method == "flexible" else {}))
        cal.fit(cal_sites)
        fresh = cal.clone()
        assert type(fresh) is type(cal) and not fresh.is_fitted and fresh.get_params() == cal.get_params()
        before = cal.predict(test)
        twin = cal.copy()
        assert twin is not cal and twin.is_fitted
        np.testing.assert_array_equal(twin.predict(test), before)
        twin.update(make_sites(10, seed=9, shift=2.0))  # changing the copy leaves the original alone
        assert not np.array_equal(twin.predict(test), before)
        np.testing.assert_array_equal(cal.predict(test), before)
        assert cal.n_update_sites_ == 0 and twin.n_update_sites_ == 40
        np.testing.assert_array_equal(load_calibrator(cal.save(tmp_path / f"{method}.npz")).predict(test), before)


def test_heuristic_and_weight_scheme_clones_share_nothing():
    h = GMMHeuristic(2, covariance_type="diag", seed=3)
    c = h.clone()
    assert c is not h and c.get_params() == h.get_params() == h.params()
    h.fit(make_sites(30, seed=0))
    assert h.is_fitted and not c.is_fitted
    w = ArrayWeights([1.0, 2.0, 3.0])
    wc = w.clone()
    assert wc.values is not w.values and np.array_equal(wc.values, w.values)
    assert StructureWeights().clone().get_params() == {}
    assert ShiftWeights(3.0, C=2.0).clone().get_params() == {"clip": 3.0, "C": 2.0, "max_samples": 20000, "seed": 0}


# ------------------------------------------------------------------------- pure predict
@pytest.mark.parametrize("method", ["split", "mondrian", "knn", "flexible"])
def test_predict_never_changes_the_calibrator(method):
    """Regression: Mondrian predict/predict_levels used to grow fallback_species_."""
    cal = make_calibrator(method, confidence=0.9, seed=0, **(FAST if method == "flexible" else {}))
    cal.fit(make_sites(40, seed=0))
    test = make_sites(10, seed=1, species=(1, 6, 8))  # carbon unseen at fit
    snapshot = _plain_vars(cal)
    meta, arrays = cal.get_state()
    cal.predict(test)
    cal.predict_levels(test, [0.3, 0.9, 0.995])
    _assert_same_vars(snapshot, _plain_vars(cal))
    meta2, arrays2 = cal.get_state()
    assert json.dumps(meta, sort_keys=True) == json.dumps(meta2, sort_keys=True)
    for k in arrays:
        np.testing.assert_array_equal(arrays[k], arrays2[k])
    if method == "mondrian":
        assert cal.fallback_species(test) == [6] and not hasattr(cal, "fallback_species_")


# ------------------------------------------------------------------------- state pattern
def test_one_state_pattern_for_calibrators_heuristics_and_weight_schemes():
    cal_sites, test = make_sites(40, seed=0), make_sites(10, seed=1)
    target = make_sites(20, seed=2, shift=1.0, labelled=False)
    h = KNNHeuristic(4).fit(cal_sites)
    meta, arrays = h.get_state()
    assert meta["name"] == "knn" and meta["params"] == h.get_params()
    np.testing.assert_array_equal(heuristic_from_state(meta, arrays).score(test), h.score(test))
    w = ShiftWeights(clip=4.0).fit(cal_sites, target)
    meta, arrays = w.get_state()
    assert meta == {"name": "shift", "params": w.get_params()}
    np.testing.assert_array_equal(weight_scheme_from_state(meta, arrays).weights(test), w.weights(test))
    for method in ("split", "flexible"):
        cal = make_calibrator(method, seed=1, **(FAST if method == "flexible" else {})).fit(cal_sites)
        meta, arrays = cal.get_state()
        assert {"kind", "name", "params", "state", "update"} <= set(meta)
        json.dumps(meta)
        assert all(isinstance(v, np.ndarray) and v.dtype != object for v in arrays.values())
        np.testing.assert_array_equal(type(cal).from_state(meta, arrays).predict(test), cal.predict(test))
    with pytest.raises(RuntimeError, match="ShiftWeights is not fitted"):
        ShiftWeights().get_state()


def test_validation_helpers_are_the_shared_ones():
    assert check_confidence is validation.check_confidence and check_levels is validation.check_levels


# ------------------------------------------------------------------------- keyword-only
@pytest.mark.parametrize("build", [
    lambda: SplitConformal(0.9, "knn"),
    lambda: FlexibleQuantile(0.9, (0.5, 0.9)),
    lambda: KNNHeuristic(5, 1e3),
    lambda: GMMHeuristic(2, "diag"),
    lambda: ShiftWeights(2.0, 1.0),
])
def test_constructor_parameters_beyond_the_first_are_keyword_only(build):
    with pytest.raises(TypeError, match="positional argument"):
        build()


def test_keyword_forms_still_work():
    assert SplitConformal(0.8, heuristic="knn", mondrian=True).name == "knn-mondrian"
    assert FlexibleQuantile(0.8, levels=(0.5,)).levels == (0.5,)
    assert KNNHeuristic(5, unseen_score=10.0).unseen_score == 10.0
    assert GMMHeuristic(2, covariance_type="diag").covariance_type == "diag"
    assert ShiftWeights(2.0, C=0.5).C == 0.5


# ------------------------------------------------------------------------- unlabelled sites
def test_unlabelled_sites_are_refused_for_fitting_and_scoring_but_fine_elsewhere():
    cal_sites = make_sites(40, seed=0)
    unlabelled = make_sites(12, seed=3, labelled=False)
    assert unlabelled.errors is None and not unlabelled.labelled
    for method in ("split", "knn", "flexible"):
        cal = make_calibrator(method, **(FAST if method == "flexible" else {}))
        with pytest.raises(ValueError, match=UNLABELLED):
            cal.fit(unlabelled)
        cal.fit(cal_sites)
        assert cal.predict(unlabelled).shape == (48,)  # predicting needs no labels
        with pytest.raises(ValueError, match=UNLABELLED):
            cal.update(unlabelled)
    # unlabelled reference (knn) and target (shift weights) are what they are for
    knn = make_calibrator("knn").fit(cal_sites, reference=unlabelled)
    assert np.all(np.isfinite(knn.predict(cal_sites)))
    FlexibleQuantile(weights="shift", **FAST).fit(cal_sites, target=unlabelled)
    w = knn.predict(unlabelled)
    with pytest.raises(ValueError, match=r"errors: these sites carry no reference labels \(errors=None\)"):
        calibration_report(unlabelled.errors, w)
    with pytest.raises(ValueError, match=r"errors: these sites carry no reference labels"):
        coverage(unlabelled.errors, w)
