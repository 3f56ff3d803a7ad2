"""The studies of METHOD §5.1–5.3 on the three embedded demo families (licl, surface, molecule).

For each family (``core.demo``; data and models in ``datasets/``):

* **in-domain** — calibrate on the ``calibration`` frames of the config types the demo model
  was trained on, test on the ``test`` frames of those types (the file's own split, by
  structure);
* **unseen** — the same calibration, tested on each config type the model never saw (licl
  ``hot_1000K``/``defect_600K``, surface ``ads_600K``/``highcov_300K``, molecule
  ``md_600K``/``md_900K``), one split per type;
* **transfer** (molecule only) — GFN2-xTB labels (``REF_*``, level A) vs GFN1-xTB labels of the
  same frames (``REF2_*``, level B) on the ``md_300K`` calibration + test frames, split 50/50
  by structure (``core.studies.run_transfer``): A, ``flexible (shift)``, B budgets 5 %/10 %,
  A + B budget rescale, B 100 %.

Every calibrator the demo supports runs: flexible (q_θ), flexible-ood (q_θ widened off the
calibration domain), split, knn, gmm, force, mondrian. The
committee method is not run: each family ships one demo model, so there is no committee force
spread.

The sites are assembled exactly as ``flexcal study`` does (``core.sources``: the family's demo
model, the ``train``/``valid`` frames excluded from calibration, the ``train`` frames as the
knn/gmm reference); the studies are ``core.evaluation.evaluate`` / ``core.studies.run_unseen``
/ ``run_transfer``. Featurization is cached in ``.flexcal_cache/`` (git-ignored).

Usage::

    .venv/bin/python -m benchmarks.bench_demo_studies [--families licl surface molecule]
        [--bootstrap 200] [--cache-dir DIR] [--no-figures]

Writes ``benchmarks/results/demo_studies.md``, ``demo_<family>_<study>.csv`` beside it and PNG
figures in ``benchmarks/results/figures/`` (rendered with headless chromium when
``/usr/bin/chromium`` or ``chromium`` on PATH exists; skipped with a note otherwise).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the machine is shared: one BLAS thread

import argparse
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = RESULTS / "figures"
FAMILIES = ("licl", "surface", "molecule")
METHODS = ("flexible", "flexible-ood", "split", "knn", "gmm", "force", "mondrian")  # no committee in the demo
BASELINES = ("split", "knn", "gmm", "force", "mondrian")
CONFIDENCE = 0.9
SEED = 0
BUDGETS = (0.05, 0.10)
COLUMNS = ["split", "label", "coverage", "mean_width", "width_ratio", "spearman", "spearman_ideal",
           "auroc", "miscalibration_area", "worst_species_coverage"]
PNG_LIMIT = 200_000  # bytes; figures that come out larger are reported


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- sites
def family_sites(family: str, cache_dir: Path):
    """(pool, reference, info) of a demo family: the sources module's demo rule (training frames out)."""
    from core.demo import demo_info
    from core.sources import demo_sites, exclude_training

    pool, reference, _ = exclude_training(demo_sites(family, cache_dir=cache_dir))
    return pool, reference, demo_info(family)


def family_splits(pool, info):
    """(calibration, in-domain test, {unseen config type: test}) of a demo pool."""
    from core.sources import select_by_column

    train_types = list(info["train_config_types"])
    in_domain = select_by_column(pool, "config_type", train_types)
    cal = select_by_column(in_domain, "split", ["calibration"])
    test = select_by_column(in_domain, "split", ["test"])
    present = list(dict.fromkeys(pool.structure_column("config_type").astype(str)))
    unseen = {t: select_by_column(pool, "config_type", [t]) for t in present if t not in train_types}
    return cal, test, unseen


