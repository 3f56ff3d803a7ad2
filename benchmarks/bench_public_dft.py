"""Calibration quality on public DFT datasets (``../shared/data``): 3BPA, acac, HEA25.

For each dataset a small MACE is trained here on a seeded subset of the low-temperature
training frames (the foundation model cannot be downloaded offline), every other frame is
featurized with it, the calibrators are fitted on held-out frames of the training
distribution, and tested on

* 3BPA: held-out 300 K frames (in-domain) and the 300/600/1200 K ``train_mixedT`` frames;
* acac: held-out 300 K frames, ``test_MD_300K``, ``test_MD_600K`` and ``train_600K``
  (``test_H_transfer`` and ``test_dihedral`` carry energies only, no forces, so per-atom force
  calibration cannot be scored on them);
* HEA25 excerpt (33 periodic cells, 25 elements): in-domain split only.

Usage::

    .venv/bin/python -m benchmarks.bench_public_dft [--quick] [--workdir DIR]

Writes ``benchmarks/results/public_dft.md`` and one CSV per dataset beside it.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
METHODS = ("split", "mondrian", "force", "knn", "gmm", "flexible", "flexible-ood")
COLUMNS = ["split", "label", "coverage", "mean_width", "width_ratio", "spearman", "spearman_ideal",
           "auroc", "miscalibration_area", "worst_species_coverage", "structure_spearman"]


def shared_data() -> Path:
    path = Path(os.environ.get("FLEXCAL_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        raise SystemExit(f"public data not found at {path} (set FLEXCAL_SHARED_DATA)")
    return path


def _subset(dataset, n, rng):
    n = min(n, len(dataset))
    return dataset.subset(np.sort(rng.choice(len(dataset), size=n, replace=False)))


def _featurize(dataset, potential, cache):
    from core.featurize import featurize

    return featurize(dataset, potential, batch_size=16, cache_dir=cache, progress=True)


def run_dataset(name, train_file, test_files, *, n_train, n_valid, n_cal, n_test, epochs, workdir, seed=0):
    """Train, featurize and run the unseen-environment study on one public dataset."""
    from core.data import read_dataset
    from core.potentials import load_potential
    from core.studies import run_in_domain, run_unseen
    from core.training import train_mace

    rng = np.random.default_rng(seed)
    base = read_dataset(train_file)
    perm = rng.permutation(len(base))
    n_pool = min(n_cal, len(base) - n_train - n_valid)
    train = base.subset(np.sort(perm[:n_train]))
    valid = base.subset(np.sort(perm[n_train:n_train + n_valid]))
    pool = base.subset(np.sort(perm[n_train + n_valid:n_train + n_valid + n_pool]))

    t0 = time.perf_counter()
    model = train_mace(train.structures, valid.structures, Path(workdir) / name, name=name, seed=seed,
                       max_num_epochs=epochs, num_channels=32, r_max=4.5, progress=None)
    t_train = time.perf_counter() - t0
    potential = load_potential(str(model), dtype="float64")
    cache = Path(workdir) / "cache"
    t0 = time.perf_counter()
    reference = _featurize(train, potential, cache)
    cal = _featurize(pool, potential, cache)
    tests = {}
    for label, path in test_files.items():
        tests[label] = _featurize(_subset(read_dataset(path), n_test, rng), potential, cache)
    t_feat = time.perf_counter() - t0
    t0 = time.perf_counter()
    if tests:
        table = run_unseen(cal, tests, methods=METHODS, confidence=0.9, seed=seed, reference=reference,
                           in_domain_fraction=0.5, dataset=name)
    else:
        table = run_in_domain(cal, methods=METHODS, confidence=0.9, seed=seed, reference=reference,
                              test_fraction=0.5, dataset=name)
    t_cal = time.perf_counter() - t0
    mae = {k: float(np.mean(v.errors)) for k, v in {"train": reference, "calibration": cal, **tests}.items()}
    return table, dict(train_s=t_train, featurize_s=t_feat, calibrate_s=t_cal, n_train=len(train),
                       n_cal_pool=len(pool), mean_error=mae)


def _fmt(v):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def to_markdown(table) -> str:
    cols = [c for c in COLUMNS if c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table[cols].iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer frames and epochs (a smoke run)")
    parser.add_argument("--workdir", default="/tmp/flexcal-bench-public")
    parser.add_argument("--only", nargs="*", default=None, help="datasets to run (3bpa acac hea25)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    data = shared_data()
    q = args.quick
    specs = {
        "3bpa": dict(train_file=data / "3bpa/train_300K.xyz",
                     test_files={"mixedT (300/600/1200 K)": data / "3bpa/train_mixedT.xyz"},
                     n_train=60 if q else 100, n_valid=10 if q else 20, n_cal=120 if q else 380,
                     n_test=60 if q else 300, epochs=8 if q else 30),
        "acac": dict(train_file=data / "acac/train_300K.xyz",
                     test_files={"test_MD_300K": data / "acac/test_MD_300K.xyz",
                                 "test_MD_600K": data / "acac/test_MD_600K.xyz",
                                 "train_600K": data / "acac/train_600K.xyz"},
                     n_train=60 if q else 100, n_valid=10 if q else 20, n_cal=120 if q else 380,
                     n_test=60 if q else 200, epochs=8 if q else 30),
        "hea25": dict(train_file=data / "hea25/hea25_excerpt.xyz", test_files={},
                      n_train=14, n_valid=3, n_cal=16, n_test=0, epochs=8 if q else 40),
    }
    chosen = args.only or list(specs)
    out = ["# Public DFT datasets: calibration of a small MACE trained here", "",
           "`python -m benchmarks.bench_public_dft" + (" --quick" if q else "") + "` · confidence 0.9 · "
           "calibrators fitted on held-out frames of the training distribution (half of them kept as the "
           "`in-domain` test split); knn/gmm use the model's training frames as reference. Widths and "
           "errors in eV/Å; `width_ratio` is mean width over global split CP's.", ""]
    for name in chosen:
        spec = specs[name]
        print(f"== {name}", flush=True)
        table, facts = run_dataset(name, workdir=args.workdir, **spec)
        RESULTS.mkdir(parents=True, exist_ok=True)
        table.to_csv(RESULTS / f"public_{name}.csv", index=False)
        out += [f"## {name}", "",
                f"MACE (32 channels, L=0, 2 layers, r_max 4.5 Å) trained on {facts['n_train']} frames in "
                f"{facts['train_s']:.0f} s; featurizing {facts['featurize_s']:.0f} s; all calibrators "
                f"{facts['calibrate_s']:.0f} s. Mean force-error norm (eV/Å): "
                + ", ".join(f"{k} {v:.3f}" for k, v in facts["mean_error"].items()) + ".", "",
                to_markdown(table), ""]
        (RESULTS / "public_dft.md").write_text("\n".join(out))
    print((RESULTS / "public_dft.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
