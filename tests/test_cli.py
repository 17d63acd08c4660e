"""The command line: help texts, bad inputs (one line, non-zero exit, nothing overwritten), train, diagnose."""

import json
import re
import subprocess
import sys

import pytest

from bayesnas.cli import EXIT_ERROR, build_parser, main
from bayesnas.config import preset
from tests.conftest import TINY


def _tiny_config_file(tmp_path, **extra):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({**TINY, "epochs": 1, **extra}))
    return str(path)


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_every_subcommand_documents_its_options_and_defaults():
    parser = build_parser()
    text = parser.format_help()
    for command in ("search", "train", "diagnose"):
        assert command in text
    sub = parser._subparsers._group_actions[0].choices
    search_help = sub["search"].format_help()
    assert "--method" in search_help and "--resume" in search_help and "(default: auto)" in search_help
    assert "pgnas-digits" in search_help
    assert "(default: 30)" in sub["train"].format_help()


def test_each_default_shows_once_and_truly():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices
    texts = [parser.format_help()] + [p.format_help() for p in sub.values()]
    for text in texts:
        flat = " ".join(text.split())
        assert "(default: None)" not in flat and "(default: [])" not in flat and "(default: False)" not in flat
        assert "(default: the preset's) (default:" not in flat
    search = " ".join(sub["search"].format_help().split())
    assert "learning rate of the weights, > 0 (SGD with momentum; VINNAS: Adam" in search
    for method in ("pgnas", "vinnas", "gdas", "pcnas", "oneshot", "random"):
        assert method in search


def test_options_lists_a_methods_keys_from_its_dataclass(capsys):
    import dataclasses

    from bayesnas.methods import get_method

    assert main(["options", "gdas"]) == 0
    out = capsys.readouterr().out
    for field in dataclasses.fields(get_method("gdas").options_type):
        assert f"  {field.name} (" in out
    assert "  tau_min (float, > 0, default 1.0" in out
    assert "Final temperature: 1 in the paper, 0.1 in the authors' code." in out
    assert main(["options", "pcnas"]) == 0
    assert "num_evaluations (int, [1, 10000000], default 900; pcnas-digits: 20)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["options", "foo"])
    assert "invalid choice: 'foo'" in capsys.readouterr().err


