"""core.figures: trace counts, units in axis titles, log axes, WebGL for large n, ids, HTML report."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from core import figures as F
from core import metrics as M

RNG = np.random.default_rng(0)
N = 60
W = RNG.lognormal(sigma=0.5, size=N)
E = W * np.sqrt(RNG.chisquare(3, N)) / 2.5
IDS = np.c_[np.repeat(np.arange(12), 5), np.tile(np.arange(5), 12)]
SPECIES = np.where(np.arange(N) % 2 == 0, 3, 17)


def _units(title) -> bool:
    return "eV/Å" in (title.text or "")


def test_method_colors_fixed_and_distinct():
    assert F.method_color("flexible") == F.method_color("Flexible")
    assert F.method_color("split") != F.method_color("flexible")
    cols = F.method_colors(["flexible", "split", "my method", "other", "flexible (uncorrected)"])
    assert cols["flexible"] == F.method_color("flexible")
    assert len(set(cols.values())) == 5
    assert all(c in F.OKABE_ITO for c in cols.values())


def test_parity_forces_components_customdata_and_title():
    ref = RNG.normal(size=(N, 3))
    pred = ref + 0.1
    fig = F.plot_parity(ref, pred, color=W, ids=IDS)
    assert isinstance(fig, go.Figure) and len(fig.data) == 2
    pts = fig.data[0]
    assert isinstance(pts, go.Scatter) and len(pts.x) == 3 * N
    cd = np.asarray(pts.customdata)
    assert cd.shape == (3 * N, 3)
    np.testing.assert_array_equal(cd[3 * 7 + 2], [IDS[7, 0], IDS[7, 1], 2])  # site 7, z component
    assert np.asarray(pts.marker.color).shape == (3 * N,)
    assert pts.marker.colorbar.title.text == "width (eV/Å)"
    assert _units(fig.layout.xaxis.title) and _units(fig.layout.yaxis.title)
    assert "MAE 0.1 eV/Å" in fig.layout.title.text and "RMSE 0.1 eV/Å" in fig.layout.title.text
    assert list(fig.data[1].x) == list(fig.data[1].y)  # y = x line


def test_parity_energy_units_and_scattergl_for_large_n():
    ref = RNG.normal(size=3000)
    fig = F.plot_parity(ref, ref * 1.01, quantity="energy", density=False)  # the scatter view
    assert isinstance(fig.data[0], go.Scattergl)
    assert "(eV)" in fig.layout.xaxis.title.text and "(eV)" in fig.layout.yaxis.title.text
    with pytest.raises(ValueError, match="quantity: .*got 'stress'"):
        F.plot_parity(ref, ref, quantity="stress")
    with pytest.raises(ValueError, match="predicted: expected the shape of reference"):
        F.plot_parity(ref, ref[:10])
    with pytest.raises(ValueError, match=r"ids: expected shape \(3000, 2\)"):
        F.plot_parity(ref, ref, ids=IDS)


def test_coverage_curve_traces_and_area_in_legend():
    lv = M.CALIBRATION_LEVELS
    fig = F.plot_coverage_curve({"flexible": (lv, lv), "split": (lv, np.clip(lv + 0.1, 0, 1))})
    assert len(fig.data) == 3
    assert fig.data[0].name == "flexible (area 0.000)"
    assert fig.data[0].line.color == F.method_color("flexible")
    assert "fraction" in fig.layout.xaxis.title.text and "observed" in fig.layout.yaxis.title.text


def test_calibration_curve_area_annotation_matches_metric():
    lv = M.CALIBRATION_LEVELS
    obs = lv**0.8
    fig = F.plot_calibration_curve(lv, obs, "flexible")
    assert len(fig.data) == 3
    assert fig.data[1].fill == "toself"  # shaded area
    area = float(np.mean(np.abs(obs - lv)))
    assert f"miscalibration area = {area:.3f}" in fig.layout.annotations[0].text


def test_uncertainty_error_log_log_spearman_and_ids():
    fig = F.plot_uncertainty_error(E, W, label="flexible", ids=IDS)
    assert len(fig.data) == 2
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert _units(fig.layout.xaxis.title) and _units(fig.layout.yaxis.title)
    assert f"ρ = {M.spearman(E, W):.3f}" in fig.layout.title.text
    np.testing.assert_array_equal(np.asarray(fig.data[0].customdata), IDS)
    # constant widths: the title says undefined rather than 0
    fig = F.plot_uncertainty_error(E, np.full(N, 0.5))
    assert "undefined" in fig.layout.title.text
    big = F.plot_uncertainty_error(np.repeat(E, 50), np.repeat(W, 50), density=False)
    assert isinstance(big.data[0], go.Scattergl)


def test_species_coverage_grouped_bars_by_symbol():
    reports = {
        "flexible": M.calibration_report(E, W, species=SPECIES),
        "split": M.calibration_report(E, W * 0.5, species=SPECIES),
    }
    fig = F.plot_species_coverage(reports, 0.9)
    assert len(fig.data) == 3
    assert [t.type for t in fig.data] == ["bar", "bar", "scatter"]
    assert list(fig.data[0].x) == ["Li", "Cl"]
    assert fig.data[0].y[0] == pytest.approx(reports["flexible"]["species_coverage"]["3"])
    assert fig.layout.barmode == "group"
    assert fig.layout.shapes[0].y0 == 0.9  # nominal line
    with pytest.raises(ValueError, match="has no species_coverage"):
        F.plot_species_coverage({"x": M.calibration_report(E, W)}, 0.9)


def test_width_histogram_and_structure_uncertainty():
    fig = F.plot_width_histogram({"flexible": W, "split": np.full(N, 1.0)})
    # spread widths: a step outline; constant widths (split CP): a vertical line (test_figures_readable.py)
    assert len(fig.data) == 2 and fig.data[0].line.shape == "hv" and list(fig.data[1].x) == [1.0, 1.0]
    assert _units(fig.layout.xaxis.title)
    me, mw = M.structure_maxima(E, W, IDS[:, 0])
    fig = F.plot_structure_uncertainty(me, mw, ids=np.arange(12))
    assert len(fig.data) == 2
    assert fig.layout.xaxis.type == "log" and _units(fig.layout.yaxis.title)
    np.testing.assert_array_equal(np.asarray(fig.data[0].customdata), np.arange(12))
    assert f"{M.spearman(me, mw):.3f}" in fig.layout.title.text


def test_training_curve():
    hist = [dict(epoch=i, train_loss=1 / (i + 1), val_loss=abs(i - 6) + 1.0) for i in range(10)]
    fig = F.plot_training_curve(hist)
    assert len(fig.data) == 2 and fig.layout.xaxis.title.text == "epoch"
    assert fig.layout.shapes[0].x0 == 6  # best validation epoch marked
    with pytest.raises(ValueError, match=r"history\[0\]"):
        F.plot_training_curve([{"epoch": 0}])


def test_confidence_band_coverages_in_legend():
    x = np.linspace(0, 1, N)
    fw = W * 2.0
    fig = F.plot_confidence_band(x, E, 1.0, fw, 0.9, x_label="bond length (Å)")
    assert len(fig.data) == 3
    cov_f, cov_g = M.coverage(E, fw), M.coverage(E, np.full(N, 1.0))
    assert f"coverage {cov_f:.1%}" in fig.data[0].name and fig.data[0].fill == "tozeroy"
    assert f"coverage {cov_g:.1%}" in fig.data[1].name
    assert set(np.asarray(fig.data[1].y)) == {1.0}  # flat global cutoff
    assert fig.layout.xaxis.title.text == "bond length (Å)" and _units(fig.layout.yaxis.title)
    fig = F.plot_confidence_band(None, E, 1.0, fw, 0.9)
    assert np.all(np.diff(np.asarray(fig.data[0].y)) >= 0)  # sorted by flexible width


def test_metric_bars_grouped_and_plain():
    reports = {m: M.calibration_report(E, W * s) for m, s in [("flexible", 1.0), ("split", 2.0)]}
    table = M.report_table(reports)
    fig = F.plot_metric_bars(table, "mean_width")
    assert len(fig.data) == 2 and _units(fig.layout.yaxis.title)
    assert fig.data[1].marker.color == F.method_color("split")
    long = pd.DataFrame(
        {"method": ["flexible", "split"] * 2, "study": ["in-domain"] * 2 + ["unseen"] * 2, "coverage": [0.9, 0.88, 0.85, 0.7],
         "confidence": 0.9}
    )
    fig = F.plot_metric_bars(long, "coverage")
    assert len(fig.data) == 2 and list(fig.data[0].x) == ["in-domain", "unseen"]
    assert fig.layout.shapes[0].y0 == 0.9
    with pytest.raises(ValueError, match="metric: 'nope' is not a column"):
        F.plot_metric_bars(table, "nope")


def test_learning_curve():
    fig = F.plot_learning_curve({"calibrated": ([5, 10, 20], [0.3, 0.2, 0.1]), "random": ([5, 10, 20], [0.3, 0.25, 0.2])},
                                "force MAE (eV/Å)")
    assert len(fig.data) == 2 and _units(fig.layout.yaxis.title)
    assert "labelled" in fig.layout.xaxis.title.text


def test_figures_to_html_self_contained_plotly_once():
    figs = [("a", F.plot_uncertainty_error(E, W)), ("b", F.plot_width_histogram({"x": W}))]
    table = M.report_table({"flexible": M.calibration_report(E, W)})
    html = F.figures_to_html(figs, [("Summary", table)], "Report <1>")
    assert html.startswith("<!DOCTYPE html>")
    assert "<title>Report &lt;1&gt;</title>" in html
    assert html.count("* plotly.js v") == 1  # the bundle, inlined once
    assert not re.search(r"<script[^>]*\bsrc\s*=", html)  # no external script at all
    assert "cdn.plot.ly/plotly" not in html.split("* plotly.js v")[0]
    assert html.count('class="plotly-graph-div"') == 2
    assert "Summary" in html and "coverage" in html
    with pytest.raises(ValueError, match=r"figures\[0\]"):
        F.figures_to_html([("a", "not a figure")], [], "t")
