"""Overhead of one PGNAS SVI step in Pyro against the same step written in plain PyTorch.

*Ours* is exactly what the search loop runs per mini-batch: ``PGNAS.training_loss`` (the Pyro model and
guide under the local-reparameterisation messenger, ``TraceMeanField_ELBO.differentiable_loss``, divided by
N), ``loss.item()``, ``backward()`` and an SGD step over ``PGNAS.param_groups()``.

*Plain* is a hand-written equivalent in the same process: the same ``BranchNet`` whose searchable convolutions
are replaced by a small module holding the kernel ``m`` and a drop-rate logit, which multiplies its input
channels by a per-example relaxed-Bernoulli keep mask (keep probability ``1 - p``, temperature ``tau``,
PGNAS Eq. 16), a cross-entropy summed over the batch and scaled by N/M, plus the Eq. 15 regulariser
``sum_kernels d^2 (1 - p) / 2 ||m||^2 - K H(p)`` times the same KL scale, all divided by N.

Both optimisers are built as the search loop builds its own (:func:`bayesnas.optimizers.build_optimizer`:
Adam fused, SGD multi-tensor). The two alternate in rounds (ours, plain, ours, plain, ...) on
one fixed CIFAR-shaped batch; the script prints the median seconds per step of each and, last,
``ratio=<ours/plain>``. ``--profile`` adds a cProfile table of
the Pyro step. Everything runs in Pyro's ``module_local_params`` mode, as the search loop does (in the default mode a
model or guide that calls ``pyro.module`` would send a ``param`` message per parameter every step).

    python benchmarks/svi_overhead.py --steps 20

``--method vinnas`` times one stage of VINNAS's Algorithm 1 instead (``--stage weights``, the default, or
``architecture``): *ours* is ``VINNAS.weight_loss`` (the Pyro model and guide with a sample site per weight
tensor and per cell type's alpha, Gaussian local reparameterisation through the messenger, Eq. 8 with every
gamma switched on, ``TraceMeanField_ELBO`` with the registered KL) plus an Adam step; *plain* is the same
super-network whose convolutions and classifier are hand-written locally reparameterised Gaussian layers
(mean ``conv(x, mu)``, variance ``conv(x^2, sigma^2)``), alphas drawn by hand, and the same loss: smoothed
cross-entropy, the Molchanov KLs (of all weights at once, as ours sums the sites of one scale) and the op entropy.

    python benchmarks/svi_overhead.py --method vinnas --steps 20

``--method gdas`` times GDAS's weight step (Dong & Yang, CVPR 2019, Algorithm 1) on the ``gdas-xautodl`` layout
(C = 16, cells ``NNRNRN``, 8 DARTS ops): *ours* is ``GDAS.loss`` (the straight-through Gumbel-softmax proposal's
``rsample`` per cell type, the Pyro model conditioned on it and traced, ``log_prob_sum`` of the ``y`` site, divided
by N) plus an SGD step; *plain* is a copy of the same super-network fed a hand-written straight-through draw
(``one_hot(argmax(A + G)) - soft.detach() + soft``, ``soft = softmax((A + G) / tau)``, Eq. 5-7) and a summed
cross-entropy over N. Both proposals' logits are pinned to one uniformly drawn architecture, so both compute the
same ops every step.

    python benchmarks/svi_overhead.py --method gdas --steps 20
"""

from __future__ import annotations

import argparse
import collections
import copy
import cProfile
import io
import json
import math
import pstats
import statistics
import time
from collections.abc import Callable

import pyro
import torch
import torch.nn.functional as F
from pyro.poutine.messenger import Messenger
from torch import nn
from torch.distributions import kl_divergence
from torch.profiler import ProfilerActivity, profile

from bayesnas.config import SearchConfig, preset
from bayesnas.data import DataBundle, Split
from bayesnas.distributions import SpikeAndSlab, kl_normal_log_uniform_elementwise
from bayesnas.methods.gdas import GDAS
from bayesnas.methods.pgnas import PGNAS
from bayesnas.methods.vinnas import VINNAS
from bayesnas.optimizers import build_optimizer
from bayesnas.spaces.branches import BranchNet, BranchSpaceConfig
from bayesnas.spaces.ops import undilated

