"""The cell space as a decision space: decisions and groups, the three architecture forms of its super-network,
genotypes of one op per edge (any number of pairs per state), inherited weights, params, FLOPs, description."""

import json

import pytest
import torch
import torch.nn.functional as F

from bayesnas.spaces import Genotype, GenotypeError, get_space, load_genotype
from bayesnas.spaces.cell import CellSpace, MixedEdge
from bayesnas.spaces.decisions import batch_statistics
from bayesnas.spaces.profile import count_params
from tests.test_cell_networks import CIFAR, DARTS_V2

TINY = {"channels": 4, "layout": "NRN", "states": 2, "ops": "gdas", "image_size": 8}
OPS = ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
       "dil_conv_5x5")
NONE, SKIP, SEP3 = 0, 1, 4


@pytest.fixture
def space():
    return CellSpace.from_dict(TINY)


def _random_indices(space, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(len(space.op_names), (len(space.decisions()),), generator=g).tolist()


def test_one_decision_per_cell_type_and_edge(space):
    names = [d.name for d in space.decisions()]
    edges = ["0<-0", "0<-1", "1<-0", "1<-1", "1<-2"]
    assert names == [f"normal:{e}" for e in edges] + [f"reduce:{e}" for e in edges]
    assert all(d.options == OPS for d in space.decisions())
    groups = space.groups()
    assert list(groups) == ["normal", "reduce"]
    assert groups["normal"].positions == (0, 1, 2, 3, 4) and groups["reduce"].positions == (5, 6, 7, 8, 9)
    assert groups["normal"].shape == groups["reduce"].shape == space.arch_shape() == (5, 8)
    assert space.size() == 8.0 ** 10
    fixed = CellSpace.from_dict({**TINY, "states": 4, "fixed_reduction": True})
    assert list(fixed.groups()) == ["normal"] and fixed.groups()["normal"].shape == (14, 8)
    assert fixed.decisions()[-1].name == "normal:3<-4"


def test_index_form_equals_one_hot_form(space):
    torch.manual_seed(0)
    net = space.supernet(sparse=True).eval()
    x = torch.randn(3, 1, 8, 8)
    indices = _random_indices(space, 1)
    arch = space.index_architecture(indices)
    one_hot = {k: F.one_hot(v, len(OPS)).float() for k, v in arch.items()}
    per_example = {k: v.expand(3, *v.shape) for k, v in one_hot.items()}
    with torch.no_grad():
        by_index = net(x, arch)
        assert torch.equal(by_index, net(x, one_hot))  # the chosen op times 1.0
        torch.testing.assert_close(by_index, net(x, per_example))
    assert space.indices(one_hot) == indices == space.indices(arch)


def test_one_hot_straight_through_reaches_every_logit(space):
    torch.manual_seed(0)
    net = space.supernet(sparse=True).eval()
    E, K = space.arch_shape()
    logits = {k: torch.randn(E, K, requires_grad=True) for k in space.groups()}
    chosen = torch.tensor([SKIP, SEP3, 2, 3, 5])  # no `none`: its zero output would give no gradient
    soft = {k: v.softmax(-1) for k, v in logits.items()}
    hard = {k: F.one_hot(chosen, K).float() + p - p.detach() for k, p in soft.items()}
    out = net(torch.randn(4, 1, 8, 8), hard)
    (out * torch.randn(out.shape)).sum().backward()
    for k in logits:
        assert (logits[k].grad != 0).all(), k
    calls = []
    for k, op in enumerate(net.cells[0].edges[0].ops):
        op.register_forward_hook(lambda module, args, output, k=k: calls.append(k))
    net(torch.randn(4, 1, 8, 8), hard)
    assert calls == [SKIP]  # only the chosen op of the edge runs


def test_weights_form_is_the_weighted_sum_of_every_op():
    torch.manual_seed(0)
    edge = MixedEdge(OPS, 4, 1, affine=False, sparse=False).eval()
    x = torch.randn(3, 4, 6, 6)
    w = torch.softmax(torch.randn(len(OPS)), -1)
    per_example = torch.softmax(torch.randn(3, len(OPS)), -1)
    with torch.no_grad():
        outputs = [op(x) for op in edge.ops]
        torch.testing.assert_close(edge(x, w), sum(w[k] * outputs[k] for k in range(len(OPS))))
        for n in range(3):
            expected = sum(per_example[n, k] * outputs[k][n] for k in range(len(OPS)))
            torch.testing.assert_close(edge(x, per_example)[n], expected)


def test_genotype_of_indices_keeps_every_edge_that_is_not_none(space):
    #           normal: 0<-0  0<-1  1<-0  1<-1  1<-2   reduce: 0<-0  0<-1  1<-0  1<-1  1<-2
    indices = [SEP3, NONE, SKIP, 2, SEP3, NONE, NONE, 3, NONE, NONE]
    genotype = space.genotype_from_indices(indices)
    assert genotype.choices == {
        "normal": [[["sep_conv_3x3", 0]], [["skip_connect", 0], ["max_pool_3x3", 1], ["sep_conv_3x3", 2]]],
        "reduce": [[], [["avg_pool_3x3", 0]]],
    }
    assert space.describe(genotype).splitlines() == [
        "  normal s0 = sep_conv_3x3(c-2)",
        "  normal s1 = skip_connect(c-2) + max_pool_3x3(c-1) + sep_conv_3x3(s0)",
        "  reduce s0 = 0",
        "  reduce s1 = avg_pool_3x3(c-2)",
    ]
    with pytest.raises(ValueError, match="decisions"):
        space.genotype_from_indices(indices[:-1])
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        space.genotype_from_indices([8] + indices[1:])


@pytest.mark.parametrize("bn", ["running", "batch"])
def test_built_network_with_inherited_weights_is_the_single_path_supernet(space, bn):
    torch.manual_seed(0)
    net = space.supernet(sparse=True)
    x = torch.randn(5, 1, 7, 7)  # odd side: an empty reduction state must match ceil(7 / 2)
    with torch.no_grad():
        for seed in range(3):  # running statistics of several paths
            net(torch.randn(8, 1, 7, 7), space.index_architecture(_random_indices(space, 100 + seed)))
    for indices in ([NONE] * 10, [SEP3, NONE, SKIP, 2, SEP3, NONE, NONE, 3, NONE, NONE],
                    *(_random_indices(space, seed) for seed in range(4))):
        built = space.build(space.genotype_from_indices(indices), inherit=net.state_dict())
        arch = space.index_architecture(indices)
        with torch.no_grad():
            if bn == "running":
                expected, got = net.eval()(x, arch), built.eval()(x)
            else:
                with batch_statistics(net), batch_statistics(built):
                    expected, got = net(x, arch), built(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert not torch.equal(got, space.build(space.genotype_from_indices(indices)).eval()(x))


def test_inherited_weights_come_from_the_chosen_op_of_the_edge(space):
    torch.manual_seed(0)
    net = space.supernet()
    genotype = space.genotype({"normal": [[["sep_conv_3x3", 1]], [["dil_conv_3x3", 2]]],
                               "reduce": [[], [["skip_connect", 0]]]})
    built = space.build(genotype, inherit=net.state_dict(), auxiliary=True)
    # normal cell 0, state 1 <- 2 is edge 4, dil_conv_3x3 is op 6; its depthwise conv is layer 1
    assert torch.equal(built.cells[0].ops[1][1].weight, net.cells[0].edges[4].ops[6][1].weight)
    assert torch.equal(built.cells[0].ops[0][1][1].weight, net.cells[0].edges[1].ops[SEP3][1][1].weight)
    assert torch.equal(built.cells[0].pre0[1].weight, net.cells[0].pre0[1].weight)
    affine = CellSpace.from_dict({**TINY, "affine": True})  # a search with affine BN passes its BN on
    with_affine = affine.supernet()
    with torch.no_grad():
        with_affine.cells[0].edges[1].ops[SEP3][1][3].weight.fill_(2.0)  # the BN of the second DilConv block
    built = affine.build(affine.genotype(genotype.choices), inherit=with_affine.state_dict())
    assert torch.equal(built.cells[0].ops[0][1][3].weight, torch.full((4,), 2.0))
    bigger = CellSpace.from_dict({**TINY, "eval_channels": 8})
    with pytest.raises(GenotypeError, match="eval_channels"):
        bigger.build(bigger.genotype(genotype.choices), inherit=net.state_dict())


def test_validation_accepts_any_number_of_distinct_inputs(space):
    ok = {"normal": [[], [["skip_connect", 0], ["sep_conv_3x3", 1], ["max_pool_3x3", 2]]],
          "reduce": [[["sep_conv_3x3", 1]], []]}
    space.genotype(ok)
    for choices, match in [
        ({**ok, "normal": [[["skip_connect", 0], ["sep_conv_3x3", 0]], []]}, r"normal cell, state 0: each input"),
        ({**ok, "normal": [[["skip_connect", 2]], []]}, r"state 0: input must be an integer in \[0, 2\)"),
        ({**ok, "normal": [[["conv_9x9", 0]], []]}, "unknown operation 'conv_9x9'"),
        ({**ok, "normal": [[["skip_connect", 0]]]}, "expected 2 states"),
        ({**ok, "normal": ["skip_connect", []]}, "state 0: expected a list of"),
        ({**ok, "normal": [[["skip_connect"]], []]}, r"expected \[op, input\]"),
        ({"normal": ok["normal"]}, "cell type"),
    ]:
        with pytest.raises(GenotypeError, match=match):
            space.validate(Genotype("cells", space.config.to_dict(), choices))


def test_params_and_flops_count_the_kept_ops(space):
    empty = space.genotype({"normal": [[], []], "reduce": [[], []]})
    skip = space.genotype({"normal": [[["skip_connect", 1]], []], "reduce": [[], []]})
    sep = space.genotype({"normal": [[["skip_connect", 1]], [["sep_conv_3x3", 0]]], "reduce": [[], []]})
    # the normal cells of NRN: C = 4 channels on the 8x8 input (stem stride 1), then 2C on 4x4 after the reduction
    cells = [(4, 8), (8, 4)]
    assert space.params(skip) == space.params(empty)  # an identity
    # sep_conv_3x3: twice (depthwise 3x3, pointwise 1x1, affine BN)
    assert space.params(sep) - space.params(skip) == sum(2 * (9 * c + c * c + 2 * c) for c, _ in cells) == 424
    assert space.flops(skip) == space.flops(empty)
    assert space.flops(sep) - space.flops(skip) == sum(2 * (9 * c + c * c) * side * side for c, side in cells)
    net = space.build(empty).eval()
    assert net(torch.randn(2, 1, 7, 7)).shape == (2, 10)  # zero states of reduction cells match in shape
    assert space.params(sep) == count_params(space.build(sep))


def test_random_genotype_draws_as_before():
    """The random-search baseline's draws for a seeded generator, as the space drew them before it became a
    decision space: two distinct inputs per state, ops other than ``none``."""
    space = CellSpace.from_dict({"channels": 4, "layout": "NRN", "states": 3})
    genotype = space.random_genotype(torch.Generator().manual_seed(5))
    assert genotype.choices == {
        "normal": [[["dil_conv_3x3", 0], ["avg_pool_3x3", 1]], [["max_pool_3x3", 0], ["max_pool_3x3", 1]],
                   [["skip_connect", 0], ["dil_conv_5x5", 1]]],
        "reduce": [[["avg_pool_3x3", 0], ["sep_conv_3x3", 1]], [["dil_conv_3x3", 0], ["dil_conv_5x5", 2]],
                   [["skip_connect", 0], ["sep_conv_5x5", 1]]]}
    space.validate(genotype)


def test_derive_keeps_the_two_strongest_inputs_per_state(space):
    strengths = {k: torch.zeros(5, 8) for k in ("normal", "reduce")}
    strengths["normal"][:, NONE] = 10.0  # never chosen
    strengths["normal"][0, SEP3] = 1.0
    strengths["normal"][1, SKIP] = 2.0
    strengths["normal"][2, 5] = 3.0  # 1 <- 0
    strengths["normal"][4, 6] = 4.0  # 1 <- 2
    strengths["normal"][3, 7] = 0.5  # 1 <- 1, the weakest of state 1
    strengths["reduce"][:, 2] = 1.0
    genotype = space.derive(strengths)
    assert genotype.choices["normal"] == [[["sep_conv_3x3", 0], ["skip_connect", 1]],
                                          [["sep_conv_5x5", 0], ["dil_conv_3x3", 2]]]
    assert genotype.choices["reduce"] == [[["max_pool_3x3", 0], ["max_pool_3x3", 1]],
                                          [["max_pool_3x3", 0], ["max_pool_3x3", 1]]]


def test_published_two_pair_cells_are_unchanged(tmp_path):
    """DARTS V2 on CIFAR-10 (Liu et al., ICLR 2019): the size and MACs the space gave before any number of pairs
    per state was allowed, from a genotype file written before ``image_size`` existed (read as 32)."""
    space = CellSpace.from_dict(CIFAR)
    config = {k: v for k, v in space.config.to_dict().items() if k != "image_size"}
    (tmp_path / "darts.json").write_text(json.dumps({"space": "cells", "config": config, "choices": DARTS_V2}))
    genotype = load_genotype(tmp_path / "darts.json")
    space = get_space("cells", genotype.config)
    assert space.config.image_size == 32
    assert space.params(genotype) == 3_350_494
    assert space.flops(genotype) == 528_359_040
    assert "normal s3 = skip_connect(c-2) + dil_conv_3x3(s0)" in space.describe(genotype)
