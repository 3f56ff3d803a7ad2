"""Plotly figures of studies and training: loss curves, confidence bands, metric bars, learning
curves, and the self-contained HTML report. Same conventions as :mod:`core.figures` (which
re-exports every name here): arrays or tables in, ``go.Figure`` out, units on every axis.
"""

from __future__ import annotations

import html as _html

import numpy as np

from core.tables import MISSING
from core.validation import check_confidence
from core.figures import (
    _REFERENCE,
    _check_dict,
    _curve_pairs,
    _go,
    _layout,
    _scatter_cls,
    _vec,
    method_colors,
)

_METRIC_LABELS = {
    "coverage": "coverage (fraction)",
    "coverage_gap": "coverage − nominal (fraction)",
    "mean_width": "mean width (eV/Å)",
    "width_ratio": "width ratio to global CP (×)",
    "spearman": "Spearman ρ (width, error)",
    "pearson": "Pearson r (width, error)",
    "spearman_ideal": "ideal Spearman ρ",
    "auroc": "AUROC (top-10 % errors)",
    "miscalibration_area": "miscalibration area (fraction)",
    "worst_species_coverage": "worst-species coverage (fraction)",
    "pinball": "pinball loss (eV/Å)",
    "structure_spearman": "structure Spearman ρ",
    "structure_auroc": "structure AUROC",
}

__all__ = ["plot_training_curve", "plot_confidence_band", "plot_metric_bars", "plot_learning_curve",
           "figures_to_html"]


def plot_training_curve(history: list):
    """Train and validation pinball loss per epoch of q_θ training; best epoch marked.

    Parameters
    ----------
    history : list of dict with keys ``epoch``, ``train_loss``, ``val_loss``
        (``FlexibleQuantile.history_``). Losses are on median-scaled errors.
    """
    go = _go()
    if not isinstance(history, (list, tuple)) or not history:
        raise ValueError(f"history: expected a non-empty list of dicts, got {history!r:.80}")
    for i, h in enumerate(history):
        if not isinstance(h, dict) or not {"epoch", "train_loss", "val_loss"} <= set(h):
            raise ValueError(f"history[{i}]: expected a dict with epoch/train_loss/val_loss, got {h!r:.80}")
    ep = np.array([h["epoch"] for h in history], dtype=float)
    tr = np.array([h["train_loss"] for h in history], dtype=float)
    va = np.array([np.nan if h["val_loss"] is None else h["val_loss"] for h in history], dtype=float)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ep, y=tr, mode="lines", name="train", line=dict(color="#0072B2")))
    fig.add_trace(go.Scatter(x=ep, y=va, mode="lines", name="validation", line=dict(color="#D55E00")))
    if np.any(np.isfinite(va)):
        best = int(np.nanargmin(va))
        fig.add_vline(x=float(ep[best]), line=dict(color=_REFERENCE, dash="dot"),
                      annotation_text=f"best epoch {int(ep[best])}", annotation_position="top right")
    _layout(fig, "q_θ training", "epoch", "pinball loss (median-scaled, dimensionless)")
    return fig


def plot_confidence_band(x, errors, global_width, flexible_width, confidence: float, x_label: str = "coordinate"):
    """The teaching view: one global conformal cutoff against the flexible q_θ band.

    Sites are sorted by ``x`` (a 1-D coordinate) or, when ``x`` is None, by
    their flexible width. Errors are points, coloured by whether the flexible
    band covers them; global CP is a flat (or piecewise) line; q_θ is a shaded
    band from 0 to its width. The legend gives each one's coverage and mean width.

    Parameters
    ----------
    x : array-like of shape (n,) or None
    errors : array-like of shape (n,), eV/Å
    global_width : float or array-like of shape (n,), eV/Å
    flexible_width : array-like of shape (n,), eV/Å
    confidence : float in (0, 1)
        Nominal coverage, shown in the title.
    x_label : str
        Axis title for ``x`` (include units).
    """
    go = _go()
    e = _vec("errors", errors)
    n = e.shape[0]
    fw = _vec("flexible_width", flexible_width, n)
    gw = np.asarray(global_width, dtype=float)
    if gw.ndim == 0:
        gw = np.full(n, float(gw))
    gw = _vec("global_width", gw, n)
    conf = check_confidence(confidence)
    if x is None:
        xs = np.arange(n, dtype=float)
        order = np.argsort(fw, kind="stable")
        xtitle = "sites sorted by flexible width (rank)"
    else:
        xv = _vec("x", x, n)
        order = np.argsort(xv, kind="stable")
        xs = xv[order]
        xtitle = x_label
    e, fw, gw = e[order], fw[order], gw[order]
    cov_g, cov_f = float(np.mean(e <= gw)), float(np.mean(e <= fw))
    covered = e <= fw
    Scatter = _scatter_cls(n)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=xs, y=fw, mode="lines", fill="tozeroy", fillcolor="rgba(213,94,0,0.18)",
            line=dict(color="#D55E00", width=2),
            name=f"flexible q_θ: coverage {cov_f:.1%}, mean width {fw.mean():.3g} eV/Å",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=xs, y=gw, mode="lines", line=dict(color="#0072B2", width=2, dash="dash"),
            name=f"global CP: coverage {cov_g:.1%}, mean width {gw.mean():.3g} eV/Å",
        )
    )
    fig.add_trace(
        Scatter(
            x=xs, y=e, mode="markers", name="site errors (orange: outside q_θ)",
            marker=dict(size=5, color=np.where(covered, "#000000", "#E69F00")),
        )
    )
    _layout(fig, f"Global vs flexible {conf:.0%} bands", xtitle, "force error / half-width (eV/Å)")
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.18, x=0), margin=dict(b=130))
    return fig


