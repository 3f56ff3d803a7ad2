"""Streamlit pieces shared by the pages: honest coverage, out-of-domain banner, out-of-date badge.

The texts come from :mod:`app.notices`; this module only draws them, the same way on every
page (Calibrate, Diagnose, Structures, Export and the sidebar).
"""

from __future__ import annotations

from types import MappingProxyType

import streamlit as st

from app import notices, state
from app.catalog import safe_filename

#: The modebar's camera button saves the chart as SVG (vector, drawn by plotly.js in the browser: no
#: kaleido or browser on the server). PDF export would need kaleido + Chrome, which FlexCal does not ship.
SVG_EXPORT = MappingProxyType({"format": "svg", "height": 600, "width": 900, "scale": 1})

_DONE, _TODO, _BUSY = ":material/check_circle:", ":material/radio_button_unchecked:", ":material/hourglass_top:"
OUT_OF_DATE = "Results out of date"


def sidebar_status() -> None:
    """Data / features / calibration status, with the out-of-date badge."""
    sites, run, job = state.get(state.SITES), state.get(state.RESULTS), state.get(state.JOB)
    if run is not None:
        calib = f"{_DONE} calibration: {', '.join(run.labels)}"
    elif job is not None:
        calib = f"{_BUSY} calibration: training ..."
    else:
        calib = f"{_TODO} calibration: —"
    data = state.get(state.DATASET_LABEL) or "—"
    st.markdown(
        f"{_DONE if state.get(state.DATASET) is not None else _TODO} data: {data}  \n"
        f"{_DONE if sites is not None else _TODO} features: {f'{len(sites)} sites' if sites is not None else '—'}  \n"
        + calib
    )
    if run is not None and state.stale_reasons(run):
        st.badge(OUT_OF_DATE, icon=":material/update:", color="orange")


def stale_badge(run) -> bool:
    """A warning naming what changed since ``run`` was calibrated; True when it is out of date."""
    reasons = state.stale_reasons(run)
    if not reasons:
        return False
    st.warning(f"**{OUT_OF_DATE}** — since this calibration, " + "; ".join(reasons)
               + ". The numbers below are for the old settings: press **Train** on the Calibrate page to "
               "recalibrate.", icon=":material/update:")
    return True


def dropped_note() -> None:
    """Say why earlier results disappeared (the dataset or the model changed)."""
    reason = state.get(state.DROPPED)
    if reason:
        st.info(f"The previous calibration was discarded because {reason}.", icon=":material/update:")


def results_or_stop(why: str, *, key: str | None = None):
    """The session's calibration run; without one, say why this page needs it (``why``), offer a way
    back to Calibrate and end the page (``st.stop``)."""
    run = state.get(state.RESULTS)
    if run is None:
        from app.pages_index import page

        dropped_note()
        st.warning(f"Calibrate first (Calibrate page){why}")
        if st.button("← Calibrate", key=key):
            st.switch_page(page("calibrate"))
        st.stop()
    return run


def ood_banner(run) -> bool:
    """The out-of-domain banner of a run's test set; True when drawn."""
    text = notices.ood_banner(run)
    if text:
        st.warning(text, icon=":material/explore_off:")
    else:
        note = notices.ood_note(run)
        if note:
            st.caption(f":material/explore: {note}")
    return bool(text)


def coverage_warnings(run) -> int:
    """One visible warning per method whose coverage is outside its expected range."""
    texts = notices.coverage_warnings(run)
    for text in texts:
        st.warning(text, icon=":material/warning:")
    return len(texts)


def honest_header(run) -> None:
    """Everything a reader must see before trusting the numbers: staleness, domain, coverage spread."""
    stale_badge(run)
    ood_banner(run)
    coverage_warnings(run)


def coverage_metric(column, report: dict, n_calibration: int) -> None:
    """A coverage metric card whose caption is the expected range (red when outside it)."""
    expected = notices.expected_text(report, n_calibration) or "expected range unknown"
    verdict = notices.coverage_verdict(report)
    # a leading "-" turns the arrow down and red: under-coverage is the dangerous side
    delta = {"below": "-below the expected range", "above": "above the expected range"}.get(verdict)
    column.metric("coverage", notices.fmt(report.get("coverage")), delta=delta,
                  delta_color="normal" if verdict == "below" else "off",
                  help=f"nominal {report.get('confidence', 0):.0%}; {expected}. "
                       "The spread comes from the finite number of calibration structures.")
    column.caption(expected)


def chart_config(filename: str) -> dict:
    """The plotly ``config`` every chart of the app gets: SVG download named ``filename``, no logo."""
    return {"toImageButtonOptions": {**SVG_EXPORT, "filename": safe_filename(filename, default="flexcal-figure")},
            "displaylogo": False}


def plotly_chart(fig, *, key: str, filename: str | None = None, **kwargs):
    """``st.plotly_chart`` with the app's config (SVG download); ``kwargs`` go to it (on_select, ...)."""
    return st.plotly_chart(fig, key=key, config=chart_config(filename or f"flexcal-{key}"), **kwargs)
