"""The studies of METHOD §5 as functions that return tidy tables.

Every study fits a set of calibrators on labelled calibration sites, predicts
half-widths (eV/Å) on one or more test splits the calibrators never saw, and
scores them with :func:`core.metrics.calibration_report`. The result is a
pandas DataFrame with one row per (calibrator variant × test split):

``study, dataset, split, method, label, n_cal_structures, n_cal_sites,
fit_seconds, <REPORT_COLUMNS of core.metrics>, note``

* ``method`` is the calibrator name understood by ``make_calibrator``;
  ``label`` names the variant (``"flexible (shift)"``, ``"split, B 10%"``, ...).
* ``width_ratio`` divides by the widths of global split CP fitted on the same
  calibration data as the row (so split CP itself has ratio 1).
* ``miscalibration_area`` uses ``predict_levels`` on the 0.05..0.95 grid of
  METHOD §4, where the calibrator supports it.
* ``note`` is empty, or says why a row's numbers are missing (e.g. a label
  budget too small for a method).

1. :func:`run_in_domain` — calibrate and test on disjoint structures of one set.
2. :func:`run_unseen` — calibrate on one distribution (e.g. 300 K), test on
   others (high temperature, other configurations).
3. :func:`run_transfer` — calibrate against level of theory A, test against B,
   uniform, with ``shift`` weights, and with a small budget of B labels.
4. :func:`run_active_learning_study` — active learning in MD
   (:func:`core.active.run_active_learning`) on a demo family or a file; its
   table is the learning curves (one row per strategy and round).

:func:`evaluate_methods` is the shared engine (also behind ``flexcal run``);
:class:`BudgetRescaled` is the "few target labels fix the scale" wrapper of the
transfer study.

:func:`write_study` writes a table to ``<name>.csv`` and ``<name>.json``.
:func:`featurize_file` / :func:`demo_sites` build SiteTables from extxyz files
(cached on disk), and :func:`relabel` swaps in a second level of theory's forces.

Nothing here prints; pass ``progress`` (a ``callable(str)``) to hear what is
happening, and ``epoch_callback`` to follow q_θ training.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.sites import SiteTable, split_structure_ids

__all__ = [
    "STUDIES",
    "ID_COLUMNS",
    "default_methods",
    "evaluate_methods",
    "run_in_domain",
    "run_unseen",
    "run_transfer",
    "run_active_learning_study",
    "write_study",
    "study_to_json",
    "select_by_column",
    "featurize_file",
    "demo_sites",
    "relabel",
    "forces_from_file",
    "with_structure_columns",
    "BudgetRescaled",
]

STUDIES = ("in-domain", "unseen", "transfer", "active-learning")
ID_COLUMNS = ["study", "dataset", "split", "method", "label", "n_cal_structures", "n_cal_sites", "fit_seconds"]

Progress = Callable[[str], None] | None
EpochCallback = Callable[[int, float, float], Any] | None


# --------------------------------------------------------------------- methods
def default_methods(sites: SiteTable) -> tuple[str, ...]:
    """The calibrators a study runs when none are named.

    Every method of ``core.calibration.METHODS``, except ``committee`` when the
    sites carry no committee spread (``sites.committee_std is None``).
    """
    from core.calibration import METHODS

    return tuple(m for m in METHODS if m != "committee" or sites.committee_std is not None)


def _check_methods(methods: Iterable[str] | None, sites: SiteTable) -> tuple[str, ...]:
    from core.calibration import METHODS

    if methods is None:
        return default_methods(sites)
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = tuple(methods)
    if not methods:
        raise ValueError(f"methods: expected at least one of {', '.join(METHODS)}, got none")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods: unknown method {unknown[0]!r}; valid methods are {', '.join(METHODS)}")
    if "committee" in methods and sites.committee_std is None:
        raise ValueError(
            "methods: 'committee' needs a committee force spread per site, but these sites have none; "
            "featurize with several models (--committee) or drop 'committee'"
        )
    return methods


def _check_confidence(confidence) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating)):
        raise ValueError(f"confidence: expected a number in (0, 1), e.g. 0.9, got {confidence!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence: expected a number in (0, 1), e.g. 0.9, got {confidence!r}")
    return float(confidence)


class BudgetRescaled:
    """A fitted calibrator rescaled by a conformal factor from a few target labels.

    Used by the transfer study's "A + B budget" variant: the *shape* of the
    widths w_A(X) is learned on plentiful labels of level A; a small budget of
    level-B labels fixes the *scale*. With ratios r_i = e_i / w_A(X_i) on the
    budget sites and ĉ_p their finite-sample conformal quantile at level p, the
    widths at level p are ĉ_p · w_A(X). This is normalised split CP with the
    A-fitted calibrator as the heuristic, so coverage on B holds marginally
    (exchangeable B structures) whatever A was.

    Parameters
    ----------
    base : fitted Calibrator
        Supplies w_A(X) through ``predict`` (at its own confidence).
    budget : SiteTable
        Labelled sites of the target level (B).
    confidence : float
        Target coverage, in (0, 1).
    """

    def __init__(self, base, budget: SiteTable, confidence: float):
        from core.calibration.conformal import conformal_quantile

        self.base = base
        self.name = getattr(base, "name", "calibrator")
        self.confidence = _check_confidence(confidence)
        self._quantile = conformal_quantile
        self.scores_ = budget.errors / np.asarray(base.predict(budget), dtype=np.float64)
        self.factor_ = float(conformal_quantile(self.scores_, self.confidence))

    def predict(self, sites: SiteTable) -> np.ndarray:
        """Half-widths (n,) in eV/Å at ``confidence``."""
        return self.factor_ * np.asarray(self.base.predict(sites), dtype=np.float64)

    def predict_levels(self, sites: SiteTable, levels) -> np.ndarray:
        """Half-widths (n, k) in eV/Å, one column per level in ``levels``."""
        w = np.asarray(self.base.predict(sites), dtype=np.float64)
        factors = np.array([float(self._quantile(self.scores_, float(p))) for p in np.atleast_1d(levels)])
        return w[:, None] * factors[None, :]


# ------------------------------------------------------------------ evaluation
def _scalar(value) -> float:
    if value is None:
        return math.nan
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    return math.nan


def _report_columns() -> list[str]:
    from core.metrics import REPORT_COLUMNS

    return list(REPORT_COLUMNS)


def _levels() -> np.ndarray:
    from core.metrics import CALIBRATION_LEVELS

    return np.asarray(CALIBRATION_LEVELS, dtype=np.float64)


def _report(calibrator, test: SiteTable, reference_widths, confidence: float, bootstrap: int, seed: int) -> dict:
    """calibration_report of a fitted calibrator on test sites (levels where supported)."""
    from core.metrics import calibration_report

    widths = np.asarray(calibrator.predict(test), dtype=np.float64)
    levels = _levels()
    try:
        widths_at_levels = np.asarray(calibrator.predict_levels(test, levels), dtype=np.float64)
    except NotImplementedError:
        widths_at_levels = None
    return calibration_report(
        test.errors,
        widths,
        confidence=confidence,
        species=test.species,
        structure_ids=test.structure_ids,
        widths_at_levels=widths_at_levels,
        levels=levels if widths_at_levels is not None else None,
        reference_widths=reference_widths,
        bootstrap=bootstrap,
        seed=seed,
    )


def evaluate_methods(
    calibration: SiteTable,
    tests: Mapping[str, SiteTable],
    methods: Iterable[str] | None = None,
    confidence: float = 0.9,
    seed: int = 0,
    *,
    reference: SiteTable | None = None,
    target: SiteTable | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    study: str = "custom",
    dataset: str = "",
    label_suffix: str = "",
    rescale_on: SiteTable | None = None,
    bootstrap: int = 0,
    progress: Progress = None,
    epoch_callback: EpochCallback = None,
    keep_calibrators: dict | None = None,
    keep_reports: dict | None = None,
):
    """Fit each method on ``calibration`` and report it on every test split.

    Parameters
    ----------
    calibration : SiteTable
        Labelled sites the calibrators are fitted on.
    tests : dict of str -> SiteTable
        Test splits by name; none may share structures with ``calibration``.
    methods : sequence of str, optional
        Names from ``core.calibration.METHODS``; default :func:`default_methods`.
    confidence : float
        Target coverage 1 - α in (0, 1).
    seed : int
        Seed of every calibrator (q_θ initialisation, holdout split).
    reference : SiteTable, optional
        The potential's training sites, for the knn/gmm heuristics.
    target : SiteTable, optional
        Unlabelled target-domain sites (for ``weights="shift"``).
    method_options : dict of method -> dict, optional
        Extra keyword arguments for ``make_calibrator`` per method, e.g.
        ``{"flexible": {"weights": "shift", "max_epochs": 100}}``.
    study, dataset, label_suffix : str
        Written into the ``study``, ``dataset`` and ``label`` columns.
    rescale_on : SiteTable, optional
        When given, every fitted calibrator is wrapped in :class:`BudgetRescaled`
        on these labelled sites before it is tested.
    bootstrap : int
        By-structure bootstrap resamples for coverage/spearman CIs (0 = none).
    keep_calibrators, keep_reports : dict, optional
        Filled with ``label -> fitted calibrator`` and ``(label, split) -> full report``.

    Returns
    -------
    pandas.DataFrame
        One row per method × test split; columns ``ID_COLUMNS + REPORT_COLUMNS + ["note"]``.
    """
    import pandas as pd

    from core.calibration import make_calibrator

    confidence = _check_confidence(confidence)
    methods = _check_methods(methods, calibration)
    if not tests:
        raise ValueError("tests: expected at least one test split, got none")
    options = {k: dict(v) for k, v in (method_options or {}).items()}
    report_cols = _report_columns()
    say = progress or (lambda msg: None)

    def fit(method: str):
        cal = make_calibrator(method, confidence=confidence, seed=seed, **options.get(method, {}))
        kwargs: dict[str, Any] = {"reference": reference, "target": target}
        if epoch_callback is not None:
            kwargs["callback"] = epoch_callback
        cal.fit(calibration, **kwargs)
        if rescale_on is not None:
            cal = BudgetRescaled(cal, rescale_on, confidence)
        return cal

    # global split CP on the same calibration data: the width_ratio denominator
    split_cal = make_calibrator("split", confidence=confidence, seed=seed).fit(calibration)
    if rescale_on is not None:
        split_cal = BudgetRescaled(split_cal, rescale_on, confidence)
    ref_widths = {name: np.asarray(split_cal.predict(t), dtype=np.float64) for name, t in tests.items()}

    rows = []
    for method in methods:
        label = _label(method, options.get(method, {})) + label_suffix
        say(f"fitting {label} on {len(calibration)} sites ({calibration.n_structures} structures)")
        note = ""
        t0 = time.perf_counter()
        try:
            cal = fit(method)
        except ValueError as exc:  # e.g. a label budget too small for this method
            cal, note = None, f"fit failed: {exc}"
            say(f"  {label}: {note}")
        fit_seconds = time.perf_counter() - t0
        if cal is not None and keep_calibrators is not None:
            keep_calibrators[label] = cal
        for split_name, test in tests.items():
            row: dict[str, Any] = {
                "study": study,
                "dataset": dataset,
                "split": split_name,
                "method": method,
                "label": label,
                "n_cal_structures": calibration.n_structures,
                "n_cal_sites": len(calibration),
                "fit_seconds": fit_seconds,
            }
            if cal is None:
                row.update({k: math.nan for k in report_cols})
                row.update(n_sites=len(test), n_structures=test.n_structures, confidence=confidence)
            else:
                report = _report(cal, test, ref_widths[split_name], confidence, bootstrap, seed)
                if keep_reports is not None:
                    keep_reports[(label, split_name)] = report
                row.update({k: _scalar(report.get(k)) for k in report_cols})
                if bootstrap:
                    for key in ("coverage_ci", "spearman_ci"):
                        lo, hi = report.get(key) or (None, None)
                        row[f"{key}_lo"], row[f"{key}_hi"] = _scalar(lo), _scalar(hi)
                if not np.isfinite(row.get("mean_width", 0.0)):
                    note = note or ("some widths are infinite: the (weighted) conformal quantile's rank "
                                    "exceeds the calibration sites at this confidence (too few of them)")
            row["note"] = note
            rows.append(row)
    table = pd.DataFrame(rows)
    for col in ("n_cal_structures", "n_cal_sites", "n_sites", "n_structures"):
        table[col] = table[col].astype("int64")
    table.attrs.update(confidence=confidence, seed=seed, study=study, dataset=dataset)
    return table


def _label(method: str, options: Mapping[str, Any]) -> str:
    weights = options.get("weights")
    if method == "flexible" and isinstance(weights, str) and weights != "uniform":
        return f"flexible ({weights})"
    return method


def _concat(tables, attrs: dict):
    import pandas as pd

    table = pd.concat(tables, ignore_index=True)
    table.attrs.update(attrs)
    return table


# --------------------------------------------------------------------- studies
def run_in_domain(
    sites: SiteTable,
    methods: Iterable[str] | None = None,
    confidence: float = 0.9,
    test_fraction: float = 0.5,
    seed: int = 0,
    reference: SiteTable | None = None,
    *,
    split_seed: int | None = None,
    dataset: str = "",
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    bootstrap: int = 0,
    progress: Progress = None,
    epoch_callback: EpochCallback = None,
):
    """Study 1: calibrate and test on disjoint structures of one distribution.

    ``sites`` is split **by structure** (``test_fraction`` of the structures to
    test, seeded by ``split_seed``, default ``seed``); each method is fitted on
    the calibration part and reported on the test part (split ``"test"``).
    Returns the tidy table described in the module docstring.
    """
    cal, test = sites.split(test_fraction, seed if split_seed is None else split_seed)
    table = evaluate_methods(
        cal, {"test": test}, methods, confidence, seed,
        reference=reference, method_options=method_options, study="in-domain", dataset=dataset,
        bootstrap=bootstrap, progress=progress, epoch_callback=epoch_callback,
    )
    table.attrs.update(test_fraction=float(test_fraction))
    return table


def run_unseen(
    cal_sites: SiteTable,
    test_sets: Mapping[str, SiteTable],
    methods: Iterable[str] | None = None,
    confidence: float = 0.9,
    seed: int = 0,
    reference: SiteTable | None = None,
    *,
    in_domain_fraction: float | None = None,
    dataset: str = "",
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    bootstrap: int = 0,
    progress: Progress = None,
    epoch_callback: EpochCallback = None,
):
    """Study 2: calibrate on one distribution, test on unseen environments.

    Parameters
    ----------
    cal_sites : SiteTable
        Calibration sites, e.g. MD frames at 300 K.
    test_sets : dict of str -> SiteTable
        Test splits by name, e.g. ``{"600K": ..., "H-transfer": ...}``.
    in_domain_fraction : float, optional
        When given, that fraction of ``cal_sites`` structures is held out as an
        extra ``"in-domain"`` test split, so the table shows how much coverage
        and correlation degrade off-distribution.

    Other parameters are as in :func:`evaluate_methods`.
    """
    if not test_sets:
        raise ValueError("test_sets: expected at least one named test SiteTable, got none")
    tests: dict[str, SiteTable] = {}
    cal = cal_sites
    if in_domain_fraction is not None:
        cal, held = cal_sites.split(in_domain_fraction, seed)
        tests["in-domain"] = held
    tests.update(test_sets)
    return evaluate_methods(
        cal, tests, methods, confidence, seed,
        reference=reference, method_options=method_options, study="unseen", dataset=dataset,
        bootstrap=bootstrap, progress=progress, epoch_callback=epoch_callback,
    )


def _paired(a: SiteTable, b: SiteTable) -> bool:
    """True when A and B are the same sites (same structures and atoms, same order)."""
    return (
        len(a) == len(b)
        and np.array_equal(a.structure_ids, b.structure_ids)
        and np.array_equal(a.atom_index, b.atom_index)
        and np.array_equal(a.species, b.species)
    )


def run_transfer(
    sites_A: SiteTable,
    sites_B: SiteTable,
    methods: Iterable[str] | None = None,
    confidence: float = 0.9,
    test_fraction: float = 0.5,
    seed: int = 0,
    reference: SiteTable | None = None,
    *,
    budgets: Sequence[float] = (0.05, 0.10),
    include_oracle: bool = True,
    dataset: str = "",
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    bootstrap: int = 0,
    progress: Progress = None,
    epoch_callback: EpochCallback = None,
):
    """Study 3: calibrate against level of theory A, test against level B.

    ``sites_A`` and ``sites_B`` hold errors of the same potential against two
    reference methods (see :func:`relabel`). When they are the same sites
    (paired), the structures are split once (``test_fraction`` to test) so no
    test structure is ever calibrated on, in A or in B; otherwise all of A
    calibrates and B is split into a label pool and a test part.

    Every row is tested on the B test structures (split ``"B"``). Variants
    (``label`` column):

    * ``<method>, A`` — fitted on A labels of the calibration structures;
      uniform weights.
    * ``flexible (shift), A`` — q_θ fitted on A with ``weights="shift"``, the
      density ratio estimated against the (unlabelled) B test descriptors. When
      A and B are the same structures the descriptors share one distribution,
      so the weights are close to 1 and this should match the uniform row.
    * ``<method>, B <k>%`` — fitted **in place of A** on B labels of ``k`` % of
      the calibration (pool) structures, for each ``k`` in ``budgets``.
    * ``<method>, A + B <k>% rescale`` — fitted on A, then the widths rescaled
      by a conformal factor from the same B budget (:class:`BudgetRescaled`):
      A gives the shape, B the scale; coverage on B is restored.
    * ``<method>, B 100%`` (``include_oracle``) — fitted on B labels of every
      calibration structure: what full relabelling would give.
    """
    confidence = _check_confidence(confidence)
    methods = _check_methods(methods, sites_A)
    options = {k: dict(v) for k, v in (method_options or {}).items()}
    for k in budgets:
        if not 0.0 < float(k) < 1.0:
            raise ValueError(f"budgets: expected fractions in (0, 1), e.g. 0.05, got {k!r}")

    if _paired(sites_A, sites_B):
        cal_ids, test_ids = split_structure_ids(sites_A.unique_structures, test_fraction, seed)
        cal_A = sites_A.select_structures(cal_ids)
        pool_B, test_B = sites_B.select_structures(cal_ids), sites_B.select_structures(test_ids)
    else:
        cal_A = sites_A
        pool_B, test_B = sites_B.split(test_fraction, seed)
    tests = {"B": test_B}
    common = dict(
        confidence=confidence, seed=seed, reference=reference, study="transfer", dataset=dataset,
        bootstrap=bootstrap, progress=progress, epoch_callback=epoch_callback,
    )
    tables = [evaluate_methods(cal_A, tests, methods, method_options=options, label_suffix=", A", **common)]
    if "flexible" in methods:
        shift_opts = {"flexible": {**options.get("flexible", {}), "weights": "shift"}}
        tables.append(
            evaluate_methods(cal_A, tests, ["flexible"], target=test_B, method_options=shift_opts,
                             label_suffix=", A", **common)
        )
    rng = np.random.default_rng(seed)
    pool_ids = rng.permutation(pool_B.unique_structures)
    for k in budgets:
        n_k = max(1, int(round(float(k) * pool_ids.size)))
        budget = pool_B.select_structures(np.sort(pool_ids[:n_k]))  # nested budgets: 5% ⊂ 10%
        pct = f"{100 * float(k):g}%"
        tables.append(evaluate_methods(budget, tests, methods, method_options=options,
                                       label_suffix=f", B {pct}", **common))
        tables.append(evaluate_methods(cal_A, tests, methods, method_options=options, rescale_on=budget,
                                       label_suffix=f", A + B {pct} rescale", **common))
    if include_oracle:
        tables.append(evaluate_methods(pool_B, tests, methods, method_options=options,
                                       label_suffix=", B 100%", **common))
    return _concat(tables, dict(confidence=confidence, seed=seed, study="transfer", dataset=dataset,
                                test_fraction=float(test_fraction), budgets=[float(k) for k in budgets],
                                paired=_paired(sites_A, sites_B)))


def run_active_learning_study(
    dataset=None,
    *,
    reference=None,
    n_initial: int = 20,
    n_rounds: int = 3,
    picks_per_round: int = 5,
    md_steps: int = 200,
    test_size: int = 20,
    strategies: Sequence[str] = ("calibrated", "heuristic", "random"),
    confidence: float = 0.9,
    seed: int = 0,
    workdir=None,
    train_epochs: int = 30,
    calibrator_options: Mapping[str, Any] | None = None,
    progress=None,
    **options,
):
    """Study 4: active learning in MD on a demo family or a labelled file.

    Prepares the inputs of :func:`core.active.run_active_learning` and runs it:

    * ``dataset``: a demo family (``core.demo.FAMILIES``; default
      ``core.demo.DEFAULT_FAMILY``) or an extxyz path. For a family, the
      initial training set is drawn from its ``split == "train"`` frames, the
      test set from its ``"test"`` frames of the training config types, and the
      labeller is the family's reference method. For a file, ``reference`` is
      required and ``test_size`` random frames are held out as the test set.
    * ``n_initial`` frames (seeded) start the training set; the first of them
      starts the exploration MD.
    * ``train_epochs`` caps every MACE refit (``max_num_epochs``).
    * Other keyword arguments go to ``run_active_learning`` unchanged.

    Returns
    -------
    (pandas.DataFrame, ActiveLearningResult)
        The learning curves with ``study`` and ``dataset`` columns in front
        (one row per strategy and round: force MAE in eV/Å, coverage, mean
        width, spearman, ...), and the full result.
    """
    from core.active import run_active_learning

    rng = np.random.default_rng(seed)
    label, frames, test_set, ref = _al_inputs(dataset, reference, test_size, rng)
    if len(frames) < max(3, n_initial):
        raise ValueError(f"dataset: {len(frames)} training-pool frames, need at least {max(3, n_initial)} (n_initial)")
    pick = np.sort(rng.choice(len(frames), size=n_initial, replace=False))
    initial = [frames[i] for i in pick]
    if workdir is None:
        import tempfile

        workdir = Path(tempfile.mkdtemp(prefix="flexcal-al-"))
    result = run_active_learning(
        initial, initial[0], ref, strategies=tuple(strategies), n_rounds=n_rounds,
        picks_per_round=picks_per_round, md_steps=md_steps, seed=seed, workdir=workdir,
        test_set=test_set, test_size=test_size, confidence=confidence,
        calibrator_options=dict(calibrator_options or {}),
        train_kwargs={"max_num_epochs": int(train_epochs), **options.pop("train_kwargs", {})},
        progress=progress, **options,
    )
    table = result.curves.copy()
    table.insert(0, "dataset", label)
    table.insert(0, "study", "active-learning")
    table.attrs.update(study="active-learning", dataset=label, confidence=float(confidence), seed=seed,
                       settings=_jsonable(result.settings))
    return table, result


def _al_inputs(dataset, reference, test_size: int, rng):
    """(label, training-pool frames, test frames or None, reference) for the active-learning study."""
    from core import demo

    if dataset is None:
        dataset = demo.DEFAULT_FAMILY
    if isinstance(dataset, str) and dataset in demo.FAMILIES:
        info = demo.demo_info(dataset)
        frames = demo.demo_frames(dataset)
        train_types = set(info["train_config_types"])
        pool = [a for a in frames if a.info.get("split") == "train"]
        tests = [a for a in frames if a.info.get("split") == "test" and a.info.get("config_type") in train_types]
        if len(tests) > test_size:
            tests = [tests[i] for i in np.sort(rng.choice(len(tests), size=test_size, replace=False))]
        return dataset, pool, tests or None, reference or info["reference"]
    from core.data import read_dataset

    if reference is None:
        raise ValueError("reference: the active-learning study on a file needs a reference calculator "
                         "(gfn2-xtb, gfn1-xtb or emt) to label the frames it picks")
    structures = list(read_dataset(dataset).structures)
    if len(structures) <= test_size:
        raise ValueError(f"dataset: {len(structures)} frames, need more than test_size={test_size}")
    order = rng.permutation(len(structures))
    tests = [structures[i] for i in np.sort(order[:test_size])]
    pool = [structures[i] for i in np.sort(order[test_size:])]
    return Path(dataset).stem, pool, tests, reference


# ------------------------------------------------------------------------ I/O
def _jsonable(value):
    """Plain-JSON version of a value: NaN/inf -> None, numpy -> Python."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def study_to_json(table, name: str | None = None) -> dict:
    """A study table as a JSON-ready dict ``{"study", "meta", "rows"}`` (NaN -> null)."""
    return {
        "study": name or table.attrs.get("study", ""),
        "meta": _jsonable(dict(table.attrs)),
        "rows": _jsonable(table.to_dict(orient="records")),
    }


