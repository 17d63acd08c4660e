"""One search over K processes with ``torch.distributed``, started by ``torchrun``.

``torchrun --nproc-per-node K -m bayesnas search ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; :func:`init_world` joins the process group (NCCL on CUDA, gloo on the CPU). Every rank
builds the same modules from the same seed, and then:

- each global mini-batch of the shared loop is sharded as ``DistributedSampler`` shards a data set: rank ``r``
  takes examples ``r, r + K, ...``. Each rank's loss scales its likelihood by ``N / M_r`` (the data plate's
  subsampling), so weighting rank ``r``'s loss by ``M_r / M`` and summing the gradients over ranks gives exactly
  the gradient of the one-process ELBO on the global batch of ``M`` examples (:meth:`World.all_reduce_gradients`);
- batch normalisation is synchronised (:class:`SyncedBatchNorm2d`: statistics over the global batch, on any
  device and backend), so the forward pass is the one-process forward too;
- draws that the loop shares across a mini-batch (an architecture per batch, masks per step) come from the same
  seeded generators on every rank, so parameters, and architecture parameters in particular, stay identical;
- only rank 0 writes files (checkpoints, metrics, plots); ``--resume`` loads the same checkpoint on every rank;
- candidate scoring in the selection (PGNAS's C draws) is split across ranks and gathered.

Timeouts: a collective of the lock-step work (gradients, metrics, broadcasts, barriers) fails after
``BAYESNAS_COLLECTIVE_TIMEOUT`` minutes (default 15): ranks that stopped meeting each other (a rank stuck, a
mismatched collective) end the launch in minutes, not a day. The waits for a rank's own share of uneven work (a
whole search or training of ``bench compare``/``bench population``/``rank``, rank 0 alone writing a run's
exports) go through a second process group whose timeout is ``BAYESNAS_PATIENT_TIMEOUT`` minutes (default
1440), since such a share can legitimately take hours.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pyro.nn import PyroModule
from torch import nn

from bayesnas.config import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the search processes (``size == 1``: no distribution)."""

    rank: int = 0
    size: int = 1
    patient: Any = field(default=None, compare=False, repr=False)
    """The process group of the waits for uneven work (its timeout ``BAYESNAS_PATIENT_TIMEOUT``); None: the
    default group."""

    @property
    def is_main(self) -> bool:
        """Rank 0, the only process that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's examples of a global mini-batch (every ``size``-th, as ``DistributedSampler``)."""
        return index[self.rank::self.size] if self.distributed else index

    def all_reduce_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Replace every gradient by its sum over ranks (of the weighted losses' gradients).

        A parameter gets a gradient when any rank computed one (a sparse super-network only touches the ops some
        example used), as in one process on the whole batch; it stays ``None`` when no rank did."""
        if not self.distributed:
            return
        params = [p for p in params if p.requires_grad]
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                               device=params[0].device if params else "cpu")
        dist.all_reduce(present)
        chosen = [p for p, seen in zip(params, present.tolist(), strict=True) if seen]
        for p in chosen:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if not chosen:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in chosen])
        dist.all_reduce(flat)
        offset = 0
        for p in chosen:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over ranks (losses and counts for the metrics)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maximum of ``values`` over ranks (gathers scores each rank filled in for its share)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    def disagreement(self, settings: dict[str, Any]) -> list[str]:
        """The keys of ``settings`` (JSON-like) in which some rank differs from rank 0 (every rank gets the same
        list): ranks launched with different settings would otherwise wait for each other at mismatched
        collectives until the process group's timeout."""
        if not self.distributed:
            return []
        everyone: list[Any] = [None] * self.size
        dist.all_gather_object(everyone, settings)
        first = everyone[0]
        return sorted({k for other in everyone[1:] for k in set(first) | set(other) if first.get(k) != other.get(k)})

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects, e.g. a latency table measured on rank 0)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, items: dict[int, Any]) -> dict[int, Any]:
        """The union over ranks of ``{index: result}`` dictionaries (results of a list split with :meth:`owns`:
        whole pieces of work, so the wait for the slowest rank is a patient one)."""
        if not self.distributed:
            return dict(items)
        parts: list[Any] = [None] * self.size
        dist.all_gather_object(parts, items, group=self.patient)
        return {k: v for part in parts for k, v in part.items()}

    def share_random_state(self, device: torch.device) -> None:
        """Give every rank rank 0's random state (CPU, and ``device``'s where it is a GPU). Called before each step's
        loss: augmentation and per-example noise of unequal shards advance the ranks' streams differently, and the
        architecture a proposal draws must be the same on every rank, or their collectives (synced BatchNorm of the
        ops that ran, gradient sums) no longer match. Within the step, ranks then draw from identical streams for
        their own shards."""
        if not self.distributed:
            return
        cuda = device.type == "cuda"
        state = self.broadcast((torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None))
        torch.set_rng_state(state[0])
        if cuda:
            torch.cuda.set_rng_state(state[1], device)

    def barrier(self, patient: bool = False) -> None:
        """Wait for every rank; ``patient``: after uneven work (a rank's own search, rank 0's exports), under the
        patient timeout instead of the collective one."""
        if self.distributed:
            dist.barrier(group=self.patient if patient else None)

    def owns(self, item: int) -> bool:
        """Whether this rank handles item ``item`` of a list split across ranks (round robin)."""
        return item % self.size == self.rank


SINGLE = World()


