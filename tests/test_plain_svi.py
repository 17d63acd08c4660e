"""Every method's model and guide (or proposal) trains with plain Pyro: ``pyro.infer.SVI`` + ``pyro.optim`` in
Pyro's default (global param store) mode, and the ELBO-as-``nn.Module`` idiom with a ``torch.optim`` optimiser in
``module_local_params`` mode; ``pyro.infer.Predictive`` draws architectures from the trained guide."""

import contextlib

import pyro
import pytest
import torch
from pyro.infer import SVI, Predictive, TraceMeanField_ELBO
from scipy import stats

from bayesnas.config import preset
from bayesnas.data import load_dataset
from bayesnas.elbo import AnalyticKLELBO
from bayesnas.guides.pcnas import PartialModelPool, ProposalGuide
from bayesnas.methods import get_method
from bayesnas.models.pcnas import site
from bayesnas.reparam import LocalReparameterization

TINY = {  # each method's digits preset with a narrow space
    "pgnas": {"space": {"stem_channels": 8, "widths": [8, 16], "depths": [1, 1], "kernel_sizes": [1, 3]},
              "options": {"baseline": False}},
    "vinnas": {"space": {"channels": 2, "layout": "R", "states": 1}},
    "gdas": {"space": {"channels": 4, "layout": "NR", "states": 2}},
    "pcnas": {"space": {"stem_channels": 8, "widths": [8, 16, 16]}},
}
STEPS = 32
BATCH = 32


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def model_and_guide(name: str, data) -> tuple:
    """The method's model and guide as the search builds them, and the handler to run them under: one
    :class:`LocalReparameterization` around both where the guide draws weights (PGNAS, VINNAS). PC-NAS's guide is
    its proposal as a Pyro guide (:class:`ProposalGuide`)."""
    method = get_method(name)(preset(f"{name}-digits").merged(TINY[name]), data, torch.device("cpu"))
    model, guide = method.model, method.guide if name != "pcnas" else ProposalGuide(method.proposal)
    if name == "vinnas":
        model.gammas = guide.gammas = (1.0, 1.0, 0.0)  # Eq. 8 with both KL terms at full weight
    return model, guide, LocalReparameterization() if name in ("pgnas", "vinnas") else contextlib.nullcontext()


def losses_of(step, data, seed: int = 0) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    n = len(data.train)
    out = []
    for _ in range(STEPS):
        index = torch.randint(n, (BATCH,), generator=generator)
        out.append(step(data.train.x[index], data.train.y[index], index, n) / n)
    return out


def falls(losses: list[float]) -> bool:
    k = len(losses) // 4
    return sum(losses[-k:]) / k < sum(losses[:k]) / k


# our analytic-KL ELBO where it differs from TraceMeanField_ELBO: sites with a registered KL (PGNAS, VINNAS)
@pytest.mark.parametrize(("name", "elbo_type"), [("pgnas", TraceMeanField_ELBO), ("vinnas", TraceMeanField_ELBO),
                                                 ("gdas", TraceMeanField_ELBO), ("pcnas", TraceMeanField_ELBO),
                                                 ("pgnas", AnalyticKLELBO), ("vinnas", AnalyticKLELBO)])
def test_svi_with_pyro_optim_in_the_default_mode(name, elbo_type, digits, one_thread):
    assert not pyro.settings.get("module_local_params")
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    model, guide, handler = model_and_guide(name, digits)
    if isinstance(handler, LocalReparameterization):  # the wrapped form: handler(model), handler(guide)
        model, guide = handler(model), handler(guide)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo_type())
    losses = losses_of(svi.step, digits)
    assert len(pyro.get_param_store().keys()) > 0
    assert falls(losses), losses
    pyro.clear_param_store()


@pytest.mark.parametrize("name", ["pgnas", "vinnas", "gdas", "pcnas"])
def test_elbo_as_a_module_with_torch_optim(name, digits, one_thread):
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    with pyro.settings.context(module_local_params=True):
        model, guide, handler = model_and_guide(name, digits)
        loss_fn = TraceMeanField_ELBO()(model, guide)  # an nn.Module holding both
        params = list(loss_fn.parameters())
        assert params
        optimizer = torch.optim.Adam(params, lr=0.01)

        def step(*args):
            optimizer.zero_grad()
            with handler:  # the context form: one handler around the guide's and the model's trace
                loss = loss_fn(*args)
            loss.backward()
            optimizer.step()
            return loss.item()

        assert falls(losses_of(step, digits))
    assert list(pyro.get_param_store().keys()) == []  # the parameters stayed in the modules


def test_predictive_draws_gdas_architectures_from_the_proposal(digits, one_thread):
    """The straight-through draw's hard one-hot is Categorical(softmax(A)) whatever the temperature: the op
    counts of 300 draws per edge pass a chi-square test against softmax(A)."""
    pyro.set_rng_seed(0)
    model, guide, _ = model_and_guide("gdas", digits)
    with torch.no_grad():
        logits = guide.logits["normal"]
        logits.copy_(0.7 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(1)))
    pyro.clear_param_store()
    draws = Predictive(model, guide=guide, num_samples=20)(digits.val.x[:2])  # architectures and labels
    assert draws["arch_normal"].shape[0] == 20 and draws["y"].shape == (20, 2)
    draws = Predictive(guide, num_samples=300, return_sites=["arch_normal"])(digits.val.x[:1])  # the guide alone
    shape = guide.logits["normal"].shape
    one_hot = draws["arch_normal"].reshape(300, *shape)  # (draw, edge, op)
    assert ((one_hot == 0) | (one_hot == 1)).all() and (one_hot.sum(-1) == 1).all()
    counts, expected = one_hot.sum(0), 300 * guide.probabilities()["normal"]
    for edge in range(counts.shape[0]):
        assert stats.chisquare(counts[edge].numpy(), expected[edge].numpy()).pvalue > 1e-3, edge


def test_predictive_draws_pcnas_architectures_from_the_pool(digits, one_thread):
    pyro.set_rng_seed(0)
    model, _, _ = model_and_guide("pcnas", digits)
    num_ops = model.num_ops
    pool = PartialModelPool(num_ops, pool_size=2)
    pool.members = [(1,), (3,)]  # a pool of two partial models fixing the first decision
    guide = ProposalGuide(pool)
    draws = Predictive(guide, num_samples=300, return_sites=[site(d) for d in range(len(num_ops))])(digits.val.x[:1])
    draws = {name: value.reshape(300) for name, value in draws.items()}
    first = draws[site(0)]
    assert set(first.tolist()) == {1, 3} and stats.binomtest(int((first == 1).sum()), 300).pvalue > 1e-3
    for decision in range(1, len(num_ops)):  # the rest completed uniformly (no latency limit)
        counts = torch.bincount(draws[site(decision)], minlength=num_ops[decision]).numpy()
        assert stats.chisquare(counts).pvalue > 1e-3, decision
