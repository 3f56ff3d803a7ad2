"""``flexcal study zero-shot``: a foundation model, not fine-tuned, calibrated on each dataset.

The model is ``--model`` (default ``chgnet-0.3.0``: a foundation model whose weights ship in
the ``chgnet`` package, so the study runs offline). Datasets (``--dataset``, comma-separated):

* a public DFT set of :data:`core.studies.ZERO_SHOT_PUBLIC` (``3bpa``, ``acac``, ``ethanol``,
  ``hea25``; needs ``../shared/data`` or ``$FLEXCAL_SHARED_DATA``): its calibration file and
  its shift files, each subsampled to ``--max-structures`` frames (default 200 for these);
* an embedded demo family (``molecule``, ``licl``, ``surface``): every frame (the foundation
  model saw none of them); the family's training config types are the calibration
  distribution, every other config type a shift split;
* an extxyz file: the in-domain split, plus ``--test-data FILES`` (each a shift split) or
  ``--calibration-types``/``--test-types`` of ``--split-by`` (default ``config_type``).

Default: the public sets that are present, else the demo families. The foundation model's
training set is not at hand, so 30 % of each dataset's calibration structures are set aside as
the knn/gmm and out-of-domain reference (descriptors only; ``--reference-data`` gives one
reference for every dataset instead).
"""

from __future__ import annotations

from pathlib import Path

from core import sources
from core.cli.commands import _check_device, existing_file, load_data_sites, method_options
from core.cli.ui import EXIT_OK, UI, UserError

__all__ = ["study_zero_shot", "DEFAULT_MODEL", "PUBLIC_FRAMES"]

DEFAULT_MODEL = "chgnet-0.3.0"
PUBLIC_FRAMES = 200  # frames per public file unless --max-structures: CHGNet costs ~0.25 s per 27-atom frame
COLUMNS = ["dataset", "label", "force_mae", "coverage", "coverage_expected", "mean_width", "width_ratio", "spearman",
           "auroc", "worst_species_coverage", "ood_fraction"]
SUMMARY_TITLE = ("ρ side by side (spearman of width vs error; split CP has one width, so no ρ): the best "
                 "heuristic CP vs q_θ (flexible) and flexible-ood, with the potential's force MAE (eV/Å)")


def study_zero_shot(args, ui: UI, outdir: Path | None) -> int:
    from core import studies
    from core.cli.commands_study import _emit

    _check_device(args)
    if args.model is None:
        args.model = DEFAULT_MODEL
        ui.info(f"zero-shot: model {DEFAULT_MODEL} (foundation model, available offline; choose with --model)")
    plan = _plan(args, ui)
    datasets = {name: _dataset_sites(args, ui, name, kind, spec) for name, (kind, spec) in plan.items()}
    references = None
    if args.reference_data:
        ref = load_data_sites(args, ui, existing_file(args.reference_data, "--reference-data"), subset=False)
        references = {name: ref for name in datasets}
    else:
        ui.info("zero-shot: the foundation model's training set is not at hand: 30% of each dataset's "
                "calibration structures are set aside as the knn/gmm and out-of-domain reference")
    table = studies.run_zero_shot(
        datasets, args.methods, confidence=args.confidence, seed=args.seed, test_fraction=args.test_fraction,
        split_seed=args.split_seed, references=references, method_options=method_options(args),
        bootstrap=args.bootstrap, log=ui.info, epoch_callback=ui.epoch_callback(args.max_epochs))
    ui.close()
    summary = studies.zero_shot_summary(table)
    _emit(args, ui, table, "zero-shot", outdir, columns=COLUMNS, extra={"summary": (SUMMARY_TITLE, summary)})
    return EXIT_OK


