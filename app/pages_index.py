"""The app's pages, in navigation order (used by ``main.py`` and ``st.switch_page``).

The page files live in ``app/views/``, not ``app/pages/``: Streamlit treats a
``pages/`` folder next to the main script as the old (v1) multipage layout and
then runs page files without the entry point, which breaks ``st.navigation``
apps under ``AppTest`` (the entry point's state set-up would not run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

_DIR = Path(__file__).resolve().parent / "views"


@dataclass(frozen=True)
class PageInfo:
    name: str
    title: str
    icon: str
    default: bool = False

    @property
    def path(self) -> Path:
        return _DIR / f"{self.name}.py"

    @property
    def relpath(self) -> str:
        """Path relative to ``app/main.py`` (what ``st.switch_page`` and AppTest take)."""
        return f"views/{self.name}.py"

    @property
    def url(self) -> str:
        return self.name


PAGES = (
    # Material icons ship with Streamlit (no emoji font needed, works offline)
    PageInfo("data", "Data", ":material/dataset:", default=True),
    PageInfo("model", "Model", ":material/neurology:"),
    PageInfo("calibrate", "Calibrate", ":material/tune:"),
    PageInfo("diagnose", "Diagnose", ":material/monitoring:"),
    PageInfo("compare", "Compare", ":material/compare_arrows:"),
    PageInfo("structures", "Structures", ":material/view_in_ar:"),
    PageInfo("export", "Export", ":material/download:"),
    PageInfo("apply", "Apply", ":material/play_circle:"),
)
BY_NAME = MappingProxyType({p.name: p for p in PAGES})


def page(name: str) -> str:
    """The ``st.switch_page`` target of a page by name."""
    return BY_NAME[name].relpath
