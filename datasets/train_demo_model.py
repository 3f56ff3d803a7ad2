"""Train the demo MACE models (one per family) and record their errors.

Each family's model is trained with :func:`core.training.train_mace` on the frames whose
``info["split"]`` is "train" (validation/early stopping on "valid"); both come only from the
family's low-temperature config types (see the generators). One model per family: the three
families use three different reference methods (GFN1-xTB, EMT, GFN2-xTB) whose absolute energies
are incompatible (O and H would need one isolated-atom energy for EMT and another for GFN2),
and small single-family models train faster.

Outputs: ``datasets/models/<family>.model`` (float64) and ``datasets/models/demo_metrics.json``
(recipe, wall times and force errors per split and config type).

    python -m datasets.train_demo_model                    # all families
    python -m datasets.train_demo_model --family molecule  # one
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make `core` and `datasets` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets._common import DATASETS_DIR

MODELS_DIR = DATASETS_DIR / "models"
METRICS_FILE = MODELS_DIR / "demo_metrics.json"

#: family -> train_mace keyword arguments (everything else at train_mace's defaults).
#: correlation 2 for licl/surface keeps each model at ~0.6 MB: with correlation 3 mace stores a
#: 94k-entry float64 U-matrix per layer (the molecule model, trained first, is 2.3 MB).
RECIPES: dict[str, dict] = {
    "licl": dict(r_max=4.0, num_channels=32, max_L=0, num_interactions=2, correlation=2,
                 max_num_epochs=40, batch_size=8, lr=0.01, seed=0),
    "surface": dict(r_max=4.0, num_channels=32, max_L=0, num_interactions=2, correlation=2,
                    max_num_epochs=40, batch_size=8, lr=0.01, seed=0),
    "molecule": dict(r_max=4.5, num_channels=32, max_L=0, num_interactions=2, correlation=3,
                     max_num_epochs=60, batch_size=8, lr=0.01, seed=0),
}


def predict(model_path, frames, batch_size: int = 32):
    """Energies (m,) eV and forces (N, 3) eV/Å of a MACE model on frames, in batches.

    Parameters
    ----------
    model_path : path of a ``.model`` file
    frames : list of ase.Atoms (m structures, N atoms in all)
    """
    import mace  # noqa: F401  (before e3nn)
    import torch
    from mace.tools import utils

    model = torch.load(str(model_path), map_location="cpu", weights_only=False).double().eval()
    z_table = utils.AtomicNumberTable([int(z) for z in model.atomic_numbers])
    heads = list(getattr(model, "heads", None) or ["Default"])
    r_max = float(model.r_max)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these models are tiny: extra threads only contend (5x slower)
    try:
        return _predict(model, frames, z_table, heads, r_max, batch_size)
    finally:
        torch.set_num_threads(threads)


def _predict(model, frames, z_table, heads, r_max, batch_size):
    from mace import data as mace_data
    from mace.tools import torch_geometric, torch_tools

    with torch_tools.default_dtype("float64"):
        graphs = [
            mace_data.AtomicData.from_config(
                mace_data.config_from_atoms(a, head_name=heads[0]), z_table=z_table,
                cutoff=r_max, heads=heads)
            for a in frames
        ]
        loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=batch_size,
                                                       shuffle=False, drop_last=False)
        energies, forces = [], []
        for batch in loader:
            out = model(batch.to_dict(), compute_force=True, training=False)
            energies.append(out["energy"].detach().numpy())
            forces.append(out["forces"].detach().numpy())
    return np.concatenate(energies), np.concatenate(forces)


def force_errors(frames, forces_pred, forces_key: str = "REF_forces") -> dict:
    """Force errors of a prediction: component MAE/RMSE and mean per-atom error norm (eV/Å)."""
    ref = np.concatenate([a.arrays[forces_key] for a in frames])
    diff = forces_pred - ref
    return {
        "n_frames": len(frames),
        "n_atoms": int(len(ref)),
        "force_mae": float(np.mean(np.abs(diff))),
        "force_rmse": float(np.sqrt(np.mean(diff ** 2))),
        "mean_site_error": float(np.mean(np.linalg.norm(diff, axis=1))),
        "mean_ref_force_norm": float(np.mean(np.linalg.norm(ref, axis=1))),
    }


def evaluate(family: str, model_path, frames) -> dict:
    """Errors per (split, config_type), per config type and over the family's test frames."""
    t0 = time.perf_counter()
    _, forces = predict(model_path, frames)
    predict_s = time.perf_counter() - t0
    offsets = np.cumsum([0] + [len(a) for a in frames])
    per_frame = [forces[offsets[i]:offsets[i + 1]] for i in range(len(frames))]

    def group(idx):
        return force_errors([frames[i] for i in idx], np.concatenate([per_frame[i] for i in idx]))

    result = {"predict_seconds": round(predict_s, 2), "by_split_config_type": {},
              "by_config_type_test": {}}
    ctypes = sorted({a.info["config_type"] for a in frames})
    for split in ("train", "valid", "calibration", "test"):
        for ctype in ctypes:
            idx = [i for i, a in enumerate(frames)
                   if a.info["split"] == split and a.info["config_type"] == ctype]
            if idx:
                result["by_split_config_type"][f"{split}/{ctype}"] = group(idx)
    for ctype in ctypes:
        idx = [i for i, a in enumerate(frames)
               if a.info["split"] == "test" and a.info["config_type"] == ctype]
        result["by_config_type_test"][ctype] = group(idx)
    result["test_all"] = group([i for i, a in enumerate(frames) if a.info["split"] == "test"])
    return result


