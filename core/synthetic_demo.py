"""A small generated demo: Cu–Au structures, an EMT reference and a mock potential.

Used by the app (and its tests) when the embedded MACE demo (``core.demo``) is not
installed, so the app always opens on *something* with no configuration and no
network. It is **not** a MACE model and says so in its name.

- Structures: rattled Cu3Au-like fcc supercells (2x2x2 conventional cells, 32 atoms)
  in three ``config_type`` groups: ``cold`` (small rattle), ``hot`` (large rattle) and
  ``vacancy`` (one atom removed). Reference labels are ASE's EMT energies and forces
  under ``REF_energy`` / ``REF_forces``.
- :class:`SyntheticPotential` follows the ``core.potentials`` Potential protocol: its
  forces are EMT forces plus Gaussian noise whose per-atom scale grows with the local
  distortion of the first neighbour shell, with under-coordination and with the
  species (Au noisier). Its descriptors are radial Gaussian features per neighbour
  species, which see exactly those things, so a learned quantile q_θ(X) can beat a
  global conformal width — a fair teaching example.

Everything is seeded and deterministic.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np

SPECIES = (29, 79)  # Cu, Au
CONFIG_TYPES = ("cold", "hot", "vacancy")
_RATTLE = {"cold": 0.03, "hot": 0.10, "vacancy": 0.05}
_CENTERS = np.linspace(2.0, 5.0, 8)  # Å
_CUTOFF = 5.0  # Å
_SHELL = 3.1  # Å, first-neighbour shell of fcc Cu/Au (2.55–2.9 Å)

NAME = "Synthetic demo (generated Cu–Au, EMT reference, mock potential — not MACE)"


def synthetic_structures(n_structures: int = 48, seed: int = 0):
    """Seeded Cu–Au structures labelled with EMT.

    Parameters
    ----------
    n_structures : int
        Number of frames, >= 3 (split evenly over :data:`CONFIG_TYPES`).
    seed : int
        Random seed.

    Returns
    -------
    list of ase.Atoms
        Each with ``info["REF_energy"]`` (eV), ``info["config_type"]`` and
        ``arrays["REF_forces"]`` (n_atoms, 3) in eV/Å.
    """
    from ase.build import bulk
    from ase.calculators.emt import EMT

    if not isinstance(n_structures, (int, np.integer)) or n_structures < 3:
        raise ValueError(f"n_structures: expected an integer >= 3, got {n_structures!r}")
    rng = np.random.default_rng(seed)
    out = []
    for k in range(int(n_structures)):
        ctype = CONFIG_TYPES[k % len(CONFIG_TYPES)]
        atoms = bulk("Cu", "fcc", a=3.70, cubic=True).repeat((2, 2, 2))
        numbers = atoms.get_atomic_numbers()
        numbers[rng.random(len(atoms)) < 0.25] = 79
        atoms.set_atomic_numbers(numbers)
        if ctype == "vacancy":
            del atoms[int(rng.integers(len(atoms)))]
        atoms.positions += rng.normal(scale=_RATTLE[ctype], size=atoms.positions.shape)
        atoms.calc = EMT()
        energy = float(atoms.get_potential_energy())
        forces = np.array(atoms.get_forces())
        atoms.calc = None
        atoms.info["REF_energy"] = energy
        atoms.info["config_type"] = ctype
        atoms.arrays["REF_forces"] = forces
        out.append(atoms)
    return out


def synthetic_extxyz_bytes(n_structures: int = 48, seed: int = 0) -> bytes:
    """The synthetic dataset as extended-XYZ bytes (what an upload would carry)."""
    from ase.io import write

    buf = io.StringIO()
    write(buf, synthetic_structures(n_structures, seed), format="extxyz")
    return buf.getvalue().encode()


def radial_descriptors(atoms) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom radial features and first-shell distortion.

    Returns
    -------
    descriptors : ndarray of shape (n_atoms, 2 * 8)
        Sum over neighbours j of species s of exp(-(d_ij - mu)^2 / (2 * 0.25^2))
        times a cosine cutoff, for 8 centres mu in [2, 5] Å, per species s in (Cu, Au).
    shell : ndarray of shape (n_atoms, 2)
        (std of first-shell distances in Å, first-shell coordination number).
    """
    from ase.neighborlist import neighbor_list

    n = len(atoms)
    i, j, d = neighbor_list("ijd", atoms, _CUTOFF)
    zj = atoms.numbers[j]
    fc = 0.5 * (np.cos(np.pi * d / _CUTOFF) + 1.0)
    g = np.exp(-((d[:, None] - _CENTERS[None, :]) ** 2) / (2 * 0.25**2)) * fc[:, None]
    desc = np.zeros((n, len(SPECIES) * len(_CENTERS)))
    for s, z in enumerate(SPECIES):
        m = zj == z
        block = np.zeros((n, len(_CENTERS)))
        np.add.at(block, i[m], g[m])
        desc[:, s * len(_CENTERS):(s + 1) * len(_CENTERS)] = block
    first = d < _SHELL
    cnt = np.bincount(i[first], minlength=n).astype(float)
    s1 = np.bincount(i[first], weights=d[first], minlength=n)
    s2 = np.bincount(i[first], weights=d[first] ** 2, minlength=n)
    mean = s1 / np.maximum(cnt, 1)
    std = np.sqrt(np.maximum(s2 / np.maximum(cnt, 1) - mean**2, 0.0))
    return desc, np.stack([std, cnt], axis=1)


