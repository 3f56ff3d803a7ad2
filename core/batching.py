"""How structures are cut into batches and run through a potential, one batch or several at a time.

:func:`plan_batches` is the one batch plan (``core.featurize`` and ``core.distributed`` both cut
with it). :func:`batch_outputs` runs the batches and yields their outputs in plan order, either
one after the other or on a few Python threads at once (``threads``): each batch is computed
alone, so the numbers are the same bit for bit, and a consumer fills its rows in order.

Threads help when a core would otherwise idle: a potential's forward and backward passes release
Python's interpreter lock inside torch's kernels, so two threads each with one torch intra-op
thread featurized the three demos 1.45-1.8x faster on two cores than one thread, for 0-7 % more
CPU (``python -m benchmarks.bench_featurize_threads``). Only a potential that declares
``concurrent_compute = True`` (its ``compute`` may run in several threads at once; MACE) gets
them; any other runs one batch at a time.
"""

from __future__ import annotations

import collections
import contextlib
import os
from typing import Iterator, Sequence

import numpy as np

__all__ = ("batch_outputs", "batch_threads", "plan_batches", "usable_cores")


def plan_batches(sizes: np.ndarray, batch_size: int, max_atoms: int) -> Iterator[tuple[int, int]]:
    """(start, stop) slices of consecutive structures; <= batch_size structures and,
    unless a single structure is larger, <= max_atoms atoms each."""
    lo = 0
    m = len(sizes)
    while lo < m:
        hi = lo + 1
        atoms = int(sizes[lo])
        while hi < m and hi - lo < batch_size and atoms + int(sizes[hi]) <= max_atoms:
            atoms += int(sizes[hi])
            hi += 1
        yield lo, hi
        lo = hi


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the system tells it, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def batch_threads(potential, threads: int) -> int:
    """How many batches of ``potential`` run at once when ``threads`` are asked for: ``threads``
    if the potential declares ``concurrent_compute = True``, else 1."""
    return int(threads) if threads > 1 and getattr(potential, "concurrent_compute", False) is True else 1


@contextlib.contextmanager
def batch_outputs(potential, atoms_list: Sequence, batches, threads: int = 1):
    """A context giving an iterator of ``(lo, hi, potential.compute(atoms_list[lo:hi]))`` in the
    order of ``batches`` (``(lo, hi)`` pairs), with up to :func:`batch_threads` batches computed at once.

    Leaving the block early (an error, a cancel raised by a progress callback) cancels the batches
    not started and waits for the ones running (at most ``threads``); a batch's error is raised
    when its turn comes, as it would be one batch at a time.
    """
    n = batch_threads(potential, threads)
    if n == 1:
        yield ((lo, hi, potential.compute(atoms_list[lo:hi])) for lo, hi in batches)
        return
    from concurrent.futures import ThreadPoolExecutor

    pending: collections.deque = collections.deque()
    batches = iter(batches)
    with ThreadPoolExecutor(n, thread_name_prefix="flexcal-batch") as pool:
        def submit() -> None:
            batch = next(batches, None)
            if batch is not None:
                lo, hi = batch
                pending.append((lo, hi, pool.submit(potential.compute, atoms_list[lo:hi])))

        def in_order():
            for _ in range(n):
                submit()
            while pending:
                lo, hi, future = pending[0]
                out = future.result()
                pending.popleft()
                submit()  # the next batch starts while the consumer handles this one
                yield lo, hi, out

        try:
            yield in_order()
        finally:
            for *_, future in pending:
                future.cancel()
