"""Does VINNAS's op strength say which op is better, or how large the branch should be? One VINNAS run, per decision.

VINNAS (Ferianc et al., 2020, Eq. 3) mixes a decision's ops by ``z = softmax(alpha)``. In the chain's residual
mixops every op but ``Identity`` is ``x + branch_k(x)``, so the mixture is ``x + sum_{k != Identity} z_k branch_k(x)``:
``z_Identity`` is also the knob that scales the branches down, and with BatchNorm without affine parameters
(the paper's search setting, Sec. V-A) the branch's own output is normalised to unit scale, so ``alpha`` is the
only place such a scale can be learnt. The selection reads ``alpha``'s SNR as a preference among ops.

This script sets the two readings side by side on the run's super-network (posterior-mean weights with the method's
pruning, the remembered best ``alpha``, BatchNorm on batch statistics as VINNAS searches), by the cross-entropy over
the run's whole architecture half:

1. per decision and op, the loss with that decision one-hot on the op and the others at their relaxed ``z``
   (``VINNAS.alone_scores``, what option ``selection: alone`` selects by);
2. per decision and op other than ``Identity``, the loss with only that op's branch, scaled by ``s``
   (``z = (1 - s) e_Identity + s e_op``; ``s = 0`` is ``Identity``, ``s = 1`` the op alone).

    bayesnas search --config vinnas-chain.json --out run
    python benchmarks/vinnas_branch_scale.py run

Prints the tables and ``identity_but_op_better=<count>/<decisions whose SNR picks Identity>``: decisions where the
selection takes ``Identity`` although some op alone has the lower loss.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from bayesnas import load_run

REFERENCE = "Identity"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a VINNAS run folder (config.json, checkpoint.pt) on a space with "
                                               "Identity among a decision's ops")
    parser.add_argument("--scales", default="0,0.1,0.25,0.5,0.75,1", help="branch scales s, comma-separated")
    parser.add_argument("--batch-size", type=int, default=512, help="images per forward of the scaled branches "
                                                                      "(batch statistics; the selection uses 512)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scales = [float(s) for s in args.scales.split(",")]

    run = load_run(args.run)
    if run.config.method != "vinnas":
        parser.error(f"{args.run} is a {run.config.method} run, not vinnas")
    method = run.trained(data_dir=args.data_dir)
    method.guide.restore_best()
    groups = method.space.groups()
    if not any(REFERENCE in g.options for g in groups.values()):
        parser.error(f"no decision of {args.run}'s {method.space.name} space offers {REFERENCE}")
    relaxed = {g: z.detach() for g, z in method.model.op_weights(method.guide.alpha_means()).items()}
    snr = {g: v.detach() for g, v in method.guide.snr().items()}
    alone_scores = method.alone_scores()

    def loss(z: dict[str, torch.Tensor]) -> float:
        return method.architecture_half_loss(z, args.batch_size)

    def replaced(g: str, d: int, row: torch.Tensor) -> dict[str, torch.Tensor]:
        z = {k: v.clone() for k, v in relaxed.items()}
        z[g][d] = row
        return z

    print(f"run={args.run} space={method.space.name} architecture half={len(method.arch_half)} images; "
          f"relaxed loss {loss(relaxed):.4f}")
    print(f"{'decision':12s} {'op':14s} {'z':>6s} {'SNR':>10s} {'loss, op alone':>15s}  loss with the op's branch "
          f"scaled by s = {', '.join(f'{s:g}' for s in scales)}")
    identity_picked = identity_worse = 0
    for g, group in groups.items():
        if REFERENCE not in group.options:
            continue
        ref = group.options.index(REFERENCE)
        for d in range(group.shape[0]):
            alone = (-alone_scores[g][d]).tolist()  # the selection's own scores (VINNAS.alone_scores)
            for k, op in enumerate(group.options):
                curve = ""
                if k != ref:
                    rows = [(1 - s) * F.one_hot(torch.tensor(ref), group.shape[1]).float()
                            + s * F.one_hot(torch.tensor(k), group.shape[1]).float() for s in scales]
                    curve = " ".join(f"{loss(replaced(g, d, row)):.4f}" for row in rows)
                print(f"{g}[{d}]{'':{max(0, 9 - len(g))}s} {op:14s} {float(relaxed[g][d, k]):6.3f} "
                      f"{float(snr[g][d, k]):10.1f} {alone[k]:15.4f}  {curve}")
            if int(snr[g][d].argmax()) == ref:
                identity_picked += 1
                identity_worse += min(alone) < alone[ref]
    print(f"identity_but_op_better={identity_worse}/{identity_picked}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
