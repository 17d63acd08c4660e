"""The search loop's and the trainer's optimisers: torch's update, over all tensors at once."""

import pytest
import torch

from bayesnas.optimizers import build_optimizer, can_fuse

SETTINGS = {"sgd": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 3e-4},
            "adam": {"lr": 0.01, "betas": (0.5, 0.999), "weight_decay": 1e-3}}


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_same_update_as_torch_per_tensor_loop(kind):
    """Ten steps on three tensors, one of which gets its first gradient only at step 5 (a weight-sharing op sampled
    late), equal the per-tensor loop's (``foreach=False``) to float rounding."""
    torch.manual_seed(0)
    ours = [torch.randn(6, 5, requires_grad=True) for _ in range(3)]
    loop = [p.detach().clone().requires_grad_() for p in ours]
    a = build_optimizer(kind, [{"params": ours[:2]}, {"params": ours[2:], "weight_decay": 0.0}], **SETTINGS[kind])
    b = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[kind](
        [{"params": loop[:2]}, {"params": loop[2:], "weight_decay": 0.0}], foreach=False, **SETTINGS[kind])
    for step in range(10):
        for i, (p, q) in enumerate(zip(ours, loop, strict=True)):
            g = torch.randn_like(p) if i < 2 or step >= 5 else None
            p.grad, q.grad = g, None if g is None else g.clone()
        a.step()
        b.step()
    for p, q in zip(ours, loop, strict=True):
        torch.testing.assert_close(p, q)
    assert a.defaults["fused" if kind == "adam" else "foreach"] is True


def test_fused_adam_only_where_every_tensor_allows_it():
    assert can_fuse([{"params": [torch.zeros(2, requires_grad=True)]}])
    assert not can_fuse([{"params": [torch.zeros(2, requires_grad=True), torch.zeros(2, dtype=torch.long)]}])
    assert not can_fuse([{"params": []}])
    assert build_optimizer("adam", [torch.zeros(3, requires_grad=True)], lr=0.1).defaults["fused"]
    assert build_optimizer("sgd", [torch.zeros(3, requires_grad=True)], lr=0.1).defaults["foreach"]
