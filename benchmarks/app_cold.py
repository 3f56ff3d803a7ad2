"""Cold start to the first diagnosis and interaction latency, under ``AppTest`` (no browser).

Used by ``python -m benchmarks.bench_app --cold-apptest RUNS``. Each run is a fresh Python
process (``python -m benchmarks.app_cold DEMO``) with an empty feature/session cache
(``FLEXCAL_CACHE_DIR`` in a new temporary folder), so imports, Streamlit's caches, the demo
model and the features all start cold. In that process a fresh ``AppTest``:

1. opens the app (Data page, the default demo) — *process start -> first page*;
2. selects the demo and clicks "Run the whole demo" (featurize as a background job followed in
   the run, calibrate, land on Diagnose) — *click -> first diagnosis*;
3. switches each Diagnose tab, moves the teaching-view confidence slider three steps, visits
   every page and moves the Data page's test-fraction slider (script time of each rerun).

It prints one JSON object (seconds). AppTest measures the server-side script time: a browser
adds its rendering on top (``bench_app`` (a)/(b) measure that with headless Chromium).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "app" / "main.py")
TIMEOUT = 900


def _timed_run(at) -> float:
    t = time.perf_counter()
    at.run()
    if at.exception:
        raise RuntimeError(f"the app raised: {[e.value for e in at.exception]}")
    return time.perf_counter() - t


def cold_once(demo: str, t_spawn: float) -> dict:
    """One cold run in this (fresh) process; ``t_spawn``: the parent's ``time.time()`` at spawn."""
    from streamlit.testing.v1 import AppTest

    from app import catalog, state
    from app.pages_index import PAGES, page

    res: dict = {}
    import app.job as app_job

    featurize_run = app_job.FeaturizeJob._run

    def timed_featurize(job):  # the featurize job's own time (the rest of the click is calibrate + pages)
        t = time.perf_counter()
        featurize_run(job)
        res["featurize job"] = time.perf_counter() - t

    app_job.FeaturizeJob._run = timed_featurize
    from app import services

    load_model = services.load_model

    def timed_load(*args, **kwargs):  # imports of torch/mace/e3nn + reading the demo model (cold)
        t = time.perf_counter()
        try:
            return load_model(*args, **kwargs)
        finally:
            res["model load (imports + file)"] = res.get("model load (imports + file)", 0.0) + time.perf_counter() - t

    services.load_model = timed_load
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    at.run()
    label = next(lab for lab, (kind, name) in catalog.demo_choices().items() if demo in (kind, name))
    if at.session_state[state.DATASET_LABEL] != label:
        at.selectbox(key=state.W_DEMO_NAME).set_value(label).run()
    res["process_to_first_page"] = time.time() - t_spawn
    t = time.perf_counter()
    at.button(key="btn_quickstart").click().run()
    res["click_to_diagnosis"] = time.perf_counter() - t
    if at.title[0].value != "Diagnose" or at.exception:
        raise RuntimeError(f"the demo did not reach Diagnose: {[x.value for x in at.title]}, {at.exception}")
    res["cold_total"] = time.time() - t_spawn
    res["calibrate job"] = at.session_state[state.RESULTS].seconds
    res["pages, figures, rest of the click"] = res["click_to_diagnosis"] - sum(
        res.get(k, 0.0) for k in ("featurize job", "calibrate job", "model load (imports + file)"))
    res["n_sites"] = len(at.session_state[state.SITES])

    tabs = [t for t in state.DIAG_TABS if t != at.session_state[state.W_DIAG_TAB]]
    for name in tabs + [next(iter(state.DIAG_TABS))]:  # every tab, ending where it started
        at.session_state[state.W_DIAG_TAB] = name
        res[f"tab {name}"] = _timed_run(at)
    at.session_state[state.W_DIAG_TAB] = state.TEACHING_TAB
    at.run()
    moves = []
    for _ in range(3):
        current = at.session_state[state.W_TEACH_LEVEL]
        target = 0.8 if abs(current - 0.8) > 1e-9 else 0.95
        at.select_slider(key=state.W_TEACH_LEVEL).set_value(target)
        moves.append(_timed_run(at))
    res["teaching slider (3 moves)"] = moves
    for p in PAGES:
        at.switch_page(page(p.name))
        res[f"page {p.title}"] = _timed_run(at)
    at.switch_page(page("data")).run()
    at.slider(key=state.W_TEST_FRACTION).set_value(0.4)
    res["Data: test-fraction slider"] = _timed_run(at)
    return res


def cold_runs(demo: str, runs: int) -> tuple[dict, list[dict]]:
    """``runs`` cold runs, each in a fresh process with an empty cache; (mean per key, every run)."""
    out = []
    for _ in range(runs):
        cache = tempfile.mkdtemp(prefix="flexcal-bench-cold-")
        env = dict(os.environ, FLEXCAL_CACHE_DIR=cache, FLEXCAL_AUTOSAVE="0")
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.app_cold", demo, repr(time.time())],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        if proc.returncode != 0:
            raise RuntimeError(f"cold run failed ({proc.returncode}): {proc.stderr[-2000:]}")
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    mean = {}
    for key in out[0]:
        values = [r[key] for r in out]
        flat = [statistics.mean(v) if isinstance(v, list) else v for v in values]
        mean[key] = statistics.mean(flat)
    mean["max tab switch"] = max(v for r in out for k, v in r.items() if k.startswith("tab "))
    mean["max slider move"] = max(max(r["teaching slider (3 moves)"]) for r in out)
    return mean, out


if __name__ == "__main__":
    spawn = float(sys.argv[2]) if len(sys.argv) > 2 else time.time()
    sys.path.insert(0, str(ROOT))
    print(json.dumps(cold_once(sys.argv[1], spawn)))
