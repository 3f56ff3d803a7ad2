"""The Streamlit app under ``streamlit.testing.v1.AppTest``: every page, the demo flow, uploads, trust gate,
honest numbers (expected coverage spread, out-of-domain banner, one miscalibration area) and the
"results out of date" badge.

The flow runs on the generated synthetic demo (48 Cu–Au structures, ~1500 sites, a
mock potential), so it needs no model file and takes seconds. One module-scoped
app goes Data -> Model (featurize) -> Calibrate (train) and is then inspected by
the Diagnose / Structures / Export tests. A second one calibrates on the ``cold``
config type and tests on ``hot``/``vacancy`` (off the calibration domain).
"""

from __future__ import annotations

import ast
import io
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from app import catalog, figures_catalogue, notices, services, state, widgets  # noqa: E402
from app.pages_index import PAGES, page  # noqa: E402
from core.tables import column_label, keyed_table  # noqa: E402  (shown tables carry readable labels)

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "app" / "main.py")
TIMEOUT = 120
TRAIN_BUTTON = "FormSubmitter:settings-Train"


def _new_app() -> AppTest:
    return AppTest.from_file(MAIN, default_timeout=TIMEOUT)


def _errors(at) -> list[str]:
    return [e.value for e in at.error]


def _no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _synthetic(at) -> AppTest:
    """Open the app on the synthetic demo dataset."""
    at.run()
    _no_exception(at)
    if at.session_state[state.DATASET_LABEL] != catalog.SYNTHETIC_LABEL:
        at.selectbox(key=state.W_DEMO_NAME).set_value(catalog.SYNTHETIC_LABEL).run()
    _no_exception(at)
    assert at.session_state[state.DATASET_LABEL] == catalog.SYNTHETIC_LABEL
    return at


def _featurize(at) -> AppTest:
    at.switch_page(page("model")).run()
    _no_exception(at)
    at.button(key="btn_featurize").click().run()
    _no_exception(at)
    assert not _errors(at), _errors(at)
    sites = at.session_state[state.SITES]
    assert sites is not None
    # the sidebar is drawn after the page: it already shows the features of this run
    assert any(f"{len(sites)} sites" in m.value for m in at.sidebar.markdown), [m.value for m in at.sidebar.markdown]
    return at


def _train(at, methods=("flexible", "split", "knn"), max_epochs=40, bootstrap=50) -> AppTest:
    at.switch_page(page("calibrate")).run()
    _no_exception(at)
    at.multiselect(key=state.W_METHODS).set_value(list(methods))
    at.number_input(key=state.W_MAX_EPOCHS).set_value(max_epochs)
    at.number_input(key=state.W_BOOTSTRAP).set_value(bootstrap)
    at.button(key=TRAIN_BUTTON).click().run()
    _no_exception(at)
    job = at.session_state[state.JOB]
    assert job is not None, _errors(at)
    assert job.join(timeout=TIMEOUT), "training did not finish in time"
    assert job.status == "done", job.error
    at.run()  # the next run collects the finished job
    _no_exception(at)
    return at


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    old = services.CACHE_DIR
    services.CACHE_DIR = tmp_path_factory.mktemp("features")
    yield services.CACHE_DIR
    services.CACHE_DIR = old


@pytest.fixture(scope="module")
def trained(cache_dir):
    """An AppTest that went through Data -> Model -> Calibrate on the synthetic demo."""
    at = _train(_featurize(_synthetic(_new_app())))
    assert at.session_state[state.RESULTS] is not None
    return at


# ------------------------------------------------------------------ every page opens
@pytest.mark.parametrize("name", [p.name for p in PAGES])
def test_every_page_opens_with_fresh_state(name):
    at = _new_app().run()
    _no_exception(at)
    at.switch_page(page(name)).run()
    _no_exception(at)
    assert at.title and at.title[0].value.endswith(next(p.title for p in PAGES if p.name == name))


def test_app_opens_on_a_demo_with_no_configuration():
    at = _new_app().run()
    _no_exception(at)
    assert at.session_state[state.DATASET] is not None, "the first page should load a demo by itself"
    summary = keyed_table(at.dataframe[0].value)
    assert int(summary.loc["frames", "value"]) > 0


# ------------------------------------------------------------------------- demo flow
def test_calibrate_results_table_values(trained):
    run = trained.session_state[state.RESULTS]
    assert run.labels == ["flexible", "split", "knn"]
    table = keyed_table(trained.dataframe[0].value)  # the results table on the Calibrate page
    assert list(table.index) == ["flexible", "split", "knn"]
    # split CP is the width_ratio reference: exactly 1
    assert table.loc["split", "width_ratio"] == pytest.approx(1.0, abs=1e-12)
    # conformal methods cover ~confidence on held-out structures (by-structure correlation: loose tolerance)
    for m in ("flexible", "split", "knn"):
        assert abs(table.loc[m, "coverage"] - 0.9) < 0.06, (m, table.loc[m, "coverage"])
        lo, hi = table.loc[m, "coverage_ci_lo"], table.loc[m, "coverage_ci_hi"]
        assert lo <= table.loc[m, "coverage"] <= hi
    # a constant width has no rank correlation (undefined, not 0)
    assert math.isnan(table.loc["split", "spearman"])
    # the synthetic errors follow the environment: q_θ ranks them
    assert table.loc["flexible", "spearman"] > 0.3
    assert table.loc["flexible", "miscalibration_area"] < 0.1
    # the table matches the reports the other pages use
    rep = run.reports["flexible"]
    assert table.loc["flexible", "coverage"] == pytest.approx(rep["coverage"])
    assert table.loc["flexible", "mean_width"] == pytest.approx(float(np.mean(run.widths["flexible"])))


