"""Bounds and sanity checks for datasets read by :mod:`core.data`.

Everything here exists so that a malformed or hostile file costs little and fails with a
message naming the file, the frame (and line) and the value received:

* :func:`scan_xyz` walks an (ext)xyz file's frame boundaries **before** ASE does: an atom
  count that is not a number, larger than ``max_atoms``, larger than the bytes left in the
  file, or a frame cut short is reported with its real frame index and line (ASE's own first
  pass would report "frame 0", or spin on a count of 999999999999). It also bounds the
  header line (``MAX_HEADER_BYTES``) and the number of columns it declares
  (``MAX_COLUMNS``), and refuses a blank line followed by more data (ASE stops reading at a
  blank line, silently dropping what follows).
* :func:`check_frame` — one frame: at least one atom, at most ``max_atoms``, finite positions
  and cell, a non-degenerate periodic cell, no two atoms at one position, and a bounded
  spatial extent (``max_extent``, below).
* :func:`find_duplicate_frames` — frames equal to an earlier one (same atoms in the same
  order, positions and cell within ``DUPLICATE_FRAME_TOLERANCE`` Å).
* :func:`resolve_format` — the ASE format to read a file with (given and checked, or guessed).

Extent: MACE-style neighbour lists (matscipy, via mace's ``get_neighborhood``) bin a box whose
non-periodic sides grow with the largest |coordinate| of the frame. Measured for 180 atoms
with a 5 Å cutoff: 0.02 s at 20 Å, 1.1 s and +0.5 GB at 100 Å, 8 s and 4.6 GB at 200 Å,
23 s and 8 GB at 500 Å from the origin; a periodic cell costs 0.05 s at 1000 Å and 6 s and
4 GB at 10^4 Å. So a frame that is not periodic in all three directions must keep every
|coordinate| <= ``max_extent`` (default 100 Å), and every periodic cell vector must be at most
``PERIODIC_EXTENT_FACTOR`` x ``max_extent`` long (default 1000 Å).
"""

from __future__ import annotations

import re
from itertools import islice
from pathlib import Path

import numpy as np

__all__ = [
    "DatasetError",
    "DEFAULT_MAX_ATOMS",
    "DEFAULT_MAX_EXTENT",
    "PERIODIC_EXTENT_FACTOR",
    "DUPLICATE_FRAME_TOLERANCE",
    "MAX_HEADER_BYTES",
    "MAX_COLUMNS",
    "scan_xyz",
    "supported_formats",
    "resolve_format",
    "frame_label",
    "check_frame",
    "find_duplicate_frames",
    "first_duplicate_atoms",
]

DEFAULT_MAX_ATOMS = 100_000          # atoms per structure
DEFAULT_MAX_EXTENT = 100.0           # Å, largest |coordinate| of a frame with a non-periodic direction
PERIODIC_EXTENT_FACTOR = 10.0        # periodic cell vectors may be this many times max_extent
DUPLICATE_FRAME_TOLERANCE = 1e-4     # Å, two frames closer than this in every coordinate are one
MAX_HEADER_BYTES = 1 << 20           # the comment (header) line of one extxyz frame
MAX_COLUMNS = 10_000                 # columns an extxyz Properties= entry may declare
XYZ_FORMATS = ("extxyz", "xyz")
_MIN_ATOM_LINE = 2                   # bytes: "H\n" is the shortest possible atom line
_PROPERTIES = re.compile(rb'Properties=(?:"([^"]*)"|(\S+))', re.IGNORECASE)


class DatasetError(ValueError):
    """Unreadable, inconsistent, mislabelled or too costly dataset (names file, frame and key).

    Defined here, exported by :mod:`core.data` (``core.data.DatasetError``).
    """


