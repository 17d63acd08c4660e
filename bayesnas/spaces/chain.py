"""MBConv chain space of PC-NAS (Li et al. 2019, Sec. 3.2, appendix A.1, Table 4; after ProxylessNAS).

A stem, an optional fixed first block, then ``L`` *mixed operators* (mixops) in a chain, grouped in stages of
``depths[i]`` layers of width ``widths[i]`` whose first layer has stride ``strides[i]``, then an optional 1x1
head convolution, global average pooling and a linear classifier. The full-size default is the
ProxylessNAS/MobileNetV2 layout of the paper: stem 3x3/2 to 32 channels, a fixed ``MBConv_1_3`` block to 16,
stages ``(24, 4, 2) (40, 4, 2) (80, 4, 2) (96, 4, 1) (192, 4, 2) (320, 1, 1)`` = **21 mixops**, head 1x1 to
1280. ``width_mult`` scales every channel count (rounded to a multiple of 8, MobileNetV2's rule) and
``depth_scale`` every stage depth (rounded up), for CPU-sized runs.

Operators (Table 4), named ``KIND_E_K`` (expand ratio E, kernel K):

- ``MBConv_E_K`` (small and large space): 1x1 expand to ``E * C_in`` (left out when E = 1, as in
  MobileNetV2/ProxylessNAS), depthwise KxK with the layer's stride, 1x1 linear projection;
- ``NConv_E_K``: 1x1, dense KxK, 1x1;  ``DConv_E_K``: 1x1, KxK, KxK, 1x1;
  ``RConv_E_K``: 1x1, 1xK, Kx1, 1x1 (large space only);
- ``Identity``.

Every convolution is followed by BatchNorm, and by ReLU6 except the last (the linear bottleneck); an operator
adds its input back (residual) when its stride is 1 and its input and output widths agree.

**Identity only where shapes allow**: the first layer of a stage changes the width or the resolution, so its
op set leaves ``Identity`` out (it has N - 1 choices); every other layer offers all N. With ``transition_op``
set, those shape-changing layers are instead one fixed op (e.g. ``MBConv_3_3``) and only the residual,
shape-keeping layers are mixops: on a CPU budget a single-path super-network whose transitions are random
learns several times slower (digits, 5 epochs: 0.2-0.3 vs 0.8 training accuracy), because every choice there
replaces the features the following layers see. A genotype is one op name per mixop,
``{"ops": ["MBConv_3_5", "Identity", ...]}``.

**Channels** (PGNAS, Zhou et al., AAAI 2020, Sec. 3.1 and Eq. 12): :meth:`ChainSpace.channel_supernet` runs every op
of every mixop and sums them with weight 1, as the shake-shake branches of the ``branches`` space; its searchable
kernels (:meth:`ChainNet.searchable`) are the 1x1 projections of the ``MBConv`` ops, whose input slices are the
expanded channels (for E = 1 the depthwise outputs; ``Identity`` and the other kinds are branches that stay). A
channel-level genotype keeps every op and lists the expanded channels each ``MBConv`` op keeps,
``{"kept": {"s1.l2": {"MBConv_3_5": [0, 4, ...], ...}, ...}}``; the network built from it computes what the masked
super-network computes (an op that keeps none adds its projection's BatchNorm offset and its residual).

**Decisions** (:class:`~bayesnas.spaces.decisions.DecisionSpace`): one per mixop, in chain order, named after its
layer (``s1.l2``). Mixops offering the full op set form the group ``mixop``; shape-changing mixops, whose op set
leaves ``Identity`` out, form the group ``transition`` (absent with ``transition_op``). The super-network's
forward takes ``{group: tensor}`` in the three forms of :mod:`bayesnas.spaces.decisions`: an index per mixop
(single path, PC-NAS), a straight-through one-hot vector (only the selected op runs; GDAS) or weights (every op
runs; VINNAS, on a super-network built with ``sparse=False``). Every convolution is a
:class:`~bayesnas.spaces.ops.SearchConv2d`, so VINNAS's weight sites reach it by local reparameterisation.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bayesnas.compute import SpaceNetwork
from bayesnas.spaces.branches import SearchableLayer, check_kept_channels, kept_from_masks, sorted_kept
from bayesnas.spaces.decisions import (
    Decision,
    DecisionSpace,
    mixed_forward,
)
from bayesnas.spaces.genotype import Genotype, GenotypeError, SpaceConfig, integers
from bayesnas.spaces.ops import SearchConv2d
from bayesnas.spaces.profile import count_flops

SMALL_OPS: tuple[str, ...] = (
    "MBConv_1_3", "MBConv_3_3", "MBConv_6_3", "MBConv_1_5", "MBConv_3_5", "MBConv_6_5",
    "MBConv_1_7", "MBConv_3_7", "MBConv_6_7", "Identity",
)
LARGE_ONLY_OPS: tuple[str, ...] = (
    "NConv_1_3", "NConv_2_3", "DConv_1_3", "DConv_2_3", "RConv_1_5",
    "RConv_2_5", "RConv_4_5", "RConv_1_7", "RConv_2_7", "RConv_4_7",
)
LARGE_OPS: tuple[str, ...] = SMALL_OPS + LARGE_ONLY_OPS
OP_SETS = {"small": SMALL_OPS, "large": LARGE_OPS}
_OP_NAME = re.compile(r"^(MBConv|NConv|DConv|RConv)_([1-9][0-9]*)_([1-9][0-9]*)$")


def parse_op(name: str) -> tuple[str, int, int]:
    """``"MBConv_3_5" -> ("MBConv", 3, 5)``; ``"Identity" -> ("Identity", 1, 1)``."""
    if name == "Identity":
        return "Identity", 1, 1
    match = _OP_NAME.match(name) if isinstance(name, str) else None
    if match is None or int(match.group(3)) % 2 == 0:
        raise ValueError(f"unknown operator {name!r}: expected Identity or KIND_E_K with KIND in MBConv, NConv, "
                         "DConv, RConv, an integer expand ratio E and an odd kernel size K")
    return match.group(1), int(match.group(2)), int(match.group(3))


def make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNetV2's channel rounding: nearest multiple of ``divisor``, never 10 % below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class ChainSpaceConfig(SpaceConfig):
    """Shape of the chain. Defaults: the paper's full-size ImageNet layout (21 mixops, small op set)."""

    in_channels: int = 3
    num_classes: int = 1000
    image_size: int = 224
    stem_channels: int = 32
    stem_stride: int = 2
    first_block_channels: int = 16
    """Width of the fixed ``MBConv_1_3`` block after the stem (0: no such block)."""
    widths: tuple[int, ...] = (24, 40, 80, 96, 192, 320)
    depths: tuple[int, ...] = (4, 4, 4, 4, 4, 1)
    strides: tuple[int, ...] = (2, 2, 2, 1, 2, 1)
    head_channels: int = 1280
    """Width of the 1x1 head convolution before pooling (0: none)."""
    width_mult: float = 1.0
    depth_scale: float = 1.0
    ops: str | tuple[str, ...] = "small"
    """``small`` (10 ops), ``large`` (20 ops, Table 4) or an explicit list of op names."""
    transition_op: str | None = None
    """null: the first layer of every stage is a mixop too (the paper's layout); an op name: the layers that
    change the width or the resolution are that fixed op instead (only shape-keeping, residual layers are
    searched)."""
    affine: bool = True
    """Affine BatchNorm in the super-network (a network built from a genotype is always affine)."""

    def __post_init__(self) -> None:
        for name in ("widths", "depths", "strides"):
            object.__setattr__(self, name, integers(name, getattr(self, name)))
        if not isinstance(self.ops, str):
            object.__setattr__(self, "ops", tuple(self.ops))
        if not self.widths or not len(self.widths) == len(self.depths) == len(self.strides):
            raise ValueError("widths, depths and strides need one entry per stage")
        if any(s not in (1, 2) for s in (*self.strides, self.stem_stride)):
            raise ValueError("strides must be 1 or 2")
        if any(v < 1 for v in (*self.widths, *self.depths, self.stem_channels, self.in_channels,
                               self.num_classes, self.image_size)):
            raise ValueError("widths, depths, stem_channels, in_channels, num_classes and image_size must be "
                             "positive")
        if self.first_block_channels < 0 or self.head_channels < 0:
            raise ValueError("first_block_channels and head_channels must be >= 0 (0: none)")
        if self.width_mult <= 0 or self.depth_scale <= 0:
            raise ValueError("width_mult and depth_scale must be > 0")
        names = self.op_names
        if not names or len(set(names)) != len(names):
            raise ValueError("ops must be 'small', 'large' or a non-empty list of distinct op names")
        for name in names:
            parse_op(name)
        if names == ("Identity",):
            raise ValueError("ops must contain at least one convolution besides Identity")
        if self.transition_op is not None and parse_op(self.transition_op)[0] == "Identity":
            raise ValueError("transition_op must be a convolution: transitions change the shape")

    @property
    def op_names(self) -> tuple[str, ...]:
        if isinstance(self.ops, str):
            if self.ops not in OP_SETS:
                raise ValueError(f"unknown op set {self.ops!r}: small, large or a list of op names")
            return OP_SETS[self.ops]
        return self.ops

    def channels(self, c: int) -> int:
        return c if self.width_mult == 1 else make_divisible(c * self.width_mult)

    def stage_depths(self) -> tuple[int, ...]:
        return tuple(max(1, math.ceil(d * self.depth_scale)) for d in self.depths)



