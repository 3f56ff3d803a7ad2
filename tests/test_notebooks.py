"""Execute every ``notebooks/*.ipynb`` top to bottom, and check how they are committed.

Each notebook runs in a fresh ``python3`` kernel of the interpreter running pytest, with
``FLEXCAL_NB_FAST=1`` (the small settings of each notebook's parameters cell) and the
notebooks folder as working directory. A failing cell fails the test with the notebook
name, the cell's number, its source and the traceback. When ``FLEXCAL_ARTIFACTS`` is set
(CI sets it), the executed notebook is written there, so a failure can be read cell by cell.

Committed notebooks must carry no outputs (readable diffs), and ``notebooks/README.md``
must have an entry, with its key figure, for every notebook.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = int(os.environ.get("FLEXCAL_NB_CELL_TIMEOUT", "300"))
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    env["FLEXCAL_NB_FAST"] = "1"
    # the repository root first, so the kernel imports this checkout's `core` even without an install
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    # CI machines are small and shared: the tiny torch models of the notebooks run several times
    # faster on one thread than on threads that contend for busy cores
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def _failing_cell(nb) -> tuple[int, object] | tuple[None, None]:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return i, cell
    return None, None


def _error_text(cell) -> str:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            tb = "\n".join(out.get("traceback", [])) or f"{out.get('ename')}: {out.get('evalue')}"
            return _ANSI.sub("", tb)
    return ""


def _save_artifact(nb, path: Path) -> Path | None:
    out_dir = os.environ.get("FLEXCAL_ARTIFACTS")
    if not out_dir:
        return None
    dest = Path(out_dir) / "notebooks" / path.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    return dest


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {NB_DIR}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NB_DIR)}},
        allow_errors=False,
    )
    t0 = time.perf_counter()
    try:
        client.execute(env=_kernel_env(), cwd=str(NB_DIR))
    except nbclient.exceptions.CellTimeoutError as exc:
        artifact = _save_artifact(nb, path)
        pytest.fail(f"{path.name}: a cell ran past {CELL_TIMEOUT_S} s\n{exc}\n(executed notebook: {artifact})", pytrace=False)
    except nbclient.exceptions.CellExecutionError as exc:
        artifact = _save_artifact(nb, path)
        index, cell = _failing_cell(nb)
        if cell is None:
            pytest.fail(f"{path.name}: {_ANSI.sub('', str(exc))}", pytrace=False)
        code_no = sum(1 for c in nb.cells[: index + 1] if c.cell_type == "code")
        pytest.fail(
            f"{path.name}: cell {index} (code cell {code_no}) raised\n"
            f"----- source -----\n{cell.source}\n"
            f"----- traceback -----\n{_error_text(cell)}\n"
            f"(executed notebook: {artifact})",
            pytrace=False,
        )
    elapsed = time.perf_counter() - t0
    _save_artifact(nb, path)
    sys.stdout.write(f"\n{path.name}: executed in {elapsed:.1f} s (FLEXCAL_NB_FAST=1)\n")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_committed_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs or execution counts; strip them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_has_fast_parameters_cell(path: Path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    head = "\n".join(c.source for c in code[:3])
    assert "FLEXCAL_NB_FAST" in head, f"{path.name}: the first code cells must read FLEXCAL_NB_FAST (parameters cell)"


def test_readme_lists_every_notebook_with_its_figure():
    readme = NB_DIR / "README.md"
    assert readme.is_file(), "notebooks/README.md is missing"
    text = readme.read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        assert path.name in text, f"notebooks/README.md has no entry for {path.name}"
    for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text):
        if "://" in target:
            continue
        assert (NB_DIR / target).is_file(), f"notebooks/README.md shows {target}, which does not exist"
