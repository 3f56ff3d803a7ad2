"""Exports of calibrated results: per-site tables, annotated extxyz, calibrator, HTML report.

Pure functions returning bytes/str so that the app (download buttons), notebooks
and the CLI can all write them (write files with :mod:`core.io`, atomically). Units:
errors and widths in eV/Å, energies in eV.

* :func:`site_frame` / :func:`evaluation_frame` — one row per site (the latter with each
  method of an :class:`core.evaluation.Evaluation` and the part every site was in);
  :func:`table_bytes` as CSV or Parquet.
* :func:`annotated_extxyz` — structures with per-atom ``flexcal_width`` / ``flexcal_error``.
* :func:`calibrator_bytes` — a fitted calibrator's pickle-free ``.npz``.
* :func:`provenance_frame` + :func:`html_report` — a self-contained HTML page that records
  what produced it (dataset, model, split, seed, methods, date, FlexCal version).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from core.tables import MISSING

WIDTH_ARRAY = "flexcal_width"
ERROR_ARRAY = "flexcal_error"
TABLE_FORMATS = ("csv", "parquet")
UNUSED = "unused"


def _check_per_site(name: str, values, n: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) (one value per site), got {arr.shape}")
    return arr


def site_frame(sites, widths: Mapping[str, np.ndarray] | None = None, *, confidence: float | None = None,
               split: np.ndarray | None = None, include_descriptors: bool = False):
    """One row per site: ids, species, error, forces, config type and per-method widths.

    Parameters
    ----------
    sites : core.sites.SiteTable
        n sites.
    widths : dict of str -> ndarray of shape (n,), optional
        Half-widths (eV/Å) per method; adds columns ``width_<method>`` and
        ``covered_<method>`` (error <= width).
    confidence : float, optional
        Stored in a ``confidence`` column when given.
    split : ndarray of str, shape (n,), optional
        E.g. "calibration"/"test" per site.
    include_descriptors : bool
        Append descriptor columns ``d_0 .. d_{d-1}``.

    Returns
    -------
    pandas.DataFrame
    """
    import pandas as pd
    from ase.data import chemical_symbols

    n = len(sites)
    cols: dict[str, object] = {
        "structure_id": sites.structure_ids,
        "atom_index": sites.atom_index,
        "species": sites.species,
        "symbol": np.array([chemical_symbols[z] for z in sites.species]),
    }
    if "config_type" in sites.structure_info:
        cols["config_type"] = sites.structure_column("config_type").astype(str)
    if split is not None:
        split = np.asarray(split)
        if split.shape != (n,):
            raise ValueError(f"split: expected shape ({n},), got {split.shape}")
        cols["split"] = split
    if sites.errors is not None:  # unlabelled sites (errors=None) have no error column
        cols["error"] = sites.errors
    for name, arr in (("force_pred", sites.forces_pred), ("force_ref", sites.forces_ref)):
        if arr is not None:
            for k, ax in enumerate("xyz"):
                cols[f"{name}_{ax}"] = arr[:, k]
    if confidence is not None:
        cols["confidence"] = np.full(n, float(confidence))
    for method, w in (widths or {}).items():
        w = _check_per_site(f"widths[{method!r}]", w, n)
        cols[f"width_{method}"] = w
        if sites.errors is not None:
            cols[f"covered_{method}"] = sites.errors <= w
    if include_descriptors:
        for j in range(sites.n_descriptors):
            cols[f"d_{j}"] = sites.descriptors[:, j]
    return pd.DataFrame(cols)


def site_parts(sites, parts: Mapping[str, object], default: str = UNUSED) -> np.ndarray:
    """The part each site belongs to, (n,) str: the name of the SiteTable in ``parts`` holding its structure.

    ``parts``: e.g. ``{"calibration": cal_sites, "test": test_sites}`` (disjoint structures);
    sites of structures in none of them get ``default``.
    """
    out = np.full(len(sites), default, dtype=object)
    for name, part in parts.items():
        out[np.isin(sites.structure_ids, part.unique_structures)] = str(name)
    return out.astype(str)


def evaluation_frame(evaluation, sites=None, *, include_descriptors: bool = False):
    """Every site with its part (calibration / test split / unused) and each fitted method's width.

    Parameters
    ----------
    evaluation : core.evaluation.Evaluation
        Fitted calibrators (``evaluation.calibrators``) and the parts they were fitted and
        scored on.
    sites : core.sites.SiteTable, optional
        The sites to describe (e.g. the whole dataset); default: the calibration sites.
        Each calibrator predicts on them (calibration-part widths are in-sample).

    Returns
    -------
    pandas.DataFrame
        :func:`site_frame` columns with ``split`` and ``width_<label>`` / ``covered_<label>``.
    """
    sites = evaluation.calibration if sites is None else sites
    parts = {"calibration": evaluation.calibration, **evaluation.tests}
    widths = {lab: np.asarray(evaluation.calibrators[lab].predict(sites), dtype=np.float64)
              for lab in evaluation.labels}
    return site_frame(sites, widths, confidence=evaluation.confidence, split=site_parts(sites, parts),
                      include_descriptors=include_descriptors)


def table_bytes(frame, fmt: str, *, readable: bool = False) -> bytes:
    """A DataFrame as ``"csv"`` or ``"parquet"`` bytes; ValueError naming ``fmt`` otherwise.

    Columns keep their stable snake_case keys (for scripts); what each key means and its unit
    is in :func:`core.tables.descriptions_json` (the sidecar) and, for Parquet, in the file's
    schema metadata under ``flexcal.columns``. ``readable=True``: CSV headers are the readable
    labels with units (``"Mean width (eV/Å)"``), values unchanged (missing = empty cell).
    """
    if fmt == "csv":
        if readable:
            from core.tables import readable_table

            frame = readable_table(frame)
        return csv_bytes(frame)
    if fmt == "parquet":
        return parquet_bytes(frame)
    raise ValueError(f"fmt: expected one of {TABLE_FORMATS}, got {fmt!r}")


def csv_bytes(frame) -> bytes:
    """A DataFrame as UTF-8 CSV bytes (no index)."""
    return frame.to_csv(index=False).encode()


def parquet_bytes(frame) -> bytes:
    """A DataFrame as Parquet bytes (pyarrow), column descriptions in the schema metadata (``flexcal.columns``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.tables import descriptions_json

    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"flexcal.columns"] = descriptions_json(frame)
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buf)
    return buf.getvalue()


