"""Distributed featurizing (core/distributed.py) on one local Dask cluster of 2 worker processes.

The cluster (1 thread per worker, processes, 127.0.0.1, no dashboard) is module-scoped and
closed at the end; workers start from a forkserver that imported torch and mace once.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

pytest.importorskip("distributed", reason="dask.distributed not installed (pip install 'flexcal[distributed]')")

from core.distributed import (  # noqa: E402
    featurize_distributed,
    local_cluster,
    normalise_potential_spec,
    plan_chunks,
    worker_stats,
)
from core.store import MANIFEST, SiteStore, predict_store, shard_name  # noqa: E402
from tests.conftest import make_tiny_structures  # noqa: E402

CHUNK, BATCH = 8, 4  # 48 structures -> 6 chunks of 2 batches each
FLOAT_FIELDS = ("errors", "descriptors", "forces_pred", "forces_ref", "committee_std")


def assert_tables_match(a, b) -> None:
    """Integers, order and structure info exactly; floats to 1e-9 relative (a worker process may
    reduce in another order than the caller: bit for bit is not promised across processes)."""
    for name in ("structure_ids", "atom_index", "species", *FLOAT_FIELDS):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is None:
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if name in FLOAT_FIELDS:
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12, err_msg=name)
        else:
            assert np.array_equal(x, y), name
    assert sorted(a.structure_info) == sorted(b.structure_info)
    for k in a.structure_info:
        x, y = np.asarray(a.structure_info[k]), np.asarray(b.structure_info[k])
        if x.dtype.kind == "f":  # energy_pred, energy_ref (eV)
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=k)
        else:
            assert np.array_equal(x, y), k


@pytest.fixture(scope="module")
def client():
    import threading

    # this process imports torch + mace (for the serial reference) while the workers' forkserver does
    from core.potentials.mace_foundation import mace_modules

    warm = threading.Thread(target=mace_modules, daemon=True)  # (contained: no unsafe torch.load after)
    warm.start()
    with local_cluster(2) as c:
        warm.join()
        yield c


@pytest.fixture(scope="module")
def structures() -> list:
    return sum((make_tiny_structures(seed) for seed in range(4)), [])


@pytest.fixture(scope="module")
def serial(structures, tiny_mace_model):
    import torch

    from core.featurize import featurize
    from core.potentials import load_potential

    # the workers run 1 torch thread per task: so does the reference (closest reduction order)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return featurize(structures, load_potential(tiny_mace_model), batch_size=BATCH)
    finally:
        torch.set_num_threads(threads)


def run(structures, model, out, client, **kw):
    return featurize_distributed(structures, model, out, client=client, chunk_size=CHUNK, batch_size=BATCH, **kw)


def test_plan_chunks_cut_at_serial_batch_boundaries():
    from core.batching import plan_batches

    sizes = np.array([3, 5, 2, 8, 1, 1, 7, 4, 4, 2])
    batches = list(plan_batches(sizes, 3, 10))
    chunks = plan_chunks(sizes, 5, 3, 10)
    starts = {lo for lo, _ in batches}
    assert chunks[0][0] == 0 and chunks[-1][1] == sizes.size
    assert all(lo in starts for lo, _ in chunks)
    assert all(b[0] == a[1] for a, b in zip(chunks[:-1], chunks[1:]))
    assert all(hi - lo <= 5 for lo, hi in chunks)
    assert plan_chunks(sizes, 1, 3, 10) == batches  # a batch larger than chunk_size is a chunk of its own


def test_equal_to_serial(client, structures, serial, tiny_mace_model, tmp_path):
    before = client.run(worker_stats)
    seen = []
    store = run(structures, tiny_mace_model, tmp_path / "s", client, progress=lambda d, t: seen.append((d, t)))
    after = client.run(worker_stats)
    assert isinstance(store, SiteStore)
    assert store.n_shards == 6 == len(plan_chunks([len(a) for a in structures], CHUNK, BATCH))
    assert store.run_info == {"computed": list(range(6)), "reused": []}
    got = store.load()
    assert_tables_match(got, serial)
    assert got.meta == serial.meta
    assert (store.n_sites, store.n_structures, store.n_descriptors) == (len(serial), 48, 16)
    assert store.manifest["potential_identity"] == serial.meta["potential_identity"]
    assert seen[-1] == (48, 48) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    # the potential is loaded at most once per worker process, whatever the number of chunks
    assert all(after[w]["potential_loads"] - before[w]["potential_loads"] <= 1 for w in after)
    assert sum(after[w]["chunks_computed"] - before[w]["chunks_computed"] for w in after) == 6


def test_resume_after_interruption(structures, serial, tiny_mace_model, client, tmp_path):
    out = tmp_path / "s"

    def stop_after_first_chunk(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(structures, tiny_mace_model, out, client, progress=stop_after_first_chunk)
    assert not (out / MANIFEST).exists() and list(out.glob("shard-*.npz"))  # finished shards, no store yet
    store = run(structures, tiny_mace_model, out, client)
    assert store.run_info["reused"]
    assert_tables_match(store.load(), serial)

    # a run killed later: shard 1 never written, shard 3 half written, no manifest yet
    (out / shard_name(1)).unlink()
    (out / shard_name(3)).write_bytes((out / shard_name(3)).read_bytes()[:300])
    (out / MANIFEST).unlink()
    inodes = {i: os.stat(out / shard_name(i)).st_ino for i in (0, 2, 4, 5)}
    store = run(structures, tiny_mace_model, out, client)
    assert store.run_info == {"computed": [1, 3], "reused": [0, 2, 4, 5]}
    assert {i: os.stat(out / shard_name(i)).st_ino for i in inodes} == inodes  # finished shards untouched
    assert_tables_match(store.load(), serial)
    # a complete store of the same input is returned as it is
    again = run(structures, tiny_mace_model, out, client)
    assert again.run_info["computed"] == [] and again.manifest == store.manifest
    # other input into the same folder: the old manifest goes, shards of identical content are kept
    other = run(structures[:40], tiny_mace_model, out, client)
    assert other.run_info == {"computed": [], "reused": [0, 1, 2, 3, 4]} and other.n_structures == 40
    assert_tables_match(other.load(), serial.select_structures(np.arange(40)))
    changed = run(structures[:40], tiny_mace_model, out, client, descriptor_dtype="float64")
    assert changed.run_info["computed"] == [0, 1, 2, 3, 4] and changed.load().descriptors.dtype == np.float64


def test_unlabelled_structures(structures, tiny_mace_model, client, tmp_path):
    from core.featurize import featurize
    from core.potentials import load_potential

    bare = [a.copy() for a in structures[:16]]
    for a in bare:
        del a.arrays["REF_forces"]
    store = run(bare, tiny_mace_model, tmp_path / "u", client, labelled=False)
    assert not store.labelled and store.manifest["columns"] == ["descriptors", "forces_pred"]
    assert_tables_match(store.load(), featurize(bare, load_potential(tiny_mace_model), batch_size=BATCH,
                                                labelled=False))


def test_killed_worker_chunk_reruns_elsewhere(structures, serial, tiny_mace_model, client, tmp_path):
    from distributed.diagnostics.plugin import WorkerPlugin

    marker = tmp_path / "kill-once"
    marker.write_text("x")

    class KillOnce(WorkerPlugin):  # defined here so that it is pickled by value
        name = "flexcal-test-kill-once"

        def __init__(self, path):
            self.path = str(path)

        def transition(self, key, start, finish, **kwargs):
            if finish == "executing" and str(key).startswith("flexcal-featurize-000002"):
                try:
                    os.remove(self.path)  # only the first worker to get here dies
                except FileNotFoundError:
                    return
                os._exit(1)

    workers_before = set(client.scheduler_info()["workers"])
    client.register_plugin(KillOnce(marker))
    try:
        store = run(structures, tiny_mace_model, tmp_path / "s", client)
    finally:
        client.unregister_worker_plugin(KillOnce.name)
    assert not marker.exists()  # a worker did die running chunk 2
    client.wait_for_workers(2, timeout=60)
    assert set(client.scheduler_info()["workers"]) != workers_before  # its nanny started a new one
    # chunks whose results died with the worker re-ran elsewhere; one that had already written its
    # shard finds it intact and reuses it
    assert sorted(store.run_info["computed"] + store.run_info["reused"]) == list(range(6))
    assert 2 in store.run_info["computed"]
    assert_tables_match(store.load(), serial)  # no site lost or duplicated


def test_scheduler_unreachable(structures, tiny_mace_model, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once the socket is closed: nobody listens there
    address = f"tcp://127.0.0.1:{port}"
    with pytest.raises(ConnectionError, match=f"scheduler: cannot reach a Dask scheduler at '{address}' within 1 s"):
        featurize_distributed(structures, tiny_mace_model, tmp_path / "s", scheduler=address, timeout=1)
    with pytest.raises(ValueError, match="scheduler: expected an address"):
        featurize_distributed(structures, tiny_mace_model, tmp_path / "s", scheduler="  ")


def test_missing_model_file_on_workers(structures, client, tmp_path):
    missing = tmp_path / "elsewhere" / "model.model"
    workers = sorted(client.scheduler_info()["workers"])
    with pytest.raises(FileNotFoundError) as err:
        run(structures, str(missing), tmp_path / "s", client)
    msg = str(err.value)
    assert msg.startswith(f"potential_spec: model file {missing} not found on Dask worker(s) {workers[0]}")
    assert "(2 of 2)" in msg and "filesystem the workers share" in msg
    assert not list((tmp_path / "s").glob("shard-*"))


def test_bad_arguments(structures, tiny_mace_model, client, tmp_path):
    from core.potentials import load_potential

    with pytest.raises(ValueError, match="client/workers/scheduler: give exactly one"):
        featurize_distributed(structures, tiny_mace_model, tmp_path, client=client, workers=2)
    with pytest.raises(ValueError, match="client/workers/scheduler: give exactly one .* got none"):
        featurize_distributed(structures, tiny_mace_model, tmp_path)
    with pytest.raises(TypeError, match="potential_spec: expected a model path or name.*not sent to Dask workers"):
        normalise_potential_spec(load_potential(tiny_mace_model))
    with pytest.raises(TypeError, match="options: unknown featurize option"):
        run(structures, tiny_mace_model, tmp_path, client, cache_dir="x")
    with pytest.raises(ValueError, match="chunk_size: expected an integer >= 1, got 0"):
        featurize_distributed(structures, tiny_mace_model, tmp_path, client=client, chunk_size=0)
    unlabelled = [a.copy() for a in structures[:3]]
    del unlabelled[2].arrays["REF_forces"]
    with pytest.raises(ValueError, match=r"structures\[2\]: no reference forces"):
        run(unlabelled, tiny_mace_model, tmp_path, client)
    from ase import Atoms

    gold = structures[:5] + [Atoms("Au2", positions=[[0, 0, 0], [0, 0, 2.5]])]
    gold[-1].arrays["REF_forces"] = np.zeros((2, 3))
    with pytest.raises(ValueError, match="Au"):  # unknown elements fail before any chunk runs
        run(gold, tiny_mace_model, tmp_path / "g", client)
    assert not list((tmp_path / "g").glob("shard-*"))
    assert normalise_potential_spec(["a.model", "b.model"])["committee"] == [os.path.abspath("b.model")]
    assert normalise_potential_spec("mace-mp-0b3-medium") == {"model": "mace-mp-0b3-medium"}


def test_predict_store_on_the_cluster(serial, structures, tiny_mace_model, client, tmp_path):
    from core.calibration import make_calibrator

    store = run(structures, tiny_mace_model, tmp_path / "s", client)
    cal = make_calibrator("force", confidence=0.8).fit(serial)
    predict_store(cal, store, client)
    np.testing.assert_allclose(store.widths("force"), cal.predict(serial), rtol=1e-9, atol=1e-12)


def test_local_workers_option(structures, serial, tiny_mace_model, tmp_path):
    store = featurize_distributed(structures[:16], tiny_mace_model, tmp_path / "s", workers=1,
                                  chunk_size=CHUNK, batch_size=BATCH)
    assert_tables_match(store.load(), serial.select_structures(np.arange(16)))


def test_cli_featurize_workers_and_scheduler(structures, serial, tiny_mace_model, tmp_path, capsys):
    from ase.io import write

    from core.cli import main

    data = tmp_path / "data.xyz"
    write(data, structures[:16], format="extxyz")
    out = tmp_path / "store"
    args = ["featurize", str(data), "--model", str(tiny_mace_model), "--batch-size", str(BATCH), "-q", "-o", str(out)]
    assert main([*args, "--workers", "1", "--chunk-size", str(CHUNK)]) == 0
    store = SiteStore(out)
    assert store.n_shards == 2
    # extxyz keeps ~8 significant digits of positions and forces
    assert np.allclose(store.load().errors, serial.select_structures(np.arange(16)).errors, rtol=0, atol=1e-6)
    capsys.readouterr()
    assert main([*args, "--scheduler", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("flexcal featurize: error: --scheduler: cannot reach a Dask scheduler at '127.0.0.1:1'")
    assert main([*args, "--workers", "1", "--no-overwrite"]) == 2
    assert "already holds a site store" in capsys.readouterr().err



def test_local_workers_keep_no_logs_of_task_arguments(client):
    import dask

    # their logs held the chunks' structures, and a worker's RSS crept with the sites featurized
    for key in ("distributed.admin.log-length", "distributed.admin.low-level-log-length"):
        assert set(client.run(dask.config.get, key).values()) == {0}, key


def test_local_workers_keep_torch_load_safe(client, structures, tiny_mace_model, tmp_path):
    """The workers fork from a forkserver that preloads mace: its environment change stays contained."""
    run(structures[:4], tiny_mace_model, tmp_path / "store", client)
    seen = client.run(_worker_weights_only_state)  # (os.environ.get itself would pickle this process's environ)
    assert set(seen.values()) == {(None, True)}  # mace imported (preloaded, model loaded), the variable unset


def _worker_weights_only_state():
    import os
    import sys

    return os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"), "mace.modules" in sys.modules
