"""The SAP Signavio Process Intelligence Ingestion API as a `Destination` (see docs/SIGNAVIO.md).

An upload is only *accepted* by a 200; it is *loaded* once its execution reaches `COMPLETED`. So `load`
submits every table first (the server then works on them in parallel) and polls every execution until
each table is completed, failed, or out of time. Transient failures are retried by `request_with_retries`;
the token never leaves the `Authorization` header (messages are scrubbed, `repr` hides it).
"""

from __future__ import annotations

import functools
import json
import logging
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from telemetry_pipeline.signavio.models import (
    COMPLETED,
    FAILED_STATES,
    REJECTED,
    TIMED_OUT,
    UNREACHABLE,
    LoadResult,
    TableUpload,
)
from telemetry_pipeline.transport.http import RequestFailed, RetryPolicy, make_client, redact_url, request_with_retries

log = logging.getLogger(__name__)

NIL_EXECUTION_ID = "00000000-0000-0000-0000-000000000000"
STATUS_PATH = "/spi/ingestions/v1/{execution_id}/status"
POLL_WAIT_MAX = 15.0


def split_csv(data: bytes, max_bytes: int) -> list[bytes]:
    """Split a CSV into parts of at most `max_bytes` each, on record boundaries, header first in every part.

    A part holds at least one record, so a single record larger than `max_bytes` becomes its own
    (oversized) part: the limit is our own caution, not a published server limit, and dropping a row
    would be worse. Parts are byte-exact slices of `data`, so quoting and line endings are untouched.
    """
    records = _records(data) if len(data) > max_bytes else []
    if len(records) <= 2:  # it fits, or a header and one record cannot be split further
        return [data]
    header, *rows = records
    parts: list[bytes] = []
    current: list[bytes] = []
    size = len(header)
    for row in rows:
        if current and size + len(row) > max_bytes:
            parts.append(header + b"".join(current))
            current, size = [], len(header)
        current.append(row)
        size += len(row)
    parts.append(header + b"".join(current))  # never empty: there is at least one row
    return parts


def _records(data: bytes) -> list[bytes]:
    """RFC 4180 records, each with its line ending: a line break ends a record only outside quotes.

    Quote parity is exact for RFC 4180 (an escaped `""` adds two), works on the UTF-8 bytes directly
    (neither `"` nor a line break byte occurs inside a multi-byte sequence) and, unlike the csv module,
    has no field size limit — JSON attribute columns can be large.
    """
    records: list[bytes] = []
    pending: list[bytes] = []
    quotes = 0
    for line in data.splitlines(keepends=True):
        pending.append(line)
        quotes += line.count(b'"')
        if quotes % 2 == 0:
            records.append(b"".join(pending))
            pending, quotes = [], 0
    if pending:  # an unterminated quote: pass the tail on as one record and let the server judge it
        records.append(b"".join(pending))
    return records


@dataclass
class _TableLoad:
    """Progress of one table across its parts: execution ids, last seen state per id, final outcome."""

    upload: TableUpload
    parts: int
    execution_ids: list[str] = field(default_factory=list)
    last_seen: dict[str, str] = field(default_factory=dict)  # execution id -> state or last poll problem
    status: str | None = None  # set once final
    message: str | None = None

    def finish(self, status: str, message: str | None) -> None:
        self.status, self.message = status, message

    def result(self, destination: str) -> LoadResult:
        assert self.status is not None, "every table ends completed, failed or timed out"
        return LoadResult(
            table=self.upload.table,
            status=self.status,
            execution_ids=tuple(self.execution_ids),
            message=self.message,
            destination=destination,
            extra={"parts": self.parts},
        )

    def waiting_on(self) -> list[str]:
        if self.status is not None:
            return []
        return [eid for eid in self.execution_ids if self.last_seen.get(eid) != COMPLETED]


