"""Execute every ``notebooks/*.ipynb`` top to bottom, and check how they are committed.

Each notebook runs in a fresh ``python3`` kernel of the interpreter running pytest, with
``FLEXCAL_NB_FAST=1`` (the small settings of each notebook's parameters cell) and the
notebooks folder as working directory. A failing cell fails the test with the notebook
name, the cell's number, its source and the traceback. When ``FLEXCAL_ARTIFACTS`` is set
(CI sets it), the executed notebook is written there, so a failure can be read cell by cell.

Committed notebooks must carry no outputs (readable diffs), and ``notebooks/README.md``
must have an entry, with its key figure, for every notebook.

Numbers that cannot go stale: no markdown cell may carry a result number (a decimal with two or
more digits, a range of decimals, a comparison with a decimal, a percentage or a multiplier that
is not one of the few settings in the allow-lists below). Results are written by code cells
(f-strings through ``core.teaching.show``), and every code cell that ends in an expression
displays it through ``show``/``print``/``display``, so a FAST run labels its results.
"""

from __future__ import annotations

import ast
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
CELL_TIMEOUT_S = int(os.environ.get("FLEXCAL_NB_CELL_TIMEOUT", "900"))
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


# ------------------------------------------------------------------ numbers in markdown
#: Levels and settings a markdown cell may quote (confidence levels, the AUROC top fraction,
#: a 50/50 split, "B 100%" = full relabelling). Anything else that looks like a result must come
#: from a code cell.
ALLOWED_DECIMALS = {"0.05", "0.1", "0.10", "0.5", "0.50", "0.9", "0.90", "0.95", "0.99"}
ALLOWED_PERCENTS = {"5", "10", "50", "90", "95", "99", "100"}
ALLOWED_MULTIPLIERS = {"9"}    # the pinball loss at τ = 0.9: a miss costs 9× a waste
_CITATION = re.compile(r"arXiv[:\s]*\d{4}\.\d{4,5}|doi:\S+|https?://\S+", re.IGNORECASE)
#: A knob assignment in inline code (``CONFIDENCE = 0.99`` in an exercise) is a setting, not a result.
_KNOB = re.compile(r"`[A-Z][A-Z0-9_]* = [^`]*`")
_NUM = r"\d+(?:\.\d+)?"
_RULES = (
    ("decimal", re.compile(r"(?<![\w.])\d+\.\d{2,}(?![\d])")),
    ("range of decimals", re.compile(r"(?<![\w.])\d*\.\d+\s*[–—-]\s*\d*\.\d+")),
    ("range of percentages", re.compile(rf"(?<![\w.]){_NUM}\s*%?\s*[–—-]\s*{_NUM}\s*%")),
    ("comparison with a decimal", re.compile(r"[≈~<>≤≥→]\s*\$?\s*\d*\.\d+")),
    ("percentage", re.compile(rf"(?<![\w.])({_NUM})\s*%")),
    ("multiplier", re.compile(rf"(?<![\w.])({_NUM})\s*×")),
)


def hard_coded_numbers(markdown: str) -> list[str]:
    """Result-like numbers in a markdown text (empty when it quotes settings only)."""
    text = _KNOB.sub(" ", _CITATION.sub(" ", markdown))
    found = []
    for kind, rule in _RULES:
        for m in rule.finditer(text):
            value = m.group(1) if m.lastindex else None
            if kind == "percentage" and value in ALLOWED_PERCENTS:
                continue
            if kind == "multiplier" and value in ALLOWED_MULTIPLIERS:
                continue
            if kind in ("decimal", "comparison with a decimal"):
                number = re.search(r"\d*\.\d+", m.group(0)).group(0)
                if number in ALLOWED_DECIMALS:
                    continue
            found.append(f"{kind}: {m.group(0).strip()!r}")
    return found


@pytest.mark.parametrize("text", [
    # claims from earlier versions of the notebooks, each of which went stale
    "shift weighting recovers part of the loss: Cu(111) adsorbates 0.61 → 0.88 and high coverage 0.72 → 0.91",
    "Global CP and the unweighted q_θ lose about the same (ethanol 900 K 0.44 vs 0.40)",
    "refitting on a small B budget (5–10 % of the structures) gave the narrowest widths",
    "so they under-cover (coverage ≈ 0.4–0.5) and rank whole structures poorly",
    "On the LiCl demo every method is weak (ρ < 0.3)",
    "their widths can explode (GMM: 3–5000× global CP)",
    "the smallest widths (width ratio ≈ 0.8–0.9)",
    "global CP covers 91 % of all sites but only 28 % of H",
    "ended at test force MAE 0.047 (calibrated)",
    "with `flexible` reaching 0.88 (`CONFIDENCE` 0.9)",
])
def test_hard_coded_number_check_flags_result_claims(text):
    assert hard_coded_numbers(text), f"the check missed a result number in {text!r}"


@pytest.mark.parametrize("text", [
    "a half-width such that e ≤ w for 90 % of sites (confidence 0.9)",
    "Ho, Ortner & Wang (arXiv 2510.00721); Romano et al. 2019; Tibshirani et al. 2019",
    "At $\\tau = 0.9$ a miss is 9× more expensive; AUROC for the top 10 % errors; levels 0.05..0.95 and 0.99",
    "Set `CONFIDENCE = 0.5`, then `HOLDOUT_FRACTION = 0.05`; a 50/50 split; 300 K and 600 K",
    "Set `BUDGETS = (0.02, 0.05, 0.1, 0.2, 0.5)`; compare with `B 100%`, full relabelling",
])
def test_hard_coded_number_check_allows_settings_and_citations(text):
    assert hard_coded_numbers(text) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_markdown_has_no_hard_coded_results(path: Path):
    nb = nbformat.read(path, as_version=4)
    bad = [(i, hit) for i, c in enumerate(nb.cells) if c.cell_type == "markdown" for hit in hard_coded_numbers(c.source)]
    assert not bad, (f"{path.name}: markdown cells quote result numbers (compute them in a code cell and show them "
                     f"with core.teaching.show): {bad}")


_DISPLAYERS = {"show", "print", "display"}


def _bare_expression(source: str) -> str | None:
    """The final bare expression of a code cell that Jupyter would display unlabelled, or None."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None  # IPython magics: not used by these notebooks; the execution test catches real errors
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return None
    value = tree.body[-1].value
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in _DISPLAYERS:
        return None
    if isinstance(value, ast.Constant):
        return None
    return ast.get_source_segment(source, tree.body[-1])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_results_are_shown_with_their_mode_label(path: Path):
    nb = nbformat.read(path, as_version=4)
    bare = [(i, _bare_expression(c.source)) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    bare = [(i, expr) for i, expr in bare if expr]
    assert not bare, (f"{path.name}: cells end in a bare expression that Jupyter displays without the FAST label; "
                      f"display results with core.teaching.show(..., fast=FAST): {bare}")
