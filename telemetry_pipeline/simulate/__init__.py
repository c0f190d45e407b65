"""A loopback server that serves generated agent telemetry, for demos (`make run`) and the benchmark.

It speaks the `extract` and `agent_telemetry` contracts plus their session discovery (docs/SOURCES.md) on one
port, so both sources can point at `Simulator.url`; Agora's execution endpoints are served there too.
Nothing is precomputed: a session's events are generated on request from `(seed, session index)`, which
keeps a 10,000-session server as cheap to start as a 10-session one and makes every body byte-identical
for the same `(seed, sessions, events)`.

Session `i` belongs to `extract` when `i` is even (`sim-ex-000042`) and to `agent_telemetry` when odd
(`sim-at-000043`). Session end times grow strictly with `i`, so "ordered by (last_event_at, session_id)"
is index order and `since` is a binary search, never a scan.

The package by concern: `timelines` (when sessions end), `vocabulary` (agents, tools, models), `runs` (one
agent run's events), `agora` (executions and their timelines) and `agora_spans` (their span and event
rows, as the real backend serves them), `routes` (what each endpoint answers) and `server` (the routes on
`telemetry_pipeline.simulate.loopback`).
"""

from telemetry_pipeline.simulate.runs import SOURCES, generate_events, session_id, source_of
from telemetry_pipeline.simulate.server import Simulator
from telemetry_pipeline.simulate.timelines import SimulationConfig, Timeline

__all__ = ["SOURCES", "SimulationConfig", "Simulator", "Timeline", "generate_events", "session_id", "source_of"]
