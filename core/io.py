"""Safe output files: check an output path before the work, write it atomically after.

* :func:`check_output` — before any expensive step: the parent folder exists (or can be made)
  and is writable, the path is not a directory, not one of the inputs, and does not exist
  unless ``overwrite``.
* :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_path` — write to a
  temporary file in the same folder, then ``os.replace`` it into place, so an interrupted or
  failed write never leaves a half-written file and never destroys the previous one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["check_output", "atomic_path", "atomic_write_bytes", "atomic_write_text"]


def check_output(path, *, inputs: Iterable = (), overwrite: bool = True, what: str = "output") -> Path:
    """Validate an output path before the work that produces it. Returns it as a Path.

    Raises ValueError naming ``what`` and the path when it is a directory, equals one of
    ``inputs``, exists while ``overwrite`` is False, or its folder cannot be written.
    """
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{what}: {p} is a directory; give a file name")
    resolved = p.resolve()
    for inp in inputs:
        if inp is not None and Path(inp).resolve() == resolved:
            raise ValueError(f"{what}: {p} is also an input; refusing to overwrite an input file")
    if p.exists() and not overwrite:
        raise ValueError(f"{what}: {p} exists; remove it or choose another name")
    parent = resolved.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{what}: cannot create the folder {parent} ({exc.strerror or exc})") from None
    # a probe file, not the permission bits: root passes os.access on read-only mounts and /proc
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{what}: cannot write into the folder {parent} ({exc.strerror or exc}); "
                         "nothing was computed") from None
    return p


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + rename). Returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (temporary file + rename). Returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))
