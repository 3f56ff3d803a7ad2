"""Diagnose page: every calibration plot, and the teaching view (one confidence slider)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import notices, services, state, widgets
from app.figures_catalogue import FIGURE_TITLES, selected_site, teaching_figure
from app.pages_index import page

st.title("Diagnose")
run = state.get(state.RESULTS)
if run is None:
    widgets.dropped_note()
    st.warning("Calibrate first (Calibrate page).")
    if st.button("← Calibrate"):
        st.switch_page(page("calibrate"))
    st.stop()

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

figs = services.method_figures(run, label)
SELECTABLE = {"force_parity", "energy_parity", "uncertainty_error", "structure_uncertainty"}


def _draw(name: str) -> None:
    if name not in figs:
        return
    key = f"fig_{name}"
    if isinstance(figs[name], str):  # could not be drawn: say why
        st.warning(f"**{FIGURE_TITLES.get(name, name)}** — {figs[name]}")
    elif name in SELECTABLE:
        st.plotly_chart(figs[name], key=key, on_select=lambda k=key: _on_select(k),
                        selection_mode=("points", "box", "lasso"))
    else:
        st.plotly_chart(figs[name], key=key)


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
    st.plotly_chart(fig, key="fig_teaching")
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
