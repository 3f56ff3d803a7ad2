"""Applying a saved calibration: layout records, annotate, run_predict, the demo trajectory, the Apply page."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.apply import Annotation, annotate, annotate_sites, level_suffix, run_predict
from core.calibration import load_calibrator, make_calibrator
from core.calibration.base import LayoutWarning
from core.sites import SiteTable

ROOT = Path(__file__).resolve().parent.parent
IDENT_A = "a" * 64
IDENT_B = "b" * 64


def _sites(n_structures=60, atoms=5, d=8, seed=0, labelled=True, meta=None, shuffle=False):
    """Synthetic sites: errors grow with |descriptor 0|, structure ids optionally shuffled."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n_structures), atoms)
    x = rng.normal(size=(ids.size, d))
    errors = np.abs(rng.normal(size=ids.size)) * (0.05 + 0.1 * np.abs(x[:, 0]))
    species = rng.choice([1, 6, 8], size=ids.size)
    if shuffle:
        perm = rng.permutation(ids.size)
        ids, x, errors, species = ids[perm], x[perm], errors[perm], species[perm]
    meta = {"potential": "A", "potential_identity": IDENT_A, "n_descriptors": d} if meta is None else meta
    return SiteTable.from_arrays(descriptors=x, errors=errors if labelled else None, species=species,
                                 structure_ids=ids, meta=meta)


# ------------------------------------------------------------------------ layout record
@pytest.mark.parametrize("method", ["split", "knn", "mondrian", "flexible", "flexible-ood"])
def test_fit_records_the_layout_and_the_file_keeps_it(method, tmp_path):
    options = {"max_epochs": 3} if method.startswith("flexible") else {}
    cal = make_calibrator(method, **options)
    assert cal.layout_ is None
    cal.fit(_sites())
    assert cal.layout_ == {"potential": "A", "potential_identity": IDENT_A, "n_descriptors": 8}
    path = cal.save(tmp_path / "cal.npz")
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"]))
    assert meta["layout"] == cal.layout_
    assert load_calibrator(path).layout_ == cal.layout_
    assert cal.copy().layout_ == cal.layout_
    assert cal.clone().layout_ is None  # an unfitted copy has no layout
    # refitting on other sites records their layout
    assert cal.clone().fit(_sites(meta={"potential": "B"})).layout_ == {
        "potential": "B", "potential_identity": None, "n_descriptors": 8}


def test_check_layout_refuses_another_descriptor_width():
    cal = make_calibrator("knn").fit(_sites(d=8))
    other = _sites(d=12, meta={"potential": "big", "potential_identity": IDENT_B})
    with pytest.raises(ValueError) as exc:
        cal.check_layout(other)
    msg = str(exc.value)
    assert msg.startswith("sites: calibrator was fitted on 8 descriptor columns from model A (identity aaaaaaaaaaaa…)")
    assert "these sites have 12 from model big (identity bbbbbbbbbbbb…)" in msg