def test_options_lists_the_configuration_and_a_spaces_keys_in_plain_text(capsys):
    import dataclasses

    from bayesnas.config import SPACE_DEFAULTS, SearchConfig

    assert main(["options", "config"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {f.name} (" in out for f in dataclasses.fields(SearchConfig))
    assert "  epochs (int, [1, 100000], default 40)" in out and "``" not in out and ":mod:" not in out
    assert "The search space (cells, chain, branches)" in out  # ``cells`` in the docstring: plain here
    assert main(["options", "space", "chain"]) == 0
    out = capsys.readouterr().out
    assert "  widths (tuple[int, ...], default [24, 40, 80, 96, 192, 320]; moved: [16, 32, 64])" in out
    assert SPACE_DEFAULTS["chain"]["widths"] == [16, 32, 64] and "  image_size (" not in out  # the data's
    assert main(["options", "space"]) == EXIT_ERROR and "name the space" in capsys.readouterr().err


def test_space_options_are_a_flag_and_a_space_key_given_as_an_option_says_so(tmp_path, capsys):
    from bayesnas.cli import search_config

    config = search_config(build_parser().parse_args(["search", "--method", "gdas", "--space-option", "channels=6",
                                                      "--space-option", "layout=\"NR\""]))
    assert config.space == {**preset("gdas-digits").space, "channels": 6, "layout": "NR"}
    assert main(["search", "--option", "channels=8", "--out", str(tmp_path / "r"), "--no-progress"]) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "channels: a search-space option" in err[0] and "--space-option channels=" in err[0]


def test_help_does_not_import_torch():
    code = ("import sys\nfrom bayesnas.cli import main\ntry:\n    main(['search', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint(sorted(m for m in ('torch', 'pyro', 'arviz') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "bayesnas", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "search" in out.stdout


@pytest.mark.parametrize("argv,match", [
    (["search", "--method", "darts"], "unknown method 'darts'; choose one of: gdas, oneshot, pcnas, pgnas, random,"),
    (["search", "--preset", "nope"], "unknown preset 'nope'"),
    (["search", "--dataset", "imagenet"], "unknown"),
    (["search", "--option", "temperature=\"hot\""], "method 'pgnas': temperature must be float, got 'hot'"),
    (["search", "--option", "bogus=1"], "unknown option(s) bogus"),
    (["search", "--dataset", "mnist"], "--data-dir"),
    (["search", "--device", "tpu"], "unknown device"),
])
def test_bad_search_inputs_fail_with_one_line(argv, match, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out), "--no-progress"]) == EXIT_ERROR
    assert match in _error_line(capsys)
    assert not (out / "checkpoint.pt").exists()


def test_unknown_method_in_config_file(tmp_path, capsys):
    assert main(["search", "--config", _tiny_config_file(tmp_path, method="darts"), "--out",
                 str(tmp_path / "run")]) == EXIT_ERROR
    assert "unknown method 'darts'" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_missing_data_folder_says_where_it_looked(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["search", "--dataset", "mnist", "--data-dir", str(missing), "--out",
                 str(tmp_path / "run")]) == EXIT_ERROR
    line = _error_line(capsys)
    assert str(missing) in line and "mnist" in line.lower()


@pytest.mark.parametrize("content,match", [
    ("{broken", "not valid JSON"),
    ("[1]", "JSON object"),
    ('{"epochs": "many"}', "epochs must be int, got 'many'"),
    ('{"learning_rate": 0.1}', "unknown option(s) learning_rate"),
    ('{"epochs": 0}', "epochs must be [1, 100000], got 0"),
    ('{"space": {"widths": [8], "depths": [1, 2]}}', "widths and depths"),
])
def test_malformed_config_files(tmp_path, capsys, content, match):
    path = tmp_path / "config.json"
    path.write_text(content)
    assert main(["search", "--config", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == EXIT_ERROR
    assert match in _error_line(capsys)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_malformed_genotype_for_train(tmp_path, capsys):
    path = tmp_path / "genotype.json"
    path.write_text('{"space": "branches", "config": {}, "choices": {"s0.b0.a": {"k3": [0]}}}')
    assert main(["train", str(path), "--no-progress"]) == EXIT_ERROR
    assert "do not fit the space" in _error_line(capsys)


def test_nan_loss_stops_with_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["search", "--config", _tiny_config_file(tmp_path), "--lr", "1e30", "--out", str(run),
                 "--no-progress"])
    assert code == EXIT_ERROR
    line = _error_line(capsys)
    assert "loss became" in line and "search stopped" in line
    assert not (run / "summary.json").exists()


@pytest.mark.slow
def test_search_train_diagnose_round_trip(tmp_path, capsys):
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"run{seed}"
        assert main(["search", "--config", _tiny_config_file(tmp_path), "--seed", str(seed), "--out", str(run),
                     "--no-progress"]) == 0
        runs.append(str(run))
    out = capsys.readouterr().out
    assert "chosen architecture" in out and "test accuracy" in out and "run folder" in out
    assert "(the selection's own split: optimistic)" in out and "(unbiased)" in out
    seconds = re.search(r"^search [\d.]+ s, selection [\d.]+ s, export ([\d.]+) s \(posterior draws, predictive "
                        r"groups, plots\)$", out, re.MULTILINE)
    exported = json.loads((tmp_path / "run0/summary.json").read_text())["export_seconds"]
    assert seconds and exported > 0 and float(seconds.group(1)) == pytest.approx(exported, abs=0.051)
    before = (tmp_path / "run0/summary.json").read_bytes()
    # a second search into the same folder is refused and leaves it untouched
    assert main(["search", "--config", _tiny_config_file(tmp_path), "--out", runs[0], "--no-progress"]) \
        == EXIT_ERROR
    assert "already holds a search run" in _error_line(capsys)
    assert (tmp_path / "run0/summary.json").read_bytes() == before

    assert main(["train", f"{runs[0]}/genotype.json", "--epochs", "1", "--no-progress"]) == 0
    trained = json.loads((tmp_path / "run0/train_summary.json").read_text())
    assert 0 <= trained["test_accuracy"] <= 1 and trained["params"] > 0

    before = {p.name: p.read_bytes() for p in (tmp_path / "run0").iterdir() if p.is_file()}
    out = tmp_path / "diag"
    assert main(["diagnose", *runs, "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "r_hat" in summary and "keep_fraction" in summary
    assert f"chains: run0/seed0 = {runs[0]}; run1/seed1 = {runs[1]}" in summary
    assert json.loads((out / "chains.json").read_text()) == [{"chain": "run0/seed0", "run": runs[0]},
                                                              {"chain": "run1/seed1", "run": runs[1]}]
    for name in ("diagnose_forest.png", "diagnose_drop_rates.png", "summary.csv", "training_run0_seed0.png"):
        assert (out / name).exists(), name
    # the runs are only read
    assert {p.name: p.read_bytes() for p in (tmp_path / "run0").iterdir() if p.is_file()} == before

    # one run: ESS, and why there is no r_hat
    assert main(["diagnose", runs[0], "--out", str(tmp_path / "one")]) == 0
    single = capsys.readouterr().out
    assert "ess_bulk" in single and "r_hat needs two or more runs" in single
    assert "r_hat " not in single.split("ESS:")[0]
    # runs of other settings are not chains of one posterior, unless asked
    other = tmp_path / "other"
    assert main(["search", "--config", _tiny_config_file(tmp_path), "--epochs", "2", "--out", str(other),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["diagnose", runs[0], str(other), "--out", str(tmp_path / "mixed")]) == EXIT_ERROR
    assert _error_line(capsys).endswith("configurations differ in epochs (not only the seed): they are not chains "
                                        "of one posterior; pass --allow-mixed to compare them anyway")
    assert main(["diagnose", runs[0], str(other), "--allow-mixed", "--out", str(tmp_path / "mixed")]) == 0
    assert main(["diagnose", runs[0], "--out", str(tmp_path / "run0" / "plots")]) == EXIT_ERROR
    assert "lies inside the run" in _error_line(capsys)


def test_diagnose_rejects_a_folder_without_posterior(tmp_path, capsys):
    assert main(["diagnose", str(tmp_path)]) == EXIT_ERROR
    assert "no posterior.nc" in _error_line(capsys)


def test_corrupted_checkpoint_via_cli(tmp_path, capsys):
    run = tmp_path / "run"
    config = _tiny_config_file(tmp_path)
    assert main(["search", "--config", config, "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    (run / "checkpoint.pt").write_bytes(b"garbage")
    assert main(["search", "--config", config, "--out", str(run), "--resume", "--no-progress"]) == EXIT_ERROR
    assert "corrupted or unreadable" in _error_line(capsys)
    assert (run / "checkpoint.pt").read_bytes() == b"garbage"


def test_version_prints_the_package_version(capsys):
    import bayesnas

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"bayesnas {bayesnas.__version__}"


def test_method_names_are_case_insensitive_and_data_fraction_is_a_flag():
    from bayesnas.cli import search_config

    config = search_config(build_parser().parse_args(["search", "--method", "GDAS", "--data-fraction", "0.2"]))
    assert (config.method, config.data_fraction) == ("gdas", 0.2)
    assert config.options == preset("gdas-digits").options  # the method's own preset, as with --method gdas


def test_a_configuration_key_given_as_an_option_says_where_it_belongs(tmp_path, capsys):
    assert main(["search", "--method", "gdas", "--option", "data_fraction=0.2", "--out", str(tmp_path / "r"),
                 "--no-progress"]) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data_fraction: a configuration key, not an option of method 'gdas'" in err[0]
    assert "--data-fraction" in err[0] and not (tmp_path / "r").exists()


def test_dir_of_the_package_lists_the_public_api_only():
    import bayesnas

    assert dir(bayesnas) == sorted({*bayesnas.__all__, "__version__"})
    assert not {"importlib", "annotations", "Any"} & set(dir(bayesnas))


def test_resume_needs_only_the_run_folder_and_says_where_it_resumes(tmp_path, capsys):
    """``--resume --out DIR`` continues from the run's own config.json (the flags it was started with need not be
    repeated; one given must agree, or it is refused naming the key) and says from which epoch it resumes."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY, "epochs": 2}))
    run = tmp_path / "run"
    assert main(["search", "--config", str(config), "--seed", "3", "--out", str(run), "--no-progress"]) == 0
    first = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()  # as if killed after its last checkpoint
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines == [f"epoch {r['epoch'] + 1}/2: loss {r['loss']:.4f}, train accuracy {r['train_accuracy']:.4f}, "
                     f"val accuracy {r['val_accuracy']:.4f}, {r['seconds']:.1f} s" for r in rows]  # --no-progress
    assert main(["search", "--epochs", "3", "--resume", "--out", str(run), "--no-progress"]) == EXIT_ERROR
    assert "differs in: epochs" in capsys.readouterr().err
    assert main(["search", "--resume", "--out", str(run), "--no-progress"]) == 0
    assert f"resuming {run} from epoch 2 of 2" in capsys.readouterr().out
    again = json.loads((run / "summary.json").read_text())
    assert (again["seed"], again["epochs"], again["genotype"]) == (3, 2, first["genotype"])
    assert again["test_accuracy"] == first["test_accuracy"]


def test_train_and_draw_take_a_run_folder_and_train_keeps_the_weights(tmp_path, capsys):
    """``train RUN`` and ``draw RUN`` read RUN/genotype.json; ``train`` saves the trained network's weights
    (weights only) that load into the genotype's network and give the test accuracy it reported."""
    import torch

    from bayesnas.data import load_dataset
    from bayesnas.spaces import get_space, load_genotype
    from bayesnas.training import accuracy

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY, "epochs": 1}))
    run = tmp_path / "run"
    assert main(["search", "--config", str(config), "--out", str(run), "--no-progress"]) == 0
    (run / "architecture.png").unlink()
    assert main(["draw", str(run)]) == 0 and (run / "architecture.png").is_file()
    assert main(["train", str(run), "--epochs", "1", "--no-progress"]) == 0
    summary = json.loads((run / "train_summary.json").read_text())
    genotype = load_genotype(run)
    net = get_space(genotype.space, genotype.config).build(genotype)
    net.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    data = load_dataset(summary["dataset"], seed=0)
    assert accuracy(net, data.test) == pytest.approx(summary["test_accuracy"], abs=1e-6)


def test_train_never_replaces_weights_it_did_not_write(tmp_path, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY, "epochs": 1}))
    assert main(["search", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "genotype.json").write_text((tmp_path / "run" / "genotype.json").read_text())
    (mine / "model.pt").write_bytes(b"my own weights")
    capsys.readouterr()
    assert main(["train", str(mine), "--epochs", "1", "--no-progress"]) == EXIT_ERROR
    assert "model.pt was not written by bayesnas train" in capsys.readouterr().err
    assert (mine / "model.pt").read_bytes() == b"my own weights" and not (mine / "train_summary.json").exists()


def test_diagnose_summarises_a_categorical_posterior_per_decision(tmp_path):
    """One row per decision: the op chosen most often over all runs' draws, its share, the runs' range and r_hat of
    its indicator, against shares counted here; and the forest plot."""
    import arviz as az
    import numpy as np

    from bayesnas import diagnostics

    rng = np.random.default_rng(0)
    ops = ["a", "b", "c"]
    shares = np.array([[[0.9, 0.1, 0.0], [0.2, 0.3, 0.5]],  # run 0: decisions d0, d1
                       [[0.1, 0.9, 0.0], [0.1, 0.2, 0.7]]])  # run 1: d0 disagrees with run 0, d1 agrees
    choice = np.zeros((2, 400, 2, 3))
    for chain in range(2):
        for d in range(2):
            picks = rng.choice(3, size=400, p=shares[chain, d])
            choice[chain, np.arange(400), d, picks] = 1
    idata = az.from_dict(posterior={"op_choice": choice}, dims={"op_choice": ["decision", "op"]},
                         coords={"decision": ["d0", "d1"], "op": ops})
    assert diagnostics.categorical_variable(idata) == "op_choice"
    table = diagnostics.decision_summary(idata, "op_choice")
    counted = choice.mean(1)  # (chain, decision, op)
    assert table.loc["d1", "op"] == "c" and table.loc["d1", "probability"] == pytest.approx(counted[:, 1, 2].mean())
    assert (table.loc["d1", "runs_low"], table.loc["d1", "runs_high"]) == (counted[:, 1, 2].min(),
                                                                           counted[:, 1, 2].max())
    top = ops.index(table.loc["d0", "op"])
    assert table.loc["d0", "r_hat"] == pytest.approx(float(az.rhat(choice[:, :, 0, top])))
    assert table.loc["d0", "r_hat"] > 1.5 and table.loc["d1", "r_hat"] < 1.05  # the runs disagree on d0 only
    assert diagnostics.plot_decision_forest(idata, "op_choice", tmp_path / "forest.png").stat().st_size > 0
