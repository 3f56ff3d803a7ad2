"""Sites of the zero-shot benchmark: CHGNet over the public DFT sets and the demo families, cached.

Featurizing with CHGNet costs about 0.25 s per 27-atom frame on this 2-core machine, so each
public file is **subsampled** (``n`` random frames, seeded; 200 by default) and every
featurized :class:`~core.sites.SiteTable` is cached as ``<cache>/<set>_<file>_<model>_n<n>_s<seed>.npz``
(``SiteTable.save``, no pickle). Used by :mod:`benchmarks.bench_zero_shot`.

``python -m benchmarks.zero_shot_data [--n 200]`` fills the cache (public sets with CHGNet
0.3.0 and, on their calibration files, the r2SCAN variant; the demo families whole).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("FLEXCAL_ZERO_SHOT_CACHE", "/work/notes/cache/chgnet"))
MODEL = "chgnet-0.3.0"
LEVEL_B_MODEL = "chgnet-r2scan"


def shared_data() -> Path | None:
    from core.teaching import shared_data_dir

    return shared_data_dir()


def cached_sites(tag: str, data, model: str = MODEL, *, n: int | None = 200, seed: int = 0, cache=CACHE, log=print):
    """Sites of ``data`` (a path or a demo family) under ``model``: ``n`` random frames (None = all)."""
    from core.sites import SiteTable
    from core.sources import load_sites

    path = Path(cache) / f"{tag}_{model}_n{n or 'all'}_s{seed}.npz"
    if path.is_file():
        return SiteTable.load(path)
    t0 = time.perf_counter()
    settings = {"max_structures": n, "subset_seed": seed} if n else {}
    sites = load_sites(str(data), model, batch_size=16, **settings)
    sites.meta["featurize_seconds"] = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    sites.save(path)
    if log:
        log(f"featurized {tag} with {model}: {sites.n_structures} frames, {len(sites)} sites, "
            f"{sites.meta['featurize_seconds']:.1f} s -> {path}")
    return sites


def public_sets(names=None, *, n: int = 200, seed: int = 0, model: str = MODEL, log=print) -> dict:
    """``{name: (calibration-distribution sites, {shift split: sites})}`` of the public sets present."""
    from core.studies import ZERO_SHOT_PUBLIC

    root = shared_data()
    if root is None:
        return {}
    out = {}
    for name in names or ZERO_SHOT_PUBLIC:
        cal_file, shifts = ZERO_SHOT_PUBLIC[name]
        if not (root / cal_file).is_file():
            continue
        cal = cached_sites(_tag(cal_file), root / cal_file, model, n=n, seed=seed, log=log)
        tests = {split: cached_sites(_tag(f), root / f, model, n=n, seed=seed + 1, log=log)
                 for split, f in shifts.items() if (root / f).is_file()}
        out[name] = (cal, tests)
    return out


def level_b_forces(name: str, *, n: int = 200, seed: int = 0, log=print) -> np.ndarray:
    """Forces (n_sites, 3) eV/Å of the r2SCAN CHGNet on the calibration file of public set ``name``."""
    from core.studies import ZERO_SHOT_PUBLIC

    cal_file = ZERO_SHOT_PUBLIC[name][0]
    sites = cached_sites(_tag(cal_file), shared_data() / cal_file, LEVEL_B_MODEL, n=n, seed=seed, log=log)
    return np.asarray(sites.forces_pred, dtype=np.float64), sites


def demo_sets(families=None, *, model: str = MODEL, log=print) -> dict:
    """``{family: (sites of its training config types, {other config type: sites})}``, all frames.

    None of a demo file's frames were seen by CHGNet, so its train/valid/calibration/test
    labels do not matter here: the calibration distribution is the family's training config
    types (e.g. ``md_300K``), every other config type is a shift split.
    """
    from core import demo
    from core.sources import select_by_column

    out = {}
    for family in families or demo.FAMILIES:
        sites = cached_sites(f"demo_{family}", family, model, n=None, log=log)
        train_types = list(demo.demo_info(family)["train_config_types"])
        present = sorted(set(sites.structure_info["config_type"].astype(str).tolist()))
        cal = select_by_column(sites, "config_type", train_types)
        out[family] = (cal, {t: select_by_column(sites, "config_type", [t]) for t in present if t not in train_types})
    return out


def _tag(relative: str) -> str:
    p = Path(relative)
    return f"{p.parent.name}_{p.stem}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="frames per public file (random, seeded)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from core.studies import ZERO_SHOT_PUBLIC

    public_sets(n=args.n, seed=args.seed)
    if shared_data() is not None:
        for name in ZERO_SHOT_PUBLIC:
            level_b_forces(name, n=args.n, seed=args.seed)
    demo_sets()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
