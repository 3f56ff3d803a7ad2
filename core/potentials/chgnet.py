"""CHGNet as a FlexCal potential: one batched forward pass -> energies, forces, descriptors.

CHGNet (Deng et al., Nat. Mach. Intell. 2023; package ``chgnet``, the optional extra
``flexcal[chgnet]``) is a universal potential trained on the Materials Project trajectories
(MPtrj, PBE/PBE+U). Its pretrained weights ship inside the wheel, so it works offline:

=================  ==========================================  =====================
FlexCal name       weights (``chgnet/pretrained/``)            cutoff (atom graph)
=================  ==========================================  =====================
``chgnet-0.3.0``   0.3.0 (MPtrj; alias ``chgnet``)             6 Å
``chgnet-0.2.0``   0.2.0 (MPtrj, the paper's weights)          5 Å
``chgnet-r2scan``  r2SCAN transfer-learned from 0.3.0          6 Å
=================  ==========================================  =====================

or a local checkpoint (``CHGNet.from_file`` format: ``{"model": {"state_dict", "model_args"},
...}``). Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain types
only, so loading one runs no code from the file (unlike a MACE ``.model``).

Units. CHGNet predicts the energy *per atom* (eV/atom; ``is_intensive``); ``compute`` returns
the total energy per structure, ``e_per_atom * n_atoms`` in eV, as CHGNet's own ASE
calculator reports it. Forces are eV/Å (the negative gradient of that total energy). CHGNet
computes in float32 only (its graphs are float32): forces are returned as float64 arrays of
float32 values, descriptors as float32.

Descriptors (``descriptors="all"``, the default): the atom features (64 per layer for the
pretrained models) after **every** atom-convolution layer, concatenated, layer 1 first:
``(N, 64 * n_conv)`` = (N, 256). They are rotation- and translation-invariant (CHGNet's
messages depend on distances and angles only). The third block (columns 128-191) is what
``CHGNet.predict_structure(..., return_atom_feas=True)`` returns ("atom_fea", the input of the
last convolution); ``descriptors="atom_fea"`` keeps only that block. They are read with
forward hooks on the convolution layers during the same forward pass that gives energies and
forces.

Structures. CHGNet needs a periodic cell. Periodic structures use their cell. A structure
without periodicity along some axes (a molecule, a slab, a wire) is placed in a box: every
non-periodic cell vector is replaced by one orthogonal to the periodic ones, of length::

    L = extent + 2 * cutoff + BOX_MARGIN        (BOX_MARGIN = 1 Å)

where ``extent`` is the span of the atoms along that direction and ``cutoff`` the model's
atom-graph cutoff (6 Å for 0.3.0). An atom and any periodic image of another atom are then
at least ``L - extent > 2 * cutoff`` apart along that direction, so no image enters any
neighbour list: the numbers are those of the isolated structure (a rigid translation keeps
the atoms inside the box; energies and forces do not depend on it). A cell given with
``pbc=False`` (as extxyz files often carry) is ignored. Atoms with no neighbour within the
cutoff (an isolated atom) are refused, as CHGNet's own converter does.
"""

from __future__ import annotations

import warnings

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from core.potentials.base import (
    PotentialCalculator,
    PotentialOutput,
    check_elements,
    check_structures,
    resolve_device,
    sha256_file,
    sha256_state_dict,
)
from core.torch_guard import TORCH_GUARD

#: FlexCal name -> chgnet's pretrained folder (the weights ship in the wheel)
CHGNET_MODELS: dict[str, str] = {"chgnet-0.3.0": "0.3.0", "chgnet-0.2.0": "0.2.0", "chgnet-r2scan": "r2scan"}
CHGNET_ALIASES: dict[str, str] = {"chgnet": "chgnet-0.3.0"}
CHGNET_TITLES: dict[str, str] = {"chgnet-0.3.0": "CHGNet 0.3.0", "chgnet-0.2.0": "CHGNet 0.2.0",
                                 "chgnet-r2scan": "CHGNet r2SCAN"}
DESCRIPTOR_CHOICES = ("all", "atom_fea")
BOX_MARGIN = 1.0  # Å, added to extent + 2 * cutoff along every non-periodic direction
_HASH_VERSION = "flexcal-chgnet-v1"


