"""A real HTTP stand-in for the Signavio Ingestion API (docs/SIGNAVIO.md), for tests.

It listens on 127.0.0.1, checks every request the way the contract says the real API does (token,
multipart fields, Avro record schema, primary keys, CSV header, UTF-8), walks accepted uploads through
the documented states one status poll at a time, and applies rows (upserts by primary key) only when an
execution reaches COMPLETED — so a test sees exactly what a confirmed load would leave behind.
Faults (transient statuses, slow answers, failed loads) are injected with the `fail_*`/`hang_next` knobs.
"""

from __future__ import annotations

import csv
import email.parser
import email.policy
import io
import json
import re
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any

from telemetry_pipeline.simulate.loopback import HTTPError, LoopbackServer, Reply, Request, json_reply

STATES = (
    "REQUEST_VALIDATING",
    "REQUEST_VALIDATED",
    "FILE_CONVERTING",
    "FILE_CONVERTED",
    "FILE_UPLOADING",
    "FILE_UPLOADED",
    "INTERNAL_SYNCHRONISING",
    "COMPLETED",
)
#: Each failure state is entered instead of leaving the state it belongs to.
FAILURE_STAGE = {
    "REQUEST_VALIDATION_FAILED": "REQUEST_VALIDATING",
    "FILE_CONVERSION_FAILED": "FILE_CONVERTING",
    "FILE_UPLOAD_FAILED": "FILE_UPLOADING",
    "INTERNAL_SYNCHRONISING_FAILED": "INTERNAL_SYNCHRONISING",
}
UPLOAD_PATH = "/spi/ingestions/v1/data"
STATUS_PATH = re.compile(r"^/spi/ingestions/v1/([^/]+)/status$")
SAFE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})

Row = dict[str, Any]


@dataclass(frozen=True)
class FormPart:
    name: str
    filename: str | None
    content_type: str
    data: bytes


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body_size: int
    time: float  # time.monotonic() when the request was read, before any injected delay
    parts: tuple[FormPart, ...] = ()  # multipart form parts, in order

    def form_value(self, name: str) -> str | None:
        """The first form field called `name`, as text."""
        return next((p.data.decode() for p in self.parts if p.name == name), None)


@dataclass
class _Execution:
    table: str
    rows: dict[tuple[Any, ...], Row]
    fail_state: str | None = None
    message: str | None = None
    index: int = 0
    state: str = STATES[0]

    def advance(self, steps: int) -> None:
        if self.state == "COMPLETED" or self.state in FAILURE_STAGE:
            return
        target = min(self.index + steps, len(STATES) - 1)
        if self.fail_state and target > STATES.index(FAILURE_STAGE[self.fail_state]):
            self.state = self.fail_state
            return
        self.index, self.state = target, STATES[target]


class _Rejected(HTTPError):
    """An error answered the way the Ingestion API does (RFC 7807 with its `errorKey`)."""

    def __init__(self, status: int, detail: str, error_key: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, detail, _error_body(status, detail, error_key), headers)


