"""The whole of `../shared/real-telemetry/` (telemetry other projects produced) through the public interface.

Every OTLP file and every Agora local export goes into one inbox; `telemetry-pipeline discover` and
`export --pending` take it to the outbox; aModels' Extract sample is served by a double of the Extract service
(plain-text errors, no listing endpoint, as the real one) and exported by key. The expectations below were
written from reading the files (their README gives provenance), not from the pipeline's output: per file,
the sessions, events, models with token sums, tools, errors, agents and workflows a person sees in it.

Where files overlap, the overlap is the point: `agora_console_demo_workflow_converted.json` and
`agora/exports/demo_traces.jsonl` hold the same Agora run (trace 15b08032…), as do
`agora_decorator_chat_notebook_console_converted.json` and `agora/exports/traces_1762768076.jsonl`
(ed6bb32c…), captured by different exporters: each pair is one session whose node runs and tokens count once.
The two Jaeger storage fixtures reuse trace 0…01 0…0 and span 0…02: one trace, and that span once.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import re
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from telemetry_pipeline import cli
from telemetry_pipeline.settings import HttpSettings, Settings, SourcesSettings, for_home
from telemetry_pipeline.simulate.loopback import LoopbackServer, Reply, Request, Router, raw_reply, text_reply
from telemetry_pipeline_tests.conftest import uploads_by_table
from telemetry_pipeline_tests.shared import shared_path

CORPUS = shared_path("real-telemetry")  # every test here reads it: missing, the module is skipped
EXTRACT_SAMPLE = CORPUS / "amodels" / "extract_agent_metrics_response_from_generate_test_extract_go.json"
EXTRACT_SESSION = "test-session-1762775872"
NO_PAYLOADS = "test-session-no-payloads"
# No AGENT_NAME: a case's agent is what the data says (its agent, else its service or workflow), else the host's name.
FALLBACK_AGENT = socket.gethostname()


# --------------------------------------------------------------------------------------------------
# aModels' Extract service, as its Go handler answers (services/extract/cmd/extract/main.go)


def extract_double(sessions: dict[str, bytes]) -> LoopbackServer:
    """`GET /signavio/agent-metrics/{session}`: the body for the session; errors in plain text, as Go's
    `http.Error` writes them (text/plain, a trailing newline); no listing endpoint (the real one has none)."""

    def error(message: str, status: int) -> Reply:
        return text_reply(message + "\n", status, {"X-Content-Type-Options": "nosniff"})

    def metrics(request: Request) -> Reply:
        session = request.params["session"]
        if session == "telemetry-down":
            return error("agent telemetry unavailable", 503)
        if session not in sessions:  # the handler asks the telemetry service, which does not know it
            return error("failed to fetch agent telemetry", 502)
        return raw_reply(sessions[session])

    router = Router(not_found=lambda request: error("404 page not found", 404))
    router.add("GET", "/signavio/agent-metrics/{session}", metrics)
    router.add("GET", "/signavio/agent-metrics", lambda request: error("session id is required", 400))
    for method in ("POST", "PUT", "DELETE"):
        router.add(method, "/signavio/agent-metrics/{session}", lambda request: error("method not allowed", 405))
    return LoopbackServer(router, name="extract-double")


def without_payloads(body: bytes) -> bytes:
    """The sample as the agent telemetry service sends events whose payload is empty: no `payload` key."""
    document = json.loads(body)
    for event in document["events"]:
        event.pop("payload")
    document["session_id"] = NO_PAYLOADS
    return json.dumps(document).encode()


# --------------------------------------------------------------------------------------------------
# One export of the whole corpus, shared by the tests of this module


@dataclass
class Exported:
    discovery: dict[str, Any]
    export: dict[str, Any]
    extract: dict[str, Any]
    extract_errors: dict[str, str]
    runs: dict[str, dict[str, str]]  # case id -> runs row
    events: dict[str, list[dict[str, str]]]  # case id -> its events rows


def corpus_inbox(inbox: Path) -> None:
    """Every OTLP file and every Agora local export of the corpus, as a user would drop them."""
    for folder in (CORPUS / "otlp", CORPUS / "agora" / "exports"):
        for path in sorted(folder.iterdir()):
            shutil.copy(path, inbox / path.name)


def run(settings: Settings, *argv: str) -> tuple[int, Any]:
    """The CLI in this process, its stdout read back (module-scoped fixtures have no capsys)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(argv), settings=settings)
    return code, json.loads(out.getvalue())


