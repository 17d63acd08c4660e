"""DARTS cell space (Liu et al., ICLR 2019) shared by VINNAS (Ferianc, Fan & Rodrigues, arXiv:2007.06103,
Sec. IV) and GDAS (Dong & Yang, CVPR 2019, Sec. 3-4).

A network is a stem, a sequence of *normal* (N) and *reduction* (R) cells given by a layout string, global
average pooling and a linear classifier. A cell takes the outputs of cells c-2 and c-1, computes ``states``
intermediate states, each the sum of one mixed edge per earlier node (the two inputs and the earlier
states), and concatenates its last ``multiplier`` states. Edge ``e`` of a cell type carries ``K`` candidate
operations: one decision per searched cell type and edge (:class:`~bayesnas.spaces.decisions.DecisionSpace`),
stacked per cell type, so the super-network's forward takes ``{cell_type: value}`` in any of the three forms
of :mod:`bayesnas.spaces.decisions`: op indices ``(E,)``, one-hot vectors (``sparse=True``, GDAS) or weights
(VINNAS), ``(E, K)`` for the batch or ``(B, E, K)`` per example.

A genotype keeps, per cell type, a list of ``(op, input)`` pairs per state with distinct inputs: two after a
relaxation's derivation (the papers' cells), every edge whose op is not ``none`` for one op per edge (what
the single-path super-network runs), none for a state that is zeros. ``build`` makes the discrete network,
scaled up in cells and channels for evaluation as the papers do (``eval_layout``, ``eval_channels``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bayesnas.compute import SpaceNetwork
from bayesnas.select import derive_cell
from bayesnas.spaces.decisions import Decision, DecisionSpace, mixed_forward
from bayesnas.spaces.genotype import Genotype, GenotypeError, SpaceConfig
from bayesnas.spaces.ops import (
    OP_SETS,
    OPS,
    AuxiliaryHead,
    DropPath,
    FactorizedReduce,
    ReLUConvBN,
    SearchConv2d,
    Zero,
    make_op,
)
from bayesnas.spaces.profile import count_flops

CELL_TYPES = {"N": "normal", "R": "reduce"}


def expand_layout(layout: str) -> str:
    """``"6NR6NR6N"`` -> ``"NNNNNNRNNNNNNRNNNNNN"``: a count repeats the letter after it."""
    if not re.fullmatch(r"(\d*[NR])+", layout):
        raise ValueError(f"layout must be a string of N and R cells with optional counts, got {layout!r}")
    return "".join(letter * int(count or 1) for count, letter in re.findall(r"(\d*)([NR])", layout))


@dataclass(frozen=True)
class CellSpaceConfig(SpaceConfig):
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
    image_size: int = 32
    """Side of the square input images, for :meth:`CellSpace.flops` (the networks take any size; genotype
    files written before this option read as 32)."""

    def __post_init__(self) -> None:
        expand_layout(self.layout)
        if self.eval_layout is not None:
            expand_layout(self.eval_layout)
        for name in ("channels", "states", "stem_multiplier", "stem_stride", "in_channels", "num_classes",
                     "image_size"):
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



class MixedEdge(nn.Module):
    """All candidate ops of one edge, run under one decision's value by
    :func:`~bayesnas.spaces.decisions.mixed_forward` (``none`` left out of weighted sums)."""

    def __init__(self, op_names: Sequence[str], channels: int, stride: int, affine: bool, sparse: bool) -> None:
        super().__init__()
        self.op_names = tuple(op_names)
        self.ops = nn.ModuleList(make_op(n, channels, channels, stride, affine) for n in op_names)
        self.sparse = sparse
        self.skip = tuple(name == "none" for name in op_names)

    def forward(self, x: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        return mixed_forward(self.ops, x, choice, self.sparse, self.skip)


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

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, arch: torch.Tensor) -> torch.Tensor:
        """``arch``: this cell type's value, op indices ``(E,)`` or float ``(E, K)`` / ``(B, E, K)``."""
        nodes = [self.pre0(s0), self.pre1(s1)]
        e = 0
        for j in range(self.states):
            nodes.append(sum(self.edges[e + i](nodes[i], arch[..., e + i, :] if arch.is_floating_point()
                                               else arch[e + i]) for i in range(j + 2)))
            e += j + 2
        return torch.cat(nodes[-self.multiplier:], dim=1)


