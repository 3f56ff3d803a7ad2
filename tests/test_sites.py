"""SiteTable: construction, validation, by-structure splits, selection, save/load."""

import json

import numpy as np
import pytest

from core.sites import SiteTable, concatenate, split_structure_ids


def make_table(n_structures=6, atoms=3, d=4, seed=0, **extra):
    rng = np.random.default_rng(seed)
    n = n_structures * atoms
    return SiteTable.from_arrays(
        descriptors=rng.normal(size=(n, d)),
        errors=rng.random(n),
        species=np.tile([1, 6, 8], n // 3 + 1)[:n],
        structure_ids=np.repeat(np.arange(n_structures), atoms),
        **extra,
    )


def test_from_arrays_shapes_and_running_atom_index():
    t = make_table()
    assert len(t) == 18
    assert t.n_structures == 6 and t.n_descriptors == 4
    assert t.atom_index.tolist() == [0, 1, 2] * 6
    assert t.unique_species.tolist() == [1, 6, 8]
    assert t.structure_info["n_atoms"].tolist() == [3] * 6
    assert "n_sites=18" in repr(t)


def test_errors_computed_from_forces():
    fp = np.array([[1.0, 0, 0], [0, 0, 0]])
    fr = np.array([[0.0, 0, 0], [0, 3.0, 4.0]])
    t = SiteTable.from_arrays(descriptors=np.zeros((2, 1)), errors=None, species=[1, 1],
                              structure_ids=[0, 0], forces_pred=fp, forces_ref=fr)
    np.testing.assert_allclose(t.errors, [1.0, 5.0])


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(errors=np.array([0.1, -0.2, 0.3])), r"errors: must be >= 0.*-0\.2.*site 1"),
        (dict(errors=np.array([0.1, np.nan, 0.3])), r"errors: contains NaN or inf"),
        (dict(errors=np.array([0.1, 0.2])), r"errors: expected 3 rows .* got 2"),
        (dict(descriptors=np.array([[0.0], [np.inf], [1.0]])), r"descriptors: contains NaN or inf"),
        (dict(descriptors=np.zeros((0, 2)), errors=[], species=[], structure_ids=[]), r"empty"),
        (dict(descriptors=np.zeros(3)), r"descriptors: expected a 2-D array, got shape \(3,\)"),
        (dict(species=[1, 0, 6]), r"species: expected atomic numbers 1..118, got 0 at site 1"),
        (dict(structure_ids=[0, -1, 1]), r"structure_ids: must be >= 0"),
        (dict(forces_pred=np.zeros((3, 2))), r"forces_pred: expected shape \(3, 3\), got \(3, 2\)"),
        (dict(descriptors=np.array([["a"], ["b"], ["c"]])), r"descriptors"),
    ],
)
def test_validation_messages_name_argument_and_value(change, match):
    args = dict(descriptors=np.zeros((3, 2)), errors=[0.1, 0.2, 0.3], species=[1, 6, 8], structure_ids=[0, 0, 1])
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=match):
        SiteTable.from_arrays(**args)


def test_errors_none_without_reference_forces_is_an_unlabelled_table(tmp_path):
    """Regression (issue 9): unlabelled tables carry errors=None, not fake zeros, through every operation."""
    t = SiteTable.from_arrays(descriptors=np.arange(6.0)[:, None], errors=None, species=[1, 1, 8, 8, 1, 8],
                              structure_ids=[0, 0, 1, 1, 2, 2], forces_pred=np.ones((6, 3)))
    assert t.errors is None and not t.labelled and len(t) == 6 and "unlabelled" in repr(t)
    with pytest.raises(ValueError, match=r"^sites: these sites carry no reference labels \(errors=None\); "):
        t.require_labels()
    with pytest.raises(ValueError, match=r"^target: these sites carry no reference labels"):
        t.require_labels("target")
    assert t.select(t.species == 8).errors is None and len(t.select(t.species == 8)) == 3
    a, b = t.split(0.5, seed=0)
    assert a.errors is None and b.errors is None and len(a) + len(b) == 6
    assert "error" not in t.to_dataframe().columns
    u = SiteTable.load(t.save(tmp_path / "unlabelled.npz"))
    assert u.errors is None and not u.labelled
    np.testing.assert_array_equal(u.descriptors, t.descriptors)
    with np.load(tmp_path / "unlabelled.npz", allow_pickle=False) as z:
        assert "errors" not in z.files
    labelled = make_table()
    assert labelled.labelled and labelled.require_labels() is labelled.errors
    # stacking a labelled and an unlabelled table gives an unlabelled one
    other = SiteTable.from_arrays(descriptors=np.zeros((2, 4)), errors=None, species=[1, 1], structure_ids=[50, 50])
    assert concatenate([labelled, other]).errors is None


