"""Nothing sensitive leaves unless asked (issue 29): `EXPORT_CONTENT` = none | redacted | full governs the text that
people and models wrote; secrets never leave.

The end-to-end test plants secrets, e-mail addresses and phone numbers in prompts, tool arguments, tool results,
error messages (with a stack trace) and plain attributes of every source: the Extract and agent telemetry
services, Agora, and the inbox, with copies of real captures from `../shared/real-telemetry/` and the traces five
unmodified frameworks emitted (`traces/`, which carry the same planted values in the places each framework puts
them). It exports them through the CLI, materialises the overview, and then reads every file under the home but the
warehouse (where content lives), byte for byte, plus what the commands logged.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest

from telemetry_pipeline.canonical.content import ContentPolicy, Governance, is_content_key
from telemetry_pipeline.canonical.redaction import PERSONAL, SECRETS, candidates, redact
from telemetry_pipeline.definitions import build_definitions
from telemetry_pipeline.names import PROCESS_OVERVIEW
from telemetry_pipeline.settings import Secret
from telemetry_pipeline_tests.conftest import Pipeline, uploads_by_table
from telemetry_pipeline_tests.shared import shared_path
from telemetry_pipeline_tests.source_double import SourceDouble, agent_event
from telemetry_pipeline_tests.test_agora_otlp import TOKEN, AgoraDouble, event, execution, node, span

TRACES = Path(__file__).parent / "traces"

# The planted values: those of the framework traces (traces/PROVENANCE.md), and a few more kinds.
OPENAI = "sk-proj-T3stK3yPl4nt3dF0rRedact10nCheck0123456789abcd"
AWS_ID, AWS_SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
GITHUB = "ghp_Pl4nt3dG1tHubT0kenF0rTheTestsOnly0123"
BEARER = "eyJhbGciOiJIUzI1NiJ9Pl4nt3dBearer"
URL_PASSWORD = "Sup3rS3cretDbPassw0rd"
PRIVATE_KEY_BODY = "MIIEpAIBAAKCAQEA3Pl4nt3dPr1vateKeyB0dy"
EMAIL, PHONE = "jane.doe@example.com", "+49 30 12345678"
SECRETS_PLANTED = {"openai": OPENAI, "aws id": AWS_ID, "aws secret": AWS_SECRET, "github": GITHUB, "bearer": BEARER,
                   "url password": URL_PASSWORD, "private key": PRIVATE_KEY_BODY}
PERSONAL_PLANTED = {"email": EMAIL, "phone": "30 12345678"}
TEXT = (f"Hi, I'm {EMAIL} ({PHONE}). I was double charged. My dev pasted our key {OPENAI} and AWS {AWS_ID} / "
        f"{AWS_SECRET} and {GITHUB} into the ticket, and the call used Authorization: Bearer {BEARER} against "
        f"postgresql://svc:{URL_PASSWORD}@db.internal/billing. -----BEGIN RSA PRIVATE KEY-----\n{PRIVATE_KEY_BODY}\n"
        "-----END RSA PRIVATE KEY-----")
STACK = f'Traceback (most recent call last):\n  File "refund.py", line 7, in refund\nKeyError: {OPENAI} ({EMAIL})'


# -- the patterns ---------------------------------------------------------------------------------------------------

SAMPLES = {  # kind -> a value of that kind, as its vendor issues them (fake)
    "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
                   "-----END OPENSSH PRIVATE KEY-----",
    "anthropic_key": "sk-ant-api03-Xq9Pl4nt3dAnthr0picKey0123456789abcdefABCDEF",
    "openai_key": OPENAI,
    "aws_access_key": AWS_ID,
    "aws_secret_key": f"aws_secret_access_key = {AWS_SECRET}",
    "github_token": GITHUB,
    "gitlab_token": "glpat-Pl4nt3dGitLabT0ken012",
    "google_api_key": "AIzaSyPl4nt3dG00gleApiKey0123456789abcd",
    "huggingface_token": "hf_PlantedHuggingFaceTokenForTheTests",
    "slack_token": "xoxb-123456789012-Pl4nt3dSlackT0ken",
    "slack_webhook": "https://hooks.slack.com/services/T0000/B0000/Pl4nt3dW3bh00k",
    "stripe_key": "sk_live_Pl4nt3dStr1peKey012345678",
    "sendgrid_key": "SG.Pl4nt3dSendGr1dKeyAbcd.Pl4nt3dSendGr1dKeySecretPart0123456789abcde",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "bearer_token": f"Authorization: Bearer {BEARER}",
    "url_password": f"https://svc:{URL_PASSWORD}@db.internal/x",
    "password": 'config {"api_key": "Pl4nt3dK3yw0rdV4lue"}',
    "email": EMAIL,
    "phone": PHONE,
    "card": "pay with 4111 1111 1111 1111 today",
    "iban": "IBAN DE89 3704 0044 0532 0130 00",
}
NOT_SECRETS = [  # ids, times and numbers that look like something else: left alone
    "0000000b-5158-4000-8000-000000030000", "4bf92f3577b34da6a3ce929d0e0e4736", "1765000000000000000",
    "card 4111 1111 1111 1112 fails Luhn", "DE89 3704 0044 0532 0130 01 fails its checksum",
    "gen_ai.usage.input_tokens", "sk-learn", "tokens: 1234", "Call tool lookup_account", "2025-03-01T09:00:00Z",
]


@pytest.mark.fast
@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_each_kind_is_replaced_by_its_placeholder_and_found_by_the_sql_prefilter(kind: str):
    sample = SAMPLES[kind]
    assert f"[REDACTED:{kind}]" in redact(sample)
    personal = kind in {p.kind for p in PERSONAL}
    assert (redact(sample, personal=False) == sample) is personal, "personal data is replaced only when asked"
    with duckdb.connect() as con:  # RE2 finds every row Python would change (the rows `govern` reads)
        assert con.execute("SELECT regexp_matches($s, $p)", {"s": sample, "p": candidates(True)}).fetchone() == (True,)


@pytest.mark.fast
@pytest.mark.parametrize("value", NOT_SECRETS)
def test_ids_times_and_failed_checksums_are_left_alone(value: str):
    assert redact(value) == value


@pytest.mark.fast
def test_our_secret_samples_are_what_detect_secrets_recognises():
    """detect-secrets is the well-kept detector; at run time ours replaces it (docs/MINING.md, "What leaves your
    machine": its per-event cost, the key formats it misses). Where it has a plugin, it flags the same sample."""
    from detect_secrets.core.scan import scan_line
    from detect_secrets.settings import default_settings

    known = {"private_key", "aws_access_key", "github_token", "gitlab_token", "slack_token", "slack_webhook",
             "stripe_key", "sendgrid_key", "jwt", "url_password"}
    with default_settings():
        for kind in sorted(known):
            assert list(scan_line(SAMPLES[kind])), f"detect-secrets does not flag our {kind} sample"
    assert {p.kind for p in SECRETS} >= known


# -- the policy, on one value ---------------------------------------------------------------------------------------


MESSAGES = json.dumps([{"role": "system", "content": "You are a support agent."},
                       {"role": "user", "parts": [{"type": "text", "content": TEXT}]}])


@pytest.mark.fast
def test_none_keeps_the_structure_of_content_and_says_how_long_it_was():
    governed = Governance(ContentPolicy.NONE).attributes({
        "gen_ai.input.messages": MESSAGES,
        "parameters": {"customer_email": EMAIL, "amount": 42},
        "llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": TEXT,
        "gen_ai.request.model": "gpt-4o", "enduser.email": EMAIL,
        "langgraph.state": "a long note that no table names " * 10,
        "otel.events": [{"name": "exception", "attributes": {
            "exception.type": "PaymentGatewayError", "exception.message": f"refund declined ({EMAIL})",
            "exception.stacktrace": STACK}}],
    })
    messages = json.loads(governed["gen_ai.input.messages"])
    assert messages == [{"role": "system", "content": "[omitted: 24 chars]"},
                        {"role": "user", "parts": [{"type": "text", "content": f"[omitted: {len(TEXT)} chars]"}]}]
    assert governed["parameters"] == {"customer_email": "[omitted: 20 chars]", "amount": 42}, "the arguments' names"
    assert governed["llm.input_messages.0.message.role"] == "user"
    assert governed["llm.input_messages.0.message.content"] == f"[omitted: {len(TEXT)} chars]"
    assert governed["gen_ai.request.model"] == "gpt-4o"
    assert governed["enduser.email"] == "[REDACTED:email]", "personal data outside content too"
    assert governed["langgraph.state"].startswith("[omitted: "), "free text under a key no table names"
    [exception] = governed["otel.events"]
    assert exception["attributes"] == {"exception.type": "PaymentGatewayError",
                                       "exception.message": "refund declined ([REDACTED:email])",
                                       "exception.stacktrace": "[stack trace omitted: 3 lines]"}


@pytest.mark.fast
def test_redacted_and_full_keep_the_text_with_what_each_promises():
    value = {"gen_ai.input.messages": MESSAGES, "input.value": TEXT}
    redacted = Governance(ContentPolicy.REDACTED).attributes(value)
    full = Governance(ContentPolicy.FULL).attributes(value)
    for governed in (redacted, full):
        text = json.dumps(governed)
        assert not any(secret in text for secret in SECRETS_PLANTED.values())
        assert "[REDACTED:openai_key]" in text and "I was double charged" in text
    assert EMAIL not in json.dumps(redacted) and "[REDACTED:email]" in redacted["input.value"]
    assert EMAIL in full["input.value"] and PHONE in full["input.value"]


@pytest.mark.fast
def test_errors_keep_their_message_and_lose_their_stack_trace_under_none():
    none, full = Governance(ContentPolicy.NONE), Governance(ContentPolicy.FULL)
    error = f"PaymentGatewayError: refund declined ({EMAIL})\n" + STACK
    assert none.message(error) == (
        "PaymentGatewayError: refund declined ([REDACTED:email]) [stack trace omitted: 3 lines]")
    assert full.message(error) == error.replace(OPENAI, "[REDACTED:openai_key]")


@pytest.mark.fast
def test_every_value_and_every_cell_is_bounded_and_says_where_it_was_cut():
    attributes = json.dumps({"a": "x" * 500, "b": "y" * 290, "c": "z" * 200, "d": 1})
    roomy = json.loads(Governance(ContentPolicy.FULL, value_max_chars=300).attributes_json(attributes) or "")
    assert roomy == {"a": "x" * 300 + "…[cut: 200 chars]", "b": "y" * 290, "c": "z" * 200, "d": 1}
    tight = Governance(ContentPolicy.FULL, attributes_max_chars=600, value_max_chars=300).attributes_json(attributes)
    assert tight is not None and len(tight) <= 600
    assert json.loads(tight) == {"a": "[cut: 319 chars]", "b": "y" * 290, "c": "z" * 200, "d": 1}, "largest first"


@pytest.mark.fast
def test_content_keys_of_every_convention_we_read():
    for key in ("gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
                "gen_ai.prompt.0.content", "gen_ai.completion.1.content", "gen_ai.tool.call.arguments",
                "gen_ai.tool.call.result", "input.value", "output.value", "llm.input_messages.3.message.content",
                "tool.parameters",
                "retrieval.documents.0.document.content", "traceloop.entity.input", "traceloop.entity.output",
                "ai.prompt", "ai.prompt.messages", "ai.response.text", "ai.toolCall.args", "ai.toolCall.result",
                "pydantic_ai.all_messages", "final_result", "prompt", "parameters", "exec_result", "input_data"):
        assert is_content_key(key), key
    for key in ("gen_ai.prompt.0.role", "llm.input_messages.3.message.role", "gen_ai.request.model",
                "gen_ai.usage.input_tokens", "gen_ai.tool.name", "exception.message", "tool_name", "session.id"):
        assert not is_content_key(key), key


# -- end to end, every source, every mode ---------------------------------------------------------------------------


def plant_session_api(double: SourceDouble, source: str, session_id: str) -> str:
    t = [f"2025-01-15T10:30:{s:02d}Z" for s in range(10)]
    body: dict[str, Any] = {"session_id": session_id, "events": [
        agent_event(t[0], "user_prompt", prompt=TEXT, tokens=40, customer_phone=PHONE),
        agent_event(t[1], "model_change", model="gpt-4o", input_tokens=100, output_tokens=20,
                    api_base=f"https://svc:{URL_PASSWORD}@llm.internal/v1"),
        agent_event(t[2], "agent_thought", thought=TEXT),
        agent_event(t[3], "tool_call_started", tool_name="lookup_account",
                    parameters={"customer_email": EMAIL, "note": TEXT}),
        agent_event(t[4], "tool_call_completed", tool_name="lookup_account", success=True, latency_ms=50,
                    result={"email": EMAIL, "phone": PHONE}, response=TEXT),
        agent_event(t[5], "tool_call_started", tool_name="refund_payment", parameters={"account": "ACC-1042"}),
        agent_event(t[6], "tool_call_completed", tool_name="refund_payment", success=False, latency_ms=120,
                    error=f"PaymentGatewayError: refund declined (contact {EMAIL}, key {OPENAI})",
                    error_details=STACK),
    ]}
    if source == "extract":
        body["metrics"] = {"last_user_prompt": TEXT, "tool_call_count": 2}
    return double.add(source, session_id, body)


def plant_agora(double: AgoraDouble) -> str:
    record = execution("ex-planted", "error", 0, 10, error=f"RefundError: declined for {EMAIL} ({OPENAI})")
    record["input_data"], record["output_data"] = {"prompt": TEXT}, {"response": TEXT}
    return double.add(
        record,
        timeline=[node("ex-planted", 0, "refund", "tool", "error", 1, 9, error=f"declined for {EMAIL}")],
        spans=[span("refund.node", 1, 9), span("refund.exec", 1.1, 8.9, **{
            "gen_ai.tool.name": "refund_payment", "gen_ai.prompt.0.content": TEXT, "gen_ai.prompt.0.role": "user",
            "customer.phone": PHONE})],
        events=[event("user_prompt", 0, {"prompt": TEXT}),
                event("tool_call_completed", 8.9, {"tool_name": "refund_payment", "success": False,
                                                   "error": f"declined for {EMAIL}", "error_details": STACK})],
    )


def plant_otlp(inbox: Path) -> None:
    """Our five framework traces as they are (planted by their prompts), and two real captures with the values
    planted in every string attribute, a plain attribute and an exception."""
    for trace in sorted(TRACES.glob("*.jsonl")):
        shutil.copy(trace, inbox / trace.name)
    for name in ("anyagent_openai_trace.json", "langwatch_openinference_openai_b64ids.json"):
        doc = json.loads(shared_path("real-telemetry", "otlp", name).read_text())
        spans = [s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
        for s in spans:
            for attribute in s.get("attributes", []):
                if "stringValue" in attribute["value"] and len(attribute["value"]["stringValue"]) > 20:
                    attribute["value"]["stringValue"] += " " + TEXT
        spans[0].setdefault("attributes", []).append({"key": "enduser.email", "value": {"stringValue": EMAIL}})
        spans[-1]["status"] = {"code": 2, "message": f"refund declined for {EMAIL}"}
        spans[-1]["events"] = [{"name": "exception", "timeUnixNano": spans[-1]["endTimeUnixNano"], "attributes": [
            {"key": "exception.message", "value": {"stringValue": f"declined for {EMAIL} ({OPENAI})"}},
            {"key": "exception.stacktrace", "value": {"stringValue": STACK}}]}]
        (inbox / f"planted_{name}").write_text(json.dumps(doc))


def leaves(home: Path, logged: str) -> dict[str, bytes]:
    """Every file under the home but the warehouse's, and what the commands logged."""
    files = {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*"))
             if p.is_file() and not p.name.startswith("warehouse")}  # its files: the DuckDB, claims, raw ones
    return {**files, "<logs>": logged.encode()}


@pytest.mark.parametrize("policy", list(ContentPolicy))
def test_planted_secrets_never_leave_and_personal_data_only_when_asked(
    pipeline: Pipeline, source_double: SourceDouble, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    policy: ContentPolicy,
):
    inbox = tmp_path / "inbox"  # the input, beside the home: what the user dropped there is theirs
    inbox.mkdir()
    plant_otlp(inbox)
    keys = [plant_session_api(source_double, "extract", "ex-planted"),
            plant_session_api(source_double, "agent_telemetry", "at-planted")]
    with AgoraDouble() as agora:
        keys.append(plant_agora(agora))
        pipeline.configure(content=Governance(policy), sources={
            "agora_url": agora.url, "agora_token": Secret(TOKEN), "otlp_dir": str(inbox),
            "extract_list_path": "", "agent_telemetry_list_path": ""})
        code, found = pipeline.cli("discover")
        assert code == 0 and len(found["new_keys"]) == 13, found  # 10 framework sessions, 2 captures, 1 Agora
        code, out = pipeline.cli("export", "--pending")
        code, more = pipeline.cli("export", *keys)
    assert out["failed_count"] == 0 and more["failed_count"] == 0, (out, more)
    definitions = build_definitions(pipeline.settings)
    with dg.DagsterInstance.from_config(str(pipeline.settings.dagster_home)) as instance:
        assert dg.materialize([definitions.get_assets_def(PROCESS_OVERVIEW)], instance=instance,
                              resources=definitions.resources).success
    logged = capsys.readouterr().err

    outputs = leaves(home, logged)
    assert any(name.startswith("outbox/") for name in outputs) and any("dagster_home" in n for n in outputs)
    for label, value in SECRETS_PLANTED.items():
        leaked = [name for name, data in outputs.items() if value.encode() in data]
        assert not leaked, f"the planted {label} left in {leaked}"
    for label, value in PERSONAL_PLANTED.items():
        leaked = [name for name, data in outputs.items() if value.encode() in data]
        if policy is ContentPolicy.FULL:
            assert any(name.startswith("outbox/") for name in leaked), f"full: the {label} is exported"
        else:
            assert not leaked, f"{policy}: the planted {label} left in {leaked}"

    events = uploads_by_table(home)["agent_telemetry_events"]
    attributes = "\n".join(e["attributes"] for e in events)
    errors = "\n".join(e["error"] for e in events if e["error"])
    assert "[REDACTED:openai_key]" in attributes + errors, "a secret is replaced where it was, saying what it was"
    assert "[REDACTED:email]" in errors or policy is ContentPolicy.FULL, "an error message stays, governed"
    if policy is ContentPolicy.NONE:  # content is omitted; an error that quotes it keeps the quote, governed
        assert "[omitted: " in attributes and "I was double charged" not in attributes
        assert re.search(r'\\"role\\":\\"user\\"', attributes), "a message list keeps its roles"
    else:
        assert "I was double charged" in attributes
