"""LiCl rock-salt crystal: thermally rattled supercells, plus hot and defected frames, GFN1-xTB.

Sampling: the 8-atom conventional rock-salt cell repeated 2x1x1 (16 atoms, periodic), lattice
constant 5.13 Å scaled by a linear thermal expansion of 4.4e-5 /K, a random symmetric strain,
and Gaussian displacements of an Einstein crystal whose per-component width grows as sqrt(T)
(0.10 Å for Li, 0.075 Å for Cl at 300 K). "defect_600K" removes one Li and one Cl (a neutral
Schottky pair, 14 atoms). No MD driver: periodic xTB costs ~0.5-1.5 s per 16-atom frame on one
core, so even a short ab-initio trajectory would exceed the demo's budget, and independent
Einstein samples give decorrelated frames for free.

Labels: GFN1-xTB (tblite, periodic), REF_energy/REF_forces. Not GFN2-xTB: its periodic SCF does
not converge for most hot frames (0/6 at 1000 K and 1/6 at 800 K, with Broyden damping 0.2-0.6,
an EEQ initial guess or 500 cycles; all 300/600 K frames converge but 600 K ones take ~3 s),
whereas GFN1-xTB converges on every frame at half the cost. One method for the whole family
keeps the unseen-environment study free of a change of reference.

    python -m datasets.generate_licl                 # -> datasets/licl_crystal.xyz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make `core` and `datasets` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets._common import assign_splits, cli, frame_rng, single_thread

A0 = 5.13              # Å, experimental room-temperature lattice constant
EXPANSION = 4.4e-5     # 1/K, linear thermal expansion
SIGMA_300K = {3: 0.10, 17: 0.075}   # Å per Cartesian component at 300 K
REPEAT = (2, 1, 1)

#: config_type -> (temperature K, strain std, vacancy pair?, frames)
COUNTS = {
    "crystal_300K": (300.0, 0.005, False, 80),
    "crystal_600K": (600.0, 0.005, False, 80),
    "hot_1000K": (1000.0, 0.01, False, 40),
    "defect_600K": (600.0, 0.005, True, 40),
}
SMALL_COUNTS = {k: (*v[:3], 2) for k, v in COUNTS.items()}
TRAIN_TYPES = ("crystal_300K", "crystal_600K")
METHOD = "gfn1-xtb"


def sample_frame(temperature: float, strain_std: float, vacancy: bool, rng: np.random.Generator):
    """One unlabelled LiCl frame."""
    from ase.build import bulk

    atoms = bulk("LiCl", "rocksalt", a=A0 * (1 + EXPANSION * (temperature - 300.0)),
                 cubic=True).repeat(REPEAT)
    if vacancy:
        li = np.flatnonzero(atoms.numbers == 3)
        cl = np.flatnonzero(atoms.numbers == 17)
        del atoms[sorted([int(rng.choice(li)), int(rng.choice(cl))], reverse=True)]
    strain = rng.normal(0.0, strain_std, (3, 3))
    strain = 0.5 * (strain + strain.T)
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + strain), scale_atoms=True)
    sigma = np.array([SIGMA_300K[int(z)] for z in atoms.numbers]) * np.sqrt(temperature / 300.0)
    atoms.positions += rng.normal(0.0, 1.0, (len(atoms), 3)) * sigma[:, None]
    atoms.wrap()
    atoms.info = {"temperature_K": temperature}
    return atoms


def generate(seed: int = 0, small: bool = False, progress=None, counts=None):
    """All frames of the family, labelled by GFN1-xTB (:data:`METHOD`), with splits."""
    from core.reference import label_structures

    counts = counts or (SMALL_COUNTS if small else COUNTS)
    frames = []
    for stream, (ctype, (temp, strain, vacancy, n)) in enumerate(counts.items()):
        for i in range(n):
            atoms = sample_frame(temp, strain, vacancy, frame_rng(seed, stream, i))
            atoms.info["config_type"] = ctype
            frames.append(atoms)

    def report(done, total):
        if done % 10 == 0 or done == total:
            print(f"labelled {done}/{total}", file=sys.stderr, flush=True)

    with single_thread():
        frames = label_structures(frames, METHOD, progress=report if progress else None)
    splits = assign_splits([a.info["config_type"] for a in frames], TRAIN_TYPES, seed)
    for a, s in zip(frames, splits):
        a.info["split"] = s
    return frames


def main(argv=None) -> None:
    cli(__doc__.splitlines()[0], generate, "licl_crystal.xyz", argv)


if __name__ == "__main__":
    main()
