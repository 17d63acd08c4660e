import json
import os

import pytest
import torch

from bayesnas.config import preset

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one torch thread per test worker: the workers share the cores, and tiny convolutions slow down many times
    # when more threads than cores compete
    torch.set_num_threads(1)

TINY = {
    "epochs": 3, "batch_size": 64, "lr": 0.05,
    "space": {"stem_channels": 8, "widths": [8, 16], "depths": [1, 1], "kernel_sizes": [1, 3]},
    "options": {"num_candidates": 4, "posterior_draws": 8},
}


@pytest.fixture
def tiny_config():
    """A PGNAS search on digits that takes a few seconds."""
    return preset("pgnas-digits").merged(TINY)


@pytest.fixture
def one_thread():
    """Tiny networks: one thread is as fast, and far faster when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def measured_fp32(tmp_path_factory):
    """Searches train in ``--precision auto`` by default, the mode measured fastest on the machine: the tests see a
    private cache folder whose measurement makes fp32 the fastest, so that their figures do not depend on the
    machine (the tests of ``auto`` fake their own measurements)."""
    from bayesnas.speed import MODES, SPEED_FILE, machine_key

    folder = tmp_path_factory.mktemp("bayesnas-cache")
    seconds = {mode: float(i + 1) for i, mode in enumerate(MODES)}  # fp32 first and fastest
    (folder / SPEED_FILE).write_text(json.dumps({machine_key(torch.device("cpu")): seconds}))
    saved = os.environ.get("BAYESNAS_CACHE")
    os.environ["BAYESNAS_CACHE"] = str(folder)
    yield
    if saved is None:
        del os.environ["BAYESNAS_CACHE"]
    else:
        os.environ["BAYESNAS_CACHE"] = saved
