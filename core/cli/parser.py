"""The ``flexcal`` argument parser: subcommands, their help texts and argument types.

Argument types fail at parse time (exit 2, ``argument --X: ...``) so that a bad seed,
confidence or method name never costs a featurization. Method names and their help come
from the method registry (:mod:`core.calibration.registry`) when the parser is built, so a
registered method appears in ``--methods`` validation and help.
"""

from __future__ import annotations

import argparse
import math

from core.cli.guards import add_read_args, int_at_least, positive_int
from core.cli.ui import UNITS

__all__ = ["build_parser"]

MODEL_TRUST = ("A .model file is a pickle: loading it RUNS CODE from the file; use only model files you trust "
               "(foundation-model names are downloaded by mace-torch from its own URLs).")
MODELS_PLACEHOLDER = "<<models>>"  # --model help: replaced by _model_help() only when help is printed
#: backends whose offline check imports their package (seconds): described, not checked, in --help
_DESCRIBED_OFFLINE = {"mace": "offline only once in mace-torch's cache (~/.cache/mace)"}


# ------------------------------------------------------------------ argument types
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


_seed = int_at_least(0, "a seed: an integer >= 0")
_count = int_at_least(0, "an integer >= 0")


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _methods(text: str) -> list[str]:
    from core.calibration.registry import method_names

    valid = ", ".join(method_names())
    methods = _csv_list(text)
    if not methods:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of methods from: {valid}")
    unknown = [m for m in methods if m not in method_names()]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown method {unknown[0]!r}; valid methods: {valid}")
    duplicated = sorted({m for m in methods if methods.count(m) > 1})
    if duplicated:
        raise argparse.ArgumentTypeError(f"method {duplicated[0]!r} given twice in {text!r}")
    return methods


def _method(text: str) -> str:
    if "," in text:
        raise argparse.ArgumentTypeError(f"expected one method, got {text!r} (use `flexcal run --methods` for several)")
    return _methods(text)[0]


def _budgets(text: str) -> list[float]:
    return [_fraction(x) for x in _csv_list(text)]


def _methods_help(sep: str = "; ") -> str:
    """One entry per registered method: ``name = what it does`` (recommended one marked)."""
    from core.calibration.registry import method_names, method_spec

    width = max(len(n) for n in method_names()) + 1
    parts = []
    for name in method_names():
        spec = method_spec(name)
        parts.append(f"{name:<{width}}= {spec.help}" + (" [recommended]" if spec.recommended else ""))
    return sep.join(parts)


def _default_methods_help() -> str:
    from core.cli.commands import default_methods

    return ",".join(default_methods()) + " (those the sites support; recommended first)"


def _model_help() -> str:
    """The model names ``load_potential`` knows, per backend, foundation models first.

    From the backend registry's metadata (names, aliases, kind) with each backend's offline
    check, except those in ``_DESCRIBED_OFFLINE`` whose check would import their package.
    """
    from core.potentials import backends

    parts = []
    for b in sorted(backends(), key=lambda b: b.kind != "foundation model"):
        if not b.models:
            continue
        aliases = {target: a for a, target in b.aliases.items()}
        names = ", ".join(f"{n} (= {aliases[n]})" if n in aliases else n for n in b.models)
        if b.name in _DESCRIBED_OFFLINE:
            status = _DESCRIBED_OFFLINE[b.name]
        else:
            status = "available offline" if all(b.is_offline(n) for n in b.models) else b.unavailable
        parts.append(f"{names}: {b.label} ({b.kind}, {status})")
    return "; ".join(parts)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-made layout of descriptions; shows defaults only where there is one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if MODELS_PLACEHOLDER in text:
            text = text.replace(MODELS_PLACEHOLDER, _model_help().replace("%", "%%"))
        if "%(default)" not in text and action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            text += " (default: %(default)s)"
        return text


# ------------------------------------------------------------------ argument groups
def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars or notes on stderr (also silences e3nn/cuequivariance notices); "
                        "WARNING lines stay")


