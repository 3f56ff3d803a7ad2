"""The app's reading limits (issue 12 item 4: bounded cost, limits settable from the app)."""

from __future__ import annotations

from app import state
from core.data_checks import DEFAULT_MAX_ATOMS, DEFAULT_MAX_EXTENT
from tests.test_app import _errors, _new_app, _upload


def test_defaults_are_the_readers_defaults():
    assert state.WIDGET_DEFAULTS[state.W_MAX_ATOMS] == DEFAULT_MAX_ATOMS
    assert state.WIDGET_DEFAULTS[state.W_MAX_EXTENT] == DEFAULT_MAX_EXTENT


def test_a_lower_atom_limit_refuses_the_upload_and_raising_it_reads_the_same_file():
    from core.synthetic_demo import synthetic_extxyz_bytes

    data = synthetic_extxyz_bytes(4)
    first_count = int(data.split(b"\n", 1)[0])
    at = _new_app().run()
    at.radio(key=state.W_DATA_SOURCE).set_value("Upload a file").run()
    at.number_input(key=state.W_MAX_ATOMS).set_value(first_count - 1).run()
    at = _upload(at, "cells.extxyz", data)
    errs = _errors(at)
    assert errs and "cells.extxyz" in errs[0] and str(first_count - 1) in errs[0], errs
    assert at.session_state[state.DATASET_LABEL] != "cells.extxyz"
    at.number_input(key=state.W_MAX_ATOMS).set_value(first_count).run()  # the same file is read again
    assert not _errors(at)
    assert at.session_state[state.DATASET_LABEL] == "cells.extxyz" and len(at.session_state[state.DATASET]) == 4


def test_a_molecule_beyond_the_extent_limit_names_the_frame():
    mol = (b'3\nProperties=species:S:1:pos:R:3:REF_forces:R:3 REF_energy=-1.0 pbc="F F F"\n'
           b"O 0 0 0 0 0 0\nH 0 0 0.96 0 0 0\nH 0 0 60.0 0 0 0\n")
    at = _new_app().run()
    at.radio(key=state.W_DATA_SOURCE).set_value("Upload a file").run()
    at.number_input(key=state.W_MAX_EXTENT).set_value(50.0).run()
    at = _upload(at, "far.extxyz", mol)
    errs = _errors(at)
    assert errs and "far.extxyz" in errs[0] and "50" in errs[0], errs
