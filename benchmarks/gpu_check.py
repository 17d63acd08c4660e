"""One prepared GPU check (``benchmarks/gpu_check.sh`` calls this): CUDA tests, a short search of every method,
the GPU throughput table, all written to ``<out>/gpu-check.md`` in at most 8 minutes.

Steps, each with its own time limit inside one overall budget (``--budget``, default 450 s); a step that fails or
runs out of time is recorded as a failure and the next one runs; the exit status is 1 when any step failed:

1. ``environment``: GPU name and memory, driver, torch, CUDA, cuDNN and Python versions;
2. ``install``: what the Python running this lacks (pyro-ppl, arviz and their few needs, xautodl) from the
   ``--wheels`` folder (``pip install --no-index --no-deps``), and this checkout in editable mode (``pip install
   --no-deps --no-build-isolation -e .``); nothing when everything imports;
3. ``cuda-tests``: the test suite's CUDA cases (the tests named ``*cuda*`` in the test files that look for a
   GPU); on a GPU each must pass, none may skip;
4. ``search-<method>``: one short search on digits of pgnas, vinnas, pcnas and gdas in fp32, and gdas with
   ``--precision bf16 --channels-last --compile``, each through ``python -m bayesnas search --device cuda``;
   checks each ``summary.json`` (keys, accuracies in [0, 1], the device, the speed options in ``config.json``);
5. ``throughput-<method>``: ``benchmarks/gpu_throughput.py`` (images/s of one search step per method and mode at
   batch 64 and 256, GDAS ours against xautodl on the same GPU), one call per method for fp32/bf16/bf16+cl and one
   for bf16+cl+compile at batch 64, so that a slow compilation costs only its own figures.

``--dry-run`` runs exactly these steps on the CPU with tiny sizes (narrow spaces, a quarter of digits, batch 4,
one timed step; ``torch.compile``'s wrapper with TorchDynamo disabled, as tracing costs tens of seconds a network;
no xautodl, which ``gpu_throughput.py --small`` skips): ``tests/test_gpu_check.py`` runs one step of each kind.
How to run the real check on a GPU machine and how to build the wheel folder: the header of ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 450.0  # the whole run; the issue allows 8 minutes, start-up and the report included

METHODS = ("pgnas", "vinnas", "pcnas", "gdas")
# short searches on digits: (name, method, CLI options); the presets' other settings stay
SEARCHES = [
    ("search-pgnas", "pgnas", ["--epochs", "1", "--option", "num_candidates=4", "--option", "posterior_draws=8"]),
    ("search-vinnas", "vinnas", ["--epochs", "2", "--option", "warmup_epochs=1", "--option", "retrain_epochs=1"]),
    # 5 mixops x 1 interval epoch, no warm-up: the pool is updated after every epoch
    ("search-pcnas", "pcnas", ["--epochs", "5", "--option", "warmup_epochs=0", "--option", "interval_epochs=1",
                               "--option", "num_evaluations=2", "--option", "retrain_epochs=1"]),
    ("search-gdas", "gdas", ["--epochs", "2", "--option", "warmup_epochs=1", "--option", "retrain_epochs=1"]),
    ("search-gdas-bf16-cl-compile", "gdas", ["--epochs", "2", "--option", "warmup_epochs=1", "--option",
                                             "retrain_epochs=1", "--precision", "bf16", "--channels-last",
                                             "--compile"]),
]
# the dry run's narrower spaces (the same code, fewer channels)
DRY_SPACES = {
    "pgnas": {"stem_channels": 8, "widths": [8, 16], "depths": [1, 1], "kernel_sizes": [1, 3]},
    "vinnas": {"channels": 4, "eval_channels": 4},
    "gdas": {"channels": 4},
    "pcnas": {"stem_channels": 8, "widths": [8, 16, 16]},
}
EAGER_MODES = "fp32,bf16,bf16+cl"
COMPILE_MODES = "bf16+cl+compile"
SUMMARY_KEYS = ("method", "dataset", "seed", "epochs", "device", "val_accuracy", "test_accuracy", "params",
                "search_seconds", "select_seconds", "genotype")
# per-step limits in seconds (the overall budget can cut them)
LIMITS = {"environment": 30, "install": 120, "cuda-tests": 150, "speed": 60, "search": 75,
          "search-gdas-bf16-cl-compile": 150, "throughput": 75}


@dataclass
class Step:
    name: str
    ok: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    log: str = ""

    def fail(self, message: str) -> None:
        self.failures.append(message)


@dataclass
class Context:
    out: Path
    dry_run: bool
    device: str
    wheels: Path | None
    work: Path
    deadline: float
    env: dict[str, str]
    budget: float = BUDGET_S
    rows: list[tuple] = field(default_factory=list)  # throughput: (method, batch, mode, s/step, images/s)
    ratios: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.deadline - time.monotonic()


def run_command(cmd: list[str], timeout: float, env: dict[str, str], cwd: Path = ROOT) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group; (exit status or None on timeout, stdout and stderr together)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=max(timeout, 1.0))
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return None, output + f"\n[gpu_check] killed after {timeout:.0f} s (time limit)\n"


def launcher(ctx: Context, target: list[str]) -> list[str]:
    """A command running ``target`` (``-m module args`` or ``script args``) through ``_run``: ``torch.compile``
    as it is (inductor) on a GPU; in the dry run with TorchDynamo disabled (tracing the Pyro super-networks costs
    tens of seconds of CPU per network; ``tests/test_speed_options.py`` compiles on a CPU)."""
    return [sys.executable, str(Path(__file__).resolve()), "_run", "off" if ctx.dry_run else "default", *target]


def _run(argv: list[str]) -> None:
    backend, target, *rest = argv
    if backend == "off":  # the dry run: torch.compile's wrapper runs, TorchDynamo does not trace
        import torch._dynamo

        from bayesnas import infer

        torch._dynamo.config.disable = True
        infer.COMPILE_BACKEND = "eager"
    if target == "-m":
        sys.argv = [rest[0], *rest[1:]]
        runpy.run_module(rest[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = [target, *rest]
        runpy.run_path(target, run_name="__main__")


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------------- steps


def step_environment(ctx: Context, step: Step) -> None:
    import torch

    figures = step.figures
    figures["python"] = platform.python_version()
    figures["torch"] = torch.__version__
    figures["cuda (torch build)"] = torch.version.cuda or "none"
    figures["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none"
    figures["cuda available"] = str(torch.cuda.is_available())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        figures["gpu"] = torch.cuda.get_device_name(0)
        figures["gpu memory"] = f"{props.total_memory / 2 ** 30:.1f} GiB"
        figures["compute capability"] = f"{props.major}.{props.minor}"
        figures["gpus visible"] = str(torch.cuda.device_count())
    else:
        figures["gpu"] = "none"
    if shutil.which("nvidia-smi"):
        code, output = run_command(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                    "--format=csv,noheader"], 20, ctx.env)
        figures["nvidia-smi"] = output.strip().splitlines()[0] if code == 0 and output.strip() else "failed"
    figures["device used"] = ctx.device
    if not ctx.dry_run and not torch.cuda.is_available():
        step.fail("torch sees no CUDA device: every CUDA step below will fail (use --dry-run on a CPU)")


PROBE = ("import importlib.util as u, json, sys\n"
         "found = {m: u.find_spec(m) is not None for m in ('pyro', 'arviz', 'xautodl')}\n"
         "try:\n"
         "    import bayesnas, bayesnas.models, bayesnas.guides\n"
         "    found['bayesnas'] = bayesnas.__file__\n"
         "except Exception as e:\n"
         "    found['bayesnas'] = None; found['bayesnas_error'] = repr(e)\n"
         "if found['pyro'] and found['arviz']:\n"
         "    try:\n"
         "        import arviz, pyro; found['versions'] = {'pyro-ppl': pyro.__version__, 'arviz': arviz.__version__}\n"
         "    except Exception as e:\n"
         "        found['arviz'] = found['pyro'] = False; found['import_error'] = repr(e)\n"
         "print(json.dumps(found))\n")


def probe(ctx: Context) -> dict:
    code, output = run_command([sys.executable, "-c", PROBE], 60, ctx.env)
    if code != 0:
        return {"error": tail(output)}
    return json.loads(output.strip().splitlines()[-1])


def step_install(ctx: Context, step: Step) -> None:
    found = probe(ctx)
    pip = [sys.executable, "-m", "pip", "install", "--no-input", "--disable-pip-version-check"]
    if not (found.get("pyro") and found.get("arviz") and found.get("xautodl")):
        missing = [m for m in ("pyro", "arviz", "xautodl") if not found.get(m)]
        wheels = sorted(ctx.wheels.glob("*.whl")) if ctx.wheels else []
        wheels = [w for w in wheels if not w.name.startswith("bayesnas-")]
        if wheels:
            step.notes.append(f"missing {', '.join(missing)}: installing {len(wheels)} wheels from {ctx.wheels}")
            code, output = run_command([*pip, "--no-index", "--no-deps", "--find-links", str(ctx.wheels),
                                        *map(str, wheels)], min(90, ctx.left()), ctx.env)
            step.log += output
            if code != 0:
                step.fail(f"pip install of the wheels failed:\n{tail(output, 10)}")
        elif missing != ["xautodl"]:
            step.fail(f"missing {', '.join(missing)} and no wheels: pass --wheels DIR (see gpu_check.sh)")
    if not found.get("bayesnas") or not Path(found["bayesnas"]).resolve().is_relative_to(ROOT):
        step.notes.append("installing this checkout: pip install --no-deps --no-build-isolation -e .")
        code, output = run_command([*pip, "--no-index", "--no-deps", "--no-build-isolation", "-e", str(ROOT)],
                                   min(90, ctx.left()), ctx.env)
        step.log += output
        if code != 0:
            step.fail(f"pip install -e . failed:\n{tail(output, 10)}")
    if step.log or "error" in found:
        found = probe(ctx)
    if "error" in found:
        step.fail(f"the import probe failed:\n{found['error']}")
        return
    step.figures.update(found.pop("versions", {}))
    step.figures["bayesnas"] = found.get("bayesnas") or f"not importable: {found.get('bayesnas_error')}"
    step.figures["xautodl"] = "importable" if found.get("xautodl") else "absent"
    for module in ("pyro", "arviz", "bayesnas"):
        if not found.get(module):
            step.fail(f"{module} does not import after the install: {found.get('import_error', '')}")
    if not found.get("xautodl"):
        message = "xautodl is absent: the GDAS comparison of the throughput step needs it"
        (step.notes if ctx.dry_run else step.failures).append(
            message + (" (not run in the dry run)" if ctx.dry_run else "; put its wheel in the --wheels folder"))
    if not step.log:
        step.notes.append("everything imports: nothing installed")


def cuda_test_files() -> list[str]:
    files = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        if path.name != "test_gpu_check.py" and "torch.cuda.is_available()" in path.read_text():
            files.append(str(path.relative_to(ROOT)))
    return files


def step_cuda_tests(ctx: Context, step: Step) -> None:
    files = cuda_test_files()
    junit = ctx.work / "cuda-tests.xml"
    # addopts emptied: pyproject's "-n auto" needs pytest-xdist, which the lent GPU machine lacks (pytest stops at
    # the unknown option), and worker start-up would cost more than these few cases take in one process
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-o", "addopts=", "-k", "cuda",
           f"--junitxml={junit}", *files]
    step.notes.append("`" + " ".join(["python", *cmd[1:-len(files)], *files]).replace(str(junit), "JUNIT") + "`")
    code, output = run_command(cmd, min(LIMITS["cuda-tests"], ctx.left()), ctx.env)
    step.log = output
    if code is None:
        step.fail(f"timed out:\n{tail(output, 10)}")
        return
    cases = []
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome = "passed"
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                    if outcome == "skipped":
                        outcome += f" ({child.get('message', '')})"
            cases.append((f"{case.get('classname')}.{case.get('name')}", outcome, float(case.get("time", 0))))
    step.figures["cases"] = [f"{name}: {outcome} ({seconds:.1f} s)" for name, outcome, seconds in cases]
    if code != 0:
        step.fail(f"pytest exited with {code}:\n{tail(output, 30)}")
    if not cases:
        step.fail("no CUDA test case was collected")
    if not ctx.dry_run:
        for name, outcome, _ in cases:
            if outcome.startswith("skipped"):
                step.fail(f"{name} skipped on the GPU: {outcome}")


SPEED_ROW = re.compile(r"^  (\S+)\s+([\d.]+) ms/step\s+([\d.]+)x fp32(   <- fastest)?$")
SPEED_BATCH = 32  # the images of one step bayesnas.speed times


def step_speed(ctx: Context, step: Step) -> None:
    """``bayesnas speed --refresh``: which mode ``--precision auto`` picks on this device (the searches after this
    step train in it), and each mode's images per second in its timed steps."""
    args = ["speed", "--device", ctx.device, "--refresh"]
    step.notes.append("`bayesnas " + " ".join(args) + "`")
    code, output = run_command(launcher(ctx, ["-m", "bayesnas", *args]), min(LIMITS["speed"], ctx.left()), ctx.env)
    step.log = output
    if code != 0:
        step.fail(("timed out" if code is None else f"exited with {code}") + f":\n{tail(output, 20)}")
        return
    rows = [m.groups() for m in map(SPEED_ROW.match, output.splitlines()) if m]
    if len(rows) != 4 or sum(bool(r[3]) for r in rows) != 1:
        step.fail(f"not four modes with one fastest in the output:\n{tail(output, 10)}")
        return
    for mode, milliseconds, ratio, fastest in rows:
        step.figures[mode] = (f"{SPEED_BATCH * 1000 / float(milliseconds):.1f} images/s, {ratio}x fp32's time"
                              + (" (auto's pick)" if fastest else ""))
        if fastest:
            step.figures["auto picks"] = mode


