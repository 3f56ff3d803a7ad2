"""Offline 3D view of one structure coloured by a per-site value (py3Dmol / 3Dmol.js).

:func:`structure_view_html` returns a self-contained HTML fragment: the
3Dmol.js library is read from a local file and inlined, so the view works
without network (py3Dmol itself would load it from a CDN). The file is
looked up by :func:`find_3dmol_js`: ``$FLEXCAL_3DMOL_JS`` if set, else
``<sys.prefix>/share/flexcal/3dmol/package/build/3Dmol-min.js``, which
``make venv`` installs from the npm package ``3dmol@2.5.5``.

The viewer script is built with ``py3Dmol.view`` (same commands as in a
notebook); only its loader is replaced by the inlined library. A server that serves the
library itself passes ``js_url`` instead (the app does: ``app/static/3Dmol-min.js``, fetched
once and cached by the browser rather than 0.5 MB inlined into every view).
"""

from __future__ import annotations

import hashlib
import html as _html
import itertools
import os
import sys
from pathlib import Path

import numpy as np

__all__ = ["JS_ENV_VAR", "CDN_URL", "default_3dmol_js_path", "element_radii", "find_3dmol_js", "structure_view_html",
           "value_colors"]

JS_ENV_VAR = "FLEXCAL_3DMOL_JS"
CDN_URL = "https://cdn.jsdelivr.net/npm/3dmol@2.5.5/build/3Dmol-min.js"
_PLACEHOLDER = "__FLEXCAL_3DMOL_JS__"
_counter = itertools.count()

# Viridis (perceptually uniform, colour-blind safe), 9 stops from 0 to 1.
_VIRIDIS = [
    (0.000, (68, 1, 84)),
    (0.125, (71, 44, 122)),
    (0.250, (59, 81, 139)),
    (0.375, (44, 113, 142)),
    (0.500, (33, 144, 141)),
    (0.625, (39, 173, 129)),
    (0.750, (92, 200, 99)),
    (0.875, (170, 220, 50)),
    (1.000, (253, 231, 37)),
]
_HIGHLIGHT = "#FF00FF"
_ARROW = "#D55E00"  # vermilion: no Viridis colour is close to it
_ARROW_RADIUS = 0.09  # Å
RADIUS_RANGE = (0.38, 0.78)  # Å: smallest and largest element sphere when coloured by a value


def default_3dmol_js_path() -> Path:
    """``<sys.prefix>/share/flexcal/3dmol/package/build/3Dmol-min.js``."""
    return Path(sys.prefix) / "share" / "flexcal" / "3dmol" / "package" / "build" / "3Dmol-min.js"


def find_3dmol_js() -> Path:
    """Path of the local 3Dmol.js file.

    Raises
    ------
    FileNotFoundError
        When neither ``$FLEXCAL_3DMOL_JS`` nor the default path holds a file;
        the message says how to install it.
    """
    env = os.environ.get(JS_ENV_VAR)
    path = Path(env) if env else default_3dmol_js_path()
    if not path.is_file() or path.stat().st_size == 0:
        where = f"${JS_ENV_VAR}={env}" if env else str(path)
        raise FileNotFoundError(
            f"3Dmol.js not found at {where}. The offline 3D viewer inlines this file; install it with "
            f"`make venv` (it fetches the npm package 3dmol@2.5.5 into .venv/share/flexcal/3dmol), "
            f"or point ${JS_ENV_VAR} at a 3Dmol-min.js, or pass allow_cdn=True to load it from {CDN_URL}."
        )
    return path


