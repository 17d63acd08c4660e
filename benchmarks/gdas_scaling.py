"""Does a GDAS step cost the same whatever the number of candidate ops? (Dong & Yang, CVPR 2019, Sec. 3.2)

Times one weight step of our GDAS on a CIFAR-shaped batch with the 8 DARTS ops against the same network
with 2 candidate ops (``sep_conv_3x3`` and ``max_pool_3x3``, the two ops DARTS ends up using), both with
architectures drawn from the proposal. A second pair of timings isolates the per-candidate overhead: both
networks run ``sep_conv_3x3`` on every edge (logits set so that it is always drawn). Last line:
``ratio=<t8/t2>`` of the sampled steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gdas_step import gdas_weight_step, parse_timing_args, pin_logits, time_alternating  # noqa: E402

EIGHT = "none,skip_connect,sep_conv_3x3,sep_conv_5x5,dil_conv_3x3,dil_conv_5x5,avg_pool_3x3,max_pool_3x3"
TWO = "sep_conv_3x3,max_pool_3x3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args, device, x, y = parse_timing_args(parser)
    steps = {}
    for label, ops in (("8 ops", EIGHT), ("2 ops", TWO)):
        space = {"in_channels": 3, "channels": 16, "layout": "NNRNRN", "states": 4, "ops": ops, "affine": False}
        steps[label], _ = gdas_weight_step(space, args.batch_size, device, x, y)
        pinned, method = gdas_weight_step(space, args.batch_size, device, x, y)
        for logits in method.guide.logits.values():
            pin_logits(logits, torch.full((logits.shape[0],), ops.split(",").index("sep_conv_3x3")))
        steps[f"{label}, sep_conv_3x3 everywhere"] = pinned
    median = time_alternating(steps, args.repeats, args.warmup, device)
    for label, seconds in median.items():
        print(f"{label:<32}: median {seconds:.4f} s/step")
    pinned_ratio = median["8 ops, sep_conv_3x3 everywhere"] / median["2 ops, sep_conv_3x3 everywhere"]
    print(f"same op on every edge: t8/t2 = {pinned_ratio:.3f}")
    print(f"ratio={median['8 ops'] / median['2 ops']:.3f}")


if __name__ == "__main__":
    main()
