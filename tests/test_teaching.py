"""core.teaching: the pieces the notebooks share (numbers with intervals, coverage per group, toys, data)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from core import teaching
from core.teaching import (FAST_NOTE, cached_mace, chi3_quantile, coverage_by_group, fmt, infinite_widths,
                           plot_group_coverage, public_frames, shared_data_dir, show, toy_sigma_1d, toy_sites_1d,
                           toy_sites_correlated)


# ------------------------------------------------------------------------------ fmt
@pytest.mark.parametrize(("args", "kwargs", "expected"), [
    ((0.91234,), {}, "0.91"),
    ((0.91234, (0.87, 0.945)), {}, "0.91 [0.87, 0.94]"),   # 0.945 -> 0.94 (round half to even in format)
    ((0.9,), {"digits": 3}, "0.900"),
    ((0.912, (0.871, 0.944)), {"percent": True}, "91 % [87 %, 94 %]"),
    ((None,), {}, "n/a"),
    ((float("nan"), (None, 1.0)), {}, "n/a [n/a, 1.00]"),
    ((math.inf,), {}, "∞"),
    ((None, (0.1, 0.2)), {}, "[0.10, 0.20]"),
    ((np.float64(2.5), [1, math.inf]), {"digits": 1}, "2.5 [1.0, ∞]"),
])
def test_fmt_writes_numbers_intervals_and_special_values(args, kwargs, expected):
    assert fmt(*args, **kwargs) == expected


def test_fmt_rejects_bad_interval_and_digits():
    with pytest.raises(ValueError, match=r"interval: expected \(lo, hi\), got \(1, 2, 3\)"):
        fmt(0.5, (1, 2, 3))
    with pytest.raises(ValueError, match="digits"):
        fmt(0.5, digits=-1)


# ------------------------------------------------------------------------------ show
def test_show_labels_fast_output_and_renders_text_as_markdown(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    show("coverage 0.9", 42, fast=True, caption="a caption")
    assert len(shown) == 2
    text = shown[0].data
    assert text.startswith(f"*{FAST_NOTE}.*") and "a caption" in text and text.endswith("coverage 0.9")
    assert shown[1] == 42
    shown.clear()
    show(7, fast=False)
    assert shown == [7]  # no label, no caption: the object alone


# ------------------------------------------------------------------------------ coverage by group
def test_coverage_by_group_counts_coverage_widths_and_infinities():
    errors = np.array([0.1, 0.5, 0.2, 0.3, 0.9, 0.1])
    widths = np.array([0.2, 0.2, np.inf, 0.4, 0.4, 0.4])
    groups = np.array(["a", "a", "a", "b", "b", "b"])
    ids = np.array([0, 0, 1, 2, 3, 4])
    t = coverage_by_group(errors, widths, groups, ids, n_boot=300, seed=1)
    assert list(t.index) == ["a", "b"]
    assert t.loc["a", "coverage"] == pytest.approx(2 / 3) and t.loc["b", "coverage"] == pytest.approx(2 / 3)
    assert t.loc["a", "n_sites"] == 3 and t.loc["a", "n_structures"] == 2 and t.loc["b", "n_structures"] == 3
    assert t.loc["a", "n_infinite"] == 1 and t.loc["b", "n_infinite"] == 0
    assert math.isinf(t.loc["a", "mean_width"]) and t.loc["b", "mean_width"] == pytest.approx(0.4)
    for g in t.index:
        assert 0.0 <= t.loc[g, "coverage_lo"] <= t.loc[g, "coverage"] <= t.loc[g, "coverage_hi"] <= 1.0


def test_coverage_by_group_bootstraps_structures_not_sites():
    # 20 structures of 10 atoms, each structure wholly covered or wholly missed: the site bootstrap
    # (structure_ids=None) must give a much narrower interval than the structure bootstrap
    covered_structure = np.arange(20) % 2 == 0
    ids = np.repeat(np.arange(20), 10)
    errors = np.where(covered_structure[ids], 0.1, 1.0)
    widths = np.full(ids.size, 0.5)
    groups = np.zeros(ids.size, dtype=int)
    by_site = coverage_by_group(errors, widths, groups, None, n_boot=500, seed=0).iloc[0]
    by_structure = coverage_by_group(errors, widths, groups, ids, n_boot=500, seed=0).iloc[0]
    assert by_site["coverage"] == by_structure["coverage"] == pytest.approx(0.5)
    width_site = by_site["coverage_hi"] - by_site["coverage_lo"]
    width_structure = by_structure["coverage_hi"] - by_structure["coverage_lo"]
    assert width_structure > 2.0 * width_site


def test_coverage_by_group_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match=r"errors, widths, groups: expected three arrays of shape \(n,\)"):
        coverage_by_group([0.1, 0.2], [0.1], [0, 0])
    with pytest.raises(ValueError, match=r"structure_ids: expected shape \(2,\)"):
        coverage_by_group([0.1, 0.2], [0.1, 0.2], [0, 0], [0])
    with pytest.raises(ValueError, match="n_boot"):
        coverage_by_group([0.1], [0.2], [0], n_boot=0)


def test_infinite_widths_counts_per_label_and_split():
    ev = SimpleNamespace(widths={("split", "test"): np.array([0.1, 0.2]),
                                 ("flexible (shift)", "600K"): np.array([0.1, np.inf, np.inf, 0.3])})
    t = infinite_widths(ev).set_index(["label", "split"])
    assert t.loc[("split", "test"), "n_infinite"] == 0
    assert t.loc[("flexible (shift)", "600K"), "n_infinite"] == 2
    assert t.loc[("flexible (shift)", "600K"), "infinite_fraction"] == pytest.approx(0.5)


def test_plot_group_coverage_draws_one_bar_trace_per_method_with_error_bars():
    t = coverage_by_group([0.1, 0.5, 0.2], [0.3, 0.3, 0.3], ["H", "Cu", "Cu"], n_boot=50)
    fig = plot_group_coverage({"split": t, "flexible": t}, 0.9, group_name="species")
    assert [tr.name for tr in fig.data] == ["split", "flexible"]
    assert list(fig.data[0].x) == ["Cu", "H"]
    assert fig.data[0].error_y.array is not None
    with pytest.raises(ValueError, match="tables: expected a non-empty dict"):
        plot_group_coverage({}, 0.9)


# ------------------------------------------------------------------------------ toys
def test_chi3_quantile_matches_monte_carlo_and_checks_its_level():
    draws = np.linalg.norm(np.random.default_rng(0).normal(size=(200_000, 3)), axis=1)
    for p in (0.5, 0.9, 0.99):
        assert chi3_quantile(p) == pytest.approx(np.quantile(draws, p), rel=5e-3)
    with pytest.raises(ValueError, match="p"):
        chi3_quantile(1.5)


def test_toy_sites_1d_has_the_documented_law():
    sites = toy_sites_1d(2000, atoms_per_structure=5, rare_fraction=0.25, seed=3)
    x = sites.descriptors[:, 0]
    assert len(sites) == 10_000 and sites.n_structures == 2000 and sites.descriptors.shape == (10_000, 1)
    assert np.mean(x >= 0.6) == pytest.approx(0.25, abs=0.02)
    # the true 90 % quantile sigma(x) * chi3^-1(0.9) covers 90 % of the errors
    assert np.mean(sites.errors <= toy_sigma_1d(x) * chi3_quantile(0.9)) == pytest.approx(0.9, abs=0.01)
    again = toy_sites_1d(2000, atoms_per_structure=5, rare_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again.errors, sites.errors)
    with pytest.raises(ValueError, match="rare_fraction"):
        toy_sites_1d(10, rare_fraction=1.5)


def test_toy_sites_correlated_shares_difficulty_within_structures():
    def between_structure_share(spread):
        s = toy_sites_correlated(400, atoms_per_structure=12, difficulty_spread=spread, seed=0)
        means = np.bincount(s.structure_ids, s.errors) / np.bincount(s.structure_ids)
        return np.var(means) / np.var(s.errors)

    # independent atoms: structure means vary like means of 12 iid draws (share about 1/12)
    assert between_structure_share(0.0) < 0.15
    assert between_structure_share(1.0) > 0.5
    s = toy_sites_correlated(3, atoms_per_structure=4, dim=5, seed=1, first_id=100)
    assert s.descriptors.shape == (12, 5) and set(s.unique_structures) == {100, 101, 102}
    with pytest.raises(ValueError, match="difficulty_spread"):
        toy_sites_correlated(3, difficulty_spread=-1.0)


# ------------------------------------------------------------------------------ public data
def test_shared_data_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXCAL_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.setenv("FLEXCAL_SHARED_DATA", str(tmp_path / "missing"))
    assert shared_data_dir() is None


def _write_frames(path, n):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = []
    for i in range(n):
        a = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7 + 0.01 * i]])
        a.calc = SinglePointCalculator(a, energy=-1.0 - i, forces=np.full((2, 3), 0.1 * i))
        frames.append(a)
    write(path, frames, format="extxyz")


def test_public_frames_slices_and_maps_labels(tmp_path):
    _write_frames(tmp_path / "set.xyz", 6)
    frames = public_frames("set.xyz", 2, start=3, root=tmp_path)
    assert len(frames) == 2
    assert frames[0].info["REF_energy"] == pytest.approx(-4.0)
    np.testing.assert_allclose(frames[1].arrays["REF_forces"], 0.4)
    assert len(public_frames("set.xyz", root=tmp_path)) == 6
    with pytest.raises(ValueError, match="start"):
        public_frames("set.xyz", 2, start=-1, root=tmp_path)


def test_public_frames_without_data_says_where_to_put_it(monkeypatch):
    monkeypatch.setattr(teaching, "shared_data_dir", lambda: None)
    with pytest.raises(FileNotFoundError, match="FLEXCAL_SHARED_DATA"):
        public_frames("acac/train_300K.xyz")


def test_cached_mace_trains_once_per_settings(tmp_path, monkeypatch):
    calls = []

    def fake_train(frames, *, workdir, name, seed, **settings):
        calls.append((len(frames), name, seed, settings))
        workdir.mkdir(parents=True, exist_ok=True)   # as train_mace does
        path = workdir / f"{name}.model"
        path.write_text("model")
        return path

    monkeypatch.setattr("core.training.train_mace", fake_train)
    logged = []
    first = cached_mace("acac", [object()] * 3, tmp_path, seed=2, log=logged.append, max_num_epochs=4, num_channels=8)
    again = cached_mace("acac", [object()] * 3, tmp_path, seed=2, log=logged.append, max_num_epochs=4, num_channels=8)
    other = cached_mace("acac", [object()] * 3, tmp_path, seed=2, log=logged.append, max_num_epochs=5, num_channels=8)
    assert first == again == tmp_path / "models" / "acac_3f_max_num_epochs4_num_channels8.model"
    assert other != first and other.exists()
    assert [c[1] for c in calls] == ["acac_3f_max_num_epochs4_num_channels8", "acac_3f_max_num_epochs5_num_channels8"]
    assert calls[0][2] == 2 and calls[0][3] == {"max_num_epochs": 4, "num_channels": 8}
    assert len(logged) == 2 and "training MACE" in logged[0]
    with pytest.raises(ValueError, match="tag: expected a short name"):
        cached_mace("a/b", [], tmp_path)