# ----------------------------------------------------------------------------- studies
def run_family(family: str, cache_dir: Path, bootstrap: int, n_resplits: int) -> dict:
    """In-domain and unseen studies (and transfer for the molecule) of one family."""
    from core.evaluation import evaluate
    from core.sources import forces_from_file, relabel, select_by_column
    from core.studies import run_transfer, run_unseen

    t0 = time.perf_counter()
    pool, reference, info = family_sites(family, cache_dir)
    t_feat = time.perf_counter() - t0
    cal, test, unseen = family_splits(pool, info)
    say(f"[{family}] featurized in {t_feat:.0f} s: calibration {cal.n_structures} structures / {len(cal)} sites, "
        f"in-domain test {test.n_structures} / {len(test)}, unseen {', '.join(unseen)}")
    engine = dict(confidence=CONFIDENCE, seed=SEED, reference=reference, bootstrap=bootstrap,
                  log=lambda m: say(f"[{family}]   {m}"))
    common = dict(methods=METHODS, dataset=family, **engine)
    out: dict = {"family": family, "info": info, "featurize_s": t_feat, "tables": {}, "fitted": {},
                 "cache_hit": bool(pool.meta.get("cache_hit")),
                 "sizes": {"reference": (reference.n_structures, len(reference)), "calibration": (cal.n_structures, len(cal)),
                           "test": (test.n_structures, len(test)),
                           **{k: (v.n_structures, len(v)) for k, v in unseen.items()}},
                 "mean_error": {"calibration": float(np.mean(cal.errors)), "test": float(np.mean(test.errors)),
                                **{k: float(np.mean(v.errors)) for k, v in unseen.items()}}}

    t0 = time.perf_counter()
    ev = evaluate(cal, {"test": test}, METHODS, **engine)
    out["tables"]["in-domain"] = ev.table(study="in-domain", dataset=family)
    out["fitted"]["in-domain"] = ev.calibrators
    out["tables"]["unseen"] = run_unseen(cal, unseen, **common)
    if n_resplits:
        pool_in = select_by_column(pool, "config_type", list(info["train_config_types"]))  # calibration + test frames
        out["resplits"] = resplit_in_domain(family, pool_in, reference, n_resplits)
    if family == "molecule":
        path = info["path"]
        a_sites = select_by_column(pool, "config_type", list(info["train_config_types"]))  # calibration + test
        b_sites = relabel(a_sites, forces_from_file(a_sites, path, "REF2_forces"), label="REF2_forces")
        out["transfer_sizes"] = (a_sites.n_structures, len(a_sites))
        out["transfer_mean_error"] = {"A (GFN2)": float(np.mean(a_sites.errors)),
                                      "B (GFN1)": float(np.mean(b_sites.errors))}
        out["tables"]["transfer"] = run_transfer(a_sites, b_sites, test_fraction=0.5, budgets=BUDGETS, **common)
    out["study_s"] = time.perf_counter() - t0
    return out


def resplit_in_domain(family: str, pool_in, reference, n: int):
    """The CLI's in-domain study (``run_in_domain``, 50/50 random split by structure of the
    calibration + test frames) over ``n`` split seeds: how much of a single split's deviation
    from the target is the luck of the split."""
    import pandas as pd

    from core.studies import run_in_domain

    tables = []
    for split_seed in range(n):
        t = run_in_domain(pool_in, METHODS, CONFIDENCE, test_fraction=0.5, seed=SEED, reference=reference,
                          split_seed=split_seed, dataset=family)
        t.insert(2, "split_seed", split_seed)
        tables.append(t)
    say(f"[{family}]   {n} random in-domain re-splits done")
    return pd.concat(tables, ignore_index=True)


RESPLIT_COLUMNS = ["coverage", "mean_width", "width_ratio", "spearman", "auroc", "miscalibration_area",
                   "worst_species_coverage"]


def resplit_summary(raw):
    """label -> {column: (mean, sd)} over the re-splits (NaN-aware; undefined everywhere -> NaN)."""
    out = {}
    for label in dict.fromkeys(raw["label"]):
        sub = raw[raw["label"] == label]
        out[label] = {}
        for c in RESPLIT_COLUMNS:
            v = sub[c].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            out[label][c] = (float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0) if v.size else (math.nan, math.nan)
    return out


def resplit_markdown(raw) -> str:
    summ = resplit_summary(raw)
    lines = ["| label | " + " | ".join(RESPLIT_COLUMNS) + " |", "|---|" + "---:|" * len(RESPLIT_COLUMNS)]
    for label, vals in summ.items():
        cells = ["n/a" if math.isnan(m) else f"{m:.3f} ± {sd:.3f}" for m, sd in (vals[c] for c in RESPLIT_COLUMNS)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- markdown
def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, (float, np.floating)):
        return "∞" if math.isinf(v) else f"{v:.{digits}f}"
    return str(v)


def to_markdown(table) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * 2 + "---:|" * (len(COLUMNS) - 2)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in COLUMNS) + " |")
    notes = [(r["label"], r["split"], r["note"]) for _, r in table.iterrows() if isinstance(r["note"], str) and r["note"]]
    seen = set()
    for label, split, note in notes:
        if (label, note) in seen:
            continue
        seen.add((label, note))
        lines.append(f"\nNote — {label}: {note}")
    return "\n".join(lines)


