"""Ground-truth populations (`bayesnas bench population`) and the comparison of searches against them
(`bayesnas bench compare`), on tiny spaces and a quarter of digits."""

import csv
import itertools
import json
import math

import numpy as np
import pytest
import torch

from bayesnas.cli import main
from bayesnas.compare import method_config, method_overrides, rank_correlation, run_compare
from bayesnas.config import ConfigError
from bayesnas.data import load_dataset
from bayesnas.distributed import SINGLE
from bayesnas.io import read_jsonl, write_jsonl
from bayesnas.methods import get_method
from bayesnas.population import (
    ENUMERATION_LIMIT,
    Population,
    add_members,
    build_population,
    enumerate_genotypes,
    genotype_key,
    load_population_data,
    population_spec,
    sample_genotypes,
)
from bayesnas.spaces import get_space
from bayesnas.spaces.profile import count_params

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks

CHAIN = {"stem_channels": 8, "stem_stride": 1, "first_block_channels": 0, "widths": [8, 16], "depths": [2, 2],
         "strides": [1, 2], "head_channels": 0, "ops": ["MBConv_1_3", "MBConv_3_3", "Identity"],
         "transition_op": "MBConv_1_3"}
SHAPE = {"in_channels": 1, "num_classes": 10, "image_size": 8}
TINY = {"space": CHAIN, "data_fraction": 0.25, "batch_size": 16, "options": {"retrain_epochs": 1}}


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    """3 chain genotypes x 2 training seeds, then extended to 4 genotypes (the first 6 rows kept)."""
    out = tmp_path_factory.mktemp("pop")
    spec = population_spec("chain", "digits", TINY)
    build_population(spec, out, n=3, seeds=2, device="cpu", progress=False)
    first = read_jsonl(out / "population.jsonl")
    build_population(spec, out, n=4, seeds=2, device="cpu", progress=False)
    return Population(out), first


def test_population_rows_sizes_and_files(population):
    pop, first = population
    rows = read_jsonl(pop.folder / "population.jsonl")
    assert len(first) == 6 and len(rows) == 8 and rows[:6] == first  # extended, nothing retrained
    space = get_space("chain", {**CHAIN, **SHAPE})
    drawn = sample_genotypes(space, 4, seed=0)
    assert [genotype_key(g) for g in drawn] == list(pop.genotypes())
    table = pop.table()
    for genotype, row in zip(drawn, table, strict=True):
        assert row["params"] == count_params(space.build(genotype))  # the built network's own count
        assert row["seeds"] == 2
        assert row["test_accuracy"] == pytest.approx((row["test_accuracy_seed0"] + row["test_accuracy_seed1"]) / 2)
        assert 0 <= row["val_accuracy"] <= 1
    with open(pop.folder / "population.csv") as fh:
        parsed = list(csv.DictReader(fh))
    assert [r["key"] for r in parsed] == [r["key"] for r in table]
    assert float(parsed[0]["test_accuracy"]) == pytest.approx(table[0]["test_accuracy"])
    md = (pop.folder / "population.md").read_text()
    assert "4 genotypes, 8 trainings" in md and '"epochs": 1' in md
    assert (pop.folder / "accuracy_histogram.png").stat().st_size > 0
    assert (pop.folder / "accuracy_vs_params.png").stat().st_size > 0


