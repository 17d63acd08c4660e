"""PGNAS's channel-level spike-and-slab on the MBConv chain (Zhou et al., AAAI 2020, Eq. 12: one hybrid variable
per input-channel slice of a searchable kernel): the searchable kernels are the 1x1 projections of every MBConv
op of every mixop, the ops of a mixop summed like the branches of a shake-shake block (Sec. 3.1)."""

import json
import re

import pytest
import torch

from bayesnas.cli import main
from bayesnas.data import load_dataset
from bayesnas.infer import run_search
from bayesnas.methods import get_method
from bayesnas.spaces import Genotype, GenotypeError, get_space, load_genotype
from bayesnas.spaces.ops import SearchConv2d
from bayesnas.spaces.profile import count_params
from tests.test_any_space import TINY_SPACES, tiny_config
from tests.test_pgnas import _perturb_batchnorm

pytestmark = pytest.mark.usefixtures("one_thread")

# TINY_SPACES["chain"]: stem 8; stage 0 (8 wide, stride 1): mixops s0.l0, s0.l1; stage 1 (16 wide, stride 2): the
# fixed transition s1.l0, then the mixop s1.l1. MBConv_E_3 expands C_in to E * C_in channels.
SITES = [("s0.l0", "MBConv_1_3", 8), ("s0.l0", "MBConv_3_3", 24), ("s0.l1", "MBConv_1_3", 8),
         ("s0.l1", "MBConv_3_3", 24), ("s1.l1", "MBConv_1_3", 16), ("s1.l1", "MBConv_3_3", 48)]
WIDTH = {"s0.l0": 8, "s0.l1": 8, "s1.l1": 16}


@pytest.fixture
def method():
    return get_method("pgnas")(tiny_config("pgnas", "chain"), load_dataset("digits", seed=0), torch.device("cpu"))


def _op_params(expand: int, width: int, kept: int) -> int:
    """Parameters of an ``MBConv_E_3`` op (C_in = C_out = width) keeping ``kept`` expanded channels: 1x1 expand
    (E > 1) + BN, 3x3 depthwise + BN, 1x1 projection + BN (a BN has 2 parameters per channel)."""
    expand_part = (width * kept + 2 * kept) if expand > 1 else 0
    return expand_part + 9 * kept + 2 * kept + width * kept + 2 * width


def test_the_sites_are_the_projections_of_every_mbconv_op(method):
    layers = method.model.layers
    assert [(lay.layer, lay.branch, lay.in_channels) for lay in layers] == SITES
    modules = dict(method.model.net.named_modules())
    for layer, site in zip(layers, method.guide.site_names, strict=True):
        op = modules[layer.module_path.rsplit(".body.", 1)[0]]
        last_conv = [m for m in op.body if isinstance(m, SearchConv2d)][-1]
        assert modules[layer.module_path] is last_conv and last_conv.kernel_size == (1, 1)
        assert method.guide.kernels()[site].shape == (WIDTH[layer.layer], layer.in_channels, 1, 1)
    # Identity and the fixed transition have no site; the super-network sums all three ops of each mixop
    assert not any("Identity" in s or "blocks.2." in s for s in method.guide.site_names)
    assert method.model.net.blocks[0].summed and not method.model.net.blocks[2].summed


@pytest.mark.parametrize("rescale", [False, True])
def test_built_network_equals_the_masked_supernet(rescale):
    config = tiny_config("pgnas", "chain").merged({"options": {"rescale": rescale, "init_drop_rate": 0.4}})
    method = get_method("pgnas")(config, load_dataset("digits", seed=0), torch.device("cpu"))
    _perturb_batchnorm(method.model.net, torch.Generator().manual_seed(5))
    torch.manual_seed(2)
    masks = method.guide.sample_architecture()
    sites = method.guide.site_names
    masks[sites[1]][:] = False  # s0.l0 / MBConv_3_3 keeps nothing: its projection's BN offset and residual stay
    masks[sites[4]][:] = True  # s1.l1 / MBConv_1_3 keeps everything
    genotype = method.genotype(masks)
    kept = genotype.choices["kept"]
    assert kept["s0.l0"]["MBConv_3_3"] == [] and kept["s1.l1"]["MBConv_1_3"] == list(range(16))
    built = method.space.build(genotype, inherit=method.supernet_state())
    x = method.data.val.x[:40]
    for train in (False, True):  # running statistics, then batch statistics
        built.train(train)
        method.model.train(train)
        torch.testing.assert_close(built(x), method.masked_supernet(masks)(x), atol=1e-5, rtol=1e-5)
    method.model.eval()
    reference = method.masked_supernet(masks)(x)
    # the empty op's BatchNorm offset matters: dropping the op changes the output
    del built.blocks[0].ops["MBConv_3_3"]
    assert (built.eval()(x) - reference).abs().max() > 1e-2
    # parameters: the super-network's, less what the masked MBConv ops lose
    full = count_params(method.space.channel_supernet())
    lost = sum(_op_params(int(op[7]), WIDTH[layer], size) - _op_params(int(op[7]), WIDTH[layer], len(kept[layer][op]))
               for layer, op, size in SITES)
    assert method.space.params(genotype) == full - lost


def test_channel_genotypes_validate_with_one_line_errors():
    space = get_space("chain", {**TINY_SPACES["chain"], "in_channels": 1, "num_classes": 10, "image_size": 8})
    kept = {layer: {op: list(range(size))[:2] for lay, op, size in SITES if lay == layer} for layer in WIDTH}
    genotype = space.channel_genotype(kept)
    assert Genotype.from_dict(json.loads(genotype.to_json())) == genotype
    assert space.describe(genotype).splitlines()[0].split()[-3:] == ["MBConv_1_3:2/8", "MBConv_3_3:2/24", "Identity"]
    assert space.genotype(["Identity", "MBConv_3_3", "MBConv_1_3"]).choices == {
        "ops": ["Identity", "MBConv_3_3", "MBConv_1_3"]}  # the categorical form stays valid
    bad = [
        ({k: v for k, v in kept.items() if k != "s0.l1"}, "missing: ['s0.l1']"),
        ({**kept, "s0.l0": {**kept["s0.l0"], "Identity": []}}, "expected kept channels of its MBConv ops"),
        ({**kept, "s1.l1": {**kept["s1.l1"], "MBConv_3_3": [48]}}, "distinct integers in [0, 48)"),
        ({**kept, "s1.l1": {**kept["s1.l1"], "MBConv_1_3": [1, 1]}}, "distinct integers in [0, 16)"),
    ]
    for choice, message in bad:
        with pytest.raises(GenotypeError, match=re.escape(message)) as err:
            space.channel_genotype(choice)
        assert "\n" not in str(err.value)
    with pytest.raises(GenotypeError, match="no op index"):
        space.indices(genotype)


def test_tiny_search_writes_a_channel_genotype_that_trains(tmp_path, capsys):
    summary = run_search(tiny_config("pgnas", "chain"), tmp_path / "run", device="cpu", progress=False)
    genotype = load_genotype(tmp_path / "run" / "genotype.json")
    space = get_space("chain", genotype.config)
    assert set(genotype.choices) == {"kept"} and set(genotype.choices["kept"]) == set(WIDTH)
    assert summary["params"] == space.params(genotype) < summary["supernet_params"]
    assert len(space.describe(genotype).splitlines()) == 3
    out = tmp_path / "train"
    assert main(["train", str(tmp_path / "run" / "genotype.json"), "--epochs", "1", "--out", str(out),
                 "--no-progress"]) == 0
    assert json.loads((out / "train_summary.json").read_text())["params"] == summary["params"]
