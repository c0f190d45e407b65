"""The directly-follows process map as an SVG drawn at readable size, with our own layered layout, top down.

Graphviz `dot` would need a system package (no PyPI wheel ships a Linux x86_64 binary), so the layout is
the same idea done here, small: activities in rows by their longest distance from the start (arcs that
go back to an earlier activity are reversed for this), rows ordered by barycentre sweeps to keep arcs
short and uncrossed. Every arc gets a slot for its label in the row right after its source, and a
reserved slot in every row it passes, so text sits only in slots, arcs run through rows only along
their own slot, and between rows nothing but arcs is drawn: no label over a box, no arc through text.
`MapLayout.labels` are the boxes of every piece of text, for tests to check that. Top down, because a
process is long and the UI is narrow: the picture grows downwards and stays within `MAX_WIDTH` (the UI's
dialog is 1,240 px wide).

Only the busiest activities and relations are drawn (a map with every rare path is unreadable), and the
picture says how many; the tables beside it hold every figure. Every activity drawn has its busiest arrow in and
out. Repeats of an activity (a self-loop) are counted in its box (`↻ n`, explained in the legend) rather than drawn
as arcs. Failing activities are red, with their failed steps (`✗ n`); an arrow out of failed steps says how many.
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
MAX_WIDTH = 1200  # px: the picture is drawn for 100 % zoom; wider content is scaled to this
FONT = 15  # px, activity names; figures and arc labels one smaller
LINE = 20  # px per line of text
PAD = 10  # px inside a box
GAP = 16  # px between slots of a row
CHANNEL = 40  # px between rows, where only arcs run
MARGIN = 32
LABEL_OFFSET = 8  # px from an arc's line to its label, in the label's slot
PASS_WIDTH = 4  # px of a row an arc passes through
MAX_NAME = 34  # characters of an activity name in its box
# Glyph widths per font size, on the generous side of DejaVu Sans (what Debian's browsers use for sans-serif):
# (regular, bold) for wide, capital, narrow and other characters.
_WIDE, _CAPS, _NARROW = set("mwMW@%"), set("ABCDEFGHIJKLNOPQRSTUVXYZ&"), set("iljfrt.,:;'|!()[] ")
_EM = {"wide": (0.95, 1.05), "caps": (0.74, 0.8), "narrow": (0.36, 0.42), "other": (0.62, 0.7)}
_FILL, _PSEUDO, _STROKE, _EDGE, _BACK, _TEXT, _MUTED = (
    "#dbe9f6", "#eeeeee", "#4a6f94", "#4a6f94", "#b0653a", "#1b2b3a", "#55606b")
_FAIL_FILL, _FAIL = "#fbe1dd", "#b3261e"  # a failing activity, and what failed


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
    failures: int = 0  # transitions out of a failed step


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
    failing: frozenset[str] = frozenset()  # activities with failed steps

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
    failures: int = 0


@dataclass
class _Arc:
    source: str
    target: str
    count: int
    median_ms: float | None
    failures: int = 0
    back: bool = False


def _graph(edges: Sequence[Edge], activities: Sequence[ActivityFigures]) -> tuple[dict[str, _Node], list[_Arc]]:
    busiest = sorted(activities, key=lambda a: (-a.count, a.activity))[:MAX_ACTIVITIES]
    kept = {a.activity for a in busiest} | {START, END}
    figures = {a.activity: a for a in activities}
    drawn = [e for e in edges if e.source in kept and e.target in kept]
    loops = {e.source: e.count for e in drawn if e.source == e.target}
    between = sorted((e for e in drawn if e.source != e.target), key=lambda e: (-e.count, e.source, e.target))
    chosen = between[:MAX_EDGES]
    for side in ("source", "target"):  # every activity drawn keeps its busiest arrow out and in
        have = {getattr(e, side) for e in chosen}
        for e in between:
            if getattr(e, side) not in have:
                have.add(getattr(e, side))
                chosen.append(e)
    arcs = [_Arc(e.source, e.target, e.count, e.median_ms, e.failures) for e in dict.fromkeys(chosen)]
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
        failed = round(f.failure_rate * f.count)
        text: tuple[str, ...] = (_clip(name, MAX_NAME), f"{f.count:,}×{median}{repeats}")
        if failed:
            text += (f"✗ {failed:,} failed ({100 * f.failure_rate:.1f} %)",)
        nodes[name] = _Node(name, text, loops.get(name, 0), failed)
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


def _ranks(nodes: dict[str, _Node], arcs: list[_Arc], budget: float) -> dict[str, int]:
    """Rows: each activity in the first row below all its predecessors (over the acyclic graph) that has room
    for its box within `budget` px, so a wide layer wraps into the next row; the end alone in the last row."""
    forward = [(a.target, a.source) if a.back else (a.source, a.target) for a in arcs]
    longest = dict.fromkeys(nodes, 0)
    for _ in nodes:  # Bellman-Ford style relaxation: at most |nodes| passes on an acyclic graph
        changed = False
        for u, v in forward:
            if v != END and longest[v] < longest[u] + 1:
                longest[v], changed = longest[u] + 1, True
        if not changed:
            break
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    for u, v in forward:
        preds[v].append(u)
    rank: dict[str, int] = {}
    used: dict[int, float] = {}
    for name in sorted((n for n in nodes if n != END), key=lambda n: longest[n]):  # predecessors first
        width = _text_size(nodes[name].text)[0] + GAP
        row = max((rank[p] + 1 for p in preds[name] if p in rank), default=0)
        while used.get(row) and used[row] + width > budget:
            row += 1
        rank[name] = row
        used[row] = used.get(row, 0.0) + width
    if END in nodes:
        rank[END] = max(rank.values(), default=-1) + 1
    return rank


# -- the layout --------------------------------------------------------------------------------------------

@dataclass
class _Slot:
    """An item of a column: a node's box, an arc's label, or an arc passing through."""

    kind: str  # node | label | pass
    key: str | int  # node name, or arc index
    width: float
    height: float
    x: float = 0.0
    order: float = 0.0


def layout_process_map(edges: Sequence[Edge], activities: Sequence[ActivityFigures]) -> MapLayout:
    """Top down: the start on top, each rank a row of boxes, and between two rows of boxes a row of arc slots
    (labels, passages). A row is as wide as its slots side by side, so the picture stays narrow (`MAX_WIDTH`)
    however long the process, and grows downwards."""
    nodes, arcs = _graph(edges, activities)
    _mark_back_arcs(nodes, arcs)
    rank = _ranks(nodes, arcs, 0.7 * (MAX_WIDTH - 2 * MARGIN))  # the rest for arcs passing the row

    # Rows: boxes at even positions, arc labels and passages in between.
    rows: dict[int, list[_Slot]] = {}
    for name in nodes:
        w, h = _text_size(nodes[name].text)
        rows.setdefault(2 * rank[name], []).append(_Slot("node", name, w, h))
    chains: list[list[tuple[int, _Slot]]] = []
    labelled: dict[int, float] = {}  # row -> width of the labels in it
    for i, arc in enumerate(arcs):  # the busiest first
        a, b = (arc.target, arc.source) if arc.back else (arc.source, arc.target)
        between = range(2 * rank[a] + 1, 2 * rank[b], 2)  # the rows of slots it crosses
        lw, lh = _label_size(_arc_label(arc))
        at = min(between, key=lambda r: (labelled.get(r, 0.0), r))  # its label where labels are fewest
        labelled[at] = labelled.get(at, 0.0) + lw + LABEL_OFFSET + GAP
        chain: list[tuple[int, _Slot]] = []
        for row in range(2 * rank[a] + 1, 2 * rank[b]):
            # The line runs down the slot's left edge, its label beside it; a node row it passes, along a slot.
            slot = _Slot("label", i, lw + LABEL_OFFSET, lh) if row == at else _Slot("pass", i, PASS_WIDTH, 0.0)
            rows.setdefault(row, []).append(slot)
            chain.append((row, slot))
        chains.append(chain)

    _order(rows, arcs, chains)

    # Sizes and places: rows top to bottom, slots side by side and centred.
    heights = {r: max(max((s.height for s in slots), default=0.0), 12.0) for r, slots in rows.items()}
    widths = {r: sum(s.width for s in slots) + GAP * (len(slots) - 1) for r, slots in rows.items()}
    title = _title(len([n for n in nodes if n not in (START, END)]), len(activities), len(arcs))
    legend = _legend()
    content_w = max(widths.values(), default=0.0)
    width = max(content_w, title.width, legend.width) + 2 * MARGIN
    top: dict[int, float] = {}
    y = MARGIN + title.height + GAP * 2
    for r in sorted(rows):
        top[r] = y
        y += heights[r] + CHANNEL
    content_bottom = y - CHANNEL
    for r, slots in rows.items():
        x = (width - widths[r]) / 2
        for slot in slots:
            slot.x = x
            x += slot.width + GAP
    row_box = {r: (top[r], top[r] + heights[r]) for r in rows}

    boxes: dict[str, Box] = {}
    for r, slots in rows.items():
        for slot in slots:
            if slot.kind == "node":
                name = str(slot.key)
                boxes[name] = Box(slot.x, top[r] + (heights[r] - slot.height) / 2, slot.width, slot.height,
                                  nodes[name].text)

    routes = []
    for i, arc in enumerate(arcs):
        a, b = (arc.target, arc.source) if arc.back else (arc.source, arc.target)
        start, end = _port(boxes[a], "out", i, arcs, a, boxes), _port(boxes[b], "in", i, arcs, b, boxes)
        # Straight down to the bottom of the first box's row and up from the top of the last one's, inside the
        # boxes' own slots; through each row between along its own slot.
        points = [start, (start[0], row_box[2 * rank[a]][1])]
        label_box = None
        for row, slot in chains[i]:
            lo, hi = row_box[row]
            points += [(slot.x + 2, lo), (slot.x + 2, hi)]
            if slot.kind == "label":
                label_box = Box(slot.x + LABEL_OFFSET, lo + (hi - lo - slot.height) / 2, slot.width - LABEL_OFFSET,
                                slot.height, _arc_label(arc))
        points += [(end[0], row_box[2 * rank[b]][0]), end]
        assert label_box is not None, "every arc crosses at least one row of slots"
        if arc.back:
            points.reverse()
        routes.append(Route(arc.source, arc.target, arc.count, tuple(points), label_box, arc.back,
                            arc.failures))

    bottom = content_bottom + GAP * 2
    title = dataclasses.replace(title, x=MARGIN, y=MARGIN)
    legend = dataclasses.replace(legend, x=MARGIN, y=bottom)
    return MapLayout(width, bottom + legend.height + MARGIN, boxes, tuple(routes), title, legend,
                     len([n for n in nodes if n not in (START, END)]), len(activities),
                     frozenset(n for n, node in nodes.items() if node.failures))


def _order(columns: dict[int, list[_Slot]], arcs: list[_Arc], chains: list[list[tuple[int, _Slot]]]) -> None:
    """Order every row (`columns`: the layers) by the mean position of its neighbours (barycentre), sweeping
    down and up a few times; arcs weigh by their count so the busy paths run straightest."""
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
    """Where arc `index` leaves (`out`, the bottom) or enters (`in`, the top) `box`: the arcs of one side
    are spread along it in the order of the boxes at their other ends, so they do not bundle."""
    mine = []
    for i, arc in enumerate(arcs):
        a, b = (arc.target, arc.source) if arc.back else (arc.source, arc.target)
        if (a if side == "out" else b) == node:
            other = boxes.get(b if side == "out" else a)
            mine.append((other.x if other else 0.0, i))
    mine.sort()
    k = [i for _, i in mine].index(index)
    x = box.x + box.width * (k + 1) / (len(mine) + 1)
    return (x, box.bottom) if side == "out" else (x, box.y)


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


def _label_size(lines: tuple[str, ...]) -> tuple[float, float]:
    return max(text_width(t, FONT - 1) for t in lines) + 8, LINE * len(lines) + 6


def _title(shown: int, total: int, arcs: int) -> Box:
    lines = (f"{shown} of {total} activities shown (the busiest), {arcs} of their transitions",)
    return Box(0, 0, text_width(lines[0], FONT + 3, bold=True), LINE + 12, lines)


LEGEND = (
    "Box: activity · how often it happened (×) · its median duration · ↻ n = it directly repeated itself",
    "n times (a self-loop, not drawn as an arrow) · red, ✗ n = n of its steps failed",
    "Arrow: cases that went from one activity directly to the next · median time between their starts ·",
    "✗ n = n of them left a failed step · brown = back to an earlier activity",
)


def _legend() -> Box:
    width = max(text_width(t, FONT - 1) for t in LEGEND)
    return Box(0, 0, width, LINE * len(LEGEND) + 4, LEGEND)


def _arc_label(arc: _Arc) -> tuple[str, ...]:
    """Cases, then their median time and failures: two short lines keep a row of labels narrow."""
    second = " · ".join([*([_duration(arc.median_ms)] if arc.median_ms is not None else []),
                         *([f"✗ {arc.failures:,}"] if arc.failures else [])])
    return (f"{arc.count:,}", second) if second else (f"{arc.count:,}",)


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
    scale = min(1.0, MAX_WIDTH / layout.width)  # a row too wide for the UI: the whole picture smaller
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{layout.width * scale:.0f}" '
        f'height="{layout.height * scale:.0f}" viewBox="0 0 {layout.width:.0f} {layout.height:.0f}" '
        'font-family="DejaVu Sans, Verdana, Arial, sans-serif">',
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
        parts.append(_text(route.label, FONT - 1, color=_FAIL if route.failures else color))
    for name, box in layout.nodes.items():
        failing = name in layout.failing
        fill = _PSEUDO if name in (START, END) else _FAIL_FILL if failing else _FILL
        parts.append(f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.width:.1f}" height="{box.height:.1f}" '
                     f'rx="8" fill="{fill}" stroke="{_FAIL if failing else _STROKE}" '
                     f'stroke-width="{2.0 if failing else 1.2}"/>')
        parts.append(_text(box, FONT, bold=True, centred=True, inset=PAD, last=_FAIL if failing else None))
    parts += [_text(layout.legend, FONT - 1, color=_MUTED), "</svg>"]
    return "\n".join(parts)


def _path(points: tuple[tuple[float, float], ...]) -> str:
    """Straight down slots and out of boxes; between rows a curve with upright ends, which stays between
    the two rows (its control points do)."""
    (x, y), *rest = points
    d = [f"M{x:.1f},{y:.1f}"]
    for nx, ny in rest:
        if abs(nx - x) < 0.5:
            d.append(f"L{nx:.1f},{ny:.1f}")
        else:
            mid = (y + ny) / 2
            d.append(f"C{x:.1f},{mid:.1f} {nx:.1f},{mid:.1f} {nx:.1f},{ny:.1f}")
        x, y = nx, ny
    return " ".join(d)


def _text(box: Box, size: int, *, bold: bool = False, color: str = _TEXT, centred: bool = False,
          inset: float = 0.0, last: str | None = None) -> str:
    """The box's lines, the first one bold when asked, the others a size smaller (the last in `last`'s colour
    when given: what failed)."""
    x = box.x + box.width / 2 if centred else box.x
    anchor = "middle" if centred else "start"
    spans = []
    for i, line in enumerate(box.text):
        y = box.y + inset + LINE * (i + 1) - 5
        weight = ' font-weight="bold"' if bold and i == 0 else ""
        font = size if i == 0 else size - 1
        fill = color if i == 0 else last if last and i == len(box.text) - 1 and i > 1 else _MUTED
        spans.append(f'<tspan x="{x:.1f}" y="{y:.1f}" font-size="{font}"{weight} fill="{fill}">'
                     f"{escape(line)}</tspan>")
    # data-box: the layout's box for this text, for a browser to compare with what it drew.
    where = f"{box.x:.1f} {box.y:.1f} {box.width:.1f} {box.height:.1f}"
    return f'<text text-anchor="{anchor}" data-box="{where}">{"".join(spans)}</text>'
