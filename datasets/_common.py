"""Helpers shared by the demo-data generators: seeded streams, splits, extxyz output."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DATASETS_DIR = Path(__file__).resolve().parent

#: Fractions of the model-training config types (the rest of the family is all "test").
SPLIT_FRACTIONS = (("train", 0.40), ("valid", 0.10), ("calibration", 0.25), ("test", 0.25))


def frame_rng(seed: int, stream: int, frame: int) -> np.random.Generator:
    """An independent generator per (seed, config-type stream, frame).

    Keying by frame means changing one config type's count never changes another's frames.
    """
    return np.random.default_rng([int(seed), int(stream), int(frame)])


def assign_splits(config_types: Sequence[str], train_types: Sequence[str], seed: int) -> list[str]:
    """Split labels by structure: train/valid/calibration/test within ``train_types``, else test.

    Within each training config type the frames are permuted with a seeded generator and cut
    by :data:`SPLIT_FRACTIONS` (rounded; at least one calibration and one test frame when the
    type has four or more frames).
    """
    config_types = list(config_types)
    splits = ["test"] * len(config_types)
    for k, ctype in enumerate(sorted(set(train_types))):
        idx = np.array([i for i, c in enumerate(config_types) if c == ctype], dtype=int)
        if len(idx) == 0:
            continue
        perm = np.random.default_rng([int(seed), 10_000 + k]).permutation(idx)
        n = len(perm)
        counts = [int(round(f * n)) for _, f in SPLIT_FRACTIONS]
        counts[-1] = n - sum(counts[:-1])
        start = 0
        for (name, _), c in zip(SPLIT_FRACTIONS, counts):
            for i in perm[start:start + c]:
                splits[i] = name
            start += c
    return splits


def write_frames(frames, path: Path) -> Path:
    """Write labelled frames as extxyz (no calculators; info/arrays only)."""
    from ase.io import write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for a in frames:
        a.calc = None
    write(path, list(frames), format="extxyz")
    return path


def cli(description: str, generate, default_out: str, argv=None) -> None:
    """Common command line: --seed, --out, --small (tiny counts for tests)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DATASETS_DIR / default_out)
    parser.add_argument("--small", action="store_true", help="a few frames per config type (tests)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    frames = generate(seed=args.seed, small=args.small, progress=True)
    write_frames(frames, args.out)
    n_atoms = sum(len(a) for a in frames)
    print(f"wrote {len(frames)} frames ({n_atoms} atoms) to {args.out} "
          f"in {time.perf_counter() - t0:.1f} s")


def single_thread():
    """Context manager: one OpenMP/BLAS thread for everything loaded (tblite included).

    tblite's multi-threaded reductions change the last bits of energies run to run; one
    thread makes the labels, and hence the MD trajectories they drive, bit-reproducible.
    """
    from threadpoolctl import threadpool_limits

    try:  # load tblite's OpenMP runtime first so that the limit reaches it
        import tblite.interface  # noqa: F401
    except ImportError:
        pass
    return threadpool_limits(limits=1)
