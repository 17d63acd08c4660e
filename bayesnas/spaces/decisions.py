"""The decision interface every searchable space offers, so that any proposal can search any space.

A space lists its architecture **decisions** in order, each a named categorical choice among named options
(the cell space: one per (cell type, edge); the chain: one per mixed operator). Decisions with the same
options are stacked in a **group** (a cell type; the chain's residual mixops and its shape-changing ones), so
a proposal keeps one ``(n_g, K_g)`` tensor per group instead of one site per decision, as GDAS's and VINNAS's
authors keep one ``(E, K)`` matrix of logits per cell type.

An *architecture value* for the super-network's forward is ``{group: tensor}``, in one of three forms:

========================  ==================  ======================================================  =========
form                      tensor              what runs                                               who
========================  ==================  ======================================================  =========
index                     int ``(n_g,)``      only the chosen op of each decision (single path)       PC-NAS,
                                                                                                      one-shot
one-hot, straight-through float ``(n_g, K)``  only the op the one-hot selects, times its value (so    GDAS
                          or ``(B, n_g, K)``  the gradient reaches every logit); ``sparse=True``
weights                   float ``(n_g, K)``  every op, summed with its weight (DARTS relaxation)     VINNAS
                          or ``(B, n_g, K)``  ``sparse=False``
========================  ==================  ======================================================  =========

A space implements :class:`DecisionSpace` in its own file; :func:`mixed_forward` is the one implementation of
the three forms that every space's mixed operator calls.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bayesnas.spaces.genotype import Genotype


@dataclass(frozen=True)
class Decision:
    """One categorical choice of a space: ``name`` (unique, e.g. ``normal:2<-0`` or ``s1.l2``), its
    ``group`` (decisions of a group share ``options`` and are stacked in that order) and its options."""

    name: str
    group: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class DecisionGroup:
    """The decisions of one group: their positions in :meth:`DecisionSpace.decisions` and their options."""

    name: str
    positions: tuple[int, ...]
    options: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_g, K_g)``: decisions and options of the group."""
        return len(self.positions), len(self.options)

    def decision_names(self, decisions: Sequence[Decision]) -> list[str]:
        return [decisions[p].name for p in self.positions]


Architecture = Mapping[str, torch.Tensor]
"""``{group: tensor}`` in one of the three forms of the module docstring."""


class DecisionSpace(ABC):
    """A search space whose architecture is an ordered list of categorical decisions.

    Implement :meth:`decisions`, :meth:`supernet`, :meth:`genotype_from_indices`, :meth:`derive`,
    :meth:`random_genotype`, :meth:`validate`, :meth:`build`, :meth:`flops` and :meth:`describe`; the rest
    follows from them.
    """

    name: str

    @abstractmethod
    def decisions(self) -> list[Decision]:
        """The decisions, in the order a proposal that grows an architecture decision by decision visits them."""

    @abstractmethod
    def supernet(self, sparse: bool = False) -> nn.Module:
        """The super-network; ``forward(x, arch)`` with ``arch`` an :data:`Architecture`. ``sparse`` says how a
        float tensor is read: one-hot straight-through (only the selected op runs) or weights (all ops run)."""

    @abstractmethod
    def genotype_from_indices(self, indices: Sequence[int]) -> Genotype:
        """The genotype of one option per decision (what the single-path super-network runs at ``indices``)."""

    @abstractmethod
    def derive(self, strengths: Mapping[str, torch.Tensor]) -> Genotype:
        """The genotype a relaxation selects from per-option strengths ``{group: (n_g, K_g)}`` (GDAS:
        softmax(A); VINNAS: positive SNR); the cell space keeps the strongest inputs of each state."""

    @abstractmethod
    def random_genotype(self, generator: torch.Generator) -> Genotype:
        """A uniformly random architecture of the space, as random-search baselines sample it."""

    @abstractmethod
    def validate(self, genotype: Genotype) -> None:
        """Raise :class:`~bayesnas.spaces.genotype.GenotypeError` if ``genotype`` is not of this space."""

    @abstractmethod
    def build(self, genotype: Genotype, **options: Any) -> nn.Module:
        """The discrete network of ``genotype``, trained from scratch or with inherited weights."""

    @abstractmethod
    def flops(self, genotype: Genotype) -> int:
        """Multiply-accumulates of one input through the built network."""

    @abstractmethod
    def describe(self, genotype: Genotype) -> str:
        """A few human-readable lines."""

    def canonical(self, genotype: Genotype) -> Genotype:
        """The one genotype of those that build the same network as ``genotype`` (twins differ only by a
        reordering that changes nothing), so that equal networks have equal canonical forms. Default: itself."""
        return genotype

    def _layout(self) -> tuple[list[Decision], dict[str, DecisionGroup]]:
        """The decisions and their groups, computed once per configuration (the index form is built every
        training step and every potential evaluation)."""
        config = getattr(self, "config", None)
        cached = self.__dict__.get("_layout_cache")
        if cached is None or cached[0] is not config:
            decisions = self.decisions()
            positions: dict[str, list[int]] = {}
            for i, d in enumerate(decisions):
                positions.setdefault(d.group, []).append(i)
            groups = {}
            for name, where in positions.items():
                options = {decisions[i].options for i in where}
                if len(options) != 1:
                    raise ValueError(f"decisions of group {name!r} have different options")
                groups[name] = DecisionGroup(name, tuple(where), options.pop())
            cached = self.__dict__["_layout_cache"] = (config, decisions, groups)
        return cached[1], cached[2]

    def groups(self) -> dict[str, DecisionGroup]:
        """The decision groups by name, in order of first appearance."""
        return dict(self._layout()[1])

    def num_options(self) -> list[int]:
        """Options per decision, in order."""
        return [len(d.options) for d in self._layout()[0]]

    def size(self) -> float:
        """Number of architectures the decisions span (a float: it overflows integers in large spaces)."""
        return float(math.prod(self.num_options()))

    def params(self, genotype: Genotype) -> int:
        """Trainable parameters of the built network (an auxiliary head left out)."""
        from bayesnas.spaces.profile import count_params

        return count_params(self.build(genotype))

    def index_architecture(self, indices: Sequence[int], device: torch.device | str | None = None) -> dict[
            str, torch.Tensor]:
        """``{group: long (n_g,)}`` of one option index per decision (the index form)."""
        indices = [int(i) for i in indices]
        decisions, groups = self._layout()
        if len(indices) != len(decisions):
            raise ValueError(f"architecture has {len(indices)} choices, the space has {len(decisions)} decisions")
        return {name: torch.tensor([indices[p] for p in g.positions], dtype=torch.long, device=device)
                for name, g in groups.items()}

    def indices(self, arch: Architecture) -> list[int]:
        """One option index per decision of an architecture in any form (argmax of float tensors; one
        architecture, not one per example)."""
        decisions, groups = self._layout()
        out = [0] * len(decisions)
        for name, g in groups.items():
            value = arch[name]
            chosen = value if not value.is_floating_point() else value.argmax(-1)
            for p, i in zip(g.positions, chosen.reshape(-1).tolist(), strict=True):
                out[p] = int(i)
        return out


