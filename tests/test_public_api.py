"""The public API of ``core``: lazy re-exports, __version__, and a light ``import core``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import core

HEAVY = ("torch", "mace", "e3nn", "plotly", "py3Dmol", "streamlit", "pandas")


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_core_is_light():
    code = (
        "import sys, json, core\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    assert json.loads(_python(code)) == []


def test_numpy_only_names_do_not_import_torch():
    # SiteTable, SplitConformal and calibration_report need only numpy/scipy/scikit-learn
    code = (
        "import sys, json\n"
        "from core import SiteTable, SplitConformal, calibration_report\n"
        "print(json.dumps([m for m in ('torch', 'mace', 'plotly', 'streamlit') if m in sys.modules]))"
    )
    assert json.loads(_python(code)) == []


def test_version_is_a_string():
    assert isinstance(core.__version__, str) and core.__version__
    assert core.__version__[0].isdigit()


def test_documented_names_resolve():
    from core.calibration import load_calibrator, make_calibrator
    from core.calibration.conformal import SplitConformal
    from core.metrics import calibration_report
    from core.sites import SiteTable

    assert core.SiteTable is SiteTable
    assert core.SplitConformal is SplitConformal
    assert core.calibration_report is calibration_report
    assert core.make_calibrator is make_calibrator
    assert core.load_calibrator is load_calibrator
    from core import FlexibleQuantile, featurize, load_potential, read_dataset  # noqa: F401

    assert callable(featurize) and callable(load_potential) and callable(read_dataset)
    assert isinstance(FlexibleQuantile, type)


def test_all_lists_every_export_and_each_resolves():
    expected = {
        "SiteTable", "SplitConformal", "FlexibleQuantile", "calibration_report", "read_dataset",
        "featurize", "load_potential", "make_calibrator", "load_calibrator", "__version__",
    }
    assert expected <= set(core.__all__)
    for name in core.__all__:
        assert getattr(core, name) is not None, name
    assert expected <= set(dir(core))


def test_featurize_stays_the_function_after_its_submodule_is_imported():
    code = (
        "import core, core.featurize, json\n"
        "from core import featurize\n"
        "import sys\n"
        "print(json.dumps([callable(featurize), featurize is sys.modules['core.featurize'].featurize,\n"
        "                  type(core.featurize).__name__]))"
    )
    assert json.loads(_python(code)) == [True, True, "function"]


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        core.not_a_name  # noqa: B018
