"""Forward + backward milliseconds of the DARTS cells' depthwise convolutions on the CPU, in the forms we choose.

Two tables, one process, the two forms of each row timed in alternation, batch 64, channels-last
(``--layout contiguous`` for the default format):

1. **depthwise in bf16 or fp32 under autocast**: a bf16 input (as the previous autocast op leaves it) through a
   depthwise ``k x k`` convolution in bfloat16, against the same input cast to fp32 and convolved in fp32 (what
   :class:`bayesnas.spaces.ops.SearchConv2d` does under CPU autocast). ``fp32/bf16`` below 1: fp32 is faster.
2. **stride 2, dilation 2**: ``F.conv2d`` with ``stride = dilation = 2`` against the undilated convolution of every
   second padded pixel (:func:`bayesnas.spaces.ops.undilated`), fp32; the script checks that both give the same
   output.

    python benchmarks/cpu_convolutions.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from bayesnas.precision import native_bf16
from bayesnas.spaces.ops import undilated

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gdas_step import time_alternating  # noqa: E402

# (channels, side, kernel, dilation, stride) of the depthwise convolutions in the gdas-xautodl super-network
DEPTHWISE = [(16, 32, 3, 1, 1), (16, 32, 5, 1, 1), (16, 32, 3, 2, 1), (16, 32, 5, 2, 1), (32, 16, 3, 1, 1),
             (32, 16, 5, 1, 1), (32, 16, 3, 2, 1), (32, 16, 5, 2, 1), (64, 8, 3, 1, 1), (64, 8, 5, 1, 1),
             (64, 8, 3, 2, 1), (64, 8, 5, 2, 1), (32, 32, 3, 1, 2), (32, 32, 5, 1, 2)]
STRIDED_DILATED = [(32, 32, 3), (32, 32, 5), (64, 16, 3), (64, 16, 5)]


def milliseconds(steps: dict[str, Callable[[], object]], repeats: int) -> tuple[float, ...]:
    """Median milliseconds of each step, run in alternation (``_gdas_step.time_alternating``)."""
    return tuple(1e3 * t for t in time_alternating(steps, repeats, 1, torch.device("cpu")).values())


def depthwise(x: torch.Tensor, w: torch.Tensor, stride: int, dilation: int, bf16: bool) -> None:
    """Forward + backward of a depthwise convolution of the bf16 ``x``: in bf16 under autocast, or cast to fp32."""
    pad = dilation * (w.shape[-1] - 1) // 2
    if bf16:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = F.conv2d(x, w, None, stride, pad, dilation, w.shape[0])
    else:
        out = F.conv2d(x.float(), w, None, stride, pad, dilation, w.shape[0])
    out.float().sum().backward()


def strided_dilated(x: torch.Tensor, w: torch.Tensor, rewritten: bool, backward: bool = False) -> torch.Tensor:
    """A depthwise convolution with stride = dilation = 2, ``F.conv2d``'s or the undilated form (and its
    backward)."""
    pad = w.shape[-1] - 1
    if rewritten:
        sub, stride, padding, dilation = undilated(x, (2, 2), (pad, pad), (2, 2))
        out = F.conv2d(sub, w, None, stride, padding, dilation, w.shape[0])
    else:
        out = F.conv2d(x, w, None, 2, pad, 2, w.shape[0])
    if backward:
        out.sum().backward()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--layout", choices=["channels-last", "contiguous"], default="channels-last")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layout = torch.channels_last if args.layout == "channels-last" else torch.contiguous_format
    native = native_bf16("cpu")
    print(f"threads={args.threads} layout={args.layout} native_bf16={'yes' if native else 'no'} batch=64")

    print("depthwise k x k under autocast: bf16 against fp32 (forward + backward, ms)")
    for c, side, k, d, s in DEPTHWISE:
        x = torch.randn(64, c, side, side).to(torch.bfloat16).contiguous(memory_format=layout).requires_grad_()
        w = torch.randn(c, 1, k, k).contiguous(memory_format=layout).requires_grad_()
        a, b = milliseconds({"bf16": partial(depthwise, x, w, s, d, True),
                             "fp32": partial(depthwise, x, w, s, d, False)}, args.repeats)
        print(f"  C={c:3d} {side:2d}x{side:<2d} k={k} dilation={d} stride={s}: bf16 {a:6.1f}  fp32 {b:6.1f}  "
              f"fp32/bf16 {b / a:.2f}")

    print("depthwise k x k, stride 2, dilation 2, fp32: F.conv2d against the undilated form (forward + backward, ms)")
    for c, side, k in STRIDED_DILATED:
        x = torch.randn(64, c, side, side).contiguous(memory_format=layout).requires_grad_()
        w = torch.randn(c, 1, k, k).contiguous(memory_format=layout).requires_grad_()
        if not torch.allclose(strided_dilated(x, w, False), strided_dilated(x, w, True), atol=1e-5):
            raise AssertionError("the undilated form differs from F.conv2d")
        a, b = milliseconds({"direct": partial(strided_dilated, x, w, False, backward=True),
                             "undilated": partial(strided_dilated, x, w, True, backward=True)}, args.repeats)
        print(f"  C={c:3d} {side:2d}x{side:<2d} k={k}: direct {a:6.1f}  undilated {b:6.1f}  ratio {b / a:.2f}")


if __name__ == "__main__":
    main()
