"""The ELBO of the Bayesian methods: ``TraceMeanField_ELBO`` without densities that the loss never reads.

``TraceMeanField_ELBO`` scores every sample site of both traces before it computes the loss, but for a latent
site whose (guide, prior) pair has a registered KL the loss reads only that KL. PGNAS and VINNAS have one
such site per weight tensor (hundreds in VINNAS), so the skipped densities are most of Pyro's overhead per
step. :class:`AnalyticKLELBO` computes the same loss and gradients, scoring only observed sites, factors and
latent sites without a registered KL (which still get the Monte Carlo term), and it sums the KLs of the sites
that share one scale before scaling them (``sum_i s KL_i = s sum_i KL_i``): one product, and one node of the
backward graph, per scale instead of three per site. Where a pair of distribution types has a summed form
registered (:func:`register_summed_kl`), the sites of that pair under one scale get their KLs summed in one
computation: VINNAS's 195 weight sites then cost a few operations instead of a few per site.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch
from pyro import poutine
from pyro.distributions import Independent
from pyro.distributions.score_parts import ScoreParts
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.util import check_fully_reparametrized, is_validation_enabled, torch_item
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence
from torch.distributions.kl import _KL_MEMOIZE, _dispatch_kl

ANALYTIC = "_analytic_kl"
"""Key of a model site's ``infer`` dict: its loss term is the registered ``KL(guide || prior)``."""

SummedKL = Callable[[Sequence[object], Sequence[object]], torch.Tensor]
_SUMMED_KL: dict[tuple[type, type], SummedKL] = {}


def register_summed_kl(type_q: type, type_p: type) -> Callable[[SummedKL], SummedKL]:
    """Register ``fn(qs, ps) = sum_i KL(q_i || p_i)`` for many (guide, prior) pairs of exactly these types: the same
    value as the registered pairwise KL summed over the sites, in one computation."""
    def decorator(fn: SummedKL) -> SummedKL:
        _SUMMED_KL[type_q, type_p] = fn
        return fn
    return decorator


def summed_kl(pairs: Sequence[tuple[object, object]]) -> torch.Tensor:
    """``sum_i KL(q_i || p_i)`` over (guide, prior) pairs with registered KLs: pairs whose types have a summed form
    go through it together, the others one by one (no pairs: 0)."""
    terms: list[torch.Tensor] = []
    together: dict[tuple[type, type], list[tuple[object, object]]] = {}
    for q, p in pairs:
        if (type(q), type(p)) in _SUMMED_KL:
            together.setdefault((type(q), type(p)), []).append((q, p))
        else:
            kl = kl_divergence(q, p)
            terms.append(kl if kl.dim() == 0 else kl.sum())
    for types, group in together.items():
        qs, ps = zip(*group, strict=True)
        terms.append(_SUMMED_KL[types](qs, ps))
    return sum(terms[1:], terms[0]) if terms else torch.zeros(())


def has_registered_kl(q: object, p: object) -> bool:
    """Whether ``kl_divergence(q, p)`` has a registered closed form (through matching ``Independent``s)."""
    while isinstance(q, Independent) and isinstance(p, Independent):
        if q.reinterpreted_batch_ndims != p.reinterpreted_batch_ndims:
            return False
        q, p = q.base_dist, p.base_dist
    pair = type(q), type(p)
    # torch's own memo of kl_divergence (cleared by register_kl): the dispatch searches the whole registry
    if pair not in _KL_MEMOIZE:
        _KL_MEMOIZE[pair] = _dispatch_kl(*pair)
    return _KL_MEMOIZE[pair] is not NotImplemented


class AnalyticKLELBO(TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` that skips the log-densities of sites scored by a registered KL and scales the sum
    of their KLs once per scale."""

    def _get_trace(self, model, guide, args, kwargs):
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace), graph_type="flat").get_trace(
            *args, **kwargs)
        for trace in (guide_trace, model_trace):  # Pyro's prune_subsample_sites, in place (the traces are ours)
            for name in [name for name, site in trace.nodes.items() if site_is_subsample(site)]:
                trace.remove_node(name)
        analytic = set()
        for name, site in model_trace.nodes.items():
            if (site["type"] == "sample" and not site["is_observed"] and name in guide_trace.nodes
                    and has_registered_kl(guide_trace.nodes[name]["fn"], site["fn"])):
                analytic.add(name)
                site["infer"] = {**site["infer"], ANALYTIC: True}
        model_trace.compute_log_prob(site_filter=lambda name, site: name not in analytic)
        # compute_score_parts skips sites that have them; for these the loss reads only the KL (the entropy term
        # is a tensor, as for any reparameterised site, so validation still sees a fully reparameterised guide)
        zero = torch.zeros(())
        for name in analytic:
            guide_trace.nodes[name]["score_parts"] = ScoreParts(log_prob=zero, score_function=0, entropy_term=zero)
        guide_trace.compute_score_parts()
        return model_trace, guide_trace

    def _differentiable_loss_particle(self, model_trace: Trace, guide_trace: Trace) -> tuple[float, torch.Tensor]:
        """``-ELBO`` of one particle, term by term as ``TraceMeanField_ELBO`` computes it: observed log-likelihoods,
        ``-KL(q || p)`` of the analytic sites, ``log p - log q`` (Monte Carlo) of the other latent sites and
        ``-log q`` of the guide's auxiliary sites. Returns the loss as a float and as a tensor (its own surrogate:
        every guide site is reparameterised)."""
        elbo: torch.Tensor | float = 0.0
        pairs_by_scale: dict[float, list[tuple[object, object]]] = {}
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                elbo = elbo + site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            if is_validation_enabled():
                check_fully_reparametrized(guide_site)
            if not site["infer"].get(ANALYTIC):
                elbo = elbo + site["log_prob_sum"] - guide_site["score_parts"].entropy_term.sum()
                continue
            pair = guide_site["fn"], site["fn"]
            scale, mask = guide_site["scale"], guide_site["mask"]
            if isinstance(scale, numbers.Number) and (mask is None or mask is True):
                pairs_by_scale.setdefault(scale, []).append(pair)
            elif mask is not False:
                elbo = elbo - scale_and_mask(kl_divergence(*pair), scale=scale, mask=mask).sum()
        for scale, pairs in pairs_by_scale.items():
            elbo = elbo - summed_kl(pairs) * scale
        for name, guide_site in guide_trace.nodes.items():
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                if is_validation_enabled():
                    check_fully_reparametrized(guide_site)
                elbo = elbo - guide_site["score_parts"].entropy_term.sum()
        return -torch_item(elbo), -elbo
