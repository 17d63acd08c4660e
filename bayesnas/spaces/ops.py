"""Candidate operations of the DARTS cell space (Liu et al. 2019), as used by VINNAS and GDAS.

Every convolution is a :class:`SearchConv2d`, which calls :func:`bayesnas.reparam.conv2d`, so a method whose
weights are Pyro sample sites (VINNAS) gets local reparameterisation on every op without the ops knowing.
Details follow the GDAS authors' code (``xautodl/models/cell_operations.py``): ``sep`` is two stacked
(ReLU, depthwise, 1x1, BN) blocks, ``dil`` one such block with dilation 2, average pooling does not count
padding, no BN after pooling, ``skip`` is a factorized reduction when striding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bayesnas import reparam
from bayesnas.errors import BayesNASError
from bayesnas.precision import depthwise_leaves_autocast, memory_format


class SearchConv2d(nn.Conv2d):
    """``nn.Conv2d`` routed through :func:`bayesnas.reparam.conv2d` (bias-free by default); a depthwise one runs in
    fp32 under CPU autocast (:func:`~bayesnas.precision.depthwise_leaves_autocast`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride=1,
                 padding=0, dilation=1, groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.kernel_shape = tuple(self.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == self.in_channels > 1 and depthwise_leaves_autocast(x):
            with torch.autocast(x.device.type, enabled=False):
                return self._conv(x.float())
        return self._conv(x)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        x, stride, padding, dilation = undilated(x, self.stride, self.padding, self.dilation)
        return reparam.conv2d(x, self.weight, self.bias, stride, padding, dilation, self.groups)


def undilated(x: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int] | str, dilation: tuple[int, int]
              ) -> tuple[torch.Tensor, tuple[int, int] | int, tuple[int, int] | int | str, tuple[int, int] | int]:
    """A convolution's input and (stride, padding, dilation), rewritten on CPUs where stride = dilation = s > 1:
    output pixel o reads padded input s * o + s * t for kernel tap t, so the same sums are a stride-1, undilated
    convolution of every s-th padded pixel, which oneDNN computes 1.1-4.7x faster
    (``benchmarks/cpu_convolutions.py``)."""
    if x.device.type != "cpu" or stride != dilation or stride == (1, 1) or isinstance(padding, str):
        return x, stride, padding, dilation
    (ph, pw), (sh, sw) = padding, stride
    return F.pad(x, (pw, pw, ph, ph))[:, :, ::sh, ::sw], 1, 0, 1


def bn(channels: int, affine: bool) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, affine=affine)


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride, padding, dilation=1,
                 groups: int = 1, affine: bool = True) -> None:
        super().__init__(nn.ReLU(), SearchConv2d(c_in, c_out, kernel, stride, padding, dilation, groups),
                         bn(c_out, affine))


class DilConv(nn.Sequential):
    """ReLU, depthwise k x k (dilation d), pointwise 1x1, BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, dilation: int, affine: bool) -> None:
        padding = dilation * (kernel - 1) // 2
        super().__init__(nn.ReLU(), SearchConv2d(c_in, c_in, kernel, stride, padding, dilation, groups=c_in),
                         SearchConv2d(c_in, c_out, 1), bn(c_out, affine))


class SepConv(nn.Sequential):
    """Two stacked dilation-1 ``DilConv`` blocks, the first one striding."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, affine: bool) -> None:
        super().__init__(DilConv(c_in, c_in, kernel, stride, 1, affine), DilConv(c_in, c_out, kernel, 1, 1, affine))


class Conv7x1x1x7(nn.Sequential):
    """ReLU, 1x7 then 7x1 convolution, BN."""

    def __init__(self, c_in: int, c_out: int, stride: int, affine: bool) -> None:
        super().__init__(nn.ReLU(), SearchConv2d(c_in, c_in, (1, 7), (1, stride), (0, 3)),
                         SearchConv2d(c_in, c_out, (7, 1), (stride, 1), (3, 0)), bn(c_out, affine))


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing pixels: two 1x1 stride-2 convolutions on offset grids."""

    def __init__(self, c_in: int, c_out: int, affine: bool) -> None:
        super().__init__()
        self.conv_1 = SearchConv2d(c_in, c_out // 2, 1, 2)
        self.conv_2 = SearchConv2d(c_in, c_out - c_out // 2, 1, 2)
        self.bn = bn(c_out, affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        shifted = nn.functional.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


class Zero(nn.Module):
    """The ``none`` op: zeros of the output's shape."""

    def __init__(self, c_out: int, stride: int) -> None:
        super().__init__()
        self.c_out, self.stride = c_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x[:, :, :: self.stride, :: self.stride].shape
        # in x's memory format: a contiguous zero summed into channels-last states would make the cell's output, and
        # every convolution reading it, copy to and fro
        return torch.empty(n, self.c_out, h, w, dtype=x.dtype, device=x.device,
                           memory_format=memory_format(x)).zero_()


