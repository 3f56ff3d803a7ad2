"""Streamlit glue between the pages and ``core``: the app's caches, nothing else.

Reading datasets (``st.cache_data`` keyed by the bytes), loading potentials
(``st.cache_resource``, few entries, through :func:`core.potentials.load_potential`),
featurizing with a bounded, content-keyed cache, the methods the registry can build, and
the figures of a run (built by :mod:`app.figures_catalogue`). Every cache is bounded;
nothing here holds per-session state at module level (jobs and results live in
``st.session_state``). The non-Streamlit parts live in :mod:`app.catalog` (choices and
messages), :mod:`app.job` (the featurize and calibration jobs), :mod:`app.figures_catalogue`,
:mod:`app.notices` and :mod:`core.export`.
"""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import streamlit as st

from app.catalog import (
    DEMO,
    SYNTHETIC,
    SYNTHETIC_FILE,
    TRUST_REASON,
    UntrustedModelFile,
    UploadTooLarge,
    digest,
    features_cache,
    safe_filename,
)

CACHE_DIR = features_cache()  # the feature cache and the models' metadata records
SITES_CACHE_ENTRIES = 4
MODEL_KINDS = ("synthetic", "demo", "named", "path")


def max_upload_mb() -> float:
    """The upload limit in MB: ``server.maxUploadSize`` (``.streamlit/config.toml``)."""
    try:
        return float(st.get_option("server.maxUploadSize"))
    except Exception:  # option missing in some test harnesses
        return 200.0


# =============================================================== datasets
@st.cache_data(max_entries=8, ttl=3600, show_spinner=False)
def _read_bytes(data: bytes, filename: str, max_bytes: int, max_atoms: int, max_extent: float):
    from core.data import read_dataset

    return read_dataset(data, name=filename, max_bytes=max_bytes, max_atoms=max_atoms, max_extent=max_extent)


def read_upload(data: bytes, filename: str, *, max_atoms: int | None = None, max_extent: float | None = None):
    """Read an uploaded dataset; raises ``UploadTooLarge`` or ``core.data.DatasetError``.

    ``max_atoms`` (atoms per structure) and ``max_extent`` (Å, largest |coordinate| along a
    non-periodic direction) bound the reader's cost (None: core.data_checks' defaults); the
    byte limit is the upload limit. Cached by the bytes and limits (``st.cache_data``).
    """
    from core.data_checks import DEFAULT_MAX_ATOMS, DEFAULT_MAX_EXTENT

    limit = max_upload_mb()
    if len(data) > limit * 1024**2:
        raise UploadTooLarge(
            f"{filename} is {len(data) / 1024**2:.1f} MB; the upload limit is {limit:.0f} MB. "
            "Use a smaller excerpt, or raise server.maxUploadSize in .streamlit/config.toml."
        )
    return _read_bytes(bytes(data), filename, int(limit * 1024**2),
                       DEFAULT_MAX_ATOMS if max_atoms is None else int(max_atoms),
                       DEFAULT_MAX_EXTENT if max_extent is None else float(max_extent))


@st.cache_data(max_entries=6, show_spinner=False)
def load_demo(kind: str, name: str):
    """(Dataset, key) of a demo dataset. The key hashes the file content."""
    from core.data import read_dataset

    if kind == SYNTHETIC:
        from core.synthetic_demo import synthetic_extxyz_bytes

        data = synthetic_extxyz_bytes()
        return read_dataset(data, name=SYNTHETIC_FILE), f"synthetic:{digest(data)}"
    from core.sources import resolve_data

    dataset, _family = resolve_data(name)
    path = Path(dataset.source)
    return dataset, f"demo:{name}:{digest(path.read_bytes())}"


@st.cache_resource(max_entries=1, show_spinner=False)
def prewarm() -> bool:
    """Import the heavy modules (torch, the calibrators) in the background (:mod:`app.prewarm`).

    The first page only reads data; by the time the user trains, torch is loaded.
    """
    from app import prewarm as warm

    warm.start()
    return True


#: The app's copy of 3Dmol.js (``make venv`` puts it there; Streamlit serves ``app/static/`` when
#: ``server.enableStaticServing`` is on, as .streamlit/config.toml sets).
STATIC_3DMOL = Path(__file__).resolve().parent / "static" / "3Dmol-min.js"


