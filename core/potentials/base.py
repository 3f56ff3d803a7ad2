"""The Potential contract: one forward pass gives energies, forces and descriptors.

A potential maps a batch of structures to per-structure energies (eV), per-atom
forces (eV/Å) and per-atom invariant descriptors; optionally a per-atom force
spread across a committee. ``core.featurize`` turns that into a SiteTable and
depends only on this protocol, so tests may pass any object that satisfies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass
class PotentialOutput:
    """Result of one forward pass over a batch of m structures with N atoms in all.

    Attributes
    ----------
    energies : ndarray of float64, shape (m,)
        Total energy per structure, eV.
    forces : ndarray of float64, shape (N, 3)
        Forces on all atoms of the batch, concatenated in structure order, eV/Å.
    descriptors : ndarray of float, shape (N, d)
        Invariant per-atom descriptors, same atom order as ``forces``.
    committee_std : ndarray of float64, shape (N,), optional
        Per-atom spread of predicted forces across a committee, eV/Å
        (see ``MACEPotential`` for the exact definition); None without a committee.
    """

    energies: np.ndarray
    forces: np.ndarray
    descriptors: np.ndarray
    committee_std: np.ndarray | None = None

    def check(self, n_structures: int, n_atoms: int) -> "PotentialOutput":
        """Raise ValueError unless the shapes match a batch of this size; returns self."""
        if np.shape(self.energies) != (n_structures,):
            raise ValueError(f"energies: expected shape ({n_structures},), got {np.shape(self.energies)}")
        if np.shape(self.forces) != (n_atoms, 3):
            raise ValueError(f"forces: expected shape ({n_atoms}, 3), got {np.shape(self.forces)}")
        if np.ndim(self.descriptors) != 2 or np.shape(self.descriptors)[0] != n_atoms:
            raise ValueError(f"descriptors: expected shape ({n_atoms}, d), got {np.shape(self.descriptors)}")
        if self.committee_std is not None and np.shape(self.committee_std) != (n_atoms,):
            raise ValueError(f"committee_std: expected shape ({n_atoms},), got {np.shape(self.committee_std)}")
        return self


@runtime_checkable
class Potential(Protocol):
    """What ``featurize`` and the calibrated calculator need from a potential.

    Attributes
    ----------
    name : str
        Display name (foundation-model name or file name).
    identity : str
        Content hash of the weights and the settings that change the numbers
        (dtype, head); the featurize cache key.
    atomic_numbers : tuple of int
        Elements the model knows.
    """

    name: str
    identity: str
    atomic_numbers: tuple[int, ...]

    def compute(self, structures: Sequence) -> PotentialOutput:
        """Energies, forces and descriptors of a batch in ONE forward pass."""
        ...

    def ase_calculator(self):
        """An ASE calculator with the same model (for MD, relaxations)."""
        ...


def unknown_elements(structures: Sequence, atomic_numbers: Sequence[int]) -> dict[int, list[int]]:
    """Atomic numbers absent from ``atomic_numbers`` -> positions of the structures holding them."""
    known = set(int(z) for z in atomic_numbers)
    out: dict[int, list[int]] = {}
    for i, atoms in enumerate(structures):
        for z in set(int(z) for z in np.unique(atoms.numbers)) - known:
            out.setdefault(z, []).append(i)
    return out


def check_elements(structures: Sequence, atomic_numbers: Sequence[int], model_name: str = "the model") -> None:
    """Raise ValueError naming the elements of ``structures`` the model does not know."""
    bad = unknown_elements(structures, atomic_numbers)
    if not bad:
        return
    from ase.data import chemical_symbols

    parts = []
    for z in sorted(bad):
        idx = bad[z]
        shown = ", ".join(str(i) for i in idx[:10]) + (", ..." if len(idx) > 10 else "")
        parts.append(f"{chemical_symbols[z]} (Z={z}, in structures {shown})")
    known = ", ".join(chemical_symbols[int(z)] for z in sorted(atomic_numbers))
    raise ValueError(
        f"structures contain elements {model_name} does not know: {'; '.join(parts)}. "
        f"{model_name} knows: {known}"
    )
