"""core.potentials: one-pass MACE outputs vs MACECalculator, invariance, loading."""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
from ase import Atoms
from scipy.spatial.transform import Rotation

from core.potentials import Potential, PotentialOutput, load_potential
from core.potentials.mace import (
    DEFAULT_MODEL,
    FOUNDATION_MODELS,
    FoundationModelUnavailable,
    MACEPotential,
    foundation_model_source,
)


@pytest.fixture(scope="module")
def pot(tiny_mace_model):
    return load_potential(tiny_mace_model, device="cpu")


def _reference(model_path, structures):
    """Energies, forces and descriptors from mace's own ASE calculator (two passes)."""
    from core.potentials import restored_environ
    from core.potentials.mace_foundation import mace_own_calculator

    import torch

    calc = mace_own_calculator(model_path, device="cpu", default_dtype="float64")
    with restored_environ():  # (holds the lock: no other thread is inside a load right now)
        assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ  # set for mace's own load only
    e, f, d = [], [], []
    # no TorchScript re-specialisation per shape: same numbers, several times faster here
    with torch.jit.optimized_execution(False):
        for atoms in structures:
            atoms = atoms.copy()
            atoms.calc = calc
            e.append(atoms.get_potential_energy())
            f.append(atoms.get_forces())
            d.append(calc.get_descriptors(atoms, invariants_only=True))
    return np.array(e), np.concatenate(f), np.concatenate(d)


def test_protocol_and_attributes(pot):
    assert isinstance(pot, Potential)
    assert pot.atomic_numbers == (1, 3, 6, 7, 8, 17, 29)
    assert pot.n_descriptors == 16 and pot.r_max == 4.0
    assert pot.name == "tiny_seed0" and len(pot.identity) == 64
    assert pot.head == "Default"


def test_one_pass_equals_mace_calculator(pot, tiny_mace_model, tiny_structures):
    out = pot.compute(tiny_structures)
    n = sum(len(a) for a in tiny_structures)
    assert isinstance(out, PotentialOutput)
    assert out.energies.shape == (12,) and out.forces.shape == (n, 3) and out.descriptors.shape == (n, 16)
    assert out.descriptors.dtype == np.float64 and out.committee_std is None
    e, f, d = _reference(tiny_mace_model, tiny_structures)
    np.testing.assert_allclose(out.energies, e, rtol=0, atol=1e-10)
    np.testing.assert_allclose(out.forces, f, rtol=0, atol=1e-10)
    np.testing.assert_allclose(out.descriptors, d, rtol=0, atol=1e-10)
    assert np.abs(out.forces).max() > 1e-3  # not trivially zero


def test_rotation_invariance(pot, tiny_structures):
    rot = Rotation.from_euler("zyx", [33.0, -71.0, 12.0], degrees=True)
    R = rot.as_matrix()
    rotated = []
    for a in tiny_structures:
        b = a.copy()
        b.positions = a.positions @ R.T
        if a.pbc.any():
            b.set_cell(np.asarray(a.cell) @ R.T, scale_atoms=False)
        rotated.append(b)
    o1, o2 = pot.compute(tiny_structures), pot.compute(rotated)
    np.testing.assert_allclose(o2.energies, o1.energies, rtol=0, atol=1e-9)
    np.testing.assert_allclose(o2.descriptors, o1.descriptors, rtol=0, atol=1e-9)
    np.testing.assert_allclose(o2.forces, o1.forces @ R.T, rtol=0, atol=1e-9)


def test_unknown_element_lists_it(pot):
    atoms = [Atoms("CH4", positions=np.eye(5, 3) * 1.1), Atoms("XeH", positions=[[0, 0, 0], [0, 0, 1.7]])]
    with pytest.raises(ValueError, match=r"elements model 'tiny_seed0' does not know: Xe \(Z=54, in structures 1\)\. "
                                         r"model 'tiny_seed0' knows: H, Li, C, N, O, Cl, Cu"):
        pot.compute(atoms)


def test_float32(tiny_mace_model, pot, tiny_structures):
    p32 = load_potential(tiny_mace_model, device="cpu", dtype="float32")
    assert p32.identity != pot.identity
    o32, o64 = p32.compute(tiny_structures), pot.compute(tiny_structures)
    assert o32.descriptors.dtype == np.float32
    np.testing.assert_allclose(o32.forces, o64.forces, atol=1e-4)
    np.testing.assert_allclose(o32.descriptors, o64.descriptors, atol=1e-4)


