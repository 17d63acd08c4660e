"""What the 2-process tests spawn, in a module light to import: each spawned process imports the module that
defines its function (torch and ``bayesnas.distributed`` here, not the search stack the test module loads)."""

from __future__ import annotations

import os
import socket

import torch
from torch import nn

from bayesnas.distributed import SyncedBatchNorm2d, World, synchronise_batchnorm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join(rank: int, size: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)


def batchnorm_worker(rank: int, size: int, port: int) -> None:
    import torch.distributed as dist

    join(rank, size, port)
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4) * 3 + 1
    upstream = torch.randn(8, 3, 4, 4)
    reference = nn.BatchNorm2d(3)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-1, 1)
    synced = synchronise_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))[0]
    synced.load_state_dict(reference.state_dict())
    assert type(synced) is SyncedBatchNorm2d
    whole = x.clone().requires_grad_()
    expected = reference(whole)
    (expected * upstream).sum().backward()
    mine = x[rank::size].clone().requires_grad_()
    out = synced(mine)
    (out * upstream[rank::size]).sum().backward()
    World(rank, size).all_reduce_gradients(list(synced.parameters()))
    torch.testing.assert_close(out, expected[rank::size].detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine.grad, whole.grad[rank::size], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(synced.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(synced.running_var, reference.running_var, rtol=1e-5, atol=1e-6)
    # Scoring without gradients is local: each rank normalises its own batch (of its own size), no collective.
    own = x[: 3 + rank]
    with torch.no_grad():
        local = synced(own)
    mean, var = own.mean((0, 2, 3), keepdim=True), own.var((0, 2, 3), unbiased=False, keepdim=True)
    expected_local = (own - mean) / torch.sqrt(var + synced.eps) * synced.weight.view(1, 3, 1, 1) \
        + synced.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(local, expected_local, rtol=1e-5, atol=1e-5)
    dist.destroy_process_group()


def scoring_worker(rank: int, size: int, port: int) -> None:
    import torch.distributed as dist

    from bayesnas.guides.pcnas import PartialModelPool
    from bayesnas.select import posterior_guided_sampling

    join(rank, size, port)
    dist.init_process_group("gloo")
    world = World(rank, size)
    scored: list[int] = []

    def score(candidate: int) -> float:
        scored.append(candidate)
        return [0.1, 0.7, 0.3, 0.7, 0.2][candidate]

    draws = iter(range(5))
    result = posterior_guided_sampling(lambda: next(draws), score, 5, progress=False, world=world)
    assert (result.best, result.best_score, result.scores) == (1, 0.7, [0.1, 0.7, 0.3, 0.7, 0.2])
    assert scored == [c for c in range(5) if c % size == rank]  # each rank scored only its share
    pool = PartialModelPool([3, 2], pool_size=2)
    pool.update(lambda c: {(0,): 0.1, (1,): 0.5, (2,): 0.4}[c], world)
    assert pool.members == [(1,), (2,)] and pool.potentials == [0.5, 0.4]
    assert world.gather({rank: rank * 10}) == {0: 0, 1: 10}
    assert world.broadcast(f"from {rank}") == "from 0"
    # scoring that draws random numbers (a candidate's network initialised) on some ranks only: the candidates,
    # and the stream after the selection, are still the same on every rank
    torch.manual_seed(1)

    def initialising_score(candidate: float) -> float:
        torch.randn(10)
        return candidate

    result = posterior_guided_sampling(lambda: float(torch.rand(())), initialising_score, 3, progress=False,
                                       world=world)
    after = world.gather({rank: (result.best, result.scores, float(torch.rand(())))})
    assert after[0] == after[1]
    dist.destroy_process_group()


def compare_worker(rank: int, size: int, port: int, population: str, out: str, overrides: dict) -> None:
    """``run_compare`` on this rank, recording which searches this rank ran (into ``out/ran.rank<r>.json``)."""
    import json

    from bayesnas.experiments import compare

    join(rank, size, port)
    ran = []
    search = compare.run_search

    def recording(config, run_dir, **kwargs):
        ran.append([config.method, config.seed])
        return search(config, run_dir, **kwargs)

    compare.run_search = recording
    compare.run_compare(population, out, methods=["gdas", "random"], seeds=2, overrides=overrides, device="cpu",
                        progress=False)
    with open(f"{out}/ran.rank{rank}.json", "w") as fh:
        json.dump(ran, fh)


def disagreement_worker(rank: int, size: int, port: int, out: str) -> None:
    """``agree`` with settings that differ between the ranks in ``epochs`` only; the error each rank raised into
    ``out/rank<r>.txt``."""
    import torch.distributed as dist

    from bayesnas.config import ConfigError
    from bayesnas.distributed import agree, init_world

    join(rank, size, port)
    world, _ = init_world(torch.device("cpu"))
    try:
        agree(world, {"epochs": 1 + rank, "lr": 0.1, "space": {"widths": [8, 16]}}, "search")
        message = "agreed"
    except ConfigError as err:
        message = str(err)
    with open(f"{out}/rank{rank}.txt", "w") as fh:
        fh.write(message)
    dist.destroy_process_group()


def timeout_worker(rank: int, size: int, port: int, out: str) -> None:
    """A patient barrier after 4 s of uneven work under a 1.8 s collective timeout, then a lock-step barrier that
    rank 1 never meets; what rank ``r`` saw into ``out/rank<r>.txt``: ``<outcome> <seconds waited>``."""
    import time

    from bayesnas.distributed import init_world

    join(rank, size, port)
    os.environ["BAYESNAS_COLLECTIVE_TIMEOUT"] = "0.03"
    world, _ = init_world(torch.device("cpu"))
    if rank == 1:
        time.sleep(4.0)  # a rank's own share of uneven work, longer than the collective timeout
    world.barrier(patient=True)
    tic = time.monotonic()
    outcome = "met"
    if rank == 0:
        try:
            world.barrier()
        except RuntimeError:
            outcome = "timed-out"
    else:
        time.sleep(8.0)
    with open(f"{out}/rank{rank}.txt", "w") as fh:
        fh.write(f"{outcome} {time.monotonic() - tic:.1f}")
