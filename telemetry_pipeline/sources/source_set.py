"""The configured sources of one run, built from the registry, sharing one HTTP client."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from telemetry_pipeline.canonical.raw import RawSession
from telemetry_pipeline.sources.base import SessionNotFound, SessionRef, SharedHttp, Source, SourceError
from telemetry_pipeline.sources.otlp.source import OtlpSource
from telemetry_pipeline.sources.registry import REGISTRY, SOURCES, parse_key
from telemetry_pipeline.sources.settings import SourcesSettings
from telemetry_pipeline.transport.http import make_client

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


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

    def fetch_chunks(self, keys: Iterable[str], max_bytes: float = float("inf")) -> Iterator[FetchResult]:
        """Every key, fetched at most `fetch_concurrency` at once, in chunks of about `max_bytes` of payload: no new
        fetch starts once a chunk holds that much (those under way finish in it), so what a run holds at once is
        bounded by configuration, not by the size of the sessions. One failure never stops the others."""
        keys = list(keys)
        while keys:
            fetched = _Tally()
            outcomes = fan_out(functools.partial(self._fetch_one, fetched), keys, self.settings.fetch_concurrency,
                               catch=(SourceError, ValueError), enough=functools.partial(fetched.reached, max_bytes))
            chunk, keys = keys[:len(outcomes)], keys[len(outcomes):]  # the items are taken in order
            yield _fetch_result(chunk, outcomes)

    def _fetch_one(self, fetched: _Tally, key: str) -> RawSession:
        source_name, session_id = parse_key(key)
        raw = self.get(source_name).fetch(session_id)
        fetched.add(len(raw.body))
        return raw

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

        # A hung listing is abandoned, not waited for: closing the shared client (`__exit__`) ends its request.
        outcomes = fan_out(list_one, list(self.sources), len(self.sources), deadline, catch=Exception)
        found: list[SessionRef] = []
        errors: dict[str, str] = {}
        for name in self.sources:
            if name not in outcomes:
                errors[name] = f"source {name}: listing still not done after {deadline}; left for the next pass"
                log.warning("discovery: %s", errors[name])
                continue
            outcome = outcomes[name]
            if isinstance(outcome, SourceError):
                errors[name] = str(outcome)
            elif isinstance(outcome, Exception):  # a fault of one source's code must not hide the others' sessions
                errors[name] = f"source {name}: listing failed: {type(outcome).__name__}: {outcome}"
            else:
                found.extend(outcome)
                continue
            log.warning("discovery: %s", errors[name])
        return found, errors


class _Tally:
    """Bytes fetched so far, added to by the fetching threads."""

    def __init__(self) -> None:
        self.total = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.total += n

    def reached(self, limit: float) -> bool:
        return self.total >= limit


def _fetch_result(keys: list[str], outcomes: Mapping[str, RawSession | Exception]) -> FetchResult:
    raw: list[RawSession] = []
    errors: dict[str, str] = {}
    not_found: list[str] = []
    for key in keys:
        outcome = outcomes[key]
        if isinstance(outcome, Exception):
            errors[key] = str(outcome)
            if isinstance(outcome, SessionNotFound):
                not_found.append(key)
        else:
            raw.append(outcome)
    return FetchResult(raw, errors, not_found)


def fan_out(work: Callable[[T], R], items: Sequence[T], workers: int, deadline: dt.timedelta | None = None,
            catch: type[Exception] | tuple[type[Exception], ...] = (),
            enough: Callable[[], bool] = lambda: False) -> dict[T, R | Exception]:
    """`work` on the items in order, in at most `workers` threads; {item: its result, or the exception of `catch`
    it raised} for the items done by `deadline` (every item when None). Once `enough()` says so, no further item is
    taken: the result then holds a prefix of `items`. Any other exception is raised here.

    The threads are daemons, so an interrupt (Ctrl-C, SIGTERM) ends the caller at once: a `ThreadPoolExecutor`'s
    threads are joined before its process may exit, so a fetch waiting on a source that does not answer held a
    stopped run for its timeout times its attempts (a CLI export took 126 s to stop, issue 28)."""
    done: dict[T, R | Exception] = {}
    failure: list[BaseException] = []
    lock = threading.Lock()
    taken = 0

    def worker() -> None:
        nonlocal taken
        while True:
            with lock:
                if taken == len(items) or failure or enough():
                    return
                item, taken = items[taken], taken + 1
            try:
                outcome: R | Exception = work(item)
            except catch as exc:
                outcome = exc
            except BaseException as exc:  # a fault of our own code: raised in the caller, not lost in a thread
                failure.append(exc)
                return
            with lock:
                done[item] = outcome

    threads = [threading.Thread(target=worker, name=f"fan-out-{n}", daemon=True)
               for n in range(max(1, min(workers, len(items))))]
    for thread in threads:
        thread.start()
    end = None if deadline is None else time.monotonic() + deadline.total_seconds()
    for thread in threads:  # `join` gives way to a signal's exception on POSIX
        thread.join(None if end is None else max(0.0, end - time.monotonic()))
    with lock:
        if failure:
            raise failure[0]
        return dict(done)
