"""Images per second of the stand-alone trainer (``bayesnas train``, retraining, populations) in each mode.

One architecture, drawn uniformly from a space (``--space``, default the DARTS cells at C = 16 with 8 cells, as
GDAS retrains them at small budgets), is built once per mode and trained for ``--epochs`` on the same random
``--images`` CIFAR-shaped images by :func:`bayesnas.training.train_network` (SGD, cosine schedule, validation after
each epoch). Modes: ``fp32``, ``fp32+channels-last``, ``bf16`` (autocast) and ``bf16+channels-last``. The modes
alternate in rounds; the script prints each mode's median images/s (training images only; the validation pass is
included in the time) and its ratio to fp32 in the same process. Whether the CPU computes bfloat16 natively
(``avx512_bf16``/``amx_bf16``) is printed first: without it bfloat16 is emulated and slower than fp32.

    python benchmarks/train_speed.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from bayesnas.precision import native_bf16
from bayesnas.spaces import get_space
from bayesnas.training import TrainRecipe, train_network

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gdas_step import random_bundle  # noqa: E402

MODES = {"fp32": ("fp32", False), "fp32+channels-last": ("fp32", True), "bf16": ("bf16", False),
         "bf16+channels-last": ("bf16", True)}
SPACE = {"in_channels": 3, "channels": 16, "layout": "NNRNNRNN", "states": 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="cells", help="search space of the architecture (default: cells)")
    parser.add_argument("--images", type=int, default=256, help="training images per epoch (default: 256)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32, help="side of the images (8: digits' shape)")
    parser.add_argument("--in-channels", type=int, default=3, help="image channels (1: digits' shape)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of every mode (default: 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn architecture and the data")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    config = {**(SPACE if args.space == "cells" else {}), "in_channels": args.in_channels}
    if args.space == "cells":
        config["image_size"] = args.image_size
    space = get_space(args.space, config)
    genotype = space.random_genotype(torch.Generator().manual_seed(args.seed))
    # --images to train on, a quarter of that to validate
    data = random_bundle(args.images // 4, args.in_channels, args.image_size, seed=args.seed)
    device = torch.device("cpu")

    def run(mode: str) -> float:
        precision, channels_last = MODES[mode]
        torch.manual_seed(args.seed)
        net = space.build(genotype)
        recipe = TrainRecipe(epochs=args.epochs, batch_size=args.batch_size, precision=precision,
                             channels_last=channels_last)
        tic = time.perf_counter()
        train_network(net, data.train, data.val, recipe, seed=args.seed, progress=False)
        return args.epochs * len(data.train) / (time.perf_counter() - tic)

    for mode in modes:  # warm-up: one-time allocations and oneDNN kernel selection
        run(mode)
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        for mode in modes:
            rates[mode].append(run(mode))
    native = native_bf16(device)
    print(f"device=cpu threads={args.threads} native_bf16={'yes' if native else 'no'} space={args.space} "
          f"images={len(data.train)}x{args.in_channels}x{args.image_size}x{args.image_size} "
          f"params={sum(p.numel() for p in space.build(genotype).parameters())} "
          f"batch={args.batch_size} rounds={args.rounds}")
    median = {mode: statistics.median(r) for mode, r in rates.items()}
    for mode in modes:
        ratio = f"  speed-up vs fp32 {median[mode] / median['fp32']:.2f}x" if "fp32" in median else ""
        print(f"{mode:<20}: median {median[mode]:8.1f} images/s{ratio}")


if __name__ == "__main__":
    main()