def _open_tab(at, name: str) -> AppTest:
    at.session_state[state.W_DIAG_TAB] = name
    at.run()
    _no_exception(at)
    return at


def test_diagnose_page_draws_every_figure(trained):
    at = trained
    at.switch_page(page("diagnose")).run()
    _no_exception(at)
    assert [t.label for t in at.tabs] == list(state.DIAG_TABS)
    counts = {}
    for tab in state.DIAG_TABS:
        counts[tab] = len(_open_tab(at, tab).get("plotly_chart"))  # only the open tab is drawn
    assert counts == {"Calibration": 2, "Parity": 2, "Uncertainty vs error": 2, "Species & structures": 2,
                      state.TEACHING_TAB: 1}, counts
    run = at.session_state[state.RESULTS]
    figs = services.method_figures(run, "flexible")
    assert set(figs) == {"force_parity", "energy_parity", "coverage_curve", "calibration_curve",
                         "uncertainty_error", "species_coverage", "width_histogram", "structure_uncertainty"}
    assert set(figs) == {n for names in state.DIAG_TABS.values() for n in names}
    # coverage curve: one line per method (+ the diagonal)
    names = [t.name for t in figs["coverage_curve"].data]
    assert sum(n.startswith(("flexible", "split", "knn")) for n in names) == 3
    # clickable plots carry (structure, atom) ids
    assert figs["force_parity"].data[0].customdata is not None
    assert "eV/Å" in figs["uncertainty_error"].layout.xaxis.title.text
    assert figs["uncertainty_error"].layout.xaxis.type == "log"
    _open_tab(at, "Calibration")


def test_one_miscalibration_area_in_legend_card_and_table(trained):
    """The area in the plot legends is the report's (0.05..0.95 grid), the metric card's and the table's."""
    at = trained
    at.switch_page(page("diagnose")).run()
    _open_tab(at, "Calibration")
    run = at.session_state[state.RESULTS]
    figs = services.method_figures(run, "flexible")
    for lab in run.labels:
        area = run.reports[lab]["miscalibration_area"]
        assert area is not None and 0 <= area < 0.5
        legend = [t.name for t in figs["coverage_curve"].data if t.name.startswith(lab + " (")]
        assert legend == [f"{lab} (area {area:.3f})"], legend
        levels, _observed = figures_catalogue.grid_curve(run, lab)
        assert len(levels) == 19 and levels[0] == pytest.approx(0.05) and levels[-1] == pytest.approx(0.95)
    note = [a.text for a in figs["calibration_curve"].layout.annotations]
    assert note == [f"miscalibration area = {run.reports['flexible']['miscalibration_area']:.3f}"]
    card = next(m for m in at.metric if m.label == "miscalibration area")
    assert card.value == f"{run.reports['flexible']['miscalibration_area']:.3f}"


def test_teaching_slider_moves_both_bands_without_refit(trained):
    at = trained
    at.switch_page(page("diagnose")).run()
    _open_tab(at, state.TEACHING_TAB)
    run = at.session_state[state.RESULTS]
    flex = run.calibrators["flexible"]
    calls = {"fit": 0}
    original_fit = type(flex).fit

    def counting_fit(self, *a, **k):
        calls["fit"] += 1
        return original_fit(self, *a, **k)

    type(flex).fit = counting_fit
    try:
        cp_width, band_width = {}, {}
        for level in (0.5, 0.8, 0.95):
            at.select_slider(key=state.W_TEACH_LEVEL).set_value(level).run()
            _no_exception(at)
            assert at.session_state[state.W_TEACH_LEVEL] == level
            fig = figures_catalogue.teaching_figure(run, level)
            band, cp = fig.data[0], fig.data[1]
            k = run.level_index(level)
            assert np.allclose(np.sort(band.y), np.sort(run.widths_levels["flexible"][:, k]))
            assert np.allclose(cp.y, run.reference_levels[:, k])
            cp_width[level], band_width[level] = float(np.mean(cp.y)), float(np.mean(band.y))
        # every coverage shown comes with its expected range at that level
        from core.metrics import expected_coverage_interval

        lo, hi = expected_coverage_interval(run.cal.n_structures, 0.95, n_test=run.test.n_structures)
        assert any(c.value.startswith("At 95%: coverage flexible ") and f"expected {lo:.3f}–{hi:.3f}" in c.value
                   for c in at.caption), [c.value for c in at.caption]
        text, warnings = notices.level_coverage_text(run, run.level_index(0.95), {"toy": 0.5, "fine": 0.95})
        assert "toy 0.500" in text and len(warnings) == 1 and "**toy**: coverage 0.500 at 95% lies below" in warnings[0]
        # both bands move with the one slider
        assert cp_width[0.5] < cp_width[0.8] < cp_width[0.95]
        assert band_width[0.5] < band_width[0.8] < band_width[0.95]
        assert calls["fit"] == 0
    finally:
        type(flex).fit = original_fit


