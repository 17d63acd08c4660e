"""bayesnas: Bayesian neural architecture search in Pyro.

Importing the package turns on Pyro's ``module_local_params`` setting: every ``PyroModule`` keeps its
parameters on the module (not in the global param store), so models and guides are ordinary
``nn.Module`` objects for torch optimisers, ``state_dict`` checkpoints and ``.to(device)``.
"""

import pyro

pyro.settings.set(module_local_params=True)

__version__ = "0.1.0"
