"""Local reparameterisation: weight noise drawn per example on activations, as one poutine messenger.

Layers of a search space call :func:`conv2d` and :func:`linear` instead of ``torch.nn.functional``'s.
Outside any Pyro handler these are the plain functions. Inside :class:`LocalReparameterization`:

1. ``_pyro_post_sample`` records, for every sample drawn from a guide distribution that knows how to
   reparameterise locally (it has a ``local_reparameterize`` method), the mapping value -> distribution;
2. when the model later feeds that very tensor (replayed from the guide) to a layer, ``_pyro_layer``
   replaces ``op(x, phi)`` by ``q.local_reparameterize(op, x, ...)``, which draws the noise per example.

The sample sites, and so the ELBO and its analytic KL terms, stay untouched. PGNAS's per-example dropout masks
(Algorithm 1, line 3) are :meth:`~bayesnas.distributions.ConcreteDropout.local_reparameterize`; the Gaussian case
(output mean from ``mu``, variance from ``sigma^2`` on ``x^2``) is a second distribution with the same method.

With ``defer_draws=True``, a guide site marked ``infer={ONLY_FEEDS_LAYERS: True}`` whose distribution has a
``deferred_sample`` method is not drawn at all: the layers draw their own noise, and a loss that scores the site by
a registered KL never reads its value. The value is that method's NaN stand-in, so any other use of it fails
loudly (Pyro's validation rejects it; without validation the loss is NaN).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import effectful


def _layer(op: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Make ``op(x, weight, *args, **kwargs)`` an effectful operation of type ``"layer"``."""
    def call(x: torch.Tensor, weight: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return op(x, weight, *args, **kwargs)

    call.__name__ = op.__name__
    call.__doc__ = f"``torch.nn.functional.{op.__name__}`` that :class:`LocalReparameterization` can intercept."
    return effectful(call, type="layer")


conv2d = _layer(F.conv2d)
linear = _layer(F.linear)

ONLY_FEEDS_LAYERS = "only_feeds_layers"
"""Key of a guide site's ``infer`` dict: the model uses the site's value only as a layer's weight."""


def _local(fn: object) -> object | None:
    """The distribution under ``fn``'s wrappers that reparameterises locally, if any."""
    while hasattr(fn, "base_dist") and not hasattr(fn, "local_reparameterize"):
        fn = fn.base_dist
    return fn if hasattr(fn, "local_reparameterize") else None


class LocalReparameterization(Messenger):
    """Draw the noise of locally reparameterisable weight sites per example, on activations.

    Use one instance around both model and guide so that the guide's samples are recognised when the
    model (replayed from the guide) uses them: wrapping both, e.g. for ``pyro.infer.SVI``, or as a context around
    the loss, e.g. for the ELBO as an ``nn.Module`` (whose ``parameters()`` need the unwrapped modules)::

        reparam = LocalReparameterization()
        svi = SVI(reparam(model), reparam(guide), pyro.optim.Adam({"lr": 1e-3}), TraceMeanField_ELBO())

        loss_fn = TraceMeanField_ELBO()(model, guide)
        with reparam:
            loss = loss_fn(x, y, index, size)
    """

    def __init__(self, defer_draws: bool = False) -> None:
        super().__init__()
        self.defer_draws = defer_draws
        self._by_site: dict[str, tuple[torch.Tensor, object]] = {}
        self._by_id: dict[int, tuple[torch.Tensor, object]] = {}
        self._deferred: dict[str, torch.Tensor] = {}
        """Each site's NaN stand-in, reused from step to step (one per site: values are matched by identity)."""

    def _pyro_sample(self, msg: dict) -> None:
        if (not self.defer_draws or msg["is_observed"] or msg["value"] is not None
                or not msg["infer"].get(ONLY_FEEDS_LAYERS)):
            return
        fn = _local(msg["fn"])
        if fn is not None and hasattr(fn, "deferred_sample"):
            msg["value"] = self._deferred[msg["name"]] = fn.deferred_sample(self._deferred.get(msg["name"]))

    def _pyro_post_sample(self, msg: dict) -> None:
        fn = _local(msg["fn"])
        if msg["is_observed"] or fn is None:
            return
        # one entry per site: a new draw replaces the last one (this also keeps the recorded tensors
        # alive, so an id can never be reused by an unrelated tensor while it is in the table)
        old = self._by_site.pop(msg["name"], None)
        if old is not None:
            self._by_id.pop(id(old[0]), None)
        entry = (msg["value"], fn)
        self._by_site[msg["name"]] = entry
        self._by_id[id(msg["value"])] = entry

    def _pyro_layer(self, msg: dict) -> None:
        x, weight, *args = msg["args"]
        entry = self._by_id.get(id(weight))
        if entry is None or entry[0] is not weight:
            return
        dist = entry[1]
        op = msg["fn"]
        msg["value"] = dist.local_reparameterize(op, x, *args, **msg["kwargs"])
        msg["done"] = True
