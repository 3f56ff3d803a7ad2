"""Off the calibration domain (issue 15, METHOD §6): every shift case, every shift-relevant method.

Cases (calibration on the low-temperature / training-type frames; tests on held-out in-domain
structures and on the shifted sets):

* ``3bpa``: a small MACE trained here on 100 ``train_300K`` frames (20 more for validation);
  the other 380 300 K frames are split 50/50 by structure (seeded) into calibration and the
  in-domain test; shifted: ``train_mixedT`` (300/600/1200 K) without the frames that also appear
  in ``train_300K``, and ``mixedT-hot``: its frames whose DFT energy exceeds the 99th percentile
  of the 300 K pool (a temperature proxy: the file carries no temperature; by equipartition the
  potential energy of a 27-atom molecule rises by ~1 eV per 300 K, 6 × its 300 K spread).
* ``acac``: the same recipe on ``train_300K``; shifted: ``test_MD_600K`` and ``train_600K``.
* demo ``molecule`` (ethanol md_600K / md_900K), ``licl`` (hot_1000K / defect_600K), ``surface``
  (ads_600K / highcov_300K): the calibration + test frames of the trained config types are
  split 50/50 by structure (seeded); the unseen config types are the shifted sets.

Methods: ``core.studies.SHIFT_METHODS`` = flexible, flexible with ``weights="shift"`` (target:
the unlabelled descriptors of all shifted sets of the case), flexible-ood, knn, gmm, split;
knn/gmm/flexible-ood use the potential's training frames as ``reference``. Every number is a
mean over ``--seeds`` (split and calibrator seeds). Also reported: the width q_θ would need if
it were rescaled on the *test labels* themselves (a transductive bound no method can reach,
"oracle"), and the out-of-domain score's structure-level AUROC (:mod:`core.domain`, fitted on
the calibration sites as the evaluation engine does).

Usage::

    .venv/bin/python -m benchmarks.bench_shift [--cases 3bpa acac molecule licl surface]
        [--seeds 0 1 2] [--cache DIR] [--epochs 30]

The public cases train their MACE once (about 4 min each on one core) and cache the model and
the featurized SiteTables under ``--cache`` (default ``$FLEXCAL_CACHE`` or
``../notes/cache``); the demo sites are cached there too. Writes
``benchmarks/results/shift.md`` and ``shift.csv`` (one row per case × seed × method × split).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the machine is shared: one BLAS thread

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIDENCE = 0.9
PUBLIC = ("3bpa", "acac")
DEMOS = ("molecule", "licl", "surface")
PUBLIC_SPECS = {
    "3bpa": ("3bpa/train_300K.xyz", {"mixedT": "3bpa/train_mixedT.xyz"}),
    "acac": ("acac/train_300K.xyz", {"test_MD_600K": "acac/test_MD_600K.xyz", "train_600K": "acac/train_600K.xyz"}),
}
SHOW = ("flexible", "flexible (shift)", "flexible-ood", "knn", "gmm", "split")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def shared_data() -> Path:
    path = Path(os.environ.get("FLEXCAL_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        raise SystemExit(f"public data not found at {path} (set FLEXCAL_SHARED_DATA)")
    return path


# ------------------------------------------------------------------------------ sites
def prepare_public(name: str, cache: Path, epochs: int, seed: int = 0) -> Path:
    """Train the small MACE of a public case once and save its featurized SiteTables under cache/name."""
    out = cache / name
    if (out / "pool.npz").exists() and (out / "reference.npz").exists():
        return out
    from core.data import read_dataset
    from core.featurize import featurize
    from core.potentials import load_potential
    from core.training import train_mace

    data = shared_data()
    train_file, tests = PUBLIC_SPECS[name]
    base = read_dataset(data / train_file)
    perm = np.random.default_rng(seed).permutation(len(base))
    train, valid = base.subset(np.sort(perm[:100])), base.subset(np.sort(perm[100:120]))
    pool = base.subset(np.sort(perm[120:]))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = out / f"{name}.model"
    if not model.exists():
        say(f"[{name}] training a MACE on 100 frames ({epochs} epochs)")
        model = train_mace(train.structures, valid.structures, out, name=name, seed=seed, max_num_epochs=epochs,
                           num_channels=32, r_max=4.5, num_threads=1)
    t_train = time.perf_counter() - t0
    potential = load_potential(str(model), dtype="float64")
    t0 = time.perf_counter()
    for label, dataset in {"reference": train, "pool": pool}.items():
        featurize(dataset, potential, cache_dir=out / "featurize").save(out / f"{label}.npz")
    for label, path in tests.items():
        featurize(read_dataset(data / path), potential, cache_dir=out / "featurize").save(out / f"test_{label}.npz")
    (out / "facts.json").write_text(json.dumps({"train_s": t_train, "featurize_s": time.perf_counter() - t0,
                                                "n_train": 100, "n_valid": 20, "epochs": epochs, "seed": seed}))
    return out


def public_case(name: str, seed: int, cache: Path, epochs: int):
    """(calibration, {split: test}, reference, shifted split names) of a public case."""
    from core.sites import SiteTable

    folder = prepare_public(name, cache, epochs)
    pool, reference = SiteTable.load(folder / "pool.npz"), SiteTable.load(folder / "reference.npz")
    cal, held = pool.split(0.5, seed)
    tests = {"in-domain": held}
    for label in PUBLIC_SPECS[name][1]:
        tests[label] = SiteTable.load(folder / f"test_{label}.npz")
    if name == "3bpa":
        from ase.io import read

        e300 = np.array([a.get_potential_energy() for a in read(shared_data() / "3bpa/train_300K.xyz", ":")])
        mixed = tests["mixedT"]
        energies = mixed.structure_info["energy_ref"]
        fresh = ~np.isin(energies, e300)  # 31 of its frames are train_300K frames: not a shift
        hot = fresh & (energies > np.percentile(pool.structure_info["energy_ref"], 99))
        tests["mixedT"] = mixed.select_structures(mixed.structure_info["structure_id"][fresh])
        tests["mixedT-hot"] = mixed.select_structures(mixed.structure_info["structure_id"][hot])
    return cal, tests, reference, [k for k in tests if k != "in-domain"]


def demo_case(family: str, seed: int, cache: Path):
    """(calibration, {split: test}, reference, shifted split names) of a demo family."""
    from core.demo import demo_info
    from core.sites import SiteTable
    from core.sources import demo_sites, exclude_training, select_by_column

    pool_file, ref_file = cache / f"demo_{family}_pool.npz", cache / f"demo_{family}_reference.npz"
    if pool_file.exists() and ref_file.exists():
        pool, reference = SiteTable.load(pool_file), SiteTable.load(ref_file)
    else:
        pool, reference, _ = exclude_training(demo_sites(family, cache_dir=cache / "demo_featurize"))
        cache.mkdir(parents=True, exist_ok=True)
        pool.save(pool_file)
        reference.save(ref_file)
    trained = [str(t) for t in demo_info(family)["train_config_types"]]
    cal, held = select_by_column(pool, "config_type", trained).split(0.5, seed)
    types = list(dict.fromkeys(pool.structure_info["config_type"].astype(str)))
    tests = {"in-domain": held, **{t: select_by_column(pool, "config_type", [t]) for t in types if t not in trained}}
    return cal, tests, reference, [k for k in tests if k != "in-domain"]


def stack_unlabelled(tables):
    """The descriptors of several test splits as one unlabelled SiteTable (structure ids made disjoint)."""
    from core.sites import SiteTable

    ids, offset = [], 0
    for t in tables:
        ids.append(t.structure_ids.astype(np.int64) + offset)
        offset += int(t.structure_ids.max()) + 1
    return SiteTable.from_arrays(descriptors=np.concatenate([t.descriptors for t in tables]), errors=None,
                                 species=np.concatenate([t.species for t in tables]), structure_ids=np.concatenate(ids))


# ------------------------------------------------------------------------- evaluation
def run_methods(cal, tests, reference, target, seed: int):
    """The one call of the evaluation engine (fit every shift method, score every split)."""
    from core.evaluation import evaluate
    from core.studies import SHIFT_METHODS

    return evaluate(cal, tests, SHIFT_METHODS, confidence=CONFIDENCE, seed=seed, reference=reference, target=target)


def oracle_ratio(ev, split: str, coverage: float) -> float:
    """Mean width / split CP's of q_θ rescaled on the test labels to reach ``coverage`` (a bound, not a method)."""
    test = ev.tests[split]
    w = ev.widths[("flexible", split)]
    c = np.quantile(test.errors / w, coverage)
    return float(np.mean(c * w) / np.mean(ev.reference_widths[split]))


