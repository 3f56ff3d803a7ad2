"""``flexcal featurize | calibrate | evaluate | run``: arrange inputs, call the engine, report.

Every command checks its output path(s) (:func:`core.io.check_output`: not an input, not a
directory, writable, not existing with ``--no-overwrite``) and its cheap arguments **before**
featurizing or fitting, and writes its files atomically. Sites come from
:mod:`core.sources`, scores from :mod:`core.evaluation`; nothing here re-implements them.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from core import sources
from core.cli.guards import check_layout, check_output, read_options, reader_note
from core.cli.ui import EXIT_OK, UI, UserError, coverage_warnings, domain_warnings, expected_text, fmt, \
    format_table, size_warning
from core.tables import MISSING, column_label

__all__ = ["cmd_featurize", "cmd_calibrate", "cmd_evaluate", "cmd_run", "default_methods", "load_data_sites",
           "load_site_file", "method_options", "check_outdir", "existing_file", "table_notes"]

_Q_THETA_METHODS = ("flexible", "flexible-ood")  # methods trained with epochs (--max-epochs)


# --------------------------------------------------------------------------- inputs
def default_methods(sites=None) -> list[str]:
    """The registry's default methods that ``sites`` support, the recommended ones first."""
    from core.calibration.registry import default_method_names, method_spec

    names = list(default_method_names(sites))
    return [n for n in names if method_spec(n).recommended] + [n for n in names if not method_spec(n).recommended]


def existing_file(path, what: str) -> Path:
    """``path`` as a Path if it is an existing file; FileNotFoundError/UserError naming ``what``."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what}: no such file: {path}")
    if p.is_dir():
        raise UserError(f"{what}: expected a file, got a directory: {path}")
    return p


def load_site_file(path, what: str, *, labelled: bool = True):
    """A SiteTable from ``path``; with ``labelled`` it must carry real (not all-zero) errors."""
    from core.sites import UNLABELLED_MESSAGE, SiteTable

    sites = SiteTable.load(existing_file(path, what))
    if labelled and not sites.labelled:
        raise UserError(f"{what} {path}: {UNLABELLED_MESSAGE}")
    if labelled and len(sites) and not (sites.errors > 0).any():
        raise UserError(f"{what} {path}: every one of its {len(sites)} force errors is 0: the reference forces "
                        "are missing (stored as the predictions) or equal the predictions; nothing to calibrate "
                        "or score. Featurize structures that carry real reference forces")
    return sites


def _data_inputs(data) -> list[Path]:
    """Files behind a DATA argument (the file, or the demo family's file) for output checks."""
    out = [Path(data)] if Path(data).is_file() else []
    try:
        from core import demo

        if str(data) in demo.FAMILIES:
            out.append(Path(demo.demo_dataset_path(str(data))))
    except (ImportError, FileNotFoundError):
        pass
    return out


def _model_inputs(args) -> list[Path]:
    names = [getattr(args, "model", None), *(getattr(args, "committee", None) or ())]
    return [Path(n) for n in names if n and Path(n).is_file()]


def _check_device(args) -> None:
    """An unusable ``--device`` fails before any data is read."""
    from core.potentials.base import resolve_device

    try:
        resolve_device(args.device)
    except ValueError as exc:
        raise UserError(f"--{exc}") from None


def load_data_sites(args, ui: UI, data, *, model=None, info_keys=(), subset: bool = True):
    """Featurize DATA (path or demo name) with ``--model`` (or ``model``) -> SiteTable (cached)."""
    settings: dict[str, Any] = dict(
        committee=tuple(args.committee or ()), batch_size=args.batch_size, cache_dir=args.cache_dir,
        device=args.device, dtype=args.dtype, **read_options(args),
    )
    if subset and getattr(args, "max_structures", None):
        settings.update(max_structures=args.max_structures, subset_seed=args.split_seed)
    if info_keys:
        settings["info_keys"] = tuple(dict.fromkeys((sources.SPLIT_KEY, *info_keys)))
    model = model if model is not None else args.model
    ui.info(f"featurizing {data} with {model or 'the embedded demo model'}")
    return sources.load_sites(data, model, progress=ui.progress("featurize"), messages=lambda m: reader_note(ui, m),
                              **settings)


def check_outdir(args, inputs, names) -> Path | None:
    """Check ``-o OUTDIR`` and the files ``names`` it will receive, before any work."""
    if not args.output:
        return None
    outdir = Path(args.output)
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"--output: {outdir} is a file; give a folder for the results")
    for name in names:
        check_output(outdir / name, inputs=inputs, overwrite=not args.no_overwrite, what="--output")
    return outdir