def _shown(raw: bytes, limit: int = 60) -> str:
    """``raw`` quoted for a message (shortened), or ``binary data`` when it is not text."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text (save the file as UTF-8)"
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return "binary data"
    if any(ord(c) < 32 and c not in "\t\r\n" for c in text):
        return "binary data"
    return repr(text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)")


def scan_xyz(path: Path, source: str, *, max_atoms: int) -> np.ndarray:
    """Line number (1-based) of each frame's atom-count line in an (ext)xyz file.

    Reads the file once in binary, skipping atom lines without parsing them (bounded cost:
    O(file size)). Raises ValueError ``"<source>: frame <k> (line <L>): ..."`` for a count
    line that is not a non-negative integer, a count over ``max_atoms`` (``max_atoms=``) or
    over what the bytes left can hold, a frame cut short, a header line over
    ``MAX_HEADER_BYTES`` or declaring over ``MAX_COLUMNS`` columns, and a blank line followed
    by more data.
    """
    size = path.stat().st_size
    starts: list[int] = []
    line_no = 0
    with open(path, "rb") as fh:
        while True:
            raw = fh.readline()
            if not raw:
                break
            line_no += 1
            k = len(starts)
            if not raw.strip():
                _refuse_data_after_blank(fh, source, line_no, k)
                break
            where = f"{source}: frame {k} (line {line_no})"
            n = _atom_count(raw, where, k)
            if n > max_atoms:
                raise DatasetError(f"{where} declares {n} atoms, over the limit of {max_atoms} atoms per structure "
                             f"(max_atoms=)")
            left = size - fh.tell()
            if n * _MIN_ATOM_LINE > left:
                raise DatasetError(f"{where} declares {n} atoms, but only {left} bytes follow in the file: the atom "
                             "count is wrong or the file is truncated")
            header = fh.readline(MAX_HEADER_BYTES + 1)
            if not header:
                raise DatasetError(f"{where}: the file ends after the atom count (no header line, no atoms)")
            if len(header) > MAX_HEADER_BYTES:
                raise DatasetError(f"{where}: the header line is longer than {MAX_HEADER_BYTES} bytes; "
                             "an extxyz header holds a few key=value pairs")
            _check_columns(header, where)
            got = sum(1 for _ in islice(fh, n))
            if got < n:
                raise DatasetError(f"{where} declares {n} atoms, but the file ends after {got} atom lines: the file is "
                             "truncated or the atom count is wrong")
            starts.append(line_no)
            line_no += 1 + n + _skip_vec_lines(fh)
    return np.asarray(starts, dtype=np.int64)


def _atom_count(raw: bytes, where: str, k: int) -> int:
    text = raw.strip()
    try:
        n = int(text)
    except ValueError:
        hint = (f" (the atom count of frame {k - 1} may be wrong)" if k else
                " (not an xyz/extxyz file? pass format=)")
        raise DatasetError(f"{where}: expected the number of atoms of a frame, got {_shown(text)}{hint}") from None
    if n < 0:
        raise DatasetError(f"{where}: expected the number of atoms of a frame, got {n}")
    return n


def _check_columns(header: bytes, where: str) -> None:
    m = _PROPERTIES.search(header)
    if m is None:
        return
    fields = (m.group(1) or m.group(2) or b"").split(b":")
    total = 0
    for count in fields[2::3]:
        try:
            total += int(count)
        except ValueError:
            raise DatasetError(f"{where}: Properties= has a column count that is not an integer: "
                               f"{_shown(count)}") from None
    if total > MAX_COLUMNS:
        raise DatasetError(f"{where}: Properties= declares {total} columns per atom (over {MAX_COLUMNS})")


def _skip_vec_lines(fh) -> int:
    """Skip the VEC1..VEC3 lines ASE accepts after a frame's atoms; how many were skipped."""
    n = 0
    while n < 3:
        pos = fh.tell()
        raw = fh.readline()
        if not raw.lstrip().startswith(b"VEC"):
            fh.seek(pos)
            break
        n += 1
    return n


def _refuse_data_after_blank(fh, source: str, line_no: int, k: int) -> None:
    after = line_no
    for raw in fh:
        after += 1
        if raw.strip():
            raise DatasetError(f"{source}: line {line_no} is blank but the file continues at line {after} "
                         f"({_shown(raw)}); ASE stops reading at a blank line, so frames {k} and later would be "
                         "lost: remove the blank line(s)")


def frame_label(i: int, lines: np.ndarray | None) -> str:
    """``"frame 3"``, or ``"frame 3 (line 25)"`` when the frames' count lines are known."""
    if lines is not None and 0 <= i < len(lines):
        return f"frame {i} (line {int(lines[i])})"
    return f"frame {i}"


def supported_formats() -> list[str]:
    """Names of the formats ASE can read."""
    from ase.io.formats import ioformats

    return sorted(name for name, fmt in ioformats.items() if fmt.can_read)


_COMMON_FORMATS = ("extxyz", "xyz", "traj", "db", "cif", "vasp", "vasp-out", "vasp-xml", "espresso-out",
                   "lammps-dump-text", "aims-output", "castep-castep", "gpaw-out", "cp2k-dcd")


def _formats_text() -> str:
    """The common readable formats, and how many more ASE reads."""
    every = supported_formats()
    common = [f for f in _COMMON_FORMATS if f in every]
    return f"{', '.join(common)} and {len(every) - len(common)} more (`ase info --formats` lists them)"


