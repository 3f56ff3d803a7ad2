"""Benchmark: active learning in MD, calibrated vs heuristic vs random selection (METHOD §5.4).

Setup (demo molecule family, ethanol, GFN2-xTB reference):

* initial training set: ``--n-initial`` md_300K frames of the demo set's "train" split (evenly
  strided, so they are not consecutive MD frames);
* calibration set: ``--n-calibration`` md_300K frames of the "calibration" split (fixed,
  never trained on; q_θ and kNN-CP are refitted on it for every new model);
* exploration: Langevin MD at ``--temperature`` K (600 K by default: hotter than the
  training data, so the model must learn new environments) from a 300 K frame;
* test set: ``--n-test`` md_600K frames of the demo set (GFN2-xTB labels, never picked);
* each round every strategy picks ``--picks`` frames from its own MD, labels them with
  GFN2-xTB (tblite) and retrains a small MACE from scratch (``core.training.train_mace``).

Outputs: ``benchmarks/results/active.md`` (tables), ``active_curves.csv`` (all rows), PNG
figures, and ``active_learning.html`` (self-contained plotly report) in the system temp folder,
outside the repository (it inlines the 4.8 MB plotly.js bundle).

Run: ``.venv/bin/python -m benchmarks.bench_active [--seeds 0,1] [--rounds 3] [--picks 5]``
(about 15 min per seed on two busy cores); ``--from-csv FILE...`` rebuilds the report from
saved curves. Quickest smoke run (a minute or two; writes outside the repository)::

    .venv/bin/python -m benchmarks.bench_active --seeds 0 --strategies calibrated,random --rounds 1 \\
        --picks 2 --md-steps 10 --n-initial 6 --n-calibration 8 --n-test 4 --epochs 1 --output-dir /tmp/al
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS_DIR = ROOT / "benchmarks" / "results"

#: small MACE settings for the refits (seconds to a minute each on 2 busy cores)
TRAIN_KWARGS = dict(r_max=4.5, num_channels=16, max_L=0, num_interactions=2, correlation=2,
                    max_num_epochs=40, batch_size=4, lr=0.01, num_threads=1)


STRATEGIES_DEFAULT = "calibrated,heuristic,random"


def _strided(frames, n):
    if n >= len(frames):
        return list(frames)
    idx = np.linspace(0, len(frames) - 1, n).round().astype(int)
    return [frames[i] for i in idx]


def make_config(seed: int, args):
    """The loop's settings for one seed (:class:`core.active.ActiveLearningConfig`)."""
    from core.active import ActiveLearningConfig

    return ActiveLearningConfig(
        strategies=tuple(args.strategies.split(",")), n_rounds=args.rounds, picks_per_round=args.picks,
        md_steps=args.md_steps, sample_every=args.sample_every, temperature_K=args.temperature, timestep_fs=0.5,
        seed=seed, calibrator="flexible", heuristic="knn", refit=args.refit,
        update_calibrator=not args.no_update, train_kwargs=dict(TRAIN_KWARGS, max_num_epochs=args.epochs),
    )


def run_one(seed: int, args, workdir: Path):
    from core import demo
    from core.active import run_active_learning

    train_frames = demo.demo_frames("molecule", split="train", config_type="md_300K")
    cal_frames = demo.demo_frames("molecule", split="calibration", config_type="md_300K")
    test_frames = demo.demo_frames("molecule", split="test", config_type="md_600K")
    # a different initial subset per seed (rotating the stride), the same calibration/test sets
    rot = train_frames[seed:] + train_frames[:seed]
    initial = _strided(rot, args.n_initial)
    start = cal_frames[0]
    t0 = time.perf_counter()
    res = run_active_learning(
        initial, start, "gfn2-xtb", make_config(seed, args),
        test_set=_strided(test_frames, args.n_test), calibration_set=_strided(cal_frames, args.n_calibration),
        workdir=workdir / f"seed{seed}", progress=True,
    )
    res.curves.insert(0, "seed", seed)
    return res, time.perf_counter() - t0


def _fmt(x, nd=3):
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _table(df, cols) -> list[str]:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df[cols].astype(object).itertuples(index=False):
        lines.append("| " + " | ".join(str(v) if isinstance(v, (str, bool, np.bool_, int, np.integer)) else _fmt(float(v))
                                       for v in row) + " |")
    return lines


