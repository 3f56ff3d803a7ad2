"""Study 5 (METHOD §5): a foundation model without fine-tuning (CHGNet offline), calibrated on a
user's system: in-domain and under shift, with the potential's force MAE and ρ of heuristic
CP beside q_θ (:func:`zero_shot_summary`). Re-exported by :mod:`core.studies`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from core.evaluation import evaluate
from core.sites import SiteTable
from core.studies import _common, _concat, _stack_targets
from core.validation import check_confidence, check_fraction, check_seed

__all__ = ["ZERO_SHOT_PUBLIC", "run_zero_shot", "zero_shot_summary", "force_mae"]

ZERO_SHOT_PUBLIC: dict[str, tuple[str, dict[str, str]]] = {
    "3bpa": ("3bpa/train_300K.xyz", {"mixedT": "3bpa/train_mixedT.xyz"}),
    "acac": ("acac/train_300K.xyz", {"600K": "acac/test_MD_600K.xyz"}),
    "ethanol": ("ethanol/train.xyz", {"test_MD": "ethanol/test_MD.xyz"}),
    "hea25": ("hea25/hea25_excerpt.xyz", {}),
}


def run_zero_shot(datasets: Mapping[str, tuple[SiteTable, Mapping[str, SiteTable]]], methods=None,
                  confidence: float = 0.9, seed: int = 0, *, test_fraction: float = 0.5,
                  split_seed: int | None = None, references: Mapping[str, SiteTable] | None = None,
                  reference_fraction: float | None = 0.3, **engine):
    """Study 5: a foundation model, not fine-tuned, calibrated on a user's own data (the seed's setting).

    ``datasets[name] = (sites, shifts)``: labelled sites of one distribution (e.g. 300 K MD) and
    ``{split: sites}`` of others (may be empty), all featurized with the same potential. Per
    dataset, ``sites`` is split **by structure** (``test_fraction`` of its structures to the
    ``"in-domain"`` split, seeded by ``split_seed``, default ``seed``); every method (default:
    the registry's defaults the sites support) is fitted on the rest and scored on
    ``"in-domain"`` and on each shift split. ``target`` of ``weights="shift"`` variants: the
    shift splits' descriptors (the in-domain split when there are none).

    The foundation model's training set is not at hand: the knn/gmm reference (also that of the
    out-of-domain score and flexible-ood) is ``references[name]``, else ``reference_fraction`` of
    the remaining structures set aside (descriptors only, never calibrated or tested on), so no
    heuristic is scored on the sites it was fitted on (a GMM fitted on the calibration sites
    rates them typical and over-widens new ones); None: the calibration part itself.
    ``engine``: ``method_options``, ``bootstrap``, ``log``, ``epoch_callback``.

    Returns the study table (one row per dataset × variant × split) with four more columns:
    ``model`` (``sites.meta["model"]``), ``force_mae`` (eV/Å: mean |F̂ − F| over the force
    components of the split, NaN without forces), ``mean_error`` (eV/Å: mean e_i) and
    ``n_ref_structures`` (structures of the reference; 0 = the calibration part itself).
    """
    if not isinstance(datasets, Mapping) or not datasets:
        got = "an empty mapping" if isinstance(datasets, Mapping) else type(datasets).__name__
        raise (ValueError if isinstance(datasets, Mapping) else TypeError)(
            f"datasets: expected a mapping name -> (sites, {{split: sites}}) with at least one dataset, got {got}")
    if "reference" in engine:
        raise TypeError("reference: pass references={dataset name: SiteTable} to run_zero_shot (one per dataset)")
    confidence, seed = check_confidence(confidence), check_seed(seed)
    split_at = seed if split_seed is None else check_seed(split_seed, "split_seed")
    if reference_fraction is not None:
        reference_fraction = check_fraction("reference_fraction", reference_fraction)
    references = dict(references or {})
    unknown = sorted(set(references) - set(datasets))
    if unknown:
        raise ValueError(f"references: {unknown} are not datasets; datasets: {list(datasets)}")
    tables = []
    for name, entry in datasets.items():
        sites, shifts = _zero_shot_entry(name, entry)
        ref = references.get(name)
        own = ref is None and reference_fraction is not None
        if sites.n_structures < (3 if own else 2):
            raise ValueError(f"datasets[{name!r}]: {sites.n_structures} structure(s); need at least {3 if own else 2} "
                             "(in-domain test, calibration" + (", reference)" if own else ")"))
        cal, held = sites.split(test_fraction, split_at)
        if own:
            cal, ref = cal.split(reference_fraction, split_at)
        tests = {"in-domain": held, **shifts}
        target = _stack_targets(list(shifts.values())) if shifts else held
        ev = evaluate(cal, tests, methods, confidence=confidence, seed=seed, target=target,
                      reference=ref, **_common(engine))
        table = ev.table(study="zero-shot", dataset=str(name))
        table.insert(5, "model", str(sites.meta.get("model", sites.meta.get("potential", ""))))
        table["force_mae"] = table["split"].map({k: force_mae(t) for k, t in tests.items()})
        table["mean_error"] = table["split"].map({k: float(np.mean(t.errors)) for k, t in tests.items()})
        table["n_ref_structures"] = 0 if ref is None else ref.n_structures
        tables.append(table)
    return _concat(tables, dict(confidence=confidence, seed=seed, study="zero-shot", datasets=list(map(str, datasets)),
                                test_fraction=float(test_fraction), reference_fraction=reference_fraction,
                                split_seed=split_at))


def _zero_shot_entry(name, entry) -> tuple[SiteTable, dict[str, SiteTable]]:
    """Validate one ``datasets`` entry: (sites, shifts) featurized alike."""
    if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], SiteTable)
            and isinstance(entry[1], Mapping)):
        raise TypeError(f"datasets[{name!r}]: expected (SiteTable, {{split name: SiteTable}}), got {type(entry).__name__}")
    sites, shifts = entry[0], dict(entry[1])
    model = sites.meta.get("model")
    for split, t in shifts.items():
        if split == "in-domain" or not isinstance(t, SiteTable):
            raise ValueError(f"datasets[{name!r}]: shift split {split!r} must be a SiteTable not named 'in-domain'")
        if t.n_descriptors != sites.n_descriptors or (model and t.meta.get("model", model) != model):
            raise ValueError(f"datasets[{name!r}]: split {split!r} was featurized with another potential "
                             f"({t.meta.get('model')!r}, {t.n_descriptors} descriptors) than its calibration sites "
                             f"({model!r}, {sites.n_descriptors} descriptors)")
    return sites, shifts


def force_mae(sites: SiteTable) -> float:
    """Mean absolute force-component error (eV/Å), NaN without predicted and reference forces."""
    if sites.forces_pred is None or sites.forces_ref is None:
        return float("nan")
    return float(np.mean(np.abs(np.asarray(sites.forces_pred, np.float64) - np.asarray(sites.forces_ref, np.float64))))


def zero_shot_summary(table, *, flexible: str = "flexible", heuristics: Sequence[str] = ("knn", "gmm", "force", "mondrian")):
    """ρ of heuristic CP and of q_θ side by side, one row per dataset × split (the seed's comparison).

    ``table``: :func:`run_zero_shot` rows, possibly several seeds concatenated (numbers are
    averaged per dataset × split × label). Columns: ``force_mae``, ``coverage`` of split CP,
    the best heuristic label and its ``rho_heuristic`` (largest mean spearman among
    ``heuristics``), ``rho_flexible``, ``coverage_flexible``, ``width_ratio_flexible`` and the
    same three for ``flexible-ood`` when present.
    """
    import pandas as pd

    mean = table.groupby(["dataset", "split", "label"], sort=False).mean(numeric_only=True).reset_index()
    rows = []
    for (dataset, split), part in mean.groupby(["dataset", "split"], sort=False):
        by = part.set_index("label")
        heur = by.loc[[h for h in heuristics if h in by.index], "spearman"].dropna()
        row = {"dataset": dataset, "split": split, "force_mae": by["force_mae"].iloc[0],
               "coverage_split": by["coverage"].get("split", np.nan),
               "best_heuristic": heur.idxmax() if len(heur) else "", "rho_heuristic": heur.max() if len(heur) else np.nan}
        for label, key in ((flexible, "flexible"), ("flexible-ood", "flexible_ood")):
            if label in by.index:
                row.update({f"rho_{key}": by.at[label, "spearman"], f"coverage_{key}": by.at[label, "coverage"],
                            f"width_ratio_{key}": by.at[label, "width_ratio"]})
        rows.append(row)
    return pd.DataFrame(rows)