def test_structures_page_views_the_selected_atom(trained):
    at = trained
    run = at.session_state[state.RESULTS]
    sid = int(run.test.structure_ids[5])
    atom = int(run.test.atom_index[5])
    # what a click in a parity/scatter plot hands to the callback
    event = {"selection": {"points": [{"customdata": [sid, atom, 0], "point_index": 15}]}}
    assert figures_catalogue.selected_site(event) == (sid, atom)
    at.session_state[state.SELECTED] = {"structure_id": sid, "atom_index": atom}
    at.session_state[state.W_STRUCTURE] = sid
    at.switch_page(page("structures")).run()
    _no_exception(at)
    iframes = at.get("iframe")
    assert len(iframes) == 1
    html = iframes[0].proto.srcdoc
    assert "flexcal-structure-view" in html and "$3Dmol" in html
    assert f"highlighted: atom {atom}" in html
    assert "width at 90% (eV/&#197;)" in html  # colour bar with units (Å escaped)
    assert "flexcal-vmin" in html and "flexcal-vmax" in html
    assert "cdn" not in html.split("<script>")[0].lower()
    # atom table + worst-structures table
    assert len(at.dataframe) == 2
    worst = keyed_table(at.dataframe[1].value)
    assert worst["max_error"].is_monotonic_decreasing
    # the other tab: the selectable scatter of test sites
    at.session_state[state.W_STRUCT_TAB] = "Pick a site from the scatter"
    at.run()
    _no_exception(at)
    assert len(at.get("plotly_chart")) == 1 and len(at.dataframe) == 1
    # colour by error instead
    at.radio(key=state.W_COLOR_BY).set_value("error").run()
    _no_exception(at)
    assert "force error" in at.get("iframe")[0].proto.srcdoc


def test_export_page_and_files(trained, tmp_path):
    at = trained
    at.switch_page(page("export")).run()
    _no_exception(at)
    run = at.session_state[state.RESULTS]
    sites = at.session_state[state.SITES]
    dataset = at.session_state[state.DATASET]
    from core.export_chemiscope import chemiscope_available

    # csv, parquet, columns.json, readable csv, extxyz, npz, report (+ chemiscope); the sidebar has "Save session" too
    assert len(at.main.get("download_button")) == 7 + bool(chemiscope_available())

    import pandas as pd

    from core import export

    frame = export.evaluation_frame(run.evaluation, sites)
    csv = pd.read_csv(io.BytesIO(export.table_bytes(frame, "csv")))
    assert len(csv) == len(sites)
    assert {"width_flexible", "width_split", "covered_flexible", "split", "error"} <= set(csv.columns)
    test_rows = csv["split"] == "test"
    assert np.allclose(np.sort(csv.loc[test_rows, "width_flexible"]), np.sort(run.widths["flexible"]))
    assert (csv["split"] == "calibration").sum() == len(run.cal)
    pq = pd.read_parquet(io.BytesIO(export.table_bytes(frame, "parquet")))
    assert pq.shape == csv.shape

    from ase.io import read

    path = tmp_path / "out.extxyz"
    path.write_bytes(export.annotated_extxyz(dataset.structures, sites, run.calibrators["flexible"].predict(sites),
                                             method="flexible", confidence=run.confidence))
    frames = read(path, index=":")
    assert len(frames) == len(dataset)
    assert "flexcal_width" in frames[0].arrays and "flexcal_error" in frames[0].arrays
    s0 = sites.select_structures([0])
    assert np.allclose(frames[0].arrays["flexcal_error"][s0.atom_index], s0.errors)

    from core.calibration import load_calibrator

    cpath = tmp_path / "cal.npz"
    cpath.write_bytes(export.calibrator_bytes(run.calibrators["flexible"]))
    loaded = load_calibrator(cpath)
    assert np.allclose(loaded.predict(run.test), run.widths["flexible"])

    html = figures_catalogue.run_report_html(run, "flexible", services.method_figures(run, "flexible"))
    assert html.startswith("<!DOCTYPE html>") and "plotly" in html.lower()
    assert "Metrics on the test part" in html
    assert '<script src="http' not in html  # plotly.js inlined: works offline
    # the report records what produced it
    assert "What produced this report" in html and "split seed" in html and "FlexCal version" in html
    assert catalog.SYNTHETIC_LABEL.split(" (")[0] in html and "flexible, split, knn" in html
    # the Compare page and the toolkit diagnostics are in it too, with the ranking table
    for title in ("Side by side: error vs width, one panel per method", "Coverage per element, every method",
                  "Binned error vs predicted width (RMSE vs RMV) — flexible", "Adversarial group coverage — flexible",
                  "Sharpness: width distribution per method", "Ranking of the methods", "★ best at"):
        assert title in html, title
    assert "bootstrap over structures" in html  # RMSE-vs-RMV bars resample whole structures


