"""PC-NAS and one-shot: chain space, latency table, proposals (pool, completions), model, search on the chain and
on the cells, ranking command."""

import collections
import dataclasses
import itertools
import json
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from scipy import stats

from bayesnas.cli import EXIT_ERROR, main
from bayesnas.config import ConfigError, preset
from bayesnas.data import Split, load_dataset
from bayesnas.experiments.rank import correlation
from bayesnas.infer import run_search
from bayesnas.io import read_jsonl
from bayesnas.methods import get_method
from bayesnas.methods import pcnas as pcnas_method
from bayesnas.methods.pcnas import (  # the proposals (guides/pcnas.py) and the model (models/pcnas.py)
    Completion,
    LatencyLimitError,
    PartialModelPool,
    PCNASModel,
    UniformProposal,
    conditioned_nll,
)
from bayesnas.spaces import Genotype, GenotypeError, get_space, latency, load_genotype
from bayesnas.spaces.chain import ChainSpace
from bayesnas.spaces.profile import count_flops

SPACE = {"in_channels": 1, "num_classes": 10, "image_size": 8, "stem_channels": 8, "stem_stride": 1,
         "first_block_channels": 0, "widths": [8, 16], "depths": [2, 2], "strides": [1, 2], "head_channels": 0,
         "ops": ["MBConv_1_3", "MBConv_3_3", "Identity"], "transition_op": "MBConv_1_3"}
