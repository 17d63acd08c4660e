"""The Python API: bayesnas.search / load_run / train, exported lazily, with errors in Python terms."""

import json
import subprocess
import sys

import pytest
import torch

import bayesnas
from bayesnas.cli import EXIT_ERROR, as_flags, main
from bayesnas.config import ConfigError, SearchConfig, build_config, preset
from bayesnas.spaces import Genotype

# a GDAS search on a quarter of digits with 4-channel cells: a few seconds
TINY_GDAS = {"method": "gdas", "epochs": 2, "space": {"channels": 4}, "data_fraction": 0.25, "batch_size": 32,
             "options": {"warmup_epochs": 1, "retrain_epochs": 1}}


def test_the_api_is_exported_and_imported_only_when_used():
    code = ("import sys, bayesnas; before = 'torch' in sys.modules; f = bayesnas.search; "
            "print(before, 'torch' in sys.modules, f.__module__, sorted(set(bayesnas.__all__) - set(dir(bayesnas))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "bayesnas.api", "[]"]
    for name in ("search", "load_run", "train", "Run", "SearchConfig", "Genotype", "get_space", "get_method"):
        assert name in dir(bayesnas)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bayesnas.nope  # noqa: B018


def test_build_config_layers_preset_file_settings_and_options(tmp_path):
    config = build_config(method="gdas", epochs=3, options={"warmup_epochs": 1}, space={"channels": 4})
    expected = preset("gdas-digits")
    assert config.method == "gdas" and config.epochs == 3 and config.space == {**expected.space, "channels": 4}
    assert config.options == {**expected.options, "warmup_epochs": 1}
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"method": "pcnas", "epochs": 7}))
    from_file = build_config(path, seed=3)
    assert (from_file.method, from_file.epochs, from_file.seed) == ("pcnas", 7, 3)
    assert from_file.options == preset("pcnas-digits").options  # that method's preset, not the default's
    moved = build_config(method="gdas", space_name="chain")
    assert moved.space_name == "chain" and moved.space == preset("pcnas-digits").space
    given = SearchConfig(method="random", epochs=2)
    assert build_config(given, seed=5) == SearchConfig(method="random", epochs=2, seed=5)
    with pytest.raises(ConfigError, match="preset 'pgnas-digits' belongs to pgnas, not gdas"):
        build_config(preset_name="pgnas-digits", method="gdas")
    with pytest.raises(ConfigError, match="unknown method 'foo'"):
        build_config(method="foo")


@pytest.mark.slow
def test_search_load_run_and_train_from_python(tmp_path, one_thread):
    out = tmp_path / "run"
    run = bayesnas.search(out=out, device="cpu", progress=False, **TINY_GDAS)
    assert run.finished and run.path == out and run.config.epochs == 2
    assert run.summary == json.loads((out / "summary.json").read_text())
    assert run.genotype.dataset == "digits"
    assert json.loads((out / "genotype.json").read_text())["dataset"] == "digits"

    again = bayesnas.load_run(out)
    assert again.summary == run.summary and again.genotype == run.genotype and again.config == run.config
    metrics = again.metrics()
    assert list(metrics["epoch"]) == [0, 1] and "val_accuracy" in metrics.columns
    posterior = again.posterior()
    assert "posterior" in posterior.groups()
    assert {k: posterior.posterior.attrs[k] for k in ("method", "seed", "dataset", "data_seed")} == {
        "method": "gdas", "seed": 0, "dataset": "digits", "data_seed": 0}
    modules = again.trained(device="cpu").modules()
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["modules"]
    assert set(modules) == set(saved) == {"model", "guide"}
    for name, module in modules.items():
        assert not module.training
        for key, value in module.state_dict().items():
            assert value.equal(saved[name][key]), (name, key)

    result = bayesnas.train(run.genotype, epochs=1, device="cpu", progress=False)
    assert result["dataset"] == "digits" and 0 <= result["test_accuracy"] <= 1
    assert not (out / "train_summary.json").exists()  # a Genotype object: nothing written unless out is given
    with pytest.raises(ConfigError, match=r"`epochs` must be \[1, 100000\], got 0"):
        bayesnas.train(run.genotype, epochs=0)

    with pytest.raises(bayesnas.SearchError, match="pass `resume=True` to continue it or choose another `out`"):
        bayesnas.search(out=out, device="cpu", progress=False, **TINY_GDAS)
    with pytest.raises(ConfigError, match="holds no search run"):
        bayesnas.load_run(tmp_path)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_bytes((out / "config.json").read_bytes())
    (damaged / "summary.json").write_text('{"method": "gd')  # cut short
    with pytest.raises(ConfigError, match="summary.json is not valid JSON"):
        bayesnas.load_run(damaged)


def test_train_uses_the_genotypes_data_set_or_rebuilds_it_for_another(tmp_path, capsys, one_thread):
    genotype = bayesnas.get_space("cells", {"channels": 4, "in_channels": 1, "num_classes": 10, "image_size": 8}) \
        .random_genotype(torch.Generator().manual_seed(0))
    legacy = tmp_path / "legacy.json"
    genotype.save(legacy)  # no data set recorded: files written before it was
    assert main(["train", str(legacy), "--epochs", "1", "--no-progress"]) == EXIT_ERROR
    assert capsys.readouterr().err.strip().splitlines() == [
        "bayesnas train: error: the genotype does not record the data set it was searched on; pass --dataset"]
    recorded = tmp_path / "g" / "genotype.json"
    recorded.parent.mkdir()
    Genotype(genotype.space, genotype.config, genotype.choices, "digits").save(recorded)
    assert main(["train", str(recorded), "--epochs", "1", "--no-progress"]) == 0
    assert json.loads((recorded.parent / "train_summary.json").read_text())["dataset"] == "digits"
    assert (recorded.parent / "architecture.png").exists()  # a drawing beside the result
    fashion = tmp_path / "fashion.json"
    Genotype(genotype.space, {**genotype.config, "image_size": 28}, genotype.choices,
                   "fashion-mnist").save(fashion)
    # a Fashion-MNIST genotype (28x28) trained on digits is rebuilt for 8x8 images, the file left as it was
    saved = fashion.read_bytes()
    assert main(["train", str(fashion), "--dataset", "digits", "--epochs", "1", "--no-progress"]) == 0
    built = json.loads((tmp_path / "train_summary.json").read_text())["network_genotype"]
    assert built["config"]["image_size"] == 8 and built["choices"] == genotype.choices and built["dataset"] == "digits"
    assert fashion.read_bytes() == saved


@pytest.mark.parametrize(("message", "expected"), [
    ("pass `resume=True` or choose another `out`", "pass --resume or choose another --out"),
    ("`device='cuda'` was asked for", "--device cuda was asked for"),
    ("pass `data_dir` pointing at", "pass --data-dir pointing at"),
    ("`drop_path` must lie in [0, 1)", "--drop-path must lie in [0, 1)"),
    ("`enumerate_all=True` enumerates at most 4096 (sample `n`)", "--all enumerates at most 4096 (sample --n)"),
    ("no names here: a `` pair", "no names here: a `` pair"),
])
def test_the_command_line_names_its_flags(message, expected):
    assert as_flags(message) == expected