def test_check_layout_warns_on_another_model_of_the_same_width_and_strict_refuses():
    cal = make_calibrator("split").fit(_sites())
    other = _sites(seed=1, meta={"potential": "B", "potential_identity": IDENT_B})
    with pytest.warns(LayoutWarning, match="fitted on 8 descriptor columns from model A .* these sites have 8 from model B"):
        cal.check_layout(other)
    with pytest.raises(ValueError, match="not calibrated"):
        cal.check_layout(other, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cal.check_layout(_sites(seed=2))                          # same model: silent
        cal.check_layout(_sites(seed=2, meta={}))                 # identity unknown: nothing to compare
    with pytest.raises(TypeError, match="sites: expected a SiteTable"):
        cal.check_layout(np.zeros((3, 8)))


def test_old_files_without_a_layout_load_and_skip_the_check(tmp_path):
    cal = make_calibrator("split").fit(_sites())
    meta, arrays = cal.get_state()
    meta.pop("layout")
    old = type(cal).from_state(meta, arrays)
    assert old.layout_ is None
    old.check_layout(_sites(d=3))  # nothing recorded: nothing to refuse


@pytest.mark.parametrize("layout, expected", [
    ("64 columns", "layout: expected a JSON object"),
    ({"n_descriptors": 0}, "layout.n_descriptors: expected an integer >= 1, got 0"),
    ({"n_descriptors": "64"}, "layout.n_descriptors"),
    ({"n_descriptors": 8, "potential_identity": 5}, "layout.potential_identity: expected a string"),
])
def test_a_tampered_layout_is_a_clear_error_naming_the_file(layout, expected, tmp_path):
    path = make_calibrator("split").fit(_sites()).save(tmp_path / "cal.npz")
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    meta = json.loads(str(data["__meta__"]))
    meta["layout"] = layout
    data["__meta__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "bad.npz", **data)
    with pytest.raises(ValueError) as exc:
        load_calibrator(tmp_path / "bad.npz")
    assert str(exc.value).startswith(str(tmp_path / "bad.npz")) and expected in str(exc.value)


# ------------------------------------------------------------------------ annotate_sites
class _Domain:
    """A fitted-domain stand-in: sites with descriptor 0 above a cut are out of domain."""

    def __init__(self, cut):
        self.cut = cut

    def flags(self, sites):
        return sites.descriptors[:, 0] > self.cut

    def score(self, sites):
        return np.asarray(sites.descriptors[:, 0], dtype=np.float64)


def _frame_truth(sites, widths):
    df = pd.DataFrame({"frame": sites.structure_ids, "atom": sites.atom_index, "w": widths,
                       "e": sites.errors if sites.errors is not None else np.nan})
    g = df.groupby("frame")
    atom_of_max = df.loc[g["w"].idxmax(), ["frame", "atom"]].set_index("frame")["atom"]
    return g["w"].max(), g["w"].mean(), g.size(), atom_of_max, g["e"].max(), g.apply(lambda t: np.mean(t.e <= t.w))


@pytest.mark.parametrize("shuffle", [False, True])
def test_annotate_sites_per_frame_values_match_a_groupby(shuffle):
    cal = make_calibrator("knn").fit(_sites(seed=3))
    sites = _sites(n_structures=40, seed=4, shuffle=shuffle)
    ann = annotate_sites(sites, cal, threshold=0.25, levels=[0.5, 0.99])
    widths = cal.predict(sites)
    np.testing.assert_array_equal(ann.widths, widths)
    np.testing.assert_allclose(ann.widths_levels, cal.predict_levels(sites, [0.5, 0.99]))
    w_max, w_mean, n, atom, e_max, cov = _frame_truth(sites, widths)
    np.testing.assert_array_equal(ann.frame_ids, np.arange(40))
    np.testing.assert_array_equal(ann.max_width, w_max.to_numpy())
    np.testing.assert_allclose(ann.mean_width, w_mean.to_numpy(), rtol=1e-12)
    np.testing.assert_array_equal(ann.n_atoms, n.to_numpy())
    np.testing.assert_array_equal(ann.max_width_atom, atom.to_numpy())
    np.testing.assert_array_equal(ann.max_error, e_max.to_numpy())
    np.testing.assert_allclose(ann.coverage, cov.to_numpy())
    np.testing.assert_array_equal(ann.flagged, w_max.to_numpy() > 0.25)
    assert 0 < ann.flagged.sum() < 40, "the threshold should split these frames"
    assert ann.frame_ood is None and np.isnan(ann.ood_fraction).all()
    s = ann.summary()
    assert s["frames"] == 40 and s["sites"] == 200 and s["flagged_frames"] == int(ann.flagged.sum())
    assert s["flagged"] == np.flatnonzero(w_max.to_numpy() > 0.25).tolist()
    assert s["coverage"] == pytest.approx(np.mean(sites.errors <= widths))
    assert set(s["coverage_levels"]) == {"0.5", "0.99"} and s["threshold"] == 0.25
    json.dumps(s)
    table = ann.frame_table()
    assert list(table.columns[:8]) == ["frame", "n_atoms", "max_width", "mean_width", "max_width_atom",
                                       "flagged", "ood", "ood_fraction"]
    assert {"max_width_p50", "max_width_p99", "max_error", "coverage"} <= set(table.columns)
    np.testing.assert_allclose(table["max_width_p99"], pd.Series(ann.widths_levels[:, 1]).groupby(
        sites.structure_ids).max().to_numpy())
    sites_df = ann.site_table()
    assert list(sites_df.columns) == ["frame", "atom_index", "species", "symbol", "width", "width_p50", "width_p99",
                                      "error", "covered"]
    assert len(sites_df) == 200 and set(sites_df.symbol) <= {"H", "C", "O"}


def test_domain_flags_make_frames_out_of_domain_and_flagged():
    cal = make_calibrator("split").fit(_sites(seed=3))
    sites = _sites(n_structures=30, seed=5)
    ann = annotate_sites(sites, cal, domain=_Domain(1.5))
    ood = sites.descriptors[:, 0] > 1.5
    np.testing.assert_array_equal(ann.ood, ood)
    frac = pd.Series(ood).groupby(sites.structure_ids).mean().to_numpy()
    np.testing.assert_allclose(ann.ood_fraction, frac)
    np.testing.assert_array_equal(ann.frame_ood, frac > 0)
    np.testing.assert_array_equal(ann.flagged, frac > 0)  # no threshold: only out-of-domain frames
    assert ann.summary()["ood_frames"] == int((frac > 0).sum())
    assert ann.site_table()["ood_score"].to_numpy() == pytest.approx(sites.descriptors[:, 0])
    # a threshold adds frames, never removes out-of-domain ones
    both = ann.with_threshold(0.05)
    assert both.flagged.all() and both.threshold == 0.05
    np.testing.assert_array_equal(ann.with_threshold(None).flagged, frac > 0)


def test_the_calibrators_own_domain_is_used():
    cal = make_calibrator("split").fit(_sites(seed=3))
    cal.domain_ = _Domain(0.0)
    ann = annotate_sites(_sites(seed=6), cal)
    assert ann.ood is not None and ann.ood.any() and not ann.ood.all()


def test_unlabelled_sites_have_no_errors_or_coverage():
    cal = make_calibrator("split").fit(_sites(seed=3))
    ann = annotate_sites(_sites(seed=7, labelled=False), cal, threshold=10.0)
    assert not ann.labelled and ann.max_error is None and ann.coverage is None
    assert "coverage" not in ann.summary() and not ann.flagged.any()
    assert "max_error" not in ann.frame_table() and "error" not in ann.site_table()
    # old-style unlabelled tables (errors stored as zeros, meta["labelled"] False) count as unlabelled
    zeros = _sites(seed=7, meta={"labelled": False, "n_descriptors": 8})
    zeros = SiteTable.from_arrays(descriptors=zeros.descriptors, errors=np.zeros(len(zeros)), species=zeros.species,
                                  structure_ids=zeros.structure_ids, meta=zeros.meta)
    assert not annotate_sites(zeros, cal).labelled


@pytest.mark.parametrize("kwargs, error, match", [
    ({"threshold": 0.0}, ValueError, "threshold: expected a number in \\(0, inf\\), got 0.0"),
    ({"threshold": -1}, ValueError, "threshold:"),
    ({"threshold": "0.3"}, ValueError, "threshold:"),
    ({"levels": [0.5, 1.2]}, ValueError, "levels: every level must lie in \\(0, 1\\), got 1.2"),
])
def test_annotate_sites_bad_arguments(kwargs, error, match):
    cal = make_calibrator("split").fit(_sites(seed=3))
    with pytest.raises(error, match=match):
        annotate_sites(_sites(seed=8), cal, **kwargs)


def test_annotate_sites_refuses_a_calibrator_of_another_width_and_non_calibrators():
    cal = make_calibrator("knn").fit(_sites(seed=3, d=8))
    with pytest.raises(ValueError, match="fitted on 8 descriptor columns"):
        annotate_sites(_sites(seed=3, d=4), cal)
    with pytest.raises(TypeError, match="calibrator: expected a fitted FlexCal Calibrator"):
        annotate_sites(_sites(seed=3), object())
    with pytest.raises(TypeError, match="sites: expected a SiteTable"):
        annotate_sites("sites.npz", cal)


def test_level_suffix_names():
    assert level_suffix(0.95) == "p95" and level_suffix(0.975) == "p97_5" and level_suffix(0.5) == "p50"


# ------------------------------------------------------------------ annotate with a real MACE model
class _Counting:
    """A Potential proxy that counts forward passes."""

    def __init__(self, potential):
        self._potential = potential
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._potential, name)

    def compute(self, structures):
        self.calls += 1
        return self._potential.compute(structures)


@pytest.fixture(scope="module")
def tiny_setup(make_tiny_mace_model):
    from tests.conftest import make_tiny_structures
    from core.featurize import featurize
    from core.potentials import load_potential

    potential = load_potential(make_tiny_mace_model(seed=0))
    train = make_tiny_structures(1) + make_tiny_structures(2) + make_tiny_structures(3)
    cal = make_calibrator("knn").fit(featurize(train, potential))
    return potential, cal


def test_annotate_structures_round_trip_through_extxyz_and_tables(tiny_setup, tiny_structures, tmp_path):
    from ase.io import read

    potential, cal = tiny_setup
    counting = _Counting(potential)
    ann = annotate(tiny_structures, counting, cal, levels=[0.99], batch_size=4)
    assert counting.calls == 3, "one forward pass per batch of 4 structures"
    assert isinstance(ann, Annotation) and ann.labelled and ann.n_frames == 12
    threshold = float(np.median(ann.max_width))
    ann = ann.with_threshold(threshold)
    assert 0 < ann.flagged.sum() < 12
    out = ann.structures()
    assert len(out) == 12 and out[0] is not tiny_structures[0] and out[0].calc is None
    assert "flexcal_width" not in tiny_structures[0].arrays, "the inputs are not modified"
    path = ann.write_extxyz(tmp_path / "annotated.xyz")
    back = read(path, ":")
    for i, atoms in enumerate(back):
        rows = ann.sites.structure_ids == i
        np.testing.assert_allclose(atoms.arrays["flexcal_width"], ann.widths[rows], rtol=1e-6)
        np.testing.assert_allclose(atoms.arrays["flexcal_width_p99"], ann.widths_levels[rows, 0], rtol=1e-6)
        np.testing.assert_allclose(atoms.arrays["flexcal_error"], ann.errors[rows], rtol=1e-6)
        assert "flexcal_ood" not in atoms.arrays  # no domain score given
        assert atoms.info["flexcal_frame"] == i
        assert bool(atoms.info["flexcal_flagged"]) == bool(ann.flagged[i])
        assert atoms.info["flexcal_max_width"] == pytest.approx(ann.max_width[i], rel=1e-6)
        assert atoms.info["flexcal_threshold"] == pytest.approx(threshold)
        np.testing.assert_allclose(atoms.arrays["REF_forces"], tiny_structures[i].arrays["REF_forces"], atol=1e-7)
    flagged = read(ann.write_extxyz(tmp_path / "flagged.xyz", flagged_only=True), ":")
    assert [a.info["flexcal_frame"] for a in flagged] == ann.flagged_frames.tolist()
    with pytest.raises(ValueError, match="flagged_only: no frame is flagged"):
        ann.with_threshold(1e9).extxyz_bytes(flagged_only=True)
    with pytest.raises(ValueError, match=r"frames: not annotated here: \[99\]"):
        ann.structures([99])
    for name in ("frames.csv", "frames.parquet"):
        written = ann.write_table(tmp_path / name)
        df = pd.read_csv(written) if name.endswith(".csv") else pd.read_parquet(written)
        np.testing.assert_allclose(df["max_width"], ann.max_width, rtol=1e-9)
        assert df["flagged"].tolist() == ann.flagged.tolist()
    sites_df = pd.read_csv(ann.write_table(tmp_path / "sites.csv", which="sites"))
    assert len(sites_df) == len(ann.sites)
    with pytest.raises(ValueError, match="expected a .csv or .parquet file name, got suffix '.xlsx'"):
        ann.write_table(tmp_path / "frames.xlsx")
    assert not (tmp_path / "frames.xlsx").exists()


def test_unlabelled_structures_are_annotated_without_coverage(tiny_setup, tiny_structures):
    potential, cal = tiny_setup
    for atoms in tiny_structures:
        del atoms.arrays["REF_forces"]
    ann = annotate(tiny_structures, potential, cal)
    assert not ann.labelled and ann.sites.errors is None and "coverage" not in ann.summary()
    assert "flexcal_error" not in ann.structures([0])[0].arrays


def test_a_calibrator_of_another_model_is_refused_before_any_forward_pass(tiny_setup, make_tiny_mace_model,
                                                                          tiny_structures):
    from core.potentials import load_potential

    _, cal = tiny_setup
    wide = _Counting(load_potential(make_tiny_mace_model(seed=0, hidden_irreps="16x0e + 16x1o")))
    with pytest.raises(ValueError, match=r"fitted on 16 descriptor columns .*; these sites have 32 from model"):
        annotate(tiny_structures, wide, cal)
    assert wide.calls == 0
    other = _Counting(load_potential(make_tiny_mace_model(seed=1)))
    with pytest.raises(ValueError, match="not calibrated"):
        annotate(tiny_structures, other, cal, strict=True)
    assert other.calls == 0
    with pytest.warns(LayoutWarning) as record:
        ann = annotate(tiny_structures, other, cal)
    assert len([w for w in record if issubclass(w.category, LayoutWarning)]) == 1, "warned once, not twice"
    assert ann.n_frames == 12


# ---------------------------------------------------------------------------- run_predict
@pytest.fixture
def predict_files(tiny_setup, tiny_mace_model, tiny_structures, tmp_path):
    from ase.io import write

    _, cal = tiny_setup
    data = tmp_path / "data.xyz"
    write(data, tiny_structures, format="extxyz")
    return data, Path(tiny_mace_model), cal.save(tmp_path / "cal.npz")


def test_run_predict_writes_every_output_and_returns_the_summary(predict_files, tmp_path):
    from ase.io import read

    data, model, cal_path = predict_files
    out = tmp_path / "out" / "annotated.xyz"
    summary = run_predict(data, model, cal_path, out, levels=[0.5], threshold=1e-6,
                          site_table=tmp_path / "sites.parquet", flagged_output=tmp_path / "flagged.xyz")
    assert summary["frames"] == 12 and summary["flagged_frames"] == 12 and summary["labelled"]
    assert 0.0 <= summary["coverage"] <= 1.0 and set(summary["coverage_levels"]) == {"0.5"}
    assert summary["outputs"] == {"extxyz": str(out), "table": str(out.with_suffix(".csv")),
                                  "site_table": str(tmp_path / "sites.parquet"), "flagged": str(tmp_path / "flagged.xyz")}
    frames = read(out, ":")
    assert len(frames) == 12 and "flexcal_width_p50" in frames[0].arrays
    table = pd.read_csv(out.with_suffix(".csv"))
    assert len(table) == 12 and table["flagged"].all()
    assert len(read(tmp_path / "flagged.xyz", ":")) == 12
    assert len(pd.read_parquet(tmp_path / "sites.parquet")) == sum(len(a) for a in frames)
    json.dumps(summary)


def test_run_predict_checks_paths_before_loading_the_model(predict_files, tmp_path, monkeypatch):
    import core.potentials

    data, model, cal_path = predict_files

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded before the outputs are checked")

    monkeypatch.setattr(core.potentials, "load_potential", no_model)
    with pytest.raises(ValueError, match="extxyz: .*data.xyz is also an input"):
        run_predict(data, model, cal_path, data)
    with pytest.raises(ValueError, match="table: .*o.csv is also an input"):
        run_predict(data, model, cal_path, tmp_path / "o.csv")  # the default table would be the output itself
    with pytest.raises(ValueError, match="table: .*expected a .csv or .parquet file name"):
        run_predict(data, model, cal_path, tmp_path / "o.xyz", table=tmp_path / "frames.txt")
    with pytest.raises(ValueError, match="is a directory"):
        run_predict(data, model, cal_path, tmp_path)
    with pytest.raises(ValueError, match="site_table: .*o.csv is also an input"):
        run_predict(data, model, cal_path, tmp_path / "o.xyz", site_table=tmp_path / "o.csv")
    (tmp_path / "old.xyz").write_text("keep me")
    with pytest.raises(ValueError, match="extxyz: .*old.xyz exists; remove it or choose another name"):
        run_predict(data, model, cal_path, tmp_path / "old.xyz", overwrite=False)
    assert (tmp_path / "old.xyz").read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="calibrator: .*missing.npz: no such file"):
        run_predict(data, model, tmp_path / "missing.npz", tmp_path / "o.xyz")
    with pytest.raises(FileNotFoundError, match="data: .*nothing.xyz: no such file"):
        run_predict(tmp_path / "nothing.xyz", model, cal_path, tmp_path / "o.xyz")
    assert not (tmp_path / "o.xyz").exists() and not (tmp_path / "o.csv").exists()


