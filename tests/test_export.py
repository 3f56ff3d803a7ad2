"""core.export (per-site tables, annotated extxyz, calibrator bytes, HTML report) and core.synthetic_demo."""

from __future__ import annotations

import io

import numpy as np
import pytest

from core.export import (
    ERROR_ARRAY,
    WIDTH_ARRAY,
    annotated_extxyz,
    calibrator_bytes,
    csv_bytes,
    evaluation_frame,
    html_report,
    parquet_bytes,
    provenance_frame,
    site_frame,
    site_parts,
    table_bytes,
)
from core.sites import SiteTable


def _structures():
    from ase import Atoms

    a = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    b = Atoms("CO", positions=[[0, 0, 0], [1.13, 0, 0]])
    for k, at in enumerate((a, b)):
        at.info["REF_energy"] = -1.0 - k
        at.info["config_type"] = "mol"
        at.arrays["REF_forces"] = np.full((len(at), 3), 0.1 * (k + 1))
    return [a, b]


def _sites(skip_atom: bool = False):
    """Sites of both structures; with ``skip_atom`` atom 1 of structure 0 has no row."""
    sid = np.array([0, 0, 0, 1, 1])
    atom = np.array([0, 1, 2, 0, 1])
    keep = np.ones(5, bool)
    if skip_atom:
        keep[1] = False
    fp = np.arange(15, dtype=float).reshape(5, 3) / 10
    fr = np.zeros((5, 3))
    return SiteTable.from_arrays(
        descriptors=np.arange(10, dtype=float).reshape(5, 2)[keep], errors=None,
        species=np.array([1, 1, 8, 6, 8])[keep],
        structure_ids=sid[keep], atom_index=atom[keep], forces_pred=fp[keep], forces_ref=fr[keep],
        structure_info={"structure_id": np.array([0, 1]), "config_type": np.array(["mol", "mol"])},
    )


def test_site_frame_columns_and_coverage_flags():
    sites = _sites()
    w = np.array([1.0, 0.0, 10.0, 10.0, 0.1])
    df = site_frame(sites, {"flexible": w}, confidence=0.9, split=np.array(["test"] * 5))
    assert list(df["symbol"]) == ["H", "H", "O", "C", "O"]
    assert np.allclose(df["error"], sites.errors)
    assert list(df["covered_flexible"]) == list(sites.errors <= w)
    assert {"force_pred_x", "force_ref_z", "config_type", "confidence", "split"} <= set(df.columns)
    assert "d_0" not in df.columns
    assert "d_1" in site_frame(sites, include_descriptors=True).columns


def test_site_frame_rejects_wrong_width_shape():
    with pytest.raises(ValueError, match=r"widths\['knn'\]: expected shape \(5,\).*got \(4,\)"):
        site_frame(_sites(), {"knn": np.ones(4)})


def test_csv_and_parquet_round_trip():
    import pandas as pd

    df = site_frame(_sites(), {"split": np.full(5, 0.3)})
    back = pd.read_csv(io.BytesIO(csv_bytes(df)))
    assert back.shape == df.shape and np.allclose(back["width_split"], 0.3)
    pq = pd.read_parquet(io.BytesIO(parquet_bytes(df)))
    assert pq.equals(df)


def test_annotated_extxyz_round_trip_with_missing_sites(tmp_path):
    from ase.io import read

    structures, sites = _structures(), _sites(skip_atom=True)
    widths = np.linspace(0.1, 0.4, len(sites))
    path = tmp_path / "a.extxyz"
    path.write_bytes(annotated_extxyz(structures, sites, widths, method="flexible", confidence=0.9))
    frames = read(path, index=":")
    assert len(frames) == 2
    w0, e0 = frames[0].arrays[WIDTH_ARRAY], frames[0].arrays[ERROR_ARRAY]
    assert np.isnan(w0[1]) and np.isnan(e0[1])  # atom without a site row
    assert np.allclose(w0[[0, 2]], widths[:2]) and np.allclose(e0[[0, 2]], sites.errors[:2])
    assert frames[1].info["flexcal_method"] == "flexible"
    assert frames[1].info["flexcal_confidence"] == pytest.approx(0.9)
    assert frames[1].info["flexcal_max_width"] == pytest.approx(widths[-1])
    assert np.allclose(frames[1].arrays["REF_forces"], 0.2)  # labels travel along
    # only some structures
    one = read(io.StringIO(annotated_extxyz(structures, sites, widths, structure_ids=[1]).decode()),
               index=":", format="extxyz")
    assert len(one) == 1 and len(one[0]) == 2


def test_annotated_extxyz_bad_input_messages():
    structures, sites = _structures(), _sites()
    with pytest.raises(ValueError, match=r"widths: expected shape \(5,\)"):
        annotated_extxyz(structures, sites, np.ones(3))
    with pytest.raises(ValueError, match="structure 7 has no sites"):
        annotated_extxyz(structures, sites, np.ones(5), structure_ids=[7])
    with pytest.raises(ValueError, match="outside the 1 structures given"):
        annotated_extxyz(structures[:1], sites, np.ones(5))


def test_calibrator_bytes_load_back(tmp_path):
    from core.calibration import load_calibrator, make_calibrator

    rng = np.random.default_rng(0)
    n = 200
    sites = SiteTable.from_arrays(descriptors=rng.normal(size=(n, 3)), errors=rng.gamma(2.0, 0.05, n),
                                  species=np.full(n, 6), structure_ids=np.repeat(np.arange(20), 10))
    cal = make_calibrator("split", confidence=0.9).fit(sites)
    data = calibrator_bytes(cal)
    assert data[:2] == b"PK"  # one .npz (zip) file
    path = tmp_path / "c.npz"
    path.write_bytes(data)
    assert np.allclose(load_calibrator(path).predict(sites), cal.predict(sites))


