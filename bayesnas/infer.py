"""The search loop shared by every method.

One loop, whatever the method: mini-batches of the training split (order fixed by seed and epoch), the
method's loss, an SGD step over the method's parameter groups with a cosine schedule, a NaN/inf guard, one
``metrics.jsonl`` row and one atomic checkpoint per epoch, ``resume`` from that checkpoint, then the method's
selection and export. A run folder holds ``config.json``, ``checkpoint.pt``, ``metrics.jsonl``,
``genotype.json``, ``summary.json``, ``posterior.nc`` and PNG plots.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn
from tqdm import tqdm

from bayesnas import diagnostics
from bayesnas.compute import count_passes
from bayesnas.config import SearchConfig
from bayesnas.data import DataBundle, Split, load_dataset
from bayesnas.distributed import SINGLE, World, agree, synchronise_batchnorm, world_of
from bayesnas.drawing import ARCHITECTURE_FILE, draw_genotype
from bayesnas.io import DamagedFileError, flat_figures, read_jsonl, write_json, write_jsonl
from bayesnas.methods import Phase, SearchMethod, get_method
from bayesnas.precision import channels_last, precision_context
from bayesnas.predictive import add_predictive_groups
from bayesnas.search_folder import (
    CHECKPOINT,
    SELECTED_WEIGHTS,
    Checkpoint,
    SearchError,
    prepare_run_dir,
    save_tensors,
)
from bayesnas.spaces.profile import count_params
from bayesnas.speed import fastest_mode, mode_name
from bayesnas.training import augment, epoch_batches
from bayesnas.user_data import BadDataError


class SearchDivergedError(SearchError):
    """A loss, a trained tensor or a logged figure became NaN or infinite: the search stopped."""


def resolve_device(spec: str | torch.device) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    spec = str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise SearchError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise SearchError(f"device {spec!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SearchError("`device='cuda'` was asked for, but torch sees no CUDA device here")
    return device


@dataclass
class StepEvent:
    """Passed to ``on_step`` after every optimiser step (tests use it to interrupt a run)."""

    epoch: int
    step: int
    loss: float


def config_data(config: SearchConfig, device: torch.device, data_dir: str | os.PathLike | None = None,
                download: bool = False) -> DataBundle:
    """The data split ``config`` searches on (its data set, fractions and split seed), on ``device``; a user's data
    set whose content differs from the one the configuration recorded (``data_fingerprint``) is refused."""
    data = load_dataset(config.dataset, data_dir=data_dir, download=download, seed=config.split_seed,
                        val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                        fraction=config.data_fraction)
    if config.data_fingerprint is not None and data.fingerprint != config.data_fingerprint:
        raise BadDataError(f"{config.dataset} changed since this run used it (content {data.fingerprint}, recorded "
                           f"{config.data_fingerprint}); restore that data or start a new run")
    return data.to(device)


def load_trained(config: SearchConfig, run_dir: str | Path, data: DataBundle, device: torch.device) -> SearchMethod:
    """The method of a finished search with its trained modules restored from the run's checkpoint, in eval mode
    (``bayesnas rank`` and ``bayesnas bench compare`` evaluate architectures with its super-network)."""
    run_dir = Path(run_dir)
    method = get_method(config.method)(config, data, device)
    method.prepare(run_dir, True)
    state = torch.load(run_dir / CHECKPOINT, map_location=device, weights_only=True)
    for name, module in method.modules().items():
        module.load_state_dict(state["modules"][name])
        module.eval()
    return method


def run_search(config: SearchConfig, run_dir: str | Path, *, device: str | torch.device = "auto",
               resume: bool = False, data_dir: str | Path | None = None, download: bool = False,
               progress: bool = True, on_step: Callable[[StepEvent], None] | None = None,
               alone: bool = False, log_epochs: bool = False) -> dict[str, Any]:
    """Run (or resume) one search and return its ``summary.json`` content.

    Under ``torchrun`` the search runs over all processes (:mod:`bayesnas.distributed`); only rank 0 writes; with
    ``alone`` it runs in this process only, as without ``torchrun`` (``bayesnas bench compare`` gives whole
    searches to ranks). The run is in Pyro's ``module_local_params`` mode (every ``PyroModule`` keeps its
    parameters, none reach the global param store), scoped to this call: the caller's Pyro settings and param store
    are as they were afterwards.
    """
    worlds = contextlib.nullcontext((SINGLE, resolve_device(device))) if alone else world_of(resolve_device(device))
    with pyro.settings.context(module_local_params=True), worlds as (world, device):
        agree(world, {**config.to_dict(), "resume": resume}, f"search into {run_dir}")
        return _run_search(config, Path(run_dir), device, world, resume, data_dir, download,
                           progress and world.is_main, on_step, log_epochs and world.is_main)


def _run_search(config: SearchConfig, run_dir: Path, device: torch.device, world: World, resume: bool,
                data_dir: str | Path | None, download: bool, progress: bool,
                on_step: Callable[[StepEvent], None] | None, log_epochs: bool) -> dict[str, Any]:
    method_cls = get_method(config.method)  # unknown names fail before anything is written
    data = config_data(config, device, data_dir, download)
    config = replace(config, data_fingerprint=data.fingerprint)  # a user's data set: pinned from now on
    pyro.set_rng_seed(config.seed)
    if config.precision == "auto" and world.distributed:  # one measurement, read back from the cache by every rank
        if world.is_main:
            fastest_mode(device)
        world.barrier()
    method = method_cls(config, data, device)  # validates options and space before anything is written
    agree(world, {"mode": mode_name(method.precision, method.channels_last)}, f"numeric mode of {run_dir}")
    method.world = world
    method.prepare(run_dir, resume)
    lock = prepare_run_dir(run_dir, config, resume, method.preseeded) if world.is_main else None
    try:
        return _train_and_finish(config, run_dir, method, data, device, world, resume, progress, on_step,
                                 log_epochs)
    finally:
        if lock is not None:
            lock.release()


def _train_and_finish(config: SearchConfig, run_dir: Path, method: SearchMethod, data: DataBundle,
                      device: torch.device, world: World, resume: bool, progress: bool,
                      on_step: Callable[[StepEvent], None] | None, log_epochs: bool) -> dict[str, Any]:
    world.barrier()
    modules = method.modules()
    for module in modules.values():
        if world.distributed:
            synchronise_batchnorm(module)
        channels_last(module, method.channels_last)
    if config.compile:
        compile_networks(method.networks())
    phases = method.phases()
    optimizers = {phase.name: phase.make_optimizer(config.epochs) for phase in phases}
    checkpoint = Checkpoint(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    start = 0
    if resume and checkpoint.path.exists():
        start = checkpoint.load(config, modules, optimizers, device) + 1
    rows = read_jsonl(metrics_path)
    if any(isinstance(r.get("epoch"), bool) or not isinstance(r.get("epoch"), int) for r in rows):
        raise DamagedFileError(f"{metrics_path} holds a row without an integer epoch: not this run's metrics")
    rows = [r for r in rows if r["epoch"] < start]
    if start and world.is_main:  # on stdout, with the results: stderr holds errors only
        print(f"resuming {run_dir} from epoch {start} of {config.epochs}", flush=True)
    if world.is_main:
        write_jsonl(metrics_path, rows)

    weight_half, arch_half = data.halves(config.seed)
    splits = {"train": data.train, "weights": weight_half, "architecture": arch_half}
    steps = math.ceil(len(splits[phases[0].split]) / config.batch_size)
    bar = tqdm(total=steps * config.epochs, initial=steps * start, desc=f"{config.method} search",
               disable=not progress, dynamic_ncols=True)
    with count_passes() as passes:  # example-passes per epoch, the search's machine-independent compute
        for epoch in range(start, config.epochs):
            counted = passes.as_dict()
            method.begin_epoch(epoch)  # PC-NAS shrinks its pool here: its evaluations are this epoch's compute
            tic = time.perf_counter()
            totals = {phase.name: [0.0, 0, 0] for phase in phases}  # loss sum, right, examples
            for module in modules.values():
                module.train()
            active = [(i, p) for i, p in enumerate(phases) if epoch >= p.start_epoch]
            batches = {p.name: epoch_batches(len(splits[p.split]), config.batch_size, config.seed + 7919 * i, epoch,
                                             device) for i, p in active}
            for step in range(steps):
                for _, phase in active:
                    index = batches[phase.name][step % len(batches[phase.name])]
                    value, right = _update(phase, optimizers[phase.name][0], splits[phase.split], index, config,
                                           (method.precision, method.channels_last), world)
                    if not math.isfinite(value):
                        bar.close()
                        raise SearchDivergedError(f"{phase.name} loss became {value} at epoch {epoch}, step {step}: "
                                                  f"search stopped; {_last_good(checkpoint, epoch)}")
                    total = totals[phase.name]
                    total[0] += value * len(index)
                    total[1] += right
                    total[2] += len(index)
                    if on_step is not None:
                        on_step(StepEvent(epoch, step, value))
                bar.update()
                bar.set_postfix(epoch=epoch, loss=f"{value:.4f}", refresh=False)
            bad = non_finite_tensor(modules)  # before anything reads the state (a NaN logit breaks a distribution)
            if bad is not None:
                bar.close()
                raise SearchDivergedError(f"{bad} became NaN or infinite in epoch {epoch} (the loss stayed finite): "
                                          f"search stopped; {_last_good(checkpoint, epoch)}")
            for _, phase in active:  # a phase still in its warm-up keeps its schedule where it is
                optimizers[phase.name][1].step()
            first = totals[phases[0].name]
            figures = flat_figures(method.epoch_metrics())  # the method's own work (random search: validation)
            with passes.pause():  # the progress display's accuracy is not the method's compute
                val_accuracy = method.accuracy(data.val)
            row = {"epoch": epoch, "loss": first[0] / first[2], "train_accuracy": first[1] / first[2],
                   "val_accuracy": val_accuracy, "lr": optimizers[phases[0].name][0].param_groups[0]["lr"],
                   "seconds": time.perf_counter() - tic,
                   **{k: int(v) for k, v in zip(counted, world.sum([v - counted[k] for k, v in
                                                                    passes.as_dict().items()]), strict=True)}}
            for phase in phases[1:]:
                loss_sum, right, n = totals[phase.name]
                row[f"{phase.name}_loss"] = loss_sum / n if n else None
                row[f"{phase.name}_accuracy"] = right / n if n else None
            row.update(figures)
            bar.set_postfix(epoch=epoch, loss=f"{row['loss']:.4f}", acc=f"{row['train_accuracy']:.3f}",
                            val=f"{row['val_accuracy']:.3f}", **{k: row[k] for k in method.progress_keys})
            bad = non_finite_figure(row)
            if bad is not None:
                bar.close()
                raise SearchDivergedError(f"the logged figure {bad} became NaN or infinite in epoch {epoch}: search "
                                          f"stopped; {_last_good(checkpoint, epoch)}")
            rows.append(row)
            if world.is_main:
                write_jsonl(metrics_path, rows)
                checkpoint.save(config, epoch, modules, optimizers)
            if log_epochs:  # a batch job's log: one line per epoch instead of the bar
                print(f"epoch {epoch + 1}/{config.epochs}: loss {row['loss']:.4f}, train accuracy "
                      f"{row['train_accuracy']:.4f}, val accuracy {row['val_accuracy']:.4f}, "
                      f"{row['seconds']:.1f} s", flush=True)
            world.barrier()
    bar.close()
    return finish_search(method, run_dir, rows, progress)


def _last_good(checkpoint: Checkpoint, epoch: int) -> str:
    return (f"the last good checkpoint (epoch {epoch - 1}) is kept at {checkpoint.path}"
            if checkpoint.path.exists() else "no checkpoint was written yet")


def non_finite_tensor(modules: dict[str, nn.Module]) -> str | None:
    """The name (``module.key``) of the first floating-point tensor of the modules' state (weights, guide and
    proposal parameters, architecture logits, BatchNorm statistics) holding NaN or infinity; None if all finite."""
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                return f"{name}.{key}"
    return None


def non_finite_figure(row: Any, prefix: str = "") -> str | None:
    """The key path of the first NaN or infinite number in a metrics row (nested dicts and lists); None if all
    finite."""
    if isinstance(row, dict):
        items = row.items()
    elif isinstance(row, list | tuple):
        items = ((str(i), v) for i, v in enumerate(row))
    else:
        return prefix if isinstance(row, float) and not math.isfinite(row) else None
    for key, value in items:
        bad = non_finite_figure(value, f"{prefix}.{key}" if prefix else str(key))
        if bad is not None:
            return bad
    return None


def compile_networks(networks: dict[str, nn.Module], backend: str | None = None) -> None:
    """``torch.compile`` each network's forward in place; a network whose compiled forward fails on its first
    call (a Pyro construct dynamo cannot trace) warns once and runs eagerly from then on."""
    for name, net in networks.items():
        eager = net.forward
        compiled = torch.compile(eager, backend=backend or COMPILE_BACKEND)

        def forward(*args: Any, _net: nn.Module = net, _name: str = name, _compiled: Callable = compiled,
                    _eager: Callable = eager, **kwargs: Any) -> Any:
            try:
                return _compiled(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
                warnings.warn(f"--compile: torch.compile failed on {_name} ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); running it eagerly",
                              RuntimeWarning, stacklevel=2)
                _net.forward = _eager
                return _eager(*args, **kwargs)

        net.forward = forward


COMPILE_BACKEND = "inductor"


def _update(phase: Phase, optimizer: torch.optim.Optimizer, split: Split, index: torch.Tensor,
            config: SearchConfig, mode: tuple[str, bool], world: World = SINGLE) -> tuple[float, int]:
    """One optimiser step of ``phase`` on the global mini-batch ``index`` of ``split``; returns the loss and
    number right over the whole batch. Each rank computes the loss of its shard, weighted by ``M_r / M``, and the
    gradients are summed over ranks (see :mod:`bayesnas.distributed`; one process: weight 1, no collectives).
    ``mode``: the run's resolved precision and memory format (``SearchMethod.precision``, ``.channels_last``)."""
    precision, layout = mode
    local = world.shard(index)
    x = augment(split.x[local], config.shift, config.flip)
    x = channels_last(x, layout)
    world.share_random_state(x.device)  # one architecture draw on every rank
    with pyro.validation_enabled(False), precision_context(precision, x.device):
        # diverged parameters must reach the NaN guard, not a ValueError
        loss, right = phase.loss(x, split.y[local], local)
    loss = loss.float()
    weight = len(local) / len(index)
    value, right = world.sum([loss.item() * weight, right])
    if not math.isfinite(value):
        return value, int(right)
    optimizer.zero_grad(set_to_none=True)
    (loss * weight).backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    world.all_reduce_gradients(params)
    if phase.grad_clip:
        nn.utils.clip_grad_norm_(params, phase.grad_clip)
    optimizer.step()
    return value, int(right)


