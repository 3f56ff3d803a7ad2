"""Ethanol heated from 300 K to 900 K by Langevin MD driven by the demo MACE model (Apply demo).

The demo trajectory of the Apply page and ``flexcal predict``: the molecule family's own demo
MACE model (trained on 300 K frames only, ``datasets/models/molecule.model``) drives a Langevin
trajectory of ethanol whose thermostat target rises linearly from 300 K to 900 K, so the frames
walk out of the calibration domain and a calibrator fitted on the 300 K calibration split
should report widths that grow along the trajectory. The frames are then labelled with
GFN2-xTB (tblite, a few ms per frame) under ``REF_energy``/``REF_forces``, the molecule demo's
reference method, so coverage can be checked too; read with ``require_labels=False`` (or drop
the labels) to use it as the unlabelled trajectory it stands for.

    python -m datasets.generate_trajectory          # -> datasets/molecule_ethanol_heating.xyz
    python -m datasets.generate_trajectory --small  # a few frames (tests)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make `core` and `datasets` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets._common import cli, single_thread

OUT_FILE = "molecule_ethanol_heating.xyz"
CONFIG_TYPE = "heating_300_900K"
T_START_K = 300.0
T_END_K = 900.0
N_FRAMES = 400
SMALL_FRAMES = 8
TIMESTEP_FS = 0.5
FRICTION_PER_FS = 0.02
EQUILIBRATION_STEPS = 400   # at T_START_K, discarded
STRIDE = 10                 # MD steps between frames (5 fs)


def ramp(n_frames: int, t_start: float = T_START_K, t_end: float = T_END_K) -> np.ndarray:
    """Thermostat target of each frame, K, shape (n_frames,): linear from ``t_start`` to ``t_end``."""
    if n_frames < 2:
        raise ValueError(f"n_frames: expected at least 2 frames, got {n_frames!r}")
    return np.linspace(float(t_start), float(t_end), int(n_frames))


def heat(potential, n_frames: int = N_FRAMES, seed: int = 0, equilibration: int = EQUILIBRATION_STEPS,
         stride: int = STRIDE, progress=None) -> list:
    """Unlabelled frames of a heating trajectory of ethanol driven by ``potential``.

    Parameters
    ----------
    potential : Potential
        Drives the dynamics through ``potential.ase_calculator()`` (one MACE pass per step).
    n_frames : int
        Frames kept, one every ``stride`` steps after ``equilibration`` steps at 300 K; the
        thermostat target of frame i is ``ramp(n_frames)[i]``.

    Returns
    -------
    list of ase.Atoms
        Positions only (no calculator); ``info``: ``config_type``, ``temperature_K`` (the
        thermostat target, K), ``kinetic_temperature_K`` (instantaneous, K), ``md_step``,
        ``time_fs``, ``frame``.
    """
    from ase import Atoms, units
    from ase.build import molecule
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

    targets = ramp(n_frames)
    atoms = molecule("CH3CH2OH")
    atoms.calc = potential.ase_calculator()
    rng = np.random.RandomState(np.random.SeedSequence([seed, 4242]).generate_state(1)[0])
    thermalize_momenta(atoms, temperature_K=T_START_K, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    atoms.set_constraint(FixCom())
    dyn = Langevin(atoms, TIMESTEP_FS * units.fs, temperature_K=T_START_K,
                   friction=FRICTION_PER_FS / units.fs, rng=rng, fixcm=False)
    dyn.run(equilibration)
    frames = []
    for i, target in enumerate(targets):
        dyn.set_temperature(temperature_K=float(target))
        dyn.run(stride)
        step = equilibration + (i + 1) * stride
        frame = Atoms(numbers=atoms.numbers, positions=atoms.positions)
        frame.info = {"config_type": CONFIG_TYPE, "temperature_K": round(float(target), 3),
                      "kinetic_temperature_K": round(float(atoms.get_temperature()), 3),
                      "md_step": step, "time_fs": step * TIMESTEP_FS, "frame": i}
        if not np.all(np.isfinite(frame.positions)):
            raise RuntimeError(f"frame {i}: the MD blew up (non-finite positions) at step {step}")
        frames.append(frame)
        if progress and (i + 1) % 50 == 0:
            print(f"frame {i + 1}/{n_frames} ({target:.0f} K)", file=sys.stderr, flush=True)
    return frames


def generate(seed: int = 0, small: bool = False, progress=None, label: bool = True):
    """The demo trajectory: heated frames (demo molecule model), GFN2-xTB labels under REF_*."""
    import torch

    from core.demo import demo_model_path
    from core.potentials import load_potential
    from core.reference import label_structures

    n, eq = (SMALL_FRAMES, 20) if small else (N_FRAMES, EQUILIBRATION_STEPS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU-deterministic trajectory for a seed
    try:
        with single_thread():
            potential = load_potential(demo_model_path("molecule"), device="cpu")
            frames = heat(potential, n, seed, eq, STRIDE, progress)
            if label:
                # 1000 SCF cycles: the default 250 do not converge on the frames where the
                # MACE-driven MD has pulled an H atom off (about 880 K and above)
                frames = label_structures(frames, "gfn2-xtb", "REF_energy", "REF_forces", max_iterations=1000)
    finally:
        torch.set_num_threads(threads)
    return frames


def main(argv=None) -> None:
    cli(__doc__.splitlines()[0], generate, OUT_FILE, argv)


if __name__ == "__main__":
    main()