def precheck_split_values(args, data, key: str, wanted: list[str]) -> None:
    """Read DATA (cheap) and check that every value of ``--split-by KEY`` asked for is present."""
    from core.data import DEFAULT_CONFIG_TYPE

    dataset, _ = sources.resolve_data(data, **read_options(args))
    values = []
    for i, atoms in enumerate(dataset.structures):
        value = atoms.info.get(key, DEFAULT_CONFIG_TYPE if key == "config_type" else None)
        if value is None:
            raise UserError(f"--split-by: frame {int(dataset.indices[i])} of {data} has no atoms.info[{key!r}]; "
                            f"its keys: {sorted(atoms.info)}")
        values.append(str(value))
    present = sorted(set(values))
    unknown = [v for v in wanted if v not in present]
    if unknown:
        raise UserError(f"{key}: no structures with value(s) {unknown}; present: {present}")


def method_options(args) -> dict[str, dict[str, Any]]:
    """``make_calibrator`` options per method from ``--max-epochs`` and ``--weights``."""
    opts: dict[str, dict[str, Any]] = {}
    if getattr(args, "max_epochs", None):
        for name in _Q_THETA_METHODS:
            opts[name] = {"max_epochs": args.max_epochs}
    if getattr(args, "weights", None):
        opts.setdefault("flexible", {})["weights"] = args.weights
    return opts


def _save_atomic(obj, path: Path) -> Path:
    """``obj.save`` into a temporary file beside ``path``, then renamed into place."""
    from core.io import atomic_path

    try:
        with atomic_path(path) as tmp:
            obj.save(tmp)
    except OSError as exc:
        raise UserError(f"--output: could not write {path} ({exc.strerror or exc}); nothing was replaced") from None
    return path


# ------------------------------------------------------------------------- featurize
def cmd_featurize(args, ui: UI) -> int:
    if getattr(args, "workers", None) or getattr(args, "scheduler", None):
        return _featurize_store(args, ui)
    out = check_output(args.output, inputs=_data_inputs(args.data) + _model_inputs(args),
                       overwrite=not args.no_overwrite, what="--output")
    _check_device(args)
    sites = load_data_sites(args, ui, args.data, subset=False)
    _save_atomic(sites, out)
    ui.info(f"wrote {len(sites)} sites from {sites.n_structures} structures ({sites.n_descriptors} descriptors per "
            f"site; mean force error {sites.errors.mean():.4f} eV/Å) to {out}")
    ui.flush_warnings()
    return EXIT_OK


def _featurize_store(args, ui: UI) -> int:
    """``featurize --workers N | --scheduler ADDRESS``: a sharded site store in the -o folder (Dask)."""
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output: {out} is a file; with --workers/--scheduler give a folder for the site store")
    if args.no_overwrite and (out / "manifest.json").exists():
        raise UserError(f"--output: {out} already holds a site store and --no-overwrite was given")
    try:
        from core.distributed import featurize_distributed
        import distributed  # noqa: F401
    except ImportError:
        raise UserError("--workers/--scheduler need Dask: pip install 'flexcal[distributed]'") from None
    _check_device(args)
    dataset, family = sources.resolve_data(args.data, **read_options(args))
    for message in dataset.messages:
        reader_note(ui, message)
    spec = {"model": sources.resolve_model(args.model, family), "committee": list(args.committee or ()),
            "device": args.device, "dtype": args.dtype}
    ui.info(f"featurizing {args.data} on Dask ({f'{args.workers} local workers' if args.workers else args.scheduler})")
    try:
        store = featurize_distributed(dataset, spec, out, workers=args.workers, scheduler=args.scheduler,
                                      chunk_size=args.chunk_size, batch_size=args.batch_size,
                                      progress=ui.progress("featurize"))
    except ConnectionError as exc:
        raise UserError(f"--{exc}") from None
    ui.info(f"wrote {store.n_sites} sites from {store.n_structures} structures in {store.n_shards} shards "
            f"({len(store.run_info['reused'])} reused from an earlier run) to {out}")
    ui.flush_warnings()
    return EXIT_OK


# ------------------------------------------------------------------------- calibrate
def _calibrator_options(method: str, args) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.weights:
        if method != "flexible":
            raise UserError(f"--weights applies to --method flexible only, not {method!r}")
        options["weights"] = args.weights
    if args.max_epochs and method in _Q_THETA_METHODS:
        options["max_epochs"] = args.max_epochs
    return options


