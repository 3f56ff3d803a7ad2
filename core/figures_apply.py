"""Plotly figures of an applied calibration (``core.apply``): widths along a trajectory.

Same conventions as :mod:`core.figures` (arrays in, ``go.Figure`` out, plotly imported
inside, units on the axes, Okabe–Ito colours, ``Scattergl`` above 2000 points, frame ids in
``customdata`` so that a click identifies the frame). Never fits or loads anything.
"""

from __future__ import annotations

import numpy as np

from core.figures import SCATTERGL_THRESHOLD, _go, _layout, _vec  # noqa: F401  (shared figure helpers)

__all__ = ["plot_width_trajectory"]

_MAX_COLOR = "#D55E00"     # vermillion: per-frame maximum
_MEAN_COLOR = "#0072B2"    # blue: per-frame mean
_FLAG_COLOR = "#CC79A7"    # purple: flagged frames
_THRESHOLD_COLOR = "#555555"


def plot_width_trajectory(frame_index, max_width, mean_width, threshold=None, flagged=None):
    """Calibrated width against frame index: per-frame maximum and mean, threshold line, flags.

    Parameters
    ----------
    frame_index : array (m,)
        Frame numbers (x axis; also put into ``customdata``).
    max_width, mean_width : array (m,)
        Largest and mean per-atom width of each frame, eV/Å (+inf is drawn at the top of the
        finite range and listed in the hover text).
    threshold : float, optional
        Flag level, eV/Å: a dashed horizontal line.
    flagged : array of bool (m,), optional
        Frames to mark (open circles on the maximum curve).

    Returns
    -------
    plotly.graph_objects.Figure
    """
    go = _go()
    x = _vec("frame_index", frame_index)
    m = x.shape[0]
    w_max = _vec("max_width", max_width, m)
    w_mean = _vec("mean_width", mean_width, m)
    for name, w in (("max_width", w_max), ("mean_width", w_mean)):
        if np.isnan(w).any() or (w < 0).any():
            raise ValueError(f"{name}: widths must be >= 0 and not NaN")
    if threshold is not None:
        threshold = float(threshold)
        if not np.isfinite(threshold) or threshold <= 0:
            raise ValueError(f"threshold: expected a positive finite width in eV/Å, got {threshold!r}")
    flags = None
    if flagged is not None:
        flags = np.asarray(flagged)
        if flags.shape != (m,) or flags.dtype != bool:
            raise ValueError(f"flagged: expected a boolean array of shape ({m},), got {flags.dtype} {flags.shape}")
    finite = np.r_[w_max[np.isfinite(w_max)], w_mean[np.isfinite(w_mean)]]
    top = float(finite.max()) if finite.size else 1.0
    cap = max(top, threshold or 0.0) * 1.05

    def shown(w):
        return np.where(np.isfinite(w), w, cap)

    scatter = go.Scattergl if m > SCATTERGL_THRESHOLD else go.Scatter
    ids = x.astype(np.int64) if np.all(x == np.round(x)) else x
    hover = "frame %{customdata}<br>%{meta}: %{text} eV/Å<extra></extra>"
    fig = go.Figure()
    for name, w, color, dash in (("max per frame", w_max, _MAX_COLOR, None), ("mean per frame", w_mean, _MEAN_COLOR, "dot")):
        fig.add_trace(scatter(
            x=x, y=shown(w), mode="lines", name=name, customdata=ids, meta=name,
            text=[f"{v:.4g}" for v in w], line=dict(color=color, width=1.6, dash=dash), hovertemplate=hover))
    if flags is not None and flags.any():
        fig.add_trace(scatter(
            x=x[flags], y=shown(w_max)[flags], mode="markers", name=f"flagged ({int(flags.sum())})",
            customdata=ids[flags], meta="max per frame", text=[f"{v:.4g}" for v in w_max[flags]],
            marker=dict(symbol="circle-open", size=8, color=_FLAG_COLOR, line=dict(width=1.5)),
            hovertemplate=hover))
    if threshold is not None:
        fig.add_trace(go.Scatter(
            x=[float(x.min()), float(x.max())], y=[threshold, threshold], mode="lines",
            name=f"threshold {threshold:.3g} eV/Å", line=dict(color=_THRESHOLD_COLOR, dash="dash"),
            hoverinfo="skip"))
    _layout(fig, "Calibrated force width along the structures", "frame", "width (eV/Å)")
    fig.update_yaxes(rangemode="tozero")
    return fig
