"""core.featurize: SiteTable contents, batching, progress, cache."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import Atoms

from core.data import read_dataset
from core.featurize import featurize
from core.potentials import PotentialOutput, load_potential
from core.sites import SiteTable


@pytest.fixture(scope="module")
def pot(tiny_mace_model):
    return load_potential(tiny_mace_model, device="cpu")


class Counting:
    """Wraps a potential and counts forward passes."""

    def __init__(self, inner):
        self.inner = inner
        self.name, self.identity, self.atomic_numbers = inner.name, inner.identity, inner.atomic_numbers
        self.calls = 0
        self.batch_sizes = []

    def compute(self, structures):
        self.calls += 1
        self.batch_sizes.append(len(structures))
        return self.inner.compute(structures)

    def ase_calculator(self):
        return self.inner.ase_calculator()


def test_table_contents(pot, tiny_structures):
    t = featurize(tiny_structures, pot, batch_size=5)
    out = pot.compute(tiny_structures)
    n = sum(len(a) for a in tiny_structures)
    assert isinstance(t, SiteTable) and len(t) == n
    assert t.descriptors.dtype == np.float32 and t.descriptors.shape == (n, 16)
    np.testing.assert_allclose(t.forces_pred, out.forces, atol=1e-10)
    np.testing.assert_allclose(t.descriptors, out.descriptors, rtol=1e-6, atol=1e-7)
    ref = np.concatenate([a.arrays["REF_forces"] for a in tiny_structures])
    np.testing.assert_array_equal(t.forces_ref, ref)
    np.testing.assert_allclose(t.errors, np.linalg.norm(out.forces - ref, axis=1), atol=1e-10)
    np.testing.assert_array_equal(t.species, np.concatenate([a.numbers for a in tiny_structures]))
    np.testing.assert_array_equal(t.structure_ids, np.repeat(np.arange(12), [len(a) for a in tiny_structures]))
    np.testing.assert_array_equal(t.atom_index[:6], np.arange(6))
    assert t.committee_std is None
    info = t.structure_info
    np.testing.assert_array_equal(info["n_atoms"], [len(a) for a in tiny_structures])
    np.testing.assert_allclose(info["energy_ref"], [a.info["REF_energy"] for a in tiny_structures])
    np.testing.assert_allclose(info["energy_pred"], out.energies, atol=1e-10)
    assert info["config_type"].tolist() == ["molecule"] * 6 + ["crystal"] * 6
    np.testing.assert_array_equal(info["dataset_index"], np.arange(12))
    assert t.meta["potential"] == pot.name and t.meta["potential_identity"] == pot.identity
    assert t.meta["n_descriptors"] == 16 and t.meta["labelled"] is True and t.meta["source"] is None


def test_descriptors_equal_get_descriptors(pot, tiny_mace_model, tiny_structures):
    from core.potentials.mace_foundation import mace_own_calculator

    import torch

    calc = mace_own_calculator(tiny_mace_model, device="cpu", default_dtype="float64")
    structs = tiny_structures[4:8]
    t = featurize(structs, pot, descriptor_dtype="float64")
    with torch.jit.optimized_execution(False):
        expected = np.concatenate([calc.get_descriptors(a, invariants_only=True) for a in structs])
    np.testing.assert_allclose(t.descriptors, expected, rtol=0, atol=1e-10)


def test_batched_equals_unbatched(pot, tiny_structures):
    wrapped = Counting(pot)
    t1 = featurize(tiny_structures, wrapped, batch_size=1, descriptor_dtype="float64")
    assert wrapped.calls == 12
    wrapped.calls, wrapped.batch_sizes = 0, []
    t7 = featurize(tiny_structures, wrapped, batch_size=7, descriptor_dtype="float64")
    assert wrapped.batch_sizes == [7, 5]
    np.testing.assert_allclose(t7.forces_pred, t1.forces_pred, rtol=0, atol=1e-10)
    np.testing.assert_allclose(t7.descriptors, t1.descriptors, rtol=0, atol=1e-10)
    np.testing.assert_allclose(t7.structure_info["energy_pred"], t1.structure_info["energy_pred"], atol=1e-9)


def test_threads_give_the_same_table_bit_for_bit(pot, tiny_mace_committee, tiny_structures, tmp_path):
    """MACE declares concurrent compute: batches on two threads, every array equal to the serial
    table's, progress in order; the cache key does not depend on the thread count."""
    assert pot.concurrent_compute is True
    calls = []
    serial = featurize(tiny_structures, pot, batch_size=2, descriptor_dtype="float64")
    threaded = featurize(tiny_structures, pot, batch_size=2, descriptor_dtype="float64", threads=2,
                         progress=lambda done, total: calls.append(done))
    assert calls == [2, 4, 6, 8, 10, 12]
    for name in ("forces_pred", "descriptors", "errors", "species", "structure_ids"):
        np.testing.assert_array_equal(getattr(threaded, name), getattr(serial, name), err_msg=name)
    np.testing.assert_array_equal(threaded.structure_info["energy_pred"], serial.structure_info["energy_pred"])
    committee = load_potential(tiny_mace_committee[0], committee=tiny_mace_committee[1:], device="cpu")
    one = featurize(tiny_structures, committee, batch_size=3)
    three = featurize(tiny_structures, committee, batch_size=3, threads=3)
    np.testing.assert_array_equal(three.committee_std, one.committee_std)
    np.testing.assert_array_equal(three.forces_pred, one.forces_pred)
    first = featurize(tiny_structures[:4], pot, cache_dir=tmp_path, threads=2)
    again = featurize(tiny_structures[:4], pot, cache_dir=tmp_path)
    assert again.meta["cache_hit"] and again.meta["cache_key"] == first.meta["cache_key"]


