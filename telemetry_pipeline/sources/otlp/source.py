"""OpenTelemetry trace files (OTLP/JSON) in an inbox directory (docs/SOURCES.md, `otlp`).

Files: `*.json` holds one `ExportTraceServiceRequest`; any other file is read line by line, each line one
`ExportTraceServiceRequest` (`.jsonl`, the Collector's file exporter) or one span of Agora's local export
(the SDK's offline fallback, `JSONFileExporter`: `{"timestamp", "name", "trace_id", "attributes"}`).
Sub-directories are scanned too; hidden files and directories (`.name`) are not. Keys may be
camelCase (`resourceSpans`, `startTimeUnixNano`) or snake_case (`resource_spans`, `start_time_unix_nano`),
ids hex in any case, nanoseconds strings or numbers, enums (kind, status code) ints or names.

No file is ignored silently: a file with nothing the inbox can read (not OTLP/JSON, not an Agora export)
is reported by `unreadable_files()` with why (discovery's metadata and `discover` name it), and read
again on the next scan.

Agora's export has no span ids, parents, start/end or status: a span's end is its `timestamp` (the SDK's
naive local time, taken as UTC), its start that minus `duration_ms` (or `total_duration_ms`).

Sessions. A span belongs to the session named by its `gen_ai.conversation.id`, else its `session.id`
(span attribute first, then resource attribute). A span without either takes the conversation of its
trace (the one carried by the trace's earliest span that has one), else its trace id (lowercase hex).
So a conversation spread over several traces and files is one session, and a trace whose root alone
carries the conversation id stays whole.

Indexing. The inbox is scanned and parsed once per `OtlpSource` (one per run, built by `SourceSet`),
on first use; listing and every fetch of the run read that snapshot, so no session id ever builds a
path. A line that is neither (e.g. a file cut off mid-write) is skipped with a warning naming file and
line; the session payloads of that file carry it in `skipped_lines`, the rest is exported. A `.json`
file that is not JSON (still being written) is unreadable as a whole; the next run's scan reads it again.

Finished sessions and late spans. A session's `last_event_at` is its newest span end (or start when a
span has no end). Discovery takes a session once that is `settle_seconds` old (SESSION_SETTLE_SECONDS)
and never lists a known key again, so a finished session is exported once. Spans that arrive later
for an already exported session are NOT exported automatically; `export --force otlp:<id>` re-reads
every file and re-exports the session whole (event ids are deterministic, so nothing is duplicated).
Set the settle window longer than your traces' longest pause to avoid that case.
`list_sessions(since)` lists a session when its last span ends at/after `since` OR one of its files
changed at/after `since`: files arrive in any order, so traces older than the watermark dropped into
the inbox later are still found; known keys are filtered out by discovery.

Payload (`RawSession.body`): an `ExportTraceServiceRequest` holding only the session's spans — each
span object verbatim, under its original resource and scope (also verbatim) — plus
`{"format": "otlp-session/1", "session_id", "files": [...], "skipped_lines": [{"file","line","error"}]}`,
and the session's Agora export spans, verbatim, under `"agoraSpans"`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from telemetry_pipeline.canonical.genai import ALIASES, GenAI
from telemetry_pipeline.canonical.time import nanos_to_datetime
from telemetry_pipeline.sources.base import RawSession, SessionNotFound, SessionRef, SharedHttp, SourceError
from telemetry_pipeline.sources.otlp.agora_export import agora_export_times, is_agora_export_span
from telemetry_pipeline.sources.otlp.otlp_json import (
    attributes_of,
    get,
    hex_id,
    resource_spans,
    scope_of,
    scope_spans,
    unix_nanos,
)
from telemetry_pipeline.sources.otlp.settings import OtlpSettings

log = logging.getLogger(__name__)

NAME = "otlp"
FORMAT = "otlp-session/1"
WHOLE_FILE_SUFFIX = ".json"  # one document per file; any other file is read as JSON Lines


# --------------------------------------------------------------------------------------------------
# The per-run index of the inbox


@dataclass
class _Span:
    file: int  # index into _Index.files
    group: tuple[int, int, int, int] | None  # (file, line, resource span #, scope span #); None: an Agora export span
    span: Mapping[str, Any]
    trace_id: str | None
    own_session: str | None
    start: int | None
    end: int | None


@dataclass
class _Session:
    spans: list[_Span] = field(default_factory=list)
    last_ns: int = 0
    newest_file_mtime: float = 0.0


@dataclass
class _Index:
    files: list[str] = field(default_factory=list)  # relative paths, sorted
    mtimes: list[float] = field(default_factory=list)
    groups: dict[tuple[int, int, int, int], tuple[Any, Any, Any]] = field(
        default_factory=dict
    )  # resource span, scope span
    sessions: dict[str, _Session] = field(default_factory=dict)
    skipped: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # file -> skipped lines
    unreadable: dict[str, str] = field(default_factory=dict)  # file (relative) -> why nothing in it was read
    dropped_spans: int = 0


class OtlpSource:
    """The trace files in `directory`, indexed once per instance (one instance per run)."""

    name = NAME

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._index: _Index | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OtlpSource({str(self.directory)!r})"

    def list_sessions(self, since: dt.datetime | None) -> Iterator[SessionRef]:
        index = self._get_index()
        since_ns = None if since is None else int(since.timestamp() * 1e9)
        since_s = None if since is None else since.timestamp()
        listed = sorted(index.sessions.items(), key=lambda kv: (kv[1].last_ns, kv[0]))
        for session_id, session in listed:
            if since_ns is not None and since_s is not None and session.last_ns < since_ns \
                    and session.newest_file_mtime < since_s:
                continue
            yield SessionRef(NAME, session_id, nanos_to_datetime(session.last_ns) if session.last_ns else None)

    def fetch(self, session_id: str) -> RawSession:
        index = self._get_index()
        session = index.sessions.get(session_id)
        if session is None:
            raise SessionNotFound(f"otlp session {session_id!r}: no span of this session in {self.directory}")
        body = _session_document(index, session_id, session)
        files = sorted({s.file for s in session.spans})
        return RawSession(
            source=NAME,
            session_id=session_id,
            body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
            content_type="application/json",
            fetched_at=dt.datetime.now(dt.UTC),
            location="; ".join(str(self.directory / index.files[f]) for f in files)[:1000],
        )

    def unreadable_files(self) -> dict[str, str]:
        """Files of the inbox with nothing readable in them (relative path -> why)."""
        return dict(self._get_index().unreadable)

    def probe(self) -> tuple[bool, str]:
        if not self.directory.is_dir():
            return False, f"{self.directory} is not a directory"
        if not os.access(self.directory, os.R_OK | os.X_OK):
            return False, f"{self.directory} is not readable"
        count = sum(1 for _ in _trace_files(self.directory))
        return True, f"readable: {self.directory} ({count} trace files)"

    # -- the index ----------------------------------------------------------------------------------

    def _get_index(self) -> _Index:
        with self._lock:
            if self._index is None:
                self._index = _build_index(self.directory)
            return self._index


def _trace_files(directory: Path) -> Iterator[Path]:
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                yield Path(root) / name


def _build_index(directory: Path) -> _Index:
    if not directory.is_dir():
        raise SourceError(f"otlp inbox {directory} is not a directory (OTLP_INBOX_DIR)")
    index = _Index()
    spans: list[_Span] = []
    for path in _trace_files(directory):
        relative = path.relative_to(directory).as_posix()
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
            mtime = path.stat().st_mtime
        except OSError as exc:
            log.warning("otlp: cannot read %s: %s", path, exc.strerror)
            index.unreadable[relative] = f"cannot be read: {exc.strerror}"
            continue
        f = len(index.files)
        index.files.append(relative)
        index.mtimes.append(mtime)
        if path.suffix == WHOLE_FILE_SUFFIX:
            documents: list[tuple[int, str]] = [(0, text)]
        else:
            # "\n" only: str.splitlines() would also split at U+2028 etc., which JSON strings may hold.
            documents = [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
        problems: list[dict[str, Any]] = []
        found = 0
        for line, doc in documents:
            try:
                document = json.loads(doc)
                if not isinstance(document, Mapping):
                    raise ValueError("not a JSON object")
                if get(document, "resourceSpans") is not None:
                    new = list(_spans_of(index, f, line, document))
                elif is_agora_export_span(document):
                    new = [_agora_export_span(f, document)]
                else:
                    raise ValueError('neither OTLP/JSON ("resourceSpans") nor an Agora export span')
            except ValueError as exc:  # JSONDecodeError included
                error = "not JSON" if isinstance(exc, json.JSONDecodeError) else str(exc)[:300]
                problems.append({"file": relative, "line": line or None, "error": error})
                continue
            found += 1
            spans.extend(new)
        if problems and not found:
            first = problems[0]
            where = f"line {first['line']}: " if first["line"] else ""
            why = f"not OTLP/JSON and not an Agora export ({where}{first['error']})"
            log.warning("otlp: cannot read %s: %s", relative, why)
            index.unreadable[relative] = why
        elif problems:
            for problem in problems:
                log.warning("otlp: skipped %s line %s: %s", relative, problem["line"], problem["error"])
            index.skipped[f] = problems
    _assign_sessions(index, spans)
    if index.dropped_spans:
        log.warning("otlp: %d spans had neither a trace id nor a session id and were ignored", index.dropped_spans)
    return index


def _agora_export_span(f: int, record: Mapping[str, Any]) -> _Span:
    start, end = agora_export_times(record)
    attributes = record.get("attributes") or {}
    return _Span(file=f, group=None, span=record, trace_id=hex_id(record["trace_id"]),
                 own_session=_session_attr(attributes), start=start, end=end)


def _spans_of(index: _Index, f: int, line: int, request: Any) -> Iterator[_Span]:
    for r, rs in enumerate(resource_spans(request)):
        resource_attrs = attributes_of(get(rs, "resource"))
        resource_session = _session_attr(resource_attrs)
        for s, ss in enumerate(scope_spans(rs)):
            group = (f, line, r, s)
            index.groups[group] = (rs, ss, scope_of(ss))
            for span in get(ss, "spans") or []:
                if not isinstance(span, Mapping):
                    continue
                yield _Span(
                    file=f,
                    group=group,
                    span=span,
                    trace_id=hex_id(get(span, "traceId")),
                    own_session=_session_attr(attributes_of(span)) or resource_session,
                    start=unix_nanos(get(span, "startTimeUnixNano")),
                    end=unix_nanos(get(span, "endTimeUnixNano")),
                )


def _session_attr(attributes: Mapping[str, Any]) -> str | None:
    for key in ALIASES[GenAI.CONVERSATION_ID]:
        value = attributes.get(key)
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def _assign_sessions(index: _Index, spans: list[_Span]) -> None:
    trace_session: dict[str, tuple[int, str]] = {}  # trace -> (start, session) of its earliest labelled span
    for span in spans:
        if span.own_session and span.trace_id:
            candidate = (span.start or 0, span.own_session)
            if span.trace_id not in trace_session or candidate < trace_session[span.trace_id]:
                trace_session[span.trace_id] = candidate
    for span in spans:
        session_id = span.own_session
        if session_id is None and span.trace_id:
            session_id = trace_session[span.trace_id][1] if span.trace_id in trace_session else span.trace_id
        if session_id is None:
            index.dropped_spans += 1
            continue
        session = index.sessions.setdefault(session_id, _Session())
        session.spans.append(span)
        session.last_ns = max(session.last_ns, span.end or span.start or 0)
        session.newest_file_mtime = max(session.newest_file_mtime, index.mtimes[span.file])


def _session_document(index: _Index, session_id: str, session: _Session) -> dict[str, Any]:
    """The session's spans regrouped under their own resource and scope, in file order."""
    by_resource: dict[tuple[int, int, int], dict[str, Any]] = {}
    by_scope: dict[tuple[int, int, int, int], list[Any]] = {}
    agora: list[Any] = []
    for span in session.spans:
        if span.group is None:
            agora.append(span.span)
            continue
        f, line, r, _s = span.group
        rs, ss, scope = index.groups[span.group]
        if span.group not in by_scope:
            resource_doc = by_resource.get((f, line, r))
            if resource_doc is None:
                resource_doc = {"resource": get(rs, "resource") or {}, "scopeSpans": []}
                if get(rs, "schemaUrl"):
                    resource_doc["schemaUrl"] = get(rs, "schemaUrl")
                by_resource[(f, line, r)] = resource_doc
            scope_doc: dict[str, Any] = {"scope": scope, "spans": []}
            if get(ss, "schemaUrl"):
                scope_doc["schemaUrl"] = get(ss, "schemaUrl")
            resource_doc["scopeSpans"].append(scope_doc)
            by_scope[span.group] = scope_doc["spans"]
        by_scope[span.group].append(span.span)
    files = sorted({s.file for s in session.spans})
    document = {
        "format": FORMAT,
        "session_id": session_id,
        "files": [index.files[f] for f in files],
        "skipped_lines": [entry for f in files for entry in index.skipped.get(f, [])],
        "resourceSpans": list(by_resource.values()),
    }
    if agora:
        document["agoraSpans"] = agora
    return document


def build(settings: OtlpSettings, http: SharedHttp) -> OtlpSource:
    return OtlpSource(settings.inbox_dir)  # files: the run's HTTP client is not needed