#: learning-curve columns averaged over seeds (those present: CSVs of older runs lack the update columns)
MEAN_COLUMNS = ["n_labels", "force_mae", "force_rmse", "coverage", "mean_width", "spearman", "structure_spearman",
                "pick_force_mae", "coverage_before_update", "coverage_after_update"]
SEED_COLUMNS = ["strategy", "round", "n_labels", "force_mae", "force_rmse", "coverage", "mean_width", "spearman",
                "structure_spearman", "coverage_before_update", "coverage_after_update", "n_candidates",
                "md_stopped_early", "pick_force_mae", "pick_error_max"]


def _reach_tables(curves, args, seeds, strategies):
    """(per-seed labels-to-target table, over-seeds summary) for each target fraction."""
    import pandas as pd

    from core.active import labels_to_reach

    initial = curves[curves["round"] == 0].groupby("seed")["force_mae"].first()
    budget = int(curves["n_labels"].max()) + args.picks
    reach_rows, summary_rows = [], []
    for frac in (float(t) for t in args.target_fractions.split(",")):
        row = {"target (× initial MAE)": f"{frac:.2f}"}
        summ = {"target (× initial MAE)": f"{frac:.2f}"}
        for strategy in strategies:
            hits = [labels_to_reach(curves[curves["seed"] == s], frac * float(initial[s])).get(strategy) for s in seeds]
            row[strategy] = " / ".join("–" if h is None else str(h) for h in hits)
            got = [h for h in hits if h is not None]
            # a seed that never reaches the target counts with the budget + one round (a lower bound)
            summ[strategy] = (f"{len(got)}/{len(hits)} seeds; mean ≥ "
                              f"{np.mean([h if h is not None else budget for h in hits]):.1f}")
        reach_rows.append(row)
        summary_rows.append(summ)
    return pd.DataFrame(reach_rows), pd.DataFrame(summary_rows)


def _wins(curves) -> tuple[str, str]:
    """Which strategy has the lowest test force MAE per (seed, round >= 1): overall and per round."""
    later = curves[curves["round"] > 0]
    best = later.loc[later.groupby(["seed", "round"])["force_mae"].idxmin(), "strategy"].value_counts()
    n_cmp = int(later.groupby(["seed", "round"]).ngroups)
    by_round = []
    for r, part in later.groupby("round"):
        counts = part.loc[part.groupby("seed")["force_mae"].idxmin(), "strategy"].value_counts()
        by_round.append(f"round {r}: " + ", ".join(f"{k} {int(v)}" for k, v in counts.items()))
    overall = ", ".join(f"{k} {int(v)}" for k, v in best.items()) + f" (of {n_cmp})"
    return overall, "; ".join(by_round)


def _figures(mean) -> list:
    from core.figures import plot_learning_curve

    figs = []
    for col, ylabel in (("force_mae", "test force MAE (eV/Å)"),
                        ("pick_force_mae", "force MAE of the previous model on the picked frames (eV/Å)"),
                        ("coverage", "test coverage of the q_θ widths (target 0.9)"),
                        ("coverage_after_update", "test coverage after update() with the round's picks"),
                        ("spearman", "Spearman ρ(width, error), test sites")):
        data = {}
        for strategy, part in mean.groupby("strategy", sort=False):
            part = part.dropna(subset=[col]) if col in part else part.iloc[:0]
            if len(part):
                data[str(strategy)] = (part["n_labels"].to_numpy(float), part[col].to_numpy(float))
        if data:
            figs.append((ylabel + " — mean over seeds", plot_learning_curve(data, ylabel)))
    return figs


