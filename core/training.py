"""Train (or fine-tune) a small MACE potential with mace-torch's own training script.

`train_mace` is a thin wrapper over ``python -m mace.cli.run_train`` (the ``mace_run_train``
console script) run in a **subprocess**: mace's entry point changes process-global state
(torch's default dtype, the root logger, the RNG seeds), and a subprocess keeps all of that out
of the caller (the app, the active-learning loop, a test session).

Determinism: mace seeds numpy and torch with ``seed`` before it builds the model and the data
loaders, and the loaders shuffle with that seeded generator, so on CPU with a fixed number of
threads the same inputs and seed give the same weights. Changing the thread count
(``OMP_NUM_THREADS``) can change the summation order of the message passing and hence the last
bits of the weights; GPU training is not bit-reproducible. When ``valid`` is None mace draws
the validation frames from ``train`` with a generator seeded by ``seed``.

Refitting (active learning): pass ``foundation_model=<path to a .model>`` to start from an
existing model (mace's "naive" fine-tuning: same architecture, all weights trainable; the
architecture arguments are then taken from the foundation model and ignored here). Retraining
from scratch on the enlarged set is the default when ``foundation_model`` is None; both are fast
for the demo-size models.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.progress import as_progress

__all__ = ["train_mace", "TrainingError", "check_labels"]

_EPOCH_RE = re.compile(
    r"Epoch (?P<epoch>\d+): head: (?P<head>\S+), loss=\s*(?P<loss>[-+0-9.eEnaif]+), "
    r"RMSE_E_per_atom=\s*(?P<rmse_e>[-+0-9.eEnaif]+) meV, RMSE_F=\s*(?P<rmse_f>[-+0-9.eEnaif]+) meV"
)


class TrainingError(RuntimeError):
    """mace's training script failed; the message carries the tail of its log."""


def check_labels(structures: Sequence, energy_key: str, forces_key: str, what: str = "train") -> None:
    """Raise ValueError naming the frame and key when a structure lacks finite labels.

    Parameters
    ----------
    structures : sequence of ase.Atoms
        Each needs ``info[energy_key]`` (float, eV) and ``arrays[forces_key]`` of shape
        (n_atoms, 3) (eV/Å).
    """
    from ase import Atoms

    for i, atoms in enumerate(structures):
        if not isinstance(atoms, Atoms):
            raise TypeError(f"{what}[{i}]: expected ase.Atoms, got {type(atoms).__name__}")
        if len(atoms) == 0:
            raise ValueError(f"{what}[{i}]: structure has no atoms")
        if energy_key not in atoms.info:
            raise ValueError(
                f"{what}[{i}]: missing energy label atoms.info[{energy_key!r}] "
                f"(info keys: {sorted(atoms.info)})"
            )
        try:
            energy = float(atoms.info[energy_key])
        except (TypeError, ValueError):
            raise ValueError(
                f"{what}[{i}]: energy label {energy_key!r} is not a number: {atoms.info[energy_key]!r}"
            ) from None
        if not math.isfinite(energy):
            raise ValueError(f"{what}[{i}]: energy label {energy_key!r} is not finite ({energy})")
        if forces_key not in atoms.arrays:
            raise ValueError(
                f"{what}[{i}]: missing force label atoms.arrays[{forces_key!r}] "
                f"(array keys: {sorted(atoms.arrays)})"
            )
        forces = np.asarray(atoms.arrays[forces_key])
        if forces.shape != (len(atoms), 3):
            raise ValueError(
                f"{what}[{i}]: force label {forces_key!r} has shape {forces.shape}, "
                f"expected ({len(atoms)}, 3)"
            )
        if not np.all(np.isfinite(forces)):
            raise ValueError(f"{what}[{i}]: force label {forces_key!r} has non-finite values")


def _write_extxyz(structures: Sequence, path: Path, energy_key: str, forces_key: str) -> None:
    """Write only what mace needs: geometry, labels and config_type (no calculator results)."""
    from ase import Atoms
    from ase.io import write

    clean = []
    for atoms in structures:
        a = Atoms(
            numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc
        )
        a.info["REF_energy"] = float(atoms.info[energy_key])
        a.arrays["REF_forces"] = np.asarray(atoms.arrays[forces_key], dtype=float).copy()
        config_type = atoms.info.get("config_type")
        if config_type is not None:
            a.info["config_type"] = str(config_type)
        clean.append(a)
    write(path, clean, format="extxyz")


