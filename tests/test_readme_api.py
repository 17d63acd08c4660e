"""README's "Python API" section runs as written: its Python blocks, in order, in one namespace."""

import math
import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def api_blocks(section: str = "Python API") -> list[str]:
    text = README.read_text()
    body = text.split(f"### {section}\n", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.DOTALL)


def test_the_section_has_the_snippets_the_api_promises():
    code = "\n".join(api_blocks())
    for call in ("bayesnas.search(", "bayesnas.load_run(", "bayesnas.train(", "SVI(", "Predictive(", "az.from_dict("):
        assert call in code, call


@pytest.mark.slow
def test_readme_python_blocks_run_as_written(tmp_path, one_thread, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in api_blocks():
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    run, result, ops = namespace["run"], namespace["result"], namespace["ops"]
    assert run.path == Path("runs/gdas-tiny") and run.finished and (tmp_path / "runs/gdas-tiny/posterior.nc").exists()
    assert result["dataset"] == "digits" and 0 <= result["test_accuracy"] <= 1
    assert math.isfinite(namespace["loss"])
    n_edges = namespace["shapes"]["normal"][0]
    assert tuple(ops.shape) == (100, n_edges) and int(ops.max()) < namespace["shapes"]["normal"][1]
    assert os.listdir(tmp_path) == ["runs"]  # the snippets write only their run folder


@pytest.mark.slow
def test_readme_own_data_block_runs_as_written(tmp_path, one_thread, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BAYESNAS_CACHE", str(tmp_path / "cache"))
    namespace: dict = {}
    (block,) = api_blocks("Search on your own data")
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    run, trained, run2 = namespace["run"], namespace["trained"], namespace["run2"]
    assert run.config.dataset == str(tmp_path / "my_images") and run.summary["dataset"] == run.config.dataset
    assert trained["dataset"] == run.config.dataset and (tmp_path / "runs/mine/model.pt").is_file()
    assert run2.config.dataset.startswith(str(tmp_path / "cache" / "data"))


def readme_commands() -> list[str]:
    """The ``bayesnas ...`` commands of README's bash blocks (continuation lines joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [cmd.strip() for line in lines for cmd in line.split("&&") if cmd.strip().startswith("bayesnas ")]


def test_readme_commands_parse_and_the_smoke_run_runs(tmp_path, one_thread, monkeypatch, capsys):
    """Each README command line parses into a valid configuration; the smoke run runs as written (the main job's
    minutes are CI's own first command)."""
    import shlex

    from bayesnas.cli import build_parser, main, search_config

    monkeypatch.chdir(tmp_path)
    commands = readme_commands()
    assert any("--method pgnas" in c for c in commands) and any("runs/smoke" in c for c in commands)
    for command in commands:
        argv = shlex.split(command)[1:]
        search_config(build_parser().parse_args(argv))  # refused settings raise here
        if "runs/smoke" in command:
            assert main([*argv, "--no-progress"]) == 0
            assert (tmp_path / "runs/smoke/summary.json").is_file() and "test accuracy" in capsys.readouterr().out
