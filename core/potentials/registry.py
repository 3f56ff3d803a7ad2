"""The one model resolver: a user's model spec -> a :class:`~core.potentials.base.Potential`.

``load_potential(spec)`` accepts, in this order of precedence (a backend registered later
is asked first, so a plug-in can take over a name):

==========================  ===========================================  ==================
spec                        backend                                      loads code?
==========================  ===========================================  ==================
a Potential object          returned unchanged                           --
``[primary, member, ...]``  a committee (MACE): primary + members        as the members
``"demo"``/``"demo:<f>"``   the embedded demo MACE model of family f     repository file
``"chgnet"``, ``"chgnet-    CHGNet pretrained weights shipped in the     no (weights only)
0.3.0"``, ``"chgnet-0.2.0"``  ``chgnet`` wheel (offline; ``chgnet`` is
``"chgnet-r2scan"``           an alias of 0.3.0)
``"mace-mp-0b3-medium"``    MACE foundation models (mace-torch cache;    mace-torch's cache
and the other names of        a download when not cached)
``FOUNDATION_MODELS``
a CHGNet checkpoint path    ``CHGNet.from_file``-compatible ``.pth.tar`` no (weights only)
a ``.model`` path           a MACE model file (``torch.save``)           **yes**
==========================  ===========================================  ==================

Trust: a MACE ``.model`` file is a Python pickle, and loading it **runs code from the file**.
``load_potential(path, trusted=True)`` (the default for the Python API) means: you trust
this file as you would trust a Python script. Pass ``trusted=False`` for a file from
somewhere else (an upload, a shared folder): paths of backends whose files run code are
then refused with :class:`UntrustedModelError` before a byte is unpickled. CHGNet
checkpoints are read with ``torch.load(weights_only=True)`` (tensors and plain types only)
and load either way.

Adding an MLIP: one module that defines a Potential class and calls :func:`register_backend`
(see docs/DEVELOPING.md, "Potentials").
"""

from __future__ import annotations

import fnmatch
import inspect
import os
import pickletools
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from core.potentials.base import Potential, resolve_device

__all__ = [
    "Backend", "UntrustedModelError", "available_models", "backends", "load_potential",
    "model_names", "potential_from_calculator", "register_backend", "sniff_torch_file",
    "unregister_backend",
]


class UntrustedModelError(ValueError):
    """A model file whose loading runs code was given with ``trusted=False``."""


@dataclass(frozen=True)
class Backend:
    """One way of turning a model spec into a Potential (see :func:`register_backend`)."""

    name: str
    matches: Callable[[Any], bool]
    loader: Callable[..., Any]
    label: str
    offline: bool | Callable[[str], bool]
    description: str = ""
    models: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    kind: str = "model"
    committee: bool = False
    runs_code: bool = False
    unavailable: str = "needs a download"
    from_calculator: Callable[[Any], Any] | None = None

    def is_offline(self, model: str) -> bool:
        """Whether ``model`` loads without network access (and without installing anything)."""
        try:
            return bool(self.offline(model) if callable(self.offline) else self.offline)
        except Exception:  # an availability probe must never break a listing
            return False


_BACKENDS: list[Backend] = []


def _matcher(matches, names: Iterable[str]) -> Callable[[Any], bool]:
    names = frozenset(names)
    if matches is None:
        return lambda spec: isinstance(spec, str) and spec in names
    if callable(matches):
        return matches
    if isinstance(matches, str):
        return lambda spec: isinstance(spec, str) and (spec in names or fnmatch.fnmatchcase(spec, matches))
    if isinstance(matches, (list, tuple, set, frozenset)) and all(isinstance(m, str) for m in matches):
        allowed = names | frozenset(matches)
        return lambda spec: isinstance(spec, str) and spec in allowed
    raise TypeError(
        "matches: expected a predicate callable(spec) -> bool, a glob pattern, a list of names or None, "
        f"got {type(matches).__name__}"
    )


_TRAITS = ("aliases", "kind", "committee", "runs_code", "unavailable", "from_calculator")


