"""Ethanol molecular dynamics at 300, 600 and 900 K, labelled with GFN2-xTB and GFN1-xTB.

Sampling: one Langevin trajectory per temperature driven by GFN2-xTB itself (tblite; ~2 ms a
step for 9 atoms), started from ASE's G2 geometry with Maxwell-Boltzmann velocities, an
equilibration stretch discarded, then a frame every ``stride`` steps. Labels: GFN2-xTB under
REF_energy/REF_forces (the primary reference) and GFN1-xTB under REF2_energy/REF2_forces (the
second level of theory of the transfer study, METHOD §5.3).

    python -m datasets.generate_molecule            # -> datasets/molecule_ethanol.xyz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make `core` and `datasets` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets._common import assign_splits, cli, single_thread

#: config_type -> (temperature K, frames)
COUNTS = {"md_300K": (300.0, 300), "md_600K": (600.0, 100), "md_900K": (900.0, 100)}
SMALL_COUNTS = {"md_300K": (300.0, 4), "md_600K": (600.0, 2), "md_900K": (900.0, 2)}
TRAIN_TYPES = ("md_300K",)
TIMESTEP_FS = 0.5
FRICTION_PER_FS = 0.02
EQUILIBRATION_STEPS = 400
STRIDE = 20


def sample_md(config_type: str, temperature: float, n_frames: int, seed: int, stream: int,
              equilibration: int = EQUILIBRATION_STEPS, stride: int = STRIDE):
    """Frames (unlabelled copies) from a GFN2-xTB Langevin trajectory of ethanol."""
    from ase import Atoms, units
    from ase.build import molecule
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

    from core.reference import reference_calculator

    atoms = molecule("CH3CH2OH")
    atoms.calc = reference_calculator("gfn2-xtb")
    rng = np.random.RandomState(np.random.SeedSequence([seed, stream]).generate_state(1)[0])
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    atoms.set_constraint(FixCom())
    dyn = Langevin(atoms, TIMESTEP_FS * units.fs, temperature_K=temperature,
                   friction=FRICTION_PER_FS / units.fs, rng=rng, fixcm=False)
    dyn.run(equilibration)
    frames = []
    for i in range(n_frames):
        dyn.run(stride)
        frame = Atoms(numbers=atoms.numbers, positions=atoms.positions)
        frame.info = {"config_type": config_type, "temperature_K": temperature,
                      "md_step": equilibration + (i + 1) * stride}
        frames.append(frame)
    return frames


def generate(seed: int = 0, small: bool = False, progress=None, counts=None):
    """All frames of the family, labelled by GFN2 (REF_*) and GFN1 (REF2_*), with splits."""
    from core.reference import label_structures

    counts = counts or (SMALL_COUNTS if small else COUNTS)
    eq, stride = (50, 5) if small else (EQUILIBRATION_STEPS, STRIDE)
    frames = []
    with single_thread():
        for stream, (ctype, (temp, n)) in enumerate(counts.items()):
            frames += sample_md(ctype, temp, n, seed, stream, eq, stride)
            if progress:
                print(f"sampled {ctype}: {n} frames", file=sys.stderr, flush=True)
        frames = label_structures(frames, "gfn2-xtb", "REF_energy", "REF_forces")
        frames = label_structures(frames, "gfn1-xtb", "REF2_energy", "REF2_forces")
    splits = assign_splits([a.info["config_type"] for a in frames], TRAIN_TYPES, seed)
    for a, s in zip(frames, splits):
        a.info["split"] = s
    return frames


def main(argv=None) -> None:
    cli(__doc__.splitlines()[0], generate, "molecule_ethanol.xyz", argv)


if __name__ == "__main__":
    main()
