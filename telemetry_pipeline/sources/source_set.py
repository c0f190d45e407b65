"""The configured sources of one run, built from the registry, sharing one HTTP client."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from types import TracebackType

from telemetry_pipeline.settings import SourcesSettings
from telemetry_pipeline.sources.base import RawSession, SessionNotFound, SessionRef, SharedHttp, Source, SourceError
from telemetry_pipeline.sources.otlp.source import OtlpSource
from telemetry_pipeline.sources.registry import REGISTRY, SOURCES, parse_key
from telemetry_pipeline.transport.http import make_client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchResult:
    raw: list[RawSession]
    errors: dict[str, str]  # key -> what went wrong, for the keys that could not be fetched
    not_found: list[str]  # of those, the ones their source answered it does not have


class SourceSet:
    """Context manager: the configured sources for one run (those of the registry that `settings`
    configures), sharing one HTTP client, fetching with bounded concurrency."""

    def __init__(self, settings: SourcesSettings) -> None:
        self.settings = settings
        self._client = make_client(settings.http.timeout, max_connections=settings.fetch_concurrency)
        http = SharedHttp(self._client, settings.http.retry)
        values = settings.plain()
        self.sources: dict[str, Source] = {
            entry.name: entry.build(configured, http)
            for entry in REGISTRY
            if (configured := entry.configure(values)) is not None
        }

    def __enter__(self) -> SourceSet:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._client.close()

    def get(self, name: str) -> Source:
        source = self.sources.get(name)
        if source is None:
            hint = SOURCES[name].enabled_by if name in SOURCES else "its URL"
            raise SourceError(f"source {name!r} is not configured (set {hint})")
        return source

    def fetch_many(self, keys: Iterable[str]) -> FetchResult:
        """Fetch every key, at most `fetch_concurrency` at once. One failure never stops the others."""

        def fetch_one(key: str) -> RawSession | Exception:
            try:
                source_name, session_id = parse_key(key)
                return self.get(source_name).fetch(session_id)
            except (SourceError, ValueError) as exc:
                return exc

        keys = list(keys)
        raw: list[RawSession] = []
        errors: dict[str, str] = {}
        not_found: list[str] = []
        with ThreadPoolExecutor(
            max_workers=max(1, self.settings.fetch_concurrency), thread_name_prefix="fetch"
        ) as pool:
            for key, outcome in zip(keys, pool.map(fetch_one, keys), strict=True):
                if isinstance(outcome, Exception):
                    errors[key] = str(outcome)
                    if isinstance(outcome, SessionNotFound):
                        not_found.append(key)
                else:
                    raw.append(outcome)
        return FetchResult(raw, errors, not_found)

    def unreadable_files(self) -> dict[str, str]:
        """The inbox's files with nothing readable in them (path -> why): reported, never silently ignored."""
        inbox = self.sources.get("otlp")
        return inbox.unreadable_files() if isinstance(inbox, OtlpSource) else {}

    def list_sessions(
        self, since: Mapping[str, dt.datetime | None], deadline: dt.timedelta | None = None
    ) -> tuple[list[SessionRef], dict[str, str]]:
        """Every source's listing since its own watermark, side by side, in registry order. Each source's failure
        is its own: one that raises, or is still listing at `deadline`, is reported (its listing dropped; its
        watermark stays) and the others' listings are kept."""

        def list_one(name: str) -> list[SessionRef]:
            return list(self.sources[name].list_sessions(since.get(name)))

        pool = ThreadPoolExecutor(max_workers=max(1, len(self.sources)), thread_name_prefix="list")
        futures = {name: pool.submit(list_one, name) for name in self.sources}
        try:
            done, _ = wait(futures.values(), timeout=deadline.total_seconds() if deadline else None)
        finally:
            # A hung listing is abandoned, not waited for: closing the shared client (`__exit__`) ends its request.
            pool.shutdown(wait=False, cancel_futures=True)
        found: list[SessionRef] = []
        errors: dict[str, str] = {}
        for name, future in futures.items():
            exc = future.exception() if future in done else None
            if future not in done:
                errors[name] = f"source {name}: listing still not done after {deadline}; left for the next pass"
            elif isinstance(exc, SourceError):
                errors[name] = str(exc)
            elif exc is not None:  # a fault of one source's code must not hide the other sources' sessions
                errors[name] = f"source {name}: listing failed: {type(exc).__name__}: {exc}"
            else:
                found.extend(future.result())
                continue
            log.warning("discovery: %s", errors[name])
        return found, errors
