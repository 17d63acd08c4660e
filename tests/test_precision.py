"""``--precision auto``, and bf16 / channels-last in the stand-alone trainer and across a resumed search."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesnas.precision
from bayesnas.cli import main
from bayesnas.data import Split, load_dataset
from bayesnas.infer import run_search
from bayesnas.io import read_jsonl
from bayesnas.precision import cpu_flags, native_bf16
from bayesnas.training import TrainRecipe, accuracy, train_network

FIGURES = ("val_accuracy", "test_accuracy", "params", "baseline_test_accuracy", "baseline_params", "drop_rate")


def fake_speed(cache, seconds: dict[str, float]) -> None:
    """A cache folder whose measurement for this machine's CPU is ``seconds`` per mode."""
    from bayesnas.speed import SPEED_FILE, machine_key

    (cache / SPEED_FILE).write_text(json.dumps({machine_key(torch.device("cpu")): seconds}))


@pytest.mark.parametrize("seconds, expected, expected_channels_last", [
    ({"fp32": 1.0, "fp32+channels-last": 2.0, "bf16": 3.0, "bf16+channels-last": 4.0}, ("fp32", False),
     ("fp32", True)),
    ({"fp32": 4.0, "fp32+channels-last": 2.0, "bf16": 3.0, "bf16+channels-last": 1.0}, ("bf16", True),
     ("bf16", True)),
    ({"fp32": 4.0, "fp32+channels-last": 3.0, "bf16": 1.0, "bf16+channels-last": 2.0}, ("bf16", False),
     ("bf16", True)),  # asking for channels-last restricts auto to the channels-last modes
])
def test_auto_is_the_fastest_measured_mode(tmp_path, monkeypatch, seconds, expected, expected_channels_last):
    from bayesnas.speed import resolve_mode

    monkeypatch.setenv("BAYESNAS_CACHE", str(tmp_path))
    fake_speed(tmp_path, seconds)
    assert resolve_mode("auto", False, "cpu") == expected
    assert resolve_mode("auto", True, torch.device("cpu")) == expected_channels_last
    # what the user asks explicitly is kept, whatever was measured
    assert resolve_mode("fp32", False, "cpu") == ("fp32", False) and resolve_mode("bf16", True, "cpu") == ("bf16", True)
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_mode("fp16", False, "cpu")


@pytest.mark.parametrize("flags, expected", [
    ({"fpu", "avx2", "avx512f"}, False),
    ({"fpu", "avx512f", "avx512_bf16"}, True),
    ({"fpu", "amx_tile", "amx_bf16"}, True),
    ({"avx512_fp16", "bf16"}, False),  # only the two flags of native bf16 arithmetic count
    (None, False),  # flags unknown
])
def test_native_bf16_follows_the_cpu_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(bayesnas.precision, "cpu_flags", lambda: None if flags is None else frozenset(flags))
    assert native_bf16("cpu") is expected


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse2 avx512f amx_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu sse2 avx512f amx_bf16\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx512f", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") is None
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert cpu_flags(tmp_path / "noflags") is None


@pytest.mark.parametrize("supported", [True, False])
def test_native_bf16_on_cuda_follows_is_bf16_supported(monkeypatch, supported):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: supported)
    monkeypatch.setattr(bayesnas.precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))  # not consulted
    assert native_bf16(torch.device("cuda", 1)) is supported
    assert native_bf16(torch.device("meta")) is False


def _digits(n: int = 480) -> tuple[Split, Split]:
    data = load_dataset("digits", seed=0)
    return Split(data.train.x[:n], data.train.y[:n]), Split(data.val.x, data.val.y)


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def test_bf16_trainer_runs_the_network_in_bf16_the_loss_in_fp32_and_learns(monkeypatch, one_thread):
    train, val = _digits(960)
    net = _tiny_net()
    forward_dtypes, loss_inputs = set(), []
    net.register_forward_hook(lambda module, args, out: forward_dtypes.add(out.dtype))
    cross_entropy = F.cross_entropy

    def spy(logits, target, *args, **kwargs):
        loss = cross_entropy(logits, target, *args, **kwargs)
        loss_inputs.append((logits.dtype, torch.is_autocast_enabled("cpu"), loss.dtype))
        return loss

    monkeypatch.setattr(F, "cross_entropy", spy)
    recipe = TrainRecipe(epochs=6, batch_size=32, lr=0.1, weight_decay=0.0, precision="bf16")
    history = train_network(net, train, val, recipe, progress=False)
    assert forward_dtypes == {torch.bfloat16}  # training and evaluation forwards
    assert loss_inputs and set(loss_inputs) == {(torch.float32, False, torch.float32)}
    assert all(p.dtype == torch.float32 for p in net.parameters())  # the weights stay fp32
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["loss"] < 0.8 * history[0]["loss"] and history[-1]["val_accuracy"] > 0.35  # chance: 0.1
    forward_dtypes.clear()
    assert accuracy(net, val, precision="bf16") == history[-1]["val_accuracy"]
    assert forward_dtypes == {torch.bfloat16}
    forward_dtypes.clear()
    accuracy(net, val)
    assert forward_dtypes == {torch.float32}