def test_population_refuses_other_configuration_and_foreign_folders(population, tmp_path):
    pop, _ = population
    other = population_spec("chain", "digits", {**TINY, "options": {"retrain_epochs": 2}})
    with pytest.raises(ConfigError, match="another configuration"):
        build_population(other, pop.folder, n=1, device="cpu", progress=False)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        build_population(other, tmp_path, n=1, device="cpu", progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(ConfigError, match="number of genotypes `n` or `enumerate_all=True`"):
        build_population(other, tmp_path / "x", device="cpu", progress=False)


def test_sampling_is_distinct_and_extends():
    space = get_space("chain", {**CHAIN, **SHAPE})
    ten = sample_genotypes(space, 10, seed=5)
    assert len({genotype_key(g) for g in ten}) == 10
    assert [genotype_key(g) for g in sample_genotypes(space, 4, seed=5)] == [genotype_key(g) for g in ten[:4]]


def test_enumeration_spans_every_decision_once():
    space = get_space("chain", {**CHAIN, **SHAPE})
    genotypes = enumerate_genotypes(space)
    expected = {json.dumps(list(ops)) for ops in itertools.product(
        *(space.decisions()[i].options for i in range(len(space.decisions()))))}
    assert {json.dumps(g.choices["ops"]) for g in genotypes} == expected
    assert len(genotypes) == math.prod(space.num_options())
    big = get_space("chain", {**CHAIN, **SHAPE, "depths": [5, 5]})
    assert big.size() > ENUMERATION_LIMIT
    with pytest.raises(ConfigError, match="enumerates at most"):
        enumerate_genotypes(big)


def test_percentile_counts_lower_and_half_the_ties(tmp_path):
    spec = population_spec("chain", "digits", TINY)
    (tmp_path / "population.json").write_text(json.dumps(spec.to_dict()))
    accs = [0.5, 0.6, 0.6, 0.9]
    write_jsonl(tmp_path / "population.jsonl", [
        {"key": f"g{i}", "choices": {}, "params": 1, "flops": 1, "seed": 0, "val_accuracy": a, "test_accuracy": a,
         "seconds": 1.0} for i, a in enumerate(accs)])
    pop = Population(tmp_path)
    assert pop.percentile(0.6) == pytest.approx(100 * (1 + 0.5 * 2) / 4)
    assert pop.percentile(1.0) == 100 and pop.percentile(0.1) == 0
    assert pop.test_accuracy("g3") == 0.9 and pop.test_accuracy("nope") is None


def test_rank_correlation_against_pair_counting():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=12), rng.normal(size=12)
    concordant = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i in range(12) for j in range(i))
    ranks = lambda v: np.argsort(np.argsort(v)).astype(float)  # noqa: E731 - no ties here
    rho = np.corrcoef(ranks(x), ranks(y))[0, 1]
    r = rank_correlation(x, y, resamples=300)
    assert r["kendall_tau"] == pytest.approx(concordant / 66)
    assert r["spearman_rho"] == pytest.approx(rho)
    for key in ("kendall_tau", "spearman_rho"):
        low, high = r[f"{key}_95"]
        assert -1 <= low <= r[key] <= high <= 1
    perfect = rank_correlation([1, 2, 3, 4], [10, 20, 30, 40], resamples=50)
    assert perfect["kendall_tau"] == 1 and perfect["kendall_tau_95"] == [1, 1]
    assert rank_correlation([1, 1, 1], [1, 2, 3])["kendall_tau"] is None


def test_method_config_searches_the_population_space_and_split(population):
    pop, _ = population
    config = method_config("gdas", pop, seed=3)
    assert config.space_name == "chain" and config.space == CHAIN
    assert config.seed == 3 and config.split_seed == 0 and config.data_fraction == 0.25
    assert config.options["retrain_epochs"] == 0
    assert "retrain_epochs" not in method_config("pgnas", pop, seed=0).options
    # overriding some options keeps the others' compare settings (no retraining)
    vinnas = method_config("vinnas", pop, seed=0, overrides={"epochs": 20, "options": {"warmup_epochs": 5}})
    assert vinnas.epochs == 20 and vinnas.options["warmup_epochs"] == 5 and vinnas.options["retrain_epochs"] == 0
    # PC-NAS's preset schedule (20 + 5 decisions x 4 epochs) is for its own chain; on this one (3 decisions) the
    # warm-up fills the preset's 40 epochs
    pcnas = method_config("pcnas", pop, seed=0)
    assert pcnas.epochs == 40 and pcnas.options["warmup_epochs"] is None
    data = load_dataset("digits", fraction=0.25)
    assert get_method("pcnas")(pcnas, data, torch.device("cpu")).warmup_epochs == 40 - 3 * 4


