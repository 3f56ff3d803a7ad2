"""core.data: reading, label mapping, validation messages, splits."""

from __future__ import annotations

import io
import time

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from core.data import (
    Dataset,
    DatasetError,
    read_dataset,
    split_by_config_type,
    split_structures,
    supported_formats,
)

HEADER = 'Properties=species:S:1:pos:R:3:forces:R:3 energy={e} pbc="F F F"'


def _frame(species_pos_forces, energy=-1.0, header=HEADER):
    lines = [str(len(species_pos_forces)), header.format(e=energy)]
    for s, p, f in species_pos_forces:
        lines.append(f"{s} {p[0]} {p[1]} {p[2]} {f[0]} {f[1]} {f[2]}")
    return "\n".join(lines) + "\n"


def _water(shift=0.0, forces=((0.1, 0, 0), (0, 0.2, 0), (0, 0, -0.3))):
    return [
        ("O", (0.0 + shift, 0.0, 0.0), forces[0]),
        ("H", (0.96 + shift, 0.0, 0.0), forces[1]),
        ("H", (-0.24 + shift, 0.93, 0.0), forces[2]),
    ]


def _write(tmp_path, text, name="data.xyz"):
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------ happy paths
def test_energy_forces_via_single_point_calculator_are_mapped(tmp_path):
    p = _write(tmp_path, _frame(_water(), -10.5) + _frame(_water(0.1), -11.0))
    ds = read_dataset(p)
    assert len(ds) == 2 and ds.labelled
    assert ds.energy_key == "energy" and ds.forces_key == "forces"
    a = ds.structures[0]
    assert a.calc is None  # single-point calculator stripped
    assert a.info["REF_energy"] == -10.5
    np.testing.assert_allclose(a.arrays["REF_forces"], [[0.1, 0, 0], [0, 0.2, 0], [0, 0, -0.3]])
    assert "forces read from 'forces' (ASE single-point calculator) and stored as 'REF_forces'" in ds.messages
    assert "energies read from 'energy' (ASE single-point calculator) and stored as 'REF_energy'" in ds.messages
    assert ds.source == str(p) and ds.format == "extxyz"
    np.testing.assert_array_equal(ds.indices, [0, 1])


def test_ref_keys_take_priority_and_dft_keys_are_found(tmp_path):
    frames = []
    for k in range(2):
        a = Atoms("OH2", positions=[[0, 0, 0], [0.96 + 0.01 * k, 0, 0], [-0.24, 0.93, 0]])
        a.info["DFT_energy"] = -5.0 - k
        a.arrays["DFT_forces"] = np.full((3, 3), 0.5 + k)
        frames.append(a)
    p = tmp_path / "dft.extxyz"
    ase.io.write(p, frames, format="extxyz")
    ds = read_dataset(p)
    assert ds.forces_key == "DFT_forces" and ds.energy_key == "DFT_energy"
    assert ds.structures[1].info["REF_energy"] == -6.0
    np.testing.assert_allclose(ds.structures[1].arrays["REF_forces"], 1.5)
    assert "forces read from 'DFT_forces' (per-atom array) and stored as 'REF_forces'" in ds.messages

    for a in frames:
        a.info["REF_energy"] = 1.0
        a.arrays["REF_forces"] = np.zeros((3, 3))
    ase.io.write(p, frames, format="extxyz")
    ds = read_dataset(p)
    assert ds.forces_key == "REF_forces" and ds.energy_key == "REF_energy"
    assert ds.structures[0].info["REF_energy"] == 1.0


def test_custom_keys(tmp_path):
    a = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    a.info["my_e"] = -3.0
    a.arrays["my_f"] = np.ones((3, 3))
    p = tmp_path / "c.extxyz"
    ase.io.write(p, [a], format="extxyz")
    ds = read_dataset(p, energy_key="my_e", forces_key="my_f")
    assert ds.structures[0].info["REF_energy"] == -3.0
    with pytest.raises(DatasetError, match=r"forces key 'nope' not found in any frame \(frame 0 has: .*my_f"):
        read_dataset(p, forces_key="nope")
    with pytest.raises(DatasetError, match=r"energy key 'nope' not found in any frame \(frame 0 has: .*my_e"):
        read_dataset(p, energy_key="nope")