@dataclass(frozen=True)
class ChainLayer:
    """One block of the chain: where it sits, its input shape ``(channels, size, size)`` and its op choices.
    ``index`` counts the mixops (searchable blocks); a fixed block has one op, ``index`` -1 and no ``group``
    (a mixop's decision group: ``mixop`` with the full op set, ``transition`` without ``Identity``)."""

    index: int
    name: str
    in_channels: int
    out_channels: int
    stride: int
    resolution: int
    ops: tuple[str, ...]
    searchable: bool = True
    group: str = ""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.in_channels, self.resolution, self.resolution


def _conv_bn(cin: int, cout: int, kernel: int | tuple[int, int], stride: int | tuple[int, int] = 1,
             groups: int = 1, act: bool = True, affine: bool = True) -> list[nn.Module]:
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    padding = (kernel[0] // 2, kernel[1] // 2)
    layers: list[nn.Module] = [SearchConv2d(cin, cout, kernel, stride, padding, groups=groups),
                               nn.BatchNorm2d(cout, affine=affine)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return layers


def projection_index(name: str) -> int:
    """Position in :class:`ChainOp`'s ``body`` of the 1x1 projection of an ``MBConv_E_K`` op (conv, BN, ReLU6
    per convolution: the expand convolution, if E > 1, then the depthwise one)."""
    return 6 if parse_op(name)[1] != 1 else 3


class ChainOp(nn.Module):
    """One candidate operator (``KIND_E_K`` or ``Identity``) of a mixop.

    ``kept`` (``MBConv`` only; networks built from a channel-level genotype) lists the expanded channels the
    projection reads: the expand and depthwise convolutions produce only those (with E = 1 the depthwise one
    gathers them from the input, ``index``). With none kept the projection outputs zeros, so only its
    BatchNorm's offset and the residual are left, as in the super-network with every slice masked.
    """

    def __init__(self, name: str, cin: int, cout: int, stride: int, affine: bool = True,
                 kept: Sequence[int] | None = None) -> None:
        super().__init__()
        kind, expand, k = parse_op(name)
        self.name = name
        self.stride = stride
        self.empty = kept is not None and len(kept) == 0
        self.identity = kind == "Identity"
        self.register_buffer("index", None)
        if kind == "Identity":
            if stride != 1 or cin != cout:
                raise ValueError(f"Identity needs stride 1 and equal widths, got {cin}->{cout} stride {stride}")
            self.body: nn.Module = nn.Identity()
            self.residual = False
            return
        self.residual = stride == 1 and cin == cout
        mid = cin * expand
        if kept is not None:
            if kind != "MBConv":
                raise ValueError(f"only MBConv ops keep a subset of their expanded channels, not {name}")
            mid = len(kept)
            if self.empty:  # only the projection's BatchNorm, at its place in the full body
                self.body = nn.Sequential(OrderedDict([(str(projection_index(name) + 1),
                                                        nn.BatchNorm2d(cout, affine=affine))]))
                return
            if expand == 1:
                self.index = torch.tensor(list(kept), dtype=torch.long)
        layers: list[nn.Module] = []
        if kind != "MBConv" or expand != 1:
            layers += _conv_bn(cin, mid, 1, affine=affine)
        if kind == "MBConv":
            layers += _conv_bn(mid, mid, k, stride, groups=mid, affine=affine)
        elif kind == "NConv":
            layers += _conv_bn(mid, mid, k, stride, affine=affine)
        elif kind == "DConv":
            layers += _conv_bn(mid, mid, k, stride, affine=affine) + _conv_bn(mid, mid, k, affine=affine)
        else:  # RConv: 1xK then Kx1, striding across then down
            layers += (_conv_bn(mid, mid, (1, k), (1, stride), affine=affine)
                       + _conv_bn(mid, mid, (k, 1), (stride, 1), affine=affine))
        layers += _conv_bn(mid, cout, 1, act=False, affine=affine)
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._body(x)
        return x + out if self.residual else out

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """What the op adds to its input: the body of a residual op, zeros for ``Identity``."""
        return torch.zeros_like(x) if self.identity else self._body(x)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        if self.empty:
            bn = self.body[0]
            size = ((x.shape[2] - 1) // self.stride + 1, (x.shape[3] - 1) // self.stride + 1)
            return bn(x.new_zeros(x.shape[0], bn.num_features, *size))
        return self.body(x if self.index is None else x.index_select(1, self.index))


class MixedOp(nn.Module):
    """The candidates of one layer by name; the forward runs them under one decision's architecture value
    (:func:`~bayesnas.spaces.decisions.mixed_forward`), or the only one of a built network's layer.

    ``summed`` (the channel-level networks of PGNAS): every candidate runs and the outputs add up with weight 1,
    the parallel branches of a shake-shake block (Zhou et al., AAAI 2020, Sec. 3.1); ``kept`` maps an
    ``MBConv`` op to the expanded channels it keeps (:class:`ChainOp`).

    In a ``sparse`` super-network (straight-through gates, GDAS), a mixop whose candidates are all residual or
    ``Identity`` keeps the shortcut outside the gate, ``x + h_k branch_k(x)``, as ProxylessNAS's mixed block does
    (Cai et al., ICLR 2019, Sec. 3.2): the same value as ``h_k op_k(x)`` for the gate's value 1, but gated as
    ``h_k (x + branch_k(x))`` the whole output scales with ``h_k``, and a next layer that normalises its input
    (a convolution and batch normalisation) is blind to that scale, so the gate's gradient is zero and the
    decision never moves (GDAS's entropy stayed at ln 3 on such mixops of the Fashion-MNIST chain).
    """

    def __init__(self, layer: ChainLayer, ops: Sequence[str] | None = None, sparse: bool = False,
                 affine: bool = True, summed: bool = False, kept: Mapping[str, Sequence[int]] | None = None) -> None:
        super().__init__()
        self.names = tuple(ops if ops is not None else layer.ops)
        self.sparse = sparse
        self.summed = summed
        kept = kept or {}
        self.ops = nn.ModuleDict({n: ChainOp(n, layer.in_channels, layer.out_channels, layer.stride, affine,
                                             kept.get(n)) for n in self.names})
        self.shortcut = sparse and all(op.residual or op.identity for op in self.ops.values())

    def forward(self, x: torch.Tensor, choice: torch.Tensor | None = None) -> torch.Tensor:
        if self.summed:
            return sum(op(x) for op in self.ops.values())
        if choice is None:
            if len(self.names) != 1:
                raise ValueError("a mixed operator of the super-network needs an architecture to run")
            return self.ops[self.names[0]](x)
        if self.shortcut:
            return x + mixed_forward([op.branch for op in self.ops.values()], x, choice, sparse=True)
        return mixed_forward(list(self.ops.values()), x, choice, self.sparse)


def layout(config: ChainSpaceConfig) -> tuple[list[ChainLayer], dict[str, Any]]:
    """Every block of ``config`` after the stem (mixops and fixed transitions, in order) and the fixed parts'
    shapes (``stem``, ``first``, ``last``, ``head`` channel counts, resolutions)."""
    c = config
    stem = c.channels(c.stem_channels)
    res = math.ceil(c.image_size / c.stem_stride)
    fixed = {"stem": stem, "stem_resolution": res}
    width = stem
    first = c.channels(c.first_block_channels) if c.first_block_channels else 0
    if first:
        width = first
    blocks: list[ChainLayer] = []
    mixops = 0
    for stage, (w, depth, stride) in enumerate(zip(c.widths, c.stage_depths(), c.strides, strict=True)):
        out = c.channels(w)
        for j in range(depth):
            s = stride if j == 0 else 1
            name = f"s{stage}.l{j}"
            if c.transition_op is not None and (s != 1 or width != out):
                blocks.append(ChainLayer(-1, name, width, out, s, res, (c.transition_op,), searchable=False))
            else:
                ops = tuple(n for n in c.op_names if n != "Identity" or (s == 1 and width == out))
                group = "mixop" if ops == c.op_names else "transition"
                blocks.append(ChainLayer(mixops, name, width, out, s, res, ops, group=group))
                mixops += 1
            res = math.ceil(res / s)
            width = out
    head = c.channels(c.head_channels) if c.head_channels else 0
    fixed.update({"first": first, "last": width, "last_resolution": res, "head": head})
    return blocks, fixed


class ChainNet(SpaceNetwork):
    """The super-network (``ops=None``: every candidate in every mixop) or a network built from one op name
    per mixop. ``forward(x, arch)``: ``arch`` is the super-network's architecture value ``{group: tensor}``
    (index, one-hot straight-through with ``sparse``, weights without); a built network takes none.

    ``summed``: PGNAS's channel-level super-network, every op of every mixop summed with weight 1 (no
    architecture value); with ``kept`` (``{mixop: {MBConv op: channels}}``) the network built from a
    channel-level genotype."""

    def __init__(self, config: ChainSpaceConfig, ops: Sequence[str] | None = None, sparse: bool = False,
                 affine: bool = True, summed: bool = False,
                 kept: Mapping[str, Mapping[str, Sequence[int]]] | None = None) -> None:
        super().__init__()
        self.config = config
        self.space = ChainSpace(config)
        blocks, fixed = layout(config)
        self.stem = nn.Sequential(*_conv_bn(config.in_channels, fixed["stem"], 3, config.stem_stride, affine=affine))
        self.first = (ChainOp("MBConv_1_3", fixed["stem"], fixed["first"], 1, affine) if fixed["first"]
                      else nn.Identity())
        self.block_names = [b.name for b in blocks]
        summed = summed or kept is not None
        self.blocks = nn.ModuleList([MixedOp(b, None if ops is None or not b.searchable else [ops[b.index]],
                                             sparse, affine, summed and b.searchable, (kept or {}).get(b.name))
                                     for b in blocks])
        head: list[nn.Module] = _conv_bn(fixed["last"], fixed["head"], 1, affine=affine) if fixed["head"] else []
        self.head = nn.Sequential(*head, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(fixed["head"] or fixed["last"], config.num_classes)
        # where each decision's choice goes: (block position, group, row of the group's tensor)
        rows = {p: (name, row) for name, g in self.space.groups().items() for row, p in enumerate(g.positions)}
        self.routes = [] if ops is not None or summed else [(i, *rows[b.index]) for i, b in enumerate(blocks)
                                                             if b.searchable]
        # NHWC weights: oneDNN's depthwise weight gradients are 2-3x faster on CPU (MBConv_6_7 chain on digits:
        # 128 -> 55 ms per step); cuDNN runs NHWC convolutions natively.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, arch: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        choices: list[torch.Tensor | None] = [None] * len(self.blocks)
        if arch is not None:
            if not self.routes:
                raise ValueError("a network built from a genotype takes no architecture")
            for position, group, row in self.routes:
                value = arch[group]
                choices[position] = value[:, row] if value.dim() == 3 else value[row]
        h = self.first(self.stem(x))
        for block, choice in zip(self.blocks, choices, strict=True):
            h = block(h, choice)
        return self.classifier(self.head(h))

    def searchable(self) -> Iterator[tuple[SearchableLayer, SearchConv2d]]:
        """PGNAS's searchable convolutions of a summed network, in forward order: the 1x1 projection of every
        ``MBConv`` op of every mixop, whose input channels (the expanded ones) can be masked; layer: the mixop's
        name, branch: the op's."""
        for i, block in enumerate(self.blocks):
            if not block.summed:
                continue
            for name, op in block.ops.items():
                if parse_op(name)[0] != "MBConv" or op.empty:
                    continue
                j = projection_index(name)
                conv = op.body[j]
                path = f"blocks.{i}.ops.{name}.body.{j}"
                yield SearchableLayer(self.block_names[i], name,
                                      conv.kernel_shape[1], path), conv


def _identity_last(run: Sequence[str]) -> list[str]:
    return [op for op in run if op != "Identity"] + [op for op in run if op == "Identity"]


@dataclass
class ChainSpace(DecisionSpace):
    """Search-space API: the decisions (one per mixop), the super-network, genotypes, built networks, and
    per-genotype params/FLOPs."""

    config: ChainSpaceConfig = field(default_factory=ChainSpaceConfig)
    name: str = "chain"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChainSpace:
        return cls(ChainSpaceConfig.from_dict(data))

    def decisions(self) -> list[Decision]:
        return [Decision(layer.name, layer.group, layer.ops) for layer in self.layers()]

    def supernet(self, sparse: bool = False) -> ChainNet:
        return ChainNet(self.config, sparse=sparse, affine=self.config.affine)

    def channel_supernet(self) -> ChainNet:
        """PGNAS's super-network: every op of every mixop summed with weight 1 (see :class:`ChainNet`)."""
        return ChainNet(self.config, affine=self.config.affine, summed=True)

    def expanded_channels(self) -> dict[str, dict[str, int]]:
        """``{mixop: {MBConv op: E * C_in}}``: what a channel-level genotype keeps a subset of."""
        return {layer.name: {op: layer.in_channels * parse_op(op)[1] for op in layer.ops
                             if parse_op(op)[0] == "MBConv"} for layer in self.layers()}

    def layers(self) -> list[ChainLayer]:
        """The mixops (searchable blocks), in order."""
        return [b for b in layout(self.config)[0] if b.searchable]

    def blocks(self) -> list[ChainLayer]:
        """Every block after the stem: mixops and fixed transitions."""
        return layout(self.config)[0]

    def genotype(self, ops: Sequence[str]) -> Genotype:
        """Genotype of one op name per mixop."""
        genotype = Genotype(self.name, self.config.to_dict(), {"ops": list(ops)})
        self.validate(genotype)
        return genotype

    def channel_genotype(self, kept: Mapping[str, Mapping[str, Sequence[int]]]) -> Genotype:
        """Channel-level genotype (PGNAS): every op of every mixop stays, summed; ``kept[mixop][op]`` lists the
        expanded channels an ``MBConv`` op keeps."""
        genotype = Genotype(self.name, self.config.to_dict(), {"kept": sorted_kept(kept)})
        self.validate(genotype)
        return genotype

    def genotype_from_masks(self, masks: Mapping[tuple[str, str], torch.Tensor]) -> Genotype:
        """Channel-level genotype of keep masks ``{(mixop, op): bool tensor (E * C_in,)}``."""
        return self.channel_genotype(kept_from_masks(masks))

    def genotype_from_indices(self, indices: Sequence[int]) -> Genotype:
        decisions = self.decisions()
        if len(indices) != len(decisions):
            raise ValueError(f"architecture has {len(indices)} choices, the chain has {len(decisions)} mixops")
        for d, i in zip(decisions, indices, strict=True):
            if not 0 <= int(i) < len(d.options):
                raise ValueError(f"mixop {d.name}: op index {int(i)} is not in 0..{len(d.options) - 1}")
        return self.genotype([d.options[int(i)] for d, i in zip(decisions, indices, strict=True)])

    def canonical(self, genotype: Genotype) -> Genotype:
        """``Identity`` is no layer at all (no residual, no parameters), so within a run of consecutive mixops of
        one shape only the order of the other ops matters: each run's ``Identity`` choices move to its end
        (``[Identity, MBConv_3_3]`` and ``[MBConv_3_3, Identity]`` in one stage build the same network).
        Channel-level genotypes are their own canonical form."""
        self.validate(genotype)
        if "ops" not in genotype.choices:
            return genotype
        ops: list[str] = []
        run: list[str] = []
        choices = iter(genotype.choices["ops"])
        for block in self.blocks():
            if block.searchable and "Identity" in block.ops:
                run.append(next(choices))
                continue
            ops += _identity_last(run)
            run = []
            if block.searchable:
                ops.append(next(choices))
        ops += _identity_last(run)
        return Genotype(self.name, genotype.config, {"ops": ops}, genotype.dataset)

    def derive(self, strengths: Mapping[str, torch.Tensor]) -> Genotype:
        """The strongest op of every mixop."""
        return self.genotype_from_indices(self.indices(strengths))

    def random_genotype(self, generator: torch.Generator) -> Genotype:
        """One op per mixop, uniformly."""
        return self.genotype_from_indices([int(torch.randint(n, (), generator=generator))
                                           for n in self.num_options()])

    def indices(self, arch: Mapping[str, torch.Tensor] | Genotype) -> list[int]:
        """Op index per mixop of an architecture value, or of a (validated) genotype."""
        if not isinstance(arch, Genotype):
            return super().indices(arch)
        self.validate(arch)
        if "ops" not in arch.choices:
            raise GenotypeError("a channel-level chain genotype keeps every op: it has no op index per mixop")
        return [d.options.index(op) for d, op in zip(self.decisions(), arch.choices["ops"], strict=True)]

    def validate(self, genotype: Genotype) -> None:
        if genotype.space != self.name:
            raise GenotypeError(f"genotype is for space {genotype.space!r}, not {self.name!r}")
        if isinstance(genotype.choices, dict) and set(genotype.choices) == {"kept"}:
            return self._validate_kept(genotype.choices["kept"])
        layers = self.layers()
        ops = genotype.choices.get("ops") if isinstance(genotype.choices, dict) else None
        if set(genotype.choices) != {"ops"} or not isinstance(ops, list):
            raise GenotypeError("a chain genotype's choices must be {\"ops\": [one op name per mixop]} or "
                                "{\"kept\": {mixop: {MBConv op: [kept expanded channels]}}}")
        if len(ops) != len(layers):
            raise GenotypeError(f"genotype has {len(ops)} ops, the chain has {len(layers)} mixops")
        for layer, op in zip(layers, ops, strict=True):
            if op not in layer.ops:
                why = ("Identity is not allowed here: this layer changes the width or the resolution"
                       if op == "Identity" and op in self.config.op_names else f"choose one of {', '.join(layer.ops)}")
                raise GenotypeError(f"mixop {layer.index} ({layer.name}): unknown op {op!r}; {why}")

    def _validate_kept(self, kept: Any) -> None:
        expected = self.expanded_channels()
        if not isinstance(kept, dict) or set(kept) != set(expected):
            names = set(kept) if isinstance(kept, dict) else set()
            raise GenotypeError(f"a channel-level chain genotype keeps channels of every mixop (missing: "
                                f"{sorted(set(expected) - names)}, unknown: {sorted(names - set(expected))})")
        for layer, ops in kept.items():
            if not isinstance(ops, dict) or set(ops) != set(expected[layer]):
                raise GenotypeError(f"mixop {layer}: expected kept channels of its MBConv ops "
                                    f"{sorted(expected[layer])}")
            for op, idx in ops.items():
                check_kept_channels(idx, expected[layer][op], f"mixop {layer} op {op}")

    def build(self, genotype: Genotype, auxiliary: bool = False, drop_path: float = 0.0,
              inherit: Mapping[str, torch.Tensor] | None = None) -> ChainNet:
        """The discrete network of ``genotype`` (affine BatchNorm); ``inherit`` (a super-network state dict)
        copies its weights, leaving the affine parameters a non-affine super-network lacks at their identity
        initialisation (so the built network computes what the super-network ran)."""
        self.validate(genotype)
        if auxiliary or drop_path:
            raise GenotypeError("the chain space has no auxiliary head or drop-path: train it without "
                                "--auxiliary and --drop-path")
        kept = genotype.choices.get("kept")
        net = ChainNet(self.config, genotype.choices.get("ops"), kept=kept)
        if inherit is not None:
            affine = {f"{name}.{p}" for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)
                      for p in ("weight", "bias")}
            own = affine | {k for k in net.state_dict() if k.endswith(".index")}  # kept-channel gathers
            net.load_state_dict({k: _inherited(k, inherit, kept, net.block_names) if k in inherit or k not in own
                                 else v for k, v in net.state_dict().items()})
        return net

    def flops(self, genotype: Genotype) -> int:
        """Multiply-accumulates of one image through the built network (convolutions and the classifier)."""
        c = self.config
        return count_flops(self.build(genotype), (c.in_channels, c.image_size, c.image_size))

    def describe(self, genotype: Genotype) -> str:
        self.validate(genotype)
        if "kept" in genotype.choices:
            expected = self.expanded_channels()
            return "\n".join(
                f"  mixop {layer.index:>2} {layer.name:<7} {layer.in_channels:>4}->{layer.out_channels:<4} "
                f"stride {layer.stride}  " + "  ".join(
                    f"{op}:{len(genotype.choices['kept'][layer.name][op])}/{expected[layer.name][op]}"
                    if op in expected[layer.name] else op for op in layer.ops)
                for layer in self.layers())
        return "\n".join(f"  mixop {layer.index:>2} {layer.name:<7} {layer.in_channels:>4}->{layer.out_channels:<4} "
                         f"stride {layer.stride}  {op}"
                         for layer, op in zip(self.layers(), genotype.choices["ops"], strict=True))


def _inherited(key: str, state: Mapping[str, torch.Tensor], kept: Mapping[str, Mapping[str, Sequence[int]]] | None,
               block_names: Sequence[str]) -> torch.Tensor:
    """The super-network tensor ``state[key]`` cut down to a channel-level network's kept expanded channels: in
    a masked ``MBConv`` op, every tensor before the projection loses the dropped output channels (expand and
    depthwise convolutions, their BatchNorms), the projection its dropped input channels."""
    source = state[key]
    parts = key.split(".")
    if kept is None or parts[0] != "blocks" or parts[2] != "ops" or parts[4] != "body":
        return source
    op = parts[3]
    idx = kept.get(block_names[int(parts[1])], {}).get(op)
    if idx is None or source.dim() == 0:
        return source
    position, proj = int(parts[5]), projection_index(op)
    index = torch.tensor(idx, dtype=torch.long, device=source.device)
    if position < proj:
        return source.index_select(0, index)
    return source.index_select(1, index) if position == proj else source
