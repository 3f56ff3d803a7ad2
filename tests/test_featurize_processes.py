"""core.featurize: one computation per cache key across processes (flock on a lock file).

A holder subprocess featurizes four small molecules with ``Stepped`` (ASE's EMT through
``tests.test_backends.ToyEMTPotential``, batch size 1) and waits before every batch until the
test creates ``go-<k>`` in a gate folder (it creates ``entered-<k>`` first): the test decides
exactly where the holder is, so nothing depends on timing. No mace, no torch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.featurize import featurize
from core.progress import Cancelled
from core.sites import SiteTable
from tests.conftest import make_tiny_structures
from tests.test_backends import ToyEMTPotential
from tests.test_featurize import Counting

ROOT = Path(__file__).resolve().parent.parent
N = 4  # structures; batch_size=1 -> N batches, progress 1..N
WAIT_S = 180.0  # generous limit of every wait (a loaded 2-core machine)

HOLDER = """
import sys
from pathlib import Path
from core.featurize import featurize
from tests.test_featurize_processes import Stepped, structures
cache_dir, gates = Path(sys.argv[1]), Path(sys.argv[2])
table = featurize(structures(), Stepped(gates), batch_size=1, cache_dir=cache_dir)
table.save(gates / "result.npz")
"""


def structures():
    """Four seeded molecules (H, C, N, O only: EMT knows them); the same in every process."""
    return make_tiny_structures(0)[:N]


def _wait_for(predicate, what: str, proc=None):
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"holder exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Stepped(Counting):
    """ToyEMT whose k-th forward pass writes ``entered-<k>`` and waits for ``go-<k>`` in ``gates``
    (``gates=None``: a threading.Event per batch in ``self.go``)."""

    def __init__(self, gates: Path | None = None):
        super().__init__(ToyEMTPotential())
        self.gates = gates
        self.go = [threading.Event() for _ in range(N)]
        self.entered = [threading.Event() for _ in range(N)]

    def compute(self, batch):
        k = self.calls
        self.entered[k].set()
        if self.gates is not None:
            (self.gates / f"entered-{k}").touch()
            _wait_for((self.gates / f"go-{k}").exists, f"go-{k}")
        else:
            assert self.go[k].wait(WAIT_S)
        return super().compute(batch)


class Forbidden(Counting):
    """Same name/identity as the holder's potential; a forward pass is a test failure."""

    def __init__(self):
        super().__init__(ToyEMTPotential())

    def compute(self, batch):
        raise AssertionError("the waiter must not compute: the holder's cache entry exists")


@pytest.fixture
def holder(tmp_path):
    """Start the holder subprocess on ``tmp_path/cache``; yields (proc, gates, cache_dir)."""
    gates, cache_dir = tmp_path / "gates", tmp_path / "cache"
    gates.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with open(tmp_path / "holder.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(cache_dir), str(gates)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for((gates / "entered-0").exists, "the holder's first batch", proc)  # it holds the lock now
        yield proc, gates, cache_dir
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT_S)
        print((tmp_path / "holder.log").read_text())  # shown when the test fails


def _open_all(gates: Path) -> None:
    for k in range(N):
        (gates / f"go-{k}").touch()


def _reference() -> SiteTable:
    return featurize(structures(), ToyEMTPotential(), batch_size=2)


