"""Per-group breakdown, method ranking and the comparison figures (issue 12, item 15).

A synthetic SiteTable whose errors follow e = σ·χ₃ with known σ per element: widths at the exact
90 % quantile cover 90 % of every element; halving the Au widths must show Au under-covered with
an interval that excludes 90 %, while Cu stays within its interval.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from core.metrics import (
    BREAKDOWN_COLUMNS,
    bootstrap_ci,
    breakdown,
    calibration_report,
    coverage,
    expected_coverage_interval,
    rank_methods,
    spearman,
)
from core.sites import SiteTable

CONF = 0.9
CU, AU = 29, 79


@pytest.fixture(scope="module")
def synthetic():
    """300 structures x 10 atoms (5 Cu, 5 Au), σ(Cu) = 0.1 and σ(Au) = 0.3 eV/Å, config types bulk/surface."""
    rng = np.random.default_rng(0)
    m, per = 300, 10
    ids = np.repeat(np.arange(m), per)
    species = np.tile(np.array([CU] * 5 + [AU] * 5), m)
    sigma = np.where(species == CU, 0.1, 0.3) * rng.uniform(0.5, 1.5, size=ids.size)
    errors = sigma * np.sqrt(rng.chisquare(3, size=ids.size))
    widths = sigma * stats.chi.ppf(CONF, 3)  # the exact 90 % quantile per site
    config = np.where(np.arange(m) % 3 == 0, "surface", "bulk")
    info = {"structure_id": np.arange(m), "config_type": config}
    sites = SiteTable.from_arrays(descriptors=rng.normal(size=(ids.size, 4)), errors=errors, species=species,
                                  structure_ids=ids, structure_info=info)
    return sites, widths


def test_halved_widths_of_one_element_show_under_coverage_outside_its_interval(synthetic):
    sites, widths = synthetic
    shrunk = np.where(sites.species == AU, 0.5 * widths, widths)
    table = breakdown(sites, shrunk, by="species", confidence=CONF, n_calibration_structures=200, bootstrap=50)
    assert list(table.columns) == ["group", "Z", *BREAKDOWN_COLUMNS]
    assert list(table["group"]) == ["Cu", "Au"] and list(table["Z"]) == [CU, AU]
    cu, au = table.set_index("group").loc["Cu"], table.set_index("group").loc["Au"]
    # Au: coverage of e <= 0.5 q90 for chi_3 is P(chi_3 <= 0.5 * 2.5) ~ 0.32
    assert au["coverage"] < 0.45 and au["coverage_binom_hi"] < CONF
    assert au["coverage"] < au["coverage_expected_lo"]
    assert cu["coverage_binom_lo"] <= CONF <= cu["coverage_binom_hi"]
    assert cu["coverage_expected_lo"] <= cu["coverage"] <= cu["coverage_expected_hi"]
    assert au["coverage_ci_hi"] < CONF  # by structure too: the under-coverage is real
    for _, row in table.iterrows():
        assert row["coverage_binom_lo"] <= row["coverage"] <= row["coverage_binom_hi"]
        assert row["coverage_ci_lo"] <= row["coverage"] <= row["coverage_ci_hi"]
        assert row["spearman_ci_lo"] <= row["spearman"] <= row["spearman_ci_hi"]
        assert row["n_sites"] == 1500 and row["n_structures"] == 300
    assert table.attrs == {"by": "species", "confidence": CONF, "level": 0.95, "bootstrap": 50}


def test_values_match_the_metric_functions(synthetic):
    sites, widths = synthetic
    table = breakdown(sites, widths, by="species", confidence=CONF, n_calibration_structures=200, bootstrap=30, seed=3)
    au = sites.species == AU
    row = table.set_index("Z").loc[AU]
    e, w, ids = sites.errors[au], widths[au], sites.structure_ids[au]
    assert row["coverage"] == pytest.approx(coverage(e, w))
    assert row["mean_width"] == pytest.approx(float(np.mean(w)))
    assert row["mae"] == pytest.approx(float(np.mean(e)))
    assert row["spearman"] == pytest.approx(spearman(e, w))
    assert (row["spearman_ci_lo"], row["spearman_ci_hi"]) == pytest.approx(bootstrap_ci(e, w, ids, spearman, 30, 3))
    assert (row["coverage_ci_lo"], row["coverage_ci_hi"]) == pytest.approx(bootstrap_ci(e, w, ids, coverage, 30, 3))
    lo, hi = expected_coverage_interval(200, CONF, n_test=300)
    assert (row["coverage_expected_lo"], row["coverage_expected_hi"]) == pytest.approx((lo, hi))
    # Clopper-Pearson: the exact interval's ends are beta quantiles
    k, n = int(np.sum(e <= w)), e.size
    assert row["coverage_binom_lo"] == pytest.approx(stats.beta.ppf(0.025, k, n - k + 1))
    assert row["coverage_binom_hi"] == pytest.approx(stats.beta.ppf(0.975, k + 1, n - k))


def test_config_type_grouping_and_per_group_calibration_sizes(synthetic):
    sites, widths = synthetic
    table = breakdown(sites, widths, by="config_type", confidence=CONF, bootstrap=0,
                      n_calibration_structures={"bulk": 120, "surface": 30})
    assert list(table.columns) == ["group", *BREAKDOWN_COLUMNS]
    assert list(table["group"]) == ["bulk", "surface"]
    assert list(table["n_structures"]) == [200, 100] and list(table["n_sites"]) == [2000, 1000]
    bulk = table.set_index("group").loc["bulk"]
    assert (bulk["coverage_expected_lo"], bulk["coverage_expected_hi"]) == pytest.approx(
        expected_coverage_interval(120, CONF, n_test=200))
    surface = table.set_index("group").loc["surface"]
    assert surface["coverage_expected_hi"] - surface["coverage_expected_lo"] > \
        bulk["coverage_expected_hi"] - bulk["coverage_expected_lo"]  # fewer calibration structures: wider
    assert math.isnan(bulk["spearman_ci_lo"]) and math.isnan(bulk["coverage_ci_hi"])  # bootstrap=0: no interval
    mask = sites.structure_column("config_type") == "surface"
    assert surface["coverage"] == pytest.approx(coverage(sites.errors[mask], widths[mask]))
    # no calibration size: no expected range
    bare = breakdown(sites, widths, by="config_type", confidence=CONF, bootstrap=0)
    assert bare["coverage_expected_lo"].isna().all()


def test_an_array_of_labels_and_undefined_spearman(synthetic):
    sites, widths = synthetic
    labels = np.where(sites.structure_ids < 100, "early", "late")
    const = np.full(len(sites), 0.4)
    table = breakdown(sites, const, by=labels, confidence=CONF, bootstrap=20)
    assert list(table["group"]) == ["early", "late"] and table.attrs["by"] == "group"
    assert table["spearman"].isna().all() and table["spearman_ci_lo"].isna().all()  # constant widths: undefined
    inf = np.where(sites.species == CU, np.inf, widths)
    t2 = breakdown(sites, inf, by="species", confidence=CONF, bootstrap=0).set_index("group")
    assert t2.loc["Cu", "coverage"] == 1.0 and t2.loc["Cu", "mean_width"] == np.inf


@pytest.mark.parametrize("by, match", [
    ("element", r"by: expected one of species, config_type .* got 'element'"),
    (np.zeros(7), r"by: expected .* shape \(3000,\) .* got shape \(7,\)"),
    (np.zeros((3000, 2)), r"got shape \(3000, 2\)"),
    (np.zeros(3000), r"by: expected integer or string labels, got dtype float64"),
])
def test_bad_by_is_refused_naming_it(synthetic, by, match):
    sites, widths = synthetic
    with pytest.raises(ValueError, match=match):
        breakdown(sites, widths, by=by, confidence=CONF)


def test_bad_arguments_are_refused(synthetic):
    sites, widths = synthetic
    with pytest.raises(ValueError, match=r"by: 'config_type' needs a structure_info column"):
        bare = SiteTable.from_arrays(descriptors=np.zeros((4, 2)), errors=np.ones(4), species=np.ones(4, int),
                                     structure_ids=np.arange(4))
        breakdown(bare, np.ones(4), by="config_type", confidence=CONF)
    with pytest.raises(ValueError, match=r"widths: expected 3000 rows"):
        breakdown(sites, widths[:10], confidence=CONF)
    with pytest.raises(ValueError, match=r"confidence: .* got 1.5"):
        breakdown(sites, widths, confidence=1.5)
    with pytest.raises(ValueError, match=r"n_calibration_structures: expected an integer >= 1, got 0"):
        breakdown(sites, widths, confidence=CONF, n_calibration_structures=0)
    with pytest.raises(ValueError, match=r"bootstrap: expected an integer >= 0, got -1"):
        breakdown(sites, widths, confidence=CONF, bootstrap=-1)
    with pytest.raises(TypeError, match="SiteTable"):
        breakdown(widths, widths, confidence=CONF)
    unlabelled = SiteTable.from_arrays(descriptors=np.zeros((4, 2)), errors=None, species=np.ones(4, int),
                                       structure_ids=np.arange(4))
    with pytest.raises(ValueError, match="no reference labels"):
        breakdown(unlabelled, np.ones(4), confidence=CONF)


# ------------------------------------------------------------------------------ ranking
def _report(coverage, width_ratio, spearman, area, confidence=CONF):
    return {"confidence": confidence, "coverage": coverage, "width_ratio": width_ratio, "spearman": spearman,
            "miscalibration_area": area}


def test_rank_directions_per_metric():
    reports = {
        "over": _report(0.97, 1.3, 0.2, 0.08),     # far above nominal, wide
        "good": _report(0.895, 0.8, 0.6, 0.02),    # closest to nominal, narrowest calibrated
        "under": _report(0.80, 0.5, None, 0.10),   # narrowest but under-covering; ρ undefined
    }
    table = rank_methods(reports)
    assert list(table.index) == ["good", "over", "under"]  # by mean rank
    assert table.loc["good", "coverage_rank"] == 1 and table.loc["under", "coverage_rank"] == 3
    assert table.loc["under", "width_ratio_rank"] == 1 and table.loc["over", "width_ratio_rank"] == 3
    assert table.loc["good", "spearman_rank"] == 1 and math.isnan(table.loc["under", "spearman_rank"])
    assert table.loc["good", "miscalibration_area_rank"] == 1 and table.loc["under", "miscalibration_area_rank"] == 3
    best = {k: list(table.index[table[f"{k}_best"]]) for k in ("coverage", "width_ratio", "spearman",
                                                               "miscalibration_area")}
    assert best == {"coverage": ["good"], "width_ratio": ["under"], "spearman": ["good"],
                    "miscalibration_area": ["good"]}
    assert table.loc["under", "mean_rank"] == pytest.approx((3 + 1 + 3) / 3)  # the undefined ρ is left out
    assert table.loc["under", "width_ratio"] == 0.5 and math.isnan(table.loc["under", "spearman"])
    assert table.attrs["directions"]["coverage"] == "nominal"


def test_rank_ties_share_the_best_and_coverage_is_symmetric_about_nominal():
    table = rank_methods({"a": _report(0.88, 1.0, 0.5, 0.05), "b": _report(0.92, 1.0, 0.5, 0.05)})
    assert table["coverage_best"].all() and (table["coverage_rank"] == 1).all()
    assert table["width_ratio_best"].all()
    # each report is judged against its own confidence
    table = rank_methods({"a": _report(0.80, 1, 0.5, 0.05, confidence=0.8), "b": _report(0.85, 1, 0.5, 0.05)},
                         keys=["coverage"])
    assert list(table.index[table["coverage_best"]]) == ["a"]


def test_rank_all_missing_has_no_best_and_real_reports_rank(synthetic):
    sites, widths = synthetic
    e, ids = sites.errors, sites.structure_ids
    reports = {m: calibration_report(e, w, CONF, structure_ids=ids) for m, w in
               {"exact": widths, "half": 0.5 * widths, "double": 2 * widths}.items()}
    table = rank_methods(reports, keys=["coverage", "mean_width", "width_ratio"])
    assert list(table.index[table["coverage_best"]]) == ["exact"]
    assert list(table.index[table["mean_width_best"]]) == ["half"]
    assert not table["width_ratio_best"].any() and table["width_ratio_rank"].isna().all()


def test_rank_bad_input():
    with pytest.raises(ValueError, match="reports: expected a non-empty dict"):
        rank_methods({})
    with pytest.raises(ValueError, match=r"keys: 'coverage_ci' has no ranking direction"):
        rank_methods({"a": _report(0.9, 1, 0.5, 0.1)}, keys=["coverage_ci"])
    with pytest.raises(ValueError, match="keys: expected a non-empty sequence"):
        rank_methods({"a": _report(0.9, 1, 0.5, 0.1)}, keys="coverage")
    with pytest.raises(ValueError, match=r"reports\['a'\]: expected a report dict, got list"):
        rank_methods({"a": [0.9]})


# ------------------------------------------------------------------------------ figures
def test_small_multiples_share_axes_and_label_units(synthetic):
    from core.figures_compare import plot_small_multiples

    sites, widths = synthetic
    by_method = {"exact": widths, "half": 0.5 * widths, "inf Cu": np.where(sites.species == CU, np.inf, widths)}
    fig = plot_small_multiples(sites.errors, by_method, columns=2, max_points=1000)
    layout = fig.layout
    axes = [layout[f"xaxis{i}" if i > 1 else "xaxis"] for i in range(1, 4)]
    assert all(a.type == "log" and tuple(a.range) == tuple(axes[0].range) for a in axes)
    assert all("eV/Å" in a.title.text for a in axes)
    assert "eV/Å" in layout.yaxis.title.text and layout.yaxis3.title.text  # first column labelled
    assert "1000 of 3000 sites shown" in layout.title.text
    titles = [a.text for a in layout.annotations]
    assert titles[1].startswith("half") and f"coverage {coverage(sites.errors, 0.5 * widths):.3f}" in titles[1]
    assert all(len(t.x) == 1000 for t in fig.data[::2])
    assert np.all(np.isfinite(fig.data[4].x))  # +inf widths drawn at the axis edge

    rng = np.random.default_rng(1)
    ref = rng.normal(size=(len(sites), 3))
    fig = plot_small_multiples(sites.errors, by_method, kind="parity", reference=ref, predicted=ref + 0.1,
                               max_points=None)
    cmins = {t.marker.cmin for t in fig.data[::2]}
    assert len(cmins) == 1 and len({t.marker.cmax for t in fig.data[::2]}) == 1  # one colour scale
    assert "reference force component (eV/Å)" == fig.layout.xaxis.title.text
    with pytest.raises(ValueError, match=r"reference: kind='parity' needs reference and predicted forces"):
        plot_small_multiples(sites.errors, by_method, kind="parity")
    with pytest.raises(ValueError, match=r"kind: expected one of error_width, parity, got 'hexbin'"):
        plot_small_multiples(sites.errors, by_method, kind="hexbin")
    with pytest.raises(ValueError, match=r"widths_by_method\['x'\]: expected 3000 values"):
        plot_small_multiples(sites.errors, {"x": widths[:5]})


def test_species_coverage_intervals_figure(synthetic):
    from core.figures_compare import plot_species_coverage_intervals

    sites, widths = synthetic
    tables = {m: breakdown(sites, w, by="species", confidence=CONF, n_calibration_structures=200, bootstrap=0)
              for m, w in {"exact": widths, "half Au": np.where(sites.species == AU, 0.5 * widths, widths)}.items()}
    fig = plot_species_coverage_intervals(tables)  # bootstrap=0: auto falls back to the binomial interval
    assert "Clopper–Pearson over sites" in fig.layout.title.text
    points = [t for t in fig.data if t.name in tables]
    assert [t.name for t in points] == ["exact", "half Au"]
    half = points[1]
    assert list(half.x) == ["Cu", "Au"]
    t = tables["half Au"]
    assert np.allclose(half.error_y.array, t["coverage_binom_hi"] - t["coverage"])
    assert np.allclose(half.error_y.arrayminus, t["coverage"] - t["coverage_binom_lo"])
    assert any(t.name == "nominal 90%" for t in fig.data)
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(rects) == 2 and rects[0].y0 == pytest.approx(t["coverage_expected_lo"].iloc[0])
    assert fig.layout.yaxis.title.text == "coverage (fraction)" and fig.layout.xaxis.title.text == "element"
    boot = {m: breakdown(sites, widths, by="config_type", confidence=CONF, bootstrap=30) for m in ("a", "b")}
    fig = plot_species_coverage_intervals(boot)
    assert "by-structure bootstrap" in fig.layout.title.text and fig.layout.xaxis.title.text == "config_type"
    assert np.allclose(fig.data[0].error_y.array, boot["a"]["coverage_ci_hi"] - boot["a"]["coverage"])
    assert not [s for s in fig.layout.shapes if s.type == "rect"]  # no calibration size: no expected band
    assert "Clopper" in plot_species_coverage_intervals(boot, interval="binomial").layout.title.text
    with pytest.raises(ValueError, match="interval: expected one of auto, binomial, bootstrap, got 'wald'"):
        plot_species_coverage_intervals(boot, interval="wald")
    with pytest.raises(ValueError, match="has no column 'coverage_binom_lo'"):
        plot_species_coverage_intervals({"x": pd.DataFrame({"group": ["Cu"], "coverage": [0.9]})}, confidence=CONF)


# ------------------------------------------------------------------------------ CLI: evaluate --by
def test_cli_evaluate_by_species_and_config_type(tmp_path, capsys):
    import json

    from core.cli import main
    from tests.test_cli import make_sites

    cal_sites, test_sites = make_sites().split(0.5, seed=0)
    cal_path, test_path = cal_sites.save(tmp_path / "cal.npz"), test_sites.save(tmp_path / "test.npz")
    model = tmp_path / "knn.npz"
    assert main(["calibrate", str(cal_path), "--method", "knn", "-o", str(model), "-q"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(test_path), "--calibrator", str(model), "--calibration", str(cal_path),
                 "--by", "config_type", "--bootstrap", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["breakdown"]["rows"]
    assert out["breakdown"]["by"] == "config_type" and [r["group"] for r in rows] == ["a", "b"]
    assert sum(r["n_sites"] for r in rows) == out["n_sites"] == len(test_sites)
    assert all(r["coverage_binom_lo"] <= r["coverage"] <= r["coverage_binom_hi"] for r in rows)
    assert all(r["coverage_expected_lo"] is not None for r in rows)  # --calibration gives the spread
    assert main(["evaluate", str(test_path), "--calibrator", str(model), "--by", "species"]) == 0
    text = capsys.readouterr().out
    block = text.split("per species:\n", 1)[1].splitlines()
    rule = next(i for i, ln in enumerate(block) if ln.startswith("---"))
    assert block[rule - 1].split()[:4] == ["species", "Sites", "Structures", "Coverage"]  # readable headers
    assert [line.split()[0] for line in block[rule + 1:rule + 3]] == ["H", "C"]
    assert "—" in block[rule + 1] and "n/a" not in text  # no --calibration: no expected range, no interval


def test_cli_evaluate_by_config_type_without_it_exits_2(tmp_path, capsys):
    from core.cli import main
    from tests.test_cli import make_sites

    sites = make_sites()
    bare = SiteTable.from_arrays(descriptors=sites.descriptors, errors=sites.errors, species=sites.species,
                                 structure_ids=sites.structure_ids)
    cal, test = bare.split(0.5, seed=0)
    cal_path, test_path = cal.save(tmp_path / "cal.npz"), test.save(tmp_path / "test.npz")
    model = tmp_path / "split.npz"
    assert main(["calibrate", str(cal_path), "--method", "split", "-o", str(model), "-q"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(test_path), "--calibrator", str(model), "--by", "config_type"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--by config_type: {test_path} records no config_type per structure; use --by species")
    assert len(err.splitlines()) == 1
    assert main(["evaluate", str(test_path), "--calibrator", str(model), "--by", "element"]) == 2
    assert "invalid choice: 'element'" in capsys.readouterr().err
