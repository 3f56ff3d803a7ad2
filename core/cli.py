"""The ``flexcal`` command line.

Subcommands (``flexcal <command> --help`` teaches each):

* ``featurize`` — run a MACE model over a labelled extxyz file -> per-site table (.npz)
* ``calibrate`` — fit a calibrator on a site table -> calibrator (.npz)
* ``evaluate``  — score a calibrator on a site table (coverage, width, correlation, ...)
* ``run``       — all of the above, end to end, for several methods at once
* ``study``     — the studies of METHOD §5 (in-domain, unseen, transfer, active-learning)

Exit codes: 0 success; 2 bad input (one line on stderr, no traceback); 130
interrupted. Progress goes to stderr so stdout stays clean for ``--json``. Set
``FLEXCAL_DEBUG=1`` to see the traceback of a user error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_METHOD_HELP = (
    "flexible  = learned quantile q_θ(X) (the paper's method, conformally corrected); "
    "split     = global split conformal (one width for every site); "
    "mondrian  = split conformal, one width per species; "
    "knn       = normalised CP, score = distance to k nearest training descriptors; "
    "gmm       = normalised CP, score = Gaussian-mixture NLL of the descriptors; "
    "force     = normalised CP, score = predicted force magnitude; "
    "committee = normalised CP, score = force spread of a model committee (needs --committee at featurize)"
)
_UNITS = "Units: forces, errors and widths in eV/Å; energies in eV."


class UserError(Exception):
    """Bad input detected by the CLI itself (reported in one line, exit code 2)."""


# ------------------------------------------------------------------ progress
class _UI:
    """Progress and notes on stderr (silenced by --quiet); results go to stdout.

    While a command runs, ``sys.stdout`` points at stderr (libraries such as mace
    print notices at import); only :meth:`result` writes to the real stdout, so
    ``--json`` output stays one valid JSON document.
    """

    def __init__(self, quiet: bool = False, out=None):
        self.quiet = quiet
        self.out = out if out is not None else sys.stdout
        self._bar = None

    def result(self, text: str = "") -> None:
        self._close_bar()
        print(text, file=self.out, flush=True)

    def info(self, message: str) -> None:
        self._close_bar()
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _new_bar(self, desc: str, total=None, unit="it"):
        from tqdm.auto import tqdm

        self._close_bar()
        self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
        return self._bar

    def featurize_progress(self):
        """A ``progress(done, total)`` callback for :func:`core.featurize.featurize`, or None."""
        if self.quiet:
            return None
        state = {"bar": None}

        def progress(done: int, total: int) -> None:
            bar = state["bar"]
            if bar is None or bar is not self._bar:
                bar = state["bar"] = self._new_bar("featurize", total=total, unit="structure")
            bar.total = total
            bar.update(done - bar.n)
            if done >= total:
                self._close_bar()

        return progress

    def epoch_callback(self, max_epochs: int | None = None):
        """A q_θ training callback ``(epoch, train_loss, val_loss)`` drawing a bar, or None."""
        if self.quiet:
            return None
        state = {"bar": None}

        def callback(epoch: int, train_loss: float, val_loss: float):
            bar = state["bar"]
            if bar is None or bar is not self._bar or epoch < bar.n:
                bar = state["bar"] = self._new_bar("train q_θ", total=max_epochs, unit="epoch")
            bar.set_postfix(train_loss=f"{train_loss:.4g}", val_loss=f"{val_loss:.4g}", refresh=False)
            bar.update(max(int(epoch) - bar.n, 0) or 1)
            return None

        return callback

    def close(self) -> None:
        self._close_bar()


# ------------------------------------------------------------------- helpers
def _confidence(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1) such as 0.9, got {text!r}") from None
    if not (0.0 < value < 1.0) or math.isnan(value):
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1) such as 0.9 (= 90%), got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1) such as 0.5, got {text!r}") from None
    if not (0.0 < value < 1.0):
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1) such as 0.5, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _methods(text: str) -> list[str]:
    from core.calibration import METHODS

    methods = _csv_list(text)
    if not methods:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of methods from: {', '.join(METHODS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown method {unknown[0]!r}; valid methods: {', '.join(METHODS)}")
    return methods


def _method(text: str) -> str:
    if "," in text:
        raise argparse.ArgumentTypeError(f"expected one method, got {text!r} (use `flexcal run --methods` for several)")
    return _methods(text)[0]


def _existing_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what}: no such file: {path}")
    if p.is_dir():
        raise UserError(f"{what}: expected a file, got a directory: {path}")
    return p


def _demo_module():
    try:
        from core import demo
    except ImportError:  # demo data not shipped with this copy
        return None
    return demo


def _demo_datasets() -> dict[str, Path]:
    """Demo family -> extxyz path, for the families whose file is present."""
    demo = _demo_module()
    if demo is None:
        return {}
    out = {}
    for family in demo.FAMILIES:
        try:
            out[family] = Path(demo.demo_dataset_path(family))
        except FileNotFoundError:
            pass
    return out


def _resolve_data(data: str) -> tuple[Path, str | None]:
    """DATA as given -> (path, demo family or None). A demo name or a demo file path is a demo."""
    demo = _demo_module()
    p = Path(data)
    if p.exists():
        if p.is_dir():
            raise UserError(f"DATA: expected an extxyz file or a demo dataset name, got a directory: {data}")
        for name, path in _demo_datasets().items():
            if p.resolve() == path.resolve():
                return p, name
        return p, None
    if demo is not None and data in demo.FAMILIES:
        return Path(demo.demo_dataset_path(data)), data  # FileNotFoundError says how to regenerate
    names = f" (nor a demo dataset: {', '.join(demo.FAMILIES)})" if demo is not None else ""
    raise FileNotFoundError(f"DATA: no such file: {data}{names}")


def _demo_model(demo: str | None, model: str | None) -> str:
    if model:
        return model
    if demo is None:
        raise UserError("--model is required for a dataset that is not one of the embedded demos "
                        "(give a .model file or a foundation-model name such as mace-mp-0b3-medium)")
    from core.demo import demo_model_path

    return str(demo_model_path(demo))


def _demo_split_ids(sites) -> tuple[Any, Any]:
    """(training ids, excluded ids) of a demo dataset, from its per-frame ``split`` column.

    The demo model was fitted on split "train" (its knn/gmm reference) with early stopping
    on "valid"; neither may be calibrated on.
    """
    import numpy as np

    if "split" not in sites.structure_info:
        empty = np.array([], dtype=np.int64)
        return empty, empty
    split = sites.structure_info["split"].astype(str)
    ids = sites.structure_info["structure_id"]
    return ids[split == "train"], ids[np.isin(split, ["train", "valid"])]


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}"
    return str(value)


_TABLE_COLUMNS = [
    ("label", "method"),
    ("coverage", "coverage"),
    ("coverage_gap", "gap"),
    ("mean_width", "width eV/Å"),
    ("width_ratio", "ratio"),
    ("spearman", "spearman"),
    ("auroc", "auroc"),
    ("miscalibration_area", "miscal"),
    ("worst_species_coverage", "worst sp."),
]


def format_table(table, columns=None) -> str:
    """Aligned plain-text table of study rows (numbers to 3 decimals, undefined as n/a)."""
    columns = list(columns or _TABLE_COLUMNS)
    if "split" in table.columns and table["split"].nunique() > 1:
        columns.insert(1, ("split", "split"))
    columns = [(k, h) for k, h in columns if k in table.columns]
    cells = [[h for _, h in columns]]
    for _, row in table.iterrows():
        cells.append([_fmt(row[k]) if not isinstance(row[k], str) else row[k] for k, _ in columns])
    widths = [max(len(r[j]) for r in cells) for j in range(len(columns))]
    lines = []
    for i, r in enumerate(cells):
        parts = [c.ljust(w) if j == 0 or not _numeric(c) else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(parts).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return text in ("n/a", "inf")


def _print_json(ui: "_UI", obj) -> None:
    from core.studies import _jsonable

    ui.result(json.dumps(_jsonable(obj), indent=2, allow_nan=False))


# --------------------------------------------------------------- subcommands
def _cmd_featurize(args, ui: _UI) -> int:
    from core.studies import featurize_file

    path, demo = _resolve_data(args.data)
    model = _demo_model(demo, args.model)
    ui.info(f"featurizing {path} with {model}")
    sites = featurize_file(
        path, model, committee=args.committee or (), batch_size=args.batch_size, cache_dir=args.cache_dir,
        energy_key=args.energy_key, forces_key=args.forces_key, device=args.device, dtype=args.dtype,
        progress=ui.featurize_progress(), messages=ui.info,
    )
    out = sites.save(args.output)
    ui.info(
        f"wrote {len(sites)} sites from {sites.n_structures} structures "
        f"({sites.n_descriptors} descriptors per site; mean force error {sites.errors.mean():.4f} eV/Å) to {out}"
    )
    return EXIT_OK


def _load_sites(path: str, what: str):
    from core.sites import SiteTable

    return SiteTable.load(_existing_file(path, what))


def _calibrator_options(method: str, args) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if getattr(args, "weights", None):
        if method != "flexible":
            raise UserError(f"--weights applies to --method flexible only, not {method!r}")
        options["weights"] = args.weights
    if getattr(args, "max_epochs", None):
        if method == "flexible":
            options["max_epochs"] = args.max_epochs
    return options


def _cmd_calibrate(args, ui: _UI) -> int:
    from core.calibration import make_calibrator

    sites = _load_sites(args.sites, "SITES")
    target = _load_sites(args.target, "--target") if args.target else None
    reference = _load_sites(args.reference, "--reference") if args.reference else None
    options = _calibrator_options(args.method, args)
    if options.get("weights") == "shift" and target is None:
        raise UserError("--weights shift needs --target TARGET_SITES (unlabelled sites of the domain you will predict on)")
    if args.method == "committee" and sites.committee_std is None:
        raise UserError("--method committee needs sites featurized with a committee (flexcal featurize --committee ...)")
    ui.info(f"fitting {args.method} at confidence {args.confidence:g} on {len(sites)} sites "
            f"({sites.n_structures} structures)")
    cal = make_calibrator(args.method, confidence=args.confidence, seed=args.seed, **options)
    kwargs: dict[str, Any] = {"target": target, "reference": reference}
    if args.method == "flexible":
        cb = ui.epoch_callback(options.get("max_epochs", getattr(cal, "max_epochs", None)))
        if cb is not None:
            kwargs["callback"] = cb
    cal.fit(sites, **kwargs)
    ui.close()
    out = cal.save(args.output)
    ui.info(f"wrote {args.method} calibrator ({_describe_fitted(cal)}) to {out}")
    return EXIT_OK


def _describe_fitted(cal) -> str:
    parts = [f"confidence {cal.confidence:g}"]
    q = getattr(cal, "quantile_", None)
    if isinstance(q, dict):
        parts.append("quantile per species " + ", ".join(f"Z={k}: {_fmt(float(v), 4)}" for k, v in q.items()))
    elif q is not None:
        parts.append(f"quantile {_fmt(float(q), 4)}")
    c = getattr(cal, "correction_", None)
    if c is not None:
        parts.append(f"conformal correction {_fmt(float(c), 4)}")
    hist = getattr(cal, "history_", None)
    if hist:
        best = min(hist, key=lambda h: h.get("val_loss", math.inf))
        parts.append(f"{len(hist)} epochs, best val_loss {_fmt(float(best.get('val_loss', math.nan)), 4)} "
                     f"at epoch {best.get('epoch')}")
    return "; ".join(parts)


def _cmd_evaluate(args, ui: _UI) -> int:
    import numpy as np

    from core.calibration import load_calibrator, make_calibrator
    from core.metrics import CALIBRATION_LEVELS, calibration_report

    sites = _load_sites(args.sites, "SITES")
    cal = load_calibrator(_existing_file(args.calibrator, "--calibrator"))
    confidence = float(cal.confidence)
    widths = np.asarray(cal.predict(sites), dtype=np.float64)
    try:
        levels = np.asarray(CALIBRATION_LEVELS, dtype=np.float64)
        at_levels = np.asarray(cal.predict_levels(sites, levels), dtype=np.float64)
    except NotImplementedError:
        levels, at_levels = None, None
    # width_ratio baseline: one global split-CP width fitted on these same sites
    ref = make_calibrator("split", confidence=confidence).fit(sites).predict(sites)
    report = calibration_report(
        sites.errors, widths, confidence=confidence, species=sites.species, structure_ids=sites.structure_ids,
        widths_at_levels=at_levels, levels=levels, reference_widths=ref, bootstrap=args.bootstrap, seed=args.seed,
    )
    report = {"calibrator": getattr(cal, "name", type(cal).__name__), **report}
    if args.json:
        _print_json(ui, report)
    else:
        for key, value in report.items():
            if key.endswith("_note") and value is None:
                continue
            if isinstance(value, dict):
                value = ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
            elif isinstance(value, list):
                value = "[" + ", ".join(_fmt(v) for v in value) + "]"
            ui.result(f"{key:<24} {_fmt(value) if not isinstance(value, str) else value}")
    return EXIT_OK


def _featurize_for(args, ui: _UI, data: str):
    """Featurize DATA for run/study -> (all sites, calibratable pool, reference or None, label)."""
    import numpy as np

    from core.studies import featurize_file

    path, demo = _resolve_data(data)
    use_demo_model = demo is not None and not args.model
    model = _demo_model(demo, args.model)
    ui.info(f"featurizing {path} with {'the embedded demo model' if use_demo_model else model}")
    sites = featurize_file(
        path, model, committee=args.committee or (), batch_size=args.batch_size, cache_dir=args.cache_dir,
        energy_key=args.energy_key, forces_key=args.forces_key, device=args.device, dtype=args.dtype,
        progress=ui.featurize_progress(), messages=ui.info,
        max_structures=args.max_structures, subset_seed=args.split_seed,
    )
    reference = None
    pool = sites
    if use_demo_model:
        train_ids, excluded = _demo_split_ids(sites)
        if len(excluded):
            keep = np.setdiff1d(sites.unique_structures, excluded)
            if keep.size < 2:
                raise UserError(f"{demo}: fewer than 2 structures remain once the demo model's training frames are excluded")
            pool = sites.select_structures(keep)
            if len(train_ids):
                reference = sites.select_structures(train_ids)
            ui.info(f"excluded the demo model's {len(excluded)} training/validation frames from calibration; "
                    f"its {len(train_ids)} training frames are the knn/gmm reference")
    if args.reference_data:
        ref_path = _existing_file(args.reference_data, "--reference-data")
        ui.info(f"featurizing the reference (training) set {ref_path}")
        reference = featurize_file(
            ref_path, model, committee=args.committee or (), batch_size=args.batch_size, cache_dir=args.cache_dir,
            energy_key=args.energy_key, forces_key=args.forces_key, device=args.device, dtype=args.dtype,
            progress=ui.featurize_progress(), messages=ui.info,
        )
    return sites, pool, reference, (demo or path.stem)


def _method_options(args) -> dict[str, dict[str, Any]]:
    opts: dict[str, dict[str, Any]] = {}
    if getattr(args, "max_epochs", None):
        opts["flexible"] = {"max_epochs": args.max_epochs}
    if getattr(args, "weights", None):
        opts.setdefault("flexible", {})["weights"] = args.weights
    return opts


def _cmd_run(args, ui: _UI) -> int:
    from core.studies import _jsonable, evaluate_methods, select_by_column

    if getattr(args, "weights", None) == "shift":
        raise UserError("--weights shift needs an unlabelled target domain; use `flexcal calibrate --target` or `flexcal study transfer`")
    if args.split_by and not (args.calibration_types and args.test_types):
        raise UserError("--split-by needs both --calibration-types and --test-types (comma-separated values)")
    if (args.calibration_types or args.test_types) and not args.split_by:
        raise UserError("--calibration-types/--test-types need --split-by KEY (e.g. --split-by config_type)")
    sites, pool, reference, label = _featurize_for(args, ui, args.data)
    if args.split_by:
        overlap = set(args.calibration_types) & set(args.test_types)
        if overlap:
            raise UserError(f"--calibration-types and --test-types overlap: {sorted(overlap)}")
        cal = select_by_column(pool, args.split_by, args.calibration_types)
        test = select_by_column(pool, args.split_by, args.test_types)
    else:
        cal, test = pool.split(args.test_fraction, args.split_seed)
    ui.info(f"calibration: {len(cal)} sites in {cal.n_structures} structures; test: {len(test)} sites in "
            f"{test.n_structures} structures")
    methods = args.methods
    if methods is None:
        from core.studies import default_methods

        methods = list(default_methods(cal))
    reports: dict = {}
    calibrators: dict = {}
    table = evaluate_methods(
        cal, {"test": test}, methods, args.confidence, args.seed, reference=reference,
        method_options=_method_options(args), study="run", dataset=label, bootstrap=args.bootstrap,
        progress=ui.info, epoch_callback=ui.epoch_callback(args.max_epochs), keep_calibrators=calibrators,
        keep_reports=reports,
    )
    ui.close()
    result = {
        "dataset": label,
        "n_structures": sites.n_structures,
        "n_sites": len(sites),
        "confidence": args.confidence,
        "split": {
            "calibration": {"n_structures": cal.n_structures, "n_sites": len(cal)},
            "test": {"n_structures": test.n_structures, "n_sites": len(test)},
            "reference": None if reference is None else {"n_structures": reference.n_structures, "n_sites": len(reference)},
        },
        "methods": {},
    }
    for _, row in table.iterrows():
        rep = reports.get((row["label"], "test"))
        if rep is None:  # the fit failed (e.g. too few sites for this method): keys present, values null
            from core.metrics import REPORT_KEYS

            rep = {key: None for key in REPORT_KEYS}
        entry = dict(rep)
        if row["note"]:
            entry["note"] = row["note"]
        entry["fit_seconds"] = float(row["fit_seconds"])
        result["methods"][row["label"]] = entry
    if args.output:
        outdir = Path(args.output)
        outdir.mkdir(parents=True, exist_ok=True)
        sites.save(outdir / "sites.npz")
        for name, cal_obj in calibrators.items():
            if hasattr(cal_obj, "save"):
                cal_obj.save(outdir / f"calibrator_{re.sub(r'[^A-Za-z0-9.-]+', '_', name).strip('_')}.npz")
        table.to_csv(outdir / "report.csv", index=False)
        (outdir / "report.json").write_text(json.dumps(_jsonable(result), indent=2, allow_nan=False) + "\n")
        ui.info(f"wrote sites, calibrators and report to {outdir}")
    if args.json:
        _print_json(ui, result)
    else:
        ui.result(f"{label}: {sites.n_structures} structures, {len(sites)} sites; calibrated on "
              f"{cal.n_structures} structures, tested on {test.n_structures}; confidence {args.confidence:g}")
        ui.result(format_table(table))
        _result_notes(ui, table)
    return EXIT_OK


def _result_notes(ui: _UI, table) -> None:
    if "note" not in table.columns:
        return
    for _, row in table[table["note"].astype(str) != ""].iterrows():
        where = f" on {row['split']}" if "split" in table.columns and table["split"].nunique() > 1 else ""
        ui.result(f"note: {row['label']}{where}: {row['note']}")


def _cmd_study(args, ui: _UI) -> int:
    from core import studies
    from core.studies import select_by_column

    name = args.name
    if args.dataset is None:
        args.dataset = _default_study_dataset(name)
        ui.info(f"study {name}: using the embedded demo dataset {args.dataset!r} (choose with --dataset)")
    if name == "active-learning":
        return _study_active_learning(args, ui)
    epoch_cb = ui.epoch_callback(args.max_epochs)
    common = dict(
        confidence=args.confidence, seed=args.seed, method_options=_method_options(args),
        bootstrap=args.bootstrap, progress=ui.info, epoch_callback=epoch_cb,
    )
    if name == "in-domain":
        _, pool, reference, label = _featurize_for(args, ui, args.dataset)
        train_types = _demo_train_types(_resolve_data(args.dataset)[1]) if not args.model else None
        if train_types:  # one distribution: the demo model's own config types, unseen ones left out
            pool = select_by_column(pool, "config_type", train_types)
            ui.info(f"in-domain: config types {', '.join(train_types)} ({pool.n_structures} structures)")
        table = studies.run_in_domain(pool, args.methods, test_fraction=args.test_fraction, reference=reference,
                                      split_seed=args.split_seed, dataset=label, **common)
    elif name == "unseen":
        _, pool, reference, label = _featurize_for(args, ui, args.dataset)
        cal, tests = _unseen_splits(args, ui, pool)
        table = studies.run_unseen(cal, tests, args.methods, reference=reference, dataset=label,
                                   in_domain_fraction=args.in_domain_fraction, **common)
    elif name == "transfer":
        _, pool, reference, label = _featurize_for(args, ui, args.dataset)
        path, _ = _resolve_data(args.dataset)
        sites_b = studies.relabel(pool, studies.forces_from_file(pool, path, args.b_forces_key), label=args.b_forces_key)
        ui.info(f"level A = the dataset's reference labels; level B = {args.b_forces_key}")
        table = studies.run_transfer(pool, sites_b, args.methods, test_fraction=args.test_fraction,
                                     reference=reference, budgets=args.budgets, dataset=label, **common)
    else:  # argparse restricts the choices; keep the guard for direct callers
        raise UserError(f"unknown study {name!r}; valid studies: {', '.join(studies.STUDIES)}")
    ui.close()
    if args.output:
        paths = studies.write_study(table, args.output, name)
        ui.info(f"wrote {paths['csv']} and {paths['json']}")
    if args.json:
        _print_json(ui, studies.study_to_json(table, name))
    else:
        ui.result(f"study {name} on {table.attrs.get('dataset') or args.dataset}: confidence {args.confidence:g}")
        ui.result(format_table(table))
        _result_notes(ui, table)
    return EXIT_OK


def _default_study_dataset(name: str) -> str:
    """The demo family a study uses when no --dataset is given."""
    demo = _demo_module()
    present = _demo_datasets()
    if demo is None or not present:
        raise UserError(f"study {name}: give --dataset (no embedded demo datasets are installed)")
    if name == "transfer":  # needs a second level of theory (REF2_*)
        candidates = [f for f, info in demo.FAMILIES.items() if len(info.get("label_keys", ())) > 1]
    elif name == "active-learning":  # the smallest system: MD, labelling and refits take minutes
        candidates = ["molecule", *demo.FAMILIES]
    else:
        candidates = [demo.DEFAULT_FAMILY, *demo.FAMILIES]
    for family in candidates:
        if family not in present:
            continue
        if name != "active-learning":  # the other studies featurize with the family's demo model
            try:
                demo.demo_model_path(family)
            except FileNotFoundError:
                continue
        return family
    raise UserError(f"study {name}: give --dataset (the demo datasets it needs are not installed)")


def _demo_train_types(demo_name: str | None) -> list[str] | None:
    if demo_name is None:
        return None
    from core.demo import demo_info

    return list(demo_info(demo_name)["train_config_types"])


def _unseen_splits(args, ui: _UI, pool):
    """(calibration sites, {name: test sites}) for the unseen study."""
    from core.studies import featurize_file, select_by_column

    tests = {}
    key = args.split_by or "config_type"
    if args.test_data:
        for extra in args.test_data:
            p = _existing_file(extra, "--test-data")
            model = _demo_model(_resolve_data(args.dataset)[1], args.model)
            ui.info(f"featurizing test set {p}")
            tests[p.stem] = featurize_file(
                p, model, committee=args.committee or (), batch_size=args.batch_size, cache_dir=args.cache_dir,
                energy_key=args.energy_key, forces_key=args.forces_key, device=args.device, dtype=args.dtype,
                progress=ui.featurize_progress(), messages=ui.info,
            )
    cal_types, test_types = args.calibration_types, args.test_types
    if not cal_types:
        if tests:
            return pool, tests
        cal_types, default_tests = _default_unseen_types(args.dataset, pool, key)
        test_types = test_types or default_tests
    cal = select_by_column(pool, key, cal_types)
    if not test_types:
        present = sorted(set(pool.structure_info[key].astype(str).tolist()))
        test_types = [t for t in present if t not in cal_types]
    for t in test_types:
        tests[t] = select_by_column(pool, key, [t])
    if not tests:
        raise UserError("unseen: no test structures; give --test-types or --test-data")
    return cal, tests


def _default_unseen_types(dataset: str, pool, key: str) -> tuple[list[str], list[str]]:
    """Demo family: calibrate on the demo model's training config types, test on each other type."""
    train_types = _demo_train_types(_resolve_data(dataset)[1]) if key == "config_type" else None
    if train_types:
        present = sorted(set(pool.structure_info[key].astype(str).tolist()))
        return [t for t in train_types if t in present], [t for t in present if t not in train_types]
    if key not in pool.structure_info:
        raise UserError(f"unseen: give --calibration-types and --test-types (the dataset has no {key})")
    present = sorted(set(pool.structure_info[key].astype(str).tolist()))
    raise UserError(f"unseen: give --calibration-types (and optionally --test-types) from the {key} values {present}")


