"""CalibratedCalculator: exact energies/forces, per-atom widths, thresholds, MD."""

from __future__ import annotations

import numpy as np
import pytest

try:  # (pytest.importorskip("mace") would leave mace's TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD set for every test)
    from core.potentials.mace_foundation import mace_modules

    mace_modules()  # mace before e3nn, its environment change contained
except ImportError:
    pytest.skip("mace-torch is not installed", allow_module_level=True)

from ase import Atoms, units  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402

from core.calculator import CalibratedCalculator, UncertaintyThresholdExceeded  # noqa: E402
from core.sites import SiteTable  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Single-structure forward passes of a tiny model: one intra-op thread is fastest."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sites(potential, structures):
    out = potential.compute(structures)
    sid = np.repeat(np.arange(len(structures)), [len(a) for a in structures])
    return SiteTable.from_arrays(
        descriptors=out.descriptors,
        errors=None,
        species=np.concatenate([a.numbers for a in structures]),
        structure_ids=sid,
        forces_pred=out.forces,
        forces_ref=np.concatenate([a.arrays["REF_forces"] for a in structures]),
    )


@pytest.fixture(scope="module")
def potential(tiny_mace_model):
    from core.potentials import load_potential

    return load_potential(tiny_mace_model, device="cpu")


@pytest.fixture(scope="module")
def calibrator(potential):
    """A knn-normalised split-CP calibrator fitted on the tiny model's descriptors."""
    from tests.conftest import make_tiny_structures
    from core.calibration.conformal import SplitConformal

    structures = make_tiny_structures(1) + make_tiny_structures(2)
    return SplitConformal(confidence=0.9, heuristic="knn").fit(_sites(potential, structures))


@pytest.fixture
def ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=3)
    return atoms


def test_energy_forces_identical_and_widths_equal_calibrator(potential, calibrator, ethanol):
    bare = potential.compute([ethanol])
    atoms = ethanol.copy()
    calc = CalibratedCalculator(potential, calibrator)
    atoms.calc = calc
    assert calc.mode == "potential"
    assert atoms.get_potential_energy() == pytest.approx(float(bare.energies[0]), abs=0.0)
    np.testing.assert_array_equal(atoms.get_forces(), bare.forces)
    widths = calc.get_force_uncertainty(atoms)
    assert widths.shape == (len(ethanol),)
    from core.featurize import featurize

    featurized = featurize([ethanol], potential, labelled=False, descriptor_dtype="float64")
    np.testing.assert_allclose(widths, calibrator.predict(featurized), rtol=1e-12)
    # the default float32 descriptors of featurize agree to float32 precision
    np.testing.assert_allclose(widths, calibrator.predict(featurize([ethanol], potential, labelled=False)), rtol=1e-5)
    assert np.all(widths > 0)
    assert calc.results["max_force_uncertainty"] == pytest.approx(widths.max())
    assert calc.results["free_energy"] == calc.results["energy"]
    # one forward pass per structure: asking again for other properties does not recompute
    atoms.get_potential_energy()
    atoms.calc.get_property("max_force_uncertainty", atoms)
    assert calc.n_calls == 1


def test_mace_calculator_one_pass_matches_bare_calculator(potential, calibrator, ethanol):
    mace_calc = potential.ase_calculator()
    ref = ethanol.copy()
    ref.calc = mace_calc
    e_ref, f_ref = ref.get_potential_energy(), ref.get_forces()
    desc_ref = mace_calc.get_descriptors(ref)

    calc = CalibratedCalculator(mace_calc, calibrator)
    assert calc.mode == "mace-one-pass"
    atoms = ethanol.copy()
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(e_ref, rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), f_ref, rtol=1e-10, atol=1e-12)
    expected = calibrator.predict(
        SiteTable.from_arrays(
            descriptors=desc_ref,
            errors=np.zeros(len(ethanol)),
            species=ethanol.numbers,
            structure_ids=np.zeros(len(ethanol), dtype=int),
        )
    )
    np.testing.assert_allclose(calc.results["force_uncertainty"], expected, rtol=1e-10)