def settings_for(home: Path, inbox: Path, extract_url: str | None = None) -> Settings:
    return for_home(home, sources=SourcesSettings.of(
        otlp_dir=inbox, extract_url=extract_url,
        extract_list_path="",  # the real Extract service lists nothing: its sessions are given by key
        http=HttpSettings(max_retries=1, retry_wait_initial=0.01),
    ))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    home = tmp_path_factory.mktemp("real") / "home"
    inbox = home.parent / "inbox"
    inbox.mkdir()
    corpus_inbox(inbox)
    sample = EXTRACT_SAMPLE.read_bytes()
    double = extract_double({EXTRACT_SESSION: sample, NO_PAYLOADS: without_payloads(sample)})
    with double as extract:
        settings = settings_for(home, inbox, extract.url)
        code, discovery = run(settings, "discover")
        assert code == 0, discovery
        code, export = run(settings, "export", "--pending")
        assert code == 0, export
        code, extract_out = run(settings, "export", f"extract:{EXTRACT_SESSION}", f"extract:{NO_PAYLOADS}",
                                "extract:unknown-session", "extract:telemetry-down")
        assert code == 1, extract_out
        errors = {r["session_id"]: r["error"] for r in extract_out["results"] if r["status"] == "failed"}
    tables = uploads_by_table(home)
    events: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
    for row in tables["agent_telemetry_events"]:
        events[row["case_id"]].append(row)
    runs = {r["agent_run_id"]: r for r in tables["agent_telemetry_runs"]}
    yield Exported(discovery, export, extract_out, errors, runs, dict(events))


# --------------------------------------------------------------------------------------------------
# What a reader of each file expects


@dataclass(frozen=True)
class Session:
    """One case as a reader of the file sees it. `None` = not something the file says."""

    case: str
    events: int
    activities: dict[str, int] | None = None  # activity -> how many
    llm: dict[str, tuple[int, int | None, int | None]] = field(default_factory=dict)  # model -> calls, in, out
    tools: dict[str, int] = field(default_factory=dict)  # tool -> calls
    errors: set[str] = field(default_factory=set)  # error texts on events
    failed_events: int = 0
    agent: str | None = None
    workflow: str | None = None
    service: str | None = None
    status: str | None = None


def chat(model: str, calls: int, tokens_in: int | None, tokens_out: int | None) -> dict[str, tuple]:
    return {model: (calls, tokens_in, tokens_out)}


MISTRAL = "mistral/mistral-small-latest"
GPT4O_MINI = "gpt-4o-mini-2024-07-18"

ANY_AGENT_RUNS = {  # any-agent's recorded runs: the agent, its LLM calls (tokens in/out each) and tool calls
    "anyagent_openai_trace.json": ("4bedea77bb33b9c5f280371eae21ea97", [(269, 16), (359, 14), (392, 46)],
                                   ["get_current_time", "write_file"]),
    "anyagent_langchain_trace.json": ("572318454595034fe5076610d6400542",
                                      [(245, 16), (331, 14), (366, 33), (320, 62)], ["get_current_time", "write_file"]),
    "anyagent_google_trace.json": ("cdbd7b99cef221c28dd6d03c27d09b4c", [(672, 16), (770, 14), (809, 56)],
                                   ["get_current_time", "write_file", "final_output"]),
    "anyagent_llama_index_trace.json": ("89c41176422c506985d55a0d2d2091db",
                                        [(197, 36), (262, 33), (285, 94), (403, 32), (161, 60)],
                                        ["get_current_time", "write_file", "final_output"]),
    "anyagent_agno_smolagents_tinyagent_numeric.jsonl#1": ("1de0532b350588ff152b1edf6bf358b3",
                                                           [(395, 16), (483, 14), (518, 44)],
                                                           ["get_current_time", "write_file"]),
    "anyagent_agno_smolagents_tinyagent_numeric.jsonl#2": ("9135313a4e40fe254d48742d230ea040",
                                                           [(677, 16), (782, 14), (835, 57)],
                                                           ["get_current_time", "write_file", "final_answer"]),
    "anyagent_agno_smolagents_tinyagent_numeric.jsonl#3": ("9707d5fd6d4a546d47757044c6127e04",
                                                           [(328, 16), (414, 14), (449, 43), (178, 83)],
                                                           ["get_current_time", "write_file", "final_answer"]),
}


