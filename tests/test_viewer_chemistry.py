"""core.viewer keeps the chemistry when colouring by a value (issue 12, item 14): per-element sphere
sizes and an element legend with symbols, visible error arrows with their scale, the highlighted atom;
and the Structures page's atom table puts the highlighted atom first, marked and selected."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from ase.build import bulk, molecule

from core import viewer as V

from tests.test_viewer import fake_js  # noqa: F401  (the fixture)


def _sphere_radii(html: str) -> dict[int, float]:
    found = re.findall(r'setStyle\(\{"index": (\d+)\},\{"sphere": \{"radius": ([0-9.]+), "color": "#[0-9a-f]{6}"\}\}\)',
                       html)
    return {int(i): float(r) for i, r in found}


def _arrows(html: str) -> list[dict]:
    return [json.loads(m) for m in re.findall(r"addArrow\((\{.*?\})\)", html)]


def test_element_radii_rank_elements_by_size_and_spread_them():
    assert V.element_radii([1, 8, 6, 1]) == {1: 0.38, 6: 0.78, 8: 0.58}  # H < O < C (covalent radii)
    assert V.element_radii([17, 11, 17]) == {11: 0.78, 17: 0.38}  # Na larger than Cl
    assert V.element_radii([29, 29]) == {29: round(sum(V.RADIUS_RANGE) / 2, 3)}
    r = V.element_radii([1, 6, 7, 8, 16, 26])
    assert sorted(r.values()) == sorted(set(r.values())) and min(r.values()) == V.RADIUS_RANGE[0]


def test_colouring_by_width_keeps_element_sizes_and_lists_elements(fake_js):
    crystal = bulk("NaCl", "rocksalt", a=5.64, cubic=True)  # 4 Na, 4 Cl
    widths = np.linspace(0.1, 0.5, len(crystal))
    html = V.structure_view_html(crystal, values=widths, label="width (eV/Å)")
    radii = _sphere_radii(html)
    assert sorted(radii) == list(range(len(crystal)))
    expected = V.element_radii(crystal.numbers)
    assert radii == {i: expected[int(z)] for i, z in enumerate(crystal.numbers)}
    assert len(set(radii.values())) == 2  # the two elements look different whatever their colour
    legend = html[html.index('class="flexcal-legend"'):]
    entries = re.findall(r'class="flexcal-element" data-symbol="(\w+)" data-z="(\d+)" data-radius="([0-9.]+)"', legend)
    assert entries == [("Na", "11", f"{expected[11]:.3f}"), ("Cl", "17", f"{expected[17]:.3f}")]
    assert "<b>Na</b>&nbsp;&#215;4 r = 0.78 &#197;" in legend and "<b>Cl</b>&nbsp;&#215;4 r = 0.38 &#197;" in legend
    assert "sphere size" in legend and "linear-gradient" in legend  # the colour bar is still there


def test_element_legend_when_coloured_by_element(fake_js):
    mol = molecule("CH3CH2OH")
    html = V.structure_view_html(mol)
    symbols = re.findall(r'class="flexcal-element" data-symbol="(\w+)" data-z="\d+" style', html)
    assert symbols == ["H", "C", "O"]  # by Z, no radius (3Dmol's own element radii)
    assert "<b>H</b>&nbsp;&#215;6" in html and "<b>C</b>&nbsp;&#215;2" in html and "<b>O</b>&nbsp;&#215;1" in html
    assert '"colorscheme": "Jmol"' in html and "data-radius" not in html


def test_error_arrows_start_on_the_sphere_with_a_contrasting_colour_and_stated_scale(fake_js):
    mol = molecule("H2O")
    vec = np.array([[0.0, 0.0, 0.3], [0.0, 0.0, 0.0], [0.6, 0.0, 0.0]])  # eV/Å
    widths = np.array([0.1, 0.2, 0.3])
    html = V.structure_view_html(mol, values=widths, arrows=vec, arrow_length=1.2)
    arrows = _arrows(html)
    assert len(arrows) == 2
    radii = V.element_radii(mol.numbers)
    pos = mol.get_positions()
    for arrow, i in zip(arrows, (0, 2)):
        start = np.array([arrow["start"][k] for k in "xyz"])
        end = np.array([arrow["end"][k] for k in "xyz"])
        unit = vec[i] / np.linalg.norm(vec[i])
        assert np.allclose(start, pos[i] + radii[int(mol.numbers[i])] * unit)  # outside the sphere
        assert np.allclose(end - start, vec[i] * (1.2 / 0.6))  # longest = arrow_length Å
        assert arrow["color"] == V._ARROW and arrow["radius"] >= 0.08
    assert V._ARROW not in V.value_colors(np.linspace(0, 1, 256), 0.0, 1.0)
    scale = re.search(r'class="flexcal-arrow-scale".*?</div>', html).group(0)
    assert "1 &#197; of arrow = 0.5 eV/&#197;" in scale and "(longest 0.6 eV/&#197; = 1.2 &#197;)" in scale


def test_highlight_is_kept_with_element_sizes(fake_js):
    mol = molecule("H2O")
    html = V.structure_view_html(mol, values=[0.1, 0.2, 0.3], highlight=0, label="width (eV/Å)")
    assert "highlighted: atom 0 (O), width (eV/&#197;) = 0.1" in html
    assert '"color": "#FF00FF"' in html and len(_sphere_radii(html)) == 3


def test_atom_table_puts_the_highlighted_atom_first_and_marks_it():
    pytest.importorskip("streamlit")
    import ast
    from pathlib import Path

    import pandas as pd

    # highlighted_first is defined on the page; take it from the source without running the page
    source = Path(__file__).resolve().parents[1].joinpath("app", "views", "structures.py").read_text()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "highlighted_first")
    scope = {"np": np, "pd": pd}
    exec(compile(ast.Module(body=[node], type_ignores=[]), "structures.py", "exec"), scope)
    table = pd.DataFrame({"atom_index": np.arange(5), "symbol": list("HHOHC"), "error": np.arange(5) * 0.1})
    out = scope["highlighted_first"](table, 2)
    assert out["atom_index"].tolist() == [2, 0, 1, 3, 4]
    assert out["highlighted"].tolist() == ["◉", "", "", "", ""]
    assert out.shape == (5, 4) and out.loc[0, "symbol"] == "O"
    assert scope["highlighted_first"](table, None) is table


# ------------------------------------------------------------------ the Structures page (AppTest)
from tests.test_app import _no_exception, cache_dir, page, state, trained  # noqa: E402,F401  (fixtures by import)


def test_structures_page_selects_and_marks_the_highlighted_atom(trained):  # noqa: F811
    from core.tables import column_label, keyed_table

    at = trained
    run = at.session_state[state.RESULTS]
    sid, atom = int(run.test.structure_ids[7]), int(run.test.atom_index[7])
    at.session_state[state.SELECTED] = {"structure_id": sid, "atom_index": atom}
    at.session_state[state.W_STRUCTURE] = sid
    at.switch_page(page("structures")).run()
    _no_exception(at)
    shown = at.dataframe[0]
    table = keyed_table(shown.value)
    assert int(table.loc[0, "atom_index"]) == atom and table.loc[0, "highlighted"] == "◉"
    assert (table["highlighted"] == "◉").sum() == 1
    n_atoms = len(at.session_state[state.DATASET].structures[sid])
    assert sorted(table["atom_index"].tolist()) == list(range(n_atoms))  # every atom, none hidden
    assert json.loads(shown.proto.selection_default)["selection"]["rows"] == [0]
    assert column_label("symbol") in shown.value.columns and column_label("error") in shown.value.columns
    html = at.get("iframe")[0].proto.srcdoc
    assert f"highlighted: atom {atom}" in html and 'class="flexcal-element"' in html and "data-radius" in html
    assert any(f"atom {atom} is highlighted (row 1" in c.value for c in at.caption)
