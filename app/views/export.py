"""Export page: per-site tables, annotated extxyz, the calibrator file and an HTML report."""

from __future__ import annotations

import streamlit as st

from app import services, state, widgets
from app.figures_catalogue import run_report_html

st.title("Export")
run = state.get(state.RESULTS)
sites = state.get(state.SITES)
dataset = state.get(state.DATASET)
if run is None or sites is None or dataset is None:
    widgets.dropped_note()
    st.warning("Calibrate first: exports need fitted methods.")
    st.stop()

from core import export  # noqa: E402

widgets.stale_badge(run)
if state.get(state.W_EXPORT_METHOD) not in run.labels:
    state.put(state.W_EXPORT_METHOD, run.flexible_label() or run.labels[0])
label = st.selectbox("Method for the extxyz widths, the calibrator file and the report's per-method plots",
                     run.labels, key=state.W_EXPORT_METHOD)
stem = "flexcal-" + "".join(ch if ch.isalnum() else "_" for ch in label)
st.caption("Files are built when you click (nothing is written on the server). Widths are half-widths in eV/Å at "
           f"confidence {run.confidence:.0%}; calibration-part widths are in-sample. The report records the "
           "dataset, model, split, seed, methods, date and FlexCal version, and repeats every warning.")


def _table(fmt: str, readable: bool = False) -> bytes:
    return export.table_bytes(export.evaluation_frame(run.evaluation, sites), fmt, readable=readable)


def _columns() -> bytes:
    from core.tables import descriptions_json

    return descriptions_json(export.evaluation_frame(run.evaluation, sites))


def _extxyz() -> bytes:
    widths = run.calibrators[label].predict(sites)
    return export.annotated_extxyz(dataset.structures, sites, widths, method=label, confidence=run.confidence)


c1, c2 = st.columns(2)
with c1:
    st.markdown("**Per-site table** — every site, its split part, error and each method's width")
    st.download_button("sites.csv", lambda: _table("csv"), file_name="flexcal-sites.csv",
                       mime="text/csv", on_click="ignore", key="dl_csv")
    st.download_button("sites.parquet", lambda: _table("parquet"), file_name="flexcal-sites.parquet",
                       mime="application/vnd.apache.parquet", on_click="ignore", key="dl_parquet")
    st.caption("Columns keep stable snake_case keys for scripts (`error`, `width_<method>`, `covered_<method>`); "
               "empty cell / null = missing. What each column is and its unit: the JSON below (also inside the "
               "Parquet file's metadata, `flexcal.columns`), or take the CSV with readable headers.")
    st.download_button("columns.json (labels, units, meaning)", _columns, file_name="flexcal-sites-columns.json",
                       mime="application/json", on_click="ignore", key="dl_columns")
    st.download_button("sites (readable headers).csv", lambda: _table("csv", readable=True),
                       file_name="flexcal-sites-readable.csv", mime="text/csv", on_click="ignore",
                       key="dl_csv_readable")
    st.markdown("**Structures** — extxyz with per-atom `flexcal_width` and `flexcal_error` arrays")
    st.download_button("structures.extxyz", _extxyz, file_name=f"{stem}-structures.extxyz",
                       mime="chemical/x-extxyz", on_click="ignore", key="dl_extxyz")
with c2:
    st.markdown("**Fitted calibrator** — one pickle-free `.npz`; load with `core.load_calibrator(path)`")
    st.download_button(f"{label} calibrator (.npz)", lambda: export.calibrator_bytes(run.calibrators[label]),
                       file_name=f"{stem}-calibrator.npz", mime="application/octet-stream", on_click="ignore",
                       key="dl_calibrator")
    st.markdown("**Report** — self-contained HTML (plotly inlined, works offline) of the figures and tables")
    st.download_button("report.html", lambda: run_report_html(run, label, services.method_figures(run, label)),
                       file_name=f"{stem}-report.html", mime="text/html", on_click="ignore", key="dl_report")
    from core.export_chemiscope import chemiscope_available, chemiscope_bytes  # noqa: E402

    st.markdown("**chemiscope** — the test structures with every method's per-atom width, the error and a "
                "descriptor map (PCA); open it on chemiscope.org or in its offline viewer to share")
    if chemiscope_available():
        st.download_button("sites.chemiscope.json.gz", lambda: chemiscope_bytes(
            dataset.structures, run.test, run.widths, ood=run.ood,
            meta={"name": f"FlexCal — {state.get(state.DATASET_LABEL) or 'dataset'}"}),
            file_name="flexcal-sites.chemiscope.json.gz", mime="application/gzip", on_click="ignore",
            key="dl_chemiscope")
    else:
        st.caption("Install the optional extra to enable it: `pip install 'flexcal[chemiscope]'`.")
