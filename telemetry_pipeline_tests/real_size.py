"""Real-size OTLP traces (issue 33): the real multi-agent traces the frameworks emitted (`traces/`, PROVENANCE.md),
each session replicated with new trace, span and conversation ids and shifted times, as Collector-style JSON Lines
files (one `ExportTraceServiceRequest` a line). Used by `bench/otlp.py` and `test_real_size.py`."""

from __future__ import annotations

import random
import re
from pathlib import Path

TRACES = Path(__file__).resolve().parent / "traces"
LANGGRAPH = "langgraph_openllmetry.jsonl"  # a LangGraph supervisor under OpenLLMetry: ~610 KB of OTLP JSON a session
_IDS = re.compile(rb'"(?:traceId|spanId|parentSpanId)":"([0-9a-f]+)"')
_NANOS = re.compile(rb'"(start|end)TimeUnixNano":"(\d+)"')
_CONVERSATION = re.compile(rb"(session-\d{4})")


def replicate(sessions: int, files: int, inbox: Path, template: str = LANGGRAPH, seed: int = 1) -> int:
    """`sessions` copies of the template's sessions (its lines, in turn) with new ids and times, a minute apart and
    ending where the template's did, in `files` files of `inbox`; the bytes written."""
    lines = (TRACES / template).read_bytes().splitlines()
    rng = random.Random(seed)
    inbox.mkdir(parents=True, exist_ok=True)
    outs = [(inbox / f"traces-{n:03d}.jsonl").open("wb") for n in range(files)]
    written = 0
    try:
        for n in range(sessions):
            line = lines[n % len(lines)]
            ids = {old: rng.getrandbits(len(old) * 4).to_bytes(len(old) // 2, "big").hex().encode()
                   for old in set(_IDS.findall(line))}
            line = _IDS.sub(lambda m, ids=ids: m.group(0).replace(m.group(1), ids[m.group(1)]), line)
            shift = -(sessions - n) * 60_000_000_000
            line = _NANOS.sub(lambda m, shift=shift: b'"%sTimeUnixNano":"%d"' % (m.group(1), int(m.group(2)) + shift),
                              line)
            line = _CONVERSATION.sub(b"session-r%07d" % n, line)  # the conversation id: a new session
            outs[n % files].write(line.rstrip(b"\n") + b"\n")
            written += len(line) + 1
    finally:
        for out in outs:
            out.close()
    return written
