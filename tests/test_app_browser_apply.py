"""From calibration to use, in a real browser (issue 11): headless Chromium driven by Selenium.

demo (the ethanol ``molecule`` family) -> one-click calibrate -> Export page: download the
recommended method's calibrator -> a NEW Streamlit session -> Apply page: upload that file ->
annotate the shipped demo trajectory (``datasets/molecule_ethanol_heating.xyz``, ethanol heated
300 -> 900 K) -> read the width-against-frame plot and the flagged-frame table -> download the
flagged frames and read them back with ASE.

Values checked: the downloaded calibrator loads with ``core.calibration.load_calibrator`` (kind,
confidence, the molecule model's layout); the plot has the per-frame maximum and mean against all
400 frames and the threshold line at the page's threshold; the maximum width rises along the
heating; the flagged-frame table is non-empty and its frames are the exported ones; the exported
extxyz has per-atom ``flexcal_width`` arrays (whose maximum is each frame's ``flexcal_max_width``)
and as many frames as the table.

Reuses the server, browser and helpers of ``tests/test_app_browser.py`` (skips the same way when
Chromium, chromedriver or Selenium is missing). About 1.5-2 minutes on 2 cores.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.test_app_browser import (MAIN, _button, _click_label, _go, _idle,  # noqa: F401
                                    _severe, _shot, _texts, _title, _upload, _wait, BENIGN_CONSOLE,
                                    driver, server)

pytestmark = pytest.mark.slow

DEMO = "molecule"          # the family whose model the demo trajectory is annotated with
DEMO_TIMEOUT = 240         # s, the one-click demo (FLOW_TIMEOUT of the other walks is 100 s: too short under load)
ANNOTATE_TIMEOUT = 180     # s, 400 ethanol frames through the demo MACE (~20 s idle; minutes at load 15 on 2 cores)


def _download(drv, pattern: str, what: str):
    return _wait(drv, lambda d: [p for p in d.downloads.glob(pattern) if p.stat().st_size > 0],
                 what=what)[0]


def _plot_traces(drv):
    """(x-axis title, [{name, x, y}]) of the Apply page's width-against-frame plot."""
    from selenium.webdriver.common.by import By

    def plot(d):
        for p in d.find_elements(By.CSS_SELECTOR, f"{MAIN} .js-plotly-plot"):
            title = d.execute_script("return ((arguments[0].layout || {}).title || {}).text || '';", p)
            if "width along the structures" in title:
                return p
        return None

    gd = _wait(drv, plot, what="the width-against-frame plot")
    return drv.execute_script(
        "const gd = arguments[0];"
        "return [((gd.layout.xaxis || {}).title || {}).text || '', ((gd.layout.yaxis || {}).title || {}).text || '',"
        " gd._fullData.map(t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y)}))];", gd)  # decoded arrays