class DiscreteCell(nn.Module):
    """A derived cell: each state sums its chosen ``(op, input)`` pairs (any number; zeros when it has none)."""

    def __init__(self, config: CellSpaceConfig, kind: str, pairs: Sequence[Sequence[Sequence[Any]]], c_pp: int,
                 c_p: int, c: int, reduction_prev: bool, drop_path: float) -> None:
        super().__init__()
        self.kind = kind
        self.pre0, self.pre1 = _preprocess(c_pp, c_p, c, reduction_prev, affine=True)
        stride = 2 if kind == "reduce" else 1
        self.pairs = [(j, str(op), int(i)) for j, state in enumerate(pairs) for op, i in state]
        """``(state, op, input)`` of ``ops[t]``."""
        self.ops = nn.ModuleList(make_op(op, c, c, stride if i < 2 else 1, affine=True) for _, op, i in self.pairs)
        self.zero = Zero(c, stride)  # a state without pairs: zeros of a state's shape, from pre1's output
        self.drop_path = DropPath(drop_path)
        self.states = len(pairs)
        self.multiplier = config.states

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, arch: Any = None) -> torch.Tensor:
        nodes = [self.pre0(s0), self.pre1(s1)]
        for j in range(self.states):
            terms = [self.drop_path(op(nodes[i])) for op, (state, _, i) in zip(self.ops, self.pairs, strict=True)
                     if state == j]
            nodes.append(sum(terms) if terms else self.zero(nodes[1]))
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

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, arch: Any = None) -> torch.Tensor:
        s0, s1 = self.pre0(s0), self.pre1(s1)
        return torch.cat([self.conv0(s0), self.conv1(s1), self.pool0(s0), self.pool1(s1)], dim=1)


class CellNetwork(SpaceNetwork):
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


_INPUT_NAMES = ("c-2", "c-1")
"""How :meth:`CellSpace.describe` names a cell's inputs 0 and 1 (the outputs of cells c-2 and c-1)."""