def annotated_extxyz(structures: Sequence, sites, widths, *, errors=None, structure_ids=None,
                     method: str | None = None, confidence: float | None = None) -> bytes:
    """Extended XYZ of the structures with per-atom ``flexcal_width`` / ``flexcal_error``.

    Parameters
    ----------
    structures : list of ase.Atoms
        The structures that were featurized: ``sites.structure_ids`` are positions
        in this list (as ``core.featurize`` numbers them).
    sites : core.sites.SiteTable
        n sites of (some of) those structures.
    widths : ndarray of shape (n,)
        Calibrated half-widths, eV/Å.
    errors : ndarray of shape (n,), optional
        Defaults to ``sites.errors`` (eV/Å).
    structure_ids : iterable of int, optional
        Which structures to write (default: every structure in ``sites``).
    method, confidence : optional
        Recorded in each frame's ``info`` as ``flexcal_method`` / ``flexcal_confidence``.

    Returns
    -------
    bytes
        Atoms without a site row get NaN. Each frame also carries
        ``info["flexcal_max_width"]`` and ``info["flexcal_max_error"]``.
    """
    from ase.io import write

    n = len(sites)
    widths = _check_per_site("widths", widths, n)
    errors = sites.errors if errors is None else _check_per_site("errors", errors, n)
    present = set(sites.unique_structures.tolist())
    wanted = sites.unique_structures if structure_ids is None else np.unique(np.asarray(structure_ids, dtype=np.int64))
    frames = []
    for sid in wanted:
        sid = int(sid)
        if sid not in present:
            raise ValueError(f"structure_ids: structure {sid} has no sites in this table")
        if not 0 <= sid < len(structures):
            raise ValueError(f"structure {sid}: outside the {len(structures)} structures given")
        atoms = structures[sid].copy()
        atoms.calc = None
        w = np.full(len(atoms), np.nan)
        e = np.full(len(atoms), np.nan)
        m = sites.structure_ids == sid
        idx = sites.atom_index[m]
        if idx.size and idx.max() >= len(atoms):
            raise ValueError(f"structure {sid}: atom index {int(idx.max())} but the structure has {len(atoms)} atoms")
        w[idx] = widths[m]
        if errors is not None:  # unlabelled sites: errors stay NaN
            e[idx] = errors[m]
        atoms.arrays[WIDTH_ARRAY] = w
        atoms.arrays[ERROR_ARRAY] = e
        atoms.info["flexcal_structure_id"] = sid
        atoms.info["flexcal_max_width"] = float(np.nanmax(w)) if np.isfinite(w).any() else float("nan")
        atoms.info["flexcal_max_error"] = float(np.nanmax(e)) if np.isfinite(e).any() else float("nan")
        if method is not None:
            atoms.info["flexcal_method"] = str(method)
        if confidence is not None:
            atoms.info["flexcal_confidence"] = float(confidence)
        frames.append(atoms)
    buf = io.StringIO()
    write(buf, frames, format="extxyz")
    return buf.getvalue().encode()


