"""The small protocol every source shares, the values it hands over, and how a source declares itself to the
registry (`SourceEntry`: its name, its variables, how it is built and normalised)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import duckdb
import httpx

from telemetry_pipeline.canonical.identity import AgentDefaults
from telemetry_pipeline.canonical.raw import RawSession, session_key
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


#: Each of a source's variables by field name (a secret's value as plain text), None when unset: what a
#: source's `configure` reads.
Values = Mapping[str, str | None]

#: Replaces the canonical rows of the good sessions among `raw` (all of one source; `AgentDefaults`: the names for
#: data that names no agent) and returns {key: why} for the others.
Normalizer = Callable[[duckdb.DuckDBPyConnection, Sequence[RawSession], AgentDefaults], dict[str, str]]


@dataclass(frozen=True)
class Variable:
    """One setting a source declares: read from the environment variable `env` into `SourcesSettings.values`
    and made a field `field` of the Dagster resource (`defs/resources.py`), so the UI shows it typed."""

    field: str  # e.g. `agora_url`: the key in `SourcesSettings.values` and the resource field's name
    env: str  # e.g. `AGORA_PLATFORM_URL`
    description: str | None = None  # shown with the resource field in the UI
    secret: bool = False  # a token: bound with `EnvVar`, never in a repr, run config or message
    keep_empty: bool = False  # "" means something (e.g. "no listing endpoint"), so it is not read as unset
    default: Callable[[Path], str | None] | None = None  # from the pipeline home, when the variable is unset


@dataclass(frozen=True)
class SourceEntry:
    """A source as the registry knows it, declared in its own folder (`sources/<name>/__init__.py`)."""

    name: str  # the `<source>` of a session key
    variables: tuple[Variable, ...]  # the first one enables the source
    configure: Callable[[Values], Any]  # -> its settings, None when not configured
    build: Callable[[Any, SharedHttp], Source]  # (its settings, the run's HTTP client) -> the source
    normalize: Normalizer
    # Whether its sessions' `task_description` is text a person wrote (a prompt, an execution's input): then
    # `EXPORT_CONTENT` governs it as content. A trace's root span name is not.
    task_is_content: bool = True

    @property
    def enabled_by(self) -> str:
        """The environment variable that enables the source, for messages."""
        return self.variables[0].env


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
