"""The backends FlexCal ships: the embedded demo models, CHGNet and MACE.

Registered on first use of the registry (:func:`core.potentials.registry.backends`), in this
order (a backend registered later is asked first; their specs do not overlap):

* ``demo``: ``"demo"`` and ``"demo:<family>"`` -> the family's demo MACE model
  (``core.demo.demo_model_path``), a file of this repository;
* ``chgnet``: CHGNet names and CHGNet checkpoint files (``core.potentials.chgnet``);
* ``mace``: MACE foundation names, ``.model`` files, committees (``core.potentials.mace``).

Nothing heavy is imported here: each loader imports its module when called.
"""

from __future__ import annotations

NAMES = ("demo", "chgnet", "mace")


def _demo_models() -> dict[str, str]:
    from core.demo import FAMILIES

    titles = {"licl": "Demo MACE (LiCl crystal)", "surface": "Demo MACE (Cu(111) surface)",
              "molecule": "Demo MACE (ethanol)"}
    return {f"demo:{f}": titles.get(f, f"Demo MACE ({f})") for f in FAMILIES}


def _demo_offline(name: str) -> bool:
    from core.demo import demo_model_path

    try:
        return demo_model_path(name.partition(":")[2] or None).is_file()
    except (FileNotFoundError, ValueError):
        return False


def _load_demo(spec, *, device="auto", dtype="float64", committee=(), head=None, jit_optimize=False):
    from core.potentials.mace import load_mace

    return load_mace(spec, committee, device=device, dtype=dtype, head=head, jit_optimize=jit_optimize)


def _is_demo(spec) -> bool:
    return isinstance(spec, str) and (spec == "demo" or spec.startswith("demo:"))


def _chgnet_matches(spec) -> bool:
    from core.potentials.chgnet import CHGNET_ALIASES, CHGNET_MODELS, is_chgnet_checkpoint

    if isinstance(spec, str) and (spec in CHGNET_MODELS or spec in CHGNET_ALIASES):
        return True
    return is_chgnet_checkpoint(spec)


def _chgnet_offline(name: str) -> bool:
    from core.potentials.chgnet import chgnet_installed, pretrained_path

    return chgnet_installed() and pretrained_path(name).is_file()


def _load_chgnet(spec, *, device="auto", dtype="float32", descriptors="all", name=None):
    from core.potentials.chgnet import load_chgnet

    return load_chgnet(spec, device=device, dtype=dtype, descriptors=descriptors, name=name)


def _chgnet_from_calculator(calc):
    if not type(calc).__module__.startswith("chgnet."):
        return None
    from core.potentials.chgnet import chgnet_from_calculator

    return chgnet_from_calculator(calc)


def _mace_matches(spec) -> bool:
    from core.potentials.mace_foundation import FOUNDATION_MODELS

    if isinstance(spec, str) and spec in FOUNDATION_MODELS:
        return True
    from core.potentials.mace import is_mace_file

    return is_mace_file(spec)


def _mace_offline(name: str) -> bool:
    from core.potentials.mace_foundation import foundation_model_cached

    return foundation_model_cached(name)


def _load_mace(spec, *, device="auto", dtype="float64", committee=(), head=None, jit_optimize=False):
    from core.potentials.mace import load_mace

    return load_mace(spec, committee, device=device, dtype=dtype, head=head, jit_optimize=jit_optimize)


def _mace_from_calculator(calc):
    if not type(calc).__module__.startswith("mace."):
        return None
    from core.potentials.mace import mace_from_calculator

    return mace_from_calculator(calc)


def register_all(register) -> None:
    """Register the built-in backends with ``register`` (:func:`register_backend`)."""
    from core.demo import DEFAULT_FAMILY
    from core.potentials.chgnet import CHGNET_ALIASES, CHGNET_TITLES
    from core.potentials.mace_foundation import FOUNDATION_MODELS

    register(
        _is_demo, _load_demo, name="demo", label="demo MACE", offline=_demo_offline, kind="small demo model",
        description="the small MACE models trained here on the embedded demo data (datasets/)",
        models=_demo_models(), aliases={"demo": f"demo:{DEFAULT_FAMILY}"}, committee=True, runs_code=True,
        unavailable="model file missing (see datasets/README.md)",
    )
    register(
        _chgnet_matches, _load_chgnet, name="chgnet", label="CHGNet", offline=_chgnet_offline,
        kind="foundation model", models=dict(CHGNET_TITLES), aliases=dict(CHGNET_ALIASES),
        description="CHGNet universal potential (MPtrj PBE/PBE+U; r2SCAN variant); weights ship in the "
                    "chgnet wheel",
        unavailable="not installed (pip install 'flexcal[chgnet]')", from_calculator=_chgnet_from_calculator,
    )
    register(
        _mace_matches, _load_mace, name="mace", label="MACE", offline=_mace_offline, kind="foundation model",
        models={n: n for n in FOUNDATION_MODELS}, committee=True, runs_code=True,
        description="MACE models: foundation models by name (mace-torch's cache) or local .model files",
        unavailable="not cached: downloaded by mace-torch on first use", from_calculator=_mace_from_calculator,
    )
