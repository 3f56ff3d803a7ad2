"""FlexibleQuantile: the learned, environment-dependent quantile q_θ(X, Z) (METHOD §3).

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
    levels and over sites with weights w_i: L = Σ w_i ρ_i / Σ w_i (weights from
    :mod:`core.calibration.weights`).

Training
    AdamW (Adam with decoupled weight decay), shuffled mini-batches, early
    stopping on a by-structure validation split with the best weights restored.
    Computation is float32; initial weights come from a ``torch.Generator``
    seeded with ``seed`` and the shuffling from a second seeded generator, so
    the same seed, data and thread count give bit-identical predictions on CPU.
    The global torch RNG is never touched.

Conformal correction (``conformal=True``)
    A by-structure holdout (``holdout_fraction`` of the structures) is kept
    out of training. Its ratios r_i = e_i / q_θ,τ(X_i) give per-level factors
    ĉ_τ = conformal quantile of r at level τ, and the widths are
    w_τ(X) = ĉ_τ · q_θ,τ(X). With weights:

    * ``uniform``: the plain conformal quantile.
    * ``structure``, ``species``, user arrays: the weighted conformal quantile
      (Tibshirani et al. 2019) with the holdout weights and, for the test point,
      the largest holdout weight. The weighted quantile is non-decreasing in the
      test weight, so this is the conservative choice for any test site whose
      weight would not exceed it; ĉ is one number per level.
    * ``shift``: the test weight is the density ratio p_target/p_cal at the test
      site itself, computed at predict time by the fitted classifier (trained at
      fit on the descriptors of all calibration sites vs ``target``), so ĉ is
      per site: ``predict`` runs a vectorised weighted quantile (sorted holdout
      ratios, cumulative weights, ``searchsorted``) for every test site. A site
      whose ratio outweighs the holdout's enough gets ĉ = +inf (the honest
      answer: the holdout says too little about it).

    Finally the widths are made monotone in the level by a cumulative maximum
    over the trained levels (per site), and ``predict`` returns the column at
    ``confidence``. This equals ĉ · q_θ(X) whenever the corrected quantiles do
    not cross (the usual case) and otherwise only widens, so the coverage
    guarantee is kept.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np

from core.calibration.base import Calibrator, check_levels, check_sites
from core.calibration.conformal import _sorted_cumulative, _weighted_from_sorted, conformal_quantile
from core.calibration.weights import (
    UniformWeights,
    check_weight_array,
    make_weight_scheme,
    weight_scheme_from_state,
)
from core.sites import SiteTable, split_structure_ids

__all__ = ["DEFAULT_LEVELS", "FlexibleQuantile"]

#: Small data sets get smaller batches so an epoch is at least this many optimiser steps.
MIN_STEPS_PER_EPOCH = 16

#: Trained levels by default: 0.05, 0.10, ..., 0.95 (the METHOD §4 calibration grid) and 0.99.
DEFAULT_LEVELS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20)) + (0.99,)

_EPS = 1e-6  # ε of q_θ, in units of the median training error
_CHUNK = 8192  # rows per inference batch: small enough that buffers are reused, not re-mmapped (page faults)
_MIN_REL_IMPROVEMENT = 1e-4  # early stopping: a validation loss must beat the best by this fraction
_LEVEL_ATOL = 1e-9  # a requested level this close to a trained one uses that level's column


def _torch():
    import torch

    return torch


_MODULE_CLASS = None


def _module_class():
    """The torch module of q_θ (defined lazily so importing this file does not import torch)."""
    global _MODULE_CLASS
    if _MODULE_CLASS is not None:
        return _MODULE_CLASS
    torch = _torch()
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


def _robust_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and a standard deviation floored at 1e-4·|mean| (and 1 for constant columns).

    The floor keeps (nearly) constant descriptor channels from amplifying float32
    round-off (~6e-8·|x|) into O(1) inputs; it only rescales such channels.
    """
    mean = x.mean(axis=0)
    std = np.maximum(x.std(axis=0), 1e-4 * np.abs(mean))
    return mean, np.where(std > 1e-12, std, 1.0)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_float(name: str, value: Any, lo: float, hi: float, lo_open=True, hi_open=True) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name}: expected a number in {interval}, got {value!r}")
    return float(value)


