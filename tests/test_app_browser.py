"""The app in a real browser: headless Chromium driven by Selenium.

Starts ``python -m app.launch`` (what ``make app`` runs) on a free local port, runs the one-click demo
(Data -> Model -> Calibrate -> Diagnose), checks that the plots rendered
(``.js-plotly-plot``) and that the 3Dmol.js canvas drew something (a non-blank
screenshot of the canvas), clicks a point in a plot and checks that the Structures
page opened with that atom highlighted, downloads a file from the Export page, and
collects the browser console's SEVERE messages (none allowed beyond the known benign
ones listed below).

Screenshots of every page go to ``$FLEXCAL_ARTIFACTS`` (default ``test-artifacts/``),
and also to ``docs/screenshots/`` when ``FLEXCAL_UPDATE_SCREENSHOTS=1``.

Two more walks: a session saved from the sidebar, the page reloaded (a new Streamlit session),
the file loaded back with identical metrics; and a real uploaded dataset with its own MACE
model (the tiny model of ``tests/conftest.py``) through the trust gate, calibration, the
out-of-domain warning, the "results out of date" badge after a split-seed change, and an export.

Skips cleanly when Chromium, chromedriver or Selenium is missing. Every wait is
bounded; the server and the browser are always shut down.

Demo used: ``FLEXCAL_BROWSER_DEMO`` (a demo family name or ``synthetic``); default:
the first embedded demo whose MACE model is installed, else the synthetic demo.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("FLEXCAL_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FLEXCAL_CHROMEDRIVER", "/usr/bin/chromedriver")
START_TIMEOUT = 40     # s, server up
FLOW_TIMEOUT = 100     # s, one-click demo until the Diagnose page has its plots
STEP_TIMEOUT = 30      # s, any other wait
MAIN = '[data-testid="stMain"]'          # the page (not the sidebar)
SIDEBAR = '[data-testid="stSidebar"]'
# Console messages that are not the app's fault (matched as substrings of SEVERE entries).
BENIGN_CONSOLE = (
    "favicon.ico",                      # no favicon route in some Streamlit builds
    "_stcore/host-config",              # telemetry/host config probe when offline
    "Failed to load resource: net::ERR_INTERNET_DISCONNECTED",  # blocked external fonts/telemetry
    "webgl",                            # software WebGL notices from headless GPU-less Chromium
    "GroupMarkerNotSet",
    # a reload on a page URL (/calibrate): the frontend first probes <page>/_stcore/health for a base path
    "/_stcore/health - Failed to load resource: the server responded with a status of 404",
)

pytestmark = pytest.mark.slow


def _chromium_available() -> str | None:
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not (Path(exe).exists() or shutil.which(exe)):
            return f"{exe} not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _artifacts() -> Path:
    out = Path(os.environ.get("FLEXCAL_ARTIFACTS", ROOT / "test-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _pick_demo() -> str:
    wanted = os.environ.get("FLEXCAL_BROWSER_DEMO")
    if wanted:
        return wanted
    from app import catalog

    for _label, (kind, name) in catalog.demo_choices().items():
        if kind == catalog.DEMO and catalog.demo_model_available(name):
            return name
    return "synthetic"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = _chromium_available()
    if reason:
        pytest.skip(reason)
    port = _free_port()
    log_path = _artifacts() / "streamlit-server.log"
    env = dict(os.environ, FLEXCAL_CACHE_DIR=str(tmp_path_factory.mktemp("cache")), OMP_NUM_THREADS="2")
    cmd = [sys.executable, "-m", "app.launch", "--server.port", str(port),  # what `make app` runs
           "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start; see {log_path}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


@pytest.fixture(scope="module")
def driver(server):
    with headless_chromium() as drv:
        yield drv


@contextlib.contextmanager
def headless_chromium():
    """A headless Chromium (fresh profile, downloads into ``drv.downloads``), quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="flexcal-chromium-")
    downloads = tempfile.mkdtemp(prefix="flexcal-downloads-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1500,2400", "--enable-unsafe-swiftshader"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    opts.add_experimental_option("prefs", {"download.default_directory": downloads,
                                           "download.prompt_for_download": False})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(STEP_TIMEOUT)
    drv.set_script_timeout(STEP_TIMEOUT)
    drv.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads})
    drv.downloads = Path(downloads)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)
        shutil.rmtree(downloads, ignore_errors=True)


