"""Latency lookup table of the chain space, measured on the current device, and a FLOPs proxy.

PC-NAS (Li et al. 2019, Sec. 3.3, 4.1) imposes a hard latency limit measured on the target GPU at batch 16.
As in ProxylessNAS and FBNet, the latency of an architecture is the sum of a per-(decision, option) lookup
table (decision ``i`` is mixop ``i`` of :meth:`~bayesnas.spaces.chain.ChainSpace.decisions`, its options the
mixop's op names) plus the fixed parts (stem, first block, head, classifier): each entry is the minimum of a few
timed forward passes of that module alone, at its input shape, after warm-up runs, with CUDA synchronised
around each timing (the minimum, not the median: other work on a busy machine only ever adds time, so the
minimum is the figure an idle machine reproduces; the table records the torch threads used). A table measured
elsewhere can be reused (:func:`load_table_file`), and :meth:`LatencyTable.flops_proxy` replaces the times by
millions of multiply-adds, which need no timing at all. The table is cached as ``latency.json`` (in the run
folder) and reused whenever the device, batch size and space configuration match, so a resumed search or a second
one sees the same numbers and measures nothing. The multiply-accumulate count of every entry (the FLOPs proxy) is
stored beside it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bayesnas.io import DamagedFileError, read_json, write_json
from bayesnas.spaces.chain import ChainNet, ChainSpace, layout
from bayesnas.spaces.profile import count_flops

LATENCY_FILE = "latency.json"
TABLE_FORMAT = 1
BATCH_SIZE = 16
"""Images per timed pass where none is given (PC-NAS Sec. 4.1: batch 16)."""
RUNS = 7
"""Timed passes per entry where none is given; the fastest is kept (a busy machine only adds time)."""


def time_module(module: nn.Module, x: torch.Tensor, runs: int = 7, warmup: int = 2) -> float:
    """Minimum wall time in milliseconds of ``runs`` calls of ``module(x)`` after ``warmup`` calls (no grad, eval
    mode, CUDA synchronised)."""
    cuda = x.device.type == "cuda"
    times = []
    with torch.no_grad():
        for i in range(warmup + runs):
            if cuda:
                torch.cuda.synchronize(x.device)
            tic = time.perf_counter()
            module(x)
            if cuda:
                torch.cuda.synchronize(x.device)
            if i >= warmup:
                times.append((time.perf_counter() - tic) * 1e3)
    return float(min(times))


@dataclass
class LatencyTable:
    """``ms[i][op]`` and ``macs[i][op]`` per decision ``i`` (mixop ``i``) and option (op name), plus the fixed
    parts' ``fixed_ms``/``fixed_macs``."""

    device: str
    batch_size: int
    space: dict[str, Any]
    fixed_ms: float
    fixed_macs: int
    ms: list[dict[str, float]]
    macs: list[dict[str, int]]
    format: int = TABLE_FORMAT
    source: str = "measured"
    """How the table was obtained (``measured here, minimum of N runs``, ``file PATH``, ``flops proxy``)."""

    def latency(self, ops: Sequence[str]) -> float:
        """Latency in ms of one architecture (one op name per mixop): fixed parts plus the table's entries."""
        return self.fixed_ms + sum(self.ms[i][op] for i, op in enumerate(ops))

    def flops(self, ops: Sequence[str]) -> int:
        return self.fixed_macs + sum(self.macs[i][op] for i, op in enumerate(ops))

    def costs(self, space: ChainSpace) -> list[list[float]]:
        """Per-decision latency of each option, in the decision's option order (what the proposals index)."""
        return [[self.ms[i][op] for op in d.options] for i, d in enumerate(space.decisions())]

    def fastest(self) -> float:
        return self.fixed_ms + sum(min(row.values()) for row in self.ms)

    def matches(self, space: ChainSpace, device: torch.device, batch_size: int) -> bool:
        return (self.format == TABLE_FORMAT and self.device == device_name(device) and self.batch_size == batch_size
                and self.space == space.config.to_dict())

    def flops_proxy(self) -> LatencyTable:
        """This table with millions of multiply-adds in place of milliseconds (a limit is then in M MACs)."""
        return dataclasses.replace(
            self, device="flops proxy (millions of multiply-adds)", fixed_ms=self.fixed_macs / 1e6,
            ms=[{op: m / 1e6 for op, m in row.items()} for row in self.macs], source="flops proxy")

    def matches_file(self, path: str | Path) -> bool:
        """Whether ``path`` holds this very table."""
        return _read(path) == self

    def save(self, path: str | Path) -> None:
        write_json(Path(path), asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        data = read_json(Path(path))
        try:
            table = cls(**data)
        except TypeError:
            raise DamagedFileError(f"{path} is not a latency table (its keys: {', '.join(sorted(data))})") from None
        numbers = [table.fixed_ms, *(v for row in table.ms if isinstance(row, dict) for v in row.values())]
        if not isinstance(table.ms, list) or not all(isinstance(row, dict) for row in table.ms) \
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                           for v in numbers):
            raise DamagedFileError(f"{path} is not a latency table: its entries must be finite, non-negative "
                                   "milliseconds per op")
        return table


