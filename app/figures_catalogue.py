"""The figures of one calibration run, by name (no Streamlit: ``app.services`` caches them).

Builders come from :mod:`core.figures`; this module only picks the arrays of a
:class:`app.run.CalibrationRun` for them (widths, ids, species, the out-of-domain flags the
site and structure plots circle or colour), and turns a figure that cannot be drawn into a
message instead of a crash. :func:`recoloured_figures` redraws the site plots coloured by
element or calibration domain (:data:`COLOUR_CHOICES`); :func:`toolkit_figures` (Diagnose's
"more diagnostics"), :func:`small_multiples` and :func:`group_tables` (Compare) are the one
place those figures are built, for the pages and for the HTML report alike.

The coverage curves are drawn on the 0.05..0.95 grid only, the levels the report's
``miscalibration_area`` averages over, so the area in a legend is the number on the metric
card.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable

import numpy as np

from app.catalog import describe_error

FIGURE_TITLES = MappingProxyType({
    "force_parity": "Force parity, coloured by width",
    "energy_parity": "Energy parity (per atom), coloured by max width",
    "coverage_curve": "Observed vs nominal coverage, every method",
    "calibration_curve": "Calibration curve and miscalibration area",
    "uncertainty_error": "Uncertainty vs error (log-log, y = x)",
    "species_coverage": "Coverage per species",
    "width_histogram": "Width histogram",
    "structure_uncertainty": "Structure level: max width vs max error",
})


def site_ids(sites) -> np.ndarray:
    """(n, 2) array of (structure_id, atom_index): the ``customdata`` of clickable plots."""
    return np.column_stack([sites.structure_ids, sites.atom_index])


def selected_site(event) -> tuple[int, int | None] | None:
    """(structure_id, atom_index or None) of the first selected point of a plotly_chart event."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        try:
            points = event.selection.points
        except AttributeError:
            return None
    for p in points or []:
        cd = p.get("customdata") if isinstance(p, dict) else None
        if cd is None:
            continue
        if isinstance(cd, (int, float)):
            return int(cd), None
        if isinstance(cd, dict):  # the browser may send an array as {"0": ..., "1": ...}
            cd = [cd[k] for k in sorted(cd, key=lambda k: int(k))]
        if len(cd) >= 2:
            atom = int(cd[1])
            return int(cd[0]), (atom if atom >= 0 else None)
        if len(cd) == 1:
            return int(cd[0]), None
    return None