def _add_overwrite(p) -> None:
    p.add_argument("--no-overwrite", action="store_true",
                   help="refuse to replace existing output files (checked before any work)")


def _add_model_args(p: argparse.ArgumentParser, subset: bool = True) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument(
        "--model", metavar="NAME_OR_PATH", default=None,
        help="a model name or a local model file (a MACE .model, a CHGNet .pth.tar checkpoint). Names: "
             + MODELS_PLACEHOLDER + ". Omit for an embedded demo dataset to use its demo model (study zero-shot: "
             "chgnet-0.3.0). " + MODEL_TRUST,
    )
    g.add_argument("--committee", nargs="+", metavar="MODEL", default=None,
                   help="further models; their per-atom force spread (eV/Å) feeds the 'committee' method")
    g.add_argument("--batch-size", type=positive_int, default=16, help="structures per forward pass")
    g.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="cache featurized sites here (keyed by data, model and settings); none by default")
    g.add_argument("--energy-key", metavar="KEY", default=None,
                   help="reference energy key in atoms.info (eV); default: auto-detect REF_energy, energy, ...")
    g.add_argument("--forces-key", metavar="KEY", default=None,
                   help="reference forces key in atoms.arrays (eV/Å); default: auto-detect REF_forces, forces, ...")
    add_read_args(p)
    g.add_argument("--device", default="auto", help="torch device: auto (CUDA when present), cpu, cuda, cuda:N or mps")
    g.add_argument("--dtype", default=None, choices=("float32", "float64"), help="model precision (default: the backend's own: MACE float64, CHGNet float32)")
    if subset:
        g.add_argument("--reference-data", metavar="TRAIN.xyz", default=None,
                       help="the model's training structures; their descriptors are the knn/gmm reference "
                            "(default: the calibration sites; the demo model's own training frames for a demo)")
        g.add_argument("--max-structures", type=positive_int, default=None, metavar="N",
                       help="use a random subset of N structures (seeded by --split-seed): a quick look at a big file")


def _add_calibration_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration")
    g.add_argument("--methods", type=_methods, default=None, metavar="M1,M2,...",
                   help=(f"comma-separated calibrators (default: {_default_methods_help()}). "
                         + _methods_help()).replace("%", "%%"))
    g.add_argument("--confidence", type=_confidence, default=0.9,
                   help="target coverage 1-α in (0, 1): 0.9 means e_i <= w_i for 90%% of sites")
    g.add_argument("--seed", type=_seed, default=0, help="seed of the calibrators (q_θ initialisation, holdout)")
    g.add_argument("--max-epochs", type=positive_int, default=None,
                   help="cap on q_θ training epochs (default: the calibrator's own)")
    g.add_argument("--bootstrap", type=_count, default=0, metavar="N",
                   help="by-structure bootstrap resamples for 95%% intervals of coverage and spearman (0 = none)")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of a table")
    g.add_argument("-o", "--output", metavar="OUTDIR", default=None,
                   help="also write tables/JSON (and more) into this folder (checked before any work)")
    _add_overwrite(g)


# ------------------------------------------------------------------- subcommands
_MAIN_DESCRIPTION = (
    "FlexCal: calibrated per-atom uncertainty for MACE interatomic potentials.\n\n"
    "A force error e_i = ||F_pred - F_ref|| (eV/Å) is predicted for every atom ('site') by a\n"
    "half-width w_i (eV/Å) such that e_i <= w_i holds for a chosen fraction (the confidence,\n"
    "0.9 = 90%) of sites. The learned quantile q_θ(X) ('flexible') adapts w_i to each atomic\n"
    "environment X; split conformal ('split') gives one width for all.\n\n"
    "Typical workflow:\n"
    "  flexcal featurize data.xyz --model my.model -o sites.npz      # MACE -> per-site table\n"
    "  flexcal calibrate cal_sites.npz --method flexible -o cal.npz  # fit widths\n"
    "  flexcal evaluate test_sites.npz --calibrator cal.npz --calibration cal_sites.npz\n"
    "or all at once:  flexcal run data.xyz --model my.model --methods flexible,split,knn\n"
    "Offline demo:    flexcal run molecule            (embedded demo data and model)\n\n"
    "Every coverage is printed with the range expected for the number of calibration structures;\n"
    "a WARNING line says when it falls outside, when test structures lie outside the calibration\n"
    "domain, and when the test set is too small to judge.\n\n" + UNITS
)


