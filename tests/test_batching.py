"""core.batching: the batch plan and batches run one or several at a time, in order."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from core.batching import batch_outputs, batch_threads, plan_batches, usable_cores


class Recorder:
    """A stand-in potential: compute returns its batch's (lo, n); records calls and concurrency.

    ``meet``: a barrier every call waits at (two calls must be in flight at once, or it breaks);
    ``fail_at``: the lo of the batch whose compute raises.
    """

    def __init__(self, atoms, *, concurrent: bool | None, meet: int = 0, fail_at: int | None = None):
        if concurrent is not None:
            self.concurrent_compute = concurrent
        self.atoms = atoms
        self.started: list[int] = []
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()
        self._barrier = threading.Barrier(meet, timeout=10) if meet else None
        self.fail_at = fail_at

    def compute(self, structures):
        lo = self.atoms.index(structures[0])
        with self._lock:
            self.started.append(lo)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self._barrier is not None:
                self._barrier.wait()
            if lo == self.fail_at:
                raise ValueError(f"structure {lo}: cannot compute")
            return (lo, len(structures))
        finally:
            with self._lock:
                self.in_flight -= 1


ATOMS = [f"s{i}" for i in range(10)]
BATCHES = [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]


def test_plan_batches_cuts_by_count_and_atoms():
    sizes = np.array([3, 3, 3, 10, 1, 1])
    assert list(plan_batches(sizes, 16, 6)) == [(0, 2), (2, 3), (3, 4), (4, 6)]
    assert list(plan_batches(sizes, 2, 100)) == [(0, 2), (2, 4), (4, 6)]
    assert list(plan_batches(np.array([], dtype=np.int64), 4, 10)) == []


def test_threads_only_for_a_potential_that_declares_concurrent_compute():
    assert batch_threads(Recorder(ATOMS, concurrent=True), 3) == 3
    assert batch_threads(Recorder(ATOMS, concurrent=None), 3) == 1
    assert batch_threads(Recorder(ATOMS, concurrent=False), 3) == 1
    assert batch_threads(Recorder(ATOMS, concurrent=True), 1) == 1
    assert 1 <= usable_cores()


def test_two_batches_in_flight_results_in_plan_order():
    pot = Recorder(ATOMS, concurrent=True, meet=2)  # each call waits for a second one: serial would break
    with batch_outputs(pot, ATOMS, iter(BATCHES[:4]), threads=2) as outputs:
        got = list(outputs)
    assert got == [(lo, hi, (lo, hi - lo)) for lo, hi in BATCHES[:4]]
    assert pot.most_in_flight == 2 and sorted(pot.started) == [0, 2, 4, 6]


def test_undeclared_potential_runs_one_batch_at_a_time():
    pot = Recorder(ATOMS, concurrent=None)
    with batch_outputs(pot, ATOMS, BATCHES, threads=4) as outputs:
        got = [lo for lo, _, _ in outputs]
    assert got == [0, 2, 4, 6, 8] and pot.most_in_flight == 1 and pot.started == got


def test_leaving_early_starts_no_more_batches():
    pot = Recorder(ATOMS, concurrent=True)
    with pytest.raises(KeyboardInterrupt):
        with batch_outputs(pot, ATOMS, BATCHES, threads=2) as outputs:
            for lo, _, _ in outputs:
                raise KeyboardInterrupt  # e.g. a progress callback cancelling after the first batch
    assert len(pot.started) <= 3 and pot.in_flight == 0  # the first, at most two more; none left running


def test_a_batch_error_comes_at_its_turn():
    pot = Recorder(ATOMS, concurrent=True, fail_at=4)
    seen = []
    with pytest.raises(ValueError, match="structure 4: cannot compute"):
        with batch_outputs(pot, ATOMS, BATCHES, threads=2) as outputs:
            for lo, _, _ in outputs:
                seen.append(lo)
    assert seen == [0, 2] and pot.in_flight == 0
