"""The malformed and hostile inputs of the fuzz benchmark (:mod:`benchmarks.fuzz_inputs`).

Each :class:`Case` writes its inputs into an empty folder and returns the ``flexcal``
arguments that use them. ``expect`` is a regular expression the one error line must match
(it names the file, frame/line, key or argument and the value received); ``expect=None``
means the input is valid or recoverable and the command must succeed, and ``check`` then
inspects the result for a silent wrong answer. ``fast`` cases fail before any model runs
(they are the subset ``tests/test_fuzz.py`` replays). Nothing here can hang: FIFOs and
``/dev/zero`` links are refused before they are opened.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "datasets" / "models" / "molecule.model"   # the embedded demo model (H, C, O)
BASE_DATA = ROOT / "datasets" / "molecule_ethanol.xyz"


@dataclass(frozen=True)
class Case:
    """One hostile input: how to build it, what a good answer says."""

    name: str
    group: str
    what: str
    build: Callable[[Path], list[str]]
    expect: str | None
    check: Callable[[Path, str, str], str | None] | None = None   # (folder, stdout, stderr) -> problem or None
    fast: bool = True


# ------------------------------------------------------------------ data builders
def frames(n: int = 6, start: int = 0) -> list:
    """``n`` labelled ethanol frames of the demo file (REF_forces, REF_energy, config_type only)."""
    import ase.io

    out = []
    for a in ase.io.read(BASE_DATA, index=f"{start}:{start + n}"):
        b = a.copy()
        b.arrays = {k: v for k, v in a.arrays.items() if k in ("numbers", "positions", "REF_forces")}
        b.info = {"REF_energy": a.info["REF_energy"], "config_type": a.info.get("config_type", "md")}
        out.append(b)
    return out


def texts(items) -> list[str]:
    """Each frame as its own extxyz text."""
    import ase.io

    out = []
    for a in items:
        buf = io.StringIO()
        ase.io.write(buf, a, format="extxyz")
        out.append(buf.getvalue())
    return out


def write(d: Path, name: str, content) -> Path:
    p = d / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content if isinstance(content, str) else "".join(content))
    return p


def featurize(d: Path, data: Path | str, *extra: str) -> list[str]:
    return ["featurize", str(data), "--model", str(MODEL), "-o", str(d / "out.npz"), "-q", *extra]


def replace_line(text: str, line: int, new: str) -> str:
    lines = text.splitlines(keepends=True)
    lines[line] = new + "\n"
    return "".join(lines)


def data_case(name, what, mutate, expect, *extra, fast=True, check=None, file="data.xyz"):
    """A featurize case on a file made by ``mutate(list of frame texts) -> text or bytes``."""
    def build(d: Path) -> list[str]:
        return featurize(d, write(d, file, mutate(texts(frames()))), *extra)
    return Case(name, "data file", what, build, expect, check, fast)


def _frame_with(k: int, fn):
    def mutate(fr):
        fr = list(fr)
        fr[k] = fn(fr[k])
        return fr
    return mutate


def _cloud(n: int, span: float, periodic_cell: float | None = None, seed: int = 0) -> str:
    from ase import Atoms

    rng = np.random.default_rng(seed)
    a = Atoms("H" * n, positions=rng.uniform(0, span, (n, 3)))
    if periodic_cell:
        a.cell, a.pbc = np.eye(3) * periodic_cell, True
    a.arrays["REF_forces"] = np.zeros((n, 3))
    a.info["REF_energy"] = -1.0
    return texts([a])[0]


# ------------------------------------------------------------------ site tables / calibrators
def synthetic_sites(n_structures: int = 30, atoms: int = 6, d: int = 4, seed: int = 0, labelled: bool = True):
    from core.sites import SiteTable

    rng = np.random.default_rng(seed)
    n = n_structures * atoms
    x = rng.normal(size=(n, d))
    f_ref = rng.normal(size=(n, 3))
    f_pred = f_ref + 0.05 * np.exp(0.5 * x[:, :1]) * rng.normal(size=(n, 3))
    return SiteTable.from_arrays(descriptors=x, errors=None, species=rng.choice([1, 6, 8], size=n),
                                 structure_ids=np.repeat(np.arange(n_structures), atoms), forces_pred=f_pred,
                                 forces_ref=f_ref if labelled else None,
                                 meta={"potential": "synthetic", "potential_identity": f"synthetic-{d}"})


def npz_arrays(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        return {n[:-4]: np.lib.format.read_array(io.BytesIO(zf.read(n)), allow_pickle=False)
                for n in zf.namelist()}


def tampered(good: Path, out: Path, change: Callable[[dict], dict]) -> Path:
    """A copy of the ``.npz`` at ``good`` with ``change(arrays) -> arrays`` applied (object arrays allowed)."""
    arrays = change(npz_arrays(good))
    with open(out, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return out


def with_meta(fn: Callable[[dict], object]) -> Callable[[dict], dict]:
    """An array change that rewrites ``__meta__`` (JSON) with ``fn(meta) -> new meta or raw string``."""
    def change(arrays):
        meta = json.loads(str(arrays["__meta__"]))
        new = fn(meta)
        arrays["__meta__"] = np.array(new if isinstance(new, str) else json.dumps(new))
        return arrays
    return change


#: What the zip-bomb cases declare (the issue's 1.4 GB; tests/test_fuzz.py uses 100 MB to stay fast).
BOMB_BYTES = 1_400_000_000


def zip_bomb(path: Path, declared: int | None = None, meta: dict | None = None) -> Path:
    """A real zip bomb: a ``descriptors.npy`` of ``declared`` bytes of zeros, deflated (~1000x)."""
    n = (declared or BOMB_BYTES) // 8
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (n,)})
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("__meta__.npy", _npy(np.array(json.dumps(meta or {"format": "flexcal.SiteTable", "version": 1}))))
        zf.writestr("species.npy", _npy(np.ones(3, dtype=np.int64)))
        with zf.open("descriptors.npy", "w", force_zip64=True) as fh:
            fh.write(header.getvalue())
            left = n * 8
            while left:
                k = min(left, len(chunk))
                fh.write(chunk[:k])
                left -= k
    return path


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def site_files(d: Path) -> tuple[Path, Path]:
    cal, test = synthetic_sites().split(0.5, seed=0)
    return cal.save(d / "cal.npz"), test.save(d / "test.npz")


def calibrator_file(d: Path, method: str = "split", **options) -> Path:
    from core.calibration import make_calibrator

    cal, _ = synthetic_sites().split(0.5, seed=0)
    return make_calibrator(method, **options).fit(cal).save(d / f"{method}.npz")


def calibrate(d: Path, sites: Path, *extra: str) -> list[str]:
    return ["calibrate", str(sites), "--method", "split", "-o", str(d / "cal_out.npz"), "-q", *extra]


def evaluate(d: Path, calibrator: Path, *extra: str) -> list[str]:
    _, test = site_files(d)
    return ["evaluate", str(test), "--calibrator", str(calibrator), "-q", *extra]


def run_args(d: Path, data: Path, *extra: str) -> list[str]:
    return ["run", str(data), "--model", str(MODEL), "--methods", "split", "-q", *extra]


def symlink(d: Path, name: str, target: str) -> Path:
    p = d / name
    os.symlink(target, p)
    return p


def fifo(d: Path, name: str) -> Path:
    p = d / name
    os.mkfifo(p)
    return p
