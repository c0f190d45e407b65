"""The canonical model, declared once: `sessions` and `events` are the row dataclasses below.

Every other form is derived from these declarations: the `CREATE TABLE` statements (DuckDB and
PostgreSQL), the Arrow schemas the Python normalisers load through, and the column lists of every
insert (always explicit, never `SELECT *` in table order). A column's SQL type follows its Python type
(`str` text, `int` long, `datetime` UTC timestamp, `Json` JSON text, `bytes` bytes); `| None` makes it nullable.
The warehouse declares its own tables (`raw_telemetry`, `export_claims`) the same way.
"""

from __future__ import annotations

import datetime as dt
import types
import typing
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Literal, NewType

import pyarrow as pa

Json = NewType("Json", str)  # JSON text: stored in a JSON column
Dialect = Literal["duckdb", "postgres", "sqlite"]

_KINDS: dict[Any, str] = {
    str: "text", int: "long", float: "double", dt.datetime: "timestamp", Json: "json", bytes: "bytes",
}
SQL_TYPES: dict[str, dict[str, str]] = {
    "duckdb": {"text": "VARCHAR", "long": "BIGINT", "double": "DOUBLE", "timestamp": "TIMESTAMPTZ", "json": "JSON",
               "bytes": "BLOB"},
    # JSON, not JSONB: it keeps the text as written (key order, duplicates) and accepts the escape \u0000,
    # which JSONB refuses (hostile input has it: one such attribute would fail a whole batch's COPY).
    "postgres": {"text": "TEXT", "long": "BIGINT", "double": "DOUBLE PRECISION", "timestamp": "TIMESTAMPTZ",
                 "json": "JSON", "bytes": "BYTEA"},
    # The embedded warehouse's payload file (`warehouse.raw_file`): times as ISO 8601 text in UTC.
    "sqlite": {"text": "TEXT", "long": "INTEGER", "double": "REAL", "timestamp": "TEXT", "json": "TEXT",
               "bytes": "BLOB"},
}
_ARROW_TYPES: dict[str, pa.DataType] = {
    "text": pa.string(), "long": pa.int64(), "double": pa.float64(), "timestamp": pa.timestamp("us", tz="UTC"),
    "json": pa.string(), "bytes": pa.binary(),
}


class Outcome(StrEnum):
    """A session's outcome: the `status` of `sessions` and of the runs table. Every normaliser decides it by
    `canonical.activity.session_outcome` (or its SQL macro)."""

    COMPLETED = "completed"
    PARTIAL = "partial"  # it recovered from failures
    FAILED = "failed"  # it ended on a failure


def _doc(text: str, *, key: bool = False) -> dict[str, Any]:
    """Field metadata: what the column means (a comment in the DDL), and whether it is the primary key."""
    return {"doc": text, "primary_key": key}


class Conformance(StrEnum):
    """A session's verdict against the playbooks (`policy.conformance`): `conformance` of `sessions` and of the
    runs table."""

    CONFORMING = "conforming"  # one or more playbooks matched it, and it broke none of their rules
    DEVIATING = "deviating"  # it broke a rule of a playbook that matched it
    UNCHECKED = "unchecked"  # no playbook matched it


@dataclass
class SessionRow:
    """One agent session (a case)."""

    session_key: str = field(metadata=_doc("<source>:<session_id>", key=True))
    source: str
    session_id: str
    agent_name: str | None
    task_description: str | None
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    status: str = field(metadata=_doc(" | ".join(Outcome)))  # an Outcome
    service_name: str | None = None
    workflow_name: str | None = None
    workflow_version: str | None = None
    agent_type: str | None = None
    agent_state: str | None = None
    event_count: int = 0
    prompt_metrics: Json | None = None
    source_metrics: Json | None = field(default=None, metadata=_doc("the source's own summary, kept as is"))
    normalized_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    # Checked against the playbooks at export (migration 5): a `Conformance`; what it broke is in `deviations`.
    conformance: str | None = None