def _collective_device() -> torch.device:
    """Where collective tensors live: the current CUDA device with NCCL, the CPU with gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


COLLECTIVE_TIMEOUT = ("BAYESNAS_COLLECTIVE_TIMEOUT", 15.0)
"""Environment variable and default (minutes) of the lock-step collectives' timeout."""
PATIENT_TIMEOUT = ("BAYESNAS_PATIENT_TIMEOUT", 1440.0)
"""Environment variable and default (minutes) of the waits for a rank's own share of uneven work."""


def timeout_from_environment(variable: tuple[str, float]) -> datetime.timedelta:
    """The timeout that ``variable`` (name, default minutes) sets: one-line :class:`ConfigError` for a value that
    is not a positive number of minutes (at most 30 days)."""
    name, default = variable
    text = os.environ.get(name)
    try:
        minutes = default if text is None else float(text)
    except ValueError:
        minutes = math.nan
    if not 0 < minutes <= 43200:
        raise ConfigError(f"{name}={text!r}: the timeout is a number of minutes in (0, 43200]")
    return datetime.timedelta(minutes=minutes)


def init_world(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group ``torchrun`` describes (a no-op in a plain process), with the collective timeout,
    and create the patient group of the waits for uneven work (module docstring).

    Returns the world and this rank's device: with CUDA, ``cuda:LOCAL_RANK``.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE, device
    collective, patient = timeout_from_environment(COLLECTIVE_TIMEOUT), timeout_from_environment(PATIENT_TIMEOUT)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=collective)
    # gloo on every backend: the patient waits exchange small Python objects and barriers only
    return World(dist.get_rank(), dist.get_world_size(), dist.new_group(backend="gloo", timeout=patient)), device


@contextlib.contextmanager
def world_of(device: torch.device) -> Iterator[tuple[World, torch.device]]:
    """:func:`init_world` for the duration of a ``with`` block; the process group is destroyed at its end only
    if this block created it (``bayesnas rank`` runs two searches inside one group)."""
    created = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    world, device = init_world(device)
    try:
        yield world, device
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def agree(world: World, settings: dict[str, Any], what: str) -> None:
    """Stop every rank with one line, naming the keys, where the ranks of a launch hold different ``settings``
    for ``what`` (checked before the first collective of the work, so that no rank waits on a mismatched one)."""
    keys = world.disagreement(json.loads(json.dumps(settings, default=str)))
    if keys:
        raise ConfigError(f"the torchrun ranks were started with different settings for the {what} (differ in: "
                          f"{', '.join(keys)}); launch every rank with the same command")


def is_main_process() -> bool:
    """Whether this process is rank 0 of a ``torchrun`` launch, or not launched by ``torchrun`` at all."""
    return int(os.environ.get("RANK", "0")) == 0


class _SumOverRanks(torch.autograd.Function):
    """``all_reduce(SUM)`` with its adjoint as backward: the gradient of a sum over ranks is the sum over ranks of
    the upstream gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncedBatchNorm2d(nn.BatchNorm2d):
    """Batch normalisation with statistics over the global batch of all ranks.

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors; this one all-reduces the per-channel sums of ``x`` and
    ``x^2`` and the count with a differentiable all-reduce, so it works with gloo and NCCL alike and its
    backward is the one-process backward. Only a training step (training mode with gradients on) is global:
    outside training, in a plain process, or when a rank scores an architecture of its own on batch statistics
    under ``torch.no_grad`` (PC-NAS's candidates, one-shot rankings), it is ``BatchNorm2d``, so ranks that
    evaluate different architectures never enter a collective.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.full((1,), float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        stats = _SumOverRanks.apply(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        channels = x.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels:2 * channels] / total - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 0.0
                self.num_batches_tracked.add_(1)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * total / (total - 1).clamp_min(1), momentum)
        shape = (1, channels, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def synchronise_batchnorm(module: nn.Module) -> nn.Module:
    """Turn every ``BatchNorm2d`` in ``module`` into a :class:`SyncedBatchNorm2d` in place (same parameters and
    buffers, so optimisers and checkpoints see the same tensors); a ``PyroModule[BatchNorm2d]`` (a network that
    ``to_pyro_module_`` converted, as PGNAS's) becomes a ``PyroModule[SyncedBatchNorm2d]``."""
    for child in module.modules():
        if type(child) is nn.BatchNorm2d:
            child.__class__ = SyncedBatchNorm2d
        elif type(child) is PyroModule[nn.BatchNorm2d]:
            child.__class__ = PyroModule[SyncedBatchNorm2d]
    return module


CLAIMS_DIR = ".claims"


@contextlib.contextmanager
def work_claims(out: Path, world: World) -> Iterator[Callable[[str], bool]]:
    """``claim(name) -> bool``: whether this rank takes the work ``name`` (always, in one process; under
    ``torchrun``, the first rank to create its file in this launch's claims folder under ``out``): ranks share
    searches (``bench compare``) or an ensemble's members so. All ranks meet at the end."""
    if not world.distributed:
        yield lambda name: True
        return
    claims = out / CLAIMS_DIR / world.broadcast(uuid.uuid4().hex)
    if world.is_main:
        shutil.rmtree(out / CLAIMS_DIR, ignore_errors=True)  # a killed launch's claims
        claims.mkdir(parents=True)
    world.barrier()
    yield lambda name: _claim(claims / name)
    world.barrier(patient=True)  # each rank's last piece of work
    if world.is_main:
        shutil.rmtree(out / CLAIMS_DIR, ignore_errors=True)


def _claim(path: Path) -> bool:
    """Whether this process created ``path`` (and so owns the work it names)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True