def test_periodic_structure(potential, calibrator):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=0)
    bare = potential.compute([atoms])
    atoms.calc = CalibratedCalculator(potential, calibrator)
    np.testing.assert_array_equal(atoms.get_forces(), bare.forces)
    assert atoms.calc.results["force_uncertainty"].shape == (8,)


def test_threshold_raises_with_value_and_threshold(potential, calibrator, ethanol):
    probe = CalibratedCalculator(potential, calibrator)
    ethanol.calc = probe
    top = probe.get_max_force_uncertainty(ethanol)
    threshold = 0.5 * top
    atoms = ethanol.copy()
    atoms.calc = CalibratedCalculator(potential, calibrator, threshold=threshold, on_threshold="raise")
    with pytest.raises(UncertaintyThresholdExceeded) as info:
        atoms.get_forces()
    exc = info.value
    assert exc.value == pytest.approx(top)
    assert exc.threshold == threshold
    assert f"{top:.4g}" in str(exc) and f"{threshold:.4g}" in str(exc)
    assert exc.atom_index == int(np.argmax(probe.results["force_uncertainty"]))
    assert "eV/Å" in str(exc)
    np.testing.assert_array_equal(exc.atoms.positions, ethanol.positions)
    # a raise leaves no results that could be mistaken for valid ones
    assert atoms.calc.results == {}
    # None means raise too; a threshold above the maximum never triggers
    atoms.calc = CalibratedCalculator(potential, calibrator, threshold=threshold)
    with pytest.raises(UncertaintyThresholdExceeded):
        atoms.get_forces()
    atoms.calc = CalibratedCalculator(potential, calibrator, threshold=2.0 * top)
    atoms.get_forces()
    assert atoms.calc.threshold_events == []


def test_threshold_callback_fires_and_may_replace_forces(potential, calibrator, ethanol):
    calls = []

    def on_threshold(atoms, results):
        calls.append((atoms.get_positions().copy(), results["max_force_uncertainty"]))
        results["forces"] = np.zeros((len(atoms), 3))  # e.g. substitute reference forces

    calc = CalibratedCalculator(potential, calibrator, threshold=1e-6, on_threshold=on_threshold)
    ethanol.calc = calc
    forces = ethanol.get_forces()
    assert len(calls) == 1 and calls[0][1] > 1e-6
    np.testing.assert_array_equal(forces, 0.0)
    assert calc.threshold_events == [{"call": 1, "value": calls[0][1], "atom_index": calc.threshold_events[0]["atom_index"]}]


def test_langevin_md_with_trigger(potential, calibrator):
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    atoms = molecule("H2O")
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    widths_seen = []

    def record(a, results):
        widths_seen.append(results["max_force_uncertainty"])

    calc = CalibratedCalculator(potential, calibrator, threshold=1e-9, on_threshold=record)
    atoms.calc = calc
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.02 / units.fs, fixcm=False, rng=np.random.default_rng(0))
    dyn.run(5)
    assert calc.n_calls == 6  # the initial force call + one per step
    assert len(widths_seen) == 6 and len(calc.threshold_events) == 6
    assert calc.results["force_uncertainty"].shape == (3,)

    # raising stops the dynamics at the first step above the threshold
    atoms2 = molecule("H2O")
    atoms2.calc = CalibratedCalculator(potential, calibrator, threshold=1e-9)
    dyn2 = Langevin(atoms2, 0.5 * units.fs, temperature_K=300, friction=0.02 / units.fs, fixcm=False, rng=np.random.default_rng(0))
    with pytest.raises(UncertaintyThresholdExceeded):
        dyn2.run(5)
    assert dyn2.nsteps == 0


