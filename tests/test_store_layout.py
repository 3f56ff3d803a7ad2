"""The on-disk layout of a SiteStore: uncompressed shards, mapped reads, cheap integrity checks,
stores written by earlier versions (compressed shards, no sizes in the manifest). No Dask needed."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import numpy as np
import pytest

from core.calibration import make_calibrator
from core.sites import SiteTable
from core.store import MANIFEST, SiteStore, check_shard_file, map_shard, predict_store
from core.store_calibration import predict_columns
from tests.test_store import assert_tables_equal, synthetic_sites


@pytest.fixture(scope="module")
def table() -> SiteTable:
    return synthetic_sites(n_structures=120)


@pytest.fixture()
def store(table, tmp_path) -> SiteStore:
    return SiteStore.from_table(table, tmp_path / "s", sites_per_shard=400)


def _old_layout_store(table: SiteTable, folder) -> SiteStore:
    """A store as FlexCal wrote it before: compressed SiteTable shards, manifest without sizes/times."""
    st = SiteStore.from_table(table, folder, sites_per_shard=400)
    m = json.loads((st.path / MANIFEST).read_text())
    for i, s in enumerate(m["shards"]):
        SiteStore(st.path).read_shard(i).save(st.shard_paths[i])  # SiteTable.save compresses
        s["sha256"] = hashlib.sha256(st.shard_paths[i].read_bytes()).hexdigest()
        del s["bytes"], s["mtime_ns"]
    (st.path / MANIFEST).write_text(json.dumps(m))
    return SiteStore(st.path)


def _flip_byte_in_descriptors(path, keep_mtime: bool) -> None:
    """Change one descriptor value in place (same size); optionally put the modification time back."""
    st = os.stat(path)
    x = map_shard(path).descriptors
    raw = bytearray(path.read_bytes())
    needle = x[3].tobytes()
    at = bytes(raw).index(needle)
    raw[at] ^= 0x40
    path.write_bytes(bytes(raw))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_shards_are_uncompressed_site_tables_with_sizes(store, table):
    m = store.manifest
    for s, path in zip(m["shards"], store.shard_paths):
        with zipfile.ZipFile(path) as zf:
            assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        st = path.stat()
        assert (s["bytes"], s["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
        part = SiteTable.load(path)  # still a plain SiteTable file
        assert len(part) == s["n_sites"] and part.meta["shard"]["content_key"] == s["content_key"]
    assert_tables_equal(store.load(), table)


def test_map_shard_maps_only_the_requested_columns(store):
    full = store.read_shard(1)
    mapped = map_shard(store.shard_paths[1], ("descriptors",))
    assert isinstance(mapped.descriptors.base, np.memmap) and not mapped.descriptors.flags.writeable
    assert mapped.descriptors.dtype == np.float32 and np.array_equal(mapped.descriptors, full.descriptors)
    for name in ("structure_ids", "atom_index", "species"):
        assert np.array_equal(getattr(mapped, name), getattr(full, name)), name
    assert mapped.errors is None and mapped.forces_pred is None
    assert sorted(mapped.structure_info) == sorted(full.structure_info)
    bare = map_shard(store.shard_paths[1], ())
    assert bare.descriptors.shape == (len(full), 0) and bare.forces_pred is None
    forces = map_shard(store.shard_paths[1], ("forces_pred",)).forces_pred
    assert forces.shape == (len(full), 3) and np.array_equal(forces, full.forces_pred)


def test_predict_columns_per_calibrator(table):
    small = table.select_structures(np.arange(60))
    assert predict_columns(make_calibrator("flexible", max_epochs=2).fit(small)) == ("descriptors",)
    assert predict_columns(make_calibrator("split").fit(small)) == ()
    assert predict_columns(make_calibrator("mondrian").fit(small)) == ()
    assert predict_columns(make_calibrator("force").fit(small)) == ("forces_pred",)
    assert predict_columns(make_calibrator("knn", k=3).fit(small)) == ("descriptors",)


def test_widths_are_float64_exactly_as_predicted(store, table):
    cal = make_calibrator("force").fit(table)
    paths = predict_store(cal, store)
    with zipfile.ZipFile(paths[0]) as zf:
        assert sorted(zf.namelist()) == ["__meta__.npy", "atom_index.npy", "structure_ids.npy", "widths.npy"]
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    with np.load(paths[0]) as z:
        meta = json.loads(str(z["__meta__"]))
        assert z["widths"].dtype == np.float64 and meta["version"] == 1
        assert np.array_equal(z["structure_ids"], store.read_shard(0).structure_ids)
        assert meta["n_sites"] == store.manifest["shards"][0]["n_sites"] and meta["units"] == "eV/Å"
    w = store.widths("force")
    assert w.dtype == np.float64 and np.array_equal(w, cal.predict(table))


def test_old_layout_store_is_still_readable(table, tmp_path):
    old = _old_layout_store(table, tmp_path / "old")
    with zipfile.ZipFile(old.shard_paths[0]) as zf:
        assert zipfile.ZIP_DEFLATED in {i.compress_type for i in zf.infolist()}
    assert "bytes" not in old.manifest["shards"][0]
    assert_tables_equal(old.load(), table)
    old.verify()
    mapped = map_shard(old.shard_paths[0])  # compressed members are read, not mapped
    assert np.array_equal(mapped.descriptors, old.read_shard(0).descriptors)
    cal = make_calibrator("flexible", max_epochs=2).fit(table)
    predict_store(cal, old)
    # shard by shard (float32 matrix products may round differently for other block shapes)
    expected = np.concatenate([cal.predict(t) for t in old.iter_shards()])
    assert np.array_equal(old.widths("flexible"), expected)


def test_a_changed_shard_is_refused_on_read(store, table):
    path = store.shard_paths[0]
    _flip_byte_in_descriptors(path, keep_mtime=False)
    fresh = SiteStore(store.path)
    msg = "changed since the manifest was written: \\['shard-000000.npz'\\] .*SHA-256 differs"
    with pytest.raises(ValueError, match=msg):
        fresh.read_shard(0)
    with pytest.raises(ValueError, match=msg):
        predict_store(make_calibrator("split").fit(table), fresh)
    with pytest.raises(ValueError, match=msg):
        fresh.column("errors")
    fresh.read_shard(1)  # the other shards are fine


def test_same_size_edit_with_mtime_put_back_is_caught_by_verify(store):
    _flip_byte_in_descriptors(store.shard_paths[1], keep_mtime=True)
    check_shard_file(store.shard_paths[1], store.manifest["shards"][1])  # the cheap check cannot see it,
    map_shard(store.shard_paths[1])  # nor a mapped read (documented); a validated read checks the zip CRC-32 ...
    with pytest.raises(ValueError, match="Bad CRC-32 for file 'descriptors.npy'"):
        store.read_shard(1)
    with pytest.raises(ValueError, match="changed since the manifest was written: \\['shard-000001.npz'\\]"):
        store.verify()  # ... the full check does


def test_resized_or_touched_shard(store):
    entry = store.manifest["shards"][0]
    path = store.shard_paths[0]
    os.utime(path, ns=(entry["mtime_ns"] + 10**9, entry["mtime_ns"] + 10**9))  # touched, content unchanged
    check_shard_file(path, entry)  # re-hashed once: equal
    store.read_shard(0)
    with open(path, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(ValueError, match=f"\\({entry['bytes'] + 1} bytes, the manifest says {entry['bytes']}\\)"):
        store.read_shard(0)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="shard file missing"):
        check_shard_file(path, entry)


def test_map_shard_of_a_damaged_file(tmp_path, store):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(store.shard_paths[0].read_bytes()[:300])
    with pytest.raises(ValueError, match=f"^{bad}: not a readable shard"):
        map_shard(bad)
    with pytest.raises(FileNotFoundError, match="shard file missing"):
        map_shard(tmp_path / "none.npz")


def test_flexible_predict_is_the_monotone_width_at_confidence(table):
    """FlexibleQuantile.predict takes the max over the levels up to ``confidence`` (what predict_store
    spends its time on) instead of the running max over all of them: the same numbers, bit for bit."""
    small = table.select_structures(np.arange(80))
    for options in ({}, {"conformal": False}, {"confidence": 0.99}, {"confidence": 0.05}):
        q = make_calibrator("flexible", max_epochs=3, **options).fit(small)
        full = q._corrected(table)[1][:, q.level_index_]
        assert np.array_equal(q.predict(table), full), options
        assert np.array_equal(q.predict(table), q.predict_levels(table, [q.confidence])[:, 0]), options