def _check_method_needs(method: str, sites) -> None:
    from core.calibration.registry import method_spec

    missing = method_spec(method).missing_for(sites)
    if missing == ["committee_std"]:
        raise UserError(f"--method {method} needs sites featurized with a committee (flexcal featurize --committee ...)")
    if missing:
        raise UserError(f"--method {method} needs per-site {', '.join(missing)}, which SITES lacks")


def cmd_calibrate(args, ui: UI) -> int:
    from core.calibration import make_calibrator

    out = Path(args.output)
    out = out.with_suffix(".npz") if out.suffix == "" else out  # as Calibrator.save would
    check_output(out, inputs=[args.sites, args.target, args.reference], overwrite=not args.no_overwrite,
                 what="--output")
    options = _calibrator_options(args.method, args)
    if options.get("weights") == "shift" and not args.target:
        raise UserError("--weights shift needs --target TARGET_SITES (unlabelled sites of the domain you will predict on)")
    sites = load_site_file(args.sites, "SITES")
    target = load_site_file(args.target, "--target", labelled=False) if args.target else None
    reference = load_site_file(args.reference, "--reference", labelled=False) if args.reference else None
    _check_method_needs(args.method, sites)
    ui.info(f"fitting {args.method} at confidence {args.confidence:g} on {len(sites)} sites "
            f"({sites.n_structures} structures)")
    cal = make_calibrator(args.method, confidence=args.confidence, seed=args.seed, **options)
    kwargs: dict[str, Any] = {"target": target, "reference": reference}
    callback = ui.epoch_callback(options.get("max_epochs", getattr(cal, "max_epochs", None)))
    if callback is not None and args.method in _Q_THETA_METHODS:
        kwargs["callback"] = callback
    cal.fit(sites, **kwargs)
    ui.close()
    _save_atomic(cal, out)
    ui.info(f"wrote {args.method} calibrator ({_describe_fitted(cal)}) to {out}")
    return EXIT_OK


def _describe_fitted(cal) -> str:
    parts = [f"confidence {cal.confidence:g}"]
    q = getattr(cal, "quantile_", None)
    if isinstance(q, dict):
        parts.append("quantile per species " + ", ".join(f"Z={k}: {fmt(float(v), 4)}" for k, v in q.items()))
    elif q is not None:
        parts.append(f"quantile {fmt(float(q), 4)}")
    c = getattr(cal, "correction_", None)
    if c is not None:
        parts.append(f"conformal correction {fmt(float(c), 4)}")
    hist = getattr(cal, "history_", None)
    if hist:
        best = min(hist, key=lambda h: h.get("val_loss", math.inf))
        parts.append(f"{len(hist)} epochs, best val_loss {fmt(float(best.get('val_loss', math.nan)), 4)} "
                     f"at epoch {best.get('epoch')}")
    return "; ".join(parts)


# -------------------------------------------------------------------------- evaluate
NO_CALIBRATION_NOTE = ("width_ratio, the expected coverage range and the out-of-domain flags need --calibration "
                       "CAL_SITES (the labelled sites the calibrator was fitted on); reported as unavailable")


def _report_without_calibration(cal, sites, args) -> dict:
    """The report of one fitted calibrator on ``sites`` when its calibration sites are unknown.

    Nothing is computed from the test sites in their place: width_ratio, the expected
    coverage range and the out-of-domain flags stay None.
    """
    import numpy as np

    from core.metrics import CALIBRATION_LEVELS, calibration_report

    widths = np.asarray(cal.predict(sites), dtype=np.float64)
    try:
        at_levels = np.asarray(cal.predict_levels(sites, CALIBRATION_LEVELS), dtype=np.float64)
    except NotImplementedError:
        at_levels = None
    return calibration_report(
        sites.errors, widths, confidence=float(cal.confidence), species=sites.species,
        structure_ids=sites.structure_ids, widths_at_levels=at_levels,
        levels=CALIBRATION_LEVELS if at_levels is not None else None, bootstrap=args.bootstrap, seed=args.seed,
    )


