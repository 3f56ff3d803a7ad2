"""Save/load of every calibrator kind, file-format errors, make_calibrator."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from core.calibration import METHODS, FlexibleQuantile, SplitConformal, load_calibrator, make_calibrator
from core.calibration.base import FORMAT
from core.sites import SiteTable

LEVELS = [0.05, 0.3, 0.5, 0.9, 0.95, 0.995]
FAST_FLEXIBLE = dict(hidden=(8,), max_epochs=4, levels=(0.5, 0.9, 0.99))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def make_sites(n_structures, atoms=4, seed=0, species=(1, 8)) -> SiteTable:
    rng = np.random.default_rng(seed)
    n = n_structures * atoms
    x = rng.normal(size=(n, 3))
    sigma = 0.1 * (1 + x[:, 0] ** 2)
    return SiteTable.from_arrays(
        descriptors=x, errors=sigma * np.sqrt(rng.chisquare(3, n)), species=rng.choice(species, n),
        structure_ids=np.repeat(np.arange(n_structures), atoms), forces_pred=rng.normal(size=(n, 3)),
        committee_std=sigma * rng.uniform(0.5, 2, n),
    )


@pytest.fixture(scope="module")
def data():
    return make_sites(60, seed=0), make_sites(15, seed=1, species=(1, 8, 6))  # test has an unseen species


def _fit(method, cal, **extra):
    options = dict(FAST_FLEXIBLE) if method in ("flexible", "flexible-ood") else {}
    options.update(extra)
    if method == "gmm":
        options.setdefault("max_components", 2)
    return make_calibrator(method, confidence=0.9, seed=1, **options).fit(cal)


@pytest.mark.parametrize("method", METHODS)
def test_save_load_gives_identical_predictions(method, data, tmp_path):
    cal_sites, test = data
    cal = _fit(method, cal_sites)
    path = cal.save(tmp_path / f"{method}.npz")
    assert path.is_file() and list(tmp_path.iterdir()) == [path]
    loaded = load_calibrator(path)
    assert type(loaded) is type(cal)
    assert (loaded.name, loaded.label, loaded.confidence) == (cal.name, cal.label, cal.confidence)
    np.testing.assert_array_equal(loaded.predict(test), cal.predict(test))
    np.testing.assert_array_equal(loaded.predict_levels(test, LEVELS), cal.predict_levels(test, LEVELS))
    # the file is plain arrays: readable with pickling disabled, metadata is JSON
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"]))
        assert all(z[k].dtype != object for k in z.files)
    assert meta["format"] == FORMAT and meta["name"] == cal.name
    assert meta["kind"] == {"flexible": "flexible_quantile", "flexible-ood": "flexible_ood"}.get(method, "split_conformal")


@pytest.mark.parametrize("weights", ["structure", "shift", "array"])
def test_save_load_weighted_flexible(weights, data, tmp_path):
    cal_sites, test = data
    w = np.linspace(0.5, 2.0, len(cal_sites)) if weights == "array" else weights
    q = FlexibleQuantile(weights=w, seed=2, **FAST_FLEXIBLE).fit(cal_sites, target=make_sites(20, seed=3))
    loaded = load_calibrator(q.save(tmp_path / "q"))  # suffix added
    assert loaded.weights.name == weights
    np.testing.assert_array_equal(loaded.predict(test), q.predict(test))
    np.testing.assert_array_equal(loaded.predict_uncorrected(test), q.predict_uncorrected(test))
    np.testing.assert_array_equal(loaded.predict_levels(test, LEVELS), q.predict_levels(test, LEVELS))
    assert loaded.history_ == q.history_ and loaded.correction_ == q.correction_


def test_mondrian_and_knn_options_survive_round_trip(data, tmp_path):
    cal_sites, test = data
    cal = make_calibrator("knn", k=3, mondrian=True).fit(cal_sites)
    assert cal.name == "knn-mondrian" and cal.label == "kNN-normalised Mondrian CP"
    loaded = load_calibrator(cal.save(tmp_path / "k.npz"))
    assert loaded.heuristic_.k == 3 and loaded.mondrian
    assert loaded.quantile_ == cal.quantile_
    np.testing.assert_array_equal(loaded.predict(test), cal.predict(test))


def test_load_uses_allow_pickle_false(data, tmp_path, monkeypatch):
    path = _fit("split", data[0]).save(tmp_path / "s.npz")
    calls = []
    real_load = np.lib.format.read_array

    def spy(*args, **kwargs):
        calls.append(kwargs.get("allow_pickle"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "read_array", spy)  # core.safe_npz reads every entry through it
    load_calibrator(path)
    assert calls and set(calls) == {False}


# ----------------------------------------------------------------------- bad files
def _meta(**over):
    meta = {"format": FORMAT, "kind": "split_conformal", "version": 1, "name": "split",
            "params": {"confidence": 0.9, "heuristic": "constant", "mondrian": False},
            "state": {"heuristic": {"name": "constant", "params": {}}}}
    meta.update(over)
    return np.array(json.dumps(meta))


def test_corrupt_and_foreign_files_raise_valueerror_naming_the_path(data, tmp_path):
    good = _fit("split", data[0]).save(tmp_path / "good.npz")
    cases = {}
    p = tmp_path / "garbage.npz"
    p.write_bytes(b"this is not a zip file at all")
    cases[p] = r"not a readable FlexCal calibrator \.npz file"
    p = tmp_path / "truncated.npz"
    p.write_bytes(good.read_bytes()[:200])
    cases[p] = r"not a readable FlexCal calibrator"
    p = tmp_path / "pickled.npz"
    np.savez(p, __meta__=_meta(), scores=np.array([object()], dtype=object), species=np.array([1]))
    cases[p] = r"entry 'scores' holds Python objects \(a pickle\); a FlexCal calibrator stores plain numbers"
    p = tmp_path / "nometa.npz"
    np.savez(p, scores=np.ones(3))
    cases[p] = r"not a FlexCal calibrator \(no __meta__ entry\)"
    p = tmp_path / "badjson.npz"
    np.savez(p, __meta__=np.array("{not json"))
    cases[p] = r"__meta__ is not valid JSON"
    p = tmp_path / "format.npz"
    np.savez(p, __meta__=_meta(format="flexcal.SiteTable"))
    cases[p] = r"format is 'flexcal\.SiteTable', expected 'flexcal\.Calibrator'"
    p = tmp_path / "kind.npz"
    np.savez(p, __meta__=_meta(kind="random_forest"))
    cases[p] = r"unknown calibrator kind 'random_forest'; known kinds are split_conformal, flexible_quantile"
    p = tmp_path / "version.npz"
    np.savez(p, __meta__=_meta(version=99))
    cases[p] = r"calibrator format version 99 is newer"
    p = tmp_path / "missing.npz"
    np.savez(p, __meta__=_meta())
    cases[p] = r"damaged split_conformal calibrator \(KeyError: 'scores'\)"
    p = tmp_path / "wrongkind.npz"  # a split file relabelled as flexible
    with np.load(good, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["__meta__"] = _meta(kind="flexible_quantile", params={"confidence": 0.9})
    np.savez(p, **arrays)
    cases[p] = r"damaged flexible_quantile calibrator"
    for path, pattern in cases.items():
        with pytest.raises(ValueError, match=str(path).replace(".", r"\.") + ": " + pattern):
            load_calibrator(path)
    with pytest.raises(FileNotFoundError, match=r"nothere\.npz: no such calibrator file"):
        load_calibrator(tmp_path / "nothere.npz")
    with zipfile.ZipFile(good) as zf:  # the good file really is a plain zip of .npy entries
        assert "__meta__.npy" in zf.namelist()


# ------------------------------------------------------------------- make_calibrator
def test_make_calibrator_methods_names_and_labels():
    expected = {
        "flexible": ("flexible", "q_θ (flexible)"),
        "flexible-ood": ("flexible-ood", "q_θ × distance (flexible-ood)"),
        "split": ("split", "split CP"),
        "knn": ("knn", "kNN-normalised CP"),
        "gmm": ("gmm", "GMM-normalised CP"),
        "force": ("force", "force-normalised CP"),
        "committee": ("committee", "committee-normalised CP"),
        "mondrian": ("mondrian", "Mondrian CP"),
    }
    assert set(expected) == set(METHODS)
    for method, (name, label) in expected.items():
        cal = make_calibrator(method, confidence=0.8, seed=3)
        assert (cal.name, cal.label, cal.confidence) == (name, label, 0.8)
    assert make_calibrator("gmm", seed=3).heuristic.seed == 3
    assert isinstance(make_calibrator("mondrian"), SplitConformal) and make_calibrator("mondrian").mondrian


def test_make_calibrator_bad_inputs(data):
    with pytest.raises(ValueError, match=r"method: unknown calibration method 'bayes'; valid methods are flexible, flexible-ood, split, knn, gmm, force, committee, mondrian"):
        make_calibrator("bayes")
    with pytest.raises(ValueError, match=r"confidence: expected a number in \(0, 1\), e\.g\. 0\.9, got 1\.5"):
        make_calibrator("split", confidence=1.5)
    with pytest.raises(ValueError, match=r"confidence: .*got 1\.5"):
        make_calibrator("flexible", confidence=1.5)
    with pytest.raises(TypeError, match=r"heuristic 'constant': bad parameters \['k'\]"):
        make_calibrator("split", k=3)
    with pytest.raises(RuntimeError, match=r"SplitConformal \(split\) is not fitted; call fit\(\) first"):
        make_calibrator("split").save("never.npz")
    with pytest.raises(ValueError, match=r"sites: the 'committee' heuristic needs a committee force spread"):
        make_calibrator("committee").fit(SiteTable.from_arrays(
            descriptors=np.zeros((3, 1)), errors=np.ones(3), species=[1, 1, 1], structure_ids=[0, 1, 2]))
