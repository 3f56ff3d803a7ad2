"""The terminal side of ``flexcal``: progress bars, notes, warnings, tables and JSON.

Conventions:

* results (tables, reports, JSON) go to the **real stdout** through :meth:`UI.result`;
  everything else goes to stderr, so ``--json`` output stays one valid JSON document;
* progress bars (tqdm, with rate and ETA) and notes are silenced by ``-q``;
* ``WARNING:`` lines (coverage outside its expected spread, out-of-domain test structures,
  tiny test sets) are never silenced: in text mode they follow the table on stdout, with
  ``--json`` they go to stderr and into the JSON's ``"warnings"`` list;
* bad input is reported by :class:`UserError` (or ValueError, ...) as one line, exit code 2.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from core.tables import MISSING, column_label

__all__ = [
    "EXIT_OK", "EXIT_USAGE", "EXIT_INTERRUPTED", "UNITS", "UserError", "UI", "fmt", "format_table",
    "expected_text", "coverage_warnings", "domain_warnings", "size_warning", "library_notices", "one_line",
]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
UNITS = "Units: forces, errors and widths in eV/Å; energies in eV."
#: Fewer test structures than this make a coverage number uninformative (issue 12 item 5).
MIN_TEST_STRUCTURES = 10
#: Modules whose import-time notices ``-q`` silences (e3nn's torch.load note, cuequivariance, ...).
_NOISY_MODULES = r"(e3nn|cuequivariance|cuequivariance_torch|mace|torch|torch_geometric)(\.|$)"


class UserError(Exception):
    """Bad input detected by the CLI itself (reported in one line, exit code 2)."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (KeyError without its quotes)."""
    text = str(exc)
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    return " ".join(text.split()) or type(exc).__name__


# ------------------------------------------------------------------ the UI object
class UI:
    """Progress and notes on stderr (silenced by ``quiet``); results on ``out`` (stdout).

    While a command runs, ``sys.stdout`` points at stderr (or nowhere with ``quiet``):
    libraries such as mace print notices at import; only :meth:`result` writes to ``out``.
    """

    def __init__(self, quiet: bool = False, out=None, json_mode: bool = False):
        self.quiet = quiet
        self.out = out if out is not None else sys.stdout
        self.json_mode = json_mode
        self.warnings: list[str] = []
        self._bar = None

    def result(self, text: str = "") -> None:
        """One line (or block) of the command's result on stdout."""
        self._close_bar()
        print(text, file=self.out, flush=True)

    def info(self, message: str) -> None:
        """A progress note on stderr (not with ``-q``)."""
        self._close_bar()
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        """A ``WARNING:`` line, kept for :meth:`flush_warnings` (never silenced)."""
        if message not in self.warnings:
            self.warnings.append(message)

    def flush_warnings(self) -> None:
        """Print the collected warnings: after the table on stdout, or on stderr with ``--json``."""
        self._close_bar()
        for message in self.warnings:
            print(f"WARNING: {message}", file=sys.stderr if self.json_mode else self.out, flush=True)

    def json(self, obj) -> None:
        """``obj`` as indented JSON on stdout (NaN/inf -> null)."""
        from core.evaluation import jsonable

        self.result(json.dumps(jsonable(obj), indent=2, allow_nan=False))

    # -------------------------------------------------------------- progress bars
    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _new_bar(self, desc: str, total=None, unit="it"):
        from tqdm.auto import tqdm

        self._close_bar()
        self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
        return self._bar

    def progress(self, desc: str = "featurize", unit: str = "structure"):
        """A ``progress(done, total)`` callback (:mod:`core.progress`) drawing a bar with ETA, or None."""
        if self.quiet:
            return None
        state: dict[str, Any] = {"bar": None}

        def progress(done: int, total: int) -> None:
            bar = state["bar"]
            if bar is None or bar is not self._bar:
                bar = state["bar"] = self._new_bar(desc, total=total, unit=unit)
            bar.total = total
            bar.update(max(done - bar.n, 0))
            if done >= total:
                self._close_bar()

        return progress

    def step_progress(self, desc: str):
        """A ``progress(done, total[, message])`` callback (active learning: ``core.progress``'s
        ``(done, total)``) drawing a bar, or None."""
        if self.quiet:
            return None
        bar_of = self.progress(desc, unit="step")

        def progress(done: int, total: int, message: str = "") -> None:
            bar_of(done, total)
            if self._bar is not None and message:
                self._bar.set_postfix_str(str(message)[:60], refresh=True)

        return progress

    def epoch_callback(self, max_epochs: int | None = None):
        """A q_θ training callback ``(epoch, train_loss, val_loss)`` drawing a bar, or None."""
        if self.quiet:
            return None
        state: dict[str, Any] = {"bar": None}

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


