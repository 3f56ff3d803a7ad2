"""The Diagnose page's "More diagnostics" section (toolkit plots + descriptor map), the SVG download of
every Diagnose chart, and the chemiscope download on the Export page (AppTest, synthetic demo)."""

from __future__ import annotations

import base64
import gzip
import json

import numpy as np
import pytest

pytest.importorskip("streamlit")

from app import figures_catalogue, state  # noqa: E402
from app.pages_index import page  # noqa: E402
from tests.test_app import _no_exception, cache_dir, trained  # noqa: E402,F401  (module fixtures)

MORE, COLOUR = "w_more_diag", "w_map_colour"
TOOLKIT_CHARTS = 5  # RMSE vs RMV, adversarial, ordered groups, sharpness, descriptor map


def _diagnose(at, more: bool):
    at.switch_page(page("diagnose")).run()
    _no_exception(at)
    at.session_state[state.W_DIAG_TAB] = "Calibration"
    at.session_state[MORE] = more
    at.run()
    _no_exception(at)
    return at


def run_labels(at) -> list[str]:
    return list(at.session_state[state.RESULTS].labels)


def _array(obj) -> np.ndarray:
    """An array of a plotly JSON spec: a list, or plotly's typed-array form {"dtype", "bdata", "shape"}."""
    if isinstance(obj, dict):
        arr = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=obj["dtype"])
        shape = obj.get("shape")
        return arr.reshape([int(k) for k in str(shape).split(",")]) if shape else arr
    return np.asarray(obj)


def _charts(at) -> dict:
    return {json.loads(c.proto.spec).get("layout", {}).get("title", {}).get("text", ""): c
            for c in at.get("plotly_chart")}


def test_more_diagnostics_draws_only_when_opened(trained):
    at = _diagnose(trained, more=False)
    closed = len(at.get("plotly_chart"))
    assert closed == 2  # the open tab's two plots; the closed section computes nothing
    at = _diagnose(trained, more=True)
    assert len(at.get("plotly_chart")) == closed + TOOLKIT_CHARTS
    assert not at.warning or all("cannot be drawn" not in w.value for w in at.warning), [w.value for w in at.warning]
    (table,) = [d for d in at.dataframe if "mean width (eV/Å)" in d.value.columns]
    assert list(table.value.index) == run_labels(at)
    assert table.value.loc["split", "coefficient of variation"] == pytest.approx(0.0, abs=1e-9)  # one width
    titles = list(_charts(at))
    for part in ("RMSE vs RMV", "Adversarial group calibration — flexible", "Coverage per group — flexible",
                 "Sharpness", "Descriptor map"):
        assert any(part in t for t in titles), (part, titles)


def test_descriptor_map_recolours_and_links_sites(trained):
    at = _diagnose(trained, more=True)
    run = at.session_state[state.RESULTS]
    test = run.test

    def map_spec():
        (chart,) = [c for t, c in _charts(at).items() if t.startswith("Descriptor map")]
        return json.loads(chart.proto.spec)["data"][0]

    radio = at.radio(key=COLOUR)
    assert list(radio.options) == ["width (flexible)", "error"]  # the labels shown
    width_spec = map_spec()
    assert "width (flexible)" in json.dumps(width_spec["marker"]["colorbar"])
    radio.set_value("error").run()
    _no_exception(at)
    error_spec = map_spec()
    assert "error" in json.dumps(error_spec["marker"]["colorbar"])
    assert width_spec["marker"]["color"] != error_spec["marker"]["color"]
    # one point per test site, its customdata the (structure, atom) the scatter click hands on
    cd = _array(error_spec["customdata"])
    assert cd.shape == (len(test), 2)
    np.testing.assert_array_equal(cd, figures_catalogue.site_ids(test))
    np.testing.assert_allclose(_array(error_spec["marker"]["color"]), test.errors)
    i = 7
    event = {"selection": {"points": [{"customdata": cd[i].tolist(), "point_index": i}]}}
    assert figures_catalogue.selected_site(event) == (int(test.structure_ids[i]), int(test.atom_index[i]))
    radio.set_value("width").run()
    _no_exception(at)
    np.testing.assert_allclose(_array(map_spec()["marker"]["color"]), run.widths["flexible"])


def test_every_diagnose_chart_downloads_as_svg(trained):
    at = _diagnose(trained, more=True)
    charts = at.get("plotly_chart")
    assert len(charts) >= 2 + TOOLKIT_CHARTS
    for chart in charts:
        config = json.loads(chart.proto.config)
        assert config["toImageButtonOptions"]["format"] == "svg", config
        assert config["toImageButtonOptions"]["filename"].startswith("flexcal-fig_")
        assert config["displaylogo"] is False


def test_method_switch_redraws_the_section(trained):
    at = _diagnose(trained, more=True)
    at.selectbox(key=state.W_DIAG_METHOD).set_value("split").run()
    _no_exception(at)
    titles = list(_charts(at))
    assert any(t.startswith("Adversarial group calibration — split") for t in titles), titles
    # constant split-CP widths: one RMV for every bin, the section still draws
    assert any("RMSE vs RMV" in t for t in titles)
    at.selectbox(key=state.W_DIAG_METHOD).set_value("flexible").run()
    _no_exception(at)


def test_export_page_offers_a_chemiscope_file(trained):
    pytest.importorskip("chemiscope")
    at = trained
    at.switch_page(page("export")).run()
    _no_exception(at)
    buttons = [b for b in at.get("download_button") if "chemiscope" in b.proto.label]
    assert len(buttons) == 1
    from core.export_chemiscope import chemiscope_bytes

    run = at.session_state[state.RESULTS]
    data = chemiscope_bytes(at.session_state[state.DATASET].structures, run.test, run.widths, ood=run.ood)
    d = json.loads(gzip.decompress(data))
    assert len(d["properties"]["width flexible"]["values"]) == len(run.test)
