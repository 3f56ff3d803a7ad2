"""Importing this module imports mace-torch and e3nn with mace's environment change contained.

For lists that take module names, such as the forkserver preload of ``core.distributed``'s local
workers: preloading ``mace.calculators`` itself would leave ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``
set in the forkserver and every worker forked from it (every ``torch.load`` there unsafe).
"""

from core.potentials.mace_foundation import mace_modules

mace_modules()
