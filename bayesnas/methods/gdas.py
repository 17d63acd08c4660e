"""GDAS (Dong & Yang, "Searching for a Robust Neural Architecture in Four GPU Hours", CVPR 2019): a Gumbel-softmax
proposal over the decisions of any space (the DARTS cells of the paper, the chain) that drives weight-sharing
training (Algorithm 1), with the posterior-fading log shared by every proposal."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pyro import poutine

from bayesnas import diagnostics
from bayesnas.config import ConfigError
from bayesnas.domains import check_domains, setting
from bayesnas.elbo import AnalyticKLELBO
from bayesnas.guides.gdas import GumbelSoftmaxProposal
from bayesnas.methods.base import Phase, SearchMethod, Selection, register
from bayesnas.models.gdas import GDASModel, arch_site
from bayesnas.spaces.decisions import on_batch_statistics
from bayesnas.spaces.profile import count_params
from bayesnas.training import TrainRecipe, accuracy


@dataclass(frozen=True)
class GDASOptions:
    tau_max: float = setting(10.0, "> 0")
    """Initial Gumbel-softmax temperature (Algorithm 1)."""
    tau_min: float = setting(1.0, "> 0")
    """Final temperature: 1 in the paper, 0.1 in the authors' code."""
    sample_per: str = setting("batch", "{batch, example}")
    """``batch``: one architecture per mini-batch (authors' code); ``example``: one per example (paper)."""
    beta: float = setting(0.0, ">= 0")
    """Weight of KL(q(f) || uniform prior): 0 = GDAS as published (the term is left out), 1 = full ELBO."""
    arch_lr: float = setting(3e-4, "> 0")
    arch_weight_decay: float = setting(1e-3, ">= 0")
    arch_gate: str = setting("one", "{one, uniform}")
    """The forward value of the sampled op's gate in the architecture step: ``one`` (GDAS, Eq. 5-7: the logits learn
    from ``dL/dh`` at ``h = 1``) or ``uniform`` (``h ~ U(0, 1)``: in expectation the loss change of running the op
    against leaving it out, :func:`~bayesnas.models.gdas.uniform_gate`; beyond the paper). The weight step always
    runs the sampled architecture at gate 1."""
    warmup_epochs: int = setting(0, "[0, 100000]")
    """Epochs of weight training before the logits A start to learn (0 in the paper and the authors' code)."""
    retrain_epochs: int = setting(40, ">= 0")
    """Epochs of the from-scratch retraining (0: report the super-network's accuracy; ``bayesnas bench``)."""
    retrain_lr: float = setting(0.05, "> 0")
    retrain_weight_decay: float = setting(3e-4, ">= 0")
    retrain_auxiliary: float = setting(0.0, ">= 0")
    """Weight of the DARTS auxiliary head's loss in the retraining (cells only: the chain has no such head)."""
    retrain_drop_path: float = setting(0.0, "[0, 1)")
    """Drop-path rate of the retraining (cells only)."""
    posterior_draws: int = setting(100, "[1, 100000]")
    """Architecture draws exported to ArviZ; the exported ``log_likelihood`` scores each draw's network (on at
    most 1,000 validation examples): the end-of-search export's cost (``export_seconds``) grows with it."""

    def __post_init__(self) -> None:
        check_domains(self)
        if self.tau_min > self.tau_max:
            raise ValueError(f"tau_min must be <= tau_max, got {self.tau_min!r} > {self.tau_max!r}")


def annealed_temperature(epoch: int, epochs: int, tau_max: float, tau_min: float) -> float:
    """Linear schedule per epoch: ``tau_max`` at the first epoch, ``tau_min`` at the last (Algorithm 1)."""
    return tau_max - (tau_max - tau_min) * epoch / max(epochs - 1, 1)


