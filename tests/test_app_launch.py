"""`make app` runs `python -m app.launch`: streamlit run app/main.py, with the heavy imports warming from the start."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("streamlit")


def test_launch_starts_the_warm_up_then_streamlit_run_on_main(monkeypatch):
    from streamlit.web import cli as stcli

    from app import launch, prewarm

    calls = []
    monkeypatch.setattr(prewarm, "start", lambda: calls.append("prewarm"))
    monkeypatch.setattr(stcli, "main", lambda: calls.append(list(sys.argv)) or 0)
    monkeypatch.setattr(sys, "argv", ["python"])
    assert launch.main(["--server.port", "8502"]) == 0
    assert calls[0] == "prewarm"  # before the server starts
    assert calls[1] == ["streamlit", "run", str(launch.MAIN), "--server.port", "8502"]
    assert launch.MAIN.name == "main.py" and launch.MAIN.parent.name == "app" and launch.MAIN.is_file()


def test_prewarm_starts_one_thread_per_process_and_loads_torch():
    from app import prewarm

    first = prewarm.start()
    assert prewarm.start() is first  # a second call (app/main.py after the first page) starts nothing new
    first.join(timeout=300)
    assert not first.is_alive()
    assert "torch" in sys.modules and "core.potentials.mace" in sys.modules


def test_services_prewarm_uses_the_same_thread():
    from app import prewarm, services

    assert services.prewarm() is True
    assert prewarm._thread is not None and prewarm.start() is prewarm._thread
