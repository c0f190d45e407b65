"""The directly-follows process map as an SVG drawn at readable size, with our own layered layout.

Graphviz `dot` would need a system package (no PyPI wheel ships a Linux x86_64 binary), so the layout is
the same idea done here, small: activities in columns by their longest distance from the start (arcs that
go back to an earlier activity are reversed for this), columns ordered by barycentre sweeps to keep arcs
short and uncrossed. Every arc gets a slot for its label in the column right after its source, and a
reserved slot in every column it passes, so text sits only in slots, arcs run through columns only along
their own slot, and between columns nothing but arcs is drawn: no label over a box, no arc through text.
`MapLayout.labels` are the boxes of every piece of text, for tests to check that.

Only the busiest activities and relations are drawn (a map with every rare path is unreadable), and the
picture says how many; the tables beside it hold every figure. Repeats of an activity (a self-loop) are
counted in its box (`↻ n`, explained in the legend) rather than drawn as arcs.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from telemetry_pipeline.console.overview import END, START, ActivityFigures, Edge

MAX_ACTIVITIES = 12
MAX_EDGES = 30
MIN_WIDTH = 1600  # px: the picture is drawn for 100 % zoom
FONT = 15  # px, activity names; figures and arc labels one smaller
LINE = 20  # px per line of text
PAD = 10  # px inside a box
GAP = 16  # px between slots of a column
CHANNEL = 40  # px between columns, where only arcs run
MARGIN = 32
MAX_NAME = 34  # characters of an activity name in its box
# Glyph widths per font size, on the generous side of DejaVu Sans (what Debian's browsers use for sans-serif):
# (regular, bold) for wide, capital, narrow and other characters.
_WIDE, _CAPS, _NARROW = set("mwMW@%"), set("ABCDEFGHIJKLNOPQRSTUVXYZ&"), set("iljfrt.,:;'|!()[] ")
_EM = {"wide": (0.95, 1.05), "caps": (0.74, 0.8), "narrow": (0.36, 0.42), "other": (0.62, 0.7)}
_FILL, _PSEUDO, _STROKE, _EDGE, _BACK, _TEXT, _MUTED = (
    "#dbe9f6", "#eeeeee", "#4a6f94", "#4a6f94", "#b0653a", "#1b2b3a", "#55606b")


@dataclass(frozen=True)
class Box:
    """A rectangle of text (or of a slot), top-left corner and size in px."""

    x: float
    y: float
    width: float
    height: float
    text: tuple[str, ...] = ()

    @property
    def right(self) -> float:
        return self.x + self.width

    @property
    def bottom(self) -> float:
        return self.y + self.height

    def overlaps(self, other: Box) -> bool:
        return (self.x < other.right and other.x < self.right
                and self.y < other.bottom and other.y < self.bottom)


@dataclass(frozen=True)
class Route:
    """One arc: its polyline from `source` to `target` (each step between columns drawn as a curve that
    stays between them), its label's box, and whether it goes back to an earlier column."""

    source: str
    target: str
    count: int
    points: tuple[tuple[float, float], ...]
    label: Box
    back: bool


@dataclass(frozen=True)
class MapLayout:
    width: float
    height: float
    nodes: dict[str, Box]
    routes: tuple[Route, ...]
    title: Box
    legend: Box
    activities_shown: int
    activities_total: int

    @property
    def labels(self) -> list[Box]:
        """Every piece of text in the picture: boxes, arc labels, title, legend."""
        return [*self.nodes.values(), *(r.label for r in self.routes), self.title, self.legend]


@dataclass(frozen=True)
class ProcessMap:
    svg: str
    layout: MapLayout


def draw_process_map(edges: Sequence[Edge], activities: Sequence[ActivityFigures]) -> ProcessMap:
    layout = layout_process_map(edges, activities)
    return ProcessMap(render_svg(layout), layout)


