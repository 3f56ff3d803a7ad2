"""Pieces shared by the teaching notebooks (``notebooks/``), so that none of them copies another.

Calibrating needs none of this: the notebooks calibrate through the public API (``core``,
:mod:`core.evaluation`, :mod:`core.sources`, :mod:`core.studies`). What several notebooks need
besides is here:

* **the FAST label** — :data:`FAST_NOTE`, :func:`fast_mode`, :func:`show`: every results cell of a
  notebook run with ``FLEXCAL_NB_FAST=1`` says that its numbers come from small settings;
* **numbers with their intervals** — :func:`fmt` writes ``0.91 [0.87, 0.94]`` (∞ and n/a
  included), so take-aways are f-strings of the results, never typed;
* **coverage per group** — :func:`coverage_by_group`: coverage of each species, x-bin or
  structure type with a by-structure bootstrap interval, the mean width and the number of
  infinite widths (marginal vs conditional coverage); :func:`infinite_widths` counts the
  infinite widths of an :class:`core.evaluation.Evaluation`;
* **toys with a known truth** — :func:`toy_sites_1d` (errors σ(x)·χ₃ with a hard region that is
  not rare) and :func:`toy_sites_correlated` (atoms of one structure share a hidden difficulty:
  the structure, not the site, is the exchangeable unit), with :func:`toy_sigma_1d` and
  :func:`chi3_quantile`;
* **public DFT data** — :func:`shared_data_dir`, :func:`public_frames` and :func:`cached_mace`
  (a small MACE trained once per settings and reused by notebooks 03–05).

Numpy/scipy at import; pandas, IPython and MACE load inside the functions that need them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.metrics.basic import bootstrap_ci, coverage
from core.sites import SiteTable
from core.validation import check_confidence, check_float, check_fraction, check_int, check_seed

__all__ = [
    "FAST_ENV",
    "FAST_NOTE",
    "fast_mode",
    "show",
    "fmt",
    "coverage_by_group",
    "infinite_widths",
    "plot_group_coverage",
    "chi3_quantile",
    "toy_sigma_1d",
    "toy_sites_1d",
    "toy_sites_correlated",
    "shared_data_dir",
    "public_frames",
    "cached_mace",
]

#: Environment variable that selects the small settings of every notebook ("1" = FAST).
FAST_ENV = "FLEXCAL_NB_FAST"
#: The label every results cell of a FAST run carries.
FAST_NOTE = "FAST mode: small settings, numbers differ from the full run"


# ------------------------------------------------------------------ FAST label and numbers
def fast_mode() -> bool:
    """True when ``FLEXCAL_NB_FAST=1`` (the test suite and CI set it)."""
    return os.environ.get(FAST_ENV, "0").strip() == "1"


def show(*objects: Any, fast: bool, caption: str | None = None) -> None:
    """Display ``objects`` (tables, figures, Markdown text) under the mode label.

    With ``fast=True`` a line "*FAST mode: small settings, numbers differ from the full run*"
    comes first; ``caption`` (Markdown) follows; a ``str`` object is rendered as Markdown.
    """
    from IPython.display import Markdown, display

    head = [f"*{FAST_NOTE}.*"] if fast else []
    if caption:
        head.append(caption)
    objects = list(objects)
    if objects and isinstance(objects[0], str):  # text: one Markdown block with the label
        head.append(objects.pop(0))
    if head:
        display(Markdown("\n\n".join(head)))
    for obj in objects:
        display(Markdown(obj) if isinstance(obj, str) else obj)


def _number(value: Any, digits: int, percent: bool) -> str:
    if value is None:
        return "n/a"
    v = float(value)
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    return f"{100 * v:.{max(digits - 2, 0)}f} %" if percent else f"{v:.{digits}f}"


def fmt(value: Any, interval: Sequence | None = None, *, digits: int = 2, percent: bool = False) -> str:
    """A number and, when given, its interval: ``"0.91 [0.87, 0.94]"`` or ``"91 % [87 %, 94 %]"``.

    ``value`` and the interval bounds may be None or NaN ("n/a") or infinite ("∞"); a None
    ``value`` with an interval gives the interval alone (``"[0.87, 0.94]"``).
    ``percent=True`` multiplies by 100 and keeps ``digits - 2`` decimals.
    """
    digits = check_int("digits", digits, 0, 12)
    text = _number(value, digits, percent)
    if interval is None:
        return text
    if len(interval) != 2:
        raise ValueError(f"interval: expected (lo, hi), got {interval!r}")
    lo, hi = (_number(b, digits, percent) for b in interval)
    return f"[{lo}, {hi}]" if value is None else f"{text} [{lo}, {hi}]"


# ------------------------------------------------------------------------ coverage by group
def coverage_by_group(errors, widths, groups, structure_ids=None, *, n_boot: int = 200, seed: int = 0,
                      level: float = 0.95):
    """Coverage of every group (species, x-bin, config type) with a by-structure bootstrap interval.

    Parameters
    ----------
    errors, widths : array-like of shape (n,)
        Error norms and half-widths, eV/Å (widths may be +inf).
    groups : array-like of shape (n,)
        Group label of each site.
    structure_ids : array-like of shape (n,), optional
        Structure of each site: the bootstrap resamples whole structures within a group
        (atoms of one structure are correlated). None: every site is its own unit.
    n_boot : int >= 1
        Bootstrap resamples per group.
    seed : int
    level : float in (0, 1)
        Mass of the interval (0.95: central 95 %).

    Returns
    -------
    pandas.DataFrame
        Index ``group`` (sorted); columns ``n_sites``, ``n_structures``, ``coverage``,
        ``coverage_lo``, ``coverage_hi``, ``mean_width`` (eV/Å, ∞ when a width is),
        ``n_infinite`` (sites with an infinite width).
    """
    import pandas as pd

    e = np.asarray(errors, dtype=np.float64)
    w = np.asarray(widths, dtype=np.float64)
    g = np.asarray(groups)
    n = e.shape[0]
    if e.ndim != 1 or w.shape != (n,) or g.shape != (n,):
        raise ValueError(f"errors, widths, groups: expected three arrays of shape (n,), got "
                         f"{e.shape}, {w.shape}, {g.shape}")
    if n == 0:
        raise ValueError("errors: expected at least one site, got 0")
    ids = np.arange(n) if structure_ids is None else np.asarray(structure_ids)
    if ids.shape != (n,):
        raise ValueError(f"structure_ids: expected shape ({n},), got {ids.shape}")
    n_boot = check_int("n_boot", n_boot, 1)
    level = check_fraction("level", level)
    seed = check_seed(seed)
    rows = []
    for label in np.unique(g):
        m = g == label
        covered = e[m] <= w[m]
        # the one by-structure bootstrap (core.metrics.bootstrap_ci), as core.metrics.breakdown uses
        lo, hi = bootstrap_ci(e[m], w[m], ids[m], coverage, n_boot, seed, level)
        rows.append(dict(group=label, n_sites=int(m.sum()), n_structures=int(np.unique(ids[m]).size),
                         coverage=float(covered.mean()), coverage_lo=lo, coverage_hi=hi,
                         mean_width=float(np.mean(w[m])), n_infinite=int(np.isinf(w[m]).sum())))
    return pd.DataFrame(rows).set_index("group")


def infinite_widths(evaluation) -> Any:
    """Infinite widths of every (label, split) of an :class:`core.evaluation.Evaluation`.

    Returns a pandas DataFrame with columns ``label``, ``split``, ``n_sites``, ``n_infinite``,
    ``infinite_fraction`` (one row per variant × split that was scored).
    """
    import pandas as pd

    rows = []
    for (label, split), w in evaluation.widths.items():
        w = np.asarray(w, dtype=np.float64)
        k = int(np.isinf(w).sum())
        rows.append(dict(label=label, split=split, n_sites=int(w.size), n_infinite=k,
                         infinite_fraction=k / w.size if w.size else math.nan))
    return pd.DataFrame(rows, columns=["label", "split", "n_sites", "n_infinite", "infinite_fraction"])


def plot_group_coverage(tables: dict, confidence: float, *, group_name: str = "group", title: str = ""):
    """Bars of coverage per group with their intervals, one colour per method.

    ``tables``: method label -> :func:`coverage_by_group` table (the groups of all tables are
    shown in the order of the first). A dashed line marks ``confidence``. Returns a plotly Figure.
    """
    import plotly.graph_objects as go

    from core.figures import method_colors

    if not isinstance(tables, dict) or not tables:
        raise ValueError(f"tables: expected a non-empty dict of label -> coverage_by_group table, got {tables!r}")
    confidence = check_confidence(confidence)
    colors = method_colors(list(tables))
    fig = go.Figure()
    for label, t in tables.items():
        x = [str(g) for g in t.index]
        fig.add_trace(go.Bar(
            x=x, y=t["coverage"], name=str(label), marker_color=colors[str(label)],
            error_y=dict(type="data", symmetric=False, array=t["coverage_hi"] - t["coverage"],
                         arrayminus=t["coverage"] - t["coverage_lo"]),
            customdata=np.c_[t["n_sites"], t["n_structures"]],
            hovertemplate="%{x}: coverage %{y:.3f}<br>%{customdata[0]} sites, %{customdata[1]} structures",
        ))
    fig.add_hline(y=confidence, line=dict(color="black", dash="dash"), annotation_text=f"nominal {confidence:.0%}")
    fig.update_layout(barmode="group", template="plotly_white", height=430, title=title or f"Coverage per {group_name}",
                      xaxis_title=group_name, yaxis_title="coverage (fraction; bars: 95 % by-structure bootstrap)",
                      yaxis_range=[0, 1.05])
    return fig


# ----------------------------------------------------------------------------- toy problems
def chi3_quantile(p: float) -> float:
    """The ``p``-quantile of the χ distribution with 3 degrees of freedom (norm of a 3-D unit Gaussian)."""
    from scipy import stats

    return float(stats.chi.ppf(check_confidence(p, "p"), 3))


def toy_sigma_1d(x) -> np.ndarray:
    """Per-component error scale σ(x) (eV/Å) of the 1-D toy: a trend plus a bump at x ≈ 0.3."""
    x = np.asarray(x, dtype=np.float64)
    return 0.02 + 0.20 * x + 0.12 * np.exp(-(((x - 0.3) / 0.05) ** 2))


def toy_sites_1d(n_structures: int, *, atoms_per_structure: int = 8, rare_fraction: float = 0.25,
                 seed: int = 0) -> SiteTable:
    """Sites with one descriptor x ∈ [0, 1] and errors σ(x)·χ₃ (:func:`toy_sigma_1d`).

    A fraction ``rare_fraction`` of sites has x ∈ [0.6, 1] (rare, and hard because σ grows with
    x); the rest has x ∈ [0, 0.6), which holds a hard bump at x ≈ 0.3 that is *not* rare.
    Sites are independent; ``structure_ids`` group them ``atoms_per_structure`` at a time.
    Species: 3 (Li) for all.
    """
    n_structures = check_int("n_structures", n_structures, 2)
    atoms = check_int("atoms_per_structure", atoms_per_structure, 1)
    rare_fraction = check_float("rare_fraction", rare_fraction, 0.0, 1.0)
    rng = np.random.default_rng(check_seed(seed))
    n = n_structures * atoms
    rare = rng.random(n) < rare_fraction
    x = np.where(rare, rng.uniform(0.6, 1.0, n), rng.uniform(0.0, 0.6, n))
    e = toy_sigma_1d(x) * np.linalg.norm(rng.normal(size=(n, 3)), axis=1)
    return SiteTable.from_arrays(descriptors=x[:, None], errors=e, species=np.full(n, 3),
                                 structure_ids=np.repeat(np.arange(n_structures), atoms))


def toy_sites_correlated(n_structures: int, *, atoms_per_structure: int = 12, difficulty_spread: float = 0.6,
                         dim: int = 8, seed: int = 0, first_id: int = 0) -> SiteTable:
    """Structures whose atoms share a hidden difficulty: e = 0.1 · s_k · χ₃ (eV/Å), log s_k ~ N(0, spread²).

    Each structure k has a centre in ``dim``-dimensional descriptor space; its atoms sit
    close to it (noise 0.05), so siblings look alike, but nothing in X predicts s_k for a new
    structure. ``difficulty_spread`` = 0 makes the atoms independent (then sites are
    exchangeable); larger values make the structure the only exchangeable unit.
    ``first_id`` offsets the structure ids (disjoint tables).
    """
    n_structures = check_int("n_structures", n_structures, 1)
    atoms = check_int("atoms_per_structure", atoms_per_structure, 1)
    spread = check_float("difficulty_spread", difficulty_spread, 0.0, 5.0)
    dim = check_int("dim", dim, 1)
    first_id = check_int("first_id", first_id, 0)
    rng = np.random.default_rng(check_seed(seed))
    centres = rng.normal(size=(n_structures, dim))
    difficulty = rng.lognormal(0.0, spread, size=n_structures) if spread > 0 else np.ones(n_structures)
    sid = np.repeat(np.arange(n_structures), atoms)
    x = centres[sid] + 0.05 * rng.normal(size=(sid.size, dim))
    e = 0.1 * difficulty[sid] * np.linalg.norm(rng.normal(size=(sid.size, 3)), axis=1)
    return SiteTable.from_arrays(descriptors=x, errors=e, species=np.full(sid.size, 3), structure_ids=sid + first_id)


# ------------------------------------------------------------------------- public DFT data
def shared_data_dir() -> Path | None:
    """The public DFT datasets: ``$FLEXCAL_SHARED_DATA``, else ``shared/data`` beside the repository; None if absent."""
    env = os.environ.get("FLEXCAL_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


def public_frames(relative_path: str, n: int | None = None, start: int = 0, *, root=None,
                  labelled: bool = True) -> list:
    """Frames ``[start, start + n)`` of a public dataset file, labels mapped to ``REF_*``.

    ``relative_path`` is relative to ``root`` (default :func:`shared_data_dir`), e.g.
    ``"acac/train_300K.xyz"``. ``labelled=False`` reads files without forces (a reaction path
    with energies only). FileNotFoundError when the data are absent.
    """
    from core.data import read_dataset

    base = Path(root) if root is not None else shared_data_dir()
    if base is None:
        raise FileNotFoundError("public data not found: set FLEXCAL_SHARED_DATA or put shared/data beside the repository")
    start = check_int("start", start, 0)
    stop = None if n is None else start + check_int("n", n, 1)
    structures = read_dataset(base / relative_path, require_labels=labelled).structures
    return list(structures[start:stop])


def cached_mace(tag: str, frames: Sequence, cache_dir, *, seed: int = 0,
                log: Callable[[str], Any] | None = print, **settings) -> Path:
    """A small MACE trained on ``frames`` once per (tag, number of frames, settings), then reused.

    ``settings`` go to :func:`core.training.train_mace` (``max_num_epochs``, ``num_channels``,
    ``batch_size``, ...); the model is ``<cache_dir>/models/<tag>_<n>f_<settings>.model``.
    """
    if not tag or any(c in tag for c in "/\\ "):
        raise ValueError(f"tag: expected a short name without spaces or slashes, got {tag!r}")
    name = f"{tag}_{len(frames)}f_" + "_".join(f"{k}{v}" for k, v in sorted(settings.items()))
    folder = Path(cache_dir) / "models"
    path = folder / f"{name}.model"
    if not path.exists():
        from core.training import train_mace

        if log is not None:
            log(f"training MACE {name} on {len(frames)} frames ...")
        train_mace(list(frames), workdir=folder, name=name, seed=check_seed(seed), **settings)
    return path