TINY = {  # 3 mixops x 3 ops, warm-up 1 + 3 intervals x 1 epoch; a few seconds
    "method": "pcnas", "epochs": 4, "data_fraction": 0.4,
    "space": {k: v for k, v in SPACE.items() if k not in ("in_channels", "num_classes", "image_size")},
    "options": {"pool_size": 2, "num_evaluations": 2, "warmup_epochs": 1, "interval_epochs": 1, "retrain_epochs": 1,
                "latency_runs": 1, "latency_batch_size": 4, "accuracy_samples": 1, "eval_batch_size": 32},
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def space():
    return get_space("chain", SPACE)


@pytest.fixture
def tiny_config():
    return preset("pcnas-digits").merged(TINY)


# --- space ----------------------------------------------------------------------------------------------------
def test_full_size_layout_has_21_mixops_and_identity_only_where_shapes_allow():
    small, large = ChainSpace.from_dict({}), ChainSpace.from_dict({"ops": "large"})
    layers = small.layers()
    assert len(layers) == 21 and layers[0].input_shape == (16, 112, 112)
    first_of_stage = {0, 4, 8, 12, 16, 20}
    assert small.num_options() == [9 if i in first_of_stage else 10 for i in range(21)]
    assert large.num_options() == [19 if i in first_of_stage else 20 for i in range(21)]
    assert all("Identity" not in layers[i].ops for i in first_of_stage)
    scaled = ChainSpace.from_dict({"width_mult": 0.5, "depth_scale": 0.5})
    assert len(scaled.layers()) == 2 + 2 + 2 + 2 + 2 + 1 and scaled.layers()[0].out_channels == 16


def test_genotype_round_trip_and_clear_errors(space, tmp_path):
    genotype = space.genotype_from_indices([1, 2, 0])
    assert genotype.choices == {"ops": ["MBConv_3_3", "Identity", "MBConv_1_3"]}
    path = tmp_path / "genotype.json"
    genotype.save(path)
    assert load_genotype(path) == genotype and space.indices(genotype) == [1, 2, 0]
    bad = [({"ops": ["MBConv_3_3", "Identity"]}, "has 2 ops, the chain has 3 mixops"),
           ({"ops": ["MBConv_3_3", "Identity", "MBConv_6_7"]}, "unknown op 'MBConv_6_7'"),
           ({"ops": ["MBConv_3_3", "Conv_1_1", "Identity"]}, "unknown op 'Conv_1_1'"),
           ({"layers": []}, "must be {\"ops\"")]
    for choices, message in bad:
        with pytest.raises(GenotypeError, match=message):
            space.validate(Genotype("chain", genotype.config, choices))
    paper = ChainSpace.from_dict({**SPACE, "transition_op": None})  # the transition is a mixop without Identity
    with pytest.raises(GenotypeError, match="Identity is not allowed here"):
        paper.genotype(["MBConv_1_3", "MBConv_1_3", "Identity", "MBConv_1_3"])
    with pytest.raises(GenotypeError, match="invalid configuration.*unknown operator 'Bogus_1'"):
        get_space("chain", {"ops": ["Bogus_1"]})


def test_supernet_runs_only_the_chosen_path_and_built_network_matches(space):
    torch.manual_seed(0)
    net = space.supernet(sparse=True)
    x = torch.randn(6, 1, 8, 8)
    arch = space.index_architecture([1, 0, 2])
    net(x, arch).sum().backward()
    used = {name.split(".ops.")[1].split(".")[0] for name, p in net.named_parameters()
            if ".ops." in name and p.grad is not None and name.startswith(("blocks.0.", "blocks.1.", "blocks.3."))}
    assert used == {"MBConv_3_3", "MBConv_1_3"}  # Identity (mixop 2) has no weights
    net.eval()
    genotype = space.genotype_from_indices([1, 0, 2])
    built = space.build(genotype, inherit=net.state_dict()).eval()
    torch.testing.assert_close(built(x), net(x, arch))
    one_hot = {group: F.one_hot(value, 3).float() for group, value in arch.items()}  # straight-through form
    torch.testing.assert_close(net(x, one_hot), net(x, arch))
    assert space.params(genotype) < sum(p.numel() for p in net.parameters())
    assert space.flops(space.genotype_from_indices([1, 1, 1])) > space.flops(space.genotype_from_indices([0, 0, 0]))
    with pytest.raises(GenotypeError, match="no auxiliary head"):
        space.build(genotype, auxiliary=True)


# --- latency ----------------------------------------------------------------------------------------------------
def test_latency_table_is_cached_and_reused(space, tmp_path, monkeypatch):
    path = tmp_path / latency.LATENCY_FILE
    table = latency.load_or_measure(space, path, torch.device("cpu"), batch_size=4, runs=1)
    assert path.exists() and len(table.ms) == 3 and all(v > 0 for row in table.ms for v in row.values())
    calls = []
    monkeypatch.setattr(latency, "measure", lambda *a, **k: calls.append(a) or table)
    again = latency.load_or_measure(space, path, torch.device("cpu"), batch_size=4, runs=1)
    assert calls == [] and again == table  # the second call measured nothing
    latency.load_or_measure(space, path, torch.device("cpu"), batch_size=8, runs=1)
    assert len(calls) == 1  # another batch size is another table
    ops = ["MBConv_3_3", "Identity", "MBConv_1_3"]
    assert table.latency(ops) == pytest.approx(table.fixed_ms + sum(table.ms[i][op] for i, op in enumerate(ops)))
    assert table.flops(ops) == space.flops(space.genotype(ops))  # the per-op FLOPs proxy adds up exactly
    # what the proposals index: one row per decision, its options in the decision's order
    assert table.costs(space) == [[table.ms[i][op] for op in d.options] for i, d in enumerate(space.decisions())]
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    assert count_flops(conv, (4, 5, 5)) == 6 * 5 * 5 * 4 * 9


# --- proposals --------------------------------------------------------------------------------------------------
def test_pool_extension_and_top_p_on_hand_made_potentials():
    pool = PartialModelPool([3, 2, 2], pool_size=2)
    assert pool.candidates() == [(0,), (1,), (2,)] and pool.effective_architectures() == 12
    scores = {(0,): 0.1, (1,): 0.5, (2,): 0.5, (1, 0): 0.2, (1, 1): 0.9, (2, 0): 0.8, (2, 1): 0.3}
    record = pool.update(scores.__getitem__)
    assert pool.members == [(1,), (2,)] and pool.potentials == [0.5, 0.5]  # a tie keeps the candidates' order
    assert record["candidates"] == 3 and pool.effective_architectures() == 2 * 2 * 2
    assert pool.candidates() == [(1, 0), (1, 1), (2, 0), (2, 1)]
    pool.update(scores.__getitem__)
    assert pool.members == [(1, 1), (2, 0)] and pool.potentials == [0.9, 0.8]
    pool.update(lambda c: sum(c) / 10)
    assert pool.members == [(1, 1, 1), (2, 0, 1)] and pool.complete and pool.effective_architectures() == 2
    with pytest.raises(ValueError, match="already fixes every decision"):
        pool.candidates()
    restored = PartialModelPool([3, 2, 2], pool_size=2)
    restored.load_state_dict(pool.state_dict())  # the pool is checkpointed with the search
    assert restored.members == pool.members and restored.history == pool.history
    torch.manual_seed(0)
    assert all(tuple(pool.sample()) in pool.members for _ in range(20))


def test_completions_always_meet_the_limit_or_fail_clearly():
    costs = [[1.0, 2.0, 3.0, 10.0]] * 4
    generator = torch.Generator().manual_seed(0)
    for limit, tries in ((9.0, 100), (9.0, 1), (5.0, 1)):  # tries = 1: the exact sampler takes over
        completion = Completion([4] * 4, costs, fixed=1.0, limit=limit, max_tries=tries)
        archs = [completion.complete((), generator) for _ in range(200)]
        assert all(completion.latency(a) <= limit for a in archs)
        if limit > 6:  # a prefix is kept and completed under the limit
            assert all(completion.complete((1,), generator)[:1] == [1] and
                       completion.latency(completion.complete((1,), generator)) <= limit for _ in range(50))
    assert {tuple(a) for a in archs} == {(0, 0, 0, 0)}  # 5 ms: only the fastest architecture fits
    assert len({tuple(a) for a in (Completion([4] * 4, costs, 1.0, 9.0).complete((), generator)
                                   for _ in range(200))}) > 10
    tight = Completion([4] * 4, costs, fixed=1.0, limit=4.5)
    with pytest.raises(LatencyLimitError, match=r"limit of 4\.5 ms: the fastest possible takes 5 ms"):
        tight.complete((), generator)
    pool = PartialModelPool([4] * 4, 2, Completion([4] * 4, costs, fixed=1.0, limit=9.0))
    record = pool.update(lambda c: float(c[0]))  # (3,) costs 10 ms: it cannot be completed under 9 ms
    assert record["infeasible"] == 1 and pool.members == [(2,), (1,)]
    uniform = UniformProposal([4, 3])
    assert uniform.effective_architectures() == 12 and len(uniform.sample(generator)) == 2


IRREGULAR = [[0.3, 1.1, 2.45], [0.2, 0.9, 1.7], [0.5, 0.6, 2.2], [0.1, 1.3, 1.4]]  # 4 mixops x 3 ops, fixed 0.7 ms


def _layer_by_layer(completion, prefix, generator):
    """The former fallback: each op uniform among those that leave the rest feasible (not uniform overall)."""
    arch, spent = list(prefix), completion.latency(prefix)
    for layer in range(len(prefix), len(completion.num_ops)):
        budget = completion.limit + 1e-9 - spent - sum(min(c) for c in completion.costs[layer + 1:])
        allowed = [o for o, c in enumerate(completion.costs[layer]) if c <= budget]
        op = allowed[int(torch.randint(len(allowed), (1,), generator=generator))]
        arch.append(op)
        spent += completion.costs[layer][op]
    return arch


def _chi_square_p(draw, valid, n):
    counts = collections.Counter(tuple(draw()) for _ in range(n))
    assert set(counts) <= set(valid)  # nothing over the limit, nothing off the prefix
    return stats.chisquare([counts[a] for a in valid]).pvalue


@pytest.mark.parametrize(("limit", "prefix", "tries", "grid"), [
    (2.6, (), 1, 4096),  # 5 of 81 valid; every draw by the exact sampler (stage 2)
    (2.6, (), 1, 2),  # a 2-step grid: the bound is loose, stage 2 often gives up, accepted draws stay uniform
    (3.3, (), 1, 4096),  # 12 of 81 valid
    (3.6, (0,), 1, 4096),  # completions of a prefix
])
def test_completions_are_uniform_over_the_valid_set(limit, prefix, tries, grid):
    completion = Completion([3] * 4, IRREGULAR, fixed=0.7, limit=limit, max_tries=tries, grid=grid)
    valid = [a for a in itertools.product(range(3), repeat=4) if a[:len(prefix)] == prefix and
             0.7 + sum(IRREGULAR[layer][o] for layer, o in enumerate(a)) <= limit]
    assert 5 <= len(valid) <= 15
    n = 300 * len(valid)
    generator = torch.Generator().manual_seed(0)
    p_new = _chi_square_p(lambda: completion.complete(prefix, generator), valid, n)
    assert completion.proposals > 0 and p_new > 0.01  # seeded: deterministic
    generator = torch.Generator().manual_seed(0)
    p_old = _chi_square_p(lambda: _layer_by_layer(completion, prefix, generator), valid, n)
    assert p_old < 1e-12  # the same test rejects the former fallback


def test_exact_sampler_handles_a_tiny_valid_fraction_and_counts_exactly_on_grid_costs():
    costs = [[0.0, 1.0, 2.0]] * 8  # 3^8 = 6561 architectures; 9 take <= 1 ms: 100 uniform tries fail 87 % of the time
    completion = Completion([3] * 8, costs, fixed=0.0, limit=1.0)
    valid = [a for a in itertools.product(range(3), repeat=8) if sum(a) <= 1]
    assert len(valid) == 9 and (1 - 9 / 3 ** 8) ** 100 > 0.8
    generator = torch.Generator().manual_seed(1)
    assert _chi_square_p(lambda: completion.complete((), generator), valid, 2700) > 0.01
    assert completion.proposals > 100  # the exact stage ran for most draws
    generator = torch.Generator().manual_seed(1)
    assert _chi_square_p(lambda: _layer_by_layer(completion, (), generator), valid, 2700) < 1e-12
    # costs on the grid: the bound U(0, K) is the exact count (9 at 1 ms; 1 + 8 + 8 + C(8, 2) = 45 at 2 ms)
    for limit, count in ((1.0, 9), (2.0, 45)):
        exact = Completion([3] * 8, costs, fixed=0.0, limit=limit)
        h, slack, _, table = exact.bounds()
        assert table[0][int(math.floor((exact._budget(()) + slack) / h))] == pytest.approx(count, rel=1e-9)
    # irregular costs: the bound is never below the exact count of any prefix's completions
    loose = Completion([3] * 4, IRREGULAR, fixed=0.7, limit=3.3, grid=7)
    h, slack, _, table = loose.bounds()
    for depth in range(4):
        for prefix in itertools.product(range(3), repeat=depth):
            if loose.feasible(prefix):
                count = sum(loose.meets(prefix + rest) for rest in itertools.product(range(3), repeat=4 - depth))
                assert table[depth][int(math.floor((loose._budget(prefix) + slack) / h))] >= count


# --- model ------------------------------------------------------------------------------------------------------
def test_model_sites_and_conditioned_likelihood(space):
    torch.manual_seed(0)
    model = PCNASModel(space.supernet(sparse=True), space)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(10, (8,))
    trace = poutine.trace(model).get_trace(x, y, torch.arange(8), 100)
    arch_sites = [f"op_{i}" for i in range(3)]
    for site in arch_sites:
        node = trace.nodes[site]
        assert node["cond_indep_stack"] == () and not node["is_observed"]
        torch.testing.assert_close(node["fn"].probs, torch.full((3,), 1 / 3))
    obs = trace.nodes["y"]
    assert obs["is_observed"] and obs["cond_indep_stack"][0].full_size == 100 and obs["scale"] == 100 / 8
    model.eval()
    nll, logits = conditioned_nll(model, [2, 1, 0], x, y, torch.arange(8), 100)
    torch.testing.assert_close(nll, F.cross_entropy(model.net(x, space.index_architecture([2, 1, 0])), y))
    assert logits.shape == (8, 10)


# --- search -----------------------------------------------------------------------------------------------------
def test_epochs_must_fit_the_schedule(tiny_config):
    data = load_dataset("digits", seed=0, fraction=0.4)
    with pytest.raises(ConfigError, match=r"warmup_epochs \+ L x interval_epochs.*1 \+ 3 = 4, but epochs = 5"):
        get_method("pcnas")(tiny_config.merged({"epochs": 5}), data, torch.device("cpu"))
    method = get_method("pcnas")(tiny_config.merged({"epochs": 6, "options": {"warmup_epochs": None}}), data,
                                 torch.device("cpu"))
    assert method.warmup_epochs == 3


def _seed_table(config, run_dir):
    """Write a latency table the search will reuse (so the test knows its numbers)."""
    data = load_dataset("digits", seed=0, fraction=0.4)
    method = get_method("pcnas")(config, data, torch.device("cpu"))
    table = latency.measure(method.space, torch.device("cpu"), 4, 1)
    table.fixed_ms = 1.0
    table.ms = [{op: (0.0 if op == "Identity" else 1.0 + i) for i, op in enumerate(row)} for row in table.ms]
    run_dir.mkdir()
    table.save(run_dir / latency.LATENCY_FILE)
    return table


def test_tiny_search_end_to_end_meets_the_latency_limit(tiny_config, tmp_path, monkeypatch):
    run = tmp_path / "run"
    config = tiny_config.merged({"options": {"latency_ms": 4.5}})
    table = _seed_table(config, run)  # ops cost 1, 2, 0 ms (Identity); fixed 1 ms; the fastest is 1 ms
    monkeypatch.setattr(latency, "measure", lambda *a, **k: pytest.fail("the cached table must be reused"))
    summary = run_search(config, run, progress=False)
    for name in ("config.json", "checkpoint.pt", "metrics.jsonl", "genotype.json", "summary.json", "posterior.nc",
                 "latency.json", "training.png", "op_frequencies.png", "fading.png"):
        assert (run / name).exists(), name
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["effective_architectures"] for r in rows] == [27, 2 * 9, 2 * 3, 2]
    assert [r["stage"] for r in rows] == ["warm-up", "pool", "pool", "pool"]
    # the pool updates' evaluations are the compute of the epoch that starts with them (none in the warm-up)
    assert rows[0]["eval_passes"] == 0 and all(r["eval_passes"] > 0 for r in rows[1:])
    assert summary["search_eval_passes"] == sum(r["eval_passes"] for r in rows)
    assert all(len(r["pool_potentials"]) == 2 for r in rows[1:]) and "pool_potentials" not in rows[0]
    assert summary["latency_ms"] <= 4.5 and summary["latency_ms"] == table.latency(summary["pool"][0]["ops"])
    assert all(member["latency_ms"] <= 4.5 for member in summary["pool"])
    assert len(summary["potentials"]) == 3 and summary["potentials"][0]["candidates"] == 3
    assert summary["effective_architectures_first"] == 27 and summary["effective_architectures_last"] == 2
    assert summary["retrained"] and 0 <= summary["test_accuracy"] <= 1 and summary["flops"] > 0
    assert summary["supernet_params"] > summary["params"]
    genotype = load_genotype(run / "genotype.json")
    assert genotype.choices["ops"] == summary["pool"][0]["ops"]


