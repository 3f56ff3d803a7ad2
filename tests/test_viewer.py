"""core.viewer: offline 3Dmol HTML (inlined library), per-atom colours, highlight, cell, arrows, errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from core import viewer as V

FAKE_JS = "/* FAKE-3DMOL-FOR-TESTS */ window.$3Dmol = {createViewer: function(){}};"


@pytest.fixture
def fake_js(tmp_path, monkeypatch):
    path = tmp_path / "3Dmol-min.js"
    path.write_text(FAKE_JS)
    monkeypatch.setenv(V.JS_ENV_VAR, str(path))
    return path


@pytest.fixture
def crystal():
    return bulk("NaCl", "rocksalt", a=5.64, cubic=True)  # 8 atoms, periodic


@pytest.fixture
def mol():
    return molecule("CH3CH2OH")  # 9 atoms, no cell


def _styles(html: str) -> dict[int, str]:
    # coloured by a value, each sphere has its element's radius (core.viewer.element_radii)
    found = re.findall(r'setStyle\(\{"index": (\d+)\},\{"sphere": \{"radius": [0-9.]+, "color": "(#[0-9a-f]{6})"\}\}\)',
                       html)
    return {int(i): c for i, c in found}


def test_inlines_3dmol_without_cdn(fake_js, mol):
    html = V.structure_view_html(mol, values=np.arange(len(mol), dtype=float))
    assert "FAKE-3DMOL-FOR-TESTS" in html
    assert not re.search(r"<script[^>]*src=", html)
    assert "cdn.jsdelivr" not in html and "https://" not in html
    assert "loadScriptAsync('" not in html.split("FAKE-3DMOL-FOR-TESTS")[1]  # loader bypassed
    assert "$3Dmolpromise = Promise.resolve()" in html
    assert "addUnitCell" not in html  # a molecule has no cell


def test_per_atom_colours_colour_bar_and_legend(fake_js, mol):
    values = np.linspace(0.0, 0.8, len(mol))
    html = V.structure_view_html(mol, values=values, label="width (eV/Å)")
    styles = _styles(html)
    assert sorted(styles) == list(range(len(mol)))
    assert styles == dict(enumerate(V.value_colors(values, 0.0, 0.8)))
    assert styles[0] == "#440154" and styles[len(mol) - 1] == "#fde725"  # viridis ends
    assert "linear-gradient" in html
    assert re.search(r'class="flexcal-vmin">0<', html) and re.search(r'class="flexcal-vmax">0\.8<', html)
    assert "width (eV/&#197;)" in html  # units, ASCII-safe
    # the xyz model carries every atom
    assert f'addModel("{len(mol)}\\n' in html


def test_vmin_vmax_clip_colours(fake_js, mol):
    values = np.linspace(-1.0, 2.0, len(mol))
    styles = _styles(V.structure_view_html(mol, values=values, vmin=0.0, vmax=1.0))
    assert styles[0] == "#440154" and styles[len(mol) - 1] == "#fde725"
    assert V.value_colors([0.5], 0.0, 1.0) == ["#21908d"]


def test_periodic_cell_highlight_and_arrows(fake_js, crystal):
    n = len(crystal)
    arrows = np.zeros((n, 3))
    arrows[1] = [0.2, 0.0, 0.0]
    arrows[3] = [0.0, 0.4, 0.0]
    html = V.structure_view_html(crystal, values=np.arange(n, dtype=float), highlight=3, arrows=arrows,
                                 arrow_length=2.0, style="sphere")
    assert "addUnitCell()" in html and 'Lattice=\\"5.64000000 0.00000000 0.00000000' in html
    assert "unit cell" in html
    assert html.count("addArrow(") == 2  # zero vectors are skipped
    # the longest (0.4 eV/Å) is 2 Å long: 1 Å of arrow = 0.2 eV/Å
    assert "1 &#197; of arrow = 0.2 eV/&#197;" in html
    pos = crystal.get_positions()[3]
    assert f'"center": {{"x": {pos[0]}, "y": {pos[1]}, "z": {pos[2]}}}' in html
    assert "addSphere(" in html and "highlighted: atom 3 (Cl)" in html
    assert len(_styles(html)) == n


def test_stick_style_and_element_colours(fake_js, mol):
    html = V.structure_view_html(mol, style="stick")
    assert 'setStyle({},{"stick": {"radius": 0.15, "colorscheme": "Jmol"}' in html
    assert "coloured by element" in html and "linear-gradient" not in html


def test_missing_js_raises_with_make_hint(tmp_path, monkeypatch, mol):
    monkeypatch.setenv(V.JS_ENV_VAR, str(tmp_path / "missing.js"))
    with pytest.raises(FileNotFoundError, match="make venv") as info:
        V.structure_view_html(mol)
    assert "missing.js" in str(info.value) and "allow_cdn=True" in str(info.value)
    html = V.structure_view_html(mol, allow_cdn=True)
    assert V.CDN_URL in html


def test_default_path_under_sys_prefix(monkeypatch):
    import sys

    monkeypatch.delenv(V.JS_ENV_VAR, raising=False)
    assert V.default_3dmol_js_path().is_relative_to(sys.prefix)
    assert V.default_3dmol_js_path().parts[-5:] == ("flexcal", "3dmol", "package", "build", "3Dmol-min.js")


def test_real_installed_library_is_inlined(monkeypatch, mol):
    monkeypatch.delenv(V.JS_ENV_VAR, raising=False)
    path = V.default_3dmol_js_path()
    if not path.is_file():
        pytest.skip(f"3Dmol.js not installed at {path} (make venv)")
    html = V.structure_view_html(mol)
    assert len(html) > path.stat().st_size * 0.99
    assert "</script" not in html.split("<script>(function(){", 1)[1].split("\n}).call(window);</script>")[0]
    assert not re.search(r"<script[^>]*src=", html)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"values": np.ones(3)}, r"values: expected shape \(9,\) \(one per atom\), got \(3,\)"),
        ({"values": np.r_[np.ones(8), np.nan]}, r"values: must be finite"),
        ({"values": np.ones(9), "vmin": 2.0, "vmax": 1.0}, r"vmax: must be >= vmin"),
        ({"highlight": 9}, r"highlight: expected an atom index in \[0, 9\), got 9"),
        ({"arrows": np.ones((9, 2))}, r"arrows: expected shape \(9, 3\), got \(9, 2\)"),
        ({"style": "cartoon"}, r"style: expected 'sphere' or 'stick', got 'cartoon'"),
        ({"width": 0}, r"width: expected a positive number of pixels, got 0"),
    ],
)
def test_bad_input(fake_js, mol, kwargs, match):
    with pytest.raises(ValueError, match=match):
        V.structure_view_html(mol, **kwargs)


def test_bad_atoms(fake_js):
    with pytest.raises(ValueError, match="atoms: expected an ase.Atoms, got list"):
        V.structure_view_html([1, 2, 3])
    with pytest.raises(ValueError, match="atoms: the structure has no atoms"):
        V.structure_view_html(Atoms())


def test_js_url_loads_the_served_library_instead_of_inlining_it(tmp_path, monkeypatch, mol):
    monkeypatch.setenv(V.JS_ENV_VAR, str(tmp_path / "missing.js"))  # not needed: nothing is read
    html = V.structure_view_html(mol, values=np.arange(len(mol), dtype=float), js_url="/app/static/3Dmol-min.js")
    assert "loadScriptAsync('/app/static/3Dmol-min.js')" in html
    assert "FAKE-3DMOL" not in html and "cdn.jsdelivr" not in html and len(html) < 50_000  # no 0.5 MB library
    assert len(_styles(html)) == len(mol)  # the same view commands
    for bad in ("", "x'); alert(1); ('", 3):
        with pytest.raises(ValueError, match="js_url"):
            V.structure_view_html(mol, js_url=bad)


def test_app_serves_3dmol_when_static_serving_is_on(tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    import streamlit as st

    from app import services

    options = {"server.enableStaticServing": True, "server.baseUrlPath": ""}
    monkeypatch.setattr(st, "get_option", lambda key: options[key])
    js = tmp_path / "3Dmol-min.js"
    monkeypatch.setattr(services, "STATIC_3DMOL", js)
    assert services.viewer_js_url() is None  # file missing: the viewer inlines the library
    js.write_text(FAKE_JS)
    assert services.viewer_js_url() == "/app/static/3Dmol-min.js"
    options["server.baseUrlPath"] = "/flexcal/"
    assert services.viewer_js_url() == "/flexcal/app/static/3Dmol-min.js"
    options["server.enableStaticServing"] = False
    assert services.viewer_js_url() is None
    # the repository's config turns it on, and make venv puts the file where it is looked for
    config = (services.Path(services.__file__).resolve().parent.parent / ".streamlit" / "config.toml").read_text()
    assert "enableStaticServing = true" in config


def test_drawing_is_held_back_until_the_final_render(fake_js, crystal):
    # 3Dmol.js redraws after zoomTo/rotate/addUnitCell/addLabel; the view draws once, at render()
    html = V.structure_view_html(crystal, values=np.arange(8.0), highlight=1, arrows=np.ones((8, 3)))
    viewer = re.search(r"(viewer_[0-9a-f]{12}) = \$3Dmol\.createViewer\(", html)[1]
    created = html.index(f"{viewer} = $3Dmol.createViewer(")
    hold = html.index(f"{viewer}.show = function () {{}};")
    release = html.index(f"delete {viewer}.show;\n{viewer}.render();")
    assert created < hold < html.index(f"{viewer}.zoomTo();") < release
    assert html.count(f"{viewer}.show = function") == 1 and html.count("delete ") == 1
    # every command that draws sits between the hold and the release
    for command in ("zoomTo", "rotate", "addUnitCell", "addLabel", "addArrow"):
        calls = [m.start() for m in re.finditer(rf"{viewer}\.{command}\(", html)]
        assert calls and all(hold < c < release for c in calls), command
    assert html.rindex(f"{viewer}.render();") > release


def test_draw_once_refuses_a_script_it_does_not_recognise():
    with pytest.raises(RuntimeError, match=r"py3Dmol's viewer script changed"):
        V._draw_once("viewer_x.render();", "viewer_x")
