"""Multi-branch ResNet space of PGNAS (Zhou et al., AAAI 2020, Sec. 3.1, after shake-shake, Gastaldi 2017).

Each residual block sums a shortcut and one branch per kernel size s; a branch is
``ReLU - conv_a(s x s) - BN - ReLU - conv_b(s x s) - BN``. Both convolutions are *searchable layers*: every
input-channel slice ``w_{l,k}^s`` of their kernels can be switched off (the hybrid variable of Eq. 12).

A genotype keeps, per layer ``l`` (``"s0.b0.a"``: stage 0, block 0, first conv) and branch ``"k3"``, the list of
input channels that stay. :meth:`BranchSpace.build` turns it into a smaller dense network that computes exactly
what the super-network computes with the dropped kernel slices set to zero: ``conv_a`` reads only its kept
block inputs and produces only the channels ``conv_b`` keeps. A layer with nothing kept loses its convolution
(operation-level selection, the paper's Table 7), but not the BatchNorm after it: the masked super-network
still adds that BatchNorm's offset (``beta - gamma * mean / sqrt(var + eps)`` in evaluation), so the built
branch keeps it as an input-independent term (the BatchNorm applied to zeros).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bayesnas.compute import SpaceNetwork
from bayesnas.spaces.genotype import Genotype, GenotypeError, SpaceConfig, integers
from bayesnas.spaces.ops import AuxiliaryHead, DropPath, SearchConv2d


@dataclass(frozen=True)
class BranchSpaceConfig(SpaceConfig):
    """Shape of the super-network. Stage ``i`` has ``depths[i]`` blocks of width ``widths[i]``; every
    stage after the first halves the resolution in its first block."""

    in_channels: int = 1
    num_classes: int = 10
    stem_channels: int = 32
    widths: tuple[int, ...] = (32, 64)
    depths: tuple[int, ...] = (1, 1)
    kernel_sizes: tuple[int, ...] = (1, 3, 5)
    stem_stride: int = 1
    """Stride of the stem convolution (2 for 28x28 inputs on a small budget: 4x fewer operations)."""

    def __post_init__(self) -> None:
        for name in ("widths", "depths", "kernel_sizes"):
            object.__setattr__(self, name, integers(name, getattr(self, name)))
        if len(self.widths) != len(self.depths) or not self.widths:
            raise ValueError("widths and depths need one entry per stage")
        if any(k % 2 == 0 or k < 1 for k in self.kernel_sizes) or not self.kernel_sizes:
            raise ValueError(f"kernel sizes must be odd and positive, got {self.kernel_sizes}")
        if any(v < 1 for v in (*self.widths, *self.depths, self.stem_channels, self.in_channels, self.stem_stride)):
            raise ValueError("widths, depths, stem_channels, stem_stride and in_channels must be positive")



@dataclass(frozen=True)
class SearchableLayer:
    """One searchable kernel ``(l, s)``: where it sits and how many input-channel slices it has."""

    layer: str
    branch: str
    in_channels: int
    module_path: str


class BranchConv(SearchConv2d):
    """A bias-free ``s x s`` convolution whose kernel is a searchable site ``(l, s)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, kernel_size // 2)
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")


