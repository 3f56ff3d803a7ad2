"""Plotly figure builders for FlexCal results.

Every builder takes arrays or metric reports and returns a
``plotly.graph_objects.Figure``; none fits or loads anything, so the app and
the notebooks only arrange figures. Conventions:

- axis titles carry units (forces and widths in eV/Å, energies in eV);
- above :data:`SCATTERGL_THRESHOLD` points, scatters use ``go.Scattergl``;
- colours come from the colour-blind-safe Okabe–Ito palette, one fixed colour
  per calibration method (:func:`method_colors`), and Viridis for continuous
  values;
- ``ids`` arguments go into ``customdata`` so a click identifies the site
  (``(structure_id, atom_index)``) or structure.

plotly is imported inside the functions (no heavy imports at import time).
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from core import metrics as _metrics

__all__ = [
    "OKABE_ITO",
    "SCATTERGL_THRESHOLD",
    "figures_to_html",
    "method_color",
    "method_colors",
    "plot_calibration_curve",
    "plot_confidence_band",
    "plot_coverage_curve",
    "plot_learning_curve",
    "plot_metric_bars",
    "plot_parity",
    "plot_species_coverage",
    "plot_structure_uncertainty",
    "plot_training_curve",
    "plot_uncertainty_error",
    "plot_width_histogram",
]

#: Okabe & Ito (2008) colour-blind-safe palette (without black, kept for references).
OKABE_ITO = ["#D55E00", "#0072B2", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
_REFERENCE = "#888888"
#: Above this many points scatter traces are WebGL (``go.Scattergl``).
SCATTERGL_THRESHOLD = 2000
_FORCE_UNIT = "eV/Å"

# --------------------------------------------------------------------------- helpers
def _fixed_colors() -> dict[str, str]:
    """Registry colours keyed by lower-case method name and label (one source: the method registry)."""
    from core.calibration.registry import method_names, method_spec

    out: dict[str, str] = {}
    for name in method_names():
        spec = method_spec(name)
        out[spec.label.lower()] = spec.color
        out[name.lower()] = spec.color
    return out


def method_color(label: str) -> str:
    """Colour of one method label: fixed for the names in ``METHODS``, else a stable pick."""
    fixed = _fixed_colors()
    key = str(label).strip().lower()
    if key in fixed:
        return fixed[key]
    return OKABE_ITO[zlib.crc32(key.encode()) % len(OKABE_ITO)]


def method_colors(labels) -> dict[str, str]:
    """Colours for several labels at once: known methods keep their fixed colour,
    other labels get the palette colours not yet used, in order (so no two labels
    of one figure share a colour while the palette lasts)."""
    labels = [str(x) for x in labels]
    fixed = _fixed_colors()
    out: dict[str, str] = {}
    used = set()
    for lab in labels:
        key = lab.strip().lower()
        if key in fixed:
            out[lab] = fixed[key]
            used.add(out[lab])
    free = [c for c in OKABE_ITO if c not in used]
    i = 0
    for lab in labels:
        if lab in out:
            continue
        if i < len(free):
            out[lab] = free[i]
            i += 1
        else:
            out[lab] = method_color(lab)
    return out


def _go():
    import plotly.graph_objects as go

    return go


def _scatter_cls(n: int):
    go = _go()
    return go.Scattergl if n > SCATTERGL_THRESHOLD else go.Scatter


def _vec(name: str, value: Any, n: int | None = None) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a numeric array, got {type(value).__name__}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name}: expected {n} values, got shape {arr.shape}")
    return arr

def _curve_pairs(curves, x_name: str, y_name: str):
    """Validated ``(label, x (k,), y (k,))`` from a dict of label -> (x, y) pairs."""
    for label, pair in curves.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"curves[{label!r}]: expected ({x_name}, {y_name}), got {type(pair).__name__}")
        x = _vec(f"curves[{label!r}] {x_name}", pair[0])
        yield label, x, _vec(f"curves[{label!r}] {y_name}", pair[1], x.shape[0])


def _ids(name: str, ids: Any, n: int, cols: int | None) -> np.ndarray | None:
    if ids is None:
        return None
    arr = np.asarray(ids)
    want = (n,) if cols is None else (n, cols)
    if arr.shape != want:
        raise ValueError(f"{name}: expected shape {want}, got {arr.shape}")
    return arr


def _check_dict(name: str, value: Any) -> dict:
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{name}: expected a non-empty dict of label -> data, got {type(value).__name__}")
    return value


def _layout(fig, title: str, xtitle: str, ytitle: str, **kw):
    fig.update_layout(
        title=dict(text=title, x=0.02, xanchor="left"),
        xaxis_title=xtitle,
        yaxis_title=ytitle,
        template="plotly_white",
        legend=dict(bgcolor="rgba(255,255,255,0.7)"),
        font=dict(size=13),
        margin=dict(l=70, r=30, t=70, b=60),
        **kw,
    )
    return fig


def _diagonal(lo: float, hi: float, name: str):
    return _go().Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name=name, line=dict(color=_REFERENCE, dash="dash"))


def _fmt(x: float | None, digits: int = 3) -> str:
    return "undefined" if x is None else f"{x:.{digits}f}"


# --------------------------------------------------------------------------- parity
def plot_parity(
    reference,
    predicted,
    color=None,
    color_label: str = "width (eV/Å)",
    quantity: str = "force",
    ids=None,
):
    """Predicted vs reference values with the y = x line; MAE and RMSE in the title.

    Parameters
    ----------
    reference, predicted : array-like of shape (n,) or (n, 3)
        Force components (eV/Å, (n, 3) arrays are flattened to components) or
        energies (``quantity="energy"``, eV; ``"energy_per_atom"``, eV/atom).
    color : array-like of shape (n,) or matching the flattened values, optional
        Per-point colour value (e.g. the site's width); a per-site array is
        repeated over the 3 components.
    color_label : str
        Colour-bar title (with units).
    ids : array-like of shape (n, 2), optional
        ``(structure_id, atom_index)`` per row, put into ``customdata``
        (for forces also the component 0/1/2 as a third column).
    """
    go = _go()
    units = {"force": _FORCE_UNIT, "energy": "eV", "energy_per_atom": "eV/atom"}
    if quantity not in units:
        raise ValueError(f"quantity: expected one of {sorted(units)}, got {quantity!r}")
    ref = np.asarray(reference, dtype=float)
    pred = np.asarray(predicted, dtype=float)
    if ref.shape != pred.shape or ref.size == 0 or ref.ndim not in (1, 2):
        raise ValueError(f"predicted: expected the shape of reference {ref.shape}, got {pred.shape}")
    n_rows = ref.shape[0]
    per_row = 1 if ref.ndim == 1 else ref.shape[1]
    x, y = ref.ravel(), pred.ravel()
    custom = None
    ids_arr = _ids("ids", ids, n_rows, 2)
    if ids_arr is not None:
        custom = np.repeat(ids_arr, per_row, axis=0)
        if per_row > 1:
            custom = np.column_stack([custom, np.tile(np.arange(per_row), n_rows)])
    c = None
    if color is not None:
        c = np.asarray(color, dtype=float).ravel()
        if c.shape[0] == n_rows and per_row > 1:
            c = np.repeat(c, per_row)
        if c.shape[0] != x.shape[0]:
            raise ValueError(f"color: expected {n_rows} or {x.shape[0]} values, got {c.shape[0]}")
    unit = units[quantity]
    name = {"force": "force component", "energy": "energy", "energy_per_atom": "energy per atom"}[quantity]
    err = y - x
    mae, rmse = float(np.mean(np.abs(err))), float(np.sqrt(np.mean(err**2)))
    marker: dict[str, Any] = dict(size=5, opacity=0.7, color="#0072B2")
    if c is not None:
        marker.update(color=c, colorscale="Viridis", showscale=True, colorbar=dict(title=dict(text=color_label)))
    hover = f"ref %{{x:.4g}} {unit}<br>pred %{{y:.4g}} {unit}"
    if custom is not None:
        # energies are per structure: the atom column is then a placeholder
        hover += "<br>structure %{customdata[0]}" + (", atom %{customdata[1]}" if quantity == "force" else "")
        if per_row > 1:
            hover += ", component %{customdata[2]}"
    Scatter = _scatter_cls(x.shape[0])
    fig = go.Figure()
    fig.add_trace(
        Scatter(
            x=x, y=y, mode="markers", marker=marker, name=name, customdata=custom,
            hovertemplate=hover + "<extra></extra>",
        )
    )
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    fig.add_trace(_diagonal(lo, hi, "y = x"))
    title = f"{name.capitalize()} parity — MAE {mae:.3g} {unit}, RMSE {rmse:.3g} {unit}"
    _layout(fig, title, f"reference {name} ({unit})", f"predicted {name} ({unit})")
    pad = 0.03 * (hi - lo) if hi > lo else 1.0
    fig.update_xaxes(range=[lo - pad, hi + pad], constrain="domain")
    fig.update_yaxes(range=[lo - pad, hi + pad], scaleanchor="x", scaleratio=1, constrain="domain")
    # a horizontal legend under the title keeps it off the colour bar
    fig.update_layout(legend=dict(orientation="h", x=0.5, xanchor="center", y=1.01, yanchor="bottom"),
                      margin=dict(t=90))
    return fig


# --------------------------------------------------------------------------- calibration
def plot_coverage_curve(curves: dict):
    """Observed vs nominal coverage, one line per method, with the diagonal.

    Parameters
    ----------
    curves : dict of label -> (levels (k,), observed (k,))
        E.g. from :func:`core.metrics.observed_coverage_curve`.
    """
    go = _go()
    _check_dict("curves", curves)
    colors = method_colors(curves)
    fig = go.Figure()
    for label, lv, ob in _curve_pairs(curves, "levels", "observed"):
        area = float(np.mean(np.abs(ob - lv)))
        fig.add_trace(
            go.Scatter(
                x=lv,
                y=ob,
                mode="lines+markers",
                name=f"{label} (area {area:.3f})",
                line=dict(color=colors[str(label)]),
            )
        )
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="ideal", line=dict(color=_REFERENCE, dash="dash")))
    _layout(
        fig, "Calibration: observed vs nominal coverage",
        "nominal coverage p (fraction)", "observed coverage (fraction)",
    )
    fig.update_xaxes(range=[0, 1], constrain="domain")
    fig.update_yaxes(range=[0, 1], scaleanchor="x", scaleratio=1, constrain="domain")
    return fig


def plot_calibration_curve(levels, observed, label: str = ""):
    """One calibration curve with the miscalibration area shaded and annotated.

    The area is ``mean |observed(p) - p|`` over the given levels, as
    :func:`core.metrics.miscalibration_area`.
    """
    go = _go()
    lv = _vec("levels", levels)
    ob = _vec("observed", observed, lv.shape[0])
    order = np.argsort(lv)
    lv, ob = lv[order], ob[order]
    area = float(np.mean(np.abs(ob - lv)))
    color = method_color(label) if label else _fixed_colors()["flexible"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="ideal", line=dict(color=_REFERENCE, dash="dash")))
    fig.add_trace(
        go.Scatter(
            x=np.r_[lv, lv[::-1]],
            y=np.r_[ob, lv[::-1]],
            fill="toself",
            fillcolor="rgba(213,94,0,0.2)",
            line=dict(width=0),
            name="miscalibration area",
            hoverinfo="skip",
        )
    )
    fig.add_trace(go.Scatter(x=lv, y=ob, mode="lines+markers", name=label or "observed", line=dict(color=color)))
    fig.add_annotation(
        x=0.97, y=0.05, xref="x", yref="y", xanchor="right", yanchor="bottom", showarrow=False,
        text=f"miscalibration area = {area:.3f}", font=dict(size=14), bgcolor="rgba(255,255,255,0.8)",
    )
    title = f"Calibration curve{' — ' + label if label else ''}"
    _layout(fig, title, "nominal coverage p (fraction)", "observed coverage (fraction)")
    fig.update_xaxes(range=[0, 1], constrain="domain")
    fig.update_yaxes(range=[0, 1], scaleanchor="x", scaleratio=1, constrain="domain")
    return fig


def plot_uncertainty_error(errors, widths, label: str | None = None, ids=None):
    """Log-log scatter of error against width with the y = x line; Spearman in the title.

    Zero values cannot sit on a log axis: they are drawn at a floor one decade
    below the smallest positive value (said in the hover text).

    Parameters
    ----------
    errors, widths : array-like of shape (n,), eV/Å
    label : str, optional
        Method name (sets the colour).
    ids : array-like of shape (n, 2), optional
        ``(structure_id, atom_index)`` per site, into ``customdata``.
    """
    go = _go()
    e = _vec("errors", errors)
    w = _vec("widths", widths, e.shape[0])
    rho = _metrics.spearman(e, w)
    ids_arr = _ids("ids", ids, e.shape[0], 2)
    pos = np.r_[e[e > 0], w[(w > 0) & np.isfinite(w)]]
    floor = float(pos.min()) / 10 if pos.size else 1e-6
    ep, wp = np.maximum(e, floor), np.clip(w, floor, None)
    Scatter = _scatter_cls(e.shape[0])
    hover = "width %{x:.4g} eV/Å<br>error %{y:.4g} eV/Å"
    if ids_arr is not None:
        hover += "<br>structure %{customdata[0]}, atom %{customdata[1]}"
    fig = go.Figure()
    fig.add_trace(
        Scatter(
            x=wp, y=ep, mode="markers", name=label or "sites", customdata=ids_arr,
            marker=dict(size=5, opacity=0.6, color=method_color(label) if label else "#0072B2"),
            hovertemplate=hover + "<extra></extra>",
        )
    )
    fin = np.r_[ep, wp[np.isfinite(wp)]]
    lo, hi = float(fin.min()), float(fin.max())
    fig.add_trace(_diagonal(lo, hi, "error = width"))
    title = f"Error vs width{' — ' + label if label else ''} (Spearman ρ = {_fmt(rho)})"
    _layout(fig, title, "predicted width (eV/Å)", "force error ‖ΔF‖ (eV/Å)")
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return fig


def plot_species_coverage(reports: dict, confidence: float):
    """Grouped bars of per-species coverage (one group per element) with the nominal line.

    Parameters
    ----------
    reports : dict of label -> report from :func:`core.metrics.calibration_report`
        (uses ``species_coverage``, a dict ``str(Z) -> coverage``).
    confidence : float
        Nominal coverage, drawn as a line.
    """
    go = _go()
    _check_dict("reports", reports)
    conf = _metrics._check_level("confidence", confidence)
    zs: set[int] = set()
    for label, rep in reports.items():
        sc = rep.get("species_coverage") if isinstance(rep, dict) else None
        if not sc:
            raise ValueError(f"reports[{label!r}]: has no species_coverage (compute the report with species=)")
        zs.update(int(z) for z in sc)
    order = sorted(zs)
    symbols = [_symbol(z) for z in order]
    colors = method_colors(reports)
    fig = go.Figure()
    for label, rep in reports.items():
        sc = {int(z): v for z, v in rep["species_coverage"].items()}
        fig.add_trace(
            go.Bar(x=symbols, y=[sc.get(z) for z in order], name=str(label), marker_color=colors[str(label)])
        )
    # the line itself is a full-width shape; this trace only carries its legend entry
    fig.add_hline(y=conf, line=dict(color="#000000", dash="dash"))
    fig.add_trace(
        go.Scatter(
            x=[None], y=[None], mode="lines", name=f"nominal {conf:.0%}", line=dict(color="#000000", dash="dash")
        )
    )
    _layout(fig, "Coverage per species", "element", "coverage (fraction)", barmode="group")
    fig.update_yaxes(range=[0, 1.05])
    return fig


def _symbol(z: int) -> str:
    try:
        from ase.data import chemical_symbols

        return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"
    except ImportError:  # pragma: no cover - ase is a dependency
        return f"Z={z}"


def plot_width_histogram(widths_by_label: dict, log: bool = False, nbins: int = 50):
    """Overlaid histograms of predicted widths, one per method.

    ``log=True`` histograms log10(width) (non-positive widths dropped).
    """
    go = _go()
    _check_dict("widths_by_label", widths_by_label)
    colors = method_colors(widths_by_label)
    fig = go.Figure()
    for label, w in widths_by_label.items():
        w = _vec(f"widths_by_label[{label!r}]", w)
        w = w[np.isfinite(w)]
        if log:
            w = np.log10(w[w > 0])
        fig.add_trace(
            go.Histogram(x=w, name=str(label), opacity=0.6, nbinsx=nbins, marker_color=colors[str(label)])
        )
    xt = "log10 predicted width (eV/Å)" if log else "predicted width (eV/Å)"
    _layout(fig, "Distribution of predicted widths", xt, "number of sites", barmode="overlay")
    return fig


def plot_structure_uncertainty(max_errors, max_widths, ids=None):
    """Per structure: max site error against max site width (log-log), Spearman in the title.

    Arguments follow the ``(errors, widths)`` order and match
    :func:`core.metrics.structure_maxima`; ``ids`` (m,) are the structure ids
    (``np.unique(structure_ids)``), put into ``customdata``.
    """
    go = _go()
    e = _vec("max_errors", max_errors)
    w = _vec("max_widths", max_widths, e.shape[0])
    ids_arr = _ids("ids", ids, e.shape[0], None)
    rho = _metrics.spearman(e, w) if np.all(e >= 0) else None
    pos = np.r_[e[e > 0], w[(w > 0) & np.isfinite(w)]]
    floor = float(pos.min()) / 10 if pos.size else 1e-6
    ep, wp = np.maximum(e, floor), np.clip(w, floor, None)
    hover = "max width %{x:.4g} eV/Å<br>max error %{y:.4g} eV/Å"
    if ids_arr is not None:
        hover += "<br>structure %{customdata}"
    fig = go.Figure()
    fig.add_trace(
        _scatter_cls(e.shape[0])(
            x=wp, y=ep, mode="markers", name="structures", customdata=ids_arr,
            marker=dict(size=7, opacity=0.75, color="#0072B2"), hovertemplate=hover + "<extra></extra>",
        )
    )
    fin = np.r_[ep, wp[np.isfinite(wp)]]
    lo, hi = float(fin.min()), float(fin.max())
    fig.add_trace(_diagonal(lo, hi, "error = width"))
    _layout(
        fig, f"Structure uncertainty (Spearman ρ = {_fmt(rho)})",
        "max site width in structure (eV/Å)", "max site error in structure (eV/Å)",
    )
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return fig


# --------------------------------------------------------------------------- training / teaching


def __getattr__(name: str):
    if name in ("plot_training_curve", "plot_confidence_band", "plot_metric_bars", "plot_learning_curve",
                "figures_to_html"):
        from core import figures_studies

        return getattr(figures_studies, name)
    raise AttributeError(f"module 'core.figures' has no attribute {name!r}")