@register
class GDAS(SearchMethod):
    """Weights on the weight split with SGD, logits A on the architecture split with Adam (Algorithm 1); one
    ``(n_g, K_g)`` matrix of logits per decision group of the space."""

    name = "gdas"
    options_type = GDASOptions
    progress_keys = ("tau", "log10_effective_architectures")

    def __init__(self, config, data, device) -> None:
        super().__init__(config, data, device)
        o = self.options
        self.check_warmup(o.warmup_epochs)
        self.space = self.build_space()
        shapes = {name: g.shape for name, g in self.space.groups().items()}
        if not shapes:
            raise ConfigError(f"{self.space.name} space of method 'gdas': no decision to search")
        per_example = o.sample_per == "example"
        self.model = GDASModel(self.space.supernet(sparse=True), shapes, per_example, o.beta).to(device)
        self.guide = GumbelSoftmaxProposal(shapes, o.tau_max, per_example, o.beta).to(device)
        self.elbo = AnalyticKLELBO()
        self.split_sizes = {name: len(split) for name, split in zip(("weights", "architecture"),
                                                                     data.halves(config.seed), strict=True)}

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model, "guide": self.guide}

    def supernet_state(self) -> dict[str, torch.Tensor]:
        return dict(self.model.net.state_dict())

    def phases(self) -> list[Phase]:
        o = self.options
        return [
            Phase.sgd(self.config, "weights", "weights", [{"params": list(self.model.parameters())}],
                      lambda x, y, index: self.loss(x, y, index, self.split_sizes["weights"])),
            Phase("architecture", "architecture", [{"params": list(self.guide.parameters())}],
                  lambda x, y, index: self.loss(x, y, index, self.split_sizes["architecture"],
                                                uniform_gate=o.arch_gate == "uniform"),
                  lr=o.arch_lr, optimizer="adam", betas=(0.5, 0.999), weight_decay=o.arch_weight_decay,
                  schedule="constant", start_epoch=o.warmup_epochs),
        ]

    def begin_epoch(self, epoch: int) -> None:
        o = self.options
        self.guide.temperature = annealed_temperature(epoch, self.config.epochs, o.tau_max, o.tau_min)

    def loss(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, size: int,
             uniform_gate: bool = False) -> tuple[torch.Tensor, int]:
        """Negative ELBO per example; with ``beta = 0`` the likelihood of the model conditioned on the
        proposal's straight-through draw (the architecture terms left out, as published). ``uniform_gate``: the
        sampled ops run at gates ``u ~ U(0, 1)`` (option ``arch_gate``)."""
        self.model.uniform_gate = uniform_gate
        try:
            return self._loss(x, y, index, size)
        finally:
            self.model.uniform_gate = False

    def _loss(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, size: int) -> tuple[torch.Tensor, int]:
        if self.options.beta:
            model = poutine.trace(self.model)
            loss = self.elbo.differentiable_loss(model, self.guide, x, y, index, size)
            logits = model.trace.nodes["_RETURN"]["value"]
        else:
            batch = len(x) if self.guide.per_example else None
            arch = {arch_site(g): self.guide.distribution(g, batch).rsample() for g in self.guide.groups}
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
        """Posterior fading (PC-NAS, Li et al., CVPR 2020, Eq. 10): the entropy of every decision (per group, in
        the space's order) and the effective number of architectures sharing the weights, exp(sum of the
        entropies), logged as log10."""
        log_n = self.guide.log_effective_architectures()
        return {"tau": round(self.guide.temperature, 4),
                "log10_effective_architectures": round(log_n / math.log(10), 4),
                "decision_entropy": {g: [round(float(v), 4) for v in h]
                                     for g, h in self.guide.decision_entropy().items()}}

    def genotype(self):
        """The space's derivation from the op probabilities softmax(A) (Sec. 3.3)."""
        return self.space.derive(self.guide.probabilities())

    def select(self, progress: bool = True) -> Selection:
        o = self.options
        genotype = self.genotype()
        net, val_acc, test_acc = self.retrain_selected(self.space, genotype, self.retrain_recipe(), progress,
                                                       **self.retrain_build_options())
        extra = {
            "supernet_params": count_params(self.model.net),
            self.space.name: genotype.choices,
            "retrain_epochs": o.retrain_epochs,
        }
        return Selection(genotype, net, val_acc, test_acc, extra, retrained=o.retrain_epochs > 0)

    def retrain_recipe(self) -> TrainRecipe:
        """The retraining options (``retrain_*``) with the search's batch size and augmentation."""
        o = self.options
        return TrainRecipe(epochs=o.retrain_epochs, batch_size=self.config.batch_size, lr=o.retrain_lr,
                           weight_decay=o.retrain_weight_decay, shift=self.config.shift, flip=self.config.flip,
                           aux_weight=o.retrain_auxiliary)

    def retrain_build_options(self) -> dict[str, Any]:
        return {"auxiliary": self.options.retrain_auxiliary > 0, "drop_path": self.options.retrain_drop_path}

    @torch.no_grad()
    def draw_architecture(self) -> dict[str, torch.Tensor]:
        """One architecture from q(f) = softmax(A): one op per decision (Eq. 3's categorical), one-hot
        ``(n_g, K_g)`` per group."""
        return {g: torch.nn.functional.one_hot(torch.multinomial(p, 1).squeeze(-1), p.shape[-1]).to(p.dtype)
                for g, p in self.guide.probabilities().items()}

    def draw_genotype(self):
        """:meth:`draw_architecture` as a genotype: the space's derivation (Sec. 3.3) from the drawn ops weighted
        by their probabilities (on the chain the drawn ops themselves; on cells the two inputs of each state whose
        drawn op is most probable)."""
        probabilities = self.guide.probabilities()
        drawn = self.draw_architecture()
        return self.space.derive({g: drawn[g] * p for g, p in probabilities.items()})

    def posterior_network(self):
        """:meth:`draw_architecture` in the super-network, BatchNorm on batch statistics as for the selected
        genotype (:meth:`inherited_network`): the single-path super-network's running averages mix every
        architecture it trained (on digits, 32 draws scored 0.21 test accuracy with them, against 0.78 for the
        selected genotype on batch statistics)."""
        return on_batch_statistics(self.model.net, self.draw_architecture())

    @torch.no_grad()
    def export(self, run_dir: Path) -> list[dict[str, torch.Tensor]]:
        """Op probabilities per (decision, op) and draws of architectures, as ``posterior.nc``; one plot of the
        op probabilities per decision group. Returns the drawn one-hot choices, one dict per draw."""
        probabilities = self.guide.probabilities()
        draws = self.options.posterior_draws
        choice = {g: torch.distributions.OneHotCategorical(probs=p).sample((draws,))
                  for g, p in probabilities.items()}  # (draw, n_g, K_g)
        probs = {g: p.cpu().numpy() for g, p in probabilities.items()}
        drawn = {g: c.cpu().numpy()[None] for g, c in choice.items()}  # (chain, draw, n_g, K_g)
        diagnostics.save_decision_posterior(run_dir, self.space, {"op_choice": drawn}, {"op_probability": probs},
                                            attrs=self.posterior_attrs())
        diagnostics.plot_decision_groups(self.space, probs, "GDAS op probabilities, {group}",
                                         run_dir / "op_probabilities")
        return [{g: c[s] for g, c in choice.items()} for s in range(draws)]

    def draw_network(self, draw: dict[str, torch.Tensor]):
        """The super-network at one drawn one-hot choice per decision, as :meth:`posterior_network`."""
        return on_batch_statistics(self.model.net, draw)
