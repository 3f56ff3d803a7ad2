"""Structures page: 3D view coloured by width or error, picked from plots or the worst-structures table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import catalog, notices, services, state, tables, widgets
from app.figures_catalogue import selected_site, site_ids
from core.tables import MISSING

st.title("Structures")
sites = state.get(state.SITES)
dataset = state.get(state.DATASET)
if sites is None or dataset is None:
    st.warning("Featurize a dataset on the Model page first.")
    st.stop()
state.put(state.OPEN_STRUCTURE, False)
run = state.get(state.RESULTS)
if run is not None:
    widgets.stale_badge(run)

# ---------------------------------------------------------------- per-structure overview
sids = sites.unique_structures
info = sites.structure_info
test_ids = set(run.test.unique_structures.tolist()) if run is not None else set()
cal_ids = set(run.cal.unique_structures.tolist()) if run is not None else set()
sorted_by_id = np.all(np.diff(sites.structure_ids) >= 0)
order = np.argsort(sites.structure_ids, kind="stable") if not sorted_by_id else None
err_sorted = sites.errors if order is None else sites.errors[order]
ids_sorted = sites.structure_ids if order is None else sites.structure_ids[order]
starts = np.r_[0, np.flatnonzero(np.diff(ids_sorted)) + 1]
max_err = np.maximum.reduceat(err_sorted, starts)
ctype = info["config_type"].astype(str) if "config_type" in info else np.full(len(sids), "default")


ood_ids = set(run.ood_structures.tolist()) if run is not None else set()


def _part(sid: int) -> str:
    if sid in test_ids:
        return "test, out of domain" if sid in ood_ids else "test"
    return "calibration" if sid in cal_ids else MISSING


labels = run.labels if run is not None else []
if labels and state.get(state.W_VIEW_METHOD) not in labels:
    state.put(state.W_VIEW_METHOD, run.flexible_label() or labels[0])
if state.get(state.W_STRUCTURE) not in set(sids.tolist()):
    sel = state.get(state.SELECTED)
    if sel is not None:
        state.put(state.W_STRUCTURE, sel["structure_id"])
    else:
        pool = [i for i, s in enumerate(sids) if s in test_ids] or list(range(len(sids)))
        state.put(state.W_STRUCTURE, int(sids[max(pool, key=lambda i: max_err[i])]))

pos_of = {int(s): i for i, s in enumerate(sids)}


def highlighted_first(table: pd.DataFrame, atom: int | None) -> pd.DataFrame:
    """The atom table with the highlighted atom's row first and marked (◉ in a "highlighted" column)."""
    if atom is None:
        return table
    mark = (table["atom_index"] == atom).to_numpy()
    out = pd.concat([table[mark], table[~mark]], ignore_index=True)
    out.insert(0, "highlighted", np.where(np.r_[mark[mark], mark[~mark]], "◉", ""))
    return out


def _describe(sid: int) -> str:
    i = pos_of[int(sid)]
    return f"#{sid} — {ctype[i]}, {int(info['n_atoms'][i])} atoms, {_part(int(sid))}, max error {max_err[i]:.3f} eV/Å"


# ---------------------------------------------------------------------------- controls
c1, c2, c3, c4 = st.columns([3, 2, 1.3, 1])
sid = c1.selectbox("Structure", [int(s) for s in sids], key=state.W_STRUCTURE, format_func=_describe)
if labels:
    label = c2.selectbox("Method", labels, key=state.W_VIEW_METHOD)
else:
    label = None
    c2.info("Calibrate to colour by width.")
OOD = "out of domain"
colour_options = ["width", "error"] if labels else ["error"]
if run is not None and run.domain is not None:
    colour_options.append(OOD)
if state.get(state.W_COLOR_BY) not in colour_options:
    state.put(state.W_COLOR_BY, colour_options[0])
color_by = c3.radio("Colour by", colour_options, key=state.W_COLOR_BY,
                    help="out of domain: 1 = the atom's environment lies outside the calibration domain "
                         "(its out-of-domain score is above 1).")
arrows_on = c4.checkbox("Error arrows", key=state.W_ARROWS)

sub = sites.select_structures([sid])
atoms = dataset.structures[sid]
n_atoms = len(atoms)
errors = np.zeros(n_atoms)
errors[sub.atom_index] = sub.errors
widths = None
if label is not None:
    widths = np.zeros(n_atoms)
    widths[sub.atom_index] = run.calibrators[label].predict(sub)
arrows = None
if arrows_on and sub.forces_pred is not None and sub.forces_ref is not None:
    arrows = np.zeros((n_atoms, 3))
    arrows[sub.atom_index] = sub.forces_pred - sub.forces_ref
selected = state.get(state.SELECTED)
highlight = selected["atom_index"] if selected and selected["structure_id"] == sid else None
if highlight is not None and not 0 <= highlight < n_atoms:
    highlight = None

