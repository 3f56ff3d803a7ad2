"""``flexcal study NAME``: arrange sites for the studies of :mod:`core.studies` and print them.

Sites come from :mod:`core.sources` (the potential's training frames are set aside by
:func:`core.sources.exclude_training` and serve as the knn/gmm reference); every study
calls the one evaluation engine. Outputs (``-o OUTDIR``) are checked before any work and
written atomically by :func:`core.studies.write_study`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core import sources
from core.cli.commands import _check_device, _data_inputs, _model_inputs, check_outdir, existing_file, \
    load_data_sites, method_options, precheck_split_values, table_notes
from core.cli.ui import EXIT_OK, UI, UserError, coverage_warnings, domain_warnings, format_table, size_warning

__all__ = ["cmd_study", "table_warnings"]


def cmd_study(args, ui: UI) -> int:
    from core import studies

    name = args.name
    outdir = check_outdir(args, _data_inputs(args.dataset or "") + _model_inputs(args), [f"{name}.csv", f"{name}.json"])
    if name == "zero-shot":
        from core.cli.commands_zero_shot import study_zero_shot

        return study_zero_shot(args, ui, outdir)
    if args.dataset is None:
        args.dataset = _default_study_dataset(name)
        ui.info(f"study {name}: using the embedded demo dataset {args.dataset!r} (choose with --dataset)")
    if name == "active-learning":
        return _study_active_learning(args, ui, outdir)
    _check_device(args)
    common = dict(confidence=args.confidence, seed=args.seed, method_options=method_options(args),
                  bootstrap=args.bootstrap, log=ui.info, epoch_callback=ui.epoch_callback(args.max_epochs))
    if name == "unseen" and args.calibration_types:
        key = args.split_by or "config_type"
        precheck_split_values(args, args.dataset, key, list(args.calibration_types) + list(args.test_types or ()))
    pool, reference, label, family = _study_sites(args, ui)
    if name == "in-domain":
        train_types = _demo_train_types(family) if not args.model else None
        if train_types:  # one distribution: the demo model's own config types, unseen ones left out
            pool = sources.select_by_column(pool, "config_type", train_types)
            ui.info(f"in-domain: config types {', '.join(train_types)} ({pool.n_structures} structures)")
        table = studies.run_in_domain(pool, args.methods, test_fraction=args.test_fraction, reference=reference,
                                      split_seed=args.split_seed, dataset=label, **common)
    elif name == "unseen":
        cal, tests = _unseen_splits(args, ui, pool, family)
        table = studies.run_unseen(cal, tests, args.methods, reference=reference, dataset=label,
                                   in_domain_fraction=args.in_domain_fraction, **common)
    elif name == "transfer":
        forces_b = sources.forces_from_file(pool, _data_path(args.dataset), args.b_forces_key)
        sites_b = sources.relabel(pool, forces_b, label=args.b_forces_key)
        ui.info(f"level A = the dataset's reference labels; level B = {args.b_forces_key}")
        table = studies.run_transfer(pool, sites_b, args.methods, test_fraction=args.test_fraction,
                                     reference=reference, budgets=args.budgets, dataset=label, **common)
    else:  # argparse restricts the choices; keep the guard for direct callers
        raise UserError(f"unknown study {name!r}; valid studies: {', '.join(studies.STUDIES)}")
    ui.close()
    _emit(args, ui, table, name, outdir)
    return EXIT_OK


def _emit(args, ui: UI, table, name: str, outdir: Path | None, *, columns=None, extra=None) -> None:
    """Print a study table (or its JSON, with ``extra`` keys) and write it to ``outdir``.

    ``extra``: ``{key: (title, DataFrame)}`` shown below the table (JSON: ``key`` -> rows).
    """
    from core import studies

    table_warnings(ui, table)
    extra = extra or {}
    if args.json:
        ui.json({**studies.study_to_json(table, name), "warnings": list(ui.warnings),
                 **{k: studies.jsonable(t.to_dict(orient="records")) for k, (_, t) in extra.items()}})
    else:
        ui.result(f"study {name} on {table.attrs.get('dataset') or args.dataset}: confidence {args.confidence:g}")
        ui.result(format_table(table, columns))
        for title, t in extra.values():
            ui.result("")
            ui.result(title)
            several = "split" in t.columns and t["split"].nunique() > 1  # format_table adds it then
            ui.result(format_table(t, [c for c in t.columns if c != "split" or not several]))
        table_notes(ui, table)
    ui.flush_warnings()
    if outdir is not None:
        paths = studies.write_study(table, outdir, name)
        ui.info(f"wrote {paths['csv']} and {paths['json']}")


def table_warnings(ui: UI, table) -> None:
    """WARNING lines of a study table: coverage outside its expected range, out-of-domain and tiny splits."""
    if "coverage" not in table.columns:
        return
    if "dataset" in table.columns and table["dataset"].nunique() > 1:  # zero-shot: several datasets
        for dataset, part in table.groupby("dataset", sort=False):
            _split_warnings(ui, part, f"{dataset}/")
        return
    _split_warnings(ui, table, "")


def _split_warnings(ui: UI, table, prefix: str) -> None:
    several = "split" in table.columns and table["split"].nunique() > 1
    splits = table["split"].unique() if "split" in table.columns else [None]
    for split in splits:
        rows = table if split is None else table[table["split"] == split]
        first = rows.iloc[0]
        name = prefix + (str(split) if split is not None else "test")
        if "n_structures" in rows.columns and first["n_structures"] == first["n_structures"]:
            for message in size_warning(name, int(first["n_sites"]), int(first["n_structures"])):
                ui.warn(message)
        for _, row in rows.iterrows():
            for message in coverage_warnings(str(row.get("label", row.get("method"))), row.to_dict(),
                                             f" on {name}" if several or prefix else ""):
                ui.warn(message)
        reports = {str(r.get("label")): r.to_dict() for _, r in rows.iterrows()}
        for message in domain_warnings(name, None, None, reports):
            ui.warn(message)


def _study_sites(args, ui: UI):
    """(calibratable pool, reference or None, dataset label, demo family or None) of ``--dataset``."""
    sites = load_data_sites(args, ui, args.dataset)
    if args.model:  # the file's train/valid labels describe the demo model, not this one
        pool, reference, excluded = sites, None, np.array([], dtype=np.int64)
    else:
        pool, reference, excluded = sources.exclude_training(sites)
    if excluded.size:
        ui.info(f"excluded the potential's {excluded.size} training/validation frames from calibration"
                + (f"; its {reference.n_structures} training frames are the knn/gmm reference" if reference else ""))
    family = sites.meta.get("demo")
    if args.reference_data:
        model = sources.resolve_model(args.model, family)
        reference = load_data_sites(args, ui, existing_file(args.reference_data, "--reference-data"), model=model,
                                    subset=False)
    return pool, reference, family or Path(str(args.dataset)).stem, family


def _data_path(dataset: str) -> Path:
    """The file behind ``--dataset`` (a path or a demo family name)."""
    if Path(dataset).is_file():
        return Path(dataset)
    from core import demo

    return Path(demo.demo_dataset_path(dataset))


def _default_study_dataset(name: str) -> str:
    """The demo family a study uses when no --dataset is given."""
    try:
        from core import demo
    except ImportError:
        raise UserError(f"study {name}: give --dataset (no embedded demo datasets are installed)") from None
    if name == "transfer":  # needs a second level of theory (REF2_*)
        candidates = [f for f, info in demo.FAMILIES.items() if len(info.get("label_keys", ())) > 1]
    elif name == "active-learning":  # the smallest system: MD, labelling and refits take minutes
        candidates = ["molecule", *demo.FAMILIES]
    else:
        candidates = [demo.DEFAULT_FAMILY, *demo.FAMILIES]
    for family in candidates:
        try:
            demo.demo_dataset_path(family)
            if name != "active-learning":  # the other studies featurize with the family's demo model
                demo.demo_model_path(family)
        except FileNotFoundError:
            continue
        return family
    raise UserError(f"study {name}: give --dataset (the demo datasets it needs are not installed)")


def _demo_train_types(family: str | None) -> list[str] | None:
    if family is None:
        return None
    from core.demo import demo_info

    return list(demo_info(family)["train_config_types"])


def _unseen_splits(args, ui: UI, pool, family: str | None):
    """(calibration sites, {name: test sites}) for the unseen study."""
    tests = {}
    key = args.split_by or "config_type"
    model = sources.resolve_model(args.model, family)
    for extra in args.test_data or ():
        path = existing_file(extra, "--test-data")
        tests[path.stem] = load_data_sites(args, ui, path, model=model, subset=False)
    cal_types, test_types = args.calibration_types, args.test_types
    if not cal_types:
        if tests:
            return pool, tests
        cal_types, default_tests = _default_unseen_types(family, pool, key)
        test_types = test_types or default_tests
    cal = sources.select_by_column(pool, key, cal_types)
    if not test_types:
        present = sorted(set(pool.structure_info[key].astype(str).tolist()))
        test_types = [t for t in present if t not in cal_types]
    for t in test_types:
        tests[t] = sources.select_by_column(pool, key, [t])
    if not tests:
        raise UserError("unseen: no test structures; give --test-types or --test-data")
    return cal, tests


def _default_unseen_types(family: str | None, pool, key: str) -> tuple[list[str], list[str]]:
    """Demo family: calibrate on the demo model's training config types, test on each other type."""
    train_types = _demo_train_types(family) if key == "config_type" else None
    if train_types:
        present = sorted(set(pool.structure_info[key].astype(str).tolist()))
        return [t for t in train_types if t in present], [t for t in present if t not in train_types]
    if key not in pool.structure_info:
        raise UserError(f"unseen: give --calibration-types and --test-types (the dataset has no {key})")
    present = sorted(set(pool.structure_info[key].astype(str).tolist()))
    raise UserError(f"unseen: give --calibration-types (and optionally --test-types) from the {key} values {present}")