def test_channels_last_trainer_keeps_weights_and_images_channels_last(one_thread):
    train, val = _digits(128)
    net = _tiny_net()
    inputs = []
    net[0].register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    recipe = TrainRecipe(epochs=1, batch_size=32, lr=0.05, weight_decay=0.0, channels_last=True)
    train_network(net, train, val, recipe, progress=False)
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x in inputs)
    for conv in (net[0], net[2]):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_channels_last_survives_a_checkpoint_round_trip(tiny_config, tmp_path, one_thread):
    config = tiny_config.merged({"channels_last": True, "epochs": 2})
    full = run_search(config, tmp_path / "full", device="cpu", progress=False)

    def kill(event):
        if event.epoch == 1 and event.step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(config, tmp_path / "cut", device="cpu", progress=False, on_step=kill)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "cut/metrics.jsonl")] == [0]
    resumed = run_search(config, tmp_path / "cut", device="cpu", progress=False, resume=True)
    assert {k: resumed[k] for k in FIGURES} == {k: full[k] for k in FIGURES}
    assert [r["loss"] for r in read_jsonl(tmp_path / "cut/metrics.jsonl")] == \
        [r["loss"] for r in read_jsonl(tmp_path / "full/metrics.jsonl")]
    state = torch.load(tmp_path / "cut/checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    kernels = {f"{module}.{name}": w for module, weights in state["modules"].items() for name, w in weights.items()
               if w.dim() == 4 and w.shape[1] > 1 and w.shape[2] * w.shape[3] > 1}  # where the two formats differ
    assert kernels and all(w.is_contiguous(memory_format=torch.channels_last) for w in kernels.values())
    assert not all(w.is_contiguous() for w in kernels.values())


def test_auto_is_the_default_resolved_recorded_and_retrains_in_fp32(tmp_path, monkeypatch, capsys):
    import bayesnas.methods.base

    monkeypatch.setenv("BAYESNAS_CACHE", str(tmp_path))
    fake_speed(tmp_path, {"fp32": 4.0, "fp32+channels-last": 3.0, "bf16": 2.0, "bf16+channels-last": 1.0})
    recipes = []
    real = bayesnas.methods.base.retrain

    def spy(space, genotype, train, val, test, recipe, *args, **kwargs):
        recipes.append(recipe)
        return real(space, genotype, train, val, test, recipe, *args, **kwargs)

    monkeypatch.setattr(bayesnas.methods.base, "retrain", spy)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"method": "gdas", "epochs": 1, "data_fraction": 0.2,
                                  "space": {"channels": 4, "layout": "NR", "states": 2},
                                  "options": {"warmup_epochs": 0, "retrain_epochs": 1}}))
    run = tmp_path / "run"
    assert main(["search", "--config", str(config), "--device", "cpu", "--out", str(run), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["precision"], summary["channels_last"], summary["mode"]) == ("bf16", True, "bf16+channels-last")
    assert json.loads((run / "config.json").read_text())["precision"] == "auto"  # the default, as asked
    assert [(r.precision, r.channels_last) for r in recipes] == [("fp32", True)]  # the retraining stays fp32

    fake_speed(tmp_path, {"fp32": 1.0, "fp32+channels-last": 3.0, "bf16": 2.0, "bf16+channels-last": 4.0})
    assert main(["train", str(run / "genotype.json"), "--epochs", "1", "--precision", "auto", "--channels-last",
                 "--device", "cpu", "--no-progress"]) == 0
    trained = json.loads((run / "train_summary.json").read_text())
    assert trained["precision"] == "fp32" and trained["channels_last"] is True
    assert 0 <= trained["test_accuracy"] <= 1


def test_the_fastest_mode_is_measured_once_per_machine_and_cached(tmp_path):
    from bayesnas.io import read_json
    from bayesnas.speed import MODES, fastest_mode, machine_key

    calls = []
    seconds = {"fp32": 2.0, "fp32+channels-last": 1.5, "bf16": 2.5, "bf16+channels-last": 0.8}

    def fake(device):
        calls.append(device)
        return dict(seconds)

    path = tmp_path / "speed.json"
    choice = fastest_mode("cpu", measure=fake, path=path)
    assert (choice.mode, choice.precision, choice.channels_last) == ("bf16+channels-last", "bf16", True)
    assert choice.ratio("bf16+channels-last") == pytest.approx(0.4) and len(calls) == 1
    assert read_json(path) == {machine_key(torch.device("cpu")): seconds}
    assert fastest_mode("cpu", measure=fake, path=path) == choice and len(calls) == 1  # from the cache
    seconds["fp32"] = 0.5
    assert fastest_mode("cpu", refresh=True, measure=fake, path=path).mode == "fp32" and len(calls) == 2
    path.write_text(json.dumps({machine_key(torch.device("cpu")): {"fp32": "fast"}}))  # damaged: measured again
    assert fastest_mode("cpu", measure=fake, path=path).mode == "fp32" and len(calls) == 3
    assert set(read_json(path)[machine_key(torch.device("cpu"))]) == set(MODES)


def test_every_mode_is_timed_and_the_command_prints_them(tmp_path, monkeypatch, capsys):
    from bayesnas import speed
    from bayesnas.cli import main

    measured = speed.measure_modes(torch.device("cpu"), steps=1, rounds=1)
    assert set(measured) == set(speed.MODES) and all(v > 0 for v in measured.values())
    monkeypatch.setenv("BAYESNAS_CACHE", str(tmp_path))
    monkeypatch.setattr(speed, "measure_modes", lambda device: {m: float(i + 1) for i, m in enumerate(speed.MODES)})
    assert main(["speed", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "  fp32                    1000.0 ms/step   1.000x fp32   <- fastest" in out
    assert "  bf16+channels-last      4000.0 ms/step   4.000x fp32\n" in out and (tmp_path / "speed.json").is_file()
