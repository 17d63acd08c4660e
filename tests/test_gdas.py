"""GDAS: straight-through sampler, one op per edge, gradients, temperature schedule, derivation, search."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import kl_divergence

from bayesnas.config import preset
from bayesnas.data import load_dataset
from bayesnas.infer import run_search
from bayesnas.io import read_jsonl
from bayesnas.methods import get_method
from bayesnas.methods.gdas import annealed_temperature
from bayesnas.select import derive_cell
from bayesnas.spaces.cell import CellSpace, MixedEdge

SPACE = {"channels": 4, "layout": "NRN", "states": 2, "ops": "gdas"}
TINY = {"epochs": 2, "space": SPACE, "options": {"retrain_epochs": 1, "posterior_draws": 5, "warmup_epochs": 0}}


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", seed=0)


def make(data, **options):
    config = preset("gdas-digits").merged({**TINY, "options": {**TINY["options"], **options}})
    return get_method("gdas")(config, data, torch.device("cpu"))


def test_hard_forward_is_exactly_one_hot_and_gradient_reaches_every_logit(data):
    method = make(data)
    guide = method.guide
    sample = guide.distribution("normal").rsample()
    assert set(sample.detach().unique().tolist()) == {0.0, 1.0}
    assert torch.equal(sample.detach().sum(-1), torch.ones(sample.shape[0]))
    # the soft backward path: d(sum_k c_k h_k)/dA is non-zero for every op of an edge
    weights = torch.randn(sample.shape[-1])
    (sample[0] * weights).sum().backward()
    grad = guide.logits["normal"].grad[0]
    assert (grad != 0).all()
    assert (guide.logits["normal"].grad[1:] == 0).all()  # other edges untouched by this edge's term


def test_only_the_sampled_op_runs_and_gets_gradient():
    torch.manual_seed(0)
    ops = CellSpace.from_dict(SPACE).op_names
    edge = MixedEdge(ops, 4, 1, affine=False, sparse=True)
    calls = []
    for i, op in enumerate(edge.ops):
        op.register_forward_hook(lambda module, args, out, i=i: calls.append(i))
    k = ops.index("sep_conv_3x3")
    weights = torch.nn.functional.one_hot(torch.tensor(k), len(ops)).float().requires_grad_()
    edge(torch.randn(3, 4, 6, 6), weights).sum().backward()
    assert calls == [k]
    for i, op in enumerate(edge.ops):
        grads = [p.grad for p in op.parameters()]
        if i == k:
            assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None for g in grads)


def test_per_example_sampling_groups_the_batch_by_op():
    torch.manual_seed(0)
    ops = CellSpace.from_dict(SPACE).op_names
    edge = MixedEdge(ops, 4, 1, affine=True, sparse=True).eval()
    x = torch.randn(6, 4, 5, 5)
    choice = torch.tensor([4, 1, 4, 2, 1, 4])
    weights = torch.nn.functional.one_hot(choice, len(ops)).float()
    calls = []
    for i, op in enumerate(edge.ops):
        op.register_forward_hook(lambda module, args, out, i=i: calls.append(i))
    out = edge(x, weights)
    assert sorted(calls) == [1, 2, 4]  # each chosen op once, on its group
    for n, k in enumerate(choice.tolist()):
        torch.testing.assert_close(out[n], edge.ops[k](x[n:n + 1])[0])


def test_temperature_schedule_endpoints():
    assert annealed_temperature(0, 240, 10.0, 1.0) == 10.0
    assert annealed_temperature(239, 240, 10.0, 1.0) == pytest.approx(1.0)
    assert annealed_temperature(249, 250, 10.0, 0.1) == pytest.approx(0.1)
    assert annealed_temperature(120, 241, 10.0, 1.0) == pytest.approx(5.5)


def test_derivation_on_a_hand_made_A():
    names = ("none", "skip_connect", "sep_conv_3x3")
    edges = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    strength = torch.tensor([
        [0.9, 0.05, 0.05],  # state 0 <- 0: zero is excluded, skip and sep tie low
        [0.1, 0.2, 0.7],    # state 0 <- 1: sep
        [0.1, 0.6, 0.3],    # state 1 <- 0: skip (0.6)
        [0.2, 0.3, 0.5],    # state 1 <- 1: sep (0.5)
        [0.1, 0.1, 0.8],    # state 1 <- 2: sep (0.8)
    ])
    cell = derive_cell(strength, names, edges)
    assert cell[0] == [["skip_connect", 0], ["sep_conv_3x3", 1]]
    assert cell[1] == [["skip_connect", 0], ["sep_conv_3x3", 2]]  # the two strongest of three incoming


def test_registered_kl_between_underlying_categoricals():
    logits = torch.randn(5, 8)
    q = dist.RelaxedOneHotCategoricalStraightThrough(torch.tensor(1.0), logits=logits).to_event(1)
    p = dist.OneHotCategorical(logits=torch.zeros(5, 8)).to_event(1)
    expected = kl_divergence(torch.distributions.Categorical(logits=logits),
                             torch.distributions.Categorical(logits=torch.zeros(5, 8))).sum()
    assert kl_divergence(q, p).item() == pytest.approx(expected.item(), rel=1e-5)

    def model():
        pyro.sample("f", p)

    def guide():
        pyro.sample("f", q)

    assert TraceMeanField_ELBO().differentiable_loss(model, guide).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("beta,sample_per", [(0.0, "batch"), (1.0, "example")])
def test_losses_and_sites(data, beta, sample_per):
    method = make(data, beta=beta, sample_per=sample_per)
    x, y, index = data.train.x[:8], data.train.y[:8], torch.arange(8)
    loss, right = method.loss(x, y, index, 100)
    assert torch.isfinite(loss) and 0 <= right <= 8
    loss.backward()
    assert all(p.grad is not None for p in method.guide.parameters())
    trace = poutine.trace(method.guide).get_trace(x, y, index, 100)
    expected = (8, *method.space.arch_shape()) if sample_per == "example" else method.space.arch_shape()
    assert trace.nodes["arch_normal"]["value"].shape == expected


def test_tiny_search_writes_fading_and_cells(tmp_path):
    config = preset("gdas-digits").merged({**TINY, "epochs": 3, "options": {**TINY["options"], "arch_lr": 0.05}})
    summary = run_search(config, tmp_path / "run", progress=False)
    rows = read_jsonl(tmp_path / "run/metrics.jsonl")
    assert [r["tau"] for r in rows] == [10.0, 5.5, 1.0]
    assert rows[-1]["log10_effective_architectures"] < rows[0]["log10_effective_architectures"]
    assert summary["log10_effective_architectures_last"] < summary["log10_effective_architectures_first"]
    assert set(summary["cells"]) == {"normal", "reduce"}
    assert (tmp_path / "run/posterior.nc").exists() and (tmp_path / "run/op_probabilities_normal.png").exists()
    assert summary["params"] < summary["supernet_params"]


def test_fixed_reduction_cell_searches_only_normal_cells(data):
    config = preset("gdas-digits").merged({**TINY, "space": {**SPACE, "states": 4, "fixed_reduction": True}})
    method = get_method("gdas")(config, data, torch.device("cpu"))
    assert method.guide.cell_types == ["normal"]
    assert set(method.genotype().choices) == {"normal"}


def test_cli_flags_choose_sampling_and_fixed_reduction():
    from bayesnas.cli import build_parser, search_config

    args = build_parser().parse_args(["search", "--method", "gdas", "--sample-per", "example", "--fixed-reduction"])
    config = search_config(args)
    assert config.method == "gdas"
    assert config.options["sample_per"] == "example"
    assert config.space["fixed_reduction"] is True and config.space["layout"] == "NRN"