def calibrator_bytes(calibrator) -> bytes:
    """The fitted calibrator's ``save()`` file (one pickle-free ``.npz``) as bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = calibrator.save(Path(tmp) / "calibrator.npz")
        return Path(path).read_bytes()


PROVENANCE_FIELDS = ("dataset", "dataset hash", "model", "model identity", "split", "seed", "methods",
                     "confidence")
NOT_RECORDED = MISSING  # one mark for missing everywhere
_ALIASES = {"seed": ("seed", "split seed"), "split": ("split", "split mode")}


def sites_fingerprint(sites) -> str:
    """sha256 (first 20 hex digits) of a SiteTable's content: structure ids, atom indices,
    species, reference forces (or errors) and descriptors; identifies the data behind a result."""
    import hashlib

    h = hashlib.sha256()
    for arr in (sites.structure_ids, sites.atom_index, sites.species, sites.forces_ref, sites.errors,
                sites.descriptors):
        if arr is not None:
            a = np.ascontiguousarray(arr)
            h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()[:20]


def _from_sites(sites) -> dict:
    meta = dict(getattr(sites, "meta", None) or {})
    found = {"dataset": meta.get("source"), "model": meta.get("potential"),
             "model identity": meta.get("potential_identity")}
    found["dataset hash"] = f"{sites_fingerprint(sites)} (sites fingerprint)"
    return {k: v for k, v in found.items() if v not in (None, "")}


def provenance_frame(fields: Mapping[str, object], *, now=None, sites=None):
    """What produced a result, as a (field, value) table that lets someone reproduce it.

    Rows: :data:`PROVENANCE_FIELDS` first and always (dataset, dataset hash, model, model
    identity, split, seed, methods, confidence; :data:`NOT_RECORDED` when unknown), then the
    other ``fields`` (keys starting with "_" are internal and skipped), then the date and the
    FlexCal version. ``sites`` (a SiteTable the result was computed on) fills what ``fields``
    lacks: dataset source, model name and identity from ``sites.meta``, and a content
    fingerprint as the dataset hash. Values are shown as text (lists joined by ", ", None as
    "—"). ``now``: a ``datetime`` (default: now, UTC).
    """
    import datetime

    import pandas as pd

    from core import __version__
    from core.tables import format_value

    if not isinstance(fields, Mapping):
        raise TypeError(f"fields: expected a mapping of field -> value, got {type(fields).__name__}")
    given = {str(k): v for k, v in fields.items() if not str(k).startswith("_")}
    known = _from_sites(sites) if sites is not None else {}
    rows, used = [], set()
    for name in PROVENANCE_FIELDS:
        keys = [k for k in _ALIASES.get(name, (name,)) if given.get(k) not in (None, "", [], ())]
        value = given[keys[0]] if keys else known.get(name)
        used.update(keys[:1])
        rows.append((name, NOT_RECORDED if value in (None, "", [], ()) else format_value(value, 6)))
    rows += [(k, format_value(v, 6)) for k, v in given.items() if k not in used and k not in PROVENANCE_FIELDS]
    now = now or datetime.datetime.now(datetime.timezone.utc)
    rows += [("date", now.strftime("%Y-%m-%d %H:%M %Z").strip()), ("FlexCal version", str(__version__))]
    return pd.DataFrame(rows, columns=["field", "value"]).set_index("field")


def html_report(figures: Sequence[tuple[str, object]], tables: Sequence[tuple[str, object]],
                title: str = "FlexCal calibration report", *, provenance: Mapping[str, object] | None = None,
                sites=None) -> str:
    """A self-contained HTML page of the figures and tables (plotly.js inlined, no CDN).

    Tables are shown for people (:func:`core.tables.text_table`: labels with units, "—" for
    missing, every column). ``provenance``: fields for :func:`provenance_frame` (with ``sites``),
    put first as "What produced this report" (pass it, or a provenance table as the first of
    ``tables``, so the page can be reproduced).
    """
    from core.figures import figures_to_html
    from core.tables import text_table

    shown = [(t, text_table(df)) for t, df in tables]
    if provenance is not None:
        shown.insert(0, ("What produced this report", text_table(provenance_frame(provenance, sites=sites))))
    return figures_to_html(list(figures), shown, title)
