"""Per-group breakdown of one method's calibration, and a ranking of several methods (issue 12, item 15).

* :func:`breakdown` splits the test sites of one method by element, by ``config_type`` or by any
  per-site label and gives, per group: size, coverage with its binomial (Clopper–Pearson) and
  by-structure bootstrap intervals and the spread expected for the calibration size, mean width,
  MAE and Spearman ρ(error, width) with a by-structure bootstrap interval.
* :func:`rank_methods` ranks methods on each metric of their calibration reports, in the right
  direction per metric, and marks the best.

Everything is computed by the existing metric functions (:func:`core.metrics.coverage`,
:func:`mean_width`, :func:`spearman`, :func:`bootstrap_ci`, :func:`expected_coverage_interval`);
numpy/scipy only at import (pandas is imported inside the functions that return a DataFrame).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from core.metrics.basic import _check_level, _check_pair, bootstrap_ci, coverage, mean_width, spearman
from core.metrics.spread import expected_coverage_interval
from core.validation import check_fraction, check_int, check_seed

__all__ = ["BREAKDOWN_COLUMNS", "BY_CHOICES", "RANK_DIRECTIONS", "RANK_KEYS", "breakdown", "rank_methods"]

BY_CHOICES = ("species", "config_type")

#: Columns of :func:`breakdown` after ``group`` (and ``Z`` when grouping by species), in order.
BREAKDOWN_COLUMNS = [
    "n_sites",
    "n_structures",
    "coverage",
    "coverage_binom_lo",
    "coverage_binom_hi",
    "coverage_ci_lo",
    "coverage_ci_hi",
    "coverage_expected_lo",
    "coverage_expected_hi",
    "mean_width",
    "mae",
    "spearman",
    "spearman_ci_lo",
    "spearman_ci_hi",
]

#: How :func:`rank_methods` orders each report key: "nominal" = closest to the report's
#: ``confidence`` is best, "zero" = smallest absolute value, "min" = smallest, "max" = largest.
RANK_DIRECTIONS = {
    "coverage": "nominal",
    "worst_species_coverage": "nominal",
    "coverage_gap": "zero",
    "mean_width": "min",
    "width_ratio": "min",
    "miscalibration_area": "min",
    "pinball": "min",
    "spearman": "max",
    "pearson": "max",
    "auroc": "max",
    "structure_spearman": "max",
    "structure_auroc": "max",
}
RANK_KEYS = ("coverage", "width_ratio", "spearman", "miscalibration_area")


# --------------------------------------------------------------------------- breakdown
def _group_labels(sites, by) -> tuple[str, np.ndarray]:
    """(name, per-site group values (n,)) for ``by``."""
    if isinstance(by, str):
        if by == "species":
            return "species", np.asarray(sites.species)
        if by == "config_type":
            if "config_type" not in sites.structure_info:
                raise ValueError("by: 'config_type' needs a structure_info column 'config_type'; these sites have "
                                 f"{sorted(sites.structure_info)}")
            return "config_type", np.asarray(sites.structure_column("config_type")).astype(str)
        raise ValueError(f"by: expected one of {', '.join(BY_CHOICES)} or an array of one label per site, got {by!r}")
    arr = np.asarray(by)
    if arr.ndim != 1 or arr.shape[0] != len(sites):
        raise ValueError(f"by: expected {', '.join(BY_CHOICES)} or an array of shape ({len(sites)},) "
                         f"(one label per site), got shape {arr.shape}")
    if arr.dtype.kind not in "iubUS" and arr.dtype != object:
        raise ValueError(f"by: expected integer or string labels, got dtype {arr.dtype}")
    return "group", arr.astype(str) if arr.dtype == object else arr


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"


def _binomial_interval(hits: int, n: int, level: float) -> tuple[float, float]:
    """Clopper–Pearson (exact) interval of a proportion ``hits / n`` at mass ``level``."""
    from scipy import stats

    ci = stats.binomtest(int(hits), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def _n_calibration_for(n_calibration_structures, key) -> int | None:
    if n_calibration_structures is None:
        return None
    if isinstance(n_calibration_structures, Mapping):
        value = n_calibration_structures.get(key, n_calibration_structures.get(str(key)))
        return None if value is None else check_int(f"n_calibration_structures[{key!r}]", value, 1)
    return check_int("n_calibration_structures", n_calibration_structures, 1)


def _nan(x) -> float:
    return math.nan if x is None else float(x)


def _group_row(e, w, ids, c, n_cal, bootstrap, seed, level) -> dict[str, Any]:
    """The :data:`BREAKDOWN_COLUMNS` of one group's sites."""
    hits = int(np.sum(e <= w))
    lo, hi = _binomial_interval(hits, e.shape[0], level)
    n_structures = int(np.unique(ids).shape[0])
    exp_lo = exp_hi = math.nan
    if n_cal is not None:
        exp_lo, exp_hi = expected_coverage_interval(n_cal, c, n_test=n_structures, level=level)
    cov_ci = rho_ci = (None, None)
    if bootstrap > 0:  # the same resamples (same seed) for both
        cov_ci = bootstrap_ci(e, w, ids, coverage, bootstrap, seed, level)
        rho_ci = bootstrap_ci(e, w, ids, spearman, bootstrap, seed, level)
    return {
        "n_sites": int(e.shape[0]), "n_structures": n_structures, "coverage": coverage(e, w),
        "coverage_binom_lo": lo, "coverage_binom_hi": hi, "coverage_ci_lo": _nan(cov_ci[0]),
        "coverage_ci_hi": _nan(cov_ci[1]), "coverage_expected_lo": exp_lo, "coverage_expected_hi": exp_hi,
        "mean_width": mean_width(w), "mae": float(np.mean(e)),
        "spearman": _nan(spearman(e, w)), "spearman_ci_lo": _nan(rho_ci[0]), "spearman_ci_hi": _nan(rho_ci[1]),
    }