# ------------------------------------------------------------------------------- helpers
def _wait(drv, condition, timeout=STEP_TIMEOUT, what="condition"):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        # Streamlit re-renders elements: a reference can go stale between a find and a read
        return WebDriverWait(drv, timeout, poll_frequency=0.25,
                             ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
                             ).until(lambda d: condition(d))
    except TimeoutException:
        _shot(drv, f"timeout-{what.replace(' ', '_')}")
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


def _title(drv) -> str:
    from selenium.webdriver.common.by import By

    h = drv.find_elements(By.CSS_SELECTOR, "h1")
    return h[0].text if h else ""


def _idle(drv) -> bool:
    """Streamlit finished its run (no 'Running...' status widget)."""
    from selenium.webdriver.common.by import By

    return not drv.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')


def _shot(drv, name: str) -> Path:
    png = drv.get_screenshot_as_png()
    path = _artifacts() / f"{name}.png"
    path.write_bytes(png)
    if os.environ.get("FLEXCAL_UPDATE_SCREENSHOTS") == "1" and not name.startswith("timeout"):
        docs = ROOT / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        (docs / f"{name}.png").write_bytes(png)
    return path


def _go(drv, page: str, title: str):
    """Open a page through the sidebar (a new URL would start a new session and lose the state)."""
    from selenium.webdriver.common.by import By

    def links(d):  # the default page (Data) is linked as the app's root URL
        return [a for a in d.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebarNav"] a')
                if (a.get_attribute("href") or "").rstrip("/").endswith(f"/{page}")
                or a.text.strip().splitlines()[-1:] == [title]]  # the text starts with the icon's name

    link = _wait(drv, links, what=f"sidebar link to {page}")[0]
    link.click()
    _wait(drv, lambda d: title in _title(d), what=f"{page} page")
    _wait(drv, _idle, what=f"{page} page idle")


def _nonblank(png: bytes) -> tuple[bool, str]:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    colors = img.getcolors(maxcolors=1 << 20) or []
    lo, hi = img.convert("L").getextrema()
    return len(colors) > 20 and hi - lo > 60, f"{len(colors)} colours, luminance {lo}..{hi}, size {img.size}"


def _open_tab(drv, name: str) -> None:
    """Click a tab of st.tabs and wait until the rerun it triggers is over."""
    from selenium.webdriver.common.by import By

    def selected(d):
        return [t for t in d.find_elements(By.CSS_SELECTOR, '[data-testid="stTab"]')
                if t.text.strip() == name and t.get_attribute("aria-selected") == "true"]

    for attempt in range(3):  # a click that lands while the page re-renders can be lost: click again
        _wait(drv, _idle, what=f"idle before tab {name}")
        tab = _wait(drv, lambda d: [t for t in d.find_elements(By.CSS_SELECTOR, '[data-testid="stTab"]')
                                    if t.text.strip() == name], what=f"tab {name}")[0]
        tab.click()
        try:
            _wait(drv, selected, timeout=STEP_TIMEOUT // 3 if attempt < 2 else STEP_TIMEOUT,
                  what=f"tab {name} selected")
            break
        except AssertionError:
            if attempt == 2:
                raise
    _wait(drv, _idle, what=f"tab {name} idle")


def _click_first_point(drv, plot) -> None:
    """Click the first marker of a plotly chart at its pixel position (log axes aware)."""
    from selenium.webdriver.common.action_chains import ActionChains

    x, y, w, h = drv.execute_script(
        """
        const gd = arguments[0];
        const fl = gd._fullLayout, tr = gd._fullData[0];
        const xa = fl.xaxis, ya = fl.yaxis;
        const i = Math.floor(tr.x.length / 2);
        const px = fl._size.l + xa.l2p(xa.d2l(tr.x[i]));
        const py = fl._size.t + ya.l2p(ya.d2l(tr.y[i]));
        const r = gd.getBoundingClientRect();
        return [px, py, r.width, r.height];
        """,
        plot,
    )
    ActionChains(drv).move_to_element_with_offset(plot, int(x - w / 2), int(y - h / 2)).click().perform()


def _severe(drv) -> list[str]:
    try:
        logs = drv.get_log("browser")
    except Exception:  # some drivers do not expose logs
        return []
    return [e["message"] for e in logs if e.get("level") == "SEVERE"]


