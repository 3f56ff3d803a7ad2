"""Coverage on annotated frames comes with its expected spread (issue 15's principle, on the Apply path)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.apply import annotate_sites
from core.calibration import make_calibrator
from core.metrics.spread import expected_coverage_interval
from tests.test_apply import _Domain, _flexcal, _sites, predict_files, tiny_setup  # noqa: F401  (fixtures)


def test_summary_gives_the_expected_spread_for_the_calibration_size():
    cal_sites = _sites(n_structures=30, seed=3)
    cal = make_calibrator("split", confidence=0.9).fit(cal_sites)
    assert cal.n_calibration_structures_ == 30
    ann = annotate_sites(_sites(n_structures=40, seed=4), cal)
    s = ann.summary()
    lo, hi = expected_coverage_interval(30, 0.9, n_test=40)
    assert (s["coverage_expected_lo"], s["coverage_expected_hi"]) == pytest.approx((lo, hi))
    assert s["n_calibration_structures"] == 30 and 0.0 < lo < 0.9 < hi <= 1.0
    assert s["coverage_outside_expected"] == (not lo <= s["coverage"] <= hi)
    assert "coverage_in_domain" not in s  # no domain score: no in/out split
    json.dumps(s)


def test_halved_widths_fall_below_the_spread_and_domain_split_is_reported():
    cal = make_calibrator("split", confidence=0.9).fit(_sites(n_structures=30, seed=3))
    cal.quantile_ = cal.quantile_ * 0.3  # far too narrow: coverage must fall below the expected range
    sites = _sites(n_structures=40, seed=5)
    ann = annotate_sites(sites, cal, domain=_Domain(1.5))
    s = ann.summary()
    assert s["coverage"] < s["coverage_expected_lo"] and s["coverage_outside_expected"] is True
    covered = sites.errors <= ann.widths
    ood = sites.descriptors[:, 0] > 1.5
    assert s["coverage_in_domain"] == pytest.approx(np.mean(covered[~ood]))
    assert s["coverage_out_of_domain"] == pytest.approx(np.mean(covered[ood]))


def test_unlabelled_frames_have_no_spread():
    cal = make_calibrator("split").fit(_sites(seed=3))
    s = annotate_sites(_sites(seed=7, labelled=False), cal).summary()
    assert "coverage_expected_lo" not in s and "coverage" not in s


def test_cli_predict_prints_the_expected_range(predict_files, tmp_path, capsys):
    data, model, cal_path = predict_files
    rc, stdout, err = _flexcal(["predict", data, "--model", model, "--calibrator", cal_path,
                                "-o", tmp_path / "a.xyz", "-q"], capsys)
    assert rc == 0, err
    line = next(x for x in stdout.splitlines() if x.startswith("coverage"))
    assert "expected " in line and "target 0.9" in line
    rc, stdout, err = _flexcal(["predict", data, "--model", model, "--calibrator", cal_path,
                                "-o", tmp_path / "b.xyz", "--json", "-q"], capsys)
    s = json.loads(stdout)
    assert s["coverage_expected_lo"] is not None and s["coverage_expected_lo"] <= s["coverage_expected_hi"]
