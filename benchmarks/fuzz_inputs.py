"""Fuzz ``flexcal`` with malformed and hostile inputs and write the table ``docs/FUZZ.md``.

Run::

    .venv/bin/python -m benchmarks.fuzz_inputs [--only NAME,...] [--fast] [--timeout S] [--out docs/FUZZ.md]

Every case of :func:`benchmarks.fuzz_catalogue.all_cases` builds its inputs in a fresh folder,
runs ``flexcal`` on them as a subprocess (a hang is a timeout, not a stuck benchmark) and is
classified:

* **good**: a bad input ends with exit code 2, exactly one ``error:`` line on stderr that
  matches what the case expects (file, frame/line, key or argument and the value), no
  traceback, and every file that existed before the run unchanged; a valid or recoverable
  input exits 0 and its result passes the case's check;
* **weak**: exit code 2 without a traceback, but the message is not the one expected or
  spans several lines;
* **bad**: a traceback, a timeout, any other exit code, a bad input accepted (exit 0: a silent
  wrong result), a valid input refused, a result that fails its check, or an input file
  changed or lost.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "FUZZ.md"
FLEXCAL = Path(sys.executable).with_name("flexcal")


@dataclass
class Outcome:
    """What one case did and how it is judged."""

    name: str
    group: str
    what: str
    argv: list[str]
    code: int | None
    stdout: str
    stderr: str
    seconds: float
    changed: list[str]
    verdict: str = ""
    note: str = ""
    shows: str | None = None   # the output line the table shows for a valid input

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if re.search(r"\berror:", line)]

    @property
    def silent(self) -> bool:
        return self.verdict == "bad" and self.note.startswith("silent")


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every regular file under ``folder`` (links and pipes are not opened)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_case(case, folder: Path, timeout: float = 180.0) -> Outcome:
    """Build ``case`` in ``folder``, run ``flexcal`` on it, and judge the outcome."""
    argv = [str(a) for a in case.build(folder)]
    before = snapshot(folder)
    cmd = [str(FLEXCAL)] if FLEXCAL.exists() else [sys.executable, "-m", "core.cli"]
    start = time.perf_counter()
    try:
        res = subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=timeout, cwd=folder,
                             env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        code, out, err = res.returncode, res.stdout, res.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = None, _text(exc.stdout), _text(exc.stderr)
    seconds = time.perf_counter() - start
    after = snapshot(folder)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    outcome = Outcome(case.name, case.group, case.what, argv, code, out, err, seconds, changed,
                      shows=getattr(case.check, "shows", None))
    judge(case, outcome, folder)
    return outcome


def _text(raw) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else (raw or "")


def judge(case, o: Outcome, folder: Path) -> None:
    """Set ``o.verdict`` (good / weak / bad) and ``o.note``."""
    if o.code is None:
        o.verdict, o.note = "bad", f"timeout after {o.seconds:.0f} s"
    elif o.traceback:
        o.verdict, o.note = "bad", "traceback"
    elif o.changed:
        o.verdict, o.note = "bad", f"input changed or lost: {', '.join(o.changed)}"
    elif case.expect is None:
        if o.code != 0:
            o.verdict, o.note = "bad", f"valid input refused (exit {o.code})"
        else:
            problem = case.check(folder, o.stdout, o.stderr) if case.check else None
            o.verdict, o.note = ("bad", f"silent wrong result: {problem}") if problem else ("good", "")
    elif o.code == 0:
        o.verdict, o.note = "bad", "silent: a bad input was accepted (exit 0)"
    elif o.code != 2:
        o.verdict, o.note = "bad", f"exit code {o.code}"
    elif len(o.error_lines) != 1:
        o.verdict, o.note = "weak", f"{len(o.error_lines)} error lines"
    elif not re.search(case.expect, o.error_lines[0]):
        o.verdict, o.note = "weak", f"message does not match {case.expect!r}"
    else:
        o.verdict = "good"


def message(o: Outcome, folder: Path, limit: int = 230, shows: str | None = None) -> str:
    """The line a user reads (the error line, else the WARNING the case checks), paths shortened."""
    warned = [line for line in (o.stdout + o.stderr).splitlines() if "WARNING" in line or "warning:" in line]
    lines = o.error_lines or [line for line in warned if shows and shows in line] or warned
    text = (lines[-1] if lines else "(exit 0, no message; result checked)")
    text = text.replace(str(folder) + "/", "").replace(str(folder), ".")
    text = text.replace(str(ROOT) + "/", "")
    text = re.sub(r"/tmp/[\w./-]*?/(\w+\.(?:xyz|npz|model))", r"\1", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(outcomes: list[Outcome], folders: dict[str, Path]) -> str:
    head = ("| # | group | input | command | exit | message (stderr) | traceback | silent wrong | input intact | verdict |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for i, o in enumerate(outcomes, 1):
        command = " ".join(Path(a).name if a.startswith("/") and a != "/proc/flexcal-fuzz.npz" else a for a in o.argv)
        command = command if len(command) <= 110 else command[:109] + "…"
        code = "timeout" if o.code is None else str(o.code)
        msg = message(o, folders[o.name], shows=o.shows).replace("|", "\\|")
        verdict = o.verdict + (f" ({o.note})" if o.note else "")
        rows.append(f"| {i} | {o.group} | {o.what} | `{command.replace('|', '/')}` | {code} | {msg} | {'yes' if o.traceback else 'no'} | "
                    f"{'yes' if o.silent else 'no'} | {'no' if o.changed else 'yes'} | {verdict.replace('|', '/')} |")
    return head + "\n".join(rows) + "\n"


def summary(outcomes: list[Outcome]) -> str:
    n = len(outcomes)
    count = {v: sum(o.verdict == v for o in outcomes) for v in ("good", "weak", "bad")}
    return (f"{n} inputs: {count['good']} good, {count['weak']} weak, {count['bad']} bad; "
            f"{sum(o.traceback for o in outcomes)} tracebacks, {sum(o.silent for o in outcomes)} silent wrong results, "
            f"{sum(bool(o.changed) for o in outcomes)} lost or changed inputs, "
            f"{sum(o.code is None for o in outcomes)} timeouts")


def write_report(outcomes: list[Outcome], folders: dict[str, Path], path: Path, seconds: float) -> None:
    text = (
        "# Fuzz table: malformed and hostile inputs\n\n"
        "Each input below was built by `benchmarks/fuzz_catalogue.py` and run through the `flexcal` console script "
        "as a subprocess (timeout 180 s) by `benchmarks/fuzz_inputs.py`; reproduce with\n\n"
        "```bash\n.venv/bin/python -m benchmarks.fuzz_inputs      # --fast: only the cases that fail before a model "
        "runs\n```\n\n"
        "**good**: a bad input exits with code 2 and one `error:` line naming the file, frame/line, key or argument "
        "and the value received (the expected pattern of each case is in the catalogue), no traceback, every input "
        "file unchanged; a valid or recoverable input exits 0 and its result passes the case's check (duplicates "
        "dropped and named, a tiny test set flagged, ...). **weak**: exit 2 without a traceback but not the message "
        "expected. **bad**: a traceback, a timeout, a bad input accepted, a valid one refused, a wrong result, or an "
        "input changed. `tests/test_fuzz.py` replays the fast cases in-process.\n\n"
        f"**Summary: {summary(outcomes)}** ({seconds:.0f} s in all).\n\n"
        + table(outcomes, folders)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv=None) -> int:
    from benchmarks.fuzz_catalogue import all_cases

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=None, help="comma-separated case names")
    ap.add_argument("--fast", action="store_true", help="only the cases that fail before a model runs")
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    cases = all_cases()
    if args.only:
        wanted = set(args.only.split(","))
        cases = [c for c in cases if c.name in wanted]
    if args.fast:
        cases = [c for c in cases if c.fast]
    outcomes, folders = [], {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flexcal-fuzz-") as tmp:
        for case in cases:
            folder = Path(tmp) / case.name
            folder.mkdir()
            folders[case.name] = folder
            o = run_case(case, folder, args.timeout)
            outcomes.append(o)
            print(f"{o.verdict:5s} {o.seconds:6.1f}s  {case.name}: {o.note or message(o, folder, 150, o.shows)}", flush=True)
        write_report(outcomes, folders, args.out, time.perf_counter() - start)
    print(summary(outcomes))
    print(f"wrote {args.out}")
    return 0 if all(o.verdict == "good" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