def mixed_forward(ops: Sequence[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, choice: torch.Tensor,
                  sparse: bool, skip: Sequence[bool] | None = None) -> torch.Tensor:
    """One decision of a super-network: the candidate ``ops`` on ``x`` under ``choice`` in any of the three forms.

    ``choice`` is a 0-d integer tensor (index), or a float ``(K,)`` / ``(B, K)`` vector: with ``sparse`` the
    selected op (argmax) runs, times the vector's value there, so that a straight-through one-hot passes the
    gradient of every logit (GDAS, Dong & Yang, CVPR 2019, Eq. 5-7); with one vector per example each chosen
    op runs once on its own examples. Without ``sparse`` every op runs and the outputs are summed with the
    weights (DARTS, Liu et al., ICLR 2019, Eq. 2). ``skip[k]`` marks ops whose output is zero (``none``),
    which the weighted sum leaves out.
    """
    if not choice.is_floating_point():
        return ops[int(choice)](x)
    if choice.dim() == 1:
        if sparse:
            k = int(choice.argmax())
            return ops[k](x) * choice[k]
        return sum(w * op(x) for k, (w, op) in enumerate(zip(choice, ops, strict=True)) if not (skip and skip[k]))
    if not sparse:
        return sum(w.view(-1, 1, 1, 1) * op(x) for k, (w, op) in enumerate(zip(choice.unbind(-1), ops, strict=True))
                   if not (skip and skip[k]))
    selected = choice.argmax(-1)
    parts, order = [], []
    for k in torch.unique(selected).tolist():
        idx = torch.nonzero(selected == k).flatten()
        parts.append(ops[k](x.index_select(0, idx)) * choice[idx, k].view(-1, 1, 1, 1))
        order.append(idx)
    return torch.cat(parts).index_select(0, torch.argsort(torch.cat(order)))


def on_batch_statistics(net: nn.Module, *args: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> net(x, *args)`` evaluated inside :func:`batch_statistics` (a predictor for scoring code)."""
    def predict(x: torch.Tensor) -> torch.Tensor:
        with batch_statistics(net):
            return net(x, *args)

    return predict


@contextmanager
def batch_statistics(net: nn.Module):
    """Evaluate with each BatchNorm normalising by the batch's own statistics, leaving running averages alone.

    A single-path super-network's running averages mix every architecture that passed through each layer; the
    one-shot literature evaluates a sampled architecture with batch statistics instead (or recalibrates them).
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.momentum) for m in norms]
    was_training = net.training
    net.eval()
    for m in norms:
        m.train()
        m.momentum = 0.0
    try:
        yield net
    finally:
        for m, (training, momentum) in zip(norms, saved, strict=True):
            m.train(training)
            m.momentum = momentum
        net.train(was_training)