def check_summary(run_dir: Path, method: str, device: str, options: list[str]) -> tuple[dict, list[str]]:
    """The run folder's summary.json and what is wrong with it (empty: nothing)."""
    problems = []
    path = run_dir / "summary.json"
    if not path.exists():
        return {}, [f"{path.name} was not written"]
    summary = json.loads(path.read_text())
    problems += [f"summary.json lacks {key!r}" for key in SUMMARY_KEYS if key not in summary]
    if summary.get("method") != method:
        problems.append(f"method is {summary.get('method')!r}, not {method!r}")
    if summary.get("dataset") != "digits":
        problems.append(f"dataset is {summary.get('dataset')!r}, not 'digits'")
    recorded = str(summary.get("device", ""))
    if recorded.split(":")[0] != device:
        problems.append(f"device recorded as {recorded!r}, not {device}")
    for key in ("val_accuracy", "test_accuracy"):
        value = summary.get(key)
        if not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= 1:
            problems.append(f"{key} = {value!r} is not in [0, 1]")
    if not (run_dir / "genotype.json").exists():
        problems.append("genotype.json was not written")
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    expected = {"--precision": ("precision", "bf16"), "--channels-last": ("channels_last", True),
                "--compile": ("compile", True)}
    for flag, (key, value) in expected.items():
        if flag in options and config.get(key) != value:
            problems.append(f"config.json has {key} = {config.get(key)!r}, not {value!r}")
    return summary, problems


