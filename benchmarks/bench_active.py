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

Outputs: ``benchmarks/results/active.md`` (tables), ``active_curves.csv`` (all rows) and
``active_learning.html`` (plotly learning curves, self-contained).

Run: ``.venv/bin/python -m benchmarks.bench_active [--seeds 0,1] [--rounds 3] [--picks 5]``.
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


def _strided(frames, n):
    if n >= len(frames):
        return list(frames)
    idx = np.linspace(0, len(frames) - 1, n).round().astype(int)
    return [frames[i] for i in idx]


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
        initial, start, "gfn2-xtb",
        strategies=tuple(args.strategies.split(",")),
        n_rounds=args.rounds, picks_per_round=args.picks, md_steps=args.md_steps, sample_every=args.sample_every,
        temperature_K=args.temperature, timestep_fs=0.5, seed=seed, workdir=workdir / f"seed{seed}",
        test_set=_strided(test_frames, args.n_test), calibrate_on=_strided(cal_frames, args.n_calibration),
        calibrator="flexible", heuristic="knn", refit=args.refit,
        train_kwargs=dict(TRAIN_KWARGS, max_num_epochs=args.epochs), progress=True,
    )
    res.curves.insert(0, "seed", seed)
    return res, time.perf_counter() - t0


def _fmt(x, nd=3):
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _table(df, cols) -> list[str]:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) if not isinstance(row[c], (str, np.bool_, bool)) else str(row[c]) for c in cols) + " |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (one full run each)")
    parser.add_argument("--strategies", default="calibrated,heuristic,random")
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
    parser.add_argument("--workdir", type=Path, default=None, help="keep models/picks here (default: a temp dir)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    import pandas as pd

    import mace.calculators  # noqa: F401  (mace before e3nn)
    import torch

    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    load_start = os.getloadavg()[0]
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="flexcal_al_")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
    frames_curves, walls = [], {}
    for seed in seeds:
        res, wall = run_one(seed, args, workdir)
        frames_curves.append(res.curves)
        walls[seed] = wall
        print(res.curves.to_string(), file=sys.stderr)
    curves = pd.concat(frames_curves, ignore_index=True)
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    curves.to_csv(out / "active_curves.csv", index=False)

    from core.active import labels_to_reach

    # targets: fractions of the initial (shared) model's test force MAE
    initial_mae = curves[curves["round"] == 0].groupby("seed")["force_mae"].first()
    fractions = (0.9, 0.8, 0.7, 0.6)
    reach_rows = []
    for seed in seeds:
        part = curves[curves["seed"] == seed]
        for frac in fractions:
            target = float(initial_mae[seed]) * frac
            hit = labels_to_reach(part, target)
            reach_rows.append({"seed": seed, "target": f"{frac:.0%} of initial ({target:.3f} eV/Å)", **hit})
    reach = pd.DataFrame(reach_rows)

    mean = (curves.groupby(["strategy", "round"], sort=False)
            [["n_labels", "force_mae", "force_rmse", "coverage", "mean_width", "spearman", "pick_force_mae"]]
            .mean().reset_index())

    # figures
    from core.figures import figures_to_html, plot_learning_curve

    figs = []
    for col, ylabel in (("force_mae", "test force MAE (eV/Å)"), ("pick_force_mae", "force MAE of the model on the frames it picked (eV/Å)"),
                        ("coverage", "test coverage of q_θ widths (target 0.9)"), ("spearman", "Spearman ρ(width, error) on test sites")):
        data = {}
        for strategy, part in mean.groupby("strategy", sort=False):
            part = part.dropna(subset=[col])
            if len(part):
                data[str(strategy)] = (part["n_labels"].to_numpy(float), part[col].to_numpy(float))
        if data:
            figs.append((ylabel, plot_learning_curve(data, ylabel)))
    html = figures_to_html(figs, [("mean over seeds", mean), ("labels to reach a target", reach)],
                           title="FlexCal: active learning in MD (demo ethanol, GFN2-xTB)")
    (out / "active_learning.html").write_text(html)

    import torch as _t

    cols = ["strategy", "round", "n_labels", "force_mae", "force_rmse", "coverage", "mean_width", "spearman",
            "structure_spearman", "n_candidates", "md_stopped_early", "pick_force_mae", "pick_error_max"]
    lines = [
        "# Active learning in MD: calibrated vs heuristic vs random",
        "",
        f"`python -m benchmarks.bench_active --seeds {args.seeds} --rounds {args.rounds} --picks {args.picks} "
        f"--md-steps {args.md_steps} --temperature {args.temperature:g} --epochs {args.epochs} --refit {args.refit}` · "
        f"{platform.machine()}, {os.cpu_count()} CPU cores visible (shared; 1-min load average {load_start:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end), torch {_t.__version__}, 1 thread; training subprocesses 1 thread.",
        "",
        "Setup: demo ethanol family, GFN2-xTB (tblite) reference. Initial training set: "
        f"{args.n_initial} md_300K frames; fixed calibration set: {args.n_calibration} md_300K frames "
        f"(q_θ refitted on it for every model); exploration: Langevin MD at {args.temperature:g} K, 0.5 fs, "
        f"{args.md_steps} steps per round from a 300 K frame, a candidate every {args.sample_every} steps; "
        f"test set: {args.n_test} md_600K frames. Each round every strategy labels {args.picks} frames and "
        f"retrains a small MACE ({json.dumps({k: v for k, v in TRAIN_KWARGS.items() if k != 'num_threads'} | {'max_num_epochs': args.epochs})}). "
        "Strategies: `calibrated` = max over sites of the conformalised q_θ width (FlexibleQuantile, defaults); "
        "`heuristic` = max over sites of the kNN descriptor distance to the training set (k = 10, "
        "standardised, per species); `random` = uniform. Picks are kept at least 2 candidates apart.",
        "",
        "`force_mae`, `force_rmse`: over test force components, eV/Å. `coverage`, `mean_width`, `spearman`: "
        "q_θ widths on the test sites (calibrated at 300 K, tested at 600 K: a shifted distribution). "
        "`pick_force_mae`: the *previous* model's force MAE on the frames picked in that round — how "
        "informative the picks were.",
        "",
        "## Labels needed to reach a test force-MAE target",
        "",
        "Smallest number of training labels at which a strategy's curve is at or below the target "
        "(– = not reached within the budget); targets are fractions of the shared initial model's MAE.",
        "",
    ]
    lines += _table(reach, list(reach.columns))
    lines += ["", "## Mean over seeds", ""]
    lines += _table(mean, list(mean.columns))
    for seed in seeds:
        part = curves[curves["seed"] == seed]
        lines += ["", f"## Seed {seed} (wall time {walls[seed] / 60:.1f} min)", ""]
        lines += _table(part, cols)
    lines += ["", "Figures: [active_learning.html](active_learning.html) (self-contained plotly). "
              "All rows: [active_curves.csv](active_curves.csv).", ""]
    (out / "active.md").write_text("\n".join(lines))
    print("\n".join(lines))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