def _study_active_learning(args, ui: _UI) -> int:
    from core.studies import run_active_learning_study, study_to_json, write_study

    if args.methods is not None and args.methods != ["flexible"]:
        ui.info("active-learning: the calibrated strategy uses --al-calibrator; --methods is ignored")

    def progress(done: int, total: int, message: str) -> None:
        ui.info(f"active learning [{done}/{total}] {message}")

    workdir = Path(args.output) / "active-learning" if args.output else None
    cal_options = {"max_epochs": args.max_epochs} if args.max_epochs and args.al_calibrator == "flexible" else {}
    table, result = run_active_learning_study(
        args.dataset, reference=args.reference_calc, n_initial=args.al_initial, n_rounds=args.al_rounds,
        picks_per_round=args.al_picks, md_steps=args.al_md_steps, test_size=args.al_test_size,
        strategies=args.al_strategies, confidence=args.confidence, seed=args.seed, workdir=workdir,
        train_epochs=args.al_train_epochs, calibrator=args.al_calibrator, calibrator_options=cal_options,
        progress=progress,
    )
    ui.close()
    if args.output:
        paths = write_study(table, args.output, "active-learning")
        ui.info(f"wrote {paths['csv']} and {paths['json']} (models and picked frames in {workdir})")
    if args.json:
        _print_json(ui, study_to_json(table, "active-learning"))
    else:
        cols = [c for c in ("strategy", "round", "n_labels", "force_mae", "coverage", "mean_width", "spearman",
                            "structure_spearman", "pick_force_mae") if c in table.columns]
        heads = {"force_mae": "force MAE eV/Å", "mean_width": "width eV/Å", "pick_force_mae": "pick MAE eV/Å"}
        ui.result(f"study active-learning on {table.attrs.get('dataset')}: confidence {args.confidence:g}")
        ui.result(format_table(table, [(c, heads.get(c, c)) for c in cols]))
    return EXIT_OK