@dataclass
class EventRow:
    """One activity of a session (an event of the event log)."""

    event_id: str = field(metadata=_doc("deterministic: same event, same id, on every run", key=True))
    session_key: str
    seq: int = field(metadata=_doc("position of the (first) source event in the payload"))
    activity: str
    event_type: str
    event_time: dt.datetime
    end_time: dt.datetime | None
    resource: str | None
    status: str | None
    tool_name: str | None
    model: str | None
    latency_ms: int | None
    input_tokens: int | None
    output_tokens: int | None
    error: str | None
    attributes: Json | None
    # What a model call cost (migration 4): the usage that prices it, and the price, the trace's own when it has one,
    # else a maintained price table's at the event's time (`canonical.cost`). `resource` is the agent that acted.
    provider: str | None = None
    cache_read_tokens: int | None = field(default=None, metadata=_doc("of input_tokens, read from a cache"))
    cache_write_tokens: int | None = field(default=None, metadata=_doc("of input_tokens, written to a cache"))
    reasoning_tokens: int | None = field(default=None, metadata=_doc("of output_tokens, spent reasoning"))
    cost_usd: float | None = None


@dataclass
class DeviationRow:
    """A rule of a playbook that a session broke (`policy.conformance`), at one of its events or as a whole."""

    deviation_id: str = field(metadata=_doc("deterministic: the session, playbook, rule, event and detail", key=True))
    session_key: str
    playbook: str
    rule: str
    detail: str
    event_id: str | None = field(default=None, metadata=_doc("the event that broke it; NULL: the session did"))


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # text | long | timestamp | json | bytes
    nullable: bool
    primary_key: bool
    doc: str


@dataclass(frozen=True)
class Table:
    """A canonical table: its name, its row type and the columns derived from that type."""

    name: str
    row_type: type
    columns: tuple[Column, ...]

    @classmethod
    def of(cls, name: str, row_type: type) -> Table:
        hints = typing.get_type_hints(row_type)
        columns = []
        for f in fields(row_type):
            python_type, nullable = _unwrap_optional(hints[f.name])
            columns.append(Column(f.name, _KINDS[python_type], nullable, f.metadata.get("primary_key", False),
                                  f.metadata.get("doc", "")))
        return cls(name, row_type, tuple(columns))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def primary_key(self) -> str:
        return next(c.name for c in self.columns if c.primary_key)

    def column_list(self) -> str:
        return ", ".join(self.names)

    def ddl(self, dialect: Dialect = "duckdb") -> str:
        """`CREATE TABLE IF NOT EXISTS` for this table in `dialect`."""
        types_ = SQL_TYPES[dialect]
        lines = []
        for i, c in enumerate(self.columns):
            constraint = " PRIMARY KEY" if c.primary_key else "" if c.nullable else " NOT NULL"
            comma = "," if i < len(self.columns) - 1 else ""
            comment = f"  -- {c.doc}" if c.doc else ""
            lines.append(f"    {c.name} {types_[c.kind]}{constraint}{comma}{comment}")
        return f"CREATE TABLE IF NOT EXISTS {self.name} (\n" + "\n".join(lines) + "\n);\n"

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([(c.name, _ARROW_TYPES[c.kind]) for c in self.columns])

    def insert_sql(self, relation: str) -> str:
        """`INSERT INTO <table> (<columns>) SELECT <columns> FROM relation` (DuckDB; JSON text cast to JSON)."""
        select = ", ".join(f"{c.name}::JSON" if c.kind == "json" else c.name for c in self.columns)
        return f"INSERT INTO {self.name} ({self.column_list()}) SELECT {select} FROM {relation}"

    def to_arrow(self, rows: typing.Sequence[Any]) -> pa.Table:
        names = self.names
        return pa.Table.from_pylist([{n: getattr(r, n) for n in names} for r in rows], schema=self.arrow_schema())


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


SESSIONS = Table.of("sessions", SessionRow)
EVENTS = Table.of("events", EventRow)
DEVIATIONS = Table.of("deviations", DeviationRow)
TABLES = (SESSIONS, EVENTS, DEVIATIONS)


def ddl(dialect: Dialect = "duckdb") -> str:
    """The canonical tables' DDL in `dialect`."""
    return "".join(t.ddl(dialect) for t in TABLES)
