"""The search loop shared by every method.

One loop, whatever the method: mini-batches of the training split (order fixed by seed and epoch), the
method's loss, an SGD step over the method's parameter groups with a cosine schedule, a NaN/inf guard, one
``metrics.jsonl`` row and one atomic checkpoint per epoch, ``resume`` from that checkpoint, then the method's
selection and export. A run folder holds ``config.json``, ``checkpoint.pt``, ``metrics.jsonl``,
``genotype.json``, ``summary.json``, ``posterior.nc`` and PNG plots.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn
from tqdm import tqdm

from bayesnas import diagnostics
from bayesnas.config import SearchConfig
from bayesnas.data import load_dataset
from bayesnas.io import atomic_write, read_jsonl, write_json, write_jsonl
from bayesnas.methods import SearchMethod, get_method
from bayesnas.spaces.branches import count_params
from bayesnas.train import augment, epoch_batches

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


class SearchError(RuntimeError):
    """A search that cannot start or go on; the message is one line for the command line."""


class SearchDivergedError(SearchError):
    pass


class CheckpointError(SearchError):
    pass


def resolve_device(spec: str | torch.device) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    spec = str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise SearchError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SearchError("--device cuda was asked for, but torch sees no CUDA device here")
    return device


@dataclass
class StepEvent:
    """Passed to ``on_step`` after every optimiser step (tests use it to interrupt a run)."""

    epoch: int
    step: int
    loss: float


def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


class Checkpoint:
    """Atomic save/load of everything a search needs to continue exactly where it stopped."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / CHECKPOINT

    def save(self, config: SearchConfig, epoch: int, modules: dict[str, nn.Module],
             optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        state = {
            "format": CHECKPOINT_FORMAT, "config": config.to_dict(), "epoch": epoch,
            "modules": {name: m.state_dict() for name, m in modules.items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write(self.path, lambda fh: fh.write(buffer.getvalue()))

    def load(self, config: SearchConfig, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
             scheduler: Any, device: torch.device) -> int:
        """Restore the state and return the last completed epoch."""
        try:
            state = torch.load(self.path, map_location=device, weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
            raise CheckpointError(f"checkpoint {self.path} is corrupted or unreadable ({type(err).__name__}); "
                                  "delete it to start the search again") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"checkpoint {self.path} is not a bayesnas search checkpoint")
        diff = _config_diff(state["config"], config.to_dict())
        if diff:
            raise CheckpointError(f"checkpoint {self.path} was written for a different configuration "
                                  f"(differs in: {', '.join(diff)})")
        try:
            for name, module in modules.items():
                module.load_state_dict(state["modules"][name])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"checkpoint {self.path} does not match this search "
                                  f"({str(err).splitlines()[0]})") from None
        torch.set_rng_state(state["rng"].cpu())
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        return int(state["epoch"])


def prepare_run_dir(run_dir: Path, config: SearchConfig, resume: bool) -> None:
    """Create the run folder, refusing to overwrite another run's files unless resuming it."""
    saved = run_dir / "config.json"
    if saved.exists():
        if not resume:
            raise SearchError(f"{run_dir} already holds a search run; pass --resume to continue it or "
                              "choose another --out")
        try:
            old = json.loads(saved.read_text())
        except json.JSONDecodeError:
            raise SearchError(f"{saved} is not valid JSON; cannot resume this run") from None
        diff = _config_diff(old, config.to_dict())
        if diff:
            raise CheckpointError(f"{run_dir} was started with a different configuration "
                                  f"(differs in: {', '.join(diff)})")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(saved, config.to_dict())


def _optimizer(config: SearchConfig, method: SearchMethod) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = torch.optim.SGD(method.param_groups(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov and config.momentum > 0,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs, eta_min=config.lr_min)
    return optimizer, scheduler


def run_search(config: SearchConfig, run_dir: str | Path, *, device: str | torch.device = "auto",
               resume: bool = False, data_dir: str | Path | None = None, download: bool = False,
               progress: bool = True, on_step: Callable[[StepEvent], None] | None = None) -> dict[str, Any]:
    """Run (or resume) one search and return its ``summary.json`` content."""
    run_dir = Path(run_dir)
    device = resolve_device(device)
    method_cls = get_method(config.method)  # unknown names fail before anything is written
    data = load_dataset(config.dataset, data_dir=data_dir, download=download, seed=config.seed,
                        val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                        fraction=config.data_fraction).to(device)
    pyro.set_rng_seed(config.seed)
    method = method_cls(config, data, device)  # validates options and space before anything is written
    prepare_run_dir(run_dir, config, resume)
    modules = method.modules()
    optimizer, scheduler = _optimizer(config, method)
    checkpoint = Checkpoint(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    start = 0
    if resume and checkpoint.path.exists():
        start = checkpoint.load(config, modules, optimizer, scheduler, device) + 1
    rows = [r for r in read_jsonl(metrics_path) if r["epoch"] < start]
    write_jsonl(metrics_path, rows)

    params = [p for group in optimizer.param_groups for p in group["params"]]
    steps = math.ceil(len(data.train) / config.batch_size)
    bar = tqdm(total=steps * config.epochs, initial=steps * start, desc=f"{config.method} search",
               disable=not progress, dynamic_ncols=True)
    for epoch in range(start, config.epochs):
        tic, total, correct = time.perf_counter(), 0.0, 0
        for module in modules.values():
            module.train()
        for step, index in enumerate(epoch_batches(len(data.train), config.batch_size, config.seed, epoch,
                                                   device)):
            x = augment(data.train.x[index], config.shift, config.flip)
            with pyro.validation_enabled(False):  # diverged parameters must reach the NaN guard below
                loss, right = method.training_loss(x, data.train.y[index], index)
            value = loss.item()
            if not math.isfinite(value):
                bar.close()
                kept = (f"the last good checkpoint (epoch {epoch - 1}) is kept at {checkpoint.path}"
                        if checkpoint.path.exists() else "no checkpoint was written yet")
                raise SearchDivergedError(f"loss became {value} at epoch {epoch}, step {step}: search stopped; "
                                          f"{kept}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            total += value * len(index)
            correct += right
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{value:.4f}", refresh=False)
            if on_step is not None:
                on_step(StepEvent(epoch, step, value))
        scheduler.step()
        row = {"epoch": epoch, "loss": total / len(data.train), "train_accuracy": correct / len(data.train),
               "val_accuracy": method.accuracy(data.val), "lr": optimizer.param_groups[0]["lr"],
               "seconds": time.perf_counter() - tic, **method.epoch_metrics()}
        bar.set_postfix(epoch=epoch, loss=f"{row['loss']:.4f}", acc=f"{row['train_accuracy']:.3f}",
                        val=f"{row['val_accuracy']:.3f}")
        rows.append(row)
        write_jsonl(metrics_path, rows)
        checkpoint.save(config, epoch, modules, optimizer, scheduler)
    bar.close()
    return finish_search(method, run_dir, rows, progress)


def finish_search(method: SearchMethod, run_dir: Path, rows: list[dict[str, Any]],
                  progress: bool) -> dict[str, Any]:
    """Selection, genotype, summary, posterior export and plots of a trained search."""
    for module in method.modules().values():
        module.eval()
    tic = time.perf_counter()
    selection = method.select(progress)
    select_seconds = time.perf_counter() - tic
    selection.genotype.save(run_dir / "genotype.json")
    method.export(run_dir)
    diagnostics.plot_training(run_dir)
    config = method.config
    summary = {
        "method": config.method, "dataset": config.dataset, "seed": config.seed, "epochs": config.epochs,
        "device": str(method.device),
        "val_accuracy": selection.val_accuracy, "test_accuracy": selection.test_accuracy,
        "params": count_params(selection.network),
        "search_seconds": round(sum(r["seconds"] for r in rows), 2),
        "select_seconds": round(select_seconds, 2),
        "genotype": "genotype.json",
        **selection.extra,
    }
    write_json(run_dir / "summary.json", summary)
    return summary