def test_run_predict_refuses_a_calibrator_of_another_descriptor_width(predict_files, make_tiny_mace_model, tmp_path):
    data, _, cal_path = predict_files
    wide = make_tiny_mace_model(seed=0, hidden_irreps="16x0e + 16x1o")
    with pytest.raises(ValueError, match="fitted on 16 descriptor columns"):
        run_predict(data, wide, cal_path, tmp_path / "o.xyz")
    assert not (tmp_path / "o.xyz").exists()


def test_a_fitted_domain_score_gives_calibrated_site_and_frame_flags():
    from core.domain import DomainScore

    calib = _sites(seed=3)
    domain = DomainScore(5).fit(calib)
    cal = make_calibrator("split").fit(calib)
    test = _sites(n_structures=30, seed=9)
    shifted = test.descriptors.copy()
    shifted[test.structure_ids >= 20] += 4.0  # the last ten frames leave the domain
    test = SiteTable.from_arrays(descriptors=shifted, errors=test.errors, species=test.species,
                                 structure_ids=test.structure_ids, meta=test.meta)
    ann = annotate_sites(test, cal, domain=domain)
    np.testing.assert_array_equal(ann.ood, domain.flags(test))
    np.testing.assert_allclose(ann.ood_score, domain.score(test))
    ids, frame_flags = domain.structure_flags(test)
    np.testing.assert_array_equal(ids, ann.frame_ids)
    np.testing.assert_array_equal(ann.frame_ood, frame_flags)
    assert ann.frame_ood[20:].all() and ann.frame_ood[:20].sum() <= 2
    assert "ood_score" in ann.frame_table() and ann.flagged.tolist() == ann.frame_ood.tolist()