def domain_auroc(cal, tests, shifted, reference=None) -> dict:
    """Structure-level AUROC of the out-of-domain score: in-domain held-out vs each shifted set."""
    from core.domain import DomainScore

    ds = DomainScore().fit(cal, reference=reference)
    s_in = ds.structure_scores(tests["in-domain"])[1]
    out = {"in-domain flagged": float(np.mean(s_in > 1.0))}
    for name in shifted:
        s = ds.structure_scores(tests[name])[1]
        out[name] = float(np.mean((s[None, :] > s_in[:, None]) + 0.5 * (s[None, :] == s_in[:, None])))
        out[f"{name} flagged"] = float(np.mean(s > 1.0))
    return out


RECALIBRATION_SPLIT = {"3bpa": "mixedT-hot", "acac": "test_MD_600K", "molecule": "md_900K", "licl": "hot_1000K",
                       "surface": "ads_600K"}
RECALIBRATION_N = (1, 2, 5, 10, 20)


def recalibration(ev, split: str, seed: int) -> dict:
    """Coverage on a shifted split after ``update()`` with n of its labelled structures (the rest is tested).

    For each n the labelled structures are a seeded random draw; the calibrators are copies of
    the fitted ``flexible`` and ``flexible-ood`` (their shape is kept, ĉ is re-derived).
    """
    test = ev.tests[split]
    rng = np.random.default_rng(1000 + seed)
    order = rng.permutation(test.unique_structures)
    out = {}
    for label in ("flexible", "flexible-ood"):
        out[label] = {}
        for n in RECALIBRATION_N:
            if n >= order.size:
                continue
            cal = ev.calibrators[label].copy().update(test.select_structures(order[:n]))
            rest = test.select_structures(order[n:])
            out[label][n] = float(np.mean(rest.errors <= cal.predict(rest)))
    return out


