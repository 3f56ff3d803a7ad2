"""Every ``st.session_state`` key of the app, in one place.

Two kinds of keys:

- widget keys (``W_*``): the value of a widget, kept across page switches. Streamlit
  drops the state of widgets that a run does not draw, so :func:`init` re-commits
  them on every run (the documented way to keep widget values between pages);
- data keys: objects the pages hand to each other (dataset, features, results).
  Changing an upstream object clears what was derived from it
  (:func:`set_dataset`, :func:`set_sites`).

Nothing here is module-level mutable state: every value lives in the session.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import streamlit as st

# ------------------------------------------------------------------ widget keys
W_DATA_SOURCE = "w_data_source"          # "Demo dataset" | "Upload a file"
W_DEMO_NAME = "w_demo_name"              # label of the chosen demo dataset
W_SPLIT_MODE = "w_split_mode"            # SPLIT_RANDOM | SPLIT_CONFIG
W_TEST_FRACTION = "w_test_fraction"      # fraction of structures in the test part
W_SPLIT_SEED = "w_split_seed"
W_CAL_TYPES = "w_cal_types"              # config_types used for calibration
W_TEST_TYPES = "w_test_types"            # config_types used for testing
W_MODEL_KIND = "w_model_kind"            # one of MODEL_KINDS
W_FOUNDATION = "w_foundation_name"
W_MODEL_PATH = "w_model_path"
W_METHODS = "w_methods"
W_CONFIDENCE = "w_confidence"
W_LEVELS = "w_levels"
W_HIDDEN = "w_hidden"                    # "64, 64"
W_WEIGHTS = "w_weights"
W_CONFORMAL = "w_conformal"
W_MAX_EPOCHS = "w_max_epochs"
W_BOOTSTRAP = "w_bootstrap"
W_DIAG_METHOD = "w_diag_method"
W_DIAG_TAB = "w_diag_tab"
W_TEACH_LEVEL = "w_teach_level"
W_VIEW_METHOD = "w_view_method"
W_COLOR_BY = "w_color_by"                # "width" | "error"
W_ARROWS = "w_arrows"
W_STRUCTURE = "w_structure"
W_STRUCT_TAB = "w_structures_tab"
W_EXPORT_METHOD = "w_export_method"
W_MAX_ATOMS = "w_max_atoms"              # reader limit: atoms per structure of an upload
W_MAX_EXTENT = "w_max_extent"            # reader limit: Å, largest |coordinate| along an open direction
# not persisted on purpose: re-confirm trust whenever the page is drawn again
W_TRUST = "w_trust_model_file"
W_TRUST_PATH = "w_trust_model_path"
W_DATA_UPLOAD = "w_data_upload"
W_MODEL_UPLOAD = "w_model_upload"
W_SESSION_UPLOAD = "w_session_upload"    # the sidebar's "Load a session file" uploader

TEACHING_TAB = "Teaching view"
# Diagnose tabs -> the figures each shows (app.services.method_figures names), two at most
DIAG_TABS = MappingProxyType({
    "Calibration": ("coverage_curve", "calibration_curve"),
    "Parity": ("force_parity", "energy_parity"),
    "Uncertainty vs error": ("uncertainty_error", "width_histogram"),
    "Species & structures": ("species_coverage", "structure_uncertainty"),
    TEACHING_TAB: (),
})
SPLIT_FILE = "As marked in the file (split = calibration / test)"
SPLIT_RANDOM = "Random by structure"
SPLIT_CONFIG = "By config_type"
SPLIT_MODES = MappingProxyType({SPLIT_FILE: "file", SPLIT_RANDOM: "random", SPLIT_CONFIG: "config_type"})
MODEL_KINDS = ("Demo model", "Named model (CHGNet, MACE foundation)", "Local model file", "Upload a model file")
# the Calibrate page pre-selects the registry's recommended method plus these baselines; when
# the recommended method cannot be built here, FALLBACK_METHOD takes its place
BASELINE_METHODS = ("split", "knn")
FALLBACK_METHOD = "flexible"

# read-only views: the defaults are shared by every session and must never change
WIDGET_DEFAULTS = MappingProxyType({
    W_DATA_SOURCE: "Demo dataset",
    W_DEMO_NAME: None,
    W_SPLIT_MODE: SPLIT_RANDOM,
    W_TEST_FRACTION: 0.5,
    W_SPLIT_SEED: 0,
    W_CAL_TYPES: (),
    W_TEST_TYPES: (),
    W_MODEL_KIND: MODEL_KINDS[0],
    W_FOUNDATION: None,
    W_MODEL_PATH: "",
    W_METHODS: None,                     # the Calibrate page fills it from the method registry
    W_CONFIDENCE: 0.9,
    W_LEVELS: None,                      # the Calibrate page fills it with q_θ's default levels
    W_HIDDEN: "64, 64",
    W_WEIGHTS: "uniform",
    W_CONFORMAL: True,
    W_MAX_EPOCHS: 200,
    W_BOOTSTRAP: 200,
    W_MAX_ATOMS: 100_000,                # = core.data_checks.DEFAULT_MAX_ATOMS (tested)
    W_MAX_EXTENT: 100.0,                 # = core.data_checks.DEFAULT_MAX_EXTENT (tested)
    W_DIAG_METHOD: None,
    W_DIAG_TAB: "Calibration",
    W_TEACH_LEVEL: 0.9,
    W_VIEW_METHOD: None,
    W_COLOR_BY: "width",
    W_ARROWS: False,
    W_STRUCTURE: None,
    W_STRUCT_TAB: "Worst test structures",
    W_EXPORT_METHOD: None,
})

# -------------------------------------------------------------------- data keys
DATASET = "dataset"                # core.data.Dataset (or None)
DATASET_KEY = "dataset_key"        # content hash of the source bytes / demo name
DATASET_LABEL = "dataset_label"    # what the user picked, in words
DATASET_ORIGIN = "dataset_origin"  # ("demo", family) | ("synthetic", "") | ("upload", file name)
DATA_ERROR = "data_error"          # last data error in plain words (previous dataset kept)
UPLOAD_DIGEST = "upload_digest"    # hash of the last upload handled (so reruns don't re-read it)
POTENTIAL_LABEL = "potential_label"
MODEL_ERROR = "model_error"
MODEL_ERROR_FOR = "model_error_for"  # the model choice that error came from (cleared when it changes)
SITES = "sites"                    # core.sites.SiteTable of the whole dataset
SITES_KEY = "sites_key"            # (dataset_key, potential identity)
JOB = "training_job"               # app.services.TrainingJob while/after training
FEATURIZE_JOB = "featurize_job"    # app.job.FeaturizeJob while featurizing (collected by the Model page)
FEATURIZE_NOTE = "featurize_note"  # what the last featurize job ended with (cancelled), in words
RESULTS = "results"                # app.run.CalibrationRun
TRAIN_ERROR = "train_error"        # why the last training failed, in plain words
SELECTED = "selected_site"         # {"structure_id": int, "atom_index": int | None}
OPEN_STRUCTURE = "open_structure"  # a plot point was picked: switch to the Structures page
QUICKSTART = "quickstart"          # True while the one-click demo walks the pages
URL_DEMO_DONE = "url_demo_done"    # the ?demo=NAME query parameter was applied (once per session)
DROPPED = "results_dropped"        # why the last results were discarded (dataset or model changed)
DATASET_RAW = "dataset_raw"        # an upload's bytes when small enough to embed in session files (else None)
MODEL_REF = "model_ref"            # what featurized SITES: {"choice", "kind", "value", "file", "sha256"}
AUTOSAVED = "autosaved_token"      # token of the run last autosaved (app.session_panel)
SESSION_NOTE = "session_note"      # (level, text) after a session save / load / restore
WIDGET_SHADOW = "widget_shadow"    # last known value of every widget key (see init); a dict per session

DATA_DEFAULTS = MappingProxyType({
    DATASET: None,
    DATASET_KEY: None,
    DATASET_LABEL: None,
    DATASET_ORIGIN: None,
    DATA_ERROR: None,
    UPLOAD_DIGEST: None,
    POTENTIAL_LABEL: None,
    MODEL_ERROR: None,
    MODEL_ERROR_FOR: None,
    SITES: None,
    SITES_KEY: None,
    JOB: None,
    FEATURIZE_JOB: None,
    FEATURIZE_NOTE: None,
    RESULTS: None,
    TRAIN_ERROR: None,
    SELECTED: None,
    OPEN_STRUCTURE: False,
    QUICKSTART: False,
    URL_DEMO_DONE: False,
    DROPPED: None,
    DATASET_RAW: None,
    MODEL_REF: None,
    AUTOSAVED: None,
    SESSION_NOTE: None,
})


def init() -> None:
    """Create every key with its default (``setdefault``) and keep widget values alive.

    Widget values are re-committed on every run, and also shadowed in ``WIDGET_SHADOW``: in a
    real browser a stray fragment rerun (the Calibrate page's live panel timer firing once
    after the job ended) can end in a run without a body that drops *every* widget's state
    (seen with Streamlit 1.67: the method list vanished and the results were falsely marked
    out of date). A widget key that disappeared without :func:`forget` is put back from the shadow.
    """
    ss = st.session_state
    for key, value in DATA_DEFAULTS.items():
        ss.setdefault(key, value)
    shadow = ss.setdefault(WIDGET_SHADOW, {})
    for key, value in WIDGET_DEFAULTS.items():
        if key in ss:
            ss[key] = ss[key]  # re-commit: survives pages that don't draw this widget
        elif key in shadow:
            ss[key] = shadow[key]
        elif value is not None:
            ss[key] = list(value) if isinstance(value, tuple) else value
        if key in ss:
            shadow[key] = _copy(ss[key])


def _copy(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def forget(key: str) -> None:
    """Drop a widget's value (it goes back to its default), shadow included."""
    st.session_state.pop(key, None)
    st.session_state.get(WIDGET_SHADOW, {}).pop(key, None)


