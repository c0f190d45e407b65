"""Draw a directly-follows process map as a PNG: networkx holds the graph and lays it out in layers
(left to right, by distance from the start), matplotlib draws it. Both are pure wheels from PyPI, so
`make run` needs nothing outside Python (Graphviz would need a system package).

Only the busiest activities and relations are drawn (a map with every rare path is unreadable); the
tables next to the picture hold every figure.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from telemetry_pipeline.overview import END, START, ActivityFigures, Edge

if TYPE_CHECKING:
    import networkx as nx

MAX_ACTIVITIES = 12
MAX_EDGES = 26
_FILL, _PSEUDO, _EDGE, _TEXT = "#dbe9f6", "#f2f2f2", "#4a6f94", "#1b2b3a"


def draw_process_map(edges: Sequence[Edge], activities: Sequence[ActivityFigures], dpi: int = 80) -> bytes:
    # Imported here: matplotlib takes seconds to import, and every run and CLI call imports the assets.
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch

    graph = _graph(edges, activities)
    layers = _layers(graph)
    width = max(6.0, 2.6 * (max(layers.values(), default=0) + 1))
    per_layer = _ordered_layers(graph, layers)
    height = max(3.5, 1.1 * max((len(v) for v in per_layer.values()), default=1))
    pos = {node: (layer * 2.6, -row * 1.1 + (len(nodes) - 1) * 0.55)
           for layer, nodes in per_layer.items() for row, node in enumerate(nodes)}

    fig = Figure(figsize=(width, height), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    boxes = {}  # arcs are clipped to the boxes they join, so arrowheads stay visible
    for node, (x, y) in pos.items():
        pseudo = node in (START, END)
        boxes[node] = ax.text(x, y, _node_label(node, graph.nodes[node]), fontsize=8, color=_TEXT,
                              ha="center", va="center",
                bbox={"boxstyle": "round,pad=0.4", "fc": _PSEUDO if pseudo else _FILL, "ec": _EDGE, "lw": 0.8})
    top = max((d["count"] for _, _, d in graph.edges(data=True)), default=1)
    for source, target, data in graph.edges(data=True):
        back = layers[target] <= layers[source]  # loops and backward arcs bend the other way
        arrow = FancyArrowPatch(
            pos[source], pos[target], arrowstyle="-|>", mutation_scale=12, color=_EDGE, alpha=0.75, zorder=4,
            linewidth=0.6 + 3.4 * math.log1p(data["count"]) / math.log1p(top),
            connectionstyle=f"arc3,rad={0.35 if back else 0.08}", shrinkA=2, shrinkB=2,
            patchA=boxes[source].get_bbox_patch(), patchB=boxes[target].get_bbox_patch(),
        )
        ax.add_patch(arrow)
        mid_x, mid_y = (pos[source][0] + pos[target][0]) / 2, (pos[source][1] + pos[target][1]) / 2
        ax.text(mid_x, mid_y + (0.32 if back else 0.12), _edge_label(data), fontsize=7, color=_EDGE,
                ha="center", va="center", bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
    xs, ys = [p[0] for p in pos.values()] or [0], [p[1] for p in pos.values()] or [0]
    ax.set_xlim(min(xs) - 1.4, max(xs) + 1.4)
    ax.set_ylim(min(ys) - 0.9, max(ys) + 0.9)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=dpi)
    return out.getvalue()


def _graph(edges: Sequence[Edge], activities: Sequence[ActivityFigures]) -> nx.DiGraph:
    import networkx as nx

    kept = {a.activity for a in sorted(activities, key=lambda a: -a.count)[:MAX_ACTIVITIES]} | {START, END}
    figures = {a.activity: a for a in activities}
    graph = nx.DiGraph()
    drawn = [e for e in edges if e.source in kept and e.target in kept][:MAX_EDGES]
    loops = {e.source: e.count for e in drawn if e.source == e.target}  # repeats: shown in the box, not as arcs
    for e in drawn:
        if e.source != e.target:
            graph.add_edge(e.source, e.target, count=e.count, median_ms=e.median_ms)
    for node in graph:
        graph.nodes[node]["repeats"] = loops.get(node, 0)
        f = figures.get(node)
        graph.nodes[node]["count"] = f.count if f else sum(d["count"] for *_, d in graph.in_edges(node, data=True)) or \
            sum(d["count"] for *_, d in graph.out_edges(node, data=True))
        graph.nodes[node]["median_ms"] = f.median_ms if f else None
    return graph


def _layers(graph: nx.DiGraph) -> dict[str, int]:
    """Columns left to right: the shortest number of steps from the start; the end in the last column."""
    import networkx as nx

    depth = nx.single_source_shortest_path_length(graph, START) if START in graph else {}
    last = max(depth.values(), default=0) + 1
    layers = {node: depth.get(node, last - 1) for node in graph}
    if END in graph:
        layers[END] = max(last, max((v for k, v in layers.items() if k != END), default=0) + 1)
    return layers


def _ordered_layers(graph: nx.DiGraph, layers: dict[str, int]) -> dict[int, list[str]]:
    """Nodes of each column, top to bottom: the first column by frequency, every later one by the mean
    row of its predecessors in earlier columns (the barycentre heuristic), which keeps arcs short and
    uncrossed where the process allows it."""
    columns: dict[int, list[str]] = {}
    for node in graph:
        columns.setdefault(layers[node], []).append(node)
    row: dict[str, float] = {}
    ordered: dict[int, list[str]] = {}

    def weight(node: str) -> tuple[float, int]:
        earlier = [(row[p], graph.edges[p, node]["count"]) for p in graph.predecessors(node) if p in row]
        total = sum(c for _, c in earlier)
        centre = sum(r * c for r, c in earlier) / total if total else 0.0
        return centre, -graph.nodes[node]["count"]

    for layer in sorted(columns):
        ordered[layer] = sorted(columns[layer], key=weight)
        offset = (len(ordered[layer]) - 1) / 2
        row |= {node: i - offset for i, node in enumerate(ordered[layer])}
    return ordered


def _node_label(node: str, data: dict) -> str:
    name = node if len(node) <= 26 else node[:25] + "…"
    if node in (START, END):
        return f"{name}\n{data['count']:,} cases"
    median = f" · {_duration(data['median_ms'])}" if data.get("median_ms") is not None else ""
    repeats = f" · ↻ {data['repeats']:,}" if data.get("repeats") else ""
    return f"{name}\n{data['count']:,}×{median}{repeats}"


def _edge_label(data: dict) -> str:
    median = data.get("median_ms")
    return f"{data['count']:,}" + (f" · {_duration(median)}" if median is not None else "")


def _duration(ms: float) -> str:
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    if ms < 3_600_000:
        return f"{ms / 60_000:.1f} min"
    return f"{ms / 3_600_000:.1f} h"
