"""Benchmark: featurizing on a local Dask cluster, and calibrating / predicting on a sharded SiteStore.

1. ``scaling`` (alone: ``efficiency``, which prints one line, ~2-4 min): the same data featurized
   on 1 and 2 local worker processes (1 thread each), the model preloaded on every worker. Sites
   per wall second and per worker-CPU second; efficiency = rate(2 workers) / (2 x rate(1 worker)).
2. ``memory``: peak RSS of every worker process (``ru_maxrss``, fresh cluster per size) at two
   dataset sizes (default 10^5 and 10^6 sites, the tiny MACE model of ``tests/conftest.py``;
   ``--memory-model demo`` for the demo model), plus each worker's RSS sampled every
   ``--sample-every`` s against the structures finished: a worker only ever holds one chunk, so
   it must not grow with the dataset. ``--memory-deadline`` stops a long run and reports the part done.
3. ``store``: a synthetic SiteStore (seeded descriptors, heteroscedastic errors), written shard
   by shard; q_θ fitted on it with :func:`core.store.fit_store` (subsampled training, exact
   streamed conformal correction) and split CP (exact streamed scores); widths predicted with
   :func:`core.store.predict_store` shard by shard in one process (1 torch thread) -- sites/s per
   core -- and the coverage of the streamed widths. Run in a fresh subprocess so its peak RSS is
   its own.
4. A projection, on paper, of the wall time for 10^6 structures on 64 / 256 cores from the
   measured per-core rates.

Data for 1-2: rattled copies of the embedded ethanol frames (9 atoms each), the embedded demo
MACE model for them (``core.demo.demo_model_path("molecule")``, float64, d = 64).

Run: ``.venv/bin/python -m benchmarks.bench_distributed [--part all] [--scaling-structures 4000]
[--memory-sites 100000 1000000] [--store-sites 10000000]``; efficiency only:
``.venv/bin/python -m benchmarks.bench_distributed --part efficiency``. Writes
``benchmarks/results/distributed.md`` and ``distributed.json`` (raw numbers; a part run alone
keeps the others' numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "distributed.md"
RAW = ROOT / "benchmarks" / "results" / "distributed.json"
CHUNK = 128  # structures per task / shard in parts 1-2


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def worker_usage() -> dict:
    """CPU seconds and peak RSS (MB) of the calling process (run on the workers)."""
    import psutil

    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu": r.ru_utime + r.ru_stime, "maxrss_mb": r.ru_maxrss / 1024,
            "rss_mb": psutil.Process().memory_info().rss / 2**20}


def rattled_molecules(n: int, seed: int = 0) -> list:
    """``n`` ethanol frames (cycled demo frames, positions rattled by 0.02 Å, seeded)."""
    from core.demo import demo_frames

    base = demo_frames("molecule")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = base[i % len(base)].copy()
        a.positions += rng.normal(scale=0.02, size=a.positions.shape)
        out.append(a)
    return out


class _Deadline(Exception):
    """Raised by the progress callback to stop a memory run at its deadline."""


def _featurize_on(n_workers: int, structures: list, folder: Path, model: str | None = None,
                  sample_every: float = 0.0, log: Path | None = None, deadline: float | None = None) -> dict:
    """Featurize on a fresh local cluster of ``n_workers``; with ``sample_every`` > 0 s, a client-side
    thread also samples every worker's RSS (psutil, same machine) against the structures finished.
    ``deadline`` (s): stop there and return the row of what was done (``partial``: True)."""
    from core.demo import demo_model_path
    from core.distributed import featurize_distributed, load_on_workers, local_cluster

    model = model or str(demo_model_path("molecule"))
    samples: list = []
    done = [0]
    with local_cluster(n_workers) as client:
        load_on_workers(client, model)
        before = client.run(worker_usage)
        pids = list(client.run(os.getpid).values())
        stop = _rss_sampler(pids, samples, done, sample_every, log) if sample_every > 0 else None
        t0, c0 = time.perf_counter(), time.process_time()

        def progress(d, total):
            done[0] = d
            if deadline is not None and time.perf_counter() - t0 > deadline:
                raise _Deadline

        partial = False
        try:
            store = featurize_distributed(structures, model, folder, client=client, chunk_size=CHUNK,
                                          progress=progress)
            n_structures, n_sites, n_shards = len(structures), store.n_sites, store.n_shards
        except _Deadline:
            partial = True
            n_structures, n_sites = done[0], done[0] * len(structures[0])  # 9-atom structures
            n_shards = len(list(folder.glob("shard-*.npz")))
        finally:
            if stop is not None:
                stop()
        wall, client_cpu = time.perf_counter() - t0, time.process_time() - c0
        after = client.run(worker_usage)
    cpu = sum(after[w]["cpu"] - before[w]["cpu"] for w in after)
    out = {"workers": n_workers, "structures": n_structures, "sites": n_sites, "shards": n_shards,
           "partial": partial, "planned_structures": len(structures),
           "wall_s": wall, "worker_cpu_s": cpu, "client_cpu_s": client_cpu, "sites_per_s": n_sites / wall,
           "sites_per_cpu_s": n_sites / cpu, "rss_before_mb": [before[w]["rss_mb"] for w in sorted(before)],
           "peak_rss_mb": [after[w]["maxrss_mb"] for w in sorted(after)], "load": _load()}
    if samples:
        out["rss_samples"] = samples  # [seconds, structures finished, RSS MB of each worker]
    return out


def _rss_sampler(pids: list[int], samples: list, done: list, every: float, log: Path | None = None):
    """Start a daemon thread appending [t, structures done, [RSS MB per pid]] every ``every`` s (and as a
    JSON line to ``log``); returns stop()."""
    import threading

    import psutil

    procs = [psutil.Process(p) for p in pids]
    halt = threading.Event()
    t0 = time.perf_counter()

    def loop():
        while not halt.wait(every):
            try:
                samples.append([time.perf_counter() - t0, done[0], [p.memory_info().rss / 2**20 for p in procs]])
                if log is not None:
                    with open(log, "a") as fh:
                        fh.write(json.dumps(samples[-1]) + "\n")
            except psutil.Error:  # a worker restarted: keep sampling the others
                procs[:] = [p for p in procs if p.is_running()]

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    return lambda: (halt.set(), th.join())


def efficiency_line(s: dict) -> str:
    """One line: the 1 -> 2 worker efficiency by wall clock and by CPU seconds, and the cores obtained."""
    got = " / ".join(f"{r['worker_cpu_s'] / r['wall_s']:.2f}" for r in s["rows"])
    return (f"efficiency 1 -> 2 workers: wall clock {s['efficiency_wall']:.2f}, CPU {s['efficiency_cpu']:.2f} "
            f"(sites/s: {s['rows'][0]['sites_per_s']:.0f} -> {s['rows'][1]['sites_per_s']:.0f}; cores obtained by "
            f"the workers, 1 / 2-worker run: {got}; identical stores: {s['identical']}; load {_load()})")


def part_scaling(n_structures: int, tmp: Path) -> dict:
    structures = rattled_molecules(n_structures)
    rows = [_featurize_on(n, structures, tmp / f"scaling{n}") for n in (1, 2)]
    r1, r2 = rows
    same = np.array_equal(_store_errors(tmp / "scaling1"), _store_errors(tmp / "scaling2"))
    return {"rows": rows, "efficiency_wall": r2["sites_per_s"] / (2 * r1["sites_per_s"]),
            "efficiency_cpu": r2["sites_per_cpu_s"] / r1["sites_per_cpu_s"], "identical": bool(same)}


def _store_errors(folder: Path) -> np.ndarray:
    from core.store import SiteStore

    return SiteStore(folder).column("errors")


def tiny_mace_model(folder: Path) -> str:
    """The tiny seeded MACE model of ``tests/conftest.py`` (float64, d = 16, 2 interactions), saved in ``folder``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("flexcal_tests_conftest", ROOT / "tests" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return str(mod.build_tiny_mace(folder / "tiny.model"))


def part_memory(site_counts: list[int], tmp: Path, model_name: str = "tiny", sample_every: float = 2.0,
                previous: dict | None = None, save=None, deadline: float | None = None) -> dict:
    """Rows of earlier runs at other sizes are kept; ``save(result)`` is called after every size, and
    the RSS samples also go to ``<tmp>/rss-<sites>.jsonl`` as they are taken (a run stopped early keeps them)."""
    model = tiny_mace_model(tmp) if model_name == "tiny" else None
    out = {"rows": list((previous or {}).get("rows", [])), "model": model_name}
    for n_sites in site_counts:
        structures = rattled_molecules(int(np.ceil(n_sites / 9)), seed=1)
        row = _featurize_on(2, structures, tmp / f"memory{n_sites}", model, sample_every,
                            log=tmp / f"rss-{n_sites}.jsonl", deadline=deadline)
        shutil.rmtree(tmp / f"memory{n_sites}")
        out["rows"] = [r for r in out["rows"] if r.get("planned_structures") != row["planned_structures"]] + [row]
        if save:
            save(out)
        print("memory", n_sites, json.dumps({k: v for k, v in row.items() if k != "rss_samples"}), flush=True)
    return out


# ------------------------------------------------------------------ the store (in a subprocess)
def synthetic_shards(n_sites: int, d: int, per_shard: int, seed: int = 0):
    """SiteTables of 10-atom structures: X ~ N(0, 1) float32, species H/C/O, errors (eV/Å)
    |N(0,1)| · 0.1 · (0.2 + |X_0| + 0.5·[Z = 8]) -- a width that depends on the environment."""
    from core.sites import SiteTable

    first = 0
    for k, lo in enumerate(range(0, n_sites, per_shard)):
        rng = np.random.default_rng((seed, k))
        n = min(per_shard, n_sites - lo) // 10 * 10
        m = n // 10
        x = rng.normal(size=(n, d)).astype(np.float32)
        z = rng.choice(np.array([1, 6, 8]), n)
        e = np.abs(rng.normal(size=n)) * 0.1 * (0.2 + np.abs(x[:, 0]) + 0.5 * (z == 8))
        ids = np.arange(first, first + m)
        yield SiteTable.from_arrays(descriptors=x, errors=e, species=z, structure_ids=np.repeat(ids, 10),
                                    structure_info={"structure_id": ids, "n_atoms": np.full(m, 10)},
                                    meta={"potential": "synthetic"})
        first += m


def store_child(phase: str, n_sites: int, d: int, max_epochs: int, tmp: Path) -> None:
    """One phase (write | fit | predict) in its own process, so its peak RSS is its own."""
    import torch

    torch.set_num_threads(1)
    from core.calibration import load_calibrator
    from core.store import SiteStore, fit_store, predict_store

    res: dict = {}
    folder = tmp / "store"

    def step(name, fn, extra=lambda out: {}):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        res[name] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                     "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra(out)}
        return out

    if phase == "write":
        step("write", lambda: SiteStore.from_tables(synthetic_shards(n_sites, d, 500_000), folder),
             lambda st: {"shards": st.n_shards, "sites": st.n_sites,
                         "disk_mb": sum(p.stat().st_size for p in st.shard_paths) / 2**20})
    elif phase == "fit":
        store = SiteStore(folder)
        step("fit_split", lambda: fit_store("split", store)).save(tmp / "split.npz")
        q = step("fit_flexible", lambda: fit_store("flexible", store, max_epochs=max_epochs),
                 lambda q: {**q.store_fit_, "epochs": len(q.history_), "stop": q.stop_reason_,
                            "correction": q.correction_})
        q.save(tmp / "flexible.npz")
    else:
        store = SiteStore(folder)
        for name in ("flexible", "split"):
            cal = load_calibrator(tmp / f"{name}.npz")
            step(f"predict_store_{name}", lambda: predict_store(cal, store))
            pairs = zip(store.iter_shards(("errors",)), store.iter_widths(name))
            res[f"predict_store_{name}"]["coverage"] = sum(int(np.sum(t.errors <= w)) for t, w in pairs) / store.n_sites
        table = store.read_shard(0)
        for name in ("flexible", "split"):
            cal = load_calibrator(tmp / f"{name}.npz")
            c0 = time.process_time()
            cal.predict(table)
            res[f"predict_memory_{name}"] = {"sites_per_cpu_s": len(table) / (time.process_time() - c0)}
    (tmp / f"store_{phase}.json").write_text(json.dumps(res, indent=1))


def part_store(n_sites: int, d: int, max_epochs: int, tmp: Path) -> dict:
    res: dict = {"n_sites": n_sites, "d": d, "max_epochs": max_epochs}
    for phase in ("write", "fit", "predict"):
        cmd = [sys.executable, "-m", "benchmarks.bench_distributed", "--part", f"store-{phase}", "--store-sites",
               str(n_sites), "--store-d", str(d), "--max-epochs", str(max_epochs), "--tmp", str(tmp)]
        subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        res.update(json.loads((tmp / f"store_{phase}.json").read_text()))
        print(phase, json.dumps(res)[-300:], flush=True)
    shutil.rmtree(tmp / "store", ignore_errors=True)
    res["load"] = _load()
    return res


# ------------------------------------------------------------------ report
def _fmt_rows(rows: list[dict]) -> list[str]:
    out = ["| workers | structures | sites | shards | wall (s) | worker CPU (s) | client + scheduler CPU (s) | sites/s | "
           "sites per worker-CPU-s | peak RSS per worker (MB) | load at end |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['workers']} | {r['structures']} | {r['sites']} | {r['shards']} | {r['wall_s']:.1f} | "
                   f"{r['worker_cpu_s']:.1f} | {r.get('client_cpu_s', float('nan')):.1f} | {r['sites_per_s']:.0f} | "
                   f"{r['sites_per_cpu_s']:.0f} | "
                   f"{' / '.join(f'{m:.0f}' for m in r['peak_rss_mb'])} | {r['load']} |")
    return out


def projection(rate_per_core: float, efficiency: float) -> list[str]:
    out = ["| structures | atoms each | sites | 64 cores | 256 cores |", "|---|---|---|---|---|"]
    for atoms in (9, 64):
        sites = 1_000_000 * atoms
        cells = []
        for cores in (64, 256):
            h = sites / (rate_per_core * cores * efficiency) / 3600
            cells.append(f"{h:.2f} h" if h >= 1 else f"{h * 60:.0f} min")
        out.append(f"| 10^6 | {atoms} | {sites:.1e} | {cells[0]} | {cells[1]} |")
    return out


def write_report(res: dict, argv: list[str]) -> None:
    lines = ["# Distributed featurizing and the sharded site store", "",
             f"Generated by `python -m benchmarks.bench_distributed` on {time.strftime('%Y-%m-%d')} (each part can be "
             "rerun alone: `--part scaling | memory | store`; `--part report` rewrites this file from the raw "
             f"numbers in `distributed.json`; this file: `{' '.join(argv) or '--part all'}`). Machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
             "**shared with other jobs while this ran** (load averages below are 1/5/15-min; wall-clock rates and "
             "efficiencies are pessimistic, the per-CPU-second rates are the steadier figures). Dask "
             f"{res.get('dask', '?')}, local cluster, 1 thread per worker process.", ""]
    if "scaling" in res:
        s = res["scaling"]
        lines += ["## Parallel efficiency, 1 -> 2 workers", "",
                  "Rattled ethanol frames (9 atoms), embedded demo MACE model (float64, d = 64), chunks of "
                  f"{CHUNK} structures, model preloaded on every worker.", ""]
        lines += _fmt_rows(s["rows"])
        got = [r["worker_cpu_s"] / r["wall_s"] for r in s["rows"]]
        lines += ["", f"Efficiency (sites/s with 2 workers / 2 x with 1): **{s['efficiency_wall']:.2f}** by wall "
                  f"clock; {s['efficiency_cpu']:.2f} by CPU seconds (sites per worker-CPU-second, 2 vs 1 workers: "
                  "1.0 means no parallel overhead in work done). The workers obtained "
                  f"{got[0]:.2f} and {got[1]:.2f} cores on average (worker CPU / wall): whatever the other jobs on "
                  "the machine left them, so the wall-clock figure measures the machine's load as much as FlexCal. "
                  f"The 2-worker stores are identical to the 1-worker ones: {s['identical']}.", ""]
    if "memory" in res:
        lines += ["## Peak memory per worker vs dataset size", "",
                  "Same data and model, 2 workers, a fresh cluster per size; `ru_maxrss` of each worker process "
                  "(it includes torch + mace + the model, about the 'RSS before' of the rows).", ""]
        lines += _fmt_rows(res["memory"]["rows"])
        rows = res["memory"]["rows"]
        lines += ["", "RSS before the run (MB, model loaded): " + "; ".join(
            f"{r['sites']} sites: {' / '.join(f'{m:.0f}' for m in r['rss_before_mb'])}" for r in rows) + "."]
        a, b = rows[0], rows[-1]
        if b["sites"] > a["sites"]:
            lines += ["", f"From {a['sites']} to {b['sites']} sites ({b['sites'] / a['sites']:.0f}x) the largest worker "
                      f"peak changed by {max(b['peak_rss_mb']) - max(a['peak_rss_mb']):+.0f} MB. A worker keeping what "
                      f"it featurized would have grown by ~{(b['sites'] - a['sites']) / 2 * 1300 / 2**20:.0f} MB (half "
                      "the sites each, ~1.3 kB per site as measured in `featurize.md`): a worker holds one chunk "
                      f"({CHUNK} structures) at a time, and the peak is set by the model and one batch."]
        lines.append("")
    if "memory_tiny" in res:
        lines += _memory_tiny_section(res["memory_tiny"])
    if "memory_tiny_before_trim" in res:
        lines += _memory_tiny_section(res["memory_tiny_before_trim"], before_trim=True)
    if "store" in res:
        lines += _store_section(res["store"])
    if "scaling" in res:
        s = res["scaling"]
        rate = s["rows"][0]["sites_per_cpu_s"]
        eff = max(min(s["efficiency_cpu"], 1.0), 0.1)
        lines += ["## Projection (on paper): 10^6 structures on 64 / 256 cores", "",
                  f"From the measured rate of {rate:.0f} sites per CPU-second per core (1 worker, demo model, "
                  f"d = 64) and the CPU-based efficiency {eff:.2f}, assuming the per-site cost stays constant "
                  "(batched small cells) and the shared filesystem keeps up (a shard is ~0.5 kB per site at d = 64). "
                  "A larger model costs proportionally more per site: multiply by its slowdown against the demo "
                  "model (see `featurize.md` for other sizes).", ""]
        lines += projection(rate, eff)
        lines.append("")
    RESULTS.write_text("\n".join(lines))
    RAW.write_text(json.dumps(res, indent=1))


def _rss_at(samples: list, n_structures: int, fraction: float) -> float:
    """Largest worker RSS (MB) in the first sample at or past ``fraction`` of the structures finished."""
    for _, done, rss in samples:
        if done >= fraction * n_structures and rss:
            return max(rss)
    return max(samples[-1][2]) if samples and samples[-1][2] else float("nan")  # the last sample (~100 %)


def _memory_tiny_section(mem: dict, before_trim: bool = False) -> list[str]:
    rows = sorted(mem["rows"], key=lambda r: r["sites"])
    if before_trim:
        return ["### The same before workers called `malloc_trim(0)` after each chunk", "",
                "Measured the same way with the code before the fix. A check by hand (1 worker, 3 x 8000 structures: "
                "RSS 385 MB with the model loaded, then 458 / 462 / 467 MB; `malloc_trim(0)` through `client.run`: "
                "456 MB) showed most of the creep was freed heap glibc kept (trim threshold 256 MiB). In one process "
                "without Dask the same chunk loop stayed flat (587 MB over 70 chunks); the creep left after the fix "
                "(above) is Dask-worker-side and not explained yet.", "",
                *_fmt_rows(rows), "", *_rss_table(rows), ""]
    lines = ["## Peak memory per worker vs dataset size (tiny MACE model)", "",
             "The seeded tiny MACE model of `tests/conftest.py` (float64, d = 16, 2 interactions), rattled ethanol "
             f"(9 atoms), chunks of {CHUNK} structures, 2 workers, a fresh cluster per size. Peak RSS: `ru_maxrss` of "
             "each worker at the end. During the run a client thread samples each worker's RSS (psutil) every few "
             "seconds against the structures finished.", ""]
    lines += _fmt_rows(rows)
    lines += ["", *_rss_table(rows)]
    a, b = rows[0], rows[-1]
    lines += ["", f"From {a['sites']} to {b['sites']} sites the largest worker peak changed by "
              f"{max(b['peak_rss_mb']) - max(a['peak_rss_mb']):+.0f} MB."]
    return lines + [""]


def _rss_table(rows: list[dict]) -> list[str]:
    fracs = (0.1, 0.25, 0.5, 0.75, 1.0)
    lines = ["| sites | largest worker RSS (MB) at 10 / 25 / 50 / 75 / 100 % of the structures finished | "
              "growth after 25 % (MB) | samples |", "|---|---|---|---|"]
    for r in rows:
        smp = r.get("rss_samples") or []
        late = [max(x[2]) for x in smp if x[1] >= 0.25 * r["structures"] and x[2]]
        early = [max(x[2]) for x in smp if x[1] < 0.25 * r["structures"] and x[2]]
        growth = max(late) - max(early) if late and early else float("nan")
        at = " / ".join(f"{_rss_at(smp, r['structures'], f):.0f}" for f in fracs)
        stopped = (f" (stopped at its deadline: {r['structures']} of {r['planned_structures']} structures)"
                   if r.get("partial") else "")
        lines.append(f"| {r['sites']}{stopped} | {at} | {growth:+.0f} | {len(smp)} |")
    return lines


def _store_section(st: dict) -> list[str]:
    w, fq = st["write"], st["fit_flexible"]
    lines = ["## q_θ and split CP on a synthetic store, predicting shard by shard", "",
             f"{w['sites']:.2e} synthetic sites (d = {st['d']}, 10-atom structures, float32 descriptors), "
             f"{w['shards']} shards, {w['disk_mb']:.0f} MB on disk; loaded whole it would take "
             f"{w['sites'] * (4 * st['d'] + 32) / 2**30:.1f} GB. Shards are uncompressed `.npz` files; "
             "`predict_store` checks each shard's size and modification time against the manifest, then "
             "memory-maps only the columns the calibrator reads (q_θ: descriptors and species; split CP: species) "
             "and writes float64 widths. Three fresh processes (write; fit split then "
             "flexible; predict flexible then split), 1 torch thread each; peak RSS is that process's high-water "
             "mark so far, torch included (a bare process with torch imported: ~300 MB; mapped shard pages a "
             "process touched count in its RSS too, but are page cache the kernel can drop). "
             + _cache_note(w["disk_mb"]), "",
             "| step | wall (s) | CPU (s) | peak RSS so far (MB) | notes |", "|---|---|---|---|---|",
             f"| write the store | {w['wall_s']:.0f} | {w['cpu_s']:.0f} | {w['peak_rss_mb']:.0f} | "
             "one shard in memory at a time (seeded normal descriptors generated, validated, hashed) |",
             f"| fit_store split | {st['fit_split']['wall_s']:.0f} | {st['fit_split']['cpu_s']:.0f} | "
             f"{st['fit_split']['peak_rss_mb']:.0f} | exact: all {w['sites']:.1e} scores streamed (16 B/site) |",
             f"| fit_store flexible | {fq['wall_s']:.0f} | {fq['cpu_s']:.0f} | {fq['peak_rss_mb']:.0f} | "
             "q_θ trained on "
             f"{fq['n_train_used']:.1e} of {fq['n_train_sites']:.1e} training sites ({fq['epochs']} epochs, stop: "
             f"{fq['stop']}); ĉ exact over {fq['n_holdout_sites']:.1e} holdout sites = {fq['correction']:.3f} |"]
    for name in ("flexible", "split"):
        p, m = st[f"predict_store_{name}"], st[f"predict_memory_{name}"]
        lines.append(f"| predict_store {name} | {p['wall_s']:.0f} | {p['cpu_s']:.0f} | {p['peak_rss_mb']:.0f} | "
                     f"{w['sites'] / p['wall_s']:.2e} sites/s ({w['sites'] / p['cpu_s']:.2e} per CPU-s) read + predict "
                     f"+ write; in memory {m['sites_per_cpu_s']:.2e} sites per CPU-s; coverage {p['coverage']:.4f} |")
    p = st["predict_store_flexible"]
    per_core = w["sites"] / p["cpu_s"]
    lines += ["", f"Load averages at the end: {st.get('load', '?')}.", "",
              f"Streaming q_θ predict at {per_core:.2e} sites per CPU-second per core means 10^8 sites take "
              f"{1e8 / per_core / 60:.1f} CPU-minutes: {1e8 / per_core / 64:.0f} s on 64 cores "
              "(one shard per task with `predict_store(..., client=...)`)"
              + (" — measured at 10^8." if w["sites"] >= 1e8 else
                 f"; extrapolated from the measured {w['sites']:.0e}-site run (a 10^8 store needs "
                 f"{w['disk_mb'] * 1e8 / w['sites'] / 1024:.0f} GB)."), ""]
    return lines


def _cache_note(disk_mb: float) -> str:
    """Whether the store fitted in this machine's page cache (then reads cost no disk time)."""
    ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    if disk_mb < 0.8 * ram_mb:
        return (f"The shards were in the page cache (written just before, RAM {ram_mb / 1024:.0f} GB): a cold read "
                "is bound by the disk instead.")
    return (f"The store ({disk_mb / 1024:.0f} GB) does not fit the page cache (RAM {ram_mb / 1024:.0f} GB): the "
            "reads come from the disk, whose bandwidth bounds the wall-clock rate, and the kernel's page-fault "
            "work counts in the CPU time.")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="all", help="'report' rewrites distributed.md from distributed.json",
                    choices=("all", "scaling", "efficiency", "memory", "store", "report", "store-write", "store-fit",
                             "store-predict"))
    ap.add_argument("--scaling-structures", type=int, default=4000)
    ap.add_argument("--memory-sites", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--memory-model", choices=("tiny", "demo"), default="tiny",
                    help="tiny: the seeded tiny MACE of tests/conftest.py (d = 16); demo: the embedded demo model")
    ap.add_argument("--sample-every", type=float, default=2.0, help="seconds between worker RSS samples (memory)")
    ap.add_argument("--memory-deadline", type=float, default=None,
                    help="seconds after which a memory run stops and reports the part done (marked partial)")
    ap.add_argument("--store-sites", type=int, default=10_000_000)
    ap.add_argument("--store-d", type=int, default=64)
    ap.add_argument("--max-epochs", type=int, default=60)
    ap.add_argument("--tmp", default=None, help="work folder (default: a temporary one, removed at the end)")
    args = ap.parse_args(argv)
    if args.part.startswith("store-"):
        store_child(args.part[len("store-"):], args.store_sites, args.store_d, args.max_epochs, Path(args.tmp))
        return
    import dask

    res = json.loads(RAW.read_text()) if RAW.exists() and args.part != "all" else {}
    res["dask"] = dask.__version__
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="flexcal_bench_dist_"))
    try:
        if args.part in ("all", "scaling", "efficiency"):
            res["scaling"] = part_scaling(args.scaling_structures, tmp)
            print(efficiency_line(res["scaling"]), flush=True)
        if args.part in ("all", "memory"):
            key = "memory" if args.memory_model == "demo" else "memory_tiny"
            res[key] = part_memory(args.memory_sites, tmp, args.memory_model, args.sample_every, res.get(key),
                                   lambda out: RAW.write_text(json.dumps({**res, key: out}, indent=1)),
                                   args.memory_deadline)
        if args.part in ("all", "store"):
            res["store"] = part_store(args.store_sites, args.store_d, args.max_epochs, tmp)
            print("store", json.dumps(res["store"])[:400], flush=True)
    finally:
        if args.tmp is None:
            shutil.rmtree(tmp, ignore_errors=True)
    RAW.write_text(json.dumps(res, indent=1))  # the raw numbers first: a report bug never loses a run
    write_report(res, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    main()