def test_progress_callback(pot, tiny_structures, tmp_path):
    calls = []
    featurize(tiny_structures, pot, batch_size=5, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(5, 12), (10, 12), (12, 12)]
    calls.clear()
    featurize(tiny_structures[:3], pot, progress=lambda d, t: calls.append((d, t)), cache_dir=tmp_path)
    featurize(tiny_structures[:3], pot, progress=lambda d, t: calls.append((d, t)), cache_dir=tmp_path)
    assert calls == [(3, 3), (3, 3)]  # a cache hit still reports completion
    featurize(tiny_structures[:2], pot, progress=True)  # tqdm bar
    with pytest.raises(TypeError, match="progress: expected None, True or a callable"):
        featurize(tiny_structures[:2], pot, progress="yes")


def test_cache_hit_miss_and_corruption(pot, tiny_structures, tmp_path):
    structures = [tiny_structures[i] for i in (0, 1, 6, 7)]  # 2 molecules, 2 crystals
    wrapped = Counting(pot)
    t1 = featurize(structures, wrapped, batch_size=2, cache_dir=tmp_path)
    assert wrapped.calls == 2 and t1.meta["cache_hit"] is False
    files = list(tmp_path.glob("featurize-*.npz"))
    assert len(files) == 1

    t2 = featurize(structures, wrapped, batch_size=3, cache_dir=tmp_path)  # batch size is not in the key
    assert wrapped.calls == 2 and t2.meta["cache_hit"] is True
    np.testing.assert_array_equal(t2.descriptors, t1.descriptors)
    np.testing.assert_array_equal(t2.errors, t1.errors)
    assert t2.structure_info["config_type"].tolist() == ["molecule", "molecule", "crystal", "crystal"]

    # changed data -> miss
    changed = [a.copy() for a in structures]
    changed[3].positions[0, 0] += 1e-6
    featurize(changed, wrapped, batch_size=2, cache_dir=tmp_path)
    assert wrapped.calls == 4
    changed = [a.copy() for a in structures]
    changed[0].arrays["REF_forces"][0, 0] += 0.1
    featurize(changed, wrapped, batch_size=2, cache_dir=tmp_path)
    assert wrapped.calls == 6
    # changed settings -> miss
    featurize(structures, wrapped, batch_size=2, cache_dir=tmp_path, descriptor_dtype="float64")
    assert wrapped.calls == 8
    featurize(structures, wrapped, batch_size=2, cache_dir=tmp_path, labelled=False)
    assert wrapped.calls == 10
    assert len(list(tmp_path.glob("featurize-*.npz"))) == 5

    # truncated entry -> warning, recompute, rewritten
    entry = files[0]
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) // 2])
    with pytest.warns(RuntimeWarning, match=r"featurize cache entry .*featurize-.*\.npz is unreadable .*recomputing"):
        t3 = featurize(structures, wrapped, batch_size=2, cache_dir=tmp_path)
    assert wrapped.calls == 12 and t3.meta["cache_hit"] is False
    np.testing.assert_array_equal(t3.errors, t1.errors)
    assert entry.read_bytes() == data or SiteTable.load(entry).meta["cache_key"] == t1.meta["cache_key"]
    # garbled entry -> same
    entry.write_bytes(b"garbage" * 100)
    with pytest.warns(RuntimeWarning, match="unreadable"):
        featurize(structures, wrapped, batch_size=2, cache_dir=tmp_path)
    assert wrapped.calls == 14
    # valid file with someone else's content -> key mismatch -> recompute
    t_other = featurize(structures[:1], pot)
    t_other.save(entry)
    with pytest.warns(RuntimeWarning, match="cache key mismatch"):
        featurize(structures, wrapped, batch_size=2, cache_dir=tmp_path)
    assert wrapped.calls == 16
    featurize(structures, wrapped, batch_size=2, cache_dir=tmp_path)
    assert wrapped.calls == 16
    assert not list(tmp_path.glob("*.tmp.npz"))


