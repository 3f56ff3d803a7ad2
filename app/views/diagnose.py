"""Diagnose page: every calibration plot, the teaching view (one confidence slider) and, on demand, the
toolkit diagnostics (RMSE vs RMV, group calibration, sharpness) with the descriptor map."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import notices, services, state, widgets
from app.catalog import describe_error
from app.figures_catalogue import (FIGURE_TITLES, colour_choices, recoloured_figures, selected_site, site_ids,
                                    teaching_figure, toolkit_figures)
from app.pages_index import page

st.title("Diagnose")
run = widgets.results_or_stop(".")

if state.get(state.OPEN_STRUCTURE):
    state.put(state.OPEN_STRUCTURE, False)
    st.switch_page(page("structures"))


def _on_select(chart_key: str) -> None:
    """A point was clicked or boxed: remember the site and open it on the Structures page."""
    picked = selected_site(st.session_state.get(chart_key))
    if picked is not None:
        state.select_site(*picked)
        state.put(state.OPEN_STRUCTURE, True)


if state.get(state.W_DIAG_METHOD) not in run.labels:
    state.put(state.W_DIAG_METHOD, run.flexible_label() or run.labels[0])
label = st.selectbox("Method shown in the per-method plots", run.labels, key=state.W_DIAG_METHOD)
rep = run.reports.get(label, {})
widgets.honest_header(run)

c = st.columns(5)
widgets.coverage_metric(c[0], rep, run.cal.n_structures)
c[1].metric("mean width (eV/Å)", notices.fmt(rep.get("mean_width"), 4))
c[2].metric("width ratio vs split CP", notices.fmt(rep.get("width_ratio")))
c[3].metric("Spearman ρ (width, error)", notices.fmt(rep.get("spearman")), help=rep.get("spearman_note") or None)
c[4].metric("miscalibration area", notices.fmt(rep.get("miscalibration_area")),
            help="Mean |observed − nominal coverage| over the levels 0.05, 0.10, …, 0.95 — the number in the "
                 "calibration plots' legends.")
st.caption("Click or box-select points in the parity, scatter or structure plots to open that structure "
           "with the atom highlighted.")

_COLOURS = colour_choices(run)  # the site plots' colouring (issue 12): method / element / out of domain
if st.session_state.get("w_diag_colour_by") not in _COLOURS:
    st.session_state.pop("w_diag_colour_by", None)
colour_by = st.radio("Colour the site plots by", _COLOURS, horizontal=True, key="w_diag_colour_by",
                     help="method: its colour (parity: the width); element: Jmol colours, symbols in the legend; "
                          "out of domain: sites outside the calibration domain in a colour of their own.")
figs = recoloured_figures(run, label, services.method_figures(run, label), colour_by)
SELECTABLE = {"force_parity", "energy_parity", "uncertainty_error", "structure_uncertainty"}


def _draw(name: str) -> None:
    if name not in figs:
        return
    key = f"fig_{name}"
    if isinstance(figs[name], str):  # could not be drawn: say why
        st.warning(f"**{FIGURE_TITLES.get(name, name)}** — {figs[name]}")
    elif name in SELECTABLE:
        widgets.plotly_chart(figs[name], key=key, on_select=lambda k=key: _on_select(k),
                             selection_mode=("points", "box", "lasso"))
    else:
        widgets.plotly_chart(figs[name], key=key)


def _band_caption(level: float) -> None:
    """The coverages at this level with the range expected there (a warning when outside it)."""
    k = run.level_index(level)
    lab = run.flexible_label()
    observed = {lab: float(np.mean(run.test.errors <= run.widths_levels[lab][:, k])),
                "global CP": float(np.mean(run.test.errors <= run.reference_levels[:, k]))}
    text, warnings = notices.level_coverage_text(run, k, observed)
    for warning in warnings:
        st.warning(warning, icon=":material/warning:")
    st.caption(text)


@st.fragment
def teaching_view() -> None:
    st.markdown("**One confidence, two kinds of band**")
    st.caption("The slider moves the global split-CP cutoff (one width for every site) and the learned q_θ band "
               "together, from the stored predictions at each level — nothing is refitted.")
    if run.flexible_label() is None:
        st.info("Include a q_θ method (flexible) on the Calibrate page to compare its band with global CP.")
        return
    levels = [float(x) for x in np.round(run.levels, 2)]
    if state.get(state.W_TEACH_LEVEL) not in levels:
        state.put(state.W_TEACH_LEVEL, min(levels, key=lambda x: abs(x - run.confidence)))
    level = st.select_slider("Confidence", options=levels, key=state.W_TEACH_LEVEL,
                             format_func=lambda x: f"{x:.0%}")
    fig = teaching_figure(run, level)
    if fig is None:
        st.info("The q_θ method gives no widths at other levels here.")
        return
    widgets.plotly_chart(fig, key="fig_teaching")
    _band_caption(level)


# Tabs render only the open one (on_change="rerun"): a click redraws two plots, not nine.
tabs = st.tabs(list(state.DIAG_TABS), key=state.W_DIAG_TAB, on_change="rerun")
for tab, (tab_name, names) in zip(tabs, state.DIAG_TABS.items()):
    if not tab.open:
        continue
    with tab:
        if tab_name == state.TEACHING_TAB:
            teaching_view()
            continue
        cols = st.columns(2)
        for col, name in zip(cols, names):
            with col:
                _draw(name)


MORE_KEY, MAP_COLOUR_KEY, PCA_KEY = "w_more_diag", "w_map_colour", "diag_pca"


def _pca(test):
    """PCA of the test sites' descriptors, kept for this run (recolouring does not recompute it)."""
    from core.figures_diagnostics import descriptor_pca

    cached = st.session_state.get(PCA_KEY)
    if cached is None or cached[0] != run.token:
        cached = (run.token, descriptor_pca(test.descriptors, 2))
        st.session_state[PCA_KEY] = cached
    return cached[1]