def finish_search(method: SearchMethod, run_dir: Path, rows: list[dict[str, Any]],
                  progress: bool) -> dict[str, Any]:
    """Selection, genotype, summary, posterior export and plots of a trained search (files: rank 0 only)."""
    for module in method.modules().values():
        module.eval()
    # the last step's per-example draws (augmentation of unequal shards) leave the ranks' streams apart: the
    # selection's own draws (PGNAS's candidates) and any retraining must be the same on every rank
    method.world.share_random_state(method.device)
    tic = time.perf_counter()
    with count_passes() as passes:
        selection = method.select(progress)
    select_seconds = time.perf_counter() - tic
    # the last collective before rank 0 writes alone; the other ranks then wait for it patiently (below)
    select_passes = dict(zip(passes.as_dict(), method.world.sum(list(passes.as_dict().values())), strict=True))
    tic = time.perf_counter()
    if method.world.is_main:
        genotype = replace(selection.genotype, dataset=method.config.dataset)
        genotype.save(run_dir / "genotype.json")
        draw_genotype(genotype, run_dir / ARCHITECTURE_FILE)
        if selection.retrained:
            save_tensors(run_dir / SELECTED_WEIGHTS,
                         {k: v.detach().cpu() for k, v in selection.network.state_dict().items()})
        add_predictive_groups(method, run_dir, method.export(run_dir), progress=progress)
        diagnostics.plot_training(run_dir)
    export_seconds = time.perf_counter() - tic  # rank 0's: the others only wait for it
    config = method.config
    summary = {
        "method": config.method, "dataset": config.dataset, "seed": config.seed, "data_seed": config.split_seed,
        "epochs": config.epochs,
        "device": str(method.device), "precision": method.precision, "channels_last": method.channels_last,
        "mode": mode_name(method.precision, method.channels_last),
        "val_accuracy": selection.val_accuracy, "test_accuracy": selection.test_accuracy,
        # sizes as the papers report them, without the auxiliary head (a training aid); with it alongside
        "params": count_params(selection.network),
        "params_with_auxiliary": count_params(selection.network, auxiliary=True),
        "search_seconds": round(sum(r["seconds"] for r in rows), 2),
        "select_seconds": round(select_seconds, 2),
        # the posterior export, its predictive groups and the plots (their cost grows with posterior_draws)
        "export_seconds": round(export_seconds, 2),
        # machine-independent compute (bayesnas.compute): examples through a network of the space, summed over ranks
        **{f"search_{k}": sum(int(r.get(k, 0)) for r in rows) for k in ("train_passes", "eval_passes")},
        **{f"select_{k}": int(v) for k, v in select_passes.items()},
        "genotype": "genotype.json",
        **selection.extra,
    }
    fading = "log10_effective_architectures"
    if rows and fading in rows[0]:
        summary[f"{fading}_first"], summary[f"{fading}_last"] = rows[0][fading], rows[-1][fading]
    if method.world.distributed:
        summary["world_size"] = method.world.size
    if method.world.is_main:
        write_json(run_dir / "summary.json", summary)
    method.world.barrier(patient=True)
    return summary
