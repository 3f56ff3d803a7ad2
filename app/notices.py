"""Honest numbers in words (no Streamlit): coverage spread, out-of-domain sites, stale results.

* Every coverage comes with the range expected for the number of calibration structures
  (``coverage_expected_lo`` / ``coverage_expected_hi`` of the calibration report); an observed
  coverage outside it gets a warning that says so and what it means.
* Test sites outside the calibration domain (the report's ``ood_fraction``, the run's
  per-site flags) get a banner with how many structures are affected and the coverage on
  in-domain and out-of-domain sites.
* Results whose inputs changed since the calibration (dataset, model, split, methods) are
  marked out of date, naming what changed.

The widgets in :mod:`app.widgets` show these texts; tests check them directly.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from core.tables import MISSING


def _finite(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x, digits: int = 3) -> str:
    """A number for people: "—" for None, NaN or ±inf."""
    return f"{x:.{digits}f}" if _finite(x) else MISSING


def expected_range(report: Mapping[str, Any]) -> tuple[float, float] | None:
    """(lo, hi) of the coverage expected for this calibration size, or None when unknown."""
    lo, hi = report.get("coverage_expected_lo"), report.get("coverage_expected_hi")
    return (float(lo), float(hi)) if _finite(lo) and _finite(hi) else None


def coverage_verdict(report: Mapping[str, Any]) -> str | None:
    """"below" / "above" the expected range, or None when inside it (or when it is unknown)."""
    rng, cov = expected_range(report), report.get("coverage")
    if rng is None or not _finite(cov):
        return None
    if cov < rng[0]:
        return "below"
    if cov > rng[1]:
        return "above"
    return None


def coverage_check(report: Mapping[str, Any]) -> str:
    """ "below expected" / "above expected" / "within expected", or MISSING ("—") when the range is unknown."""
    if expected_range(report) is None or not _finite(report.get("coverage")):
        return MISSING
    return f"{coverage_verdict(report) or 'within'} expected"


def expected_text(report: Mapping[str, Any], n_calibration: int | None = None) -> str:
    """ "expected 0.874–0.926 for 60 calibration structures" ("" when the range is unknown)."""
    rng = expected_range(report)
    if rng is None:
        return ""
    size = f" for {n_calibration} calibration structures" if n_calibration else ""
    return f"expected {rng[0]:.3f}–{rng[1]:.3f}{size}"


def coverage_warning(label: str, report: Mapping[str, Any], n_calibration: int | None = None) -> str | None:
    """The warning for a coverage outside its expected range (None when inside or unknown)."""
    verdict = coverage_verdict(report)
    if verdict is None:
        return None
    cov, conf = report["coverage"], report.get("confidence")
    nominal = f" (nominal {conf:.0%})" if _finite(conf) else ""
    if verdict == "below":
        meaning = ("More errors exceed their width than chance allows: the test structures may differ from "
                   "the calibration ones (see the out-of-domain flags), or the split is unlucky — "
                   "try another split seed.")
    else:
        meaning = ("Fewer errors exceed their width than chance allows: the widths are conservative on "
                   "these test structures.")
    return (f"**{label}**: observed coverage {cov:.3f}{nominal} lies {verdict} the range "
            f"{expected_text(report, n_calibration)}. {meaning}")


def level_coverage_text(run, level_index: int, observed: Mapping[str, float]) -> tuple[str, list[str]]:
    """Coverages at one of a run's levels with the range expected there, and warnings for those outside.

    ``observed``: label -> observed coverage at ``run.levels[level_index]``. The range is
    :func:`core.metrics.expected_coverage_interval` for the run's calibration and test
    structures at that level (exact for global split CP, the reference for q_θ).
    """
    from core.metrics import expected_coverage_interval

    level = float(run.levels[level_index])
    lo, hi = expected_coverage_interval(run.cal.n_structures, level, n_test=run.test.n_structures)
    shown = ", ".join(f"{lab} {cov:.3f}" for lab, cov in observed.items())
    text = (f"At {level:.0%}: coverage {shown}; expected {lo:.3f}–{hi:.3f} for {run.cal.n_structures} calibration "
            f"and {run.test.n_structures} test structures.")
    warnings = [f"**{lab}**: coverage {cov:.3f} at {level:.0%} lies {'below' if cov < lo else 'above'} the expected "
                f"range {lo:.3f}–{hi:.3f}." for lab, cov in observed.items() if not lo <= cov <= hi]
    return text, warnings


def coverage_warnings(run) -> list[str]:
    """One warning per method whose coverage lies outside its expected range."""
    n_cal = run.cal.n_structures
    out = [coverage_warning(lab, run.reports[lab], n_cal) for lab in run.labels]
    return [w for w in out if w]


# ------------------------------------------------------------------ out of domain
def ood_counts(run) -> dict[str, int] | None:
    """Out-of-domain test sites and structures: ``{"sites", "n_sites", "structures", "n_structures"}``.

    Sites: site score above the threshold; structures: the structure score above it
    (:mod:`core.domain`). None when the run has no out-of-domain flags.
    """
    flags = run.ood
    if flags is None:
        return None
    return {"sites": int(np.count_nonzero(flags)), "n_sites": int(flags.size),
            "structures": int(run.ood_structures.size), "n_structures": int(run.test.n_structures)}


def _domain_coverage(run) -> str:
    parts = [f"{lab}: {fmt(r.get('coverage_in_domain'))} in domain, {fmt(r.get('coverage_out_of_domain'))} "
             "out of domain" for lab, r in run.reports.items()
             if _finite(r.get("coverage_in_domain")) or _finite(r.get("coverage_out_of_domain"))]
    return ("Coverage — " + "; ".join(parts) + ".") if parts else ""


def ood_banner(run) -> str | None:
    """The out-of-domain warning for a run's test set: None unless a test structure is flagged."""
    counts = ood_counts(run)
    if not counts or counts["structures"] == 0:
        return None
    lines = [
        f"**Out of domain:** {counts['structures']} of {counts['n_structures']} test structures lie outside the "
        f"calibration domain ({counts['sites']} of {counts['n_sites']} sites, "
        f"{counts['sites'] / counts['n_sites']:.1%}, score above the threshold): their environments are unlike the calibration ones, so the coverage "
        "guarantee does not hold there and their widths may be too small.",
        _domain_coverage(run),
        "Out-of-domain sites are circled in the plots; the Structures page colours atoms by it.",
    ]
    return "  \n".join(line for line in lines if line)


