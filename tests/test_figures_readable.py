"""Readable plots at 10^4 sites (issue 12 item 12): decade ticks, robust ranges, density views,
constant widths as lines, colours per element, titles clear of the modebar."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import plotly.graph_objects as go
import pytest

from app import figures_catalogue as FC
from core import figures as F
from core.figures_density import DENSITY_THRESHOLD, MAX_HIGHLIGHTED, axis_range
from core.figures_scales import element_color, format_tick, log_ticks, robust_range
from tests.test_app import cache_dir, off_domain  # noqa: E402,F401  (module fixtures, for the AppTest below)

RNG = np.random.default_rng(12)
# a readable tick label: 0.01, 0.2, 10, 10⁻⁵, 2×10⁻⁵
TICK = re.compile(r"^(\d+(\.\d+)?|(\d×)?10[⁻⁰¹²³⁴⁵⁶⁷⁸⁹]+)$")


def _sites(n: int, seed: int = 0, df: float = 3.0):
    """Heavy-tailed synthetic sites: widths (n,), errors (n,), ids (n, 2), species (n,), ood (n,)."""
    rng = np.random.default_rng(seed)
    w = rng.lognormal(-2.0, 0.5, n)
    e = w * np.abs(rng.standard_t(df, n))
    ids = np.c_[np.arange(n) // 20, np.arange(n) % 20]
    species = rng.choice([1, 6, 8], n)
    ood = rng.random(n) < 0.05
    return e, w, ids, species, ood


def _by_name(fig, prefix: str):
    return [t for t in fig.data if (t.name or "").startswith(prefix)]


# ------------------------------------------------------------------ log ticks
def test_log_ticks_decades_or_1_2_5_and_readable_labels():
    vals, text = log_ticks(1e-3, 20.0)
    assert vals == pytest.approx([1e-3, 1e-2, 0.1, 1.0, 10.0])
    assert text == ["0.001", "0.01", "0.1", "1", "10"]
    vals, text = log_ticks(0.03, 0.8)  # under three decades inside: 1-2-5 steps
    assert vals == pytest.approx([0.05, 0.1, 0.2, 0.5]) and text == ["0.05", "0.1", "0.2", "0.5"]
    vals, _ = log_ticks(1e-12, 1e6)  # 19 decades: every 3rd, at most 8 ticks
    assert 2 <= len(vals) <= 8
    assert format_tick(1e-5) == "10⁻⁵" and format_tick(2e-5) == "2×10⁻⁵" and format_tick(1e4) == "10⁴"
    with pytest.raises(ValueError, match=r"lo, hi: expected 0 < lo < hi.*got 1.0, 0.5"):
        log_ticks(1.0, 0.5)
    with pytest.raises(ValueError, match="value: expected a positive finite tick, got -1"):
        format_tick(-1)


def test_every_log_axis_has_few_readable_ticks():
    e, w, ids, _sp, _ood = _sites(500)
    me, mw = e[:40] * 3, w[:40] * 2
    figs = [F.plot_uncertainty_error(e, w, ids=ids), F.plot_structure_uncertainty(me, mw),
            F.plot_width_histogram({"a": w, "b": w * 30}, log=True)]
    for fig in figs:
        axes = [fig.layout.xaxis, fig.layout.yaxis] if fig.layout.yaxis.type == "log" else [fig.layout.xaxis]
        for ax in axes:
            assert ax.type == "log" and ax.tickmode == "array"
            lo, hi = (10.0**r for r in ax.range)
            shown = [t for v, t in zip(ax.tickvals, ax.ticktext) if lo <= v <= hi]
            assert 2 <= len(shown) <= 8, shown  # not every minor digit
            assert all(TICK.match(t) for t in ax.ticktext), ax.ticktext
            assert "eV/Å" in ax.title.text


# ------------------------------------------------------------------ ranges
def test_robust_range_is_narrower_than_min_max_for_heavy_tails():
    e, w, ids, _sp, _ood = _sites(3000, df=1.0)  # Cauchy-like errors
    fig = F.plot_uncertainty_error(e, w, ids=ids, density=False)
    lo, hi = fig.layout.yaxis.range  # log10 units
    q_lo, q_hi = np.log10(np.percentile(e, [0.5, 99.5]))
    assert lo <= q_lo and hi >= q_hi  # the robust range is inside
    assert hi - lo < 0.75 * (np.log10(e.max()) - np.log10(e.min()))  # narrower than min-max
    xlo, xhi = fig.layout.xaxis.range
    assert xlo <= np.log10(np.percentile(w, 0.5)) and xhi >= np.log10(np.percentile(w, 99.5))
    # the points beyond the axes are drawn on the border, counted in the legend, true values in the hover
    outside = (np.log10(e) < lo) | (np.log10(e) > hi) | (np.log10(w) < xlo) | (np.log10(w) > xhi)
    beyond = _by_name(fig, "beyond the axes")
    assert len(beyond) == 1 and beyond[0].name == f"beyond the axes ({outside.sum()} points, on the border)"
    assert np.all(np.log10(beyond[0].y) >= lo - 1e-9) and np.all(np.log10(beyond[0].y) <= hi + 1e-9)
    np.testing.assert_array_equal(np.asarray(beyond[0].customdata), ids[outside])
    i = int(np.flatnonzero(outside)[0])
    assert f"error {e[i]:.4g} eV/Å" in beyond[0].text[0]
    assert len(fig.data[0].x) + outside.sum() == e.size  # every point is drawn once
    assert _by_name(fig, "error = width")  # the y = x line is kept


def test_full_range_kept_when_nothing_would_be_gained():
    v = np.linspace(1.0, 2.0, 200)
    lo, hi = axis_range(v)
    assert lo < 1.0 and hi > 2.0  # the padded full range: no point hidden for nothing
    assert robust_range(v, quantiles=(0, 100), pad=0.0) == pytest.approx((1.0, 2.0))
    with pytest.raises(ValueError, match="values: expected at least one finite positive value"):
        robust_range([-1.0, 0.0], log=True)


# ------------------------------------------------------------------ density views
def test_scatter_below_and_density_above_the_threshold():
    small = _sites(DENSITY_THRESHOLD // 2)
    fig = F.plot_uncertainty_error(*small[:2], label="flexible", ids=small[2])
    assert not [t for t in fig.data if t.type == "heatmap"]
    assert fig.data[0].type == "scatter" and len(fig.data[0].x) + sum(len(t.x) for t in _by_name(fig, "beyond")) \
        == DENSITY_THRESHOLD // 2
    e, w, ids, _sp, ood = _sites(3 * DENSITY_THRESHOLD)
    fig = F.plot_uncertainty_error(e, w, label="flexible", ids=ids, ood=ood)
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 1
    counts = np.asarray(heat[0].text)
    assert counts.shape == (60, 60) and 0.9 * e.size <= counts.sum() <= e.size  # (points beyond are not binned)
    assert _by_name(fig, "median error per bin") and _by_name(fig, "5–95 % of errors per bin")
    # the first trace is still a clickable point layer: the largest error/width ratios, with ids
    first = fig.data[0]
    drawn = sum(len(t.x) for t in fig.data if t.type in ("scatter", "scattergl") and t.customdata is not None)
    assert drawn < 2000  # a few hundred points drawn: SVG, no WebGL context (it costs ~0.5 s to open)
    assert first.type == "scatter" and first.name.startswith("flexible: largest error/width")
    assert len(first.x) <= MAX_HIGHLIGHTED
    ratio = e / w
    cd = np.asarray(first.customdata)
    assert ratio[cd[:, 0] * 20 + cd[:, 1]].min() >= np.sort(ratio)[-MAX_HIGHLIGHTED]
    # every out-of-domain site is still a point, with its ids
    marked = _by_name(fig, "outside the calibration domain")
    assert len(marked) == 1 and marked[0].name == f"outside the calibration domain ({ood.sum()} sites)"
    np.testing.assert_array_equal(np.asarray(marked[0].customdata), ids[ood])
    # the density view is explicit on request
    assert not [t for t in F.plot_uncertainty_error(e, w, density=False).data if t.type == "heatmap"]
    with pytest.raises(TypeError, match="density: expected True, False or None, got 'yes'"):
        F.plot_uncertainty_error(e, w, density="yes")


def test_parity_density_keeps_largest_errors_and_out_of_domain_components():
    n = 1500  # 4,500 force components: above the threshold
    ref = RNG.normal(size=(n, 3))
    pred = ref + 0.05 * RNG.standard_t(2, size=(n, 3))
    ids = np.c_[np.arange(n), np.zeros(n, int)]
    ood = np.arange(n) < 10
    fig = F.plot_parity(ref, pred, color=np.ones(n), ids=ids, ood=ood)
    assert [t.type for t in fig.data].count("heatmap") == 1
    first = fig.data[0]
    assert first.name == f"largest |error| ({MAX_HIGHLIGHTED} components)" or first.name.startswith("largest")
    assert np.asarray(first.customdata).shape[1] == 3  # (structure, atom, component)
    marked = _by_name(fig, "outside the calibration domain")
    assert marked[0].name == "outside the calibration domain (10 sites, 30 components)" and len(marked[0].x) == 30
    assert fig.layout.yaxis.scaleanchor == "x"
    assert "MAE" in fig.layout.title.text and "eV/Å" in fig.layout.xaxis.title.text


def test_density_figure_is_much_smaller_at_ten_thousand_sites():
    e, w, ids, _sp, _ood = _sites(10_000)
    dense = len(F.plot_uncertainty_error(e, w, ids=ids).to_json())
    scatter = len(F.plot_uncertainty_error(e, w, ids=ids, density=False).to_json())
    assert dense < scatter / 3, (dense, scatter)
    ref = RNG.normal(size=(10_000, 3))
    dense = len(F.plot_parity(ref, ref * 1.1, color=w, ids=ids).to_json())
    scatter = len(F.plot_parity(ref, ref * 1.1, color=w, ids=ids, density=False).to_json())
    assert dense < scatter / 5, (dense, scatter)


def test_selection_on_a_density_figure_names_a_site_never_a_bin():
    e, w, ids, _sp, _ood = _sites(5000)
    fig = F.plot_uncertainty_error(e, w, ids=ids)
    cd = np.asarray(fig.data[0].customdata)[0].tolist()
    median = _by_name(fig, "median error per bin")[0]
    assert median.customdata is None  # a click on the binned line is not a site
    event = {"selection": {"points": [{"x": 1.0, "y": 1.0}, {"customdata": cd}]}}
    assert FC.selected_site(event) == (cd[0], cd[1])


# ------------------------------------------------------------------ width histogram
def test_constant_width_is_a_line_and_others_share_a_robust_range():
    n = 5000
    flex = RNG.lognormal(-2, 0.4, n)
    flex[:5] = 50.0  # a few huge widths must not squash the histogram
    fig = F.plot_width_histogram({"flexible": flex, "split": np.full(n, 0.3), "knn": flex * 1.3})
    split = _by_name(fig, "split")[0]
    assert list(split.x) == [0.3, 0.3] and split.mode.startswith("lines")
    assert split.name == "split: one width for every site, 0.3 eV/Å"
    steps = [t for t in fig.data if t.line.shape == "hv"]
    assert len(steps) == 2 and all(t.fill == "tozeroy" for t in steps)
    lo, hi = fig.layout.xaxis.range
    pooled = np.r_[flex, flex * 1.3]
    assert lo <= np.percentile(pooled, 0.5) and hi >= np.percentile(pooled, 99.5) and hi >= 0.3
    assert hi < 10.0  # narrower than min-max
    flex_trace = _by_name(fig, "flexible")[0]
    beyond = int(np.sum((flex < lo) | (flex > hi)))
    assert beyond >= 5 and flex_trace.name == f"flexible ({beyond} sites beyond the axis)"  # the 50s at least
    assert np.asarray(flex_trace.y).sum() == n - beyond
    assert max(split.y) >= max(np.asarray(flex_trace.y))  # the line reaches the top of the others
    assert "eV/Å" in fig.layout.xaxis.title.text and fig.layout.yaxis.title.text == "number of sites"
    auto = F.plot_width_histogram({"a": RNG.lognormal(-3, 1.5, n)}, log="auto")
    assert auto.layout.xaxis.type == "log"
    with pytest.raises(ValueError, match="log: expected True, False or 'auto', got 'yes'"):
        F.plot_width_histogram({"a": flex}, log="yes")


# ------------------------------------------------------------------ colours
def test_colour_by_element_jmol_colours_and_symbols_in_the_legend():
    e, w, ids, species, _ood = _sites(600)
    fig = F.plot_uncertainty_error(e, w, ids=ids, species=species, color_by="element")
    names = [t.name for t in fig.data if t.name in ("H", "C", "O")]
    assert names == ["H", "C", "O"]
    for sym, z in (("H", 1), ("C", 6), ("O", 8)):
        t = _by_name(fig, sym)[0]
        assert t.marker.color == element_color(z)
        cd = np.asarray(t.customdata)
        assert np.all(species[cd[:, 0] * 20 + cd[:, 1]] == z)
    assert element_color(8) == "#FF0D0D" and element_color(1) == "#FFFFFF"
    ref = RNG.normal(size=(600, 3))
    par = F.plot_parity(ref, ref + 0.1, ids=ids, species=species, color_by="element", density=False)
    assert [t.name for t in par.data][:3] == ["H", "C", "O"]
    assert sum(len(t.x) for t in par.data[:3]) + sum(len(t.x) for t in _by_name(par, "beyond")) == 1800
    with pytest.raises(ValueError, match=r"species: color_by='element' needs the atomic numbers"):
        F.plot_uncertainty_error(e, w, color_by="element")
    with pytest.raises(ValueError, match=r"color_by: expected one of \['method', 'element', 'out of domain'\], "
                                         r"got 'rainbow'"):
        F.plot_uncertainty_error(e, w, color_by="rainbow")
    with pytest.raises(ValueError, match=r"species: expected shape \(600,\), got \(3,\)"):
        F.plot_uncertainty_error(e, w, species=[1, 2, 3], color_by="element")


def test_colour_by_out_of_domain_two_layers():
    e, w, ids, _sp, ood = _sites(800)
    fig = F.plot_uncertainty_error(e, w, ids=ids, ood=ood, color_by="out of domain")
    inside, outside = _by_name(fig, "in the calibration domain"), _by_name(fig, "outside the calibration domain")
    assert len(outside) == 1 and outside[0].marker.color != inside[0].marker.color
    assert outside[0].name == f"outside the calibration domain ({ood.sum()} sites)"


# ------------------------------------------------------------------ layout
def test_titles_left_below_the_modebar_with_units():
    e, w, ids, _sp, _ood = _sites(300)
    ref = RNG.normal(size=(300, 3))
    figs = [F.plot_uncertainty_error(e, w, label="flexible (uncorrected)"),
            F.plot_parity(ref, ref + 0.1, color=w), F.plot_width_histogram({"a": w})]
    for fig in figs:
        t = fig.layout.title
        assert t.x <= 0.02 and t.xanchor == "left" and t.yref == "container" and t.pad.t >= 28
        lines = t.text.count("<br>") + 1
        assert all(len(s) <= F.TITLE_WIDTH + 12 for s in t.text.split("<br>"))
        assert fig.layout.margin.t >= t.pad.t + 20 * lines  # the title fits under the modebar row
        assert "eV/Å" in fig.layout.xaxis.title.text
    assert F.wrap_title("Force component parity — MAE 0.123 eV/Å, RMSE 0.234 eV/Å", 40) == \
        "Force component parity<br>— MAE 0.123 eV/Å, RMSE 0.234 eV/Å"
    assert F.wrap_title("short") == "short"


# ------------------------------------------------------------------ app catalogue
def _fake_run(n: int = 400, ood_frac: float = 0.1):
    e, w, ids, species, _ = _sites(n)
    ood = np.arange(n) < int(ood_frac * n)
    ref = RNG.normal(size=(n, 3))
    test = SimpleNamespace(errors=e, structure_ids=ids[:, 0], atom_index=ids[:, 1], species=species,
                           forces_ref=ref, forces_pred=ref + 0.1, structure_info={})
    return SimpleNamespace(test=test, widths={"flexible": w}, ood=ood, ood_structures=np.unique(ids[ood, 0]),
                           labels=["flexible"])


def test_catalogue_recolours_the_site_plots():
    run = _fake_run()
    assert FC.colour_choices(run) == ("method", "element", "out of domain")
    base = FC._build(FC._site_builders(run, "flexible"), "flexible")
    assert FC.recoloured_figures(run, "flexible", base, "method") is base
    by_el = FC.recoloured_figures(run, "flexible", base, "element")
    assert [t.name for t in by_el["uncertainty_error"].data][:3] == ["H", "C", "O"]
    assert by_el["structure_uncertainty"] is base["structure_uncertainty"]  # no element per structure
    assert _by_name(by_el["uncertainty_error"], "outside the calibration domain")  # still circled
    by_ood = FC.recoloured_figures(run, "flexible", base, "out of domain")
    assert _by_name(by_ood["structure_uncertainty"], "in the calibration domain")
    assert _by_name(by_ood["force_parity"], "outside the calibration domain (40 sites")
    run.ood = np.zeros(400, bool)
    assert FC.colour_choices(run) == ("method", "element")
    with pytest.raises(ValueError, match="colour_by: expected one of .* got 'pink'"):
        FC.recoloured_figures(run, "flexible", base, "pink")


def test_figures_are_plotly_figures_with_units_everywhere():
    e, w, ids, species, ood = _sites(2500)
    for fig in (F.plot_uncertainty_error(e, w, ids=ids, species=species, ood=ood, color_by="element"),
                F.plot_structure_uncertainty(e[:50], w[:50], ood=ood[:50], color_by="out of domain")):
        assert isinstance(fig, go.Figure)
        assert "eV/Å" in fig.layout.xaxis.title.text and "eV/Å" in fig.layout.yaxis.title.text


# ------------------------------------------------------------------ the Diagnose page's choice
def test_diagnose_page_colour_choice(off_domain):  # noqa: F811  (fixture imported from tests.test_app)
    import json

    from app import state
    from app.pages_index import page
    from tests.test_app import _no_exception

    at = off_domain
    at.switch_page(page("diagnose")).run()
    _no_exception(at)
    radio = at.radio(key="w_diag_colour_by")
    assert list(radio.options) == ["method", "element", "out of domain"] and radio.value == "method"
    at.session_state[state.W_DIAG_TAB] = "Uncertainty vs error"
    radio.set_value("element").run()
    _no_exception(at)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    run = at.session_state[state.RESULTS]
    from core.figures_scales import element_symbol

    symbols = {element_symbol(z) for z in np.unique(run.test.species)}
    names = {t.get("name") for t in spec["data"]}
    assert symbols <= names, (symbols, names)
    assert any((n or "").startswith("outside the calibration domain") for n in names)  # still circled
    at.radio(key="w_diag_colour_by").set_value("out of domain").run()
    _no_exception(at)
    names = [t.get("name") or "" for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]]
    assert any(n.startswith("in the calibration domain") for n in names)
    at.radio(key="w_diag_colour_by").set_value("method").run()
    _no_exception(at)
