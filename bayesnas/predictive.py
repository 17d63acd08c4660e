"""Use the posterior: predictions averaged over networks drawn from a trained search, and their log-likelihoods.

Each method draws one network from what it learned with :meth:`~bayesnas.methods.SearchMethod.posterior_network`
(PGNAS: Bernoulli keep masks with the learned drop rates; VINNAS: alpha and the weights from the Gaussian guide,
without local reparameterisation; GDAS: ops drawn from softmax(A); PC-NAS: a member of the final pool, or a
completion of a partial pool, uniformly under the latency limit; One-Shot: a uniform architecture), always with
the super-network's trained weights. Bayesian model averaging (BMA) over S such draws predicts

    p(y | x, D) ~= 1/S sum_s p(y | x, network_s)

(the posterior predictive of the variational posterior q, e.g. Wilson & Izmailov, "Bayesian deep learning and a
probabilistic perspective of generalization", NeurIPS 2020, Eq. 1, with q for the posterior). :func:`predict_run`
scores it against the one selected architecture (with inherited weights, and retrained where the search retrained
it) with :mod:`bayesnas.calibration`; :func:`add_predictive_groups` stores ``log p(y_n | network_s)`` of held-out
validation examples under the networks of the ``posterior`` group's draws in ``posterior.nc`` (groups
``log_likelihood``, ``posterior_predictive``, ``observed_data``), from which ``bayesnas diagnose --compare`` ranks
runs by their held-out expected log predictive density (:func:`bayesnas.diagnostics.compare_heldout`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bayesnas import calibration
from bayesnas.config import ConfigError
from bayesnas.data import Split
from bayesnas.io import atomic_write_by_name
from bayesnas.precision import precision_context

if TYPE_CHECKING:
    from bayesnas.methods import SearchMethod

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""A network as a function from images to logits."""

PREDICTIVE_EXAMPLES = 1000
"""The validation examples of the exported ``log_likelihood`` group at most (evenly spaced over the split): with
the draws, what the end-of-search export costs."""

SPLITS = ("val", "test")


class NoPosteriorError(ConfigError):
    """The run's method holds no posterior over networks to draw from (random search)."""


@torch.no_grad()
def probabilities(predict: Predictor, split: Split, batch_size: int = 512, precision: str = "fp32") -> torch.Tensor:
    """``(N, C)`` class probabilities of ``predict`` on ``split`` (softmax in fp32, forward in ``precision``)."""
    out = []
    for start in range(0, len(split), batch_size):
        x = split.x[start:start + batch_size]
        with precision_context(precision, x.device):
            logits = predict(x)
        out.append(torch.softmax(logits.float(), -1))
    return torch.cat(out)


def draw_probabilities(method: SearchMethod, split: Split, samples: int, batch_size: int = 512,
                       progress: bool = False) -> torch.Tensor:
    """``(S, N, C)``: the class probabilities of ``samples`` networks drawn from the method's posterior (torch's
    global random state: seed it for reproducible draws); ``progress`` shows a bar over the draws."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    networks = (method.posterior_network() for _ in range(samples))
    return network_probabilities(method, networks, samples, split, batch_size, progress)


def network_probabilities(method: SearchMethod, networks: Iterable[Predictor | None], count: int, split: Split,
                          batch_size: int = 512, progress: bool = False) -> torch.Tensor:
    """``(S, N, C)``: the class probabilities of the method's ``count`` ``networks``, made one at a time as they are
    scored; ``progress`` shows a bar over them."""
    from tqdm import tqdm

    draws = []
    for network in tqdm(networks, total=count, desc="posterior draws", disable=not progress, dynamic_ncols=True,
                        leave=False):
        if network is None:
            raise NoPosteriorError(f"method {method.name!r} holds no posterior over networks to draw from (random "
                                   "search trains each candidate alone): nothing to average")
        draws.append(probabilities(network, split, batch_size, method.precision))
    return torch.stack(draws)


def sample_curve(draws: torch.Tensor, y: torch.Tensor) -> list[dict[str, float]]:
    """Scores of the average of the first S draws, for S = 1, 2, 4, ... and the last S."""
    sizes = [2 ** k for k in range(int(math.log2(len(draws))) + 1)]
    if sizes[-1] != len(draws):
        sizes.append(len(draws))
    return [{"samples": s, **calibration.scores(draws[:s].mean(0), y)} for s in sizes]


def log_likelihood(draws: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``(S, N)``: ``log p(y_n | network_s)`` from the ``(S, N, C)`` probabilities of the draws."""
    picked = draws.gather(2, y.view(1, -1, 1).expand(len(draws), -1, 1)).squeeze(2)
    return picked.clamp_min(1e-30).log().double().cpu().numpy()


