"""core.potentials.chgnet: one batched pass vs CHGNet's own predict_structure, invariance, boxes, loading."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("chgnet")

from ase import Atoms  # noqa: E402
from ase.build import bulk, fcc111, molecule  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from core.potentials import Potential, PotentialOutput, load_potential  # noqa: E402
from core.potentials.chgnet import BOX_MARGIN, CHGNetPotential, box_cell, pretrained_path  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pot():
    return load_potential("chgnet-0.3.0", device="cpu")


@pytest.fixture
def structures():
    """Two molecules without a cell and two small periodic crystals (seeded rattles)."""
    eth = molecule("CH3CH2OH")
    eth.rattle(0.05, seed=1)
    water = molecule("H2O")
    water.rattle(0.03, seed=2)
    licl = bulk("LiCl", "rocksalt", a=5.14)
    licl.rattle(0.05, seed=3)
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    cu.rattle(0.05, seed=4)
    return [eth, licl, water, cu]


def _predict_structure(pot, atoms):
    """CHGNet's own route for one structure: pymatgen Structure -> predict_structure."""
    from pymatgen.io.ase import AseAtomsAdaptor

    structure = AseAtomsAdaptor.get_structure(atoms) if atoms.pbc.all() else pot.to_structure(atoms)
    return pot.model.predict_structure(structure, task="ef", return_atom_feas=True)


def test_protocol_names_and_shapes(pot, structures):
    assert isinstance(pot, Potential)
    assert pot.name == "chgnet-0.3.0" and pot.cutoff == 6.0 and pot.n_descriptors == 256
    assert pot.atomic_numbers == tuple(range(1, 95)) and len(pot.identity) == 64
    out = pot.compute(structures)
    n = sum(len(a) for a in structures)
    assert isinstance(out, PotentialOutput) and out.committee_std is None
    assert out.energies.shape == (4,) and out.forces.shape == (n, 3) and out.descriptors.shape == (n, 256)
    assert out.energies.dtype == np.float64 and out.forces.dtype == np.float64 and out.descriptors.dtype == np.float32
    assert np.abs(out.forces).max() > 1e-2 and np.all(out.energies < 0)


def test_one_pass_equals_predict_structure(pot, structures):
    out = pot.compute(structures)
    refs = [_predict_structure(pot, a) for a in structures]
    # CHGNet predicts eV/atom; compute returns the total energy per structure
    e_ref = np.array([float(r["e"]) * len(a) for r, a in zip(refs, structures)])
    np.testing.assert_allclose(out.energies, e_ref, rtol=1e-6, atol=0)
    np.testing.assert_allclose(out.forces, np.concatenate([r["f"] for r in refs]), rtol=0, atol=1e-5)
    # the third of the four convolution blocks is CHGNet's own atom_fea
    atom_fea = np.concatenate([r["atom_fea"] for r in refs])
    np.testing.assert_allclose(out.descriptors[:, 128:192], atom_fea, rtol=0, atol=1e-5)
    assert not np.allclose(out.descriptors[:, :64], out.descriptors[:, 192:], atol=1e-2)  # distinct layers


def test_atom_fea_only_option(structures):
    small = load_potential("chgnet", device="cpu", descriptors="atom_fea")
    assert small.n_descriptors == 64 and small.name == "chgnet-0.3.0"
    full = load_potential("chgnet", device="cpu")
    assert small.identity != full.identity
    np.testing.assert_array_equal(small.compute(structures).descriptors, full.compute(structures).descriptors[:, 128:192])