def test_energies_are_optional(tmp_path):
    header = 'Properties=species:S:1:pos:R:3:forces:R:3 pbc="F F F"'
    p = _write(tmp_path, _frame(_water(), header=header))
    ds = read_dataset(p)
    assert ds.energy_key is None and np.isnan(ds.structures[0].info["REF_energy"])
    assert any("no reference energies found" in m and "set to NaN" in m for m in ds.messages)
    assert ds.summary()["has_energies"] is False


def test_bytes_input_and_summary(tmp_path):
    text = _frame(_water(), -1.0) + _frame(_water(0.5), -2.0)
    ds = read_dataset(text.encode(), name="upload.xyz")
    assert ds.source == "upload.xyz" and len(ds) == 2
    ds2 = read_dataset(text.encode(), format="extxyz")
    assert ds2.source == "<bytes>"
    s = ds.summary()
    assert s["n_frames"] == 2 and s["n_atoms"] == 6
    assert s["elements"] == ["H", "O"]
    assert s["energy_key"] == "energy" and s["forces_key"] == "forces"
    assert s["config_types"] == {"default": 2}
    assert s["periodic"] == "none" and s["labelled"] is True
    with pytest.raises(DatasetError, match="bytes input: pass name="):
        read_dataset(text.encode())


def test_other_ase_formats(tmp_path):
    a = Atoms("Cu4", positions=np.eye(4, 3) * 1.8, cell=[5, 5, 5], pbc=True)
    a.calc = SinglePointCalculator(a, energy=-4.0, forces=np.full((4, 3), 0.1))
    p = tmp_path / "x.traj"
    ase.io.write(p, [a])
    ds = read_dataset(p)
    assert ds.format == "traj" and ds.forces_key == "forces"
    assert ds.summary()["periodic"] == "all"
    np.testing.assert_allclose(ds.structures[0].arrays["REF_forces"], 0.1)


def test_config_types_and_splits(tmp_path):
    frames = []
    for k in range(10):
        a = Atoms("H2", positions=[[0, 0, 0], [0.74 + 0.01 * k, 0, 0]])
        a.calc = SinglePointCalculator(a, energy=-1.0, forces=np.zeros((2, 3)))
        a.info["config_type"] = "cold" if k < 6 else "hot"
        frames.append(a)
    p = tmp_path / "ct.extxyz"
    ase.io.write(p, frames, format="extxyz")
    ds = read_dataset(p)
    assert ds.config_types == ["cold"] * 6 + ["hot"] * 4
    assert ds.summary()["config_types"] == {"cold": 6, "hot": 4}

    cal, test = split_by_config_type(ds, "cold", ["hot"])
    np.testing.assert_array_equal(cal, np.arange(6))
    np.testing.assert_array_equal(test, np.arange(6, 10))
    cal2, test2 = split_by_config_type(ds, ["cold"])  # test defaults to the rest
    np.testing.assert_array_equal(test2, test)
    with pytest.raises(ValueError, match=r"unknown config type\(s\) \['warm'\]; available: \['cold', 'hot'\]"):
        split_by_config_type(ds, "warm")
    with pytest.raises(ValueError, match=r"in both calibration_types and test_types"):
        split_by_config_type(ds, "cold", ["cold", "hot"])

    a, b = split_structures(ds, test_fraction=0.3, seed=1)
    assert len(a) == 7 and len(b) == 3
    assert set(a).isdisjoint(b) and set(a) | set(b) == set(range(10))
    a2, b2 = split_structures(10, test_fraction=0.3, seed=1)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)

    sub = ds.subset(b)
    assert isinstance(sub, Dataset) and len(sub) == 3
    np.testing.assert_array_equal(sub.indices, b)