def register_backend(matches, loader: Callable[..., Any], *, name: str, label: str,
                     offline: bool | Callable[[str], bool] = True, description: str = "",
                     models: Mapping[str, str] | Iterable[str] = (), replace: bool = False, **traits) -> Backend:
    """Make ``load_potential`` (and so the CLI, app, studies and calculator) know a backend.

    Parameters
    ----------
    matches : callable(spec) -> bool, str, list of str, or None
        Which specs this backend loads: a predicate (gets the raw spec: a name, a path, ...),
        a glob pattern over string specs (``"sevennet-*"``), a list of exact names, or None
        (exactly the names in ``models`` and ``aliases``).
    loader : callable(spec, *, device, **options) -> Potential
        Builds the potential. Receives ``device`` (already checked: "cpu", "cuda", ...),
        ``dtype`` when the caller gave one, ``committee`` (a list of specs) when the caller
        gave one (only with ``committee=True``), and the caller's extra options.
    name : str
        Short identifier ("chgnet"); a second registration of a name needs ``replace=True``.
    label : str
        Display name of the family ("CHGNet").
    offline : bool or callable(model_name) -> bool
        Whether its models load without network access.
    description : str
        One sentence for listings and help.
    models : mapping name -> title, or iterable of names
        The models :func:`available_models` lists (e.g. {"chgnet-0.3.0": "CHGNet 0.3.0"}).
    replace : bool
        Replace an existing backend of the same name (keeping nothing of it).
    **traits
        Optional, each a field of :class:`Backend` (any other name is a TypeError):
    aliases : mapping alias -> name, optional
        Further accepted names ("chgnet" -> "chgnet-0.3.0"); not listed separately.
    kind : str
        What a listed model is ("foundation model", "demo model"); shown in labels.
    committee : bool
        Whether the loader accepts ``committee=``.
    runs_code : bool
        True when loading a *file* through this backend unpickles it (executes code):
        such paths are refused under ``load_potential(..., trusted=False)``.
    unavailable : str
        What a listing says when a model is not available offline.
    from_calculator : callable(ase_calculator) -> Potential or None, optional
        Wraps an ASE calculator of this family into a one-pass Potential (used by
        ``CalibratedCalculator``); return None when the calculator is not of this family.

    Returns
    -------
    Backend
        The registered entry (pass its name to :func:`unregister_backend` to remove it).
    """
    _ensure_builtins()
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    if not callable(loader):
        raise TypeError(f"loader: expected a callable(spec, *, device, **options), got {type(loader).__name__}")
    unknown = sorted(set(traits) - set(_TRAITS))
    if unknown:
        raise TypeError(f"{unknown[0]}: not a backend trait; traits: {', '.join(_TRAITS)}")
    titles = dict(models) if isinstance(models, Mapping) else {m: m for m in models}
    aliases = dict(traits.get("aliases") or {})
    bad = [a for a, target in aliases.items() if target not in titles]
    if bad:
        raise ValueError(f"aliases: {bad} point to names that are not in models ({sorted(titles)})")
    backend = Backend(
        name=name, matches=_matcher(matches, [*titles, *aliases]), loader=loader, label=str(label),
        offline=offline, description=str(description), models=titles, aliases=aliases,
        kind=str(traits.get("kind", "model")), committee=bool(traits.get("committee", False)),
        runs_code=bool(traits.get("runs_code", False)),
        unavailable=str(traits.get("unavailable", "needs a download")),
        from_calculator=traits.get("from_calculator"),
    )
    existing = [i for i, b in enumerate(_BACKENDS) if b.name == name]
    if existing and not replace:
        raise ValueError(f"name: a backend {name!r} is already registered; pass replace=True to replace it")
    for i in reversed(existing):
        del _BACKENDS[i]
    _BACKENDS.append(backend)
    return backend


def unregister_backend(name: str) -> None:
    """Remove the backend registered as ``name`` (ValueError when there is none)."""
    found = [i for i, b in enumerate(_BACKENDS) if b.name == name]
    if not found:
        raise ValueError(f"name: no backend {name!r} is registered; registered: {[b.name for b in _BACKENDS]}")
    for i in reversed(found):
        del _BACKENDS[i]


def backends() -> list[Backend]:
    """The registered backends, in registration order (built-ins first)."""
    _ensure_builtins()
    return list(_BACKENDS)


def model_names() -> list[str]:
    """Every model name ``load_potential`` knows (listed models, then aliases)."""
    out = []
    for b in backends():
        out += [*b.models, *b.aliases]
    return out


