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
whose message names the file, the frame index (and, for extxyz, the line of the
frame's atom count) and the key or value involved. Hints name the API's own
parameters (``format=``, ``forces_key=``, ``max_bytes=``, ...); the CLI rewrites
them into its flags.

Cost is bounded before ASE parses anything (:mod:`core.data_checks`): the file
size (``max_bytes``), the atoms per structure (``max_atoms``, checked on the atom
count lines of an extxyz file against the bytes that follow), the header lines,
and the spatial extent of each frame (``max_extent``: what a neighbour list
costs). Frames that repeat an earlier one are dropped with a note
(``duplicate_frames``): a duplicate would otherwise land on both sides of a
by-structure split and inflate the coverage.

Splits are always by structure (``split_structures``, ``split_by_config_type``):
atoms of one structure are correlated and a by-atom split leaks.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from core.data_checks import (
    DEFAULT_MAX_ATOMS,
    DEFAULT_MAX_EXTENT,
    DUPLICATE_FRAME_TOLERANCE,
    XYZ_FORMATS,
    DatasetError,
    check_frame,
    find_duplicate_frames,
    frame_label,
    resolve_format,
    scan_xyz,
    supported_formats,
)
from core.data_labels import (  # the label names are part of core.data's API
    ENERGY_KEYS,
    FORCES_KEYS,
    REF_ENERGY,
    REF_FORCES,
    UNLABELLED_HINT,
    fmt_list,
    map_energies,
    map_forces,
)
from core.sites import split_structure_ids
from core.validation import check_choice, check_float, check_int, check_regular_file

DEFAULT_CONFIG_TYPE = "default"
DEFAULT_MAX_BYTES = 200 * 1024**2
DUPLICATE_TOLERANCE = 1e-3  # Å, two atoms of one frame closer than this are an error
DUPLICATE_FRAMES = ("drop", "error", "keep")
DROPPED_NOTE = "dropped "  # how the note on dropped duplicate frames starts (the CLI makes it a WARNING)


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
@dataclass(frozen=True)
class _Options:
    """How one read goes: labels, limits and duplicate handling (checked by read_dataset)."""

    format: str | None
    energy_key: str | None
    forces_key: str | None
    require_labels: bool
    tol: float
    max_atoms: int
    max_extent: float
    duplicate_frames: str


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
    max_atoms: int = DEFAULT_MAX_ATOMS,
    max_extent: float = DEFAULT_MAX_EXTENT,
    duplicate_frames: str = "drop",
) -> Dataset:
    """Read and validate a dataset (bounded cost; see the module docstring).

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
        If True, every frame must carry reference forces; if False (unlabelled data)
        missing ones are allowed and ``Dataset.labelled`` says whether all have them.
    max_bytes : int, default 200 MiB
        Larger inputs are refused before reading.
    duplicate_tolerance : float, default 1e-3 Å
        Two atoms of one frame closer than this (minimum image when periodic) are an error.
    max_atoms : int, default 100000
        Atoms per structure; an extxyz atom count above it is refused before parsing.
    max_extent : float, default 100 Å
        A frame that is not periodic in all three directions must keep every
        |coordinate| within this many Å of the origin; periodic cell vectors may be
        10 x as long (see :mod:`core.data_checks` for the measured costs).
    duplicate_frames : {"drop", "error", "keep"}, default "drop"
        Frames equal to an earlier one (same atoms in the same order, positions and
        cell within 1e-4 Å): dropped with a note naming them (``Dataset.indices`` keeps
        the source positions of the rest), refused, or kept.

    Returns
    -------
    Dataset

    Raises
    ------
    DatasetError
        Empty, too large, too costly or unparsable input; unsupported format; bad labels;
        NaN/inf; zero-atom frames; duplicate atoms; duplicate frames with
        ``duplicate_frames="error"``. Bad arguments -> ValueError naming the argument.
    """
    max_bytes = check_int("max_bytes", max_bytes, 1)
    opts = _Options(
        format=format, energy_key=energy_key, forces_key=forces_key, require_labels=bool(require_labels),
        tol=check_float("duplicate_tolerance", duplicate_tolerance, 0.0),
        max_atoms=check_int("max_atoms", max_atoms, 1),
        max_extent=check_float("max_extent", max_extent, 0.0, lo_open=True),
        duplicate_frames=check_choice("duplicate_frames", duplicate_frames, DUPLICATE_FRAMES),
    )
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return _read_bytes(bytes(path_or_bytes), name, max_bytes, opts)
    if not isinstance(path_or_bytes, (str, os.PathLike)):
        raise TypeError(f"path_or_bytes: expected a path or bytes, got {type(path_or_bytes).__name__}")
    return _read_path(Path(path_or_bytes), name, max_bytes, opts)


