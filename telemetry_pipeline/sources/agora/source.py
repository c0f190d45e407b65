"""Agora, the workflow platform (docs/SOURCES.md, `agora`): listing and fetching executions.

Listing pages `GET /executions/?limit=100&offset=N` (newest first) and yields only finished executions
(status other than `running`), with `completed_at` as the session's last event.

Fetching an execution makes three requests (timeline, telemetry spans, telemetry events) and hands
over ONE payload, a JSON object that embeds the three response bodies byte for byte:

    {"format": "agora-execution/1", "execution_id": "<id>",
     "timeline": <body of GET /executions/{id}/timeline>,
     "spans":    <body of GET /executions/{id}/telemetry-spans>,
     "events":   <body of GET /executions/{id}/telemetry-events>}

A response that is not JSON is embedded as a JSON string instead (so the payload stays JSON and
`raw_telemetry` keeps it); the normaliser then fails that session with a clear message.

The platform token travels only in the `Authorization` header of each request: it is not stored on
the shared client, and it never appears in a message, a log line or this object's repr.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator

import httpx

from telemetry_pipeline.canonical.raw import RawSession
from telemetry_pipeline.canonical.time import to_utc
from telemetry_pipeline.sources.agora.settings import AgoraSettings
from telemetry_pipeline.sources.base import (
    SessionRef,
    SharedHttp,
    SourceError,
    checked_get,
    json_of,
    path_segment,
)
from telemetry_pipeline.transport.http import RequestFailed, redact_url, request_with_retries

REFUSED = "the platform refused the token (AGORA_API_TOKEN)"
log = logging.getLogger(__name__)

NAME = "agora"
PAGE_SIZE = 100  # Agora refuses a larger `limit`
FORMAT = "agora-execution/1"
# Paging stops at the first page whose executions all *started* this long before `since`: an execution
# that started earlier and completed after `since` is still found as long as it ran for less than this.
DEFAULT_LOOKBACK = dt.timedelta(days=1)


class AgoraSource:
    """The Agora platform's executions, over the run's shared HTTP client."""

    name = NAME

    def __init__(self, settings: AgoraSettings, http: SharedHttp, lookback: dt.timedelta = DEFAULT_LOOKBACK) -> None:
        self._base = settings.url.rstrip("/")
        self._token = settings.token or ""
        self._client = http.client
        self._retry = http.retry
        self._lookback = lookback

    def __repr__(self) -> str:
        return f"AgoraSource({self._base!r}, token={'<set>' if self._token else '<unset>'})"

    # -- HTTP ---------------------------------------------------------------------------------------

    def _request(self, url: str, params: dict[str, str | int] | None = None) -> Callable[[], httpx.Request]:
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return lambda: self._client.build_request("GET", url, params=params, headers=headers)

    def _get(self, url: str, where: str, params: dict[str, str | int] | None = None, **errors: str) -> httpx.Response:
        return checked_get(self._client, self._request(url, params), self._retry, where, refused=REFUSED, **errors)

    # -- listing ------------------------------------------------------------------------------------

    def list_sessions(self, since: dt.datetime | None) -> Iterator[SessionRef]:
        url = self._base + "/executions/"
        offset = 0
        while True:
            page = self._get_page(url, offset)
            for item in page:
                if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
                    log.warning("agora listing: skipped an entry without an id: %.200r", item)
                    continue
                if item.get("status") == "running":
                    continue  # not ready: listed again once it has finished
                completed = to_utc(item.get("completed_at")) or to_utc(item.get("started_at"))
                if since is not None and completed is not None and completed < since:
                    continue
                yield SessionRef(NAME, item["id"], completed)
            if len(page) < PAGE_SIZE or (since is not None and self._all_older(page, since)):
                return
            offset += len(page)

    def _all_older(self, page: list, since: dt.datetime) -> bool:
        horizon = since - self._lookback
        for item in page:
            started = to_utc(item.get("started_at")) if isinstance(item, dict) else None
            if started is None or started >= horizon:
                return False
        return True

    def _get_page(self, url: str, offset: int) -> list:
        where = f"agora listing ({redact_url(url)}, offset {offset})"
        page = json_of(self._get(url, where, {"limit": PAGE_SIZE, "offset": offset}), where)
        if isinstance(page, dict) and isinstance(page.get("items"), list):  # tolerate a wrapped page
            page = page["items"]
        if not isinstance(page, list):
            raise SourceError(f"{where}: listing is not a JSON list")
        return page

    # -- fetching -----------------------------------------------------------------------------------

    def fetch(self, session_id: str) -> RawSession:
        base = f"{self._base}/executions/{path_segment(session_id)}"
        parts: dict[str, bytes] = {}
        for part, path in (("timeline", "/timeline"), ("spans", "/telemetry-spans"), ("events", "/telemetry-events")):
            url = base + path
            where = f"agora execution {session_id!r} ({redact_url(url)})"
            response = self._get(url, where, not_found="no such execution")
            parts[part] = _embeddable(response.content)
        body = b"".join(
            [
                b'{"format":', json.dumps(FORMAT).encode(),
                b',"execution_id":', json.dumps(session_id).encode(),
                b',"timeline":', parts["timeline"],
                b',"spans":', parts["spans"],
                b',"events":', parts["events"],
                b"}",
            ]
        )
        return RawSession(
            source=NAME,
            session_id=session_id,
            body=body,
            content_type="application/json",
            fetched_at=dt.datetime.now(dt.UTC),
            location=redact_url(base),
        )

    def probe(self) -> tuple[bool, str]:
        """Reachability and token without fetching data: one listing page of one execution."""
        url = self._base + "/executions/"
        try:
            response = request_with_retries(self._client, self._request(url, {"limit": 1}), self._retry)
        except RequestFailed as exc:
            return False, f"unreachable: {exc}"
        if response.status_code == 200:
            return True, f"reachable, token accepted ({redact_url(url)})"
        if response.status_code in (401, 403):
            return False, f"HTTP {response.status_code} from {redact_url(url)}: token refused (AGORA_API_TOKEN)"
        return False, f"HTTP {response.status_code} from {redact_url(url)}"


def _embeddable(content: bytes) -> bytes:
    """The response body itself when it is JSON (embedded verbatim), else the body as a JSON string."""
    body = content.removeprefix(b"\xef\xbb\xbf").strip()
    try:
        json.loads(body.decode("utf-8"))
    except ValueError:  # includes UnicodeDecodeError
        return json.dumps(content.decode("utf-8", errors="replace")).encode()
    return body



def build(settings: AgoraSettings, http: SharedHttp) -> AgoraSource:
    return AgoraSource(settings, http)
