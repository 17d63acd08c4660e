"""The base of every search method: the hooks the search loop calls (:class:`SearchMethod`), a loss phase of a step
(:class:`Phase`), a selection's result (:class:`Selection`), option parsing and the registry (:func:`register`,
:func:`get_method`).

The loop in :mod:`bayesnas.infer` knows nothing of any method. A method says which modules it trains and
checkpoints, how its parameters group for the optimiser, the training loss of one mini-batch, an accuracy
to show while training, how it turns its posterior into one architecture, and what it exports for ArviZ.
"""

from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from bayesnas.config import METHOD_SPACES, PRESETS, ConfigError, SearchConfig
from bayesnas.data import DataBundle, Split
from bayesnas.distributed import SINGLE, World
from bayesnas.errors import BayesNASError
from bayesnas.optimizers import build_optimizer
from bayesnas.spaces import SPACES, Genotype, SearchSpace
from bayesnas.speed import resolve_mode
from bayesnas.training import TrainRecipe, retrain, search_recipe


class UnknownMethodError(BayesNASError, ValueError):
    pass


DATA_SHAPE = ("in_channels", "num_classes", "image_size")
"""The space options the data set fixes."""


def shaped_space(name: str, data: DataBundle, options: Mapping[str, Any], origin: str = "") -> SearchSpace:
    """Space ``name`` shaped by the data (input channels, classes, image size where the space has them), then
    ``options``; one-line :class:`ConfigError` (prefixed by ``origin``) for a bad option."""
    space_type = SPACES[name]
    fields = typing.get_type_hints(space_type)["config"].__dataclass_fields__
    shape = dict(zip(DATA_SHAPE, (data.in_channels, data.num_classes, data.image_size), strict=True))
    try:
        return space_type.from_dict({**{k: v for k, v in shape.items() if k in fields}, **options})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{origin or f'{name} space'}: {err}") from None


@dataclass
class Phase:
    """One update of a search step: a loss on mini-batches of one split, minimised over some parameters.

    PGNAS has one phase on the whole training split; methods that alternate (GDAS, VINNAS) have a weight
    phase on one half and an architecture phase on the other, each with its own optimiser. ``start_epoch``
    delays a phase (warm-up).
    """

    name: str
    split: str
    """``train`` (the whole training split), ``weights`` or ``architecture`` (its two halves)."""
    param_groups: list[dict[str, Any]]
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, int]]
    """``loss(x, y, index) -> (loss per example, number classified right)``."""
    lr: float
    optimizer: str = "sgd"
    """``sgd`` or ``adam``."""
    lr_min: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 0.0
    schedule: str = "cosine"
    """``cosine`` (to ``lr_min`` over the search) or ``constant``."""
    start_epoch: int = 0

    @classmethod
    def sgd(cls, config: SearchConfig, name: str, split: str, param_groups: list[dict[str, Any]],
            loss: Callable[..., tuple[torch.Tensor, int]], **overrides: Any) -> Phase:
        """A phase with the search configuration's SGD settings."""
        settings = {"lr": config.lr, "lr_min": config.lr_min, "momentum": config.momentum,
                    "nesterov": config.nesterov, "weight_decay": config.weight_decay,
                    "grad_clip": config.grad_clip, **overrides}
        return cls(name, split, param_groups, loss, **settings)

    def make_optimizer(self, epochs: int) -> tuple[torch.optim.Optimizer, Any]:
        if self.optimizer == "sgd":
            optimizer = build_optimizer("sgd", self.param_groups, lr=self.lr, momentum=self.momentum,
                                        nesterov=self.nesterov and self.momentum > 0, weight_decay=self.weight_decay)
        elif self.optimizer == "adam":
            optimizer = build_optimizer("adam", self.param_groups, lr=self.lr, betas=self.betas,
                                        weight_decay=self.weight_decay)
        else:
            raise ConfigError(f"phase {self.name!r}: unknown optimizer {self.optimizer!r} (sgd or adam)")
        if self.schedule == "cosine":
            scheduler: Any = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs, eta_min=self.lr_min)
        elif self.schedule == "constant":
            scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        else:
            raise ConfigError(f"phase {self.name!r}: unknown schedule {self.schedule!r} (cosine or constant)")
        return optimizer, scheduler


