"""Site and structure figures: parity, error against width, structure maxima (readable at 10^4).

Each builder draws a scatter below :data:`core.figures_density.DENSITY_THRESHOLD` points and,
above it, a 2-D density with the points worth clicking on top (``density=`` forces either).
Axes span the robust range (points beyond it sit on the border, counted in the legend), log
axes have ticks at decades or 1-2-5 steps, and points can be coloured by method, element
(``species``, Jmol colours, symbols in the legend) or calibration domain (``ood``).
Ids go into ``customdata`` of every point layer, so a click or a box still names sites.
Re-exported by :mod:`core.figures`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core import metrics as _metrics
from core.figures import _diagonal, _fmt, _go, _ids, _layout, _vec, method_color
from core.figures_density import (
    PointGroup,
    add_point_layers,
    axis_range,
    binned_quantile_traces,
    density_trace,
    top_k_mask,
    use_density,
)
from core.figures_scales import apply_log_axis, element_colors, element_symbol

__all__ = ["COLOR_BY", "plot_parity", "plot_structure_uncertainty", "plot_uncertainty_error"]

#: How the point layers can be coloured.
COLOR_BY = ("method", "element", "out of domain")
_FORCE_UNIT = "eV/Å"
_IN_DOMAIN, _OUT_DOMAIN = "#0072B2", "#D55E00"


def _flags(name: str, value: Any, n: int, dtype) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {arr.shape}")
    return arr.astype(dtype)


def _domain_name(where: str, mask: np.ndarray, per_row: int, what: str) -> str:
    """``"<where> the calibration domain (k sites[, 3k components])"``."""
    k = int(mask.sum())
    extra = f", {k} components" if per_row > 1 else ""
    return f"{where} the calibration domain ({k // per_row} {what}{extra})"


def _groups(color_by: str, n: int, base_marker: dict, name: str, species, ood, what: str,
            per_row: int = 1) -> list[PointGroup]:
    """The point layers for one colouring (validates that its data was given)."""
    if color_by not in COLOR_BY:
        raise ValueError(f"color_by: expected one of {list(COLOR_BY)}, got {color_by!r}")
    if color_by == "element":
        if species is None:
            raise ValueError("species: color_by='element' needs the atomic numbers (shape (n,)), got None")
        cols = element_colors(species)
        size = base_marker.get("size", 5)
        return [PointGroup(element_symbol(z), species == z, dict(size=size + 1, opacity=0.85, color=c,
                                                                  line=dict(width=0.8, color="rgba(0,0,0,0.6)")))
                for z, c in cols.items()]
    if color_by == "out of domain":
        if ood is None:
            raise ValueError("ood: color_by='out of domain' needs the out-of-domain flags (shape (n,)), got None")
        size = base_marker.get("size", 5)
        return [PointGroup(_domain_name("in", ~ood, per_row, what), ~ood,
                           dict(size=size, opacity=0.6, color=_IN_DOMAIN)),
                PointGroup(_domain_name("outside", ood, per_row, what), ood,
                           dict(size=size + 1, opacity=0.85, color=_OUT_DOMAIN), always=True)]
    return [PointGroup(name, np.ones(n, bool), base_marker)]


def _loglog(e, w, *, title: str, labels: tuple[str, str], points: tuple[str, dict], custom, id_hover: str,
            species, ood, color_by: str, density):
    """Shared body of the two log-log error-width figures (``e``, ``w`` validated, (n,)).

    ``points`` is the (legend name, marker) of the plain point layer.
    """
    what = "sites" if labels[0] == "width" else "structures"
    name, marker = points
    go = _go()
    n = e.shape[0]
    pos = np.r_[e[e > 0], w[(w > 0) & np.isfinite(w)]]
    floor = float(pos.min()) / 10 if pos.size else 1e-6
    ep, wp = np.maximum(e, floor), np.clip(w, floor, None)
    wp = np.where(np.isfinite(wp), wp, np.nanmax(np.where(np.isfinite(wp), wp, floor)) * 10)
    # each axis spans its own robust range, so the cloud fills the plot; y = x is clipped to it
    xr, yr = axis_range(wp, log=True), axis_range(ep, log=True)
    dens = use_density(n, density)
    fig = go.Figure()
    xn, yn = labels
    show = top_k_mask(ep / wp) if dens else np.ones(n, bool)
    groups = _groups(color_by, n, marker, name, species, ood, what)
    if dens and color_by == "method":
        groups[0].name = f"{name}: largest error/width ({int(show.sum())} {what})"
    hover = f"{xn} %{{x:.4g}} eV/Å<br>{yn} %{{y:.4g}} eV/Å" + id_hover

    def text(idx):
        return [f"{xn} {w[i]:.4g} eV/Å<br>{yn} {e[i]:.4g} eV/Å" for i in idx]

    circled = None if ood is None or color_by == "out of domain" else (ood, _domain_name("outside", ood, 1, what))
    add_point_layers(fig, wp, ep, ranges=(xr, yr), groups=groups, show=show, custom=custom, hover=hover,
                     hover_text=text, ood=circled, small=dens)
    if dens:  # added after the points (fig.data[0] stays clickable); plotly draws heatmaps below scatters
        fig.add_traces([density_trace(wp, ep, xr, yr, log=True), *binned_quantile_traces(wp, ep, xr, log=True)])
    fig.add_trace(_diagonal(min(xr[0], yr[0]), max(xr[1], yr[1]), "error = width"))
    _layout(fig, title, *labels_with_units(labels), legend_below=True)
    apply_log_axis(fig, "x", *xr)
    apply_log_axis(fig, "y", *yr)
    return fig


def labels_with_units(labels: tuple[str, str]) -> tuple[str, str]:
    """Axis titles of the error-width figures (eV/Å)."""
    return {"width": "predicted width (eV/Å)", "max width": "max site width in structure (eV/Å)"}[labels[0]], \
        {"error": "force error ‖ΔF‖ (eV/Å)", "max error": "max site error in structure (eV/Å)"}[labels[1]]


def plot_uncertainty_error(errors, widths, label: str | None = None, ids=None, *, species=None, ood=None,
                           color_by: str = "method", density: bool | None = None):
    """Error against width on log-log axes with the y = x line; Spearman ρ in the title.

    Zero values cannot sit on a log axis: they are drawn at a floor one decade below the
    smallest positive value. Both axes share the robust range of the data.

    Parameters
    ----------
    errors, widths : array-like of shape (n,), eV/Å
    label : str, optional
        Method name (sets the colour).
    ids : array-like of shape (n, 2), optional
        ``(structure_id, atom_index)`` per site, into ``customdata`` of every point layer.
    species : array-like of int, shape (n,), optional
        Atomic numbers, for ``color_by="element"``.
    ood : array-like of bool, shape (n,), optional
        Out-of-domain flags: circled, or a colour of their own with ``color_by="out of domain"``.
    color_by : {"method", "element", "out of domain"}
    density : bool, optional
        Force the density view (True) or the scatter (False); default: above 2,000 sites.
    """
    e = _vec("errors", errors)
    n = e.shape[0]
    w = _vec("widths", widths, n)
    rho = _metrics.spearman(e, w)
    ids_arr = _ids("ids", ids, n, 2)
    title = f"Error vs width{' — ' + label if label else ''} (Spearman ρ = {_fmt(rho)})"
    marker = dict(size=5, opacity=0.6, color=method_color(label) if label else "#0072B2")
    return _loglog(e, w, title=title, labels=("width", "error"), points=(label or "sites", marker),
                   custom=ids_arr, id_hover="" if ids_arr is None else "<br>structure %{customdata[0]}, atom "
                   "%{customdata[1]}", species=_flags("species", species, n, np.int64),
                   ood=_flags("ood", ood, n, bool), color_by=color_by, density=density)


def plot_structure_uncertainty(max_errors, max_widths, ids=None, *, ood=None, color_by: str = "method",
                               density: bool | None = None):
    """Per structure: max site error against max site width (log-log), Spearman in the title.

    Arguments follow the ``(errors, widths)`` order and match
    :func:`core.metrics.structure_maxima`; ``ids`` (m,) are the structure ids
    (``np.unique(structure_ids)``), put into ``customdata``; ``ood`` (m,) flags the
    structures outside the calibration domain (``color_by`` as :func:`plot_uncertainty_error`,
    without "element").
    """
    e = _vec("max_errors", max_errors)
    m = e.shape[0]
    w = _vec("max_widths", max_widths, m)
    ids_arr = _ids("ids", ids, m, None)
    rho = _metrics.spearman(e, w) if np.all(e >= 0) else None
    return _loglog(e, w, title=f"Structure uncertainty (Spearman ρ = {_fmt(rho)})", labels=("max width", "max error"),
                   points=("structures", dict(size=7, opacity=0.75, color="#0072B2")), custom=ids_arr,
                   id_hover="" if ids_arr is None else "<br>structure %{customdata}", species=None,
                   ood=_flags("ood", ood, m, bool), color_by=color_by, density=density)


def _parity_values(reference, predicted, ids, color, species, ood):
    """Flattened (x, y, customdata, colour, species, ood) and the rows/components layout."""
    ref = np.asarray(reference, dtype=float)
    pred = np.asarray(predicted, dtype=float)
    if ref.shape != pred.shape or ref.size == 0 or ref.ndim not in (1, 2):
        raise ValueError(f"predicted: expected the shape of reference {ref.shape}, got {pred.shape}")
    n_rows = ref.shape[0]
    per_row = 1 if ref.ndim == 1 else ref.shape[1]
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
        if c.shape[0] != ref.size:
            raise ValueError(f"color: expected {n_rows} or {ref.size} values, got {c.shape[0]}")
    sp = _flags("species", species, n_rows, np.int64)
    oo = _flags("ood", ood, n_rows, bool)
    rep = (lambda a: None if a is None else np.repeat(a, per_row))
    return ref.ravel(), pred.ravel(), custom, c, rep(sp), rep(oo), per_row


def plot_parity(reference, predicted, color=None, color_label: str = "width (eV/Å)", quantity: str = "force",
                ids=None, *, species=None, ood=None, color_by: str = "method", density: bool | None = None):
    """Predicted vs reference values with the y = x line; MAE and RMSE in the title.

    Parameters
    ----------
    reference, predicted : array-like of shape (n,) or (n, 3)
        Force components (eV/Å, (n, 3) arrays are flattened to components) or
        energies (``quantity="energy"``, eV; ``"energy_per_atom"``, eV/atom).
    color : array-like of shape (n,) or matching the flattened values, optional
        Per-point colour value (e.g. the site's width) for ``color_by="method"``; a
        per-site array is repeated over the 3 components.
    color_label : str
        Colour-bar title (with units).
    ids : array-like of shape (n, 2), optional
        ``(structure_id, atom_index)`` per row, put into ``customdata``
        (for forces also the component 0/1/2 as a third column).
    species, ood : array-like of shape (n,), optional
        Atomic numbers and out-of-domain flags per row, as :func:`plot_uncertainty_error`.
    color_by : {"method", "element", "out of domain"}
    density : bool, optional
        Density view above 2,000 values by default; the largest |predicted − reference|
        stay points.
    """
    go = _go()
    units = {"force": _FORCE_UNIT, "energy": "eV", "energy_per_atom": "eV/atom"}
    if quantity not in units:
        raise ValueError(f"quantity: expected one of {sorted(units)}, got {quantity!r}")
    x, y, custom, c, sp, oo, per_row = _parity_values(reference, predicted, ids, color, species, ood)
    unit = units[quantity]
    name = {"force": "force component", "energy": "energy", "energy_per_atom": "energy per atom"}[quantity]
    err = y - x
    mae, rmse = float(np.mean(np.abs(err))), float(np.sqrt(np.mean(err**2)))
    lo, hi = axis_range(np.r_[x, y])
    dens = use_density(x.shape[0], density)
    fig = go.Figure()
    show = top_k_mask(np.abs(err)) if dens else np.ones(x.shape[0], bool)
    marker: dict[str, Any] = dict(size=5, opacity=0.7, color="#0072B2")
    if c is not None:
        marker.update(color=c, colorscale="Viridis", showscale=True,
                      colorbar=dict(title=dict(text=color_label, side="right"), x=1.02, thickness=14))
    what = "sites" if quantity == "force" else "structures"
    groups = _groups(color_by, x.shape[0], marker, name, sp, oo, what, per_row)
    if dens and color_by == "method":
        groups[0].name = f"largest |error| ({int(show.sum())} {'components' if per_row > 1 else what})"
    hover = f"ref %{{x:.4g}} {unit}<br>pred %{{y:.4g}} {unit}"
    if custom is not None:
        # energies are per structure: the atom column is then a placeholder
        hover += "<br>structure %{customdata[0]}" + (", atom %{customdata[1]}" if quantity == "force" else "")
        if per_row > 1:
            hover += ", component %{customdata[2]}"

    def text(idx):
        return [f"ref {x[i]:.4g} {unit}<br>pred {y[i]:.4g} {unit}" for i in idx]

    circled = None if oo is None or color_by == "out of domain" else (oo, _domain_name("outside", oo, per_row, what))
    add_point_layers(fig, x, y, ranges=((lo, hi), (lo, hi)), groups=groups, show=show, custom=custom, hover=hover,
                     hover_text=text, ood=circled, small=dens)
    if dens:  # after the points, drawn below them (see density_trace)
        fig.add_trace(density_trace(x, y, (lo, hi), (lo, hi), log=False, unit=unit,
                                    colorbar_x=1.2 if c is not None and color_by == "method" else 1.02))
    fig.add_trace(_diagonal(lo, hi, "y = x"))
    title = f"{name.capitalize()} parity — MAE {mae:.3g} {unit}, RMSE {rmse:.3g} {unit}"
    _layout(fig, title, f"reference {name} ({unit})", f"predicted {name} ({unit})", legend_below=True)
    fig.update_xaxes(range=[lo, hi], constrain="domain")
    fig.update_yaxes(range=[lo, hi], scaleanchor="x", scaleratio=1, constrain="domain")
    return fig
