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

__all__ = [
    "REFERENCE_METHODS",
    "reference_calculator",
    "resolve_reference",
    "label_structure",
    "label_structures",
    "is_labelled",
    "LabellingError",
]

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


def resolve_reference(reference, **options):
    """The labeller as an ASE calculator: a method name (see :func:`reference_calculator`) or a calculator.

    Parameters
    ----------
    reference : str or ase.calculators.calculator.BaseCalculator
        A name from :data:`REFERENCE_METHODS` or any ASE calculator (returned unchanged).
    **options
        Passed to :func:`reference_calculator`; only with a name.

    Raises
    ------
    TypeError
        ``reference`` is neither (the message names the type received).
    ValueError
        An unknown name, or ``options`` given with a calculator.
    """
    from ase.calculators.calculator import BaseCalculator

    if isinstance(reference, str):
        return reference_calculator(reference, **options)
    if isinstance(reference, BaseCalculator):
        if options:
            raise ValueError(f"options: {sorted(options)} only apply to a reference method name, "
                             f"got them with a {type(reference).__name__} calculator")
        return reference
    raise TypeError(f"reference: expected a name ({', '.join(REFERENCE_METHODS)}) or an ASE calculator, "
                    f"got {type(reference).__name__}")


def label_structure(atoms, calculator, *, energy_key: str = "REF_energy", forces_key: str = "REF_forces",
                    index: int = 0, method: str | None = None):
    """One labelled copy of ``atoms``: reference energy (eV) and forces (eV/Å), no calculator attached.

    Parameters
    ----------
    atoms : ase.Atoms
    calculator : ase calculator
        The labeller (see :func:`resolve_reference`); detached again afterwards.
    energy_key, forces_key : str
        Where to store the labels (``info[energy_key]``, ``arrays[forces_key]`` (n_atoms, 3)).
    index : int
        Position of ``atoms`` in its list, for the error message and ``LabellingError.index``.
    method : str, optional
        Name used in messages (default: the calculator's class name).

    Raises
    ------
    LabellingError
        The calculation failed or gave non-finite labels.
    """
    from ase import Atoms

    if not isinstance(atoms, Atoms):
        raise TypeError(f"structures[{index}]: expected ase.Atoms, got {type(atoms).__name__}")
    what = method or type(calculator).__name__
    labelled = atoms.copy()  # Atoms.copy drops the calculator, keeps info/arrays
    labelled.calc = calculator
    try:
        energy = float(labelled.get_potential_energy())
        # reference labels are the raw forces: constraints of the input must not zero them
        forces = np.array(labelled.get_forces(apply_constraint=False), dtype=float)
    except Exception as exc:  # tblite raises CalculationFailed, EMT NotImplementedError
        raise LabellingError(
            f"{what} failed on structure {index} ({labelled.get_chemical_formula()}): "
            f"{type(exc).__name__}: {exc}", index,
        ) from exc
    finally:
        labelled.calc = None
    if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
        raise LabellingError(f"{what} gave non-finite labels on structure {index}", index)
    labelled.info[energy_key] = energy
    labelled.arrays[forces_key] = forces
    return labelled


def is_labelled(atoms, energy_key: str = "REF_energy", forces_key: str = "REF_forces") -> bool:
    """True when ``atoms`` carries both reference labels."""
    return energy_key in atoms.info and forces_key in atoms.arrays


def label_structures(
    structures: Sequence,
    name: str,
    energy_key: str = "REF_energy",
    forces_key: str = "REF_forces",
    progress=None,
    *,
    missing_only: bool = False,
    **options,
) -> list:
    """Label structures with a reference method; return labelled copies without calculators.

    Parameters
    ----------
    structures : sequence of ase.Atoms
    name : str or ase calculator
        Reference method, see :func:`reference_calculator` (a fresh calculator per
        structure), or a calculator instance reused for every structure
        (:func:`resolve_reference`).
    energy_key, forces_key : str
        Where to store the energy (``info``, eV) and forces (``arrays``, (n_atoms, 3), eV/Å).
    progress : None, True or callable(done, total)
    missing_only : bool
        Structures that already carry both labels are kept as they are (copied, not
        recomputed); only the others are labelled.
    **options
        Passed to :func:`reference_calculator` (with a name only).

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
    from ase.calculators.calculator import BaseCalculator

    if isinstance(name, BaseCalculator):
        calculator, method = resolve_reference(name, **options), type(name).__name__
    else:
        calculator, method = None, canonical_name(name)
    report = as_progress(progress, "label_structures:")
    out = []
    total = len(structures)
    for i, atoms in enumerate(structures):
        if not isinstance(atoms, Atoms):
            raise TypeError(f"structures[{i}]: expected ase.Atoms, got {type(atoms).__name__}")
        if missing_only and is_labelled(atoms, energy_key, forces_key):
            out.append(atoms.copy())
        else:
            calc = calculator if calculator is not None else reference_calculator(method, **options)
            out.append(label_structure(atoms, calc, energy_key=energy_key, forces_key=forces_key,
                                       index=i, method=method))
        if report is not None:
            report(i + 1, total)
    return out
