"""One GDAS weight step: ours against the authors' code (xautodl 1.0.0), same layout, same batch, one process.

xautodl's GDAS search network is ``get_cell_based_tiny_net`` with ``super_type="nasnet-super"``, C=16, N=2,
steps 4, multiplier 4, stem multiplier 3, affine False (6 cells). Ours is the ``gdas`` method with the
same layout (``NNRNRN``), its straight-through Gumbel proposal and Pyro-conditioned model. Both take one
SGD step (momentum 0.9, nesterov, wd 5e-4, gradient-norm clip 5) on the same random 64x3x32x32 batch; the
two alternate, and the medians are compared. The cost of a step depends on which ops are drawn, so before each
round both networks' logits are pinned to the same random architecture (one uniformly drawn op per edge, as
at the start of a search), and both then compute exactly the same ops. ``ratio=<ours/xautodl>`` compares the
two in fp32; ``ratio_fast=<ours fast/xautodl>`` times a third step, ours in bfloat16 autocast with channels-last
modules and batch (``--precision bf16 --channels-last``), against the same fp32 xautodl step. Where the CPU has
no native bfloat16 (``avx512_bf16``/``amx_bf16``), bf16 is emulated and slower than fp32: the script says which
the CPU has.

xautodl pins numpy <= 1.19.5, which does not install on Python 3.11; it needs only numpy at run time, so it
is installed without its dependencies::

    pip install --no-deps xautodl==1.0.0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from bayesnas.precision import native_bf16

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gdas_step import gdas_weight_step, parse_timing_args, pin_logits, time_alternating  # noqa: E402

# the DARTS ops under our names; xautodl names the same eight ops "dua_sepc_3x3", "dil_sepc_3x3", ...
OPS = ["none", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "avg_pool_3x3",
       "max_pool_3x3"]


def xautodl_weight_step(batch: int, device: torch.device, x: torch.Tensor, y: torch.Tensor):
    try:
        from xautodl.config_utils import dict2config
        from xautodl.models import get_cell_based_tiny_net
        from xautodl.models.cell_operations import SearchSpaceNames
    except ImportError:
        sys.exit("xautodl is not installed: pip install --no-deps xautodl==1.0.0")
    config = dict2config({"name": "GDAS", "super_type": "nasnet-super", "C": 16, "N": 2, "steps": 4,
                          "multiplier": 4, "stem_multiplier": 3, "num_classes": 10,
                          "space": SearchSpaceNames["darts"],
                          "affine": False, "track_running_stats": True}, None)
    net = get_cell_based_tiny_net(config).to(device)
    net.set_tau(10.0)
    optimizer = torch.optim.SGD(net.get_weights(), lr=0.025, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def step() -> None:
        _, logits = net(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.get_weights(), 5.0)
        optimizer.step()

    return step, net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args, device, x, y = parse_timing_args(parser)
    space = {"in_channels": 3, "channels": 16, "layout": "NNRNRN", "states": 4, "ops": ",".join(OPS),
             "stem_multiplier": 3, "affine": False}
    ours, method = gdas_weight_step(space, args.batch_size, device, x, y)
    fast, fast_method = gdas_weight_step(space, args.batch_size, device, x, y, precision="bf16",
                                         memory_format_channels_last=True)
    theirs, net = xautodl_weight_step(args.batch_size, device, x, y)
    params = sum(p.numel() for p in net.get_weights())
    generator = torch.Generator().manual_seed(1)

    def same_architecture() -> None:
        for kind, theirs_logits in (("normal", net.arch_normal_parameters), ("reduce", net.arch_reduce_parameters)):
            choice = torch.randint(0, len(OPS), (theirs_logits.shape[0],), generator=generator)
            pin_logits(method.guide.logits[kind], choice)
            pin_logits(fast_method.guide.logits[kind], choice)
            pin_logits(theirs_logits, choice)

    median = time_alternating({"ours": ours, "ours_fast": fast, "xautodl": theirs}, args.repeats, args.warmup,
                              device, before_round=same_architecture)
    native = native_bf16(device)
    print(f"device={device} threads={args.threads} batch={args.batch_size}x3x32x32 layout=NNRNRN C=16 "
          f"xautodl_weights={params} native_bf16={'yes' if native else 'no'}")
    print(f"ours fp32           : median {median['ours']:.4f} s/step")
    print(f"ours bf16+chan-last : median {median['ours_fast']:.4f} s/step")
    print(f"xautodl fp32        : median {median['xautodl']:.4f} s/step")
    print(f"ratio={median['ours'] / median['xautodl']:.3f}")
    print(f"ratio_fast={median['ours_fast'] / median['xautodl']:.3f}")


if __name__ == "__main__":
    main()
