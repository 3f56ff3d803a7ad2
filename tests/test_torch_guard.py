"""core.torch_guard: module calls run together; a tracing (MACE unpickling) runs alone."""

from __future__ import annotations

import threading
import time

from core.torch_guard import TorchGuard


def _in_thread(fn):
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def test_calls_share_and_tracing_waits_for_them():
    guard = TorchGuard()
    order = []
    release = threading.Event()
    inside = threading.Barrier(3)

    def call(name):
        with guard.calls():
            order.append(f"{name} in")
            inside.wait(10)
            release.wait(10)
            order.append(f"{name} out")

    callers = [_in_thread(lambda n=n: call(n)) for n in ("a", "b")]
    inside.wait(10)  # both calls are inside at once
    assert sorted(order) == ["a in", "b in"]

    end_trace = threading.Event()

    def trace():
        with guard.tracing():
            order.append("trace")
            end_trace.wait(10)
            order.append("trace end")

    def late_call():
        with guard.calls():
            order.append("late call")

    tracer = _in_thread(trace)
    time.sleep(0.2)
    assert "trace" not in order  # waits for the running calls
    late = _in_thread(late_call)
    time.sleep(0.2)
    assert "late call" not in order  # a waiting tracer goes first
    release.set()
    for t in callers:
        t.join(10)
    time.sleep(0.2)
    assert order.index("trace") > max(order.index("a out"), order.index("b out"))
    assert "late call" not in order  # waits while the tracer holds the guard
    end_trace.set()
    tracer.join(10)
    late.join(10)
    assert order[-2:] == ["trace end", "late call"]


def test_reentrant_in_one_thread():
    guard = TorchGuard()
    with guard.tracing():
        with guard.tracing():
            with guard.calls():  # a tracer's own module calls do not wait for it
                pass
    with guard.calls():
        with guard.calls():
            with guard.tracing():  # a load inside this thread's own call waits for no one else
                pass
    _assert_free(guard)


def test_a_failing_block_releases_the_guard():
    guard = TorchGuard()
    for block in (guard.calls, guard.tracing):
        try:
            with block():
                raise RuntimeError("forward failed")
        except RuntimeError:
            pass
    _assert_free(guard)


def _assert_free(guard):
    """Another thread can trace at once (nothing left held)."""
    done = threading.Event()

    def trace():
        with guard.tracing():
            done.set()

    t = _in_thread(trace)
    assert done.wait(5)
    t.join(5)
    assert guard._calls == 0 and guard._tracer is None