def value_colors(values, vmin: float, vmax: float) -> list[str]:
    """Hex colours (Viridis) of ``values`` mapped linearly from [vmin, vmax] to [0, 1], clipped."""
    v = np.asarray(values, dtype=float)
    span = vmax - vmin
    t = np.zeros_like(v) if span <= 0 else np.clip((v - vmin) / span, 0.0, 1.0)
    stops = np.array([s for s, _ in _VIRIDIS])
    rgb = np.array([c for _, c in _VIRIDIS], dtype=float)
    chans = [np.interp(t, stops, rgb[:, k]) for k in range(3)]
    return ["#%02x%02x%02x" % tuple(int(round(c[i])) for c in chans) for i in range(v.shape[0])]


def _gradient_css() -> str:
    return ", ".join(f"rgb{c} {100 * s:.1f}%" for s, c in _VIRIDIS)


def _xyz(atoms) -> str:
    """Extended-XYZ text with only symbols and positions (+ Lattice for periodic cells).

    3Dmol's xyz parser reads ``Lattice="..."`` and then ``addUnitCell`` can draw it.
    """
    pos = atoms.get_positions()
    syms = atoms.get_chemical_symbols()
    header = 'Properties=species:S:1:pos:R:3'
    if atoms.cell.rank == 3 and any(atoms.pbc):
        lat = " ".join(f"{x:.8f}" for x in np.asarray(atoms.cell).ravel())
        pbc = " ".join("T" if p else "F" for p in atoms.pbc)
        header = f'Lattice="{lat}" {header} pbc="{pbc}"'
    lines = [str(len(atoms)), header]
    lines += [f"{s} {p[0]:.8f} {p[1]:.8f} {p[2]:.8f}" for s, p in zip(syms, pos)]
    return "\n".join(lines) + "\n"


def element_radii(numbers) -> dict[int, float]:
    """Sphere radius (Å) per element of a structure, used when atoms are coloured by a value.

    The elements present are ranked by covalent radius and spread evenly over
    :data:`RADIUS_RANGE` (one element: the middle), so every element has its own, clearly
    different size while larger atoms stay larger. Returns ``{Z: radius}`` sorted by Z.
    """
    from ase.data import covalent_radii

    zs = sorted({int(z) for z in np.asarray(numbers).ravel()}, key=lambda z: (covalent_radii[z], z))
    lo, hi = RADIUS_RANGE
    if len(zs) == 1:
        return {zs[0]: round((lo + hi) / 2, 3)}
    return {z: round(lo + (hi - lo) * k / (len(zs) - 1), 3) for k, z in sorted(enumerate(zs), key=lambda t: t[1])}


def _atom_style(style: str, color: str | None, radius: float | None = None) -> dict:
    """3Dmol style: by element (Jmol colours, 3Dmol's radii) or one colour with an element ``radius`` (Å)."""
    c = {"color": color} if color else {"colorscheme": "Jmol"}
    if radius is not None:
        if style == "sphere":
            return {"sphere": {"radius": radius, **c}}
        return {"stick": {"radius": 0.15, **c}, "sphere": {"radius": round(0.6 * radius, 3), **c}}
    if style == "sphere":
        return {"sphere": {"scale": 0.35, **c}}
    return {"stick": {"radius": 0.15, **c}, "sphere": {"scale": 0.25, **c}}