# ---------------------------------------------------------------------------------- test
def test_demo_flow_in_a_real_browser(server, driver):
    from selenium.webdriver.common.by import By

    drv = driver
    demo = _pick_demo()
    severe: list[str] = []
    timings = {}

    # 1. Data page opens on the demo with no configuration
    t0 = time.monotonic()
    drv.get(f"{server}/?demo={demo}")
    _wait(drv, lambda d: "Data" in _title(d), what="Data page")
    _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"]'), what="dataset summary")
    _wait(drv, _idle, what="Data page idle")
    timings["data"] = time.monotonic() - t0
    _shot(drv, "data")
    severe += _severe(drv)

    # 2. one click: featurize, calibrate (live loss curve), diagnose
    t1 = time.monotonic()
    button = _wait(drv, lambda d: d.find_elements(By.XPATH, "//button[contains(., 'Run the whole demo')]"),
                   what="quick-start button")[0]
    button.click()
    _wait(drv, lambda d: "Diagnose" in _title(d), timeout=FLOW_TIMEOUT, what="Diagnose page after the demo")
    _wait(drv, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")) >= 2, what="first tab's plots")
    _wait(drv, _idle, what="Diagnose idle")
    timings["demo_to_diagnosis"] = time.monotonic() - t1
    _shot(drv, "diagnose")
    severe += _severe(drv)

    # every tab draws its plots (only the open tab is rendered)
    expected = {"Calibration": 2, "Parity": 2, "Uncertainty vs error": 2, "Species & structures": 2,
                "Teaching view": 1}
    for tab, n in expected.items():
        _open_tab(drv, tab)
        # every plot drew its traces (checked inside the wait: a re-render makes references stale, then it retries)
        _wait(drv, lambda d: (lambda p: len(p) >= n and all(x.find_elements(By.CSS_SELECTOR, ".main-svg") for x in p))(
            d.find_elements(By.CSS_SELECTOR, '[data-testid="stTabPanel"] .js-plotly-plot')),
            what=f"{n} plots with their svg in tab {tab}")
        if tab == "Teaching view":
            _shot(drv, "diagnose-teaching")
    severe += _severe(drv)

    # 3. click a point in the uncertainty-error scatter: the Structures page opens on that atom
    _open_tab(drv, "Uncertainty vs error")

    def is_scatter(p):
        return drv.execute_script(
            "const a = (arguments[0]._fullLayout || {}).xaxis;"
            "return !!a && a.type === 'log' && ((a.title || {}).text || '').startsWith('predicted width');", p)

    from selenium.common.exceptions import StaleElementReferenceException

    for attempt in range(3):  # a click that lands while the chart re-renders can be lost: click again
        scatter = _wait(drv, lambda d: [p for p in d.find_elements(By.CSS_SELECTOR, '[data-testid="stTabPanel"] '
                                                                  '.js-plotly-plot') if is_scatter(p)],
                        what="the uncertainty-error scatter")[0]
        drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", scatter)
        _wait(drv, _idle, what="idle before click")
        try:
            _click_first_point(drv, scatter)
            _wait(drv, lambda d: "Structures" in _title(d), timeout=STEP_TIMEOUT // 3 if attempt < 2 else STEP_TIMEOUT,
                  what="Structures page after a point click")
            break
        except (AssertionError, StaleElementReferenceException):
            if attempt == 2:
                raise
    _wait(drv, _idle, what="Structures idle")

    # 4. the 3Dmol canvas rendered (inside the component iframe) and is not blank
    frames = _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, "iframe"), what="viewer iframe")
    drv.switch_to.frame(frames[0])
    try:
        canvas = _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, "canvas"), what="3Dmol canvas")[0]
        legend = drv.find_element(By.CSS_SELECTOR, ".flexcal-colorbar").text
        assert "eV/Å" in legend
        highlighted = drv.find_element(By.CSS_SELECTOR, ".flexcal-structure-view").text
        time.sleep(0.5)  # let WebGL present a frame
        ok, why = _nonblank(canvas.screenshot_as_png)
        assert ok, f"3D canvas looks blank: {why}"
        assert "highlighted: atom" in highlighted, "the clicked atom should be highlighted"
        # 3Dmol.js came from the app's static copy (make venv puts it there), not inlined into the view
        if (ROOT / "app" / "static" / "3Dmol-min.js").is_file():
            scripts = drv.execute_script("return Array.from(document.scripts).map(s => s.src || s.text.length)")
            assert "/app/static/3Dmol-min.js" in " ".join(map(str, scripts)), scripts
            assert all(isinstance(x, str) or x < 100_000 for x in scripts), scripts
    finally:
        drv.switch_to.default_content()
    _shot(drv, "structures")
    severe += _severe(drv)

    # 5. the other pages, with screenshots; a real download from Export
    _go(drv, "calibrate", "Calibrate")
    _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"]'), what="results table")
    _shot(drv, "calibrate")
    _go(drv, "model", "Model")
    _shot(drv, "model")
    _go(drv, "export", "Export")
    from core.export_chemiscope import chemiscope_available

    n_buttons = 7 + bool(chemiscope_available())  # as tests/test_app.py::test_export_page_and_files
    buttons = _wait(drv, lambda d: (lambda b: b if len(b) == n_buttons else None)(
        d.find_elements(By.CSS_SELECTOR, f'{MAIN} [data-testid="stDownloadButton"] button')),
        what=f"{n_buttons} download buttons")
    assert buttons[0].text.strip().startswith("sites.csv"), buttons[0].text
    _shot(drv, "export")
    buttons[0].click()  # sites.csv (built on click)
    csv = _wait(drv, lambda d: [p for p in d.downloads.glob("*.csv") if p.stat().st_size > 0],
                what="CSV download")[0]
    head = csv.read_text().splitlines()[0]
    assert "structure_id" in head and "width_" in head
    severe += _severe(drv)

    # 6. console: nothing SEVERE except known benign messages
    bad = [m for m in severe if not any(b.lower() in m.lower() for b in BENIGN_CONSOLE)]
    (_artifacts() / "browser-console.txt").write_text("\n".join(severe) + "\n")
    (_artifacts() / "browser-timings.txt").write_text(
        "\n".join(f"{k}: {v:.1f} s" for k, v in timings.items()) + f"\ndemo: {demo}\n")
    assert not bad, f"SEVERE browser console messages: {bad}"


