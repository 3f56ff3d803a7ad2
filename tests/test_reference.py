"""Reference calculators: names, labels, failures that name the frame."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from core.reference import (
    REFERENCE_METHODS,
    LabellingError,
    canonical_name,
    is_labelled,
    label_structure,
    label_structures,
    reference_calculator,
    resolve_reference,
)

pytest.importorskip("tblite")


def test_names_and_aliases():
    assert REFERENCE_METHODS == ("gfn2-xtb", "gfn1-xtb", "emt")
    assert canonical_name("GFN2-xTB") == "gfn2-xtb"
    assert canonical_name("gfn1") == "gfn1-xtb"
    assert canonical_name(" EMT ") == "emt"


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"'dft'.*gfn2-xtb, gfn1-xtb, emt"):
        reference_calculator("dft")
    with pytest.raises(TypeError, match="str"):
        reference_calculator(2)


def test_calculator_types():
    from ase.calculators.emt import EMT
    from tblite.ase import TBLite

    assert isinstance(reference_calculator("emt"), EMT)
    calc = reference_calculator("gfn1-xtb")
    assert isinstance(calc, TBLite)
    assert calc.parameters["method"] == "GFN1-xTB"
    assert calc.parameters["verbosity"] == 0


@pytest.mark.parametrize("name, energy", [("gfn2-xtb", -137.96777594361677),
                                          ("gfn1-xtb", -156.96750590276173)])
def test_xtb_water_energies_match_tblite_reference_values(name, energy):
    # values from tblite's own documentation (tblite/ase.py docstring), eV
    (out,) = label_structures([molecule("H2O")], name)
    assert out.info["REF_energy"] == pytest.approx(energy, abs=1e-5)
    assert out.arrays["REF_forces"].shape == (3, 3)
    assert abs(out.arrays["REF_forces"].sum(axis=0)).max() < 1e-6   # no net force


def test_emt_labels_are_stored_without_calculator_and_inputs_untouched():
    from ase.calculators.emt import EMT

    frames = []
    for seed in range(3):
        a = bulk("Cu", "fcc", a=3.6, cubic=True)
        a.rattle(0.05, seed=seed)
        a.info["config_type"] = "x"
        frames.append(a)
    calls = []
    out = label_structures(frames, "emt", energy_key="E", forces_key="F",
                           progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    for a, b in zip(frames, out):
        assert b.calc is None and b.info["config_type"] == "x"
        assert "E" not in a.info and "F" not in a.arrays
        a.calc = EMT()
        assert b.info["E"] == pytest.approx(a.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(b.arrays["F"], a.get_forces(), atol=1e-12)
        assert np.abs(b.arrays["F"]).max() > 1e-3


def test_periodic_xtb_works():
    a = bulk("LiCl", "rocksalt", a=5.13, cubic=True)
    a.rattle(0.03, seed=0)
    (out,) = label_structures([a], "gfn1-xtb")
    assert np.isfinite(out.info["REF_energy"])
    assert 0.01 < np.abs(out.arrays["REF_forces"]).max() < 5.0


def test_failed_scf_names_the_frame():
    # water converges within 12 SCF cycles; four squashed Cl atoms do not
    good = molecule("H2O")
    bad = Atoms("Cl4", positions=[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.1, 0.1, 0.1]])
    with pytest.raises(LabellingError, match=r"gfn2-xtb failed on structure 1 \(Cl4\).*SCF") as info:
        label_structures([good, bad], "gfn2-xtb", max_iterations=12)
    assert info.value.index == 1


def test_unsupported_element_names_the_frame():
    frames = [bulk("Cu", "fcc", a=3.6), Atoms("Li2", positions=[[0, 0, 0], [0, 0, 2.7]])]
    with pytest.raises(LabellingError, match=r"emt failed on structure 1 \(Li2\)") as info:
        label_structures(frames, "emt")
    assert info.value.index == 1


def test_rejects_non_atoms():
    with pytest.raises(TypeError, match=r"structures\[0\]"):
        label_structures(["not atoms"], "emt")


def test_resolve_reference_names_and_calculators():
    from ase.calculators.emt import EMT

    assert isinstance(resolve_reference("EMT"), EMT)
    calc = EMT()
    assert resolve_reference(calc) is calc
    with pytest.raises(TypeError, match=r"reference: expected a name \(gfn2-xtb, gfn1-xtb, emt\) or an ASE calculator, got int"):
        resolve_reference(7)
    with pytest.raises(ValueError, match=r"options: \['accuracy'\] only apply to a reference method name"):
        resolve_reference(calc, accuracy=1.0)
    with pytest.raises(ValueError, match="'dft'"):
        resolve_reference("dft")


def test_label_structure_with_a_calculator_keeps_raw_forces_and_detaches():
    from ase.calculators.emt import EMT
    from ase.constraints import FixAtoms

    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    a.rattle(0.05, seed=1)
    a.set_constraint(FixAtoms(indices=[0]))  # constraints must not zero reference forces
    calc = EMT()
    out = label_structure(a, calc, energy_key="E", forces_key="F", index=4)
    assert out.calc is None and a.calc is None and "E" not in a.info and is_labelled(out, "E", "F")
    ref = a.copy()
    ref.set_constraint()
    ref.calc = EMT()
    np.testing.assert_allclose(out.arrays["F"], ref.get_forces(), atol=1e-12)
    assert np.abs(out.arrays["F"][0]).max() > 1e-3
    with pytest.raises(LabellingError, match=r"EMT failed on structure 4 \(Li2\)") as info:
        label_structure(Atoms("Li2", positions=[[0, 0, 0], [0, 0, 2.7]]), calc, index=4)
    assert info.value.index == 4
    with pytest.raises(TypeError, match=r"structures\[2\]: expected ase.Atoms, got str"):
        label_structure("Cu", calc, index=2)


def test_label_structures_missing_only_with_a_calculator_instance():
    from ase.calculators.emt import EMT

    frames = [bulk("Cu", "fcc", a=3.6, cubic=True) for _ in range(3)]
    for k, a in enumerate(frames):
        a.rattle(0.05, seed=k)
    frames[1].info["REF_energy"] = 123.0  # already labelled: kept as it is
    frames[1].arrays["REF_forces"] = np.ones((4, 3))
    frames[2].info["REF_energy"] = 5.0  # energy only: not labelled, recomputed
    out = label_structures(frames, EMT(), missing_only=True)
    assert [is_labelled(a) for a in out] == [True, True, True]
    assert out[1].info["REF_energy"] == 123.0 and out[1] is not frames[1]
    np.testing.assert_array_equal(out[1].arrays["REF_forces"], np.ones((4, 3)))
    assert out[2].info["REF_energy"] != 5.0
    again = label_structures(frames, EMT())  # without missing_only every frame is recomputed
    assert again[1].info["REF_energy"] == pytest.approx(out[0].info["REF_energy"], abs=1.0)
    assert again[1].info["REF_energy"] != 123.0
    with pytest.raises(TypeError, match=r"structures\[1\]: expected ase.Atoms, got str"):
        label_structures([frames[0], "x"], EMT(), missing_only=True)
