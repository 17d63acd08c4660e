"""Size and cost of a network: trainable parameters and multiply-accumulates (FLOPs as MACs)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bayesnas.spaces.ops import AuxiliaryHead


def count_params(net: nn.Module, auxiliary: bool = False) -> int:
    """Number of trainable parameters (PyroSample weights of a converted super-network excluded).

    The auxiliary head (:class:`~bayesnas.spaces.ops.AuxiliaryHead`, a training aid dropped at test time) is
    left out unless ``auxiliary=True``, as DARTS (Liu et al., ICLR 2019) and GDAS (Dong & Yang, CVPR 2019,
    Table 1) report sizes: the authors' code counts every parameter whose name does not contain "auxiliary".
    """
    skip = set() if auxiliary else {id(p) for m in net.modules() if isinstance(m, AuxiliaryHead)
                                     for p in m.parameters()}
    return sum(p.numel() for p in net.parameters() if p.requires_grad and id(p) not in skip)


@torch.no_grad()
def count_flops(net: nn.Module, input_shape: Sequence[int], **forward_kwargs) -> int:
    """Multiply-accumulates of one forward pass of a single input of ``input_shape`` (C, H, W), counted by
    hooks on every convolution and linear layer (the FLOPs of the spaces' sizes and PC-NAS's FLOPs proxy)."""
    total = 0

    def conv_hook(module: nn.Conv2d, inputs, output) -> None:
        nonlocal total
        kernel = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
        total += output.numel() * kernel

    def linear_hook(module: nn.Linear, inputs, output) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    handles = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
               for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = net.training
    net.eval()
    try:
        param = next(net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        net(torch.zeros(1, *input_shape, device=device), **forward_kwargs)
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return int(total)