def get(key: str) -> Any:
    return st.session_state.get(key, DATA_DEFAULTS.get(key, WIDGET_DEFAULTS.get(key)))


def put(key: str, value: Any) -> None:
    st.session_state[key] = value
    if key in WIDGET_DEFAULTS:
        st.session_state.setdefault(WIDGET_SHADOW, {})[key] = _copy(value)


def set_dataset(dataset, key: str, label: str, origin: tuple[str, str], raw: bytes | None = None) -> None:
    """A new dataset: drop features, results, the structure shown and selection derived from the old one.

    Call before the Data page draws its split widgets (it resets their values). The split
    goes back to random by structure (whose test part is exchangeable with the calibration
    part), even when the file marks its own calibration/test frames: a file's test part may
    hold environments never calibrated on. An upload leaves the demo model and the one-click
    demo behind (the demo models know only the demo elements). ``raw``: an upload's bytes, kept for
    session files when at most ``app.session.embed_limit_bytes()``.
    """
    from app.session import embed_limit_bytes

    ss = st.session_state
    ss[DATASET] = dataset
    ss[DATASET_RAW] = bytes(raw) if raw is not None and len(raw) <= embed_limit_bytes() else None
    ss[DATASET_KEY] = key
    ss[DATASET_LABEL] = label
    ss[DATASET_ORIGIN] = tuple(origin)
    ss[DATA_ERROR] = None
    put(W_CAL_TYPES, [])
    put(W_TEST_TYPES, [])
    put(W_SPLIT_MODE, SPLIT_RANDOM)
    for key in (W_STRUCTURE, W_VIEW_METHOD, W_DIAG_METHOD, W_EXPORT_METHOD):
        forget(key)  # the previous dataset's structure and methods
    if origin[0] == "upload":
        ss[QUICKSTART] = False  # the one-click demo is for the demos
        if ss.get(W_MODEL_KIND) == MODEL_KINDS[0]:
            put(W_MODEL_KIND, MODEL_KINDS[2])  # an uploaded dataset comes with its own model
    clear_sites("the dataset changed")


