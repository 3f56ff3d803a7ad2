"""Integration: read real 3BPA DFT data, train a small MACE, featurize held-out frames.

Trains a 16-channel, L=0, 2-layer MACE on 60 frames of 3BPA at 300 K (10 more for
validation) with mace-torch's own trainer (``core.training.train_mace``), then
featurizes 60 held-out 300 K frames and 60 frames of the mixed-temperature set
(300/600/1200 K); about 70 s of CPU in all. Checks shapes, finiteness, that the model generalises worse to
the hotter frames (true of every MLIP trained at 300 K) and that its 300 K force
error is sane for this budget.

The trained model and both SiteTables are module-scoped, so later tests (e.g. the
CLI's) can reuse this pattern.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]

N_TRAIN, N_VALID, N_TEST = 60, 10, 60
# measured (seed 0, 1 thread, ~70 s of CPU for training): force MAE 0.29 eV/Å on the held-out
# 300 K frames, 0.45 eV/Å on the mixed-T frames; reference |F| averages 1.4 eV/Å (300 K).
# 0.45 leaves room for thread-count/platform rounding but flags a failed fit.
MAE_300K_BOUND = 0.45  # eV/Å


@pytest.fixture(scope="module")
def pipeline(shared_data, tmp_path_factory):
    from core.data import read_dataset
    from core.featurize import featurize
    from core.potentials import load_potential
    from core.training import train_mace

    cold = read_dataset(shared_data / "3bpa" / "train_300K.xyz")
    mixed = read_dataset(shared_data / "3bpa" / "train_mixedT.xyz")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(cold))
    train = [cold.structures[i] for i in order[:N_TRAIN]]
    valid = [cold.structures[i] for i in order[N_TRAIN:N_TRAIN + N_VALID]]
    held_out = cold.subset(np.sort(order[200:200 + N_TEST]))
    hot = mixed.subset(np.sort(rng.permutation(len(mixed))[:N_TEST]))

    workdir = tmp_path_factory.mktemp("train_3bpa")
    model = train_mace(
        train, valid, workdir, name="bpa", seed=0, r_max=4.5, num_channels=16, max_L=0,
        num_interactions=2, max_num_epochs=20, batch_size=5, num_threads=1,
        energy_key="REF_energy", forces_key="REF_forces",
    )
    pot = load_potential(model, device="cpu")
    return {
        "pot": pot,
        "cold": featurize(held_out, pot, batch_size=16, cache_dir=workdir / "cache"),
        "hot": featurize(hot, pot, batch_size=16),
        "held_out": held_out,
        "workdir": workdir,
    }


def test_featurized_shapes_and_metadata(pipeline):
    pot, cold, hot = pipeline["pot"], pipeline["cold"], pipeline["hot"]
    for t in (cold, hot):
        assert len(t) == N_TEST * 27 and t.n_structures == N_TEST
        assert t.descriptors.shape == (N_TEST * 27, pot.n_descriptors) == (N_TEST * 27, 32)
        assert t.forces_pred.shape == t.forces_ref.shape == (N_TEST * 27, 3)
        assert set(t.unique_species.tolist()) == {1, 6, 7, 8}
        assert np.all(np.isfinite(t.errors)) and np.all(np.isfinite(t.descriptors))
        assert np.all(np.isfinite(t.structure_info["energy_ref"]))
        assert np.all(np.isfinite(t.structure_info["energy_pred"]))
        assert t.meta["potential_identity"] == pot.identity
    np.testing.assert_array_equal(cold.structure_info["dataset_index"], pipeline["held_out"].indices)
    assert cold.meta["source"].endswith("train_300K.xyz")


def test_errors_sane_and_larger_out_of_domain(pipeline):
    cold, hot = pipeline["cold"], pipeline["hot"]
    mae_cold, mae_hot = cold.errors.mean(), hot.errors.mean()
    assert 0.0 < mae_cold < MAE_300K_BOUND, mae_cold
    assert mae_hot > mae_cold, (mae_hot, mae_cold)
    # the model learned something: far better than predicting zero force
    assert mae_cold < 0.5 * np.linalg.norm(cold.forces_ref, axis=1).mean()


def test_cache_reuses_the_featurized_table(pipeline):
    from core.featurize import featurize

    again = featurize(pipeline["held_out"], pipeline["pot"], batch_size=16,
                      cache_dir=pipeline["workdir"] / "cache")
    assert again.meta["cache_hit"] is True
    np.testing.assert_array_equal(again.errors, pipeline["cold"].errors)
