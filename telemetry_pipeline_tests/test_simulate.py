"""The simulator over real HTTP: determinism, discovery paging, the event contract, and scale."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from telemetry_pipeline.simulate import SimulationConfig, Simulator, generate_events

pytestmark = pytest.mark.fast  # `make test-fast`

CONFIG = SimulationConfig(sessions=40, events_per_session=30, seed=7)
KNOWN_TYPES = {
    "user_prompt", "agent_response", "tool_call_started", "tool_call_completed", "model_change",
    "agent_state_change", "agent_thought", "memory_write",
}
LISTING = {"extract": "/signavio/agent-metrics", "agent_telemetry": "/agent_metrics/sessions"}


def session_path(source: str, session_id: str) -> str:
    if source == "extract":
        return f"/signavio/agent-metrics/{session_id}"
    return f"/agent_metrics/{session_id}/events"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(CONFIG) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=10) as http:
        yield http


def list_all(client: httpx.Client, source: str, **params: Any) -> list[dict[str, str]]:
    """Follow `next_cursor` to the end, returning every listed session."""
    sessions: list[dict[str, str]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = client.get(LISTING[source], params=query).raise_for_status().json()
        sessions += page["sessions"]
        cursor = page["next_cursor"]
        if cursor is None:
            return sessions


def test_same_seed_gives_byte_identical_bodies(sim: Simulator, client: httpx.Client) -> None:
    paths = [LISTING["extract"] + "?limit=5", LISTING["agent_telemetry"] + "?limit=5"] + [
        session_path(source, sid) for source in LISTING for sid in sim.session_ids(source)[:3]
    ]
    with Simulator(CONFIG) as twin, Simulator(SimulationConfig(sessions=40, seed=8)) as other:
        for path in paths:
            assert client.get(path).content == httpx.get(twin.url + path).content
        differing = [p for p in paths[2:] if client.get(p).content != httpx.get(other.url + p).content]
        assert differing == paths[2:]


def test_prerendered_answers_are_the_generated_ones(sim: Simulator, client: httpx.Client) -> None:
    """The benchmark's `simulate --prerender` serves what generation serves, byte for byte, and the same
    404s for a session of the other source, an unknown one and a non-canonical spelling."""
    paths = [session_path(source, sid) for source in LISTING for sid in sim.session_ids(source)]
    wrong = [session_path("extract", sim.session_ids("agent_telemetry")[0]), session_path("extract", "sim-ex-999999"),
             session_path("agent_telemetry", "sim-at-1")]
    with Simulator(CONFIG, prerender=True) as rendered, httpx.Client(base_url=rendered.url, timeout=10) as http:
        assert len(paths) == CONFIG.sessions
        for path in paths:
            answer = http.get(path)
            assert answer.status_code == 200
            assert answer.content == client.get(path).content, path
        for path in wrong:
            assert http.get(path).status_code == client.get(path).status_code == 404, path


@pytest.mark.parametrize("source", ["extract", "agent_telemetry"])
def test_discovery_pages_cover_each_session_once_in_order(
    sim: Simulator, client: httpx.Client, source: str
) -> None:
    listed = list_all(client, source, limit=7)

    ids = [s["session_id"] for s in listed]
    assert ids == sim.session_ids(source)
    assert len(ids) == len(set(ids)) == CONFIG.sessions // 2
    keys = [(s["last_event_at"], s["session_id"]) for s in listed]
    assert keys == sorted(keys)
    # last_event_at is the session's real last event.
    last = client.get(session_path(source, ids[-1])).json()["events"][-1]["timestamp"]
    assert last == listed[-1]["last_event_at"]


@pytest.mark.parametrize("source", ["extract", "agent_telemetry"])
def test_since_is_inclusive_and_filters(client: httpx.Client, source: str) -> None:
    everything = list_all(client, source)
    since = everything[10]["last_event_at"]

    filtered = list_all(client, source, since=since, limit=4)

    assert filtered == everything[10:]
    offset_form = dt.datetime.fromisoformat(since).isoformat()  # "+00:00" instead of "Z"
    assert list_all(client, source, since=offset_form) == everything[10:]
    future = client.get(LISTING[source], params={"since": "2999-01-01T00:00:00Z"}).json()
    assert future == {"sessions": [], "next_cursor": None}


def test_limit_defaults_and_caps() -> None:
    with Simulator(SimulationConfig(sessions=2600, events_per_session=5)) as big:
        default = httpx.get(big.url + LISTING["extract"]).json()
        capped = httpx.get(big.url + LISTING["extract"], params={"limit": 5000}).json()
    assert len(default["sessions"]) == 100
    assert len(capped["sessions"]) == 1000 and capped["next_cursor"] is not None


@pytest.mark.parametrize("params", [{"limit": "abc"}, {"limit": 0}, {"since": "yesterday"}, {"cursor": "%%%"}])
def test_bad_listing_parameters_are_400(client: httpx.Client, params: dict[str, Any]) -> None:
    response = client.get(LISTING["extract"], params=params)
    assert response.status_code == 400
    assert "detail" in response.json()


@pytest.mark.parametrize(
    "path",
    [
        "/signavio/agent-metrics/sim-ex-999998",
        "/signavio/agent-metrics/sim-at-000001",  # the other service's session
        "/signavio/agent-metrics/sim-ex-2",  # not the canonical spelling
        "/agent_metrics/nope/events",
        "/agent_metrics/sim-at-000040/events",  # one past the population
    ],
)
def test_unknown_session_is_404(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json() == {"detail": "session not found"}


def test_session_ids_are_path_decoded(client: httpx.Client) -> None:
    response = client.get("/agent_metrics/sim%2Dat%2D000001/events")
    assert response.status_code == 200
    assert response.json()["session_id"] == "sim-at-000001"
    assert response.headers["content-type"] == "application/json"


def test_events_follow_the_contract(sim: Simulator, client: httpx.Client) -> None:
    for source in LISTING:
        for sid in sim.session_ids(source):
            body = client.get(session_path(source, sid)).json()
            assert body["session_id"] == sid
            assert len(body["events"]) == CONFIG.events_per_session
            assert body["events"][-1]["payload"]["response"]
            check_events(sid, body["events"])


def check_events(sid: str, events: list[dict[str, Any]]) -> None:
    times = [dt.datetime.fromisoformat(e["timestamp"]) for e in events]
    assert all(t.utcoffset() == dt.timedelta(0) for t in times)
    assert all(a < b for a, b in itertools.pairwise(times))
    assert {e["session_id"] for e in events} == {sid}
    assert {e["type"] for e in events} <= KNOWN_TYPES
    assert events[0]["type"] == "user_prompt"
    in_flight: dict[str, deque[dt.datetime]] = defaultdict(deque)
    for event, when in zip(events, times, strict=True):
        payload = event["payload"]
        if event["type"] == "tool_call_started":
            assert isinstance(payload["parameters"], dict)
            in_flight[payload["tool_name"]].append(when)
        elif event["type"] == "tool_call_completed":
            started = in_flight[payload["tool_name"]].popleft()  # IndexError = completed before started
            assert payload["latency_ms"] == (when - started) // dt.timedelta(milliseconds=1)
            assert isinstance(payload["success"], bool)
            assert payload["success"] or payload["error"]


def test_extract_metrics_agree_with_events(sim: Simulator, client: httpx.Client) -> None:
    for sid in sim.session_ids("extract"):
        body = client.get(session_path("extract", sid)).json()
        events, metrics = body["events"], body["metrics"]
        completed = [e["payload"] for e in events if e["type"] == "tool_call_completed"]
        failures = [p for p in completed if not p["success"]]
        prompts = [e["payload"] for e in events if e["type"] == "user_prompt"]
        assert metrics["tool_call_count"] == metrics["tool_call_started_count"] == len(completed)
        assert metrics["tool_error_count"] == len(failures)
        assert metrics["tool_success_count"] == len(completed) - len(failures)
        assert metrics["user_prompt_count"] == body["prompt_count"] == len(prompts)
        assert metrics["last_user_prompt"] == prompts[-1]["prompt"]
        assert body["service_name"] == prompts[0]["service_name"]


def test_population_has_variety(sim: Simulator, client: httpx.Client) -> None:
    bodies = [client.get(session_path("extract", sid)).json() for sid in sim.session_ids("extract")]
    payloads = [e["payload"] for b in bodies for e in b["events"]]
    assert len({b["workflow_name"] for b in bodies}) >= 3
    assert len({p["model"] for p in payloads if "model" in p}) >= 3
    assert any(p.get("parallel") for p in payloads)
    assert any(p.get("success") is False for p in payloads)


@pytest.mark.parametrize("events_per_session", [1, 2, 3, 5, 8, 13])
def test_event_count_is_exact_for_small_runs(events_per_session: int) -> None:
    config = SimulationConfig(sessions=30, events_per_session=events_per_session)
    for index in range(30):
        events = generate_events(config, index)
        assert len(events) == events_per_session
        check_events(events[0]["session_id"], events)


def test_ten_thousand_sessions_serve_the_last_one() -> None:
    config = SimulationConfig(sessions=10_000, events_per_session=100)
    with Simulator(config) as big, httpx.Client(base_url=big.url) as http:
        body = http.get("/agent_metrics/sim-at-009999/events").raise_for_status().json()
        newest = http.get(LISTING["agent_telemetry"], params={"since": body["events"][-1]["timestamp"]}).json()
        extract_total = len(list_all(http, "extract", limit=1000))
    assert len(body["events"]) == 100
    assert newest == {"sessions": [{"session_id": "sim-at-009999", "last_event_at": body["events"][-1]["timestamp"]}],
                      "next_cursor": None}
    assert extract_total == 5000


def test_live_sessions_appear_once_finished() -> None:
    # One new session every 50 ms.
    config = SimulationConfig(sessions=4, events_per_session=10, live_rate=1200)
    with Simulator(config) as live, httpx.Client(base_url=live.url) as http:
        time.sleep(0.3)
        sessions = list_all(http, "agent_telemetry")
        now = dt.datetime.now(dt.UTC)
    assert len(sessions) > 2
    assert all(dt.datetime.fromisoformat(s["last_event_at"]) <= now for s in sessions)


def test_stop_hangs_up_on_kept_alive_clients() -> None:
    simulator = Simulator(CONFIG).start()
    with httpx.Client(base_url=simulator.url) as http:
        assert http.get(LISTING["extract"]).status_code == 200
        simulator.stop()
        with pytest.raises(httpx.TransportError):
            http.get(LISTING["extract"])


# -- Agora (the same server; any bearer token is accepted)

AUTH = {"Authorization": "Bearer demo-token"}


def test_agora_requires_a_bearer_token(client: httpx.Client) -> None:
    assert client.get("/executions/").status_code == 401
    assert client.get("/executions/", headers=AUTH).status_code == 200


def test_agora_lists_newest_first_with_offset_paging(client: httpx.Client) -> None:
    pages = [client.get("/executions/", params={"limit": 3, "offset": o}, headers=AUTH).json() for o in range(0, 12, 3)]
    executions = [e for page in pages for e in page]

    assert len(executions) == len({e["id"] for e in executions}) == CONFIG.sessions // 4
    starts = [e["started_at"] for e in executions]
    assert starts == sorted(starts, reverse=True)
    running = [e for e in executions if e["status"] == "running"]
    assert running == executions[:2] and all(e["completed_at"] is None for e in running)
    assert {e["status"] for e in executions[2:]} <= {"success", "error", "timeout"}
    only_running = client.get("/executions/", params={"status": "running"}, headers=AUTH).json()
    assert only_running == running
    assert client.get("/executions/", params={"limit": 101}, headers=AUTH).status_code == 422


def test_agora_execution_details_agree(client: httpx.Client) -> None:
    executions = client.get("/executions/", headers=AUTH).json()
    for execution in executions:
        base = f"/executions/{execution['id']}"
        detail = client.get(f"{base}/timeline", headers=AUTH).json()
        spans = client.get(f"{base}/telemetry-spans", headers=AUTH).json()["spans"]
        events = client.get(f"{base}/telemetry-events", headers=AUTH).json()["events"]
        timeline = detail["timeline"]

        assert detail["execution"] == execution == client.get(base, headers=AUTH).json()
        assert [n["id"] for n in client.get(f"{base}/nodes", headers=AUTH).json()] == [n["id"] for n in timeline]
        assert timeline[0]["node_name"] == "plan" and timeline[0]["started_at"] == execution["started_at"]
        for before, after in itertools.pairwise(timeline):
            assert before["completed_at"] == after["started_at"]  # contiguous nodes
        span_ids = {s["span_id"] for s in spans}
        assert all(s["parent_span_id"] in span_ids for s in spans if s["parent_span_id"])
        assert len({s["trace_id"] for s in spans}) == 1
        assert all(e.keys() == EVENT_COLUMNS and e["execution_id"] == execution["id"] for e in events)
        assert all(s.keys() == SPAN_COLUMNS and s["execution_id"] == execution["id"] for s in spans)
        if execution["status"] == "running":
            assert timeline[-1]["status"] == "running" and timeline[-1]["completed_at"] is None
            assert not any(s["name"].endswith(".flow") for s in spans)
        else:
            assert timeline[-1]["completed_at"] == execution["completed_at"]
            roots = [s for s in spans if s["parent_span_id"] is None]
            assert len(roots) == 1 and roots[0]["name"].endswith(".flow")
            assert any(s["attributes"].get("gen_ai.request.model") for s in spans)
            assert len(events) == CONFIG.events_per_session


SPAN_COLUMNS = {"id", "execution_id", "node_execution_id", "span_id", "trace_id", "parent_span_id", "name", "kind",
                "status", "start_time", "end_time", "duration_ms", "attributes", "events", "tokens_used",
                "estimated_cost", "created_at"}
EVENT_COLUMNS = {"id", "execution_id", "node_execution_id", "event_type", "timestamp", "data", "created_at"}


def test_agora_answers_like_the_real_backend(client: httpx.Client) -> None:
    """SOURCES.md `agora`: the quirks of real rows, each present somewhere in the population."""
    finished = [e for e in client.get("/executions/", headers=AUTH).json() if e["status"] != "running"]
    offsets, kinds, statuses, names, exec_durations, prep_durations = set(), set(), set(), set(), set(), set()
    for execution in finished:
        base = f"/executions/{execution['id']}"
        timeline = client.get(f"{base}/timeline", headers=AUTH).json()["timeline"]
        spans = client.get(f"{base}/telemetry-spans", headers=AUTH).json()["spans"]
        (flow,) = [s for s in spans if s["name"].endswith(".flow")]
        skew = dt.datetime.fromisoformat(flow["start_time"]) - dt.datetime.fromisoformat(execution["started_at"])
        assert skew % dt.timedelta(minutes=15) == dt.timedelta(0), "a whole number of quarter hours"
        offsets.add(skew)
        kinds |= {s["kind"] for s in spans}
        statuses |= {s["status"] for s in spans if s["name"].endswith((".node", ".prep", ".post"))}
        statuses |= {n["status"] for n in timeline}
        names |= {n["node_name"] for n in timeline}
        exec_durations |= {type(n["exec_duration_ms"]) for n in timeline}
        prep_durations |= {n["prep_duration_ms"] is None for n in timeline}
        assert all(s["parent_span_id"] for s in spans if s["kind"].endswith("CLIENT")), "LLM spans sit under .exec"
    assert len(offsets) >= 3 and dt.timedelta(0) in offsets and any(o < dt.timedelta(0) for o in offsets)
    assert {"SpanKind.INTERNAL", "SpanKind.CLIENT", "INTERNAL", "CLIENT"} <= kinds
    assert "UNSET" in statuses and "skipped" in statuses and "Unknown" in names
    assert float in exec_durations and prep_durations == {True, False}
    assert "timeout" in {e["status"] for e in finished}


def test_agora_unknown_execution_is_404_and_a_malformed_id_422(client: httpx.Client) -> None:
    response = client.get("/executions/00000000-0000-0000-0000-000000000000/timeline", headers=AUTH)
    assert (response.status_code, response.json()) == (404, {"detail": "Execution not found"})
    malformed = client.get("/executions/not-a-uuid/telemetry-spans", headers=AUTH)
    assert malformed.status_code == 422 and malformed.json()["detail"][0]["type"] == "uuid_parsing"


def test_serve_forever_blocks_until_stopped() -> None:
    simulator = Simulator(CONFIG)
    server = threading.Thread(target=simulator.serve_forever)
    server.start()
    assert httpx.get(simulator.url + LISTING["extract"]).status_code == 200
    simulator.stop()
    server.join(timeout=5)
    assert not server.is_alive()
