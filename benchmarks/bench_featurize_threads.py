"""Benchmark: featurizing with batches on one thread vs several (``featurize(..., threads=N)``).

Each embedded demo family's dataset through its demo MACE model (float64), batches as the app
cuts them (8 structures / 512 atoms), one torch intra-op thread (the app's setting): ``threads=1``
and ``threads=N`` alternately, ``--repeats`` times each after one warm-up pass; wall and CPU
seconds (mean and min) and whether every array of the two tables is equal bit for bit.

Run: ``.venv/bin/python -m benchmarks.bench_featurize_threads [--repeats 5] [--threads 2]``.
Writes ``benchmarks/results/featurize_threads.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "featurize_threads.md"
ARRAYS = ("forces_pred", "descriptors", "errors")


def measure(family: str, repeats: int, threads: int) -> dict:
    """Times of ``threads=1`` and ``threads=threads`` on one demo family, alternating."""
    from app.job import FEATURIZE_BATCH, FEATURIZE_MAX_ATOMS, torch_threads
    from core.featurize import featurize
    from core.potentials import load_potential
    from core.sources import resolve_data

    dataset, _ = resolve_data(family)
    potential = load_potential(f"demo:{family}")
    settings = dict(batch_size=FEATURIZE_BATCH, max_batch_atoms=FEATURIZE_MAX_ATOMS)
    times: dict[int, list[tuple[float, float]]] = {1: [], threads: []}
    tables = {}
    with torch_threads(1):
        featurize(dataset.structures, potential, **settings)  # warm-up: first-call costs out of the timing
        for _ in range(repeats):
            for n in (1, threads):
                wall, cpu = time.perf_counter(), time.process_time()
                tables[n] = featurize(dataset.structures, potential, threads=n, **settings)
                times[n].append((time.perf_counter() - wall, time.process_time() - cpu))
    same = all(np.array_equal(getattr(tables[1], a), getattr(tables[threads], a)) for a in ARRAYS)
    return {"family": family, "sites": len(tables[1]), "structures": len(dataset.structures),
            "times": {n: np.array(t).tolist() for n, t in times.items()}, "identical": same}


def report(rows: list[dict], args, load_before: float) -> str:
    n = args.threads
    lines = [
        "# Featurizing with batches on several threads",
        "",
        f"`python -m benchmarks.bench_featurize_threads --repeats {args.repeats} --threads {n}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')}: {platform.machine()}, {os.cpu_count()} CPU cores visible, one torch "
        f"intra-op thread, float64, batches of 8 structures / 512 atoms (the app's); 1-min load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (shared cores: upper bounds). "
        f"`threads=1` and `threads={n}` alternate; seconds are the mean (min) of {args.repeats} runs each.",
        "",
        f"| demo | structures / sites | wall, 1 thread | wall, {n} threads | speed-up | CPU, 1 thread "
        f"| CPU, {n} threads | arrays equal bit for bit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        one, many = np.array(r["times"][1]), np.array(r["times"][n])
        lines.append(
            f"| {r['family']} | {r['structures']} / {r['sites']} | {one[:, 0].mean():.2f} ({one[:, 0].min():.2f}) "
            f"| {many[:, 0].mean():.2f} ({many[:, 0].min():.2f}) | {one[:, 0].mean() / many[:, 0].mean():.2f}x "
            f"| {one[:, 1].mean():.2f} | {many[:, 1].mean():.2f} | {'yes' if r['identical'] else '**no**'} |")
    lines += [
        "",
        "Reading: torch's kernels release Python's interpreter lock, so a second thread computes a batch "
        "while the first builds its graph or runs Python between kernels; the CPU column shows what the "
        "overlap costs (lock hand-overs). The app featurizes with two threads (`FLEXCAL_APP_FEATURIZE_THREADS`): "
        "its warm-up process runs while the server and the browser leave a core idle.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--families", nargs="+", default=["licl", "surface", "molecule"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads < 2 or args.repeats < 1:
        parser.error(f"--threads must be >= 2 and --repeats >= 1, got {args.threads} and {args.repeats}")
    load_before = os.getloadavg()[0]
    rows = []
    for family in args.families:
        rows.append(measure(family, args.repeats, args.threads))
        print(rows[-1]["family"], {k: np.mean(v, axis=0).round(2).tolist() for k, v in rows[-1]["times"].items()},
              "identical" if rows[-1]["identical"] else "DIFFERENT", flush=True)
    from core.io import atomic_write_text

    atomic_write_text(args.out, report(rows, args, load_before))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