def any_agent(trace: str, calls: list[tuple[int, int]], tools: list[str]) -> Session:
    return Session(
        trace, events=1 + len(calls) + len(tools),
        activities={"Invoke agent any_agent": 1, "Chat": len(calls), **{f"Call tool {t}": 1 for t in tools}},
        llm=chat(MISTRAL, len(calls), sum(c[0] for c in calls), sum(c[1] for c in calls)),
        tools=dict.fromkeys(tools, 1), agent="any_agent", status="completed",
    )


def node_runs(*nodes: str) -> dict[str, int]:
    return dict(collections.Counter(nodes))


DEMO_RUN = node_runs("Start", *["ProcessData"] * 5, "AnalyzeResults", "Finish")
CHAT_RUN = node_runs("GetUserInput", "GenerateResponse", "GetUserInput", "GenerateResponse", "GetUserInput", "ChatExit")


def milvus_query(trace: str, embedding_tokens: int, chat_in: int, chat_out: int) -> Session:
    return Session(
        trace, events=6,
        activities={"node.QueryEmbedder": 1, "node.VectorSearcher": 1, "node.ResponseGenerator": 1,
                    "flow.RAGQuery": 1, "Embeddings": 1, "Chat": 1},
        llm={"text-embedding-3-small": (1, embedding_tokens, None), "gpt-3.5-turbo-0125": (1, chat_in, chat_out)},
        workflow="RAGQuery", status="completed",
    )


def chat_turns(case: str, tokens: list[tuple[int, int]]) -> Session:
    """chat.jsonl: ChatTurn flows, one ProcessMessage run each, its openai.chat inside."""
    return Session(case, events=len(tokens), activities={"ProcessMessage": len(tokens)},
                   llm=chat(GPT4O_MINI, len(tokens), sum(t[0] for t in tokens), sum(t[1] for t in tokens)),
                   workflow="ChatTurn", agent="ChatTurn")


def lone_chat(case: str, tokens: list[tuple[int, int]]) -> Session:
    """chat.jsonl: an openai.chat span alone in its trace, labelled with `custom.session_id`."""
    return Session(case, events=len(tokens), activities={"Chat": len(tokens)},
                   llm=chat(GPT4O_MINI, len(tokens), sum(t[0] for t in tokens), sum(t[1] for t in tokens)))


