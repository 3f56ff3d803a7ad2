"""Model page: choose the potential and featurize the dataset (progress bar, cached)."""

from __future__ import annotations

import streamlit as st

from app import catalog, services, state
from app.pages_index import page

st.title("Model")
dataset = state.get(state.DATASET)
if dataset is None:
    st.warning("Choose a dataset on the Data page first.")
    if st.button("← Data"):
        st.switch_page(page("data"))
    st.stop()

origin_kind, origin_name = state.get(state.DATASET_ORIGIN) or ("upload", "")
synthetic = origin_kind == catalog.SYNTHETIC
family = origin_name if origin_kind == catalog.DEMO else None
st.caption(f"Dataset: **{state.get(state.DATASET_LABEL)}** — {len(dataset)} structures")

kind = st.radio("Potential", list(state.MODEL_KINDS), key=state.W_MODEL_KIND, horizontal=True)
spec: tuple[str, str] | None = None
upload = None
if kind == state.MODEL_KINDS[0]:
    if synthetic:
        st.info("The synthetic demo dataset goes with its **mock potential** (EMT + environment-dependent noise); "
                "it is not a MACE model.")
        spec = (catalog.SYNTHETIC, "")
    elif catalog.demo_model_available(family):
        st.info(f"The embedded demo MACE model of the **{family or 'default'}** family (small, trained on that "
                "family's train frames; float64).")
        spec = (catalog.DEMO, family or "")
    else:
        st.error("The embedded demo MACE model is not installed. Pick the synthetic demo dataset, a foundation "
                 "model, or a local model file.")
elif kind == state.MODEL_KINDS[1]:
    names = catalog.named_models()
    if state.get(state.W_FOUNDATION) not in names:
        state.put(state.W_FOUNDATION, next(iter(names)))
    name = st.selectbox("Model", list(names), key=state.W_FOUNDATION, format_func=lambda n: names[n])
    st.caption("CHGNet weights ship with its package (offline). MACE foundation models load through mace-torch from "
               "its cache (~/.cache/mace); offline, FlexCal tells you which file to download and where to put it "
               "— or use *Local model file* with the downloaded path.")
    spec = ("named", name)
elif kind == state.MODEL_KINDS[2]:
    path = st.text_input("Path to a model file on this machine (.model, CHGNet .pth.tar)", key=state.W_MODEL_PATH,
                         placeholder="/path/to/model.model")
    st.checkbox("I trust this file: a MACE .model file runs code when loaded", key=state.W_TRUST_PATH,
                help=catalog.TRUST_REASON)
    spec = ("path", path.strip()) if path.strip() else None
else:
    st.warning("**Model files are pickles.** " + catalog.TRUST_REASON, icon=":material/warning:")
    upload = st.file_uploader("Upload a model file", type=list(catalog.MODEL_TYPES), key=state.W_MODEL_UPLOAD)
    trusted = st.checkbox("I trust this file: I made it or got it from a source I trust", key=state.W_TRUST)
    if upload is not None and not trusted:
        st.info("Tick the box above to load the uploaded file. Until then it is not opened.")


choice = repr((kind, spec, None if upload is None else upload.name))
if state.get(state.MODEL_ERROR) and state.get(state.MODEL_ERROR_FOR) != choice:
    state.put(state.MODEL_ERROR, None)  # the error was about another choice (or a file since removed)


def _fail(exc: Exception) -> None:
    state.put(state.MODEL_ERROR, catalog.describe_error(exc))
    state.put(state.MODEL_ERROR_FOR, choice)


def _load_potential():
    """The chosen potential, or None with the reason recorded (previous features kept)."""
    try:
        if upload is not None:
            return services.load_uploaded_model(upload.getvalue(), upload.name, bool(state.get(state.W_TRUST)))
        if spec is None:
            raise ValueError("choose a model first")
        return services.load_model(*spec, bool(state.get(state.W_TRUST_PATH)) if spec[0] == "path" else False)
    except Exception as exc:
        _fail(exc)
        return None


def _featurize() -> bool:
    with st.spinner("Loading the model ..."):
        potential = _load_potential()
    if potential is None:
        return False
    bar = st.progress(0.0, text="Featurizing ...")

    def progress(done: int, total: int) -> None:
        frac = 0.0 if not total else min(done / total, 1.0)
        bar.progress(frac, text=f"Featurizing: {done} / {total} structures")

    try:
        sites, key = services.featurize_dataset(dataset, state.get(state.DATASET_KEY), potential, progress)
    except Exception as exc:
        bar.empty()
        _fail(exc)
        return False
    bar.progress(1.0, text=f"Done: {len(sites)} sites")
    state.set_sites(sites, key, getattr(potential, "name", str(potential)))
    return True


quick = bool(state.get(state.QUICKSTART))
clicked = st.button("Featurize", type="primary", key="btn_featurize",
                    disabled=kind == state.MODEL_KINDS[3] and (upload is None or not state.get(state.W_TRUST)))
if quick:  # the one-click demo: features (cached if already computed), then Calibrate
    if state.get(state.SITES) is not None or _featurize():
        st.switch_page(page("calibrate"))
    state.put(state.QUICKSTART, False)
elif clicked:
    _featurize()

err = state.get(state.MODEL_ERROR)
if err:
    st.error(err, icon=":material/error:")

sites = state.get(state.SITES)
if sites is not None:
    st.success(f"Features ready: **{len(sites)} sites** in {sites.n_structures} structures, "
               f"{sites.n_descriptors} descriptors per site — model *{state.get(state.POTENTIAL_LABEL)}*.")
    c = st.columns(4)
    c[0].metric("sites", len(sites))
    c[1].metric("structures", sites.n_structures)
    c[2].metric("mean force error (eV/Å)", f"{sites.errors.mean():.4f}")
    c[3].metric("max force error (eV/Å)", f"{sites.errors.max():.4f}")
    if st.button("Next: calibrate →", key="btn_to_calibrate"):
        st.switch_page(page("calibrate"))