def _featurize_parser(sub, func) -> None:
    p = sub.add_parser(
        "featurize", formatter_class=_Formatter, help="run a MACE model over labelled structures -> per-site table",
        description=(
            "Run a MACE potential over every structure of DATA (extxyz with reference forces) in one\n"
            "batched forward pass per batch, and write one row per atom ('site'): species, predicted and\n"
            "reference forces (eV/Å), the force error e_i = ||F_pred - F_ref|| (eV/Å), and the model's\n"
            "invariant per-atom descriptors (scalar node features of every interaction layer).\n"
            "Reference labels are read from REF_forces/REF_energy, or forces/energy, or the keys given.\n"
            "The output path is checked before featurizing (never an input file) and written atomically.\n\n"
            + MODEL_TRUST + "\n\n" + UNITS + "\n\n"
            "Example:\n"
            "  flexcal featurize train_300K.xyz --model mace-off23-small -o sites.npz\n"
            "  flexcal featurize molecule -o sites.npz       # embedded demo data + demo model"
        ),
    )
    p.add_argument("data", metavar="DATA", help="extxyz file with reference forces, or an embedded demo name")
    p.add_argument("-o", "--output", metavar="SITES.npz", required=True,
                   help="where to write the site table (with --workers/--scheduler: a site-store folder)")
    _add_overwrite(p)
    _add_model_args(p, subset=False)
    g = p.add_argument_group("scaling out on a Dask cluster (pip install 'flexcal[distributed]')")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="start a local Dask cluster of N worker processes; -o is then a folder of shards + "
                        "manifest.json (rerun the same command to resume an interrupted run)")
    x.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="use an existing Dask cluster (tcp://host:port); its workers need the model file and "
                        "the -o folder on a shared filesystem")
    g.add_argument("--chunk-size", type=positive_int, default=256, metavar="N",
                   help="structures per Dask task and per shard (with --workers/--scheduler)")
    _add_common(p)
    p.set_defaults(func=func)


def _calibrate_parser(sub, func) -> None:
    p = sub.add_parser(
        "calibrate", formatter_class=_Formatter, help="fit a calibrator on a site table -> calibrator file",
        description=(
            "Fit a calibrator on the sites of SITES (written by `flexcal featurize`): it learns half-widths\n"
            "w(X) in eV/Å such that the force error e_i <= w_i for a fraction `confidence` of new sites.\n"
            "The flexible method trains a small neural quantile function q_θ(X) with the pinball loss\n"
            "(progress: epoch and loss on stderr), then applies a conformal correction on a held-out part\n"
            "so marginal coverage is guaranteed. SITES must be labelled (reference forces).\n\n"
            "Methods:\n  " + _methods_help("\n  ") + "\n\n"
            "Weights (flexible only): uniform (every site equal), structure (every structure weighs 1),\n"
            "species (every species weighs the same), shift (importance weights towards --target).\n\n"
            + UNITS + "\n\n"
            "Example:\n"
            "  flexcal calibrate sites.npz --method flexible --confidence 0.9 -o flexible.npz\n"
            "  flexcal calibrate sites.npz --method knn --reference train_sites.npz -o knn.npz"
        ),
    )
    from core.calibration.registry import method_names

    p.add_argument("sites", metavar="SITES", help="labelled site table .npz (from flexcal featurize)")
    p.add_argument("--method", type=_method, required=True, metavar="METHOD", help="|".join(method_names()))
    p.add_argument("--confidence", type=_confidence, default=0.9,
                   help="target coverage 1-α in (0, 1): 0.9 means e_i <= w_i for 90%% of sites")
    p.add_argument("--weights", choices=("uniform", "structure", "species", "shift"), default=None,
                   help="site weights of the flexible pinball loss (default uniform)")
    p.add_argument("--target", metavar="TARGET_SITES", default=None,
                   help="unlabelled sites of the domain to predict on (needed by --weights shift)")
    p.add_argument("--reference", metavar="TRAIN_SITES", default=None,
                   help="sites of the potential's training set (reference for knn/gmm descriptors)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (q_θ initialisation, holdout split)")
    p.add_argument("--max-epochs", type=positive_int, default=None, help="cap on q_θ training epochs")
    p.add_argument("-o", "--output", metavar="CALIBRATOR.npz", required=True,
                   help="where to write the calibrator (checked before fitting; written atomically)")
    _add_overwrite(p)
    _add_common(p)
    p.set_defaults(func=func)


