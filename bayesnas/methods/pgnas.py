"""PGNAS (papers/pgnas.md): the model/guide pair under the search loop, and posterior-guided sampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pyro import poutine

from bayesnas import diagnostics
from bayesnas.elbo import AnalyticKLELBO
from bayesnas.guides.pgnas import ConcreteDropoutGuide
from bayesnas.methods import Phase, SearchMethod, Selection, register
from bayesnas.models.pgnas import PGNASModel
from bayesnas.reparam import LocalReparameterization
from bayesnas.select import posterior_guided_sampling
from bayesnas.spaces.branches import BranchSpace, count_params
from bayesnas.train import TrainRecipe, accuracy, train_network


@dataclass(frozen=True)
class PGNASOptions:
    temperature: float = 0.2
    """tau of the relaxed Bernoulli, Eq. 16 (the paper finds 1/5 better than 2/3, Table 5)."""
    init_drop_rate: float = 0.1
    """Initial drop rate p of every kernel (authors' code)."""
    prior_precision: float = 150.0
    """d^2 = l^2 of the slab N(0, 1/d^2) (Table 4: 150 best of {50, 150, 250, 500})."""
    spike_prob: float = 0.0
    """u of the spike-and-slab prior; Eq. 15 needs u = 0 (the paper's choice)."""
    kl_dataset_size: int | None = None
    """N used to weight the KL against the likelihood (authors: 5e5 on CIFAR); null: the real N."""
    rescale: bool = False
    """Divide kept activations by 1 - p (Gal's concrete dropout); off in the authors' code."""
    drop_rate_lr: float | None = None
    """Learning rate of the drop-rate logits (null: the search lr)."""
    num_candidates: int = 100
    """C, the number of architecture-weight pairs drawn and ranked (Algorithm 1, line 7)."""
    baseline_drop_rate: float = 0.3
    """Hand-set drop rate of the "Random" baseline of Table 3, sampled with the same C."""
    finetune_epochs: int = 0
    """Optional fine-tuning of the selected pair (0: none, as in the paper)."""
    posterior_draws: int = 200
    """Architecture draws exported to ArviZ."""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if not 0 < self.init_drop_rate < 1 or not 0 <= self.baseline_drop_rate < 1:
            raise ValueError("drop rates must lie in (0, 1)")
        if self.prior_precision <= 0:
            raise ValueError("prior_precision must be > 0")
        if self.num_candidates < 1 or self.posterior_draws < 1 or self.finetune_epochs < 0:
            raise ValueError("num_candidates and posterior_draws must be >= 1, finetune_epochs >= 0")


@register
class PGNAS(SearchMethod):
    """Posterior-guided NAS: SVI of the concrete-dropout posterior (Eq. 14-16), then Algorithm 1's sampling."""

    name = "pgnas"
    options_type = PGNASOptions

    def __init__(self, config, data, device) -> None:
        super().__init__(config, data, device)
        o = self.options
        self.space = self.build_space(BranchSpace)
        self.num_train = len(data.train)
        kl_scale = self.num_train / o.kl_dataset_size if o.kl_dataset_size else 1.0
        self.model = PGNASModel(self.space.supernet(), o.prior_precision, o.spike_prob, kl_scale).to(device)
        self.guide = ConcreteDropoutGuide(self.model.initial_weights, o.temperature, o.init_drop_rate,
                                          o.rescale, kl_scale).to(device)
        self.reparam = LocalReparameterization()
        self.elbo = AnalyticKLELBO()

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model, "guide": self.guide}

    def phases(self) -> list[Phase]:
        return [Phase.sgd(self.config, "search", "train", self.param_groups(), self.training_loss)]

    def param_groups(self) -> list[dict[str, Any]]:
        drop_lr = self.options.drop_rate_lr or self.config.lr
        return [
            {"name": "kernels", "params": list(self.guide.weights.values())},
            {"name": "drop_rates", "params": list(self.guide.drop_logits.values()), "lr": drop_lr,
             "weight_decay": 0.0},
            {"name": "network", "params": list(self.model.parameters())},
        ]

    def training_loss(self, x, y, index):
        """Negative ELBO of Eq. 14 per training example: ``(KL - (N/M) sum_i log p(y_i | ...)) / N``."""
        model = poutine.trace(self.reparam(self.model))
        loss = self.elbo.differentiable_loss(model, self.reparam(self.guide), x, y, index, self.num_train)
        logits = model.trace.nodes["_RETURN"]["value"]
        return loss / self.num_train, int((logits.argmax(-1) == y).sum())

    def mean_kernels(self) -> dict[str, torch.Tensor]:
        """E_q[phi] = m (1 - p) (times 1/(1-p) with rescaling): the weight-scaling rule of dropout."""
        return {site: self.guide.distribution(site).mean_kernel() for site in self.guide.site_names}

    @torch.no_grad()
    def accuracy(self, split) -> float:
        return accuracy(self.model, split, predict=poutine.condition(self.model, data=self.mean_kernels()))

    def epoch_metrics(self) -> dict[str, Any]:
        rates = self.guide.drop_rates()
        return {"drop_rate": {self._label(site): round(p, 5) for site, p in rates.items()}}

    def _where(self, site: str) -> tuple[str, str]:
        """(layer, branch) of a sample site."""
        layer = self.model.layers[self.guide.site_names.index(site)]
        return layer.layer, layer.branch

    def _label(self, site: str) -> str:
        return "/".join(self._where(site))

    def supernet_state(self) -> dict[str, torch.Tensor]:
        """Plain state dict of the super-network: point weights plus the learned kernels m."""
        state = dict(self.model.net.state_dict())
        state.update({site.removeprefix("net."): m.detach() for site, m in self.guide.kernels().items()})
        return state

    def genotype(self, masks: dict[str, torch.Tensor]):
        return self.space.genotype_from_masks({self._where(s): m.cpu() for s, m in masks.items()})

    def _sample(self, drop_rate: float | None, desc: str, progress: bool):
        state = self.supernet_state()

        def score(masks):
            return accuracy(self.space.build(self.genotype(masks), inherit=state).to(self.device),
                            self.data.val)

        result = posterior_guided_sampling(lambda: self.guide.sample_architecture(drop_rate), score,
                                           self.options.num_candidates, desc, progress, self.world)
        genotype = self.genotype(result.best)
        net = self.space.build(genotype, inherit=state).to(self.device)
        return genotype, net, result

    def select(self, progress: bool = True) -> Selection:
        genotype, net, result = self._sample(None, "posterior-guided sampling", progress)
        _, base_net, base = self._sample(self.options.baseline_drop_rate, "random baseline", progress)
        extra = {
            "supernet_params": count_params(self.space.supernet()),
            "baseline_val_accuracy": base.best_score,
            "baseline_test_accuracy": accuracy(base_net, self.data.test),
            "baseline_params": count_params(base_net),
            "baseline_drop_rate": self.options.baseline_drop_rate,
            "num_candidates": self.options.num_candidates,
            "candidate_val_accuracy_mean": float(np.mean(result.scores)),
            "drop_rate": {self._label(s): p for s, p in self.guide.drop_rates().items()},
        }
        if self.options.finetune_epochs:
            recipe = TrainRecipe(epochs=self.options.finetune_epochs, batch_size=self.config.batch_size,
                                 lr=self.config.lr / 10, weight_decay=0.0)
            train_network(net, self.data.train, self.data.val, recipe, self.config.seed, progress, "fine-tune")
            extra["finetuned_test_accuracy"] = accuracy(net, self.data.test)
        return Selection(genotype, net, result.best_score, accuracy(net, self.data.test), extra)

    @torch.no_grad()
    def export(self, run_dir: Path) -> None:
        """Posterior draws of the keep masks as ArviZ ``InferenceData`` (``posterior.nc``) and plots."""
        layers = sorted({layer.layer for layer in self.model.layers})
        branches = [f"k{k}" for k in self.space.config.kernel_sizes]
        draws = self.options.posterior_draws
        keep = np.zeros((1, draws, len(layers), len(branches)))
        active = np.zeros_like(keep)
        rates = np.zeros((len(layers), len(branches)))
        position = {(lay.layer, lay.branch): (layers.index(lay.layer), branches.index(lay.branch))
                    for lay in self.model.layers}
        for d in range(draws):
            for site, mask in self.guide.sample_architecture().items():
                i, j = position[self._where(site)]
                keep[0, d, i, j] = float(mask.float().mean())
                active[0, d, i, j] = float(mask.any())
        for site, p in self.guide.drop_rates().items():
            rates[position[self._where(site)]] = p
        diagnostics.save_posterior(
            run_dir, {"keep_fraction": keep, "branch_active": active},
            coords={"layer": layers, "branch": branches}, dims=["layer", "branch"],
            constant={"drop_rate": rates}, attrs={"method": self.name, "seed": self.config.seed})
        diagnostics.plot_matrix(rates, layers, branches, "learned drop rate p (layer x branch)",
                                run_dir / "drop_rates.png")