class SignavioDouble:
    """`with SignavioDouble() as api:` serves the Ingestion API at `api.url` until the block ends."""

    def __init__(self, token: str = "double-token", *, steps_per_poll: int = 2) -> None:
        self.token = token
        # The real service takes large JSON cells; the csv module's default 128 KiB field limit would not.
        csv.field_size_limit(sys.maxsize)
        #: States an execution advances per status poll; 0 keeps it at REQUEST_VALIDATING for ever.
        self.steps_per_poll = steps_per_poll
        self.requests: list[RecordedRequest] = []
        self.tables: dict[str, dict[tuple[Any, ...], Row]] = {}
        self.executions: dict[str, _Execution] = {}
        #: table name (None = every table) -> (failure state, message) for loads of that table
        self.load_failures: dict[str | None, tuple[str, str]] = {}
        #: tables whose loads stay where they are while named here (a slow table)
        self.stalled: set[str] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._upload_faults: deque[tuple[int, str | None]] = deque()
        self._hangs: deque[float] = deque()
        self._status_faults: deque[int] = deque()
        self._server = LoopbackServer(self.handle, name="signavio-double")

    # -- lifecycle ----------------------------------------------------------------------------------------

    def __enter__(self) -> SignavioDouble:
        self._server.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing.set()  # wakes handlers that sleep in an injected hang
        self._server.stop()

    @property
    def base_url(self) -> str:
        return self._server.url

    @property
    def url(self) -> str:
        """The ingestion endpoint, as a connection in Process Intelligence would show it."""
        return self.base_url + UPLOAD_PATH

    # -- fault injection ----------------------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 503, retry_after: float | str | None = None) -> None:
        """The next `n` upload POSTs answer `status`, with a `Retry-After` header when given."""
        with self._lock:
            self._upload_faults.extend([(status, None if retry_after is None else str(retry_after))] * n)

    def hang_next(self, n: int, seconds: float) -> None:
        """The next `n` upload POSTs wait `seconds` before they are handled (the client may have gone)."""
        with self._lock:
            self._hangs.extend([seconds] * n)

    def fail_load(
        self, table: str | None, state: str = "FILE_CONVERSION_FAILED", message: str = "injected failure"
    ) -> None:
        """Loads of `table` (None: of every table) end in `state`; their rows are never stored."""
        if state not in FAILURE_STAGE:
            raise ValueError(f"not a failure state: {state}")
        with self._lock:
            self.load_failures[table] = (state, message)

    def status_fail_next(self, n: int, status: int = 503) -> None:
        """The next `n` status GETs answer `status`."""
        with self._lock:
            self._status_faults.extend([status] * n)

    # -- inspection ---------------------------------------------------------------------------------------

    def rows(self, table: str) -> list[Row]:
        """The rows a completed load left in `table`, in first-insertion order."""
        with self._lock:
            return [dict(row) for row in self.tables.get(table, {}).values()]

    def posts(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    # -- request handling (called on the server's threads) -------------------------------------------------

    def handle(self, request: Request) -> Reply:
        parts = _parse_multipart(request.header("content-type") or "", request.body)
        with self._lock:
            self.requests.append(RecordedRequest(
                request.method, request.target, dict(request.headers), len(request.body), time.monotonic(), parts
            ))
        try:
            if request.method == "POST" and request.path == UPLOAD_PATH:
                return self._upload(request, parts)
            if request.method == "GET" and (match := STATUS_PATH.match(request.path)):
                return self._status(request, match.group(1))
            raise _Rejected(404, f"no route for {request.method} {request.target}", "route.notFound")
        except HTTPError as exc:
            return json_reply(exc.payload, exc.status, exc.headers)

    def _upload(self, request: Request, parts: tuple[FormPart, ...]) -> Reply:
        with self._lock:
            hang = self._hangs.popleft() if self._hangs else 0.0
        self._closing.wait(hang)
        with self._lock:
            fault = self._upload_faults.popleft() if self._upload_faults else None
        if fault:
            status, retry_after = fault
            raise _Rejected(
                status, "injected fault", "injected", {"Retry-After": retry_after} if retry_after is not None else {}
            )
        self._authorise(request)
        execution = _validate(parts)
        with self._lock:
            injected = self.load_failures.get(execution.table) or self.load_failures.get(None)
            if injected and not execution.fail_state:
                execution.fail_state, execution.message = injected
            execution_id = str(uuid.uuid4())
            self.executions[execution_id] = execution
        return json_reply({"status": 200, "payload": {"executionId": execution_id}})

    def _status(self, request: Request, execution_id: str) -> Reply:
        with self._lock:
            fault = self._status_faults.popleft() if self._status_faults else None
        if fault:
            raise _Rejected(fault, "injected fault", "injected")
        self._authorise(request)
        with self._lock:
            execution = self.executions.get(execution_id)
            if execution is None:
                raise _Rejected(404, f"execution {execution_id} not found", "execution.notFound")
            was_completed = execution.state == "COMPLETED"
            execution.advance(0 if execution.table in self.stalled else self.steps_per_poll)
            if execution.state == "COMPLETED" and not was_completed:
                self.tables.setdefault(execution.table, {}).update(execution.rows)
                execution.message = f"{len(execution.rows)} rows loaded into {execution.table}"
            payload = {"status": execution.state, "message": execution.message}
        return json_reply({"status": 200, "payload": payload})

    def _authorise(self, request: Request) -> None:
        if request.header("authorization") != f"Bearer {self.token}":
            raise _Rejected(401, "The provided token is invalid or missing", "authentication.invalidToken")


def _validate(parts: tuple[FormPart, ...]) -> _Execution:
    """The request checks the API answers 400 to; row-level problems fail the load asynchronously instead."""
    fields: dict[str, str] = {}
    files: list[FormPart] = []
    for part in parts:
        if part.name == "files":
            files.append(part)
            continue
        try:
            fields[part.name] = part.data.decode("utf-8")
        except UnicodeDecodeError:
            raise _Rejected(400, f"field '{part.name}' is not UTF-8", "request.invalidEncoding") from None
    for name in ("schema", "primaryKeys", "files"):
        if not (files if name == "files" else name in fields):
            raise _Rejected(400, f"Required parameter '{name}' is missing", "request.missingParameter")
    delimiter = fields.get("delimiter") or ","
    if len(delimiter) != 1:
        raise _Rejected(400, f"delimiter must be one character, got {delimiter!r}", "request.invalidDelimiter")
    table, types = _check_schema(fields["schema"])
    primary_keys = [key.strip() for key in fields["primaryKeys"].split(",")]
    for key in primary_keys:
        if key not in types:
            raise _Rejected(400, f"primary key '{key}' is not a field of the schema", "request.invalidPrimaryKey")

    execution = _Execution(table=table, rows={})
    for part in files:
        try:
            text = part.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Rejected(400, f"file '{part.filename}' is not UTF-8: {exc}", "file.invalidEncoding") from None
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        header = next(reader, [])
        if header != list(types):
            raise _Rejected(
                400,
                f"header of '{part.filename}' {header} does not match the schema fields {list(types)}",
                "file.headerMismatch",
            )
        try:
            for line, cells in enumerate(reader, start=2):
                if cells:  # the csv module reports a blank line as an empty record
                    row = _convert_row(cells, types, f"{part.filename} record {line}")
                    execution.rows[tuple(row[key] for key in primary_keys)] = row
        except (ValueError, csv.Error) as exc:
            execution.fail_state, execution.message = "FILE_CONVERSION_FAILED", str(exc)
            execution.rows = {}
            break
    return execution


def _check_schema(text: str) -> tuple[str, dict[str, Any]]:
    """-> (table name, {field name: Avro type}) of an Avro record schema, or a 400."""
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise _Rejected(400, f"schema is not JSON: {exc}", "schema.invalid") from None
    fields = schema.get("fields") if isinstance(schema, dict) else None
    if not (isinstance(schema, dict) and schema.get("type") == "record" and isinstance(fields, list) and fields):
        raise _Rejected(400, "schema must be an Avro record with a non-empty 'fields' list", "schema.invalid")
    name = schema.get("name")
    if not isinstance(name, str) or not SAFE_NAME.match(name):
        raise _Rejected(400, f"record name {name!r} is not a valid table name", "schema.invalidName")
    types: dict[str, Any] = {}
    for spec in fields:
        field_name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(field_name, str) or not SAFE_NAME.match(field_name) or field_name in types:
            raise _Rejected(400, f"invalid or duplicate field name {field_name!r}", "schema.invalidField")
        if not _type_ok(spec.get("type")):
            detail = f"field '{field_name}' has an unsupported type {spec.get('type')!r}"
            raise _Rejected(400, detail, "schema.invalidType")
        types[field_name] = spec["type"]
    return name, types


def _type_ok(avro_type: Any) -> bool:
    if isinstance(avro_type, list):  # a union: null plus exactly one value type
        values = [branch for branch in avro_type if branch != "null"]
        return len(values) == 1 and _type_ok(values[0])
    if isinstance(avro_type, dict):
        return avro_type.get("type") in PRIMITIVES - {"null"}
    return avro_type in PRIMITIVES - {"null"}


def _convert_row(cells: list[str], types: dict[str, Any], where: str) -> Row:
    if len(cells) != len(types):
        raise ValueError(f"{where}: {len(cells)} values for {len(types)} fields")
    row: Row = {}
    for (name, avro_type), cell in zip(types.items(), cells, strict=True):
        try:
            row[name] = _convert(cell, avro_type)
        except ValueError as exc:
            raise ValueError(f"{where}, field '{name}': {exc}") from None
    return row


def _convert(cell: str, avro_type: Any) -> Any:
    """A CSV cell as its Avro type; an empty cell is null, which only a `["null", T]` field accepts."""
    branches = avro_type if isinstance(avro_type, list) else [avro_type]
    if cell == "":
        if "null" in branches:
            return None
        raise ValueError("empty cell (null) in a non-nullable field")
    base = next(branch for branch in branches if branch != "null")
    kind = base.get("type") if isinstance(base, dict) else base
    if kind in ("int", "long"):
        return int(cell)
    if kind in ("float", "double"):
        return float(cell)
    if kind == "boolean":
        if cell.lower() not in ("true", "false"):
            raise ValueError(f"{cell!r} is not a boolean")
        return cell.lower() == "true"
    return cell


def _parse_multipart(content_type: str, body: bytes) -> tuple[FormPart, ...]:
    if not content_type.lower().startswith("multipart/form-data"):
        return ()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        return ()
    return tuple(
        FormPart(
            name=str(part.get_param("name", header="content-disposition") or ""),
            filename=part.get_filename(),
            content_type=part.get_content_type(),
            data=part.get_payload(decode=True) or b"",
        )
        for part in message.iter_parts()
    )


def _error_body(status: int, detail: str, error_key: str) -> dict[str, Any]:
    return {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "detail": detail,
        "backendErrorId": str(uuid.uuid4()),
        "errorKey": error_key,
        "status": status,
    }
