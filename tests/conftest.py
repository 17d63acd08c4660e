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
