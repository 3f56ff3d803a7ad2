"""Which MD frames to label: per-frame scores of a strategy and the pick rule.

A strategy turns a model's view of the candidate frames into one score per frame
(larger = less trusted) and picks the top frames:

* ``"calibrated"``: the calibrator's per-site widths (eV/Å), reduced to one value per frame;
* ``"heuristic"``: an uncalibrated heuristic's per-site scores (e.g. kNN descriptor distance);
* ``"random"``: no score; frames are drawn uniformly (seeded).

Numpy only.
"""

from __future__ import annotations

import numpy as np

from core.validation import check_choice, check_int

__all__ = ["STRATEGIES", "REDUCE", "select_frames", "structure_uncertainty", "frame_scores"]

#: Selection strategies, in the order the loop runs them by default.
STRATEGIES = ("calibrated", "heuristic", "random")
#: Site -> frame aggregations of :func:`structure_uncertainty`.
REDUCE = ("max", "mean")


def select_frames(uncertainties, n: int, strategy: str, seed: int = 0, *, min_gap: int = 0) -> np.ndarray:
    """Indices of the frames to label.

    Parameters
    ----------
    uncertainties : array-like of shape (m,)
        One score per candidate frame, larger = less trusted (``+inf`` allowed, NaN not).
        Ignored by ``"random"`` except for its length.
    n : int
        Number of frames to pick, ``0 <= n <= m``.
    strategy : {"calibrated", "heuristic", "random"}
        ``"calibrated"`` and ``"heuristic"`` take the ``n`` largest uncertainties (ties:
        the earlier frame first); ``"random"`` draws ``n`` frames uniformly without
        replacement with ``numpy.random.default_rng(seed)``.
    seed : int
        Seed of ``"random"``.
    min_gap : int, optional
        Consecutive MD frames are nearly identical; picks are kept at least ``min_gap``
        frame indices apart while enough such frames exist (frames are taken greedily in
        the strategy's order, and the remaining ones fill up when the gap cannot be met).
        0 or 1: no constraint.

    Returns
    -------
    ndarray of int64, shape (n,)
        Distinct frame indices in pick order (most uncertain first for the ranked strategies).

    Examples
    --------
    >>> select_frames([0.1, 0.5, 0.3, 0.5], 2, "calibrated").tolist()
    [1, 3]
    >>> select_frames([0.1, 0.9, 0.8, 0.2], 2, "calibrated", min_gap=2).tolist()
    [1, 3]
    """
    u = np.asarray(uncertainties, dtype=np.float64)
    if u.ndim != 1:
        raise ValueError(f"uncertainties: expected a 1-D array (one value per frame), got shape {u.shape}")
    m = u.shape[0]
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {list(STRATEGIES)}, got {strategy!r}")
    try:
        n = check_int("n", n, 0, m)
    except ValueError:
        raise ValueError(f"n: expected an integer in [0, {m}] (the number of candidate frames), got {n!r}") from None
    try:
        min_gap = check_int("min_gap", min_gap, 0)
    except ValueError:
        raise ValueError(f"min_gap: expected a non-negative integer, got {min_gap!r}") from None
    if strategy == "random":
        order = np.random.default_rng(seed).permutation(m)
    else:
        if np.any(np.isnan(u)):
            raise ValueError(f"uncertainties: contains NaN (first at frame {int(np.argmax(np.isnan(u)))})")
        order = np.lexsort((np.arange(m), -u))  # descending u, earlier frame first on ties
    if min_gap <= 1 or n == 0:
        return order[:n].astype(np.int64)
    return _spread_out(order, n, min_gap)


def _spread_out(order: np.ndarray, n: int, min_gap: int) -> np.ndarray:
    """The first ``n`` of ``order`` kept ``min_gap`` apart where possible, then filled in order."""
    picked: list[int] = []
    for i in order:
        if all(abs(int(i) - j) >= min_gap for j in picked):
            picked.append(int(i))
            if len(picked) == n:
                break
    if len(picked) < n:  # not enough well-separated frames: fill in strategy order
        taken = set(picked)
        picked += [int(i) for i in order if int(i) not in taken][: n - len(picked)]
    return np.asarray(picked, dtype=np.int64)


def structure_uncertainty(widths, structure_ids, reduce: str = "max") -> np.ndarray:
    """Per-structure uncertainty from per-site widths or scores.

    Parameters
    ----------
    widths : array-like of shape (n,)
        Per-site widths (eV/Å) or heuristic scores.
    structure_ids : array-like of int, shape (n,)
    reduce : {"max", "mean"}
        ``"max"``: the least trusted site decides (what active learning selects on);
        ``"mean"``: the average site.

    Returns
    -------
    ndarray of shape (m,)
        One value per distinct structure id, in the order of ``np.unique(structure_ids)``.
    """
    w = np.asarray(widths, dtype=np.float64).reshape(-1)
    ids = np.asarray(structure_ids).reshape(-1)
    if w.shape != ids.shape:
        raise ValueError(f"structure_ids: expected shape {w.shape} (as widths), got {ids.shape}")
    if reduce not in REDUCE:
        raise ValueError(f"reduce: expected one of {list(REDUCE)}, got {reduce!r}")
    _, inv = np.unique(ids, return_inverse=True)
    m = int(inv.max()) + 1 if inv.size else 0
    if reduce == "max":
        out = np.full(m, -np.inf)
        np.maximum.at(out, inv, w)
        return out
    return np.bincount(inv, weights=w, minlength=m) / np.bincount(inv, minlength=m)


def frame_scores(strategy: str, sites, n_frames: int, *, calibrator=None, heuristic=None,
                 reduce: str = "max") -> np.ndarray:
    """One uncertainty per candidate frame, as ``strategy`` ranks them.

    Parameters
    ----------
    strategy : {"calibrated", "heuristic", "random"}
    sites : SiteTable or None
        The candidate frames' sites (structure ids 0..n_frames-1); may be None for
        ``"random"``, which needs no forward pass.
    n_frames : int
        Number of candidate frames.
    calibrator : fitted Calibrator, optional
        Needed by ``"calibrated"``: per-site widths in eV/Å.
    heuristic : fitted Heuristic, optional
        Needed by ``"heuristic"``: per-site scores.
    reduce : {"max", "mean"}
        Site -> frame aggregation (:func:`structure_uncertainty`).

    Returns
    -------
    ndarray of shape (n_frames,)
        Zeros for ``"random"``.
    """
    check_choice("strategy", strategy, STRATEGIES)
    if strategy == "random" or n_frames == 0:
        return np.zeros(n_frames)
    if strategy == "calibrated":
        if calibrator is None:
            raise ValueError("calibrator: the 'calibrated' strategy needs a fitted calibrator, got None")
        scores = calibrator.predict(sites)
    else:
        if heuristic is None:
            raise ValueError("heuristic: the 'heuristic' strategy needs a fitted heuristic, got None")
        scores = heuristic.score(sites)
    return structure_uncertainty(scores, sites.structure_ids, reduce)
