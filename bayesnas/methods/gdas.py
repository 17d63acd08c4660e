"""GDAS (papers/gdas.md): a Gumbel-softmax proposal over DARTS cells that drives weight-sharing training
(Algorithm 1), with the posterior-fading log shared by every proposal."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pyro import poutine

from bayesnas import diagnostics
from bayesnas.elbo import AnalyticKLELBO
from bayesnas.guides.gdas import GumbelSoftmaxProposal
from bayesnas.methods import Phase, SearchMethod, Selection, register
from bayesnas.models.gdas import GDASModel, arch_site
from bayesnas.select import derive_cell
from bayesnas.spaces.cell import CellSpace
from bayesnas.spaces.profile import count_params
from bayesnas.train import TrainRecipe, accuracy


@dataclass(frozen=True)
class GDASOptions:
    tau_max: float = 10.0
    """Initial Gumbel-softmax temperature (Algorithm 1)."""
    tau_min: float = 1.0
    """Final temperature: 1 in the paper, 0.1 in the authors' code."""
    sample_per: str = "batch"
    """``batch``: one architecture per mini-batch (authors' code); ``example``: one per example (paper)."""
    beta: float = 0.0
    """Weight of KL(q(f) || uniform prior): 0 = GDAS as published (the term is left out), 1 = full ELBO."""
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    warmup_epochs: int = 0
    """Epochs of weight training before the logits A start to learn (0 in the paper and the authors' code)."""
    retrain_epochs: int = 40
    """Epochs of the from-scratch retraining (0: report the super-network's accuracy; ``bayesnas bench``)."""
    retrain_lr: float = 0.05
    retrain_weight_decay: float = 3e-4
    retrain_auxiliary: float = 0.0
    retrain_drop_path: float = 0.0
    posterior_draws: int = 100
    """Architecture draws exported to ArviZ."""

    def __post_init__(self) -> None:
        if not 0 < self.tau_min <= self.tau_max:
            raise ValueError("temperatures must satisfy 0 < tau_min <= tau_max")
        if self.sample_per not in ("batch", "example"):
            raise ValueError(f"sample_per must be 'batch' or 'example', got {self.sample_per!r}")
        if self.beta < 0 or self.retrain_epochs < 0 or self.warmup_epochs < 0:
            raise ValueError("beta, warmup_epochs and retrain_epochs must be >= 0")


def annealed_temperature(epoch: int, epochs: int, tau_max: float, tau_min: float) -> float:
    """Linear schedule per epoch: ``tau_max`` at the first epoch, ``tau_min`` at the last (Algorithm 1)."""
    return tau_max - (tau_max - tau_min) * epoch / max(epochs - 1, 1)


