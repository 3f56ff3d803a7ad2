"""The method registry: one entry per calibration method name.

Each :class:`MethodSpec` holds everything the rest of FlexCal needs to know about a method:
how to build it (``factory(confidence, seed, **options) -> Calibrator``), its short label for
tables and legends, its plot colour, a one-line help text (CLI ``--methods`` help, the app's
method picker), whether it needs something the sites may lack (a committee spread), and
whether it is a default method. ``make_calibrator``, figures, the CLI, the app, studies and
the evaluation engine all read this registry, so a new calibrator is one class plus one
:func:`register_method` call::

    from core.calibration.registry import MethodSpec, register_method
    register_method(MethodSpec("mine", label="my CP", color="#117733",
                               help="normalised CP with my score", factory=lambda confidence, seed, **o: Mine(confidence)))

Numpy only at import: factories import their calibrator modules when called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = [
    "MethodSpec",
    "register_method",
    "unregister_method",
    "method_spec",
    "method_names",
    "default_method_names",
    "available_method_names",
    "methods_help",
]


@dataclass(frozen=True)
class MethodSpec:
    """What FlexCal knows about one calibration method.

    Attributes
    ----------
    name : str
        The method name users type (``--methods flexible,knn``).
    label : str
        Short human name for tables and legends.
    color : str
        Hex colour used for this method in every figure.
    help : str
        One line: what the method does.
    factory : callable(confidence, seed, **options) -> Calibrator
        Builds an unfitted calibrator.
    needs : tuple of str
        SiteTable attributes that must not be None (``("committee_std",)`` for committee CP).
    default : bool
        Part of the default method set (studies, ``flexcal run``).
    recommended : bool
        The method the app and ``flexcal run`` suggest first.
    """

    name: str
    label: str
    color: str
    help: str
    factory: Callable[..., Any] = field(repr=False)
    needs: tuple[str, ...] = ()
    default: bool = True
    recommended: bool = False

    def available_for(self, sites) -> bool:
        """True when ``sites`` carry everything this method needs."""
        return all(getattr(sites, attr, None) is not None for attr in self.needs)

    def missing_for(self, sites) -> list[str]:
        """Names of the SiteTable attributes this method needs that ``sites`` lack."""
        return [attr for attr in self.needs if getattr(sites, attr, None) is None]


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add a method to the registry (``replace=True`` to overwrite an existing name)."""
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"spec: expected a MethodSpec, got {type(spec).__name__}")
    if not spec.name or not isinstance(spec.name, str) or "," in spec.name or spec.name != spec.name.strip():
        raise ValueError(f"spec.name: expected a non-empty name without commas or spaces around it, got {spec.name!r}")
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"spec.name: method {spec.name!r} is already registered (pass replace=True to overwrite)")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Remove a method (tests that register toy methods clean up with this)."""
    _REGISTRY.pop(name, None)


def method_spec(name: str) -> MethodSpec:
    """The spec of one method; ValueError listing the valid names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"method: unknown calibration method {name!r}; valid methods are {', '.join(_REGISTRY)}") from None


def method_names() -> tuple[str, ...]:
    """All registered method names, in registration order."""
    return tuple(_REGISTRY)


def default_method_names(sites=None) -> tuple[str, ...]:
    """The default methods (those with ``default=True``), restricted to what ``sites`` support."""
    return tuple(n for n, s in _REGISTRY.items() if s.default and (sites is None or s.available_for(sites)))


def available_method_names(sites) -> tuple[str, ...]:
    """Every registered method that ``sites`` support."""
    return tuple(n for n, s in _REGISTRY.items() if s.available_for(sites))


def methods_help(width: int = 11) -> str:
    """One line per method, ``name = help``, for CLI help texts."""
    return "; ".join(f"{n:<{width}}= {s.help}" for n, s in _REGISTRY.items())


# ------------------------------------------------------------------ built-in methods
def _flexible(confidence, seed, **options):
    from core.calibration.flexible import FlexibleQuantile

    try:
        return FlexibleQuantile(confidence=confidence, seed=seed, **options)
    except TypeError as exc:
        raise TypeError(f"method 'flexible': bad option(s) {sorted(options)} ({exc})") from None


def _flexible_ood(confidence, seed, **options):
    from core.calibration.ood import FlexibleOOD

    try:
        return FlexibleOOD(confidence=confidence, seed=seed, **options)
    except TypeError as exc:
        raise TypeError(f"method 'flexible-ood': bad option(s) {sorted(options)} ({exc})") from None


def _split_factory(heuristic: str, mondrian_default: bool = False):
    def factory(confidence, seed, **options):
        from core.calibration.conformal import SplitConformal
        from core.heuristics import make_heuristic

        mondrian = options.pop("mondrian", mondrian_default)
        if "heuristic" in options:
            raise TypeError("method: 'heuristic' is fixed by the method name; use SplitConformal(heuristic=...) directly")
        if heuristic == "gmm":
            options.setdefault("seed", seed)
        return SplitConformal(confidence=confidence, heuristic=make_heuristic(heuristic, **options), mondrian=mondrian)

    return factory


for _spec in (
    MethodSpec("flexible", "q_θ (flexible)", "#D55E00",
               "learned quantile q_θ(X) (the paper's method, conformally corrected)", _flexible),
    MethodSpec("flexible-ood", "q_θ × distance (flexible-ood)", "#882255",
               "q_θ(X) whose widths grow with distance from the calibration data (shift-aware)",
               _flexible_ood, recommended=True),
    MethodSpec("split", "split CP", "#0072B2", "global split conformal: one width for every site",
               _split_factory("constant")),
    MethodSpec("knn", "kNN-normalised CP", "#009E73",
               "normalised CP, score = distance to the k nearest reference descriptors", _split_factory("knn")),
    MethodSpec("gmm", "GMM-normalised CP", "#CC79A7",
               "normalised CP, score = Gaussian-mixture log-density of the descriptors", _split_factory("gmm")),
    MethodSpec("force", "force-normalised CP", "#E69F00",
               "normalised CP, score = predicted force magnitude", _split_factory("force")),
    MethodSpec("committee", "committee-normalised CP", "#56B4E9",
               "normalised CP, score = force spread of a model committee (needs a committee)",
               _split_factory("committee"), needs=("committee_std",)),
    MethodSpec("mondrian", "Mondrian CP", "#000000", "split conformal with one width per species",
               _split_factory("constant", mondrian_default=True)),
):
    register_method(_spec)
del _spec
