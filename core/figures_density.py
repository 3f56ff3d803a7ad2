"""Point clouds that stay readable at 10^4 sites: robust ranges, density layers, point layers.

The site figures of :mod:`core.figures_sites` (parity, error against width, structure
maxima) are drawn here in layers:

- the axes span the data's robust range (:func:`axis_range`): the 0.5th-99.5th
  percentiles, unless the full range is barely wider; points beyond it are drawn on the
  border as one "beyond the axes" trace that says how many there are and keeps their true
  values in the hover text;
- above :data:`DENSITY_THRESHOLD` points the cloud becomes a 2-D histogram
  (:func:`density_trace`, counts on a log colour scale), with the binned median and
  5-95 % of the y values per x bin (:func:`binned_quantile_traces`); only the points worth
  clicking (the largest residuals, the out-of-domain ones, those beyond the axes) stay points;
- every point layer keeps its ``customdata`` (site or structure ids), so click and box
  selection still identify sites.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.figures_scales import robust_range

__all__ = [
    "BEYOND_MARKER",
    "DENSITY_THRESHOLD",
    "MAX_HIGHLIGHTED",
    "OOD_MARKER",
    "PointGroup",
    "add_point_layers",
    "axis_range",
    "binned_quantile_traces",
    "density_trace",
    "top_k_mask",
    "use_density",
]

#: Above this many points the error-width and parity figures draw a density, not a scatter.
DENSITY_THRESHOLD = 2000
#: In density mode, at most this many of the largest residuals stay drawn as points.
MAX_HIGHLIGHTED = 300
OOD_MARKER = dict(symbol="circle-open", size=11, color="#000000", line=dict(width=1.5))
BEYOND_MARKER = dict(symbol="diamond-open", size=9, color="#555555", line=dict(width=1.5))
# the full range is used when it is at most this much wider than the robust one
_FULL_RANGE_SLACK = 1.25
_DENSITY_SCALE = [[0.0, "#D6E4F0"], [0.35, "#86AED3"], [0.7, "#3A78B0"], [1.0, "#08306B"]]


def use_density(n: int, density: bool | None) -> bool:
    """``density`` if given (True/False), else whether ``n`` exceeds :data:`DENSITY_THRESHOLD`."""
    if density is None:
        return n > DENSITY_THRESHOLD
    if not isinstance(density, (bool, np.bool_)):
        raise TypeError(f"density: expected True, False or None, got {density!r}")
    return bool(density)


def axis_range(values, log: bool = False) -> tuple[float, float]:
    """Plotted ``(lo, hi)`` for ``values`` (data units): robust, or the padded full range when
    that is at most 25 % wider (no point is then hidden for nothing)."""
    robust = robust_range(values, log=log)
    full = robust_range(values, log=log, quantiles=(0.0, 100.0), pad=0.04)
    span = (lambda r: np.log10(r[1] / r[0])) if log else (lambda r: r[1] - r[0])
    return full if span(full) <= _FULL_RANGE_SLACK * span(robust) else robust


def top_k_mask(score, k: int = MAX_HIGHLIGHTED) -> np.ndarray:
    """(n,) bool: the ``k`` largest finite ``score`` values (ties broken by index)."""
    s = np.asarray(score, dtype=float)
    s = np.where(np.isfinite(s), s, -np.inf)
    out = np.zeros(s.shape[0], dtype=bool)
    if k > 0:
        out[np.argsort(-s, kind="stable")[: min(k, s.shape[0])]] = True
    return out


def density_trace(x, y, xr, yr, log: bool, bins: int = 60, unit: str = "eV/Å", colorbar_x: float = 1.02):
    """A ``go.Heatmap`` of point counts on a ``bins`` x ``bins`` grid over ``xr`` x ``yr``.

    Bins are geometric when ``log``; the colour is log10(count) with the colour bar labelled
    in counts; empty bins are transparent. Points outside the ranges are not counted.
    ``colorbar_x`` moves the colour bar right of another one (a point colour bar at x = 1.02).
    Plotly draws heatmaps under every scatter whatever the trace order, so callers add it
    after the point layers (``fig.data[0]`` stays a clickable point layer).
    """
    import plotly.graph_objects as go

    space = np.geomspace if log else np.linspace
    ex, ey = space(xr[0], xr[1], bins + 1), space(yr[0], yr[1], bins + 1)
    counts = np.histogram2d(np.asarray(x, float), np.asarray(y, float), bins=[ex, ey])[0].T
    z = np.where(counts > 0, np.log10(np.maximum(counts, 1)), np.nan).round(3)
    zmax = max(1.0, float(np.nanmax(z)) if np.isfinite(z).any() else 1.0)
    ticks = list(range(int(np.floor(zmax)) + 1))
    return go.Heatmap(
        x=ex, y=ey, z=z, text=counts.astype(np.int64),  # NaN (empty bin) is written as null: transparent
        zmin=0, zmax=zmax, colorscale=_DENSITY_SCALE, hoverongaps=False, name="density of points",
        colorbar=dict(title=dict(text="points per bin", side="right"), tickvals=ticks,
                      ticktext=[f"{10**t:,}" for t in ticks], x=colorbar_x, thickness=14),
        hovertemplate=f"x %{{x:.3g}} {unit}<br>y %{{y:.3g}} {unit}<br>%{{text}} points<extra></extra>",
    )


def binned_quantile_traces(x, y, xr, log: bool, n_bins: int = 14, min_count: int = 20,
                           what: str = "error", unit: str = "eV/Å") -> list:
    """Median and 5-95 % band of ``y`` in bins of ``x`` over ``xr`` (bins with >= ``min_count``).

    Returns ``[lower, upper (filled to lower), median]`` traces, or ``[]`` when no bin is full.
    """
    import plotly.graph_objects as go

    x, y = np.asarray(x, float), np.asarray(y, float)
    edges = (np.geomspace if log else np.linspace)(xr[0], xr[1], n_bins + 1)
    idx = np.digitize(x, edges) - 1
    rows = []
    for b in range(n_bins):
        yb = y[idx == b]
        yb = yb[np.isfinite(yb)]
        if yb.size >= min_count:
            centre = np.sqrt(edges[b] * edges[b + 1]) if log else 0.5 * (edges[b] + edges[b + 1])
            rows.append((centre, *np.percentile(yb, [5, 50, 95]), yb.size))
    if not rows:
        return []
    c, q5, q50, q95, cnt = (np.asarray(v) for v in zip(*rows))
    band = dict(color="rgba(0,0,0,0.35)", width=1, dash="dot")
    hover = f"bin at %{{x:.3g}} {unit}<br>{what} %{{y:.3g}} {unit}<extra>%{{fullData.name}}</extra>"
    return [
        go.Scatter(x=c, y=q5, mode="lines", line=band, name=f"5 % of {what}s per bin", showlegend=False,
                   hovertemplate=hover),
        go.Scatter(x=c, y=q95, mode="lines", line=band, fill="tonexty", fillcolor="rgba(0,0,0,0.07)",
                   name=f"5–95 % of {what}s per bin", hovertemplate=hover),
        go.Scatter(x=c, y=q50, mode="lines+markers", line=dict(color="#000000", width=2.5),
                   marker=dict(size=6), name=f"median {what} per bin", text=[f"{int(k)} points" for k in cnt],
                   hovertemplate=hover.replace("<extra>", "<br>%{text}<extra>")),  # no customdata: not a site
    ]


@dataclass
class PointGroup:
    """One point layer: its legend name, which points, their marker.

    ``mask`` (n,) selects the points; ``always`` draws them all even in density mode
    (out-of-domain points), otherwise only those also in the figure's ``show`` mask.
    Array-valued ``marker["color"]`` (n,) is subset along with the points.
    """

    name: str
    mask: np.ndarray
    marker: dict = field(default_factory=dict)
    always: bool = False


def _subset_marker(marker: dict, keep: np.ndarray) -> dict:
    out = dict(marker)
    if isinstance(out.get("color"), np.ndarray):
        out["color"] = out["color"][keep]
    return out


def _scatter(n_drawn: int):
    """``go.Scattergl`` above ``SCATTERGL_THRESHOLD`` points drawn, else ``go.Scatter`` (SVG)."""
    import plotly.graph_objects as go

    from core.figures import SCATTERGL_THRESHOLD

    return go.Scattergl if n_drawn > SCATTERGL_THRESHOLD else go.Scatter


def add_point_layers(fig, x, y, *, ranges, groups: list[PointGroup], show: np.ndarray, custom: Any,
                     hover: str, hover_text, ood: tuple[np.ndarray, str] | None = None, small: bool = False):
    """Add the point layers of a site figure to ``fig`` (changed in place, also returned).

    Parameters
    ----------
    x, y : ndarray (n,)
        Plotted coordinates (data units).
    ranges : ((xlo, xhi), (ylo, yhi))
        The axis ranges (data units): points outside go, clipped to the border, into one trace named
        ``"beyond the axes (k points, on the border)"`` whose hover text gives true values.
    groups : list of :class:`PointGroup`
        One trace each (points inside the ranges).
    show : ndarray (n,) bool
        The points drawn in density mode (all True for a plain scatter).
    custom : ndarray (n,) or (n, k) or None
        ``customdata`` per point (ids), kept on every point layer.
    hover : str
        Hover template of the in-range points (without ``<extra>``).
    hover_text : callable(idx ndarray) -> list of str
        True values of the points ``idx`` (for the border points).
    ood : (mask (n,) bool, legend name), optional
        The out-of-domain points, circled (open markers, clipped to the border).
    small : bool
        Smaller circles (density mode: they must not hide the density).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    xr, yr = ranges
    cd = None if custom is None else np.asarray(custom)
    inside = (x >= xr[0]) & (x <= xr[1]) & (y >= yr[0]) & (y <= yr[1])
    drawn = np.asarray(show, bool) | ~inside  # WebGL only for many points drawn (a context costs ~0.5 s)
    for g in groups:
        if g.always:
            drawn |= np.asarray(g.mask, bool)
    if ood is not None:
        drawn |= np.asarray(ood[0], bool)
    Scatter = _scatter(int(np.count_nonzero(drawn)))
    tail = "<extra></extra>"
    for g in groups:
        keep = np.asarray(g.mask, bool) & inside & (True if g.always else show)
        if not keep.any():
            continue
        fig.add_trace(Scatter(x=x[keep], y=y[keep], mode="markers", name=g.name, marker=_subset_marker(g.marker, keep),
                              customdata=None if cd is None else cd[keep], hovertemplate=hover + tail))
    cx, cy = np.clip(x, *xr), np.clip(y, *yr)
    ids_hover = hover.split("<br>", 2)[2] if hover.count("<br>") >= 2 else ""
    beyond = ~inside
    if beyond.any():
        idx = np.flatnonzero(beyond)
        fig.add_trace(Scatter(
            x=cx[idx], y=cy[idx], mode="markers", marker=dict(BEYOND_MARKER), text=hover_text(idx),
            name=f"beyond the axes ({idx.size} points, on the border)",
            customdata=None if cd is None else cd[idx],
            hovertemplate="%{text}" + ("<br>" + ids_hover if ids_hover else "") + "<br>beyond the axes" + tail,
        ))
    if ood is not None and np.any(ood[0]):
        m = np.asarray(ood[0], bool)
        fig.add_trace(Scatter(
            x=cx[m], y=cy[m], mode="markers", customdata=None if cd is None else cd[m],
            marker=dict(OOD_MARKER, size=7, opacity=0.7, line=dict(width=1)) if small else dict(OOD_MARKER),
            name=ood[1], hovertemplate=hover + tail,
        ))
    return fig
