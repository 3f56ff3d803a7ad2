"""The Streamlit app under ``streamlit.testing.v1.AppTest``: every page, the demo flow, uploads, trust gate.

The flow runs on the generated synthetic demo (48 Cu–Au structures, ~1500 sites, a
mock potential), so it needs no model file and takes seconds. One module-scoped
app goes Data -> Model (featurize) -> Calibrate (train) and is then inspected by
the Diagnose / Structures / Export tests.
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

from app import services, state  # noqa: E402
from app.pages_index import PAGES, page  # noqa: E402

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
    if at.session_state[state.DATASET_LABEL] != services.SYNTHETIC_LABEL:
        at.selectbox(key=state.W_DEMO_NAME).set_value(services.SYNTHETIC_LABEL).run()
    _no_exception(at)
    assert at.session_state[state.DATASET_LABEL] == services.SYNTHETIC_LABEL
    return at


def _featurize(at) -> AppTest:
    at.switch_page(page("model")).run()
    _no_exception(at)
    at.button(key="btn_featurize").click().run()
    _no_exception(at)
    assert not _errors(at), _errors(at)
    assert at.session_state[state.SITES] is not None
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
    summary = at.dataframe[0].value
    assert int(summary.loc["frames", "value"]) > 0


# ------------------------------------------------------------------------- demo flow
def test_calibrate_results_table_values(trained):
    run = trained.session_state[state.RESULTS]
    assert run.labels == ["flexible", "split", "knn"]
    table = trained.dataframe[0].value  # the results table on the Calibrate page
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
            fig = services.teaching_figure(run, level)
            band, cp = fig.data[0], fig.data[1]
            k = run.level_index(level)
            assert np.allclose(np.sort(band.y), np.sort(run.widths_levels["flexible"][:, k]))
            assert np.allclose(cp.y, run.reference_levels[:, k])
            cp_width[level], band_width[level] = float(np.mean(cp.y)), float(np.mean(band.y))
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
    assert services.selected_site(event) == (sid, atom)
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
    worst = at.dataframe[1].value
    assert worst["max error (eV/Å)"].is_monotonic_decreasing
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
    assert len(at.get("download_button")) == 5

    import pandas as pd

    csv = pd.read_csv(io.BytesIO(services.export_table(run, sites, "csv")))
    assert len(csv) == len(sites)
    assert {"width_flexible", "width_split", "covered_flexible", "split", "error"} <= set(csv.columns)
    test_rows = csv["split"] == "test"
    assert np.allclose(np.sort(csv.loc[test_rows, "width_flexible"]), np.sort(run.widths["flexible"]))
    pq = pd.read_parquet(io.BytesIO(services.export_table(run, sites, "parquet")))
    assert pq.shape == csv.shape

    from ase.io import read

    path = tmp_path / "out.extxyz"
    path.write_bytes(services.export_extxyz(run, dataset, sites, "flexible"))
    frames = read(path, index=":")
    assert len(frames) == len(dataset)
    assert "flexcal_width" in frames[0].arrays and "flexcal_error" in frames[0].arrays
    s0 = sites.select_structures([0])
    assert np.allclose(frames[0].arrays["flexcal_error"][s0.atom_index], s0.errors)

    from core.calibration import load_calibrator

    cpath = tmp_path / "cal.npz"
    cpath.write_bytes(services.export_calibrator(run, "flexible"))
    loaded = load_calibrator(cpath)
    assert np.allclose(loaded.predict(run.test), run.widths["flexible"])

    html = services.export_report(run, "flexible")
    assert html.startswith("<!DOCTYPE html>") and "plotly" in html.lower()
    assert "Metrics on the test part" in html
    assert '<script src="http' not in html  # plotly.js inlined: works offline


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
    "junk.xyz": (b"this is not a structure file\nhello\n", "could not be parsed"),
    "noforces.extxyz": (b'2\nProperties=species:S:1:pos:R:3 energy=1.0 pbc="F F F"\nH 0 0 0\nH 0 0 0.74\n',
                        "no reference forces"),
    "nan.extxyz": (None, "NaN"),
    "truncated.extxyz": (None, "could not be parsed"),
}


def test_upload_valid_then_malformed_files_keep_the_previous_dataset():
    from core.synthetic_demo import synthetic_extxyz_bytes

    good = synthetic_extxyz_bytes(6)
    at = _upload(_new_app().run(), "small.extxyz", good)
    assert not _errors(at)
    assert at.session_state[state.DATASET_LABEL] == "small.extxyz"
    assert len(at.session_state[state.DATASET]) == 6
    summary = at.dataframe[0].value
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

    calls = []

    def fake_load(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("fake torch.load: refusing")

    monkeypatch.setattr(torch, "load", fake_load)
    # the service refuses before touching the bytes
    with pytest.raises(services.UntrustedModelFile, match="pickle"):
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
    """Session data lives in st.session_state; module globals are constants only."""
    mutable = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)
    offenders = []
    for path in _app_modules():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, mutable):
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
    assert services.parse_hidden("64, 64") == (64, 64)
    assert services.parse_hidden("32 16") == (32, 16)
    with pytest.raises(ValueError, match="whole numbers"):
        services.parse_hidden("64, abc")
    with pytest.raises(ValueError, match="1 to 4096"):
        services.parse_hidden("0")


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
    figs = services._build_method_figures(run, "knn")
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