def test_stop_button_stops_training_and_keeps_a_model(cache_dir):
    at = _featurize(_synthetic(_new_app()))
    at.switch_page(page("calibrate")).run()
    at.multiselect(key=state.W_METHODS).set_value(["flexible"])
    at.number_input(key=state.W_MAX_EPOCHS).set_value(2000)
    at.number_input(key=state.W_BOOTSTRAP).set_value(0)
    at.button(key=TRAIN_BUTTON).click().run()
    job = at.session_state[state.JOB]
    assert job is not None and not job.done
    assert at.button(key="btn_stop_training") is not None
    at.button(key="btn_stop_training").click().run()
    _no_exception(at)
    assert job.stop_requested
    assert job.join(timeout=TIMEOUT) and job.status == "done", job.error
    at.run()
    run = at.session_state[state.RESULTS]
    assert run.stopped_early
    assert len(run.history) < 2000
    assert any("stopped early" in w.value for w in at.warning)


def test_split_by_config_type(cache_dir):
    at = _featurize(_synthetic(_new_app()))
    at.switch_page(page("data")).run()
    at.radio(key=state.W_SPLIT_MODE).set_value(state.SPLIT_CONFIG).run()
    _no_exception(at)
    at.multiselect(key=state.W_CAL_TYPES).set_value(["cold"])
    at.multiselect(key=state.W_TEST_TYPES).set_value(["hot", "vacancy"]).run()
    at = _train(at, methods=("split",), bootstrap=0)
    run = at.session_state[state.RESULTS]
    assert set(run.cal.structure_column("config_type")) == {"cold"}
    assert set(run.test.structure_column("config_type")) == {"hot", "vacancy"}


# ----------------------------------------------------------------------------- uploads
def _upload(at, name: str, data: bytes) -> AppTest:
    at.radio(key=state.W_DATA_SOURCE).set_value("Upload a file").run()
    at.file_uploader(key=state.W_DATA_UPLOAD).set_value((name, data, "application/octet-stream")).run()
    _no_exception(at)
    return at


BAD_FILES = {
    "empty.extxyz": (b"", "file is empty"),
    "junk.xyz": (b"this is not a structure file\nhello\n", "expected the number of atoms of a frame"),
    "noforces.extxyz": (b'2\nProperties=species:S:1:pos:R:3 energy=1.0 pbc="F F F"\nH 0 0 0\nH 0 0 0.74\n',
                        "no reference forces"),
    "nan.extxyz": (None, "NaN"),
    "truncated.extxyz": (None, "the file is truncated"),
}


