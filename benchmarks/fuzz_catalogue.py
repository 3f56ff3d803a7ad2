"""The catalogue of the fuzz benchmark: every malformed or hostile input, in table order.

Groups: data files (read by ``flexcal featurize``), site tables (``calibrate``), calibrators
(``evaluate``), arguments, and outputs (paths, duplicates, tiny test sets). The builders
are in :mod:`benchmarks.fuzz_cases`; :mod:`benchmarks.fuzz_inputs` runs and judges them.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np

from benchmarks.fuzz_cases import (
    MODEL,
    Case,
    _cloud,
    _frame_with,
    _npy,
    calibrate,
    calibrator_file,
    data_case,
    evaluate,
    featurize,
    fifo,
    frames,
    npz_arrays,
    replace_line,
    run_args,
    site_files,
    symlink,
    synthetic_sites,
    tampered,
    texts,
    with_meta,
    write,
    zip_bomb,
)

__all__ = ["all_cases"]


def good_data(d: Path, n: int = 6, name: str = "data.xyz") -> Path:
    return write(d, name, texts(frames(n)))


def _sites_out(d: Path, n_structures: int, name: str = "out.npz") -> str | None:
    from core.sites import SiteTable

    sites = SiteTable.load(d / name)
    if sites.n_structures != n_structures:
        return f"expected {n_structures} structures in {name}, got {sites.n_structures}"
    return None


def _check_dedup(d: Path, out: str, err: str) -> str | None:
    """6 unique frames + 3 repeats: 6 structures kept, none repeated, a WARNING names the repeats."""
    from core.sites import SiteTable

    sites = SiteTable.load(d / "outdir" / "sites.npz")
    kept = sites.structure_info["dataset_index"].tolist()
    if sorted(kept) != [0, 1, 2, 3, 4, 5]:
        return f"kept frames {kept}, expected the 6 unique ones"
    if "dropped 3 duplicate frame(s)" not in out + err:
        return "no warning names the dropped duplicates"
    return None


_check_dedup.shows = "dropped 3 duplicate frame(s)"


def _quiet_and_six(d: Path, out: str, err: str) -> str | None:
    """6 structures written, and nothing on stderr with -q (no e3nn/cuequivariance notices)."""
    return _sites_out(d, 6) or (f"stderr not empty with -q: {err.strip()[:200]!r}" if err.strip() else None)


def _header_lie(d: Path, good: Path) -> Path:
    """A site table whose descriptors header declares 10^12 rows but holds a few bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 4)})
    arrays = {k: v for k, v in npz_arrays(good).items() if k != "descriptors"}
    with zipfile.ZipFile(d / "s.npz", "w") as zf:
        for k, v in arrays.items():
            zf.writestr(f"{k}.npy", _npy(v))
        zf.writestr("descriptors.npy", header.getvalue() + bytes(64))
    return d / "s.npz"


def _check_warning(text: str):
    def check(d: Path, out: str, err: str) -> str | None:
        return None if text in out + err else f"no {text!r} in the output"
    check.shows = text  # the line the table shows
    return check


