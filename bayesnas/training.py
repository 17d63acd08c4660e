"""Training a discrete architecture from scratch (or fine-tuning inherited weights), and evaluation.

The standard recipe: SGD with Nesterov momentum and a cosine schedule, weight decay, optional cutout
(CIFAR), auxiliary head and drop-path (set when building the network). Every later method retrains its
architectures with :func:`train_network`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from bayesnas.config import PRECISIONS, SearchConfig
from bayesnas.data import Split
from bayesnas.domains import check_domains, setting
from bayesnas.optimizers import build_optimizer
from bayesnas.precision import channels_last as to_channels_last
from bayesnas.precision import precision_context
from bayesnas.speed import resolve_mode


@torch.no_grad()
def accuracy(net: nn.Module, split: Split, batch_size: int = 512,
             predict: Callable[[torch.Tensor], torch.Tensor] | None = None, precision: str = "fp32",
             channels_last: bool = False) -> float:
    """Top-1 accuracy on ``split`` of ``predict(x)`` (default ``net(x)``), with ``net`` in eval mode; the forward
    in ``precision`` on images in channels-last format if asked (``auto``: the measured mode,
    :func:`bayesnas.speed.resolve_mode`)."""
    predict = predict or net
    precision, channels_last = resolve_mode(precision, channels_last, split.x.device)
    was_training = net.training
    net.eval()
    correct = 0
    for start in range(0, len(split), batch_size):
        x = to_channels_last(split.x[start:start + batch_size], channels_last)
        with precision_context(precision, x.device):
            logits = predict(x)
        correct += int((logits.argmax(-1) == split.y[start:start + batch_size]).sum())
    net.train(was_training)
    return correct / max(len(split), 1)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, device: torch.device) -> list[torch.Tensor]:
    """Mini-batch index lists of one epoch; the order depends only on ``(seed, epoch)``, so a resumed run
    sees exactly the batches an uninterrupted one would."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator).to(device)
    return list(order.split(batch_size))