def test_batched_equals_unbatched(pot, structures):
    together = pot.compute(structures)
    alone = [pot.compute([a]) for a in structures]
    np.testing.assert_allclose(together.energies, [o.energies[0] for o in alone], rtol=1e-6, atol=0)
    np.testing.assert_allclose(together.forces, np.concatenate([o.forces for o in alone]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(together.descriptors, np.concatenate([o.descriptors for o in alone]), rtol=0, atol=1e-5)


def test_rotation_invariance(pot, structures):
    R = Rotation.from_euler("zyx", [33.0, -71.0, 12.0], degrees=True).as_matrix()
    rotated = []
    for a in structures:
        b = a.copy()
        b.positions = a.positions @ R.T
        if a.pbc.all():
            b.set_cell(np.asarray(a.cell) @ R.T, scale_atoms=False)
        rotated.append(b)
    o1, o2 = pot.compute(structures), pot.compute(rotated)
    np.testing.assert_allclose(o2.energies, o1.energies, rtol=2e-6, atol=0)
    np.testing.assert_allclose(o2.descriptors, o1.descriptors, rtol=0, atol=1e-4)
    np.testing.assert_allclose(o2.forces, o1.forces @ R.T, rtol=0, atol=1e-4)


def test_molecule_box_rule_and_no_self_interaction(pot):
    eth = molecule("CH3CH2OH")
    eth.rattle(0.05, seed=1)
    cell, pos = box_cell(eth, pot.cutoff)
    extent = eth.positions.max(axis=0) - eth.positions.min(axis=0)
    np.testing.assert_allclose(np.diag(cell), extent + 2 * 6.0 + BOX_MARGIN, rtol=1e-12)
    np.testing.assert_allclose(cell - np.diag(np.diag(cell)), 0.0)
    np.testing.assert_allclose(pos.min(axis=0), 6.0 + BOX_MARGIN / 2)  # a rigid translation inside the box
    np.testing.assert_allclose(pos - pos[0], eth.positions - eth.positions[0], atol=1e-12)
    base = pot.compute([eth])
    # a cell carried with pbc=False (as extxyz files do) is ignored; a larger box changes nothing
    boxed = eth.copy()
    boxed.set_cell([50.0, 50.0, 50.0])
    same = pot.compute([boxed])
    np.testing.assert_array_equal(same.forces, base.forces)
    big = eth.copy()
    big.set_cell(np.diag(extent + 40.0))
    big.center()
    big.pbc = True
    wide = pot.compute([big])
    # equal up to float32 rounding of the (larger) coordinates; an image inside the cutoff
    # would change forces by > 1e-2 eV/Å
    np.testing.assert_allclose(wide.energies, base.energies, rtol=1e-6)
    np.testing.assert_allclose(wide.forces, base.forces, atol=2e-4)
    np.testing.assert_allclose(wide.descriptors, base.descriptors, atol=1e-4)


def test_slab_with_open_axis_equals_slab_with_vacuum(pot):
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=8.0, periodic=True)  # 16 Å of vacuum between images
    slab.rattle(0.03, seed=5)
    open_z = slab.copy()
    open_z.pbc = (True, True, False)
    cell, _ = box_cell(open_z, pot.cutoff)
    np.testing.assert_allclose(cell[:2], np.asarray(slab.cell)[:2])
    assert abs(cell[2] @ cell[0]) < 1e-9 and abs(cell[2] @ cell[1]) < 1e-9  # orthogonal to the periodic axes
    a, b = pot.compute([slab]), pot.compute([open_z])
    np.testing.assert_allclose(b.energies, a.energies, rtol=1e-6)
    np.testing.assert_allclose(b.forces, a.forces, atol=2e-4)


def test_unknown_element_and_isolated_atom_errors(pot):
    atoms = [molecule("H2O"), Atoms("AmH", positions=[[0, 0, 0], [0, 0, 2.0]])]
    with pytest.raises(ValueError, match=r"elements model 'chgnet-0.3.0' does not know: Am \(Z=95, in structures 1\)\. "
                                         r"model 'chgnet-0.3.0' knows: H, He, Li"):
        pot.compute(atoms)
    lone = [molecule("H2O"), Atoms("Cu", positions=[[0, 0, 0]])]
    with pytest.raises(ValueError, match=r"structures\[1\] \(Cu\): some atoms have no neighbour within CHGNet's "
                                         r"cutoff of 6 Å \(isolated atoms\)"):
        pot.compute(lone)
    with pytest.raises(ValueError, match="structures: empty batch"):
        pot.compute([])


def test_names_aliases_and_variants(pot, structures):
    assert load_potential("chgnet", device="cpu").identity == pot.identity
    old = load_potential("chgnet-0.2.0", device="cpu")
    r2 = load_potential("chgnet-r2scan", device="cpu")
    assert (old.cutoff, r2.cutoff) == (5.0, 6.0)
    assert len({pot.identity, old.identity, r2.identity}) == 3
    e = [p.compute(structures[:2]).energies for p in (pot, old, r2)]
    assert not np.allclose(e[0], e[1]) and not np.allclose(e[0], e[2])
    # 0.2.0 is built as CHGNet.load builds it (with its MLP output bias)
    from chgnet.model import CHGNet

    ref = CHGNet.load(model_name="0.2.0", use_device="cpu", verbose=False)
    r = ref.predict_structure(old.to_structure(structures[0]), task="ef")
    np.testing.assert_allclose(e[1][0], float(r["e"]) * len(structures[0]), rtol=1e-6)
    with pytest.raises(ValueError, match=r"dtype: CHGNet computes in float32 only"):
        load_potential("chgnet", dtype="float64")
    with pytest.raises(ValueError, match=r"descriptors: expected one of \('all', 'atom_fea'\), got 'last'"):
        load_potential("chgnet", descriptors="last")
    with pytest.raises(ValueError, match="committee: the CHGNet backend does not support committees"):
        load_potential("chgnet", committee=["chgnet-0.2.0"])


def test_local_checkpoint_loads_weights_only(pot, structures, tmp_path):
    path = tmp_path / "my_chgnet.pth.tar"
    shutil.copy(pretrained_path("chgnet-0.3.0"), path)
    local = load_potential(path, device="cpu", trusted=False)  # weights-only: no trust needed
    assert isinstance(local, CHGNetPotential) and local.name == "my_chgnet"
    np.testing.assert_allclose(local.compute(structures).forces, pot.compute(structures).forces, atol=1e-6)
    folder = tmp_path / "ckpts"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"model: '.*ckpts' is a directory, not a model file"):
        load_potential(folder)


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path):
    import torch

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pth.tar"
    torch.save({"model": {"state_dict": {}, "model_args": {"atom_graph_cutoff": 6}, "x": Payload()}}, evil)
    with pytest.raises(ValueError, match=r"evil.pth.tar: not a CHGNet checkpoint readable with weights_only=True"):
        load_potential(evil)
    assert not marker.exists()
    plain = tmp_path / "plain.pth.tar"
    torch.save({"weights": torch.zeros(3)}, plain)
    with pytest.raises(ValueError, match=r"plain.pth.tar' is not a model file FlexCal recognises"):
        load_potential(plain)


def test_ase_calculator_and_featurize(pot, structures):
    from core.featurize import featurize

    calc = pot.ase_calculator()
    a = structures[0].copy()
    a.calc = calc
    out = pot.compute([structures[0]])
    assert a.get_potential_energy() == pytest.approx(float(out.energies[0]), abs=0)
    np.testing.assert_array_equal(a.get_forces(), out.forces)
    labelled = []
    for s in structures:
        s = s.copy()
        s.arrays["REF_forces"] = np.zeros((len(s), 3))
        labelled.append(s)
    table = featurize(labelled, pot, batch_size=3)
    assert table.descriptors.shape == (sum(len(s) for s in structures), 256)
    assert table.meta["potential"] == "chgnet-0.3.0" and table.meta["potential_identity"] == pot.identity
    np.testing.assert_allclose(table.errors, np.linalg.norm(pot.compute(structures).forces, axis=1), atol=1e-5)
