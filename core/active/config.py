"""The settings of one active-learning run, validated once at construction.

:class:`ActiveLearningConfig` holds everything that is a *setting* of the loop (numbers of
rounds and picks, MD, strategies, calibrator, refit mode, confidence, seed). The *data* (the
labelled sets, the start structures, the reference, an initial model) and the injectable
functions (``train_fn``, ``load_fn``) are arguments of :func:`core.active.run_active_learning`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from dataclasses import replace as _replace
from typing import Any

from core.active.selection import REDUCE, STRATEGIES
from core.validation import check_bool, check_choice, check_confidence, check_float, check_fraction, check_int, check_seed

__all__ = ["ActiveLearningConfig", "CALIBRATE_ON", "REFIT"]

#: Where the calibrator is fitted: a held-out part of the initial set, or the training set.
CALIBRATE_ON = ("holdout", "train")
#: How the potential is refitted after each round.
REFIT = ("retrain", "finetune")

_INTS = (  # name, minimum
    ("n_rounds", 0), ("picks_per_round", 1), ("md_steps", 1), ("sample_every", 1),
    ("test_size", 1), ("batch_size", 1), ("min_gap", 0),
)
_POSITIVE = ("temperature_K", "timestep_fs", "friction_per_fs", "max_force")


@dataclass(frozen=True, kw_only=True)
class ActiveLearningConfig:
    """Settings of :func:`core.active.run_active_learning` (keyword-only, immutable).

    Every field is checked in ``__post_init__``; a bad value raises ``ValueError`` or
    ``TypeError`` whose message starts with the field name and shows the value, e.g.
    ``"n_rounds: expected an integer >= 0, got -1"``. ``config.replace(**changes)`` returns
    a validated copy with some fields changed.

    Attributes
    ----------
    strategies : tuple of {"calibrated", "heuristic", "random"}
        Selection strategies to compare (distinct), one loop each.
    n_rounds, picks_per_round : int
        Rounds of pick-label-refit (>= 0), frames picked per round (>= 1).
    md_steps, sample_every : int
        Exploration MD steps per start structure and round; every ``sample_every``-th
        frame is a candidate.
    temperature_K, timestep_fs, friction_per_fs : float
        Langevin thermostat: temperature (K), time step (fs), friction (1/fs).
    max_force, min_distance : float
        The exploration MD stops early when a predicted force exceeds ``max_force`` eV/Å,
        two atoms come closer than ``min_distance`` Å, or a value is not finite.
    test_size : int
        Frames of reference MD sampled as the test set when none is given.
    calibrate_on : {"holdout", "train"}
        ``"holdout"``: a fixed ``calibration_fraction`` of the initial set (by structure,
        never trained on); ``"train"``: the current training set (cheap but optimistic:
        training errors are smaller than test errors, so widths under-cover). Labelled
        calibration frames of your own go to ``run_active_learning(calibration_set=...)``.
    calibration_fraction : float in (0, 1)
    calibrator : str, Calibrator or callable() -> Calibrator
        A ``core.calibration.make_calibrator`` method name (``"flexible"`` = q_θ), an
        unfitted calibrator (copied for every model) or a factory of fresh ones. Its
        widths drive ``"calibrated"`` and give the coverage columns of every strategy.
    calibrator_options : dict
        Extra ``make_calibrator`` options (e.g. ``{"max_epochs": 200}``), with a name only.
    heuristic : str, Heuristic or callable() -> Heuristic
        ``core.heuristics.make_heuristic`` name, an unfitted heuristic (copied) or a
        factory; fitted on the current training set's sites; drives ``"heuristic"``.
    confidence : float in (0, 1)
        Calibration level of the widths.
    reduce : {"max", "mean"}
        Site -> frame aggregation of widths and scores.
    min_gap : int
        Minimum index distance between picked candidate frames.
    refit : {"retrain", "finetune"}
        Retrain from scratch on the enlarged set, or fine-tune the current model on it.
    update_calibrator : bool
        After each round's picks are labelled, call ``update()`` on a copy of the current
        model's calibrator with the picks' sites and record the test coverage before and
        after (``coverage_before_update`` / ``coverage_after_update``).
    train_kwargs : dict
        Passed to the training function (``core.training.train_mace``: ``max_num_epochs``,
        ``num_channels``, ...).
    batch_size : int
        Structures per forward pass when featurizing.
    seed : int
        Seeds the split, the MD (the same stream per round for all strategies), random
        picks, calibrators and training.
    """

    strategies: tuple[str, ...] = STRATEGIES
    n_rounds: int = 3
    picks_per_round: int = 5
    md_steps: int = 200
    sample_every: int = 5
    temperature_K: float = 300.0
    timestep_fs: float = 0.5
    friction_per_fs: float = 0.02
    max_force: float = 50.0
    min_distance: float = 0.5
    test_size: int = 20
    calibrate_on: str = "holdout"
    calibration_fraction: float = 0.3
    calibrator: Any = "flexible"
    calibrator_options: Mapping[str, Any] = field(default_factory=dict)
    heuristic: Any = "knn"
    confidence: float = 0.9
    reduce: str = "max"
    min_gap: int = 2
    refit: str = "retrain"
    update_calibrator: bool = True
    train_kwargs: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("strategies", _check_strategies(self.strategies))
        for name, low in _INTS:
            put(name, check_int(name, getattr(self, name), low))
        for name in _POSITIVE:
            put(name, check_float(name, getattr(self, name), 0.0, math.inf, lo_open=True, hi_open=True))
        put("min_distance", check_float("min_distance", self.min_distance, 0.0, math.inf, hi_open=True))
        put("seed", check_seed(self.seed))
        put("confidence", check_confidence(self.confidence))
        put("calibration_fraction", check_fraction("calibration_fraction", self.calibration_fraction))
        if not isinstance(self.calibrate_on, str):
            raise ValueError(f"calibrate_on: expected one of {', '.join(CALIBRATE_ON)}, got a "
                             f"{type(self.calibrate_on).__name__} (labelled calibration frames go to "
                             "run_active_learning(calibration_set=...))")
        check_choice("calibrate_on", self.calibrate_on, CALIBRATE_ON)
        check_choice("reduce", self.reduce, REDUCE)
        check_choice("refit", self.refit, REFIT)
        put("update_calibrator", check_bool("update_calibrator", self.update_calibrator))
        put("calibrator_options", _check_dict("calibrator_options", self.calibrator_options))
        put("train_kwargs", _check_dict("train_kwargs", self.train_kwargs))
        if self.calibrator_options and not isinstance(self.calibrator, str):
            raise ValueError(f"calibrator_options: only used with a method name as calibrator, got "
                             f"{sorted(self.calibrator_options)} with a {type(self.calibrator).__name__}")
        # fail now on a bad name, option or object, not after the first refit
        if isinstance(self.calibrator, str):
            _check_method(self.calibrator, self.confidence, self.seed, self.calibrator_options)
        else:
            _check_spec("calibrator", self.calibrator, "predict", _CALIBRATOR_KINDS)
        if isinstance(self.heuristic, str):
            self.make_heuristic()
        else:
            _check_spec("heuristic", self.heuristic, "score", _HEURISTIC_KINDS)

    # ------------------------------------------------------------------ factories
    def make_calibrator(self):
        """A fresh, unfitted calibrator at :attr:`confidence` (seeded with :attr:`seed`)."""
        spec = self.calibrator
        if isinstance(spec, str):
            from core.calibration import make_calibrator

            return make_calibrator(spec, confidence=self.confidence, seed=self.seed, **self.calibrator_options)
        return _fresh("calibrator", spec, "predict")

    def make_heuristic(self):
        """A fresh, unfitted heuristic (drives the ``"heuristic"`` strategy)."""
        spec = self.heuristic
        if isinstance(spec, str):
            from core.heuristics import make_heuristic

            return make_heuristic(spec)
        return _fresh("heuristic", spec, "score")

    # ------------------------------------------------------------------ copies and JSON
    def replace(self, **changes) -> "ActiveLearningConfig":
        """A validated copy with ``changes`` applied; unknown names raise ``TypeError`` listing the fields."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise TypeError(f"ActiveLearningConfig: unknown setting(s) {unknown}; valid settings: "
                            f"{', '.join(self.field_names())}")
        return _replace(self, **changes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The setting names, in declaration order."""
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings (a calibrator/heuristic object or factory as its ``repr``)."""
        out = {name: getattr(self, name) for name in self.field_names()}
        out["strategies"] = list(self.strategies)
        out["calibrator_options"] = dict(self.calibrator_options)
        out["train_kwargs"] = dict(self.train_kwargs)
        for name in ("calibrator", "heuristic"):
            if not isinstance(out[name], str):
                out[name] = repr(getattr(self, name))
        return out


def _check_strategies(strategies) -> tuple[str, ...]:
    if isinstance(strategies, str):
        strategies = (strategies,)
    try:
        values = tuple(strategies)
    except TypeError:
        raise TypeError(f"strategies: expected a sequence of names from {list(STRATEGIES)}, got {strategies!r}") from None
    if not values:
        raise ValueError(f"strategies: need at least one of {list(STRATEGIES)}, got {list(values)}")
    if any(s not in STRATEGIES for s in values) or len(set(values)) != len(values):
        raise ValueError(f"strategies: expected distinct values from {list(STRATEGIES)}, got {list(values)}")
    return values


def _check_dict(name: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name}: expected a dict, got {type(value).__name__}")
    return dict(value)


def _check_method(method: str, confidence: float, seed: int, options: dict) -> None:
    """Build the calibrator once, so a bad name or option fails now and names the field."""
    from core.calibration import make_calibrator

    try:
        make_calibrator(method, confidence=confidence, seed=seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"calibrator: {exc}") from None
    try:
        make_calibrator(method, confidence=confidence, seed=seed, **options)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"calibrator_options: {exc} (got {options!r})") from None


_CALIBRATOR_KINDS = "a make_calibrator method name, an unfitted Calibrator or a callable returning a fresh one"
_HEURISTIC_KINDS = "a make_heuristic name, an unfitted Heuristic or a callable returning a fresh one"


def _check_spec(name: str, spec, method: str, kinds: str) -> None:
    if not (hasattr(spec, method) or callable(spec)):
        raise TypeError(f"{name}: expected {kinds}, got {type(spec).__name__}")


def _fresh(name: str, spec, method: str):
    """A fresh strategy object from an instance (deep copy: never share fitted state) or a factory."""
    if hasattr(spec, method) and not isinstance(spec, type):  # an instance; a class is a factory
        return copy.deepcopy(spec)
    made = spec()
    if not hasattr(made, method):
        raise TypeError(f"{name}: the factory returned a {type(made).__name__}, which has no {method}()")
    return made