def test_bad_arguments(potential, calibrator):
    with pytest.raises(TypeError, match="calibrator: expected a fitted FlexCal Calibrator"):
        CalibratedCalculator(potential, object())
    with pytest.raises(TypeError, match="potential_or_calc: expected a FlexCal Potential"):
        CalibratedCalculator(42, calibrator)
    with pytest.raises(ValueError, match=r"threshold: expected a positive finite number in eV/Å, got -1\.0"):
        CalibratedCalculator(potential, calibrator, threshold=-1.0)
    with pytest.raises(TypeError, match="threshold: expected a positive number in eV/Å or None, got 'big'"):
        CalibratedCalculator(potential, calibrator, threshold="big")
    with pytest.raises(ValueError, match="on_threshold: expected None, 'raise' or a callable.*got 'stop'"):
        CalibratedCalculator(potential, calibrator, threshold=1.0, on_threshold="stop")
    from ase.calculators.emt import EMT

    with pytest.raises(TypeError, match="EMT has no get_descriptors"):
        CalibratedCalculator(EMT(), calibrator)


def test_two_pass_fallback_for_calculators_with_get_descriptors(potential, calibrator, ethanol):
    """Any ASE calculator with get_descriptors works (two passes); numbers match the one-pass route."""
    from ase.calculators.calculator import Calculator, all_changes

    class Wrapped(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            out = potential.compute([self.atoms])
            self.results = {"energy": float(out.energies[0]), "forces": out.forces}

        def get_descriptors(self, atoms):
            return potential.compute([atoms]).descriptors

    calc = CalibratedCalculator(Wrapped(), calibrator)
    assert calc.mode == "two-pass"
    atoms = ethanol.copy()
    atoms.calc = calc
    one = CalibratedCalculator(potential, calibrator)
    ref = ethanol.copy()
    ref.calc = one
    np.testing.assert_array_equal(atoms.get_forces(), ref.get_forces())
    np.testing.assert_allclose(calc.get_force_uncertainty(atoms), one.get_force_uncertainty(ref), rtol=1e-12)


def test_save_load_calibrator_path(potential, calibrator, ethanol, tmp_path):
    path = calibrator.save(tmp_path / "cal.npz")
    calc = CalibratedCalculator(potential, path)
    ethanol.calc = calc
    direct = CalibratedCalculator(potential, calibrator)
    ref = ethanol.copy()
    ref.calc = direct
    np.testing.assert_allclose(calc.get_force_uncertainty(ethanol), direct.get_force_uncertainty(ref), rtol=1e-12)


def test_isolated_atom_has_uncertainty(potential, calibrator):
    atoms = Atoms("Cu", positions=[[0, 0, 0]])
    atoms.calc = CalibratedCalculator(potential, calibrator)
    assert atoms.calc.get_force_uncertainty(atoms).shape == (1,)


def test_non_finite_output_is_reported(calibrator):
    """A blown-up structure (NaN forces) raises a clear error instead of giving NaN widths."""
    from core.potentials.base import PotentialOutput

    class BrokenPotential:
        name, identity, atomic_numbers = "broken", "0", (1, 6, 8)

        def compute(self, structures):
            n = sum(len(a) for a in structures)
            return PotentialOutput(np.zeros(len(structures)), np.full((n, 3), np.nan), np.zeros((n, 16)))

        def ase_calculator(self):  # pragma: no cover - not used
            raise NotImplementedError

    atoms = molecule("H2O")
    atoms.calc = CalibratedCalculator(BrokenPotential(), calibrator)
    with pytest.raises(RuntimeError, match="non-finite forces or descriptors"):
        atoms.get_forces()


# ------------------------------------------------------------------ CHGNet
@pytest.fixture(scope="module")
def chgnet_potential():
    pytest.importorskip("chgnet")
    from core.potentials import load_potential

    return load_potential("chgnet-0.3.0", device="cpu")


@pytest.fixture(scope="module")
def chgnet_calibrator(chgnet_potential):
    from core.calibration.conformal import SplitConformal

    rng = np.random.default_rng(0)
    structures = []
    for seed, name in enumerate(["CH3CH2OH", "H2O", "CH4", "C2H6", "CH3OH", "NH3"] * 2):
        atoms = molecule(name)
        atoms.rattle(0.08, seed=seed)
        atoms.arrays["REF_forces"] = rng.normal(scale=0.3, size=(len(atoms), 3))
        structures.append(atoms)
    return SplitConformal(confidence=0.9, heuristic="knn").fit(_sites(chgnet_potential, structures))


def test_chgnet_potential_in_calibrated_calculator(chgnet_potential, chgnet_calibrator, ethanol):
    from core.featurize import featurize

    bare = chgnet_potential.compute([ethanol])
    atoms = ethanol.copy()
    calc = CalibratedCalculator(chgnet_potential, chgnet_calibrator, threshold=1e3)
    atoms.calc = calc
    assert calc.mode == "potential"
    assert atoms.get_potential_energy() == pytest.approx(float(bare.energies[0]), abs=0.0)
    np.testing.assert_array_equal(atoms.get_forces(), bare.forces)
    widths = calc.get_force_uncertainty(atoms)
    expected = chgnet_calibrator.predict(featurize([ethanol], chgnet_potential, labelled=False))
    np.testing.assert_allclose(widths, expected, rtol=1e-6)
    assert widths.shape == (9,) and np.all(widths > 0) and calc.n_calls == 1


def test_chgnet_calculator_is_wrapped_in_one_pass(chgnet_potential, chgnet_calibrator):
    from chgnet.model.dynamics import CHGNetCalculator

    crystal = bulk("Cu", "fcc", a=3.61, cubic=True)
    crystal.rattle(0.05, seed=2)
    own = CHGNetCalculator(model=chgnet_potential.model, use_device="cpu")
    ref = crystal.copy()
    ref.calc = own
    e_ref, f_ref = ref.get_potential_energy(), ref.get_forces()
    calc = CalibratedCalculator(own, chgnet_calibrator)
    assert calc.mode == "chgnet-one-pass"
    crystal.calc = calc
    assert crystal.get_potential_energy() == pytest.approx(e_ref, rel=1e-6)
    np.testing.assert_allclose(crystal.get_forces(), f_ref, atol=1e-5)
    direct = CalibratedCalculator(chgnet_potential, chgnet_calibrator)
    other = crystal.copy()
    other.calc = direct
    np.testing.assert_allclose(calc.get_force_uncertainty(crystal), direct.get_force_uncertainty(other), rtol=1e-6)


def test_model_name_is_loaded_through_the_registry(chgnet_potential, chgnet_calibrator, ethanol):
    calc = CalibratedCalculator("chgnet", chgnet_calibrator)
    assert calc.mode == "potential" and calc._backend.potential.identity == chgnet_potential.identity
    ethanol.calc = calc
    assert calc.get_force_uncertainty(ethanol).shape == (9,)


def test_flexible_ood_calculator_reports_per_atom_out_of_domain_flags():
    """A calibrator with a domain score adds ``force_out_of_domain`` (bool per atom) to the results."""

    from core import demo
    from core.apply import demo_calibrator
    from core.calculator import CalibratedCalculator
    from core.potentials import load_potential

    potential = load_potential(str(demo.demo_model_path("molecule")))
    cal = demo_calibrator("flexible-ood", family="molecule")
    atoms = demo.demo_frames("molecule", split="test")[0].copy()
    atoms.calc = CalibratedCalculator(potential, cal)
    atoms.get_forces()
    flags = atoms.calc.results["force_out_of_domain"]
    assert flags.shape == (len(atoms),) and flags.dtype == bool
    far = atoms.copy()
    far.positions[0] += [0.0, 0.0, 0.8]  # stretch one bond far outside the MD it was calibrated on
    far.calc = CalibratedCalculator(potential, cal)
    far.get_forces()
    assert far.calc.results["force_out_of_domain"].sum() >= flags.sum()
    assert far.calc.results["max_force_uncertainty"] > atoms.calc.results["max_force_uncertainty"]
