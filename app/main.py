"""FlexCal app entry point: ``streamlit run app/main.py`` (or ``make app``).

Thin on purpose: page configuration, session-state defaults and navigation. Every
page is a file in ``app/pages``; logic lives in ``core`` and the cached glue in
``app/services.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # running from a source tree without `pip install -e .`
    sys.path.insert(0, str(_ROOT))

from app import services, state  # noqa: E402
from app.pages_index import PAGES  # noqa: E402

_DONE, _TODO, _BUSY = ":material/check_circle:", ":material/radio_button_unchecked:", ":material/hourglass_top:"

# a local favicon: a material/emoji page_icon would be fetched from a CDN (no network at run time)
st.set_page_config(page_title="FlexCal", page_icon=str(_ROOT / "app" / "assets" / "favicon.png"), layout="wide")
state.init()
state.collect_finished_job()  # a training job may have ended while another page was open

nav = st.navigation([st.Page(str(p.path), title=p.title, icon=p.icon, url_path=p.url, default=p.default)
                     for p in PAGES])
with st.sidebar:
    st.caption("FlexCal — flexible uncertainty calibration for MACE potentials")
    _sites, _run, _job = state.get(state.SITES), state.get(state.RESULTS), state.get(state.JOB)
    st.markdown(
        f"{_DONE if state.get(state.DATASET) is not None else _TODO} data: {state.get(state.DATASET_LABEL) or '—'}  \n"
        f"{_DONE if _sites is not None else _TODO} features: "
        f"{f'{len(_sites)} sites' if _sites is not None else '—'}  \n"
        f"{_DONE if _run is not None else (_BUSY if _job is not None else _TODO)} calibration: "
        f"{', '.join(_run.labels) if _run is not None else ('training ...' if _job is not None else '—')}"
    )
nav.run()
services.prewarm()  # after the page is drawn: load torch & co. in the background while the user reads
