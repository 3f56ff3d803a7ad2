"""Calibrate page: choose methods and q_θ settings, train with a live loss curve, see the metrics."""

from __future__ import annotations

import time

import streamlit as st

from app import services, state
from app.pages_index import page

st.title("Calibrate")
sites = state.get(state.SITES)
dataset = state.get(state.DATASET)
if sites is None or dataset is None:
    st.warning("Featurize a dataset on the Model page first.")
    if st.button("← Model"):
        st.switch_page(page("model"))
    st.stop()

from core.calibration import METHODS  # noqa: E402  (after the guard: needs the calibration core)

run = state.get(state.RESULTS)
if run is not None and state.get(state.QUICKSTART):
    state.put(state.QUICKSTART, False)
    st.switch_page(page("diagnose"))

HELP = {
    "flexible": "learned quantile q_θ(X) (the paper's method)",
    "split": "global split conformal: one width for every site",
    "knn": "normalised CP with kNN distance in descriptor space",
    "gmm": "normalised CP with a per-species Gaussian-mixture NLL",
    "force": "normalised CP with the predicted force magnitude",
    "committee": "normalised CP with the committee force spread",
    "mondrian": "split CP with one quantile per species",
}
available = [m for m in METHODS if m != "committee" or sites.committee_std is not None]
current = [m for m in (state.get(state.W_METHODS) or []) if m in available]
if current != state.get(state.W_METHODS):
    state.put(state.W_METHODS, current)

job = state.get(state.JOB)
running = job is not None and not job.done

with st.form("settings", border=False):
    c1, c2 = st.columns([3, 1])
    c1.multiselect("Methods", available, key=state.W_METHODS, format_func=lambda m: f"{m} — {HELP.get(m, '')}",
                   help=None if sites.committee_std is not None else
                   "committee needs several models (a committee spread per site); these features have none.")
    c2.slider("Confidence 1 − α", 0.5, 0.99, step=0.01, key=state.W_CONFIDENCE)
    with st.expander("q_θ settings (flexible method)", expanded=False):
        d1, d2 = st.columns(2)
        d1.multiselect("Quantile levels trained together", [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99], key=state.W_LEVELS,
                       help="One model emits all levels (never crossing); the confidence is always added.")
        d2.text_input("Hidden layer sizes", key=state.W_HIDDEN, help="e.g. 64, 64")
        d1.selectbox("Weight scheme", ["uniform", "structure", "species", "shift"], key=state.W_WEIGHTS,
                     help="shift: density-ratio weights towards the test descriptors (unlabelled use only).")
        d2.number_input("Max epochs", 10, 2000, step=10, key=state.W_MAX_EPOCHS)
        d1.checkbox("Conformal correction (restores the marginal coverage guarantee)", key=state.W_CONFORMAL)
        d2.number_input("Bootstrap resamples for intervals (0 = none)", 0, 2000, step=50, key=state.W_BOOTSTRAP)
    submitted = st.form_submit_button("Train", type="primary", disabled=running)


def _start() -> None:
    methods = list(state.get(state.W_METHODS) or [])
    if not methods:
        state.put(state.TRAIN_ERROR, "Choose at least one method.")
        return
    try:
        hidden = services.parse_hidden(state.get(state.W_HIDDEN))
        cal, test, reference = services.split_sites(
            sites, dataset, state.SPLIT_MODES.get(state.get(state.W_SPLIT_MODE), "random"),
            float(state.get(state.W_TEST_FRACTION)), int(state.get(state.W_SPLIT_SEED)),
            cal_types=state.get(state.W_CAL_TYPES), test_types=state.get(state.W_TEST_TYPES))
    except Exception as exc:
        state.put(state.TRAIN_ERROR, services.describe_error(exc))
        return
    confidence = float(state.get(state.W_CONFIDENCE))
    levels = sorted(set(float(x) for x in (state.get(state.W_LEVELS) or [])) | {round(confidence, 4)})
    options = dict(levels=tuple(levels), hidden=hidden, weights=state.get(state.W_WEIGHTS),
                   conformal=bool(state.get(state.W_CONFORMAL)), max_epochs=int(state.get(state.W_MAX_EPOCHS)))
    settings = dict(methods=methods, confidence=confidence, split=state.get(state.W_SPLIT_MODE), **options)
    state.clear_results()
    state.put(state.TRAIN_ERROR, None)
    state.put(state.JOB, services.TrainingJob(cal, test, methods, confidence, options,
                                              bootstrap=int(state.get(state.W_BOOTSTRAP)), settings=settings,
                                              reference=reference).start())


