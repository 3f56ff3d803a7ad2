"""Apply page: annotate new structures (an MD trajectory, a screening set) with a saved calibration.

Load a calibrator (an uploaded ``.npz`` read by ``core.calibration.load_calibrator``, never
unpickled; one fitted on the Calibrate page; or the offline demo), pick its model, upload
structures or use the demo trajectory, then read the widths along the frames, the flagged
frames, a 3D view coloured by width, and export the flagged frames for labelling.
All logic is in ``core.apply``; this page only arranges it.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app import notices, services, state, widgets
from core.tables import MISSING

st.title("Apply")
st.caption("Use a calibration on structures nobody labelled: per-atom force widths (eV/Å) at the calibrator's "
           "confidence, frames above a width threshold or outside the calibration domain flagged for labelling.")

CAL_UPLOAD, CAL_SESSION, CAL_DEMO = ("Upload a calibrator file (.npz)", "Fitted on the Calibrate page",
                                     "Demo: flexible-ood fitted on the ethanol demo (300 K)")
DATA_DEMO, DATA_UPLOAD = "Demo trajectory: ethanol heated 300 → 900 K", "Upload structures"
LOCAL_MODEL = "Local model file (path on this machine)"
KEEP = "apply_widgets"        # widget values kept across page switches (Streamlit drops undrawn widgets)
CALIBRATOR = "apply_calibrator"  # (key, calibrator, description)
RESULT = "apply_result"       # (key, Annotation)
ERROR = "apply_error"
WARNINGS = "apply_warnings"   # layout warnings of the last annotation (another model than the calibrator's)
WIDGETS = (("w_apply_cal_source", None), ("w_apply_session_method", None), ("w_apply_model", None),
           ("w_apply_model_path", ""), ("w_apply_data_source", DATA_DEMO), ("w_apply_threshold", 0.5),
           ("w_apply_flag_ood", True), ("w_apply_frame", None))


def _restore_widgets() -> None:
    kept = st.session_state.setdefault(KEEP, {})
    for key, default in WIDGETS:
        if key not in st.session_state and kept.get(key, default) is not None:
            st.session_state[key] = kept.get(key, default)


def _keep_widgets() -> None:
    st.session_state[KEEP] = {k: st.session_state.get(k) for k, _ in WIDGETS}


def _say(exc: BaseException, tmp: Path | None = None, name: str = "") -> str:
    msg = str(exc).strip() or type(exc).__name__
    if tmp is not None:
        msg = msg.replace(str(tmp), name)
    return msg if isinstance(exc, (ValueError, FileNotFoundError, TypeError)) else f"{type(exc).__name__}: {msg}"


@st.cache_resource(max_entries=2, show_spinner="Fitting the demo calibrator (once per server) ...")
def _demo_calibrator():
    from core.apply import demo_calibrator

    return demo_calibrator("flexible-ood", "molecule")


@st.cache_resource(max_entries=2, show_spinner="Loading the model ...")
def _potential(path: str):
    from core.potentials import load_potential

    return load_potential(path)


@st.cache_data(max_entries=2, show_spinner="Reading the structures ...")
def _read_structures(data: bytes, name: str):
    from core.data import read_dataset

    return read_dataset(data, name=name, require_labels=False)


@st.cache_data(max_entries=1, show_spinner="Reading the demo trajectory ...")
def _read_demo(path: str):
    from core.data import read_dataset

    return read_dataset(path, require_labels=False)


def _upload_calibrator(upload):
    """(key, calibrator) of an uploaded file; errors in ERROR, previous calibrator kept."""
    from core.calibration import load_calibrator

    data = upload.getvalue()
    key = "upload:" + hashlib.sha256(data).hexdigest()[:20]
    held = st.session_state.get(CALIBRATOR)
    if held and held[0] == key:
        return held
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "calibrator.npz"
        path.write_bytes(data)
        try:
            cal = load_calibrator(path)
        except (ValueError, FileNotFoundError) as exc:
            st.session_state[ERROR] = f"Could not use {upload.name}: {_say(exc, path, upload.name)}"
            return None
    st.session_state[ERROR] = None
    return key, cal, f"{upload.name}"


def _choose_calibrator():
    run = state.get(state.RESULTS)
    session = dict(getattr(run, "calibrators", None) or {}) if run is not None else {}
    options = [CAL_UPLOAD, *([CAL_SESSION] if session else []), CAL_DEMO]
    if st.session_state.get("w_apply_cal_source") not in options:
        st.session_state["w_apply_cal_source"] = CAL_SESSION if session else CAL_DEMO
    source = st.radio("Calibrator", options, key="w_apply_cal_source", horizontal=True)
    if source == CAL_UPLOAD:
        upload = st.file_uploader("Calibrator file (Export page or `flexcal calibrate -o`); read without pickle",
                                  type=["npz"], key="w_apply_cal_upload")
        return _upload_calibrator(upload) if upload is not None else None
    if source == CAL_SESSION:
        labels = list(session)
        if st.session_state.get("w_apply_session_method") not in labels:
            st.session_state["w_apply_session_method"] = labels[0]
        label = st.selectbox("Method", labels, key="w_apply_session_method")
        return f"session:{getattr(run, 'token', id(run))}:{label}", session[label], f"{label} (this session)"
    held = st.session_state.get(CALIBRATOR)
    if held and held[0] == "demo":
        return held
    st.caption("q_θ × distance (flexible-ood, the recommended method) fitted on the 75 calibration frames of "
               "the ethanol demo at 300 K with its demo model: about 20 s the first time on this server.")
    if not st.button("Fit the demo calibrator", key="btn_apply_demo_fit"):
        return None
    try:
        return "demo", _demo_calibrator(), "flexible-ood on the ethanol demo's 300 K calibration frames"
    except Exception as exc:  # demo files missing: say so, the upload still works
        st.session_state[ERROR] = f"The demo calibrator is not available: {_say(exc)}"
        return None


def _describe(cal) -> str:
    layout = getattr(cal, "layout_", None) or {}
    model = layout.get("potential") or "an unrecorded model"
    width = layout.get("n_descriptors")
    return (f"**{getattr(cal, 'label', cal.name)}** at confidence {cal.confidence:.0%}; fitted on "
            f"{width if width else 'an unrecorded number of'} descriptor columns of {model}.")


def _choose_model(cal):
    from core.demo import FAMILIES, demo_model_path

    demos = {}
    for family in FAMILIES:
        try:
            demos[f"Demo model: {family}"] = str(demo_model_path(family))
        except FileNotFoundError:
            continue
    options = [*demos, LOCAL_MODEL]
    fitted_on = ((getattr(cal, "layout_", None) or {}).get("potential") or "molecule")
    if st.session_state.get("w_apply_model") not in options:
        match = f"Demo model: {fitted_on}"
        st.session_state["w_apply_model"] = match if match in demos else options[0]
    choice = st.radio("Model (the one the calibrator was fitted with)", options, key="w_apply_model", horizontal=True)
    if choice != LOCAL_MODEL:
        return demos[choice]
    path = st.text_input("Model file path", key="w_apply_model_path").strip()
    st.warning("A MACE .model file is a Python pickle: loading it runs code from the file. Only load files "
               "you made or trust.", icon=":material/warning:")
    trusted = st.checkbox("I trust this model file", key="w_apply_trust", value=False)
    return path if (path and trusted) else None


def _choose_structures():
    from core.demo import demo_trajectory_path

    source = st.radio("Structures", [DATA_DEMO, DATA_UPLOAD], key="w_apply_data_source", horizontal=True)
    if source == DATA_DEMO:
        try:
            path = demo_trajectory_path()
        except FileNotFoundError as exc:
            st.session_state[ERROR] = _say(exc)
            return None
        return f"demo:{path.name}", _read_demo(str(path))
    upload = st.file_uploader("Structures (extxyz or any format ASE reads; labels optional)", key="w_apply_data_upload")
    if upload is None:
        return None
    data = upload.getvalue()
    try:
        return "upload:" + hashlib.sha256(data).hexdigest()[:20], _read_structures(data, upload.name)
    except ValueError as exc:
        st.session_state[ERROR] = f"Could not read {upload.name}: {_say(exc)}"
        return None


def _annotate(cal_key, cal, model_path, data_key, dataset) -> None:
    from core.apply import annotate

    import warnings

    from core.calibration.base import LayoutWarning

    bar = st.progress(0.0, text="Running the model over the structures ...")
    try:
        potential = _potential(model_path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LayoutWarning)
            ann = annotate(dataset, potential, cal, progress=lambda done, total: bar.progress(
                done / max(total, 1), text=f"Running the model: {done}/{total} frames"))
    except Exception as exc:  # one plain line; the previous result is kept
        st.session_state[ERROR] = f"Could not annotate: {_say(exc)}"
        return
    finally:
        bar.empty()
    st.session_state[ERROR] = None
    st.session_state[WARNINGS] = [str(w.message) for w in caught if issubclass(w.category, LayoutWarning)]
    st.session_state[RESULT] = ((cal_key, model_path, data_key), ann)


def _coverage_caption(summary: dict) -> None:
    """The coverage's expected range for the calibration size, a warning when outside, in/out of domain."""
    n_cal = summary.get("n_calibration_structures")
    expected = notices.expected_text(summary, n_cal) or "expected range unknown (the calibrator records no calibration size)"
    st.caption(f"Coverage {summary['coverage']:.3f}: {expected}"
               + ("" if summary.get("coverage_in_domain") is None and summary.get("coverage_out_of_domain") is None
                  else f"; {notices.fmt(summary.get('coverage_in_domain'))} in domain, "
                       f"{notices.fmt(summary.get('coverage_out_of_domain'))} out of domain"))
    warning = notices.coverage_warning("annotated frames", summary, n_cal)
    if warning:
        st.warning(warning)