def breakdown(sites, widths, *, by="species", confidence: float, n_calibration_structures=None,
              bootstrap: int = 200, seed: int = 0, level: float = 0.95):
    """Coverage, width, MAE and Spearman ρ of one method per element, ``config_type`` or label.

    Parameters
    ----------
    sites : SiteTable
        Labelled test sites (n sites); an unlabelled table raises the "no reference labels" ValueError.
    widths : array-like of shape (n,)
        The method's half-widths on ``sites`` at ``confidence``, eV/Å (``+inf`` allowed).
    by : "species" | "config_type" | array-like of shape (n,)
        Group by element (rows ordered by Z, ``group`` = element symbol, plus a ``Z`` column), by the
        structures' ``config_type`` (sorted names), or by any per-site label (sorted).
    confidence : float in (0, 1)
        The nominal coverage of ``widths``.
    n_calibration_structures : int, or mapping group key -> int, optional
        Calibration structures behind the method's conformal factor (the calibrator's
        ``n_calibration_structures_``; a mapping keyed by Z / config_type gives one per group).
        Enables ``coverage_expected_lo``/``_hi``: :func:`expected_coverage_interval` with the group's
        number of test structures, i.e. the spread of a method that is calibrated *within that group*.
        A group outside it is conditionally miscalibrated (a marginal method such as global split CP
        need not be calibrated per group; Mondrian CP is, per element). NaN without it.
    bootstrap : int >= 0
        By-structure bootstrap resamples for the coverage and Spearman intervals (0: NaN intervals).
    seed : int >= 0
        Seeds the bootstrap (the same resamples for every group size and method).
    level : float in (0, 1)
        Mass of every interval (binomial, expected spread, bootstrap).

    Returns
    -------
    pandas.DataFrame
        One row per group: ``group`` (str), ``Z`` (int, species only), then :data:`BREAKDOWN_COLUMNS`:
        ``n_sites``, ``n_structures``, ``coverage`` (fraction), ``coverage_binom_lo``/``_hi`` (Clopper–Pearson
        interval over the group's sites, as if they were independent: atoms of one structure are correlated,
        so it is narrower than the real uncertainty), ``coverage_ci_lo``/``_hi`` (by-structure bootstrap:
        the honest one; NaN with ``bootstrap=0``), ``coverage_expected_lo``/``_hi``, ``mean_width`` (eV/Å, +inf when a
        width is infinite), ``mae`` (mean force-error norm ‖ΔF‖, eV/Å), ``spearman`` ρ(error, width)
        (NaN where undefined: constant widths or errors) and ``spearman_ci_lo``/``_hi`` (by-structure bootstrap).
        ``attrs``: ``by``, ``confidence``, ``level``, ``bootstrap``.
    """
    import pandas as pd

    from core.sites import check_sites

    sites = check_sites(sites)
    errors = sites.require_labels("sites")
    e, w = _check_pair(errors, widths)
    c = _check_level("confidence", confidence)
    bootstrap = check_int("bootstrap", bootstrap, 0)
    seed = check_seed(seed)
    lv = check_fraction("level", level)
    name, labels = _group_labels(sites, by)
    ids = np.asarray(sites.structure_ids)
    rows = []
    for key in np.unique(labels):
        mask = labels == key
        key = key.item() if isinstance(key, np.generic) else key
        row: dict[str, Any] = {"group": _symbol(int(key)) if name == "species" else str(key)}
        if name == "species":
            row["Z"] = int(key)
        n_cal = _n_calibration_for(n_calibration_structures, key)
        row.update(_group_row(e[mask], w[mask], ids[mask], c, n_cal, bootstrap, seed, lv))
        rows.append(row)
    columns = ["group", *(["Z"] if name == "species" else []), *BREAKDOWN_COLUMNS]
    df = pd.DataFrame(rows, columns=columns)
    df.attrs.update(by=name, confidence=c, level=lv, bootstrap=bootstrap)
    return df