def _save_pngs(figs, out: Path) -> list[tuple[str, str]]:
    """The first two figures as PNGs through headless chromium (as bench_demo_studies does)."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    try:
        from benchmarks.bench_demo_studies import save_png
    except ImportError:  # pragma: no cover - the other benchmark is absent
        save_png = None
    pngs = []
    for k, (title, fig) in enumerate(figs[:2]):
        name = ("active_force_mae.png", "active_pick_error.png")[k]
        problem = save_png(fig, out / "figures" / name) if save_png is not None else "no PNG renderer"
        if problem is None:
            pngs.append((title, name))
        else:
            print(f"[bench_active] {name}: {problem}", file=sys.stderr)
    return pngs


def _header(args, seeds, load_start: float) -> list[str]:
    import torch

    train = {k: v for k, v in TRAIN_KWARGS.items() if k != "num_threads"} | {"max_num_epochs": args.epochs}
    return [
        "# Active learning in MD: calibrated vs heuristic vs random",
        "",
        f"`python -m benchmarks.bench_active --seeds {','.join(map(str, seeds))} --rounds {args.rounds} --picks {args.picks} "
        f"--md-steps {args.md_steps} --temperature {args.temperature:g} --epochs {args.epochs} --refit {args.refit}"
        f"{'' if args.strategies == STRATEGIES_DEFAULT else ' --strategies ' + args.strategies}"
        f"{' --no-update' if args.no_update else ''}` · "
        f"{platform.machine()}, {os.cpu_count()} CPU cores visible (shared with other jobs; 1-min load average "
        f"{load_start:.1f} when the report was written), torch {torch.__version__}, 1 thread; training subprocesses "
        "1 thread each.",
        "",
        "Setup: demo ethanol family, GFN2-xTB (tblite) reference. Initial training set: "
        f"{args.n_initial} md_300K frames (a different evenly strided subset per seed); fixed calibration set: "
        f"{args.n_calibration} md_300K frames (q_θ refitted on it for every model); exploration: Langevin MD at "
        f"{args.temperature:g} K, 0.5 fs, {args.md_steps} steps per round from a 300 K frame, a candidate every "
        f"{args.sample_every} steps; test set: {args.n_test} md_600K frames (never picked). Each round every strategy "
        f"labels {args.picks} frames and retrains a small MACE from scratch ({json.dumps(train)}). "
        "Strategies: `calibrated` = max over sites of the conformalised q_θ width (FlexibleQuantile, defaults); "
        "`heuristic` = max over sites of the kNN descriptor distance to the current training set (k = 10, "
        "standardised, per species); `random` = uniform. Picks are kept at least 2 candidates apart. Round 0 is "
        "the shared initial model.",
        "",
        "Columns: `force_mae`, `force_rmse` over test force components (eV/Å); `coverage`, `mean_width` (eV/Å), "
        "`spearman`, `structure_spearman` of the q_θ widths on the test sites (calibrated at 300 K, tested at "
        "600 K: a shifted distribution); `pick_force_mae`: the *previous* model's force MAE on the frames picked "
        "in that round (how informative the picks were); `coverage_before_update` / `coverage_after_update`: "
        "the previous model's test coverage before and after `calibrator.update()` with that round's picks "
        "(labelled 600 K frames it never trained on; recalibration from new labels).",
        "",
    ]


def report(curves, args, seeds, load_start: float, out: Path) -> str:
    """Write active.md, active_curves.csv and active_learning.html from the learning curves."""
    from core.figures import figures_to_html

    out.mkdir(parents=True, exist_ok=True)
    curves.to_csv(out / "active_curves.csv", index=False)
    strategies = list(dict.fromkeys(curves["strategy"]))
    reach, summary = _reach_tables(curves, args, seeds, strategies)
    mean_cols = [c for c in MEAN_COLUMNS if c in curves.columns]
    mean = curves.groupby(["strategy", "round"], sort=False)[mean_cols].mean().reset_index()
    mean["n_labels"] = mean["n_labels"].round().astype(int)
    initial = curves[curves["round"] == 0].groupby("seed")["force_mae"].first()
    rel = curves.assign(rel=curves["force_mae"] / curves["seed"].map(initial))
    rel_table = rel.pivot_table(index="round", columns="strategy", values="rel", aggfunc="mean")[strategies]
    rel_table = rel_table.reset_index()
    overall, by_round = _wins(curves)
    figs = _figures(mean)
    html = figures_to_html(figs, [("mean over seeds", mean), ("test force MAE / initial model's, mean over seeds", rel_table),
                                  ("labels to reach a target (per seed)", reach)],
                           title="FlexCal: active learning in MD (demo ethanol, GFN2-xTB)")
    html_path = Path(tempfile.gettempdir()) / "flexcal_active_learning.html"
    html_path.write_text(html)
    pngs = _save_pngs(figs, out)
    lines = _header(args, seeds, load_start)
    lines += ["## Labels needed to reach a test force-MAE target", "",
              "Targets are fractions of each seed's initial (shared) model's test force MAE. Cell = smallest number of "
              "training labels (initial + picked) at which that seed's curve is at or below the target (– = not "
              "reached within the budget; no interpolation between rounds).", "",
              f"Per seed ({' / '.join(map(str, seeds))}):", ""]
    lines += _table(reach, list(reach.columns))
    lines += ["", "Over seeds (a seed that never reaches the target counts as budget + one round, so the mean is "
              "a lower bound):", ""]
    lines += _table(summary, list(summary.columns))
    lines += ["", "Test force MAE relative to the initial model, mean over seeds (lower is better):", ""]
    lines += _table(rel_table, list(rel_table.columns))
    lines += ["", f"Lowest test force MAE among the strategies, counted over (seed, round ≥ 1): {overall}; "
              f"per round, seeds won: {by_round}.", ""]
    lines += ["## Mean over seeds", ""]
    lines += _table(mean, list(mean.columns))
    seed_cols = [c for c in SEED_COLUMNS if c in curves.columns]
    for seed in seeds:
        part = curves[curves["seed"] == seed]
        minutes = float(part["seconds"].sum()) / 60
        lines += ["", f"## Seed {seed} (rounds took {minutes:.1f} min in all, on the shared machine)", ""]
        lines += _table(part, seed_cols)
    lines += ["", "## Figures", ""]
    lines += [f"![{title}](figures/{name})" for title, name in pngs]
    lines += ["", "The interactive plotly report (all curves of the mean over seeds) is written to the "
              "system temp folder as `flexcal_active_learning.html` when the benchmark runs. "
              "All rows: [active_curves.csv](active_curves.csv).", ""]
    text = "\n".join(lines)
    (out / "active.md").write_text(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds (one full run each)")
    parser.add_argument("--strategies", default=STRATEGIES_DEFAULT)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--picks", type=int, default=5)
    parser.add_argument("--md-steps", type=int, default=200)
    parser.add_argument("--sample-every", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=600.0)
    parser.add_argument("--n-initial", type=int, default=8)
    parser.add_argument("--n-calibration", type=int, default=40)
    parser.add_argument("--n-test", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=TRAIN_KWARGS["max_num_epochs"])
    parser.add_argument("--refit", default="retrain", choices=("retrain", "finetune"))
    parser.add_argument("--no-update", action="store_true",
                        help="skip calibrator.update() with each round's picks (the coverage_*_update columns)")
    parser.add_argument("--target-fractions", default="0.55,0.5,0.45,0.4",
                        help="force-MAE targets as fractions of each seed's initial model's test MAE")
    parser.add_argument("--from-csv", type=Path, nargs="*", default=None,
                        help="rebuild the report from saved active_curves.csv file(s) instead of running")
    parser.add_argument("--workdir", type=Path, default=None, help="keep models/picks here (default: a temp dir)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    import pandas as pd

    from core.potentials.mace_foundation import mace_modules

    mace_modules()  # mace before e3nn, its environment change contained
    import torch

    torch.set_num_threads(1)
    if args.from_csv:
        curves = pd.concat([pd.read_csv(p) for p in args.from_csv], ignore_index=True)
        curves = curves.sort_values(["seed"], kind="stable").reset_index(drop=True)
        seeds = sorted(int(s) for s in curves["seed"].unique())
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
        tmp = None
        if args.workdir is None:
            tmp = tempfile.TemporaryDirectory(prefix="flexcal_al_")
            workdir = Path(tmp.name)
        else:
            workdir = args.workdir
        parts = []
        for seed in seeds:
            res, _ = run_one(seed, args, workdir)
            parts.append(res.curves)
            print(res.curves.to_string(), file=sys.stderr)
        curves = pd.concat(parts, ignore_index=True)
        if tmp is not None:
            tmp.cleanup()
    print(report(curves, args, seeds, os.getloadavg()[0], args.output_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