def _data_cases() -> list[Case]:
    dc = data_case
    return [
        dc("empty", "empty file", lambda fr: "", r"data\.xyz: file is empty"),
        dc("blank", "only blank lines", lambda fr: "\n\n   \n", r"data\.xyz: file is empty"),
        dc("junk", "random binary junk named .xyz", lambda fr: np.random.default_rng(0).bytes(4096),
           r"data\.xyz: frame 0 \(line 1\): expected the number of atoms"),
        dc("junk-ext", "binary junk with an unknown extension", lambda fr: b"\x00\x01junk\x02" * 100,
           r"data\.weird: cannot tell the file format .*--format", file="data.weird"),
        dc("count-huge", "atom count 999999999999", lambda fr: ["999999999999\n", *fr[0].splitlines(True)[1:]],
           r"frame 0 \(line 1\) declares 999999999999 atoms, over the limit of 100000 .*--max-atoms"),
        dc("count-huge-allowed", "atom count 999999999999 with --max-atoms 10^13",
           lambda fr: ["999999999999\n", *fr[0].splitlines(True)[1:]],
           r"frame 0 \(line 1\) declares 999999999999 atoms, but only \d+ bytes follow", "--max-atoms", "10000000000000"),
        dc("count-negative", "atom count -3 in frame 2", _frame_with(2, lambda t: replace_line(t, 0, "-3")),
           r"frame 2 \(line 23\): expected the number of atoms of a frame, got -3"),
        dc("count-word", "atom count 'nine' in frame 3", _frame_with(3, lambda t: replace_line(t, 0, "nine")),
           r"frame 3 \(line 34\): expected the number of atoms of a frame, got 'nine'"),
        dc("count-small", "frame 1 declares 8 atoms but has 9", _frame_with(1, lambda t: replace_line(t, 0, "8")),
           r"frame 2 \(line 22\): expected the number of atoms of a frame, got 'H .*the atom count of frame 1 may be wrong"),
        dc("count-large", "frame 4 declares 10 atoms but has 9 (eats the next count line)",
           _frame_with(4, lambda t: replace_line(t, 0, "10")),
           r"frame 5 \(line 57\): expected the number of atoms of a frame, got 'Properties=.*frame 4 may be wrong"),
        dc("truncated", "file cut in the middle of frame 5", lambda fr: "".join(fr)[:-300],
           r"frame 5 \(line 56\) declares 9 atoms, but the file ends after \d atom lines"),
        dc("count-only", "file ends after an atom-count line", lambda fr: "".join(fr) + "9\n",
           r"frame 6 \(line 67\) declares 9 atoms, but only 0 bytes follow in the file"),
        dc("bad-float", "coordinate 'abc' in frame 2",
           _frame_with(2, lambda t: t.replace(t.splitlines()[3].split()[1], "abc", 1)),
           r"frame 2 \(line 23\) could not be parsed as extxyz .*abc"),
        dc("short-line", "an atom line with 2 of 9 columns in frame 1",
           _frame_with(1, lambda t: replace_line(t, 4, "H 0.1")), r"frame 1 \(line 12\) could not be parsed as extxyz"),
    ]


