"""Reading labelled (or unlabelled) atomistic datasets.

``read_dataset`` reads an extxyz file -- or anything ASE can read -- from a path
or from bytes (an upload), finds the reference labels and normalises them to
MACE's convention:

* per-structure energy -> ``atoms.info["REF_energy"]`` (eV; NaN where unknown),
* per-atom forces      -> ``atoms.arrays["REF_forces"]`` (eV/Å, shape (n_atoms, 3)).

Labels are looked up, in order, under the keys given by the caller, else
``REF_*``, then ``energy`` / ``forces`` (which ASE turns into a single-point
calculator on read), then ``DFT_*``. The single-point calculator is stripped from
every frame afterwards, so that a later calculator attached for MD or evaluation
cannot be confused with the reference. What was mapped is reported in
``Dataset.messages``.

Every problem with the input raises :class:`DatasetError` (a ``ValueError``)
whose message names the file, the frame index and the key involved.

Splits are always by structure (``split_structures``, ``split_by_config_type``):
atoms of one structure are correlated and a by-atom split leaks.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from core.sites import split_structure_ids

REF_ENERGY = "REF_energy"
REF_FORCES = "REF_forces"
DEFAULT_CONFIG_TYPE = "default"
ENERGY_KEYS = (REF_ENERGY, "energy", "DFT_energy")
FORCES_KEYS = (REF_FORCES, "forces", "DFT_forces")
DEFAULT_MAX_BYTES = 200 * 1024**2
DUPLICATE_TOLERANCE = 1e-3  # Å
_MAX_LISTED = 20


class DatasetError(ValueError):
    """Unreadable, inconsistent or mislabelled dataset (names file, frame and key)."""


# --------------------------------------------------------------------- Dataset
@dataclass
class Dataset:
    """Structures read from one source, labels normalised to ``REF_*``.

    Attributes
    ----------
    structures : list of ase.Atoms
        Frames in file order (or the order of ``indices`` for a subset).
        Reference labels, where present, live in ``atoms.info["REF_energy"]``
        (float, eV, NaN if unknown) and ``atoms.arrays["REF_forces"]``
        ((n_atoms, 3), eV/Å). No calculator is attached.
    source : str
        File path, or the upload name for bytes input.
    energy_key, forces_key : str or None
        Key the labels were read from in the source (None: not found).
    messages : list of str
        Human-readable notes on what was mapped or defaulted.
    labelled : bool
        True when every frame has reference forces.
    format : str
        ASE format name used to read the source.
    indices : ndarray of int64, shape (n_frames,)
        Position of each structure in the source file.
    """

    structures: list
    source: str
    energy_key: str | None = None
    forces_key: str | None = None
    messages: list[str] = field(default_factory=list)
    labelled: bool = True
    format: str = ""
    indices: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.indices is None:
            self.indices = np.arange(len(self.structures), dtype=np.int64)
        self.indices = np.asarray(self.indices, dtype=np.int64)
        if self.indices.shape != (len(self.structures),):
            raise ValueError(
                f"indices: expected shape ({len(self.structures)},), got {self.indices.shape}"
            )

    def __len__(self) -> int:
        return len(self.structures)

    def __iter__(self):
        return iter(self.structures)

    def __getitem__(self, i):
        return self.structures[i]

    def __repr__(self) -> str:
        return f"Dataset(source={self.source!r}, n_frames={len(self)}, labelled={self.labelled})"

    @property
    def config_types(self) -> list[str]:
        """``atoms.info["config_type"]`` per frame, ``"default"`` where absent."""
        return [str(a.info.get("config_type", DEFAULT_CONFIG_TYPE)) for a in self.structures]

    @property
    def energies(self) -> np.ndarray:
        """Reference energies, shape (n_frames,), eV, NaN where unknown."""
        return np.array([float(a.info.get(REF_ENERGY, np.nan)) for a in self.structures])

    def subset(self, index) -> "Dataset":
        """A new Dataset with the frames at ``index`` (positions in this dataset).

        The Atoms objects are shared, not copied; ``indices`` keeps their
        position in the source file.
        """
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"index: boolean mask must have shape ({len(self)},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).ravel()
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"index: out of range for a dataset of {len(self)} frames")
        return Dataset(
            structures=[self.structures[i] for i in idx],
            source=self.source,
            energy_key=self.energy_key,
            forces_key=self.forces_key,
            messages=list(self.messages),
            labelled=all(REF_FORCES in self.structures[i].arrays for i in idx),
            format=self.format,
            indices=self.indices[idx],
        )

    def summary(self) -> dict:
        """JSON-friendly overview of the dataset.

        Keys: ``source``, ``format``, ``n_frames``, ``n_atoms`` (total),
        ``n_atoms_min``, ``n_atoms_max``, ``elements`` (symbols, by Z),
        ``energy_key``, ``forces_key``, ``labelled``, ``has_energies``,
        ``config_types`` (type -> count), ``periodic`` (``"all"``, ``"none"``
        or ``"some"``), ``messages``.
        """
        from ase.data import chemical_symbols

        sizes = np.array([len(a) for a in self.structures], dtype=np.int64)
        zs = np.unique(np.concatenate([a.numbers for a in self.structures])) if len(self) else []
        n_periodic = sum(bool(a.pbc.any()) for a in self.structures)
        periodic = "none" if n_periodic == 0 else ("all" if n_periodic == len(self) else "some")
        energies = self.energies
        return {
            "source": self.source,
            "format": self.format,
            "n_frames": len(self),
            "n_atoms": int(sizes.sum()),
            "n_atoms_min": int(sizes.min()) if len(self) else 0,
            "n_atoms_max": int(sizes.max()) if len(self) else 0,
            "elements": [chemical_symbols[int(z)] for z in zs],
            "energy_key": self.energy_key,
            "forces_key": self.forces_key,
            "labelled": self.labelled,
            "has_energies": bool(np.isfinite(energies).any()),
            "config_types": dict(sorted(Counter(self.config_types).items())),
            "periodic": periodic,
            "messages": list(self.messages),
        }


# ------------------------------------------------------------------- reading
def supported_formats() -> list[str]:
    """Names of the formats ASE can read."""
    from ase.io.formats import ioformats

    return sorted(name for name, fmt in ioformats.items() if fmt.can_read)


def read_dataset(
    path_or_bytes,
    format: str | None = None,
    energy_key: str | None = None,
    forces_key: str | None = None,
    name: str | None = None,
    *,
    require_labels: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
    duplicate_tolerance: float = DUPLICATE_TOLERANCE,
) -> Dataset:
    """Read and validate a dataset.

    Parameters
    ----------
    path_or_bytes : str, os.PathLike or bytes
        A file path, or the file's content (an upload). Bytes need ``name``
        (whose extension gives the format) or ``format``.
    format : str, optional
        ASE format name (``"extxyz"``, ``"traj"``, ...). Default: inferred by ASE.
    energy_key, forces_key : str, optional
        Where the reference labels are. Default: the first of ``REF_*``,
        ``energy``/``forces`` (ASE single-point calculator), ``DFT_*`` present.
    name : str, optional
        Display name of the source (the upload's file name for bytes).
    require_labels : bool, default True
        If True, every frame must carry reference forces. If False (unlabelled
        target data), labels are read where present and missing ones are allowed;
        ``Dataset.labelled`` says whether all frames have forces.
    max_bytes : int, default 200 MiB
        Larger inputs are refused.
    duplicate_tolerance : float, default 1e-3 Å
        Two atoms closer than this (minimum image when periodic) are an error.

    Returns
    -------
    Dataset

    Raises
    ------
    DatasetError
        Empty, too large or unparsable input; unsupported format; missing or
        malformed labels; NaN/inf; zero-atom frames; duplicate atoms.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
        source = name or "<bytes>"
        if format is None and not name:
            raise DatasetError(
                "bytes input: pass name= (a file name whose extension gives the format) or format="
            )
        if len(data) > max_bytes:
            raise DatasetError(f"{source}: {len(data)} bytes exceeds the limit of {max_bytes} bytes (max_bytes)")
        if not data.strip():
            raise DatasetError(f"{source}: file is empty")
        suffix = Path(name).name if name else "upload"
        with tempfile.TemporaryDirectory(prefix="flexcal-upload-") as tmp:
            tmp_path = Path(tmp) / suffix
            tmp_path.write_bytes(data)
            return _read_file(
                tmp_path, source, format, energy_key, forces_key, require_labels, duplicate_tolerance
            )
    if not isinstance(path_or_bytes, (str, os.PathLike)):
        raise TypeError(
            f"path_or_bytes: expected a path or bytes, got {type(path_or_bytes).__name__}"
        )
    path = Path(path_or_bytes)
    source = name or str(path)
    if not path.exists():
        raise FileNotFoundError(f"{source}: no such file")
    if path.is_dir():
        raise DatasetError(f"{source}: is a directory, expected a file")
    size = path.stat().st_size
    if size > max_bytes:
        raise DatasetError(f"{source}: {size} bytes exceeds the limit of {max_bytes} bytes (max_bytes)")
    if size == 0:
        raise DatasetError(f"{source}: file is empty")
    return _read_file(path, source, format, energy_key, forces_key, require_labels, duplicate_tolerance)


def _resolve_format(path: Path, source: str, format: str | None) -> str:
    from ase.io.formats import UnknownFileTypeError, filetype, ioformats

    if format is not None:
        if format not in ioformats or not ioformats[format].can_read:
            raise DatasetError(
                f"{source}: unsupported format {format!r}; ASE reads: {', '.join(supported_formats())}"
            )
        return format
    try:
        fmt = filetype(str(path), guess=True)
    except (UnknownFileTypeError, OSError, ValueError) as exc:
        raise DatasetError(
            f"{source}: cannot tell the file format ({exc}); pass format= with one of: "
            f"{', '.join(supported_formats())}"
        ) from None
    if fmt not in ioformats or not ioformats[fmt].can_read:
        raise DatasetError(
            f"{source}: cannot tell the file format (guessed {fmt!r}, which ASE cannot read); "
            f"pass format= with one of: {', '.join(supported_formats())}"
        )
    return fmt


def _read_file(path, source, format, energy_key, forces_key, require_labels, tol) -> Dataset:
    import ase.io

    if path.stat().st_size and not _has_content(path):
        raise DatasetError(f"{source}: file is empty")
    fmt = _resolve_format(path, source, format)
    frames = []
    try:
        for atoms in ase.io.iread(str(path), index=":", format=fmt):
            frames.append(atoms)
    except Exception as exc:  # ASE raises many types on malformed input
        raise DatasetError(
            f"{source}: frame {len(frames)} could not be parsed as {fmt} "
            f"({type(exc).__name__}: {exc})"
        ) from None
    if not frames:
        raise DatasetError(f"{source}: no structures found (file is empty for format {fmt!r})")

    messages: list[str] = []
    for i, atoms in enumerate(frames):
        _check_frame(atoms, i, source, tol)

    fkey, fwhere = _choose_key(frames, forces_key, FORCES_KEYS, _forces_location, source, "forces")
    ekey, ewhere = _choose_key(frames, energy_key, ENERGY_KEYS, _energy_location, source, "energy")

    # forces
    if fkey is None:
        if require_labels:
            raise DatasetError(
                f"{source}: no reference forces found (looked for {', '.join(map(repr, FORCES_KEYS))}; "
                f"per-atom keys in frame 0: {_per_atom_keys(frames[0])}); pass forces_key=, "
                "or require_labels=False for unlabelled data"
            )
        messages.append("no reference forces found: dataset is unlabelled")
        labelled = False
    else:
        missing = [i for i, a in enumerate(frames) if _forces_location(a, fkey) is None]
        if missing and require_labels:
            raise DatasetError(
                f"{source}: forces key {fkey!r} missing in {len(missing)} of {len(frames)} frames: "
                f"frames {_fmt_list(missing)}"
            )
        for i, atoms in enumerate(frames):
            where = _forces_location(atoms, fkey)
            if where is None:
                continue
            f = _get(atoms, fkey, where)
            try:
                f = np.asarray(f, dtype=np.float64)
            except (TypeError, ValueError):
                raise DatasetError(f"{source}: frame {i}: forces {fkey!r} are not numeric") from None
            if f.shape != (len(atoms), 3):
                raise DatasetError(
                    f"{source}: frame {i}: forces {fkey!r} have shape {f.shape}, expected ({len(atoms)}, 3)"
                )
            bad = ~np.isfinite(f)
            if bad.any():
                atom = int(np.argwhere(bad)[0][0])
                raise DatasetError(f"{source}: frame {i}: forces {fkey!r} contain NaN or inf (atom {atom})")
            atoms.arrays[REF_FORCES] = f.copy()
        where_txt = _where_text(fwhere)
        if fkey == REF_FORCES:
            messages.append(f"forces read from {REF_FORCES!r}")
        else:
            messages.append(f"forces read from {fkey!r} ({where_txt}) and stored as {REF_FORCES!r}")
        labelled = not missing
        if missing:
            messages.append(
                f"forces missing in {len(missing)} of {len(frames)} frames ({_fmt_list(missing)}): "
                "dataset treated as unlabelled"
            )

    # energies
    n_energy = 0
    for i, atoms in enumerate(frames):
        e = np.nan
        if ekey is not None:
            where = _energy_location(atoms, ekey)
            if where is not None:
                raw = _get(atoms, ekey, where)
                try:
                    e = float(np.asarray(raw, dtype=np.float64).reshape(()))
                except (TypeError, ValueError):
                    raise DatasetError(
                        f"{source}: frame {i}: energy {ekey!r} is not a single number (got {raw!r})"
                    ) from None
                if not math.isfinite(e):
                    raise DatasetError(f"{source}: frame {i}: energy {ekey!r} is NaN or inf")
                n_energy += 1
        atoms.info[REF_ENERGY] = e
    if ekey is None:
        messages.append(
            f"no reference energies found (looked for {', '.join(map(repr, ENERGY_KEYS))}): energies set to NaN"
        )
    else:
        if ekey == REF_ENERGY:
            messages.append(f"energies read from {REF_ENERGY!r}")
        else:
            messages.append(
                f"energies read from {ekey!r} ({_where_text(ewhere)}) and stored as {REF_ENERGY!r}"
            )
        if n_energy < len(frames):
            messages.append(f"energies missing in {len(frames) - n_energy} of {len(frames)} frames: set to NaN")

    for atoms in frames:
        calc = atoms.calc
        if calc is not None:
            stress = getattr(calc, "results", {}).get("stress")
            if stress is not None and "REF_stress" not in atoms.info:
                atoms.info["REF_stress"] = np.asarray(stress, dtype=np.float64)
            atoms.calc = None

    return Dataset(
        structures=frames,
        source=source,
        energy_key=ekey,
        forces_key=fkey,
        messages=messages,
        labelled=labelled,
        format=fmt,
    )


def _has_content(path: Path, probe: int = 1 << 16) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(probe)
    return bool(head.strip()) or path.stat().st_size > probe


def _check_frame(atoms, i: int, source: str, tol: float) -> None:
    if len(atoms) == 0:
        raise DatasetError(f"{source}: frame {i} has zero atoms")
    pos = atoms.positions
    bad = ~np.isfinite(pos)
    if bad.any():
        atom = int(np.argwhere(bad)[0][0])
        raise DatasetError(f"{source}: frame {i}: positions contain NaN or inf (atom {atom})")
    pbc = atoms.pbc
    if pbc.any():
        cell = np.asarray(atoms.cell)
        if not np.all(np.isfinite(cell)):
            raise DatasetError(f"{source}: frame {i}: cell contains NaN or inf")
        lengths = np.linalg.norm(cell, axis=1)
        if np.any(lengths[pbc] < 1e-8) or (pbc.all() and abs(np.linalg.det(cell)) < 1e-8):
            raise DatasetError(
                f"{source}: frame {i}: periodic along {['xyz'[k] for k in np.flatnonzero(pbc)]} "
                f"but the cell is degenerate (lengths {np.round(lengths, 6).tolist()})"
            )
    pair = _first_duplicate(atoms, tol)
    if pair is not None:
        a, b, d = pair
        raise DatasetError(
            f"{source}: frame {i}: atoms {a} and {b} are at the same position "
            f"(distance {d:.2e} Å < {tol:g} Å{', minimum image' if pbc.any() else ''})"
        )


def _first_duplicate(atoms, tol: float):
    """First pair (i, j, distance) closer than ``tol`` (minimum image), else None.

    A k-d tree on the Cartesian positions finds direct pairs. When periodic, the
    positions are wrapped into the cell first, so a minimum-image pair closer than
    ``tol`` either is a direct pair or involves atoms within ``tol`` of a cell
    face; only those few atoms are compared against the 3^k-1 shifted images.
    """
    from scipy.spatial import cKDTree

    pbc = np.asarray(atoms.pbc, dtype=bool)
    pos = np.asarray(atoms.positions, dtype=np.float64)
    if len(pos) < 2:
        return None
    if not pbc.any():
        pairs = cKDTree(pos).query_pairs(tol, output_type="ndarray")
        if len(pairs):
            a, b = sorted(pairs.tolist())[0]
            return a, b, float(np.linalg.norm(pos[a] - pos[b]))
        return None
    cell = np.asarray(atoms.cell, dtype=np.float64)
    if not pbc.all():
        # pad non-periodic cell vectors so the cell is invertible; they are not wrapped
        cell = atoms.cell.complete() if hasattr(atoms.cell, "complete") else cell
        cell = np.asarray(cell, dtype=np.float64)
    frac = np.linalg.solve(cell.T, pos.T).T
    frac[:, pbc] -= np.floor(frac[:, pbc])
    cart = frac @ cell
    tree = cKDTree(cart)
    pairs = tree.query_pairs(tol, output_type="ndarray")
    if len(pairs):
        a, b = sorted(pairs.tolist())[0]
        return a, b, float(np.linalg.norm(cart[a] - cart[b]))
    # heights of the cell (distance between opposite faces) along each vector
    vol = abs(np.linalg.det(cell))
    heights = np.array([vol / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)])
    near = np.zeros(len(pos), dtype=bool)
    for k in np.flatnonzero(pbc):
        f = frac[:, k]
        near |= (f * heights[k] < tol) | ((1.0 - f) * heights[k] < tol)
    idx = np.flatnonzero(near)
    if idx.size == 0:
        return None
    ranges = [(-1, 0, 1) if pbc[k] else (0,) for k in range(3)]
    for s0 in ranges[0]:
        for s1 in ranges[1]:
            for s2 in ranges[2]:
                if s0 == s1 == s2 == 0:
                    continue
                shifted = cart[idx] + np.array([s0, s1, s2], dtype=np.float64) @ cell
                hits = tree.query_ball_point(shifted, tol)
                for row, js in enumerate(hits):
                    for j in js:
                        a = int(idx[row])
                        if j != a:
                            return min(a, j), max(a, j), float(np.linalg.norm(shifted[row] - cart[j]))
    return None


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