# --------------------------------------------------------------------------- comparisons
def plot_metric_bars(table, metric: str):
    """Bars of one metric per method, grouped by study/split when the table has one.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per (method[, group]), e.g. :func:`core.metrics.report_table`.
        The method comes from a ``method`` column or the index; the first of
        ``study``, ``split``, ``dataset`` columns present groups the bars.
        Optional ``{metric}_lo`` / ``{metric}_hi`` columns draw error bars.
    metric : str
        A column of ``table``.
    """
    go = _go()
    if not hasattr(table, "columns"):
        raise ValueError(f"table: expected a pandas DataFrame, got {type(table).__name__}")
    if metric not in table.columns:
        raise ValueError(f"metric: {metric!r} is not a column of table; available: {list(table.columns)}")
    df = table.reset_index() if "method" not in table.columns else table.copy()
    if "method" not in df.columns:
        df = df.rename(columns={df.columns[0]: "method"})
    group = next((g for g in ("study", "split", "dataset") if g in df.columns), None)
    methods = list(dict.fromkeys(df["method"].astype(str)))
    colors = method_colors(methods)
    fig = go.Figure()
    for m in methods:
        sub = df[df["method"].astype(str) == m]
        xs = sub[group].astype(str).tolist() if group else [m]
        ys = sub[metric].astype(float).to_numpy()
        err = None
        if f"{metric}_lo" in sub.columns and f"{metric}_hi" in sub.columns:
            lo, hi = sub[f"{metric}_lo"].astype(float).to_numpy(), sub[f"{metric}_hi"].astype(float).to_numpy()
            err = dict(type="data", symmetric=False, array=hi - ys, arrayminus=ys - lo)
        fig.add_trace(go.Bar(x=xs, y=ys, name=m, marker_color=colors[m], error_y=err))
    if metric in ("coverage", "worst_species_coverage") and "confidence" in df.columns:
        confs = df["confidence"].dropna().unique()
        if len(confs) == 1:
            fig.add_hline(y=float(confs[0]), line=dict(color="#000000", dash="dash"),
                          annotation_text=f"nominal {float(confs[0]):.0%}")
    ylabel = _METRIC_LABELS.get(metric, metric)
    _layout(fig, f"{ylabel.split(' (')[0]} by method", group or "method", ylabel, barmode="group")
    return fig


def plot_learning_curve(curves: dict, ylabel: str, xlabel: str = "number of labelled structures"):
    """Metric against the number of labels, one line per selection strategy.

    Parameters
    ----------
    curves : dict of label -> (n_labels (k,), values (k,))
    ylabel : str
        Axis title for the values (include units, e.g. "force MAE (eV/Å)").
    """
    go = _go()
    _check_dict("curves", curves)
    colors = method_colors(curves)
    fig = go.Figure()
    for label, nx, vy in _curve_pairs(curves, "n_labels", "values"):
        fig.add_trace(
            go.Scatter(x=nx, y=vy, mode="lines+markers", name=str(label), line=dict(color=colors[str(label)]))
        )
    _layout(fig, f"Learning curve: {ylabel}", xlabel, ylabel)
    return fig


# --------------------------------------------------------------------------- report
_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table.flexcal { border-collapse: collapse; font-size: 0.9em; }
table.flexcal th, table.flexcal td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
table.flexcal th { background: #f3f3f3; }
"""


def figures_to_html(figures: list, tables: list = (), title: str = "FlexCal report") -> str:
    """A self-contained HTML report: plotly.js inlined once, no CDN, no network.

    Parameters
    ----------
    figures : list of (title, go.Figure)
    tables : list of (title, pandas.DataFrame)
    title : str

    Returns
    -------
    str
        A complete HTML document (about 5 MB with the plotly bundle).
    """
    if not isinstance(figures, (list, tuple)):
        raise ValueError(f"figures: expected a list of (title, figure), got {type(figures).__name__}")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_html.escape(str(title))}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_html.escape(str(title))}</h1>",
    ]
    for i, (t, df) in enumerate(tables or ()):
        if not hasattr(df, "to_html"):
            raise ValueError(f"tables[{i}]: expected (title, DataFrame), got {type(df).__name__}")
        parts.append(f"<h2>{_html.escape(str(t))}</h2>")
        parts.append(df.to_html(classes="flexcal", float_format=lambda v: f"{v:.4g}", na_rep=MISSING, border=0))
    for i, item in enumerate(figures):
        if not isinstance(item, (tuple, list)) or len(item) != 2 or not hasattr(item[1], "to_html"):
            raise ValueError(f"figures[{i}]: expected (title, plotly Figure), got {item!r:.80}")
        t, fig = item
        parts.append(f"<h2>{_html.escape(str(t))}</h2>")
        parts.append(
            fig.to_html(
                full_html=False,
                include_plotlyjs=(i == 0),  # True = inline the whole bundle, only once
                include_mathjax=False,
                div_id=f"flexcal-fig-{i}",
                config={"displaylogo": False, "responsive": True},
            )
        )
    parts.append("</body></html>")
    return "\n".join(parts)