DEFAULT_SPACE = {"in_channels": 3, "stem_channels": 32, "widths": [32, 64, 128], "depths": [1, 1, 1],
                 "kernel_sizes": [1, 3, 5]}
# the paper's CIFAR-10 settings (pgnas-cifar10 preset): l^2 = 50, KL over N = 5e5, tau = 1/5, p0 = 0.1
DEFAULT_OPTIONS = {"temperature": 0.2, "init_drop_rate": 0.1, "prior_precision": 50.0,
                   "kl_dataset_size": 500000}


class ConcreteDropoutConv(nn.Module):
    """Plain-PyTorch searchable convolution: ``conv2d(x * eps, m)`` with a relaxed keep mask per example and
    input channel (Eq. 16), one learned drop rate per kernel."""

    def __init__(self, weight: torch.Tensor, drop_logit: torch.Tensor, stride: int, padding: int,
                 temperature: float, min_drop_rate: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.drop_logit = nn.Parameter(drop_logit.detach().clone())
        self.stride, self.padding = stride, padding
        self.temperature, self.min_drop_rate = temperature, min_drop_rate

    def drop_rate(self) -> torch.Tensor:
        return torch.sigmoid(self.drop_logit).clamp(self.min_drop_rate, 1 - self.min_drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.drop_rate()
        u = torch.rand(x.shape[:2], dtype=x.dtype, device=x.device).clamp(1e-6, 1 - 1e-6)
        keep_logit = torch.log1p(-p) - torch.log(p)
        eps = torch.sigmoid((keep_logit + torch.log(u) - torch.log1p(-u)) / self.temperature)
        return F.conv2d(x * eps[:, :, None, None], self.weight, None, self.stride, self.padding)

    def regulariser(self, prior_precision: float) -> torch.Tensor:
        """Eq. 15: ``d^2 (1 - p) / 2 ||m||^2 - K H(p)``."""
        p = self.drop_rate()
        entropy = -(p * torch.log(p) + (1 - p) * torch.log1p(-p))
        return prior_precision * (1 - p) / 2 * self.weight.pow(2).sum() - self.weight.shape[1] * entropy


class PlainPGNAS(nn.Module):
    """The super-network with :class:`ConcreteDropoutConv` in place of every searchable kernel, initialised
    from a :class:`PGNAS` method's current parameters."""

    def __init__(self, method: PGNAS) -> None:
        super().__init__()
        o, guide = method.options, method.guide
        self.prior_precision = float(o.prior_precision)
        self.kl_scale = float(guide.kl_scale)
        self.net = BranchNet(method.space.config)
        self.net.load_state_dict(method.supernet_state())
        self.convs: list[ConcreteDropoutConv] = []
        for layer, conv in list(self.net.searchable()):
            site = f"net.{layer.module_path}.weight"
            new = ConcreteDropoutConv(guide.kernels()[site], guide.drop_logits[site.replace(".", "/")],
                                      conv.stride, conv.padding, guide.temperature, guide.min_drop_rate)
            parent = self.net.get_submodule(layer.module_path.rsplit(".", 1)[0])
            setattr(parent, layer.module_path.rsplit(".", 1)[1], new)
            self.convs.append(new)

    def regulariser(self) -> torch.Tensor:
        return sum(conv.regulariser(self.prior_precision) for conv in self.convs)

    def loss(self, x: torch.Tensor, y: torch.Tensor, num_train: int) -> tuple[torch.Tensor, int]:
        logits = self.net(x)
        nll = F.cross_entropy(logits, y, reduction="sum") * (num_train / len(x))
        loss = (nll + self.kl_scale * self.regulariser()) / num_train
        return loss, int((logits.argmax(-1) == y).sum())

    def param_groups(self) -> list[dict]:
        searchable = {id(p) for c in self.convs for p in c.parameters()}
        return [{"params": [c.weight for c in self.convs]},
                {"params": [c.drop_logit for c in self.convs], "weight_decay": 0.0},
                {"params": [p for p in self.parameters() if id(p) not in searchable]}]


def synthetic_bundle(num_train: int, in_channels: int, image_size: int, num_classes: int) -> DataBundle:
    """A data bundle whose only real content is the training-set size N (tensors are expanded views)."""
    def split(n: int) -> Split:
        x = torch.zeros(1, in_channels, image_size, image_size).expand(n, -1, -1, -1)
        return Split(x, torch.zeros(1, dtype=torch.long).expand(n))

    return DataBundle("synthetic", split(num_train), split(1), split(1), num_classes, in_channels, image_size,
                      "synthetic (benchmark)")


def registered_kl(method: PGNAS) -> torch.Tensor:
    """Sum over kernels of the KL registered for (ConcreteDropout, SpikeAndSlab): what TraceMeanField uses."""
    model, guide = method.model, method.guide
    total = torch.zeros((), device=model.slab_scale.device)
    for site in guide.site_names:
        q = guide.distribution(site)
        total = total + kl_divergence(q, SpikeAndSlab(model.spike_prob, model.slab_scale, q.weight.shape))
    return total


def make_step(loss_fn: Callable[[], tuple[torch.Tensor, int]], optimizer: torch.optim.Optimizer,
              sync: Callable[[], None], clock: Callable[[], float]) -> Callable[[], float]:
    """One timed step: loss (forward), ``.item()`` as the search loop's NaN guard, backward, optimiser step and the
    release of the step's graph."""
    def step() -> float:
        sync()
        tic = clock()
        loss, _ = loss_fn()
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"loss became {value}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        del loss  # the graph is freed inside the timed step for both (not as the function returns, untimed)
        sync()
        return clock() - tic

    return step


def pgnas_steps(args: argparse.Namespace, device: torch.device, sync: Callable[[], None],
                clock: Callable[[], float]) -> tuple[Callable[[], float], Callable[[], float]]:
    """The timed PGNAS step (ours) and its hand-written twin (plain); prints the set-up."""
    space = BranchSpaceConfig.from_dict({"num_classes": args.num_classes, **(args.space or DEFAULT_SPACE)})
    config = SearchConfig(space=space.to_dict(), options=dict(DEFAULT_OPTIONS), precision="fp32")
    data = synthetic_bundle(args.num_train, space.in_channels, args.image_size, args.num_classes)
    method = PGNAS(config, data, device)
    plain = PlainPGNAS(method).to(device)

    # fairness: the hand-written regulariser is the KL that TraceMeanField_ELBO takes from the registry
    with torch.no_grad():
        ours_kl, plain_kl = registered_kl(method), plain.regulariser()
    if not torch.allclose(ours_kl, plain_kl, rtol=1e-5, atol=1e-4):
        raise AssertionError(f"plain regulariser {plain_kl.item()} != registered KL {ours_kl.item()}")

    x = torch.randn(args.batch_size, space.in_channels, args.image_size, args.image_size, device=device)
    y = torch.randint(args.num_classes, (args.batch_size,), device=device)
    index = torch.randperm(args.num_train, device=device)[:args.batch_size]

    for module in (method.model, method.guide, plain):
        module.train()
    sgd = {"lr": config.lr, "momentum": config.momentum, "nesterov": True}
    ours = make_step(lambda: method.training_loss(x, y, index),
                     build_optimizer("sgd", method.param_groups(), **sgd), sync, clock)
    baseline = make_step(lambda: plain.loss(x, y, args.num_train),
                         build_optimizer("sgd", plain.param_groups(), **sgd), sync, clock)

    print(f"device={device} threads={torch.get_num_threads()} clock={args.clock} batch={args.batch_size} "
          f"image={space.in_channels}x{args.image_size}x{args.image_size} "
          f"space={json.dumps(args.space or DEFAULT_SPACE)} "
          f"searchable_kernels={len(plain.convs)} params={sum(p.numel() for p in plain.parameters())}")
    print(f"registered KL (Eq. 15) = {ours_kl.item():.4f}, plain regulariser = {plain_kl.item():.4f}")
    return ours, baseline


# the search step of the vinnas-digits preset: its super-network (K = 10 ops, a reduction and a normal cell with
# 2 states, C = 8) on 1x8x8 images (``--image-size`` defaults to 8 for VINNAS, 32 for PGNAS)
VINNAS_SPACE = {"in_channels": 1, "channels": 8, "layout": "RN", "states": 2}
# every term of Eq. 8 switched on (gamma_1..3 at these end values; the step is timed at the last epoch)
VINNAS_OPTIONS = {"gamma_w": 0.1, "gamma_alpha": 0.1, "gamma_entropy": 31.45, "warmup_epochs": 0}


class PlainLocalGaussian(nn.Module):
    """Plain-PyTorch Gaussian weight with local reparameterisation: ``op(x, mu) + sqrt(op(x^2, sigma^2)) * eps``."""

    def __init__(self, layer: nn.Module, mu: torch.Tensor, log_var: torch.Tensor) -> None:
        super().__init__()
        self.mu = nn.Parameter(mu.detach().clone())
        self.log_var = nn.Parameter(log_var.detach().clone())
        if isinstance(layer, nn.Conv2d):
            self.op, self.args = F.conv2d, (layer.stride, layer.padding, layer.dilation, layer.groups)
            self.bias = None
        else:
            self.op, self.args = F.linear, ()
            self.bias = nn.Parameter(layer.bias.detach().clone())
        self.frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, log_var = (self.mu.detach(), self.log_var.detach()) if self.frozen else (self.mu, self.log_var)
        args = self.args
        if self.op is F.conv2d:  # the convolution our layers compute (same sums, oneDNN's faster form)
            x, *strides = undilated(x, *args[:3])
            args = (*strides, args[3])
        mean = self.op(x, mu, self.bias, *args)
        var = self.op(x * x, torch.exp(log_var), None, *args)
        return mean + torch.sqrt(var.clamp_min(0) + 1e-8) * torch.randn_like(mean)


class PlainVINNAS(nn.Module):
    """The VINNAS super-network with :class:`PlainLocalGaussian` layers and Normal alphas, Eq. 8 by hand,
    initialised from a :class:`VINNAS` method's current parameters."""

    def __init__(self, method: VINNAS) -> None:
        super().__init__()
        guide, o = method.guide, method.options
        self.net = copy.deepcopy(method.model.net)
        self.layers: list[PlainLocalGaussian] = []
        for site in guide.weight_sites:
            path = site.removeprefix("net.").removesuffix(".weight")
            parent, _, name = path.rpartition(".")
            key = site.replace(".", "/")
            new = PlainLocalGaussian(self.net.get_submodule(path), guide.mu_w[key], guide.log_var_w[key])
            setattr(self.net.get_submodule(parent) if parent else self.net, name, new)
            self.layers.append(new)
        self.mu_alpha = nn.ParameterDict({k: nn.Parameter(v.detach().clone()) for k, v in guide.mu_alpha.items()})
        self.log_var_alpha = nn.ParameterDict({k: nn.Parameter(v.detach().clone())
                                               for k, v in guide.log_var_alpha.items()})
        self.clip = method.model.clip  # the zero op's clipping (a plain function of the group and alpha)
        self.smoothing, self.samples = o.label_smoothing, o.entropy_samples
        self.gammas = method.model.gammas
        self.frozen_alpha = True

    def _alpha(self, kind: str, shape: tuple[int, ...] = ()) -> torch.Tensor:
        mu, log_var = self.mu_alpha[kind], self.log_var_alpha[kind]
        if self.frozen_alpha:
            mu, log_var = mu.detach(), log_var.detach()
        alpha = mu + torch.exp(0.5 * log_var) * torch.randn(*shape, *mu.shape, device=mu.device)
        return self.clip(kind, alpha)

    def regularisers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """KL_w and KL_alpha, the stage's frozen tensors detached (as ours detaches them)."""
        def held(t: torch.Tensor, frozen: bool) -> torch.Tensor:
            return t.detach() if frozen else t

        # one elementwise KL over all weights, as ours sums the sites of one scale (registered summed KL)
        mu, log_var = (torch.cat([held(getattr(layer, name), layer.frozen).reshape(-1) for layer in self.layers])
                       for name in ("mu", "log_var"))
        kl_w = kl_normal_log_uniform_elementwise(mu, log_var).sum()
        kl_a = sum(kl_normal_log_uniform_elementwise(held(self.mu_alpha[k], self.frozen_alpha),
                                                     held(self.log_var_alpha[k], self.frozen_alpha)).sum()
                   for k in self.mu_alpha)
        return kl_w, kl_a

    def loss(self, x: torch.Tensor, y: torch.Tensor, num_train: int) -> tuple[torch.Tensor, int]:
        g_w, g_a, g_e = self.gammas
        entropy = 0.0
        for k in self.mu_alpha:
            z = torch.softmax(self._alpha(k, (self.samples,)), -1).mean(0)
            entropy = entropy - torch.xlogy(z, z).sum()
        logits = self.net(x, {k: torch.softmax(self._alpha(k), -1) for k in self.mu_alpha})
        nll = F.cross_entropy(logits, y, label_smoothing=self.smoothing)
        kl_w, kl_a = self.regularisers()
        loss = nll + (g_w * kl_w + g_a * kl_a) / num_train + g_e * entropy
        return loss, int((logits.argmax(-1) == y).sum())


def vinnas_steps(args: argparse.Namespace, device: torch.device, sync: Callable[[], None],
                 clock: Callable[[], float]) -> tuple[Callable[[], float], Callable[[], float]]:
    """The timed VINNAS stage (ours: ``VINNAS.weight_loss`` or ``architecture_loss`` + Adam) and its twin."""
    space = {"num_classes": args.num_classes, "ops": "vinnas", **(args.space or VINNAS_SPACE)}
    config = SearchConfig(method="vinnas", epochs=2, lr=3e-3, space=space, options=dict(VINNAS_OPTIONS),
                          precision="fp32")
    data = synthetic_bundle(args.num_train, space["in_channels"], args.image_size, args.num_classes)
    method = VINNAS(config, data, device)
    method.begin_epoch(config.epochs - 1)
    plain = PlainVINNAS(method).to(device)
    stage = 0 if args.stage == "weights" else 1
    phase = method.phases()[stage]
    num = len(method.weight_half if stage == 0 else method.arch_half)
    plain.frozen_alpha = stage == 0
    for layer in plain.layers:
        layer.frozen = stage == 1

    # fairness: the hand-written KLs are the ones TraceMeanField_ELBO takes from the registry
    with torch.no_grad():
        plain_kl = sum(plain.regularisers())
        ours_kl = sum(method.kl_terms())
    if abs(float(plain_kl) - ours_kl) > 1e-4 * abs(ours_kl):
        raise AssertionError(f"plain KL {float(plain_kl)} != registered KL {ours_kl}")

    x = torch.randn(args.batch_size, space["in_channels"], args.image_size, args.image_size, device=device)
    y = torch.randint(args.num_classes, (args.batch_size,), device=device)
    index = torch.randperm(num, device=device)[:args.batch_size]
    for module in (method.model, method.guide, plain):
        module.train()
    plain_params = ([p for layer in plain.layers for p in layer.parameters()] if stage == 0
                    else [*plain.mu_alpha.values(), *plain.log_var_alpha.values()])

    def ours_loss() -> tuple[torch.Tensor, int]:
        with pyro.validation_enabled(False):  # as the search loop runs every step
            return phase.loss(x, y, index)

    ours = make_step(ours_loss, build_optimizer("adam", phase.param_groups, lr=phase.lr), sync, clock)
    baseline = make_step(lambda: plain.loss(x, y, num), build_optimizer("adam", plain_params, lr=phase.lr), sync, clock)

    print(f"device={device} threads={torch.get_num_threads()} clock={args.clock} batch={args.batch_size} "
          f"image={space['in_channels']}x{args.image_size}x{args.image_size} "
          f"space={json.dumps(args.space or VINNAS_SPACE)} "
          f"stage={args.stage} weight_sites={len(plain.layers)} "
          f"weights={sum(layer.mu.numel() for layer in plain.layers)} gammas={method.model.gammas}")
    print(f"registered KL_w + KL_alpha = {ours_kl:.2f}, plain = {float(plain_kl):.2f}")
    return ours, baseline


# the weight step of the gdas-xautodl preset, as benchmarks/gdas_vs_xautodl.py times it against the authors' code
GDAS_SPACE = {"in_channels": 3, "channels": 16, "layout": "NNRNRN", "states": 4, "stem_multiplier": 3,
              "affine": False}


def straight_through_gumbel(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Hand-written GDAS draw (Eq. 5-7): hard one-hot of ``argmax(A + G)`` forward, ``softmax((A + G) / tau)``
    backward."""
    u = torch.rand_like(logits).clamp(1e-10, 1 - 1e-10)
    soft = torch.softmax((logits - torch.log(-torch.log(u))) / tau, -1)
    hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def gdas_steps(args: argparse.Namespace, device: torch.device, sync: Callable[[], None],
               clock: Callable[[], float]) -> tuple[Callable[[], float], Callable[[], float]]:
    """The timed GDAS weight step (ours) and its hand-written twin (plain); prints the set-up."""
    space = {**(args.space or GDAS_SPACE), "num_classes": args.num_classes}
    config = preset("gdas-xautodl").merged({"space": space, "batch_size": args.batch_size})
    data = synthetic_bundle(args.num_train, space["in_channels"], args.image_size, args.num_classes)
    method = GDAS(config, data, device)
    net = copy.deepcopy(method.model.net)
    generator = torch.Generator().manual_seed(args.seed)
    for logits in method.guide.logits.values():
        pin = torch.randint(0, logits.shape[-1], (logits.shape[0],), generator=generator).view(-1, 1)
        with torch.no_grad():
            logits.fill_(-1e4).scatter_(1, pin.to(logits.device), 1e4)
    plain_logits = {g: a.detach().clone().requires_grad_() for g, a in method.guide.logits.items()}
    size, tau = method.split_sizes["weights"], method.guide.temperature

    def plain_loss() -> tuple[torch.Tensor, int]:
        arch = {g: straight_through_gumbel(a, tau) for g, a in plain_logits.items()}
        logits = net(x, arch)
        return F.cross_entropy(logits, y, reduction="sum") / size, 0

    def ours_loss() -> tuple[torch.Tensor, int]:
        with pyro.validation_enabled(False):  # as the search loop runs every step
            return method.loss(x, y, index, size)

    x = torch.randn(args.batch_size, space["in_channels"], args.image_size, args.image_size, device=device)
    y = torch.randint(args.num_classes, (args.batch_size,), device=device)
    index = torch.randperm(size, device=device)[:args.batch_size]
    sgd = {"lr": config.lr, "momentum": config.momentum, "nesterov": True, "weight_decay": config.weight_decay}
    ours = make_step(ours_loss, build_optimizer("sgd", method.model.parameters(), **sgd), sync, clock)
    baseline = make_step(plain_loss, build_optimizer("sgd", net.parameters(), **sgd), sync, clock)
    print(f"device={device} threads={torch.get_num_threads()} clock={args.clock} batch={args.batch_size} "
          f"image={space['in_channels']}x{args.image_size}x{args.image_size} space={json.dumps(space)} "
          f"decision_groups={dict((g, tuple(a.shape)) for g, a in plain_logits.items())} "
          f"weights={sum(p.numel() for p in net.parameters())}")
    return ours, baseline


STEPS = {"pgnas": pgnas_steps, "vinnas": vinnas_steps, "gdas": gdas_steps}


class MessageCount(Messenger):
    """Counts the Pyro messages (``sample``, ``param``, ``layer``, ...) that pass it."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def _process_message(self, msg: dict) -> None:
        self.counts[msg["type"]] += 1


def op_profile(steps: dict[str, Callable[[], float]], n: int, top: int = 14) -> None:
    """Self CPU milliseconds per step of each operator (torch.profiler over ``n`` steps of each implementation),
    the ``top`` operators by ours' time, the totals, and the messages of one step of ours."""
    per_step = {}
    for name, step in steps.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                step()
        per_step[name] = {e.key: (e.self_cpu_time_total / 1e3 / n, e.count / n) for e in prof.key_averages()}
    ours, plain = per_step["ours"], per_step["plain"]
    print(f"{'operator (self CPU ms per step, calls)':44s} {'ours':>18s} {'plain':>18s}")
    for key in sorted(ours, key=lambda k: -ours[k][0])[:top]:
        (a, ca), (b, cb) = ours[key], plain.get(key, (0.0, 0))
        print(f"{key[:44]:44s} {a:9.1f} ms {ca:6.0f} {b:9.1f} ms {cb:6.0f}")
    totals = {name: sum(t for t, _ in ops.values()) for name, ops in per_step.items()}
    calls = {name: sum(c for _, c in ops.values()) for name, ops in per_step.items()}
    print(f"{'all operators':44s} {totals['ours']:9.1f} ms {calls['ours']:6.0f} {totals['plain']:9.1f} ms "
          f"{calls['plain']:6.0f}")
    with MessageCount() as counter:
        steps["ours"]()
    print("Pyro messages in one step of ours: " + ", ".join(f"{k} {v}" for k, v in counter.counts.most_common()))


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per implementation (all rounds)")
    parser.add_argument("--rounds", type=int, default=0,
                        help="ours/plain alternations the timed steps are split into (0: alternate every step)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each before timing")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--image-size", type=int, default=None, help="default: 32 (PGNAS, GDAS), 8 (VINNAS)")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--num-train", type=int, default=45000, help="training-set size N")
    parser.add_argument("--method", choices=list(STEPS), default="pgnas", help="the search method timed")
    parser.add_argument("--stage", choices=["weights", "architecture"], default="weights",
                        help="VINNAS: the stage of Algorithm 1 timed (theta_w or theta_alpha)")
    parser.add_argument("--space", type=json.loads, default=None,
                        help="JSON space options (default: the method's DEFAULT_SPACE / VINNAS_SPACE)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after timing, cProfile N Pyro steps and print the top functions")
    parser.add_argument("--op-profile", type=int, default=0, metavar="N",
                        help="after timing, torch.profiler over N steps of each: self CPU ms per step of the "
                             "operators, ours against plain, and the Pyro messages of one step of ours")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall-clock time, or this process's CPU time (less disturbed by other load)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.image_size is None:
        args.image_size = 8 if args.method == "vinnas" else 32
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(args.seed)
    clock = time.perf_counter if args.clock == "wall" else time.process_time

    with pyro.settings.context(module_local_params=True):  # Pyro's mode in the search loop (run_search)
        return time_steps(args, device, sync, clock)


def time_steps(args: argparse.Namespace, device: torch.device, sync: Callable[[], None],
               clock: Callable[[], float]) -> float:
    """Build the method's two steps, time them in alternation, print the figures; returns ``ratio``."""
    ours, baseline = STEPS[args.method](args, device, sync, clock)
    for _ in range(args.warmup):
        ours()
        baseline()
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    per_round = math.ceil(args.steps / args.rounds) if args.rounds else 1
    while len(times["plain"]) < args.steps:
        n = min(per_round, args.steps - len(times["plain"]))
        times["ours"] += [ours() for _ in range(n)]
        times["plain"] += [baseline() for _ in range(n)]
    med = {name: statistics.median(t) for name, t in times.items()}
    labels = (("ours", f"ours  (Pyro {args.method.upper()} step)"), ("plain", "plain (hand-written PyTorch)"))
    for name, label in labels:
        print(f"{label}: median {med[name]:.4f} s/step (min {min(times[name]):.4f}, n={len(times[name])})")
    pairs = statistics.median(a / b for a, b in zip(times["ours"], times["plain"], strict=True))
    print(f"median of step-by-step ratios {pairs:.3f}, ratio of minima "
          f"{min(times['ours']) / min(times['plain']):.3f}")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.profile):
            ours()
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        print(text.getvalue())

    if args.op_profile:
        op_profile({"ours": ours, "plain": baseline}, args.op_profile)

    ratio = med["ours"] / med["plain"]
    print(f"ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
