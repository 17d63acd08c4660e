"""Importing any bayesnas module changes nothing global (checked in a fresh interpreter)."""

import json
import subprocess
import sys

SNAPSHOT = """
import json, warnings
import matplotlib, pyro, torch
def snapshot():
    return {"pyro": {k: pyro.settings.get(k) for k in ("module_local_params",)},
            "param_store": sorted(pyro.get_param_store().keys()), "threads": torch.get_num_threads(),
            "dtype": str(torch.get_default_dtype()), "filters": len(warnings.filters),
            "backend": str(dict.__getitem__(matplotlib.rcParams, "backend")),
            "grad": torch.is_grad_enabled()}
before = snapshot()
import bayesnas, bayesnas.cli, bayesnas.infer, bayesnas.methods, bayesnas.diagnostics
import bayesnas.experiments.population, bayesnas.experiments.compare, bayesnas.experiments.rank
import bayesnas.experiments.bench, bayesnas.models, bayesnas.guides, bayesnas.spaces
after = snapshot()
print(json.dumps({"before": before, "after": after}))
"""


def test_importing_bayesnas_changes_no_global_state():
    out = subprocess.run([sys.executable, "-c", SNAPSHOT], capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["after"] == result["before"]
    assert result["before"]["pyro"]["module_local_params"] is False


def test_a_search_leaves_pyro_settings_and_the_param_store_as_they_were(tmp_path, one_thread):
    import pyro

    from bayesnas.config import preset
    from bayesnas.infer import run_search

    config = preset("pgnas-digits").merged({
        "epochs": 1, "data_fraction": 0.3, "options": {"num_candidates": 4, "posterior_draws": 8},
        "space": {"stem_channels": 8, "widths": [8, 16], "depths": [1, 1], "kernel_sizes": [1, 3]}})
    pyro.clear_param_store()
    before = pyro.settings.get("module_local_params")
    run_search(config, tmp_path / "run", device="cpu", progress=False)
    assert pyro.settings.get("module_local_params") == before
    assert list(pyro.get_param_store().keys()) == []
