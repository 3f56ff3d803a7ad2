"""Cached glue between the Streamlit pages and ``core``.

What lives here: reading datasets (``st.cache_data`` keyed by the bytes), loading
potentials (``st.cache_resource``, few entries), featurizing with a bounded,
content-keyed cache, splitting, and the background training job whose live loss
curve the Calibrate page draws. The science (readers, potentials, calibrators,
metrics, figures, exports) is in ``core``; every cache is bounded; nothing here
holds per-session state at module level (jobs and results live in
``st.session_state``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import streamlit as st

SYNTHETIC = "synthetic"
DEMO = "demo"
SYNTHETIC_LABEL = "Synthetic Cu–Au (generated here; not a MACE demo)"
SYNTHETIC_FILE = "synthetic_cu_au.extxyz"
FOUNDATION_MODELS = (
    "mace-mp-0b3-medium",
    "mace-mp-0-small",
    "mace-mp-0-medium",
    "mace-mp-0-large",
    "mace-mpa-0-medium",
    "mace-omat-0-small",
    "mace-omat-0-medium",
    "mace-off23-small",
    "mace-off23-medium",
    "mace-off23-large",
)
DATA_TYPES = ("extxyz", "xyz", "traj", "db", "json", "cif", "vasp", "xml", "out", "pdb", "gz")
MODEL_TYPES = ("model", "pt", "pth")
TRUST_REASON = (
    "A MACE .model file is a Python pickle: loading it runs whatever code the file contains, "
    "with your permissions. Only load model files that you made yourself or got from a source "
    "you trust. FlexCal never loads an uploaded model until you confirm this."
)
CACHE_DIR = Path(os.environ.get("FLEXCAL_CACHE_DIR", ".flexcal_cache")) / "features"
# torch intra-op threads for the app's own work (featurize, q_θ training). 1 by default: on two
# shared cores, 2 threads were 6x (MACE featurize) to 30x (q_θ) slower than 1 under load.
TORCH_THREADS = int(os.environ.get("FLEXCAL_APP_TORCH_THREADS", "1"))
SITES_CACHE_ENTRIES = 4


@contextlib.contextmanager
def torch_threads(n: int = TORCH_THREADS):
    """Run a block with ``n`` torch intra-op threads (thread-local with OpenMP; restored after)."""
    try:
        import torch
    except ImportError:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


class UploadTooLarge(ValueError):
    """The upload exceeds the configured size limit."""


class UntrustedModelFile(PermissionError):
    """An uploaded model file was not confirmed as trusted."""


def digest(data: bytes) -> str:
    """Short content hash of some bytes (cache and state key)."""
    return hashlib.sha256(data).hexdigest()[:20]


def max_upload_mb() -> float:
    """The upload limit in MB: ``server.maxUploadSize`` (``.streamlit/config.toml``)."""
    try:
        return float(st.get_option("server.maxUploadSize"))
    except Exception:  # option missing in some test harnesses
        return 200.0


def module_available(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# =============================================================== datasets
@st.cache_data(max_entries=8, ttl=3600, show_spinner=False)
def _read_bytes(data: bytes, filename: str, max_bytes: int):
    from core.data import read_dataset

    return read_dataset(data, name=filename, max_bytes=max_bytes)


def read_upload(data: bytes, filename: str):
    """Read an uploaded dataset; raises ``UploadTooLarge`` or ``core.data.DatasetError``.

    Cached by the bytes (``st.cache_data``): re-running a page costs nothing.
    """
    limit = max_upload_mb()
    if len(data) > limit * 1024**2:
        raise UploadTooLarge(
            f"{filename} is {len(data) / 1024**2:.1f} MB; the upload limit is {limit:.0f} MB. "
            "Use a smaller excerpt, or raise server.maxUploadSize in .streamlit/config.toml."
        )
    return _read_bytes(bytes(data), filename, int(limit * 1024**2))


def describe_error(exc: BaseException) -> str:
    """An exception in plain words for an ``st.error`` box (no traceback)."""
    msg = str(exc).strip() or type(exc).__name__
    if isinstance(exc, (UploadTooLarge, UntrustedModelFile)):
        return msg
    name = type(exc).__name__
    if name in ("DatasetError", "FoundationModelUnavailable", "ValueError", "FileNotFoundError"):
        return msg
    return f"{name}: {msg}"


def demo_choices() -> dict[str, tuple[str, str]]:
    """Label -> (kind, name) of the demo datasets offered on the Data page, default first.

    Order: the embedded demo families whose file *and* MACE model are installed
    (``core.demo.DEFAULT_FAMILY`` first), then the generated synthetic demo (always
    available, needs no model file), then embedded families without their model.
    """
    ready: dict[str, tuple[str, str]] = {}
    no_model: dict[str, tuple[str, str]] = {}
    try:
        from core.demo import DEFAULT_FAMILY, FAMILIES, demo_dataset_path

        for name in sorted(FAMILIES, key=lambda f: (f != DEFAULT_FAMILY, f)):
            try:
                demo_dataset_path(name)
            except FileNotFoundError:
                continue
            if demo_model_available(name):
                ready[f"{name} (embedded demo)"] = (DEMO, name)
            else:
                no_model[f"{name} (embedded demo; its model is not installed)"] = (DEMO, name)
    except ImportError:  # demo module not installed: only the synthetic one
        pass
    return {**ready, SYNTHETIC_LABEL: (SYNTHETIC, ""), **no_model}


@st.cache_data(max_entries=6, show_spinner=False)
def load_demo(kind: str, name: str):
    """(Dataset, key) of a demo dataset. The key hashes the file content."""
    from core.data import read_dataset

    if kind == SYNTHETIC:
        from core.synthetic_demo import synthetic_extxyz_bytes

        data = synthetic_extxyz_bytes()
        return read_dataset(data, name=SYNTHETIC_FILE), f"synthetic:{digest(data)}"
    from core.demo import demo_dataset_path

    path = Path(demo_dataset_path(name))
    return read_dataset(path, name=path.name), f"demo:{name}:{digest(path.read_bytes())}"


def demo_description(name: str) -> str:
    """One line on an embedded demo family ("" when unknown)."""
    try:
        from core.demo import FAMILIES

        fam = FAMILIES[name]
    except (ImportError, KeyError):
        return ""
    return f"{fam.get('description', '')} — reference: {fam.get('reference', '?')}"


def dataset_summary_rows(dataset) -> list[tuple[str, str]]:
    """The Data page's summary as (field, value) rows."""
    s = dataset.summary()
    sizes = f"{s['n_atoms_min']}–{s['n_atoms_max']}" if s["n_atoms_min"] != s["n_atoms_max"] else str(s["n_atoms_min"])
    return [
        ("source", str(s["source"])),
        ("format", str(s["format"])),
        ("frames", str(s["n_frames"])),
        ("atoms (total)", f"{s['n_atoms']}  (per frame: {sizes})"),
        ("elements", ", ".join(s["elements"])),
        ("energy label", str(s["energy_key"]) if s["has_energies"] else "none found"),
        ("forces label", str(s["forces_key"])),
        ("config types", ", ".join(f"{k} ({v})" for k, v in s["config_types"].items())),
        ("periodic", str(s["periodic"])),
    ]


