"""core.tables + app.tables + core.export: tables for people (labels with units, "—", nothing hidden)
and an HTML report that records what produced it (issue 12, item 13)."""

from __future__ import annotations

import datetime
import io
import json
import math

import numpy as np
import pandas as pd
import pytest

from core import __version__
from core import export
from core.metrics import CALIBRATION_LEVELS, REPORT_COLUMNS, REPORT_KEYS, calibration_report
from core.sites import SiteTable
from core.tables import (COLUMNS, MISSING, column_descriptions, column_info, column_label, descriptions_json,
                         format_value, keyed_table, readable_table, text_table)

META = {"source": "toy.xyz", "potential": "toy-model", "potential_identity": "f00dfeedbeef"}


def _sites(n_structures=24, per=5, seed=0) -> SiteTable:
    rng = np.random.default_rng(seed)
    n = n_structures * per
    desc = rng.normal(size=(n, 4))
    errors = np.abs(rng.normal(scale=0.05 + 0.05 * np.abs(desc[:, 0])))
    species = rng.choice([3, 17], size=n)
    sids = np.repeat(np.arange(n_structures), per)
    return SiteTable.from_arrays(descriptors=desc, errors=errors, species=species, structure_ids=sids,
                                 atom_index=np.tile(np.arange(per), n_structures), meta=dict(META))


def _full_report(sites) -> dict:
    """A report with every key the engine produces (levels, reference, spread, ood, bootstrap)."""
    widths = 0.08 + 0.04 * np.abs(sites.descriptors[:, 0])
    levels = np.outer(widths, CALIBRATION_LEVELS / 0.9)
    ood = sites.descriptors[:, 1] > 1.0
    return calibration_report(sites.errors, widths, 0.9, species=sites.species, structure_ids=sites.structure_ids,
                              widths_at_levels=levels, reference_widths=np.full(len(sites), 0.1), bootstrap=20,
                              seed=0, n_calibration=30, ood=ood)


def test_every_report_key_has_a_registered_readable_label_with_units():
    report = _full_report(_sites())
    assert set(REPORT_KEYS) <= set(report)  # the engine produced every key
    for key in report:
        assert key in COLUMNS, f"{key!r} has no entry in core.tables.COLUMNS"
        label = column_label(key)
        assert label != key and "_" not in label, (key, label)
    # widths and losses carry their unit; fractions and correlations carry none
    assert column_label("mean_width") == "Mean width (eV/Å)"
    assert column_label("pinball") == "Pinball loss (eV/Å)"
    assert column_label("coverage") == "Coverage"
    assert column_label("width_ratio") == "Width / split-CP width"
    assert column_label("spearman") == "Spearman ρ (error, width)"
    assert column_label("miscalibration_area") == "Miscalibration area"
    assert column_info("coverage").unit is None and column_info("mean_width").unit == "eV/Å"
    # the CI columns the evaluation table adds and the app's results columns
    from app.run import RESULT_COLUMNS

    for key in [*REPORT_COLUMNS, "coverage_ci_lo", "coverage_ci_hi", "spearman_ci_lo", "spearman_ci_hi",
                *RESULT_COLUMNS]:
        assert key in COLUMNS, key


def test_evaluation_table_and_site_frame_are_fully_labelled():
    from core.evaluation import evaluate

    sites = _sites()
    cal, test = sites.select_structures(np.arange(12)), sites.select_structures(np.arange(12, 24))
    ev = evaluate(cal, {"test": test}, ["split", "knn"], bootstrap=10)
    table = ev.table()
    shown = readable_table(table)
    assert shown.shape == table.shape  # no column lost
    assert all(c in COLUMNS for c in table.columns), [c for c in table.columns if c not in COLUMNS]
    frame = export.evaluation_frame(ev, sites)
    labels = readable_table(frame).columns
    assert len(set(labels)) == frame.shape[1]
    assert "Width — knn (eV/Å)" in labels and "Covered — split" in labels
    assert "Force error ‖ΔF‖ (eV/Å)" in labels and "Part" in labels


