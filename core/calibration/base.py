"""The Calibrator contract, its state pattern and its on-disk format.

A calibrator turns per-site descriptors, species and force errors into per-site
half-widths w (eV/Å) such that e <= w holds with probability ``confidence``
(METHOD §3). Every calibrator::

    cal.fit(sites, *, target=None, reference=None, callback=None) -> cal
    cal.predict(sites) -> (n,) widths, eV/Å          # pure: never changes cal
    cal.predict_levels(sites, levels) -> (n, k) widths, one column per level
    cal.update(new_sites, *, fine_tune=0) -> cal     # recalibrate on labels of a new domain
    cal.get_params() -> dict; cal.clone() -> unfitted copy; cal.copy() -> fitted copy
    cal.get_state() -> (meta, arrays); Calibrator.from_state(meta, arrays)
    cal.save(path) -> Path          # one .npz
    load_calibrator(path)           # any kind

State pattern (shared with heuristics and weight schemes): ``get_state()`` returns
a JSON-serialisable ``meta`` dict and a dict of plain numeric arrays;
``from_state(meta, arrays)`` rebuilds the fitted object. Nested strategies (a
calibrator's heuristic or weight scheme, a rescaled calibrator's base) store their
arrays under a ``"<part>__"`` prefix (:func:`nest_arrays` / :func:`nested_arrays`).
Strategies given to a constructor are cloned at ``fit``, never fitted in place.

File format: a single ``.npz`` written with ``allow_pickle=False``. Entry
``__meta__`` is a JSON string ``{"format": "flexcal.Calibrator", "kind": ...,
"version": ..., "name": ..., "params": {...}, "state": {...}, "update": {...}}``;
every other entry is a plain numeric array. :func:`load_calibrator` dispatches on
``kind`` (:data:`_KINDS`) and never unpickles; an unreadable or foreign file raises
``ValueError`` naming the path.
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from core.sites import SiteTable, check_sites
from core.validation import check_confidence, check_int, check_levels

__all__ = [
    "Calibrator",
    "LayoutWarning",
    "FORMAT",
    "FORMAT_VERSION",
    "calibrator_from_state",
    "check_confidence",
    "check_labelled",
    "check_levels",
    "check_sites",
    "load_calibrator",
    "nest_arrays",
    "nested_arrays",
]

FORMAT = "flexcal.Calibrator"
FORMAT_VERSION = 1

#: kind (as stored in __meta__) -> "module:Class"; imported only when a file of that kind is loaded
_KINDS: dict[str, str] = {
    "split_conformal": "core.calibration.conformal:SplitConformal",
    "flexible_quantile": "core.calibration.flexible:FlexibleQuantile",
    "rescaled": "core.calibration.rescaled:RescaledCalibrator",
    "flexible_ood": "core.calibration.ood:FlexibleOOD",
}


def check_labelled(sites: Any, name: str = "sites") -> SiteTable:
    """``sites`` if it is a SiteTable with reference errors; ValueError for an unlabelled one."""
    check_sites(sites, name).require_labels(name)
    return sites


def nest_arrays(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` with every key prefixed by ``"<prefix>__"`` (a nested part's state)."""
    return {f"{prefix}__{k}": v for k, v in arrays.items()}


