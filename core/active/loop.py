"""The active-learning loop (METHOD §5.4): explore, score, pick, label, refit, recalibrate, evaluate.

One loop per selection strategy, all starting from the same labelled set and the same
initial model. Each round of a strategy:

1. runs Langevin MD with the current potential from the start structure(s)
   (:func:`core.active.md.explore`) and keeps every ``sample_every``-th frame as a candidate;
2. scores every candidate frame (:mod:`core.active.selection`) and picks
   ``picks_per_round`` of them, labelling each with the reference through
   :mod:`core.reference` (a frame the reference fails on is skipped);
3. with ``update_calibrator``: updates a copy of the current model's calibrator with the
   picks' sites (``calibrator.update(new_sites)``: labelled frames of the explored region
   that this model never trained on) and records the test coverage before and after;
4. refits the potential on the enlarged set (retrain or fine-tune), refits the calibrator
   on the calibration set and evaluates on the fixed test set (:class:`ModelState`).

Everything is seeded: the MD of round r uses the same random stream for every strategy, so
strategies differ only through their models and their picks. Cost at demo size is
dominated by the refits; MD, featurization and calibration take seconds.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.active.config import ActiveLearningConfig
from core.active.md import explore, reference_md_frames
from core.active.result import CURVE_COLUMNS, ActiveLearningResult
from core.active.selection import select_frames
from core.active.state import ModelState, check_updatable, featurize_frames, pick_metrics
from core.progress import as_progress
from core.reference import LabellingError, label_structure, label_structures, resolve_reference

__all__ = ["run_active_learning"]


def run_active_learning(
    initial_train: Sequence,
    pool_md_start,
    reference,
    config: ActiveLearningConfig | None = None,
    *,
    test_set: Sequence | None = None,
    calibration_set: Sequence | None = None,
    initial_model=None,
    workdir="active_learning",
    train_fn: Callable[..., Any] | None = None,
    load_fn: Callable[[Any], Any] | None = None,
    progress=None,
    **settings,
) -> ActiveLearningResult:
    """Compare frame-selection strategies for active learning in MD.

    Parameters
    ----------
    initial_train : sequence of ase.Atoms
        The starting labelled set (``info["REF_energy"]``, ``arrays["REF_forces"]``);
        unlabelled structures are labelled with ``reference`` first. With
        ``config.calibrate_on="holdout"`` a by-structure part of it becomes the calibration set.
    pool_md_start : ase.Atoms or sequence of ase.Atoms
        Start structure(s) of the exploration MD; every round runs ``md_steps`` steps from each.
    reference : str or ase Calculator
        Labeller: ``"gfn2-xtb"``, ``"gfn1-xtb"``, ``"emt"`` (:mod:`core.reference`) or any calculator.
    config : ActiveLearningConfig, optional
        The loop's settings (defaults: ``ActiveLearningConfig()``).
    test_set : sequence of ase.Atoms, optional
        Fixed labelled test set (unlabelled frames are labelled). None: ``config.test_size``
        frames of Langevin MD driven by the **reference** from the start structure(s) at
        ``temperature_K`` (the distribution the exploration should learn).
    calibration_set : sequence of ase.Atoms, optional
        Labelled calibration frames (never trained on); replaces ``config.calibrate_on``.
    initial_model : path or Potential, optional
        Round 0's model instead of one trained on the initial set.
    workdir : path
        Models, training logs, ``curves.csv`` and the picked frames (``picked_<strategy>_r<round>.xyz``).
    train_fn : callable(train, valid, workdir, *, name, seed, foundation_model, **train_kwargs) -> path, optional
        Replaces ``core.training.train_mace`` (tests, other fitting codes).
    load_fn : callable(path) -> Potential, optional
        Replaces ``core.potentials.load_potential``.
    progress : None, True or callable(done, total)
        Called after every stage (test set, initial model, each strategy's round); True
        prints ``active learning: stage <done>/<total>`` to stderr (:mod:`core.progress`).
    **settings
        Any :class:`ActiveLearningConfig` field (``n_rounds=2``, ...), applied on top of
        ``config``: the keyword form of earlier versions. ``calibrate_on=<list of Atoms>``
        is taken as ``calibration_set``.

    Returns
    -------
    ActiveLearningResult
        ``curves`` (pandas DataFrame, :data:`CURVE_COLUMNS`), ``picked`` frames per strategy
        and round, the test set, the model paths and the settings.
    """
    config, calibration_set = _resolve_config(config, settings, calibration_set)
    starts = _check_structures("pool_md_start", pool_md_start, single_ok=True)
    initial_train = _check_structures("initial_train", initial_train)
    _check_initial_model(initial_model, config)
    run = _Run(config=config, starts=starts, reference=resolve_reference(reference), workdir=Path(workdir),
               train_fn=train_fn or _train_mace, load_fn=load_fn or _load_potential,
               report=as_progress(progress, "active learning: stage"))
    run.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train0 = run.split(initial_train, calibration_set)
    run.prepare_test_set(test_set)
    state0 = run.initial_state(initial_model, train0)
    result = run.all_strategies(state0, train0)
    if calibration_set is not None:
        result.settings["calibrate_on"] = f"{len(run.calibration)} given structures"
    result.settings["seconds"] = time.perf_counter() - t0
    return result


# ---------------------------------------------------------------------- one run
@dataclass
class _Run:
    """The shared context of one call: settings, data, labeller and the injected functions."""

    config: ActiveLearningConfig
    starts: list
    reference: Any  # ASE calculator
    workdir: Path
    train_fn: Callable[..., Any]
    load_fn: Callable[[Any], Any]
    report: Callable[[int, int], object] | None
    calibration: list | None = None
    test: list | None = None
    stage: int = 0

    def tick(self) -> None:
        self.stage += 1
        if self.report is not None:
            self.report(self.stage, 2 + len(self.config.strategies) * self.config.n_rounds)

    def labelled(self, structures, what: str) -> list:
        """``structures`` with missing labels computed by the reference (ValueError naming the frame)."""
        try:
            return label_structures(structures, self.reference, missing_only=True)
        except LabellingError as exc:
            raise ValueError(f"{what}[{exc.index}]: unlabelled and the reference calculator failed on it ({exc})") from exc

    def split(self, initial_train: list, calibration_set) -> list:
        """Label the initial set; set ``self.calibration``; return the training part."""
        config = self.config
        initial_train = self.labelled(initial_train, "initial_train")
        if calibration_set is not None:
            self.calibration = self.labelled(list(calibration_set), "calibration_set")
            return initial_train
        if config.calibrate_on == "train":
            return initial_train
        if len(initial_train) < 3:
            raise ValueError("initial_train: calibrate_on='holdout' needs at least 3 structures (train + calibration), "
                             f"got {len(initial_train)}")
        from core.sites import split_structure_ids

        tr_idx, cal_idx = split_structure_ids(np.arange(len(initial_train)), config.calibration_fraction, config.seed)
        self.calibration = [initial_train[i] for i in cal_idx]
        return [initial_train[i] for i in tr_idx]

    def prepare_test_set(self, test_set) -> None:
        config = self.config
        if test_set is None:
            per_start = max(1, config.test_size // len(self.starts))
            interval = max(1, config.md_steps // per_start)
            self.test = reference_md_frames(self.starts, self.reference, config.test_size, interval, config,
                                            config.seed + 7919)
        else:
            self.test = self.labelled(list(test_set), "test_set")
        self.tick()

    def build(self, model, train: list, heuristic: bool) -> ModelState:
        state = ModelState.build(model, train, self.calibration, self.test, self.config, self.load_fn)
        return state.with_heuristic(self.config) if heuristic else state

    def initial_state(self, initial_model, train0: list) -> ModelState:
        config = self.config
        model0 = initial_model
        if model0 is None:
            model0 = self.train_fn(train0, None, self.workdir / "initial", name="model_r0", seed=config.seed,
                                   foundation_model=None, **config.train_kwargs)
        state0 = self.build(model0, train0, heuristic=False)
        if config.update_calibrator and config.n_rounds > 0:
            check_updatable(state0.calibrator)
        self.tick()
        return state0

    def all_strategies(self, state0: ModelState, train0: list) -> ActiveLearningResult:
        """Every strategy's loop from the shared initial state; ``curves.csv`` written to the workdir."""
        import pandas as pd

        rows: list[dict] = []
        picked: dict[str, list[list[Any]]] = {}
        paths: dict[str, list] = {}
        for strategy in self.config.strategies:
            strategy_rows, picked[strategy], paths[strategy] = self.strategy(strategy, state0, train0)
            rows += strategy_rows
        curves = pd.DataFrame(rows, columns=CURVE_COLUMNS)
        curves.to_csv(self.workdir / "curves.csv", index=False)
        settings = dict(self.config.to_dict(), n_initial_train=len(train0), n_test=len(self.test))
        return ActiveLearningResult(curves=curves, picked=picked, test_set=list(self.test), model_paths=paths,
                                    settings=settings)

    def strategy(self, strategy: str, state0: ModelState, train0: list):
        """(curve rows, picked frames per round, model per round) of one strategy."""
        state = state0.with_heuristic(self.config) if strategy == "heuristic" else state0
        train = list(train0)
        rows = [state.row(strategy, 0, len(train), {}, 0.0)]
        picked: list[list[Any]] = []
        paths = [state0.model]
        for r in range(1, self.config.n_rounds + 1):
            state, new, row = self.round(strategy, r, state, train)
            train += new
            rows.append(row)
            picked.append(new)
            paths.append(state.model)
            self.tick()
        return rows, picked, paths

    def round(self, strategy: str, r: int, state: ModelState, train: list):
        """One round: explore, pick and label, update the calibrator copy, refit, evaluate."""
        config = self.config
        t_round = time.perf_counter()
        frames, stopped = explore(state.potential, self.starts, config, seed=config.seed * 1_000_003 + r)
        u = state.frame_uncertainty(strategy, frames, config)
        new, used = self.pick_and_label(frames, u, strategy, config.seed + r)
        pick_sites = featurize_frames(new, state.potential, config.batch_size, labelled=True) if new else None
        info = pick_metrics(pick_sites, u[used], strategy)
        if config.update_calibrator:
            info.update(state.recalibrated(pick_sites))
        info.update(n_candidates=len(frames), md_stopped_early=stopped)
        for a in new:
            a.info["al_round"] = r
            a.info["al_strategy"] = strategy
        _write_frames(self.workdir / f"picked_{strategy}_r{r}.xyz", new)
        model = self.train_fn(
            train + new, None, self.workdir / strategy, name=f"model_r{r}", seed=config.seed,
            foundation_model=(_model_path(state.model) if config.refit == "finetune" else None),
            **config.train_kwargs,
        )
        new_state = self.build(model, train + new, heuristic=strategy == "heuristic")
        row = new_state.row(strategy, r, len(train) + len(new), info, time.perf_counter() - t_round)
        return new_state, new, row

    def pick_and_label(self, frames: list, u: np.ndarray, strategy: str, seed: int):
        """Label frames in the strategy's order until ``picks_per_round`` succeed; (frames, their indices)."""
        if not frames:
            return [], []
        order = select_frames(u, len(frames), strategy, seed, min_gap=self.config.min_gap)
        new, used = [], []
        for i in (int(k) for k in order):
            if len(new) == self.config.picks_per_round:
                break
            try:
                a = label_structure(frames[i], self.reference, index=i)
            except LabellingError as exc:  # SCF not converged, ...: take the next-ranked frame
                warnings.warn(f"active learning: candidate frame skipped: {exc}", RuntimeWarning, stacklevel=2)
                continue
            a.info["al_uncertainty"] = float(u[i])
            new.append(a)
            used.append(i)
        return new, used


# ---------------------------------------------------------------------- argument handling
def _resolve_config(config, settings: dict, calibration_set):
    """(config, calibration_set) from the config object and keyword settings."""
    if config is None:
        config = ActiveLearningConfig()
    elif not isinstance(config, ActiveLearningConfig):
        raise TypeError(f"config: expected an ActiveLearningConfig or None, got {type(config).__name__}")
    settings = dict(settings)
    if "calibrate_on" in settings and not isinstance(settings["calibrate_on"], str):
        if calibration_set is not None:
            raise ValueError("calibrate_on: labelled frames given both as calibrate_on and as calibration_set")
        calibration_set = settings.pop("calibrate_on")
    unknown = sorted(set(settings) - set(ActiveLearningConfig.field_names()))
    if unknown:
        raise TypeError(f"run_active_learning: unknown keyword argument(s) {unknown}; settings are the fields of "
                        f"ActiveLearningConfig: {', '.join(ActiveLearningConfig.field_names())}")
    return (config.replace(**settings) if settings else config), calibration_set


def _check_structures(name: str, value, *, single_ok: bool = False) -> list:
    from ase import Atoms

    items = [value] if single_ok and isinstance(value, Atoms) else value
    try:
        items = list(items)
    except TypeError:
        items = []
    if isinstance(value, (str, bytes)) or not items or not all(isinstance(a, Atoms) for a in items):
        what = "an ase.Atoms or a non-empty list of them" if single_ok else "a non-empty list of ase.Atoms"
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__}")
    return items


def _check_initial_model(initial_model, config: ActiveLearningConfig) -> None:
    if config.refit == "finetune" and initial_model is not None and not isinstance(initial_model, (str, Path)):
        raise ValueError(
            "initial_model: refit='finetune' needs a .model path (fine-tuning starts from the file), "
            f"got a {type(initial_model).__name__}"
        )


def _model_path(model) -> Path:
    if isinstance(model, (str, Path)):
        return Path(model)
    raise ValueError("refit: 'finetune' needs model paths; the training function returned a "
                     f"{type(model).__name__}, which cannot be fine-tuned")


def _write_frames(path: Path, frames) -> None:
    from ase.io import write

    if frames:
        write(path, frames, format="extxyz")


def _train_mace(train, valid, workdir, **kwargs):
    from core.training import train_mace

    return train_mace(train, valid, workdir, **kwargs)


def _load_potential(model):
    from core.potentials import load_potential

    return load_potential(model)
