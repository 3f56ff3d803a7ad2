"""Calibrators on a SiteStore: :func:`fit_store` and :func:`predict_store` (both stream shards).

Re-exported by :mod:`core.store`; see there for the store layout. :func:`map_shard` is the cheap
reader :func:`predict_store` uses: it memory-maps only the columns the calibrator needs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import zipfile
from pathlib import Path

import numpy as np

from core.sites import SiteTable, concatenate
from core.store import _INFO_PREFIX, WIDTHS_FORMAT, SiteStore, _atomic_write, check_shard_file

__all__ = ["fit_store", "predict_store", "map_shard", "DEFAULT_MAX_TRAIN_SITES"]

#: sites q_θ is trained on by :func:`fit_store` (a seeded uniform subsample above this)
DEFAULT_MAX_TRAIN_SITES = 200_000
# heuristic -> the optional columns its score needs (others: all columns)
_HEURISTIC_COLUMNS = {"constant": ("errors",), "force": ("errors", "forces_pred"),
                      "committee": ("errors", "committee_std")}
_HOLDOUT_BLOCK = 8192  # rows per q_θ evaluation of the holdout (FlexibleQuantile's inference block)
_CALIBRATORS: dict = {}  # per worker process: calibrator state digest -> Calibrator
# what any calibrator's predict may read (descriptors: knn/gmm/q_θ; forces: force CP; spread: committee CP)
_PREDICT_COLUMNS = ("descriptors", "forces_pred", "committee_std")
# ... and what a split-conformal calibrator reads, by heuristic (species, structure ids: always)
_HEURISTIC_PREDICT_COLUMNS = {"constant": (), "force": ("forces_pred",), "committee": ("committee_std",),
                              "knn": ("descriptors",), "gmm": ("descriptors",)}


def predict_columns(calibrator) -> tuple[str, ...]:
    """The optional columns ``calibrator.predict`` reads: q_θ and knn/gmm CP the descriptors, force CP
    the predicted forces, committee CP the spread, split CP none; any other calibrator all three."""
    from core.calibration import FlexibleQuantile, SplitConformal

    if type(calibrator) is FlexibleQuantile:
        return ("descriptors",)
    if type(calibrator) is SplitConformal and getattr(calibrator, "heuristic_", None) is not None:
        return _HEURISTIC_PREDICT_COLUMNS.get(calibrator.heuristic_.name, _PREDICT_COLUMNS)
    return _PREDICT_COLUMNS


def _as_store(store) -> SiteStore:
    if isinstance(store, SiteStore):
        return store
    if isinstance(store, (str, os.PathLike)):
        return SiteStore(store)
    raise TypeError(f"store: expected a SiteStore or the path of a store folder, got {type(store).__name__}")


def fit_store(method: str, store, *, confidence: float = 0.9, seed: int = 0, reference: SiteTable | None = None,
              max_train_sites: int = DEFAULT_MAX_TRAIN_SITES, callback=None, **options):
    """Fit a calibrator on a SiteStore without loading it whole.

    Split-conformal methods (``split``, ``mondrian``, ``force``, ``committee``; ``knn``/``gmm``
    with ``reference``) stream the shards and keep one score e/u and one species per
    calibration site (16 bytes/site): the result is **identical** to ``make_calibrator(method,
    ...).fit(store.load(), reference=reference)``. knn/gmm need ``reference`` (the heuristic is
    fitted on it); fitting them on the store itself would need all its descriptors in memory.

    ``flexible`` (q_θ, uniform weights only) -- a bound, stated honestly:

    * the structures are split exactly as ``FlexibleQuantile.fit`` splits them (conformal
      holdout: ``holdout_fraction`` of the structures, seeded by ``seed``);
    * q_θ is trained (with its by-structure validation split) on the training-part sites when
      there are at most ``max_train_sites`` of them -- then the whole fit equals the in-memory
      one -- and otherwise on a uniform random subsample of exactly ``max_train_sites`` of them
      (seeded by ``seed``). The subsample changes how sharp q_θ is, never the guarantee;
    * the conformal factors ĉ_τ are computed **exactly** from every site of every holdout
      structure, streamed shard by shard, so the finite-sample marginal coverage guarantee
      P(e <= w) >= confidence holds as for the in-memory fit. The holdout scores are kept
      (n_holdout x K float64, 168 bytes/site with the default 21 levels), as a fitted
      FlexibleQuantile keeps them.

    Parameters
    ----------
    method : str
        A method name (``core.calibration.METHODS``).
    store : SiteStore or path
        Labelled sites.
    confidence : float, default 0.9
    seed : int, default 0
    reference : SiteTable, optional
        Sites the knn/gmm heuristic is fitted on.
    max_train_sites : int, default 200_000
        Sites q_θ trains on at most (``flexible`` only).
    callback : callable(epoch, train_loss, val_loss), optional
        Passed to q_θ's training.
    **options
        Calibrator options, as for :func:`core.calibration.make_calibrator`.

    Returns
    -------
    Calibrator
        Fitted. ``store_fit_`` (dict) records the site counts used.
    """
    from core.calibration import FlexibleQuantile, SplitConformal, make_calibrator
    from core.sites import UNLABELLED_MESSAGE
    from core.validation import check_int

    store = _as_store(store)
    if not store.labelled:
        raise ValueError(f"store: {UNLABELLED_MESSAGE}")
    max_train_sites = check_int("max_train_sites", max_train_sites, 1)
    cal = make_calibrator(method, confidence=confidence, seed=seed, **options)
    if isinstance(cal, SplitConformal):
        return _fit_split(cal, store, reference)
    if type(cal) is FlexibleQuantile:
        return _fit_flexible(cal, store, max_train_sites, callback)
    raise ValueError(f"method: fit_store supports the split-conformal methods and 'flexible', got {method!r}; "
                     "for others load a small store with store.load() and call fit()")


def _fit_split(cal, store: SiteStore, reference):
    from core.calibration.base import nest_arrays

    h = cal.heuristic.clone()
    if h.needs_fit:
        if reference is None:
            raise ValueError(f"reference: the {h.name!r} heuristic must be fitted on reference sites (e.g. the "
                             "potential's training set) to stream a store; pass reference=, or load a small store")
        h.fit(reference)
    scores, species = [], []
    for table in store.iter_shards(_HEURISTIC_COLUMNS.get(h.name)):
        scores.append(table.errors / h.score(table))  # the same arithmetic as SplitConformal.fit
        species.append(table.species.astype(np.int16))
    h_meta, h_arrays = h.get_state()
    meta = {"kind": cal.kind, "name": cal.name, "params": cal.get_params(), "state": {"heuristic": h_meta},
            "update": {"n_sites": 0, "n_structures": 0}}
    arrays = {"scores": np.concatenate(scores), "species": np.concatenate(species).astype(np.int64),
              **nest_arrays("heuristic", h_arrays)}
    out = type(cal).from_state(meta, arrays)
    out.store_fit_ = {"n_calibration_sites": int(arrays["scores"].size)}
    return out


def _fit_flexible(cal, store: SiteStore, max_train_sites: int, callback):
    from core.calibration import FlexibleQuantile, conformal_quantile
    from core.sites import split_structure_ids

    params = cal.get_params()
    if params["weights"] != "uniform":
        raise ValueError(f"weights: fit_store trains q_θ with weights='uniform' only, got {params['weights']!r}; "
                         "load a small store with store.load() for other weight schemes")
    uniq = [np.unique(z, return_counts=True) for z in (_shard_array(p, "structure_ids") for p in store.shard_paths)]
    ids, counts = np.concatenate([u[0] for u in uniq]), np.concatenate([u[1] for u in uniq])
    hold_ids = np.array([], dtype=np.int64)
    train_ids = ids
    if cal.conformal:  # the same by-structure split as FlexibleQuantile.fit
        train_ids, hold_ids = split_structure_ids(ids, cal.holdout_fraction, cal.seed)
    n_train = int(counts[np.isin(ids, train_ids)].sum())
    chosen = None
    if n_train > max_train_sites:
        rng = np.random.default_rng((cal.seed, 0x5173))
        chosen = np.sort(rng.choice(n_train, size=max_train_sites, replace=False))
    parts, seen = [], 0
    for table in store.iter_shards(("descriptors", "errors")):
        rows = np.flatnonzero(np.isin(table.structure_ids, train_ids))
        if chosen is not None:
            pick = chosen[(chosen >= seen) & (chosen < seen + rows.size)] - seen
            seen += rows.size
            rows = rows[pick]
        if rows.size:
            parts.append(table.select(rows))
    sub = parts[0] if len(parts) == 1 else concatenate(parts)
    q = FlexibleQuantile(**{**params, "conformal": False}).fit(sub, callback=callback)
    info = {"n_train_sites": n_train, "n_train_used": len(sub), "n_holdout_sites": 0,
            "max_train_sites": max_train_sites}
    if not cal.conformal:
        q.store_fit_ = info
        return q
    scores = _holdout_ratios(q, store, hold_ids, int(counts[np.isin(ids, hold_ids)].sum()))
    meta, arrays = q.get_state()
    meta["params"] = params
    arrays.update(holdout_scores=scores, holdout_weights=np.ones(scores.shape[0]),
                  corrections=np.array([conformal_quantile(scores[:, k], float(p)) for k, p in enumerate(q.levels_)]))
    out = FlexibleQuantile.from_state(meta, arrays)
    out.fit_seconds_ = q.fit_seconds_
    out.store_fit_ = {**info, "n_holdout_sites": int(scores.shape[0])}
    return out


def _holdout_ratios(q, store: SiteStore, hold_ids: np.ndarray, n_holdout: int) -> np.ndarray:
    """e / q_θ,τ (n_holdout, K) of every holdout site, streamed into one preallocated array; q_θ runs
    on blocks of ``_HOLDOUT_BLOCK`` consecutive holdout sites whatever the shard boundaries (float32
    matrix products can round differently for other block shapes), as FlexibleQuantile.fit does."""
    out = np.empty((n_holdout, q.levels_.size))
    done, carry = 0, None  # carry: holdout rows not evaluated yet (less than one block)

    def run(x, z, e):
        nonlocal done
        block = SiteTable.from_arrays(descriptors=x, errors=e, species=z, structure_ids=np.zeros(z.size, np.int64))
        out[done:done + z.size] = e[:, None] / q.predict_levels(block, q.levels_)  # conformal=False: raw q_θ
        done += z.size

    for table in store.iter_shards(("descriptors", "errors")):
        rows = np.flatnonzero(np.isin(table.structure_ids, hold_ids))
        if not rows.size:
            continue
        parts = (table.descriptors[rows], table.species[rows], table.errors[rows])
        x, z, e = parts if carry is None else tuple(np.concatenate(c) for c in zip(carry, parts))
        full = z.size - z.size % _HOLDOUT_BLOCK
        for a in range(0, full, _HOLDOUT_BLOCK):
            run(x[a:a + _HOLDOUT_BLOCK], z[a:a + _HOLDOUT_BLOCK], e[a:a + _HOLDOUT_BLOCK])
        carry = (x[full:], z[full:], e[full:])
    if carry is not None and carry[1].size:
        run(*carry)
    return out


def _member(path: Path, zf: zipfile.ZipFile, name: str) -> np.ndarray:
    """Array ``name`` of an open .npz: memory-mapped read-only if stored uncompressed, else read."""
    info = zf.getinfo(name + ".npy")
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            head = fh.read(30)  # the zip local file header; the data follow its name and extra field
            if len(head) < 30 or head[:4] != b"PK\x03\x04":
                raise ValueError(f"member {name!r}: bad zip local header")
            start = info.header_offset + 30 + sum(struct.unpack("<HH", head[26:30]))
            fh.seek(start)
            version = np.lib.format.read_magic(fh)
            if version in ((1, 0), (2, 0)):
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(fh)
                offset = fh.tell()
                nbytes = dtype.itemsize * math.prod(shape)
                if dtype.hasobject or offset - start + nbytes != info.file_size:
                    raise ValueError(f"member {name!r}: header does not match its {info.file_size} bytes")
                if nbytes == 0:
                    return np.empty(shape, dtype)
                return np.asarray(np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                                            order="F" if fortran else "C"))
    with zf.open(info) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def map_shard(path, columns=("descriptors",)) -> SiteTable:
    """One shard for predicting: its site columns memory-mapped read-only where stored uncompressed.

    Reads ``structure_ids``, ``atom_index``, ``species``, the optional ``columns`` present (subset
    of :data:`COLUMNS`; descriptors absent -> shape (n, 0)), structure_info and meta. The arrays
    are **not** re-validated (they were when the shard was written; run :func:`check_shard_file`
    first): that is what makes it cheap. ValueError starting with the path for a damaged file.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
            data = {k: _member(path, zf, k) for k in ("structure_ids", "atom_index", "species", *columns)
                    if k in names}
            info = {k[len(_INFO_PREFIX):]: _member(path, zf, k) for k in names if k.startswith(_INFO_PREFIX)}
            meta = json.loads(str(_member(path, zf, "__meta__"))).get("meta", {})
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: shard file missing") from None
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, struct.error) as exc:
        raise ValueError(f"{path}: not a readable shard ({type(exc).__name__}: {exc})") from None
    n = data["species"].shape[0] if "species" in data else -1
    bad = [k for k, v in data.items() if v.shape[:1] != (n,)]
    bad += [k for k in ("structure_ids", "species") if k not in data]
    if bad or ("descriptors" in data and data["descriptors"].ndim != 2):
        raise ValueError(f"{path}: not a readable shard (columns {bad or ['descriptors']} do not match {n} sites)")
    return SiteTable(structure_ids=data["structure_ids"], atom_index=data.get("atom_index", np.zeros(n, np.int64)),
                     species=data["species"], errors=data.get("errors"),
                     descriptors=data.get("descriptors", np.empty((n, 0), dtype=np.float32)),
                     forces_pred=data.get("forces_pred"), forces_ref=data.get("forces_ref"),
                     committee_std=data.get("committee_std"), structure_info=info, meta=meta)