# ----------------------------------------------------------------------------- the demo trajectory
@pytest.fixture(scope="module")
def demo_knn():
    from core.apply import demo_calibrator

    return demo_calibrator("knn", "molecule")


def test_the_demo_trajectory_is_shipped_small_and_heats_from_300_to_900_K():
    from core.data import read_dataset
    from core.demo import demo_trajectory_path

    path = demo_trajectory_path()
    assert path.name == "molecule_ethanol_heating.xyz" and path.stat().st_size < 2_000_000
    ds = read_dataset(path, require_labels=False)
    assert len(ds) == 400 and ds.labelled  # GFN2-xTB labels under REF_*
    target = np.array([a.info["temperature_K"] for a in ds.structures])
    np.testing.assert_allclose(target, np.linspace(300.0, 900.0, 400), atol=1e-3)
    assert {a.get_chemical_formula() for a in ds.structures} == {"C2H6O"}
    assert [a.info["md_step"] for a in ds.structures[:2]] == [410, 420]


def test_a_demo_calibrator_sees_the_widths_rise_along_the_heating(demo_knn):
    from core.demo import demo_model_path, demo_trajectory_path
    from core.data import read_dataset

    ds = read_dataset(demo_trajectory_path(), require_labels=False)
    ann = annotate(ds, demo_model_path("molecule"), demo_knn)
    q = ann.n_frames // 4
    assert ann.mean_width[-q:].mean() > 1.5 * ann.mean_width[:q].mean()
    assert ann.max_width[-q:].mean() > 1.5 * ann.max_width[:q].mean()
    # the labels agree: the model's errors grow too, so the widths track something real
    assert ann.max_error[-q:].mean() > 2 * ann.max_error[:q].mean()