def make_search_step(name: str, method: str, options: list[str]) -> Callable[[Context, Step], None]:
    def step_search(ctx: Context, step: Step) -> None:
        run_dir = ctx.work / name
        extra = []
        if ctx.dry_run:
            config = ctx.work / f"{name}.json"
            config.write_text(json.dumps({"space": DRY_SPACES[method], "batch_size": 32, "data_fraction": 0.25}))
            extra = ["--config", str(config)]
        args = ["search", "--method", method, "--dataset", "digits", "--device", ctx.device, "--seed", "0",
                "--no-progress", *options, *extra, "--out", str(run_dir)]
        step.notes.append("`bayesnas " + " ".join(a if a != str(run_dir) else "RUN" for a in args) + "`")
        limit = LIMITS.get(name, LIMITS["search"])
        tic = time.perf_counter()
        code, output = run_command(launcher(ctx, ["-m", "bayesnas", *args]), min(limit, ctx.left()), ctx.env)
        step.log = output
        if code != 0:
            step.fail(("timed out" if code is None else f"exited with {code}") + f":\n{tail(output, 20)}")
            return
        summary, problems = check_summary(run_dir, method, ctx.device, options)
        for problem in problems:
            step.fail(problem)
        if "torch.compile failed" in output:
            step.notes.append("torch.compile fell back to eager: " + next(
                line for line in output.splitlines() if "torch.compile failed" in line).strip()[:300])
        for key in ("device", "mode", "val_accuracy", "test_accuracy", "params", "search_seconds", "select_seconds"):
            if key in summary:
                value = summary[key]
                step.figures[key] = round(value, 4) if isinstance(value, float) else value
        step.figures["wall seconds"] = round(time.perf_counter() - tic, 1)

    return step_search


