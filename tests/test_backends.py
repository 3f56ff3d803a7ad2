"""core.potentials.registry: one resolver, pluggable backends, model listings, file sniffing."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list

from core.potentials import (
    Potential,
    PotentialCalculator,
    PotentialOutput,
    available_models,
    backends,
    check_elements,
    check_structures,
    load_potential,
    register_backend,
    unregister_backend,
)
from core.potentials.registry import sniff_torch_file


class ToyEMTPotential:
    """A one-module MLIP stand-in: ASE's EMT for energies/forces, radial symmetry functions as descriptors.

    Descriptors: for each of 6 Gaussian shells (centres 2.0..4.5 Å, width 0.5 Å), the sum over
    neighbours within ``cutoff`` of exp(-(r - r_s)^2 / 0.5^2) * fc(r), fc a cosine cutoff:
    invariant by construction.
    """

    def __init__(self, cutoff: float = 5.0, *, device: str = "cpu"):
        self.cutoff = float(cutoff)
        self.device = device
        self.name = f"toy-emt (cutoff {self.cutoff:g})"
        self.identity = f"toy-emt-v1-cutoff={self.cutoff!r}"
        self.atomic_numbers = (1, 6, 7, 8, 13, 28, 29, 46, 47, 78, 79)
        self.centres = np.linspace(2.0, 4.5, 6)

    def compute(self, structures):
        structures = check_structures(structures)
        check_elements(structures, self.atomic_numbers, f"model {self.name!r}")
        energies, forces, descriptors = [], [], []
        for atoms in structures:
            a = atoms.copy()
            a.calc = EMT()
            energies.append(a.get_potential_energy())
            forces.append(a.get_forces())
            i, d = neighbor_list("id", a, self.cutoff)
            fc = 0.5 * (np.cos(np.pi * d / self.cutoff) + 1.0)
            g = np.exp(-((d[:, None] - self.centres[None, :]) / 0.5) ** 2) * fc[:, None]
            desc = np.zeros((len(a), len(self.centres)))
            np.add.at(desc, i, g)
            descriptors.append(desc)
        return PotentialOutput(np.array(energies), np.concatenate(forces), np.concatenate(descriptors))

    def ase_calculator(self):
        return PotentialCalculator(self)


def load_toy(spec, *, device="cpu", cutoff=5.0):
    return ToyEMTPotential(cutoff, device=device)


@pytest.fixture
def toy_backend():
    backend = register_backend("toy-*", load_toy, name="toy", label="Toy EMT", offline=True, kind="toy model",
                               description="EMT with radial descriptors (a test backend)",
                               models={"toy-emt": "Toy EMT"})
    yield backend
    unregister_backend("toy")


def _cu_frames(n, seed):
    """Rattled Cu supercells with noisy 'reference' forces whose noise grows with the rattle."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 1))
        amp = 0.03 + 0.12 * rng.random()
        atoms.rattle(amp, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        ref = atoms.get_forces() + rng.normal(scale=amp * 2.0, size=(len(atoms), 3))
        atoms.calc = None
        atoms.arrays["REF_forces"] = ref
        atoms.info["config_type"] = "hot" if amp > 0.09 else "cold"
        frames.append(atoms)
    return frames


def test_toy_backend_runs_through_featurize_calibrate_report(toy_backend):
    from core.calibration import make_calibrator
    from core.featurize import featurize
    from core.metrics import calibration_report

    assert "toy-emt" in [m["name"] for m in available_models()]
    row = next(m for m in available_models() if m["name"] == "toy-emt")
    assert row["label"] == "Toy EMT — toy model, available offline" and row["offline"] is True
    pot = load_potential("toy-emt", device="cpu", cutoff=4.5)
    assert isinstance(pot, ToyEMTPotential) and isinstance(pot, Potential) and pot.cutoff == 4.5
    frames = _cu_frames(40, seed=0)
    sites = featurize(frames, pot, batch_size=8)
    assert sites.descriptors.shape == (640, 6) and sites.meta["potential_identity"] == pot.identity
    np.testing.assert_allclose(sites.forces_ref, np.concatenate([f.arrays["REF_forces"] for f in frames]))
    cal, test = sites.split(test_fraction=0.5, seed=0)
    split = make_calibrator("split", confidence=0.9).fit(cal)
    flexible = make_calibrator("flexible", confidence=0.9, max_epochs=5, seed=0).fit(cal)
    for calibrator in (split, flexible):
        widths = calibrator.predict(test)
        assert widths.shape == (len(test),) and np.all(widths > 0)
        report = calibration_report(test.errors, widths, confidence=0.9, species=test.species,
                                    structure_ids=test.structure_ids)
        assert 0.7 <= report["coverage"] <= 1.0
    # split CP has one width for every site; q_θ's depend on the descriptors
    assert np.ptp(split.predict(test)) == 0 and np.ptp(flexible.predict(test)) > 0


def test_toy_backend_in_calibrated_calculator(toy_backend):
    from core.calculator import CalibratedCalculator
    from core.calibration import make_calibrator
    from core.featurize import featurize

    pot = load_potential("toy-emt")
    cal = make_calibrator("knn", confidence=0.9).fit(featurize(_cu_frames(12, seed=1), pot))
    atoms = _cu_frames(1, seed=2)[0]
    calc = CalibratedCalculator("toy-emt", cal)
    atoms.calc = calc
    assert calc.mode == "potential"
    np.testing.assert_allclose(atoms.get_forces(), pot.compute([atoms]).forces)
    assert calc.get_force_uncertainty(atoms).shape == (16,)


def test_registration_rules(toy_backend, tmp_path):
    with pytest.raises(ValueError, match=r"name: a backend 'toy' is already registered; pass replace=True"):
        register_backend("toy-*", load_toy, name="toy", label="Toy")
    with pytest.raises(TypeError, match=r"cutoff2: not an option of the Toy EMT backend; its options: device, cutoff"):
        load_potential("toy-emt", cutoff2=3.0)
    with pytest.raises(ValueError, match=r"committee: the Toy EMT backend does not support committees"):
        load_potential("toy-emt", committee=["toy-emt"])
    with pytest.raises(ValueError, match=r"aliases: \['x'\] point to names that are not in models"):
        register_backend(None, load_toy, name="bad", label="Bad", models={"a": "A"}, aliases={"x": "b"})
    with pytest.raises(TypeError, match=r"matches: expected a predicate"):
        register_backend(42, load_toy, name="bad", label="Bad")
    with pytest.raises(TypeError, match=r"comittee: not a backend trait; traits: aliases, kind, committee"):
        register_backend("bad-*", load_toy, name="bad", label="Bad", comittee=True)
    # a predicate backend for files takes precedence over "not a model file FlexCal recognises"
    weights = tmp_path / "params.toy"
    weights.write_text("cutoff 4.0")
    with pytest.raises(ValueError, match="is not a model file FlexCal recognises"):
        load_potential(weights)
    register_backend(lambda spec: str(spec).endswith(".toy"),
                     lambda spec, *, device: ToyEMTPotential(float(open(spec).read().split()[1]), device=device),
                     name="toy-files", label="Toy files")
    try:
        assert load_potential(weights).cutoff == 4.0
    finally:
        unregister_backend("toy-files")
    with pytest.raises(ValueError, match=r"name: no backend 'toy-files' is registered"):
        unregister_backend("toy-files")


def test_loaded_potential_is_returned_unchanged(toy_backend):
    pot = load_potential("toy-emt")
    assert load_potential(pot) is pot
    with pytest.raises(ValueError, match="committee: cannot add committee members to an already loaded Potential"):
        load_potential(pot, committee=["toy-emt"])
    with pytest.raises(TypeError, match=r"spec: expected a model name, a path or a Potential, got int"):
        load_potential(42)


def test_builtin_listing_names_chgnet_mace_and_demo(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no MACE foundation model is cached here
    rows = {m["name"]: m for m in available_models()}
    assert [b.name for b in backends()][:3] == ["demo", "chgnet", "mace"]
    assert rows["demo:licl"]["offline"] is True and rows["demo:licl"]["aliases"] == ["demo"]
    mace = rows["mace-mp-0b3-medium"]
    assert mace["offline"] is False and mace["label"].endswith("foundation model, not cached: downloaded by "
                                                                  "mace-torch on first use")
    pytest.importorskip("chgnet")
    assert rows["chgnet-0.3.0"]["label"] == "CHGNet 0.3.0 — foundation model, available offline"
    assert rows["chgnet-0.3.0"]["offline"] is True and rows["chgnet-0.3.0"]["aliases"] == ["chgnet"]
    assert {"chgnet-0.2.0", "chgnet-r2scan"} <= set(rows)


def test_demo_names_resolve_to_the_demo_models():
    from core.demo import demo_model_path

    pot = load_potential("demo", device="cpu")
    assert pot.identity == load_potential(str(demo_model_path()), device="cpu").identity
    assert load_potential("demo:molecule", device="cpu").model_paths == [demo_model_path("molecule")]
    with pytest.raises(ValueError, match=r"unknown demo family 'nope'"):
        load_potential("demo:nope")


def test_sniffing_reads_without_unpickling(tiny_mace_model, tmp_path):
    import torch

    sniffed = sniff_torch_file(tiny_mace_model)
    assert any(g.startswith("mace.modules") for g in sniffed["globals"])
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "payload.pt"
    torch.save({"x": Payload()}, path)
    assert "io.open" in sniff_torch_file(path)["globals"] and not marker.exists()
    text = tmp_path / "notes.txt"
    text.write_text("not a zip")
    assert sniff_torch_file(text) is None
