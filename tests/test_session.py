"""Session files (``core/session.py``, ``app/session.py``, ``app/session_panel.py``).

Round trip (save -> load gives identical reports, metrics, widths and fitted calibrators, nothing
refitted), the file format (zip of JSON + npz, no pickle), tampered / damaged / oversized files
(clear errors naming the file and the field), dataset references (embedded small uploads, refused
mismatches), the trust gate of a model-file session, and the app itself: restore through the
sidebar uploader and through the autosaved "last session" offer, with the "results out of date"
badge after a restore. Runs on the synthetic demo (no model file) and the tiny MACE fixture.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from app import catalog, services, session, state, widgets  # noqa: E402
from app.pages_index import page  # noqa: E402
from core.session import SessionFileError, pack, unpack  # noqa: E402

from tests.test_app import MAIN, TIMEOUT, TRAIN_BUTTON  # noqa: E402

SAVED_KEYS = (state.RESULTS, state.SITES, state.SITES_KEY, state.DATASET_KEY, state.DATASET_LABEL,
              state.DATASET_ORIGIN, state.DATASET_RAW, state.POTENTIAL_LABEL, state.MODEL_REF,
              *session.SESSION_WIDGETS)


# ------------------------------------------------------------------------------ helpers
def _new_app() -> AppTest:
    return AppTest.from_file(MAIN, default_timeout=TIMEOUT)


def _ok(at) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def _values(at) -> dict:
    return {k: at.session_state[k] if k in at.session_state else None for k in SAVED_KEYS}


def _train(at, methods, *, max_epochs=40, bootstrap=0) -> AppTest:
    at.switch_page(page("model")).run()
    at.button(key="btn_featurize").click().run()
    _ok(at)
    assert at.session_state[state.SITES] is not None, [e.value for e in at.error]
    return _calibrate(at, methods, max_epochs=max_epochs, bootstrap=bootstrap)


def _calibrate(at, methods, *, max_epochs=40, bootstrap=0) -> AppTest:
    at.switch_page(page("calibrate")).run()
    at.multiselect(key=state.W_METHODS).set_value(list(methods))
    at.number_input(key=state.W_MAX_EPOCHS).set_value(max_epochs)
    at.number_input(key=state.W_BOOTSTRAP).set_value(bootstrap)
    at.button(key=TRAIN_BUTTON).click().run()
    job = at.session_state[state.JOB]
    assert job is not None and job.join(timeout=TIMEOUT) and job.status == "done", getattr(job, "error", None)
    return _ok(at.run())


def _synthetic_app() -> AppTest:
    at = _ok(_new_app().run())
    if at.session_state[state.DATASET_LABEL] != catalog.SYNTHETIC_LABEL:
        at.selectbox(key=state.W_DEMO_NAME).set_value(catalog.SYNTHETIC_LABEL).run()
    return _ok(at)


def _load(at, data: bytes, name: str = "my-session.zip") -> AppTest:
    """Load a session file through the sidebar uploader (its on_change callback restores it)."""
    at.file_uploader(key=state.W_SESSION_UPLOAD).set_value((name, data, "application/zip")).run()
    return _ok(at)


def _note(at) -> str:
    return " | ".join(m.value for m in (*at.sidebar.success, *at.sidebar.error, *at.sidebar.warning))


def _stale(at) -> list[str]:
    return [w.value for w in at.warning if widgets.OUT_OF_DATE in w.value]


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    return buf.getvalue()


def _edit_document(data: bytes, edit) -> bytes:
    """A copy of a session file whose session.json went through ``edit(doc)`` (member hashes untouched)."""
    members = _members(data)
    doc = json.loads(members["session.json"])
    edit(doc)
    members["session.json"] = json.dumps(doc).encode()
    return _zip(members)


def _replace_member(data: bytes, name: str, blob: bytes) -> bytes:
    """A copy with member ``name`` replaced and its manifest hash updated (a consistent but wrong file)."""
    members = _members(data)
    doc = json.loads(members["session.json"])
    doc["members"][name] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    members[name], members["session.json"] = blob, json.dumps(doc).encode()
    return _zip(members)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private cache folder (features and the autosaved last session) for this module."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("flexcal-cache")
    mp.setenv("FLEXCAL_CACHE_DIR", str(root))
    mp.setattr(services, "CACHE_DIR", root / "features")
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def trained(env):
    """The synthetic demo calibrated with q_θ, split CP and kNN CP (bootstrap intervals on)."""
    at = _train(_synthetic_app(), ("flexible", "split", "knn"), bootstrap=30)
    assert at.session_state[state.RESULTS] is not None
    return at


@pytest.fixture(scope="module")
def saved(trained) -> bytes:
    return session.session_bytes(_values(trained))


# ------------------------------------------------------------------------------ round trip
def test_round_trip_gives_identical_metrics_widths_and_calibrators(trained, saved):
    run = trained.session_state[state.RESULTS]
    snap = session.read_session(saved, source="s.zip")
    back = snap.run
    assert back.labels == run.labels == ["flexible", "split", "knn"]
    assert back.reports == run.reports  # every number as computed (NaN/inf kept), bootstrap CIs included
    assert back.reports["flexible"]["coverage_ci"] == run.reports["flexible"]["coverage_ci"]
    assert back.results_frame().equals(run.results_frame())
    assert back.table().equals(run.table())
    for label in run.labels:
        np.testing.assert_array_equal(back.widths[label], run.widths[label])
        np.testing.assert_array_equal(back.widths_levels[label], run.widths_levels[label])
        # the restored calibrators are fitted (their own no-pickle state), not refitted: same widths
        np.testing.assert_array_equal(back.calibrators[label].predict(back.test), run.widths[label])
    np.testing.assert_array_equal(back.ood, run.ood)
    np.testing.assert_array_equal(back.evaluation.reference_widths["test"], run.evaluation.reference_widths["test"])
    np.testing.assert_allclose(back.site_domain_scores(back.test), run.site_domain_scores(run.test))
    assert back.history == run.history and len(back.history) > 0
    assert back.settings == run.settings and back.provenance == run.provenance
    assert back.cal.n_structures == run.cal.n_structures and len(back.test) == len(run.test)
    np.testing.assert_array_equal(snap.sites.descriptors, trained.session_state[state.SITES].descriptors)
    assert snap.widgets[state.W_METHODS] == ["flexible", "split", "knn"]
    assert snap.widgets[state.W_MAX_EPOCHS] == 40
    assert snap.summary.startswith(f"dataset {catalog.SYNTHETIC_LABEL}, 3 methods, 20")


def test_session_file_is_json_and_npz_without_pickle(saved):
    members = _members(saved)
    assert set(members) == {"session.json", "evaluation.npz", "parts.npz", "sites.sites.npz"}  # demo: not embedded
    doc = json.loads(members["session.json"])
    assert doc["format"] == "flexcal.session" and doc["version"] == 1
    assert doc["dataset"]["origin"][0] == "synthetic" and doc["dataset"]["embedded"] is False
    assert doc["model"]["kind"] == "synthetic" and len(doc["model"]["sites_key"][1]) > 16
    assert {m["sha256"] for m in doc["members"].values()} == {hashlib.sha256(b).hexdigest()
                                                             for n, b in members.items() if n != "session.json"}
    for name in ("evaluation.npz", "parts.npz", "sites.sites.npz"):
        with np.load(io.BytesIO(members[name]), allow_pickle=False) as z:
            assert all(z[k].dtype != object for k in z.files)
    assert len(saved) < 3 * 1024**2  # 1520 sites with their descriptors: well under a few MB


def test_pack_unpack_keeps_arrays_files_and_nan():
    data = pack({"x": float("nan"), "y": [1, 2.5]}, arrays={"a": {"v": np.arange(3.0), "s": np.array(["Cu"])}},
                files={"blob": b"\x00\x01"})
    b = unpack(data, source="p.zip")
    assert np.isnan(b.document["x"]) and b.document["y"] == [1, 2.5]
    np.testing.assert_array_equal(b.arrays["a"]["v"], [0.0, 1.0, 2.0])
    assert b.arrays["a"]["s"].tolist() == ["Cu"] and b.files == {"blob": b"\x00\x01"}
    with pytest.raises(TypeError, match=r"arrays\['a'\]\['o'\]: dtype object"):
        pack({}, arrays={"a": {"o": np.array([{}], dtype=object)}})
    with pytest.raises(ValueError, match="member name"):
        pack({}, files={"../evil": b""})


# ------------------------------------------------------------------------------ untrusted files
def _object_npz() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("widths__0__0.npy", buf.getvalue())
    return out.getvalue()


TAMPERED = {
    "not a zip": (lambda d: b"hello, not a zip", "not a readable zip archive"),
    "truncated": (lambda d: d[: len(d) // 2], "s.zip: "),
    "no document": (lambda d: _zip({k: v for k, v in _members(d).items() if k != "session.json"}), "no session.json"),
    "bad json": (lambda d: _zip({**_members(d), "session.json": b"{not json"}), "session.json is not valid JSON"),
    "foreign format": (lambda d: _edit_document(d, lambda doc: doc.update(format="other")), "format is 'other'"),
    "newer version": (lambda d: _edit_document(d, lambda doc: doc.update(version=99)), "version 99 is newer"),
    "edited member": (lambda d: _zip({**_members(d), "parts.npz": _members(d)["parts.npz"][:-3] + b"xyz"}),
                      "member parts.npz was changed after the session was saved"),
    "extra member": (lambda d: _zip({**_members(d), "evil.py": b"import os"}), "unexpected: ['evil.py']"),
    "widget out of range": (lambda d: _edit_document(d, lambda doc: doc["widgets"].update(w_test_fraction=7.0)),
                            "widgets.w_test_fraction: expected a number in [0.1, 0.9], got 7.0"),
    "widget wrong choice": (lambda d: _edit_document(d, lambda doc: doc["widgets"].update(w_weights="evil")),
                            "widgets.w_weights: expected one of"),
    "wrong type": (lambda d: _edit_document(d, lambda doc: doc.update(dataset=3)), "dataset: expected an object"),
    "damaged calibrator": (lambda d: _edit_document(d, lambda doc: doc["run"]["evaluation"]["calibrators"][0]
                                                    .update(kind="evil")), "unknown calibrator kind 'evil'"),
    "report for unknown method": (lambda d: _edit_document(d, lambda doc: doc["run"]["evaluation"]["reports"]
                                                           .append(["ghost", "test", {}])), "unknown method/split"),
    "report with text for a number": (
        lambda d: _edit_document(d, lambda doc: doc["run"]["evaluation"]["reports"][0][2].update(coverage="high")),
        "report of 'flexible': 'coverage' has an unexpected value 'high'"),
    "bad history": (lambda d: _edit_document(d, lambda doc: doc["run"]["history"].append({"epoch": "x"})),
                    "run.history: expected a list of epochs"),
    "nested settings": (lambda d: _edit_document(d, lambda doc: doc["run"]["settings"].update(split={"a": 1})),
                        "run.settings: 'split' is not a number, text or list of them"),
    "calibrator weights of the wrong shape": (lambda d: _replace_member(d, "evaluation.npz", _reshaped(d)),
                                              "the saved calibration cannot be rebuilt"),
    "object array": (lambda d: _replace_member(d, "evaluation.npz", _object_npz()), "holds an object array"),
    "split does not match the sites": (
        lambda d: _replace_member(d, "parts.npz", _npz(calibration=np.array([0, 1]), test=np.array([2, 3]))),
        "calibration sites given are not the ones it was computed on"),
}


def _reshaped(data: bytes) -> bytes:
    """evaluation.npz with every array of the first calibrator (q_θ) cut to one element."""
    with np.load(io.BytesIO(_members(data)["evaluation.npz"]), allow_pickle=False) as z:
        arrays = {k: (z[k].ravel()[:1] if k.startswith("cal0__") else z[k]) for k in z.files}
    return _npz(**arrays)


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_session_files_give_clear_errors(saved, case):
    make, message = TAMPERED[case]
    with pytest.raises(SessionFileError) as info:
        session.read_session(make(saved), source="s.zip")
    text = str(info.value)
    assert text.startswith("s.zip: ") and message in text, text
    assert "allow_pickle" not in text and "Traceback" not in text


def test_size_limits_are_checked_before_anything_is_inflated(saved):
    with pytest.raises(SessionFileError, match=r"s.zip: the file is 0\.\d MB, over the 0\.0 MB limit"):
        session.read_session(saved, source="s.zip", max_bytes=1000)
    # a small file that expands a lot (a zip bomb) is refused by its declared sizes
    bomb = pack({}, arrays={"a": {"z": np.zeros(4_000_000)}})
    assert len(bomb) < 200_000
    with pytest.raises(SessionFileError, match="expands to 30.5 MB, over what is left of the limit"):
        unpack(bomb, source="bomb.zip", max_bytes=1_000_000)


def test_demo_dataset_that_changed_is_refused(saved):
    snap = session.read_session(saved)
    with pytest.raises(SessionFileError, match="differs from the one this session was calibrated on"):
        session.resolve_dataset(snap, current_key=None, current_dataset=None,
                                load_demo=lambda kind, name: (object(), "synthetic:another-hash"),
                                read_upload=None)
    same = object()
    assert session.resolve_dataset(snap, current_key=snap.document["dataset"]["key"], current_dataset=same,
                                   load_demo=None, read_upload=None) is same


# ------------------------------------------------------------------------------ in the app
def test_restore_in_a_fresh_app_shows_identical_metrics(trained, saved):
    run = trained.session_state[state.RESULTS]
    at = _load(_new_app().run(), saved)
    assert "Restored the session (dataset Synthetic" in _note(at), _note(at)
    back = at.session_state[state.RESULTS]
    assert back is not None and back.reports == run.reports
    assert at.session_state[state.W_TRUST] is False and at.session_state[state.W_TRUST_PATH] is False
    _ok(at.switch_page(page("calibrate")).run())
    assert at.dataframe[0].value.equals(trained.switch_page(page("calibrate")).run().dataframe[0].value)
    assert not _stale(at), "a restored session with its own widgets is up to date"
    for name in ("diagnose", "structures", "export"):
        _ok(at.switch_page(page(name)).run())
        assert not _stale(at), name
    # the q_θ settings and split came back too
    assert at.session_state[state.W_METHODS] == ["flexible", "split", "knn"]
    assert at.session_state[state.W_MAX_EPOCHS] == 40
    # the out-of-date badge still fires after a restore when a widget changes
    at.switch_page(page("data")).run()
    at.number_input(key=state.W_SPLIT_SEED).set_value(5).run()
    _ok(at.switch_page(page("diagnose")).run())
    assert len(_stale(at)) == 1 and "split seed: 0 → 5" in _stale(at)[0], _stale(at)
    assert any(widgets.OUT_OF_DATE in m.value for m in at.sidebar.markdown)


def test_autosave_and_the_restore_last_session_offer(trained, env):
    path = env / "sessions" / "last.zip"
    assert path.is_file(), "a calibration is autosaved"
    assert session.read_session(path.read_bytes()).run.labels == ["flexible", "split", "knn"]
    at = _ok(_new_app().run())  # a reload: a fresh session
    offer = [b for b in at.sidebar.button if b.key == "btn_restore_last"]
    assert offer and offer[0].label.startswith(f"Restore the last session (dataset {catalog.SYNTHETIC_LABEL}, "
                                               "3 methods, 20"), [b.label for b in at.sidebar.button]
    offer[0].click().run()
    _ok(at)
    back = at.session_state[state.RESULTS]
    assert back is not None and back.reports == trained.session_state[state.RESULTS].reports
    assert not [b for b in at.sidebar.button if b.key == "btn_restore_last"], "no offer once results exist"


def test_a_session_saved_out_of_date_restores_out_of_date(env):
    at = _train(_synthetic_app(), ("split",))
    at.switch_page(page("data")).run()
    at.number_input(key=state.W_SPLIT_SEED).set_value(4).run()
    data = session.session_bytes(_values(at))
    fresh = _load(_new_app().run(), data)
    _ok(fresh.switch_page(page("calibrate")).run())
    assert len(_stale(fresh)) == 1 and "split seed: 0 → 4" in _stale(fresh)[0], _stale(fresh)


def test_bad_session_upload_keeps_the_current_state(trained, saved):
    at = _ok(_new_app().run())
    before = at.session_state[state.DATASET_KEY]
    _load(at, saved[:100], "broken.zip")
    assert "Session not restored — broken.zip: not a FlexCal session file" in _note(at), _note(at)
    assert at.session_state[state.RESULTS] is None and at.session_state[state.DATASET_KEY] == before


# ------------------------------------------------------------------------------ uploads and models
def _tiny_upload(at, tiny_structures) -> tuple[AppTest, bytes]:
    from ase.io import write

    buf = io.StringIO()
    write(buf, tiny_structures, format="extxyz")
    data = buf.getvalue().encode()
    at.radio(key=state.W_DATA_SOURCE).set_value("Upload a file").run()
    at.file_uploader(key=state.W_DATA_UPLOAD).set_value(("tiny.extxyz", data, "text/plain")).run()
    assert at.session_state[state.DATASET_LABEL] == "tiny.extxyz"
    return _ok(at), data


def test_uploaded_model_session_never_loads_the_model_without_trust(env, tiny_mace_model, tiny_structures,
                                                                    monkeypatch):
    at, _data = _tiny_upload(_ok(_new_app().run()), tiny_structures)
    at.switch_page(page("model")).run()
    at.radio(key=state.W_MODEL_KIND).set_value(state.MODEL_KINDS[3]).run()
    model_bytes = tiny_mace_model.read_bytes()
    at.file_uploader(key=state.W_MODEL_UPLOAD).set_value(("tiny.model", model_bytes, "application/octet-stream"))
    at.checkbox(key=state.W_TRUST).check().run()
    at = _calibrate(_ok(at.button(key="btn_featurize").click().run()), ("split",))
    run = at.session_state[state.RESULTS]
    saved = session.session_bytes(_values(at))
    doc = json.loads(_members(saved)["session.json"])
    assert doc["model"]["kind"] == "upload" and doc["model"]["file"] == "tiny.model"
    assert doc["model"]["sha256"] == hashlib.sha256(model_bytes).hexdigest()
    assert "dataset" in _members(saved) and doc["dataset"]["embedded"] is True  # a small upload travels along
    assert not any(model_bytes[:64] in b for b in _members(saved).values()), "model files are never stored"

    import core.potentials

    calls = []
    monkeypatch.setattr(core.potentials, "load_potential", lambda *a, **k: calls.append(a) or 1 / 0)
    fresh = _load(_new_app().run(), saved)
    assert calls == [], "a restore never loads a model"
    back = fresh.session_state[state.RESULTS]
    assert back.reports == run.reports
    assert fresh.session_state[state.DATASET_LABEL] == "tiny.extxyz"
    assert len(fresh.session_state[state.DATASET]) == len(tiny_structures)
    assert fresh.session_state[state.W_MODEL_KIND] == state.MODEL_KINDS[3]
    assert fresh.session_state[state.W_TRUST] is False
    assert "Upload it again and tick “I trust this file”" in _note(fresh), _note(fresh)
    # featurizing again goes through the gate: the uploaded model is not opened until trusted
    fresh.switch_page(page("model")).run()
    fresh.file_uploader(key=state.W_MODEL_UPLOAD).set_value(("tiny.model", model_bytes, "application/octet-stream"))
    fresh.run()
    assert fresh.button(key="btn_featurize").disabled and calls == []
    assert fresh.session_state[state.RESULTS] is not None, "the restored results stay until features change"


def test_local_model_path_session_unticks_trust_and_notes_a_changed_file(env, tiny_mace_model, tiny_structures,
                                                                         tmp_path):
    at, _ = _tiny_upload(_ok(_new_app().run()), tiny_structures)
    model = tmp_path / "copy.model"
    model.write_bytes(tiny_mace_model.read_bytes())
    at = _tiny_path_session(at, model)
    saved = session.session_bytes(_values(at))
    # restored into the same app, where the trust box is ticked: the restore unticks it
    at.switch_page(page("model")).run()
    at.checkbox(key=state.W_TRUST_PATH).check().run()
    assert at.session_state[state.W_TRUST_PATH] is True
    _load(at, saved)
    assert at.session_state[state.W_TRUST_PATH] is False and at.session_state[state.W_MODEL_PATH] == str(model)
    assert "not loaded. Featurizing again asks you to trust the file first" in _note(at), _note(at)
    at.switch_page(page("model")).run()
    at.button(key="btn_featurize").click().run()
    assert any("not loaded" in e.value for e in at.error), [e.value for e in at.error]
    model.write_bytes(model.read_bytes() + b"\x00")
    snap = session.read_session(saved)
    assert "changed since this session was saved" in snap.model_notes[0]


def _tiny_path_session(at, model_path) -> AppTest:
    at.switch_page(page("model")).run()
    at.radio(key=state.W_MODEL_KIND).set_value(state.MODEL_KINDS[2]).run()
    at.text_input(key=state.W_MODEL_PATH).input(str(model_path)).run()
    at.checkbox(key=state.W_TRUST_PATH).check().run()
    return _calibrate(_ok(at.button(key="btn_featurize").click().run()), ("split",))


def test_large_upload_is_referred_to_by_hash_and_a_mismatch_refused(env, tiny_mace_model, tiny_structures,
                                                                    monkeypatch):
    from tests.conftest import make_tiny_structures

    monkeypatch.setenv("FLEXCAL_SESSION_EMBED_MB", "0.001")  # 1 kB: the tiny dataset counts as large
    at, data = _tiny_upload(_ok(_new_app().run()), tiny_structures)
    assert at.session_state[state.DATASET_RAW] is None
    at = _tiny_path_session(at, tiny_mace_model)
    saved = session.session_bytes(_values(at))
    assert "dataset" not in _members(saved)
    assert json.loads(_members(saved)["session.json"])["dataset"]["embedded"] is False
    # a fresh app on another dataset: refused, saying what to do
    fresh = _load(_tiny_upload(_ok(_new_app().run()), make_tiny_structures(1))[0], saved)
    assert fresh.session_state[state.RESULTS] is None
    assert ("the dataset tiny.extxyz is not inside this session file (larger than the 0 MB embedding limit)"
            in _note(fresh) and "Upload tiny.extxyz on the Data page" in _note(fresh)), _note(fresh)
    # the very same file loaded first: restored
    fresh.file_uploader(key=state.W_DATA_UPLOAD).set_value(("tiny.extxyz", data, "text/plain")).run()
    fresh.file_uploader(key=state.W_SESSION_UPLOAD).set_value(("again.zip", saved, "application/zip")).run()
    _ok(fresh)
    assert fresh.session_state[state.RESULTS] is not None, _note(fresh)
    assert fresh.session_state[state.RESULTS].reports == at.session_state[state.RESULTS].reports


# ------------------------------------------------------------------------------ widget state
def test_widget_values_survive_a_dropped_widget_state(monkeypatch):
    """In a real browser a stray fragment run can drop every widget's state (Streamlit 1.67); the
    values come back from the shadow, so results are not falsely marked out of date. A deliberate
    reset (:func:`app.state.forget`) is not undone."""
    from types import SimpleNamespace

    ss: dict = {}
    monkeypatch.setattr(state, "st", SimpleNamespace(session_state=ss))
    state.init()
    state.put(state.W_METHODS, ["split", "knn"])   # set by a page
    ss[state.W_SPLIT_SEED] = 9                     # changed by the user (the widget's value)
    state.put(state.W_STRUCTURE, 4)
    state.init()                                   # the next run
    before = state.current_settings()
    for key in list(ss):
        if key in state.WIDGET_DEFAULTS:
            del ss[key]                            # the bodiless run: every widget value gone
    state.init()
    assert ss[state.W_METHODS] == ["split", "knn"] and ss[state.W_SPLIT_SEED] == 9 and ss[state.W_STRUCTURE] == 4
    assert state.current_settings() == before
    state.forget(state.W_STRUCTURE)
    state.init()
    assert state.W_STRUCTURE not in ss             # back to its default (None: not set)
