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
from bayesnas.config import PRESETS, ConfigError
from bayesnas.data import load_dataset
from bayesnas.distributed import SINGLE
from bayesnas.experiments.chance import random_search_chance
from bayesnas.experiments.compare import method_config, method_overrides, rank_correlation, run_compare
from bayesnas.experiments.population import (
    ENUMERATION_LIMIT,
    Population,
    add_members,
    build_population,
    enumerate_genotypes,
    genotype_key,
    load_population_data,
    network_key,
    population_spec,
    sample_genotypes,
)
from bayesnas.io import read_jsonl, write_jsonl
from bayesnas.methods import get_method
from bayesnas.spaces import Genotype, get_space
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
    assert [network_key(space, g) for g in drawn] == list(pop.genotypes())
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
    assert "4 networks (0 more genotypes build one of them" in md and "8 trainings" in md and '"epochs": 1' in md
    assert (pop.folder / "accuracy_histogram.png").stat().st_size > 0
    assert (pop.folder / "accuracy_vs_params.png").stat().st_size > 0


def test_a_population_is_fp32_unless_asked_and_refuses_members_of_another_mode(tmp_path, monkeypatch):
    from bayesnas.speed import SPEED_FILE, machine_key

    assert population_spec("chain", "digits", TINY).recipe.precision == "fp32"  # the fast mode is opt-in here
    spec = population_spec("chain", "digits", {**TINY, "precision": "auto"})
    monkeypatch.setenv("BAYESNAS_CACHE", str(tmp_path))

    def fastest(mode: str) -> None:
        seconds = {m: 2.0 for m in ("fp32", "fp32+channels-last", "bf16", "bf16+channels-last")}
        (tmp_path / SPEED_FILE).write_text(json.dumps({machine_key(torch.device("cpu")): {**seconds, mode: 1.0}}))

    fastest("fp32+channels-last")
    build_population(spec, tmp_path / "pop", n=1, device="cpu", progress=False)
    assert [r["mode"] for r in read_jsonl(tmp_path / "pop" / "population.jsonl")] == ["fp32+channels-last"]
    fastest("bf16")  # the same population continued where auto measures another mode
    with pytest.raises(ConfigError, match=r"trained in fp32\+channels-last, and its precision 'auto' trains in bf16"):
        build_population(spec, tmp_path / "pop", n=2, device="cpu", progress=False)
    assert len(read_jsonl(tmp_path / "pop" / "population.jsonl")) == 1


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
    assert len({network_key(space, g) for g in ten}) == 10  # distinct networks, not only distinct choices
    assert [genotype_key(g) for g in sample_genotypes(space, 4, seed=5)] == [genotype_key(g) for g in ten[:4]]


def test_enumeration_spans_every_network_once():
    space = get_space("chain", {**CHAIN, **SHAPE})
    genotypes = enumerate_genotypes(space)
    every = [space.genotype(list(ops)) for ops in itertools.product(*(d.options for d in space.decisions()))]
    assert len(every) == math.prod(space.num_options())
    assert {network_key(space, g) for g in genotypes} == {network_key(space, g) for g in every}
    assert len({network_key(space, g) for g in genotypes}) == len(genotypes) < len(every)
    big = get_space("chain", {**CHAIN, **SHAPE, "depths": [5, 5]})
    assert big.size() > ENUMERATION_LIMIT
    with pytest.raises(ConfigError, match="enumerates at most"):
        enumerate_genotypes(big)


def _hand_made(folder, runs, space_options=None):
    """A population folder of hand-made rows: ``runs`` is ``[(ops, seed, val, test)]`` on the test chain."""
    spec = population_spec("chain", "digits", {**TINY, **({"space": space_options} if space_options else {})})
    folder.mkdir(exist_ok=True)
    (folder / "population.json").write_text(json.dumps(spec.to_dict()))
    write_jsonl(folder / "population.jsonl", [
        {"key": json.dumps({"ops": list(ops)}, separators=(",", ":")), "choices": {"ops": list(ops)}, "params": 1,
         "flops": 1, "seed": seed, "val_accuracy": val, "test_accuracy": test, "seconds": 1.0}
        for ops, seed, val, test in runs])
    return Population(folder)