if (submitted and not running) or (state.get(state.QUICKSTART) and job is None and run is None):
    _start()
    job = state.get(state.JOB)
    running = job is not None and not job.done

if state.get(state.TRAIN_ERROR):
    st.error(state.get(state.TRAIN_ERROR), icon=":material/error:")


@st.fragment(run_every=0.5)
def live_panel() -> None:
    """Loss curve and progress of the running job; a full rerun collects it when done."""
    job = state.get(state.JOB)
    if job is None:
        return
    if job.done:
        st.rerun()
    from core.figures import plot_training_curve

    st.subheader("Training")
    last = job.messages[-1] if job.messages else "starting ..."
    st.info(f"{last} — {job.elapsed():.1f} s, {len(job.history)} q_θ epochs"
            + (" — stopping after this epoch ..." if job.stop_requested else ""))
    if job.history:
        st.plotly_chart(plot_training_curve(list(job.history)), key="live_loss")
    if st.button("Stop training", key="btn_stop_training", disabled=job.stop_requested,
                 help="q_θ keeps its best epoch so far and is still conformally corrected."):
        job.stop()
        st.caption("Stop requested: q_θ finishes this epoch, keeps its best weights and is corrected.")


def follow_in_this_run(job) -> None:
    """The one-click demo: poll the job inside this run, updating placeholders (no fragment timer).

    The page then moves on to Diagnose in the same run. A click on Stop interrupts this
    run; the next run calls ``job.stop`` (the button's callback) and follows the job again.
    """
    from core.figures import plot_training_curve

    st.subheader("Training")
    status, chart = st.empty(), st.empty()
    st.button("Stop training", key="btn_stop_training", on_click=job.stop, disabled=job.stop_requested)
    shown = 0
    deadline = time.monotonic() + 900
    while not job.done and time.monotonic() < deadline:
        last = job.messages[-1] if job.messages else "starting ..."
        status.info(f"{last} — {job.elapsed():.1f} s, {len(job.history)} q_θ epochs")
        n = len(job.history)
        if n > shown:
            chart.plotly_chart(plot_training_curve(job.history[:n]))
            shown = n
        time.sleep(0.3)
    state.collect_finished_job()


if running and state.get(state.QUICKSTART):
    follow_in_this_run(job)
    if state.get(state.RESULTS) is not None:
        state.put(state.QUICKSTART, False)
        st.switch_page(page("diagnose"))
    st.rerun()  # failed or timed out: show the error / the live panel
elif running:
    live_panel()
    st.stop()

run = state.get(state.RESULTS)
if run is None:
    st.info("Choose methods and press **Train**.")
    st.stop()

from core.figures import plot_training_curve  # noqa: E402

st.subheader(f"Results on {run.test.n_structures} test structures ({len(run.test)} sites), "
             f"confidence {run.confidence:.0%}")
st.caption(f"Calibrated on {run.cal.n_structures} structures ({len(run.cal)} sites) in {run.seconds:.1f} s. "
           "Intervals are 95 % by-structure bootstrap intervals. width_ratio = mean width / global split CP.")
if run.stopped_early:
    st.warning("Training was stopped early: q_θ uses its best epoch so far (still conformally corrected).")
frame = run.results_frame()
num = {c: st.column_config.NumberColumn(c, format="%.3f") for c in frame.columns if c not in ("note",)}
st.dataframe(frame, width="stretch", column_config=num, key="results_table")
if run.history:
    with st.expander("q_θ loss curve", expanded=False):
        st.plotly_chart(plot_training_curve(run.history), key="final_loss")
if st.button("Next: diagnose →", key="btn_to_diagnose", type="primary"):
    st.switch_page(page("diagnose"))
