"""q_θ: the quantile network of :class:`~core.calibration.flexible.FlexibleQuantile` and its training.

Model
    q_θ(X, Z) = softplus(MLP([standardise(X), onehot(Z)])) + ε, in units of the
    median training error (targets are divided by it for conditioning). The
    head emits all levels τ_1 < ... < τ_K at once as the lowest quantile plus
    non-negative increments, q_k = ε + Σ_{j<=k} softplus(o_j), so quantiles can
    never cross. The one-hot part is implemented as an embedding added to the
    first layer (identical to a linear layer on the concatenation; a species
    unseen at fit gets an all-zero one-hot, i.e. a zero embedding).
    Descriptors are standardised with the mean and standard deviation of the
    training + validation sites (never the holdout); the standard deviation is
    floored at 1e-4·|mean| so near-constant channels cannot amplify float32
    round-off.

Loss
    Pinball ρ_τ(r) = max(τ r, (τ - 1) r), r = e_i - q_θ,τ(X_i), averaged over
    levels and over sites with weights w_i: L = Σ w_i ρ_i / Σ w_i.

Training
    AdamW (Adam with decoupled weight decay; :mod:`core.calibration.adamw`, torch's update without
    torch's optimizer machinery), shuffled mini-batches, early
    stopping on a validation set with the best weights restored. Computation is
    float32; initial weights come from a ``torch.Generator`` seeded with ``seed``
    and the shuffling from a second seeded generator, so the same seed, data and
    thread count give bit-identical predictions on CPU. The global torch RNG is
    never touched.

Everything here is a function of explicit arrays and tensors (no calibrator
state), so :class:`FlexibleQuantile` can train, fine-tune (``update``) and
evaluate q_θ through one code path. torch is imported only when these
functions run.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np

from core.calibration.adamw import AdamW
from core.progress import report
from core.torch_guard import TORCH_GUARD

__all__ = [
    "MIN_STEPS_PER_EPOCH",
    "build_quantile_model",
    "forward_batched",
    "quantile_mlp_class",
    "raw_quantiles",
    "robust_moments",
    "species_index",
    "structure_parts",
    "train_quantile_model",
]

#: Small data sets get smaller batches so an epoch is at least this many optimiser steps.
MIN_STEPS_PER_EPOCH = 16

EPS = 1e-6  # ε of q_θ, in units of the median training error
CHUNK = 8192  # rows per inference batch: small enough that buffers are reused, not re-mmapped (page faults)
_MIN_REL_IMPROVEMENT = 1e-4  # early stopping: a validation loss must beat the best by this fraction


def torch_module():
    """The ``torch`` module (imported on first use)."""
    import torch

    return torch


_MODULE_CLASS = None


def quantile_mlp_class():
    """The torch module class of q_θ (defined lazily so importing this file does not import torch)."""
    global _MODULE_CLASS
    if _MODULE_CLASS is not None:
        return _MODULE_CLASS
    torch = torch_module()
    nn = torch.nn
    F = torch.nn.functional

    class QuantileMLP(nn.Module):
        def __init__(self, n_descriptors: int, n_species: int, hidden: tuple[int, ...], n_levels: int, eps: float):
            super().__init__()
            self.eps = eps
            self.inp = nn.Linear(n_descriptors, hidden[0])
            # row n_species is the all-zero one-hot of a species unseen at fit
            self.species = nn.Embedding(n_species + 1, hidden[0], padding_idx=n_species)
            self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(hidden[:-1], hidden[1:]))
            self.out = nn.Linear(hidden[-1], n_levels)

        def forward(self, x, z):
            """Quantiles (m, K) of standardised descriptors x (m, d) and species indices z (m,)."""
            return self.head(self.inp(x) + self.species(z))

        def forward_folded(self, x, z, weight, bias):
            """Same, from raw descriptors, with the standardisation folded into the first layer."""
            return self.head(F.linear(x, weight, bias) + self.species(z))

        def head(self, pre):
            h = F.silu(pre)
            for layer in self.hidden:
                h = F.silu(layer(h))
            return self.eps + torch.cumsum(F.softplus(self.out(h)), dim=1)

    _MODULE_CLASS = QuantileMLP
    return QuantileMLP


def robust_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean (d,) and a standard deviation (d,) floored at 1e-4·|mean| (and 1 for constant columns).

    The floor keeps (nearly) constant descriptor channels from amplifying float32
    round-off (~6e-8·|x|) into O(1) inputs; it only rescales such channels.
    """
    mean = x.mean(axis=0)
    std = np.maximum(x.std(axis=0), 1e-4 * np.abs(mean))
    return mean, np.where(std > 1e-12, std, 1.0)


