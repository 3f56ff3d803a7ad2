"""Cu(111) slab with O and H adsorbates: Langevin MD at 300 and 600 K, labelled with EMT.

Sampling: a 3x3x3 Cu(111) slab (27 Cu, bottom layer fixed, 7 Å vacuum each side, periodic in
x and y), clean or with adsorbates placed in hollow sites, run with Langevin dynamics driven
by ASE's EMT (1 fs steps; the fixed bottom layer anchors the slab, so no centre-of-mass
constraint); after an equilibration stretch a frame is kept every ``stride``
steps. Labels: EMT energies and forces (REF_energy/REF_forces) — the forces on the fixed
bottom layer are EMT's too, as a reference method would give them. EMT's H/C/N/O parameters are
rough ("for fun" in ASE's words) and only Cu/O/H are used here: this is a fast stand-in for a
DFT surface data set, not a physical model of O/Cu(111). Adsorbates are kept within 2.5 Å of
the surface by a one-sided sampling wall (see ``build_slab``).

    python -m datasets.generate_surface             # -> datasets/surface_cu111.xyz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make `core` and `datasets` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets._common import assign_splits, cli

#: config_type -> (temperature K, adsorbates [(symbol, site, (i, j) offset)], frames)
# fcc hollows of the 3x3 cell form three sqrt(3) x sqrt(3) sublattices (i + j mod 3); O and H
# sit on different ones, 2.55 Å (high coverage) or 4.4 Å (low) apart, so that EMT does not
# merge them into OH that desorbs.
LOW_COVERAGE = [("O", "fcc", (0, 0)), ("H", "fcc", (1, 1))]
HIGH_COVERAGE = [("O", "fcc", (0, 0)), ("O", "fcc", (1, 2)), ("O", "fcc", (2, 1)),
                 ("H", "fcc", (1, 0)), ("H", "fcc", (0, 1)), ("H", "fcc", (2, 2))]
COUNTS = {
    "clean_300K": (300.0, [], 40),
    "ads_300K": (300.0, LOW_COVERAGE, 100),
    "ads_600K": (600.0, LOW_COVERAGE, 50),
    "highcov_300K": (300.0, HIGH_COVERAGE, 40),
}
SMALL_COUNTS = {k: (v[0], v[1], 2) for k, v in COUNTS.items()}
TRAIN_TYPES = ("clean_300K", "ads_300K")
TIMESTEP_FS = 1.0
FRICTION_PER_FS = 0.02
EQUILIBRATION_STEPS = 300
STRIDE = 25
SIZE = (3, 3, 3)
VACUUM = 7.0
HEIGHTS = {"O": 1.2, "H": 1.0}   # Å above the top layer (EMT relaxes them)
TETHER_HEIGHT = 2.5   # Å above the initial top layer: sampling restraint, see build_slab
TETHER_K = 5.0        # eV/Å^2


def build_slab(adsorbates):
    """Cu(111) 3x3x3 slab with adsorbates at hollow sites; bottom layer fixed.

    Each adsorbate is tethered by a one-sided harmonic wall (ASE ``Hookean`` to a plane
    TETHER_HEIGHT above the top layer): EMT binds H to Cu so weakly that it desorbs within a
    few ps at 600 K or at high coverage, leaving an isolated atom far in the vacuum. The wall
    only biases the sampling; the labels are plain EMT on constraint-free copies.
    """
    from ase.build import add_adsorbate, fcc111
    from ase.constraints import FixAtoms, Hookean

    slab = fcc111("Cu", size=SIZE, vacuum=VACUUM)
    for symbol, site, offset in adsorbates:
        add_adsorbate(slab, symbol, HEIGHTS[symbol], position=site, offset=offset)
    slab.center(vacuum=VACUUM, axis=2)
    slab.wrap()
    tags = slab.get_tags()
    top = slab.positions[tags == 1, 2].max()
    wall = (0.0, 0.0, 1.0, -(top + TETHER_HEIGHT))
    slab.set_constraint([FixAtoms(mask=tags == SIZE[2])]
                        + [Hookean(int(i), wall, TETHER_K) for i in np.flatnonzero(tags == 0)])
    return slab


def sample_md(config_type, temperature, adsorbates, n_frames, seed, stream,
              equilibration=EQUILIBRATION_STEPS, stride=STRIDE):
    """Unlabelled frames from an EMT Langevin trajectory."""
    from ase import Atoms, units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    from core.reference import reference_calculator

    atoms = build_slab(adsorbates)
    atoms.calc = reference_calculator("emt")
    rng = np.random.RandomState(np.random.SeedSequence([seed, stream]).generate_state(1)[0])
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(atoms, TIMESTEP_FS * units.fs, temperature_K=temperature,
                   friction=FRICTION_PER_FS / units.fs, rng=rng, fixcm=False)
    dyn.run(equilibration)
    frames = []
    for i in range(n_frames):
        dyn.run(stride)
        frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                      pbc=atoms.pbc)
        frame.info = {"config_type": config_type, "temperature_K": temperature,
                      "md_step": equilibration + (i + 1) * stride}
        frames.append(frame)
    return frames


def generate(seed: int = 0, small: bool = False, progress=None, counts=None):
    """All frames of the family, labelled by EMT, with splits."""
    from core.reference import label_structures

    counts = counts or (SMALL_COUNTS if small else COUNTS)
    eq, stride = (20, 5) if small else (EQUILIBRATION_STEPS, STRIDE)
    frames = []
    for stream, (ctype, (temp, ads, n)) in enumerate(counts.items()):
        frames += sample_md(ctype, temp, ads, n, seed, stream, eq, stride)
        if progress:
            print(f"sampled {ctype}: {n} frames", file=sys.stderr, flush=True)
    frames = label_structures(frames, "emt")
    splits = assign_splits([a.info["config_type"] for a in frames], TRAIN_TYPES, seed)
    for a, s in zip(frames, splits):
        a.info["split"] = s
    return frames


def main(argv=None) -> None:
    cli(__doc__.splitlines()[0], generate, "surface_cu111.xyz", argv)


if __name__ == "__main__":
    main()
