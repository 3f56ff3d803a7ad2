"""Shared pytest fixtures for FlexCal.

Fixtures (import nothing; just name them as test arguments):

``shared_data`` (session) -> pathlib.Path
    The public DFT datasets directory, ``$FLEXCAL_SHARED_DATA`` or
    ``<repo>/../shared/data``. Skips the test with a clear reason when absent
    (a fresh clone). Mark such tests ``@pytest.mark.shared_data``.

``tiny_mace_model`` (session) -> pathlib.Path
    A ``.model`` file (``torch.save`` of a ``mace.modules.ScaleShiftMACE`` built
    in code, float64, seeded, untrained) for elements H, C, N, O, Li, Cl, Cu:
    r_max 4 Å, 2 interactions, hidden irreps 8x0e+8x1o, so 16 descriptors per
    atom. Loads in well under a second; use it wherever "a MACE model" is needed
    (``core.potentials.load_potential(tiny_mace_model)``).

``tiny_mace_committee`` (session) -> list[pathlib.Path]
    Three such models with different seeds (same architecture and elements);
    ``load_potential(paths[0], committee=paths[1:])``.

``make_tiny_mace_model`` (session) -> callable(seed=0, elements=TINY_ELEMENTS, **config) -> Path
    Builds further tiny models (cached per arguments) for tests needing other
    elements or sizes.

``tiny_structures`` (function) -> list[ase.Atoms]
    Twelve small seeded structures made only of the tiny model's elements: six
    non-periodic organic molecules (6-10 atoms, config_type "molecule") and six
    periodic crystals (rattled rock-salt LiCl and fcc Cu, 8 and 4 atoms,
    config_type "crystal"), with random ``REF_energy`` (eV) in ``atoms.info``
    and ``REF_forces`` (eV/Å) in ``atoms.arrays`` -- the shape of data
    ``core.data.read_dataset`` returns. A fresh copy per test (mutate freely).

Torch threads: at most 2 intra-op threads (``OMP_NUM_THREADS`` is set before torch
is imported; the team shares two CPU cores).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

# at most 2 torch threads (set before torch is imported); MKL_NUM_THREADS is left alone on
# purpose: an extra MKL worker thread busy-waits and, on shared cores, slowed mace training
# subprocesses (which inherit the environment) about tenfold
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_ELEMENTS = ("H", "C", "N", "O", "Li", "Cl", "Cu")


def _limit_torch_threads() -> None:
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def one_torch_thread():
    """torch at one intra-op thread for the test (q_θ fits bit-reproducible), restored afterwards.

    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------ shared data
