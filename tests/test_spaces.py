"""The multi-branch space: super-network, genotypes, built networks and inherited weights."""

import json

import pytest
import torch

from bayesnas.spaces import GenotypeError, UnknownSpaceError, get_space, load_genotype
from bayesnas.spaces.branches import BranchSpace
from bayesnas.spaces.profile import count_params

CONFIG = {"stem_channels": 8, "widths": [8, 16], "depths": [1, 2], "kernel_sizes": [1, 3, 5]}


@pytest.fixture
def space():
    return get_space("branches", CONFIG)


def _random_kept(space, keep=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    kept = {}
    for layer in space.layers():
        mask = torch.rand(layer.in_channels, generator=g) < keep
        kept.setdefault(layer.layer, {})[layer.branch] = torch.nonzero(mask).flatten().tolist()
    return kept


def test_supernet_shapes_and_searchable_layers(space):
    net = space.supernet()
    assert net(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    layers = space.layers()
    assert len(layers) == 3 * 2 * 3  # blocks x (conv_a, conv_b) x kernel sizes
    assert {layer.branch for layer in layers} == {"k1", "k3", "k5"}
    assert layers[0].in_channels == 8


def test_full_genotype_rebuilds_the_supernet_exactly(space):
    torch.manual_seed(0)
    net = space.supernet().eval()
    built = space.build(space.full_genotype(), inherit=net.state_dict()).eval()
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(built(x), net(x))
    assert count_params(built) == count_params(net)


def test_built_network_equals_masked_supernet_and_has_fewer_parameters(space):
    torch.manual_seed(0)
    net = space.supernet().eval()
    kept = _random_kept(space, keep=0.6)
    genotype = space.genotype(kept)
    # the true masked super-network: the kernel slices not kept are zero, nothing else changes
    masked = space.supernet().eval()
    masked.load_state_dict(net.state_dict())
    for layer, conv in masked.searchable():
        mask = torch.zeros(layer.in_channels)
        mask[kept[layer.layer][layer.branch]] = 1
        conv.weight.data *= mask.view(1, -1, 1, 1)
    with torch.no_grad():  # non-zero BatchNorm offsets, so a dropped branch's offset would show
        for bn in masked.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.bias.uniform_(-1, 1)
                bn.running_mean.uniform_(-1, 1)
    built = space.build(genotype, inherit=masked.state_dict()).eval()
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(built(x), masked(x), atol=1e-5, rtol=1e-4)
    assert count_params(built) < 0.8 * count_params(net)


def test_an_empty_layer_keeps_only_its_batchnorm_offset(space):
    kept = space.full_genotype().choices
    kept["s1.b1.b"]["k5"] = []
    net = space.build(space.genotype(kept))
    branch = net.stages[1][1].branches["k5"]
    assert branch.conv_a is None and branch.bn_a is None and branch.conv_b is None
    assert sum(p.numel() for p in branch.parameters()) == 2 * 16
    assert net.stages[1][0].branches["k5"].conv_b is not None


def test_genotype_json_round_trip(space, tmp_path):
    genotype = space.genotype(_random_kept(space))
    genotype.save(tmp_path / "g.json")
    loaded = load_genotype(tmp_path / "g.json")
    assert loaded == genotype
    assert count_params(space.build(loaded)) == count_params(space.build(genotype))


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"space": "branches", "config": {}}', "missing key"),
    ('{"space": "lattice", "config": {}, "choices": {}}', "unknown search space"),
    ('{"space": "branches", "config": {"widths": [8]}, "choices": {}}', "invalid configuration"),
    ('{"space": "branches", "config": {}, "choices": {"s0.b0.a": {}}}', "do not fit the space"),
])
def test_malformed_genotype_files_fail_with_one_line(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises((GenotypeError, UnknownSpaceError), match=match) as info:
        load_genotype(path)
    assert "\n" not in str(info.value)


def test_out_of_range_channels_are_rejected(space):
    kept = space.full_genotype().choices
    kept["s0.b0.a"]["k3"] = [0, 99]
    with pytest.raises(GenotypeError, match=r"\[0, 8\)"):
        space.genotype(kept)
    kept["s0.b0.a"]["k3"] = [1, 1]
    with pytest.raises(GenotypeError, match="distinct"):
        space.genotype(kept)


def test_genotype_of_another_configuration_does_not_fit(space, tmp_path):
    other = BranchSpace.from_dict({**CONFIG, "kernel_sizes": [3]})
    genotype = other.full_genotype()
    with pytest.raises(GenotypeError):
        space.validate(genotype)
    (tmp_path / "g.json").write_text(json.dumps({"space": "branches", "config": CONFIG,
                                                 "choices": genotype.choices}))
    with pytest.raises(GenotypeError, match="expected branches"):
        load_genotype(tmp_path / "g.json")


def test_auxiliary_head_and_drop_path(space):
    net = space.build(space.full_genotype(), auxiliary=True, drop_path=0.2).train()
    logits, aux = net(torch.randn(4, 1, 8, 8))
    assert logits.shape == aux.shape == (4, 10)
    assert net.eval()(torch.randn(2, 1, 8, 8)).shape == (2, 10)