def _row(table, label: str, split: str):
    sub = table[(table["label"] == label) & (table["split"] == split)]
    return None if sub.empty else sub.iloc[0]


def _ci(row, key: str) -> str:
    lo, hi = row.get(f"{key}_ci_lo"), row.get(f"{key}_ci_hi")
    if lo is None or hi is None or not np.isfinite(lo) or not np.isfinite(hi):
        return ""
    return f" [{lo:.2f}, {hi:.2f}]"


def _overlap(a, b, key: str) -> bool | None:
    keys = (f"{key}_ci_lo", f"{key}_ci_hi")
    if any(k not in a or k not in b for k in keys):
        return None
    if not all(np.isfinite([a[keys[0]], a[keys[1]], b[keys[0]], b[keys[1]]])):
        return None
    return not (a[keys[1]] < b[keys[0]] or b[keys[1]] < a[keys[0]])


def _best(table, split: str, key: str, labels=BASELINES):
    rows = [(lab, _row(table, lab, split)) for lab in labels]
    rows = [(lab, r) for lab, r in rows if r is not None and np.isfinite(r[key])]
    return max(rows, key=lambda p: p[1][key]) if rows else (None, None)


def _drop(before, after) -> str:
    d = after["coverage"] - before["coverage"]
    return f"{'down' if d < 0 else 'up'} {abs(d):.3f} from in-domain"


