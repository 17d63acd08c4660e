"""The folder of one search: its checkpoint (atomic, weights-only, every entry validated before anything is loaded
or truncated), the retrained network's weights, and the folder's preparation on the shared life cycle
(:mod:`bayesnas.run_folder`: marker, lock, ``config.json`` pinned)."""

from __future__ import annotations

import io
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bayesnas.config import SearchConfig
from bayesnas.errors import BayesNASError
from bayesnas.io import atomic_write, read_json, write_json
from bayesnas.run_folder import RUN_MARKER, RunLock, check_folder, claim_folder, config_diff

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


class SearchError(BayesNASError, RuntimeError):
    """A search that cannot start or go on; the message is one line for the command line."""


class CheckpointError(SearchError):
    """A checkpoint or run folder that does not belong to this search, or is damaged."""


SELECTED_WEIGHTS = "selected.pt"
"""The retrained selected network's state dict (weights only), where the search retrained it."""


def save_tensors(path: Path, data: Any) -> None:
    """``torch.save`` ``data`` (tensors and plain containers: ``weights_only=True`` reads it back) atomically."""
    buffer = io.BytesIO()
    torch.save(data, buffer)
    atomic_write(path, lambda fh: fh.write(buffer.getvalue()))


class Checkpoint:
    """Atomic save/load of everything a search needs to continue exactly where it stopped."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / CHECKPOINT

    def save(self, config: SearchConfig, epoch: int, modules: dict[str, nn.Module],
             optimizers: dict[str, tuple[torch.optim.Optimizer, Any]]) -> None:
        state = {
            "format": CHECKPOINT_FORMAT, "config": config.to_dict(), "epoch": epoch,
            "modules": {name: m.state_dict() for name, m in modules.items()},
            "optimizers": {name: {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
                           for name, (opt, sched) in optimizers.items()},
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        save_tensors(self.path, state)

    def load(self, config: SearchConfig, modules: dict[str, nn.Module],
             optimizers: dict[str, tuple[torch.optim.Optimizer, Any]], device: torch.device) -> int:
        """Restore the state and return the last completed epoch."""
        try:
            state = torch.load(self.path, map_location=device, weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
            raise CheckpointError(f"checkpoint {self.path} is corrupted or unreadable ({type(err).__name__}); "
                                  "delete it to start the search again") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"checkpoint {self.path} is not a bayesnas search checkpoint")
        problem = _checkpoint_problem(state, config)
        if problem:  # before anything is loaded or truncated
            raise CheckpointError(f"checkpoint {self.path} is damaged: {problem}; delete it to start the search "
                                  "again")
        diff = config_diff(state["config"], config.to_dict())
        if diff:
            raise CheckpointError(f"checkpoint {self.path} was written for a different configuration "
                                  f"(differs in: {', '.join(diff)})")
        try:
            for name, module in modules.items():
                module.load_state_dict(state["modules"][name])
            for name, (optimizer, scheduler) in optimizers.items():
                optimizer.load_state_dict(state["optimizers"][name]["optimizer"])
                scheduler.load_state_dict(state["optimizers"][name]["scheduler"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"checkpoint {self.path} does not match this search "
                                  f"({str(err).splitlines()[0]})") from None
        torch.set_rng_state(state["rng"].cpu())
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        return int(state["epoch"])


def _checkpoint_problem(state: dict[str, Any], config: SearchConfig) -> str | None:
    """What is wrong with a checkpoint's entries (their types, the epoch's range, the random state's form), or
    None."""
    kinds = {"config": dict, "epoch": int, "modules": dict, "optimizers": dict, "rng": torch.Tensor,
             "cuda_rng": list}
    for key, kind in kinds.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            return f"its {key!r} entry is missing or not a {kind.__name__}"
    if not 0 <= state["epoch"] < config.epochs:
        return f"its epoch {state['epoch']} is outside this search's 0..{config.epochs - 1}"
    rng = state["rng"]
    if rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
        return "its random state is not a generator state of this torch"
    return None


def prepare_run_dir(run_dir: Path, config: SearchConfig, resume: bool, preseeded: Collection[str] = ()) -> RunLock:
    """Check ``run_dir`` (nothing is written into a folder that is not a run of ours, unless empty; ``resume``
    needs a run there; a new search never replaces one), lock it against a second search, remove temporaries a
    killed write left, write the marker and ``config.json``; returns the lock to release when the search ends.
    ``preseeded``: files a new run folder may already hold (:attr:`SearchMethod.preseeded`)."""
    saved = run_dir / "config.json"
    if resume and not run_dir.is_file() and not ((run_dir / RUN_MARKER).exists() or saved.exists()):
        raise SearchError(f"nothing to resume at {run_dir}: it holds no bayesnas search run")
    check_folder(run_dir, "search", ours=saved.exists(), preseeded=preseeded)
    if saved.exists():
        if not resume:
            raise SearchError(f"{run_dir} already holds a search run; pass `resume=True` to continue it or "
                              "choose another `out`")
        diff = config_diff(read_json(saved), config.to_dict())
        if diff:
            raise CheckpointError(f"{run_dir} was started with a different configuration "
                                  f"(differs in: {', '.join(diff)})")
    lock = claim_folder(run_dir, "search")
    write_json(saved, config.to_dict())
    return lock