# ------------------------------------------------------------------ helpers for the later walks
def _xpath_text(text: str) -> str:
    return "concat('" + text.replace("'", "', \"'\", '") + "', '')"


def _button(drv, text: str, where: str = "//", timeout=STEP_TIMEOUT):
    """A button whose text contains ``text`` (waited for)."""
    from selenium.webdriver.common.by import By

    xp = f"{where}button[contains(normalize-space(.), {_xpath_text(text)})]"
    return _wait(drv, lambda d: [b for b in d.find_elements(By.XPATH, xp) if b.is_displayed()],
                 timeout=timeout, what=f"button {text!r}")[0]


def _click_label(drv, testid: str, text: str) -> None:
    """Click the option/checkbox label ``text`` of a ``stRadio`` / ``stCheckbox`` widget."""
    from selenium.webdriver.common.by import By

    label = _wait(drv, lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"] label')
                                  if text in e.text], what=f"{testid} {text!r}")[0]
    label.click()
    _wait(drv, _idle, what=f"idle after {text!r}")


def _upload(drv, scope: str, path: Path) -> None:
    """Give ``path`` to the (hidden) file input of the first file uploader inside ``scope``."""
    from selenium.webdriver.common.by import By

    box = _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, f'{scope} [data-testid="stFileUploader"] '
                                                                'input[type="file"]'), what=f"file input in {scope}")
    box[0].send_keys(str(path))


def _texts(drv, css: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in drv.find_elements(By.CSS_SELECTOR, css)]


def _has_text(css: str, text: str):
    return lambda d: [t for t in _texts(d, css) if text in t]


def _grid_cells(drv) -> list[str]:
    """The visible cells of the page's first st.dataframe (glide-data-grid's accessible table)."""
    return drv.execute_script(
        "const g = document.querySelector('[data-testid=\"stMain\"] [data-testid=\"stDataFrame\"]');"
        "return g ? Array.from(g.querySelectorAll('td, th')).map(c => c.textContent.trim()) : [];")


def _set_number(drv, label: str, value: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, f'{MAIN} [data-testid="stNumberInput"] '
                                                                f'input[aria-label="{label}"]'),
                what=f"number input {label}")[0]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.ENTER)
    _wait(drv, lambda d: box.get_attribute("value") == str(value), what=f"{label} = {value}")
    _wait(drv, _idle, what=f"idle after {label}")