def family_summary(res: dict) -> list[str]:
    """Data-driven paragraphs: where q_θ beats or does not beat the baselines."""
    t_in, t_un = res["tables"]["in-domain"], res["tables"]["unseen"]
    fl, sp = _row(t_in, "flexible", "test"), _row(t_in, "split", "test")
    covs = {lab: _row(t_in, lab, "test")["coverage"] for lab in METHODS}
    lines = []
    q = res["fitted"]["in-domain"].get("flexible")
    train_note = ""
    if q is not None and hasattr(q, "best_epoch_"):
        train_note = (f" (q_θ's best epoch: {q.best_epoch_} of {len(q.history_)}, stopped by {q.stop_reason_})")
    # in-domain
    b_lab, b = _best(t_in, "test", "spearman")
    cmp_rho = "higher" if fl["spearman"] > b["spearman"] else "lower"
    ov = _overlap(fl, b, "spearman")
    ov_txt = "" if ov is None else (" — the by-structure 95 % bootstrap intervals overlap, so the gap is not resolved "
                                     "by this test set" if ov else " — the bootstrap intervals do not overlap")
    width_cmp = (f"{(1 - fl['width_ratio']) * 100:.0f} % narrower than" if fl["width_ratio"] < 1
                 else f"{(fl['width_ratio'] - 1) * 100:.0f} % wider than")
    lines.append(
        f"**In-domain.** Coverage of the {len(METHODS)} conformal calibrators is {min(covs.values()):.3f}–{max(covs.values()):.3f} "
        f"(target {CONFIDENCE:.2f}); q_θ {fl['coverage']:.3f}{_ci(fl, 'coverage')}, split CP {sp['coverage']:.3f}"
        f"{_ci(sp, 'coverage')}. q_θ's mean width {fl['mean_width']:.3f} eV/Å is {width_cmp} split CP's "
        f"({sp['mean_width']:.3f} eV/Å). Ranking: q_θ ρ = {fl['spearman']:.3f}{_ci(fl, 'spearman')} "
        f"(ideal {fl['spearman_ideal']:.3f}), AUROC {fl['auroc']:.3f}; the best baseline by ρ is {b_lab} "
        f"ρ = {b['spearman']:.3f}{_ci(b, 'spearman')}, AUROC {b['auroc']:.3f}, so q_θ's ρ is {cmp_rho} by "
        f"{abs(fl['spearman'] - b['spearman']):.3f}{ov_txt}{train_note}."
    )
    if "resplits" in res:
        summ = resplit_summary(res["resplits"])
        n = res["resplits"]["split_seed"].nunique()

        def ms(label, col):
            m, sd = summ[label][col]
            return f"{m:.3f} ± {sd:.3f}"

        rb_lab = max((lab for lab in BASELINES if np.isfinite(summ[lab]["spearman"][0])),
                     key=lambda lab: summ[lab]["spearman"][0])
        d_rho = summ["flexible"]["spearman"][0] - summ[rb_lab]["spearman"][0]
        sd_rho = math.hypot(summ["flexible"]["spearman"][1], summ[rb_lab]["spearman"][1])
        verdict = ("within one combined sd, i.e. a tie" if abs(d_rho) <= sd_rho
                   else ("ahead" if d_rho > 0 else "behind"))
        luck = ""
        me = res["mean_error"]
        if sp["coverage"] < CONFIDENCE - 0.02 and me["test"] > me["calibration"]:
            luck = (f" The file split's under-coverage is consistent with its test frames happening to have larger "
                    f"errors than its calibration frames (mean {me['test']:.3f} vs {me['calibration']:.3f} eV/Å); "
                    f"averaged over re-splits every method is at the target.")
        lines.append(
            f"Over {n} random 50/50 re-splits of the same calibration + test frames (`run_in_domain`, what "
            f"`flexcal study in-domain` does; mean ± sd): coverage q_θ {ms('flexible', 'coverage')}, split CP "
            f"{ms('split', 'coverage')}, kNN {ms('knn', 'coverage')}; width ratio q_θ "
            f"{ms('flexible', 'width_ratio')}, kNN {ms('knn', 'width_ratio')}; ρ q_θ {ms('flexible', 'spearman')} vs "
            f"best baseline {rb_lab} {ms(rb_lab, 'spearman')}: q_θ is {verdict} ({d_rho:+.3f}).{luck}"
        )
    # unseen
    parts = []
    for split in dict.fromkeys(t_un["split"]):
        f_u, s_u, k_u = _row(t_un, "flexible", split), _row(t_un, "split", split), _row(t_un, "knn", split)
        o_u = _row(t_un, "flexible-ood", split)
        cov_lab, cov_best = max(((lab, _row(t_un, lab, split)) for lab in METHODS),
                                key=lambda p: p[1]["coverage"] if np.isfinite(p[1]["coverage"]) else -1)
        rho_lab, rho_best = _best(t_un, split, "spearman", METHODS)
        err = res["mean_error"].get(split)
        k_in = _row(t_in, "knn", "test")
        if rho_lab == "flexible":
            others = [(lab, _row(t_un, lab, split)) for lab in BASELINES]
            others = [(lab, r) for lab, r in others if np.isfinite(r["spearman"])]
            nxt = max(others, key=lambda p: p[1]["spearman"]) if others else None
            rho_txt = f"highest ρ q_θ {f_u['spearman']:.3f}" + (f" (next {nxt[0]} {nxt[1]['spearman']:.3f})" if nxt else "")
        else:
            rho_txt = f"highest ρ {rho_lab} {rho_best['spearman']:.3f} (q_θ {f_u['spearman']:.3f})"
        parts.append(
            f"*{split}*: mean error ×{err / res['mean_error']['test']:.2f} of in-domain ({err:.3f} eV/Å), but mean "
            f"width ×{f_u['mean_width'] / fl['mean_width']:.2f} for q_θ and ×{k_u['mean_width'] / k_in['mean_width']:.2f} "
            f"for kNN (split CP ×1); coverage q_θ {f_u['coverage']:.3f} ({_drop(fl, f_u)}), split CP "
            f"{s_u['coverage']:.3f} ({_drop(sp, s_u)}), kNN {k_u['coverage']:.3f} ({_drop(k_in, k_u)}), "
            f"flexible-ood {o_u['coverage']:.3f} at width ratio {o_u['width_ratio']:.2f}; "
            f"highest coverage {cov_lab} {cov_best['coverage']:.3f} at width ratio {cov_best['width_ratio']:.2f}; "
            f"{rho_txt}"
        )
    flex_cov = [(_row(t_un, "flexible", s)["coverage"], _row(t_un, "split", s)["coverage"]) for s in dict.fromkeys(t_un["split"])]
    better = sum(f > s for f, s in flex_cov)
    lines.append(
        "**Unseen environments** (no method is guaranteed coverage off-distribution). " + "; ".join(parts) + ". "
        f"q_θ keeps more coverage than split CP on {better} of {len(flex_cov)} unseen config types."
    )
    return lines


def _budget_text(p: str, n_frames: int, c, w) -> str:
    lab = {m: f"{m}, A + B {p} rescale" for m in ("flexible", "split", "knn")}
    return (f"{p} ({n_frames} frames): q_θ {c(lab['flexible'])} at width {w(lab['flexible'])} eV/Å, split CP "
            f"{c(lab['split'])} at {w(lab['split'])}, kNN {c(lab['knn'])} at {w(lab['knn'])}")