def clear_sites(reason: str | None = None) -> None:
    ss = st.session_state
    cancel_featurize()
    ss[SITES] = None
    ss[SITES_KEY] = None
    clear_results(reason)


def cancel_featurize() -> None:
    """Cancel and forget a running featurize job (its dataset or the session is being replaced)."""
    job = st.session_state.get(FEATURIZE_JOB)
    if job is not None:
        job.cancel()
    st.session_state[FEATURIZE_JOB] = None
    st.session_state[FEATURIZE_NOTE] = None


def set_sites(sites, key, potential_label: str) -> None:
    ss = st.session_state
    if ss.get(SITES_KEY) != key:
        clear_results("the model or its features changed")
    ss[SITES] = sites
    ss[SITES_KEY] = key
    ss[POTENTIAL_LABEL] = potential_label
    ss[MODEL_ERROR] = None
    ss[MODEL_REF] = _model_ref(ss)


def _model_ref(ss) -> dict:
    """What the Model page's widgets say featurized the sites (the session file's model reference)."""
    choice = ss.get(W_MODEL_KIND)
    origin = ss.get(DATASET_ORIGIN) or ("upload", "")
    ref = {"choice": choice, "kind": None, "value": None, "file": None, "sha256": None}
    if choice == MODEL_KINDS[0]:
        ref.update(kind=origin[0] if origin[0] in ("demo", "synthetic") else "demo", value=origin[1])
    elif choice == MODEL_KINDS[1]:
        ref.update(kind="named", value=ss.get(W_FOUNDATION))
    elif choice == MODEL_KINDS[2]:
        ref.update(kind="path", value=str(ss.get(W_MODEL_PATH) or "").strip())
    elif choice == MODEL_KINDS[3]:
        upload = ss.get(W_MODEL_UPLOAD)
        ref.update(kind="upload", file=getattr(upload, "name", None))
        if upload is not None:
            import hashlib

            ref["sha256"] = hashlib.sha256(upload.getvalue()).hexdigest()
    else:  # a model choice added later: recorded by its label (a session never loads it by itself)
        ref.update(kind="other", value=str(choice))
    return ref


