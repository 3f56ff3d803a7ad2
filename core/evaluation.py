"""The one evaluation engine: fit calibrators on calibration sites, score them on test sites.

Studies, the CLI (``flexcal run`` / ``evaluate``), the app's training job, active learning,
notebooks and benchmarks all call :func:`evaluate` (fit and score) or :func:`score` (score
calibrators that are already fitted), and read the returned :class:`Evaluation`:

* ``calibrators[label]``: the fitted calibrator of each method variant;
* ``widths[label, split]`` (n,) and ``widths_at_levels[label, split]`` (n, k) in eV/Å at
  ``levels`` (None where a method gives no levels);
* ``reference_widths[split]``: global split CP **fitted on the calibration sites** (the one
  definition of ``width_ratio``: mean width / mean width of that split CP on the same test
  sites);
* ``ood[split]``: per-site out-of-domain flags (:mod:`core.domain`, fitted on the calibration
  sites) that every report summarises as ``ood_fraction`` and in/out-of-domain coverage;
* ``reports[label, split]``: :func:`core.metrics.calibration_report`, including the coverage
  spread expected for the number of calibration structures;
* ``table()`` (one row per variant × split) and ``to_json()``.

A method variant is a registry name (``"knn"``) or a :class:`Variant` with its own label and
options (``Variant("flexible (shift)", "flexible", {"weights": "shift"})``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.progress import report
from core.sites import SiteTable
from core.validation import check_confidence, check_int, check_levels, check_seed

__all__ = ["Variant", "Evaluation", "evaluate", "score", "conformal_calibration_size", "resolve_variants",
           "ID_COLUMNS", "jsonable", "EvaluationCancelled"]

ID_COLUMNS = ["study", "dataset", "split", "method", "label", "n_cal_structures", "n_cal_sites", "fit_seconds"]
INFINITE_NOTE = ("some widths are infinite: the (weighted) conformal quantile's rank exceeds the calibration "
                 "sites at this confidence (too few of them)")


#: Keyword hooks of :func:`evaluate`.
HOOKS = ("log", "epoch_callback", "should_stop")


class EvaluationCancelled(RuntimeError):
    """Raised by :func:`evaluate` when ``should_stop()`` returned True between two methods."""


@dataclass(frozen=True)
class Variant:
    """One calibrator to evaluate: a display ``label``, a registry ``method`` and its options."""

    label: str
    method: str
    options: Mapping[str, Any] = field(default_factory=dict)


def resolve_variants(methods, sites: SiteTable, method_options: Mapping[str, Mapping] | None = None,
                     label_suffix: str = "") -> list[Variant]:
    """Method names / Variants -> Variants, validated against the registry and ``sites``.

    ``methods=None`` means the registry's defaults that ``sites`` support; a string is a
    comma-separated list. ``method_options[name]`` are extra options for that method name.
    A ``flexible`` variant with non-uniform string ``weights`` gets the label
    ``"flexible (<weights>)"``.
    """
    from core.calibration.registry import default_method_names, method_names, method_spec

    options = {k: dict(v) for k, v in (method_options or {}).items()}
    if methods is None:
        methods = default_method_names(sites)
    elif isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(methods)
    if not methods:
        raise ValueError(f"methods: expected at least one of {', '.join(method_names())}, got none")
    out = []
    for m in methods:
        v = m if isinstance(m, Variant) else Variant(_default_label(m, options.get(m, {})), m, options.get(m, {}))
        if v.method not in method_names():
            raise ValueError(f"methods: unknown method {v.method!r}; valid methods are {', '.join(method_names())}")
        spec = method_spec(v.method)
        missing = spec.missing_for(sites)
        if missing:
            what = ("a committee force spread" if missing == ["committee_std"] else ", ".join(missing))
            raise ValueError(f"methods: {v.method!r} needs {what} per site, but these sites have none; "
                             f"featurize with several models (--committee) or drop {v.method!r}")
        out.append(Variant(v.label + label_suffix, v.method, dict(v.options)))
    labels = [v.label for v in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"methods: two variants share a label ({labels}); give each a distinct label")
    return out


def _default_label(method: str, options: Mapping[str, Any]) -> str:
    weights = options.get("weights")
    if method == "flexible" and isinstance(weights, str) and weights != "uniform":
        return f"flexible ({weights})"
    return method


@dataclass
class Evaluation:
    """Fitted calibrators and their widths and reports on every test split (see module docstring)."""

    calibration: SiteTable
    tests: dict[str, SiteTable]
    confidence: float
    levels: np.ndarray
    seed: int
    variants: list[Variant]
    calibrators: dict[str, Any] = field(default_factory=dict)
    fit_seconds: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    widths: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    widths_at_levels: dict[tuple[str, str], np.ndarray | None] = field(default_factory=dict)
    reference_widths: dict[str, np.ndarray] = field(default_factory=dict)
    ood: dict[str, np.ndarray | None] = field(default_factory=dict)
    domain: Any = None  # the fitted core.domain.DomainScore behind ``ood`` (structure flags, any sites)
    reports: dict[tuple[str, str], dict] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """Labels of the variants that were fitted (in order)."""
        return [v.label for v in self.variants if v.label in self.calibrators]

    @property
    def splits(self) -> list[str]:
        return list(self.tests)

    def report(self, label: str, split: str | None = None) -> dict:
        """The calibration report of one variant on one split (the only split by default)."""
        return self.reports[(label, self._split(split))]

    def widths_of(self, label: str, split: str | None = None) -> np.ndarray:
        return self.widths[(label, self._split(split))]

    def levels_of(self, label: str, split: str | None = None) -> np.ndarray | None:
        return self.widths_at_levels.get((label, self._split(split)))

    def _split(self, split: str | None) -> str:
        if split is None:
            if len(self.tests) != 1:
                raise ValueError(f"split: several test splits ({', '.join(self.tests)}); name one")
            return next(iter(self.tests))
        if split not in self.tests:
            raise ValueError(f"split: unknown test split {split!r}; available: {', '.join(self.tests)}")
        return split

    def table(self, *, study: str = "custom", dataset: str = ""):
        """One row per variant × split: ``ID_COLUMNS + REPORT_COLUMNS (+ CI columns) + note``."""
        import pandas as pd

        from core.metrics import REPORT_COLUMNS

        rows = []
        for v in self.variants:
            for split, test in self.tests.items():
                rows.append(self._row(v, split, test, study, dataset, REPORT_COLUMNS))
        table = pd.DataFrame(rows)
        for col in ("n_cal_structures", "n_cal_sites", "n_sites", "n_structures"):
            if col in table:
                table[col] = table[col].astype("int64")
        table.attrs.update(confidence=self.confidence, seed=self.seed, study=study, dataset=dataset)
        return table

    def _row(self, v: Variant, split: str, test: SiteTable, study: str, dataset: str, columns) -> dict:
        row: dict[str, Any] = {
            "study": study, "dataset": dataset, "split": split, "method": v.method, "label": v.label,
            "n_cal_structures": self.calibration.n_structures, "n_cal_sites": len(self.calibration),
            "fit_seconds": self.fit_seconds.get(v.label, math.nan),
        }
        report = self.reports.get((v.label, split))
        if report is None:
            row.update({k: math.nan for k in columns})
            row.update(n_sites=len(test), n_structures=test.n_structures, confidence=self.confidence)
        else:
            row.update({k: _scalar(report.get(k)) for k in columns})
            for key in ("coverage_ci", "spearman_ci"):
                if key in report:
                    lo, hi = report.get(key) or (None, None)
                    row[f"{key}_lo"], row[f"{key}_hi"] = _scalar(lo), _scalar(hi)
        note = self.notes.get(v.label, "")
        if report is not None and not math.isfinite(row.get("mean_width", 0.0)):
            note = note or INFINITE_NOTE
        row["note"] = note
        return row

    def to_json(self, *, study: str = "custom", dataset: str = "") -> dict:
        """JSON-ready dict ``{"study", "meta", "rows", "reports"}`` (NaN/inf -> null)."""
        table = self.table(study=study, dataset=dataset)
        return {
            "study": study,
            "meta": jsonable(dict(table.attrs)),
            "rows": jsonable(table.to_dict(orient="records")),
            "reports": {f"{lab} | {split}": jsonable(rep) for (lab, split), rep in self.reports.items()},
        }


def evaluate(
    calibration: SiteTable,
    tests: Mapping[str, SiteTable],
    methods=None,
    *,
    confidence: float = 0.9,
    seed: int = 0,
    reference: SiteTable | None = None,
    target: SiteTable | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    levels=None,
    rescale_on: SiteTable | None = None,
    bootstrap: int = 0,
    **hooks: Callable | None,
) -> Evaluation:
    """Fit each method variant on ``calibration`` and score it on every test split.

    Parameters
    ----------
    calibration : SiteTable
        Labelled sites the calibrators are fitted on.
    tests : dict of str -> SiteTable
        Labelled test splits by name; none may share structures with ``calibration``.
    methods : None, str, or sequence of str / Variant
        Registry names (``core.calibration.registry``) or Variants; None = the defaults.
    confidence : float
        Target coverage 1 - α in (0, 1).
    seed : int
        Seed of every calibrator (q_θ initialisation, holdout split, GMM) and of the bootstrap.
    reference : SiteTable, optional
        The potential's training sites (knn/gmm heuristics, the out-of-domain score).
    target : SiteTable, optional
        Unlabelled target-domain sites (for ``weights="shift"``).
    method_options : dict of method name -> dict, optional
        Extra ``make_calibrator`` options per method name.
    levels : array-like, optional
        Levels at which widths are kept (default: the 0.05..0.95 grid, 0.99 and ``confidence``);
        reports use the 0.05..0.95 grid columns for the miscalibration area.
    rescale_on : SiteTable, optional
        Labelled target sites: every fitted calibrator (and the split-CP reference) is then
        recalibrated on them with ``update()`` (the transfer study's "A + B budget").
    bootstrap : int
        By-structure bootstrap resamples for coverage/spearman CIs (0 = none).
    **hooks
        ``log`` callable(str): receives one line per step ("fitting knn on ...");
        ``epoch_callback`` callable(epoch, train_loss, val_loss) -> bool | None: passed to
        q_θ training, returning True stops it early (best weights kept);
        ``should_stop`` callable() -> bool: checked before each method, True raises
        :class:`EvaluationCancelled`.
    """
    confidence = check_confidence(confidence)
    seed = check_seed(seed)
    bootstrap = check_int("bootstrap", bootstrap, 0)
    _check_labelled(calibration, "calibration")
    if not tests:
        raise ValueError("tests: expected at least one test split, got none")
    for name, test in tests.items():
        _check_labelled(test, f"tests[{name!r}]")
    variants = resolve_variants(methods, calibration, method_options)
    ev = Evaluation(calibration=calibration, tests=dict(tests), confidence=confidence,
                    levels=_levels(levels, confidence), seed=seed, variants=variants)
    unknown = sorted(set(hooks) - set(HOOKS))
    if unknown:
        raise TypeError(f"evaluate: unknown keyword(s) {unknown}; hooks are {', '.join(HOOKS)}")
    report("split-CP reference widths", 0, 1)  # core.progress scope (the app's status line)
    reference_cal = _fit_one(Variant("split", "split"), calibration, confidence, seed, {}, rescale_on)
    ev.reference_widths = {name: np.asarray(reference_cal.predict(t), dtype=np.float64) for name, t in tests.items()}
    ev.domain, ev.ood = _domain_flags(calibration, tests, reference)
    fit_kwargs = {"reference": reference, "target": target}
    if hooks.get("epoch_callback") is not None:
        fit_kwargs["callback"] = hooks["epoch_callback"]
    _fit_all(ev, fit_kwargs, rescale_on, hooks.get("log") or (lambda message: None), hooks.get("should_stop"))
    _score_all(ev, bootstrap)
    return ev


def _fit_all(ev: Evaluation, fit_kwargs: dict, rescale_on, say: Callable[[str], Any], should_stop) -> None:
    """Fit every variant of ``ev`` on its calibration sites; a ValueError becomes the variant's note."""
    calibration = ev.calibration
    for v in ev.variants:
        if should_stop is not None and should_stop():
            raise EvaluationCancelled(f"stopped before fitting {v.label}")
        say(f"fitting {v.label} on {len(calibration)} sites ({calibration.n_structures} structures)")
        t0 = time.perf_counter()
        try:
            cal = _fit_one(v, calibration, ev.confidence, ev.seed, fit_kwargs, rescale_on)
        except ValueError as exc:  # e.g. a label budget too small for this method
            ev.notes[v.label] = f"fit failed: {exc}"
            say(f"  {v.label}: {ev.notes[v.label]}")
            continue
        finally:
            ev.fit_seconds[v.label] = time.perf_counter() - t0
        ev.calibrators[v.label] = cal


def score(calibrators: Mapping[str, Any], calibration: SiteTable, tests: Mapping[str, SiteTable], *,
          confidence: float | None = None, seed: int = 0, reference: SiteTable | None = None,
          levels=None, bootstrap: int = 0) -> Evaluation:
    """Score calibrators that are already fitted (``flexcal evaluate``, active learning).

    ``calibration`` is the labelled set they were fitted on: it defines the split-CP reference
    of ``width_ratio``, the expected coverage spread and the out-of-domain score, exactly as in
    :func:`evaluate`. ``confidence`` defaults to the calibrators' own (they must agree).
    """
    if not calibrators:
        raise ValueError("calibrators: expected at least one fitted calibrator, got none")
    confs = {float(c.confidence) for c in calibrators.values()}
    if confidence is None:
        if len(confs) != 1:
            raise ValueError(f"calibrators: fitted at different confidences {sorted(confs)}; pass confidence=")
        confidence = confs.pop()
    confidence = check_confidence(confidence)
    _check_labelled(calibration, "calibration")
    for name, test in tests.items():
        _check_labelled(test, f"tests[{name!r}]")
    variants = [Variant(label, getattr(c, "name", label)) for label, c in calibrators.items()]
    ev = Evaluation(calibration=calibration, tests=dict(tests), confidence=confidence,
                    levels=_levels(levels, confidence), seed=check_seed(seed), variants=variants,
                    calibrators=dict(calibrators))
    reference_cal = _fit_one(Variant("split", "split"), calibration, confidence, ev.seed, {}, None)
    ev.reference_widths = {name: np.asarray(reference_cal.predict(t), dtype=np.float64) for name, t in tests.items()}
    ev.domain, ev.ood = _domain_flags(calibration, tests, reference)
    _score_all(ev, check_int("bootstrap", bootstrap, 0))
    return ev


# ------------------------------------------------------------------ internals
def _check_labelled(sites: SiteTable, name: str) -> None:
    if not isinstance(sites, SiteTable):
        raise TypeError(f"{name}: expected a SiteTable, got {type(sites).__name__}")
    if getattr(sites, "errors", None) is None:
        raise ValueError(f"{name}: these sites carry no reference labels (errors=None); "
                         "calibration and evaluation need labelled sites")


def _levels(levels, confidence: float) -> np.ndarray:
    from core.metrics import CALIBRATION_LEVELS

    if levels is None:
        levels = np.r_[CALIBRATION_LEVELS, 0.99, confidence]
    return np.unique(np.round(check_levels(levels), 6))


def _fit_one(v: Variant, calibration: SiteTable, confidence: float, seed: int, fit_kwargs: dict,
             rescale_on: SiteTable | None):
    from core.calibration import make_calibrator

    cal = make_calibrator(v.method, confidence=confidence, seed=seed, **dict(v.options))
    cal.fit(calibration, **fit_kwargs)
    if rescale_on is not None:
        cal.update(rescale_on)
    return cal


def _domain_flags(calibration: SiteTable, tests: Mapping[str, SiteTable], reference):
    """(the fitted DomainScore, per-site out-of-domain flags of each test split); (None, None flags) without one."""
    try:
        from core.domain import DomainScore
    except ImportError:
        return None, {name: None for name in tests}
    try:
        domain = DomainScore().fit(calibration)
    except ValueError:  # e.g. fewer than 2 calibration structures: no leave-one-structure-out distances
        return None, {name: None for name in tests}
    return domain, {name: np.asarray(domain.flags(t), dtype=bool) for name, t in tests.items()}


def _grid_columns(levels: np.ndarray) -> np.ndarray | None:
    """Column indices of the 0.05..0.95 grid within ``levels`` (None when one is missing)."""
    from core.metrics import CALIBRATION_LEVELS

    idx = [int(np.argmin(np.abs(levels - p))) for p in CALIBRATION_LEVELS]
    return np.array(idx) if np.allclose(levels[idx], CALIBRATION_LEVELS, atol=1e-9) else None


def _score_all(ev: Evaluation, bootstrap: int) -> None:
    from core.metrics import CALIBRATION_LEVELS, calibration_report

    grid = _grid_columns(ev.levels)
    for i, label in enumerate(ev.labels):
        report("scoring the methods on the test split" + (f" ({bootstrap} bootstrap resamples)" if bootstrap else ""),
               i, len(ev.labels))  # core.progress scope (the app's status line): methods scored so far
        cal = ev.calibrators[label]
        for split, test in ev.tests.items():
            widths = np.asarray(cal.predict(test), dtype=np.float64)
            try:
                at_levels = np.asarray(cal.predict_levels(test, ev.levels), dtype=np.float64)
            except NotImplementedError:
                at_levels = None
            ev.widths[(label, split)] = widths
            ev.widths_at_levels[(label, split)] = at_levels
            on_grid = None if at_levels is None or grid is None else at_levels[:, grid]
            ev.reports[(label, split)] = calibration_report(
                test.errors, widths, confidence=ev.confidence, species=test.species,
                structure_ids=test.structure_ids, widths_at_levels=on_grid,
                levels=CALIBRATION_LEVELS if on_grid is not None else None,
                reference_widths=ev.reference_widths[split], bootstrap=bootstrap, seed=ev.seed,
                n_calibration=conformal_calibration_size(cal, ev.calibration), ood=ev.ood.get(split),
            )


def conformal_calibration_size(calibrator, calibration: SiteTable) -> int:
    """Structures behind the calibrator's conformal factor (its holdout or update set), for the spread."""
    n = getattr(calibrator, "n_calibration_structures_", None)
    return int(n) if n else calibration.n_structures


def _scalar(value) -> float:
    if value is None:
        return math.nan
    if isinstance(value, (bool, np.bool_, int, float, np.integer, np.floating)):
        return float(value)
    return math.nan


def jsonable(value):
    """Plain-JSON version of a value: NaN/inf -> None, numpy -> Python, tuple keys -> strings."""
    from pathlib import Path

    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def dumps(value) -> str:
    """``json.dumps`` of :func:`jsonable` (indented)."""
    return json.dumps(jsonable(value), indent=2)