def _evaluate_parser(sub, func) -> None:
    p = sub.add_parser(
        "evaluate", formatter_class=_Formatter, help="score a calibrator on a site table",
        description=(
            "Predict half-widths w_i (eV/Å) for the sites of SITES with a saved calibrator and compare\n"
            "them with the true force errors e_i (eV/Å). Use sites the calibrator was NOT fitted on.\n\n"
            "Reported: coverage = fraction with e_i <= w_i (should be close to the confidence) and the\n"
            "range expected for the number of calibration structures; coverage_gap = coverage -\n"
            "confidence; mean_width (eV/Å, lower is sharper); width_ratio = mean width / that of one\n"
            "global split-CP width fitted on the CALIBRATION sites (--calibration; — without it);\n"
            "spearman/pearson = rank/linear correlation of w and e (— for a constant width);\n"
            "auroc = how well w flags the 10% largest errors; miscalibration_area = mean |observed -\n"
            "nominal| coverage over levels 0.05..0.95; per-species and worst-species coverage;\n"
            "pinball loss; structure-level spearman/auroc of max width vs max error; ood_fraction =\n"
            "share of test sites outside the calibration domain (with coverage in and out of it).\n\n"
            "--calibration (the labelled sites the calibrator was fitted on) is needed for width_ratio,\n"
            "the expected coverage range and the out-of-domain flags; without it they are reported as\n"
            "unavailable (null) and a note says so.\n\n"
            + UNITS + "\n\n"
            "Example:\n"
            "  flexcal evaluate test_sites.npz --calibrator flexible.npz --calibration cal_sites.npz --json"
        ),
    )
    p.add_argument("sites", metavar="SITES", help="labelled site table .npz to test on")
    p.add_argument("--calibrator", metavar="CALIBRATOR", required=True, help="calibrator .npz (from flexcal calibrate)")
    p.add_argument("--calibration", metavar="CAL_SITES", default=None,
                   help="the labelled sites the calibrator was fitted on (width_ratio, expected coverage, ood)")
    p.add_argument("--reference", metavar="TRAIN_SITES", default=None,
                   help="sites of the potential's training set (for the out-of-domain score)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    p.add_argument("--bootstrap", type=_count, default=0, metavar="N", help="by-structure bootstrap resamples for CIs")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the bootstrap")
    p.add_argument("--by", choices=("species", "config_type"), default=None,
                   help="also print coverage (binomial interval, expected range), mean width, MAE and Spearman "
                        "ρ per element or per config_type (by-structure intervals with --bootstrap)")
    _add_common(p)
    p.set_defaults(func=func)