def _results(ann) -> None:
    from core.figures_apply import plot_width_trajectory

    c1, c2 = st.columns([1, 1])
    threshold = c1.number_input("Flag frames whose largest width exceeds (eV/Å)", min_value=0.001, max_value=100.0,
                                step=0.05, format="%.3f", key="w_apply_threshold")
    has_domain = ann.frame_ood is not None
    flag_ood = c2.checkbox("Also flag frames outside the calibration domain", key="w_apply_flag_ood",
                           disabled=not has_domain,
                           help="Structure score > 1: further from the calibration data than 99 % of calibration "
                                "structures." if has_domain else "This calibrator carries no domain score.")
    ann = ann.with_threshold(float(threshold), flag_ood=bool(flag_ood))
    s = ann.summary()
    m = st.columns(5)
    m[0].metric("frames", s["frames"])
    m[1].metric("flagged frames", s["flagged_frames"])
    m[2].metric("largest width (eV/Å)", f"{s['max_width']:.3g}")
    m[3].metric("out-of-domain frames", MISSING if s["ood_frames"] is None else s["ood_frames"])
    m[4].metric(f"coverage (target {ann.confidence:.0%})", f"{s['coverage']:.3f}" if ann.labelled else "— (no labels)")
    if ann.labelled:
        _coverage_caption(s)
    widgets.plotly_chart(plot_width_trajectory(ann.frame_ids, ann.max_width, ann.mean_width, threshold=ann.threshold,
                                          flagged=ann.flagged), key="apply_width_plot")
    table = ann.frame_table()
    first = ["frame", "config_type", "n_atoms", "max_width", "mean_width", "max_width_atom", "max_error", "coverage",
             "ood", "ood_score", "ood_fraction"]  # then every other column (max width per level); "flagged" is all yes
    cols = [c for c in first if c in table.columns] + [c for c in table.columns if c not in first and c != "flagged"]
    shown = table.loc[table["flagged"], cols]
    st.subheader(f"Flagged frames ({len(shown)})")
    from app.tables import show_table  # readable labels with units, "—" for missing

    show_table(shown, hide_index=True, key="apply_flagged_table", height=min(400, 40 + 35 * max(len(shown), 1)))
    _viewer(ann)
    _exports(ann, table)


