"""The ``flexcal`` command line: help, exit codes, messages, and end-to-end runs.

Most tests call ``core.cli.main(argv)`` in-process (fast); the ones that check the
console script and the absence of tracebacks run it as a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.cli import main
from core.metrics import REPORT_KEYS
from core.sites import SiteTable

SUBCOMMANDS = ("featurize", "calibrate", "evaluate", "run", "study")
FLEXCAL = Path(sys.executable).with_name("flexcal")


def make_sites(n_structures=60, atoms=8, seed=0, scale=1.0) -> SiteTable:
    """Heteroscedastic synthetic sites: e_i = σ(X_i) ‖z_i‖, σ grows with X_i0 (× ``scale``)."""
    rng = np.random.default_rng(seed)
    n = n_structures * atoms
    X = rng.normal(size=(n, 3))
    species = rng.choice([1, 6], size=n)
    sigma = scale * 0.05 * np.exp(0.7 * X[:, 0])
    f_ref = rng.normal(size=(n, 3))
    f_pred = f_ref + sigma[:, None] * rng.normal(size=(n, 3))
    ids = np.repeat(np.arange(n_structures), atoms)
    return SiteTable.from_arrays(descriptors=X, errors=None, species=species, structure_ids=ids,
                                 forces_pred=f_pred, forces_ref=f_ref,
                                 structure_info={"structure_id": np.arange(n_structures),
                                                 "config_type": np.where(np.arange(n_structures) % 3, "a", "b")})


def flexcal(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [str(FLEXCAL)] if FLEXCAL.exists() else [sys.executable, "-m", "core.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def site_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cal, test = make_sites().split(0.5, seed=0)
    return cal.save(root / "cal.npz"), test.save(root / "test.npz")


# ------------------------------------------------------------------- help
@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_of_every_subcommand_teaches_units(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "eV/Å" in out
    assert "Example" in out
    assert f"flexcal {command}" in out


def test_top_level_help_and_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in SUBCOMMANDS:
        assert command in out
    assert "eV/Å" in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("flexcal ")


def test_console_script_help_runs():
    res = flexcal("--help")
    assert res.returncode == 0, res.stderr
    assert "featurize" in res.stdout and "calibrate" in res.stdout


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


# ------------------------------------------------------------- bad input
def test_missing_file_exits_2_with_message(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope.npz"), "--calibrator", str(tmp_path / "c.npz")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"flexcal evaluate: error: SITES: no such file: {tmp_path / 'nope.npz'}"


def test_missing_data_file_names_the_demos(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.xyz"), "--model", "x.model"]) == 2
    err = capsys.readouterr().err
    assert "DATA: no such file" in err and "missing.xyz" in err


def test_malformed_extxyz_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.xyz"
    bad.write_text("3\nProperties=species:S:1:pos:R:3 energy=1.0\nH 0 0 0\nH 0 0\n")
    res = flexcal("featurize", str(bad), "--model", str(tmp_path / "m.model"), "-o", str(tmp_path / "s.npz"))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]  # earlier lines are progress notes
    assert last == (f"flexcal featurize: error: {bad}: frame 0 (line 1) declares 3 atoms, but the file ends after "
                    "2 atom lines: the file is truncated or the atom count is wrong")
    quiet = flexcal("featurize", str(bad), "--model", "m.model", "-o", str(tmp_path / "s.npz"), "-q")
    assert quiet.returncode == 2 and len(quiet.stderr.strip().splitlines()) == 1


def test_unknown_method_lists_valid_ones(site_files, tmp_path, capsys):
    cal, _ = site_files
    assert main(["calibrate", str(cal), "--method", "bogus", "-o", str(tmp_path / "c.npz")]) == 2
    err = capsys.readouterr().err
    from core.calibration.registry import method_names

    assert f"unknown method 'bogus'; valid methods: {', '.join(method_names())}" in err
    assert {"flexible", "split", "knn", "gmm", "force", "committee", "mondrian"} <= set(method_names())
    assert main(["run", "x.xyz", "--methods", "split,bogus"]) == 2
    assert "unknown method 'bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["1.5", "0", "ninety"])
def test_invalid_confidence_exits_2(value, site_files, tmp_path, capsys):
    cal, _ = site_files
    code = main(["calibrate", str(cal), "--method", "split", "--confidence", value, "-o", str(tmp_path / "c.npz")])
    assert code == 2
    err = capsys.readouterr().err
    assert "argument --confidence: expected a number in (0, 1) such as 0.9" in err
    assert repr(value) in err


def test_weights_only_for_flexible(site_files, tmp_path, capsys):
    cal, _ = site_files
    assert main(["calibrate", str(cal), "--method", "split", "--weights", "species", "-o", str(tmp_path / "c.npz")]) == 2
    assert "--weights applies to --method flexible only, not 'split'" in capsys.readouterr().err
    assert main(["calibrate", str(cal), "--method", "flexible", "--weights", "shift", "-o", str(tmp_path / "c.npz")]) == 2
    assert "--weights shift needs --target" in capsys.readouterr().err


def test_committee_without_spread_exits_2(site_files, tmp_path, capsys):
    cal, _ = site_files
    assert main(["calibrate", str(cal), "--method", "committee", "-o", str(tmp_path / "c.npz")]) == 2
    assert "needs sites featurized with a committee" in capsys.readouterr().err


def test_not_a_site_table_exits_2(tmp_path, capsys):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    assert main(["calibrate", str(junk), "--method", "split", "-o", str(tmp_path / "c.npz")]) == 2
    assert "not a readable SiteTable" in capsys.readouterr().err


# -------------------------------------------------- calibrate -> evaluate
@pytest.mark.parametrize("method", ["split", "knn", "flexible"])
def test_calibrate_then_evaluate_round_trip(method, site_files, tmp_path, capsys):
    cal, test = site_files
    out = tmp_path / f"{method}.npz"
    args = ["calibrate", str(cal), "--method", method, "--confidence", "0.9", "-o", str(out), "--seed", "0"]
    if method == "flexible":
        args += ["--max-epochs", "30"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"wrote {method} calibrator" in err and out.exists()
    assert main(["evaluate", str(test), "--calibrator", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(REPORT_KEYS) <= set(report)
    assert report["confidence"] == 0.9 and report["n_sites"] == 240
    assert abs(report["coverage"] - 0.9) <= 0.08
    assert report["miscalibration_area"] is not None
    if method == "split":
        assert report["spearman"] is None and report["spearman_note"]
    # the text form prints the same keys, one per line
    assert main(["evaluate", str(test), "--calibrator", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split()[0] == "calibrator" and "\nCoverage " in text  # readable labels


def test_flexible_training_progress_on_stderr(site_files, tmp_path, capsys):
    cal, _ = site_files
    assert main(["calibrate", str(cal), "--method", "flexible", "--max-epochs", "5", "-o", str(tmp_path / "f.npz")]) == 0
    err = capsys.readouterr().err
    assert "train q_θ" in err  # the epoch bar
    assert "5 epochs, best val_loss" in err  # the closing summary
    assert main(["calibrate", str(cal), "--method", "flexible", "--max-epochs", "5", "-q",
                 "-o", str(tmp_path / "g.npz")]) == 0
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------- run
def write_labelled_frames(path, config_types) -> Path:
    """A small labelled extxyz file, one H2 frame per entry of ``config_types``."""
    from ase import Atoms
    from ase.io import write

    frames = []
    for i, ct in enumerate(config_types):
        atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.8 + 0.01 * i]])
        atoms.info.update(REF_energy=-1.0, config_type=ct)
        atoms.arrays["REF_forces"] = np.zeros((2, 3))
        frames.append(atoms)
    write(path, frames, format="extxyz")
    return path


@pytest.fixture
def fake_featurize(monkeypatch, tmp_path):
    """Replace featurization by synthetic sites: tests run's split/fit/report logic alone.

    DATA is a real 40-frame file whose config types match the synthetic sites' (every third
    "b"), so the --split-by values are checked against it before "featurizing".
    """
    import core.sources

    data = write_labelled_frames(tmp_path / "data.xyz", np.where(np.arange(40) % 3, "a", "b"))

    def fake(path, model=None, **kwargs):
        FEATURIZED.append(str(path))
        return make_sites(n_structures=40, atoms=6, seed=1)

    FEATURIZED.clear()
    monkeypatch.setattr(core.sources, "load_sites", fake)
    return data


FEATURIZED: list[str] = []  # the DATA paths the fake featurizer was called with


def test_run_json_has_counts_and_report_keys(fake_featurize, capsys, tmp_path):
    outdir = tmp_path / "out"
    code = main(["run", str(fake_featurize), "--model", "any.model", "--methods", "split,force,flexible",
                 "--max-epochs", "20", "--json", "-o", str(outdir)])
    assert code == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # stdout is only the JSON object
    assert result["n_structures"] == 40 and result["n_sites"] == 240
    assert result["split"]["calibration"]["n_structures"] == 20
    assert result["split"]["test"]["n_structures"] == 20
    assert list(result["methods"]) == ["split", "force", "flexible"]
    for rep in result["methods"].values():
        assert set(REPORT_KEYS) <= set(rep)
        assert abs(rep["coverage"] - 0.9) <= 0.1
    assert result["methods"]["split"]["width_ratio"] == pytest.approx(1.0)
    assert "fitting flexible" in captured.err
    assert {p.name for p in outdir.iterdir()} >= {"sites.npz", "report.json", "report.csv",
                                                   "calibrator_split.npz", "calibrator_flexible.npz"}
    assert json.loads((outdir / "report.json").read_text())["methods"].keys() == result["methods"].keys()


def test_run_table_and_split_by(fake_featurize, capsys):
    code = main(["run", str(fake_featurize), "--model", "m", "--methods", "split,mondrian", "--split-by",
                 "config_type", "--calibration-types", "a", "--test-types", "b", "-q"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    head = out[1:out.index(next(ln for ln in out if ln.startswith("---")))]  # readable headers, wrapped
    assert head[-1].split()[:3] == ["Method", "Coverage", "coverage"] and "Expected" in head[-2]  # with its range
    body = out[len(head) + 2:]
    assert body[0].split()[0] == "split" and body[1].split()[0] == "mondrian"
    assert "tested on 14" in out[0]  # 40 structures, every third is "b"
    assert main(["run", str(fake_featurize), "--model", "m", "--split-by", "config_type",
                 "--calibration-types", "a", "--test-types", "c"]) == 2
    assert "no structures with value(s) ['c']; present: ['a', 'b']" in capsys.readouterr().err
    assert main(["run", str(fake_featurize), "--model", "m", "--split-by", "config_type"]) == 2
    assert "needs both --calibration-types and --test-types" in capsys.readouterr().err


# ------------------------------------------------- with a real (tiny) MACE
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from ase.io import write

    from tests.conftest import make_tiny_structures

    path = tmp_path_factory.mktemp("tiny") / "tiny.xyz"
    frames = make_tiny_structures(0) + make_tiny_structures(1)
    write(path, frames, format="extxyz")
    return path


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """One featurize cache for the tiny-MACE tests: the second featurization is a cache hit."""
    return tmp_path_factory.mktemp("tiny_cache")


def test_featurize_calibrate_evaluate_with_tiny_mace(tiny_data, tiny_mace_model, tiny_cache, tmp_path, capsys):
    sites_path = tmp_path / "sites.npz"
    assert main(["featurize", str(tiny_data), "--model", str(tiny_mace_model), "-o", str(sites_path),
                 "--batch-size", "8", "--cache-dir", str(tiny_cache)]) == 0
    err = capsys.readouterr().err
    assert "wrote 160 sites from 24 structures (16 descriptors per site" in err
    sites = SiteTable.load(sites_path)
    assert len(sites) == 160 and sites.n_descriptors == 16
    cal, test = sites.split(0.5, seed=0)
    cal.save(tmp_path / "cal.npz")
    test.save(tmp_path / "test.npz")
    assert main(["calibrate", str(tmp_path / "cal.npz"), "--method", "mondrian", "-o", str(tmp_path / "m.npz")]) == 0
    assert main(["evaluate", str(tmp_path / "test.npz"), "--calibrator", str(tmp_path / "m.npz"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_sites"] == len(test) and 0.0 <= report["coverage"] <= 1.0


def test_run_json_with_tiny_mace(tiny_data, tiny_mace_model, tiny_cache, capsys):
    assert main(["run", str(tiny_data), "--model", str(tiny_mace_model), "--methods", "split,knn,force",
                 "--json", "-q", "--cache-dir", str(tiny_cache)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_structures"] == 24 and result["n_sites"] == 160
    assert set(result["methods"]) == {"split", "knn", "force"}
    assert all(set(REPORT_KEYS) <= set(r) for r in result["methods"].values())


# ------------------------------------------------ the embedded demo (offline)
def _demo_or_skip(family: str = "molecule"):
    from core import demo

    try:
        demo.demo_dataset_path(family)
        demo.demo_model_path(family)
    except FileNotFoundError as exc:
        pytest.skip(f"embedded demo {family!r} not generated here: {exc}")


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("demo_cache")


def test_run_demo_offline_without_model(demo_cache):
    """`flexcal run molecule --json` in a fresh process: demo data + demo model, stdout pure JSON."""
    _demo_or_skip("molecule")
    res = flexcal("run", "molecule", "--json", "--max-structures", "40", "--methods", "split,knn",
                  "--cache-dir", str(demo_cache), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(res.stdout)
    assert result["dataset"] == "molecule"
    assert result["n_structures"] == 40 and result["n_sites"] == 40 * 9  # ethanol: 9 atoms
    split = result["split"]
    # the demo model's training/validation frames are never calibrated or tested on
    assert split["calibration"]["n_structures"] + split["test"]["n_structures"] < 40
    assert split["reference"]["n_structures"] > 0
    assert set(result["methods"]) == {"split", "knn"}
    assert all(set(REPORT_KEYS) <= set(r) for r in result["methods"].values())
    assert "excluded the potential's" in res.stderr


def test_study_unseen_and_transfer_on_demo(demo_cache, capsys, tmp_path):
    _demo_or_skip("molecule")
    common = ["--dataset", "molecule", "--max-structures", "40", "--methods", "split,knn",
              "--cache-dir", str(demo_cache), "-q"]
    assert main(["study", "unseen", *common, "--json", "-o", str(tmp_path)]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["study"] == "unseen"
    assert {r["split"] for r in obj["rows"]} == {"md_600K", "md_900K"}  # trained on md_300K only
    assert (tmp_path / "unseen.csv").exists() and (tmp_path / "unseen.json").exists()
    assert main(["study", "transfer", *common, "--budgets", "0.2"]) == 0
    out = capsys.readouterr().out
    for label in ("split, A", "knn, A", "split, B 20%", "knn, A + B 20% rescale", "split, B 100%"):
        assert label in out


def test_study_active_learning_passes_options_and_prints_curves(monkeypatch, capsys, tmp_path):
    import pandas as pd

    import core.studies

    seen = {}

    def fake(dataset, **kwargs):
        seen.update(dataset=dataset, **kwargs)
        table = pd.DataFrame({"study": ["active-learning"] * 2, "dataset": ["molecule"] * 2,
                              "strategy": ["calibrated", "random"], "round": [1, 1], "n_labels": [12, 12],
                              "force_mae": [0.52, 0.55], "coverage": [0.9, 0.88], "mean_width": [1.5, 1.6]})
        table.attrs.update(study="active-learning", dataset="molecule")
        return table, None

    monkeypatch.setattr(core.studies, "run_active_learning_study", fake)
    assert main(["study", "active-learning", "--dataset", "molecule", "--al-rounds", "2", "--al-picks", "3",
                 "--al-strategies", "calibrated,random", "--max-epochs", "15", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert seen["dataset"] == "molecule" and seen["n_rounds"] == 2 and seen["picks_per_round"] == 3
    assert seen["strategies"] == ["calibrated", "random"]
    assert seen["calibrator"] == "flexible" and seen["calibrator_options"] == {"max_epochs": 15}
    assert seen["workdir"] == tmp_path / "active-learning"
    rule = next(i for i, ln in enumerate(out) if ln.startswith("---"))
    assert out[rule - 1].split()[:4] == ["Strategy", "Round", "Labels", "(eV/Å)"] and "Force MAE" in out[rule - 2]
    assert out[rule + 1].split()[:4] == ["calibrated", "1", "12", "0.520"]
    assert (tmp_path / "active-learning.csv").exists()


# --------------------------------------------- outputs checked before the work
def test_output_equal_to_input_is_refused_before_featurizing(tiny_data, tmp_path, capsys):
    before = tiny_data.read_bytes()
    cache = tmp_path / "cache"
    assert main(["featurize", str(tiny_data), "--model", "any.model", "-o", str(tiny_data),
                 "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"flexcal featurize: error: --output: {tiny_data} is also an input; refusing to overwrite an input file"
    assert tiny_data.read_bytes() == before  # the dataset is untouched
    assert not cache.exists()  # nothing was featurized


def test_calibrate_output_equal_to_sites_is_refused(site_files, tmp_path, capsys):
    cal, _ = site_files
    before = Path(cal).read_bytes()
    assert main(["calibrate", str(cal), "--method", "split", "-o", str(cal)]) == 2
    assert "is also an input; refusing to overwrite an input file" in capsys.readouterr().err
    assert Path(cal).read_bytes() == before


def test_bad_output_path_fails_before_featurizing(tiny_data, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cache = tmp_path / "cache"
    assert main(["featurize", str(tiny_data), "--model", "any.model", "-o", str(blocker / "sites.npz"),
                 "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert "--output: cannot create the folder" in err and str(blocker) in err
    assert not cache.exists()
    assert main(["featurize", str(tiny_data), "--model", "any.model", "-o", str(tmp_path)]) == 2
    assert f"--output: {tmp_path} is a directory; give a file name" in capsys.readouterr().err


def test_no_overwrite_keeps_an_existing_output(site_files, tmp_path, capsys):
    cal, _ = site_files
    out = tmp_path / "c.npz"
    out.write_bytes(b"previous work")
    assert main(["calibrate", str(cal), "--method", "split", "-o", str(out), "--no-overwrite"]) == 2
    assert f"--output: {out} exists; remove it or choose another name" in capsys.readouterr().err
    assert out.read_bytes() == b"previous work"
    assert main(["calibrate", str(cal), "--method", "split", "-o", str(out), "-q"]) == 0  # default: replace
    assert out.read_bytes() != b"previous work"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".c.npz")]  # no temporary left


def test_run_checks_seed_split_values_device_and_outdir_before_featurizing(fake_featurize, tmp_path, capsys):
    base = ["run", str(fake_featurize), "--model", "m", "--methods", "split"]
    assert main([*base, "--seed", "-1"]) == 2
    assert "argument --seed: expected a seed: an integer >= 0, got '-1'" in capsys.readouterr().err
    assert main([*base, "--split-by", "config_type", "--calibration-types", "a", "--test-types", "zz"]) == 2
    assert "config_type: no structures with value(s) ['zz']; present: ['a', 'b']" in capsys.readouterr().err
    assert main([*base, "--split-by", "temperature", "--calibration-types", "a", "--test-types", "b"]) == 2
    assert "--split-by: frame 0 of" in capsys.readouterr().err
    assert main([*base, "--device", "tpu"]) == 2
    assert "--device: 'tpu' is not a device FlexCal can use" in capsys.readouterr().err
    outfile = tmp_path / "not_a_folder"
    outfile.write_text("x")
    assert main([*base, "-o", str(outfile)]) == 2
    assert f"--output: {outfile} is a file; give a folder for the results" in capsys.readouterr().err
    assert main([*base, "-o", str(fake_featurize.parent), "--no-overwrite"]) == 0  # a fresh folder is fine
    capsys.readouterr()
    assert main([*base, "-o", str(fake_featurize.parent), "--no-overwrite"]) == 2  # now report.json exists
    assert "exists; remove it or choose another name" in capsys.readouterr().err
    assert FEATURIZED == [str(fake_featurize)]  # only the one successful run featurized


# ------------------------------------------------------ evaluate's width_ratio
def test_evaluate_width_ratio_uses_split_cp_fitted_on_the_calibration_sites(site_files, tmp_path, capsys):
    from core.calibration import make_calibrator
    from core.evaluation import evaluate

    cal_path, test_path = site_files
    out = tmp_path / "knn.npz"
    assert main(["calibrate", str(cal_path), "--method", "knn", "-o", str(out), "-q"]) == 0
    assert main(["evaluate", str(test_path), "--calibrator", str(out), "--calibration", str(cal_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    cal, test = SiteTable.load(cal_path), SiteTable.load(test_path)
    engine = evaluate(cal, {"test": test}, ["knn"], confidence=0.9, seed=0).report("knn")
    assert report["width_ratio"] == pytest.approx(engine["width_ratio"], rel=1e-9)
    assert report["coverage"] == pytest.approx(engine["coverage"])
    assert (report["coverage_expected_lo"], report["coverage_expected_hi"]) == pytest.approx(
        (engine["coverage_expected_lo"], engine["coverage_expected_hi"]))
    # the old definition (split CP fitted on the test sites themselves) gives another number
    widths = make_calibrator("knn", confidence=0.9).fit(cal).predict(test)
    on_test = make_calibrator("split", confidence=0.9).fit(test).predict(test)
    assert abs(report["width_ratio"] - widths.mean() / on_test.mean()) > 1e-3
    # without --calibration: no width_ratio, no expected range, and a note says why
    assert main(["evaluate", str(test_path), "--calibrator", str(out), "--json"]) == 0
    bare = json.loads(capsys.readouterr().out)
    assert bare["width_ratio"] is None and bare["coverage_expected_lo"] is None
    assert bare["coverage"] == pytest.approx(report["coverage"])
    assert any("need --calibration" in n for n in bare["notes"])
    assert main(["evaluate", str(test_path), "--calibrator", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(expected range unavailable)" in text and "note: width_ratio" in text


# ----------------------------------------------- WARNING lines on coverage
def test_warning_when_coverage_is_outside_the_expected_spread(site_files, tmp_path, capsys):
    cal_path, _ = site_files
    hot = make_sites(n_structures=40, atoms=8, seed=5, scale=3.0).save(tmp_path / "hot.npz")  # 3x the errors
    out = tmp_path / "split.npz"
    assert main(["calibrate", str(cal_path), "--method", "split", "-o", str(out), "-q"]) == 0
    assert main(["evaluate", str(hot), "--calibrator", str(out), "--calibration", str(cal_path)]) == 0
    captured = capsys.readouterr()
    lines = [ln for ln in captured.out.splitlines() if ln.startswith("WARNING:")]
    assert len(lines) >= 1
    assert lines[0].startswith("WARNING: split: coverage 0.") and "is below the range expected for 30 calibration " \
        "structures" in lines[0]
    cov_line = next(ln for ln in captured.out.splitlines() if ln.startswith("Coverage "))
    assert "(expected 0." in cov_line
    assert main(["evaluate", str(hot), "--calibrator", str(out), "--calibration", str(cal_path), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["coverage_outside_expected"] is True and report["coverage"] < report["coverage_expected_lo"]
    assert any(w.startswith("split: coverage") for w in report["warnings"])
    assert "WARNING: split: coverage" in captured.err  # with --json the warning goes to stderr


def test_run_warns_about_tiny_test_sets(fake_featurize, capsys):
    assert main(["run", str(fake_featurize), "--model", "m", "--methods", "split", "--test-fraction", "0.1",
                 "-q", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["split"]["test"]["n_structures"] == 4
    assert "test: coverage from 24 sites of 4 structures is not informative" in captured.err
    assert any("is not informative" in w for w in result["warnings"])


# ------------------------------------------------- unlabelled / degenerate labels
def test_unlabelled_site_table_is_refused_by_calibrate_and_evaluate(site_files, tmp_path, capsys):
    cal_path, test_path = site_files
    t = SiteTable.load(test_path)
    unlabelled = SiteTable.from_arrays(descriptors=t.descriptors, errors=None, species=t.species,
                                       structure_ids=t.structure_ids).save(tmp_path / "unlabelled.npz")
    assert main(["calibrate", str(unlabelled), "--method", "split", "-o", str(tmp_path / "c.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"flexcal calibrate: error: SITES {unlabelled}: these sites carry no reference labels")
    assert not (tmp_path / "c.npz").exists()
    out = tmp_path / "split.npz"
    assert main(["calibrate", str(cal_path), "--method", "split", "-o", str(out), "-q"]) == 0
    assert main(["evaluate", str(unlabelled), "--calibrator", str(out)]) == 2
    assert f"flexcal evaluate: error: SITES {unlabelled}: these sites carry no reference labels" in capsys.readouterr().err
    assert main(["evaluate", str(test_path), "--calibrator", str(out), "--calibration", str(unlabelled)]) == 2
    assert f"--calibration {unlabelled}: these sites carry no reference labels" in capsys.readouterr().err
    zeros = SiteTable.from_arrays(descriptors=t.descriptors, errors=np.zeros(len(t)), species=t.species,
                                  structure_ids=t.structure_ids).save(tmp_path / "zeros.npz")
    assert main(["calibrate", str(zeros), "--method", "split", "-o", str(tmp_path / "z.npz")]) == 2
    assert f"SITES {zeros}: every one of its {len(t)} force errors is 0" in capsys.readouterr().err


# ------------------------------------------- the registry feeds help and validation
class _ToyScaled:
    """A toy calibrator: one conformal factor on |x_0| + 1 (enough to be scored)."""

    name = "toy-scaled"

    def __init__(self, confidence=0.9, seed=0):
        self.confidence = confidence

    def fit(self, sites, **kwargs):
        from core.calibration import conformal_quantile

        self.factor_ = conformal_quantile(sites.errors / (np.abs(sites.descriptors[:, 0]) + 1.0), self.confidence)
        return self

    def predict(self, sites):
        return self.factor_ * (np.abs(sites.descriptors[:, 0]) + 1.0)

    def predict_levels(self, sites, levels):
        raise NotImplementedError


def test_registered_method_appears_in_help_and_validation(fake_featurize, capsys):
    from core.calibration.registry import MethodSpec, register_method, unregister_method

    register_method(MethodSpec("toy-scaled", "toy (scaled)", "#123456", "toy: one factor times |x_0| + 1",
                               lambda confidence, seed, **o: _ToyScaled(confidence, seed), default=False))
    try:
        assert main(["run", "--help"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "toy-scaled = toy: one factor times |x_0| + 1" in out
        assert main(["calibrate", "--help"]) == 0
        assert "toy-scaled" in capsys.readouterr().out
        assert main(["run", str(fake_featurize), "--model", "m", "--methods", "toy-scaled,split", "--json", "-q"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert list(result["methods"]) == ["toy-scaled", "split"]
        assert abs(result["methods"]["toy-scaled"]["coverage"] - 0.9) < 0.1
        assert result["methods"]["toy-scaled"]["width_ratio"] > 0
    finally:
        unregister_method("toy-scaled")
    assert main(["run", str(fake_featurize), "--model", "m", "--methods", "toy-scaled"]) == 2
    assert "unknown method 'toy-scaled'" in capsys.readouterr().err


def test_default_methods_put_the_recommended_one_first():
    from core.calibration.registry import default_method_names, method_spec
    from core.cli.commands import default_methods

    names = default_methods()
    assert sorted(names) == sorted(default_method_names())
    recommended = [n for n in names if method_spec(n).recommended]
    assert names[:len(recommended)] == recommended


# ------------------------------------------------------------- -q and notices
def test_quiet_featurize_prints_nothing_on_stderr(tiny_data, tiny_mace_model, tmp_path):
    """-q silences progress and the e3nn/cuequivariance notices of a real model load."""
    res = flexcal("featurize", str(tiny_data), "--model", str(tiny_mace_model), "-o", str(tmp_path / "s.npz"), "-q")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stderr == "" and res.stdout == ""
    assert len(SiteTable.load(tmp_path / "s.npz")) == 160


def test_ctrl_c_exits_130(monkeypatch, site_files, tmp_path, capsys):
    import core.cli.commands

    def interrupted(args, ui):
        raise KeyboardInterrupt

    monkeypatch.setattr(core.cli.commands, "cmd_calibrate", interrupted)
    cal, _ = site_files
    assert main(["calibrate", str(cal), "--method", "split", "-o", str(tmp_path / "c.npz")]) == 130
    assert capsys.readouterr().err.strip() == "flexcal: interrupted"


def test_run_prints_its_results_even_when_writing_them_fails(fake_featurize, monkeypatch, tmp_path, capsys):
    import errno

    import core.io

    def full_disk(path, text, encoding="utf-8"):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(core.io, "atomic_write_text", full_disk)
    outdir = tmp_path / "out"
    assert main(["run", str(fake_featurize), "--model", "m", "--methods", "split", "--json", "-q",
                 "-o", str(outdir)]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["methods"]["split"]["coverage"] > 0.5  # the finished work is not lost
    assert f"--output: could not write the report into {outdir} (No space left on device)" in captured.err
    assert not [p for p in outdir.iterdir() if p.name.startswith(".")]  # no half-written temporary files
