"""Long steps in the app: featurizing as a background job (progress with ETA, Cancel, cache),
calibration steps that report progress (kNN search in chunks, q_θ epochs, scoring), and the
q_θ epochs widget. Deterministic: a hooked mock potential hands over between batches (never
the clock); the progress scope and the meter are tested with injected sinks and clocks.
"""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest

pytest.importorskip("streamlit")

from app import job as app_job  # noqa: E402
from app import catalog, services, state  # noqa: E402
from app.pages_index import page  # noqa: E402
from core.progress import Cancelled, Meter, chunks, format_seconds, progress_scope, report  # noqa: E402
from core.sites import SiteTable  # noqa: E402
from core.synthetic_demo import SyntheticPotential  # noqa: E402
from tests.test_app import TIMEOUT, _errors, _featurize, _new_app, _no_exception, _synthetic, cache_dir  # noqa: E402,F401

N_SYNTHETIC = 48  # structures of the synthetic demo


class HookedPotential(SyntheticPotential):
    """The synthetic mock with a fresh identity, counting forward passes and calling ``hook(call)`` first."""

    def __init__(self, seed: int, hook=None):
        super().__init__(seed=seed)
        self.calls = 0
        self.hook = hook
        self._count = threading.Lock()  # calls may come from several threads (ConcurrentPotential)

    def compute(self, structures):
        with self._count:
            self.calls += 1
            call = self.calls
        if self.hook is not None:
            self.hook(call)
        return super().compute(structures)


def _use_potential(monkeypatch, potential) -> None:
    monkeypatch.setattr(services, "load_model", lambda *args, **kwargs: potential)


def _cache_files(folder) -> set[str]:
    return {p.name for p in folder.glob("featurize-*.npz")}