# -------------------------------------------------------------------- parser
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-made layout of descriptions; shows defaults only where there is one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "%(default)" not in text
            and action.default not in (None, False, argparse.SUPPRESS)
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes on stderr")


def _add_model_args(p: argparse.ArgumentParser, required: bool = False, subset: bool = True) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument(
        "--model", metavar="NAME_OR_PATH", required=required,
        help="a local MACE .model file or a foundation-model name (mace-mp-0b3-medium, mace-off23-small, ...); "
             "omit for an embedded demo dataset to use the embedded demo model",
    )
    g.add_argument("--committee", nargs="+", metavar="MODEL", default=None,
                   help="further models; their per-atom force spread (eV/Å) feeds the 'committee' method")
    g.add_argument("--batch-size", type=_positive_int, default=16, help="structures per forward pass")
    g.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="cache featurized sites here (keyed by data, model and settings); none by default")
    g.add_argument("--energy-key", metavar="KEY", default=None,
                   help="reference energy key in atoms.info (eV); default: auto-detect REF_energy, energy, ...")
    g.add_argument("--forces-key", metavar="KEY", default=None,
                   help="reference forces key in atoms.arrays (eV/Å); default: auto-detect REF_forces, forces, ...")
    g.add_argument("--device", default="auto", help="torch device: auto (CUDA when present), cpu or cuda")
    g.add_argument("--dtype", default="float64", choices=("float32", "float64"), help="model precision")
    if subset:
        g.add_argument("--reference-data", metavar="TRAIN.xyz", default=None,
                       help="the model's training structures; their descriptors are the knn/gmm reference "
                            "(default: the calibration sites; the demo model's own training frames for a demo)")
        g.add_argument("--max-structures", type=_positive_int, default=None, metavar="N",
                       help="use a random subset of N structures (seeded by --split-seed): a quick look at a big file")


