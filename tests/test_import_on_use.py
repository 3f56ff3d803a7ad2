"""core.import_on_use: modules imported on first use, and mace-torch's import without torch._dynamo."""

import importlib
import importlib.util
import subprocess
import sys
import threading
import time

import pytest

from core.import_on_use import imported_on_first_use

_COUNTER = "_flexcal_import_on_use_counts"


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """A package ``iou_pkg`` (with a submodule ``sub``) and a module ``iou_slow`` that count their
    executions in ``sys._flexcal_import_on_use_counts``; removed from ``sys.modules`` afterwards."""
    (tmp_path / "iou_pkg").mkdir()
    (tmp_path / "iou_pkg" / "__init__.py").write_text(
        f"import sys\nsys.{_COUNTER}['iou_pkg'] = sys.{_COUNTER}.get('iou_pkg', 0) + 1\nVALUE = 42\n"
    )
    (tmp_path / "iou_pkg" / "sub.py").write_text("SUB = 'sub'\n")
    (tmp_path / "iou_slow.py").write_text(
        f"import sys, time\ntime.sleep(0.2)\nsys.{_COUNTER}['iou_slow'] = sys.{_COUNTER}.get('iou_slow', 0) + 1\n"
        "VALUE = 7\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, _COUNTER, {}, raising=False)
    yield getattr(sys, _COUNTER)
    for name in ("iou_pkg", "iou_pkg.sub", "iou_slow"):
        sys.modules.pop(name, None)


def test_import_in_the_block_binds_a_placeholder_that_imports_on_first_attribute(packages):
    with imported_on_first_use("iou_pkg"):
        import iou_pkg

        assert packages == {}  # bound, not executed
        assert importlib.util.find_spec("iou_pkg").name == "iou_pkg"  # the real spec, not an error
    assert "iou_pkg" not in sys.modules  # the placeholder left with the block
    assert iou_pkg.VALUE == 42
    assert packages == {"iou_pkg": 1}
    assert iou_pkg.VALUE == 42 and sys.modules["iou_pkg"].VALUE == 42
    assert packages == {"iou_pkg": 1}  # once


def test_an_import_after_the_block_is_an_ordinary_import(packages):
    with imported_on_first_use("iou_pkg"):
        pass
    import iou_pkg

    assert type(iou_pkg) is type(sys)
    assert packages == {"iou_pkg": 1}


def test_a_submodule_import_in_the_block_imports_the_real_package(packages):
    with imported_on_first_use("iou_pkg"):
        import iou_pkg.sub

        assert packages == {"iou_pkg": 1}
        assert type(sys.modules["iou_pkg"]) is type(sys)
    assert iou_pkg.sub.SUB == "sub"


def test_imported_or_unknown_names_are_left_alone(packages):
    import iou_pkg

    real = iou_pkg
    with imported_on_first_use("iou_pkg", "iou_no_such_module_anywhere"):
        assert sys.modules["iou_pkg"] is real
        assert "iou_no_such_module_anywhere" not in sys.modules
        with pytest.raises(ModuleNotFoundError, match="iou_no_such_module_anywhere"):
            importlib.import_module("iou_no_such_module_anywhere")
    assert packages == {"iou_pkg": 1}


def test_threads_using_the_placeholder_at_once_import_the_module_once(packages):
    with imported_on_first_use("iou_slow"):
        import iou_slow
    values, errors = [], []

    def use():
        try:
            values.append(iou_slow.VALUE)
        except Exception as exc:  # pragma: no cover - the failure this test looks for
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join()
    assert errors == [] and values == [7, 7, 7, 7]
    assert packages == {"iou_slow": 1}


def test_mace_import_leaves_torch_dynamo_for_later_and_mace_still_reaches_it():
    """The reason for the module: mace-torch imports torch._dynamo (~1 s of CPU) it does not use to load or run a model."""
    code = (
        "import sys\n"
        "from core.potentials.mace_foundation import mace_modules\n"
        "mace_modules()\n"
        "import mace.modules, mace.tools.compile as c\n"
        "print('torch._dynamo' in sys.modules)\n"
        "c.configure_autograd_for_compile(True)\n"  # mace's own use: the real module, its config set
        "import torch._dynamo\n"
        "print(type(sys.modules['torch._dynamo']).__name__, torch._dynamo.config.trace_autograd_ops,"
        " c.dynamo.config is torch._dynamo.config)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    printed = [line for line in out.stdout.splitlines() if "cuequivariance" not in line]  # mace's notice
    assert " ".join(printed).split() == ["False", "module", "True", "True"], out.stderr[-2000:]
