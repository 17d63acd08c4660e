"""Drawings of architectures: every edge, block and kept-channel count of the genotype is in the picture."""

import collections

import pytest
import torch
from matplotlib.image import imread

from bayesnas import drawing
from bayesnas.cli import EXIT_ERROR, main
from bayesnas.config import SPACE_DEFAULTS
from bayesnas.spaces import Genotype, get_space

SHAPE = {"in_channels": 1, "num_classes": 10}


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_cells_draw_every_edge_with_its_op():
    space = get_space("cells", {**SPACE_DEFAULTS["cells"], **SHAPE, "image_size": 8})
    genotype = space.random_genotype(torch.Generator().manual_seed(3))
    drawn = collections.Counter(texts(drawing._draw_cells(space, genotype)))
    edges = collections.Counter(op for cell in genotype.choices.values() for state in cell for op, _ in state)
    assert {op: drawn[op] for op in edges} == dict(edges)  # one label per kept edge
    states = len(genotype.choices["normal"])
    assert all(drawn[str(j)] == 2 for j in range(states))  # each state once per cell type
    assert drawn["c$_{k-2}$"] == drawn["c$_{k-1}$"] == drawn["c$_{k}$"] == 2


def test_chain_draws_every_block_in_order():
    space = get_space("chain", {**SPACE_DEFAULTS["chain"], **SHAPE, "image_size": 8})
    genotype = space.random_genotype(torch.Generator().manual_seed(0))
    labels = texts(drawing._draw_chain(space, genotype))
    names = [b.name for b in space.blocks()]
    assert [t for t in labels if t in names] == names
    ops = iter(genotype.choices["ops"])
    expected = [(next(ops) if b.searchable else b.ops[0]).replace("MBConv_", "MB").replace("_", " k")
                for b in space.blocks()]
    assert [t for t in labels if t.startswith("MB") or t == "Identity"] == expected


def test_branches_draw_kept_over_total(tmp_path, capsys):
    space = get_space("branches", {**SPACE_DEFAULTS["branches"], **SHAPE})
    kept = {layer: {branch: idx[: len(idx) // 2] for branch, idx in branches.items()}
            for layer, branches in space.full_genotype().choices.items()}
    genotype = space.genotype(kept)
    labels = texts(drawing._draw_branches(space, genotype))
    assert [t.strip() for t in labels] == [f"{len(idx) // 2}/{len(idx)}" for layer in space.layers()
                                          for idx in [range(layer.in_channels)]]
    path = tmp_path / "g.json"
    genotype.save(path)
    assert main(["draw", str(path)]) == 0
    image = imread(tmp_path / drawing.ARCHITECTURE_FILE)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert f"-> {tmp_path / drawing.ARCHITECTURE_FILE}" in capsys.readouterr().out


def test_an_invalid_genotype_is_not_drawn(tmp_path, capsys):
    space = get_space("chain", {**SPACE_DEFAULTS["chain"], **SHAPE, "image_size": 8})
    bad = Genotype("chain", space.config.to_dict(), {"ops": ["MBConv_3_3"]})
    with pytest.raises(ValueError):
        drawing.draw_genotype(bad, tmp_path / "x.png")
    bad.save(tmp_path / "bad.json")
    assert main(["draw", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x.png")]) == EXIT_ERROR
    assert not (tmp_path / "x.png").exists() and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_channel_level_chain_genotype_draws_kept_over_expanded():
    space = get_space("chain", {**SPACE_DEFAULTS["chain"], **SHAPE, "image_size": 8})
    totals = space.expanded_channels()
    genotype = space.channel_genotype({m: {op: list(range(t // 3)) for op, t in ops.items()}
                                       for m, ops in totals.items()})
    labels = [t.strip() for t in texts(drawing._draw_chain(space, genotype))]
    assert labels == [f"{t // 3}/{t}" for ops in totals.values() for t in ops.values()]
