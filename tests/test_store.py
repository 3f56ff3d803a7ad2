"""SiteStore (core/store.py) and the calibrators on a store (core/store_calibration.py): no Dask needed."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from core.calibration import load_calibrator, make_calibrator
from core.sites import SiteTable
from core.store import MANIFEST, SiteStore, fit_store, predict_store, shard_name, verify_shard, write_shard


def synthetic_sites(n_structures: int = 240, d: int = 6, seed: int = 0, labelled: bool = True) -> SiteTable:
    """Sites with heteroscedastic errors (|e| grows with |x_0|), species H/C/O, predicted forces."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(4, 16, n_structures)
    sid = np.repeat(np.arange(n_structures), sizes)
    n = sid.size
    x = rng.normal(size=(n, d)).astype(np.float32)
    errors = np.abs(rng.normal(size=n)) * (0.05 + np.abs(x[:, 0])) if labelled else None
    return SiteTable.from_arrays(
        descriptors=x, errors=errors, species=rng.choice([1, 6, 8], n), structure_ids=sid,
        forces_pred=rng.normal(size=(n, 3)),
        structure_info={"structure_id": np.arange(n_structures), "n_atoms": sizes,
                        "config_type": np.array(["a", "b"])[np.arange(n_structures) % 2]},
        meta={"potential": "synthetic", "potential_identity": "abc"})


