"""CalibratedCalculator: an ASE calculator whose forces come with calibrated error bars.

It wraps a potential and a fitted calibrator (``core.calibration``). Every call of
``calculate`` runs the potential **once** and gets energy, forces and the per-atom
descriptors from that same forward pass; the calibrator turns the descriptors into
per-atom half-widths ``w_i`` (eV/Å) such that ``||F_pred_i - F_true_i|| <= w_i`` should
hold with probability ``calibrator.confidence``. ``results`` then holds, besides the usual
``energy`` / ``free_energy`` / ``forces``:

* ``force_uncertainty``: ndarray (n_atoms,), eV/Å, the calibrated width of every atom;
* ``max_force_uncertainty``: float, eV/Å, their maximum (what active learning and
  on-the-fly triggers look at);
* ``force_out_of_domain``: ndarray of bool (n_atoms,), each atom outside the calibration
  domain (:mod:`core.domain`), when the calibrator carries a domain score (``flexible-ood``).
  Widths there are extrapolated: trust them less than the coverage promise says.

An optional ``threshold`` (eV/Å) on ``max_force_uncertainty`` turns the calculator into
an on-the-fly trigger, like FLARE's: when it is exceeded, ``on_threshold`` decides what
happens — raise :class:`UncertaintyThresholdExceeded` (which stops ``dyn.run()``), or call
a user function ``f(atoms, results)`` that may, e.g., label the frame with a reference
method and overwrite ``results["forces"]`` in place.

Backends (chosen from the type of ``potential_or_calc``):

``FlexCal Potential`` (``core.potentials``; anything with ``compute``), or a model spec
    ``Potential.compute([atoms])``: one forward pass for energy, forces, descriptors and,
    for committees, the per-atom force spread. A ``str``/``Path`` is loaded with
    ``core.potentials.load_potential`` (MACE, CHGNet, demo names, model files).
an ASE calculator a potentials backend knows (``MACECalculator``, ``CHGNetCalculator``)
    ``core.potentials.potential_from_calculator`` wraps the calculator's own model(s) into a
    one-pass Potential (a MACECalculator's energies and forces stay the mean over its
    models, as it reports them); :attr:`CalibratedCalculator.mode` is then
    ``"<backend>-one-pass"``. Calculators that route cannot reproduce (compiled or padded
    MACE graphs, unit conversions) fall back to the two-pass route below.
any other ASE calculator with ``get_descriptors(atoms)``
    Two passes per step: ``calculate`` for energy and forces, ``get_descriptors`` for
    the descriptors (correct but roughly twice as slow).

The calibrator must have been fitted on descriptors of the **same** model: widths from a
calibrator fitted on another model's descriptors are meaningless.

Models by name are those of ``core.potentials.available_models()``: ``"chgnet-0.3.0"`` (alias
``"chgnet"``), ``"chgnet-0.2.0"`` and ``"chgnet-r2scan"`` — CHGNet, **foundation model,
available offline** (its weights ship in the ``chgnet`` package) — next to the MACE foundation
names (``"mace-mp-0b3-medium"``, ...: offline once in mace-torch's cache) and the demo models
(``"demo:licl"``, ...). A zero-shot foundation model, calibrated on a user's own labelled frames::

    sites = featurize(frames, load_potential("chgnet-0.3.0"))
    calc = CalibratedCalculator("chgnet-0.3.0", make_calibrator("flexible").fit(sites))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from core.apply import annotate_sites
from core.sites import SiteTable

__all__ = ["CalibratedCalculator", "UncertaintyThresholdExceeded"]

_ON_THRESHOLD = ("raise",)


class UncertaintyThresholdExceeded(RuntimeError):
    """Raised by :class:`CalibratedCalculator` when the largest per-atom force
    uncertainty of a structure exceeds the calculator's threshold.

    Attributes
    ----------
    value : float
        ``max_force_uncertainty`` of the structure, eV/Å.
    threshold : float
        The threshold it exceeded, eV/Å.
    atom_index : int
        Index of the atom with the largest width.
    atoms : ase.Atoms
        A copy of the structure (positions at the offending step), with no calculator.
    results : dict
        A copy of the calculator's results for that structure (energy, forces, widths).
    """

    def __init__(self, value: float, threshold: float, atom_index: int, atoms=None, results=None):
        self.value = float(value)
        self.threshold = float(threshold)
        self.atom_index = int(atom_index)
        self.atoms = atoms
        self.results = results or {}
        symbol = ""
        if atoms is not None and 0 <= self.atom_index < len(atoms):
            symbol = f" ({atoms[self.atom_index].symbol})"
        super().__init__(
            f"max force uncertainty {self.value:.4g} eV/Å at atom {self.atom_index}{symbol} "
            f"exceeds the threshold {self.threshold:.4g} eV/Å"
        )


class CalibratedCalculator(Calculator):
    """ASE calculator: a potential's energy and forces plus calibrated per-atom force widths.

    Parameters
    ----------
    potential_or_calc : Potential, model spec, MACECalculator/CHGNetCalculator, or ASE Calculator with ``get_descriptors``
        The potential. A ``str``/``Path`` (``"chgnet-0.3.0"``, ``"demo:licl"``, a model
        file) is loaded with ``core.potentials.load_potential``.
    calibrator : Calibrator or path
        A fitted calibrator (``core.calibration``) with ``predict(SiteTable) -> (n,)``;
        a ``str``/``Path`` is read with ``core.calibration.load_calibrator``.
    threshold : float, optional
        Trigger level on ``max_force_uncertainty``, eV/Å, > 0. ``None`` (default) never
        triggers.
    on_threshold : None, "raise" or callable(atoms, results), optional
        What happens when ``max_force_uncertainty > threshold``. ``None`` and ``"raise"``
        raise :class:`UncertaintyThresholdExceeded` (this ends an ASE ``dyn.run()``);
        a callable is called with the calculator's copy of the structure and the ``results`` dict after they are
        filled and may modify ``results`` in place (for instance substitute reference
        forces); its return value is ignored.
    **kwargs
        Passed to :class:`ase.calculators.calculator.Calculator` (``label``, ``directory``).

    Attributes
    ----------
    mode : str
        ``"potential"`` (FlexCal Potential, one pass), ``"mace-one-pass"`` /
        ``"chgnet-one-pass"`` (an MLIP's own ASE calculator, one pass through its
        model) or ``"two-pass"`` (calculate + get_descriptors).
    n_calls : int
        Number of structures evaluated.
    threshold_events : list of dict
        One entry per trigger: ``call`` (the value of ``n_calls`` then), ``value`` (eV/Å),
        ``atom_index``.

    Examples
    --------
    >>> calc = CalibratedCalculator(potential, calibrator, threshold=0.5)  # doctest: +SKIP
    >>> atoms.calc = calc                                                  # doctest: +SKIP
    >>> atoms.get_forces(); calc.results["force_uncertainty"].shape        # doctest: +SKIP
    (n_atoms,)
    """

    implemented_properties = ["energy", "free_energy", "forces", "force_uncertainty", "max_force_uncertainty"]

    def __init__(self, potential_or_calc, calibrator, *, threshold: float | None = None, on_threshold=None, **kwargs):
        super().__init__(**kwargs)
        self.calibrator = _resolve_calibrator(calibrator)
        self._backend = _make_backend(potential_or_calc)
        self.mode: str = self._backend.mode
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)):
                raise TypeError(f"threshold: expected a positive number in eV/Å or None, got {threshold!r}")
            threshold = float(threshold)
            if not np.isfinite(threshold) or threshold <= 0:
                raise ValueError(f"threshold: expected a positive finite number in eV/Å, got {threshold!r}")
        if on_threshold is not None and not callable(on_threshold) and on_threshold not in _ON_THRESHOLD:
            raise ValueError(f"on_threshold: expected None, 'raise' or a callable(atoms, results), got {on_threshold!r}")
        self.threshold = threshold
        self.on_threshold = on_threshold
        self.n_calls = 0
        self.threshold_events: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ ASE
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Fill ``self.results`` for ``atoms`` (all properties at once, one forward pass)."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        energy, forces, descriptors, committee_std = self._backend(atoms)
        n = len(atoms)
        sites = one_structure_sites(atoms, descriptors, forces, committee_std)
        annotated = annotate_sites(sites, self.calibrator, check_layout=False)  # the one per-structure rule
        widths = annotated.widths
        i_max = int(np.argmax(widths))
        self.results = {
            "energy": float(energy),
            "free_energy": float(energy),
            "forces": np.asarray(forces, dtype=np.float64).reshape(n, 3),
            "force_uncertainty": widths,
            "max_force_uncertainty": float(widths[i_max]),
        }
        if annotated.ood is not None:  # calibrators that carry a domain score (flexible-ood)
            self.results["force_out_of_domain"] = np.asarray(annotated.ood, dtype=bool)
        self.n_calls += 1
        if self.threshold is not None and widths[i_max] > self.threshold:
            self.threshold_events.append({"call": self.n_calls, "value": float(widths[i_max]), "atom_index": i_max})
            if callable(self.on_threshold):
                self.on_threshold(atoms, self.results)
            else:
                snapshot = atoms.copy()
                snapshot.calc = None
                results = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.results.items()}
                # a raise must not leave results that look valid for these positions
                self.reset()
                raise UncertaintyThresholdExceeded(widths[i_max], self.threshold, i_max, snapshot, results)

    def get_force_uncertainty(self, atoms=None) -> np.ndarray:
        """Calibrated per-atom force widths, ndarray (n_atoms,), eV/Å."""
        return self.get_property("force_uncertainty", atoms)

    def get_max_force_uncertainty(self, atoms=None) -> float:
        """Largest per-atom force width of the structure, eV/Å."""
        return self.get_property("max_force_uncertainty", atoms)

    def __repr__(self) -> str:
        name = getattr(self.calibrator, "name", type(self.calibrator).__name__)
        return f"CalibratedCalculator(mode={self.mode!r}, calibrator={name!r}, threshold={self.threshold!r})"


# ---------------------------------------------------------------------- resolution
def _resolve_calibrator(calibrator):
    if isinstance(calibrator, (str, Path)):
        from core.calibration import load_calibrator

        return load_calibrator(calibrator)
    if not callable(getattr(calibrator, "predict", None)):
        raise TypeError(
            f"calibrator: expected a fitted FlexCal Calibrator (with predict(SiteTable)) or a path to one, "
            f"got {type(calibrator).__name__}"
        )
    return calibrator


def _make_backend(obj) -> "_Backend":
    from core.potentials import load_potential, potential_from_calculator

    if isinstance(obj, (str, Path)):
        obj = load_potential(obj)
    if callable(getattr(obj, "compute", None)):
        return _PotentialBackend(obj)
    if isinstance(obj, Calculator):
        potential = potential_from_calculator(obj)
        if potential is not None:
            family = type(obj).__module__.split(".")[0]
            return _PotentialBackend(potential, mode=f"{family}-one-pass")
        if callable(getattr(obj, "get_descriptors", None)):
            return _TwoPassBackend(obj)
        raise TypeError(
            f"potential_or_calc: the calculator {type(obj).__name__} has no get_descriptors(atoms); "
            "a calibrated width needs the potential's per-atom descriptors"
        )
    raise TypeError(
        "potential_or_calc: expected a FlexCal Potential (core.potentials), a MACECalculator, an ASE calculator "
        f"with get_descriptors, or a model path; got {type(obj).__name__}"
    )


class _Backend:
    mode = "?"

    def __call__(self, atoms) -> tuple[float, np.ndarray, np.ndarray, np.ndarray | None]:
        """(energy eV, forces (n, 3) eV/Å, descriptors (n, d), committee_std (n,) or None)."""
        raise NotImplementedError


class _PotentialBackend(_Backend):
    def __init__(self, potential, mode: str = "potential"):
        self.potential = potential
        self.mode = mode

    def __call__(self, atoms):
        out = self.potential.compute([atoms])
        return float(np.asarray(out.energies).reshape(-1)[0]), out.forces, out.descriptors, out.committee_std


class _TwoPassBackend(_Backend):
    mode = "two-pass"

    def __init__(self, calc):
        self.calc = calc

    def __call__(self, atoms):
        a = atoms.copy()
        a.calc = self.calc
        energy = a.get_potential_energy()
        forces = a.get_forces()
        desc = np.asarray(self.calc.get_descriptors(a))
        if desc.ndim == 3:  # some versions return (n, layers, features)
            desc = desc.reshape(desc.shape[0], -1)
        std = None
        comm = self.calc.results.get("forces_comm")
        if comm is not None and np.ndim(comm) == 3 and comm.shape[0] > 1:
            std = _committee_std(np.asarray(comm))
        return energy, forces, desc, std


def one_structure_sites(atoms, descriptors, forces, committee_std) -> SiteTable:
    """The SiteTable of one structure, built without ``from_arrays``' validation.

    The arrays come straight from the potential with known shapes, and this runs every MD
    step, where the generic checks cost as much as the calibrator itself; only finiteness
    (a blown-up trajectory) is checked. Errors are unknown at run time: ``errors=None``
    (an unlabelled table; calibrators never read errors in ``predict``).
    """
    n = len(atoms)
    descriptors = np.asarray(descriptors)
    forces = np.asarray(forces, dtype=np.float64).reshape(n, 3)
    if descriptors.ndim != 2 or descriptors.shape[0] != n:
        raise RuntimeError(f"the potential returned descriptors of shape {descriptors.shape} for {n} atoms")
    if not (np.all(np.isfinite(descriptors)) and np.all(np.isfinite(forces))):
        raise RuntimeError(
            "the potential returned non-finite forces or descriptors for this structure "
            "(has the simulation blown up?)"
        )
    if committee_std is not None:
        committee_std = np.asarray(committee_std, dtype=np.float64).reshape(n)
    return SiteTable(
        structure_ids=np.zeros(n, dtype=np.int64),
        atom_index=np.arange(n, dtype=np.int64),
        species=np.asarray(atoms.numbers, dtype=np.int64),
        errors=None,
        descriptors=descriptors,
        forces_pred=forces,
        committee_std=committee_std,
        structure_info={"structure_id": np.zeros(1, dtype=np.int64), "n_atoms": np.array([n], dtype=np.int64)},
    )


def _committee_std(forces_comm: np.ndarray) -> np.ndarray:
    """Per-atom spread (n,) of committee forces (k, n, 3): sqrt of the summed per-component variance."""
    return np.sqrt(np.var(forces_comm, axis=0).sum(axis=-1))

