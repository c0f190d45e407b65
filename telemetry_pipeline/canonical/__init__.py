"""The canonical model every source is normalised into, and the rules every normaliser shares.

- `model`: the `sessions` and `events` tables, declared once (DDL, row types, Arrow schemas, inserts).
- `time`: the one timestamp parser (and its SQL twin for epoch numbers).
- `activity`: activity names, resources and statuses of agent events (Python and SQL macros).
- `pairing`: tool-call pairing (`tool_call_started` + `tool_call_completed` -> one call).
- `genai`: GenAI attribute aliases across instrumentations (a declaration), and the operation, tool and
  agent a span names (attributes first, then OpenTelemetry's `{operation} {subject}` span names).
- `agora_tracer`: Agora's `{node}.prep/.exec/.post` spans folded into one node run each; `{flow}.flow`.
- `values`: event ids, text, longs, JSON text.  `rows`: writing rows built in Python.
"""