def _label_and_geometry_cases() -> list[Case]:
    dc = data_case
    return [
        dc("nan-forces", "NaN forces in frame 3", _frame_with(3, lambda t: replace_line(
            t, 5, " ".join(t.splitlines()[5].split()[:4] + ["nan", "0", "0"]))),
           r"frame 3 \(line 34\): forces 'REF_forces' contain NaN or inf \(atom 3\)"),
        dc("inf-position", "inf position in frame 0", _frame_with(0, lambda t: replace_line(
            t, 2, " ".join(["C", "inf", "0", "0"] + t.splitlines()[2].split()[4:]))),
           r"frame 0 \(line 1\): positions contain NaN or inf \(atom 0\)"),
        dc("nan-energy", "REF_energy=nan in frame 1", _frame_with(1, lambda t: t.replace("REF_energy=", "REF_energy=nan X=", 1)),
           r"frame 1 \(line 12\): energy 'REF_energy' is NaN or inf"),
        dc("text-energy", "REF_energy=high in frame 0",
           _frame_with(0, lambda t: re.sub(r"REF_energy=\S+", "REF_energy=high", t, count=1)),
           r"frame 0 \(line 1\): energy 'REF_energy' is not a single number \(got 'high'\)"),
        dc("no-forces", "no force labels at all", lambda fr: [t.replace(":REF_forces:R:3", ":junk:R:3") for t in fr],
           r"no reference forces found .*per-atom keys in frame 0: \['junk'\]\); pass --forces-key$"),
        dc("some-forces", "forces missing in frames 1 and 4",
           lambda fr: [t.replace(":REF_forces:R:3", ":junk:R:3") if i in (1, 4) else t for i, t in enumerate(fr)],
           r"forces key 'REF_forces' missing in 2 of 6 frames: frames 1, 4"),
        dc("forces-key", "--forces-key that no frame has", lambda fr: fr,
           r"forces key 'DFT_forces' not found in any frame \(frame 0 has: \['REF_forces'\]\)", "--forces-key", "DFT_forces"),
        dc("forces-shape", "forces with 2 components (REF_forces:R:2)",
           lambda fr: [replace_line(t.replace("REF_forces:R:3", "REF_forces:R:2"), 2, "C 0 0 0 1 1 1") for t in fr],
           r"could not be parsed|forces 'REF_forces' have shape"),
        dc("zero-atoms", "a frame with 0 atoms", lambda fr: [*fr[:2], '0\nProperties=species:S:1:pos:R:3 pbc="F F F"\n'],
           r"frame 2 \(line 23\) has zero atoms"),
        dc("same-position", "two atoms at one position in frame 1", _frame_with(1, lambda t: replace_line(
            t, 4, " ".join(t.splitlines()[3].split()[:1] + t.splitlines()[3].split()[1:4] + t.splitlines()[4].split()[4:])
        )), r"frame 1 \(line 12\): atoms 1 and 2 are at the same position"),
        dc("unknown-element", "element symbol 'Xx'", _frame_with(0, lambda t: replace_line(t, 2, "Xx 0 0 0 0 0 0")),
           r"frame 0 \(line 1\) could not be parsed as extxyz .*Xx"),
        dc("far-origin", "a molecule 5000 Å from the origin (cell-less)",
           _frame_with(2, lambda t: "".join(texts([_shifted(t, 5000.0)]))),
           r"frame 2 \(line 23\): atom \d lies 5\d{3} Å from the origin .*limit is 100 Å \(--max-extent\)"),
        dc("spread", "180 atoms spread over 10^4 Å (cell-less)", lambda fr: _cloud(180, 1e4),
           r"frame 0 \(line 1\): atom \d+ lies \d+ Å from the origin .*--max-extent"),
        dc("huge-cell", "a periodic cell 2×10^4 Å long", lambda fr: _cloud(20, 30, periodic_cell=2e4),
           r"frame 0 \(line 1\): periodic cell vector a is 2e\+04 Å long.*the limit is 1000 Å \(10 x --max-extent\)"),
        dc("flat-cell", "periodic with a zero lattice", lambda fr: [t.replace('pbc="F F F"', 'Lattice="0 0 0 0 0 0 0 0 0" pbc="T T T"') for t in fr],
           r"frame 0 \(line 1\): periodic along \['x', 'y', 'z'\] but the cell is degenerate"),
        dc("bad-lattice", "Lattice with 8 numbers", lambda fr: [t.replace('pbc="F F F"', 'Lattice="1 0 0 0 1 0 0 0" pbc="T T T"') for t in fr],
           r"frame 0 \(line 1\) could not be parsed as extxyz"),
        dc("huge-header", "a 2 MB header line", _frame_with(0, lambda t: replace_line(t, 1, t.splitlines()[1] + " junk=" + "x" * 2_000_000)),
           r"frame 0 \(line 1\): the header line is longer than 1048576 bytes"),
        dc("many-columns", "Properties= declaring 10^7 columns", lambda fr: [t.replace("REF_forces:R:3", "REF_forces:R:10000000") for t in fr],
           r"frame 0 \(line 1\): Properties= declares 10000004 columns per atom"),
        dc("blank-between", "a blank line between frames 2 and 3 (ASE would stop there)",
           lambda fr: [*fr[:3], "\n", *fr[3:]], r"line 34 is blank but the file continues at line 35 .*frames 3 and later would be lost"),
        dc("utf16", "the file in UTF-16", lambda fr: "".join(fr).encode("utf-16"),
           r"data\.xyz: frame 0 \(line 1\): expected the number of atoms"),
        dc("too-big", "a file over --max-bytes 1K", lambda fr: fr, r"data\.xyz: \d+ bytes exceeds the limit of 1024 bytes \(--max-bytes\)",
           "--max-bytes", "1K"),
        dc("too-many-atoms", "9-atom frames with --max-atoms 5", lambda fr: fr,
           r"frame 0 \(line 1\) declares 9 atoms, over the limit of 5 atoms per structure \(--max-atoms\)", "--max-atoms", "5"),
        dc("format-bogus", "--format nonsense", lambda fr: fr, r"unsupported format 'nonsense'; ASE reads: ", "--format", "nonsense"),
        dc("format-wrong", "an extxyz file read as --format traj", lambda fr: fr, r"data\.xyz: frame 0 could not be parsed as traj",
           "--format", "traj"),
        dc("dups-error", "repeated frames with --duplicate-frames error", lambda fr: [*fr, fr[1], fr[3]],
           r"2 of 8 frames repeat an earlier frame .*frames 6 \(= 1\), 7 \(= 3\)", "--duplicate-frames", "error"),
        dc("element-unknown-to-model", "uranium, which the demo model lacks",
           _frame_with(0, lambda t: replace_line(t, 2, "U " + " ".join(t.splitlines()[2].split()[1:]))),
           r"U|uranium|element", fast=False),
        dc("crlf", "Windows line endings (valid)", lambda fr: "".join(fr).replace("\n", "\r\n"), None,
           check=lambda d, o, e: _sites_out(d, 6), fast=False),
        dc("valid", "a valid file (control; -q leaves stderr empty)", lambda fr: fr, None, check=_quiet_and_six, fast=False),
    ]


