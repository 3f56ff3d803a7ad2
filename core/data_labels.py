"""Reference labels of a dataset: where they are, and their copy to MACE's ``REF_*`` keys.

Used by :func:`core.data.read_dataset`. Labels are looked up, in order, under the key given
by the caller, else ``REF_*``, then ``energy`` / ``forces`` (an ASE single-point
calculator), then ``DFT_*``. Forces must be finite (n_atoms, 3) arrays (eV/Å), energies
single finite numbers (eV); every problem raises :class:`DatasetError` naming the file, the
frame (and line) and the key.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from core.data_checks import DatasetError, frame_label

__all__ = ["REF_ENERGY", "REF_FORCES", "ENERGY_KEYS", "FORCES_KEYS", "UNLABELLED_HINT", "map_forces",
           "map_energies", "fmt_list"]

REF_ENERGY = "REF_energy"
REF_FORCES = "REF_forces"
ENERGY_KEYS = (REF_ENERGY, "energy", "DFT_energy")
FORCES_KEYS = (REF_FORCES, "forces", "DFT_forces")
UNLABELLED_HINT = "or require_labels=False for unlabelled data"
_MAX_LISTED = 20


def map_forces(frames, source: str, opts, messages: list[str], lines) -> tuple[str | None, bool]:
    """Copy the reference forces to ``REF_forces``; (key used, every frame labelled)."""
    fkey, fwhere = _choose_key(frames, opts.forces_key, FORCES_KEYS, _forces_location, source, "forces")
    if fkey is None:
        if opts.require_labels:
            raise DatasetError(
                f"{source}: no reference forces found (looked for {', '.join(map(repr, FORCES_KEYS))}; "
                f"per-atom keys in frame 0: {_per_atom_keys(frames[0])}); pass forces_key=, {UNLABELLED_HINT}"
            )
        messages.append("no reference forces found: dataset is unlabelled")
        return None, False
    missing = [i for i, a in enumerate(frames) if _forces_location(a, fkey) is None]
    if missing and opts.require_labels:
        raise DatasetError(f"{source}: forces key {fkey!r} missing in {len(missing)} of {len(frames)} frames: "
                           f"frames {fmt_list(missing)}")
    for i, atoms in enumerate(frames):
        where = _forces_location(atoms, fkey)
        if where is None:
            continue
        label = f"{source}: {frame_label(i, lines)}"
        try:
            f = np.asarray(_get(atoms, fkey, where), dtype=np.float64)
        except (TypeError, ValueError):
            raise DatasetError(f"{label}: forces {fkey!r} are not numeric") from None
        if f.shape != (len(atoms), 3):
            raise DatasetError(f"{label}: forces {fkey!r} have shape {f.shape}, expected ({len(atoms)}, 3)")
        bad = ~np.isfinite(f)
        if bad.any():
            raise DatasetError(f"{label}: forces {fkey!r} contain NaN or inf (atom {int(np.argwhere(bad)[0][0])})")
        atoms.arrays[REF_FORCES] = f.copy()
    if fkey == REF_FORCES:
        messages.append(f"forces read from {REF_FORCES!r}")
    else:
        messages.append(f"forces read from {fkey!r} ({_where_text(fwhere)}) and stored as {REF_FORCES!r}")
    if missing:
        messages.append(f"forces missing in {len(missing)} of {len(frames)} frames ({fmt_list(missing)}): "
                        "dataset treated as unlabelled")
    return fkey, not missing


def map_energies(frames, source: str, energy_key, messages: list[str], lines) -> str | None:
    """Copy the reference energies to ``REF_energy`` (NaN where unknown); the key used."""
    ekey, ewhere = _choose_key(frames, energy_key, ENERGY_KEYS, _energy_location, source, "energy")
    n_energy = 0
    for i, atoms in enumerate(frames):
        e = np.nan
        where = _energy_location(atoms, ekey) if ekey is not None else None
        if where is not None:
            raw = _get(atoms, ekey, where)
            label = f"{source}: {frame_label(i, lines)}"
            try:
                e = float(np.asarray(raw, dtype=np.float64).reshape(()))
            except (TypeError, ValueError):
                raise DatasetError(f"{label}: energy {ekey!r} is not a single number (got {raw!r})") from None
            if not math.isfinite(e):
                raise DatasetError(f"{label}: energy {ekey!r} is NaN or inf")
            n_energy += 1
        atoms.info[REF_ENERGY] = e
    if ekey is None:
        messages.append(
            f"no reference energies found (looked for {', '.join(map(repr, ENERGY_KEYS))}): energies set to NaN"
        )
        return None
    if ekey == REF_ENERGY:
        messages.append(f"energies read from {REF_ENERGY!r}")
    else:
        messages.append(f"energies read from {ekey!r} ({_where_text(ewhere)}) and stored as {REF_ENERGY!r}")
    if n_energy < len(frames):
        messages.append(f"energies missing in {len(frames) - n_energy} of {len(frames)} frames: set to NaN")
    return ekey


def _calc_results(atoms) -> dict:
    calc = atoms.calc
    return getattr(calc, "results", {}) if calc is not None else {}


def _forces_location(atoms, key: str) -> str | None:
    if key in atoms.arrays:
        return "arrays"
    if key in _calc_results(atoms):
        return "calc"
    return None


def _energy_location(atoms, key: str) -> str | None:
    if key in atoms.info:
        return "info"
    if key in _calc_results(atoms):
        return "calc"
    return None


def _get(atoms, key: str, where: str):
    if where == "arrays":
        return atoms.arrays[key]
    if where == "info":
        return atoms.info[key]
    return _calc_results(atoms)[key]


def _where_text(where: str | None) -> str:
    return {
        "calc": "ASE single-point calculator",
        "arrays": "per-atom array",
        "info": "per-frame info",
    }.get(where or "", "not found")


def _choose_key(frames, given, candidates, locate, source, what):
    """The key to use and where it was first found, or (None, None)."""
    if given is not None:
        for atoms in frames:
            where = locate(atoms, given)
            if where is not None:
                return given, where
        keys = _per_atom_keys(frames[0]) if what == "forces" else _per_frame_keys(frames[0])
        raise DatasetError(
            f"{source}: {what} key {given!r} not found in any frame (frame 0 has: {keys})"
        )
    for key in candidates:
        for atoms in frames:
            where = locate(atoms, key)
            if where is not None:
                return key, where
    return None, None


def _per_atom_keys(atoms) -> list[str]:
    keys = [k for k in atoms.arrays if k not in ("numbers", "positions")]
    keys += [k for k, v in _calc_results(atoms).items() if np.ndim(v) == 2]
    return keys


def _per_frame_keys(atoms) -> list[str]:
    keys = list(atoms.info)
    keys += [k for k, v in _calc_results(atoms).items() if np.ndim(v) == 0]
    return keys


def fmt_list(items: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")
