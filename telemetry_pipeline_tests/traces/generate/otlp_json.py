"""A span exporter that writes OTLP/JSON lines, the OpenTelemetry Collector `file` exporter's format.

Each `write_batch()` call writes the spans exported since the last one as one `ExportTraceServiceRequest` per line.
Spans are encoded by the OTel SDK's own protobuf encoder and turned into JSON by protobuf's JSON mapping; the only
change is the one the OTLP/JSON spec demands: trace and span ids as lowercase hex instead of base64.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def _hex_ids(obj: dict[str, Any]) -> None:
    for key in _ID_KEYS:
        if key in obj:
            obj[key] = base64.b64decode(obj[key]).hex()


def to_otlp_json(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    request = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    for resource_spans in request.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                _hex_ids(span)
                for link in span.get("links", []):
                    _hex_ids(link)
    return request


class OtlpJsonLinesExporter(SpanExporter):
    def __init__(self, path: Path) -> None:
        self._path = path
        self._pending: list[ReadableSpan] = []
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self._pending.extend(spans)
        return SpanExportResult.SUCCESS

    def write_batch(self) -> int:
        """Append the pending spans as one line; the number of spans written."""
        with self._lock:
            spans, self._pending = self._pending, []
        if spans:
            with self._path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(to_otlp_json(spans), ensure_ascii=False, separators=(",", ":")) + "\n")
        return len(spans)

    def shutdown(self) -> None:
        self.write_batch()


class Capture:
    """A global tracer provider whose spans go, synchronously, to an OTLP/JSON lines file, one line per session."""

    def __init__(self, service_name: str, path: Path) -> None:
        self.exporter = OtlpJsonLinesExporter(path)
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        trace.set_tracer_provider(self.provider)

    def end_session(self) -> int:
        """Write the spans ended since the last call as one line; how many."""
        self.provider.force_flush()
        return self.exporter.write_batch()

    def close(self) -> None:
        self.provider.shutdown()