def test_upload_valid_then_malformed_files_keep_the_previous_dataset():
    from core.synthetic_demo import synthetic_extxyz_bytes

    good = synthetic_extxyz_bytes(6)
    at = _upload(_new_app().run(), "small.extxyz", good)
    assert not _errors(at)
    assert at.session_state[state.DATASET_LABEL] == "small.extxyz"
    assert len(at.session_state[state.DATASET]) == 6
    summary = keyed_table(at.dataframe[0].value)
    assert summary.loc["frames", "value"] == "6" and "Au" in summary.loc["elements", "value"]

    for name, (data, expected) in BAD_FILES.items():
        if name == "nan.extxyz":
            data = good.replace(b"-0.57668574", b"nan", 1)
        elif name == "truncated.extxyz":
            data = good[: len(good) // 2 + 40]  # cut inside a frame
        at = _upload(at, name, data)
        errs = _errors(at)
        assert errs and name in errs[0] and expected in errs[0], (name, errs)
        assert at.session_state[state.DATASET_LABEL] == "small.extxyz", "the previous dataset must be kept"
        assert any("Still using the previous dataset" in c.value for c in at.caption)


def test_upload_over_the_size_limit_is_refused_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(services, "max_upload_mb", lambda: 0.001)
    at = _upload(_new_app().run(), "big.extxyz", b"x" * 5000)
    errs = _errors(at)
    assert errs and "upload limit is 0 MB" in errs[0] and "maxUploadSize" in errs[0]


def test_config_toml_skips_streamlits_full_collection_after_every_rerun():
    import tomllib

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["runner"]["postScriptGC"] is False


def test_config_toml_sets_the_upload_limit():
    import tomllib

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["maxUploadSize"] == 200


def test_unreadable_format_is_a_plain_error():
    from core.data import DatasetError

    with pytest.raises(DatasetError, match="cannot tell the file format"):
        services.read_upload(b"PK\x03\x04garbage", "data.docx")


# ---------------------------------------------------------------------------- trust gate
def test_uploaded_model_is_never_loaded_without_trust(monkeypatch, cache_dir):
    import torch

    from core.potentials.mace_foundation import mace_modules

    mace_modules()  # import mace and e3nn (whose import calls torch.load) before torch.load is faked
    calls = []

    def fake_load(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("fake torch.load: refusing")

    monkeypatch.setattr(torch, "load", fake_load)
    # the service refuses before touching the bytes
    with pytest.raises(catalog.UntrustedModelFile, match="pickle"):
        services.load_uploaded_model(b"\x80\x04evil", "evil.model", trusted=False)
    assert calls == []

    at = _synthetic(_new_app())
    at.switch_page(page("model")).run()
    at.radio(key=state.W_MODEL_KIND).set_value(state.MODEL_KINDS[3]).run()
    _no_exception(at)
    assert any("pickle" in w.value for w in at.warning)
    at.file_uploader(key=state.W_MODEL_UPLOAD).set_value(("evil.model", b"\x80\x04evil", "application/octet-stream"))
    at.run()
    assert at.button(key="btn_featurize").disabled
    assert any("Tick the box" in i.value for i in at.info)
    assert calls == [], "torch.load must not run before the user trusts the file"

    at.checkbox(key=state.W_TRUST).check().run()
    assert not at.button(key="btn_featurize").disabled
    at.button(key="btn_featurize").click().run()
    _no_exception(at)
    assert len(calls) >= 1, "after confirmation the file is loaded"
    assert _errors(at) and "refusing" in _errors(at)[0]
    assert at.session_state[state.SITES] is None


def test_foundation_model_offline_error_is_explained(monkeypatch):
    from core.potentials import mace as mace_mod

    def unavailable(*a, **k):
        raise mace_mod.FoundationModelUnavailable("mace-mp-0b3-medium is not in the cache; download X to Y")

    monkeypatch.setattr("core.potentials.load_potential", unavailable)
    services.load_model.clear()
    at = _new_app().run()
    at.switch_page(page("model")).run()
    at.radio(key=state.W_MODEL_KIND).set_value(state.MODEL_KINDS[1]).run()
    at.button(key="btn_featurize").click().run()
    _no_exception(at)
    assert any("download X to Y" in e for e in _errors(at))


# --------------------------------------------------------------- robustness by construction
def _app_modules():
    """Importable app modules (the files in app/views are page scripts, re-run per session run)."""
    return sorted((ROOT / "app").glob("*.py"))


def test_no_module_level_mutable_state_in_the_app():
    """Session data lives in st.session_state; module globals are constants only.

    The one exception is the launch warm-up's per-process registries (one demo model and one warm-up
    process per demo family, shared by every session on purpose, at most len(FAMILIES) entries)."""
    mutable = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)
    process_wide = {("prewarm.py", "_demo_potentials"), ("prewarm.py", "_demo_processes")}
    offenders = []
    for path in _app_modules():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, mutable):
                target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
                if (path.name, getattr(target, "id", "")) not in process_wide:
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, f"module-level mutable containers: {offenders}"
    # the read-only defaults really are read-only
    with pytest.raises(TypeError):
        state.WIDGET_DEFAULTS["x"] = 1


def test_every_cache_is_bounded():
    tree = ast.parse((ROOT / "app" / "services.py").read_text())
    found = 0
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef,)):
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") in ("cache_data", "cache_resource"):
                    found += 1
                    kws = {k.arg for k in dec.keywords}
                    assert "max_entries" in kws, f"{node.name}: unbounded cache"
    assert found >= 4
    cache = services.BoundedCache(2)
    for i in range(5):
        cache.put(i, i)
    assert len(cache) == 2 and cache.get(4) == 4 and cache.get(0) is None


def test_parse_hidden_sizes():
    assert catalog.parse_hidden("64, 64") == (64, 64)
    assert catalog.parse_hidden("32 16") == (32, 16)
    with pytest.raises(ValueError, match="whole numbers"):
        catalog.parse_hidden("64, abc")
    with pytest.raises(ValueError, match="1 to 4096"):
        catalog.parse_hidden("0")


# ------------------------------------------------------------------ a real MACE model file
def test_upload_and_local_model_path_with_a_real_mace_model(tiny_mace_model, tiny_structures, cache_dir):
    """Upload an extxyz, load a MACE .model from a local path, featurize, calibrate (split CP)."""
    from ase.io import write

    buf = io.StringIO()
    write(buf, tiny_structures, format="extxyz")
    at = _upload(_new_app().run(), "tiny.extxyz", buf.getvalue().encode())
    assert not _errors(at) and at.session_state[state.DATASET_LABEL] == "tiny.extxyz"
    at.switch_page(page("model")).run()
    at.radio(key=state.W_MODEL_KIND).set_value(state.MODEL_KINDS[2]).run()
    at.text_input(key=state.W_MODEL_PATH).input(str(tiny_mace_model)).run()
    at.button(key="btn_featurize").click().run()  # not trusted yet: a .model file runs code
    _no_exception(at)
    assert any("not loaded" in e and "Tick “I trust this file”" in e for e in _errors(at)), _errors(at)
    assert at.session_state[state.SITES] is None
    at.checkbox(key=state.W_TRUST_PATH).check().run()
    at.button(key="btn_featurize").click().run()
    _no_exception(at)
    assert not _errors(at), _errors(at)
    sites = at.session_state[state.SITES]
    assert len(sites) == sum(len(a) for a in tiny_structures)
    assert sites.n_descriptors == 16  # the tiny model's scalar node features
    at = _train(at, methods=("split",), bootstrap=0)
    run = at.session_state[state.RESULTS]
    assert run.reports["split"]["width_ratio"] == pytest.approx(1.0)
    # a path that does not exist is an error box, and the features are kept
    at.switch_page(page("model")).run()
    at.text_input(key=state.W_MODEL_PATH).input("/nonexistent/model.model").run()
    at.button(key="btn_featurize").click().run()
    _no_exception(at)
    assert any("no such model file" in e for e in _errors(at))
    assert at.session_state[state.SITES] is sites
    # the error belongs to that choice: another choice clears it
    at.radio(key=state.W_MODEL_KIND).set_value(state.MODEL_KINDS[1]).run()
    _no_exception(at)
    assert not _errors(at)


