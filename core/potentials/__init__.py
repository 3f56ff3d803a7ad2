"""Potentials: the Potential protocol and the MACE implementation.

``from core.potentials import load_potential`` is the usual entry point. The MACE
module (torch, mace-torch) is imported lazily, on first use of its names, so that
importing ``core.potentials`` stays cheap.
"""

from core.potentials.base import Potential, PotentialOutput, check_elements, unknown_elements

_MACE_NAMES = (
    "DEFAULT_MODEL",
    "FOUNDATION_MODELS",
    "FoundationModelUnavailable",
    "MACEPotential",
    "foundation_model_path",
    "foundation_model_source",
    "load_potential",
)

__all__ = ["Potential", "PotentialOutput", "check_elements", "unknown_elements", *_MACE_NAMES]


def __getattr__(name):
    if name in _MACE_NAMES:
        from core.potentials import mace

        return getattr(mace, name)
    raise AttributeError(f"module 'core.potentials' has no attribute {name!r}")
