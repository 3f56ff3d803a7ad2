"""Compare page: the methods of one calibration side by side.

A ranked metrics table (best value per metric marked), small multiples of error vs width and of
force parity (one panel per method, same axes), coverage per element with interval bars, and the
per-element / per-``config_type`` breakdown of one method (CSV download of every method's).
The numbers come from :mod:`core.metrics.breakdown`, the figures from :mod:`core.figures_compare`.
"""

from __future__ import annotations

from types import MappingProxyType

import pandas as pd
import streamlit as st

from app import notices, widgets
from core.tables import MISSING

BOOTSTRAP = 100  # by-structure resamples per group (coverage and ρ intervals): 1.6 s per method at 10^4 sites
KINDS = MappingProxyType({"Error vs width": "error_width", "Force parity (coloured by width)": "parity"})
# the breakdown as shown: intervals as "lo–hi" text next to their estimate (the CSV keeps every number)
BREAKDOWN_SHOWN = (
    ("group", "Group"), ("n_sites", "Sites"), ("n_structures", "Structures"), ("coverage", "Coverage"),
    (("coverage_ci_lo", "coverage_ci_hi"), "95 % CI (structures)"),
    (("coverage_binom_lo", "coverage_binom_hi"), "95 % CI (sites)"),
    (("coverage_expected_lo", "coverage_expected_hi"), "Expected range"), ("coverage_check", "vs expected"),
    ("mean_width", "Mean width (eV/Å)"), ("mae", "MAE (eV/Å)"), ("spearman", "ρ (error, width)"),
    (("spearman_ci_lo", "spearman_ci_hi"), "ρ 95 % CI"),
)

st.title("Compare")
run = widgets.results_or_stop(": this page compares the methods of a calibration run.", key="compare_to_calibrate")

from app.figures_catalogue import STAR, group_tables, ranking_view, small_multiples  # noqa: E402
from core.figures_compare import plot_species_coverage_intervals  # noqa: E402


@st.cache_resource(max_entries=8, ttl=3600, show_spinner=False)
def _group_tables(token: str, by: str, _run) -> dict[str, pd.DataFrame]:
    """:func:`app.figures_catalogue.group_tables`, cached per run."""
    return group_tables(_run, by)


@st.cache_resource(max_entries=16, ttl=3600, show_spinner=False)
def _method_tables(token: str, label: str, _run) -> dict[str, pd.DataFrame]:
    """{"species" | "config_type": breakdown} of one method (config_type only when the sites record it)."""
    groupings = ["species"] + (["config_type"] if "config_type" in _run.test.structure_info else [])
    return {by: group_tables(_run, by, labels=[label], bootstrap=BOOTSTRAP, seed=0)[label] for by in groupings}


@st.cache_resource(max_entries=8, ttl=3600, show_spinner=False)
def _multiples(token: str, kind: str, _run):
    """The small multiples of a run (error vs width, or parity), shared read-only."""
    return small_multiples(_run, kind)


def _styled(view: pd.DataFrame, cells):
    def mark(frame: pd.DataFrame) -> pd.DataFrame:
        css = pd.DataFrame("", index=frame.index, columns=frame.columns)
        for row, col in cells:
            css.loc[row, col] = "font-weight: bold; background-color: rgba(0, 158, 115, 0.22)"
        return css

    numbers = [c for c in view.columns if view[c].dtype.kind == "f"]
    return view.style.apply(mark, axis=None).format("{:.3f}", subset=numbers, na_rep=MISSING)


def _interval(lo, hi) -> str:
    return MISSING if notices.fmt(lo) == MISSING or notices.fmt(hi) == MISSING else \
        f"{notices.fmt(lo)}–{notices.fmt(hi)}"


def _readable(table: pd.DataFrame) -> pd.DataFrame:
    """One breakdown table for people: readable headers with units, intervals as "lo–hi", "—" for missing."""
    checks = [notices.coverage_check(row).replace(" expected", "") for row in table.to_dict("records")]  # "within"
    out = pd.DataFrame(index=table.index)
    for key, title in BREAKDOWN_SHOWN:
        if isinstance(key, tuple):
            out[title] = [_interval(a, b) for a, b in zip(table[key[0]], table[key[1]])]
        elif key == "coverage_check":
            out[title] = checks
        elif key in table.columns:
            out[title] = table[key]
    return out


def _csv() -> bytes:
    """Every method's breakdown, per element and per config_type, as CSV (built when the button is clicked)."""
    frames = [df.assign(method=lab, by=by) for lab in run.labels
              for by, df in _method_tables(run.token, lab, run).items()]
    full = pd.concat(frames, ignore_index=True)
    full["Z"] = full["Z"].astype("Int64")  # empty (not NaN) on config_type rows; whole numbers elsewhere
    first = ["method", "by", "group", "Z"]
    return full[first + [c for c in full.columns if c not in first]].to_csv(index=False).encode("utf-8")


