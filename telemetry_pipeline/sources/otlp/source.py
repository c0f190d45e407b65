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

Indexing. The inbox is scanned once per `OtlpSource` (one per run, built by `SourceSet`), on first use, as a
stream: each line is parsed (orjson) and let go, and the index keeps where each session's spans are (file, byte
offset, length of the line) and what it needs to tell them apart, never the spans themselves. A fetch reads, parses
and regroups the lines of its session alone. So a file of any size is listed and fetched in memory bounded by its
longest line (a `.json` file that is one pretty-printed document is read whole: the SDKs write those, small). A
line that is neither (e.g. a file cut off mid-write) is skipped with a warning naming file and line; the session
payloads of that file carry it in `skipped_lines`, the rest is exported. A file with nothing readable (a `.json`
still being written) is unreadable as a whole; the next run's scan reads it again.

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
import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from telemetry_pipeline.canonical.genai import ALIASES, GenAI
from telemetry_pipeline.canonical.raw import RawSession
from telemetry_pipeline.canonical.time import nanos_to_datetime
from telemetry_pipeline.sources.base import SessionNotFound, SessionRef, SharedHttp, SourceError
from telemetry_pipeline.sources.otlp.agora_export import agora_export_times, is_agora_export_span
from telemetry_pipeline.sources.otlp.otlp_json import (
    decode_value,
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


@dataclass(frozen=True)
class _Line:
    """Where one document (an `ExportTraceServiceRequest`, or one Agora export span) is: read again to fetch."""

    file: int  # index into _Index.files
    offset: int  # in bytes
    length: int
    number: int  # its line in the file (1-based); 0: the file is one document


@dataclass(frozen=True)
class _SpanKey:
    """What the index keeps of a span: enough to say which session it belongs to, and when."""

    trace_id: str | None
    own_session: str | None
    start: int | None
    end: int | None


@dataclass
class _Session:
    lines: list[int] = field(default_factory=list)  # into _Index.lines, in file order
    last_ns: int = 0
    newest_file_mtime: float = 0.0


@dataclass
class _Index:
    files: list[str] = field(default_factory=list)  # relative paths, sorted
    mtimes: list[float] = field(default_factory=list)
    lines: list[_Line] = field(default_factory=list)
    trace_sessions: dict[str, str] = field(default_factory=dict)  # trace -> the session its labelled spans name
    sessions: dict[str, _Session] = field(default_factory=dict)
    skipped: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # file -> skipped lines
    unreadable: dict[str, str] = field(default_factory=dict)  # file (relative) -> why nothing in it was read
    dropped_spans: int = 0

    def session_of(self, key: _SpanKey) -> str | None:
        """A span's own session, else its trace's, else its trace id; None: neither (the span is dropped)."""
        if key.own_session:
            return key.own_session
        if key.trace_id:
            return self.trace_sessions.get(key.trace_id, key.trace_id)
        return None


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
        body = orjson.dumps(_session_document(self.directory, index, session_id, session))
        files = sorted({index.lines[n].file for n in session.lines})
        return RawSession(
            source=NAME,
            session_id=session_id,
            body=body,
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


INDEX_DIR = ".telemetry-pipeline-index"  # in the inbox, hidden: what each file's scan found, reused while it stays
_CACHE_FORMAT = 1


@dataclass
class _FileScan:
    """What one file's scan found: its documents (offset, length, line number), each span's key by the document it
    is in, the lines that could not be read, or why nothing in it could."""

    lines: list[tuple[int, int, int]] = field(default_factory=list)
    spans: list[tuple[int, _SpanKey]] = field(default_factory=list)  # (document #, span)
    problems: list[dict[str, Any]] = field(default_factory=list)
    unreadable: str | None = None


def _build_index(directory: Path) -> _Index:
    if not directory.is_dir():
        raise SourceError(f"otlp inbox {directory} is not a directory (OTLP_INBOX_DIR)")
    index = _Index()
    spans: list[tuple[int, _SpanKey]] = []  # (line, span): all the scan keeps
    cache = _Cache(directory / INDEX_DIR)
    for path in _trace_files(directory):
        relative = path.relative_to(directory).as_posix()
        try:
            stat = path.stat()
            scan = cache.get(relative, stat)
            if scan is None:
                scan = _scan(path, relative)
                cache.put(relative, stat, scan)
        except OSError as exc:
            log.warning("otlp: cannot read %s: %s", path, exc.strerror)
            index.unreadable[relative] = f"cannot be read: {exc.strerror}"
            continue
        f = len(index.files)
        index.files.append(relative)
        index.mtimes.append(stat.st_mtime)
        first = len(index.lines)
        index.lines += [_Line(f, offset, length, number) for offset, length, number in scan.lines]
        spans += [(first + n, key) for n, key in scan.spans]
        if scan.unreadable:
            log.warning("otlp: cannot read %s: %s", relative, scan.unreadable)
            index.unreadable[relative] = scan.unreadable
        elif scan.problems:
            for problem in scan.problems:
                log.warning("otlp: skipped %s line %s: %s", relative, problem["line"], problem["error"])
            index.skipped[f] = scan.problems
    _assign_sessions(index, spans)
    if index.dropped_spans:
        log.warning("otlp: %d spans had neither a trace id nor a session id and were ignored", index.dropped_spans)
    return index


def _scan(path: Path, relative: str) -> _FileScan:
    """One pass over the file, a document at a time: where each is, and its spans' keys."""
    scan = _FileScan()
    for number, offset, length, document in _documents(path):
        try:
            if isinstance(document, Exception):
                raise document
            if not isinstance(document, Mapping):
                raise ValueError("not a JSON object")
            if get(document, "resourceSpans") is not None:
                keys = [key for _, _, key in _spans_of(document)]
            elif is_agora_export_span(document):
                keys = [_agora_export_key(document)]
            else:
                raise ValueError('neither OTLP/JSON ("resourceSpans") nor an Agora export span')
        except ValueError as exc:  # orjson's decode error included
            error = "not JSON" if isinstance(exc, orjson.JSONDecodeError) else str(exc)[:300]
            scan.problems.append({"file": relative, "line": number or None, "error": error})
            continue
        scan.spans += [(len(scan.lines), key) for key in keys]
        scan.lines.append((offset, length, number))
    if scan.problems and not scan.lines:
        first = scan.problems[0]
        where = f"line {first['line']}: " if first["line"] else ""
        scan.unreadable = f"not OTLP/JSON and not an Agora export ({where}{first['error']})"
    return scan


class _Cache:
    """Each file's scan, kept in the inbox's hidden `INDEX_DIR` and used while the file has the size and modification
    time it was scanned at: a run (each run builds its index) reads a file again only when it changed, and a file of
    600 MB is scanned once, by the discovery that found it. Where the inbox cannot be written, nothing is kept."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def get(self, relative: str, stat: os.stat_result) -> _FileScan | None:
        try:
            entry = orjson.loads(self._path(relative).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        if entry.get("key") != self._key(relative, stat):
            return None
        return _FileScan(lines=[(offset, length, number) for offset, length, number in entry["lines"]],
                         spans=[(n, _SpanKey(*key)) for n, key in entry["spans"]], problems=entry["problems"],
                         unreadable=entry["unreadable"])

    def put(self, relative: str, stat: os.stat_result, scan: _FileScan) -> None:
        entry = {"key": self._key(relative, stat), "lines": scan.lines, "problems": scan.problems,
                 "spans": [(n, (k.trace_id, k.own_session, k.start, k.end)) for n, k in scan.spans],
                 "unreadable": scan.unreadable}
        path = self._path(relative)
        try:
            self.directory.mkdir(exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.partial")
            partial.write_bytes(orjson.dumps(entry))
            os.replace(partial, path)  # whole or not at all, whoever reads it
        except OSError as exc:
            log.debug("otlp: the scan of %s is not kept (%s): the next run scans it again", relative, exc)

    def _path(self, relative: str) -> Path:
        return self.directory / (hashlib.sha1(relative.encode()).hexdigest() + ".json")

    @staticmethod
    def _key(relative: str, stat: os.stat_result) -> list[Any]:
        return [_CACHE_FORMAT, relative, stat.st_size, stat.st_mtime_ns]


def _documents(path: Path) -> Iterator[tuple[int, int, int, Any]]:
    """(line number, byte offset, length, the parsed document or the error it raised) of each non-empty line, read
    as a stream. A `.json` file whose first line is not a whole document is one pretty-printed document: it is read
    whole (line number 0). Lines end at "\n" only (JSON strings may hold U+2028 and the like)."""
    with path.open("rb") as stream:
        offset = 0
        for number, raw in enumerate(stream, start=1):
            length = len(raw)
            if raw.strip():
                document = _parsed(raw)
                if number == 1 and path.suffix == WHOLE_FILE_SUFFIX and isinstance(document, Exception):
                    yield 0, 0, path.stat().st_size, _parsed(path.read_bytes())
                    return
                yield number, offset, length, document
            offset += length


def _parsed(raw: bytes) -> Any:
    """The JSON document in `raw`, or the error it raises (text that is not UTF-8 is read with replacements, as
    the index always did)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "utf-8" not in str(exc).lower():
            return exc
    try:
        return orjson.loads(raw.decode("utf-8", errors="replace"))
    except orjson.JSONDecodeError as exc:
        return exc


def _read(directory: Path, index: _Index, line: _Line) -> Any:
    """A document the scan found, read and parsed again (the file is as the scan saw it within a run)."""
    with (directory / index.files[line.file]).open("rb") as stream:
        stream.seek(line.offset)
        document = _parsed(stream.read(line.length))
    if isinstance(document, Exception):
        raise SourceError(f"otlp: {index.files[line.file]} line {line.number} changed since it was listed: "
                          "export the session again") from None
    return document


def _agora_export_key(record: Mapping[str, Any]) -> _SpanKey:
    start, end = agora_export_times(record)
    attributes = record.get("attributes") or {}
    return _SpanKey(hex_id(record["trace_id"]), _session_attr(attributes), start, end)


def _spans_of(request: Any) -> Iterator[tuple[tuple[int, int], Any, _SpanKey]]:
    """((resource span #, scope span #), the span, its key) of every span of an `ExportTraceServiceRequest`."""
    for r, rs in enumerate(resource_spans(request)):
        resource_session = _session_attr(get(get(rs, "resource"), "attributes"))
        for s, ss in enumerate(scope_spans(rs)):
            for span in get(ss, "spans") or []:
                if not isinstance(span, Mapping):
                    continue
                yield (r, s), span, _SpanKey(
                    trace_id=hex_id(get(span, "traceId")),
                    own_session=_session_attr(get(span, "attributes")) or resource_session,
                    start=unix_nanos(get(span, "startTimeUnixNano")),
                    end=unix_nanos(get(span, "endTimeUnixNano")),
                )


_SESSION_KEYS = frozenset(ALIASES[GenAI.CONVERSATION_ID])


def _session_attr(attributes: Any) -> str | None:
    """The conversation id among `attributes` (OTLP's `[{key, value}]` or a plain dict), decoding only that value."""
    if isinstance(attributes, Mapping):
        found = {k: attributes[k] for k in _SESSION_KEYS if k in attributes}
    else:
        found = {item["key"]: decode_value(item.get("value")) for item in attributes or []
                 if isinstance(item, Mapping) and item.get("key") in _SESSION_KEYS}
    for key in ALIASES[GenAI.CONVERSATION_ID]:  # in the aliases' order of preference
        value = found.get(key)
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def _assign_sessions(index: _Index, spans: list[tuple[int, _SpanKey]]) -> None:
    earliest: dict[str, tuple[int, str]] = {}  # trace -> (start, session) of its earliest labelled span
    for _, key in spans:
        if key.own_session and key.trace_id:
            candidate = (key.start or 0, key.own_session)
            if key.trace_id not in earliest or candidate < earliest[key.trace_id]:
                earliest[key.trace_id] = candidate
    index.trace_sessions = {trace: session for trace, (_, session) in earliest.items()}
    for line, key in spans:
        session_id = index.session_of(key)
        if session_id is None:
            index.dropped_spans += 1
            continue
        session = index.sessions.setdefault(session_id, _Session())
        if not session.lines or session.lines[-1] != line:
            session.lines.append(line)
        session.last_ns = max(session.last_ns, key.end or key.start or 0)
        session.newest_file_mtime = max(session.newest_file_mtime, index.mtimes[index.lines[line].file])


def _session_document(directory: Path, index: _Index, session_id: str, session: _Session) -> dict[str, Any]:
    """The session's spans regrouped under their own resource and scope, in file order: its lines read again, one
    at a time, and only its spans kept."""
    resources: list[dict[str, Any]] = []
    agora: list[Any] = []
    for n in session.lines:
        document = _read(directory, index, index.lines[n])
        if is_agora_export_span(document):
            if index.session_of(_agora_export_key(document)) == session_id:
                agora.append(document)
            continue
        by_resource: dict[int, dict[str, Any]] = {}
        by_scope: dict[tuple[int, int], list[Any]] = {}
        rss = resource_spans(document)
        for (r, s), span, key in _spans_of(document):
            if index.session_of(key) != session_id:
                continue
            if (r, s) not in by_scope:
                rs = rss[r]
                ss = scope_spans(rs)[s]
                if r not in by_resource:
                    by_resource[r] = {"resource": get(rs, "resource") or {}, "scopeSpans": []}
                    if get(rs, "schemaUrl"):
                        by_resource[r]["schemaUrl"] = get(rs, "schemaUrl")
                    resources.append(by_resource[r])
                scope_doc: dict[str, Any] = {"scope": scope_of(ss), "spans": []}
                if get(ss, "schemaUrl"):
                    scope_doc["schemaUrl"] = get(ss, "schemaUrl")
                by_resource[r]["scopeSpans"].append(scope_doc)
                by_scope[(r, s)] = scope_doc["spans"]
            by_scope[(r, s)].append(span)
    files = sorted({index.lines[n].file for n in session.lines})
    document = {
        "format": FORMAT,
        "session_id": session_id,
        "files": [index.files[f] for f in files],
        "skipped_lines": [entry for f in files for entry in index.skipped.get(f, [])],
        "resourceSpans": resources,
    }
    if agora:
        document["agoraSpans"] = agora
    return document


def build(settings: OtlpSettings, http: SharedHttp) -> OtlpSource:
    return OtlpSource(settings.inbox_dir)  # files: the run's HTTP client is not needed