def _shard_array(path: Path, name: str) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        return z[name]


def predict_store(calibrator, store, client=None, *, name: str | None = None, levels=None,
                  overwrite: bool = False, progress=None) -> list[Path]:
    """Predict widths shard by shard and write them next to each shard (atomic .npz, no pickle).

    ``shard-000007.widths-<name>.npz`` (uncompressed) holds ``widths`` ((n,) at the calibrator's
    confidence, or (n, k) at ``levels``), eV/Å, float64 exactly as ``calibrator.predict`` returns
    them (float32 would save 4 of ~300 bytes moved per site and round the conformal widths), with
    ``structure_ids`` and ``atom_index``; read them back with :meth:`SiteStore.widths`. Each shard is first checked
    with :func:`core.store.check_shard_file` (size, modification time, SHA-256 when that changed),
    then only the columns the calibrator needs (:func:`predict_columns`) are memory-mapped
    (:func:`map_shard`). With a Dask ``client`` every shard is one task (the calibrator
    state is broadcast once; each worker rebuilds the calibrator once); without, shards run here
    one after another (peak memory: one shard). Widths already written by the same calibrator for
    the same shard file are kept unless ``overwrite``. Returns the widths paths in shard order.
    """
    from core.calibration.base import Calibrator
    from core.progress import as_progress
    from core.validation import check_bool, check_levels

    if not isinstance(calibrator, Calibrator):
        raise TypeError(f"calibrator: expected a fitted Calibrator, got {type(calibrator).__name__}")
    store = _as_store(store)
    name = calibrator.name if name is None else name
    paths = [store.widths_path(i, name) for i in range(store.n_shards)]
    levels = None if levels is None else [float(x) for x in check_levels(levels)]
    overwrite = check_bool("overwrite", overwrite)
    report = as_progress(progress, "predict")
    state = calibrator.get_state()
    digest = _state_digest(state, levels)
    cols = predict_columns(calibrator)
    jobs = [(str(p), {k: s.get(k) for k in ("sha256", "bytes", "mtime_ns")}, str(w), cols)
            for p, s, w in zip(store.shard_paths, store.manifest["shards"], paths)]
    if client is None:
        _CALIBRATORS.clear()
        _CALIBRATORS[digest] = calibrator  # this process predicts with the calibrator itself
        try:
            for i, job in enumerate(jobs):
                _predict_shard(*job, state, digest, levels, overwrite)
                if report:
                    report(i + 1, len(jobs))
        finally:
            _CALIBRATORS.clear()
        return paths
    from distributed import as_completed

    shared = client.scatter(state, broadcast=True, hash=False)
    futures = [client.submit(_predict_shard, *job, shared, digest, levels, overwrite, retries=2,
                             key=f"flexcal-predict-{i:06d}-{digest[:12]}") for i, job in enumerate(jobs)]
    for done, fut in enumerate(as_completed(futures, loop=client.loop), start=1):
        fut.result()
        if report:
            report(done, len(jobs))
    return paths


