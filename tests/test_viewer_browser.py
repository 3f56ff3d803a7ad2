"""core.viewer in a real browser: the view is drawn once, looks like py3Dmol's own, and a hidden view draws when shown.

3Dmol.js redraws after every ``zoomTo``, ``rotate``, ``addUnitCell`` and ``addLabel``, and its
Resize/IntersectionObservers redraw again once the canvas is laid out; without a GPU each
redraw costs 0.1-0.35 s. :func:`core.viewer.structure_view_html` holds the drawing back until
the final ``render()`` and redraws only on a real size change. This test loads the same periodic
view (values, highlight label, error arrows, unit cell) twice in headless Chromium — as built,
and as py3Dmol's own script (the hold-back removed) — counts the draws and compares the canvases
pixel by pixel (equal but for the anti-aliasing of the cell's text labels); then a view built inside a
hidden element must draw when the element is shown.
Skips without Chromium or the installed 3Dmol.js (``make venv``).
"""

from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest
from ase.build import bulk

from core import viewer as V
from tests.test_app_browser import _chromium_available, _wait, headless_chromium

pytestmark = pytest.mark.slow

#: counts GLViewer draws (``show``), placed between the inlined library and the viewer script
_COUNT_DRAWS = ("<script>window.DRAWS = 0; (function (p) { const show = p.show; "
                "p.show = function () { window.DRAWS += 1; return show.apply(this, arguments); }; })"
                "($3Dmol.GLViewer.prototype);</script>\n")
_LIB_END = "}).call(window);</script>\n"


def _page(html: str, hidden: bool = False) -> str:
    cut = html.index(_LIB_END) + len(_LIB_END)
    view = f'<div id="box" style="display: none">{html[cut:]}</div>' if hidden else html[cut:]
    return f"<html><body>{html[:cut]}{_COUNT_DRAWS}{view}</body></html>"


def _settled_draws(drv) -> int:
    """The draw count once it has not changed for 1 s (observers fire a frame or two after the script)."""
    last, since = -1, time.monotonic()
    while time.monotonic() - since < 1.0:
        n = int(drv.execute_script("return window.DRAWS"))
        if n != last:
            last, since = n, time.monotonic()
        time.sleep(0.1)
    return last


def _draw_and_capture(drv, path) -> tuple[int, np.ndarray]:
    from PIL import Image
    from selenium.webdriver.common.by import By

    drv.get(path.as_uri())
    _wait(drv, lambda d: d.execute_script("return window.DRAWS > 0 && !!document.querySelector('canvas')"),
          what=f"the view in {path.name}")
    draws = _settled_draws(drv)
    canvas = drv.find_element(By.CSS_SELECTOR, "canvas")
    return draws, np.asarray(Image.open(io.BytesIO(canvas.screenshot_as_png)).convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def browser():
    reason = _chromium_available()
    if reason:
        pytest.skip(reason)
    if not V.default_3dmol_js_path().is_file():
        pytest.skip(f"3Dmol.js not installed at {V.default_3dmol_js_path()} (make venv)")
    with headless_chromium() as drv:
        yield drv


@pytest.fixture
def view_html(monkeypatch):
    monkeypatch.delenv(V.JS_ENV_VAR, raising=False)
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    rng = np.random.default_rng(0)
    return V.structure_view_html(atoms, values=np.linspace(0.1, 0.9, len(atoms)), highlight=3,
                                 arrows=rng.normal(size=(len(atoms), 3)), width=400, height=300)


def _as_py3dmol(html: str) -> str:
    """The same view as py3Dmol's own script: no hold-back, 3Dmol's observers."""
    viewer = re.search(r"\n(viewer_\w+)\.show = function \(\) \{\};", html)[1]
    start = html.index(f"{viewer}.show = function () {{}};")
    end = html.index(f"}})({viewer});\n", start) + len(f"}})({viewer});\n")
    out = html[:start] + html[end:]
    return out.replace(f"delete {viewer}.show;\n", "")


def test_view_draws_once_and_looks_the_same(browser, view_html, tmp_path):
    as_py3dmol = _as_py3dmol(view_html)
    assert "show = function" not in as_py3dmol and "disconnect" not in as_py3dmol
    once, redrawn = tmp_path / "once.html", tmp_path / "py3dmol.html"
    once.write_text(_page(view_html))
    redrawn.write_text(_page(as_py3dmol))
    draws_once, picture_once = _draw_and_capture(browser, once)
    draws_py3dmol, picture_py3dmol = _draw_and_capture(browser, redrawn)
    assert draws_once == 1
    assert draws_py3dmol >= 7  # zoomTo x2, addUnitCell, addLabel, rotate x2, render, then the observers'
    assert picture_once.shape == picture_py3dmol.shape and picture_once.shape[0] > 100
    assert picture_once.std() > 10  # not blank
    # the same picture: only the anti-aliasing of the cell's a/b/c text sprites may differ a little (3Dmol's
    # observers redraw them once more); a missing or moved object would differ by far more
    differs = np.abs(picture_once - picture_py3dmol).max(axis=-1)
    assert (differs > 0).mean() < 0.005 and differs.max() < 100, (int((differs > 0).sum()), int(differs.max()))


def test_a_view_built_hidden_is_drawn_when_shown(browser, view_html, tmp_path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "hidden.html"
    path.write_text(_page(view_html, hidden=True))
    browser.get(path.as_uri())
    _wait(browser, lambda d: d.execute_script("return window.DRAWS > 0"), what="the hidden view's render()")
    hidden_draws = _settled_draws(browser)
    browser.execute_script("document.getElementById('box').style.display = 'block'")
    _wait(browser, lambda d: d.execute_script("return window.DRAWS") > hidden_draws, what="a redraw when shown")
    canvas = browser.find_element(By.CSS_SELECTOR, "canvas")
    assert canvas.size["width"] > 300 and canvas.size["height"] > 200
    from PIL import Image

    picture = np.asarray(Image.open(io.BytesIO(canvas.screenshot_as_png)).convert("RGB")).astype(int)
    assert picture.std() > 10  # drawn, not blank
