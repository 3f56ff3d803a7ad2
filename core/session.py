"""Session bundles: one zip of a JSON document and ``.npz`` members, never a pickle.

A bundle is what the app's session files are made of (:mod:`app.session` decides what goes in):

* ``session.json`` — the document (``format``, ``version``, the caller's fields) and a
  manifest ``members`` = ``{name: {"sha256": hex, "bytes": size}}`` of every other member;
* ``<name>.npz`` — numeric arrays (``np.savez_compressed``; read with ``allow_pickle=False``);
* ``<name>.sites.npz`` — a :class:`core.sites.SiteTable` (its own ``.npz`` format);
* any other ``<name>`` — raw bytes (e.g. an embedded dataset file).

A bundle is untrusted input when read: :func:`unpack` bounds its size (the file and what it
expands to: a zip bomb is refused before it is inflated), refuses unknown or missing members,
a member whose hash differs from the manifest (edited after saving), bad JSON, a foreign or
newer format, object arrays and any dtype but bool/int/float/str. Every error is a
:class:`SessionFileError` (a ValueError) whose message starts with the file's name.

:func:`evaluation_state` / :func:`evaluation_from_state` turn a :class:`core.evaluation.Evaluation`
into JSON + arrays and back: fitted calibrators through their own no-pickle state
(``Calibrator.get_state`` / ``calibrator_from_state``), widths at every level, the
out-of-domain score and flags, and the reports as written (so every metric is identical after
a round trip, without refitting). The sites are not part of it: the caller stores them once and
hands back the calibration and test tables, which are checked against a fingerprint.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from core.sites import SiteTable

__all__ = ["FORMAT", "VERSION", "DEFAULT_MAX_BYTES", "SessionFileError", "Bundle", "pack", "unpack",
           "evaluation_state", "evaluation_from_state", "sites_fingerprint"]

FORMAT = "flexcal.session"
VERSION = 1
DOCUMENT = "session.json"
DEFAULT_MAX_BYTES = 1 << 30        # 1 GiB: the file and, separately, everything it expands to
MAX_MEMBERS = 32
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_ARRAY_KINDS = "biufU"             # bool, int, uint, float, unicode: nothing that needs pickle
_SITES_SUFFIX = ".sites.npz"


class SessionFileError(ValueError):
    """A session file that cannot be used (damaged, edited, foreign, too large); the message says why."""


@dataclass
class Bundle:
    """What :func:`unpack` read: the JSON document, array members, site tables and raw files."""

    document: dict
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    tables: dict[str, SiteTable] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


# ======================================================================= writing
def pack(document: Mapping[str, Any], *, arrays: Mapping[str, Mapping[str, np.ndarray]] | None = None,
         tables: Mapping[str, SiteTable] | None = None, files: Mapping[str, bytes] | None = None) -> bytes:
    """The bytes of one session bundle (a zip); see the module docstring for its members.

    ``document`` must be JSON-serialisable (NaN and ±inf are kept); ``arrays[name]`` is a dict
    of plain numeric or string arrays; ``tables[name]`` a SiteTable; ``files[name]`` raw bytes.
    Names: letters, digits, ``._-`` (at most 100 characters).
    """
    members: dict[str, bytes] = {}
    for name, group in (arrays or {}).items():
        members[_checked_name(name) + ".npz"] = _npz_bytes(name, group)
    for name, table in (tables or {}).items():
        members[_checked_name(name) + _SITES_SUFFIX] = _table_bytes(table)
    for name, data in (files or {}).items():
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"files[{name!r}]: expected bytes, got {type(data).__name__}")
        members[_checked_name(name)] = bytes(data)
    if DOCUMENT in members or len(members) >= MAX_MEMBERS:
        raise ValueError(f"members: at most {MAX_MEMBERS - 1} members, none named {DOCUMENT!r}; got {sorted(members)}")
    doc = {**dict(document), "format": FORMAT, "version": VERSION,
           "members": {k: {"sha256": hashlib.sha256(v).hexdigest(), "bytes": len(v)} for k, v in members.items()}}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(DOCUMENT, json.dumps(doc, default=_json_default, allow_nan=True, indent=1))
        for name, data in members.items():  # npz members are compressed already
            zf.writestr(name, data, compress_type=zipfile.ZIP_STORED if name.endswith(".npz")
                        else zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def _checked_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(f"member name: expected letters, digits and ._- (at most 100), got {name!r}")
    return name


def _npz_bytes(name: str, group: Mapping[str, np.ndarray]) -> bytes:
    payload = {}
    for key, value in group.items():
        arr = np.asarray(value)
        if arr.dtype.kind not in _ARRAY_KINDS:
            raise TypeError(f"arrays[{name!r}][{key!r}]: dtype {arr.dtype} cannot be stored without pickle")
        payload[str(key)] = arr
    buf = io.BytesIO()
    np.savez_compressed(buf, **payload)
    return buf.getvalue()


def _table_bytes(table: SiteTable) -> bytes:
    if not isinstance(table, SiteTable):
        raise TypeError(f"tables: expected SiteTable values, got {type(table).__name__}")
    with tempfile.TemporaryDirectory(prefix="flexcal-session-") as tmp:
        return table.save(Path(tmp) / "sites.npz").read_bytes()


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ======================================================================= reading
def unpack(data: bytes, *, source: str = "session file", max_bytes: int = DEFAULT_MAX_BYTES) -> Bundle:
    """Read and validate a bundle written by :func:`pack`; :class:`SessionFileError` otherwise.

    ``max_bytes`` bounds the file and, separately, the total size its members (and the arrays
    inside the ``.npz`` members) expand to; both are checked before anything is inflated.
    """
    def fail(why: str) -> SessionFileError:
        return SessionFileError(f"{source}: {why}")

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data: expected the bytes of a session file, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise fail(f"the file is {_mb(len(data))}, over the {_mb(max_bytes)} limit for session files")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise fail(f"not a FlexCal session file (not a readable zip archive: {exc})") from None
    with zf:
        names = [i.filename for i in infos]
        if DOCUMENT not in names:
            raise fail(f"not a FlexCal session file (no {DOCUMENT} inside)")
        if len(infos) > MAX_MEMBERS or len(set(names)) != len(names):
            raise fail(f"{len(infos)} members (or repeated names); a session file has at most {MAX_MEMBERS}")
        total = sum(i.file_size for i in infos)
        if total > max_bytes:
            raise fail(f"its members expand to {_mb(total)}, over the {_mb(max_bytes)} limit")
        raw = {n: _read_member(zf, n, fail) for n in names}
    document = _document(raw.pop(DOCUMENT), fail)
    manifest = document["members"]
    extra, missing = sorted(set(raw) - set(manifest)), sorted(set(manifest) - set(raw))
    if extra or missing:
        raise fail(f"members do not match its manifest (unexpected: {extra}; missing: {missing})")
    bundle = Bundle(document=document)
    budget = max_bytes
    for name, blob in raw.items():
        entry = manifest[name]
        if not isinstance(entry, dict) or entry.get("sha256") != hashlib.sha256(blob).hexdigest():
            raise fail(f"member {name} was changed after the session was saved (its SHA-256 does not match)")
        if name.endswith(_SITES_SUFFIX):
            budget -= _inner_size(blob, name, fail, budget)
            bundle.tables[name[: -len(_SITES_SUFFIX)]] = _read_table(blob, name, fail)
        elif name.endswith(".npz"):
            budget -= _inner_size(blob, name, fail, budget)
            bundle.arrays[name[:-4]] = _read_npz(blob, name, fail)
        else:
            bundle.files[name] = blob
    return bundle


def _mb(n: int) -> str:
    return f"{n / 1024**2:.1f} MB"


def _read_member(zf: zipfile.ZipFile, name: str, fail) -> bytes:
    if not _NAME.match(name) or ".." in name:
        raise fail(f"unexpected member name {name!r}")
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError) as exc:
        raise fail(f"member {name} is damaged ({type(exc).__name__}: {exc})") from None


def _document(blob: bytes, fail) -> dict:
    try:
        doc = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise fail(f"{DOCUMENT} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise fail(f"format is {got!r}, expected {FORMAT!r}")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise fail(f"version: expected a positive whole number, got {version!r}")
    if version > VERSION:
        raise fail(f"session format version {version} is newer than this FlexCal reads ({VERSION}); update FlexCal")
    if not isinstance(doc.get("members"), dict):
        raise fail(f"members: expected an object (the manifest), got {type(doc.get('members')).__name__}")
    return doc


def _inner_size(blob: bytes, name: str, fail, budget: int) -> int:
    """Total uncompressed size of an ``.npz`` member's arrays, refused above ``budget``."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as inner:
            size = sum(i.file_size for i in inner.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise fail(f"member {name} is not a readable .npz ({exc})") from None
    if size > budget:
        raise fail(f"member {name} expands to {_mb(size)}, over what is left of the limit ({_mb(max(budget, 0))})")
    return size


def _read_npz(blob: bytes, name: str, fail) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():  # never suggest loading it unsafely
            raise fail(f"member {name} holds an object array; session files hold plain numbers only") from None
        raise fail(f"member {name} is not a readable .npz ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError) as exc:
        raise fail(f"member {name} is not a readable .npz ({type(exc).__name__}: {exc})") from None
    for key, arr in out.items():
        if arr.dtype.kind not in _ARRAY_KINDS:
            raise fail(f"member {name}: array {key!r} has dtype {arr.dtype}; expected numbers or text")
    return out


def _read_table(blob: bytes, name: str, fail) -> SiteTable:
    with tempfile.TemporaryDirectory(prefix="flexcal-session-") as tmp:
        path = Path(tmp) / "sites.npz"
        path.write_bytes(blob)
        try:
            return SiteTable.load(path)
        except (ValueError, TypeError, KeyError, IndexError, OSError) as exc:
            why = str(exc).replace(str(path), name)
            if "pickle" in why.lower():
                why = "it holds an object array; session files hold plain numbers only"
            raise fail(f"member {name} is not a usable site table ({why})") from None


# ================================================================ the Evaluation
def sites_fingerprint(sites: SiteTable) -> str:
    """SHA-256 of which sites a table holds, in order (structure ids, atom indices, species, errors)."""
    h = hashlib.sha256()
    for arr in (sites.structure_ids, sites.atom_index, sites.species, sites.errors):
        if arr is not None:
            a = np.ascontiguousarray(arr)
            h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def evaluation_state(ev) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON meta, arrays) of a :class:`core.evaluation.Evaluation`, without its sites.

    Meta: confidence, levels, seed, variants (label, method, options), fit seconds, notes,
    the fitted calibrators' own state meta, the domain score's, the reports (NaN kept) and
    each part's ``structure_ids`` / size / :func:`sites_fingerprint`. Arrays: the calibrators'
    arrays (``cal<i>__``), widths (``widths__<i>__<j>``), widths at levels (``levels__<i>__<j>``),
    split-CP reference widths (``reference__<j>``), out-of-domain flags (``ood__<j>``) and the
    domain score's arrays (``domain__``); ``i`` indexes fitted labels, ``j`` test splits.
    """
    from core.calibration.base import nest_arrays

    labels, splits = ev.labels, ev.splits
    arrays: dict[str, np.ndarray] = {}
    calibrators = []
    for i, label in enumerate(labels):
        meta, arr = ev.calibrators[label].get_state()
        calibrators.append(meta)
        arrays.update(nest_arrays(f"cal{i}", arr))
        for j, split in enumerate(splits):
            arrays[f"widths__{i}__{j}"] = np.asarray(ev.widths[(label, split)], dtype=np.float64)
            at = ev.widths_at_levels.get((label, split))
            if at is not None:
                arrays[f"levels__{i}__{j}"] = np.asarray(at, dtype=np.float64)
    for j, split in enumerate(splits):
        arrays[f"reference__{j}"] = np.asarray(ev.reference_widths[split], dtype=np.float64)
        if ev.ood.get(split) is not None:
            arrays[f"ood__{j}"] = np.asarray(ev.ood[split], dtype=bool)
    domain = None
    if ev.domain is not None:
        domain, darr = ev.domain.get_state()
        arrays.update(nest_arrays("domain", darr))
    parts = {"calibration": ev.calibration, **{f"test:{s}": ev.tests[s] for s in splits}}
    meta = {
        "confidence": float(ev.confidence), "levels": [float(x) for x in ev.levels], "seed": int(ev.seed),
        "variants": [{"label": v.label, "method": v.method, "options": dict(v.options)} for v in ev.variants],
        "labels": labels, "splits": splits, "calibrators": calibrators, "domain": domain,
        "fit_seconds": {k: float(v) for k, v in ev.fit_seconds.items()}, "notes": dict(ev.notes),
        "reports": [[label, split, ev.reports[(label, split)]] for (label, split) in ev.reports],
        "parts": {name: {"n_sites": len(t), "fingerprint": sites_fingerprint(t)} for name, t in parts.items()},
    }
    return meta, arrays


def evaluation_from_state(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *, calibration: SiteTable,
                          tests: Mapping[str, SiteTable]):
    """Rebuild the :class:`core.evaluation.Evaluation` of :func:`evaluation_state` on its own sites.

    ``calibration`` and ``tests`` must be the very tables it was computed on (same sites in the
    same order: checked with :func:`sites_fingerprint`). Raises ValueError naming what does not
    fit (a damaged state: wrong shapes, unknown calibrator kind, missing entries).
    """
    try:
        return _rebuild_evaluation(meta, arrays, calibration, tests)
    except (KeyError, TypeError, IndexError, AttributeError, RuntimeError, OverflowError) as exc:
        # RuntimeError: e.g. torch refusing q_θ weights of the wrong shape
        raise ValueError(f"evaluation state: damaged ({type(exc).__name__}: {str(exc)[:300]})") from None


def _rebuild_evaluation(meta, arrays, calibration, tests):
    from core.calibration.base import calibrator_from_state, nested_arrays
    from core.evaluation import Evaluation, Variant

    splits, labels = [str(s) for s in meta["splits"]], [str(lab) for lab in meta["labels"]]
    parts = {"calibration": calibration, **{f"test:{s}": tests.get(s) for s in splits}}
    for name, table in parts.items():
        want = meta["parts"][name]
        if not isinstance(table, SiteTable) or sites_fingerprint(table) != want["fingerprint"]:
            raise ValueError(f"evaluation state: the {name} sites given are not the ones it was computed on "
                             f"(expected {want['n_sites']} sites with fingerprint {str(want['fingerprint'])[:12]}…)")
    levels = np.asarray(meta["levels"], dtype=np.float64)
    variants = [Variant(str(v["label"]), str(v["method"]), dict(v["options"])) for v in meta["variants"]]
    ev = Evaluation(calibration=calibration, tests={s: tests[s] for s in splits}, confidence=float(meta["confidence"]),
                    levels=levels, seed=int(meta["seed"]), variants=variants,
                    fit_seconds={str(k): float(v) for k, v in meta["fit_seconds"].items()},
                    notes={str(k): str(v) for k, v in meta["notes"].items()})
    if sorted(labels) != sorted(v.label for v in variants if v.label in labels) or len(meta["calibrators"]) != len(labels):
        raise ValueError(f"evaluation state: fitted labels {labels} do not match its variants and calibrators")
    for i, label in enumerate(labels):
        ev.calibrators[label] = calibrator_from_state(meta["calibrators"][i], nested_arrays(f"cal{i}", dict(arrays)))
        for j, split in enumerate(splits):
            n = len(tests[split])
            ev.widths[(label, split)] = _shaped(arrays, f"widths__{i}__{j}", (n,))
            key = f"levels__{i}__{j}"
            ev.widths_at_levels[(label, split)] = _shaped(arrays, key, (n, levels.size)) if key in arrays else None
    for j, split in enumerate(splits):
        n = len(tests[split])
        ev.reference_widths[split] = _shaped(arrays, f"reference__{j}", (n,))
        ev.ood[split] = _shaped(arrays, f"ood__{j}", (n,), bool) if f"ood__{j}" in arrays else None
    if meta.get("domain") is not None:
        from core.domain import DomainScore

        ev.domain = DomainScore.from_state(meta["domain"], nested_arrays("domain", dict(arrays)))
    for label, split, report in meta["reports"]:
        if label not in labels or split not in splits or not isinstance(report, dict):
            raise ValueError(f"evaluation state: a report for an unknown method/split ({label!r}, {split!r})")
        ev.reports[(str(label), str(split))] = _checked_report(label, report)
    return ev


def _is_num(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, str))


def _checked_report(label: str, report: dict) -> dict:
    """A report read back: numbers (or None) everywhere, except ``*_note`` texts, intervals
    (lists of numbers) and per-group coverages (text -> number); anything else is refused."""
    for key, value in report.items():
        ok = (_is_num(value)
              or (str(key).endswith("note") and isinstance(value, str) and len(value) <= 2000)
              or (isinstance(value, list) and len(value) <= 1000 and all(_is_num(v) for v in value))
              or (isinstance(value, dict) and len(value) <= 10_000
                  and all(isinstance(k, str) and _is_num(v) for k, v in value.items())))
        if not ok:
            raise ValueError(f"evaluation state: report of {label!r}: {key!r} has an unexpected value "
                             f"{str(value)[:60]!r}")
    return report


def _shaped(arrays: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    if key not in arrays:
        raise ValueError(f"evaluation state: array {key!r} is missing")
    arr = np.asarray(arrays[key])
    if arr.shape != shape or (dtype is bool) != (arr.dtype == bool):
        raise ValueError(f"evaluation state: array {key!r} has shape {arr.shape} and dtype {arr.dtype}, "
                         f"expected shape {shape}")
    return arr.astype(dtype, copy=False)