class Branch(nn.Module):
    """``ReLU - conv_a - BN - ReLU - conv_b - BN``; ``index`` gathers the kept block inputs (built nets).

    In a built network a layer may keep no input channel: ``index == []`` (``conv_a`` reads nothing) or
    ``mid_channels == 0`` (``conv_b`` reads nothing). That convolution is then absent and its output is zero, as
    in the super-network with all its slices masked; the BatchNorm after it still applies (its offset), and
    with ``mid_channels == 0`` only ``bn_b`` is left.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, kernel_size: int, stride: int,
                 index: list[int] | None = None) -> None:
        super().__init__()
        self.register_buffer("index", None if index is None else torch.tensor(index, dtype=torch.long))
        self.stride = stride
        self.out_channels = out_channels
        reads_a = in_channels > 0 and mid_channels > 0 and (index is None or len(index) > 0)
        self.conv_a = BranchConv(in_channels, mid_channels, kernel_size, stride) if reads_a else None
        self.bn_a = nn.BatchNorm2d(mid_channels) if mid_channels > 0 else None
        self.conv_b = BranchConv(mid_channels, out_channels, kernel_size) if mid_channels > 0 else None
        self.bn_b = nn.BatchNorm2d(out_channels)

    def _zeros(self, x: torch.Tensor, channels: int) -> torch.Tensor:
        """What a convolution of this branch with an all-zero kernel outputs (odd kernel, padding k // 2)."""
        height, width = (x.shape[2] - 1) // self.stride + 1, (x.shape[3] - 1) // self.stride + 1
        return x.new_zeros(x.shape[0], channels, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_b is None:
            return self.bn_b(self._zeros(x, self.out_channels))
        if self.conv_a is None:
            h = self._zeros(x, self.bn_a.num_features)
        else:
            if self.index is not None:
                x = x.index_select(1, self.index)
            h = self.conv_a(torch.relu(x))
        h = self.bn_a(h)
        return self.bn_b(self.conv_b(torch.relu(h)))


class MultiBranchBlock(nn.Module):
    """Residual block: shortcut + sum of branches (one per kernel size)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 branches: Mapping[str, tuple[int, list[int] | None, int]], drop_path: float = 0.0) -> None:
        super().__init__()
        self.branches = nn.ModuleDict({
            name: Branch(in_channels if idx is None else len(idx), mid, out_channels, int(name[1:]), stride, idx)
            for name, (mid, idx, _) in branches.items()
        })
        self.drop_path = DropPath(drop_path)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.ReLU(), nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shortcut(x)
        for branch in self.branches.values():
            out = out + self.drop_path(branch(x))
        return out


class BranchNet(SpaceNetwork):
    """The super-network (``kept=None``) or a network built from a genotype's kept channels.

    In training mode with ``auxiliary=True`` the forward returns ``(logits, aux_logits)``.
    """

    def __init__(self, config: BranchSpaceConfig, kept: Mapping[str, Mapping[str, list[int]]] | None = None,
                 auxiliary: bool = False, drop_path: float = 0.0) -> None:
        super().__init__()
        self.config = config
        c = config
        self.stem = nn.Sequential(nn.Conv2d(c.in_channels, c.stem_channels, 3, c.stem_stride, 1, bias=False),
                                  nn.BatchNorm2d(c.stem_channels))
        stages, in_ch = [], c.stem_channels
        for i, (width, depth) in enumerate(zip(c.widths, c.depths, strict=True)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                branches = {}
                for k in c.kernel_sizes:
                    name = f"k{k}"
                    if kept is None:
                        branches[name] = (width, None, width)
                        continue
                    idx_a, idx_b = kept[f"s{i}.b{j}.a"][name], kept[f"s{i}.b{j}.b"][name]
                    branches[name] = (len(idx_b), None if len(idx_a) == in_ch else list(idx_a), width)
                blocks.append(MultiBranchBlock(in_ch, width, stride, branches, drop_path))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.aux_head = AuxiliaryHead(c.widths[-2], c.num_classes) if auxiliary and len(c.widths) > 1 else None
        self.classifier = nn.Linear(in_ch, c.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h = self.stem(x)
        aux = None
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if self.aux_head is not None and self.training and i == len(self.stages) - 2:
                aux = self.aux_head(h)
        logits = self.classifier(torch.relu(h).mean((2, 3)))
        return logits if aux is None else (logits, aux)

    def searchable(self) -> Iterator[tuple[SearchableLayer, BranchConv]]:
        """The searchable kernels ``(l, s)`` in forward order, with their modules."""
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage):
                for name, branch in block.branches.items():
                    for pos in ("a", "b"):
                        conv = getattr(branch, f"conv_{pos}")
                        if conv is None:  # a built network's layer that keeps no input channel
                            continue
                        path = f"stages.{i}.{j}.branches.{name}.conv_{pos}"
                        yield SearchableLayer(f"s{i}.b{j}.{pos}", name, conv.kernel_shape[1], path), conv


@dataclass
class BranchSpace:
    """Search-space API: the super-network, genotypes and discrete networks built from them."""

    config: BranchSpaceConfig = field(default_factory=BranchSpaceConfig)
    name: str = "branches"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BranchSpace:
        return cls(BranchSpaceConfig.from_dict(data))

    def supernet(self) -> BranchNet:
        return BranchNet(self.config)

    def channel_supernet(self) -> BranchNet:
        """The super-network whose searchable kernels PGNAS masks (the space's only super-network)."""
        return self.supernet()

    def layers(self) -> list[SearchableLayer]:
        return [layer for layer, _ in self.supernet().searchable()]

    def genotype(self, kept: Mapping[str, Mapping[str, list[int]]]) -> Genotype:
        genotype = Genotype(self.name, self.config.to_dict(), sorted_kept(kept))
        self.validate(genotype)
        return genotype

    def genotype_from_masks(self, masks: Mapping[tuple[str, str], torch.Tensor]) -> Genotype:
        """Genotype of per-kernel keep masks ``{(layer, branch): bool tensor (K,)}``."""
        return self.genotype(kept_from_masks(masks))

    def full_genotype(self) -> Genotype:
        """The super-network itself as a genotype (every channel kept)."""
        kept: dict[str, dict[str, list[int]]] = {}
        for layer in self.layers():
            kept.setdefault(layer.layer, {})[layer.branch] = list(range(layer.in_channels))
        return self.genotype(kept)

    def validate(self, genotype: Genotype) -> None:
        if genotype.space != self.name:
            raise GenotypeError(f"genotype is for space {genotype.space!r}, not {self.name!r}")
        expected: dict[str, dict[str, int]] = {}
        for layer in self.layers():
            expected.setdefault(layer.layer, {})[layer.branch] = layer.in_channels
        choices = genotype.choices
        if set(choices) != set(expected):
            missing, extra = set(expected) - set(choices), set(choices) - set(expected)
            raise GenotypeError(f"genotype layers do not fit the space (missing: {sorted(missing)}, "
                                f"unknown: {sorted(extra)})")
        for layer, branches in choices.items():
            if not isinstance(branches, dict) or set(branches) != set(expected[layer]):
                raise GenotypeError(f"layer {layer}: expected branches {sorted(expected[layer])}")
            for branch, idx in branches.items():
                check_kept_channels(idx, expected[layer][branch], f"layer {layer} branch {branch}")

    def describe(self, genotype: Genotype) -> str:
        """One line per layer: the input channels each branch keeps."""
        self.validate(genotype)
        return "\n".join(f"  {layer:<8} kept input channels  " + "  ".join(f"{b}:{len(idx):>3}"
                                                                        for b, idx in branches.items())
                         for layer, branches in genotype.choices.items())

    def build(self, genotype: Genotype, auxiliary: bool = False, drop_path: float = 0.0,
              inherit: Mapping[str, torch.Tensor] | None = None) -> BranchNet:
        """The dense network of ``genotype``; ``inherit`` (a super-network state dict) copies its weights."""
        self.validate(genotype)
        net = BranchNet(self.config, genotype.choices, auxiliary=auxiliary, drop_path=drop_path)
        if inherit is not None:
            net.load_state_dict(_sliced_state(net, genotype.choices, inherit), strict=False)
        return net


def sorted_kept(kept: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, list[int]]]:
    """``{layer: {branch: kept channels}}`` as plain sorted integer lists (a genotype's JSON form)."""
    return {layer: {b: sorted(int(i) for i in idx) for b, idx in v.items()} for layer, v in kept.items()}


def kept_from_masks(masks: Mapping[tuple[str, str], torch.Tensor]) -> dict[str, dict[str, list[int]]]:
    """``{(layer, branch): bool keep mask}`` -> ``{layer: {branch: kept channel indices}}``."""
    kept: dict[str, dict[str, list[int]]] = {}
    for (layer, branch), mask in masks.items():
        kept.setdefault(layer, {})[branch] = torch.nonzero(mask).flatten().tolist()
    return kept


def check_kept_channels(idx: Any, size: int, where: str) -> None:
    """One-line :class:`GenotypeError` unless ``idx`` lists distinct channels of ``range(size)``."""
    if not isinstance(idx, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < size
                                            for i in idx) \
            or len(set(idx)) != len(idx):
        raise GenotypeError(f"{where}: kept channels must be distinct integers in [0, {size})")


def _sliced_state(net: BranchNet, kept: Mapping[str, Mapping[str, list[int]]],
                  supernet_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Super-network weights cut down to the kept channels of a built network."""
    state = {}
    for name, target in net.state_dict().items():
        if name.endswith(".index"):
            continue
        source = supernet_state[name]
        parts = name.split(".")
        if "branches" in parts:
            i, j, branch, module = int(parts[1]), int(parts[2]), parts[4], parts[5]
            idx_b = torch.tensor(kept[f"s{i}.b{j}.b"][branch], dtype=torch.long, device=source.device)
            if module == "conv_a":
                idx_a = torch.tensor(kept[f"s{i}.b{j}.a"][branch], dtype=torch.long, device=source.device)
                source = source.index_select(0, idx_b).index_select(1, idx_a)
            elif module == "bn_a" and source.dim() == 1:
                source = source.index_select(0, idx_b)
            elif module == "conv_b":
                source = source.index_select(1, idx_b)
        state[name] = source.to(target.dtype).reshape(target.shape)
    return state