def device_name(device: torch.device) -> str:
    """The device kind a table was measured on (the GPU's name on CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:{torch.get_num_threads()} threads"


def measure(space: ChainSpace, device: torch.device, batch_size: int = BATCH_SIZE, runs: int = RUNS,
            warmup: int = 2, timed: bool = True) -> LatencyTable:
    """Time every (decision, option) of ``space`` and its fixed parts on ``device`` at ``batch_size`` (with
    ``timed=False`` only count their multiply-adds: every time is 0)."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # leave the caller's streams
        torch.manual_seed(0)
        table = _measure(space, device, batch_size, runs if timed else 0, warmup if timed else 0)
    return dataclasses.replace(table, source=f"measured here, minimum of {runs} runs" if timed else "counted")


def _measure(space: ChainSpace, device: torch.device, batch_size: int, runs: int, warmup: int) -> LatencyTable:
    def time_of(module: nn.Module, x: torch.Tensor) -> float:
        return time_module(module, x, runs, warmup) if runs else 0.0

    net: ChainNet = space.supernet().to(device).eval()
    c = space.config
    _, shapes = layout(c)
    x = torch.randn(batch_size, c.in_channels, c.image_size, c.image_size, device=device)
    h = torch.randn(batch_size, shapes["last"], shapes["last_resolution"], shapes["last_resolution"], device=device)
    stem, head = nn.Sequential(net.stem, net.first), nn.Sequential(net.head, net.classifier)
    fixed_ms = time_of(stem, x) + time_of(head, h)
    fixed_macs = count_flops(stem, x.shape[1:]) + count_flops(head, h.shape[1:])
    ms, macs = [], []
    for block, spec in zip(net.blocks, space.blocks(), strict=True):
        inputs = torch.randn(batch_size, *spec.input_shape, device=device)
        times = {op: round(time_of(block.ops[op], inputs), 5) for op in spec.ops}
        counts = {op: count_flops(block.ops[op], spec.input_shape) for op in spec.ops}
        if spec.searchable:
            ms.append(times)
            macs.append(counts)
        else:  # a fixed transition block: part of every architecture
            fixed_ms += sum(times.values())
            fixed_macs += sum(counts.values())
    return LatencyTable(device_name(device), batch_size, c.to_dict(), round(fixed_ms, 5), fixed_macs, ms, macs)


def load_or_measure(space: ChainSpace, path: str | Path | None, device: torch.device,
                    batch_size: int = BATCH_SIZE, runs: int = RUNS, write: bool = True) -> LatencyTable:
    """The table cached at ``path`` when it was measured for this space, device and batch size; otherwise a
    fresh measurement, written to ``path`` when ``write`` (and a path) is given."""
    table = _read(path)
    if table is not None and table.matches(space, device, batch_size):
        return table
    table = measure(space, device, batch_size, runs)
    if path is not None and write:
        table.save(path)
    return table


def _read(path: str | Path | None) -> LatencyTable | None:
    if path is None or not Path(path).exists():
        return None
    try:
        return LatencyTable.load(path)
    except (ValueError, TypeError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        return None


def load_table_file(path: str | Path, space: ChainSpace, batch_size: int) -> LatencyTable:
    """A table measured elsewhere (another run's ``latency.json``, or ``bayesnas latency --out``), for this space
    and batch size on any device; one-line :class:`~bayesnas.config.ConfigError` when it is not one."""
    from bayesnas.config import ConfigError

    if not Path(path).is_file():
        raise ConfigError(f"latency table {path} not found")
    table = _read(path)
    if table is None or table.format != TABLE_FORMAT:
        raise ConfigError(f"{path} is not a latency table of this version")
    if table.space != space.config.to_dict() or table.batch_size != batch_size:
        raise ConfigError(f"latency table {path} was measured for another space or batch size "
                          f"(batch {table.batch_size}); measure one for this configuration")
    return dataclasses.replace(table, source=f"file {path} ({table.source} on {table.device})")