def ood_note(run) -> str | None:
    """A quieter note when some test sites score above the threshold but no structure does."""
    counts = ood_counts(run)
    if not counts or counts["sites"] == 0 or counts["structures"] > 0:
        return None
    return (f"{counts['sites']} of {counts['n_sites']} test sites ({counts['sites'] / counts['n_sites']:.1%}) score "
            "above the out-of-domain threshold; about 1 % of in-domain sites do by construction, and no test "
            "structure as a whole is out of domain. " + _domain_coverage(run))


def structure_ood_text(run, structure_id: int, flagged: bool, n_flagged: int, n_atoms: int) -> str | None:
    """A note for one structure shown in 3D (None when neither it nor any atom is flagged)."""
    if run is None or run.domain is None or (not flagged and n_flagged == 0):
        return None
    whole = "lies outside the calibration domain" if flagged else "is within the calibration domain as a whole"
    return (f"Structure #{structure_id} {whole}; {n_flagged} of {n_atoms} atoms score above the out-of-domain "
            "threshold — their widths carry no coverage guarantee.")


# ----------------------------------------------------------------------- staleness
def stale_reasons(produced_with: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What changed since a result was produced, one phrase per setting.

    Keys starting with "_" are internal (content hashes): they are named, not shown.
    """
    out = []
    for key in dict.fromkeys([*produced_with, *now]):
        old, new = produced_with.get(key), now.get(key)
        if old == new:
            continue
        if key.startswith("_"):
            out.append(f"the {key[1:]} changed")
        else:
            out.append(f"{key}: {_show(old)} → {_show(new)}")
    return out


def _show(value) -> str:
    if value is None:
        return MISSING
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)