def _run_parser(sub, func) -> None:
    p = sub.add_parser(
        "run", formatter_class=_Formatter, help="featurize, split by structure, calibrate and evaluate several methods",
        description=(
            "End to end: featurize DATA with the model, split it BY STRUCTURE (never by atom: atoms of one\n"
            "structure are correlated) into a calibration part and a test part, fit every method on the\n"
            "calibration part and report it on the test part. Prints an aligned table (coverage with the\n"
            "range expected for the calibration size, WARNING lines below it), or with --json one JSON\n"
            "object {\"n_structures\", \"n_sites\", \"split\", \"methods\": {NAME: report}, \"warnings\"} on\n"
            "stdout (progress stays on stderr).\n\n"
            "Frames a potential was trained on (per-frame split = train/valid, as in the embedded demo\n"
            "files) are never calibrated or tested on; its train frames are the knn/gmm reference.\n"
            "Without --model on an embedded demo dataset (a name such as molecule, or its path) the\n"
            "embedded demo model is used.\n\n"
            "Split by a per-structure key instead of at random with --split-by config_type\n"
            "--calibration-types a,b --test-types c (values checked before featurizing).\n\n"
            + UNITS + "\n\n"
            "Examples:\n"
            "  flexcal run molecule --json\n"
            "  flexcal run data.xyz --model my.model --methods flexible,split,knn --confidence 0.9 -o out/\n"
            "  flexcal run data.xyz --model my.model --split-by config_type --calibration-types md300 --test-types md600"
        ),
    )
    p.add_argument("data", metavar="DATA", help="extxyz file with reference forces, or an embedded demo name")
    _add_model_args(p)
    _add_calibration_args(p)
    g = p.add_argument_group("split (by structure)")
    g.add_argument("--test-fraction", type=_fraction, default=0.5, help="fraction of structures held out for testing")
    g.add_argument("--split-seed", type=_seed, default=0, help="seed of the random structure split")
    g.add_argument("--split-by", metavar="KEY", default=None, help="split by this per-structure key (e.g. config_type)")
    g.add_argument("--calibration-types", type=_csv_list, default=None, metavar="A,B", help="values of KEY to calibrate on")
    g.add_argument("--test-types", type=_csv_list, default=None, metavar="C", help="values of KEY to test on")
    p.add_argument("--weights", choices=("uniform", "structure", "species"), default=None,
                   help="site weights of the flexible method's pinball loss")
    _add_common(p)
    p.set_defaults(func=func)


