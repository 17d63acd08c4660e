"""Discrete DARTS-cell networks: parameter counts of published cells, the DARTS auxiliary head and its place."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesnas.spaces.cell import CellNetwork, CellSpace
from bayesnas.spaces.ops import AuxiliaryHead
from bayesnas.spaces.profile import count_params
from bayesnas.training import TrainRecipe, train_network


def _states(pairs):
    """Flat (op, input) list, two per state, as the authors' ``Genotype`` prints them -> the space's format."""
    return [[list(pairs[2 * j]), list(pairs[2 * j + 1])] for j in range(len(pairs) // 2)]


# DARTS (second order), Liu et al., ICLR 2019, Fig. 4-5 (authors' genotypes.py ``DARTS_V2``)
DARTS_V2 = {
    "normal": _states([("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                       ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)]),
    "reduce": _states([("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                       ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)]),
}
# GDAS, Dong & Yang, CVPR 2019, Fig. 4 top and middle-left (xautodl ``GDAS_V1``)
GDAS_V1 = {
    "normal": _states([("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("sep_conv_5x5", 2),
                       ("sep_conv_3x3", 3), ("skip_connect", 0), ("sep_conv_5x5", 4), ("sep_conv_3x3", 3)]),
    "reduce": _states([("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("sep_conv_5x5", 2), ("sep_conv_5x5", 1),
                       ("dil_conv_5x5", 2), ("sep_conv_3x3", 1), ("sep_conv_5x5", 0), ("sep_conv_5x5", 1)]),
}
# GDAS (FRC): the normal cell searched with the fixed reduction cell, Fig. 4 middle-right (the authors'
# NAS-Projects genotypes.py ``GDAS_F1``)
GDAS_FRC_NORMAL = _states([("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("sep_conv_3x3", 2),
                           ("skip_connect", 0), ("sep_conv_3x3", 2), ("skip_connect", 0), ("sep_conv_3x3", 2)])

CIFAR = {"in_channels": 3, "num_classes": 10, "channels": 36, "layout": "6NR6NR6N", "states": 4}
HEAD_576 = (576 * 128 + 2 * 128) + (128 * 768 * 2 * 2 + 2 * 768) + (768 * 10 + 10)  # conv+BN, conv+BN, linear


def cifar_network(normal, reduce=None, auxiliary=False):
    space = CellSpace.from_dict({**CIFAR, "fixed_reduction": reduce is None})
    choices = {"normal": normal} if reduce is None else {"normal": normal, "reduce": reduce}
    return space.build(space.genotype(choices), auxiliary=auxiliary)


def test_auxiliary_head_has_the_darts_layers_and_size():
    head = AuxiliaryHead(576, 10)
    assert HEAD_576 == 476_426
    assert count_params(head, auxiliary=True) == HEAD_576
    assert count_params(head) == 0  # a head alone is all auxiliary
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.bias) for c in convs] == [
        (576, 128, (1, 1), None), (128, 768, (2, 2), None)]
    assert [m.num_features for m in head.modules() if isinstance(m, nn.BatchNorm2d)] == [128, 768]


def test_auxiliary_pooling_is_5x5_stride_3_on_8x8_and_adaptive_on_small_maps():
    head = AuxiliaryHead(4, 10)
    x = torch.randn(2, 4, 8, 8)
    # 5x5 windows at offsets 0 and 3 (no padding, so count_include_pad never matters): 2x2
    expected = torch.stack([torch.stack([x[..., r:r + 5, c:c + 5].mean((-2, -1)) for c in (0, 3)], -1)
                            for r in (0, 3)], -2)
    torch.testing.assert_close(head.pool(x), expected)
    assert AuxiliaryHead.exact_pooling(8, 8) and AuxiliaryHead.exact_pooling(10, 10)
    assert not AuxiliaryHead.exact_pooling(4, 4) and not AuxiliaryHead.exact_pooling(11, 11)
    # a 4x4 map (8x8 digits after one reduction): mean of each 2x2 quarter
    small = torch.randn(2, 4, 4, 4)
    quarters = small.view(2, 4, 2, 2, 2, 2).mean((3, 5))
    torch.testing.assert_close(head.pool(small), quarters)
    # the whole head on the 8x8 map, layer by layer
    head.eval()
    h = F.avg_pool2d(torch.relu(x), 5, 3, 0, count_include_pad=False)
    for layer in head.features:
        h = layer(h)
    torch.testing.assert_close(head(x), head.classifier(h.flatten(1)))
    assert head(torch.randn(3, 4, 4, 4)).shape == head(torch.randn(3, 4, 2, 2)).shape == (3, 10)


@pytest.mark.parametrize("name,normal,reduce,paper_millions", [
    ("DARTS V2 (Liu et al. 2019, Table 1)", DARTS_V2["normal"], DARTS_V2["reduce"], 3.3),
    ("GDAS V1 (Dong & Yang 2019, Table 1)", GDAS_V1["normal"], GDAS_V1["reduce"], 3.4),
    ("GDAS (FRC) = FRC-N + FIX-R (Table 1, Table 5)", GDAS_FRC_NORMAL, None, 2.5),
    ("GDAS-N + FIX-R (Table 5)", GDAS_V1["normal"], None, 3.0),
    ("FRC-N + GDAS-R (Table 5)", GDAS_FRC_NORMAL, GDAS_V1["reduce"], 2.9),
])
def test_published_cells_have_the_published_size(name, normal, reduce, paper_millions):
    """C = 36, 20 cells, 32x32x3, 10 classes. The papers print sizes rounded to 0.1 M and leave out the
    auxiliary head; our network also ends in BN + ReLU before pooling (2 x 576 parameters more than DARTS's)."""
    net = cifar_network(normal, reduce, auxiliary=True)
    params = count_params(net)
    final_bn = count_params(net.lastact)
    assert final_bn == 2 * 576
    assert count_params(net, auxiliary=True) == params + HEAD_576
    assert abs((params - final_bn) / 1e6 - paper_millions) <= 0.05, (name, params)  # rounds to the paper's
    if paper_millions >= 3.3:
        assert abs((params - final_bn) / (paper_millions * 1e6) - 1) < 0.015, (name, params)
    assert net.aux_head is not None and net.cells[net.aux_index].kind == "reduce" and net.aux_index == 13


def test_auxiliary_head_reads_the_second_reduction_cell_of_the_cifar_network():
    torch.manual_seed(0)
    net = cifar_network(DARTS_V2["normal"], DARTS_V2["reduce"], auxiliary=True)
    assert CellNetwork.auxiliary_index(20) == 13 == [i for i, c in enumerate(net.cells) if c.kind == "reduce"][1]
    seen = {}
    net.cells[13].register_forward_hook(lambda module, args, out: seen.setdefault("features", out))
    net.train()
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert seen["features"].shape == (2, 576, 8, 8)
    assert AuxiliaryHead.exact_pooling(8, 8)
    torch.testing.assert_close(aux, net.aux_head(seen["features"]))
    assert logits.shape == aux.shape == (2, 10)
    assert net.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)  # no head at test time