def test_unlabelled_mode(tmp_path):
    a = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    p = tmp_path / "u.extxyz"
    ase.io.write(p, [a, a], format="extxyz")
    with pytest.raises(DatasetError, match=r"u.extxyz: no reference forces found .*require_labels=False"):
        read_dataset(p)
    ds = read_dataset(p, require_labels=False)
    assert not ds.labelled and ds.forces_key is None
    assert "REF_forces" not in ds.structures[0].arrays
    assert "no reference forces found: dataset is unlabelled" in ds.messages


# ------------------------------------------------------------ malformed input
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.xyz: no such file"):
        read_dataset(tmp_path / "nope.xyz")


def test_empty_file(tmp_path):
    p = _write(tmp_path, "")
    with pytest.raises(DatasetError, match=r"data.xyz: file is empty"):
        read_dataset(p)
    p = _write(tmp_path, "\n  \n")
    with pytest.raises(DatasetError, match=r"data.xyz: file is empty"):
        read_dataset(p)
    with pytest.raises(DatasetError, match=r"up.xyz: file is empty"):
        read_dataset(b"", name="up.xyz")


def test_unparsable_frame_names_frame_index(tmp_path):
    bad = _frame(_water()).replace("0.96", "abc")
    p = _write(tmp_path, _frame(_water()) + _frame(_water(1.0)) + bad)
    with pytest.raises(DatasetError, match=r"data.xyz: frame 2 \(line 11\) could not be parsed as extxyz \(ValueError: .*abc"):
        read_dataset(p)
    truncated = _frame(_water()) + "3\n" + HEADER.format(e=1) + "\nO 0 0 0 0 0 0\n"
    p = _write(tmp_path, truncated)
    with pytest.raises(DatasetError, match=r"data.xyz: frame 1 \(line 6\) declares 3 atoms, but the file ends after "
                                           r"1 atom lines: the file is truncated"):
        read_dataset(p)
    p = _write(tmp_path, "hello\nworld\n")
    with pytest.raises(DatasetError, match=r"frame 0 \(line 1\): expected the number of atoms of a frame, got 'hello'"):
        read_dataset(p, format="extxyz")


def test_missing_forces_in_some_frames_lists_them(tmp_path):
    frames = []
    for k in range(5):
        a = Atoms("H2", positions=[[0, 0, 0], [0.74 + 0.01 * k, 0, 0]])
        if k not in (1, 3):
            a.arrays["REF_forces"] = np.zeros((2, 3))
        frames.append(a)
    p = tmp_path / "m.extxyz"
    ase.io.write(p, frames, format="extxyz")
    with pytest.raises(DatasetError, match=r"m.extxyz: forces key 'REF_forces' missing in 2 of 5 frames: frames 1, 3"):
        read_dataset(p)
    ds = read_dataset(p, require_labels=False)
    assert not ds.labelled
    assert any("forces missing in 2 of 5 frames (1, 3)" in m for m in ds.messages)
    assert "REF_forces" in ds.structures[0].arrays and "REF_forces" not in ds.structures[1].arrays


def test_wrong_forces_shape(tmp_path):
    a = Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]])
    a.info["f"] = np.zeros(6)  # per-frame, wrong shape for forces
    a.arrays["REF_forces"] = np.zeros((2, 3))
    b = a.copy()
    b.positions[1, 0] += 0.05  # another geometry (an exact copy would be dropped as a duplicate frame)
    b.arrays["g"] = np.zeros((2, 2))
    p = tmp_path / "s.extxyz"
    ase.io.write(p, [a, b], format="extxyz")
    with pytest.raises(DatasetError, match=r"s.extxyz: frame 1 \(line 5\): forces 'g' have shape \(2, 2\), expected \(2, 3\)"):
        read_dataset(p, forces_key="g", require_labels=False)