def _fmt_list(items: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")


# -------------------------------------------------------------------- splits
def split_structures(dataset_or_n, test_fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of structures into (calibration, test) positions.

    Parameters
    ----------
    dataset_or_n : Dataset, sequence of Atoms or int
        The dataset, or its number of structures.
    test_fraction : float in (0, 1)
        Share of structures in the test part (each part gets at least one).
    seed : int

    Returns
    -------
    calibration, test : ndarray of int64
        Sorted positions into the dataset (not atom indices).
    """
    if isinstance(dataset_or_n, (int, np.integer)):
        n = int(dataset_or_n)
    else:
        try:
            n = len(dataset_or_n)
        except TypeError:
            raise TypeError(
                f"dataset_or_n: expected a Dataset, a list of structures or an int, got {type(dataset_or_n).__name__}"
            ) from None
    return split_structure_ids(np.arange(n), test_fraction, seed)


def split_by_config_type(
    dataset, calibration_types: str | Iterable[str], test_types: str | Iterable[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split structures by their ``config_type`` (e.g. 300 K vs 1200 K).

    Parameters
    ----------
    dataset : Dataset or list of Atoms
    calibration_types : str or iterable of str
    test_types : str or iterable of str, optional
        Default: every config type not in ``calibration_types``.

    Returns
    -------
    calibration, test : ndarray of int64
        Positions into the dataset.

    Raises
    ------
    ValueError
        Unknown or overlapping config types (the message lists the available
        ones), or a side that selects no structure.
    """
    types = (
        dataset.config_types
        if isinstance(dataset, Dataset)
        else [str(a.info.get("config_type", DEFAULT_CONFIG_TYPE)) for a in dataset]
    )
    available = sorted(set(types))
    cal = _as_type_list("calibration_types", calibration_types)
    test = [t for t in available if t not in cal] if test_types is None else _as_type_list("test_types", test_types)
    unknown = [t for t in cal + test if t not in available]
    if unknown:
        raise ValueError(f"unknown config type(s) {unknown}; available: {available}")
    both = sorted(set(cal) & set(test))
    if both:
        raise ValueError(f"config type(s) {both} are in both calibration_types and test_types")
    arr = np.asarray(types, dtype=object)
    cal_idx = np.flatnonzero(np.isin(arr, cal)).astype(np.int64)
    test_idx = np.flatnonzero(np.isin(arr, test)).astype(np.int64)
    if cal_idx.size == 0:
        raise ValueError(f"calibration_types {cal} select no structures; available: {available}")
    if test_idx.size == 0:
        raise ValueError(f"test_types select no structures (all types are calibration types); available: {available}")
    return cal_idx, test_idx


def _as_type_list(name: str, value) -> list[str]:
    if isinstance(value, str):
        return [value]
    try:
        out = [str(v) for v in value]
    except TypeError:
        raise TypeError(f"{name}: expected a string or a list of strings, got {type(value).__name__}") from None
    if not out:
        raise ValueError(f"{name}: empty")
    return out
