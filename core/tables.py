"""Tables for people: one registry of readable column labels with units, one mark for missing values.

Every table FlexCal shows (the app's results, metrics, flagged-frame and atom tables, the HTML
report) goes through :func:`readable_table`, which renames the engine's stable snake_case keys
to labels with units (``mean_width`` -> "Mean width (eV/Å)") and keeps every column; missing
values (None, NaN) are shown as :data:`MISSING` ("—") by the app (``st.dataframe(...,
placeholder=MISSING)``) and by :func:`text_table` (HTML).

Machine-readable exports (CSV / Parquet) keep the snake_case keys; :func:`column_descriptions`
gives, for each column of such a table, its label, unit and meaning (the app offers it as a
JSON sidecar next to the CSV, and :func:`core.export.table_bytes` writes a readable header
with ``readable=True``).

Units: forces, errors and widths in eV/Å, energies in eV, times in s.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np

__all__ = ["MISSING", "Column", "COLUMNS", "COLUMN_LABELS", "column_info", "column_label",
           "column_descriptions", "descriptions_json", "readable_table", "keyed_table", "text_table",
           "format_value"]

MISSING = "—"
EV_A = "eV/Å"


@dataclass(frozen=True)
class Column:
    """What one column holds: ``label`` (no unit), ``unit`` (None for pure numbers/text) and ``help``."""

    label: str
    unit: str | None = None
    help: str = ""

    @property
    def title(self) -> str:
        """The column header: ``"Mean width (eV/Å)"``."""
        return f"{self.label} ({self.unit})" if self.unit else self.label


_C = Column
COLUMNS: dict[str, Column] = {
    # -- identifiers (evaluation tables, studies)
    "study": _C("Study"), "dataset": _C("Dataset"), "split": _C("Part", help="calibration / test part of the split"),
    "method": _C("Method (registry name)"), "label": _C("Method"),
    "n_cal_structures": _C("Calibration structures", help="structures the method was fitted on"),
    "n_cal_sites": _C("Calibration sites", help="atoms the method was fitted on"),
    "fit_seconds": _C("Fit time", "s"), "note": _C("Note"),
    # -- calibration_report (core.metrics.REPORT_KEYS)
    "n_sites": _C("Test sites", help="atoms scored"), "n_structures": _C("Test structures", help="structures scored"),
    "confidence": _C("Confidence", help="nominal coverage, 0.9 = 90 %"),
    "coverage": _C("Coverage", help="fraction of sites with force error ≤ width"),
    "coverage_gap": _C("Coverage − confidence", help="observed coverage minus the nominal confidence"),
    "mean_width": _C("Mean width", EV_A, "mean half-width of the interval"),
    "width_ratio": _C("Width / split-CP width", help="mean width divided by global split CP on the same sites"),
    "spearman": _C("Spearman ρ (error, width)", help="rank correlation of force error and width, per site"),
    "spearman_note": _C("Why no Spearman ρ"),
    "pearson": _C("Pearson r (error, width)"),
    "spearman_ideal": _C("Ideal Spearman ρ", help="the ρ these widths would reach if errors followed them exactly"),
    "auroc": _C("AUROC (top 10 % errors)", help="how well widths rank the 10 % largest errors (0.5 = chance)"),
    "miscalibration_area": _C("Miscalibration area", help="mean |observed − nominal coverage| over levels 5–95 %"),
    "species_coverage": _C("Coverage per element"),
    "worst_species_coverage": _C("Worst element coverage", help="lowest coverage over the elements"),
    "pinball": _C("Pinball loss", EV_A, "quantile loss at the confidence level"),
    "structure_spearman": _C("Spearman ρ per structure", help="ρ of the per-structure max error and max width"),
    "structure_auroc": _C("AUROC per structure"),
    "coverage_expected_lo": _C("Expected coverage, low", help="2.5 % quantile for this many calibration structures"),
    "coverage_expected_hi": _C("Expected coverage, high", help="97.5 % quantile for this many calibration structures"),
    "coverage_outside_expected": _C("Coverage outside expected range"),
    "ood_fraction": _C("Out-of-domain fraction", help="fraction of the sites (atoms) outside the calibration domain"),
    "coverage_in_domain": _C("Coverage in domain"), "coverage_out_of_domain": _C("Coverage out of domain"),
    "coverage_ci": _C("Coverage 95 % CI"), "spearman_ci": _C("Spearman ρ 95 % CI"),
    "coverage_ci_lo": _C("Coverage 95 % CI, low", help="by-structure bootstrap"),
    "coverage_ci_hi": _C("Coverage 95 % CI, high", help="by-structure bootstrap"),
    "spearman_ci_lo": _C("Spearman ρ 95 % CI, low", help="by-structure bootstrap"),
    "spearman_ci_hi": _C("Spearman ρ 95 % CI, high", help="by-structure bootstrap"),
    "coverage_expected": _C("Expected coverage", help="2.5–97.5 % range for this many calibration structures"),
    "coverage_binom_lo": _C("Coverage binomial CI, low", help="Clopper–Pearson, counted in sites"),
    "coverage_binom_hi": _C("Coverage binomial CI, high", help="Clopper–Pearson, counted in sites"),
    "coverage_check": _C("Coverage vs expected", help="below / within / above the expected range"),
    # -- per-group breakdowns and rankings (core.metrics.breakdown, the Compare page)
    "group": _C("Group"), "Z": _C("Z"), "mae": _C("MAE ‖ΔF‖", EV_A, "mean absolute force error"),
    "coverage_lo": _C("Coverage 95 % CI, low", help="by-structure bootstrap"),
    "coverage_hi": _C("Coverage 95 % CI, high", help="by-structure bootstrap"),
    "spearman_lo": _C("Spearman ρ 95 % CI, low", help="by-structure bootstrap"),
    "spearman_hi": _C("Spearman ρ 95 % CI, high", help="by-structure bootstrap"),
    "mean_rank": _C("Mean rank", help="mean of the method's ranks over the ranked metrics (1 = best)"),
    # -- per-site tables (core.export.site_frame, core.annotation)
    "structure_id": _C("Structure"), "frame": _C("Frame"), "atom_index": _C("Atom"), "species": _C("Z"),
    "symbol": _C("Element"), "config_type": _C("Config type"),
    "error": _C("Force error ‖ΔF‖", EV_A, "norm of predicted minus reference force"),
    "width": _C("Width", EV_A, "calibrated half-width at the confidence level"),
    "covered": _C("Covered", help="force error ≤ width"),
    "ood": _C("Out of domain"),
    "ood_score": _C("Domain score (> 1 = out)", help="distance to the calibration data; > 1: outside its domain"),
    "n_atoms": _C("Atoms"), "max_width": _C("Max width", EV_A), "max_width_atom": _C("Atom of max width"),
    "max_error": _C("Max force error", EV_A), "flagged": _C("Flagged"),
    "error_width_ratio": _C("Max error / max width"),
    "highlighted": _C("Highlighted", help="◉: the atom marked in the 3D view"),
    "energy_ref": _C("Reference energy", "eV"), "energy_pred": _C("Predicted energy", "eV"),
    "dataset_index": _C("Position in file"),
    # -- active learning curves (core.active.result.CURVE_COLUMNS)
    "strategy": _C("Strategy"), "round": _C("Round"), "n_labels": _C("Labels", help="reference labels used so far"),
    "force_mae": _C("Force MAE", EV_A, "mean |F_pred − F_ref| over force components"),
    "pick_force_mae": _C("Force MAE of the picks", EV_A, "the previous model's force MAE on the frames picked"),
    # -- provenance
    "field": _C("Field"), "value": _C("Value"), "warning": _C("Warning"),
}
COLUMN_LABELS: dict[str, str] = {key: col.title for key, col in COLUMNS.items()}

_AXES = {"x": "x", "y": "y", "z": "z"}
_PATTERNS: list[tuple[re.Pattern, object]] = [
    (re.compile(r"^max_width_p(\d+(?:_\d+)?)$"),
     lambda m: _C(f"Max width at {m[1].replace('_', '.')} %", EV_A)),
    (re.compile(r"^width_p(\d+(?:_\d+)?)$"), lambda m: _C(f"Width at {m[1].replace('_', '.')} %", EV_A)),
    (re.compile(r"^width_(.+)$"), lambda m: _C(f"Width — {m[1]}", EV_A, f"half-width of {m[1]}")),
    (re.compile(r"^covered_(.+)$"), lambda m: _C(f"Covered — {m[1]}", help=f"force error ≤ width of {m[1]}")),
    (re.compile(r"^force_pred_([xyz])$"), lambda m: _C(f"Predicted force {m[1]}", EV_A)),
    (re.compile(r"^force_ref_([xyz])$"), lambda m: _C(f"Reference force {m[1]}", EV_A)),
    (re.compile(r"^d_(\d+)$"), lambda m: _C(f"Descriptor {m[1]}", help="model's invariant per-atom feature")),
]


def column_info(key) -> Column:
    """The :class:`Column` of a key: the registry, then patterns (``width_<method>``, ``max_width_p95``,
    ``force_ref_x``, ``d_3``, ...); an unknown key is its own label (never dropped)."""
    key = str(key)
    if key in COLUMNS:
        return COLUMNS[key]
    for pattern, make in _PATTERNS:
        m = pattern.match(key)
        if m:
            return make(m)
    return _C(key)


def column_label(key) -> str:
    """Readable header with unit: ``column_label("mean_width") == "Mean width (eV/Å)"``."""
    return column_info(key).title


def _labels(keys) -> list[str]:
    """Labels for ``keys``, made unique (a clash keeps the key in brackets, so no column is lost)."""
    titles = [column_label(k) for k in keys]
    seen: dict[str, int] = {}
    for t in titles:
        seen[t] = seen.get(t, 0) + 1
    return [f"{t} [{k}]" if seen[t] > 1 else t for t, k in zip(titles, keys)]


def readable_table(frame):
    """A copy of ``frame`` with readable column (and index) labels; every column and value kept.

    Values keep their types (numbers stay numbers, so the app can sort and format them);
    None and NaN are missing: show them as :data:`MISSING` (``st.dataframe(placeholder=MISSING)``
    or :func:`text_table`). Raises TypeError if ``frame`` is not a pandas DataFrame.
    """
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame: expected a pandas DataFrame, got {type(frame).__name__}")
    out = frame.copy()
    out.columns = _labels([str(c) for c in frame.columns])
    if frame.index.name is not None:
        out.index.name = column_label(frame.index.name)
    out.attrs = dict(frame.attrs)
    return out


def keyed_table(frame):
    """The inverse of :func:`readable_table` for registry columns: readable labels back to their keys.

    Labels made unique with ``" [key]"`` give that key; labels of pattern columns
    (``"Width — knn (eV/Å)"``) and unknown ones are left as they are.
    """
    back: dict[str, str] = {}
    for key, title in COLUMN_LABELS.items():  # a title shared by two keys (same meaning) maps to the first
        back.setdefault(title, key)

    def key_of(label) -> str:
        m = re.match(r"^.* \[(.+)\]$", str(label))
        return m[1] if m else back.get(str(label), label)

    out = frame.rename(columns=key_of)
    if frame.index.name is not None:
        out.index.name = key_of(frame.index.name)
    return out


def format_value(value, digits: int = 4) -> str:
    """One cell as text: missing (None, NaN, pandas NA) -> "—", bool -> "yes"/"no",
    float -> ``digits`` significant digits (inf -> "∞"), lists joined by ", "."""
    if value is None:
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v, digits) for v in value) or MISSING
    try:
        import pandas as pd

        if pd.isna(value):
            return MISSING
    except (TypeError, ValueError):
        pass
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        return f"{v:.{digits}g}"
    return str(value)


def text_table(frame, digits: int = 4):
    """:func:`readable_table` with every cell as text (:func:`format_value`): for HTML and print."""
    import pandas as pd

    out = readable_table(frame)
    cells = {i: [format_value(v, digits) for v in out.iloc[:, i].tolist()] for i in range(out.shape[1])}
    text = pd.DataFrame(cells, index=out.index, dtype=object)
    text.columns = out.columns
    text.attrs = dict(out.attrs)
    return text


def column_descriptions(frame) -> dict[str, dict]:
    """For each column key of ``frame`` (in order): ``{"label", "unit", "description"}``.

    The sidecar of a machine-readable export: CSV/Parquet keep their snake_case keys, this
    says what each one is and its unit (``unit`` None for counts, fractions and text).
    """
    keys = list(frame.columns) if hasattr(frame, "columns") else list(frame)
    labels = _labels([str(k) for k in keys])
    out = {}
    for key, label in zip(keys, labels):
        info = column_info(key)
        out[str(key)] = {"label": label, "unit": info.unit, "description": info.help}
    return out


def descriptions_json(frame) -> bytes:
    """:func:`column_descriptions` as UTF-8 JSON bytes (``{"columns": {...}, "missing": "empty cell"}``)."""
    doc = {"columns": column_descriptions(frame),
           "missing": "empty cell in CSV, null in Parquet (shown as \u2014 in the app)",
           "units": "forces, errors and widths in eV/Å; energies in eV; times in s"}
    return json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8")