@dataclass
class Selection:
    """What a method's final selection returns: the architecture and the figures of ``summary.json``."""

    genotype: Genotype
    network: nn.Module
    val_accuracy: float
    test_accuracy: float
    extra: dict[str, Any] = field(default_factory=dict)
    retrained: bool = False
    """Whether ``network`` was trained for the reported accuracies (retrained from scratch, or PGNAS's
    fine-tuning) rather than taken from the super-network; its weights are then saved as ``selected.pt``."""


def parse_options(options_type: type, options: dict[str, Any], method: str) -> Any:
    """Build a method's options dataclass from a dict, with one-line errors for unknown keys; the dataclass checks
    its values' types and domains (:func:`bayesnas.domains.check_domains`)."""
    known = {f.name: f for f in dataclasses.fields(options_type)}
    unknown = set(options) - set(known)
    if unknown:
        config_keys = sorted(unknown & {f.name for f in dataclasses.fields(SearchConfig)})
        if config_keys:  # e.g. --option data_fraction=0.25
            raise ConfigError(f"{', '.join(config_keys)}: a configuration key, not an option of method {method!r}; "
                              f"set it as a key of the configuration (`{config_keys[0]}=...`, or in --config)")
        space_keys = sorted(unknown & {k for space in SPACES.values()
                                       for k in typing.get_type_hints(space)["config"].__dataclass_fields__})
        if space_keys:  # e.g. --option channels=8
            raise ConfigError(f"{', '.join(space_keys)}: a search-space option, not an option of method {method!r}; "
                              f"set it among the space options (--space-option {space_keys[0]}=..., or the space "
                              f"dictionary of a config file or of the API)")
        raise ConfigError(f"method {method!r}: unknown option(s) {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(known)}")
    try:
        return options_type(**options)
    except ValueError as err:
        raise ConfigError(f"method {method!r}: {err}") from None


