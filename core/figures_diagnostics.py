"""Figures from the uncertainty toolkits and the descriptor map (plotly imported inside the builders).

Builders take the dicts of :mod:`core.metrics.binned` (or arrays) and return a ``go.Figure``;
they never fit or load. Units eV/Å; one colour per method via :func:`core.figures.method_color`.

- :func:`plot_rmse_vs_rmv` -- binned RMSE against RMV with the y = x line, bootstrap bars and the
  band a calibrated model falls in.
- :func:`plot_group_coverage` -- coverage per ordered (or labelled) group with the binomial band.
- :func:`plot_adversarial_coverage` -- worst coverage against group size, the nominal line, the
  single-group band and the worst a calibrated model shows by chance.
- :func:`plot_sharpness` -- mean and median width per method (coefficient of variation in the text).
- :func:`descriptor_pca` / :func:`plot_descriptor_map` -- PCA of the per-site descriptors, coloured
  by width or error, with (structure id, atom index) in ``customdata`` so a click selects that atom.
"""

from __future__ import annotations

import numpy as np

from core.figures import _REFERENCE, _check_dict, _diagonal, _go, _ids, _layout, _scatter_cls, method_color
from core.validation import check_int, check_seed

__all__ = ["plot_rmse_vs_rmv", "plot_group_coverage", "plot_adversarial_coverage", "plot_sharpness",
           "descriptor_pca", "plot_descriptor_map", "MAP_MAX_POINTS"]

#: Above this many sites the descriptor map draws a seeded subsample (the PCA uses every site).
MAP_MAX_POINTS = 20000


def _band(go, x, lo, hi, name: str, color: str = "rgba(136,136,136,0.18)"):
    """A filled band between lo and hi over x (one legend entry)."""
    x = np.asarray(x, dtype=float)
    return go.Scatter(x=np.r_[x, x[::-1]], y=np.r_[np.asarray(hi, float), np.asarray(lo, float)[::-1]],
                      fill="toself", fillcolor=color, line=dict(width=0), name=name, hoverinfo="skip")


def plot_rmse_vs_rmv(binned_by_label: dict[str, dict], *, log: bool | None = None):
    """RMSE vs RMV per method: one point per bin, bootstrap error bars, y = x and the expected band.

    Parameters
    ----------
    binned_by_label : dict label -> :func:`core.metrics.rmse_vs_rmv` result.
    log : bool, optional. None: log axes when the bins span more than a factor 30.
    """
    go = _go()
    binned_by_label = _check_dict("binned_by_label", binned_by_label)
    fig = go.Figure()
    lo, hi = np.inf, 0.0
    for label, b in binned_by_label.items():
        rmv, rmse = np.asarray(b["rmv"], float), np.asarray(b["rmse"], float)
        ence = b.get("ence")
        name = f"{label} (ENCE {ence:.3f}, calibrated ≈ {b['ence_expected']:.3f})" if ence is not None else label
        err = None
        if np.all(np.isfinite(b["rmse_lo"])):
            err = dict(type="data", symmetric=False, array=np.asarray(b["rmse_hi"]) - rmse,
                       arrayminus=rmse - np.asarray(b["rmse_lo"]))
        fig.add_trace(go.Scatter(
            x=rmv, y=rmse, mode="markers+lines", name=name, error_y=err, customdata=np.asarray(b["n"]),
            marker=dict(size=8, color=method_color(label)), line=dict(width=1, color=method_color(label)),
            hovertemplate="RMV %{x:.4g} eV/Å<br>RMSE %{y:.4g} eV/Å<br>%{customdata} sites<extra></extra>"))
        vals = np.r_[rmv, rmse]
        vals = vals[np.isfinite(vals) & (vals > 0)]
        if vals.size:
            lo, hi = min(lo, float(vals.min())), max(hi, float(vals.max()))
    if len(binned_by_label) == 1:
        (b,) = binned_by_label.values()
        fig.add_trace(_band(go, b["rmv"], b["expected_lo"], b["expected_hi"], "calibrated model's 95 % range"))
    if hi > 0:
        fig.add_trace(_diagonal(lo, hi, "RMSE = RMV"))
    first = next(iter(binned_by_label.values()))
    dof = first.get("dof", 3)
    unit = "per component, eV/Å" if dof == 3 else "eV/Å"
    bars = {"structure": "; bars: 95 % bootstrap over structures", "site": "; bars: 95 % bootstrap over sites"}
    _layout(fig, "Binned error vs predicted width (RMSE vs RMV)" + bars.get(first.get("bootstrap_unit"), ""), f"RMV: root mean σ² of the bin ({unit})",
            f"RMSE of the bin's errors ({unit})")
    if log or (log is None and hi > 30 * lo):
        fig.update_xaxes(type="log", exponentformat="power")
        fig.update_yaxes(type="log", exponentformat="power")
    return fig


