"""The app's session files: save a calibration with everything around it, and restore it (no Streamlit).

A session file is a :mod:`core.session` bundle (one zip of JSON + ``.npz``, never a pickle):

* ``session.json`` — when and with which FlexCal it was saved; the **dataset reference**
  (label, origin, content key = hash of its bytes, file name and size); the **model reference**
  (what featurized the sites: demo / named / path / upload, its weights identity, a path's
  SHA-256); the calibration-defining **widgets** (split, methods, confidence, q_θ settings);
  the **run** (its settings for the out-of-date badge, provenance, loss history, and the
  Evaluation's state: calibrator states, reports, fit times);
* ``sites.sites.npz`` — the features of the whole dataset (what was calibrated on, so a
  restore needs neither the model nor a new featurization);
* ``evaluation.npz`` / ``parts.npz`` — the calibrators' arrays, widths at every level,
  out-of-domain flags; the calibration / test structure ids;
* ``dataset`` — the uploaded file's bytes when at most :func:`embed_limit_bytes` (default
  50 MB, ``FLEXCAL_SESSION_EMBED_MB``), so such a session is self-contained. A larger upload is
  referred to by name and hash only: restoring it needs that very file loaded first (a
  different one is refused). Demo datasets are referred to by name and hash (refused when the
  installed file differs).

Model files are code and are never stored, loaded or trusted by a restore: the model
widgets come back with the trust boxes unticked, so featurizing again goes through the same
explicit trust gate as a fresh upload.

:func:`read_session` validates everything (sizes, hashes, types, widget ranges, shapes) and
raises :class:`core.session.SessionFileError` (a ValueError starting with the file name).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np

from app import state as S
from app.catalog import DEMO, SYNTHETIC, digest
from app.run import TEST
from core.session import DEFAULT_MAX_BYTES, DOCUMENT, SessionFileError, evaluation_from_state, evaluation_state, pack, unpack

SESSION_FILE = "flexcal-session.zip"
LAST_FILE = "last.zip"
# How each saved widget is checked on load: ("choice", options) | ("number"/"int", lo, hi) | ("text",)
# | ("texts",) (list of text) | ("numbers", lo, hi) | ("bool",) | ("optional text",)
SESSION_WIDGETS = MappingProxyType({
    S.W_DATA_SOURCE: ("choice", ("Demo dataset", "Upload a file")),
    S.W_DEMO_NAME: ("optional text",),
    S.W_SPLIT_MODE: ("choice", tuple(S.SPLIT_MODES)),
    S.W_TEST_FRACTION: ("number", 0.1, 0.9),
    S.W_SPLIT_SEED: ("int", 0, 10_000),
    S.W_CAL_TYPES: ("texts",),
    S.W_TEST_TYPES: ("texts",),
    S.W_MODEL_KIND: ("choice", S.MODEL_KINDS),
    S.W_FOUNDATION: ("optional text",),
    S.W_MODEL_PATH: ("text",),
    S.W_METHODS: ("texts",),
    S.W_CONFIDENCE: ("number", 0.5, 0.99),
    S.W_LEVELS: ("numbers", 0.0, 1.0),
    S.W_HIDDEN: ("text",),
    S.W_WEIGHTS: ("choice", ("uniform", "structure", "species", "shift")),
    S.W_CONFORMAL: ("bool",),
    S.W_MAX_EPOCHS: ("int", 10, 2000),
    S.W_BOOTSTRAP: ("int", 0, 2000),
})


def sessions_dir() -> Path:
    """Where the last session is autosaved: ``$FLEXCAL_CACHE_DIR/sessions`` (default ``.flexcal_cache``)."""
    from app.catalog import cache_root

    return cache_root() / "sessions"


def last_session_path() -> Path:
    return sessions_dir() / LAST_FILE


def embed_limit_bytes() -> int:
    """Uploads up to this size are embedded in session files (``FLEXCAL_SESSION_EMBED_MB``, default 50)."""
    return int(float(os.environ.get("FLEXCAL_SESSION_EMBED_MB", "50")) * 1024**2)


def max_session_bytes() -> int:
    """Largest session file read, and largest total it may expand to (``FLEXCAL_SESSION_MAX_MB``, default 1024)."""
    mb = os.environ.get("FLEXCAL_SESSION_MAX_MB")
    return int(float(mb) * 1024**2) if mb else DEFAULT_MAX_BYTES


@dataclass
class SessionSnapshot:
    """A session file read back and validated: ready to be put into the app's state."""

    document: dict                     # session.json
    sites: Any                         # core.sites.SiteTable of the whole dataset
    run: Any                           # app.run.CalibrationRun (metrics as saved, nothing refitted)
    widgets: dict                      # the validated widget values
    dataset_bytes: bytes | None = None  # the embedded upload, when it was small enough
    source: str = "session file"

    @property
    def summary(self) -> str:
        return summary_text(self.document)

    @property
    def model_notes(self) -> list[str]:
        return model_notes(self.document)


