"""Search configuration: one dataclass, presets as data, JSON config files, validation with clear errors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from bayesnas.domains import check_domains, setting
from bayesnas.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class SearchConfig:
    """Everything a search run depends on; saved as ``config.json`` in the run folder."""

    method: str = "pgnas"
    dataset: str = "digits"
    space_name: str = ""
    """The search space (``cells``, ``chain``, ``branches``); empty: the method's default space."""
    space: dict[str, Any] = field(default_factory=dict)
    """Options of the search space (e.g. widths, depths, kernel_sizes for ``branches``)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Method-specific options (validated by the method, see ``bayesnas search --help``)."""
    seed: int = setting(0, "[0, 4294967295]")
    epochs: int = setting(40, "[1, 100000]")
    batch_size: int = setting(64, "[1, 65536]")
    lr: float = setting(0.05, "> 0")
    lr_min: float = setting(0.0, ">= 0")
    momentum: float = setting(0.9, "[0, 1)")
    nesterov: bool = True
    weight_decay: float = setting(0.0, ">= 0")
    grad_clip: float = setting(5.0, ">= 0")
    """Largest gradient norm (0: no clipping)."""
    shift: int = setting(1, "[0, 64]")
    """Training augmentation: random translation by up to this many pixels (0: off)."""
    flip: bool = False
    """Training augmentation: random horizontal flips (for CIFAR, not digits)."""
    val_fraction: float = setting(0.1, "(0, 1)")
    test_fraction: float = setting(0.2, "[0, 1)")
    data_fraction: float = setting(1.0, "(0, 1]")
    data_seed: int | None = setting(None, "[0, 4294967295] or null")
    """Seed of the train/val/test split (null: ``seed``). ``bayesnas bench compare`` fixes it to the population's,
    so that searches of every seed see the split the population was trained and tested on."""
    precision: str = setting("fp32", "{" + ", ".join(PRECISIONS) + "}")
    """``fp32``, ``bf16`` (autocast of the network; KL terms and the loss reduction stay in fp32) or ``auto``
    (``bf16`` where the device computes it natively, else ``fp32``; resolved once per run, see
    :func:`bayesnas.precision.resolve_precision`, and recorded in ``summary.json``)."""
    channels_last: bool = False
    """Keep images and convolution weights in channels-last memory format (faster convolutions on GPUs)."""
    compile: bool = False
    """``torch.compile`` the super-network's forward (falls back to eager with a warning where it fails)."""

    def __post_init__(self) -> None:
        try:
            check_domains(self)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.lr_min > self.lr:
            raise ConfigError(f"lr_min must lie in [0, lr], got {self.lr_min!r} > {self.lr!r}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError("val_fraction + test_fraction must be < 1")

    @property
    def split_seed(self) -> int:
        """The seed of the data split: ``data_seed``, or ``seed`` where it is unset."""
        return self.seed if self.data_seed is None else self.data_seed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "config") -> SearchConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: expected a JSON object of options")
        known = {f.name: f for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ConfigError(f"{origin}: unknown option(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(known)}")
        base = cls()
        for key, value in data.items():
            if known[key].type == "int | None":
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                    raise ConfigError(f"{origin}: option {key!r} must be int or null, got {value!r}")
                continue
            expected = type(getattr(base, key))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                continue
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(f"{origin}: option {key!r} must be {expected.__name__}, got {value!r}")
        return cls(**data)

    def merged(self, overrides: dict[str, Any]) -> SearchConfig:
        """A copy with ``overrides`` applied; ``space`` and ``options`` dictionaries are merged key by key."""
        data = dict(overrides)
        for key in ("space", "options"):
            if key in data:
                if not isinstance(data[key], dict):
                    raise ConfigError(f"option {key!r} must be a JSON object")
                data[key] = {**getattr(self, key), **data[key]}
        SearchConfig.from_dict(data, origin="overrides")
        return replace(self, **data)


PRESETS: dict[str, dict[str, Any]] = {
    # The default: a PGNAS search on scikit-learn's 8x8 digits that takes a few minutes on 2 CPU cores.
    "pgnas-digits": {
        "method": "pgnas", "dataset": "digits", "epochs": 40, "batch_size": 64, "lr": 0.05,
        "space": {"stem_channels": 32, "widths": [32, 64], "depths": [1, 1], "kernel_sizes": [1, 3, 5]},
        # KL weighted as if N were 5e4 (the authors weight it by 10x CIFAR's N for the same reason: with the
        # real N = 1258, d^2 (1-p) / 2N ~ 0.05 is far above the weight-decay range and every p runs to 1);
        # drop-rate logits learn at 10x the weights' lr. Chosen by two 40-epoch runs on seed 0
        # (N_kl 5e5 / drop lr 2: test 0.997 with 2 % fewer parameters; 5e4 / 0.5: 0.994 with 61 % fewer).
        "options": {"temperature": 0.2, "init_drop_rate": 0.1, "prior_precision": 150.0,
                    "kl_dataset_size": 50000, "drop_rate_lr": 0.5, "num_candidates": 100,
                    "baseline_drop_rate": 0.3},
    },
    # The paper's CIFAR-10 search (SupNet-M after shake-shake 26 2x96d; supplement and authors' code):
    # tau = 1/5, p0 = 0.1, l^2 = 50 (SupNet-M), KL over N = 5e5 "to keep it in the weight-decay range",
    # 1500 candidates, no weight decay, SGD with cosine schedule.
    "pgnas-cifar10": {
        "method": "pgnas", "dataset": "cifar10", "epochs": 600, "batch_size": 128, "lr": 0.2, "shift": 4,
        "flip": True,
        "space": {"in_channels": 3, "stem_channels": 16, "widths": [96, 192, 384], "depths": [4, 4, 4],
                  "kernel_sizes": [1, 3, 5, 7]},
        "options": {"temperature": 0.2, "init_drop_rate": 0.1, "prior_precision": 50.0,
                    "kl_dataset_size": 500000, "num_candidates": 1500, "baseline_drop_rate": 0.3},
    },
    # GDAS on digits: 3 small cells (8x8 -> 4x4), the paper's tau 10 -> 1, one architecture per mini-batch.
    # With ~10 weight steps per epoch the paper's schedule (A learning from the start at lr 3e-4) leaves A
    # almost uniform and the cells collapse onto parameter-free pooling ops (seed 0, 30 epochs: test 0.983);
    # 10 weight-only warm-up epochs and arch lr 0.01 make A move (fading 10^25.29 -> 10^24.68, seed 0) and retraining
    # 60 epochs gives the margin.
    "gdas-digits": {
        "method": "gdas", "dataset": "digits", "epochs": 40, "batch_size": 64, "lr": 0.025, "lr_min": 0.001,
        "momentum": 0.9, "nesterov": False, "weight_decay": 3e-4, "grad_clip": 5.0,
        "space": {"channels": 16, "layout": "NRN", "states": 4, "ops": "gdas"},
        "options": {"tau_max": 10.0, "tau_min": 1.0, "warmup_epochs": 10, "arch_lr": 0.01, "retrain_epochs": 60},
    },
    # GDAS as the paper describes it (Sec. 4.1): 8 cells (N=2 per stage, figure), 240 epochs, tau 10 -> 1,
    # SGD lr 0.025 cosine to 0.001, momentum 0.9, wd 3e-4; architecture Adam lr 3e-4, wd 1e-3; retraining
    # 600 epochs with auxiliary towers and drop-path, channels 36 and 20 cells as in DARTS.
    "gdas-paper": {
        "method": "gdas", "dataset": "cifar10", "epochs": 240, "batch_size": 128, "lr": 0.025, "lr_min": 0.001,
        "momentum": 0.9, "nesterov": False, "weight_decay": 3e-4, "grad_clip": 0.0, "shift": 4, "flip": True,
        "space": {"in_channels": 3, "channels": 16, "layout": "NNRNNRNN", "states": 4, "ops": "gdas",
                  "eval_layout": "6NR6NR6N", "eval_channels": 36},
        "options": {"tau_max": 10.0, "tau_min": 1.0, "retrain_epochs": 600, "retrain_lr": 0.025,
                    "retrain_auxiliary": 0.4, "retrain_drop_path": 0.2},
    },
    # GDAS as the authors' code runs it (xautodl 1.0.0): 6 cells [C]*N + [2C] + [2C]*(N-1) + [4C] + [4C]*(N-1),
    # 250 epochs, batch 256, tau 10 -> 0.1, nesterov, wd 5e-4, gradient-norm clip 5.
    "gdas-xautodl": {
        "method": "gdas", "dataset": "cifar10", "epochs": 250, "batch_size": 256, "lr": 0.025, "lr_min": 0.001,
        "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "grad_clip": 5.0, "shift": 4, "flip": True,
        "space": {"in_channels": 3, "channels": 16, "layout": "NNRNRN", "states": 4, "ops": "gdas",
                  "eval_layout": "6NR6NR6N", "eval_channels": 36},
        "options": {"tau_max": 10.0, "tau_min": 0.1, "retrain_epochs": 600, "retrain_lr": 0.025,
                    "retrain_auxiliary": 0.4, "retrain_drop_path": 0.2},
    },
}
PRESETS.update({  # the fixed reduction cell of GDAS Fig. 3 (FRC)
    f"{name}-frc": {**PRESETS[name], "space": {**PRESETS[name]["space"], "fixed_reduction": True}}
    for name in ("gdas-paper", "gdas-xautodl")})
PRESETS.update({
    # PC-NAS on digits: 8x8 -> 4x4 -> 2x2, widths 16/32/64, stem stride 1, no fixed first block or head; the two
    # shape-changing layers are a fixed MBConv_3_3 (a single-path super-network with random transitions learns
    # several times slower on this budget), leaving 5 residual mixops of the small op set (10^5 architectures);
    # warm-up 20 + 5 intervals x 4 epochs, P = 5, S = 20; the paper's optimiser but weight decay 5e-4 (1e-4 is
    # ImageNet's; on 1,258 training images a retrained net reached test 0.983 with 1e-4, 0.992 with 5e-4) and
    # retraining at lr 0.05 (test 0.989-0.994 over 5 runs; 0.981-0.989 at 0.1).
    "pcnas-digits": {
        "method": "pcnas", "dataset": "digits", "epochs": 40, "batch_size": 64, "lr": 0.1, "lr_min": 5e-4,
        "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
        "space": {"stem_channels": 16, "stem_stride": 1, "first_block_channels": 0, "widths": [16, 32, 64],
                  "depths": [2, 3, 2], "strides": [1, 2, 2], "head_channels": 0, "ops": "small",
                  "transition_op": "MBConv_3_3"},
        "options": {"pool_size": 5, "num_evaluations": 20, "warmup_epochs": 20, "interval_epochs": 4,
                    "eval_batch_size": 64, "retrain_epochs": 40, "retrain_lr": 0.05},
    },
    # The paper's settings (Sec. 4.1): 21 mixops in the ProxylessNAS layout, P = 5, S = 900, T_w = 100, T_i = 5
    # (100 + 21 x 5 = 205 epochs by Algorithm 2; the text says 200), SGD nesterov 0.9, cosine 0.1 -> 5e-4,
    # wd 1e-4, batch 512, 10 ms at latency batch 16. On CIFAR-10 (no ImageNet here): 32x32 input, so the stem
    # and the first stage keep the resolution (stride 1) as CIFAR adaptations of MobileNetV2 do.
    "pcnas-small": {
        "method": "pcnas", "dataset": "cifar10", "epochs": 205, "batch_size": 512, "lr": 0.1, "lr_min": 5e-4,
        "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4, "shift": 4, "flip": True,
        "space": {"in_channels": 3, "stem_channels": 32, "stem_stride": 1, "first_block_channels": 16,
                  "widths": [24, 40, 80, 96, 192, 320], "depths": [4, 4, 4, 4, 4, 1], "strides": [1, 2, 2, 1, 2, 1],
                  "head_channels": 1280, "ops": "small"},
        "options": {"pool_size": 5, "num_evaluations": 900, "warmup_epochs": 100, "interval_epochs": 5,
                    "latency_ms": 10.0, "latency_batch_size": 16, "eval_batch_size": 512, "retrain_epochs": 300},
    },
})
PRESETS["pcnas-large"] = {**PRESETS["pcnas-small"], "space": {**PRESETS["pcnas-small"]["space"], "ops": "large"}}
PRESETS.update({
    # The uniform one-shot baseline (Bender et al., ICML 2018; PC-NAS Sec. 4.4) with PC-NAS's digits budget:
    # uniform single-path training for all 40 epochs, then the same pool search on the trained super-network.
    "oneshot-digits": {
        **PRESETS["pcnas-digits"], "method": "oneshot",
        "options": {k: v for k, v in PRESETS["pcnas-digits"]["options"].items()
                    if k not in ("warmup_epochs", "interval_epochs")},
    },
    # Random search (the baseline of DARTS and VINNAS Table II): 8 uniformly random cells of the gdas-digits space,
    # each trained alone for 10 epochs with GDAS's weight optimiser, the best on validation retrained for 60 epochs
    # at lr 0.05 (the retraining of the other digits presets).
    "random-digits": {
        **{k: v for k, v in PRESETS["gdas-digits"].items() if k != "options"}, "method": "random", "epochs": 10,
        "options": {"num_samples": 8, "retrain_epochs": 60, "retrain_lr": 0.05},
    },
})
PRESETS.update({
    # VINNAS on digits (Ferianc et al., arXiv:2007.06103; small enough for 2 CPU cores): a reduction then a normal
    # cell with 2 states each, C = 8 in search, retrained from scratch with C = 16 for 40 epochs. Adam on the weights
    # (cosine) and on alpha (constant), as in the paper. The paper gives no gammas, warm-up or learning rates; ours,
    # from runs on digits (retrained test accuracy / super-network weights left after pruning / normal-cell op types):
    # 20 epochs, gammas (0.1, 0.1, 0.05 in the older units below), arch_lr 3e-3: 0.989 / 39 % / 3, but alpha barely
    # moves (sum H(E_q[z]) stays at its maximum 23.0); arch_lr 0.05: 0.989 / 41 % / 3 (seed 1: 0.994 / 41 % / 3), the
    # entropy falls to 10.5; gamma_w = gamma_alpha = 1 (the plain ELBO): 0.994 but 15 % of the weights left and the
    # super-network's validation accuracy falls from 0.95 to 0.85 (over-pruned: KL of 92 k weights against N = 629
    # examples); 15 epochs with a 4-epoch warm-up (this preset, 25 % less time): 0.992 / 50 % / 2. gamma_1 * (weights)
    # / N ~ 15 is the balance that works here; the paper presets scale by it.
    # gamma_entropy is Eq. 8's gamma_3 as is (the entropy counts once against the NLL summed over the N examples of
    # the architecture half, like the KLs). The runs above used 0.05 in the older units, where the entropy was
    # weighted by gamma_entropy * N; every VINNAS preset keeps that weight: gamma_entropy = 0.05 * N, N = the
    # architecture half, len(train) // 2 (bayesnas.data.DataBundle.halves). Digits: 1797 images - 359 test - 180 val =
    # 1258 train, N = 629: 0.05 * 629 = 31.45.
    "vinnas-digits": {
        "method": "vinnas", "dataset": "digits", "epochs": 15, "batch_size": 64, "lr": 3e-3, "lr_min": 0.0,
        "weight_decay": 0.0, "grad_clip": 5.0,
        "space": {"channels": 8, "layout": "RN", "states": 2, "ops": "vinnas", "eval_channels": 16},
        "options": {"warmup_epochs": 4, "arch_lr": 0.05, "gamma_w": 0.1, "gamma_alpha": 0.1,
                    "gamma_entropy": 31.45, "label_smoothing": 0.1, "retrain_epochs": 40},
    },
    # The paper's settings (Sec. V-A): MNIST one reduction cell with 2 states, 20 search epochs on 25 % of the
    # data (half of it for alpha), z-normalisation only; Adam for weights (cosine) and alpha (constant),
    # log sigma^2 = -10, mu_alpha ~ N(0, 0.001), label smoothing, batch 256; evaluation with the same layout,
    # 100 epochs. Not in the paper, our choices (untested here: no MNIST/CIFAR files on our machines): the
    # warm-up (a quarter of the epochs), gamma_w = gamma_alpha with gamma_1 * (super-network weights) / N ~ 15
    # as on digits (capped at 1, the ELBO), arch_lr with arch_lr * (stage-2 steps) ~ 7 as on digits, and
    # gamma_entropy = 0.05 * N as on digits: 25 % of the 60,000 training images = 15,000, less 10 % val = 13,500
    # train, N = 6,750: 337.5.
    "vinnas-mnist": {
        "method": "vinnas", "dataset": "mnist", "epochs": 20, "batch_size": 256, "lr": 3e-3, "lr_min": 0.0,
        "data_fraction": 0.25, "shift": 0,
        "space": {"in_channels": 1, "channels": 8, "layout": "R", "states": 2, "ops": "vinnas"},
        "options": {"warmup_epochs": 5, "arch_lr": 0.02, "gamma_w": 1.0, "gamma_alpha": 1.0,
                    "gamma_entropy": 337.5, "retrain_epochs": 100, "retrain_batch_size": 256},
    },
    # Fashion-MNIST: NRRN with 3 states, 50 epochs on 50 % of the data, random crops and flips (random erasing
    # is not in our trainer); evaluation with 4x the channels, 200 epochs. Gammas and arch_lr as above;
    # gamma_entropy = 0.05 * N: 50 % of 60,000 = 30,000, less 10 % val = 27,000 train, N = 13,500: 675.
    "vinnas-fashion": {
        "method": "vinnas", "dataset": "fashion-mnist", "epochs": 50, "batch_size": 256, "lr": 3e-3, "lr_min": 0.0,
        "data_fraction": 0.5, "shift": 2, "flip": True,
        "space": {"in_channels": 1, "channels": 8, "layout": "NRRN", "states": 3, "ops": "vinnas",
                  "eval_channels": 32},
        "options": {"warmup_epochs": 12, "arch_lr": 0.005, "gamma_w": 0.3, "gamma_alpha": 0.3,
                    "gamma_entropy": 675.0, "retrain_epochs": 200, "retrain_batch_size": 256},
    },
    # CIFAR-10: NNRNNRNN with 4 states (C = 16), 100 epochs on 50 % of the data; evaluation 6NR6NR6N (20 cells)
    # with 2.5x the channels (40), 300 epochs, crops and flips. Gammas and arch_lr as above;
    # gamma_entropy = 0.05 * N: 50 % of 50,000 = 25,000, less 10 % val = 22,500 train, N = 11,250: 562.5.
    "vinnas-cifar10": {
        "method": "vinnas", "dataset": "cifar10", "epochs": 100, "batch_size": 256, "lr": 3e-3, "lr_min": 0.0,
        "data_fraction": 0.5, "shift": 4, "flip": True,
        "space": {"in_channels": 3, "channels": 16, "layout": "NNRNNRNN", "states": 4, "ops": "vinnas",
                  "eval_layout": "6NR6NR6N", "eval_channels": 40},
        "options": {"warmup_epochs": 25, "arch_lr": 0.003, "gamma_w": 0.03, "gamma_alpha": 0.03,
                    "gamma_entropy": 562.5, "retrain_epochs": 300, "retrain_batch_size": 256},
    },
})
DEFAULT_PRESET = "pgnas-digits"

METHOD_SPACES: dict[str, tuple[str, ...]] = {
    "pgnas": ("branches", "chain"),
    "gdas": ("cells", "chain"),
    "vinnas": ("cells", "chain"),
    "pcnas": ("chain", "cells"),
    "oneshot": ("chain", "cells"),
    "random": ("cells", "chain"),
}
"""The spaces each method's math applies to, its default first (read by the methods and by ``--help``)."""

SPACE_DEFAULTS: dict[str, dict[str, Any]] = {
    "branches": PRESETS["pgnas-digits"]["space"],
    "cells": PRESETS["gdas-digits"]["space"],
    "chain": PRESETS["pcnas-digits"]["space"],
}
"""Space options a preset starts from when ``--space`` moves it to a space other than its own: the digits
settings of the method that owns that space (data shape and image size always come from the data)."""


def on_space(config: SearchConfig, name: str) -> SearchConfig:
    """``config`` searching the space ``name``: its own space options when it already searches that space,
    otherwise :data:`SPACE_DEFAULTS` of ``name``."""
    if name not in SPACE_DEFAULTS:
        raise ConfigError(f"unknown search space {name!r}; choose one of: {', '.join(SPACE_DEFAULTS)}")
    current = config.space_name or METHOD_SPACES.get(config.method, ("",))[0]
    if name == current:
        return replace(config, space_name=name)
    return replace(config, space_name=name, space=dict(SPACE_DEFAULTS[name]))


def preset(name: str) -> SearchConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return SearchConfig().merged(PRESETS[name])


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Options from a JSON file (validated when merged into a config)."""
    from bayesnas.io import DamagedFileError, read_json

    path = Path(path)
    try:
        return read_json(path)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except DamagedFileError as err:
        raise ConfigError(f"{err}; expected a JSON object of options") from None


def build_config(config: SearchConfig | Mapping[str, Any] | str | os.PathLike | None = None, *,
                 preset_name: str | None = None, method: str | None = None, space_name: str | None = None,
                 options: Mapping[str, Any] | None = None, **settings: Any) -> SearchConfig:
    """A search's configuration, built as ``bayesnas search`` builds it: the preset (``preset_name``; default
    ``<method>-digits``, or :data:`DEFAULT_PRESET`), moved to the space ``space_name`` if given (with that space's
    default options), then ``config`` (a :class:`SearchConfig`, a dict of its keys or a JSON file of them), then
    ``settings`` (any other :class:`SearchConfig` key, e.g. ``epochs=10`` or ``space={"channels": 8}``; ``None``
    values are ignored) and ``options`` (method options). ``space`` and ``options`` merge key by key.

    A :class:`SearchConfig` given as ``config`` is the starting point itself (no preset)."""
    if isinstance(config, SearchConfig):
        base, file_options = config, {}
    else:
        file_options = dict(config) if isinstance(config, Mapping) else (
            load_config_file(config) if config is not None else {})
        method = method or file_options.get("method")
        if isinstance(method, str) and method.lower() in METHOD_SPACES:
            method = method.lower()  # GDAS, PCNAS: the papers' spellings
        if method is not None and method not in METHOD_SPACES:
            raise ConfigError(f"unknown method {method!r}; choose one of: {', '.join(METHOD_SPACES)}")
        if preset_name is not None and method is not None and preset_name in PRESETS \
                and PRESETS[preset_name].get("method", "pgnas") != method:
            owner = PRESETS[preset_name].get("method", "pgnas")
            raise ConfigError(f"preset {preset_name!r} belongs to {owner}, not {method}; choose a {method} preset "
                              f"({', '.join(p for p, v in PRESETS.items() if v.get('method') == method)})")
        base = preset(preset_name or (f"{method}-digits" if method else DEFAULT_PRESET))
    space_name = space_name or file_options.get("space_name")
    if space_name:  # a space other than the preset's starts from that space's own settings
        base = on_space(base, space_name)
    if file_options:
        base = base.merged(file_options)
    overrides = {key: value for key, value in settings.items() if value is not None}
    if method is not None:
        overrides["method"] = method
    if options:
        overrides["options"] = dict(options)
    return base.merged(overrides)