def _one_click_demo(drv, server: str, demo: str) -> None:
    from selenium.webdriver.common.by import By

    drv.get(f"{server}/?demo={demo}")
    _wait(drv, lambda d: "Data" in _title(d), what="Data page")
    _wait(drv, _idle, what="Data page idle")
    _button(drv, "Run the whole demo").click()
    _wait(drv, lambda d: "Diagnose" in _title(d), timeout=FLOW_TIMEOUT, what="Diagnose page after the demo")
    _wait(drv, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")) >= 2, what="first tab's plots")
    _wait(drv, _idle, what="Diagnose idle")


# ------------------------------------------------------------------------- session walk
def test_session_saved_reloaded_and_restored_in_a_real_browser(server, driver):
    """Demo -> calibrate -> save session -> reload the page -> restore -> identical metrics."""
    drv = driver
    _one_click_demo(drv, server, _pick_demo())
    metrics = _wait(drv, lambda d: (lambda v: v if len(v) >= 5 and all(v) else None)(
        _texts(d, f'{MAIN} [data-testid="stMetricValue"]')), what="Diagnose metric cards")
    _go(drv, "calibrate", "Calibrate")
    _wait(drv, lambda d: _grid_cells(d) or d.find_elements("css selector", f'{MAIN} [data-testid="stDataFrame"]'),
          what="results table")
    cells = _wait(drv, _grid_cells, what="the results table's cells")
    assert any(c.startswith("0.") for c in cells), cells  # coverage etc. as numbers
    caption = _texts(drv, f'{MAIN} [data-testid="stCaptionContainer"]')

    # save from the sidebar: a real download of one zip
    for old in drv.downloads.glob("*.zip"):
        old.unlink()
    _button(drv, "Save session", where=f"//*[@data-testid='stSidebar']//").click()
    saved = _wait(drv, lambda d: [p for p in d.downloads.glob("flexcal-session*.zip") if p.stat().st_size > 0],
                  what="session download")[0]
    import zipfile

    with zipfile.ZipFile(saved) as zf:
        assert "session.json" in zf.namelist() and "evaluation.npz" in zf.namelist()

    # reload: a new Streamlit session, no results; the autosaved last session is offered
    drv.refresh()
    _wait(drv, _idle, what="reloaded page idle")
    offer = _button(drv, "Restore the last session (dataset", where=f"//*[@data-testid='stSidebar']//")
    assert "methods" in offer.text or "method," in offer.text, offer.text
    _shot(drv, "session-offer")

    # load the downloaded file through the sidebar uploader
    from selenium.webdriver.common.by import By

    _wait(drv, _idle, what="idle before opening the loader")
    _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, f'{SIDEBAR} [data-testid="stExpander"] summary'),
          what="the session loader")[0].click()
    _upload(drv, SIDEBAR, saved)
    _wait(drv, _has_text(f'{SIDEBAR} [data-testid="stAlert"]', "Restored the session"), what="restore note")
    _wait(drv, _idle, what="idle after the restore")
    _go(drv, "calibrate", "Calibrate")
    # the same cells, once the grid has drawn them (every number as before the reload)
    _wait(drv, lambda d: _grid_cells(d) == cells, what=f"the restored results table (had {_grid_cells(drv)})")
    assert _texts(drv, f'{MAIN} [data-testid="stCaptionContainer"]') == caption  # sizes, seconds, note
    assert not _has_text(f'{MAIN} [data-testid="stAlert"]', "out of date")(drv)
    _shot(drv, "session-restored-calibrate")
    _go(drv, "diagnose", "Diagnose")
    after = _wait(drv, lambda d: (lambda v: v if len(v) >= 5 and all(v) else None)(
        _texts(d, f'{MAIN} [data-testid="stMetricValue"]')), what="restored metric cards")
    assert after == metrics, (metrics, after)


