"""Figures that compare calibration methods side by side (issue 12, item 15).

* :func:`plot_small_multiples`: one panel per method, error vs width (log-log) or force parity
  coloured by the method's width, every panel on the same axis ranges (and the same colour scale),
  so a glance compares them.
* :func:`plot_species_coverage_intervals`: coverage per element (or any group of
  :func:`core.metrics.breakdown.breakdown`) per method with its binomial interval, the nominal line
  and the range expected for the calibration size.

Arrays in, ``plotly.graph_objects.Figure`` out (plotly imported inside); colours per method from
:func:`core.figures.method_colors`; axis titles carry units (eV/Å).
"""

from __future__ import annotations

import math
from types import MappingProxyType
import numpy as np

from core import metrics as _metrics
from core.validation import check_confidence
from core.figures import _check_dict, _layout, _scatter_cls, _vec, method_colors

__all__ = ["INTERVALS", "SMALL_MULTIPLE_KINDS", "plot_small_multiples", "plot_species_coverage_intervals"]

SMALL_MULTIPLE_KINDS = ("error_width", "parity")
_REFERENCE = "#888888"
_UNIT = "eV/Å"


def _subsample(n: int, max_points: int | None, seed: int) -> np.ndarray:
    """The same seeded subset of site indices for every panel (all of them when n <= max_points)."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(max_points), replace=False))


def _grid(n_panels: int, columns: int) -> tuple[int, int]:
    cols = max(1, min(int(columns), n_panels))
    return int(math.ceil(n_panels / cols)), cols


def _log_range(values: np.ndarray) -> tuple[float, list[float]]:
    """(floor for zeros, [log10 lo, log10 hi] padded) over the finite positive values."""
    pos = values[np.isfinite(values) & (values > 0)]
    floor = float(pos.min()) / 10 if pos.size else 1e-6
    lo, hi = (float(pos.min()), float(pos.max())) if pos.size else (floor, 1.0)
    lo = min(lo, floor) if np.any(values[np.isfinite(values)] <= 0) else lo
    pad = 0.05 * max(math.log10(hi) - math.log10(lo), 0.5)
    return floor, [math.log10(lo) - pad, math.log10(hi) + pad]


def _check_widths_by_method(widths_by_method, n: int) -> dict[str, np.ndarray]:
    _check_dict("widths_by_method", widths_by_method)
    return {str(k): _vec(f"widths_by_method[{k!r}]", v, n) for k, v in widths_by_method.items()}


def plot_small_multiples(errors, widths_by_method: dict, kind: str = "error_width", *, reference=None,
                         predicted=None, columns: int = 3, max_points: int | None = 5000, seed: int = 0,
                         panel_height: int = 330):
    """One panel per method on shared axes: error vs width, or force parity coloured by width.

    Parameters
    ----------
    errors : array-like of shape (n,)
        Force-error norms ‖ΔF‖ of the test sites, eV/Å.
    widths_by_method : dict of label -> array-like of shape (n,)
        Each method's half-widths on the same sites, eV/Å (``+inf`` is drawn at the axis edge).
    kind : "error_width" | "parity"
        ``error_width``: log-log error against width with the line error = width, Spearman ρ and
        coverage in each panel title. ``parity``: predicted against reference force components
        (needs ``reference`` and ``predicted``), coloured by the panel's widths on one colour scale.
    reference, predicted : array-like of shape (n, 3) or (n,), optional
        Reference and predicted forces, eV/Å (``kind="parity"`` only).
    columns : int >= 1
        Panels per row.
    max_points : int or None
        Above this many sites a seeded subset (the same sites in every panel) is drawn; the titles'
        numbers always use every site. None draws all.
    seed : int
        Seeds the subset.
    panel_height : int
        Height of one row of panels, pixels.
    """
    from plotly.subplots import make_subplots

    if kind not in SMALL_MULTIPLE_KINDS:
        raise ValueError(f"kind: expected one of {', '.join(SMALL_MULTIPLE_KINDS)}, got {kind!r}")
    e = _vec("errors", errors)
    widths = _check_widths_by_method(widths_by_method, e.shape[0])
    if max_points is not None and (not isinstance(max_points, int) or isinstance(max_points, bool) or max_points < 1):
        raise ValueError(f"max_points: expected an integer >= 1 or None, got {max_points!r}")
    if not isinstance(columns, int) or isinstance(columns, bool) or columns < 1:
        raise ValueError(f"columns: expected an integer >= 1, got {columns!r}")
    rows, cols = _grid(len(widths), columns)
    keep = _subsample(e.shape[0], max_points, seed)
    titles = [_panel_title(label, e, w, kind) for label, w in widths.items()]
    # ~100 px between rows: room for a row's x-axis title and the next row's two-line panel title
    spacing = min(100 / (panel_height * rows), 0.9 / (rows - 1)) if rows > 1 else 0.0
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.07,
                        vertical_spacing=spacing)
    shown = f" — {keep.size} of {e.shape[0]} sites shown" if keep.size < e.shape[0] else ""
    what = "Error vs width" if kind == "error_width" else "Force parity coloured by width"
    _layout(fig, f"{what} per method{shown}", "", "")  # first: the panels then set their own axis titles
    if kind == "error_width":
        _error_width_panels(fig, e, widths, keep, cols)
    else:
        _parity_panels(fig, e, widths, keep, cols, reference, predicted)
    fig.update_xaxes(matches="x")  # zooming one panel zooms them all
    fig.update_yaxes(matches="y")
    fig.update_layout(height=(panel_height + 100) * rows + 40, showlegend=False, margin=dict(t=120))
    return fig


def _panel_title(label: str, e: np.ndarray, w: np.ndarray, kind: str) -> str:
    rho = _metrics.spearman(e, w)
    cov = _metrics.coverage(e, w)
    rho_text = "undefined" if rho is None else f"{rho:.2f}"
    return f"{label}<br><sup>coverage {cov:.3f} · ρ {rho_text} · mean width {np.mean(w):.3g} {_UNIT}</sup>"


def _error_width_panels(fig, e, widths, keep, cols) -> None:
    colors = method_colors(widths)
    every = np.concatenate([e, *widths.values()])
    floor, rng = _log_range(every)
    finite = every[np.isfinite(every)]
    top = 10 ** rng[1]
    dtick = 1 if rng[1] - rng[0] >= 1.5 else "D2"  # decades only (no minor digits) when they suffice
    Scatter = _scatter_cls(keep.size)
    for i, (label, w) in enumerate(widths.items()):
        r, c = divmod(i, cols)
        wp = np.where(np.isfinite(w), np.maximum(w, floor), top)[keep]
        ep = np.maximum(e, floor)[keep]
        fig.add_trace(Scatter(x=wp, y=ep, mode="markers", name=label,
                              marker=dict(size=4, opacity=0.5, color=colors[label]),
                              hovertemplate="width %{x:.4g} eV/Å<br>error %{y:.4g} eV/Å<extra>" + label + "</extra>"),
                      row=r + 1, col=c + 1)
        lo, hi = 10 ** rng[0], float(finite.max()) if finite.size else 1.0
        fig.add_trace(_line(lo, hi), row=r + 1, col=c + 1)
        fig.update_xaxes(type="log", range=rng, dtick=dtick, title_text=f"width ({_UNIT})", row=r + 1, col=c + 1)
        ytitle = f"error ‖ΔF‖ ({_UNIT})" if c == 0 else None
        fig.update_yaxes(type="log", range=rng, dtick=dtick, title_text=ytitle, row=r + 1, col=c + 1)


def _line(lo: float, hi: float):
    import plotly.graph_objects as go

    return go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", hoverinfo="skip",
                      line=dict(color=_REFERENCE, dash="dash", width=1))


def _forces(name: str, value, n: int) -> np.ndarray:
    if value is None:
        raise ValueError(f"{name}: kind='parity' needs reference and predicted forces (n, 3), eV/Å, got None")
    arr = np.asarray(value, dtype=float)
    if arr.shape[:1] != (n,) or arr.ndim not in (1, 2):
        raise ValueError(f"{name}: expected shape ({n}, 3) or ({n},) (one row per site, as errors), got {arr.shape}")
    return arr.reshape(n, -1)


def _parity_panels(fig, e, widths, keep, cols, reference, predicted) -> None:
    ref, pred = _forces("reference", reference, e.shape[0]), _forces("predicted", predicted, e.shape[0])
    if ref.shape != pred.shape:
        raise ValueError(f"predicted: expected the shape of reference {ref.shape}, got {pred.shape}")
    per = ref.shape[1]
    x, y = ref[keep].ravel(), pred[keep].ravel()
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    pad = 0.03 * (hi - lo) if hi > lo else 1.0
    allw = np.concatenate([w[np.isfinite(w)] for w in widths.values()])
    cmin, cmax = (float(allw.min()), float(allw.max())) if allw.size else (0.0, 1.0)
    Scatter = _scatter_cls(x.size)
    for i, (label, w) in enumerate(widths.items()):
        r, c = divmod(i, cols)
        color = np.repeat(np.where(np.isfinite(w), w, cmax)[keep], per)
        marker = dict(size=4, opacity=0.6, color=color, colorscale="Viridis", cmin=cmin, cmax=cmax,
                      showscale=i == 0, colorbar=dict(title=dict(text=f"width ({_UNIT})")))
        fig.add_trace(Scatter(x=x, y=y, mode="markers", name=label, marker=marker,
                              hovertemplate="ref %{x:.4g} eV/Å<br>pred %{y:.4g} eV/Å"
                                            "<br>width %{marker.color:.4g} eV/Å<extra>" + label + "</extra>"),
                      row=r + 1, col=c + 1)
        fig.add_trace(_line(lo, hi), row=r + 1, col=c + 1)
        fig.update_xaxes(range=[lo - pad, hi + pad], title_text=f"reference force component ({_UNIT})",
                         row=r + 1, col=c + 1)
        fig.update_yaxes(range=[lo - pad, hi + pad], row=r + 1, col=c + 1,
                         title_text=f"predicted force component ({_UNIT})" if c == 0 else None)


# --------------------------------------------------------------------------- per-group coverage
def _frame_column(df, name: str, label) -> np.ndarray:
    if name not in df.columns:
        raise ValueError(f"breakdowns_by_method[{label!r}]: has no column {name!r} (expected a core.metrics."
                         f"breakdown table), got columns {list(df.columns)}")
    return np.asarray(df[name], dtype=float) if name != "group" else np.asarray(df[name]).astype(str)


def _group_order(breakdowns: dict) -> list[str]:
    order: list[str] = []
    keyed = {}
    for label, df in breakdowns.items():
        groups = _frame_column(df, "group", label)
        zs = np.asarray(df["Z"], dtype=int) if "Z" in df.columns else None
        for j, g in enumerate(groups):
            if g not in keyed:
                keyed[g] = int(zs[j]) if zs is not None else len(keyed)
                order.append(g)
    return sorted(order, key=lambda g: keyed[g]) if all("Z" in df.columns for df in breakdowns.values()) else order


INTERVALS = MappingProxyType({"binomial": ("coverage_binom_lo", "coverage_binom_hi", "Clopper–Pearson over sites"),
                              "bootstrap": ("coverage_ci_lo", "coverage_ci_hi", "by-structure bootstrap")})


def _pick_interval(breakdowns: dict, interval: str) -> str:
    if interval not in ("auto", *INTERVALS):
        raise ValueError(f"interval: expected one of auto, {', '.join(INTERVALS)}, got {interval!r}")
    if interval != "auto":
        return interval
    lo = INTERVALS["bootstrap"][0]
    ok = all(lo in df.columns and np.isfinite(np.asarray(df[lo], dtype=float)).all() for df in breakdowns.values())
    return "bootstrap" if ok else "binomial"


def plot_species_coverage_intervals(breakdowns_by_method: dict, confidence: float | None = None,
                                    interval: str = "auto"):
    """Coverage per element (or group) per method with interval bars, the nominal line and the expected band.

    Parameters
    ----------
    breakdowns_by_method : dict of label -> DataFrame from :func:`core.metrics.breakdown.breakdown`
        Uses ``group``, ``coverage``, the interval columns (error bars), ``n_sites`` (hover) and,
        when present and finite, ``coverage_expected_lo``/``_hi``. The grey band of a group spans the
        widest expected range over the methods (their calibration sizes may differ).
    confidence : float in (0, 1), optional
        The nominal line; defaults to the tables' ``attrs["confidence"]`` (which must agree).
    interval : "auto" | "bootstrap" | "binomial"
        Error bars from ``coverage_ci_lo``/``_hi`` (by-structure bootstrap: atoms of a structure are
        correlated, so this is the honest one) or ``coverage_binom_lo``/``_hi`` (Clopper–Pearson over the
        sites, narrower). ``auto``: bootstrap when every table has it, else binomial. The title says which.
    """
    import plotly.graph_objects as go

    _check_dict("breakdowns_by_method", breakdowns_by_method)
    confs = {df.attrs.get("confidence") for df in breakdowns_by_method.values() if hasattr(df, "attrs")}
    if confidence is None:
        confs.discard(None)
        if len(confs) != 1:
            raise ValueError(f"confidence: not given and the tables disagree or carry none, got {sorted(confs)}")
        confidence = confs.pop()
    conf = check_confidence(confidence)
    kind = _pick_interval(breakdowns_by_method, interval)
    lo_key, hi_key, what = INTERVALS[kind]
    order = _group_order(breakdowns_by_method)
    colors = method_colors(breakdowns_by_method)
    fig = go.Figure()
    _expected_band(fig, breakdowns_by_method, order)
    for label, df in breakdowns_by_method.items():
        groups = _frame_column(df, "group", label)
        cov = _frame_column(df, "coverage", label)
        lo, hi = _frame_column(df, lo_key, label), _frame_column(df, hi_key, label)
        n = _frame_column(df, "n_sites", label)
        fig.add_trace(go.Scatter(
            x=list(groups), y=cov, mode="markers", name=str(label), offsetgroup=str(label),
            marker=dict(size=10, color=colors[str(label)], symbol="diamond"),
            error_y=dict(type="data", symmetric=False, array=hi - cov, arrayminus=cov - lo, thickness=1.5, width=6),
            customdata=np.column_stack([lo, hi, n]),
            hovertemplate="%{x}: coverage %{y:.3f}<br>interval %{customdata[0]:.3f}–%{customdata[1]:.3f}"
                          "<br>%{customdata[2]:.0f} sites<extra>" + str(label) + "</extra>"))
    fig.add_hline(y=conf, line=dict(color="#000000", dash="dash"))
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"nominal {conf:.0%}",
                             line=dict(color="#000000", dash="dash")))
    by = next(iter(breakdowns_by_method.values())).attrs.get("by", "group")
    xtitle = {"species": "element", "config_type": "config_type"}.get(by, "group")
    level = next(iter(breakdowns_by_method.values())).attrs.get("level", 0.95)
    _layout(fig, f"Coverage per {xtitle} with {level:.0%} intervals ({what})", xtitle, "coverage (fraction)",
            scattermode="group")
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=order)
    fig.update_yaxes(range=[max(0.0, _lowest(breakdowns_by_method, lo_key) - 0.05), 1.02])
    return fig


def _lowest(breakdowns: dict, lo_key: str) -> float:
    values = [float(np.nanmin(np.asarray(df[c], dtype=float))) for df in breakdowns.values()
              for c in (lo_key, "coverage_expected_lo") if c in df.columns and np.isfinite(
                  np.asarray(df[c], dtype=float)).any()]
    return min(values) if values else 0.0


def _expected_band(fig, breakdowns: dict, order: list[str]) -> None:
    """Grey rectangles: per group, the widest expected range over the methods (none when unknown)."""
    import plotly.graph_objects as go

    band: dict[str, list[float]] = {}
    for label, df in breakdowns.items():
        if "coverage_expected_lo" not in df.columns:
            continue
        groups = _frame_column(df, "group", label)
        lo, hi = _frame_column(df, "coverage_expected_lo", label), _frame_column(df, "coverage_expected_hi", label)
        for g, a, b in zip(groups, lo, hi):
            if np.isfinite(a) and np.isfinite(b):
                cur = band.setdefault(g, [a, b])
                cur[0], cur[1] = min(cur[0], a), max(cur[1], b)
    for g, (a, b) in band.items():
        i = order.index(g)
        fig.add_shape(type="rect", xref="x", yref="y", x0=i - 0.45, x1=i + 0.45, y0=a, y1=b, layer="below",
                      fillcolor="rgba(136,136,136,0.18)", line=dict(width=0))
    if band:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="expected range (calibrated per group)",
                                 marker=dict(symbol="square", size=12, color="rgba(136,136,136,0.35)")))
