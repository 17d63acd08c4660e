"""The uniform one-shot proposal (Bender et al., "Understanding and simplifying one-shot architecture search",
ICML 2018; single-path uniform sampling as in Guo et al., ECCV 2020), the "One-Shot" baseline of PC-NAS (Li et
al., CVPR 2020, Sec. 4.4, Table 3 "One-shot + Ours").

Every epoch trains the super-network on one architecture drawn uniformly per mini-batch (every decision of the
space uniformly, only the chosen ops run); after training, the same pool search as PC-NAS (Algorithm 1
potentials, the top P kept per decision in the space's order) runs on the trained super-network with no
training between its steps, and the best of the final pool is retrained from scratch. It is
:class:`~bayesnas.methods.pcnas.PCNAS` whose proposal is uniform all along, so it has no warm-up or interval
options.
"""

from __future__ import annotations

from bayesnas.methods.base import register
from bayesnas.methods.pcnas import PCNAS, OneShotOptions


@register
class OneShot(PCNAS):
    """Uniform single-path training, then PC-NAS's pool search on the trained super-network."""

    name = "oneshot"
    options_type = OneShotOptions

    @property
    def proposal_kind(self) -> str:
        return "uniform"