def resolve_format(path: Path, source: str, format: str | None) -> str:
    """The ASE format to read ``path`` with: ``format`` checked, else guessed (DatasetError if neither)."""
    from ase.io.formats import UnknownFileTypeError, filetype, ioformats

    if format is not None:
        if format not in ioformats or not ioformats[format].can_read:
            raise DatasetError(f"{source}: unsupported format {format!r}; ASE reads: {_formats_text()}")
        return format
    try:
        fmt = filetype(str(path), guess=True)
    except (UnknownFileTypeError, OSError, ValueError) as exc:
        raise DatasetError(
            f"{source}: cannot tell the file format ({exc}); pass format= with one of: "
            f"{_formats_text()}"
        ) from None
    if fmt not in ioformats or not ioformats[fmt].can_read:
        raise DatasetError(
            f"{source}: cannot tell the file format (guessed {fmt!r}, which ASE cannot read); "
            f"pass format= with one of: {_formats_text()}"
        )
    return fmt


# ---------------------------------------------------------------- one frame
def check_frame(atoms, where: str, *, tol: float, max_atoms: int, max_extent: float) -> None:
    """Raise ValueError ``"<where>: ..."`` for a frame FlexCal cannot use or could not afford.

    ``where`` names the file and frame (``"data.xyz: frame 3 (line 25)"``).
    """
    n = len(atoms)
    if n == 0:
        raise DatasetError(f"{where} has zero atoms")
    if n > max_atoms:
        raise DatasetError(f"{where} has {n} atoms, over the limit of {max_atoms} atoms per structure (max_atoms=)")
    pos = np.asarray(atoms.positions, dtype=np.float64)
    bad = ~np.isfinite(pos)
    if bad.any():
        raise DatasetError(f"{where}: positions contain NaN or inf (atom {int(np.argwhere(bad)[0][0])})")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any():
        _check_cell(atoms, pbc, where, max_extent)
    if not pbc.all():
        far = np.abs(pos).max()
        if far > max_extent:
            atom = int(np.argmax(np.abs(pos).max(axis=1)))
            open_axes = "".join("xyz"[k] for k in np.flatnonzero(~pbc))
            raise DatasetError(
                f"{where}: atom {atom} lies {far:.4g} Å from the origin in a frame that is not periodic along "
                f"{open_axes}; a neighbour list then costs time and memory growing with that distance "
                f"(~1 s and 0.5 GB per frame at 100 Å, 8 GB at 500 Å), so the limit is {max_extent:g} Å "
                "(max_extent=): centre the structure near the origin, or raise the limit"
            )
    pair = first_duplicate_atoms(atoms, tol)
    if pair is not None:
        a, b, d = pair
        raise DatasetError(f"{where}: atoms {a} and {b} are at the same position (distance {d:.2e} Å < {tol:g} Å"
                     f"{', minimum image' if pbc.any() else ''})")


def _check_cell(atoms, pbc: np.ndarray, where: str, max_extent: float) -> None:
    cell = np.asarray(atoms.cell, dtype=np.float64)
    if not np.all(np.isfinite(cell)):
        raise DatasetError(f"{where}: cell contains NaN or inf")
    lengths = np.linalg.norm(cell, axis=1)
    if np.any(lengths[pbc] < 1e-8) or (pbc.all() and abs(np.linalg.det(cell)) < 1e-8):
        raise DatasetError(f"{where}: periodic along {['xyz'[k] for k in np.flatnonzero(pbc)]} but the cell is "
                     f"degenerate (lengths {np.round(lengths, 6).tolist()})")
    limit = PERIODIC_EXTENT_FACTOR * max_extent
    longest = int(np.argmax(np.where(pbc, lengths, -1.0)))
    if lengths[longest] > limit:
        raise DatasetError(f"{where}: periodic cell vector {'abc'[longest]} is {lengths[longest]:.4g} Å long; "
                           "a neighbour list over such a cell costs seconds and GB per frame (6 s and 4 GB at "
                           f"10^4 Å), so the limit is {limit:g} Å ({PERIODIC_EXTENT_FACTOR:g} x max_extent=)")