# ------------------------------------------------------------------------- featurize in the app
def test_featurize_shows_progress_with_eta_and_a_rerun_uses_the_cache(cache_dir, monkeypatch):
    texts: list[str] = []
    seen_first_batch = threading.Event()
    original = app_job.FeaturizeJob.progress_text

    def recorded(self):
        text = original(self)
        texts.append(text)
        if 0 < self.structures_done < self.total:
            seen_first_batch.set()
        return text

    def hook(call: int) -> None:  # batch 2 starts only after the page has drawn batch 1's progress
        if call == 2:
            assert seen_first_batch.wait(TIMEOUT), "the page never showed the first batch's progress"

    potential = HookedPotential(seed=101, hook=hook)
    monkeypatch.setattr(app_job.FeaturizeJob, "progress_text", recorded)
    _use_potential(monkeypatch, potential)
    at = _featurize(_synthetic(_new_app()))
    n_batches = potential.calls
    assert n_batches == -(-N_SYNTHETIC // app_job.FEATURIZE_BATCH)  # 48 structures of ~31 atoms: 8 per batch
    pattern = re.compile(rf"^Featurizing: (\d+) / {N_SYNTHETIC} structures — [\d,]+ sites/s — ETA \d+ s$")
    mid = [t for t in texts if pattern.match(t)]
    assert mid, texts
    assert all(0 < int(pattern.match(t).group(1)) < N_SYNTHETIC for t in mid)
    assert re.fullmatch(rf"Featurizing: 0 / {N_SYNTHETIC} structures — first batch running \(\d+ s\)", texts[0])
    sites = at.session_state[state.SITES]
    assert len(sites) == int(sites.structure_info["n_atoms"].sum())
    assert at.session_state[state.FEATURIZE_JOB] is None

    # the same dataset + model again: the in-memory cache, no forward pass, same table
    at.button(key="btn_featurize").click().run()
    _no_exception(at)
    assert potential.calls == n_batches
    assert at.session_state[state.SITES] is sites
    # a new process (empty memory cache): the on-disk cache, still no forward pass
    services._sites_cache.clear()
    at.button(key="btn_featurize").click().run()
    _no_exception(at)
    assert potential.calls == n_batches
    again = at.session_state[state.SITES]
    assert again is not sites and again.meta["cache_hit"] is True
    np.testing.assert_array_equal(again.errors, sites.errors)


class ConcurrentPotential(HookedPotential):
    """The hooked mock declaring that its compute may run in several threads at once (as MACE does)."""

    concurrent_compute = True


def test_the_app_featurizes_two_batches_at_once_with_the_serial_numbers(cache_dir, monkeypatch):
    """``FEATURIZE_THREADS`` batches run at once for a potential that allows it (batches 1 and 2 meet
    at a barrier: one at a time would break it); the table equals a one-thread featurize's."""
    from core.featurize import featurize

    if app_job.FEATURIZE_THREADS < 2:
        pytest.skip(f"the app featurizes with {app_job.FEATURIZE_THREADS} thread here (one core)")
    meet = threading.Barrier(2, timeout=60)

    def hook(call: int) -> None:
        if call <= 2:
            meet.wait()

    potential = ConcurrentPotential(seed=404, hook=hook)
    _use_potential(monkeypatch, potential)
    at = _featurize(_synthetic(_new_app()))
    assert potential.calls == -(-N_SYNTHETIC // app_job.FEATURIZE_BATCH)
    sites = at.session_state[state.SITES]
    serial = featurize(at.session_state[state.DATASET].structures, SyntheticPotential(seed=404),
                       batch_size=app_job.FEATURIZE_BATCH)
    np.testing.assert_array_equal(sites.errors, serial.errors)
    np.testing.assert_array_equal(sites.descriptors, serial.descriptors)


def test_cancel_stops_between_batches_and_keeps_the_previous_features(cache_dir, monkeypatch):
    at = _featurize(_synthetic(_new_app()))  # the demo's own mock potential
    before_sites, before_key = at.session_state[state.SITES], at.session_state[state.SITES_KEY]
    files_before = _cache_files(cache_dir)
    jobs: list = []
    original_start = app_job.FeaturizeJob.start

    def start(self):
        jobs.append(self)
        return original_start(self)

    def hook(call: int) -> None:  # the user presses Cancel while batch 2 runs
        if call == 2:
            jobs[-1].cancel()

    potential = HookedPotential(seed=202, hook=hook)
    monkeypatch.setattr(app_job.FeaturizeJob, "start", start)
    _use_potential(monkeypatch, potential)
    at.button(key="btn_featurize").click().run()
    _no_exception(at)
    job = jobs[-1]
    assert job.status == "cancelled" and job.structures_done == 2 * app_job.FEATURIZE_BATCH
    assert potential.calls == 2  # stopped after the batch in progress, long before the 6th
    assert at.button(key="btn_cancel_featurize").label == "Cancel featurizing"
    # nothing half-written: previous features, key and results untouched, no cache entry
    assert at.session_state[state.SITES] is before_sites
    assert at.session_state[state.SITES_KEY] == before_key
    assert at.session_state[state.FEATURIZE_JOB] is None
    assert _cache_files(cache_dir) == files_before
    assert services._sites_cache().get(job.key) is None
    notes = [i.value for i in at.info]
    done = f"{2 * app_job.FEATURIZE_BATCH} / {N_SYNTHETIC} structures"
    assert any("Featurizing cancelled" in n and done in n for n in notes), notes
    assert not _errors(at)

    # started again (no cancel this time): runs to the end and replaces the features
    potential.hook = None
    at.button(key="btn_featurize").click().run()
    _no_exception(at)
    assert jobs[-1].status == "done" and potential.calls == 2 + -(-N_SYNTHETIC // app_job.FEATURIZE_BATCH)
    assert at.session_state[state.SITES] is not before_sites
    assert at.session_state[state.SITES_KEY] == job.key
    assert _cache_files(cache_dir) - files_before  # now cached on disk
    assert not [i.value for i in at.info if "cancelled" in i.value]


def test_epochs_widget_names_its_maximum_and_default(cache_dir):
    at = _featurize(_synthetic(_new_app()))
    at.switch_page(page("calibrate")).run()
    _no_exception(at)
    widget = at.number_input(key=state.W_MAX_EPOCHS)
    assert "2000" in widget.label and "default 200" in widget.label, widget.label
    assert "2000" in widget.help and widget.max == 2000 and widget.value == 200


# --------------------------------------------------------------------------- calibrate progress
def _sites(n: int, d: int = 16, seed: int = 0, n_structures: int = 100) -> SiteTable:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    return SiteTable.from_arrays(descriptors=x, errors=np.abs(rng.normal(size=n)) * (1 + np.abs(x[:, 0])),
                                 species=rng.choice([1, 8], size=n),
                                 structure_ids=np.sort(rng.integers(0, n_structures, size=n)))


def test_knn_fit_reports_progress_in_chunks_on_20000_sites():
    from core.calibration import make_calibrator
    from core.heuristics.knn import QUERY_CHUNK

    sites = _sites(20_000, d=3)  # low-dimensional: a fast kd-tree, the same chunking
    seen: list[tuple[str, int, int]] = []
    with progress_scope(lambda what, done, total: seen.append((what, done, total))):
        cal = make_calibrator("knn", confidence=0.9).fit(sites)
    search = [(d, t) for w, d, t in seen if w == "kNN: neighbour search"]
    assert len(search) >= 20_000 // QUERY_CHUNK > 1
    assert all(t == 20_000 for _, t in search)
    done = [d for d, _ in search]
    assert done == sorted(done) and done[-1] == 20_000
    assert [(d, t) for w, d, t in seen if w == "kNN: index reference sites"] == [(1, 2), (2, 2)]
    # the same widths as without a scope (chunking changes nothing)
    np.testing.assert_array_equal(cal.predict(sites), make_calibrator("knn", confidence=0.9).fit(sites).predict(sites))


def test_a_sink_that_raises_cancelled_stops_the_knn_search():
    from core.calibration import make_calibrator

    calls = []

    def sink(what, done, total):
        calls.append(done)
        if what == "kNN: neighbour search" and len(calls) > 3:
            raise Cancelled("user pressed Cancel")

    with progress_scope(sink), pytest.raises(Cancelled, match="user pressed Cancel"):
        make_calibrator("knn", confidence=0.9).fit(_sites(20_000, d=3))
    assert len(calls) == 4
    report("outside any scope", 1, 2)  # a no-op, the scope was restored


def test_evaluate_reports_epochs_of_max_and_scoring():
    from core.evaluation import evaluate

    cal, test = _sites(1000, d=4, seed=1), _sites(500, d=4, seed=2)
    seen: list[tuple[str, int, int]] = []
    with progress_scope(lambda *a: seen.append(a)):
        evaluate(cal, {"test": test}, ["flexible", "knn"], method_options={"flexible": {"max_epochs": 7}})
    epochs = [(d, t) for w, d, t in seen if w == "q_θ epochs"]
    assert epochs and all(t == 7 for _, t in epochs) and [d for d, _ in epochs] == list(range(1, len(epochs) + 1))
    steps = [w for w, _, _ in seen]
    assert [(d, t) for w, d, t in seen if w == "scoring the methods on the test split"] == [(0, 2), (1, 2)]
    assert steps[0] == "split-CP reference widths"


def test_training_job_status_line_shows_the_step_and_an_upper_bound_eta():
    job = app_job.TrainingJob(None, ["flexible"], confidence=0.9)
    assert job.progress_text() == ""
    clock = iter([0.0, 2.0, 2.0])
    job.meter = Meter(200, clock=lambda: next(clock))
    job.step = "q_θ epochs"
    job.meter.update(10)
    assert job.progress_text() == "q_θ epochs 10 / 200 — ETA ≤ 38 s"
    job.cancel()
    with pytest.raises(Cancelled):
        job._sink("q_θ epochs", 11, 200)


# ------------------------------------------------------------------------------ core.progress
def test_meter_rate_and_eta_with_an_injected_clock():
    ticks = iter([10.0, 12.0, 14.0, 14.0])
    m = Meter(1000, clock=lambda: next(ticks))
    assert m.rate is None and m.eta is None and m.fraction == 0.0
    m.update(250)  # 250 units in 2 s
    assert m.rate == pytest.approx(125.0) and m.eta == pytest.approx(6.0) and m.fraction == 0.25
    m.update(1000)
    assert m.eta == 0.0 and m.fraction == 1.0 and m.elapsed == pytest.approx(4.0)


def test_format_seconds_chunks_and_scope_errors():
    assert format_seconds(None) == "—" and format_seconds(float("nan")) == "—"
    assert format_seconds(12.4) == "12 s" and format_seconds(185) == "3 min 05 s"
    assert chunks(5, 2) == [(0, 2), (2, 4), (4, 5)] and chunks(0, 3) == [(0, 0)]
    with pytest.raises(ValueError, match="size: expected an int >= 1, got 0"):
        chunks(3, 0)
    with pytest.raises(TypeError, match="sink must be None or a callable"):
        with progress_scope("not callable"):
            pass
    outer, inner = [], []
    with progress_scope(lambda *a: outer.append(a)):
        with progress_scope(lambda *a: inner.append(a)):
            report("a", 1, 2)
        report("b", 2, 2)
    assert inner == [("a", 1, 2)] and outer == [("b", 2, 2)]


class _GatedJob(app_job.BackgroundJob):
    """A job that runs until its gate opens (or fails with ``error``)."""

    name = "gated"

    def __init__(self, error: Exception | None = None):
        super().__init__()
        self.gate = threading.Event()
        self.error_to_raise = error

    def _run(self) -> None:
        self.gate.wait(60)
        if self.error_to_raise is not None:
            raise self.error_to_raise


def test_follow_returns_when_the_job_ends_not_at_its_next_tick():
    import time

    job = _GatedJob().start()
    calls = []
    threading.Timer(0.3, job.gate.set).start()
    t = time.monotonic()
    assert job.follow(lambda: calls.append(job.status), every=30.0) is True
    assert time.monotonic() - t < 15  # woke on the job's end, not after its 30 s tick
    assert calls == ["running"] and job.status == "done"
    assert job.follow(lambda: calls.append("again"), every=30.0) is True and calls == ["running"]  # done: no update


def test_follow_gives_up_after_its_timeout_and_reports_a_failed_job():
    job = _GatedJob(error=ValueError("frame 3: bad forces")).start()
    calls = []
    assert job.follow(lambda: calls.append(1), every=0.05, timeout=0.3) is False
    assert len(calls) >= 2 and not job.done
    job.gate.set()
    assert job.follow(lambda: None, every=0.05, timeout=30) is True
    assert job.status == "failed" and "frame 3: bad forces" in job.error


def test_demo_potential_is_loaded_once_for_concurrent_callers_and_a_failure_is_not_kept(monkeypatch, tmp_path):
    import core.potentials.deferred as deferred
    from app import prewarm

    loads, release = [], threading.Event()

    def fake_deferred(spec, *, records):
        loads.append((spec, records))
        release.wait(30)
        if spec == "demo:surface" and len(loads) == 1:
            raise OSError("demo:surface: disk hiccup")
        return object()

    monkeypatch.setattr(deferred, "deferred_potential", fake_deferred)
    monkeypatch.setattr(prewarm, "_demo_potentials", {})
    got = []
    threads = [threading.Thread(target=lambda: got.append(prewarm.demo_potential("molecule", tmp_path)))
               for _ in range(3)]
    for th in threads:
        th.start()
    release.set()
    for th in threads:
        th.join(30)
    assert loads == [("demo:molecule", tmp_path)] and len(got) == 3 and got[0] is got[1] is got[2]
    assert prewarm.demo_potential("molecule", tmp_path) is got[0]

    loads.clear()
    with pytest.raises(OSError, match="demo:surface: disk hiccup"):
        prewarm.demo_potential("surface", tmp_path)
    second = prewarm.demo_potential("surface", tmp_path)  # the failure was not kept: loaded again
    assert len(loads) == 2 and prewarm.demo_potential("surface", tmp_path) is second


def test_the_model_page_shares_the_warm_ups_demo_model(monkeypatch):
    from app import prewarm
    from core.demo import DEFAULT_FAMILY, demo_model_path

    if not demo_model_path(DEFAULT_FAMILY).is_file():
        pytest.skip("demo model not installed")
    services.load_model.clear()
    try:
        shared = prewarm.demo_potential(DEFAULT_FAMILY, services.CACHE_DIR)
        assert services.load_model(catalog.DEMO, "") is shared
        assert services.load_model(catalog.DEMO, DEFAULT_FAMILY) is shared
    finally:
        services.load_model.clear()
