"""User inputs -> sites: the one place that resolves data and models, featurizes and partitions.

* :func:`resolve_data` — a path, raw bytes (with a file name) or a demo family name -> a
  :class:`core.data.Dataset` and the demo family it is (or None).
* :func:`resolve_model` — what a user typed as model (None, a path, a foundation-model name,
  ``"demo"``) -> the spec :func:`core.potentials.load_potential` loads; None on a demo dataset
  means that family's embedded demo model.
* :func:`load_sites` — both, then :func:`core.featurize.featurize` (cached) -> a SiteTable
  whose ``structure_info`` carries the file's per-frame ``split`` labels when present.
* :func:`partition` — sites -> (calibration, test, reference), always by structure, with the
  **demo rule written once**: frames a potential was trained on (``split`` = train/valid)
  are never calibrated or tested on; the ``train`` frames are the knn/gmm ``reference``.
* :func:`relabel`, :func:`forces_from_file` — the same sites against a second level of theory;
  :func:`select_by_column`, :func:`with_structure_columns` — per-structure column helpers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.sites import SiteTable, split_structure_ids
from core.validation import check_choice, check_fraction, check_int, check_seed

__all__ = [
    "SPLIT_KEY",
    "TRAINING_PARTS",
    "PARTITION_MODES",
    "Partition",
    "resolve_data",
    "resolve_model",
    "load_sites",
    "demo_sites",
    "partition",
    "exclude_training",
    "select_by_column",
    "with_structure_columns",
    "relabel",
    "forces_from_file",
]

SPLIT_KEY = "split"                    # atoms.info key of a file's own split (the demo files have it)
TRAINING_PARTS = ("train", "valid")    # frames the potential was trained on: never calibrate on them
PARTITION_MODES = ("random", "file", "config_type")


# ----------------------------------------------------------------- data and model
def _demo():
    try:
        from core import demo
    except ImportError:  # demo data not shipped with this copy
        return None
    return demo


def demo_family_of(path) -> str | None:
    """The demo family whose file is ``path``, or None."""
    demo = _demo()
    if demo is None:
        return None
    p = Path(path).resolve()
    for family in demo.FAMILIES:
        try:
            if Path(demo.demo_dataset_path(family)).resolve() == p:
                return family
        except FileNotFoundError:
            continue
    return None


def resolve_data(spec, *, name: str | None = None, **read_options):
    """A dataset from a path, bytes (``name=`` the file name) or a demo family name.

    Returns ``(dataset, family)`` where ``family`` is the demo family or None.
    ``read_options`` go to :func:`core.data.read_dataset` (``energy_key``, ``forces_key``,
    ``format``, ``require_labels``, ``max_bytes``, ...). A missing path that is not a demo
    name -> FileNotFoundError naming both; a directory -> ValueError.
    """
    from core.data import read_dataset

    if isinstance(spec, (bytes, bytearray)):
        return read_dataset(bytes(spec), name=name, **read_options), None
    demo = _demo()
    text = str(spec)
    path = Path(text)
    if path.exists():
        if path.is_dir():
            raise ValueError(f"DATA: expected a structure file or a demo dataset name, got a directory: {text}")
        return read_dataset(path, **read_options), demo_family_of(path)
    if demo is not None and text in demo.FAMILIES:
        return read_dataset(demo.demo_dataset_path(text), **read_options), text
    names = f" (nor a demo dataset: {', '.join(demo.FAMILIES)})" if demo is not None else ""
    raise FileNotFoundError(f"DATA: no such file: {text}{names}")


def resolve_model(model, family: str | None = None):
    """The model spec to load: ``model`` itself, or the demo family's model when ``model`` is None.

    A loaded potential is returned unchanged. None without a demo family -> ValueError
    asking for a model.
    """
    if model is not None and not isinstance(model, (str, Path)):
        return model  # already a Potential
    if model:
        return str(model)
    if family is None:
        raise ValueError("model: required for a dataset that is not one of the embedded demos "
                         "(a .model file, a foundation-model name such as mace-mp-0b3-medium, or chgnet)")
    from core.demo import demo_model_path

    return str(demo_model_path(family))


def _potential(model, committee: Sequence = (), device: str = "auto", dtype: str | None = None):
    if not isinstance(model, str):
        return model
    from core.potentials import load_potential

    return load_potential(model, committee=tuple(str(c) for c in committee), device=device, dtype=dtype)


@dataclass(frozen=True)
class SourceSettings:
    """How :func:`load_sites` reads and featurizes (every field has a safe default)."""

    committee: tuple[str, ...] = ()
    batch_size: int = 16
    cache_dir: Any = None
    energy_key: str | None = None
    forces_key: str | None = None
    device: str = "auto"
    dtype: str | None = None  # None: the backend's own precision (MACE float64, CHGNet float32)
    info_keys: tuple[str, ...] = (SPLIT_KEY,)
    max_structures: int | None = None
    subset_seed: int = 0
    format: str | None = None             # the reader's limits and options (core.data.read_dataset);
    max_bytes: int | None = None          # None keeps its default
    max_atoms: int | None = None
    max_extent: float | None = None
    duplicate_frames: str | None = None

    def read_options(self) -> dict[str, Any]:
        """The :func:`core.data.read_dataset` keywords these settings give (None ones left out)."""
        names = ("energy_key", "forces_key", "format", "max_bytes", "max_atoms", "max_extent", "duplicate_frames")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def load_sites(data, model=None, *, progress=None, messages: Callable[[str], Any] | None = None,
               **settings) -> SiteTable:
    """Read a dataset and run a potential over it: the sites of one dataset.

    Parameters
    ----------
    data : str, Path, bytes or demo family name
        See :func:`resolve_data` (bytes need ``settings["name"]``... use :func:`resolve_data`
        then :func:`core.featurize.featurize` for uploads).
    model : str, Path or Potential, optional
        See :func:`resolve_model`; None on a demo dataset = its embedded demo model.
    progress : None, True or callable(done, total)
        Featurizing progress (:mod:`core.progress` convention).
    messages : callable(str), optional
        Receives the reader's notes (which label keys were mapped, subsets).
    **settings
        Fields of :class:`SourceSettings` (committee, batch_size, cache_dir, energy_key,
        forces_key, device, dtype, info_keys, max_structures, subset_seed, and the reader's
        format, max_bytes, max_atoms, max_extent, duplicate_frames).

    Returns
    -------
    SiteTable
        ``meta`` gains ``dataset`` (the path or name), ``model`` and ``demo`` (family or None).
    """
    from core.featurize import featurize

    try:
        s = SourceSettings(**settings)
    except TypeError as exc:
        raise TypeError(f"load_sites: {exc}") from None
    say = messages or (lambda m: None)
    dataset, family = resolve_data(data, **s.read_options())
    dataset = _subset(dataset, s.max_structures, s.subset_seed, say)
    for msg in getattr(dataset, "messages", []) or []:
        say(str(msg))
    potential = _potential(resolve_model(model, family), s.committee, s.device, s.dtype)
    sites = featurize(dataset, potential, batch_size=s.batch_size, progress=progress, cache_dir=s.cache_dir)
    extra = {}
    for key in s.info_keys:
        values = [a.info.get(key) for a in dataset.structures]
        if all(v is not None for v in values):
            extra[key] = np.array([str(v) for v in values])
    if extra:
        sites = with_structure_columns(sites, extra)
    sites.meta.setdefault("dataset", str(data))
    sites.meta.setdefault("model", getattr(potential, "name", str(model)))
    sites.meta["demo"] = family
    return sites


def _subset(dataset, max_structures, seed: int, say):
    if max_structures is None:
        return dataset
    n = check_int("max_structures", max_structures, 2)
    if n >= len(dataset):
        return dataset
    keep = np.random.default_rng(check_seed(seed, "subset_seed")).choice(len(dataset), size=n, replace=False)
    say(f"using a random subset of {n} structures (seed {seed})")
    return dataset.subset(np.sort(keep))


def demo_sites(family: str, *, cache_dir=None, progress=None, batch_size: int = 16) -> SiteTable:
    """All sites of an embedded demo family, featurized with its demo model (cached when asked)."""
    demo = _demo()
    if demo is None or family not in demo.FAMILIES:
        known = ", ".join(demo.FAMILIES) if demo is not None else "none shipped"
        raise ValueError(f"dataset: unknown demo dataset {family!r}; available: {known}")
    return load_sites(family, None, cache_dir=cache_dir, progress=progress, batch_size=batch_size)


# ----------------------------------------------------------------------- partition
#: Fewer test structures than this make a coverage number uninformative (``Partition.warnings``).
MIN_TEST_STRUCTURES = 10


@dataclass(frozen=True)
class Partition:
    """Calibration and test sites (disjoint structures) and the reference (training) sites or None.

    ``note``: what was set aside; ``warnings``: reasons to distrust the numbers this split
    gives (a test part of fewer than ``MIN_TEST_STRUCTURES`` structures).
    """

    calibration: SiteTable
    test: SiteTable
    reference: SiteTable | None
    mode: str
    note: str = ""
    warnings: tuple[str, ...] = ()


def exclude_training(sites: SiteTable) -> tuple[SiteTable, SiteTable | None, np.ndarray]:
    """The demo rule: ``(pool, reference, excluded ids)``.

    Structures whose ``split`` column is train/valid (the potential's own training and
    validation frames) leave the pool; the ``train`` ones are the reference. Sites without a
    ``split`` column are returned whole with reference None.
    """
    if SPLIT_KEY not in sites.structure_info:
        return sites, None, np.array([], dtype=np.int64)
    labels = sites.structure_info[SPLIT_KEY].astype(str)
    ids = sites.structure_info["structure_id"]
    excluded = ids[np.isin(labels, TRAINING_PARTS)]
    train_ids = ids[labels == "train"]
    keep = np.setdiff1d(sites.unique_structures, excluded)
    if keep.size < 2:
        raise ValueError("sites: fewer than 2 structures remain once the potential's training/validation "
                         "frames (split = train/valid) are excluded")
    pool = sites.select_structures(keep) if excluded.size else sites
    reference = sites.select_structures(train_ids) if train_ids.size else None
    return pool, reference, excluded


def partition(sites: SiteTable, mode: str = "random", *, test_fraction: float = 0.5, seed: int = 0,
              calibration_types: Iterable[str] | None = None, test_types: Iterable[str] | None = None,
              column: str = "config_type", exclude_trained: bool = True) -> Partition:
    """Split sites by structure into calibration / test, the training frames set aside.

    ``mode``: ``"random"`` (seeded; ``test_fraction`` of the pool's structures to test),
    ``"file"`` (the file's own ``split`` = calibration / test) or ``"config_type"``
    (``calibration_types`` vs ``test_types`` of ``column``; default test = every other value).
    The pool excludes the potential's training frames (:func:`exclude_training`) when
    ``exclude_trained`` (the file's ``split`` labels describe the model in use, as for an
    embedded demo with its own demo model); pass False for another model (e.g. a foundation
    model on a demo file): every frame may then be calibrated on and there is no reference.
    """
    check_choice("mode", mode, PARTITION_MODES)
    if exclude_trained:
        pool, reference, excluded = exclude_training(sites)
    else:
        pool, reference, excluded = sites, None, np.array([], dtype=np.int64)
    note = (f"excluded the potential's {excluded.size} training/validation frames from calibration"
            + (f"; its {reference.n_structures} training frames are the knn/gmm reference" if reference else "")
            if excluded.size else "")
    if mode == "random":
        cal_ids, test_ids = split_structure_ids(pool.unique_structures, check_fraction("test_fraction", test_fraction),
                                                check_seed(seed))
        cal, test = pool.select_structures(cal_ids), pool.select_structures(test_ids)
    elif mode == "file":
        if SPLIT_KEY not in pool.structure_info:
            raise ValueError("mode: 'file' needs per-frame split labels (atoms.info['split'] = calibration/test); "
                             "this dataset has none: use mode='random'")
        cal = select_by_column(pool, SPLIT_KEY, ["calibration"])
        test = select_by_column(pool, SPLIT_KEY, ["test"])
    else:
        if not calibration_types:
            raise ValueError(f"calibration_types: choose at least one {column} for calibration, got none")
        cal_types = [str(t) for t in calibration_types]
        cal = select_by_column(pool, column, cal_types)
        if test_types:
            test = select_by_column(pool, column, test_types)
        else:
            rest = np.setdiff1d(pool.structure_info[column].astype(str), cal_types)
            if rest.size == 0:
                raise ValueError(f"test_types: every {column} is used for calibration; none is left to test on")
            test = select_by_column(pool, column, rest.tolist())
    if cal.n_structures == 0 or test.n_structures == 0:
        raise ValueError("the split leaves the calibration or the test part without structures")
    warnings = ()
    if test.n_structures < MIN_TEST_STRUCTURES:
        warnings = (f"test: coverage from {len(test)} sites of {test.n_structures} structures is not informative "
                    f"(fewer than {MIN_TEST_STRUCTURES} test structures)",)
    return Partition(cal, test, reference, mode, note, warnings)


# ------------------------------------------------------------ per-structure columns
def select_by_column(sites: SiteTable, column: str, values: Iterable[str]) -> SiteTable:
    """Sites whose structure has ``structure_info[column]`` in ``values``.

    Raises ValueError naming the values present when one is absent.
    """
    values = [str(v) for v in values]
    if column not in sites.structure_info:
        raise ValueError(
            f"split-by: the sites have no per-structure column {column!r}; available: {sorted(sites.structure_info)}"
        )
    col = sites.structure_column(column).astype(str)
    present = sorted(set(sites.structure_info[column].astype(str).tolist()))
    unknown = [v for v in values if v not in present]
    if unknown:
        raise ValueError(f"{column}: no structures with value(s) {unknown}; present: {present}")
    return sites.select(np.isin(col, values))


def with_structure_columns(sites: SiteTable, columns: Mapping[str, np.ndarray]) -> SiteTable:
    """The same sites with extra per-structure columns (one value per ``structure_info`` row)."""
    info = dict(sites.structure_info)
    m = info["structure_id"].shape[0]
    for name, values in columns.items():
        values = np.asarray(values)
        if values.shape[0] != m:
            raise ValueError(f"columns[{name!r}]: expected {m} values (one per structure), got {values.shape[0]}")
        info[name] = values
    return _rebuild(sites, structure_info=info)


def _rebuild(sites: SiteTable, **changes) -> SiteTable:
    fields = dict(
        descriptors=sites.descriptors, errors=sites.errors, species=sites.species,
        structure_ids=sites.structure_ids, atom_index=sites.atom_index, forces_pred=sites.forces_pred,
        forces_ref=sites.forces_ref, committee_std=sites.committee_std, structure_info=sites.structure_info,
        meta=dict(sites.meta),
    )
    fields.update(changes)
    return SiteTable.from_arrays(**fields)


def relabel(sites: SiteTable, forces_ref: np.ndarray, *, label: str = "B") -> SiteTable:
    """The same sites with errors against other reference forces (a second level of theory).

    ``forces_ref`` (n, 3) eV/Å; ``sites`` must carry ``forces_pred``. Errors are recomputed as
    ||F_pred - F_ref||_2 and ``meta["level"] = label``.
    """
    if sites.forces_pred is None:
        raise ValueError("sites: relabel needs predicted forces (forces_pred), but this table has none")
    forces_ref = np.asarray(forces_ref, dtype=np.float64)
    if forces_ref.shape != (len(sites), 3):
        raise ValueError(f"forces_ref: expected shape ({len(sites)}, 3), got {forces_ref.shape}")
    errors = np.linalg.norm(np.asarray(sites.forces_pred, dtype=np.float64) - forces_ref, axis=1)
    return _rebuild(sites, errors=errors, forces_ref=forces_ref, meta={**sites.meta, "level": label})


def forces_from_file(sites: SiteTable, path, forces_key: str) -> np.ndarray:
    """Per-site forces (n, 3) read from ``atoms.arrays[forces_key]`` of an extxyz file.

    Sites are matched to frames through ``structure_info["dataset_index"]`` (else the
    structure id) and to atoms through ``atom_index``.
    """
    from ase.io import read

    frames = read(str(path), index=":")
    frame_of = (
        sites.structure_column("dataset_index").astype(np.int64)
        if "dataset_index" in sites.structure_info
        else sites.structure_ids
    )
    out = np.empty((len(sites), 3), dtype=np.float64)
    for f in np.unique(frame_of):
        atoms = frames[int(f)]
        if forces_key not in atoms.arrays:
            raise ValueError(f"{path}: frame {int(f)} has no per-atom array {forces_key!r}; "
                             f"available: {sorted(atoms.arrays)}")
        rows = np.flatnonzero(frame_of == f)
        out[rows] = atoms.arrays[forces_key][sites.atom_index[rows]]
    return out
