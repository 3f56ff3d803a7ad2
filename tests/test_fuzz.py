"""Hostile inputs never end in a traceback, a hang, a silent answer or a lost file.

Replays the fast cases of the fuzz catalogue (``benchmarks/fuzz_catalogue.py``: the ones that
fail before a model runs) in-process through ``core.cli.main``, and the hang-prone atom count
999999999999 as a subprocess with a timeout. Each must exit with code 2 and one ``error:``
line matching what the case expects (file, frame/line, key or argument and the value), and
leave every file that existed before unchanged. The full table (with model runs) is
``docs/FUZZ.md``, written by ``python -m benchmarks.fuzz_inputs``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms

from benchmarks import fuzz_cases
from benchmarks.fuzz_catalogue import all_cases
from benchmarks.fuzz_inputs import snapshot
from core.cli import main
from core.data import DatasetError, read_dataset
from tests.test_data import HEADER, _frame, _water, _write

CASES = {c.name: c for c in all_cases()}
FAST = [name for name, c in CASES.items() if c.fast]
FLEXCAL = Path(sys.executable).with_name("flexcal")


def run_in_process(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)  # a traceback would propagate and fail the test
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def small_zip_bombs(monkeypatch):
    """100 MB bombs (still ~1000x and over the 64 MiB floor) keep the replay fast."""
    monkeypatch.setattr(fuzz_cases, "BOMB_BYTES", 100_000_000)


def test_the_catalogue_has_at_least_60_cases_in_every_group():
    groups = {c.group for c in CASES.values()}
    assert len(CASES) >= 60 and len(FAST) >= 50
    assert groups == {"data file", "site table", "calibrator", "arguments", "outputs"}
    assert all(c.expect is not None or c.check is not None or c.name == "valid" for c in CASES.values())


def test_fast_cases_exit_2_with_one_line_and_keep_their_inputs(tmp_path):
    start = time.perf_counter()
    problems = []
    for name in FAST:
        case = CASES[name]
        folder = tmp_path / name
        folder.mkdir()
        argv = [str(a) for a in case.build(folder)]
        before = snapshot(folder)
        code, out, err = run_in_process(argv, folder)
        errors = [line for line in err.splitlines() if re.search(r"\berror:", line)]
        usage = err.startswith("usage:")
        if case.expect is None:
            problem = case.check(folder, out, err) if code == 0 else f"exit {code}: {err.strip()[-200:]}"
        elif code != 2:
            problem = f"exit {code}"
        elif len(errors) != 1 or (not usage and len(err.strip().splitlines()) != 1):
            problem = f"expected one error line, got stderr {err.strip()[-300:]!r}"
        elif not re.search(case.expect, errors[0]):
            problem = f"{errors[0]!r} does not match {case.expect!r}"
        else:
            problem = None
        if "Traceback" in err or "allow_pickle=" in err + out:
            problem = f"traceback or unsafe hint in {err[-300:]!r}"
        if snapshot(folder) != before:
            problem = "an input file changed"
        if problem:
            problems.append(f"{name}: {problem}")
    assert not problems, "\n".join(problems)
    assert time.perf_counter() - start < 120  # a hang or a quadratic reader would show here


def test_a_count_of_999999999999_atoms_fails_fast_in_a_real_process(tmp_path):
    case = CASES["count-huge"]
    argv = [str(a) for a in case.build(tmp_path)]
    data = tmp_path / "data.xyz"
    before = data.read_bytes()
    cmd = [str(FLEXCAL)] if FLEXCAL.exists() else [sys.executable, "-m", "core.cli"]
    res = subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"flexcal featurize: error: {data}: frame 0 (line 1) declares 999999999999 atoms, over the limit of 100000 "
        "atoms per structure (--max-atoms)"
    ]
    assert data.read_bytes() == before


def test_the_messages_name_cli_flags_not_api_parameters(tmp_path):
    """Reader hints appear as --format / --max-bytes / --forces-key in the CLI."""
    for name, flag in (("too-big", "--max-bytes"), ("no-forces", "--forces-key"), ("junk-ext", "--format"),
                       ("far-origin", "--max-extent")):
        folder = tmp_path / name
        folder.mkdir()
        code, _, err = run_in_process([str(a) for a in CASES[name].build(folder)], folder)
        assert code == 2 and flag in err, (name, err)
        assert not re.search(r"\b(format|max_bytes|forces_key|max_extent)=", err), (name, err)
        assert "require_labels" not in err


def test_no_message_in_the_code_suggests_allow_pickle():
    """No string a user can read (docstrings aside) mentions ``allow_pickle=`` (issue 12 item 6)."""
    import ast

    root = Path(__file__).resolve().parent.parent
    offenders = []
    for path in [*root.glob("core/**/*.py"), *root.glob("app/**/*.py")]:
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and "allow_pickle" in node.value
                    and id(node) not in docstrings):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}: {node.value[:80]!r}")
    assert not offenders, "\n".join(offenders)


def test_read_npz_refuses_a_zip_bomb_and_a_lying_header_before_decompressing(tmp_path):
    import tracemalloc

    from core.safe_npz import read_npz

    bomb = fuzz_cases.zip_bomb(tmp_path / "bomb.npz", declared=100_000_000)
    assert bomb.stat().st_size < 1_000_000
    tracemalloc.start()
    with pytest.raises(ValueError, match=r"bomb\.npz: its entries would expand from \d+ to 1000\d+ bytes \(\d+x; .*zip "
                                         r"bomb, refused before decompressing"):
        read_npz(bomb, "SiteTable")
    assert tracemalloc.get_traced_memory()[1] < 20_000_000  # nothing near 100 MB was allocated
    tracemalloc.stop()
    with pytest.raises(ValueError, match=r"over the limit of 1000 bytes \(max_bytes=\)"):
        read_npz(fuzz_cases.site_files(tmp_path)[0], "SiteTable", max_bytes=1000)
    # a .npy header that declares 10^12 rows but holds 24 bytes
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as zf:
        zf.writestr("descriptors.npy", header.getvalue() + bytes(24))
    with pytest.raises(ValueError, match=r"lie\.npz: entry 'descriptors' declares shape \(1000000000000,\) "
                                         r"\(8000000000000 bytes\) but holds \d+ bytes; damaged SiteTable file"):
        read_npz(tmp_path / "lie.npz", "SiteTable")


# ------------------------------------------------------------ bounded cost (issue 12 item 4)
def test_a_huge_atom_count_is_refused_before_ase_reads_it(tmp_path):
    p = _write(tmp_path, _frame(_water()) + "999999999999\n" + HEADER.format(e=1) + "\nO 0 0 0 0 0 0\n")
    start = time.perf_counter()
    with pytest.raises(DatasetError, match=r"data.xyz: frame 1 \(line 6\) declares 999999999999 atoms, over the limit "
                                           r"of 100000 atoms per structure \(max_atoms=\)"):
        read_dataset(p)
    with pytest.raises(DatasetError, match=r"frame 1 \(line 6\) declares 999999999999 atoms, but only \d+ bytes follow"):
        read_dataset(p, max_atoms=10**13)
    assert time.perf_counter() - start < 5  # ASE alone spins for minutes on this count
    with pytest.raises(DatasetError, match=r"frame 0 \(line 1\) has 3 atoms, over the limit of 2|"
                                           r"frame 0 \(line 1\) declares 3 atoms, over the limit of 2"):
        read_dataset(_write(tmp_path, _frame(_water())), max_atoms=2)
    with pytest.raises(ValueError, match=r"max_atoms: expected an integer >= 1, got 0"):
        read_dataset(p, max_atoms=0)
    with pytest.raises(ValueError, match=r"max_extent: expected a number in \(0, inf\], got -1"):
        read_dataset(p, max_extent=-1)


def test_atoms_far_from_the_origin_or_huge_cells_are_refused(tmp_path):
    far = [(s, (x + 5000.0, y, z), f) for s, (x, y, z), f in _water()]
    p = _write(tmp_path, _frame(_water()) + _frame(far))
    with pytest.raises(DatasetError, match=r"data.xyz: frame 1 \(line 6\): atom 1 lies 5001 Å from the origin in a frame "
                                           r"that is not periodic along xyz; .*the limit is 100 Å \(max_extent=\)"):
        read_dataset(p)
    assert len(read_dataset(p, max_extent=6000)) == 2
    # 180 atoms spread over 10^4 Å without a cell: refused in milliseconds
    rng = np.random.default_rng(0)
    cloud = Atoms("H180", positions=rng.uniform(0, 1e4, (180, 3)))
    cloud.arrays["REF_forces"] = np.zeros((180, 3))
    ase.io.write(tmp_path / "cloud.extxyz", [cloud], format="extxyz")
    with pytest.raises(DatasetError, match=r"frame 0 \(line 1\): atom \d+ lies \d+ Å from the origin"):
        read_dataset(tmp_path / "cloud.extxyz")
    # fully periodic: unwrapped coordinates cost nothing and are fine; a 2e4 Å cell is not
    crystal = Atoms("Cu2", positions=[[0, 0, 0], [1e4 + 1.8, 1.8, 1.8]], cell=[3.6] * 3, pbc=True)
    crystal.arrays["REF_forces"] = np.zeros((2, 3))
    ase.io.write(tmp_path / "c.extxyz", [crystal], format="extxyz")
    assert len(read_dataset(tmp_path / "c.extxyz")) == 1
    crystal.cell = [2e4, 3.6, 3.6]
    ase.io.write(tmp_path / "c.extxyz", [crystal], format="extxyz")
    with pytest.raises(DatasetError, match=r"periodic cell vector a is 2e\+04 Å long.*limit is 1000 Å "
                                           r"\(10 x max_extent=\)"):
        read_dataset(tmp_path / "c.extxyz")
    # a slab (periodic in x, y only) is bounded like a molecule
    slab = Atoms("Cu2", positions=[[0, 0, 0], [1.8, 1.8, 300.0]], cell=[3.6, 3.6, 0], pbc=[True, True, False])
    slab.arrays["REF_forces"] = np.zeros((2, 3))
    ase.io.write(tmp_path / "s.extxyz", [slab], format="extxyz")
    with pytest.raises(DatasetError, match=r"atom 1 lies 300 Å from the origin in a frame that is not periodic along z"):
        read_dataset(tmp_path / "s.extxyz")


def test_header_lines_and_declared_columns_are_bounded(tmp_path):
    long_header = HEADER.format(e=1) + " junk=" + "x" * (2 << 20)
    p = _write(tmp_path, _frame(_water()) + _frame(_water(1.0), header=long_header))
    with pytest.raises(DatasetError, match=r"frame 1 \(line 6\): the header line is longer than 1048576 bytes"):
        read_dataset(p)
    many = HEADER.replace("forces:R:3", "forces:R:3:junk:R:50000000")
    p = _write(tmp_path, _frame(_water(), header=many))
    start = time.perf_counter()
    with pytest.raises(DatasetError, match=r"frame 0 \(line 1\): Properties= declares 50000007 columns per atom"):
        read_dataset(p)
    assert time.perf_counter() - start < 5  # ASE builds a 5e7-field dtype otherwise (minutes, GB)


def test_devices_and_pipes_are_refused_without_opening_them(tmp_path):
    os.mkfifo(tmp_path / "pipe.xyz")
    with pytest.raises(DatasetError, match=r"pipe.xyz: not a regular file \(a device, pipe or socket\)"):
        read_dataset(tmp_path / "pipe.xyz")
    os.symlink("/dev/zero", tmp_path / "zero.xyz")
    with pytest.raises(DatasetError, match=r"zero.xyz: not a regular file"):
        read_dataset(tmp_path / "zero.xyz")