def test_missing_values_show_one_mark_and_no_column_is_lost():
    frame = pd.DataFrame({"label": ["a", "b", "c"], "coverage": [0.9, np.nan, 0.8], "spearman": [None, 0.5, 0.1],
                          "note": ["", None, "x"], "coverage_outside_expected": [True, False, None],
                          "mean_width": [0.1, np.inf, 0.2], "something_new": [1, 2, 3]}).set_index("label")
    text = text_table(frame)
    assert text.shape == frame.shape and text.index.name == "Method"
    assert text.loc["b", "Coverage"] == MISSING == "—"
    assert text.loc["a", "Spearman ρ (error, width)"] == MISSING
    assert text.loc["b", "Note"] == MISSING
    assert text.loc["a", "Coverage outside expected range"] == "yes"
    assert text.loc["c", "Coverage outside expected range"] == MISSING
    assert text.loc["b", "Mean width (eV/Å)"] == "∞" and text.loc["c", "Mean width (eV/Å)"] == "0.2"
    assert text.loc["c", "something_new"] == "3"  # an unknown key is its own label, never dropped
    assert format_value(float("nan")) == format_value(None) == format_value(pd.NA) == MISSING
    # numbers keep their type in the app's copy (sortable), only the headers change
    shown = readable_table(frame)
    assert shown["Coverage"].dtype == np.float64 and math.isnan(shown.loc["b", "Coverage"])
    assert keyed_table(shown).columns.tolist() == frame.columns.tolist()
    # two keys with one label: both kept, told apart by their key
    clash = readable_table(pd.DataFrame({"coverage": [1.0], "Coverage": [2.0]}))
    assert clash.columns.tolist() == ["Coverage [coverage]", "Coverage [Coverage]"]
    with pytest.raises(TypeError, match="frame: expected a pandas DataFrame, got list"):
        readable_table([1, 2])


def test_exports_keep_keys_and_describe_every_column():
    sites = _sites(4, 3)
    frame = export.site_frame(sites, {"flexible": np.full(len(sites), 0.1)}, confidence=0.9)
    desc = column_descriptions(frame)
    assert list(desc) == list(frame.columns)
    assert desc["error"] == {"label": "Force error ‖ΔF‖ (eV/Å)", "unit": "eV/Å",
                             "description": "norm of predicted minus reference force"}
    assert desc["width_flexible"]["unit"] == "eV/Å" and desc["covered_flexible"]["unit"] is None
    doc = json.loads(descriptions_json(frame))
    assert set(doc["columns"]) == set(frame.columns) and "eV/Å" in doc["units"]
    csv = pd.read_csv(io.BytesIO(export.table_bytes(frame, "csv")))
    assert list(csv.columns) == list(frame.columns)  # machine-readable: stable keys
    readable = pd.read_csv(io.BytesIO(export.table_bytes(frame, "csv", readable=True)))
    assert list(readable.columns) == [desc[k]["label"] for k in frame.columns]
    assert np.allclose(readable["Force error ‖ΔF‖ (eV/Å)"], frame["error"])
    import pyarrow.parquet as pq

    blob = export.table_bytes(frame, "parquet")
    meta = pq.read_schema(io.BytesIO(blob)).metadata
    assert json.loads(meta[b"flexcal.columns"])["columns"]["width_flexible"]["label"] == "Width — flexible (eV/Å)"
    assert pd.read_parquet(io.BytesIO(blob)).equals(frame)


