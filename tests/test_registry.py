"""The method registry: one class + one entry makes a calibrator appear everywhere."""

from __future__ import annotations

import numpy as np
import pytest

from core.calibration import Calibrator, make_calibrator
from core.calibration.registry import (
    MethodSpec,
    default_method_names,
    method_names,
    method_spec,
    methods_help,
    register_method,
    unregister_method,
)
from core.sites import SiteTable


class HalfSplit(Calibrator):
    """A toy calibrator: half the largest calibration error, for every site."""

    kind = "toy_half"
    name = "half"
    label = "half-max toy"

    def fit(self, sites, *, target=None, reference=None, callback=None):
        self.width_ = 0.5 * float(np.max(sites.errors))
        return self

    @property
    def is_fitted(self):
        return hasattr(self, "width_")

    def predict(self, sites):
        self._check_fitted()
        return np.full(len(sites), self.width_)

    def predict_levels(self, sites, levels):
        return np.tile(self.predict(sites)[:, None], (1, len(np.atleast_1d(levels))))

    def get_params(self):
        return {"confidence": self.confidence}


@pytest.fixture
def toy():
    spec = register_method(MethodSpec("half", "half-max toy", "#117733", "half the largest calibration error",
                                      lambda confidence, seed, **o: HalfSplit(confidence)))
    yield spec
    unregister_method("half")


def _sites(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return SiteTable.from_arrays(descriptors=rng.normal(size=(n * 5, 3)), errors=rng.random(n * 5),
                                 species=np.full(n * 5, 1), structure_ids=np.repeat(np.arange(n), 5))


def test_builtin_methods_and_metadata():
    names = method_names()
    assert names[:2] == ("flexible", "flexible-ood")
    assert {"split", "knn", "gmm", "force", "committee", "mondrian"} <= set(names)
    assert method_spec("split").label == "split CP"
    assert "committee" not in default_method_names(_sites())
    assert "split      = global split conformal" in methods_help()
    with pytest.raises(ValueError, match="unknown calibration method 'nope'"):
        method_spec("nope")


def test_toy_method_appears_everywhere(toy):
    from core import figures
    from core.evaluation import evaluate
    from core.studies import run_in_domain

    assert "half" in method_names()
    import core.calibration

    assert "half" in core.calibration.METHODS  # the live view
    cal = make_calibrator("half", confidence=0.8)
    assert isinstance(cal, HalfSplit) and cal.confidence == 0.8
    sites = _sites()
    table = run_in_domain(sites, ["split", "half"], seed=0)
    assert table["label"].tolist() == ["split", "half"]
    c, t = sites.split(0.5, seed=0)
    ev = evaluate(c, {"t": t}, ["half"])
    assert ev.widths_of("half") == pytest.approx(np.full(len(t), 0.5 * c.errors.max()))
    assert figures.method_color("half") == "#117733"
    assert figures.method_colors(["half-max toy", "split CP"]) == {"half-max toy": "#117733", "split CP": "#0072B2"}
    assert "half       = half the largest calibration error" in methods_help()


def test_register_refuses_duplicates_and_bad_names(toy):
    with pytest.raises(ValueError, match="already registered"):
        register_method(toy)
    with pytest.raises(ValueError, match="without commas"):
        register_method(MethodSpec("a,b", "x", "#000000", "x", lambda c, s: None))
    with pytest.raises(TypeError, match="expected a MethodSpec"):
        register_method("half")