class FlexibleQuantile(Calibrator):
    """Learned quantile function q_θ(X, Z) with a conformal correction (the paper's method).

    Parameters
    ----------
    confidence : float, default 0.9
        Target coverage 1 - α, in (0, 1); always one of the trained levels.
    levels : sequence of float, default :data:`DEFAULT_LEVELS`
        Quantile levels trained jointly (sorted, duplicates dropped, ``confidence``
        added). The default grid 0.05..0.95 (step 0.05) + 0.99 makes
        ``predict_levels`` exact on the METHOD §4 calibration curve.
    hidden : tuple of int, default (64, 64)
        Hidden layer sizes (SiLU).
    weights : {"uniform", "structure", "species", "shift"}, array of shape (n_sites,) or WeightScheme
        Per-site weights of the pinball loss and the conformal correction;
        ``"shift"`` needs ``target`` in :meth:`fit`.
    conformal : bool, default True
        Apply the conformal correction on a by-structure holdout.
    holdout_fraction : float, default 0.25
        Fraction of structures held out for the correction (ignored when ``conformal=False``).
    validation_fraction : float, default 0.2
        Fraction of the remaining structures used for early stopping; 0 disables
        early stopping (``max_epochs`` epochs are run).
    max_epochs : int, default 200
    batch_size : int, default 2048
        Upper bound on the mini-batch size. Small data sets use smaller batches so
        that every epoch takes at least ``MIN_STEPS_PER_EPOCH`` (16) optimiser steps
        (batches of at least 32 sites): with ~500 sites a single 2048 batch would
        give one step per epoch and early stopping would end training before q_θ
        has learned anything.
    lr : float, default 3e-3
        AdamW learning rate.
    weight_decay : float, default 1e-4
    patience : int, default 20
        Epochs without a validation improvement (relative 1e-4) before stopping.
    seed : int, default 0

    Attributes
    ----------
    levels_ : ndarray of shape (K,)
        Trained levels (sorted; includes ``confidence``).
    scale_ : float
        Median training error (eV/Å); q_θ is trained on e / scale_.
    history_ : list of dict
        One dict per epoch: ``epoch`` (1-based), ``train_loss``, ``val_loss`` (NaN without validation).
    best_epoch_ : int
        Epoch whose weights were kept.
    stop_reason_ : str
        ``"patience"``, ``"callback"`` or ``"max_epochs"``.
    corrections_ : ndarray of shape (K,)
        ĉ per trained level (1.0 without correction; for ``shift`` the value at the
        mean target density ratio, see ``correction_``).
    correction_ : float
        ĉ at ``confidence``. For ``shift`` weights, ĉ is computed per test site at predict
        time; this is its value at the mean density ratio of the ``target`` sites.
    holdout_scores_ : ndarray of shape (n_holdout, K)
        e / q_θ,τ on the holdout sites.
    holdout_weights_ : ndarray of shape (n_holdout,)
    weight_scheme_ : WeightScheme
    fit_seconds_ : float
    """

    kind = "flexible_quantile"
    name = "flexible"
    label = "q_θ (flexible)"

    def __init__(
        self,
        confidence: float = 0.9,
        levels=DEFAULT_LEVELS,
        hidden=(64, 64),
        weights="uniform",
        conformal: bool = True,
        holdout_fraction: float = 0.25,
        validation_fraction: float = 0.2,
        max_epochs: int = 200,
        batch_size: int = 2048,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        patience: int = 20,
        seed: int = 0,
    ):
        super().__init__(confidence)
        self.levels = tuple(float(p) for p in check_levels(levels))
        bad_hidden = f"hidden: expected a sequence of positive layer sizes, e.g. (64, 64), got {hidden!r}"
        try:
            hidden_t = tuple(hidden) if not isinstance(hidden, (int, np.integer)) else (hidden,)
        except TypeError:
            raise ValueError(bad_hidden) from None
        if not hidden_t or any(isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1 for h in hidden_t):
            raise ValueError(bad_hidden)
        self.hidden = tuple(int(h) for h in hidden_t)
        self.weights = make_weight_scheme(weights)
        if not isinstance(conformal, (bool, np.bool_)):
            raise TypeError(f"conformal: expected True or False, got {conformal!r}")
        self.conformal = bool(conformal)
        self.holdout_fraction = _check_float("holdout_fraction", holdout_fraction, 0.0, 1.0)
        self.validation_fraction = _check_float("validation_fraction", validation_fraction, 0.0, 1.0, lo_open=False)
        self.max_epochs = _check_int("max_epochs", max_epochs, 1)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.lr = _check_float("lr", lr, 0.0, math.inf)
        self.weight_decay = _check_float("weight_decay", weight_decay, 0.0, math.inf, lo_open=False)
        self.patience = _check_int("patience", patience, 1)
        self.seed = _check_int("seed", seed, 0)
        self.label = "q_θ (flexible)" if self.conformal else "q_θ (uncorrected)"
        self.model_ = None

    def get_params(self) -> dict[str, Any]:
        return {
            "confidence": self.confidence,
            "levels": list(self.levels),
            "hidden": list(self.hidden),
            "weights": self.weights.name,
            "conformal": self.conformal,
            "holdout_fraction": self.holdout_fraction,
            "validation_fraction": self.validation_fraction,
            "max_epochs": self.max_epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "patience": self.patience,
            "seed": self.seed,
        }

    @property
    def is_fitted(self) -> bool:
        return self.model_ is not None

    # ----------------------------------------------------------------- data
    def _trained_levels(self) -> np.ndarray:
        lv = np.unique(np.round(np.r_[np.asarray(self.levels), self.confidence], 12))
        return lv

    def _inputs(self, sites: SiteTable, rows: np.ndarray | slice):
        """(standardised x float32 tensor (m, d), species-index int64 tensor (m,)) of the selected rows.

        Used for training and validation; inference (:meth:`_raw`) folds the same
        standardisation into the first layer instead (equal up to float32 round-off).
        """
        torch = _torch()
        x = torch.from_numpy(np.ascontiguousarray(sites.descriptors[rows], dtype=np.float32))
        x = (x - self._mean32) * self._inv_std32
        return x, self._species_index(sites.species[rows])

    def _species_index(self, species: np.ndarray):
        """Row of the species embedding per site (int64 tensor); unseen species -> the zero row."""
        torch = _torch()
        z = np.minimum(np.searchsorted(self.species_, species), self.species_.size - 1)
        z = np.where(self.species_[z] == species, z, self.species_.size).astype(np.int64)
        return torch.from_numpy(z)

    def _set_standardisation(self, mean: np.ndarray, std: np.ndarray) -> None:
        torch = _torch()
        self.x_mean_ = np.asarray(mean, dtype=np.float64)
        self.x_std_ = np.asarray(std, dtype=np.float64)
        self._mean32 = torch.from_numpy(self.x_mean_.astype(np.float32))
        self._inv_std32 = torch.from_numpy((1.0 / self.x_std_).astype(np.float32))

    def _split(self, sites: SiteTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boolean masks (fit, validation, holdout) of the sites, all by structure."""
        ids = sites.unique_structures
        need = 1 + int(self.conformal) + int(self.validation_fraction > 0)
        if ids.size < need:
            parts = ["training"] + ["validation"] * (self.validation_fraction > 0)
            parts += ["conformal holdout"] * self.conformal
            raise ValueError(
                f"sites: FlexibleQuantile splits by structure into {need} parts ({', '.join(parts)})"
                f" and needs at least {need} structures, got {ids.size}"
            )
        hold_ids = np.array([], dtype=np.int64)
        train_ids = ids
        if self.conformal:
            train_ids, hold_ids = split_structure_ids(ids, self.holdout_fraction, self.seed)
        val_ids = np.array([], dtype=np.int64)
        if self.validation_fraction > 0:
            train_ids, val_ids = split_structure_ids(train_ids, self.validation_fraction, self.seed + 1)
        sid = sites.structure_ids
        return np.isin(sid, train_ids), np.isin(sid, val_ids), np.isin(sid, hold_ids)

    # ------------------------------------------------------------------ fit
    def fit(self, sites: SiteTable, *, target: SiteTable | None = None, reference: SiteTable | None = None,
            callback: Callable[[int, float, float], Any] | None = None) -> "FlexibleQuantile":
        """Train q_θ and, if ``conformal``, compute the correction on a by-structure holdout.

        Parameters
        ----------
        sites : SiteTable
            Labelled calibration sites (descriptors (n, d), species, errors in eV/Å).
        target : SiteTable, optional
            Unlabelled target-domain sites; required by ``weights="shift"``, unused otherwise.
        reference : SiteTable, optional
            Unused by q_θ (accepted for the common calibrator interface).
        callback : callable(epoch, train_loss, val_loss) -> bool or None, optional
            Called after every epoch; returning True stops training (best weights are kept).

        Returns
        -------
        self
        """
        torch = _torch()
        t_start = time.perf_counter()
        check_sites(sites)
        if target is not None:
            check_sites(target, "target")
        if callback is not None and not callable(callback):
            raise TypeError(
                f"callback: expected a callable(epoch, train_loss, val_loss), got {type(callback).__name__}"
            )

        scheme = self.weights
        scheme.fit(sites, target)
        w_all = check_weight_array(scheme.weights(sites), len(sites))
        fit_m, val_m, hold_m = self._split(sites)
        if not np.any(w_all[fit_m] > 0):
            raise ValueError("weights: all training-part weights are zero")

        levels = self._trained_levels()
        self.levels_ = levels
        self.level_index_ = int(np.flatnonzero(np.isclose(levels, self.confidence, atol=_LEVEL_ATOL))[0])
        trainval = fit_m | val_m
        x_tv = np.asarray(sites.descriptors[trainval], dtype=np.float64)
        self._set_standardisation(*_robust_moments(x_tv))
        del x_tv
        self.species_ = np.unique(sites.species[trainval])
        e_fit = sites.errors[fit_m]
        scale = float(np.median(e_fit))
        if not scale > 0:
            scale = float(np.mean(e_fit)) if np.mean(e_fit) > 0 else 1.0
        self.scale_ = scale

        fit_rows, val_rows = np.flatnonzero(fit_m), np.flatnonzero(val_m)
        x_fit, z_fit = self._inputs(sites, fit_rows)
        y_fit = torch.from_numpy((e_fit / scale).astype(np.float32))
        w_fit_np = w_all[fit_rows] / np.mean(w_all[fit_rows])
        w_fit = torch.from_numpy(w_fit_np.astype(np.float32))
        has_val = val_rows.size > 0 and np.any(w_all[val_rows] > 0)
        if has_val:
            x_val, z_val = self._inputs(sites, val_rows)
            y_val = torch.from_numpy((sites.errors[val_rows] / scale).astype(np.float32))
            w_val_np = w_all[val_rows] / np.sum(w_all[val_rows])
            w_val = torch.from_numpy(w_val_np.astype(np.float32))
        tau = torch.from_numpy(levels.astype(np.float32))

        model = self._build_model(sites.n_descriptors, y_fit.numpy(), w_fit_np)
        opt = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        shuffle = torch.Generator().manual_seed(self.seed + 2)

        def pinball(q, y):
            r = y[:, None] - q
            return torch.maximum(tau * r, (tau - 1.0) * r).mean(dim=1)

        n = x_fit.shape[0]
        bs = min(self.batch_size, n, max(32, math.ceil(n / MIN_STEPS_PER_EPOCH)))
        self.history_ = []
        best_val, best_state, best_epoch, wait = math.inf, None, 0, 0
        self.stop_reason_ = "max_epochs"
        for epoch in range(1, self.max_epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=shuffle)
            total = 0.0
            for a in range(0, n, bs):
                idx = perm[a:a + bs]
                loss = (w_fit[idx] * pinball(model(x_fit[idx], z_fit[idx]), y_fit[idx])).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * idx.shape[0]
            train_loss = total / n
            val_loss = math.nan
            model.eval()
            if has_val:
                with torch.no_grad():
                    val_loss = float((w_val * pinball(self._forward_batched(model, x_val, z_val), y_val)).sum())
            self.history_.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
            if has_val:
                if val_loss < best_val * (1.0 - _MIN_REL_IMPROVEMENT) or best_state is None:
                    best_val, best_epoch, wait = val_loss, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    wait += 1
            else:
                best_epoch = epoch
            if callback is not None and callback(epoch, train_loss, val_loss) is True:
                self.stop_reason_ = "callback"
                break
            if has_val and wait >= self.patience:
                self.stop_reason_ = "patience"
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        self.model_ = model
        self.best_epoch_ = best_epoch
        self.weight_scheme_ = scheme

        hold_rows = np.flatnonzero(hold_m)
        if self.conformal:
            q_hold = self._raw(sites, hold_rows)
            self.holdout_scores_ = sites.errors[hold_rows][:, None] / q_hold
            self.holdout_weights_ = w_all[hold_rows]
        else:
            self.holdout_scores_ = np.zeros((0, levels.size))
            self.holdout_weights_ = np.zeros(0)
        self._prepare_correction(target)
        self.fit_seconds_ = time.perf_counter() - t_start
        return self

    def _build_model(self, n_descriptors: int, y: np.ndarray, w: np.ndarray):
        """q_θ with seeded initial weights; the output bias starts at the unconditional quantiles."""
        torch = _torch()
        gen = torch.Generator().manual_seed(self.seed)
        model = _module_class()(n_descriptors, self.species_.size, self.hidden, self.levels_.size, _EPS)
        fan_in_first = n_descriptors + self.species_.size
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
            pos = np.minimum(np.searchsorted(cum, self.levels_), y.size - 1)
            q0 = np.maximum.accumulate(np.maximum(y[order][pos], 1e-3))
            inc = np.maximum(np.diff(np.r_[_EPS, q0]), 1e-3)
            bias = np.where(inc > 20, inc, np.log(np.expm1(np.minimum(inc, 20))))  # inverse softplus
            model.out.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
        return model

    @staticmethod
    def _forward_batched(model, x, z):
        torch = _torch()
        return torch.cat([model(x[a:a + _CHUNK], z[a:a + _CHUNK]) for a in range(0, x.shape[0], _CHUNK)])

    def _raw(self, sites: SiteTable, rows: np.ndarray | None = None) -> np.ndarray:
        """Uncorrected q_θ at every trained level, ndarray (m, K) float64, eV/Å."""
        torch = _torch()
        n = len(sites) if rows is None else rows.size
        out = np.empty((n, self.levels_.size), dtype=np.float64)
        # standardisation folded into the first layer (computed in float64, rounded once):
        # W (x - m) / s + b = (W / s) x + (b - (W / s) m); saves one pass over the descriptors
        w_in = self.model_.inp.weight.detach().numpy().astype(np.float64) / self.x_std_[None, :]
        b_in = self.model_.inp.bias.detach().numpy().astype(np.float64) - w_in @ self.x_mean_
        w_in = torch.from_numpy(w_in.astype(np.float32))
        b_in = torch.from_numpy(b_in.astype(np.float32))
        with torch.inference_mode():
            for a in range(0, n, _CHUNK):
                sel = slice(a, min(a + _CHUNK, n)) if rows is None else rows[a:a + _CHUNK]
                x = torch.from_numpy(np.ascontiguousarray(sites.descriptors[sel], dtype=np.float32))
                out[a:a + _CHUNK] = self.model_.forward_folded(x, self._species_index(sites.species[sel]),
                                                               w_in, b_in).numpy()
        out *= self.scale_
        return out

    # ----------------------------------------------------------- correction
    def _prepare_correction(self, target: SiteTable | None) -> None:
        """Per-level ĉ (non-shift) or the sorted holdout ratios for per-site ĉ (shift)."""
        K = self.levels_.size
        self._shift = self.conformal and self.weight_scheme_.site_dependent_test_weight
        self._uniform = isinstance(self.weight_scheme_, UniformWeights) or (
            self.holdout_weights_.size > 0 and np.all(self.holdout_weights_ == self.holdout_weights_[0]))
        self._sorted = []
        if not self.conformal:
            self.corrections_ = np.ones(K)
        elif self._shift:
            self._sorted = [_sorted_cumulative(self.holdout_scores_[:, k], self.holdout_weights_) for k in range(K)]
            t = np.array([1.0])
            if target is not None:
                t = np.array([float(np.mean(self.weight_scheme_.weights(target)))])
            self.shift_reference_weight_ = float(t[0])
            self.corrections_ = np.array([_weighted_from_sorted(s, c, t, p)[0]
                                          for (s, c), p in zip(self._sorted, self.levels_)])
        else:
            self.corrections_ = np.array([self._correction(self.holdout_scores_[:, k], float(p))
                                          for k, p in enumerate(self.levels_)])
        self.correction_ = float(self.corrections_[self.level_index_])

    def _correction(self, scores: np.ndarray, level: float) -> float:
        """ĉ at ``level`` from holdout ratios (non-shift schemes)."""
        if self._uniform:
            return conformal_quantile(scores, level)
        w = self.holdout_weights_
        s, c = _sorted_cumulative(scores, w)
        return float(_weighted_from_sorted(s, c, np.array([w.max()]), level)[0])

    def _corrected(self, sites: SiteTable) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(raw q_θ (n, K), corrected level-monotone widths (n, K), density ratios (n,) or None), eV/Å."""
        raw = self._raw(sites)
        if not self.conformal:
            return raw, raw.copy(), None
        ratios = None
        if self._shift:
            ratios = self.weight_scheme_.weights(sites)
            c = np.stack([_weighted_from_sorted(*self._sorted[k], ratios, float(p))
                          for k, p in enumerate(self.levels_)], axis=1)
        else:
            c = self.corrections_[None, :]
        w = raw * c  # raw > 0, so an infinite factor gives +inf, never NaN
        return raw, np.maximum.accumulate(w, axis=1), ratios

    # -------------------------------------------------------------- predict
    def predict_uncorrected(self, sites: SiteTable) -> np.ndarray:
        """q_θ at ``confidence`` without the conformal factor, ndarray (n,), eV/Å."""
        self._check_fitted()
        check_sites(sites)
        self._check_descriptors(sites)
        return self._raw(sites)[:, self.level_index_]

    def predict(self, sites: SiteTable) -> np.ndarray:
        """Calibrated half-widths at ``confidence``, ndarray (n,), eV/Å (+inf if the holdout was too small)."""
        self._check_fitted()
        check_sites(sites)
        self._check_descriptors(sites)
        return self._corrected(sites)[1][:, self.level_index_]

    def predict_levels(self, sites: SiteTable, levels) -> np.ndarray:
        """Calibrated half-widths at several levels, ndarray (n, k), eV/Å, non-decreasing in the level.

        A level equal to a trained one (``levels_``) uses its column. Between two
        trained levels the widths are linearly interpolated in the level; below
        the lowest one they are interpolated linearly towards 0 at level 0.
        Above the highest trained level, with ``conformal=True`` the factor is
        re-derived on the holdout at the requested level using the highest
        trained quantile as the normaliser (exact split CP, never below the
        highest trained column); without correction the highest trained column
        is repeated (an under-estimate).
        """
        self._check_fitted()
        check_sites(sites)
        self._check_descriptors(sites)
        req = check_levels(levels)
        raw, w, ratios = self._corrected(sites)
        lv = self.levels_
        out = np.empty((len(sites), req.size))
        for j, p in enumerate(req):
            k = np.flatnonzero(np.abs(lv - p) <= _LEVEL_ATOL)
            if k.size:
                out[:, j] = w[:, k[0]]
            elif p < lv[0]:
                out[:, j] = w[:, 0] * (p / lv[0])
            elif p > lv[-1]:
                if self.conformal:
                    last = lv.size - 1
                    c = (_weighted_from_sorted(*self._sorted[last], ratios, float(p)) if self._shift
                         else self._correction(self.holdout_scores_[:, last], float(p)))
                    out[:, j] = np.maximum(raw[:, -1] * c, w[:, -1])
                else:
                    out[:, j] = w[:, -1]
            else:
                b = int(np.searchsorted(lv, p))
                t = (p - lv[b - 1]) / (lv[b] - lv[b - 1])
                out[:, j] = (1.0 - t) * w[:, b - 1] + t * w[:, b]
        return out

    def _check_descriptors(self, sites: SiteTable) -> None:
        d = self.x_mean_.shape[0]
        if sites.n_descriptors != d:
            raise ValueError(f"sites: descriptors have {sites.n_descriptors} columns, but q_θ was fitted on {d}")

    # ------------------------------------------------------------------ I/O
    def _get_state(self):
        w_meta, w_arrays = self.weight_scheme_.get_state()
        state = {
            "scale": self.scale_,
            "history": self.history_,
            "best_epoch": self.best_epoch_,
            "stop_reason": self.stop_reason_,
            "weights": w_meta,
            "shift_reference_weight": getattr(self, "shift_reference_weight_", None),
        }
        arrays = {
            "levels": self.levels_,
            "x_mean": self.x_mean_,
            "x_std": self.x_std_,
            "species": self.species_,
            "holdout_scores": self.holdout_scores_,
            "holdout_weights": self.holdout_weights_,
            "corrections": self.corrections_,
        }
        arrays.update({f"model__{k}": v.detach().cpu().numpy() for k, v in self.model_.state_dict().items()})
        arrays.update({f"weights__{k}": v for k, v in w_arrays.items()})
        return state, arrays

    @classmethod
    def _from_saved(cls, params, state, arrays):
        params = dict(params)
        if params.get("weights") == "array":  # values are restored with the state below
            params["weights"] = "uniform"
        cal = cls(**params)
        cal._set_state(state, arrays)
        return cal

    def _set_state(self, state, arrays):
        torch = _torch()
        self.levels_ = np.asarray(arrays["levels"], dtype=np.float64)
        self.level_index_ = int(np.flatnonzero(np.isclose(self.levels_, self.confidence, atol=_LEVEL_ATOL))[0])
        self._set_standardisation(arrays["x_mean"], arrays["x_std"])
        self.species_ = np.asarray(arrays["species"], dtype=np.int64)
        self.holdout_scores_ = np.asarray(arrays["holdout_scores"], dtype=np.float64).reshape(-1, self.levels_.size)
        self.holdout_weights_ = np.asarray(arrays["holdout_weights"], dtype=np.float64)
        self.scale_ = float(state["scale"])
        self.history_ = list(state.get("history", []))
        self.best_epoch_ = int(state.get("best_epoch", 0))
        self.stop_reason_ = state.get("stop_reason", "")
        w_arrays = {k[len("weights__"):]: v for k, v in arrays.items() if k.startswith("weights__")}
        self.weight_scheme_ = weight_scheme_from_state(state["weights"], w_arrays)
        self.weights = self.weight_scheme_
        model = _module_class()(self.x_mean_.size, self.species_.size, self.hidden, self.levels_.size, _EPS)
        sd = {k[len("model__"):]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("model__")}
        model.load_state_dict(sd)
        model.eval()
        self.model_ = model
        self._prepare_correction(None)
        # the shift summary used the target at fit time; keep the saved values
        self.corrections_ = np.asarray(arrays["corrections"], dtype=np.float64)
        self.correction_ = float(self.corrections_[self.level_index_])
        if state.get("shift_reference_weight") is not None:
            self.shift_reference_weight_ = float(state["shift_reference_weight"])