def cmd_evaluate(args, ui: UI) -> int:
    from core.calibration import load_calibrator
    from core.evaluation import score

    sites = load_site_file(args.sites, "SITES")
    cal = load_calibrator(existing_file(args.calibrator, "--calibrator"))
    check_layout(ui, cal, sites)
    label = str(getattr(cal, "name", type(cal).__name__))
    by = getattr(args, "by", None)
    if by == "config_type" and "config_type" not in sites.structure_info:
        raise UserError(f"--by config_type: {args.sites} records no config_type per structure; use --by species")
    notes, flags = [], None
    if args.calibration:
        calibration = load_site_file(args.calibration, "--calibration")
        if Path(args.calibration).resolve() == Path(args.sites).resolve():
            ui.warn(f"SITES and --calibration are the same file ({args.sites}): the coverage is in-sample")
        reference = load_site_file(args.reference, "--reference", labelled=False) if args.reference else None
        ev = score({label: cal}, calibration, {"test": sites}, seed=args.seed, reference=reference,
                   bootstrap=args.bootstrap)
        report, flags = dict(ev.report(label, "test")), ev.ood.get("test")
    else:
        report = _report_without_calibration(cal, sites, args)
        notes.append(NO_CALIBRATION_NOTE)
        report.setdefault("width_ratio_note", "needs --calibration")
    n_cal = calibration.n_structures if args.calibration else None
    for message in (size_warning("test", len(sites), sites.n_structures) + coverage_warnings(label, report, "", n_cal)
                    + domain_warnings("test", flags, sites.structure_ids, {label: report})):
        ui.warn(message)
    table = _breakdown(cal, sites, args, calibration if args.calibration else None) if by else None
    report = {"calibrator": label, **report}
    if args.json:
        extra = {} if table is None else {"breakdown": {"by": by, "rows": table.to_dict("records")}}
        ui.json({**report, **extra, "notes": notes, "warnings": ui.warnings})
    else:
        _print_report(ui, report)
        if table is not None:
            ui.result(f"\nper {by}:\n" + format_table(table, [("group", by)] + BREAKDOWN_TABLE))
        for note in notes:
            ui.result(f"note: {note}")
    ui.flush_warnings()
    return EXIT_OK


BREAKDOWN_TABLE = [("n_sites", "Sites"), ("n_structures", "Structures"), "coverage", "coverage_ci_lo",
                   "coverage_ci_hi", "coverage_binom_lo", "coverage_binom_hi", "coverage_expected", "mean_width", "mae",
                   "spearman", "spearman_ci_lo", "spearman_ci_hi"]


def _breakdown(cal, sites, args, calibration):
    """``--by``: :func:`core.metrics.breakdown` of the calibrator's widths on SITES (spread needs --calibration)."""
    from core.evaluation import conformal_calibration_size
    from core.metrics import breakdown

    n_cal = None if calibration is None else conformal_calibration_size(cal, calibration)
    return breakdown(sites, cal.predict(sites), by=args.by, confidence=float(cal.confidence),
                     n_calibration_structures=n_cal, bootstrap=args.bootstrap, seed=args.seed)


def _print_report(ui: UI, report: dict) -> None:
    """One line per report key: its readable label with units (:mod:`core.tables`), then the value."""
    labels = {key: column_label(key) for key in report}
    width = max(map(len, labels.values())) + 2
    for key, value in report.items():
        if key.endswith("_note") and value is None:
            continue
        if isinstance(value, dict):
            text = ", ".join(f"{k}: {fmt(v)}" for k, v in value.items())
        elif isinstance(value, list):
            text = "[" + ", ".join(fmt(v) for v in value) + "]"
        else:
            text = value if isinstance(value, str) else fmt(value)
        if key == "coverage":
            spread = expected_text(report)
            text += f"  (expected {spread})" if spread != MISSING else "  (expected range unavailable)"
        ui.result(f"{labels[key]:<{width}}{text}")


# ------------------------------------------------------------------------------ run
def _safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", label).strip("_")


def _check_run_args(args) -> None:
    if args.split_by and not (args.calibration_types and args.test_types):
        raise UserError("--split-by needs both --calibration-types and --test-types (comma-separated values)")
    if (args.calibration_types or args.test_types) and not args.split_by:
        raise UserError("--calibration-types/--test-types need --split-by KEY (e.g. --split-by config_type)")
    if args.split_by:
        overlap = set(args.calibration_types) & set(args.test_types)
        if overlap:
            raise UserError(f"--calibration-types and --test-types overlap: {sorted(overlap)}")