def _viewer(ann) -> None:
    from core.viewer import structure_view_html

    frames = [int(f) for f in ann.frame_ids]
    default = int(ann.flagged_frames[0]) if ann.flagged.any() else int(ann.frame_ids[np.argmax(ann.max_width)])
    if st.session_state.get("w_apply_frame") not in frames:
        st.session_state["w_apply_frame"] = default
    i_of = {f: i for i, f in enumerate(frames)}
    frame = st.selectbox("Frame to view (coloured by width)", frames, key="w_apply_frame",
                         format_func=lambda f: f"#{f}: max width {ann.max_width[i_of[f]]:.3g} eV/Å"
                                               f"{' — flagged' if ann.flagged[i_of[f]] else ''}")
    atoms = ann.structures([frame])[0]
    try:
        html = structure_view_html(atoms, values=atoms.arrays["flexcal_width"], label="width (eV/Å)",
                                   highlight=int(ann.max_width_atom[i_of[frame]]), width=560, height=420,
                                   js_url=services.viewer_js_url())
        st.iframe(html, height=580)
    except (FileNotFoundError, ValueError) as exc:  # no local 3Dmol.js, or infinite widths
        st.error(f"Cannot draw this frame: {_say(exc)}")


def _exports(ann, table: pd.DataFrame) -> None:
    c1, c2, c3 = st.columns(3)
    c1.download_button("Flagged frames (.extxyz, for labelling)",
                       (lambda: ann.extxyz_bytes(flagged_only=True)) if ann.flagged.any() else b"",
                       file_name="flexcal-flagged.extxyz", disabled=not ann.flagged.any(), key="apply_dl_flagged")
    c2.download_button("All frames (.extxyz)", lambda: ann.extxyz_bytes(), file_name="flexcal-annotated.extxyz",
                       key="apply_dl_all")
    c3.download_button("Frame table (.csv)", table.to_csv(index=False).encode(), file_name="flexcal-frames.csv",
                       key="apply_dl_table")