def structure_view_html(
    atoms,
    values=None,
    label: str = "width (eV/Å)",
    highlight: int | None = None,
    arrows=None,
    vmin: float | None = None,
    vmax: float | None = None,
    width: int = 480,
    height: int = 400,
    style: str = "sphere",
    arrow_length: float = 1.5,
    allow_cdn: bool = False,
    js_url: str | None = None,
) -> str:
    """HTML of an interactive 3D view of ``atoms`` coloured by a per-site value.

    Parameters
    ----------
    atoms : ase.Atoms
        Molecule or periodic structure (periodic cells are drawn).
    values : array-like of shape (n_atoms,), optional
        Per-atom value (e.g. width or error, eV/Å) mapped to Viridis between
        ``vmin`` and ``vmax`` (default: its min and max). None colours by element. Either way
        the legend lists the elements; by a value, each keeps its own size (:func:`element_radii`).
    label : str
        Name and units of ``values`` for the colour bar.
    highlight : int, optional
        Index of an atom to mark (a translucent magenta halo and a label).
    arrows : array-like of shape (n_atoms, 3), optional
        Per-atom vectors (e.g. force errors, eV/Å), vermilion, from each atom's surface; the
        longest is ``arrow_length`` Å (the legend states the scale in eV/Å per Å of arrow).
    width, height : int
        Viewer size in pixels.
    style : {"sphere", "stick"}
        Spheres, or ball-and-stick.
    allow_cdn : bool
        If the local 3Dmol.js is missing, load it from the CDN instead of raising.
    js_url : str, optional
        Load 3Dmol.js from this URL (e.g. ``"/app/static/3Dmol-min.js"``, same origin) instead of
        inlining the local file; the fragment then needs that server.

    Returns
    -------
    str
        An HTML fragment (div + inline scripts + colour bar and legend), usable
        in ``streamlit.components.v1.html`` or a standalone page.

    Raises
    ------
    FileNotFoundError
        3Dmol.js is not installed locally, ``allow_cdn`` is False and no ``js_url`` is given.
    ValueError
        Bad ``values``, ``highlight``, ``arrows``, ``style``, limits or ``js_url``.
    """
    import py3Dmol

    n, vals, lo, hi, highlight, vec = _check_view_args(atoms, values, highlight, arrows, vmin, vmax, width, height, style)
    if js_url is not None and (not isinstance(js_url, str) or not js_url.strip() or "'" in js_url):
        raise ValueError(f"js_url: expected a URL without quotes, got {js_url!r}")
    js_code = None if js_url is not None else _read_js(allow_cdn)
    periodic = atoms.cell.rank == 3 and any(atoms.pbc)
    loader = js_url if js_url is not None else _PLACEHOLDER if js_code is not None else CDN_URL
    view = py3Dmol.view(width=int(width), height=int(height), js=loader)
    view.addModel(_xyz(atoms), "xyz")
    by_z = element_radii(atoms.numbers) if vals is not None else None  # spheres and legend alike
    atom_r = _draw_atoms(view, atoms, vals, lo, hi, style, by_z)
    pos = atoms.get_positions()
    if periodic:
        view.addUnitCell()
    scale = None if vec is None else _draw_arrows(view, pos, vec, arrow_length, atom_r)
    if highlight is not None:
        _draw_highlight(view, atoms, pos, highlight, vals)
    if periodic:  # a slight tilt so the cell does not look like a flat square along c
        view.rotate(-20, "x")
        view.rotate(25, "y")
    view.zoomTo()

    lib, script = _script_html(view, atoms, js_code)
    legend = _legend_html(
        label=label, lo=lo, hi=hi, highlight=highlight,  # lo, hi are None without values
        highlight_text=None if highlight is None else _highlight_text(atoms, highlight, vals, label),
        arrow_scale=scale, arrow_max=None if vec is None else float(np.linalg.norm(vec, axis=1).max()),
        arrow_length=float(arrow_length), periodic=periodic, width=int(width),
        elements=_element_rows(atoms.numbers, by_z),
    )
    return f'<div class="flexcal-structure-view" data-n-atoms="{n}">\n{lib}{script}\n{legend}</div>\n'


