"""Summarise an OTLP/JSON lines file: span tree per trace, and where each planted value shows up.

`python summarize.py ../pydantic_ai.jsonl [--attrs]` (stdlib only). Used to write PROVENANCE.md.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import scenario as sc

PLANTED = {
    "openai_key": sc.PLANTED_OPENAI_KEY,
    "aws_key_id": sc.PLANTED_AWS_ACCESS_KEY_ID,
    "aws_secret": sc.PLANTED_AWS_SECRET,
    "email": sc.PLANTED_EMAIL,
    "phone": sc.PLANTED_PHONE,
}


def value(v: dict[str, Any]) -> Any:
    if "arrayValue" in v:
        return [value(x) for x in v["arrayValue"].get("values", [])]
    if "kvlistValue" in v:
        return {kv["key"]: value(kv["value"]) for kv in v["kvlistValue"].get("values", [])}
    return next(iter(v.values()), None)


def attrs(obj: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: value(a["value"]) for a in obj.get("attributes", [])}


def spans_of(path: Path) -> list[tuple[int, dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(line number, resource attributes, scope, span) for every span."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs.get("scopeSpans", []):
                out.extend((number, attrs(rs.get("resource", {})), ss.get("scope", {}), s) for s in ss["spans"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file", type=Path)
    parser.add_argument("--attrs", action="store_true", help="print every span's attributes")
    parser.add_argument("--counts", action="store_true", help="print only the counts")
    args = parser.parse_args()
    rows = spans_of(args.file)
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    scopes: Counter[str] = Counter()
    for _, _, scope, span in rows:
        by_trace[span["traceId"]].append(span)
        scopes[f"{scope.get('name')} {scope.get('version', '')}"] += 1
    lines = len(args.file.read_text().splitlines())
    print(f"{args.file.name}: {lines} lines, {len(by_trace)} traces, {len(rows)} spans")
    if args.counts:
        return
    for scope, n in scopes.items():
        print(f"  scope {scope}: {n} spans")
    for trace_id, spans in by_trace.items():
        print(f"trace {trace_id} ({len(spans)} spans)")
        children: dict[str, list[dict[str, Any]]] = defaultdict(list)
        ids = {s["spanId"] for s in spans}
        for s in sorted(spans, key=lambda s: int(s["startTimeUnixNano"])):
            children[s.get("parentSpanId", "") if s.get("parentSpanId") in ids else ""].append(s)

        def show(parent: str, depth: int, children: dict[str, list[dict[str, Any]]] = children) -> None:
            for s in children.get(parent, []):
                status = s.get("status", {})
                ms = (int(s["endTimeUnixNano"]) - int(s["startTimeUnixNano"])) / 1e6
                events = [e["name"] for e in s.get("events", [])]
                print(f"{'  ' * (depth + 1)}{s['name']} kind={s.get('kind')} status={status.get('code', 0)}"
                      f"{' ' + repr(status.get('message'))[:80] if status.get('message') else ''}"
                      f" {ms:.0f}ms{' events=' + str(events) if events else ''}")
                if args.attrs:
                    for k, v in attrs(s).items():
                        print(f"{'  ' * (depth + 3)}{k} = {json.dumps(v, ensure_ascii=False)[:160]}")
                    for e in s.get("events", []):
                        for k, v in attrs(e).items():
                            print(f"{'  ' * (depth + 3)}[event {e['name']}] {k} = "
                                  f"{json.dumps(v, ensure_ascii=False)[:160]}")
                show(s["spanId"], depth + 1)

        show("", 0)
    print("planted values (span name: attribute keys):")
    for label, planted in PLANTED.items():
        found: dict[str, set[str]] = defaultdict(set)
        for _, _, _, s in rows:
            for k, v in attrs(s).items():
                if planted in json.dumps(v, ensure_ascii=False) or planted in str(v):
                    found[k].add(s["name"])
            for e in s.get("events", []):
                for k, v in attrs(e).items():
                    if planted in json.dumps(v, ensure_ascii=False) or planted in str(v):
                        found[f"event {e['name']}: {k}"].add(s["name"])
            if planted in s.get("status", {}).get("message", ""):
                found["status.message"].add(s["name"])
        print(f"  {label}:")
        for key, names in sorted(found.items()):
            print(f"    {key}  <- {sorted(names)}")


if __name__ == "__main__":
    main()
