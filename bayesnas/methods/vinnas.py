"""VINNAS (Ferianc, Fan & Rodrigues, arXiv:2007.06103, 2020; Eq. 4-8, Algorithm 1): variational dropout with
log-uniform (ARD) priors over the weights and op strengths of a dense super-network (the DARTS cells of the paper,
or the chain: any space's decisions, each mixing its ops by softmax(alpha)), then selection by the positive SNR of
alpha through the space's derivation.

Algorithm 1 as the search loop runs it: every step does stage 1 (theta_w and Psi on a mini-batch of one half
of the training split) and, from epoch ``warmup_epochs`` on ("weight epochs"), stage 2 (theta_alpha on a
mini-batch of the other half); both minimise Eq. 8 with the gammas of the epoch. After each epoch the error of
the posterior-mean super-network on the architecture half is measured and theta_alpha is copied when it is the
best so far; selection restores that copy.

The loss of a stage is Eq. 8 with the half it trains on as the data set D (N examples, the mini-batch's NLL
scaled by N / batch): ``sum_D NLL + g1 KL_w + g2 KL_alpha + g3 sum_{i,j} H(E_q[z^{i,j}])``, each gamma exactly
the paper's; the optimisers see it divided by N (a constant factor per stage).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from bayesnas import diagnostics
from bayesnas.config import ConfigError
from bayesnas.data import Split
from bayesnas.distributions import kl_normal_log_uniform_elementwise
from bayesnas.domains import check_domains, setting
from bayesnas.elbo import AnalyticKLELBO
from bayesnas.guides.vinnas import VINNASGuide
from bayesnas.methods.base import Phase, SearchMethod, Selection, register
from bayesnas.models.vinnas import VINNASModel
from bayesnas.reparam import LocalReparameterization
from bayesnas.spaces.genotype import Genotype
from bayesnas.spaces.profile import count_params
from bayesnas.training import TrainRecipe, accuracy


@dataclass(frozen=True)
class VINNASOptions:
    arch_lr: float = setting(3e-3, "> 0")
    """Adam learning rate of theta_alpha, constant over the search (Sec. V-A; the weights use the search lr
    with a cosine schedule)."""
    warmup_epochs: int = setting(5, "[0, 100000]")
    """"Weight epochs" of Algorithm 1: stage 2 starts at this epoch."""
    gamma_w: float = setting(1.0, ">= 0")
    """Final gamma_1 (weight on KL_w; 1 is the ELBO's own weight)."""
    gamma_alpha: float = setting(1.0, ">= 0")
    """Final gamma_2 (weight on KL_alpha)."""
    gamma_entropy: float = setting(0.1, ">= 0")
    """Final gamma_3 (weight on sum_{i,j} H(E_q[z^{i,j}]) in Eq. 8), in the paper's units: the entropy counts
    once against the NLL summed over the N examples of the stage's half and against the KLs, so its pull on
    alpha per example is gamma_3 / N. (Earlier versions scaled this option by N, i.e. it meant gamma_3 / N:
    multiply an old value by the size of the architecture half to convert.)"""
    gamma_start: int | None = setting(None, ">= 0 or null")
    """Epoch at which the gammas leave 0 and start rising linearly to their final values at the last epoch
    (null: ``warmup_epochs``)."""
    label_smoothing: float = setting(0.1, "[0, 1)")
    init_log_var: float = setting(-10.0, "finite")
    """Initial log sigma^2 of every weight and strength (Sec. V-A)."""
    alpha_init_std: float = setting(1e-3, ">= 0")
    """mu_alpha ~ N(0, std^2): the paper's N(0, 0.001) read as a standard deviation (DARTS's 1e-3 * randn)."""
    zero_alpha_max: float | None = setting(0.0, ">= 0 or null")
    """Clip of the zero op's sampled strength (Sec. V-A "we clip the strength of the zero operation"; null: off)."""
    entropy_samples: int = setting(16, ">= 1")
    """Draws of alpha that estimate E_q[z] in the entropy term."""
    selection: str = setting("snr", "{snr, alone}")
    """How each decision's op is read from q: ``snr`` (Sec. IV-C) by the positive SNR of alpha; ``alone`` by the
    architecture-half loss of the super-network with that op alone at the decision (:meth:`alone_scores`; beyond
    the paper; one pass over the architecture half per decision and op). The cell space's edge choice follows the
    same scores."""
    prune_threshold: float = setting(3.0, "> 0")
    """Weights with log(sigma^2 / mu^2) >= this are pruned (Molchanov et al.; Sec. V-B)."""
    retrain_epochs: int = setting(40, "[0, 100000]")
    """Epochs of the from-scratch retraining (0: report the super-network's accuracy; ``bayesnas bench``)."""
    retrain_lr: float = setting(0.05, "> 0")
    retrain_batch_size: int = setting(64, "[1, 65536]")
    retrain_weight_decay: float = setting(3e-4, ">= 0")
    posterior_draws: int = setting(200, "[1, 100000]")
    """Draws of alpha exported to ArviZ; the exported ``log_likelihood`` scores each draw's network (on at
    most 1,000 validation examples): the end-of-search export's cost (``export_seconds``) grows with it."""

    def __post_init__(self) -> None:
        check_domains(self)


@register
class VINNAS(SearchMethod):
    """VINNAS: ARD over ops and weights by variational dropout (Eq. 4-8), two-stage Algorithm 1, SNR selection."""

    name = "vinnas"
    options_type = VINNASOptions

    @classmethod
    def summary_lines(cls, summary: dict[str, Any]) -> list[str]:
        """The super-network's weights left after ARD pruning (Eq. 6: log lambda below the threshold)."""
        return [f"super-network weights left after pruning at log lambda >= {summary['prune_threshold']:g}: "
                f"{summary['pruned_params']:,} ({1 - summary['pruned_fraction']:.1%})"]
    space_defaults: ClassVar[dict[str, dict[str, Any]]] = {"cells": {"ops": "vinnas"}, "chain": {"affine": False}}
    """Space options the method sets unless the configuration does: the paper's op set of K = 10 on cells (the
    chain's op sets are its own) and, on both, BatchNorm without affine parameters during the search (Sec. V-A)."""

    def __init__(self, config, data, device) -> None:
        super().__init__(config, data, device)
        o = self.options
        self.check_warmup(o.warmup_epochs)
        self.space = self.build_space()
        groups = self.space.groups()
        if not groups:
            raise ConfigError(f"{self.space.name} space of method 'vinnas': no decision to search (fixed_reduction "
                              "with no N cell?)")
        self.model = VINNASModel(self.space.supernet(sparse=False), groups, o.label_smoothing,
                                 o.zero_alpha_max).to(device)
        self.guide = VINNASGuide(self.model.initial_weights, {name: g.shape for name, g in groups.items()},
                                 o.init_log_var, o.alpha_init_std).to(device)
        # the loss scores the weight sites by their registered KL: their guide draws are never read
        self.reparam = LocalReparameterization(defer_draws=True)
        self.elbo = AnalyticKLELBO()
        self.weight_half, self.arch_half = data.halves(config.seed)
        self.epoch = 0
        self._nll = [0.0, 0]
        self.set_gammas(0)

    # ------------------------------------------------------------------ hooks
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model, "guide": self.guide}

    def phases(self) -> list[Phase]:
        c, o = self.config, self.options
        weights = Phase("weights", "weights", [
            {"name": "theta_w", "params": list(self.guide.weight_parameters())},
            {"name": "psi", "params": list(self.model.parameters())},
        ], self.weight_loss, lr=c.lr, optimizer="adam", lr_min=c.lr_min, weight_decay=c.weight_decay,
            grad_clip=c.grad_clip, schedule="cosine")
        architecture = Phase("architecture", "architecture", [
            {"name": "theta_alpha", "params": list(self.guide.alpha_parameters())},
        ], self.architecture_loss, lr=o.arch_lr, optimizer="adam", schedule="constant", grad_clip=c.grad_clip,
            start_epoch=o.warmup_epochs)
        return [weights, architecture]

    def gammas_at(self, epoch: int) -> tuple[float, float, float]:
        """Linear rise from 0 (before ``gamma_start``) to the final values at the last epoch (Algorithm 1, l. 19)."""
        o = self.options
        start = o.warmup_epochs if o.gamma_start is None else o.gamma_start
        if epoch < start:
            return 0.0, 0.0, 0.0
        frac = min(1.0, (epoch - start + 1) / max(self.config.epochs - start, 1))
        return o.gamma_w * frac, o.gamma_alpha * frac, o.gamma_entropy * frac

    def set_gammas(self, epoch: int) -> None:
        self.model.gammas = self.guide.gammas = self.gammas_at(epoch)

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.set_gammas(epoch)
        self._nll = [0.0, 0]

    def _loss(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, size: int,
              frozen: set[str]) -> tuple[torch.Tensor, int]:
        """Eq. 8 over a split of ``size`` = N examples, divided by N:
        ``mean NLL + (g1 KL_w + g2 KL_alpha + g3 sum H(E_q[z])) / N``."""
        o = self.options
        self.guide.frozen = frozen
        entropy = None
        if self.model.gammas[2] > 0:
            entropy = self.guide.op_entropy(o.entropy_samples, self.model.clip)
        loss = self.elbo.differentiable_loss(self.reparam(self.model), self.reparam(self.guide), x, y, index, size,
                                             op_entropy=entropy)
        logits = self.model.last_logits
        return loss / size, int((logits.argmax(-1) == y).sum())

    def weight_loss(self, x, y, index):
        """Stage 1: theta_w and Psi on the weight half (theta_alpha enters detached)."""
        loss, right = self._loss(x, y, index, len(self.weight_half), {"alpha"})
        with torch.no_grad():
            nll = F.cross_entropy(self.model.last_logits, y, label_smoothing=self.options.label_smoothing)
        self._nll[0] += float(nll) * len(y)
        self._nll[1] += len(y)
        return loss, right

    def architecture_loss(self, x, y, index):
        """Stage 2: theta_alpha on the architecture half (theta_w enters detached)."""
        return self._loss(x, y, index, len(self.arch_half), {"weights"})

    @torch.no_grad()
    def accuracy(self, split: Split, alphas: dict[str, torch.Tensor] | None = None) -> float:
        """Accuracy of the posterior-mean super-network (weights with log lambda >= threshold pruned)."""
        weights = self.guide.weight_means(self.options.prune_threshold)
        alphas = self.guide.alpha_means() if alphas is None else alphas
        return accuracy(self.model, split, predict=lambda x: self.model.predict(x, weights, alphas))

    @torch.no_grad()
    def kl_terms(self) -> tuple[float, float]:
        """Unweighted ``sum KL_w`` and ``sum KL_alpha`` (nats) of the current guide."""
        kl_w = sum(float(kl_normal_log_uniform_elementwise(self.guide.mu_w[k], self.guide.log_var_w[k]).sum())
                   for k in self.guide.mu_w)
        kl_a = sum(float(kl_normal_log_uniform_elementwise(self.guide.mu_alpha[k], self.guide.log_var_alpha[k])
                         .sum()) for k in self.guide.groups)
        return kl_w, kl_a

    @torch.no_grad()
    def pruned_params(self) -> int:
        """Super-network weights left after pruning at log lambda >= threshold, plus the point parameters."""
        kept = sum(int((ll < self.options.prune_threshold).sum()) for ll in self.guide.log_lambdas().values())
        return kept + sum(p.numel() for p in self.model.parameters())

    def epoch_metrics(self) -> dict[str, Any]:
        o = self.options
        row: dict[str, Any] = {}
        if self.epoch >= o.warmup_epochs:  # Algorithm 1, lines 15-18
            error = 1.0 - self.accuracy(self.arch_half)
            self.guide.remember_best(error, self.epoch)
            row["arch_error"] = error
        kl_w, kl_a = self.kl_terms()
        with torch.no_grad():
            entropy = float(self.guide.op_entropy(64, self.model.clip))
        g_w, g_a, g_e = self.model.gammas
        row.update({
            "nll": self._nll[0] / max(self._nll[1], 1), "kl_w": kl_w, "kl_alpha": kl_a, "op_entropy": entropy,
            "gamma_w": g_w, "gamma_alpha": g_a, "gamma_entropy": g_e,
            "pruned_params": self.pruned_params(),
            "best_arch_error": float(self.guide.best_error) if int(self.guide.best_epoch) >= 0 else None,
        })
        return row

    # ------------------------------------------------------------------ selection
    @torch.no_grad()
    def derive(self) -> Genotype:
        """The space's derivation from the scores of option ``selection`` (Sec. IV-C: the positive SNR of alpha):
        on cells, per state, the two incoming edges whose best non-zero op scores highest, with that op; on the
        chain, the op of highest score per mixop."""
        return self.space.derive(self.selection_scores())

    def selection_scores(self) -> dict[str, torch.Tensor]:
        """Per (decision, op), the score option ``selection`` ranks by: the SNR or :meth:`alone_scores`."""
        return self.guide.snr() if self.options.selection == "snr" else self.alone_scores()

    @torch.no_grad()
    def alone_scores(self) -> dict[str, torch.Tensor]:
        """Per (decision, op), minus the mean cross-entropy on the architecture half of the posterior-mean
        super-network (mean weights, pruned; mean alpha) with that decision's mixture replaced by the op alone
        and every other decision at ``z = softmax(mu_alpha)``: what choosing the op does to the super-network, not
        alpha's size (in the spirit of Wang et al., "Rethinking architecture selection in differentiable NAS", ICLR
        2021, Sec. 4, who score an op by the validation accuracy lost when it is removed). In a residual mixop
        ``x + sum_k z_k branch_k(x)``, ``z_Identity`` also scales every branch down, so alpha mixes the preference
        for an op with the scale the branches want (``benchmarks/vinnas_branch_scale.py``)."""
        relaxed = self.model.op_weights(self.guide.alpha_means())
        scores = {}
        for g, z in relaxed.items():
            scores[g] = torch.empty_like(z)
            for d in range(z.shape[0]):
                for k in range(z.shape[1]):
                    alone = z.clone()
                    alone[d] = F.one_hot(torch.tensor(k, device=z.device), z.shape[1]).to(z.dtype)
                    scores[g][d, k] = -self.architecture_half_loss({**relaxed, g: alone})
        return scores

    @torch.no_grad()
    def architecture_half_loss(self, z: dict[str, torch.Tensor], batch_size: int = 512) -> float:
        """Mean cross-entropy on the architecture half of the posterior-mean super-network (mean weights, pruned)
        with op weights ``z`` per decision (BatchNorm on the statistics of each ``batch_size`` images)."""
        self.model.set_weights(self.guide.weight_means(self.options.prune_threshold))
        split, total = self.arch_half, 0.0
        for start in range(0, len(split), batch_size):
            x, y = split.x[start:start + batch_size], split.y[start:start + batch_size]
            total += float(F.cross_entropy(self.model.net(x, z), y, reduction="sum"))
        return total / len(split)

    def select(self, progress: bool = True) -> Selection:
        o = self.options
        restored = self.guide.restore_best()
        scores = self.selection_scores()
        genotype = self.space.derive(scores)
        net, val_acc, test_acc = self.retrain_selected(self.space, genotype, self.retrain_recipe(), progress)
        supernet = count_params(self.space.supernet())
        pruned = self.pruned_params()
        extra = {
            "supernet_params": supernet, "pruned_params": pruned, "pruned_fraction": 1 - pruned / supernet,
            "prune_threshold": o.prune_threshold,
            self.space.name: genotype.choices, "supernet_val_accuracy": self.accuracy(self.data.val),
            "best_arch_error": float(self.guide.best_error) if restored else None,
            "best_arch_epoch": int(self.guide.best_epoch) if restored else None,
            "retrain_epochs": o.retrain_epochs,
            "selection": o.selection,
            "snr": {k: v.detach().cpu().tolist() for k, v in self.guide.snr().items()},
            **({"alone_loss": {k: (-v).cpu().tolist() for k, v in scores.items()}} if o.selection == "alone" else {}),
        }
        return Selection(genotype, net, val_acc, test_acc, extra, retrained=o.retrain_epochs > 0)

    def retrain_recipe(self) -> TrainRecipe:
        """The retraining options (``retrain_*``) with the search's augmentation."""
        o, c = self.options, self.config
        return TrainRecipe(epochs=o.retrain_epochs, batch_size=o.retrain_batch_size, lr=o.retrain_lr,
                           weight_decay=o.retrain_weight_decay, shift=c.shift, flip=c.flip)

    @torch.no_grad()
    def draw_genotype(self):
        """The space's derivation from z = softmax(alpha) with alpha drawn from q (Eq. 5): the most weighted op
        of each decision under the draw, as the search derives its pick from the posterior."""
        alphas = {g: self.guide.alpha_distribution(g).sample() for g in self.guide.groups}
        return self.space.derive(self.model.op_weights(alphas))

    @torch.no_grad()
    def posterior_network(self):
        """Weights and alpha drawn from the Gaussian guide q (Eq. 5; no local reparameterisation: one weight draw
        for every example), weights the method prunes (log lambda >= ``prune_threshold``) at 0 as in its
        evaluation."""
        weights = self.guide.sample_weights(self.options.prune_threshold)
        alphas = {g: self.guide.alpha_distribution(g).sample() for g in self.guide.groups}
        return lambda x: self.model.predict(x, weights, alphas)

    def inherited_network(self, genotype):
        """VINNAS's point estimate, the posterior-mean network it evaluates while searching (mean weights, pruned;
        mean alpha): its weights are Gaussian and its super-network has no BatchNorm to build a genotype from. A
        genotype of one op per decision (the chain's) runs its own path of the mean weights instead, so that
        architectures are told apart (an architecture ensemble's greedy selection scores them so)."""
        weights = self.guide.weight_means(self.options.prune_threshold)
        if "ops" not in genotype.choices:
            alphas = self.guide.alpha_means()
            return lambda x: self.model.predict(x, weights, alphas)
        path = self.space.index_architecture(self.space.indices(genotype), self.device)

        def predict(x: torch.Tensor) -> torch.Tensor:
            self.model.set_weights(weights)
            return self.model.net(x, path)

        return predict

    @torch.no_grad()
    def export(self, run_dir: Path) -> list[dict[str, torch.Tensor]]:
        """Draws of alpha and z = softmax(alpha) of the same alpha as ArviZ ``InferenceData`` (``posterior.nc``;
        dims decision, op), the SNR and q's parameters as constant data, and one SNR plot per decision group.
        Returns the drawn alphas, one dict per draw."""
        draws = self.options.posterior_draws
        groups = self.guide.groups
        alpha = {g: self.guide.alpha_distribution(g).sample((draws,)) for g in groups}  # (draw, n_g, K_g)

        def numpy(values: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
            return {g: values[g].detach().cpu().numpy() for g in groups}

        snr = numpy(self.guide.snr())
        drawn = {name: {g: v[None] for g, v in numpy(values).items()}  # (chain, draw, n_g, K_g)
                 for name, values in (("alpha", alpha), ("op_weight", self.model.op_weights(alpha)))}
        diagnostics.save_decision_posterior(
            run_dir, self.space, drawn,
            {"snr": snr, "mu_alpha": numpy(self.guide.alpha_means()),
             "sigma_alpha": numpy({g: torch.exp(0.5 * v) for g, v in self.guide.log_var_alpha.items()})},
            attrs=self.posterior_attrs())
        diagnostics.plot_decision_groups(self.space, snr, "positive SNR mu/sigma^2 of alpha ({group})",
                                         run_dir / "snr")
        return [{g: a[s] for g, a in alpha.items()} for s in range(draws)]

    @torch.no_grad()
    def draw_network(self, draw: dict[str, torch.Tensor]):
        """The super-network at one draw's alpha, with weights drawn fresh from q for it as
        :meth:`posterior_network` draws them (the ``posterior`` group holds no weights, so a draw's weights
        cannot be read back from it)."""
        weights = self.guide.sample_weights(self.options.prune_threshold)
        return lambda x: self.model.predict(x, weights, draw)
