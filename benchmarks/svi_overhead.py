"""Overhead of one PGNAS SVI step in Pyro against the same step written in plain PyTorch.

*Ours* is exactly what the search loop runs per mini-batch: ``PGNAS.training_loss`` (the Pyro model and
guide under the local-reparameterisation messenger, ``TraceMeanField_ELBO.differentiable_loss``, divided by
N), ``loss.item()``, ``backward()`` and an SGD step over ``PGNAS.param_groups()``.

*Plain* is a hand-written equivalent in the same process: the same ``BranchNet`` whose searchable convolutions
are replaced by a small module holding the kernel ``m`` and a drop-rate logit, which multiplies its input
channels by a per-example relaxed-Bernoulli keep mask (keep probability ``1 - p``, temperature ``tau``,
PGNAS Eq. 16), a cross-entropy summed over the batch and scaled by N/M, plus the Eq. 15 regulariser
``sum_kernels d^2 (1 - p) / 2 ||m||^2 - K H(p)`` times the same KL scale, all divided by N.

The two alternate in rounds (ours, plain, ours, plain, ...) on one fixed CIFAR-shaped batch; the script prints
the median seconds per step of each and, last, ``ratio=<ours/plain>``. ``--profile`` adds a cProfile table of
the Pyro step.

    python benchmarks/svi_overhead.py --steps 20
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import pstats
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import kl_divergence

from bayesnas.config import SearchConfig
from bayesnas.data import DataBundle, Split
from bayesnas.distributions import SpikeAndSlab
from bayesnas.methods.pgnas import PGNAS
from bayesnas.spaces.branches import BranchNet, BranchSpaceConfig

DEFAULT_SPACE = {"in_channels": 3, "stem_channels": 32, "widths": [32, 64, 128], "depths": [1, 1, 1],
                 "kernel_sizes": [1, 3, 5]}
# the paper's CIFAR-10 settings (pgnas-cifar10 preset): l^2 = 50, KL over N = 5e5, tau = 1/5, p0 = 0.1
DEFAULT_OPTIONS = {"temperature": 0.2, "init_drop_rate": 0.1, "prior_precision": 50.0,
                   "kl_dataset_size": 500000}


class ConcreteDropoutConv(nn.Module):
    """Plain-PyTorch searchable convolution: ``conv2d(x * eps, m)`` with a relaxed keep mask per example and
    input channel (Eq. 16), one learned drop rate per kernel."""

    def __init__(self, weight: torch.Tensor, drop_logit: torch.Tensor, stride: int, padding: int,
                 temperature: float, min_drop_rate: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.drop_logit = nn.Parameter(drop_logit.detach().clone())
        self.stride, self.padding = stride, padding
        self.temperature, self.min_drop_rate = temperature, min_drop_rate

    def drop_rate(self) -> torch.Tensor:
        return torch.sigmoid(self.drop_logit).clamp(self.min_drop_rate, 1 - self.min_drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.drop_rate()
        u = torch.rand(x.shape[:2], dtype=x.dtype, device=x.device).clamp(1e-6, 1 - 1e-6)
        keep_logit = torch.log1p(-p) - torch.log(p)
        eps = torch.sigmoid((keep_logit + torch.log(u) - torch.log1p(-u)) / self.temperature)
        return F.conv2d(x * eps[:, :, None, None], self.weight, None, self.stride, self.padding)

    def regulariser(self, prior_precision: float) -> torch.Tensor:
        """Eq. 15: ``d^2 (1 - p) / 2 ||m||^2 - K H(p)``."""
        p = self.drop_rate()
        entropy = -(p * torch.log(p) + (1 - p) * torch.log1p(-p))
        return prior_precision * (1 - p) / 2 * self.weight.pow(2).sum() - self.weight.shape[1] * entropy


class PlainPGNAS(nn.Module):
    """The super-network with :class:`ConcreteDropoutConv` in place of every searchable kernel, initialised
    from a :class:`PGNAS` method's current parameters."""

    def __init__(self, method: PGNAS) -> None:
        super().__init__()
        o, guide = method.options, method.guide
        self.prior_precision = float(o.prior_precision)
        self.kl_scale = float(guide.kl_scale)
        self.net = BranchNet(method.space.config)
        self.net.load_state_dict(method.supernet_state())
        self.convs: list[ConcreteDropoutConv] = []
        for layer, conv in list(self.net.searchable()):
            site = f"net.{layer.module_path}.weight"
            new = ConcreteDropoutConv(guide.kernels()[site], guide.drop_logits[site.replace(".", "/")],
                                      conv.stride, conv.padding, guide.temperature, guide.min_drop_rate)
            parent = self.net.get_submodule(layer.module_path.rsplit(".", 1)[0])
            setattr(parent, layer.module_path.rsplit(".", 1)[1], new)
            self.convs.append(new)

    def regulariser(self) -> torch.Tensor:
        return sum(conv.regulariser(self.prior_precision) for conv in self.convs)

    def loss(self, x: torch.Tensor, y: torch.Tensor, num_train: int) -> tuple[torch.Tensor, int]:
        logits = self.net(x)
        nll = F.cross_entropy(logits, y, reduction="sum") * (num_train / len(x))
        loss = (nll + self.kl_scale * self.regulariser()) / num_train
        return loss, int((logits.argmax(-1) == y).sum())

    def param_groups(self) -> list[dict]:
        searchable = {id(p) for c in self.convs for p in c.parameters()}
        return [{"params": [c.weight for c in self.convs]},
                {"params": [c.drop_logit for c in self.convs], "weight_decay": 0.0},
                {"params": [p for p in self.parameters() if id(p) not in searchable]}]