OPS3 = list(itertools.product(["MBConv_1_3", "MBConv_3_3"], repeat=3))  # no Identity: no twins among these


def test_percentile_counts_lower_and_half_the_ties(tmp_path):
    accs = [0.5, 0.6, 0.6, 0.9]
    pop = _hand_made(tmp_path, [(OPS3[i], 0, a, a) for i, a in enumerate(accs)])
    assert pop.percentile(0.6) == pytest.approx(100 * (1 + 0.5 * 2) / 4)
    assert pop.percentile(1.0) == 100 and pop.percentile(0.1) == 0
    key = json.dumps({"ops": list(OPS3[3])}, separators=(",", ":"))
    assert pop.test_accuracy(key) == 0.9 and pop.test_accuracy("nope") is None


def test_twins_collapse_into_one_member(tmp_path):
    """Two chain genotypes that differ only by where ``Identity`` sits among a stage's residual mixops build the
    same network (the same modules, the same parameters in the same order): one member; the twin's training with
    a seed the member has is left out, its other seed joins."""
    space = get_space("chain", {**CHAIN, **SHAPE})
    a, b = space.genotype(["Identity", "MBConv_3_3", "MBConv_1_3"]), space.genotype(["MBConv_3_3", "Identity",
                                                                                       "MBConv_1_3"])
    assert [layer.name for layer in space.layers()][:2] == ["s0.l0", "s0.l1"]  # one stage: a residual run
    assert network_key(space, a) == network_key(space, b) and genotype_key(a) != genotype_key(b)
    torch.manual_seed(0)
    net_a = space.build(a)
    torch.manual_seed(0)
    net_b = space.build(b)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(net_a.eval()(x), net_b.eval()(x))  # the same function, parameter for parameter
    # the op after the transition is in another run: moving Identity across it is another network
    c = space.genotype(["MBConv_3_3", "MBConv_1_3", "Identity"])
    assert network_key(space, c) != network_key(space, a)
    pop = _hand_made(tmp_path, [(a.choices["ops"], 0, 0.5, 0.50), (b.choices["ops"], 0, 0.5, 0.50),
                                (b.choices["ops"], 1, 0.6, 0.70), (c.choices["ops"], 0, 0.4, 0.40)])
    assert len(pop.genotypes()) == 2 and pop.collapsed == 1
    member = pop.genotypes()[network_key(space, a)]
    assert member["twins"] == [genotype_key(a), genotype_key(b)] and sorted(member["runs"]) == [0, 1]
    assert pop.test_accuracy(network_key(space, b)) == pytest.approx(0.6)
    assert pop.seeds() == [0]  # c was trained with seed 0 only


def test_cell_twins_are_the_same_pairs_in_another_order():
    space = get_space("cells", {"layout": "N", "states": 2, "channels": 4})
    one = space.genotype({"normal": [[["sep_conv_3x3", 1], ["skip_connect", 0]], [["avg_pool_3x3", 2],
                                                                                   ["max_pool_3x3", 0]]]})
    two = space.genotype({"normal": [[["skip_connect", 0], ["sep_conv_3x3", 1]], [["max_pool_3x3", 0],
                                                                                   ["avg_pool_3x3", 2]]]})
    other = space.genotype({"normal": [[["skip_connect", 1], ["sep_conv_3x3", 0]], [["max_pool_3x3", 0],
                                                                                     ["avg_pool_3x3", 2]]]})
    assert network_key(space, one) == network_key(space, two) != network_key(space, other)


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