@register
class GDAS(SearchMethod):
    """Weights on the weight split with SGD, logits A on the architecture split with Adam (Algorithm 1)."""

    name = "gdas"
    options_type = GDASOptions
    progress_keys = ("tau", "log10_effective_architectures")

    def __init__(self, config, data, device) -> None:
        super().__init__(config, data, device)
        o = self.options
        self.space = self.build_space(CellSpace)
        kinds = self.space.config.searched_types()
        shape = self.space.arch_shape()
        per_example = o.sample_per == "example"
        self.model = GDASModel(self.space.supernet(sparse=True), kinds, shape, per_example, o.beta).to(device)
        self.guide = GumbelSoftmaxProposal(kinds, shape, o.tau_max, per_example, o.beta).to(device)
        self.elbo = AnalyticKLELBO()
        self.split_sizes = {name: len(split) for name, split in zip(("weights", "architecture"),
                                                                     data.halves(config.seed), strict=True)}

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model, "guide": self.guide}

    def phases(self) -> list[Phase]:
        o = self.options
        return [
            Phase.sgd(self.config, "weights", "weights", [{"params": list(self.model.parameters())}],
                      lambda x, y, index: self.loss(x, y, index, self.split_sizes["weights"])),
            Phase("architecture", "architecture", [{"params": list(self.guide.parameters())}],
                  lambda x, y, index: self.loss(x, y, index, self.split_sizes["architecture"]),
                  lr=o.arch_lr, optimizer="adam", betas=(0.5, 0.999), weight_decay=o.arch_weight_decay,
                  schedule="constant", start_epoch=o.warmup_epochs),
        ]

    def begin_epoch(self, epoch: int) -> None:
        o = self.options
        self.guide.temperature = annealed_temperature(epoch, self.config.epochs, o.tau_max, o.tau_min)

    def loss(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, size: int) -> tuple[torch.Tensor, int]:
        """Negative ELBO per example; with ``beta = 0`` the likelihood of the model conditioned on the
        proposal's straight-through draw (the architecture terms left out, as published)."""
        if self.options.beta:
            model = poutine.trace(self.model)
            loss = self.elbo.differentiable_loss(model, self.guide, x, y, index, size)
            logits = model.trace.nodes["_RETURN"]["value"]
        else:
            batch = len(x) if self.guide.per_example else None
            arch = {arch_site(k): self.guide.distribution(k, batch).rsample() for k in self.guide.cell_types}
            trace = poutine.trace(poutine.condition(self.model, data=arch)).get_trace(x, y, index, size)
            loss = -trace.log_prob_sum(site_filter=lambda name, site: name == "y")
            logits = trace.nodes["_RETURN"]["value"]
        return loss / size, int((logits.argmax(-1) == y).sum())

    @torch.no_grad()
    def accuracy(self, split) -> float:
        """Accuracy of the super-network under the most probable architecture."""
        arch = self.guide.mode()
        return accuracy(self.model, split, predict=lambda x: self.model.net(x, arch))

    def epoch_metrics(self) -> dict[str, Any]:
        """Posterior fading (PC-NAS Eq. 10): per-edge entropies and the effective number of architectures
        sharing the weights, exp(sum of edge entropies), logged as log10."""
        log_n = self.guide.log_effective_architectures()
        return {"tau": round(self.guide.temperature, 4),
                "log10_effective_architectures": round(log_n / math.log(10), 4),
                "edge_entropy": {k: [round(float(v), 4) for v in h] for k, h in self.guide.edge_entropy().items()}}

    def genotype(self):
        probs = self.guide.probabilities()
        return self.space.genotype({kind: derive_cell(p.cpu(), self.space.op_names, self.space.config.edges())
                                    for kind, p in probs.items()})

    def select(self, progress: bool = True) -> Selection:
        o = self.options
        genotype = self.genotype()
        recipe = TrainRecipe(epochs=o.retrain_epochs, batch_size=self.config.batch_size, lr=o.retrain_lr,
                             weight_decay=o.retrain_weight_decay, shift=self.config.shift, flip=self.config.flip,
                             aux_weight=o.retrain_auxiliary)
        net, val_acc, test_acc = self.retrain_selected(self.space, genotype, recipe, progress,
                                                       auxiliary=o.retrain_auxiliary > 0,
                                                       drop_path=o.retrain_drop_path)
        extra = {
            "supernet_params": count_params(self.model.net),
            "cells": genotype.choices,
            "retrain_epochs": o.retrain_epochs,
        }
        return Selection(genotype, net, val_acc, test_acc, extra)

    @torch.no_grad()
    def export(self, run_dir: Path) -> None:
        """Op probabilities per (cell type, edge, op) and draws of architectures, as ``posterior.nc``."""
        kinds = self.guide.cell_types
        probs = self.guide.probabilities()
        draws = self.options.posterior_draws
        choice = np.stack([torch.distributions.OneHotCategorical(probs=probs[k]).sample((draws,)).cpu().numpy()
                           for k in kinds], axis=1)[None]  # (chain, draw, cell_type, edge, op)
        edges = [f"{j}<-{i}" for j, i in self.space.config.edges()]
        coords = {"cell_type": kinds, "edge": edges, "op": list(self.space.op_names)}
        diagnostics.save_posterior(run_dir, {"op_choice": choice}, coords=coords, dims=["cell_type", "edge", "op"],
                                   constant={"op_probability": np.stack([probs[k].cpu().numpy() for k in kinds])},
                                   attrs={"method": self.name, "seed": self.config.seed})
        for k in kinds:
            diagnostics.plot_matrix(probs[k].cpu().numpy(), edges, list(self.space.op_names),
                                    f"GDAS op probabilities, {k} cell", run_dir / f"op_probabilities_{k}.png")