# =================================================================== saving
def session_bytes(values: Mapping[str, Any], *, now: _dt.datetime | None = None) -> bytes:
    """The session file of the app state ``values`` (``st.session_state`` or a dict of its keys).

    Needs a calibration (``RESULTS``) and its features (``SITES``). Raises ValueError otherwise.
    """
    run, sites = values.get(S.RESULTS), values.get(S.SITES)
    if run is None or sites is None:
        raise ValueError("session: nothing to save yet; calibrate first")
    from core import __version__

    ev_meta, ev_arrays = evaluation_state(run.evaluation)
    raw = values.get(S.DATASET_RAW)
    origin = list(values.get(S.DATASET_ORIGIN) or ("upload", ""))
    document = {
        "created": (now or _dt.datetime.now()).isoformat(timespec="seconds"),
        "flexcal_version": __version__,
        "dataset": {"label": str(values.get(S.DATASET_LABEL) or ""), "key": str(values.get(S.DATASET_KEY) or ""),
                    "origin": [str(o) for o in origin], "embedded": raw is not None,
                    "name": str(origin[1]), "bytes": None if raw is None else len(raw)},
        "model": _model_reference(values),
        "widgets": {k: _plain(values.get(k, S.WIDGET_DEFAULTS.get(k))) for k in SESSION_WIDGETS},
        "run": {"settings": dict(run.settings), "provenance": dict(run.provenance), "note": str(run.note),
                "history": list(run.history), "stopped_early": bool(run.stopped_early),
                "seconds": float(run.seconds), "evaluation": ev_meta},
    }
    parts = {"calibration": run.cal.unique_structures, TEST: run.test.unique_structures}
    return pack(document, arrays={"evaluation": ev_arrays, "parts": parts}, tables={"sites": sites},
                files={"dataset": raw} if raw is not None else None)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _model_reference(values: Mapping[str, Any]) -> dict:
    key = values.get(S.SITES_KEY)
    ref = dict(values.get(S.MODEL_REF) or {})
    out = {"label": str(values.get(S.POTENTIAL_LABEL) or ""), "sites_key": [str(k) for k in key] if key else None,
           "choice": ref.get("choice"), "kind": ref.get("kind"), "value": ref.get("value"),
           "file": ref.get("file"), "sha256": ref.get("sha256")}
    if out["kind"] == "path" and out["value"] and not out["sha256"]:
        out["sha256"] = file_sha256(out["value"])
    return out