def test_one_click_demo_goes_from_data_to_diagnose(cache_dir):
    """'Run the whole demo': featurize, train (live curve in the same run), land on Diagnose."""
    at = _synthetic(_new_app())
    at.button(key="btn_quickstart").click().run()
    _no_exception(at)
    assert at.title[0].value == "Diagnose", [t.value for t in at.title]
    assert at.session_state[state.RESULTS] is not None
    assert at.session_state[state.QUICKSTART] is False
    assert len(at.get("plotly_chart")) == 2  # the Calibration tab: coverage and calibration curves


def test_a_figure_that_fails_is_a_message_not_a_crash(trained, monkeypatch):
    import core.figures

    def broken(*a, **k):
        raise ValueError("no species today")

    monkeypatch.setattr(core.figures, "plot_species_coverage", broken)
    run = trained.session_state[state.RESULTS]
    figs = figures_catalogue.build_method_figures(run, "knn")
    assert isinstance(figs["species_coverage"], str) and "no species today" in figs["species_coverage"]
    assert not isinstance(figs["coverage_curve"], str)
    services._method_figures_cached.clear()
    at = trained
    at.switch_page(page("diagnose")).run()
    _no_exception(at)
    _open_tab(at, "Species & structures")
    assert any("no species today" in w.value for w in at.warning)
    assert len(at.get("plotly_chart")) == 1  # the other plot of the tab still draws
    services._method_figures_cached.clear()
    _open_tab(at, "Calibration")


# ------------------------------------------------------------------ honest numbers
@pytest.fixture(scope="module")
def off_domain(cache_dir):
    """Calibrated on the ``cold`` structures, tested on ``hot`` and ``vacancy`` ones (off the domain)."""
    at = _featurize(_synthetic(_new_app()))
    at.switch_page(page("data")).run()
    at.radio(key=state.W_SPLIT_MODE).set_value(state.SPLIT_CONFIG).run()
    at.multiselect(key=state.W_CAL_TYPES).set_value(["cold"])
    at.multiselect(key=state.W_TEST_TYPES).set_value(["hot", "vacancy"]).run()
    return _train(at, methods=("flexible", "split"), bootstrap=0)


def test_out_of_domain_banner_counts_structures_and_marks_plots(off_domain):
    at = off_domain
    run = at.session_state[state.RESULTS]
    counts = notices.ood_counts(run)
    assert counts["n_structures"] == run.test.n_structures == 32
    assert 0 < counts["structures"] <= counts["n_structures"] and counts["sites"] == int(run.ood.sum())
    rep = run.reports["split"]
    assert rep["ood_fraction"] == pytest.approx(counts["sites"] / counts["n_sites"])
    # the Calibrate page: the banner names the structures and the in/out-of-domain coverage
    banner = [w.value for w in at.warning if "Out of domain" in w.value]
    assert len(banner) == 1, [w.value for w in at.warning]
    assert f"{counts['structures']} of 32 test structures" in banner[0]
    assert f"split: {rep['coverage_in_domain']:.3f} in domain, {rep['coverage_out_of_domain']:.3f} out" in banner[0]
    table = keyed_table(at.dataframe[0].value)
    assert table.loc["split", "ood_fraction"] == pytest.approx(rep["ood_fraction"])
    # Diagnose: the same banner; out-of-domain sites circled in the site plots
    at.switch_page(page("diagnose")).run()
    _no_exception(at)
    assert any("Out of domain" in w.value for w in at.warning)
    figs = services.method_figures(run, "flexible")
    marked = [t for t in figs["uncertainty_error"].data if t.name.startswith("outside the calibration domain")]
    assert len(marked) == 1 and len(marked[0].x) == counts["sites"]
    assert marked[0].name == f"outside the calibration domain ({counts['sites']} sites)"
    parity = [t for t in figs["force_parity"].data if t.name.startswith("outside the calibration domain")]
    assert len(parity[0].x) == 3 * counts["sites"]  # three force components per site
    structs = [t for t in figs["structure_uncertainty"].data if t.name.startswith("outside")]
    assert len(structs[0].x) == counts["structures"]
    # Structures: colour the 3D view by the out-of-domain flag
    sid = int(run.ood_structures[0])
    at.session_state[state.W_STRUCTURE] = sid
    at.switch_page(page("structures")).run()
    _no_exception(at)
    at.radio(key=state.W_COLOR_BY).set_value("out of domain").run()
    _no_exception(at)
    assert "outside the calibration domain" in at.get("iframe")[0].proto.srcdoc
    assert any(f"Structure #{sid} lies outside the calibration domain" in w.value for w in at.warning)
    assert column_label("ood_score") in at.dataframe[0].value.columns


