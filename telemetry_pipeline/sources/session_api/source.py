"""The session API that the Extract and agent telemetry services share: one fetch route per session
and a cursor-paginated listing (`GET <list_path>?since=&limit=&cursor=`, see docs/SOURCES.md)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from telemetry_pipeline.canonical.raw import RawSession
from telemetry_pipeline.canonical.time import format_time, to_utc
from telemetry_pipeline.sources.base import SessionRef, SourceError, checked_get, json_of, path_segment
from telemetry_pipeline.sources.session_api.settings import SessionApiSettings
from telemetry_pipeline.transport.http import RequestFailed, redact_url, request_with_retries

if TYPE_CHECKING:  # in annotations only: the run's client is handed in
    from telemetry_pipeline.sources.base import SharedHttp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionApiRoutes:
    fetch_path: str  # with `{session_id}`
    list_path: str | None  # None: the source has no listing; sessions are given by hand


class SessionApiSource:
    """A source served over HTTP by a session API. Stateless apart from the run's shared client."""

    def __init__(
        self, name: str, settings: SessionApiSettings, routes: SessionApiRoutes, http: SharedHttp, page_size: int = 500
    ) -> None:
        self.name = name
        self._base = settings.url.rstrip("/")
        if settings.list_path is not None:  # "" = the service has no listing endpoint
            routes = replace(routes, list_path=settings.list_path or None)
        self._routes = routes
        self._client = http.client
        self._retry = http.retry
        self._page_size = page_size

    def fetch(self, session_id: str) -> RawSession:
        url = self._base + self._routes.fetch_path.format(session_id=path_segment(session_id))
        where = f"{self.name} session {session_id!r} ({redact_url(url)})"
        build = lambda: self._client.build_request("GET", url)  # noqa: E731
        response = checked_get(self._client, build, self._retry, where, not_found="no such session")
        return RawSession(
            source=self.name,
            session_id=session_id,
            body=response.content,
            content_type=response.headers.get("Content-Type", ""),
            fetched_at=dt.datetime.now(dt.UTC),
            location=redact_url(url),
        )

    def list_sessions(self, since: dt.datetime | None) -> Iterator[SessionRef]:
        if self._routes.list_path is None:
            return
        url = self._base + self._routes.list_path
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": self._page_size}
            if since is not None:
                params["since"] = format_time(since)
            if cursor:
                params["cursor"] = cursor
            page = self._get_page(url, params)
            for item in page.get("sessions") or []:
                if isinstance(item, dict) and isinstance(item.get("session_id"), str) and item["session_id"]:
                    yield SessionRef(self.name, item["session_id"], to_utc(item.get("last_event_at")))
                else:
                    log.warning("%s listing: skipped an entry without a session_id: %.200r", self.name, item)
            next_cursor = page.get("next_cursor")
            if not next_cursor or next_cursor == cursor:
                return
            cursor = str(next_cursor)

    def _get_page(self, url: str, params: dict[str, str | int]) -> dict:
        where = f"{self.name} listing ({redact_url(url)})"
        build = lambda: self._client.build_request("GET", url, params=params)  # noqa: E731
        page = json_of(checked_get(self._client, build, self._retry, where), where)
        if not isinstance(page, dict):
            raise SourceError(f"{where}: listing is not a JSON object")
        return page

    def probe(self) -> tuple[bool, str]:
        """Reachability without fetching data: one listing page of one session."""
        url = self._base + (self._routes.list_path or "/")
        try:
            response = request_with_retries(
                self._client, lambda: self._client.build_request("GET", url, params={"limit": 1}), self._retry
            )
        except RequestFailed as exc:
            return False, f"unreachable: {exc}"
        if response.status_code == 200:
            return True, f"reachable ({redact_url(url)})"
        if response.status_code == 404 and self._routes.list_path is None:
            return True, f"reachable, no listing endpoint ({redact_url(url)})"
        return False, f"HTTP {response.status_code} from {redact_url(url)}"


def builder(name: str, routes: SessionApiRoutes) -> Callable[[SessionApiSettings, SharedHttp], SessionApiSource]:
    """How the registry builds the session-API source `name` served at `routes`."""
    return lambda settings, http: SessionApiSource(name, settings, routes, http)