def run_case(case: str, seed: int, cache: Path, epochs: int):
    """(tidy rows, extras) of one case and seed."""
    t0 = time.perf_counter()
    if case in PUBLIC:
        cal, tests, reference, shifted = public_case(case, seed, cache, epochs)
    else:
        cal, tests, reference, shifted = demo_case(case, seed, cache)
    target = stack_unlabelled([tests[k] for k in shifted])
    ev = run_methods(cal, tests, reference, target, seed)
    table = ev.table(study="shift", dataset=case)
    table.insert(2, "seed", seed)
    extras = {"oracle85": {s: oracle_ratio(ev, s, 0.85) for s in tests},
              "oracle90": {s: oracle_ratio(ev, s, 0.90) for s in tests},
              "auroc": domain_auroc(cal, tests, shifted),
              "auroc_reference": domain_auroc(cal, tests, shifted, reference),
              "recalibration": recalibration(ev, RECALIBRATION_SPLIT[case], seed),
              "power": ev.calibrators["flexible-ood"].power_,
              "fitted_power": ev.calibrators["flexible-ood"].fitted_power_,
              "sizes": {"calibration": [cal.n_structures, len(cal)],
                        **{k: [v.n_structures, len(v)] for k, v in tests.items()}},
              "seconds": time.perf_counter() - t0}
    say(f"[{case} seed {seed}] {extras['seconds']:.0f} s")
    return table, extras


# ---------------------------------------------------------------------------- report
def _f(v, digits=3):
    if v is None or np.isnan(v):
        return "–"
    return ("∞" if v > 0 else "-∞") if np.isinf(v) else f"{v:.{digits}f}"


