"""Calibrate page: choose methods and q_θ settings, train with a live loss curve, see the metrics."""

from __future__ import annotations

import streamlit as st

from app import catalog, services, state, widgets
from app.job import TrainingJob, method_options
from app.pages_index import page

st.title("Calibrate")
sites = state.get(state.SITES)
dataset = state.get(state.DATASET)
if sites is None or dataset is None:
    widgets.dropped_note()
    st.warning("Featurize a dataset on the Model page first.")
    if st.button("← Model"):
        st.switch_page(page("model"))
    st.stop()

from core.calibration.flexible import DEFAULT_LEVELS  # noqa: E402  (after the guard: needs the calibration core)
from core.calibration.registry import method_spec  # noqa: E402

run = state.get(state.RESULTS)
if run is not None and state.get(state.QUICKSTART):
    state.put(state.QUICKSTART, False)
    st.switch_page(page("diagnose"))

available = services.usable_methods(sites)


def default_methods() -> list[str]:
    """The registry's recommended method(s), else FALLBACK_METHOD, plus the baselines."""
    first = [m for m in available if method_spec(m).recommended]
    if not first and state.FALLBACK_METHOD in available:
        first = [state.FALLBACK_METHOD]
    return first + [m for m in state.BASELINE_METHODS if m in available and m not in first]


if state.get(state.W_METHODS) is None:
    state.put(state.W_METHODS, default_methods())
current = [m for m in (state.get(state.W_METHODS) or []) if m in available]
if current != state.get(state.W_METHODS):
    state.put(state.W_METHODS, current)
level_options = [float(p) for p in DEFAULT_LEVELS]
if state.get(state.W_LEVELS) is None:
    state.put(state.W_LEVELS, level_options)

job = state.get(state.JOB)
running = job is not None and not job.done
MIN_EPOCHS, MAX_EPOCHS = 10, 2000
DEFAULT_EPOCHS = int(state.WIDGET_DEFAULTS[state.W_MAX_EPOCHS])


def _method_text(m: str) -> str:
    spec = method_spec(m)
    return f"{m} — {spec.help}" + (" (recommended)" if spec.recommended else "")


with st.form("settings", border=False):
    c1, c2 = st.columns([3, 1])
    c1.multiselect("Methods", available, key=state.W_METHODS, format_func=_method_text,
                   help="From the method registry. Methods that need a committee spread appear only when the "
                        "features have one (featurize with several models).")
    c2.slider("Confidence 1 − α", 0.5, 0.99, step=0.01, key=state.W_CONFIDENCE)
    with st.expander("q_θ settings (every method that learns q_θ)", expanded=False):
        d1, d2 = st.columns(2)
        d1.multiselect("Quantile levels trained together", level_options, key=state.W_LEVELS,
                       help="One model emits all levels (never crossing); the confidence is always added. "
                            "Keep the whole 0.05–0.95 grid: below the lowest trained level widths are "
                            "extrapolated, and the calibration curve is judged on the whole grid.")
        d2.text_input("Hidden layer sizes", key=state.W_HIDDEN, help="e.g. 64, 64")
        d1.selectbox("Weight scheme", ["uniform", "structure", "species", "shift"], key=state.W_WEIGHTS,
                     help="shift: density-ratio weights towards the test descriptors (unlabelled use only).")
        d2.number_input(f"q_θ max epochs ({MIN_EPOCHS}–{MAX_EPOCHS}, default {DEFAULT_EPOCHS})", MIN_EPOCHS,
                        MAX_EPOCHS, step=10, key=state.W_MAX_EPOCHS,
                        help=f"The most epochs q_θ trains: from {MIN_EPOCHS} to at most {MAX_EPOCHS} (default "
                             f"{DEFAULT_EPOCHS}). It stops earlier when its validation loss stops improving; the "
                             "status line shows “q_θ epochs k / max” while it trains.")
        d1.checkbox("Conformal correction (restores the marginal coverage guarantee)", key=state.W_CONFORMAL)
        d2.number_input("Bootstrap resamples for intervals (0 = none)", 0, 2000, step=50, key=state.W_BOOTSTRAP)
    submitted = st.form_submit_button("Train", type="primary", disabled=running)


