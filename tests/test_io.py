"""Safe output files (core.io) and shared argument checks (core.validation)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.io import atomic_path, atomic_write_text, check_output
from core.validation import check_choice, check_confidence, check_float, check_fraction, check_int, check_levels


def test_check_output_refuses_inputs_dirs_and_existing(tmp_path):
    data = tmp_path / "data.xyz"
    data.write_text("x")
    with pytest.raises(ValueError, match="is also an input; refusing to overwrite an input file"):
        check_output(data, inputs=[data], what="-o")
    with pytest.raises(ValueError, match="is a directory"):
        check_output(tmp_path, what="-o")
    with pytest.raises(ValueError, match="exists; remove it"):
        check_output(data, overwrite=False)
    out = check_output(tmp_path / "new" / "sub" / "out.npz")
    assert out.parent.is_dir()


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temporary left behind
    atomic_write_text(path, "new")
    assert path.read_text() == "new"


def test_validators_name_the_argument_and_value():
    assert check_int("n", 3, 1) == 3
    for bad in (0, 2.0, True, "3"):
        with pytest.raises(ValueError, match=r"n: expected an integer >= 1, got"):
            check_int("n", bad, 1)
    assert check_confidence(0.9) == 0.9
    with pytest.raises(ValueError, match=r"confidence: expected a number in \(0, 1\), e.g. 0.9, got 1"):
        check_confidence(1)
    assert check_fraction("f", 0.25) == 0.25
    with pytest.raises(ValueError, match=r"f: expected a number in \(0, 1\), got 1.0"):
        check_fraction("f", 1.0)
    assert check_fraction("f", 0, allow_zero=True) == 0.0
    assert check_float("lr", math.inf, 0, math.inf) == math.inf
    with pytest.raises(ValueError, match="lr: expected a number"):
        check_float("lr", float("nan"))
    assert check_levels([0.5, 0.9]).tolist() == [0.5, 0.9]
    with pytest.raises(ValueError, match="levels: every level must lie in"):
        check_levels([0.5, 1.0])
    assert check_choice("mode", "file", ("file", "random")) == "file"
    with pytest.raises(ValueError, match="mode: expected one of file, random, got 'x'"):
        check_choice("mode", "x", ("file", "random"))
    assert np.isfinite(check_float("x", 1))
