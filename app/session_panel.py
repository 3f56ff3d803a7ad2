"""The sidebar's session controls: save / load a session file, restore the last session, autosave.

Drawn by ``app/main.py`` *before* the page: a page that calls ``st.stop()`` ends the run and
nothing drawn after it appears (and the restore offer matters most on such a page, after a
reload). Loading and restoring happen in widget callbacks, i.e. before the next run draws
anything, so the panel and the page that follow already show the restored session. The
autosave runs after the page (a page that stopped early leaves it to the next completed run:
after ``st.stop`` even ``st.session_state`` raises). The file logic is :mod:`app.session` (no
Streamlit there); this module only arranges widgets over it.
"""

from __future__ import annotations

import os

import streamlit as st

from app import catalog, services, session, state

# the state a session file is built from (captured when the page is drawn; built on click)
_SAVED_KEYS = (state.RESULTS, state.SITES, state.SITES_KEY, state.DATASET_KEY, state.DATASET_LABEL,
               state.DATASET_ORIGIN, state.DATASET_RAW, state.POTENTIAL_LABEL, state.MODEL_REF,
               *session.SESSION_WIDGETS)


def _message(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ValueError) else catalog.describe_error(exc)


def autosave_new_results() -> None:
    """Write a calibration not saved yet to the cache folder's ``sessions/last.zip`` (once per run).

    ``FLEXCAL_AUTOSAVE=0`` turns it off. A failure is a sidebar note, never an error page.
    """
    run = state.get(state.RESULTS)
    if run is None or state.get(state.AUTOSAVED) == run.token:
        return
    state.put(state.AUTOSAVED, run.token)  # once per run, even when the write fails
    state.put(state.SESSION_NOTE, None)    # a new calibration: older save/restore notes are done
    if os.environ.get("FLEXCAL_AUTOSAVE", "1") == "0":
        return
    try:
        session.autosave({k: state.get(k) for k in _SAVED_KEYS})
    except Exception as exc:  # a full disk or a read-only folder must not break the page
        state.put(state.SESSION_NOTE, ("warning", f"Could not autosave this session: {_message(exc)}"))


def restore(data: bytes, source: str) -> bool:
    """Validate a session file and put it into the state; a sidebar note says what happened."""
    try:
        values, snap = session.load_into_state(data, source=source, current=st.session_state,
                                               load_demo=services.load_demo, read_upload=services.read_upload)
    except Exception as exc:  # untrusted input: every failure is a message, the current state is kept
        state.put(state.SESSION_NOTE, ("error", f"Session not restored — {_message(exc)}"))
        return False
    state.restore_session(values)
    notes = " ".join(snap.model_notes)
    state.put(state.SESSION_NOTE, ("success", f"Restored the session ({snap.summary})." + (f" {notes}" if notes else "")))
    return True


def _on_upload() -> None:
    up = st.session_state.get(state.W_SESSION_UPLOAD)
    if up is not None:
        restore(up.getvalue(), up.name)


def _on_restore_last() -> None:
    try:
        data = session.read_file(session.last_session_path(), source="the last session")
    except (OSError, ValueError) as exc:
        state.put(state.SESSION_NOTE, ("error", f"Session not restored — {_message(exc)}"))
        return
    restore(data, "the last session")


def _offer_last() -> None:
    """After a reload (a fresh session without results): offer the autosaved last session."""
    path = session.last_session_path()
    if not path.is_file():
        return
    doc = session.peek(path)
    if doc is None:
        return
    st.button(f"Restore the last session ({session.summary_text(doc)})", key="btn_restore_last",
              on_click=_on_restore_last, icon=":material/history:",
              help="The last calibration of this app is autosaved; this brings back its dataset, features, "
                   "split, methods, fitted calibrators and metrics (nothing is refitted, no model is loaded).")


def sidebar() -> None:
    """Session controls for the sidebar (call inside ``with st.sidebar``, before the page).

    Kept light: the autosave runs after the page (``app/main.py``), so the page's widgets are
    drawn without delay (a run preempted before its widgets are drawn loses their values).
    """
    run, job = state.get(state.RESULTS), state.get(state.JOB)
    if run is None and job is None:
        _offer_last()
    note = state.get(state.SESSION_NOTE)
    if note:
        level, text = note
        {"success": st.success, "warning": st.warning}.get(level, st.error)(text)
    if run is not None:
        values = {k: state.get(k) for k in _SAVED_KEYS}
        st.download_button("Save session", lambda: session.session_bytes(values), file_name=session.SESSION_FILE,
                           mime="application/zip", on_click="ignore", key="dl_session", icon=":material/save:",
                           help="One file (zip of JSON + arrays, no pickle): dataset reference (small uploads "
                                "embedded), model reference (never the model file), split, methods, fitted "
                                "calibrators and results.")
    with st.expander("Load a session file", icon=":material/folder_open:"):
        st.file_uploader("Session file (.zip)", type=["zip"], key=state.W_SESSION_UPLOAD, on_change=_on_upload,
                         help="A file saved with “Save session”. It is validated before anything is used; a "
                              "model file is never part of it, so featurizing again asks for trust.")
