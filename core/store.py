"""SiteStore: a SiteTable too large for one process, as a folder of shards plus a JSON manifest.

Layout of a store folder::

    manifest.json                   written last and atomically: the store exists once it does
    shard-000000.npz                a SiteTable (SiteTable.load reads it: plain arrays + JSON, no
                                    pickle), members stored uncompressed so they can be mapped
    shard-000000.widths-split.npz   widths of a calibrator named "split" (predict_store)
    ...

Every shard holds whole structures, and shards are in increasing structure-id order, so the
store read shard after shard is exactly the SiteTable it was cut from. ``manifest.json``
records per shard its file, row count, structure-id range, SHA-256 of the file and a content
key (for a featurized shard: the hash of its input structures, the potential identity and the
settings, see :mod:`core.distributed`), plus the descriptor width, the potential identity and a
content hash of the whole input. Shards are read lazily: :meth:`SiteStore.iter_shards`
streams them one at a time (peak memory = one shard), :meth:`SiteStore.column` reads a single
per-site column, and :meth:`SiteStore.load` builds the whole table for small stores.

Shards are written **uncompressed** (``np.savez``): float descriptors hardly compress (the old
compressed shards saved ~20 % of the disk and cost most of the time of predicting on a store), and
an uncompressed member can be memory-mapped: :func:`map_shard` (used by :func:`predict_store`)
maps the columns a calibrator needs read-only, in place in the ``.npz``, and reads nothing else.
Stores written compressed by earlier versions stay readable (their members are decompressed).

What is verified when (tamper and damage detection):

* writing: the manifest records per shard its SHA-256, size in bytes and modification time
  (``sha256``, ``bytes``, ``mtime_ns``);
* every read of a shard (:meth:`SiteStore.read_shard`, :meth:`SiteStore.column`,
  :func:`predict_store`) first runs :func:`check_shard_file`: a size different from the
  manifest's is an error; a modification time different from the manifest's makes it re-hash the
  file once per process and refuse it if the SHA-256 differs (an unchanged file costs one
  ``stat``). Validated reads (``read_shard``/``iter_shards``/``load``) also check every member's
  zip CRC-32 and re-validate the arrays as :meth:`SiteTable.from_arrays` does; mapped reads do not;
* :meth:`SiteStore.verify` re-hashes every shard (catches a same-size edit whose modification
  time was put back). Stores from before sizes were recorded are checked by ``verify`` only.

Calibrating on a store (:func:`fit_store`) and predicting on it (:func:`predict_store`) stream
shard by shard; they live in :mod:`core.store_calibration` (re-exported here); see their
docstrings for what is exact and what is subsampled. Featurizing into a store on a Dask
cluster: :func:`core.distributed.featurize_distributed`.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from core.sites import SiteTable, concatenate

__all__ = ["SiteStore", "write_shard", "verify_shard", "write_manifest", "shard_name", "predict_store",
           "fit_store", "map_shard", "check_shard_file", "MANIFEST", "STORE_FORMAT"]

MANIFEST = "manifest.json"
STORE_FORMAT = "flexcal.SiteStore"
STORE_VERSION = 1
WIDTHS_FORMAT = "flexcal.ShardWidths"
#: per-site columns a reader may ask for (structure ids, atom index, species and structure_info are always read)
COLUMNS = ("descriptors", "errors", "forces_pred", "forces_ref", "committee_std")
#: :meth:`SiteStore.load` refuses larger stores unless given a larger ``max_sites``
DEFAULT_MAX_LOAD_SITES = 20_000_000
_INFO_PREFIX = "structure_info__"  # as core.sites writes per-structure columns
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def shard_name(index: int) -> str:
    """File name of shard ``index``: ``shard-000042.npz``."""
    return f"shard-{int(index):06d}.npz"


# ------------------------------------------------------------------ writing
def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` (core.io: a crash never leaves half a file)."""
    from core.io import atomic_path

    with atomic_path(path, suffix=".tmp.npz") as tmp:
        write(tmp)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _table_info(table: SiteTable, path: Path, content_key: str) -> dict:
    st = path.stat()
    return {
        "file": path.name,
        "n_sites": len(table),
        "n_structures": table.n_structures,
        "structure_id_min": int(table.structure_ids.min()),
        "structure_id_max": int(table.structure_ids.max()),
        "n_descriptors": table.n_descriptors,
        "labelled": table.labelled,
        "columns": [c for c in COLUMNS if getattr(table, c) is not None],
        "content_key": content_key,
        "sha256": _sha256_file(path),
        "bytes": int(st.st_size),
        "mtime_ns": int(st.st_mtime_ns),
        "potential_identity": table.meta.get("potential_identity"),
    }


