"""Apply a fitted calibrator to new structures: per-atom widths, per-frame flags, exports.

A calibration is made to be used on structures nobody labelled (an MD trajectory, a screening
set, active-learning candidates). :func:`annotate` runs the potential once over them
(:func:`core.featurize.featurize`), turns the descriptors into calibrated half-widths at the
calibrator's confidence (and at extra ``levels``), and summarises every frame::

    ann = annotate(structures, potential, calibrator, threshold=0.3)
    ann.frame_table()        # frame, n_atoms, max_width, mean_width, flagged, ood_fraction, ...
    ann.write_extxyz("annotated.xyz")          # per-atom flexcal_width, per-frame flexcal_* info
    ann.write_extxyz("to_label.xyz", flagged_only=True)   # the hand-off to labelling

:func:`annotate_sites` is the shared core on an existing SiteTable (what
``CalibratedCalculator`` applies to each MD step); :func:`run_predict` is ``flexcal predict``
without the terminal (read, check outputs first, annotate, write atomically, summary dict).

Flags. A frame is *flagged* when its largest width exceeds ``threshold`` (eV/Å), or when it is
out of the calibration domain: with a fitted domain score (``domain=``, e.g.
``core.domain.DomainScore`` fitted on the calibration sites, or the one a shift-aware
calibrator carries as ``domain_``), a site is out of domain where its site score exceeds 1.0 and a
frame where its structure score does (``core.domain``: further from the calibration data than 99 %
of calibration sites / structures). Widths are in eV/Å throughout.

One search per site. When the domain score is the calibrator's own (``flexible-ood``: its
``domain_``, the default), the k-NN search of the sites is made once
(``calibrator.neighbours(sites)``, a :class:`core.domain.Neighbours`) and passed to the widths
(``predict``/``predict_levels(..., neighbours=)``) and to the site and frame scores
(:func:`shared_neighbours`); the result is identical to searching in each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.annotation import (ERROR_ARRAY, FRAME_COLUMNS, OOD_ARRAY, WIDTH_ARRAY, Annotation, argmax_atoms,
                             check_threshold, frame_flags, frame_groups, level_suffix, reduce_frames, table_suffix)
from core.sites import SiteTable

__all__ = ["Annotation", "annotate", "annotate_sites", "run_predict", "demo_calibrator", "shared_neighbours",
           "level_suffix",
           "WIDTH_ARRAY", "OOD_ARRAY", "ERROR_ARRAY", "FRAME_COLUMNS"]


# ---------------------------------------------------------------------- the core
def annotate_sites(sites: SiteTable, calibrator, *, levels=None, domain=None, threshold: float | None = None,
                   check_layout: bool = True, strict: bool = False) -> Annotation:
    """Calibrated widths and per-frame summaries of ``sites`` (the core of :func:`annotate`).

    Parameters
    ----------
    sites : SiteTable
        n sites (labelled or not: errors, when present, give per-frame coverage).
    calibrator : Calibrator
        Fitted; ``predict`` (and ``predict_levels`` when ``levels`` are given).
    levels : sequence of float in (0, 1), optional
        Extra confidence levels; widths (n, k) at each.
    domain : core.domain.DomainScore, or any object with ``flags(sites) -> (n,) bool``, optional
        A fitted out-of-domain score (site and frame scores, out above 1.0); default: the
        calibrator's own ``domain_`` if it has one (``flexible-ood``).
    threshold : float, optional
        A frame whose largest width exceeds this (eV/Å) is flagged; frames out of domain are
        flagged too.
    check_layout, strict : bool
        Check first that the calibrator was fitted on this model's descriptor layout
        (``calibrator.check_layout``: another width -> ValueError; another model of the same
        width -> warning, ValueError when ``strict``).
    """
    from core.calibration.base import check_sites

    check_sites(sites)
    if not callable(getattr(calibrator, "predict", None)):
        raise TypeError(f"calibrator: expected a fitted FlexCal Calibrator, got {type(calibrator).__name__}")
    threshold = check_threshold(threshold)
    if check_layout and callable(getattr(calibrator, "check_layout", None)):
        calibrator.check_layout(sites, strict=strict)
    domain = domain if domain is not None else getattr(calibrator, "domain_", None)
    nb = shared_neighbours(calibrator, domain, sites)
    share = {} if nb is None else {"neighbours": nb}
    widths = _widths("calibrator.predict", calibrator.predict(sites, **share), (len(sites),))
    lv = np.zeros(0)
    widths_levels = None
    if levels is not None:
        from core.validation import check_levels

        lv = check_levels(levels)
        widths_levels = _widths("calibrator.predict_levels", calibrator.predict_levels(sites, lv, **share),
                                (len(sites), lv.size))
    errors = sites.errors if (sites.labelled and sites.meta.get("labelled", True)) else None
    groups = frame_groups(sites.structure_ids)
    order, starts, frame_ids = groups
    counts = np.diff(np.r_[starts, len(sites)])
    max_w = reduce_frames(np.maximum, widths, order, starts)
    frame = {"n_atoms": counts, "max_width": max_w, "mean_width": reduce_frames(np.add, widths, order, starts) / counts,
             "max_width_atom": argmax_atoms(widths, max_w, counts, order, starts, sites.atom_index)}
    ood = _domain_columns(domain, sites, groups, counts, nb)
    max_error = coverage = None
    if errors is not None:
        max_error = reduce_frames(np.maximum, errors, order, starts)
        coverage = reduce_frames(np.add, (errors <= widths).astype(np.int64), order, starts) / counts
    return Annotation(sites=sites, confidence=float(getattr(calibrator, "confidence", np.nan)), widths=widths,
                      levels=lv, widths_levels=widths_levels, threshold=threshold, frame_ids=frame_ids,
                      flagged=frame_flags(max_w, ood["frame_ood"], threshold), errors=errors, max_error=max_error,
                      coverage=coverage, calibrator=str(getattr(calibrator, "name", type(calibrator).__name__)),
                      n_calibration_structures=getattr(calibrator, "n_calibration_structures_", None), **frame, **ood)


def shared_neighbours(calibrator, domain, sites: SiteTable):
    """The one k-NN search of ``sites`` that ``calibrator`` and ``domain`` can both use, or None.

    Not None when ``domain`` is the calibrator's own fitted ``domain_`` (a
    :class:`core.domain.DomainScore`) and the calibrator has ``neighbours(sites)``, i.e. its
    ``predict``/``predict_levels`` accept ``neighbours=`` (``flexible-ood``). Otherwise each
    consumer searches on its own (a separate domain score has another domain set).
    """
    from core.domain import DomainScore

    if (isinstance(domain, DomainScore) and getattr(calibrator, "domain_", None) is domain
            and callable(getattr(calibrator, "neighbours", None))):
        return calibrator.neighbours(sites)
    return None


def _domain_columns(domain, sites: SiteTable, groups, counts: np.ndarray, neighbours=None) -> dict[str, Any]:
    """Out-of-domain fields of an Annotation: per site ``ood``/``ood_score``, per frame ``frame_ood``,
    ``frame_ood_score``, ``ood_fraction`` (NaN and None without a domain score).

    A :class:`core.domain.DomainScore` gives site scores and calibrated structure scores (threshold
    1.0 for both); any other object needs ``flags(sites)`` (optionally ``score``), and a frame is
    then out of domain when any of its sites is. ``neighbours``: the domain score's search of
    ``sites`` already made (:func:`shared_neighbours`); else it searches once here.
    """
    order, starts, frame_ids = groups
    out: dict[str, Any] = {"ood": None, "ood_score": None, "frame_ood": None, "frame_ood_score": None,
                           "ood_fraction": np.full(frame_ids.size, np.nan)}
    if domain is None:
        return out
    from core.domain import THRESHOLD, DomainScore

    n = len(sites)
    if isinstance(domain, DomainScore):
        nb = neighbours if neighbours is not None else domain.neighbours(sites)  # one k-NN query for all
        out["ood_score"] = np.asarray(domain.score(sites, neighbours=nb), dtype=np.float64)
        out["ood"] = out["ood_score"] > THRESHOLD
        ids, frame_score = domain.structure_scores(sites, neighbours=nb)
        if not np.array_equal(ids, frame_ids):
            raise RuntimeError("domain.structure_scores: structure ids do not match the sites' frames")
        out["frame_ood_score"] = np.asarray(frame_score, dtype=np.float64)
        out["frame_ood"] = out["frame_ood_score"] > THRESHOLD
    else:
        out["ood"] = np.asarray(domain.flags(sites), dtype=bool).reshape(-1)
        if callable(getattr(domain, "score", None)):
            out["ood_score"] = np.asarray(domain.score(sites), dtype=np.float64).reshape(-1)
    for name in ("ood", "ood_score"):
        if out[name] is not None and out[name].shape != (n,):
            raise ValueError(f"domain.{'flags' if name == 'ood' else 'score'}: expected shape ({n},), "
                             f"got {out[name].shape}")
    n_ood = reduce_frames(np.add, out["ood"].astype(np.int64), order, starts)
    out["ood_fraction"] = n_ood / counts
    if out["frame_ood"] is None:
        out["frame_ood"] = n_ood > 0
    return out


def annotate(structures, potential, calibrator, *, levels=None, domain=None, threshold: float | None = None,
             batch_size: int = 16, progress=None, labelled: bool | None = None, strict: bool = False,
             cache_dir=None) -> Annotation:
    """Run ``potential`` once over ``structures`` and annotate every atom with a calibrated width.

    Parameters
    ----------
    structures : core.data.Dataset or list of ase.Atoms
        Labelled or not; frame ids in the result are positions in this list.
    potential : Potential, model name or path
        The model the calibrator was fitted with (a name/path goes through
        ``core.potentials.load_potential``; a local ``.model`` file runs code from the file).
    calibrator : Calibrator or path of a saved one (``core.calibration.load_calibrator``, no pickle)
    levels, domain, threshold, strict
        As in :func:`annotate_sites`.
    batch_size, progress, cache_dir
        Passed to :func:`core.featurize.featurize` (one forward pass per batch).
    labelled : bool, optional
        Use reference forces (``REF_forces``) for errors and coverage; default: when every
        structure has them.

    Raises
    ------
    ValueError
        A calibrator fitted on another descriptor width (checked before the forward passes
        where the potential declares ``n_descriptors``), unknown elements, bad arguments.
    """
    from core.data import REF_FORCES, Dataset
    from core.featurize import featurize

    check_threshold(threshold)  # cheap arguments fail before the forward passes
    if levels is not None:
        from core.validation import check_levels

        check_levels(levels)
    calibrator = _resolve_calibrator(calibrator)
    potential = _resolve_potential(potential)
    frames = list(structures.structures) if isinstance(structures, Dataset) else _atoms_list(structures)
    if labelled is None:
        labelled = all(REF_FORCES in a.arrays for a in frames)
    _precheck_layout(calibrator, potential, strict)
    sites = featurize(structures, potential, batch_size=batch_size, progress=progress, labelled=bool(labelled),
                      cache_dir=cache_dir)
    # the model was compared before the forward passes (one warning at most); check again only a
    # descriptor width the potential did not declare in advance
    layout = getattr(calibrator, "layout_", None)
    recheck = layout is not None and sites.n_descriptors != layout["n_descriptors"]
    ann = annotate_sites(sites, calibrator, levels=levels, domain=domain, threshold=threshold,
                         check_layout=recheck, strict=strict)
    return _with_source(ann, frames)


def run_predict(data, model, calibrator_path, output, *, table="auto", site_table=None, flagged_output=None,
                overwrite: bool = True, read_options: dict | None = None, **options) -> dict[str, Any]:
    """``flexcal predict``: annotate ``data`` with a saved calibrator and write the results.

    Every output path is checked (not a directory, not an input nor another output, writable
    folder, not existing unless ``overwrite``) before anything is read or loaded; the outputs
    are written atomically afterwards.

    Parameters
    ----------
    data : path
        Structures: extxyz or any ASE-readable file, labelled or not (``core.data.read_dataset``,
        ``read_options`` passed on, e.g. ``format``, ``forces_key``, ``max_bytes``).
    model : model name or path (``core.potentials.load_potential``)
    calibrator_path : path of a saved calibrator (``.npz``)
    output : path
        Annotated extxyz (every frame).
    table : "auto", path or None
        Per-frame table, ``.csv`` or ``.parquet``; ``"auto"``: ``output`` with suffix ``.csv``.
    site_table, flagged_output : path, optional
        Per-site table; extxyz of the flagged frames only (ready for labelling; not written when
        no frame is flagged).
    **options
        Passed to :func:`annotate`: ``levels``, ``threshold`` (eV/Å), ``domain`` (a fitted domain
        score or the path of a saved ``core.domain.DomainScore``), ``strict``, ``batch_size``,
        ``progress``, ``cache_dir``.

    Returns
    -------
    dict
        :meth:`Annotation.summary` plus ``data``, ``model``, ``calibrator_file`` and ``outputs``.
    """
    data, calibrator_path, output = Path(data), Path(calibrator_path), Path(output)
    for name, p in (("data", data), ("calibrator", calibrator_path)):
        if not p.is_file():
            raise FileNotFoundError(f"{name}: {p}: no such file")
    model_path = Path(model) if isinstance(model, (str, Path)) and Path(model).is_file() else None
    outputs = {"extxyz": output, "table": output.with_suffix(".csv") if table == "auto" else table,
               "site_table": site_table, "flagged": flagged_output}
    _check_outputs(outputs, [data, calibrator_path, model_path], overwrite)
    calibrator = _resolve_calibrator(calibrator_path)
    if isinstance(options.get("domain"), (str, Path)):
        from core.domain import DomainScore

        options["domain"] = DomainScore.load(options["domain"])
    from core.data import read_dataset

    dataset = read_dataset(data, require_labels=False, **(read_options or {}))
    ann = annotate(dataset, _resolve_potential(model), calibrator, **options)
    ann.write_extxyz(output)
    if outputs["table"] is not None:
        ann.write_table(outputs["table"])
    if site_table is not None:
        ann.write_table(site_table, which="sites")
    written = {k: str(v) for k, v in outputs.items() if v is not None and k != "flagged"}
    if flagged_output is not None and ann.flagged.any():
        ann.write_extxyz(flagged_output, flagged_only=True)
        written["flagged"] = str(flagged_output)
    out = ann.summary()
    out.update({"data": str(data), "model": str(model), "calibrator_file": str(calibrator_path), "outputs": written})
    return out


def _check_outputs(outputs: dict, inputs: list, overwrite: bool) -> None:
    """Each output path usable, distinct from the inputs and from the other outputs (core.io.check_output)."""
    from core.io import check_output

    seen: list[Path] = []
    for what, p in outputs.items():
        if p is None:
            continue
        if what in ("table", "site_table"):
            table_suffix(Path(p), what)
        check_output(p, inputs=[*inputs, *seen], overwrite=overwrite, what=what)
        seen.append(Path(p))


def demo_calibrator(method: str = "flexible-ood", family: str = "molecule", *, confidence: float = 0.9,
                    seed: int = 0, potential=None, **options):
    """A calibrator fitted on a demo family's ``calibration`` frames with its demo model.

    The offline default of the Apply page, the tests and the benchmark: with the ``molecule``
    family it calibrates on 75 ethanol frames at 300 K, ready to annotate
    :func:`core.demo.demo_trajectory_path`. ``options`` go to ``make_calibrator`` (e.g.
    ``max_epochs``); ``potential`` defaults to the family's demo model.
    """
    from core.calibration import make_calibrator
    from core.demo import demo_frames, demo_model_path
    from core.featurize import featurize

    potential = _resolve_potential(demo_model_path(family) if potential is None else potential)
    sites = featurize(demo_frames(family, split="calibration"), potential)
    return make_calibrator(method, confidence=confidence, seed=seed, **options).fit(sites)


# ------------------------------------------------------------------- helpers
def _resolve_calibrator(calibrator):
    if isinstance(calibrator, (str, Path)):
        from core.calibration import load_calibrator

        return load_calibrator(calibrator)
    if not callable(getattr(calibrator, "predict", None)):
        raise TypeError(f"calibrator: expected a fitted Calibrator or the path of a saved one, got "
                        f"{type(calibrator).__name__}")
    return calibrator


def _resolve_potential(potential):
    if isinstance(potential, (str, Path, list, tuple)):
        from core.potentials import load_potential

        return load_potential(potential)
    return potential


def _atoms_list(structures) -> list:
    if isinstance(structures, (str, Path)):
        raise TypeError(f"structures: expected a Dataset or a list of ase.Atoms, got the path {str(structures)!r}; "
                        "read it with core.data.read_dataset(path, require_labels=False)")
    try:
        return list(structures)
    except TypeError:
        raise TypeError(f"structures: expected a Dataset or a list of ase.Atoms, got {type(structures).__name__}") from None


def _precheck_layout(calibrator, potential, strict: bool) -> None:
    """Compare the calibrator's recorded layout with the potential's before any forward pass."""
    layout = getattr(calibrator, "layout_", None)
    width = getattr(potential, "n_descriptors", None)
    if layout is None or not callable(getattr(calibrator, "check_layout", None)):
        return
    if not isinstance(width, (int, np.integer)) or isinstance(width, bool):
        width = layout["n_descriptors"]  # unknown before the pass: check_layout on the sites catches it
    probe = SiteTable.from_arrays(
        descriptors=np.zeros((1, int(width))), errors=None, species=[1], structure_ids=[0],
        meta={"potential": getattr(potential, "name", None), "potential_identity": getattr(potential, "identity", None)})
    calibrator.check_layout(probe, strict=strict)


def _with_source(ann: Annotation, frames: list) -> Annotation:
    from dataclasses import replace

    return replace(ann, source=frames)


def _widths(name: str, values, shape: tuple) -> np.ndarray:
    w = np.asarray(values, dtype=np.float64)
    if w.shape != shape:
        raise RuntimeError(f"{name} returned shape {w.shape}, expected {shape}")
    if np.isnan(w).any() or (w < 0).any():
        raise RuntimeError(f"{name} returned NaN or negative widths")
    return w