def assert_tables_equal(a: SiteTable, b: SiteTable) -> None:
    for name in ("structure_ids", "atom_index", "species", "errors", "descriptors", "forces_pred", "forces_ref",
                 "committee_std"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert sorted(a.structure_info) == sorted(b.structure_info)
    for k in a.structure_info:
        assert np.array_equal(a.structure_info[k], b.structure_info[k]), k


@pytest.fixture(scope="module")
def table() -> SiteTable:
    return synthetic_sites()


@pytest.fixture(scope="module")
def store(table, tmp_path_factory) -> SiteStore:
    return SiteStore.from_table(table, tmp_path_factory.mktemp("store") / "s", sites_per_shard=500)


# ------------------------------------------------------------------ manifest and reading
def test_manifest_round_trip(store, table):
    again = SiteStore(store.path)
    m = json.loads((store.path / MANIFEST).read_text())
    assert m == again.manifest and m["format"] == "flexcal.SiteStore" and m["version"] == 1
    assert (again.n_sites, again.n_structures, again.n_descriptors) == (len(table), table.n_structures, 6)
    assert again.labelled and again.meta["potential"] == "synthetic" and m["potential_identity"] == "abc"
    assert again.n_shards == len(m["shards"]) >= 4 and len(again) == len(table)
    assert sum(s["n_sites"] for s in m["shards"]) == len(table)
    assert sum(s["n_structures"] for s in m["shards"]) == table.n_structures
    for s, path in zip(m["shards"], again.shard_paths):
        assert path.name == s["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == s["sha256"]
        part = SiteTable.load(path)
        assert (part.structure_ids.min(), part.structure_ids.max()) == (s["structure_id_min"], s["structure_id_max"])
        assert len(part) == s["n_sites"] and part.meta["shard"]["content_key"] == s["content_key"]
    expected = hashlib.sha256("".join(s["content_key"] for s in m["shards"]).encode()).hexdigest()
    assert m["content_hash"] == expected
    assert_tables_equal(again.load(), table)
    assert again.load().meta == table.meta
    again.verify()
    assert "n_sites=" in repr(again) and "n_shards=" in repr(again)


def test_lazy_iteration_and_columns(store, table):
    parts = list(store.iter_shards())
    assert [len(p) for p in parts] == [s["n_sites"] for s in store.manifest["shards"]]
    assert all(len(p) >= 500 for p in parts[:-1])  # cut at the first structure boundary at or past 500 sites
    assert all(len(p) < 500 + 16 for p in parts)  # ... so at most one structure (< 16 atoms) more
    for a, b in zip(parts[:-1], parts[1:]):  # whole structures, increasing ids
        assert a.structure_ids.max() < b.structure_ids.min()
    light = list(store.iter_shards(columns=("errors",)))
    assert light[0].descriptors.shape == (len(parts[0]), 0) and light[0].forces_pred is None
    assert np.array_equal(np.concatenate([t.errors for t in light]), table.errors)
    assert np.array_equal(store.column("errors"), table.errors)
    assert np.array_equal(store.column("forces_pred"), table.forces_pred)
    assert np.array_equal(store.read_shard(1).descriptors, parts[1].descriptors)
    with pytest.raises(ValueError, match="columns: unknown column"):
        store.load(columns=("nope",))
    with pytest.raises(ValueError, match="max_sites: the store has"):
        store.load(max_sites=10)
    with pytest.raises(ValueError, match="name: expected one of"):
        store.column("descriptors")
    with pytest.raises(IndexError, match="shard 99 out of range"):
        store.read_shard(99)


def test_bad_stores(tmp_path, table):
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        SiteStore(tmp_path)
    st = SiteStore.from_table(table, tmp_path / "a", sites_per_shard=1000)
    with pytest.raises(FileExistsError, match="already holds a store"):
        SiteStore.from_table(table, tmp_path / "a")
    m = json.loads((st.path / MANIFEST).read_text())
    (st.path / MANIFEST).write_text(json.dumps({**m, "version": 99}))
    with pytest.raises(ValueError, match="store version 99 is newer"):
        SiteStore(st.path)
    (st.path / MANIFEST).write_text(json.dumps({**m, "format": "other"}))
    with pytest.raises(ValueError, match="format is 'other'"):
        SiteStore(st.path)
    (st.path / MANIFEST).write_text(json.dumps(m))
    st.shard_paths[0].write_bytes(st.shard_paths[0].read_bytes()[:-10])  # damaged after the manifest was written
    with pytest.raises(ValueError, match=f"changed since the manifest was written: \\['{shard_name(0)}'\\]"):
        SiteStore(st.path).verify()
    st.shard_paths[1].unlink()
    with pytest.raises(FileNotFoundError, match=shard_name(1)):
        SiteStore(st.path)
    shuffled = table.select(np.argsort(-table.structure_ids, kind="stable"))
    with pytest.raises(ValueError, match="structure_ids must be sorted"):
        SiteStore.from_table(shuffled, tmp_path / "b")
    with pytest.raises(ValueError, match="structure ids must increase from shard to shard"):
        SiteStore.from_tables([table.select_structures([5, 6]), table.select_structures([1, 2])], tmp_path / "c")


def test_write_and_verify_shard(tmp_path, table):
    part = table.select_structures(np.arange(10))
    info = write_shard(part, tmp_path / "x.npz", "key-1")
    assert info["n_sites"] == len(part) and info["content_key"] == "key-1" and info["n_structures"] == 10
    assert not [p for p in tmp_path.iterdir() if p.name != "x.npz"]  # no temporary file left
    assert verify_shard(tmp_path / "x.npz", "key-1", len(part)) == info
    assert verify_shard(tmp_path / "x.npz", "key-2", len(part)) is None  # other content
    assert verify_shard(tmp_path / "x.npz", "key-1", len(part) + 1) is None  # other row count
    assert verify_shard(tmp_path / "missing.npz", "key-1") is None
    (tmp_path / "x.npz").write_bytes((tmp_path / "x.npz").read_bytes()[:200])  # truncated
    assert verify_shard(tmp_path / "x.npz", "key-1") is None


# ------------------------------------------------------------------ predict_store
def test_predict_store_equals_in_memory_predict(store, table):
    cal = make_calibrator("mondrian").fit(table)
    paths = predict_store(cal, store)
    assert [p.name for p in paths] == [f"shard-{i:06d}.widths-mondrian.npz" for i in range(store.n_shards)]
    assert np.array_equal(store.widths("mondrian"), cal.predict(table))
    with np.load(paths[0], allow_pickle=False) as z:
        assert np.array_equal(z["structure_ids"], store.read_shard(0).structure_ids)
        meta = json.loads(str(z["__meta__"]))
    assert meta["calibrator"] == "mondrian" and meta["units"] == "eV/Å"
    stamps = [os.stat(p).st_mtime_ns for p in paths]
    calls = []
    predict_store(cal, store, progress=lambda done, total: calls.append((done, total)))  # unchanged: reused
    assert [os.stat(p).st_mtime_ns for p in paths] == stamps
    assert calls[-1] == (store.n_shards, store.n_shards)
    levels = [0.5, 0.9]
    predict_store(cal, store, name="mondrian-levels", levels=levels)
    assert np.array_equal(store.widths("mondrian-levels"), cal.predict_levels(table, levels))
    with pytest.raises(ValueError, match="name: expected 1-64 characters"):
        predict_store(cal, store, name="a/b")
    with pytest.raises(TypeError, match="calibrator: expected a fitted Calibrator"):
        predict_store("split", store)
    with pytest.raises(FileNotFoundError, match="no widths for 'knn'"):
        store.widths("knn")


def test_widths_of_a_rewritten_shard_are_refused(tmp_path, table):
    st = SiteStore.from_table(table, tmp_path / "s", sites_per_shard=1000)
    cal = make_calibrator("split").fit(table)
    predict_store(cal, st)
    m = json.loads((st.path / MANIFEST).read_text())
    m["shards"][0]["sha256"] = "0" * 64  # as if shard 0 had been rewritten since
    (st.path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ValueError, match="computed for another version of shard-000000.npz"):
        SiteStore(st.path).widths("split")


# ------------------------------------------------------------------ fit_store
@pytest.mark.parametrize("method", ["split", "mondrian", "force"])
def test_fit_store_split_methods_equal_in_memory_fit(store, table, method, tmp_path):
    streamed = fit_store(method, store, confidence=0.8)
    direct = make_calibrator(method, confidence=0.8).fit(table)
    assert np.array_equal(streamed.scores_, direct.scores_)
    assert np.array_equal(streamed.species_, direct.species_)
    assert streamed.quantile_ == direct.quantile_ and streamed.global_quantile_ == direct.global_quantile_
    assert np.array_equal(streamed.predict(table), direct.predict(table))
    assert np.array_equal(streamed.predict_levels(table, [0.5, 0.95]), direct.predict_levels(table, [0.5, 0.95]))
    assert streamed.store_fit_["n_calibration_sites"] == len(table)
    loaded = load_calibrator(streamed.save(tmp_path / "c.npz"))
    assert np.array_equal(loaded.predict(table), direct.predict(table))


def test_fit_store_knn_needs_reference(store, table):
    reference = synthetic_sites(60, seed=5)
    with pytest.raises(ValueError, match="reference: the 'knn' heuristic must be fitted on reference sites"):
        fit_store("knn", store)
    streamed = fit_store("knn", store, reference=reference, k=3)
    direct = make_calibrator("knn", k=3).fit(table, reference=reference)
    assert np.array_equal(streamed.scores_, direct.scores_) and streamed.quantile_ == direct.quantile_
    assert np.array_equal(streamed.predict(table), direct.predict(table))


def test_fit_store_refuses_bad_input(store, tmp_path):
    unlabelled = SiteStore.from_table(synthetic_sites(20, labelled=False), tmp_path / "u")
    with pytest.raises(ValueError, match="store: these sites carry no reference labels"):
        fit_store("split", unlabelled)
    with pytest.raises(ValueError, match="weights: fit_store trains q_θ with weights='uniform' only"):
        fit_store("flexible", store, weights="structure")
    with pytest.raises(ValueError, match="max_train_sites: expected an integer >= 1, got 0"):
        fit_store("flexible", store, max_train_sites=0)
    with pytest.raises(TypeError, match="store: expected a SiteStore"):
        fit_store("split", 3)
    with pytest.raises(ValueError, match="unknown|method"):
        fit_store("no-such-method", store)


def test_fit_store_flexible_equals_in_memory_fit_when_it_fits(tmp_path):
    # 2600 structures: > 8192 holdout sites, so the holdout is evaluated in several blocks
    table = synthetic_sites(2600, d=4, seed=1)
    st = SiteStore.from_table(table, tmp_path / "s", sites_per_shard=3000)
    opts = dict(confidence=0.9, hidden=(8,), max_epochs=3, seed=3, holdout_fraction=0.5)
    streamed = fit_store("flexible", st, **opts)
    direct = make_calibrator("flexible", **opts).fit(table)
    assert streamed.store_fit_["n_holdout_sites"] > 8192
    assert streamed.store_fit_["n_train_used"] == streamed.store_fit_["n_train_sites"]
    assert streamed.history_ == direct.history_
    assert np.array_equal(streamed.holdout_scores_, direct.holdout_scores_)
    assert np.array_equal(streamed.corrections_, direct.corrections_)
    assert np.array_equal(streamed.predict(table), direct.predict(table))
    assert streamed.label == "q_θ (flexible)" and streamed.conformal


def test_fit_store_flexible_subsample_is_seeded_and_keeps_the_exact_correction(store, table):
    opts = dict(hidden=(8,), max_epochs=3, max_train_sites=700)
    a = fit_store("flexible", store, seed=0, **opts)
    b = fit_store("flexible", store, seed=0, **opts)
    c = fit_store("flexible", store, seed=1, **opts)
    info = a.store_fit_
    assert info["n_train_used"] == 700 < info["n_train_sites"]
    assert info["n_train_sites"] + info["n_holdout_sites"] == len(table)
    assert np.array_equal(a.predict(table), b.predict(table))
    assert not np.array_equal(a.predict(table), c.predict(table))
    # the correction is the exact conformal quantile of ALL holdout ratios at every level
    from core.calibration import conformal_quantile

    assert a.holdout_scores_.shape == (info["n_holdout_sites"], a.levels_.size)
    for k, p in enumerate(a.levels_):
        assert a.corrections_[k] == conformal_quantile(a.holdout_scores_[:, k], p)
    uncorrected = fit_store("flexible", store, conformal=False, **opts)
    assert uncorrected.store_fit_["n_holdout_sites"] == 0 and uncorrected.correction_ == 1.0