def _check_view_args(atoms, values, highlight, arrows, vmin, vmax, width, height, style):
    """Validate ``structure_view_html``'s inputs.

    Returns (n_atoms, vals (n,) float or None, lo, hi (colour limits; None without
    values), highlight (int in [0, n) or None), vec (n, 3) float or None).
    """
    if not hasattr(atoms, "get_positions") or not hasattr(atoms, "get_chemical_symbols"):
        raise ValueError(f"atoms: expected an ase.Atoms, got {type(atoms).__name__}")
    n = len(atoms)
    if n == 0:
        raise ValueError("atoms: the structure has no atoms")
    if style not in ("sphere", "stick"):
        raise ValueError(f"style: expected 'sphere' or 'stick', got {style!r}")
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name}: expected a positive number of pixels, got {v!r}")

    vals = lo = hi = None
    if values is not None:
        vals = np.asarray(values, dtype=float)
        if vals.shape != (n,):
            raise ValueError(f"values: expected shape ({n},) (one per atom), got {vals.shape}")
        if not np.all(np.isfinite(vals)):
            raise ValueError(f"values: must be finite, got {vals[~np.isfinite(vals)][0]!r}")
        lo = float(vals.min()) if vmin is None else float(vmin)
        hi = float(vals.max()) if vmax is None else float(vmax)
        if hi < lo:
            raise ValueError(f"vmax: must be >= vmin ({lo!r}), got {hi!r}")
    if highlight is not None:
        if isinstance(highlight, bool) or not isinstance(highlight, (int, np.integer)) or not -n <= highlight < n:
            raise ValueError(f"highlight: expected an atom index in [0, {n}), got {highlight!r}")
        highlight = int(highlight) % n
    vec = None
    if arrows is not None:
        vec = np.asarray(arrows, dtype=float)
        if vec.shape != (n, 3):
            raise ValueError(f"arrows: expected shape ({n}, 3), got {vec.shape}")
        if not np.all(np.isfinite(vec)):
            raise ValueError("arrows: must be finite")
    return n, vals, lo, hi, highlight, vec


def _read_js(allow_cdn: bool) -> str | None:
    """Text of the local 3Dmol.js; None when it is missing and ``allow_cdn`` (else FileNotFoundError)."""
    if allow_cdn:
        try:
            js_code: str | None = find_3dmol_js().read_text(encoding="utf-8")
        except FileNotFoundError:
            js_code = None
    else:
        js_code = find_3dmol_js().read_text(encoding="utf-8")
    return js_code


def _draw_atoms(view, atoms, vals, lo, hi, style: str, by_z: dict[int, float] | None):
    """Style the atoms: Viridis by ``vals`` in [lo, hi] with each element's radius ``by_z``
    (:func:`element_radii`), or Jmol element colours when ``vals`` is None. Returns the radii (n,) Å,
    or None (by element)."""
    if vals is None:
        view.setStyle({}, _atom_style(style, None))
        return None
    radii = np.array([by_z[int(z)] for z in atoms.numbers])
    for i, c in enumerate(value_colors(vals, lo, hi)):
        view.setStyle({"index": i}, _atom_style(style, c, float(radii[i])))
    return radii


def _draw_arrows(view, pos, vec, arrow_length: float, radii=None) -> float:
    """Arrows along ``vec`` (n, 3), starting on each atom's sphere (``radii`` (n,) Å; default 0.6 Å)
    so short ones are not hidden inside it; the longest is ``arrow_length`` Å.

    Returns the scale (Å of arrow per unit of ``vec``; 0.0 when all vectors are zero).
    """
    norms = np.linalg.norm(vec, axis=1)
    big = float(norms.max())
    scale = arrow_length / big if big > 0 else 0.0
    for i in np.flatnonzero(norms > 0):
        r = 0.6 if radii is None else float(radii[i])
        start = pos[i] + r * vec[i] / norms[i]
        end = start + scale * vec[i]
        view.addArrow(
            {
                "start": dict(zip("xyz", map(float, start))),
                "end": dict(zip("xyz", map(float, end))),
                "radius": _ARROW_RADIUS,
                "radiusRatio": 2.2,
                "color": _ARROW,
            }
        )
    return scale


def _draw_highlight(view, atoms, pos, highlight: int, vals) -> None:
    """A translucent halo and a label on atom ``highlight``."""
    p = pos[highlight]
    center = dict(zip("xyz", map(float, p)))
    view.addSphere({"center": center, "radius": 0.9, "color": _HIGHLIGHT, "opacity": 0.45})
    text = f"{atoms.get_chemical_symbols()[highlight]}{highlight}"
    if vals is not None:
        text += f": {vals[highlight]:.3g}"
    view.addLabel(text, {"position": center, "backgroundColor": "black", "fontColor": "white", "fontSize": 12})