def _study_active_learning(args, ui: UI, outdir: Path | None) -> int:
    from core import studies

    if args.methods is not None and args.methods != ["flexible"]:
        ui.info("active-learning: the calibrated strategy uses --al-calibrator; --methods is ignored")
    workdir = outdir / "active-learning" if outdir is not None else None
    cal_options = method_options(args).get(args.al_calibrator, {})
    cal_options.pop("weights", None)
    table, _ = studies.run_active_learning_study(
        args.dataset, reference=args.reference_calc, n_initial=args.al_initial, n_rounds=args.al_rounds,
        picks_per_round=args.al_picks, md_steps=args.al_md_steps, test_size=args.al_test_size,
        strategies=args.al_strategies, confidence=args.confidence, seed=args.seed, workdir=workdir,
        train_epochs=args.al_train_epochs, calibrator=args.al_calibrator, calibrator_options=cal_options,
        progress=ui.step_progress("active learning"),
    )
    ui.close()
    if args.json:
        ui.json(studies.study_to_json(table, "active-learning"))
    else:
        cols = [c for c in ("strategy", "round", "n_labels", "force_mae", "coverage", "coverage_expected",
                            "mean_width", "spearman", "structure_spearman", "pick_force_mae")
                if c in table.columns or c == "coverage_expected"]
        ui.result(f"study active-learning on {table.attrs.get('dataset')}: confidence {args.confidence:g}")
        ui.result(format_table(table, cols))
    if outdir is not None:
        paths = studies.write_study(table, outdir, "active-learning")
        ui.info(f"wrote {paths['csv']} and {paths['json']} (models and picked frames in {workdir})")
    return EXIT_OK

