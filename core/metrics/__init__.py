"""Calibration metrics for per-site uncertainty (METHOD §4).

Every function is pure and takes numpy-compatible arrays in the order
``(errors, widths, ...)``:

- ``errors`` : array of shape (n,), force-error norms e_i >= 0, eV/Å. The
  ``errors`` of an unlabelled SiteTable are None and are refused with
  "errors: these sites carry no reference labels (errors=None); ...".
- ``widths`` : array of shape (n,), predicted half-widths w_i >= 0, eV/Å
  (``+inf`` is allowed: a conformal quantile whose rank exceeds n).

Functions that need only widths (``mean_width``, ``width_ratio``,
``spearman_ideal``) take only widths. Bad input raises ``ValueError`` naming
the argument and what was received. Correlations and AUROCs that are
mathematically undefined (constant widths, constant errors, no negatives)
are returned as ``None``, never as 0; :func:`correlation_or_reason` gives the
reason.

:func:`calibration_report` gathers everything into one JSON-serialisable
dict; :data:`REPORT_COLUMNS` and :func:`report_table` turn several reports
into a comparison table. :func:`expected_coverage_interval` is the spread a
coverage is expected to show for a finite calibration and test size (METHOD §6).

Modules: :mod:`core.metrics.basic` (the metric functions),
:mod:`core.metrics.spread` (expected coverage spread), :mod:`core.metrics.report`
(report and table), :mod:`core.metrics.binned` (RMSE vs RMV, ENCE, group calibration,
sharpness), :mod:`core.metrics.breakdown` (per-element / per-config_type breakdown with
intervals, method ranking). Numpy/scipy only.
"""

from __future__ import annotations

from core.metrics.basic import (
    CALIBRATION_LEVELS,
    auroc,
    bootstrap_ci,
    correlation_or_reason,
    coverage,
    coverage_gap,
    mean_width,
    miscalibration_area,
    observed_coverage_curve,
    pearson,
    pinball_loss,
    spearman,
    spearman_ideal,
    species_coverage,
    structure_auroc,
    structure_maxima,
    structure_spearman,
    width_ratio,
    worst_species_coverage,
)
from core.metrics.breakdown import BREAKDOWN_COLUMNS, RANK_DIRECTIONS, breakdown, rank_methods
from core.metrics.binned import group_calibration, rmse_vs_rmv, sharpness, width_to_sigma
from core.metrics.report import REPORT_COLUMNS, REPORT_KEYS, calibration_report, report_table
from core.metrics.spread import expected_coverage_interval

__all__ = [
    "BREAKDOWN_COLUMNS",
    "CALIBRATION_LEVELS",
    "RANK_DIRECTIONS",
    "REPORT_COLUMNS",
    "REPORT_KEYS",
    "auroc",
    "bootstrap_ci",
    "breakdown",
    "calibration_report",
    "correlation_or_reason",
    "coverage",
    "coverage_gap",
    "expected_coverage_interval",
    "group_calibration",
    "mean_width",
    "miscalibration_area",
    "observed_coverage_curve",
    "pearson",
    "pinball_loss",
    "rank_methods",
    "report_table",
    "rmse_vs_rmv",
    "sharpness",
    "spearman",
    "spearman_ideal",
    "species_coverage",
    "structure_auroc",
    "structure_maxima",
    "structure_spearman",
    "width_ratio",
    "width_to_sigma",
    "worst_species_coverage",
]
