"""Guards that keep hostile inputs and outputs cheap: reading options, reader hints, output probes.

* :func:`add_read_args` / :func:`read_options` — the ``reading DATA`` flags and the
  :func:`core.data.read_dataset` keywords they give; :func:`cli_hints` — the reader's hints
  spelled as flags; :func:`reader_note` — its notes (dropped duplicates as a WARNING).
* :func:`check_output` — :func:`core.io.check_output` plus a probe file, before any work.
* :func:`check_layout` — a calibrator applied to sites of another model or descriptor width.

The reader (:func:`core.data.read_dataset`) bounds what a file may cost: its size
(``--max-bytes``), the atoms per structure (``--max-atoms``), the spatial extent of a frame
(``--max-extent``); it drops duplicate frames (``--duplicate-frames``). Its messages name
the API's parameters (``format=``, ``max_bytes=``, ...); :func:`cli_hints` rewrites them as
the flags a CLI user types.
"""

from __future__ import annotations

import argparse
import math
import re
import warnings
from pathlib import Path

from core.cli.ui import UI

__all__ = ["int_at_least", "positive_int", "positive_float", "add_read_args", "read_options", "cli_hints", "reader_note", "check_output", "check_layout"]

_API_TO_FLAG = re.compile(
    r"\b(format|forces_key|energy_key|max_bytes|max_atoms|max_extent|duplicate_frames)=(?:'(\w+)')?")


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def _size(text: str) -> int:
    """A byte count: ``500000000``, ``500M``, ``2G`` (K/M/G = 1024-based)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in ("K", "M", "G") else ""
    try:
        value = float(t[:-1] if unit else t) * _SIZE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in bytes such as 500M or 2G, got {text!r}") from None
    if not (1 <= value < 2**63):
        raise argparse.ArgumentTypeError(f"expected a size in bytes such as 500M or 2G, got {text!r}")
    return int(value)


def int_at_least(minimum: int, what: str):
    """argparse ``type=``: an integer >= ``minimum``; else "expected {what}, got '...'"."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def positive_float(what: str):
    """argparse ``type=``: a finite number > 0 (not NaN); else "expected {what}, got '...'"."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (0.0 < value < math.inf):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = int_at_least(1, "a positive integer")


def add_read_args(p: argparse.ArgumentParser) -> None:
    """The ``reading DATA`` group: --format, --max-bytes, --max-atoms, --max-extent, --duplicate-frames."""
    from core.data import DEFAULT_MAX_ATOMS, DEFAULT_MAX_BYTES, DEFAULT_MAX_EXTENT, DUPLICATE_FRAMES

    g = p.add_argument_group("reading DATA (limits keep a malformed or hostile file cheap)")
    g.add_argument("--format", metavar="FMT", default=None,
                   help="ASE format of DATA (extxyz, traj, ...); default: guessed from the file")
    g.add_argument("--max-bytes", type=_size, default=None, metavar="SIZE",
                   help=f"refuse larger data files, e.g. 500M or 2G (default: {DEFAULT_MAX_BYTES // 1024**2}M)")
    g.add_argument("--max-atoms", type=positive_int, default=DEFAULT_MAX_ATOMS, metavar="N",
                   help="refuse structures with more atoms (checked on extxyz atom-count lines before parsing)")
    g.add_argument("--max-extent", type=positive_float("a positive number"), default=DEFAULT_MAX_EXTENT, metavar="Å",
                   help="refuse frames that are not fully periodic with an atom farther than this from the origin "
                        "(Å), and periodic cells longer than 10x this: their neighbour lists cost GB")
    g.add_argument("--duplicate-frames", choices=DUPLICATE_FRAMES, default="drop",
                   help="frames repeating an earlier one: drop them with a note (a duplicate on both sides of the "
                        "split inflates coverage), refuse the file, or keep them")


def read_options(args) -> dict:
    """The :func:`core.data.read_dataset` keywords of ``args`` (the reading flags and label keys)."""
    names = ("energy_key", "forces_key", "format", "max_bytes", "max_atoms", "max_extent", "duplicate_frames")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def cli_hints(text: str) -> str:
    """A reader message with its API hints as CLI flags: ``pass format=`` -> ``pass --format``.

    ``duplicate_frames='drop'`` becomes ``--duplicate-frames drop``; the hint about
    ``require_labels=False`` (no CLI equivalent) is dropped.
    """
    from core.data import UNLABELLED_HINT

    text = text.replace(", " + UNLABELLED_HINT, "").replace(UNLABELLED_HINT, "")

    def flag(m: re.Match) -> str:
        name = "--" + m.group(1).replace("_", "-")
        return f"{name} {m.group(2)}" if m.group(2) else name

    return _API_TO_FLAG.sub(flag, text)


def reader_note(ui: UI, message: str) -> None:
    """A reader note on stderr; the one on dropped duplicate frames is a WARNING (never silenced)."""
    from core.data import DROPPED_NOTE

    (ui.warn if str(message).startswith(DROPPED_NOTE) else ui.info)(str(message))


def check_output(path, *, inputs=(), overwrite: bool = True, what: str = "--output") -> Path:
    """:func:`core.io.check_output` (which writes a probe file) with the CLI's default name."""
    from core.io import check_output as check

    return check(path, inputs=inputs, overwrite=overwrite, what=what)


def check_layout(ui: UI, cal, sites) -> None:
    """Sites of another descriptor width: an error; of another model (same width): a WARNING."""
    check = getattr(cal, "check_layout", None)
    if not callable(check):
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check(sites)
    for w in caught:
        ui.warn(" ".join(str(w.message).split()))