def test_compare_places_picks_and_ranks_the_population(population, tmp_path):
    pop, _ = population
    result = run_compare(pop.folder, tmp_path, methods=["gdas", "random"], seeds=1,
                         overrides={"gdas": {"epochs": 1}, "random": {"epochs": 1}}, device="cpu", progress=False)
    after = Population(pop.folder)
    table = {t["key"]: t for t in after.table()}
    best = max(table.values(), key=lambda t: t["val_accuracy"])
    summary = json.loads((tmp_path / "gdas" / "seed0" / "summary.json").read_text())
    assert summary["data_seed"] == 0 and summary["seed"] == 0
    for row in result["methods"]:
        pick = row["per_seed"][0]
        assert pick["genotype"] in table  # trained into the population where it was missing
        assert row["pick_test_accuracy"] == pytest.approx(table[pick["genotype"]]["test_accuracy"])
        assert row["percentile"] == pytest.approx(after.percentile(row["pick_test_accuracy"]))
        assert row["regret"] == pytest.approx(best["test_accuracy"] - row["pick_test_accuracy"])
    with open(pop.folder / "population.csv") as fh:  # the report is rewritten with the picks
        assert len(list(csv.DictReader(fh))) == len(table)
    gdas = result["ranking"]["gdas"]
    assert gdas["n"] == len(table) == len(gdas["supernet_val_accuracy"])
    assert all(0 <= a <= 1 for a in gdas["supernet_val_accuracy"])
    assert "random" not in result["ranking"]  # nothing shared, nothing to rank
    random_summary = json.loads((tmp_path / "random" / "seed0" / "summary.json").read_text())
    assert random_summary["num_samples"] >= 1
    for name in ("compare.md", "compare.csv", "compare.json", "pick_percentiles.png", "supernet_vs_standalone.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| gdas | 1 |" in (tmp_path / "compare.md").read_text()


def test_inherited_accuracy_equals_the_built_network_with_batch_statistics(population, tmp_path):
    """GDAS's trained super-network: the inherited-weight accuracy is that of the discrete network built from its
    state dict, every BatchNorm on the batch's statistics (computed here by hand, in one full batch)."""
    from bayesnas.infer import load_trained, run_search
    from bayesnas.population import load_population_data

    pop, _ = population
    run = tmp_path / "gdas"
    config = method_config("gdas", pop, 0, {"epochs": 1})
    run_search(config, run, device="cpu", progress=False)
    data = load_population_data(pop.spec, torch.device("cpu"))
    method = load_trained(config, run, data, torch.device("cpu"))
    genotype = sample_genotypes(method.space, 1, seed=9)[0]
    net = method.space.build(genotype, inherit=method.supernet_state())
    net.train()  # batch statistics; the running averages of this throwaway copy may move
    with torch.no_grad():
        expected = float((net(data.val.x).argmax(-1) == data.val.y).float().mean())
    assert method.inherited_accuracy(genotype, data.val, batch_size=len(data.val)) == pytest.approx(expected)


def test_cli_population_and_compare_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):  # --n and --all exclude each other
        main(["bench", "population", "--space", "chain", "--n", "2", "--all", "--out", str(tmp_path / "p")])
    assert main(["bench", "compare", "--population", str(tmp_path / "none"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bayesnas bench: error:") and "holds no population" in err[-1]
    config = tmp_path / "overrides.json"
    config.write_text('{"vinnas": {"epochs": 2}}')
    assert main(["bench", "compare", "--population", str(tmp_path / "none"), "--methods", "gdas", "--config",
                 str(config), "--out", str(tmp_path / "c")]) == 2
    assert "'vinnas', which is not compared" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "c").exists()


def _copy_population(population: Population, folder):
    folder.mkdir()
    for name in ("population.json", "population.jsonl"):
        (folder / name).write_bytes((population.folder / name).read_bytes())
    return folder


def test_compare_under_two_ranks_deals_whole_searches(population, tmp_path):
    """Under ``torchrun`` each search runs once, whole, on one rank (ranks take the next unclaimed one), and the
    comparison is the one of a single process: the same picks, percentiles and super-network ranking."""
    from tests.test_distributed import timeless
    from tests.two_ranks import compare_worker, free_port

    pop, _ = population
    # random search's candidates pinned: its budget is the searches' wall-clock seconds, which differ between runs
    overrides = {"gdas": {"epochs": 1}, "random": {"epochs": 1, "options": {"num_samples": 2}}}
    folder = _copy_population(pop, tmp_path / "pop")
    torch.multiprocessing.spawn(compare_worker, args=(2, free_port(), str(folder), str(tmp_path / "two"), overrides),
                                nprocs=2)
    ran = [json.loads((tmp_path / "two" / f"ran.rank{r}.json").read_text()) for r in range(2)]
    assert all(ran) and sorted(ran[0] + ran[1]) == [["gdas", 0], ["gdas", 1], ["random", 0], ["random", 1]]
    assert not (tmp_path / "two" / ".claims").exists()
    alone = run_compare(_copy_population(pop, tmp_path / "pop1"), tmp_path / "one", methods=["gdas", "random"],
                        seeds=2, overrides=overrides, device="cpu", progress=False)
    two = json.loads((tmp_path / "two" / "compare.json").read_text())
    for method in ("gdas", "random"):
        for seed in range(2):
            summaries = [json.loads((tmp_path / d / method / f"seed{seed}" / "summary.json").read_text())
                         for d in ("two", "one")]
            assert "world_size" not in summaries[0]  # run in one process, not over the ranks
            assert timeless(summaries[0]) == timeless(summaries[1])

    def placed(result):
        return [{k: v for k, v in row.items() if k != "search_seconds"} for row in result["methods"]]

    assert placed(two) == placed(alone)
    assert two["ranking"]["gdas"]["supernet_val_accuracy"] == alone["ranking"]["gdas"]["supernet_val_accuracy"]


def test_compare_overrides_name_compared_methods(population, tmp_path):
    pop, _ = population
    with pytest.raises(ConfigError, match="'vinnas', which is not compared"):
        run_compare(pop.folder, tmp_path / "c", methods=["gdas"], overrides={"vinnas": {"epochs": 1}}, device="cpu")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        run_compare(pop.folder, tmp_path / "c", methods=["gdas"], overrides={"gdas": 3}, device="cpu")
    assert not (tmp_path / "c").exists()
    assert method_overrides({"gdas": {"options": {"arch_gate": "uniform"}}}, ["gdas", "random"], epochs=2) == {
        "gdas": {"options": {"arch_gate": "uniform"}, "epochs": 2}, "random": {"epochs": 2}}


def test_random_search_gets_the_searches_mean_seconds_in_candidates(population):
    """Random search's candidates: the searches' mean seconds over one candidate's cost (the population's mean
    seconds per epoch times random search's epochs), rounded, at least one; a pinned ``num_samples`` wins."""
    from bayesnas.compare import _random_config

    pop, _ = population
    per_epoch = sum(r["seconds"] for r in pop.rows) / len(pop.rows) / pop.spec.recipe.epochs
    config = _random_config(pop, 1, 7.4 * per_epoch * 2, {"epochs": 2})
    assert config.options["num_samples"] == 7 and config.epochs == 2 and config.seed == 1
    assert _random_config(pop, 0, 0.1 * per_epoch, {"epochs": 2}).options["num_samples"] == 1
    pinned = _random_config(pop, 0, 100 * per_epoch, {"epochs": 2, "options": {"num_samples": 3}})
    assert pinned.options["num_samples"] == 3


def test_a_genotype_given_twice_is_trained_once_per_seed(population, tmp_path):
    """Two searches that pick the same genotype add its missing seed once (it was trained and appended twice)."""
    pop, _ = population
    folder = _copy_population(pop, tmp_path / "pop")
    data = load_population_data(pop.spec, torch.device("cpu"))
    space = pop.spec.space(data)
    before = read_jsonl(folder / "population.jsonl")  # other tests may have added picks to the shared folder
    fresh = next(g for g in enumerate_genotypes(space) if genotype_key(g) not in {r["key"] for r in before})
    assert add_members(folder, pop.spec, [fresh, fresh], 1, data, SINGLE, progress=False) == 1
    rows = read_jsonl(folder / "population.jsonl")
    assert [r["key"] for r in rows].count(genotype_key(fresh)) == 1 and len(rows) == len(before) + 1
