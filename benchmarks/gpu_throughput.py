"""Images per second of one search step of every method, fp32 against bf16, channels-last and torch.compile.

Each method runs its CIFAR preset (``pgnas-cifar10``, ``vinnas-cifar10``, ``gdas-xautodl``, ``pcnas-small``) on
random CIFAR-shaped batches; one step is the search loop's own update (``bayesnas.infer._update``: the method's
loss under the precision context, backward, clipping, optimiser step) of the method's first phase. Modes:

- ``fp32``: the default;
- ``bf16``: ``--precision bf16`` (autocast; KL terms and the loss stay fp32);
- ``bf16+cl``: and ``--channels-last``;
- ``bf16+cl+compile``: and ``--compile`` (``torch.compile`` of the super-network's forward, eager fallback).

xautodl's GDAS step (the authors' code, ``pip install --no-deps xautodl==1.0.0``) runs on the same device and
batch, alternating with ours on the same pinned architecture (see ``gdas_vs_xautodl.py``). Prints a table and
``ratio=<ours/xautodl>`` of the step times for GDAS in fp32, and ``ratio_best=`` for our fastest mode.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gdas_step import pin_logits, random_bundle, time_alternating  # noqa: E402
from gdas_vs_xautodl import OPS, xautodl_weight_step  # noqa: E402

from bayesnas.config import preset  # noqa: E402
from bayesnas.infer import _update, compile_networks  # noqa: E402
from bayesnas.methods import get_method  # noqa: E402
from bayesnas.precision import channels_last  # noqa: E402

PRESETS = {"pgnas": "pgnas-cifar10", "vinnas": "vinnas-cifar10", "gdas": "gdas-xautodl", "pcnas": "pcnas-small"}
MODES = {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"},
         "bf16+cl": {"precision": "bf16", "channels_last": True},
         "bf16+cl+compile": {"precision": "bf16", "channels_last": True, "compile": True}}
# GDAS with the layout of xautodl's search network, as in gdas_vs_xautodl.py
GDAS_SPACE = {"in_channels": 3, "channels": 16, "layout": "NNRNRN", "states": 4, "ops": ",".join(OPS),
              "stem_multiplier": 3, "affine": False}


def search_step(method_name: str, mode: dict, batch: int, device: torch.device, small: bool):
    """One update of the method's first phase, as the search loop runs it, and the method."""
    overrides = {"batch_size": batch, "shift": 0, "flip": False, **mode}
    if method_name == "gdas":
        overrides["space"] = GDAS_SPACE
    if method_name == "pcnas":
        overrides["options"] = {"latency_ms": None, "warmup_epochs": None}
    if small:  # a CPU smoke run: the smallest widths
        overrides["space"] = {**overrides.get("space", {}), **SMALL[method_name]}
    config = preset(PRESETS[method_name]).merged(overrides)
    data = random_bundle(batch).to(device)
    method = get_method(method_name)(config, data, device)
    for module in method.modules().values():
        channels_last(module, method.channels_last)
    if config.compile:
        compile_networks(method.networks())
    phase = method.phases()[0]
    optimizer, _ = phase.make_optimizer(config.epochs)
    split = {"train": data.train, "weights": data.train, "architecture": data.train}[phase.split]
    index = torch.arange(batch, device=device)

    def step() -> None:
        _update(phase, optimizer, split, index, config, (method.precision, method.channels_last))

    return step, method


SMALL = {"pgnas": {"widths": [16, 32, 64], "depths": [1, 1, 1], "stem_channels": 16},
         "vinnas": {"channels": 4, "layout": "NRN"}, "gdas": {"channels": 4},
         "pcnas": {"widths": [16, 24, 32, 40, 48, 64], "depths": [1, 1, 1, 1, 1, 1], "head_channels": 64}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", default="64,256")
    parser.add_argument("--methods", default="pgnas,vinnas,gdas,pcnas")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--small", action="store_true", help="tiny widths, for a smoke run on a CPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    ratio = ratio_best = None
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        for name in args.methods.split(","):
            times = {}
            for mode in args.modes.split(","):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    step, method = search_step(name, MODES[mode], batch, device, args.small)
                    times[mode] = time_alternating({mode: step}, args.repeats, args.warmup, device)[mode]
                fell_back = any("torch.compile failed" in str(w.message) for w in caught)
                rows.append((name, batch, mode + (" (eager fallback)" if fell_back else ""), times[mode]))
            if name == "gdas" and not args.small:
                x = torch.randn(batch, 3, 32, 32, device=device)
                y = torch.randint(0, 10, (batch,), device=device)
                theirs, net = xautodl_weight_step(batch, device, x, y)
                ours, method = search_step("gdas", MODES["fp32"], batch, device, False)
                generator = torch.Generator().manual_seed(1)

                def same_architecture(method=method, net=net, generator=generator) -> None:
                    pairs = (("normal", net.arch_normal_parameters), ("reduce", net.arch_reduce_parameters))
                    for kind, logits in pairs:
                        choice = torch.randint(0, len(OPS), (logits.shape[0],), generator=generator)
                        pin_logits(method.guide.logits[kind], choice)
                        pin_logits(logits, choice)

                median = time_alternating({"ours": ours, "xautodl": theirs}, args.repeats, args.warmup, device,
                                          before_round=same_architecture)
                rows.append(("gdas (xautodl)", batch, "fp32", median["xautodl"]))
                if batch == int(args.batch_sizes.split(",")[0]):
                    ratio = median["ours"] / median["xautodl"]
                    ratio_best = min(times.values()) / median["xautodl"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={device} ({name}) torch={torch.__version__}")
    print(f"{'method':<16} {'batch':>5}  {'mode':<32} {'s/step':>9} {'images/s':>10}")
    for method_name, batch, mode, seconds in rows:
        print(f"{method_name:<16} {batch:>5}  {mode:<32} {seconds:>9.4f} {batch / seconds:>10.1f}")
    if ratio is not None:
        print(f"ratio_best={ratio_best:.3f}  (our fastest mode over xautodl fp32)")
        print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
