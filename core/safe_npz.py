"""Reading FlexCal's ``.npz`` files (site tables, calibrators) without trusting them.

:func:`read_npz` is the one reader behind :meth:`core.sites.SiteTable.load` and
:func:`core.calibration.load_calibrator`. Before anything is decompressed it checks that the
path is a regular file and a zip archive, that the sizes its entries declare add up to at
most ``max_bytes`` and do not expand more than ``MAX_EXPANSION`` times their compressed size
(a 1 MB zip bomb declaring 1.4 GB is refused), and that every entry is a ``.npy`` array of
plain numbers, booleans or text whose header agrees with its declared size. Nothing is ever
unpickled: an entry holding Python objects is refused as such. Every problem raises
``ValueError`` starting with the path and the kind of file expected; no message suggests
loading a file unsafely.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from core.validation import check_regular_file

__all__ = ["DEFAULT_MAX_NPZ_BYTES", "MAX_EXPANSION", "read_npz", "read_meta"]

DEFAULT_MAX_NPZ_BYTES = 4 * 1024**3     # decompressed size of all entries together
MAX_EXPANSION = 200                     # decompressed / compressed, above _EXPANSION_FLOOR bytes
_EXPANSION_FLOOR = 64 * 1024**2         # small files may compress well (all-zero columns)
_KINDS = "biufcU"                       # bool, int, uint, float, complex, unicode text


def read_npz(path, what: str, *, max_bytes: int = DEFAULT_MAX_NPZ_BYTES, title: str | None = None
             ) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file at ``path`` (name -> array), checked before decompression.

    ``what`` names the kind of file in messages (``"SiteTable"``, ``"calibrator"``); ``title``
    (default ``"FlexCal <what>"``) in "not a readable <title> .npz file". Raises
    FileNotFoundError for a missing path and ValueError ``"<path>: ..."`` otherwise.
    """
    path = check_regular_file(path, str(path), no_such=f"no such {what} file", expected=f"a {what} .npz file")
    title = title or f"FlexCal {what}"
    head = _head(path)
    if not head.startswith(b"PK"):
        kind = ("a single .npy array" if head.startswith(b"\x93NUMPY") else
                "a Python pickle (FlexCal never unpickles)" if head[:1] == b"\x80" else
                "empty" if not head else "not a zip archive")
        raise ValueError(f"{path}: not a readable {title} .npz file ({kind})")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = _checked_entries(zf, path, what, max_bytes)
            return {name: _read_entry(zf, info, path, what) for name, info in infos.items()}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a readable {title} .npz file (damaged: {type(exc).__name__}: "
                         f"{_clean(exc)})") from None


def read_meta(data: dict[str, np.ndarray], path, what: str) -> dict[str, Any]:
    """The JSON object stored under ``"__meta__"`` (removed from ``data``); ValueError naming ``path``."""
    if "__meta__" not in data:
        raise ValueError(f"{path}: not a FlexCal {what} (no __meta__ entry)")
    raw = data.pop("__meta__")
    if raw.dtype.kind != "U" or raw.ndim != 0:
        raise ValueError(f"{path}: __meta__ must be one JSON string, got an array of {raw.dtype} "
                         f"with shape {raw.shape}")
    try:
        meta = json.loads(str(raw))
    except ValueError as exc:
        raise ValueError(f"{path}: __meta__ is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: __meta__ must be a JSON object, got {type(meta).__name__}")
    return meta


def _head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(8)


def _clean(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return "unreadable entry" if "pickle" in text.lower() else text[:200]  # never suggest unpickling


def _checked_entries(zf: zipfile.ZipFile, path: Path, what: str, max_bytes: int) -> dict[str, zipfile.ZipInfo]:
    infos: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        if info.is_dir():
            continue
        if not info.filename.endswith(".npy"):
            raise ValueError(f"{path}: entry {info.filename!r} is not a .npy array; not a {what} .npz file")
        infos[info.filename[:-4]] = info
    if not infos:
        raise ValueError(f"{path}: the archive holds no arrays; not a {what} .npz file")
    expanded = sum(i.file_size for i in infos.values())
    packed = max(sum(i.compress_size for i in infos.values()), 1)
    if expanded > max_bytes:
        raise ValueError(f"{path}: its {len(infos)} entries declare {expanded} bytes once decompressed, over the limit "
                         f"of {max_bytes} bytes (max_bytes=); refused before decompressing")
    if expanded > _EXPANSION_FLOOR and expanded > MAX_EXPANSION * packed:
        raise ValueError(f"{path}: its entries would expand from {packed} to {expanded} bytes "
                         f"({expanded / packed:.0f}x; "
                         f"FlexCal files expand at most a few times): a damaged file or a zip bomb, refused "
                         "before decompressing")
    return infos


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, what: str) -> np.ndarray:
    name = info.filename[:-4]
    with zf.open(info) as fh:
        try:
            shape, dtype = _array_header(fh)  # the header only: no data read yet
        except (ValueError, SyntaxError, TypeError) as exc:
            raise ValueError(f"{path}: entry {name!r} is not a valid .npy array ({_clean(exc)}); damaged {what} "
                             "file") from None
        if dtype.hasobject or dtype.kind not in _KINDS or dtype.fields is not None:
            held = "Python objects (a pickle)" if dtype.hasobject else dtype
            raise ValueError(f"{path}: entry {name!r} holds {held}; "
                             f"a FlexCal {what} stores plain numbers and text only, so the file is refused")
        count = math.prod(shape)
        if min(shape, default=0) < 0 or count * dtype.itemsize > info.file_size:
            raise ValueError(f"{path}: entry {name!r} declares shape {shape} ({count * dtype.itemsize} bytes) "
                             f"but holds {info.file_size} bytes; damaged {what} file")
    with zf.open(info) as fh:
        try:
            return np.lib.format.read_array(fh, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"{path}: entry {name!r} could not be read ({_clean(exc)}); damaged {what} file") from None


def _array_header(fh) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a ``.npy`` header; ValueError when it is not one."""
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(fh)
    else:
        raise ValueError(f".npy format version {version} is not one FlexCal writes")
    return tuple(int(n) for n in shape), np.dtype(dtype)