def _read_path(path: Path, name: str | None, max_bytes: int, opts: _Options) -> Dataset:
    """A file: checked (exists, regular, not empty, not over ``max_bytes``) before it is opened."""
    source = name or str(path)
    check_regular_file(path, source, expected="a structure file", error=DatasetError)
    size = path.stat().st_size
    if size > max_bytes:
        raise DatasetError(f"{source}: {size} bytes exceeds the limit of {max_bytes} bytes (max_bytes=)")
    if size == 0:
        raise DatasetError(f"{source}: file is empty")
    return _read_file(path, source, opts)


def _read_bytes(data: bytes, name: str | None, max_bytes: int, opts: _Options) -> Dataset:
    """An upload: checked, written to a private temporary file, read like a path."""
    source = name or "<bytes>"
    if opts.format is None and not name:
        raise DatasetError("bytes input: pass name= (a file name whose extension gives the format) or format=")
    if len(data) > max_bytes:
        raise DatasetError(f"{source}: {len(data)} bytes exceeds the limit of {max_bytes} bytes (max_bytes=)")
    if not data.strip():
        raise DatasetError(f"{source}: file is empty")
    with tempfile.TemporaryDirectory(prefix="flexcal-upload-") as tmp:
        tmp_path = Path(tmp) / ((Path(name).name if name else "") or "upload")
        tmp_path.write_bytes(data)
        return _read_file(tmp_path, source, opts)


def _parse_frames(path: Path, source: str, fmt: str, opts: _Options) -> tuple[list, np.ndarray | None]:
    """ASE's frames, after the (ext)xyz pre-scan; ``lines`` = each frame's count line or None."""
    import ase.io

    lines = scan_xyz(path, source, max_atoms=opts.max_atoms) if fmt in XYZ_FORMATS else None
    frames: list = []
    try:
        for atoms in ase.io.iread(str(path), index=":", format=fmt):
            frames.append(atoms)
            if len(atoms) > opts.max_atoms:  # formats without a pre-scan
                break
    except Exception as exc:  # ASE raises many types on malformed input
        raise DatasetError(
            f"{source}: {frame_label(len(frames), lines)} could not be parsed as {fmt} "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
        ) from None
    if not frames:
        raise DatasetError(f"{source}: no structures found (file is empty for format {fmt!r})")
    for i, atoms in enumerate(frames):
        check_frame(atoms, f"{source}: {frame_label(i, lines)}", tol=opts.tol, max_atoms=opts.max_atoms,
                    max_extent=opts.max_extent)
    return frames, lines


def _read_file(path: Path, source: str, opts: _Options) -> Dataset:
    if not _has_content(path):
        raise DatasetError(f"{source}: file is empty")
    fmt = resolve_format(path, source, opts.format)
    frames, lines = _parse_frames(path, source, fmt, opts)
    messages: list[str] = []
    ekey_messages: list[str] = []
    ekey = map_energies(frames, source, opts.energy_key, ekey_messages, lines)
    fkey, labelled = map_forces(frames, source, opts, messages, lines)
    messages += ekey_messages
    for atoms in frames:
        calc = atoms.calc
        if calc is not None:
            stress = getattr(calc, "results", {}).get("stress")
            if stress is not None and "REF_stress" not in atoms.info:
                atoms.info["REF_stress"] = np.asarray(stress, dtype=np.float64)
            atoms.calc = None
    dataset = Dataset(structures=frames, source=source, energy_key=ekey, forces_key=fkey, messages=messages,
                      labelled=labelled, format=fmt)
    return _handle_duplicates(dataset, opts.duplicate_frames)


def _handle_duplicates(dataset: Dataset, mode: str) -> Dataset:
    """Drop (with a note), refuse or keep frames that repeat an earlier frame."""
    if mode == "keep" or len(dataset) < 2:
        return dataset
    dups = find_duplicate_frames(dataset.structures, DUPLICATE_FRAME_TOLERANCE)
    if not dups:
        return dataset
    pairs = [f"{later} (= {first})" for later, first in dups.items()]
    same = f"same atoms, positions and cell within {DUPLICATE_FRAME_TOLERANCE:g} Å as an earlier frame"
    if mode == "error":
        raise DatasetError(f"{dataset.source}: {len(dups)} of {len(dataset)} frames repeat an earlier frame ({same}): "
                           f"frames {fmt_list(pairs)}; a duplicate would land on both sides of a by-structure split "
                           "and inflate the coverage: remove them, or pass duplicate_frames='drop'")
    keep = np.setdiff1d(np.arange(len(dataset)), np.fromiter(dups, dtype=np.int64))
    out = dataset.subset(keep)
    out.messages.append(f"{DROPPED_NOTE}{len(dups)} duplicate frame(s) of {len(dataset)} ({same}): frames "
                        f"{fmt_list(pairs)}, so that no structure is both calibrated and tested on")
    return out


def _has_content(path: Path, probe: int = 1 << 16) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(probe)
    return bool(head.strip()) or path.stat().st_size > probe


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