def write_shard(table: SiteTable, path, content_key: str | None = None) -> dict:
    """Write ``table`` atomically as one shard (an uncompressed SiteTable .npz); returns its manifest entry.

    ``content_key`` (default: a SHA-256 of the table's arrays) is stored in the shard's meta
    under ``meta["shard"]["content_key"]`` so a later run can recognise a finished shard.
    """
    from dataclasses import replace

    if not isinstance(table, SiteTable):
        raise TypeError(f"table: expected a SiteTable, got {type(table).__name__}")
    path = Path(path)
    key = content_key or _table_digest(table)
    meta = dict(table.meta)
    meta["shard"] = {"content_key": key}
    shard = replace(table, meta=meta)
    shard.save(path, compress=False)  # atomic, like every SiteTable.save
    return _table_info(table, path, key)


def _table_digest(table: SiteTable) -> str:
    h = hashlib.sha256(b"flexcal-shard-v1")
    for name in ("structure_ids", "atom_index", "species", *COLUMNS):
        arr = getattr(table, name)
        h.update(name.encode() + (b"-" if arr is None else str(arr.shape).encode() + str(arr.dtype).encode()))
        if arr is not None:
            h.update(np.ascontiguousarray(arr).tobytes())
    for k in sorted(table.structure_info):
        h.update(k.encode() + np.ascontiguousarray(table.structure_info[k]).tobytes())
    return h.hexdigest()


