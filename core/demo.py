"""Paths of the embedded demo data and demo MACE models (``<repo>/datasets``).

Three families, one extxyz file and one small MACE model each (see ``datasets/README.md``):

========== ============================ ================ =====================================
family     file                         reference        config types (model trained on *)
========== ============================ ================ =====================================
licl       datasets/licl_crystal.xyz    GFN1-xTB         crystal_300K*, crystal_600K*,
                                                         hot_1000K, defect_600K
surface    datasets/surface_cu111.xyz   EMT              clean_300K*, ads_300K*, ads_600K,
                                                         highcov_300K
molecule   datasets/molecule_ethanol.xyz GFN2-xTB        md_300K*, md_600K, md_900K
                                        (+GFN1 as REF2)
========== ============================ ================ =====================================

Every frame has ``info["config_type"]`` and ``info["split"]`` in {"train", "valid",
"calibration", "test"}: "train"/"valid" frames fitted the family's demo model (never calibrate
on them); unseen config types are all "test".
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "FAMILIES", "DEFAULT_FAMILY", "SPLITS", "demo_dir", "demo_datasets", "demo_dataset_path",
    "demo_model_path", "demo_models", "demo_frames", "demo_training_set", "demo_info",
    "TRAJECTORY_FILE", "demo_trajectory_path",
]

#: family -> facts about its file and model (keys as in the extxyz files).
FAMILIES: dict[str, dict] = {
    "licl": {
        "file": "licl_crystal.xyz",
        "model": "models/licl.model",
        "reference": "gfn1-xtb",
        "description": "LiCl rock-salt 2x1x1 supercells (16 atoms, periodic), thermal rattling, "
                       "hot and Schottky-defect frames",
        "train_config_types": ("crystal_300K", "crystal_600K"),
        "label_keys": (("REF_energy", "REF_forces"),),
    },
    "surface": {
        "file": "surface_cu111.xyz",
        "model": "models/surface.model",
        "reference": "emt",
        "description": "Cu(111) 3x3x3 slab, clean and with O/H adsorbates, EMT Langevin MD",
        "train_config_types": ("clean_300K", "ads_300K"),
        "label_keys": (("REF_energy", "REF_forces"),),
    },
    "molecule": {
        "file": "molecule_ethanol.xyz",
        "model": "models/molecule.model",
        "reference": "gfn2-xtb",
        "description": "ethanol Langevin MD at 300/600/900 K; GFN2-xTB labels (REF_*) and "
                       "GFN1-xTB labels of the same frames (REF2_*) for the transfer study",
        "train_config_types": ("md_300K",),
        "label_keys": (("REF_energy", "REF_forces"), ("REF2_energy", "REF2_forces")),
    },
}
DEFAULT_FAMILY = "licl"
SPLITS = ("train", "valid", "calibration", "test")


def demo_dir() -> Path:
    """The ``datasets`` folder of the repository this package lives in."""
    return Path(__file__).resolve().parents[1] / "datasets"


def _family(family: str | None) -> str:
    family = DEFAULT_FAMILY if family is None else family
    if family not in FAMILIES:
        raise ValueError(f"unknown demo family {family!r}; valid: {', '.join(FAMILIES)}")
    return family


def _existing(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"demo {what} not found: {path}. The demo files live in the repository's datasets/ "
            f"folder; regenerate them with the commands in datasets/README.md"
        )
    return path


def demo_dataset_path(family: str | None = None) -> Path:
    """Path of one family's extxyz file (FileNotFoundError when missing)."""
    family = _family(family)
    return _existing(demo_dir() / FAMILIES[family]["file"], f"dataset {family!r}")


def demo_datasets() -> dict[str, Path]:
    """Family name -> extxyz path, for all three families (FileNotFoundError when one is missing)."""
    return {family: demo_dataset_path(family) for family in FAMILIES}


def demo_model_path(family: str | None = None) -> Path:
    """Path of a family's demo MACE model (float64; default family :data:`DEFAULT_FAMILY`)."""
    family = _family(family)
    return _existing(demo_dir() / FAMILIES[family]["model"], f"model {family!r}")


def demo_models() -> dict[str, Path]:
    """Family name -> demo model path."""
    return {family: demo_model_path(family) for family in FAMILIES}


#: The Apply demo trajectory (``datasets/generate_trajectory.py``, described in ``datasets/README.md``).
TRAJECTORY_FILE = "molecule_ethanol_heating.xyz"


def demo_trajectory_path() -> Path:
    """Path of the Apply demo: ethanol heated from 300 K to 900 K (400 frames) by Langevin MD driven
    by the ``molecule`` demo model, GFN2-xTB labels under REF_* (FileNotFoundError when missing)."""
    return _existing(demo_dir() / TRAJECTORY_FILE, "trajectory")


def demo_frames(family: str | None = None, split: str | None = None,
                config_type: str | None = None) -> list:
    """Frames (ase.Atoms, labels in info/arrays) of a family, optionally one split/config type.

    Parameters
    ----------
    split : {"train", "valid", "calibration", "test"} or None
    config_type : str or None
    """
    from ase.io import read

    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    frames = read(demo_dataset_path(family), index=":", format="extxyz")
    if split is not None:
        frames = [a for a in frames if a.info.get("split") == split]
    if config_type is not None:
        known = sorted({a.info.get("config_type") for a in frames})
        frames = [a for a in frames if a.info.get("config_type") == config_type]
        if not frames:
            raise ValueError(f"no frames of config_type {config_type!r}; valid: {', '.join(known)}")
    return frames


def demo_training_set(family: str | None = None) -> list:
    """The frames the family's demo model was trained on (split "train"; "valid" excluded).

    Use as the ``reference`` of the knn/gmm heuristics; never calibrate on them.
    """
    return demo_frames(family, split="train")


def demo_info(family: str | None = None) -> dict:
    """Facts about a family: file, model, reference method, training config types, keys."""
    family = _family(family)
    info = dict(FAMILIES[family])
    info["name"] = family
    info["path"] = demo_dir() / info["file"]
    info["model_path"] = demo_dir() / info["model"]
    return info