class Pool(nn.Module):
    def __init__(self, kind: str, c_in: int, c_out: int, stride: int, affine: bool) -> None:
        super().__init__()
        self.pool = (nn.MaxPool2d(3, stride, 1) if kind == "max"
                     else nn.AvgPool2d(3, stride, 1, count_include_pad=False))
        self.project = None if c_in == c_out else ReLUConvBN(c_in, c_out, 1, 1, 0, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(x) if self.project is not None else x
        return self.pool(x)


def _skip(c_in: int, c_out: int, stride: int, affine: bool) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    if stride == 2:
        return FactorizedReduce(c_in, c_out, affine)
    return ReLUConvBN(c_in, c_out, 1, 1, 0, affine=affine)


class DropPath(nn.Module):
    """Drop-path: zero a branch or op output per example with probability ``p`` while training
    (rescaling the rest); a building block of the retraining recipe."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


class AuxiliaryHead(nn.Module):
    """The auxiliary tower of DARTS (Liu et al., ICLR 2019, architecture evaluation; authors'
    ``AuxiliaryHeadCIFAR``), used by GDAS's retraining (Dong & Yang, CVPR 2019, Sec. 4.2): ReLU, 5x5
    average pooling with stride 3 and no padding (``count_include_pad=False``), 1x1 convolution to 128
    channels, BN, ReLU, 2x2 convolution to 768 channels, BN, ReLU, linear classifier. It is attached to the
    features at 2/3 depth, trained with loss weight 0.4 and dropped at test time.

    On the 8x8 map the CIFAR network has at 2/3 depth the exact DARTS pooling gives 2x2 (any side from 8 to
    10 does). Other sizes -- the tiny maps of 8x8 digits, or larger inputs -- would give a map the 2x2
    convolution cannot reduce to one position, so they are pooled adaptively to 2x2 instead (average over
    (nearly) equal quarters, repeating pixels of a map under 2x2); the layers and parameter count are the same.
    At C = 36 on CIFAR-10 (576 input channels) the head has 476,426 parameters.
    """

    pool_kernel, pool_stride = 5, 3

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU())
        self.classifier = nn.Linear(768, num_classes)

    @classmethod
    def exact_pooling(cls, height: int, width: int) -> bool:
        """Whether the DARTS pooling (5x5, stride 3, no padding) maps a ``height x width`` input to 2x2."""
        return all(side >= cls.pool_kernel and (side - cls.pool_kernel) // cls.pool_stride + 1 == 2
                   for side in (height, width))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact_pooling(x.shape[-2], x.shape[-1]):
            return nn.functional.avg_pool2d(x, self.pool_kernel, self.pool_stride, 0, count_include_pad=False)
        return nn.functional.adaptive_avg_pool2d(x, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.pool(torch.relu(x))).flatten(1))


OpFactory = Callable[[int, int, int, bool], nn.Module]

OPS: dict[str, OpFactory] = {
    "none": lambda c_in, c_out, stride, affine: Zero(c_out, stride),
    "skip_connect": _skip,
    "max_pool_3x3": lambda c_in, c_out, stride, affine: Pool("max", c_in, c_out, stride, affine),
    "avg_pool_3x3": lambda c_in, c_out, stride, affine: Pool("avg", c_in, c_out, stride, affine),
    "sep_conv_3x3": lambda c_in, c_out, stride, affine: SepConv(c_in, c_out, 3, stride, affine),
    "sep_conv_5x5": lambda c_in, c_out, stride, affine: SepConv(c_in, c_out, 5, stride, affine),
    "sep_conv_7x7": lambda c_in, c_out, stride, affine: SepConv(c_in, c_out, 7, stride, affine),
    "dil_conv_3x3": lambda c_in, c_out, stride, affine: DilConv(c_in, c_out, 3, stride, 2, affine),
    "dil_conv_5x5": lambda c_in, c_out, stride, affine: DilConv(c_in, c_out, 5, stride, 2, affine),
    "conv_7x1_1x7": lambda c_in, c_out, stride, affine: Conv7x1x1x7(c_in, c_out, stride, affine),
}

OP_SETS: dict[str, tuple[str, ...]] = {
    # VINNAS, K = 10 (Ferianc, Fan & Rodrigues, arXiv:2007.06103, Sec. IV)
    "vinnas": ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "sep_conv_5x5",
               "sep_conv_7x7", "dil_conv_3x3", "dil_conv_5x5", "conv_7x1_1x7"),
    # GDAS / DARTS, K = 8 (Dong & Yang, CVPR 2019, Sec. 3.1 and 4.2)
    "gdas": ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5"),
}


class UnknownOpError(BayesNASError, ValueError):
    pass


def make_op(name: str, c_in: int, c_out: int, stride: int, affine: bool = True) -> nn.Module:
    if name not in OPS:
        raise UnknownOpError(f"unknown operation {name!r}; known: {', '.join(OPS)}")
    return OPS[name](c_in, c_out, stride, affine)
