"""Run a potential over a dataset: one row per atom (a SiteTable).

``featurize`` batches structures through ``potential.compute`` (one forward pass
per batch gives energies, forces and descriptors), writes the results into
arrays preallocated from the total atom count, and optionally caches the table
on disk.

Memory: the output is allocated once -- forces (N, 3) float64 twice, errors (N,)
and descriptors (N, d). Descriptors are stored as float32 by default
(``descriptor_dtype``): they feed distance/density heuristics and a small MLP,
for which float32 is ample, and it halves the largest array (10^6 sites x 256
descriptors = 1.0 GB in float32). Pass ``descriptor_dtype="float64"`` to keep
the model's precision. Only one batch of model intermediates lives at a time (N batches with
``threads=N``).

Cache: with ``cache_dir`` the table is saved as
``featurize-<key>.npz`` where the key is the SHA-256 of the data content
(positions, atomic numbers, cell, pbc, reference forces/energies, config types,
dataset indices), ``potential.identity`` (weights + dtype + head) and the
settings that change the output (labelled, descriptor_dtype). The batch size is
not part of the key: it changes results only at rounding level. A cache entry
that cannot be read (truncated, garbled, or written for another key) is
recomputed and overwritten, with a warning.

One computation per key across threads and processes (e.g. the app's warm-up process and its
server): :func:`core.key_lock.one_at_a_time`; a waiter's progress callback shows the holder's
progress, and with the key it re-reads the cache (a hit: no forward pass; a holder that died
without an entry: it computes, its progress restarting from 0). :func:`cached` reads an entry
without computing or waiting (nothing beyond numpy is imported: a deferred potential stays unloaded).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from core.batching import batch_outputs, plan_batches
from core.key_lock import one_at_a_time
from core.sites import SiteTable
from core.validation import check_int

CACHE_VERSION = 1
_DESCRIPTOR_DTYPES = ("float32", "float64")


def featurize(
    structures,
    potential,
    batch_size: int = 16,
    progress: bool | Callable[[int, int], object] | None = None,
    cache_dir=None,
    labelled: bool = True,
    *,
    descriptor_dtype: str = "float32",
    max_batch_atoms: int = 4096,
    threads: int = 1,
) -> SiteTable:
    """Per-site forces, errors and descriptors of ``structures`` under ``potential``.

    Parameters
    ----------
    structures : core.data.Dataset or list of ase.Atoms
        With ``labelled=True`` every structure needs ``atoms.arrays["REF_forces"]``
        ((n_atoms, 3), eV/Å); ``atoms.info["REF_energy"]`` (eV) is optional.
    potential : Potential
        E.g. ``core.potentials.load_potential(...)``.
    batch_size : int, default 16
        Structures per forward pass.
    progress : None, True or callable(done, total)
        True: a tqdm bar. A callable is called after every batch with the number
        of structures done so far and the total (monotone, ending at total).
        While another call computes the same cache entry, called every 0.1 s with
        its count; if that one died without an entry, this call computes and
        reports 0 once first (the only decrease; ``_Reporter.restart``).
    cache_dir : path, optional
        Directory of the on-disk cache (see the module docstring).
    labelled : bool, default True
        False for unlabelled (target-domain) data: ``forces_ref`` and ``errors``
        are None (``sites.labelled`` and ``meta["labelled"]`` are False), so metrics
        and calibrator fits refuse the table instead of reading fake zero errors.
    descriptor_dtype : {"float32", "float64"}, default "float32"
    max_batch_atoms : int, default 4096
        A batch is also cut when it would exceed this many atoms (a larger
        single structure gets a batch of its own).
    threads : int, default 1
        Batches computed at once, each on a Python thread of its own (torch's intra-op thread
        count stays the process's; ``core.batching``): for a potential that declares
        ``concurrent_compute`` (MACE), otherwise one at a time. The numbers are the same bit for
        bit; ``threads`` batches of model intermediates live at once.

    Returns
    -------
    SiteTable
        ``structure_ids`` are positions in ``structures`` (0..m-1);
        ``structure_info`` has ``n_atoms``, ``energy_ref``, ``energy_pred`` (eV,
        NaN where unknown), ``config_type`` and ``dataset_index`` (position in
        the source file); ``meta`` has ``potential``, ``potential_identity``,
        ``n_descriptors``, ``source``, ``labelled``, ``descriptor_dtype``,
        ``cache_key``.
    """
    atoms_list, dataset_index, source, settings = _checked(structures, potential, labelled, descriptor_dtype,
                                                           batch_size, max_batch_atoms, threads)
    batching = (batch_size, max_batch_atoms, threads)
    m = len(atoms_list)
    sizes = np.array([len(a) for a in atoms_list], dtype=np.int64)

    report = _progress_reporter(progress, m)
    if cache_dir is None:
        return _compute(atoms_list, potential, sizes, settings, dataset_index, source, report, None, batching)
    key = cache_key(atoms_list, potential, settings, dataset_index)
    cache_path = _entry_path(cache_dir, key)
    with one_at_a_time(key, report, lock_file=cache_path.with_suffix(".lock"), total=m) as report.publish:
        cached = _read_cache(cache_path, key)
        if cached is not None:
            return _cache_hit(cached, report, m, source, labelled)
        report.restart()  # after waiting for a holder that died (or failed) without an entry
        table = _compute(atoms_list, potential, sizes, settings, dataset_index, source, report, key, batching)
        _write_cache(table, cache_path)
    return table


def cached(structures, potential, cache_dir, labelled: bool = True, *,
           descriptor_dtype: str = "float32") -> SiteTable | None:
    """The table :func:`featurize` would read from ``cache_dir`` for the same arguments, or None.

    No forward pass, no waiting for a computation in progress, no torch import: a
    :class:`~core.potentials.deferred.DeferredPotential` stays unloaded.
    """
    atoms_list, dataset_index, source, settings = _checked(structures, potential, labelled, descriptor_dtype)
    key = cache_key(atoms_list, potential, settings, dataset_index)
    table = _read_cache(_entry_path(cache_dir, key), key, recomputing=False)
    m = len(atoms_list)
    return None if table is None else _cache_hit(table, _Reporter(None, None, m), m, source, labelled)


def _checked(structures, potential, labelled, descriptor_dtype, batch_size=1, max_batch_atoms=1, threads=1):
    """(atoms_list, dataset_index, source, settings) of a featurize call, its arguments checked."""
    atoms_list, dataset_index, source = _unpack_structures(structures)
    _validate_args(atoms_list, potential, batch_size, descriptor_dtype, max_batch_atoms, threads)
    _validate_labels(atoms_list, potential, labelled)
    return atoms_list, dataset_index, source, {"labelled": bool(labelled), "descriptor_dtype": descriptor_dtype}


def _compute(atoms_list, potential, sizes, settings, dataset_index, source, report, key,
             batching: tuple[int, int, int]) -> SiteTable:
    """The SiteTable of one featurize call, batch by batch (no cache); ``batching``: (batch_size,
    max_batch_atoms, threads)."""
    labelled, descriptor_dtype = settings["labelled"], settings["descriptor_dtype"]
    # (forces_pred, descriptors, committee_std, energy_pred)
    computed = _run_batches(atoms_list, potential, sizes, batching, descriptor_dtype, report)
    meta = {
        "potential": potential.name, "potential_identity": potential.identity,
        "n_descriptors": int(computed[1].shape[1]), "source": source, "labelled": bool(labelled),
        "descriptor_dtype": descriptor_dtype, "cache_key": key, "cache_hit": False,
    }
    return _assemble(atoms_list, sizes, labelled, computed, dataset_index, meta)


# ----------------------------------------------------------- featurize steps
def _unpack_structures(structures):
    """(atoms_list, dataset_index (m,) int64, source) from a Dataset or a list of Atoms."""
    from core.data import Dataset

    if isinstance(structures, Dataset):
        atoms_list = list(structures.structures)
        dataset_index = np.asarray(structures.indices, dtype=np.int64)
        source = structures.source
    else:
        try:
            atoms_list = list(structures)
        except TypeError:
            raise TypeError(
                f"structures: expected a Dataset or a list of ase.Atoms, got {type(structures).__name__}"
            ) from None
        dataset_index = np.arange(len(atoms_list), dtype=np.int64)
        source = None
    return atoms_list, dataset_index, source


def _validate_labels(atoms_list, potential, labelled: bool) -> None:
    """Reference forces present with shape (n_atoms, 3) when labelled; elements known to ``potential``."""
    from core.data import REF_FORCES
    from core.potentials.base import check_elements

    if labelled:
        missing = [i for i, a in enumerate(atoms_list) if REF_FORCES not in a.arrays]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (", ..." if len(missing) > 20 else "")
            raise ValueError(
                f"structures: {len(missing)} of {len(atoms_list)} structures have no reference forces "
                f"(atoms.arrays[{REF_FORCES!r}]): structures {shown}. Read them with core.data.read_dataset, "
                "or pass labelled=False for unlabelled data"
            )
        for i, a in enumerate(atoms_list):
            if np.shape(a.arrays[REF_FORCES]) != (len(a), 3):
                raise ValueError(
                    f"structures[{i}]: {REF_FORCES} has shape {np.shape(a.arrays[REF_FORCES])}, expected ({len(a)}, 3)"
                )
    check_elements(atoms_list, potential.atomic_numbers, f"potential {potential.name!r}")


def _cache_hit(cached: SiteTable, report, m: int, source, labelled: bool) -> SiteTable:
    """Finish progress at ``m`` and return the cached table with this call's source/labelled."""
    report(m)
    report.close()
    meta = dict(cached.meta)
    meta["source"] = source
    meta["cache_hit"] = True
    if not labelled and cached.errors is not None:  # entry written when unlabelled meant errors 0
        cached = _with_meta(cached, meta, errors=None)
    return _with_meta(cached, meta)


def _run_batches(atoms_list, potential, sizes, batching, descriptor_dtype, report):
    """Forward passes over the batches (``batching``: batch_size, max_batch_atoms, threads),
    filling preallocated arrays in batch order.

    Returns forces_pred (N, 3) float64 eV/Å, descriptors (N, d) ``descriptor_dtype``,
    committee_std (N,) float64 or None, energy_pred (m,) float64 eV.
    """
    m = len(atoms_list)
    n_total = int(sizes.sum())
    offsets = np.r_[0, np.cumsum(sizes)]
    forces_pred = np.empty((n_total, 3), dtype=np.float64)
    descriptors = None
    committee_std = None
    energy_pred = np.empty(m, dtype=np.float64)
    batch_size, max_batch_atoms, threads = batching
    done = 0
    try:
        with batch_outputs(potential, atoms_list, plan_batches(sizes, batch_size, max_batch_atoms), threads) as outputs:
            for lo, hi, out in outputs:
                a0, a1 = offsets[lo], offsets[hi]
                _check_output(out, hi - lo, a1 - a0, potential)
                if descriptors is None:
                    descriptors = np.empty((n_total, out.descriptors.shape[1]), dtype=descriptor_dtype)
                elif out.descriptors.shape[1] != descriptors.shape[1]:
                    raise ValueError(
                        f"potential {potential.name!r}: descriptor width changed between batches "
                        f"({descriptors.shape[1]} -> {out.descriptors.shape[1]})"
                    )
                energy_pred[lo:hi] = out.energies
                forces_pred[a0:a1] = out.forces
                descriptors[a0:a1] = out.descriptors
                if out.committee_std is not None:
                    if committee_std is None:
                        committee_std = np.full(n_total, np.nan, dtype=np.float64)
                    committee_std[a0:a1] = out.committee_std
                done = hi
                report(done)
    finally:
        report.close()
    if committee_std is not None and np.isnan(committee_std).any():
        raise ValueError(f"potential {potential.name!r}: committee_std returned for some batches only")
    return forces_pred, descriptors, committee_std, energy_pred


def _assemble(atoms_list, sizes, labelled, computed, dataset_index, meta):
    """The SiteTable from ``computed`` = ``_run_batches``'s (forces_pred, descriptors,
    committee_std, energy_pred): reference forces and errors (N,) eV/Å when labelled,
    else None; ``structure_info`` per structure (see ``featurize``)."""
    from core.data import DEFAULT_CONFIG_TYPE, REF_ENERGY, REF_FORCES

    forces_pred, descriptors, committee_std, energy_pred = computed
    m = len(atoms_list)
    config_types = np.array([str(a.info.get("config_type", DEFAULT_CONFIG_TYPE)) for a in atoms_list])
    energy_ref = np.array([_float_or_nan(a.info.get(REF_ENERGY)) for a in atoms_list], dtype=np.float64)
    n_total = int(sizes.sum())
    offsets = np.r_[0, np.cumsum(sizes)]
    structure_ids = np.repeat(np.arange(m, dtype=np.int64), sizes)
    species = np.concatenate([a.numbers for a in atoms_list]).astype(np.int64)
    if labelled:
        forces_ref = np.empty((n_total, 3), dtype=np.float64)
        for i, a in enumerate(atoms_list):
            forces_ref[offsets[i]:offsets[i + 1]] = a.arrays[REF_FORCES]
        errors = np.linalg.norm(forces_pred - forces_ref, axis=1)
    else:
        forces_ref = None
        errors = None
    return SiteTable.from_arrays(
        descriptors=descriptors,
        errors=errors,
        species=species,
        structure_ids=structure_ids,
        forces_pred=forces_pred,
        forces_ref=forces_ref,
        committee_std=committee_std,
        structure_info={
            "structure_id": np.arange(m, dtype=np.int64),
            "n_atoms": sizes,
            "energy_ref": energy_ref,
            "energy_pred": energy_pred,
            "config_type": config_types,
            "dataset_index": dataset_index,
        },
        meta=meta,
    )


# ------------------------------------------------------------------ checks
def _validate_args(atoms_list, potential, batch_size, descriptor_dtype, max_batch_atoms, threads=1) -> None:
    from core.potentials.base import check_structures

    check_structures(atoms_list)
    for attr in ("name", "identity", "atomic_numbers", "compute"):
        if not hasattr(potential, attr):
            raise TypeError(
                f"potential: expected a Potential (core.potentials.load_potential), "
                f"got {type(potential).__name__} without {attr!r}"
            )
    check_int("batch_size", batch_size, 1)
    check_int("max_batch_atoms", max_batch_atoms, 1)
    check_int("threads", threads, 1)
    if descriptor_dtype not in _DESCRIPTOR_DTYPES:
        raise ValueError(f"descriptor_dtype: expected one of {_DESCRIPTOR_DTYPES}, got {descriptor_dtype!r}")


def _check_output(out, n_structures, n_atoms, potential) -> None:
    try:
        if hasattr(out, "check"):
            out.check(n_structures, n_atoms)
        else:
            raise ValueError(f"expected a PotentialOutput, got {type(out).__name__}")
    except ValueError as exc:
        raise ValueError(f"potential {potential.name!r} returned malformed output: {exc}") from None


def _float_or_nan(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


class _Reporter:
    """Callback and/or tqdm bar; never goes back but by :meth:`restart`; ``publish``: the key holder's."""

    def __init__(self, fn, bar, total):
        self._fn, self._bar, self._total, self._last = fn, bar, total, 0
        self.publish = None

    def __call__(self, done: int) -> None:
        done = max(int(done), self._last)  # a waiter's view of another computation only grows
        if self.publish is not None:
            self.publish(done)
        if self._fn is not None:
            self._fn(done, int(self._total))
        if self._bar is not None:
            self._bar.update(done - self._last)
        self._last = done

    def restart(self) -> None:
        """Back to 0 when the call this one waited for died (the callback's only decrease)."""
        if self._last and self._bar is not None:
            self._bar.reset(total=self._total)
        if self._last and self._fn is not None:
            self._fn(0, int(self._total))
        self._last = 0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _progress_reporter(progress, total: int) -> _Reporter:
    if progress is None or progress is False:
        return _Reporter(None, None, total)
    if progress is True:
        from tqdm.auto import tqdm

        return _Reporter(None, tqdm(total=total, desc="featurize", unit="structure"), total)
    if callable(progress):
        return _Reporter(progress, None, total)
    raise TypeError(f"progress: expected None, True or a callable(done, total), got {type(progress).__name__}")


# ------------------------------------------------------------------- cache
def cache_key(atoms_list: Sequence, potential, settings: dict, dataset_index=None) -> str:
    """SHA-256 hex of data content + potential identity + settings."""
    from core.data import DEFAULT_CONFIG_TYPE, REF_ENERGY, REF_FORCES

    h = hashlib.sha256()
    h.update(f"flexcal-featurize-v{CACHE_VERSION}".encode())
    h.update(str(potential.identity).encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    if dataset_index is not None:
        h.update(np.ascontiguousarray(dataset_index, dtype=np.int64).tobytes())
    for a in atoms_list:
        h.update(b"|frame|")
        h.update(np.ascontiguousarray(a.numbers, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(a.positions, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(np.asarray(a.cell), dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(a.pbc, dtype=np.bool_).tobytes())
        f = a.arrays.get(REF_FORCES)
        h.update(b"F" + (np.ascontiguousarray(f, dtype=np.float64).tobytes() if f is not None else b"-"))
        h.update(repr(_float_or_nan(a.info.get(REF_ENERGY))).encode())
        h.update(str(a.info.get("config_type", DEFAULT_CONFIG_TYPE)).encode())
    return h.hexdigest()


def _entry_path(cache_dir, key: str) -> Path:
    """The cache entry of ``key`` (its lock file: the same name with ``.lock``)."""
    return Path(cache_dir) / f"featurize-{key[:40]}.npz"


def _read_cache(path: Path, key: str, *, recomputing: bool = True) -> SiteTable | None:
    """The entry at ``path`` or None; an unreadable one warns when the caller recomputes it
    (``recomputing``; :func:`cached` does not, and leaves the warning to :func:`featurize`)."""
    if not path.exists():
        return None
    try:
        table = SiteTable.load(path)
        if table.meta.get("cache_key") != key:
            raise ValueError(f"cache key mismatch ({table.meta.get('cache_key')!r})")
        return table
    except Exception as exc:  # truncated/garbled zip, bad JSON, failed validation, ...
        if recomputing:
            warnings.warn(
                f"featurize cache entry {path} is unreadable ({type(exc).__name__}: {exc}); recomputing",
                RuntimeWarning,
                stacklevel=3,
            )
        return None


def _write_cache(table: SiteTable, path: Path) -> None:
    """Write the cache entry (``SiteTable.save`` is atomic: a crash never leaves half a file)."""
    table.save(path)


def _with_meta(table: SiteTable, meta: dict, **changes) -> SiteTable:
    from dataclasses import replace

    return replace(table, meta=meta, **changes)