def viewer_js_url() -> str | None:
    """Same-origin URL of the served 3Dmol.js (fetched once, then cached by the browser), or None
    when static serving is off or the file is missing: the viewer then inlines the library."""
    if not st.get_option("server.enableStaticServing") or not STATIC_3DMOL.is_file():
        return None
    base = (st.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{base}/app/static/{STATIC_3DMOL.name}" if base else f"/app/static/{STATIC_3DMOL.name}"


# ============================================================= potentials
@st.cache_resource(max_entries=2, show_spinner=False)
def load_model(kind: str, value: str, trusted: bool = False):
    """A potential by kind: ``synthetic``, ``demo`` (family), ``named`` (a registry name) or ``path``.

    Everything but the synthetic mock goes through :func:`core.potentials.load_potential`;
    a path whose loading runs code is refused unless ``trusted`` (the page's trust box).
    """
    if kind == SYNTHETIC:
        from core.synthetic_demo import SyntheticPotential

        return SyntheticPotential()
    from core.potentials import load_potential

    if kind == DEMO:  # once per process, shared with the warm-up; deferred once its metadata is recorded
        from app.prewarm import demo_potential
        from core.demo import DEFAULT_FAMILY

        return demo_potential(value or DEFAULT_FAMILY, records=CACHE_DIR)
    if kind == "named":
        return load_potential(str(value))
    if kind == "path":
        from core.potentials import UntrustedModelError

        path = Path(value).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{value}: no such model file on this machine")
        try:
            return load_potential(str(path), trusted=bool(trusted))
        except UntrustedModelError:
            raise UntrustedModelFile(f"{path.name}: not loaded. {TRUST_REASON} Tick “I trust this file” "
                                     "to load it.") from None
    raise ValueError(f"model kind: expected one of {MODEL_KINDS}, got {kind!r}")


def load_uploaded_model(data: bytes, filename: str, trusted: bool):
    """Load an uploaded model file — only after the user confirmed they trust it.

    Without ``trusted`` this raises :class:`UntrustedModelFile` before the bytes
    are written or unpickled (``torch.load`` is never reached).
    """
    if trusted is not True:
        raise UntrustedModelFile(TRUST_REASON)
    folder = Path(tempfile.gettempdir()) / "flexcal-uploaded-models"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest(data)}-{safe_filename(filename)}"
    if not path.exists():
        from core.io import atomic_write_bytes

        atomic_write_bytes(path, data)
    return load_model("path", str(path), True)


# ================================================================ features
class BoundedCache:
    """A small thread-safe LRU map shared by sessions through ``st.cache_resource``.

    Keys are content hashes (dataset bytes + model identity), values immutable
    SiteTables, so sharing them leaks nothing between sessions.
    """

    def __init__(self, max_entries: int):
        self.max_entries = int(max_entries)
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key, value) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


@st.cache_resource(max_entries=1, show_spinner=False)
def _sites_cache() -> BoundedCache:
    return BoundedCache(SITES_CACHE_ENTRIES)


def featurize_job(dataset, dataset_key: str, potential, *, potential_label: str | None = None):
    """A started :class:`app.job.FeaturizeJob` over the app's caches (memory, then ``CACHE_DIR`` on disk).

    A dataset + model featurized before (in any session of this process) comes back at once:
    the returned job is already ``done`` with ``cache_hit`` True and no thread was started.
    """
    from app.job import FeaturizeJob

    return FeaturizeJob(dataset, dataset_key, potential, cache=_sites_cache(), cache_dir=CACHE_DIR,
                        potential_label=potential_label).start()


# ================================================================= methods
@st.cache_resource(max_entries=1, show_spinner=False)
def buildable_methods() -> tuple[str, ...]:
    """Registry methods whose calibrator can be built here (a method whose module is missing is left out)."""
    from core.calibration.registry import method_names, method_spec

    out = []
    for name in method_names():
        try:
            method_spec(name).factory(0.9, 0)
        except (ImportError, TypeError, ValueError):
            continue
        out.append(name)
    return tuple(out)


def usable_methods(sites) -> list[str]:
    """Methods the Calibrate page offers for these sites (registry order)."""
    from core.calibration.registry import available_method_names

    buildable = set(buildable_methods())
    return [m for m in available_method_names(sites) if m in buildable]


# ================================================================= figures
def method_figures(run, label: str) -> dict[str, Any]:
    """The Diagnose page's figures for one method (plus the all-method ones), by name.

    Cached per (run token, method): switching pages or methods back and forth does not
    rebuild them. The figures are shared read-only objects.
    """
    return _method_figures_cached(run.token, label, run)


@st.cache_resource(max_entries=12, ttl=3600, show_spinner=False)
def _method_figures_cached(token: str, label: str, _run) -> dict[str, Any]:
    from app.figures_catalogue import build_method_figures

    return build_method_figures(_run, label)
