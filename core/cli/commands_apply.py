"""``flexcal predict``: annotate structures with a saved calibrator (a thin wrapper of ``core.apply.run_predict``).

Every output path is checked before the model is loaded; the outputs are written atomically.
A calibrator fitted on another model's descriptors (width recorded at fit time) is refused
before any forward pass; another model of the same width is a WARNING line (``--strict``
refuses it).
"""

from __future__ import annotations

import argparse
import warnings

from core.cli.guards import positive_float, positive_int
from core.cli.ui import EXIT_OK, UI, coverage_warnings, expected_text, fmt

__all__ = ["add_predict_parser", "cmd_predict"]

_DESCRIPTION = """\
Annotate structures (an MD trajectory, a screening set; labelled or not) with a saved calibrator:
per-atom force widths (eV/Å) at the calibrator's confidence (and --levels), per-frame maximum and
mean width, out-of-domain flags where the calibrator carries a domain score (flexible-ood) or
--domain gives one, and, when the structures carry reference forces, errors and coverage.

Writes OUT (extxyz: per-atom flexcal_width[, flexcal_width_pXX, flexcal_ood, flexcal_error],
per-frame flexcal_max_width, flexcal_mean_width, flexcal_flagged, ...) and a per-frame table
(--table, default OUT with suffix .csv). A frame is flagged when its largest width exceeds
--threshold or it is out of the calibration domain; --flagged writes those frames alone, ready
for labelling.

examples:
  flexcal predict traj.xyz --model my.model --calibrator qtheta.npz -o annotated.xyz --threshold 0.3
  flexcal predict datasets/molecule_ethanol_heating.xyz --model datasets/models/molecule.model \\
      --calibrator cal.npz -o heated.xyz --levels 0.5,0.99 --flagged to_label.xyz --json
"""


def _levels(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated levels in (0, 1), e.g. 0.5,0.99; got {text!r}")
    if not values or not all(0.0 < v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated levels in (0, 1), e.g. 0.5,0.99; got {text!r}")
    return values


_width = positive_float("a positive width in eV/Å (e.g. 0.3)")


def add_predict_parser(sub, formatter_class=argparse.RawDescriptionHelpFormatter) -> None:
    """Register ``predict`` on the ``flexcal`` subparsers."""
    from core.cli.parser import MODEL_TRUST

    p = sub.add_parser("predict", help="annotate structures with a saved calibrator (widths, flags)",
                       description=_DESCRIPTION, formatter_class=formatter_class)
    p.add_argument("data", metavar="DATA", help="structures: extxyz or any ASE-readable file, labelled or not")
    p.add_argument("--model", required=True, metavar="NAME_OR_PATH",
                   help="the model the calibrator was fitted with (a .model file or a model name). " + MODEL_TRUST)
    p.add_argument("--calibrator", required=True, metavar="C.npz", help="a saved calibrator (read without pickle)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.xyz", help="annotated extxyz (every frame)")
    p.add_argument("--table", metavar="PATH", default="auto",
                   help="per-frame table, .csv or .parquet ('auto': OUT with suffix .csv; 'none': no table)")
    p.add_argument("--site-table", metavar="PATH", default=None, help="per-site table, .csv or .parquet")
    p.add_argument("--flagged", metavar="PATH", default=None, help="extxyz of the flagged frames only")
    p.add_argument("--levels", type=_levels, default=None, metavar="P1,P2",
                   help="extra confidence levels for widths, e.g. 0.5,0.99")
    p.add_argument("--threshold", type=_width, default=None, metavar="W",
                   help="flag frames whose largest width exceeds W eV/Å")
    p.add_argument("--domain", metavar="D.npz", default=None,
                   help="a saved out-of-domain score (core.domain.DomainScore) for the flags")
    p.add_argument("--strict", action="store_true",
                   help="refuse (instead of warn about) a calibrator fitted with another model of the same width")
    p.add_argument("--no-overwrite", action="store_true",
                   help="refuse to replace existing output files (checked before any work)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="structures per forward pass")
    p.add_argument("--format", default=None, help="ASE file format of DATA (default: from the suffix)")
    p.add_argument("--forces-key", metavar="KEY", default=None,
                   help="reference forces key, for coverage (default: auto-detect REF_forces, forces, ...)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr; WARNING lines stay")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args, ui: UI) -> int:
    from core.apply import run_predict
    from core.calibration.base import LayoutWarning

    read_options = {k: v for k, v in (("format", args.format), ("forces_key", args.forces_key)) if v is not None}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LayoutWarning)
        summary = run_predict(
            args.data, args.model, args.calibrator, args.output, table=None if args.table in ("", "none") else args.table,
            site_table=args.site_table, flagged_output=args.flagged, overwrite=not args.no_overwrite,
            read_options=read_options, levels=args.levels, threshold=args.threshold, domain=args.domain,
            strict=args.strict, batch_size=args.batch_size, progress=ui.progress("annotate", "structure"))
    for w in caught:
        if issubclass(w.category, LayoutWarning):
            ui.warn(str(w.message))
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if summary["flagged_frames"] == 0 and args.flagged:
        ui.warn(f"no frame is flagged: {args.flagged} was not written")
    if args.json:
        ui.json({**summary, "warnings": ui.warnings})
    else:
        _print_summary(ui, summary)
    ui.flush_warnings()
    return EXIT_OK


def _print_summary(ui: UI, s: dict) -> None:
    ui.result(f"frames          {s['frames']} ({s['sites']} atoms); calibrator {s['calibrator']} at "
              f"confidence {fmt(s['confidence'], 2)}")
    ui.result(f"widths (eV/Å)   max {fmt(s['max_width'])}, mean {fmt(s['mean_width'])}")
    why = [f"max width > {fmt(s['threshold'])} eV/Å" if s["threshold"] is not None else None,
           "out of domain" if s["ood_frames"] is not None else None]
    shown = ", ".join(map(str, s["flagged"][:20])) + (", ..." if s["flagged_frames"] > 20 else "")
    ui.result(f"flagged frames  {s['flagged_frames']} ({' or '.join(w for w in why if w) or 'no threshold or domain score'})"
              + (f": {shown}" if shown else ""))
    if s["ood_frames"] is not None:
        ui.result(f"out of domain   {s['ood_frames']} frames; {fmt(s['ood_site_fraction'])} of the atoms")
    if s["labelled"]:
        extra = "".join(f", {fmt(v)} at {k}" for k, v in s["coverage_levels"].items())
        ui.result(f"coverage        {fmt(s['coverage'])} (target {fmt(s['confidence'], 2)}, expected "
                  f"{expected_text(s)}){extra}")
        for message in coverage_warnings("predict", s, n_calibration=s.get("n_calibration_structures")):
            ui.warn(message)
    for what, path in s["outputs"].items():
        ui.result(f"wrote {what:<11}{path}")
