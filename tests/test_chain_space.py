"""The chain space as a decision space: decisions and groups, the three architecture forms, genotypes."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from bayesnas.spaces import get_space, latency
from bayesnas.spaces.ops import SearchConv2d

# stage 0 keeps the stem's width and resolution (both mixops offer Identity); stage 1's first layer halves the
# resolution and doubles the width (a transition: no Identity)
TINY = {"in_channels": 1, "num_classes": 5, "image_size": 8, "stem_channels": 4, "stem_stride": 1,
        "first_block_channels": 0, "widths": [4, 8], "depths": [2, 2], "strides": [1, 2], "head_channels": 0,
        "ops": ["MBConv_1_3", "MBConv_3_3", "Identity"]}
OPS = ("MBConv_1_3", "MBConv_3_3", "Identity")


@pytest.fixture
def space():
    return get_space("chain", TINY)


def _random_indices(space, generator, batch=None):
    """``{group: long (n_g,)}`` (or ``(batch, n_g)``) of uniformly random option indices."""
    shape = lambda g: (g.shape[0],) if batch is None else (batch, g.shape[0])  # noqa: E731
    return {name: torch.randint(g.shape[1], shape(g), generator=generator) for name, g in space.groups().items()}


def test_decisions_are_the_mixops_in_order_grouped_by_op_set(space):
    decisions = space.decisions()
    assert [d.name for d in decisions] == ["s0.l0", "s0.l1", "s1.l0", "s1.l1"]
    assert [d.group for d in decisions] == ["mixop", "mixop", "transition", "mixop"]
    groups = space.groups()
    assert list(groups) == ["mixop", "transition"]
    assert groups["mixop"].positions == (0, 1, 3) and groups["mixop"].options == OPS
    assert groups["transition"].positions == (2,) and groups["transition"].options == OPS[:2]
    assert space.num_options() == [3, 3, 2, 3] and space.size() == 3 * 3 * 2 * 3

    fixed = get_space("chain", {**TINY, "transition_op": "MBConv_1_3"})  # the transition is no decision
    assert [d.name for d in fixed.decisions()] == ["s0.l0", "s0.l1", "s1.l1"]
    assert list(fixed.groups()) == ["mixop"] and fixed.groups()["mixop"].shape == (3, 3)

    full = get_space("chain", {})  # the paper's 21 mixops: every stage's first layer changes the shape
    transitions = (0, 4, 8, 12, 16, 20)
    assert full.groups()["transition"].positions == transitions
    assert full.num_options() == [9 if i in transitions else 10 for i in range(21)]
    assert full.size() == pytest.approx(10.0 ** 15 * 9.0 ** 6)


def test_index_form_equals_the_sparse_one_hot_form(space):
    torch.manual_seed(0)
    net = space.supernet(sparse=True).eval()
    x = torch.randn(6, 1, 8, 8)
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        index = _random_indices(space, generator)
        one_hot = {g: F.one_hot(v, space.groups()[g].shape[1]).float() for g, v in index.items()}
        torch.testing.assert_close(net(x, one_hot), net(x, index), rtol=0, atol=0)


def test_straight_through_one_hot_passes_the_gradient_to_every_logit(space):
    torch.manual_seed(0)
    net = space.supernet(sparse=True)
    x = torch.randn(4, 1, 8, 8)
    logits = {name: torch.randn(g.shape, requires_grad=True) for name, g in space.groups().items()}
    arch = {}
    for name, a in logits.items():
        soft = a.softmax(-1)
        hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).float()
        arch[name] = hard - soft.detach() + soft  # GDAS's straight-through estimator
    ran = []
    hooks = [op.body.register_forward_hook(lambda m, i, o, name=name: ran.append(name))
             for block in net.blocks for name, op in block.ops.items()]
    net(x, arch).square().sum().backward()
    for h in hooks:
        h.remove()
    chosen = [decision.options[int(arch[group][row].argmax())] for decision, (group, row)
              in zip(space.decisions(), _rows(space), strict=True)]
    assert ran == [op for op in chosen if op != "Identity"]  # only the chosen op of each decision ran (an
    # Identity behind the shortcut adds nothing and runs nothing)
    for name, a in logits.items():
        assert a.grad is not None and bool((a.grad != 0).all()), name


def _rows(space):
    """``(group, row)`` of every decision, in the space's order."""
    rows = {p: (name, r) for name, g in space.groups().items() for r, p in enumerate(g.positions)}
    return [rows[i] for i in range(len(space.decisions()))]