def transfer_summary(res: dict) -> list[str]:
    t = res["tables"]["transfer"]
    me = res["transfer_mean_error"]

    def r(label):
        return _row(t, label, "B")

    def c(label):
        row = r(label)
        return "n/a" if row is None else f"{row['coverage']:.3f}"

    def w(label):
        row = r(label)
        return "n/a" if row is None else _fmt(float(row["mean_width"]))

    a_rows = [r(f"{m}, A") for m in METHODS] + [r("flexible (shift), A")]
    a_cov = [x["coverage"] for x in a_rows if x is not None]
    pct = [f"{100 * k:g}%" for k in BUDGETS]
    resc = {p: {m: r(f"{m}, A + B {p} rescale") for m in METHODS} for p in pct}
    lines = [
        f"**Transfer GFN2 → GFN1.** The model's error against B (mean {me['B (GFN1)']:.3f} eV/Å) is "
        f"×{me['B (GFN1)'] / me['A (GFN2)']:.1f} its error against A ({me['A (GFN2)']:.3f} eV/Å): the model was fitted "
        f"to GFN2, so calibrating on A mostly gets the scale wrong. Calibrated on A only, coverage of B is "
        f"{min(a_cov):.3f}–{max(a_cov):.3f} (q_θ {c('flexible, A')}, q_θ with shift weights "
        f"{c('flexible (shift), A')}, split CP {c('split, A')}, kNN {c('knn, A')}); shift weights cannot fix this "
        f"here, since A and B are the same structures (same descriptors, density ratio ≈ 1) and only the labels differ.",
        "With a budget of B labels, rescaling the A-fitted widths by one conformal factor from the budget "
        "(shape from A, scale from B) gives coverage "
        + "; ".join(_budget_text(p, r("split, B " + p)["n_cal_structures"], c, w) for p in pct)
        + ". q_θ refitted on the budget alone: " + ", ".join(c("flexible, B " + p) + f" ({p})" for p in pct) + ", "
        f"conservative because its conformal holdout is then a handful of frames. Full relabelling (B 100 %): q_θ "
        f"{c('flexible, B 100%')} at {w('flexible, B 100%')} eV/Å (ρ {r('flexible, B 100%')['spearman']:.3f}), split CP "
        f"{c('split, B 100%')} at {w('split, B 100%')} eV/Å, kNN {c('knn, B 100%')} at {w('knn, B 100%')} eV/Å "
        f"(ρ {r('knn, B 100%')['spearman']:.3f}).",
    ]
    same = [m for m in ("split", "knn", "gmm", "force")
            if all(r(f"{m}, B {p}") is not None and resc[p][m] is not None
                   and np.isclose(r(f"{m}, B {p}")["coverage"], resc[p][m]["coverage"])
                   and np.isclose(r(f"{m}, B {p}")["mean_width"], resc[p][m]["mean_width"]) for p in pct)]
    if same:
        lines.append(
            f"For {', '.join(same)} the `B k%` and `A + B k% rescale` rows are identical, as they must be: their "
            "heuristic u(X) does not depend on the labels, so rescaling the A fit by the budget's conformal "
            "factor is the same normalised CP as fitting on the budget. Mondrian (per-species factors) and q_θ "
            "differ; Mondrian fitted on the budget alone gives infinite widths (∞ in the table) to the species with "
            "too few budget sites for a 90 % conformal rank." if "mondrian" in METHODS else "")
    return lines


# ----------------------------------------------------------------------------- figures
def _chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        path = shutil.which(name) if not name.startswith("/") else (name if Path(name).exists() else None)
        if path:
            return path
    return None


def save_png(fig, path: Path, width: int = 1100, height: int = 560) -> str | None:
    """Render a plotly figure to PNG with headless chromium; returns a problem or None."""
    exe = _chromium()
    if exe is None:
        return "chromium not found"
    fig.update_layout(width=width, height=height)
    with tempfile.TemporaryDirectory(prefix="flexcal-fig-") as tmp:
        html = Path(tmp) / "figure.html"
        fig.write_html(html, include_plotlyjs=True, full_html=True, config={"displayModeBar": False, "staticPlot": True})
        text = html.read_text().replace("<head>", "<head><style>body{margin:0}</style>", 1)
        html.write_text(text)
        png = Path(tmp) / "figure.png"
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--screenshot={png}", f"--window-size={width},{height}", html.as_uri()]
        try:
            subprocess.run(cmd, check=True, timeout=180, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           cwd=tmp)
        except (subprocess.SubprocessError, OSError) as exc:
            return f"chromium failed: {exc}"
        if not png.is_file():
            return "chromium wrote no screenshot"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, path)
    size = path.stat().st_size
    return None if size <= PNG_LIMIT else f"{path.name} is {size / 1e3:.0f} kB (> {PNG_LIMIT / 1e3:.0f} kB)"