def test_split_is_by_structure_disjoint_and_seeded():
    t = make_table(n_structures=10)
    cal, test = t.split(test_fraction=0.3, seed=1)
    assert set(cal.unique_structures).isdisjoint(test.unique_structures)
    assert cal.n_structures + test.n_structures == 10 and test.n_structures == 3
    assert len(cal) + len(test) == len(t)
    cal2, test2 = t.split(test_fraction=0.3, seed=1)
    assert np.array_equal(test.unique_structures, test2.unique_structures)
    _, test3 = t.split(test_fraction=0.3, seed=2)
    assert not np.array_equal(test.unique_structures, test3.unique_structures)
    # structure_info follows the selection
    assert np.array_equal(test.structure_info["structure_id"], test.unique_structures)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, "half"])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction: expected a number in \\(0, 1\\), got"):
        make_table().split(test_fraction=fraction)


def test_split_needs_two_structures():
    t = SiteTable.from_arrays(descriptors=np.zeros((2, 1)), errors=[0, 0], species=[1, 1], structure_ids=[0, 0])
    with pytest.raises(ValueError, match="need at least 2 structures, got 1"):
        t.split(0.5)


def test_split_structure_ids_keeps_one_on_each_side():
    a, b = split_structure_ids([5, 7], test_fraction=0.01, seed=0)
    assert a.size == 1 and b.size == 1


def test_select_mask_index_and_structures():
    t = make_table()
    sub = t.select(t.species == 6)
    assert len(sub) == 6 and set(sub.species) == {6}
    assert np.array_equal(t.select(np.array([0, 4])).errors, t.errors[[0, 4]])
    s = t.select_structures([2, 4])
    assert s.unique_structures.tolist() == [2, 4] and len(s) == 6
    with pytest.raises(ValueError, match=r"mask: expected shape \(18,\), got \(3,\)"):
        t.select(np.ones(3, bool))
    with pytest.raises(ValueError, match="selects no sites"):
        t.select(np.zeros(18, bool))
    with pytest.raises(ValueError, match=r"not in this table: \[99\]"):
        t.select_structures([99])
    with pytest.raises(TypeError, match="mask_or_index"):
        t.select(np.array([0.5]))


def test_structure_info_alignment_and_broadcast():
    info = {"structure_id": [5, 3], "config_type": ["hot", "cold"], "energy_ref": [-1.0, -2.0]}
    t = SiteTable.from_arrays(descriptors=np.zeros((4, 1)), errors=np.zeros(4), species=[1] * 4,
                              structure_ids=[3, 3, 5, 5], structure_info=info)
    assert t.structure_info["config_type"].tolist() == ["cold", "hot"]
    assert t.structure_column("energy_ref").tolist() == [-2.0, -2.0, -1.0, -1.0]
    with pytest.raises(KeyError, match="no column 'nope'"):
        t.structure_column("nope")
    with pytest.raises(ValueError, match=r"no row for structure ids \[5\]"):
        SiteTable.from_arrays(descriptors=np.zeros((2, 1)), errors=[0, 0], species=[1, 1], structure_ids=[3, 5],
                              structure_info={"structure_id": [3], "config_type": ["a"]})


def test_save_load_roundtrip_is_exact_and_pickle_free(tmp_path):
    rng = np.random.default_rng(3)
    t = make_table(forces_pred=rng.normal(size=(18, 3)), forces_ref=rng.normal(size=(18, 3)),
                   committee_std=rng.random(18), meta={"model": "tiny"},
                   structure_info={"structure_id": np.arange(6), "config_type": np.array(["a", "b"] * 3)})
    path = t.save(tmp_path / "sites.npz")
    u = SiteTable.load(path)
    for name in ("structure_ids", "atom_index", "species", "errors", "descriptors", "forces_pred",
                 "forces_ref", "committee_std"):
        np.testing.assert_array_equal(getattr(u, name), getattr(t, name))
    assert u.structure_info["config_type"].tolist() == ["a", "b"] * 3
    assert u.meta == {"model": "tiny"}
    with np.load(path, allow_pickle=False) as z:  # portable: readable without pickle
        assert json.loads(str(z["__meta__"]))["format"] == "flexcal.SiteTable"


def test_load_rejects_foreign_and_corrupt_files(tmp_path):
    bad = tmp_path / "garbage.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="garbage.npz: not a readable SiteTable"):
        SiteTable.load(bad)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz: not a FlexCal SiteTable"):
        SiteTable.load(other)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        SiteTable.load(tmp_path / "missing.npz")


def test_to_dataframe_columns():
    df = make_table(d=2).to_dataframe()
    assert list(df.columns) == ["structure_id", "atom_index", "species", "error", "d_0", "d_1"]
    assert len(df) == 18


def test_concatenate_requires_disjoint_structures():
    t = make_table()
    a, b = t.split(0.5, seed=0)
    both = concatenate([a, b])
    assert len(both) == len(t) and both.n_structures == 6
    with pytest.raises(ValueError, match="structure ids overlap"):
        concatenate([a, a])