def summarise(table):
    """Mean over seeds per (dataset, split, label) with the coverage range and width / kNN-CP's."""
    g = table.groupby(["dataset", "split", "label"], sort=False)
    out = g.agg(coverage=("coverage", "mean"), cov_min=("coverage", "min"), cov_max=("coverage", "max"),
                mean_width=("mean_width", "mean"), width_ratio=("width_ratio", "mean"),
                spearman=("spearman", "mean"), ood_fraction=("ood_fraction", "mean"),
                exp_lo=("coverage_expected_lo", "mean"), exp_hi=("coverage_expected_hi", "mean"),
                outside=("coverage_outside_expected", "sum"), n=("seed", "count")).reset_index()
    knn = out[out.label == "knn"].set_index(["dataset", "split"])["mean_width"]
    out["width_vs_knn"] = [r.mean_width / knn.get((r.dataset, r.split), np.nan) for r in out.itertuples()]
    return out


def goals(summary, case: str, shifted) -> list[str]:
    """Markdown rows: flexible-ood against the issue's goals on one case."""
    s = summary[summary.dataset == case].set_index(["split", "label"])
    lines = []
    for split in shifted:
        o, k = s.loc[(split, "flexible-ood")], s.loc[(split, "knn")]
        best_other = max(s.loc[(split, m)].spearman for m in SHOW if m != "flexible-ood" and (split, m) in s.index
                         and np.isfinite(s.loc[(split, m)].spearman))
        lines.append(f"| {case} | {split} | {_f(o.coverage)} {'✓' if o.coverage >= 0.85 else '✗'} | "
                     f"{_f(o.coverage - k.coverage, 3)} {'✓' if o.coverage >= k.coverage - 0.03 else '✗'} | "
                     f"{_f(o.width_vs_knn, 2)} {'✓' if o.width_vs_knn <= 0.75 else '✗'} | "
                     f"{_f(o.spearman - best_other, 3)} {'✓' if o.spearman >= best_other else '✗'} |")
    o, f = s.loc[("in-domain", "flexible-ood")], s.loc[("in-domain", "flexible")]
    lines.append(f"| {case} | in-domain | {_f(o.coverage)} (expected [{_f(o.exp_lo)}, {_f(o.exp_hi)}], "
                 f"outside in {int(o.outside)}/{int(o.n)} seeds) | ρ {_f(o.spearman - f.spearman, 3)} vs flexible "
                 f"{'✓' if o.spearman >= f.spearman - 0.02 else '✗'} | width ratio {_f(o.width_ratio - f.width_ratio, 3)} "
                 f"vs flexible {'✓' if o.width_ratio <= f.width_ratio + 0.03 else '✗'} | |")
    return lines