def _bars_frame(results, metric: str):
    """One row per (method, family: split) over the in-domain and unseen studies."""
    import pandas as pd

    rows = []
    for res in results:
        for study in ("in-domain", "unseen"):
            t = res["tables"][study]
            for _, r in t.iterrows():
                split = "test (in-domain)" if study == "in-domain" else r["split"]
                rows.append({"method": r["label"], "split": f"{res['family']}: {split}", metric: r[metric],
                             f"{metric}_lo": r.get(f"{metric}_ci_lo", np.nan),
                             f"{metric}_hi": r.get(f"{metric}_ci_hi", np.nan), "confidence": r["confidence"]})
    df = pd.DataFrame(rows)
    if df[f"{metric}_lo"].isna().all():
        df = df.drop(columns=[f"{metric}_lo", f"{metric}_hi"])
    else:  # plot_metric_bars draws hi - y / y - lo; undefined metric -> no bar, no error bar
        df[f"{metric}_lo"] = df[f"{metric}_lo"].fillna(df[metric])
        df[f"{metric}_hi"] = df[f"{metric}_hi"].fillna(df[metric])
    return df


def make_figures(results) -> tuple[list[tuple[str, str]], list[str]]:
    """(list of (title, relative png path), problems)."""
    import pandas as pd

    from core.figures import plot_metric_bars

    figs, problems = [], []
    cov = _bars_frame(results, "coverage")
    fig = plot_metric_bars(cov, "coverage")
    fig.update_layout(title="Coverage at 90 % by method: in-domain test and unseen config types (95 % by-structure bootstrap)",
                      xaxis_title="family: test split", yaxis_range=[0, 1.05])
    figs.append(("Coverage by method per split", "demo_coverage.png", fig))
    rho = _bars_frame(results, "spearman")
    fig = plot_metric_bars(rho, "spearman")
    fig.update_layout(title="Spearman ρ(width, error) by method per split (split CP: constant width, undefined)",
                      xaxis_title="family: test split")
    figs.append(("Spearman ρ by method per split", "demo_spearman.png", fig))
    mol = next((r for r in results if "transfer" in r["tables"]), None)
    if mol is not None:
        t = mol["tables"]["transfer"]
        rows = []
        for _, r in t.iterrows():
            method, variant = r["label"].split(", ", 1)
            rows.append({"method": method, "split": variant, "coverage": r["coverage"], "confidence": r["confidence"],
                         "coverage_lo": r.get("coverage_ci_lo", np.nan), "coverage_hi": r.get("coverage_ci_hi", np.nan)})
        df = pd.DataFrame(rows)
        if df["coverage_lo"].isna().all():
            df = df.drop(columns=["coverage_lo", "coverage_hi"])
        else:
            df["coverage_lo"] = df["coverage_lo"].fillna(df["coverage"])
            df["coverage_hi"] = df["coverage_hi"].fillna(df["coverage"])
        fig = plot_metric_bars(df, "coverage")
        fig.update_layout(title="Transfer GFN2 (A) → GFN1 (B), molecule: coverage of the B test sites by variant (95 % bootstrap)",
                          xaxis_title="calibration variant (B = GFN1 labels; k % = label budget)", yaxis_range=[0, 1.0])
        figs.append(("Transfer coverage by variant", "demo_transfer_coverage.png", fig))
    out = []
    for title, name, fig in figs:
        problem = save_png(fig, FIGURES / name)
        if problem and not (FIGURES / name).is_file():
            problems.append(f"{name}: {problem}")
            continue
        if problem:
            problems.append(problem)
        out.append((title, f"figures/{name}"))
    return out, problems