@dataclass
class CellSpace(DecisionSpace):
    """The cell space as a :class:`~bayesnas.spaces.decisions.DecisionSpace`: one decision ``kind:state<-input``
    per searched cell type and edge, options the op set (``none`` included)."""

    config: CellSpaceConfig
    name: str = "cells"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellSpace:
        return cls(CellSpaceConfig.from_dict(data))

    @property
    def op_names(self) -> tuple[str, ...]:
        return self.config.op_names()

    def decisions(self) -> list[Decision]:
        return [Decision(f"{kind}:{j}<-{i}", kind, self.op_names)
                for kind in self.config.searched_types() for j, i in self.config.edges()]

    def supernet(self, sparse: bool = False) -> CellNetwork:
        return CellNetwork(self.config, sparse=sparse)

    def arch_shape(self) -> tuple[int, int]:
        """``(E, K)``: the decision group shape every searched cell type shares (edges, candidate ops)."""
        (shape,) = {group.shape for group in self.groups().values()}
        return shape

    def genotype(self, choices: Mapping[str, Any]) -> Genotype:
        genotype = Genotype(self.name, self.config.to_dict(),
                            {k: [[[str(op), int(i)] for op, i in state] for state in v] for k, v in choices.items()})
        self.validate(genotype)
        return genotype

    def genotype_from_indices(self, indices: Sequence[int]) -> Genotype:
        """Per cell type and state, every incoming edge whose chosen op is not ``none``, with that op: the
        network the single-path super-network runs at ``indices`` (a state whose edges all chose ``none`` is
        zeros)."""
        ops, edges = self.op_names, self.config.edges()
        arch = self.index_architecture(indices)
        if any(not 0 <= int(k) < len(ops) for k in indices):
            raise ValueError(f"op indices must be in [0, {len(ops)})")
        choices = {kind: [[[ops[k], i] for (state, i), k in zip(edges, chosen.tolist(), strict=True)
                           if state == j and ops[k] != "none"] for j in range(self.config.states)]
                   for kind, chosen in arch.items()}
        return self.genotype(choices)

    def derive(self, strengths: Mapping[str, torch.Tensor]) -> Genotype:
        """Per cell type, the two inputs of each state whose strongest op other than ``none`` is strongest, with
        that op (DARTS, Liu et al., ICLR 2019, Sec. 2.4; GDAS, Dong & Yang, CVPR 2019, Sec. 3.3)."""
        return self.genotype({kind: derive_cell(strengths[kind].detach().cpu(), self.op_names, self.config.edges())
                              for kind in self.config.searched_types()})

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
                if not isinstance(state, list):
                    raise GenotypeError(f"{kind} cell, state {j}: expected a list of [op, input] pairs")
                for pair in state:
                    if not isinstance(pair, list) or len(pair) != 2:
                        raise GenotypeError(f"{kind} cell, state {j}: expected [op, input], got {pair!r}")
                    op, i = pair
                    if op not in OPS:
                        raise GenotypeError(f"{kind} cell, state {j}: unknown operation {op!r}; "
                                            f"known: {', '.join(OPS)}")
                    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < j + 2:
                        raise GenotypeError(f"{kind} cell, state {j}: input must be an integer in [0, {j + 2})")
                inputs = [i for _, i in state]
                if len(set(inputs)) != len(inputs):
                    raise GenotypeError(f"{kind} cell, state {j}: each input at most once, got inputs {inputs}")

    def canonical(self, genotype: Genotype) -> Genotype:
        """A state sums its ``(op, input)`` pairs, so their order changes nothing: each state's pairs sorted by
        input, then op."""
        self.validate(genotype)
        return Genotype(self.name, genotype.config, {kind: [sorted(state, key=lambda p: (p[1], p[0])) for state in
                                                            states] for kind, states in genotype.choices.items()},
                        genotype.dataset)

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

    def build(self, genotype: Genotype, auxiliary: bool = False, drop_path: float = 0.0,
              inherit: Mapping[str, torch.Tensor] | None = None) -> CellNetwork:
        """The discrete network of ``genotype``; ``inherit`` (a super-network state dict) copies its weights
        (:meth:`inherited`)."""
        self.validate(genotype)
        net = CellNetwork(self.config, genotype, auxiliary=auxiliary, drop_path=drop_path)
        if inherit is not None:
            net.load_state_dict(self.inherited(net, inherit), strict=False)
        return net

    def inherited(self, net: CellNetwork, supernet_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The super-network's weights under the built network's names: op ``t`` of a discrete cell, pair
        ``(op, i)`` of state ``j``, is op ``op`` of the edge ``j <- i`` of the same cell (``cells.c.ops.t`` <-
        ``cells.c.edges.e.ops.k``); every other module has the same name. Left out, so as initialised: the
        affine BatchNorm parameters a search without them lacks (scale 1, shift 0: the same function) and the
        auxiliary head."""
        if (self.config.eval_layout or self.config.layout) != self.config.layout \
                or (self.config.eval_channels or self.config.channels) != self.config.channels:
            raise GenotypeError("inheriting super-network weights needs the search network's layout and channels "
                                "(eval_layout, eval_channels unset)")
        edge = {pair: e for e, pair in enumerate(self.config.edges())}
        affine = {f"{name}.{p}" for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)
                  for p in ("weight", "bias")}
        state = {}
        for key in net.state_dict():
            source = key
            match = re.fullmatch(r"cells\.(\d+)\.ops\.(\d+)\.(.+)", key)
            if match:
                c, t, rest = int(match[1]), int(match[2]), match[3]
                j, op, i = net.cells[c].pairs[t]
                if op not in self.op_names:
                    raise GenotypeError(f"cannot inherit {op!r}: the super-network has no such op")
                source = f"cells.{c}.edges.{edge[j, i]}.ops.{self.op_names.index(op)}.{rest}"
            if source in supernet_state:
                state[key] = supernet_state[source]
            elif not (key.startswith("aux_head.") or key in affine and not self.config.affine):
                raise GenotypeError(f"the super-network state has no {source!r} for {key!r}")
        return state

    def flops(self, genotype: Genotype) -> int:
        """Multiply-accumulates of one ``in_channels x image_size x image_size`` input through the built network
        (convolutions and the classifier; no auxiliary head)."""
        c = self.config
        return count_flops(self.build(genotype), (c.in_channels, c.image_size, c.image_size))

    def describe(self, genotype: Genotype) -> str:
        """One line per cell type and state: ``normal s2 = sep_conv_3x3(c-1) + skip_connect(s0)``."""
        self.validate(genotype)

        def node(i: int) -> str:
            return _INPUT_NAMES[i] if i < 2 else f"s{i - 2}"

        lines = []
        for kind, states in genotype.choices.items():
            for j, state in enumerate(states):
                lines.append(f"  {kind} s{j} = " + (" + ".join(f"{op}({node(i)})" for op, i in state) or "0"))
        if self.config.fixed_reduction and "R" in expand_layout(self.config.layout):
            lines.append("  reduce: the fixed reduction cell (GDAS, Dong & Yang, CVPR 2019, Fig. 3)")
        return "\n".join(lines)
