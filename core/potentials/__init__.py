"""Potentials: the Potential protocol, the backend registry, MACE and CHGNet.

``from core.potentials import load_potential`` is the usual entry point: the ONE resolver from
a model spec (a name such as ``"chgnet-0.3.0"``, ``"mace-mp-0b3-medium"`` or ``"demo:licl"``, a
model file, a committee) to a :class:`Potential`. :func:`available_models` lists what can be
chosen; :func:`register_backend` adds another MLIP (see docs/DEVELOPING.md, "Potentials").

Backends import torch, mace-torch or chgnet lazily, when a model is loaded, so importing
``core.potentials`` stays cheap.
"""

from core.potentials.base import (
    Potential,
    PotentialCalculator,
    PotentialOutput,
    check_elements,
    check_structures,
    resolve_device,
    restored_environ,
    unknown_elements,
)
from core.potentials.registry import (
    Backend,
    UntrustedModelError,
    available_models,
    backends,
    load_potential,
    model_names,
    potential_from_calculator,
    register_backend,
    unregister_backend,
)

_LAZY = {
    "DEFAULT_MODEL": "core.potentials.mace_foundation",
    "FOUNDATION_MODELS": "core.potentials.mace_foundation",
    "FoundationModelUnavailable": "core.potentials.mace_foundation",
    "foundation_model_path": "core.potentials.mace_foundation",
    "foundation_model_source": "core.potentials.mace_foundation",
    "MACEPotential": "core.potentials.mace",
    "CHGNetPotential": "core.potentials.chgnet",
    "CHGNET_MODELS": "core.potentials.chgnet",
}

__all__ = [
    "Backend", "Potential", "PotentialCalculator", "PotentialOutput", "UntrustedModelError",
    "available_models", "backends", "check_elements", "check_structures", "load_potential", "model_names",
    "potential_from_calculator", "register_backend", "resolve_device", "restored_environ",
    "unknown_elements", "unregister_backend", *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'core.potentials' has no attribute {name!r}")
