"""Toolkit diagnostics: RMSE vs RMV and ENCE, group calibration, sharpness, the descriptor map and the
chemiscope export (core/metrics/binned.py, core/figures_diagnostics.py, core/export_chemiscope.py)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from scipy import stats

from core.figures_diagnostics import (descriptor_pca, plot_adversarial_coverage, plot_descriptor_map,
                                      plot_group_coverage, plot_rmse_vs_rmv, plot_sharpness)
from core.metrics import group_calibration, rmse_vs_rmv, sharpness, width_to_sigma

C = 0.9


def _gaussian_sites(n=6000, seed=1, dof=3):
    """Errors drawn as the norm of a dof-vector with N(0, sigma^2) components; widths at C from sigma."""
    rng = np.random.default_rng(seed)
    sigma = np.exp(rng.uniform(np.log(0.02), np.log(0.5), n))
    errors = np.linalg.norm(rng.normal(size=(n, dof)) * sigma[:, None], axis=1)
    return errors, sigma * stats.chi.ppf(C, dof), sigma


# ------------------------------------------------------------------ width -> sigma
def test_width_to_sigma_uses_the_chi_quantile():
    assert width_to_sigma([2.5003], 0.9)[0] == pytest.approx(1.0, abs=1e-3)   # chi_3.ppf(0.9) = 2.5003
    assert width_to_sigma([1.6449], 0.9, dof=1)[0] == pytest.approx(1.0, abs=1e-4)  # half-normal = z_0.95
    assert np.isinf(width_to_sigma([np.inf], 0.9)[0])
    with pytest.raises(ValueError, match="dof"):
        width_to_sigma([1.0], 0.9, dof=4)


# ------------------------------------------------------------------ RMSE vs RMV
@pytest.mark.parametrize("dof", [1, 3])
def test_rmse_equals_rmv_for_gaussian_errors(dof):
    e, w, _ = _gaussian_sites(dof=dof)
    r = rmse_vs_rmv(e, w, 10, confidence=C, dof=dof)
    assert r["n"].tolist() == [600] * 10 and r["n_infinite"] == 0
    assert np.all(np.diff(r["rmv"]) > 0)  # ordered by width
    inside = (r["rmse_lo"] <= r["rmv"]) & (r["rmv"] <= r["rmse_hi"])
    assert inside.sum() >= 9, np.c_[r["rmv"], r["rmse"], r["rmse_lo"], r["rmse_hi"]]
    within = (r["expected_lo"] <= r["rmse"]) & (r["rmse"] <= r["expected_hi"])
    assert within.sum() >= 9
    np.testing.assert_allclose(r["rmse"], r["rmv"], rtol=0.06)
    # ENCE of calibrated widths is finite-sample noise only, and close to what that noise predicts
    assert r["ence"] < 0.03
    assert r["ence"] == pytest.approx(r["ence_expected"], abs=0.01)


def test_ence_is_large_for_miscalibrated_widths():
    e, w, _ = _gaussian_sites()
    assert rmse_vs_rmv(e, 0.5 * w, 10, confidence=C)["ence"] == pytest.approx(1.0, abs=0.05)  # RMSE = 2 RMV
    assert rmse_vs_rmv(e, 2.0 * w, 10, confidence=C)["ence"] == pytest.approx(0.5, abs=0.03)  # RMSE = RMV / 2
    flat = rmse_vs_rmv(e, np.full(e.shape, np.median(w)), 10, confidence=C)
    assert flat["ence"] > 0.5  # one width for every site: right on average, wrong in every bin
    # the same widths read at another confidence are mis-scaled by the quantile ratio
    other = rmse_vs_rmv(e, w, 10, confidence=0.5)
    ratio = stats.chi.ppf(C, 3) / stats.chi.ppf(0.5, 3)
    np.testing.assert_allclose(other["rmv"] / rmse_vs_rmv(e, w, 10, confidence=C)["rmv"], ratio, rtol=1e-12)


def test_rmse_vs_rmv_leaves_out_infinite_widths_and_checks_arguments():
    e, w, _ = _gaussian_sites(n=100)
    w = w.copy()
    w[:7] = np.inf
    r = rmse_vs_rmv(e, w, 3, confidence=C, n_boot=0)
    assert r["n_infinite"] == 7 and r["n"].sum() == 93 and np.all(np.isnan(r["rmse_lo"]))
    with pytest.raises(ValueError, match=r"n_bins: expected an integer in \[1, 93\], got 94"):
        rmse_vs_rmv(e, w, 94, confidence=C)
    with pytest.raises(ValueError, match="every width is"):
        rmse_vs_rmv(e, np.full(100, np.inf), 3, confidence=C)
    with pytest.raises(ValueError, match="confidence"):
        rmse_vs_rmv(e, w, 3, confidence=1.5)
    with pytest.raises(ValueError, match="errors: these sites carry no reference labels"):
        rmse_vs_rmv(None, w, 3, confidence=C)
    with pytest.raises(ValueError, match="widths: expected 100 rows"):
        rmse_vs_rmv(e, w[:5], 3, confidence=C)


def test_rmse_vs_rmv_is_seeded():
    e, w, _ = _gaussian_sites(n=500)
    a, b = rmse_vs_rmv(e, w, 5, confidence=C, seed=3), rmse_vs_rmv(e, w, 5, confidence=C, seed=3)
    np.testing.assert_array_equal(a["rmse_lo"], b["rmse_lo"])
    assert not np.array_equal(a["rmse_lo"], rmse_vs_rmv(e, w, 5, confidence=C, seed=4)["rmse_lo"])


# ------------------------------------------------------------------ group calibration
def _mis_scaled(n=5000, seed=2):
    """Calibrated widths except the sites of one subgroup, whose errors are 2.5x larger."""
    e, w, _ = _gaussian_sites(n=n, seed=seed)
    bad = np.arange(n) % 10 == 3
    e = np.where(bad, 2.5 * e, e)
    return e, w, bad


def test_labelled_groups_find_the_mis_scaled_subgroup():
    e, w, bad = _mis_scaled()
    g = group_calibration(e, w, bad.astype(int), confidence=C)["groups"]
    cov = dict(zip(g["group"].tolist(), g["coverage"].tolist()))
    outside = dict(zip(g["group"].tolist(), g["outside"].tolist()))
    assert cov[1] < 0.4 and outside[1]
    assert abs(cov[0] - C) < 0.02 and not outside[0]
    # the binomial band of a group of 500 at 0.9 (exact quantiles)
    i = g["group"].tolist().index(1)
    assert g["expected_lo"][i] == pytest.approx(stats.binom.ppf(0.025, 500, C) / 500)


def test_ordered_groups_find_miscalibration_in_one_width_range():
    e, w, _ = _gaussian_sites(n=5000, seed=3)
    top = w >= np.quantile(w, 0.9)          # the widest tenth is too narrow for its errors
    e = np.where(top, 2.0 * e, e)
    out = group_calibration(e, w, confidence=C, n_groups=10)
    g = out["groups"]
    assert g["n"].tolist() == [500] * 10 and np.all(np.diff(g["mean_width"]) > 0)
    assert g["outside"].tolist() == [False] * 9 + [True]
    assert out["worst_group_coverage"] == pytest.approx(g["coverage"][-1]) and g["coverage"][-1] < 0.6


def test_adversarial_groups_find_a_local_miscalibration_and_pass_a_calibrated_model():
    e, w, bad = _mis_scaled()
    rng = np.random.default_rng(0)
    order = np.where(bad, 1.0, 0.0) + rng.uniform(0, 0.5, bad.size)   # the bad sites are contiguous here
    adv = group_calibration(e, w, confidence=C, adversarial=True, order=order)["adversarial"]
    at10 = list(adv["size"]).index(500)
    assert adv["worst_coverage"][at10] < 0.5 < adv["worst_expected_lo"][at10]
    ok = group_calibration(*_gaussian_sites(n=5000, seed=4)[:2], confidence=C, adversarial=True)["adversarial"]
    assert np.all(ok["worst_coverage"] >= ok["worst_expected_lo"] - 0.02)
    assert ok["worst_coverage"][-1] == pytest.approx(np.mean(_gaussian_sites(n=5000, seed=4)[0]
                                                             <= _gaussian_sites(n=5000, seed=4)[1]))
    # the worst of many windows is lower than one group's band: the calibrated reference says so
    assert np.all(ok["worst_expected_lo"][:-1] < ok["expected_lo"][:-1])


def test_labelled_groups_are_ordered_by_width_with_infinite_widths_last():
    e = np.linspace(0.0, 1.0, 60)
    w = np.r_[np.full(20, np.inf), np.full(20, 0.5), np.full(20, 0.2)]
    labels = np.repeat([29, 79, 8], 20)  # e.g. species
    g = group_calibration(e, w, labels, confidence=C)["groups"]
    assert g["group"].tolist() == [8, 79, 29]
    assert g["mean_width"][:2] == pytest.approx([0.2, 0.5]) and np.isinf(g["mean_width"][2])
    assert g["coverage"].tolist() == [0.0, np.mean(e[20:40] <= 0.5), 1.0] and np.mean(e[20:40] <= 0.5) == 0.5


def test_group_calibration_checks_arguments():
    e, w, _ = _gaussian_sites(n=50)
    with pytest.raises(ValueError, match=r"groups: expected shape \(50,\)"):
        group_calibration(e, w, np.zeros(3), confidence=C)
    with pytest.raises(TypeError, match="adversarial: expected True or False, got 'yes'"):
        group_calibration(e, w, confidence=C, adversarial="yes")
    with pytest.raises(ValueError, match="fractions"):
        group_calibration(e, w, confidence=C, adversarial=True, fractions=(0.0, 2.0))
    with pytest.raises(ValueError, match="order: expected 50 finite numbers"):
        group_calibration(e, w, confidence=C, adversarial=True, order=np.zeros(3))


def test_sharpness_values():
    s = sharpness([1.0, 2.0, 3.0, np.inf])
    assert s == {"n": 4, "n_infinite": 1, "mean": 2.0, "median": 2.0, "std": pytest.approx(np.sqrt(2 / 3)),
                 "cv": pytest.approx(np.sqrt(2 / 3) / 2)}
    assert sharpness([0.0, 0.0])["cv"] is None
    with pytest.raises(ValueError, match="every width is"):
        sharpness([np.inf])
    with pytest.raises(ValueError, match="widths: must be >= 0"):
        sharpness([-1.0])


# ------------------------------------------------------------------ descriptor map
def test_descriptor_pca_is_reproducible_sign_fixed_and_standardised():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(400, 3)) * [5.0, 2.0, 0.5]
    x = np.c_[base, np.ones(400)]                       # a constant column is harmless
    coords, explained = descriptor_pca(x, 2)
    again, _ = descriptor_pca(x.copy(), 2)
    np.testing.assert_array_equal(coords, again)
    flipped, _ = descriptor_pca(-x, 2)                   # same data, opposite signs: same picture
    np.testing.assert_allclose(np.abs(flipped), np.abs(coords), atol=1e-10)
    assert coords.shape == (400, 2) and explained.shape == (2,)
    # standardised: the three unit-variance columns share the variance equally in expectation, so the
    # first component does not just copy the column with the largest raw scale (5.0)
    assert explained.sum() <= 1.0 and explained[0] < 0.5
    assert np.corrcoef(coords.T)[0, 1] == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match=r"n_components: expected an integer in \[1, 4\], got 5"):
        descriptor_pca(x, 5)
    with pytest.raises(ValueError, match="descriptors: contains NaN"):
        descriptor_pca(np.r_[x, [[np.nan] * 4]], 2)


def test_pca_sign_rule():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5))
    coords, _ = descriptor_pca(x, 3)
    z = (x - x.mean(0)) / x.std(0)
    loadings = np.linalg.lstsq(z, coords, rcond=None)[0]          # recover the component vectors
    assert np.all(loadings[np.argmax(np.abs(loadings), axis=0), np.arange(3)] > 0)


def test_descriptor_map_carries_ids_and_subsamples_deterministically():
    rng = np.random.default_rng(0)
    n = 300
    x, values = rng.normal(size=(n, 6)), rng.uniform(0.01, 1.0, n)
    ids = np.c_[np.repeat(np.arange(30), 10), np.tile(np.arange(10), 30)]
    fig = plot_descriptor_map(x, values, colour_label="width (eV/Å)", ids=ids)
    tr = fig.data[0]
    assert len(tr.x) == n and np.asarray(tr.customdata).shape == (n, 2)
    assert "eV/Å" in str(tr.marker.colorbar.title.text) and "PC 1" in fig.layout.xaxis.title.text
    small = plot_descriptor_map(x, values, colour_label="error (eV/Å)", ids=ids, max_points=100, seed=5)
    again = plot_descriptor_map(x, values, colour_label="error (eV/Å)", ids=ids, max_points=100, seed=5)
    assert len(small.data[0].x) == 100 and "100 of 300" in small.layout.title.text
    np.testing.assert_array_equal(np.asarray(small.data[0].customdata), np.asarray(again.data[0].customdata))
    # a subsampled point keeps its own id: its coordinates are those of that site
    coords, _ = descriptor_pca(x, 2)
    cd = np.asarray(small.data[0].customdata)
    site = cd[:, 0] * 10 + cd[:, 1]
    np.testing.assert_allclose(small.data[0].x, coords[site, 0])
    with pytest.raises(ValueError, match="colour_values: expected 300 numbers"):
        plot_descriptor_map(x, values[:5], colour_label="w")


def test_toolkit_figures_draw_their_parts():
    e, w, _ = _gaussian_sites(n=2000)
    fig = plot_rmse_vs_rmv({"q_θ (flexible)": rmse_vs_rmv(e, w, 8, confidence=C)})
    names = [t.name for t in fig.data]
    assert any(n.startswith("q_θ (flexible) (ENCE") for n in names) and "RMSE = RMV" in names
    assert len(fig.data[0].x) == 8 and fig.data[0].error_y.array is not None
    assert "eV/Å" in fig.layout.xaxis.title.text
    assert fig.layout.xaxis.type is None  # the bins span a factor < 30: linear axes
    assert plot_rmse_vs_rmv({"knn": rmse_vs_rmv(e, w, 8, confidence=C)}, log=True).layout.xaxis.type == "log"
    out = group_calibration(e, w, confidence=C, adversarial=True)
    g = plot_group_coverage(out["groups"], C, label="split CP")
    assert len(g.data[1].y) == 10
    assert f"({int(out['groups']['outside'].sum())} outside the expected range)" in g.layout.title.text
    a = plot_adversarial_coverage(out["adversarial"], C, label="split CP")
    assert list(a.data[-1].x) == out["adversarial"]["size"].tolist()
    s = plot_sharpness({"split CP": sharpness(np.full(5, 0.2)), "knn": sharpness(w)})
    assert list(s.data[0].x) == ["split CP", "knn"] and s.data[0].y[0] == pytest.approx(0.2)


# ------------------------------------------------------------------ chemiscope
@pytest.fixture(scope="module")
def synthetic():
    from core.synthetic_demo import synthetic_site_table, synthetic_structures

    structures = synthetic_structures(6, seed=0)
    return structures, synthetic_site_table(structures)


def test_chemiscope_round_trip(synthetic, tmp_path):
    pytest.importorskip("chemiscope")
    from core.export_chemiscope import chemiscope_bytes
    from core.io import atomic_write_bytes

    structures, sites = synthetic
    sub = sites.select_structures([1, 4])
    n = len(sub)
    widths = {"q_θ (flexible)": np.linspace(0.1, 0.3, n), "split CP": np.r_[np.inf, np.full(n - 1, 0.2)]}
    ood = np.arange(n) % 4 == 0
    data = chemiscope_bytes(structures, sub, widths, ood=ood, meta={"name": "test set"})
    path = atomic_write_bytes(tmp_path / "sites.json.gz", data)
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        d = json.load(fh)
    assert d["meta"]["name"] == "test set" and len(d["structures"]) == 2 and len(d["environments"]) == n
    props = d["properties"]
    for key in ("PCA[1]", "PCA[2]", "species", "error", "width q_θ (flexible)", "width split CP", "out of domain"):
        assert props[key]["target"] == "atom" and len(props[key]["values"]) == n, key
    for key in ("max width q_θ (flexible)", "max error", "structure id"):
        assert props[key]["target"] == "structure" and len(props[key]["values"]) == 2, key
    assert props["structure id"]["values"] == [1.0, 4.0]
    np.testing.assert_allclose(props["error"]["values"], sub.errors)
    assert props["width split CP"]["values"][0] == -1.0          # +inf is not JSON: stored as -1
    first = sub.structure_ids == 1
    assert props["max error"]["values"][0] == pytest.approx(sub.errors[first].max())
    assert props["out of domain"]["values"] == ood.astype(float).tolist()
    np.testing.assert_allclose(props["PCA[1]"]["values"], descriptor_pca(sub.descriptors, 2)[0][:, 0], atol=1e-9)
    assert d["settings"]["map"]["x"]["property"] == "PCA[1]"
    assert d["settings"]["map"]["color"]["property"] == "width q_θ (flexible)"
    assert d["environments"][0]["structure"] == 0 and d["environments"][-1]["structure"] == 1
    # same input, same bytes (gzip mtime fixed); plain JSON on request
    assert chemiscope_bytes(structures, sub, widths, ood=ood, meta={"name": "test set"}) == data
    assert json.loads(chemiscope_bytes(structures, sub, widths, compress=False))["meta"]["name"]


def test_chemiscope_bad_input_names_the_argument(synthetic):
    pytest.importorskip("chemiscope")
    from core.export_chemiscope import chemiscope_bytes

    structures, sites = synthetic
    n = len(sites)
    with pytest.raises(ValueError, match=r"widths_by_method\['a'\]: expected \d+ numbers"):
        chemiscope_bytes(structures, sites, {"a": np.ones(3)})
    with pytest.raises(ValueError, match="widths_by_method: expected a non-empty dict"):
        chemiscope_bytes(structures, sites, {})
    with pytest.raises(ValueError, match="structures: sites refer to structure 5, but 2 structures"):
        chemiscope_bytes(structures[:2], sites, {"a": np.ones(n)})
    with pytest.raises(ValueError, match="ood: expected"):
        chemiscope_bytes(structures, sites, {"a": np.ones(n)}, ood=np.zeros(2, bool))
    with pytest.raises(TypeError, match="SiteTable"):
        chemiscope_bytes(structures, "sites", {"a": np.ones(n)})


def test_rmse_bootstrap_resamples_whole_structures_when_given_their_ids():
    """Correlated atoms: a structure bootstrap gives wider RMSE intervals than a site bootstrap."""
    rng = np.random.default_rng(3)
    n_struct, atoms = 60, 20
    ids = np.repeat(np.arange(n_struct), atoms)
    scale = np.repeat(rng.lognormal(0.0, 0.6, n_struct), atoms)  # one error scale per structure
    e = scale * np.sqrt(rng.chisquare(3, ids.size))
    w = np.full(ids.size, 2.0) + 1e-6 * rng.random(ids.size)  # one bin's worth of similar widths
    by_site = rmse_vs_rmv(e, w, 1, confidence=C, seed=0)
    by_structure = rmse_vs_rmv(e, w, 1, confidence=C, seed=0, structure_ids=ids)
    assert by_site["bootstrap_unit"] == "site" and by_structure["bootstrap_unit"] == "structure"
    assert by_site["rmse"][0] == by_structure["rmse"][0]  # same bins, same RMSE: only the interval changes
    site_span = by_site["rmse_hi"][0] - by_site["rmse_lo"][0]
    structure_span = by_structure["rmse_hi"][0] - by_structure["rmse_lo"][0]
    assert structure_span > 2.0 * site_span, (site_span, structure_span)
    assert by_structure["rmse_lo"][0] < by_structure["rmse"][0] < by_structure["rmse_hi"][0]
    with pytest.raises(ValueError, match="structure_ids"):
        rmse_vs_rmv(e, w, 1, confidence=C, structure_ids=ids[:-1])