def chgnet_installed() -> bool:
    """Whether the optional ``chgnet`` package is importable."""
    import importlib.util

    return importlib.util.find_spec("chgnet") is not None


def pretrained_path(name: str) -> Path:
    """The checkpoint file of a pretrained CHGNet (``chgnet-0.3.0`` ...) inside the installed wheel."""
    name = CHGNET_ALIASES.get(name, name)
    if name not in CHGNET_MODELS:
        raise ValueError(f"model: unknown CHGNet name {name!r}; known: {', '.join([*CHGNET_MODELS, *CHGNET_ALIASES])}")
    if not chgnet_installed():
        raise ValueError(f"model: {name!r} needs the optional package chgnet: pip install 'flexcal[chgnet]'")
    import chgnet

    folder = Path(chgnet.__file__).parent / "pretrained" / CHGNET_MODELS[name]
    files = sorted(folder.glob("*.pth.tar"))
    if len(files) != 1:
        raise FileNotFoundError(f"model: expected one CHGNet checkpoint in {folder}, found {len(files)}")
    return files[0]


def is_chgnet_checkpoint(spec) -> bool:
    """Whether ``spec`` is an existing torch file holding a CHGNet checkpoint (read without unpickling)."""
    from core.potentials.registry import existing_file, sniff_torch_file

    path = existing_file(spec)
    if path is None or path.suffix == ".model":
        return False
    sniffed = sniff_torch_file(path)
    return (bool(sniffed) and {"state_dict", "model_args", "atom_graph_cutoff"} <= sniffed["strings"]
            and not any(g.startswith("mace.") for g in sniffed["globals"]))


def _checkpoint_model(path: Path, **kwargs):
    """A CHGNet from a checkpoint file, read weights-only (no code runs)."""
    import torch
    from chgnet.model import CHGNet

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path}: not a CHGNet checkpoint readable with weights_only=True ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    body = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(body, dict) or not {"state_dict", "model_args"} <= set(body):
        raise ValueError(f"{path}: not a CHGNet checkpoint (expected a dict with 'model': "
                         "{'state_dict', 'model_args'}, as CHGNet's Trainer saves)")
    with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its parameter count
        return CHGNet.from_dict(body, **kwargs)