def synthetic_bundle(num_train: int, in_channels: int, image_size: int, num_classes: int) -> DataBundle:
    """A data bundle whose only real content is the training-set size N (tensors are expanded views)."""
    def split(n: int) -> Split:
        x = torch.zeros(1, in_channels, image_size, image_size).expand(n, -1, -1, -1)
        return Split(x, torch.zeros(1, dtype=torch.long).expand(n))

    return DataBundle("synthetic", split(num_train), split(1), split(1), num_classes, in_channels, image_size,
                      "synthetic (benchmark)")


def registered_kl(method: PGNAS) -> torch.Tensor:
    """Sum over kernels of the KL registered for (ConcreteDropout, SpikeAndSlab): what TraceMeanField uses."""
    model, guide = method.model, method.guide
    total = torch.zeros((), device=model.slab_scale.device)
    for site in guide.site_names:
        q = guide.distribution(site)
        total = total + kl_divergence(q, SpikeAndSlab(model.spike_prob, model.slab_scale, q.weight.shape))
    return total


def make_step(loss_fn: Callable[[], tuple[torch.Tensor, int]], optimizer: torch.optim.Optimizer,
              sync: Callable[[], None], clock: Callable[[], float]) -> Callable[[], float]:
    """One timed step: loss (forward), ``.item()`` as the search loop's NaN guard, backward, SGD step."""
    def step() -> float:
        sync()
        tic = clock()
        loss, _ = loss_fn()
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"loss became {value}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        return clock() - tic

    return step


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per implementation (all rounds)")
    parser.add_argument("--rounds", type=int, default=0,
                        help="ours/plain alternations the timed steps are split into (0: alternate every step)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each before timing")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--num-train", type=int, default=45000, help="training-set size N")
    parser.add_argument("--space", type=json.loads, default=DEFAULT_SPACE, help="JSON space options")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after timing, cProfile N Pyro steps and print the top functions")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall-clock time, or this process's CPU time (less disturbed by other load)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(args.seed)
    clock = time.perf_counter if args.clock == "wall" else time.process_time

    space = BranchSpaceConfig.from_dict({"num_classes": args.num_classes, **args.space})
    config = SearchConfig(space=space.to_dict(), options=dict(DEFAULT_OPTIONS))
    data = synthetic_bundle(args.num_train, space.in_channels, args.image_size, args.num_classes)
    method = PGNAS(config, data, device)
    plain = PlainPGNAS(method).to(device)

    # fairness: the hand-written regulariser is the KL that TraceMeanField_ELBO takes from the registry
    with torch.no_grad():
        ours_kl, plain_kl = registered_kl(method), plain.regulariser()
    if not torch.allclose(ours_kl, plain_kl, rtol=1e-5, atol=1e-4):
        raise AssertionError(f"plain regulariser {plain_kl.item()} != registered KL {ours_kl.item()}")

    x = torch.randn(args.batch_size, space.in_channels, args.image_size, args.image_size, device=device)
    y = torch.randint(args.num_classes, (args.batch_size,), device=device)
    index = torch.randperm(args.num_train, device=device)[:args.batch_size]

    for module in (method.model, method.guide, plain):
        module.train()
    sgd = {"lr": config.lr, "momentum": config.momentum, "nesterov": True}
    ours = make_step(lambda: method.training_loss(x, y, index),
                     torch.optim.SGD(method.param_groups(), **sgd), sync, clock)
    baseline = make_step(lambda: plain.loss(x, y, args.num_train),
                         torch.optim.SGD(plain.param_groups(), **sgd), sync, clock)

    print(f"device={device} threads={torch.get_num_threads()} clock={args.clock} batch={args.batch_size} "
          f"image={space.in_channels}x{args.image_size}x{args.image_size} space={json.dumps(args.space)} "
          f"searchable_kernels={len(plain.convs)} params={sum(p.numel() for p in plain.parameters())}")
    print(f"registered KL (Eq. 15) = {ours_kl.item():.4f}, plain regulariser = {plain_kl.item():.4f}")
    for _ in range(args.warmup):
        ours()
        baseline()
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    per_round = math.ceil(args.steps / args.rounds) if args.rounds else 1
    while len(times["plain"]) < args.steps:
        n = min(per_round, args.steps - len(times["plain"]))
        times["ours"] += [ours() for _ in range(n)]
        times["plain"] += [baseline() for _ in range(n)]
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, label in (("ours", "ours  (Pyro PGNAS.training_loss)"), ("plain", "plain (hand-written PyTorch)    ")):
        print(f"{label}: median {med[name]:.4f} s/step (min {min(times[name]):.4f}, n={len(times[name])})")
    pairs = statistics.median(a / b for a, b in zip(times["ours"], times["plain"], strict=True))
    print(f"median of step-by-step ratios {pairs:.3f}, ratio of minima "
          f"{min(times['ours']) / min(times['plain']):.3f}")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.profile):
            ours()
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        print(text.getvalue())

    ratio = med["ours"] / med["plain"]
    print(f"ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
