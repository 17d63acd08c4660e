"""Numeric precision and memory format, shared by the search loop and the stand-alone trainer: bf16 autocast
(:func:`precision_context`) and the channels-last format (:func:`channels_last`). ``--precision auto`` is resolved by
measurement, once per machine (:func:`bayesnas.speed.resolve_mode`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

CPUINFO = Path("/proc/cpuinfo")
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""CPU flags (as Linux names them in ``/proc/cpuinfo``) of native bfloat16 arithmetic."""


def cpu_flags(path: Path | None = None) -> frozenset[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux), or ``None`` where they cannot be read."""
    try:
        text = (path or CPUINFO).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 natively (a CPU with ``avx512_bf16`` or ``amx_bf16``, a CUDA device for
    which ``torch.cuda.is_bf16_supported()``): what benchmarks report beside their timings. Native is not always
    faster (one Intel host with AMX trained no faster in bf16), so ``--precision auto`` measures instead
    (:func:`bayesnas.speed.resolve_mode`)."""
    device = torch.device(device)
    if device.type == "cpu":
        flags = cpu_flags()
        return flags is not None and bool(flags & BF16_CPU_FLAGS)
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast for ``bf16`` (convolutions and matrix products in bfloat16; reductions, log-densities and the
    KL terms, computed from fp32 parameters outside autocast's bf16 op list, stay in fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def depthwise_leaves_autocast(x: torch.Tensor) -> bool:
    """Whether a depthwise convolution of ``x`` runs in fp32 although autocast is on: under CPU autocast, where
    oneDNN's bfloat16 depthwise convolutions (forward + backward) are slower than fp32 ones, up to 7x, in 12 of the
    DARTS super-network's 14 shapes (``benchmarks/cpu_convolutions.py``)."""
    return x.device.type == "cpu" and torch.is_autocast_enabled("cpu")


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` where the 4-d ``x`` is laid out channels-last (and not also contiguous), else
    ``torch.contiguous_format``."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


T = TypeVar("T", torch.Tensor, nn.Module)


def channels_last(value: T, enabled: bool = True) -> T:
    """``value`` (a batch of images or a module, converted in place) in channels-last memory format when
    ``enabled``; unchanged otherwise."""
    if not enabled:
        return value
    if isinstance(value, nn.Module):
        return value.to(memory_format=torch.channels_last)
    return value.contiguous(memory_format=torch.channels_last)
