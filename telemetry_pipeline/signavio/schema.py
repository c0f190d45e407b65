"""The two Signavio tables: column order, Avro types, primary keys (docs/INTERFACE.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

TIMESTAMP = {"type": "long", "logicalType": "timestamp-millis"}


@dataclass(frozen=True)
class Column:
    name: str
    type: Any  # Avro type: "string", "long", TIMESTAMP, ...
    nullable: bool = True

    def avro(self) -> dict[str, Any]:
        return {"name": self.name, "type": ["null", self.type] if self.nullable else self.type}


@dataclass(frozen=True)
class Table:
    suffix: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]

    def name(self, dataset: str) -> str:
        return f"{dataset_prefix(dataset)}_{self.suffix}"

    def avro_schema(self, dataset: str) -> dict[str, Any]:
        return {"type": "record", "name": self.name(dataset), "fields": [c.avro() for c in self.columns]}

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


RUNS = Table(
    suffix="runs",
    primary_key=("agent_run_id",),
    columns=(
        Column("agent_run_id", "string", nullable=False),
        Column("agent_name", "string"),
        Column("task_id", "string"),
        Column("task_description", "string"),
        Column("start_time", TIMESTAMP),
        Column("end_time", TIMESTAMP),
        Column("status", "string", nullable=False),
        Column("outcome_summary", "string"),
        Column("latency_ms", "long"),
        Column("notes", "string"),
        Column("service_name", "string"),
        Column("workflow_name", "string"),
        Column("workflow_version", "string"),
        Column("agent_type", "string"),
        Column("agent_state", "string"),
        Column("prompt_metrics", "string"),
        Column("tools_used", "string"),
        Column("llm_calls", "string"),
        Column("process_steps", "string"),
        Column("source", "string", nullable=False),
        Column("event_count", "long", nullable=False),
        # The mining log (issue 30), appended: a dataset that has the columns above keeps them as they are.
        Column("input_tokens", "long"),
        Column("output_tokens", "long"),
        Column("cost_usd", "double"),
        Column("llm_call_count", "long"),
        Column("tool_call_count", "long"),
        Column("tool_error_count", "long"),
        Column("agent_count", "long"),
        # Conformance to the playbooks (issue 31), appended after the mining log's.
        Column("conformance", "string"),
        Column("deviation_count", "long"),
        Column("deviations", "string"),
    ),
)

EVENTS = Table(
    suffix="events",
    primary_key=("event_id",),
    columns=(
        Column("event_id", "string", nullable=False),
        Column("case_id", "string", nullable=False),
        Column("activity", "string", nullable=False),
        Column("event_time", TIMESTAMP, nullable=False),
        Column("end_time", TIMESTAMP),
        Column("resource", "string"),
        Column("event_type", "string", nullable=False),
        Column("status", "string"),
        Column("tool_name", "string"),
        Column("model", "string"),
        Column("latency_ms", "long"),
        Column("input_tokens", "long"),
        Column("output_tokens", "long"),
        Column("error", "string"),
        Column("attributes", "string"),
        Column("source", "string", nullable=False),
        Column("cost_usd", "double"),  # appended by the mining log (issue 30)
        Column("deviation", "string"),  # appended by the playbooks (issue 31)
    ),
)

DEFAULT_DATASET = "agent_telemetry"


def dataset_prefix(dataset: str) -> str:
    """`custom-set` -> `custom_set`; a leading digit gets a `_` (Avro names cannot start with one)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", dataset or DEFAULT_DATASET)
    return f"_{name}" if name[0].isdigit() else name