def _script_html(view, atoms, js_code: str | None) -> tuple[str, str]:
    """(inline library ``<script>`` or "" for a URL loader, viewer script with a unique id)."""
    uid = hashlib.sha1(f"{next(_counter)}|{_xyz(atoms)}|{os.getpid()}".encode()).hexdigest()[:12]
    script = _draw_once((view.startjs + view.endjs).replace("UNIQUEID", uid), f"viewer_{uid}")
    if js_code is not None:
        # the inline library below defines window.$3Dmol synchronously; no loader needed
        script = script.replace(f"loadScriptAsync('{_PLACEHOLDER}')", "Promise.resolve()")
        inline = js_code.replace("</script", "<\\/script")
        # hide exports/module/define so the UMD wrapper sets window.$3Dmol (as py3Dmol's loader does)
        lib = (
            "<script>(function(){var exports=undefined, module=undefined, define=undefined;\n"
            + inline
            + "\n}).call(window);</script>\n"
        )
    else:
        lib = ""
    return lib, script


def _draw_once(script: str, viewer: str) -> str:
    """``script`` with 3Dmol's drawing held back until its final ``render()``, and no redraw unless needed.

    3Dmol.js redraws the scene after ``zoomTo``, ``rotate``, ``addUnitCell`` and ``addLabel``
    (``GLViewer.show``); py3Dmol's script calls seven of them before ``render()``, and each
    redraw costs 0.1-0.35 s without a GPU (a software WebGL, as in a headless or remote
    browser), so the view took 1.2 s to appear. ``show`` is a no-op while the scene is built and
    the prototype's ``show`` is restored just before ``render()``: one draw, the same picture (up to the
    anti-aliasing of the cell's text labels). 3Dmol's own Resize- and IntersectionObserver then redraw twice more on their first callbacks
    although nothing changed; they are replaced by observers that call ``resize()`` only when the
    container's size changed or the WebGL context was lost (a view created hidden is still drawn
    when it is shown). Relies on 3Dmol 2.5.5's ``divwatcher``/``intwatcher``/``WIDTH``/``HEIGHT``
    (py3Dmol and the npm package are pinned; ``tests/test_viewer_browser.py`` checks it in a browser).
    """
    created = f"{viewer} = $3Dmol.createViewer("
    final = f"{viewer}.render();"
    start, end = script.find(created), script.rfind(final)
    line_end = script.find(";\n", start) + 2
    if start < 0 or end < 0 or not start < line_end <= end:
        raise RuntimeError("py3Dmol's viewer script changed: createViewer(...) or render() not found")
    hold = (f"{viewer}.show = function () {{}};  // drawn once, by render() below\n"
            + _REDRAW_ON_CHANGE.replace("VIEWER", viewer))
    return script[:line_end] + hold + script[line_end:end] + f"delete {viewer}.show;\n" + script[end:]


_REDRAW_ON_CHANGE = """(function (v) {  // redraw on a real size change only (3Dmol's observers redraw on their first call)
  [v.divwatcher, v.intwatcher].forEach(function (w) { if (w) w.disconnect(); });
  var changed = function () {
    if (v.getWidth() !== v.WIDTH || v.getHeight() !== v.HEIGHT || v.renderer.isLost()) v.resize();
  };
  if (window.ResizeObserver) { v.divwatcher = new ResizeObserver(changed); v.divwatcher.observe(v.container); }
  if (window.IntersectionObserver) {
    v.intwatcher = new IntersectionObserver(function (es) { es.forEach(function (e) { if (e.isIntersecting) changed(); }); });
    v.intwatcher.observe(v.container);
  }
})(VIEWER);
"""