def restore_session(values: dict) -> None:
    """Put a restored session (``app.session.restored_values``) into the state.

    A running job is cancelled; the view choices of the previous dataset (structure shown,
    methods picked on Diagnose/Structures/Export), its errors and the one-click demo are reset.
    """
    ss = st.session_state
    job = ss.get(JOB)
    if job is not None:
        job.cancel()
    cancel_featurize()
    for key in (W_STRUCTURE, W_VIEW_METHOD, W_DIAG_METHOD, W_EXPORT_METHOD):
        forget(key)
    ss.update({JOB: None, TRAIN_ERROR: None, DATA_ERROR: None, MODEL_ERROR: None, MODEL_ERROR_FOR: None,
               UPLOAD_DIGEST: None, SELECTED: None, OPEN_STRUCTURE: False, QUICKSTART: False, DROPPED: None})
    ss.update(values)
    shadow = ss.setdefault(WIDGET_SHADOW, {})
    shadow.update({k: _copy(v) for k, v in values.items() if k in WIDGET_DEFAULTS})


def clear_results(reason: str | None = None) -> None:
    """Drop the results (and stop a running job); ``reason`` is shown where they were."""
    ss = st.session_state
    job = ss.get(JOB)
    if job is not None:
        job.cancel()
    had = ss.get(RESULTS) is not None or job is not None
    ss[JOB] = None
    ss[RESULTS] = None
    ss[SELECTED] = None
    ss[DROPPED] = reason if (had and reason) else None


def collect_finished_job() -> bool:
    """Move a finished training job's results into the session; True when it did."""
    ss = st.session_state
    job = ss.get(JOB)
    if job is None or not job.done:
        return False
    ss[JOB] = None
    if job.status == "done":
        ss[RESULTS] = job.run
        ss[TRAIN_ERROR] = None
        ss[SELECTED] = None
        ss[DROPPED] = None
    else:
        ss[TRAIN_ERROR] = job.error
        ss[QUICKSTART] = False
    return True


def select_site(structure_id: int, atom_index: int | None) -> None:
    st.session_state[SELECTED] = {"structure_id": int(structure_id),
                                  "atom_index": None if atom_index is None else int(atom_index)}
    put(W_STRUCTURE, int(structure_id))


# ------------------------------------------------------------------- staleness
def current_settings() -> dict:
    """What a calibration depends on, as the widgets say now (compared by :func:`stale_reasons`).

    Keys starting with "_" are content hashes (dataset bytes, model identity), named but not
    shown when they change.
    """
    mode = SPLIT_MODES.get(get(W_SPLIT_MODE), "random")
    out = {"_dataset": get(DATASET_KEY), "_model": repr(get(SITES_KEY)), "split": get(W_SPLIT_MODE)}
    if mode == "random":
        out["test fraction"] = float(get(W_TEST_FRACTION))
        out["split seed"] = int(get(W_SPLIT_SEED))
    elif mode == "config_type":
        out["calibrate on"] = sorted(get(W_CAL_TYPES) or [])
        out["test on"] = sorted(get(W_TEST_TYPES) or [])
    out["methods"] = list(get(W_METHODS) or [])
    out["confidence"] = float(get(W_CONFIDENCE))
    return out


def stale_reasons(run) -> list[str]:
    """What changed since ``run`` was calibrated ([] when it is up to date)."""
    from app.notices import stale_reasons as diff

    return diff(run.settings, current_settings()) if run is not None else []
