"""Distributed search on the CPU: 2 gloo processes spawned by the tests, and ``torchrun`` itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from bayesnas.config import preset
from bayesnas.distributed import SINGLE, SyncedBatchNorm2d, World, synchronise_batchnorm
from bayesnas.infer import StepEvent, run_search
from tests.two_ranks import batchnorm_worker, free_port, join, scoring_worker

# GDAS with one architecture per mini-batch and no augmentation: every random draw of a step is shared by the
# whole batch, so two processes on halves of each batch must reproduce one process on the whole batch.
GDAS_TINY = {
    "epochs": 2, "batch_size": 64, "data_fraction": 0.3, "shift": 0, "flip": False,
    "space": {"channels": 4, "layout": "NR", "states": 2},
    "options": {"warmup_epochs": 0, "arch_lr": 0.01, "retrain_epochs": 0, "posterior_draws": 4,
                "sample_per": "batch"},
}


@pytest.mark.slow
def test_synced_batchnorm_is_the_global_batch_norm() -> None:
    mp.spawn(batchnorm_worker, args=(2, free_port()), nprocs=2)


@pytest.mark.slow
def test_batchnorm_of_a_pyro_module_network_is_synchronised_too() -> None:
    """PGNAS's network is converted by ``to_pyro_module_``: its BatchNorms are ``PyroModule[BatchNorm2d]``, which an
    exact type check passed over (the ranks then normalised with their own shards' statistics)."""
    from pyro.nn import PyroModule
    from pyro.nn.module import to_pyro_module_

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    to_pyro_module_(net)
    x = torch.randn(5, 3, 6, 6)
    before, state = net(x), {k: v.clone() for k, v in net.state_dict().items()}
    synchronise_batchnorm(net)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 2 and all(isinstance(m, SyncedBatchNorm2d) and isinstance(m, PyroModule) for m in norms)
    assert net.state_dict().keys() == state.keys()
    torch.testing.assert_close(net(x), before)  # one process: the plain batch norm


def test_single_world_is_a_no_op() -> None:
    index = torch.arange(7)
    assert torch.equal(SINGLE.shard(index), index) and SINGLE.is_main and not SINGLE.distributed
    assert SINGLE.sum([1.5, 2]) == [1.5, 2] and SINGLE.max([0.1]) == [0.1] and SINGLE.owns(3)
    assert torch.equal(World(1, 3).shard(index), torch.tensor([1, 4]))
    assert [World(1, 3).owns(i) for i in range(4)] == [False, True, False, False]


def _search_worker(rank: int, size: int, port: int, config: dict, run_dir: str, resume: bool,
                   stop_epoch: int | None, report: str) -> None:
    from bayesnas.config import SearchConfig

    join(rank, size, port)
    torch.set_default_dtype(torch.float64)  # exact arithmetic: what is left of a difference is the algorithm's
    written: list[str] = []
    if rank:  # every file rank 1 opens for writing in the run folder (there should be none)
        flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND
        inside = run_dir + os.sep

        def audit(event: str, args: tuple) -> None:
            if event == "open" and str(args[0]).startswith(inside) and (
                    any(c in (args[1] or "") for c in "wax+") or (args[2] or 0) & flags):
                written.append(str(args[0]))
            elif event in ("os.rename", "os.replace") and str(args[1]).startswith(inside):
                written.append(str(args[1]))

        sys.addaudithook(audit)

    def stop(event: StepEvent) -> None:
        if event.epoch == stop_epoch:
            raise KeyboardInterrupt

    try:
        summary = run_search(SearchConfig.from_dict(config), run_dir, device="cpu", resume=resume, progress=False,
                             on_step=stop)
    except KeyboardInterrupt:
        summary = None
    with open(f"{report}.rank{rank}.json", "w") as fh:
        json.dump({"written": written, "summary": summary}, fh)


def _spawn_search(config: dict, run_dir: Path, resume: bool, stop_epoch: int | None) -> list[dict]:
    report = str(run_dir.parent / f"{run_dir.name}-{'resume' if resume else 'start'}")
    mp.spawn(_search_worker, args=(2, free_port(), config, str(run_dir), resume, stop_epoch, report), nprocs=2)
    return [json.loads(Path(f"{report}.rank{r}.json").read_text()) for r in range(2)]


def timeless(summary: dict) -> dict:
    """A summary without its timings (which differ between ranks and runs)."""
    return {k: v for k, v in summary.items() if not k.endswith("_seconds")}


def _parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    return {f"{name}.{key}": value for name, module in state["modules"].items() for key, value in module.items()
            if value.is_floating_point()}


@pytest.mark.slow
def test_two_processes_match_one_and_resume(tmp_path: Path) -> None:
    config = preset("gdas-digits").merged(GDAS_TINY)
    # In float32 the two runs drift apart by rounding (sums over two half-batches, synced batch-norm moments):
    # about 1e-4 relative after two epochs. In float64 they agree to about 1e-10, so the check is exact there.
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        single = run_search(config, tmp_path / "single", device="cpu", progress=False)
    finally:
        torch.set_default_dtype(default)

    # Two processes, stopped in the second epoch (both ranks at the same step), then resumed.
    run_dir = tmp_path / "two"
    first = _spawn_search(config.to_dict(), run_dir, resume=False, stop_epoch=1)
    assert [r["summary"] for r in first] == [None, None] and (run_dir / "checkpoint.pt").exists()
    second = _spawn_search(config.to_dict(), run_dir, resume=True, stop_epoch=None)

    # Only rank 0 wrote into the run folder.
    assert first[1]["written"] == [] and second[1]["written"] == []
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == second[0]["summary"] and summary["world_size"] == 2
    assert timeless(second[1]["summary"]) == timeless(summary)  # every rank returns the same selection

    # Same parameters (model weights and architecture logits) as the one-process run, within float tolerance.
    ours, reference = _parameters(run_dir), _parameters(tmp_path / "single")
    assert ours.keys() == reference.keys() and any("guide" in k for k in ours)
    for key in reference:
        assert ours[key].dtype == torch.float64, key
        torch.testing.assert_close(ours[key], reference[key], rtol=1e-7, atol=1e-8, msg=key)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    single_rows = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for ours_row, ref_row in zip(rows, single_rows, strict=True):
        assert ours_row["loss"] == pytest.approx(ref_row["loss"], rel=1e-6)
        assert ours_row["train_accuracy"] == pytest.approx(ref_row["train_accuracy"])
    assert summary["genotype"] == single["genotype"] and summary["cells"] == single["cells"]


@pytest.mark.slow
def test_torchrun_digits_search(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = tmp_path / "tenth.json"
    config.write_text(json.dumps({"data_fraction": 0.1}))  # the preset on a tenth of digits
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), "-m", "bayesnas", "search", "--method", "pgnas", "--epochs", "2", "--out", str(out),
               "--config", str(config), "--option", "num_candidates=6", "--option", "posterior_draws=8",
               "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["num_candidates"] == 6 and summary["epochs"] == 2
    assert 0 <= summary["test_accuracy"] <= 1 and summary["params"] < summary["supernet_params"]
    assert done.stdout.count("chosen architecture") == 1  # only rank 0 reports
    assert (out / "genotype.json").exists() and (out / "posterior.nc").exists()
    # A distributed run needs an explicit, shared run folder.
    env.update(WORLD_SIZE="2", RANK="1")
    refused = subprocess.run([sys.executable, "-m", "bayesnas", "search", "--epochs", "1"], capture_output=True,
                             text=True, env=env, cwd=tmp_path, timeout=120)
    assert refused.returncode == 2 and "needs --out" in refused.stderr and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_candidate_scoring_is_split_across_ranks_and_gathered() -> None:
    mp.spawn(scoring_worker, args=(2, free_port()), nprocs=2)


UNEVEN = {  # augmentation on, and 33 examples per step: shards of 17 and 16
    "gdas": {"method": "gdas", "epochs": 2, "batch_size": 33, "data_fraction": 0.1, "shift": 1,
             "space": {"channels": 4, "layout": "NR", "states": 2},
             "options": {"warmup_epochs": 0, "retrain_epochs": 0, "posterior_draws": 4}},
    "vinnas": {"method": "vinnas", "epochs": 2, "batch_size": 33, "data_fraction": 0.1, "shift": 1,
               "space": {"channels": 4, "layout": "RN", "states": 1},
               "options": {"warmup_epochs": 0, "retrain_epochs": 0, "posterior_draws": 4}},
    "pgnas": {"method": "pgnas", "epochs": 2, "batch_size": 33, "data_fraction": 0.1, "shift": 1,
              "space": {"stem_channels": 8, "widths": [8, 16], "depths": [1, 1], "kernel_sizes": [1, 3]},
              "options": {"num_candidates": 4, "posterior_draws": 4}},
    "pcnas": {"method": "pcnas", "epochs": 2, "batch_size": 33, "data_fraction": 0.1, "shift": 1,
              "space": {"stem_channels": 4, "widths": [4, 8, 8], "depths": [1, 1, 1]},
              "options": {"warmup_epochs": 1, "interval_epochs": 1, "pool_size": 2, "num_evaluations": 3,
                          "retrain_epochs": 0}},
}


def _uneven_worker(rank: int, size: int, port: int, configs: dict, root: str) -> None:
    import torch.distributed as dist

    from bayesnas.config import SearchConfig

    join(rank, size, port)
    # one pair of processes and one process group for the four searches (start-up is most of a run), as
    # ``bayesnas rank`` runs its searches: each search joins the group it finds
    dist.init_process_group("gloo")
    for method, config in configs.items():
        summary = run_search(SearchConfig.from_dict(config), f"{root}/{method}", device="cpu", progress=False)
        Path(f"{root}/{method}.rank{rank}.json").write_text(json.dumps(summary))
    dist.destroy_process_group()


@pytest.mark.slow
def test_uneven_shards_with_augmentation_stay_in_step(tmp_path: Path) -> None:
    """Ranks whose random streams are advanced differently (augmentation of unequal shards) still draw the same
    architecture every step, so their collectives match and every method's search runs to the end on both, and
    select the same architecture (at this data fraction PGNAS's candidate draws came apart before the selection
    shared rank 0's random state)."""
    configs = {method: preset(f"{method}-digits").merged(UNEVEN[method]).to_dict() for method in UNEVEN}
    mp.spawn(_uneven_worker, args=(2, free_port(), configs, str(tmp_path)), nprocs=2)
    for method in UNEVEN:
        summaries = [json.loads((tmp_path / f"{method}.rank{r}.json").read_text()) for r in range(2)]
        assert summaries[0]["world_size"] == 2, method
        # the same selection, parameter count and accuracies (PGNAS's candidates, its baseline's) on both ranks
        assert timeless(summaries[0]) == timeless(summaries[1]), method


@pytest.mark.slow
def test_ranks_started_with_different_settings_stop_at_once_naming_the_keys(tmp_path: Path) -> None:
    """Ranks launched with different settings deadlocked at mismatched collectives (the process group waits a day);
    every rank now stops with the same one line before the work's first collective."""
    from tests.two_ranks import disagreement_worker, free_port

    torch.multiprocessing.spawn(disagreement_worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert messages[0] == messages[1] and "differ in: epochs)" in messages[0] and "\n" not in messages[0]


@pytest.mark.slow
def test_lock_step_collectives_time_out_in_minutes_and_uneven_work_waits_patiently(tmp_path: Path) -> None:
    """A rank that stops meeting the others fails the lock-step collective after BAYESNAS_COLLECTIVE_TIMEOUT (1.8 s
    here, not the day it used to be), while a patient wait outlasts it for a rank's own uneven work (4 s)."""
    from tests.two_ranks import timeout_worker

    torch.multiprocessing.spawn(timeout_worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    outcome, seconds = (tmp_path / "rank0.txt").read_text().split()
    assert outcome == "timed-out" and 1.0 < float(seconds) < 7.0
    assert (tmp_path / "rank1.txt").read_text().startswith("met")


@pytest.mark.parametrize(("value", "minutes"), [(None, 15.0), ("2.5", 2.5), ("43200", 43200.0)])
def test_collective_timeout_comes_from_the_environment(monkeypatch, value, minutes) -> None:
    from bayesnas.distributed import COLLECTIVE_TIMEOUT, timeout_from_environment

    if value is None:
        monkeypatch.delenv("BAYESNAS_COLLECTIVE_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("BAYESNAS_COLLECTIVE_TIMEOUT", value)
    assert timeout_from_environment(COLLECTIVE_TIMEOUT).total_seconds() == minutes * 60


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf", "50000"])
def test_a_bad_timeout_is_one_line(monkeypatch, value) -> None:
    from bayesnas.config import ConfigError
    from bayesnas.distributed import PATIENT_TIMEOUT, timeout_from_environment

    monkeypatch.setenv("BAYESNAS_PATIENT_TIMEOUT", value)
    with pytest.raises(ConfigError, match=r"^BAYESNAS_PATIENT_TIMEOUT='.*': the timeout is a number of minutes"):
        timeout_from_environment(PATIENT_TIMEOUT)