ood_atoms, ood_score, struct_flag = None, None, False
if run is not None and run.domain is not None:
    from core.domain import THRESHOLD

    ood_score = np.zeros(n_atoms)
    ood_score[sub.atom_index] = run.site_domain_scores(sub)
    ood_atoms = (ood_score > THRESHOLD).astype(float)
    struct_flag = bool(run.domain.structure_flags(sub)[1][0])
use_width = color_by == "width" and widths is not None
if color_by == OOD and ood_atoms is not None:
    values, vlabel, vrange = ood_atoms, "outside the calibration domain (1 = yes)", (0.0, 1.0)
elif use_width:
    values, vlabel, vrange = widths, f"{label} width at {run.confidence:.0%} (eV/Å)", (None, None)
else:
    values, vlabel, vrange = errors, "force error ‖ΔF‖ (eV/Å)", (None, None)
note = notices.structure_ood_text(run, int(sid), struct_flag,
                                  int(np.count_nonzero(ood_atoms)) if ood_atoms is not None else 0, n_atoms)
if note:
    st.warning(note, icon=":material/explore_off:")

left, right = st.columns([3, 2])
with left:
    from core.viewer import structure_view_html

    try:
        html = structure_view_html(atoms, values=values, label=vlabel, highlight=highlight, arrows=arrows,
                                   vmin=vrange[0], vmax=vrange[1], width=560, height=420,
                                   js_url=services.viewer_js_url())
        st.iframe(html, height=580)
    except FileNotFoundError as exc:
        st.error(f"The 3D viewer needs 3Dmol.js installed locally: {exc}")
    except ValueError as exc:  # e.g. infinite widths (too few calibration sites for this confidence)
        st.error(f"Cannot colour this structure: {catalog.describe_error(exc)}")
with right:
    table = pd.DataFrame({"atom_index": np.arange(n_atoms), "symbol": atoms.get_chemical_symbols(),
                          "error": errors})
    if widths is not None:
        table["width"] = widths
        table["covered"] = errors <= widths
    if ood_score is not None:
        table["ood_score"] = ood_score
    table = highlighted_first(table, highlight)
    st.caption(f"Atoms of structure #{sid} ({_part(sid)} part). Select a row to highlight the atom"
               + (f"; atom {highlight} is highlighted (row 1, ◉)." if highlight is not None else "."))

    # one widget per (structure, highlighted atom): a new highlight starts with its row (row 0) selected
    atom_key = f"atom_table-{sid}-{highlight}"

    def _pick_atom() -> None:
        rows = st.session_state[atom_key].selection.rows
        if rows:
            state.select_site(sid, int(table.iloc[rows[0]]["atom_index"]))

    named = {} if widths is None else {tables.column_label("width"): st.column_config.NumberColumn(
        f"Width, {label} at {run.confidence:.0%} (eV/Å)", format="%.4g", help="calibrated half-width")}
    tables.show_table(table, height=470, hide_index=True, key=atom_key, on_select=_pick_atom,
                      selection_mode="single-row", column_config=named,
                      selection_default={"selection": {"rows": [0]}} if highlight is not None else None)

# -------------------------------------------------------------- pick from a table / plot
st.divider()
if run is None:
    st.info("Calibrate to see widths, the worst-structures table and the selectable scatter.")
    st.stop()

from core.metrics import structure_maxima  # noqa: E402

me, mw = structure_maxima(run.test.errors, run.widths[label], run.test.structure_ids)
tids = np.unique(run.test.structure_ids)
worst = pd.DataFrame({"structure_id": tids, "config_type": [ctype[pos_of[int(s)]] for s in tids],
                      "max_error": me, "max_width": mw, "error_width_ratio": me / mw})
if run.ood is not None:
    worst["ood"] = np.isin(tids, run.ood_structures)
worst = worst.sort_values("max_error", ascending=False).head(20).reset_index(drop=True)


def _pick_structure() -> None:
    rows = st.session_state["worst_table"].selection.rows
    if rows:
        state.select_site(int(worst.iloc[rows[0]]["structure_id"]), None)


def _pick_point() -> None:
    picked = selected_site(st.session_state.get("pick_scatter"))
    if picked is not None:
        state.select_site(*picked)


# lazily drawn tabs: only the open one is rendered (the 3D view above is the expensive part)
worst_tab, scatter_tab = st.tabs(["Worst test structures", "Pick a site from the scatter"],
                                 key=state.W_STRUCT_TAB, on_change="rerun")
if worst_tab.open:
    with worst_tab:
        st.caption(f"Test structures by max force error ({label} widths). Select a row to view it.")
        tables.show_table(worst, hide_index=True, key="worst_table", on_select=_pick_structure,
                          selection_mode="single-row")
if scatter_tab.open:
    from core.figures import plot_uncertainty_error

    with scatter_tab:
        st.caption("Test sites: click or box-select a point to open its structure with the atom highlighted.")
        widgets.plotly_chart(plot_uncertainty_error(run.test.errors, run.widths[label], label=label,
                                               ids=site_ids(run.test)),
                        key="pick_scatter", on_select=_pick_point, selection_mode=("points", "box", "lasso"))
