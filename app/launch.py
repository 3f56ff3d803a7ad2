"""``python -m app.launch [streamlit options]``: the app, warming up from the first second.

What ``make app`` runs. The same as ``streamlit run app/main.py [options]`` (options such as
``--server.port 8502`` pass through), except that it first starts a warm-up process that featurizes
the default demo into the feature cache (:func:`app.prewarm.start_app_demo_process`, before even
Streamlit is imported: the first diagnosis waits for it), then a thread importing what calibrating
needs (:func:`app.prewarm.start`), while the server boots and the browser loads the page
(benchmarks/bench_app.py measures the difference). ``FLEXCAL_WARM_DEMO`` names the demo family to
featurize (default: the default family; empty or ``0``: none, and the thread imports mace-torch too).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MAIN = Path(__file__).resolve().parent / "main.py"


def main(argv: list[str] | None = None) -> int:
    root = str(MAIN.parent.parent)
    if root not in sys.path:  # a source tree without `pip install -e .`
        sys.path.insert(0, root)
    from app import prewarm

    family = warm_demo_family()
    if family:  # the first diagnosis waits for this process: start it before Streamlit's import (~0.6 s)
        prewarm.start_app_demo_process(family)
    from streamlit.web import cli as stcli

    prewarm.start(demo_family=family)  # the thread (the process is running already)
    sys.argv = ["streamlit", "run", str(MAIN), *(sys.argv[1:] if argv is None else argv)]
    return stcli.main()


def warm_demo_family() -> str | None:
    """The demo family to featurize at start-up: ``$FLEXCAL_WARM_DEMO`` (empty or 0: none), else the default.

    Any other value: one line on stderr naming the variable and the value, exit code 2.
    """
    from core.demo import DEFAULT_FAMILY, FAMILIES

    value = os.environ.get("FLEXCAL_WARM_DEMO", DEFAULT_FAMILY).strip()
    if value in ("", "0"):
        return None
    if value not in FAMILIES:
        print(f"FLEXCAL_WARM_DEMO: expected one of {sorted(FAMILIES)}, empty or 0, got {value!r}", file=sys.stderr)
        raise SystemExit(2)
    return value


if __name__ == "__main__":
    sys.exit(main())