widgets.honest_header(run)
st.caption(f"{len(run.labels)} methods on {len(run.test)} test sites in {run.test.n_structures} structures, "
           f"nominal coverage {run.confidence:.0%}. Widths and errors in eV/Å.")

# ------------------------------------------------------------------------------ ranking
st.subheader("Ranking")
ranking = ranking_view(run)
if ranking is None:
    st.info("No metric to rank on: the reports define none of coverage, width ratio, ρ or miscalibration area.")
else:
    st.dataframe(_styled(*ranking), width="stretch", placeholder=MISSING, key="compare_ranking")
st.caption(f"{STAR} and green: the best value of each metric (ties share it). Coverage is judged by closeness to "
           f"{run.confidence:.0%}; a narrower width only counts when coverage holds, so read the two together. "
           f"“{MISSING}”: undefined (e.g. constant widths have no Spearman ρ).")

# ------------------------------------------------------------------------------ small multiples
st.subheader("Side by side")
kinds = list(KINDS)
if run.test.forces_ref is None or run.test.forces_pred is None:
    kinds = kinds[:1]
kind = st.radio("Panels", kinds, horizontal=True, key="compare_kind")
try:
    widgets.plotly_chart(_multiples(run.token, KINDS[kind], run), key="fig_compare_multiples")
except ValueError as exc:
    st.warning(f"The side-by-side panels cannot be drawn: {exc}")

# ------------------------------------------------------------------------------ per element
st.subheader("Coverage per group")
groupings = {"element": "species"}
if "config_type" in run.test.structure_info:
    groupings["config_type"] = "config_type"
group_by = st.radio("Group by", list(groupings), horizontal=True, key="compare_group_by")
with st.spinner(f"Coverage per {group_by} ..."):
    figure_tables = _group_tables(run.token, groupings[group_by], run)
widgets.plotly_chart(plot_species_coverage_intervals(figure_tables), key="fig_compare_groups")
st.caption(f"Bars: 95 % Clopper–Pearson interval over the {group_by}'s sites (atoms of one structure are correlated, "
           "so the real uncertainty is larger: see the by-structure interval in the breakdown below). Grey band: the "
           f"range a method calibrated per {group_by} would show for this many calibration and test structures. Only "
           "Mondrian CP promises per-element coverage; a marginal method outside the band is miscalibrated there.")

# ------------------------------------------------------------------------------ breakdown tables
st.subheader("Breakdown of one method")
if st.session_state.get("compare_method") not in run.labels:
    st.session_state["compare_method"] = run.flexible_label() or run.labels[0]
label = st.selectbox("Method", run.labels, key="compare_method")
with st.spinner(f"Coverage, width and ρ per group for {label} (bootstrap by structure) ..."):
    tables = _method_tables(run.token, label, run)
for by, table in tables.items():  # under-coverage beyond the expected spread: a visible warning, not a grey cell
    low = [f"{row['group']} ({row['coverage']:.3f}; {notices.expected_text(row)})"
           for row in table.to_dict("records") if notices.coverage_verdict(row) == "below"]
    if low:
        st.warning(f"**{label}** covers less than expected for its calibration size in {', '.join(low)}: its widths "
                   f"are too small for these {'elements' if by == 'species' else 'config types'}.",
                   icon=":material/warning:")
for by, title in (("species", "Per element"), ("config_type", "Per config_type")):
    if by not in tables:
        st.info("The test structures carry no config_type: no per-config_type breakdown.")
        continue
    st.markdown(f"**{title}** — {label}")
    shown = _readable(tables[by])
    numbers = {c: st.column_config.NumberColumn(c, format="%.3f") for c in shown.columns if shown[c].dtype.kind == "f"}
    st.dataframe(shown, width="stretch", hide_index=True, placeholder=MISSING, column_config=numbers,
                 key=f"compare_breakdown_{by}")
st.caption(f"Coverage 95 % CI (structures): {BOOTSTRAP} bootstrap resamples of whole structures; (sites): "
           "Clopper–Pearson over the group's sites as if independent, so narrower. Expected range: what a method "
           "calibrated within the group would show for its calibration structures and the group's test structures. "
           f"ρ: Spearman rank correlation of error and width, its 95 % CI from the same resamples. “{MISSING}”: "
           "undefined.")
st.download_button("breakdown.csv (every method, per element and per config_type)", _csv,
                   file_name="flexcal-breakdown.csv", mime="text/csv", on_click="ignore", key="dl_breakdown")
