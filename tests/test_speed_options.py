"""One-device speed options: bf16 autocast, channels-last, torch.compile with an eager fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesnas import infer, reparam
from bayesnas.cli import main
from bayesnas.config import ConfigError, SearchConfig, preset
from bayesnas.data import load_dataset
from bayesnas.infer import compile_networks, run_search
from bayesnas.io import read_jsonl
from bayesnas.methods import get_method
from bayesnas.precision import channels_last, precision_context
from bayesnas.spaces.cell import CellSpace
from bayesnas.spaces.ops import SearchConv2d, Zero


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


@pytest.mark.slow
def test_a_compiled_search_gives_the_eager_figures(tiny_config: SearchConfig, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The same seed with and without ``compile``: the logged losses and accuracies and the selection's figures
    agree within bf16 tolerance (dynamo's eager backend here: inductor needs minutes of C++ builds on 2 cores; it
    changes no arithmetic, so a difference would be the compiled path running other code or other draws)."""
    monkeypatch.setattr(infer, "COMPILE_BACKEND", "eager")
    runs = {compiled: run_search(tiny_config.merged({"compile": compiled, "epochs": 1}), tmp_path / str(compiled),
                                 device="cpu", progress=False) for compiled in (False, True)}
    rows = {c: read_jsonl(tmp_path / str(c) / "metrics.jsonl") for c in runs}
    for key in ("loss", "train_accuracy", "val_accuracy"):
        assert rows[True][0][key] == pytest.approx(rows[False][0][key], rel=1e-2, abs=1e-2), key
    for key in ("val_accuracy", "test_accuracy", "params"):
        assert runs[True][key] == pytest.approx(runs[False][key], rel=1e-2, abs=1e-2), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_bf16_channels_last_search_on_cuda(tiny_config: SearchConfig, tmp_path: Path) -> None:
    config = tiny_config.merged({"precision": "bf16", "channels_last": True, "compile": True, "epochs": 2})
    summary = run_search(config, tmp_path / "run", device="cuda", progress=False)
    assert summary["device"].startswith("cuda") and 0 <= summary["test_accuracy"] <= 1


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_dilated_strided_conv_is_the_direct_convolution(kernel, size, groups, layout, monkeypatch):
    torch.manual_seed(0)
    conv = SearchConv2d(4, 4 * (groups == 1) + 4, kernel, stride=2, padding=kernel - 1, dilation=2, groups=groups)
    x = torch.randn(3, 4, size, size).contiguous(memory_format=layout).requires_grad_()
    calls = []
    direct = reparam.conv2d
    monkeypatch.setattr(reparam, "conv2d", lambda *args: calls.append(args[3:6]) or direct(*args))
    out = conv(x)
    assert calls == [(1, 0, 1)]  # computed as a plain convolution of every second padded pixel
    reference = F.conv2d(x, conv.weight, None, 2, kernel - 1, 2, groups)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)
    g = torch.randn_like(out)
    ours = torch.autograd.grad(out, (x, conv.weight), g)
    theirs = torch.autograd.grad(reference, (x, conv.weight), g)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_depthwise_convs_stay_fp32_under_cpu_autocast():
    torch.manual_seed(0)
    depthwise, pointwise = SearchConv2d(4, 4, 3, padding=1, groups=4), SearchConv2d(4, 8, 1)
    x = torch.randn(2, 4, 6, 6).to(torch.bfloat16)
    with precision_context("bf16", x.device):
        out = depthwise(x)
        assert pointwise(out).dtype == torch.bfloat16  # every other convolution autocasts as before
    assert out.dtype == torch.float32
    assert torch.equal(out, F.conv2d(x.float(), depthwise.weight, None, 1, 1, 1, 4))
    assert depthwise(x.float()).dtype == torch.float32


def test_zero_op_and_cells_keep_channels_last():
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    for stride, shape in ((1, (2, 6, 8, 8)), (2, (2, 6, 4, 4))):
        zero = Zero(6, stride)(x)
        assert zero.shape == shape and zero.is_contiguous(memory_format=torch.channels_last)
        assert not zero.any()
    assert Zero(6, 2)(x.contiguous()).is_contiguous()
    space = CellSpace.from_dict({"channels": 4, "layout": "NRN", "states": 2, "ops": "gdas", "image_size": 8})
    net = channels_last(space.supernet(sparse=True).eval())
    outputs = []
    for cell in net.cells:
        cell.register_forward_hook(lambda m, i, out: outputs.append(out))
    none = space.index_architecture([0] * len(space.decisions()))  # every edge `none`: zeros into every state
    with torch.no_grad():
        net(channels_last(torch.randn(2, 1, 8, 8)), none)
    assert len(outputs) == 3 and all(o.is_contiguous(memory_format=torch.channels_last) for o in outputs)