def noise_scale(atoms) -> np.ndarray:
    """The mock potential's per-atom force-noise scale sigma_i (n_atoms,), eV/Å per component."""
    _, shell = radial_descriptors(atoms)
    std, cnt = shell[:, 0], shell[:, 1]
    sigma = 0.01 + 0.6 * std + 0.02 * np.maximum(12.0 - cnt, 0.0)
    return sigma * np.where(atoms.numbers == 79, 1.6, 1.0)


@dataclass
class _Output:
    """Same fields as ``core.potentials.base.PotentialOutput`` (used when that is absent)."""

    energies: np.ndarray
    forces: np.ndarray
    descriptors: np.ndarray
    committee_std: np.ndarray | None = None


class SyntheticPotential:
    """A mock potential with the ``core.potentials`` Potential protocol.

    ``compute(structures)`` returns EMT energies/forces plus seeded, environment-
    dependent noise, and the radial descriptors of :func:`radial_descriptors`.
    """

    name = "synthetic-mock (EMT + environment-dependent noise)"
    atomic_numbers = SPECIES

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self.identity = hashlib.sha256(f"flexcal-synthetic-v1-{self.seed}".encode()).hexdigest()

    def __repr__(self) -> str:
        return f"SyntheticPotential(seed={self.seed})"

    def _one(self, atoms):
        from ase.calculators.emt import EMT

        unknown = sorted(set(atoms.numbers.tolist()) - set(SPECIES))
        if unknown:
            raise ValueError(f"the synthetic mock potential knows only Cu and Au (Z=29, 79); got Z={unknown}")
        a = atoms.copy()
        a.calc = EMT()
        forces = np.array(a.get_forces())
        energy = float(a.get_potential_energy())
        key = hashlib.sha256(np.ascontiguousarray(atoms.positions).tobytes()).digest()
        rng = np.random.default_rng([self.seed, int.from_bytes(key[:8], "little")])
        sigma = noise_scale(atoms)
        forces = forces + rng.normal(size=forces.shape) * sigma[:, None]
        energy = energy + float(rng.normal() * 0.01 * len(atoms))
        desc, _ = radial_descriptors(atoms)
        return energy, forces, desc

    def compute(self, structures):
        """One pass over a batch: energies (m,) eV, forces (N, 3) eV/Å, descriptors (N, 16)."""
        parts = [self._one(a) for a in structures]
        energies = np.array([p[0] for p in parts], dtype=np.float64)
        forces = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, 3))
        desc = np.concatenate([p[2] for p in parts]) if parts else np.zeros((0, 16))
        try:
            from core.potentials.base import PotentialOutput
        except ImportError:
            return _Output(energies, forces, desc, None)
        return PotentialOutput(energies=energies, forces=forces, descriptors=desc, committee_std=None)

    def ase_calculator(self):
        raise NotImplementedError("the synthetic mock potential is for the demo only; it has no ASE calculator")


def synthetic_site_table(structures, potential: SyntheticPotential | None = None):
    """Run the mock potential over ``structures`` and build a SiteTable directly.

    For when ``core.featurize`` is unavailable; ``structure_ids`` are positions in
    ``structures``. Returns a :class:`core.sites.SiteTable`.
    """
    from core.sites import SiteTable

    potential = potential or SyntheticPotential()
    out = potential.compute(structures)
    sid = np.concatenate([np.full(len(a), k) for k, a in enumerate(structures)])
    species = np.concatenate([a.numbers for a in structures])
    fref = np.concatenate([a.arrays["REF_forces"] for a in structures])
    m = len(structures)
    info = {
        "structure_id": np.arange(m),
        "n_atoms": np.array([len(a) for a in structures]),
        "energy_ref": np.array([a.info.get("REF_energy", np.nan) for a in structures], dtype=float),
        "energy_pred": np.asarray(out.energies, dtype=float),
        "config_type": np.array([str(a.info.get("config_type", "default")) for a in structures]),
        "dataset_index": np.arange(m),
    }
    return SiteTable.from_arrays(
        descriptors=out.descriptors,
        errors=None,
        species=species,
        structure_ids=sid,
        forces_pred=out.forces,
        forces_ref=fref,
        structure_info=info,
        meta={"model": potential.name},
    )
