"""Molecular dynamics of the loop: exploration with the potential, test frames from the reference.

Both run ASE's Langevin thermostat from thermalised start structures (centre of mass fixed,
no net momentum, no rotation for molecules), seeded through ``numpy.random.Generator``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["explore", "is_sane", "reference_md_frames", "bare_copy"]


def bare_copy(atoms):
    """Positions, numbers, cell and pbc only (plus ``info["config_type"]``): no calculator,
    constraints, velocities or old labels."""
    from ase import Atoms

    a = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    if "config_type" in atoms.info:
        a.info["config_type"] = atoms.info["config_type"]
    return a


def _langevin(start, calculator, config, rng):
    """(atoms, dynamics): a thermalised bare copy of ``start`` driven by ``calculator``."""
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

    atoms = bare_copy(start)
    atoms.set_constraint(FixCom())
    thermalize_momenta(atoms, temperature_K=config.temperature_K, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    atoms.calc = calculator
    dyn = Langevin(atoms, config.timestep_fs * units.fs, temperature_K=config.temperature_K,
                   friction=config.friction_per_fs / units.fs, fixcm=False, rng=rng)
    return atoms, dyn


def explore(potential, starts, config, seed: int):
    """Langevin MD with ``potential`` from each start structure.

    Parameters
    ----------
    potential : Potential
        Drives the MD through ``potential.ase_calculator()``.
    starts : list of ase.Atoms
    config : ActiveLearningConfig
        ``md_steps`` per start, a candidate every ``sample_every`` steps, thermostat
        (``temperature_K``, ``timestep_fs``, ``friction_per_fs``) and the sanity limits
        (``max_force`` eV/Å, ``min_distance`` Å).
    seed : int
        Seeds the thermalisation and the Langevin noise.

    Returns
    -------
    (list of ase.Atoms, bool)
        The candidate frames (bare copies) and whether a run stopped early because the
        structure left the sane region (:func:`is_sane`): a poor early model can blow a
        structure apart, and such frames are useless to the reference.
    """
    rng = np.random.default_rng(seed)
    frames: list = []
    stopped = False
    for start in starts:
        atoms, dyn = _langevin(start, potential.ase_calculator(), config, rng)
        for step in range(1, config.md_steps + 1):
            dyn.run(1)
            if not is_sane(atoms, atoms.get_forces(), config.max_force, config.min_distance):
                stopped = True
                break
            if step % config.sample_every == 0:
                frames.append(bare_copy(atoms))
    return frames, stopped


def is_sane(atoms, forces, max_force: float, min_distance: float) -> bool:
    """False when positions or ``forces`` (n_atoms, 3) are not finite, a force norm exceeds
    ``max_force`` (eV/Å), or two atoms are closer than ``min_distance`` (Å, minimum image)."""
    forces = np.asarray(forces, dtype=np.float64)
    if not np.all(np.isfinite(forces)) or not np.all(np.isfinite(atoms.positions)):
        return False
    if forces.size and np.max(np.linalg.norm(forces, axis=1)) > max_force:
        return False
    if len(atoms) > 1:
        d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
        np.fill_diagonal(d, np.inf)
        if d.min() < min_distance:
            return False
    return True


def reference_md_frames(starts, reference_calc, n_frames: int, interval: int, config, seed: int) -> list:
    """``n_frames`` frames of Langevin MD driven by the reference calculator itself.

    The frames are spread over the start structures (the first ones get one more when
    ``n_frames`` does not divide evenly), one every ``interval`` steps, at the thermostat
    settings of ``config``. Each carries the driver's own energy and forces as labels
    (``info["REF_energy"]`` eV, ``arrays["REF_forces"]`` (n_atoms, 3) eV/Å, raw forces
    without the centre-of-mass constraint) and ``info["config_type"] = "al_test"``.
    """
    rng = np.random.default_rng(seed)
    n_starts = len(starts)
    per_start = [n_frames // n_starts + (1 if k < n_frames % n_starts else 0) for k in range(n_starts)]
    frames = []
    for start, n in zip(starts, per_start):
        atoms, dyn = _langevin(start, reference_calc, config, rng)
        for _ in range(n):
            dyn.run(interval)
            a = bare_copy(atoms)
            a.info["REF_energy"] = float(atoms.get_potential_energy())
            a.arrays["REF_forces"] = np.array(atoms.get_forces(apply_constraint=False), dtype=np.float64)
            a.info["config_type"] = "al_test"
            frames.append(a)
    return frames
