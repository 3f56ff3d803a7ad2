"""A chemiscope dataset (https://chemiscope.org) of calibrated sites, for sharing.

Needs the optional extra ``flexcal[chemiscope]`` (the ``chemiscope`` package, imported inside).
The file opens on chemiscope.org or in the offline viewer: a map of the per-site descriptors (PCA,
:func:`core.figures_diagnostics.descriptor_pca`) next to the 3D structures, every site carrying its
width per method and its error.
"""

from __future__ import annotations

import gzip
import io
import json
from typing import Any, Mapping, Sequence

import numpy as np

from core.sites import check_sites

__all__ = ["chemiscope_bytes", "chemiscope_available", "ENVIRONMENT_CUTOFF"]

#: Radius (Å) of the atom-centred environment chemiscope highlights around a selected site.
ENVIRONMENT_CUTOFF = 3.5


def chemiscope_available() -> bool:
    """True when the optional ``chemiscope`` package is installed (``pip install 'flexcal[chemiscope]'``)."""
    from importlib.util import find_spec

    return find_spec("chemiscope") is not None


def _per_site(name: str, value: Any, n: int) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.shape != (n,) or np.any(np.isnan(arr)):
        raise ValueError(f"{name}: expected {n} numbers (one per site, no NaN), got shape {arr.shape}")
    return arr


def _json_safe(values: np.ndarray) -> np.ndarray:
    """+inf widths (a conformal rank beyond n) are not JSON numbers: stored as -1 (documented)."""
    return np.where(np.isfinite(values), values, -1.0)


def _structure_max(values: np.ndarray, local: np.ndarray, m: int) -> np.ndarray:
    out = np.full(m, -np.inf)
    np.maximum.at(out, local, values)
    return out


def _properties(sites, local, m, widths, errors, ood, coords) -> dict:
    from ase.data import chemical_symbols

    props: dict[str, dict] = {
        "PCA": {"target": "atom", "values": coords,
                "description": "principal components of the standardised per-site descriptors"},
        "species": {"target": "atom", "values": [chemical_symbols[int(z)] for z in sites.species]},
        "structure id": {"target": "structure", "values": np.unique(sites.structure_ids).astype(float),
                         "description": "position of the structure in the source dataset"},
    }
    for label, w in widths.items():
        props[f"width {label}"] = {"target": "atom", "values": _json_safe(w), "units": "eV/Å",
                                   "description": f"half-width of {label} at the run's confidence (-1: infinite)"}
        props[f"max width {label}"] = {"target": "structure", "values": _json_safe(_structure_max(w, local, m)),
                                       "units": "eV/Å"}
    if errors is not None:
        props["error"] = {"target": "atom", "values": errors, "units": "eV/Å",
                          "description": "force error norm |F_pred - F_ref|"}
        props["max error"] = {"target": "structure", "values": _structure_max(errors, local, m), "units": "eV/Å"}
    if ood is not None:
        props["out of domain"] = {"target": "atom", "values": ood.astype(float),
                                  "description": "1: outside the calibration domain"}
    return props


def chemiscope_bytes(structures: Sequence, sites, widths_by_method: Mapping[str, Any], *, errors=None, ood=None,
                     meta: Mapping[str, Any] | None = None, compress: bool = True) -> bytes:
    """A chemiscope JSON dataset of ``sites``, gzip-compressed by default (``.json.gz``).

    Parameters
    ----------
    structures : sequence of ase.Atoms, indexed by ``sites.structure_ids`` (the dataset's structures).
        Only the structures that have sites are written, in increasing id order.
    sites : SiteTable (N sites; ``atom_index`` locates each site in its structure).
    widths_by_method : dict label -> (N,) half-widths, eV/Å (+inf stored as -1).
    errors : (N,) force-error norms, eV/Å, optional (default: ``sites.errors`` when labelled).
    ood : (N,) bool, optional: True = outside the calibration domain.
    meta : dict, optional: ``name``, ``description``, ``authors``, ``references`` of the dataset.
    compress : bool, default True (gzip; False: plain JSON text).

    Returns
    -------
    bytes. Per-atom properties ``PCA[1]``, ``PCA[2]``, ``width <label>``, ``error``, ``species``,
    ``out of domain``; per-structure ``max width <label>``, ``max error``, ``structure id``. The default
    map is PC1 against PC2 coloured by the first method's width. Callers write it atomically
    (:func:`core.io.atomic_write_bytes`).
    """
    import chemiscope

    from core.figures_diagnostics import descriptor_pca

    sites = check_sites(sites)
    n = len(sites)
    if not isinstance(widths_by_method, Mapping) or not widths_by_method:
        raise ValueError(f"widths_by_method: expected a non-empty dict of label -> widths, got {widths_by_method!r:.80}")
    widths = {str(k): _per_site(f"widths_by_method[{k!r}]", v, n) for k, v in widths_by_method.items()}
    if errors is None and sites.labelled:
        errors = sites.errors
    errors = None if errors is None else _per_site("errors", errors, n)
    ood = None if ood is None else np.asarray(ood, dtype=bool)
    if ood is not None and ood.shape != (n,):
        raise ValueError(f"ood: expected {n} flags (one per site), got shape {ood.shape}")
    ids = np.unique(sites.structure_ids)
    if ids.min() < 0 or ids.max() >= len(structures):
        raise ValueError(f"structures: sites refer to structure {int(ids.max())}, but {len(structures)} structures "
                         "were given (pass the dataset the sites were computed from)")
    local = np.searchsorted(ids, sites.structure_ids)
    frames = [structures[int(i)] for i in ids]
    for j, a in zip(local, sites.atom_index):
        if not 0 <= int(a) < len(frames[j]):
            raise ValueError(f"sites: atom index {int(a)} is outside structure {int(ids[j])} "
                             f"({len(frames[j])} atoms)")
    coords, _explained = descriptor_pca(sites.descriptors, 2)
    first = next(iter(widths))
    settings = {"map": {"x": {"property": "PCA[1]"}, "y": {"property": "PCA[2]"},
                        "color": {"property": f"width {first}"}}, "target": "atom"}
    metadata = {"name": "FlexCal calibrated sites", "description": "per-site force uncertainty from FlexCal"}
    metadata.update({k: v for k, v in (meta or {}).items() if k in ("name", "description", "authors", "references")})
    data = chemiscope.create_input(
        frames, metadata=metadata,
        properties=_properties(sites, local, len(ids), widths, errors, ood, coords),
        environments=[(int(j), int(a), ENVIRONMENT_CUTOFF) for j, a in zip(local, sites.atom_index)],
        settings=settings)
    text = json.dumps(data, default=_json_default).encode("utf-8")
    if not compress:
        return text
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as fh:  # mtime=0: same bytes for the same data
        fh.write(text)
    return buf.getvalue()


def _json_default(obj: Any):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
