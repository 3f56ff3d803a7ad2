"""`make app` runs `python -m app.launch`: streamlit run app/main.py, with the heavy imports warming from the start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("streamlit")


def test_launch_starts_the_warm_up_then_streamlit_run_on_main(monkeypatch):
    from streamlit.web import cli as stcli

    from app import launch, prewarm
    from core.demo import DEFAULT_FAMILY

    calls = []
    monkeypatch.setattr(prewarm, "start_app_demo_process", lambda family: calls.append(("process", family)))
    monkeypatch.setattr(prewarm, "start", lambda demo_family=None: calls.append(("prewarm", demo_family)))
    monkeypatch.setattr(stcli, "main", lambda: calls.append(list(sys.argv)) or 0)
    monkeypatch.setattr(sys, "argv", ["python"])
    monkeypatch.delenv("FLEXCAL_WARM_DEMO", raising=False)
    assert launch.main(["--server.port", "8502"]) == 0
    assert calls[:2] == [("process", DEFAULT_FAMILY), ("prewarm", DEFAULT_FAMILY)]  # before the server starts
    assert calls[2] == ["streamlit", "run", str(launch.MAIN), "--server.port", "8502"]
    assert launch.MAIN.name == "main.py" and launch.MAIN.parent.name == "app" and launch.MAIN.is_file()
    calls.clear()
    monkeypatch.setenv("FLEXCAL_WARM_DEMO", "0")  # no demo: no warm-up process, the thread imports everything
    assert launch.main([]) == 0
    assert calls[:2] == [("prewarm", None), ["streamlit", "run", str(launch.MAIN)]]


def test_launch_starts_the_warm_up_process_before_importing_streamlit(tmp_path):
    """The first diagnosis waits for the warm-up process: it starts before Streamlit's ~0.6 s import."""
    code = (
        "import sys, importlib.abc\n"
        "events = []\n"
        "class Watch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'streamlit':\n"
        "            events.append('import streamlit')\n"
        "        return None\n"
        "sys.meta_path.insert(0, Watch())\n"
        "from app import launch, prewarm\n"
        "prewarm.start_app_demo_process = lambda family: events.append('process ' + family)\n"
        "prewarm.start = lambda demo_family=None: events.append('thread')\n"
        "try:\n"
        "    launch.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(events, file=sys.stderr)\n"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, FLEXCAL_WARM_DEMO="molecule", FLEXCAL_CACHE_DIR=str(tmp_path)))
    assert out.stderr.strip().splitlines()[-1] == "['process molecule', 'import streamlit', 'thread']", out.stderr


@pytest.mark.parametrize(("value", "family"), [("0", None), ("", None), (" surface ", "surface")])
def test_warm_demo_family_from_the_environment(monkeypatch, value, family):
    from app import launch

    monkeypatch.setenv("FLEXCAL_WARM_DEMO", value)
    assert launch.warm_demo_family() == family


def test_warm_demo_family_refuses_an_unknown_family(monkeypatch, capsys):
    from app import launch

    monkeypatch.setenv("FLEXCAL_WARM_DEMO", "graphene")
    with pytest.raises(SystemExit) as exc:
        launch.warm_demo_family()
    assert exc.value.code == 2
    assert capsys.readouterr().err == ("FLEXCAL_WARM_DEMO: expected one of ['licl', 'molecule', 'surface'], "
                                       "empty or 0, got 'graphene'\n")


def test_prewarm_starts_one_thread_per_process_and_loads_torch_and_mace_contained():
    from app import prewarm

    first = prewarm.start()
    assert prewarm.start() is first  # a second call (app/main.py after the first page) starts nothing new
    first.join(timeout=300)
    assert not first.is_alive()
    import gc

    frozen = gc.get_freeze_count()
    gc.unfreeze()  # (the rest of the test session is not an app server)
    assert frozen > 100_000  # the start-up modules are out of the collector's sight
    assert sys.getswitchinterval() == pytest.approx(0.005)  # the warm-up's shorter GIL interval is put back
    assert {"torch", "mace.modules", "e3nn", "core.calibration", "core.metrics", "scipy.stats", "py3Dmol"} <= set(sys.modules)
    from core.potentials import restored_environ

    with restored_environ():  # (holds the lock: no other thread is inside a load right now)
        assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ  # mace's environment change stays contained
    with pytest.raises(ValueError, match="stage: expected 'featurize' or 'calibrate', got 'train'"):
        prewarm.warm_imports("train")


