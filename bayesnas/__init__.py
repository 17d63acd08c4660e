"""bayesnas: Bayesian neural architecture search in Pyro.

Importing the package changes nothing global: Pyro's settings, the param store, torch's threads and default dtype,
warnings filters and matplotlib's backend stay as they were. The search loop runs in Pyro's ``module_local_params``
mode, scoped to the run (:func:`bayesnas.infer.run_search`).
"""

__version__ = "0.1.0"