EXPECTED: dict[str, list[Session]] = {
    "otlp/otelproto_examples_trace.json": [Session(
        "5b8efff798038103d269b633813fc60c", 1, {"I'm a server span": 1}, agent="my.service", service="my.service",
        status="completed")],
    "otlp/langwatch_openinference_openai_b64ids.json": [Session(
        "my-test-session", 1, {"Chat": 1}, llm=chat("gpt-5", 1, None, None), agent=FALLBACK_AGENT,
        status="completed")],
    "otlp/langwatch_fastapi_exception_b64ids.json": [Session(
        "d52371f464efb743b46324544863b07b", 1, {"POST /": 1}, errors={"Exception: BROKEN"}, failed_events=1,
        agent="fastapi_sample_endpoint", status="failed")],
    "otlp/langwatch_strands_agents_v1_14_b64ids.json": [Session(
        # the agent span repeats its two chats' usage (297/187): counted once, on the chats
        "4152d1fb2c48ff87d75abb96470b13d3", 8,
        {"main": 1, "Invoke agent Strands Agents": 1, "execute_event_loop_cycle": 2, "Chat": 2,
         "Call tool get_user_location": 1, "get_user_location": 1},
        llm=chat("openai/gpt-5-mini", 2, 134 + 163, 84 + 103), tools={"get_user_location": 1},
        agent="Strands Agents", status="completed")],
    "otlp/langwatch_captured_requests_b64ids.jsonl": [
        Session("8615098c2c72e72330e800ef3ab1d8b8", 1, {"Chat": 1}, llm=chat("gpt-5", 1, None, None)),
        Session("98bb760abcb20b66d2303bfad83a2771", 2, {"POST /": 1, "POST / http send": 1}, status="completed"),
        Session("e1c989b84fa7c02edc9b12005fce37d3", 1, {"Workflow RunnableSequence.workflow": 1},
                workflow="RunnableSequence.workflow"),
        Session("755b1db22272958b92cb003f30058e74", 1, {"Chat": 1}, llm=chat("gpt-5", 1, 11, 13),
                agent="spring-ai-sample-service", service="spring-ai-sample-service"),
        Session("abcdabcdabcdabcdabcdabcdabcdabcd", 1, {"Invoke agent Strands Agents": 1}, agent="Strands Agents",
                service="strands-agents"),
    ],
    **{f"otlp/{name}": [any_agent(*spec)] for name, spec in ANY_AGENT_RUNS.items()},
    "otlp/agora_console_demo_workflow_converted.json": [Session(
        "15b080328df2b6d71a3d691366972260", 8, DEMO_RUN, workflow="DemoWorkflow", agent="demo_workflow",
        service="demo_workflow", status="completed")],
    "otlp/agora_milvus_rag_notebook_console_converted.json": [
        Session("22c7036c972470382284791931d2406f", 76,
                {"node.DocumentLoader": 1, "node.EmbeddingGenerator": 1, "node.MilvusStorer": 1,
                 "flow.RAGIndexing": 1, "Embeddings": 72},
                llm={"text-embedding-3-small": (72, 5688, None)}, workflow="RAGIndexing", status="completed"),
        milvus_query("f046ebb2a94883e19cd81d1a8c175843", 9, 557, 100),
        milvus_query("0a176d575a6e4283c266474ae45afb9c", 12, 483, 27),
        milvus_query("86a208395f7939fd524149718b7f13ec", 8, 487, 162),
        milvus_query("cda863cf25ce5433952357491dbe6606", 9, 433, 97),
    ],
    "otlp/agora_decorator_chat_notebook_console_converted.json": [Session(
        "ed6bb32cbc51a3c81617d4c7442c3f1f", 6, CHAT_RUN, llm=chat(GPT4O_MINI, 2, 9 + 34, 9 + 29),
        workflow="ChatFlow", agent="simple_chat", status="completed")],
    "otlp/jaeger_cassandra_otel_traces_01.json": [Session(
        "00000000000000010000000000000000", 2, {"test-general-conversion": 1, "test-general-conversion-4": 1},
        errors={"random-message"}, failed_events=2, status="failed")],
    "otlp/jaeger_memory_otel_traces_01.json": [Session(
        "00000000000000020000000000000000", 2, {"test-general-conversion-3": 1, "test-general-conversion-5": 1},
        failed_events=2, status="failed", agent="service-x")],
    "otlp/jaeger_integration_example_trace.json": [Session(
        "00000000000000000000000000000011", 5,
        {"example-operation-1": 2, "example-operation-2": 1, "example-operation-3": 1, "example-operation-4": 1},
        status="completed")],
    "otlp/rf_pabot_trace_snake_case.jsonl": [Session(
        "0d077f083a9f42acdc3c862ebd202521", 18, agent="long-running-suite", status="completed")],
    "agora/exports/traces_1762768076.jsonl": [
        Session("ed6bb32cbc51a3c81617d4c7442c3f1f", 6, CHAT_RUN, llm=chat(GPT4O_MINI, 2, 43, 38), workflow="ChatFlow"),
        Session("1c2873f980078d2c4fd95e84d6ce52c6", 6, CHAT_RUN, llm=chat(GPT4O_MINI, 2, 8 + 31, 9 + 150),
                workflow="ChatFlow", agent="ChatFlow", status="completed"),
    ],
    "agora/exports/chat.jsonl": [
        lone_chat("10ef0057", [(8, 9)]), lone_chat("58be17df", [(8, 9)]), lone_chat("188d95f7", [(8, 9), (26, 28)]),
        lone_chat("d1691689", [(8, 9)]), lone_chat("940a701b", [(8, 9)]),
        chat_turns("563c9ffe-11cb-4516-8b7e-53815306092b", [(8, 9), (28, 19)]),
        chat_turns("655114cd-86d6-450e-8bc3-c20f56ee3529", [(8, 9), (25, 25), (58, 31), (97, 50), (155, 36)]),
        chat_turns("32b07599-9e2f-42e0-a42f-ef50e68bb136", [(8, 9)]),
        *[chat_turns(trace, [tokens]) for trace, tokens in {
            "bf471ade93ff8ef4e05a4029dff290a4": (8, 9), "dbd83e48776ed31486884af3b5b33628": (8, 9),
            "9b71a10eece9a55a2ed033303efd6e06": (31, 14), "278d9b1d03cecc2ad9d11aad77033b67": (8, 9),
            "63f075e6fe5bec553506deed542dfae9": (29, 17), "cb792982921df206224851ce9dab0d26": (8, 9),
            "6fc37e8a5243e5561c712e13908862d4": (8, 9), "21bdf101432c18869fbd845e7b17ae5a": (29, 20),
            "40f71505fd948e4e7e8163101bdf6e28": (8, 9), "fe4da5614013daeadf6697dfdb479eae": (29, 25),
            "2e97416356c8f3c8d143854fe04571e5": (8, 9), "7c23551b49b14d864120b8a501495de2": (10, 202),
            "f57d1d22f70be7601506c5004577be81": (10, 72)}.items()],
        # a run that wrote its prep phase and nothing else: kept, incomplete, in no workflow
        Session("910793a53c74adfcfd3439b8aea3d946", 1, {"ProcessMessage": 1}),
    ],
}
# Files too big to list case by case: what a reader counts in them.
DEMO_TRACES = 29  # demo_traces.jsonl: 29 DemoWorkflow runs, each Start, ProcessData ×5, AnalyzeResults, Finish
ECOMMERCE = ("E-Commerce Order Processing", 3,
             node_runs("ValidateOrder", "CheckInventory", "ProcessPayment", "UpdateInventory", "SendConfirmation"))
