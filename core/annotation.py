"""Annotation: calibrated per-atom widths of annotated structures, their per-frame summary and exports.

Made by :func:`core.apply.annotate` (structures + potential + calibrator) or
:func:`core.apply.annotate_sites` (a SiteTable + calibrator); see :mod:`core.apply`. Holds
per-site widths (eV/Å) and flags, per-frame maxima/means/flags, and writes annotated extxyz
and csv/parquet tables atomically (:mod:`core.io`). Also the per-frame grouping helpers both
modules use (sites grouped by structure id with ``ufunc.reduceat``, no Python loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.sites import SiteTable

__all__ = ["Annotation", "level_suffix", "check_threshold", "frame_flags", "frame_groups", "reduce_frames",
           "argmax_atoms", "frame_rows", "table_suffix", "WIDTH_ARRAY", "OOD_ARRAY", "ERROR_ARRAY",
           "FRAME_COLUMNS", "TABLE_SUFFIXES"]

WIDTH_ARRAY = "flexcal_width"
OOD_ARRAY = "flexcal_ood"
ERROR_ARRAY = "flexcal_error"
#: Columns of :meth:`Annotation.frame_table` always present (labelled data adds max_error, coverage).
FRAME_COLUMNS = ("frame", "n_atoms", "max_width", "mean_width", "max_width_atom", "flagged", "ood", "ood_fraction")
TABLE_SUFFIXES = (".csv", ".parquet")


def level_suffix(level: float) -> str:
    """Name suffix of a level in arrays and columns: 0.95 -> ``"p95"``, 0.975 -> ``"p97_5"``."""
    return "p" + f"{100 * float(level):.6g}".replace(".", "_")


@dataclass(frozen=True, eq=False)
class Annotation:
    """Calibrated widths of annotated sites and their per-frame summary.

    Per-site arrays have shape (n,) aligned with ``sites``; per-frame arrays have shape (m,)
    aligned with ``frame_ids`` (the sorted distinct ``sites.structure_ids``: positions in the
    structures given to :func:`annotate`). Widths and errors in eV/Å.

    Attributes
    ----------
    sites : SiteTable
    confidence : float
        The calibrator's confidence (``widths`` are at this level).
    widths : ndarray (n,)
    levels : ndarray (k,)
        Extra levels asked for (may be empty); ``widths_levels`` (n, k) or None.
    ood : ndarray of bool (n,) or None
        Site outside the calibration domain (None without a domain score); ``ood_score`` (n,) or None.
    threshold : float or None
        Flag level on the per-frame maximum width, eV/Å.
    frame_ids, n_atoms, max_width, mean_width, max_width_atom, flagged : ndarray (m,)
        ``max_width_atom`` is the atom index (inside its frame) of the largest width.
    frame_ood : ndarray of bool (m,) or None
        Frame outside the calibration domain; ``frame_ood_score`` (m,) its structure score where
        the domain score gives one (> 1.0 = out); ``ood_fraction`` (m,) the share of its sites out
        of domain (NaN without a domain score).
    errors : ndarray (n,) or None
        Force-error norms when the structures carried reference forces; then ``max_error`` and
        ``coverage`` (m,) per frame.
    calibrator : str
        The calibrator's name.
    n_calibration_structures : int or None
        Structures behind the calibrator's conformal factor: sets the coverage spread expected
        on labelled frames (``summary()["coverage_expected_lo"/"_hi"]``).
    source : list of ase.Atoms or None
        The structures annotated (None from :func:`annotate_sites`).
    """

    sites: SiteTable
    confidence: float
    widths: np.ndarray
    levels: np.ndarray
    widths_levels: np.ndarray | None
    ood: np.ndarray | None
    ood_score: np.ndarray | None
    threshold: float | None
    frame_ids: np.ndarray
    n_atoms: np.ndarray
    max_width: np.ndarray
    mean_width: np.ndarray
    max_width_atom: np.ndarray
    flagged: np.ndarray
    frame_ood: np.ndarray | None
    frame_ood_score: np.ndarray | None
    ood_fraction: np.ndarray
    errors: np.ndarray | None
    max_error: np.ndarray | None
    coverage: np.ndarray | None
    calibrator: str
    n_calibration_structures: int | None = None
    source: list | None = None

    @property
    def labelled(self) -> bool:
        return self.errors is not None

    @property
    def n_frames(self) -> int:
        return int(self.frame_ids.size)

    @property
    def flagged_frames(self) -> np.ndarray:
        """Frame ids (positions in the structures given) of the flagged frames, (f,)."""
        return self.frame_ids[self.flagged]

    def with_threshold(self, threshold: float | None, *, flag_ood: bool = True) -> "Annotation":
        """The same annotation flagged at another ``threshold`` (eV/Å); out-of-domain frames are
        flagged too unless ``flag_ood`` is False. Nothing is recomputed."""
        from dataclasses import replace

        threshold = check_threshold(threshold)
        ood = self.frame_ood if flag_ood else None
        return replace(self, threshold=threshold, flagged=frame_flags(self.max_width, ood, threshold))

    # ------------------------------------------------------------- tables
    def frame_table(self):
        """One row per frame (pandas): ``FRAME_COLUMNS`` [+ ``max_width_pXX``] [+ ``max_error``, ``coverage``]."""
        import pandas as pd

        cols: dict[str, Any] = {
            "frame": self.frame_ids, "n_atoms": self.n_atoms, "max_width": self.max_width,
            "mean_width": self.mean_width, "max_width_atom": self.max_width_atom, "flagged": self.flagged,
            "ood": self.frame_ood if self.frame_ood is not None else np.zeros(self.n_frames, dtype=bool),
            "ood_fraction": self.ood_fraction,
        }
        if self.frame_ood_score is not None:
            cols["ood_score"] = self.frame_ood_score
        if self.widths_levels is not None:
            order, starts, _ = frame_groups(self.sites.structure_ids)
            for j, p in enumerate(self.levels):
                cols[f"max_width_{level_suffix(p)}"] = reduce_frames(np.maximum, self.widths_levels[:, j], order, starts)
        if "config_type" in self.sites.structure_info:
            cols["config_type"] = self._frame_column("config_type").astype(str)
        if self.labelled:
            cols["max_error"] = self.max_error
            cols["coverage"] = self.coverage
        return pd.DataFrame(cols)

    def site_table(self):
        """One row per site (pandas): frame, atom_index, species, symbol, width [, width_pXX, ood, ood_score, error, covered]."""
        import pandas as pd
        from ase.data import chemical_symbols

        cols: dict[str, Any] = {
            "frame": self.sites.structure_ids, "atom_index": self.sites.atom_index, "species": self.sites.species,
            "symbol": np.array([chemical_symbols[z] for z in self.sites.species]), "width": self.widths,
        }
        for j, p in enumerate(self.levels):
            cols[f"width_{level_suffix(p)}"] = self.widths_levels[:, j]
        if self.ood is not None:
            cols["ood"] = self.ood
        if self.ood_score is not None:
            cols["ood_score"] = self.ood_score
        if self.labelled:
            cols["error"] = self.errors
            cols["covered"] = self.errors <= self.widths
        return pd.DataFrame(cols)

    def _frame_column(self, name: str) -> np.ndarray:
        info = self.sites.structure_info
        pos = np.searchsorted(info["structure_id"], self.frame_ids)
        return np.asarray(info[name])[pos]

    # ----------------------------------------------------------- summary
    def summary(self) -> dict[str, Any]:
        """JSON-ready dict: frames, sites, flagged frames (count and ids), threshold, widths, ood, coverage."""
        flagged = self.flagged_frames
        out: dict[str, Any] = {
            "frames": self.n_frames, "sites": int(len(self.sites)), "calibrator": self.calibrator,
            "confidence": self.confidence, "threshold": self.threshold,
            "flagged_frames": int(flagged.size), "flagged": [int(i) for i in flagged[:1000]],
            "max_width": float(np.max(self.widths)), "mean_width": float(np.mean(self.widths)),
            "ood_frames": None if self.frame_ood is None else int(self.frame_ood.sum()),
            "ood_site_fraction": None if self.ood is None else float(np.mean(self.ood)),
            "labelled": self.labelled, "levels": [float(p) for p in self.levels],
        }
        if self.labelled:
            out.update(self._coverage_summary())
        return out

    def _coverage_summary(self) -> dict[str, Any]:
        """Coverage at the confidence and extra levels, with the spread expected from the calibration
        and test sizes (structures as the effective units) and the in/out-of-domain split."""
        from core.metrics.spread import expected_coverage_interval

        covered = self.errors <= self.widths
        out: dict[str, Any] = {
            "coverage": float(np.mean(covered)),
            "coverage_levels": {f"{p:g}": float(np.mean(self.errors <= self.widths_levels[:, j]))
                                for j, p in enumerate(self.levels)},
            "coverage_expected_lo": None, "coverage_expected_hi": None, "coverage_outside_expected": None,
            "n_calibration_structures": self.n_calibration_structures,
        }
        if self.n_calibration_structures and np.isfinite(self.confidence):
            lo, hi = expected_coverage_interval(int(self.n_calibration_structures), self.confidence,
                                                n_test=self.n_frames)
            out.update(coverage_expected_lo=float(lo), coverage_expected_hi=float(hi),
                       coverage_outside_expected=bool(not lo <= out["coverage"] <= hi))
        if self.ood is not None:
            out["coverage_in_domain"] = float(np.mean(covered[~self.ood])) if (~self.ood).any() else None
            out["coverage_out_of_domain"] = float(np.mean(covered[self.ood])) if self.ood.any() else None
        return out

    # ------------------------------------------------------------ exports
    def structures(self, frames=None) -> list:
        """Copies of the annotated ase.Atoms (no calculator) carrying the annotation.

        Per atom: ``arrays["flexcal_width"]`` (eV/Å), ``flexcal_width_pXX`` per extra level,
        ``flexcal_ood`` (0/1; only with a domain score), ``flexcal_error`` (labelled data).
        Per frame: ``info["flexcal_frame"]``, ``flexcal_max_width``, ``flexcal_mean_width``,
        ``flexcal_flagged``, ``flexcal_confidence``, ``flexcal_calibrator``, and where they apply
        ``flexcal_threshold``, ``flexcal_frame_ood``, ``flexcal_ood_fraction``, ``flexcal_ood_score``,
        ``flexcal_max_error``, ``flexcal_coverage``.

        ``frames``: frame ids to return (default all, in order); unknown ids -> ValueError.
        """
        if self.source is None:
            raise ValueError("structures: this annotation was made from sites alone (annotate_sites); "
                             "use annotate(structures, ...) to get annotated structures")
        pos = {int(f): i for i, f in enumerate(self.frame_ids)}
        wanted = self.frame_ids if frames is None else np.asarray(frames, dtype=np.int64).reshape(-1)
        missing = [int(f) for f in wanted if int(f) not in pos]
        if missing:
            raise ValueError(f"frames: not annotated here: {missing[:10]} (frames are 0..{len(self.source) - 1})")
        rows = frame_rows(self.sites.structure_ids)
        out = []
        for f in wanted:
            f, i = int(f), pos[int(f)]
            out.append(self._annotated_copy(f, i, rows[f]))
        return out

    def _annotated_copy(self, f: int, i: int, rows: np.ndarray):
        atoms = self.source[f].copy()
        atoms.calc = None
        n = len(atoms)
        idx = self.sites.atom_index[rows]

        def per_atom(values, fill=np.nan, dtype=np.float64):
            arr = np.full(n, fill, dtype=dtype)
            arr[idx] = values[rows]
            return arr

        atoms.arrays[WIDTH_ARRAY] = per_atom(self.widths)
        for j, p in enumerate(self.levels):
            atoms.arrays[f"{WIDTH_ARRAY}_{level_suffix(p)}"] = per_atom(self.widths_levels[:, j])
        if self.ood is not None:
            atoms.arrays[OOD_ARRAY] = per_atom(self.ood.astype(np.int64), 0, np.int64)
        if self.labelled:
            atoms.arrays[ERROR_ARRAY] = per_atom(self.errors)
        info = atoms.info
        info.update({"flexcal_frame": f, "flexcal_max_width": float(self.max_width[i]),
                     "flexcal_mean_width": float(self.mean_width[i]), "flexcal_flagged": bool(self.flagged[i]),
                     "flexcal_confidence": self.confidence, "flexcal_calibrator": self.calibrator})
        if self.threshold is not None:
            info["flexcal_threshold"] = self.threshold
        if self.frame_ood is not None:
            info["flexcal_frame_ood"] = bool(self.frame_ood[i])
            info["flexcal_ood_fraction"] = float(self.ood_fraction[i])
        if self.frame_ood_score is not None:
            info["flexcal_ood_score"] = float(self.frame_ood_score[i])
        if self.labelled:
            info["flexcal_max_error"] = float(self.max_error[i])
            info["flexcal_coverage"] = float(self.coverage[i])
        return atoms

    def extxyz_bytes(self, *, flagged_only: bool = False, frames=None) -> bytes:
        """The annotated structures as extended XYZ (bytes); ``flagged_only`` keeps the flagged frames."""
        import io

        from ase.io import write

        if flagged_only:
            frames = self.flagged_frames
            if frames.size == 0:
                raise ValueError("flagged_only: no frame is flagged (lower the threshold or export all frames)")
        buf = io.StringIO()
        write(buf, self.structures(frames), format="extxyz")
        return buf.getvalue().encode()

    def write_extxyz(self, path, *, flagged_only: bool = False, frames=None) -> Path:
        """Write :meth:`extxyz_bytes` to ``path`` atomically (temporary file + rename). Returns the path."""
        from core.io import atomic_write_bytes

        return atomic_write_bytes(path, self.extxyz_bytes(flagged_only=flagged_only, frames=frames))

    def write_table(self, path, *, which: str = "frames") -> Path:
        """Write the frame (``which="frames"``) or site table to ``.csv`` or ``.parquet`` (by suffix), atomically."""
        from core.io import atomic_path

        path = Path(path)
        suffix = table_suffix(path)
        if which not in ("frames", "sites"):
            raise ValueError(f"which: expected 'frames' or 'sites', got {which!r}")
        table = self.frame_table() if which == "frames" else self.site_table()
        with atomic_path(path) as tmp:
            if suffix == ".csv":
                table.to_csv(tmp, index=False)
            else:
                table.to_parquet(tmp, index=False)
        return path



# ------------------------------------------------------------------- grouping and checks
def check_threshold(threshold) -> float | None:
    if threshold is None:
        return None
    from core.validation import check_float

    return check_float("threshold", threshold, 0.0, np.inf, lo_open=True, hi_open=True)


def frame_flags(max_width: np.ndarray, frame_ood: np.ndarray | None, threshold: float | None) -> np.ndarray:
    """Per-frame flags: largest width above ``threshold`` (eV/Å), or out of domain."""
    flagged = (max_width > threshold) if threshold is not None else np.zeros(max_width.size, dtype=bool)
    return flagged | frame_ood if frame_ood is not None else flagged


def table_suffix(path: Path, what: str = "path") -> str:
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{what}: {path}: expected a .csv or .parquet file name, got suffix {path.suffix!r}")
    return suffix


def frame_groups(structure_ids: np.ndarray):
    """(order or None, run starts (m,), frame ids (m,)) of the sites grouped by structure id."""
    sid = structure_ids
    order = np.argsort(sid, kind="stable") if sid.size > 1 and np.any(sid[1:] < sid[:-1]) else None
    s = sid if order is None else sid[order]
    starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    return order, starts, s[starts]


def reduce_frames(ufunc, values: np.ndarray, order, starts) -> np.ndarray:
    v = values if order is None else values[order]
    return ufunc.reduceat(v, starts)


def argmax_atoms(widths, max_w, counts, order, starts, atom_index) -> np.ndarray:
    w = widths if order is None else widths[order]
    n = w.size
    hit = np.where(w == np.repeat(max_w, counts), np.arange(n), n)
    first = np.minimum.reduceat(hit, starts)
    atoms = atom_index if order is None else atom_index[order]
    return atoms[first]


def frame_rows(structure_ids: np.ndarray) -> dict[int, np.ndarray]:
    order, starts, ids = frame_groups(structure_ids)
    idx = np.arange(structure_ids.size) if order is None else order
    return {int(f): rows for f, rows in zip(ids, np.split(idx, starts[1:]))}