# ----------------------------------------------------------------------------- main
def sanity(results) -> tuple[list[str], list[str]]:
    """(failures, notes): every method's in-domain coverage averaged over the re-splits must be
    within 0.02 of the target (a conformal guarantee is marginal over the calibration draw, so
    one split may miss it by more); single-split misses beyond 3 binomial sd are noted."""
    failures, notes = [], []
    for res in results:
        if "resplits" in res:
            for label, vals in resplit_summary(res["resplits"]).items():
                m = vals["coverage"][0]
                if not abs(m - CONFIDENCE) <= 0.02:
                    failures.append(f"{res['family']} in-domain {label}: mean coverage over re-splits {m:.3f}")
        for _, r in res["tables"]["in-domain"].iterrows():
            tol = max(0.03, 3 * math.sqrt(CONFIDENCE * (1 - CONFIDENCE) / max(r["n_sites"], 1)))
            if not abs(r["coverage"] - CONFIDENCE) <= tol:
                notes.append(f"{res['family']} {r['label']} {r['coverage']:.3f}")
    return failures, notes


def _cache_text(results, cache_dir) -> str:
    hits = sum(r["cache_hit"] for r in results)
    where = Path(cache_dir)
    try:
        where = where.resolve().relative_to(ROOT)
    except ValueError:
        pass
    state = ("all from the cache" if hits == len(results) else
             "cold cache" if hits == 0 else f"{hits} of {len(results)} families from the cache")
    return f"{state}, cache dir `{where}`"


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--bootstrap", type=int, default=200,
                        help="by-structure bootstrap resamples for coverage/spearman 95 %% intervals (0 = none)")
    parser.add_argument("--cache-dir", default=str(ROOT / ".flexcal_cache"), help="featurization cache")
    parser.add_argument("--resplits", type=int, default=10,
                        help="random in-domain re-splits (run_in_domain) to show split-to-split spread (0 = none)")
    parser.add_argument("--no-figures", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    results = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    for family in args.families:
        res = run_family(family, Path(args.cache_dir), args.bootstrap, args.resplits)
        for study, table in res["tables"].items():
            table.to_csv(RESULTS / f"demo_{family}_{study.replace('-', '_')}.csv", index=False)
        if "resplits" in res:
            res["resplits"].to_csv(RESULTS / f"demo_{family}_in_domain_resplits.csv", index=False)
        results.append(res)
        say(f"[{family}] studies done in {res['study_s']:.0f} s")
    figures, fig_problems = ([], ["--no-figures"]) if args.no_figures else make_figures(results)
    failures, single_misses = sanity(results)
    total = time.perf_counter() - t_start

    md = ["# Demo studies: in-domain, unseen environments, transfer", "",
          f"`python -m benchmarks.bench_demo_studies` · families {', '.join(args.families)} · confidence "
          f"{CONFIDENCE} · seed {SEED} · {platform.machine()}, {os.cpu_count()} CPU cores visible (shared; 1-min load "
          f"average at start {load:.1f}), torch {torch.__version__} with {torch.get_num_threads()} thread · "
          f"**total wall time {total:.0f} s** (featurization incl. model loading "
          f"{sum(r['featurize_s'] for r in results):.0f} s, {_cache_text(results, args.cache_dir)}; "
          f"studies {sum(r['study_s'] for r in results):.0f} s, including {args.bootstrap} by-structure bootstrap "
          f"resamples per row and {args.resplits} in-domain re-splits per family).", "",
          "Setup, per family: the sites are built as `flexcal study` builds them (the family's demo MACE model; "
          "the model's `train`/`valid` frames are never calibrated on; its `train` frames are the knn/gmm "
          "reference). **In-domain**: calibrate on the `calibration` frames of the model's training config "
          "types, test on their `test` frames (the file's own by-structure split). **Unseen**: the same "
          "calibrators tested on each config type the model never saw (every frame of those types). "
          "**Transfer** (molecule only): see its section. Calibrators: `flexible` = q_θ (conformally corrected), "
          "`flexible-ood` = q_θ whose widths grow with the out-of-domain distance of a site (the shift "
          "benchmark's method), "
          "`split` = global split CP, `knn`/`gmm`/`force` = normalised CP, `mondrian` = per-species split CP. "
          "The `committee` method is **not available** for the demo (one model per family, no committee "
          "force spread), so it is not run. All calibrators use their defaults (q_θ on these ≈ 400–600 "
          "training sites uses mini-batches small enough for at least 16 optimiser steps per epoch).", "",
          "Columns (METHOD §4): coverage of e ≤ w (target 0.9); `mean_width` in eV/Å; `width_ratio` = mean width "
          "/ global split CP's on the same sites; `spearman` = ρ(width, error) over sites (undefined for a constant "
          "width: n/a); `spearman_ideal` = the ρ these widths would reach if errors followed them exactly; "
          "`auroc` = flagging the top-10 % errors by width; `miscalibration_area` on 0.05..0.95; "
          "`worst_species_coverage` = lowest per-element coverage. The CSVs (`demo_<family>_<study>.csv`) hold "
          "every column of `core.studies` plus the bootstrap intervals (`coverage_ci_lo/hi`, `spearman_ci_lo/hi`, "
          "95 %, resampling whole structures); `demo_<family>_in_domain_resplits.csv` holds every re-split row.",
          ""]
    if args.resplits:
        if failures:
            md += ["**Sanity check failed**: in-domain coverage averaged over the re-splits is more than 0.02 from "
                   "the target for:", ""] + [f"- {w}" for w in failures] + [""]
        else:
            md += [f"Sanity check: averaged over the {args.resplits} in-domain re-splits, every calibrator's coverage "
                   f"is within 0.02 of {CONFIDENCE}."
                   + (" On the file's single calibration/test split some are further off (" + "; ".join(single_misses)
                      + "): a conformal guarantee holds on average over the calibration draw, and with 35–75 "
                      "correlated frames per side one split can miss by several points (see each family's "
                      "re-split table)." if single_misses else ""), ""]
    if figures:
        md += ["## Figures", ""]
        md += [f"![{title}]({path})" for title, path in figures] + [""]
    if fig_problems:
        md += ["Figure notes: " + "; ".join(fig_problems), ""]
    for res in results:
        fam, info = res["family"], res["info"]
        s = res["sizes"]
        md += [f"## {fam}", "",
               f"{info['description']}; reference {info['reference']}; model trained on "
               f"{', '.join(info['train_config_types'])}. knn/gmm reference: {s['reference'][0]} training frames "
               f"({s['reference'][1]} sites). Calibration: {s['calibration'][0]} frames ({s['calibration'][1]} sites); "
               "test: " + ", ".join(f"{k} {v[0]} frames ({v[1]} sites)" for k, v in s.items()
                                    if k not in ("reference", "calibration")) + ". Mean force-error norm (eV/Å): "
               + ", ".join(f"{k} {v:.3f}" for k, v in res["mean_error"].items()) + ".", ""]
        md += [x for para in family_summary(res) for x in (para, "")]
        md += ["", f"### {fam} — in-domain", "", to_markdown(res["tables"]["in-domain"]), ""]
        if "resplits" in res:
            md += [f"In-domain over {res['resplits']['split_seed'].nunique()} random 50/50 re-splits of the "
                   f"calibration + test frames (mean ± sd; split seeds 0..{res['resplits']['split_seed'].max()}):", "",
                   resplit_markdown(res["resplits"]), ""]
        md += [
               f"### {fam} — unseen environments", "", to_markdown(res["tables"]["unseen"]), ""]
        if "transfer" in res["tables"]:
            n_s, n = res["transfer_sizes"]
            md += [f"### {fam} — transfer across levels of theory (GFN2-xTB → GFN1-xTB)", "",
                   f"`core.studies.run_transfer` on the {n_s} `md_300K` calibration + test frames ({n} sites), A = "
                   "GFN2-xTB forces (`REF_forces`, what the model was trained on), B = GFN1-xTB forces of the same "
                   "frames (`REF2_forces`). The frames are split 50/50 by structure (seed 0; a fresh split, not the "
                   "file's calibration/test one); every row is tested on the B labels of the test half (split `B`). "
                   "Variants: `<method>, A` = calibrated on A; `flexible (shift), A` = q_θ with density-ratio weights "
                   "against the B test descriptors; `<method>, B k%` = calibrated on B labels of k % of the "
                   "calibration frames only; `<method>, A + B k% rescale` = calibrated on A, widths rescaled by a "
                   "conformal factor from the same B budget; `<method>, B 100%` = calibrated on B labels of every "
                   "calibration frame. (`flexcal study transfer --dataset molecule` runs the same function on the "
                   "whole non-training pool, 600/900 K frames included.)", ""]
            md += [x for para in transfer_summary(res) for x in (para, "")]
            md += ["", to_markdown(res["tables"]["transfer"]), ""]
    (RESULTS / "demo_studies.md").write_text("\n".join(md))
    say(f"wrote {RESULTS / 'demo_studies.md'} in {total:.0f} s")
    for w in failures:
        say(f"SANITY CHECK FAILED: {w}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