def test_identity_is_content_hash(tiny_mace_model, pot, tmp_path, make_tiny_mace_model):
    copy = tmp_path / "renamed.model"
    shutil.copy(tiny_mace_model, copy)
    assert load_potential(copy, device="cpu").identity == pot.identity
    other = load_potential(make_tiny_mace_model(seed=1), device="cpu")
    assert other.identity != pot.identity


def test_committee_std(tiny_mace_committee, tiny_structures):
    com = load_potential(tiny_mace_committee[0], committee=tiny_mace_committee[1:], device="cpu")
    assert com.name == "tiny_seed0 (+2 committee)"
    structures = tiny_structures[3:9]  # molecules and crystals
    out = com.compute(structures)
    members = [load_potential(p, device="cpu").compute(structures) for p in tiny_mace_committee]
    # predictions are the primary model's
    np.testing.assert_allclose(out.forces, members[0].forces, atol=1e-12)
    np.testing.assert_allclose(out.energies, members[0].energies, atol=1e-12)
    np.testing.assert_allclose(out.descriptors, members[0].descriptors, atol=1e-12)
    # committee_std = norm over xyz of the per-component population std across the 3 models
    F = np.stack([m.forces for m in members])
    expected = np.sqrt((F.std(axis=0, ddof=0) ** 2).sum(axis=1))
    np.testing.assert_allclose(out.committee_std, expected, rtol=1e-10, atol=1e-14)
    assert out.committee_std.shape == (len(out.forces),) and np.all(out.committee_std > 0)
    # same via a list of paths
    assert load_potential(list(tiny_mace_committee), device="cpu").identity == com.identity


def test_committee_must_share_elements(tiny_mace_model, make_tiny_mace_model):
    other = make_tiny_mace_model(seed=3, elements=("H", "C"))
    with pytest.raises(ValueError, match=r"committee: .* knows elements \[1, 6\], the primary model \[1, 3, 6, 7, 8, 17, 29\]"):
        load_potential(tiny_mace_model, committee=[other], device="cpu")


def test_ase_calculator_matches_compute(pot, tiny_structures):
    from mace.calculators import MACECalculator

    calc = pot.ase_calculator()
    assert isinstance(calc, MACECalculator)
    atoms = tiny_structures[6].copy()
    atoms.calc = calc
    out = pot.compute([tiny_structures[6]])
    np.testing.assert_allclose(atoms.get_potential_energy(), out.energies[0], atol=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), out.forces, atol=1e-10)


# ----------------------------------------------------------------- loading
def test_bad_arguments(tiny_mace_model, tmp_path):
    with pytest.raises(ValueError, match=r"dtype: expected one of \('float64', 'float32'\), got 'float16'"):
        load_potential(tiny_mace_model, dtype="float16")
    with pytest.raises(ValueError, match=r"model: 'not-a-model' is neither a known model name nor an existing file; "
                                         r"known names: demo:licl, .*chgnet-0\.3\.0, .*mace-mp-0b3-medium"):
        load_potential("not-a-model")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_potential(tmp_path / "missing.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match=r"junk.model: not a loadable MACE .model file"):
        load_potential(junk)
    import torch

    sd = tmp_path / "state.model"
    torch.save({"model": {}}, sd)
    with pytest.raises(ValueError, match=r"state.model: contains a dict \(a training checkpoint or state dict\)"):
        load_potential(sd)
    with pytest.raises(ValueError, match=r"head: 'nope' is not a head of this model; heads: \['Default'\]"):
        load_potential(tiny_mace_model, head="nope")
    with pytest.raises(TypeError, match=r"descriptors: not an option of the MACE backend; its options: .*head"):
        load_potential(tiny_mace_model, descriptors="all")


def test_directory_and_device_errors_name_the_culprit(tiny_mace_model, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"model: '.*models' is a directory, not a model file"):
        load_potential(folder)
    with pytest.raises(ValueError, match=r"model: '.*models' is a directory, not a model file"):
        load_potential(str(folder) + "/")
    # the device is checked before the model is touched, and the message blames the device
    with pytest.raises(ValueError, match=r"^device: 'tpu' is not a device FlexCal can use; expected 'auto', 'cpu'"):
        load_potential(tiny_mace_model, device="tpu")
    with pytest.raises(ValueError, match=r"^device: 'tpu' is not a device"):
        load_potential("no-such-model", device="tpu")
    with pytest.raises(ValueError, match=r"^device: 'cuda:x' is not a device"):
        load_potential(tiny_mace_model, device="cuda:x")
    with pytest.raises(TypeError, match=r"^device: expected one of .* got int 3"):
        load_potential(tiny_mace_model, device=3)
    unknown = tmp_path / "weights.bin"
    unknown.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"weights.bin' is not a model file FlexCal recognises: expected a MACE .model"):
        load_potential(unknown)


