"""What the Data and Model pages offer, in words (no Streamlit here).

The demo datasets (embedded MACE demo families, then the generated synthetic demo), the
named models the potential registry knows, the Data page's summary rows, plain-words
error messages and small parsers. The pages arrange these; ``app.services`` caches the
expensive loads.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

SYNTHETIC = "synthetic"
DEMO = "demo"
SYNTHETIC_LABEL = "Synthetic Cu–Au (generated here; not a MACE demo)"
SYNTHETIC_FILE = "synthetic_cu_au.extxyz"
DATA_TYPES = ("extxyz", "xyz", "traj", "db", "json", "cif", "vasp", "xml", "out", "pdb", "gz")
MODEL_TYPES = ("model", "pt", "pth", "tar")
TRUST_REASON = (
    "A MACE .model file is a Python pickle: loading it runs whatever code the file contains, "
    "with your permissions. Only load model files that you made yourself or got from a source "
    "you trust. FlexCal never loads such a file until you confirm this."
)


def cache_root() -> Path:
    """The app's cache folder: ``$FLEXCAL_CACHE_DIR``, default ``.flexcal_cache`` (features, model
    metadata records, the autosaved session)."""
    import os

    return Path(os.environ.get("FLEXCAL_CACHE_DIR", ".flexcal_cache"))


def features_cache() -> Path:
    """The feature cache and the models' metadata records: ``cache_root() / "features"``."""
    return cache_root() / "features"


# errors whose message already says everything (no exception class name in front)
_PLAIN_ERRORS = ("DatasetError", "FoundationModelUnavailable", "ValueError", "FileNotFoundError",
                 "UntrustedModelError", "UploadTooLarge", "UntrustedModelFile", "EvaluationCancelled")


class UploadTooLarge(ValueError):
    """The upload exceeds the configured size limit."""


class UntrustedModelFile(PermissionError):
    """A model file was not confirmed as trusted."""


def digest(data: bytes) -> str:
    """Short content hash of some bytes (cache and state key)."""
    return hashlib.sha256(data).hexdigest()[:20]


def describe_error(exc: BaseException) -> str:
    """An exception in plain words for an ``st.error`` box (no traceback)."""
    msg = str(exc).strip() or type(exc).__name__
    name = type(exc).__name__
    if name in _PLAIN_ERRORS or isinstance(exc, (UploadTooLarge, UntrustedModelFile)):
        return msg
    return f"{name}: {msg}"


def safe_filename(filename: str, default: str = "upload.model") -> str:
    """A file name reduced to ``[A-Za-z0-9._-]`` (at most 80 characters)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(str(filename)).name)[:80] or default


def parse_hidden(text: str) -> tuple[int, ...]:
    """``"64, 64"`` -> (64, 64); ValueError in plain words otherwise."""
    parts = [p for p in re.split(r"[,\s]+", str(text).strip()) if p]
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"hidden sizes: expected whole numbers separated by commas, e.g. 64, 64; got {text!r}") from None
    if not sizes or any(s < 1 or s > 4096 for s in sizes):
        raise ValueError(f"hidden sizes: expected 1 to 4096 units per layer, e.g. 64, 64; got {text!r}")
    return sizes


# ------------------------------------------------------------------------ datasets
def demo_model_available(family: str | None = None) -> bool:
    """Whether the demo MACE model of ``family`` (default family when None) is installed."""
    try:
        from core.demo import demo_model_path

        return Path(demo_model_path(family or None)).is_file()
    except (ImportError, FileNotFoundError, ValueError):
        return False


def demo_choices() -> dict[str, tuple[str, str]]:
    """Label -> (kind, name) of the demo datasets offered on the Data page, default first.

    Order: the embedded demo families whose file *and* MACE model are installed
    (``core.demo.DEFAULT_FAMILY`` first), then the generated synthetic demo (always
    available, needs no model file), then embedded families without their model.
    """
    ready: dict[str, tuple[str, str]] = {}
    no_model: dict[str, tuple[str, str]] = {}
    try:
        from core.demo import DEFAULT_FAMILY, FAMILIES, demo_dataset_path
    except ImportError:  # demo module not installed: only the synthetic one
        return {SYNTHETIC_LABEL: (SYNTHETIC, "")}
    for name in sorted(FAMILIES, key=lambda f: (f != DEFAULT_FAMILY, f)):
        try:
            demo_dataset_path(name)
        except FileNotFoundError:
            continue
        if demo_model_available(name):
            ready[f"{name} (embedded demo)"] = (DEMO, name)
        else:
            no_model[f"{name} (embedded demo; its model is not installed)"] = (DEMO, name)
    return {**ready, SYNTHETIC_LABEL: (SYNTHETIC, ""), **no_model}


def demo_description(name: str) -> str:
    """One line on an embedded demo family ("" when unknown)."""
    try:
        from core.demo import FAMILIES

        fam = FAMILIES[name]
    except (ImportError, KeyError):
        return ""
    return f"{fam.get('description', '')} — reference: {fam.get('reference', '?')}"


def dataset_summary_rows(dataset) -> list[tuple[str, str]]:
    """The Data page's summary as (field, value) rows."""
    s = dataset.summary()
    lo, hi = s["n_atoms_min"], s["n_atoms_max"]
    sizes = f"{lo}–{hi}" if lo != hi else str(lo)
    return [
        ("source", str(s["source"])),
        ("format", str(s["format"])),
        ("frames", str(s["n_frames"])),
        ("atoms (total)", f"{s['n_atoms']}  (per frame: {sizes})"),
        ("elements", ", ".join(s["elements"])),
        ("energy label", str(s["energy_key"]) if s["has_energies"] else "none found"),
        ("forces label", str(s["forces_key"])),
        ("config types", ", ".join(f"{k} ({v})" for k, v in s["config_types"].items())),
        ("periodic", str(s["periodic"])),
    ]


def file_split_labels(dataset) -> np.ndarray:
    """The file's own per-frame split labels (``atoms.info["split"]``, "" where absent)."""
    from core.sources import SPLIT_KEY

    return np.array([str(a.info.get(SPLIT_KEY, "")) for a in dataset.structures])


def has_file_split(dataset) -> bool:
    """True when the file marks calibration and test frames itself (the embedded demos do)."""
    return {"calibration", "test"} <= set(file_split_labels(dataset).tolist())


def training_frames(dataset) -> np.ndarray:
    """Boolean (m,): frames the potential was trained on (never calibrated or tested on)."""
    from core.sources import TRAINING_PARTS

    return np.isin(file_split_labels(dataset), TRAINING_PARTS)


# -------------------------------------------------------------------------- models
def named_models() -> dict[str, str]:
    """Name -> label of the models ``load_potential`` resolves by name (CHGNet, MACE foundation, ...).

    The embedded demo models have their own choice on the Model page and are left out here.
    Offline-ready models come first; each label says whether a download is needed.
    """
    from core.potentials import available_models

    rows = sorted((r for r in available_models() if r["backend"] != DEMO), key=lambda r: not r["offline"])
    return {r["name"]: r["label"] for r in rows}