def _shifted(text: str, by: float):
    import ase.io

    a = ase.io.read(io.StringIO(text), format="extxyz")
    a.positions += by
    return a


def _sites_case(name, what, make, expect, fast=True):
    """A calibrate case on a site table made by ``make(folder, good_cal_path) -> path``."""
    def build(d: Path) -> list[str]:
        good, _ = site_files(d)
        return calibrate(d, make(d, good))
    return Case(name, "site table", what, build, expect, None, fast)


def _cal_case(name, what, make, expect, method="split", fast=True, check=None, **options):
    """An evaluate case with a calibrator made by ``make(folder, good_calibrator_path) -> path``."""
    def build(d: Path) -> list[str]:
        return evaluate(d, make(d, calibrator_file(d, method, **options)))
    return Case(name, "calibrator", what, build, expect, check, fast)


def _entry(key, fn):
    def change(arrays):
        arrays[key] = fn(arrays[key])
        return arrays
    return change


def _site_table_cases() -> list[Case]:
    sc, tp = _sites_case, tampered
    meta = with_meta
    return [
        sc("sites-text", "a text file as SITES", lambda d, g: write(d, "s.npz", "hello"),
           r"s\.npz: not a readable SiteTable \.npz file \(not a zip archive\)"),
        sc("sites-truncated", "a site table cut to half", lambda d, g: write(d, "s.npz", g.read_bytes()[: g.stat().st_size // 2]),
           r"s\.npz: not a readable SiteTable \.npz file"),
        sc("sites-pickled", "an object (pickled) descriptors entry",
           lambda d, g: tp(g, d / "s.npz", _entry("descriptors", lambda v: np.array([object()] * 3, dtype=object))),
           r"s\.npz: entry 'descriptors' holds Python objects \(a pickle\)"),
        sc("sites-pickle-file", "a raw Python pickle named .npz", lambda d, g: write(d, "s.npz", __import__("pickle").dumps({"a": 1})),
           r"s\.npz: not a readable SiteTable \.npz file \(a Python pickle"),
        sc("sites-zipbomb", "a 1.4 MB zip bomb declaring 1.4 GB", lambda d, g: zip_bomb(d / "s.npz"),
           r"s\.npz: its entries would expand from \d+ to \d+ bytes .*zip bomb"),
        sc("sites-header-lie", "a descriptors header declaring 10^12 rows over 64 bytes", _header_lie,
           r"s\.npz: entry 'descriptors' declares shape \(1000000000000, 4\) \(32000000000000 bytes\) but holds"),
        sc("sites-meta-json", "__meta__ that is not JSON", lambda d, g: tp(g, d / "s.npz", meta(lambda m: "{not json")),
           r"s\.npz: __meta__ is not valid JSON"),
        sc("sites-meta-list", "__meta__ a JSON list", lambda d, g: tp(g, d / "s.npz", meta(lambda m: [1, 2])),
           r"s\.npz: __meta__ must be a JSON object, got list"),
        sc("sites-meta-type", "metadata 'meta' a string", lambda d, g: tp(g, d / "s.npz", meta(lambda m: {**m, "meta": "x"})),
           r"s\.npz: its metadata must be a JSON object, got str"),
        sc("sites-version", "version '1' (a string)", lambda d, g: tp(g, d / "s.npz", meta(lambda m: {**m, "version": "1"})),
           r"s\.npz: SiteTable format version '1' is not an integer"),
        sc("sites-0-columns", "0 descriptor columns",
           lambda d, g: tp(g, d / "s.npz", _entry("descriptors", lambda v: v[:, :0])), r"s\.npz: the table has 0 descriptor columns"),
        sc("sites-string-desc", "descriptors stored as text",
           lambda d, g: tp(g, d / "s.npz", _entry("descriptors", lambda v: np.char.add(v.astype(str), "x"))),
           r"s\.npz: damaged SiteTable file: descriptors: expected a numeric array"),
        sc("sites-nan", "NaN in the force errors",
           lambda d, g: tp(g, d / "s.npz", _entry("errors", lambda v: np.where(np.arange(v.size) == 7, np.nan, v))),
           r"s\.npz: damaged SiteTable file: errors: contains NaN or inf \(first at index \(7,\)\)"),
        sc("sites-short", "species one row short",
           lambda d, g: tp(g, d / "s.npz", _entry("species", lambda v: v[:-1])),
           r"s\.npz: damaged SiteTable file: species: expected 90 rows"),
        sc("sites-unlabelled", "an unlabelled table (no errors)",
           lambda d, g: synthetic_sites(labelled=False).save(d / "s.npz"), r"SITES .*s\.npz: these sites carry no reference labels"),
        sc("sites-zero-errors", "every error 0 (labels equal predictions)",
           lambda d, g: tp(g, d / "s.npz", _entry("errors", np.zeros_like)), r"every one of its 90 force errors is 0"),
        sc("sites-npy", "a single .npy array as SITES", lambda d, g: write(d, "s.npz", _npy(np.ones(3))),
           r"s\.npz: not a readable SiteTable \.npz file \(a single \.npy array\)"),
        sc("sites-dir", "a directory as SITES", lambda d, g: (d / "s.npz").mkdir() or d / "s.npz",
           r"SITES: expected a file, got a directory"),
        sc("sites-devzero", "a symlink to /dev/zero as SITES", lambda d, g: symlink(d, "s.npz", "/dev/zero"),
           r"s\.npz: not a regular file"),
        sc("sites-fifo", "a named pipe as SITES", lambda d, g: fifo(d, "s.npz"), r"s\.npz: not a regular file"),
        sc("sites-calibrator", "a calibrator file given as SITES", lambda d, g: calibrator_file(d),
           r"split\.npz: format is 'flexcal\.Calibrator', expected 'flexcal\.SiteTable'"),
    ]


def _calibrator_cases() -> list[Case]:
    cc, tp, meta = _cal_case, tampered, with_meta
    return [
        cc("cal-text", "a text file as --calibrator", lambda d, g: write(d, "c.npz", "not a zip"),
           r"c\.npz: not a readable FlexCal calibrator \.npz file \(not a zip archive\)"),
        cc("cal-pickled", "a pickled (object) entry",
           lambda d, g: tp(g, d / "c.npz", _entry("scores", lambda v: np.array([object()], dtype=object))),
           r"c\.npz: entry 'scores' holds Python objects \(a pickle\)"),
        cc("cal-zipbomb", "a zip bomb declaring 1.4 GB",
           lambda d, g: zip_bomb(d / "c.npz", meta={"format": "flexcal.Calibrator", "version": 1, "kind": "split_conformal"}),
           r"c\.npz: its entries would expand .*zip bomb"),
        cc("cal-kind", "an unknown kind", lambda d, g: tp(g, d / "c.npz", meta(lambda m: {**m, "kind": "random_forest"})),
           r"c\.npz: unknown calibrator kind 'random_forest'"),
        cc("cal-params", "confidence 'abc' in its parameters",
           lambda d, g: tp(g, d / "c.npz", meta(lambda m: {**m, "params": {**m["params"], "confidence": "abc"}})),
           r"c\.npz: damaged split_conformal calibrator \(ValueError: confidence: expected a number in \(0, 1\)"),
        cc("cal-state-type", "its state a JSON list", lambda d, g: tp(g, d / "c.npz", meta(lambda m: {**m, "state": [1]})),
           r"c\.npz: damaged split_conformal calibrator: 'state' must be a JSON object, got list"),
        cc("cal-weights-shape", "q_θ weights of the wrong shape",
           lambda d, g: tp(g, d / "c.npz", _entry("model__inp.weight", lambda v: v[:, :-1])),
           r"c\.npz: damaged flexible_quantile calibrator", method="flexible", max_epochs=3),
        cc("cal-weights-nan", "NaN in the q_θ weights",
           lambda d, g: tp(g, d / "c.npz", _entry("model__out.weight", lambda v: np.full_like(v, np.nan))),
           r"c\.npz: damaged flexible_quantile calibrator: 'model__out\.weight' contains NaN", method="flexible", max_epochs=3),
        cc("cal-scores-missing", "its scores entry removed",
           lambda d, g: tp(g, d / "c.npz", lambda a: {k: v for k, v in a.items() if k != "scores"}),
           r"c\.npz: damaged split_conformal calibrator \(KeyError: 'scores'\)"),
        cc("cal-sites", "a site table given as --calibrator", lambda d, g: site_files(d)[0],
           r"cal\.npz: format is 'flexcal\.SiteTable', expected 'flexcal\.Calibrator'"),
        Case("cal-other-width", "calibrator", "a calibrator fitted on 4 descriptors, sites with 6",
             lambda d: ["evaluate", str(synthetic_sites(d=6).save(d / "t6.npz")), "--calibrator",
                        str(calibrator_file(d, "knn")), "-q"],
             r"fitted on 4 descriptor columns .* these sites have 6"),
        Case("cal-other-model", "calibrator", "a calibrator from another model (same width) warns",
             lambda d: ["evaluate", str(_other_model_sites(d)), "--calibrator", str(calibrator_file(d, "knn")), "-q"],
             None, _check_warning("widths from another model's descriptors are not calibrated")),
    ]


def _other_model_sites(d: Path) -> Path:
    from core.sites import SiteTable

    s = synthetic_sites(seed=3)
    return SiteTable.from_arrays(descriptors=s.descriptors, errors=s.errors, species=s.species,
                                 structure_ids=s.structure_ids,
                                 meta={"potential": "other", "potential_identity": "other-4"}).save(d / "other.npz")


def _args_case(name, what, argv, expect, fast=True, check=None, group="arguments"):
    """A case whose arguments ``argv(folder, data_path) -> list`` go with a valid 6-frame file."""
    def build(d: Path) -> list[str]:
        return argv(d, good_data(d))
    return Case(name, group, what, build, expect, check, fast)


def _argument_cases() -> list[Case]:
    ac = _args_case
    run = run_args
    cal = lambda d, extra: calibrate(d, site_files(d)[0], *extra)  # noqa: E731
    return [
        ac("seed-negative", "--seed -1", lambda d, p: run(d, p, "--seed", "-1"),
           r"argument --seed: expected a seed: an integer >= 0, got '-1'"),
        ac("seed-word", "--split-seed abc", lambda d, p: run(d, p, "--split-seed", "abc"),
           r"argument --split-seed: expected a seed: an integer >= 0, got 'abc'"),
        ac("confidence-big", "--confidence 1.5", lambda d, p: run(d, p, "--confidence", "1.5"),
           r"argument --confidence: expected a number in \(0, 1\) .*got '1\.5'"),
        ac("confidence-nan", "--confidence nan", lambda d, p: cal(d, ["--confidence", "nan"]),
           r"argument --confidence: expected a number in \(0, 1\) .*got 'nan'"),
        ac("confidence-percent", "--confidence 90%", lambda d, p: cal(d, ["--confidence", "90%"]),
           r"argument --confidence: expected a number in \(0, 1\) such as 0\.9, got '90%'"),
        ac("fraction-one", "--test-fraction 1", lambda d, p: run(d, p, "--test-fraction", "1"),
           r"argument --test-fraction: expected a fraction in \(0, 1\) such as 0\.5, got '1'"),
        ac("fraction-negative", "--test-fraction -0.2", lambda d, p: run(d, p, "--test-fraction=-0.2"),
           r"argument --test-fraction: expected a fraction in \(0, 1\) .*got '-0\.2'"),
        ac("methods-unknown", "--methods split,bayes", lambda d, p: run(d, p, "--methods", "split,bayes"),
           r"argument --methods: unknown method 'bayes'; valid methods: "),
        ac("methods-twice", "--methods split,split", lambda d, p: run(d, p, "--methods", "split,split"),
           r"argument --methods: method 'split' given twice"),
        ac("method-list", "calibrate --method knn,split", lambda d, p: ["calibrate", "x.npz", "--method", "knn,split", "-o", "y.npz"],
           r"argument --method: expected one method, got 'knn,split'"),
        ac("batch-zero", "--batch-size 0", lambda d, p: featurize(d, p, "--batch-size", "0"),
           r"argument --batch-size: expected a positive integer, got '0'"),
        ac("max-extent-negative", "--max-extent -1", lambda d, p: featurize(d, p, "--max-extent=-1"),
           r"argument --max-extent: expected a positive number, got '-1'"),
        ac("max-bytes-word", "--max-bytes lots", lambda d, p: featurize(d, p, "--max-bytes", "lots"),
           r"argument --max-bytes: expected a size in bytes such as 500M or 2G, got 'lots'"),
        ac("split-by-alone", "--split-by without the types", lambda d, p: run(d, p, "--split-by", "config_type"),
           r"--split-by needs both --calibration-types and --test-types"),
        ac("split-values", "--calibration-types a value no frame has",
           lambda d, p: run(d, p, "--split-by", "config_type", "--calibration-types", "md_300K", "--test-types", "md_9000K"),
           r"config_type: no structures with value\(s\) \['md_9000K'\]; present: \['md_300K'\]"),
        ac("device-tpu", "--device tpu", lambda d, p: featurize(d, p, "--device", "tpu"), r"--device: .*'tpu'"),
        ac("model-dir", "a directory as --model", lambda d, p: featurize(d, p)[:3] + [str(d)] + featurize(d, p)[4:],
           r"is a directory, not a model file", fast=False),
        ac("model-missing", "a --model path that does not exist",
           lambda d, p: featurize(d, p)[:3] + [str(d / "nope.model")] + featurize(d, p)[4:], r"nope\.model", fast=False),
        ac("model-text", "a text file named .model", lambda d, p: [*featurize(d, p)[:3], str(write(d, "m.model", "hi")),
                                                                 *featurize(d, p)[4:]], r"m\.model", fast=False),
        ac("shift-no-target", "--weights shift without --target", lambda d, p: ["calibrate", str(site_files(d)[0]), "--method",
                                                                                "flexible", "--weights", "shift", "-o",
                                                                                str(d / "c.npz"), "-q"],
           r"--weights shift needs --target TARGET_SITES"),
        ac("weights-split", "--weights for a split method", lambda d, p: cal(d, ["--weights", "species"]),
           r"--weights applies to --method flexible only, not 'split'"),
        ac("data-missing", "a DATA path that does not exist", lambda d, p: featurize(d, d / "nope.xyz"),
           r"DATA: no such file: .*nope\.xyz \(nor a demo dataset"),
        ac("data-dir", "a directory as DATA", lambda d, p: featurize(d, d), r"DATA: expected a structure file .*got a directory"),
        ac("data-devzero", "a symlink to /dev/zero as DATA", lambda d, p: featurize(d, symlink(d, "zero.xyz", "/dev/zero")),
           r"zero\.xyz: not a regular file"),
        ac("data-fifo", "a named pipe as DATA", lambda d, p: featurize(d, fifo(d, "pipe.xyz")), r"pipe\.xyz: not a regular file"),
    ]


def _output_cases() -> list[Case]:
    ac = _args_case
    return [
        ac("out-is-input", "featurize -o DATA (the input itself)", lambda d, p: [*featurize(d, p)[:5], str(p), "-q"],
           r"--output: .*data\.xyz is also an input; refusing to overwrite an input file", group="outputs"),
        ac("out-is-model", "featurize -o the model file", lambda d, p: ["featurize", str(p), "--model",
                                                                     str(_copy_model(d)), "-o", str(d / "m.model"), "-q"],
           r"--output: .*m\.model is also an input", group="outputs"),
        ac("out-is-sites", "calibrate -o SITES", lambda d, p: ["calibrate", str(site_files(d)[0]), "--method", "split",
                                                             "-o", str(d / "cal.npz"), "-q"],
           r"--output: .*cal\.npz is also an input", group="outputs"),
        ac("out-dir", "-o an existing directory", lambda d, p: [*featurize(d, p)[:5], str(d), "-q"],
           r"--output: .* is a directory; give a file name", group="outputs"),
        ac("out-under-file", "-o inside a path that is a file", lambda d, p: [*featurize(d, p)[:5], str(p / "x.npz"), "-q"],
           r"--output: cannot create the folder .*data\.xyz", group="outputs"),
        ac("out-proc", "-o into /proc (passes the permission bits as root, refuses writes)",
           lambda d, p: [*featurize(d, p)[:5], "/proc/flexcal-fuzz.npz", "-q"],
           r"--output: (cannot write into the folder /proc|the folder /proc is not writable)", group="outputs"),
        ac("out-no-overwrite", "--no-overwrite onto an existing output",
           lambda d, p: [*featurize(d, p)[:5], str(write(d, "keep.npz", "precious")), "-q", "--no-overwrite"],
           r"--output: .*keep\.npz exists; remove it or choose another name", group="outputs"),
        ac("run-outdir-file", "run -o a file instead of a folder", lambda d, p: run_args(d, p, "-o", str(p)),
           r"--output: .*data\.xyz is a file; give a folder", group="outputs"),
        ac("dups-dropped", "3 repeated frames: dropped, named, never on both sides of the split",
           lambda d, p: run_args(d, write(d, "dups.xyz", (lambda fr: [*fr, fr[0], fr[2], fr[2]])(texts(frames()))),
                                 "-o", str(d / "outdir")), None, fast=False, check=_check_dedup, group="outputs"),
        ac("tiny-test", "a 4-frame run: a 2-structure test set is flagged", lambda d, p: run_args(d, good_data(d, 4, "t.xyz")),
           None, fast=False, check=_check_warning("WARNING: test: coverage from 18 sites of 2 structures is not "
                                                  "informative"), group="outputs"),
        ac("evaluate-in-sample", "evaluate on its own calibration sites",
           lambda d, p: ["evaluate", str(site_files(d)[0]), "--calibrator", str(calibrator_file(d)), "--calibration",
                         str(d / "cal.npz"), "-q"], None, check=_check_warning("the coverage is in-sample"), group="outputs"),
    ]


def _copy_model(d: Path) -> Path:
    import shutil

    return Path(shutil.copy(MODEL, d / "m.model"))


def all_cases() -> list[Case]:
    """Every case, in table order."""
    return [*_data_cases(), *_label_and_geometry_cases(), *_site_table_cases(), *_calibrator_cases(), *_argument_cases(), *_output_cases()]