def test_nan_inf(tmp_path):
    p = _write(tmp_path, _frame(_water()) + _frame(_water(forces=((0, 0, 0), (0, "nan", 0), (0, 0, 0)))))
    with pytest.raises(DatasetError, match=r"data.xyz: frame 1 \(line 6\): forces 'forces' contain NaN or inf \(atom 1\)"):
        read_dataset(p)
    p = _write(tmp_path, _frame(_water(), energy="inf"))
    with pytest.raises(DatasetError, match=r"frame 0 \(line 1\): energy 'energy' is NaN or inf"):
        read_dataset(p)
    bad_pos = _frame(_water()).replace("-0.24", "nan")
    p = _write(tmp_path, bad_pos)
    with pytest.raises(DatasetError, match=r"frame 0 \(line 1\): positions contain NaN or inf \(atom 2\)"):
        read_dataset(p)


def test_zero_atom_frame(tmp_path):
    zero = '0\nProperties=species:S:1:pos:R:3 pbc="F F F"\n'
    p = _write(tmp_path, _frame(_water()) + zero)
    with pytest.raises(DatasetError, match=r"data.xyz: frame 1 \(line 6\) has zero atoms"):
        read_dataset(p)


def test_duplicate_atoms_direct_and_minimum_image(tmp_path):
    dup = [("O", (0.0, 0.0, 0.0), (0, 0, 0)), ("H", (1.0, 0, 0), (0, 0, 0)), ("H", (1.0, 0, 0.0005), (0, 0, 0))]
    p = _write(tmp_path, _frame(_water()) + _frame(dup))
    with pytest.raises(DatasetError, match=r"frame 1 \(line 6\): atoms 1 and 2 are at the same position \(distance 5.00e-04 Å"):
        read_dataset(p)

    # periodic: atoms at x = 0.0002 and x = 3.9999 in a 4 Å cell are 3e-4 Å apart (minimum image)
    a = Atoms("Cu3", positions=[[0.0002, 1, 1], [3.9999, 1, 1], [2, 2, 2]], cell=[4, 4, 4], pbc=True)
    a.arrays["REF_forces"] = np.zeros((3, 3))
    p2 = tmp_path / "pbc.extxyz"
    ase.io.write(p2, [a], format="extxyz")
    with pytest.raises(DatasetError, match=r"frame 0 \(line 1\): atoms 0 and 1 are at the same position .*minimum image"):
        read_dataset(p2)
    # the same positions without periodicity are fine
    a.pbc = False
    ase.io.write(p2, [a], format="extxyz")
    assert len(read_dataset(p2)) == 1
    # triclinic cell, duplicate across a corner
    b = Atoms("Cu2", cell=[[4, 0, 0], [2, 3.5, 0], [0, 0, 4]], pbc=True)
    b.set_scaled_positions([[0.00005, 0.00005, 0.5], [0.99997, 0.99997, 0.5]])
    b.arrays["REF_forces"] = np.zeros((2, 3))
    ase.io.write(p2, [b], format="extxyz")
    with pytest.raises(DatasetError, match=r"atoms 0 and 1 are at the same position"):
        read_dataset(p2)


def test_unsupported_format_lists_ase_formats(tmp_path):
    p = _write(tmp_path, _frame(_water()))
    with pytest.raises(DatasetError, match=r"unsupported format 'nonsense'; ASE reads: .*extxyz.*traj"):
        read_dataset(p, format="nonsense")
    p = _write(tmp_path, "\x00\x01binary junk\x02", name="data.weird")
    with pytest.raises(DatasetError, match=r"data.weird: cannot tell the file format .*pass format= with one of: .*extxyz"):
        read_dataset(p)
    assert "extxyz" in supported_formats()