def _foundation_e0s(path) -> dict[int, float]:
    """Isolated-atom energies {Z: eV} stored in a MACE model (first head if several)."""
    from core.potentials.mace import load_model_file

    model = load_model_file(Path(path), "cpu")
    energies = model.atomic_energies_fn.atomic_energies.detach().cpu().numpy()
    energies = np.atleast_2d(energies)[0]
    zs = [int(z) for z in model.atomic_numbers]
    return {z: float(e) for z, e in zip(zs, energies)}


def train_mace(
    train: Sequence, valid: Sequence | None = None, workdir: str | os.PathLike = "mace_training", *,
    name: str = "model", seed: int = 0,
    r_max: float = 4.5, num_channels: int = 32, max_L: int = 0, num_interactions: int = 2, correlation: int = 3,
    max_num_epochs: int = 50, batch_size: int = 5, lr: float = 0.01,
    energy_weight: float = 1.0, forces_weight: float = 100.0,
    energy_key: str = "REF_energy", forces_key: str = "REF_forces",
    E0s: str | dict | None = None, foundation_model: str | os.PathLike | None = None,
    num_threads: int | None = None, progress=None, extra_args: Sequence[str] = (), timeout: float | None = None,
) -> Path:
    """Train a MACE model on labelled structures and return the path of the saved model.

    Parameters
    ----------
    train : sequence of ase.Atoms
        Training structures with ``info[energy_key]`` (eV) and ``arrays[forces_key]`` of shape
        (n_atoms, 3) (eV/Å). ``info["config_type"]`` is kept (mace reports errors per type).
    valid : sequence of ase.Atoms or None
        Validation structures (early stopping / best-checkpoint choice). None: mace holds out
        10 % of ``train`` (at least one frame), drawn with ``seed``.
    workdir : path
        Folder for the extxyz inputs, mace's logs/checkpoints (``workdir/_mace_<name>``, wiped
        first so stale checkpoints are never picked up) and the final ``<name>.model``.
    name, seed : str, int
        Model name and random seed.
    r_max, num_channels, max_L, num_interactions, correlation : architecture
        Cutoff (Å), channels, maximal L of the hidden features, layers, body order. Ignored
        when ``foundation_model`` is given (taken from it).
    max_num_epochs, batch_size, lr, energy_weight, forces_weight : optimisation
    energy_key, forces_key : str
        Where the labels live in ``train``/``valid``.
    E0s : "average" | "foundation" | dict {Z: eV} | None
        Isolated-atom energies. None: "average" (least squares over ``train``) for training
        from scratch, "foundation" when fine-tuning.
    foundation_model : path or None
        Fine-tune from this ``.model`` instead of training from scratch.
    num_threads : int or None
        ``OMP_NUM_THREADS`` for the training process (None: inherit, else 1).
    progress : None, True or callable(done_epochs, total_epochs)
        Called after every epoch; True prints to stderr.
    extra_args : sequence of str
        More ``mace_run_train`` arguments, appended last (they override the above).
    timeout : float or None
        Seconds before the training process is killed (TrainingError).

    Returns
    -------
    Path
        ``workdir/<name>.model``: a float64 model for ``mace.calculators.MACECalculator``
        (``torch.load(path, weights_only=False)`` also works). The per-epoch validation history
        is written beside it as ``<name>_history.json``.
    """
    positive_ints = {"num_channels": num_channels, "num_interactions": num_interactions,
                     "max_num_epochs": max_num_epochs, "batch_size": batch_size, "correlation": correlation}
    valid = _check_train_args(train, valid, energy_key, forces_key, positive_ints, max_L, r_max, foundation_model)
    report = as_progress(progress, "train_mace: epoch")

    workdir, run_dir, train_file = _prepare_workdir(workdir, name, train, energy_key, forces_key)
    args = _base_args(name, run_dir, train_file, seed, max_num_epochs, batch_size, lr, energy_weight, forces_weight)
    args += _valid_args(valid, train, workdir, name, energy_key, forces_key)
    args += _model_args(E0s, foundation_model, r_max, num_channels, max_L, num_interactions, correlation)
    args += [str(a) for a in extra_args]

    log_path = workdir / f"{name}_train.log"
    history, log_lines, returncode, timed_out = _run_logged(
        args, run_dir, _train_env(num_threads), log_path, timeout, report, max_num_epochs
    )
    _raise_on_failure(timed_out, timeout, history, returncode, log_lines, log_path)
    produced = run_dir / f"{name}.model"
    if not produced.is_file():
        raise TrainingError(f"mace_run_train finished but wrote no model at {produced}; log: {log_path}")
    model_path = workdir / f"{name}.model"
    shutil.copyfile(produced, model_path)
    (workdir / f"{name}_history.json").write_text(json.dumps(
        {"seed": int(seed), "foundation_model": None if foundation_model is None else str(foundation_model),
         "n_train": len(train), "n_valid": None if valid is None else len(valid),
         "epochs": history}, indent=1))
    return model_path


