"""train_mace: input validation, a tiny real training run, determinism, fine-tuning."""

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from core.training import check_labels, train_mace

TINY = dict(num_channels=8, max_L=0, num_interactions=1, correlation=2, max_num_epochs=2,
            batch_size=5, r_max=4.0)


def _frames(n=12, seed=0):
    frames = []
    for i in range(n):
        a = bulk("Cu", "fcc", a=3.6, cubic=True)
        a.rattle(0.05, seed=seed * 1000 + i)
        a.calc = EMT()
        a.info["REF_energy"] = a.get_potential_energy()
        a.arrays["REF_forces"] = a.get_forces()
        a.calc = None
        a.info["config_type"] = "rattled"
        frames.append(a)
    return frames


def test_empty_training_set(tmp_path):
    with pytest.raises(ValueError, match="training set is empty"):
        train_mace([], None, tmp_path)


def test_missing_energy_names_frame_and_key(tmp_path):
    frames = _frames(3)
    del frames[2].info["REF_energy"]
    with pytest.raises(ValueError, match=r"train\[2\]: missing energy label atoms.info\['REF_energy'\]"):
        train_mace(frames, None, tmp_path)


def test_missing_forces_in_valid_names_frame_and_key(tmp_path):
    frames = _frames(4)
    del frames[3].arrays["REF_forces"]
    with pytest.raises(ValueError, match=r"valid\[1\]: missing force label atoms.arrays\['REF_forces'\]"):
        train_mace(frames[:2], frames[2:], tmp_path)


def test_bad_labels_are_reported():
    frames = _frames(2)
    frames[0].arrays["F"] = np.zeros((3, 3))
    frames[0].info["E"] = 1.0
    with pytest.raises(ValueError, match=r"train\[0\]: force label 'F' has shape \(3, 3\), expected \(4, 3\)"):
        check_labels(frames[:1], "E", "F")
    frames[1].info["E"] = float("nan")
    with pytest.raises(ValueError, match=r"x\[0\]: energy label 'E' is not finite"):
        check_labels(frames[1:], "E", "F", what="x")
    with pytest.raises(TypeError, match=r"train\[0\]: expected ase.Atoms"):
        check_labels(["x"], "E", "F")


def test_bad_hyperparameters(tmp_path):
    with pytest.raises(ValueError, match="num_channels must be a positive integer, got 0"):
        train_mace(_frames(2), None, tmp_path, num_channels=0)
    with pytest.raises(ValueError, match="max_L must be 0, 1, 2 or 3, got 5"):
        train_mace(_frames(2), None, tmp_path, max_L=5)
    with pytest.raises(FileNotFoundError, match="foundation model not found"):
        train_mace(_frames(2), None, tmp_path, foundation_model=tmp_path / "nope.model")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    frames = _frames(12)
    workdir = tmp_path_factory.mktemp("train")
    calls = []
    path = train_mace(frames[:10], frames[10:], workdir, name="tiny", seed=3,
                      progress=lambda d, t: calls.append((d, t)), **TINY)
    return path, frames, calls


@pytest.mark.slow
def test_train_mace_gives_loadable_float64_model(tiny_model):
    import mace  # noqa: F401
    import torch
    from core.potentials.mace_foundation import mace_own_calculator

    path, frames, calls = tiny_model
    assert path.name == "tiny.model" and path.is_file()
    assert calls == [(1, 2), (2, 2)]
    history = json.loads((path.parent / "tiny_history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [0, 1]
    assert history["n_train"] == 10 and history["n_valid"] == 2
    model = torch.load(path, map_location="cpu", weights_only=False)
    assert next(model.parameters()).dtype == torch.float64
    atoms = frames[0].copy()
    atoms.calc = mace_own_calculator(path, device="cpu", default_dtype="float64")
    forces = atoms.get_forces()
    assert forces.shape == (4, 3) and np.all(np.isfinite(forces))
    assert np.isfinite(atoms.get_potential_energy())


@pytest.mark.slow
def test_train_mace_is_deterministic_and_finetunes(tiny_model, tmp_path):
    import mace  # noqa: F401
    import torch

    path, frames, _ = tiny_model
    again = train_mace(frames[:10], frames[10:], tmp_path / "again", name="tiny", seed=3, **TINY)
    a = torch.load(path, weights_only=False).state_dict()
    b = torch.load(again, weights_only=False).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    tuned = train_mace(frames[:10], frames[10:], tmp_path / "ft", name="ft", seed=3,
                       foundation_model=path, max_num_epochs=1, batch_size=5)
    c = torch.load(tuned, weights_only=False).state_dict()
    assert set(c) == set(a)                               # same architecture
    assert any(not torch.equal(a[k], c[k]) for k in a)    # and it moved
