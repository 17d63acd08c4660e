"""PGNAS (Zhou et al., "One-Shot Neural Architecture Search Through A Posteriori Distribution
Guided Sampling", AAAI 2020): the model/guide pair under the search loop, and posterior-guided sampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pyro import poutine

from bayesnas import diagnostics
from bayesnas.domains import check_domains, setting
from bayesnas.elbo import AnalyticKLELBO
from bayesnas.guides.pgnas import ConcreteDropoutGuide
from bayesnas.methods.base import Phase, SearchMethod, Selection, register
from bayesnas.models.pgnas import PGNASModel
from bayesnas.reparam import LocalReparameterization
from bayesnas.select import posterior_guided_sampling
from bayesnas.spaces.profile import count_params
from bayesnas.training import TrainRecipe, accuracy, train_network


@dataclass(frozen=True)
class PGNASOptions:
    temperature: float = setting(0.2, "> 0")
    """tau of the relaxed Bernoulli, Eq. 16 (the paper finds 1/5 better than 2/3, Table 5)."""
    init_drop_rate: float = setting(0.1, "(0, 1)")
    """Initial drop rate p of every kernel (authors' code)."""
    prior_precision: float = setting(150.0, "> 0")
    """d^2 = l^2 of the slab N(0, 1/d^2) (Table 4: 150 best of {50, 150, 250, 500})."""
    spike_prob: float = setting(0.0, "[0, 1)")
    """u of the spike-and-slab prior; Eq. 15 needs u = 0 (the paper's choice)."""
    kl_dataset_size: int | None = setting(None, ">= 1 or null")
    """N used to weight the KL against the likelihood (authors: 5e5 on CIFAR); null: the real N."""
    rescale: bool = False
    """Divide kept activations by 1 - p (Gal's concrete dropout); off in the authors' code. The KL and the
    networks built from masks then use the kept kernel m / (1 - p) too."""
    drop_rate_lr: float | None = setting(None, "> 0 or null")
    """Learning rate of the drop-rate logits (null: the search lr)."""
    num_candidates: int = setting(100, "[1, 1000000]")
    """C, the number of architecture-weight pairs drawn and ranked (Algorithm 1, line 7)."""
    baseline: bool = True
    """Train the "Random" baseline of Table 3 beside the search: a second super-network, same space, epochs and
    batches, trained with one fixed drop rate (no learned rates, as in Bender et al., ICML 2018), then sampled
    and scored like PGNAS (C candidates, best on validation, no fine-tuning). Doubles the search's cost."""
    baseline_drop_rate: float = setting(0.3, "(0, 1)")
    """The baseline's fixed drop rate. The paper does not give it (Table 3: its sampled networks are about as
    large as PGNAS's); 0.3 keeps about 60 % of the branch weights, more than PGNAS keeps on the presets, so the
    baseline is not handicapped by size."""
    finetune_epochs: int = setting(0, "[0, 100000]")
    """Optional fine-tuning of the selected pair (0: none, as in the paper)."""
    posterior_draws: int = setting(200, "[1, 100000]")
    """Architecture draws exported to ArviZ; the exported ``log_likelihood`` scores each draw's network (on at
    most 1,000 validation examples): the end-of-search export's cost (``export_seconds``) grows with it."""

    def __post_init__(self) -> None:
        check_domains(self)


BASELINE_GENOTYPE = "baseline_genotype.json"
"""The fixed-rate baseline's pick, next to ``genotype.json`` in the run folder."""


@register
class PGNAS(SearchMethod):
    """Posterior-guided NAS: SVI of the concrete-dropout posterior (Eq. 14-16), then Algorithm 1's sampling.

    With ``baseline`` on (the default) a second super-network with a fixed drop rate trains in the same loop (its
    own phase on the same split) and is checkpointed with it; :meth:`select` reports its pick as
    ``baseline_*``.
    """

    name = "pgnas"
    options_type = PGNASOptions

    @classmethod
    def summary_lines(cls, summary: dict[str, Any]) -> list[str]:
        """The fixed-rate baseline beside the selection (Sec. 4: the same candidates, one fixed drop rate)."""
        return [f"fixed-rate baseline (a super-network trained with drop rate {summary['baseline_drop_rate']}, "
                f"same candidates): test accuracy {summary['baseline_test_accuracy']:.4f}, "
                f"parameters {summary['baseline_params']:,}"] if "baseline_test_accuracy" in summary else []
    space_reasons = {
        "cells": "its spike-and-slab prior switches input channels of searchable convolutions off, and a DARTS "
                 "cell's choices are between operations, not channels",
    }

    def __init__(self, config, data, device) -> None:
        super().__init__(config, data, device)
        o = self.options
        self.space = self.build_space()
        self.num_train = len(data.train)
        self.kl_scale = self.num_train / o.kl_dataset_size if o.kl_dataset_size else 1.0
        self.model, self.guide = self._supernet(o.init_drop_rate, learn_drop_rate=True)
        self.reparam = LocalReparameterization()
        self.elbo = AnalyticKLELBO()
        self.baseline_model: PGNASModel | None = None
        self.baseline_guide: ConcreteDropoutGuide | None = None
        if o.baseline:
            self.baseline_model, self.baseline_guide = self._supernet(o.baseline_drop_rate, learn_drop_rate=False)
            self.baseline_reparam = LocalReparameterization()
        self._baseline_genotype = None
        self._terms = [0.0, 0.0, 0]  # this epoch's NLL sum, KL sum and examples (begin_epoch resets them)
        self._last_logits: torch.Tensor | None = None

    def _supernet(self, drop_rate: float, learn_drop_rate: bool) -> tuple[PGNASModel, ConcreteDropoutGuide]:
        o = self.options
        net = self.space.channel_supernet()
        model = PGNASModel(net, o.prior_precision, o.spike_prob, self.kl_scale).to(self.device)
        guide = ConcreteDropoutGuide(model.initial_weights, o.temperature, drop_rate, o.rescale, self.kl_scale,
                                     learn_drop_rate=learn_drop_rate).to(self.device)
        return model, guide

    def modules(self) -> dict[str, torch.nn.Module]:
        modules = {"model": self.model, "guide": self.guide}
        if self.baseline_model is not None:
            modules.update(baseline_model=self.baseline_model, baseline_guide=self.baseline_guide)
        return modules

    def networks(self) -> dict[str, torch.nn.Module]:
        nets = {"net": self.model.net}
        if self.baseline_model is not None:
            nets["baseline_net"] = self.baseline_model.net
        return nets

    def phases(self) -> list[Phase]:
        phases = [Phase.sgd(self.config, "search", "train", self.param_groups(), self.training_loss)]
        if self.baseline_model is not None:
            phases.append(Phase.sgd(self.config, "baseline", "train", self.baseline_param_groups(),
                                    self.baseline_loss))
        return phases

    def param_groups(self) -> list[dict[str, Any]]:
        drop_lr = self.options.drop_rate_lr or self.config.lr
        return [
            {"name": "kernels", "params": list(self.guide.weights.values())},
            {"name": "drop_rates", "params": list(self.guide.drop_logits.values()), "lr": drop_lr,
             "weight_decay": 0.0},
            {"name": "network", "params": list(self.model.parameters())},
        ]

    def baseline_param_groups(self) -> list[dict[str, Any]]:
        """The baseline's kernels and point weights (its drop rate is fixed)."""
        return [
            {"name": "kernels", "params": list(self.baseline_guide.weights.values())},
            {"name": "network", "params": list(self.baseline_model.parameters())},
        ]

    def _negative_elbo(self, model, guide, reparam, x, y, index):
        traced = poutine.trace(reparam(model))
        loss = self.elbo.differentiable_loss(traced, reparam(guide), x, y, index, self.num_train)
        logits = self._last_logits = traced.trace.nodes["_RETURN"]["value"].detach()  # no graph kept for metrics
        return loss / self.num_train, int((logits.argmax(-1) == y).sum())

    def training_loss(self, x, y, index):
        """Negative ELBO of Eq. 14 per training example: ``(kl_scale KL - (N/M) sum_i log p(y_i | ...)) / N``; its
        two terms are summed over the epoch for the metrics (``nll``, ``kl``: both per training example)."""
        loss, right = self._negative_elbo(self.model, self.guide, self.reparam, x, y, index)
        with torch.no_grad():
            nll = float(F.cross_entropy(self._last_logits, y))
        self._terms[0] += nll * len(y)
        self._terms[1] += (float(loss.detach()) - nll) * len(y)
        self._terms[2] += len(y)
        return loss, right

    def begin_epoch(self, epoch: int) -> None:
        self._terms = [0.0, 0.0, 0]  # NLL sum, KL sum, examples

    def baseline_loss(self, x, y, index):
        """The same negative ELBO for the fixed-rate super-network (its KL's entropy term is a constant)."""
        return self._negative_elbo(self.baseline_model, self.baseline_guide, self.baseline_reparam, x, y, index)

    def _pair(self, baseline: bool) -> tuple[PGNASModel, ConcreteDropoutGuide]:
        """The model and guide of PGNAS, or of its fixed-rate baseline."""
        return (self.baseline_model, self.baseline_guide) if baseline else (self.model, self.guide)

    def mean_kernels(self, baseline: bool = False) -> dict[str, torch.Tensor]:
        """E_q[phi] = m (1 - p) (m with rescaling): the weight-scaling rule of dropout."""
        _, guide = self._pair(baseline)
        return {site: guide.distribution(site).mean_kernel() for site in guide.site_names}

    @torch.no_grad()
    def accuracy(self, split, baseline: bool = False) -> float:
        """Accuracy of the super-network (the baseline's with ``baseline``) at its mean kernels."""
        model, _ = self._pair(baseline)
        return accuracy(model, split, predict=poutine.condition(model, data=self.mean_kernels(baseline)))

    def epoch_metrics(self) -> dict[str, Any]:
        rates = self.guide.drop_rates()
        nll, kl, n = self._terms
        metrics: dict[str, Any] = {"nll": nll / max(n, 1), "kl": kl / max(n, 1),
                                   "drop_rate": {self._label(site): round(p, 5) for site, p in rates.items()}}
        if self.baseline_model is not None:
            metrics["baseline_val_accuracy"] = self.accuracy(self.data.val, baseline=True)
        return metrics

    def _where(self, site: str) -> tuple[str, str]:
        """(layer, branch) of a sample site."""
        layer = self.model.layers[self.guide.site_names.index(site)]
        return layer.layer, layer.branch

    def _label(self, site: str) -> str:
        return "/".join(self._where(site))

    def supernet_state(self, baseline: bool = False) -> dict[str, torch.Tensor]:
        """Plain state dict of the super-network (the baseline's with ``baseline``): point weights plus the
        kernels a kept slice carries (``m``, or ``m / (1 - p)`` with rescaling)."""
        model, guide = self._pair(baseline)
        state = dict(model.net.state_dict())
        state.update({site.removeprefix("net."): k.detach() for site, k in guide.kept_kernels().items()})
        return state

    def masked_supernet(self, masks: dict[str, torch.Tensor], baseline: bool = False):
        """``x -> logits`` of the super-network itself at hard keep masks (the model conditioned on
        ``phi = kept kernel * z``); the network built from the same masks computes the same function."""
        model, guide = self._pair(baseline)
        return poutine.condition(model, data={s: k.detach() for s, k in guide.masked_kernels(masks).items()})

    def genotype(self, masks: dict[str, torch.Tensor]):
        return self.space.genotype_from_masks({self._where(s): m.cpu() for s, m in masks.items()})

    def _sample(self, baseline: bool, desc: str, progress: bool):
        state = self.supernet_state(baseline)
        _, guide = self._pair(baseline)

        def score(masks):
            return accuracy(self.space.build(self.genotype(masks), inherit=state).to(self.device),
                            self.data.val)

        result = posterior_guided_sampling(guide.sample_architecture, score, self.options.num_candidates, desc,
                                           progress, self.world)
        genotype = self.genotype(result.best)
        net = self.space.build(genotype, inherit=state).to(self.device)
        return genotype, net, result

    def _finetune(self, net, progress: bool) -> float:
        recipe = self.in_retraining_mode(TrainRecipe(epochs=self.options.finetune_epochs,
                                                    batch_size=self.config.batch_size, lr=self.config.lr / 10,
                                                    weight_decay=0.0))
        train_network(net, self.data.train, self.data.val, recipe, self.config.seed, progress, "fine-tune")
        return accuracy(net, self.data.test, **recipe.evaluation())

    def select(self, progress: bool = True) -> Selection:
        genotype, net, result = self._sample(False, "posterior-guided sampling", progress)
        extra: dict[str, Any] = {
            "supernet_params": count_params(self.space.channel_supernet()),
            "num_candidates": self.options.num_candidates,
            "candidate_val_accuracy_mean": float(np.mean(result.scores)),
            "drop_rate": {self._label(s): p for s, p in self.guide.drop_rates().items()},
        }
        base_net = None
        if self.baseline_model is not None:
            self._baseline_genotype, base_net, base = self._sample(True, "fixed-rate baseline", progress)
            extra.update({
                "baseline_drop_rate": self.options.baseline_drop_rate,
                "baseline_val_accuracy": base.best_score,
                "baseline_test_accuracy": accuracy(base_net, self.data.test),
                "baseline_params": count_params(base_net),
                "baseline_candidate_val_accuracy_mean": float(np.mean(base.scores)),
                "baseline_genotype": BASELINE_GENOTYPE,
            })
        if self.options.finetune_epochs:
            extra["finetuned_test_accuracy"] = self._finetune(net, progress)
            if base_net is not None:
                extra["baseline_finetuned_test_accuracy"] = self._finetune(base_net, progress)
        return Selection(genotype, net, result.best_score, accuracy(net, self.data.test), extra,
                         retrained=self.options.finetune_epochs > 0)

    @torch.no_grad()
    def draw_genotype(self):
        """The channel-level genotype of exact Bernoulli keep masks drawn with the learned drop rates (Sec. 3,
        Algorithm 1 line 7): the channels each op keeps."""
        return self.genotype(self.guide.sample_architecture())

    @torch.no_grad()
    def posterior_network(self):
        """Exact Bernoulli keep masks drawn with the learned drop rates (the concrete-dropout posterior at zero
        temperature; Sec. 3, Algorithm 1 line 7) applied to the super-network's kernels."""
        return self.masked_supernet(self.guide.sample_architecture())

    def inherited_network(self, genotype):
        """The selected genotype built with the super-network's kept kernels and BatchNorm running statistics, as
        PGNAS scores its candidates."""
        return self.space.build(genotype, inherit=self.supernet_state()).to(self.device).eval()

    @torch.no_grad()
    def export(self, run_dir: Path) -> list[dict[str, torch.Tensor]]:
        """Posterior draws of the keep masks as ArviZ ``InferenceData`` (``posterior.nc``) and plots; the
        fixed-rate baseline's pick as ``baseline_genotype.json``. Returns the drawn masks, one dict per draw."""
        if self._baseline_genotype is not None:
            self._baseline_genotype.save(run_dir / BASELINE_GENOTYPE)
        layers = sorted({layer.layer for layer in self.model.layers})
        branches = list(dict.fromkeys(layer.branch for layer in self.model.layers))
        draws = self.options.posterior_draws
        keep = np.zeros((1, draws, len(layers), len(branches)))
        active = np.zeros_like(keep)
        rates = np.zeros((len(layers), len(branches)))
        position = {(lay.layer, lay.branch): (layers.index(lay.layer), branches.index(lay.branch))
                    for lay in self.model.layers}
        masks = [self.guide.sample_architecture() for _ in range(draws)]
        for d, drawn in enumerate(masks):
            for site, mask in drawn.items():
                i, j = position[self._where(site)]
                keep[0, d, i, j] = float(mask.float().mean())
                active[0, d, i, j] = float(mask.any())
        for site, p in self.guide.drop_rates().items():
            rates[position[self._where(site)]] = p
        diagnostics.save_posterior(
            run_dir, {"keep_fraction": keep, "branch_active": active},
            coords={"layer": layers, "branch": branches}, dims=["layer", "branch"],
            constant={"drop_rate": rates}, attrs=self.posterior_attrs())
        diagnostics.plot_matrix(rates, layers, branches, "learned drop rate p (layer x branch)",
                                run_dir / "drop_rates.png")
        return masks

    @torch.no_grad()
    def draw_network(self, draw: dict[str, torch.Tensor]):
        """The super-network at one draw of keep masks, as :meth:`posterior_network`."""
        return self.masked_supernet(draw)