class SearchMethod(ABC):
    """Hooks of one search method (NASLib-style): the search loop calls only these."""

    name: ClassVar[str]
    options_type: ClassVar[type]
    space_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    """Space options the method sets on a space unless the configuration does (VINNAS: K = 10 ops on cells)."""
    spaces: ClassVar[tuple[str, ...]] = ()
    """The spaces a method registered from outside the package can search, its default first (a built-in method
    declares them in the ``<module>.toml`` beside its module, which ``--help`` reads without importing torch)."""
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    """Presets a method registered from outside the package brings (``<name>-digits`` is the default one; a
    built-in method's are in its ``<module>.toml``)."""
    space_reasons: ClassVar[dict[str, str]] = {}
    """Why the method cannot search a space it leaves out (one line each, for the error); the spaces it can
    search are :data:`bayesnas.config.METHOD_SPACES`."""
    progress_keys: ClassVar[tuple[str, ...]] = ()
    """``epoch_metrics`` keys also shown in the progress bar."""
    preseeded: ClassVar[tuple[str, ...]] = ()
    """Files a new run folder may already hold: caches the method reads instead of measuring (PC-NAS's latency
    table, copied from an earlier run on the same device)."""
    world: World = SINGLE
    """The processes of a distributed search (set by the loop); selections split candidate scoring over it."""

    @classmethod
    def search_spaces(cls) -> tuple[str, ...]:
        """The spaces the method's math applies to, its default first."""
        return METHOD_SPACES[cls.name]

    @classmethod
    def summary_lines(cls, summary: dict[str, Any]) -> list[str]:
        """The lines of this method's own figures in a finished run's ``summary`` that ``bayesnas search`` prints
        after the shared ones (none by default)."""
        return []

    def __init__(self, config: SearchConfig, data: DataBundle, device: torch.device) -> None:
        self.config = config
        self.data = data
        self.device = device
        self.precision, self.channels_last = resolve_mode(config.precision, config.channels_last, device)
        """The run's precision and memory format: ``config.precision`` and ``config.channels_last``, ``auto`` resolved
        to the fastest mode measured on this machine (once per run; the search loop and ``summary.json`` use them,
        ``config.json`` keeps what was asked)."""
        self.options = parse_options(self.options_type, config.options, self.name)

    def check_warmup(self, warmup_epochs: int) -> None:
        """Refuse a warm-up of ``epochs`` or more, which would leave the architecture phase (``start_epoch =
        warmup_epochs``) without a single epoch: one-line :class:`ConfigError` before anything is written."""
        if warmup_epochs >= self.config.epochs:
            raise ConfigError(f"method {self.name!r}: warmup_epochs ({warmup_epochs}) must be below epochs "
                              f"({self.config.epochs}), or the architecture is never trained")

    def build_space(self) -> SearchSpace:
        """The search space of this run: ``config.space_name`` (default: the first of :meth:`search_spaces`)
        shaped by the data and :attr:`space_defaults`, overridden by ``config.space`` (one-line
        :class:`ConfigError` for a space the method cannot search or a bad option)."""
        spaces = self.search_spaces()
        name = self.config.space_name or spaces[0]
        if name not in SPACES:
            raise ConfigError(f"unknown search space {name!r}; choose one of: {', '.join(SPACES)}")
        if name not in spaces:
            reason = self.space_reasons.get(name, f"it searches {' or '.join(spaces)}")
            raise ConfigError(f"method {self.name!r} cannot search the {name!r} space: {reason}")
        return shaped_space(name, self.data, {**self.space_defaults.get(name, {}), **self.config.space},
                            f"{name} space of method {self.name!r}")

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Everything trained and checkpointed, by name."""

    @abstractmethod
    def phases(self) -> list[Phase]:
        """The updates of one search step, in order (the first one's split sets the steps per epoch)."""

    def prepare(self, run_dir: Path, resume: bool) -> None:  # noqa: B027 - optional hook
        """Called once before the run folder is written (so a failure here leaves no trace): load caches a
        resumed or pre-seeded run folder holds (PC-NAS's latency table) and fail early on settings that cannot
        work. Write into ``run_dir`` only from later hooks."""

    def begin_epoch(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Called before each epoch (temperature and KL-weight schedules)."""

    def posterior_attrs(self, **extra: Any) -> dict[str, Any]:
        """Attributes of the exported ``posterior`` group: the method, the seed, the data set and the split's seed
        (``bayesnas diagnose`` labels its chains with them), and ``extra``."""
        c = self.config
        return {"method": self.name, "seed": c.seed, "dataset": c.dataset, "data_seed": c.split_seed, **extra}

    def supernet_state(self) -> dict[str, torch.Tensor] | None:
        """Plain state dict of the trained super-network, from which ``space.build(genotype, inherit=...)`` builds
        any architecture of the space with inherited weights; None where there is none (random search shares
        nothing; VINNAS's weights are Gaussian and its super-network has no BatchNorm to inherit)."""
        return None

    def inherited_network(self, genotype: Genotype) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``genotype`` built with the super-network's weights, as a function from images to logits with BatchNorm
        on batch statistics (a single-path super-network's running averages mix every path; Guo et al., ECCV
        2020); None without a super-network state."""
        from bayesnas.spaces.decisions import on_batch_statistics

        state = self.supernet_state()
        if state is None:
            return None
        return on_batch_statistics(self.space.build(genotype, inherit=state).to(self.device).eval())

    @torch.no_grad()
    def inherited_accuracy(self, genotype: Genotype, split: Split, batch_size: int = 512) -> float | None:
        """Accuracy on ``split`` of :meth:`inherited_network`; None without a super-network state."""
        predict = self.inherited_network(genotype)
        if predict is None:
            return None
        right = sum(int((predict(split.x[i:i + batch_size]).argmax(-1) == split.y[i:i + batch_size]).sum())
                    for i in range(0, len(split), batch_size))
        return right / max(len(split), 1)

    def posterior_network(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """One network drawn from the trained posterior (or proposal) with the super-network's weights, as a
        function from images to logits (:mod:`bayesnas.predictive` averages them); None for a method without a
        posterior over networks. Draws use torch's global random state."""
        return None

    def draw_genotype(self) -> Genotype | None:
        """One discrete architecture drawn from the trained posterior (or proposal), as a genotype to retrain from
        scratch (:mod:`bayesnas.ensembles` builds architecture ensembles from them); None for a method without a
        posterior over architectures. Draws use torch's global random state."""
        return None

    def retrain_recipe(self) -> TrainRecipe:
        """How the method retrains an architecture from scratch (its selected one, an ensemble's members): by
        default the search's own settings with no epochs of its own (a method that fine-tunes instead, PGNAS, has
        none; the caller gives them). Precision and memory format follow :meth:`in_retraining_mode`."""
        return search_recipe(self.config, 0)

    def retrain_build_options(self) -> dict[str, Any]:
        """Options of ``space.build`` for the retrained network (GDAS: auxiliary head, drop-path), so that its
        saved weights (``selected.pt``) load into the same structure."""
        return {}

    def networks(self) -> dict[str, nn.Module]:
        """The plain super-network(s) inside :meth:`modules` whose forward ``--compile`` compiles. Default: the
        model's ``net`` (every method's Pyro model wraps its super-network under that name)."""
        net = getattr(self.modules().get("model"), "net", None)
        return {"net": net} if isinstance(net, nn.Module) else {}

    @abstractmethod
    def accuracy(self, split: Split) -> float:
        """Accuracy of the current posterior's mean network on ``split`` (shown while training)."""

    def epoch_metrics(self) -> dict[str, Any]:
        """Method-specific figures logged each epoch in ``metrics.jsonl``."""
        return {}

    @abstractmethod
    def select(self, progress: bool = True) -> Selection:
        """Turn the trained posterior into one architecture."""

    def retrain_selected(self, space: SearchSpace, genotype: Genotype, recipe: TrainRecipe, progress: bool,
                         **build_options: Any) -> tuple[nn.Module, float, float]:
        """``(network, val acc, test acc)`` of the selected ``genotype``: retrained from scratch by ``recipe``; with
        ``recipe.epochs == 0`` built untrained (for its size) with the super-network's accuracy, for callers that
        retrain it themselves under their own budget (``bayesnas bench``). The retraining runs in
        :meth:`in_retraining_mode`."""
        recipe = self.in_retraining_mode(recipe)
        if recipe.epochs:
            return retrain(space, genotype, self.data.train, self.data.val, self.data.test, recipe, self.config.seed,
                           progress, **build_options)
        net = space.build(genotype, **build_options).to(self.device)
        return net, self.accuracy(self.data.val), self.accuracy(self.data.test)

    def in_retraining_mode(self, recipe: TrainRecipe) -> TrainRecipe:
        """``recipe`` in the run's memory format and, where the configuration asked for a precision, in that one;
        under ``auto`` in fp32, so that the retrained network and every test accuracy reported of it do not depend
        on which mode a machine measured fastest (every retraining and fine-tuning of a method goes through
        here)."""
        precision = "fp32" if self.config.precision == "auto" else self.precision
        return dataclasses.replace(recipe, precision=precision, channels_last=self.channels_last)

    @abstractmethod
    def export(self, run_dir: Path) -> list[Any] | None:
        """Write the posterior (ArviZ NetCDF) and method-specific plots into the run folder; return the
        architecture of each draw of its ``posterior`` group, in draw order, for :meth:`draw_network` (None: no
        draws of networks), so that the ``log_likelihood`` group scores the same draws."""

    def draw_network(self, draw: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The network of one draw that :meth:`export` returned, made as :meth:`posterior_network` makes a fresh
        one; None for a method without a posterior over networks."""
        return None


METHODS: dict[str, type[SearchMethod]] = {}


def register(cls: type[SearchMethod]) -> type[SearchMethod]:
    """Class decorator: make ``cls`` a method of ``bayesnas search --method NAME`` and of the API. A method
    defined outside the package declares its spaces and presets on the class (:attr:`SearchMethod.spaces`,
    :attr:`SearchMethod.presets`); they join :data:`bayesnas.config.METHOD_SPACES` and
    :data:`bayesnas.config.PRESETS` here."""
    if cls.name not in METHOD_SPACES:
        if not cls.spaces:
            raise TypeError(f"method {cls.name!r} declares no `spaces` it can search")
        METHOD_SPACES[cls.name] = tuple(cls.spaces)
    for name, settings in cls.presets.items():
        settings = {**settings, "method": cls.name}
        if PRESETS.get(name, settings) != settings:
            raise TypeError(f"method {cls.name!r}: preset {name!r} is already another one")
        PRESETS[name] = settings
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[SearchMethod]:
    if name not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]