def file_sha256(path) -> str | None:
    """SHA-256 of a file's bytes (streamed), or None when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(Path(path).expanduser(), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def autosave(values: Mapping[str, Any], path=None) -> Path:
    """Write the session of ``values`` to ``path`` (default :func:`last_session_path`) atomically."""
    from core.io import atomic_write_bytes

    return atomic_write_bytes(Path(path) if path is not None else last_session_path(), session_bytes(values))


# =================================================================== reading
def read_session(data: bytes, *, source: str = "session file", max_bytes: int | None = None) -> SessionSnapshot:
    """Validate a session file and rebuild its calibration run; :class:`SessionFileError` otherwise."""
    from app.run import CalibrationRun

    bundle = unpack(data, source=source, max_bytes=max_session_bytes() if max_bytes is None else max_bytes)
    doc = bundle.document
    check = _Checker(source)
    ds, model, run = check.obj(doc, "dataset"), check.obj(doc, "model"), check.obj(doc, "run")
    for key in ("label", "key", "name"):
        check.text(ds, key, "dataset")
    origin = ds.get("origin")
    if not (isinstance(origin, list) and len(origin) == 2 and all(isinstance(o, str) for o in origin)):
        raise check.fail(f"dataset.origin: expected [kind, name], got {origin!r}")
    sites_key = model.get("sites_key")
    if not (isinstance(sites_key, list) and len(sites_key) == 2 and all(isinstance(k, str) for k in sites_key)):
        raise check.fail(f"model.sites_key: expected [dataset key, model identity], got {sites_key!r}")
    if sites_key[0] != ds["key"]:
        raise check.fail("model.sites_key: the features belong to another dataset than the one recorded")
    raw = bundle.files.get("dataset")
    if raw is not None and "upload:" + digest(raw) != ds["key"]:
        raise check.fail("the embedded dataset does not match the recorded content hash (edited after saving)")
    if "sites" not in bundle.tables or "parts" not in bundle.arrays or "evaluation" not in bundle.arrays:
        raise check.fail("sites, parts or evaluation is missing")
    sites = bundle.tables["sites"]
    try:
        cal, test = (sites.select_structures(bundle.arrays["parts"][p]) for p in ("calibration", TEST))
        ev = evaluation_from_state(check.obj(run, "evaluation", "run"), bundle.arrays["evaluation"],
                                   calibration=cal, tests={TEST: test})
    except (ValueError, TypeError, KeyError) as exc:
        raise check.fail(f"the saved calibration cannot be rebuilt ({exc})") from None
    history = run.get("history", [])
    if not isinstance(history, list) or not all(_is_epoch(h) for h in history):
        raise check.fail("run.history: expected a list of epochs {epoch, train_loss, val_loss}")
    for key in ("settings", "provenance"):  # shown and compared as they are: plain values only
        bad = [k for k, v in check.obj(run, key, "run").items() if not _is_plain(v)]
        if bad:
            raise check.fail(f"run.{key}: {bad[0]!r} is not a number, text or list of them")
    calibration = CalibrationRun(
        ev, settings=check.obj(run, "settings", "run"), provenance=check.obj(run, "provenance", "run"),
        note=str(run.get("note", "")), history=history, stopped_early=bool(run.get("stopped_early", False)),
        seconds=float(check.number(run, "seconds", "run")))
    widgets = check_widgets(check.obj(doc, "widgets"), source)
    return SessionSnapshot(doc, sites, calibration, widgets, raw, source)


def _is_plain(v) -> bool:
    scalar = (str, int, float, bool, type(None))
    return isinstance(v, scalar) or (isinstance(v, list) and len(v) <= 1000 and all(isinstance(x, scalar) for x in v))


def _is_epoch(h) -> bool:
    def num(v) -> bool:  # NaN allowed (no validation split)
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    return (isinstance(h, dict) and isinstance(h.get("epoch"), int) and num(h.get("train_loss"))
            and (h.get("val_loss") is None or num(h.get("val_loss"))))


class _Checker:
    """Type checks of session.json fields with one error style: ``<source>: <field>: expected ..., got ...``."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, why: str) -> SessionFileError:
        return SessionFileError(f"{self.source}: {DOCUMENT}: {why}")

    def obj(self, parent: Mapping, key: str, where: str = "") -> dict:
        value = parent.get(key)
        if not isinstance(value, dict):
            raise self.fail(f"{where + '.' if where else ''}{key}: expected an object, got {_kind(value)}")
        return value

    def text(self, parent: Mapping, key: str, where: str) -> str:
        value = parent.get(key)
        if not isinstance(value, str):
            raise self.fail(f"{where}.{key}: expected text, got {_kind(value)}")
        return value

    def number(self, parent: Mapping, key: str, where: str) -> float:
        value = parent.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"{where}.{key}: expected a number, got {_kind(value)}")
        return float(value)


