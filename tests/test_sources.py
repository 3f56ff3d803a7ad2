"""User inputs -> sites (core.sources): data/model resolution and the one partition rule."""

from __future__ import annotations

import numpy as np
import pytest

from core import sources
from core.sites import SiteTable


def demo_like(n=40, atoms=3) -> SiteTable:
    """Sites whose structures carry the demo files' ``split`` and ``config_type`` columns."""
    split = np.array(["train"] * 10 + ["valid"] * 4 + ["calibration"] * 13 + ["test"] * 13)
    ctype = np.array(["md_300K"] * 34 + ["md_900K"] * 6)
    rng = np.random.default_rng(0)
    return SiteTable.from_arrays(descriptors=rng.normal(size=(n * atoms, 2)), errors=rng.random(n * atoms),
                                 species=np.ones(n * atoms, int), structure_ids=np.repeat(np.arange(n), atoms),
                                 structure_info={"structure_id": np.arange(n), "split": split, "config_type": ctype})


def test_exclude_training_is_the_demo_rule():
    sites = demo_like()
    pool, reference, excluded = sources.exclude_training(sites)
    assert excluded.tolist() == list(range(14))
    assert reference.unique_structures.tolist() == list(range(10))  # train only, not valid
    assert pool.unique_structures.tolist() == list(range(14, 40))


@pytest.mark.parametrize("mode", ["random", "file", "config_type"])
def test_partition_never_calibrates_on_training_frames(mode):
    sites = demo_like()
    part = sources.partition(sites, mode, test_fraction=0.5, seed=1, calibration_types=["md_300K"])
    cal, test = set(part.calibration.unique_structures), set(part.test.unique_structures)
    assert not cal & test
    assert not (cal | test) & set(range(14))
    assert part.reference.n_structures == 10
    assert "excluded the potential's 14 training/validation frames" in part.note
    if mode == "file":
        assert sorted(cal) == list(range(14, 27)) and sorted(test) == list(range(27, 40))
    if mode == "config_type":
        assert sorted(test) == list(range(34, 40))


def test_partition_random_is_seeded_and_plain_data_has_no_reference():
    rng = np.random.default_rng(1)
    plain = SiteTable.from_arrays(descriptors=rng.normal(size=(60, 2)), errors=rng.random(60),
                                  species=np.ones(60, int), structure_ids=np.repeat(np.arange(20), 3))
    a = sources.partition(plain, "random", test_fraction=0.25, seed=3)
    b = sources.partition(plain, "random", test_fraction=0.25, seed=3)
    assert a.reference is None and a.note == ""
    assert a.test.unique_structures.tolist() == b.test.unique_structures.tolist()
    assert a.test.n_structures == 5


def test_partition_errors_name_the_problem():
    sites = demo_like()
    with pytest.raises(ValueError, match="mode: expected one of random, file, config_type, got 'x'"):
        sources.partition(sites, "x")
    with pytest.raises(ValueError, match="calibration_types: choose at least one config_type"):
        sources.partition(sites, "config_type")
    with pytest.raises(ValueError, match="test_types: every config_type is used for calibration"):
        sources.partition(sites, "config_type", calibration_types=["md_300K", "md_900K"])
    plain = SiteTable.from_arrays(descriptors=np.zeros((6, 1)), errors=np.ones(6), species=np.ones(6, int),
                                  structure_ids=np.repeat(np.arange(3), 2))
    with pytest.raises(ValueError, match="mode: 'file' needs per-frame split labels"):
        sources.partition(plain, "file")


def test_resolve_data_and_model(tmp_path):
    from core import demo

    dataset, family = sources.resolve_data("molecule")
    assert family == "molecule" and len(dataset) > 0
    _, family2 = sources.resolve_data(str(demo.demo_dataset_path("molecule")))
    assert family2 == "molecule"
    with pytest.raises(FileNotFoundError, match="DATA: no such file: nope.xyz \\(nor a demo dataset"):
        sources.resolve_data("nope.xyz")
    with pytest.raises(ValueError, match="got a directory"):
        sources.resolve_data(str(tmp_path))
    assert sources.resolve_model(None, "molecule") == str(demo.demo_model_path("molecule"))
    assert sources.resolve_model("my.model", "molecule") == "my.model"
    with pytest.raises(ValueError, match="model: required for a dataset that is not one of the embedded demos"):
        sources.resolve_model(None, None)


def test_partition_with_another_model_keeps_every_frame():
    """The file's train/valid labels describe the demo model: with another model nothing is excluded."""
    sites = demo_like()
    part = sources.partition(sites, "random", test_fraction=0.5, seed=0, exclude_trained=False)
    assert part.reference is None and part.note == ""
    assert part.calibration.n_structures + part.test.n_structures == 40