class SignavioClient:
    """Uploads tables to one Ingestion API connection and confirms each load via the status endpoint."""

    name = "signavio"

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        status_url_template: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
        max_body_bytes: int = 50 * 1024 * 1024,
        poll_interval: float = 1.0,
        poll_deadline: float = 600.0,
        tenant_id: str | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(api_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"configuration error: Signavio API URL {redact_url(api_url)!r} is not http(s)")
        if not api_key.strip():
            raise ValueError("configuration error: Signavio API URL is set but the API key (token) is empty")
        template = status_url_template or f"{parsed.scheme}://{parsed.netloc}{STATUS_PATH}"
        if "{execution_id}" not in template:
            raise ValueError("configuration error: the status URL template has no {execution_id} placeholder")
        self._api_url = api_url
        self._api_key = api_key
        self._status_url_template = template
        self._retry = retry
        self._max_body_bytes = max_body_bytes
        self._poll_interval = poll_interval
        self._poll_deadline = poll_deadline
        headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        if tenant_id:
            headers["X-Tenant-ID"] = tenant_id
        self._http = make_client(timeout, headers=headers)

    def __repr__(self) -> str:
        return f"SignavioClient(api_url={self.describe()!r}, api_key=<redacted>)"

    def __enter__(self) -> SignavioClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def describe(self) -> str:
        return redact_url(self._api_url)

    def load(self, uploads: Sequence[TableUpload]) -> list[LoadResult]:
        tables = [self._submit(upload) for upload in uploads]
        self._await(tables)
        return [t.result(self.describe()) for t in tables]

    def probe(self) -> tuple[bool, str]:
        """Reachability and token check without uploading: the status of the nil execution id."""
        try:
            response = self._get_status(NIL_EXECUTION_ID)
        except RequestFailed as exc:
            return False, f"unreachable: {self._scrub(str(exc))}"
        code = response.status_code
        if code in (200, 404):  # 404 = "no such execution", which the server only says to an accepted token
            return True, "reachable, token accepted"
        if code in (401, 403):
            return False, f"token refused (HTTP {code})"
        if code >= 500:
            return False, f"unreachable: {self._error_text(response)}"
        return False, f"unexpected answer from the status endpoint: {self._error_text(response)}"

    # -- submission -------------------------------------------------------------------------------------

    def _submit(self, upload: TableUpload) -> _TableLoad:
        # Multipart framing has a fixed length (the boundary's length never varies), so a request without
        # CSV measures exactly what every part adds on top of its CSV bytes.
        overhead = int(self._upload_request(upload, b"").headers["Content-Length"])
        parts = split_csv(upload.csv, self._max_body_bytes - overhead)
        table = _TableLoad(upload, parts=len(parts))
        for number, body in enumerate(parts, start=1):
            # Once a part fails the table cannot be confirmed; the next export re-sends it all (upserts).
            where = f"part {number}/{len(parts)}: " if len(parts) > 1 else ""
            try:
                response = request_with_retries(
                    self._http, functools.partial(self._upload_request, upload, body), self._retry
                )
            except RequestFailed as exc:
                table.finish(UNREACHABLE, where + self._scrub(str(exc)))
                break
            execution_id = _execution_id(response)
            if execution_id is None:
                problem = "accepted without an executionId: " if response.is_success else ""
                table.finish(REJECTED, where + problem + self._error_text(response))
                break
            table.execution_ids.append(execution_id)
            log.info(
                "Signavio accepted %s %s(%d bytes): execution %s", upload.table, where, len(body), execution_id
            )
        if table.status is not None:
            log.warning("Signavio upload of %s failed: %s %s", upload.table, table.status, table.message)
        return table

    def _upload_request(self, upload: TableUpload, csv_part: bytes) -> httpx.Request:
        """A fresh request per attempt, so a retry never re-sends a drained body."""
        return self._http.build_request(
            "POST",
            self._api_url,
            data={
                "schema": json.dumps(upload.schema),
                "primaryKeys": ",".join(upload.primary_keys),
                "delimiter": upload.delimiter,
            },
            files={"files": (f"{upload.table}.csv", csv_part, "text/csv")},
        )

    # -- confirmation -----------------------------------------------------------------------------------

    def _await(self, tables: list[_TableLoad]) -> None:
        deadline = time.monotonic() + self._poll_deadline
        wait = self._poll_interval
        while waiting := [(t, eid) for t in tables for eid in t.waiting_on()]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for t in tables:
                    if t.status is None:
                        t.finish(TIMED_OUT, self._timeout_message(t))
                        log.warning("Signavio load of %s timed out: %s", t.upload.table, t.message)
                return
            time.sleep(min(wait, remaining))
            wait = min(wait * 2, max(POLL_WAIT_MAX, self._poll_interval))
            for t, eid in waiting:
                if t.status is None:  # another part of the table may have failed earlier in this round
                    self._poll(t, eid)

    def _poll(self, table: _TableLoad, execution_id: str) -> None:
        try:
            response = self._get_status(execution_id)
        except RequestFailed as exc:
            # The upload was accepted, so keep asking until the deadline rather than give up on it.
            table.last_seen[execution_id] = f"status check failed: {self._scrub(str(exc))}"
            return
        if response.status_code == 404:  # not (yet) known to the status service; the deadline bounds this
            table.last_seen[execution_id] = "unknown to the status endpoint (HTTP 404)"
            return
        if response.status_code != 200:  # 401/403 and the like will not go away by asking again
            refusal = self._error_text(response)
            table.finish(TIMED_OUT, f"accepted as {execution_id}, but the status check was refused: {refusal}")
            return
        try:
            payload = response.json()["payload"]
            state, message = str(payload["status"]), payload.get("message")
        except (ValueError, KeyError, TypeError):
            table.last_seen[execution_id] = f"unreadable status answer: {self._error_text(response)}"
            return
        table.last_seen[execution_id] = state
        if state in FAILED_STATES:
            table.finish(state, self._scrub(str(message or state)))
            log.warning("Signavio load of %s (execution %s) failed: %s", table.upload.table, execution_id, state)
        elif not table.waiting_on():
            table.finish(COMPLETED, self._scrub(str(message)) if message else None)
            log.info("Signavio load of %s completed: %s", table.upload.table, ", ".join(table.execution_ids))

    def _timeout_message(self, table: _TableLoad) -> str:
        pending = "; ".join(f"{eid}: {table.last_seen.get(eid, 'no answer yet')}" for eid in table.waiting_on())
        return f"no terminal state within {self._poll_deadline:g}s ({pending})"

    def _get_status(self, execution_id: str) -> httpx.Response:
        url = self._status_url_template.replace("{execution_id}", urllib.parse.quote(execution_id, safe=""))
        return request_with_retries(self._http, lambda: self._http.build_request("GET", url), self._retry)

    # -- messages ---------------------------------------------------------------------------------------

    def _error_text(self, response: httpx.Response) -> str:
        """`HTTP <code> <title>: <detail>` from Signavio's error body, else the start of the raw body."""
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and (body.get("title") or body.get("detail")):
            title, detail = body.get("title") or response.reason_phrase, body.get("detail")
        else:
            title, detail = response.reason_phrase, response.text.strip().replace("\n", " ")[:300]
        text = f"HTTP {response.status_code} {title}" + (f": {detail}" if detail else "")
        return self._scrub(text)

    def _scrub(self, text: str) -> str:
        """Defence in depth: should a server ever echo the token, it still never reaches a message."""
        return text.replace(self._api_key, "<redacted>")


def _execution_id(response: httpx.Response) -> str | None:
    if not response.is_success:
        return None
    try:
        execution_id = response.json()["payload"]["executionId"]
    except (ValueError, KeyError, TypeError):
        return None
    return execution_id if isinstance(execution_id, str) and execution_id else None
