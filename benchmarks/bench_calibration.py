"""Calibration benchmark: quality against an oracle, and speed.

Run::

    .venv/bin/python -m benchmarks.bench_calibration [--quick] [--threads N] [--out PATH]
    .venv/bin/python -m benchmarks.bench_calibration --first-fit 3 [--against OTHER_CHECKOUT]

(a) Quality. Synthetic sites whose error law is known: e = sigma(X, Z) · chi_3 (the norm of a
    3-D Gaussian force error), so the oracle half-width at confidence 0.9 is
    sigma · chi_3.ppf(0.9). A "training set" (reference for knn/gmm) is drawn from the
    in-domain distribution; calibration and test sites mix in-domain and out-of-domain
    sites, and sigma grows with the distance from the training distribution and with the
    species. Each calibrator is fitted on the calibration structures and scored on the
    test structures: coverage, mean width / oracle mean width, Spearman(w, e) / Spearman
    of the oracle widths, miscalibration area (where levels are available).
(b) Speed. q_θ fit on 1e5 sites x 256 descriptors, q_θ predict on 1e6 sites,
    conformal_quantile on 1e8 float64 scores.

Writes a markdown table to ``benchmarks/results/calibration.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from core.sites import SiteTable

CONFIDENCE = 0.9
RESULTS = Path(__file__).resolve().parent / "results" / "calibration.md"


# ------------------------------------------------------------------------- data
def synthetic_sites(n_structures: int, atoms: int = 16, d: int = 16, seed: int = 0,
                    out_of_domain: float = 0.25) -> tuple[SiteTable, np.ndarray]:
    """Heteroscedastic sites with a known error law.

    Descriptors: in-domain sites x ~ N(0, I_d); a fraction ``out_of_domain`` of the
    *structures* are out of domain, x ~ N(0, 2.5^2 I_d). Species Li (3) / Cl (17), Cl
    twice as noisy. sigma = s_Z (0.02 + 0.03 |x|^2 / d + 0.02 tanh(x_0)^2), eV/Å.

    Returns
    -------
    sites : SiteTable
    sigma : ndarray of shape (n,)
        Per-site scale; the oracle width at confidence p is sigma · chi_3.ppf(p).
    """
    rng = np.random.default_rng(seed)
    n = n_structures * atoms
    ood = np.repeat(rng.random(n_structures) < out_of_domain, atoms)
    x = rng.normal(size=(n, d)) * np.where(ood, 2.5, 1.0)[:, None]
    species = rng.choice([3, 17], size=n)
    s_z = np.where(species == 17, 2.0, 1.0)
    sigma = s_z * (0.02 + 0.03 * np.sum(x ** 2, axis=1) / d + 0.02 * np.tanh(x[:, 0]) ** 2)
    errors = sigma * np.sqrt(rng.chisquare(3, size=n))
    sites = SiteTable.from_arrays(
        descriptors=x.astype(np.float32), errors=errors, species=species,
        structure_ids=np.repeat(np.arange(n_structures), atoms),
    )
    return sites, sigma


# ----------------------------------------------------------------------- quality
def quality(seeds=(0, 1, 2), n_cal=1500, n_test=1000, quick=False) -> list[dict]:
    from scipy import stats

    from core.evaluation import evaluate
    from core.metrics import CALIBRATION_LEVELS, coverage, miscalibration_area, spearman

    if quick:
        seeds, n_cal, n_test = (0,), 300, 200
    chi = np.sqrt(stats.chi2.ppf(CONFIDENCE, 3))
    chi_levels = np.sqrt(stats.chi2.ppf(CALIBRATION_LEVELS, 3))
    methods = ["split", "mondrian", "knn", "gmm", "flexible"]
    rows: dict[str, list[dict]] = {m: [] for m in methods + ["flexible (uncorrected)", "oracle"]}
    for seed in seeds:
        ref, _ = synthetic_sites(n_cal, seed=1000 + seed, out_of_domain=0.0)  # the potential's training set
        cal, _ = synthetic_sites(n_cal, seed=seed)
        test, sigma = synthetic_sites(n_test, seed=500 + seed)
        oracle = sigma * chi
        rho_oracle = spearman(test.errors, oracle)
        orc_levels = sigma[:, None] * chi_levels[None, :]
        rows["oracle"].append(dict(coverage=np.mean(test.errors <= oracle), width=1.0, rho=1.0,
                                   rho_abs=rho_oracle, mca=miscalibration_area(test.errors, orc_levels, CALIBRATION_LEVELS),
                                   fit_s=0.0))
        ev = evaluate(cal, {"test": test}, methods, confidence=CONFIDENCE, seed=seed, reference=ref)
        for m in methods:
            report = ev.report(m)
            variants = [(m, report["coverage"], ev.widths_of(m), report["spearman"], report["miscalibration_area"])]
            if m == "flexible":
                w = ev.calibrators[m].predict_uncorrected(test)
                variants.append(("flexible (uncorrected)", coverage(test.errors, w), w, spearman(test.errors, w), None))
            for name, cov, w, rho, mca in variants:
                rows[name].append(dict(
                    coverage=float(cov),
                    width=float(np.mean(w) / np.mean(oracle)),
                    rho=None if rho is None else rho / rho_oracle,
                    rho_abs=rho,
                    mca=mca,
                    fit_s=ev.fit_seconds[m],
                ))
    out = []
    for name, rs in rows.items():
        def agg(key):
            vals = [r[key] for r in rs if r[key] is not None]
            return (float(np.mean(vals)), float(np.std(vals))) if vals else (None, None)
        out.append({"method": name, **{k: agg(k) for k in ("coverage", "width", "rho", "rho_abs", "mca", "fit_s")}})
    return out, dict(seeds=list(seeds), n_cal_sites=n_cal * 16, n_test_sites=n_test * 16)


# ------------------------------------------------------------------------- speed
def speed(quick=False) -> list[tuple[str, str, str]]:
    from core.calibration import FlexibleQuantile, conformal_quantile

    rows = []
    n_fit, n_pred, n_q = (20_000, 100_000, 10_000_000) if quick else (100_000, 1_000_000, 100_000_000)
    d = 256
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_fit, d)).astype(np.float32)
    sigma = 0.05 * (1 + x[:, 0] ** 2 + 0.5 * np.tanh(x[:, 1] * x[:, 2]))
    sites = SiteTable.from_arrays(descriptors=x, errors=sigma * np.sqrt(rng.chisquare(3, n_fit)),
                                  species=rng.choice([3, 17], n_fit), structure_ids=np.repeat(np.arange(n_fit // 50), 50))
    t0 = time.perf_counter()
    q = FlexibleQuantile(confidence=CONFIDENCE, seed=0).fit(sites)
    t_fit = time.perf_counter() - t0
    rows.append((f"q_θ fit, {n_fit:.0e} sites x {d} descriptors (defaults)", f"{t_fit:.1f} s",
                 f"{len(q.history_)} epochs ({q.stop_reason_}, best {q.best_epoch_}), "
                 f"{t_fit / len(q.history_):.2f} s/epoch, batch {q.batch_size}, {q.levels_.size} levels"))
    del sites, x
    xp = rng.normal(size=(n_pred, d)).astype(np.float32)
    big = SiteTable.from_arrays(descriptors=xp, errors=np.zeros(n_pred), species=rng.choice([3, 17], n_pred),
                                structure_ids=np.repeat(np.arange(n_pred // 50), 50))
    t0 = time.perf_counter()
    w = q.predict(big)
    t_pred = time.perf_counter() - t0
    rows.append((f"q_θ predict, {n_pred:.0e} sites x {d} descriptors (float32 input)", f"{t_pred:.2f} s",
                 f"{n_pred / t_pred / 1e6:.2f} M sites/s; all {q.levels_.size} levels computed, conformal factor applied"))
    assert w.shape == (n_pred,)
    del big, xp
    scores = rng.exponential(size=n_q)
    t0 = time.perf_counter()
    v = conformal_quantile(scores, CONFIDENCE)
    t_q = time.perf_counter() - t0
    t0 = time.perf_counter()
    v2 = conformal_quantile(scores, CONFIDENCE, overwrite_input=True)
    t_q2 = time.perf_counter() - t0
    assert v == v2
    rows.append((f"conformal_quantile, {n_q:.0e} float64 scores", f"{t_q:.2f} s",
                 f"exact rank ceil((n+1)·0.9) via np.partition on a copy; in place (overwrite_input=True): {t_q2:.2f} s"))
    return rows


# First fit in a fresh process: what a `flexcal` command or a new kernel pays (imports included).
_FIRST_FIT = """
import time
from core.calibration import make_calibrator
from core.synthetic_demo import synthetic_site_table, synthetic_structures
sites = synthetic_site_table(synthetic_structures(24, seed=0))
t = time.perf_counter()
make_calibrator("flexible", hidden=(8,), max_epochs=5).fit(sites)
print(time.perf_counter() - t)
"""


def first_fit(runs: int, against: Path | None = None) -> int:
    """Seconds of the first q_θ fit (24 synthetic structures, 5 epochs) in a fresh interpreter, with
    what the fit itself imports (torch, and before core/calibration/adamw.py torch._dynamo),
    ``runs`` times, alternating with the checkout ``against`` when given (run with this
    interpreter on its own source tree). Prints, writes nothing."""
    import statistics
    import subprocess
    import sys

    roots = {"this": Path(__file__).resolve().parent.parent}
    if against is not None:
        roots["against"] = Path(against).resolve()
        if not (roots["against"] / "core" / "calibration").is_dir():
            print(f"--against: expected a FlexCal checkout (with core/calibration/), got {str(against)!r}",
                  file=sys.stderr)
            return 2
    times: dict[str, list[float]] = {name: [] for name in roots}
    for _ in range(runs):
        for name, root in roots.items():
            out = subprocess.run([sys.executable, "-c", _FIRST_FIT], cwd=root, capture_output=True, text=True,
                                 env=dict(os.environ, PYTHONPATH=str(root)), check=True)
            times[name].append(float(out.stdout.split()[-1]))
    for name, values in times.items():
        print(f"{name} ({roots[name]}): first q_θ fit " + ", ".join(f"{v:.2f}" for v in values)
              + f" s (median {statistics.median(values):.2f})")
    return 0


# ------------------------------------------------------------------------ report
def _fmt(pair, digits=3):
    m, s = pair
    if m is None:
        return "undefined"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if s else f"{m:.{digits}f}"


def render(quality_rows, qmeta, speed_rows, threads, load_before) -> str:
    import torch

    lines = [
        "# Calibration benchmark",
        "",
        f"`python -m benchmarks.bench_calibration` · {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores visible, torch {torch.__version__} with {threads} thread(s); "
        f"1-min load average at start: {load_before:.1f} (the machine is shared, so timings are upper bounds).",
        "",
        "## (a) Quality against an oracle (synthetic, known error law)",
        "",
        f"Errors e = sigma(X, Z)·chi_3; oracle width = sigma·chi_3.ppf(0.9). Confidence 0.9. "
        f"{qmeta['n_cal_sites']} calibration sites, {qmeta['n_test_sites']} test sites (16-atom structures, "
        f"25 % of structures out of domain), seeds {qmeta['seeds']} (mean ± sd). knn/gmm use an in-domain "
        "\"training set\" as reference. `width / oracle` = mean width over the oracle's mean width; "
        "`ρ / oracle ρ` = Spearman(w, e) over the oracle's Spearman(w, e) (1 = as informative as the true sigma); "
        "`MCA` = miscalibration area on 0.05..0.95.",
        "",
        "| method | coverage | width / oracle | ρ / oracle ρ | Spearman ρ | MCA | fit (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in quality_rows:
        lines.append(f"| {r['method']} | {_fmt(r['coverage'])} | {_fmt(r['width'])} | {_fmt(r['rho'])} | "
                     f"{_fmt(r['rho_abs'])} | {_fmt(r['mca'])} | {_fmt(r['fit_s'], 1)} |")
    lines += ["", "## (b) Speed", "", "| task | time | notes |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in speed_rows]
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--first-fit", type=int, default=0, metavar="N",
                        help="only: the first q_θ fit in a fresh process, N times (prints; imports included)")
    parser.add_argument("--against", type=Path, help="with --first-fit: another checkout, run alternately")
    args = parser.parse_args(argv)
    if args.first_fit:
        return first_fit(args.first_fit, args.against)
    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    qrows, qmeta = quality(quick=args.quick)
    print(f"quality done in {time.perf_counter() - t0:.0f} s", flush=True)
    srows = [] if args.skip_speed else speed(quick=args.quick)
    text = render(qrows, qmeta, srows, args.threads, load)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
