"""Shared pieces of the GDAS benchmarks: our GDAS method on random CIFAR-shaped data, and timing rounds."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from bayesnas.config import preset
from bayesnas.data import DataBundle, Split
from bayesnas.methods import get_method
from bayesnas.precision import channels_last, precision_context


def parse_timing_args(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, torch.device, torch.Tensor,
                                                                torch.Tensor]:
    """The benchmarks' common options, applied: returns (args, device, and a random CIFAR-shaped batch x, y)."""
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10, help="timed steps of each (alternating)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    return args, device, x, y


def random_bundle(batch: int, channels: int = 3, size: int = 32, classes: int = 10, seed: int = 0) -> DataBundle:
    """A CIFAR-shaped data bundle of random images (only shapes matter for timing)."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        return Split(torch.randn(n, channels, size, size, generator=g), torch.randint(0, classes, (n,), generator=g))

    return DataBundle(name="random", train=split(4 * batch), val=split(batch), test=split(batch),
                      num_classes=classes, in_channels=channels, image_size=size, source="random tensors")


def gdas_weight_step(space: dict, batch: int, device: torch.device, x: torch.Tensor, y: torch.Tensor,
                     options: dict | None = None, precision: str = "fp32",
                     memory_format_channels_last: bool = False) -> tuple[Callable[[], None], Any]:
    """One weight step of our GDAS (proposal draw, conditioned model, backward, SGD) on ``(x, y)``, and the
    method object it steps; ``precision`` and ``memory_format_channels_last`` as the search loop applies them
    (``bayesnas.infer``: modules and batch in channels-last, the loss under autocast)."""
    config = preset("gdas-xautodl").merged({"space": space, "batch_size": batch, "options": options or {},
                                            "precision": precision,
                                            "channels_last": memory_format_channels_last})
    method = get_method("gdas")(config, random_bundle(batch), device)
    for module in method.modules().values():
        channels_last(module, config.channels_last)
    x = channels_last(x, config.channels_last)
    phase = method.phases()[0]
    optimizer, _ = phase.make_optimizer(config.epochs)
    index = torch.arange(len(x), device=device)
    size = method.split_sizes["weights"]

    def step() -> None:
        with precision_context(method.precision, device):
            loss, _ = method.loss(x, y, index, size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(phase.param_groups[0]["params"], 5.0)
        optimizer.step()

    return step, method


def pin_logits(logits: torch.Tensor, choice: torch.Tensor) -> None:
    """Set architecture logits ``(E, K)`` so that the Gumbel draw is ``choice`` (one op index per edge)."""
    with torch.no_grad():
        logits.fill_(-1e4)
        logits.scatter_(1, choice.view(-1, 1).to(logits.device), 1e4)


def time_alternating(steps: dict[str, Callable[[], None]], repeats: int, warmup: int, device: torch.device,
                     before_round: Callable[[], None] | None = None) -> dict[str, float]:
    """Median seconds per call of each step, run in alternation (A B A B ...) in one process.
    ``before_round`` runs before each round (e.g. to make every step of the round draw the same architecture)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        if before_round is not None:
            before_round()
        for name, step in steps.items():
            sync()
            tic = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - tic)
    return {name: statistics.median(ts) for name, ts in times.items()}