def test_untrusted_model_file_is_refused_before_reading(tiny_mace_model, tmp_path, monkeypatch):
    from core.potentials import UntrustedModelError

    import torch

    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    with pytest.raises(UntrustedModelError, match=r"refusing to load '.*tiny_seed0.model' with trusted=False: "
                                                  r"a MACE model file is a Python pickle and loading it runs code"):
        load_potential(tiny_mace_model, trusted=False)
    with pytest.raises(UntrustedModelError, match="refusing to load"):
        load_potential("demo:licl", committee=[tiny_mace_model], trusted=False)
    with pytest.raises(TypeError, match=r"trusted: expected True or False, got 'yes'"):
        load_potential(tiny_mace_model, trusted="yes")
    assert calls == []


def test_mace_import_and_load_leave_the_environment_alone(tiny_mace_model):
    """mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 at import; load_potential puts it back (fresh process)."""
    import subprocess
    import sys

    code = (
        "import os, pickle, torch\n"
        "from core.potentials import load_potential\n"
        "assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ\n"
        f"p = load_potential({str(tiny_mace_model)!r}, device='cpu')\n"
        "assert p.n_descriptors == 16\n"
        "print('after:', os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'))\n"
        "class Evil:\n"
        "    def __reduce__(self): return (print, ('code ran',))\n"
        "torch.save(Evil(), '/dev/null') if False else None\n"
        "import io; buf = io.BytesIO(); torch.save({'x': Evil()}, buf); buf.seek(0)\n"
        "try:\n"
        "    torch.load(buf)\n"
        "    print('unsafe load allowed')\n"
        "except pickle.UnpicklingError:\n"
        "    print('weights-only default kept')\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "after: None" in res.stdout
    assert "weights-only default kept" in res.stdout and "code ran" not in res.stdout


def test_model_loads_and_forward_passes_from_many_threads(tiny_mace_model, tiny_structures, monkeypatch):
    """e3nn's torch.fx tracing at unpickling patches torch.nn.Module.__call__ for the whole process:
    a load must hold the guard alone, and loads and forwards from several threads all succeed."""
    import threading

    import torch

    from core.potentials import mace as mace_backend
    from core.torch_guard import TORCH_GUARD

    seen = []
    real_load = torch.load

    def watching_load(*args, **kwargs):  # may another thread run a module call now?
        entered = threading.Event()

        def call():
            with TORCH_GUARD.calls():
                entered.set()

        t = threading.Thread(target=call, daemon=True)
        t.start()
        seen.append(entered.wait(0.3))  # False: the load holds the guard
        result = real_load(*args, **kwargs)
        seen.append(t)
        return result

    monkeypatch.setattr(torch, "load", watching_load)
    model = mace_backend.load_model_file(tiny_mace_model, "cpu")
    seen[1].join(10)
    assert seen[0] is False and not seen[1].is_alive() and isinstance(model, torch.nn.Module)
    monkeypatch.setattr(torch, "load", real_load)

    pot = load_potential(tiny_mace_model, device="cpu")
    pot32 = load_potential(tiny_mace_model, device="cpu", dtype="float32")  # torch's default dtype is global
    expected = pot.compute(tiny_structures[:2]).forces
    results, results32, errors = [], [], []

    def work(i):
        try:
            if i % 3 == 0:
                results.append(load_potential(tiny_mace_model, device="cpu").compute(tiny_structures[:2]).forces)
            elif i % 3 == 1:
                for _ in range(3):
                    results.append(pot.compute(tiny_structures[:2]).forces)
            else:
                for _ in range(3):
                    results32.append(pot32.compute(tiny_structures[:2]).forces)
        except Exception as exc:  # pragma: no cover - the failure this test guards against
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and len(results) == 2 + 2 * 3 and len(results32) == 2 * 3
    for forces in results:  # float64 throughout, never rounded by a float32 neighbour (TorchScript
        np.testing.assert_allclose(forces, expected, rtol=1e-9, atol=1e-12)  # re-specialises: to rounding)
    for forces in results32:
        np.testing.assert_allclose(forces, expected, rtol=1e-4, atol=1e-6)


def test_restored_environ_restores_set_and_unset(monkeypatch):
    import os

    from core.potentials import restored_environ

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0")
    with restored_environ():
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "0"
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    with pytest.raises(RuntimeError):
        with restored_environ():
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
            raise RuntimeError("load failed")
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ


def test_restored_environ_from_two_threads_leaves_nothing_set(monkeypatch):
    """Overlapping blocks in two threads (the app's warm-up importing mace while a page loads a model)."""
    import os
    import threading

    from core.potentials import restored_environ

    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def first():
        with restored_environ():
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
            first_in.set()
            second_in.wait(0.5)  # (with the lock the second block cannot start before this one ends)
        first_out.set()

    def second():  # would save the first block's "1" and restore it after the first block ended
        first_in.wait(10)
        with restored_environ():
            second_in.set()
            first_out.wait(0.5)
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ


def test_from_calculator_matches_calculator_and_compute(pot, tiny_mace_committee, tiny_structures):
    from mace.calculators import MACECalculator

    calc = pot.ase_calculator()
    wrapped = MACEPotential.from_calculator(calc)
    out, ref = wrapped.compute(tiny_structures[:4]), pot.compute(tiny_structures[:4])
    np.testing.assert_allclose(out.forces, ref.forces, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.descriptors, ref.descriptors, rtol=0, atol=1e-12)
    assert wrapped.identity != pot.identity and len(wrapped.identity) == 64
    # a committee calculator: mean energy/forces as MACECalculator reports them, and the spread
    members = [load_potential(p, device="cpu") for p in tiny_mace_committee]
    ccalc = MACECalculator(models=[m.models[0] for m in members], device="cpu", default_dtype="float64")
    cpot = MACEPotential.from_calculator(ccalc)
    atoms = tiny_structures[7].copy()
    atoms.calc = ccalc
    res = cpot.compute([atoms])
    np.testing.assert_allclose(res.energies[0], atoms.get_potential_energy(), rtol=1e-12)
    np.testing.assert_allclose(res.forces, atoms.get_forces(), rtol=1e-10, atol=1e-12)
    F = np.stack([m.compute([atoms]).forces for m in members])
    np.testing.assert_allclose(res.committee_std, np.sqrt(F.var(axis=0).sum(axis=1)), rtol=1e-10)
    ccalc.energy_units_to_eV = 2.0
    with pytest.raises(ValueError, match="unit conversions"):
        MACEPotential.from_calculator(ccalc)


def test_foundation_names_map_to_mace_urls_and_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert DEFAULT_MODEL == "mace-mp-0b3-medium"
    url, path = foundation_model_source("mace-mp-0b3-medium")
    assert url == "https://github.com/ACEsuit/mace-mp/releases/download/mace_mp_0b3/mace-mp-0b3-medium.model"
    assert path == tmp_path / "mace" / "macemp0b3mediummodel"  # mace_mp strips non-alphanumerics
    url, path = foundation_model_source("mace-off23-small")
    assert url.endswith("mace_off23/MACE-OFF23_small.model")
    assert path == tmp_path / "mace" / "MACE-OFF23_small.model"
    for name in FOUNDATION_MODELS:
        foundation_model_source(name)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network: every download path of mace-torch raises at once (cannot hang)."""
    import mace.calculators.foundations_models as fm

    calls = []

    def refuse(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(fm, "_urlretrieve_with_timeout", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return calls


@pytest.mark.parametrize("name", ["mace-mp-0b3-medium", "mace-off23-small"])
def test_foundation_model_offline_gives_download_hint(offline, tmp_path, name):
    url, cache = foundation_model_source(name)
    with pytest.raises(FoundationModelUnavailable) as info:
        load_potential(name)
    msg = str(info.value)
    assert f"Download {url} and save it as {cache}" in msg
    assert "pass the path of a local .model file" in msg
    assert "URLError" in msg
    assert offline == [url]  # exactly one attempt, through mace-torch's own downloader
    assert not cache.exists()  # no half-written file left behind


def test_foundation_model_from_cache_needs_no_network(offline, tiny_mace_model, tiny_structures):
    _, cache = foundation_model_source("mace-mp-0-small")
    cache.parent.mkdir(parents=True)
    shutil.copy(tiny_mace_model, cache)
    p = load_potential("mace-mp-0-small", device="cpu")
    assert isinstance(p, MACEPotential) and p.name == "mace-mp-0-small"
    assert p.model_paths == [cache] and offline == []
    assert p.compute(tiny_structures[:2]).forces.shape == (13, 3)