def verify_shard(path, content_key: str, n_sites: int | None = None) -> dict | None:
    """The manifest entry of an existing shard if it is complete and was written for ``content_key``.

    Checks: a readable .npz (a truncated zip fails here), the content key in its meta, the
    row count (``n_sites``, when given). Returns None when any check fails or the file is absent.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        table = SiteTable.load(path)
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if (table.meta.get("shard") or {}).get("content_key") != content_key:
        return None
    if n_sites is not None and len(table) != int(n_sites):
        return None
    return _table_info(table, path, content_key)


def write_manifest(folder, shards: list[dict], *, meta: dict, content_hash: str | None = None) -> Path:
    """Check the shard entries (disjoint, increasing structure ids; one descriptor width) and
    write ``folder/manifest.json`` atomically. Returns its path."""
    folder = Path(folder)
    if not shards:
        raise ValueError("shards: a store needs at least one shard")
    widths = {s["n_descriptors"] for s in shards}
    if len(widths) != 1:
        raise ValueError(f"shards: descriptor widths differ between shards: {sorted(widths)}")
    for a, b in zip(shards[:-1], shards[1:]):
        if b["structure_id_min"] <= a["structure_id_max"]:
            raise ValueError(
                f"shards: structure ids must increase from shard to shard (a structure lives in one shard); "
                f"{a['file']} ends at {a['structure_id_max']}, {b['file']} starts at {b['structure_id_min']}")
    identities = {s.get("potential_identity") for s in shards}
    columns = [c for c in COLUMNS if all(c in s["columns"] for s in shards)]
    manifest = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "n_sites": int(sum(s["n_sites"] for s in shards)),
        "n_structures": int(sum(s["n_structures"] for s in shards)),
        "n_descriptors": widths.pop(),
        "labelled": all(s["labelled"] for s in shards),
        "columns": columns,
        "potential_identity": identities.pop() if len(identities) == 1 else None,
        "content_hash": content_hash or hashlib.sha256("".join(s["content_key"] for s in shards).encode()).hexdigest(),
        "meta": meta,
        "shards": shards,
    }
    text = json.dumps(manifest, indent=1, allow_nan=True)
    path = folder / MANIFEST
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


# ------------------------------------------------------------------ reading
_HASHED: dict = {}  # path -> (size, mtime_ns) whose SHA-256 this process found equal to the manifest's


def check_shard_file(path, entry: dict) -> None:
    """Cheap integrity check of one shard file against its manifest ``entry`` (see the module docstring).

    Size differs from ``entry["bytes"]`` -> ValueError; modification time differs from
    ``entry["mtime_ns"]`` -> the file is re-hashed (once per process and file state) and a SHA-256
    other than ``entry["sha256"]`` is a ValueError naming the file. Entries without ``bytes``
    (stores written before they were recorded) are not checked here (:meth:`SiteStore.verify` is).
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: shard file missing") from None
    if entry.get("bytes") is None:
        return
    changed = f"{path.parent}: shard(s) changed since the manifest was written: ['{path.name}']"
    if st.st_size != int(entry["bytes"]):
        raise ValueError(f"{changed} ({st.st_size} bytes, the manifest says {entry['bytes']})")
    state = (st.st_size, st.st_mtime_ns)
    if st.st_mtime_ns == entry.get("mtime_ns") or _HASHED.get(str(path)) == state:
        return
    if _sha256_file(path) != entry["sha256"]:
        raise ValueError(f"{changed} (modified since it was written and its SHA-256 differs)")
    _HASHED[str(path)] = state