@pytest.mark.slow
def test_interrupted_search_resumes_with_its_pool(tiny_config, tmp_path):
    figures = ("test_accuracy", "potentials", "pool", "latency_ms")
    config = tiny_config.merged({"options": {"retrain_epochs": 0}})
    full = run_search(config, tmp_path / "full", progress=False)

    def kill(event):
        if event.epoch == 2 and event.step == 0:
            raise KeyboardInterrupt

    (tmp_path / "cut").mkdir()  # the same latency table in both runs
    (tmp_path / "cut/latency.json").write_text((tmp_path / "full/latency.json").read_text())
    with pytest.raises(KeyboardInterrupt):
        run_search(config, tmp_path / "cut", progress=False, on_step=kill)
    resumed = run_search(config, tmp_path / "cut", progress=False, resume=True)
    assert {k: resumed[k] for k in figures} == {k: full[k] for k in figures}
    losses = [r["loss"] for r in read_jsonl(tmp_path / "cut/metrics.jsonl")]
    assert losses == [r["loss"] for r in read_jsonl(tmp_path / "full/metrics.jsonl")]


def test_timing_keeps_the_minimum_of_its_runs(monkeypatch):
    """A busy machine only adds time: the table keeps the fastest of the timed runs, not the median."""
    clock = iter([0.0, 0.005, 1.0, 1.001, 2.0, 2.003, 3.0, 3.009])  # (tic, toc) pairs: 5, 1, 3, 9 ms
    monkeypatch.setattr(latency, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    assert latency.time_module(torch.nn.Identity(), torch.zeros(1), runs=4, warmup=0) == pytest.approx(1.0)


def test_latency_command_measures_a_table_alone(tmp_path, capsys):
    out = tmp_path / "tables" / "cpu.json"
    space = json.dumps({"space": TINY["space"]})
    (tmp_path / "space.json").write_text(space)
    argv = ["latency", "--config", str(tmp_path / "space.json"), "--batch-size", "4", "--runs", "2",
            "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    table = latency.LatencyTable.load(out)
    assert table.batch_size == 4 and table.source == "measured here, minimum of 2 runs" and len(table.ms) == 3
    assert f"-> {out}" in capsys.readouterr().out
    assert main(argv) == EXIT_ERROR and "exists" in capsys.readouterr().err  # a new file only
    assert main([*argv[:-1], str(tmp_path / "other.json"), "--runs", "0"]) == EXIT_ERROR
    assert "--runs must be >= 1" in capsys.readouterr().err and not (tmp_path / "other.json").exists()
    assert latency.LatencyTable.load(out) == table
    # a search of those settings takes it as its table
    config = preset("pcnas-digits").merged({**TINY, "options": {**TINY["options"], "latency_table": str(out)}})
    method = get_method("pcnas")(config, load_dataset("digits", seed=0, fraction=0.4), torch.device("cpu"))
    method.prepare(tmp_path / "run", resume=False)
    assert method.table.ms == table.ms and method.table.source.startswith(f"file {out}")


def test_a_table_from_elsewhere_and_the_flops_proxy(tiny_config, tmp_path, monkeypatch):
    table = _seed_table(tiny_config, tmp_path / "elsewhere")
    source = tmp_path / "elsewhere" / latency.LATENCY_FILE
    monkeypatch.setattr(latency, "measure", lambda *a, **k: pytest.fail("a table given as a file is not measured"))
    config = tiny_config.merged({"options": {"latency_ms": 4.5, "latency_table": str(source), "retrain_epochs": 0}})
    summary = run_search(config, tmp_path / "run", progress=False)
    assert summary["latency_source"] == f"file {source} (measured here, minimum of 1 runs on {table.device})"
    assert summary["latency_ms"] == table.latency(summary["pool"][0]["ops"]) <= 4.5
    assert latency.LatencyTable.load(tmp_path / "run" / latency.LATENCY_FILE).ms == table.ms  # kept with the run
    wrong = tiny_config.merged({"options": {"latency_table": str(source), "latency_batch_size": 8}})
    with pytest.raises(ConfigError, match="measured for another space or batch size"):
        run_search(wrong, tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()

    flops = table.flops_proxy()
    ops = [row_ops[0] for row_ops in (list(row) for row in table.ms)]
    assert flops.latency(ops) == pytest.approx(table.flops(ops) / 1e6) and flops.source == "flops proxy"
    monkeypatch.undo()
    proxy = tiny_config.merged({"options": {"latency_proxy": "flops", "retrain_epochs": 0}})
    summary = run_search(proxy, tmp_path / "proxy", progress=False)
    assert summary["latency_source"] == "flops proxy"
    assert summary["latency_ms"] == pytest.approx(summary["flops"] / 1e6, abs=1e-5)  # rounded to 5 decimals


def test_unreachable_latency_limit_fails_before_writing(tiny_config, tmp_path):
    with pytest.raises(LatencyLimitError, match=r"latency limit 1e-06 ms cannot be met: the fastest"):
        run_search(tiny_config.merged({"options": {"latency_ms": 1e-6}}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


class _Recorder(torch.nn.Module):
    """Stands in for the super-network: reads each image's id from pixel (0, 0) and predicts ``(id + o_L) % 10``
    from the index form of the architecture; records every call (with one option index per decision)."""

    def __init__(self, space):
        super().__init__()
        self.space = space
        self.calls = []

    def forward(self, x, arch):
        ids = x[:, 0, 0, 0].round().long()
        assert all(not value.is_floating_point() for value in arch.values())  # the index form
        indices = self.space.indices(arch)
        self.calls.append((ids.clone(), indices))
        return F.one_hot((ids + indices[-1]) % 10, 10).float()


def test_potential_is_the_mean_of_s_one_batch_validation_accuracies(tiny_config):
    data = load_dataset("digits", seed=0, fraction=0.4)
    n_val = len(data.val)
    ids = torch.arange(n_val) + 1000  # validation images carry ids 1000.., the training images -1
    x = torch.zeros_like(data.val.x)
    x[:, 0, 0, 0] = ids.float()
    labels = torch.randint(10, (n_val,), generator=torch.Generator().manual_seed(3))
    train_x = torch.full_like(data.train.x, -1.0)
    data = dataclasses.replace(data, val=Split(x, labels), train=Split(train_x, data.train.y))
    config = tiny_config.merged({"options": {"num_evaluations": 7, "eval_batch_size": 16}})
    method = get_method("pcnas")(config, data, torch.device("cpu"))
    method.pool.completion = Completion([3] * 3, [[1.0, 2.0, 0.5]] * 3, fixed=1.0, limit=4.0)
    method.model.net = _Recorder(method.space)
    value = method.potential((1,), torch.Generator().manual_seed(0))
    calls = method.model.net.calls
    assert len(calls) == 7  # S completions, one batch each
    accuracies = []
    for batch_ids, arch in calls:
        assert len(batch_ids) == 16 and len(set(batch_ids.tolist())) == 16  # one batch of distinct images
        assert bool(((batch_ids >= 1000) & (batch_ids < 1000 + n_val)).all())  # from the validation split only
        assert arch[0] == 1 and 1.0 + sum([1.0, 2.0, 0.5][o] for o in arch) <= 4.0  # the prefix, under the limit
        accuracies.append(float(((batch_ids + arch[-1]) % 10 == labels[batch_ids - 1000]).float().mean()))
    assert len({tuple(b.tolist()) for b, _ in calls}) == 7  # a fresh batch per completion
    assert value == pytest.approx(sum(accuracies) / 7, abs=1e-12)
    assert 0 < value < 1


def test_training_draws_complete_a_pool_member_under_the_limit(tiny_config, tmp_path, monkeypatch):
    run = tmp_path / "run"
    config = tiny_config.merged({"options": {"latency_ms": 4.5, "retrain_epochs": 0}})
    table = _seed_table(config, run)  # ops cost 1, 2, 0 ms (Identity); fixed 1 ms: the limit binds
    pending, drawn = [], collections.defaultdict(list)
    original = pcnas_method.conditioned_nll

    def recording(model, arch, *args):
        pending.append(list(arch))
        return original(model, arch, *args)

    def on_step(event):
        drawn[event.epoch].append(pending.pop())

    monkeypatch.setattr(pcnas_method, "conditioned_nll", recording)
    run_search(config, run, progress=False, on_step=on_step)
    rows = read_jsonl(run / "metrics.jsonl")
    names = [list(row) for row in table.ms]
    assert sorted(drawn) == [0, 1, 2, 3] and all(len(drawn[e]) >= 2 for e in drawn)
    for epoch, archs in drawn.items():
        ops = [[names[layer][o] for layer, o in enumerate(arch)] for arch in archs]
        if epoch >= 1:  # after the (unconstrained, uniform) warm-up: a member of that epoch's pool, completed
            assert all(table.latency(o) <= 4.5 for o in ops)  # under the limit
            pool, depth = rows[epoch]["pool"], epoch
            assert len(pool) == 2 and all(len(m) == depth for m in pool)
            assert all(o[:depth] in pool for o in ops)
    assert len({tuple(a) for a in drawn[3]}) <= 2  # the final pool fixes every mixop


CELLS = {"channels": 4, "layout": "RN", "states": 1, "ops": "none,skip_connect,sep_conv_3x3"}
"""A normal and a reduction cell of one state: 2 cell types x 2 edges = 4 decisions of 3 ops."""
CELL_SPACE = {**CELLS, "in_channels": 1, "num_classes": 10, "image_size": 8}


def on_cells(config, **options):
    """``config`` on the tiny cell space, warm-up 1 + 4 intervals x 1 epoch."""
    return dataclasses.replace(config, space_name="cells", space=dict(CELLS), epochs=5).merged({"options": options})


def test_pool_grows_over_the_cell_decisions(tiny_config, tmp_path):
    run = tmp_path / "run"
    summary = run_search(on_cells(tiny_config), run, progress=False)
    space = get_space("cells", CELL_SPACE)
    names = [d.name for d in space.decisions()]
    assert names == ["normal:0<-0", "normal:0<-1", "reduce:0<-0", "reduce:0<-1"]
    options = space.decisions()[0].options
    assert options == ("none", "skip_connect", "sep_conv_3x3")
    rows = read_jsonl(run / "metrics.jsonl")
    # 3^4 uniform, then P = 2 members x the options of the decisions still open
    assert [r["effective_architectures"] for r in rows] == [81, 2 * 27, 2 * 9, 2 * 3, 2]
    assert [r["stage"] for r in rows] == ["warm-up", "pool", "pool", "pool", "pool"]
    for depth, row in enumerate(rows[1:], start=1):
        assert len(row["pool"]) == 2 and all(len(m) == depth and set(m) <= set(options) for m in row["pool"])
    assert [i["decision"] for i in summary["potentials"]] == names  # one interval per decision, in order
    assert [i["candidates"] for i in summary["potentials"]] == [3, 6, 6, 6]
    assert summary["potentials"][-1]["pool"] == [m["ops"] for m in summary["pool"]]
    best = [options.index(op) for op in summary["pool"][0]["ops"]]
    assert load_genotype(run / "genotype.json") == space.genotype_from_indices(best)
    assert "latency_ms" not in summary and summary["flops"] == space.flops(space.genotype_from_indices(best))
    assert summary["search_space_size"] == 81 and summary["retrained"]


def test_latency_limit_on_cells_is_refused_before_anything_runs(tiny_config, tmp_path):
    with pytest.raises(ConfigError) as err:
        run_search(on_cells(tiny_config, latency_ms=10.0), tmp_path / "run", progress=False)
    assert "latency_ms needs a latency table, which the cells space has none of" in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("space_name", ["chain", "cells"])
def test_oneshot_is_uniform_all_along_then_the_pool_search(tiny_config, tmp_path, space_name):
    """``oneshot`` = ``pcnas`` with ``proposal: uniform``: the same figures at the same seed."""
    pcnas = tiny_config if space_name == "chain" else on_cells(tiny_config)
    pcnas = pcnas.merged({"options": {"proposal": "uniform", "retrain_epochs": 0}})
    keep = {k: v for k, v in pcnas.options.items() if k not in ("proposal", "warmup_epochs", "interval_epochs")}
    oneshot = dataclasses.replace(pcnas, method="oneshot", options=keep)
    (tmp_path / "oneshot").mkdir()
    if space_name == "chain":  # the same latency table in both runs
        table = _seed_table(pcnas, tmp_path / "pcnas")
        table.save(tmp_path / "oneshot" / latency.LATENCY_FILE)
    figures = ("val_accuracy", "test_accuracy", "potentials", "pool", "genotype", "params", "proposal")
    reference = run_search(pcnas, tmp_path / "pcnas", progress=False)
    summary = run_search(oneshot, tmp_path / "oneshot", progress=False)
    assert {k: summary[k] for k in figures} == {k: reference[k] for k in figures}
    rows = read_jsonl(tmp_path / "oneshot" / "metrics.jsonl")
    assert [r["loss"] for r in rows] == [r["loss"] for r in read_jsonl(tmp_path / "pcnas" / "metrics.jsonl")]
    space = get_space("chain", SPACE) if space_name == "chain" else get_space("cells", CELL_SPACE)
    size = math.prod(space.num_options())
    assert [r["effective_architectures"] for r in rows] == [size] * len(rows) and summary["proposal"] == "uniform"
    assert [r["stage"] for r in rows] == ["uniform"] * len(rows)
    assert len(summary["potentials"]) == len(summary["pool"][0]["ops"])  # the pool search ran over every decision
    with pytest.raises(ConfigError, match="unknown option.*warmup_epochs"):  # no warm-up: uniform all along
        run_search(oneshot.merged({"options": {"warmup_epochs": 1}}), tmp_path / "bad", progress=False)


def test_correlation_on_known_values():
    exact = correlation([1.0, 2.0, 3.0, 4.0], [3.0, 5.0, 7.0, 9.0])  # y = 2x + 1
    assert exact["pearson_r"] == pytest.approx(1.0) and exact["kendall_tau"] == pytest.approx(1.0)
    # x = 1..5, y = (2, 1, 4, 3, 5): sum dx dy = 8, sum dx^2 = sum dy^2 = 10 -> r = 0.8; 8 concordant and
    # 2 discordant pairs of 10 -> tau = 0.6
    known = correlation([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0])
    assert known["pearson_r"] == pytest.approx(0.8) and known["kendall_tau"] == pytest.approx(0.6)
    assert correlation([1.0, 2.0, 3.0], [-1.0, -2.0, -3.0])["pearson_r"] == pytest.approx(-1.0)
    constant = correlation([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])
    assert constant["pearson_r"] is None and constant["kendall_tau"] is None


# --- command line -----------------------------------------------------------------------------------------------
def test_cli_search_prints_potentials_and_rank_prints_both_correlations(tmp_path, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    run = tmp_path / "run"
    assert main(["search", "--method", "pcnas", "--config", str(config), "--latency-ms", "1000", "--out", str(run),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "latency" in out and "limit: 1000 ms" in out and out.count("  interval ") == 3
    assert json.loads((run / "summary.json").read_text())["latency_limit_ms"] == 1000
    assert main(["train", str(run / "genotype.json"), "--epochs", "1", "--no-progress"]) == 0

    ranked = tmp_path / "rank"
    argv = ["rank", "--config", str(config), "-n", "3", "--train-epochs", "1", "--out", str(ranked), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "one-shot (uniform)" in out and "PC-NAS (pool)" in out and out.count("Kendall tau") == 2
    result = json.loads((ranked / "rank.json").read_text())
    assert result["num_architectures"] == 3 and len({tuple(a["ops"]) for a in result["architectures"]}) == 3
    standalone = np.array([a["standalone_test_accuracy"] for a in result["architectures"]])
    for name in ("oneshot", "pcnas"):
        supernet = np.array([a[f"{name}_supernet_accuracy"] for a in result["architectures"]])
        if supernet.std() > 0 and standalone.std() > 0:  # Pearson's r of the rows, computed here
            assert result[name]["pearson_r"] == pytest.approx(np.corrcoef(supernet, standalone)[0, 1])
        else:
            assert result[name]["pearson_r"] is None
        assert (ranked / name / "summary.json").exists()
    assert result["oneshot"]["effective_architectures_last"] == 27
    assert result["pcnas"]["effective_architectures_last"] == 2

    assert main(["rank", "--preset", "pgnas-digits", "--out", str(tmp_path / "r2"), "--no-progress"]) == EXIT_ERROR
    assert "compares PC-NAS super-networks" in capsys.readouterr().err
