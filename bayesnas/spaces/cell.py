"""DARTS cell space (Liu et al., ICLR 2019) shared by VINNAS (Ferianc, Fan & Rodrigues, arXiv:2007.06103,
Sec. IV) and GDAS (Dong & Yang, CVPR 2019, Sec. 3-4).

A network is a stem, a sequence of *normal* (N) and *reduction* (R) cells given by a layout string, global
average pooling and a linear classifier. A cell takes the outputs of cells c-2 and c-1, computes ``states``
intermediate states, each the sum of one mixed edge per earlier node (the two inputs and the earlier
states), and concatenates its last ``multiplier`` states. Edge ``e`` of a cell type carries ``K`` candidate
operations; the super-network's forward takes the architecture value ``{cell_type: weights}`` with
``weights`` of shape ``(E, K)`` (one architecture for the batch) or ``(B, E, K)`` (one per example).

With ``sparse=True`` (GDAS) an edge runs only the op its (one-hot) weights select: one op per edge per
example, grouped so each op runs once on its group. Otherwise (VINNAS) it sums ``w_k o_k(x)`` over all ops.

A genotype keeps, per cell type, two ``(op, input)`` pairs per state; ``build`` makes the discrete network,
scaled up in cells and channels for evaluation as the papers do (``eval_layout``, ``eval_channels``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from bayesnas.spaces.genotype import Genotype, GenotypeError
from bayesnas.spaces.ops import (
    OP_SETS,
    OPS,
    AuxiliaryHead,
    DropPath,
    FactorizedReduce,
    ReLUConvBN,
    SearchConv2d,
    make_op,
)

CELL_TYPES = {"N": "normal", "R": "reduce"}


def expand_layout(layout: str) -> str:
    """``"6NR6NR6N"`` -> ``"NNNNNNRNNNNNNRNNNNNN"``: a count repeats the letter after it."""
    if not re.fullmatch(r"(\d*[NR])+", layout):
        raise ValueError(f"layout must be a string of N and R cells with optional counts, got {layout!r}")
    return "".join(letter * int(count or 1) for count, letter in re.findall(r"(\d*)([NR])", layout))


@dataclass(frozen=True)
class CellSpaceConfig:
    in_channels: int = 1
    num_classes: int = 10
    channels: int = 16
    """C, the width of the first cells (doubled at each reduction)."""
    layout: str = "NRN"
    states: int = 4
    """B, intermediate states per cell (each with two inputs after derivation)."""
    ops: str = "gdas"
    """Op set: ``gdas`` (K = 8) or ``vinnas`` (K = 10), or a comma-separated list of op names."""
    stem_multiplier: int = 3
    stem_stride: int = 1
    """Stride of the stem convolution (2 halves the resolution the first cells see, 4x fewer operations)."""
    affine: bool = False
    """Affine BatchNorm in the super-network (the papers turn it off during search)."""
    fixed_reduction: bool = False
    """GDAS's fixed reduction cell (FRC, Fig. 3) instead of searched reduction cells."""
    eval_layout: str | None = None
    """Layout of the network built from a genotype (default: ``layout``)."""
    eval_channels: int | None = None
    """C of the network built from a genotype (default: ``channels``)."""

    def __post_init__(self) -> None:
        expand_layout(self.layout)
        if self.eval_layout is not None:
            expand_layout(self.eval_layout)
        for name in ("channels", "states", "stem_multiplier", "stem_stride", "in_channels", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        self.op_names()  # validates
        if self.fixed_reduction and self.states != 4:
            raise ValueError("the fixed reduction cell concatenates 4 branches: it needs states = 4")

    def op_names(self) -> tuple[str, ...]:
        if self.ops in OP_SETS:
            return OP_SETS[self.ops]
        names = tuple(n.strip() for n in self.ops.split(","))
        unknown = [n for n in names if n not in OPS]
        if unknown:
            raise ValueError(f"unknown operation(s) {', '.join(unknown)}; known: {', '.join(OPS)}")
        return names

    def searched_types(self) -> list[str]:
        kinds = {CELL_TYPES[c] for c in expand_layout(self.layout)}
        if self.fixed_reduction:
            kinds.discard("reduce")
        return [k for k in ("normal", "reduce") if k in kinds]

    def edges(self) -> list[tuple[int, int]]:
        """``(state, input)`` of every edge of a cell, in order (inputs 0, 1 are cells c-2, c-1)."""
        return [(j, i) for j in range(self.states) for i in range(j + 2)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellSpaceConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown space option(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MixedEdge(nn.Module):
    """All candidate ops of one edge; weighted sum, or (sparse) only the selected op per example."""

    def __init__(self, op_names: Sequence[str], channels: int, stride: int, affine: bool, sparse: bool) -> None:
        super().__init__()
        self.op_names = tuple(op_names)
        self.ops = nn.ModuleList(make_op(n, channels, channels, stride, affine) for n in op_names)
        self.sparse = sparse

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if weights.dim() == 1:
            if self.sparse:
                k = int(weights.argmax())
                return self.ops[k](x) * weights[k]
            return sum(w * op(x) for w, op, name in zip(weights, self.ops, self.op_names, strict=True)
                       if name != "none")
        # one architecture per example: run each chosen op once, on its examples only
        choice = weights.argmax(-1)
        parts, order = [], []
        for k in torch.unique(choice).tolist():
            idx = torch.nonzero(choice == k).flatten()
            parts.append(self.ops[k](x.index_select(0, idx)) * weights[idx, k].view(-1, 1, 1, 1))
            order.append(idx)
        out = torch.cat(parts)
        return out.index_select(0, torch.argsort(torch.cat(order)))


def _preprocess(c_pp: int, c_p: int, c: int, reduction_prev: bool, affine: bool) -> tuple[nn.Module, nn.Module]:
    pre0 = FactorizedReduce(c_pp, c, affine) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0, affine=affine)
    return pre0, ReLUConvBN(c_p, c, 1, 1, 0, affine=affine)


class SearchCell(nn.Module):
    def __init__(self, config: CellSpaceConfig, kind: str, c_pp: int, c_p: int, c: int, reduction_prev: bool,
                 sparse: bool) -> None:
        super().__init__()
        self.kind = kind
        self.multiplier = config.states
        self.pre0, self.pre1 = _preprocess(c_pp, c_p, c, reduction_prev, config.affine)
        reduction = kind == "reduce"
        self.edges = nn.ModuleList(
            MixedEdge(config.op_names(), c, 2 if reduction and i < 2 else 1, config.affine, sparse)
            for _, i in config.edges())
        self.states = config.states

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        nodes = [self.pre0(s0), self.pre1(s1)]
        e = 0
        for j in range(self.states):
            nodes.append(sum(self.edges[e + i](nodes[i], weights[..., e + i, :]) for i in range(j + 2)))
            e += j + 2
        return torch.cat(nodes[-self.multiplier:], dim=1)


class DiscreteCell(nn.Module):
    """A derived cell: each state sums two chosen ``(op, input)`` pairs."""

    def __init__(self, config: CellSpaceConfig, kind: str, pairs: Sequence[Sequence[Sequence[Any]]], c_pp: int,
                 c_p: int, c: int, reduction_prev: bool, drop_path: float) -> None:
        super().__init__()
        self.kind = kind
        self.pre0, self.pre1 = _preprocess(c_pp, c_p, c, reduction_prev, affine=True)
        reduction = kind == "reduce"
        self.inputs = [int(i) for state in pairs for _, i in state]
        self.ops = nn.ModuleList(make_op(op, c, c, 2 if reduction and int(i) < 2 else 1, affine=True)
                                 for state in pairs for op, i in state)
        self.drop_path = DropPath(drop_path)
        self.multiplier = config.states

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: Any = None) -> torch.Tensor:
        nodes = [self.pre0(s0), self.pre1(s1)]
        for a in range(0, len(self.ops), 2):
            nodes.append(sum(self.drop_path(self.ops[a + t](nodes[self.inputs[a + t]])) for t in (0, 1)))
        return torch.cat(nodes[-self.multiplier:], dim=1)


class FixedReductionCell(nn.Module):
    """GDAS's hand-designed reduction cell (Fig. 3; authors' ``GDAS_Reduction_Cell``)."""

    def __init__(self, c_pp: int, c_p: int, c: int, reduction_prev: bool, affine: bool) -> None:
        super().__init__()
        self.kind = "reduce"
        self.pre0, self.pre1 = _preprocess(c_pp, c_p, c, reduction_prev, affine)

        def conv_branch() -> nn.Sequential:
            return nn.Sequential(
                nn.ReLU(), SearchConv2d(c, c, (1, 3), (1, 2), (0, 1), groups=8),
                SearchConv2d(c, c, (3, 1), (2, 1), (1, 0), groups=8), nn.BatchNorm2d(c, affine=affine),
                nn.ReLU(), SearchConv2d(c, c, 1), nn.BatchNorm2d(c, affine=affine))

        def pool_branch() -> nn.Sequential:
            return nn.Sequential(nn.MaxPool2d(3, 2, 1), nn.BatchNorm2d(c, affine=affine))

        self.conv0, self.conv1 = conv_branch(), conv_branch()
        self.pool0, self.pool1 = pool_branch(), pool_branch()

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: Any = None) -> torch.Tensor:
        s0, s1 = self.pre0(s0), self.pre1(s1)
        return torch.cat([self.conv0(s0), self.conv1(s1), self.pool0(s0), self.pool1(s1)], dim=1)