# --------------------------------------------------------------------------- ranking
def _rank_score(key: str, value, confidence) -> float:
    """The value whose *smallest* is best for ``key`` (NaN when missing)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return math.nan
    x = float(value)
    if math.isnan(x):
        return math.nan
    how = RANK_DIRECTIONS[key]
    if how == "nominal":
        return round(abs(x - float(confidence)), 12) if confidence is not None else math.nan
    if how == "zero":
        return abs(x)
    return x if how == "min" else -x  # exact values: ties only when equal


def rank_methods(reports: dict, keys=RANK_KEYS):
    """Rank methods on each metric of their reports, best first, with a best marker per metric.

    Parameters
    ----------
    reports : dict of label -> report from :func:`core.metrics.calibration_report`
        At least one. ``coverage`` and ``worst_species_coverage`` are judged by closeness to the
        report's own ``confidence``.
    keys : sequence of report keys
        Each must be in :data:`RANK_DIRECTIONS` (coverage: closest to nominal; width ratio, mean width,
        miscalibration area, pinball: smaller; ρ, AUROC: larger; coverage gap: closest to 0).

    Returns
    -------
    pandas.DataFrame
        Index ``method`` (labels), sorted by ``mean_rank``. Per key: ``<key>`` (the value, NaN when
        missing), ``<key>_rank`` (1 = best; ties share the best rank; NaN for a missing value, which
        is then left out of the mean) and ``<key>_best`` (bool: the best value, ties included). ``mean_rank``
        averages the ranks a method has. ``attrs["directions"]``: key -> direction.
    """
    import pandas as pd

    if not isinstance(reports, dict) or not reports:
        raise ValueError(f"reports: expected a non-empty dict of label -> report, got {type(reports).__name__}")
    if isinstance(keys, str) or not keys:
        raise ValueError(f"keys: expected a non-empty sequence of report keys, got {keys!r}")
    keys = list(keys)
    for key in keys:
        if key not in RANK_DIRECTIONS:
            raise ValueError(f"keys: {key!r} has no ranking direction; expected some of {', '.join(RANK_DIRECTIONS)}")
    for label, rep in reports.items():
        if not isinstance(rep, dict):
            raise ValueError(f"reports[{label!r}]: expected a report dict, got {type(rep).__name__}")
    index = pd.Index([str(k) for k in reports], name="method")
    df = pd.DataFrame(index=index)
    ranks = []
    for key in keys:
        values = [rep.get(key) for rep in reports.values()]
        df[key] = pd.to_numeric(pd.Series(values, index=index, dtype=object), errors="coerce")
        score = pd.Series([_rank_score(key, v, rep.get("confidence")) for v, rep in zip(values, reports.values())],
                          index=index)
        rank = score.rank(method="min", na_option="keep")
        df[f"{key}_rank"] = rank
        df[f"{key}_best"] = score.notna() & (score == score.min())
        ranks.append(rank)
    df["mean_rank"] = pd.concat(ranks, axis=1).mean(axis=1, skipna=True)
    df = df.sort_values("mean_rank", kind="stable", na_position="last")
    df.attrs["directions"] = {k: RANK_DIRECTIONS[k] for k in keys}
    return df
