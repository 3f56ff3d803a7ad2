"""Studies (METHOD §5) on small synthetic SiteTables with known structure.

The synthetic sites have heteroscedastic errors: e_i = σ(X_i) · ‖z_i‖ with z_i ~ N(0, I₃)
and σ growing with the first descriptor, so a learned quantile can beat one global width.
Every random thing is seeded.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from core import sources, studies
from core.metrics import REPORT_COLUMNS
from core.sites import SiteTable

FAST = {"flexible": {"max_epochs": 30, "patience": 8}}
# Stated tolerance for conformalised methods in-domain: |coverage - 0.9| <= 0.06 with ~500 test
# sites (binomial sd ~ 0.013, plus the calibration-set randomness of the same size).
COVERAGE_TOL = 0.06


def make_sites(n_structures=100, atoms=10, seed=0, scale=1.0, d=4) -> SiteTable:
    rng = np.random.default_rng(seed)
    n = n_structures * atoms
    X = rng.normal(size=(n, d))
    species = rng.choice([1, 8], size=n)
    sigma = 0.05 * np.exp(0.8 * X[:, 0]) * np.where(species == 8, 1.5, 1.0)
    f_ref = rng.normal(size=(n, 3))
    f_pred = f_ref + scale * sigma[:, None] * rng.normal(size=(n, 3))
    ids = np.repeat(np.arange(n_structures), atoms)
    info = {"structure_id": np.arange(n_structures),
            "config_type": np.where(np.arange(n_structures) < n_structures // 2, "cold", "hot")}
    return SiteTable.from_arrays(descriptors=X, errors=None, species=species, structure_ids=ids,
                                 forces_pred=f_pred, forces_ref=f_ref, structure_info=info)


@pytest.fixture(scope="module")
def sites():
    return make_sites()


@pytest.fixture(scope="module")
def in_domain(sites):
    return studies.run_in_domain(sites, ["split", "mondrian", "knn", "force", "flexible"], confidence=0.9,
                                 test_fraction=0.5, seed=0, dataset="synthetic", method_options=FAST)


def test_in_domain_columns_and_rows(in_domain):
    expected = studies.ID_COLUMNS + list(REPORT_COLUMNS) + ["note"]
    assert list(in_domain.columns) == expected
    assert in_domain["method"].tolist() == ["split", "mondrian", "knn", "force", "flexible"]
    assert set(in_domain["study"]) == {"in-domain"}
    assert set(in_domain["split"]) == {"test"}
    assert set(in_domain["dataset"]) == {"synthetic"}
    assert (in_domain["n_cal_structures"] == 50).all() and (in_domain["n_structures"] == 50).all()
    assert (in_domain["n_cal_sites"] + in_domain["n_sites"] == 1000).all()
    assert (in_domain["note"] == "").all()


def test_in_domain_conformal_coverage(in_domain):
    for _, row in in_domain.iterrows():
        assert abs(row["coverage"] - 0.9) <= COVERAGE_TOL, (row["method"], row["coverage"])
        assert row["confidence"] == 0.9
        assert math.isclose(row["coverage_gap"], row["coverage"] - 0.9, abs_tol=1e-12)


def test_in_domain_width_ratio_and_correlation(in_domain):
    by = in_domain.set_index("method")
    assert by.loc["split", "width_ratio"] == pytest.approx(1.0)
    assert math.isnan(by.loc["split", "spearman"])  # constant width: undefined, not 0
    # the learned quantile sees sigma(X): its widths track the errors
    assert by.loc["flexible", "spearman"] > 0.3
    assert by.loc["flexible", "width_ratio"] < 1.0
    for m in ("split", "flexible", "knn"):
        assert 0.0 <= by.loc[m, "miscalibration_area"] < 0.1


def test_in_domain_is_deterministic(sites, in_domain):
    again = studies.run_in_domain(sites, ["knn", "flexible"], confidence=0.9,
                                  test_fraction=0.5, seed=0, dataset="synthetic", method_options=FAST)
    cols = [c for c in in_domain.columns if c != "fit_seconds"]
    first = in_domain[in_domain["method"].isin(["knn", "flexible"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(first[cols], again[cols])


def test_split_cp_coverage_over_seeds_respects_finite_sample_bound():
    # mean test coverage of split CP over random splits is >= 0.9 (up to Monte-Carlo noise)
    sites = make_sites(n_structures=40, atoms=5, seed=3)
    covs = [studies.run_in_domain(sites, ["split"], seed=s)["coverage"].item() for s in range(20)]
    assert np.mean(covs) >= 0.9 - 0.02


def test_unseen_splits_and_in_domain_holdout(sites):
    cold = sources.select_by_column(sites, "config_type", ["cold"])
    hot = sources.select_by_column(sites, "config_type", ["hot"])
    table = studies.run_unseen(cold, {"hot": hot}, ["split", "force"], in_domain_fraction=0.3, dataset="syn")
    assert table["split"].tolist() == ["in-domain", "hot", "in-domain", "hot"]
    assert set(table["study"]) == {"unseen"}
    hot_rows = table[table["split"] == "hot"]
    assert (hot_rows["n_structures"] == 50).all() and (hot_rows["n_cal_structures"] == 35).all()


def test_select_by_column_errors(sites):
    with pytest.raises(ValueError, match=r"no structures with value\(s\) \['warm'\]; present: \['cold', 'hot'\]"):
        sources.select_by_column(sites, "config_type", ["warm"])
    with pytest.raises(ValueError, match="no per-structure column 'temperature'"):
        sources.select_by_column(sites, "temperature", ["x"])


@pytest.fixture(scope="module")
def transfer():
    # level B: the same structures, errors 1.6x larger -> calibrating against A undercovers B
    a = make_sites(n_structures=60, seed=5)
    b = sources.relabel(a, a.forces_pred - 1.6 * (a.forces_pred - a.forces_ref))
    return studies.run_transfer(a, b, ["split", "flexible"], confidence=0.9, test_fraction=0.5, seed=0,
                                budgets=(0.2,), n_new=(2, 10), method_options=FAST, dataset="syn")


def test_transfer_variants(transfer):
    assert transfer["label"].tolist() == [
        "split, A", "flexible, A", "flexible (shift), A",
        "split, B 20%", "flexible, B 20%",
        "split, A + B 20% rescale", "flexible, A + B 20% rescale",
        "split, A + B 2 structures", "flexible, A + B 2 structures",
        "split, A + B 10 structures", "flexible, A + B 10 structures",
        "split, B 100%", "flexible, B 100%",
    ]
    assert set(transfer["split"]) == {"B"} and set(transfer["study"]) == {"transfer"}
    assert transfer.attrs["paired"] is True


def test_transfer_reports_coverage_against_new_labelled_structures(transfer):
    """update() on k new B structures: the spread follows k, coverage with 10 structures ~0.9."""
    by = transfer.set_index("label")
    assert by.loc["split, A + B 10 structures", "n_new"] == 10
    assert abs(by.loc["split, A + B 10 structures", "coverage"] - 0.9) <= 0.08
    assert abs(by.loc["flexible, A + B 10 structures", "coverage"] - 0.9) <= 0.08
    # fewer new structures -> a wider expected interval
    two = by.loc["split, A + B 2 structures"]
    ten = by.loc["split, A + B 10 structures"]
    assert two["coverage_expected_hi"] - two["coverage_expected_lo"] > ten["coverage_expected_hi"] - ten["coverage_expected_lo"]


def test_transfer_shows_the_shift_and_rescaling_fixes_it(transfer):
    by = transfer.set_index("label")
    # B errors are 1.6x the A errors: widths calibrated against A undercover B by >= 0.08
    for label in ("split, A", "flexible, A", "flexible (shift), A"):
        assert by.loc[label, "coverage"] <= 0.82, label
    # 6 budget structures (60 sites) fix the scale: coverage within 0.08 of 0.9 on 300 test sites
    for label in ("split, A + B 20% rescale", "flexible, A + B 20% rescale", "split, B 100%", "flexible, B 100%"):
        assert abs(by.loc[label, "coverage"] - 0.9) <= 0.08, label
    assert (transfer["note"] == "").all()
    # rescaling keeps the learned shape: correlation is the A-fitted one
    assert by.loc["flexible, A + B 20% rescale", "spearman"] == pytest.approx(by.loc["flexible, A", "spearman"])


def test_recalibration_factor_is_the_conformal_quantile_of_the_new_sites(sites):
    """update() on new labelled sites = the old BudgetRescaled: ĉ from e / w_A on the budget."""
    import copy

    from core.calibration import make_calibrator
    from core.calibration.conformal import conformal_quantile

    cal, budget = sites.split(0.2, seed=1)
    base = make_calibrator("force", confidence=0.9).fit(cal)
    updated = copy.deepcopy(base).update(budget)
    factor = conformal_quantile(budget.errors / base.predict(budget), 0.9)
    np.testing.assert_allclose(updated.predict(cal), factor * base.predict(cal), rtol=1e-12)
    lv = updated.predict_levels(cal, [0.5, 0.9])
    np.testing.assert_allclose(lv[:, 1], updated.predict(cal))
    assert np.all(lv[:, 0] <= lv[:, 1])


def test_write_study_round_trip(in_domain, tmp_path):
    paths = studies.write_study(in_domain, tmp_path / "out", "in-domain")
    back = pd.read_csv(paths["csv"], keep_default_na=False, na_values=[""])
    assert back["method"].tolist() == in_domain["method"].tolist()
    np.testing.assert_allclose(back["coverage"], in_domain["coverage"])
    obj = json.loads(paths["json"].read_text())
    assert obj["study"] == "in-domain" and obj["meta"]["confidence"] == 0.9
    assert len(obj["rows"]) == len(in_domain)
    assert obj["rows"][0]["spearman"] is None  # NaN -> null
    with pytest.raises(ValueError, match="plain file stem"):
        studies.write_study(in_domain, tmp_path, "a/b")


def test_relabel_recomputes_errors(sites):
    new_ref = sites.forces_ref + np.array([0.3, 0.0, 0.4])
    b = sources.relabel(sites, new_ref, label="REF2")
    np.testing.assert_allclose(b.errors, np.linalg.norm(sites.forces_pred - new_ref, axis=1))
    assert b.meta["level"] == "REF2"
    np.testing.assert_array_equal(b.descriptors, sites.descriptors)
    with pytest.raises(ValueError, match=r"forces_ref: expected shape \(1000, 3\), got \(3,\)"):
        sources.relabel(sites, np.zeros(3))


def test_forces_from_file_maps_frames_and_atoms(tmp_path):
    from ase import Atoms
    from ase.io import write

    frames = []
    for k in range(3):
        a = Atoms("H2O", positions=[[0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
        a.arrays["REF2_forces"] = np.arange(9, dtype=float).reshape(3, 3) + 10 * k
        frames.append(a)
    path = tmp_path / "t.xyz"
    write(path, frames, format="extxyz")
    sites = SiteTable.from_arrays(
        descriptors=np.zeros((4, 2)), errors=np.ones(4), species=[1, 8, 1, 1],
        structure_ids=[0, 0, 2, 2], atom_index=[1, 2, 0, 1],
        structure_info={"structure_id": [0, 2], "dataset_index": [0, 2]},
    )
    f = sources.forces_from_file(sites, path, "REF2_forces")
    np.testing.assert_array_equal(f, [[3, 4, 5], [6, 7, 8], [20, 21, 22], [23, 24, 25]])
    with pytest.raises(ValueError, match="has no per-atom array 'REF3_forces'"):
        sources.forces_from_file(sites, path, "REF3_forces")


def test_bad_inputs_name_the_problem(sites):
    with pytest.raises(ValueError, match="unknown method 'bogus'; valid methods are flexible, flexible-ood, split"):
        studies.run_in_domain(sites, ["split", "bogus"])
    with pytest.raises(ValueError, match="'committee' needs a committee force spread"):
        studies.run_in_domain(sites, ["committee"])
    with pytest.raises(ValueError, match=r"confidence: expected a number in \(0, 1\), e.g. 0.9, got 1.5"):
        studies.run_in_domain(sites, ["split"], confidence=1.5)
    with pytest.raises(ValueError, match="test_sets: expected at least one"):
        studies.run_unseen(sites, {}, ["split"])
    with pytest.raises(ValueError, match=r"budgets: expected fractions in \(0, 1\)"):
        studies.run_transfer(sites, sites, ["split"], budgets=(5,))


def test_default_methods_skip_committee_without_spread(sites):
    from core.calibration.registry import default_method_names, method_names

    assert "committee" not in default_method_names(sites)
    assert set(default_method_names(sites)) == set(method_names()) - {"committee"}


def test_active_learning_study_prepares_demo_inputs(monkeypatch, tmp_path):
    """The AL study hands run_active_learning the demo's training frames, test frames and labeller."""
    from core import demo

    try:
        demo.demo_dataset_path("molecule")
    except FileNotFoundError as exc:
        pytest.skip(f"molecule demo not generated: {exc}")
    import core.active
    from core.active import CURVE_COLUMNS, ActiveLearningResult

    seen = {}

    def fake(initial_train, pool_md_start, reference, **kwargs):
        seen.update(initial=initial_train, start=pool_md_start, reference=reference, **kwargs)
        curves = pd.DataFrame([{c: 0 for c in CURVE_COLUMNS}])
        return ActiveLearningResult(curves=curves, picked={}, test_set=kwargs["test_set"], model_paths={},
                                    settings={"seed": kwargs["seed"]})

    monkeypatch.setattr(core.active, "run_active_learning", fake)
    table, result = studies.run_active_learning_study("molecule", n_initial=12, test_size=7, n_rounds=2,
                                                      seed=3, workdir=tmp_path, train_epochs=4)
    assert len(seen["initial"]) == 12 and seen["start"] is seen["initial"][0]
    assert all(a.info["split"] == "train" for a in seen["initial"])
    assert len(seen["test_set"]) == 7
    assert all(a.info["split"] == "test" and a.info["config_type"] == "md_300K" for a in seen["test_set"])
    assert seen["reference"] == "gfn2-xtb" and seen["n_rounds"] == 2 and seen["seed"] == 3
    assert seen["train_kwargs"] == {"max_num_epochs": 4}
    assert list(table.columns[:2]) == ["study", "dataset"] and table["dataset"].item() == "molecule"
    with pytest.raises(ValueError, match="needs a reference calculator"):
        studies.run_active_learning_study(str(demo.demo_dataset_path("molecule")), test_size=5)