def plot_group_coverage(groups: dict, confidence: float, *, label: str = "", group_name: str | None = None):
    """Coverage of each group (ordered by mean width) with the binomial band of its size.

    Parameters
    ----------
    groups : the ``"groups"`` dict of :func:`core.metrics.group_calibration`.
    confidence : float, the nominal line. label : method name (colour). group_name : axis title;
        None: "group (ordered by width)".
    """
    go = _go()
    names = [str(g) for g in np.asarray(groups["group"]).tolist()]
    cov, n = np.asarray(groups["coverage"], float), np.asarray(groups["n"])
    mw = np.asarray(groups["mean_width"], float)
    mw = np.where(np.isfinite(mw), mw, np.nan)  # +inf widths: no number in the hover, not invalid JSON
    outside = np.asarray(groups["outside"], bool)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=np.asarray(groups["expected_hi"]) - np.asarray(groups["expected_lo"]),
                         base=groups["expected_lo"], marker_color="rgba(136,136,136,0.25)",
                         name="expected 95 % range (binomial, group size)", hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=names, y=cov, mode="markers", name=label or "coverage", customdata=np.column_stack([n, mw]),
        marker=dict(size=10, color=[("#D55E00" if o else method_color(label or "q_θ (flexible)")) for o in outside],
                    symbol=["x" if o else "circle" for o in outside]),
        hovertemplate="coverage %{y:.3f}<br>%{customdata[0]} sites<br>mean width %{customdata[1]:.4g} eV/Å"
                      "<extra></extra>"))
    fig.add_hline(y=confidence, line=dict(color=_REFERENCE, dash="dash"), annotation_text=f"nominal {confidence:.0%}")
    title = f"Coverage per group{' — ' + label if label else ''} ({int(outside.sum())} outside the expected range)"
    _layout(fig, title, group_name or "group (equal-count, ordered by width)", "observed coverage")
    return fig


def plot_adversarial_coverage(adversarial: dict, confidence: float, *, label: str = ""):
    """Worst coverage among random contiguous groups against group size (adversarial group calibration).

    Parameters
    ----------
    adversarial : the ``"adversarial"`` dict of :func:`core.metrics.group_calibration`.
    confidence : float, the nominal line. label : method name (colour).
    """
    go = _go()
    size = np.asarray(adversarial["size"], float)
    fig = go.Figure()
    fig.add_trace(_band(go, size, adversarial["expected_lo"], adversarial["expected_hi"],
                        "one group's expected 95 % range (binomial)"))
    if np.all(np.isfinite(adversarial["worst_expected_lo"])):
        fig.add_trace(go.Scatter(x=size, y=adversarial["worst_expected_lo"], mode="lines",
                                 line=dict(color=_REFERENCE, dash="dot"),
                                 name="lowest worst coverage a calibrated model shows (2.5 %)"))
    fig.add_trace(go.Scatter(x=size, y=adversarial["worst_coverage"], mode="markers+lines", name=label or "worst",
                             marker=dict(size=8, color=method_color(label) if label else "#0072B2"),
                             hovertemplate="%{x} sites<br>worst coverage %{y:.3f}<extra></extra>"))
    fig.add_hline(y=confidence, line=dict(color=_REFERENCE, dash="dash"), annotation_text=f"nominal {confidence:.0%}")
    _layout(fig, f"Adversarial group calibration{' — ' + label if label else ''}",
            "group size (contiguous sites, ordered by width)", "worst observed coverage")
    fig.update_xaxes(type="log", exponentformat="power")
    return fig


def plot_sharpness(sharpness_by_label: dict[str, dict]):
    """Mean and median width per method (bars), coefficient of variation in the text (eV/Å)."""
    go = _go()
    sharpness_by_label = _check_dict("sharpness_by_label", sharpness_by_label)
    labels = list(sharpness_by_label)
    fig = go.Figure()
    for stat, opacity in (("mean", 1.0), ("median", 0.55)):
        vals = [sharpness_by_label[lab][stat] for lab in labels]
        cvs = [sharpness_by_label[lab]["cv"] for lab in labels]
        fig.add_trace(go.Bar(
            x=labels, y=vals, name=f"{stat} width", opacity=opacity, marker_color=[method_color(lab) for lab in labels],
            text=[f"{v:.3g}" + (f"<br>CV {c:.2f}" if (stat == "mean" and c is not None) else "") for v, c in zip(vals, cvs)],
            textposition="outside", hovertemplate=f"%{{x}}<br>{stat} width %{{y:.4g}} eV/Å<extra></extra>"))
    _layout(fig, "Sharpness: how narrow the widths are (lower is sharper, at equal coverage)", "method",
            "width (eV/Å)", barmode="group")
    return fig


