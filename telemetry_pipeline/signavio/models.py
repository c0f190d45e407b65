"""What a destination is given (one table upload) and what it answers (a confirmed or failed load)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

COMPLETED = "COMPLETED"
OUTBOX = "OUTBOX"
#: Terminal failure states of the Ingestion API, plus our own for loads that never got a state.
FAILED_STATES = frozenset(
    {
        "REQUEST_VALIDATION_FAILED",
        "FILE_CONVERSION_FAILED",
        "FILE_UPLOAD_FAILED",
        "INTERNAL_SYNCHRONISING_FAILED",
    }
)
REJECTED = "REJECTED"  # the upload request itself got a permanent 4xx
UNREACHABLE = "UNREACHABLE"  # transient failures until retries ran out
TIMED_OUT = "TIMED_OUT"  # accepted, but no terminal state before the deadline


@dataclass(frozen=True)
class TableUpload:
    """One table to load: exactly the parts of one multipart request (before any size split)."""

    table: str  # the Avro record name, which is the target table
    schema: dict[str, Any]  # Avro record schema
    primary_keys: tuple[str, ...]
    csv: bytes  # UTF-8 CSV with a header row of the schema's field names
    rows: int
    delimiter: str = ","


@dataclass(frozen=True)
class LoadResult:
    """The outcome of loading one table. `ok` only when the destination confirmed it."""

    table: str
    status: str  # COMPLETED, OUTBOX, one of FAILED_STATES, REJECTED, UNREACHABLE, TIMED_OUT
    execution_ids: tuple[str, ...] = ()  # one per request (a large table is split into several)
    message: str | None = None
    destination: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in (COMPLETED, OUTBOX)


class Destination(Protocol):
    """Where the tables go, as export (`load`, `describe`) and `check` (`probe`) use it."""

    #: What `check` calls it: `signavio` (the Ingestion API) or `outbox`.
    name: str

    def load(self, uploads: Sequence[TableUpload]) -> list[LoadResult]:
        """Load the tables and report, per table, whether the load is confirmed. Never raises for a failed
        load (that is a `LoadResult` with `ok == False`); raises only for programming errors."""
        ...

    def describe(self) -> str:
        """Where data goes (URL or outbox path), never a secret."""
        ...

    def probe(self) -> tuple[bool, str]:
        """Whether loads can go through now, without loading anything: (ok, what was found; never a secret)."""
        ...