ROW = re.compile(r"^(\S+(?: \(xautodl\))?)\s+(\d+)\s+(\S+(?: \(eager fallback\))?)\s+([\d.]+)\s+([\d.]+)$")


def make_throughput_step(method: str, modes: str) -> Callable[[Context, Step], None]:
    def step_throughput(ctx: Context, step: Step) -> None:
        if ctx.dry_run:
            sizes = ["--device", "cpu", "--small", "--batch-sizes", "4", "--repeats", "1", "--warmup", "0"]
        else:
            batches = "64,256" if modes == EAGER_MODES else "64"
            sizes = ["--device", ctx.device, "--batch-sizes", batches, "--repeats", "5", "--warmup", "3"]
        args = [str(ROOT / "benchmarks" / "gpu_throughput.py"), "--methods", method, "--modes", modes, *sizes]
        step.notes.append("`python benchmarks/gpu_throughput.py " + " ".join(args[1:]) + "`")
        code, output = run_command(launcher(ctx, args), min(LIMITS["throughput"], ctx.left()), ctx.env)
        step.log = output
        if code != 0:
            step.fail(("timed out" if code is None else f"exited with {code}") + f":\n{tail(output, 20)}")
            return
        rows = [m.groups() for m in map(ROW.match, output.splitlines()) if m]
        if not rows:
            step.fail(f"no figures in the output:\n{tail(output, 10)}")
        seen = {(r[0], r[1], r[2]) for r in ctx.rows}
        for name, batch, mode, seconds, rate in rows:
            if (name, batch, mode) not in seen:
                ctx.rows.append((name, batch, mode, seconds, rate))
            step.figures[f"{name} b{batch} {mode}"] = f"{float(rate):.1f} images/s"
        for line in output.splitlines():
            if line.startswith("device="):
                step.figures["device"] = line.strip()
            if line.startswith(("ratio=", "ratio_best=")):
                ctx.ratios.append(f"{modes}: {line.strip()}")
                step.figures[line.split("=")[0]] = line.split("=", 1)[1].strip()
        if method == "gdas" and not ctx.dry_run and "ratio" not in step.figures:
            step.fail("no GDAS ours/xautodl ratio in the output")

    return step_throughput


