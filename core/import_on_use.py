"""Modules a third-party package imports at its own import time but uses only later: imported on first use.

mace-torch imports ``torch._dynamo`` (torch's graph compiler, for its ``torch.compile`` training
path) when ``mace.modules`` is imported, through ``mace.tools.compile``; FlexCal never compiles a
model, and that import costs ~1 s of one core in every process that loads a MACE model (the app's
warm-up process, every ``flexcal`` command with ``--model``, every notebook kernel).

:func:`imported_on_first_use` holds, for the duration of a block, a placeholder module in
``sys.modules`` for each named module not imported yet. An ``import NAME`` inside the block binds
the placeholder; its first attribute access (``dynamo.config``, ``dynamo.allow_in_graph(...)``)
imports the real module and answers from it, and so does every later one. The placeholders leave
``sys.modules`` when the block ends: an import after it is an ordinary import.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import threading
import types

__all__ = ("imported_on_first_use",)

_lock = threading.Lock()


class _ImportedOnFirstUse(types.ModuleType):
    """Stands for the module of the same name until an attribute is asked for.

    ``__spec__`` is the real module's spec (``importlib.util.find_spec`` keeps working; the import
    system reads it to see that the module is not being initialised, without importing it).
    """

    def __getattr__(self, attr: str):
        return getattr(_real_module(self), attr)


def _real_module(placeholder: _ImportedOnFirstUse) -> types.ModuleType:
    """Import the module ``placeholder`` stands for (once; later calls find it in ``sys.modules``)."""
    name = placeholder.__name__
    with _lock:
        if sys.modules.get(name) is placeholder:
            del sys.modules[name]
    return importlib.import_module(name)


@contextlib.contextmanager
def imported_on_first_use(*names: str):
    """While the block runs, ``import NAME`` of each of ``names`` not yet imported binds a
    placeholder that imports the real module on its first attribute access.

    A name whose module is already imported, or that cannot be found (``find_spec`` is None), is
    left alone. Finding a submodule's spec imports its parent package (``torch`` for
    ``torch._dynamo``).
    """
    placed: dict[str, _ImportedOnFirstUse] = {}
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        placeholder = _ImportedOnFirstUse(name, f"{name}, imported on first use")
        placeholder.__spec__ = spec
        with _lock:
            if name not in sys.modules:
                placed[name] = sys.modules[name] = placeholder
    try:
        yield
    finally:
        with _lock:
            for name, placeholder in placed.items():
                if sys.modules.get(name) is placeholder:
                    del sys.modules[name]
