"""MACE foundation models by name, through mace-torch's own download logic and cache.

Names (``FOUNDATION_MODELS``; default ``"mace-mp-0b3-medium"``) map to the ``model=`` keys
of ``mace_mp`` / ``mace_off``. The cache is mace-torch's (``~/.cache/mace`` or
``$XDG_CACHE_HOME/mace``). Without network access a model that is not cached raises
:class:`FoundationModelUnavailable` naming the URL to download and the exact cache path to
save it to (or: pass the file's path instead of the name).

Importing mace sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the whole process (mace-torch
does it at import, and e3nn's pickled constants need it under torch >= 2.6). Every import and
load here runs inside :func:`core.potentials.base.restored_environ`, so the variable is back
to its previous value afterwards and later ``torch.load`` calls keep torch's safe default.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

from core.import_on_use import imported_on_first_use
from core.potentials.base import WEIGHTS_ONLY_ENV, restored_environ
from core.torch_guard import TORCH_GUARD

DEFAULT_MODEL = "mace-mp-0b3-medium"

#: FlexCal name -> (mace-torch family, the ``model=`` key of ``mace_mp`` / ``mace_off``)
FOUNDATION_MODELS: dict[str, tuple[str, str]] = {
    "mace-mp-0b3-medium": ("mp", "medium-0b3"),
    "mace-mp-0-small": ("mp", "small"),
    "mace-mp-0-medium": ("mp", "medium"),
    "mace-mp-0-large": ("mp", "large"),
    "mace-mpa-0-medium": ("mp", "medium-mpa-0"),
    "mace-omat-0-small": ("mp", "small-omat-0"),
    "mace-omat-0-medium": ("mp", "medium-omat-0"),
    "mace-off23-small": ("off", "small"),
    "mace-off23-medium": ("off", "medium"),
    "mace-off23-large": ("off", "large"),
}


class FoundationModelUnavailable(RuntimeError):
    """A foundation model is not cached and could not be downloaded."""


#: Modules mace-torch imports at its import time that FlexCal's use of it does not need until later, if
#: ever (:mod:`core.import_on_use`): ``torch._dynamo`` (~1 s of one core), for mace's ``torch.compile`` path.
MACE_IMPORTS_ON_FIRST_USE = ("torch._dynamo",)


def mace_modules():
    """Import mace (before e3nn) with the environment restored afterwards; returns
    ``mace.calculators.foundations_models``.

    The modules of :data:`MACE_IMPORTS_ON_FIRST_USE` are imported when mace first uses them.
    """
    with restored_environ(), warnings.catch_warnings(), imported_on_first_use(*MACE_IMPORTS_ON_FIRST_USE):
        # our own, contained use of the variable: torch's notice about it is noise here
        warnings.filterwarnings("ignore", message="Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
        import mace.calculators  # noqa: F401  (sets the variable; e3nn's constants need it)
        import mace.calculators.foundations_models as foundations_models
        import mace.modules  # noqa: F401  (imports e3nn while the variable is set)

    return foundations_models


@contextlib.contextmanager
def unpickling_mace():
    """Hold while a trusted MACE model file is unpickled (by FlexCal or by mace-torch itself).

    mace is imported first (contained); the block runs alone in the process
    (``core.torch_guard.TORCH_GUARD.tracing()``: e3nn's torch.fx tracing must not meet a module call
    in another thread) and mace's environment change does not outlive it.
    """
    mace_modules()
    with TORCH_GUARD.tracing(), restored_environ():
        yield


def mace_own_calculator(model_path, **kwargs):
    """mace-torch's own ``MACECalculator(model_paths=model_path, **kwargs)`` for a file you trust.

    Its ``torch.load`` unpickles the file, which it can do only while ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
    is set; the variable is set for the construction alone. FlexCal loads models with
    :func:`core.potentials.load_potential`; this is for comparing with mace's own calculator
    (tests, benchmarks).
    """
    from mace.calculators import MACECalculator

    with unpickling_mace():
        os.environ[WEIGHTS_ONLY_ENV] = "1"
        return MACECalculator(model_paths=str(model_path), **kwargs)


def foundation_model_source(name: str) -> tuple[str, Path]:
    """(download URL, cache path) mace-torch uses for a foundation model.

    The cache path follows mace-torch exactly (``mace.tools.utils.get_cache_dir()``,
    ``$XDG_CACHE_HOME/mace`` or ``~/.cache/mace``): for ``mace_mp`` models the
    URL's file name with everything but letters, digits and ``_`` removed; for
    ``mace_off`` models the URL's file name as is.
    """
    if name not in FOUNDATION_MODELS:
        raise ValueError(f"unknown foundation model {name!r}; known: {', '.join(FOUNDATION_MODELS)}")
    fm = mace_modules()
    family, key = FOUNDATION_MODELS[name]
    cache_dir = Path(fm.get_cache_dir())
    if family == "mp":
        url = fm.mace_mp_urls[key]
        fname = "".join(c for c in os.path.basename(url) if c.isalnum() or c in "_")
    else:
        url = fm.mace_off_urls[key]
        fname = os.path.basename(url).split("?")[0]
    return url, cache_dir / fname


def foundation_model_cached(name: str) -> bool:
    """Whether ``name`` can be loaded without network access (its file is in the cache)."""
    fm = mace_modules()
    family, key = FOUNDATION_MODELS[name]
    if family == "mp" and key == "medium-mpa-0" and os.path.isfile(fm.local_model_path):
        return True
    return foundation_model_source(name)[1].is_file()


def foundation_model_path(name: str) -> Path:
    """Local path of a foundation model, downloading it with mace-torch if needed.

    Raises
    ------
    FoundationModelUnavailable
        Not cached and the download failed (e.g. offline). The message names
        the URL and the cache path to put the file at.
    """
    url, cache_path = foundation_model_source(name)
    fm = mace_modules()
    family, key = FOUNDATION_MODELS[name]
    if family == "mp" and key == "medium-mpa-0" and os.path.isfile(fm.local_model_path):
        return Path(fm.local_model_path)
    if cache_path.is_file():
        return cache_path
    try:
        with unpickling_mace():  # (mace_off loads the model it downloads)
            if family == "mp":
                path = Path(fm.download_mace_mp_checkpoint(key))
            else:
                fm.mace_off(model=key, device="cpu", return_raw_model=True)
                path = cache_path
    except Exception as exc:  # URLError, OSError, RuntimeError from mace's wrappers, ...
        cause = exc.__cause__ or exc
        raise FoundationModelUnavailable(
            f"foundation model {name!r} is not cached and could not be downloaded "
            f"({type(cause).__name__}: {cause}). Download {url} and save it as {cache_path} "
            f"(mace-torch's cache; set XDG_CACHE_HOME to move it), or pass the path of a "
            f"local .model file instead of the name."
        ) from exc
    if not path.is_file():
        raise FoundationModelUnavailable(
            f"foundation model {name!r}: mace-torch reported no file at {path}. "
            f"Download {url} and save it as {cache_path}, or pass a local .model path."
        )
    return path
