"""Demo data: seeded generators, the committed files, core.demo paths and the demo models."""

import json

import numpy as np
import pytest

from core import demo
from datasets import _common

EXPECTED = {
    # family: {config_type: frames}, atoms per frame, training config types
    "licl": ({"crystal_300K": 80, "crystal_600K": 80, "hot_1000K": 40, "defect_600K": 40},
             {16, 14}, ("crystal_300K", "crystal_600K")),
    "surface": ({"clean_300K": 40, "ads_300K": 100, "ads_600K": 50, "highcov_300K": 40},
                {27, 29, 33}, ("clean_300K", "ads_300K")),
    "molecule": ({"md_300K": 300, "md_600K": 100, "md_900K": 100}, {9}, ("md_300K",)),
}


def _arrays(frames, *keys):
    """Positions, numbers, cells and the given labels of frames, as flat arrays."""
    out = [np.concatenate([a.positions for a in frames]),
           np.concatenate([a.numbers for a in frames]),
           np.array([a.cell[:] for a in frames])]
    for k in keys:
        if k.endswith("energy"):
            out.append(np.array([a.info[k] for a in frames]))
        else:
            out.append(np.concatenate([a.arrays[k] for a in frames]))
    return out


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------- generators

def test_assign_splits_by_structure_and_seeded():
    types = ["a"] * 20 + ["b"] * 5
    s0 = _common.assign_splits(types, ("a",), seed=0)
    assert s0 == _common.assign_splits(types, ("a",), seed=0)
    assert s0 != _common.assign_splits(types, ("a",), seed=1)
    assert [s0[:20].count(k) for k in ("train", "valid", "calibration", "test")] == [8, 2, 5, 5]
    assert s0[20:] == ["test"] * 5


def test_surface_generator_is_deterministic():
    from datasets import generate_surface as g

    keys = ("REF_energy", "REF_forces")
    counts = {"ads_300K": (300.0, g.LOW_COVERAGE, 2)}
    f0 = g.generate(seed=0, small=True, counts=counts)
    assert [len(x) for x in f0] == [29, 29]
    a = _arrays(f0, *keys)
    assert _same(a, _arrays(g.generate(seed=0, small=True, counts=counts), *keys))
    assert not _same(a, _arrays(g.generate(seed=1, small=True, counts=counts), *keys))


def test_molecule_generator_is_deterministic():
    from datasets import generate_molecule as g

    keys = ("REF_energy", "REF_forces", "REF2_energy", "REF2_forces")
    counts = {"md_300K": (300.0, 2), "md_900K": (900.0, 1)}
    f0 = g.generate(seed=0, counts=counts, small=True)
    a = _arrays(f0, *keys)
    assert [x.info["config_type"] for x in f0] == ["md_300K", "md_300K", "md_900K"]
    assert _same(a, _arrays(g.generate(seed=0, counts=counts, small=True), *keys))
    assert not _same(a, _arrays(g.generate(seed=1, counts=counts, small=True), *keys))


def test_licl_geometry_is_deterministic_and_defects_are_neutral():
    from datasets import generate_licl as g

    def frames(seed):
        return [g.sample_frame(600.0, 0.005, vac, _common.frame_rng(seed, k, i))
                for k, vac in enumerate((False, True)) for i in range(3)]

    a, b, c = frames(0), frames(0), frames(1)
    assert all(np.array_equal(x.positions, y.positions) and np.array_equal(x.cell, y.cell)
               for x, y in zip(a, b))
    assert not np.array_equal(a[0].positions, c[0].positions)
    assert [len(x) for x in a] == [16, 16, 16, 14, 14, 14]
    assert all((x.numbers == 3).sum() == (x.numbers == 17).sum() for x in a)


# --------------------------------------------------------------------------- committed files

@pytest.fixture(scope="module")
def family_frames():
    return {family: demo.demo_frames(family) for family in demo.FAMILIES}


