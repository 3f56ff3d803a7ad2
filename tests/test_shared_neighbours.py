"""One k-NN search per site: flexible-ood's widths and its out-of-domain flags share it (issue 11).

``DomainScore.neighbours`` / ``FlexibleOOD.neighbours`` return a ``core.domain.Neighbours`` that
``predict``, ``predict_levels``, ``ood_flags`` and the domain score's ``score``/``structure_scores``
accept; ``core.apply.annotate_sites`` makes the search once. The search itself is a float32
brute-force candidate pass + exact float64 re-measurement (+ exact k-d tree fallback), which must
give the k-d tree's distances.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import core.domain as domain_module  # noqa: E402
from core.apply import annotate_sites, shared_neighbours  # noqa: E402
from core.calibration.ood import FlexibleOOD  # noqa: E402
from core.domain import DomainScore, Neighbours  # noqa: E402
from core.sites import SiteTable  # noqa: E402
from tests.test_domain import temperature_sites  # noqa: E402

SMALL = dict(hidden=(16, 16), max_epochs=20)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def fitted():
    """flexible-ood fitted at T in [0.9, 1.1]; new sites: in-domain and hot (T = 2) structures, shuffled."""
    torch.set_num_threads(1)
    cal = FlexibleOOD(seed=0, **SMALL).fit(temperature_sites(120, seed=1))
    new = temperature_sites(60, seed=3, first_id=2000)
    hot = temperature_sites(60, 2.0, seed=4, first_id=3000)
    both = SiteTable.from_arrays(
        descriptors=np.vstack([new.descriptors, hot.descriptors]), errors=np.r_[new.errors, hot.errors],
        species=np.r_[new.species, hot.species], structure_ids=np.r_[new.structure_ids, hot.structure_ids])
    order = np.random.default_rng(0).permutation(len(both))
    return cal, both.select(order)


def _count_searches(monkeypatch) -> list:
    """Count the k-NN searches of new sites (every path goes through DomainScore.distances)."""
    calls = []
    original = DomainScore.distances

    def counted(self, sites, **kwargs):
        calls.append(len(sites))
        return original(self, sites, **kwargs)

    monkeypatch.setattr(DomainScore, "distances", counted)
    return calls


def test_shared_neighbours_give_identical_widths_levels_and_flags(fitted, monkeypatch):
    cal, sites = fitted
    calls = _count_searches(monkeypatch)
    alone_w = cal.predict(sites)
    alone_l = cal.predict_levels(sites, [0.5, 0.8, 0.95])
    alone_f = cal.ood_flags(sites)
    alone_s = cal.domain_.structure_scores(sites)
    assert calls == [len(sites)] * 4  # each consumer searched on its own
    calls.clear()
    nb = cal.neighbours(sites)
    assert isinstance(nb, Neighbours) and nb.distances.shape == (len(sites),) and nb.domain is cal.domain_
    np.testing.assert_array_equal(cal.predict(sites, neighbours=nb), alone_w)
    np.testing.assert_array_equal(cal.predict_levels(sites, [0.5, 0.8, 0.95], neighbours=nb), alone_l)
    np.testing.assert_array_equal(cal.ood_flags(sites, neighbours=nb), alone_f)
    ids, s = cal.domain_.structure_scores(sites, neighbours=nb)
    np.testing.assert_array_equal(ids, alone_s[0])
    np.testing.assert_array_equal(s, alone_s[1])
    assert calls == [len(sites)]  # one search for all of them
    # the hot structures are wider and flagged: the shared values are real ones, not a constant
    hot = sites.structure_ids >= 3000
    assert alone_w[hot].mean() > 2.0 * alone_w[~hot].mean()
    assert alone_f[hot].mean() > 0.3 > 0.05 > alone_f[~hot].mean()
    hot_frames = alone_s[0] >= 3000
    assert (alone_s[1][hot_frames] > 1.0).all() and (alone_s[1][~hot_frames] > 1.0).mean() < 0.1


def test_annotate_sites_searches_once_and_matches_the_unshared_annotation(fitted, monkeypatch):
    cal, sites = fitted
    calls = _count_searches(monkeypatch)
    ann = annotate_sites(sites, cal, levels=[0.5, 0.95], threshold=0.5)
    assert calls == [len(sites)]  # widths, levels, site and frame scores: one search
    # the same annotation with each consumer searching on its own
    calls.clear()
    monkeypatch.setattr(FlexibleOOD, "neighbours", property(lambda self: None))  # not callable: no sharing
    assert shared_neighbours(cal, cal.domain_, sites) is None
    unshared = annotate_sites(sites, cal, levels=[0.5, 0.95], threshold=0.5)
    assert calls == [len(sites)] * 3  # predict, predict_levels, then one for both domain scores
    for name in ("widths", "widths_levels", "ood_score", "frame_ood_score", "max_width", "mean_width"):
        np.testing.assert_allclose(getattr(ann, name), getattr(unshared, name), rtol=1e-12, atol=0, err_msg=name)
    for name in ("ood", "frame_ood", "flagged", "max_width_atom", "frame_ids"):
        np.testing.assert_array_equal(getattr(ann, name), getattr(unshared, name), err_msg=name)
    assert 0 < ann.flagged.sum() < ann.n_frames


def test_a_separate_domain_score_is_not_shared(fitted, monkeypatch):
    cal, sites = fitted
    other = DomainScore(5, seed=1).fit(temperature_sites(80, seed=7, first_id=5000))
    assert shared_neighbours(cal, other, sites) is None
    calls = _count_searches(monkeypatch)
    ann = annotate_sites(sites, cal, domain=other)
    assert len(calls) == 2  # the calibrator's own search and the other score's
    np.testing.assert_array_equal(ann.ood, other.flags(sites))


def test_neighbours_of_other_sites_or_another_score_are_refused(fitted):
    cal, sites = fitted
    nb = cal.neighbours(sites)
    part = sites.select(np.arange(10))
    with pytest.raises(ValueError, match=r"neighbours: computed for other sites \(960 sites, these are 10\)"):
        cal.predict(part, neighbours=nb)
    other = DomainScore(5).fit(temperature_sites(40, seed=8, first_id=6000))
    with pytest.raises(ValueError, match="neighbours: computed by another domain score"):
        other.score(sites, neighbours=nb)
    with pytest.raises(TypeError, match="neighbours: expected a core.domain.Neighbours, got ndarray"):
        cal.domain_.score(sites, neighbours=nb.distances)
    relabelled = SiteTable.from_arrays(descriptors=sites.descriptors, errors=None,
                                       species=np.where(np.arange(len(sites)) % 2, 6, 1),
                                       structure_ids=sites.structure_ids)  # same length, other sites
    with pytest.raises(ValueError, match=r"computed for other sites \(960 sites, these are 960\)"):
        cal.ood_flags(relabelled, neighbours=nb)


def _tree_distances(ds: DomainScore, sites: SiteTable) -> np.ndarray:
    """The exact search of the k-d trees alone (the reference the fast search must reproduce)."""
    out = np.full(len(sites), np.inf)
    for z in np.unique(sites.species):
        if int(z) not in ds._mean:
            continue
        rows = np.flatnonzero(sites.species == z)
        x = (sites.descriptors[rows] - ds._mean[int(z)]) / ds._std[int(z)]
        out[rows] = ds._query(int(z), x, None)
    return out


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_the_fast_search_gives_the_exact_tree_distances(backend, k, monkeypatch):
    if backend == "numpy":
        monkeypatch.setattr(domain_module, "_smallest_columns",
                            lambda g, kc: np.argpartition(g, kc - 1, axis=1)[:, :kc])
    monkeypatch.setattr(domain_module, "_BLOCK", 4096)  # many blocks
    ds = DomainScore(k).fit(temperature_sites(50, seed=1, species=[1, 6, 8]))
    new = temperature_sites(30, 1.5, seed=2, first_id=100, species=[1, 6, 8, 9])  # 9: unseen
    fast = ds.distances(new)
    assert np.isinf(fast[new.species == 9]).all() and np.isfinite(fast[new.species != 9]).all()
    np.testing.assert_allclose(fast, _tree_distances(ds, new), rtol=1e-12, atol=0)
    # fewer domain sites than k + margin: all of them are measured exactly
    small = DomainScore(k).fit(temperature_sites(2, seed=3, atoms=6))
    assert small._x[1].shape[0] == 12
    np.testing.assert_allclose(small.distances(new.select(new.species == 1)),
                               _tree_distances(small, new.select(new.species == 1)), rtol=1e-12, atol=0)


def test_rows_the_float32_margin_cannot_prove_fall_back_to_the_tree(monkeypatch):
    """With an error bound so large that no row is proven, every row goes through the tree."""
    ds = DomainScore(5).fit(temperature_sites(50, seed=1))
    new = temperature_sites(20, 1.5, seed=2, first_id=100)
    exact = _tree_distances(ds, new)
    monkeypatch.setattr(domain_module, "_F32_ERROR", 1e6)
    queried = []
    for z, tree in list(ds._trees.items()):
        class Counting:
            n = tree.n

            def query(self, x, k, _tree=tree):
                queried.append(len(x))
                return _tree.query(x, k=k)

        ds._trees[z] = Counting()
    np.testing.assert_allclose(ds.distances(new), exact, rtol=1e-12, atol=0)
    assert sum(queried) == len(new)