@st.cache_resource(max_entries=1, show_spinner=False)
def prewarm() -> bool:
    """Import the heavy modules (torch, the calibrators) in the background, once per process.

    The first page only reads data; by the time the user trains, torch is loaded.
    """

    def work():
        try:
            import torch  # noqa: F401
            import torch._dynamo  # noqa: F401  (first optimizer construction imports it: ~3 s)

            import core.calibration  # noqa: F401
            import core.figures  # noqa: F401
            import core.potentials.mace  # noqa: F401  (mace-torch, e3nn)
        except Exception:  # only a warm-up: errors surface where the modules are used
            pass

    threading.Thread(target=work, name="flexcal-prewarm", daemon=True).start()
    return True


# ============================================================= potentials
@st.cache_resource(max_entries=2, show_spinner=False)
def load_model(kind: str, value: str):
    """A potential by kind: ``synthetic``, ``demo``, ``foundation`` (name) or ``path``."""
    if kind == SYNTHETIC:
        from core.synthetic_demo import SyntheticPotential

        return SyntheticPotential()
    from core.potentials import load_potential

    if kind == DEMO:
        from core.demo import demo_model_path

        return load_potential(str(demo_model_path(value or None)))
    if kind in ("foundation", "path"):
        if kind == "path":
            p = Path(value).expanduser()
            if not p.is_file():
                raise FileNotFoundError(f"{value}: no such model file on this machine")
        return load_potential(str(value))
    raise ValueError(f"model kind: expected synthetic, demo, foundation or path, got {kind!r}")


