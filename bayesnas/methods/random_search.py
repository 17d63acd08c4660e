"""Random search: the baseline every weight-sharing method is measured against (Li & Talwalkar, "Random search
and reproducibility for NAS", UAI 2019; DARTS, Liu et al., ICLR 2019, Table 1 "Random search baseline"; VINNAS,
Ferianc et al., arXiv:2007.06103, Table II).

``num_samples`` genotypes are drawn with the space's :meth:`~bayesnas.spaces.decisions.DecisionSpace.random_genotype`
(seeded by the search's seed), each is built as its own network and trained alone for the search's ``epochs``
with the search's optimiser settings, the one with the best validation accuracy is kept and retrained from scratch
by the retraining recipe of PC-NAS (:func:`~bayesnas.training.search_recipe`: ``retrain_epochs``,
``retrain_lr``), and its validation and test accuracy are reported.

There is no super-network and nothing is shared: the search loop trains the candidates side by side, one phase
per candidate (its own parameters, optimiser, cosine schedule, mini-batch order and loss), so that the loop's
per-epoch checkpoint holds every candidate and a resumed search recomputes no finished epoch of any candidate, and
``metrics.jsonl`` logs each candidate's loss and accuracy (``val_accuracy``: the best candidate's so far).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bayesnas import diagnostics
from bayesnas.data import Split
from bayesnas.domains import check_domains, setting
from bayesnas.methods.base import Phase, SearchMethod, Selection, register
from bayesnas.training import TrainRecipe, accuracy, search_recipe


@dataclass(frozen=True)
class RandomSearchOptions:
    num_samples: int = setting(8, "[1, 100000]")
    """Genotypes sampled uniformly and trained alone (DARTS's random baseline: 24)."""
    retrain_epochs: int = setting(40, "[0, 100000]")
    """Epochs of the from-scratch retraining of the best candidate (0: report the candidate as trained)."""
    retrain_lr: float | None = setting(None, "> 0 or null")
    """Learning rate of the retraining (null: the search's)."""

    def __post_init__(self) -> None:
        check_domains(self)


@register
class RandomSearch(SearchMethod):
    """Uniformly random genotypes, each trained alone; the best on validation is retrained."""

    name = "random"
    options_type = RandomSearchOptions

    def __init__(self, config, data, device) -> None:
        super().__init__(config, data, device)
        self.space = self.build_space()
        generator = torch.Generator().manual_seed(config.seed)
        self.genotypes = [self.space.random_genotype(generator) for _ in range(self.options.num_samples)]
        self.candidates = nn.ModuleList([self.space.build(g) for g in self.genotypes]).to(device)
        self._val: list[float] | None = None

    def modules(self) -> dict[str, nn.Module]:
        return {"candidates": self.candidates}

    def networks(self) -> dict[str, nn.Module]:
        return {f"candidate{i}": net for i, net in enumerate(self.candidates)}

    def phases(self) -> list[Phase]:
        return [Phase.sgd(self.config, f"candidate{i}", "train", [{"name": f"candidate{i}", "params":
                                                                   list(net.parameters())}], self._loss(net))
                for i, net in enumerate(self.candidates)]

    @staticmethod
    def _loss(net: nn.Module):
        def loss(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, int]:
            logits = net(x)
            return F.cross_entropy(logits, y), int((logits.argmax(-1) == y).sum())

        return loss

    def begin_epoch(self, epoch: int) -> None:
        self._val = None  # the candidates are about to change

    def candidate_accuracies(self) -> list[float]:
        """Validation accuracy of every candidate as trained so far."""
        if self._val is None:
            self._val = [accuracy(net, self.data.val) for net in self.candidates]
        return self._val

    def best(self) -> int:
        """The candidate with the best validation accuracy (the first of equals)."""
        return int(np.argmax(self.candidate_accuracies()))

    def accuracy(self, split: Split) -> float:
        """Accuracy on ``split`` of the best candidate by validation accuracy."""
        return accuracy(self.candidates[self.best()], split)

    def epoch_metrics(self) -> dict[str, Any]:
        return {"candidate_val_accuracies": self.candidate_accuracies(), "best_candidate": self.best()}

    def retrain_recipe(self) -> TrainRecipe:
        """PC-NAS's retraining recipe: the search's settings for ``retrain_epochs`` at ``retrain_lr``."""
        return search_recipe(self.config, self.options.retrain_epochs, self.options.retrain_lr)

    def select(self, progress: bool = True) -> Selection:
        """The best candidate on validation, retrained from scratch by the retraining recipe."""
        o = self.options
        best = self.best()
        genotype = self.genotypes[best]
        net, val_acc, test_acc = self.retrain_selected(self.space, genotype, self.retrain_recipe(), progress)
        extra = {
            "retrained": bool(o.retrain_epochs), "retrain_epochs": o.retrain_epochs, "num_samples": o.num_samples,
            "best_candidate": best, "flops": self.space.flops(genotype),
            "candidate_val_accuracy": self.candidate_accuracies()[best],
            "candidate_test_accuracy": self.accuracy(self.data.test),
            "candidates": [{"val_accuracy": v, "genotype": g.choices}
                           for v, g in zip(self.candidate_accuracies(), self.genotypes, strict=True)],
        }
        return Selection(genotype, net, val_acc, test_acc, extra, retrained=o.retrain_epochs > 0)

    def export(self, run_dir: Path) -> None:
        """The candidates' validation accuracies as one chain of draws (``val_accuracy``) in ``posterior.nc``."""
        diagnostics.save_posterior(run_dir, {"val_accuracy": np.asarray(self.candidate_accuracies())[None]},
                                   coords={}, dims=[], attrs=self.posterior_attrs(best_candidate=self.best()))
