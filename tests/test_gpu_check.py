"""benchmarks/gpu_check.sh: the prepared GPU check, run here as its CPU dry run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_header_says_how_to_run_it_on_a_gpu_machine() -> None:
    header = SCRIPT.read_text().split("set -euo pipefail")[0]
    assert "bash benchmarks/gpu_check.sh --wheels .whl OUT" in header
    assert "pip download --no-deps --only-binary=:all: --python-version 3.12" in header
    for wheel in ("pyro-ppl", "arviz", "xautodl"):
        assert wheel in header
    assert "--dry-run" in header


def test_summary_check_finds_what_is_wrong(tmp_path: Path) -> None:
    check_summary = load_gpu_check().check_summary
    run = tmp_path / "run"
    run.mkdir()
    assert check_summary(run, "gdas", "cuda", [])[1] == ["summary.json was not written"]
    summary = {"method": "gdas", "dataset": "digits", "seed": 0, "epochs": 2, "device": "cuda:0",
               "val_accuracy": 0.5, "test_accuracy": 0.4, "params": 10, "search_seconds": 1.0,
               "select_seconds": 0.5, "genotype": "genotype.json"}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "genotype.json").write_text("{}")
    (run / "config.json").write_text(json.dumps({"precision": "bf16", "channels_last": True, "compile": True}))
    assert check_summary(run, "gdas", "cuda", ["--precision", "bf16", "--channels-last", "--compile"])[1] == []
    (run / "summary.json").write_text(json.dumps({**summary, "device": "cpu", "test_accuracy": 1.5}))
    (run / "config.json").write_text(json.dumps({"precision": "fp32"}))
    problems = check_summary(run, "gdas", "cuda", ["--precision", "bf16"])[1]
    assert problems == ["device recorded as 'cpu', not cuda", "test_accuracy = 1.5 is not in [0, 1]",
                        "config.json has precision = 'fp32', not 'bf16'"]


def test_steps_cover_every_method_in_every_mode() -> None:
    names = [name for name, _ in load_gpu_check().STEPS]
    assert names[:4] == ["environment", "install", "cuda-tests", "speed"]
    methods = ("pgnas", "vinnas", "pcnas", "gdas")
    assert [n for n in names if n.startswith("search-")] == [f"search-{m}" for m in methods] + [
        "search-gdas-bf16-cl-compile"]
    assert [n for n in names if n.startswith("throughput-")] == [f"throughput-{m}" for m in methods] + [
        f"throughput-{m}-compile" for m in methods]


@pytest.mark.slow
def test_cuda_tests_step_collects_and_reports_the_cases(tmp_path: Path, monkeypatch) -> None:
    """The step on one of the test files that look for a GPU (the dry run's other files add only time): on a CPU
    the CUDA cases are collected and skip, and the step reports each with its outcome. pytest-xdist is blocked, as
    on the lent GPU machine, which has pytest without it."""
    module = load_gpu_check()
    assert "tests/test_data.py" in module.cuda_test_files()
    monkeypatch.setattr(module, "cuda_test_files", lambda: ["tests/test_data.py"])
    ctx = module.Context(out=tmp_path, dry_run=True, device="cpu", wheels=None, work=tmp_path, deadline=1e12,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTEST_ADDOPTS": "-p no:xdist"})
    step = module.Step("cuda-tests")
    module.step_cuda_tests(ctx, step)
    assert step.failures == [], step.failures
    cases = step.figures["cases"]
    assert cases and all("cuda" in case and ": skipped (" in case for case in cases), cases


# one search step (the shortest) and one throughput step (compiled: tested nowhere else): the other steps run the
# same code with another method or mode (the CLI tests search with every method on the CPU, and
# tests/test_speed_options.py compiled and bf16 channels-last searches), and the cuda-tests step is tested above on
# one file; the whole dry run takes about 4.5 minutes on one thread, too long for the suite's budget
DRY_STEPS = ["install", "speed", "search-pgnas", "throughput-gdas-compile"]


@pytest.mark.slow
def test_dry_run_passes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # its own cache: the speed step measures this machine, and the search after it trains in the mode it picked
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "BAYESNAS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--only", ",".join(DRY_STEPS), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    report = (out / "gpu-check.md").read_text()
    names = ["environment", *DRY_STEPS]
    assert "result: **PASSED**" in report and "dry run" in report
    for name in names:
        assert f"## {name}\n\n**PASS**" in report, name
    result = json.loads((out / "gpu-check.json").read_text())
    assert result["passed"] and [s["name"] for s in result["steps"]] == names
    assert all(s["ok"] and not s["failures"] for s in result["steps"])
    speed = next(s for s in result["steps"] if s["name"] == "speed")
    assert speed["figures"]["auto picks"] in ("fp32", "fp32+channels-last", "bf16", "bf16+channels-last")
    assert "(auto's pick)" in speed["figures"][speed["figures"]["auto picks"]]
    search = next(s for s in result["steps"] if s["name"] == "search-pgnas")
    assert search["figures"]["mode"] == speed["figures"]["auto picks"]
    assert search["figures"]["device"] == "cpu" and 0 <= search["figures"]["test_accuracy"] <= 1
    rows = {(r["method"], r["mode"]) for r in result["throughput"]}
    assert rows == {("gdas", "bf16+cl+compile")}
    assert (out / "gpu-check.log").exists()