def _kind(value) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]


def check_widgets(widgets: Mapping[str, Any], source: str = "session file") -> dict:
    """The saved widget values, each checked against :data:`SESSION_WIDGETS` (unknown keys ignored)."""
    out = {}
    for key, spec in SESSION_WIDGETS.items():
        if key not in widgets:
            continue
        value, kind = widgets[key], spec[0]
        ok = {
            "choice": lambda v: v in spec[1],
            "number": lambda v: _is_number(v) and spec[1] <= v <= spec[2],
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and spec[1] <= v <= spec[2],
            "text": lambda v: isinstance(v, str) and len(v) <= 4096,
            "optional text": lambda v: v is None or (isinstance(v, str) and len(v) <= 4096),
            "texts": lambda v: isinstance(v, list) and all(isinstance(x, str) and len(x) <= 200 for x in v),
            "numbers": lambda v: isinstance(v, list) and all(_is_number(x) and spec[1] < x < spec[2] for x in v),
            "bool": lambda v: isinstance(v, bool),
        }[kind](value)
        if not ok:
            want = (f"one of {list(spec[1])}" if kind == "choice" else f"a number in [{spec[1]}, {spec[2]}]"
                    if kind == "number" else f"a whole number in [{spec[1]}, {spec[2]}]" if kind == "int" else kind)
            raise SessionFileError(f"{source}: {DOCUMENT}: widgets.{key}: expected {want}, got {value!r}"[:400])
        out[key] = value
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


# ============================================================ summaries, model
def summary_text(document: Mapping[str, Any]) -> str:
    """ "dataset X, N methods, 2025-01-31 14:02" for the restore offer."""
    ds = document.get("dataset") if isinstance(document.get("dataset"), dict) else {}
    run = document.get("run") if isinstance(document.get("run"), dict) else {}
    ev = run.get("evaluation") if isinstance(run.get("evaluation"), dict) else {}
    labels = ev.get("labels") if isinstance(ev.get("labels"), list) else []
    created = str(document.get("created", "")).replace("T", " ")[:16]
    n = len(labels)
    return f"dataset {ds.get('label') or '?'}, {n} method{'s' if n != 1 else ''}, {created or 'date unknown'}"