class CellNetwork(nn.Module):
    """Stem, cells by layout, BN + ReLU, pooling, classifier (as the GDAS authors' search network).
    ``genotype=None`` gives the super-network. ``auxiliary=True`` (retraining) adds the DARTS auxiliary head
    (:class:`~bayesnas.spaces.ops.AuxiliaryHead`) after cell :meth:`auxiliary_index`; in training mode the
    forward then returns ``(logits, aux_logits)``, except for a batch of one example (the head's last BN
    would normalise one value per channel; the last mini-batch of an epoch can be that small), where it
    returns ``logits`` alone and that step has no auxiliary loss."""

    def __init__(self, config: CellSpaceConfig, genotype: Genotype | None = None, sparse: bool = False,
                 auxiliary: bool = False, drop_path: float = 0.0) -> None:
        super().__init__()
        layout = expand_layout(config.layout if genotype is None else config.eval_layout or config.layout)
        channels = config.channels if genotype is None else config.eval_channels or config.channels
        affine = config.affine if genotype is None else True
        stem = config.stem_multiplier * channels
        self.stem = nn.Sequential(SearchConv2d(config.in_channels, stem, 3, config.stem_stride, 1),
                                  nn.BatchNorm2d(stem, affine=affine))
        c_pp, c_p, c, reduction_prev = stem, stem, channels, False
        cells = []
        for letter in layout:
            kind = CELL_TYPES[letter]
            c = c * 2 if kind == "reduce" else c
            if kind == "reduce" and config.fixed_reduction:
                cell: nn.Module = FixedReductionCell(c_pp, c_p, c, reduction_prev, affine)
            elif genotype is None:
                cell = SearchCell(config, kind, c_pp, c_p, c, reduction_prev, sparse)
            else:
                cell = DiscreteCell(config, kind, genotype.choices[kind], c_pp, c_p, c, reduction_prev, drop_path)
            cells.append(cell)
            c_pp, c_p, reduction_prev = c_p, config.states * c, kind == "reduce"
        self.cells = nn.ModuleList(cells)
        self.aux_index = self.auxiliary_index(len(cells))
        self.aux_head = None
        if auxiliary and len(cells) >= 3:
            self.aux_head = AuxiliaryHead(self._out_channels(config, layout, channels, self.aux_index),
                                          config.num_classes)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_p, affine=affine), nn.ReLU())
        self.classifier = nn.Linear(c_p, config.num_classes)

    @staticmethod
    def auxiliary_index(cells: int) -> int:
        """Index of the cell whose output feeds the auxiliary head: ``2 * cells // 3`` as in DARTS (Liu et al.,
        ICLR 2019; authors' ``NetworkCIFAR``), which in the 20-cell CIFAR network (``6NR6NR6N``) is cell 13,
        the second reduction cell (8x8 map). Never the last cell, whose features the classifier already sees:
        in a 3-cell ``NRN`` network the head reads the reduction cell (index 1)."""
        return min(2 * cells // 3, cells - 2)

    @staticmethod
    def _out_channels(config: CellSpaceConfig, layout: str, channels: int, index: int) -> int:
        c = channels
        for letter in layout[: index + 1]:
            c = c * 2 if letter == "R" else c
        return config.states * c

    def forward(self, x: torch.Tensor, arch: Mapping[str, torch.Tensor] | None = None):
        s0 = s1 = self.stem(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, None if arch is None else arch.get(cell.kind))
            if self.aux_head is not None and self.training and i == self.aux_index and len(x) > 1:
                aux = self.aux_head(s1)
        logits = self.classifier(self.lastact(s1).mean((2, 3)))
        return logits if aux is None else (logits, aux)


@dataclass
class CellSpace:
    """Search-space API of the cell space (see :class:`~bayesnas.spaces.branches.BranchSpace`)."""

    config: CellSpaceConfig
    name: str = "cells"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellSpace:
        return cls(CellSpaceConfig.from_dict(data))

    @property
    def op_names(self) -> tuple[str, ...]:
        return self.config.op_names()

    def supernet(self, sparse: bool = False) -> CellNetwork:
        return CellNetwork(self.config, sparse=sparse)

    def arch_shape(self) -> tuple[int, int]:
        """``(E, K)``: edges per cell and candidate ops per edge."""
        return len(self.config.edges()), len(self.op_names)

    def genotype(self, choices: Mapping[str, Any]) -> Genotype:
        genotype = Genotype(self.name, self.config.to_dict(),
                            {k: [[[str(op), int(i)] for op, i in state] for state in v] for k, v in choices.items()})
        self.validate(genotype)
        return genotype

    def validate(self, genotype: Genotype) -> None:
        if genotype.space != self.name:
            raise GenotypeError(f"genotype is for space {genotype.space!r}, not {self.name!r}")
        expected = set(self.config.searched_types())
        if set(genotype.choices) != expected:
            raise GenotypeError(f"genotype must choose the cell type(s) {sorted(expected)}, "
                                f"got {sorted(genotype.choices)}")
        for kind, states in genotype.choices.items():
            if not isinstance(states, list) or len(states) != self.config.states:
                raise GenotypeError(f"{kind} cell: expected {self.config.states} states")
            for j, state in enumerate(states):
                if not isinstance(state, list) or len(state) != 2:
                    raise GenotypeError(f"{kind} cell, state {j}: expected two [op, input] pairs")
                for pair in state:
                    if not isinstance(pair, list) or len(pair) != 2:
                        raise GenotypeError(f"{kind} cell, state {j}: expected [op, input], got {pair!r}")
                    op, i = pair
                    if op not in OPS:
                        raise GenotypeError(f"{kind} cell, state {j}: unknown operation {op!r}; "
                                            f"known: {', '.join(OPS)}")
                    if not isinstance(i, int) or not 0 <= i < j + 2:
                        raise GenotypeError(f"{kind} cell, state {j}: input must be an integer in [0, {j + 2})")

    def random_genotype(self, generator: torch.Generator) -> Genotype:
        """A uniformly random architecture (the random-search baseline of DARTS and VINNAS Table II): per cell
        type and state, two distinct inputs, each with an op drawn uniformly from the ops other than ``none``."""
        ops = [name for name in self.op_names if name != "none"]
        choices = {}
        for kind in self.config.searched_types():
            states = []
            for j in range(self.config.states):
                inputs = sorted(torch.randperm(j + 2, generator=generator)[:2].tolist())
                states.append([[ops[int(torch.randint(len(ops), (), generator=generator))], i] for i in inputs])
            choices[kind] = states
        return self.genotype(choices)

    def build(self, genotype: Genotype, auxiliary: bool = False, drop_path: float = 0.0) -> CellNetwork:
        self.validate(genotype)
        return CellNetwork(self.config, genotype, auxiliary=auxiliary, drop_path=drop_path)
