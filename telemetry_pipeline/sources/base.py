"""The small protocol every source shares, and the values it hands over."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from telemetry_pipeline.transport.http import RequestFailed, RetryPolicy, request_with_retries


class SourceError(Exception):
    """A session could not be fetched; the message says which session and why (never a token)."""


class SessionNotFound(SourceError):
    """The source answered that it has no such session (HTTP 404)."""


@dataclass(frozen=True)
class SessionRef:
    """A session a source listed: enough to register a partition and to move a discovery cursor."""

    source: str
    session_id: str
    last_event_at: dt.datetime | None = None

    @property
    def key(self) -> str:
        return session_key(self.source, self.session_id)


@dataclass(frozen=True)
class RawSession:
    """A payload exactly as the source served it, before any parsing."""

    source: str
    session_id: str
    body: bytes
    content_type: str
    fetched_at: dt.datetime
    location: str  # URL or file path it came from (no credentials)

    @property
    def key(self) -> str:
        return session_key(self.source, self.session_id)


class Source(Protocol):
    """A telemetry source, as discovery (`list_sessions`), export (`fetch`) and `check` (`probe`) use it."""

    name: str

    def list_sessions(self, since: dt.datetime | None) -> Iterator[SessionRef]:
        """Finished sessions whose last event is at or after `since` (all when None)."""
        ...

    def fetch(self, session_id: str) -> RawSession:
        """The session's payload, verbatim. Raises `SourceError` (or `SessionNotFound`)."""
        ...

    def probe(self) -> tuple[bool, str]:
        """(reachable, detail) without fetching data: what `check` reports."""
        ...


@dataclass(frozen=True)
class SharedHttp:
    """The run's one HTTP client and retry policy, shared by every HTTP source."""

    client: httpx.Client
    retry: RetryPolicy


def session_key(source: str, session_id: str) -> str:
    return f"{source}:{session_id}"


def path_segment(value: str) -> str:
    """`value` as one URL path segment: every reserved character percent-encoded, and the dot segments
    `.` and `..` too, which an HTTP client would otherwise resolve (`/sessions/../events` is `/events`)."""
    segment = quote(value, safe="")
    return segment.replace(".", "%2E") if segment in (".", "..") else segment


def checked_get(
    client: httpx.Client,
    build: Callable[[], httpx.Request],
    retry: RetryPolicy,
    where: str,
    *,
    not_found: str | None = None,
    refused: str | None = None,
) -> httpx.Response:
    """A source GET through the retry policy; anything but 200 becomes a `SourceError` saying where
    and why (`SessionNotFound` for a 404 when `not_found` names what is missing)."""
    try:
        response = request_with_retries(client, build, retry)
    except RequestFailed as exc:
        raise SourceError(f"{where}: source unavailable: {exc}") from None
    code = response.status_code
    if code == 404 and not_found:
        raise SessionNotFound(f"{where}: {not_found} (HTTP 404)")
    if code in (401, 403) and refused:
        raise SourceError(f"{where}: HTTP {code}: {refused}")
    if code != 200:
        raise SourceError(f"{where}: HTTP {code}: {response.text[:300]}")
    return response


def json_of(response: httpx.Response, where: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise SourceError(f"{where}: response is not JSON: {response.text[:200]!r}") from None