def test_warm_demo_features_fill_the_cache_the_model_page_reads(tmp_path):
    from app import prewarm
    from app.job import featurize_table
    from core.demo import demo_model_path
    from core.potentials import load_potential
    from core.sources import resolve_data

    family = "molecule"  # the smallest demo
    if not demo_model_path(family).is_file():
        pytest.skip("demo model not installed")
    prewarm.warm_demo_features(family, tmp_path)
    assert len(list(tmp_path.glob("featurize-*.npz"))) == 1
    dataset, _ = resolve_data(family)  # what the Data and Model pages build for the demo
    sites = featurize_table(dataset, load_potential(f"demo:{family}"), cache_dir=tmp_path)
    assert sites.meta["cache_hit"] is True and len(sites) == sum(len(a) for a in dataset.structures)


def test_services_prewarm_uses_the_same_thread():
    from app import prewarm, services

    assert services.prewarm() is True
    assert prewarm._thread is not None and prewarm.start() is prewarm._thread


def test_the_warm_up_process_records_the_demo_model_and_fills_the_cache_for_a_deferred_load(tmp_path, monkeypatch):
    """`python -m app.prewarm FAMILY DIR` featurizes the demo into DIR; this process then reads the
    features through a deferred potential without loading the model (no mace-torch needed here)."""
    from app import prewarm
    from app.job import featurize_table
    from core.demo import demo_model_path
    from core.potentials.deferred import DeferredPotential, record_path
    from core.sources import resolve_data

    family = "molecule"  # the smallest demo
    if not demo_model_path(family).is_file():
        pytest.skip("demo model not installed")
    monkeypatch.setattr(prewarm, "_demo_processes", {})
    monkeypatch.setattr(prewarm, "_demo_potentials", {})
    process = prewarm.start_demo_process(family, tmp_path)
    assert prewarm.start_demo_process(family, tmp_path) is process  # once per family
    assert process.args[1:] == ["-m", "app.prewarm", family, str(tmp_path.resolve())]
    potential = prewarm.demo_potential(family, tmp_path)  # waits for the process's record
    assert record_path(f"demo:{family}", tmp_path).is_file()
    assert isinstance(potential, DeferredPotential) and not potential.loaded
    assert process.wait(timeout=300) == 0
    dataset, _ = resolve_data(family)
    sites = featurize_table(dataset, potential, cache_dir=tmp_path)
    assert sites.meta["cache_hit"] is True and sites.meta["potential_identity"] == potential.identity
    assert not potential.loaded  # cached features need no model
    assert len(sites) == sum(len(a) for a in dataset.structures)
    # the next launch's warm-up process finds both and imports neither torch nor mace-torch
    again = subprocess.run([sys.executable, "-c", "import sys; from app import prewarm; "
                            f"code = prewarm.main([{family!r}, {str(tmp_path)!r}]); "
                            "print(code, 'torch' in sys.modules, 'mace' in sys.modules)"],
                           capture_output=True, text=True, timeout=300, cwd=str(Path(prewarm.__file__).parent.parent))
    assert again.stdout.split() == ["0", "False", "False"], again.stderr[-2000:]


def test_demo_potential_stops_waiting_when_the_warm_up_process_ends_without_a_record(tmp_path, monkeypatch):
    from app import prewarm

    class Ended:  # a warm-up process that failed before recording the model
        def __init__(self):
            self.polls = 0

        def poll(self):
            self.polls += 1
            return None if self.polls < 3 else 1

    ended = Ended()
    record = tmp_path / "potential-x.json"
    prewarm._wait_for_record(ended, record)
    assert ended.polls == 3 and not record.exists()
    prewarm._wait_for_record(None, record)  # no warm-up process: no wait
    record.write_text("{}")
    running = Ended()
    prewarm._wait_for_record(running, record)  # recorded already: no wait
    assert running.polls == 1


@pytest.mark.parametrize(("argv", "message"), [
    ([], "usage: python -m app.prewarm FAMILY CACHE_DIR"),
    (["graphene", "/tmp"], "FAMILY: expected one of ['licl', 'molecule', 'surface'], got 'graphene'"),
])
def test_the_warm_up_process_refuses_bad_arguments(argv, message, capsys):
    from app import prewarm

    assert prewarm.main(argv) == 2
    assert capsys.readouterr().err == message + "\n"


def test_the_warm_up_process_exits_with_mains_code_and_its_message():
    """The module run as a process ends with ``os._exit`` (no interpreter teardown): the exit code
    and the message written before it still arrive."""
    from app import prewarm

    done = subprocess.run([sys.executable, "-m", "app.prewarm", "graphene", "/tmp"], capture_output=True, text=True,
                          timeout=120, cwd=str(Path(prewarm.__file__).parent.parent))
    assert done.returncode == 2
    assert done.stderr == "FAMILY: expected one of ['licl', 'molecule', 'surface'], got 'graphene'\n"
