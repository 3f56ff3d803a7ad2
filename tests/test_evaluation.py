"""The one evaluation engine (core.evaluation): fitted calibrators, widths, reference, reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.evaluation import EvaluationCancelled, Variant, evaluate, resolve_variants, score
from core.metrics import REPORT_COLUMNS
from core.sites import SiteTable

FAST = {"flexible": {"max_epochs": 20, "patience": 5}}


def make_sites(n_structures=80, atoms=8, seed=0, scale=1.0, shift=0.0) -> SiteTable:
    rng = np.random.default_rng(seed)
    n = n_structures * atoms
    X = rng.normal(size=(n, 4)) + shift
    species = rng.choice([1, 8], size=n)
    sigma = 0.05 * np.exp(0.6 * X[:, 0])
    errors = scale * sigma * np.sqrt(rng.chisquare(3, size=n))
    return SiteTable.from_arrays(descriptors=X, errors=errors, species=species,
                                 structure_ids=np.repeat(np.arange(n_structures), atoms))


@pytest.fixture(scope="module")
def parts():
    sites = make_sites()
    return sites.split(0.5, seed=0)


@pytest.fixture(scope="module")
def ev(parts):
    cal, test = parts
    return evaluate(cal, {"test": test}, ["split", "knn", "flexible"], confidence=0.9, seed=0,
                    method_options=FAST)


def test_evaluation_holds_widths_reports_and_reference(ev, parts):
    cal, test = parts
    assert ev.labels == ["split", "knn", "flexible"]
    for label in ev.labels:
        w = ev.widths_of(label)
        assert w.shape == (len(test),) and np.all(w > 0)
        lv = ev.levels_of(label)
        assert lv.shape == (len(test), ev.levels.size)
        col = int(np.argmin(np.abs(ev.levels - 0.9)))
        np.testing.assert_allclose(lv[:, col], w, rtol=1e-6)
        rep = ev.report(label)
        assert rep["coverage"] == pytest.approx(np.mean(test.errors <= w))
    # one definition of width_ratio: split CP fitted on the CALIBRATION sites
    from core.calibration import make_calibrator

    ref = make_calibrator("split", confidence=0.9).fit(cal).predict(test)
    np.testing.assert_allclose(ev.reference_widths["test"], ref)
    assert ev.report("split")["width_ratio"] == pytest.approx(1.0)
    assert ev.report("knn")["width_ratio"] == pytest.approx(np.mean(ev.widths_of("knn")) / np.mean(ref))


def test_levels_include_grid_confidence_and_099(ev):
    from core.metrics import CALIBRATION_LEVELS

    for p in [*CALIBRATION_LEVELS, 0.99, 0.9]:
        assert np.any(np.isclose(ev.levels, p))
    assert ev.report("flexible")["miscalibration_area"] is not None


def test_table_and_json(ev):
    table = ev.table(study="s", dataset="d")
    assert list(table.columns[:8]) == ["study", "dataset", "split", "method", "label", "n_cal_structures",
                                       "n_cal_sites", "fit_seconds"]
    assert set(REPORT_COLUMNS) <= set(table.columns)
    assert table["label"].tolist() == ["split", "knn", "flexible"]
    obj = json.loads(json.dumps(ev.to_json(study="s")))
    assert obj["study"] == "s" and len(obj["rows"]) == 3
    assert "flexible | test" in obj["reports"]


def test_score_matches_evaluate_for_fitted_calibrators(ev, parts):
    cal, test = parts
    again = score(dict(ev.calibrators), cal, {"test": test})
    for label in ev.labels:
        np.testing.assert_array_equal(again.widths_of(label), ev.widths_of(label))
        assert again.report(label)["width_ratio"] == pytest.approx(ev.report(label)["width_ratio"])


def test_variants_labels_and_validation(parts):
    cal, _ = parts
    vs = resolve_variants(["split", Variant("flexible (shift)", "flexible", {"weights": "shift"})], cal)
    assert [v.label for v in vs] == ["split", "flexible (shift)"]
    assert resolve_variants("split, knn", cal)[1].method == "knn"
    assert resolve_variants(["flexible"], cal, {"flexible": {"weights": "species"}})[0].label == "flexible (species)"
    with pytest.raises(ValueError, match="methods: unknown method 'bogus'"):
        resolve_variants(["bogus"], cal)
    with pytest.raises(ValueError, match="'committee' needs a committee force spread"):
        resolve_variants(["committee"], cal)
    with pytest.raises(ValueError, match="share a label"):
        resolve_variants(["split", "split"], cal)
    with pytest.raises(ValueError, match="at least one"):
        resolve_variants([], cal)


def test_bad_inputs(parts):
    cal, test = parts
    with pytest.raises(ValueError, match="tests: expected at least one"):
        evaluate(cal, {}, ["split"])
    with pytest.raises(ValueError, match=r"confidence: expected a number in \(0, 1\)"):
        evaluate(cal, {"t": test}, ["split"], confidence=0.0)
    with pytest.raises(TypeError, match="calibration: expected a SiteTable"):
        evaluate("cal.npz", {"t": test}, ["split"])


def test_should_stop_cancels_between_methods(parts):
    cal, test = parts
    with pytest.raises(EvaluationCancelled, match="stopped before fitting split"):
        evaluate(cal, {"t": test}, ["split"], should_stop=lambda: True)


def test_rescale_on_recalibrates_every_method_and_the_reference(parts):
    """A budget of target labels 2x noisier: update() restores coverage, the reference follows."""
    cal, _ = parts
    target = make_sites(n_structures=80, seed=3, scale=2.0)
    budget, test = target.split(0.5, seed=1)
    plain = evaluate(cal, {"t": test}, ["split", "knn"], seed=0)
    fixed = evaluate(cal, {"t": test}, ["split", "knn"], seed=0, rescale_on=budget)
    for label in ("split", "knn"):
        assert plain.report(label)["coverage"] < 0.8
        assert abs(fixed.report(label)["coverage"] - 0.9) < 0.06
    assert fixed.report("split")["width_ratio"] == pytest.approx(1.0)


def test_unlabelled_test_sites_are_refused(parts):
    cal, test = parts
    unlabelled = SiteTable.from_arrays(descriptors=test.descriptors, errors=None, species=test.species,
                                       structure_ids=test.structure_ids)
    if unlabelled.errors is not None:  # pragma: no cover - before unlabelled tables carried errors=None
        pytest.skip("SiteTable gives unlabelled tables errors")
    with pytest.raises(ValueError, match="carry no reference labels"):
        evaluate(cal, {"t": unlabelled}, ["split"])
