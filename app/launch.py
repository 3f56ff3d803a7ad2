"""``python -m app.launch [streamlit options]``: the app, with torch & co. loading from the first second.

What ``make app`` runs. The same as ``streamlit run app/main.py [options]`` (options such as
``--server.port 8502`` pass through), except that :func:`app.prewarm.start` begins importing the
heavy modules while the server boots and the browser loads the page, so the first calibration
does not wait for them (benchmarks/bench_app.py measures the difference).
"""

from __future__ import annotations

import sys
from pathlib import Path

MAIN = Path(__file__).resolve().parent / "main.py"


def main(argv: list[str] | None = None) -> int:
    root = str(MAIN.parent.parent)
    if root not in sys.path:  # a source tree without `pip install -e .`
        sys.path.insert(0, root)
    from streamlit.web import cli as stcli

    from app import prewarm

    prewarm.start()
    sys.argv = ["streamlit", "run", str(MAIN), *(sys.argv[1:] if argv is None else argv)]
    return stcli.main()


if __name__ == "__main__":
    sys.exit(main())
