"""Expected spread of an observed coverage for a finite calibration (and test) size (METHOD §6).

Split conformal prediction with n exchangeable calibration units and k = ⌈(n + 1)·c⌉
(c = confidence) has, conditionally on the calibration draw, a coverage C that is
distributed as Beta(k, n + 1 - k) (continuous scores, Vovk 2012; Angelopoulos & Bates
2021, §3.2): mean k/(n + 1) ∈ [c, c + 1/(n + 1)), standard deviation ≈ sqrt(c(1 - c)/n).
An observed coverage is measured on m test units on top of that, so it is
X/m with X ~ BetaBinomial(m, k, n + 1 - k).

Units. Atoms of one structure are correlated, so neither the calibration scores nor the
test sites are independent. :func:`expected_coverage_interval` takes the numbers of
*structures* as the effective sizes: n = calibration structures (for q_θ the holdout
structures that set ĉ, after ``update`` the update structures) and m = test structures.
Counting structures instead of sites can only widen the interval, so it is the
conservative choice: an observed coverage outside it is a real warning sign (shift,
a split that is not exchangeable, or a bug), not noise of the sample size.
"""

from __future__ import annotations

from core.validation import check_confidence, check_fraction, check_int

__all__ = ["expected_coverage_interval"]


def expected_coverage_interval(n_calibration: int, confidence: float, *, n_test: int | None = None,
                               level: float = 0.95) -> tuple[float, float]:
    """Central ``level`` interval of the coverage split CP reaches with ``n_calibration`` units.

    Parameters
    ----------
    n_calibration : int >= 1
        Number of calibration units; pass the number of calibration **structures**
        (the conservative effective size, see the module docstring).
    confidence : float in (0, 1)
        Target coverage c.
    n_test : int >= 1, optional
        Number of test units (test **structures**) the coverage is measured on. None: the
        interval of the coverage itself, C ~ Beta(k, n + 1 - k), k = ⌈(n + 1)·c⌉. Given:
        the interval of the observed fraction X/m, X ~ BetaBinomial(m, k, n + 1 - k)
        (wider: it adds the binomial noise of a finite test set).
    level : float in (0, 1), default 0.95
        Mass of the central interval.

    Returns
    -------
    (lo, hi) : tuple of float
        Quantiles (1 - level)/2 and (1 + level)/2. For the beta-binomial the discrete
        quantiles (smallest x with CDF >= q, divided by m) are taken, so the interval holds
        at least ``level`` of the mass. When k > n (fewer structures than this confidence
        needs: the site-level quantile is still finite, but the structure-level law is not
        defined) the law is evaluated at the smallest n whose rank fits (n = 9 at 0.9): the
        widest finite interval, never a spurious (1.0, 1.0).

    Examples
    --------
    >>> lo, hi = expected_coverage_interval(100, 0.9)          # Beta(91, 10)
    >>> round(lo, 3), round(hi, 3)
    (0.836, 0.951)
    """
    from scipy import stats

    from core.calibration.conformal import conformal_rank

    n = check_int("n_calibration", n_calibration, 1)
    c = check_confidence(confidence)
    q = check_fraction("level", level)
    m = None if n_test is None else check_int("n_test", n_test, 1)
    k = conformal_rank(n, c)
    while k > n:  # fewer structures than the rank needs: the sites' quantile is finite, the units' law is
        n += 1    # not; evaluate it at the smallest size whose rank fits (the widest finite interval)
        k = conformal_rank(n, c)
    a, b = float(k), float(n + 1 - k)
    tails = ((1.0 - q) / 2.0, (1.0 + q) / 2.0)
    if m is None:
        lo, hi = (float(stats.beta.ppf(t, a, b)) for t in tails)
    else:
        lo, hi = (float(stats.betabinom.ppf(t, m, a, b)) / m for t in tails)
    return max(0.0, lo), min(1.0, hi)