def first_duplicate_atoms(atoms, tol: float):
    """First pair (i, j, distance) of atoms closer than ``tol`` Å (minimum image), else None.

    A k-d tree on the Cartesian positions finds direct pairs. When periodic, the
    positions are wrapped into the cell first, so a minimum-image pair closer than
    ``tol`` either is a direct pair or involves atoms within ``tol`` of a cell
    face; only those few atoms are compared against the 3^k-1 shifted images.
    """
    from scipy.spatial import cKDTree

    pbc = np.asarray(atoms.pbc, dtype=bool)
    pos = np.asarray(atoms.positions, dtype=np.float64)
    if len(pos) < 2:
        return None
    if not pbc.any():
        return _first_pair(cKDTree(pos), pos, tol)
    cell = np.asarray(atoms.cell.complete() if not pbc.all() else atoms.cell, dtype=np.float64)
    frac = np.linalg.solve(cell.T, pos.T).T
    frac[:, pbc] -= np.floor(frac[:, pbc])
    cart = frac @ cell
    tree = cKDTree(cart)
    found = _first_pair(tree, cart, tol)
    if found is not None:
        return found
    vol = abs(np.linalg.det(cell))  # heights of the cell (distance between opposite faces)
    heights = np.array([vol / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)])
    near = np.zeros(len(pos), dtype=bool)
    for k in np.flatnonzero(pbc):
        f = frac[:, k]
        near |= (f * heights[k] < tol) | ((1.0 - f) * heights[k] < tol)
    idx = np.flatnonzero(near)
    if idx.size == 0:
        return None
    ranges = [(-1, 0, 1) if pbc[k] else (0,) for k in range(3)]
    for shift in np.array(np.meshgrid(*ranges, indexing="ij")).reshape(3, -1).T:
        if not shift.any():
            continue
        shifted = cart[idx] + shift.astype(np.float64) @ cell
        for row, js in enumerate(tree.query_ball_point(shifted, tol)):
            a = int(idx[row])
            for j in js:
                if j != a:
                    return min(a, j), max(a, j), float(np.linalg.norm(shifted[row] - cart[j]))
    return None


def _first_pair(tree, pos: np.ndarray, tol: float):
    pairs = tree.query_pairs(tol, output_type="ndarray")
    if not len(pairs):
        return None
    a, b = sorted(pairs.tolist())[0]
    return a, b, float(np.linalg.norm(pos[a] - pos[b]))


# ---------------------------------------------------------------- duplicate frames
def find_duplicate_frames(frames, tol: float = DUPLICATE_FRAME_TOLERANCE) -> dict[int, int]:
    """``{later: first}`` positions of frames that repeat an earlier frame.

    Two frames are duplicates when they have the same atomic numbers in the same order, the
    same pbc, and cells and positions equal within ``tol`` Å in every coordinate (a periodic
    image shifted by a lattice vector is not detected). Frames are grouped by (numbers, pbc),
    sorted along a fixed random projection of their coordinates, and only neighbours within
    the projection's bound are compared, so the cost stays near O(m log m) for distinct frames.
    """
    groups: dict[tuple, list[int]] = {}
    for i, atoms in enumerate(frames):
        key = (len(atoms), np.asarray(atoms.numbers).tobytes(), np.asarray(atoms.pbc, dtype=bool).tobytes())
        groups.setdefault(key, []).append(i)
    found: dict[int, int] = {}
    for members in groups.values():
        if len(members) > 1:
            for later, first in _duplicates_in_group(frames, members, tol).items():
                found[later] = min(first, found.get(later, first))
    # chains (c duplicates b duplicates a) point at the earliest frame
    return {k: _root(found, v) for k, v in sorted(found.items())}


def _root(found: dict[int, int], i: int) -> int:
    while i in found:
        i = found[i]
    return i


def _duplicates_in_group(frames, members: list[int], tol: float) -> dict[int, int]:
    X = np.stack([np.concatenate([np.asarray(frames[i].positions, dtype=np.float64).ravel(),
                                  np.asarray(frames[i].cell, dtype=np.float64).ravel()]) for i in members])
    r = np.random.default_rng(0).standard_normal(X.shape[1])
    key = X @ r
    window = tol * np.abs(r).sum() * (1 + 1e-9) + 1e-12
    order = np.argsort(key, kind="stable")
    ks = key[order]
    out: dict[int, int] = {}
    for a in range(len(order) - 1):
        hi = int(np.searchsorted(ks, ks[a] + window, side="right"))
        if hi <= a + 1:
            continue
        cand = order[a + 1:hi]
        close = cand[np.all(np.abs(X[cand] - X[order[a]]) <= tol, axis=1)]
        for c in close:
            i, j = members[int(order[a])], members[int(c)]
            later, first = max(i, j), min(i, j)
            out[later] = min(first, out.get(later, first))
    return out
