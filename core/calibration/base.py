"""The Calibrator contract and its on-disk format.

A calibrator turns per-site descriptors, species and force errors into per-site
half-widths w (eV/Å) such that e <= w holds with probability ``confidence``
(METHOD §3). Every calibrator::

    cal.fit(sites, *, target=None, reference=None, callback=None) -> cal
    cal.predict(sites) -> (n,) widths, eV/Å
    cal.predict_levels(sites, levels) -> (n, k) widths, one column per level
    cal.save(path) -> Path          # one .npz
    load_calibrator(path)           # any kind

File format: a single ``.npz`` written with ``allow_pickle=False``. Entry
``__meta__`` is a JSON string ``{"format": "flexcal.Calibrator", "kind": ...,
"version": ..., "name": ..., "params": {...}, "state": {...}}``; every other
entry is a plain numeric array. :func:`load_calibrator` dispatches on ``kind``
and never unpickles; an unreadable or foreign file raises ``ValueError`` naming
the path.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from core.sites import SiteTable

__all__ = ["Calibrator", "FORMAT", "FORMAT_VERSION", "check_confidence", "check_levels", "load_calibrator"]

FORMAT = "flexcal.Calibrator"
FORMAT_VERSION = 1

#: kind (as stored in __meta__) -> "module:Class"; imported only when a file of that kind is loaded
_KINDS: dict[str, str] = {
    "split_conformal": "core.calibration.conformal:SplitConformal",
    "flexible_quantile": "core.calibration.flexible:FlexibleQuantile",
}


def check_confidence(confidence: Any, name: str = "confidence") -> float:
    """``confidence`` as a float in the open interval (0, 1); ValueError otherwise."""
    if isinstance(confidence, (bool, np.bool_)) or not isinstance(confidence, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: expected a number in (0, 1), e.g. 0.9, got {confidence!r}")
    value = float(confidence)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name}: expected a number in (0, 1), e.g. 0.9, got {confidence!r}")
    return value


def check_levels(levels: Any, name: str = "levels") -> np.ndarray:
    """``levels`` as a non-empty 1-D float64 array with every entry in (0, 1)."""
    try:
        arr = np.asarray(levels, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected numbers in (0, 1), got {levels!r}") from None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of numbers in (0, 1), got shape {arr.shape}")
    bad = ~((arr > 0.0) & (arr < 1.0))
    if bad.any():
        raise ValueError(f"{name}: every level must lie in (0, 1), got {float(arr[bad][0])!r} (in {arr.tolist()[:10]})")
    return arr


def check_sites(sites: Any, name: str = "sites") -> SiteTable:
    if not isinstance(sites, SiteTable):
        raise TypeError(f"{name}: expected a SiteTable, got {type(sites).__name__}")
    return sites


class Calibrator:
    """Base class: confidence validation, fitted check, save/load plumbing.

    Subclasses define ``kind`` (the file-format key), ``name``/``label``, the
    fit/predict methods, and the two state hooks :meth:`_get_state` /
    :meth:`_set_state`.
    """

    kind: str = ""
    name: str = "calibrator"
    label: str = "calibrator"

    def __init__(self, confidence: float = 0.9):
        self.confidence = check_confidence(confidence)

    # ------------------------------------------------------------- contract
    def fit(self, sites: SiteTable, *, target=None, reference=None, callback=None) -> "Calibrator":
        raise NotImplementedError

    def predict(self, sites: SiteTable) -> np.ndarray:
        raise NotImplementedError

    def predict_levels(self, sites: SiteTable, levels) -> np.ndarray:
        raise NotImplementedError

    @property
    def is_fitted(self) -> bool:
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} ({self.name}) is not fitted; call fit() first")

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters, JSON-serialisable."""
        raise NotImplementedError

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-serialisable state, arrays) of a fitted calibrator."""
        raise NotImplementedError

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    @classmethod
    def _from_saved(cls, params: dict[str, Any], state: dict[str, Any], arrays: dict[str, np.ndarray]) -> "Calibrator":
        """Rebuild from the pieces of a saved file (constructor params, state, arrays)."""
        cal = cls(**params)
        cal._set_state(state, arrays)
        return cal

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ I/O
    def save(self, path) -> Path:
        """Write the fitted calibrator to one ``.npz`` file (no pickle). Returns the path.

        ``.npz`` is appended when ``path`` has no suffix.
        """
        self._check_fitted()
        path = Path(path)
        if path.suffix == "":
            path = path.with_suffix(".npz")
        state, arrays = self._get_state()
        meta = {
            "format": FORMAT,
            "kind": self.kind,
            "version": FORMAT_VERSION,
            "name": self.name,
            "params": self.get_params(),
            "state": state,
        }
        payload = {k: np.asarray(v) for k, v in arrays.items()}
        for k, v in payload.items():
            if v.dtype == object:
                raise TypeError(
                    f"{type(self).__name__}.save: array {k!r} has dtype object (not saveable without pickle)"
                )
        payload["__meta__"] = np.array(json.dumps(meta, allow_nan=True))
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            np.savez(fh, **payload)
        return path


def load_calibrator(path) -> Calibrator:
    """Read a calibrator written by :meth:`Calibrator.save` (any kind).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not a readable FlexCal calibrator (corrupt, pickled, foreign
        format, unknown kind, newer version, missing entries); the message names
        the path.
    """
    import importlib

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such calibrator file")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a readable FlexCal calibrator .npz file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or "__meta__" not in data:
        raise ValueError(f"{path}: not a FlexCal calibrator (no __meta__ entry)")
    try:
        meta = json.loads(str(data.pop("__meta__")))
    except ValueError as exc:
        raise ValueError(f"{path}: __meta__ is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{path}: format is {fmt!r}, expected {FORMAT!r}")
    version = meta.get("version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path}: calibrator format version {version!r} is newer than this FlexCal ({FORMAT_VERSION})")
    kind = meta.get("kind")
    target = _KINDS.get(kind)
    if target is None:
        raise ValueError(f"{path}: unknown calibrator kind {kind!r}; known kinds are {', '.join(_KINDS)}")
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    try:
        cal = cls._from_saved(meta.get("params", {}), meta.get("state", {}), data)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"{path}: damaged {kind} calibrator ({type(exc).__name__}: {exc})") from None
    return cal
