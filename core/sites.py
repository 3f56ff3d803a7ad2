"""SiteTable: one row per atom ("site") of a dataset run through a potential.

A site carries the structure it belongs to, its index inside that structure, its
species Z, the force error e_i = ||F_pred - F_ref||_2 (eV/Å) and the potential's
invariant per-atom descriptors X_i (d,). Optional columns: predicted and
reference forces (n, 3) in eV/Å, and a committee force spread (n,) in eV/Å.

Unlabelled tables (structures without reference forces, e.g. MD candidates or
the target domain of a shift) have ``errors=None`` and ``labelled`` False: they
can be predicted on, used as ``target`` or ``reference``, but calibrators and
metrics refuse them (:meth:`SiteTable.require_labels`).

Per-structure values (energies, config types, atom counts) live in
``structure_info``, a dict of equally long arrays whose ``structure_id`` column
matches ``SiteTable.structure_ids``.

On disk a SiteTable is a single ``.npz`` file written with ``allow_pickle=False``:
every column is a plain numeric or unicode array, and a JSON string under
``__meta__`` holds the format version and free-form metadata (model name,
dataset path, ...). ``SiteTable.load`` never unpickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
_STRUCTURE_PREFIX = "structure_info__"
_OPTIONAL_SITE_COLUMNS = ("errors", "forces_pred", "forces_ref", "committee_std")

#: Why an unlabelled table cannot be used where errors are needed (prefixed by the argument name).
UNLABELLED_MESSAGE = (
    "these sites carry no reference labels (errors=None); calibrating, updating and scoring need "
    "labelled sites (featurize structures that have reference forces, labelled=True). Unlabelled sites "
    "can only be predicted on or passed as target=/reference="
)


def _as_array(name: str, value: Any, dtype, ndim: int) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a numeric array, got {type(value).__name__} ({exc})") from None
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {arr.shape}")
    return arr


def _check_finite(name: str, arr: np.ndarray) -> None:
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{name}: contains NaN or inf (first at index {tuple(int(i) for i in bad)})")


@dataclass(frozen=True, eq=False)
class SiteTable:
    """Per-site calibration data.

    Attributes
    ----------
    structure_ids : ndarray of int64, shape (n,)
        Index of each site's structure in its dataset.
    atom_index : ndarray of int64, shape (n,)
        Index of the atom inside its structure.
    species : ndarray of int64, shape (n,)
        Atomic number Z.
    errors : ndarray of float64, shape (n,), or None
        Force-error norm ||F_pred - F_ref||_2 per site, eV/Å, >= 0; None for an
        unlabelled table (no reference forces; see ``labelled``).
    descriptors : ndarray of float32 or float64, shape (n, d)
        Invariant per-atom descriptors.
    forces_pred, forces_ref : ndarray of float64, shape (n, 3), optional
        Predicted / reference forces, eV/Å.
    committee_std : ndarray of float64, shape (n,), optional
        Spread of predicted forces across a committee, eV/Å.
    structure_info : dict of str -> ndarray (m,)
        Per-structure columns; always has ``structure_id`` and ``n_atoms``;
        may have ``energy_ref``, ``energy_pred`` (eV, NaN where unknown) and
        ``config_type`` (str).
    meta : dict
        JSON-serialisable metadata (model, dataset, settings).
    """

    structure_ids: np.ndarray
    atom_index: np.ndarray
    species: np.ndarray
    errors: np.ndarray | None
    descriptors: np.ndarray
    forces_pred: np.ndarray | None = None
    forces_ref: np.ndarray | None = None
    committee_std: np.ndarray | None = None
    structure_info: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ build
    @classmethod
    def from_arrays(
        cls,
        *,
        descriptors,
        errors,
        species,
        structure_ids,
        atom_index=None,
        forces_pred=None,
        forces_ref=None,
        committee_std=None,
        structure_info: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> "SiteTable":
        """Validate arrays and build a table.

        ``atom_index`` defaults to the running index of each site inside its
        structure. ``errors=None`` with both force arrays given computes the errors
        as the per-site norm of their difference; otherwise ``errors=None`` makes an
        unlabelled table (``labelled`` False).
        """
        descriptors = _as_array("descriptors", descriptors, None, 2)
        if descriptors.dtype.kind not in "fiu":
            raise TypeError(f"descriptors: expected a numeric array, got dtype {descriptors.dtype}")
        if descriptors.dtype.kind != "f":
            descriptors = descriptors.astype(np.float64)
        n = descriptors.shape[0]
        if n == 0:
            raise ValueError("descriptors: the table is empty (0 sites)")

        def per_site(name, value, dtype, ndim=1, width=None):
            arr = _as_array(name, value, dtype, ndim)
            if arr.shape[0] != n:
                raise ValueError(f"{name}: expected {n} rows (one per site, as descriptors), got {arr.shape[0]}")
            if width is not None and arr.shape[1] != width:
                raise ValueError(f"{name}: expected shape ({n}, {width}), got {arr.shape}")
            _check_finite(name, arr)
            return arr

        _check_finite("descriptors", descriptors)
        if forces_pred is not None:
            forces_pred = per_site("forces_pred", forces_pred, np.float64, 2, 3)
        if forces_ref is not None:
            forces_ref = per_site("forces_ref", forces_ref, np.float64, 2, 3)
        if errors is None and forces_pred is not None and forces_ref is not None:
            errors = np.linalg.norm(forces_pred - forces_ref, axis=1)
        if errors is not None:
            errors = per_site("errors", errors, np.float64)
        if errors is not None and np.any(errors < 0):
            i = int(np.argmax(errors < 0))
            raise ValueError(f"errors: must be >= 0 (force-error norms), got {errors[i]!r} at site {i}")
        species = per_site("species", species, np.int64)
        if np.any(species < 1) or np.any(species > 118):
            i = int(np.argmax((species < 1) | (species > 118)))
            raise ValueError(f"species: expected atomic numbers 1..118, got {int(species[i])} at site {i}")
        structure_ids = per_site("structure_ids", structure_ids, np.int64)
        if np.any(structure_ids < 0):
            raise ValueError(f"structure_ids: must be >= 0, got min {int(structure_ids.min())}")
        if atom_index is None:
            atom_index = _running_index(structure_ids)
        atom_index = per_site("atom_index", atom_index, np.int64)
        if committee_std is not None:
            committee_std = per_site("committee_std", committee_std, np.float64)
        info = _build_structure_info(structure_ids, structure_info)
        return cls(
            structure_ids=structure_ids,
            atom_index=atom_index,
            species=species,
            errors=errors,
            descriptors=descriptors,
            forces_pred=forces_pred,
            forces_ref=forces_ref,
            committee_std=committee_std,
            structure_info=info,
            meta=dict(meta or {}),
        )

    # ------------------------------------------------------------- inspect
    def __len__(self) -> int:
        return int(self.species.shape[0])

    def __repr__(self) -> str:
        return (
            f"SiteTable(n_sites={len(self)}, n_structures={self.n_structures}, "
            f"n_descriptors={self.n_descriptors}, species={self.unique_species.tolist()}"
            f"{'' if self.labelled else ', unlabelled'})"
        )

    @property
    def labelled(self) -> bool:
        """True when the sites carry reference errors (``errors`` is not None)."""
        return self.errors is not None

    def require_labels(self, name: str = "sites") -> np.ndarray:
        """``errors`` (n,) eV/Å; ValueError ``"<name>: these sites carry no reference labels ..."`` if None."""
        if self.errors is None:
            raise ValueError(f"{name}: {UNLABELLED_MESSAGE}")
        return self.errors

    @property
    def n_descriptors(self) -> int:
        return int(self.descriptors.shape[1])

    @property
    def unique_structures(self) -> np.ndarray:
        """Sorted distinct structure ids, shape (m,)."""
        return np.unique(self.structure_ids)

    @property
    def n_structures(self) -> int:
        return int(self.unique_structures.shape[0])

    @property
    def unique_species(self) -> np.ndarray:
        """Sorted distinct atomic numbers."""
        return np.unique(self.species)

    def structure_column(self, name: str) -> np.ndarray:
        """A per-structure column broadcast to sites, shape (n,)."""
        if name not in self.structure_info:
            raise KeyError(f"structure_info has no column {name!r}; available: {sorted(self.structure_info)}")
        ids = self.structure_info["structure_id"]
        pos = np.searchsorted(ids, self.structure_ids)
        return self.structure_info[name][pos]

    # -------------------------------------------------------------- select
    def select(self, mask_or_index) -> "SiteTable":
        """Sites selected by a boolean mask (n,) or an integer index array."""
        sel = np.asarray(mask_or_index)
        if sel.dtype == bool:
            if sel.shape != (len(self),):
                raise ValueError(f"mask: expected shape ({len(self)},), got {sel.shape}")
            if not sel.any():
                raise ValueError("mask: selects no sites")
        elif sel.dtype.kind in "iu":
            if sel.ndim != 1:
                raise ValueError(f"index: expected a 1-D integer array, got shape {sel.shape}")
            if sel.size == 0:
                raise ValueError("index: selects no sites")
        else:
            raise TypeError(f"mask_or_index: expected a boolean mask or integer indices, got dtype {sel.dtype}")

        def take(a):
            return None if a is None else a[sel]

        ids = self.structure_ids[sel]
        keep = np.isin(self.structure_info["structure_id"], np.unique(ids))
        info = {k: v[keep] for k, v in self.structure_info.items()}
        return SiteTable(
            structure_ids=ids,
            atom_index=self.atom_index[sel],
            species=self.species[sel],
            errors=take(self.errors),
            descriptors=self.descriptors[sel],
            forces_pred=take(self.forces_pred),
            forces_ref=take(self.forces_ref),
            committee_std=take(self.committee_std),
            structure_info=info,
            meta=dict(self.meta),
        )

    def select_structures(self, structure_ids) -> "SiteTable":
        """All sites of the given structures."""
        wanted = np.asarray(structure_ids, dtype=np.int64).ravel()
        missing = np.setdiff1d(wanted, self.unique_structures)
        if missing.size:
            raise ValueError(f"structure_ids: not in this table: {missing[:10].tolist()}")
        return self.select(np.isin(self.structure_ids, wanted))

    def split(self, test_fraction: float = 0.5, seed: int = 0) -> tuple["SiteTable", "SiteTable"]:
        """Random split **by structure** into (calibration, test).

        Every structure lands wholly on one side; at least one structure is on
        each side. ``test_fraction`` is the fraction of structures in the test part.
        """
        a, b = split_structure_ids(self.unique_structures, test_fraction, seed)
        return self.select_structures(a), self.select_structures(b)

    # ----------------------------------------------------------------- I/O
    def to_dataframe(self):
        """A pandas DataFrame, one row per site (descriptors as d_0..d_{d-1}).

        Columns: ``structure_id``, ``atom_index``, ``species``, ``error`` (eV/Å; only for a
        labelled table), force columns and ``committee_std`` when present, ``d_0``...
        """
        import pandas as pd

        cols: dict[str, Any] = {
            "structure_id": self.structure_ids,
            "atom_index": self.atom_index,
            "species": self.species,
        }
        if self.errors is not None:
            cols["error"] = self.errors
        for name, arr in (("forces_pred", self.forces_pred), ("forces_ref", self.forces_ref)):
            if arr is not None:
                for k, ax in enumerate("xyz"):
                    cols[f"{name}_{ax}"] = arr[:, k]
        if self.committee_std is not None:
            cols["committee_std"] = self.committee_std
        for j in range(self.n_descriptors):
            cols[f"d_{j}"] = self.descriptors[:, j]
        return pd.DataFrame(cols)

    def save(self, path, *, compress: bool = True) -> Path:
        """Write the table to one ``.npz`` file (no pickle), atomically. Returns the path.

        ``compress=False`` stores the members uncompressed (the store's shards: a member can then be
        memory-mapped, :func:`core.store.map_shard`); the keys and metadata are the same."""
        path = Path(path)
        arrays = {
            "structure_ids": self.structure_ids,
            "atom_index": self.atom_index,
            "species": self.species,
            "descriptors": self.descriptors,
        }
        for name in _OPTIONAL_SITE_COLUMNS:
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        for k, v in self.structure_info.items():
            arrays[_STRUCTURE_PREFIX + k] = v
        meta = {"format": "flexcal.SiteTable", "version": FORMAT_VERSION, "meta": self.meta}
        arrays["__meta__"] = np.array(json.dumps(meta))
        from core.io import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a crash never leaves half a file
            (np.savez_compressed if compress else np.savez)(fh, **arrays)
        return path

    @classmethod
    def load(cls, path, *, max_bytes: int | None = None) -> "SiteTable":
        """Read a table written by :meth:`save`; validates it like ``from_arrays``.

        The file is checked before decompression (:func:`core.safe_npz.read_npz`: a zip
        archive of plain arrays declaring at most ``max_bytes``, default 4 GiB, and no zip
        bomb); a damaged or tampered file raises ValueError starting with the path.
        """
        from core.safe_npz import DEFAULT_MAX_NPZ_BYTES, read_meta, read_npz

        path = Path(path)
        data = read_npz(path, "SiteTable", max_bytes=max_bytes or DEFAULT_MAX_NPZ_BYTES, title="SiteTable")
        meta = read_meta(data, path, "SiteTable")
        if meta.get("format") != "flexcal.SiteTable":
            raise ValueError(f"{path}: format is {meta.get('format')!r}, expected 'flexcal.SiteTable'")
        version = meta.get("version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError(f"{path}: SiteTable format version {version!r} is not an integer; damaged file")
        if version > FORMAT_VERSION:
            raise ValueError(f"{path}: SiteTable format version {version} is newer than this FlexCal "
                             f"({FORMAT_VERSION})")
        if not isinstance(meta.get("meta", {}), dict):
            raise ValueError(f"{path}: its metadata must be a JSON object, got {type(meta['meta']).__name__}")
        info = {k[len(_STRUCTURE_PREFIX):]: data.pop(k) for k in list(data) if k.startswith(_STRUCTURE_PREFIX)}
        missing = [k for k in ("structure_ids", "species", "descriptors") if k not in data]
        if missing:
            raise ValueError(f"{path}: SiteTable file lacks {missing}")
        if data["descriptors"].ndim == 2 and data["descriptors"].shape[1] == 0:
            raise ValueError(f"{path}: the table has 0 descriptor columns (shape {data['descriptors'].shape}); "
                             "damaged SiteTable file")
        try:
            return cls.from_arrays(
                descriptors=data["descriptors"], errors=data.get("errors"), species=data["species"],
                structure_ids=data["structure_ids"], atom_index=data.get("atom_index"),
                forces_pred=data.get("forces_pred"), forces_ref=data.get("forces_ref"),
                committee_std=data.get("committee_std"), structure_info=info, meta=meta.get("meta", {}),
            )
        except (TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"{path}: damaged SiteTable file: {exc}") from None


def check_sites(sites: Any, name: str = "sites") -> SiteTable:
    """``sites`` if it is a SiteTable; TypeError ``"<name>: expected a SiteTable, got <type>"`` otherwise."""
    if not isinstance(sites, SiteTable):
        raise TypeError(f"{name}: expected a SiteTable, got {type(sites).__name__}")
    return sites


def concatenate(tables: list[SiteTable]) -> SiteTable:
    """Stack tables whose structure ids are already disjoint.

    Optional columns (``errors`` included) are kept only when every table has them, so
    stacking a labelled and an unlabelled table gives an unlabelled one.
    """
    if not tables:
        raise ValueError("tables: need at least one SiteTable")
    ids = [t.unique_structures for t in tables]
    allids = np.concatenate(ids)
    if np.unique(allids).size != allids.size:
        raise ValueError("tables: structure ids overlap; renumber them before concatenating")

    def cat(name):
        vals = [getattr(t, name) for t in tables]
        if any(v is None for v in vals):
            return None
        return np.concatenate(vals)

    keys = set.intersection(*(set(t.structure_info) for t in tables))
    info = {k: np.concatenate([t.structure_info[k] for t in tables]) for k in keys}
    return SiteTable.from_arrays(
        descriptors=np.concatenate([t.descriptors for t in tables]),
        errors=cat("errors"),
        species=cat("species"),
        structure_ids=cat("structure_ids"),
        atom_index=cat("atom_index"),
        forces_pred=cat("forces_pred"),
        forces_ref=cat("forces_ref"),
        committee_std=cat("committee_std"),
        structure_info=info,
        meta=dict(tables[0].meta),
    )


def split_structure_ids(ids, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle distinct ids (seeded) and cut them into (first, second) parts.

    ``test_fraction`` in (0, 1) is the share of the second part; each part gets
    at least one id.
    """
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    if not isinstance(test_fraction, (float, int)) or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    if ids.size < 2:
        raise ValueError(f"cannot split by structure: need at least 2 structures, got {ids.size}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(ids)
    n_second = int(round(float(test_fraction) * ids.size))
    n_second = min(max(n_second, 1), ids.size - 1)
    return np.sort(perm[n_second:]), np.sort(perm[:n_second])


def _running_index(structure_ids: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal structure ids (stable order)."""
    order = np.argsort(structure_ids, kind="stable")
    sorted_ids = structure_ids[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_ids)) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, sorted_ids.size]))
    out = np.empty_like(structure_ids)
    out[order] = np.arange(sorted_ids.size) - run_start
    return out


def _build_structure_info(structure_ids: np.ndarray, given: dict[str, Any] | None) -> dict[str, np.ndarray]:
    uniq, counts = np.unique(structure_ids, return_counts=True)
    info: dict[str, np.ndarray] = {"structure_id": uniq, "n_atoms": counts.astype(np.int64)}
    if not given:
        return info
    given = {k: np.asarray(v) for k, v in given.items()}
    if "structure_id" not in given:
        raise ValueError("structure_info: needs a 'structure_id' column to align with the sites")
    gid = given["structure_id"].astype(np.int64)
    order = np.argsort(gid)
    gid = gid[order]
    missing = np.setdiff1d(uniq, gid)
    if missing.size:
        raise ValueError(f"structure_info: no row for structure ids {missing[:10].tolist()}")
    pos = np.searchsorted(gid, uniq)
    for k, v in given.items():
        if k in ("structure_id",):
            continue
        if v.shape[0] != gid.shape[0]:
            raise ValueError(f"structure_info[{k!r}]: expected {gid.shape[0]} rows, got {v.shape[0]}")
        col = v[order][pos]
        # a given n_atoms counts whole structures (the sites may be a subset of their atoms)
        info[k] = col.astype(np.int64) if k == "n_atoms" else col
    return info