def _read_shard(path: Path, columns) -> SiteTable:
    """One shard with only the requested optional columns (descriptors omitted -> shape (n, 0))."""
    if columns is None:
        return SiteTable.load(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            data = {k: z[k] for k in ("structure_ids", "atom_index", "species", *columns) if k in names}
            info = {k[len(_INFO_PREFIX):]: z[k] for k in names if k.startswith(_INFO_PREFIX)}
            meta = json.loads(str(z["__meta__"])).get("meta", {})
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: shard file missing") from None
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable shard ({type(exc).__name__}: {exc})") from None
    n = data["species"].shape[0]
    desc = data.pop("descriptors", None)
    return SiteTable.from_arrays(
        descriptors=desc if desc is not None else np.empty((n, 0), dtype=np.float32),
        errors=data.pop("errors", None), structure_info=info, meta=meta, **data)


def _check_columns(columns) -> tuple[str, ...] | None:
    if columns is None:
        return None
    cols = (columns,) if isinstance(columns, str) else tuple(columns)
    bad = [c for c in cols if c not in COLUMNS]
    if bad:
        raise ValueError(f"columns: unknown column(s) {bad}; choose from {list(COLUMNS)} (or None for all)")
    return cols


class SiteStore:
    """A sharded SiteTable on disk (see the module docstring for the layout).

    Parameters
    ----------
    path : str or Path
        The store folder (it holds ``manifest.json``).

    Attributes
    ----------
    path : Path
    manifest : dict
        The parsed ``manifest.json``.
    n_sites, n_structures, n_descriptors, n_shards : int
    labelled : bool
        All shards carry reference errors.
    meta : dict
        The table metadata (potential, potential_identity, source, ...), as a SiteTable's ``meta``.
    run_info : dict
        Set by :func:`core.distributed.featurize_distributed`: ``computed`` and ``reused`` chunk indices.
    """

    def __init__(self, path):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise FileNotFoundError(f"{self.path}: not a site store (no {MANIFEST}); an interrupted run leaves "
                                    "shards without a manifest: rerun it to finish")
        try:
            manifest = json.loads(mpath.read_text())
        except ValueError as exc:
            raise ValueError(f"{mpath}: not valid JSON ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
            raise ValueError(f"{mpath}: format is {manifest.get('format') if isinstance(manifest, dict) else None!r}, "
                             f"expected {STORE_FORMAT!r}")
        if not isinstance(manifest.get("version"), int) or manifest["version"] > STORE_VERSION:
            raise ValueError(f"{mpath}: store version {manifest.get('version')!r} is newer than this FlexCal "
                             f"({STORE_VERSION})")
        missing = [s["file"] for s in manifest["shards"] if not (self.path / s["file"]).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.path}: shard file(s) listed in the manifest are missing: {missing[:5]}")
        self.manifest = manifest
        self.run_info: dict = {}

    # ------------------------------------------------------------ inspect
    n_sites = property(lambda self: int(self.manifest["n_sites"]))
    n_structures = property(lambda self: int(self.manifest["n_structures"]))
    n_descriptors = property(lambda self: int(self.manifest["n_descriptors"]))
    labelled = property(lambda self: bool(self.manifest["labelled"]))
    meta = property(lambda self: dict(self.manifest.get("meta") or {}))
    n_shards = property(lambda self: len(self.manifest["shards"]))

    @property
    def shard_paths(self) -> list[Path]:
        return [self.path / s["file"] for s in self.manifest["shards"]]

    def __len__(self) -> int:
        return self.n_sites

    def __repr__(self) -> str:
        return (f"SiteStore({str(self.path)!r}, n_sites={self.n_sites}, n_structures={self.n_structures}, "
                f"n_descriptors={self.n_descriptors}, n_shards={self.n_shards}"
                f"{'' if self.labelled else ', unlabelled'})")

    # --------------------------------------------------------------- read
    def read_shard(self, index: int, columns=None) -> SiteTable:
        """Shard ``index`` as a SiteTable; ``columns``: subset of :data:`COLUMNS` to read (None: all)."""
        if not 0 <= int(index) < self.n_shards:
            raise IndexError(f"index: shard {index} out of range (store has {self.n_shards})")
        check_shard_file(self.shard_paths[int(index)], self.manifest["shards"][int(index)])
        table = _read_shard(self.shard_paths[int(index)], _check_columns(columns))
        meta = self.meta
        meta["shard"] = table.meta.get("shard")
        from dataclasses import replace

        return replace(table, meta=meta)

    def iter_shards(self, columns=None) -> Iterator[SiteTable]:
        """Yield the shards in order, one SiteTable at a time (peak memory: one shard).

        ``columns``: optional columns to read (:data:`COLUMNS`); structure ids, atom index,
        species and structure_info are always read; without "descriptors" they are shape (n, 0).
        """
        cols = _check_columns(columns)
        for i in range(self.n_shards):
            yield self.read_shard(i, cols)

    def column(self, name: str) -> np.ndarray:
        """One per-site column of the whole store, concatenated (n,) (or (n, 3) for forces).

        ``name``: "structure_ids", "atom_index", "species", "errors", "committee_std",
        "forces_pred" or "forces_ref". Reads only that array of every shard.
        """
        allowed = ("structure_ids", "atom_index", "species", "errors", "committee_std", "forces_pred", "forces_ref")
        if name not in allowed:
            raise ValueError(f"name: expected one of {list(allowed)}, got {name!r}")
        parts = []
        for p, entry in zip(self.shard_paths, self.manifest["shards"]):
            check_shard_file(p, entry)
            with np.load(p, allow_pickle=False) as z:
                if name not in z.files:
                    raise ValueError(f"{p}: shard has no column {name!r}")
                parts.append(z[name])
        return np.concatenate(parts)

    def load(self, columns=None, *, max_sites: int = DEFAULT_MAX_LOAD_SITES) -> SiteTable:
        """The whole store as one SiteTable (for small stores; refuses more than ``max_sites`` sites)."""
        if self.n_sites > max_sites:
            raise ValueError(f"max_sites: the store has {self.n_sites} sites, more than max_sites={max_sites}; "
                             "stream it with iter_shards() (or pass a larger max_sites)")
        from dataclasses import replace

        tables = list(self.iter_shards(columns))
        table = tables[0] if len(tables) == 1 else concatenate(tables)
        return replace(table, meta=self.meta)

    def verify(self) -> None:
        """Re-hash every shard file and compare with the manifest's SHA-256; ValueError listing the bad ones.

        The full check (reads every byte); each read already runs the cheap :func:`check_shard_file`."""
        bad = [s["file"] for s in self.manifest["shards"] if _sha256_file(self.path / s["file"]) != s["sha256"]]
        if bad:
            raise ValueError(f"{self.path}: shard(s) changed since the manifest was written: {bad[:10]}")

    # ------------------------------------------------------------- widths
    def widths_path(self, index: int, name: str) -> Path:
        """Where :func:`predict_store` writes the widths of calibrator ``name`` for shard ``index``."""
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"name: expected 1-64 characters of letters, digits, '_', '.', '-', got {name!r}")
        return self.shard_paths[int(index)].with_suffix(f".widths-{name}.npz")

    def iter_widths(self, name: str) -> Iterator[np.ndarray]:
        """Widths (n_shard,) or (n_shard, k) eV/Å of calibrator ``name``, shard by shard."""
        for i, s in enumerate(self.manifest["shards"]):
            path = self.widths_path(i, name)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no widths for {name!r}; run predict_store(calibrator, store) first")
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["__meta__"]))
                if meta.get("shard_sha256") != s["sha256"]:
                    raise ValueError(f"{path}: widths were computed for another version of {s['file']}; predict again")
                yield z["widths"]

    def widths(self, name: str) -> np.ndarray:
        """All widths of calibrator ``name`` in store order, (n_sites,) or (n_sites, k), eV/Å."""
        return np.concatenate(list(self.iter_widths(name)))

    # ------------------------------------------------------------ create
    @classmethod
    def from_tables(cls, tables: Iterable[SiteTable], path, *, meta: dict | None = None) -> "SiteStore":
        """Write SiteTables (an iterable, consumed one at a time) as the shards of a new store.

        Each table becomes one shard; structure ids must increase from table to table. ``meta``
        defaults to the first table's meta. Returns the opened store.
        """
        folder = Path(path)
        if (folder / MANIFEST).exists():
            raise FileExistsError(f"{folder}: already holds a store ({MANIFEST}); choose another folder")
        infos, first_meta = [], None
        for i, table in enumerate(tables):
            if first_meta is None:
                first_meta = dict(getattr(table, "meta", {}) or {})
            infos.append(write_shard(table, folder / shard_name(i)))
        write_manifest(folder, infos, meta=meta if meta is not None else first_meta or {})
        return cls(folder)

    @classmethod
    def from_table(cls, table: SiteTable, path, *, sites_per_shard: int = 1_000_000) -> "SiteStore":
        """Cut one SiteTable (sorted by structure id) into shards of about ``sites_per_shard`` sites."""
        from core.validation import check_int

        sites_per_shard = check_int("sites_per_shard", sites_per_shard, 1)
        sid = table.structure_ids
        if np.any(np.diff(sid) < 0):
            raise ValueError("table: structure_ids must be sorted (non-decreasing), as featurize writes them")
        starts = np.r_[0, np.flatnonzero(np.diff(sid)) + 1]  # first site of each structure
        cuts = [0]
        for s in starts[1:]:
            if s - cuts[-1] >= sites_per_shard:
                cuts.append(int(s))
        cuts.append(len(table))
        parts = (table.select(np.arange(a, b)) for a, b in zip(cuts[:-1], cuts[1:]))
        return cls.from_tables(parts, path, meta=dict(table.meta))


# calibrating on a store and predicting shard by shard (re-exported here)
from core.store_calibration import fit_store, map_shard, predict_store  # noqa: E402