def _study_parser(sub, func) -> None:
    from core.studies import STUDIES

    p = sub.add_parser(
        "study", formatter_class=_Formatter,
        help="run a study of the method (in-domain, unseen, transfer, active-learning, zero-shot)",
        description=(
            "The studies of the method (METHOD §5), each a table with one row per calibrator x test split\n"
            "(coverage with its expected range, mean width in eV/Å, width ratio, spearman, auroc,\n"
            "miscalibration area, worst-species coverage, out-of-domain fraction):\n"
            "  in-domain        calibrate and test on disjoint structures of one distribution\n"
            "  unseen           calibrate on some configurations (e.g. low temperature), test on others\n"
            "                   (--calibration-types/--test-types on config_type, or --test-data FILES)\n"
            "  transfer         errors against two levels of theory of the same structures: calibrate\n"
            "                   against A (the dataset's labels), test against B (--b-forces-key), with\n"
            "                   uniform and shift weights and with small budgets of B labels\n"
            "  active-learning  MD with the potential; pick frames by calibrated uncertainty vs a\n"
            "                   heuristic vs random; label, refit; error against number of labels\n"
            "  zero-shot        a foundation model without fine-tuning (--model, default chgnet-0.3.0,\n"
            "                   offline) on several datasets: its force MAE, then every calibrator on an\n"
            "                   in-domain split and on shift splits, and ρ of heuristic CP vs q_θ side by\n"
            "                   side; --dataset takes comma-separated public set names (3bpa, acac,\n"
            "                   ethanol, hea25: ../shared/data, 200 frames per file unless\n"
            "                   --max-structures), demo names or one file (+ --test-data); default: the\n"
            "                   public sets when present, else the demos. 30% of the calibration\n"
            "                   structures are the knn/gmm reference (the model's training set is not at hand)\n"
            "Other studies: with no --dataset an embedded demo dataset and its demo model are used (offline).\n\n"
            + UNITS + "\n\n"
            "Examples:\n"
            "  flexcal study in-domain --json\n"
            "  flexcal study unseen --dataset acac_300K.xyz --model my.model --test-data acac_600K.xyz\n"
            "  flexcal study transfer --dataset molecule_transfer -o results/\n"
            "  flexcal study zero-shot --model chgnet-0.3.0 --dataset 3bpa,acac --json"
        ),
    )
    p.add_argument("name", metavar="NAME", choices=STUDIES, help="one of: " + ", ".join(STUDIES))
    p.add_argument("--dataset", metavar="DATA", default=None,
                   help="extxyz file or embedded demo name (default: a demo); zero-shot: comma-separated")
    _add_model_args(p)
    _add_calibration_args(p)
    g = p.add_argument_group("splits")
    g.add_argument("--test-fraction", type=_fraction, default=0.5, help="in-domain/transfer: fraction of structures to test on")
    g.add_argument("--split-seed", type=_seed, default=0, help="in-domain: seed of the structure split")
    g.add_argument("--split-by", metavar="KEY", default=None, help="unseen: per-structure key to split on (default config_type)")
    g.add_argument("--calibration-types", type=_csv_list, default=None, metavar="A,B", help="unseen: values to calibrate on")
    g.add_argument("--test-types", type=_csv_list, default=None, metavar="C,D", help="unseen: values to test on (each its own split)")
    g.add_argument("--test-data", nargs="+", metavar="FILE", default=None, help="unseen: further extxyz test sets")
    g.add_argument("--in-domain-fraction", type=_fraction, default=None,
                   help="unseen: also hold out this fraction of calibration structures as an in-domain test split")
    g.add_argument("--b-forces-key", metavar="KEY", default="REF2_forces",
                   help="transfer: per-atom forces of level B (eV/Å) in atoms.arrays")
    g.add_argument("--budgets", type=_budgets, default="0.05,0.1", metavar="F1,F2",
                   help="transfer: fractions of calibration structures given B labels")
    g = p.add_argument_group("active learning")
    g.add_argument("--reference-calc", choices=("gfn2-xtb", "gfn1-xtb", "emt"), default=None,
                   help="labeller of picked frames (default: the demo family's reference; required for a file)")
    g.add_argument("--al-initial", type=positive_int, default=20, help="initial labelled training frames")
    g.add_argument("--al-rounds", type=positive_int, default=3, help="rounds of MD -> pick -> label -> refit")
    g.add_argument("--al-picks", type=positive_int, default=5, help="frames picked and labelled per round")
    g.add_argument("--al-md-steps", type=positive_int, default=200, help="MD steps per round (Langevin, 0.5 fs)")
    g.add_argument("--al-test-size", type=positive_int, default=20, help="labelled test frames for the curves")
    g.add_argument("--al-train-epochs", type=positive_int, default=30, help="epochs of every MACE refit")
    g.add_argument("--al-strategies", type=_csv_list, default="calibrated,heuristic,random",
                   metavar="S1,S2", help="frame-selection strategies to compare")
    g.add_argument("--al-calibrator", type=_method, default="flexible", metavar="METHOD",
                   help="calibrator whose structure uncertainty (max site width, eV/Å) drives 'calibrated'")
    _add_common(p)
    p.set_defaults(func=func, weights=None)


def _version() -> str:
    # importlib.metadata directly, not core.__version__: an editable install may expose
    # `core` as a namespace package to console scripts, skipping core/__init__.py
    from importlib import metadata

    try:
        return metadata.version("flexcal")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``flexcal`` argument parser (exposed for documentation and tests).

    Built afresh on every call, from the method registry as it is then.
    """
    from core.cli import commands, commands_study

    parser = argparse.ArgumentParser(
        prog="flexcal", formatter_class=_Formatter, description=_MAIN_DESCRIPTION,
        epilog="Exit codes: 0 success, 2 bad input (message on stderr), 130 interrupted. "
               "`flexcal COMMAND --help` for details.",
    )
    parser.add_argument("--version", action="version", version=f"flexcal {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _featurize_parser(sub, commands.cmd_featurize)
    _calibrate_parser(sub, commands.cmd_calibrate)
    _evaluate_parser(sub, commands.cmd_evaluate)
    _run_parser(sub, commands.cmd_run)
    _study_parser(sub, commands_study.cmd_study)
    from core.cli.commands_apply import add_predict_parser

    add_predict_parser(sub, _Formatter)
    return parser
