"""The ELBO of the Bayesian methods: ``TraceMeanField_ELBO`` without densities that the loss never reads.

``TraceMeanField_ELBO`` scores every sample site of both traces before it computes the loss, but for a latent
site whose (guide, prior) pair has a registered KL the loss reads only that KL. PGNAS and VINNAS have one
such site per weight tensor (hundreds in VINNAS), so the skipped densities are most of Pyro's overhead per
step. :class:`AnalyticKLELBO` computes the same loss and gradients, scoring only observed sites, factors and
latent sites without a registered KL (which still get the Monte Carlo term).
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.distributions import Independent
from pyro.distributions.score_parts import ScoreParts
from pyro.infer import TraceMeanField_ELBO
from pyro.poutine.util import prune_subsample_sites
from torch.distributions.kl import _KL_MEMOIZE, _dispatch_kl


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
    """``TraceMeanField_ELBO`` that skips the log-densities of sites scored by a registered KL."""

    def _get_trace(self, model, guide, args, kwargs):
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace), graph_type="flat").get_trace(
            *args, **kwargs)
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        analytic = {name for name, site in model_trace.nodes.items()
                    if site["type"] == "sample" and not site["is_observed"] and name in guide_trace.nodes
                    and has_registered_kl(guide_trace.nodes[name]["fn"], site["fn"])}
        model_trace.compute_log_prob(site_filter=lambda name, site: name not in analytic)
        # compute_score_parts skips sites that have them; for these the loss reads only the KL (the entropy term
        # is a tensor, as for any reparameterised site, so validation still sees a fully reparameterised guide)
        zero = torch.zeros(())
        for name in analytic:
            guide_trace.nodes[name]["score_parts"] = ScoreParts(log_prob=zero, score_function=0, entropy_term=zero)
        guide_trace.compute_score_parts()
        return model_trace, guide_trace
