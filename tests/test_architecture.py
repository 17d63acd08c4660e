"""The layout of docs/architecture.md holds: no import cycle, every import goes to its own layer or an earlier one,
only the front door imports an experiment driver, and a method added from outside the package (a model, a guide
and a method class, here) searches digits from the command line without any other module changed."""

from __future__ import annotations

import ast
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from bayesnas.cli import main
from bayesnas.config import METHOD_SPACES, PRESETS
from bayesnas.domains import check_domains, setting
from bayesnas.methods import METHODS, Phase, SearchMethod, Selection, register
from bayesnas.training import accuracy

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    ("base", {"bayesnas", "errors", "domains", "io", "config", "run_folder", "user_data", "data", "precision",
              "optimizers",
              "distributed", "compute", "distributions", "elbo", "reparam", "calibration", "select",
              "diagnostics", "shift"}),
    ("spaces", {"spaces", "drawing"}),
    ("inference", {"training", "predictive", "speed"}),
    ("methods", {"methods", "models", "guides"}),
    ("search loop", {"infer", "search_folder"}),
    ("python api", {"api", "ensembles"}),
    ("experiments", {"experiments"}),
    ("front door", {"cli", "__main__"}),
]


@functools.cache
def _modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (``models/`` and ``guides/`` install as subpackages)."""
    found = {}
    for path in (ROOT / "bayesnas").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for folder in ("models", "guides"):
        for path in (ROOT / folder).glob("*.py"):
            found[f"bayesnas.{folder}" + ("" if path.stem == "__init__" else f".{path.stem}")] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its body (lazy imports in functions too; not those
    under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m in known and m != name}


@functools.cache
def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _layer(name: str) -> int:
    short = name.removeprefix("bayesnas.") if name != "bayesnas" else name
    for i, (_, members) in enumerate(LAYERS):
        if short in members or short.split(".")[0] in members:
            return i
    raise AssertionError(f"{name} is in no layer of docs/architecture.md")


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):  # a package importing its own submodules is no cycle
                continue
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_every_import_goes_to_its_own_layer_or_an_earlier_one():
    wrong = [f"{name} ({LAYERS[_layer(name)][0]}) imports {other} ({LAYERS[_layer(other)][0]})"
             for name, imported in _graph().items() for other in imported if _layer(other) > _layer(name)]
    assert wrong == []


def test_only_the_front_door_imports_an_experiment_driver():
    drivers = {name for name in _modules() if name.startswith("bayesnas.experiments")}
    front = {"bayesnas.cli", "bayesnas.__main__"}
    importers = {name for name, imported in _graph().items() if imported & drivers and name not in drivers}
    assert importers <= front and "bayesnas.cli" in importers


NAMING_METHODS = ("bayesnas.experiments", "bayesnas.spaces")
"""Modules that may name a method: the experiment drivers are defined in terms of named methods (random search as
the chance reference, PC-NAS's ranking against one-shot), and the spaces name op sets after the papers that define
them (``ops: gdas``)."""


def _names_of_methods(path: Path, names: set[str]) -> set[str]:
    """The method and preset names that ``path`` spells as string constants."""
    return {node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names}


def _own_modules(method: str) -> set[str]:
    """A method's own modules: its method module, model and guide (one stem)."""
    stem = METHODS[method].__module__.rsplit(".", 1)[1]
    return {f"bayesnas.methods.{stem}", f"bayesnas.models.{stem}", f"bayesnas.guides.{stem}"}


def test_no_module_but_a_methods_own_names_it():
    """Adding a method is its method module (with its declaration beside it), model, guide and a test: no other module
    spells a method's name or one of its presets' (the front door, the base, the inference and the loop included)."""
    owners = {name: settings["method"] for name, settings in PRESETS.items()} | {m: m for m in METHODS}
    found = {}
    for module, path in _modules().items():
        if module.startswith(NAMING_METHODS):
            continue
        named = {n for n in _names_of_methods(path, set(owners)) if module not in _own_modules(owners[n])}
        if named:
            found[module] = sorted(named)
    assert found == {}


def test_the_method_name_checker_sees_a_name(tmp_path):
    cli = tmp_path / "cli.py"
    cli.write_text('"""Docs may say pcnas."""\nDEFAULT = "pcnas-digits"\nLABEL = "PC-NAS"\n')
    assert _names_of_methods(cli, {"pcnas", "pcnas-digits"}) == {"pcnas-digits"}
    assert "bayesnas.guides.vinnas" in _own_modules("vinnas") and "bayesnas.methods.random_search" in _own_modules(
        "random")


def test_the_checker_sees_a_cycle_and_a_layer_breach(tmp_path):
    """The two checks above can fail: a hand-made cycle and a base module importing a method are found."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from bayesnas import methods\nimport bayesnas.cli\n")
    b.write_text("def f():\n    from bayesnas.io import read_json\n")
    known = {"bayesnas.methods", "bayesnas.cli", "bayesnas.io"}
    assert _imports("bayesnas.io", a, known) == {"bayesnas.methods", "bayesnas.cli"}
    assert _imports("bayesnas.config", b, known) == {"bayesnas.io"}
    assert _layer("bayesnas.io") < _layer("bayesnas.methods.gdas") < _layer("bayesnas.experiments.compare")


# A toy method, written as a user would write one outside the package: a uniform categorical prior over every
# decision of the chain with the super-network's likelihood (the model), a straight-through relaxed categorical
# at temperature 1 (the guide), and the loop's hooks (the method), trained by Pyro's Trace_ELBO.


class ToyModel(PyroModule):
    def __init__(self, net: nn.Module, shapes: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        self.net, self.shapes = net, shapes

    def forward(self, x, y=None, index=None, size=None):
        arch = {g: pyro.sample(f"toy_{g}", dist.OneHotCategorical(logits=torch.zeros(s)).to_event(1))
                for g, s in self.shapes.items()}
        with pyro.plate("data", size or len(x), subsample=index):
            logits = self.net(x, arch)
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)
        return logits


class ToyGuide(PyroModule):
    def __init__(self, shapes: dict[str, tuple[int, int]], temperature: float) -> None:
        super().__init__()
        self.logits = nn.ParameterDict({g: nn.Parameter(torch.zeros(s)) for g, s in shapes.items()})
        self.temperature = temperature

    def forward(self, x, y=None, index=None, size=None):
        return {g: pyro.sample(f"toy_{g}", dist.RelaxedOneHotCategoricalStraightThrough(
            torch.tensor(self.temperature), logits=a).to_event(1)) for g, a in self.logits.items()}

    def mode(self) -> dict[str, torch.Tensor]:
        return {g: nn.functional.one_hot(a.argmax(-1), a.shape[-1]).float() for g, a in self.logits.items()}


@dataclass(frozen=True)
class ToyOptions:
    temperature: float = setting(1.0, "> 0")
    """The guide's relaxation temperature."""

    def __post_init__(self) -> None:
        check_domains(self)


class Toy(SearchMethod):
    name = "toy"
    options_type = ToyOptions
    spaces = ("chain",)
    presets = {"toy-digits": {"dataset": "digits", "epochs": 2, "batch_size": 64, "lr": 0.05,
                              "space": {"stem_channels": 8, "widths": [8, 16], "depths": [1, 2], "strides": [1, 2],
                                        "first_block_channels": 0, "head_channels": 0, "ops": "small"}}}

    def __init__(self, config, data, device) -> None:
        super().__init__(config, data, device)
        self.space = self.build_space()
        shapes = {g: d.shape for g, d in self.space.groups().items()}
        self.model = ToyModel(self.space.supernet(sparse=True), shapes).to(device)
        self.guide = ToyGuide(shapes, self.options.temperature).to(device)

    def modules(self):
        return {"model": self.model, "guide": self.guide}

    def phases(self):
        return [Phase.sgd(self.config, "weights", "train",
                          [{"params": [*self.model.parameters(), *self.guide.parameters()]}], self.loss)]

    def loss(self, x, y, index):
        size = len(self.data.train)
        model = poutine.trace(self.model)
        loss = pyro.infer.Trace_ELBO().differentiable_loss(model, self.guide, x, y, index, size)
        logits = model.trace.nodes["_RETURN"]["value"]
        return loss / size, int((logits.argmax(-1) == y).sum())

    @torch.no_grad()
    def accuracy(self, split):
        arch = self.guide.mode()
        return accuracy(self.model, split, predict=lambda x: self.model.net(x, arch))

    def select(self, progress=True):
        genotype = self.space.derive({g: torch.softmax(a, -1) for g, a in self.guide.logits.items()})
        net = self.space.build(genotype).to(self.device)
        return Selection(genotype, net, self.accuracy(self.data.val), self.accuracy(self.data.test))

    def export(self, run_dir):
        (run_dir / "toy.json").write_text(json.dumps({g: a.tolist() for g, a in self.guide.logits.items()}))


@pytest.fixture
def toy():
    """The toy registered as its module would register it (``@register``), and removed again afterwards so that
    tests running in the same process see the built-in methods only."""
    register(Toy)
    yield Toy
    METHODS.pop("toy")
    METHOD_SPACES.pop("toy")
    PRESETS.pop("toy-digits")


def test_a_method_added_from_outside_searches_digits_from_the_command_line(toy, tmp_path, capsys):
    assert METHODS["toy"] is toy and METHOD_SPACES["toy"] == ("chain",) and PRESETS["toy-digits"]["method"] == "toy"
    out = tmp_path / "toy"
    assert main(["search", "--method", "toy", "--option", "temperature=0.5", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["options"] == {"temperature": 0.5} and config["space_name"] in ("", "chain")
    assert summary["method"] == "toy" and summary["epochs"] == 2 and 0.0 <= summary["test_accuracy"] <= 1.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    logits = json.loads((out / "toy.json").read_text())
    assert any(abs(v) > 0 for values in logits.values() for row in values for v in row)  # the guide learned
    assert "chosen architecture (toy on digits)" in capsys.readouterr().out