# ------------------------------------------------------------ a real upload with its own model
def test_uploaded_dataset_and_model_in_a_real_browser(server, driver, tiny_mace_model, tmp_path):
    """Upload -> trust gate -> featurize -> calibrate -> warnings -> split seed -> out of date -> export."""
    from ase.io import write
    from selenium.webdriver.common.by import By

    from tests.conftest import make_tiny_structures

    data = tmp_path / "tiny.extxyz"
    write(str(data), make_tiny_structures(0), format="extxyz")
    model = tmp_path / "tiny.model"
    model.write_bytes(tiny_mace_model.read_bytes())
    drv = driver
    drv.get(server)  # a new session
    _wait(drv, lambda d: "Data" in _title(d), what="Data page")
    _wait(drv, _idle, what="Data page idle")
    _click_label(drv, "stRadio", "Upload a file")
    _upload(drv, MAIN, data)
    _wait(drv, lambda d: "tiny.extxyz" in " ".join(_texts(d, f"{MAIN} h3")), what="the upload's summary")
    _go(drv, "model", "Model")
    _click_label(drv, "stRadio", "Upload a model file")
    _upload(drv, MAIN, model)
    _wait(drv, _has_text(f'{MAIN} [data-testid="stAlert"]', "Tick the box above"), what="the trust gate")
    assert not _button(drv, "Featurize").is_enabled(), "an untrusted model file is not opened"
    _click_label(drv, "stCheckbox", "I trust this file")
    _wait(drv, lambda d: _button(d, "Featurize").is_enabled(), what="Featurize enabled")
    _button(drv, "Featurize").click()
    _wait(drv, _has_text(f'{MAIN} [data-testid="stAlert"]', "Features ready"), timeout=FLOW_TIMEOUT,
          what="features of the uploaded model")
    _go(drv, "calibrate", "Calibrate")
    _button(drv, "Train", where=f"//*[@data-testid='stMain']//").click()
    _wait(drv, lambda d: "Results on" in " ".join(_texts(d, f"{MAIN} h3")), timeout=FLOW_TIMEOUT,
          what="calibration results")
    _wait(drv, _idle, what="Calibrate idle")

    # Diagnose: the honest warnings are visible (these test structures leave the calibration domain)
    _go(drv, "diagnose", "Diagnose")
    _wait(drv, _has_text(f'{MAIN} [data-testid="stAlert"]', "Out of domain"), what="out-of-domain warning")
    _wait(drv, lambda d: len(d.find_elements(By.CSS_SELECTOR, f"{MAIN} .js-plotly-plot")) >= 2, what="plots")
    assert not _has_text(f'{MAIN} [data-testid="stAlert"]', "out of date")(drv)
    _shot(drv, "upload-diagnose")

    # a new split seed: the results stay, marked out of date on the page and in the sidebar
    _go(drv, "data", "Data")
    for seed in (3, 4):  # an Enter that lands while the page re-renders can be lost: type another seed
        _set_number(drv, "Seed", seed)
        try:  # the Data page's own rerun already shows the badge in the sidebar (drawn after the page)
            _wait(drv, lambda d: [t for t in _texts(d, SIDEBAR) if "Results out of date" in t],
                  timeout=STEP_TIMEOUT // 2, what="sidebar badge")
            break
        except AssertionError:
            if seed == 4:
                raise
    _go(drv, "diagnose", "Diagnose")
    stale = _wait(drv, _has_text(f'{MAIN} [data-testid="stAlert"]', "Results out of date"), what="out-of-date badge")
    assert f"split seed: 0 → {seed}" in stale[0], stale
    assert [t for t in _texts(drv, SIDEBAR) if "Results out of date" in t], "the sidebar badge on Diagnose"
    _shot(drv, "upload-out-of-date")

    # Export: still marked, and a real download of the per-site table
    _go(drv, "export", "Export")
    _wait(drv, _has_text(f'{MAIN} [data-testid="stAlert"]', "Results out of date"), what="badge on Export")
    for old in drv.downloads.glob("*.csv"):
        old.unlink()
    _button(drv, "sites.csv", where=f"//*[@data-testid='stMain']//").click()
    csv = _wait(drv, lambda d: [p for p in d.downloads.glob("*.csv") if p.stat().st_size > 0], what="CSV")[0]
    lines = csv.read_text().splitlines()
    assert "structure_id" in lines[0] and "width_" in lines[0]
    assert len(lines) - 1 == sum(len(a) for a in make_tiny_structures(0))  # one row per site of the upload
    bad = [m for m in _severe(drv) if not any(b.lower() in m.lower() for b in BENIGN_CONSOLE)]
    assert not bad, f"SEVERE browser console messages: {bad}"
