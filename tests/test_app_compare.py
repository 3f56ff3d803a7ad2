"""The Compare page under AppTest: a clear message without a run; after a run the ranked table with the
best marked, the side-by-side figures, the per-element / per-config_type breakdown of the chosen method.

Reuses the synthetic-demo flow of ``tests/test_app.py`` (its fixtures and helpers, imported).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("streamlit")

from app import state  # noqa: E402
from app.pages_index import page  # noqa: E402
from core.metrics import breakdown, rank_methods  # noqa: E402
from tests.test_app import _new_app, _no_exception, cache_dir, trained  # noqa: E402,F401  (fixtures)

STAR = "★"


def _compare(at):
    at.switch_page(page("compare")).run()
    _no_exception(at)
    return at


def test_compare_without_a_run_says_calibrate_first():
    at = _compare(_new_app().run())
    assert at.title[0].value == "Compare"
    assert any("Calibrate first" in w.value for w in at.warning), [w.value for w in at.warning]
    assert not at.dataframe and not at.get("plotly_chart")


def test_compare_after_a_run_ranks_and_breaks_down(trained):
    at = _compare(trained)
    run = at.session_state[state.RESULTS]
    ranking = at.dataframe[0].value
    assert set(ranking.index) == set(run.labels)
    assert ranking.columns[0] == f"{STAR} best at"
    expected = rank_methods(run.reports, keys=["coverage", "width_ratio", "spearman", "miscalibration_area"])
    assert list(ranking.index) == list(expected.index)  # ranked by mean rank
    best_cov = expected.index[expected["coverage_best"]][0]
    assert "Coverage" in ranking.loc[best_cov, f"{STAR} best at"]
    assert ranking.loc["split", "Width / split CP (↓)"] == pytest.approx(1.0)
    for lab in run.labels:
        assert ranking.loc[lab, "Coverage (≈ nominal)"] == pytest.approx(run.reports[lab]["coverage"])
        assert ranking.loc[lab, "Mean rank"] == pytest.approx(expected.loc[lab, "mean_rank"])
    assert sum(STAR in v for v in ranking[f"{STAR} best at"]) >= 1

    charts = at.get("plotly_chart")
    assert len(charts) == 2  # small multiples + coverage per element

    per_element, per_config = at.dataframe[1].value, at.dataframe[2].value
    for table in (per_element, per_config):
        assert list(table.columns) == [
            "Group", "Sites", "Structures", "Coverage", "95 % CI (structures)", "95 % CI (sites)", "Expected range",
            "vs expected",
            "Mean width (eV/Å)", "MAE (eV/Å)", "ρ (error, width)", "ρ 95 % CI"]
    test = run.test
    assert list(per_element["Group"]) == ["Cu", "Au"]
    assert sorted(per_config["Group"]) == sorted(set(test.structure_column("config_type")))
    assert per_element["Sites"].sum() == len(test) == per_config["Sites"].sum()
    label = at.selectbox(key="compare_method").value
    direct = breakdown(test, run.widths[label], by="species", confidence=run.confidence, bootstrap=0)
    assert np.allclose(per_element["Coverage"], direct["coverage"])
    assert np.allclose(per_element["MAE (eV/Å)"], direct["mae"])
    assert set(per_element["vs expected"]) <= {"below", "within", "above"}
    for shown, row in zip(per_element["95 % CI (sites)"], direct.itertuples()):
        assert shown == f"{row.coverage_binom_lo:.3f}–{row.coverage_binom_hi:.3f}"  # an interval as "lo–hi"
    assert all("–" in v for v in per_element["ρ 95 % CI"])  # q_θ widths vary: ρ and its interval exist
    for shown, cov in zip(per_element["95 % CI (structures)"], per_element["Coverage"]):
        lo, hi = (float(x) for x in shown.split("–"))
        assert lo <= round(cov, 3) <= hi


def test_compare_method_selector_and_parity_panels(trained):
    at = _compare(trained)
    run = at.session_state[state.RESULTS]
    at.selectbox(key="compare_method").set_value("split").run()
    _no_exception(at)
    table = at.dataframe[1].value
    direct = breakdown(run.test, run.widths["split"], by="species", confidence=run.confidence, bootstrap=0)
    assert np.allclose(table["Mean width (eV/Å)"], direct["mean_width"])
    assert table["ρ (error, width)"].isna().all()  # global split CP: one width, no ρ
    assert set(table["ρ 95 % CI"]) == {"—"}
    at.radio(key="compare_kind").set_value("Force parity (coloured by width)").run()
    _no_exception(at)
    assert len(at.get("plotly_chart")) == 2
    at.radio(key="compare_group_by").set_value("config_type").run()
    _no_exception(at)
    assert len(at.get("plotly_chart")) == 2
    assert any("over the config_type's sites" in c.value for c in at.caption), [c.value for c in at.caption]


def test_a_group_below_its_expected_range_gets_a_warning(trained):
    """Halve one method's widths on Au sites (a copy of the run): the page warns about Au, naming the method."""
    import dataclasses

    at = trained
    run = at.session_state[state.RESULTS]
    test = run.test
    shrunk = dataclasses.replace(run, token="compare-shrunk-au")
    widths = dict(run.widths)
    widths["flexible"] = np.where(test.species == 79, 0.3 * widths["flexible"], widths["flexible"])
    shrunk.__dict__["widths"] = widths  # the cached_property's slot: the copy's widths only
    try:
        at.session_state[state.RESULTS] = shrunk
        at = _compare(at)
        at.selectbox(key="compare_method").set_value("flexible").run()
        _no_exception(at)
        texts = [w.value for w in at.warning if "covers less than expected" in w.value]
        assert len(texts) == 1 and texts[0].startswith("**flexible**") and "Au (" in texts[0], texts
        assert "Cu (" not in texts[0]
        per_element = at.dataframe[1].value.set_index("Group")
        assert per_element.loc["Au", "vs expected"] == "below" and per_element.loc["Cu", "vs expected"] == "within"
    finally:
        at.session_state[state.RESULTS] = run
    at.run()
    _no_exception(at)
    assert not [w.value for w in at.warning if "covers less than expected" in w.value]
