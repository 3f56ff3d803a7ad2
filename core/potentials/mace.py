"""MACE as a FlexCal potential: one forward pass -> energies, forces, descriptors.

Models come from :func:`core.potentials.load_potential` (the one resolver), which routes

* a foundation-model name (``FOUNDATION_MODELS``, see :mod:`core.potentials.mace_foundation`),
* ``"demo"`` / ``"demo:<family>"`` (the embedded demo models),
* a local ``.model`` file written by ``mace_run_train`` / ``torch.save``,
* a committee (extra names or files in ``committee=``)

to :func:`load_mace`. :meth:`MACEPotential.from_calculator` wraps the models of an existing
``MACECalculator`` (what ``CalibratedCalculator`` does with one).

Trust: ``.model`` files are Python pickles and ``torch.load`` executes code from them.
``load_potential(path, trusted=False)`` refuses them before reading; this module loads what
it is given. Importing mace sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``; every import and
load here restores the variable afterwards (``mace_modules`` and ``unpickling_mace`` in
:mod:`core.potentials.mace_foundation`).

Descriptors are exactly what ``MACECalculator.get_descriptors(invariants_only=True)``
returns: the scalar (L=0) channels of the node features of every interaction
layer, concatenated (layer 1 first; the last layer carries scalars only). They
come out of the same forward pass as energies and forces (``out["node_feats"]``),
instead of the second pass ``get_descriptors`` makes.

Committee: energies, forces and descriptors are those of the *primary* model
(the first one), so errors do not change when a committee is added; the
committee only supplies ``committee_std``, the per-atom spread of predicted
forces over all M models (primary included)::

    committee_std_i = sqrt( sum_{k in x,y,z} Var_m[ F_{m,i,k} ] )   (population variance, ddof=0)

i.e. the Euclidean norm of the per-component standard deviations, in eV/Å
(the square root of the trace of the force covariance; the same variance
``MACECalculator`` reports as ``forces_var``). A potential made by ``from_calculator``
predicts the committee *mean* instead, as ``MACECalculator`` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from core.potentials.base import (
    PotentialOutput,
    check_elements,
    check_structures,
    resolve_device,
    sha256_file,
    sha256_state_dict,
)
from core.potentials.mace_foundation import (  # noqa: F401  (re-exported)
    DEFAULT_MODEL,
    FOUNDATION_MODELS,
    FoundationModelUnavailable,
    foundation_model_path,
    foundation_model_source,
    mace_modules,
    unpickling_mace,
)
from core.torch_guard import TORCH_GUARD

DTYPES = ("float64", "float32")
_HASH_VERSION = "flexcal-mace-v1"


_DEFAULT_DTYPE_LOCK = threading.RLock()


@contextlib.contextmanager
def _default_dtype(dtype: str):
    """torch's default dtype set to ``dtype`` for the block, one block at a time per process.

    The default dtype is process-wide: without the lock a float32 model's batch built in another
    thread (or the restore at its end) would silently round this thread's float64 graph.
    """
    import torch

    with _DEFAULT_DTYPE_LOCK:
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64 if dtype == "float64" else torch.float32)
        try:
            yield
        finally:
            torch.set_default_dtype(old)


# -------------------------------------------------------------- model files
def is_mace_file(spec) -> bool:
    """Whether ``spec`` is an existing file to load as a MACE model: a ``.model`` suffix, or a
    torch archive whose pickle references ``mace.*`` classes (read without unpickling)."""
    from core.potentials.registry import existing_file, sniff_torch_file

    path = existing_file(spec)
    if path is None:
        return False
    if path.suffix == ".model":
        return True
    sniffed = sniff_torch_file(path)
    return bool(sniffed) and any(g.startswith("mace.") for g in sniffed["globals"])


def load_model_file(path: Path, device: str):
    """The ``torch.nn.Module`` pickled in a MACE ``.model`` file (trusted: unpickling runs its code) on ``device``.

    Unpickled inside :func:`core.potentials.mace_foundation.unpickling_mace` (alone in the process,
    mace's environment change undone after).
    """
    import torch

    try:
        with unpickling_mace():
            model = torch.load(str(path), map_location=device, weights_only=False)
    except Exception as exc:
        raise ValueError(
            f"{path}: not a loadable MACE .model file ({type(exc).__name__}: {exc}). "
            "A truncated download or a TorchScript '*_compiled.model' gives this; "
            "use the plain .model file mace_run_train writes."
        ) from None
    if isinstance(model, dict):
        raise ValueError(
            f"{path}: contains a dict (a training checkpoint or state dict), not a model; "
            "use the .model file mace_run_train writes"
        )
    needed = ("atomic_numbers", "r_max", "num_interactions", "products")
    missing = [a for a in needed if not hasattr(model, a)]
    if not isinstance(model, torch.nn.Module) or missing:
        raise ValueError(
            f"{path}: not a MACE model (got {type(model).__name__}, lacking {missing or 'nothing'})"
        )
    return model


def _resolve_model(spec) -> tuple[str, Path]:
    """(display name, local file) for a foundation name, a demo name or a path."""
    if isinstance(spec, str) and spec in FOUNDATION_MODELS:
        return spec, foundation_model_path(spec)
    if isinstance(spec, str) and (spec == "demo" or spec.startswith("demo:")):
        from core.demo import demo_model_path

        path = Path(demo_model_path(spec.partition(":")[2] or None))
        return path.stem, path
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"model: expected a foundation-model name or a path, got {type(spec).__name__}")
    path = Path(spec).expanduser()
    if path.is_file():
        return path.stem, path
    if path.is_dir():
        raise ValueError(f"model: {str(path)!r} is a directory, not a model file; pass the .model file inside it")
    if isinstance(spec, str) and os.sep not in spec and not spec.endswith(".model"):
        raise ValueError(
            f"model: {spec!r} is neither a known model name nor an existing file; "
            f"known MACE names: {', '.join(FOUNDATION_MODELS)}"
        )
    raise FileNotFoundError(f"model file {str(path)!r} does not exist")


# ------------------------------------------------------------- the potential
class MACEPotential:
    """A MACE model (optionally with a committee) behind the Potential protocol.

    Parameters
    ----------
    model : str or path
        Foundation-model name (see ``FOUNDATION_MODELS``), ``"demo[:<family>]"`` or a
        ``.model`` file (a pickle: loading it runs code from it).
    committee : iterable of str or path, optional
        Further models; with them ``compute`` also returns ``committee_std``.
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}
        ``"auto"``: CUDA when available, else CPU.
    dtype : {"float64", "float32"}
        The models are cast to it (float64 reproduces MACECalculator exactly).
    head : str, optional
        Head of a multi-head model; default: the only head, else the one named
        "default" (as MACECalculator chooses).
    name : str, optional
        Display name; default the foundation name or the file stem.
    jit_optimize : bool, default False
        Let TorchScript's profiling executor optimise e3nn's scripted code. It
        profiles and re-specialises on new tensor shapes, and batches of
        different structures always have new shapes (atom and edge counts): on
        CPU this cost about 20 % more CPU time over 30 batches of varying size,
        with the same steady-state speed. Numbers are identical either way; try
        True on GPU.

    Attributes
    ----------
    name, identity, atomic_numbers : see ``Potential``
    model_paths : list of Path (empty for :meth:`from_calculator`)
    r_max : float, cutoff in Å
    heads : list of str; head : str
    n_descriptors : int, descriptor width d
    predictions : {"primary", "mean"}
        Whose energies/forces ``compute`` returns: the first model's, or the committee
        mean (``from_calculator``, as MACECalculator reports them).
    concurrent_compute : True
        ``compute`` may run in several threads at once (``core.batching``): each call builds its
        own batch, and the models' forward passes change no module state.
    """

    concurrent_compute = True

    def __init__(self, model, committee: Iterable = (), *, device: str = "auto", dtype: str = "float64",
                 head: str | None = None, name: str | None = None, jit_optimize: bool = False):
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
        if isinstance(committee, (str, os.PathLike)):
            committee = [committee]
        device = resolve_device(device)
        resolved = [_resolve_model(s) for s in [model, *list(committee)]]
        paths = [p for _, p in resolved]
        n_extra = len(resolved) - 1
        import torch

        tdtype = torch.float64 if dtype == "float64" else torch.float32
        models = [load_model_file(p, device).to(device=device, dtype=tdtype) for p in paths]
        self.model_paths = paths
        self._setup(
            models, labels=[str(p) for p in paths], hashes=[sha256_file(p) for p in paths], device=device,
            dtype=dtype, head=head, jit_optimize=jit_optimize,
            name=name or (resolved[0][0] + (f" (+{n_extra} committee)" if n_extra else "")),
        )

    @classmethod
    def from_calculator(cls, calc, *, name: str | None = None) -> "MACEPotential":
        """A potential over the models of a ``mace.calculators.MACECalculator`` (no copy).

        ``compute`` then gives what the calculator gives: energy and forces averaged over its
        models (``predictions="mean"``), from graphs built with its key specification and
        head; descriptors of its first model; ``committee_std`` when it holds several
        models. The identity hashes the models' weights (not a file).

        Raises
        ------
        ValueError
            The calculator is not a plain MACE calculator this route reproduces: another
            model type, compiled or padded graphs, or energy/length unit conversions.
        """
        needed = ("models", "default_dtype", "head", "device", "info_keys", "arrays_keys")
        missing = [a for a in needed if not hasattr(calc, a)]
        if missing or getattr(calc, "model_type", "MACE") != "MACE":
            raise ValueError(f"calc: not a plain MACECalculator (model_type {getattr(calc, 'model_type', '?')!r}, "
                             f"lacking {missing or 'nothing'})")
        if getattr(calc, "use_compile", False) or getattr(calc, "pad_num_atoms", 0) or getattr(calc, "pad_num_edges", 0):
            raise ValueError("calc: compiled or padded MACE graphs are left to the calculator itself")
        if getattr(calc, "energy_units_to_eV", 1.0) != 1.0 or getattr(calc, "length_units_to_A", 1.0) != 1.0:
            raise ValueError("calc: MACECalculator with unit conversions is left to the calculator itself")
        import torch

        models = list(calc.models)
        dtype = "float64" if next(models[0].parameters()).dtype == torch.float64 else "float32"
        self = cls.__new__(cls)
        self.model_paths = []
        arrays_keys = dict(calc.arrays_keys)
        arrays_keys[getattr(calc, "charges_key", "Qs")] = "charges"
        self._setup(
            models, labels=[f"MACECalculator model {i}" for i in range(len(models))],
            hashes=[sha256_state_dict(m) for m in models], device=str(calc.device), dtype=dtype,
            head=calc.head, jit_optimize=False, name=name or "MACECalculator", predictions="mean",
            keys=(dict(calc.info_keys), arrays_keys),
        )
        return self

    def _setup(self, models, *, labels, hashes, device, dtype, head, jit_optimize, name,
               predictions="primary", keys=None) -> None:
        self.device, self.dtype, self.jit_optimize, self.name = device, dtype, bool(jit_optimize), name
        self.predictions = predictions
        self._keys = keys or ({"total_spin": "spin", "total_charge": "charge", "external_field": "external_field"},
                              {"Qs": "charges"})  # the key specification MACECalculator uses by default
        for m in models:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        self.models = models
        first = models[0]
        self.atomic_numbers = tuple(int(z) for z in first.atomic_numbers)
        self.r_max = float(first.r_max)
        for label, m in zip(labels[1:], models[1:]):
            if tuple(int(z) for z in m.atomic_numbers) != self.atomic_numbers:
                raise ValueError(
                    f"committee: {label} knows elements {[int(z) for z in m.atomic_numbers]}, "
                    f"the primary model {list(self.atomic_numbers)}; all members must match"
                )
            if float(m.r_max) != self.r_max:
                raise ValueError(f"committee: {label} has r_max {float(m.r_max)}, the primary model {self.r_max}")
        self.heads = list(getattr(first, "heads", None) or ["Default"])
        self.head = self._choose_head(head)

        mace_modules()
        from e3nn import o3
        from mace.modules.utils import extract_invariant

        self._extract_invariant = extract_invariant
        irreps_out = o3.Irreps(str(first.products[0].linear.irreps_out))
        self._l_max = int(irreps_out.lmax)
        self._num_features = irreps_out.dim // (self._l_max + 1) ** 2
        self._num_interactions = int(first.num_interactions)
        self.n_descriptors = self._num_features * self._num_interactions

        self._file_hashes = list(hashes)
        h = hashlib.sha256()
        h.update(_HASH_VERSION.encode())
        for fh in self._file_hashes:
            h.update(fh.encode())
        h.update(f"|dtype={dtype}|head={self.head}".encode())
        if predictions != "primary":
            h.update(f"|predictions={predictions}".encode())
        self.identity = h.hexdigest()

    def __repr__(self) -> str:
        return (f"MACEPotential(name={self.name!r}, n_models={len(self.models)}, dtype={self.dtype!r}, "
                f"device={self.device!r}, n_descriptors={self.n_descriptors})")

    def _choose_head(self, head: str | None) -> str:
        if head is not None:
            if head not in self.heads:
                raise ValueError(f"head: {head!r} is not a head of this model; heads: {self.heads}")
            return head
        if len(self.heads) == 1:
            return self.heads[0]
        default = [h for h in self.heads if h.lower() == "default"]
        if not default:
            raise ValueError(f"head: this model has several heads and none is 'default'; choose one of {self.heads}")
        return default[0]

    # ----------------------------------------------------------- compute
    def _batch(self, structures):
        from mace import data as mace_data
        from mace.tools import torch_geometric, utils

        keyspec = mace_data.KeySpecification(info_keys=dict(self._keys[0]), arrays_keys=dict(self._keys[1]))
        z_table = utils.AtomicNumberTable(list(self.atomic_numbers))
        with _default_dtype(self.dtype):
            graphs = [
                mace_data.AtomicData.from_config(
                    mace_data.config_from_atoms(atoms, key_specification=keyspec, head_name=self.head),
                    z_table=z_table,
                    cutoff=self.r_max,
                    heads=self.heads,
                )
                for atoms in structures
            ]
        return torch_geometric.Batch.from_data_list(graphs).to(self.device)

    def compute(self, structures: Sequence) -> PotentialOutput:
        """Energies, forces and descriptors of a batch of structures in one forward pass.

        Parameters
        ----------
        structures : sequence of ase.Atoms (m structures, N atoms in all)

        Returns
        -------
        PotentialOutput
            energies (m,) eV, forces (N, 3) eV/Å, descriptors (N, d) in the
            model dtype, committee_std (N,) eV/Å or None. Atoms in input order.
        """
        structures = check_structures(structures)
        check_elements(structures, self.atomic_numbers, f"model {self.name!r}")

        import torch

        batch = self._batch(structures)
        with torch.jit.optimized_execution(self.jit_optimize), TORCH_GUARD.calls():
            return self._forward(batch)

    def _forward(self, batch) -> PotentialOutput:
        import torch

        n_models = len(self.models)
        forces_all, energies_all = [], []
        descriptors = None
        for k, model in enumerate(self.models):
            # the model sets requires_grad on positions in place; give every member its own copy
            b = batch.clone() if k < n_models - 1 else batch
            out = model(b.to_dict(), training=False, compute_force=True)
            forces_all.append(out["forces"].detach())
            energies_all.append(out["energy"].detach())
            if k == 0:
                feats = out.get("node_feats")
                if feats is None:
                    raise ValueError(f"model {self.name!r} returns no node_feats; descriptors need a MACE model")
                descriptors = self._extract_invariant(
                    feats.detach(),
                    num_layers=self._num_interactions,
                    num_features=self._num_features,
                    l_max=self._l_max,
                )
        if self.predictions == "mean":
            energies, forces = torch.stack(energies_all).mean(dim=0), torch.stack(forces_all).mean(dim=0)
        else:
            energies, forces = energies_all[0], forces_all[0]
        committee_std = None
        if n_models > 1:
            stack = torch.stack(forces_all)  # (M, N, 3)
            committee_std = torch.sqrt(torch.var(stack, dim=0, unbiased=False).sum(dim=1))
            committee_std = committee_std.cpu().numpy().astype(np.float64)
        return PotentialOutput(
            energies=energies.cpu().numpy().astype(np.float64).reshape(-1),
            forces=forces.cpu().numpy().astype(np.float64),
            descriptors=descriptors.cpu().numpy(),
            committee_std=committee_std,
        )

    def ase_calculator(self, committee: bool = False):
        """mace-torch's ``MACECalculator`` sharing this potential's model(s).

        Parameters
        ----------
        committee : bool, default False
            False: the primary model only (what FlexCal calibrates). True: all
            models (MACECalculator then averages them and reports variances).
        """
        mace_modules()
        from mace.calculators import MACECalculator

        models = self.models if committee else self.models[:1]
        kwargs = {"head": self.head} if len(self.heads) > 1 else {}
        return MACECalculator(models=list(models), device=self.device, default_dtype=self.dtype, **kwargs)


def load_mace(spec, committee: Iterable = (), *, device: str = "auto", dtype: str = "float64",
              head: str | None = None, jit_optimize: bool = False) -> MACEPotential:
    """The MACE backend's loader (``load_potential`` routes MACE names and files here)."""
    return MACEPotential(spec, committee, device=device, dtype=dtype, head=head, jit_optimize=jit_optimize)


def mace_from_calculator(calc):
    """``MACEPotential.from_calculator(calc)`` for a MACECalculator it reproduces, else None."""
    is_mace = any(c.__name__ == "MACECalculator" and c.__module__.startswith("mace.") for c in type(calc).__mro__)
    if not is_mace:
        return None
    try:
        return MACEPotential.from_calculator(calc)
    except ValueError:
        return None
