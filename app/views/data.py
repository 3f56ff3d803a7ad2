"""Data page: pick a demo or upload a dataset, see its summary, choose the split."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import catalog, services, state
from app.pages_index import page

st.title("Data")
st.caption("Structures with reference forces (and usually energies). Extended XYZ or any format ASE reads.")


def _apply_demo(label: str) -> None:
    kind, name = catalog.demo_choices()[label]
    try:
        with st.spinner(f"Reading {label} ..."):
            dataset, key = services.load_demo(kind, name)
    except Exception as exc:  # previous dataset kept
        state.put(state.DATA_ERROR, f"Could not read the demo dataset {label}: {catalog.describe_error(exc)}")
        return
    if state.get(state.DATASET_KEY) != key:
        state.set_dataset(dataset, key, label, (kind, name))


def handle_upload(name: str, data: bytes) -> bool:
    """Read an upload into the session; on error keep the previous dataset and record why."""
    key = "upload:" + catalog.digest(data)
    if state.get(state.DATASET_KEY) == key:
        return True
    limits = (int(state.get(state.W_MAX_ATOMS)), float(state.get(state.W_MAX_EXTENT)))
    attempt = f"{key}:{limits}"  # a failed read is retried when the reading limits change
    if state.get(state.UPLOAD_DIGEST) == attempt and state.get(state.DATA_ERROR):
        return False  # this exact file already failed with these limits; its error is on screen
    state.put(state.UPLOAD_DIGEST, attempt)
    try:
        dataset = services.read_upload(data, name, max_atoms=limits[0], max_extent=limits[1])
    except Exception as exc:
        state.put(state.DATA_ERROR, f"Could not use {name}: {catalog.describe_error(exc)}")
        return False
    state.set_dataset(dataset, key, name, ("upload", name), raw=data)  # raw: embedded in session files
    return True


choices = catalog.demo_choices()
if not state.get(state.URL_DEMO_DONE):  # ?demo=synthetic or ?demo=<family> preselects a demo (shareable links)
    state.put(state.URL_DEMO_DONE, True)
    wanted = st.query_params.get("demo")
    match = [lab for lab, (kind, name) in choices.items() if wanted in (kind, name)]
    if wanted and match:
        state.put(state.W_DEMO_NAME, match[0])
        state.put(state.W_DATA_SOURCE, "Demo dataset")
if state.get(state.W_DEMO_NAME) not in choices:
    state.put(state.W_DEMO_NAME, next(iter(choices)))

source = st.radio("Source", ["Demo dataset", "Upload a file"], key=state.W_DATA_SOURCE, horizontal=True)
if source == "Demo dataset":
    label = st.selectbox("Demo dataset", list(choices), key=state.W_DEMO_NAME)
    kind, name = choices[label]
    if kind == catalog.DEMO:
        st.caption(catalog.demo_description(name))
    if catalog.SYNTHETIC_LABEL == label:
        st.info(
            "This is a **synthetic demo** generated on the fly: Cu–Au crystals labelled with ASE's EMT and a "
            "*mock* potential whose errors grow with local distortion. It needs no model file. "
            "The embedded MACE demo appears here when it is installed."
        )
    if state.get(state.DATASET_LABEL) != label:
        state.put(state.DATA_ERROR, None)
        _apply_demo(label)
else:
    up = st.file_uploader(
        f"Upload a dataset (limit {services.max_upload_mb():.0f} MB)",
        type=list(catalog.DATA_TYPES), key=state.W_DATA_UPLOAD,
        help="Reference labels under REF_energy/REF_forces, energy/forces, or DFT_energy/DFT_forces.",
    )
    with st.expander("Reading limits (untrusted files)"):
        st.caption("An upload is refused, with a message naming the frame, when it exceeds these: they bound "
                   "the memory and time a hostile or broken file can cost. The size limit is the upload limit.")
        c1, c2 = st.columns(2)
        c1.number_input("max atoms per structure", min_value=1, max_value=10_000_000, step=1000,
                        key=state.W_MAX_ATOMS, help="default 100000 (core.data_checks.DEFAULT_MAX_ATOMS)")
        c2.number_input("max extent of a non-periodic direction (Å)", min_value=1.0, max_value=1e6, step=10.0,
                        key=state.W_MAX_EXTENT, help="largest |coordinate|; default 100 Å "
                                                     "(core.data_checks.DEFAULT_MAX_EXTENT)")
    if up is not None:
        handle_upload(up.name, up.getvalue())
    elif state.get(state.UPLOAD_DIGEST) is not None:  # the file was removed: so is its error
        state.put(state.UPLOAD_DIGEST, None)
        state.put(state.DATA_ERROR, None)

err = state.get(state.DATA_ERROR)
if err:
    st.error(err, icon=":material/error:")
    if state.get(state.DATASET) is not None:
        st.caption(f"Still using the previous dataset: **{state.get(state.DATASET_LABEL)}**.")

dataset = state.get(state.DATASET)
if dataset is None:
    st.warning("No dataset yet: pick a demo or upload a file.")
    st.stop()

st.subheader(f"Summary — {state.get(state.DATASET_LABEL)}")
rows = catalog.dataset_summary_rows(dataset)
from app.tables import show_table  # noqa: E402  (readable labels, "—" for missing)

show_table(pd.DataFrame(rows, columns=["field", "value"]).set_index("field"), width="stretch")
for msg in dataset.messages:
    st.caption(f":material/info: {msg}")

st.subheader("Calibration / test split (always by structure)")
file_split = catalog.has_file_split(dataset)
modes = [state.SPLIT_RANDOM, state.SPLIT_CONFIG] + ([state.SPLIT_FILE] if file_split else [])
if state.get(state.W_SPLIT_MODE) not in modes:
    state.put(state.W_SPLIT_MODE, modes[0])
mode = st.radio("Split", modes, key=state.W_SPLIT_MODE, horizontal=True,
                help="Atoms of one structure are correlated, so a structure is never split between the parts.")
parts = catalog.file_split_labels(dataset)
training = catalog.training_frames(dataset)
n_training = int(training.sum())
if n_training:
    st.caption(f":material/info: {n_training} frames are marked split = train/valid: the potential was trained on "
               "them, so they "
               "are never used for calibration or testing (their sites serve as the knn/gmm reference).")
usable_types = [t for t, is_training in zip(dataset.config_types, training) if not is_training]
types = sorted(set(usable_types))
if mode == state.SPLIT_FILE:
    st.caption(f"Calibration: {int((parts == 'calibration').sum())} frames; test: {int((parts == 'test').sum())} "
               "frames, as marked in the file. The test part may hold config types never seen in calibration "
               "(unseen environments), where no method is guaranteed its coverage.")
elif mode == state.SPLIT_RANDOM:
    c1, c2 = st.columns(2)
    c1.slider("Test fraction (of structures)", 0.1, 0.9, step=0.05, key=state.W_TEST_FRACTION)
    c2.number_input("Seed", min_value=0, max_value=10_000, step=1, key=state.W_SPLIT_SEED)
else:
    if len(types) < 2:
        st.error(f"Splitting by config_type needs at least two config types; this dataset has {types}.")
    else:
        if not [t for t in state.get(state.W_CAL_TYPES) or [] if t in types]:
            state.put(state.W_CAL_TYPES, types[:1])
            state.put(state.W_TEST_TYPES, types[1:])
        c1, c2 = st.columns(2)
        c1.multiselect("Calibrate on", types, key=state.W_CAL_TYPES)
        c2.multiselect("Test on", types, key=state.W_TEST_TYPES)
        overlap = set(state.get(state.W_CAL_TYPES)) & set(state.get(state.W_TEST_TYPES))
        if overlap:
            st.error(f"A config type cannot be in both parts: {sorted(overlap)}.")

st.divider()
c1, c2 = st.columns([1, 2])
if c1.button("Next: choose a model →", key="btn_to_model"):
    st.switch_page(page("model"))
origin = state.get(state.DATASET_ORIGIN) or ("upload", "")
if origin[0] in (catalog.DEMO, catalog.SYNTHETIC):  # the one-click path needs the demo's own model
    if c2.button("Run the whole demo (featurize, calibrate, diagnose)", key="btn_quickstart", type="primary"):
        state.put(state.W_MODEL_KIND, state.MODEL_KINDS[0])
        state.clear_results()  # calibrate again with the current settings
        state.put(state.QUICKSTART, True)
        st.switch_page(page("model"))
else:
    c2.caption("Uploaded data: choose its model on the Model page (the demo models know only the demo elements).")