def test_too_large(tmp_path):
    p = _write(tmp_path, _frame(_water()))
    with pytest.raises(DatasetError, match=r"data.xyz: \d+ bytes exceeds the limit of 10 bytes \(max_bytes=\)"):
        read_dataset(p, max_bytes=10)
    with pytest.raises(DatasetError, match=r"exceeds the limit of 10 bytes"):
        read_dataset(_frame(_water()).encode(), name="a.xyz", max_bytes=10)


def test_non_numeric_energy(tmp_path):
    a = Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]])
    a.arrays["REF_forces"] = np.zeros((2, 3))
    a.info["REF_energy"] = "high"
    p = tmp_path / "e.extxyz"
    ase.io.write(p, [a], format="extxyz")
    with pytest.raises(DatasetError, match=r"e.extxyz: frame 0 \(line 1\): energy 'REF_energy' is not a single number"):
        read_dataset(p)


def test_wrong_input_type():
    with pytest.raises(TypeError, match="path_or_bytes: expected a path or bytes, got StringIO"):
        read_dataset(io.StringIO("x"))


def test_split_errors():
    with pytest.raises(ValueError, match="test_fraction"):
        split_structures(10, test_fraction=1.5)
    with pytest.raises(ValueError, match="need at least 2 structures"):
        split_structures(1)


# ------------------------------------------------------------ messages (item 7)
def test_parse_errors_name_the_real_frame_and_line(tmp_path):
    frames = [_frame(_water(0.1 * k)) for k in range(5)]
    frames[2] = frames[2].replace("3\n", "2\n", 1)  # declares 2 atoms, has 3: the 3rd atom line becomes a "count"
    with pytest.raises(DatasetError, match=r"data.xyz: frame 3 \(line 15\): expected the number of atoms of a frame, "
                                           r"got 'H -0.0399\d* 0.93 0.0 0 0 -0.3' \(the atom count of frame 2 may be wrong\)"):
        read_dataset(_write(tmp_path, "".join(frames)))
    frames = [_frame(_water(0.1 * k)) for k in range(5)]
    frames[3] = frames[3].replace("\nO ", "\nO zz ", 1)
    with pytest.raises(DatasetError, match=r"frame 3 \(line 16\) could not be parsed as extxyz \(ValueError: .*zz"):
        read_dataset(_write(tmp_path, "".join(frames)))
    (tmp_path / "junk.xyz").write_bytes(b"\x00\x9f\xff junk\n")
    with pytest.raises(DatasetError, match=r"frame 0 \(line 1\): expected the number of atoms of a frame, got binary data"):
        read_dataset(tmp_path / "junk.xyz")


def test_a_blank_line_before_more_frames_is_refused_not_silently_truncated(tmp_path):
    text = _frame(_water()) + "\n" + _frame(_water(1.0))
    assert len(ase.io.read(_write(tmp_path, text), ":")) == 1  # what ASE alone would do: one frame lost
    with pytest.raises(DatasetError, match=r"data.xyz: line 6 is blank but the file continues at line 7 \('3'\); ASE "
                                           r"stops reading at a blank line, so frames 1 and later would be lost"):
        read_dataset(tmp_path / "data.xyz")
    assert len(read_dataset(_write(tmp_path, _frame(_water()) + _frame(_water(1.0)) + "\n\n  \n"))) == 2


# ------------------------------------------------------------ duplicate frames (item 5)
def _distinct(n, rng):
    return [_frame(_water(forces=tuple(tuple(rng.normal(size=3).round(3)) for _ in range(3))), energy=-k)
            .replace("0.96", f"{0.9 + 0.01 * k:.2f}") for k in range(n)]


