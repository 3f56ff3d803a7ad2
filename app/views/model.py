"""Model page: choose the potential and featurize the dataset (a background job: progress, ETA, Cancel; cached)."""

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


def _start_featurize():
    """Load the model and start featurizing (a background job); None when the model cannot be loaded."""
    with st.spinner("Loading the model ..."):
        potential = _load_potential()
    if potential is None:
        return None
    state.put(state.FEATURIZE_NOTE, None)
    try:
        job = services.featurize_job(dataset, state.get(state.DATASET_KEY), potential,
                                     potential_label=getattr(potential, "name", str(potential)))
    except Exception as exc:
        _fail(exc)
        return None
    state.put(state.FEATURIZE_JOB, job)
    return job


def _follow(job) -> None:
    """The job's progress bar (structures, sites/s, ETA) and Cancel button, polled until it ends.

    A click on Cancel interrupts this run; the next run calls ``job.cancel`` (the button's
    callback), which stops the job after its current batch, and follows it again.
    """
    bar = st.progress(job.fraction, text=job.progress_text())
    st.button("Cancel featurizing", key="btn_cancel_featurize", on_click=job.cancel,
              disabled=job.cancel_requested,
              help="Stop after the current batch. Nothing is kept: the previous features (if any) stay.")
    job.follow(lambda: bar.progress(job.fraction, text=job.progress_text()
                                    + (" — cancelling after this batch ..." if job.cancel_requested else "")))
    bar.empty()


def _collect(job) -> None:
    """Move a finished featurize job into the session (new features, the cancel note or the error)."""
    state.put(state.FEATURIZE_JOB, None)
    if job.key[0] != state.get(state.DATASET_KEY):
        return  # the dataset changed while it ran
    if job.status == "done":
        state.set_sites(job.sites, job.key, job.potential_label)
    elif job.status == "cancelled":
        state.put(state.FEATURIZE_NOTE, f"{job.error} (stopped after {job.structures_done} / {job.total} "
                                        f"structures, {job.elapsed():.0f} s)")
    else:
        state.put(state.MODEL_ERROR, job.error)
        state.put(state.MODEL_ERROR_FOR, choice)


quick = bool(state.get(state.QUICKSTART))
job = state.get(state.FEATURIZE_JOB)
clicked = st.button("Featurize", type="primary", key="btn_featurize",
                    disabled=job is not None or (kind == state.MODEL_KINDS[3]
                                                 and (upload is None or not state.get(state.W_TRUST))))
if job is None and (clicked or (quick and state.get(state.SITES) is None)):
    job = _start_featurize()
if job is not None:
    if not job.done:
        _follow(job)
    _collect(job)
if quick:  # the one-click demo: features (cached if already computed), then Calibrate
    if state.get(state.SITES) is not None:
        st.switch_page(page("calibrate"))
    state.put(state.QUICKSTART, False)

note = state.get(state.FEATURIZE_NOTE)
if note:
    st.info(note, icon=":material/cancel:")
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