RF_COLLECTOR = {"sessions": 168, "events": 1066, "failed_events": 57,
                "services": {"essvt-core", "essvt-test-runner", "essvt-ui"}}
UNREADABLE = {"test_output.txt"}  # a console log of ConsoleSpanExporter objects and log lines: not a trace file
ALL_SESSIONS = 251  # 249 in the inbox (overlaps counted once) + the Extract sample, with and without payloads


def actual(exported: Exported, case: str) -> dict[str, Any]:
    run_row = exported.runs[case]
    events = exported.events.get(case, [])
    llm: dict[str, list[int | None]] = {}
    for entry in json.loads(run_row["llm_calls"] or "[]"):
        calls, tin, tout = llm.setdefault(entry["model"], [0, None, None])
        add = lambda a, b: b if a is None else a if b is None else a + b  # noqa: E731
        llm[entry["model"]] = [calls + entry["call_count"], add(tin, entry["input_tokens"]),
                               add(tout, entry["output_tokens"])]
    return {
        "events": len(events),
        "activities": dict(collections.Counter(e["activity"] for e in events)),
        "llm": {m: tuple(v) for m, v in llm.items()},
        "tools": {t["tool_name"]: t["call_count"] for t in json.loads(run_row["tools_used"] or "[]")},
        "errors": {e["error"] for e in events if e["error"]},
        "failed_events": sum(e["status"] == "failed" for e in events),
        "agent": run_row["agent_name"], "workflow": run_row["workflow_name"] or None,
        "service": run_row["service_name"] or None, "status": run_row["status"],
    }


def expected_of(s: Session) -> dict[str, Any]:
    return {
        "events": s.events, "activities": s.activities, "llm": s.llm, "tools": s.tools, "errors": s.errors,
        "failed_events": s.failed_events, "agent": s.agent, "workflow": s.workflow, "service": s.service,
        "status": s.status,
    }


@pytest.mark.parametrize("file", sorted(EXPECTED))
def test_each_file_exports_what_its_reader_expects(exported: Exported, file: str) -> None:
    for session in EXPECTED[file]:
        assert session.case in exported.runs, f"{file}: no case {session.case}"
        got = actual(exported, session.case)
        want = expected_of(session)
        checked = {k: v for k, v in want.items() if v is not None}
        assert {k: got[k] for k in checked} == checked, f"{file}: case {session.case}"


def test_the_whole_corpus_exports_with_no_failed_session(exported: Exported) -> None:
    assert exported.export["failed_count"] == 0, exported.export
    assert exported.extract["exported_count"] == 2 and exported.extract["failed_count"] == 2
    assert len(exported.runs) == ALL_SESSIONS
    assert sorted(exported.discovery["new_keys"]) == sorted(f"otlp:{case}" for case in exported.runs
                                                            if case not in (EXTRACT_SESSION, NO_PAYLOADS))


def test_the_inbox_names_the_file_it_cannot_read(exported: Exported) -> None:
    unreadable = {u["file"]: u["error"] for u in exported.discovery["unreadable_files"]}
    assert set(unreadable) == UNREADABLE
    assert "not OTLP/JSON" in unreadable["test_output.txt"] and "Agora" in unreadable["test_output.txt"]