def peek(path, *, limit: int = 16 * 1024**2) -> dict | None:
    """The ``session.json`` of a session file without reading the rest (None when unreadable)."""
    try:
        with zipfile.ZipFile(Path(path)) as zf:
            info = zf.getinfo(DOCUMENT)
            if info.file_size > limit:
                return None
            doc = json.loads(zf.read(info).decode("utf-8"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError, RuntimeError):
        return None
    return doc if isinstance(doc, dict) else None


def model_notes(document: Mapping[str, Any]) -> list[str]:
    """What a user must know about the restored session's model (nothing is loaded by a restore)."""
    model = document.get("model") if isinstance(document.get("model"), dict) else {}
    kind, value, label = model.get("kind"), model.get("value"), model.get("label") or "the model"
    if kind == "path" and isinstance(value, str):
        now = file_sha256(value)
        if now is None:
            return [f"The model file {value} is not on this machine: results and features come from the session; "
                    "featurizing again needs that file."]
        if model.get("sha256") and now != model.get("sha256"):
            return [f"The model file {value} changed since this session was saved: featurizing again would use the "
                    "new file and discard these results."]
        return [f"Model {label} ({value}): not loaded. Featurizing again asks you to trust the file first."]
    if kind == "upload":
        return [f"Model {label} was an uploaded file ({model.get('file') or 'name unknown'}): it is not stored in "
                "sessions (model files run code). Upload it again and tick “I trust this file” to featurize."]
    return []


# ============================================================= restoring
def resolve_dataset(snap: SessionSnapshot, *, current_key: str | None, current_dataset,
                    load_demo: Callable[[str, str], tuple], read_upload: Callable[[bytes, str], Any]):
    """The Dataset the session was calibrated on: the one loaded now, a demo, or the embedded upload.

    ``load_demo(kind, name) -> (dataset, key)`` and ``read_upload(bytes, name) -> dataset`` are the
    app's cached readers. Raises :class:`SessionFileError` when the data cannot be matched.
    """
    ds = snap.document["dataset"]
    key, (kind, name) = ds["key"], ds["origin"]
    if current_dataset is not None and current_key == key:
        return current_dataset
    if kind in (DEMO, SYNTHETIC):
        dataset, now = load_demo(kind, name)
        if now != key:
            raise SessionFileError(f"{snap.source}: the demo dataset {ds['label']} installed here differs from the "
                                   "one this session was calibrated on (content hash); recalibrate instead")
        return dataset
    if snap.dataset_bytes is not None:
        return read_upload(snap.dataset_bytes, name)
    raise SessionFileError(
        f"{snap.source}: the dataset {name or ds['label']} is not inside this session file (larger than the "
        f"{embed_limit_bytes() / 1024**2:.0f} MB embedding limit) and is not the dataset loaded now. Upload "
        f"{name or 'that file'} on the Data page, then load the session again (a different file is refused).")


def restored_values(snap: SessionSnapshot, dataset) -> dict[str, Any]:
    """The ``st.session_state`` entries of a restored session (see :func:`app.state.restore_session`).

    The trust boxes are unticked: a restore never loads a model file, and featurizing again
    asks for trust as for a fresh upload.
    """
    ds, model = snap.document["dataset"], snap.document["model"]
    values: dict[str, Any] = {
        S.DATASET: dataset, S.DATASET_KEY: ds["key"], S.DATASET_LABEL: ds["label"],
        S.DATASET_ORIGIN: tuple(ds["origin"]), S.DATASET_RAW: snap.dataset_bytes,
        S.SITES: snap.sites, S.SITES_KEY: tuple(model["sites_key"]), S.POTENTIAL_LABEL: str(model.get("label", "")),
        S.MODEL_REF: {k: model.get(k) for k in ("choice", "kind", "value", "file", "sha256")},
        S.RESULTS: snap.run, S.AUTOSAVED: snap.run.token, S.URL_DEMO_DONE: True,
        S.W_TRUST: False, S.W_TRUST_PATH: False,
    }
    widgets = dict(snap.widgets)
    types = set(getattr(dataset, "config_types", []) or [])
    for key in (S.W_CAL_TYPES, S.W_TEST_TYPES):  # only config types this dataset has
        if key in widgets:
            widgets[key] = [t for t in widgets[key] if t in types]
    if S.W_LEVELS in widgets:
        from core.calibration.flexible import DEFAULT_LEVELS

        grid = [float(p) for p in DEFAULT_LEVELS]
        widgets[S.W_LEVELS] = [x for x in grid if any(abs(x - float(v)) < 1e-9 for v in widgets[S.W_LEVELS])]
    values.update(widgets)
    return values


def load_into_state(data: bytes, *, source: str, current: Mapping[str, Any], load_demo, read_upload
                    ) -> tuple[dict[str, Any], SessionSnapshot]:
    """Read, validate and resolve a session file: (state entries to set, snapshot). Raises SessionFileError."""
    snap = read_session(data, source=source)
    dataset = resolve_dataset(snap, current_key=current.get(S.DATASET_KEY), current_dataset=current.get(S.DATASET),
                              load_demo=load_demo, read_upload=read_upload)
    return restored_values(snap, dataset), snap


def read_file(path, *, source: str | None = None) -> bytes:
    """The bytes of a session file on disk, refused above :func:`max_session_bytes` before reading."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_session_bytes():
        raise SessionFileError(f"{source or path.name}: the file is {size / 1024**2:.1f} MB, over the "
                               f"{max_session_bytes() / 1024**2:.1f} MB limit for session files")
    with open(path, "rb") as fh:
        return fh.read()
