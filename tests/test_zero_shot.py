"""Study 5, zero-shot foundation model: ``run_zero_shot``, its summary, ``flexcal study zero-shot``,
and CHGNet listed as a foundation model available offline wherever a model is chosen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.cli import main
from core.sites import SiteTable
from core.studies import run_zero_shot, zero_shot_summary

ROOT = Path(__file__).resolve().parent.parent
FAST = ("split", "knn", "flexible")
FAST_OPTIONS = {"flexible": {"max_epochs": 8}}


def toy_sites(n_structures: int, shift: float = 0.0, seed: int = 0, model: str = "toy", atoms: int = 6) -> SiteTable:
    """Sites with forces: errors grow with descriptor 0 (shifted by ``shift``)."""
    rng = np.random.default_rng(seed)
    sid = np.repeat(np.arange(n_structures), atoms)
    x = rng.normal(size=(sid.size, 4)) + shift
    sigma = 0.05 * np.exp(0.6 * x[:, 0])
    f_ref = rng.normal(size=(sid.size, 3))
    f_pred = f_ref + sigma[:, None] * rng.normal(size=(sid.size, 3))
    return SiteTable.from_arrays(descriptors=x, errors=None, species=np.where(np.arange(sid.size) % 3, 1, 8),
                                 structure_ids=sid, forces_pred=f_pred, forces_ref=f_ref, meta={"model": model})


@pytest.fixture(scope="module")
def table():
    datasets = {"a": (toy_sites(40), {"hot": toy_sites(20, 0.8, seed=1)}), "b": (toy_sites(30, seed=2), {})}
    return run_zero_shot(datasets, FAST, seed=0, method_options=FAST_OPTIONS), datasets


def test_table_rows_columns_and_force_mae(table):
    tab, datasets = table
    # one row per dataset x method x split: a has in-domain + hot, b only in-domain
    assert len(tab) == 3 * 2 + 3 * 1
    assert list(tab[["dataset", "split"]].drop_duplicates().itertuples(index=False, name=None)) == [
        ("a", "in-domain"), ("a", "hot"), ("b", "in-domain")]
    assert {"model", "force_mae", "mean_error", "coverage", "spearman", "width_ratio", "ood_fraction"} <= set(tab)
    assert (tab["study"] == "zero-shot").all() and (tab["model"] == "toy").all()
    hot = datasets["a"][1]["hot"]
    row = tab[(tab["dataset"] == "a") & (tab["split"] == "hot")].iloc[0]
    assert row["force_mae"] == pytest.approx(np.mean(np.abs(hot.forces_pred - hot.forces_ref)))
    assert row["mean_error"] == pytest.approx(hot.errors.mean())
    assert row["n_structures"] == 20
    # in-domain: half of the calibration distribution's 40 structures; of the other 20, 30 % (6) are
    # the knn/gmm reference and 14 calibrate
    ind = tab[(tab["dataset"] == "a") & (tab["split"] == "in-domain")].iloc[0]
    assert ind["n_structures"] == 20 and ind["n_cal_structures"] == 14 and ind["n_ref_structures"] == 6
    assert tab.attrs["datasets"] == ["a", "b"] and tab.attrs["study"] == "zero-shot"
    split = tab[tab["label"] == "split"]
    assert split["width_ratio"].eq(1.0).all() and split["spearman"].isna().all()
    assert tab["coverage"].between(0.5, 1.0).all()


def test_split_seed_changes_the_in_domain_split_only(table):
    tab, datasets = table
    other = run_zero_shot({"a": datasets["a"]}, ["split"], seed=0, split_seed=3)
    same = run_zero_shot({"a": datasets["a"]}, ["split"], seed=0)
    base = tab[(tab["dataset"] == "a") & (tab["label"] == "split")].reset_index(drop=True)
    assert same["coverage"].tolist() == base["coverage"].tolist()
    assert other.attrs["split_seed"] == 3
    assert other.loc[other["split"] == "in-domain", "force_mae"].iloc[0] != pytest.approx(
        base.loc[base["split"] == "in-domain", "force_mae"].iloc[0])


def test_summary_puts_rho_side_by_side_and_averages_seeds():
    rows = []
    for seed, (rk, rf) in enumerate([(0.2, 0.5), (0.4, 0.7)]):
        for label, rho, cov in (("split", np.nan, 0.9), ("knn", rk, 0.88), ("gmm", 0.1, 0.95), ("flexible", rf, 0.91)):
            rows.append({"dataset": "d", "split": "in-domain", "label": label, "spearman": rho, "coverage": cov,
                         "width_ratio": 1.0, "force_mae": 0.2, "seed": seed})
    s = zero_shot_summary(pd.DataFrame(rows))
    assert len(s) == 1
    r = s.iloc[0]
    assert r["best_heuristic"] == "knn" and r["rho_heuristic"] == pytest.approx(0.3)
    assert r["rho_flexible"] == pytest.approx(0.6) and r["coverage_split"] == pytest.approx(0.9)
    assert r["coverage_flexible"] == pytest.approx(0.91) and "rho_flexible_ood" not in s


@pytest.mark.parametrize("datasets, error, match", [
    ({}, ValueError, "with at least one dataset, got an empty mapping"),
    ([1], TypeError, "datasets: expected a mapping.*got list"),
    ({"x": toy_sites(6)}, TypeError, r"datasets\['x'\]: expected \(SiteTable"),
    ({"x": (toy_sites(6), {"in-domain": toy_sites(4)})}, ValueError, "not named 'in-domain'"),
    ({"x": (toy_sites(6), {"t": toy_sites(4, model="other")})}, ValueError, "featurized with another potential"),
])
def test_bad_datasets_are_refused_with_the_argument_named(datasets, error, match):
    with pytest.raises(error, match=match):
        run_zero_shot(datasets, ["split"])


def test_reference_part_is_optional_or_given_per_dataset():
    sites = toy_sites(20)
    own = run_zero_shot({"x": (sites, {})}, ["split"], reference_fraction=None)
    assert own["n_cal_structures"].iloc[0] == 10 and own["n_ref_structures"].iloc[0] == 0
    given = run_zero_shot({"x": (sites, {})}, ["knn"], references={"x": toy_sites(7, seed=9)})
    assert given["n_cal_structures"].iloc[0] == 10 and given["n_ref_structures"].iloc[0] == 7


def test_reference_goes_per_dataset():
    with pytest.raises(TypeError, match="references="):
        run_zero_shot({"x": (toy_sites(6), {})}, ["split"], reference=toy_sites(4))
    with pytest.raises(ValueError, match=r"references: \['y'\] are not datasets"):
        run_zero_shot({"x": (toy_sites(6), {})}, ["split"], references={"y": toy_sites(4)})
    with pytest.raises(ValueError, match="reference_fraction: expected a number in \\(0, 1\\), got 1.5"):
        run_zero_shot({"x": (toy_sites(6), {})}, ["split"], reference_fraction=1.5)
    with pytest.raises(ValueError, match=r"datasets\['x'\]: 2 structure\(s\); need at least 3"):
        run_zero_shot({"x": (toy_sites(2), {})}, ["split"])
    assert len(run_zero_shot({"x": (toy_sites(2), {})}, ["split"], reference_fraction=None)) == 1


# ------------------------------------------------------------------------------ CLI
def test_cli_zero_shot_on_a_demo_with_chgnet(capsys, tmp_path):
    pytest.importorskip("chgnet")
    code = main(["study", "zero-shot", "--dataset", "molecule", "--max-structures", "30", "--methods", "split,knn",
                 "--json", "-q", "-o", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads(out)
    assert {"study", "meta", "rows", "warnings", "summary"} <= set(doc)
    assert doc["study"] == "zero-shot" and doc["meta"]["datasets"] == ["molecule"]
    rows = pd.DataFrame(doc["rows"])
    assert set(rows["label"]) == {"split", "knn"} and (rows["model"] == "chgnet-0.3.0").all()
    assert rows["split"].iloc[0] == "in-domain" and set(rows["split"]) <= {"in-domain", "md_600K", "md_900K"}
    assert (rows["force_mae"] > 0.01).all() and (rows["force_mae"] < 2.0).all()
    assert doc["summary"][0]["best_heuristic"] == "knn"
    assert (tmp_path / "zero-shot.csv").is_file() and (tmp_path / "zero-shot.json").is_file()


def test_cli_zero_shot_refuses_elements_the_model_does_not_know(tmp_path, capsys):
    pytest.importorskip("chgnet")
    from ase import Atoms
    from ase.io import write

    frames = []
    for i in range(4):
        atoms = Atoms("AmO", positions=[[0, 0, 0], [0, 0, 1.8 + 0.05 * i]])
        atoms.arrays["REF_forces"] = np.zeros((2, 3))
        atoms.info["REF_energy"] = -1.0
        frames.append(atoms)
    path = tmp_path / "americium.xyz"
    write(path, frames, format="extxyz")
    code = main(["study", "zero-shot", "--dataset", str(path), "--model", "chgnet-0.3.0", "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--dataset americium" in err and "Am (Z=95" in err and "does not know" in err


def test_cli_zero_shot_unknown_dataset_lists_the_choices(capsys):
    assert main(["study", "zero-shot", "--dataset", "nonesuch", "-q"]) == 2
    err = capsys.readouterr().err
    assert "'nonesuch' is neither a file" in err and "3bpa" in err and "molecule" in err


# ------------------------------------------------------------------ model choices
def test_model_help_lists_chgnet_as_an_offline_foundation_model_without_importing_mace():
    pytest.importorskip("chgnet")
    code = ("import sys; from core.cli.parser import build_parser; p = build_parser(); "
            "sub = p._subparsers._group_actions[0].choices; "
            "print(sub['run'].format_help()); print('MACE_IMPORTED', 'mace' in sys.modules)")
    env = {**os.environ, "COLUMNS": "1000"}  # no line wrapping inside names
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env).stdout
    text = " ".join(out.split())
    assert "chgnet-0.3.0 (= chgnet), chgnet-0.2.0, chgnet-r2scan: CHGNet (foundation model, available offline)" in text
    assert "mace-mp-0b3-medium" in text and "MACE (foundation model" in text
    assert text.index("chgnet-0.3.0") < text.index("mace-mp-0b3-medium")
    assert "MACE_IMPORTED False" in text


def test_catalog_offers_chgnet_first_as_an_offline_foundation_model(monkeypatch):
    pytest.importorskip("chgnet")
    from app import catalog

    # MACE's offline check imports mace (seconds); its answer does not matter here
    monkeypatch.setattr("core.potentials.mace_foundation.foundation_model_cached", lambda name: False)

    names = catalog.named_models()
    assert names["chgnet-0.3.0"] == "CHGNet 0.3.0 — foundation model, available offline"
    order = list(names)
    assert order.index("chgnet-0.3.0") < order.index("mace-mp-0b3-medium")
    assert not any(n.startswith("demo") for n in names)


def test_model_page_offers_chgnet_as_an_offline_foundation_model(monkeypatch):
    pytest.importorskip("chgnet")
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from app import state
    from app.pages_index import page

    monkeypatch.setattr("core.potentials.mace_foundation.foundation_model_cached", lambda name: False)
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120).run()
    at.switch_page(page("model")).run()
    at.radio(key=state.W_MODEL_KIND).set_value(state.MODEL_KINDS[1]).run()
    assert not at.exception, [e.value for e in at.exception]
    box = at.selectbox(key=state.W_FOUNDATION)
    assert box.options[0] == "CHGNet 0.3.0 — foundation model, available offline"
    assert box.value == "chgnet-0.3.0"
    assert any(o.startswith("mace-mp-0b3-medium — foundation model") for o in box.options)
    assert any("CHGNet weights ship with its package (offline)" in c.value for c in at.caption)


class _Notes:
    def __init__(self):
        self.lines = []

    def info(self, text):
        self.lines.append(text)


def test_cli_default_datasets_are_the_public_sets_else_the_demos(tmp_path, monkeypatch):
    from core.cli.commands_zero_shot import PUBLIC_FRAMES, _plan
    from core.cli.parser import build_parser

    (tmp_path / "ethanol").mkdir()
    for name in ("train.xyz", "test_MD.xyz"):
        (tmp_path / "ethanol" / name).write_text("")
    monkeypatch.setenv("FLEXCAL_SHARED_DATA", str(tmp_path))
    args, notes = build_parser().parse_args(["study", "zero-shot"]), _Notes()
    plan = _plan(args, notes)
    assert list(plan) == ["ethanol"] and plan["ethanol"][0] == "public"
    assert plan["ethanol"][1] == (tmp_path / "ethanol" / "train.xyz", {"test_MD": tmp_path / "ethanol" / "test_MD.xyz"})
    assert args.max_structures == PUBLIC_FRAMES and any("200 random frames per file" in n for n in notes.lines)

    monkeypatch.setenv("FLEXCAL_SHARED_DATA", str(tmp_path / "nothing"))
    args = build_parser().parse_args(["study", "zero-shot", "--max-structures", "50"])
    plan = _plan(args, _Notes())
    assert {k: v[0] for k, v in plan.items()} == {"licl": "demo", "surface": "demo", "molecule": "demo"}
    assert args.max_structures == 50
