"""SignavioClient against a real HTTP double of the Ingestion API (127.0.0.1, no mocks of our code)."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_pipeline.signavio.client import SignavioClient, split_csv
from telemetry_pipeline.signavio.models import COMPLETED, REJECTED, TIMED_OUT, UNREACHABLE, LoadResult, TableUpload
from telemetry_pipeline.transport.http import RetryPolicy
from telemetry_pipeline_tests.signavio_double import SignavioDouble

pytestmark = pytest.mark.fast  # `make test-fast`

TOKEN = "tok-3f9a1c77e2b54d0c-SECRET"
FAST = RetryPolicy(max_retries=3, wait_initial=0.01, wait_max=0.05)

RUNS = "agent_telemetry_runs"
EVENTS = "agent_telemetry_events"
RUNS_FIELDS = [
    {"name": "agent_run_id", "type": "string"},
    {"name": "start_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "status", "type": ["null", "string"]},
    {"name": "notes", "type": ["null", "string"]},
]
EVENTS_FIELDS = [
    {"name": "event_id", "type": "string"},
    {"name": "case_id", "type": "string"},
    {"name": "activity", "type": "string"},
    {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "latency_ms", "type": ["null", "long"]},
]


def table(name: str, fields: list[dict[str, Any]], key: str, rows: Sequence[Sequence[object]]) -> TableUpload:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow([f["name"] for f in fields])
    writer.writerows(rows)
    schema = {"type": "record", "name": name, "fields": fields}
    return TableUpload(name, schema, (key,), out.getvalue().encode(), rows=len(rows))


def runs(*rows: Sequence[object]) -> TableUpload:
    return table(RUNS, RUNS_FIELDS, "agent_run_id", rows or [("run-1", 1_700_000_000_000, "success", "")])


def events(*rows: Sequence[object]) -> TableUpload:
    default = [
        ("e1", "run-1", "Agent started", 1_700_000_000_000, ""),
        ("e2", "run-1", "Tool call", 1_700_000_000_500, 42),
    ]
    return table(EVENTS, EVENTS_FIELDS, "event_id", rows or default)


@pytest.fixture
def api() -> Iterator[SignavioDouble]:
    with SignavioDouble(token=TOKEN) as double:
        yield double


def client(api: SignavioDouble, token: str = TOKEN, **options: Any) -> SignavioClient:
    settings_: dict[str, Any] = {"retry": FAST, "poll_interval": 0.01, "poll_deadline": 5.0, "timeout": 2.0}
    return SignavioClient(api.url, token, **{**settings_, **options})


def load(api: SignavioDouble, uploads: Sequence[TableUpload], **options: Any) -> list[LoadResult]:
    with client(api, **options) as signavio:
        return signavio.load(uploads)


def test_happy_path_confirms_both_tables_and_sends_the_documented_request(api: SignavioDouble) -> None:
    uploads = [runs(), events()]
    results = load(api, uploads)

    assert [(r.table, r.status, r.ok, r.destination) for r in results] == [
        (RUNS, COMPLETED, True, api.url),
        (EVENTS, COMPLETED, True, api.url),
    ]
    assert all(len(r.execution_ids) == 1 for r in results)
    assert set(api.executions) == {r.execution_ids[0] for r in results}
    assert api.rows(RUNS) == [
        {"agent_run_id": "run-1", "start_time": 1_700_000_000_000, "status": "success", "notes": None}
    ]
    assert [row["latency_ms"] for row in api.rows(EVENTS)] == [None, 42]

    posts = api.posts()
    assert len(posts) == 2
    for post, upload in zip(posts, uploads, strict=True):
        assert post.path == "/spi/ingestions/v1/data"
        assert post.headers["authorization"] == f"Bearer {TOKEN}"
        assert post.headers["accept"] == "application/json"
        assert post.headers["content-type"].startswith("multipart/form-data; boundary=")
        assert "x-tenant-id" not in post.headers
        assert [p.name for p in post.parts] == ["schema", "primaryKeys", "delimiter", "files"]
        assert json.loads(post.form_value("schema") or "") == upload.schema
        assert post.form_value("primaryKeys") == ",".join(upload.primary_keys)
        assert post.form_value("delimiter") == ","
        file = post.parts[-1]
        assert (file.filename, file.content_type, file.data) == (f"{upload.table}.csv", "text/csv", upload.csv)
    # Every table is submitted before the first status poll, so the server loads them side by side.
    methods = [r.method for r in api.requests]
    assert methods[:2] == ["POST", "POST"] and set(methods[2:]) == {"GET"}
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in api.requests)


def test_tenant_header_is_sent_only_when_configured(api: SignavioDouble) -> None:
    load(api, [runs()], tenant_id="tenant-7")
    assert {r.headers.get("x-tenant-id") for r in api.requests} == {"tenant-7"}


def test_reupload_replaces_rows_by_primary_key(api: SignavioDouble) -> None:
    load(api, [runs(("run-1", 1, "running", ""), ("run-2", 2, "success", ""))])
    load(api, [runs(("run-1", 1, "failed", "retried"), ("run-3", 3, "success", ""))])

    rows = {row["agent_run_id"]: row for row in api.rows(RUNS)}
    assert sorted(rows) == ["run-1", "run-2", "run-3"]
    assert (rows["run-1"]["status"], rows["run-1"]["notes"]) == ("failed", "retried")


def test_transient_bursts_are_retried_and_rows_arrive_once(api: SignavioDouble) -> None:
    api.fail_next(2, status=503)
    api.fail_next(1, status=429)
    results = load(api, [runs(), events()])

    assert [r.status for r in results] == [COMPLETED, COMPLETED]
    assert len(api.posts()) == 5  # three refused attempts, then one accepted POST per table
    assert len(api.executions) == 2
    assert sorted(row["event_id"] for row in api.rows(EVENTS)) == ["e1", "e2"]


def test_retry_after_is_honoured(api: SignavioDouble) -> None:
    api.fail_next(1, status=503, retry_after=1)
    [result] = load(api, [runs()])

    first, second = api.posts()
    assert result.status == COMPLETED
    assert second.time - first.time >= 0.9  # the policy's own waits are at most 0.05 s


def test_status_endpoint_faults_are_retried(api: SignavioDouble) -> None:
    api.status_fail_next(3, status=503)
    [result] = load(api, [runs()])
    assert result.status == COMPLETED


def _bad_primary_key(upload: TableUpload) -> TableUpload:
    return replace(upload, primary_keys=("nope",))


def _bad_header(upload: TableUpload) -> TableUpload:
    return replace(upload, csv=upload.csv.replace(b"start_time", b"started"))


def _not_utf8(upload: TableUpload) -> TableUpload:
    return replace(upload, csv=upload.csv.replace(b"success", "succès".encode("latin-1")))


def _not_a_record(upload: TableUpload) -> TableUpload:
    return replace(upload, schema={**upload.schema, "type": "map"})


@pytest.mark.parametrize(
    ("spoil", "token", "expected"),
    [
        (None, "wrong-token", "HTTP 401 Unauthorized: The provided token is invalid"),
        (_bad_primary_key, TOKEN, "HTTP 400 Bad Request: primary key 'nope' is not a field of the schema"),
        (_bad_header, TOKEN, "HTTP 400 Bad Request: header of 'agent_telemetry_runs.csv'"),
        (_not_utf8, TOKEN, "HTTP 400 Bad Request: file 'agent_telemetry_runs.csv' is not UTF-8"),
        (_not_a_record, TOKEN, "HTTP 400 Bad Request: schema must be an Avro record"),
    ],
)
def test_permanent_errors_are_not_retried(api: SignavioDouble, spoil: Any, token: str, expected: str) -> None:
    upload = spoil(runs()) if spoil else runs()
    [result] = load(api, [upload], token=token)

    assert (result.status, result.ok, result.execution_ids) == (REJECTED, False, ())
    assert result.message is not None and result.message.startswith(expected)
    assert len(api.requests) == 1  # one POST, no retry, nothing to poll


def test_exhausted_retries_are_unreachable_and_name_the_cause(api: SignavioDouble) -> None:
    api.fail_next(10, status=503)
    [result] = load(api, [runs()], retry=replace(FAST, max_retries=2))

    assert result.status == UNREACHABLE
    assert result.message is not None and "HTTP 503" in result.message and "after 3 attempts" in result.message
    assert len(api.posts()) == 3


def test_failed_load_reports_its_state_and_message(api: SignavioDouble) -> None:
    api.fail_load(EVENTS, "FILE_CONVERSION_FAILED", "event_time: not a timestamp")
    results = {r.table: r for r in load(api, [runs(), events()])}

    failed = results[EVENTS]
    assert (failed.status, failed.message) == ("FILE_CONVERSION_FAILED", "event_time: not a timestamp")
    assert len(failed.execution_ids) == 1 and not failed.ok
    assert results[RUNS].status == COMPLETED
    assert api.rows(EVENTS) == []


def test_the_double_fails_conversion_of_a_null_in_a_non_nullable_field(api: SignavioDouble) -> None:
    [result] = load(api, [runs(("run-1", "", "success", ""))])
    assert result.status == "FILE_CONVERSION_FAILED"
    assert "field 'start_time'" in (result.message or "")


def test_hung_upload_times_out_and_is_retried(api: SignavioDouble) -> None:
    api.hang_next(1, seconds=5)
    [result] = load(api, [runs()], timeout=0.3)

    assert result.status == COMPLETED
    assert len(api.posts()) == 2


def test_upload_that_always_hangs_is_unreachable(api: SignavioDouble) -> None:
    api.hang_next(2, seconds=5)
    [result] = load(api, [runs()], timeout=0.3, retry=replace(FAST, max_retries=1))

    assert result.status == UNREACHABLE
    assert "ReadTimeout" in (result.message or "")


def test_load_without_terminal_state_times_out_at_the_deadline(api: SignavioDouble) -> None:
    api.steps_per_poll = 0
    [result] = load(api, [runs()], poll_deadline=0.3)

    assert result.status == TIMED_OUT and len(result.execution_ids) == 1
    assert "REQUEST_VALIDATING" in (result.message or "")
    assert api.rows(RUNS) == []


def test_large_table_is_split_into_requests_with_header_and_intact_multiline_values(api: SignavioDouble) -> None:
    note = 'line one\r\nline "two"\nline, three'
    rows = [(f"run-{i:03}", 1_700_000_000_000 + i, "success", note if i % 7 == 0 else "") for i in range(60)]
    upload = runs(*rows)
    max_body = 1500
    [result] = load(api, [upload], max_body_bytes=max_body)

    posts = api.posts()
    header = upload.csv.split(b"\r\n", 1)[0] + b"\r\n"
    assert result.status == COMPLETED
    assert len(posts) > 2 and len(result.execution_ids) == len(posts) == result.extra["parts"]
    assert all(post.body_size <= max_body for post in posts)
    assert all(post.parts[-1].data.startswith(header) for post in posts)
    stored = {row["agent_run_id"]: row["notes"] for row in api.rows(RUNS)}
    assert stored == {run_id: notes or None for run_id, _, _, notes in rows}


def test_record_larger_than_the_limit_is_sent_alone_not_dropped(api: SignavioDouble) -> None:
    big = "x" * 200_000  # also past the csv module's default 128 KiB field limit
    upload = runs(("run-1", 1, "success", ""), ("run-2", 2, "success", big), ("run-3", 3, "", ""))
    [result] = load(api, [upload], max_body_bytes=2000)

    assert result.status == COMPLETED and result.extra["parts"] == 3
    assert [row["notes"] for row in api.rows(RUNS)] == [None, big, None]


csv_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(st.tuples(csv_text, csv_text), max_size=25), max_bytes=st.integers(1, 400))
def test_split_csv_keeps_every_record_whole(rows: list[tuple[str, str]], max_bytes: int) -> None:
    out = io.StringIO(newline="")
    csv.writer(out).writerows([("a", "b"), *rows])
    data = out.getvalue().encode()

    parts = split_csv(data, max_bytes)

    parsed = [list(csv.reader(io.StringIO(part.decode(), newline=""))) for part in parts]
    assert all(records[0] == ["a", "b"] for records in parsed)
    assert [tuple(r) for records in parsed for r in records[1:]] == [tuple(r) for r in rows]
    assert all(len(part) <= max_bytes or len(records) <= 2 for part, records in zip(parts, parsed, strict=True))


def test_token_never_appears_in_results_errors_or_logs(
    api: SignavioDouble, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    api.fail_next(4, status=503)
    api.fail_load(EVENTS, "FILE_UPLOAD_FAILED", "storage full")
    seen: list[object] = []
    with client(api, retry=replace(FAST, max_retries=1)) as signavio:
        seen += [repr(signavio), signavio.describe(), signavio.probe()]
        seen += signavio.load([runs(), events()])  # both UNREACHABLE after two 503s each
        seen += signavio.load([runs(), events()])  # COMPLETED and FILE_UPLOAD_FAILED
    with client(api, timeout=0.2, retry=replace(FAST, max_retries=0)) as signavio:
        api.hang_next(1, seconds=5)
        seen += signavio.load([runs()])
    with pytest.raises(ValueError, match="configuration error") as refused:
        SignavioClient(api.url, "")
    seen.append(refused.value)

    assert {r.status for r in seen if isinstance(r, LoadResult)} >= {UNREACHABLE, COMPLETED, "FILE_UPLOAD_FAILED"}
    # stamina reports retries through structlog (stdout) when it is installed, so read the streams too.
    texts = [repr(item) + str(item) for item in seen] + [caplog.text, *capfd.readouterr()]
    texts += [repr(record.args) + repr(record.__dict__) for record in caplog.records]
    assert "retry_scheduled" in "".join(texts)  # the retry reports were among what was searched
    assert caplog.records and not [text for text in texts if TOKEN in text]


def test_probe_accepts_a_valid_token(api: SignavioDouble) -> None:
    with client(api) as signavio:
        assert signavio.probe() == (True, "reachable, token accepted")
    [request] = api.requests
    assert request.path == "/spi/ingestions/v1/00000000-0000-0000-0000-000000000000/status"


def test_probe_reports_a_refused_token(api: SignavioDouble) -> None:
    with client(api, token="wrong-token") as signavio:
        assert signavio.probe() == (False, "token refused (HTTP 401)")


def test_probe_reports_a_server_that_is_down() -> None:
    with SignavioDouble(token=TOKEN) as gone:
        pass
    with client(gone, retry=replace(FAST, max_retries=1)) as signavio:
        ok, detail = signavio.probe()
    assert not ok and detail.startswith("unreachable: ConnectError")


def test_missing_token_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="configuration error"):
        SignavioClient("https://api.us.signavio.cloud.sap/spi/ingestions/v1/data", "")
