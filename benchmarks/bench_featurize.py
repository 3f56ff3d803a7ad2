"""Benchmark: featurizing throughput and peak memory.

1. Throughput (sites/s, CPU) of ``core.featurize.featurize`` -- batched, one
   forward pass giving energies, forces and descriptors -- against the naive
   loop a user would write with mace-torch alone: per structure,
   ``MACECalculator`` energy + forces, then ``get_descriptors`` (a second pass).
   Same 3BPA frames (public DFT data, ``../shared/data``), same seeded small
   MACE models built here, float64; the numbers must agree to 1e-10.
2. Peak memory featurizing a large synthetic dataset (rattled copies of 3BPA
   frames, >= 1e5 sites) with a small model, measured in a fresh subprocess
   (``resource.getrusage(...).ru_maxrss``) against the size of the output table.

3. CHGNet (``--part chgnet``; needs ``flexcal[chgnet]``): ``featurize`` with CHGNet 0.3.0
   (one batched forward pass per batch: energies, forces, the atom features of all four
   convolution layers) against the naive loop with chgnet alone, ``predict_structure(...,
   return_atom_feas=True)`` per structure, on the same boxed structures, float32.

Run: ``.venv/bin/python -m benchmarks.bench_featurize [--frames 100] [--sites 100000]``;
``--part chgnet --chgnet-frames 200`` for the CHGNet section only.
Writes ``benchmarks/results/featurize.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "featurize.md"
RAW = ROOT / "benchmarks" / "results" / "featurize.json"
SHARED = Path(os.environ.get("FLEXCAL_SHARED_DATA", ROOT.parent / "shared" / "data"))

#: name -> (hidden irreps, r_max Å, interactions); "small" is the size of FlexCal's demo
#: models (train_mace defaults), "medium-ish" has L=1 features like the foundation models
MODELS = {
    "small (32x0e, r=4.5, 2 layers)": ("32x0e", 4.5, 2),
    "L1 (32x0e+32x1o, r=5, 2 layers)": ("32x0e + 32x1o", 5.0, 2),
}


def build_model(path: Path, hidden: str, r_max: float, num_interactions: int, zs=(1, 6, 7, 8), seed: int = 0) -> Path:
    """torch.save a seeded, untrained float64 ScaleShiftMACE (cost per pass = a trained one's)."""
    from core.potentials.mace_foundation import mace_modules

    mace_modules()  # mace before e3nn, its environment change contained
    import torch
    from e3nn import o3
    from mace import modules

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(seed)
        model = modules.ScaleShiftMACE(
            r_max=r_max, num_bessel=8, num_polynomial_cutoff=5, max_ell=3,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=num_interactions, num_elements=len(zs), hidden_irreps=o3.Irreps(hidden),
            MLP_irreps=o3.Irreps("16x0e"), gate=torch.nn.functional.silu,
            atomic_energies=np.linspace(-10.0, -1.0, len(zs)), avg_num_neighbors=10.0,
            atomic_numbers=list(zs), correlation=3, radial_type="bessel",
            atomic_inter_scale=1.0, atomic_inter_shift=0.0,
        )
    finally:
        torch.set_default_dtype(old)
    torch.save(model, path)
    return path


def naive_loop(model_path: Path, structures, jit_optimize: bool = True):
    """What one writes with mace alone: per structure, energy+forces, then descriptors."""
    import torch
    from core.potentials.mace_foundation import mace_own_calculator

    calc = mace_own_calculator(model_path, device="cpu", default_dtype="float64")
    energies, forces, descriptors = [], [], []
    with torch.jit.optimized_execution(jit_optimize):
        for atoms in structures:
            atoms = atoms.copy()
            atoms.calc = calc
            energies.append(atoms.get_potential_energy())
            forces.append(atoms.get_forces())
            descriptors.append(calc.get_descriptors(atoms, invariants_only=True))
    return np.array(energies), np.concatenate(forces), np.concatenate(descriptors)


def throughput(frames: int, repeats: int, workdir: Path) -> list[dict]:
    from core.data import read_dataset
    from core.featurize import featurize
    from core.potentials import load_potential

    ds = read_dataset(SHARED / "3bpa" / "train_300K.xyz")
    structures = ds.structures[:frames]
    n_sites = sum(len(a) for a in structures)
    rows = []
    for label, (hidden, r_max, n_int) in MODELS.items():
        path = build_model(workdir / f"bench_{len(rows)}.model", hidden, r_max, n_int)
        pot = load_potential(path, device="cpu", dtype="float64")
        # warm-up (TorchScript first-call compilation) for both, on other frames
        warm = ds.structures[frames:frames + 4]
        featurize(warm, pot)
        naive_loop(path, warm[:2])

        def best(fn):
            """(best wall s, best CPU s of this process, result) over ``repeats`` runs."""
            walls, cpus = [], []
            for _ in range(repeats):
                t, c = time.perf_counter(), time.process_time()
                result = fn()
                walls.append(time.perf_counter() - t)
                cpus.append(time.process_time() - c)
            return (min(walls), min(cpus)), result

        t_naive, (e0, f0, d0) = best(lambda: naive_loop(path, structures, jit_optimize=True))
        t_naive_nojit, _ = best(lambda: naive_loop(path, structures, jit_optimize=False))
        t_fc, table = best(lambda: featurize(structures, pot, batch_size=16, descriptor_dtype="float64"))
        t_fc1, _ = best(lambda: featurize(structures, pot, batch_size=1, descriptor_dtype="float64"))
        diff = {
            "energy": float(np.abs(table.structure_info["energy_pred"] - e0).max()),
            "forces": float(np.abs(table.forces_pred - f0).max()),
            "descriptors": float(np.abs(table.descriptors - d0).max()),
        }
        rows.append({
            "model": label, "n_descriptors": pot.n_descriptors, "frames": len(structures), "sites": n_sites,
            "naive_s": t_naive, "naive_nojit_s": t_naive_nojit, "featurize_s": t_fc, "featurize_b1_s": t_fc1,
            "max_abs_diff": diff,
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def synthetic_structures(n_sites: int, seed: int = 0):
    from core.data import read_dataset

    base = read_dataset(SHARED / "3bpa" / "train_300K.xyz").structures
    rng = np.random.default_rng(seed)
    out = []
    total = 0
    while total < n_sites:
        a = base[len(out) % len(base)].copy()
        a.positions += rng.normal(scale=0.02, size=a.positions.shape)
        a.arrays["REF_forces"] = a.arrays["REF_forces"].copy()
        out.append(a)
        total += len(a)
    return out


def _rss_mb() -> float:
    """Current resident set size (Linux /proc; falls back to the high-water mark)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _PeakSampler:
    """Samples the current RSS every 20 ms in a thread; ``peak`` is the maximum seen."""

    def __init__(self):
        import threading

        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def memory_worker(n_sites: int, model_path: str) -> dict:
    """Runs in a fresh process: RSS growth and numpy peak of featurizing n_sites."""
    import tracemalloc

    from core.featurize import featurize
    from core.potentials import load_potential

    structures = synthetic_structures(n_sites)
    pot = load_potential(model_path, device="cpu", dtype="float64")
    featurize(structures[:4], pot)  # warm-up: imports, TorchScript compilation
    before = _rss_mb()
    tracemalloc.start()  # numpy reports its buffers to tracemalloc; torch's do not
    t, c = time.perf_counter(), time.process_time()
    with _PeakSampler() as sampler:
        table = featurize(structures, pot, batch_size=32)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - c
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = sampler.peak
    out_bytes = sum(a.nbytes for a in (table.descriptors, table.forces_pred, table.forces_ref, table.errors,
                                       table.species, table.structure_ids, table.atom_index))
    return {
        "sites": len(table), "structures": int(table.n_structures), "n_descriptors": table.n_descriptors,
        "seconds": elapsed, "cpu_seconds": cpu, "rss_before_mb": before, "rss_peak_mb": peak,
        "tracemalloc_peak_mb": traced_peak / 1024**2, "table_mb": out_bytes / 1024**2,
    }


def memory(n_sites: int, workdir: Path) -> list[dict]:
    """Memory worker at n_sites / 5 and n_sites: bounded memory means the peak growth
    differs by little more than the output table's growth."""
    hidden, r_max, n_int = MODELS["small (32x0e, r=4.5, 2 layers)"]
    path = build_model(workdir / "mem.model", hidden, r_max, n_int)
    results = []
    for n in (n_sites // 5, n_sites):
        cmd = [sys.executable, "-m", "benchmarks.bench_featurize", "--memory-worker", str(n), str(path)]
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
        line = [ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1]
        results.append(json.loads(line))
        print(line, flush=True)
    return results


def chgnet_throughput(frames: int, repeats: int, data: list[str], batch_sizes=(1, 4, 16)) -> list[dict]:
    """CHGNet 0.3.0: featurize (batched, one pass per batch) vs predict_structure per structure."""
    from core.data import read_dataset
    from core.featurize import featurize
    from core.potentials import load_potential

    pot = load_potential("chgnet-0.3.0", device="cpu")
    rows = []
    for rel in data:
        structures = read_dataset(SHARED / rel).structures[:frames]
        boxed = [pot.to_structure(a) for a in structures]  # the same pymatgen Structures for both

        def naive(task):
            out = [pot.model.predict_structure(s, task=task, return_atom_feas=True) for s in boxed]
            return (np.array([float(o["e"]) * len(s) for o, s in zip(out, boxed)]),
                    np.concatenate([o["f"] for o in out]), np.concatenate([o["atom_fea"] for o in out]))

        naive("ef"), featurize(structures[:4], pot)  # warm-up
        timed = {"naive_ef": lambda: naive("ef"), "naive_default": lambda: naive("efsm")}
        for b in batch_sizes:
            timed[f"featurize_b{b}"] = lambda b=b: featurize(structures, pot, batch_size=b)
        times, results = {}, {}
        for key, fn in timed.items():
            walls, cpus = [], []
            for _ in range(repeats):
                t, c = time.perf_counter(), time.process_time()
                results[key] = fn()
                walls.append(time.perf_counter() - t)
                cpus.append(time.process_time() - c)
            times[key] = (min(walls), min(cpus))
        e0, f0, a0 = results["naive_ef"]
        diffs = {}
        for b in batch_sizes:
            t = results[f"featurize_b{b}"]
            diffs[b] = {"energy": float(np.abs(t.structure_info["energy_pred"] - e0).max()),
                        "forces": float(np.abs(t.forces_pred - f0).max()),
                        "atom_fea": float(np.abs(t.descriptors[:, 128:192] - a0).max())}
        rows.append({"data": rel, "frames": len(structures), "sites": sum(len(a) for a in structures),
                     "atoms_per_frame": len(structures[0]), "n_descriptors": pot.n_descriptors,
                     "times": times, "max_abs_diff": diffs})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def chgnet_lines(section: dict) -> list[str]:
    """The CHGNet part of featurize.md."""
    args, rows = section["args"], section["rows"]
    lines = [
        "## CHGNet: featurize vs the naive predict_structure loop",
        "",
        f"Generated by `python -m benchmarks.bench_featurize --part chgnet --chgnet-frames {args['chgnet_frames']} "
        f"--repeats {args['repeats']} --threads {args['threads']}` on {section['date']}; torch "
        f"{section['torch']} with {args['threads']} thread(s), CPU, float32 (CHGNet's only precision). Load average "
        f"at the end: {section['load']} (shared cores: wall times are noisy; CPU seconds are the steadier figure).",
        "",
        "CHGNet 0.3.0 (weights from the chgnet 0.4.2 wheel). Both sides get the same pymatgen Structures "
        "(molecules boxed by `CHGNetPotential.to_structure`). Naive = `CHGNet.predict_structure(s, "
        "return_atom_feas=True)` per structure, with `task='ef'` (energy + forces, the fair comparison) and with "
        "the default `task='efsm'` (adds stress and magnetic moments, what a plain call computes). featurize = "
        "`core.featurize.featurize(structures, load_potential('chgnet-0.3.0'), batch_size=b)`: one forward "
        "pass per batch, giving energies, forces and the atom features of all four convolution layers "
        "(d = 256). Each cell: seconds wall (CPU seconds of the process), best of the repeats.",
        "",
        "| data | frames x atoms | naive ef | naive default (efsm) | featurize b=1 | featurize b=4 | featurize b=16 "
        "| b=16 vs naive ef | b=16 vs naive default | max abs diff E / F / atom_fea (b=16) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["times"]
        cell = {k: f"{w:.1f} ({c:.1f})" for k, (w, c) in t.items()}
        b16 = t["featurize_b16"]

        def ratio(key):
            return f"{t[key][0] / b16[0]:.2f}x ({t[key][1] / b16[1]:.2f}x)"

        d = r["max_abs_diff"].get("16", r["max_abs_diff"].get(16))
        lines.append(
            f"| {r['data']} | {r['frames']} x {r['atoms_per_frame']} | {cell['naive_ef']} | {cell['naive_default']} "
            f"| {cell.get('featurize_b1', '-')} | {cell.get('featurize_b4', '-')} | {cell['featurize_b16']} "
            f"| {ratio('naive_ef')} | {ratio('naive_default')} "
            f"| {d['energy']:.1e} eV / {d['forces']:.1e} eV/Å / {d['atom_fea']:.1e} |"
        )
    lines += [
        "",
        "Identical numbers: energies (total, eV; CHGNet's eV/atom x atoms), forces (eV/Å) and CHGNet's own "
        "`atom_fea` (descriptor columns 128-191) agree with the naive loop to float32 rounding (last column).",
        "",
        "Reading: batching saves CHGNet's per-call overhead (graph assembly, Python dispatch, small kernels), "
        "which matters for small molecules; for 27-atom 3BPA frames with CHGNet's 6 Å cutoff every atom "
        "neighbours nearly every other, and the dense per-edge and per-angle linear algebra (CHGNet's "
        "force pass also records a graph for second derivatives, `create_graph=True`) dominates, so one thread does the same "
        "CPU work either way, and larger batches lose some cache locality. Wall time on these shared cores "
        "also counts waiting for a core.",
        "",
    ]
    return lines


def write_chgnet_report(section: dict) -> None:
    """Append (or replace) the CHGNet section of featurize.md."""
    text = RESULTS.read_text() if RESULTS.is_file() else "# Featurizing benchmark\n"
    head = text.split("## CHGNet: featurize vs the naive predict_structure loop")[0].rstrip("\n")
    RESULTS.write_text(head + "\n\n" + "\n".join(chgnet_lines(section)))
    print(f"wrote the CHGNet section of {RESULTS}")


def write_report(rows, mem, args, mem_args) -> None:
    import torch

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    lines = [
        "# Featurizing benchmark",
        "",
        f"Generated by `python -m benchmarks.bench_featurize --frames {args.frames} --sites {mem_args.sites} "
        f"--repeats {args.repeats} --threads {args.threads}` "
        f"on {time.strftime('%Y-%m-%d')} (raw numbers: `featurize.json`).",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, float64, CPU. "
        f"Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min; the cores are shared, "
        "so absolute times are noisy -- each time is the best of "
        f"{args.repeats} run(s)).",
        "",
        "## Throughput: featurize vs the naive per-structure loop",
        "",
        f"Data: the first {args.frames} frames of 3BPA `train_300K.xyz` (27 atoms each). Models: seeded, "
        "untrained ScaleShiftMACE for H, C, N, O built in the benchmark (the cost of a pass does not depend "
        "on the weights). Naive loop = `MACECalculator` energy + forces, then "
        "`get_descriptors(invariants_only=True)`, per structure (two forward passes each). "
        "featurize = `core.featurize.featurize(batch_size=16)` (one pass per batch of 16). "
        "'no JIT opt.' = inside `torch.jit.optimized_execution(False)`, which `MACEPotential` uses by default. "
        "Each cell: sites per wall-clock second (sites per CPU-second of the process in brackets; the CPU "
        "figure is the less contention-sensitive one on shared cores).",
        "",
        "| model | d | sites | naive loop (sites/s) | naive, no JIT opt. (sites/s) | featurize bs=1 (sites/s) "
        "| featurize bs=16 (sites/s) | speed-up vs naive | max abs diff E / F / X |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = r["sites"]
        d = r["max_abs_diff"]

        def rate(key):
            wall, cpu = r[key]
            return f"{n / wall:.0f} ({n / cpu:.0f})"

        lines.append(
            f"| {r['model']} | {r['n_descriptors']} | {n} | {rate('naive_s')} | {rate('naive_nojit_s')} "
            f"| {rate('featurize_b1_s')} | {rate('featurize_s')} "
            f"| {r['naive_s'][0] / r['featurize_s'][0]:.1f}x ({r['naive_s'][1] / r['featurize_s'][1]:.1f}x) "
            f"| {d['energy']:.1e} / {d['forces']:.1e} / {d['descriptors']:.1e} |"
        )
    lines += [
        "",
        "Identical numbers: energies, forces and descriptors of featurize equal the naive loop's to the "
        "last column's maximum absolute difference (eV, eV/Å, descriptor units).",
        "",
        "## Peak memory on a large synthetic dataset",
        "",
        "Rattled copies of 3BPA frames, small model "
        f"(d = {mem[-1]['n_descriptors']}), `featurize(batch_size=32)`, descriptors stored as float32, each "
        "size in a fresh process after a 4-structure warm-up.",
        "",
        "| sites | wall (s) | CPU (s) | sites/s (per CPU-s) | RSS before (MB) | peak RSS (MB) | peak growth (MB) "
        "| numpy peak, tracemalloc (MB) | output table (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in mem:
        lines.append(
            f"| {m['sites']} | {m['seconds']:.1f} | {m['cpu_seconds']:.1f} | {m['sites'] / m['seconds']:.0f} "
            f"({m['sites'] / m['cpu_seconds']:.0f}) | {m['rss_before_mb']:.0f} "
            f"| {m['rss_peak_mb']:.0f} | {m['rss_peak_mb'] - m['rss_before_mb']:.0f} "
            f"| {m['tracemalloc_peak_mb']:.0f} | {m['table_mb']:.1f} |"
        )
    lines += [
        "",
        "RSS is sampled every 20 ms from /proc during the call (current RSS, not the process's "
        "high-water mark, which model loading and TorchScript compilation already push up). "
        "The structures are built before the first RSS reading, so the growth is featurize's own: the "
        "output arrays, preallocated once from the total atom count (4·d bytes of float32 descriptors "
        "plus 80 bytes of forces, errors, species and indices per site, before SiteTable's validation temporaries), "
        "plus one batch of graphs and model intermediates. It grows linearly with the number of sites, "
        "not with the number of batches.",
        "",
    ]
    if len(mem) >= 2:
        a, b = mem[0], mem[-1]
        growth_a = a["rss_peak_mb"] - a["rss_before_mb"]
        growth_b = b["rss_peak_mb"] - b["rss_before_mb"]
        per_site = (growth_b - growth_a) * 1024**2 / max(b["sites"] - a["sites"], 1)
        lines += [
            f"Going from {a['sites']} to {b['sites']} sites ({b['sites'] / a['sites']:.0f}x) raised the peak growth "
            f"by {growth_b - growth_a:.0f} MB, about {per_site:.0f} bytes per extra site (the output table is "
            f"{b['table_mb'] * 1024**2 / b['sites']:.0f} bytes per site; the rest is the validation temporaries of "
            f"SiteTable.from_arrays and the reference forces gathered from the structures). The remaining "
            f"~{growth_a:.0f} MB, the same at both sizes, is one batch (32 structures) of graphs, float64 model "
            "activations and their autograd buffers. At that rate 10^6 sites with d = 256 need about "
            f"{(growth_a + per_site * 1e6 / 1024**2 + 1e6 * 4 * (256 - b['n_descriptors']) / 1024**2) / 1024:.1f} GB.",
            "",
        ]
    RESULTS.write_text("\n".join(lines))
    print(f"wrote {RESULTS}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="3BPA frames for the throughput part")
    parser.add_argument("--sites", type=int, default=100_000, help="sites of the synthetic memory dataset")
    parser.add_argument("--repeats", type=int, default=1, help="timing repeats (best is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--part", choices=("all", "throughput", "memory", "chgnet", "report"), default="all",
                        help="run one part only (the other's last results are read from featurize.json); "
                             "'report' rewrites featurize.md from featurize.json; 'chgnet' runs the CHGNet "
                             "section only (needs flexcal[chgnet])")
    parser.add_argument("--chgnet-frames", type=int, default=200, help="frames per dataset for the CHGNet part")
    parser.add_argument("--chgnet-data", nargs="+", default=["3bpa/train_300K.xyz", "ethanol/train.xyz"],
                        help="datasets under the shared data folder for the CHGNet part")
    parser.add_argument("--memory-worker", nargs=2, metavar=("SITES", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.memory_worker:
        print(json.dumps(memory_worker(int(args.memory_worker[0]), args.memory_worker[1])), flush=True)
        return 0
    if not (SHARED / "3bpa" / "train_300K.xyz").is_file():
        print(f"public data not found at {SHARED} (set FLEXCAL_SHARED_DATA)", file=sys.stderr)
        return 2
    RAW.parent.mkdir(parents=True, exist_ok=True)
    raw = json.loads(RAW.read_text()) if RAW.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="flexcal-bench-") as tmp:
        if args.part in ("all", "throughput"):
            raw["throughput"] = {"args": vars(args), "rows": throughput(args.frames, args.repeats, Path(tmp))}
            RAW.write_text(json.dumps(raw, indent=1))
        if args.part in ("all", "memory"):
            raw["memory"] = {"args": vars(args), "result": memory(args.sites, Path(tmp))}
            RAW.write_text(json.dumps(raw, indent=1))
    if args.part == "chgnet":
        load = os.getloadavg()
        rows = chgnet_throughput(args.chgnet_frames, args.repeats, args.chgnet_data)
        raw["chgnet"] = {"args": vars(args), "rows": rows, "date": time.strftime("%Y-%m-%d"),
                         "torch": torch.__version__,
                         "load": " / ".join(f"{x:.1f}" for x in os.getloadavg()) + f" (at the start {load[0]:.1f})"}
        RAW.write_text(json.dumps(raw, indent=1))
        write_chgnet_report(raw["chgnet"])
        return 0
    if "throughput" not in raw or "memory" not in raw:
        print(f"partial run; raw results in {RAW}; run the missing --part to write {RESULTS}")
        return 0
    write_report(raw["throughput"]["rows"], raw["memory"]["result"],
                 argparse.Namespace(**raw["throughput"]["args"]), argparse.Namespace(**raw["memory"]["args"]))
    if "chgnet" in raw:
        write_chgnet_report(raw["chgnet"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