def _add_calibration_args(p: argparse.ArgumentParser, methods_default_help: str) -> None:
    g = p.add_argument_group("calibration")
    g.add_argument("--methods", type=_methods, default=None, metavar="M1,M2,...",
                   help=f"comma-separated calibrators (default: {methods_default_help}). " + _METHOD_HELP)
    g.add_argument("--confidence", type=_confidence, default=0.9,
                   help="target coverage 1-α in (0, 1): 0.9 means e_i <= w_i for 90%% of sites")
    g.add_argument("--seed", type=int, default=0, help="seed of the calibrators (q_θ initialisation, holdout)")
    g.add_argument("--max-epochs", type=_positive_int, default=None,
                   help="cap on q_θ training epochs (default: the calibrator's own)")
    g.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="by-structure bootstrap resamples for 95%% intervals of coverage and spearman (0 = none)")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of a table")
    g.add_argument("-o", "--output", metavar="OUTDIR", default=None, help="also write tables/JSON (and more) here")


def build_parser() -> argparse.ArgumentParser:
    """The ``flexcal`` argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="flexcal",
        formatter_class=_Formatter,
        description=(
            "FlexCal: calibrated per-atom uncertainty for MACE interatomic potentials.\n\n"
            "A force error e_i = ||F_pred - F_ref|| (eV/Å) is predicted for every atom ('site') by a\n"
            "half-width w_i (eV/Å) such that e_i <= w_i holds for a chosen fraction (the confidence,\n"
            "0.9 = 90%) of sites. The learned quantile q_θ(X) ('flexible') adapts w_i to each atomic\n"
            "environment X; split conformal ('split') gives one width for all.\n\n"
            "Typical workflow:\n"
            "  flexcal featurize data.xyz --model my.model -o sites.npz     # MACE -> per-site table\n"
            "  flexcal calibrate sites.npz --method flexible -o cal.npz     # fit widths\n"
            "  flexcal evaluate test_sites.npz --calibrator cal.npz         # coverage, width, spearman\n"
            "or all at once:  flexcal run data.xyz --model my.model --methods flexible,split,knn\n"
            "Offline demo:    flexcal run molecule            (embedded demo data and model)\n\n"
            + _UNITS
        ),
        epilog="Exit codes: 0 success, 2 bad input (message on stderr). `flexcal COMMAND --help` for details.",
    )
    parser.add_argument("--version", action="version", version=f"flexcal {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # featurize ---------------------------------------------------------------
    p = sub.add_parser(
        "featurize", formatter_class=_Formatter, help="run a MACE model over labelled structures -> per-site table",
        description=(
            "Run a MACE potential over every structure of DATA (extxyz with reference forces) in one\n"
            "batched forward pass per batch, and write one row per atom ('site'): species, predicted and\n"
            "reference forces (eV/Å), the force error e_i = ||F_pred - F_ref|| (eV/Å), and the model's\n"
            "invariant per-atom descriptors (scalar node features of every interaction layer).\n"
            "Reference labels are read from REF_forces/REF_energy, or forces/energy, or the keys given.\n\n"
            + _UNITS + "\n\n"
            "Example:\n"
            "  flexcal featurize train_300K.xyz --model mace-off23-small -o sites.npz\n"
            "  flexcal featurize molecule -o sites.npz       # embedded demo data + demo model"
        ),
    )
    p.add_argument("data", metavar="DATA", help="extxyz file with reference forces, or an embedded demo name")
    p.add_argument("-o", "--output", metavar="SITES.npz", required=True, help="where to write the site table")
    _add_model_args(p, subset=False)
    _add_common(p)
    p.set_defaults(func=_cmd_featurize)

    # calibrate ---------------------------------------------------------------
    p = sub.add_parser(
        "calibrate", formatter_class=_Formatter, help="fit a calibrator on a site table -> calibrator file",
        description=(
            "Fit a calibrator on the sites of SITES (written by `flexcal featurize`): it learns half-widths\n"
            "w(X) in eV/Å such that the force error e_i <= w_i for a fraction `confidence` of new sites.\n"
            "The flexible method trains a small neural quantile function q_θ(X) with the pinball loss\n"
            "(progress: epoch and loss on stderr), then applies a conformal correction on a held-out part\n"
            "so marginal coverage is guaranteed.\n\n"
            "Methods:\n  " + _METHOD_HELP.replace("; ", "\n  ") + "\n\n"
            "Weights (flexible only): uniform (every site equal), structure (every structure weighs 1),\n"
            "species (every species weighs the same), shift (importance weights towards --target).\n\n"
            + _UNITS + "\n\n"
            "Example:\n"
            "  flexcal calibrate sites.npz --method flexible --confidence 0.9 -o flexible.npz\n"
            "  flexcal calibrate sites.npz --method knn --reference train_sites.npz -o knn.npz"
        ),
    )
    p.add_argument("sites", metavar="SITES", help="site table .npz (from flexcal featurize)")
    p.add_argument("--method", type=_method, required=True, metavar="METHOD",
                   help="flexible|split|knn|gmm|force|committee|mondrian")
    p.add_argument("--confidence", type=_confidence, default=0.9,
                   help="target coverage 1-α in (0, 1): 0.9 means e_i <= w_i for 90%% of sites")
    p.add_argument("--weights", choices=("uniform", "structure", "species", "shift"), default=None,
                   help="site weights of the flexible pinball loss (default uniform)")
    p.add_argument("--target", metavar="TARGET_SITES", default=None,
                   help="unlabelled sites of the domain to predict on (needed by --weights shift)")
    p.add_argument("--reference", metavar="TRAIN_SITES", default=None,
                   help="sites of the potential's training set (reference for knn/gmm descriptors)")
    p.add_argument("--seed", type=int, default=0, help="random seed (q_θ initialisation, holdout split)")
    p.add_argument("--max-epochs", type=_positive_int, default=None, help="cap on q_θ training epochs")
    p.add_argument("-o", "--output", metavar="CALIBRATOR.npz", required=True, help="where to write the calibrator")
    _add_common(p)
    p.set_defaults(func=_cmd_calibrate)

    # evaluate ----------------------------------------------------------------
    p = sub.add_parser(
        "evaluate", formatter_class=_Formatter, help="score a calibrator on a site table",
        description=(
            "Predict half-widths w_i (eV/Å) for the sites of SITES with a saved calibrator and compare\n"
            "them with the true force errors e_i (eV/Å). Use sites the calibrator was NOT fitted on.\n\n"
            "Reported: coverage = fraction with e_i <= w_i (should be close to the confidence);\n"
            "coverage_gap = coverage - confidence; mean_width (eV/Å, lower is sharper);\n"
            "width_ratio = mean width / that of one global split-CP width fitted on these same sites;\n"
            "spearman/pearson = rank/linear correlation of w and e (n/a for a constant width);\n"
            "auroc = how well w flags the 10% largest errors; miscalibration_area = mean |observed -\n"
            "nominal| coverage over levels 0.05..0.95; per-species and worst-species coverage;\n"
            "pinball loss; structure-level spearman/auroc of max width vs max error.\n\n"
            + _UNITS + "\n\n"
            "Example:\n"
            "  flexcal evaluate test_sites.npz --calibrator flexible.npz --json"
        ),
    )
    p.add_argument("sites", metavar="SITES", help="site table .npz with true errors")
    p.add_argument("--calibrator", metavar="CALIBRATOR", required=True, help="calibrator .npz (from flexcal calibrate)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N", help="by-structure bootstrap resamples for CIs")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    _add_common(p)
    p.set_defaults(func=_cmd_evaluate)

    # run ---------------------------------------------------------------------
    p = sub.add_parser(
        "run", formatter_class=_Formatter, help="featurize, split by structure, calibrate and evaluate several methods",
        description=(
            "End to end: featurize DATA with the model, split it BY STRUCTURE (never by atom: atoms of one\n"
            "structure are correlated) into a calibration part and a test part, fit every method on the\n"
            "calibration part and report it on the test part. Prints an aligned table, or with --json one\n"
            "JSON object {\"n_structures\", \"n_sites\", \"split\", \"methods\": {NAME: report}} on stdout\n"
            "(progress stays on stderr).\n\n"
            "Without --model on an embedded demo dataset (a name such as molecule, or its path) the\n"
            "embedded demo model is used; its training frames are excluded from calibration and serve as\n"
            "the knn/gmm reference.\n\n"
            "Split by a per-structure key instead of at random with --split-by config_type\n"
            "--calibration-types a,b --test-types c.\n\n"
            + _UNITS + "\n\n"
            "Examples:\n"
            "  flexcal run molecule --json\n"
            "  flexcal run data.xyz --model my.model --methods flexible,split,knn --confidence 0.9 -o out/\n"
            "  flexcal run data.xyz --model my.model --split-by config_type --calibration-types md300 --test-types md600"
        ),
    )
    p.add_argument("data", metavar="DATA", help="extxyz file with reference forces, or an embedded demo name")
    _add_model_args(p)
    _add_calibration_args(p, "every method the data supports")
    g = p.add_argument_group("split (by structure)")
    g.add_argument("--test-fraction", type=_fraction, default=0.5, help="fraction of structures held out for testing")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the random structure split")
    g.add_argument("--split-by", metavar="KEY", default=None, help="split by this per-structure key (e.g. config_type)")
    g.add_argument("--calibration-types", type=_csv_list, default=None, metavar="A,B", help="values of KEY to calibrate on")
    g.add_argument("--test-types", type=_csv_list, default=None, metavar="C", help="values of KEY to test on")
    p.add_argument("--weights", choices=("uniform", "structure", "species"), default=None,
                   help="site weights of the flexible method's pinball loss")
    _add_common(p)
    p.set_defaults(func=_cmd_run)

    # study -------------------------------------------------------------------
    p = sub.add_parser(
        "study", formatter_class=_Formatter, help="run a study of the method (in-domain, unseen, transfer, active-learning)",
        description=(
            "The studies of the method (METHOD §5), each a table with one row per calibrator x test split\n"
            "(coverage, mean width in eV/Å, width ratio, spearman, auroc, miscalibration area, worst-species\n"
            "coverage):\n"
            "  in-domain        calibrate and test on disjoint structures of one distribution\n"
            "  unseen           calibrate on some configurations (e.g. low temperature), test on others\n"
            "                   (--calibration-types/--test-types on config_type, or --test-data FILES)\n"
            "  transfer         errors against two levels of theory of the same structures: calibrate\n"
            "                   against A (the dataset's labels), test against B (--b-forces-key), with\n"
            "                   uniform and shift weights and with small budgets of B labels\n"
            "  active-learning  MD with the potential; pick frames by calibrated uncertainty vs a\n"
            "                   heuristic vs random; label, refit; error against number of labels\n"
            "With no --dataset an embedded demo dataset and the demo model are used (offline).\n\n"
            + _UNITS + "\n\n"
            "Examples:\n"
            "  flexcal study in-domain --json\n"
            "  flexcal study unseen --dataset acac_300K.xyz --model my.model --test-data acac_600K.xyz\n"
            "  flexcal study transfer --dataset molecule_transfer -o results/"
        ),
    )
    from core.studies import STUDIES

    p.add_argument("name", metavar="NAME", choices=STUDIES, help="one of: " + ", ".join(STUDIES))
    p.add_argument("--dataset", metavar="DATA", default=None, help="extxyz file or embedded demo name (default: a demo)")
    _add_model_args(p)
    _add_calibration_args(p, "every method the data supports")
    g = p.add_argument_group("splits")
    g.add_argument("--test-fraction", type=_fraction, default=0.5, help="in-domain/transfer: fraction of structures to test on")
    g.add_argument("--split-seed", type=int, default=0, help="in-domain: seed of the structure split")
    g.add_argument("--split-by", metavar="KEY", default=None, help="unseen: per-structure key to split on (default config_type)")
    g.add_argument("--calibration-types", type=_csv_list, default=None, metavar="A,B", help="unseen: values to calibrate on")
    g.add_argument("--test-types", type=_csv_list, default=None, metavar="C,D", help="unseen: values to test on (each its own split)")
    g.add_argument("--test-data", nargs="+", metavar="FILE", default=None, help="unseen: further extxyz test sets")
    g.add_argument("--in-domain-fraction", type=_fraction, default=None,
                   help="unseen: also hold out this fraction of calibration structures as an in-domain test split")
    g.add_argument("--b-forces-key", metavar="KEY", default="REF2_forces",
                   help="transfer: per-atom forces of level B (eV/Å) in atoms.arrays")
    g.add_argument("--budgets", type=lambda s: [_fraction(x) for x in _csv_list(s)], default="0.05,0.1",
                   metavar="F1,F2", help="transfer: fractions of calibration structures given B labels")
    g = p.add_argument_group("active learning")
    g.add_argument("--reference-calc", choices=("gfn2-xtb", "gfn1-xtb", "emt"), default=None,
                   help="labeller of picked frames (default: the demo family's reference; required for a file)")
    g.add_argument("--al-initial", type=_positive_int, default=20, help="initial labelled training frames")
    g.add_argument("--al-rounds", type=_positive_int, default=3, help="rounds of MD -> pick -> label -> refit")
    g.add_argument("--al-picks", type=_positive_int, default=5, help="frames picked and labelled per round")
    g.add_argument("--al-md-steps", type=_positive_int, default=200, help="MD steps per round (Langevin, 0.5 fs)")
    g.add_argument("--al-test-size", type=_positive_int, default=20, help="labelled test frames for the curves")
    g.add_argument("--al-train-epochs", type=_positive_int, default=30, help="epochs of every MACE refit")
    g.add_argument("--al-strategies", type=_csv_list, default="calibrated,heuristic,random",
                   metavar="S1,S2", help="frame-selection strategies to compare")
    g.add_argument("--al-calibrator", default="flexible", metavar="METHOD",
                   help="calibrator whose structure uncertainty (max site width, eV/Å) drives 'calibrated'")
    _add_common(p)
    p.set_defaults(func=_cmd_study, weights=None)
    return parser


def _version() -> str:
    # importlib.metadata directly, not core.__version__: an editable install may expose
    # `core` as a namespace package to console scripts, skipping core/__init__.py
    from importlib import metadata

    try:
        return metadata.version("flexcal")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


# ---------------------------------------------------------------------- main
def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'bad input', reported without a traceback."""
    types: list[type[BaseException]] = [UserError, ValueError, FileNotFoundError, IsADirectoryError,
                                        NotADirectoryError, PermissionError]
    for module, names in (
        ("core.data", ("DatasetError",)),  # a ValueError; listed for clarity
        ("core.potentials.mace", ("FoundationModelUnavailable",)),  # offline foundation model
        ("core.training", ("TrainingError",)),  # mace_run_train failed; the message names its log
    ):
        mod = sys.modules.get(module)
        for n in names:
            t = getattr(mod, n, None) if mod is not None else None
            if isinstance(t, type) and issubclass(t, BaseException):
                types.append(t)
    return tuple(types)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    return " ".join(text.split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flexcal`` console script. Returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) or a usage error (2)
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    ui = _UI(quiet=getattr(args, "quiet", False), out=sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return int(args.func(args, ui) or EXIT_OK)
    except BrokenPipeError:  # the reader went away, e.g. `flexcal run ... --json | head`
        try:  # point stdout at /dev/null so the interpreter's final flush does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return EXIT_OK
    except KeyboardInterrupt:
        ui.close()
        print("flexcal: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        ui.close()
        if not isinstance(exc, _user_error_types()) or os.environ.get("FLEXCAL_DEBUG"):
            raise
        print(f"flexcal {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
