"""The design candidates for flexible-ood, measured on every shift case (METHOD §6).

Each candidate is a width shape f(X) made conformal on the same by-structure holdout
(``holdout_fraction`` 0.25, ĉ = conformal quantile of e / f on it, w = ĉ · f), so all keep the
in-domain guarantee and differ only in how they widen off the domain:

* ``A``: q_θ trained on kNN-normalised errors e / u_knn, times u_knn (the issue's prototype);
* ``site g``: q_θ · max(1, s / s₀), s the site's kNN distance over its species' median;
* ``guard``: max(q_θ, λ · u_knn), λ the median of q_θ / u_knn on the training part;
* ``structure g, β = 1``: q_θ · max(1, S / S₀), S the structure's mean distance ratio;
* ``flexible-ood``: the same with β = max(1, fitted slope) (the shipped calibrator);
* ``epistemic inputs``: q_θ trained on [descriptors, log s, log S];
* ``Mondrian``: q_θ with one ĉ per tercile of S on the holdout (beyond: the top bin's).

Usage::

    .venv/bin/python -m benchmarks.bench_shift_candidates [--cases ...] [--seeds 0 1]

Uses the cached sites of ``benchmarks.bench_shift`` (same cases and splits). Writes
``benchmarks/results/shift_candidates.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from benchmarks.bench_shift import DEMOS, PUBLIC, RESULTS, demo_case, public_case

CONFIDENCE = 0.9


def _structure_mean(sites, values):
    from core.domain import structure_reduce

    ids, m = structure_reduce(sites.structure_ids, values, "mean")
    return m[np.searchsorted(ids, sites.structure_ids)]


def candidate_widths(cal, tests, reference, seed: int) -> dict:
    """{split: {candidate: widths (n,)}} for every candidate and the baselines."""
    from core.calibration import FlexibleQuantile, SplitConformal, conformal_quantile
    from core.calibration.ood import FlexibleOOD
    from core.calibration.qtheta import structure_parts
    from core.heuristics import KNNHeuristic

    fit_m, _, hold_m = structure_parts(cal, 0.25, 0.0, seed)
    tr, ho = cal.select(fit_m), cal.select(hold_m)
    split = SplitConformal(CONFIDENCE).fit(cal)
    knn = SplitConformal(CONFIDENCE, heuristic="knn").fit(cal, reference=reference)
    flex = FlexibleQuantile(CONFIDENCE, seed=seed).fit(cal)
    ood = FlexibleOOD(CONFIDENCE, seed=seed).fit(cal, reference=reference)
    q = ood.qtheta_  # flexible's own q_θ (same parts and seed)
    h = KNNHeuristic(k=10).fit(reference)
    u_tr = h.score(tr)
    med = {int(z): np.median(u_tr[tr.species == z]) for z in tr.unique_species}

    def s(t):
        return h.score(t) / np.array([med.get(int(z), 1.0) for z in t.species])

    def S(t):
        return _structure_mean(t, ood.domain_.ratios(t))

    s0 = np.median(s(tr))
    qa = FlexibleQuantile(CONFIDENCE, seed=seed, conformal=False).fit(dataclasses.replace(tr, errors=tr.errors / u_tr))
    lam = np.quantile(q.predict(tr) / u_tr, 0.5)

    def aug(t):
        return dataclasses.replace(t, descriptors=np.c_[t.descriptors, np.log(s(t)), np.log(S(t))].astype(np.float32))

    qe = FlexibleQuantile(CONFIDENCE, seed=seed, conformal=False).fit(aug(tr))
    shapes = {
        "A: q_θ(e/u_knn) · u_knn": lambda t: qa.predict(t) * h.score(t),
        "site g: q_θ · max(1, s/s₀)": lambda t: q.predict(t) * np.maximum(1, s(t) / s0),
        "guard: max(q_θ, λ·u_knn)": lambda t: np.maximum(q.predict(t), lam * h.score(t)),
        "structure g, β = 1": lambda t: q.predict(t) * np.maximum(1, S(t) / ood.s0_),
        "epistemic inputs (log s, log S) to q_θ": lambda t: qe.predict(aug(t)),
    }
    out = {}
    for name, t in tests.items():
        w = {"split": split.predict(t), "knn": knn.predict(t), "flexible": flex.predict(t),
             "flexible-ood (β = max(1, fitted))": ood.predict(t)}
        for label, f in shapes.items():
            w[label] = conformal_quantile(ho.errors / f(ho), CONFIDENCE) * f(t)
        s_ho, s_t = S(ho), S(t)
        edges = np.quantile(s_ho, [1 / 3, 2 / 3])
        b_ho, b_t = np.digitize(s_ho, edges), np.digitize(s_t, edges)
        q_ho, q_t = q.predict(ho), q.predict(t)
        mond = np.empty(len(t))
        for b in range(3):
            mond[b_t == b] = conformal_quantile(ho.errors[b_ho == b] / q_ho[b_ho == b], CONFIDENCE) * q_t[b_t == b]
        w["Mondrian q_θ by S terciles"] = mond
        out[name] = w
    return out


def main(argv=None) -> int:
    import torch
    from scipy.stats import spearmanr

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(PUBLIC + DEMOS), choices=list(PUBLIC + DEMOS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--cache", type=Path,
                        default=Path(os.environ.get("FLEXCAL_CACHE", Path(__file__).resolve().parents[2] / "notes" / "cache")))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    stats: dict[tuple[str, bool], list] = {}
    for case in args.cases:
        for seed in args.seeds:
            cal, tests, ref, shifted = (public_case(case, seed, args.cache, 30) if case in PUBLIC
                                        else demo_case(case, seed, args.cache))
            for split, widths in candidate_widths(cal, tests, ref, seed).items():
                e, base, knn = tests[split].errors, np.mean(widths["split"]), widths["knn"]
                for label, w in widths.items():
                    rho = spearmanr(w, e)[0] if np.ptp(w) > 0 else np.nan
                    stats.setdefault((f"{case}/{split}", split in shifted), []).append(
                        (label, np.mean(e <= w), np.mean(w) / base, np.mean(w) / np.mean(knn), rho))
            print(f"{case} seed {seed} done", flush=True)
    labels = list(dict.fromkeys(x[0] for rows in stats.values() for x in rows))

    def mean(key, label, i):
        return float(np.mean([x[i] for x in stats[key] if x[0] == label]))

    shift = [k for k in stats if k[1]]
    ind = [k for k in stats if not k[1]]
    lines = ["# flexible-ood design candidates", "",
             f"`python -m benchmarks.bench_shift_candidates --seeds {' '.join(map(str, args.seeds))}` · confidence "
             f"{CONFIDENCE} · {len(shift)} shifted splits ({', '.join(k[0] for k in shift)}) and "
             f"{len(ind)} in-domain splits; mean over seeds, then over splits.", "",
             "| candidate | shift coverage: mean (min) | shifted splits ≥ 0.85 | width ÷ kNN-CP's | ρ − kNN-CP's | "
             "in-domain width ratio − flexible's: mean (max) | in-domain ρ − flexible's: mean (min) |",
             "|---|---|---|---|---|---|---|"]
    for label in labels:
        cov = np.array([mean(k, label, 1) for k in shift])
        wk = np.array([mean(k, label, 3) for k in shift])
        rho = np.array([mean(k, label, 4) - mean(k, "knn", 4) for k in shift])
        iw = np.array([mean(k, label, 2) - mean(k, "flexible", 2) for k in ind])
        ir = np.array([mean(k, label, 4) - mean(k, "flexible", 4) for k in ind])
        fmt = (lambda a, f: "–" if np.all(np.isnan(a)) else f.format(np.nanmean(a)))
        lines.append(f"| {label} | {cov.mean():.3f} ({cov.min():.3f}) | {int((cov >= 0.85).sum())}/{cov.size} | "
                     f"{wk.mean():.2f} | {fmt(rho, '{:+.3f}')} | {iw.mean():+.3f} ({iw.max():+.3f}) | "
                     f"{fmt(ir, '{:+.3f}')} ({'–' if np.all(np.isnan(ir)) else f'{np.nanmin(ir):+.3f}'}) |")
    lines += ["", "Per shifted split: coverage / width ÷ kNN-CP's.", "",
              "| split | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for k in shift:
        lines.append(f"| {k[0]} | " + " | ".join(f"{mean(k, lab, 1):.2f} / {mean(k, lab, 3):.2f}" for lab in labels) + " |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "shift_candidates.md"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