def add_predictive_groups(method: SearchMethod, run_dir: Path, draws: list[Any] | None,
                          progress: bool = False) -> bool:
    """Add ``log_likelihood`` (``y``: chain x draw x val_example), ``posterior_predictive`` (class draws
    ``y ~ p(y | x_n, network_s)``) and ``observed_data`` (the validation labels) to the run's ``posterior.nc``;
    False (nothing written) for a method without a posterior over networks. ``draws`` are what the method's
    :meth:`~bayesnas.methods.SearchMethod.export` returned: draw ``s`` of these groups scores the network of draw
    ``s`` of the ``posterior`` group (:meth:`~bayesnas.methods.SearchMethod.draw_network`). They score at most
    :data:`PREDICTIVE_EXAMPLES` validation examples, evenly spaced (``val_example`` holds their indices)."""
    import arviz as az

    from bayesnas.diagnostics import POSTERIOR_FILE, read_posterior

    if not draws:
        return False
    index = torch.linspace(0, len(method.data.val) - 1, min(len(method.data.val), PREDICTIVE_EXAMPLES)).round().long()
    val = method.data.val.subset(index)
    try:
        probs = network_probabilities(method, map(method.draw_network, draws), len(draws), val, progress=progress)
    except NoPosteriorError:
        return False
    y = val.y.cpu()
    classes = torch.distributions.Categorical(probs=probs.cpu()).sample().numpy()
    extra = az.from_dict(log_likelihood={"y": log_likelihood(probs, val.y)[None]},
                         posterior_predictive={"y": classes[None]}, observed_data={"y": y.numpy()},
                         dims={"y": ["val_example"]}, coords={"val_example": index.numpy()})
    path = Path(run_dir) / POSTERIOR_FILE
    idata = read_posterior(path)
    idata.extend(extra, join="right")  # a repeated export replaces the groups
    atomic_write_by_name(path, idata.to_netcdf)
    return True


def predict_method(method: SearchMethod, split: Split, samples: int,
                   single: dict[str, Predictor | None]) -> dict[str, Any]:
    """Scores of BMA over ``samples`` draws (with its S curve and reliability table) and of each named single
    network in ``single`` (None: not available), each with BMA's NLL minus its own and a paired bootstrap
    interval of that difference."""
    draws = draw_probabilities(method, split, samples)
    y = split.y.cpu()
    averaged = draws.mean(0).cpu()
    table = calibration.reliability(averaged.double(), y)
    result: dict[str, Any] = {"bma": calibration.scores(averaged, y), "curve": sample_curve(draws.cpu(), y),
                              "reliability": {"bma": dataclasses.asdict(table)}}
    for name, predict in single.items():
        if predict is None:
            continue
        probs = probabilities(predict, split, precision=method.precision).cpu()
        result[name] = {**calibration.scores(probs, y),
                        "bma_nll_minus_this": calibration.nll_difference(averaged, probs, y)}
        result["reliability"][name] = dataclasses.asdict(calibration.reliability(probs.double(), y))
    return result


def plot_reliability(result: dict[str, Any], title: str, ax: Any = None) -> Any:
    """Reliability diagram of a :func:`predict_method` result: accuracy against mean confidence per bin, BMA and
    each single network; on ``ax`` (a matplotlib Axes) or a new figure, which is returned."""
    from matplotlib.figure import Figure

    if ax is None:
        ax = Figure(figsize=(4.6, 4.2)).subplots()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", label="calibrated")
    for name, table in result["reliability"].items():
        ece = result[name]["ece"]
        ax.plot(table["confidence"], table["accuracy"], marker="o", markersize=3, label=f"{name} (ECE {ece:.3f})")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(fontsize=7, loc="upper left")
    return ax.figure


def plot_sample_curve(result: dict[str, Any], title: str) -> Any:
    """Accuracy and NLL of the average of S draws against S, with the single networks as horizontal lines."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2))
    singles = [k for k in result["reliability"] if k != "bma"]
    for ax, key in zip(fig.subplots(1, 2), ("accuracy", "nll"), strict=True):
        ax.plot([r["samples"] for r in result["curve"]], [r[key] for r in result["curve"]], marker="o",
                label="BMA over S draws")
        for i, name in enumerate(singles):
            ax.axhline(result[name][key], color=f"C{i + 1}", linestyle="--", label=name)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="S (networks averaged)", ylabel=key, title=f"{title}: {key}")
        ax.legend(fontsize=7)
    return fig