def test_small_networks_never_put_the_head_on_the_last_cell():
    assert [CellNetwork.auxiliary_index(n) for n in (3, 5, 8, 20)] == [1, 3, 5, 13]
    space = CellSpace.from_dict({"channels": 4, "layout": "NRN", "states": 2})
    genotype = space.genotype({k: [[["sep_conv_3x3", 0], ["skip_connect", 1]]] * 2 for k in ("normal", "reduce")})
    net = space.build(genotype, auxiliary=True).train()
    logits, aux = net(torch.randn(3, 1, 8, 8))  # the head reads a 4x4 map: adaptive pooling
    assert net.aux_index == 1 and aux.shape == logits.shape == (3, 10)
    assert count_params(net, auxiliary=True) - count_params(net) == (16 * 128 + 256) + (128 * 768 * 4 + 1536) + 7690


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.main, self.aux = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        x = x.flatten(1)
        return (self.main(x), self.aux(x)) if self.training else self.main(x)


def test_training_loss_adds_the_weighted_auxiliary_loss():
    from bayesnas.data import Split

    torch.manual_seed(0)
    net = _TwoHeads()
    x, y = torch.randn(10, 1, 2, 2), torch.randint(0, 3, (10,))
    split = Split(x, y)
    with torch.no_grad():
        expected = F.cross_entropy(net.main(x.flatten(1)), y) + 0.4 * F.cross_entropy(net.aux(x.flatten(1)), y)
    # one batch of 10: its loss is logged before the only step, whatever the learning rate
    recipe = TrainRecipe(epochs=1, batch_size=10, lr=0.1, weight_decay=0.0, grad_clip=0.0)
    assert recipe.aux_weight == 0.4 == TrainRecipe().aux_weight
    history = train_network(net, split, split, recipe, progress=False)
    assert history[0]["loss"] == pytest.approx(expected.item(), rel=1e-6)


def test_train_subcommand_reports_sizes_with_and_without_the_head(tmp_path):
    import json

    from bayesnas.cli import main

    space = CellSpace.from_dict({"channels": 4, "layout": "NRN", "states": 2})
    genotype = space.genotype({k: [[["sep_conv_3x3", 0], ["skip_connect", 1]]] * 2 for k in ("normal", "reduce")})
    genotype.save(tmp_path / "genotype.json")
    assert main(["train", str(tmp_path / "genotype.json"), "--dataset", "digits", "--epochs", "1", "--auxiliary",
                 "0.4", "--no-progress"]) == 0
    trained = json.loads((tmp_path / "train_summary.json").read_text())
    assert trained["params"] == count_params(space.build(genotype))
    assert trained["params_with_auxiliary"] - trained["params"] == (16 * 128 + 256) + (128 * 768 * 4 + 1536) + 7690


def test_a_one_example_batch_trains_without_the_head():
    space = CellSpace.from_dict({"channels": 4, "layout": "NRN", "states": 2})
    genotype = space.genotype({k: [[["sep_conv_3x3", 0], ["skip_connect", 1]]] * 2 for k in ("normal", "reduce")})
    net = space.build(genotype, auxiliary=True).train()
    out = net(torch.randn(1, 1, 8, 8))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 10)
    assert isinstance(net(torch.randn(2, 1, 8, 8)), tuple)
