"""Reference calculators: the labellers of the demo data and of active learning.

``"gfn2-xtb"`` and ``"gfn1-xtb"`` are tblite's extended tight-binding methods (molecules and
periodic cells); ``"emt"`` is ASE's effective-medium theory (Al, Cu, Ag, Au, Ni, Pd, Pt and a
rough H, C, N, O) — instantaneous, for surfaces. Labels are stored the MACE way:
``atoms.info[energy_key]`` (eV) and ``atoms.arrays[forces_key]`` (n_atoms, 3) in eV/Å.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.progress import as_progress

__all__ = ["REFERENCE_METHODS", "reference_calculator", "label_structures", "LabellingError"]

#: Valid names for :func:`reference_calculator` (case-insensitive; "gfn2"/"gfn1" also accepted).
REFERENCE_METHODS = ("gfn2-xtb", "gfn1-xtb", "emt")

_ALIASES = {
    "gfn2-xtb": "gfn2-xtb", "gfn2": "gfn2-xtb", "gfn2xtb": "gfn2-xtb",
    "gfn1-xtb": "gfn1-xtb", "gfn1": "gfn1-xtb", "gfn1xtb": "gfn1-xtb",
    "emt": "emt",
}
_TBLITE_METHOD = {"gfn2-xtb": "GFN2-xTB", "gfn1-xtb": "GFN1-xTB"}


class LabellingError(RuntimeError):
    """The reference calculation of one structure failed (SCF not converged, element unsupported)."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


def canonical_name(name: str) -> str:
    """Map a user-given method name to one of :data:`REFERENCE_METHODS` (ValueError otherwise)."""
    if not isinstance(name, str):
        raise TypeError(f"reference method name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in _ALIASES:
        raise ValueError(
            f"unknown reference method {name!r}; valid names: {', '.join(REFERENCE_METHODS)}"
        )
    return _ALIASES[key]


def reference_calculator(name: str, **options):
    """A fresh ASE calculator for a reference method.

    Parameters
    ----------
    name : str
        One of ``"gfn2-xtb"``, ``"gfn1-xtb"`` (tblite; molecules and periodic cells) or
        ``"emt"`` (ASE). Case-insensitive.
    **options
        Passed to the calculator (tblite: ``accuracy``, ``electronic_temperature``,
        ``max_iterations``, ``charge``, ...). tblite's ``verbosity`` defaults to 0.

    Returns
    -------
    ase.calculators.calculator.Calculator
    """
    method = canonical_name(name)
    if method == "emt":
        from ase.calculators.emt import EMT

        return EMT(**options)
    try:
        from tblite.ase import TBLite
    except ImportError as exc:  # optional extra "reference"
        raise ImportError(
            f"reference method {name!r} needs tblite (pip install 'flexcal[reference]')"
        ) from exc
    options.setdefault("verbosity", 0)
    return TBLite(method=_TBLITE_METHOD[method], **options)


def label_structures(
    structures: Sequence,
    name: str,
    energy_key: str = "REF_energy",
    forces_key: str = "REF_forces",
    progress=None,
    **options,
) -> list:
    """Label structures with a reference method; return labelled copies without calculators.

    Parameters
    ----------
    structures : sequence of ase.Atoms
    name : str
        Reference method, see :func:`reference_calculator`.
    energy_key, forces_key : str
        Where to store the energy (``info``, eV) and forces (``arrays``, (n_atoms, 3), eV/Å).
    progress : None, True or callable(done, total)
    **options
        Passed to :func:`reference_calculator`.

    Returns
    -------
    list of ase.Atoms
        Copies of the inputs (info and arrays kept) with the two labels added.

    Raises
    ------
    LabellingError
        When a calculation fails; the message names the frame index (``.index``).
    """
    from ase import Atoms

    method = canonical_name(name)
    report = as_progress(progress, "label_structures:")
    out = []
    total = len(structures)
    for i, atoms in enumerate(structures):
        if not isinstance(atoms, Atoms):
            raise TypeError(f"structures[{i}]: expected ase.Atoms, got {type(atoms).__name__}")
        labelled = atoms.copy()  # Atoms.copy drops the calculator, keeps info/arrays
        labelled.calc = reference_calculator(method, **options)
        try:
            energy = float(labelled.get_potential_energy())
            forces = np.array(labelled.get_forces(), dtype=float)
        except Exception as exc:  # tblite raises CalculationFailed, EMT NotImplementedError
            raise LabellingError(
                f"{method} failed on structure {i} ({labelled.get_chemical_formula()}): "
                f"{type(exc).__name__}: {exc}", i,
            ) from exc
        labelled.calc = None
        if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
            raise LabellingError(f"{method} gave non-finite labels on structure {i}", i)
        labelled.info[energy_key] = energy
        labelled.arrays[forces_key] = forces
        out.append(labelled)
        if report is not None:
            report(i + 1, total)
    return out