STEPS: list[tuple[str, Callable[[Context, Step], None]]] = [
    ("environment", step_environment),
    ("install", step_install),
    ("cuda-tests", step_cuda_tests),
    ("speed", step_speed),
    *[(name, make_search_step(name, method, options)) for name, method, options in SEARCHES],
    *[(f"throughput-{m}", make_throughput_step(m, EAGER_MODES)) for m in METHODS],
    *[(f"throughput-{m}-compile", make_throughput_step(m, COMPILE_MODES)) for m in METHODS],
]


# --------------------------------------------------------------------------------------------------- report


def write_report(ctx: Context, steps: list[Step], started: str, total: float) -> Path:
    failed = [s for s in steps if not s.ok]
    env = steps[0].figures if steps and steps[0].name == "environment" else {}
    lines = ["# GPU check", ""]
    mode = "dry run: CPU, tiny sizes" if ctx.dry_run else f"GPU run on {ctx.device}"
    lines += [f"- mode: {mode}", f"- started: {started}; took {total:.0f} s (budget {ctx.budget:.0f} s)",
              f"- GPU: {env.get('gpu', '?')}" + (f", {env['gpu memory']}" if "gpu memory" in env else ""),
              f"- torch {env.get('torch', '?')}, CUDA {env.get('cuda (torch build)', '?')}, "
              f"cuDNN {env.get('cudnn', '?')}, Python {env.get('python', '?')}",
              f"- result: **{'PASSED' if not failed else 'FAILED'}** ({len(steps) - len(failed)} of {len(steps)} "
              "steps passed" + (f"; failed: {', '.join(s.name for s in failed)}" if failed else "") + ")", ""]
    lines += ["| step | result | seconds |", "| --- | --- | --- |"]
    lines += [f"| {s.name} | {'PASS' if s.ok else 'FAIL'} | {s.seconds:.1f} |" for s in steps]
    if ctx.rows:
        lines += ["", "## Throughput (one search step)", "",
                  "| method | batch | mode | s/step | images/s |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {n} | {b} | {m} | {s} | {r} |" for n, b, m, s, r in ctx.rows]
        if ctx.ratios:
            lines += ["", "GDAS step time, ours over xautodl (same GPU, batch 64): " + "; ".join(ctx.ratios)]
    for s in steps:
        lines += ["", f"## {s.name}", "", f"**{'PASS' if s.ok else 'FAIL'}** in {s.seconds:.1f} s", ""]
        lines += [f"- {note}" for note in s.notes]
        for key, value in s.figures.items():
            if isinstance(value, list):
                lines += [f"- {key}:"] + [f"  - {v}" for v in value]
            else:
                lines.append(f"- {key}: {value}")
        for failure in s.failures:
            lines += ["", "Failure:", "", "```", failure, "```"]
    lines += ["", "## Failures", ""]
    lines += [f"- {s.name}: {s.failures[0].splitlines()[0] if s.failures else 'failed'}" for s in failed] or ["none"]
    path = ctx.out / "gpu-check.md"
    path.write_text("\n".join(lines) + "\n")
    (ctx.out / "gpu-check.json").write_text(json.dumps(
        {"dry_run": ctx.dry_run, "passed": not failed, "seconds": round(total, 1),
         "steps": [{"name": s.name, "ok": s.ok, "seconds": round(s.seconds, 1), "failures": s.failures,
                    "figures": s.figures} for s in steps],
         "throughput": [dict(zip(("method", "batch", "mode", "s_per_step", "images_per_s"), r, strict=True))
                        for r in ctx.rows]},
        indent=1))
    with open(ctx.out / "gpu-check.log", "w") as log:
        for s in steps:
            log.write(f"===== {s.name} ({'PASS' if s.ok else 'FAIL'}, {s.seconds:.1f} s)\n{s.log}\n")
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_run"]:
        _run(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output folder: gpu-check.md, gpu-check.json, gpu-check.log")
    parser.add_argument("--wheels", type=Path, help="folder of wheels for what this Python lacks")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny sizes")
    parser.add_argument("--device", help="default: cuda, or cpu with --dry-run")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole run")
    parser.add_argument("--only", help="comma-separated step names (for reruns): the others are not run")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    ctx = Context(out=args.out, dry_run=args.dry_run, device=args.device or ("cpu" if args.dry_run else "cuda"),
                  wheels=args.wheels, work=work, deadline=time.monotonic() + args.budget, env=env, budget=args.budget)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    tic = time.monotonic()
    only = set(args.only.split(",")) if args.only else None
    steps = []
    try:
        for name, function in STEPS:
            if only is not None and name not in only and name != "environment":
                continue
            step = Step(name)
            steps.append(step)
            if ctx.left() < 5:
                step.fail("not run: the time budget is spent")
                continue
            print(f"[gpu_check] {name} ...", flush=True)
            start = time.monotonic()
            try:
                function(ctx, step)
            except Exception as error:  # a broken step is a failure of that step, the others still run
                step.fail(f"{type(error).__name__}: {error}")
            step.seconds = time.monotonic() - start
            step.ok = not step.failures
            print(f"[gpu_check] {name}: {'PASS' if step.ok else 'FAIL'} ({step.seconds:.1f} s)", flush=True)
            for failure in step.failures:
                print("    " + failure.replace("\n", "\n    "), flush=True)
    finally:
        report = write_report(ctx, steps, started, time.monotonic() - tic)
        shutil.rmtree(work, ignore_errors=True)
    failed = [s.name for s in steps if not s.ok]
    print(f"[gpu_check] report: {report}; " + (f"FAILED: {', '.join(failed)}" if failed else "all steps passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