def test_ramp_and_trajectory_generator_settings():
    from datasets.generate_trajectory import ramp

    np.testing.assert_allclose(ramp(3), [300.0, 600.0, 900.0])
    with pytest.raises(ValueError, match="n_frames: expected at least 2 frames, got 1"):
        ramp(1)


# ------------------------------------------------------------------------------------ the page
def test_apply_page_annotates_the_demo_trajectory_with_an_uploaded_calibrator(demo_knn, tmp_path):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from app.pages_index import page

    data = demo_knn.save(tmp_path / "knn.npz").read_bytes()
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=180).run()
    at.switch_page(page("apply")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Apply"
    at.radio(key="w_apply_cal_source").set_value("Upload a calibrator file (.npz)").run()
    assert at.button(key="btn_apply_annotate").disabled, "nothing to annotate before a calibrator is loaded"
    at.file_uploader(key="w_apply_cal_upload").set_value(("bad.npz", b"PK\x03\x04junk", "application/octet-stream"))
    at.run()
    assert at.error and at.error[0].value.startswith("Could not use bad.npz: bad.npz: not a readable FlexCal calibrator")
    at.file_uploader(key="w_apply_cal_upload").set_value(("knn.npz", data, "application/octet-stream")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "kNN-normalised CP" in at.markdown[0].value and "64 descriptor columns of molecule" in at.markdown[0].value
    assert at.radio(key="w_apply_model").value == "Demo model: molecule"  # picked from the calibrator's layout
    at.button(key="btn_apply_annotate").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    key, ann = at.session_state["apply_result"]
    assert ann.n_frames == 400 and ann.labelled
    flagged = ann.with_threshold(0.5)
    table = at.dataframe[0].value
    assert 0 < len(table) == int(flagged.flagged.sum()) < 400
    assert (table["Max width (eV/Å)"] > 0.5).all()  # core.tables.column_label("max_width")
    assert at.selectbox(key="w_apply_frame").value == int(flagged.flagged_frames[0])
    # a higher threshold flags fewer frames, without re-running the model
    at.number_input(key="w_apply_threshold").set_value(1.0).run()
    assert len(at.dataframe[0].value) == int(ann.with_threshold(1.0).flagged.sum())
    assert at.session_state["apply_result"][1] is ann


# ------------------------------------------------------------------------------- flexcal predict
def _flexcal(argv, capsys):
    from core.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("flexcal predict: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_cli_predict_json_summary_and_files(predict_files, tmp_path, capsys):
    data, model, cal_path = predict_files
    out = tmp_path / "annotated.xyz"
    rc, stdout, err = _flexcal(["predict", data, "--model", model, "--calibrator", cal_path, "-o", out,
                                "--levels", "0.5,0.99", "--threshold", "1e-6", "--flagged", tmp_path / "f.xyz",
                                "--json", "-q"], capsys)
    assert rc == 0, err
    summary = json.loads(stdout)
    assert summary["frames"] == 12 and summary["flagged_frames"] == 12 and summary["levels"] == [0.5, 0.99]
    assert set(summary["outputs"]) == {"extxyz", "table", "flagged"} and summary["warnings"] == []
    assert out.is_file() and out.with_suffix(".csv").is_file() and (tmp_path / "f.xyz").is_file()
    rc, stdout, _ = _flexcal(["predict", data, "--model", model, "--calibrator", cal_path, "-o", out, "-q"], capsys)
    assert rc == 0 and "frames          12" in stdout and "coverage" in stdout and "flagged frames  0" in stdout


def test_cli_predict_user_errors_exit_2_with_one_line(predict_files, make_tiny_mace_model, tmp_path, capsys,
                                                     monkeypatch):
    data, model, cal_path = predict_files
    wide = make_tiny_mace_model(seed=0, hidden_irreps="16x0e + 16x1o")
    rc, _, err = _flexcal(["predict", data, "--model", wide, "--calibrator", cal_path, "-o", tmp_path / "o.xyz"], capsys)
    assert rc == 2 and "calibrator was fitted on 16 descriptor columns" in _error_line(err)
    assert "these sites have 32 from model" in _error_line(err)
    rc, _, err = _flexcal(["predict", data, "--model", model, "--calibrator", tmp_path / "nope.npz", "-o",
                           tmp_path / "o.xyz"], capsys)
    assert rc == 2 and "calibrator: " in _error_line(err) and "nope.npz: no such file" in _error_line(err)
    import core.potentials

    monkeypatch.setattr(core.potentials, "load_potential", lambda *a, **k: pytest.fail("model loaded"))
    rc, _, err = _flexcal(["predict", data, "--model", model, "--calibrator", cal_path, "-o", data], capsys)
    assert rc == 2 and "is also an input; refusing to overwrite an input file" in _error_line(err)
    rc, _, err = _flexcal(["predict", data, "--model", model, "--calibrator", cal_path, "-o", tmp_path / "o.xyz",
                           "--threshold", "-1"], capsys)
    assert rc == 2 and "expected a positive width in eV/Å" in err
    assert not (tmp_path / "o.xyz").exists()


def test_cli_predict_warns_once_for_a_calibrator_of_another_model(predict_files, make_tiny_mace_model, tmp_path,
                                                                 capsys):
    data, _, cal_path = predict_files
    other = make_tiny_mace_model(seed=1)
    rc, stdout, err = _flexcal(["predict", data, "--model", other, "--calibrator", cal_path, "-o", tmp_path / "o.xyz",
                                "-q"], capsys)
    assert rc == 0 and stdout.count("WARNING: sites: calibrator was fitted on 16 descriptor columns") == 1
    rc, _, err = _flexcal(["predict", data, "--model", other, "--calibrator", cal_path, "-o", tmp_path / "o.xyz",
                           "--strict"], capsys)
    assert rc == 2 and "not calibrated" in _error_line(err)


def test_domain_scores_reuse_given_distances():
    from core.domain import DomainScore

    calib = _sites(seed=3)
    domain = DomainScore(5).fit(calib)
    test = _sites(n_structures=10, seed=11)
    d = domain.distances(test)
    np.testing.assert_array_equal(domain.score(test, distances=d), domain.score(test))
    ids, s = domain.structure_scores(test, distances=d)
    np.testing.assert_array_equal(s, domain.structure_scores(test)[1])
    with pytest.raises(ValueError, match=r"distances: expected shape \(50,\) \(one per site\), got \(3,\)"):
        domain.score(test, distances=d[:3])


# ----------------------------------------------------------------------------------- the figure
def test_plot_width_trajectory_traces_and_checks():
    from core.figures_apply import plot_width_trajectory

    x = np.arange(6)
    w_max = np.array([0.1, 0.2, 0.6, np.inf, 0.3, 0.8])
    w_mean = w_max / 2
    flagged = w_max > 0.5
    fig = plot_width_trajectory(x, w_max, w_mean, threshold=0.5, flagged=flagged)
    names = [t.name for t in fig.data]
    assert names == ["max per frame", "mean per frame", "flagged (3)", "threshold 0.5 eV/Å"]
    assert np.isfinite(np.asarray(fig.data[0].y, dtype=float)).all(), "inf is drawn at the top of the range"
    assert fig.data[0].text[3] == "inf" and list(fig.data[2].customdata) == [2, 3, 5]
    assert list(fig.data[3].y) == [0.5, 0.5] and fig.layout.yaxis.title.text == "width (eV/Å)"
    assert len(plot_width_trajectory(x, w_max, w_mean).data) == 2
    with pytest.raises(ValueError, match="mean_width: expected 6 values"):
        plot_width_trajectory(x, w_max, w_mean[:3])
    with pytest.raises(ValueError, match="threshold: expected a positive finite width"):
        plot_width_trajectory(x, w_max, w_mean, threshold=0)
    with pytest.raises(ValueError, match="flagged: expected a boolean array of shape"):
        plot_width_trajectory(x, w_max, w_mean, flagged=[1, 0])
    with pytest.raises(ValueError, match="max_width: widths must be >= 0 and not NaN"):
        plot_width_trajectory(x, -w_max, w_mean)


def test_apply_page_says_plainly_when_the_model_does_not_fit(demo_knn, tmp_path):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from app.pages_index import page

    data = demo_knn.save(tmp_path / "knn.npz").read_bytes()
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=180).run()
    at.switch_page(page("apply")).run()
    at.radio(key="w_apply_cal_source").set_value("Upload a calibrator file (.npz)").run()
    at.file_uploader(key="w_apply_cal_upload").set_value(("knn.npz", data, "application/octet-stream")).run()
    at.radio(key="w_apply_model").set_value("Demo model: licl").run()  # Li/Cl model, ethanol frames
    at.button(key="btn_apply_annotate").click().run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("Could not annotate:") and "element" in errors[0]
    assert "apply_result" not in at.session_state, "nothing was annotated"


def test_a_shift_aware_calibrator_brings_its_domain_flags_into_the_files(tiny_setup, tiny_structures, tmp_path):
    from ase.io import read

    from core.featurize import featurize
    from tests.conftest import make_tiny_structures

    potential, _ = tiny_setup
    train = sum((make_tiny_structures(s) for s in (1, 2, 3, 4)), [])
    cal = make_calibrator("flexible-ood", max_epochs=5).fit(featurize(train, potential))
    far = [a.copy() for a in tiny_structures]
    for a in far[:6]:  # compress the molecules: environments the calibration never saw
        a.positions *= 0.7
    ann = annotate(far, potential, cal)
    np.testing.assert_array_equal(ann.ood, cal.domain_.flags(ann.sites))
    ids, frame_flags = cal.domain_.structure_flags(ann.sites)
    np.testing.assert_array_equal(ann.frame_ood, frame_flags)
    assert ann.frame_ood[:6].all(), "compressed molecules are out of the calibration domain"
    back = read(ann.write_extxyz(tmp_path / "ood.xyz"), ":")
    for i, atoms in enumerate(back):
        rows = ann.sites.structure_ids == i
        assert atoms.arrays["flexcal_ood"].tolist() == ann.ood[rows].astype(int).tolist()
        assert bool(atoms.info["flexcal_frame_ood"]) == bool(ann.frame_ood[i])
        assert atoms.info["flexcal_ood_score"] == pytest.approx(ann.frame_ood_score[i], rel=1e-6)


def test_annotate_refuses_bad_cheap_arguments_before_any_forward_pass(tiny_setup, tiny_structures):
    potential, cal = tiny_setup
    counting = _Counting(potential)
    with pytest.raises(ValueError, match="threshold: expected a number in"):
        annotate(tiny_structures, counting, cal, threshold=-0.1)
    with pytest.raises(ValueError, match="levels: every level must lie in"):
        annotate(tiny_structures, counting, cal, levels=[0.0])
    with pytest.raises(TypeError, match="structures: expected a Dataset or a list of ase.Atoms, got the path"):
        annotate("traj.xyz", counting, cal)
    assert counting.calls == 0


def test_apply_page_demo_calibrator_is_fitted_on_request_only(demo_knn, monkeypatch):
    pytest.importorskip("streamlit")
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    import core.apply
    from app.pages_index import page

    calls = []

    def fake_demo(method="flexible-ood", family="molecule", **kwargs):
        calls.append((method, family))
        return demo_knn

    monkeypatch.setattr(core.apply, "demo_calibrator", fake_demo)
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=180).run()
        at.switch_page(page("apply")).run()
        assert at.radio(key="w_apply_cal_source").value.startswith("Demo: flexible-ood")
        assert calls == [] and at.button(key="btn_apply_annotate").disabled, "opening the page fits nothing"
        at.button(key="btn_apply_demo_fit").click().run()
        assert not at.exception and calls == [("flexible-ood", "molecule")]
        assert not at.button(key="btn_apply_annotate").disabled
        at.run()  # the fitted demo calibrator stays in the session: no refit
        assert calls == [("flexible-ood", "molecule")] and not at.button(key="btn_apply_annotate").disabled
    finally:
        st.cache_resource.clear()