def _state_digest(state, levels) -> str:
    meta, arrays = state
    h = hashlib.sha256(json.dumps([meta, levels], sort_keys=True, default=str).encode())
    for k in sorted(arrays):
        h.update(k.encode() + np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()


def _predict_shard(shard_path: str, entry: dict, out_path: str, columns, state, digest: str, levels,
                   overwrite: bool) -> str:
    """Widths of one shard -> ``out_path`` (skipped when already written by this calibrator).
    ``entry``: the shard's manifest ``sha256``, ``bytes``, ``mtime_ns``; ``columns``: those to map."""
    out, shard_sha = Path(out_path), entry["sha256"]
    if not overwrite and out.is_file():
        try:
            with np.load(out, allow_pickle=False) as z:
                old = json.loads(str(z["__meta__"]))
            if old.get("calibrator_digest") == digest and old.get("shard_sha256") == shard_sha:
                return out_path
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile):
            pass
    from core.distributed import tune_worker

    tune_worker()  # on a Dask worker: torch threads, glibc memory reuse; nothing elsewhere
    cal = _CALIBRATORS.get(digest)
    if cal is None:
        from core.calibration.base import calibrator_from_state

        cal = calibrator_from_state(*state)
        _CALIBRATORS.clear()  # one calibrator per worker process at a time
        _CALIBRATORS[digest] = cal
    check_shard_file(shard_path, entry)
    table = map_shard(shard_path, columns)  # reference forces and errors are not needed
    widths = cal.predict(table) if levels is None else cal.predict_levels(table, levels)
    meta = {"format": WIDTHS_FORMAT, "version": 1, "calibrator": cal.name, "label": cal.label,
            "confidence": cal.confidence, "levels": levels, "calibrator_digest": digest,
            "shard_sha256": shard_sha, "n_sites": len(table), "units": "eV/Å"}
    arrays = {"widths": widths, "structure_ids": table.structure_ids, "atom_index": table.atom_index,
              "__meta__": np.array(json.dumps(meta))}
    _atomic_write(out, lambda tmp: np.savez(tmp, **arrays))
    return out_path
