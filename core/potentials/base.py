"""The Potential contract: one forward pass gives energies, forces and descriptors.

A potential maps a batch of structures to per-structure energies (eV), per-atom
forces (eV/Å) and per-atom invariant descriptors; optionally a per-atom force
spread across a committee. ``core.featurize`` turns that into a SiteTable and
depends only on this protocol, so tests may pass any object that satisfies it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

#: mace-torch sets this at import so that torch.load unpickles arbitrary objects; FlexCal
#: restores it after every import/load it makes (see :func:`restored_environ`)
WEIGHTS_ONLY_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
DEVICES_HELP = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


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


def check_structures(structures) -> list:
    """The batch as a list of non-empty ``ase.Atoms``; TypeError/ValueError naming the entry."""
    from ase import Atoms

    structures = list(structures)
    if not structures:
        raise ValueError("structures: empty batch (need at least one structure)")
    for i, a in enumerate(structures):
        if not isinstance(a, Atoms):
            raise TypeError(f"structures[{i}]: expected ase.Atoms, got {type(a).__name__}")
        if len(a) == 0:
            raise ValueError(f"structures[{i}]: has zero atoms")
    return structures


_ENVIRON_LOCK = threading.RLock()


@contextlib.contextmanager
def restored_environ(*names: str):
    """Put the environment variables ``names`` back as they were when the block ends.

    mace-torch sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` when it is imported, which makes
    every later ``torch.load`` in the process unpickle arbitrary code. FlexCal imports mace
    and loads models inside this block, so the change does not outlive the load. One block at
    a time per process (re-entrant): two overlapping blocks in two threads would otherwise save
    each other's value and leave it set.
    """
    names = names or (WEIGHTS_ONLY_ENV,)
    with _ENVIRON_LOCK:
        saved = {n: os.environ.get(n) for n in names}
        try:
            yield
        finally:
            for n, v in saved.items():
                if v is None:
                    os.environ.pop(n, None)
                else:
                    os.environ[n] = v


def resolve_device(device) -> str:
    """A torch device string: ``"auto"``/None/"" -> CUDA when available, else CPU.

    Raises
    ------
    ValueError
        Naming the ``device`` argument: an unknown device (e.g. ``"tpu"``) or one not
        available on this machine.
    """
    if device is not None and not isinstance(device, str):
        raise TypeError(f"device: expected one of {DEVICES_HELP}, got {type(device).__name__} {device!r}")
    device = (device or "auto").strip().lower()
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"device: {device!r} is not a device FlexCal can use; expected {DEVICES_HELP}")
    import torch

    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device: 'mps' requested but the MPS backend is not available; use 'cpu' or 'auto'")
    return device


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(Path(path), "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def sha256_state_dict(module) -> str:
    """Hex SHA-256 of a torch module's parameters and buffers (names, dtypes, shapes, bytes)."""
    import torch

    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bfloat16:
            t = t.to(torch.float32)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class PotentialCalculator(Calculator):
    """A plain ASE calculator over any :class:`Potential`: energy, free_energy (eV), forces (eV/Å).

    Every ``calculate`` runs ``potential.compute([atoms])`` once; no stress. Backends without
    an ASE calculator of their own return one of these from ``ase_calculator()``.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, potential, **kwargs):
        super().__init__(**kwargs)
        self.potential = potential

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        out = self.potential.compute([self.atoms])
        energy = float(np.asarray(out.energies).reshape(-1)[0])
        forces = np.asarray(out.forces, dtype=np.float64).reshape(len(self.atoms), 3)
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
