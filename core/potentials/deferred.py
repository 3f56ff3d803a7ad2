"""A potential whose weights load on first use: reading cached features needs none.

A featurize-cache entry is found from the potential's ``identity`` alone (with ``name`` and
``atomic_numbers`` for the checks). Loading a MACE model to learn those costs about 6 s of
imports (torch, e3nn, mace-torch) and 0.7 s of unpickling on a laptop core, which the app's
next launch paid just to read features it already had. :func:`deferred_potential` returns a
:class:`DeferredPotential` when a *metadata record* of the same model file and load options
exists: it answers ``name``, ``identity`` and ``atomic_numbers`` from the record and loads the
real potential (through :func:`core.potentials.load_potential`, the one resolver) the first
time anything else is asked of it — ``compute``, ``ase_calculator`` or any other attribute.
Without a record it loads for real and writes one (:func:`record_metadata`).

Records are small JSON files ``potential-<key>.json`` in a folder of the caller's choice (the
app: next to its feature cache); the key hashes the model file's bytes (SHA-256) and the load
options, so an edited file or another dtype/head never matches an old record. After the real
load the identity is checked against the record: a file changed in between raises instead of
computing numbers under another model's name. Only model files are deferred (``"demo"``,
``"demo:<family>"``, a path to a file); named downloads and committees load at once. An
untrusted file (``trusted=False``) is never deferred: it is refused or loaded as
:func:`~core.potentials.load_potential` decides, now.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

__all__ = ["DeferredPotential", "deferred_potential", "model_file", "record_metadata", "record_path"]

RECORD_VERSION = 1
_KEYS = ("name", "identity", "atomic_numbers")


def model_file(spec) -> Path | None:
    """The local model file ``spec`` names (``"demo"``, ``"demo:<family>"``, a file path), else None."""
    from core.potentials.registry import existing_file

    if isinstance(spec, str) and (spec == "demo" or spec.startswith("demo:")):
        from core.demo import demo_model_path

        try:
            return demo_model_path(spec.partition(":")[2] or None)
        except (ValueError, FileNotFoundError):
            return None  # an unknown family or a missing model: load_potential says which
    return existing_file(spec)


def record_path(spec, records, **options) -> Path | None:
    """Where the metadata record of ``spec`` loaded with ``options`` lives in the folder ``records``
    (None when ``spec`` names no model file: such specs are never deferred)."""
    from core.potentials.base import sha256_file

    file = model_file(spec)
    if file is None:
        return None
    h = hashlib.sha256(f"flexcal-potential-record-v{RECORD_VERSION}|".encode())
    h.update(sha256_file(file).encode())
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    return Path(records) / f"potential-{h.hexdigest()[:40]}.json"


def record_metadata(potential, path) -> Path:
    """Write ``potential``'s ``name``, ``identity`` and ``atomic_numbers`` to ``path`` (JSON, atomically)."""
    from core.io import atomic_write_text

    record = {"version": RECORD_VERSION, "name": str(potential.name), "identity": str(potential.identity),
              "atomic_numbers": [int(z) for z in potential.atomic_numbers]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(record, sort_keys=True))


def _read_record(path: Path) -> dict | None:
    """The record at ``path``, or None when absent or not a record of this version (then it is rewritten)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (isinstance(record, dict) and record.get("version") == RECORD_VERSION
          and isinstance(record.get("name"), str) and isinstance(record.get("identity"), str)
          and isinstance(record.get("atomic_numbers"), list)
          and all(isinstance(z, int) and not isinstance(z, bool) and 0 < z < 119 for z in record["atomic_numbers"]))
    return record if ok else None


class DeferredPotential:
    """``name``, ``identity`` and ``atomic_numbers`` from a record; everything else from the real
    potential, loaded (once, thread-safe) on first use with ``load_potential(spec, **options)``."""

    def __init__(self, spec, record: dict, *, options: dict):
        self.name: str = record["name"]
        self.identity: str = record["identity"]
        self.atomic_numbers: tuple[int, ...] = tuple(int(z) for z in record["atomic_numbers"])
        self._spec = spec
        self._options = dict(options)
        self._lock = threading.Lock()
        self._potential = None

    @property
    def loaded(self) -> bool:
        """Whether the real potential has been loaded."""
        return self._potential is not None

    def load(self):
        """The real potential (loaded by the first call). RuntimeError when its identity is not the record's."""
        with self._lock:
            if self._potential is None:
                from core.potentials.registry import load_potential

                potential = load_potential(self._spec, **self._options)
                if potential.identity != self.identity:
                    raise RuntimeError(f"{self._spec}: the model changed since its metadata was recorded "
                                       f"(identity {potential.identity[:12]}, recorded {self.identity[:12]}); "
                                       "load it again")
                self._potential = potential
            return self._potential

    def compute(self, structures):
        return self.load().compute(structures)

    def ase_calculator(self):
        return self.load().ase_calculator()

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.load(), name)

    def __repr__(self) -> str:
        return f"DeferredPotential(name={self.name!r}, loaded={self.loaded})"


def deferred_potential(spec, *, records, trusted: bool = True, **options):
    """The potential ``spec`` names, deferred when ``records`` (a folder) holds its metadata.

    Parameters
    ----------
    spec : str or path
        ``"demo"``, ``"demo:<family>"`` or a model file; other specs load at once.
    records : path
        Folder of the metadata records (created when needed).
    trusted : bool
        As in :func:`~core.potentials.load_potential`; an untrusted file is never deferred.
    **options
        Passed to ``load_potential`` (``device``, ``dtype``, ``head``, ...); part of the record's key.

    Returns
    -------
    DeferredPotential when a record matched, else the loaded potential (and a record is written).
    """
    from core.potentials.registry import load_potential

    path = record_path(spec, records, **options) if trusted is True else None
    if path is None:
        return load_potential(spec, trusted=trusted, **options)
    record = _read_record(path)
    if record is not None:
        return DeferredPotential(spec, record, options=options)
    potential = load_potential(spec, **options)
    try:
        record_metadata(potential, path)
    except OSError:
        pass  # a read-only cache: the next call loads again
    return potential
