"""FlexCal: flexible uncertainty calibration for machine-learned interatomic potentials.

The stable public API. Names are resolved lazily on first access, so
``import core`` stays light: it never imports torch, mace or plotly; those load
only when the function or class that needs them is first used.

Examples
--------
>>> import core
>>> sites = core.SiteTable.load("sites.npz")                    # doctest: +SKIP
>>> cal = core.make_calibrator("flexible", confidence=0.9)      # doctest: +SKIP
>>> cal.fit(sites)                                              # doctest: +SKIP
>>> core.calibration_report(sites.errors, cal.predict(sites))   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import sys
import types
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("flexcal")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# public name -> (module, attribute); the module is imported on first access only
_EXPORTS: dict[str, tuple[str, str]] = {
    "SiteTable": ("core.sites", "SiteTable"),
    "SplitConformal": ("core.calibration.conformal", "SplitConformal"),
    "FlexibleQuantile": ("core.calibration.flexible", "FlexibleQuantile"),
    "make_calibrator": ("core.calibration", "make_calibrator"),
    "load_calibrator": ("core.calibration", "load_calibrator"),
    "calibration_report": ("core.metrics", "calibration_report"),
    "expected_coverage_interval": ("core.metrics", "expected_coverage_interval"),
    "RescaledCalibrator": ("core.calibration.rescaled", "RescaledCalibrator"),
    "evaluate": ("core.evaluation", "evaluate"),
    "score": ("core.evaluation", "score"),
    "Evaluation": ("core.evaluation", "Evaluation"),
    "Variant": ("core.evaluation", "Variant"),
    "load_sites": ("core.sources", "load_sites"),
    "partition": ("core.sources", "partition"),
    "register_method": ("core.calibration.registry", "register_method"),
    "MethodSpec": ("core.calibration.registry", "MethodSpec"),
    "read_dataset": ("core.data", "read_dataset"),
    "DatasetError": ("core.data", "DatasetError"),
    "featurize": ("core.featurize", "featurize"),
    "load_potential": ("core.potentials", "load_potential"),
    "CalibratedCalculator": ("core.calculator", "CalibratedCalculator"),
    "annotate": ("core.apply", "annotate"),
    "annotate_sites": ("core.apply", "annotate_sites"),
    "Annotation": ("core.annotation", "Annotation"),
    "DomainScore": ("core.domain", "DomainScore"),
    "run_active_learning": ("core.active", "run_active_learning"),
}

__all__ = ["__version__", *_EXPORTS]

# public functions that share their name with a submodule (core.featurize.featurize)
_SHADOWED = frozenset(name for name, (module, _) in _EXPORTS.items() if module == f"core.{name}")


class _PublicModule(types.ModuleType):
    """``core`` itself: keeps ``core.featurize`` the function once the submodule is imported.

    Importing ``core.featurize`` makes Python bind the submodule as an attribute of
    ``core``, which would shadow the public function of the same name (so that
    ``from core import featurize`` gave a function or a module depending on import
    order). That one binding is ignored; the submodule stays reachable as
    ``sys.modules["core.featurize"]`` and through ``from core.featurize import ...``.
    """

    def __setattr__(self, name, value):
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _PublicModule


def __getattr__(name: str):
    try:
        module_name, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'core' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
