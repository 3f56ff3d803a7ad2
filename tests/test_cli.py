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


def make_sites(n_structures=60, atoms=8, seed=0) -> SiteTable:
    """Heteroscedastic synthetic sites: e_i = σ(X_i) ‖z_i‖, σ grows with X_i0."""
    rng = np.random.default_rng(seed)
    n = n_structures * atoms
    X = rng.normal(size=(n, 3))
    species = rng.choice([1, 6], size=n)
    sigma = 0.05 * np.exp(0.7 * X[:, 0])
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
    assert last.startswith(f"flexcal featurize: error: {bad}: frame 0 could not be parsed as extxyz")
    assert "Frame has 2 atoms, expected 3" in last
    quiet = flexcal("featurize", str(bad), "--model", "m.model", "-o", str(tmp_path / "s.npz"), "-q")
    assert quiet.returncode == 2 and len(quiet.stderr.strip().splitlines()) == 1


def test_unknown_method_lists_valid_ones(site_files, tmp_path, capsys):
    cal, _ = site_files
    assert main(["calibrate", str(cal), "--method", "bogus", "-o", str(tmp_path / "c.npz")]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'bogus'; valid methods: flexible, split, knn, gmm, force, committee, mondrian" in err
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
    assert text.splitlines()[0].split()[0] == "calibrator" and "coverage" in text


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
@pytest.fixture
def fake_featurize(monkeypatch, tmp_path):
    """Replace featurization by synthetic sites: tests run's split/fit/report logic alone."""
    import core.studies

    data = tmp_path / "data.xyz"
    data.write_text("placeholder\n")

    def fake(path, model=None, **kwargs):
        return make_sites(n_structures=40, atoms=6, seed=1)

    monkeypatch.setattr(core.studies, "featurize_file", fake)
    return data


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
    assert out[1].split()[:3] == ["method", "coverage", "gap"]
    assert out[3].split()[0] == "split" and out[4].split()[0] == "mondrian"
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
    assert "excluded the demo model's" in res.stderr


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
    assert out[1].split()[:4] == ["strategy", "round", "n_labels", "force"]
    assert out[3].split()[:4] == ["calibrated", "1", "12", "0.520"]
    assert (tmp_path / "active-learning.csv").exists()
