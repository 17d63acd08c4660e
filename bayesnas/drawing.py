"""Drawings of architectures (matplotlib only, no system packages): what a search found, at a glance.

- ``cells``: each cell type as a graph, DARTS-style: the two inputs ``c_{k-2}`` and ``c_{k-1}``, the intermediate
  states, an arrow per kept edge labelled with its op, and the output ``c_k`` (the concatenation of the states).
- ``chain``: the layer sequence, one box per block with its op, widths and stride (fixed transitions in grey); a
  channel-level genotype (PGNAS on the chain) as bars of the expanded channels each op keeps.
- ``branches``: the input channels each branch of each layer keeps, as bars of kept / total.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from bayesnas.diagnostics import save_figure
from bayesnas.spaces import Genotype, get_space

ARCHITECTURE_FILE = "architecture.png"


def draw_genotype(genotype: Genotype, path: str | Path) -> Path:
    """Draw ``genotype`` (validated against its space) into the PNG ``path``."""
    space = get_space(genotype.space, genotype.config)
    space.validate(genotype)
    draw = {"cells": _draw_cells, "chain": _draw_chain, "branches": _draw_branches}[genotype.space]
    fig = draw(space, genotype)
    save_figure(fig, Path(path))
    return Path(path)


def _node(ax: Any, xy: tuple[float, float], text: str, color: str) -> None:
    ax.add_patch(FancyBboxPatch((xy[0] - 0.32, xy[1] - 0.22), 0.64, 0.44, boxstyle="round,pad=0.02",
                                facecolor=color, edgecolor="black", lw=0.8, zorder=3))
    ax.text(*xy, text, ha="center", va="center", fontsize=9, zorder=4)


def _on_arc(start: tuple[float, float], end: tuple[float, float], rad: float, t: float) -> tuple[float, float]:
    """The point at ``t`` along matplotlib's ``arc3`` connection from ``start`` to ``end`` (a quadratic Bezier
    whose control point is the midpoint moved by ``rad`` times the segment turned clockwise)."""
    (x0, y0), (x1, y1) = start, end
    cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)
    return ((1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t ** 2 * x1,
            (1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t ** 2 * y1)


def _draw_cells(space: Any, genotype: Genotype) -> Figure:
    cells = list(genotype.choices)
    states = max(len(genotype.choices[c]) for c in cells)
    fig = Figure(figsize=(2.2 + 1.5 * states, 3.2 * len(cells)))
    for ax, cell in zip(fig.subplots(len(cells), 1, squeeze=False)[:, 0], cells, strict=True):
        nodes = genotype.choices[cell]
        position = {0: (0.0, 1.0), 1: (0.0, -1.0)}
        for j in range(len(nodes)):
            position[j + 2] = (1.7 + 1.5 * j, 1.0 if j % 2 == 0 else -1.0)
        output = (1.7 + 1.5 * len(nodes), 0.0)
        for j, edges in enumerate(nodes):
            for k, (op, source) in enumerate(edges):
                start, end = (position[source][0] + 0.3, position[source][1]), (position[j + 2][0] - 0.3,
                                                                                 position[j + 2][1])
                bend = 0.2 if k == 0 else -0.2
                ax.annotate("", xy=end, xytext=start,
                            arrowprops={"arrowstyle": "->", "lw": 1.0, "color": f"C{k}",
                                        "connectionstyle": f"arc3,rad={bend}"}, zorder=2)
                ax.text(*_on_arc(start, end, bend, 0.6), op, ha="center", va="center", fontsize=7, color=f"C{k}",
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.3, "alpha": 0.85}, zorder=5)
            ax.annotate("", xy=(output[0] - 0.32, output[1]), xytext=(position[j + 2][0] + 0.3, position[j + 2][1]),
                        arrowprops={"arrowstyle": "->", "lw": 0.6, "color": "grey", "ls": "--"}, zorder=1)
        _node(ax, position[0], "c$_{k-2}$", "palegreen")
        _node(ax, position[1], "c$_{k-1}$", "palegreen")
        for j in range(len(nodes)):
            _node(ax, position[j + 2], str(j), "lightskyblue")
        _node(ax, output, "c$_{k}$", "khaki")
        ax.set_title(f"{cell} cell", fontsize=10)
        ax.set_xlim(-0.6, output[0] + 0.6)
        ax.set_ylim(-1.6, 1.6)
        ax.set_axis_off()
    return fig


def _draw_chain(space: Any, genotype: Genotype) -> Figure:
    if "kept" in genotype.choices:  # PGNAS's channel-level genotype: expanded channels kept per mixop and op
        totals = space.expanded_channels()
        rows = [(f"{mixop} {op}", len(genotype.choices["kept"][mixop][op]), total)
                for mixop, ops in totals.items() for op, total in ops.items()]
        return _kept_bars(rows, "chain: expanded channels each MBConv op of each mixop keeps",
                          "expanded channels kept (blue) of the op's E x C_in (grey)")
    ops = iter(genotype.choices["ops"])
    blocks = [(b.name, next(ops) if b.searchable else b.ops[0], b.in_channels, b.out_channels, b.stride,
               b.searchable) for b in space.blocks()]
    fig = Figure(figsize=(1.35 * len(blocks) + 1.5, 2.4))
    ax = fig.subplots()
    for i, (name, op, cin, cout, stride, searchable) in enumerate(blocks):
        color = "lightskyblue" if searchable else "lightgrey"
        if op == "Identity":
            color = "white"
        ax.add_patch(FancyBboxPatch((i * 1.3, 0), 1.1, 1.0, boxstyle="round,pad=0.02", facecolor=color,
                                    edgecolor="black", lw=0.8))
        ax.text(i * 1.3 + 0.55, 0.62, op.replace("MBConv_", "MB").replace("_", " k"), ha="center", fontsize=8)
        ax.text(i * 1.3 + 0.55, 0.3, f"{cin}->{cout}" + (f" /{stride}" if stride > 1 else ""), ha="center",
                fontsize=7)
        ax.text(i * 1.3 + 0.55, -0.25, name, ha="center", fontsize=7, color="dimgrey")
        if i:
            ax.annotate("", xy=(i * 1.3, 0.5), xytext=(i * 1.3 - 0.2, 0.5), arrowprops={"arrowstyle": "->"})
    ax.set_xlim(-0.2, 1.3 * len(blocks))
    ax.set_ylim(-0.5, 1.2)
    ax.set_axis_off()
    ax.set_title("chain: searched mixops (blue; Identity white) and fixed transitions (grey); MBe k: MBConv, "
                 "expansion e, kernel k", fontsize=9)
    return fig


def _draw_branches(space: Any, genotype: Genotype) -> Figure:
    rows = [(f"{layer.layer} {layer.branch}", len(genotype.choices[layer.layer][layer.branch]), layer.in_channels)
            for layer in space.layers()]
    return _kept_bars(rows, "branches: kept input channels per layer and branch (kernel size k)",
                      "input channels kept (blue) of the kernel's slices (grey)")


def _kept_bars(rows: list[tuple[str, int, int]], title: str, xlabel: str) -> Figure:
    """One bar per ``(label, kept, total)``: the total in grey, the kept part in blue, ``kept/total`` beside."""
    fig = Figure(figsize=(7, 0.45 * len(rows) + 1.2))
    ax = fig.subplots()
    for row, (_, kept, total) in enumerate(rows):
        ax.barh(row, total, color="whitesmoke", edgecolor="grey")
        ax.barh(row, kept, color="tab:blue" if kept else "white")
        ax.text(total, row, f" {kept}/{total}", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    return fig