class Gated(Counting):
    """A Counting potential whose first forward pass waits for ``release``."""

    def __init__(self, inner):
        import threading

        super().__init__(inner)
        self.entered, self.release = threading.Event(), threading.Event()

    def compute(self, structures):
        self.entered.set()
        assert self.release.wait(60)
        return super().compute(structures)


def test_one_key_is_computed_once_while_a_second_caller_waits(pot, tiny_structures, tmp_path):
    import threading

    structures = tiny_structures[:3]
    gated = Gated(pot)
    results = {}
    first = threading.Thread(target=lambda: results.update(first=featurize(structures, gated, cache_dir=tmp_path)))
    first.start()
    assert gated.entered.wait(60)
    waits = []

    def second_progress(done, total):
        waits.append((done, total))
        if len(waits) == 2:
            gated.release.set()  # the first call finishes while the second waits

    second = featurize(structures, gated, cache_dir=tmp_path, progress=second_progress)
    first.join(60)
    assert gated.calls == 1  # computed once
    assert results["first"].meta["cache_hit"] is False and second.meta["cache_hit"] is True
    np.testing.assert_array_equal(second.descriptors, results["first"].descriptors)
    assert waits[:2] == [(0, 3), (0, 3)] and waits[-1] == (3, 3)  # 0 done while waiting, then the hit

    # a progress callback that raises ends the wait (the app's Cancel), the running call is untouched
    other = [a.copy() for a in structures]
    other[0].positions[0, 0] += 0.01
    gated2 = Gated(pot)
    running = threading.Thread(target=lambda: results.update(run=featurize(other, gated2, cache_dir=tmp_path)))
    running.start()
    assert gated2.entered.wait(60)

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        featurize(other, gated2, cache_dir=tmp_path, progress=cancel)
    # another key does not wait for the running one
    unrelated = threading.Thread(target=lambda: results.update(unrelated=featurize(structures[:1], pot,
                                                                                   cache_dir=tmp_path)))
    unrelated.start()
    unrelated.join(60)
    assert not unrelated.is_alive() and len(results["unrelated"]) == len(structures[0])
    gated2.release.set()
    running.join(60)
    assert gated2.calls == 1 and results["run"].meta["cache_hit"] is False


def test_unlabelled(pot, tiny_structures):
    for a in tiny_structures:
        del a.arrays["REF_forces"]
    with pytest.raises(ValueError, match=r"12 of 12 structures have no reference forces .*pass labelled=False"):
        featurize(tiny_structures, pot)
    t = featurize(tiny_structures, pot, labelled=False)
    assert t.forces_ref is None and t.errors is None and not t.labelled and t.meta["labelled"] is False