def descriptor_pca(descriptors, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic PCA of standardised per-site descriptors (numpy only).

    Columns are centred and divided by their standard deviation (constant columns are left at 0);
    the components are the leading eigenvectors of the (d, d) covariance (float64, ``eigh``). Signs
    are fixed: each component's largest-magnitude loading is positive, so the same data give the
    same picture.

    Parameters
    ----------
    descriptors : array-like (N, d), finite. n_components : int in [1, min(N, d)].

    Returns
    -------
    coords : (N, n_components) float64 projections; explained : (n_components,) explained variance ratios.
    """
    try:
        x = np.asarray(descriptors, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"descriptors: expected a numeric (N, d) array, got {type(descriptors).__name__}") from None
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"descriptors: expected an (N, d) array with N >= 2 and d >= 1, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("descriptors: contains NaN or inf")
    k = check_int("n_components", n_components, 1, min(x.shape))
    x = x - x.mean(axis=0)
    std = x.std(axis=0)
    x /= np.where(std > 0, std, 1.0)
    cov = x.T @ x / x.shape[0]
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:k]
    vecs = vecs[:, order]
    vecs *= np.where(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(k)] < 0, -1.0, 1.0)
    total = float(vals.clip(min=0).sum())
    explained = vals[order].clip(min=0) / total if total > 0 else np.zeros(k)
    return x @ vecs, explained


def plot_descriptor_map(descriptors, colour_values, *, colour_label: str, ids=None, n_components: int = 2,
                        seed: int = 0, max_points: int = MAP_MAX_POINTS, coords=None):
    """PCA map of the per-site descriptors coloured by width or error; clicks carry (structure, atom).

    Parameters
    ----------
    descriptors : array-like (N, d). colour_values : array-like (N,) (e.g. widths or errors, eV/Å);
        +inf is drawn at the largest finite value. The colour scale stops at the 99th percentile so
        a few outliers do not wash out the rest (the hover shows the true value).
    colour_label : str, colour bar title (with units). ids : (N, 2) (structure_id, atom_index), optional.
    n_components : int >= 2 (the map shows the first two; the axis titles give their variance shares).
    seed : int >= 0, the subsample drawn when N > ``max_points`` (sorted, so reproducible).
    coords, optional : precomputed ``descriptor_pca(descriptors, n_components)`` result (a cache).
    """
    go = _go()
    check_int("n_components", n_components, 2)
    coords_, explained = coords if coords is not None else descriptor_pca(descriptors, n_components)
    n = coords_.shape[0]
    vals = np.asarray(colour_values, dtype=float)
    if vals.shape != (n,) or np.any(np.isnan(vals)):
        raise ValueError(f"colour_values: expected {n} numbers (one per site, no NaN), got shape {vals.shape}")
    ids_arr = _ids("ids", ids, n, 2)
    keep = np.arange(n)
    max_points = check_int("max_points", max_points, 100)
    if n > max_points:
        keep = np.sort(np.random.default_rng(check_seed(seed)).choice(n, max_points, replace=False))
    fin = vals[np.isfinite(vals)]
    top = float(np.max(fin)) if fin.size else 1.0
    shown = np.where(np.isfinite(vals), vals, top)[keep]
    cmax = float(np.percentile(shown, 99)) if shown.size else 1.0
    hover = f"{colour_label} %{{marker.color:.4g}}"
    if ids_arr is not None:
        hover += "<br>structure %{customdata[0]}, atom %{customdata[1]}"
    fig = go.Figure(_scatter_cls(keep.size)(
        x=coords_[keep, 0], y=coords_[keep, 1], mode="markers", name="sites",
        customdata=None if ids_arr is None else ids_arr[keep],
        marker=dict(size=5, color=shown, colorscale="Viridis", cmin=float(shown.min()), cmax=max(cmax, float(shown.min())),
                    colorbar=dict(title=colour_label), opacity=0.8),
        hovertemplate=hover + "<extra></extra>"))
    sub = f" ({keep.size} of {n} sites shown, seeded subsample)" if keep.size < n else ""
    _layout(fig, f"Descriptor map (PCA of standardised descriptors){sub}",
            f"PC 1 ({explained[0]:.0%} of variance)", f"PC 2 ({explained[1]:.0%} of variance)")
    return fig