# ------------------------------------------------------------------------------ the page
_restore_widgets()
st.subheader("1. Calibrator")
picked = _choose_calibrator()
if picked is not None:
    st.session_state[CALIBRATOR] = picked
    st.markdown(_describe(picked[1]))
st.subheader("2. Model and structures")
model_path = _choose_model(picked[1]) if picked is not None else None
structures = _choose_structures()
ready = picked is not None and model_path is not None and structures is not None
if structures is not None:
    ds = structures[1]
    st.caption(f"{len(ds)} frames, {sum(len(a) for a in ds.structures)} atoms"
               f"{', with reference forces (coverage will be reported)' if ds.labelled else ', unlabelled'}.")
if st.button("Annotate", type="primary", disabled=not ready, key="btn_apply_annotate"):
    _annotate(picked[0], picked[1], model_path, structures[0], structures[1])
if st.session_state.get(ERROR):
    st.error(st.session_state[ERROR])
result = st.session_state.get(RESULT)
if result is not None:
    key, ann = result
    for message in st.session_state.get(WARNINGS) or ():
        st.warning(message, icon=":material/warning:")
    if ready and key != (picked[0], model_path, structures[0]):
        st.info("The calibrator, model or structures changed since this annotation: press Annotate to update it.")
    _results(ann)
_keep_widgets()