def grid_curve(run, label: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(levels, observed coverage) of one method on the 0.05..0.95 grid, or None without levels."""
    from core.metrics import CALIBRATION_LEVELS, observed_coverage_curve

    wl = run.widths_levels.get(label)
    if wl is None:
        return None
    keep = np.isin(np.round(run.levels, 6), np.round(CALIBRATION_LEVELS, 6))
    return run.levels[keep], observed_coverage_curve(run.test.errors, wl[:, keep], run.levels[keep])


def coverage_curves(run) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """label -> (levels, observed coverage) on the grid, for every method that gives levels."""
    curves = {lab: grid_curve(run, lab) for lab in run.labels}
    return {lab: c for lab, c in curves.items() if c is not None}


def _structure_ood(run, structure_ids: np.ndarray) -> np.ndarray:
    return np.isin(structure_ids, run.ood_structures)


#: How the site plots can be coloured (the Diagnose page's choice); see :func:`colour_choices`.
COLOUR_CHOICES = ("method", "element", "out of domain")
# the figures each colouring applies to ("method" applies to all: it is the default drawing)
_COLOURED = MappingProxyType({
    "element": ("force_parity", "uncertainty_error"),
    "out of domain": ("force_parity", "energy_parity", "uncertainty_error", "structure_uncertainty"),
})


def colour_choices(run) -> tuple[str, ...]:
    """The colourings that make sense for ``run``: "out of domain" only when some test site is."""
    flagged = run.ood is not None and bool(np.any(run.ood))
    return tuple(c for c in COLOUR_CHOICES if c != "out of domain" or flagged)


def _colour(colour_by: str, name: str) -> str:
    return colour_by if name in _COLOURED.get(colour_by, ()) else "method"


def _site_builders(run, label: str, colour_by: str = "method") -> dict[str, Callable[[], Any]]:
    """Parity (forces, energies), uncertainty-error and structure plots of one method.

    Out-of-domain test sites (structures) are circled, or coloured with ``colour_by="out of
    domain"``; ``"element"`` colours the site plots by the test sites' species.
    """
    from core import figures as F
    from core.metrics import structure_maxima

    if colour_by not in COLOUR_CHOICES:
        raise ValueError(f"colour_by: expected one of {list(COLOUR_CHOICES)}, got {colour_by!r}")
    test, w = run.test, run.widths[label]
    ood = run.ood if run.ood is not None and bool(np.any(run.ood)) else None
    ids, info = site_ids(test), test.structure_info
    builders: dict[str, Callable[[], Any]] = {}
    if test.forces_pred is not None and test.forces_ref is not None:
        builders["force_parity"] = lambda: F.plot_parity(
            test.forces_ref, test.forces_pred, color=w, color_label=f"{label} width (eV/Å)", quantity="force",
            ids=ids, species=test.species, ood=ood, color_by=_colour(colour_by, "force_parity"))
    if "energy_ref" in info and "energy_pred" in info:
        eref, epred = np.asarray(info["energy_ref"], dtype=float), np.asarray(info["energy_pred"], dtype=float)
        ok = np.isfinite(eref) & np.isfinite(epred)
        if ok.sum() >= 2:
            def energy():
                nat = np.asarray(info["n_atoms"], dtype=float)
                _me, mw = structure_maxima(test.errors, w, test.structure_ids)
                sids = np.asarray(info["structure_id"])
                s_ood = _structure_ood(run, sids[ok]) if ood is not None else None
                return F.plot_parity((eref / nat)[ok], (epred / nat)[ok], color=mw[ok],
                                     color_label=f"max {label} width (eV/Å)", quantity="energy_per_atom",
                                     ids=np.column_stack([sids[ok], np.full(ok.sum(), -1)]), ood=s_ood,
                                     color_by=_colour(colour_by, "energy_parity"))
            builders["energy_parity"] = energy

    def structures():
        me, mw = structure_maxima(test.errors, w, test.structure_ids)
        sids = np.unique(test.structure_ids)
        return F.plot_structure_uncertainty(me, mw, ids=sids, ood=_structure_ood(run, sids) if ood is not None
                                            else None, color_by=_colour(colour_by, "structure_uncertainty"))

    builders["uncertainty_error"] = lambda: F.plot_uncertainty_error(
        test.errors, w, label=label, ids=ids, species=test.species, ood=ood,
        color_by=_colour(colour_by, "uncertainty_error"))
    builders["structure_uncertainty"] = structures
    return builders


def _build(builders: dict[str, Callable[[], Any]], label: str) -> dict[str, Any]:
    """Run the builders, those named in :data:`FIGURE_TITLES` first and in its order, the others after
    in their own; a failure becomes a message (str)."""
    figs: dict[str, Any] = {}
    order = [n for n in FIGURE_TITLES if n in builders] + [n for n in builders if n not in FIGURE_TITLES]
    for name in order:
        try:
            figs[name] = builders[name]()
        except (ValueError, TypeError, KeyError, ZeroDivisionError) as exc:
            figs[name] = f"This plot cannot be drawn for {label}: {describe_error(exc)}"
    return figs


def build_method_figures(run, label: str) -> dict[str, Any]:
    """The Diagnose page's figures for one method (plus the all-method ones), by name.

    A figure that cannot be drawn becomes a message (str) saying why, not an exception.
    """
    from core import figures as F

    builders = _site_builders(run, label)
    curves = coverage_curves(run)
    if curves:
        builders["coverage_curve"] = lambda: F.plot_coverage_curve(curves)
        if label in curves:
            builders["calibration_curve"] = lambda: F.plot_calibration_curve(*curves[label], label=label)
    reports = {lab: r for lab, r in run.reports.items() if r.get("species_coverage")}
    if reports:
        builders["species_coverage"] = lambda: F.plot_species_coverage(reports, run.confidence)
    builders["width_histogram"] = lambda: F.plot_width_histogram({lab: run.widths[lab] for lab in run.labels},
                                                                 log="auto")
    return _build(builders, label)


def recoloured_figures(run, label: str, figures: dict[str, Any], colour_by: str) -> dict[str, Any]:
    """``figures`` (from :func:`build_method_figures`) with the site plots redrawn ``colour_by``.

    ``"method"`` returns ``figures`` itself (the cached default); otherwise a new dict where
    the figures that colouring applies to are rebuilt (others are shared). Raises ValueError
    for a colouring not in :data:`COLOUR_CHOICES`.
    """
    builders = _site_builders(run, label, colour_by)
    if colour_by == "method":
        return figures
    redo = {n: b for n, b in builders.items() if n in _COLOURED[colour_by] and n in figures}
    return {**figures, **_build(redo, label)}


def teaching_figure(run, level: float):
    """Global split CP against the q_θ band at one level, from stored predictions (no refit).

    None when the run has no q_θ method with widths at several levels.
    """
    from core.figures import plot_confidence_band

    lab = run.flexible_label()
    if lab is None or run.widths_levels.get(lab) is None:
        return None
    k = run.level_index(level)
    return plot_confidence_band(None, run.test.errors, run.reference_levels[:, k], run.widths_levels[lab][:, k],
                                float(run.levels[k]))


#: Bins of RMSE vs RMV and groups of the ordered/adversarial group calibration (toolkit figures).
N_BINS, N_GROUPS = 10, 10


def toolkit_figures(run, label: str) -> dict[str, Any]:
    """name -> figure (or a message why it cannot be drawn): RMSE vs RMV (bootstrap over structures),
    adversarial and ordered group coverage of ``label``, and every method's sharpness."""
    from core import figures_diagnostics as FD
    from core import metrics as M

    e, w, c = run.test.errors, run.widths[label], run.confidence
    groups: dict = {}

    def group(part: str):
        if not groups:
            groups.update(M.group_calibration(e, w, confidence=c, n_groups=min(N_GROUPS, len(e)), adversarial=True))
        return groups[part]

    builders = {
        "rmse_rmv": lambda: FD.plot_rmse_vs_rmv({label: M.rmse_vs_rmv(
            e, w, min(N_BINS, len(e)), confidence=c, structure_ids=run.test.structure_ids)}),
        "adversarial": lambda: FD.plot_adversarial_coverage(group("adversarial"), c, label=label),
        "ordered": lambda: FD.plot_group_coverage(group("groups"), c, label=label),
        "sharpness": lambda: FD.plot_sharpness({m: M.sharpness(run.widths[m]) for m in run.labels}),
    }
    return _build(builders, label)


def small_multiples(run, kind: str):
    """One panel per method, same axes: ``kind`` "error_width" (error vs width) or "parity" (force parity)."""
    from core.figures_compare import plot_small_multiples

    test = run.test
    return plot_small_multiples(test.errors, run.widths, kind=kind, reference=test.forces_ref,
                                predicted=test.forces_pred)


def group_tables(run, by: str, *, labels=None, bootstrap: int = 0, seed: int = 0) -> dict[str, Any]:
    """{label: :func:`core.metrics.breakdown` by ``by``} of ``labels`` (default every method), each with
    the expected spread of its own calibration size; ``bootstrap`` by-structure resamples per group
    (0, the default: none, for the figures; the breakdown tables ask for them)."""
    from core.evaluation import conformal_calibration_size
    from core.metrics import breakdown

    return {label: breakdown(run.test, run.widths[label], by=by, confidence=run.confidence,
                             n_calibration_structures=conformal_calibration_size(run.calibrators[label], run.cal),
                             bootstrap=bootstrap, seed=seed)
            for label in (run.labels if labels is None else labels)}


TOOLKIT_TITLES = MappingProxyType({
    "rmse_rmv": "Binned error vs predicted width (RMSE vs RMV)", "adversarial": "Adversarial group coverage",
    "ordered": "Coverage of groups ordered by width", "sharpness": "Sharpness: width distribution per method",
})


def comparison_figures(run) -> list[tuple[str, Any]]:
    """(title, figure) of the Compare page: small multiples (error vs width, parity) and coverage per element."""
    from core.figures_compare import plot_species_coverage_intervals

    kinds = {"error_width": "Side by side: error vs width, one panel per method"}
    if run.test.forces_ref is not None and run.test.forces_pred is not None:
        kinds["parity"] = "Side by side: force parity coloured by width"
    builders = {title: (lambda k=kind: small_multiples(run, k)) for kind, title in kinds.items()}
    builders["Coverage per element, every method (95 % intervals)"] = (
        lambda: plot_species_coverage_intervals(group_tables(run, "species")))
    return [(title, fig) for title, fig in _build(builders, "the comparison").items() if not isinstance(fig, str)]


def report_figures(run, label: str, figures: dict[str, Any]) -> list[tuple[str, Any]]:
    """(title, figure) pairs for the HTML report: the Diagnose figures of ``label``, the teaching view,
    the loss, the toolkit diagnostics of ``label`` and the comparison of every method."""
    out = [(FIGURE_TITLES.get(k, k), f) for k, f in figures.items() if not isinstance(f, str)]
    band = teaching_figure(run, run.confidence)
    if band is not None:
        out.append((f"Global CP vs q_θ band at {run.confidence:.0%}", band))
    if run.history:
        from core.figures import plot_training_curve

        out.append(("q_θ training curve", plot_training_curve(run.history)))
    if label in run.widths:
        out += [(f"{TOOLKIT_TITLES[k]} — {label}" if k != "sharpness" else TOOLKIT_TITLES[k], f)
                for k, f in toolkit_figures(run, label).items() if not isinstance(f, str)]
    return out + comparison_figures(run)


def run_report_html(run, label: str, figures: dict[str, Any]) -> str:
    """Self-contained HTML: what produced the run, its warnings, the metrics table and the figures."""
    import pandas as pd

    from app.notices import coverage_warnings, ood_banner
    from core.export import html_report, provenance_frame

    fields = {"dataset hash": run.settings.get("_dataset"), **run.provenance}  # model identity: run.cal.meta
    tables = [("What produced this report", provenance_frame(fields, sites=run.cal))]
    warnings = [w.replace("**", "") for w in [ood_banner(run), *coverage_warnings(run)] if w]
    if warnings:
        tables.append(("Warnings", pd.DataFrame({"warning": warnings})))
    tables.append((f"Metrics on the test part (confidence {run.confidence:.0%})", run.results_frame()))
    ranked = ranking_view(run)
    if ranked is not None:
        tables.append(("Ranking of the methods (rank 1 = best; coverage judged by closeness to the nominal level)",
                       ranked[0]))
    return html_report(report_figures(run, label, figures), tables,
                       title=f"FlexCal calibration report — per-method plots for {label}")


STAR = "★"
RANK_LABELS = MappingProxyType({
    "coverage": "Coverage (≈ nominal)", "width_ratio": "Width / split CP (↓)", "spearman": "Spearman ρ (↑)",
    "miscalibration_area": "Miscalibration area (↓)", "mean_rank": "Mean rank",
})


def ranking_view(run):
    """The ranked metrics table for people, or None when the run defines none of the ranked metrics.

    Returns ``(view, cells)``: the values of :func:`core.metrics.rank_methods` with readable headers,
    the mean rank and a "★ best at" column (index "Method", best first), and the (row, column) cells
    holding a metric's best value (for highlighting).
    """
    from core.metrics import rank_methods

    keys = [k for k in ("coverage", "width_ratio", "spearman", "miscalibration_area")
            if any(rep.get(k) is not None for rep in run.reports.values())]
    if not keys:
        return None
    ranked = rank_methods(run.reports, keys=keys)
    view = ranked[keys + ["mean_rank"]].rename(columns=dict(RANK_LABELS))
    best_at = [", ".join(RANK_LABELS[k].split(" (")[0] for k in keys if ranked.loc[lab, f"{k}_best"])
               for lab in ranked.index]
    view.insert(0, f"{STAR} best at", [f"{STAR} {b}" if b else "" for b in best_at])
    view.index.name = "Method"
    cells = [(lab, RANK_LABELS[k]) for k in keys for lab in ranked.index if ranked.loc[lab, f"{k}_best"]]
    return view, cells