def test_coverage_outside_its_expected_spread_is_a_visible_warning(off_domain):
    at = off_domain
    at.switch_page(page("calibrate")).run()
    run = at.session_state[state.RESULTS]
    rep = run.reports["split"]
    lo, hi = rep["coverage_expected_lo"], rep["coverage_expected_hi"]
    assert 0 < lo < run.confidence < hi <= 1
    assert rep["coverage"] < lo and rep["coverage_outside_expected"] is True  # global CP under-covers hot sites
    warning = notices.coverage_warning("split", rep, run.cal.n_structures)
    assert f"observed coverage {rep['coverage']:.3f} (nominal 90%) lies below the range expected {lo:.3f}–{hi:.3f} " \
           f"for {run.cal.n_structures} calibration structures" in warning.replace("**", "")
    assert any(w.value == warning for w in at.warning)
    table = keyed_table(at.dataframe[0].value)
    assert table.loc["split", "coverage_check"] == "below expected"
    assert table.loc["split", "coverage_expected_lo"] == pytest.approx(lo)
    # Diagnose: the metric card of split CP carries the range and a red downward delta
    at.switch_page(page("diagnose")).run()
    at.selectbox(key=state.W_DIAG_METHOD).set_value("split").run()
    _no_exception(at)
    card = next(m for m in at.metric if m.label == "coverage")
    assert card.value == f"{rep['coverage']:.3f}" and "below the expected range" in card.delta
    assert any(c.value.startswith(f"expected {lo:.3f}–{hi:.3f}") for c in at.caption)
    assert any(w.value == warning for w in at.warning)


def test_no_warning_inside_the_expected_spread():
    rep = {"coverage": 0.9, "confidence": 0.9, "coverage_expected_lo": 0.85, "coverage_expected_hi": 0.95}
    assert notices.coverage_verdict(rep) is None and notices.coverage_warning("x", rep) is None
    assert notices.coverage_check(rep) == "within expected"
    assert notices.coverage_check({"coverage": 0.9}) == "—"  # no range known: no verdict either way
    above = dict(rep, coverage=0.99)
    assert notices.coverage_verdict(above) == "above" and "conservative" in notices.coverage_warning("x", above)
    assert notices.fmt(None) == notices.fmt(float("nan")) == "—"


def test_results_out_of_date_badge_after_changing_the_split_seed(cache_dir):
    at = _train(_featurize(_synthetic(_new_app())), methods=("split",), bootstrap=0)
    run = at.session_state[state.RESULTS]
    at.switch_page(page("diagnose")).run()
    assert not [w for w in at.warning if widgets.OUT_OF_DATE in w.value]
    at.switch_page(page("data")).run()
    at.number_input(key=state.W_SPLIT_SEED).set_value(3).run()
    _no_exception(at)
    for name in ("diagnose", "structures", "export", "calibrate"):
        at.switch_page(page(name)).run()
        _no_exception(at)
        stale = [w.value for w in at.warning if widgets.OUT_OF_DATE in w.value]
        assert len(stale) == 1 and "split seed: 0 → 3" in stale[0], (name, [w.value for w in at.warning])
        assert at.session_state[state.RESULTS] is run  # the old results stay, marked
    # the sidebar badge (st.badge is drawn as ":orange-badge[...]" markdown)
    assert any(m.value.startswith(":orange-badge[") and widgets.OUT_OF_DATE in m.value for m in at.sidebar.markdown)
    # recalibrating clears the mark; going back to the old seed would too
    at.button(key=TRAIN_BUTTON).click().run()
    assert at.session_state[state.JOB].join(timeout=TIMEOUT)
    at.run()
    assert at.session_state[state.RESULTS].settings["split seed"] == 3
    assert not [w for w in at.warning if widgets.OUT_OF_DATE in w.value]
    assert not [m for m in at.sidebar.markdown if widgets.OUT_OF_DATE in m.value]


def test_stale_reasons_name_what_changed():
    old = {"_dataset": "a", "split": "Random", "split seed": 0, "methods": ["split"]}
    new = {"_dataset": "b", "split": "Random", "split seed": 2, "methods": ["split", "knn"]}
    assert notices.stale_reasons(old, new) == ["the dataset changed", "split seed: 0 → 2",
                                               "methods: split → split, knn"]
    assert notices.stale_reasons(old, dict(old)) == []


def test_cancel_abandons_the_job_and_keeps_no_results(cache_dir):
    at = _featurize(_synthetic(_new_app()))
    at.switch_page(page("calibrate")).run()
    at.multiselect(key=state.W_METHODS).set_value(["flexible"])
    at.number_input(key=state.W_MAX_EPOCHS).set_value(2000)
    at.number_input(key=state.W_BOOTSTRAP).set_value(0)
    at.button(key=TRAIN_BUTTON).click().run()
    job = at.session_state[state.JOB]
    assert job is not None and not job.done
    at.button(key="btn_cancel_training").click().run()
    assert job.join(timeout=TIMEOUT) and job.status == "cancelled", job.status
    assert len(job.history) < 2000
    at.run()
    _no_exception(at)
    assert at.session_state[state.RESULTS] is None
    assert any("cancelled" in e for e in _errors(at)), _errors(at)