def nested_arrays(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays stored under ``"<prefix>__"``, with the prefix removed (inverse of :func:`nest_arrays`)."""
    head = f"{prefix}__"
    return {k[len(head):]: v for k, v in arrays.items() if k.startswith(head)}


class LayoutWarning(UserWarning):
    """Sites come from another model than the one a calibrator was fitted with (same descriptor width)."""


def _recording_layout(fit):
    """Wrap a subclass's ``fit`` so that every successful fit records the sites' layout."""
    if getattr(fit, "_records_layout", False):
        return fit

    @functools.wraps(fit)
    def fit_and_record(self, sites, *args, **kwargs):
        out = fit(self, sites, *args, **kwargs)
        self._record_layout(sites)
        return out

    fit_and_record._records_layout = True
    return fit_and_record


def _checked_layout(layout: Any) -> dict[str, Any] | None:
    """A saved ``layout`` entry validated (None for files written before layouts were recorded)."""
    if layout is None:
        return None
    if not isinstance(layout, dict):
        raise ValueError(f"layout: expected a JSON object or null, got {type(layout).__name__}")
    n = layout.get("n_descriptors")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"layout.n_descriptors: expected an integer >= 1, got {n!r}")
    for key in ("potential", "potential_identity"):
        if layout.get(key) is not None and not isinstance(layout[key], str):
            raise ValueError(f"layout.{key}: expected a string or null, got {layout[key]!r}")
    return {"potential": layout.get("potential"), "potential_identity": layout.get("potential_identity"),
            "n_descriptors": n}


class Calibrator:
    """Base class: confidence validation, fitted check, update, state and save/load plumbing.

    Subclasses define ``kind`` (the file-format key, registered in :data:`_KINDS`),
    ``name``/``label``, ``fit``/``predict``/``predict_levels``, ``get_params`` (JSON
    constructor parameters), the state hooks :meth:`_get_state` / :meth:`_set_state`
    and, to support :meth:`update`, the hook :meth:`_update`. Their ``fit`` ends with
    :meth:`_reset_update` (a fresh fit is not an updated one), and ``fit``/``_update`` set
    ``n_calibration_structures_``: the number of structures whose scores define the
    conformal factor (the effective calibration size of METHOD §6; None when there is no
    conformal factor), e.g. for ``calibration_report(..., n_calibration=...)``.
    """

    kind: str = ""
    name: str = "calibrator"
    label: str = "calibrator"
    #: {"potential", "potential_identity", "n_descriptors"} of the fitted sites (None before fit or
    #: for files written before layouts were recorded); set after every subclass ``fit`` (see
    #: ``__init_subclass__``), saved and restored with the state. :meth:`check_layout` reads it.
    layout_: dict[str, Any] | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "fit" in cls.__dict__:  # one wrapper for every calibrator: fit records the layout
            cls.fit = _recording_layout(cls.__dict__["fit"])

    def __init__(self, confidence: float = 0.9):
        self.confidence = check_confidence(confidence)
        self.n_update_sites_ = 0
        self.n_update_structures_ = 0
        self.n_calibration_structures_: int | None = None

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

    # --------------------------------------------------------------- layout
    def _record_layout(self, sites: SiteTable) -> None:
        """Remember which model and descriptor width the fitted sites came from (``layout_``)."""
        meta = getattr(sites, "meta", None) or {}
        name, ident = meta.get("potential"), meta.get("potential_identity")
        self.layout_ = {"potential": None if name is None else str(name),
                        "potential_identity": None if ident is None else str(ident),
                        "n_descriptors": int(sites.n_descriptors)}

    def check_layout(self, sites: SiteTable, *, strict: bool = False) -> None:
        """Check that ``sites`` come from the model and descriptor layout this calibrator was fitted on.

        A different descriptor width raises ValueError; the same width from a model with another
        identity (``sites.meta["potential_identity"]``) warns (:class:`LayoutWarning`), or raises
        ValueError with ``strict=True``. Nothing is checked where the layout or the identity is
        unknown (a calibrator saved before layouts were recorded, sites built without metadata).
        """
        check_sites(sites)
        fitted = self.layout_
        if fitted is None:
            return
        meta = sites.meta or {}
        ident = meta.get("potential_identity")
        other_width = sites.n_descriptors != fitted["n_descriptors"]
        other_model = bool(ident and fitted.get("potential_identity") and str(ident) != fitted["potential_identity"])
        if not (other_width or other_model):
            return  # the usual case, every MD step of a calibrated calculator: no message built

        def describe(name, identity):
            return f"model {name or 'unknown'}" + (f" (identity {str(identity)[:12]}…)" if identity else "")

        msg = (f"sites: calibrator was fitted on {fitted['n_descriptors']} descriptor columns from "
               f"{describe(fitted.get('potential'), fitted.get('potential_identity'))}; these sites have "
               f"{sites.n_descriptors} from {describe(meta.get('potential'), ident)}")
        if other_width:
            raise ValueError(msg)
        msg += ": widths from another model's descriptors are not calibrated"
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, LayoutWarning, stacklevel=2)

    # --------------------------------------------------------------- update
    def update(self, sites: SiteTable, *, fine_tune: int = 0) -> "Calibrator":
        """Recalibrate on labelled sites of a new domain; returns ``self`` (must be fitted).

        The conformal factor(s) are re-derived from the scores of ``sites`` alone
        (the fit's calibration scores are replaced): use it when a few labelled
        structures of the domain you predict on exist (active learning, a labelling
        budget, a new functional). Coverage then holds for structures exchangeable
        with ``sites``. The learned shape (heuristic, q_θ) is kept, unless
        ``fine_tune`` > 0 epochs of q_θ training are asked for (FlexibleQuantile only).
        Records ``n_update_sites_`` and ``n_update_structures_`` (0 after a fresh fit).

        Raises
        ------
        RuntimeError
            Not fitted.
        ValueError
            ``sites`` unlabelled (errors=None) or unusable by this calibrator; bad ``fine_tune``.
        """
        self._check_fitted()
        check_labelled(sites)
        fine_tune = check_int("fine_tune", fine_tune, 0)
        self._update(sites, fine_tune)
        self.n_update_sites_ = len(sites)
        self.n_update_structures_ = sites.n_structures
        return self

    def _update(self, sites: SiteTable, fine_tune: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not support update()")

    def _reset_update(self) -> None:
        self.n_update_sites_ = 0
        self.n_update_structures_ = 0

    # ---------------------------------------------------------------- state
    def _clone_params(self) -> dict[str, Any]:
        """Constructor arguments of an unfitted copy (strategy objects cloned); default: get_params()."""
        return self.get_params()

    def clone(self) -> "Calibrator":
        """An unfitted calibrator with the same parameters (strategy objects cloned, not shared)."""
        return type(self)(**self._clone_params())

    def copy(self) -> "Calibrator":
        """An independent fitted copy (through :meth:`get_state`, no pickle), e.g. to update one copy."""
        return type(self).from_state(*self.get_state())

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-serialisable state, arrays) of a fitted calibrator."""
        raise NotImplementedError

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(meta, arrays) of a fitted calibrator: what :meth:`save` writes and :meth:`from_state` reads.

        ``meta`` = ``{"kind", "name", "params", "state", "update"}`` (JSON); ``arrays`` are
        plain numeric ndarrays (never dtype object).
        """
        self._check_fitted()
        state, arrays = self._get_state()
        meta = {
            "kind": self.kind,
            "name": self.name,
            "params": self.get_params(),
            "state": state,
            "update": {"n_sites": int(self.n_update_sites_), "n_structures": int(self.n_update_structures_)},
            "n_calibration_structures": self.n_calibration_structures_,
            "layout": self.layout_,
        }
        payload = {k: np.asarray(v) for k, v in arrays.items()}
        for k, v in payload.items():
            if v.dtype == object:
                raise TypeError(
                    f"{type(self).__name__}.save: array {k!r} has dtype object (not saveable without pickle)"
                )
        return meta, payload

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "Calibrator":
        """Rebuild a fitted calibrator of this class from :meth:`get_state` output."""
        cal = cls._from_saved(meta.get("params", {}), meta.get("state", {}), arrays)
        update = meta.get("update") or {}
        cal.n_update_sites_ = int(update.get("n_sites", 0))
        cal.n_update_structures_ = int(update.get("n_structures", 0))
        n_cal = meta.get("n_calibration_structures")
        cal.n_calibration_structures_ = None if n_cal is None else int(n_cal)
        cal.layout_ = _checked_layout(meta.get("layout"))
        return cal

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
        meta, payload = self.get_state()
        meta = {"format": FORMAT, "version": FORMAT_VERSION, **meta}
        payload["__meta__"] = np.array(json.dumps(meta, allow_nan=True))
        from core.io import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a crash never leaves half a file
            np.savez(fh, **payload)
        return path


def calibrator_from_state(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Calibrator:
    """Rebuild any calibrator from :meth:`Calibrator.get_state` output (dispatch on ``meta["kind"]``).

    Raises ValueError for an unknown kind; other errors of a damaged state propagate
    (KeyError, TypeError, ValueError, IndexError).
    """
    import importlib

    kind = meta.get("kind")
    target = _KINDS.get(kind)
    if target is None:
        raise ValueError(f"unknown calibrator kind {kind!r}; known kinds are {', '.join(_KINDS)}")
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls.from_state(meta, arrays)


def load_calibrator(path, *, max_bytes: int | None = None) -> Calibrator:
    """Read a calibrator written by :meth:`Calibrator.save` (any kind).

    The file is checked before decompression (:func:`core.safe_npz.read_npz`: a zip archive
    of plain numeric arrays declaring at most ``max_bytes``, default 4 GiB, and no zip
    bomb); nothing is unpickled. Once rebuilt, the calibrator predicts on a few probe sites of
    its recorded descriptor layout, so that arrays of the wrong shape or NaN parameters fail
    here, with the path, rather than later.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not a readable FlexCal calibrator (corrupt, pickled, foreign
        format, unknown kind, newer version, missing, NaN or wrongly shaped entries,
        wrongly typed metadata); the message starts with the path.
    """
    from core.safe_npz import DEFAULT_MAX_NPZ_BYTES, read_meta, read_npz

    path = Path(path)
    data = read_npz(path, "calibrator", max_bytes=max_bytes or DEFAULT_MAX_NPZ_BYTES)
    meta = read_meta(data, path, "calibrator")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    version = meta.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{path}: calibrator format version {version!r} is not an integer; damaged file")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: calibrator format version {version} is newer than this FlexCal ({FORMAT_VERSION})")
    kind = meta.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(f"{path}: unknown calibrator kind {kind!r}; known kinds are {', '.join(_KINDS)}")
    for key in ("params", "state", "update"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise ValueError(f"{path}: damaged {kind} calibrator: {key!r} must be a JSON object, "
                             f"got {type(meta[key]).__name__}")
    nan = [k for k, v in data.items() if v.dtype.kind in "fc" and np.isnan(v).any()] + _nan_in_meta(meta)
    if nan:
        raise ValueError(f"{path}: damaged {kind} calibrator: {nan[0]!r} contains NaN")
    try:
        cal = calibrator_from_state(meta, data)
        _probe(cal, data)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        raise ValueError(f"{path}: damaged {kind} calibrator ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]})") from None
    return cal


def _nan_in_meta(value: Any, where: str = "__meta__") -> list[str]:
    """Where NaN numbers sit in saved metadata (training histories, which may hold NaN, skipped)."""
    if isinstance(value, float) and value != value:
        return [where]
    if isinstance(value, dict):
        return [w for k, v in value.items() if "history" not in str(k) for w in _nan_in_meta(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [w for i, v in enumerate(value) for w in _nan_in_meta(v, f"{where}[{i}]")]
    return []


def _probe(cal: Calibrator, arrays: dict[str, np.ndarray]) -> None:
    """Predict on one site per known species (zero descriptors of the recorded width).

    Raises ValueError when the widths are not (n,) positive numbers (NaN, wrong shape);
    errors of a damaged state propagate. Skipped for files without a recorded layout.
    """
    layout = getattr(cal, "layout_", None)
    if not layout:
        return
    known = [int(z) for k, v in arrays.items() if k.endswith("species") and v.dtype.kind in "iu"
             for z in np.unique(v)[:8] if 1 <= z <= 118]
    species = np.array(sorted(set(known))[:8] or [1], dtype=np.int64)
    n = species.size
    probe = SiteTable.from_arrays(
        descriptors=np.zeros((n, int(layout["n_descriptors"]))), errors=None, species=species,
        structure_ids=np.arange(n), forces_pred=np.full((n, 3), 0.1), committee_std=np.full(n, 0.1),
        meta={"potential": layout.get("potential"), "potential_identity": layout.get("potential_identity")},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        widths = np.asarray(cal.predict(probe), dtype=np.float64)
    if widths.shape != (n,) or np.isnan(widths).any() or (widths <= 0).any():
        raise ValueError(f"it predicts {widths.ravel()[:4].tolist()} (shape {widths.shape}) on probe sites; "
                         "expected positive widths")