@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data`` (or ``$FLEXCAL_SHARED_DATA``); skips when absent."""
    path = Path(os.environ.get("FLEXCAL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(
            f"public DFT datasets not found at {path} (set FLEXCAL_SHARED_DATA to their folder "
            "to run this test)"
        )
    return path


@pytest.fixture(autouse=True)
def _weights_only_default_kept():
    """Fail the test that leaves ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` set (every later torch.load would
    unpickle code); checked holding the environment lock, so no load in another thread is midway."""
    yield
    from core.potentials.base import WEIGHTS_ONLY_ENV, restored_environ

    with restored_environ():
        leaked = os.environ.get(WEIGHTS_ONLY_ENV)
    assert leaked is None, f"{WEIGHTS_ONLY_ENV}={leaked!r} left set in the test process"


# ------------------------------------------------------------- tiny MACE
def build_tiny_mace(path: Path, seed: int = 0, elements=TINY_ELEMENTS, r_max: float = 4.0,
                    num_interactions: int = 2, hidden_irreps: str = "8x0e + 8x1o",
                    max_ell: int = 2, correlation: int = 2) -> Path:
    """torch.save a seeded, untrained float64 ScaleShiftMACE to ``path``."""
    from core.potentials.mace_foundation import mace_modules

    mace_modules()  # mace before e3nn, its environment change contained
    import torch
    from ase.data import atomic_numbers
    from e3nn import o3
    from mace import modules

    _limit_torch_threads()
    zs = sorted(atomic_numbers[s] for s in elements)
    rng = np.random.default_rng(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(seed)
        model = modules.ScaleShiftMACE(
            r_max=r_max,
            num_bessel=6,
            num_polynomial_cutoff=5,
            max_ell=max_ell,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=num_interactions,
            num_elements=len(zs),
            hidden_irreps=o3.Irreps(hidden_irreps),
            MLP_irreps=o3.Irreps("8x0e"),
            gate=torch.nn.functional.silu,
            atomic_energies=rng.uniform(-5.0, -1.0, size=len(zs)),
            avg_num_neighbors=6.0,
            atomic_numbers=zs,
            correlation=correlation,
            radial_type="bessel",
            atomic_inter_scale=1.0,
            atomic_inter_shift=0.0,
        )
    finally:
        torch.set_default_dtype(old)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path)
    return path


@pytest.fixture(scope="session")
def make_tiny_mace_model(tmp_path_factory):
    """Factory: ``make_tiny_mace_model(seed=0, elements=TINY_ELEMENTS, **config) -> Path``."""
    root = tmp_path_factory.mktemp("tiny_mace")
    made: dict = {}

    def make(seed: int = 0, elements=TINY_ELEMENTS, **config) -> Path:
        key = (seed, tuple(elements), tuple(sorted(config.items())))
        if key not in made:
            # the file name depends only on the settings, not on which test asked first
            default = tuple(elements) == tuple(TINY_ELEMENTS) and not config
            tag = "" if default else hashlib.sha256(repr(key).encode()).hexdigest()[:8] + "_"
            made[key] = build_tiny_mace(root / f"tiny_{tag}seed{seed}.model", seed, elements, **config)
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_mace_model(make_tiny_mace_model) -> Path:
    """Path of a seeded tiny MACE .model (H C N O Li Cl Cu, 16 descriptors)."""
    return make_tiny_mace_model(seed=0)


@pytest.fixture(scope="session")
def tiny_mace_committee(make_tiny_mace_model) -> list[Path]:
    """Three tiny MACE models (seeds 0, 1, 2): a committee."""
    return [make_tiny_mace_model(seed=s) for s in (0, 1, 2)]


# ------------------------------------------------------------ structures
def make_tiny_structures(seed: int = 0) -> list:
    """Twelve labelled structures (6 molecules, 6 crystals); see the module docstring."""
    from ase import Atoms
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    out = []
    molecule_species = [
        ["C", "C", "O", "H", "H", "H"],
        ["C", "N", "H", "H", "H", "O", "H"],
        ["C", "C", "C", "H", "H", "H", "H", "O"],
        ["N", "H", "H", "H", "C", "O"],
        ["C", "O", "O", "H", "H", "C", "H", "H", "N", "H"],
        ["C", "C", "N", "O", "H", "H", "H"],
    ]
    for k, species in enumerate(molecule_species):
        n = len(species)
        # atoms on a jittered chain/cluster so that no two are closer than ~0.9 Å
        pos = np.zeros((n, 3))
        for i in range(1, n):
            while True:
                step = rng.normal(size=3)
                cand = pos[rng.integers(i)] + 1.2 * step / np.linalg.norm(step)
                if np.min(np.linalg.norm(pos[:i] - cand, axis=1)) > 0.9:
                    pos[i] = cand
                    break
        atoms = Atoms(species, positions=pos)
        atoms.info["config_type"] = "molecule"
        out.append(atoms)
    for k in range(6):
        if k % 2 == 0:
            atoms = bulk("LiCl", "rocksalt", a=5.14, cubic=True)
        else:
            atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.info["config_type"] = "crystal"
        out.append(atoms)
    for atoms in out:
        atoms.info["REF_energy"] = float(rng.normal(-10.0, 2.0))
        atoms.arrays["REF_forces"] = rng.normal(scale=0.5, size=(len(atoms), 3))
    return out


@pytest.fixture
def tiny_structures() -> list:
    """Twelve labelled seeded structures of H C N O Li Cl Cu (fresh copy per test)."""
    return make_tiny_structures(0)
