"""Compute in a machine-independent unit: example-passes through the networks of a search space.

Wall seconds depend on the machine, its load and its pauses; the number of images that went through a network,
forward with gradients (training: forward and backward) or without (evaluation: forward only), does not. A
search's compute is counted while it runs (:func:`count_passes`), and :func:`population_trainings` expresses it in
trainings of a ground-truth population's recipe, the unit in which random search's cost is counted (one candidate
is one such training). A forward-only pass costs about a third of a training pass (the backward pass computes
two products per forward product), the weight :data:`EVAL_WEIGHT` given to it.

Every whole network of a space (a super-network or one built from a genotype) is a :class:`SpaceNetwork`; passes
through its sub-modules are not counted again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook

EVAL_WEIGHT = 1 / 3
"""A forward-only example-pass in training passes (forward + backward)."""


class SpaceNetwork(nn.Module):
    """A whole network of a search space: the unit in which :func:`count_passes` counts."""


class PassCount:
    """Examples that went through a :class:`SpaceNetwork`, with gradients (``train``) and without (``eval``)."""

    def __init__(self) -> None:
        self.train = 0
        self.eval = 0
        self.paused = False

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Leave out what runs inside (a progress display's accuracy, not part of the method)."""
        before, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = before

    def as_dict(self) -> dict[str, int]:
        return {"train_passes": self.train, "eval_passes": self.eval}


@contextlib.contextmanager
def count_passes() -> Iterator[PassCount]:
    """Count the examples of every forward call of a :class:`SpaceNetwork` inside the block (its first argument's
    leading dimension), by whether gradients were enabled."""
    count = PassCount()

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if isinstance(module, SpaceNetwork) and not count.paused and args and isinstance(args[0], torch.Tensor):
            if torch.is_grad_enabled():
                count.train += int(args[0].shape[0])
            else:
                count.eval += int(args[0].shape[0])

    handle = register_module_forward_pre_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def population_trainings(train_passes: float, eval_passes: float, epochs: int, train_examples: int) -> float:
    """Compute of ``train_passes`` and ``eval_passes`` in trainings of ``epochs`` epochs over ``train_examples``
    images (one random-search candidate under a population's recipe)."""
    return (train_passes + EVAL_WEIGHT * eval_passes) / (epochs * train_examples)