def train_family(family: str, workdir: Path, epochs: int | None = None) -> dict:
    from core.demo import demo_frames, demo_info
    from core.training import train_mace

    frames = demo_frames(family)
    train = [a for a in frames if a.info["split"] == "train"]
    valid = [a for a in frames if a.info["split"] == "valid"]
    recipe = dict(RECIPES[family])
    if epochs is not None:
        recipe["max_num_epochs"] = epochs
    t0 = time.perf_counter()
    path = train_mace(train, valid, workdir / family, name=family, progress=True, num_threads=1,
                      **recipe)
    train_s = time.perf_counter() - t0
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    target = MODELS_DIR / f"{family}.model"
    target.write_bytes(Path(path).read_bytes())
    history = json.loads((Path(path).parent / f"{family}_history.json").read_text())
    metrics = evaluate(family, target, frames)
    return {
        "model": str(target.relative_to(DATASETS_DIR)),
        "model_bytes": target.stat().st_size,
        "reference": demo_info(family)["reference"],
        "train_config_types": list(demo_info(family)["train_config_types"]),
        "n_train": len(train), "n_valid": len(valid),
        "recipe": recipe,
        "train_seconds": round(train_s, 1),
        "epochs_run": len(history["epochs"]),
        "final_valid": history["epochs"][-1] if history["epochs"] else None,
        **metrics,
    }


def markdown_report(metrics: dict) -> str:
    """The README's error table: force errors (eV/Å) per family, split and config type."""
    lines = ["| family | split / config_type | frames | atoms | force MAE | force RMSE "
             "| mean ‖ΔF‖ | mean ‖F_ref‖ |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for family in RECIPES:
        if family not in metrics:
            continue
        for key, v in metrics[family]["by_split_config_type"].items():
            lines.append(f"| {family} | {key} | {v['n_frames']} | {v['n_atoms']} | "
                         f"{v['force_mae']:.4f} | {v['force_rmse']:.4f} | "
                         f"{v['mean_site_error']:.4f} | {v['mean_ref_force_norm']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=[*RECIPES, "all"], default="all")
    parser.add_argument("--epochs", type=int, default=None, help="override max_num_epochs")
    parser.add_argument("--report", action="store_true",
                        help="print the error table of demo_metrics.json and exit")
    args = parser.parse_args(argv)
    metrics = json.loads(METRICS_FILE.read_text()) if METRICS_FILE.is_file() else {}
    if args.report:
        print(markdown_report(metrics))
        return
    families = list(RECIPES) if args.family == "all" else [args.family]
    import mace
    import torch
    with tempfile.TemporaryDirectory(prefix="flexcal_demo_train_") as tmp:
        for family in families:
            print(f"== {family}", file=sys.stderr, flush=True)
            metrics[family] = train_family(family, Path(tmp), args.epochs)
            metrics[family]["versions"] = {"mace": mace.__version__, "torch": torch.__version__,
                                           "python": platform.python_version()}
            METRICS_FILE.write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
            test = metrics[family]["test_all"]
            print(f"{family}: test force MAE {test['force_mae']:.4f} eV/Å, "
                  f"RMSE {test['force_rmse']:.4f} eV/Å, train {metrics[family]['train_seconds']} s",
                  file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