def write_markdown(table, extras, args) -> Path:
    summary = summarise(table)
    cmd = "python -m benchmarks.bench_shift --cases " + " ".join(args.cases) + " --seeds " + " ".join(map(str, args.seeds))
    out = ["# Off the calibration domain (issue 15): shift cases", "",
           f"`{cmd}` · confidence {CONFIDENCE} · mean over {len(args.seeds)} seeds (by-structure split and "
           "calibrator seed) · widths in eV/Å; `ratio` = mean width / global split CP's, `÷kNN` = mean width / "
           "kNN-normalised CP's, `ρ` = Spearman(width, error), `ood` = fraction of sites the out-of-domain score "
           "flags. `oracle 0.85/0.90`: the width ratio q_θ would need if its widths were rescaled on the test "
           "labels themselves to reach that coverage (a transductive bound, no method can do this).", ""]
    for case in args.cases:
        rows = summary[summary.dataset == case]
        ex = extras[case]
        shifted = [s for s in dict.fromkeys(rows.split) if s != "in-domain"]
        sizes = ex[0]["sizes"]
        out += [f"## {case}", "",
                "Structures / sites: " + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in sizes.items())
                + f". flexible-ood β: fitted {_f(np.mean([e['fitted_power'] for e in ex]), 2)}, used "
                f"{_f(np.mean([e['power'] for e in ex]), 2)}. Run time {np.mean([e['seconds'] for e in ex]):.0f} s per seed.",
                "", "| split | method | coverage (min–max) | ratio | ÷kNN | ρ | ood |", "|---|---|---|---|---|---|---|"]
        for r in rows.itertuples():
            out.append(f"| {r.split} | {r.label} | {_f(r.coverage)} ({_f(r.cov_min)}–{_f(r.cov_max)}) | "
                       f"{_f(r.width_ratio, 2)} | {_f(r.width_vs_knn, 2)} | {_f(r.spearman)} | {_f(r.ood_fraction, 2)} |")
        for split in dict.fromkeys(rows.split):
            o85 = np.mean([e["oracle85"][split] for e in ex])
            o90 = np.mean([e["oracle90"][split] for e in ex])
            out.append(f"| {split} | *oracle 0.85 / 0.90* | | {_f(o85, 2)} / {_f(o90, 2)} | | | |")
        out += [""]
        for key, what in (("auroc", "calibration sites (leave-one-structure-out), as the evaluation engine"),
                          ("auroc_reference", "the training frames (reference)")):
            a = {k: np.mean([e[key][k] for e in ex]) for k in ex[0][key]}
            out.append(f"Out-of-domain structure score, domain = {what}: in-domain flagged {_f(a['in-domain flagged'], 3)}; "
                       + "; ".join(f"{s}: AUROC {_f(a[s])}, flagged {_f(a[s + ' flagged'], 2)}" for s in shifted) + ".")
        out += [""]
    out += ["## Recalibration with a few labelled structures of the new domain", "",
            "`update(n labelled structures)` of the fitted calibrators (shape kept, conformal factor re-derived "
            "on the new labels alone); coverage on the other structures of the split; mean (min–max) over seeds.", "",
            "| case | split | method | " + " | ".join(f"n = {n}" for n in RECALIBRATION_N) + " |",
            "|---|---|---|" + "---|" * len(RECALIBRATION_N)]
    for case in args.cases:
        for label in ("flexible", "flexible-ood"):
            cells = []
            for n in RECALIBRATION_N:
                v = [e["recalibration"][label].get(n) for e in extras[case]]
                v = [x for x in v if x is not None]
                cells.append(f"{_f(np.mean(v))} ({_f(min(v), 2)}–{_f(max(v), 2)})" if v else "–")
            out.append(f"| {case} | {RECALIBRATION_SPLIT[case]} | {label} | " + " | ".join(cells) + " |")
    out += [""]
    out += ["## flexible-ood against the issue's goals", "",
            "Shift rows: coverage ≥ 0.85 · coverage − kNN-CP's ≥ −0.03 · width ÷ kNN-CP's ≤ 0.75 · ρ − best other "
            "method's ≥ 0. In-domain rows: coverage against the finite-sample interval (beta-binomial, n = number of "
            "calibration structures) · ρ − flexible's ≥ −0.02 · width ratio − flexible's ≤ 0.03.", "",
            "| case | split | coverage | vs kNN | ÷kNN | ρ vs best |", "|---|---|---|---|---|---|"]
    for case in args.cases:
        shifted = [s for s in dict.fromkeys(summary[summary.dataset == case].split) if s != "in-domain"]
        out += goals(summary, case, shifted)
    path = RESULTS / "shift.md"
    path.write_text("\n".join(out) + "\n")
    return path


def main(argv=None) -> int:
    import pandas as pd
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(PUBLIC + DEMOS), choices=list(PUBLIC + DEMOS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--cache", type=Path,
                        default=Path(os.environ.get("FLEXCAL_CACHE", ROOT.parent / "notes" / "cache")))
    parser.add_argument("--epochs", type=int, default=30, help="MACE training epochs of the public cases")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tables, extras = [], {}
    for case in args.cases:
        extras[case] = []
        for seed in args.seeds:
            table, ex = run_case(case, seed, args.cache, args.epochs)
            tables.append(table)
            extras[case].append(ex)
    table = pd.concat(tables, ignore_index=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    table.to_csv(RESULTS / "shift.csv", index=False)
    (RESULTS / "shift_extras.json").write_text(json.dumps(extras, indent=1, default=float))
    print(write_markdown(table, extras, args).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
