"""Which numeric mode trains fastest on this machine: fp32 or bf16 autocast, each in the default or the channels-last
memory format, measured rather than guessed from CPU flags (one Intel host with AMX trained no faster in bf16).

:func:`measure_modes` times a few SGD steps of one network of the DARTS cells (C = 16, ``NRN``, 28x28 grey images,
batch 32, as a Fashion-MNIST search trains) in each mode after a warm-up step, the modes interleaved in rounds and
each mode's fastest round kept (a busy machine only adds time). :func:`fastest_mode` caches the result per machine
(the CPU model or the GPU's name), device type and torch version in ``<cache>/speed.json``, so the measurement runs
once; ``bayesnas speed`` prints it and ``--refresh`` measures again. :func:`resolve_mode` turns ``--precision auto``
into the measured mode.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bayesnas.config import PRECISIONS
from bayesnas.io import DamagedFileError, cache_dir, read_json, write_json
from bayesnas.precision import CPUINFO, channels_last, precision_context

MODES: dict[str, tuple[str, bool]] = {"fp32": ("fp32", False), "fp32+channels-last": ("fp32", True),
                                      "bf16": ("bf16", False), "bf16+channels-last": ("bf16", True)}
"""Each mode's precision and whether it uses the channels-last memory format."""
SPEED_FILE = "speed.json"


@dataclass(frozen=True)
class SpeedChoice:
    """The fastest mode on one machine, device and torch version, with every mode's seconds per step."""

    machine: str
    mode: str
    seconds: dict[str, float]

    @property
    def precision(self) -> str:
        return MODES[self.mode][0]

    @property
    def channels_last(self) -> bool:
        return MODES[self.mode][1]

    def ratio(self, mode: str) -> float:
        """Seconds per step of ``mode`` over fp32's."""
        return self.seconds[mode] / self.seconds["fp32"]


def machine_key(device: torch.device) -> str:
    """What the measurement holds for: the processor (the CPU model, or the GPU's name), device type and torch."""
    if device.type == "cuda":
        processor = torch.cuda.get_device_name(device)
    else:
        processor = platform.processor() or platform.machine()
        try:
            processor = next((line.partition(":")[2].strip() for line in CPUINFO.read_text().splitlines()
                              if line.startswith("model name")), processor)
        except OSError:
            pass
    return f"{processor} | {device.type} | torch {torch.__version__}"


def measure_modes(device: torch.device, steps: int = 3, rounds: int = 2) -> dict[str, float]:
    """Seconds per SGD step of each of :data:`MODES` (the fastest of ``rounds`` rounds of ``steps`` steps)."""
    from bayesnas.spaces import get_space

    generator = torch.Generator().manual_seed(0)
    space = get_space("cells", {"in_channels": 1, "num_classes": 10, "image_size": 28, "channels": 16,
                                "layout": "NRN", "states": 4})
    genotype = space.random_genotype(generator)
    x = torch.randn(32, 1, 28, 28, generator=generator).to(device)
    y = torch.randint(10, (32,), generator=generator).to(device)
    nets = {mode: channels_last(space.build(genotype).to(device), layout) for mode, (_, layout) in MODES.items()}
    best = {mode: float("inf") for mode in MODES}
    for _ in range(rounds):
        for mode, (precision, layout) in MODES.items():
            net, images = nets[mode], channels_last(x, layout)
            optimizer = torch.optim.SGD(net.parameters(), lr=0.01)

            def step(net: torch.nn.Module = net, images: torch.Tensor = images, precision: str = precision,
                     optimizer: torch.optim.Optimizer = optimizer) -> None:
                optimizer.zero_grad(set_to_none=True)
                with precision_context(precision, device):
                    loss = torch.nn.functional.cross_entropy(net(images).float(), y)
                loss.backward()
                optimizer.step()

            step()  # warm-up: allocation, oneDNN's kernel choice
            _synchronise(device)
            tic = time.perf_counter()
            for _ in range(steps):
                step()
            _synchronise(device)
            best[mode] = min(best[mode], (time.perf_counter() - tic) / steps)
    return best


def fastest_mode(device: torch.device | str, refresh: bool = False,
                 measure: Callable[[torch.device], dict[str, float]] | None = None,
                 path: Path | None = None) -> SpeedChoice:
    """The fastest of :data:`MODES` on ``device``: from the cache where this machine, device type and torch version
    were measured before (unless ``refresh``), else measured by ``measure`` (default :func:`measure_modes`) and
    cached in ``path`` (default ``<cache>/speed.json``)."""
    device = torch.device(device)
    path = path or Path(cache_dir()) / SPEED_FILE
    key = machine_key(device)
    try:
        cached = read_json(path)
    except (FileNotFoundError, DamagedFileError):
        cached = {}
    cached = cached if isinstance(cached, dict) else {}
    entry = cached.get(key)
    valid = isinstance(entry, dict) and set(entry) == set(MODES) and all(
        isinstance(v, float) and v > 0 for v in entry.values())
    if refresh or not valid:
        print(f"bayesnas: timing fp32 and bf16, with and without channels-last, on {device.type} (once per machine; "
              "`bayesnas speed` shows the result)", file=sys.stderr)
        entry = (measure or measure_modes)(device)
        write_json(path, {**cached, key: entry})
    return SpeedChoice(key, min(entry, key=entry.get), dict(entry))


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mode_name(precision: str, channels_last: bool) -> str:
    """The name in :data:`MODES` of a resolved precision and memory format."""
    return precision + ("+channels-last" if channels_last else "")


def resolve_mode(precision: str, channels_last: bool, device: torch.device | str,
                 choose: Callable[[torch.device], SpeedChoice] | None = None) -> tuple[str, bool]:
    """The ``(precision, channels_last)`` a run trains in: as asked for ``fp32`` and ``bf16``; for ``auto`` the
    fastest of :data:`MODES` on ``device`` as measured once per machine (``choose``, default :func:`fastest_mode`),
    among the channels-last ones where ``channels_last`` is asked."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision, channels_last
    seconds = (choose or fastest_mode)(torch.device(device)).seconds
    allowed = {mode: s for mode, s in seconds.items() if MODES[mode][1] or not channels_last}
    return MODES[min(allowed, key=allowed.get)]