@pytest.mark.parametrize("family", list(EXPECTED))
def test_committed_dataset_contents(family, family_frames):
    counts, sizes, train_types = EXPECTED[family]
    frames = family_frames[family]
    types = [a.info["config_type"] for a in frames]
    assert {t: types.count(t) for t in set(types)} == counts
    assert {len(a) for a in frames} == sizes
    assert tuple(demo.FAMILIES[family]["train_config_types"]) == train_types
    for energy_key, forces_key in demo.FAMILIES[family]["label_keys"]:
        for i, a in enumerate(frames):
            assert a.calc is None
            assert np.isfinite(a.info[energy_key]), (i, energy_key)
            f = a.arrays[forces_key]
            assert f.shape == (len(a), 3) and np.all(np.isfinite(f)), (i, forces_key)
        norms = np.concatenate([np.linalg.norm(a.arrays[forces_key], axis=1) for a in frames])
        # eV/Å: thermal structures have forces of ~0.1-3 eV/Å, never hundreds (a unit slip)
        assert 0.05 < norms.mean() < 5.0 and norms.max() < 30.0, (energy_key, norms.mean())
        e_per_atom = np.array([a.info[energy_key] / len(a) for a in frames])
        assert np.ptp(e_per_atom) < 5.0                       # eV/atom, one method per key
    for a in frames:
        assert a.info["split"] in demo.SPLITS
        if a.info["split"] in ("train", "valid", "calibration"):
            assert a.info["config_type"] in train_types
    splits = [a.info["split"] for a in frames]
    assert all(splits.count(s) > 0 for s in demo.SPLITS)


def test_transfer_set_has_both_levels_of_theory(family_frames):
    frames = family_frames["molecule"]
    f1 = np.concatenate([a.arrays["REF_forces"] for a in frames])
    f2 = np.concatenate([a.arrays["REF2_forces"] for a in frames])
    assert not np.allclose(f1, f2)
    # the same structures, two related methods: forces strongly correlated, not identical
    assert np.corrcoef(f1.ravel(), f2.ravel())[0, 1] > 0.8
    assert all("REF2_energy" not in a.info for a in family_frames["licl"])


def test_dataset_files_are_small():
    total = sum(p.stat().st_size for p in demo.demo_datasets().values())
    assert total < 5e6
    models = sum(p.stat().st_size for p in demo.demo_models().values())
    assert models < 5e6


# --------------------------------------------------------------------------- core.demo

def test_demo_paths():
    paths = demo.demo_datasets()
    assert list(paths) == ["licl", "surface", "molecule"]
    assert all(p.is_file() and p.suffix == ".xyz" for p in paths.values())
    assert demo.demo_model_path() == demo.demo_model_path(demo.DEFAULT_FAMILY)
    assert demo.demo_model_path("molecule").name == "molecule.model"
    assert demo.demo_info("surface")["reference"] == "emt"


def test_demo_training_set_is_the_train_split():
    train = demo.demo_training_set("molecule")
    assert len(train) == 120
    assert {a.info["split"] for a in train} == {"train"}
    assert {a.info["config_type"] for a in train} == {"md_300K"}
    cal = demo.demo_frames("molecule", split="calibration")
    assert len(cal) == 75
    assert len(demo.demo_frames("molecule", config_type="md_900K")) == 100


def test_demo_bad_input_and_missing_files(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown demo family 'x'; valid: licl, surface, molecule"):
        demo.demo_model_path("x")
    with pytest.raises(ValueError, match="unknown split 'training'"):
        demo.demo_frames("licl", split="training")
    with pytest.raises(ValueError, match="no frames of config_type 'md_1K'"):
        demo.demo_frames("molecule", config_type="md_1K")
    monkeypatch.setattr(demo, "demo_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="demo dataset 'licl' not found"):
        demo.demo_datasets()
    with pytest.raises(FileNotFoundError, match="demo model 'surface' not found"):
        demo.demo_model_path("surface")


# --------------------------------------------------------------------------- demo models

@pytest.mark.slow
@pytest.mark.parametrize("family", list(EXPECTED))
def test_demo_model_reproduces_recorded_errors(family):
    from datasets.train_demo_model import METRICS_FILE, force_errors, predict

    recorded = json.loads(METRICS_FILE.read_text())[family]
    frames = demo.demo_frames(family, split="test", config_type=EXPECTED[family][2][0])
    energies, forces = predict(demo.demo_model_path(family), frames)
    assert energies.shape == (len(frames),) and forces.shape == (sum(map(len, frames)), 3)
    got = force_errors(frames, forces)
    want = recorded["by_split_config_type"][f"test/{EXPECTED[family][2][0]}"]
    assert got["n_atoms"] == want["n_atoms"]
    assert got["force_mae"] == pytest.approx(want["force_mae"], rel=1e-6)
    assert got["force_rmse"] == pytest.approx(want["force_rmse"], rel=1e-6)
    # a useful model: in-domain force error well below the force scale itself
    assert got["force_mae"] < 0.5 * want["mean_ref_force_norm"]
