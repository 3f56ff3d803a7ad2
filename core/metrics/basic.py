"""The metric functions of :mod:`core.metrics` (METHOD §4): pure functions of numpy arrays.

Argument order ``(errors, widths, ...)``; see the package docstring for conventions.
Numpy/scipy only.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
from scipy import stats

from core.sites import UNLABELLED_MESSAGE
from core.validation import check_fraction, check_int

#: Nominal levels p = 0.05, 0.10, ..., 0.95 of the calibration curve (METHOD §4).
CALIBRATION_LEVELS = np.round(np.arange(0.05, 0.951, 0.05), 2)


# --------------------------------------------------------------------------- validation
def _describe(value: Any) -> str:
    arr = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if arr.ndim == 0:
        return repr(value)
    return f"array of shape {arr.shape}"


def _array(name: str, value: Any, ndim: int = 1, dtype=np.float64) -> np.ndarray:
    if value is None:
        if name == "errors":  # sites.errors of an unlabelled table
            raise ValueError(f"errors: {UNLABELLED_MESSAGE}")
        raise ValueError(f"{name}: expected an array, got None")
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a numeric array, got {type(value).__name__}") from None
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got {_describe(value)}")
    if arr.size == 0:
        raise ValueError(f"{name}: expected at least one value, got an empty array of shape {arr.shape}")
    return arr


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _check_errors(errors: Any) -> np.ndarray:
    e = _array("errors", errors)
    if not np.all(np.isfinite(e)):
        i = _first_bad(~np.isfinite(e))
        raise ValueError(f"errors: must be finite, got {float(e[i])!r} at index {i[0]}")
    if np.any(e < 0):
        i = _first_bad(e < 0)
        raise ValueError(f"errors: must be >= 0 (error norms, eV/Å), got {float(e[i])!r} at index {i[0]}")
    return e


def _check_widths(widths: Any, n: int | None = None, name: str = "widths", ndim: int = 1) -> np.ndarray:
    w = _array(name, widths, ndim=ndim)
    if n is not None and w.shape[0] != n:
        raise ValueError(f"{name}: expected {n} rows (one per site, as errors), got shape {w.shape}")
    if np.any(np.isnan(w)):
        i = _first_bad(np.isnan(w))
        raise ValueError(f"{name}: contains NaN (first at index {i})")
    if np.any(w < 0):
        i = _first_bad(w < 0)
        raise ValueError(f"{name}: must be >= 0 (half-widths, eV/Å), got {float(w[i])!r} at index {i}")
    return w


def _check_pair(errors: Any, widths: Any) -> tuple[np.ndarray, np.ndarray]:
    e = _check_errors(errors)
    w = _check_widths(widths, e.shape[0])
    return e, w


def _check_level(name: str, value: Any) -> float:
    """A level/fraction in the open interval (0, 1) (confidence, top_fraction, interval mass)."""
    return check_fraction(name, value)


def _check_groups(name: str, value: Any, n: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},) (one per site, as errors), got {_describe(value)}")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name}: expected integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_levels(levels: Any, k: int | None = None) -> np.ndarray:
    lv = _array("levels", levels)
    if np.any(~np.isfinite(lv)) or np.any(lv <= 0) or np.any(lv >= 1):
        raise ValueError(f"levels: every level must be in (0, 1), got {lv.tolist()}")
    if k is not None and lv.shape[0] != k:
        raise ValueError(f"levels: expected {k} levels (one per column of widths_at_levels), got {lv.shape[0]}")
    return lv


def _float(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


# --------------------------------------------------------------------------- basic metrics
def coverage(errors, widths) -> float:
    """Fraction of sites with e_i <= w_i.

    Parameters
    ----------
    errors : array-like of shape (n,)
        Error norms, eV/Å.
    widths : array-like of shape (n,)
        Half-widths, eV/Å.
    """
    e, w = _check_pair(errors, widths)
    return float(np.mean(e <= w))


def coverage_gap(errors, widths, confidence: float) -> float:
    """``coverage - confidence``; positive = over-covering (conservative)."""
    c = _check_level("confidence", confidence)
    return coverage(errors, widths) - c


def mean_width(widths) -> float:
    """Mean half-width, eV/Å (sharpness; lower is better at equal coverage)."""
    return float(np.mean(_check_widths(widths)))


def width_ratio(widths, reference_widths) -> float:
    """``mean(widths) / mean(reference_widths)``.

    ``reference_widths`` are normally the widths of global split CP on the
    same sites, so a ratio below 1 means sharper than the baseline. The two
    arrays need not have the same length.
    """
    w = _check_widths(widths)
    r = _check_widths(reference_widths, name="reference_widths")
    mr = float(np.mean(r))
    if mr == 0.0:
        raise ValueError("reference_widths: mean is 0, the ratio is undefined")
    return float(np.mean(w)) / mr


def correlation_or_reason(errors, widths, method: str = "spearman") -> tuple[float | None, str | None]:
    """Correlation of (widths, errors) and, when undefined, why.

    Parameters
    ----------
    method : {"spearman", "pearson"}

    Returns
    -------
    (value, reason)
        ``(rho, None)`` when defined, ``(None, reason)`` when not (constant
        widths — e.g. one global conformal width —, constant errors, fewer
        than 2 sites, or infinite widths for Pearson).
    """
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method: expected 'spearman' or 'pearson', got {method!r}")
    e, w = _check_pair(errors, widths)
    if e.shape[0] < 2:
        return None, "undefined: fewer than 2 sites"
    if np.all(w == w[0]):
        return None, "undefined: widths are constant (one global width ranks no site above another)"
    if np.all(e == e[0]):
        return None, "undefined: errors are constant"
    if method == "pearson":
        if not np.all(np.isfinite(w)):
            return None, "undefined: widths contain inf"
        x, y = w, e
    else:
        x, y = stats.rankdata(w), stats.rankdata(e)
    x = x - x.mean()
    y = y - y.mean()
    r = float(np.dot(x, y) / math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y))))
    return max(-1.0, min(1.0, r)), None


def spearman(errors, widths) -> float | None:
    """Spearman rank correlation of (w_i, e_i) (the paper's rho); None if undefined."""
    return correlation_or_reason(errors, widths, "spearman")[0]


def pearson(errors, widths) -> float | None:
    """Pearson correlation of (w_i, e_i); None if undefined."""
    return correlation_or_reason(errors, widths, "pearson")[0]


def _top_mask(e: np.ndarray, top_fraction: float) -> np.ndarray:
    n = e.shape[0]
    k = math.ceil(round(top_fraction * n, 9))
    k = min(max(k, 1), n)
    cut = np.sort(e)[n - k]
    return e >= cut


def auroc(errors, widths, top_fraction: float = 0.1) -> float | None:
    """AUROC of ``widths`` for flagging the sites with the largest errors.

    The positives are the ``ceil(top_fraction * n)`` sites with the largest
    errors; sites tied with the smallest of them are positive too. The AUROC
    is the exact Mann–Whitney statistic P(w_pos > w_neg) + 0.5 P(w_pos = w_neg).

    Returns
    -------
    float or None
        None when every site is positive (all errors equal), i.e. undefined.
    """
    e, w = _check_pair(errors, widths)
    f = _check_level("top_fraction", top_fraction)
    return _auroc(e, w, f)


def _auroc(e: np.ndarray, w: np.ndarray, top_fraction: float) -> float | None:
    pos = _top_mask(e, top_fraction)
    n1 = int(pos.sum())
    n0 = e.shape[0] - n1
    if n0 == 0:
        return None
    ranks = stats.rankdata(w)
    u = float(ranks[pos].sum()) - n1 * (n1 + 1) / 2.0
    return u / (n1 * n0)


def observed_coverage_curve(errors, widths_at_levels, levels) -> np.ndarray:
    """Observed coverage at each nominal level.

    Parameters
    ----------
    errors : array-like of shape (n,)
    widths_at_levels : array-like of shape (n, k)
        Column j holds the half-widths for nominal level ``levels[j]``.
    levels : array-like of shape (k,)

    Returns
    -------
    ndarray of shape (k,)
        ``mean(e_i <= W[i, j])`` for each j.
    """
    e = _check_errors(errors)
    W = _check_widths(widths_at_levels, e.shape[0], name="widths_at_levels", ndim=2)
    _check_levels(levels, W.shape[1])
    return np.mean(e[:, None] <= W, axis=0)


def miscalibration_area(errors, widths_at_levels, levels=None) -> float:
    """Mean over levels p of |observed coverage(p) - p|.

    ``levels`` defaults to :data:`CALIBRATION_LEVELS` (0.05 .. 0.95), in which
    case ``widths_at_levels`` must have 19 columns.
    """
    if levels is None:
        k = np.shape(widths_at_levels)[-1] if np.ndim(widths_at_levels) == 2 else None
        if k is not None and k != CALIBRATION_LEVELS.shape[0]:
            raise ValueError(
                f"levels: not given, so the {CALIBRATION_LEVELS.shape[0]} CALIBRATION_LEVELS are used, "
                f"but widths_at_levels has {k} columns; pass levels"
            )
    lv = CALIBRATION_LEVELS if levels is None else levels
    obs = observed_coverage_curve(errors, widths_at_levels, lv)
    return float(np.mean(np.abs(obs - np.asarray(lv, dtype=float))))


def species_coverage(errors, widths, species) -> dict[int, float]:
    """Coverage per species, ``{Z: coverage}`` sorted by atomic number Z."""
    e, w = _check_pair(errors, widths)
    z = _check_groups("species", species, e.shape[0])
    hit = e <= w
    return {int(s): float(np.mean(hit[z == s])) for s in np.unique(z)}


def worst_species_coverage(errors, widths, species) -> float:
    """Smallest per-species coverage."""
    return min(species_coverage(errors, widths, species).values())


def pinball_loss(errors, widths, level: float) -> float:
    """Mean pinball loss of ``widths`` as the ``level``-quantile of ``errors``.

    rho_l(r) = max(l r, (l - 1) r) with r = e_i - w_i, averaged over sites, eV/Å.
    """
    e, w = _check_pair(errors, widths)
    t = _check_level("level", level)
    r = e - w
    return float(np.mean(np.maximum(t * r, (t - 1.0) * r)))


# --------------------------------------------------------------------------- structure level
def structure_maxima(errors, widths, structure_ids) -> tuple[np.ndarray, np.ndarray]:
    """Per-structure maximum site error and maximum site width.

    Returns
    -------
    (max_errors, max_widths) : two ndarrays of shape (m,)
        One entry per distinct structure id, in the order of
        ``np.unique(structure_ids)``.
    """
    e, w = _check_pair(errors, widths)
    ids = _check_groups("structure_ids", structure_ids, e.shape[0])
    _, inv = np.unique(ids, return_inverse=True)
    m = int(inv.max()) + 1
    max_e = np.full(m, -np.inf)
    max_w = np.full(m, -np.inf)
    np.maximum.at(max_e, inv, e)
    np.maximum.at(max_w, inv, w)
    return max_e, max_w


def structure_spearman(errors, widths, structure_ids) -> float | None:
    """Spearman of (max width, max error) over structures; None if undefined."""
    me, mw = structure_maxima(errors, widths, structure_ids)
    return spearman(me, mw)


def structure_auroc(errors, widths, structure_ids, top_fraction: float = 0.1) -> float | None:
    """AUROC of the max width for flagging structures in the top fraction of max error."""
    me, mw = structure_maxima(errors, widths, structure_ids)
    return auroc(me, mw, top_fraction)


# --------------------------------------------------------------------------- reference values
def spearman_ideal(widths, confidence: float, seed: int = 0, n_draws: int = 32) -> float | None:
    """Expected Spearman rho if errors were drawn from the predicted distribution.

    Each site's error vector is taken as isotropic Gaussian with per-component
    standard deviation sigma_i, so ``e_i = sigma_i * chi_3``; sigma_i is set so
    that the ``confidence``-quantile of ``sigma_i * chi_3`` equals ``w_i``. The
    Spearman correlation of (w, e) is averaged over ``n_draws`` seeded draws.
    It is an expectation under that assumed error law, not a ceiling: observed rho can
    exceed it when real errors are more (or less noisily) ordered than sigma_i * chi_3.

    Parameters
    ----------
    widths : array-like of shape (n,)
        Half-widths, eV/Å.
    confidence : float in (0, 1)
    seed : int
    n_draws : int >= 1

    Returns
    -------
    float or None
        None when the widths are constant (Spearman undefined).
    """
    w = _check_widths(widths)
    c = _check_level("confidence", confidence)
    n_draws = check_int("n_draws", n_draws, 1)
    if w.shape[0] < 2 or np.all(w == w[0]):
        return None
    sigma = w / float(stats.chi.ppf(c, 3))
    rng = np.random.default_rng(seed)
    rw = stats.rankdata(w)
    rw = rw - rw.mean()
    rhos = []
    for _ in range(int(n_draws)):
        draw = sigma * np.sqrt(rng.chisquare(3, size=w.shape[0]))
        re = stats.rankdata(draw)
        re = re - re.mean()
        den = math.sqrt(float(np.dot(rw, rw)) * float(np.dot(re, re)))
        if den > 0:
            rhos.append(float(np.dot(rw, re)) / den)
    return float(np.mean(rhos)) if rhos else None


# --------------------------------------------------------------------------- bootstrap
def bootstrap_ci(
    errors,
    widths,
    structure_ids,
    statistic: Callable[[np.ndarray, np.ndarray], float | None],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of ``statistic`` resampling whole structures.

    Each resample draws as many structures as there are, with replacement, and
    keeps all sites of every drawn structure (atoms of one structure are
    correlated, so resampling atoms would understate the spread).

    Parameters
    ----------
    errors, widths : array-like of shape (n,)
    structure_ids : array-like of int, shape (n,)
    statistic : callable (errors, widths) -> float or None
        E.g. :func:`coverage` or :func:`spearman`. Resamples where it returns
        None or NaN are skipped.
    n_boot : int >= 1
    seed : int
    level : float in (0, 1)
        Interval mass, 0.95 = central 95 %.

    Returns
    -------
    (lo, hi) : floats, or (None, None) when the statistic is undefined on every resample.
    """
    e, w = _check_pair(errors, widths)
    ids = _check_groups("structure_ids", structure_ids, e.shape[0])
    if not callable(statistic):
        raise ValueError(f"statistic: expected a callable (errors, widths) -> float, got {statistic!r}")
    n_boot = check_int("n_boot", n_boot, 1)
    lv = _check_level("level", level)
    _, inv, counts = np.unique(ids, return_inverse=True, return_counts=True)
    order = np.argsort(inv, kind="stable")
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    m = counts.shape[0]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(n_boot)):
        picks = rng.integers(0, m, size=m)
        lens = counts[picks]
        offsets = np.repeat(starts[picks] - (np.cumsum(lens) - lens), lens)
        idx = order[np.arange(int(lens.sum())) + offsets]
        v = statistic(e[idx], w[idx])
        if v is not None and not math.isnan(float(v)):
            values.append(float(v))
    if not values:
        return None, None
    lo, hi = np.quantile(values, [(1.0 - lv) / 2.0, 1.0 - (1.0 - lv) / 2.0])
    return float(lo), float(hi)