def _highlight_text(atoms, i: int, vals, label: str) -> str:
    sym = atoms.get_chemical_symbols()[i]
    s = f"atom {i} ({sym})"
    if vals is not None:
        s += f", {_html.escape(label)} = {vals[i]:.4g}"
    return s


def _element_rows(numbers, radii: dict[int, float] | None) -> list[str]:
    """Legend entries, one per element (sorted by Z): a disc (size = sphere radius when coloured by
    a value, Jmol colour), the symbol, the atom count and the radius."""
    from core.figures_scales import element_color, element_symbol  # the plots' element colours too

    zs, counts = np.unique(np.asarray(numbers, dtype=int), return_counts=True)
    rows = []
    for z, count in zip(zs.tolist(), counts.tolist()):
        sym, colour = element_symbol(z), element_color(z)
        r = None if radii is None else radii[z]
        px = 12 if r is None else int(round(28 * r))  # 0.38-0.78 Å -> 11-22 px
        size = "" if r is None else f" r = {r:.2f} Å"
        rows.append(
            f'<span class="flexcal-element" data-symbol="{sym}" data-z="{z}"'
            + ("" if r is None else f' data-radius="{r:.3f}"')
            + ' style="display:inline-flex;align-items:center;margin-right:10px;">'
            f'<span style="display:inline-block;width:{px}px;height:{px}px;border-radius:50%;'
            f'background:{colour};border:2px solid #333;margin-right:3px;"></span>'
            f"<b>{sym}</b>&nbsp;×{count}{size}</span>"
        )
    return rows


def _legend_html(*, label, lo, hi, highlight, highlight_text, arrow_scale, arrow_max, arrow_length, periodic,
                 width, elements) -> str:
    rows = []
    if lo is not None:
        rows.append(
            '<div class="flexcal-colorbar" style="margin:4px 0;">'
            f'<div style="font-weight:600;">{_html.escape(str(label))}</div>'
            '<div style="height:12px;width:100%;border:1px solid #999;'
            f'background:linear-gradient(to right, {_gradient_css()});"></div>'
            '<div style="display:flex;justify-content:space-between;">'
            f'<span class="flexcal-vmin">{lo:.4g}</span><span class="flexcal-vmax">{hi:.4g}</span></div>'
            "</div>"
        )
        what = "Elements: sphere size (colour = the value above; disc = Jmol colour)"
    else:
        rows.append("<div>atoms coloured by element (Jmol colours)</div>")
        what = "Elements"
    rows.append(f'<div class="flexcal-elements" style="margin:4px 0;"><div>{what}</div>'
                f'<div style="display:flex;flex-wrap:wrap;align-items:center;">{"".join(elements)}</div></div>')
    if highlight is not None:
        rows.append(
            f'<div><span style="color:{_HIGHLIGHT};font-size:1.2em;">&#9679;</span> highlighted: {highlight_text}</div>'
        )
    if arrow_scale is not None:
        per_a = (1.0 / arrow_scale) if arrow_scale else 0.0
        longest = "" if not arrow_max else f" (longest {arrow_max:.3g} eV/Å = {arrow_length:.3g} Å)"
        rows.append(
            f'<div class="flexcal-arrow-scale"><span style="color:{_ARROW};font-weight:700;">&#10230;</span> '
            f"per-atom vectors from each atom's surface, 1 Å of arrow = {per_a:.3g} eV/Å{longest}</div>"
        )
    if periodic:
        rows.append('<div>unit cell: <span style="color:red;">a</span> <span style="color:green;">b</span> '
                    '<span style="color:blue;">c</span></div>')
    out = (
        f'<div class="flexcal-legend" style="width:{width}px;font:12px sans-serif;color:#222;">'
        + "".join(rows)
        + "</div>\n"
    )
    # character references keep "Å" intact in pages served without a charset
    return out.encode("ascii", "xmlcharrefreplace").decode("ascii")