def available_models() -> list[dict]:
    """The models to offer users: one dict per model, in backend registration order.

    Keys: ``name`` (what ``load_potential`` takes), ``label`` (e.g. "CHGNet 0.3.0 —
    foundation model, available offline"), ``offline`` (bool), ``backend``, ``kind``,
    ``description`` and ``aliases`` (other accepted names).
    """
    rows = []
    for b in backends():
        for name, title in b.models.items():
            offline = b.is_offline(name)
            status = "available offline" if offline else b.unavailable
            rows.append({
                "name": name, "label": f"{title} — {b.kind}, {status}", "offline": offline,
                "backend": b.name, "kind": b.kind, "description": b.description,
                "aliases": [a for a, target in b.aliases.items() if target == name],
            })
    return rows


# ------------------------------------------------------------------ file sniffing
def sniff_torch_file(path, max_bytes: int = 64 << 20) -> dict | None:
    """What a ``torch.save`` zip file references, read **without unpickling it**.

    Walks the opcodes of the archive's ``data.pkl`` (``pickletools.genops``, which executes
    nothing) and returns ``{"globals": set of "module.name", "strings": set of str}``; None
    when the file is not a torch zip archive (or its pickle is larger than ``max_bytes``).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not pkl or zf.getinfo(pkl[0]).file_size > max_bytes:
                return None
            data = zf.read(pkl[0])
    except (zipfile.BadZipFile, OSError, KeyError, ValueError):
        return None
    globals_, strings, recent = set(), set(), []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                globals_.add(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(recent) >= 2:
                globals_.add(f"{recent[-2]}.{recent[-1]}")
            if isinstance(arg, str) and "UNICODE" in op.name:
                recent = (recent + [arg])[-2:]
                if len(arg) < 200:
                    strings.add(arg)
    except Exception:  # a damaged pickle: report what was read so far
        pass
    return {"globals": globals_, "strings": strings}


def existing_file(spec) -> Path | None:
    """``spec`` as a Path when it names an existing regular file, else None."""
    if not isinstance(spec, (str, os.PathLike)):
        return None
    path = Path(spec).expanduser()
    return path if path.is_file() else None


# ------------------------------------------------------------------ resolution
def load_potential(spec=None, committee: Iterable = (), device: str = "auto", dtype: str | None = None, *,
                   trusted: bool = True, **options) -> Potential:
    """Load a potential: a model name, a model file, a committee, or a Potential object.

    Parameters
    ----------
    spec : str, path, list, or Potential, default ``"mace-mp-0b3-medium"``
        A name (see :func:`available_models`: ``"demo"``, ``"demo:licl"``, ``"chgnet"``,
        ``"chgnet-0.3.0"``, ``"mace-mp-0b3-medium"``, ...), a local model file (MACE
        ``.model``, CHGNet checkpoint), a list whose first entry is the primary model and
        the rest a committee, or a Potential (returned unchanged).
    committee : iterable of str or path
        Further committee members (MACE only).
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}
        ``"auto"``: CUDA when available, else CPU. Checked before any model is touched.
    dtype : {None, "float64", "float32"}
        None: the backend's default (MACE float64; CHGNet float32, its only precision).
    trusted : bool, default True
        Whether you trust a local model *file* as code. **A MACE .model file is a Python
        pickle: loading it runs code from the file.** With ``trusted=False`` such files are
        refused (:class:`UntrustedModelError`) before they are read; named models (demo,
        CHGNet, MACE foundation) and CHGNet checkpoints (read weights-only) still load.
    **options
        Backend options: MACE ``head``, ``jit_optimize``; CHGNet ``descriptors``.

    Raises
    ------
    ValueError
        Unknown name (the message lists the known ones), a directory instead of a file, a
        file no backend recognises, an untrusted file, a bad ``device``/``dtype``/option
        value, a committee for a backend without committees.
    FileNotFoundError
        A path that does not exist.
    TypeError
        A spec of the wrong type or an option the backend does not take.
    core.potentials.FoundationModelUnavailable
        A MACE foundation model that is not cached and cannot be downloaded.
    """
    if spec is None:
        from core.potentials.mace_foundation import DEFAULT_MODEL

        spec = DEFAULT_MODEL
    extra = [committee] if isinstance(committee, (str, os.PathLike)) else list(committee or ())
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError("spec: empty list of models")
        spec, extra = spec[0], [*spec[1:], *extra]
    if not isinstance(spec, (str, os.PathLike)) and isinstance(spec, Potential):
        if extra:
            raise ValueError("committee: cannot add committee members to an already loaded Potential")
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"spec: expected a model name, a path or a Potential, got {type(spec).__name__}")
    device = resolve_device(device)
    if dtype is not None and dtype not in ("float64", "float32"):
        raise ValueError(f"dtype: expected one of ('float64', 'float32'), got {dtype!r} (or None: the backend's default)")
    backend = _find_backend(spec)
    if extra and not backend.committee:
        raise ValueError(f"committee: the {backend.label} backend does not support committees (got {len(extra)} "
                         "extra model(s)); committees are MACE models")
    if trusted is not True and trusted is not False:
        raise TypeError(f"trusted: expected True or False, got {trusted!r}")
    if backend.runs_code:
        for member in [spec, *extra]:
            _check_trust(member, trusted, backend)
    kwargs = dict(options, device=device)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if extra:
        kwargs["committee"] = extra
    _check_options(backend, kwargs)
    return backend.loader(spec, **kwargs)


def _find_backend(spec) -> Backend:
    for backend in reversed(backends()):
        if backend.matches(spec):
            return backend
    path = Path(spec).expanduser()
    if path.is_dir():
        raise ValueError(
            f"model: {str(path)!r} is a directory, not a model file; pass the model file inside it "
            "(a MACE .model file or a CHGNet .pth.tar checkpoint)"
        )
    if path.exists():
        raise ValueError(
            f"model: {str(path)!r} is not a model file FlexCal recognises: expected a MACE .model file "
            "(torch.save of the model) or a CHGNet checkpoint (.pth.tar); other MLIPs need a backend "
            "(core.potentials.register_backend)"
        )
    text = str(spec)
    if os.sep not in text and "/" not in text and not Path(text).suffix:
        raise ValueError(
            f"model: {text!r} is neither a known model name nor an existing file; known names: "
            f"{', '.join(model_names())}"
        )
    raise FileNotFoundError(f"model file {str(path)!r} does not exist")


def _check_trust(spec, trusted: bool, backend: Backend) -> None:
    path = existing_file(spec)
    if path is None or trusted:
        return
    raise UntrustedModelError(
        f"model: refusing to load {str(path)!r} with trusted=False: a {backend.label} model file is a Python "
        "pickle and loading it runs code from the file. Load it only if you trust it as you would a "
        "script (trusted=True)"
    )


def _check_options(backend: Backend, kwargs: dict) -> None:
    try:
        params = inspect.signature(backend.loader).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)][1:]
    for key in kwargs:
        if key not in params:
            raise TypeError(f"{key}: not an option of the {backend.label} backend; its options: {', '.join(accepted)}")


def potential_from_calculator(calc):
    """A one-pass Potential over an ASE calculator's own model, or None.

    Asks every backend with a ``from_calculator`` hook (MACE: ``MACECalculator``; CHGNet:
    ``CHGNetCalculator``). None when no backend knows the calculator or the calculator uses
    a feature the one-pass route does not reproduce (compiled/padded MACE graphs, unit
    conversions); callers then fall back to the calculator itself.
    """
    for backend in reversed(backends()):
        if backend.from_calculator is not None:
            potential = backend.from_calculator(calc)
            if potential is not None:
                return potential
    return None


# ------------------------------------------------------------------ built-ins
_BUILTINS_DONE = False
_BUILTINS_REGISTERING = False  # True while the lock's owner registers them (register_backend re-enters)
_BUILTINS_LOCK = threading.RLock()  # two first calls from two threads: the second waits for the full list


def _ensure_builtins() -> None:
    global _BUILTINS_DONE, _BUILTINS_REGISTERING
    if _BUILTINS_DONE:
        return
    with _BUILTINS_LOCK:
        if _BUILTINS_DONE or _BUILTINS_REGISTERING:
            return
        from core.potentials import builtin_backends

        _BUILTINS_REGISTERING = True
        try:
            builtin_backends.register_all(register_backend)  # the oldest entries: plug-ins take precedence
        finally:
            _BUILTINS_REGISTERING = False
        _BUILTINS_DONE = True