# ------------------------------------------------------------ train_mace steps
def _check_train_args(train, valid, energy_key, forces_key, positive_ints: dict, max_L, r_max, foundation_model):
    """Validate ``train_mace``'s inputs; returns ``valid`` (None when it was None or empty)."""
    if train is None or len(train) == 0:
        raise ValueError("train_mace: the training set is empty (got 0 structures)")
    check_labels(train, energy_key, forces_key, "train")
    if valid is not None:
        if len(valid) == 0:
            valid = None
        else:
            check_labels(valid, energy_key, forces_key, "valid")
    if valid is None and len(train) < 2:
        raise ValueError(
            f"train_mace: need at least 2 training structures when valid is None "
            f"(got {len(train)}); pass a validation set"
        )
    for arg, value in positive_ints.items():
        if int(value) != value or value < 1:
            raise ValueError(f"train_mace: {arg} must be a positive integer, got {value!r}")
    if max_L not in (0, 1, 2, 3):
        raise ValueError(f"train_mace: max_L must be 0, 1, 2 or 3, got {max_L!r}")
    if not r_max > 0:
        raise ValueError(f"train_mace: r_max must be > 0 Å, got {r_max!r}")
    if foundation_model is not None and not Path(foundation_model).is_file():
        raise FileNotFoundError(f"train_mace: foundation model not found: {foundation_model}")
    return valid


