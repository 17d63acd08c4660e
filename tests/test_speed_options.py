"""One-device speed options: bf16 autocast, channels-last, torch.compile with an eager fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bayesnas import infer
from bayesnas.cli import main
from bayesnas.config import ConfigError, SearchConfig, preset
from bayesnas.data import load_dataset
from bayesnas.infer import compile_networks, precision_context, run_search
from bayesnas.methods import get_method


def test_bf16_autocasts_the_network_but_not_the_elbo(tiny_config: SearchConfig) -> None:
    config = tiny_config.merged({"precision": "bf16"})
    data = load_dataset("digits", fraction=0.3)
    method = get_method("pgnas")(config, data, torch.device("cpu"))
    x, y = data.train.x[:16], data.train.y[:16]
    outputs = []
    hook = method.model.net.classifier.register_forward_hook(lambda m, i, out: outputs.append(out.dtype))
    phase = next(p for p in method.phases() if p.name == "search")  # PGNAS's own (not its fixed-rate baseline)
    with precision_context("bf16", x.device):
        loss, _ = phase.loss(x, y, torch.arange(16))
    hook.remove()
    assert outputs == [torch.bfloat16]  # the network ran in bfloat16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)  # KL terms and the reduction in fp32
    with precision_context("fp32", x.device):
        reference, _ = phase.loss(x, y, torch.arange(16))
    assert reference.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), rel=0.05)


def test_bf16_channels_last_search_runs(tiny_config: SearchConfig, tmp_path: Path) -> None:
    config = tiny_config.merged({"precision": "bf16", "channels_last": True, "epochs": 2})
    summary = run_search(config, tmp_path / "run", device="cpu", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["loss"] < rows[0]["loss"] and summary["test_accuracy"] > 0.2  # learns (chance: 0.1)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == "bf16"


def test_bad_precision_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16"):
        preset("pgnas-digits").merged({"precision": "fp16"})
    with pytest.raises(SystemExit):
        main(["search", "--precision", "fp8", "--out", str(tmp_path / "x")])
    assert "invalid choice" in capsys.readouterr().err and not (tmp_path / "x").exists()


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).relu().mean((2, 3))


def test_compile_matches_eager_and_falls_back_with_a_warning() -> None:
    net, x = _Net(), torch.randn(2, 1, 5, 5)
    expected = net(x)
    compile_networks({"net": net}, backend="eager")
    torch.testing.assert_close(net(x), expected)

    def broken_backend(graph: torch.fx.GraphModule, example_inputs: list) -> None:
        raise RuntimeError("this backend cannot compile anything")

    other = _Net()
    reference = other(x)
    compile_networks({"other": other}, backend=broken_backend)
    with pytest.warns(RuntimeWarning, match="torch.compile failed on other.*running it eagerly"):
        torch.testing.assert_close(other(x), reference)
    torch.testing.assert_close(other(x), reference)  # eager from now on, no second warning


def test_compiled_search_runs(tiny_config: SearchConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(infer, "COMPILE_BACKEND", "eager")  # inductor needs minutes of C++ builds on 2 cores
    summary = run_search(tiny_config.merged({"compile": True, "epochs": 1}), tmp_path / "run", device="cpu",
                         progress=False)
    assert 0 <= summary["test_accuracy"] <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_bf16_channels_last_search_on_cuda(tiny_config: SearchConfig, tmp_path: Path) -> None:
    config = tiny_config.merged({"precision": "bf16", "channels_last": True, "compile": True, "epochs": 2})
    summary = run_search(config, tmp_path / "run", device="cuda", progress=False)
    assert summary["device"].startswith("cuda") and 0 <= summary["test_accuracy"] <= 1