def test_html_report_is_self_contained():
    import pandas as pd
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=[0, 1], y=[1, 0]))
    html = html_report([("a figure", fig)], [("a table", pd.DataFrame({"coverage": [0.9]}))], title="T")
    assert html.startswith("<!DOCTYPE html>") and "a figure" in html and "a table" in html
    assert '<script src="http' not in html


def _labelled(n_structures=30, per=10, seed=0):
    rng = np.random.default_rng(seed)
    n = n_structures * per
    return SiteTable.from_arrays(descriptors=rng.normal(size=(n, 3)), errors=rng.gamma(2.0, 0.05, n),
                                 species=np.full(n, 6), structure_ids=np.repeat(np.arange(n_structures), per))


def test_site_parts_names_the_part_of_every_site():
    sites = _labelled(6, 2)
    parts = site_parts(sites, {"calibration": sites.select_structures([0, 1]), "test": sites.select_structures([4])})
    assert parts.tolist() == ["calibration"] * 4 + ["unused"] * 4 + ["test"] * 2 + ["unused"] * 2


def test_evaluation_frame_widths_and_parts():
    from core.evaluation import evaluate

    sites = _labelled()
    cal, test = sites.select_structures(np.arange(20)), sites.select_structures(np.arange(20, 30))
    ev = evaluate(cal, {"test": test}, ["split", "mondrian"], confidence=0.8)
    frame = evaluation_frame(ev, sites)
    assert len(frame) == len(sites)
    assert (frame["split"] == "calibration").sum() == len(cal) and (frame["split"] == "test").sum() == len(test)
    on_test = frame["split"] == "test"
    assert np.allclose(frame.loc[on_test, "width_split"], ev.widths_of("split"))
    assert list(frame.loc[on_test, "covered_split"]) == list(test.errors <= ev.widths_of("split"))
    assert np.allclose(frame["confidence"], 0.8)
    assert len(evaluation_frame(ev)) == len(cal)  # default: the calibration sites


def test_table_bytes_formats_and_bad_format_message():
    import pandas as pd

    df = site_frame(_sites(), {"split": np.full(5, 0.3)})
    assert pd.read_csv(io.BytesIO(table_bytes(df, "csv"))).shape == df.shape
    assert pd.read_parquet(io.BytesIO(table_bytes(df, "parquet"))).equals(df)
    with pytest.raises(ValueError, match=r"fmt: expected one of \('csv', 'parquet'\), got 'xlsx'"):
        table_bytes(df, "xlsx")


def test_provenance_frame_records_fields_date_and_version():
    import datetime

    from core import __version__

    when = datetime.datetime(2025, 1, 2, 3, 4, tzinfo=datetime.timezone.utc)
    table = provenance_frame({"dataset": "data.xyz", "methods": ["flexible", "split"], "seed": 3, "model": None},
                             now=when)
    assert table.loc["dataset", "value"] == "data.xyz"
    assert table.loc["methods", "value"] == "flexible, split"
    assert table.loc["seed", "value"] == "3" and table.loc["model", "value"] == "—"
    assert table.loc["date", "value"] == "2025-01-02 03:04 UTC"
    assert table.loc["FlexCal version", "value"] == str(__version__)
    html = html_report([], [("What produced this report", table)], title="T")
    assert "2025-01-02 03:04 UTC" in html and "flexible, split" in html


# ------------------------------------------------------------------------ synthetic demo
def test_synthetic_demo_is_deterministic_and_labelled():
    from core.synthetic_demo import CONFIG_TYPES, synthetic_extxyz_bytes, synthetic_structures

    assert synthetic_extxyz_bytes(6, seed=3) == synthetic_extxyz_bytes(6, seed=3)
    assert synthetic_extxyz_bytes(6, seed=3) != synthetic_extxyz_bytes(6, seed=4)
    frames = synthetic_structures(6)
    assert [a.info["config_type"] for a in frames] == list(CONFIG_TYPES) * 2
    assert len(frames[2]) == 31  # the vacancy frame lost one atom
    assert all(a.arrays["REF_forces"].shape == (len(a), 3) for a in frames)
    with pytest.raises(ValueError, match="n_structures: expected an integer >= 3"):
        synthetic_structures(2)


def test_synthetic_potential_errors_follow_the_environment():
    from scipy.stats import spearmanr

    from core.synthetic_demo import SyntheticPotential, noise_scale, synthetic_site_table, synthetic_structures

    frames = synthetic_structures(12, seed=1)
    pot = SyntheticPotential()
    out = pot.compute(frames[:2])
    n = len(frames[0]) + len(frames[1])
    assert out.forces.shape == (n, 3) and out.descriptors.shape == (n, 16) and out.energies.shape == (2,)
    assert np.allclose(pot.compute(frames[:2]).forces, out.forces)  # deterministic
    sites = synthetic_site_table(frames, pot)
    sigma = np.concatenate([noise_scale(a) for a in frames])
    assert spearmanr(sigma, sites.errors).statistic > 0.5
    bad = frames[0].copy()
    bad.numbers[0] = 8
    with pytest.raises(ValueError, match="knows only Cu and Au"):
        pot.compute([bad])