def _safe_name(filename: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename).name)[:80] or "upload.model"


def load_uploaded_model(data: bytes, filename: str, trusted: bool):
    """Load an uploaded model file — only after the user confirmed they trust it.

    Without ``trusted`` this raises :class:`UntrustedModelFile` before the bytes
    are written or unpickled (``torch.load`` is never reached).
    """
    if trusted is not True:
        raise UntrustedModelFile(TRUST_REASON)
    folder = Path(tempfile.gettempdir()) / "flexcal-uploaded-models"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest(data)}-{_safe_name(filename)}"
    if not path.exists():
        path.write_bytes(data)
    return load_model("path", str(path))


def demo_model_available(family: str | None = None) -> bool:
    """Whether the demo MACE model of ``family`` (default family when None) is installed."""
    try:
        from core.demo import demo_model_path

        return Path(demo_model_path(family or None)).is_file()
    except (ImportError, FileNotFoundError, ValueError):
        return False


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


def cached_sites(dataset_key: str, potential) -> Any:
    """The featurized table for this dataset and model if computed before (else None)."""
    return _sites_cache().get((dataset_key, potential.identity))


def featurize_dataset(dataset, dataset_key: str, potential, progress: Callable[[int, int], Any] | None = None):
    """Per-site table of ``dataset`` under ``potential``; in-memory and on-disk cached.

    Returns ``(sites, key)`` with ``key = (dataset_key, potential.identity)``.
    ``progress(done, total)`` is called as batches finish.
    """
    key = (dataset_key, potential.identity)
    hit = _sites_cache().get(key)
    if hit is not None:
        return hit, key
    if module_available("core.featurize"):
        from core.featurize import featurize

        with torch_threads():
            sites = featurize(dataset.structures, potential, progress=progress, cache_dir=CACHE_DIR)
    else:  # the pipeline module is not installed: only the synthetic mock potential works
        from core.synthetic_demo import SyntheticPotential, synthetic_site_table

        if not isinstance(potential, SyntheticPotential):
            raise RuntimeError("core.featurize is not installed; only the synthetic demo can be featurized")
        sites = synthetic_site_table(dataset.structures, potential)
        if progress is not None:
            progress(len(dataset), len(dataset))
    _sites_cache().put(key, sites)
    return sites, key


# ================================================================== split
FILE_SPLIT_KEY = "split"                # atoms.info key of the demo files' own split
TRAINING_PARTS = ("train", "valid")     # frames the potential was trained on: never calibrate on them


def file_split_labels(dataset) -> np.ndarray:
    """``atoms.info["split"]`` per structure ("" where absent)."""
    return np.array([str(a.info.get(FILE_SPLIT_KEY, "")) for a in dataset.structures])


def has_file_split(dataset) -> bool:
    """True when the file marks calibration and test frames itself (the embedded demos do)."""
    labels = set(file_split_labels(dataset).tolist())
    return {"calibration", "test"} <= labels


def split_sites(sites, dataset, mode: str, test_fraction: float = 0.5, seed: int = 0,
                cal_types=None, test_types=None):
    """(calibration, test, reference) SiteTables, always by structure.

    ``mode``: ``"file"`` (the file's own ``split`` = calibration / test),
    ``"random"`` (seeded, ``test_fraction`` of the structures in the test part) or
    ``"config_type"`` (``cal_types`` vs ``test_types``, default every other type).
    Frames marked ``split`` = train/valid (the potential's own training data)
    never enter calibration or test; their sites are returned as ``reference``
    (for the knn/gmm heuristics), else ``reference`` is None. Structure ids are
    positions in ``dataset.structures`` (as ``core.featurize`` numbers them).
    Raises ValueError in plain words when a side is empty.
    """
    from core.data import split_by_config_type, split_structures

    labels = file_split_labels(dataset)
    training = np.isin(labels, TRAINING_PARTS)
    usable = np.flatnonzero(~training)
    if mode == "file":
        cal_pos, test_pos = np.flatnonzero(labels == "calibration"), np.flatnonzero(labels == "test")
    elif mode == "random":
        a, b = split_structures(len(usable), test_fraction, seed)
        cal_pos, test_pos = usable[a], usable[b]
    elif mode == "config_type":
        if not cal_types:
            raise ValueError("choose at least one config_type for calibration")
        a, b = split_by_config_type(dataset.subset(usable), list(cal_types), list(test_types) if test_types else None)
        cal_pos, test_pos = usable[a], usable[b]
    else:
        raise ValueError(f"split mode: expected 'file', 'random' or 'config_type', got {mode!r}")
    present = set(sites.unique_structures.tolist())
    cal_ids = [int(p) for p in cal_pos if int(p) in present]
    test_ids = [int(p) for p in test_pos if int(p) in present]
    if not cal_ids or not test_ids:
        raise ValueError("the split leaves the calibration or the test part without structures")
    ref_ids = [int(p) for p in np.flatnonzero(labels == "train") if int(p) in present]
    reference = sites.select_structures(ref_ids) if ref_ids else None
    return sites.select_structures(cal_ids), sites.select_structures(test_ids), reference