def box_cell(atoms, cutoff: float, margin: float = BOX_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """(cell (3, 3) Å, positions (n, 3) Å) CHGNet sees for ``atoms`` (see the module docstring).

    Periodic axes keep their cell vectors; every non-periodic one becomes a vector orthogonal
    to the periodic ones, of length extent + 2 * cutoff + margin, and the atoms are translated
    to lie ``cutoff + margin / 2`` inside it.
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.array(atoms.cell[:], dtype=np.float64)
    pos = np.array(atoms.positions, dtype=np.float64)
    periodic = [cell[i] for i in range(3) if pbc[i]]
    if any(np.linalg.norm(v) < 1e-8 for v in periodic):
        raise ValueError(f"structure {atoms.get_chemical_formula()}: periodic along an axis whose cell vector is zero")
    if pbc.all():
        if abs(np.linalg.det(cell)) < 1e-6:
            raise ValueError(f"structure {atoms.get_chemical_formula()}: periodic cell with zero volume")
        return cell, pos
    dirs = _complement_directions(periodic)
    trial = cell.copy()
    free = [i for i in range(3) if not pbc[i]]
    for i, d in zip(free, dirs):
        trial[i] = d
    if np.linalg.det(trial) < 0:  # keep the cell right-handed
        dirs[-1] = -dirs[-1]
    for i, d in zip(free, dirs):
        proj = pos @ d
        extent = float(proj.max() - proj.min())
        cell[i] = d * (extent + 2.0 * cutoff + margin)
        pos = pos + np.outer(np.ones(len(pos)), d) * (cutoff + margin / 2.0 - proj.min())
    return cell, pos


def _complement_directions(periodic: list) -> list:
    """Orthonormal directions spanning the complement of the periodic vectors' span."""
    if not periodic:
        return [np.eye(3)[k] for k in range(3)]
    u = periodic[0] / np.linalg.norm(periodic[0])
    if len(periodic) == 2:
        n = np.cross(periodic[0], periodic[1])
        if np.linalg.norm(n) < 1e-8:
            raise ValueError("structure: its two periodic cell vectors are parallel")
        return [n / np.linalg.norm(n)]
    e = np.eye(3)[int(np.argmin(np.abs(u)))]
    v1 = e - (e @ u) * u
    v1 /= np.linalg.norm(v1)
    return [v1, np.cross(u, v1)]


class CHGNetPotential:
    """A CHGNet model behind the Potential protocol.

    Parameters
    ----------
    model : str, path or chgnet.model.CHGNet, default "chgnet-0.3.0"
        A FlexCal name (``CHGNET_MODELS`` or the alias ``"chgnet"``), a checkpoint file, or
        a CHGNet instance (used as is, not copied).
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}
    descriptors : {"all", "atom_fea"}
        All convolution layers' atom features (N, 64 * n_conv), or only CHGNet's own
        ``atom_fea`` (N, 64).
    name : str, optional
        Display name; default the FlexCal name or the file name without ``.pth.tar``.

    Attributes
    ----------
    name, identity, atomic_numbers : see ``Potential`` (atomic numbers 1-94)
    model : chgnet.model.CHGNet
    cutoff : float, atom-graph cutoff in Å
    n_descriptors : int
    dtype : "float32"
    """

    dtype = "float32"

    def __init__(self, model="chgnet-0.3.0", *, device: str = "auto", descriptors: str = "all",
                 name: str | None = None):
        if descriptors not in DESCRIPTOR_CHOICES:
            raise ValueError(f"descriptors: expected one of {DESCRIPTOR_CHOICES}, got {descriptors!r}")
        self.device = resolve_device(device)
        self.descriptors = descriptors
        source = None
        if isinstance(model, (str, os.PathLike)):
            if not chgnet_installed():
                raise ValueError(f"model: {str(model)!r} needs the optional package chgnet: pip install 'flexcal[chgnet]'")
            key = CHGNET_ALIASES.get(str(model), str(model))
            if key in CHGNET_MODELS:
                path = pretrained_path(key)
                version = CHGNET_MODELS[key]
                # as CHGNet.load: only 0.2.0 was trained with a bias on the MLP outputs
                net = _checkpoint_model(path, mlp_out_bias=version == "0.2.0", version=version)
                default_name = key
            else:
                path = Path(model).expanduser()
                if path.is_dir():
                    raise ValueError(f"model: {str(path)!r} is a directory, not a CHGNet checkpoint file")
                if not path.is_file():
                    raise FileNotFoundError(f"model file {str(path)!r} does not exist")
                net = _checkpoint_model(path)
                default_name = path.name.removesuffix(".tar").removesuffix(".pth")
            source = f"file:{sha256_file(path)}"
            for p in net.parameters():
                p.requires_grad_(False)
        elif type(model).__name__ == "CHGNet" and hasattr(model, "graph_converter"):
            net, default_name = model, f"CHGNet {model.version}" if getattr(model, "version", None) else "CHGNet"
        else:
            raise TypeError(f"model: expected a CHGNet name, a checkpoint path or a CHGNet, got {type(model).__name__}")
        self.model = net.to(self.device).eval()
        self.name = name or default_name
        self.cutoff = float(net.graph_converter.atom_graph_cutoff)
        self.atomic_numbers = tuple(range(1, int(net.atom_embedding.embedding.num_embeddings) + 1))
        self._n_conv = len(net.atom_conv_layers)
        width = int(net.atom_fea_dim)
        self.n_descriptors = width * self._n_conv if descriptors == "all" else width
        h = hashlib.sha256()
        h.update(_HASH_VERSION.encode())
        h.update((source or f"weights:{sha256_state_dict(net)}").encode())
        h.update(json.dumps(net.model_args, sort_keys=True, default=str).encode())
        h.update(f"|descriptors={descriptors}|dtype=float32".encode())
        self.identity = h.hexdigest()

    def __repr__(self) -> str:
        return (f"CHGNetPotential(name={self.name!r}, device={self.device!r}, cutoff={self.cutoff}, "
                f"n_descriptors={self.n_descriptors})")

    # ----------------------------------------------------------- graphs
    def to_structure(self, atoms):
        """The ``pymatgen.core.Structure`` CHGNet sees for ``atoms`` (molecules boxed; see ``box_cell``)."""
        from pymatgen.core import Lattice, Structure

        cell, positions = box_cell(atoms, self.cutoff)
        return Structure(Lattice(cell), [int(z) for z in atoms.numbers], positions, coords_are_cartesian=True)

    def graphs(self, structures: Sequence) -> list:
        """CHGNet ``CrystalGraph`` of every structure, on the model's device."""
        converter = self.model.graph_converter
        out = []
        for i, atoms in enumerate(structures):
            try:
                graph = converter(self.to_structure(atoms), graph_id=str(i))
            except ValueError as exc:
                if "isolated atom" not in str(exc):
                    raise ValueError(f"structures[{i}]: {exc}") from None
                raise ValueError(
                    f"structures[{i}] ({atoms.get_chemical_formula()}): some atoms have no neighbour within "
                    f"CHGNet's cutoff of {self.cutoff:g} Å (isolated atoms); CHGNet cannot predict them"
                ) from None
            out.append(graph.to(self.device))
        return out

    # ----------------------------------------------------------- compute
    def compute(self, structures: Sequence) -> PotentialOutput:
        """Energies, forces and descriptors of a batch of structures in ONE forward pass.

        Parameters
        ----------
        structures : sequence of ase.Atoms (m structures, N atoms in all)

        Returns
        -------
        PotentialOutput
            energies (m,) float64 eV (total per structure = CHGNet's eV/atom x n_atoms),
            forces (N, 3) float64 eV/Å, descriptors (N, d) float32 (d = ``n_descriptors``),
            committee_std None. Atoms in input order.
        """
        structures = check_structures(structures)
        check_elements(structures, self.atomic_numbers, f"model {self.name!r}")
        import torch

        graphs = self.graphs(structures)
        layers: list = []
        hooks = [layer.register_forward_hook(lambda _m, _args, out: layers.append(out.detach()))
                 for layer in self.model.atom_conv_layers]
        try:
            with torch.enable_grad(), warnings.catch_warnings(), TORCH_GUARD.calls():  # forces: a gradient
                # chgnet converts a graph tensor to a Python scalar inside its forward: a harmless notice
                warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True")
                pred = self.model(graphs, task="ef")
        finally:
            for h in hooks:
                h.remove()
        if len(layers) != self._n_conv:
            raise RuntimeError(f"CHGNet ran {len(layers)} atom convolutions, expected {self._n_conv}")
        n_atoms = torch.tensor([len(a) for a in structures], dtype=torch.float64)
        energies = pred["e"].detach().cpu().to(torch.float64)
        if self.model.is_intensive:
            energies = energies * n_atoms
        forces = torch.cat([f.detach() for f in pred["f"]]).cpu().numpy().astype(np.float64)
        feats = torch.cat(layers, dim=1) if self.descriptors == "all" else layers[self._n_conv - 2]
        return PotentialOutput(
            energies=energies.numpy().reshape(-1),
            forces=forces,
            descriptors=feats.cpu().numpy().astype(np.float32, copy=False),
        )

    def ase_calculator(self):
        """An ASE calculator over :meth:`compute` (energy, free_energy, forces; molecules boxed)."""
        return PotentialCalculator(self)


def load_chgnet(spec="chgnet-0.3.0", *, device: str = "auto", dtype: str = "float32", descriptors: str = "all",
                name: str | None = None) -> CHGNetPotential:
    """The CHGNet backend's loader (``load_potential`` routes CHGNet names and checkpoints here).

    ``dtype`` must be "float32": CHGNet builds float32 graphs and has no float64 mode.
    """
    if dtype != "float32":
        raise ValueError(f"dtype: CHGNet computes in float32 only (its graphs are float32); got {dtype!r}. "
                         "Pass dtype=None or 'float32'")
    return CHGNetPotential(spec, device=device, descriptors=descriptors, name=name)


def chgnet_from_calculator(calc):
    """A CHGNetPotential over a ``chgnet.model.dynamics.CHGNetCalculator``'s model, else None."""
    is_chgnet = any(c.__name__ == "CHGNetCalculator" and c.__module__.startswith("chgnet.") for c in type(calc).__mro__)
    if not is_chgnet or type(getattr(calc, "model", None)).__name__ != "CHGNet":
        return None
    return CHGNetPotential(calc.model, device=str(calc.device))