def save_process_map(svg: str, directory: Path) -> Path:
    """`<directory>/process_map.svg`, replaced whole (a reader never sees half a file)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "process_map.svg"
    partial = path.with_suffix(".svg.partial")
    partial.write_text(svg, encoding="utf-8")
    os.replace(partial, path)
    return path


# -- the graph ---------------------------------------------------------------------------------------------

@dataclass
class _Node:
    name: str
    text: tuple[str, ...]
    repeats: int = 0


@dataclass
class _Arc:
    source: str
    target: str
    count: int
    median_ms: float | None
    back: bool = False


def _graph(edges: Sequence[Edge], activities: Sequence[ActivityFigures]) -> tuple[dict[str, _Node], list[_Arc]]:
    busiest = sorted(activities, key=lambda a: (-a.count, a.activity))[:MAX_ACTIVITIES]
    kept = {a.activity for a in busiest} | {START, END}
    figures = {a.activity: a for a in activities}
    drawn = [e for e in edges if e.source in kept and e.target in kept]
    loops = {e.source: e.count for e in drawn if e.source == e.target}
    arcs = [_Arc(e.source, e.target, e.count, e.median_ms)
            for e in sorted((e for e in drawn if e.source != e.target), key=lambda e: -e.count)[:MAX_EDGES]]
    names = [START, *(a.activity for a in busiest), END]
    used = {START, END} & ({a.source for a in arcs} | {a.target for a in arcs})
    nodes = {}
    for name in names:
        if name in (START, END) and name not in used:
            continue
        if name in (START, END):  # every case, also those whose arcs here were not drawn
            cases = sum(e.count for e in edges if (e.source if name == START else e.target) == name)
            nodes[name] = _Node(name, (name, f"{cases:,} cases"))
            continue
        f = figures[name]
        median = f" · median {_duration(f.median_ms)}" if f.median_ms is not None else ""
        repeats = f" · ↻ {loops[name]:,}" if loops.get(name) else ""
        nodes[name] = _Node(name, (_clip(name, MAX_NAME), f"{f.count:,}×{median}{repeats}"), loops.get(name, 0))
    return nodes, arcs


def _mark_back_arcs(nodes: dict[str, _Node], arcs: list[_Arc]) -> None:
    """Depth-first from the start along the busiest arcs first: an arc into a node still on the path is a
    back arc (a loop in the process). Reversing those leaves an acyclic graph to put in columns."""
    out: dict[str, list[_Arc]] = {n: [] for n in nodes}
    for arc in sorted(arcs, key=lambda a: -a.count):
        out[arc.source].append(arc)
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str) -> None:
        state[node] = 1
        for arc in out[node]:
            if state.get(arc.target) == 1:
                arc.back = True
            elif arc.target not in state:
                visit(arc.target)
        state[node] = 2

    for node in nodes:  # the start first (dict order), then anything it does not reach
        if node not in state:
            visit(node)


def _ranks(nodes: dict[str, _Node], arcs: list[_Arc]) -> dict[str, int]:
    """Longest distance from a source over the acyclic graph; the end alone in the last rank."""
    forward = [(a.target, a.source) if a.back else (a.source, a.target) for a in arcs]
    rank = dict.fromkeys(nodes, 0)
    for _ in nodes:  # Bellman-Ford style relaxation: at most |nodes| passes on an acyclic graph
        changed = False
        for u, v in forward:
            if v != END and rank[v] < rank[u] + 1:
                rank[v], changed = rank[u] + 1, True
        if not changed:
            break
    if END in rank:
        rank[END] = max((r for n, r in rank.items() if n != END), default=0) + 1
    return rank


# -- the layout --------------------------------------------------------------------------------------------

@dataclass
class _Slot:
    """An item of a column: a node's box, an arc's label, or an arc passing through."""

    kind: str  # node | label | pass
    key: str | int  # node name, or arc index
    width: float
    height: float
    y: float = 0.0
    order: float = 0.0


def layout_process_map(edges: Sequence[Edge], activities: Sequence[ActivityFigures]) -> MapLayout:
    nodes, arcs = _graph(edges, activities)
    _mark_back_arcs(nodes, arcs)
    rank = _ranks(nodes, arcs)

    # Columns: nodes at even positions, arc labels and passages in between.
    columns: dict[int, list[_Slot]] = {}
    for name in nodes:
        w, h = _text_size(nodes[name].text)
        columns.setdefault(2 * rank[name], []).append(_Slot("node", name, w, h))
    chains: list[list[tuple[int, _Slot]]] = []
    for i, arc in enumerate(arcs):
        a, b = (arc.target, arc.source) if arc.back else (arc.source, arc.target)
        chain: list[tuple[int, _Slot]] = []
        for col in range(2 * rank[a] + 1, 2 * rank[b]):
            if not chain:
                lw, lh = _label_size(_arc_label(arc))
                slot = _Slot("label", i, lw, lh)
            else:
                slot = _Slot("pass", i, 0.0, 6.0)
            columns.setdefault(col, []).append(slot)
            chain.append((col, slot))
        chains.append(chain)

    _order(columns, arcs, chains)

    # Sizes and places: columns left to right, slots stacked top to bottom and centred.
    widths = {c: max((s.width for s in slots), default=0.0) for c, slots in columns.items()}
    heights = {c: sum(s.height for s in slots) + GAP * (len(slots) - 1) for c, slots in columns.items()}
    title = _title(len([n for n in nodes if n not in (START, END)]), len(activities), len(arcs))
    legend = _legend()
    top = MARGIN + title.height + GAP * 2
    content_h = max(heights.values(), default=0.0)
    left: dict[int, float] = {}
    x = 0.0
    for c in sorted(columns):
        left[c] = x
        x += max(widths[c], 12.0) + CHANNEL
    content_w = max(x - CHANNEL, 0.0)
    width = max(MIN_WIDTH, content_w + 2 * MARGIN, title.width + 2 * MARGIN, legend.width + 2 * MARGIN)
    shift = (width - content_w) / 2
    for c, slots in columns.items():
        y = top + (content_h - heights[c]) / 2
        for slot in slots:
            slot.y = y
            y += slot.height + GAP
    col_box = {c: (shift + left[c], shift + left[c] + max(widths[c], 12.0)) for c in columns}

    boxes: dict[str, Box] = {}
    for c, slots in columns.items():
        lo, hi = col_box[c]
        for slot in slots:
            if slot.kind == "node":
                name = str(slot.key)
                boxes[name] = Box((lo + hi - slot.width) / 2, slot.y, slot.width, slot.height, nodes[name].text)

    routes = []
    for i, arc in enumerate(arcs):
        a, b = (arc.target, arc.source) if arc.back else (arc.source, arc.target)
        start, end = _port(boxes[a], "out", i, arcs, a, boxes), _port(boxes[b], "in", i, arcs, b, boxes)
        # Level runs to the edges of the two boxes' columns, inside the boxes' own slots.
        points = [start, (col_box[2 * rank[a]][1], start[1])]
        label_box = None
        for col, slot in chains[i]:
            lo, hi = col_box[col]
            line_y = slot.y + slot.height - 3 if slot.kind == "label" else slot.y + slot.height / 2
            points += [(lo, line_y), (hi, line_y)]
            if slot.kind == "label":
                label_box = Box((lo + hi - slot.width) / 2, slot.y, slot.width, slot.height - 6, (_arc_label(arc),))
        points += [(col_box[2 * rank[b]][0], end[1]), end]
        assert label_box is not None, "every arc spans at least one label column"
        if arc.back:
            points.reverse()
        routes.append(Route(arc.source, arc.target, arc.count, tuple(points), label_box, arc.back))

    bottom = top + content_h + GAP * 2
    title = dataclasses.replace(title, x=MARGIN, y=MARGIN)
    legend = dataclasses.replace(legend, x=MARGIN, y=bottom)
    return MapLayout(width, bottom + legend.height + MARGIN, boxes, tuple(routes), title, legend,
                     len([n for n in nodes if n not in (START, END)]), len(activities))


def _order(columns: dict[int, list[_Slot]], arcs: list[_Arc], chains: list[list[tuple[int, _Slot]]]) -> None:
    """Order every column by the mean position of its neighbours (barycentre), sweeping left to right and
    back a few times; arcs weigh by their count so the busy paths run straightest."""
    node_slot = {str(s.key): s for slots in columns.values() for s in slots if s.kind == "node"}
    links: list[tuple[_Slot, _Slot, int]] = []  # (left, right, weight) between adjacent columns
    for i, arc in enumerate(arcs):
        a, b = (arc.target, arc.source) if arc.back else (arc.source, arc.target)
        path = [node_slot[a], *(slot for _, slot in chains[i]), node_slot[b]]
        links += [(p, q, arc.count) for p, q in itertools.pairwise(path)]
    for slots in columns.values():  # first guess: as added, i.e. the busiest activities first
        for i, slot in enumerate(slots):
            slot.order = i
    left_of: dict[int, list[tuple[_Slot, int]]] = {}
    right_of: dict[int, list[tuple[_Slot, int]]] = {}
    for p, q, w in links:
        right_of.setdefault(id(p), []).append((q, w))
        left_of.setdefault(id(q), []).append((p, w))
    ordered = sorted(columns)
    for sweep in range(6):
        for c in ordered if sweep % 2 == 0 else reversed(ordered):
            neighbours = left_of if sweep % 2 == 0 else right_of
            for slot in columns[c]:
                near = neighbours.get(id(slot), [])
                total = sum(w for _, w in near)
                if total:
                    slot.order = sum(s.order * w for s, w in near) / total
            columns[c].sort(key=lambda s: s.order)
            for i, slot in enumerate(columns[c]):  # ranks, so the next column compares positions
                slot.order = i - (len(columns[c]) - 1) / 2


def _port(box: Box, side: str, index: int, arcs: list[_Arc], node: str, boxes: dict[str, Box]) -> tuple[float, float]:
    """Where arc `index` leaves (`out`, right side) or enters (`in`, left side) `box`: the arcs of one side
    are spread along it in the order of the boxes at their other ends, so they do not bundle."""
    mine = []
    for i, arc in enumerate(arcs):
        a, b = (arc.target, arc.source) if arc.back else (arc.source, arc.target)
        if (a if side == "out" else b) == node:
            other = boxes.get(b if side == "out" else a)
            mine.append((other.y if other else 0.0, i))
    mine.sort()
    k = [i for _, i in mine].index(index)
    y = box.y + box.height * (k + 1) / (len(mine) + 1)
    return (box.right, y) if side == "out" else (box.x, y)


# -- text ----------------------------------------------------------------------------------------------------

def text_width(text: str, size: float, *, bold: bool = False) -> float:
    """Width in px of `text` at font `size`, estimated per character (no font file is read)."""
    def em(c: str) -> float:
        kind = "wide" if c in _WIDE else "caps" if c in _CAPS else "narrow" if c in _NARROW else "other"
        return _EM[kind][bold]
    return size * sum(em(c) for c in text)


def _text_size(lines: tuple[str, ...]) -> tuple[float, float]:
    widths = [text_width(lines[0], FONT, bold=True), *(text_width(t, FONT - 1) for t in lines[1:])]
    return max(widths) + 2 * PAD, LINE * len(lines) + 2 * PAD - 4


def _label_size(text: str) -> tuple[float, float]:
    return text_width(text, FONT - 1) + 8, LINE + 6


def _title(shown: int, total: int, arcs: int) -> Box:
    lines = (f"{shown} of {total} activities shown (the busiest), {arcs} of their transitions",)
    return Box(0, 0, text_width(lines[0], FONT + 3, bold=True), LINE + 12, lines)


LEGEND = (
    "Box: activity · how often it happened (×) · its median duration · ↻ n = it directly repeated itself "
    "n times (a self-loop, not drawn as an arrow)",
    "Arrow: cases that went from one activity directly to the next · median time between their starts; "
    "brown = back to an earlier activity",
)


def _legend() -> Box:
    width = max(text_width(t, FONT - 1) for t in LEGEND)
    return Box(0, 0, width, LINE * len(LEGEND) + 4, LEGEND)


def _arc_label(arc: _Arc) -> str:
    return f"{arc.count:,}" + (f" · {_duration(arc.median_ms)}" if arc.median_ms is not None else "")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _duration(ms: float) -> str:
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    if ms < 3_600_000:
        return f"{ms / 60_000:.1f} min"
    return f"{ms / 3_600_000:.1f} h"


# -- SVG -----------------------------------------------------------------------------------------------------

def render_svg(layout: MapLayout) -> str:
    top = max((r.count for r in layout.routes), default=1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{layout.width:.0f}" height="{layout.height:.0f}" '
        f'viewBox="0 0 {layout.width:.0f} {layout.height:.0f}" font-family="DejaVu Sans, Verdana, Arial, sans-serif">',
        "<defs>",
        # Arrowheads of one size whatever the arc's width (userSpaceOnUse), the tip on the box's side.
        *(f'<marker id="{name}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="11" markerHeight="11" '
          f'markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>'
          for name, color in (("arrow", _EDGE), ("back", _BACK))),
        "</defs>",
        '<rect width="100%" height="100%" fill="white"/>',
        _text(layout.title, FONT + 3, bold=True, inset=5),
    ]
    for route in layout.routes:
        color, marker = (_BACK, "back") if route.back else (_EDGE, "arrow")
        stroke = 1.2 + 3.8 * math.log1p(route.count) / math.log1p(top)
        parts.append(f'<path d="{_path(route.points)}" fill="none" stroke="{color}" stroke-opacity="0.8" '
                     f'stroke-width="{stroke:.1f}" marker-end="url(#{marker})"/>')
        parts.append(_text(route.label, FONT - 1, color=color, centred=True))
    for name, box in layout.nodes.items():
        fill = _PSEUDO if name in (START, END) else _FILL
        parts.append(f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.width:.1f}" height="{box.height:.1f}" '
                     f'rx="8" fill="{fill}" stroke="{_STROKE}" stroke-width="1.2"/>')
        parts.append(_text(box, FONT, bold=True, centred=True, inset=PAD))
    parts += [_text(layout.legend, FONT - 1, color=_MUTED), "</svg>"]
    return "\n".join(parts)


def _path(points: tuple[tuple[float, float], ...]) -> str:
    """Straight along slots and box sides; between columns a curve with level ends, which stays between
    the two columns (its control points do)."""
    (x, y), *rest = points
    d = [f"M{x:.1f},{y:.1f}"]
    for nx, ny in rest:
        if abs(ny - y) < 0.5:
            d.append(f"L{nx:.1f},{ny:.1f}")
        else:
            mid = (x + nx) / 2
            d.append(f"C{mid:.1f},{y:.1f} {mid:.1f},{ny:.1f} {nx:.1f},{ny:.1f}")
        x, y = nx, ny
    return " ".join(d)


def _text(box: Box, size: int, *, bold: bool = False, color: str = _TEXT, centred: bool = False,
          inset: float = 0.0) -> str:
    """The box's lines, the first one bold when asked, the others a size smaller."""
    x = box.x + box.width / 2 if centred else box.x
    anchor = "middle" if centred else "start"
    spans = []
    for i, line in enumerate(box.text):
        y = box.y + inset + LINE * (i + 1) - 5
        weight = ' font-weight="bold"' if bold and i == 0 else ""
        font = size if i == 0 else size - 1
        fill = color if i == 0 else _MUTED
        spans.append(f'<tspan x="{x:.1f}" y="{y:.1f}" font-size="{font}"{weight} fill="{fill}">'
                     f"{escape(line)}</tspan>")
    # data-box: the layout's box for this text, for a browser to compare with what it drew.
    where = f"{box.x:.1f} {box.y:.1f} {box.width:.1f} {box.height:.1f}"
    return f'<text text-anchor="{anchor}" data-box="{where}">{"".join(spans)}</text>'
