"""The studies of METHOD §5 as functions that return tidy tables.

Every study arranges calibration and test sites and hands them to the one evaluation engine
(:func:`core.evaluation.evaluate`); the result is a pandas DataFrame with one row per
(calibrator variant × test split):

``study, dataset, split, method, label, n_cal_structures, n_cal_sites, fit_seconds,
<REPORT_COLUMNS of core.metrics>, note``

* ``method`` is the registry name; ``label`` names the variant (``"flexible (shift)"``,
  ``"split, B 10%"``, ...).
* ``width_ratio`` divides by the widths of global split CP fitted on the same calibration
  data as the row (the engine's one definition).
* every row carries ``ood_fraction`` and the coverage spread expected for its number of
  calibration structures.

1. :func:`run_in_domain` — calibrate and test on disjoint structures of one set.
2. :func:`run_unseen` — calibrate on one distribution (e.g. 300 K), test on others.
3. :func:`run_transfer` — calibrate against level of theory A, test against B: uniform, with
   ``shift`` weights, with a small budget of B labels, and recalibrated (``update``) on it;
   :func:`run_recalibration` — coverage against the number of new labelled structures.
4. :func:`run_active_learning_study` — active learning in MD (:mod:`core.active`).
5. :func:`run_zero_shot` — a foundation model without fine-tuning (CHGNet offline): in-domain
   and shift splits of several datasets, with the potential's force MAE per split;
   :func:`zero_shot_summary` puts ρ of heuristic CP and of q_θ side by side.

:func:`write_study` writes a table to ``<name>.csv`` and ``<name>.json``. Sites come from
:mod:`core.sources`. Nothing here prints; pass ``log`` (a ``callable(str)``) to hear what is
happening, and ``epoch_callback`` to follow q_θ training.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.evaluation import ID_COLUMNS, Variant, evaluate, jsonable
from core.sites import SiteTable, split_structure_ids
from core.validation import check_confidence, check_seed

__all__ = [
    "STUDIES",
    "ID_COLUMNS",
    "SHIFT_METHODS",
    "run_in_domain",
    "run_unseen",
    "run_transfer",
    "run_recalibration",
    "run_active_learning_study",
    "run_zero_shot",
    "zero_shot_summary",
    "force_mae",
    "ZERO_SHOT_PUBLIC",
    "write_study",
    "study_to_json",
]

STUDIES = ("in-domain", "unseen", "transfer", "active-learning", "zero-shot")
#: Study 5's public DFT sets under ``../shared/data``: calibration file, {shift split: file} (forces in all)
#: The comparison every shift case runs (issue: flexible, flexible with shift weights,
#: flexible-ood, knn, gmm, split).
SHIFT_METHODS = ("flexible", Variant("flexible (shift)", "flexible", {"weights": "shift"}), "flexible-ood",
                 "knn", "gmm", "split")

Log = Callable[[str], None] | None
EpochCallback = Callable[[int, float, float], Any] | None


def _concat(tables, attrs: dict):
    import pandas as pd

    table = pd.concat(tables, ignore_index=True)
    table.attrs.update(attrs)
    return table


def _common(kw: dict) -> dict:
    """The engine keywords a study passes through unchanged."""
    keys = ("reference", "method_options", "bootstrap", "log", "epoch_callback")
    return {k: kw[k] for k in keys if k in kw}


# --------------------------------------------------------------------- studies
def run_in_domain(sites: SiteTable, methods=None, confidence: float = 0.9, test_fraction: float = 0.5,
                  seed: int = 0, *, split_seed: int | None = None, dataset: str = "", **engine):
    """Study 1: calibrate and test on disjoint structures of one distribution.

    ``sites`` is split **by structure** (``test_fraction`` of the structures to test, seeded
    by ``split_seed``, default ``seed``); each method is fitted on the calibration part and
    reported on the test part (split ``"test"``). ``engine``: ``reference``,
    ``method_options``, ``bootstrap``, ``log``, ``epoch_callback`` of
    :func:`core.evaluation.evaluate`.
    """
    cal, test = sites.split(test_fraction, seed if split_seed is None else split_seed)
    ev = evaluate(cal, {"test": test}, methods, confidence=confidence, seed=seed, **_common(engine))
    table = ev.table(study="in-domain", dataset=dataset)
    table.attrs.update(test_fraction=float(test_fraction))
    return table


def run_unseen(cal_sites: SiteTable, test_sets: Mapping[str, SiteTable], methods=None, confidence: float = 0.9,
               seed: int = 0, *, in_domain_fraction: float | None = None, dataset: str = "",
               target: SiteTable | None = None, **engine):
    """Study 2: calibrate on one distribution, test on unseen environments.

    ``test_sets``: test splits by name (e.g. ``{"600K": ...}``). ``in_domain_fraction``:
    that fraction of ``cal_sites`` structures is held out as an extra ``"in-domain"`` split.
    ``target``: unlabelled target descriptors for ``weights="shift"`` variants (default: all
    test splits together). ``methods`` default: :data:`SHIFT_METHODS` that the sites support.
    """
    if not test_sets:
        raise ValueError("test_sets: expected at least one named test SiteTable, got none")
    tests: dict[str, SiteTable] = {}
    cal = cal_sites
    if in_domain_fraction is not None:
        cal, held = cal_sites.split(in_domain_fraction, seed)
        tests["in-domain"] = held
    tests.update(test_sets)
    if target is None:
        target = _stack_targets(list(test_sets.values()))
    if methods is None:
        methods = _supported(SHIFT_METHODS, cal)
    ev = evaluate(cal, tests, methods, confidence=confidence, seed=seed, target=target, **_common(engine))
    return ev.table(study="unseen", dataset=dataset)


def _supported(methods, sites: SiteTable) -> list:
    """The entries of ``methods`` (names or Variants) whose registry method ``sites`` support."""
    from core.calibration.registry import method_names, method_spec

    out = []
    for m in methods:
        name = m.method if isinstance(m, Variant) else m
        if name in method_names() and method_spec(name).available_for(sites):
            out.append(m)
    return out


def _stack_targets(tables: list[SiteTable]) -> SiteTable:
    """Unlabelled target descriptors of several test splits, structure ids made disjoint."""
    if len(tables) == 1:
        return tables[0]
    ids, offset = [], 0
    for t in tables:
        ids.append(t.structure_ids.astype(np.int64) + offset)
        offset += int(t.structure_ids.max()) + 1
    return SiteTable.from_arrays(descriptors=np.concatenate([t.descriptors for t in tables]), errors=None,
                                 species=np.concatenate([t.species for t in tables]),
                                 structure_ids=np.concatenate(ids))


def _paired(a: SiteTable, b: SiteTable) -> bool:
    """True when A and B are the same sites (same structures and atoms, same order)."""
    return (
        len(a) == len(b)
        and np.array_equal(a.structure_ids, b.structure_ids)
        and np.array_equal(a.atom_index, b.atom_index)
        and np.array_equal(a.species, b.species)
    )


def _transfer_parts(sites_A: SiteTable, sites_B: SiteTable, test_fraction: float, seed: int):
    """(calibration A, label pool B, test B): no test structure is ever calibrated on, in A or B."""
    if _paired(sites_A, sites_B):
        cal_ids, test_ids = split_structure_ids(sites_A.unique_structures, test_fraction, seed)
        return sites_A.select_structures(cal_ids), sites_B.select_structures(cal_ids), sites_B.select_structures(test_ids)
    pool_B, test_B = sites_B.split(test_fraction, seed)
    return sites_A, pool_B, test_B


def _budget(pool: SiteTable, order: np.ndarray, n: int) -> SiteTable:
    """The first ``n`` structures of a seeded order of ``pool`` (nested budgets: 5 % ⊂ 10 %)."""
    return pool.select_structures(np.sort(order[:n]))


def run_transfer(sites_A: SiteTable, sites_B: SiteTable, methods=None, confidence: float = 0.9,
                 test_fraction: float = 0.5, seed: int = 0, *, budgets: Sequence[float] = (0.05, 0.10),
                 n_new: Sequence[int] = (1, 2, 5, 10, 20), include_oracle: bool = True, dataset: str = "",
                 **engine):
    """Study 3: calibrate against level of theory A, test against level B.

    ``sites_A`` and ``sites_B`` hold errors of the same potential against two reference
    methods (:func:`core.sources.relabel`). Paired sites are split once by structure; else
    all of A calibrates and B is split into a label pool and a test part. Every row is tested
    on the B test structures (split ``"B"``). Variants (``label`` column):

    * ``<method>, A`` — fitted on A labels; ``flexible (shift), A`` — with ``weights="shift"``
      towards the (unlabelled) B test descriptors;
    * ``<method>, B <k>%`` — fitted in place of A on B labels of ``k`` % of the pool;
    * ``<method>, A + B <k>% rescale`` — fitted on A, then recalibrated on the same B budget
      (``update()``): A gives the shape, B the scale;
    * ``<method>, A + B <k> structures`` — fitted on A, recalibrated (``update()``) on the first
      ``k`` pool structures for each ``k`` in ``n_new`` (column ``n_new``): coverage against
      the number of new labelled structures;
    * ``<method>, B 100%`` (``include_oracle``) — fitted on B labels of every pool structure.
    """
    from core.evaluation import resolve_variants

    confidence = check_confidence(confidence)
    seed = check_seed(seed)
    variants = resolve_variants(methods, sites_A, engine.get("method_options"))
    for k in budgets:
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0.0 < float(k) < 1.0:
            raise ValueError(f"budgets: expected fractions in (0, 1), e.g. 0.05, got {k!r}")
    budgets = [float(k) for k in budgets]
    cal_A, pool_B, test_B = _transfer_parts(sites_A, sites_B, test_fraction, seed)
    tests = {"B": test_B}
    kw = dict(confidence=confidence, seed=seed, **_common({**engine, "method_options": None}))

    def run(cal, vs, suffix, **extra):
        vs = [Variant(v.label + suffix, v.method, v.options) for v in vs]
        return evaluate(cal, tests, vs, **kw, **extra).table(study="transfer", dataset=dataset)

    base = evaluate(cal_A, tests, [Variant(v.label + ", A", v.method, v.options) for v in variants], **kw)
    tables = [base.table(study="transfer", dataset=dataset)]
    flex = [v for v in variants if v.method == "flexible" and v.label == "flexible"]
    if flex:
        shift = Variant("flexible (shift)", "flexible", {**flex[0].options, "weights": "shift"})
        tables.append(run(cal_A, [shift], ", A", target=test_B))
    order = np.random.default_rng(seed).permutation(pool_B.unique_structures)
    for k in budgets:
        budget = _budget(pool_B, order, max(1, int(round(k * order.size))))
        pct = f"{100 * k:g}%"
        tables.append(run(budget, variants, f", B {pct}"))
        tables.append(run(cal_A, variants, f", A + B {pct} rescale", rescale_on=budget))
    tables += _recalibrated(base, pool_B, order, n_new, study="transfer", dataset=dataset,
                            rename=lambda label, k: label.replace(", A", f", A + B {k} structures"),
                            reference=engine.get("reference"))
    if include_oracle:
        tables.append(run(pool_B, variants, ", B 100%"))
    return _concat(tables, dict(confidence=confidence, seed=seed, study="transfer", dataset=dataset,
                                test_fraction=float(test_fraction), budgets=budgets,
                                paired=_paired(sites_A, sites_B)))


def _recalibrated(base, pool: SiteTable, order: np.ndarray, n_new: Sequence[int], *, study: str, dataset: str,
                  rename: Callable[[str, int], str], reference=None) -> list:
    """Tables of ``base``'s calibrators, each copy recalibrated on the first k pool structures.

    One table per ``k`` in ``n_new`` (nested: the first k of ``order``), scored on ``base``'s
    test splits against its calibration sites; column ``n_new`` = k; labels via ``rename``.
    """
    from core.evaluation import score

    tables = []
    for k in n_new:
        if k > order.size:
            break
        budget = _budget(pool, order, int(k))
        updated = {rename(label, int(k)): c.copy().update(budget) for label, c in base.calibrators.items()}
        ev = score(updated, base.calibration, base.tests, confidence=base.confidence, seed=base.seed,
                   reference=reference)
        tables.append(ev.table(study=study, dataset=dataset).assign(n_new=int(k)))
    return tables


def run_recalibration(cal_sites: SiteTable, new_sites: SiteTable, methods=None, confidence: float = 0.9,
                      seed: int = 0, *, n_new: Sequence[int] = (1, 2, 5, 10, 20), test_fraction: float = 0.5,
                      dataset: str = "", **engine):
    """Coverage against the number of new labelled structures used by ``update()``.

    Each method is fitted once on ``cal_sites``; ``new_sites`` (the new domain, labelled) is
    split by structure into a label pool and a test part; for each ``k`` in ``n_new`` a copy
    of every fitted calibrator is recalibrated on the first ``k`` pool structures (a seeded
    order, nested) and scored on the test part. Rows carry ``n_new`` (0 = no update).
    """
    confidence = check_confidence(confidence)
    pool, test = new_sites.split(test_fraction, check_seed(seed))
    base = evaluate(cal_sites, {"new": test}, methods, confidence=confidence, seed=seed, **_common(engine))
    tables = [base.table(study="recalibration", dataset=dataset).assign(n_new=0)]
    order = np.random.default_rng(seed).permutation(pool.unique_structures)
    tables += _recalibrated(base, pool, order, n_new, study="recalibration", dataset=dataset,
                            rename=lambda label, k: label, reference=engine.get("reference"))
    return _concat(tables, dict(confidence=confidence, seed=seed, study="recalibration", dataset=dataset,
                                n_new=[int(k) for k in n_new]))


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
    * Other keyword arguments go to ``run_active_learning`` unchanged: any
      :class:`core.active.ActiveLearningConfig` field (``calibrator``,
      ``temperature_K``, ``update_calibrator``, ...) or its keywords
      (``calibration_set``, ``initial_model``, ``train_fn``, ``load_fn``).
    * ``progress``: None, True or ``callable(done, total)`` (:mod:`core.progress`).

    Returns
    -------
    (pandas.DataFrame, ActiveLearningResult)
        The learning curves with ``study`` and ``dataset`` columns in front
        (one row per strategy and round: force MAE in eV/Å, coverage, mean
        width, spearman, ...), and the full result.
    """
    from core.active import run_active_learning
    from core.validation import check_int

    n_initial = check_int("n_initial", n_initial, 3)
    test_size = check_int("test_size", test_size, 1)
    rng = np.random.default_rng(check_seed(seed))
    label, frames, test_set, ref = _al_inputs(dataset, reference, test_size, rng)
    if len(frames) < n_initial:
        raise ValueError(f"dataset: {len(frames)} training-pool frames, need at least n_initial={n_initial}")
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
                       settings=jsonable(result.settings))
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
def __getattr__(name: str):
    # study 5 lives in core/studies_zero_shot.py; its public names stay reachable from here
    if name in ("ZERO_SHOT_PUBLIC", "run_zero_shot", "zero_shot_summary", "force_mae"):
        from core import studies_zero_shot

        return getattr(studies_zero_shot, name)
    raise AttributeError(f"module 'core.studies' has no attribute {name!r}")


def study_to_json(table, name: str | None = None) -> dict:
    """A study table as a JSON-ready dict ``{"study", "meta", "rows"}`` (NaN -> null)."""
    return {
        "study": name or table.attrs.get("study", ""),
        "meta": jsonable(dict(table.attrs)),
        "rows": jsonable(table.to_dict(orient="records")),
    }


def write_study(table, outdir, name: str) -> dict[str, Path]:
    """Write a study table to ``outdir/<name>.csv`` and ``outdir/<name>.json`` (atomically).

    Returns ``{"csv": path, "json": path}``. The JSON holds the rows plus the table's
    settings (``meta``); undefined values are ``null``.
    """
    from core.io import atomic_write_text

    if not name or any(c in name for c in "/\\"):
        raise ValueError(f"name: expected a plain file stem such as 'in-domain', got {name!r}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = outdir / f"{name}.csv", outdir / f"{name}.json"
    atomic_write_text(csv_path, table.to_csv(index=False))
    atomic_write_text(json_path, json.dumps(study_to_json(table, name), indent=2) + "\n")
    return {"csv": csv_path, "json": json_path}
