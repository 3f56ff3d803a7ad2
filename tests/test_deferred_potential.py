"""core.potentials.deferred: metadata records, loading on first use, identity checks, trust."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from ase.build import bulk

from core.potentials import load_potential, register_backend, unregister_backend
from core.potentials.deferred import DeferredPotential, deferred_potential, model_file, record_path
from tests.test_backends import ToyEMTPotential

LOADS: list[str] = []


def _load_toy_file(spec, *, device="cpu", cutoff=5.0):
    """A file backend: the file's text is part of the identity (an edited file is another model)."""
    LOADS.append(str(spec))
    pot = ToyEMTPotential(cutoff, device=device)
    pot.identity = f"toy-file-{open(spec).read().strip()}-cutoff={cutoff!r}"
    return pot


@pytest.fixture
def toy_file(tmp_path):
    register_backend(lambda s: str(s).endswith(".toy"), _load_toy_file, name="toyfile", label="Toy file",
                     kind="toy model file", runs_code=True)
    LOADS.clear()
    path = tmp_path / "cu.toy"
    path.write_text("weights-v1")
    yield path
    unregister_backend("toyfile")


def test_first_call_loads_and_records_then_a_record_defers(toy_file, tmp_path):
    records = tmp_path / "records"
    first = deferred_potential(str(toy_file), records=records)
    assert isinstance(first, ToyEMTPotential) and LOADS == [str(toy_file)]
    path = record_path(str(toy_file), records)
    assert path.parent == records and path.name.startswith("potential-") and path.suffix == ".json"
    assert json.loads(path.read_text()) == {"version": 1, "name": first.name, "identity": first.identity,
                                            "atomic_numbers": list(first.atomic_numbers)}

    second = deferred_potential(str(toy_file), records=records)
    assert isinstance(second, DeferredPotential) and not second.loaded and LOADS == [str(toy_file)]
    assert (second.name, second.identity, second.atomic_numbers) == (first.name, first.identity,
                                                                      first.atomic_numbers)
    # anything else loads the real potential, once, and the numbers are the model's
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    out = second.compute([atoms])
    np.testing.assert_allclose(out.forces, first.compute([atoms]).forces)
    assert second.loaded and second.cutoff == 5.0 and LOADS == [str(toy_file)] * 2
    assert load_potential(second) is second  # a Potential passes through the resolver unchanged


def test_options_and_file_content_are_part_of_the_record_key(toy_file, tmp_path):
    records = tmp_path / "records"
    deferred_potential(str(toy_file), records=records)
    assert record_path(str(toy_file), records, cutoff=4.0) != record_path(str(toy_file), records)
    assert isinstance(deferred_potential(str(toy_file), records=records, cutoff=4.0), ToyEMTPotential)
    toy_file.write_text("weights-v2")  # an edited file: no record matches, it loads again
    edited = deferred_potential(str(toy_file), records=records)
    assert isinstance(edited, ToyEMTPotential) and edited.identity.startswith("toy-file-weights-v2")
    assert len(LOADS) == 3


def test_a_file_changed_after_deferring_is_refused_at_load(toy_file, tmp_path):
    records = tmp_path / "records"
    deferred_potential(str(toy_file), records=records)
    lazy = deferred_potential(str(toy_file), records=records)
    toy_file.write_text("weights-v2")
    with pytest.raises(RuntimeError, match=r"cu\.toy: the model changed since its metadata was recorded"):
        lazy.compute([bulk("Cu", "fcc", a=3.6)])
    assert not lazy.loaded


def test_untrusted_files_and_names_are_never_deferred(toy_file, tmp_path):
    from core.potentials import UntrustedModelError

    records = tmp_path / "records"
    deferred_potential(str(toy_file), records=records)
    with pytest.raises(UntrustedModelError):
        deferred_potential(str(toy_file), records=records, trusted=False)
    assert model_file("chgnet") is None and record_path("chgnet", records) is None
    assert model_file(str(tmp_path)) is None  # a directory is not a model file


@pytest.mark.parametrize("content", ["not json", json.dumps({"version": 1, "name": "x", "identity": "y",
                                                               "atomic_numbers": ["Cu"]}),
                                     json.dumps({"version": 99, "name": "x", "identity": "y", "atomic_numbers": [29]}),
                                     json.dumps([1, 2, 3])])
def test_a_damaged_record_is_ignored_and_rewritten(toy_file, tmp_path, content):
    records = tmp_path / "records"
    path = record_path(str(toy_file), records)
    records.mkdir()
    path.write_text(content)
    pot = deferred_potential(str(toy_file), records=records)
    assert isinstance(pot, ToyEMTPotential)
    assert json.loads(path.read_text())["identity"] == pot.identity


def test_concurrent_first_uses_load_once(toy_file, tmp_path):
    records = tmp_path / "records"
    deferred_potential(str(toy_file), records=records)
    lazy = deferred_potential(str(toy_file), records=records)
    got = []
    threads = [threading.Thread(target=lambda: got.append(lazy.load())) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert len(got) == 4 and all(g is got[0] for g in got) and LOADS == [str(toy_file)] * 2


def test_demo_specs_name_the_demo_model_file():
    from core.demo import DEFAULT_FAMILY, demo_model_path

    if not demo_model_path(DEFAULT_FAMILY).is_file():
        pytest.skip("demo model not installed")
    assert model_file("demo") == demo_model_path(DEFAULT_FAMILY)
    assert model_file("demo:molecule") == demo_model_path("molecule")
    assert model_file("demo:graphene") is None  # load_potential names the unknown family