def species_index(species_table: np.ndarray, species: np.ndarray):
    """Row of the species embedding per site (int64 tensor (m,)); unseen species -> the zero row.

    ``species_table`` is the sorted array of species seen at fit.
    """
    torch = torch_module()
    z = np.minimum(np.searchsorted(species_table, species), species_table.size - 1)
    z = np.where(species_table[z] == species, z, species_table.size).astype(np.int64)
    return torch.from_numpy(z)


def structure_parts(sites, holdout_fraction: float, validation_fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks (n,) (training, validation, holdout) of ``sites``, split by structure (seeded).

    ``holdout_fraction`` of the structures go to the conformal holdout (0: none), then
    ``validation_fraction`` of the rest to validation (0: none); ValueError when there are
    too few structures for every requested part.
    """
    from core.sites import split_structure_ids

    ids = sites.unique_structures
    holdout, validation = holdout_fraction > 0, validation_fraction > 0
    need = 1 + int(holdout) + int(validation)
    if ids.size < need:
        parts = ["training"] + ["validation"] * validation + ["conformal holdout"] * holdout
        raise ValueError(
            f"sites: FlexibleQuantile splits by structure into {need} parts ({', '.join(parts)})"
            f" and needs at least {need} structures, got {ids.size}"
        )
    hold_ids = val_ids = np.array([], dtype=np.int64)
    train_ids = ids
    if holdout:
        train_ids, hold_ids = split_structure_ids(ids, holdout_fraction, seed)
    if validation:
        train_ids, val_ids = split_structure_ids(train_ids, validation_fraction, seed + 1)
    sid = sites.structure_ids
    return np.isin(sid, train_ids), np.isin(sid, val_ids), np.isin(sid, hold_ids)


def build_quantile_model(n_descriptors: int, n_species: int, hidden: tuple[int, ...], levels: np.ndarray,
                         y: np.ndarray, w: np.ndarray, seed: int):
    """q_θ with seeded initial weights; the output bias starts at the (weighted) unconditional quantiles.

    ``y`` (m,) are the training targets (errors / scale) and ``w`` (m,) their weights.
    """
    torch = torch_module()
    gen = torch.Generator().manual_seed(seed)
    model = quantile_mlp_class()(n_descriptors, n_species, hidden, levels.size, EPS)
    fan_in_first = n_descriptors + n_species
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("inp.") or name.startswith("species."):
                bound = 1.0 / math.sqrt(fan_in_first)
            else:
                layer = model.get_submodule(name.rsplit(".", 1)[0])
                bound = 1.0 / math.sqrt(layer.in_features)
            torch.nn.init.uniform_(p, -bound, bound, generator=gen)
        model.species.weight[-1].zero_()
        model.out.weight.mul_(0.1)
        # start from the (weighted) unconditional quantiles: fast, stable convergence
        order = np.argsort(y)
        cum = np.cumsum(w[order]) / np.sum(w)
        pos = np.minimum(np.searchsorted(cum, levels), y.size - 1)
        q0 = np.maximum.accumulate(np.maximum(y[order][pos], 1e-3))
        inc = np.maximum(np.diff(np.r_[EPS, q0]), 1e-3)
        bias = np.where(inc > 20, inc, np.log(np.expm1(np.minimum(inc, 20))))  # inverse softplus
        model.out.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    return model


def forward_batched(model, x, z):
    """``model(x, z)`` in chunks of :data:`CHUNK` rows (bounded memory), tensor (m, K)."""
    torch = torch_module()
    with TORCH_GUARD.calls():
        return torch.cat([model(x[a:a + CHUNK], z[a:a + CHUNK]) for a in range(0, x.shape[0], CHUNK)])


def raw_quantiles(model, sites, rows, x_mean: np.ndarray, x_std: np.ndarray, species_table: np.ndarray,
                  scale: float) -> np.ndarray:
    """q_θ at every trained level, ndarray (m, K) float64, eV/Å, for ``rows`` of ``sites`` (None = all).

    The standardisation is folded into the first layer (computed in float64, rounded once):
    W (x - m) / s + b = (W / s) x + (b - (W / s) m); saves one pass over the descriptors.
    """
    torch = torch_module()
    n = len(sites) if rows is None else rows.size
    out = np.empty((n, model.out.out_features), dtype=np.float64)
    w_in = model.inp.weight.detach().numpy().astype(np.float64) / x_std[None, :]
    b_in = model.inp.bias.detach().numpy().astype(np.float64) - w_in @ x_mean
    w_in = torch.from_numpy(w_in.astype(np.float32))
    b_in = torch.from_numpy(b_in.astype(np.float32))
    with torch.inference_mode(), warnings.catch_warnings(), TORCH_GUARD.calls():
        # descriptors memory-mapped read-only from a store are only read here: torch's warning is moot
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for a in range(0, n, CHUNK):
            sel = slice(a, min(a + CHUNK, n)) if rows is None else rows[a:a + CHUNK]
            x = torch.from_numpy(np.ascontiguousarray(sites.descriptors[sel], dtype=np.float32))
            z = species_index(species_table, sites.species[sel])
            out[a:a + CHUNK] = model.forward_folded(x, z, w_in, b_in).numpy()
    out *= scale
    return out


def train_quantile_model(
    model,
    levels: np.ndarray,
    train: tuple,
    validation: tuple | None,
    *,
    max_epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    patience: int,
    shuffle_seed: int,
    callback: Callable[[int, float, float], Any] | None = None,
) -> tuple[list[dict], int, str]:
    """Train ``model`` in place on the weighted pinball loss; returns (history, best_epoch, stop_reason).

    Parameters
    ----------
    train : (x (m, d), z (m,), y (m,), w (m,)) tensors
        Standardised descriptors, species indices, targets (errors / scale) and weights
        normalised to mean 1.
    validation : (x, z, y, w) tensors or None
        Weights normalised to sum 1. None: no early stopping, ``max_epochs`` epochs
        are run and the last weights are kept (also how ``update`` fine-tunes).
    shuffle_seed : int
        Seed of the mini-batch shuffling generator.
    callback : callable(epoch, train_loss, val_loss) -> bool or None
        Returning True stops training (the best weights so far are kept).

    Returns
    -------
    history : list of dict
        ``epoch`` (1-based), ``train_loss``, ``val_loss`` (NaN without validation).
    best_epoch : int
        Epoch whose weights the model holds on return.
    stop_reason : {"patience", "callback", "max_epochs"}
    """
    torch = torch_module()
    tau = torch.from_numpy(np.asarray(levels, dtype=np.float32))
    opt = AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)  # torch.optim.AdamW's update, no dynamo import
    shuffle = torch.Generator().manual_seed(shuffle_seed)
    n = train[0].shape[0]
    bs = min(batch_size, n, max(32, math.ceil(n / MIN_STEPS_PER_EPOCH)))
    history: list[dict] = []
    best_val, best_state, best_epoch, wait = math.inf, None, 0, 0
    stop_reason = "max_epochs"
    for epoch in range(1, max_epochs + 1):
        with TORCH_GUARD.calls():
            train_loss = _train_epoch(model, opt, train, tau, bs, shuffle)
        val_loss = math.nan
        model.eval()
        if validation is not None:
            x_val, z_val, y_val, w_val = validation
            with torch.no_grad():
                val_loss = float((w_val * _pinball(forward_batched(model, x_val, z_val), y_val, tau)).sum())
            if val_loss < best_val * (1.0 - _MIN_REL_IMPROVEMENT) or best_state is None:
                best_val, best_epoch, wait = val_loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                wait += 1
        else:
            best_epoch = epoch
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        report("q_θ epochs", epoch, max_epochs)  # core.progress scope (the app's status line)
        if callback is not None and callback(epoch, train_loss, val_loss) is True:
            stop_reason = "callback"
            break
        if validation is not None and wait >= patience:
            stop_reason = "patience"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history, best_epoch, stop_reason


def _pinball(q, y, tau):
    """Per-site pinball loss averaged over levels, tensor (m,): q (m, K) quantiles, y (m,) targets."""
    torch = torch_module()
    r = y[:, None] - q
    return torch.maximum(tau * r, (tau - 1.0) * r).mean(dim=1)


def _train_epoch(model, opt, train: tuple, tau, batch_size: int, shuffle) -> float:
    """One shuffled pass of weighted pinball-loss steps; returns the mean training loss."""
    torch = torch_module()
    x_fit, z_fit, y_fit, w_fit = train
    n = x_fit.shape[0]
    model.train()
    perm = torch.randperm(n, generator=shuffle)
    total = 0.0
    for a in range(0, n, batch_size):
        idx = perm[a:a + batch_size]
        loss = (w_fit[idx] * _pinball(model(x_fit[idx], z_fit[idx]), y_fit[idx], tau)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * idx.shape[0]
    return total / n