# --------------------------------------------------------------- method registry
def test_method_list_comes_from_the_registry_with_a_toy_method(cache_dir):
    from core.calibration.registry import MethodSpec, method_spec, register_method, unregister_method

    def toy(confidence, seed, **options):
        from core.calibration.conformal import SplitConformal

        return SplitConformal(confidence=confidence, mondrian=True)

    register_method(MethodSpec("toy-cp", label="toy CP", color="#117733", help="a toy method for this test",
                               factory=toy, default=False))
    services.buildable_methods.clear()
    try:
        at = _featurize(_synthetic(_new_app()))
        at.switch_page(page("calibrate")).run()
        _no_exception(at)
        sites = at.session_state[state.SITES]
        box = at.multiselect(key=state.W_METHODS)
        assert "toy-cp" in services.usable_methods(sites)
        assert "committee" not in services.usable_methods(sites)  # these features have no committee spread
        assert list(box.options) == [f"{m} — {method_spec(m).help}" + (" (recommended)" if method_spec(m).recommended
                                                                         else "")
                                     for m in services.usable_methods(sites)]
        recommended = [m for m in services.usable_methods(sites) if method_spec(m).recommended]
        assert box.value[: len(recommended) or 1] == (recommended or [state.FALLBACK_METHOD])
        assert set(state.BASELINE_METHODS) <= set(box.value)
        at = _train(at, methods=("toy-cp", "split"), bootstrap=0)
        run = at.session_state[state.RESULTS]
        assert run.labels == ["toy-cp", "split"] and run.reports["toy-cp"]["coverage"] > 0.8
    finally:
        unregister_method("toy-cp")
        services.buildable_methods.clear()


# --------------------------------------------------------------------- stale state
def test_upload_resets_structure_and_leaves_the_demo_model_behind(cache_dir):
    from core.synthetic_demo import synthetic_extxyz_bytes

    at = _synthetic(_new_app())
    at.session_state[state.W_STRUCTURE] = 40
    assert at.button(key="btn_quickstart") is not None
    at = _upload(at, "small.extxyz", synthetic_extxyz_bytes(6))
    assert state.W_STRUCTURE not in at.session_state or at.session_state[state.W_STRUCTURE] != 40
    assert at.session_state[state.W_MODEL_KIND] == state.MODEL_KINDS[2]
    assert not [b for b in at.button if b.key == "btn_quickstart"]
    # a bad file's error goes away with the file
    at = _upload(at, "junk.xyz", b"not a structure\n")
    assert _errors(at)
    at.file_uploader(key=state.W_DATA_UPLOAD).set_value(None).run()
    _no_exception(at)
    assert not _errors(at)


def test_q_theta_settings_reach_every_method_that_takes_them():
    from app.job import method_options
    from core.calibration.registry import MethodSpec, register_method, unregister_method

    class Toy:
        def __init__(self, confidence, *, hidden=(8,)):
            self.confidence, self.hidden = confidence, hidden

    def toy(confidence, seed, **options):
        return Toy(confidence, **options)  # TypeError for any option but hidden

    register_method(MethodSpec("toy-q", label="toy q", color="#117733", help="toy", factory=toy, default=False))
    try:
        qtheta = {"hidden": (16, 16), "max_epochs": 30, "conformal": False}
        opts = method_options(["toy-q", "flexible", "split"], qtheta)
        assert opts["toy-q"] == {"hidden": (16, 16)}
        assert opts["flexible"] == qtheta
        assert "split" not in opts  # split CP has no q_θ settings
        with pytest.raises(ValueError, match="max_epochs"):
            method_options(["flexible"], {"max_epochs": -1})
    finally:
        unregister_method("toy-q")


def test_run_reference_levels_are_global_split_cp_without_refitting():
    """Without a split-CP method, the teaching view's global CP comes from the calibration errors."""
    from app.run import CalibrationRun
    from core.calibration import make_calibrator
    from core.evaluation import evaluate
    from core.sites import SiteTable

    rng = np.random.default_rng(1)
    n = 400
    sites = SiteTable.from_arrays(descriptors=rng.normal(size=(n, 3)), errors=rng.gamma(2.0, 0.05, n),
                                  species=np.full(n, 6), structure_ids=np.repeat(np.arange(40), 10))
    cal, test = sites.select_structures(np.arange(25)), sites.select_structures(np.arange(25, 40))
    run = CalibrationRun(evaluate(cal, {"test": test}, ["knn"], confidence=0.9))
    split = make_calibrator("split", confidence=0.9).fit(cal)
    assert run.reference_levels.shape == (len(test), run.levels.size)
    assert np.allclose(run.reference_levels, split.predict_levels(test, run.levels))
    assert run.flexible_label() is None and run.labels == ["knn"]
    assert run.results_frame().loc["knn", "coverage"] == pytest.approx(run.reports["knn"]["coverage"])