def test_provenance_table_records_every_field_first_and_fills_from_the_sites():
    when = datetime.datetime(2026, 5, 6, 7, 8, tzinfo=datetime.timezone.utc)
    sites = _sites()
    table = export.provenance_frame({"methods": ["split", "knn"], "split seed": 7, "split": "random",
                                     "confidence": 0.9, "test fraction": 0.5, "_dataset": "internal"},
                                    now=when, sites=sites)
    fields = list(table.index)
    assert fields[:8] == list(export.PROVENANCE_FIELDS)
    assert fields[-2:] == ["date", "FlexCal version"] and "_dataset" not in fields
    v = table["value"]
    assert v["dataset"] == "toy.xyz" and v["model"] == "toy-model" and v["model identity"] == "f00dfeedbeef"
    assert v["dataset hash"] == f"{export.sites_fingerprint(sites)} (sites fingerprint)"
    assert len(export.sites_fingerprint(sites)) == 20
    assert export.sites_fingerprint(sites) != export.sites_fingerprint(_sites(seed=1))
    assert v["seed"] == "7" and v["methods"] == "split, knn" and v["split"] == "random" and v["confidence"] == "0.9"
    assert v["test fraction"] == "0.5" and v["date"] == "2026-05-06 07:08 UTC" and v["FlexCal version"] == __version__
    # given fields win over the sites; unknown ones are marked, never left out
    bare = export.provenance_frame({"dataset hash": "upload:abc", "model": "MACE small"}, now=when)
    assert bare["value"]["dataset hash"] == "upload:abc" and bare["value"]["model"] == "MACE small"
    assert bare["value"]["seed"] == MISSING and bare["value"]["model identity"] == MISSING
    with pytest.raises(TypeError, match="fields: expected a mapping"):
        export.provenance_frame(["dataset"])


def test_html_report_puts_provenance_first_and_shows_tables_for_people():
    sites = _sites()
    metrics = pd.DataFrame({"label": ["split CP"], "coverage": [0.91], "mean_width": [0.123456],
                            "spearman": [np.nan]}).set_index("label")
    html = export.html_report([], [("Metrics", metrics)], title="T",
                              provenance={"methods": ["split"], "seed": 3, "split": "random", "confidence": 0.9},
                              sites=sites)
    head = html.index("What produced this report")
    assert head < html.index("Metrics")
    for field, value in [("dataset", "toy.xyz"), ("dataset hash", export.sites_fingerprint(sites)),
                         ("model", "toy-model"), ("model identity", "f00dfeedbeef"), ("split", "random"),
                         ("seed", "3"), ("methods", "split"), ("confidence", "0.9"), ("FlexCal version", __version__)]:
        assert f"<th>{field}</th>" in html and value in html, field
    assert "<th>date</th>" in html
    assert "Mean width (eV/Å)" in html and "0.1235" in html and "Spearman ρ (error, width)" in html
    assert "mean_width" not in html and "NaN" not in html and "None" not in html
    assert "<td>—</td>" in html


def test_app_report_records_dataset_hash_and_model_identity():
    from app.figures_catalogue import run_report_html
    from app.run import CalibrationRun
    from core.evaluation import evaluate

    sites = _sites()
    cal, test = sites.select_structures(np.arange(12)), sites.select_structures(np.arange(12, 24))
    ev = evaluate(cal, {"test": test}, ["split"])
    run = CalibrationRun(ev, settings={"_dataset": "upload:0123456789abcdef0123", "split": "random"},
                         provenance={"dataset": "mine.xyz", "model": "Demo model", "split": "random",
                                     "split seed": 4, "methods": ["split"], "confidence": 0.9})
    html = run_report_html(run, "split CP", {})
    table = html[html.index("What produced this report"):html.index("Metrics on the test part")]
    for value in ("mine.xyz", "upload:0123456789abcdef0123", "Demo model", "f00dfeedbeef", "random", "<td>4</td>",
                  "<th>methods</th>", "FlexCal version"):
        assert value in table, value
    assert "Coverage vs expected" in html and "Width / split-CP width" in html


def test_show_table_uses_readable_labels_placeholder_and_says_it_scrolls():
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    def page():
        import numpy as np
        import pandas as pd

        from app.tables import show_table

        wide = pd.DataFrame({k: [0.5, np.nan] for k in ("coverage", "coverage_gap", "mean_width", "width_ratio",
                                                         "spearman", "pearson", "auroc", "miscalibration_area")})
        show_table(wide, key="wide")
        show_table(pd.DataFrame({"coverage": [0.9]}), key="narrow")

    at = AppTest.from_function(page).run()
    assert not at.exception
    wide, narrow = at.dataframe
    assert list(wide.value.columns)[:3] == ["Coverage", "Coverage − confidence", "Mean width (eV/Å)"]
    assert wide.value.shape == (2, 8)
    assert wide.proto.placeholder == MISSING
    captions = [c.value for c in at.caption]
    assert len(captions) == 1 and captions[0].startswith("8 columns: scroll sideways")
    assert list(narrow.value.columns) == ["Coverage"]
