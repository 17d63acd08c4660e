"""Search configuration: one dataclass, presets as data, JSON config files, validation with clear errors."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from bayesnas.domains import check_domains, setting
from bayesnas.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "auto")


METHOD_DECLARATIONS = Path(__file__).parent / "methods"
"""Where each built-in method declares its presets and spaces: ``<module>.toml`` beside its ``<module>.py``."""


def read_declarations(folder: Path) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[str, ...]],
                                                dict[str, dict[str, Any]], str]:
    """The presets, the spaces of each method (its default first), each space's default options and the default
    preset that the ``*.toml`` files in ``folder`` declare (plain data, read without importing torch so that
    ``--help`` stays fast). A preset's ``method`` is its file's; ``extends`` names another preset (of any method)
    that it starts from, the keys it gives replacing that preset's (``space`` and ``options`` whole)."""
    declared: dict[str, dict[str, Any]] = {}
    method_spaces: dict[str, tuple[str, ...]] = {}
    space_owners: dict[str, str] = {}
    default = ""
    for path in sorted(folder.glob("*.toml")):
        with path.open("rb") as file:
            declaration = tomllib.load(file)
        method = declaration["method"]
        method_spaces[method] = tuple(declaration["spaces"])
        space_owners.update(declaration.get("space_defaults", {}))
        default = declaration.get("default_preset", default)
        declared.update({name: {"method": method, **settings}
                         for name, settings in declaration.get("presets", {}).items()})

    def resolve(name: str) -> dict[str, Any]:
        settings = dict(declared[name])
        base = settings.pop("extends", None)
        return {**resolve(base), **settings} if base else settings

    presets = {name: resolve(name) for name in declared}
    return presets, method_spaces, {space: presets[name]["space"] for space, name in space_owners.items()}, default


PRESETS, METHOD_SPACES, SPACE_DEFAULTS, DEFAULT_PRESET = read_declarations(METHOD_DECLARATIONS)
"""Named settings (``PRESETS``), the spaces each method's math applies to, its default first (``METHOD_SPACES``,
read by the methods and by ``--help``), the space options a preset starts from when ``--space`` moves it to a space
other than its own (``SPACE_DEFAULTS``: the digits settings of the method that owns that space; data shape and image
size always come from the data) and the default search (``DEFAULT_PRESET``). Methods defined outside the package
join them through :func:`bayesnas.methods.register`."""


@dataclass(frozen=True)
class SearchConfig:
    """Everything a search run depends on; saved as ``config.json`` in the run folder."""

    method: str = PRESETS[DEFAULT_PRESET]["method"]
    """The search method (the default preset's where none is given)."""
    dataset: str = "digits"
    """A named data set (digits, mnist, fashion-mnist, cifar10, cifar100) or the path of your own images (a folder in
    ImageFolder layout or an .npz file; :mod:`bayesnas.user_data`)."""
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
    data_fingerprint: str | None = None
    """Content hash of a user's data set (a folder or ``.npz`` file named as ``dataset``), recorded when a search
    starts; the run then refuses data whose content differs (null: a named data set, or not yet recorded)."""
    data_seed: int | None = setting(None, "[0, 4294967295] or null")
    """Seed of the train/val/test split (null: ``seed``). ``bayesnas bench compare`` fixes it to the population's,
    so that searches of every seed see the split the population was trained and tested on."""
    precision: str = setting("auto", "{" + ", ".join(PRECISIONS) + "}")
    """Of the search-time training (super-networks, random search's candidates): ``auto`` (the fastest of fp32 and
    bf16 autocast, each with and without channels-last, measured once per machine, device and torch version:
    :func:`bayesnas.speed.resolve_mode`), ``fp32`` or ``bf16`` (autocast of the network; KL terms and the loss
    reduction stay in fp32). The mode a run used is recorded in ``summary.json`` (``precision``,
    ``channels_last``, ``mode``); under ``auto`` the final retraining and its test accuracy stay fp32."""
    channels_last: bool = False
    """Keep images and convolution weights in channels-last memory format (faster convolutions on GPUs and on some
    CPUs); under ``auto`` the measurement chooses the format unless this asks for channels-last."""
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
        """The configuration ``data`` describes (every key not given at its default)."""
        return cls().merged(data, origin)

    def merged(self, overrides: dict[str, Any], origin: str = "overrides") -> SearchConfig:
        """A copy with ``overrides`` applied; ``space`` and ``options`` dictionaries are merged key by key. Unknown
        keys are refused in one line naming ``origin``, values of the wrong type or outside their domains in one line
        naming the key."""
        if not isinstance(overrides, dict):
            raise ConfigError(f"{origin}: expected a JSON object of options")
        known = [f.name for f in fields(self)]
        unknown = set(overrides) - set(known)
        if unknown:
            raise ConfigError(f"{origin}: unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(known)}")
        data = dict(overrides)
        for key in ("space", "options"):
            if key in data:
                if not isinstance(data[key], dict):
                    raise ConfigError(f"{origin}: option {key!r} must be a JSON object")
                data[key] = {**getattr(self, key), **data[key]}
        return replace(self, **data)  # its types and domains checked (__post_init__)


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
                and PRESETS[preset_name]["method"] != method:
            owner = PRESETS[preset_name]["method"]
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