def cmd_run(args, ui: UI) -> int:
    from core.evaluation import evaluate

    _check_run_args(args)
    names = ["sites.npz", "report.json", "report.csv"] + [f"calibrator_{_safe_name(m)}.npz" for m in args.methods or ()]
    outdir = check_outdir(args, _data_inputs(args.data) + _model_inputs(args), names)
    _check_device(args)
    if args.split_by:
        precheck_split_values(args, args.data, args.split_by, args.calibration_types + args.test_types)
    sites = load_data_sites(args, ui, args.data, info_keys=(args.split_by,) if args.split_by else ())
    part = sources.partition(sites, "config_type" if args.split_by else "random", test_fraction=args.test_fraction,
                             seed=args.split_seed, calibration_types=args.calibration_types,
                             test_types=args.test_types, column=args.split_by or "config_type",
                             exclude_trained=not args.model)  # a file's train/valid frames are the demo model's
    if part.note:
        ui.info(part.note)
    reference = part.reference
    if args.reference_data:
        model = sources.resolve_model(args.model, sites.meta.get("demo"))
        reference = load_data_sites(args, ui, existing_file(args.reference_data, "--reference-data"), model=model,
                                    subset=False)
    cal, test = part.calibration, part.test
    ui.info(f"calibration: {len(cal)} sites in {cal.n_structures} structures; test: {len(test)} sites in "
            f"{test.n_structures} structures")
    ev = evaluate(cal, {"test": test}, args.methods or default_methods(cal), confidence=args.confidence,
                  seed=args.seed, reference=reference, method_options=method_options(args),
                  bootstrap=args.bootstrap, log=ui.info, epoch_callback=ui.epoch_callback(args.max_epochs))
    ui.close()
    label = sites.meta.get("demo") or Path(str(args.data)).stem
    table = ev.table(study="run", dataset=label)
    result = _run_result(args, ui, ev, sites, part, reference, label)
    if args.json:
        ui.json(result)
    else:
        ui.result(f"{label}: {sites.n_structures} structures, {len(sites)} sites; calibrated on "
                  f"{cal.n_structures} structures, tested on {test.n_structures}; confidence {args.confidence:g}")
        ui.result(format_table(table))
        table_notes(ui, table)
    ui.flush_warnings()
    if outdir is not None:
        _write_run_outputs(outdir, sites, ev, table, result)
        ui.info(f"wrote sites, calibrators and report to {outdir}")
    return EXIT_OK


def _run_result(args, ui: UI, ev, sites, part, reference, label: str) -> dict:
    """The JSON of ``flexcal run`` (warnings collected on ``ui`` on the way)."""
    from core.metrics import REPORT_KEYS

    cal, test = part.calibration, part.test
    for message in size_warning("test", len(test), test.n_structures):
        ui.warn(message)
    methods: dict[str, dict] = {}
    for v in ev.variants:
        rep = ev.reports.get((v.label, "test"))
        entry = dict(rep) if rep is not None else {key: None for key in REPORT_KEYS}  # the fit failed
        if ev.notes.get(v.label):
            entry["note"] = ev.notes[v.label]
        entry["fit_seconds"] = float(ev.fit_seconds.get(v.label, math.nan))
        methods[v.label] = entry
        for message in coverage_warnings(v.label, entry, "", cal.n_structures):
            ui.warn(message)
    reports = {k: r for k, r in methods.items() if r.get("coverage") is not None}
    for message in domain_warnings("test", ev.ood.get("test"), test.structure_ids, reports):
        ui.warn(message)
    counts = (lambda s: None if s is None else {"n_structures": s.n_structures, "n_sites": len(s)})
    return {
        "dataset": label, "n_structures": sites.n_structures, "n_sites": len(sites), "confidence": args.confidence,
        "split": {"mode": part.mode, "note": part.note, "calibration": counts(cal), "test": counts(test),
                  "reference": counts(reference)},
        "methods": methods,
        "warnings": list(ui.warnings),
    }


def _write_run_outputs(outdir: Path, sites, ev, table, result: dict) -> None:
    from core.evaluation import jsonable
    from core.io import atomic_write_text

    _save_atomic(sites, outdir / "sites.npz")
    for name, cal_obj in ev.calibrators.items():
        if hasattr(cal_obj, "save"):
            _save_atomic(cal_obj, outdir / f"calibrator_{_safe_name(name)}.npz")
    try:
        atomic_write_text(outdir / "report.csv", table.to_csv(index=False))
        atomic_write_text(outdir / "report.json", json.dumps(jsonable(result), indent=2, allow_nan=False) + "\n")
    except OSError as exc:
        raise UserError(f"--output: could not write the report into {outdir} ({exc.strerror or exc})") from None


def table_notes(ui: UI, table) -> None:
    """One ``note:`` line per row with a note (a failed fit, infinite widths, ...)."""
    if "note" not in table.columns:
        return
    several = "split" in table.columns and table["split"].nunique() > 1
    for _, row in table[table["note"].astype(str) != ""].iterrows():
        where = f" on {row['split']}" if several else ""
        ui.result(f"note: {row['label']}{where}: {row['note']}")