def write_study(table, outdir, name: str) -> dict[str, Path]:
    """Write a study table to ``outdir/<name>.csv`` and ``outdir/<name>.json``.

    Returns ``{"csv": path, "json": path}``. The JSON holds the rows plus the
    table's settings (``meta``); undefined values are ``null``.
    """
    if not name or any(c in name for c in "/\\"):
        raise ValueError(f"name: expected a plain file stem such as 'in-domain', got {name!r}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = outdir / f"{name}.csv", outdir / f"{name}.json"
    table.to_csv(csv_path, index=False)
    json_path.write_text(json.dumps(study_to_json(table, name), indent=2) + "\n")
    return {"csv": csv_path, "json": json_path}


# ------------------------------------------------------------- building sites
def select_by_column(sites: SiteTable, column: str, values: Iterable[str]) -> SiteTable:
    """Sites whose structure has ``structure_info[column]`` in ``values``.

    Raises ValueError naming the values present when none match.
    """
    values = [str(v) for v in values]
    if column not in sites.structure_info:
        raise ValueError(
            f"split-by: the sites have no per-structure column {column!r}; available: {sorted(sites.structure_info)}"
        )
    col = sites.structure_column(column).astype(str)
    present = sorted(set(sites.structure_info[column].astype(str).tolist()))
    unknown = [v for v in values if v not in present]
    if unknown:
        raise ValueError(f"{column}: no structures with value(s) {unknown}; present: {present}")
    return sites.select(np.isin(col, values))


def featurize_file(
    path,
    model=None,
    *,
    committee: Sequence[str] = (),
    batch_size: int = 16,
    cache_dir=None,
    energy_key: str | None = None,
    forces_key: str | None = None,
    device: str = "auto",
    dtype: str = "float64",
    progress=None,
    messages: Progress = None,
    info_keys: Sequence[str] = ("split",),
    max_structures: int | None = None,
    subset_seed: int = 0,
) -> SiteTable:
    """Read an extxyz file and run a potential over it: the sites of one dataset.

    Parameters
    ----------
    path : str or Path
        The dataset (anything :func:`core.data.read_dataset` reads).
    model : str, Path or Potential, optional
        A foundation-model name, a ``.model`` file or a loaded potential. None
        means the embedded demo model (only sensible for demo datasets).
    committee : sequence of paths
        Extra models whose force spread fills ``committee_std``.
    batch_size, cache_dir, progress
        Passed to :func:`core.featurize.featurize` (``progress=True`` -> tqdm).
    energy_key, forces_key : str, optional
        Label keys; default auto-detected (``REF_*``, ``energy``/``forces``, ...).
    messages : callable(str), optional
        Receives the data reader's notes (which keys were mapped).
    info_keys : sequence of str
        Per-frame ``atoms.info`` keys copied into ``structure_info`` as strings
        when every frame has them (the demo data's ``split``: train/valid/
        calibration/test).
    max_structures : int, optional
        Featurize only a seeded random subset of this many structures (a quick
        look at a large file); ``structure_info["dataset_index"]`` keeps their
        positions in the file.
    subset_seed : int
        Seed of that subset.
    """
    from core.data import read_dataset
    from core.featurize import featurize

    dataset = read_dataset(path, energy_key=energy_key, forces_key=forces_key)
    if max_structures is not None:
        if isinstance(max_structures, bool) or not isinstance(max_structures, (int, np.integer)) or max_structures < 2:
            raise ValueError(f"max_structures: expected an integer >= 2, got {max_structures!r}")
        if max_structures < len(dataset):
            keep = np.random.default_rng(subset_seed).choice(len(dataset), size=int(max_structures), replace=False)
            dataset = dataset.subset(np.sort(keep))
            if messages is not None:
                messages(f"using a random subset of {max_structures} structures (seed {subset_seed})")
    for msg in getattr(dataset, "messages", []) or []:
        if messages is not None:
            messages(str(msg))
    potential = _potential(model, committee=committee, device=device, dtype=dtype)
    sites = featurize(dataset, potential, batch_size=batch_size, progress=progress, cache_dir=cache_dir)
    extra = {}
    for key in info_keys:
        values = [a.info.get(key) for a in dataset.structures]
        if all(v is not None for v in values):
            extra[key] = np.array([str(v) for v in values])
    if extra:
        sites = with_structure_columns(sites, extra)
    sites.meta.setdefault("dataset", str(path))
    sites.meta.setdefault("model", getattr(potential, "name", str(model)))
    return sites


def with_structure_columns(sites: SiteTable, columns: Mapping[str, np.ndarray]) -> SiteTable:
    """The same sites with extra per-structure columns.

    ``columns[name]`` has one value per row of ``sites.structure_info`` (same order).
    """
    info = dict(sites.structure_info)
    m = info["structure_id"].shape[0]
    for name, values in columns.items():
        values = np.asarray(values)
        if values.shape[0] != m:
            raise ValueError(f"columns[{name!r}]: expected {m} values (one per structure), got {values.shape[0]}")
        info[name] = values
    return SiteTable.from_arrays(
        descriptors=sites.descriptors, errors=sites.errors, species=sites.species,
        structure_ids=sites.structure_ids, atom_index=sites.atom_index, forces_pred=sites.forces_pred,
        forces_ref=sites.forces_ref, committee_std=sites.committee_std, structure_info=info, meta=dict(sites.meta),
    )


def _potential(model, *, committee=(), device="auto", dtype="float64"):
    if model is not None and not isinstance(model, (str, Path)):
        return model  # already a Potential
    from core.potentials import load_potential

    if model is None:
        from core.demo import demo_model_path

        model = demo_model_path()
    return load_potential(str(model), committee=tuple(str(c) for c in committee), device=device, dtype=dtype)


def demo_sites(name: str, *, cache_dir=None, progress=None, batch_size: int = 16) -> SiteTable:
    """All sites of an embedded demo dataset, featurized with the demo model.

    ``name`` is a key of ``core.demo.demo_datasets()`` (e.g. ``"molecule"``).
    Featurization is cached in ``cache_dir`` when given.
    """
    from core.demo import demo_datasets, demo_model_path

    datasets = demo_datasets()
    if name not in datasets:
        raise ValueError(f"dataset: unknown demo dataset {name!r}; available: {', '.join(sorted(datasets))}")
    sites = featurize_file(datasets[name], demo_model_path(name), cache_dir=cache_dir, progress=progress,
                           batch_size=batch_size)
    sites.meta["demo"] = name
    return sites


def relabel(sites: SiteTable, forces_ref: np.ndarray, *, label: str = "B") -> SiteTable:
    """The same sites with errors against other reference forces.

    Parameters
    ----------
    sites : SiteTable
        Must carry ``forces_pred`` (n, 3), eV/Å.
    forces_ref : array of shape (n, 3)
        Reference forces of a second level of theory for the same sites, eV/Å.

    Returns
    -------
    SiteTable
        Same descriptors, species, structures and predictions; ``forces_ref``
        replaced, ``errors`` = ||F_pred - F_ref||_2 recomputed; ``meta["level"] = label``.
    """
    if sites.forces_pred is None:
        raise ValueError("sites: relabel needs predicted forces (forces_pred), but this table has none")
    forces_ref = np.asarray(forces_ref, dtype=np.float64)
    if forces_ref.shape != (len(sites), 3):
        raise ValueError(f"forces_ref: expected shape ({len(sites)}, 3), got {forces_ref.shape}")
    return SiteTable.from_arrays(
        descriptors=sites.descriptors,
        errors=None,
        species=sites.species,
        structure_ids=sites.structure_ids,
        atom_index=sites.atom_index,
        forces_pred=sites.forces_pred,
        forces_ref=forces_ref,
        committee_std=sites.committee_std,
        structure_info=sites.structure_info,
        meta={**sites.meta, "level": label},
    )


def forces_from_file(sites: SiteTable, path, forces_key: str) -> np.ndarray:
    """Per-site forces (n, 3) read from ``atoms.arrays[forces_key]`` of an extxyz file.

    Sites are matched to frames through ``structure_info["dataset_index"]``
    (else the structure id) and to atoms through ``atom_index``.
    """
    from ase.io import read

    frames = read(str(path), index=":")
    frame_of = (
        sites.structure_column("dataset_index").astype(np.int64)
        if "dataset_index" in sites.structure_info
        else sites.structure_ids
    )
    out = np.empty((len(sites), 3), dtype=np.float64)
    for f in np.unique(frame_of):
        atoms = frames[int(f)]
        if forces_key not in atoms.arrays:
            raise ValueError(f"{path}: frame {int(f)} has no per-atom array {forces_key!r}; "
                             f"available: {sorted(atoms.arrays)}")
        rows = np.flatnonzero(frame_of == f)
        out[rows] = atoms.arrays[forces_key][sites.atom_index[rows]]
    return out