def _prepare_workdir(workdir, name: str, train, energy_key: str, forces_key: str):
    """(resolved workdir, fresh ``workdir/_mace_<name>``, written ``<name>_train.xyz``)."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = workdir / f"_mace_{name}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir()
    train_file = workdir / f"{name}_train.xyz"
    _write_extxyz(train, train_file, energy_key, forces_key)
    return workdir, run_dir, train_file


def _base_args(name, run_dir, train_file, seed, max_num_epochs, batch_size, lr, energy_weight, forces_weight):
    """The fixed part of the ``mace.cli.run_train`` command line (CPU, float64)."""
    return [
        sys.executable, "-m", "mace.cli.run_train",
        "--name", name,
        "--work_dir", str(run_dir),
        "--train_file", str(train_file),
        "--energy_key", "REF_energy",
        "--forces_key", "REF_forces",
        "--device", "cpu",
        "--default_dtype", "float64",
        "--seed", str(int(seed)),
        "--max_num_epochs", str(int(max_num_epochs)),
        "--batch_size", str(int(batch_size)),
        "--valid_batch_size", str(int(max(batch_size, 10))),
        "--lr", repr(float(lr)),
        "--energy_weight", repr(float(energy_weight)),
        "--forces_weight", repr(float(forces_weight)),
        "--error_table", "PerAtomRMSE",
        "--num_workers", "0",
        "--pin_memory", "False",
        "--plot", "False",
        "--save_cpu",
    ]


def _valid_args(valid, train, workdir: Path, name: str, energy_key: str, forces_key: str) -> list[str]:
    """``--valid_file`` (written to ``workdir/<name>_valid.xyz``) or ``--valid_fraction``."""
    if valid is not None:
        valid_file = workdir / f"{name}_valid.xyz"
        _write_extxyz(valid, valid_file, energy_key, forces_key)
        return ["--valid_file", str(valid_file)]
    return ["--valid_fraction", repr(max(0.1, 1.0 / len(train) + 1e-9))]


def _model_args(E0s, foundation_model, r_max, num_channels, max_L, num_interactions, correlation) -> list[str]:
    """``--E0s`` plus either the foundation model or the architecture arguments."""
    if E0s is None:
        E0s = "foundation" if foundation_model is not None else "average"
    if foundation_model is not None and isinstance(E0s, str) and E0s.lower() == "foundation":
        # mace 0.3.16's own "foundation" path indexes a 0-d tensor for one-element models;
        # reading the E0s here and passing them explicitly is equivalent and always works.
        E0s = _foundation_e0s(foundation_model)
    if isinstance(E0s, dict):
        E0s = str({int(z): float(e) for z, e in E0s.items()})
    args = ["--E0s", str(E0s)]
    if foundation_model is not None:
        args += ["--foundation_model", str(Path(foundation_model).resolve()),
                 "--multiheads_finetuning", "False"]
    else:
        args += [
            "--model", "MACE",
            "--r_max", repr(float(r_max)),
            "--num_channels", str(int(num_channels)),
            "--max_L", str(int(max_L)),
            "--num_interactions", str(int(num_interactions)),
            "--correlation", str(int(correlation)),
        ]
    return args


def _train_env(num_threads: int | None) -> dict:
    """Environment of the training process (thread counts, unbuffered output, no wandb mode)."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(num_threads or env.get("OMP_NUM_THREADS") or 1)
    # MKL must match OMP: a mismatch (e.g. MKL 2, OMP 1) slowed mace epochs 6-10x here
    env["MKL_NUM_THREADS"] = env["OMP_NUM_THREADS"]
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("WANDB_MODE", None)
    return env


def _run_logged(args, run_dir, env, log_path: Path, timeout, report, max_num_epochs):
    """Run the training command, teeing its output to ``log_path`` and parsing epoch lines.

    Returns (history: list of per-epoch dicts, log_lines: the last <= 200 output lines,
    returncode, timed_out: non-empty list when the timeout killed the process).
    """
    history: list[dict] = []
    log_lines: list[str] = []
    with open(log_path, "w") as log, subprocess.Popen(
        args, cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, bufsize=1,
    ) as proc:
        timer = None
        timed_out: list[bool] = []
        if timeout is not None:
            import threading

            def _kill() -> None:
                timed_out.append(True)
                proc.kill()

            timer = threading.Timer(float(timeout), _kill)
            timer.start()
        try:
            for line in proc.stdout or ():
                log.write(line)
                log.flush()  # so that the log can be followed while training runs
                log_lines.append(line)
                if len(log_lines) > 200:
                    del log_lines[:100]
                m = _EPOCH_RE.search(line)
                if m:
                    history.append({
                        "epoch": int(m["epoch"]),
                        "valid_loss": float(m["loss"]),
                        "rmse_e_per_atom_meV": float(m["rmse_e"]),
                        "rmse_f_meV_per_A": float(m["rmse_f"]),
                    })
                    if report is not None:
                        report(int(m["epoch"]) + 1, int(max_num_epochs))
            proc.wait()
        except BaseException:
            proc.kill()
            raise
        finally:
            if timer is not None:
                timer.cancel()
    return history, log_lines, proc.returncode, timed_out


def _raise_on_failure(timed_out, timeout, history, returncode, log_lines, log_path) -> None:
    """TrainingError after a timeout or a non-zero exit code (with the tail of the log)."""
    if timed_out:
        raise TrainingError(
            f"mace_run_train killed after timeout={timeout} s ({len(history)} epochs done); log: {log_path}"
        )
    if returncode != 0:
        tail = "".join(log_lines[-40:])
        raise TrainingError(
            f"mace_run_train failed (exit code {returncode}); full log: {log_path}\n{tail}"
        )
