"""FlexCal app entry point: ``streamlit run app/main.py`` (or ``make app``).

Thin on purpose: page configuration, session-state defaults and navigation. Every
page is a file in ``app/views``; logic lives in ``core`` and the cached glue in
``app/services.py``. The sidebar status is drawn before the page and again *after* it
(into the same slot), so it shows what the page just did, and still shows when the page
stopped early (``st.stop``). The session panel (``app/session_panel.py``) precedes the page.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # running from a source tree without `pip install -e .`
    sys.path.insert(0, str(_ROOT))

from app import services, session_panel, state, widgets  # noqa: E402
from app.pages_index import PAGES  # noqa: E402

# a local favicon: a material/emoji page_icon would be fetched from a CDN (no network at run time)
st.set_page_config(page_title="FlexCal", page_icon=str(_ROOT / "app" / "assets" / "favicon.png"), layout="wide")
state.init()
state.collect_finished_job()  # a training job may have ended while another page was open

nav = st.navigation([st.Page(str(p.path), title=p.title, icon=p.icon, url_path=p.url, default=p.default)
                     for p in PAGES])
# A page that calls st.stop() ends the run: every st.* call after it (st.session_state too)
# raises StopException again. So the status is drawn before the page and redrawn after it (the
# slot's content is replaced: no lag when the page completes), and the session panel, whose
# widgets cannot be drawn twice, comes before the page (its actions are callbacks, run first).
with st.sidebar:
    st.caption("FlexCal — flexible uncertainty calibration for machine-learned potentials")
    status_slot = st.empty()
    with status_slot.container():
        widgets.sidebar_status()
    session_panel.sidebar()  # save / load / restore the last session (app/session_panel.py)
try:
    nav.run()
finally:
    session_panel.autosave_new_results()  # a new calibration -> sessions/last.zip (next completed run)
    with status_slot.container():
        widgets.sidebar_status()
services.prewarm()  # after the page is drawn: load torch & co. in the background while the user reads