def test_a_gate_before_a_normalised_layer_gets_its_branch_gradient(space):
    """s0.l1 (residual) feeds s1.l0 (convolution + BatchNorm). Gating the whole output, h (x + branch(x)), the
    BatchNorm undoes h's scale and the gate's gradient vanishes (it was ~1e-9); with the shortcut outside the gate
    (ProxylessNAS) it is dL/dh = <dL/dy, branch(x)>, times softmax's Jacobian for the logits."""
    torch.manual_seed(0)
    net = space.supernet(sparse=True)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(5, (8,))
    index = {"mixop": torch.tensor([2, 1, 2]), "transition": torch.tensor([0])}  # s0.l1 = MBConv_3_3
    logits = {g: torch.zeros(len(v), space.groups()[g].shape[1], requires_grad=True) for g, v in index.items()}
    arch = {g: F.one_hot(index[g], a.shape[1]).float() - a.softmax(-1).detach() + a.softmax(-1)
            for g, a in logits.items()}
    seen = {}
    block = net.blocks[1]
    block.register_forward_hook(lambda m, i, out: seen.update(x=i[0].detach(), y=out))
    loss = F.cross_entropy(net(x, arch), y)
    seen["y"].retain_grad()
    loss.backward()
    with torch.no_grad():
        branch = block.ops["MBConv_3_3"].branch(seen["x"])  # batch statistics: the same value as in the forward
    dh = float((seen["y"].grad * branch).sum())
    soft = torch.full((3,), 1 / 3)
    expected = dh * soft[1] * (F.one_hot(torch.tensor(1), 3) - soft)
    torch.testing.assert_close(logits["mixop"].grad[1], expected, rtol=1e-4, atol=1e-9)
    assert abs(dh) > 1e-4


def test_weights_form_is_the_weighted_sum_of_every_op(space):
    torch.manual_seed(0)
    net = space.supernet(sparse=False).eval()
    x = torch.randn(3, 1, 8, 8)
    weights = {name: torch.rand(g.shape) for name, g in space.groups().items()}
    rows = {p: (name, r) for name, g in space.groups().items() for r, p in enumerate(g.positions)}
    with torch.no_grad():
        h = net.first(net.stem(x))
        for i, (block, decision) in enumerate(zip(net.blocks, space.decisions(), strict=True)):
            name, r = rows[i]
            h = sum(weights[name][r, k] * block.ops[op](h) for k, op in enumerate(decision.options))
        expected = net.classifier(net.head(h))
        torch.testing.assert_close(net(x, weights), expected)
        # one weight vector per example: each example as if alone
        per_example = {name: torch.rand(3, *g.shape) for name, g in space.groups().items()}
        rows = [net(x[b:b + 1], {n: v[b] for n, v in per_example.items()}) for b in range(3)]
        torch.testing.assert_close(net(x, per_example), torch.cat(rows))


def test_per_example_one_hot_equals_each_example_run_on_its_index(space):
    torch.manual_seed(0)
    net = space.supernet(sparse=True).eval()
    x = torch.randn(8, 1, 8, 8)
    index = _random_indices(space, torch.Generator().manual_seed(2), batch=8)
    one_hot = {g: F.one_hot(v, space.groups()[g].shape[1]).float() for g, v in index.items()}
    alone = torch.cat([net(x[b:b + 1], {g: v[b] for g, v in index.items()}) for b in range(8)])
    torch.testing.assert_close(net(x, one_hot), alone)


