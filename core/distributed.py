"""Featurize on a Dask cluster: the serial :func:`core.featurize.featurize`, chunk by chunk, into a SiteStore.

::

    store = featurize_distributed(dataset, "my.model", "sites_store/", workers=8)   # a local cluster
    store = featurize_distributed(dataset, "my.model", "/shared/store", scheduler="tcp://10.0.0.5:8786")
    sites = store.load()          # small stores: the SiteTable serial featurize returns

Chunks are whole forward-pass batches of the serial run (:func:`plan_chunks`), so every
structure meets the potential in the batch it would have serially and the store equals
``featurize(structures, load_potential(spec))`` in order: integers and metadata exactly, floats to
the last few bits (a worker may take other BLAS/oneDNN code paths; one torch thread per task). One chunk = one task = one shard ``out_dir/shard-<chunk>.npz``, written atomically by
the worker (``out_dir`` must be on a filesystem the workers share); the manifest is written last.
Each worker loads the model once from ``potential_spec`` (a path or name; never a loaded object).

Faults and resume: tasks of a worker that dies re-run elsewhere (Dask) and rewrite the same
shard file, so no site is lost or duplicated; rerunning an interrupted call reuses every shard
whose content key (hash of its structures, the potential identity, the settings) and row count
match. Dask is imported only when a cluster is used (``pip install 'flexcal[distributed]'``).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from core.store import MANIFEST, SiteStore, shard_name, verify_shard, write_manifest, write_shard

__all__ = ["featurize_distributed", "local_cluster", "connect", "plan_chunks", "normalise_potential_spec",
           "load_on_workers", "worker_stats", "tune_worker", "DEFAULT_CHUNK_SIZE"]

#: structures per chunk (one task, one shard) by default
DEFAULT_CHUNK_SIZE = 256
_MODEL_SUFFIXES = (".model", ".pt", ".pth", ".ckpt")
_FEATURIZE_OPTIONS = ("descriptor_dtype", "max_batch_atoms")
# imported once in the forkserver that starts local worker processes (a restart then costs < 1 s)
_FORKSERVER_PRELOAD = ("distributed", "numpy", "core.potentials.mace_preload", "torch", "ase", "core.featurize")
_POTENTIALS: dict = {}  # per worker process: spec key -> loaded Potential
_LOAD_LOCK = threading.Lock()
# worker logs hold the chunks' structures: off, or RSS creeps with the sites featurized (BENCHMARKS §12)
_WORKER_LOG_CONFIG = {"distributed.admin.log-length": 0, "distributed.admin.low-level-log-length": 0}
_STATS = {"potential_loads": 0, "chunks_computed": 0, "chunks_reused": 0}
_LIBC: list = []  # glibc, once tune_worker found this process to be a Dask worker


# ------------------------------------------------------------------ specs and plans
def _is_file_spec(entry: str) -> bool:
    return os.sep in entry or Path(entry).suffix in _MODEL_SUFFIXES or Path(entry).exists()


def _resolve(entry) -> str:
    text = os.fspath(entry)
    return str(Path(text).expanduser().resolve()) if _is_file_spec(text) else text


def normalise_potential_spec(spec) -> dict:
    """A model spec as workers get it: ``{"model": path-or-name, **load_potential options}``.

    ``spec``: a model path or name (str / PathLike), a list (first = primary, rest = committee)
    or a dict with a ``"model"`` key plus :func:`core.potentials.load_potential` keyword
    arguments (JSON values). Local paths are made absolute. A loaded Potential is refused
    (TypeError): models are not shipped pickled; every worker loads the file itself.
    """
    if isinstance(spec, dict):
        if "model" not in spec:
            raise ValueError(f"potential_spec: a dict needs a 'model' key (a path or a name), got keys {sorted(spec)}")
        out = dict(spec)
    elif isinstance(spec, (str, os.PathLike)):
        out = {"model": spec}
    elif isinstance(spec, (list, tuple)) and spec and all(isinstance(s, (str, os.PathLike)) for s in spec):
        out = {"model": spec[0], "committee": list(spec[1:])}
    else:
        raise TypeError(
            f"potential_spec: expected a model path or name, a list of them (committee) or a dict of "
            f"load_potential arguments, got {type(spec).__name__}; loaded potentials are not sent to Dask "
            "workers: each worker loads the model from its path or name")
    out["model"] = _resolve(out["model"])
    if "committee" in out:
        members = [out["committee"]] if isinstance(out["committee"], (str, os.PathLike)) else out["committee"]
        out["committee"] = [_resolve(c) for c in members]
    try:
        json.dumps(out)
    except TypeError as exc:
        raise TypeError(f"potential_spec: values must be JSON-serialisable ({exc})") from None
    return out


def _model_files(spec: dict) -> list[str]:
    return [e for e in [spec["model"], *spec.get("committee", [])] if _is_file_spec(e)]


def plan_chunks(sizes, chunk_size: int, batch_size: int = 16, max_batch_atoms: int = 4096) -> list[tuple[int, int]]:
    """(start, stop) structure ranges: consecutive serial batches grouped into chunks.

    ``sizes`` (m,) are atom counts. Batches are those of serial ``featurize`` (at most
    ``batch_size`` structures / ``max_batch_atoms`` atoms); a chunk takes whole batches up to
    ``chunk_size`` structures (one batch when a batch alone is larger).
    """
    from core.batching import plan_batches  # the serial batch plan (one definition of batching)

    chunks: list[tuple[int, int]] = []
    for lo, hi in plan_batches(np.asarray(sizes, dtype=np.int64), batch_size, max_batch_atoms):
        if chunks and hi - chunks[-1][0] <= chunk_size:
            chunks[-1] = (chunks[-1][0], hi)
        else:
            chunks.append((lo, hi))
    return chunks


# ------------------------------------------------------------------ clusters
@contextlib.contextmanager
def local_cluster(n_workers: int, *, threads_per_worker: int = 1, memory_limit="auto"):
    """Context manager: a Dask LocalCluster of ``n_workers`` processes on 127.0.0.1; yields its Client.

    Dashboard off, worker logs off (remote: ``DASK_DISTRIBUTED__ADMIN__[LOW_LEVEL_]LOG_LENGTH=0``).
    Workers fork from a forkserver that imported torch and mace once: a restart takes ~1 s. Closed on exit.
    """
    from core.validation import check_int

    n_workers = check_int("workers", n_workers, 1)
    threads_per_worker = check_int("threads_per_worker", threads_per_worker, 1)
    import logging

    import dask
    from distributed import Client, LocalCluster
    from distributed.utils import get_mp_context

    # Dask's nannies export their pre-spawn variables (OMP_NUM_THREADS=1, ...) into this process's
    # environment; they are put back as they were on exit
    saved = {k: os.environ.get(k) for k in [*dask.config.get("distributed.nanny.pre-spawn-environ"), "PYTHONHASHSEED"]}
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver", **_WORKER_LOG_CONFIG}):
        get_mp_context().set_forkserver_preload(list(_FORKSERVER_PRELOAD))  # no effect once a forkserver runs
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                               dashboard_address=None, host="127.0.0.1", memory_limit=memory_limit,
                               silence_logs=logging.ERROR)
        try:
            client = Client(cluster, set_as_default=False)
            try:
                yield client
            finally:
                client.close()
        finally:
            cluster.close()
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def connect(address: str, *, timeout: float = 5.0):
    """A Dask Client connected to the scheduler at ``address`` (``tcp://host:port`` or ``host:port``).

    Raises ValueError for a malformed address and ConnectionError naming the address when no
    scheduler answers within ``timeout`` seconds.
    """
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"scheduler: expected an address such as 'tcp://10.0.0.5:8786', got {address!r}")
    addr = address.strip() if "://" in address else "tcp://" + address.strip()
    from distributed import Client

    try:
        return Client(addr, timeout=float(timeout), set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ConnectionError(
            f"scheduler: cannot reach a Dask scheduler at {address!r} within {float(timeout):g} s "
            f"({type(exc).__name__}: {exc}); start one (`dask scheduler`) or check the address") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"scheduler: {address!r} is not a valid Dask scheduler address ({exc})") from None


@contextlib.contextmanager
def _client_for(client, workers, scheduler, timeout):
    given = [k for k, v in (("client", client), ("workers", workers), ("scheduler", scheduler)) if v is not None]
    if len(given) != 1:
        raise ValueError("client/workers/scheduler: give exactly one (a dask Client, a number of local worker "
                         f"processes, or a scheduler address), got {given or 'none'}")
    if client is not None:
        from distributed import Client

        if not isinstance(client, Client):
            raise TypeError(f"client: expected a dask.distributed.Client, got {type(client).__name__}")
        yield client
        return
    made = local_cluster(workers) if workers is not None else contextlib.closing(connect(scheduler, timeout=timeout))
    with made as c:
        yield c


# ------------------------------------------------------------------ on the workers
def worker_stats() -> dict:
    """This process's ``potential_loads``, ``chunks_computed``, ``chunks_reused`` (``client.run(worker_stats)``)."""
    return dict(_STATS)


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "this process"


def _missing_model_message(path: str, workers: list[str], n_workers: int | None = None) -> str:
    of = f" ({len(workers)} of {n_workers})" if n_workers else ""
    return (f"potential_spec: model file {path} not found on Dask worker(s) {', '.join(sorted(workers))}{of}; "
            "every worker loads the model itself from the same path: put it on a filesystem the workers "
            "share, or copy it there")


def tune_worker() -> None:
    """On a Dask worker (a no-op elsewhere): one torch thread per task; glibc mmap threshold 64 MiB, trim
    threshold 256 MiB (Dask's ``MALLOC_TRIM_THRESHOLD_=65536`` pins the mmap threshold at 128 KiB: every
    batch's tensors were mapped and unmapped again, half speed); each chunk ends with ``malloc_trim(0)``."""
    if "distributed" not in sys.modules:  # not a Dask worker: importing Dask to find out costs ~5 s
        return
    try:
        from distributed import get_worker

        get_worker()  # ValueError outside a worker: leave the calling process alone
        import ctypes

        import torch

        torch.set_num_threads(1)
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
        _LIBC[:] = [libc]
    except (ImportError, ValueError, OSError, AttributeError):
        pass


def _worker_potential(spec: dict):
    """The potential of ``spec``, loaded once per worker process (reloaded if the file changed)."""
    files = _model_files(spec)
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(_missing_model_message(missing[0], [_worker_address()]))
    stamp = [(f, os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in files]
    key = json.dumps([spec, stamp], sort_keys=True)
    with _LOAD_LOCK:  # worker threads share the process: one load, not one per thread
        if key not in _POTENTIALS:
            from core.potentials import load_potential

            _POTENTIALS.clear()  # one model per worker process at a time
            _POTENTIALS[key] = load_potential(spec["model"], **{k: v for k, v in spec.items() if k != "model"})
            _STATS["potential_loads"] += 1
        return _POTENTIALS[key]


def _probe(files: list[str], out_dir: str) -> dict:
    return {"missing": [f for f in files if not os.path.isfile(f)], "out_dir": os.path.isdir(out_dir)}


def load_on_workers(client, potential_spec) -> dict:
    """Load the model on every worker of ``client`` now (it stays loaded for later runs); returns
    {worker address: potential identity}. Fails like :func:`featurize_distributed` on a missing file."""
    spec = normalise_potential_spec(potential_spec)
    return {a: r["identity"] for a, r in client.run(_potential_info, spec).items()}


def _potential_info(spec: dict) -> dict:
    pot = _worker_potential(spec)
    return {"name": pot.name, "identity": pot.identity, "atomic_numbers": [int(z) for z in pot.atomic_numbers]}


def _featurize_chunk(spec: dict, atoms: list, first: int, dataset_index, out_path: str, content_key: str,
                     settings: dict) -> dict:
    """Featurize one chunk and write its shard; an intact shard of the same content is reused."""
    info = verify_shard(out_path, content_key, sum(len(a) for a in atoms))
    if info is not None:
        _STATS["chunks_reused"] += 1
        return {**info, "reused": True}
    from core.featurize import featurize

    tune_worker()
    pot = _worker_potential(spec)
    table = featurize(atoms, pot, batch_size=settings["batch_size"], labelled=settings["labelled"],
                      descriptor_dtype=settings["descriptor_dtype"], max_batch_atoms=settings["max_batch_atoms"])
    info_cols = dict(table.structure_info)
    info_cols["structure_id"] = info_cols["structure_id"] + first
    info_cols["dataset_index"] = np.asarray(dataset_index, dtype=np.int64)
    table = replace(table, structure_ids=table.structure_ids + first, structure_info=info_cols,
                    meta={**table.meta, "source": settings["source"]})
    info = write_shard(table, out_path, content_key)
    del table  # then freed heap back to the OS: without it a worker's RSS crept up (glibc kept freed memory)
    if _LIBC:
        _LIBC[0].malloc_trim(0)
    _STATS["chunks_computed"] += 1
    return {**info, "reused": False}


# ------------------------------------------------------------------ the client side
def _structures(structures, labelled: bool):
    """(atoms list, dataset_index (m,), source) with the checks serial featurize makes, indices global."""
    from ase import Atoms

    from core.data import REF_FORCES, Dataset

    if isinstance(structures, Dataset):
        atoms = list(structures.structures)
        index, source = np.asarray(structures.indices, dtype=np.int64), structures.source
    else:
        try:
            atoms = list(structures)
        except TypeError:
            raise TypeError(f"structures: expected a Dataset or a list of ase.Atoms, got "
                            f"{type(structures).__name__}") from None
        index, source = np.arange(len(atoms), dtype=np.int64), None
    if not atoms:
        raise ValueError("structures: empty (need at least one structure)")
    for i, a in enumerate(atoms):
        if not isinstance(a, Atoms):
            raise TypeError(f"structures[{i}]: expected ase.Atoms, got {type(a).__name__}")
        if len(a) == 0:
            raise ValueError(f"structures[{i}]: has zero atoms")
        if labelled and np.shape(a.arrays.get(REF_FORCES)) != (len(a), 3):
            raise ValueError(f"structures[{i}]: no reference forces atoms.arrays[{REF_FORCES!r}] of shape "
                             f"({len(a)}, 3); read data with core.data.read_dataset, or pass labelled=False")
    return atoms, index, None if source is None else str(source)


def _settings(batch_size, labelled, options: dict, source) -> dict:
    from core.validation import check_bool, check_choice, check_int

    unknown = sorted(set(options) - set(_FEATURIZE_OPTIONS))
    if unknown:
        raise TypeError(f"options: unknown featurize option(s) {unknown}; accepted: {list(_FEATURIZE_OPTIONS)}")
    return {
        "batch_size": check_int("batch_size", batch_size, 1),
        "labelled": check_bool("labelled", labelled),
        "descriptor_dtype": check_choice("descriptor_dtype", options.get("descriptor_dtype", "float32"),
                                         ("float32", "float64")),
        "max_batch_atoms": check_int("max_batch_atoms", options.get("max_batch_atoms", 4096), 1),
        "source": source,
    }


def _chunk_keys(atoms, index, chunks, identity: str, settings: dict) -> list[str]:
    from types import SimpleNamespace

    from core.featurize import cache_key

    pot = SimpleNamespace(identity=identity)
    keyed = {k: settings[k] for k in ("batch_size", "labelled", "descriptor_dtype", "max_batch_atoms")}
    return [cache_key(atoms[lo:hi], pot, {**keyed, "first": lo, "stop": hi}, index[lo:hi]) for lo, hi in chunks]


def _check_workers(client, spec: dict, out: Path) -> None:
    files = _model_files(spec)
    found = client.run(_probe, files, str(out))
    for f in files:
        lacking = [a for a, r in found.items() if f in r["missing"]]
        if lacking:
            raise FileNotFoundError(_missing_model_message(f, lacking, len(found)))
    blind = [a for a, r in found.items() if not r["out_dir"]]
    if blind:
        raise FileNotFoundError(f"out_dir: {out} does not exist on Dask worker(s) {', '.join(sorted(blind))}; "
                                "workers write the shards themselves, so out_dir must be on a filesystem they share")


def _run_chunks(client, spec, atoms, index, chunks, keys, out: Path, settings, report) -> list[dict]:
    """Submit the chunks (at most 2 per worker thread in flight) and collect their shard entries."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    todo = iter(range(len(chunks)))
    infos: list = [None] * len(chunks)
    live: dict = {}  # future key -> (chunk index, future) not collected yet
    queue = as_completed(loop=client.loop)

    def submit(i: int) -> None:
        lo, hi = chunks[i]
        fut = client.submit(_featurize_chunk, spec, atoms[lo:hi], lo, index[lo:hi], str(out / shard_name(i)),
                            keys[i], settings, key=f"flexcal-featurize-{i:06d}-{keys[i][:12]}", retries=2)
        live[fut.key] = (i, fut)
        queue.add(fut)

    for i in itertools.islice(todo, max(2, 2 * sum(client.nthreads().values()))):
        submit(i)
    try:
        for fut in queue:
            i, _ = live.pop(fut.key)
            try:
                infos[i] = fut.result()
            except KilledWorker as exc:
                raise RuntimeError(f"chunk {i} (structures {chunks[i][0]}..{chunks[i][1] - 1}) killed every "
                                   f"worker that ran it ({exc}); out of memory? try a smaller chunk_size or "
                                   "batch_size") from None
            if report:
                report(sum(hi - lo for (lo, hi), s in zip(chunks, infos) if s is not None), int(chunks[-1][1]))
            nxt = next(todo, None)
            if nxt is not None:
                submit(nxt)
    except BaseException:
        client.cancel([f for _, f in live.values()])
        raise
    return infos


def featurize_distributed(structures, potential_spec, out_dir, *, client=None, workers=None, scheduler=None,
                          chunk_size: int = DEFAULT_CHUNK_SIZE, batch_size: int = 16, progress=None,
                          labelled: bool = True, timeout: float = 5.0, **options) -> SiteStore:
    """Featurize ``structures`` on a Dask cluster into a SiteStore at ``out_dir`` (see the module docstring).

    Parameters
    ----------
    structures : core.data.Dataset or list of ase.Atoms
        As for :func:`core.featurize.featurize` (labelled: ``REF_forces`` (n_atoms, 3) eV/Å).
    potential_spec : str, path, list or dict
        The model as workers load it (:func:`normalise_potential_spec`); never a loaded Potential.
    out_dir : str or Path
        Store folder (created; shared with the workers). Finished shards of an earlier run of
        the same call are reused.
    client, workers, scheduler
        Exactly one: a ``dask.distributed.Client``; a number of local worker processes (a
        :func:`local_cluster` started and closed here); or a scheduler address (``tcp://host:port``).
    chunk_size : int, default 256
        Structures per chunk (= per task and per shard), rounded to whole batches.
    batch_size : int, default 16
        Structures per forward pass (as serial featurize).
    progress : None, True or callable(done, total)
        Called with the number of structures whose chunk is finished.
    labelled : bool, default True
    timeout : float, default 5
        Seconds to wait for ``scheduler``.
    **options
        ``descriptor_dtype`` ("float32") and ``max_batch_atoms`` (4096), as for featurize.

    Returns
    -------
    SiteStore
        ``store.load()`` equals serial ``featurize(structures, load_potential(spec), batch_size,
        ...)`` (arrays and per-structure columns, same order); ``store.run_info`` lists the
        ``computed`` and ``reused`` chunk indices.

    Raises
    ------
    ConnectionError
        ``scheduler`` unreachable within ``timeout`` (the message names the address).
    FileNotFoundError
        A worker lacks the model file (the message names the workers and the path), or ``out_dir``.
    ValueError, TypeError
        Bad arguments or data, named as in serial featurize; unknown elements fail before any chunk.
    """
    from core.potentials.base import check_elements
    from core.progress import as_progress
    from core.validation import check_int

    spec = normalise_potential_spec(potential_spec)
    atoms, index, source = _structures(structures, labelled)
    settings = _settings(batch_size, labelled, options, source)
    chunk_size = check_int("chunk_size", chunk_size, 1)
    chunks = plan_chunks([len(a) for a in atoms], chunk_size, settings["batch_size"], settings["max_batch_atoms"])
    out = Path(out_dir).expanduser().resolve()
    report = as_progress(progress, "featurize")
    with _client_for(client, workers, scheduler, timeout) as c:
        out.mkdir(parents=True, exist_ok=True)
        _check_workers(c, spec, out)
        pinfo = c.submit(_potential_info, spec, pure=False).result()
        check_elements(atoms, pinfo["atomic_numbers"], f"potential {pinfo['name']!r}")
        keys = _chunk_keys(atoms, index, chunks, pinfo["identity"], settings)
        content_hash = hashlib.sha256("".join(keys).encode()).hexdigest()
        done = _finished_store(out, content_hash)
        if done is not None:
            if report:
                report(len(atoms), len(atoms))
            return done
        infos = _run_chunks(c, spec, atoms, index, chunks, keys, out, settings, report)
    meta = {"potential": pinfo["name"], "potential_identity": pinfo["identity"],
            "n_descriptors": infos[0]["n_descriptors"], "source": source, "labelled": settings["labelled"],
            "descriptor_dtype": settings["descriptor_dtype"], "cache_key": None, "cache_hit": False}
    write_manifest(out, [{k: v for k, v in s.items() if k != "reused"} for s in infos], meta=meta,
                   content_hash=content_hash)
    store = SiteStore(out)
    store.run_info = {"computed": [i for i, s in enumerate(infos) if not s["reused"]],
                      "reused": [i for i, s in enumerate(infos) if s["reused"]]}
    return store


def _finished_store(out: Path, content_hash: str) -> SiteStore | None:
    """The complete store of an identical earlier run, or None; a stale manifest is removed first
    (so an interrupted run over an older store never leaves a manifest naming mixed shards)."""
    try:
        store = SiteStore(out) if (out / MANIFEST).is_file() else None
    except (ValueError, FileNotFoundError, KeyError):
        store = None
    if store is not None and store.manifest.get("content_hash") == content_hash:
        store.run_info = {"computed": [], "reused": list(range(store.n_shards))}
        return store
    (out / MANIFEST).unlink(missing_ok=True)
    return None