def test_big_files_add_up(exported: Exported) -> None:
    demo = [c for c, r in exported.runs.items() if r["workflow_name"] == "DemoWorkflow"]
    assert len(demo) == DEMO_TRACES
    for case in demo:
        assert actual(exported, case)["activities"] == DEMO_RUN, case
    workflow, count, runs = ECOMMERCE
    shop = [c for c, r in exported.runs.items() if r["workflow_name"] == workflow]
    assert len(shop) == count and all(actual(exported, c)["activities"] == runs for c in shop)
    essvt = [c for c, r in exported.runs.items() if r["service_name"] in RF_COLLECTOR["services"]]
    assert len(essvt) == RF_COLLECTOR["sessions"]
    assert sum(actual(exported, c)["events"] for c in essvt) == RF_COLLECTOR["events"]
    assert sum(actual(exported, c)["failed_events"] for c in essvt) == RF_COLLECTOR["failed_events"]


def test_agora_node_runs_keep_their_phases_and_retries(exported: Exported) -> None:
    runs = [e for e in exported.events["15b080328df2b6d71a3d691366972260"] if e["activity"] == "ProcessData"]
    first = json.loads(sorted(runs, key=lambda e: int(e["event_time"]))[0]["attributes"])
    # ProcessData's first run in test_output.txt: exec 501.14 ms, prep and post 0.0, 507.55 in all, no retry
    assert (first["prep_duration_ms"], first["exec_duration_ms"], first["post_duration_ms"]) == (0.0, 501.14, 0.0)
    assert first["total_duration_ms"] == 507.55 and first["retry_count"] == 0 and first["next_action"] == "process"


# Every activity outside the Java/Robot Framework collector file, by where a reader finds it. LLM calls are
# named by what they do (never the model, the library or the span's own `call_llm mistral/…` name), tools and
# agents by their names, Agora node runs by their node; other spans keep their (id-free) names.
ALPHABET = {
    # GenAI: every instrumentation's LLM calls, tools and agents
    "Chat", "Embeddings", "Invoke agent any_agent", "Invoke agent Strands Agents",
    *(f"Call tool {t}" for t in ("get_current_time", "write_file", "final_output", "final_answer",
                                 "get_user_location", "database_query", "data_transformation", "file_writer",
                                 "unknown")),
    "User prompt", "Change model", "Workflow RunnableSequence.workflow",
    "main", "execute_event_loop_cycle", "get_user_location",  # Strands' loop and LangWatch's own spans
    # Agora node runs (tracer spans and local exports)
    "Start", "ProcessData", "AnalyzeResults", "Finish", "GetUserInput", "GenerateResponse", "ChatExit",
    "ProcessMessage", "ValidateOrder", "CheckInventory", "ProcessPayment", "UpdateInventory", "SendConfirmation",
    # the Milvus RAG notebook's own flow/node spans
    "flow.RAGIndexing", "flow.RAGQuery", *(f"node.{n}" for n in (
        "DocumentLoader", "EmbeddingGenerator", "MilvusStorer", "QueryEmbedder", "VectorSearcher",
        "ResponseGenerator")),
    # plain OpenTelemetry spans: the proto example, FastAPI, Jaeger's fixtures, the pabot suite
    "I'm a server span", "POST /", "POST / http send", *(f"example-operation-{n}" for n in range(1, 5)),
    "test-general-conversion", "test-general-conversion-3", "test-general-conversion-4", "test-general-conversion-5",
    *(f"{what} {n} minute test" for what in ("Log Starting", "Log Finished") for n in (1, 2, 3)),
    *(f"{prefix}{n} Minute Test" for prefix in ("", "Test Starting: ", "Long Running Suite - ")
      for n in ("One", "Two", "Three")),
    "Sleep 60s", "Sleep 120s", "Sleep 180s",
}


def test_activity_alphabets_stay_small_and_free_of_ids(exported: Exported) -> None:
    ids = re.compile(r"[0-9a-f]{16,}|[0-9a-f]{8}-[0-9a-f]{4}-|chatcmpl-|call_[A-Za-z0-9]{8,}", re.IGNORECASE)
    every = {e["activity"] for rows in exported.events.values() for e in rows}
    assert not [a for a in every if ids.search(a)]
    rest = {e["activity"] for case, rows in exported.events.items() for e in rows
            if exported.runs[case]["service_name"] not in RF_COLLECTOR["services"]}
    assert rest == ALPHABET
    events = sum(len(rows) for rows in exported.events.values())
    assert len(every) <= 350 < events / 4  # the collector file's 278 span names are its whole alphabet