def _start() -> None:
    from core.sources import partition

    methods = list(state.get(state.W_METHODS) or [])
    if not methods:
        state.put(state.TRAIN_ERROR, "Choose at least one method.")
        return
    confidence = float(state.get(state.W_CONFIDENCE))
    try:
        hidden = catalog.parse_hidden(state.get(state.W_HIDDEN))
        parts = partition(sites, state.SPLIT_MODES.get(state.get(state.W_SPLIT_MODE), "random"),
                          test_fraction=float(state.get(state.W_TEST_FRACTION)),
                          seed=int(state.get(state.W_SPLIT_SEED)),
                          calibration_types=state.get(state.W_CAL_TYPES), test_types=state.get(state.W_TEST_TYPES))
        levels = sorted(set(float(x) for x in (state.get(state.W_LEVELS) or [])) | {round(confidence, 4)})
        qtheta = dict(levels=tuple(levels), hidden=hidden, weights=state.get(state.W_WEIGHTS),
                      conformal=bool(state.get(state.W_CONFORMAL)), max_epochs=int(state.get(state.W_MAX_EPOCHS)))
        options = method_options(methods, qtheta, confidence=confidence)
    except Exception as exc:
        state.put(state.TRAIN_ERROR, catalog.describe_error(exc))
        return
    settings = state.current_settings()
    provenance = {"dataset": state.get(state.DATASET_LABEL), "model": state.get(state.POTENTIAL_LABEL),
                  **{k: v for k, v in settings.items() if not k.startswith("_")},
                  "calibration / test structures": f"{parts.calibration.n_structures} / {parts.test.n_structures}",
                  "bootstrap resamples": int(state.get(state.W_BOOTSTRAP)), "seed": int(state.get(state.W_SPLIT_SEED)),
                  **{f"{m} options": ", ".join(f"{k}={v}" for k, v in o.items()) for m, o in options.items()}}
    state.clear_results()
    state.put(state.TRAIN_ERROR, None)
    state.put(state.JOB, TrainingJob(parts, methods, confidence=confidence, options=options,
                                     bootstrap=int(state.get(state.W_BOOTSTRAP)),
                                     seed=int(state.get(state.W_SPLIT_SEED)), settings=settings,
                                     provenance=provenance).start())


if (submitted and not running) or (state.get(state.QUICKSTART) and job is None and run is None):
    _start()
    job = state.get(state.JOB)
    running = job is not None and not job.done

if state.get(state.TRAIN_ERROR):
    st.error(state.get(state.TRAIN_ERROR), icon=":material/error:")


def _status_text(job) -> str:
    """The running job in one line: its last step, the current progress (k / total, ETA) and the time spent."""
    last = job.messages[-1] if job.messages else "preparing (split-CP reference, out-of-domain score)"
    step = job.progress_text()
    return (f"{last}" + (f" — {step}" if step else "") + f" — {job.elapsed():.1f} s elapsed"
            + (" — cancelling ..." if job.cancel_requested else
               " — stopping after this epoch ..." if job.stop_requested else ""))


def _controls(job) -> None:
    b1, b2 = st.columns(2)
    b1.button("Stop training", key="btn_stop_training", on_click=job.stop, disabled=job.stop_requested,
              help="q_θ keeps its best epoch so far and is still conformally corrected; the other methods fit.")
    b2.button("Cancel", key="btn_cancel_training", on_click=job.cancel, disabled=job.cancel_requested,
              help="Abandon this calibration at the next progress step (an epoch, a search chunk): "
                   "nothing more is fitted and no results are kept.")


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
    st.info(_status_text(job))
    if job.history:
        widgets.plotly_chart(plot_training_curve(list(job.history)), key="live_loss")
    _controls(job)


def follow_in_this_run(job) -> None:
    """The one-click demo: poll the job inside this run, updating placeholders (no fragment timer).

    The page then moves on to Diagnose in the same run. A click on Stop interrupts this
    run; the next run calls ``job.stop`` (the button's callback) and follows the job again.
    """
    from core.figures import plot_training_curve

    st.subheader("Training")
    status, chart = st.empty(), st.empty()
    _controls(job)
    shown = 0

    def update() -> None:
        nonlocal shown
        status.info(_status_text(job))
        n = len(job.history)
        if n > shown:
            chart.plotly_chart(plot_training_curve(job.history[:n]))
            shown = n

    job.follow(update, timeout=900)
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
    widgets.dropped_note()
    st.info("Choose methods and press **Train**.")
    st.stop()

from core.figures import plot_training_curve  # noqa: E402

st.subheader(f"Results on {run.test.n_structures} test structures ({len(run.test)} sites), "
             f"confidence {run.confidence:.0%}")
st.caption(f"Calibrated on {run.cal.n_structures} structures ({len(run.cal)} sites) in {run.seconds:.1f} s. "
           + (f"{run.note}. " if run.note else "")
           + "Expected coverage low/high: the range a correct calibrator's coverage falls in for this many "
           "calibration structures; coverage 95 % CI: by-structure bootstrap interval. "
           "Width / split-CP width = mean width / global split CP fitted on the calibration part.")
widgets.honest_header(run)
if run.stopped_early:
    st.warning("Training was stopped early: q_θ uses its best epoch so far (still conformally corrected).")
frame = run.results_frame()
from app.tables import show_table  # noqa: E402  (readable labels with units, "—" for missing)

show_table(frame, width="stretch", key="results_table")
if run.history:
    with st.expander("q_θ loss curve", expanded=False):
        widgets.plotly_chart(plot_training_curve(run.history), key="final_loss")
if st.button("Next: diagnose →", key="btn_to_diagnose", type="primary"):
    st.switch_page(page("diagnose"))
