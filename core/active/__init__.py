"""Active learning in molecular dynamics (METHOD §5.4).

Which MD frames should the reference method label? One loop per selection strategy
(calibrated widths, an uncalibrated heuristic, random), all from the same labelled set and
initial model; the result is a learning-curve table (one row per strategy and round).

Modules, one concept each:

* :mod:`core.active.config` — :class:`ActiveLearningConfig`, the loop's settings;
* :mod:`core.active.selection` — per-frame scores of the strategies and the pick rule;
* :mod:`core.active.md` — exploration MD, its sanity checks, reference-MD test frames;
* :mod:`core.active.state` — one model: potential, fitted calibrator, test metrics;
* :mod:`core.active.loop` — :func:`run_active_learning`;
* :mod:`core.active.result` — :class:`ActiveLearningResult`, :data:`CURVE_COLUMNS`.

Labelling goes through :mod:`core.reference`. Example::

    from core.active import ActiveLearningConfig, run_active_learning
    config = ActiveLearningConfig(n_rounds=3, picks_per_round=5, temperature_K=600.0)
    result = run_active_learning(train_frames, start, "gfn2-xtb", config, test_set=test_frames)
    result.curves          # pandas DataFrame, CURVE_COLUMNS
"""

from core.active.config import ActiveLearningConfig
from core.active.loop import run_active_learning
from core.active.result import CURVE_COLUMNS, ActiveLearningResult, labels_to_reach
from core.active.selection import STRATEGIES, select_frames, structure_uncertainty

__all__ = [
    "STRATEGIES",
    "CURVE_COLUMNS",
    "ActiveLearningConfig",
    "ActiveLearningResult",
    "select_frames",
    "structure_uncertainty",
    "labels_to_reach",
    "run_active_learning",
]