def _sharpness_table() -> None:
    import pandas as pd

    from core.metrics import sharpness

    rows = {m: sharpness(run.widths[m]) for m in run.labels}
    st.dataframe(pd.DataFrame({
        "mean width (eV/Å)": [r["mean"] for r in rows.values()],
        "median width (eV/Å)": [r["median"] for r in rows.values()],
        "coefficient of variation": [r["cv"] for r in rows.values()],
        "infinite widths": [r["n_infinite"] for r in rows.values()],
    }, index=pd.Index(list(rows), name="method")), key="tbl_sharpness")


def _show(fig, key: str, **kwargs) -> None:
    if isinstance(fig, str):
        st.warning(fig)
    else:
        widgets.plotly_chart(fig, key=key, **kwargs)


def _descriptor_map(lab: str) -> None:
    from core.figures_diagnostics import plot_descriptor_map

    test = run.test
    colour = st.radio("Colour the map by", ("width", "error"), key=MAP_COLOUR_KEY, horizontal=True,
                      format_func=lambda o: f"width ({lab})" if o == "width" else "error")
    values = test.errors if colour == "error" else run.widths[lab]
    title = "error" if colour == "error" else f"width ({lab})"
    try:
        fig = plot_descriptor_map(test.descriptors, values, colour_label=f"{title} (eV/Å)", ids=site_ids(test),
                                  coords=_pca(test))
    except (ValueError, TypeError) as exc:
        st.warning(f"The descriptor map cannot be drawn: {describe_error(exc)}")
        return
    _show(fig, "fig_descriptor_map", on_select=lambda: _on_select("fig_descriptor_map"),
          selection_mode=("points", "box", "lasso"))


@st.fragment
def more_diagnostics() -> None:
    if state.get(state.OPEN_STRUCTURE):  # a map click inside this fragment: rerun the page, which opens it
        st.rerun(scope="app")
    box = st.expander("More diagnostics — binned errors, group calibration, sharpness, descriptor map",
                      key=MORE_KEY, on_change="rerun", icon=":material/query_stats:")
    if not box.open:  # drawn only when opened: nothing is computed for a closed section
        return
    with box:
        lab = state.get(state.W_DIAG_METHOD)
        st.caption(
            f"For **{lab}** on the test sites. A width w at confidence c is read as the c-quantile of σ·χ₃ (the norm "
            "of a 3-vector force error with N(0, σ²) components), so σ = w / χ₃⁻¹(c); a bin's RMSE is "
            "√(mean e²/3) per component. Calibrated widths put RMSE = RMV (Levi et al. 2022). Group coverages come "
            "with the range a calibrated model shows for that group size (binomial); the adversarial plot takes "
            "the worst of 100 random contiguous groups of sites ordered by width (Chung et al. 2021).")
        figs = toolkit_figures(run, lab)
        cols = st.columns(2)
        with cols[0]:
            _show(figs["rmse_rmv"], "fig_rmse_rmv")
        with cols[1]:
            _show(figs["adversarial"], "fig_adversarial")
        cols = st.columns(2)
        with cols[0]:
            _show(figs["ordered"], "fig_ordered_groups")
        with cols[1]:
            _show(figs["sharpness"], "fig_sharpness")
            _sharpness_table()
        st.markdown("**Descriptor map** — click or box-select a site to open it on the Structures page.")
        _descriptor_map(lab)


more_diagnostics()