# =========================================================== calibration
def level_grid(confidence: float) -> np.ndarray:
    """Levels kept for plots and the teaching slider: 0.05..0.95, the confidence, 0.99."""
    from core.metrics import CALIBRATION_LEVELS

    return np.unique(np.round(np.r_[CALIBRATION_LEVELS, 0.99, float(confidence)], 4))


def parse_hidden(text: str) -> tuple[int, ...]:
    """``"64, 64"`` -> (64, 64); ValueError in plain words otherwise."""
    parts = [p for p in re.split(r"[,\s]+", str(text).strip()) if p]
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"hidden sizes: expected whole numbers separated by commas, e.g. 64, 64; got {text!r}") from None
    if not sizes or any(s < 1 or s > 4096 for s in sizes):
        raise ValueError(f"hidden sizes: expected 1 to 4096 units per layer, e.g. 64, 64; got {text!r}")
    return sizes


@dataclass
class CalibrationRun:
    """Everything the Diagnose/Structures/Export pages need, computed once after fitting.

    Widths are on the test sites, eV/Å; ``widths_levels[label]`` is (n_test, k)
    at ``levels`` (None where a method cannot give levels).
    """

    confidence: float
    labels: list[str]
    calibrators: dict[str, Any]
    reports: dict[str, dict]
    table: Any                      # pandas.DataFrame from core.studies.evaluate_methods
    cal: Any                        # SiteTable
    test: Any                       # SiteTable
    levels: np.ndarray
    widths: dict[str, np.ndarray]
    widths_levels: dict[str, np.ndarray | None]
    reference_levels: np.ndarray    # global split CP widths (n_test, k) for the teaching view
    uncorrected: dict[str, np.ndarray] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # cache key of derived figures

    def level_index(self, level: float) -> int:
        return int(np.argmin(np.abs(self.levels - float(level))))

    def flexible_label(self) -> str | None:
        return next((lab for lab in self.labels if lab.startswith("flexible")), None)

    def results_frame(self):
        """The per-method table shown on the Calibrate page (CIs as columns)."""
        import pandas as pd

        keep = ["label", "coverage", "coverage_ci_lo", "coverage_ci_hi", "coverage_gap", "mean_width",
                "width_ratio", "spearman", "spearman_ci_lo", "spearman_ci_hi", "pearson", "auroc",
                "miscalibration_area", "worst_species_coverage", "pinball", "structure_spearman",
                "structure_auroc", "fit_seconds", "note"]
        df = self.table[[c for c in keep if c in self.table.columns]].copy()
        return pd.DataFrame(df).set_index("label")


