"""Readable scales for the FlexCal figures: log-axis ticks, robust ranges, element colours.

Pure numpy helpers (plotly is only touched through ``fig.update_*axes``):

- :func:`log_ticks` puts ticks at decades, or at 1-2-5 steps when the range spans less
  than about two decades, labelled as plain numbers (``"0.01"``, ``"0.2"``, ``"10"``)
  inside 10⁻³..10³ and as powers of ten (``"10⁻⁵"``) outside, never every minor digit;
- :func:`robust_range` spans the 0.5th-99.5th percentiles of the data (in log10 space for
  log axes), padded, so a few extreme points do not squash the bulk of the cloud;
- :func:`element_colors` gives the Jmol (CPK) colour of each element (H white, C grey,
  O red, ...); markers drawn in them get a dark outline so pale ones stay visible.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ROBUST_QUANTILES",
    "apply_log_axis",
    "element_color",
    "element_colors",
    "element_symbol",
    "format_tick",
    "log_ticks",
    "robust_range",
]

#: Percentiles (in %) of the data an axis spans by default.
ROBUST_QUANTILES = (0.5, 99.5)
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def format_tick(value: float) -> str:
    """A readable tick label: ``0.01``, ``0.2``, ``10``, ``2×10⁻⁵``, ``10⁶``."""
    v = float(value)
    if v <= 0 or not np.isfinite(v):
        raise ValueError(f"value: expected a positive finite tick, got {value!r}")
    exp = int(np.floor(np.log10(v) + 1e-9))
    mant = round(v / 10.0**exp, 6)
    if -3 <= exp <= 3:
        return f"{v:.{max(0, -exp)}f}"
    power = f"10{str(exp).translate(_SUPERSCRIPT)}"
    return power if abs(mant - 1) < 1e-6 else f"{mant:g}×{power}"


def log_ticks(lo: float, hi: float, max_ticks: int = 8) -> tuple[list[float], list[str]]:
    """Tick values and labels for a log axis spanning ``[lo, hi]`` (data units, both > 0).

    Decades when at least three fall inside the range (every 2nd, 3rd, ... decade when
    there would be more than ``max_ticks``), else the 1-2-5 steps inside the range.
    """
    lo, hi = float(lo), float(hi)
    if not (0 < lo < hi and np.isfinite(hi)):
        raise ValueError(f"lo, hi: expected 0 < lo < hi (finite), got {lo!r}, {hi!r}")
    d0, d1 = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    n_decades = sum(lo <= 10.0**d <= hi for d in range(d0, d1 + 1))
    if n_decades >= 3:
        step = max(1, int(np.ceil((d1 - d0 + 1) / max_ticks)))
        vals = [10.0**d for d in range(d0, d1 + 1) if d % step == 0]
    else:
        vals = [m * 10.0**d for d in range(d0, d1 + 1) for m in (1, 2, 5)]
    vals = [v for v in vals if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
    if len(vals) < 2:  # under a factor 2: add the ends themselves
        vals = sorted({*vals, float(f"{lo:.2g}"), float(f"{hi:.2g}")})
        vals = [v for v in vals if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)] or [lo, hi]
    return vals, [format_tick(v) for v in vals]


def apply_log_axis(fig, axis: str, lo: float, hi: float):
    """Make ``fig``'s x or y axis logarithmic over ``[lo, hi]`` (data units) with :func:`log_ticks`.

    Returns ``fig`` (changed in place).
    """
    if axis not in ("x", "y"):
        raise ValueError(f"axis: expected 'x' or 'y', got {axis!r}")
    vals, _ = log_ticks(lo, hi)
    # decades beyond the range keep ticks when the user zooms out (only visible ones are drawn)
    d0, d1 = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    vals = sorted({*vals, *(10.0**d for d in range(d0 - 4, d1 + 5) if not lo <= 10.0**d <= hi)})
    text = [format_tick(v) for v in vals]
    update = fig.update_xaxes if axis == "x" else fig.update_yaxes
    update(type="log", range=[np.log10(lo), np.log10(hi)], tickmode="array", tickvals=vals, ticktext=text,
           minor=dict(showgrid=False, ticks=""))
    return fig


def robust_range(values, log: bool = False, quantiles: tuple[float, float] = ROBUST_QUANTILES,
                 pad: float = 0.06) -> tuple[float, float]:
    """``(lo, hi)`` spanning the given percentiles of the finite ``values`` (positive ones if ``log``).

    Parameters
    ----------
    values : array-like
        Any shape; non-finite values (and non-positive ones when ``log``) are ignored.
    log : bool
        Work in log10 space: the padding is a fraction of the span in decades and the
        result is in data units.
    quantiles : (low, high) in percent
    pad : float
        Fraction of the span added on each side (an empty span gets a factor 2, or ±1).
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if log:
        v = np.log10(v[v > 0])
    if v.size == 0:
        raise ValueError(f"values: expected at least one finite{' positive' if log else ''} value, got none")
    lo_q, hi_q = quantiles
    if not 0 <= lo_q < hi_q <= 100:
        raise ValueError(f"quantiles: expected 0 <= low < high <= 100, got {quantiles!r}")
    lo, hi = (float(x) for x in np.percentile(v, [lo_q, hi_q]))
    span = hi - lo
    if span <= 1e-12 * max(1.0, abs(hi)):
        half = np.log10(2.0) if log else max(1.0, 0.1 * abs(hi))
        lo, hi = lo - half, hi + half
    else:
        lo, hi = lo - pad * span, hi + pad * span
    return (10.0**lo, 10.0**hi) if log else (lo, hi)


def element_symbol(z: int) -> str:
    """Chemical symbol of atomic number ``z`` (``"Z=0"`` outside 1..118)."""
    from ase.data import chemical_symbols

    z = int(z)
    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"


def element_color(z: int) -> str:
    """Jmol (CPK) colour of element ``z`` as ``#rrggbb`` (grey outside 1..118)."""
    from ase.data.colors import jmol_colors

    z = int(z)
    rgb = np.asarray(jmol_colors[z] if 0 < z < len(jmol_colors) else (0.5, 0.5, 0.5), dtype=float)
    r, g, b = (int(round(255 * float(np.clip(c, 0, 1)))) for c in rgb)
    return f"#{r:02X}{g:02X}{b:02X}"


def element_colors(species) -> dict[int, str]:
    """``{Z: colour}`` for the distinct atomic numbers in ``species`` (any shape), sorted by Z."""
    zs = np.unique(np.asarray(species).astype(np.int64).ravel())
    return {int(z): element_color(int(z)) for z in zs}