def test_calibrate_export_then_apply_in_a_new_session(server, driver):
    from ase.io import read

    from core.annotation import WIDTH_ARRAY
    from core.calibration import load_calibrator

    drv = driver
    t0 = time.monotonic()
    for old in [*drv.downloads.glob("*.npz"), *drv.downloads.glob("*.extxyz")]:
        old.unlink()

    # 1. demo -> calibrate (one click) -> Export: the recommended method's calibrator file
    drv.get(f"{server}/?demo={DEMO}")  # _one_click_demo without its wait for Diagnose's plots (not used here)
    _wait(drv, lambda d: "Data" in _title(d), what="Data page")
    _wait(drv, _idle, what="Data page idle")
    _button(drv, "Run the whole demo").click()
    _wait(drv, lambda d: "Diagnose" in _title(d), timeout=DEMO_TIMEOUT, what="Diagnose page after the demo")
    _wait(drv, _idle, what="Diagnose idle")
    _go(drv, "export", "Export")
    _button(drv, "calibrator (.npz)", where="//*[@data-testid='stMain']//").click()
    npz = _download(drv, "*calibrator.npz", "calibrator download")
    cal = load_calibrator(npz)  # a valid, pickle-free calibrator file
    assert cal.name == "flexible-ood" and cal.confidence == pytest.approx(0.9)
    assert cal.layout_["potential"] == DEMO and cal.layout_["n_descriptors"] > 0
    assert cal.domain_.is_fitted  # it carries its out-of-domain score
    t_calibrated = time.monotonic() - t0

    # 2. a new session (new URL: nothing of the calibration is left) -> Apply -> upload the file
    drv.get(server)
    _wait(drv, lambda d: "Data" in _title(d), what="Data page of the new session")
    _wait(drv, _idle, what="new session idle")
    _go(drv, "apply", "Apply")
    assert not [t for t in _texts(drv, MAIN) if "Fitted on the Calibrate page" in t], "a new session has no results"
    _click_label(drv, "stRadio", "Upload a calibrator file")
    _upload(drv, MAIN, npz)
    _wait(drv, lambda d: [t for t in _texts(d, f"{MAIN} [data-testid='stMarkdown']") if "flexible-ood" in t
                          and f"descriptor columns of {DEMO}" in t], what="the loaded calibrator's description")
    _wait(drv, _idle, what="idle after the upload")
    assert not _texts(drv, f'{MAIN} [data-testid="stAlert"]') or not [
        t for t in _texts(drv, f'{MAIN} [data-testid="stAlert"]') if "Could not" in t]

    # 3. annotate the demo trajectory (the default structures) with the demo model (picked from the layout)
    _wait(drv, lambda d: _button(d, "Annotate").is_enabled(), what="Annotate enabled")
    _button(drv, "Annotate").click()
    heading = _wait(drv, lambda d: [t for t in _texts(d, f"{MAIN} h3") if t.startswith("Flagged frames (")],
                    timeout=ANNOTATE_TIMEOUT, what="the flagged-frame table")[0]
    _wait(drv, _idle, what="Apply idle")
    n_flagged = int(heading.split("(")[1].split(")")[0])
    t_annotated = time.monotonic() - t0
    _shot(drv, "apply")

    # the plot: max and mean width against the 400 frames, the threshold line at the page's threshold
    xtitle, ytitle, traces = _plot_traces(drv)
    assert xtitle == "frame" and "eV/Å" in ytitle
    by_name = {t["name"]: t for t in traces}
    assert {"max per frame", "mean per frame"} <= set(by_name), list(by_name)
    threshold = float(drv.find_element("css selector", f'{MAIN} [data-testid="stNumberInput"] input')
                      .get_attribute("value"))
    line = [t for name, t in by_name.items() if name.startswith("threshold")]
    assert line and line[0]["y"] == [threshold, threshold] and line[0]["x"] == [0, 399], line
    x, w_max, w_mean = (np.array(by_name["max per frame"]["x"]), np.array(by_name["max per frame"]["y"]),
                        np.array(by_name["mean per frame"]["y"]))
    np.testing.assert_array_equal(x, np.arange(400))
    assert np.all(w_max >= w_mean) and np.all(w_mean > 0)
    # heating 300 -> 900 K: the largest width rises with the frame index
    q = 100
    assert w_max[-q:].mean() > 1.5 * w_max[:q].mean(), (w_max[:q].mean(), w_max[-q:].mean())
    assert np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(w_max)))[0, 1] > 0.5  # Spearman

    # the flagged-frame table: non-empty, and the flagged markers of the plot are the same frames
    assert n_flagged > 0
    marked = [t for name, t in by_name.items() if name.startswith("flagged")]
    assert marked and len(marked[0]["x"]) == n_flagged and marked[0]["name"] == f"flagged ({n_flagged})"
    flagged_frames = np.array(marked[0]["x"], dtype=int)
    assert flagged_frames.mean() > 200, "the flags gather in the hot half of the trajectory"

    # 4. export the flagged frames: ASE reads them back with per-atom widths, as many frames as the table
    _button(drv, "Flagged frames (.extxyz", where="//*[@data-testid='stMain']//").click()
    xyz = _download(drv, "flexcal-flagged*.extxyz", "flagged-frames download")
    frames = read(xyz, ":")
    assert len(frames) == n_flagged
    assert [a.info["flexcal_frame"] for a in frames] == flagged_frames.tolist()
    for a in frames:
        w = a.arrays[WIDTH_ARRAY]
        assert w.shape == (len(a),) and np.all(np.isfinite(w)) and np.all(w > 0)
        assert a.info["flexcal_flagged"] is True or a.info["flexcal_flagged"] == 1
        # extxyz keeps 8 significant digits of per-atom arrays, info values in full
        assert w.max() == pytest.approx(a.info["flexcal_max_width"], rel=1e-7)
        assert a.info["flexcal_max_width"] > threshold or a.info.get("flexcal_frame_ood")
        assert a.info["flexcal_max_width"] == pytest.approx(w_max[a.info["flexcal_frame"]], rel=1e-12)
    bad = [m for m in _severe(drv) if not any(b.lower() in m.lower() for b in BENIGN_CONSOLE)]
    assert not bad, f"SEVERE browser console messages: {bad}"
    total = time.monotonic() - t0
    print(f"calibrate + export {t_calibrated:.0f} s, + apply {t_annotated:.0f} s, whole walk {total:.0f} s; "
          f"{n_flagged} frames flagged")
