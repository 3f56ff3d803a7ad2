"""Binned and group diagnostics from the uncertainty toolkits: RMSE vs RMV, ENCE, group calibration, sharpness.

Conventions as in :mod:`core.metrics` (``(errors, widths, ...)`` order, shapes (N,), eV/Å).

**Width -> sigma.** A FlexCal width w_i is a *half-width at confidence c of the error norm*:
P(e_i <= w_i) = c. The toolkits (Levi et al. 2022 "RMSE vs RMV"; Chung et al. 2021
uncertainty-toolbox) speak of a Gaussian standard deviation sigma_i instead. We read a width as the
c-quantile of ``sigma_i * chi_dof``, the norm of a ``dof``-vector whose components are independent
N(0, sigma_i^2)::

    sigma_i = w_i / chi_dof.ppf(c)

- ``dof=3`` (default): force errors e_i = |F_pred - F_ref| are norms of 3-vectors, so e ~ sigma chi_3
  (the same reading as :func:`core.metrics.spearman_ideal`). At c = 0.9, chi_3.ppf = 2.500.
- ``dof=1``: |scalar error| (e.g. one force component or an energy): the half-normal, chi_1.ppf(0.9)
  = 1.645, the usual z of a central 90 % Gaussian interval.

Then E[e^2] = dof * sigma^2, so the comparable per-component RMSE of a bin is
``RMSE_b = sqrt(mean_b(e^2) / dof)`` and its root mean variance is ``RMV_b = sqrt(mean_b(sigma^2))``;
a calibrated sigma gives RMSE_b = RMV_b (the y = x line). Both are in eV/Å (per Cartesian component
for dof = 3). ENCE = mean_b |RMV_b - RMSE_b| / RMV_b (Levi et al. 2022).

Numpy/scipy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from core.metrics.basic import _check_groups, _check_pair, _check_widths
from core.validation import check_confidence, check_fraction, check_int, check_seed

__all__ = ["width_to_sigma", "rmse_vs_rmv", "group_calibration", "sharpness", "N_SIMULATIONS"]

#: Simulations of a calibrated model behind ``worst_expected_lo`` (adversarial group calibration).
N_SIMULATIONS = 200


def _check_dof(dof: Any) -> int:
    return check_int("dof", dof, 1, 3)


def width_to_sigma(widths, confidence: float, *, dof: int = 3) -> np.ndarray:
    """Gaussian-equivalent sigma_i = w_i / chi_dof.ppf(confidence) (see the module docstring).

    Parameters
    ----------
    widths : array-like (N,), half-widths in eV/Å at ``confidence`` (+inf allowed, stays +inf).
    confidence : float in (0, 1).
    dof : 1, 2 or 3, default 3 (the error is the norm of a ``dof``-vector; 3 for forces).

    Returns
    -------
    sigma : (N,) float64, eV/Å.
    """
    w = _check_widths(widths)
    c = check_confidence(confidence)
    return w / float(stats.chi.ppf(c, _check_dof(dof)))


def _finite(errors, widths, structure_ids=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    e, w = _check_pair(errors, widths)
    ids = None if structure_ids is None else _check_groups("structure_ids", structure_ids, e.shape[0])
    ok = np.isfinite(w)
    if not ok.any():
        raise ValueError("widths: every width is +inf; nothing to bin")
    return e[ok], w[ok], None if ids is None else ids[ok], int((~ok).sum())


def _bootstrap_rmse(e2: np.ndarray, ids: np.ndarray | None, n_boot: int, dof: int, rng) -> np.ndarray:
    """``n_boot`` bootstrap RMSEs of one bin, shape (n_boot,): whole structures resampled when ``ids``
    is given (all of a drawn structure's sites in the bin), else single sites."""
    if ids is None:
        return np.sqrt(e2[rng.integers(0, e2.size, size=(n_boot, e2.size))].mean(axis=1) / dof)
    _, inv = np.unique(ids, return_inverse=True)
    sums, counts = np.bincount(inv, weights=e2), np.bincount(inv).astype(float)
    draw = rng.integers(0, sums.size, size=(n_boot, sums.size))
    return np.sqrt(sums[draw].sum(axis=1) / counts[draw].sum(axis=1) / dof)


def _equal_count_bins(w: np.ndarray, n_bins: int) -> list[np.ndarray]:
    """Indices of ``n_bins`` equal-count groups of sites, ordered by width (stable sort: deterministic)."""
    order = np.argsort(w, kind="stable")
    return [b for b in np.array_split(order, n_bins) if b.size]


def _expected_ence(sizes: np.ndarray, dof: int) -> float:
    """ENCE a calibrated sigma would show with these bin sizes: mean_b E|sqrt(chi2_k / k) - 1|, k = n_b dof."""
    grid = (np.arange(2000) + 0.5) / 2000.0  # midpoint quantile rule: deterministic, ~1e-4 accurate
    vals = [float(np.mean(np.abs(np.sqrt(stats.chi2.ppf(grid, k) / k) - 1.0))) for k in sizes * dof]
    return float(np.mean(vals))


def rmse_vs_rmv(errors, widths, n_bins: int = 10, *, confidence: float, dof: int = 3, n_boot: int = 200,
                level: float = 0.95, seed: int = 0, structure_ids=None) -> dict:
    """Binned RMSE against root mean variance (RMV), with intervals, and the ENCE.

    Sites with finite widths are sorted by width and cut into ``n_bins`` equal-count bins; per bin
    ``RMSE_b = sqrt(mean(e^2)/dof)`` and ``RMV_b = sqrt(mean(sigma^2))`` with sigma from
    :func:`width_to_sigma` (the module docstring states the conversion).

    Parameters
    ----------
    errors, widths : array-like (N,), eV/Å. Sites with ``widths = +inf`` are left out (counted).
    n_bins : int in [1, N_finite].
    confidence : float in (0, 1), the level the widths were predicted at.
    dof : 1..3, default 3 (force-error norms).
    n_boot : int >= 0, bootstrap resamples per bin for the RMSE interval (0: no bootstrap, the
        interval is NaN).
    structure_ids : array-like of int, shape (N,), optional. With it the bootstrap resamples whole
        structures (the sites each drawn structure has in the bin): atoms of one structure are
        correlated, so a site bootstrap (without it) understates the spread — read that as a lower bound.
    level : float in (0, 1), mass of both intervals.
    seed : int >= 0 (bootstrap).

    Returns
    -------
    dict with arrays of shape (B,) (B <= n_bins bins): ``n`` (sites), ``width_lo``/``width_hi`` (the
    bin's width range, eV/Å), ``rmv``, ``rmse``, ``rmse_lo``/``rmse_hi`` (bootstrap percentile interval
    of the observed RMSE), ``expected_lo``/``expected_hi`` (where a calibrated model's RMSE falls given
    RMV_b: RMV_b * sqrt(chi2_k.ppf(q)/k), k = n_b * dof); and floats ``ence``, ``ence_expected`` (the
    ENCE a calibrated model reaches with these bin sizes: finite-sample noise), plus ``dof``,
    ``confidence``, ``n_infinite`` (sites left out), ``bootstrap_unit`` ("structure" or "site"). ``ence``
    is None when every bin has RMV 0.
    """
    c = check_confidence(confidence)
    dof = _check_dof(dof)
    q = check_fraction("level", level)
    n_boot = check_int("n_boot", n_boot, 0)
    rng = np.random.default_rng(check_seed(seed))
    e, w, ids, n_inf = _finite(errors, widths, structure_ids)
    n_bins = check_int("n_bins", n_bins, 1, e.shape[0])
    sigma = w / float(stats.chi.ppf(c, dof))
    bins = _equal_count_bins(w, n_bins)
    keys = ("n", "width_lo", "width_hi", "rmv", "rmse", "rmse_lo", "rmse_hi", "expected_lo", "expected_hi")
    out: dict[str, Any] = {k: np.empty(len(bins)) for k in keys}
    tails = ((1.0 - q) / 2.0, (1.0 + q) / 2.0)
    for i, b in enumerate(bins):
        e2, m = e[b] ** 2, b.size
        rmv = float(np.sqrt(np.mean(sigma[b] ** 2)))
        if n_boot:
            lo, hi = np.quantile(_bootstrap_rmse(e2, None if ids is None else ids[b], n_boot, dof, rng), tails)
        else:
            lo = hi = np.nan
        k = m * dof
        exp_lo, exp_hi = (rmv * np.sqrt(stats.chi2.ppf(t, k) / k) for t in tails)
        row = (m, w[b].min(), w[b].max(), rmv, np.sqrt(e2.mean() / dof), lo, hi, exp_lo, exp_hi)
        for key, val in zip(keys, row):
            out[key][i] = val
    out["n"] = out["n"].astype(np.int64)
    pos = out["rmv"] > 0
    out["ence"] = float(np.mean(np.abs(out["rmv"][pos] - out["rmse"][pos]) / out["rmv"][pos])) if pos.any() else None
    out["ence_expected"] = _expected_ence(out["n"], dof)
    out.update(dof=dof, confidence=c, n_infinite=n_inf, bootstrap_unit="site" if ids is None else "structure")
    return out


def _binomial_band(sizes: np.ndarray, confidence: float, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Central ``level`` interval of X/m, X ~ Binomial(m, confidence), for each group size m."""
    tails = ((1.0 - level) / 2.0, (1.0 + level) / 2.0)
    lo, hi = (stats.binom.ppf(t, sizes, confidence) / sizes for t in tails)
    return lo.astype(float), hi.astype(float)


def _ordered_groups(e, w, groups, n_groups, c, q) -> dict:
    if groups is None:
        n_groups = check_int("n_groups", n_groups, 1, e.shape[0])
        members = _equal_count_bins(w, n_groups)
        names = np.arange(len(members))
    else:
        g = np.asarray(groups)
        if g.ndim != 1 or g.shape[0] != e.shape[0]:
            raise ValueError(f"groups: expected shape ({e.shape[0]},) (one label per site), got shape {g.shape}")
        names = np.unique(g)
        members = [np.flatnonzero(g == name) for name in names]
        frac_inf = np.array([np.mean(np.isinf(w[m])) for m in members])
        mean_fin = np.array([np.mean(w[m][np.isfinite(w[m])]) if np.isfinite(w[m]).any() else 0.0 for m in members])
        order = np.lexsort((mean_fin, frac_inf))  # by mean width; groups with +inf widths last
        names, members = names[order], [members[i] for i in order]
    sizes = np.array([m.size for m in members], dtype=np.int64)
    cov = np.array([np.mean(e[m] <= w[m]) for m in members])
    lo, hi = _binomial_band(sizes, c, q)
    return {"group": names, "n": sizes, "coverage": cov, "expected_lo": lo, "expected_hi": hi,
            "mean_width": np.array([np.mean(w[m]) for m in members]),
            "outside": (cov < lo) | (cov > hi)}


def _adversarial(hit: np.ndarray, order: np.ndarray, c: float, q: float, fractions, n_draws: int,
                 rng: np.random.Generator, n_sim: int) -> dict:
    """Worst coverage over ``n_draws`` random contiguous windows (in ``order``) for each group size."""
    n = hit.shape[0]
    fr = np.asarray(fractions, dtype=float)
    if fr.ndim != 1 or fr.size == 0 or np.any(~(fr > 0)) or np.any(fr > 1):
        raise ValueError(f"fractions: expected group sizes as fractions in (0, 1], got {fr.tolist()}")
    sizes = np.unique(np.maximum(np.round(fr * n).astype(np.int64), 1))
    csum = np.concatenate([[0], np.cumsum(hit[order], dtype=np.int64)])
    starts = [rng.integers(0, n - m + 1, size=n_draws) for m in sizes]
    covs = [(csum[s + m] - csum[s]) / m for s, m in zip(starts, sizes)]
    worst = np.array([cv.min() for cv in covs])
    worst_start = np.array([s[int(np.argmin(cv))] for s, cv in zip(starts, covs)], dtype=np.int64)
    sim_worst = np.empty((n_sim, sizes.size))
    for a in range(0, n_sim, 16):  # the same windows on calibrated hits, 16 simulations at a time (memory)
        k = min(16, n_sim - a)
        sim = np.zeros((k, n + 1), np.int32)
        np.cumsum(rng.random((k, n)) < c, axis=1, out=sim[:, 1:])
        for i, (s, m) in enumerate(zip(starts, sizes)):
            sim_worst[a:a + k, i] = ((sim[:, s + m] - sim[:, s]) / m).min(axis=1)
    sim_lo = np.quantile(sim_worst, (1.0 - q) / 2.0, axis=0) if n_sim else np.full(sizes.size, np.nan)
    lo, hi = _binomial_band(sizes, c, q)
    return {"size": sizes, "fraction": sizes / n, "worst_coverage": worst, "worst_start": worst_start,
            "expected_lo": lo, "expected_hi": hi, "worst_expected_lo": sim_lo}


def group_calibration(errors, widths, groups=None, *, confidence: float, n_groups: int = 10,
                      adversarial: bool = False, order=None, fractions=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
                      n_draws: int = 100, level: float = 0.95, seed: int = 0) -> dict:
    """Coverage per group: ordered groups by width, labelled groups, or adversarial windows.

    Parameters
    ----------
    errors, widths : array-like (N,), eV/Å (+inf widths count as covered).
    groups : array-like (N,) of labels (e.g. species, config type), optional. None: ``n_groups``
        equal-count groups of sites ordered by width (ordered group calibration).
    confidence : float in (0, 1), the nominal coverage.
    adversarial : bool. True adds ``"adversarial"``: for each group size ``fractions * N``, the worst
        coverage among ``n_draws`` random contiguous windows of sites sorted by ``order`` (default: by
        width; pass e.g. a descriptor's first principal component, (N,)) -- adversarial group calibration
        in the sense of Chung et al. 2021 (uncertainty-toolbox), with windows instead of random subsets
        so that a localised miscalibration is found.
    n_draws : int >= 1, windows per group size. :data:`N_SIMULATIONS` seeded simulations of calibrated
        hits on the same windows give ``worst_expected_lo``, the ``(1-level)/2`` quantile of the worst coverage a
        calibrated model shows by chance (the single-group binomial band is too narrow for a minimum).
    level : float in (0, 1), mass of the expected bands. seed : int >= 0.

    Returns
    -------
    dict: ``groups`` -> dict of (G,) arrays ``group`` (label or rank), ``n``, ``coverage``,
    ``mean_width`` (eV/Å), ``expected_lo``/``expected_hi`` (central ``level`` band of X/n,
    X ~ Binomial(n, confidence)), ``outside`` (bool); ``worst_group_coverage`` (float);
    ``confidence``; with ``adversarial`` also ``adversarial`` -> dict of (S,) arrays ``size``,
    ``fraction``, ``worst_coverage``, ``worst_start`` (index into the sorted order), ``expected_lo``,
    ``expected_hi``, ``worst_expected_lo``.
    """
    e, w = _check_pair(errors, widths)
    c = check_confidence(confidence)
    q = check_fraction("level", level)
    if not isinstance(adversarial, (bool, np.bool_)):
        raise TypeError(f"adversarial: expected True or False, got {adversarial!r}")
    rng = np.random.default_rng(check_seed(seed))
    ordered = _ordered_groups(e, w, groups, n_groups, c, q)
    out = {"groups": ordered, "worst_group_coverage": float(ordered["coverage"].min()), "confidence": c}
    if adversarial:
        if order is None:
            perm = np.argsort(w, kind="stable")
        else:
            key = _check_errors_like("order", order, e.shape[0])
            perm = np.argsort(key, kind="stable")
        out["adversarial"] = _adversarial(e <= w, perm, c, q, fractions, check_int("n_draws", n_draws, 1),
                                          rng, N_SIMULATIONS)
    return out


def _check_errors_like(name: str, value, n: int) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected {n} finite numbers (one per site), got shape {arr.shape}")
    return arr


def sharpness(widths) -> dict:
    """How narrow the widths are, whatever the errors: mean, median and coefficient of variation.

    Parameters
    ----------
    widths : array-like (N,), eV/Å, >= 0; +inf widths are counted and left out.

    Returns
    -------
    dict: ``n`` (int), ``n_infinite`` (int), ``mean``, ``median`` (eV/Å, of the finite widths),
    ``cv`` (std / mean, population std; None when the mean is 0 -- undefined, not 0), ``std`` (eV/Å).
    Raises ValueError when every width is +inf.
    """
    w = _check_widths(widths)
    fin = w[np.isfinite(w)]
    if fin.size == 0:
        raise ValueError("widths: every width is +inf; sharpness is undefined")
    mean = float(fin.mean())
    std = float(fin.std())
    return {"n": int(w.size), "n_infinite": int(w.size - fin.size), "mean": mean, "median": float(np.median(fin)),
            "std": std, "cv": (std / mean) if mean > 0 else None}