def test_derive_takes_the_strongest_op_of_every_decision(space):
    strengths = {"mixop": torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.0, 0.1, 0.9]]),
                 "transition": torch.tensor([[0.4, 0.6]])}
    assert space.derive(strengths).choices["ops"] == ["MBConv_3_3", "MBConv_1_3", "MBConv_3_3", "Identity"]


def test_random_genotype_is_reproducible_and_uniform(space):
    first = [space.random_genotype(torch.Generator().manual_seed(3)) for _ in range(2)]
    assert first[0] == first[1]
    generator = torch.Generator().manual_seed(4)
    draws = [space.indices(space.random_genotype(generator)) for _ in range(600)]
    for i, n in enumerate(space.num_options()):
        counts = torch.bincount(torch.tensor([d[i] for d in draws]), minlength=n)
        assert stats.chisquare(counts.numpy()).pvalue > 1e-3, (i, counts)
    assert len({tuple(d) for d in draws}) == space.size()  # 600 draws meet all 54 architectures


def test_genotype_from_indices_round_trips(space):
    decisions = space.decisions()
    for indices in itertools.product(*(range(n) for n in space.num_options())):
        genotype = space.genotype_from_indices(indices)
        assert genotype.choices["ops"] == [d.options[i] for d, i in zip(decisions, indices, strict=True)]
        assert space.indices(genotype) == list(indices)
        assert space.indices(space.index_architecture(indices)) == list(indices)
    with pytest.raises(ValueError, match="3 choices, the chain has 4 mixops"):
        space.genotype_from_indices([0, 0, 0])
    with pytest.raises(ValueError, match=r"s1.l0: op index 2 is not in 0..1"):
        space.genotype_from_indices([0, 0, 2, 0])


@pytest.mark.parametrize("affine", [True, False])
def test_built_network_with_inherited_weights_computes_the_supernet_path(space, affine):
    space = get_space("chain", {**TINY, "affine": affine})
    torch.manual_seed(0)
    net = space.supernet()
    x = torch.randn(16, 1, 8, 8)
    for _ in range(2):  # move the BatchNorm running statistics away from their initial values
        net(x, space.index_architecture([1, 0, 1, 2]))
    net.eval()
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.affine == affine for m in norms)
    for indices in ([1, 0, 1, 2], [2, 1, 0, 0]):
        built = space.build(space.genotype_from_indices(indices), inherit=net.state_dict()).eval()
        assert all(m.affine for m in built.modules() if isinstance(m, torch.nn.BatchNorm2d))
        torch.testing.assert_close(built(x), net(x, space.index_architecture(indices)))
        with pytest.raises(ValueError, match="takes no architecture"):
            built(x, space.index_architecture(indices))


def test_convolutions_are_search_convolutions_and_costs_follow_the_decisions(space):
    torch.manual_seed(0)
    net = space.supernet()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(isinstance(m, SearchConv2d) and m.bias is None for m in convs)
    x = torch.randn(2, 4, 8, 8)
    conv = net.blocks[0].ops["MBConv_3_3"].body[0]  # outside any Pyro handler: the plain convolution
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight), rtol=0, atol=0)
    genotype = space.genotype_from_indices([1, 2, 0, 1])
    assert space.params(genotype) == sum(p.numel() for p in space.build(genotype).parameters())
    table = latency.measure(space, torch.device("cpu"), batch_size=2, runs=1, warmup=0)
    costs = table.costs(space)
    assert [len(row) for row in costs] == space.num_options()
    assert costs[2] == [table.ms[2]["MBConv_1_3"], table.ms[2]["MBConv_3_3"]]  # the transition: no Identity
    assert costs[3] == [table.ms[3][op] for op in OPS]
    assert table.flops(genotype.choices["ops"]) == space.flops(genotype)
    assert "s1.l0" in space.describe(genotype) and "MBConv_1_3" in space.describe(genotype)
