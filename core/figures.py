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

import re
import zlib
from typing import Any

import numpy as np

from core.validation import check_confidence

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


#: Title lines wrap at about this many characters (two plots side by side in the app).
TITLE_WIDTH = 56
# the title starts this far (px) below the top: the plotly modebar (top right) has its own row
_MODEBAR_ROW = 30


def wrap_title(text: str, width: int = TITLE_WIDTH) -> str:
    """``text`` broken with ``<br>`` before " — " / " (" or after ", " into lines of about ``width`` chars."""
    if len(text) <= width or "<br>" in text:
        return text
    breaks = sorted({m.start() for m in re.finditer(r" — | \(", text)} | {m.end() for m in re.finditer(r", ", text)})
    lines, start = [], 0
    while len(text) - start > width:
        fit = [b for b in breaks if start < b <= start + width]
        later = [b for b in breaks if b > start]
        if not fit and not later:
            break
        cut = fit[-1] if fit else later[0]
        lines.append(text[start:cut].rstrip())
        start = cut + (len(text[cut:]) - len(text[cut:].lstrip()))
    lines.append(text[start:])
    return "<br>".join(lines)


def _layout(fig, title: str, xtitle: str, ytitle: str, legend_below: bool = False, **kw):
    """The shared look: title top left on its own row under the modebar (top right), units in axis titles.

    ``legend_below`` puts a horizontal legend under the plot (figures with colour bars on the right).
    """
    text = wrap_title(title)
    n_lines = text.count("<br>") + 1
    legend = dict(bgcolor="rgba(255,255,255,0.7)")
    if legend_below:
        legend.update(orientation="h", x=0, xanchor="left", y=0, yanchor="bottom", yref="container")
    fig.update_layout(
        title=dict(text=text, x=0.01, xanchor="left", xref="container", y=1, yanchor="top", yref="container",
                   pad=dict(t=_MODEBAR_ROW), font=dict(size=16)),
        xaxis_title=xtitle,
        yaxis_title=ytitle,
        template="plotly_white",
        legend=legend,
        font=dict(size=13),
        modebar=dict(orientation="h", bgcolor="rgba(255,255,255,0.8)"),
        margin=dict(l=70, r=30, t=_MODEBAR_ROW + 22 * n_lines + 18, b=140 if legend_below else 60),
        **kw,
    )
    return fig


def _diagonal(lo: float, hi: float, name: str):
    return _go().Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name=name, line=dict(color=_REFERENCE, dash="dash"))


def _fmt(x: float | None, digits: int = 3) -> str:
    return "undefined" if x is None else f"{x:.{digits}f}"


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
    conf = check_confidence(confidence)
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


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"


def _width_samples(widths_by_label: dict) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Finite widths per label, split into spread ones and constant ones (label -> the one width)."""
    spread, const = {}, {}
    for label, w in widths_by_label.items():
        w = _vec(f"widths_by_label[{label!r}]", w)
        w = w[np.isfinite(w)]
        if w.size == 0:
            continue
        if np.ptp(w) <= 1e-9 * max(float(np.abs(w).max()), 1e-300):
            const[str(label)] = float(w[0])
        else:
            spread[str(label)] = w
    if not spread and not const:
        raise ValueError("widths_by_label: no finite width in any method")
    return spread, const


def plot_width_histogram(widths_by_label: dict, log: bool | str = False, nbins: int = 50):
    """Distribution of predicted widths, one outline per method, on one shared robust x range.

    Methods with spread widths are step outlines (counts on shared bins, light fill); a method
    whose widths are all equal (split conformal: one width for every site) is a vertical line
    with its value in the legend, so its spike does not squash the others. The x axis spans
    the robust range (0.5-99.5 %) of the spread widths plus the constant ones; sites beyond it
    are counted in the legend.

    Parameters
    ----------
    widths_by_label : dict of label -> widths (n,), eV/Å
    log : bool or "auto"
        Geometric bins on a log axis (non-positive widths dropped); ``"auto"``: when the
        robust range spans more than 1.5 decades.
    nbins : int
    """
    from core.figures_density import axis_range
    from core.figures_scales import apply_log_axis, robust_range

    go = _go()
    _check_dict("widths_by_label", widths_by_label)
    if log not in (True, False, "auto"):
        raise ValueError(f"log: expected True, False or 'auto', got {log!r}")
    if isinstance(nbins, bool) or not isinstance(nbins, (int, np.integer)) or nbins < 2:
        raise ValueError(f"nbins: expected an integer >= 2, got {nbins!r}")
    spread, const = _width_samples(widths_by_label)
    pool = np.concatenate(list(spread.values())) if spread else np.asarray(list(const.values()))
    if log == "auto":
        lo_r, hi_r = robust_range(pool, log=True) if np.any(pool > 0) else (1.0, 1.0)
        log = hi_r / lo_r > 10**1.5
    if log:
        pool = pool[pool > 0]
        if pool.size == 0:
            raise ValueError("widths_by_label: log=True needs positive widths, got none")
    lo, hi = axis_range(pool, log=bool(log))
    marks = [c for c in const.values() if c > 0 or not log]
    if marks:
        lo, hi = min(lo, min(marks) / 1.1 if log else min(marks) - 0.05 * (hi - lo)), \
            max(hi, max(marks) * 1.1 if log else max(marks) + 0.05 * (hi - lo))
    edges = (np.geomspace if log else np.linspace)(lo, hi, nbins + 1)
    colors = method_colors(widths_by_label)
    fig = go.Figure()
    top = 1
    for label, w in spread.items():
        counts = np.histogram(w, bins=edges)[0]
        top = max(top, int(counts.max()))
        beyond = int(w.size - counts.sum())
        fig.add_trace(go.Scatter(
            x=np.r_[edges[0], edges], y=np.r_[0, counts, 0], mode="lines", line=dict(shape="hv", width=2,
            color=colors[label]), fill="tozeroy", fillcolor=_rgba(colors[label], 0.15),
            name=label + (f" ({beyond} sites beyond the axis)" if beyond else ""),
            hovertemplate=f"{label}<br>width %{{x:.3g}} eV/Å<br>%{{y}} sites<extra></extra>",
        ))
    for label, c in const.items():
        fig.add_trace(go.Scatter(
            x=[c, c], y=[0, top * 1.05], mode="lines+text", text=["", f" {label}"], textposition="top right",
            line=dict(color=colors[label], width=3, dash="dash"), cliponaxis=False,
            name=f"{label}: one width for every site, {c:.3g} eV/Å",
            hovertemplate=f"{label}: every site has width {c:.4g} eV/Å<extra></extra>",
        ))
    title = "Distribution of predicted widths"
    _layout(fig, title, "predicted width (eV/Å" + (", log scale)" if log else ")"), "number of sites")
    if log:
        apply_log_axis(fig, "x", lo, hi)
    else:
        fig.update_xaxes(range=[lo, hi])
    fig.update_yaxes(range=[0, top * 1.15], rangemode="tozero")
    return fig


# --------------------------------------------------------------------------- training / teaching


_SITE_FIGURES = ("plot_parity", "plot_uncertainty_error", "plot_structure_uncertainty")


def __getattr__(name: str):
    if name in _SITE_FIGURES:
        from core import figures_sites

        return getattr(figures_sites, name)
    if name in ("plot_training_curve", "plot_confidence_band", "plot_metric_bars", "plot_learning_curve",
                "figures_to_html"):
        from core import figures_studies

        return getattr(figures_studies, name)
    raise AttributeError(f"module 'core.figures' has no attribute {name!r}")
