"""The ``flexcal`` command line.

Subcommands (``flexcal <command> --help`` teaches each):

* ``featurize`` — run a MACE model over a labelled extxyz file -> per-site table (.npz)
* ``calibrate`` — fit a calibrator on a site table -> calibrator (.npz)
* ``evaluate``  — score a calibrator on a site table (coverage with its expected range, width,
  correlation, out-of-domain fraction, ...)
* ``run``       — all of the above, end to end, for several methods at once
* ``study``     — the studies of METHOD §5 (in-domain, unseen, transfer, active-learning)
* ``predict``   — annotate structures with a saved calibrator (widths, flagged frames; core.apply)

Layout: :mod:`core.cli.parser` (arguments and help), :mod:`core.cli.commands` and
:mod:`core.cli.commands_study` (what each command does, over :mod:`core.sources`,
:mod:`core.evaluation` and :mod:`core.studies`), :mod:`core.cli.ui` (progress, warnings,
tables).

Exit codes: 0 success; 2 bad input (one line on stderr, no traceback); 130 interrupted.
Progress goes to stderr so stdout stays clean for ``--json``. Set ``FLEXCAL_DEBUG=1`` to see
the traceback of a user error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from core.cli.parser import build_parser
from core.cli.ui import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UI, UserError, library_notices, one_line

__all__ = ["main", "build_parser", "UserError", "EXIT_OK", "EXIT_USAGE", "EXIT_INTERRUPTED"]


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


_one_line = one_line  # the historical private name


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
    ui = UI(quiet=getattr(args, "quiet", False), out=sys.stdout, json_mode=getattr(args, "json", False))
    try:
        with library_notices(ui):
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
        text = one_line(exc)
        if isinstance(exc, ValueError) and type(exc).__name__ == "DatasetError":  # the reader's hints as flags
            from core.cli.guards import cli_hints

            text = cli_hints(text)
        print(f"flexcal {args.command}: error: {text}", file=sys.stderr)
        return EXIT_USAGE