def _plan(args, ui: UI) -> dict[str, tuple[str, object]]:
    """Dataset name -> (kind, spec), checked before anything is featurized."""
    from core.studies import ZERO_SHOT_PUBLIC
    from core.teaching import shared_data_dir

    root = shared_data_dir()
    families = _demo_families()
    if args.dataset is None:
        present = [n for n, (cal, _) in ZERO_SHOT_PUBLIC.items() if root is not None and (root / cal).is_file()]
        items = present or list(families)
        if not items:
            raise UserError("zero-shot: give --dataset (neither the public DFT sets nor the embedded demo datasets "
                            "are installed)")
        where = f"the public DFT sets in {root}" if present else "the embedded demo datasets"
        ui.info(f"zero-shot: {where}: {', '.join(items)} (choose with --dataset)")
    elif Path(args.dataset).is_file():
        items = [args.dataset]
    else:
        items = [x.strip() for x in args.dataset.split(",") if x.strip()]
    plan: dict[str, tuple[str, object]] = {}
    for item in items:
        if item in ZERO_SHOT_PUBLIC:
            plan[item] = ("public", _public_files(root, item, ZERO_SHOT_PUBLIC[item]))
        elif item in families:
            plan[item] = ("demo", item)
        elif Path(item).is_file():
            plan[Path(item).stem] = ("file", Path(item))
        else:
            raise UserError(f"--dataset: {item!r} is neither a file, nor a public set ({', '.join(ZERO_SHOT_PUBLIC)}), "
                            f"nor an embedded demo dataset ({', '.join(families) or 'none installed'})")
    files = [name for name, (kind, _) in plan.items() if kind == "file"]
    if (args.test_data or args.calibration_types) and len(files) != 1:
        raise UserError("--test-data/--calibration-types: give exactly one extxyz file as --dataset for them")
    if any(kind == "public" for kind, _ in plan.values()) and args.max_structures is None:
        args.max_structures = PUBLIC_FRAMES
        ui.info(f"zero-shot: {PUBLIC_FRAMES} random frames per file (seeded by --split-seed; --max-structures to change)")
    return plan


def _public_files(root: Path | None, name: str, spec) -> tuple[Path, dict[str, Path]]:
    cal, shifts = spec
    if root is None or not (root / cal).is_file():
        raise UserError(f"--dataset: the public set {name!r} needs {cal} under ../shared/data (or set "
                        "FLEXCAL_SHARED_DATA to the folder holding it)")
    return root / cal, {split: root / f for split, f in shifts.items() if (root / f).is_file()}


def _demo_families() -> list[str]:
    try:
        from core import demo
    except ImportError:
        return []
    out = []
    for family in demo.FAMILIES:
        try:
            demo.demo_dataset_path(family)
        except FileNotFoundError:
            continue
        out.append(family)
    return out


def _dataset_sites(args, ui: UI, name: str, kind: str, spec):
    """(calibration-distribution sites, {shift split: sites}) of one dataset."""
    try:
        if kind == "public":
            cal_path, shift_paths = spec
            return (load_data_sites(args, ui, cal_path),
                    {split: load_data_sites(args, ui, path) for split, path in shift_paths.items()})
        if kind == "demo":
            return _by_column(load_data_sites(args, ui, spec), "config_type", _train_types(spec), None)
        key = args.split_by or "config_type"
        sites = load_data_sites(args, ui, spec, info_keys=(key,) if key != "config_type" else ())
        cal, shifts = (_by_column(sites, key, args.calibration_types, args.test_types) if args.calibration_types
                       else (sites, {}))
        for extra in args.test_data or ():
            shifts[Path(extra).stem] = load_data_sites(args, ui, existing_file(extra, "--test-data"))
        return cal, shifts
    except ValueError as exc:  # e.g. elements the model does not know: say which dataset
        raise UserError(f"--dataset {name}: {exc}") from None


def _train_types(family: str) -> list[str]:
    from core.demo import demo_info

    return list(demo_info(family)["train_config_types"])


def _by_column(sites, key: str, cal_values, test_values):
    """Calibration sites (``key`` in ``cal_values``) and one shift split per other value."""
    cal = sources.select_by_column(sites, key, cal_values)
    present = sorted(set(sites.structure_info[key].astype(str).tolist()))
    tests = test_values or [v for v in present if v not in set(map(str, cal_values))]
    return cal, {str(v): sources.select_by_column(sites, key, [v]) for v in tests}