def _assert_same_table(a: SiteTable, b: SiteTable) -> None:
    for name in ("descriptors", "errors", "forces_pred", "forces_ref", "species", "structure_ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.structure_info["energy_pred"], b.structure_info["energy_pred"])


def _assert_monotone(seen: list) -> None:
    dones = [d for d, _ in seen]
    assert dones == sorted(dones), dones
    assert all(t == N for _, t in seen)


def test_waiter_shows_the_other_process_progress_then_reads_its_entry(holder):
    proc, gates, cache_dir = holder
    seen = []

    def progress(done, total):
        seen.append((done, total))
        if len(seen) == 1:
            assert done == 0  # the holder is inside its first batch
            (gates / "go-0").touch()
        elif done == 1:  # the holder's "1 4", read from its lock file; it now waits in batch 1
            assert (gates / "entered-1").exists()
            _open_all(gates)

    waiter = Forbidden()
    table = featurize(structures(), waiter, batch_size=1, cache_dir=cache_dir, progress=progress)
    assert proc.wait(WAIT_S) == 0
    assert waiter.calls == 0 and table.meta["cache_hit"] is True
    assert (1, N) in seen and any(0 < d < N for d, _ in seen)
    _assert_monotone(seen)
    assert seen[-1] == (N, N)
    _assert_same_table(table, SiteTable.load(gates / "result.npz"))
    _assert_same_table(table, _reference())
    # the lock file stays, with the holder's last count
    (lock,) = cache_dir.glob("featurize-*.lock")
    assert lock.read_text() == f"{N} {N}\n"
    assert lock.name[:-len(".lock")] == next(cache_dir.glob("featurize-*.npz")).name[:-len(".npz")]


def test_holder_killed_midway_waiter_computes_itself(holder):
    proc, gates, cache_dir = holder
    seen = []

    def progress(done, total):
        seen.append((done, total))
        if len(seen) == 1:
            (gates / "go-0").touch()
        elif done == 1 and proc.poll() is None:  # holder at 1 of 4, inside batch 1
            assert (gates / "entered-1").exists()
            proc.send_signal(signal.SIGKILL)
            proc.wait(WAIT_S)

    class Checked(Counting):
        def compute(self, batch):
            assert not list(cache_dir.glob("featurize-*.npz")), "the dead holder left a cache entry"
            return super().compute(batch)

    mine = Checked(ToyEMTPotential())
    table = featurize(structures(), mine, batch_size=1, cache_dir=cache_dir, progress=progress)
    assert proc.returncode == -signal.SIGKILL
    assert mine.calls == N and table.meta["cache_hit"] is False
    _assert_same_table(table, _reference())
    # progress: the holder's 1, one explicit restart at 0, then this call's own batches
    i = seen.index((1, N))
    restart = [k for k in range(i, len(seen)) if seen[k][0] == 0]
    assert len(restart) == 1
    _assert_monotone(seen[:restart[0]])
    assert seen[restart[0]:] == [(k, N) for k in range(N + 1)]
    assert not (gates / "result.npz").exists()
    # its own entry is now the cache
    assert featurize(structures(), Forbidden(), cache_dir=cache_dir).meta["cache_hit"] is True


def test_cancelled_waiter_leaves_the_holder_alone(holder):
    proc, gates, cache_dir = holder
    seen = []

    def progress(done, total):
        seen.append((done, total))
        if len(seen) == 3:
            raise Cancelled("cancelled while waiting")

    with pytest.raises(Cancelled, match="cancelled while waiting"):
        featurize(structures(), Forbidden(), batch_size=1, cache_dir=cache_dir, progress=progress)
    assert seen == [(0, N)] * 3 and proc.poll() is None
    assert not list(cache_dir.glob("featurize-*.npz"))
    _open_all(gates)
    assert proc.wait(WAIT_S) == 0
    table = featurize(structures(), Forbidden(), batch_size=1, cache_dir=cache_dir)
    assert table.meta["cache_hit"] is True
    _assert_same_table(table, SiteTable.load(gates / "result.npz"))


def test_threads_of_one_process_compute_once_and_share_progress(tmp_path):
    stepped = Stepped()
    results, seen = {}, []
    first = threading.Thread(
        target=lambda: results.update(first=featurize(structures(), stepped, batch_size=1, cache_dir=tmp_path)))
    first.start()
    assert stepped.entered[0].wait(WAIT_S)

    def progress(done, total):
        seen.append((done, total))
        if len(seen) == 1:
            stepped.go[0].set()
        elif done == 1:  # the first thread's count, shared in memory; it waits in batch 1
            assert stepped.entered[1].is_set()
            for ev in stepped.go:
                ev.set()

    second = featurize(structures(), stepped, batch_size=2, cache_dir=tmp_path, progress=progress)
    first.join(WAIT_S)
    assert not first.is_alive()
    assert stepped.calls == N  # one computation (batch size 1), none for the second call
    assert results["first"].meta["cache_hit"] is False and second.meta["cache_hit"] is True
    _assert_same_table(second, results["first"])
    assert (1, N) in seen and seen[-1] == (N, N)
    _assert_monotone(seen)


def test_threads_waiting_behind_a_thread_that_waits_for_another_process(holder):
    """Two threads of this process and a holder process: the threads see the holder's count."""
    proc, gates, cache_dir = holder
    seen = {"a": [], "b": []}
    results = {}

    def run(name):
        def progress(done, total):
            seen[name].append((done, total))
            if done == 1 and all((1, N) in s for s in seen.values()):
                _open_all(gates)

        results[name] = featurize(structures(), Forbidden(), batch_size=1, cache_dir=cache_dir, progress=progress)

    threads = [threading.Thread(target=run, args=(name,)) for name in seen]
    for t in threads:
        t.start()
    _wait_for(lambda: all(seen.values()), "both threads waiting")
    (gates / "go-0").touch()
    for t in threads:
        t.join(WAIT_S)
        assert not t.is_alive()
    assert proc.wait(WAIT_S) == 0
    for name in seen:
        assert results[name].meta["cache_hit"] is True, name
        assert (1, N) in seen[name] and seen[name][-1] == (N, N)
        _assert_monotone(seen[name])


def test_reporter_never_goes_back_but_by_restart():
    from core.featurize import _progress_reporter

    seen = []
    report = _progress_reporter(lambda d, t: seen.append((d, t)), 5)
    for done in (1, 3, 2, 0, 3):  # a waiter's view of another computation only grows
        report(done)
    report.restart()  # the holder died: this call starts over
    report.restart()  # already at 0: nothing
    report(2)
    assert seen == [(1, 5), (3, 5), (3, 5), (3, 5), (3, 5), (0, 5), (2, 5)]

    bar = _progress_reporter(True, 5)
    bar(4)
    bar(1)
    assert bar._bar.n == 4
    bar.restart()
    assert bar._bar.n == 0 and bar._bar.total == 5
    bar(5)
    assert bar._bar.n == 5
    bar.close()


def test_cached_reads_an_entry_without_computing_or_waiting(tmp_path):
    from core.featurize import cached

    frames = structures()
    counting = Counting(ToyEMTPotential())
    assert cached(frames, counting, tmp_path) is None and counting.calls == 0  # nothing there yet
    written = featurize(frames, counting, batch_size=2, cache_dir=tmp_path)
    calls = counting.calls
    hit = cached(frames, counting, tmp_path)
    assert counting.calls == calls and hit.meta["cache_hit"] is True
    np.testing.assert_array_equal(hit.descriptors, written.descriptors)
    np.testing.assert_array_equal(hit.errors, written.errors)
    assert cached(frames, counting, tmp_path, labelled=False) is None  # other settings: other keys
    assert cached(frames, counting, tmp_path, descriptor_dtype="float64") is None
    assert cached(frames[:-1], counting, tmp_path) is None
    with pytest.raises(TypeError, match="potential: expected a Potential"):
        cached(frames, object(), tmp_path)


def test_cached_leaves_an_unreadable_entry_to_featurize_which_warns_once(tmp_path):
    import warnings

    from core.featurize import cached

    frames = structures()
    counting = Counting(ToyEMTPotential())
    featurize(frames, counting, batch_size=2, cache_dir=tmp_path)
    (entry,) = tmp_path.glob("featurize-*.npz")
    assert entry.with_suffix(".lock").is_file()  # the lock file sits beside its entry
    entry.write_bytes(b"not a zip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cached(frames, counting, tmp_path) is None
        assert not caught  # it recomputes nothing, so it says nothing
        calls = counting.calls
        featurize(frames, counting, batch_size=2, cache_dir=tmp_path)
    assert counting.calls > calls
    assert [str(w.message) for w in caught if "unreadable" in str(w.message)] == [
        f"featurize cache entry {entry} is unreadable (ValueError: {entry}: not a readable SiteTable .npz file "
        "(not a zip archive)); recomputing"]
