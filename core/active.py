"""Active learning in molecular dynamics (METHOD §5.4).

One loop per selection strategy, all starting from the same labelled set and the same
initial model:

1. run Langevin MD (ASE) with the current potential from the start structure(s) and keep
   every ``sample_every``-th frame as a candidate;
2. score every candidate frame: per-site widths from a calibrator fitted on the current
   model (``"calibrated"``, default q_θ = FlexibleQuantile), per-site scores of an
   uncalibrated heuristic such as the kNN descriptor distance (``"heuristic"``), or
   nothing (``"random"``); a frame's uncertainty is the max (or mean) over its sites;
3. pick ``picks_per_round`` frames (:func:`select_frames`), label them with the reference
   calculator, add them to the training set;
4. refit the potential (``core.training.train_mace``: retrain from scratch, or fine-tune
   from the current model) and recalibrate on the calibration set;
5. evaluate on a fixed test set labelled by the reference: force MAE/RMSE, and the
   calibrated widths' coverage and Spearman rho against the test errors.

The result is a tidy learning-curve table (one row per strategy and round) plus the frames
each strategy picked. Everything is seeded: the MD of round r uses the same random stream
for every strategy, so strategies differ only through their models and their picks.

Cost at demo size is dominated by the refits (one ``train_mace`` subprocess per strategy
and round, plus one for the shared initial model); MD, featurization and calibration take
seconds.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.sites import SiteTable

__all__ = [
    "STRATEGIES",
    "CURVE_COLUMNS",
    "ActiveLearningResult",
    "select_frames",
    "structure_uncertainty",
    "labels_to_reach",
    "run_active_learning",
]

STRATEGIES = ("calibrated", "heuristic", "random")
_REDUCE = ("max", "mean")
_CALIBRATE_ON = ("holdout", "train")
_REFIT = ("retrain", "finetune")

#: Columns of :attr:`ActiveLearningResult.curves`, in order.
CURVE_COLUMNS = [
    "strategy",  # str
    "round",  # int, 0 = the shared initial model
    "n_labels",  # int, reference labels used for training so far (initial + picks)
    "n_calibration",  # int, labelled structures in the calibration set
    "force_mae",  # float, eV/Å, mean |F_pred - F_ref| over test force components
    "force_rmse",  # float, eV/Å, RMS over test force components
    "force_error_max",  # float, eV/Å, largest per-atom error norm on the test set
    "energy_mae_per_atom",  # float, eV/atom
    "coverage",  # float, test sites with error <= calibrated width
    "mean_width",  # float, eV/Å
    "spearman",  # float or NaN, site level rho(width, error) on the test set
    "structure_spearman",  # float or NaN, rho(max width, max error) over test structures
    "n_candidates",  # int, MD frames scored in this round (0 in round 0)
    "md_stopped_early",  # bool, MD left the sane region (see run_active_learning)
    "pick_force_mae",  # float, eV/Å, the *previous* model's force MAE on the frames picked this round
    "pick_error_max",  # float, eV/Å, its largest per-atom error norm on them
    "pick_uncertainty_mean",  # float, mean structure uncertainty of the picks (strategy's own score)
    "seconds",  # float, wall time of this round (MD + labelling + refit + evaluation)
]


# ---------------------------------------------------------------------- selection
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
    >>> select_frames([0.1, 0.5, 0.3, 0.5], 2, "calibrated", min_gap=2).tolist()
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
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= m:
        raise ValueError(f"n: expected an integer in [0, {m}] (the number of candidate frames), got {n!r}")
    if isinstance(min_gap, bool) or not isinstance(min_gap, (int, np.integer)) or min_gap < 0:
        raise ValueError(f"min_gap: expected a non-negative integer, got {min_gap!r}")
    if strategy == "random":
        order = np.random.default_rng(seed).permutation(m)
    else:
        if np.any(np.isnan(u)):
            raise ValueError(f"uncertainties: contains NaN (first at frame {int(np.argmax(np.isnan(u)))})")
        order = np.lexsort((np.arange(m), -u))  # descending u, earlier frame first on ties
    if min_gap <= 1 or n == 0:
        return order[:n].astype(np.int64)
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
    if reduce not in _REDUCE:
        raise ValueError(f"reduce: expected one of {list(_REDUCE)}, got {reduce!r}")
    _, inv = np.unique(ids, return_inverse=True)
    m = int(inv.max()) + 1 if inv.size else 0
    if reduce == "max":
        out = np.full(m, -np.inf)
        np.maximum.at(out, inv, w)
        return out
    return np.bincount(inv, weights=w, minlength=m) / np.bincount(inv, minlength=m)


def labels_to_reach(curves, target: float, column: str = "force_mae"):
    """Labels each strategy needed to bring ``column`` to ``target`` or below.

    Parameters
    ----------
    curves : pandas.DataFrame
        :attr:`ActiveLearningResult.curves` (columns ``strategy``, ``n_labels``, ``column``).
    target : float
        Target value (eV/Å for the force errors).

    Returns
    -------
    dict of str -> int or None
        Smallest ``n_labels`` on each strategy's curve with ``column <= target`` (None when
        the curve never gets there); the curve is not interpolated between rounds.
    """
    out: dict[str, int | None] = {}
    for strategy, part in curves.groupby("strategy", sort=False):
        part = part.sort_values("n_labels")
        hit = part[part[column] <= target]
        out[str(strategy)] = None if hit.empty else int(hit["n_labels"].iloc[0])
    return out


# ---------------------------------------------------------------------- result
@dataclass
class ActiveLearningResult:
    """What :func:`run_active_learning` returns.

    Attributes
    ----------
    curves : pandas.DataFrame
        One row per (strategy, round), columns :data:`CURVE_COLUMNS`.
    picked : dict of str -> list of list of ase.Atoms
        ``picked[strategy][r - 1]``: the labelled frames that strategy picked in round r
        (``info["REF_energy"]``, ``arrays["REF_forces"]``, ``info["al_uncertainty"]``,
        ``info["al_round"]``, ``info["al_strategy"]``).
    test_set : list of ase.Atoms
        The fixed, reference-labelled test set.
    model_paths : dict of str -> list of Path
        ``model_paths[strategy][r]``: the model after round r (index 0: the shared initial one).
    settings : dict
        The arguments of the run (JSON-serialisable).
    """

    curves: Any
    picked: dict[str, list[list[Any]]]
    test_set: list[Any]
    model_paths: dict[str, list[Path]]
    settings: dict[str, Any] = field(default_factory=dict)

    def labels_to_reach(self, target: float, column: str = "force_mae") -> dict[str, int | None]:
        """See :func:`labels_to_reach`."""
        return labels_to_reach(self.curves, target, column)


# ---------------------------------------------------------------------- the loop
def run_active_learning(
    initial_train: Sequence,
    pool_md_start,
    reference,
    *,
    strategies: Sequence[str] = STRATEGIES,
    n_rounds: int = 3,
    picks_per_round: int = 5,
    md_steps: int = 200,
    sample_every: int = 5,
    temperature_K: float = 300.0,
    timestep_fs: float = 0.5,
    friction_per_fs: float = 0.02,
    seed: int = 0,
    workdir="active_learning",
    test_set: Sequence | None = None,
    test_size: int = 20,
    calibrate_on="holdout",
    calibration_fraction: float = 0.3,
    calibrator: str | Callable[[], Any] = "flexible",
    calibrator_options: dict | None = None,
    heuristic: str | Callable[[], Any] = "knn",
    confidence: float = 0.9,
    reduce: str = "max",
    min_gap: int = 2,
    refit: str = "retrain",
    initial_model=None,
    train_kwargs: dict | None = None,
    train_fn: Callable[..., Any] | None = None,
    load_fn: Callable[[Any], Any] | None = None,
    max_force: float = 50.0,
    min_distance: float = 0.5,
    batch_size: int = 16,
    progress=None,
) -> ActiveLearningResult:
    """Compare frame-selection strategies for active learning in MD.

    Parameters
    ----------
    initial_train : sequence of ase.Atoms
        The starting labelled set (``info["REF_energy"]``, ``arrays["REF_forces"]``);
        unlabelled structures are labelled with ``reference`` first. With
        ``calibrate_on="holdout"`` a by-structure part of it becomes the calibration set.
    pool_md_start : ase.Atoms or sequence of ase.Atoms
        Start structure(s) of the exploration MD; every round runs ``md_steps`` steps from
        each of them.
    reference : str or ase Calculator
        Labeller: ``"gfn2-xtb"``, ``"gfn1-xtb"``, ``"emt"`` (``core.reference``) or any
        calculator. A frame it fails on is skipped and the next-ranked frame is taken.
    strategies : sequence of {"calibrated", "heuristic", "random"}
    n_rounds, picks_per_round : int
        Rounds of pick-label-refit, frames picked per round.
    md_steps, sample_every : int
        MD steps per start structure and round; every ``sample_every``-th frame is a candidate.
    temperature_K, timestep_fs, friction_per_fs : float
        Langevin thermostat settings (friction in 1/fs).
    seed : int
        Seeds the split, the MD (same stream per round for all strategies), random picks,
        calibrators and training.
    workdir : path
        Models, training logs, ``curves.csv`` and the picked frames
        (``picked_<strategy>_r<round>.xyz``) go here.
    test_set : sequence of ase.Atoms, optional
        Fixed labelled test set. None: ``test_size`` frames sampled from a Langevin MD run
        with the **reference** calculator from the start structure(s) at ``temperature_K``
        (the distribution the exploration should learn).
    calibrate_on : "holdout", "train" or sequence of ase.Atoms
        ``"holdout"``: a fixed ``calibration_fraction`` of ``initial_train`` (by structure,
        never trained on); ``"train"``: the current training set (cheap but optimistic:
        training errors are smaller than test errors, so widths under-cover); a sequence:
        that labelled set.
    calibrator : str or callable() -> Calibrator
        ``core.calibration.make_calibrator`` method name (``"flexible"`` = q_θ), or a
        factory returning a fresh unfitted calibrator. Its widths drive ``"calibrated"``
        and give the coverage / spearman columns for every strategy.
    calibrator_options : dict, optional
        Extra ``make_calibrator`` options (e.g. ``{"max_epochs": 200}``).
    heuristic : str or callable() -> Heuristic
        ``core.heuristics.make_heuristic`` name or a factory; fitted on the current
        training set's sites; its per-site scores drive ``"heuristic"``.
    confidence : float
        Calibration level of the widths.
    reduce : {"max", "mean"}
        Site -> frame aggregation of widths and scores.
    min_gap : int
        Minimum index distance between picked candidate frames (:func:`select_frames`).
    refit : {"retrain", "finetune"}
        Retrain from scratch on the enlarged set, or fine-tune the current model on it
        (``train_mace(..., foundation_model=current)``).
    initial_model : path or Potential, optional
        Use this model as round 0 instead of training one on the initial set.
    train_kwargs : dict, optional
        Passed to ``core.training.train_mace`` (e.g. ``max_num_epochs``, ``num_channels``).
    train_fn : callable(train, valid, workdir, *, name, seed, foundation_model, **train_kwargs) -> path, optional
        Replaces ``core.training.train_mace`` (tests, other fitting codes).
    load_fn : callable(path) -> Potential, optional
        Replaces ``core.potentials.load_potential``.
    max_force, min_distance : float
        The exploration MD stops early (``md_stopped_early``) when a predicted force
        exceeds ``max_force`` eV/Å, two atoms come closer than ``min_distance`` Å, or a
        value is not finite: a poor early model can blow a structure apart, and such
        frames are useless to the reference.
    batch_size : int
        Structures per forward pass when featurizing.
    progress : None, True or callable(done, total, message)
        Called after every stage (True prints to stderr).

    Returns
    -------
    ActiveLearningResult
        ``curves`` (pandas DataFrame, :data:`CURVE_COLUMNS`), ``picked`` frames per strategy
        and round, the test set and the model paths.
    """
    import pandas as pd
    from ase import Atoms

    # ------------------------------------------------------------ validate
    strategies = tuple(strategies)
    if not strategies:
        raise ValueError("strategies: need at least one of " f"{list(STRATEGIES)}")
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad or len(set(strategies)) != len(strategies):
        raise ValueError(f"strategies: expected distinct values from {list(STRATEGIES)}, got {list(strategies)}")
    for name, value, low in (
        ("n_rounds", n_rounds, 0),
        ("picks_per_round", picks_per_round, 1),
        ("md_steps", md_steps, 1),
        ("sample_every", sample_every, 1),
        ("test_size", test_size, 1),
        ("batch_size", batch_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    for name, value in (("temperature_K", temperature_K), ("timestep_fs", timestep_fs)):
        if not isinstance(value, (int, float, np.number)) or not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name}: expected a positive number, got {value!r}")
    if reduce not in _REDUCE:
        raise ValueError(f"reduce: expected one of {list(_REDUCE)}, got {reduce!r}")
    if refit not in _REFIT:
        raise ValueError(f"refit: expected one of {list(_REFIT)}, got {refit!r}")
    if isinstance(calibrate_on, str) and calibrate_on not in _CALIBRATE_ON:
        raise ValueError(f"calibrate_on: expected one of {list(_CALIBRATE_ON)} or a list of labelled Atoms, got {calibrate_on!r}")
    if not 0.0 < float(calibration_fraction) < 1.0:
        raise ValueError(f"calibration_fraction: expected a number in (0, 1), got {calibration_fraction!r}")
    if refit == "finetune" and initial_model is not None and not isinstance(initial_model, (str, Path)):
        raise ValueError(
            f"refit='finetune' needs initial_model as a .model path (fine-tuning starts from the file), "
            f"got a {type(initial_model).__name__}"
        )
    starts = [pool_md_start] if isinstance(pool_md_start, Atoms) else list(pool_md_start)
    if not starts or not all(isinstance(a, Atoms) for a in starts):
        raise TypeError(f"pool_md_start: expected an ase.Atoms or a non-empty list of them, got {type(pool_md_start).__name__}")
    initial_train = list(initial_train)
    if not initial_train or not all(isinstance(a, Atoms) for a in initial_train):
        raise TypeError("initial_train: expected a non-empty list of ase.Atoms")

    report = _as_progress(progress)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ref_calc = _resolve_reference(reference)
    train_kwargs = dict(train_kwargs or {})
    train_fn = train_fn or _default_train_fn
    load_fn = load_fn or _default_load_fn
    make_cal = _calibrator_factory(calibrator, confidence, seed, calibrator_options or {})
    make_heur = _heuristic_factory(heuristic) if "heuristic" in strategies else None

    n_stages = 2 + len(strategies) * n_rounds
    stage = [0]

    def tick(message: str) -> None:
        stage[0] += 1
        if report is not None:
            report(stage[0], n_stages, message)

    # ------------------------------------------------------------ data
    initial_train = _ensure_labelled(initial_train, ref_calc, "initial_train")
    if isinstance(calibrate_on, str) and calibrate_on == "holdout":
        if len(initial_train) < 3:
            raise ValueError(
                f"initial_train: calibrate_on='holdout' needs at least 3 structures (train + calibration), got {len(initial_train)}"
            )
        from core.sites import split_structure_ids

        tr_idx, cal_idx = split_structure_ids(np.arange(len(initial_train)), float(calibration_fraction), seed)
        train0 = [initial_train[i] for i in tr_idx]
        calibration = [initial_train[i] for i in cal_idx]
    elif isinstance(calibrate_on, str):  # "train"
        train0, calibration = list(initial_train), None
    else:
        train0 = list(initial_train)
        calibration = _ensure_labelled(list(calibrate_on), ref_calc, "calibrate_on")

    t0 = time.perf_counter()
    if test_set is None:
        test_set = _reference_md_frames(
            starts, ref_calc, test_size, max(1, md_steps // max(1, test_size // len(starts))),
            temperature_K, timestep_fs, friction_per_fs, seed + 7919,
        )
    else:
        test_set = _ensure_labelled(list(test_set), ref_calc, "test_set")
    tick(f"test set: {len(test_set)} reference-labelled frames")

    if initial_model is None:
        model0 = train_fn(train0, None, workdir / "initial", name="model_r0", seed=seed, foundation_model=None, **train_kwargs)
    else:
        model0 = initial_model
    state0 = _ModelState.build(model0, load_fn, train0, calibration, test_set, make_cal, None, batch_size)
    tick(f"initial model: {len(train0)} training frames")

    rows: list[dict] = []
    picked: dict[str, list[list[Atoms]]] = {}
    paths: dict[str, list] = {}
    for strategy in strategies:
        train = list(train0)
        state = state0
        if strategy == "heuristic":
            state = state0.with_heuristic(make_heur)
        rows.append(state.row(strategy, 0, len(train), {}, 0.0))
        picked[strategy] = []
        paths[strategy] = [model0]
        for r in range(1, n_rounds + 1):
            t_round = time.perf_counter()
            md_seed = seed * 1_000_003 + r  # the same stream for every strategy
            frames, stopped = _explore(
                state.potential, starts, md_steps, sample_every, temperature_K, timestep_fs,
                friction_per_fs, md_seed, max_force, min_distance,
            )
            u = state.frame_uncertainty(strategy, frames, reduce, batch_size)
            new, pick_info = _pick_and_label(
                frames, u, picks_per_round, strategy, seed + r, min_gap, ref_calc, state, batch_size
            )
            for a in new:
                a.info["al_round"] = r
                a.info["al_strategy"] = strategy
            picked[strategy].append(new)
            _write_frames(workdir / f"picked_{strategy}_r{r}.xyz", new)
            train = train + new
            model = train_fn(
                train, None, workdir / strategy, name=f"model_r{r}", seed=seed,
                foundation_model=(_model_path(state.model) if refit == "finetune" else None), **train_kwargs,
            )
            state = _ModelState.build(
                model, load_fn, train, calibration, test_set, make_cal,
                make_heur if strategy == "heuristic" else None, batch_size,
            )
            paths[strategy].append(model)
            info = dict(pick_info, n_candidates=len(frames), md_stopped_early=stopped)
            rows.append(state.row(strategy, r, len(train), info, time.perf_counter() - t_round))
            tick(f"{strategy}: round {r}/{n_rounds}, {len(train)} labels, force MAE {rows[-1]['force_mae']:.4f} eV/Å")

    curves = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    curves.to_csv(workdir / "curves.csv", index=False)
    settings = {
        "strategies": list(strategies), "n_rounds": n_rounds, "picks_per_round": picks_per_round,
        "md_steps": md_steps, "sample_every": sample_every, "temperature_K": float(temperature_K),
        "timestep_fs": float(timestep_fs), "friction_per_fs": float(friction_per_fs), "seed": seed,
        "calibrate_on": calibrate_on if isinstance(calibrate_on, str) else f"{len(calibration)} given structures",
        "calibrator": calibrator if isinstance(calibrator, str) else repr(calibrator),
        "heuristic": heuristic if isinstance(heuristic, str) else repr(heuristic),
        "confidence": float(confidence), "reduce": reduce, "min_gap": min_gap, "refit": refit,
        "n_initial_train": len(train0), "n_test": len(test_set), "train_kwargs": train_kwargs,
        "seconds": time.perf_counter() - t0,
    }
    return ActiveLearningResult(curves=curves, picked=picked, test_set=list(test_set), model_paths=paths, settings=settings)


# ---------------------------------------------------------------------- per-model state
@dataclass
class _ModelState:
    """A fitted model with its calibrator, heuristic and test-set evaluation."""

    model: Any
    potential: Any
    calibrator: Any
    heuristic: Any
    metrics: dict
    train_sites: Any = None

    @classmethod
    def build(cls, model, load_fn, train, calibration, test_set, make_cal, make_heur, batch_size):
        potential = model if callable(getattr(model, "compute", None)) else load_fn(model)
        # the training set's sites are the reference of knn/gmm normalisation (METHOD §2)
        train_sites = _sites(train, potential, batch_size, labelled=True)
        cal_sites = train_sites if calibration is None else _sites(calibration, potential, batch_size, labelled=True)
        calibrator = make_cal()
        calibrator.fit(cal_sites, reference=train_sites)
        test_sites = _sites(test_set, potential, batch_size, labelled=True)
        widths = np.asarray(calibrator.predict(test_sites), dtype=np.float64)
        state = cls(model, potential, calibrator, None, _evaluate(test_sites, widths), train_sites)
        state.metrics["n_calibration"] = len(train if calibration is None else calibration)
        if make_heur is not None:
            state = state.with_heuristic(make_heur)
        return state

    def with_heuristic(self, make_heur) -> "_ModelState":
        heuristic = make_heur()
        heuristic.fit(self.train_sites)
        return _ModelState(self.model, self.potential, self.calibrator, heuristic, self.metrics, self.train_sites)

    def frame_uncertainty(self, strategy, frames, reduce, batch_size) -> np.ndarray:
        if not frames:
            return np.zeros(0)
        if strategy == "random":
            return np.zeros(len(frames))
        sites = _sites(frames, self.potential, batch_size, labelled=False)
        if strategy == "calibrated":
            scores = self.calibrator.predict(sites)
        else:
            scores = self.heuristic.score(sites)
        return structure_uncertainty(scores, sites.structure_ids, reduce)

    def row(self, strategy, r, n_labels, pick_info, seconds) -> dict:
        row = {"strategy": strategy, "round": r, "n_labels": n_labels, "seconds": seconds,
               "n_candidates": 0, "md_stopped_early": False,
               "pick_force_mae": np.nan, "pick_error_max": np.nan, "pick_uncertainty_mean": np.nan}
        row.update(self.metrics)
        row.update(pick_info)
        return row


def _evaluate(test_sites: SiteTable, widths: np.ndarray) -> dict:
    from core import metrics

    diff = test_sites.forces_pred - test_sites.forces_ref
    e = test_sites.errors
    e_pred = test_sites.structure_info.get("energy_pred")
    e_ref = test_sites.structure_info.get("energy_ref")
    n_at = test_sites.structure_info["n_atoms"]
    energy_mae = float(np.mean(np.abs(e_pred - e_ref) / n_at)) if e_pred is not None and e_ref is not None else np.nan
    rho = metrics.spearman(e, widths)
    srho = metrics.structure_spearman(e, widths, test_sites.structure_ids)
    return {
        "force_mae": float(np.mean(np.abs(diff))),
        "force_rmse": float(np.sqrt(np.mean(diff**2))),
        "force_error_max": float(np.max(e)),
        "energy_mae_per_atom": energy_mae,
        "coverage": metrics.coverage(e, widths),
        "mean_width": metrics.mean_width(widths),
        "spearman": np.nan if rho is None else float(rho),
        "structure_spearman": np.nan if srho is None else float(srho),
    }


# ---------------------------------------------------------------------- helpers
def _sites(structures, potential, batch_size: int, *, labelled: bool) -> SiteTable:
    """``core.featurize.featurize`` without a cache: one forward pass per batch.

    Unlabelled MD candidates get errors 0 (calibrators and heuristics never read errors
    in predict/score).
    """
    from core.featurize import featurize

    return featurize(list(structures), potential, batch_size=batch_size, labelled=labelled)


def _explore(potential, starts, md_steps, sample_every, temperature_K, timestep_fs, friction_per_fs, seed,
             max_force, min_distance):
    """Langevin MD with ``potential`` from each start; returns (candidate frames, stopped_early)."""
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

    rng = np.random.default_rng(seed)
    frames: list = []
    stopped = False
    for start in starts:
        atoms = _bare(start)
        atoms.set_constraint(FixCom())
        thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
        Stationary(atoms)
        if not atoms.pbc.any():
            ZeroRotation(atoms)
        atoms.calc = potential.ase_calculator()
        dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K,
                       friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
        for step in range(1, md_steps + 1):
            dyn.run(1)
            forces = atoms.get_forces()
            if not _sane(atoms, forces, max_force, min_distance):
                stopped = True
                break
            if step % sample_every == 0:
                frames.append(_bare(atoms))
    return frames, stopped


def _sane(atoms, forces, max_force, min_distance) -> bool:
    if not np.all(np.isfinite(forces)) or not np.all(np.isfinite(atoms.positions)):
        return False
    if np.max(np.linalg.norm(forces, axis=1)) > max_force:
        return False
    if len(atoms) > 1:
        d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
        np.fill_diagonal(d, np.inf)
        if d.min() < min_distance:
            return False
    return True


def _reference_md_frames(starts, ref_calc, n_frames, interval, temperature_K, timestep_fs, friction_per_fs, seed):
    """``n_frames`` frames from Langevin MD driven by the reference itself, labelled on the way."""
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

    rng = np.random.default_rng(seed)
    per_start = [n_frames // len(starts) + (1 if k < n_frames % len(starts) else 0) for k in range(len(starts))]
    frames = []
    for start, n in zip(starts, per_start):
        atoms = _bare(start)
        atoms.set_constraint(FixCom())
        thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
        Stationary(atoms)
        if not atoms.pbc.any():
            ZeroRotation(atoms)
        atoms.calc = ref_calc
        dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K,
                       friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
        for _ in range(n):
            dyn.run(interval)
            a = _bare(atoms)
            a.info["REF_energy"] = float(atoms.get_potential_energy())
            a.arrays["REF_forces"] = np.array(atoms.get_forces(apply_constraint=False), dtype=np.float64)
            a.info["config_type"] = "al_test"
            frames.append(a)
    return frames


def _pick_and_label(frames, u, n, strategy, seed, min_gap, ref_calc, state, batch_size):
    """Pick frames in strategy order, label them; skip frames the reference fails on."""
    if not frames:
        return [], {"pick_force_mae": np.nan, "pick_error_max": np.nan, "pick_uncertainty_mean": np.nan}
    order = select_frames(u, len(frames), strategy, seed, min_gap=min_gap)
    new, used = [], []
    for i in order:
        if len(new) == n:
            break
        a = _label_one(frames[int(i)], ref_calc)
        if a is None:
            continue
        a.info["al_uncertainty"] = float(u[int(i)])
        new.append(a)
        used.append(int(i))
    if not new:
        return [], {"pick_force_mae": np.nan, "pick_error_max": np.nan, "pick_uncertainty_mean": np.nan}
    sites = _sites(new, state.potential, batch_size, labelled=True)
    diff = sites.forces_pred - sites.forces_ref
    return new, {
        "pick_force_mae": float(np.mean(np.abs(diff))),
        "pick_error_max": float(np.max(sites.errors)),
        "pick_uncertainty_mean": float(np.mean(u[used])) if strategy != "random" else np.nan,
    }


def _label_one(atoms, ref_calc):
    a = _bare(atoms)
    a.calc = ref_calc
    try:
        energy = float(a.get_potential_energy())
        forces = np.array(a.get_forces(), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - any reference failure (SCF not converged, ...) skips the frame
        print(f"active learning: reference failed on a candidate frame ({type(exc).__name__}: {exc}); skipped",
              file=sys.stderr)
        return None
    if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
        return None
    a.calc = None
    a.info["REF_energy"] = energy
    a.arrays["REF_forces"] = forces
    return a


def _ensure_labelled(structures, ref_calc, what):
    out = []
    for i, a in enumerate(structures):
        if "REF_forces" in a.arrays and "REF_energy" in a.info:
            out.append(a)
            continue
        labelled = _label_one(a, ref_calc)
        if labelled is None:
            raise ValueError(f"{what}[{i}]: unlabelled and the reference calculator failed on it")
        out.append(labelled)
    return out


def _bare(atoms):
    """Positions, numbers, cell and pbc only: no calculator, constraints or velocities."""
    from ase import Atoms

    a = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    for key in ("config_type",):
        if key in atoms.info:
            a.info[key] = atoms.info[key]
    return a


def _write_frames(path: Path, frames) -> None:
    from ase.io import write

    if frames:
        write(path, frames, format="extxyz")


def _model_path(model):
    if isinstance(model, (str, Path)):
        return Path(model)
    raise ValueError("refit='finetune' needs model paths (initial_model given as a Potential object cannot be fine-tuned)")


def _resolve_reference(reference):
    from ase.calculators.calculator import BaseCalculator

    if isinstance(reference, str):
        from core.reference import reference_calculator

        return reference_calculator(reference)
    if isinstance(reference, BaseCalculator):
        return reference
    raise TypeError(f"reference: expected a name ('gfn2-xtb', 'gfn1-xtb', 'emt') or an ASE calculator, got {type(reference).__name__}")


def _calibrator_factory(calibrator, confidence, seed, options):
    if isinstance(calibrator, str):
        from core.calibration import make_calibrator

        make_calibrator(calibrator, confidence=confidence, seed=seed, **options)  # fail early on a bad name

        return lambda: make_calibrator(calibrator, confidence=confidence, seed=seed, **options)
    if callable(calibrator) and not hasattr(calibrator, "predict"):
        return calibrator
    raise TypeError(
        "calibrator: expected a make_calibrator method name or a callable returning a fresh calibrator, "
        f"got {type(calibrator).__name__}"
    )


def _heuristic_factory(heuristic):
    if isinstance(heuristic, str):
        from core.heuristics import make_heuristic

        make_heuristic(heuristic)  # fail early on a bad name
        return lambda: make_heuristic(heuristic)
    if callable(heuristic) and not hasattr(heuristic, "score"):
        return heuristic
    raise TypeError(
        f"heuristic: expected a make_heuristic name or a callable returning a fresh heuristic, got {type(heuristic).__name__}"
    )


def _default_train_fn(train, valid, workdir, *, name, seed, foundation_model=None, **kwargs):
    from core.training import train_mace

    return train_mace(train, valid, workdir, name=name, seed=seed, foundation_model=foundation_model, **kwargs)


def _default_load_fn(path):
    from core.potentials import load_potential

    return load_potential(path)


def _as_progress(progress):
    if progress is None or progress is False:
        return None
    if progress is True:
        def _print(done: int, total: int, message: str) -> None:
            print(f"active learning [{done}/{total}] {message}", file=sys.stderr, flush=True)

        return _print
    if callable(progress):
        return progress
    raise TypeError(f"progress: expected None, True or a callable(done, total, message), got {progress!r}")
