"""Does GDAS's straight-through signal point where the loss does? One GDAS run's super-network, per decision.

GDAS (Dong & Yang, CVPR 2019, Eq. 5-7) moves the logits of a decision with ``dL/dh_k``, the derivative of the loss
at the one-hot gate's forward value ``h_k = 1`` of the sampled op ``k``; in the chain's residual mixops the gate
scales the branch, ``x + h_k branch_k(x)``, so an ``Identity`` draw (no branch) gives no signal at all. This script
sets that derivative beside what choosing the op does to the same loss: for every decision and op, the
cross-entropy on a mini-batch of the run's architecture half with that op and the other decisions drawn uniformly
(the same batch and draws for every op of a decision; BatchNorm on batch statistics, as the architecture step
sees it), minus the loss with ``Identity`` there. An op that lowers the loss with ``dL/dh > 0`` (the derivative
says "shrink this branch") loses probability to ``Identity`` under GDAS's update although it is the better choice.

    bayesnas search --config gdas-chain.json --out run   # e.g. stopped right after the weight warm-up
    python benchmarks/gdas_gate_signal.py run --draws 24

Prints one row per (decision, op): the loss difference against ``Identity`` and ``dL/dh``, each as mean +- standard
error over the draws, then ``better_but_shrink=<count>/<ops that lower the loss>``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from bayesnas.config import SearchConfig
from bayesnas.infer import config_data, load_trained

REFERENCE = "Identity"


def mean_se(values: list[float]) -> str:
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{statistics.fmean(values):+.4f} +- {se:.4f}"


def loss_and_slope(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, groups: dict,
                   others: dict[str, torch.Tensor], group: str, decision: int, op: int,
                   seed: int) -> tuple[float, float]:
    """Cross-entropy of ``net`` with the architecture ``others`` but ``op`` at ``group[decision]``, and its derivative
    in that op's gate at 1; ``seed``: the op-internal randomness, the same for every op of a decision."""
    torch.manual_seed(seed)
    arch = {g: F.one_hot(c, groups[g].shape[1]).float() for g, c in others.items()}
    arch[group][decision] = F.one_hot(torch.tensor(op), groups[group].shape[1]).float()
    arch[group].requires_grad_()
    loss = F.cross_entropy(net(x, arch), y)
    (grad,) = torch.autograd.grad(loss, arch[group])
    return loss.item(), float(grad[decision, op])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a GDAS run folder (config.json, checkpoint.pt) on a space with "
                                               "Identity among a decision's ops")
    parser.add_argument("--draws", type=int, default=24, help="mini-batches, each with its own draw of the others")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    config = SearchConfig.from_dict(json.loads((args.run / "config.json").read_text()), str(args.run))
    if config.method != "gdas":
        parser.error(f"{args.run} is a {config.method} run, not gdas")
    device = torch.device("cpu")
    data = config_data(config, device, args.data_dir)
    method = load_trained(config, args.run, data, device)
    groups = method.space.groups()
    if not any(REFERENCE in g.options for g in groups.values()):
        parser.error(f"no decision of {args.run}'s {method.space.name} space offers {REFERENCE}")
    net = method.model.net.train()  # batch statistics, as in the architecture step
    _, arch_half = data.halves(config.seed)
    generator = torch.Generator().manual_seed(args.seed)
    probabilities = method.guide.probabilities()

    loss_gap: dict[tuple[str, int, int], list[float]] = {}
    signal: dict[tuple[str, int, int], list[float]] = {}
    for draw in range(args.draws):
        index = torch.randint(len(arch_half), (args.batch_size,), generator=generator)
        x, y = arch_half.x[index], arch_half.y[index]
        others = {g: torch.randint(group.shape[1], (group.shape[0],), generator=generator)
                  for g, group in groups.items()}
        for g, group in groups.items():
            if REFERENCE not in group.options:
                continue
            ref = group.options.index(REFERENCE)
            for d in range(group.shape[0]):
                losses, slopes = zip(*(loss_and_slope(net, x, y, groups, others, g, d, k, args.seed + draw)
                                       for k in range(group.shape[1])), strict=True)
                for k, (loss, slope) in enumerate(zip(losses, slopes, strict=True)):
                    loss_gap.setdefault((g, d, k), []).append(loss - losses[ref])
                    signal.setdefault((g, d, k), []).append(slope)

    print(f"run={args.run} space={method.space.name} draws={args.draws} batch={args.batch_size} "
          f"architecture half={len(arch_half)} images")
    print(f"{'decision':12s} {'op':14s} {'p(op)':>6s} {'loss - loss(Identity)':>22s} {'dL/dh at h = 1':>20s}")
    better = better_shrink = 0
    for (g, d, k), gaps in loss_gap.items():
        op = groups[g].options[k]
        print(f"{g}[{d}]{'':{max(0, 9 - len(g))}s} {op:14s} {float(probabilities[g][d, k]):6.3f} "
              f"{mean_se(gaps):>22s} {mean_se(signal[(g, d, k)]):>20s}")
        if op != REFERENCE and statistics.fmean(gaps) < 0:
            better += 1
            better_shrink += statistics.fmean(signal[(g, d, k)]) > 0
    print(f"better_but_shrink={better_shrink}/{better}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