class TrainingJob:
    """Fits the chosen calibrators in a background thread; the page polls it.

    The thread never calls Streamlit. It appends q_θ epochs to ``history`` (read
    by the live loss curve) and stops q_θ early when :meth:`stop` was called
    (the callback returns True). When it ends, ``run`` holds a
    :class:`CalibrationRun` or ``error`` a message.
    """

    def __init__(self, cal, test, methods, confidence: float, flexible_options: dict,
                 bootstrap: int = 200, seed: int = 0, settings: dict | None = None, reference=None):
        self.cal, self.test, self.reference = cal, test, reference
        self.methods = list(methods)
        self.confidence = float(confidence)
        self.flexible_options = dict(flexible_options)
        self.bootstrap = int(bootstrap)
        self.seed = int(seed)
        self.settings = dict(settings or {})
        self.history: list[dict] = []
        self.messages: list[str] = []
        self.status = "pending"
        self.error: str | None = None
        self.run: CalibrationRun | None = None
        self.started = time.perf_counter()
        self.finished: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- control
    def start(self) -> "TrainingJob":
        self.status = "running"
        self._thread = threading.Thread(target=self._work, name="flexcal-training", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def done(self) -> bool:
        return self.status in ("done", "failed")

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.done

    def elapsed(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    # -- worker
    def _callback(self, epoch, train_loss, val_loss) -> bool:
        self.history.append({"epoch": int(epoch), "train_loss": float(train_loss),
                             "val_loss": None if val_loss is None else float(val_loss)})
        return self._stop.is_set()

    def _work(self) -> None:
        try:
            import torch

            # q_θ is a tiny MLP: one intra-op thread is fastest (see TORCH_THREADS); this thread only
            torch.set_num_threads(max(1, TORCH_THREADS))
        except ImportError:
            pass
        try:
            self.run = fit_and_evaluate(
                self.cal, self.test, self.methods, self.confidence, self.flexible_options,
                bootstrap=self.bootstrap, seed=self.seed, epoch_callback=self._callback,
                progress=self.messages.append, reference=self.reference,
            )
            self.run.history = list(self.history)
            self.run.stopped_early = self._stop.is_set()
            self.run.settings = self.settings
            self.run.seconds = time.perf_counter() - self.started
            self.status = "done"
        except Exception as exc:  # shown in the page's error box
            self.error = describe_error(exc)
            self.messages.append(traceback.format_exc(limit=3))
            self.status = "failed"
        finally:
            self.finished = time.perf_counter()


def fit_and_evaluate(cal, test, methods, confidence: float, flexible_options: dict, *, bootstrap: int = 200,
                     seed: int = 0, epoch_callback=None, progress=None, reference=None) -> CalibrationRun:
    """Fit ``methods`` on ``cal``, report them on ``test`` and keep their predictions.

    ``reference``: the potential's training sites (knn/gmm heuristics), or None.
    """
    from core.calibration import make_calibrator
    from core.studies import evaluate_methods

    options = {"flexible": dict(flexible_options)} if "flexible" in methods else {}
    target = test if flexible_options.get("weights") == "shift" else None
    calibrators: dict[str, Any] = {}
    reports: dict[tuple, dict] = {}
    table = evaluate_methods(
        cal, {"test": test}, methods, confidence, seed, reference=reference, target=target, method_options=options,
        bootstrap=bootstrap, progress=progress, epoch_callback=epoch_callback,
        keep_calibrators=calibrators, keep_reports=reports,
    )
    levels = level_grid(confidence)
    labels = [lab for lab in table["label"].tolist() if lab in calibrators]
    widths, widths_levels, uncorrected = {}, {}, {}
    for lab in labels:
        c = calibrators[lab]
        widths[lab] = np.asarray(c.predict(test), dtype=np.float64)
        widths_levels[lab] = _levels_or_none(c, test, levels)
        if hasattr(c, "predict_uncorrected"):
            try:
                uncorrected[lab] = np.asarray(c.predict_uncorrected(test), dtype=np.float64)
            except Exception:
                pass
    split = calibrators.get("split") or make_calibrator("split", confidence=confidence, seed=seed).fit(cal)
    reference_levels = _levels_or_none(split, test, levels)
    return CalibrationRun(
        confidence=float(confidence), labels=labels, calibrators=calibrators,
        reports={lab: rep for (lab, _split), rep in reports.items()}, table=table, cal=cal, test=test,
        levels=levels, widths=widths, widths_levels=widths_levels, reference_levels=reference_levels,
        uncorrected=uncorrected,
    )


def _levels_or_none(calibrator, sites, levels) -> np.ndarray | None:
    try:
        return np.asarray(calibrator.predict_levels(sites, levels), dtype=np.float64)
    except (NotImplementedError, ValueError, AttributeError):
        return None


def structure_widths(run: CalibrationRun, sites, label: str) -> np.ndarray:
    """Widths (n,) of any sites (e.g. one structure) under a fitted method, eV/Å."""
    return np.asarray(run.calibrators[label].predict(sites), dtype=np.float64)


# ================================================================ figures
def site_ids(sites) -> np.ndarray:
    """(n, 2) array of (structure_id, atom_index): the ``customdata`` of clickable plots."""
    return np.column_stack([sites.structure_ids, sites.atom_index])


def selected_site(event) -> tuple[int, int | None] | None:
    """(structure_id, atom_index or None) of the first selected point of a plotly_chart event."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        try:
            points = event.selection.points
        except AttributeError:
            return None
    for p in points or []:
        cd = p.get("customdata") if isinstance(p, dict) else None
        if cd is None:
            continue
        if isinstance(cd, (int, float)):
            return int(cd), None
        if isinstance(cd, dict):  # the browser may send an array as {"0": ..., "1": ...}
            cd = [cd[k] for k in sorted(cd, key=lambda k: int(k))]
        if len(cd) >= 2:
            atom = int(cd[1])
            return int(cd[0]), (atom if atom >= 0 else None)
        if len(cd) == 1:
            return int(cd[0]), None
    return None


def coverage_curves(run: CalibrationRun) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """label -> (levels, observed coverage) for every method that gives levels."""
    from core.metrics import observed_coverage_curve

    out = {}
    for lab in run.labels:
        wl = run.widths_levels.get(lab)
        if wl is not None:
            out[lab] = (run.levels, observed_coverage_curve(run.test.errors, wl, run.levels))
    return out


def method_figures(run: CalibrationRun, label: str) -> dict[str, Any]:
    """The Diagnose page's figures for one method (plus the all-method ones), by name.

    Cached per (run token, method): switching pages or methods back and forth does not
    rebuild them. The figures are shared read-only objects.
    """
    return _method_figures_cached(run.token, label, run)


@st.cache_resource(max_entries=12, ttl=3600, show_spinner=False)
def _method_figures_cached(token: str, label: str, _run: CalibrationRun) -> dict[str, Any]:
    return _build_method_figures(_run, label)


def _build_method_figures(run: CalibrationRun, label: str) -> dict[str, Any]:
    """Each figure is built on its own: one that cannot be drawn becomes a message (str), not a crash."""
    from core import figures as F
    from core.metrics import structure_maxima

    test = run.test
    w = run.widths[label]
    ids = site_ids(test)
    info = test.structure_info
    builders: dict[str, Callable[[], Any]] = {}
    if test.forces_pred is not None and test.forces_ref is not None:
        builders["force_parity"] = lambda: F.plot_parity(
            test.forces_ref, test.forces_pred, color=w, color_label=f"{label} width (eV/Å)", quantity="force", ids=ids)
    if "energy_ref" in info and "energy_pred" in info:
        eref = np.asarray(info["energy_ref"], dtype=float)
        epred = np.asarray(info["energy_pred"], dtype=float)
        ok = np.isfinite(eref) & np.isfinite(epred)
        if ok.sum() >= 2:
            def energy():
                nat = np.asarray(info["n_atoms"], dtype=float)
                _me, mw = structure_maxima(test.errors, w, test.structure_ids)
                sids = np.asarray(info["structure_id"])
                return F.plot_parity((eref / nat)[ok], (epred / nat)[ok], color=mw[ok],
                                     color_label=f"max {label} width (eV/Å)", quantity="energy_per_atom",
                                     ids=np.column_stack([sids[ok], np.full(ok.sum(), -1)]))
            builders["energy_parity"] = energy
    curves = coverage_curves(run)
    if curves:
        builders["coverage_curve"] = lambda: F.plot_coverage_curve(curves)
        if label in curves:
            builders["calibration_curve"] = lambda: F.plot_calibration_curve(*_grid_19(run, curves[label]), label=label)
    builders["uncertainty_error"] = lambda: F.plot_uncertainty_error(test.errors, w, label=label, ids=ids)
    reports = {lab: r for lab, r in run.reports.items() if r.get("species_coverage")}
    if reports:
        builders["species_coverage"] = lambda: F.plot_species_coverage(reports, run.confidence)
    builders["width_histogram"] = lambda: F.plot_width_histogram({lab: run.widths[lab] for lab in run.labels})

    def structures():
        me, mw = structure_maxima(test.errors, w, test.structure_ids)
        return F.plot_structure_uncertainty(me, mw, ids=np.unique(test.structure_ids))

    builders["structure_uncertainty"] = structures
    figs: dict[str, Any] = {}
    for name, build in builders.items():
        try:
            figs[name] = build()
        except (ValueError, TypeError, KeyError, ZeroDivisionError) as exc:
            figs[name] = f"This plot cannot be drawn for {label}: {describe_error(exc)}"
    return figs


def _grid_19(run: CalibrationRun, curve):
    """Restrict a curve to the 19 standard levels (what the miscalibration area averages over)."""
    from core.metrics import CALIBRATION_LEVELS

    levels, observed = curve
    keep = np.isin(np.round(levels, 4), np.round(CALIBRATION_LEVELS, 4))
    return levels[keep], observed[keep]


def teaching_figure(run: CalibrationRun, level: float):
    """Global CP cutoff and the q_θ band at one level, from stored predictions (no refit)."""
    from core.figures import plot_confidence_band

    lab = run.flexible_label()
    if lab is None or run.widths_levels.get(lab) is None or run.reference_levels is None:
        return None
    k = run.level_index(level)
    return plot_confidence_band(None, run.test.errors, run.reference_levels[:, k], run.widths_levels[lab][:, k],
                                float(run.levels[k]))


def figure_titles() -> dict[str, str]:
    return {
        "force_parity": "Force parity, coloured by width",
        "energy_parity": "Energy parity (per atom), coloured by max width",
        "coverage_curve": "Observed vs nominal coverage, every method",
        "calibration_curve": "Calibration curve and miscalibration area",
        "uncertainty_error": "Uncertainty vs error (log-log, y = x)",
        "species_coverage": "Coverage per species",
        "width_histogram": "Width histogram",
        "structure_uncertainty": "Structure level: max width vs max error",
    }


# ================================================================= exports
def export_frame(run: CalibrationRun, sites):
    """Every site with its split part and each method's width (core.export.site_frame)."""
    from core.export import site_frame

    part = np.full(len(sites), "unused", dtype=object)
    part[np.isin(sites.structure_ids, run.cal.unique_structures)] = "calibration"
    part[np.isin(sites.structure_ids, run.test.unique_structures)] = "test"
    widths = {lab: np.asarray(run.calibrators[lab].predict(sites), dtype=np.float64) for lab in run.labels}
    return site_frame(sites, widths, confidence=run.confidence, split=part.astype(str))


def export_table(run: CalibrationRun, sites, fmt: str) -> bytes:
    """The per-site table as ``csv`` or ``parquet`` bytes."""
    from core.export import csv_bytes, parquet_bytes

    frame = export_frame(run, sites)
    if fmt == "csv":
        return csv_bytes(frame)
    if fmt == "parquet":
        return parquet_bytes(frame)
    raise ValueError(f"fmt: expected 'csv' or 'parquet', got {fmt!r}")


def export_extxyz(run: CalibrationRun, dataset, sites, label: str) -> bytes:
    """All structures with per-atom flexcal_width (method ``label``) and flexcal_error."""
    from core.export import annotated_extxyz

    widths = np.asarray(run.calibrators[label].predict(sites), dtype=np.float64)
    return annotated_extxyz(dataset.structures, sites, widths, method=label, confidence=run.confidence)


def export_calibrator(run: CalibrationRun, label: str) -> bytes:
    from core.export import calibrator_bytes

    return calibrator_bytes(run.calibrators[label])


def export_report(run: CalibrationRun, label: str, title: str = "FlexCal calibration report") -> str:
    """Self-contained HTML: the results table, every Diagnose figure and the teaching view."""
    from core.export import html_report

    titles = figure_titles()
    figs = [(titles.get(k, k), f) for k, f in method_figures(run, label).items() if not isinstance(f, str)]
    band = teaching_figure(run, run.confidence)
    if band is not None:
        figs.append((f"Global CP vs q_θ band at {run.confidence:.0%}", band))
    if run.history:
        from core.figures import plot_training_curve

        figs.append(("q_θ training curve", plot_training_curve(run.history)))
    tables = [(f"Metrics on the test part (confidence {run.confidence:.0%})", run.results_frame())]
    return html_report(figs, tables, title=f"{title} — per-method plots for {label}")