@contextlib.contextmanager
def library_notices(ui: UI) -> Iterator[None]:
    """Route library chatter while a command runs.

    ``sys.stdout`` goes to stderr (mace prints notices at import); with ``-q`` it goes
    nowhere, and warnings from e3nn/cuequivariance/mace/torch and log records below ERROR
    are dropped. Other Python warnings (FlexCal's own) are shown as one ``warning:`` line.
    """
    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
        print(f"flexcal: warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)

    sink = io.StringIO() if ui.quiet else sys.stderr
    previous_disable = logging.root.manager.disable
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.showwarning = show
        if ui.quiet:
            warnings.filterwarnings("ignore", module=_NOISY_MODULES)
            logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous_disable)


# ----------------------------------------------------------------------- numbers
def fmt(value, digits: int = 3) -> str:
    """A number for people: ``digits`` decimals, :data:`core.tables.MISSING` ("—") for None/NaN, ``inf``."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        value = float(value)
        if math.isnan(value):
            return MISSING
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}"
    return str(value)


def _number(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def expected_text(report: Mapping[str, Any]) -> str:
    """``"0.870-0.930"``: the coverage interval expected for the calibration size, or ``—`` (MISSING)."""
    lo, hi = _number(report.get("coverage_expected_lo")), _number(report.get("coverage_expected_hi"))
    if lo is None or hi is None:
        return MISSING
    return f"{lo:.3f}-{hi:.3f}"


# ------------------------------------------------------------------------ tables
#: Keys of the standard result table; ``coverage_expected`` is drawn from ``_lo``/``_hi``.
TABLE_COLUMNS = ["label", "coverage", "coverage_expected", "coverage_gap", "mean_width", "width_ratio", "spearman",
                 "auroc", "miscalibration_area", "worst_species_coverage", "ood_fraction"]
#: Widest a header line grows before its words wrap onto the next line (a wider column keeps its width).
HEADER_WIDTH = 12


def format_table(table, columns: Sequence[str | tuple[str, str]] | None = None) -> str:
    """Aligned plain-text table of study/run rows for people.

    Headers are the readable labels with units of :mod:`core.tables` (``mean_width`` ->
    "Mean width (eV/Å)"), wrapped over as many lines as needed to keep columns narrow;
    ``columns`` holds keys, or ``(key, header)`` pairs for a header of the caller's own.
    Numbers have 3 decimals, infinite widths print as ``inf`` and missing values as
    :data:`core.tables.MISSING` ("—"). A ``split`` column is added when the rows span several
    splits; keys absent from ``table`` are skipped (``coverage_expected`` needs
    ``coverage_expected_lo``/``_hi``).
    """
    columns = [c if isinstance(c, tuple) else (c, None) for c in (columns or TABLE_COLUMNS)]
    if "split" in table.columns and table["split"].nunique() > 1 and "split" not in [k for k, _ in columns]:
        columns.insert(1, ("split", None))
    present = set(table.columns)
    if {"coverage_expected_lo", "coverage_expected_hi"} <= present:
        present.add("coverage_expected")
    columns = [(k, h or column_label(k)) for k, h in columns if k in present]
    rows = [[_cell(row, k) for k, _ in columns] for _, row in table.iterrows()]
    cell_widths = [max([len(r[j]) for r in rows], default=0) for j in range(len(columns))]
    heads = [_wrap(h, max(HEADER_WIDTH, w)) for (_, h), w in zip(columns, cell_widths)]
    widths = [max([w, *map(len, lines)]) for w, lines in zip(cell_widths, heads)]
    depth = max(map(len, heads), default=1)
    heads = [[""] * (depth - len(lines)) + lines for lines in heads]  # bottom-aligned
    numeric = [bool(rows) and all(_numeric(r[j]) for r in rows) for j in range(len(columns))]

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if numeric[j] and j else c.ljust(w)
                         for j, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line([h[i] for h in heads]) for i in range(depth)]
    out.append("  ".join("-" * w for w in widths))
    out += [line(r) for r in rows]
    return "\n".join(out)


def _wrap(text: str, width: int) -> list[str]:
    """``text`` split at spaces into lines of at most ``width`` characters (a longer word stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def _cell(row, key: str) -> str:
    if key == "coverage_expected":
        return expected_text(row)
    value = row[key]
    return value if isinstance(value, str) else fmt(value)


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        lo, sep, hi = text.partition("-")
        return text in (MISSING, "inf") or (bool(sep) and bool(lo) and _numeric(lo) and _numeric(hi))


def coverage_warnings(label: str, report: Mapping[str, Any], where: str = "", n_calibration: int | None = None
                      ) -> list[str]:
    """``[message]`` when the observed coverage lies outside its expected spread, else ``[]``.

    ``report``: a calibration report or a study-table row (``coverage``,
    ``coverage_expected_lo``/``_hi``, ``coverage_outside_expected``); ``n_calibration``
    (default: the row's ``n_cal_structures``) is named in the message.
    """
    cov = _number(report.get("coverage"))
    lo, hi = _number(report.get("coverage_expected_lo")), _number(report.get("coverage_expected_hi"))
    outside = report.get("coverage_outside_expected")
    if isinstance(outside, float) and math.isnan(outside):
        outside = None
    if outside is None and None not in (cov, lo, hi):
        outside = not (lo <= cov <= hi)
    if not outside or cov is None:
        return []
    side = "below" if lo is not None and cov < lo else "above"
    n_cal = n_calibration if n_calibration is not None else report.get("n_cal_structures")
    from_cal = f" for {int(n_cal)} calibration structures" if _number(n_cal) is not None else ""
    return [f"{label}{where}: coverage {cov:.3f} is {side} the range expected{from_cal} "
            f"({expected_text(report)}) at confidence {fmt(report.get('confidence'), 2)}"]


def domain_warnings(split: str, flags, structure_ids, reports: Mapping[str, Mapping[str, Any]] | None = None
                    ) -> list[str]:
    """``[message]`` when test sites lie outside the calibration domain.

    ``flags``: per-site out-of-domain flags (n,) or None (then the reports' ``ood_fraction``
    is used); ``reports``: label -> report, for the coverage of each method on those sites.
    """
    import numpy as np

    reports = dict(reports or {})
    if flags is None:
        fractions = [f for f in (_number(r.get("ood_fraction")) for r in reports.values()) if f]
        if not fractions:
            return []
        text = f"{split}: {100 * max(fractions):.1f}% of the test sites lie outside the calibration domain"
    else:
        flags = np.asarray(flags, dtype=bool)
        if not flags.any():
            return []
        ids = np.asarray(structure_ids)
        n_flagged, n_total = np.unique(ids[flags]).size, np.unique(ids).size
        text = (f"{split}: {n_flagged} of {n_total} test structures have sites outside the calibration domain "
                f"({int(flags.sum())} of {flags.size} sites, ood_fraction {flags.mean():.3f})")
    out_cov = {k: _number(r.get("coverage_out_of_domain")) for k, r in reports.items()}
    out_cov = {k: v for k, v in out_cov.items() if v is not None}
    if out_cov:
        text += "; coverage on them: " + ", ".join(f"{k} {v:.3f}" for k, v in out_cov.items())
    return [text]


def size_warning(split: str, n_sites: int, n_structures: int) -> list[str]:
    """``[message]`` for a test set too small for its coverage to mean much."""
    if n_structures >= MIN_TEST_STRUCTURES:
        return []
    return [f"{split}: coverage from {n_sites} sites of {n_structures} structures is not informative "
            f"(fewer than {MIN_TEST_STRUCTURES} test structures)"]