def test_duplicate_frames_are_dropped_with_a_note_and_never_split_apart(tmp_path):
    rng = np.random.default_rng(0)
    frames = _distinct(20, rng)
    near = frames[7].replace("-0.24", "-0.24002")  # 2e-5 Å away: the same structure
    text = "".join(frames) + frames[3] + near + frames[3] + frames[12]
    ds = read_dataset(_write(tmp_path, text))
    assert len(ds) == 20
    np.testing.assert_array_equal(ds.indices, np.arange(20))
    assert ("dropped 4 duplicate frame(s) of 24 (same atoms, positions and cell within 0.0001 Å as an earlier frame): "
            "frames 20 (= 3), 21 (= 7), 22 (= 3), 23 (= 12), so that no structure is both calibrated and tested on"
            ) in ds.messages
    positions = [a.positions.round(3).tobytes() for a in ds.structures]
    assert len(set(positions)) == 20
    for seed in range(20):
        cal, test = split_structures(ds, 0.5, seed=seed)
        assert not {positions[i] for i in cal} & {positions[i] for i in test}
    with pytest.raises(DatasetError, match=r"4 of 24 frames repeat an earlier frame .*frames 20 \(= 3\), 21 \(= 7\).*"
                                           r"pass duplicate_frames='drop'"):
        read_dataset(tmp_path / "data.xyz", duplicate_frames="error")
    assert len(read_dataset(tmp_path / "data.xyz", duplicate_frames="keep")) == 24
    # 1e-3 Å apart is another structure (an MD step moves atoms further than that)
    apart = frames[7].replace("-0.24", "-0.241")
    assert len(read_dataset(_write(tmp_path, "".join(frames) + apart))) == 21
    with pytest.raises(ValueError, match=r"duplicate_frames: expected one of drop, error, keep, got 'merge'"):
        read_dataset(tmp_path / "data.xyz", duplicate_frames="merge")


def test_duplicate_search_is_fast_on_many_distinct_frames():
    from core.data_checks import find_duplicate_frames

    rng = np.random.default_rng(1)
    base = Atoms("C2H6O", positions=rng.normal(size=(9, 3)))
    frames = []
    for _ in range(5000):
        a = base.copy()
        a.positions += 0.005 * rng.normal(size=(9, 3))  # MD-like neighbours
        frames.append(a)
    frames.append(frames[1234].copy())
    start = time.perf_counter()
    assert find_duplicate_frames(frames) == {5000: 1234}
    assert time.perf_counter() - start < 10


def test_a_partition_with_few_test_structures_warns():
    from core.sites import SiteTable
    from core.sources import partition

    rng = np.random.default_rng(0)
    sites = SiteTable.from_arrays(descriptors=rng.normal(size=(12, 2)), errors=rng.random(12),
                                  species=np.ones(12, dtype=int), structure_ids=np.repeat(np.arange(4), 3))
    part = partition(sites, test_fraction=0.5, seed=0)
    assert part.warnings == ("test: coverage from 6 sites of 2 structures is not informative (fewer than 10 test "
                             "structures)",)
    big = SiteTable.from_arrays(descriptors=rng.normal(size=(60, 2)), errors=rng.random(60),
                                species=np.ones(60, dtype=int), structure_ids=np.repeat(np.arange(30), 2))
    assert partition(big, test_fraction=0.5, seed=0).warnings == ()


# ------------------------------------------------------------ public data
@pytest.mark.shared_data
def test_reads_3bpa(shared_data):
    ds = read_dataset(shared_data / "3bpa" / "train_300K.xyz")
    s = ds.summary()
    assert s["n_frames"] == 500 and s["n_atoms"] == 500 * 27
    assert s["elements"] == ["H", "C", "N", "O"]
    assert s["forces_key"] == "forces" and s["energy_key"] == "energy"
    assert np.isfinite(ds.energies).all()
    assert all(a.calc is None for a in ds.structures)


@pytest.mark.shared_data
def test_reads_hea25_periodic(shared_data):
    ds = read_dataset(shared_data / "hea25" / "hea25_excerpt.xyz")
    s = ds.summary()
    assert s["periodic"] == "all" and len(s["elements"]) == 25
    assert "REF_stress" in ds.structures[0].info