def test_unlabelled_cache_round_trip_and_old_zero_error_entries(pot, tiny_structures, tmp_path):
    """Regression (issue 9): unlabelled tables carried errors = 0; cached ones come back with errors=None."""
    for a in tiny_structures:
        del a.arrays["REF_forces"]
    wrapped = Counting(pot)
    first = featurize(tiny_structures, wrapped, cache_dir=tmp_path, labelled=False)
    (entry,) = tmp_path.glob("featurize-*.npz")
    with np.load(entry, allow_pickle=False) as z:
        assert "errors" not in z.files
    again = featurize(tiny_structures, wrapped, cache_dir=tmp_path, labelled=False)
    assert again.meta["cache_hit"] and again.errors is None and wrapped.calls == 1
    np.testing.assert_array_equal(again.descriptors, first.descriptors)
    # an entry written by an older FlexCal (zeros as errors) is read back as unlabelled
    old = SiteTable.from_arrays(descriptors=first.descriptors, errors=np.zeros(len(first)), species=first.species,
                                structure_ids=first.structure_ids, forces_pred=first.forces_pred,
                                structure_info=first.structure_info, meta=first.meta)
    old.save(entry)
    back = featurize(tiny_structures, wrapped, cache_dir=tmp_path, labelled=False)
    assert back.meta["cache_hit"] and back.errors is None and wrapped.calls == 1


def test_from_dataset_keeps_source_and_indices(pot, tiny_structures, tmp_path):
    path = tmp_path / "tiny.extxyz"
    ase.io.write(path, tiny_structures, format="extxyz")
    ds = read_dataset(path)
    sub = ds.subset([1, 7, 10])
    t = featurize(sub, pot)
    assert t.meta["source"] == str(path)
    np.testing.assert_array_equal(t.structure_info["dataset_index"], [1, 7, 10])
    np.testing.assert_array_equal(t.unique_structures, [0, 1, 2])
    full = featurize(tiny_structures, pot)
    np.testing.assert_allclose(t.errors, full.select_structures([1, 7, 10]).errors, atol=1e-10)


def test_committee_std_column(tiny_mace_committee, tiny_structures):
    com = load_potential(tiny_mace_committee[0], committee=tiny_mace_committee[1:], device="cpu")
    t = featurize(tiny_structures[:4], com, batch_size=3)
    assert t.committee_std.shape == (len(t),) and np.all(t.committee_std > 0)
    np.testing.assert_allclose(t.committee_std, com.compute(tiny_structures[:4]).committee_std, atol=1e-12)


def test_unknown_element_fails_before_any_forward_pass(pot, tiny_structures):
    wrapped = Counting(pot)
    bad = tiny_structures + [Atoms("AuH", positions=[[0, 0, 0], [0, 0, 1.6]])]
    bad[-1].arrays["REF_forces"] = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"does not know: Au \(Z=79, in structures 12\)"):
        featurize(bad, wrapped)
    assert wrapped.calls == 0


def test_argument_errors(pot, tiny_structures):
    with pytest.raises(ValueError, match="structures: empty"):
        featurize([], pot)
    with pytest.raises(TypeError, match=r"structures\[1\]: expected ase.Atoms, got str"):
        featurize([tiny_structures[0], "x"], pot)
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1, got 0"):
        featurize(tiny_structures, pot, batch_size=0)
    with pytest.raises(ValueError, match="threads: expected an integer >= 1, got 0"):
        featurize(tiny_structures, pot, threads=0)
    with pytest.raises(ValueError, match="threads: expected an integer >= 1, got True"):
        featurize(tiny_structures, pot, threads=True)
    with pytest.raises(ValueError, match="descriptor_dtype: expected one of"):
        featurize(tiny_structures, pot, descriptor_dtype="float16")
    with pytest.raises(TypeError, match="potential: expected a Potential"):
        featurize(tiny_structures, object())

    class Broken(Counting):
        def compute(self, structures):
            out = self.inner.compute(structures)
            return PotentialOutput(out.energies, out.forces[:-1], out.descriptors)

    with pytest.raises(ValueError, match=r"returned malformed output: forces: expected shape \(6, 3\), got \(5, 3\)"):
        featurize(tiny_structures[:1], Broken(pot))