def cutout(x: torch.Tensor, size: int) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): zero one random ``size x size`` square per image."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), device=x.device)
    cx = torch.randint(0, w, (n, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    hole = ((ys - cy).abs() <= size // 2) & ((xs - cx).abs() <= size // 2)
    return x * (~hole).unsqueeze(1).to(x.dtype)


def random_shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Translate each image by up to ``pad`` pixels (zero padding + random crop), the standard augmentation
    of small images (4 px on CIFAR, 1 px on 8x8 digits)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channels = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, channels, rows, cols]


def augment(x: torch.Tensor, shift: int = 0, flip: bool = False, cutout_size: int = 0) -> torch.Tensor:
    """Training-time augmentation: random shift, horizontal flip (not for digits), cutout."""
    if shift:
        x = random_shift(x, shift)
    if flip:
        mirrored = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
        x = torch.where(mirrored, x.flip(3), x)
    if cutout_size:
        x = cutout(x, cutout_size)
    return x


@dataclass(frozen=True)
class TrainRecipe:
    epochs: int = setting(30, "[0, 100000]")
    batch_size: int = setting(64, "[1, 65536]")
    lr: float = setting(0.05, "> 0")
    lr_min: float = setting(0.0, ">= 0")
    momentum: float = setting(0.9, "[0, 1)")
    weight_decay: float = setting(3e-4, ">= 0")
    grad_clip: float = setting(5.0, ">= 0")
    shift: int = setting(0, ">= 0")
    """Random translation in pixels (0: off; 1 for digits, 4 for CIFAR)."""
    flip: bool = False
    """Random horizontal flips (CIFAR; never for digits)."""
    cutout: int = setting(0, ">= 0")
    """Side of the cutout square (0: off; 16 is the CIFAR recipe)."""
    aux_weight: float = setting(0.4, ">= 0")
    """Weight of the auxiliary head's loss, used when the network has one."""
    precision: str = setting("fp32", "{" + ", ".join(PRECISIONS) + "}")
    """``fp32``, ``bf16`` (autocast of the network's forward; the loss stays fp32) or ``auto`` (the fastest mode
    measured on this machine, :func:`bayesnas.speed.resolve_mode`); training and evaluation."""
    channels_last: bool = False
    """Network weights and images in channels-last memory format; training and evaluation."""

    def __post_init__(self) -> None:
        check_domains(self)
        if self.lr_min > self.lr:
            raise ValueError(f"lr_min must lie in [0, lr], got {self.lr_min!r} > {self.lr!r}")

    def evaluation(self) -> dict[str, Any]:
        """The keyword arguments of :func:`accuracy` that evaluate a network as this recipe trains it."""
        return {"precision": self.precision, "channels_last": self.channels_last}


@dataclass(frozen=True)
class StandaloneTraining(TrainRecipe):
    """One architecture trained alone from scratch (:func:`bayesnas.train`, ``bayesnas train``): a recipe of at least
    one epoch, with the network's drop-path rate and the seed of its initialisation, batch order and data split."""

    epochs: int = setting(30, "[1, 100000]")
    drop_path: float = setting(0.0, "[0, 1)")
    """Drop-path rate of the cell networks (DARTS; 0: off)."""
    seed: int = setting(0, "[0, 4294967295]")
    data_fraction: float = setting(1.0, "(0, 1]")
    """The fraction of the training images kept (validation and test stay whole where the data set allows)."""


def train_network(net: nn.Module, train: Split, val: Split, recipe: TrainRecipe, seed: int = 0,
                  progress: bool = True, desc: str = "train") -> list[dict[str, float]]:
    """Train ``net`` on ``train``; returns one row per epoch (loss, train and validation accuracy).

    The network's forward runs in ``recipe.precision`` (autocast), the loss in fp32; with ``recipe.channels_last``
    the network is converted in place and the images follow."""
    torch.manual_seed(seed)
    device = train.x.device
    precision, layout = resolve_mode(recipe.precision, recipe.channels_last, device)
    evaluation = {"precision": precision, "channels_last": layout}
    to_channels_last(net, layout)
    optimizer = build_optimizer("sgd", net.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                nesterov=True, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.epochs, eta_min=recipe.lr_min)
    history = []
    bar = tqdm(range(recipe.epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        net.train()
        total, correct = 0.0, 0
        for index in epoch_batches(len(train), recipe.batch_size, seed, epoch, device):
            x, y = train.x[index], train.y[index]
            x = to_channels_last(augment(x, recipe.shift, recipe.flip, recipe.cutout), layout)
            with precision_context(precision, device):
                out = net(x)
            logits, aux = out if isinstance(out, tuple) else (out, None)
            loss = F.cross_entropy(logits.float(), y)
            if aux is not None:
                loss = loss + recipe.aux_weight * F.cross_entropy(aux.float(), y)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip:
                nn.utils.clip_grad_norm_(net.parameters(), recipe.grad_clip)
            optimizer.step()
            total += loss.item() * len(index)
            correct += int((logits.argmax(-1) == y).sum())
        scheduler.step()
        row = {"epoch": epoch, "loss": total / len(train), "train_accuracy": correct / len(train),
               "val_accuracy": accuracy(net, val, **evaluation)}
        bar.set_postfix(loss=f"{row['loss']:.3f}", val=f"{row['val_accuracy']:.3f}")
        history.append(row)
    return history


def search_recipe(config: SearchConfig, epochs: int, lr: float | None = None) -> TrainRecipe:
    """Training from scratch with the search's own settings (lr unless ``lr`` is given, schedule, momentum, weight
    decay, clipping, augmentation), as PC-NAS retrains "with the search settings" (Li et al., "Improving One-Shot NAS
    by Suppressing the Posterior Fading", CVPR 2020, Sec. 4.1); random search and populations train under it too."""
    return TrainRecipe(epochs=epochs, batch_size=config.batch_size, lr=lr or config.lr, lr_min=config.lr_min,
                       momentum=config.momentum, weight_decay=config.weight_decay, grad_clip=config.grad_clip,
                       shift=config.shift, flip=config.flip)


def retrain(space: Any, genotype: Any, train: Split, val: Split, test: Split, recipe: TrainRecipe,
            seed: int = 0, progress: bool = True, **build_options: Any) -> tuple[nn.Module, float, float]:
    """Build ``genotype`` in ``space`` and train it from scratch; returns ``(network, val acc, test acc)``.

    How every method turns its derived architecture into the figures of ``summary.json``; training and
    evaluation in ``recipe.precision`` and memory format.
    """
    torch.manual_seed(seed)
    net = space.build(genotype, **build_options).to(train.x.device)
    train_network(net, train, val, recipe, seed, progress, desc="retrain")
    return net, accuracy(net, val, **recipe.evaluation()), accuracy(net, test, **recipe.evaluation())