def test_extract_sample_as_the_older_exporter_recorded_it(exported: Exported) -> None:
    """aModels' exporter turned this same sample into `signavio_telemetry_record.json`: the case attributes it
    took from the `metrics` block, the start, the models and tokens, the tools and the status agree."""
    record = json.loads((CORPUS / "amodels" / "signavio_telemetry_record.json").read_text())
    got = exported.runs[EXTRACT_SESSION]
    for column in ("agent_run_id", "start_time", "status", "service_name", "workflow_name", "agent_type"):
        assert got[column] == str(record[column]), column
    ours = actual(exported, EXTRACT_SESSION)
    theirs = json.loads(record["llm_calls"])
    assert ours["llm"] == {c["model"]: (c["call_count"], c["input_tokens"], c["output_tokens"]) for c in theirs}
    assert set(ours["tools"]) == {t["tool_name"] for t in json.loads(record["tools_used"])}
    # The older exporter kept the error's kind alone ("Permission denied"); we add the source's details.
    assert ours["errors"] == {"Permission denied: Cannot write to /output/reports directory"}
    assert ours["failed_events"] == 1
    assert ours["activities"] == {"User prompt": 2, "Change model": 2, "Call tool database_query": 1,
                                  "Call tool data_transformation": 1, "Call tool file_writer": 1}
    schema = json.loads((CORPUS / "amodels" / "signavio_telemetry_schema.json").read_text())
    header = (CORPUS / "amodels" / "signavio_telemetry_export.csv").read_text().splitlines()[0].split(",")
    assert {f["name"] for f in schema["fields"]} <= set(got) and set(header) <= set(got)


def test_extract_events_without_payload_are_exported(exported: Exported) -> None:
    ours = actual(exported, NO_PAYLOADS)
    # the prompts and model changes stay; the tool calls, unnamed now, pair in order
    assert ours["activities"] == {"User prompt": 2, "Change model": 2, "Call tool unknown": 3}
    row = exported.runs[NO_PAYLOADS]
    assert (row["service_name"], row["workflow_name"], row["agent_type"]) == (
        "extract-service", "data-extraction-workflow", "data-extraction-agent")  # from the metrics block


def test_extract_plain_text_errors_are_clear(exported: Exported) -> None:
    unknown = exported.extract_errors["extract:unknown-session"]
    down = exported.extract_errors["extract:telemetry-down"]
    # 502 and 503 are retried, then the session fails naming the status and the service's own words
    assert "'unknown-session'" in unknown and "HTTP 502" in unknown and "failed to fetch agent telemetry" in unknown
    assert "'telemetry-down'" in down and "HTTP 503" in down and "agent telemetry unavailable" in down
    assert "\n" not in unknown + down


# --------------------------------------------------------------------------------------------------
# Two captures of one conversation, each exported alone


CAPTURES = {
    "OTLP (ConsoleSpanExporter, converted)": CORPUS / "otlp" / "agora_decorator_chat_notebook_console_converted.json",
    "Agora local export (JSONFileExporter)": CORPUS / "agora" / "exports" / "traces_1762768076.jsonl",
}


def test_captures_of_one_conversation_by_different_exporters_agree(tmp_path: Path) -> None:
    seen = {}
    for label, path in CAPTURES.items():
        home = tmp_path / re.sub(r"\W+", "_", label)
        inbox = home / "inbox"
        inbox.mkdir(parents=True)
        shutil.copy(path, inbox / path.name)
        code, out = run(settings_for(home, inbox), "export", "otlp:ed6bb32cbc51a3c81617d4c7442c3f1f")
        assert code == 0, out
        tables = uploads_by_table(home)
        (row,) = tables["agent_telemetry_runs"]
        events = sorted(tables["agent_telemetry_events"], key=lambda e: int(e["event_time"]))
        calls = [(c["model"], c["call_count"], c["input_tokens"], c["output_tokens"])
                 for c in json.loads(row["llm_calls"])]
        seen[label] = (calls, [e["activity"] for e in events],
                       [(e["model"], e["input_tokens"], e["output_tokens"]) for e in events])
    (first, second) = seen.values()
    assert first == second, seen
    assert first[0] == [(GPT4O_MINI, 2, 43, 38)]