def test_compare_places_picks_against_a_fixed_reference(population, tmp_path):
    """The reference is never changed by a compare: a pick that is no member is trained under the reference's
    recipe and seeds in the comparison's own folder and placed; percentiles are over the members only."""
    pop, _ = population
    before = {name: (pop.folder / name).read_bytes() for name in ("population.json", "population.jsonl",
                                                                  "population.csv", "population.md")}
    result = run_compare(pop.folder, tmp_path, methods=["gdas", "random"], seeds=1,
                         overrides={"gdas": {"epochs": 1, "options": {"warmup_epochs": 0}}}, device="cpu",
                         progress=False)
    assert {name: (pop.folder / name).read_bytes() for name in before} == before
    table = {t["key"]: t for t in pop.table()}
    placed = read_jsonl(tmp_path / "placed.jsonl")
    best = max(table.values(), key=lambda t: t["val_accuracy"])
    summary = json.loads((tmp_path / "gdas" / "seed0" / "summary.json").read_text())
    assert summary["data_seed"] == 0 and summary["seed"] == 0
    for row in result["methods"]:
        pick = row["per_seed"][0]
        if pick["member"]:
            assert pick["genotype"] in table and row["pick_test_accuracy"] == table[pick["genotype"]]["test_accuracy"]
        else:  # trained with the reference's seeds, outside it
            runs = {r["seed"]: r["test_accuracy"] for r in placed
                    if network_key(pop.space, Genotype("chain", pop.space.config.to_dict(), r["choices"]))
                    == pick["genotype"]}
            assert sorted(runs) == pop.seeds()
            assert row["pick_test_accuracy"] == pytest.approx(np.mean(list(runs.values())))
        assert row["percentile"] == pytest.approx(pop.percentile(row["pick_test_accuracy"]))
        assert row["regret"] == pytest.approx(best["test_accuracy"] - row["pick_test_accuracy"])
        # random search at the same compute, from the reference's own trainings
        chance = random_search_chance(pop)
        assert pick["random_at_compute"] == pytest.approx(chance.at(pick["compute"]))
        assert row["difference"] == pytest.approx(pick["percentile"] - pick["random_at_compute"])
    gdas = result["ranking"]["supernet_val_accuracy"]["gdas/seed0"]
    assert len(gdas) == len(table) and all(0 <= a <= 1 for a in gdas)
    assert json.loads((tmp_path / "gdas" / "seed0" / "supernet_ranking.json").read_text())["members"] == list(table)
    assert not any(k.startswith("random") for k in result["ranking"]["supernet_val_accuracy"])  # nothing shared
    random_summary = json.loads((tmp_path / "random" / "seed0" / "summary.json").read_text())
    # random search's candidates: the searches' compute in member trainings, rounded
    assert random_summary["num_samples"] == max(1, round(result["methods"][0]["per_seed"][0]["compute"]))
    for name in ("compare.md", "compare.csv", "compare.json", "pick_percentiles.png", "supernet_vs_standalone.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| gdas | 1 |" in (tmp_path / "compare.md").read_text()


@pytest.mark.slow
def test_a_variant_is_its_own_row_with_its_own_seeds(population, tmp_path):
    pop, _ = population
    overrides = {"gdas": {"epochs": 1, "options": {"warmup_epochs": 0}}, "gdas-uniform-gate": {
        "method": "gdas", "seeds": 2, "epochs": 1, "options": {"arch_gate": "uniform", "warmup_epochs": 0}}}
    result = run_compare(pop.folder, tmp_path, methods=["gdas", "gdas-uniform-gate"], seeds=1, overrides=overrides,
                         device="cpu", progress=False)
    assert [(r["method"], r["runs"], r["seeds"]) for r in result["methods"]] == [("gdas", "gdas", 1),
                                                                              ("gdas-uniform-gate", "gdas", 2)]
    config = json.loads((tmp_path / "gdas-uniform-gate" / "seed1" / "config.json").read_text())
    assert config["method"] == "gdas" and config["options"]["arch_gate"] == "uniform"
    with pytest.raises(ConfigError, match="unknown method\\(s\\) gdas-typo"):
        run_compare(pop.folder, tmp_path / "x", methods=["gdas-typo"], device="cpu")
    with pytest.raises(ConfigError, match="seeds must be an integer >= 1"):
        run_compare(pop.folder, tmp_path / "x", methods=["gdas"], overrides={"gdas": {"seeds": 0}}, device="cpu")
    with pytest.raises(ConfigError, match="must not be the population's folder"):
        run_compare(pop.folder, pop.folder, methods=["gdas"], device="cpu")
    assert not (tmp_path / "x").exists()


def test_inherited_accuracy_equals_the_built_network_with_batch_statistics(population, tmp_path):
    """GDAS's trained super-network: the inherited-weight accuracy is that of the discrete network built from its
    state dict, every BatchNorm on the batch's statistics (computed here by hand, in one full batch)."""
    from bayesnas.experiments.population import load_population_data
    from bayesnas.infer import load_trained, run_search

    pop, _ = population
    run = tmp_path / "gdas"
    config = method_config("gdas", pop, 0, {"epochs": 1, "options": {"warmup_epochs": 0}})
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


@pytest.mark.slow
def test_compare_under_two_ranks_deals_whole_searches(population, tmp_path):
    """Under ``torchrun`` each search runs once, whole, on one rank (ranks take the next unclaimed one), and the
    comparison is the one of a single process: the same picks, percentiles and super-network ranking."""
    from tests.test_distributed import timeless
    from tests.two_ranks import compare_worker, free_port

    pop, _ = population
    # random search's candidates pinned, to keep its seconds short
    overrides = {"gdas": {"epochs": 1, "options": {"warmup_epochs": 0}},
                 "random": {"epochs": 1, "options": {"num_samples": 2}}}
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

    timed = {"search_seconds", "seconds", "compute_by_seconds"}

    def placed(result):
        return [{k: [{f: v for f, v in p.items() if f not in timed} for p in v] if k == "per_seed" else v
                 for k, v in row.items() if k not in timed} for row in result["methods"]]

    assert placed(two) == placed(alone)
    assert two["ranking"] == alone["ranking"]


def test_compare_overrides_name_compared_methods(population, tmp_path):
    pop, _ = population
    with pytest.raises(ConfigError, match="'vinnas', which is not compared"):
        run_compare(pop.folder, tmp_path / "c", methods=["gdas"], overrides={"vinnas": {"epochs": 1}}, device="cpu")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        run_compare(pop.folder, tmp_path / "c", methods=["gdas"], overrides={"gdas": 3}, device="cpu")
    assert not (tmp_path / "c").exists()
    assert method_overrides({"gdas": {"options": {"arch_gate": "uniform"}}}, ["gdas", "random"], epochs=2) == {
        "gdas": {"options": {"arch_gate": "uniform"}, "epochs": 2}, "random": {"epochs": 2}}


def test_random_search_gets_the_searches_compute_in_candidates(population):
    """Random search's trained check: the searches' median compute in member trainings, rounded, at least one, each
    candidate trained under the population's recipe (its epochs, learning rate, batch size); a pinned
    ``num_samples`` wins."""
    from bayesnas.experiments.compare import _random_config

    pop, _ = population
    recipe = pop.spec.recipe
    config = _random_config(pop, 1, 7.4, None)
    assert config.options["num_samples"] == 7 and config.seed == 1
    assert (config.epochs, config.lr, config.batch_size) == (recipe.epochs, recipe.lr, recipe.batch_size)
    assert _random_config(pop, 0, 0.1, None).options["num_samples"] == 1
    assert _random_config(pop, 0, 100, {"options": {"num_samples": 3}}).options["num_samples"] == 3


def test_method_config_finds_a_preset_under_any_of_its_names(tmp_path):
    from bayesnas.experiments.compare import preset_for

    assert preset_for("vinnas", "fashion-mnist") == "vinnas-fashion"
    assert preset_for("gdas", "fashion-mnist") == "gdas-digits"  # none for that data set: the digits preset
    assert preset_for("vinnas", "digits") == "vinnas-digits"
    spec = population_spec("chain", "fashion-mnist", {"space": CHAIN, "data_fraction": 0.1})
    (tmp_path / "population.json").write_text(json.dumps(spec.to_dict()))
    config = method_config("vinnas", Population(tmp_path), seed=2)
    fashion = PRESETS["vinnas-fashion"]
    assert config.dataset == "fashion-mnist" and config.space_name == "chain" and config.space == CHAIN
    assert config.epochs == fashion["epochs"] and config.batch_size == fashion["batch_size"]
    assert config.options["warmup_epochs"] == fashion["options"]["warmup_epochs"]
    assert config.data_fraction == 0.1  # the population's data, not the preset's half


def test_a_genotype_given_twice_is_trained_once_per_seed(population, tmp_path):
    """Two searches that pick the same genotype add its missing seed once (it was trained and appended twice)."""
    pop, _ = population
    folder = _copy_population(pop, tmp_path / "pop")
    data = load_population_data(pop.spec, torch.device("cpu"))
    space = pop.spec.space(data)
    before = read_jsonl(folder / "population.jsonl")  # other tests may have added picks to the shared folder
    fresh = next(g for g in enumerate_genotypes(space) if genotype_key(g) not in {r["key"] for r in before})
    assert add_members(folder / "population.jsonl", pop.spec, [fresh, fresh], [0], data, SINGLE, progress=False) == 1
    rows = read_jsonl(folder / "population.jsonl")
    assert [r["key"] for r in rows].count(genotype_key(fresh)) == 1 and len(rows) == len(before) + 1


def test_a_population_in_use_is_refused_and_another_configuration_is_named(population, tmp_path):
    """Two builds into one folder kept 8 of 10 trainings: the second is refused while the first holds the lock."""
    import subprocess
    import sys

    from bayesnas.run_folder import LOCK, RunFolderError

    pop, _ = population
    folder = _copy_population(pop, tmp_path / "pop")
    before = (folder / "population.jsonl").read_bytes()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / LOCK).write_text(str(sleeper.pid))
        with pytest.raises(RunFolderError, match=f"in use by a running population \\(process {sleeper.pid}\\)"):
            build_population(pop.spec, folder, n=5, seeds=2, device="cpu", progress=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert (folder / "population.jsonl").read_bytes() == before
    other = population_spec("chain", "digits", {**TINY, "data_fraction": 0.3})
    with pytest.raises(ConfigError, match="another configuration \\(differs in: data_fraction;"):
        build_population(other, folder, n=1, device="cpu", progress=False)


def test_compare_refuses_a_users_folder_and_stale_searches(population, tmp_path):
    """A user's compare.md is never replaced; a folder whose searches ran under other settings is refused with the
    keys that differ, instead of reporting the old searches' table."""
    pop, _ = population
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "compare.md").write_text("my notes")
    with pytest.raises(ConfigError, match="not a bayesnas run folder"):
        run_compare(pop.folder, mine, methods=["gdas"], overrides={"gdas": {"epochs": 1}}, device="cpu")
    one_epoch = {"gdas": {"epochs": 1, "options": {"warmup_epochs": 0}}}
    assert [p.name for p in mine.iterdir()] == ["compare.md"] and (mine / "compare.md").read_text() == "my notes"
    out = tmp_path / "cmp"
    run_compare(pop.folder, out, methods=["gdas"], overrides=one_epoch, device="cpu", progress=False)
    before = (out / "compare.json").read_bytes()
    with pytest.raises(ConfigError, match="other settings \\(differs in: epochs\\)"):
        run_compare(pop.folder, out, methods=["gdas"],
                    overrides={"gdas": {"epochs": 2, "options": {"warmup_epochs": 0}}}, device="cpu")
    assert (out / "compare.json").read_bytes() == before
    with pytest.raises(ConfigError, match="holds a bayesnas compare, not a population"):
        build_population(pop.spec, out, n=1, device="cpu", progress=False)
